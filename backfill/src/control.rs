//! Job state in the databases themselves (the `shardline` schema).
//!
//! On the source: the job (slot, consistent point, snapshot generation),
//! each table's snapshot point and each chunk; workers on any machine claim
//! chunks with `FOR UPDATE SKIP LOCKED` and hold the row lock while they copy.
//! On each target: a done mark per (table, generation, chunk), written in
//! the same transaction as the chunk's rows, so a target says exactly which
//! chunks it holds whatever happened to the process that wrote them.

use tokio_postgres::Client;

use crate::catalog::query_error;
use crate::error::BackfillError;

pub const SOURCE_DDL: &str = "CREATE SCHEMA IF NOT EXISTS shardline;
CREATE TABLE IF NOT EXISTS shardline.backfill_job (
    job_name       text PRIMARY KEY,
    slot_name      text NOT NULL,
    consistent_lsn pg_lsn NOT NULL,
    snapshot_name  text NOT NULL,
    generation     int NOT NULL,
    state          text NOT NULL,
    started_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz
);
CREATE TABLE IF NOT EXISTS shardline.backfill_table (
    job_name     text NOT NULL,
    table_name   text NOT NULL,
    generation   int NOT NULL,
    -- changes committed at or before this point are in the copy
    snapshot_lsn pg_lsn NOT NULL,
    state        text NOT NULL,
    PRIMARY KEY (job_name, table_name)
);
CREATE TABLE IF NOT EXISTS shardline.backfill_chunk (
    job_name    text NOT NULL,
    table_name  text NOT NULL,
    generation  int NOT NULL,
    chunk_no    int NOT NULL,
    first_block bigint NOT NULL,
    -- NULL: to the end of the table, however far it has grown
    end_block   bigint,
    done        boolean NOT NULL DEFAULT false,
    rows        bigint,
    PRIMARY KEY (job_name, table_name, generation, chunk_no)
);
-- the partition a chunk reads (NULL: the table itself)
ALTER TABLE shardline.backfill_chunk ADD COLUMN IF NOT EXISTS relation text;";

pub const TARGET_DDL: &str = "CREATE SCHEMA IF NOT EXISTS shardline;
CREATE TABLE IF NOT EXISTS shardline.backfill_done (
    job_name   text NOT NULL,
    table_name text NOT NULL,
    generation int NOT NULL,
    chunk_no   int NOT NULL,
    rows       bigint NOT NULL,
    done_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_name, table_name, generation, chunk_no)
);";

/// A job as the source records it.
#[derive(Clone, Debug)]
pub struct Job {
    pub name: String,
    pub slot: String,
    pub consistent_lsn: String,
    pub snapshot: String,
    pub generation: i32,
    pub state: String,
}

pub async fn load_job(client: &Client, db: &str, name: &str) -> Result<Option<Job>, BackfillError> {
    let row = client
        .query_opt(
            "SELECT slot_name, consistent_lsn::text, snapshot_name, generation, state
               FROM shardline.backfill_job WHERE job_name = $1",
            &[&name],
        )
        .await
        .map_err(|e| query_error(db, e))?;
    Ok(row.map(|r| Job {
        name: name.to_string(),
        slot: r.get(0),
        consistent_lsn: r.get(1),
        snapshot: r.get(2),
        generation: r.get(3),
        state: r.get(4),
    }))
}

/// The chunks of `table` in `generation` a target already holds.
pub async fn done_on_target(
    client: &Client,
    db: &str,
    job: &str,
    table: &str,
    generation: i32,
) -> Result<Vec<i32>, BackfillError> {
    Ok(client
        .query(
            "SELECT chunk_no FROM shardline.backfill_done WHERE job_name = $1 AND table_name = $2 AND generation = $3",
            &[&job, &table, &generation],
        )
        .await
        .map_err(|e| query_error(db, e))?
        .iter()
        .map(|r| r.get(0))
        .collect())
}
