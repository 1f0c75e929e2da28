//! Copying one chunk: binary COPY out of the source under the job's
//! snapshot, routed tuple by tuple, binary COPY into each target that lacks
//! the chunk, committed with the chunk's done mark.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use shardline_pgcopy::{CopyReader, CopyWriter, TupleBatch, HEADER, TRAILER};
use shardline_topology::{Placement, TableName};
use tokio::sync::watch;
use tokio_postgres::Client;

use crate::catalog::TableDef;
use crate::error::BackfillError;
use crate::throttle::Throttle;

/// Bytes buffered per target before they are sent: large enough for few
/// round trips, small enough that memory stays bounded per worker.
const FLUSH_BYTES: usize = 256 * 1024;
/// Source bytes gathered before a batch is routed.
const ROUTE_BYTES: usize = 256 * 1024;

/// How a table's rows map onto its targets.
#[derive(Clone, Debug)]
pub enum Routing {
    /// By the shard key column at `key_index`; target `i` is shard `i`.
    Sharded {
        key_index: usize,
        placement: Placement,
    },
    /// Every row to every target (one target for an unsharded context).
    Everywhere,
}

/// A table being copied: its definition, routing and target names.
#[derive(Debug)]
pub struct TableCopy {
    /// The table's definition; for a read model, the shape of its query.
    pub def: TableDef,
    pub routing: Routing,
    /// Indices into the job's target list, shard order for sharded tables.
    pub targets: Vec<usize>,
    /// Read models: the query whose result is copied, whole, in place of
    /// the target table's rows.
    pub query: Option<String>,
}

/// One chunk of one table: a block range of the heap.
#[derive(Clone, Debug)]
pub struct Chunk {
    pub table: Arc<TableCopy>,
    pub generation: i32,
    pub number: i32,
    /// The partition read (`None`: the table itself).
    pub relation: Option<TableName>,
    pub first_block: i64,
    pub end_block: Option<i64>,
}

impl Chunk {
    fn select(&self) -> String {
        if let Some(query) = &self.table.query {
            return format!("COPY ({query}) TO STDOUT (FORMAT binary)");
        }
        let upper = match self.end_block {
            Some(end) => format!(" AND ctid < '({end},0)'::tid"),
            None => String::new(),
        };
        let relation = match &self.relation {
            Some(r) => r.quoted(),
            None => self.table.def.quoted(),
        };
        format!(
            "COPY (SELECT {} FROM {relation} WHERE ctid >= '({},0)'::tid{upper}) TO STDOUT (FORMAT binary)",
            self.table.def.column_list(),
            self.first_block
        )
    }
}

/// What copying a chunk did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Copied {
    pub rows: u64,
    pub bytes: u64,
}

/// A target connection, named for messages.
pub struct TargetConn<'a> {
    pub index: usize,
    pub name: &'a str,
    pub client: &'a Client,
}

/// Copies `chunk` into `targets` (those that lack it). Each target commits
/// the rows and the chunk's done mark together, or nothing.
pub async fn copy_chunk(
    reader: &Client,
    snapshot: &str,
    job: &str,
    chunk: &Chunk,
    targets: &[TargetConn<'_>],
    throttle: &Throttle,
    stop: &watch::Receiver<bool>,
) -> Result<Copied, BackfillError> {
    let table = &chunk.table;
    let name = &table.def.name;
    let source_error = |e: tokio_postgres::Error| BackfillError::Copy {
        table: name.clone(),
        chunk: chunk.number,
        target: "the source".into(),
        cause: cause(&e),
    };
    reader
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{}'",
            snapshot.replace('\'', "''")
        ))
        .await
        .map_err(source_error)?;
    let result = copy_within(reader, job, chunk, targets, throttle, stop).await;
    let _ = reader.batch_execute("ROLLBACK").await;
    if result.is_err() {
        for t in targets {
            let _ = t.client.batch_execute("ROLLBACK").await;
        }
    }
    result
}

async fn copy_within(
    reader: &Client,
    job: &str,
    chunk: &Chunk,
    targets: &[TargetConn<'_>],
    throttle: &Throttle,
    stop: &watch::Receiver<bool>,
) -> Result<Copied, BackfillError> {
    let table = &chunk.table;
    let name = table.def.name.clone();
    let target_error = |t: &TargetConn<'_>, e: tokio_postgres::Error| BackfillError::Copy {
        table: name.clone(),
        chunk: chunk.number,
        target: t.name.to_string(),
        cause: cause(&e),
    };
    let copy_in = format!(
        "COPY {} ({}) FROM STDIN (FORMAT binary)",
        table.def.quoted(),
        table.def.column_list()
    );
    let mut sinks = Vec::new();
    let begin = match table.query {
        Some(_) => format!("BEGIN; TRUNCATE {}", table.def.quoted()),
        None => "BEGIN".to_string(),
    };
    for t in targets {
        t.client
            .batch_execute(&begin)
            .await
            .map_err(|e| target_error(t, e))?;
        let sink = t
            .client
            .copy_in::<_, Bytes>(&copy_in)
            .await
            .map_err(|e| target_error(t, e))?;
        let mut sink = Box::pin(sink);
        sink.send(Bytes::from_static(HEADER))
            .await
            .map_err(|e| target_error(t, e))?;
        sinks.push(sink);
    }
    // Position of each target of the table within `targets` (absent when
    // that target already holds the chunk).
    let slot_of: Vec<Option<usize>> = table
        .targets
        .iter()
        .map(|ti| targets.iter().position(|t| t.index == *ti))
        .collect();

    let stream = reader
        .copy_out(&chunk.select())
        .await
        .map_err(|e| BackfillError::Copy {
            table: name.clone(),
            chunk: chunk.number,
            target: "the source".into(),
            cause: cause(&e),
        })?;
    futures_util::pin_mut!(stream);
    let mut framer = CopyReader::new();
    let mut buffers: Vec<CopyWriter> = targets.iter().map(|_| CopyWriter::continuation()).collect();
    let mut rows_per_target = vec![0u64; targets.len()];
    let mut copied = Copied::default();
    // PostgreSQL sends one CopyData message per row: gather them into
    // batches before routing, so the hand-off to the rayon pool (and its
    // thread wake-ups) is paid per batch, not per row.
    let mut gathered = bytes::BytesMut::with_capacity(ROUTE_BYTES);
    let mut ended = false;
    while !ended {
        match stream.next().await {
            Some(data) => {
                let data = data.map_err(|e| BackfillError::Copy {
                    table: name.clone(),
                    chunk: chunk.number,
                    target: "the source".into(),
                    cause: cause(&e),
                })?;
                gathered.extend_from_slice(&data);
                if gathered.len() < ROUTE_BYTES {
                    continue;
                }
            }
            None => ended = true,
        }
        if *stop.borrow() {
            return Err(BackfillError::Interrupted);
        }
        copied.bytes += gathered.len() as u64;
        let batch = framer.feed(&gathered).map_err(|e| BackfillError::Format {
            table: name.clone(),
            cause: e.to_string(),
        })?;
        gathered.clear();
        if batch.is_empty() {
            continue;
        }
        copied.rows += batch.len() as u64;
        throttle.take(batch.len() as u64).await;
        let routed = route(Arc::clone(table), batch).await?;
        for (shard_slot, tuples) in routed.into_iter().enumerate() {
            let Some(i) = slot_of[shard_slot] else {
                continue;
            };
            rows_per_target[i] += tuples.rows;
            buffers[i].extend(&tuples.bytes);
            if buffers[i].len() >= FLUSH_BYTES {
                let bytes = buffers[i].take();
                sinks[i]
                    .send(bytes)
                    .await
                    .map_err(|e| target_error(&targets[i], e))?;
            }
        }
    }
    framer.finish().map_err(|e| BackfillError::Format {
        table: name.clone(),
        cause: e.to_string(),
    })?;
    for (i, t) in targets.iter().enumerate() {
        let mut rest = buffers[i].take().to_vec();
        rest.extend_from_slice(&TRAILER);
        sinks[i]
            .send(Bytes::from(rest))
            .await
            .map_err(|e| target_error(t, e))?;
        sinks[i]
            .as_mut()
            .finish()
            .await
            .map_err(|e| target_error(t, e))?;
        t.client
            .execute(
                "INSERT INTO shardline.backfill_done (job_name, table_name, generation, chunk_no, rows) VALUES ($1, $2, $3, $4, $5)",
                &[&job, &name, &chunk.generation, &chunk.number, &(rows_per_target[i] as i64)],
            )
            .await
            .map_err(|e| target_error(t, e))?;
    }
    // Commit last, together: a failure before this point leaves no target
    // with part of the chunk.
    for t in targets {
        t.client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| target_error(t, e))?;
    }
    Ok(copied)
}

/// Tuples bound for one target of the table.
#[derive(Default)]
struct Routed {
    bytes: Vec<u8>,
    rows: u64,
}

/// Splits a batch by target on the rayon pool: hashing every shard key is
/// the CPU work of a backfill.
async fn route(table: Arc<TableCopy>, batch: TupleBatch) -> Result<Vec<Routed>, BackfillError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    rayon::spawn(move || {
        let _ = tx.send(route_now(&table, &batch));
    });
    rx.await.map_err(|_| BackfillError::Format {
        table: String::new(),
        cause: "the routing thread stopped".into(),
    })?
}

fn route_now(table: &TableCopy, batch: &TupleBatch) -> Result<Vec<Routed>, BackfillError> {
    let mut out: Vec<Routed> = table.targets.iter().map(|_| Routed::default()).collect();
    match &table.routing {
        Routing::Everywhere => {
            for r in &mut out {
                for t in batch.iter() {
                    r.bytes.extend_from_slice(t.raw());
                }
                r.rows = batch.len() as u64;
            }
        }
        Routing::Sharded {
            key_index,
            placement,
        } => {
            for t in batch.iter() {
                let Some(key) = t.field(*key_index) else {
                    return Err(BackfillError::NullShardKey {
                        table: table.def.name.clone(),
                        column: table.def.columns[*key_index].name.clone(),
                        count: 1,
                    });
                };
                let shard = placement
                    .shard_of_binary(key)
                    .map_err(|e| BackfillError::Format {
                        table: table.def.name.clone(),
                        cause: e.to_string(),
                    })?;
                out[shard].bytes.extend_from_slice(t.raw());
                out[shard].rows += 1;
            }
        }
    }
    Ok(out)
}

fn cause(e: &tokio_postgres::Error) -> String {
    shardline_topology::describe_pg_error(e)
}
