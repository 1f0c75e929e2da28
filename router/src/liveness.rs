//! Whether a database still answers, for backend connections that wait
//! long for a reply.
//!
//! A statement can legitimately run for minutes without sending a byte,
//! and a network partition (or a proxy that stops forwarding) looks the
//! same from the socket: no data, no error. TCP keepalive catches a peer
//! whose host is gone, but not a middlebox that keeps the connection
//! open. So a read that waits past `backend_read_timeout` asks this
//! module: it opens a new connection to the same database, and if that
//! logs in (or is refused: the server answered) within the same bound, the
//! statement goes on waiting; if not, the statement fails (08006). One
//! probe per database at a time: waiters share its verdict for the rest of
//! the bound.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::os::fd::{AsRawFd, BorrowedFd};

use shardline_topology::{ConnString, DbStream};
use tokio::sync::Mutex;

use crate::backend::{Backend, BackendError};
use crate::stats::DbStats;

/// Keepalive on backend sockets when the connection string does not set
/// its own: a peer that vanished (host down, NAT entry dropped) is noticed
/// in about a minute, not after libpq's default of two hours idle.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_PROBES: u32 = 3;

/// libpq's (and tokio-postgres's) `keepalives_idle` when none is given.
const LIBPQ_KEEPALIVES_IDLE: Duration = Duration::from_secs(2 * 3600);

/// Tightens TCP keepalive on a backend socket, unless its connection
/// string turned keepalives off or chose its own idle time. Failures (a
/// Unix socket) only cost the early warning, so they are ignored.
pub fn keepalive(stream: &DbStream, conn: &ConnString) {
    let config = conn.config();
    if !config.get_keepalives() || config.get_keepalives_idle() != LIBPQ_KEEPALIVES_IDLE {
        return;
    }
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    // SAFETY: the descriptor belongs to `stream`, open for this borrow.
    let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    socket2::SockRef::from(&fd)
        .set_tcp_keepalive(&keepalive)
        .ok();
}

/// One database's liveness check.
pub struct Liveness {
    conn: ConnString,
    stats: Arc<DbStats>,
    /// `backend_read_timeout`: how long a read waits before asking, and
    /// how long the probe may take.
    pub wait: Duration,
    /// When a probe last got an answer.
    answered: Mutex<Option<Instant>>,
}

impl Liveness {
    pub fn new(conn: ConnString, stats: Arc<DbStats>, wait: Duration) -> Self {
        Self {
            conn,
            stats,
            wait,
            answered: Mutex::new(None),
        }
    }

    /// Whether the database answered a new connection within `wait`,
    /// now or less than `wait` ago. (A boxed future: a backend's read
    /// awaits it, and the probe is a backend.)
    pub fn answers(&self) -> Pin<Box<dyn Future<Output = bool> + Send + '_>> {
        Box::pin(self.probe())
    }

    async fn probe(&self) -> bool {
        let mut answered = self.answered.lock().await;
        if answered.is_some_and(|t| t.elapsed() < self.wait) {
            return true;
        }
        let probe = Backend::connect(&self.conn, self.stats.clone());
        let alive = match tokio::time::timeout(self.wait, probe).await {
            Ok(Ok(_)) | Ok(Err(BackendError::Refused { .. })) => true,
            Ok(Err(e)) => {
                tracing::warn!(database = %self.conn, error = %e, "a backend stopped answering and the database does not take a new connection");
                false
            }
            Err(_) => {
                tracing::warn!(database = %self.conn, wait_ms = self.wait.as_millis() as u64, "a backend stopped answering and a new connection got no answer either");
                false
            }
        };
        *answered = alive.then(Instant::now);
        if !alive {
            self.stats.down("no answer within backend_read_timeout");
        }
        alive
    }
}
