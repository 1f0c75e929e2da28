//! Unsharded tables whose key orders alike everywhere are bucketed by key
//! ranges: one scan per side, then re-checks and rows through the primary
//! key index. Keys: composite with text first, text alone, bigint first;
//! a text key under an ICU collation keeps hash buckets.

use std::path::Path;
use std::time::Duration;

use shardline_testkit::PgServer;
use shardline_topology::Topology;
use shardline_verify::report::{DifferenceKind, Report};
use shardline_verify::{verify, VerifyRequest};
use tokio_postgres::NoTls;

// Autovacuum off: only verify's own scans move the counters the test reads.
const SCHEMA: &str = "
CREATE TABLE orders (region text, id bigint, amount numeric(12,2), note text,
                     PRIMARY KEY (region, id)) WITH (autovacuum_enabled = off);
INSERT INTO orders SELECT (ARRAY['eu', 'us', 'apac', 'zürich'])[i % 4 + 1], i, i * 0.25, 'n' || i
  FROM generate_series(1, 20000) i;
CREATE TABLE codes (code text PRIMARY KEY, label text) WITH (autovacuum_enabled = off);
INSERT INTO codes SELECT 'c' || lpad(i::text, 6, '0') || CASE WHEN i % 7 = 0 THEN ' ü''\"{,}\\' ELSE '' END, 'label ' || i
  FROM generate_series(1, 20000) i;
CREATE TABLE ledger (merchant_id bigint, id bigint, amount numeric(18,2),
                     PRIMARY KEY (merchant_id, id)) WITH (autovacuum_enabled = off);
INSERT INTO ledger SELECT i % 500, i, i FROM generate_series(1, 20000) i;
CREATE TABLE names (name text COLLATE \"und-x-icu\" PRIMARY KEY, n int) WITH (autovacuum_enabled = off);
INSERT INTO names SELECT 'name ' || i, i FROM generate_series(1, 2000) i;
ANALYZE;";

const TABLES: [&str; 4] = ["orders", "codes", "ledger", "names"];

/// Sequential and index scans of each table of `TABLES` on a server.
async fn scans(server: &PgServer) -> Vec<(i64, i64)> {
    let (client, conn) = tokio_postgres::connect(&server.url("postgres"), NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut out = Vec::new();
    for t in TABLES {
        let row = client
            .query_one(
                "SELECT seq_scan, coalesce(idx_scan, 0) FROM pg_stat_user_tables WHERE relid = $1::text::regclass",
                &[&t],
            )
            .await
            .unwrap();
        out.push((row.get(0), row.get(1)));
    }
    out
}

/// The scans verify made on a server since `before`, once its sessions
/// have ended and their counters reached the statistics.
async fn scans_since(server: &PgServer, before: &[(i64, i64)]) -> Vec<(i64, i64)> {
    let delta = |now: Vec<(i64, i64)>| -> Vec<(i64, i64)> {
        now.iter()
            .zip(before)
            .map(|(n, b)| (n.0 - b.0, n.1 - b.1))
            .collect()
    };
    // A session's counters arrive when it ends; the hash-bucketed table
    // is scanned at least twice (checksums, then its rows).
    for _ in 0..100 {
        let d = delta(scans(server).await);
        if d.iter().all(|(seq, _)| *seq >= 1) && d[3].0 >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    delta(scans(server).await)
}

fn differences(report: &Report, table: &str) -> Vec<(DifferenceKind, String)> {
    let t = report.tables.iter().find(|t| t.table == table).unwrap();
    let mut d: Vec<_> = t
        .differences
        .iter()
        .map(|d| (d.kind, d.key.clone()))
        .collect();
    d.sort();
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_ranges_find_rows_through_the_index_without_a_second_scan() {
    let source = PgServer::start().unwrap();
    let target = PgServer::start().unwrap();
    source.psql("postgres", SCHEMA).unwrap();
    target.psql("postgres", SCHEMA).unwrap();
    let text = format!(
        "[source]\nurl = \"{}\"\n[contexts.copy]\ntables = [\"orders\", \"codes\", \"ledger\", \"names\"]\nurl = \"{}\"\n",
        source.url("postgres"),
        target.url("postgres")
    );
    let topology = Topology::parse(&text, Path::new("t.toml")).unwrap();
    let request = VerifyRequest {
        recheck_delay: Duration::from_millis(50),
        ..VerifyRequest::default()
    };
    let report = verify(&topology, &request, |_| {}).await.unwrap();
    assert!(report.equal, "{report:#?}");
    let orders = report.tables.iter().find(|t| t.table == "orders").unwrap();
    assert!(orders.buckets > 100, "{orders:#?}");

    target
        .psql(
            "postgres",
            "UPDATE orders SET amount = amount + 1 WHERE region = 'zürich' AND id = 7003;
             DELETE FROM codes WHERE code = 'c000007 ü''\"{,}\\';
             INSERT INTO codes VALUES ('c0100000', 'extra');
             UPDATE ledger SET amount = 0 WHERE merchant_id = 17 AND id = 10017;
             UPDATE names SET n = 0 WHERE name = 'name 1500';",
        )
        .unwrap();
    let (src_before, tgt_before) = (scans(&source).await, scans(&target).await);
    let report = verify(&topology, &request, |_| {}).await.unwrap();
    assert!(!report.equal);
    assert_eq!(
        differences(&report, "orders"),
        [(DifferenceKind::Changed, "(zürich,7003)".to_string())]
    );
    let orders = report.tables.iter().find(|t| t.table == "orders").unwrap();
    assert_eq!(orders.differences[0].columns[0].column, "amount");
    assert_eq!(orders.rechecks, 2);
    assert_eq!(
        differences(&report, "codes"),
        [
            (
                DifferenceKind::Missing,
                "(\"c000007 ü'\"\"{,}\\\\\")".to_string()
            ),
            (DifferenceKind::Extra, "(c0100000)".to_string()),
        ]
    );
    assert_eq!(
        differences(&report, "ledger"),
        [(DifferenceKind::Changed, "(17,10017)".to_string())]
    );
    assert_eq!(
        differences(&report, "names"),
        [(DifferenceKind::Changed, "(\"name 1500\")".to_string())]
    );

    // One scan per side for checksums; the re-checks and the rows came
    // through the primary key index. The ICU-collated key kept hash
    // buckets: its re-checks and rows scanned the table again.
    for (side, before) in [(&source, &src_before), (&target, &tgt_before)] {
        let d = scans_since(side, before).await;
        for (i, table) in TABLES.iter().enumerate().take(3) {
            assert_eq!(d[i].0, 1, "{table} on port {}: {d:?}", side.port());
            assert!(d[i].1 >= 3, "{table} on port {}: {d:?}", side.port());
        }
        assert!(d[3].0 >= 2, "names on port {}: {d:?}", side.port());
    }

    // A duplicate on a target that lost its primary key: still named, the
    // target's ranges read by a scan.
    target
        .psql(
            "postgres",
            "ALTER TABLE orders DROP CONSTRAINT orders_pkey;
             INSERT INTO orders SELECT * FROM orders WHERE region = 'eu' AND id = 4;
             UPDATE orders SET amount = amount - 1 WHERE region = 'zürich' AND id = 7003;",
        )
        .unwrap();
    let request = VerifyRequest {
        tables: Some(vec!["orders".into()]),
        ..request
    };
    let report = verify(&topology, &request, |_| {}).await.unwrap();
    assert_eq!(
        differences(&report, "orders"),
        [(DifferenceKind::Duplicated, "(eu,4)".to_string())]
    );
}

/// A range holding more rows than one window is read window by window,
/// and a difference on either side of a window's edge is found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_larger_than_a_window_is_read_in_windows() {
    let source = PgServer::start().unwrap();
    let target = PgServer::start().unwrap();
    // A first column with many values, but 40% of the rows on one: the
    // ranges are cut on it, and that value's range holds 36,000 rows.
    let schema = "CREATE TABLE big (k int, id int, v text, PRIMARY KEY (k, id));
                  INSERT INTO big SELECT CASE WHEN i <= 36000 THEN 0 ELSE i END, i, 'v' || i
                    FROM generate_series(1, 90000) i;
                  ANALYZE big;";
    source.psql("postgres", schema).unwrap();
    target.psql("postgres", schema).unwrap();
    // Around the first window's last key (0,20000), and in the last window.
    target
        .psql(
            "postgres",
            "UPDATE big SET v = 'changed' WHERE id IN (2, 20000, 20002, 89999);
             DELETE FROM big WHERE id = 20001;
             INSERT INTO big VALUES (0, 100000, 'extra');",
        )
        .unwrap();
    let text = format!(
        "[source]\nurl = \"{}\"\n[contexts.copy]\ntables = [\"big\"]\nurl = \"{}\"\n",
        source.url("postgres"),
        target.url("postgres")
    );
    let topology = Topology::parse(&text, Path::new("t.toml")).unwrap();
    let request = VerifyRequest {
        rechecks: 0,
        ..VerifyRequest::default()
    };
    let report = verify(&topology, &request, |_| {}).await.unwrap();
    assert_eq!(
        differences(&report, "big"),
        [
            (DifferenceKind::Missing, "(0,20001)".to_string()),
            (DifferenceKind::Extra, "(0,100000)".to_string()),
            (DifferenceKind::Changed, "(0,2)".to_string()),
            (DifferenceKind::Changed, "(0,20000)".to_string()),
            (DifferenceKind::Changed, "(0,20002)".to_string()),
            (DifferenceKind::Changed, "(89999,89999)".to_string()),
        ]
    );
    let big = report.tables.iter().find(|t| t.table == "big").unwrap();
    assert!(big.buckets > 100, "{big:#?}");
}
