//! Parquet files of one input stream, with bounded memory.
//!
//! A [`Sink`] keeps one open [`ArrowWriter`] per partition directory. The
//! Arrow writer holds a whole row group in memory until it is flushed, so
//! a row group ends at `row_group_rows` rows, when the file's buffered
//! bytes pass its share of the memory budget, and (largest first) whenever
//! all open files together pass the sink's budget. At most
//! `max_open_files` are open: the least recently written is closed and a
//! later row of its partition starts a new file. A file also ends at
//! `max_file_rows`.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;

/// How a sink lays out and bounds its files.
#[derive(Clone, Debug)]
pub struct SinkOptions {
    pub props: WriterProperties,
    /// A row group ends when its file buffers this many bytes.
    pub row_group_bytes: usize,
    /// Bytes of row groups being built, over all of this sink's open files.
    pub buffer_bytes: usize,
    pub max_open_files: usize,
    pub max_file_rows: Option<u64>,
}

/// A finished file.
#[derive(Clone, Debug)]
pub struct FileDone {
    pub path: PathBuf,
    pub rows: u64,
    pub bytes: u64,
}

struct OpenFile {
    writer: ArrowWriter<BufWriter<File>>,
    path: PathBuf,
    rows: u64,
    last_used: u64,
}

/// Writes the batches of one stream (one shard) under a directory.
pub struct Sink {
    dir: PathBuf,
    /// Distinguishes this stream's files from other streams' in the same
    /// partition directory.
    stream: usize,
    schema: SchemaRef,
    opts: SinkOptions,
    open: HashMap<String, OpenFile>,
    next_file: usize,
    tick: u64,
    done: Vec<FileDone>,
    rows: Arc<AtomicU64>,
}

impl Sink {
    pub fn new(
        dir: &Path,
        stream: usize,
        schema: SchemaRef,
        opts: SinkOptions,
        rows: Arc<AtomicU64>,
    ) -> Self {
        Self {
            dir: dir.to_path_buf(),
            stream,
            schema,
            opts,
            open: HashMap::new(),
            next_file: 0,
            tick: 0,
            done: Vec::new(),
            rows,
        }
    }

    /// Appends rows to the partition directory `partition` (`""` for none).
    pub fn write(&mut self, partition: &str, mut batch: RecordBatch) -> Result<(), SinkError> {
        while batch.num_rows() > 0 {
            if !self.open.contains_key(partition) {
                self.open_file(partition)?;
            }
            self.tick += 1;
            let per_file_bytes = self.per_file_bytes();
            let file = self.open.get_mut(partition).expect("opened above");
            file.last_used = self.tick;
            let room = self
                .opts
                .max_file_rows
                .map_or(u64::MAX, |max| max.saturating_sub(file.rows).max(1));
            let take = (batch.num_rows() as u64).min(room) as usize;
            let part = batch.slice(0, take);
            batch = batch.slice(take, batch.num_rows() - take);
            file.writer
                .write(&part)
                .map_err(|e| SinkError::at(&file.path, e))?;
            file.rows += take as u64;
            self.rows.fetch_add(take as u64, Ordering::Relaxed);
            let full = self.opts.max_file_rows.is_some_and(|max| file.rows >= max);
            if full {
                self.close(partition)?;
            } else if file.writer.in_progress_size() > per_file_bytes {
                file.writer
                    .flush()
                    .map_err(|e| SinkError::at(&file.path, e))?;
            }
        }
        self.bound_memory()
    }

    /// One open file may use this much before its row group is flushed.
    fn per_file_bytes(&self) -> usize {
        self.opts.row_group_bytes.min(self.opts.buffer_bytes)
    }

    /// Flushes the largest row groups until the open files fit the budget.
    fn bound_memory(&mut self) -> Result<(), SinkError> {
        loop {
            let total: usize = self
                .open
                .values()
                .map(|f| f.writer.in_progress_size())
                .sum();
            if total <= self.opts.buffer_bytes {
                return Ok(());
            }
            let largest = self
                .open
                .values_mut()
                .max_by_key(|f| f.writer.in_progress_size())
                .expect("some file is open when bytes are buffered");
            largest
                .writer
                .flush()
                .map_err(|e| SinkError::at(&largest.path, e))?;
        }
    }

    fn open_file(&mut self, partition: &str) -> Result<(), SinkError> {
        if self.open.len() >= self.opts.max_open_files {
            let oldest = self
                .open
                .iter()
                .min_by_key(|(_, f)| f.last_used)
                .map(|(k, _)| k.clone())
                .expect("max_open_files is at least 1");
            self.close(&oldest)?;
        }
        let dir = self.dir.join(partition);
        std::fs::create_dir_all(&dir).map_err(|e| SinkError::Io {
            path: dir.clone(),
            cause: e.to_string(),
        })?;
        let path = dir.join(format!(
            "part-{:03}-{:05}.parquet",
            self.stream, self.next_file
        ));
        self.next_file += 1;
        let file = File::create(&path).map_err(|e| SinkError::Io {
            path: path.clone(),
            cause: e.to_string(),
        })?;
        let writer = ArrowWriter::try_new(
            BufWriter::with_capacity(1 << 20, file),
            self.schema.clone(),
            Some(self.opts.props.clone()),
        )
        .map_err(|e| SinkError::at(&path, e))?;
        self.open.insert(
            partition.to_string(),
            OpenFile {
                writer,
                path,
                rows: 0,
                last_used: self.tick,
            },
        );
        Ok(())
    }

    fn close(&mut self, partition: &str) -> Result<(), SinkError> {
        let Some(f) = self.open.remove(partition) else {
            return Ok(());
        };
        let file = f
            .writer
            .into_inner()
            .map_err(|e| SinkError::at(&f.path, e))?
            .into_inner()
            .map_err(|e| SinkError::Io {
                path: f.path.clone(),
                cause: e.error().to_string(),
            })?;
        file.sync_all().map_err(|e| SinkError::Io {
            path: f.path.clone(),
            cause: e.to_string(),
        })?;
        let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        self.done.push(FileDone {
            path: f.path,
            rows: f.rows,
            bytes,
        });
        Ok(())
    }

    /// Closes every file and lists what was written.
    /// The first stream writes one empty file if it wrote none, so an
    /// export of no rows still carries its schema.
    pub fn finish(mut self) -> Result<Vec<FileDone>, SinkError> {
        if self.stream == 0 && self.done.is_empty() && self.open.is_empty() {
            self.open_file("")?;
        }
        let mut keys: Vec<String> = self.open.keys().cloned().collect();
        keys.sort();
        for k in keys {
            self.close(&k)?;
        }
        Ok(self.done)
    }
}

/// A file could not be written.
#[derive(Debug, Clone)]
pub enum SinkError {
    Io { path: PathBuf, cause: String },
}

impl SinkError {
    fn at(path: &Path, e: parquet::errors::ParquetError) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            cause: e.to_string(),
        }
    }
}
