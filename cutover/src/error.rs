//! Why a cutover command could not do what it was asked.

use shardline_topology::ConnectError;

/// Errors of planning, switching and reporting a cutover. Each names the
/// object and values at fault; [`CutoverError::hint`] says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CutoverError {
    #[error("--cohort {value}: a cohort is a percentage of the buckets from 1 to 100")]
    Percent { value: String },
    #[error("--merchants {list:?}: {item:?} is not a {key_type} merchant id ({cause})")]
    MerchantList {
        list: String,
        item: String,
        key_type: String,
        cause: String,
    },
    #[error("--merchants is empty")]
    NoMerchants,
    #[error("the topology has no single sharded context to cut over to")]
    NoShardedContext,
    #[error("cutover is not enabled in {path}: routers would not hold or redirect anything")]
    NotEnabled { path: String },
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("{what} on {database}: {cause}")]
    Query {
        what: String,
        database: String,
        cause: String,
    },
    #[error("replication slot {slot:?} does not exist on {database}; cutover waits for CDC to apply the monolith's changes through it")]
    NoSlot { slot: String, database: String },
    #[error("context {context} applies CDC changes every {interval_secs} s, and the slot is confirmed only after it commits; a switch would pause that long, above --max-pause {max_pause_secs} s")]
    SlowContext {
        context: String,
        interval_secs: u64,
        max_pause_secs: f64,
    },
    #[error("reverse replication slot {slot:?} does not exist on {database}; a rollback waits for the shards' changes to reach the monolith through it")]
    NoReverseSlot { slot: String, database: String },
    #[error("CDC could not apply as a cutover needs: {}", .0.join("; "))]
    Privileges(Vec<String>),
    #[error("another cutover stage is running on {database}")]
    Busy { database: String },
    #[error("cohort {cohort} aborted after {pause_ms:.0} ms of pause: {cause}; its merchants stay on the monolith")]
    Aborted {
        cohort: i32,
        pause_ms: f64,
        cause: String,
    },
}

impl CutoverError {
    pub fn hint(&self) -> String {
        match self {
            Self::Percent { .. } => "e.g. --cohort 5, then --cohort 20, then --cohort 100 (cumulative)".into(),
            Self::MerchantList { .. } | Self::NoMerchants => {
                "a comma-separated list of merchant ids, e.g. --merchants 42,1001,7".into()
            }
            Self::NoShardedContext => "define one [contexts.NAME] with shard_key and shards in shardline.toml".into(),
            Self::NotEnabled { .. } => {
                "add `[cutover]\\nenabled = true` to shardline.toml and restart the routers, so they route by the cutover state".into()
            }
            Self::Connect(e) => e.hint(),
            Self::Query { .. } => "check the server's log".into(),
            Self::NoSlot { .. } => {
                "run `shardline backfill` (it creates the slot), keep `shardline cdc run` streaming, or pass --slot NAME".into()
            }
            Self::SlowContext { context, .. } => format!(
                "set apply_interval = \"continuous\" for {context} in shardline.toml and restart `shardline cdc run` for the cutover, or raise --max-pause above the interval"
            ),
            Self::NoReverseSlot { .. } => {
                "run `shardline cdc run --reverse` (from before the first stage, so no shard write is missing on the monolith)".into()
            }
            Self::Privileges(_) => {
                "run the grants shown as a superuser (or connect as one), restart `shardline cdc run` (and --reverse), then run this again".into()
            }
            Self::Busy { .. } => "wait for it to finish (`shardline cutover status`), then run this again".into(),
            Self::Aborted { .. } => {
                "see `shardline cutover status`: is `shardline cdc run` streaming, and are all routers up? then run the same stage again, or raise --max-pause".into()
            }
        }
    }

    pub(crate) fn query(database: &impl ToString, what: &str, e: tokio_postgres::Error) -> Self {
        Self::Query {
            what: what.to_string(),
            database: database.to_string(),
            cause: shardline_topology::describe_pg_error(&e),
        }
    }
}
