//! What can stop a backfill, each naming the table, database or chunk.

use shardline_topology::ConnectError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackfillError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("table {table} does not exist on the source")]
    MissingTable { table: String },
    #[error("table {table} does not exist on {target} and --no-create was given")]
    TargetMissing { table: String, target: String },
    #[error("table {table} on {target} already holds rows that no backfill job wrote")]
    TargetNotEmpty { table: String, target: String },
    #[error("the source is not ready for change data capture:\n  {}", .0.join("\n  "))]
    SourceSetup(Vec<String>),
    #[error("targets differ from the source, nothing was copied:\n  {}", .0.join("\n  "))]
    Differences(Vec<String>),
    #[error("the targets cannot hold everything the source has, nothing was copied:\n  {}", .0.join("\n  "))]
    Obstacles(Vec<String>),
    #[error("table {table} has no column {column}, the shard key of its context")]
    NoShardKeyColumn { table: String, column: String },
    #[error("table {table}: {count} rows have a NULL shard key {column} and cannot be placed")]
    NullShardKey {
        table: String,
        column: String,
        count: i64,
    },
    #[error("{database}: {cause}")]
    Query { database: String, cause: String },
    #[error("table {table} chunk {chunk}: copying into {target} failed: {cause}")]
    Copy {
        table: String,
        chunk: i32,
        target: String,
        cause: String,
    },
    #[error("cannot create the snapshot on the source: {0}")]
    Snapshot(String),
    #[error("table {table}: malformed COPY data: {cause}")]
    Format { table: String, cause: String },
    #[error("interrupted; chunks in flight were rolled back")]
    Interrupted,
}

impl BackfillError {
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            Self::Connect(e) => e.hint(),
            Self::MissingTable { .. } => "fix the table lists in the topology".into(),
            Self::TargetMissing { .. } => "create it, or run without --no-create to create it from the source".into(),
            Self::TargetNotEmpty { .. } => "empty it, or run with --restart to empty every target table of the job".into(),
            Self::SourceSetup(_) => "apply the fixes shown, then run backfill again".into(),
            Self::Differences(_) => "make the targets' tables match the source (or drop them to let backfill create them)".into(),
            Self::Obstacles(_) => "list each object's name in its context's skip_objects to let it go (see the Backfill section of the README), or change the topology".into(),
            Self::NoShardKeyColumn { .. } => "move the table to an unsharded context or to reference_tables".into(),
            Self::NullShardKey { .. } => "give those rows a shard key on the source, or list the table in an unsharded context".into(),
            Self::Copy { .. } => "run the same command again: the job resumes where it stopped".into(),
            Self::Interrupted => "run the same command again to resume".into(),
            Self::Snapshot(_) => "check wal_level = logical and a free replication slot on the source".into(),
            _ => return None,
        })
    }

    /// Whether trying again later may help (a target restarting, a lost
    /// connection), as opposed to a mistake that will fail the same way.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Copy { .. } | Self::Connect(ConnectError::Unreachable { .. })
        )
    }
}
