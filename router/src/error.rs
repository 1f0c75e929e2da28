//! Why a statement cannot be routed, with the SQLSTATE the client sees.

use shardline_topology::PlacementError;

/// A statement the router refuses, because sending it anywhere could give a
/// wrong answer or write a row twice. Each variant names the table, key or
/// clause at fault; [`RouteError::sqlstate`] is the code the client receives.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    #[error("syntax error: {message}")]
    Syntax { message: String },
    #[error("table {table:?} is not in any context of the topology")]
    UnknownTable { table: String },
    #[error("the statement spans contexts: {tables}; each context lives in its own database")]
    CrossContext { tables: String },
    #[error("{statement} on sharded table {table:?} has no {key} = … or {key} IN (…); it would touch every shard")]
    WriteWithoutKey {
        statement: &'static str,
        table: String,
        key: String,
    },
    #[error("INSERT into sharded table {table:?} does not set {key}; list the columns and give {key} a value")]
    InsertWithoutKey { table: String, key: String },
    #[error("INSERT into sharded table {table:?}: {key} in row {row} is {what}, not a constant or bind parameter")]
    InsertKeyNotConstant {
        table: String,
        key: String,
        row: usize,
        what: String,
    },
    #[error("INSERT … SELECT into sharded table {table:?}: the router cannot see {key} of the selected rows; use VALUES")]
    InsertSelect { table: String, key: String },
    #[error("multi-row INSERT into {table:?} with bind parameters has rows on shards {shards:?}; send one statement per shard")]
    SplitWithParameters { table: String, shards: Vec<usize> },
    #[error("UPDATE of sharded table {table:?} sets {key}; moving a row to another shard is not supported")]
    UpdatesKey { table: String, key: String },
    #[error("a subquery or CTE on sharded table {table:?} would need other shards than the rest of the statement; give every part the same {key} = …")]
    SubqueryAcrossShards { table: String, key: String },
    #[error("SELECT on shards {shards:?} cannot be merged correctly: {reason}")]
    Unmergeable { shards: Vec<usize>, reason: String },
    #[error(
        "writing replicated table {table:?} while also reading sharded tables is not supported"
    )]
    ReplicatedWriteMixed { table: String },
    #[error("{statement} is not supported through the router")]
    Unsupported { statement: String },
    #[error("bind parameter ${number} is missing (the statement has {given})")]
    MissingParameter { number: usize, given: usize },
    #[error("bind parameter ${number} (type oid {oid}) cannot be a shard key")]
    ParameterType { number: usize, oid: u32 },
    #[error("{0}")]
    Key(#[from] PlacementError),
}

impl RouteError {
    /// The SQLSTATE sent back in the ErrorResponse.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            Self::Syntax { .. } => "42601",
            Self::UnknownTable { .. } => "42P01",
            Self::MissingParameter { .. } => "08P01",
            Self::Key(_) | Self::ParameterType { .. } => "22P02",
            _ => "0A000",
        }
    }

    pub fn hint(&self) -> &'static str {
        match self {
            Self::Syntax { .. } => "the router parses with PostgreSQL's own grammar; the statement does not parse",
            Self::UnknownTable { .. } => "add the table to a context in shardline.toml, or query the database directly",
            Self::CrossContext { .. } => "split the statement per context and join in the application",
            Self::WriteWithoutKey { .. } | Self::SubqueryAcrossShards { .. } => {
                "add the shard key to the WHERE clause, or SET shardline.merchant_id = … first"
            }
            Self::InsertWithoutKey { .. }
            | Self::InsertKeyNotConstant { .. }
            | Self::InsertSelect { .. } => "INSERT INTO t (merchant_id, …) VALUES ($1, …)",
            Self::SplitWithParameters { .. } => "group rows by merchant, one INSERT per shard",
            Self::UpdatesKey { .. } => "delete the row and insert it with its new key",
            Self::Unmergeable { .. } => {
                "add the shard key to the WHERE clause, or GROUP BY the shard key, or order by output columns only"
            }
            Self::ReplicatedWriteMixed { .. } => "write replicated tables in their own statement",
            Self::Unsupported { .. } => "run it on the databases directly",
            Self::MissingParameter { .. } | Self::ParameterType { .. } | Self::Key(_) => {
                "bind the shard key as the column's type (text or binary)"
            }
        }
    }
}
