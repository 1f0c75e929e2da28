//! `shardline cdc run` as a process: one source transaction of a million
//! rows is applied in bounded memory.

use std::process::{Command, Stdio};
use std::time::Duration;

use shardline_testkit::PgServer;

const SCHEMA: &str = "CREATE TABLE events (merchant_id bigint, id bigint, body text, PRIMARY KEY (merchant_id, id));";

/// Peak resident memory of a process, in KiB (Linux).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_million_row_transaction_is_applied_in_bounded_memory() {
    let source = PgServer::start().unwrap();
    let shards: Vec<PgServer> = (0..2).map(|_| PgServer::start().unwrap()).collect();
    for s in std::iter::once(&source).chain(&shards) {
        s.psql("postgres", SCHEMA).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("shardline.toml");
    std::fs::write(
        &config,
        format!(
            "[source]\nurl = \"{}\"\n[contexts.transactions]\ntables = [\"events\"]\nshard_key = \"merchant_id\"\nshards = [\"{}\", \"{}\"]\n",
            source.url("postgres"),
            shards[0].url("postgres"),
            shards[1].url("postgres")
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_shardline"))
        .arg("--config")
        .arg(&config)
        .args(["-q", "cdc", "run", "--heartbeat-secs", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let streaming = (0..300).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        source
            .psql("postgres", "SELECT count(*) FROM pg_stat_replication")
            .unwrap()
            .trim()
            == "1"
    });
    assert!(streaming, "cdc did not start streaming");
    let before = peak_rss_kib(child.id());
    // About 130 MB of row data in one transaction.
    source
        .psql("postgres", "INSERT INTO events SELECT g % 1000, g, repeat(md5(g::text), 4) FROM generate_series(1, 1000000) g")
        .unwrap();
    let end = source
        .psql("postgres", "SELECT pg_current_wal_insert_lsn()")
        .unwrap();
    let caught_up = (0..3000).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        source
            .psql(
                "postgres",
                &format!(
                    "SELECT confirmed_flush_lsn >= '{}' FROM pg_replication_slots",
                    end.trim()
                ),
            )
            .unwrap()
            .trim()
            == "t"
    });
    let peak = peak_rss_kib(child.id());
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(caught_up, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let total: u64 = shards
        .iter()
        .map(|s| {
            s.psql("postgres", "SELECT count(*) FROM events")
                .unwrap()
                .trim()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert_eq!(total, 1_000_000);
    eprintln!("cdc peak RSS: {before} KiB streaming, {peak} KiB after a 1M-row transaction");
    assert!(
        peak < before + 100 * 1024,
        "cdc grew from {before} KiB to {peak} KiB: it held the transaction in memory"
    );
}

#[test]
fn the_reverse_slots_created_at_start_are_no_warning() {
    // What a newcomer sees in the demo: the way back creates one slot per
    // shard at its start, by design, and says so at info level only.
    let server = PgServer::start().unwrap();
    for db in ["mono", "tx0", "tx1"] {
        server.create_database(db).unwrap();
        server.psql(db, SCHEMA).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("shardline.toml");
    std::fs::write(
        &config,
        format!(
            "[source]\nurl = \"{}\"\n[contexts.transactions]\ntables = [\"events\"]\nshard_key = \"merchant_id\"\nshards = [\"{}\", \"{}\"]\n",
            server.url("mono"),
            server.url("tx0"),
            server.url("tx1")
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let child = Command::new(env!("CARGO_BIN_EXE_shardline"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let streaming = (0..300).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            server
                .psql("postgres", "SELECT count(*) FROM pg_stat_replication")
                .unwrap()
                .trim()
                != "0"
        });
        std::thread::sleep(Duration::from_millis(500));
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(streaming && out.status.success(), "{stderr}");
        stderr
    };
    let reverse = run(&["cdc", "run", "--reverse"]);
    assert!(!reverse.contains("created the slot now"), "{reverse}");
    // The forward slot created by cdc itself still warns: history before
    // it was never copied.
    let forward = run(&["cdc", "run"]);
    assert!(
        forward.contains("WARN") && forward.contains("created the slot now"),
        "{forward}"
    );
}

/// A source whose role `app` owns `events` and may replicate, but may not
/// create shardline's schema in the database, beside one shard; the
/// topology skips the DDL capture (it would need a superuser first).
struct Unprivileged {
    source: PgServer,
    shard: PgServer,
    dir: tempfile::TempDir,
}

impl Unprivileged {
    fn start(rows: u32) -> Self {
        let source = PgServer::start().unwrap();
        let shard = PgServer::start().unwrap();
        source
            .psql(
                "postgres",
                &format!(
                    "{SCHEMA} CREATE ROLE app LOGIN REPLICATION; ALTER TABLE events OWNER TO app;
                     INSERT INTO events SELECT g % 7, g, 'x' FROM generate_series(1, {rows}) g;"
                ),
            )
            .unwrap();
        shard.psql("postgres", SCHEMA).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("shardline.toml"),
            format!(
                "[source]\nurl = \"postgres://app@127.0.0.1:{}/postgres\"\nddl = \"stop\"\n[contexts.transactions]\ntables = [\"events\"]\nshard_key = \"merchant_id\"\nshards = [\"{}\"]\n",
                source.port(),
                shard.url("postgres")
            ),
        )
        .unwrap();
        Self { source, shard, dir }
    }

    fn shardline(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_shardline"));
        cmd.arg("--config")
            .arg(self.dir.path().join("shardline.toml"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    }

    /// Runs `args`, expects exit 2 with the grant as the hint, then grants it.
    fn refused_then_granted(&self, args: &[&str]) {
        let out = self.shardline(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("permission denied for database postgres (SQLSTATE 42501)"),
            "{stderr}"
        );
        assert!(
            stderr.contains("hint: as a superuser, GRANT CREATE ON DATABASE postgres TO the role shardline connects as"),
            "{stderr}"
        );
        self.source
            .psql("postgres", "GRANT CREATE ON DATABASE postgres TO app")
            .unwrap();
    }
}

#[test]
fn a_source_role_without_create_on_the_database_is_told_the_grant_that_works() {
    let f = Unprivileged::start(0);
    let cdc = ["-q", "cdc", "run", "--heartbeat-secs", "1"];
    f.refused_then_granted(&cdc);
    // The grant the hint names is enough: cdc streams.
    let mut child = f.shardline(&cdc).spawn().unwrap();
    let streaming = (0..300).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        f.source
            .psql("postgres", "SELECT count(*) FROM pg_stat_replication")
            .unwrap()
            .trim()
            == "1"
    });
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    assert!(streaming, "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn backfill_as_a_source_role_without_create_on_the_database_is_told_the_grant_that_works() {
    let f = Unprivileged::start(50);
    f.refused_then_granted(&["-q", "backfill"]);
    let out = f.shardline(&["-q", "backfill"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        f.shard
            .psql("postgres", "SELECT count(*) FROM events")
            .unwrap()
            .trim(),
        "50"
    );
}
