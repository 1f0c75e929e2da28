//! SIGKILL at random points: backfill and CDC, run as the real binary
//! against real servers, end with exactly the source's rows on every shard.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use shardline_gen::schemas;
use shardline_testkit::PgServer;
use shardline_topology::{ContextKind, Topology};

struct Fleet {
    source: PgServer,
    shards: Vec<PgServer>,
    settlements: PgServer,
    analytics: PgServer,
    config: tempfile::TempDir,
}

impl Fleet {
    fn config_path(&self) -> String {
        self.config
            .path()
            .join("shardline.toml")
            .display()
            .to_string()
    }

    fn topology(&self) -> Topology {
        Topology::load(Path::new(&self.config_path())).unwrap()
    }
}

fn fleet(payments: u64) -> Fleet {
    let source = PgServer::start().unwrap();
    source.psql("postgres", schemas::MONOLITH).unwrap();
    let shards: Vec<PgServer> = (0..3).map(|_| PgServer::start().unwrap()).collect();
    for s in &shards {
        s.psql("postgres", schemas::TRANSACTIONS).unwrap();
    }
    let settlements = PgServer::start().unwrap();
    settlements.psql("postgres", schemas::SETTLEMENTS).unwrap();
    let analytics = PgServer::start().unwrap();
    analytics.psql("postgres", schemas::ANALYTICS).unwrap();
    let config = tempfile::tempdir().unwrap();
    let text = format!(
        r#"[source]
url = "{}"
[contexts.transactions]
tables = ["payments", "payment_events", "refunds"]
shard_key = "merchant_id"
shards = ["{}", "{}", "{}"]
skip_objects = ["payments_merchant_fk"]
[contexts.settlements]
tables = ["settlements", "payouts"]
url = "{}"
[contexts.analytics]
tables = ["merchants"]
url = "{}"
[[read_models]]
name = "merchant_daily_volume"
from = "payments"
where = "status = 'captured'"
group_by = ["merchant_id", "date_trunc('day', created_at) AS day", "currency"]
aggregates = ["count(*) AS payments", "sum(amount) AS volume"]
"#,
        source.url("postgres"),
        shards[0].url("postgres"),
        shards[1].url("postgres"),
        shards[2].url("postgres"),
        settlements.url("postgres"),
        analytics.url("postgres"),
    );
    std::fs::write(config.path().join("shardline.toml"), text).unwrap();
    let f = Fleet {
        source,
        shards,
        settlements,
        analytics,
        config,
    };
    let out = shardline(&f, &["gen", "--rows", &payments.to_string(), "--seed", "3"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    f
}

fn shardline(f: &Fleet, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shardline"));
    cmd.arg("--config")
        .arg(f.config_path())
        .args(args)
        .stdin(Stdio::null());
    cmd
}

fn digest(server: &PgServer, table: &str, filter: &str) -> String {
    server
        .psql(
            "postgres",
            &format!("SET TimeZone = 'UTC'; SELECT count(*) || ' ' || coalesce(md5(string_agg(t::text, E'\\n' ORDER BY t::text)), '') FROM {table} t WHERE {filter}"),
        )
        .unwrap()
}

fn assert_equal(f: &Fleet) {
    let topology = f.topology();
    let ContextKind::Sharded { placement, .. } = &topology.context("transactions").unwrap().kind
    else {
        unreachable!()
    };
    for table in ["payments", "payment_events", "refunds"] {
        for (i, shard) in f.shards.iter().enumerate() {
            let owned = placement.owned_by_shard_sql("merchant_id", i);
            assert_eq!(
                digest(shard, table, "true"),
                digest(&f.source, table, &owned),
                "{table} on shard {i}"
            );
        }
    }
    for table in ["settlements", "payouts"] {
        assert_eq!(
            digest(&f.settlements, table, "true"),
            digest(&f.source, table, "true"),
            "{table}"
        );
    }
    assert_eq!(
        digest(&f.analytics, "merchants", "true"),
        digest(&f.source, "merchants", "true")
    );
}

/// Runs cdc with `args` until the slot confirmed the source's position of
/// now (at most 90 s), then stops it with SIGTERM: whether it caught up,
/// and its output.
fn catch_up_and_stop(f: &Fleet, args: &[&str]) -> (bool, Output) {
    let child = shardline(f, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let target = f
        .source
        .psql("postgres", "SELECT pg_current_wal_insert_lsn()")
        .unwrap();
    let caught_up = (0..900).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        f.source
            .psql("postgres", &format!("SELECT confirmed_flush_lsn >= '{}' FROM pg_replication_slots WHERE slot_name = 'shardline'", target.trim()))
            .unwrap()
            .trim()
            == "t"
    });
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    (caught_up, child.wait_with_output().unwrap())
}

/// Starts cdc and SIGKILLs it after `delay`: whether it was still running.
fn cdc_killed_after(f: &Fleet, delay: Duration) -> bool {
    let child = shardline(f, &["-q", "cdc", "run", "--heartbeat-secs", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    kill_after(child, delay)
}

fn kill_after(mut child: Child, delay: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < delay {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // SIGKILL: no cleanup of any kind.
    child.kill().unwrap();
    child.wait().unwrap();
    true
}

#[test]
fn backfill_killed_with_sigkill_resumes_to_exactly_the_source() {
    let f = fleet(30_000);
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut kills = 0;
    for _ in 0..4 {
        let child = shardline(
            &f,
            &[
                "-q",
                "backfill",
                "--chunk-rows",
                "3000",
                "--max-rows-per-sec",
                "60000",
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
        if kill_after(child, Duration::from_millis(rng.random_range(300..2500))) {
            kills += 1;
        }
    }
    assert!(kills >= 2, "the backfill was killed mid-run at least twice");
    let out = shardline(&f, &["--format", "json", "backfill"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["complete"], true, "{report}");
    assert_equal(&f);

    // verify agrees, and its exit status tells a script what it found.
    let out = shardline(&f, &["verify"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    f.shards[0]
        .psql(
            "postgres",
            "DELETE FROM payments WHERE payment_id = (SELECT min(payment_id) FROM payments)",
        )
        .unwrap();
    let out = shardline(&f, &["--format", "json", "verify", "--recheck-secs", "0.1"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["equal"], false);
    let payments = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "payments")
        .unwrap();
    assert_eq!(payments["counts"]["missing"], 1, "{payments}");
    assert_eq!(payments["differences"][0]["kind"], "missing");
    let out = shardline(
        &f,
        &[
            "--format",
            "markdown",
            "verify",
            "--tables",
            "payments",
            "--recheck-secs",
            "0.1",
        ],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("| payments |"));
}

/// Writes rounds of changes of every kind; returns the number of changes.
fn churn(source: &PgServer, rounds: u64) -> u64 {
    let mut changes = 0;
    for r in 0..rounds {
        let m = r % 7;
        let out = source
            .psql(
                "postgres",
                &format!(
                    "INSERT INTO payments (merchant_id, payment_id, idempotency_key, amount, currency, status, method, metadata, created_at, updated_at)
                       SELECT 1001 + g % 15, 10000000 + {r} * 1000 + g, md5(({r} * 1000 + g)::text)::uuid, 1 + g, 'EUR', 'authorized', 'card',
                              CASE WHEN g % 10 = 0 THEN jsonb_build_object('blob', repeat(md5(g::text), 80)) END, now(), now()
                         FROM generate_series(1, 800) g;
                     UPDATE payments SET status = 'captured', captured_at = now() WHERE payment_id % 7 = {m} AND payment_id < 20000;
                     UPDATE payments SET description = 'toast kept ' || {r} WHERE metadata IS NOT NULL AND payment_id % 11 = {m};
                     UPDATE payments SET merchant_id = 1001 + (merchant_id - 1000) % 19 WHERE payment_id % 97 = {r} % 97 AND payment_id < 20000;
                     DELETE FROM payment_events WHERE event_id % 53 = {r} % 53;
                     UPDATE payouts SET status = 'paid' WHERE payout_id % 13 = {m};
                     SELECT (SELECT count(*) FROM payments WHERE payment_id BETWEEN 10000000 + {r} * 1000 AND 10000000 + {r} * 1000 + 999);"
                ),
            )
            .unwrap();
        assert_eq!(out.trim(), "800");
        changes += 800 + 1200;
        if r == rounds / 2 {
            source.psql("postgres", "TRUNCATE refunds").unwrap();
        }
    }
    changes
}

#[test]
fn cdc_killed_with_sigkill_resumes_and_applies_every_change_once() {
    let f = fleet(20_000);
    let out = shardline(&f, &["-q", "backfill"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let churn_source = PgServer::attach(f.source.dir(), f.source.port()).unwrap();
    let churner = std::thread::spawn(move || churn(&churn_source, 50));
    let mut kills = 0;
    while !churner.is_finished() {
        if cdc_killed_after(&f, Duration::from_millis(rng.random_range(500..3000))) {
            kills += 1;
        }
    }
    let changes = churner.join().unwrap();
    assert!(changes >= 100_000, "{changes} changes");
    assert!(
        kills >= 2,
        "cdc was killed mid-stream at least twice ({kills})"
    );

    // A last, clean run catches up, then stops on SIGTERM.
    let (caught_up, out) = catch_up_and_stop(
        &f,
        &["--format", "json", "cdc", "run", "--heartbeat-secs", "1"],
    );
    assert!(
        caught_up,
        "cdc did not catch up: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_equal(&f);
    // The read model was adjusted change by change across the kills: verify
    // finds it (and every table) equal to the source.
    let out = shardline(&f, &["verify", "--recheck-secs", "0.1"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Many small source transactions, each a payment inserted and captured, and
/// now and then an amount changed or a payment deleted in a transaction of
/// its own: `rounds` rounds of 300 payments, each round one `DO` block that
/// commits after every step.
fn small_transactions(source: &PgServer, rounds: u64) -> u64 {
    let mut transactions = 0;
    for r in 0..rounds {
        source
            .psql(
                "postgres",
                &format!(
                    "DO $$
                     DECLARE id bigint; m bigint;
                     BEGIN
                       FOR i IN 1..300 LOOP
                         id := 30000000 + {r} * 1000 + i; m := 1001 + i % 15;
                         INSERT INTO payments (merchant_id, payment_id, idempotency_key, amount, currency, status, method, created_at, updated_at)
                           VALUES (m, id, md5(id::text)::uuid, 1 + i, 'EUR', 'authorized', 'card', now(), now());
                         UPDATE payments SET status = 'captured', captured_at = now() WHERE merchant_id = m AND payment_id = id;
                         COMMIT;
                         IF i % 10 = 0 THEN
                           UPDATE payments SET amount = amount + 0.25 WHERE merchant_id = 1001 + (i - 5) % 15 AND payment_id = id - 5;
                           COMMIT;
                         END IF;
                         IF i % 25 = 0 THEN
                           DELETE FROM payments WHERE merchant_id = 1001 + (i - 3) % 15 AND payment_id = id - 3;
                           COMMIT;
                         END IF;
                       END LOOP;
                     END $$"
                ),
            )
            .unwrap();
        transactions += 300 + 30 + 12;
    }
    transactions
}

#[test]
fn cdc_killed_during_grouped_read_model_commits_keeps_the_read_model_exact() {
    // The appliers group queued source transactions into one target
    // commit, fold each payment's insert and capture into one multi-row
    // INSERT and net the read-model adjustments of the whole group into one
    // MERGE under the group's progress mark. Killed at random points of
    // that, the read model must still equal its query over the source.
    let f = fleet(5_000);
    let out = shardline(&f, &["-q", "backfill"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let churn_source = PgServer::attach(f.source.dir(), f.source.port()).unwrap();
    let churner = std::thread::spawn(move || small_transactions(&churn_source, 30));
    let mut kills = 0;
    // On an idle machine the churn can end before three kills: the backlog
    // is still being applied then, so killing goes on until three landed.
    while !churner.is_finished() || kills < 3 {
        if cdc_killed_after(&f, Duration::from_millis(rng.random_range(200..1500))) {
            kills += 1;
        }
    }
    let transactions = churner.join().unwrap();
    assert!(transactions >= 10_000, "{transactions} transactions");
    assert!(
        kills >= 3,
        "cdc was killed mid-stream at least 3 times ({kills})"
    );

    let (caught_up, out) = catch_up_and_stop(&f, &["-q", "cdc", "run", "--heartbeat-secs", "1"]);
    assert!(
        caught_up && out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recomputed = "(SELECT merchant_id, date_trunc('day', created_at) AS day, currency, count(*) AS payments, sum(amount) AS volume
                        FROM payments WHERE status = 'captured' GROUP BY 1, 2, 3)";
    assert_eq!(
        digest(&f.analytics, "merchant_daily_volume", "true"),
        digest(&f.source, recomputed, "true"),
        "the read model after {kills} kills"
    );
    assert_equal(&f);
    let out = shardline(&f, &["verify", "--recheck-secs", "0.1"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
