//! Read models kept current by CDC: counts and sums adjusted change by
//! change in the same target transaction as the progress mark, others
//! recomputed from the source.

use std::path::Path;
use std::time::Duration;

use shardline_cdc::run::{RunOptions, REVERSE_ORIGIN_PREFIX};
use shardline_testkit::PgServer;
use shardline_topology::{ConnString, Topology};

use crate::stream::{spawn_cdc, start_and_stop_cdc, wait_caught_up, wait_streaming};

const SCHEMA: &str = "
CREATE TYPE pay_status AS ENUM ('authorized', 'captured', 'refunded');
CREATE TABLE payments (merchant_id bigint, id bigint, amount numeric(18,2), status pay_status NOT NULL,
                       currency char(3) NOT NULL, created_at timestamptz NOT NULL, note text,
                       PRIMARY KEY (merchant_id, id));
ALTER TABLE payments ALTER note SET STORAGE EXTERNAL;
CREATE TABLE merchants (id bigint PRIMARY KEY);";

const READ_MODELS: &str = "
CREATE TABLE daily (merchant_id bigint, day timestamptz, currency char(3), payments bigint NOT NULL,
                    volume numeric, PRIMARY KEY (merchant_id, day, currency));
CREATE TABLE top (currency char(3) PRIMARY KEY, biggest numeric(18,2), n bigint);";

struct Fleet {
    source: PgServer,
    _shards: Vec<PgServer>,
    analytics: PgServer,
    topology: Topology,
}

fn fleet() -> Fleet {
    let source = PgServer::start().unwrap();
    let shards = vec![PgServer::start().unwrap(), PgServer::start().unwrap()];
    let analytics = PgServer::start().unwrap();
    for s in std::iter::once(&source).chain(&shards).chain([&analytics]) {
        s.psql("postgres", SCHEMA).unwrap();
    }
    source
        .psql("postgres", "ALTER TABLE payments REPLICA IDENTITY FULL")
        .unwrap();
    analytics.psql("postgres", READ_MODELS).unwrap();
    let text = format!(
        r#"[source]
url = "{}"
[contexts.transactions]
tables = ["payments"]
shard_key = "merchant_id"
shards = ["{}", "{}"]
[contexts.analytics]
url = "{}"
tables = ["merchants"]
[[read_models]]
name = "daily"
from = "payments"
where = "status = 'captured'"
group_by = ["merchant_id", "date_trunc('day', created_at) AS day", "currency"]
aggregates = ["count(*) AS payments", "sum(amount) AS volume"]
[[read_models]]
name = "top"
from = "payments"
group_by = ["currency"]
aggregates = ["max(amount) AS biggest", "count(*) AS n"]
"#,
        source.url("postgres"),
        shards[0].url("postgres"),
        shards[1].url("postgres"),
        analytics.url("postgres"),
    );
    let topology = Topology::parse(&text, Path::new("test.toml")).unwrap();
    Fleet {
        source,
        _shards: shards,
        analytics,
        topology,
    }
}

/// The read model as its own query computes it on the source, and as the
/// analytics database holds it.
fn both(f: &Fleet, name: &str) -> (String, String) {
    let rm = f
        .topology
        .read_models
        .iter()
        .find(|r| r.name == name)
        .unwrap();
    let agg = "SELECT count(*) || E'\\n' || coalesce(string_agg(q::text, E'\\n' ORDER BY q::text), '') FROM";
    (
        f.source
            .psql("postgres", &format!("{agg} ({}) q", rm.query()))
            .unwrap(),
        f.analytics
            .psql("postgres", &format!("{agg} {name} q"))
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_and_sums_follow_every_change_and_empty_groups_disappear() {
    let f = fleet();
    let options = RunOptions {
        heartbeat: Duration::from_millis(200),
        // Long enough that the incremental model is never recomputed here.
        read_model_refresh: Duration::from_secs(3600),
        ..RunOptions::default()
    };
    let (stop_tx, cdc) = spawn_cdc(&f.topology, &options);
    wait_streaming(&f.source).await;
    let client = ConnString::parse(&f.source.url("postgres"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let big = "ß".repeat(3000);
    let statements = [
        format!("INSERT INTO payments SELECT m, i, i * 1.25, (ARRAY['authorized','captured','captured'])[1 + i % 3]::pay_status,
                 (ARRAY['EUR','USD'])[1 + i % 2], timestamptz '2026-03-01 22:00+00' + i * interval '1 hour',
                 CASE WHEN i % 4 = 0 THEN '{big}' END
                 FROM generate_series(1, 30) m, generate_series(1, 60) i"),
        // Into and out of the filter; amounts changed; TOASTed note unchanged.
        "UPDATE payments SET status = 'captured' WHERE id % 3 = 0 AND merchant_id < 10".into(),
        "UPDATE payments SET status = 'refunded' WHERE id % 5 = 0".into(),
        "UPDATE payments SET amount = amount + 0.01 WHERE id % 4 = 0".into(),
        // Another day, another currency, another merchant (between shards).
        "UPDATE payments SET created_at = created_at + interval '3 days' WHERE id % 7 = 0".into(),
        "UPDATE payments SET currency = 'GBP' WHERE id % 11 = 0".into(),
        "UPDATE payments SET merchant_id = merchant_id + 100 WHERE id % 13 = 0".into(),
        "DELETE FROM payments WHERE id % 6 = 1".into(),
        // Every payment of merchant 2: its groups must disappear.
        "DELETE FROM payments WHERE merchant_id = 2".into(),
        "BEGIN; INSERT INTO payments VALUES (500, 1, 9.99, 'captured', 'EUR', now(), NULL); DELETE FROM payments WHERE merchant_id = 500; COMMIT".into(),
    ];
    for sql in &statements {
        client.batch_execute(sql).await.unwrap();
    }
    wait_caught_up(&f.source, &options.slot).await;
    let (source, target) = both(&f, "daily");
    assert_eq!(target, source, "daily while cdc runs");
    assert!(source.lines().count() > 100, "{source}");
    assert_eq!(
        f.analytics
            .psql(
                "postgres",
                "SELECT count(*) FROM daily WHERE merchant_id IN (2, 500)"
            )
            .unwrap()
            .trim(),
        "0"
    );

    // A truncate empties it; what follows counts again.
    client
        .batch_execute("TRUNCATE payments; INSERT INTO payments VALUES (3, 1, 5, 'captured', 'USD', '2026-01-01', NULL)")
        .await
        .unwrap();
    wait_caught_up(&f.source, &options.slot).await;
    assert_eq!(both(&f, "daily").1, both(&f, "daily").0);
    stop_tx.send(true).unwrap();
    let report = cdc.await.unwrap().unwrap();
    // Only `top` (max) is recomputed, once at stop.
    assert_eq!(report.read_model_refreshes, 1, "{report:?}");
    let (source, target) = both(&f, "top");
    assert_eq!(target, source);
}

/// After a cutover, payments are made on the shards and come to the
/// monolith by the way back: forward CDC must not write those rows to the
/// shards again, yet the read models learn of them only from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_the_way_back_wrote_reach_the_read_models_but_not_the_shards() {
    let f = fleet();
    let options = RunOptions {
        heartbeat: Duration::from_millis(200),
        read_model_refresh: Duration::from_secs(3600),
        ..RunOptions::default()
    };
    let (stop_tx, cdc) = spawn_cdc(&f.topology, &options);
    wait_streaming(&f.source).await;
    let connect = || async {
        ConnString::parse(&f.source.url("postgres"))
            .unwrap()
            .connect()
            .await
            .unwrap()
    };
    let app = connect().await;
    let back = connect().await;
    let origin = format!("{REVERSE_ORIGIN_PREFIX}test");
    back.execute("SELECT pg_replication_origin_create($1::text)", &[&origin])
        .await
        .unwrap();
    back.execute(
        "SELECT pg_replication_origin_session_setup($1::text)",
        &[&origin],
    )
    .await
    .unwrap();
    let insert = |id: i64| {
        format!("INSERT INTO payments SELECT m, {id}, m * 1.5, 'captured', 'EUR', '2026-03-01', NULL FROM generate_series(1, 20) m")
    };
    app.batch_execute(&insert(1)).await.unwrap();
    back.batch_execute(&format!(
        "{}; UPDATE payments SET amount = amount + 1 WHERE id = 2 AND merchant_id < 5",
        insert(2)
    ))
    .await
    .unwrap();
    wait_caught_up(&f.source, &options.slot).await;
    stop_tx.send(true).unwrap();
    cdc.await.unwrap().unwrap();
    let (source, target) = both(&f, "daily");
    assert_eq!(target, source, "the way back's payments are counted once");
    assert!(source.contains(",2,"), "{source}");
    let on_shards: i64 = f
        ._shards
        .iter()
        .map(|s| {
            let n = s.psql("postgres", "SELECT count(*) FROM payments WHERE id = 2");
            n.unwrap().trim().parse::<i64>().unwrap()
        })
        .sum();
    assert_eq!(on_shards, 0, "echoes were written to the shards");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_table_without_full_identity_falls_back_to_recomputing() {
    let f = fleet();
    f.source
        .psql("postgres", "ALTER TABLE payments REPLICA IDENTITY DEFAULT")
        .unwrap();
    let options = RunOptions {
        heartbeat: Duration::from_millis(200),
        ..RunOptions::default()
    };
    let (stop_tx, cdc) = spawn_cdc(&f.topology, &options);
    wait_streaming(&f.source).await;
    f.source
        .psql("postgres", "INSERT INTO payments VALUES (3, 1, 5, 'captured', 'USD', '2026-01-01', NULL), (3, 2, 6, 'captured', 'USD', '2026-01-01', NULL); UPDATE payments SET amount = 7 WHERE id = 2; DELETE FROM payments WHERE id = 1")
        .unwrap();
    wait_caught_up(&f.source, &options.slot).await;
    stop_tx.send(true).unwrap();
    let report = cdc.await.unwrap().unwrap();
    assert_eq!(report.read_model_refreshes, 2, "{report:?}");
    let (source, target) = both(&f, "daily");
    assert_eq!(target, source);
}

/// Polls `f` every 100 ms until it returns true (10 s at most).
async fn eventually(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..100 {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_max_read_models_are_recomputed_for_the_touched_groups_only() {
    let f = fleet();
    let options = RunOptions {
        heartbeat: Duration::from_millis(200),
        read_model_refresh: Duration::from_millis(300),
        ..RunOptions::default()
    };
    let (stop_tx, cdc) = spawn_cdc(&f.topology, &options);
    wait_streaming(&f.source).await;
    f.source
        .psql("postgres", "INSERT INTO payments SELECT m, i, i * 1.5, 'captured', (ARRAY['EUR','USD','GBP'])[1 + i % 3], now(), NULL
                           FROM generate_series(1, 5) m, generate_series(1, 30) i")
        .unwrap();
    let top = |filter: &str| {
        let sql =
            format!("SELECT string_agg(t::text, ' ' ORDER BY currency) FROM top t WHERE {filter}");
        (
            f.source
                .psql(
                    "postgres",
                    &format!("WITH top AS ({}) {sql}", f.topology.read_models[1].query()),
                )
                .unwrap(),
            f.analytics.psql("postgres", &sql).unwrap(),
        )
    };
    assert!(
        eventually(|| {
            let (s, t) = top("true");
            s == t
        })
        .await,
        "{:?}",
        top("true")
    );
    // A group no change touches: a whole recompute would delete it, a
    // per-group one leaves it alone.
    f.analytics
        .psql("postgres", "INSERT INTO top VALUES ('XXX', 1, 1)")
        .unwrap();
    f.source
        .psql("postgres", "UPDATE payments SET amount = 999 WHERE merchant_id = 1 AND id = 3; DELETE FROM payments WHERE currency = 'USD';
                           UPDATE payments SET currency = 'CHF' WHERE merchant_id = 2 AND id = 2")
        .unwrap();
    assert!(
        eventually(|| {
            let (s, t) = top("currency <> 'XXX'");
            s == t
        })
        .await,
        "{:?}",
        top("currency <> 'XXX'")
    );
    let (source, _) = top("true");
    assert!(
        source.contains("999") && source.contains("CHF") && !source.contains("USD"),
        "{source}"
    );
    assert_eq!(
        f.analytics
            .psql(
                "postgres",
                "SELECT count(*) FROM top WHERE currency = 'XXX'"
            )
            .unwrap()
            .trim(),
        "1",
        "only the touched groups (EUR, USD, CHF and GBP) were recomputed"
    );
    // A truncate recomputes everything.
    f.source
        .psql("postgres", "TRUNCATE payments; INSERT INTO payments VALUES (3, 1, 5, 'captured', 'USD', now(), NULL)")
        .unwrap();
    assert!(
        eventually(|| {
            let (s, t) = top("true");
            s == t
        })
        .await,
        "{:?}",
        top("true")
    );
    stop_tx.send(true).unwrap();
    let report = cdc.await.unwrap().unwrap();
    assert!(report.read_model_group_refreshes >= 1, "{report:?}");
    assert!(
        report.read_model_refreshes > report.read_model_group_refreshes,
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_killed_while_a_backlog_is_applied_in_groups_lose_and_repeat_nothing() {
    // A backlog like the drain benchmark's (payments inserted, then
    // captured), applied in open groups with COPY runs and netted MERGEs;
    // the appliers' connections are terminated mid-way, twice, at
    // different points, and cdc is started again each time.
    let f = fleet();
    let options = RunOptions {
        heartbeat: Duration::from_millis(200),
        read_model_refresh: Duration::from_secs(3600),
        ..RunOptions::default()
    };
    start_and_stop_cdc(&f.topology, &f.source, &options).await;
    f.source
        .psql(
            "postgres",
            "DO $$ BEGIN
               FOR t IN 1..300 LOOP
                 INSERT INTO payments SELECT m, 1000 * t + i, i * 0.5, 'authorized', 'EUR',
                        timestamptz '2026-03-01' + (t % 3) * interval '1 day', E'n\\t' || t
                   FROM generate_series(1, 4) m, generate_series(1, 40) i;
                 UPDATE payments SET status = 'captured' WHERE id BETWEEN 1000 * t AND 1000 * t + 30;
                 COMMIT;
               END LOOP;
             END $$",
        )
        .unwrap();
    let servers: Vec<&PgServer> = f._shards.iter().chain([&f.analytics]).collect();
    let mut killed = 0;
    for delay in [150, 400] {
        let (_stop_tx, cdc) = spawn_cdc(&f.topology, &options);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        for s in &servers {
            s.psql(
                "postgres",
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                  WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
            )
            .unwrap();
        }
        // Failed (a target went away) or, on a fast machine, done already.
        killed += usize::from(cdc.await.unwrap().is_err());
    }
    assert!(
        killed > 0,
        "no run was interrupted: the backlog is too small"
    );
    let (stop_tx, cdc) = spawn_cdc(&f.topology, &options);
    wait_caught_up(&f.source, &options.slot).await;
    stop_tx.send(true).unwrap();
    cdc.await.unwrap().unwrap();
    let summary = "SELECT count(*) || ' ' || count(*) FILTER (WHERE status = 'captured') || ' ' || sum(amount) FROM payments";
    let on_shards: Vec<Vec<f64>> = f
        ._shards
        .iter()
        .map(|s| {
            s.psql("postgres", summary)
                .unwrap()
                .split_whitespace()
                .map(|v| v.parse().unwrap())
                .collect()
        })
        .collect();
    let source: Vec<f64> = f
        .source
        .psql("postgres", summary)
        .unwrap()
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    let summed: Vec<f64> = (0..3)
        .map(|i| on_shards.iter().map(|s| s[i]).sum())
        .collect();
    assert_eq!(
        summed, source,
        "rows, captured rows and amounts on the shards"
    );
    let (source, target) = both(&f, "daily");
    assert_eq!(
        target, source,
        "the read model counts every captured payment once"
    );
}
