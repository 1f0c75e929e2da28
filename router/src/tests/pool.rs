//! Pooled backends against a real server: one a session task abandons
//! mid-statement (here by panicking) is cancelled at once and never
//! handed out again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use shardline_testkit::PgServer;
use shardline_topology::ConnString;

use crate::backend::{Lease, Manager, Pool};
use crate::message;
use crate::stats::DbStats;

fn running_sleeps(server: &PgServer) -> String {
    server
        .psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)' AND state = 'active'",
        )
        .unwrap()
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_dropped_by_a_panicking_task_is_cancelled_and_not_pooled() {
    let server = PgServer::start().unwrap();
    let conn = ConnString::parse(&server.url("postgres")).unwrap();
    let stats = Arc::new(DbStats::new("c", None, conn.to_string()));
    let pool = Pool::builder(Manager::new(conn, stats, Duration::from_secs(10)))
        .max_size(1)
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .unwrap();
    let first_pid = {
        let b = pool.get().await.unwrap();
        b.cancel_key.unwrap().0
    };
    let p = pool.clone();
    let task = tokio::spawn(async move {
        let mut b = Lease::new(p.get().await.unwrap());
        let mut q = BytesMut::new();
        message::query(&mut q, "SELECT pg_sleep(60)");
        b.send(&q).await.unwrap();
        // Long enough for the server to start it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        panic!("a session task fails mid-statement");
    });
    assert!(task.await.unwrap_err().is_panic());
    let started = Instant::now();
    while running_sleeps(&server) != "0" {
        assert!(started.elapsed() < Duration::from_secs(10), "still running");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The pool's one slot is free, and what it hands out is a new, clean
    // connection.
    let mut b = tokio::time::timeout(Duration::from_secs(10), pool.get())
        .await
        .unwrap()
        .unwrap();
    assert_ne!(b.cancel_key.unwrap().0, first_pid);
    assert!(!b.is_running());
    assert_eq!(b.run("SELECT 1").await.unwrap(), None);
}
