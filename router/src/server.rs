//! The listening side: accepts clients and gives each a session over the
//! shared router, pools and users.

use std::collections::HashMap;
use std::sync::Arc;

use shardline_topology::Topology;
use tokio::net::TcpListener;

use crate::backend::{Manager, Pool};
use crate::scram::Verifier;
use crate::session::Session;
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
    /// The cutover state, when the topology enables cutover; the monolith
    /// then has the last pool, after every context's.
    pub cohorts: Option<Arc<crate::Cohorts>>,
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
}

impl ProxyError {
    pub fn hint(&self) -> &'static str {
        match self {
            Self::NoUsers => "add [[router.users]] name = \"…\" password = \"…\" to shardline.toml (`shardline dev up` writes one)",
            Self::Pool { .. } => "check the connection strings of the contexts in shardline.toml",
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
        let mut pools = Vec::new();
        for c in &topology.contexts {
            let mut per = Vec::new();
            for conn in c.databases() {
                let pool = Pool::builder(Manager { conn: conn.clone() })
                    .max_size(pool_size)
                    .runtime(deadpool::Runtime::Tokio1)
                    .build()
                    .map_err(|e| ProxyError::Pool {
                        database: conn.to_string(),
                        cause: e.to_string(),
                    })?;
                per.push(pool);
            }
            pools.push(per);
        }
        let cohorts = crate::cohort::enabled(topology);
        if cohorts.is_some() {
            let pool = Pool::builder(Manager {
                conn: topology.source.clone(),
            })
            .max_size(pool_size)
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(|e| ProxyError::Pool {
                database: topology.source.to_string(),
                cause: e.to_string(),
            })?;
            pools.push(vec![pool]);
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
                cohorts,
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
