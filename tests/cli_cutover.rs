//! `shardline cutover` through the built binaries: a real `cdc run`, a
//! real `router`, several clients writing and reading payments of many
//! merchants through the router while stages of 5%, 20% and 100% switch;
//! a stage whose CDC does not advance aborts within --max-pause; bad
//! input changes nothing.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shardline_testkit::PgServer;

const PASSWORD: &str = "pw-cutover";
const SCHEMA: &str = "CREATE TABLE payments (merchant_id bigint, id bigint, amount int NOT NULL, PRIMARY KEY (merchant_id, id));";
const MERCHANTS: i64 = 400;
const CLIENTS: i64 = 6;

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Fleet {
    server: PgServer,
    _dir: tempfile::TempDir,
    config: String,
}

fn fleet(cutover: bool) -> Fleet {
    let server = PgServer::start().unwrap();
    for db in ["mono", "tx0", "tx1", "settle"] {
        server.create_database(db).unwrap();
        server.psql(db, SCHEMA).unwrap();
        server
            .psql(
                db,
                "CREATE TABLE settlements (id bigint PRIMARY KEY, total int)",
            )
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shardline.toml");
    let cutover = if cutover {
        "[cutover]\nenabled = true\n"
    } else {
        ""
    };
    std::fs::write(
        &path,
        format!(
            "[source]\nurl = \"{}\"\n[contexts.transactions]\ntables = [\"payments\"]\nshard_key = \"merchant_id\"\nshards = [\"{}\", \"{}\"]\n[contexts.settlements]\ntables = [\"settlements\"]\nurl = \"{}\"\n[[router.users]]\nname = \"app\"\npassword = \"{PASSWORD}\"\n{cutover}",
            server.url("mono"),
            server.url("tx0"),
            server.url("tx1"),
            server.url("settle"),
        ),
    )
    .unwrap();
    Fleet {
        server,
        config: path.display().to_string(),
        _dir: dir,
    }
}

impl Fleet {
    fn shardline(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_shardline"))
            .args(["--config", &self.config])
            .args(args)
            .output()
            .unwrap()
    }

    fn spawn(&self, args: &[&str]) -> Child {
        Command::new(env!("CARGO_BIN_EXE_shardline"))
            .args(["--config", &self.config])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap()
    }

    fn cdc(&self) -> Kill {
        self.streaming(&["-q", "cdc", "run", "--heartbeat-secs", "1"], "", "1")
    }

    /// Runs cdc with `args` until as many slots whose name is LIKE
    /// `slots%` are active as `want` says (the server holds the monolith
    /// and every shard).
    fn streaming(&self, args: &[&str], slots: &str, want: &str) -> Kill {
        let child = self.spawn(args);
        let active = format!(
            "SELECT count(*) FROM pg_replication_slots WHERE active AND slot_name LIKE '{slots}%'"
        );
        let streaming = (0..300).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            self.sql("mono", &active) == want
        });
        assert!(streaming, "{args:?} did not start streaming");
        Kill(child)
    }

    /// Starts a router; returns it and its port.
    fn router(&self) -> (Kill, u16) {
        let mut child = self.spawn(&["--format", "json", "router", "--listen", "127.0.0.1:0"]);
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let port = loop {
            let line = lines.next().expect("router printed its address").unwrap();
            if let Some(addr) = line.split('"').nth(3).filter(|_| line.contains("listen")) {
                break addr.rsplit(':').next().unwrap().parse().unwrap();
            }
        };
        // Keep reading, so the router never writes into a closed pipe.
        std::thread::spawn(move || lines.for_each(drop));
        (Kill(child), port)
    }

    fn sql(&self, db: &str, sql: &str) -> String {
        self.server.psql(db, sql).unwrap().trim().to_string()
    }

    /// Starts the streams from the shards back to the monolith.
    fn reverse_cdc(&self) -> Kill {
        self.streaming(
            &["-q", "cdc", "run", "--reverse", "--heartbeat-secs", "1"],
            "shardline_reverse_",
            "2",
        )
    }

    /// Waits until every slot (one server: forward and reverse) confirmed
    /// the current position.
    fn caught_up(&self) {
        let lsn = self.sql("mono", "SELECT pg_current_wal_insert_lsn()");
        let ok = (0..300).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            self.sql(
                "mono",
                &format!(
                    "SELECT bool_and(confirmed_flush_lsn >= '{lsn}') FROM pg_replication_slots"
                ),
            ) == "t"
        });
        assert!(ok, "cdc did not catch up");
    }
}

async fn connect(port: u16) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user("app")
        .password(PASSWORD)
        .dbname("app")
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

#[derive(Default)]
struct Load {
    /// (merchant, id) of every committed payment.
    committed: Vec<(i64, i64)>,
    errors: Vec<String>,
    slowest: Duration,
    transactions: u64,
}

/// One client: single-merchant payment transactions in a loop over many
/// merchants (insert, read it back, capture), half of them through the
/// extended protocol, half through the simple one.
async fn client(port: u16, n: i64, stop: Arc<AtomicBool>, load: Arc<Mutex<Load>>) {
    let mut db = connect(port).await;
    let mut seq = 0i64;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let merchant = (seq * 7 + n * 13) % MERCHANTS + 1;
        let id = n * 10_000_000 + seq;
        let started = Instant::now();
        let result: Result<(), String> = async {
            let e = |e: tokio_postgres::Error| {
                e.as_db_error()
                    .map(|d| format!("{} {}", d.code().code(), d.message()))
                    .unwrap_or_else(|| e.to_string())
            };
            if seq % 2 == 0 {
                let txn = db.transaction().await.map_err(e)?;
                txn.execute(
                    "INSERT INTO payments (merchant_id, id, amount) VALUES ($1, $2, $3)",
                    &[&merchant, &id, &(seq as i32 % 1000)],
                )
                .await
                .map_err(e)?;
                let found: i64 = txn
                    .query_one(
                        "SELECT count(*) FROM payments WHERE merchant_id = $1 AND id = $2",
                        &[&merchant, &id],
                    )
                    .await
                    .map_err(e)?
                    .get(0);
                if found != 1 {
                    return Err(format!("read back {found} rows of ({merchant},{id})"));
                }
                txn.execute(
                    "UPDATE payments SET amount = amount + 1 WHERE merchant_id = $1 AND id = $2",
                    &[&merchant, &id],
                )
                .await
                .map_err(e)?;
                txn.commit().await.map_err(e)
            } else {
                db.simple_query(&format!(
                    "BEGIN; INSERT INTO payments (merchant_id, id, amount) VALUES ({merchant}, {id}, {}); \
                     UPDATE payments SET amount = amount + 1 WHERE merchant_id = {merchant} AND id = {id}; COMMIT",
                    seq % 1000
                ))
                .await
                .map(|_| ())
                .map_err(e)
            }
        }
        .await;
        let took = started.elapsed();
        let failed = {
            let mut l = load.lock().unwrap();
            l.slowest = l.slowest.max(took);
            l.transactions += 1;
            match result {
                Ok(()) => {
                    l.committed.push((merchant, id));
                    false
                }
                Err(err) => {
                    l.errors
                        .push(format!("client {n}, ({merchant},{id}): {err}"));
                    true
                }
            }
        };
        if failed {
            db = connect(port).await;
        }
    }
}

fn start_load(
    ports: &[u16],
    rt: &tokio::runtime::Runtime,
) -> (
    Arc<AtomicBool>,
    Arc<Mutex<Load>>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let load = Arc::new(Mutex::new(Load::default()));
    let tasks = (0..CLIENTS)
        .map(|n| {
            let port = ports[n as usize % ports.len()];
            rt.spawn(client(port, n, stop.clone(), load.clone()))
        })
        .collect();
    (stop, load, tasks)
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn stages_of_5_20_and_100_percent_switch_under_load_without_a_failed_or_lost_payment() {
    let fleet = fleet(true);
    let _cdc = fleet.cdc();
    let (_router, port) = fleet.router();
    let (_router2, port2) = fleet.router();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (stop, load, tasks) = start_load(&[port, port2], &rt);
    std::thread::sleep(Duration::from_secs(2));
    let before = load.lock().unwrap().transactions;
    assert!(before > 20, "the load did not run: {before} transactions");

    let plan = json(&fleet.shardline(&["--format", "json", "cutover", "plan", "--cohort", "5"]));
    assert_eq!(plan["buckets"].as_array().unwrap().len(), 52);
    assert!(!plan["merchant_sample"].as_array().unwrap().is_empty());

    let mut pauses = Vec::new();
    for stage in ["5", "20", "100"] {
        let report = json(&fleet.shardline(&[
            "--format",
            "json",
            "cutover",
            "start",
            "--cohort",
            stage,
            "--max-pause",
            "10",
        ]));
        assert_eq!(report["state"], "switched", "{report}");
        assert_eq!(report["routers"], 2, "{report}");
        let pause = report["pause_ms"].as_f64().unwrap();
        assert!(pause > 0.0 && pause < 10_000.0, "{report}");
        pauses.push(format!(
            "{stage}%: {pause:.0} ms (drain {:.0}, catch-up {:.0})",
            report["drain_ms"].as_f64().unwrap(),
            report["catchup_ms"].as_f64().unwrap()
        ));
        // A statement without a key runs where every bucket lives, and
        // is refused while they live on both sides.
        let keyless = rt.block_on(async {
            connect(port2)
                .await
                .simple_query("SELECT merchant_id FROM payments LIMIT 5")
                .await
                .map(|m| {
                    m.iter()
                        .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
                        .count()
                })
        });
        match stage {
            "100" => assert_eq!(keyless.unwrap(), 5),
            _ => {
                let e = keyless.unwrap_err();
                let db = e.as_db_error().unwrap();
                assert_eq!(db.code().code(), "0A000");
                assert!(db.message().contains("monolith"), "{}", db.message());
            }
        }
        std::thread::sleep(Duration::from_millis(1500));
    }
    let during = load.lock().unwrap().transactions;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        rt.block_on(t).unwrap();
    }
    let load = std::mem::take(&mut *load.lock().unwrap());
    eprintln!(
        "cutover under load: {} transactions ({} during the stages), pauses {pauses:?} ms, slowest transaction {:?}",
        load.transactions,
        during - before,
        load.slowest
    );
    assert!(
        load.errors.is_empty(),
        "client statements failed: {:#?}",
        load.errors
    );
    assert!(load.slowest < Duration::from_secs(10));

    // Every payment is on its shard exactly once, captured.
    fleet.caught_up();
    let rows = |db: &str| -> Vec<(i64, i64, i32)> {
        fleet
            .sql(
                db,
                "COPY (SELECT merchant_id, id, amount FROM payments ORDER BY 1, 2) TO STDOUT",
            )
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                (
                    f[0].parse().unwrap(),
                    f[1].parse().unwrap(),
                    f[2].parse().unwrap(),
                )
            })
            .collect()
    };
    let topology = shardline_topology::Topology::load(std::path::Path::new(&fleet.config)).unwrap();
    let placement = match &topology.sharded_context().unwrap().kind {
        shardline_topology::ContextKind::Sharded { placement, .. } => placement.clone(),
        _ => unreachable!(),
    };
    let mut on_shards: Vec<(i64, i64)> = Vec::new();
    for (shard, db) in ["tx0", "tx1"].iter().enumerate() {
        for (m, id, amount) in rows(db) {
            assert_eq!(
                placement.shard(&shardline_topology::ShardKey::Int(m)),
                shard,
                "payment ({m},{id}) is on the wrong shard"
            );
            let expected = (id % 10_000_000) as i32 % 1000 + 1;
            assert_eq!(
                amount, expected,
                "payment ({m},{id}) was not captured exactly once"
            );
            on_shards.push((m, id));
        }
    }
    let mut committed = load.committed.clone();
    committed.sort_unstable();
    on_shards.sort_unstable();
    assert_eq!(on_shards.len(), committed.len(), "payments lost or added");
    assert_eq!(on_shards, committed);

    let status = json(&fleet.shardline(&["--format", "json", "cutover", "status"]));
    assert_eq!(status["buckets_on_shards"], 1024);
    let cohorts = status["cohorts"].as_array().unwrap();
    assert_eq!(cohorts.len(), 3, "{status}");
    assert!(cohorts
        .iter()
        .all(|c| c["state"] == "switched" && c["pause_ms"].as_f64().is_some()));
    assert_eq!(status["routers"].as_array().unwrap().len(), 2);
    assert!(status["forward"]["lag_bytes"].is_i64());

    // Everything is on the shards now: a stage has nothing left to move.
    let again =
        json(&fleet.shardline(&["--format", "json", "cutover", "start", "--cohort", "100"]));
    assert_eq!(again["state"], "nothing to move");
}

#[test]
fn a_stage_whose_cdc_does_not_advance_aborts_within_max_pause_and_merchants_stay_on_the_monolith() {
    let fleet = fleet(true);
    let cdc = fleet.cdc();
    drop(cdc);
    let (_router, port) = fleet.router();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (stop, load, tasks) = start_load(&[port], &rt);
    std::thread::sleep(Duration::from_secs(1));
    let started = Instant::now();
    let out = fleet.shardline(&["cutover", "start", "--cohort", "20", "--max-pause", "1"]);
    let took = started.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        rt.block_on(t).unwrap();
    }
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("aborted") && err.contains("CDC did not confirm"),
        "{err}"
    );
    assert!(err.lines().any(|l| l.starts_with("hint: ")), "{err}");
    assert!(took < Duration::from_secs(6), "took {took:?}");
    let load = std::mem::take(&mut *load.lock().unwrap());
    assert!(load.errors.is_empty(), "{:#?}", load.errors);
    assert!(!load.committed.is_empty());
    // Every payment, before, during and after the aborted stage, is on the
    // monolith (CDC is down, so the shards have none).
    assert_eq!(
        fleet.sql("mono", "SELECT count(*) FROM payments"),
        load.committed.len().to_string()
    );
    assert_eq!(fleet.sql("tx0", "SELECT count(*) FROM payments"), "0");
    assert_eq!(fleet.sql("tx1", "SELECT count(*) FROM payments"), "0");
    let status = json(&fleet.shardline(&["--format", "json", "cutover", "status"]));
    assert_eq!(status["buckets_on_shards"], 0);
    assert_eq!(status["cohorts"][0]["state"], "aborted");
    assert!(status["cohorts"][0]["error"]
        .as_str()
        .unwrap()
        .contains("CDC"));
}

#[test]
fn bad_input_is_refused_with_a_hint_and_changes_nothing() {
    let fleet = fleet(true);
    let refused = |args: &[&str], needle: &str| {
        let out = fleet.shardline(args);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        let lines: Vec<&str> = err.lines().collect();
        assert!(
            lines[0].starts_with("error: ") && lines[0].contains(needle),
            "{args:?}: {err}"
        );
        assert!(
            lines.iter().any(|l| l.starts_with("hint: ")),
            "{args:?}: {err}"
        );
    };
    refused(&["cutover", "start", "--cohort", "101"], "--cohort 101");
    refused(&["cutover", "start", "--cohort", "0"], "--cohort 0");
    refused(&["cutover", "plan", "--cohort", "five"], "--cohort five");
    refused(&["cutover", "start", "--merchants", "42,x7"], "\"x7\"");
    refused(&["cutover", "start", "--merchants", "42,,7"], "--merchants");
    refused(
        &["cutover", "start", "--cohort", "5", "--max-pause", "0"],
        "--max-pause",
    );
    // No CDC slot: nothing to wait for.
    refused(
        &["cutover", "start", "--cohort", "5"],
        "replication slot \"shardline\" does not exist",
    );
    refused(&["cutover", "rollback", "--cohort", "5"], "does not exist");
    // Nothing was written to the monolith.
    assert_eq!(
        fleet.sql(
            "mono",
            "SELECT to_regclass('shardline.cutover_cohorts') IS NULL"
        ),
        "t"
    );
    // A shard role that may not set replication origins: a rollback's
    // reverse stream could not tell the forward stream's writes apart.
    fleet
        .server
        .psql("postgres", "CREATE ROLE plain LOGIN")
        .unwrap();
    let original = std::fs::read_to_string(&fleet.config).unwrap();
    let tx1 = fleet.server.url("tx1");
    std::fs::write(
        &fleet.config,
        original.replace(&tx1, &tx1.replace("postgres@", "plain@")),
    )
    .unwrap();
    refused(
        &["cutover", "start", "--cohort", "5"],
        "role plain may not use replication origins",
    );
    std::fs::write(&fleet.config, original).unwrap();
    // A context that takes CDC changes every 5 minutes would hold the
    // slot, and so the switch, that long.
    let slow = std::fs::read_to_string(&fleet.config).unwrap().replace(
        "[contexts.settlements]\n",
        "[contexts.settlements]\napply_interval = \"5m\"\n",
    );
    std::fs::write(&fleet.config, slow).unwrap();
    refused(
        &["cutover", "start", "--cohort", "5"],
        "context settlements applies CDC changes every 300 s",
    );
    // Without [cutover] enabled, routers would not follow a stage.
    let plain = self::fleet(false);
    let out = plain.shardline(&["cutover", "start", "--cohort", "5"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("not enabled") && err.contains("hint:"),
        "{err}"
    );
}

#[test]
fn a_merchants_stage_moves_their_buckets_records_verify_and_routes_each_side() {
    let fleet = fleet(true);
    let _cdc = fleet.cdc();
    let (_router, port) = fleet.router();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let db = rt.block_on(connect(port));
    let insert = |merchant: i64, id: i64| {
        rt.block_on(db.execute(
            "INSERT INTO payments (merchant_id, id, amount) VALUES ($1, $2, 1)",
            &[&merchant, &id],
        ))
        .unwrap();
    };
    for m in 1..=50 {
        insert(m, 1);
    }
    rt.block_on(db.execute("INSERT INTO settlements VALUES (1, 10)", &[]))
        .unwrap();
    fleet.caught_up();

    let plan = json(&fleet.shardline(&["--format", "json", "cutover", "plan", "--merchants", "7"]));
    assert_eq!(plan["buckets"].as_array().unwrap().len(), 1);
    assert!(plan["merchant_sample"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m == "7"));
    let report = json(&fleet.shardline(&[
        "--format",
        "json",
        "cutover",
        "start",
        "--merchants",
        "7",
        "--verify",
    ]));
    assert_eq!(report["state"], "switched", "{report}");
    assert_eq!(report["buckets_on_shards"], 1);
    assert_eq!(report["verify_before"]["equal"], true, "{report}");
    assert_eq!(report["verify_after"]["equal"], true, "{report}");

    // Merchant 7 now writes on its shard only; merchant 8 (another bucket)
    // and the unsharded context still on the monolith.
    insert(7, 2);
    insert(8, 2);
    rt.block_on(db.execute("INSERT INTO settlements VALUES (2, 20)", &[]))
        .unwrap();
    let count = |d: &str, sql: &str| fleet.sql(d, sql);
    assert_eq!(
        count(
            "mono",
            "SELECT count(*) FROM payments WHERE merchant_id = 7"
        ),
        "1"
    );
    assert_eq!(
        count(
            "mono",
            "SELECT count(*) FROM payments WHERE merchant_id = 8 AND id = 2"
        ),
        "1"
    );
    assert_eq!(count("mono", "SELECT count(*) FROM settlements"), "2");
    fleet.caught_up();
    let on_shards = |sql: &str| -> i64 {
        ["tx0", "tx1"]
            .iter()
            .map(|d| count(d, sql).parse::<i64>().unwrap())
            .sum()
    };
    assert_eq!(
        on_shards("SELECT count(*) FROM payments WHERE merchant_id = 7"),
        2
    );
    assert_eq!(
        on_shards("SELECT count(*) FROM payments WHERE merchant_id = 8"),
        2
    );
    // Reads follow the writes.
    let read = |m: i64| -> i64 {
        rt.block_on(db.query_one(
            "SELECT count(*) FROM payments WHERE merchant_id = $1",
            &[&m],
        ))
        .unwrap()
        .get(0)
    };
    assert_eq!(read(7), 2);
    assert_eq!(read(8), 2);

    let status = json(&fleet.shardline(&["--format", "json", "cutover", "status"]));
    let cohort = &status["cohorts"][0];
    assert_eq!(cohort["selector"], "merchants 7");
    assert_eq!(cohort["verify_before"]["equal"], true);
    assert!(status["reverse"].as_array().unwrap().is_empty());
}

#[test]
fn a_hold_whose_coordinator_died_is_released_by_the_routers_after_its_deadline() {
    let fleet = fleet(true);
    let (_router, port) = fleet.router();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let db = rt.block_on(connect(port));
    rt.block_on(db.execute(
        "INSERT INTO payments (merchant_id, id, amount) VALUES (7, 1, 1)",
        &[],
    ))
    .unwrap();
    let bucket = {
        let topology =
            shardline_topology::Topology::load(std::path::Path::new(&fleet.config)).unwrap();
        match &topology.sharded_context().unwrap().kind {
            shardline_topology::ContextKind::Sharded { placement, .. } => {
                placement.bucket(&shardline_topology::ShardKey::Int(7))
            }
            _ => unreachable!(),
        }
    };
    // What a coordinator killed right after its hold leaves behind.
    fleet.sql(
        "mono",
        &format!(
            "INSERT INTO shardline.cutover_cohorts (selector, buckets, state, epoch, max_pause_ms, hold_deadline)
             VALUES ('merchants 7', ARRAY[{bucket}], 'holding', nextval('shardline.cutover_epoch'), 1000,
                     clock_timestamp() + interval '1 second');
             NOTIFY shardline_cutover;"
        ),
    );
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    rt.block_on(db.execute(
        "INSERT INTO payments (merchant_id, id, amount) VALUES (7, 2, 1)",
        &[],
    ))
    .unwrap();
    let held = started.elapsed();
    assert!(
        held > Duration::from_millis(500) && held < Duration::from_secs(5),
        "held {held:?}"
    );
    assert_eq!(
        fleet.sql(
            "mono",
            "SELECT count(*) FROM payments WHERE merchant_id = 7"
        ),
        "2"
    );
    assert_eq!(
        fleet.sql("mono", "SELECT state FROM shardline.cutover_cohorts"),
        "aborted"
    );
}

/// Every committed payment, and nothing else, in `dbs`, captured once.
fn holds_exactly(fleet: &Fleet, dbs: &[&str], committed: &[(i64, i64)]) {
    let mut found: Vec<(i64, i64)> = Vec::new();
    for db in dbs {
        let text = fleet.sql(
            db,
            "COPY (SELECT merchant_id, id, amount FROM payments) TO STDOUT",
        );
        for l in text.lines().filter(|l| !l.is_empty()) {
            let f: Vec<i64> = l.split('\t').map(|v| v.parse().unwrap()).collect();
            assert_eq!(
                f[2],
                (f[1] % 10_000_000) % 1000 + 1,
                "payment ({},{}) in {db} was not captured exactly once",
                f[0],
                f[1]
            );
            found.push((f[0], f[1]));
        }
    }
    let mut committed = committed.to_vec();
    committed.sort_unstable();
    found.sort_unstable();
    assert_eq!(
        found.len(),
        committed.len(),
        "{dbs:?}: payments lost or added"
    );
    assert_eq!(found, committed, "{dbs:?}");
}

#[test]
fn a_stage_rolls_back_under_load_and_both_sides_keep_every_payment() {
    let fleet = fleet(true);
    let _cdc = fleet.cdc();
    let _reverse = fleet.reverse_cdc();
    let (_router, port) = fleet.router();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (stop, load, tasks) = start_load(&[port], &rt);
    std::thread::sleep(Duration::from_secs(1));
    let forward = json(&fleet.shardline(&[
        "--format",
        "json",
        "cutover",
        "start",
        "--cohort",
        "20",
        "--max-pause",
        "10",
    ]));
    assert_eq!(forward["state"], "switched", "{forward}");
    std::thread::sleep(Duration::from_millis(1500));
    let back = json(&fleet.shardline(&[
        "--format",
        "json",
        "cutover",
        "rollback",
        "--cohort",
        "5",
        "--max-pause",
        "10",
    ]));
    assert_eq!(back["state"], "rolled back", "{back}");
    assert_eq!(back["buckets"].as_array().unwrap().len(), 205 - 52);
    assert_eq!(back["buckets_on_shards"], 52);
    let pause = back["pause_ms"].as_f64().unwrap();
    assert!(pause > 0.0 && pause < 10_000.0, "{back}");
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        rt.block_on(t).unwrap();
    }
    let load = std::mem::take(&mut *load.lock().unwrap());
    eprintln!(
        "rollback under load: {} transactions, forward pause {:.0} ms, rollback pause {pause:.0} ms (drain {:.0}, catch-up {:.0})",
        load.transactions,
        forward["pause_ms"].as_f64().unwrap(),
        back["drain_ms"].as_f64().unwrap(),
        back["catchup_ms"].as_f64().unwrap()
    );
    assert!(
        load.errors.is_empty(),
        "client statements failed: {:#?}",
        load.errors
    );
    // Both directions caught up: the monolith has what the moved merchants
    // wrote on the shards, the shards what the others wrote on the monolith.
    fleet.caught_up();
    holds_exactly(&fleet, &["mono"], &load.committed);
    holds_exactly(&fleet, &["tx0", "tx1"], &load.committed);
    let status = json(&fleet.shardline(&["--format", "json", "cutover", "status"]));
    assert_eq!(status["buckets_on_shards"], 52);
    assert_eq!(status["cohorts"][1]["direction"], "back");
    assert_eq!(status["reverse"].as_array().unwrap().len(), 2);
}
