use std::path::PathBuf;

use shardline_topology::ConnectError;

/// Why an export could not run or did not finish. Whatever the error, no
/// file of the export is left looking complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("--table {text:?} is not a table name: {why}")]
    BadTableName { text: String, why: String },
    #[error("table {table} does not exist on {database}")]
    MissingTable { table: String, database: String },
    #[error("--from {name}: no such context in the topology (contexts: {known})")]
    UnknownContext { name: String, known: String },
    #[error("--partition-by {column}: no such column in the result (columns: {columns})")]
    UnknownColumn { column: String, columns: String },
    #[error("--partition-by {by}: column type {pg_type} cannot name a partition")]
    PartitionType { by: String, pg_type: String },
    #[error("column {column} has type {pg_type}, which has no exact Parquet type")]
    UnsupportedType { column: String, pg_type: String },
    #[error(
        "column {column} is {pg_type} without a precision that fits Decimal128 (at most 38 digits)"
    )]
    UnconstrainedNumeric { column: String, pg_type: String },
    #[error("column {column} is {pg_type} on {database} but {other_type} on {other}")]
    ShapeMismatch {
        column: String,
        pg_type: String,
        database: String,
        other_type: String,
        other: String,
    },
    #[error("column {column} on {database}: {reason}")]
    Value {
        column: String,
        database: String,
        reason: String,
    },
    #[error("output directory {} is not empty", dir.display())]
    NotEmpty { dir: PathBuf },
    #[error("cannot write to output directory {}: {cause}", dir.display())]
    Unwritable { dir: PathBuf, cause: String },
    #[error("writing {}: {cause}", path.display())]
    Io { path: PathBuf, cause: String },
    #[error("query on {database}: {cause}")]
    Query { database: String, cause: String },
    #[error("reading the COPY stream from {database}: {cause}")]
    Copy { database: String, cause: String },
    #[error("export interrupted; nothing was committed")]
    Interrupted,
}

impl ExportError {
    pub(crate) fn query(database: &str, e: tokio_postgres::Error) -> Self {
        Self::Query {
            database: database.to_string(),
            cause: e
                .as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or_else(|| e.to_string()),
        }
    }

    /// What a person could try next.
    pub fn hint(&self) -> String {
        match self {
            Self::Connect(e) => e.hint(),
            Self::BadTableName { .. } => {
                "write the name as SQL does: payments, billing.ledger, or '\"Payments\"' for a quoted name".into()
            }
            Self::MissingTable { .. } => {
                "check the table name and --from (a sharded table lives on the shards after backfill; --from source reads the monolith)".into()
            }
            Self::UnknownContext { .. } => "use --from source or a context named in the topology".into(),
            Self::UnknownColumn { .. } => "partition by one of the listed columns".into(),
            Self::PartitionType { .. } => {
                "partition by an integer, text, boolean, date or uuid column, or day()/month() of a date or timestamp".into()
            }
            Self::UnsupportedType { .. } => {
                "pass --cast-unknown text to export it as its text form, or cast it in --query".into()
            }
            Self::UnconstrainedNumeric { column, .. } => format!(
                "cast it in --query ({column}::numeric(38,2)) or pass --unconstrained-numeric text for its exact decimal text"
            ),
            Self::ShapeMismatch { .. } => "make the table's columns the same on every database (shardline verify compares them)".into(),
            Self::Value { .. } => "filter or convert such values in --query".into(),
            Self::NotEmpty { .. } => "choose an empty or new directory, or pass --overwrite to replace its contents".into(),
            Self::Unwritable { .. } | Self::Io { .. } => "check the path, its permissions and the free space".into(),
            Self::Query { .. } => "check the SQL and the server's log".into(),
            Self::Copy { .. } => "check the server's log; run the export again".into(),
            Self::Interrupted => "run the same command again".into(),
        }
    }
}
