//! The listening side: accepts clients and gives each a session over the
//! shared router, pools and users.

use std::collections::HashMap;
use std::sync::Arc;

use shardline_topology::{ConnString, Topology};
use tokio::net::TcpListener;

use crate::backend::{Manager, Pool};
use crate::scram::Verifier;
use crate::session::Session;
use crate::stats::{DbStats, PoolState, Stats};
use crate::tls::Tls;
use crate::Router;

/// Connections per database pool when the topology does not say: enough
/// for a few dozen busy clients per shard, far below `max_connections`.
pub const DEFAULT_POOL_SIZE: usize = 32;

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
    pub fn new(topology: &Topology) -> Result<Self, ProxyError> {
        Self::with_pool_size(topology, DEFAULT_POOL_SIZE)
    }

    pub fn with_pool_size(topology: &Topology, pool_size: usize) -> Result<Self, ProxyError> {
        if topology.router.users.is_empty() {
            return Err(ProxyError::NoUsers);
        }
        let tls = topology.router.tls.as_ref().map(Tls::load).transpose()?;
        let pool = |conn: &ConnString, stats: Arc<DbStats>| {
            Pool::builder(Manager {
                conn: conn.clone(),
                stats,
            })
            .max_size(pool_size)
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
            }),
        })
    }

    /// Accepts clients until the listener fails; each runs on its own task,
    /// so one client's broken connection never touches another's.
    pub async fn serve(&self, listener: TcpListener) -> std::io::Result<()> {
        let _watch = self.shared.cohorts.clone().map(|c| {
            let task = tokio::spawn(c.watch());
            crate::cohort::AbortOnDrop(task)
        });
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
            tracing::debug!(%peer, "client connected");
            let shared = self.shared.clone();
            tokio::spawn(Session::new(shared, stream).run());
        }
    }

    /// The Prometheus text exposition of the router's counters.
    pub fn metrics(&self) -> String {
        self.shared.stats.render(&self.shared.pool_states())
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

fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    ) || e.raw_os_error() == Some(24) // EMFILE: too many open files, for now
}
