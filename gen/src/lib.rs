//! Sample history for the monolith, and the bundled schemas.
//!
//! [`schemas`] holds the SQL of the monolith and of each bounded context
//! (from `schemas/*.sql`). [`generate`] fills a monolith with a payment
//! platform's history: merchants with Zipf-skewed sizes, payments with their
//! events and refunds, then the settlements and payouts that follow. The
//! rows come from [`history::History`], pure code that produces the same
//! bytes for the same seed whatever the number of threads; loading streams
//! them over binary COPY, one connection per table.

pub mod encode;
pub mod history;
mod load;
pub mod schemas;

use std::sync::Arc;

use shardline_topology::{ConnString, ConnectError};

pub use load::TABLES;

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenRequest {
    pub payments: u64,
    pub seed: u64,
    /// Merchant count; default one per thousand payments, at least 20.
    pub merchants: Option<u64>,
    /// Empty the tables first instead of refusing non-empty ones.
    pub truncate: bool,
}

/// Progress reported while loading.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub payments_done: u64,
    pub payments_total: u64,
    /// Rows of payments, events and refunds sent so far.
    pub rows: u64,
}

/// What was loaded.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GenReport {
    /// Rows per table after loading.
    pub tables: Vec<(String, u64)>,
    pub seconds: f64,
    pub rows_per_sec: f64,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GenError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("table {0} does not exist in the monolith")]
    MissingTable(String),
    #[error("table {0} already holds rows; generating into it would mix two histories")]
    NotEmpty(String),
    #[error("{table}: {cause}")]
    Query { table: String, cause: String },
    #[error("generator failed: {0}")]
    Internal(String),
}

impl GenError {
    fn query(table: &str, e: tokio_postgres::Error) -> Self {
        let cause = shardline_topology::describe_pg_error(&e);
        Self::Query {
            table: table.to_string(),
            cause,
        }
    }

    pub fn hint(&self) -> Option<String> {
        match self {
            Self::Connect(e) => Some(e.hint()),
            Self::MissingTable(_) => Some("create the bundled schema: `shardline dev up`, or apply schemas/*.sql (see the README)".into()),
            Self::NotEmpty(_) => Some("pass --truncate to empty the tables first".into()),
            _ => None,
        }
    }
}

/// Fills the monolith at `source` with a generated history.
pub async fn generate(
    source: &ConnString,
    request: &GenRequest,
    progress: impl Fn(Progress) + Send + Sync + 'static,
) -> Result<GenReport, GenError> {
    load::generate(source, request, Arc::new(progress)).await
}
