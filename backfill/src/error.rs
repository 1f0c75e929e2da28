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
    Query {
        database: String,
        cause: String,
        /// The connection went away (a restart, a cut): worth a rerun.
        lost: bool,
    },
    #[error("table {table} chunk {chunk}: copying into {target} failed: {cause}")]
    Copy {
        table: String,
        chunk: i32,
        target: String,
        cause: String,
    },
    #[error("cannot create the snapshot on the source: {0}")]
    Snapshot(String),
    #[error("slot {slot} already exists on the source but no backfill job records it")]
    OrphanSlot { slot: String },
    #[error("cannot create or extend the publication {publication} on the source: {cause}")]
    Publication { publication: String, cause: String },
    #[error("a backfill worker failed: {0}")]
    Worker(String),
    #[error("table {table}: malformed COPY data: {cause}")]
    Format { table: String, cause: String },
    #[error("interrupted; chunks in flight were rolled back")]
    Interrupted,
}

impl BackfillError {
    pub fn hint(&self) -> Option<String> {
        if let Self::Query { cause, .. } = self {
            if let Some(grant) = shardline_topology::pgerror::create_grant_hint(cause) {
                return Some(grant);
            }
        }
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
            Self::Copy { .. } | Self::Query { lost: true, .. } => "run the same command again (once the server is back): the job resumes where it stopped".into(),
            Self::Interrupted => "run the same command again to resume".into(),
            Self::Snapshot(cause) => return snapshot_hint(cause),
            Self::OrphanSlot { .. } => "drop it (`shardline cdc drop`) or run with --restart".into(),
            Self::Publication { cause, .. } if cause.contains("SQLSTATE 42P01") => "check that every table the topology lists exists on the source under that name".into(),
            Self::Publication { cause, .. } if cause.contains("SQLSTATE 42501") => "connect as the tables' owner or a superuser (CREATE PUBLICATION needs ownership of every table)".into(),
            _ => return None,
        })
    }

    /// Whether trying again later may help (a target restarting, a lost
    /// connection), as opposed to a mistake that will fail the same way.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Copy { .. }
                | Self::Query { lost: true, .. }
                | Self::Connect(ConnectError::Unreachable { .. })
        )
    }
}

/// The hint for a failure to create the slot and its snapshot, chosen by
/// the SQLSTATE the server sent: each cause has its own fix, and a cause
/// not listed gets none rather than another's.
fn snapshot_hint(cause: &str) -> Option<String> {
    let hint = if cause.contains("SQLSTATE 55000") && cause.contains("wal_level") {
        "set wal_level = logical on the source (ALTER SYSTEM SET wal_level = logical; then restart it)"
    } else if cause.contains("SQLSTATE 53400") {
        "raise max_replication_slots (or max_wal_senders) on the source and restart it, or drop an unused slot"
    } else if cause.contains("SQLSTATE 42710") {
        "the slot exists already: drop it (`shardline cdc drop`) or run with --restart"
    } else if cause.contains("SQLSTATE 42501") || cause.contains("SQLSTATE 28000") {
        "the role needs the REPLICATION attribute (ALTER ROLE … REPLICATION) and a replication line in pg_hba.conf"
    } else if cause.starts_with("io error")
        || ["57P01", "57P02", "57P03", "SQLSTATE 08"]
            .iter()
            .any(|code| cause.contains(code))
    {
        "is the source reachable? run the same command again once it is: the job resumes"
    } else {
        return None;
    };
    Some(hint.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_going_away_while_the_snapshot_is_made_is_worth_a_rerun() {
        for cause in [
            "io error: connection reset by peer",
            "server error: the database system is shutting down (SQLSTATE 57P03)",
            "server error: terminating connection due to administrator command (SQLSTATE 57P01)",
        ] {
            let hint = BackfillError::Snapshot(cause.into()).hint().unwrap();
            assert!(
                hint.contains("run the same command again"),
                "{cause}: {hint}"
            );
        }
        let other = BackfillError::Snapshot("server error: syntax error (SQLSTATE 42601)".into());
        assert_eq!(other.hint(), None);
    }
}
