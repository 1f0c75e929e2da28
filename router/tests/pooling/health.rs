//! A shard behind a connection that stops answering fails its own
//! statements within `backend_read_timeout`; a slow statement does not,
//! and the other shard serves throughout.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{code, fleet_with, message};

/// A TCP proxy to `port` that, once `silent` is set, stops passing bytes
/// either way while keeping every connection open: a partition that
/// neither TCP nor keepalive (answered by the proxy's kernel) notices.
fn silent_proxy(port: u16, silent: Arc<AtomicBool>) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let local = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let listener = TcpListener::from_std(listener).unwrap();
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(("127.0.0.1", port)).await else {
                continue;
            };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            for (mut from, mut to) in [(cr, sw), (sr, cw)] {
                let silent = silent.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        while silent.load(Ordering::Relaxed) {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        let n = match from.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        // Bytes read as the partition began are lost in it.
                        if silent.load(Ordering::Relaxed) {
                            continue;
                        }
                        if to.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
    });
    local
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_shard_fails_within_the_bound_while_the_other_serves() {
    let silent = Arc::new(AtomicBool::new(false));
    let f = fleet_with(
        "backend_read_timeout = \"1s\"\npool_timeout = \"10s\"",
        |s| {
            let proxy = silent_proxy(s.port(), silent.clone());
            s.url("tx1")
                .replace(&format!(":{}/", s.port()), &format!(":{proxy}/"))
        },
    )
    .await;
    let (m0, m1) = (f.merchant_on(0), f.merchant_on(1));
    let c = f.client().await;
    let through = format!("SELECT count(*) FROM payments WHERE merchant_id = {m1}");
    c.batch_execute(&through).await.unwrap();

    // A statement slower than the bound on a shard that answers goes on.
    let started = Instant::now();
    c.batch_execute(&format!(
        "SELECT pg_sleep(2.5)::text, count(*) FROM payments WHERE merchant_id = {m1}"
    ))
    .await
    .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(2500));

    // Silence: shard 1's statement fails within the bound and its probe.
    silent.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let other = f.client().await;
    let (lost, served) = tokio::join!(c.batch_execute(&through), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t = Instant::now();
        other
            .batch_execute(&format!(
                "SELECT count(*) FROM payments WHERE merchant_id = {m0}"
            ))
            .await
            .unwrap();
        t.elapsed()
    });
    let took = started.elapsed();
    let e = lost.unwrap_err();
    assert_eq!(code(&e), "08006", "{e:?}");
    assert!(message(&e).contains("backend_read_timeout"), "{e:?}");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(8),
        "{took:?}"
    );
    assert!(served < Duration::from_secs(1), "shard 0 waited {served:?}");
    // The client's connection goes on; shard 0 still serves it.
    c.batch_execute(&format!(
        "SELECT count(*) FROM payments WHERE merchant_id = {m0}"
    ))
    .await
    .unwrap();
    let shards = f.show("shards").await;
    assert_eq!(shards[1][4].as_deref(), Some("down"), "{shards:?}");

    // Back: shard 1 serves again without a restart.
    silent.store(false, Ordering::Relaxed);
    super::Fleet::eventually(Duration::from_secs(20), "shard 1 serves again", || async {
        c.batch_execute(&through).await.is_ok()
    })
    .await;
}
