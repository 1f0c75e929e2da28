//! Prometheus metrics over HTTP for shardline's long-running commands.
//!
//! Each command keeps its own counters and renders them in the text
//! exposition format; [`serve`] answers every HTTP request on an address
//! with the text its `render` function returns at that moment, until told
//! to stop. Any path answers the same, as a scrape needs only one. This is
//! a few dozen lines of HTTP/1.1, not a web framework: requests are read to
//! the end of their head and answered once, then the connection closes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// Renders the current metrics in the Prometheus text format.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// The largest request head read; a scrape's is a few hundred bytes.
const MAX_REQUEST_HEAD: usize = 4096;

/// How long a client may take to send its request head: a connection that
/// sends nothing must not hold a task and a socket forever.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 64;

/// The pause after a failed accept (out of file descriptors, say) before
/// the next one, instead of a busy loop on the same error.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Binds `addr` now (so a taken port fails the command before it starts
/// its work), then answers each connection with `render()` until `stop`
/// turns true.
pub async fn serve(
    addr: SocketAddr,
    render: Render,
    stop: watch::Receiver<bool>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    serve_with(addr, render, stop, READ_TIMEOUT).await
}

/// [`serve`] with another request read timeout.
pub async fn serve_with(
    addr: SocketAddr,
    render: Render,
    mut stop: watch::Receiver<bool>,
    read_timeout: Duration,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    Ok(tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() { return; }
                    continue;
                }
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() { return; }
                }
                accepted = listener.accept() => {
                    let mut socket = match accepted {
                        Ok((socket, _)) => socket,
                        Err(e) => {
                            tracing::warn!(%addr, error = %e, "metrics endpoint cannot accept a connection");
                            tokio::time::sleep(ACCEPT_BACKOFF).await;
                            continue;
                        }
                    };
                    let render = render.clone();
                    tokio::spawn(async move {
                        let _permit = permit;
                        let mut buf = vec![0u8; MAX_REQUEST_HEAD];
                        let mut read = 0;
                        let head = async {
                            while read < buf.len() {
                                match socket.read(&mut buf[read..]).await {
                                    Ok(0) | Err(_) => return false,
                                    Ok(n) => read += n,
                                }
                                if buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                                    return true;
                                }
                            }
                            true
                        };
                        if !matches!(tokio::time::timeout(read_timeout, head).await, Ok(true)) {
                            return;
                        }
                        let body = render();
                        let response = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = socket.write_all(response.as_bytes()).await;
                        let _ = socket.shutdown().await;
                    });
                }
            }
        }
    }))
}

/// Escapes a label value: backslash, double quote and newline.
pub fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpStream;

    #[tokio::test]
    async fn answers_a_get_with_the_rendered_text_and_stops_when_told() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let (tx, rx) = watch::channel(false);
        let task = serve(addr, Arc::new(|| "up 1\n".to_string()), rx)
            .await
            .unwrap();
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\nup 1\n"), "{answer}");
        tx.send(true).unwrap();
        task.await.unwrap();
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[tokio::test]
    async fn a_client_that_sends_nothing_is_closed_after_the_read_timeout() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let (_tx, rx) = watch::channel(false);
        serve_with(
            addr,
            Arc::new(|| "up 1\n".to_string()),
            rx,
            Duration::from_millis(200),
        )
        .await
        .unwrap();
        // Silent clients, more than the connections served at once.
        let mut silent = Vec::new();
        for _ in 0..MAX_CONNECTIONS + 4 {
            silent.push(TcpStream::connect(addr).await.unwrap());
        }
        let mut closed = silent.pop().unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(10), closed.read(&mut buf))
            .await
            .expect("the server closes a silent connection")
            .unwrap_or(0);
        assert_eq!(n, 0, "closed without an answer");
        // Once the silent ones are gone, a scrape is answered.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut answer))
            .await
            .expect("answered")
            .unwrap();
        assert!(answer.ends_with("up 1\n"), "{answer}");
    }
}
