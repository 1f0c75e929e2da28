//! Workers: claim a chunk, copy it into the targets that lack it, mark it
//! done; retry a chunk whose target went away.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use shardline_topology::{ConnString, TableName};
use tokio::sync::watch;
use tokio_postgres::Client;

use crate::catalog::query_error;
use crate::control::{self, Job};
use crate::copy::{copy_chunk, Chunk, TableCopy, TargetConn};
use crate::error::BackfillError;
use crate::throttle::Throttle;
use crate::Event;

/// How often a copy that failed on a lost target is tried again, and the
/// first wait between tries (doubling after each).
const RETRIES: u32 = 4;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

pub(crate) struct Shared {
    pub(crate) job: Job,
    pub(crate) prepared_targets: Vec<ConnString>,
    pub(crate) source: ConnString,
    pub(crate) tables: HashMap<String, Arc<TableCopy>>,
    pub(crate) throttle: Arc<Throttle>,
    pub(crate) on_event: Arc<dyn Fn(Event) + Send + Sync>,
    /// The snapshot's holder waits for chunks other processes still copy.
    pub(crate) wait_for_others: bool,
}

type Totals = HashMap<String, (u64, u64, u32)>;

/// Claims chunks until none is left, copying each into the targets that
/// lack it. The claim's row lock is held while the chunk is copied, so a
/// worker that dies releases its chunk to the others.
pub(crate) async fn worker(
    _id: usize,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) -> Result<Totals, BackfillError> {
    let source_name = shared.source.to_string();
    let control = shared.source.connect().await?;
    let reader = shared.source.connect().await?;
    let mut clients: HashMap<usize, Client> = HashMap::new();
    let mut totals = Totals::new();
    loop {
        if *stop.borrow() {
            return Ok(totals);
        }
        control
            .batch_execute("BEGIN")
            .await
            .map_err(|e| query_error(&source_name, e))?;
        let claimed = control
            .query_opt(
                "SELECT c.table_name, c.generation, c.chunk_no, c.first_block, c.end_block, c.relation
                   FROM shardline.backfill_chunk c
                   JOIN shardline.backfill_table t USING (job_name, table_name, generation)
                  WHERE c.job_name = $1 AND NOT c.done
                  ORDER BY c.table_name, c.chunk_no
                  LIMIT 1 FOR UPDATE OF c SKIP LOCKED",
                &[&shared.job.name],
            )
            .await
            .map_err(|e| query_error(&source_name, e))?;
        let Some(row) = claimed else {
            control
                .batch_execute("COMMIT")
                .await
                .map_err(|e| query_error(&source_name, e))?;
            let pending: i64 = control
                .query_one(
                    "SELECT count(*) FROM shardline.backfill_chunk c JOIN shardline.backfill_table t USING (job_name, table_name, generation)
                      WHERE c.job_name = $1 AND NOT c.done",
                    &[&shared.job.name],
                )
                .await
                .map_err(|e| query_error(&source_name, e))?
                .get(0);
            if pending == 0 || !shared.wait_for_others {
                return Ok(totals);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        let table_name: String = row.get(0);
        let Some(table) = shared.tables.get(&table_name).cloned() else {
            // A table of this job that this run was not asked to copy.
            control
                .batch_execute("ROLLBACK")
                .await
                .map_err(|e| query_error(&source_name, e))?;
            return Ok(totals);
        };
        let relation = match row.get::<_, Option<String>>(5) {
            None => None,
            Some(r) => Some(TableName::parse(&r).map_err(|e| BackfillError::Query {
                database: source_name.clone(),
                cause: format!("shardline.backfill_chunk: {e}"),
                lost: false,
            })?),
        };
        let chunk = Chunk {
            table,
            generation: row.get(1),
            number: row.get(2),
            relation,
            first_block: row.get(3),
            end_block: row.get(4),
        };
        let copied = copy_with_retries(&shared, &reader, &mut clients, &chunk, &stop).await;
        let copied = match copied {
            Ok(c) => c,
            Err(e) => {
                let _ = control.batch_execute("ROLLBACK").await;
                return Err(e);
            }
        };
        control
            .execute(
                "UPDATE shardline.backfill_chunk SET done = true, rows = $5
                  WHERE job_name = $1 AND table_name = $2 AND generation = $3 AND chunk_no = $4",
                &[
                    &shared.job.name,
                    &table_name,
                    &chunk.generation,
                    &chunk.number,
                    &(copied.rows as i64),
                ],
            )
            .await
            .map_err(|e| query_error(&source_name, e))?;
        control
            .batch_execute("COMMIT")
            .await
            .map_err(|e| query_error(&source_name, e))?;
        let e = totals.entry(table_name.clone()).or_default();
        e.0 += copied.rows;
        e.1 += copied.bytes;
        e.2 += 1;
        (shared.on_event)(Event::ChunkDone {
            table: table_name,
            rows: copied.rows,
            bytes: copied.bytes,
        });
    }
}

async fn copy_with_retries(
    shared: &Shared,
    reader: &Client,
    clients: &mut HashMap<usize, Client>,
    chunk: &Chunk,
    stop: &watch::Receiver<bool>,
) -> Result<crate::copy::Copied, BackfillError> {
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = copy_once(shared, reader, clients, chunk, stop).await;
        match result {
            Err(e) if e.is_transient() && attempt < RETRIES && !*stop.borrow() => {
                tracing::warn!(error = %e, attempt, "retrying chunk after {backoff:?}");
                // A lost target connection is replaced on the next try.
                clients.retain(|_, c| !c.is_closed());
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            other => return other,
        }
    }
}

async fn copy_once(
    shared: &Shared,
    reader: &Client,
    clients: &mut HashMap<usize, Client>,
    chunk: &Chunk,
    stop: &watch::Receiver<bool>,
) -> Result<crate::copy::Copied, BackfillError> {
    let mut needed = Vec::new();
    for &i in &chunk.table.targets {
        if let std::collections::hash_map::Entry::Vacant(slot) = clients.entry(i) {
            let client =
                shared.prepared_targets[i]
                    .connect()
                    .await
                    .map_err(|e| BackfillError::Copy {
                        table: chunk.table.def.name.clone(),
                        chunk: chunk.number,
                        target: shared.prepared_targets[i].to_string(),
                        cause: e.to_string(),
                    })?;
            // Like PostgreSQL's own apply workers: no triggers and no foreign
            // key checks for rows that were valid on the source, so tables
            // can be copied in any order. Needs superuser; without it the
            // copy still works, and a foreign key violation is retried.
            if let Err(e) = client
                .batch_execute("SET session_replication_role = replica")
                .await
            {
                tracing::debug!(error = %e, "target keeps triggers and foreign key checks");
            }
            slot.insert(client);
        }
        let name = shared.prepared_targets[i].to_string();
        let done = control::done_on_target(
            &clients[&i],
            &name,
            &shared.job.name,
            &chunk.table.def.name,
            chunk.generation,
        )
        .await
        .map_err(|e| BackfillError::Copy {
            table: chunk.table.def.name.clone(),
            chunk: chunk.number,
            target: name.clone(),
            cause: e.to_string(),
        })?;
        if !done.contains(&chunk.number) {
            needed.push(i);
        }
    }
    let names: Vec<String> = needed
        .iter()
        .map(|i| shared.prepared_targets[*i].to_string())
        .collect();
    let conns: Vec<TargetConn> = needed
        .iter()
        .zip(&names)
        .map(|(i, name)| TargetConn {
            index: *i,
            name,
            client: &clients[i],
        })
        .collect();
    if conns.is_empty() {
        return Ok(crate::copy::Copied::default());
    }
    copy_chunk(
        reader,
        &shared.job.snapshot,
        &shared.job.name,
        chunk,
        &conns,
        &shared.throttle,
        stop,
    )
    .await
}
