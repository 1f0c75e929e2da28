//! A month-partitioned, mixed-case payments table and an oddly named
//! table of another schema, as a real monolith has them, through
//! backfill, cdc under a mixed load (rows moving between partitions and
//! between shards), verify, schema diff, export and a cutover stage and
//! its rollback; then inserts relying on the id sequence on every
//! database never collide.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use shardline_testkit::PgServer;

const SOURCE: &str = r#"
CREATE SCHEMA billing;
CREATE TYPE pay_status AS ENUM ('new', 'captured', 'it''s refunded');
CREATE TABLE "Payments" (
    merchant_id bigint NOT NULL,
    id bigserial,
    created_at timestamptz NOT NULL DEFAULT now(),
    amount numeric(18,2) NOT NULL CHECK (amount > 0),
    fee numeric(18,2) GENERATED ALWAYS AS (round(amount * 0.03, 2)) STORED,
    status pay_status NOT NULL DEFAULT 'new',
    note text DEFAULT 'none',
    PRIMARY KEY (merchant_id, id, created_at)
) PARTITION BY RANGE (created_at);
CREATE TABLE "Payments_2024_01" PARTITION OF "Payments" FOR VALUES FROM ('2024-01-01') TO ('2024-02-01');
CREATE TABLE "Payments_2024_02" PARTITION OF "Payments" FOR VALUES FROM ('2024-02-01') TO ('2024-03-01');
CREATE TABLE "Payments_2024_03" PARTITION OF "Payments" FOR VALUES FROM ('2024-03-01') TO ('2024-04-01');
CREATE TABLE "Payments_default" PARTITION OF "Payments" DEFAULT;
CREATE INDEX payments_captured ON "Payments" (merchant_id, created_at) WHERE status = 'captured';
CREATE TABLE billing."odd.name with space" (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    label text NOT NULL,
    "Mixed Case" int DEFAULT 7
);
INSERT INTO "Payments" (merchant_id, created_at, amount, status)
     SELECT i % 23, timestamptz '2023-12-20' + i * interval '7 hours', 1 + i % 500, (ARRAY['new', 'captured']::pay_status[])[1 + i % 2]
       FROM generate_series(1, 600) i;
INSERT INTO billing."odd.name with space" (label) SELECT 'row ' || i FROM generate_series(1, 50) i;
ANALYZE;
"#;

/// What the catalog says of the payments table, by the test's own query.
const FACTS: &str = r#"
SELECT 'col ' || attname || ' ' || format_type(atttypid, atttypmod) || ' ' || attnotnull || ' ' || attgenerated::text
       || ' ' || coalesce(pg_get_expr(d.adbin, d.adrelid), '-')
  FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE a.attrelid = '"Payments"'::regclass AND attnum > 0 AND NOT attisdropped
UNION ALL SELECT 'con ' || conname || ' ' || pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = '"Payments"'::regclass
UNION ALL SELECT 'idx ' || pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = '"Payments"'::regclass
UNION ALL SELECT 'part ' || c.relname || ' ' || pg_get_expr(c.relpartbound, c.oid)
  FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = '"Payments"'::regclass
UNION ALL SELECT 'key ' || pg_get_partkeydef('"Payments"'::regclass)
ORDER BY 1"#;

struct Fleet {
    source: PgServer,
    shards: Vec<PgServer>,
    ledger: PgServer,
    _dir: tempfile::TempDir,
    config: PathBuf,
    children: Vec<Child>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Fleet {
    fn new() -> Self {
        let source = PgServer::start().unwrap();
        source.psql("postgres", SOURCE).unwrap();
        let shards: Vec<PgServer> = (0..2).map(|_| PgServer::start().unwrap()).collect();
        let ledger = PgServer::start().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("shardline.toml");
        std::fs::write(
            &config,
            format!(
                r#"[source]
url = "{}"
[contexts.transactions]
tables = ['"Payments"']
shard_key = "merchant_id"
shards = ["{}", "{}"]
partitioning = "source"
[contexts.ledger]
tables = ['billing."odd.name with space"']
url = "{}"
[cutover]
enabled = true
"#,
                source.url("postgres"),
                shards[0].url("postgres"),
                shards[1].url("postgres"),
                ledger.url("postgres"),
            ),
        )
        .unwrap();
        Fleet {
            source,
            shards,
            ledger,
            _dir: dir,
            config,
            children: Vec::new(),
        }
    }

    fn shardline(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_shardline"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.shardline(args);
        assert!(
            out.status.success(),
            "shardline {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts a long-running command; its log goes to `log-<n>` beside
    /// the topology, shown when a wait for it fails.
    fn spawn(&mut self, args: &[&str]) {
        let log = std::fs::File::create(self.log(self.children.len())).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_shardline"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children.push(child);
    }

    fn log(&self, n: usize) -> PathBuf {
        self._dir.path().join(format!("log-{n}"))
    }

    fn logs(&self) -> String {
        (0..self.children.len())
            .map(|n| std::fs::read_to_string(self.log(n)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n---\n")
    }

    /// Waits until the forward slot has confirmed everything written so far.
    fn caught_up(&self) {
        let end = self
            .source
            .psql("postgres", "SELECT pg_current_wal_insert_lsn()")
            .unwrap();
        let sql = format!(
            "SELECT confirmed_flush_lsn >= '{}' FROM pg_replication_slots WHERE slot_name = 'shardline'",
            end.trim()
        );
        let done = (0..1200).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            self.source.psql("postgres", &sql).unwrap().trim() == "t"
        });
        assert!(done, "cdc did not catch up:\n{}", self.logs());
    }

    fn count(&self, server: &PgServer, table: &str) -> i64 {
        server
            .psql("postgres", &format!("SELECT count(*) FROM {table}"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

#[test]
fn a_partitioned_payments_table_through_backfill_cdc_verify_export_and_cutover() {
    let mut f = Fleet::new();
    let plan = f.ok(&["backfill", "--dry-run"]);
    assert!(plan.contains("public.\"Payments\""), "{plan}");
    f.ok(&["backfill", "--chunk-rows", "50"]);

    // The shards hold the table whole: the same catalog, partitions too.
    let facts = f.source.psql("postgres", FACTS).unwrap();
    for s in &f.shards {
        assert_eq!(s.psql("postgres", FACTS).unwrap(), facts);
    }
    let per_shard: i64 = f.shards.iter().map(|s| f.count(s, "\"Payments\"")).sum();
    assert_eq!(per_shard, 600);
    assert_eq!(
        f.count(&f.shards[0], "\"Payments_default\"")
            + f.count(&f.shards[1], "\"Payments_default\""),
        f.count(&f.source, "\"Payments_default\"")
    );
    assert_eq!(f.count(&f.ledger, "billing.\"odd.name with space\""), 50);
    f.ok(&["schema", "diff"]);

    // A mixed load while cdc streams: inserts relying on defaults, rows
    // moving between partitions and between shards, deletes.
    f.spawn(&["cdc", "run", "--heartbeat-secs", "1"]);
    for round in 0..5 {
        f.source
            .psql(
                "postgres",
                &format!(
                    "INSERT INTO \"Payments\" (merchant_id, amount) SELECT i % 23, 10 + i FROM generate_series(1, 40) i;
                     INSERT INTO \"Payments\" (merchant_id, created_at, amount) SELECT i % 23, timestamptz '2024-01-05' + i * interval '1 day', 5 FROM generate_series(1, 20) i;
                     UPDATE \"Payments\" SET created_at = created_at + interval '31 days', status = 'captured' WHERE id % 11 = {round};
                     UPDATE \"Payments\" SET merchant_id = merchant_id + 1 WHERE id % 13 = {round};
                     UPDATE \"Payments\" SET amount = amount + 1, note = 'it''s $$ changed' WHERE id % 7 = {round};
                     DELETE FROM \"Payments\" WHERE id % 17 = {round};
                     INSERT INTO billing.\"odd.name with space\" (label) VALUES ('more {round}');
                     UPDATE billing.\"odd.name with space\" SET \"Mixed Case\" = {round} WHERE id % 5 = {round};
                     DELETE FROM billing.\"odd.name with space\" WHERE id = 10 + {round};"
                ),
            )
            .unwrap();
    }
    f.caught_up();
    let report = f.ok(&["--format", "json", "verify"]);
    assert!(report.contains("\"equal\": true"), "{report}");
    assert!(report.contains("\"schema_drift\": []"), "{report}");
    // A heartbeat later the shards' sequences stand where the source's does.
    std::thread::sleep(Duration::from_secs(3));
    f.ok(&["schema", "diff"]);
    let moved = f
        .source
        .psql("postgres", "SELECT count(*) FROM \"Payments_2024_02\"")
        .unwrap();
    assert_ne!(moved.trim(), "0");

    // Export reads every partition on every shard.
    let out = f._dir.path().join("lake");
    let summary = f.ok(&[
        "--format",
        "json",
        "export",
        "--table",
        "\"Payments\"",
        "--out",
        out.to_str().unwrap(),
    ]);
    let rows = f.count(&f.source, "\"Payments\"");
    assert!(summary.contains(&format!("\"rows\": {rows}")), "{summary}");

    // A stage moves everyone; the databases get interleaved id shares.
    f.spawn(&["cdc", "run", "--reverse", "--heartbeat-secs", "1"]);
    let reverse_slots = (0..300).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        f.shards.iter().all(|s| {
            s.psql(
                "postgres",
                "SELECT count(*) FROM pg_replication_slots WHERE active",
            )
            .unwrap()
            .trim()
                == "1"
        })
    });
    assert!(reverse_slots, "the reverse streams did not start");
    let plan = f.ok(&["cutover", "plan", "--cohort", "100"]);
    assert!(
        plan.contains("sequence public.\"Payments_id_seq\""),
        "{plan}"
    );
    assert!(plan.contains("INCREMENT BY 3 RESTART WITH"), "{plan}");
    f.ok(&["cutover", "start", "--cohort", "100"]);
    f.ok(&["cutover", "rollback", "--cohort", "1"]);

    // Inserts relying on the sequence on every database never collide.
    let mut seen = HashSet::new();
    for server in std::iter::once(&f.source).chain(&f.shards) {
        let ids = server
            .psql(
                "postgres",
                "INSERT INTO \"Payments\" (merchant_id, amount) SELECT 1, 1 FROM generate_series(1, 50) RETURNING id",
            )
            .unwrap();
        for id in ids.lines() {
            assert!(
                seen.insert(id.trim().to_string()),
                "id {id} handed out twice"
            );
        }
    }
    assert_eq!(seen.len(), 150);
    let ledger_ids = f
        .ledger
        .psql(
            "postgres",
            "INSERT INTO billing.\"odd.name with space\" (label) VALUES ('x') RETURNING id",
        )
        .unwrap();
    let source_ids = f
        .source
        .psql(
            "postgres",
            "INSERT INTO billing.\"odd.name with space\" (label) VALUES ('y') RETURNING id",
        )
        .unwrap();
    assert_ne!(ledger_ids.trim(), source_ids.trim());
}

#[test]
fn what_targets_cannot_hold_is_listed_and_refused_until_let_go() {
    let f = Fleet::new();
    f.source
        .psql(
            "postgres",
            "CREATE TABLE merchants (merchant_id bigint PRIMARY KEY);
             INSERT INTO merchants SELECT generate_series(0, 30);
             ALTER TABLE billing.\"odd.name with space\" ADD COLUMN merchant_id bigint REFERENCES merchants;
             CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';
             CREATE TRIGGER payments_touch BEFORE UPDATE ON \"Payments\" FOR EACH ROW EXECUTE FUNCTION touch();
             CREATE UNIQUE INDEX payments_note ON \"Payments\" (note, created_at) WHERE note <> 'none';",
        )
        .unwrap();
    let out = f.shardline(&["backfill", "--dry-run"]);
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    for object in [
        "trigger payments_touch",
        "unique index payments_note",
        "foreign key odd.name with space_merchant_id_fkey",
    ] {
        assert!(text.contains(object), "{object}\n{text}");
    }
    assert!(err.contains("skip_objects"), "{err}");
    let run = f.shardline(&["backfill"]);
    assert_eq!(run.status.code(), Some(2));
    assert_eq!(
        f.count(&f.shards[0], "pg_class WHERE relname = 'Payments'"),
        0
    );

    // Let them go: the job runs; what is not carried is not there.
    let config = std::fs::read_to_string(&f.config).unwrap();
    let config = config.replace(
        "partitioning = \"source\"",
        "partitioning = \"source\"\nskip_objects = [\"payments_touch\", \"payments_note\"]",
    );
    let config = config.replacen(
        "tables = ['billing.\"odd.name with space\"']",
        "tables = ['billing.\"odd.name with space\"']\nskip_objects = ['odd.name with space_merchant_id_fkey']",
        1,
    );
    std::fs::write(&f.config, config).unwrap();
    f.ok(&["backfill"]);
    for s in &f.shards {
        let t = s
            .psql(
                "postgres",
                "SELECT count(*) FROM pg_trigger WHERE tgname = 'payments_touch'",
            )
            .unwrap();
        assert_eq!(t.trim(), "0");
        // Let go, a unique index without the shard key still holds per shard.
        let i = s
            .psql(
                "postgres",
                "SELECT count(*) FROM pg_indexes WHERE indexname = 'payments_note'",
            )
            .unwrap();
        assert_eq!(i.trim(), "1");
    }
    f.ok(&["schema", "diff"]);
    // Drift a shard: schema diff names it and exits 1.
    f.shards[1]
        .psql(
            "postgres",
            "ALTER TABLE \"Payments\" ALTER COLUMN note SET DEFAULT 'other'",
        )
        .unwrap();
    let out = f.shardline(&["schema", "diff"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("column note: text DEFAULT 'none'::text on the source, text DEFAULT 'other'::text on the target"),
        "{text}"
    );
    let verify = f.shardline(&["verify"]);
    assert_eq!(verify.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&verify.stdout).contains("schema drift: table public.\"Payments\"")
    );
}
