//! Table definitions: read from PostgreSQL's catalog, rendered as DDL,
//! compared between databases. One code path for creating a target's
//! tables (backfill), changing them (schema changes streamed by cdc) and
//! checking them (`shardline schema diff`, verify).
//!
//! - [`table`] holds the definition as plain data: [`Table`] with its
//!   columns (types, collations, defaults, identity, generated), its
//!   constraints, indexes, partitions, the sequences and user types it
//!   uses, and what is never created elsewhere (triggers, policies, rules).
//! - [`catalog::read_table`] fills a [`Table`] from a database, by exact
//!   name, in one consistent catalog snapshot, with every rendering
//!   schema-qualified.
//! - [`ddl`] renders the statements that create it: types, sequences, the
//!   table (partitioned or plain), constraints, indexes, foreign keys,
//!   comments, and the `setval` that carries a sequence's position.
//! - [`diff::compare`] names each difference between two definitions of
//!   one table as an object with both sides' renderings.
//!
//! The crate knows nothing of topologies: deciding what a target can hold
//! (a foreign key to a table on another database, say) is the caller's.

pub mod catalog;
pub mod ddl;
pub mod diff;
pub mod table;

pub use catalog::read_table;
pub use ddl::CreateOptions;
pub use diff::{compare, CompareOptions, Difference};
pub use table::{
    Column, Constraint, ConstraintKind, ExtensionType, Identity, Index, NamedDefinition, Partition,
    Sequence, Stats, Table, UserType,
};

/// What can fail while reading definitions.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    #[error("catalog query failed: {}", describe(.0))]
    Query(#[from] tokio_postgres::Error),
}

impl SchemaError {
    /// The PostgreSQL error behind this one, when there is one.
    pub fn db_error(&self) -> Option<&tokio_postgres::error::DbError> {
        match self {
            Self::Query(e) => e.as_db_error(),
        }
    }
}

/// PostgreSQL's message with its SQLSTATE and detail, or the client's error.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => {
            let mut s = format!("{} (SQLSTATE {})", d.message(), d.code().code());
            if let Some(detail) = d.detail() {
                s.push_str(&format!("; {detail}"));
            }
            s
        }
        None => e.to_string(),
    }
}
