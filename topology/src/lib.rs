//! What every shardline command shares: the topology file, connection
//! strings, and the placement of rows on shards.
//!
//! - [`Topology`] is the validated `shardline.toml`: the source database,
//!   the bounded contexts ([`Context`]) with their tables, read models and
//!   router users. Loading reports every broken rule with its key and line.
//! - [`TableName`] is a table name parsed once as SQL reads it (quoted
//!   parts exact, unquoted parts folded) and rendered one way everywhere.
//! - [`ConnString`] is a libpq-style connection string completed from the
//!   PG* environment and `.pgpass`; it connects with errors that carry a hint
//!   and it never prints its password.
//! - [`Placement`] maps a shard key to a bucket with PostgreSQL's own
//!   hash-partitioning hash ([`pghash`]) and a bucket to a shard; its
//!   [`Placement::bucket_sql`] computes the same bucket inside PostgreSQL.
//! - Every connection to a database goes through [`transport`] (TCP, TLS
//!   per libpq's `sslmode`: [`tls`]) and the password rule of [`auth`]:
//!   tokio-postgres clients ([`ConnString::connect`]), raw logins
//!   ([`login`], the router's backends) and replication streams
//!   ([`replication`], a relay in front of pgwire-replication).

pub mod auth;
pub mod conn;
mod conninfo;
pub mod login;
pub mod name;
pub mod pgerror;
pub mod pghash;
pub mod placement;
pub mod replication;
pub mod tls;
pub mod topology;
pub mod transport;

pub use auth::{AuthMethod, AuthRefusal, RequireAuth};
pub use conn::{ConnString, ConnStringError, ConnectError, DbConnection};
pub use name::{display_ident, quote_ident, NameError, TableName, DEFAULT_SCHEMA};
pub use pgerror::describe as describe_pg_error;
pub use placement::{Placement, PlacementError, ShardKey, ShardKeyType};
pub use tls::{SslMode, TlsFailure, Verification};
pub use topology::{
    output_name, parse_group_wait, parse_interval, CdcConfig, Context, ContextKind, CutoverConfig,
    DdlMode, OnDivergence, Partitioning, PoolMode, Problem, ReadModel, RouterConfig, RouterLimits,
    RouterTls, RouterUser, Secret, Topology, TopologyError, DEFAULT_APPLY_INTERVAL,
    DEFAULT_GROUP_CHANGES, DEFAULT_GROUP_WAIT, MAX_APPLY_INTERVAL, MAX_GROUP_WAIT,
};
pub use transport::DbStream;
