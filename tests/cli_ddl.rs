//! Schema changes on the source while `shardline cdc run` streams under a
//! write load: each is carried to the targets at its position, and at the
//! end verify is clean and the targets' catalog definitions equal the
//! source's. A change the targets cannot follow stops cdc (exit 2) naming
//! the statement and the target, with a way out that works.

use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shardline_testkit::PgServer;

const SCHEMA: &str = "
CREATE TABLE payments (merchant_id bigint NOT NULL, id bigint NOT NULL, amount numeric(18,2) NOT NULL,
                       note text, status text NOT NULL DEFAULT 'new', PRIMARY KEY (merchant_id, id));
CREATE TABLE payouts (id bigint PRIMARY KEY, merchant_id bigint, amount numeric(18,2));";

struct Fleet {
    source: PgServer,
    shards: Vec<PgServer>,
    settlements: PgServer,
    config: tempfile::TempDir,
}

fn fleet(extra_schema: &str, extra_tables: &str) -> Fleet {
    let source = PgServer::start().unwrap();
    let shards: Vec<PgServer> = (0..2).map(|_| PgServer::start().unwrap()).collect();
    let settlements = PgServer::start().unwrap();
    for s in std::iter::once(&source)
        .chain(&shards)
        .chain([&settlements])
    {
        s.psql("postgres", SCHEMA).unwrap();
        s.psql("postgres", extra_schema).unwrap();
    }
    let config = tempfile::tempdir().unwrap();
    std::fs::write(
        config.path().join("shardline.toml"),
        format!(
            "[source]\nurl = \"{}\"\n[contexts.transactions]\ntables = [\"payments\"{extra_tables}]\nshard_key = \"merchant_id\"\nshards = [\"{}\", \"{}\"]\n[contexts.settlements]\ntables = [\"payouts\"]\nurl = \"{}\"\n",
            source.url("postgres"),
            shards[0].url("postgres"),
            shards[1].url("postgres"),
            settlements.url("postgres")
        ),
    )
    .unwrap();
    Fleet {
        source,
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

    fn cdc(&self) -> Child {
        let child = self
            .shardline(&["-v", "cdc", "run", "--heartbeat-secs", "1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let streaming = (0..600).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            self.sql(
                "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'shardline-cdc'",
            ) == "1"
        });
        assert!(streaming, "cdc did not start streaming");
        child
    }

    fn sql(&self, sql: &str) -> String {
        self.source
            .psql("postgres", sql)
            .unwrap()
            .trim()
            .to_string()
    }

    /// Waits until the slot confirmed the source's position of now.
    fn wait_caught_up(&self) -> bool {
        let target = self.sql("SELECT pg_current_wal_insert_lsn()");
        (0..1200).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            self.sql(&format!(
                "SELECT confirmed_flush_lsn >= '{target}' FROM pg_replication_slots WHERE slot_name = 'shardline'"
            )) == "t"
        })
    }
}

fn stop(child: Child) -> Output {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A table's definition as the catalog holds it: columns in order (type,
/// NOT NULL, default), constraints and indexes.
fn definition(server: &PgServer, table: &str) -> String {
    server
        .psql(
            "postgres",
            &format!(
                "SELECT string_agg(x, E'\\n' ORDER BY k, x) FROM (
                   SELECT 1 AS k, format('column %s %s %s not null %s default %s', row_number() OVER (ORDER BY a.attnum),
                          a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(d.adbin, d.adrelid)) AS x
                     FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                    WHERE a.attrelid = '{table}'::regclass AND a.attnum > 0 AND NOT a.attisdropped
                   UNION ALL
                   SELECT 2, format('constraint %s %s', conname, pg_get_constraintdef(oid))
                     FROM pg_constraint WHERE conrelid = '{table}'::regclass
                   UNION ALL
                   SELECT 3, format('index %s valid %s', pg_get_indexdef(indexrelid), indisvalid)
                     FROM pg_index WHERE indrelid = '{table}'::regclass) s"
            ),
        )
        .unwrap()
}

fn enum_labels(server: &PgServer, name: &str) -> String {
    server
        .psql(
            "postgres",
            &format!("SELECT string_agg(enumlabel, ',' ORDER BY enumsortorder) FROM pg_enum WHERE enumtypid = to_regtype('{name}')"),
        )
        .unwrap()
}

/// Inserts and updates payments and payouts until told to stop, as an
/// application would while its schema changes under it.
fn write_load(
    source: &PgServer,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    let url = source.url("postgres");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            let mut i: i64 = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let sql = format!(
                    "INSERT INTO payments (merchant_id, id, amount) VALUES ({m}, {id}, {a});
                     UPDATE payments SET amount = amount + 1 WHERE merchant_id = {m} AND id = {prev};
                     INSERT INTO payouts (id, merchant_id, amount) VALUES ({id}, {m}, 1)",
                    m = i % 37,
                    id = 100_000 + i,
                    a = i % 1000,
                    prev = 100_000 + i - 37,
                );
                // One transaction per round; a round that meets a lock
                // held by a schema change just waits for it.
                client.batch_execute(&format!("BEGIN; {sql}; COMMIT")).await.unwrap();
                done.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    })
}

#[test]
fn schema_changes_under_load_reach_every_target_and_verify_is_clean() {
    let f = fleet("", "");
    f.sql("INSERT INTO payments (merchant_id, id, amount, note) SELECT g % 37, g, g % 500, 'n' || g FROM generate_series(1, 3000) g;
           INSERT INTO payouts SELECT g, g % 37, g FROM generate_series(1, 50) g");
    let out = f.run(&["backfill"]);
    assert!(out.status.success(), "{}", text(&out));
    // Backfill's set-up installed the capture.
    assert_eq!(
        f.sql("SELECT count(*) FROM pg_event_trigger WHERE evtname LIKE 'shardline_ddl_%'"),
        "3"
    );
    let cdc = f.cdc();
    let (stop_load, done) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let load = write_load(&f.source, stop_load.clone(), done.clone());
    let changes = [
        "ALTER TABLE payments ADD COLUMN risk_score int DEFAULT 7",
        "UPDATE payments SET risk_score = 9 WHERE id % 10 = 0; INSERT INTO payments (merchant_id, id, amount, risk_score) VALUES (1, 900001, 5, 3)",
        "ALTER TABLE payments ADD COLUMN seen_at timestamptz DEFAULT now()",
        "ALTER TABLE payments RENAME COLUMN note TO memo",
        "ALTER TABLE payments ALTER COLUMN amount TYPE numeric(20,4)",
        "ALTER TABLE payments DROP COLUMN status",
        "CREATE INDEX CONCURRENTLY payments_amount_idx ON payments (amount)",
        // Several statements in one query, one of them on a table the
        // topology does not list.
        "ALTER TABLE payouts ADD COLUMN memo text; CREATE TABLE audit_log (id int); ALTER TABLE payouts ALTER COLUMN memo SET DEFAULT 'none'",
        "CREATE TYPE risk_level AS ENUM ('low', 'mid'); ALTER TABLE payments ADD COLUMN level risk_level",
        "ALTER TYPE risk_level ADD VALUE 'high'",
        "UPDATE payments SET level = 'high' WHERE id % 7 = 0",
        "ALTER TABLE payments ADD CONSTRAINT amount_sane CHECK (amount > -1000000), ALTER COLUMN risk_score SET NOT NULL",
        "CREATE INDEX ON payments (risk_score)",
        "DROP INDEX payments_amount_idx",
        "UPDATE payments SET memo = 'after' WHERE id % 11 = 0",
    ];
    for sql in changes {
        std::thread::sleep(Duration::from_millis(150));
        f.sql(sql);
    }
    std::thread::sleep(Duration::from_millis(300));
    stop_load.store(true, Ordering::Relaxed);
    load.join().unwrap();
    assert!(done.load(Ordering::Relaxed) > 10, "the load did not run");
    let caught_up = f.wait_caught_up();
    let out = stop(cdc);
    assert!(caught_up && out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("schema change carried"),
        "{}",
        text(&out)
    );

    let out = f.run(&["verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let source_payments = definition(&f.source, "payments");
    assert!(
        source_payments.contains("risk_score integer not null t default 7"),
        "{source_payments}"
    );
    for (i, shard) in f.shards.iter().enumerate() {
        assert_eq!(
            definition(shard, "payments"),
            source_payments,
            "payments on shard {i}"
        );
        assert_eq!(
            enum_labels(shard, "risk_level"),
            enum_labels(&f.source, "risk_level")
        );
        // The unlisted table stays on the source.
        assert_eq!(
            shard
                .psql("postgres", "SELECT to_regclass('audit_log') IS NULL")
                .unwrap()
                .trim(),
            "t"
        );
    }
    assert_eq!(
        definition(&f.settlements, "payouts"),
        definition(&f.source, "payouts")
    );
    // Rows that existed when seen_at was added read the source's value.
    let seen = "SELECT string_agg(DISTINCT seen_at::text, ',') FROM payments WHERE id <= 3000";
    assert!(!f.sql(seen).contains(','));
    for shard in &f.shards {
        assert_eq!(shard.psql("postgres", seen).unwrap().trim(), f.sql(seen));
    }
}

/// Waits for a process to end by itself (at most two minutes).
fn wait_exit(mut child: Child) -> Output {
    for _ in 0..1200 {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = stop(child);
    panic!("cdc did not stop by itself: {}", text(&out));
}

/// The id in "shardline cdc skip-ddl ID".
fn skip_id(message: &str) -> String {
    let at = message.find("cdc skip-ddl ").expect("a skip-ddl hint") + "cdc skip-ddl ".len();
    message[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect()
}

#[test]
fn a_change_the_targets_cannot_follow_stops_cdc_with_the_statement_the_target_and_a_way_out() {
    let f = fleet("", "");
    f.sql("INSERT INTO payments (merchant_id, id, amount) SELECT g % 37, g, g FROM generate_series(1, 500) g");
    let out = f.run(&["backfill"]);
    assert!(out.status.success(), "{}", text(&out));
    let cdc = f.cdc();
    // Every existing row gets its own random value on the source: a shard
    // that holds rows cannot reproduce them.
    let statement = "ALTER TABLE payments ADD COLUMN token uuid DEFAULT gen_random_uuid()";
    f.sql(statement);
    let out = wait_exit(cdc);
    let message = text(&out);
    assert_eq!(out.status.code(), Some(2), "{message}");
    assert!(message.contains(statement), "{message}");
    let shard_named = f
        .shards
        .iter()
        .any(|s| message.contains(&format!("127.0.0.1:{}/postgres", s.port())));
    assert!(shard_named, "no target named: {message}");
    assert!(
        message.contains("hint: add the column on the targets yourself"),
        "{message}"
    );
    // The shards did not change, and nothing after the change was applied.
    for shard in &f.shards {
        assert_eq!(
            shard.psql("postgres", "SELECT count(*) FROM information_schema.columns WHERE table_name = 'payments' AND column_name = 'token'").unwrap().trim(),
            "0"
        );
    }

    // The way out the hint gives: the column by hand, its values copied.
    let values = f.sql("SELECT string_agg(format('(%s, %s, %L::uuid)', merchant_id, id, token), ', ') FROM payments");
    for shard in &f.shards {
        shard
            .psql(
                "postgres",
                &format!("ALTER TABLE payments ADD COLUMN token uuid DEFAULT gen_random_uuid();
                          UPDATE payments p SET token = v.t FROM (VALUES {values}) v(m, i, t) WHERE p.merchant_id = v.m AND p.id = v.i"),
            )
            .unwrap();
    }
    let id = skip_id(&message);
    let out = f.run(&["cdc", "skip-ddl", &id]);
    assert!(out.status.success(), "{}", text(&out));
    let cdc = f.cdc();
    f.sql("INSERT INTO payments (merchant_id, id, amount) SELECT g % 37, g, g FROM generate_series(501, 600) g");
    let caught_up = f.wait_caught_up();
    let out = stop(cdc);
    assert!(caught_up && out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("passed over"), "{}", text(&out));
    let out = f.run(&["verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // A listed table renamed: the topology names it, so cdc stops before
    // any target changes, naming the statement.
    let cdc = f.cdc();
    f.sql("ALTER TABLE payouts RENAME TO payouts_old");
    let out = wait_exit(cdc);
    let message = text(&out);
    assert_eq!(out.status.code(), Some(2), "{message}");
    assert!(
        message.contains("`ALTER TABLE payouts RENAME TO payouts_old`"),
        "{message}"
    );
    assert!(
        message.contains("hint: rename it back on the source"),
        "{message}"
    );
    assert_eq!(
        f.settlements
            .psql("postgres", "SELECT to_regclass('payouts') IS NOT NULL")
            .unwrap()
            .trim(),
        "t"
    );
    // An unknown id is refused with the way to find the right one.
    let out = f.run(&["cdc", "skip-ddl", "999999"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("holds no schema change 999999"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_new_partition_reaches_targets_that_keep_the_partitioning_and_a_dropped_one_stops_the_others() {
    let f = fleet("", ", \"orders\"");
    let partitioned = "CREATE TABLE orders (merchant_id bigint NOT NULL, id bigint NOT NULL, created date NOT NULL, amount int,
                                           PRIMARY KEY (merchant_id, id, created)) PARTITION BY RANGE (created);
                       CREATE TABLE orders_2024 PARTITION OF orders FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');";
    // Shard 0 keeps the source's partitioning; shard 1 holds one table.
    f.source.psql("postgres", partitioned).unwrap();
    f.shards[0].psql("postgres", partitioned).unwrap();
    f.shards[1]
        .psql("postgres", "CREATE TABLE orders (merchant_id bigint NOT NULL, id bigint NOT NULL, created date NOT NULL, amount int, PRIMARY KEY (merchant_id, id, created))")
        .unwrap();
    let cdc = f.cdc();
    f.sql("INSERT INTO orders SELECT g % 37, g, date '2024-03-01' + g % 200, g FROM generate_series(1, 300) g");
    f.sql("CREATE TABLE orders_2025 PARTITION OF orders FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')");
    f.sql("INSERT INTO orders SELECT g % 37, g, date '2025-02-01' + g % 200, g FROM generate_series(301, 600) g;
           UPDATE orders SET created = created + 365 WHERE id % 10 = 0 AND created < '2025-01-01'");
    let caught_up = f.wait_caught_up();
    let out = stop(cdc);
    assert!(caught_up && out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(
            "keeps public.orders as one table: partition public.orders_2025 is not created there"
        ),
        "{}",
        text(&out)
    );
    let partitions = "SELECT string_agg(c.relname, ',' ORDER BY c.relname) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'orders'::regclass";
    assert_eq!(
        f.shards[0].psql("postgres", partitions).unwrap().trim(),
        "orders_2024,orders_2025"
    );
    assert_eq!(f.shards[1].psql("postgres", partitions).unwrap().trim(), "");
    assert_eq!(
        f.shards[0]
            .psql("postgres", "SELECT count(*) > 0 FROM orders_2025")
            .unwrap()
            .trim(),
        "t"
    );
    // Rows are equal everywhere; shard 0's partitioning, which this test
    // set up by hand beside a context that asks for plain tables, is the
    // one difference verify names.
    let out = f.run(&["verify", "--tables", "orders"]);
    let report = text(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(report.contains("verified orders: equal"), "{report}");
    assert_eq!(report.matches("schema drift:").count(), 1, "{report}");
    assert!(
        report.contains("partitioning: none on the source, RANGE (created) on the target"),
        "{report}"
    );

    // A partition detached: shard 0 detaches it too (and keeps the table),
    // shard 1 deletes its rows. Attached again, shard 0's own copy of the
    // table still holds the rows, which the ATTACH would add to the ones
    // the stream brings: cdc stops there, and the hint's TRUNCATE is the
    // way on.
    let cdc = f.cdc();
    f.sql("ALTER TABLE orders DETACH PARTITION orders_2025");
    f.sql("ALTER TABLE orders ATTACH PARTITION orders_2025 FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')");
    let out = wait_exit(cdc);
    let message = text(&out);
    assert_eq!(out.status.code(), Some(2), "{message}");
    assert!(
        message.contains("ATTACH PARTITION orders_2025"),
        "{message}"
    );
    assert!(
        message.contains(&format!("127.0.0.1:{}/postgres", f.shards[0].port())),
        "{message}"
    );
    let hint = message
        .split("hint: empty it on this target (`")
        .nth(1)
        .and_then(|h| h.split('`').next())
        .unwrap_or_else(|| panic!("no TRUNCATE hint: {message}"));
    assert_eq!(hint, r#"TRUNCATE "public"."orders_2025""#);
    f.shards[0].psql("postgres", hint).unwrap();
    let cdc = f.cdc();
    let caught_up = f.wait_caught_up();
    let out = stop(cdc);
    assert!(caught_up && out.status.success(), "{}", text(&out));
    assert_eq!(
        f.shards[0].psql("postgres", partitions).unwrap().trim(),
        "orders_2024,orders_2025"
    );
    let out = f.run(&["verify", "--tables", "orders"]);
    let report = text(&out);
    assert!(report.contains("verified orders: equal"), "{report}");

    // Retention: the source drops a partition, its rows go without deletes
    // in the stream. Shard 0 drops it too; shard 1 would keep the rows, so
    // cdc stops there, naming it.
    let cdc = f.cdc();
    f.sql("DROP TABLE orders_2024");
    let out = wait_exit(cdc);
    let message = text(&out);
    assert_eq!(out.status.code(), Some(2), "{message}");
    assert!(message.contains("`DROP TABLE orders_2024`"), "{message}");
    assert!(
        message.contains(&format!("127.0.0.1:{}/postgres", f.shards[1].port())),
        "{message}"
    );
    assert!(
        message.contains("keeps public.orders as one table and still holds those rows"),
        "{message}"
    );
    assert!(
        message.contains("hint: delete those rows on this target"),
        "{message}"
    );
}

/// The shard each merchant of `0..37` lives on, by the topology's placement.
fn shard_of_merchants(f: &Fleet) -> Vec<usize> {
    let topology =
        shardline_topology::Topology::load(&f.config.path().join("shardline.toml")).unwrap();
    let shardline_topology::ContextKind::Sharded { placement, .. } =
        &topology.sharded_context().unwrap().kind
    else {
        panic!("no sharded context")
    };
    (0..37)
        .map(|m| placement.shard(&shardline_topology::ShardKey::Int(m)))
        .collect()
}

#[test]
fn a_partition_attached_with_its_rows_and_one_detached_reach_targets_that_keep_the_table_whole() {
    let f = fleet("", ", \"orders\"");
    // Only the source has it: backfill creates plain tables on the shards.
    f.source
        .psql(
            "postgres",
            r#"CREATE TABLE orders (merchant_id bigint NOT NULL, "Order Id" bigint NOT NULL, created date NOT NULL,
                                    "Amount €" numeric(12,3), tags text[], raw bytea, note text,
                                    doubled numeric GENERATED ALWAYS AS ("Amount €" * 2) STORED,
                                    PRIMARY KEY (merchant_id, "Order Id", created)) PARTITION BY RANGE (created);
               CREATE TABLE orders_2024 PARTITION OF orders FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
               CREATE TABLE orders_2025 PARTITION OF orders FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
               INSERT INTO orders (merchant_id, "Order Id", created, "Amount €", tags, note)
               SELECT g % 37, g, date '2024-01-01' + g % 700, g / 7.0, ARRAY['t' || g], 'n' || g FROM generate_series(1, 2000) g"#,
        )
        .unwrap();
    let out = f.run(&["backfill"]);
    assert!(out.status.success(), "{}", text(&out));
    let cdc = f.cdc();
    let (stop_load, done) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let load = write_load(&f.source, stop_load.clone(), done.clone());
    // A month loaded in advance, its columns in another order, with NULLs,
    // arrays, bytea, odd text and numerics, then attached.
    f.sql(r#"CREATE TABLE orders_2026 (note text, raw bytea, tags text[], "Amount €" numeric(12,3), created date NOT NULL,
                                       "Order Id" bigint NOT NULL, merchant_id bigint NOT NULL,
                                       doubled numeric GENERATED ALWAYS AS ("Amount €" * 2) STORED);
             INSERT INTO orders_2026 (merchant_id, "Order Id", created, "Amount €", tags, raw, note)
             SELECT g % 37, g, date '2026-01-01' + g % 300,
                    CASE WHEN g % 5 = 0 THEN NULL ELSE g * 1.125 END,
                    CASE WHEN g % 3 = 0 THEN NULL ELSE ARRAY['a b', NULL, 'q"u''o\te,{}'] END,
                    CASE WHEN g % 4 = 0 THEN NULL ELSE decode(md5(g::text), 'hex') END,
                    CASE WHEN g % 6 = 0 THEN NULL ELSE E'line\nnext\\ ' || g END
               FROM generate_series(5001, 6500) g"#);
    std::thread::sleep(Duration::from_millis(200));
    f.sql("ALTER TABLE orders ATTACH PARTITION orders_2026 FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')");
    f.sql(r#"INSERT INTO orders (merchant_id, "Order Id", created, "Amount €") SELECT g % 37, g, date '2026-06-01', 1 FROM generate_series(7001, 7100) g;
             UPDATE orders SET note = 'moved on' WHERE "Order Id" % 10 = 1 AND created >= '2026-01-01'"#);
    // A partition detached: its rows leave the table; DETACH … CONCURRENTLY
    // ends in a transaction of its own on the source.
    f.sql("ALTER TABLE orders DETACH PARTITION orders_2024 CONCURRENTLY");
    f.sql(
        r#"INSERT INTO orders (merchant_id, "Order Id", created) VALUES (3, 9001, '2025-05-05')"#,
    );
    std::thread::sleep(Duration::from_millis(300));
    stop_load.store(true, Ordering::Relaxed);
    load.join().unwrap();
    assert!(done.load(Ordering::Relaxed) > 5, "the load did not run");
    let caught_up = f.wait_caught_up();
    let out = stop(cdc);
    let log = text(&out);
    assert!(caught_up && out.status.success(), "{log}");
    assert!(
        log.contains("keeps public.orders as one table: the rows of attached partition public.orders_2026 are inserted into it"),
        "{log}"
    );
    assert_eq!(
        f.sql("SELECT count(*) FROM orders WHERE created >= '2026-01-01'"),
        "1600"
    );
    assert_eq!(
        f.sql("SELECT count(*) FROM orders WHERE created < '2025-01-01'"),
        "0"
    );

    // Each shard holds exactly the rows of its merchants, byte for byte
    // in PostgreSQL's text form (the generated column computed there).
    let shard_of = shard_of_merchants(&f);
    let digest = |merchants: &str| {
        format!(
            r#"SELECT count(*) || ':' || coalesce(md5(string_agg(format('%s|%s|%s|%s|%s|%s|%s|%s', merchant_id, "Order Id", created,
                      "Amount €", tags, raw, note, doubled), E'\n' ORDER BY merchant_id, "Order Id", created)), '')
                 FROM orders WHERE merchant_id IN ({merchants})"#
        )
    };
    for (i, shard) in f.shards.iter().enumerate() {
        let mine: Vec<String> = (0..37)
            .filter(|&m| shard_of[m as usize] == i)
            .map(|m| m.to_string())
            .collect();
        assert!(!mine.is_empty());
        let all: Vec<String> = (0..37).map(|m| m.to_string()).collect();
        assert_eq!(
            shard
                .psql("postgres", &digest(&all.join(",")))
                .unwrap()
                .trim(),
            f.sql(&digest(&mine.join(","))),
            "orders on shard {i}"
        );
    }
    let out = f.run(&["verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = f.run(&["schema", "diff"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}
