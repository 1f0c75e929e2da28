//! What every shardline command shares: the topology file, connection
//! strings, and the placement of rows on shards.
//!
//! - [`Topology`] is the validated `shardline.toml`: the source database,
//!   the bounded contexts ([`Context`]) with their tables, read models and
//!   router users. Loading reports every broken rule with its key and line.
//! - [`ConnString`] is a libpq-style connection string completed from the
//!   PG* environment and `.pgpass`; it connects with errors that carry a hint
//!   and it never prints its password.
//! - [`Placement`] maps a shard key to a bucket with PostgreSQL's own
//!   hash-partitioning hash ([`pghash`]) and a bucket to a shard; its
//!   [`Placement::bucket_sql`] computes the same bucket inside PostgreSQL.

pub mod conn;
pub mod pghash;
pub mod placement;
pub mod topology;

pub use conn::{ConnString, ConnStringError, ConnectError};
pub use placement::{Placement, PlacementError, ShardKey, ShardKeyType};
pub use topology::{
    output_name, parse_interval, Context, ContextKind, CutoverConfig, DdlMode, Problem, ReadModel,
    RouterConfig, RouterTls, RouterUser, Secret, Topology, TopologyError, DEFAULT_APPLY_INTERVAL,
    MAX_APPLY_INTERVAL,
};

/// Quotes an identifier for SQL the way `quote_ident` does.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a possibly schema-qualified table name (`schema.table` or `table`).
pub fn quote_table(name: &str) -> String {
    match name.split_once('.') {
        Some((schema, table)) => format!("{}.{}", quote_ident(schema), quote_ident(table)),
        None => quote_ident(name),
    }
}
