//! `shardline schema apply` against real servers: all-or-nothing leaves no
//! database changed when a statement fails on one; database by database
//! resumes after a kill where it stopped.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use shardline_testkit::PgServer;

const SCHEMA: &str = "CREATE TABLE payments (merchant_id bigint, id bigint, amount numeric(18,2), PRIMARY KEY (merchant_id, id));
INSERT INTO payments SELECT g % 10, g, g FROM generate_series(1, 200) g;";

struct Fleet {
    shards: Vec<PgServer>,
    settlements: PgServer,
    config: tempfile::TempDir,
}

fn fleet() -> Fleet {
    let source = PgServer::start().unwrap();
    let shards: Vec<PgServer> = (0..2)
        .map(|_| {
            PgServer::builder()
                .setting("max_prepared_transactions", "10")
                .start()
                .unwrap()
        })
        .collect();
    // Two-phase commit off here.
    let settlements = PgServer::start().unwrap();
    for s in &shards {
        s.psql("postgres", SCHEMA).unwrap();
    }
    settlements
        .psql("postgres", "CREATE TABLE payouts (id bigint PRIMARY KEY)")
        .unwrap();
    let config = tempfile::tempdir().unwrap();
    std::fs::write(
        config.path().join("shardline.toml"),
        format!(
            "[source]\nurl = \"{}\"\n[contexts.transactions]\ntables = [\"payments\"]\nshard_key = \"merchant_id\"\nshards = [\"{}\", \"{}\"]\n[contexts.settlements]\ntables = [\"payouts\"]\nurl = \"{}\"\n",
            source.url("postgres"),
            shards[0].url("postgres"),
            shards[1].url("postgres"),
            settlements.url("postgres")
        ),
    )
    .unwrap();
    drop(source);
    Fleet {
        shards,
        settlements,
        config,
    }
}

impl Fleet {
    fn shardline(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_shardline"));
        cmd.arg("--config")
            .arg(self.config.path().join("shardline.toml"))
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.shardline(args).output().unwrap()
    }

    fn migration(&self, name: &str, sql: &str) -> String {
        let path = self.config.path().join(name);
        std::fs::write(&path, sql).unwrap();
        path.display().to_string()
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn one(server: &PgServer, sql: &str) -> String {
    server.psql("postgres", sql).unwrap().trim().to_string()
}

fn has_column(server: &PgServer, column: &str) -> bool {
    one(
        server,
        &format!("SELECT count(*) FROM information_schema.columns WHERE table_name = 'payments' AND column_name = '{column}'"),
    ) == "1"
}

#[test]
fn all_or_nothing_leaves_no_shard_changed_when_a_statement_fails_on_one() {
    let f = fleet();
    // A row on shard 1 only breaks the new constraint.
    f.shards[1]
        .psql("postgres", "UPDATE payments SET amount = -5 WHERE id = 3")
        .unwrap();
    let file = f.migration(
        "0042_risk.sql",
        "ALTER TABLE payments ADD COLUMN risk int DEFAULT 0;\nALTER TABLE payments ADD CONSTRAINT positive CHECK (amount > 0);\n",
    );
    let out = f.run(&[
        "schema",
        "apply",
        &file,
        "--context",
        "transactions",
        "--dry-run",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let plan = text(&out);
    assert!(
        plan.contains("all or nothing") && plan.matches("to run").count() == 2,
        "{plan}"
    );

    let out = f.run(&["schema", "apply", &file, "--context", "transactions"]);
    let message = text(&out);
    assert_eq!(out.status.code(), Some(2), "{message}");
    assert!(
        message.contains(
            "statement 2 (`ALTER TABLE payments ADD CONSTRAINT positive CHECK (amount > 0)`)"
        ),
        "{message}"
    );
    assert!(
        message.contains(&format!("127.0.0.1:{}/postgres", f.shards[1].port())),
        "{message}"
    );
    assert!(message.contains("SQLSTATE 23514"), "{message}");
    assert!(message.contains("hint: no database changed"), "{message}");
    for (i, shard) in f.shards.iter().enumerate() {
        assert!(!has_column(shard, "risk"), "shard {i} changed");
        assert_eq!(
            one(shard, "SELECT count(*) FROM pg_prepared_xacts"),
            "0",
            "shard {i}"
        );
    }

    // Fixed where it failed, the same file runs everywhere, once.
    f.shards[1]
        .psql("postgres", "UPDATE payments SET amount = 5 WHERE id = 3")
        .unwrap();
    let out = f.run(&["schema", "apply", &file, "--context", "transactions"]);
    assert!(out.status.success(), "{}", text(&out));
    for shard in &f.shards {
        assert!(has_column(shard, "risk"));
        assert_eq!(
            one(
                shard,
                "SELECT count(*) FROM pg_constraint WHERE conname = 'positive'"
            ),
            "1"
        );
    }
    let out = f.run(&[
        "schema",
        "apply",
        &file,
        "--context",
        "transactions",
        "--dry-run",
    ]);
    assert_eq!(
        text(&out).matches("done, skipped").count(),
        2,
        "{}",
        text(&out)
    );
    let out = f.run(&["schema", "apply", &file, "--context", "transactions"]);
    assert!(out.status.success(), "{}", text(&out));

    // The same name with other content is refused where it ran.
    let changed = f.migration(
        "0042_risk.sql",
        "ALTER TABLE payments ADD COLUMN risk bigint;\n",
    );
    let out = f.run(&["schema", "apply", &changed, "--context", "transactions"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("with other content"), "{}", text(&out));

    // A database without two-phase commit is named before anything runs.
    let file = f.migration("0043_all.sql", "CREATE TABLE audit (id int);\n");
    let out = f.run(&["schema", "apply", &file]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "127.0.0.1:{}/postgres has 0",
            f.settlements.port()
        )),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("--per-database"), "{}", text(&out));
    for shard in &f.shards {
        assert_eq!(one(shard, "SELECT to_regclass('audit') IS NULL"), "t");
    }
}

#[test]
fn database_by_database_resumes_after_a_kill_where_it_stopped() {
    let f = fleet();
    let file = f.migration(
        "0044_index.sql",
        "CREATE TABLE risk_notes (id bigint PRIMARY KEY);\nCREATE INDEX CONCURRENTLY payments_amount_idx ON payments (amount);\nALTER TABLE payments ADD COLUMN flagged boolean DEFAULT false;\n",
    );
    let out = f.run(&[
        "schema",
        "apply",
        &file,
        "--context",
        "transactions",
        "--dry-run",
    ]);
    assert!(
        text(&out).contains("database by database (statement 2"),
        "{}",
        text(&out)
    );

    // On shard 1 an open transaction that wrote to payments makes the
    // concurrent index build wait.
    let mut blocker = Command::new(f.shards[1].bindir().program("psql"))
        .args(["-X", "-q", "-d", &f.shards[1].url("postgres")])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    blocker
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"BEGIN; UPDATE payments SET amount = amount WHERE id = 1;\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));

    let mut apply = f
        .shardline(&["schema", "apply", &file, "--context", "transactions"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let waiting = (0..600).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        one(
            &f.shards[1],
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'CREATE INDEX CONCURRENTLY%' AND wait_event_type = 'Lock'",
        ) == "1"
    });
    assert!(waiting, "the index build on shard 1 did not start");
    apply.kill().unwrap();
    apply.wait().unwrap();
    // The killed build leaves an invalid index behind.
    one(
        &f.shards[1],
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'CREATE INDEX CONCURRENTLY%'",
    );
    blocker.kill().unwrap();
    blocker.wait().unwrap();
    assert_eq!(
        one(
            &f.shards[1],
            "SELECT indisvalid FROM pg_index WHERE indexrelid = 'payments_amount_idx'::regclass"
        ),
        "f"
    );

    let out = f.run(&[
        "schema",
        "apply",
        &file,
        "--context",
        "transactions",
        "--dry-run",
    ]);
    let plan = text(&out);
    assert!(
        plan.contains("done, skipped") && plan.contains("resumes at statement 2"),
        "{plan}"
    );
    let out = f.run(&["schema", "apply", &file, "--context", "transactions"]);
    assert!(out.status.success(), "{}", text(&out));
    for (i, shard) in f.shards.iter().enumerate() {
        assert_eq!(
            one(shard, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'payments_amount_idx'::regclass"),
            "t",
            "shard {i}"
        );
        assert!(has_column(shard, "flagged"), "shard {i}");
        assert_eq!(
            one(shard, "SELECT done || '/' || statements || ' ' || (finished_at IS NOT NULL) FROM shardline.schema_migrations"),
            "3/3 true",
            "shard {i}"
        );
    }
}
