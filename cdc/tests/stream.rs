//! End to end: a source, two shards and an unsharded target, all real
//! servers; changes made on the source arrive exactly once where they belong.

use std::path::Path;
use std::time::Duration;

use shardline_cdc::run::{run, CdcError, RunOptions, RunReport};
use shardline_testkit::PgServer;
use shardline_topology::{ConnString, ContextKind, Topology};
use tokio::sync::watch;

const SCHEMA: &str = "
CREATE TABLE payments (merchant_id bigint, id bigint, amount numeric(18,2), note text, meta jsonb,
                       PRIMARY KEY (merchant_id, id));
ALTER TABLE payments ALTER note SET STORAGE EXTERNAL;
CREATE TABLE payouts (id bigint PRIMARY KEY, merchant_id bigint, amount numeric(18,2));";

pub struct Fleet {
    pub source: PgServer,
    pub shards: Vec<PgServer>,
    pub settlements: PgServer,
    pub topology: Topology,
}

pub fn fleet() -> Fleet {
    let source = PgServer::start().unwrap();
    let shards = vec![PgServer::start().unwrap(), PgServer::start().unwrap()];
    let settlements = PgServer::start().unwrap();
    for s in std::iter::once(&source)
        .chain(&shards)
        .chain([&settlements])
    {
        s.psql("postgres", SCHEMA).unwrap();
    }
    let text = format!(
        "[source]\nurl = \"{}\"\n[contexts.transactions]\ntables = [\"payments\"]\nshard_key = \"merchant_id\"\nshards = [\"{}\", \"{}\"]\n[contexts.settlements]\ntables = [\"payouts\"]\nurl = \"{}\"\n",
        source.url("postgres"),
        shards[0].url("postgres"),
        shards[1].url("postgres"),
        settlements.url("postgres")
    );
    let topology = Topology::parse(&text, Path::new("test.toml")).unwrap();
    Fleet {
        source,
        shards,
        settlements,
        topology,
    }
}

/// The rows of `table` on `server` that belong to shard `shard` (or all rows),
/// as one comparable text.
pub fn rows(server: &PgServer, table: &str, filter: &str) -> String {
    server
        .psql("postgres", &format!("SELECT coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '') FROM {table} t WHERE {filter}"))
        .unwrap()
}

pub fn assert_converged(f: &Fleet) {
    let ContextKind::Sharded { placement, .. } = &f.topology.context("transactions").unwrap().kind
    else {
        unreachable!()
    };
    for (i, shard) in f.shards.iter().enumerate() {
        let owned = placement.owned_by_shard_sql("merchant_id", i);
        assert_eq!(
            rows(shard, "payments", "true"),
            rows(&f.source, "payments", &owned),
            "shard {i}"
        );
    }
    assert_eq!(
        rows(&f.settlements, "payouts", "true"),
        rows(&f.source, "payouts", "true")
    );
}

/// Waits until a walsender streams the slot, so what is written next is
/// streamed. (A slot being created shows as active too, before its
/// consistent point: writes then are not part of its stream.)
pub async fn wait_streaming(source: &PgServer) {
    for _ in 0..300 {
        let n = source
            .psql(
                "postgres",
                "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'shardline-cdc'",
            )
            .unwrap();
        if n.trim() == "1" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("cdc did not start streaming");
}

/// Starts cdc in the background; send `true` to stop it.
pub fn spawn_cdc(
    topology: &Topology,
    options: &RunOptions,
) -> (
    watch::Sender<bool>,
    tokio::task::JoinHandle<Result<RunReport, CdcError>>,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (topology, opts) = (topology.clone(), options.clone());
    let cdc = tokio::spawn(async move { run(&topology, &opts, stop_rx).await });
    (stop_tx, cdc)
}

/// Runs cdc until it streams, then stops it: the slot and publication now
/// exist, so what is written next waits in the slot as a backlog.
pub async fn start_and_stop_cdc(topology: &Topology, source: &PgServer, options: &RunOptions) {
    let (stop_tx, cdc) = spawn_cdc(topology, options);
    wait_streaming(source).await;
    stop_tx.send(true).unwrap();
    cdc.await.unwrap().unwrap();
}

/// Waits until the slot confirms a position at or past the source's
/// current WAL position (heartbeats carry it there once targets caught up).
pub async fn wait_caught_up(source: &PgServer, slot: &str) {
    // The insert position: with synchronous_commit off (test servers) the
    // write position lags behind commits.
    let target = source
        .psql("postgres", "SELECT pg_current_wal_insert_lsn()")
        .unwrap();
    for _ in 0..300 {
        let done = source
            .psql("postgres", &format!("SELECT confirmed_flush_lsn >= '{}' FROM pg_replication_slots WHERE slot_name = '{slot}'", target.trim()))
            .unwrap();
        if done.trim() == "t" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("cdc did not catch up to {target}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_reach_their_shard_once_including_moves_toast_and_truncate() {
    let f = fleet();
    let options = RunOptions {
        heartbeat: Duration::from_millis(200),
        ..RunOptions::default()
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let topology = f.topology.clone();
    let opts = options.clone();
    let cdc = tokio::spawn(async move { run(&topology, &opts, stop_rx).await });
    wait_streaming(&f.source).await;
    let big = "é".repeat(4000);
    let client = ConnString::parse(&f.source.url("postgres"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let statements = [
        format!("INSERT INTO payments SELECT m, i, i * 1.25, CASE WHEN i % 10 = 0 THEN '{big}' END, jsonb_build_object('i', i) FROM generate_series(1, 40) m, generate_series(1, 25) i"),
        "INSERT INTO payouts SELECT i, i % 40, i * 2 FROM generate_series(1, 100) i".into(),
        "UPDATE payments SET amount = amount + 1 WHERE id % 10 = 0".into(),
        "UPDATE payments SET merchant_id = merchant_id + 1000 WHERE id = 10".into(),
        "UPDATE payments SET merchant_id = merchant_id + 2000, amount = 0 WHERE id = 20 AND merchant_id < 20".into(),
        "DELETE FROM payments WHERE id = 3".into(),
        "UPDATE payments SET meta = NULL, note = '' WHERE id = 5".into(),
        "DELETE FROM payouts WHERE id > 90".into(),
        "BEGIN; INSERT INTO payments VALUES (77, 999, 1, NULL, NULL); UPDATE payouts SET amount = -1 WHERE id = 1; COMMIT".into(),
        "TRUNCATE payouts".into(),
        "INSERT INTO payouts VALUES (5, 5, 5.55)".into(),
    ];
    for sql in &statements {
        client.batch_execute(sql).await.unwrap();
    }
    wait_caught_up(&f.source, &options.slot).await;
    stop_tx.send(true).unwrap();
    let report = cdc.await.unwrap().unwrap();
    assert_converged(&f);
    assert_eq!(
        f.source
            .psql(
                "postgres",
                "SELECT count(*) FROM payments WHERE merchant_id > 1000"
            )
            .unwrap()
            .trim(),
        "59"
    );
    assert!(report.transactions >= statements.len() as u64, "{report:?}");

    // A second run resumes: nothing is applied twice, new changes arrive.
    let (stop_tx, stop_rx) = watch::channel(false);
    let topology = f.topology.clone();
    let opts = options.clone();
    let cdc = tokio::spawn(async move { run(&topology, &opts, stop_rx).await });
    client
        .batch_execute("UPDATE payments SET amount = 42 WHERE id = 7")
        .await
        .unwrap();
    wait_caught_up(&f.source, &options.slot).await;
    stop_tx.send(true).unwrap();
    cdc.await.unwrap().unwrap();
    assert_converged(&f);
}

#[tokio::test]
async fn a_table_whose_identity_lacks_the_shard_key_is_refused_with_the_fix() {
    let f = fleet();
    f.source
        .psql("postgres", "DELETE FROM payments; ALTER TABLE payments DROP CONSTRAINT payments_pkey; ALTER TABLE payments ADD PRIMARY KEY (id)")
        .unwrap();
    let (_stop, stop_rx) = watch::channel(false);
    let err = run(&f.topology, &RunOptions::default(), stop_rx)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ALTER TABLE public.payments REPLICA IDENTITY FULL"),
        "{err}"
    );
    let slots = f
        .source
        .psql("postgres", "SELECT count(*) FROM pg_replication_slots")
        .unwrap();
    assert_eq!(slots.trim(), "0", "nothing is created when a check fails");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_slot_is_not_silently_replaced_supabase_etl_935() {
    let f = fleet();
    let options = RunOptions {
        heartbeat: Duration::from_millis(200),
        ..RunOptions::default()
    };
    let (stop_tx, cdc) = spawn_cdc(&f.topology, &options);
    wait_streaming(&f.source).await;
    f.source
        .psql("postgres", "INSERT INTO payouts VALUES (1, 1, 1)")
        .unwrap();
    wait_caught_up(&f.source, &options.slot).await;
    stop_tx.send(true).unwrap();
    cdc.await.unwrap().unwrap();
    assert_eq!(rows(&f.settlements, "payouts", "true").trim(), "(1,1,1.00)");

    f.source
        .psql("postgres", "SELECT pg_drop_replication_slot('shardline')")
        .unwrap();
    f.source
        .psql("postgres", "INSERT INTO payouts VALUES (2, 2, 2)")
        .unwrap();
    let (_stop, stop_rx) = watch::channel(false);
    let err = tokio::time::timeout(Duration::from_secs(30), run(&f.topology, &options, stop_rx))
        .await
        .expect("a lost slot stops cdc at once")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("slot shardline does not exist") && err.contains("backfill --restart"),
        "{err}"
    );
    let slots = f
        .source
        .psql("postgres", "SELECT count(*) FROM pg_replication_slots")
        .unwrap();
    assert_eq!(slots.trim(), "0");
}

/// A crash can fall between the old shard committing a move (the delete)
/// and the new shard committing it (the insert). Replayed, the new shard
/// must still get the whole row, including the TOASTed value the stream
/// did not send, though the old shard no longer has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_replayed_after_a_crash_between_shards_keeps_unchanged_toast() {
    let f = fleet();
    let options = RunOptions {
        heartbeat: Duration::from_millis(200),
        ..RunOptions::default()
    };
    let ContextKind::Sharded { placement, .. } = &f.topology.context("transactions").unwrap().kind
    else {
        unreachable!()
    };
    let on = |shard: usize| {
        (1..)
            .find(|m: &i64| placement.shard(&shardline_topology::ShardKey::Int(*m)) == shard)
            .unwrap()
    };
    let (m0, m1) = (on(0), on(1));
    let big = "ü".repeat(5000);
    let run_once = |f: &Fleet| {
        let (topology, opts) = (f.topology.clone(), options.clone());
        async move {
            let (stop_tx, stop_rx) = watch::channel(false);
            let slot = opts.slot.clone();
            let cdc = tokio::spawn(async move { run(&topology, &opts, stop_rx).await });
            (stop_tx, cdc, slot)
        }
    };
    let (stop_tx, cdc, slot) = run_once(&f).await;
    wait_streaming(&f.source).await;
    f.source
        .psql(
            "postgres",
            &format!("INSERT INTO payments VALUES ({m0}, 1, 1, '{big}', NULL)"),
        )
        .unwrap();
    wait_caught_up(&f.source, &slot).await;
    stop_tx.send(true).unwrap();
    cdc.await.unwrap().unwrap();

    // The move, with the note unchanged (so not sent)...
    f.source
        .psql(
            "postgres",
            &format!("UPDATE payments SET merchant_id = {m1} WHERE id = 1"),
        )
        .unwrap();
    let after = f
        .source
        .psql("postgres", "SELECT pg_current_wal_insert_lsn()")
        .unwrap();
    // ...already applied on the old shard before a crash, not on the new one.
    f.shards[0]
        .psql("postgres", &format!("DELETE FROM payments WHERE id = 1; UPDATE shardline.cdc_progress SET commit_lsn = '{}'", after.trim()))
        .unwrap();
    let (stop_tx, cdc, slot) = run_once(&f).await;
    wait_streaming(&f.source).await;
    wait_caught_up(&f.source, &slot).await;
    stop_tx.send(true).unwrap();
    cdc.await.unwrap().unwrap();
    let note = f.shards[1]
        .psql("postgres", "SELECT length(note) FROM payments WHERE id = 1")
        .unwrap();
    assert_eq!(
        note.trim(),
        "5000",
        "the moved row arrived whole on its new shard"
    );
    assert_converged(&f);
}

/// A writer the test can read back.
#[derive(Clone, Default)]
pub struct Shared(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jsonl_sink_writes_one_object_per_change_and_applies_nothing() {
    let f = fleet();
    let buffer = Shared::default();
    let out: Box<dyn std::io::Write + Send> = Box::new(buffer.clone());
    let options = RunOptions {
        heartbeat: Duration::from_millis(200),
        jsonl: Some(std::sync::Arc::new(std::sync::Mutex::new(out))),
        ..RunOptions::default()
    };
    let (stop_tx, cdc) = spawn_cdc(&f.topology, &options);
    wait_streaming(&f.source).await;
    let big = "x".repeat(4000);
    for sql in [
        format!("INSERT INTO payments VALUES (7, 1, 2.50, '{big}', '{{\"a\": 1}}')"),
        "UPDATE payments SET amount = 3.00 WHERE id = 1".to_string(),
        "DELETE FROM payments WHERE id = 1".to_string(),
        "INSERT INTO payouts VALUES (1, 7, NULL)".to_string(),
        "TRUNCATE payouts".to_string(),
    ] {
        f.source.psql("postgres", &sql).unwrap();
    }
    wait_caught_up(&f.source, &options.slot).await;
    stop_tx.send(true).unwrap();
    cdc.await.unwrap().unwrap();
    let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ops: Vec<&str> = lines.iter().map(|l| l["op"].as_str().unwrap()).collect();
    assert_eq!(
        ops,
        ["insert", "update", "delete", "insert", "truncate"],
        "{text}"
    );
    assert_eq!(lines[0]["table"], "public.payments");
    assert_eq!(lines[0]["new"]["amount"], "2.50");
    assert_eq!(lines[0]["key"]["merchant_id"], "7");
    assert!(
        lines[0]["xid"].as_u64().unwrap() > 0
            && lines[0]["commit_time"].as_str().unwrap().ends_with('Z')
    );
    assert_eq!(lines[1]["new"]["amount"], "3.00");
    assert_eq!(
        lines[1]["unchanged"],
        serde_json::json!(["note"]),
        "unchanged TOAST is named, not sent as NULL"
    );
    assert!(lines[1]["new"].get("note").is_none());
    assert_eq!(lines[2]["old"]["id"], "1");
    assert_eq!(lines[3]["new"]["amount"], serde_json::Value::Null);
    // Nothing was applied to the targets.
    assert_eq!(
        f.shards
            .iter()
            .map(|s| rows(s, "payments", "true"))
            .collect::<String>()
            .trim(),
        ""
    );
}

/// Polls `sql` on `server` until it prints `want`, for up to `secs`.
async fn wait_for(server: &PgServer, sql: &str, want: &str, secs: u64) -> bool {
    for _ in 0..secs * 10 {
        if server.psql("postgres", sql).unwrap().trim() == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_with_an_apply_interval_commits_in_steps_and_holds_the_slot_meanwhile() {
    let mut f = fleet();
    let interval = Duration::from_secs(6);
    f.topology
        .contexts
        .iter_mut()
        .find(|c| c.name == "settlements")
        .unwrap()
        .apply_interval = Some(interval);
    let options = RunOptions {
        heartbeat: Duration::from_millis(200),
        ..RunOptions::default()
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let (topology, opts) = (f.topology.clone(), options.clone());
    let started = std::time::Instant::now();
    let cdc = tokio::spawn(async move { run(&topology, &opts, stop_rx).await });
    wait_streaming(&f.source).await;
    let end = f
        .source
        .psql("postgres", "BEGIN; INSERT INTO payments VALUES (7, 1, 1, NULL, NULL); INSERT INTO payouts VALUES (1, 7, 1); COMMIT; SELECT pg_current_wal_insert_lsn()")
        .unwrap();
    let on_shards = "SELECT count(*) FROM payments";
    let shard_has_it = wait_for(&f.shards[0], on_shards, "1", 3).await
        || wait_for(&f.shards[1], on_shards, "1", 1).await;
    assert!(shard_has_it, "the continuous context applies at once");
    if started.elapsed() < interval {
        assert_eq!(
            rows(&f.settlements, "payouts", "true").trim(),
            "",
            "settlements waits for its interval"
        );
        let confirmed_past = f
            .source
            .psql(
                "postgres",
                &format!(
                    "SELECT confirmed_flush_lsn >= '{}' FROM pg_replication_slots",
                    end.trim()
                ),
            )
            .unwrap();
        assert_eq!(
            confirmed_past.trim(),
            "f",
            "the slot is not confirmed past what settlements holds"
        );
    }
    assert!(
        wait_for(&f.settlements, "SELECT count(*) FROM payouts", "1", 20).await,
        "settlements applies at the end of its interval"
    );
    assert!(started.elapsed() >= interval);
    wait_caught_up(&f.source, &options.slot).await;
    stop_tx.send(true).unwrap();
    cdc.await.unwrap().unwrap();
    assert_converged(&f);
}

/// One HTTP GET over a plain socket, as Prometheus scrapes.
pub async fn scrape(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    socket.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.contains("Content-Type: text/plain; version=0.0.4"));
    response.split("\r\n\r\n").nth(1).unwrap().to_string()
}

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{series} missing from\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_metrics_are_served_over_http() {
    let f = fleet();
    let addr = {
        // A free port, released for cdc to bind.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let options = RunOptions {
        heartbeat: Duration::from_millis(200),
        metrics_listen: Some(addr),
        ..RunOptions::default()
    };
    let (stop_tx, cdc) = spawn_cdc(&f.topology, &options);
    wait_streaming(&f.source).await;
    f.source
        .psql("postgres", "INSERT INTO payments SELECT m, 1, 1 FROM generate_series(1, 50) m; INSERT INTO payouts VALUES (1, 1, 1)")
        .unwrap();
    wait_caught_up(&f.source, &options.slot).await;
    // Metrics are published once a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let text = scrape(addr).await;
    assert_eq!(value(&text, "shardline_cdc_changes_total"), 51.0);
    assert!(value(&text, "shardline_cdc_transactions_total") >= 1.0);
    assert_eq!(value(&text, "shardline_cdc_errors_total"), 0.0);
    let settlements = format!(
        "shardline_cdc_lag_bytes{{target=\"{}\"}}",
        f.topology.context("settlements").unwrap().databases()[0]
    );
    assert_eq!(value(&text, &settlements), 0.0, "caught up");
    assert!(value(&text, "shardline_cdc_apply_latency_seconds_count") >= 1.0);
    assert!(value(&text, "shardline_cdc_confirmed_lsn") > 0.0);
    assert!(text.contains("# TYPE shardline_cdc_apply_latency_seconds histogram"));

    // A second cdc on the same address is refused before it streams.
    let (_stop, stop_rx2) = watch::channel(false);
    let other = RunOptions {
        slot: "other".into(),
        ..options.clone()
    };
    let err = run(&f.topology, &other, stop_rx2)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("cannot serve metrics on {addr}")),
        "{err}"
    );

    stop_tx.send(true).unwrap();
    cdc.await.unwrap().unwrap();
}

/// Writes that never reach the publication (another table, vacuum, other
/// databases) still grow the WAL: heartbeats must let the slot move past
/// them, or the source keeps that WAL forever (Debezium DBZ-9641).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_publication_still_lets_the_slot_advance_debezium_dbz_9641() {
    let f = fleet();
    f.source
        .psql(
            "postgres",
            "CREATE TABLE unpublished (id bigint, body text)",
        )
        .unwrap();
    let options = RunOptions {
        heartbeat: Duration::from_millis(200),
        ..RunOptions::default()
    };
    let (stop_tx, cdc) = spawn_cdc(&f.topology, &options);
    wait_streaming(&f.source).await;
    let start = f
        .source
        .psql("postgres", "SELECT pg_current_wal_insert_lsn()")
        .unwrap();
    f.source
        .psql(
            "postgres",
            "INSERT INTO unpublished SELECT g, repeat('x', 200) FROM generate_series(1, 50000) g",
        )
        .unwrap();
    wait_caught_up(&f.source, &options.slot).await;
    let moved = f
        .source
        .psql(
            "postgres",
            &format!(
                "SELECT confirmed_flush_lsn - '{}' > 10000000 FROM pg_replication_slots",
                start.trim()
            ),
        )
        .unwrap();
    assert_eq!(moved.trim(), "t", "the slot moved past the unpublished WAL");
    stop_tx.send(true).unwrap();
    let report = cdc.await.unwrap().unwrap();
    assert_eq!(report.changes, 0);
}

/// All row changes of one source transaction share its commit LSN. When a
/// target fails part way, the transaction is sent again on restart; every
/// one of its changes must be applied there, and none twice on a target
/// that already had it (Debezium dbz#1554 dropped some after a restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_sharing_one_commit_lsn_all_arrive_after_a_failed_apply_debezium_dbz_1554() {
    let f = fleet();
    let ContextKind::Sharded { placement, .. } = &f.topology.context("transactions").unwrap().kind
    else {
        unreachable!()
    };
    let on_shard_1 = (1..)
        .find(|m: &i64| placement.shard(&shardline_topology::ShardKey::Int(*m)) == 1)
        .unwrap();
    // Shard 1 refuses one row of the transaction, once.
    f.shards[1]
        .psql(
            "postgres",
            "ALTER TABLE payments ADD CONSTRAINT not_yet CHECK (id <> 999)",
        )
        .unwrap();
    let options = RunOptions {
        heartbeat: Duration::from_millis(200),
        ..RunOptions::default()
    };
    let (_stop_tx, stop_rx) = watch::channel(false);
    let (topology, opts) = (f.topology.clone(), options.clone());
    let cdc = tokio::spawn(async move { run(&topology, &opts, stop_rx).await });
    wait_streaming(&f.source).await;
    f.source
        .psql(
            "postgres",
            &format!("BEGIN; INSERT INTO payments SELECT m, i, i FROM generate_series(1, 40) m, generate_series(1, 25) i;
                      INSERT INTO payouts SELECT i, i, i FROM generate_series(1, 30) i;
                      INSERT INTO payments VALUES ({on_shard_1}, 999, 1); COMMIT"),
        )
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(60), cdc)
        .await
        .expect("the failed apply stops cdc")
        .unwrap()
        .unwrap_err()
        .to_string();
    assert!(err.contains("not_yet"), "{err}");
    assert_eq!(
        rows(&f.shards[1], "payments", "true").trim(),
        "",
        "nothing of the transaction on the failed shard"
    );

    f.shards[1]
        .psql("postgres", "ALTER TABLE payments DROP CONSTRAINT not_yet")
        .unwrap();
    let (stop_tx, cdc) = spawn_cdc(&f.topology, &options);
    wait_streaming(&f.source).await;
    wait_caught_up(&f.source, &options.slot).await;
    stop_tx.send(true).unwrap();
    cdc.await.unwrap().unwrap();
    assert_converged(&f);
    assert_eq!(
        f.shards
            .iter()
            .map(|s| s
                .psql("postgres", "SELECT count(*) FROM payments")
                .unwrap()
                .trim()
                .parse::<u64>()
                .unwrap())
            .sum::<u64>(),
        1001
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_touched_again_in_one_transaction_or_commit_group_end_as_on_the_source() {
    // The appliers batch inserts into multi-row INSERTs and fold later
    // updates and deletes of those rows into them: updates with unchanged
    // TOAST, primary key changes, deletes, the same key inserted again, a
    // statement of another table in between, and many small transactions
    // grouped into one target commit.
    let f = fleet();
    let options = RunOptions {
        heartbeat: Duration::from_millis(200),
        ..RunOptions::default()
    };
    let (stop_tx, cdc) = spawn_cdc(&f.topology, &options);
    wait_streaming(&f.source).await;
    let big = "ü".repeat(5000);
    f.source
        .psql(
            "postgres",
            &format!(
                "BEGIN;
                 INSERT INTO payments SELECT m, i, 1, CASE WHEN i % 2 = 0 THEN '{big}' END, NULL
                   FROM generate_series(1, 6) m, generate_series(1, 20) i;
                 UPDATE payments SET amount = amount + 1 WHERE id % 3 = 0;
                 UPDATE payments SET id = id + 100 WHERE id % 4 = 0;
                 DELETE FROM payments WHERE id = 5;
                 INSERT INTO payments VALUES (1, 5, 42, 'again', NULL);
                 INSERT INTO payouts VALUES (1000, 1, 1);
                 UPDATE payments SET amount = 7, meta = '{{\"x\": 1}}' WHERE id = 104;
                 DELETE FROM payments WHERE id = 7 AND merchant_id < 4;
                 COMMIT"
            ),
        )
        .unwrap();
    f.source
        .psql(
            "postgres",
            "DO $$ BEGIN
                   FOR i IN 1..300 LOOP
                     INSERT INTO payments VALUES (1 + i % 6, 1000 + i, 1, NULL, NULL);
                     UPDATE payments SET amount = 2, note = 'captured' WHERE merchant_id = 1 + i % 6 AND id = 1000 + i;
                     IF i % 7 = 0 THEN DELETE FROM payments WHERE merchant_id = 1 + i % 6 AND id = 1000 + i; END IF;
                     COMMIT;
                   END LOOP;
                 END $$",
        )
        .unwrap();
    wait_caught_up(&f.source, &options.slot).await;
    stop_tx.send(true).unwrap();
    cdc.await.unwrap().unwrap();
    assert_converged(&f);
    assert_eq!(
        rows(&f.source, "payments", "note = 'captured'")
            .lines()
            .count(),
        300 - 300 / 7
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_long_runs_is_copied_in_large_groups_and_ends_as_on_the_source() {
    // Written while cdc is stopped, so the stream holds a backlog: groups
    // stay open for what follows, and each shard gets runs of hundreds of
    // inserts, written as COPY. Values that COPY must escape (tab, newline,
    // carriage return, backslash, a literal \N, NULL), rows updated, moved
    // between keys and deleted inside the run, keys inserted again, and
    // rows touched again in later transactions of the same group.
    let f = fleet();
    let options = RunOptions {
        heartbeat: Duration::from_millis(200),
        ..RunOptions::default()
    };
    start_and_stop_cdc(&f.topology, &f.source, &options).await;
    f.source
        .psql(
            "postgres",
            r#"BEGIN;
               INSERT INTO payments SELECT m, i, i / 100.0,
                      CASE i % 5 WHEN 0 THEN E'tab\there\nnew\rline' WHEN 1 THEN E'back\\slash \\N' WHEN 2 THEN '\N' WHEN 3 THEN NULL ELSE 'ünï' END,
                      CASE WHEN i % 2 = 0 THEN jsonb_build_object('k', E'a\tb', 'i', i) END
                 FROM generate_series(1, 4) m, generate_series(1, 400) i;
               UPDATE payments SET amount = amount + 1, note = E'up\\dated\t' WHERE id % 3 = 0;
               UPDATE payments SET id = id + 1000 WHERE id % 10 = 0;
               DELETE FROM payments WHERE id % 11 = 0;
               INSERT INTO payments SELECT m, 11, 9, 'again', NULL FROM generate_series(1, 4) m;
               COMMIT;"#,
        )
        .unwrap();
    f.source
        .psql(
            "postgres",
            "DO $$ BEGIN
                   FOR t IN 1..40 LOOP
                     INSERT INTO payments SELECT m, 100000 * t + i, 1, NULL, NULL
                       FROM generate_series(1, 4) m, generate_series(1, 80) i;
                     UPDATE payments SET note = 'captured' WHERE id BETWEEN 100000 * t AND 100000 * t + 40;
                     -- rows of earlier transactions of the same group
                     UPDATE payments SET amount = amount + t WHERE id BETWEEN 100000 * (t - 1) + 70 AND 100000 * (t - 1) + 75;
                     DELETE FROM payments WHERE id = 100000 * (t - 1) + 80;
                     COMMIT;
                   END LOOP;
                 END $$",
        )
        .unwrap();
    let (stop_tx, cdc) = spawn_cdc(&f.topology, &options);
    wait_caught_up(&f.source, &options.slot).await;
    stop_tx.send(true).unwrap();
    let report = cdc.await.unwrap().unwrap();
    assert_eq!(report.transactions, 41);
    assert_converged(&f);
    let escaped = rows(
        &f.source,
        "payments",
        r"note LIKE E'%\\N%' OR note LIKE E'%\t%'",
    );
    assert!(escaped.lines().count() > 100, "{escaped}");
}
