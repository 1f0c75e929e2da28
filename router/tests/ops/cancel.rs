//! Cancel requests through the router reach the backend running the
//! client's statement; a wrong key cancels nothing.

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_postgres::NoTls;

use super::{code, split};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_request_stops_the_client_s_statement_on_its_shard() {
    let f = split().await;
    let b = (1..).find(|m| f.shard(*m) == 1).unwrap();
    let c = f.client().await;
    for sql in [
        // On the session's first database, through the simple protocol.
        "SELECT pg_sleep(30)".to_string(),
        // On shard 1 (another server), through the extended protocol.
        format!("SELECT pg_sleep(30)::text, count(*) FROM payments WHERE merchant_id = {b}"),
    ] {
        let token = c.cancel_token();
        let started = Instant::now();
        let canceller = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            token.cancel_query(NoTls).await.unwrap();
        });
        let e = if sql.contains("count") {
            c.query(sql.as_str(), &[]).await.map(drop).unwrap_err()
        } else {
            c.simple_query(&sql).await.map(drop).unwrap_err()
        };
        assert_eq!(code(&e), "57014", "{sql}: {e}");
        assert!(started.elapsed() < Duration::from_secs(10), "{sql}");
        canceller.await.unwrap();
        // The connection goes on.
        c.simple_query("SELECT 1").await.unwrap();
    }

    // A key the router never gave out cancels nothing.
    let started = Instant::now();
    let wrong = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut s = TcpStream::connect(("127.0.0.1", f.port)).await.unwrap();
        let mut req = Vec::new();
        for v in [16i32, 80_877_102, 12345, 67890] {
            req.extend_from_slice(&v.to_be_bytes());
        }
        s.write_all(&req).await.unwrap();
    };
    let (slept, ()) = tokio::join!(c.simple_query("SELECT pg_sleep(1.5)"), wrong);
    slept.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(1500));
}
