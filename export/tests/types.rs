//! Every supported type, NULLs and extremes, read back exactly.

use shardline_export::{ExportError, ExportRequest, From, NumericPolicy, What};
use shardline_testkit::PgServer;

use crate::{assert_same_rows, listing, pg_rows, read_parquet, rows_of, run, topology};

const SCHEMA: &str = "
CREATE TYPE mood AS ENUM ('happy', 'sad', 'zürich ☃');
CREATE TABLE everything (
    id      integer PRIMARY KEY,
    i2      smallint,
    i8      bigint,
    f4      real,
    f8      double precision,
    amount  numeric(18,2),
    wide    numeric(38,10),
    loose   numeric,
    t       text,
    v       varchar(20),
    c       char(5),
    flag    boolean,
    d       date,
    ts      timestamp,
    tstz    timestamptz,
    tm      time,
    u       uuid,
    j       json,
    jb      jsonb,
    b       bytea,
    ints    integer[],
    texts   text[],
    amounts numeric(10,2)[],
    m       mood
);
INSERT INTO everything (id) VALUES (0);
INSERT INTO everything
SELECT i, (i % 65536 - 32768)::int2, i::int8 * 1000003 - 5000000000, i / 7.0, i / 3.0 - 100,
       i * 1.25 - 300, i * 12345.6789012345 - 1, (i::numeric / 7)::numeric(30,20),
       CASE WHEN i % 5 = 0 THEN NULL ELSE 'Zürich ☃ 日本 ' || i END, 'v' || i, 'c' || (i % 100),
       i % 2 = 0, date '2000-01-01' + (i * 37 - 20000), timestamp '1990-06-15 12:00:00' + i * interval '7 hours 13 minutes 0.000001 second',
       timestamptz '2024-03-10 01:30:00-05' + i * interval '1 hour 1 second', time '00:00:00' + i * interval '17 seconds',
       gen_random_uuid(), ('{\"k\":  ' || i || ', \"a\": [1, \"x\"]}')::json, ('{\"k\": ' || i || ', \"é\": null}')::jsonb,
       decode(lpad(to_hex(i), 8, '0'), 'hex'), ARRAY[i, NULL, -i], ARRAY['a' || i, NULL, '', 'ü'],
       ARRAY[i * 0.01, NULL]::numeric(10,2)[], (ARRAY['happy', 'sad', 'zürich ☃'])[i % 3 + 1]::mood
  FROM generate_series(1, 3000) i;
INSERT INTO everything VALUES
 (-1, -32768, -9223372036854775808, '3.4028235e38', 'Infinity', -9999999999999999.99,
  -9999999999999999999999999999.9999999999, '1.000000000000000000000000000000000000000000001',
  E'line\\nbreak \"quoted\" \\t tab ''single''', '', 'ab', false, '0001-01-01', '0001-01-01 00:00:00',
  '1969-12-31 23:59:59.999999+00', '00:00:00', '00000000-0000-0000-0000-000000000000', '[]', '{}', '\\x',
  '{}', '{}', '{}', 'happy'),
 (-2, 32767, 9223372036854775807, '-0', 'NaN', 0.01, 0.0000000001, 'NaN',
  '🎉', 'x', 'abcde', true, '9999-12-31', '9999-12-31 23:59:59.999999', '2262-04-11 23:47:16.854775+14',
  '23:59:59.999999', 'ffffffff-ffff-ffff-ffff-ffffffffffff', 'null', '[1, \"two\", {\"three\": 3.0}]', '\\x00ff',
  ARRAY[NULL]::int[], ARRAY[NULL]::text[], ARRAY[NULL]::numeric[], 'zürich ☃'),
 (-3, 0, 0, '1.17549435e-38', '-Infinity', 0, 0, '-1e-30', NULL, NULL, NULL, NULL, '1970-01-01', '1970-01-01 00:00:00',
  '1999-12-31 19:00:00 America/New_York', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (-4, NULL, NULL, 'NaN', '-0', NULL, NULL, '123456789012345678901234567890123456789012345678901234567890', NULL, NULL,
  NULL, NULL, NULL, NULL, '2024-06-30 23:59:59.123456+14', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
-- The exporter's session runs in a far-off zone: timestamptz must not care.
ALTER DATABASE postgres SET timezone = 'Pacific/Chatham';
";

const COLUMNS: [&str; 24] = [
    "id", "i2", "i8", "f4", "f8", "amount", "wide", "loose", "t", "v", "c", "flag", "d", "ts",
    "tstz", "tm", "u", "j", "jb", "b", "ints", "texts", "amounts", "m",
];

fn array_sql(col: &str) -> String {
    format!(
        "CASE WHEN {col} IS NULL THEN NULL ELSE '[' || coalesce((SELECT string_agg(coalesce(e::text, 'null'), ',' ORDER BY o) FROM unnest({col}) WITH ORDINALITY u(e, o)), '') || ']' END"
    )
}

/// The source's values rendered as the reader renders Parquet's.
fn render_sql() -> String {
    let float = |c: &str| {
        format!("CASE WHEN {c} = 'NaN' THEN 'NaN' ELSE encode(float8send({c}::float8), 'hex') END")
    };
    let micros = |c: &str| format!("(extract(epoch FROM {c}) * 1000000)::int8::text");
    let cols = [
        "id::text".to_string(),
        "i2::text".into(),
        "i8::text".into(),
        float("f4"),
        float("f8"),
        "amount::text".into(),
        "wide::text".into(),
        "loose::text".into(),
        "t".into(),
        "v::text".into(),
        // char(n) travels with its padding, as PostgreSQL prints it.
        "CASE WHEN c IS NULL THEN NULL ELSE format('%s', c) END".into(),
        "flag::text".into(),
        "(d - date '1970-01-01')::text".into(),
        micros("ts"),
        micros("tstz"),
        micros("tm"),
        "u::text".into(),
        "j::text".into(),
        "jb::text".into(),
        "encode(b, 'hex')".into(),
        array_sql("ints"),
        array_sql("texts"),
        array_sql("amounts"),
        "m::text".into(),
    ];
    format!("SELECT {} FROM everything", cols.join(", "))
}

#[tokio::test]
async fn every_type_reads_back_exactly() {
    let pg = PgServer::start().unwrap();
    pg.psql("postgres", SCHEMA).unwrap();
    let t = topology(&pg, "");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("everything");
    let mut req = ExportRequest::new(What::Table("everything".into()), &out);
    req.from = From::Source;
    req.row_group_rows = 1000;
    let summary = run(&t, &req).await.unwrap();
    assert_eq!(summary.rows, 3005);
    assert_eq!(
        listing(&out),
        ["_MANIFEST", "_SUCCESS", "part-000-00000.parquet"]
    );

    let read = read_parquet(&out.join("part-000-00000.parquet"), false);
    assert_eq!(
        read["files"][0]["row_groups"],
        serde_json::json!([1000, 1000, 1000, 5])
    );
    assert_eq!(read["files"][0]["format_version"], "1.0");
    let types: Vec<(String, String, String)> = read["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["type"].as_str().unwrap().to_string(),
                c["logical"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let type_of = |name: &str| types.iter().find(|t| t.0 == name).unwrap().clone();
    assert_eq!(type_of("i2").1, "int16");
    assert_eq!(type_of("f4").1, "float");
    assert_eq!(type_of("amount").1, "decimal128(18, 2)");
    assert_eq!(type_of("wide").1, "decimal128(38, 10)");
    assert_eq!(type_of("loose").1, "string");
    assert_eq!(type_of("ts").1, "timestamp[us]");
    assert_eq!(type_of("tstz").1, "timestamp[us, tz=UTC]");
    assert!(
        type_of("tstz").2.contains("isAdjustedToUTC=true"),
        "{:?}",
        type_of("tstz")
    );
    assert!(
        type_of("ts").2.contains("isAdjustedToUTC=false"),
        "{:?}",
        type_of("ts")
    );
    assert_eq!(type_of("u").2, "UUID");
    assert_eq!(type_of("j").2, "JSON");
    assert_eq!(type_of("jb").2, "JSON");
    assert_eq!(type_of("b").1, "binary");
    assert_eq!(type_of("ints").1, "list<element: int32>");
    assert_eq!(type_of("amounts").1, "list<element: decimal128(10, 2)>");
    assert_eq!(type_of("m").1, "string");
    let loose = read["columns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "loose")
        .unwrap();
    assert_eq!(loose["pg_type"], "numeric");

    let want = pg_rows(&pg.url("postgres"), &render_sql()).await;
    assert_same_rows(&COLUMNS, rows_of(&read), want);
}

#[tokio::test]
async fn values_without_an_exact_parquet_value_stop_the_export_naming_the_column() {
    let pg = PgServer::start().unwrap();
    pg.psql(
        "postgres",
        "CREATE TABLE prices (id int, price numeric(10,2), at timestamptz, loose numeric, span interval);
         INSERT INTO prices SELECT i, i, now(), i, '1 day' FROM generate_series(1, 100) i;",
    )
    .unwrap();
    let t = topology(&pg, "");
    let dir = tempfile::tempdir().unwrap();
    let request = |sql: &str| {
        let mut r = ExportRequest::new(What::Query(sql.into()), dir.path().join("out"));
        r.from = From::Source;
        r
    };

    // An unknown type is refused before anything is read, unless cast.
    let err = run(&t, &request("SELECT * FROM prices")).await.unwrap_err();
    assert!(
        matches!(&err, ExportError::UnsupportedType { column, pg_type } if column == "span" && pg_type == "interval"),
        "{err}"
    );
    assert!(err.hint().contains("--cast-unknown"));
    let mut cast = request("SELECT id, span FROM prices");
    cast.cast_unknown = true;
    run(&t, &cast).await.unwrap();
    let read = read_parquet(&dir.path().join("out"), false);
    assert_eq!(rows_of(&read)[0][1].as_deref(), Some("1 day"));
    std::fs::remove_dir_all(dir.path().join("out")).unwrap();

    // numeric without a precision: its exact text by default, an error on request.
    let mut strict = request("SELECT id, loose FROM prices");
    strict.numeric = NumericPolicy::Error;
    let err = run(&t, &strict).await.unwrap_err();
    assert!(
        matches!(&err, ExportError::UnconstrainedNumeric { column, .. } if column == "loose"),
        "{err}"
    );

    // NaN in a decimal column and infinite timestamps: errors naming the
    // column, found mid-stream, and nothing left behind.
    pg.psql("postgres", "UPDATE prices SET price = 'NaN' WHERE id = 77")
        .unwrap();
    let err = run(&t, &request("SELECT id, price FROM prices"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ExportError::Value { column, reason, .. } if column == "price" && reason.contains("NaN")),
        "{err}"
    );
    assert!(
        !dir.path().join("out").exists(),
        "{:?}",
        listing(dir.path())
    );
    pg.psql("postgres", "UPDATE prices SET at = 'infinity' WHERE id = 5")
        .unwrap();
    let err = run(&t, &request("SELECT id, at FROM prices"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ExportError::Value { column, .. } if column == "at"),
        "{err}"
    );
    assert!(!dir.path().join("out").exists());
}

#[tokio::test]
async fn domains_export_as_their_base_type_under_the_domains_modifier() {
    let pg = PgServer::start().unwrap();
    pg.psql(
        "postgres",
        "CREATE DOMAIN amount AS numeric(18,2);
         CREATE DOMAIN positive_amount AS amount CHECK (VALUE > 0);
         CREATE DOMAIN merchant AS bigint;
         CREATE DOMAIN loose AS numeric;
         CREATE TABLE fees (id merchant, fee positive_amount, gross amount, note loose);
         INSERT INTO fees SELECT i, i * 1.25, -i * 0.5, i / 3.0 FROM generate_series(1, 50) i;",
    )
    .unwrap();
    let t = topology(&pg, "");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fees");
    let mut req = ExportRequest::new(What::Table("fees".into()), &out);
    req.from = From::Source;
    run(&t, &req).await.unwrap();
    let read = read_parquet(&out, false);
    let type_of = |name: &str| {
        read["columns"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()["type"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(type_of("id"), "int64");
    assert_eq!(type_of("fee"), "decimal128(18, 2)");
    assert_eq!(type_of("gross"), "decimal128(18, 2)");
    assert_eq!(type_of("note"), "string");
    let want = pg_rows(
        &pg.url("postgres"),
        "SELECT id::text, fee::text, gross::text, note::text FROM fees",
    )
    .await;
    assert_same_rows(&["id", "fee", "gross", "note"], rows_of(&read), want);

    // A domain without a modifier over numeric is unconstrained, as numeric is.
    let mut strict = ExportRequest::new(
        What::Query("SELECT note FROM fees".into()),
        dir.path().join("strict"),
    );
    strict.from = From::Source;
    strict.numeric = NumericPolicy::Error;
    let err = run(&t, &strict).await.unwrap_err();
    assert!(
        matches!(&err, ExportError::UnconstrainedNumeric { column, .. } if column == "note"),
        "{err}"
    );
}
