//! Partition directories, file and row-group limits, bounded writers.

use std::collections::BTreeMap;

use shardline_export::{ExportRequest, From, PartitionBy, What};
use shardline_testkit::PgServer;

use crate::{listing, pg_rows, read_parquet, rows_of, run, topology};

const PAYMENTS: &str = "
CREATE TABLE payments (id bigint PRIMARY KEY, currency text, amount numeric(12,2), created_at timestamptz, day date);
INSERT INTO payments
SELECT i, (ARRAY['EUR', 'CHF', 'a/b=c %', 'Zürich ☃', NULL])[i % 5 + 1], i * 0.01,
       timestamptz '2024-01-30 22:00:00+00' + i * interval '37 minutes', date '2023-12-25' + i / 400
  FROM generate_series(1, 20000) i;
SET TimeZone = 'Asia/Kolkata';
INSERT INTO payments VALUES (0, 'EUR', 1, '2024-03-01 04:00:00', NULL);
";

/// Each file's directory must hold only rows whose value names it.
#[tokio::test]
async fn every_row_lands_in_its_partition_directory() {
    let pg = PgServer::start().unwrap();
    pg.psql("postgres", PAYMENTS).unwrap();
    let t = topology(&pg, "");
    let dir = tempfile::tempdir().unwrap();

    // By a text column: the column becomes the directory.
    let out = dir.path().join("by-currency");
    let mut req = ExportRequest::new(What::Table("payments".into()), &out);
    req.from = From::Source;
    req.partition_by = Some(PartitionBy::parse("currency").unwrap());
    let summary = run(&t, &req).await.unwrap();
    assert_eq!(summary.partitions, 5);
    let files = listing(&out);
    for dir in [
        "currency=EUR/",
        "currency=CHF/",
        "currency=a%2Fb%3Dc%20%25/",
        "currency=Z%C3%BCrich%20%E2%98%83/",
        "currency=__HIVE_DEFAULT_PARTITION__/",
    ] {
        assert!(
            files.iter().any(|f| f.starts_with(dir)),
            "{dir} in {files:?}"
        );
    }
    let want: BTreeMap<String, Option<String>> = pg_rows(
        &pg.url("postgres"),
        "SELECT id::text, currency FROM payments",
    )
    .await
    .into_iter()
    .map(|r| (r[0].clone().unwrap(), r[1].clone()))
    .collect();
    let mut seen = 0;
    for f in files.iter().filter(|f| f.ends_with(".parquet")) {
        let read = read_parquet(&out.join(f), false);
        let names: Vec<&str> = read["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert!(!names.contains(&"currency"), "{names:?}");
        let value = f.split('/').next().unwrap();
        for row in rows_of(&read) {
            let id = row[0].clone().unwrap();
            let expected = match &want[&id] {
                None => "currency=__HIVE_DEFAULT_PARTITION__".to_string(),
                Some(c) => format!("currency={}", shardline_export::partition::encode(c)),
            };
            assert_eq!(value, expected, "row {id}");
            seen += 1;
        }
    }
    assert_eq!(seen, 20_001);
    // A hive-aware reader decodes the directory names back to the values.
    let read = read_parquet(&out, true);
    let currency = read["columns"]
        .as_array()
        .unwrap()
        .iter()
        .position(|c| c["name"] == "currency")
        .unwrap();
    let by_reader: BTreeMap<String, Option<String>> = rows_of(&read)
        .into_iter()
        .map(|r| (r[0].clone().unwrap(), r[currency].clone()))
        .collect();
    assert_eq!(by_reader, want);

    // By the UTC day of a timestamptz: the column stays in the files.
    let out = dir.path().join("by-day");
    let mut req = ExportRequest::new(What::Table("payments".into()), &out);
    req.from = From::Source;
    req.partition_by = Some(PartitionBy::parse("day(created_at)").unwrap());
    run(&t, &req).await.unwrap();
    let want: BTreeMap<String, String> = pg_rows(
        &pg.url("postgres"),
        "SELECT id::text, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD') FROM payments",
    )
    .await
    .into_iter()
    .map(|r| (r[0].clone().unwrap(), r[1].clone().unwrap()))
    .collect();
    let mut seen = 0;
    for f in listing(&out).iter().filter(|f| f.ends_with(".parquet")) {
        let day = f
            .split('/')
            .next()
            .unwrap()
            .strip_prefix("created_at_day=")
            .unwrap();
        for row in rows_of(&read_parquet(&out.join(f), false)) {
            assert_eq!(day, want[row[0].as_ref().unwrap()], "row {:?}", row[0]);
            seen += 1;
        }
    }
    assert_eq!(seen, 20_001);
    // The row inserted at 04:00 in Kolkata is 22:30 UTC the day before.
    assert!(listing(&out)
        .iter()
        .any(|f| f.starts_with("created_at_day=2024-02-29/")));

    // By month of a date, with fewer open files than partitions: writers
    // rotate to new files and no row is lost or misplaced.
    let out = dir.path().join("by-month");
    let mut req = ExportRequest::new(What::Table("payments".into()), &out);
    req.from = From::Source;
    req.partition_by = Some(PartitionBy::parse("month(day)").unwrap());
    req.max_open_files = 1;
    let summary = run(&t, &req).await.unwrap();
    assert_eq!(summary.rows, 20_001);
    let read = read_parquet(&out, true);
    assert_eq!(rows_of(&read).len(), 20_001);
    let months: std::collections::BTreeSet<String> = listing(&out)
        .iter()
        .filter_map(|f| f.split_once('/').map(|(d, _)| d.to_string()))
        .collect();
    assert_eq!(
        months.into_iter().collect::<Vec<_>>(),
        [
            "day_month=2023-12",
            "day_month=2024-01",
            "day_month=2024-02",
            "day_month=__HIVE_DEFAULT_PARTITION__"
        ]
    );
}

#[tokio::test]
async fn files_and_row_groups_respect_their_limits() {
    let pg = PgServer::start().unwrap();
    pg.psql("postgres", PAYMENTS).unwrap();
    let t = topology(&pg, "");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("limits");
    let mut req = ExportRequest::new(
        What::Query("SELECT id, amount FROM payments ORDER BY id".into()),
        &out,
    );
    req.row_group_rows = 3000;
    req.max_file_rows = Some(7000);
    req.compression = shardline_export::Compression::Snappy;
    let summary = run(&t, &req).await.unwrap();
    assert_eq!(summary.files, 3);
    let read = read_parquet(&out, false);
    let files = read["files"].as_array().unwrap();
    let groups: Vec<Vec<u64>> = files
        .iter()
        .map(|f| {
            f["row_groups"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| g.as_u64().unwrap())
                .collect()
        })
        .collect();
    assert_eq!(
        groups,
        [
            vec![3000, 3000, 1000],
            vec![3000, 3000, 1000],
            vec![3000, 3000, 1]
        ]
    );
    assert_eq!(files[0]["compression"], serde_json::json!(["SNAPPY"]));
    // Order of an ORDER BY query survives parallel decoding.
    let ids: Vec<i64> = rows_of(&read)
        .iter()
        .map(|r| r[0].as_ref().unwrap().parse().unwrap())
        .collect();
    assert_eq!(ids, (0..=20_000).collect::<Vec<i64>>());
}

#[tokio::test]
async fn an_empty_result_still_writes_its_schema() {
    let pg = PgServer::start().unwrap();
    pg.psql("postgres", PAYMENTS).unwrap();
    let t = topology(&pg, "");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("empty");
    let req = ExportRequest::new(
        What::Query("SELECT * FROM payments WHERE false".into()),
        &out,
    );
    assert_eq!(run(&t, &req).await.unwrap().rows, 0);
    let read = read_parquet(&out, false);
    assert_eq!(read["columns"].as_array().unwrap().len(), 5);
    assert_eq!(
        listing(&out),
        ["_MANIFEST", "_SUCCESS", "part-000-00000.parquet"]
    );
}
