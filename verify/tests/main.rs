//! Verify against real servers: equal data with awkward equality reports
//! clean; each injected fault is found precisely.

mod ranges;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use shardline_testkit::PgServer;
use shardline_topology::{ContextKind, ShardKey, Topology};
use shardline_verify::report::{DifferenceKind, Report};
use shardline_verify::{verify, Level, RowHash, VerifyRequest};
use tokio::sync::watch;

// The composite type shifts the source's OIDs, so the enum's OID differs
// between the source and the targets (an enum hashes by OID natively).
const SCHEMA: &str = "
CREATE TYPE shift AS (a int, b int);
CREATE TYPE kind AS ENUM ('sale', 'refund');
CREATE TABLE ledger (
    merchant_id bigint NOT NULL,
    id          bigint NOT NULL,
    amount      numeric(18,2) NOT NULL,
    loose       numeric,
    ratio       double precision,
    at          timestamptz,
    meta        jsonb,
    note        text,
    kind        kind DEFAULT 'sale',
    tags        text[] DEFAULT '{a,b}',
    every       interval DEFAULT '1 day',
    PRIMARY KEY (merchant_id, id)
);
CREATE TABLE accounts (id bigint PRIMARY KEY, name text);";

struct Fleet {
    source: PgServer,
    shards: Vec<PgServer>,
    single: PgServer,
    topology: Topology,
}

async fn fleet() -> Fleet {
    let source = PgServer::start().unwrap();
    source.psql("postgres", SCHEMA).unwrap();
    source
        .psql(
            "postgres",
            "INSERT INTO ledger SELECT i % 40, i, i * 1.5,
                    CASE i % 3 WHEN 0 THEN 1.0 WHEN 1 THEN 1.00 END,
                    CASE WHEN i % 4 = 0 THEN '-0'::float8 ELSE i / 3.0 END,
                    now() - i * interval '1 hour',
                    CASE WHEN i % 2 = 0 OR i % 40 = 7 THEN '{\"b\": 1, \"a\": [1, 2]}'::jsonb END,
                    CASE i % 3 WHEN 0 THEN '' WHEN 1 THEN NULL ELSE 'Zürich ' || i END
               FROM generate_series(1, 3000) i;
             SET TimeZone = 'Asia/Tokyo'; INSERT INTO ledger VALUES (1, 100000, 1, NULL, NULL, '2024-01-01 09:00:00', NULL, NULL);
             INSERT INTO accounts SELECT i, CASE WHEN i % 5 = 0 THEN '' ELSE 'acct ' || i END FROM generate_series(1, 500) i;",
        )
        .unwrap();
    let shards = vec![PgServer::start().unwrap(), PgServer::start().unwrap()];
    let single = PgServer::start().unwrap();
    let text = format!(
        "[source]\nurl = \"{}\"\n[contexts.tx]\ntables = [\"ledger\"]\nshard_key = \"merchant_id\"\nshards = [\"{}\", \"{}\"]\n[contexts.analytics]\ntables = [\"accounts\"]\nurl = \"{}\"\n[[read_models]]\nname = \"volume\"\nfrom = \"ledger\"\ngroup_by = [\"merchant_id\", \"date_trunc('day', at) AS day\"]\naggregates = [\"count(*) AS n\", \"sum(amount) AS total\"]\n",
        source.url("postgres"),
        shards[0].url("postgres"),
        shards[1].url("postgres"),
        single.url("postgres")
    );
    let topology = Topology::parse(&text, Path::new("t.toml")).unwrap();
    let request = shardline_backfill::BackfillRequest::default();
    let prepared = shardline_backfill::prepare(&topology, &request)
        .await
        .unwrap();
    shardline_backfill::run(prepared, &request, watch::channel(false).1, |_| {})
        .await
        .unwrap();
    Fleet {
        source,
        shards,
        single,
        topology,
    }
}

fn request() -> VerifyRequest {
    VerifyRequest {
        recheck_delay: Duration::from_millis(50),
        ..VerifyRequest::default()
    }
}

async fn run(f: &Fleet, row_hash: RowHash) -> Report {
    let request = VerifyRequest {
        row_hash,
        ..request()
    };
    verify(&f.topology, &request, |_| {}).await.unwrap()
}

/// The shard index a merchant's rows belong on, and another shard.
fn shards_of(f: &Fleet, merchant: i64) -> (usize, usize) {
    let ContextKind::Sharded { placement, .. } = &f.topology.context("tx").unwrap().kind else {
        unreachable!()
    };
    let owner = placement.shard(&ShardKey::Int(merchant));
    (owner, 1 - owner)
}

fn table<'a>(report: &'a Report, name: &str) -> &'a shardline_verify::TableReport {
    report
        .tables
        .iter()
        .find(|t| t.table == name)
        .unwrap_or_else(|| panic!("no table {name}: {report:#?}"))
}

/// The only difference of the report, with its table.
fn only_difference(report: &Report) -> (&str, &shardline_verify::report::Difference) {
    let differing: Vec<_> = report.tables.iter().filter(|t| !t.equal).collect();
    assert_eq!(differing.len(), 1, "{:#?}", report.tables);
    let t = differing[0];
    assert_eq!(t.counts.values().sum::<u64>(), 1, "{t:#?}");
    (t.table.as_str(), &t.differences[0])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_data_with_awkward_equality_is_clean_and_each_fault_is_found_native_hash() {
    awkward_equality_and_faults(RowHash::Native).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_data_with_awkward_equality_is_clean_and_each_fault_is_found_md5_hash() {
    awkward_equality_and_faults(RowHash::Md5).await;
}

async fn awkward_equality_and_faults(row_hash: RowHash) {
    let f = fleet().await;
    let report = run(&f, row_hash).await;
    assert!(report.equal, "{report:#?}");
    assert_eq!(report.tables.len(), 3);
    assert_eq!(table(&report, "ledger").source_rows, 3001);
    assert_eq!(table(&report, "ledger").target_rows, 3001);

    let (owner, other) = shards_of(&f, 7);
    let on = |i: usize| &f.shards[i];
    // Equal in value though written differently on the target.
    on(owner)
        .psql("postgres", "UPDATE ledger SET ratio = 0.0 WHERE ratio = '-0'::float8; UPDATE ledger SET meta = '{\"a\": [1, 2], \"b\": 1}' WHERE meta IS NOT NULL;
                           SET TimeZone = 'America/Los_Angeles'; UPDATE ledger SET at = (at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' WHERE id = 7")
        .unwrap();
    assert!(
        run(&f, row_hash).await.equal,
        "-0.0, jsonb key order and time zones are not differences"
    );

    let cases: Vec<(&str, &str, &str, DifferenceKind, Option<&str>)> = vec![
        (
            "DELETE FROM ledger WHERE id = 7",
            "INSERT INTO ledger SELECT * FROM ledger_backup WHERE id = 7",
            "(7,7)",
            DifferenceKind::Missing,
            None,
        ),
        (
            "INSERT INTO ledger VALUES (7, 999999, 1, NULL, NULL, NULL, NULL, NULL)",
            "DELETE FROM ledger WHERE id = 999999",
            "(7,999999)",
            DifferenceKind::Extra,
            None,
        ),
        (
            "UPDATE ledger SET amount = amount + 0.01 WHERE id = 7",
            "UPDATE ledger SET amount = amount - 0.01 WHERE id = 7",
            "(7,7)",
            DifferenceKind::Changed,
            Some("amount"),
        ),
        (
            "UPDATE ledger SET note = 'was null' WHERE id = 7",
            "UPDATE ledger SET note = NULL WHERE id = 7",
            "(7,7)",
            DifferenceKind::Changed,
            Some("note"),
        ),
        (
            "UPDATE ledger SET meta = '{\"b\": 2, \"a\": [1, 2]}' WHERE id = 47",
            "UPDATE ledger SET meta = '{\"b\": 1, \"a\": [1, 2]}' WHERE id = 47",
            "(7,47)",
            DifferenceKind::Changed,
            Some("meta"),
        ),
        (
            "UPDATE ledger SET note = NULL WHERE id = 87",
            "UPDATE ledger SET note = '' WHERE id = 87",
            "(7,87)",
            DifferenceKind::Changed,
            Some("note"),
        ),
        (
            "UPDATE ledger SET kind = 'refund' WHERE id = 7",
            "UPDATE ledger SET kind = 'sale' WHERE id = 7",
            "(7,7)",
            DifferenceKind::Changed,
            Some("kind"),
        ),
        (
            "UPDATE ledger SET tags = '{a,c}' WHERE id = 7",
            "UPDATE ledger SET tags = '{a,b}' WHERE id = 7",
            "(7,7)",
            DifferenceKind::Changed,
            Some("tags"),
        ),
        // Equal to PostgreSQL's `=`, but not the value the source stored.
        (
            "UPDATE ledger SET every = '24 hours' WHERE id = 7",
            "UPDATE ledger SET every = '1 day' WHERE id = 7",
            "(7,7)",
            DifferenceKind::Changed,
            Some("every"),
        ),
        // The source stores 1.00 for id 7: 1.0 is a different value.
        (
            "UPDATE ledger SET loose = 1.0 WHERE id = 7",
            "UPDATE ledger SET loose = 1.00 WHERE id = 7",
            "(7,7)",
            DifferenceKind::Changed,
            Some("loose"),
        ),
    ];
    on(owner)
        .psql(
            "postgres",
            "CREATE TABLE ledger_backup AS SELECT * FROM ledger",
        )
        .unwrap();
    for (inject, repair, key, kind, column) in cases {
        on(owner).psql("postgres", inject).unwrap();
        let report = run(&f, row_hash).await;
        let (table, d) = only_difference(&report);
        assert_eq!(
            (table, d.kind, d.key.as_str()),
            ("ledger", kind, key),
            "{inject}: {d:?}"
        );
        assert!(d.database.contains(&on(owner).port().to_string()), "{d:?}");
        if let Some(column) = column {
            assert_eq!(d.columns.len(), 1, "{d:?}");
            assert_eq!(d.columns[0].column, column);
            assert_ne!(d.columns[0].source, d.columns[0].target);
        }
        on(owner).psql("postgres", repair).unwrap();
    }
    assert!(run(&f, row_hash).await.equal, "every fault was repaired");

    // A row moved to the wrong shard.
    on(owner)
        .psql("postgres", "DELETE FROM ledger WHERE id = 7")
        .unwrap();
    on(other)
        .psql(
            "postgres",
            "INSERT INTO ledger VALUES (7, 7, 10.50, NULL, NULL, NULL, NULL, NULL)",
        )
        .unwrap();
    let report = run(&f, row_hash).await;
    let ledger = table(&report, "ledger");
    let kinds: Vec<DifferenceKind> = ledger.differences.iter().map(|d| d.kind).collect();
    assert_eq!(kinds, [DifferenceKind::Misplaced], "{report:#?}");
    assert!(ledger.differences[0]
        .database
        .contains(&on(other).port().to_string()));
    on(other)
        .psql("postgres", "DELETE FROM ledger WHERE id = 7")
        .unwrap();
    on(owner)
        .psql(
            "postgres",
            "INSERT INTO ledger SELECT * FROM ledger_backup WHERE id = 7",
        )
        .unwrap();

    // A duplicated row on a target whose table lost its primary key.
    on(owner).psql("postgres", "ALTER TABLE ledger DROP CONSTRAINT ledger_pkey; INSERT INTO ledger SELECT * FROM ledger WHERE id = 7").unwrap();
    let report = run(&f, row_hash).await;
    let (_, d) = only_difference(&report);
    assert_eq!(
        (d.kind, d.key.as_str()),
        (DifferenceKind::Duplicated, "(7,7)")
    );
    on(owner)
        .psql(
            "postgres",
            "DELETE FROM ledger WHERE ctid = (SELECT max(ctid) FROM ledger WHERE id = 7)",
        )
        .unwrap();

    // An unsharded table, and a read-model group that drifted.
    f.single
        .psql("postgres", "UPDATE accounts SET name = NULL WHERE id = 5")
        .unwrap();
    f.single.psql("postgres", "UPDATE volume SET n = n + 1 WHERE merchant_id = 3 AND day = (SELECT min(day) FROM volume WHERE merchant_id = 3)").unwrap();
    let report = run(&f, row_hash).await;
    let differing: Vec<&str> = report
        .tables
        .iter()
        .filter(|t| !t.equal)
        .map(|t| t.table.as_str())
        .collect();
    assert_eq!(
        differing,
        ["accounts", "volume (read model)"],
        "{report:#?}"
    );
    let rm = report
        .tables
        .iter()
        .find(|t| t.table.starts_with("volume"))
        .unwrap();
    assert_eq!(rm.differences[0].kind, DifferenceKind::Changed);
    assert_eq!(rm.differences[0].columns[0].column, "n");
    let accounts = report
        .tables
        .iter()
        .find(|t| t.table == "accounts")
        .unwrap();
    assert_eq!(
        accounts.differences[0].columns[0].source.as_deref(),
        Some(""),
        "empty string against NULL is a difference"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_and_checksum_levels_stop_at_buckets() {
    let f = fleet().await;
    let (owner, _) = shards_of(&f, 7);
    f.shards[owner]
        .psql("postgres", "UPDATE ledger SET amount = 0 WHERE id = 7")
        .unwrap();
    let checksums = verify(
        &f.topology,
        &VerifyRequest {
            level: Level::Checksums,
            ..request()
        },
        |_| {},
    )
    .await
    .unwrap();
    assert!(!checksums.equal);
    assert_eq!(table(&checksums, "ledger").differing_buckets, 1);
    assert!(table(&checksums, "ledger").differences.is_empty());
    let counts = verify(
        &f.topology,
        &VerifyRequest {
            level: Level::Counts,
            ..request()
        },
        |_| {},
    )
    .await
    .unwrap();
    assert!(counts.equal, "a changed value keeps every count");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_rows_per_sec_paces_within_a_table_scan_and_still_finds_faults() {
    let f = fleet().await;
    // Statistics give the slices their size; without them, 100 rows a block.
    f.source.psql("postgres", "ANALYZE ledger").unwrap();
    let (owner, _) = shards_of(&f, 7);
    f.shards[owner]
        .psql("postgres", "UPDATE ledger SET amount = 0 WHERE id = 7")
        .unwrap();
    let request = VerifyRequest {
        tables: Some(vec!["ledger".into()]),
        max_rows_per_sec: Some(1000),
        ..request()
    };
    // Watch the source: a paced scan is a series of heap-range statements.
    let watcher = f.topology.source.connect().await.unwrap();
    let slices = tokio::spawn(async move {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            for row in watcher
                .query(
                    "SELECT query FROM pg_stat_activity WHERE query LIKE '%ctid >= %' AND pid <> pg_backend_pid()",
                    &[],
                )
                .await
                .unwrap()
            {
                seen.insert(row.get::<_, String>(0));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        seen.len()
    });
    let started = std::time::Instant::now();
    let report = verify(&f.topology, &request, |_| {}).await.unwrap();
    let took = started.elapsed();
    assert!(
        slices.await.unwrap() >= 2,
        "the source's scan was not sliced"
    );
    // Progress counted every row of both sides against the analysed estimate.
    let progress = &request.progress;
    assert_eq!(progress.rows_estimated.load(Ordering::Relaxed), 2 * 3001);
    assert!(progress.rows_scanned.load(Ordering::Relaxed) >= 2 * 3001);
    assert_eq!(*progress.table.lock().unwrap(), "ledger");
    // 3,001 source rows at 1,000 rows/s: the source's scan alone is due
    // three seconds, and an unpaced run takes a fraction of one.
    assert!(took >= Duration::from_millis(2_900), "took {took:?}");
    let ledger = table(&report, "ledger");
    assert_eq!((ledger.source_rows, ledger.target_rows), (3001, 3001));
    let (_, d) = only_difference(&report);
    assert_eq!((d.kind, d.key.as_str()), (DifferenceKind::Changed, "(7,7)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_on_one_side_only_is_schema_drift_and_rows_compare_on_the_rest() {
    let f = fleet().await;
    // A schema change the source has and the targets do not yet, one a
    // shard has and the source does not, and a row change besides.
    f.source
        .psql(
            "postgres",
            "ALTER TABLE accounts ADD COLUMN region text DEFAULT 'eu'",
        )
        .unwrap();
    f.shards[1]
        .psql("postgres", "ALTER TABLE ledger ADD COLUMN extra int")
        .unwrap();
    f.single
        .psql(
            "postgres",
            "UPDATE accounts SET name = 'changed' WHERE id = 7",
        )
        .unwrap();
    let report = run(&f, RowHash::Auto).await;
    assert!(!report.equal);
    let accounts = table(&report, "accounts");
    assert_eq!(accounts.schema_drift.len(), 1, "{accounts:#?}");
    assert_eq!(accounts.schema_drift[0].column, "region");
    assert_eq!(accounts.schema_drift[0].only_on, "source");
    assert_eq!(
        accounts.counts.get(&DifferenceKind::Changed),
        Some(&1),
        "{accounts:#?}"
    );
    assert_eq!(accounts.differences[0].columns[0].column, "name");
    let ledger = table(&report, "ledger");
    assert_eq!(ledger.schema_drift.len(), 1, "{ledger:#?}");
    assert_eq!(ledger.schema_drift[0].column, "extra");
    assert_eq!(ledger.schema_drift[0].only_on, "target");
    assert!(ledger.schema_drift[0]
        .database
        .contains(&f.shards[1].port().to_string()));
    assert!(ledger.counts.is_empty() && !ledger.equal, "{ledger:#?}");
}
