//! The listening side: accepts clients and gives each a session over the
//! shared router, pools and users. A client past `max_client_conn` is
//! told so (53300) by a short task of its own; the accept loop itself
//! never waits on a client.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use shardline_topology::{ConnString, PoolMode, RouterLimits, Topology};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::backend::{Manager, Pool};
use crate::clients::Clients;
use crate::message as msg;
use crate::scram::Verifier;
use crate::session::Session;
use crate::stats::{DbStats, PoolState, Stats};
use crate::tls::Tls;
use crate::Router;

/// Connections per database pool when the topology does not say.
pub use shardline_topology::topology::DEFAULT_POOL_SIZE;

/// How long a client refused for `max_client_conn` may take to send its
/// startup packet and read the refusal.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);

/// Refusals being written at once; past this a client over the limit is
/// closed without a word, so a flood costs no more than this many tasks.
const MAX_REFUSALS: usize = 256;

/// What every session shares.
pub(crate) struct Shared {
    pub router: Router,
    /// One pool per database: `[context][shard]` (unsharded contexts: `[0]`).
    pub pools: Vec<Vec<Pool>>,
    pub users: HashMap<String, Verifier>,
    /// Counters per database, laid out as `pools`.
    pub stats: Stats,
    /// Clients' cancel keys and the backends they hold.
    pub cancels: Arc<crate::cancel::Registry>,
    /// The cutover state, when the topology enables cutover; the monolith
    /// then has the last pool, after every context's.
    pub cohorts: Option<Arc<crate::Cohorts>>,
    /// TLS for clients, when `[router]` sets it up.
    pub tls: Option<crate::tls::Tls>,
    pub mode: PoolMode,
    pub limits: RouterLimits,
    /// Every client socket, for `max_client_conn` and `SHOW shardline.clients`.
    pub clients: Arc<Clients>,
    /// Refusals being written (see [`MAX_REFUSALS`]).
    refusals: Arc<tokio::sync::Semaphore>,
}

impl Shared {
    /// Each pool's occupancy, laid out as `pools`.
    pub fn pool_states(&self) -> Vec<Vec<PoolState>> {
        self.pools
            .iter()
            .map(|per| {
                per.iter()
                    .map(|p| {
                        let s = p.status();
                        PoolState {
                            max_size: s.max_size,
                            size: s.size,
                            idle: s.available,
                            waiting: s.waiting,
                        }
                    })
                    .collect()
            })
            .collect()
    }
}

/// The router's front end: PostgreSQL clients in, routed statements out.
pub struct Proxy {
    shared: Arc<Shared>,
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    #[error("the topology lists no [[router.users]]; clients could not log in")]
    NoUsers,
    #[error("cannot build the pool for {database}: {cause}")]
    Pool { database: String, cause: String },
    #[error("[router] {file} {}: {cause}", path.display())]
    TlsFile {
        /// The topology key naming the file: `tls_cert` or `tls_key`.
        file: &'static str,
        path: std::path::PathBuf,
        cause: String,
    },
    #[error("[router] tls_key {} is not the private key of the certificate in tls_cert {}", key.display(), cert.display())]
    TlsKeyMismatch {
        cert: std::path::PathBuf,
        key: std::path::PathBuf,
    },
}

impl ProxyError {
    pub fn hint(&self) -> &'static str {
        match self {
            Self::NoUsers => "add [[router.users]] name = \"…\" password = \"…\" to shardline.toml (`shardline dev up` writes one)",
            Self::Pool { .. } => "check the connection strings of the contexts in shardline.toml",
            Self::TlsFile { .. } => "tls_cert is the PEM certificate chain, tls_key its unencrypted PEM key; relative paths start at the topology file's directory",
            Self::TlsKeyMismatch { .. } => "compare `openssl x509 -noout -pubkey -in CERT` with `openssl pkey -pubout -in KEY`; tls_key must be the key the certificate was issued for",
        }
    }
}

impl Proxy {
    /// A router as the topology's `[router]` section says.
    pub fn new(topology: &Topology) -> Result<Self, ProxyError> {
        Self::with_pool_size(topology, topology.router.pool_size)
    }

    /// [`Proxy::new`] with another pool size (`--pool-size`).
    pub fn with_pool_size(topology: &Topology, pool_size: usize) -> Result<Self, ProxyError> {
        if topology.router.users.is_empty() {
            return Err(ProxyError::NoUsers);
        }
        let tls = topology.router.tls.as_ref().map(Tls::load).transpose()?;
        let limits = topology.router.limits.clone();
        let pool = |conn: &ConnString, stats: Arc<DbStats>| {
            let manager = Manager::new(conn.clone(), stats, limits.backend_read_timeout);
            Pool::builder(manager)
                .max_size(pool_size)
                .wait_timeout(Some(limits.pool_timeout))
                // The connection used last: its statements and settings
                // are the likeliest to be the next client's too.
                .queue_mode(deadpool::managed::QueueMode::Lifo)
                .runtime(deadpool::Runtime::Tokio1)
                .build()
                .map_err(|e| ProxyError::Pool {
                    database: conn.to_string(),
                    cause: e.to_string(),
                })
        };
        let mut pools = Vec::new();
        let mut stats = Stats::default();
        for c in &topology.contexts {
            let mut per = Vec::new();
            let mut per_stats = Vec::new();
            for (i, conn) in c.databases().into_iter().enumerate() {
                let shard = c.is_sharded().then_some(i);
                let db = Arc::new(DbStats::new(&c.name, shard, conn.to_string()));
                per_stats.push(db.clone());
                per.push(pool(conn, db)?);
            }
            pools.push(per);
            stats.dbs.push(per_stats);
        }
        let cohorts = crate::cohort::enabled(topology);
        if cohorts.is_some() {
            let source = &topology.source;
            let db = Arc::new(DbStats::new("monolith", None, source.to_string()));
            pools.push(vec![pool(source, db.clone())?]);
            stats.dbs.push(vec![db]);
        }
        let users = topology
            .router
            .users
            .iter()
            .map(|u| {
                (
                    u.name.clone(),
                    Verifier::new(u.password.expose(), rand::random()),
                )
            })
            .collect();
        Ok(Self {
            shared: Arc::new(Shared {
                router: Router::new(topology),
                pools,
                users,
                stats,
                cancels: Arc::default(),
                cohorts,
                tls,
                mode: topology.router.pool_mode,
                limits,
                clients: Arc::default(),
                refusals: Arc::new(tokio::sync::Semaphore::new(MAX_REFUSALS)),
            }),
        })
    }

    /// Accepts clients until the listener fails; each runs on its own task,
    /// so one client's broken connection never touches another's.
    pub async fn serve(&self, listener: TcpListener) -> std::io::Result<()> {
        raise_fd_limit();
        let _watch = self.shared.cohorts.clone().map(|c| {
            let task = tokio::spawn(c.watch());
            crate::cohort::AbortOnDrop(task)
        });
        let max = self.shared.limits.max_client_conn;
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) if is_transient(&e) => {
                    tracing::warn!(error = %e, "accept failed; continuing");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let Some(seat) = self.shared.clients.admit(peer, max) else {
                if let Ok(permit) = self.shared.refusals.clone().try_acquire_owned() {
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(REFUSAL_TIMEOUT, refuse(stream, max)).await;
                        drop(permit);
                    });
                }
                continue;
            };
            tracing::debug!(%peer, "client connected");
            let shared = self.shared.clone();
            tokio::spawn(Session::new(shared, stream, seat).run());
        }
    }

    /// The Prometheus text exposition of the router's counters.
    pub fn metrics(&self) -> String {
        let mut text = self.shared.stats.render(&self.shared.pool_states());
        let name = "shardline_router_clients";
        text.push_str(&format!(
            "# HELP {name} Client connections open, logged in or not.\n# TYPE {name} gauge\n{name} {}\n",
            self.shared.clients.connected()
        ));
        text
    }

    /// Tells the monolith this router is gone, so no cutover waits for
    /// its acknowledgement until its heartbeat would have expired.
    pub async fn leave(&self) {
        if let Some(c) = &self.shared.cohorts {
            c.leave().await;
        }
    }

    /// (hits, misses, entries) of the parse cache.
    pub fn cache_stats(&self) -> (u64, u64, usize) {
        self.shared.router.cache_stats()
    }
}

/// Tells a client past `max_client_conn` so, as PostgreSQL does past
/// `max_connections`: after its startup packet (an SSLRequest is answered
/// `N` first), FATAL 53300.
async fn refuse(mut stream: TcpStream, max: usize) {
    loop {
        match msg::read_startup(&mut stream).await {
            Ok((msg::SSL_REQUEST | msg::GSSENC_REQUEST, _)) => {
                if stream.write_all(b"N").await.is_err() {
                    return;
                }
            }
            Ok(_) => break,
            Err(_) => return,
        }
    }
    let mut out = BytesMut::new();
    msg::fatal_response(
        &mut out,
        "53300",
        &format!("sorry, too many clients already: max_client_conn ({max}) reached"),
        Some("raise [router] max_client_conn, or have the application open fewer connections"),
    );
    let _ = stream.write_all(&out).await;
}

/// Raises this process's soft limit on open files to its hard limit: each
/// client and each backend is a descriptor, and the usual soft limit of
/// 1024 would refuse clients long before `max_client_conn`.
pub fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write one rlimit we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                tracing::warn!(error = %std::io::Error::last_os_error(), "cannot raise the open-file limit");
            }
        }
    }
}

fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    ) || e.raw_os_error() == Some(24) // EMFILE: too many open files, for now
}
