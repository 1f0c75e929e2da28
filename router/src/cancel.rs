//! Cancel requests. Each client gets its own BackendKeyData from the
//! router (a process id and secret of the router's making); the router
//! remembers which backend connections that client holds, with each
//! backend's own key. A CancelRequest carrying the client's key is
//! forwarded to every one of them, each with the backend's key, so
//! whatever the client is running now is cancelled wherever it runs. A
//! backend that is idle ignores a cancel, as PostgreSQL does for its own
//! clients; a wrong key cancels nothing and is not answered.
//!
//! Under transaction pooling a backend serves another client once its
//! client lets go of it. A cancel picked up for it just before that must
//! not reach the next client's statement: each forward is counted on the
//! backend ([`BackendKey::cancelling`]) from the moment it is picked up,
//! under the same lock a session takes to let go, and a session waits for
//! that count to fall to zero before the backend goes back to its pool.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use shardline_topology::transport::{self, Attempt};
use shardline_topology::ConnString;
use tokio::io::AsyncWriteExt;

use crate::message::CANCEL_REQUEST;

/// How long forwarding a cancel to one backend may take.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// How a cancel reaches a backend's server: the way its connection was
/// opened, over TLS where it used TLS (the backend's key never crosses the
/// network in clear) and through its Unix socket where it used one.
#[derive(Debug)]
pub struct CancelRoute {
    pub conn: ConnString,
    pub attempt: Attempt,
}

/// A backend connection's way to its server and BackendKeyData.
#[derive(Clone, Debug)]
pub struct BackendKey {
    pub route: Arc<CancelRoute>,
    pub pid: i32,
    pub secret: i32,
    /// On from a message sent until its ReadyForQuery: only a backend
    /// running something is cancelled. An idle one a session merely holds
    /// could take the signal late, into the client's next statement.
    pub running: Arc<AtomicBool>,
    /// Cancels of this backend picked up and not yet delivered.
    pub cancelling: Arc<AtomicUsize>,
}

/// A cancel picked up for a backend, counted on it until dropped.
pub struct Forwarding(pub BackendKey);

impl Drop for Forwarding {
    fn drop(&mut self) {
        self.0.cancelling.fetch_sub(1, Ordering::AcqRel);
    }
}

impl PartialEq for BackendKey {
    fn eq(&self, other: &Self) -> bool {
        (self.pid, self.secret) == (other.pid, other.secret)
            && (Arc::ptr_eq(&self.route, &other.route)
                || self.route.conn.to_string() == other.route.conn.to_string())
    }
}

type Held = Arc<Mutex<HashMap<(usize, usize), BackendKey>>>;

/// Every connected client's key and the backends it holds.
#[derive(Debug, Default)]
pub struct Registry {
    clients: Mutex<HashMap<i32, (i32, Held)>>,
}

/// A client's entry in the [`Registry`], removed when dropped.
#[derive(Debug)]
pub struct Registration {
    registry: Arc<Registry>,
    pub pid: i32,
    pub secret: i32,
    held: Held,
}

impl Registry {
    /// A new client: a process id no other connected client has, and a
    /// random secret.
    pub fn register(self: &Arc<Self>) -> Registration {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let pid = loop {
            // Positive, as a PostgreSQL process id would be.
            let pid = rand::random::<i32>() & i32::MAX;
            if pid != 0 && !clients.contains_key(&pid) {
                break pid;
            }
        };
        let secret = rand::random::<i32>();
        let held = Held::default();
        clients.insert(pid, (secret, held.clone()));
        Registration {
            registry: self.clone(),
            pid,
            secret,
            held,
        }
    }

    /// The backends to cancel for a client key; none for a wrong one.
    /// Each is counted as being cancelled until its [`Forwarding`] drops.
    pub fn backends(&self, pid: i32, secret: i32) -> Vec<Forwarding> {
        let clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        match clients.get(&pid) {
            Some((s, held)) => {
                if *s != secret {
                    return Vec::new();
                }
                let held = held.lock().unwrap_or_else(|e| e.into_inner());
                held.values()
                    .filter(|k| k.running.load(Ordering::Relaxed))
                    .map(|k| {
                        k.cancelling.fetch_add(1, Ordering::AcqRel);
                        Forwarding(k.clone())
                    })
                    .collect()
            }
            _ => Vec::new(),
        }
    }

    /// Handles the body of a CancelRequest (process id, secret): forwards
    /// it to the client's backends. Never answers; errors are only logged.
    pub async fn cancel_request(&self, body: &[u8]) {
        let (Some(pid), Some(secret)) = (body.get(..4), body.get(4..8)) else {
            return;
        };
        let pid = i32::from_be_bytes(pid.try_into().unwrap_or_default());
        let secret = i32::from_be_bytes(secret.try_into().unwrap_or_default());
        let backends = self.backends(pid, secret);
        if backends.is_empty() {
            tracing::debug!(pid, "cancel request with an unknown key ignored");
        }
        for Forwarding(b) in &backends {
            if let Err(e) = forward(b).await {
                tracing::warn!(target = %b.route.conn, error = %e, "forwarding a cancel request failed");
            }
        }
    }
}

/// Sends a CancelRequest for one backend and waits until the server has
/// handled it (it closes the connection after signalling the backend).
pub(crate) async fn forward(b: &BackendKey) -> std::io::Result<()> {
    let mut out = BytesMut::with_capacity(16);
    out.put_i32(16);
    out.put_i32(CANCEL_REQUEST);
    out.put_i32(b.pid);
    out.put_i32(b.secret);
    let send = async {
        let mut s = transport::open(&b.route.conn, b.route.attempt)
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        s.write_all(&out).await?;
        s.flush().await?;
        let mut end = [0u8; 1];
        // EOF (or a reset): the server is done with the request.
        let _ = tokio::io::AsyncReadExt::read(&mut s, &mut end).await;
        Ok(())
    };
    tokio::time::timeout(CANCEL_TIMEOUT, send)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))?
}

impl Registration {
    /// The client now holds a backend for database `db`.
    pub fn hold(&self, db: (usize, usize), key: Option<BackendKey>) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        match key {
            Some(k) => held.insert(db, k),
            None => held.remove(&db),
        };
    }

    /// The client let go of its backend for `db`; returns how many cancels
    /// of it were picked up before and are still being delivered.
    pub fn release(&self, db: (usize, usize)) -> usize {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.remove(&db)
            .map(|k| k.cancelling.load(Ordering::Acquire))
            .unwrap_or(0)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut clients = self
            .registry
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        clients.remove(&self.pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_client_s_own_key_reaches_its_backends() {
        let registry = Arc::new(Registry::default());
        let a = registry.register();
        let b = registry.register();
        assert_ne!(a.pid, b.pid);
        let key = BackendKey {
            route: Arc::new(CancelRoute {
                conn: ConnString::parse("postgres://u@127.0.0.1:5432/db").unwrap(),
                attempt: Attempt::Plain,
            }),
            pid: 4242,
            secret: 7,
            running: Arc::new(AtomicBool::new(false)),
            cancelling: Arc::default(),
        };
        a.hold((0, 1), Some(key.clone()));
        assert!(
            registry.backends(a.pid, a.secret).is_empty(),
            "an idle backend is not cancelled"
        );
        key.running.store(true, Ordering::Relaxed);
        let picked = registry.backends(a.pid, a.secret);
        assert_eq!(picked.iter().map(|f| &f.0).collect::<Vec<_>>(), vec![&key]);
        // Picked up and not delivered: letting go reports it.
        assert_eq!(key.cancelling.load(Ordering::Relaxed), 1);
        drop(picked);
        assert_eq!(key.cancelling.load(Ordering::Relaxed), 0);
        assert!(registry
            .backends(a.pid, a.secret.wrapping_add(1))
            .is_empty());
        assert!(registry.backends(b.pid, b.secret).is_empty());
        let _held = registry.backends(a.pid, a.secret);
        assert_eq!(a.release((0, 1)), 1);
        assert!(registry.backends(a.pid, a.secret).is_empty());
        let (pid, secret) = (b.pid, b.secret);
        drop(b);
        assert!(registry.backends(pid, secret).is_empty());
    }
}
