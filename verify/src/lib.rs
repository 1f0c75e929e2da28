//! Verify: prove that the targets hold exactly the source's rows.
//!
//! For each table ([`compare::TableSpec`]) every side computes, inside
//! PostgreSQL, a row count and a checksum per bucket ([`checksum`]); for a
//! sharded table the bucket is the placement bucket, so the same pass finds
//! rows on the wrong shard; for an unsharded table, a range of its primary
//! key where every side orders the key alike (`keyrange`). Differing buckets are compared again (changes
//! still being applied settle), then bisected down to rows: each row is
//! reported as missing, extra, duplicated, changed (with the columns and
//! both values) or misplaced ([`report`]). Read models are compared with
//! their query recomputed on the source, group by group.

pub mod checksum;
pub mod compare;
mod keyrange;
pub mod report;
mod rows;
mod tables;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shardline_topology::{ConnectError, Topology};

pub use checksum::RowHash;
pub use compare::Level;
pub use report::{ColumnDrift, Report, TableReport};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("table {table} does not exist on {database}")]
    MissingTable { table: String, database: String },
    #[error("table {table} has no primary key on the source, so its rows cannot be matched")]
    NoPrimaryKey { table: String },
    #[error("{table} is not listed in the topology")]
    Unlisted { table: String },
    #[error("{table} on {database}: {cause}")]
    Query {
        table: String,
        database: String,
        cause: String,
    },
    #[error("comparing definitions: {0}")]
    Schema(#[from] shardline_schema::SchemaError),
}

impl VerifyError {
    pub(crate) fn query(database: &str, table: &str, e: tokio_postgres::Error) -> Self {
        Self::Query {
            table: table.to_string(),
            database: database.to_string(),
            cause: shardline_topology::describe_pg_error(&e),
        }
    }

    pub fn hint(&self) -> String {
        match self {
            Self::Connect(e) => e.hint(),
            Self::MissingTable { .. } => "run shardline backfill to create and fill it".into(),
            Self::NoPrimaryKey { .. } => "add a primary key on the source".into(),
            Self::Unlisted { .. } => "see the tables listed in the topology".into(),
            Self::Query { .. } => "check the server's log".into(),
            Self::Schema(e) => e.hint(),
        }
    }
}

/// What a running verify has done so far, for a progress display: rows
/// scanned on every side, against an estimate from the planner's statistics.
#[derive(Debug, Default)]
pub struct Progress {
    /// The table (or read model) being compared.
    pub table: Mutex<String>,
    pub rows_scanned: AtomicU64,
    pub rows_estimated: AtomicU64,
}

#[derive(Clone, Debug)]
pub struct VerifyRequest {
    pub tables: Option<Vec<String>>,
    pub level: Level,
    pub rechecks: u32,
    pub recheck_delay: Duration,
    pub max_rows: usize,
    pub max_rows_per_sec: Option<u64>,
    pub row_hash: RowHash,
    pub progress: Arc<Progress>,
}

impl Default for VerifyRequest {
    fn default() -> Self {
        Self {
            tables: None,
            level: Level::Rows,
            rechecks: 2,
            recheck_delay: Duration::from_secs(1),
            max_rows: 100,
            max_rows_per_sec: None,
            row_hash: RowHash::Auto,
            progress: Arc::default(),
        }
    }
}

/// Compares every listed table and read model; `on_table` is told as each
/// one finishes.
pub async fn verify(
    topology: &Topology,
    request: &VerifyRequest,
    on_table: impl Fn(&TableReport),
) -> Result<Report, VerifyError> {
    let started = Instant::now();
    // Definitions first: drift is reported apart from the data. Sequence
    // positions are left to `schema diff` (cdc moves them up on each
    // heartbeat, so a live run may lag by one).
    let drift = shardline_schema::drift::diff(
        topology,
        &shardline_schema::drift::DriftRequest {
            tables: request.tables.as_ref().map(|list| {
                list.iter()
                    .filter(|t| !topology.read_models.iter().any(|r| &&r.name == t))
                    .cloned()
                    .collect()
            }),
            positions: false,
        },
    )
    .await?;
    let source = tables::connect(&topology.source).await?;
    let specs = tables::specs(topology, &source, request.tables.as_deref()).await?;
    let options = compare::Options {
        level: request.level,
        rechecks: request.rechecks,
        recheck_delay: request.recheck_delay,
        max_rows: request.max_rows,
        max_rows_per_sec: request.max_rows_per_sec,
        row_hash: request.row_hash,
        progress: request.progress.clone(),
    };
    let mut reports = Vec::new();
    for spec in &specs {
        let mut targets = Vec::new();
        for conn in &spec.targets {
            targets.push(tables::connect(conn).await?);
        }
        for t in &targets {
            tables::check_exists(t, spec).await?;
        }
        // After a schema change not on every side yet, rows compare on
        // the columns all sides have; the rest is drift.
        let (shared, drift) = tables::shared_columns(spec, &targets).await?;
        let key_lost = spec.key.iter().any(|k| !shared.columns.contains(k));
        let mut report = if key_lost {
            let mut r = TableReport::new(&spec.name);
            r.equal = false;
            r
        } else {
            compare::compare(&shared, &source, &targets, &options).await?
        };
        report.schema_drift = drift;
        report.finish();
        on_table(&report);
        reports.push(report);
    }
    Ok(Report {
        equal: drift.equal && reports.iter().all(|r| r.equal),
        schema_drift: drift.drift,
        level: format!("{:?}", request.level).to_lowercase(),
        consistency: format!(
            "differing buckets re-checked {} times, {} s apart, before they were reported",
            request.rechecks,
            request.recheck_delay.as_secs_f64()
        ),
        tables: reports,
        seconds: started.elapsed().as_secs_f64(),
    })
}
