//! Each limit answers with PostgreSQL's SQLSTATE and a message naming it,
//! and costs the other clients nothing.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::NoTls;

use super::wire::{self, frame, Wire};
use super::{code, fleet, message, Fleet};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_pool_answers_53300_within_pool_timeout_then_recovers() {
    let f = fleet("pool_size = 1\npool_timeout = \"300ms\"").await;
    let (m0, m1) = (f.merchant_on(0), f.merchant_on(1));
    let holder = f.client().await;
    holder
        .batch_execute(&format!(
            "BEGIN; INSERT INTO payments (id, merchant_id) VALUES (1, {m0})"
        ))
        .await
        .unwrap();
    let waiter = f.client().await;
    let started = Instant::now();
    let e = waiter
        .batch_execute(&format!("SELECT * FROM payments WHERE merchant_id = {m0}"))
        .await
        .unwrap_err();
    let waited = started.elapsed();
    assert_eq!(code(&e), "53300", "{e:?}");
    let message = e.as_db_error().unwrap().message().to_string();
    assert!(
        message.contains("pool_timeout") && message.contains("shard 0 of transactions"),
        "{message}"
    );
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    // The other shard's pool serves meanwhile, and the holder is listed.
    waiter
        .batch_execute(&format!("SELECT * FROM payments WHERE merchant_id = {m1}"))
        .await
        .unwrap();
    let clients = f.show("clients").await;
    assert!(
        clients.iter().any(|r| r[3].as_deref() == Some("idle in transaction")
            && r[4].as_deref() == Some("1")),
        "{clients:?}"
    );
    holder.batch_execute("COMMIT").await.unwrap();
    let n = waiter
        .query_one(
            "SELECT count(*) FROM payments WHERE merchant_id = $1",
            &[&m0],
        )
        .await
        .unwrap();
    assert_eq!(n.get::<_, i64>(0), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_client_conn_a_client_is_refused_with_53300() {
    let f = fleet("max_client_conn = 3").await;
    let mut kept = Vec::new();
    for _ in 0..3 {
        kept.push(f.client().await);
    }
    let e = tokio_postgres::connect(&f.conn_string(), NoTls)
        .await
        .map(drop)
        .unwrap_err();
    assert_eq!(code(&e), "53300", "{e:?}");
    assert!(message(&e).contains("max_client_conn (3)"), "{e:?}");
    kept.pop();
    // The seat is given back when the client leaves.
    Fleet::eventually(Duration::from_secs(5), "a seat comes free", || async {
        tokio_postgres::connect(&f.conn_string(), NoTls)
            .await
            .is_ok()
    })
    .await;
    kept[0].batch_execute("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sockets_that_never_log_in_do_not_stop_a_real_login() {
    shardline_router::raise_fd_limit();
    let f = fleet("login_timeout = \"3s\"").await;
    let mut idle = Vec::new();
    for i in 0..1000 {
        let mut s = TcpStream::connect(("127.0.0.1", f.port)).await.unwrap();
        match i % 4 {
            // Half a startup packet.
            0 => s.write_all(&[0, 0, 0, 40, 0, 3]).await.unwrap(),
            // A whole one, then silence during SCRAM.
            1 => {
                let mut out = bytes::BytesMut::new();
                postgres_protocol::message::frontend::startup_message(
                    [("user", "app"), ("database", "x")],
                    &mut out,
                )
                .unwrap();
                s.write_all(&out).await.unwrap();
            }
            // Nothing at all.
            _ => {}
        }
        idle.push(s);
    }
    let started = Instant::now();
    let c = f.client().await;
    c.batch_execute("SELECT 1").await.unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "login took {took:?}");
    let listed = f.show("clients").await;
    assert!(listed.len() > 1000, "{}", listed.len());
    assert!(
        listed
            .iter()
            .filter(|r| r[3].as_deref() == Some("login"))
            .count()
            >= 1000
    );
    // login_timeout closes them; some are told why.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut told = 0;
    for s in idle.iter_mut() {
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
        assert!(read.is_ok(), "a socket still open after login_timeout");
        if String::from_utf8_lossy(&got).contains("login_timeout") {
            told += 1;
        }
    }
    assert!(told >= 500, "{told}");
    Fleet::eventually(Duration::from_secs(5), "the sockets are gone", || async {
        f.show("clients").await.len() <= 2
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_limits_end_sessions_with_postgresql_s_sqlstates() {
    let f = fleet(
        "pool_size = 1\nidle_in_transaction_timeout = \"300ms\"\nidle_client_timeout = \"1500ms\"",
    )
    .await;
    let m0 = f.merchant_on(0);
    let (c, connection) = f.connect().await;
    c.batch_execute(&format!(
        "BEGIN; INSERT INTO payments (id, merchant_id) VALUES (1, {m0})"
    ))
    .await
    .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), connection)
        .await
        .expect("the router ends the session")
        .unwrap();
    let e = ended.unwrap_err();
    assert_eq!(code(&e), "25P03", "{e:?}");
    assert!(message(&e).contains("idle_in_transaction_timeout"), "{e:?}");
    // Rolled back, and the pool's one backend serves the next client.
    let next = f.client().await;
    let n = next
        .query_one(
            "SELECT count(*) FROM payments WHERE merchant_id = $1",
            &[&m0],
        )
        .await
        .unwrap();
    assert_eq!(n.get::<_, i64>(0), 0);
    // An idle client outside a transaction goes after idle_client_timeout.
    let (idle, connection) = f.connect().await;
    idle.batch_execute("SELECT 1").await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), connection)
        .await
        .expect("the router ends the idle session")
        .unwrap();
    assert_eq!(code(&ended.unwrap_err()), "57P05");
}

/// Resident memory of this process (the router runs in it), in bytes.
fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1gib_length_header_is_refused_without_allocating_it() {
    let f = fleet("max_message_bytes = \"1MB\"\nmax_client_buffer_bytes = \"2MB\"").await;
    let before = rss();
    let header = |tag: u8| {
        let mut h = vec![tag];
        h.extend_from_slice(&(1i32 << 30).to_be_bytes());
        h.extend_from_slice(&[b'x'; 100]);
        h
    };
    // In the password phase: PostgreSQL's cap on authentication messages.
    let mut w = Wire::startup(f.port).await;
    assert_eq!(w.recv().await.unwrap().0, b'R');
    w.send(&header(b'p')).await;
    let started = Instant::now();
    let (tag, body) = w.recv().await.expect("an error before the close");
    assert_eq!((tag, wire::sqlstate(&body)), (b'E', "08P01".to_string()));
    assert!(w.recv().await.is_none(), "the connection is closed");
    // After login: max_message_bytes.
    let mut w = Wire::login(f.port).await;
    w.send(&header(b'Q')).await;
    let (tag, body) = w.recv().await.expect("an error before the close");
    assert_eq!((tag, wire::sqlstate(&body)), (b'E', "08P01".to_string()));
    assert_eq!(wire::field(&body, b'S'), "FATAL");
    assert!(wire::field(&body, b'M').contains("max_message_bytes"));
    assert!(w.recv().await.is_none(), "the connection is closed");
    assert!(started.elapsed() < Duration::from_secs(2));
    let grown = rss().saturating_sub(before);
    assert!(grown < 64 << 20, "RSS grew by {grown} bytes");

    // A real message past max_message_bytes is refused alike.
    let mut w = Wire::login(f.port).await;
    let mut q = b"SELECT '".to_vec();
    q.extend(std::iter::repeat_n(b'a', 2 << 20));
    q.extend_from_slice(b"'\0");
    let _ = w.stream.write_all(&frame(b'Q', &q)).await;
    let (tag, body) = w.recv().await.expect("an error before the close");
    assert_eq!((tag, wire::sqlstate(&body)), (b'E', "08P01".to_string()));

    // Messages piling up before Sync past max_client_buffer_bytes: the
    // batch is refused (54000), the session goes on.
    let mut w = Wire::login(f.port).await;
    let sql = format!("SELECT '{}'", "b".repeat(500_000));
    for _ in 0..6 {
        let mut p = vec![0u8];
        p.extend_from_slice(sql.as_bytes());
        p.extend_from_slice(&[0, 0, 0]);
        w.send(&frame(b'P', &p)).await;
    }
    w.send(&frame(b'S', &[])).await;
    let answer = w.until(b'Z').await;
    let error = answer.iter().find(|m| m.0 == b'E').expect("an error");
    assert_eq!(wire::sqlstate(&error.1), "54000");
    assert!(wire::field(&error.1, b'M').contains("max_client_buffer_bytes"));
    w.send(&frame(b'Q', b"SELECT 1\0")).await;
    let answer = w.until(b'Z').await;
    assert!(answer.iter().any(|m| m.0 == b'D'), "{answer:?}");

    // Nobody else noticed.
    f.client().await.batch_execute("SELECT 1").await.unwrap();
}
