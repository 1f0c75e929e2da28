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
//! Those four know nothing of topologies. Two modules apply them to one:
//! [`carry`] says what of a table its targets cannot hold (a foreign key
//! to another database, a trigger, …), and [`drift`] compares every
//! target of a topology with the source (`shardline schema diff`, and the
//! first step of verify).

pub mod carry;
pub mod catalog;
pub mod ddl;
pub mod diff;
pub mod drift;
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
    #[error(transparent)]
    Connect(#[from] shardline_topology::ConnectError),
    #[error("catalog query failed: {}", shardline_topology::describe_pg_error(.0))]
    Query(#[from] tokio_postgres::Error),
    #[error("{database}: {cause}")]
    On {
        database: String,
        cause: Box<SchemaError>,
    },
    #[error("table {table} does not exist on the source")]
    MissingTable { table: String },
    #[error("{text:?} is not listed in the topology")]
    Unlisted { text: String },
}

impl SchemaError {
    /// The PostgreSQL error behind this one, when there is one.
    pub fn db_error(&self) -> Option<&tokio_postgres::error::DbError> {
        match self {
            Self::Query(e) => e.as_db_error(),
            Self::On { cause, .. } => cause.db_error(),
            _ => None,
        }
    }

    /// The same error, naming the database it happened on.
    pub fn on(self, database: &str) -> Self {
        match self {
            Self::Connect(_) | Self::On { .. } => self,
            other => Self::On {
                database: database.to_string(),
                cause: Box::new(other),
            },
        }
    }

    /// What to do about it.
    pub fn hint(&self) -> String {
        match self {
            Self::Connect(e) => e.hint(),
            Self::On { cause, .. } => cause.hint(),
            Self::MissingTable { .. } => "fix the table lists in the topology".into(),
            Self::Unlisted { .. } => "name a table listed in the topology (as SQL writes it: payments, billing.\"Ledger\")".into(),
            Self::Query(_) => "check that the role may read the catalog (pg_catalog) on that database".into(),
        }
    }
}
