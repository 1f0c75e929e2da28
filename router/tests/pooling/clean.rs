//! A backend is clean before the next client gets it, on every path: an
//! error in an exchange ended by Flush, a client gone mid-statement.

use std::time::{Duration, Instant};

use futures_util::future::join_all;

use super::wire::{self, pipeline, Wire};
use super::{fleet, pool_column, Fleet};

/// Backends of the router on a shard database in a state other than idle.
fn busy_backends(f: &Fleet, n: usize) -> String {
    f.on_shard(
        n,
        "SELECT coalesce(string_agg(state || ':' || query, ', '), '') FROM pg_stat_activity
          WHERE application_name = 'shardline-router' AND state <> 'idle' AND pid <> pg_backend_pid()",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_after_an_error_then_gone_a_hundred_times_leaves_every_pool_whole() {
    let f = fleet("pool_size = 2\npool_timeout = \"2s\"").await;
    let merchants = [f.merchant_on(0), f.merchant_on(1)];
    for i in 0..100 {
        let m = merchants[i % 2];
        let mut w = Wire::login(f.port).await;
        // Parse, Bind, Execute of a failing statement, then Flush, no Sync.
        let sql = format!("SELECT 1/0 FROM payments WHERE merchant_id = {m}");
        w.send(&pipeline("", &sql, b'H')).await;
        let answer = w.until(b'E').await;
        let error = &answer.last().unwrap().1;
        assert_eq!(wire::sqlstate(error), "22012", "round {i}");
        drop(w);
    }
    // Nothing is left running, and every pooled connection is idle.
    Fleet::eventually(Duration::from_secs(10), "the pools settle", || async {
        busy_backends(&f, 0).is_empty()
    })
    .await;
    for n in 0..2 {
        let (open, idle) = (pool_column(&f, n, 6).await, pool_column(&f, n, 7).await);
        assert!(
            open <= 2 && idle == open,
            "shard {n}: {open} open, {idle} idle"
        );
    }
    // Both backends of each pool serve at once: two transactions per
    // shard sleeping 1.5 s each end together, not one after the other.
    let clients: Vec<_> = join_all((0..4).map(|_| f.client())).await;
    let started = Instant::now();
    let work = clients.iter().enumerate().map(|(i, c)| async move {
        let m = merchants[i % 2];
        c.batch_execute(&format!(
            "BEGIN; INSERT INTO payments (id, merchant_id) VALUES ({i}, {m}); SELECT pg_sleep(1.5); COMMIT"
        ))
        .await
        .unwrap();
    });
    join_all(work).await;
    let took = started.elapsed();
    assert!(took < Duration::from_millis(2900), "{took:?}");
    for n in 0..2 {
        assert_eq!(f.on_shard(n, "SELECT count(*) FROM payments"), "2");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_statement_has_the_statement_cancelled() {
    let f = fleet("pool_size = 1\npool_timeout = \"5s\"").await;
    let m1 = f.merchant_on(1);
    for (n, sql) in [
        (0, "SELECT pg_sleep(60)".to_string()),
        (
            1,
            format!("SELECT pg_sleep(60)::text, count(*) FROM payments WHERE merchant_id = {m1}"),
        ),
    ] {
        let mut w = Wire::login(f.port).await;
        w.send(&wire::frame(b'Q', format!("{sql}\0").as_bytes()))
            .await;
        Fleet::eventually(Duration::from_secs(10), "the statement runs", || async {
            busy_backends(&f, n).contains("pg_sleep(60)")
        })
        .await;
        let gone = Instant::now();
        drop(w);
        Fleet::eventually(
            Duration::from_secs(5),
            "the statement is cancelled",
            || async { busy_backends(&f, n).is_empty() },
        )
        .await;
        // The pool's only connection (or its replacement) serves at once.
        let c = f.client().await;
        c.batch_execute(&format!(
            "SELECT * FROM payments WHERE merchant_id = {}",
            f.merchant_on(n)
        ))
        .await
        .unwrap();
        assert!(gone.elapsed() < Duration::from_secs(8));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_reaches_only_the_backend_serving_its_client_now() {
    let f = fleet("pool_size = 1").await;
    // A used shard 0's only backend and gave it back.
    let a = f.client().await;
    a.batch_execute("SELECT pg_sleep(0.1)").await.unwrap();
    let token = a.cancel_token();
    // B runs on that same backend now; A's cancel must not touch it.
    let b = f.client().await;
    let started = Instant::now();
    let (slept, ()) = tokio::join!(b.simple_query("SELECT pg_sleep(1.5)"), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    });
    slept.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(1500));
    // B's own cancel does reach it.
    let token = b.cancel_token();
    let (cancelled, ()) = tokio::join!(b.simple_query("SELECT pg_sleep(30)"), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    });
    assert_eq!(super::code(&cancelled.unwrap_err()), "57014");
}
