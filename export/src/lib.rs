//! Export: tables, whole sharded tables and read models to Parquet.
//!
//! [`export`] plans where to read ([`plan`]: the source, one database, or
//! every shard of a context), describes the result and maps each column to
//! an exact Arrow type ([`types`]), then streams every database at once:
//!
//! ```text
//! binary COPY (one REPEATABLE READ transaction per database)
//!   → CopyReader cuts ~2 MiB batches of tuples       (tokio task)
//!   → BatchDecoder → RecordBatch, Partitioner splits (rayon pool)
//!   → Sink: ArrowWriter per partition directory      (one blocking thread per database)
//! ```
//!
//! Batches are decoded in parallel but written in order, through a bounded
//! channel, so memory stays bounded whatever the table's size: a few
//! batches in flight per database plus the row groups the sinks buffer
//! (`buffer_bytes`, flushed largest-first when exceeded). Files are staged
//! and committed with a `_SUCCESS` marker ([`output`]).
//!
//! Shards are separate servers: each is read under its own consistent
//! snapshot; there is no snapshot across shards.

pub mod decode;
mod error;
pub mod output;
pub mod partition;
pub mod plan;
pub mod sink;
pub mod types;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arrow_array::RecordBatch;
use bytes::BytesMut;
use futures_util::StreamExt;
use parquet::basic::{Compression as ParquetCompression, ZstdLevel};
use parquet::file::properties::{WriterProperties, WriterVersion};
use serde::Serialize;
use shardline_pgcopy::CopyReader;
use shardline_topology::{ConnString, Topology};
use tokio::sync::{oneshot, watch};
use tokio_postgres::Client;

pub use decode::{BatchDecoder, DecodeError};
pub use error::ExportError;
pub use partition::{PartitionBy, Partitioner};
pub use types::{ColumnSpec, NumericPolicy, ValueType};

use crate::output::Output;
use crate::partition::PartitionError;
use crate::sink::{FileDone, Sink, SinkError, SinkOptions};

/// Rows per row group unless asked otherwise (the parquet crate's default:
/// large enough for good compression and fast scans).
pub const DEFAULT_ROW_GROUP_ROWS: usize = 1024 * 1024;
/// A row group also ends when its file buffers this many bytes, so wide
/// rows cannot make a row group (all in memory until flushed) huge.
pub const DEFAULT_ROW_GROUP_BYTES: usize = 128 << 20;
/// Memory for row groups being built, shared by every open file of every
/// database: the bulk of the export's memory.
pub const DEFAULT_BUFFER_BYTES: usize = 256 << 20;
/// Open files per database: each holds a row group in memory and a file
/// descriptor; more partitions than this rotate through new files.
pub const DEFAULT_MAX_OPEN_FILES: usize = 32;
/// COPY bytes cut into one batch: big enough that per-batch costs vanish,
/// small enough that a few in flight per database cost little memory.
const BATCH_BYTES: usize = 2 << 20;
/// Most rows in one batch, for narrow tables.
const BATCH_ROWS: usize = 65_536;
/// Batches decoded or queued per database ahead of its writer.
const IN_FLIGHT: usize = 4;

/// What to export.
#[derive(Clone, Debug)]
pub enum What {
    Table(String),
    Query(String),
}

/// Where to read it.
#[derive(Clone, Debug, Default)]
pub enum From {
    /// The table's context (or read model's), else the source.
    #[default]
    Default,
    Source,
    Context(String),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    Zstd,
    Snappy,
    Lz4,
    None,
}

impl Compression {
    fn parquet(self) -> ParquetCompression {
        match self {
            Self::Zstd => ParquetCompression::ZSTD(ZstdLevel::default()),
            Self::Snappy => ParquetCompression::SNAPPY,
            Self::Lz4 => ParquetCompression::LZ4_RAW,
            Self::None => ParquetCompression::UNCOMPRESSED,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ExportRequest {
    pub what: What,
    pub from: From,
    pub out: PathBuf,
    pub partition_by: Option<PartitionBy>,
    pub compression: Compression,
    pub row_group_rows: usize,
    pub row_group_bytes: usize,
    pub buffer_bytes: usize,
    pub max_file_rows: Option<u64>,
    pub max_open_files: usize,
    pub numeric: NumericPolicy,
    pub cast_unknown: bool,
    pub overwrite: bool,
    /// Parquet format 2 pages and encodings; version 1 (the default) is
    /// read by every reader.
    pub parquet_v2: bool,
}

impl ExportRequest {
    pub fn new(what: What, out: impl Into<PathBuf>) -> Self {
        Self {
            what,
            from: From::Default,
            out: out.into(),
            partition_by: None,
            compression: Compression::Zstd,
            row_group_rows: DEFAULT_ROW_GROUP_ROWS,
            row_group_bytes: DEFAULT_ROW_GROUP_BYTES,
            buffer_bytes: DEFAULT_BUFFER_BYTES,
            max_file_rows: None,
            max_open_files: DEFAULT_MAX_OPEN_FILES,
            numeric: NumericPolicy::Text,
            cast_unknown: false,
            overwrite: false,
            parquet_v2: false,
        }
    }
}

/// Rows written so far and the planner's estimate, for progress displays.
#[derive(Debug, Default)]
pub struct Progress {
    pub rows: Arc<AtomicU64>,
    pub estimated_rows: AtomicU64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub out: PathBuf,
    pub rows: u64,
    pub bytes: u64,
    pub files: usize,
    pub partitions: usize,
    pub seconds: f64,
    pub rows_per_sec: f64,
    pub compression: Compression,
    pub sources: Vec<SourceSummary>,
    pub consistency: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct SourceSummary {
    pub database: String,
    pub rows: u64,
    pub files: usize,
}

/// Exports per `request`; on success the output directory holds the
/// files and `_SUCCESS`, on any failure nothing of this run.
pub async fn export(
    topology: &Topology,
    request: &ExportRequest,
    progress: &Progress,
    stop: Option<watch::Receiver<bool>>,
) -> Result<Summary, ExportError> {
    let started = Instant::now();
    let plan = plan::plan(topology, &request.what, &request.from)?;
    let out = Output::prepare(&request.out, request.overwrite)?;
    match run(&plan, request, progress, stop, &out).await {
        Ok(streams) => {
            let dir = out.commit()?;
            Ok(summarise(
                dir,
                request,
                &plan.databases,
                streams,
                started.elapsed().as_secs_f64(),
            ))
        }
        Err(e) => {
            out.abort();
            Err(e)
        }
    }
}

async fn run(
    plan: &plan::Plan,
    request: &ExportRequest,
    progress: &Progress,
    stop: Option<watch::Receiver<bool>>,
    out: &Output,
) -> Result<Vec<Vec<FileDone>>, ExportError> {
    let clients =
        futures_util::future::try_join_all(plan.databases.iter().map(|db| db.connect())).await?;
    let mut columns: Option<Vec<ColumnSpec>> = None;
    for (client, db) in clients.iter().zip(&plan.databases) {
        let cols = plan::describe(
            client,
            &db.to_string(),
            &plan.what,
            request.numeric,
            request.cast_unknown,
        )
        .await?;
        match &columns {
            None => columns = Some(cols),
            Some(first) => plan::same_shape(
                first,
                &plan.databases[0].to_string(),
                &cols,
                &db.to_string(),
            )?,
        }
        progress.estimated_rows.fetch_add(
            plan::estimate_rows(client, &plan.what).await,
            Ordering::Relaxed,
        );
    }
    let columns = columns.expect("a plan reads at least one database");
    let decoder = Arc::new(BatchDecoder::new(columns.clone()));
    let partitioner = Arc::new(
        Partitioner::new(request.partition_by.clone(), &columns, decoder.schema()).map_err(
            |e| match e {
                PartitionError::UnknownColumn { column, columns } => ExportError::UnknownColumn {
                    column,
                    columns: columns.join(", "),
                },
                PartitionError::WrongType { by, pg_type } => {
                    ExportError::PartitionType { by, pg_type }
                }
            },
        )?,
    );
    let copy_sql = plan.what.copy_sql(&columns);
    let streams = plan.databases.len();
    let opts = SinkOptions {
        props: writer_properties(request),
        row_group_bytes: request.row_group_bytes,
        buffer_bytes: (request.buffer_bytes / streams).max(1 << 20),
        max_open_files: request.max_open_files.max(1),
        max_file_rows: request.max_file_rows,
    };
    let tasks = clients
        .into_iter()
        .zip(&plan.databases)
        .enumerate()
        .map(|(i, (client, db))| {
            let sink = Sink::new(
                out.staging(),
                i,
                partitioner.file_schema().clone(),
                opts.clone(),
                progress.rows.clone(),
            );
            stream(
                client,
                db,
                copy_sql.clone(),
                decoder.clone(),
                partitioner.clone(),
                sink,
                stop.clone(),
            )
        });
    futures_util::future::try_join_all(tasks).await
}

fn writer_properties(request: &ExportRequest) -> WriterProperties {
    WriterProperties::builder()
        .set_writer_version(if request.parquet_v2 {
            WriterVersion::PARQUET_2_0
        } else {
            WriterVersion::PARQUET_1_0
        })
        .set_compression(request.compression.parquet())
        .set_max_row_group_size(request.row_group_rows.max(1))
        .set_created_by(format!("shardline {}", env!("CARGO_PKG_VERSION")))
        .build()
}

type Decoded = Result<Vec<(String, RecordBatch)>, DecodeError>;

/// Streams one database's COPY through decoding into its sink.
async fn stream(
    client: Client,
    db: &ConnString,
    copy_sql: String,
    decoder: Arc<BatchDecoder>,
    partitioner: Arc<Partitioner>,
    mut sink: Sink,
    stop: Option<watch::Receiver<bool>>,
) -> Result<Vec<FileDone>, ExportError> {
    let database = db.to_string();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<oneshot::Receiver<Decoded>>(IN_FLIGHT);
    let writer_db = database.clone();
    let writer = tokio::task::spawn_blocking(move || -> Result<Vec<FileDone>, ExportError> {
        while let Some(pending) = rx.blocking_recv() {
            let parts = pending
                .blocking_recv()
                .map_err(|_| ExportError::Copy {
                    database: writer_db.clone(),
                    cause: "a decoding task ended without a result".into(),
                })?
                .map_err(|e| ExportError::Value {
                    column: e.column,
                    database: writer_db.clone(),
                    reason: e.reason,
                })?;
            for (dir, batch) in parts {
                sink.write(&dir, batch).map_err(sink_error)?;
            }
        }
        sink.finish().map_err(sink_error)
    });
    let read = read(
        &client,
        &database,
        &copy_sql,
        &tx,
        &decoder,
        &partitioner,
        stop,
    )
    .await;
    drop(tx);
    let written = writer.await.map_err(|e| ExportError::Copy {
        database: database.clone(),
        cause: format!("the writer thread failed: {e}"),
    })?;
    // A decoding or writing error is the cause when both sides failed.
    let files = written?;
    read?;
    Ok(files)
}

fn sink_error(e: SinkError) -> ExportError {
    match e {
        SinkError::Io { path, cause } => ExportError::Io { path, cause },
    }
}

async fn read(
    client: &Client,
    database: &str,
    copy_sql: &str,
    tx: &tokio::sync::mpsc::Sender<oneshot::Receiver<Decoded>>,
    decoder: &Arc<BatchDecoder>,
    partitioner: &Arc<Partitioner>,
    stop: Option<watch::Receiver<bool>>,
) -> Result<(), ExportError> {
    let copy_error = |e: tokio_postgres::Error| ExportError::query(database, e);
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(copy_error)?;
    let copy = client.copy_out(copy_sql).await.map_err(copy_error)?;
    futures_util::pin_mut!(copy);
    let mut reader = CopyReader::new();
    let mut buf = BytesMut::with_capacity(BATCH_BYTES + (64 << 10));
    let mut messages = 0usize;
    let format_error = |e: shardline_pgcopy::CopyFormatError| ExportError::Copy {
        database: database.to_string(),
        cause: e.to_string(),
    };
    loop {
        let chunk = copy.next().await;
        let end = chunk.is_none();
        if let Some(chunk) = chunk {
            buf.extend_from_slice(&chunk.map_err(copy_error)?);
            messages += 1;
        }
        if !end && buf.len() < BATCH_BYTES && messages < BATCH_ROWS {
            continue;
        }
        if stop.as_ref().is_some_and(|s| *s.borrow()) {
            return Err(ExportError::Interrupted);
        }
        let batch = reader.feed(&buf).map_err(format_error)?;
        buf.clear();
        messages = 0;
        if !batch.is_empty() {
            let (done, pending) = oneshot::channel();
            let (decoder, partitioner) = (decoder.clone(), partitioner.clone());
            rayon::spawn(move || {
                let decoded = decoder.decode(&batch).and_then(|b| {
                    partitioner.split(b).map_err(|reason| DecodeError {
                        column: String::new(),
                        reason,
                    })
                });
                let _ = done.send(decoded);
            });
            if tx.send(pending).await.is_err() {
                // The writer stopped; its error is the one to report.
                return Ok(());
            }
        }
        if end {
            break;
        }
    }
    reader.finish().map_err(format_error)?;
    client.batch_execute("COMMIT").await.map_err(copy_error)?;
    Ok(())
}

fn summarise(
    dir: PathBuf,
    request: &ExportRequest,
    databases: &[ConnString],
    streams: Vec<Vec<FileDone>>,
    seconds: f64,
) -> Summary {
    let mut partitions = std::collections::BTreeSet::new();
    let mut sources = Vec::new();
    let (mut rows, mut bytes, mut files) = (0, 0, 0);
    for (db, done) in databases.iter().zip(&streams) {
        let r: u64 = done.iter().map(|f| f.rows).sum();
        for f in done {
            bytes += f.bytes;
            if let Some(parent) = f.path.parent() {
                partitions.insert(parent.to_path_buf());
            }
        }
        rows += r;
        files += done.len();
        sources.push(SourceSummary {
            database: db.to_string(),
            rows: r,
            files: done.len(),
        });
    }
    Summary {
        out: dir,
        rows,
        bytes,
        files,
        partitions: if request.partition_by.is_some() {
            partitions.len()
        } else {
            0
        },
        seconds,
        rows_per_sec: rows as f64 / seconds.max(1e-9),
        compression: request.compression,
        sources,
        consistency: if databases.len() > 1 {
            "each database read under its own REPEATABLE READ snapshot; separate servers share no snapshot".into()
        } else {
            "one REPEATABLE READ snapshot".into()
        },
    }
}
