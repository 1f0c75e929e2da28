//! Schema changes: the monolith's DDL carried to the targets while cdc
//! streams, and migrations run on every database of a context after the
//! cutover.
//!
//! [`capture`] installs, on the source, an event trigger that writes each
//! DDL command into `shardline.ddl_log`; that table is in the publication,
//! so a command reaches cdc at its exact position in the stream. A log row
//! arrives as a [`Captured`] ([`event`]); [`statement`] finds the statement
//! it came from in the client's query (PostgreSQL's own grammar, through
//! `pg_query`), and [`plan`] turns it into [`Step`]s for the targets of the
//! changed table, nothing, or a refusal that names what would go wrong.
//! cdc runs the steps inside the target transaction that carries the
//! progress mark.
//!
//! [`migration`] is `shardline schema apply`: one SQL file on every
//! database of a context, all-or-nothing with two-phase commit where the
//! statements allow it, else database by database with a resumable record.

pub mod capture;
pub mod event;
pub mod migration;
pub mod plan;
pub mod statement;

pub use event::{Captured, Event, PartitionChange};
pub use plan::{plan, Changes, Effect, Plan, Replay, Requirement, Scope, Step, Where};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DdlError {
    #[error("cannot parse SQL `{}`: {cause}", plan::short(.sql))]
    Syntax { sql: String, cause: String },
    #[error("DDL log row: column {column}: {why}")]
    BadLogRow { column: String, why: String },
    #[error(transparent)]
    Connect(#[from] shardline_topology::ConnectError),
    #[error("{database}: {cause}")]
    Query { database: String, cause: String },
    #[error("cannot read migration file {path}: {cause}")]
    ReadFile { path: String, cause: String },
    #[error("migration {file} holds no statement")]
    EmptyMigration { file: String },
    #[error("migration {file}, statement {index}: `{}` controls the transaction itself, but shardline runs each database's part in a transaction of its own", plan::short(.sql))]
    TransactionControl {
        file: String,
        index: usize,
        sql: String,
    },
    #[error("context {0} is not in the topology")]
    UnknownContext(String),
    #[error("two-phase commit needs max_prepared_transactions > 0, but {database} has {setting}")]
    NoPreparedTransactions { database: String, setting: i64 },
    #[error("migration {file} cannot run all-or-nothing: statement {index} (`{}`) cannot run inside a transaction", plan::short(.sql))]
    NotAtomic {
        file: String,
        index: usize,
        sql: String,
    },
    #[error("migration {migration}: statement {index} (`{}`) failed on {database}: {cause}", plan::short(.sql))]
    Statement {
        migration: String,
        index: usize,
        sql: String,
        database: String,
        cause: String,
    },
    #[error("migration {name} was applied to {database} with other content (id {recorded}); this file is {id}")]
    Changed {
        name: String,
        database: String,
        recorded: String,
        id: String,
    },
}
