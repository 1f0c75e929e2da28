//! The router: applications talk PostgreSQL to one endpoint, and each
//! statement goes to the context and shard that hold its rows.
//!
//! The crate has a pure core and, around it, the wire front end:
//!
//! - [`Router`] turns a statement text, its bind values ([`Param`]) and the
//!   session's `SET shardline.merchant_id` into a [`Route`]: a [`Target`]
//!   (one database, one shard, several shards with a [`MergeShape`], every
//!   shard for a replicated table, or a multi-row INSERT split by shard),
//!   or a [`RouteError`] saying why no target would be correct. It parses
//!   with PostgreSQL's own grammar (pg_query) and caches the analysis by
//!   statement text, and by shape for texts that differ only in inlined
//!   literals (`literal.rs` normalises, `shape.rs` checks the shape routes
//!   as the text does); it never opens a socket.
//! - [`Schema`] is the part of the topology routing reads: table →
//!   context, shard key and placement (PostgreSQL's hash, key → bucket →
//!   shard, from `shardline_topology`).
//! - The merge core, also pure: `row.rs` reads RowDescription and DataRow,
//!   `datum.rs` decodes the columns a merge needs per type OID and format
//!   (`numeric.rs`: exact numeric), `order.rs` is the k-way ORDER BY merge
//!   and `aggregate.rs` re-aggregates count/sum/min/max/avg per group.
//!
//! - [`Proxy`] is the front end: it accepts PostgreSQL clients, logs them
//!   in with SCRAM-SHA-256 against `[[router.users]]`, routes each
//!   statement with the [`Router`] and relays the answer.
//!
//! The proxy works at the level of wire messages, not on pgwire's server
//! framework. pgwire would decode each client message into its own types
//! and have us re-encode results from Rust values; a router must instead
//! relay rows exactly as the backend encoded them (text or binary, every
//! type, including ones neither crate knows) and must hand Parse, Bind and
//! Describe to the backend that will run them, with their original bytes.
//! So frames are read whole (`message.rs`), only the fields routing needs
//! are decoded, and everything else is forwarded byte for byte;
//! backends connect and log in through `shardline_topology`'s transport
//! and login (TLS per the URL's sslmode, require_auth), as every other
//! shardline connection does.
//!
//! Correctness rules the core enforces (each has a test in `tests.rs`):
//! a key list over several shards is a scatter, never one shard; a
//! multi-row INSERT is split by shard or refused, never sent twice; a
//! statement over two contexts is refused; a write with no key is refused
//! unless the table is replicated, and then goes to every shard; a scatter
//! SELECT is accepted only when its merge is provably correct.

mod admin;
mod aggregate;
mod backend;
mod cache;
mod cancel;
mod cohort;
mod datum;
mod error;
mod literal;
mod merge;
mod message;
mod numeric;
mod order;
mod route;
mod row;
mod schema;
mod scram;
mod server;
mod session;
mod shape;
mod statement;
mod stats;
mod tls;
mod tree;

pub use backend::BackendError;
pub use server::{Proxy, ProxyError, DEFAULT_POOL_SIZE};

pub use cache::DEFAULT_CAPACITY;
pub use cohort::Cohorts;
pub use error::RouteError;
pub use merge::{Aggregate, Limit, MergeShape, Output, SortColumn, SortKey};
pub use route::{Format, Kind, Param, Route, Router, Target};
pub use schema::{ContextInfo, Role, Schema};
pub use statement::{Control, Verb, KEY_SETTING};

#[cfg(test)]
mod tests;
