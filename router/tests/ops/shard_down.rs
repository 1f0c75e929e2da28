//! A shard whose server stops fails only its merchants' statements, with a
//! connection-class SQLSTATE and a message naming the shard; when the
//! server is back, the router reconnects by itself.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{code, split, SHARD_PASSWORD};

const UP: u8 = 0;
const STOPPING: u8 = 1;
const DOWN: u8 = 2;
const RESTARTING: u8 = 3;
const BACK: u8 = 4;
const DONE: u8 = 5;

/// One statement a client ran: the phase when it started and ended, its
/// merchant, and its error (SQLSTATE, message), if any.
type Outcome = (u8, u8, i64, Option<(String, String)>);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_shard_fails_only_its_merchants_and_recovers_when_it_returns() {
    let mut f = split().await;
    let merchants: Vec<i64> = (1..=40).collect();
    assert!(
        merchants.iter().any(|m| f.shard(*m) == 0) && merchants.iter().any(|m| f.shard(*m) == 1)
    );
    let phase = Arc::new(AtomicU8::new(UP));
    let mut clients = Vec::new();
    for n in 0..4i64 {
        let c = f.client().await;
        let phase = phase.clone();
        let merchants = merchants.clone();
        clients.push(tokio::spawn(async move {
            let extended = n % 2 == 0;
            let insert = c
                .prepare("INSERT INTO payments (id, merchant_id, amount) VALUES ($1, $2, 1)")
                .await
                .unwrap();
            let mut outcomes: Vec<Outcome> = Vec::new();
            let mut id = n * 1_000_000;
            for i in (n as usize).. {
                let started = phase.load(Ordering::SeqCst);
                if started == DONE {
                    break;
                }
                let m = merchants[i % merchants.len()];
                id += 1;
                let result = if extended {
                    c.execute(&insert, &[&id, &m]).await.map(drop)
                } else {
                    c.simple_query(&format!(
                        "SELECT count(*) FROM payments WHERE merchant_id = {m}"
                    ))
                    .await
                    .map(drop)
                };
                let error = result.err().map(|e| {
                    let message = e.as_db_error().map(|d| d.message().to_string());
                    (code(&e), message.unwrap_or_else(|| e.to_string()))
                });
                outcomes.push((started, phase.load(Ordering::SeqCst), m, error));
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            outcomes
        }));
    }
    let pause = || tokio::time::sleep(Duration::from_millis(1500));
    pause().await;
    phase.store(STOPPING, Ordering::SeqCst);
    tokio::task::block_in_place(|| f.servers[1].stop()).unwrap();
    phase.store(DOWN, Ordering::SeqCst);
    pause().await;
    phase.store(RESTARTING, Ordering::SeqCst);
    tokio::task::block_in_place(|| f.servers[1].restart()).unwrap();
    phase.store(BACK, Ordering::SeqCst);
    pause().await;
    phase.store(DONE, Ordering::SeqCst);

    let mut all: Vec<Vec<Outcome>> = Vec::new();
    for c in clients {
        all.push(c.await.unwrap());
    }
    for (n, outcomes) in all.iter().enumerate() {
        let settled = |p: u8| outcomes.iter().filter(move |o| o.0 == p && o.1 == p);
        for (_, _, m, error) in outcomes {
            if let Some((code, message)) = error {
                assert_eq!(
                    f.shard(*m),
                    1,
                    "merchant {m} on shard 0 failed: {code} {message}"
                );
                assert!(code.starts_with("08"), "client {n}: {code} {message}");
                assert!(message.contains("shard 1 of transactions"), "{message}");
                assert!(!message.contains(SHARD_PASSWORD), "{message}");
            }
        }
        for p in [UP, BACK] {
            let failed: Vec<_> = settled(p).filter(|o| o.3.is_some()).collect();
            assert!(failed.is_empty(), "client {n} in phase {p}: {failed:?}");
        }
        let down: Vec<_> = settled(DOWN).collect();
        let f = &f;
        let on = |s: usize| down.iter().filter(move |o| f.shard(o.2) == s);
        assert!(
            on(0).count() >= 5 && on(0).all(|o| o.3.is_none()),
            "client {n}: {down:?}"
        );
        assert!(
            on(1).count() >= 5 && on(1).all(|o| o.3.is_some()),
            "client {n}: {down:?}"
        );
        let back_on_1 = settled(BACK).filter(|o| f.shard(o.2) == 1).count();
        assert!(
            back_on_1 >= 5,
            "client {n} ran {back_on_1} statements on shard 1 after the restart"
        );
    }
    // Every insert the router reported done is on shard 1 (the simple
    // clients only read).
    let inserted = all
        .iter()
        .step_by(2)
        .flatten()
        .filter(|o| f.shard(o.2) == 1 && o.3.is_none())
        .count() as i64;
    let rows: i64 = f.servers[1]
        .psql("tx", "SELECT count(*) FROM payments")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        rows >= inserted && inserted > 0,
        "{rows} rows, {inserted} inserts"
    );
}

/// Regression: a connection the server closed while it sat in the pool, or
/// held by an idle client, used to fail one statement after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_idle_across_a_restart_are_replaced_without_an_error() {
    let mut f = split().await;
    let on_1 = (1..).find(|m| f.shard(*m) == 1).unwrap();
    let count = format!("SELECT count(*) FROM payments WHERE merchant_id = {on_1}");
    let idle = f.client().await;
    idle.simple_query(&count).await.unwrap();
    for _ in 0..3 {
        // Each leaves its shard 1 connection in the pool.
        f.client().await.simple_query(&count).await.unwrap();
    }
    tokio::task::block_in_place(|| f.servers[1].stop()).unwrap();
    let e = idle.simple_query(&count).await.unwrap_err();
    assert_eq!(code(&e), "08001", "{e}");
    tokio::task::block_in_place(|| f.servers[1].restart()).unwrap();
    idle.simple_query(&count).await.unwrap();

    let fresh = f.client().await;
    tokio::task::block_in_place(|| {
        f.servers[1].stop().unwrap();
        f.servers[1].restart().unwrap();
    });
    fresh.simple_query(&count).await.unwrap();
    idle.simple_query(&count).await.unwrap();
}
