//! `shardline export`: tables, sharded tables, read models and queries to Parquet.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use shardline_export::{
    Compression, ExportError, ExportRequest, NumericPolicy, PartitionBy, Summary, What,
};

use super::exit::Interrupted;
use super::output::{print_json, Hint};
use super::progress::Progress;
use super::{signals, Format, Global};

/// Export a table, a whole sharded table, a read model or a query to Parquet
///
/// Rows stream from binary COPY into Arrow batches and Parquet files, with
/// exact types (numeric(p,s) as decimals, timestamps in microseconds, uuid,
/// json, arrays as lists) and bounded memory. A sharded table is read from
/// every shard at once, each under its own REPEATABLE READ snapshot (shards
/// are separate servers: there is no snapshot across them). Files appear
/// in DIR only when all are written, then `_SUCCESS` marks the export
/// complete.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  shardline export --table payments --out lake/payments --partition-by 'month(created_at)'
  shardline export --table merchant_daily_volume --out lake/volume
  shardline export --table payments --from source --out lake/payments-monolith --compression snappy
  shardline export --query 'SELECT merchant_id, sum(amount)::numeric(20,2) AS total FROM payments GROUP BY 1' --from transactions --out lake/totals
  shardline --format json export --table refunds --out lake/refunds --overwrite")]
#[command(group(clap::ArgGroup::new("what").required(true).args(["table", "query"])))]
pub struct Args {
    /// A table or read model (a sharded table: all its shards)
    #[arg(long, value_name = "T")]
    table: Option<String>,
    /// Any SELECT; runs on the source, or on every database of --from
    #[arg(long, value_name = "SQL")]
    query: Option<String>,
    /// `source` (the monolith) or a context of the topology [default: where the table lives, else the source]
    #[arg(long, value_name = "source|CONTEXT")]
    from: Option<String>,
    /// Output directory: new or empty (see --overwrite)
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Hive-style directories: COL, day(COL) or month(COL) (days and months of timestamptz in UTC)
    #[arg(long, value_name = "COL|day(COL)|month(COL)")]
    partition_by: Option<String>,
    #[arg(long, value_enum, default_value = "zstd")]
    compression: CompressionArg,
    /// Rows per row group (a row group also ends at --row-group-mib)
    #[arg(long, value_name = "N", default_value_t = shardline_export::DEFAULT_ROW_GROUP_ROWS)]
    row_group_rows: usize,
    /// Buffered MiB that end a row group early (wide rows)
    #[arg(long, value_name = "MIB", default_value_t = shardline_export::DEFAULT_ROW_GROUP_BYTES >> 20)]
    row_group_mib: usize,
    /// Start a new file after this many rows
    #[arg(long, value_name = "N")]
    max_file_rows: Option<u64>,
    /// Memory for row groups being built, over all open files (bounds the export's memory)
    #[arg(long, value_name = "MIB", default_value_t = shardline_export::DEFAULT_BUFFER_BYTES >> 20)]
    buffer_mib: usize,
    /// Open files per database; more partitions rotate through new files
    #[arg(long, value_name = "N", default_value_t = shardline_export::DEFAULT_MAX_OPEN_FILES)]
    max_open_files: usize,
    /// Export columns of types without an exact Parquet type as their text
    #[arg(long, value_enum, value_name = "text")]
    cast_unknown: Option<CastArg>,
    /// numeric without a precision (or wider than 38 digits): its exact decimal text, or an error
    #[arg(long, value_enum, default_value = "text")]
    unconstrained_numeric: NumericArg,
    /// Replace the contents of a non-empty --out (only once the new export is complete)
    #[arg(long)]
    overwrite: bool,
    /// Parquet format version: 1 is read by every reader
    #[arg(long, value_parser = ["1", "2"], default_value = "1")]
    parquet_version: String,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum CompressionArg {
    Zstd,
    Snappy,
    Lz4,
    None,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum CastArg {
    Text,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum NumericArg {
    Text,
    Error,
}

pub async fn run(args: Args, g: &Global) -> anyhow::Result<u8> {
    let request = request(args)?;
    let topology = g.topology()?;
    let progress = shardline_export::Progress::default();
    let show = g.format == Format::Text && !g.quiet;
    let display = Progress::new("export", 0, "rows", !show);
    let export = shardline_export::export(
        &topology,
        &request,
        &progress,
        Some(signals::stop_on_signal()),
    );
    let summary = display
        .follow(export, |_| {
            (
                progress.rows.load(Ordering::Relaxed),
                progress.estimated_rows.load(Ordering::Relaxed),
            )
        })
        .await;
    let summary = match summary {
        Ok(s) => s,
        Err(ExportError::Interrupted) => return Err(Interrupted.into()),
        Err(e) => return Err(Hint::error(e.to_string(), e.hint())),
    };
    match g.format {
        Format::Json => print_json(&summary)?,
        _ => print!("{}", text(&summary)),
    }
    Ok(super::exit::OK)
}

/// Checks the arguments and builds the request; connects to nothing.
fn request(args: Args) -> anyhow::Result<ExportRequest> {
    let what = match (args.table, args.query) {
        (Some(t), None) => What::Table(t),
        (None, Some(q)) => What::Query(q),
        _ => unreachable!("clap requires exactly one of --table and --query"),
    };
    let mut r = ExportRequest::new(what, args.out);
    r.from = match args.from.as_deref() {
        None => shardline_export::From::Default,
        Some("source") => shardline_export::From::Source,
        Some(c) => shardline_export::From::Context(c.to_string()),
    };
    if let Some(p) = &args.partition_by {
        r.partition_by = Some(PartitionBy::parse(p).map_err(|e| {
            Hint::error(
                e,
                "shardline export --table payments --out DIR --partition-by 'day(created_at)'",
            )
        })?);
    }
    for (name, v) in [
        ("--row-group-rows", args.row_group_rows),
        ("--row-group-mib", args.row_group_mib),
        ("--buffer-mib", args.buffer_mib),
        ("--max-open-files", args.max_open_files),
    ] {
        if v == 0 {
            return Err(Hint::error(
                format!("{name} must be at least 1"),
                "leave it out for the default",
            ));
        }
    }
    if args.max_file_rows == Some(0) {
        return Err(Hint::error(
            "--max-file-rows must be at least 1",
            "leave it out for one file per partition and database",
        ));
    }
    r.compression = match args.compression {
        CompressionArg::Zstd => Compression::Zstd,
        CompressionArg::Snappy => Compression::Snappy,
        CompressionArg::Lz4 => Compression::Lz4,
        CompressionArg::None => Compression::None,
    };
    r.row_group_rows = args.row_group_rows;
    r.row_group_bytes = args.row_group_mib << 20;
    r.buffer_bytes = args.buffer_mib << 20;
    r.max_file_rows = args.max_file_rows;
    r.max_open_files = args.max_open_files;
    r.cast_unknown = args.cast_unknown.is_some();
    r.numeric = match args.unconstrained_numeric {
        NumericArg::Text => NumericPolicy::Text,
        NumericArg::Error => NumericPolicy::Error,
    };
    r.overwrite = args.overwrite;
    r.parquet_v2 = args.parquet_version == "2";
    Ok(r)
}

/// The summary for people; also what `shardline demo` prints.
pub fn text(s: &Summary) -> String {
    let mut out = format!(
        "exported {} rows into {} files ({:.1} MiB{}) in {:.1} s ({:.0} rows/s): {}\n",
        s.rows,
        s.files,
        s.bytes as f64 / (1 << 20) as f64,
        if s.partitions > 0 {
            format!(", {} partitions", s.partitions)
        } else {
            String::new()
        },
        s.seconds,
        s.rows_per_sec,
        s.out.display()
    );
    if s.sources.len() > 1 {
        for src in &s.sources {
            out.push_str(&format!(
                "    {:>10} rows from {}\n",
                src.rows, src.database
            ));
        }
    }
    out
}
