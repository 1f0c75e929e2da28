//! A client's settings hold on every shard its statements reach: SET and
//! RESET in either protocol, settings from the startup packet, and only
//! what PostgreSQL itself keeps (a rolled-back SET is gone).

use tokio_postgres::{Client, NoTls};

use super::{code, fleet, Fleet, PASSWORD};

/// `current_setting(name)` as seen by the shard of each merchant.
async fn seen(client: &Client, (a, b): (i64, i64), name: &str) -> (String, String) {
    let sql =
        format!("SELECT current_setting('{name}'), count(*) FROM payments WHERE merchant_id = $1");
    let mut got = Vec::new();
    for m in [a, b] {
        let row = client.query_one(&sql, &[&m]).await.unwrap();
        got.push(row.get::<_, String>(0));
    }
    (got[0].clone(), got[1].clone())
}

fn both(v: &str) -> (String, String) {
    (v.to_string(), v.to_string())
}

#[tokio::test]
async fn a_set_reaches_every_shard_in_both_protocols() {
    let f = fleet().await;
    let merchants = f.merchants();
    let c = f.client().await;
    // Simple protocol, the first shard used before the SET.
    seen(&c, merchants, "statement_timeout").await;
    c.batch_execute("SET statement_timeout = '1234ms'")
        .await
        .unwrap();
    assert_eq!(
        seen(&c, merchants, "statement_timeout").await,
        both("1234ms")
    );
    c.batch_execute("SET TIME ZONE 'Asia/Tokyo'; SET search_path TO public, pg_catalog")
        .await
        .unwrap();
    assert_eq!(seen(&c, merchants, "TimeZone").await, both("Asia/Tokyo"));
    assert_eq!(
        seen(&c, merchants, "search_path").await,
        both("public, pg_catalog")
    );
    // Extended protocol.
    c.execute("SET work_mem = '7MB'", &[]).await.unwrap();
    assert_eq!(seen(&c, merchants, "work_mem").await, both("7MB"));
    // A custom setting, as applications use for tenant ids and audit.
    c.batch_execute("SET myapp.actor = 'it''s me'")
        .await
        .unwrap();
    assert_eq!(seen(&c, merchants, "myapp.actor").await, both("it's me"));
    // RESET takes it back everywhere, RESET ALL too.
    c.batch_execute("RESET work_mem").await.unwrap();
    assert_eq!(seen(&c, merchants, "work_mem").await, both("4MB"));
    c.batch_execute("RESET ALL").await.unwrap();
    assert_eq!(seen(&c, merchants, "statement_timeout").await, both("0"));
    assert_ne!(seen(&c, merchants, "TimeZone").await.1, "Asia/Tokyo");
}

#[tokio::test]
async fn only_what_postgresql_keeps_spreads() {
    let f = fleet().await;
    let merchants = f.merchants();
    let c = f.client().await;
    // Rolled back with its transaction.
    c.batch_execute("BEGIN; SET statement_timeout = '111ms'; ROLLBACK")
        .await
        .unwrap();
    assert_eq!(seen(&c, merchants, "statement_timeout").await, both("0"));
    let (a, _) = merchants;
    c.batch_execute("BEGIN").await.unwrap();
    c.execute("SET statement_timeout = '222ms'", &[])
        .await
        .unwrap();
    c.query(
        "SELECT count(*) FROM payments WHERE merchant_id = $1",
        &[&a],
    )
    .await
    .unwrap();
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(seen(&c, merchants, "statement_timeout").await, both("0"));
    // Kept with its committed transaction.
    c.batch_execute("BEGIN").await.unwrap();
    c.query(
        "SELECT count(*) FROM payments WHERE merchant_id = $1",
        &[&a],
    )
    .await
    .unwrap();
    c.batch_execute("SET statement_timeout = '333ms'")
        .await
        .unwrap();
    c.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        seen(&c, merchants, "statement_timeout").await,
        both("333ms")
    );
    // Before the transaction's first statement on a table the router has
    // begun it nowhere; the SET still belongs to it, on whichever shard
    // it lands, in both protocols.
    let (_, b) = merchants;
    let inside = "SELECT current_setting('statement_timeout'), current_setting('app.tenant', true), count(*) FROM payments WHERE merchant_id = $1";
    c.batch_execute("BEGIN; SET LOCAL app.tenant = 't-42'")
        .await
        .unwrap();
    c.execute("SET statement_timeout = '555ms'", &[])
        .await
        .unwrap();
    let row = c.query_one(inside, &[&b]).await.unwrap();
    assert_eq!(
        (row.get::<_, &str>(0), row.get::<_, &str>(1)),
        ("555ms", "t-42")
    );
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        seen(&c, merchants, "statement_timeout").await,
        both("333ms")
    );
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute("SET statement_timeout = '666ms'")
        .await
        .unwrap();
    c.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        seen(&c, merchants, "statement_timeout").await,
        both("666ms")
    );
    // An invalid value fails the pending transaction at once.
    c.batch_execute("BEGIN").await.unwrap();
    let e = c
        .execute("SET statement_timeout = 'soon'", &[])
        .await
        .unwrap_err();
    assert_eq!(code(&e), "22023");
    let e = c.query(inside, &[&b]).await.unwrap_err();
    assert_eq!(code(&e), "25P02");
    c.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        seen(&c, merchants, "statement_timeout").await,
        both("666ms")
    );
    // SET LOCAL ends with its transaction.
    c.batch_execute("BEGIN; SET LOCAL statement_timeout = '444ms'; COMMIT")
        .await
        .unwrap();
    assert_eq!(
        seen(&c, merchants, "statement_timeout").await,
        both("666ms")
    );
    // A value PostgreSQL refuses changes nothing.
    let e = c
        .batch_execute("SET statement_timeout = 'banana'")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "22023");
    assert_eq!(
        seen(&c, merchants, "statement_timeout").await,
        both("666ms")
    );
}

#[tokio::test]
async fn startup_settings_hold_on_every_shard_and_bad_ones_refuse_the_login() {
    let f = fleet().await;
    let merchants = f.merchants();
    let conn = format!(
        "host=127.0.0.1 port={} user=app password={PASSWORD} dbname=shardline application_name=payments-api options='-c statement_timeout=4321 -c TimeZone=America/Lima'",
        f.port
    );
    let (c, connection) = tokio_postgres::connect(&conn, NoTls).await.unwrap();
    tokio::spawn(connection);
    assert_eq!(
        seen(&c, merchants, "statement_timeout").await,
        both("4321ms")
    );
    assert_eq!(seen(&c, merchants, "TimeZone").await, both("America/Lima"));
    assert_eq!(
        seen(&c, merchants, "application_name").await,
        both("payments-api")
    );

    let bad = format!(
        "host=127.0.0.1 port={} user=app password={PASSWORD} dbname=shardline options='-c statement_timeout=banana'",
        f.port
    );
    let e = tokio_postgres::connect(&bad, NoTls).await.err().unwrap();
    assert_eq!(code(&e), "22023", "{e}");
    // The router still serves others.
    assert_eq!(
        seen(&f.client().await, merchants, "statement_timeout").await,
        both("0")
    );
}

#[tokio::test]
async fn deallocate_all_leaves_prepared_statements_usable() {
    let f = fleet().await;
    let (a, b) = f.merchants();
    let c = f.client().await;
    let st = c
        .prepare("SELECT count(*) FROM payments WHERE merchant_id = $1")
        .await
        .unwrap();
    for m in [a, b] {
        c.query_one(&st, &[&m]).await.unwrap();
    }
    c.batch_execute("DEALLOCATE ALL").await.unwrap();
    c.batch_execute("DISCARD ALL").await.unwrap();
    for m in [a, b, a] {
        let n: i64 = c.query_one(&st, &[&m]).await.unwrap().get(0);
        assert_eq!(n, 0);
    }
}

/// The settings a later client of the same pooled connections sees.
#[tokio::test]
async fn the_next_client_starts_with_default_settings() {
    let f: Fleet = fleet().await;
    let merchants = f.merchants();
    {
        let c = f.client().await;
        seen(&c, merchants, "statement_timeout").await;
        c.batch_execute("SET statement_timeout = '999ms'")
            .await
            .unwrap();
        assert_eq!(
            seen(&c, merchants, "statement_timeout").await,
            both("999ms")
        );
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let c = f.client().await;
    assert_eq!(seen(&c, merchants, "statement_timeout").await, both("0"));
}
