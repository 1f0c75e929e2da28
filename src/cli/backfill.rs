//! `shardline backfill`: copy history into shards, contexts and read models.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use shardline_backfill::{BackfillError, BackfillRequest, Event};

use super::exit::Interrupted;
use super::output::{print_json, Hint};
use super::progress::{Bars, Progress};
use super::{signals, Format, Global};

/// Copy the monolith's history into the shards, contexts and read models
///
/// All readers share one snapshot, taken where the CDC slot starts, so
/// `shardline cdc run` continues exactly where the copy ends. A killed run
/// resumes with the next `shardline backfill`; several processes (on several
/// machines) running the same command share the job.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  shardline backfill --dry-run
  shardline backfill --workers 4 --chunk-rows 200000
  shardline backfill --tables payments,refunds --max-rows-per-sec 50000
  shardline --format json backfill --restart")]
pub struct Args {
    /// Only these tables or read models (comma-separated) [default: all in the topology]
    #[arg(long, value_delimiter = ',', value_name = "T,...")]
    tables: Option<Vec<String>>,
    /// Parallel copy workers in this process
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    workers: u16,
    /// Rows per chunk (the unit of work, resume and retry)
    #[arg(long, default_value_t = shardline_backfill::DEFAULT_CHUNK_ROWS, value_name = "N")]
    chunk_rows: u64,
    /// Copy at most this many rows per second (this process)
    #[arg(long, value_name = "R")]
    max_rows_per_sec: Option<u64>,
    /// Print the plan (chunks, estimated rows and bytes, rows per shard, what the targets cannot hold) and stop
    #[arg(long)]
    dry_run: bool,
    /// Start over: drop the job's slot and progress, empty its target tables
    #[arg(long)]
    restart: bool,
    /// Fail instead of creating missing target tables
    #[arg(long)]
    no_create: bool,
    /// Build secondary indexes of created tables after the copy
    #[arg(long)]
    defer_indexes: bool,
    /// Job name; also the name of the replication slot CDC streams from
    #[arg(long, default_value = shardline_backfill::DEFAULT_JOB)]
    job: String,
}

pub async fn run(args: Args, g: &Global) -> anyhow::Result<u8> {
    if args.chunk_rows == 0 {
        return Err(Hint::error(
            "--chunk-rows must be at least 1",
            "shardline backfill --chunk-rows 200000",
        ));
    }
    let topology = g.topology()?;
    let request = BackfillRequest {
        job: args.job,
        tables: args.tables,
        workers: args.workers.into(),
        chunk_rows: args.chunk_rows,
        max_rows_per_sec: args.max_rows_per_sec,
        restart: args.restart,
        create: !args.no_create,
        defer_indexes: args.defer_indexes,
    };
    let prepared = shardline_backfill::prepare(&topology, &request)
        .await
        .map_err(hinted)?;
    if args.dry_run {
        let plan = shardline_backfill::dry_run(&prepared, &request)
            .await
            .map_err(hinted)?;
        match g.format {
            Format::Json => print_json(&plan)?,
            Format::Text | Format::Markdown => {
                for t in &plan {
                    let kind = if t.read_model { " (read model)" } else { "" };
                    println!(
                        "{}{kind}: {} chunks, ~{} rows, ~{:.1} MB{}",
                        t.table,
                        t.chunks,
                        t.est_rows,
                        t.est_bytes as f64 / 1e6,
                        if t.create > 0 {
                            format!(", created on {} targets", t.create)
                        } else {
                            String::new()
                        }
                    );
                    for (target, rows) in &t.targets {
                        println!("    ~{rows:>10} rows -> {target}");
                    }
                    for o in &t.obstacles {
                        let verdict = match (o.allowed, o.created) {
                            (true, true) => "let go: created on each shard, enforced per shard",
                            (true, false) => "let go: not created",
                            (false, _) if o.skippable => "refused (skip_objects can let it go)",
                            (false, _) => "refused",
                        };
                        println!("    not carried: {} {} [{verdict}]", o.object, o.why);
                    }
                }
            }
        }
        let refused = prepared.refused();
        if !refused.is_empty() {
            return Err(hinted(BackfillError::Obstacles(
                refused.iter().map(|o| o.describe()).collect(),
            )));
        }
        return Ok(super::exit::OK);
    }

    let quiet = g.quiet || g.format == Format::Json;
    let report = copy_with_progress(prepared, &request, signals::stop_on_signal(), quiet).await;
    let report = match report {
        Err(BackfillError::Interrupted) => return Err(Interrupted.into()),
        other => other.map_err(hinted)?,
    };
    match g.format {
        Format::Json => print_json(&report)?,
        Format::Text | Format::Markdown => {
            for t in &report.tables {
                println!(
                    "{:<32} {:>12} rows {:>10.1} MB  {:>4} chunks -> {} targets",
                    t.table,
                    t.rows,
                    t.bytes as f64 / 1e6,
                    t.chunks,
                    t.targets
                );
            }
            let state = if report.complete {
                "complete"
            } else {
                "this process's share done; the job's first process completes it"
            };
            println!(
                "job {} {state}: {:.1} s, {:.0} rows/s; slot {} at {} (next: shardline cdc run)",
                report.job, report.seconds, report.rows_per_sec, report.slot, report.consistent_lsn
            );
        }
    }
    Ok(super::exit::OK)
}

/// Runs the job with a progress bar (or plain lines) per table.
pub(super) async fn copy_with_progress(
    prepared: shardline_backfill::Prepared,
    request: &BackfillRequest,
    stop: tokio::sync::watch::Receiver<bool>,
    quiet: bool,
) -> Result<shardline_backfill::BackfillReport, BackfillError> {
    let bars = Arc::new(Bars::new(quiet));
    let tables: Arc<Mutex<HashMap<String, Progress>>> = Arc::default();
    let total = Arc::new(bars.add("all tables", 0, "rows"));
    let (events, overall) = (Arc::clone(&tables), Arc::clone(&total));
    let report = shardline_backfill::run(prepared, request, stop, move |e| match e {
        Event::Planned { table, est_rows } => {
            overall.grow(est_rows);
            let bar = bars.add(&short(&table), est_rows, "rows");
            events.lock().expect("progress lock").insert(table, bar);
        }
        Event::ChunkDone { table, rows, .. } => {
            if let Some(bar) = events.lock().expect("progress lock").get(&table) {
                bar.inc(rows);
            }
            overall.inc(rows);
        }
    })
    .await;
    for bar in tables.lock().expect("progress lock").values() {
        bar.finish();
    }
    total.finish();
    report
}

fn short(table: &str) -> String {
    table.strip_prefix("public.").unwrap_or(table).to_string()
}

fn hinted(e: BackfillError) -> anyhow::Error {
    match e.hint() {
        Some(hint) => Hint::error(e.to_string(), hint),
        None => e.into(),
    }
}
