//! Scatter SELECTs merged by the router give the answer of one database
//! holding every row (the monolith): the same query runs through the
//! router over two shards and directly on the monolith, and the rows must
//! be identical, byte for byte in text, value for value in binary.

use std::process::Command;

use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use super::{code, fleet, fleet_collated, Fleet, PASSWORD, SCHEMA};

/// Columns beyond the shared schema, of every type the merge decodes.
const EXTRA: &str =
    "ALTER TABLE payments ADD COLUMN created_at timestamptz, ADD COLUMN score float8,
    ADD COLUMN ref uuid, ADD COLUMN flag bool, ADD COLUMN day date, ADD COLUMN qty int4,
    ADD COLUMN note varchar(20), ADD COLUMN span interval";

/// 120 payments over 8 merchants, NULLs in every nullable column, ties,
/// NaN and exactly representable floats (so float sums do not depend on
/// the order of addition).
fn rows_sql() -> String {
    let statuses = [
        "'paid'",
        "'failed'",
        "'Refunded'",
        "NULL",
        "'pending'",
        "'éclair'",
    ];
    let values: Vec<String> = (1..=120i64)
        .map(|id| {
            let m = id % 8 + 1;
            let amount = match id % 7 {
                0 => "NULL".to_string(),
                k => format!("{}.{:02}", (id * 37) % 500, (id * k) % 100),
            };
            let score = match id % 11 {
                0 => "'NaN'".to_string(),
                5 => "NULL".to_string(),
                k => format!("{}", (k as f64 - 4.0) * 0.25 * (id % 3) as f64),
            };
            let created = match id % 13 {
                0 => "NULL".to_string(),
                k => format!("'2024-0{}-{:02} {:02}:{:02}:00+0{}'", 1 + id % 9, 1 + id % 28, k, id % 60, id % 5),
            };
            format!(
                "({id}, {m}, {amount}, {status}, {created}, {score}, '{:08x}-0000-4000-8000-{:012x}', {flag}, {day}, {qty}, {note}, '{} hours')",
                (id * 2654435761u32 as i64) % 0xffff_ffff,
                id,
                id % 9,
                status = statuses[(id % 6) as usize],
                flag = if id % 5 == 0 { "NULL" } else if id % 2 == 0 { "true" } else { "false" },
                day = if id % 17 == 0 { "NULL".to_string() } else { format!("'2023-12-{:02}'", 1 + id % 30) },
                qty = id % 4,
                note = if id % 3 == 0 { "NULL".to_string() } else { format!("'n{}'", id % 10) },
            )
        })
        .collect();
    format!(
        "INSERT INTO payments (id, merchant_id, amount, status, created_at, score, ref, flag, day, qty, note, span) VALUES {}",
        values.join(", ")
    )
}

/// The fleet with the same rows in both shards (split by the router's
/// INSERT) and in the monolith, plus a monolith client.
async fn loaded() -> (Fleet, Client, Client) {
    loaded_in(fleet().await).await
}

async fn loaded_in(f: Fleet) -> (Fleet, Client, Client) {
    for db in ["tx0", "tx1"] {
        f.server.psql(db, EXTRA).unwrap();
    }
    f.server
        .psql(
            "postgres",
            "CREATE DATABASE monolith TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'",
        )
        .unwrap();
    f.server.psql("monolith", SCHEMA).unwrap();
    f.server.psql("monolith", EXTRA).unwrap();
    let insert = rows_sql();
    f.server.psql("monolith", &insert).unwrap();
    let router = f.client().await;
    router.batch_execute(&insert).await.unwrap();
    let (mono, conn) = tokio_postgres::connect(&f.server.url("monolith"), NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    (f, router, mono)
}

type TextRows = Vec<Vec<Option<String>>>;

async fn simple(c: &Client, sql: &str) -> Result<(TextRows, u64), tokio_postgres::Error> {
    let mut rows = Vec::new();
    let mut count = 0;
    for m in c.simple_query(sql).await? {
        match m {
            SimpleQueryMessage::Row(r) => {
                rows.push((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            SimpleQueryMessage::CommandComplete(n) => count = n,
            _ => {}
        }
    }
    Ok((rows, count))
}

/// Queries whose merged answer must equal the monolith's, in order.
fn ordered_queries(a: i64, b: i64) -> Vec<String> {
    let mut q: Vec<String> = [
        "SELECT id, amount FROM payments ORDER BY amount, id",
        "SELECT id, amount FROM payments ORDER BY amount DESC NULLS LAST, id LIMIT 17",
        "SELECT id, amount FROM payments ORDER BY amount DESC, id DESC LIMIT 30",
        "SELECT id, created_at FROM payments ORDER BY created_at DESC, id LIMIT 25",
        "SELECT id, score FROM payments ORDER BY score NULLS FIRST, id",
        "SELECT id, ref FROM payments ORDER BY ref DESC",
        "SELECT id, day, flag FROM payments ORDER BY day DESC, flag, id",
        "SELECT id, status FROM payments ORDER BY status COLLATE \"C\", id LIMIT 50",
        "SELECT id, note FROM payments ORDER BY note COLLATE \"C\" DESC, 1",
        "SELECT qty, id FROM payments ORDER BY 1 DESC, 2 LIMIT 0",
        "SELECT p.id, p.qty FROM payments p WHERE amount > 100 ORDER BY p.qty, p.id",
        "SELECT count(*), sum(amount), min(amount), max(created_at), sum(id), sum(score), min(day), count(status), sum(qty), max(score) FROM payments",
        "SELECT count(*), sum(amount), min(amount), sum(qty) FROM payments WHERE id < 0",
        "SELECT status, count(*), sum(amount), max(amount), min(created_at) FROM payments GROUP BY status ORDER BY status COLLATE \"C\" NULLS FIRST",
        "SELECT flag, qty, count(*), sum(id) FROM payments GROUP BY flag, qty ORDER BY flag DESC, qty",
        "SELECT amount, count(*) FROM payments GROUP BY amount ORDER BY 2 DESC, 1",
        "SELECT merchant_id, count(*), sum(amount) FROM payments GROUP BY merchant_id ORDER BY merchant_id",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // PgDog #639: an IN list over two shards, grouped by another column.
    q.push(format!(
        "SELECT status, count(*), sum(amount) FROM payments WHERE merchant_id IN ({a}, {b}) GROUP BY status ORDER BY status COLLATE \"C\""
    ));
    q.push(format!(
        "SELECT merchant_id, count(*) FROM payments WHERE merchant_id IN ({a}, {b}) GROUP BY merchant_id ORDER BY merchant_id DESC"
    ));
    q
}

/// OFFSET: the shards run `LIMIT limit + offset` and the router skips;
/// avg: the shards run sum and count. Both through the simple protocol.
const REWRITTEN: &[&str] = &[
    "SELECT avg(amount), avg(qty), avg(id), count(*), avg(score) FILTER (WHERE score <> 'NaN') FROM payments",
    "SELECT avg(amount) FROM payments WHERE id < 0",
    "SELECT status, avg(amount) AS mean, avg(qty) FROM payments GROUP BY status ORDER BY mean DESC NULLS LAST, status COLLATE \"C\"",
    "SELECT flag, avg(qty) FROM payments GROUP BY flag ORDER BY 2, 1",
    "SELECT id, amount FROM payments ORDER BY amount, id LIMIT 10 OFFSET 7",
    "SELECT id, created_at FROM payments ORDER BY created_at DESC NULLS LAST, id OFFSET 100",
    "SELECT id FROM payments ORDER BY id DESC LIMIT 5 OFFSET 118",
    "SELECT id FROM payments ORDER BY id OFFSET 500",
    "SELECT id FROM payments ORDER BY id FETCH FIRST 4 ROWS ONLY OFFSET 2",
];

#[tokio::test]
async fn scatter_selects_through_the_simple_protocol_equal_the_monolith() {
    let (f, router, mono) = loaded().await;
    let (a, b) = f.merchants();
    let offsets = REWRITTEN.iter().map(|s| s.to_string());
    for sql in ordered_queries(a, b).into_iter().chain(offsets) {
        let want = simple(&mono, &sql).await.unwrap();
        let got = simple(&router, &sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        assert_eq!(got, want, "{sql}");
    }
    // Unordered: the same rows, in some order.
    for sql in [
        "SELECT id, amount FROM payments WHERE qty = 2",
        "SELECT status, flag, count(*), max(day) FROM payments GROUP BY status, flag",
        "SELECT id FROM payments LIMIT 7",
    ] {
        let (mut want, _) = simple(&mono, sql).await.unwrap();
        let (mut got, n) = simple(&router, sql).await.unwrap();
        assert_eq!(n as usize, got.len());
        if sql.contains("LIMIT") {
            assert_eq!(got.len(), 7);
            continue;
        }
        want.sort();
        got.sort();
        assert_eq!(got, want, "{sql}");
    }
}

#[tokio::test]
async fn psql_sees_the_merged_answer_of_the_monolith() {
    let (f, _router, _mono) = loaded().await;
    let psql = f.server.bindir().program("psql");
    let port = f.port.to_string();
    let sql = "SELECT status, count(*), sum(amount), avg(amount) FROM payments GROUP BY status ORDER BY status COLLATE \"C\" DESC NULLS LAST; SELECT id, created_at FROM payments ORDER BY created_at, id LIMIT 5 OFFSET 3";
    let out = tokio::task::spawn_blocking(move || {
        let run = |sql: &str| {
            Command::new(&psql)
                .args([
                    "-X",
                    "-A",
                    "-t",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-U",
                    "app",
                    "-d",
                    "shardline",
                    "-c",
                ])
                .arg(sql)
                .env("PGPASSWORD", PASSWORD)
                .output()
                .unwrap()
        };
        sql.split("; ").map(run).collect::<Vec<_>>()
    })
    .await
    .unwrap();
    for (o, one) in out.iter().zip(sql.split("; ")) {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let want = f.server.psql("monolith", one).unwrap();
        assert_eq!(String::from_utf8_lossy(&o.stdout), want, "{one}");
    }
}

#[tokio::test]
async fn merges_that_would_be_wrong_are_refused_with_their_reason() {
    let (_f, router, _mono) = loaded().await;
    for (sql, why) in [
        (
            "SELECT id, status FROM payments ORDER BY status",
            "COLLATE \"C\"",
        ),
        (
            "SELECT id, span FROM payments ORDER BY span",
            "type oid 1186",
        ),
        (
            "SELECT status, min(status) FROM payments GROUP BY status",
            "collation",
        ),
        ("SELECT sum(span) FROM payments", "sum() of column"),
        ("SELECT stddev(amount) FROM payments", "stddev()"),
        (
            "SELECT id FROM payments ORDER BY amount",
            "amount is not an output column",
        ),
        (
            "SELECT id, id FROM payments ORDER BY id",
            "two output columns",
        ),
        ("SELECT avg(score::real) FROM payments", "avg() of column"),
        ("SELECT count(DISTINCT status) FROM payments", "DISTINCT"),
        (
            "SELECT status, count(*) FROM payments GROUP BY status HAVING count(*) > 3",
            "HAVING",
        ),
        (
            "SELECT string_agg(status, ',') FROM payments",
            "string_agg()",
        ),
        (
            "SELECT span, count(*) FROM payments GROUP BY span",
            "GROUP BY column",
        ),
    ] {
        let e = router.simple_query(sql).await.unwrap_err();
        assert_eq!(code(&e), "0A000", "{sql}: {e:?}");
        let db = e.as_db_error().unwrap();
        assert!(db.message().contains(why), "{sql}: {}", db.message());
        assert!(db.hint().is_some(), "{sql}");
        // The connection and every shard connection go on.
        let (rows, _) = simple(&router, "SELECT count(*) FROM payments")
            .await
            .unwrap();
        assert_eq!(rows, vec![vec![Some("120".to_string())]], "after {sql}");
    }
}

/// A column's bytes exactly as the server sent them (binary here).
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Raw(Option<Vec<u8>>);

impl<'a> tokio_postgres::types::FromSql<'a> for Raw {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(Some(raw.to_vec())))
    }

    fn from_sql_null(
        _: &tokio_postgres::types::Type,
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(None))
    }

    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }
}

async fn extended(
    c: &Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<Vec<Raw>>, tokio_postgres::Error> {
    let rows = c.query(sql, params).await?;
    Ok(rows
        .iter()
        .map(|r| (0..r.len()).map(|i| r.get::<_, Raw>(i)).collect())
        .collect())
}

#[tokio::test]
async fn scatter_selects_through_the_extended_protocol_equal_the_monolith_in_binary() {
    let (f, router, mono) = loaded().await;
    let (a, b) = f.merchants();
    for sql in ordered_queries(a, b) {
        let want = extended(&mono, &sql, &[]).await.unwrap();
        let got = extended(&router, &sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        assert_eq!(got, want, "{sql}");
    }
    // OFFSET and avg: the shards run the router's rewritten statement,
    // prepared next to the client's.
    for sql in REWRITTEN {
        let want = extended(&mono, sql, &[]).await.unwrap();
        let got = extended(&router, sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        assert_eq!(got, want, "{sql}");
    }
    let sql = "SELECT flag, avg(amount) FROM payments WHERE qty = $1 GROUP BY flag ORDER BY flag";
    let on_router = router.prepare(sql).await.unwrap();
    let on_mono = mono.prepare(sql).await.unwrap();
    for qty in [0i32, 1, 2, 3, 0] {
        let raw = |rows: Vec<tokio_postgres::Row>| -> Vec<Vec<Raw>> {
            rows.iter()
                .map(|r| (0..r.len()).map(|i| r.get::<_, Raw>(i)).collect())
                .collect()
        };
        let got = raw(router.query(&on_router, &[&qty]).await.unwrap());
        let want = raw(mono.query(&on_mono, &[&qty]).await.unwrap());
        assert_eq!(got, want, "qty = {qty}");
    }
    // The client's statement still runs as written on one shard.
    let (a, _) = f.merchants();
    let one = router
        .query(
            "SELECT avg(qty) FROM payments WHERE merchant_id = $1",
            &[&a],
        )
        .await
        .unwrap();
    assert_eq!(one.len(), 1);

    // LIMIT as a bind parameter; the prepared statement is reused across
    // calls and runs on both shards' pooled connections.
    let sql = "SELECT id, amount FROM payments WHERE qty <> $1 ORDER BY amount DESC, id LIMIT $2";
    let on_router = router.prepare(sql).await.unwrap();
    let on_mono = mono.prepare(sql).await.unwrap();
    for (qty, limit) in [(0i32, 5i64), (1, 40), (3, 0), (2, 1000)] {
        let got = router.query(&on_router, &[&qty, &limit]).await.unwrap();
        let want = mono.query(&on_mono, &[&qty, &limit]).await.unwrap();
        let ids = |rows: &[tokio_postgres::Row]| {
            rows.iter().map(|r| r.get::<_, i64>(0)).collect::<Vec<_>>()
        };
        assert_eq!(ids(&got), ids(&want), "qty <> {qty} LIMIT {limit}");
    }
    // A grouped query with a bind parameter in WHERE.
    let sql = "SELECT status, count(*), sum(amount) FROM payments WHERE id > $1 GROUP BY status ORDER BY status COLLATE \"C\"";
    let got = extended(&router, sql, &[&40i64]).await.unwrap();
    let want = extended(&mono, sql, &[&40i64]).await.unwrap();
    assert_eq!(got, want);

    // Refusals keep their SQLSTATE and the connection goes on.
    let e = router
        .query("SELECT id, status FROM payments ORDER BY status", &[])
        .await
        .unwrap_err();
    assert_eq!(code(&e), "0A000");
    assert!(e.as_db_error().unwrap().message().contains("COLLATE \"C\""));
    let n: i64 = router
        .query_one("SELECT count(*) FROM payments", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 120);
}

/// Shards whose databases sort text bytewise (collation C): text is
/// ordered and min/max-ed without COLLATE "C" in the query, unless a
/// column says otherwise.
#[tokio::test]
async fn text_merges_without_collate_when_the_shards_use_the_c_collation() {
    let (_f, router, mono) = loaded_in(fleet_collated(Some("C")).await).await;
    for sql in [
        "SELECT id, status FROM payments ORDER BY status DESC, id",
        "SELECT note, min(status), max(status), count(*) FROM payments GROUP BY note ORDER BY note NULLS FIRST",
        "SELECT min(note), max(status) FROM payments",
    ] {
        let want = simple(&mono, sql).await.unwrap();
        let got = simple(&router, sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        assert_eq!(got, want, "{sql}");
        let want = extended(&mono, sql, &[]).await.unwrap();
        let got = extended(&router, sql, &[]).await.unwrap();
        assert_eq!(got, want, "{sql}");
    }
    // An explicit other collation is never sorted bytewise.
    let e = router
        .simple_query("SELECT status COLLATE \"POSIX\" AS s, id FROM payments ORDER BY s COLLATE \"und-x-icu\"")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "0A000");
    let e = router
        .simple_query("SELECT status COLLATE \"und-x-icu\" AS s FROM payments ORDER BY s")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "0A000", "{e:?}");
}

/// A shard whose connection dies mid-scatter fails that statement with an
/// ERROR (not the backend's FATAL, which would end the client's session);
/// the other shard's answer is read off its connection, so the next
/// statements get whole, correct answers.
#[tokio::test]
async fn a_shard_connection_lost_mid_scatter_fails_only_that_statement() {
    let (f, router, mono) = loaded().await;
    let router = std::sync::Arc::new(router);
    let sql = "SELECT id, amount FROM payments ORDER BY amount DESC, id LIMIT 30";
    let want = simple(&mono, sql).await.unwrap();
    assert_eq!(simple(&router, sql).await.unwrap(), want);
    // Killed while it runs: an idle dead connection would just be replaced.
    let kill = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                WHERE application_name = 'shardline-router' AND datname = 'tx1' \
                AND state = 'active' AND query LIKE '%pg_sleep%'";
    for slow in [
        "SELECT id, amount FROM payments WHERE (SELECT pg_sleep(2)) IS NOT NULL ORDER BY amount DESC, id LIMIT 30",
        "UPDATE payments SET note = 'x' WHERE merchant_id IN (1, 2, 3, 4) AND (SELECT pg_sleep(2)) IS NOT NULL",
    ] {
        let running = tokio::spawn({
            let router = router.clone();
            async move { router.simple_query(slow).await.map(|_| ()) }
        });
        let mut killed = String::new();
        for _ in 0..40 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            killed = f.server.psql("postgres", kill).unwrap().trim().to_string();
            if killed == "1" {
                break;
            }
        }
        assert_eq!(killed, "1", "{slow} never ran on tx1");
        let e = running.await.unwrap().unwrap_err();
        let c = code(&e);
        assert!(c.starts_with("08") || c == "57P01", "{slow}: {e:?}");
        assert_eq!(e.as_db_error().unwrap().severity(), "ERROR");
        assert_eq!(simple(&router, sql).await.unwrap(), want, "after {slow}");
    }
    // A write on several shards is not atomic: the live shard's rows are
    // updated, the client was told the statement failed.
    let (rows, _) = simple(&router, "SELECT count(*) FROM payments WHERE note = 'x'")
        .await
        .unwrap();
    let on_tx0 = f.on_shard(
        0,
        "SELECT count(*) FROM payments WHERE merchant_id IN (1, 2, 3, 4)",
    );
    assert_eq!(rows, vec![vec![Some(on_tx0)]]);
}
