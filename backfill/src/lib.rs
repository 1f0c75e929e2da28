//! Backfill: copy the monolith's history into shards, contexts and read
//! models, from one consistent point, in parallel, resumable at any instant.
//!
//! - [`prepare`] connects everywhere, reads each listed table's definition
//!   from the catalog ([`catalog`]) and compares it with every target
//!   (creating missing tables later): any difference stops the job before a
//!   byte is copied.
//! - The job's consistent point is a replication slot created with an
//!   exported snapshot ([`snapshot`]): every reader imports it, and CDC
//!   later streams from that slot, so no change is missed or applied twice.
//! - Tables are split into heap block ranges ([`plan`]); workers — tasks of
//!   this process or other processes on other machines — claim chunks from
//!   the control schema on the source ([`control`]) with `FOR UPDATE SKIP
//!   LOCKED` and copy each one ([`copy`]): binary COPY out, routed by the
//!   shard key on the rayon pool, binary COPY into each target together
//!   with the chunk's done mark, in one target transaction.
//! - A killed job resumes with the next run. If the snapshot died with it,
//!   the run starts a new *generation*: tables already complete keep their
//!   copy, tables cut short are emptied on their targets and copied again
//!   from a new snapshot, whose position is recorded per table so CDC skips
//!   the changes that copy already holds.
//! - Read models ([`readmodel`]) are computed from the same snapshot and
//!   copied whole into their context.
//! - Targets hold each table whole, created from the source's definition
//!   by the schema crate, whose `carry` says what they cannot hold (a foreign
//!   key to another database, a trigger, …), which refuses the job unless
//!   the topology lets it go. Sequence positions are carried at the end.

pub mod catalog;
pub mod control;
pub mod copy;
mod create;
mod error;
mod job;
pub mod plan;
mod prepare;
pub mod readmodel;
pub mod snapshot;
mod throttle;
mod worker;

use std::sync::Arc;

use serde::Serialize;
use shardline_topology::Topology;
use tokio::sync::watch;

pub use error::BackfillError;
pub use prepare::Prepared;
pub use shardline_schema::carry::Obstacle;

/// Rows per chunk by default: a few seconds of copying, so a kill loses
/// little and progress moves visibly.
pub const DEFAULT_CHUNK_ROWS: u64 = 200_000;

/// The job name (and slot name) used unless told otherwise; `shardline cdc`
/// streams from the slot of the same name.
pub const DEFAULT_JOB: &str = "shardline";

#[derive(Clone, Debug)]
pub struct BackfillRequest {
    pub job: String,
    /// Only these tables (and read models); all listed in the topology when `None`.
    pub tables: Option<Vec<String>>,
    pub workers: usize,
    pub chunk_rows: u64,
    pub max_rows_per_sec: Option<u64>,
    pub restart: bool,
    /// Create missing target tables from the source definition.
    pub create: bool,
    /// Build secondary indexes of created tables after the copy.
    pub defer_indexes: bool,
}

impl Default for BackfillRequest {
    fn default() -> Self {
        Self {
            job: DEFAULT_JOB.into(),
            tables: None,
            workers: 2,
            chunk_rows: DEFAULT_CHUNK_ROWS,
            max_rows_per_sec: None,
            restart: false,
            create: true,
            defer_indexes: false,
        }
    }
}

/// Progress as it happens.
#[derive(Clone, Debug)]
pub enum Event {
    Planned {
        table: String,
        est_rows: u64,
    },
    ChunkDone {
        table: String,
        rows: u64,
        bytes: u64,
    },
}

/// One table of a dry run's plan.
#[derive(Clone, Debug, Serialize)]
pub struct TablePlan {
    pub table: String,
    pub read_model: bool,
    pub chunks: usize,
    pub est_rows: i64,
    pub est_bytes: i64,
    /// Each target with the rows it would receive (sampled for shards).
    pub targets: Vec<(String, i64)>,
    /// Targets on which the table would be created.
    pub create: usize,
    /// What its targets cannot hold as the source has it (see
    /// `shardline_schema::carry`).
    pub obstacles: Vec<Obstacle>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TableReport {
    pub table: String,
    /// Rows this run copied (chunks copied by earlier runs not included).
    pub rows: u64,
    pub bytes: u64,
    pub chunks: u32,
    pub targets: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct BackfillReport {
    pub job: String,
    pub slot: String,
    /// The slot's consistent point: CDC starts here.
    pub consistent_lsn: String,
    pub generation: i32,
    /// Every chunk of every table is committed on every target.
    pub complete: bool,
    pub tables: Vec<TableReport>,
    pub seconds: f64,
    pub rows_per_sec: f64,
}

/// Checks everything a run needs; writes nothing.
pub async fn prepare(
    topology: &Topology,
    request: &BackfillRequest,
) -> Result<Prepared, BackfillError> {
    prepare::prepare(topology, request).await
}

/// The plan of a run, for `--dry-run`.
pub async fn dry_run(
    prepared: &Prepared,
    request: &BackfillRequest,
) -> Result<Vec<TablePlan>, BackfillError> {
    prepare::dry_run(prepared, request).await
}

/// Runs, resumes or joins the job until every chunk is copied, `stop`
/// turns true (chunks in flight roll back), or an error stops it.
pub async fn run(
    prepared: Prepared,
    request: &BackfillRequest,
    stop: watch::Receiver<bool>,
    on_event: impl Fn(Event) + Send + Sync + 'static,
) -> Result<BackfillReport, BackfillError> {
    let refused = prepared.refused();
    if !refused.is_empty() {
        return Err(BackfillError::Obstacles(
            refused.iter().map(|o| o.describe()).collect(),
        ));
    }
    job::run(prepared, request, stop, Arc::new(on_event)).await
}
