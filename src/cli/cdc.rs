//! `shardline cdc`: stream the monolith's changes to the shards.

use std::time::Duration;

use shardline_cdc::run::{CdcError, RunOptions};

use super::output::{print_json, Hint};
use super::{signals, Format, Global};

/// Change data capture: stream every monolith change to the targets
#[derive(clap::Subcommand, Debug)]
pub enum CdcCommand {
    Run(RunArgs),
    Status(StatusArgs),
    Drop(DropArgs),
    SkipDdl(SkipDdlArgs),
}

/// Pass over a schema change cdc stopped at, once you made it on the targets yourself
///
/// cdc stops at a schema change it cannot carry (or that failed on a
/// target) and names it by its id in `shardline.ddl_log` on the source.
/// Make the change (or what the targets need instead) on every target,
/// then record it here: cdc passes over it from then on.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  shardline cdc skip-ddl 42
  psql \"$SOURCE\" -c 'SELECT id, command_tag, query FROM shardline.ddl_log ORDER BY id DESC LIMIT 5'")]
pub struct SkipDdlArgs {
    /// The schema change's id (`shardline.ddl_log.id` on the source)
    id: i64,
}

#[derive(clap::Args, Debug)]
pub struct SlotArgs {
    /// Replication slot (backfill creates it under its job name)
    #[arg(long, default_value = "shardline")]
    slot: String,
}

/// Stream changes from the slot to every target until stopped (SIGINT/SIGTERM)
///
/// Each target applies each source transaction once, together with the
/// source position it reached; after a crash or a stop, the next run skips
/// what each target already has. Run `shardline backfill` first: it creates
/// the slot at the point its copy ends.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  shardline cdc run
  shardline cdc run --heartbeat-secs 5
  shardline cdc run --metrics-listen 127.0.0.1:9187    # curl http://127.0.0.1:9187/metrics
  shardline cdc run --sink jsonl | kafka-console-producer --topic payments
  shardline -v cdc run --slot shardline
  shardline cdc run --reverse                          # shards → monolith, for cutover rollback")]
pub struct RunArgs {
    #[command(flatten)]
    slot: SlotArgs,
    /// Publication listing the topology's tables (created when missing)
    #[arg(long, default_value = "shardline")]
    publication: String,
    /// Seconds between heartbeats written to the source, so an idle source lets the slot advance
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    heartbeat_secs: u64,
    /// Warn when the slot holds back more WAL than this many megabytes
    #[arg(long, default_value_t = 1024)]
    max_retained_wal_mb: u64,
    /// Apply to the targets, or write the decoded changes to stdout as JSON lines
    #[arg(long, value_enum, default_value = "targets")]
    sink: Sink,
    /// Seconds between recomputations of read models whose source changed
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=86400))]
    read_model_refresh_secs: u64,
    /// Serve Prometheus metrics (lag, changes, apply latency, errors) over HTTP on this address
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Seconds to keep setting the stream up again after a lost connection (a server restarting, a network cut) before stopping; 0 stops at once
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(0..=86400))]
    retry_secs: u64,
    /// Stream every shard back to the monolith instead (a cutover's way back; one slot per shard)
    #[arg(long, conflicts_with_all = ["sink", "metrics_listen"])]
    reverse: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Sink {
    Targets,
    Jsonl,
}

/// Show the slot and each target's applied position and lag
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  shardline cdc status
  shardline --format json cdc status")]
pub struct StatusArgs {
    #[command(flatten)]
    slot: SlotArgs,
}

/// Remove the slot, the publication and the targets' progress
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  shardline cdc drop
  shardline cdc drop --slot shardline --publication shardline")]
pub struct DropArgs {
    #[command(flatten)]
    slot: SlotArgs,
    /// Publication to drop
    #[arg(long, default_value = "shardline")]
    publication: String,
}

pub async fn run(cmd: CdcCommand, g: &Global) -> anyhow::Result<u8> {
    let topology = g.topology()?;
    match cmd {
        CdcCommand::Run(args) => {
            let options = RunOptions {
                slot: args.slot.slot,
                publication: args.publication,
                heartbeat: Duration::from_secs(args.heartbeat_secs),
                max_retained_wal: args.max_retained_wal_mb << 20,
                read_model_refresh: Duration::from_secs(args.read_model_refresh_secs),
                jsonl: (args.sink == Sink::Jsonl).then(|| {
                    let out: Box<dyn std::io::Write + Send> = Box::new(std::io::stdout());
                    std::sync::Arc::new(std::sync::Mutex::new(out))
                }),
                metrics_listen: args.metrics_listen,
                retry_for: Duration::from_secs(args.retry_secs),
                ..RunOptions::default()
            };
            if args.reverse {
                return run_reverse(&topology, &options, g).await;
            }
            let to_stdout = options.jsonl.is_none();
            let report = shardline_cdc::run::run(&topology, &options, signals::stop_on_signal())
                .await
                .map_err(hinted)?;
            match g.format {
                // With the JSON-lines sink, stdout carries the stream.
                Format::Json if to_stdout => print_json(&report)?,
                Format::Json => eprintln!("{}", serde_json::to_string(&report)?),
                Format::Text | Format::Markdown => eprintln!(
                    "stopped: {} transactions, {} changes ({} already applied, skipped) in {:.1} s, {} target commits; slot confirmed at {}; {} reconnects, {} retries, {} divergences",
                    report.transactions, report.changes, report.skipped, report.seconds, report.target_commits,
                    report.confirmed_lsn, report.reconnects, report.retries, report.divergences
                ),
            }
        }
        CdcCommand::Status(args) => {
            let status = shardline_cdc::status::status(&topology, &args.slot.slot)
                .await
                .map_err(hinted)?;
            match g.format {
                Format::Json => print_json(&status)?,
                Format::Text | Format::Markdown => {
                    let s = &status.slot;
                    if s.exists {
                        println!(
                            "slot {}: {}, confirmed {}, lag {} bytes, WAL retained {} bytes (source at {})",
                            s.name,
                            if s.active { "streaming" } else { "idle" },
                            s.confirmed_lsn.as_deref().unwrap_or("-"),
                            s.lag_bytes.unwrap_or(0),
                            s.retained_bytes.unwrap_or(0),
                            status.source_lsn
                        );
                    } else {
                        println!("slot {} does not exist (run shardline backfill, then shardline cdc run)", s.name);
                    }
                    if let Some(r) = &status.run {
                        println!(
                            "last run: pid {} on {}, started {}, {} reconnects, {} retries{} (recorded {})",
                            r.pid,
                            r.host,
                            r.started_at,
                            r.reconnects,
                            r.retries,
                            r.last_fault
                                .as_deref()
                                .map(|f| format!(", last fault: {f}"))
                                .unwrap_or_default(),
                            r.updated_at
                        );
                    }
                    for t in &status.targets {
                        match (&t.error, &t.applied_lsn) {
                            (Some(e), _) => println!("  {:<14} {:<40} unreachable: {e}", t.context, t.target),
                            (None, None) => println!("  {:<14} {:<40} nothing applied yet", t.context, t.target),
                            (None, Some(lsn)) => println!(
                                "  {:<14} {:<40} applied {lsn}, {} bytes behind, last source commit {:.1} s ago{}",
                                t.context,
                                t.target,
                                t.lag_bytes.unwrap_or(0),
                                t.lag_seconds.unwrap_or(0.0),
                                match t.divergences {
                                    Some(n) if n > 0 => format!(", {n} divergences (shardline.cdc_divergence)"),
                                    _ => String::new(),
                                }
                            ),
                        }
                    }
                }
            }
        }
        CdcCommand::SkipDdl(args) => {
            let source = topology.source.connect().await?;
            let found = shardline_ddl::capture::skip(&source, args.id)
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "{}: {}",
                        topology.source,
                        shardline_topology::describe_pg_error(&e)
                    )
                })?;
            if !found {
                return Err(Hint::error(
                    format!("the source's DDL log holds no schema change {}", args.id),
                    "the id is the one cdc's error named; see SELECT id, command_tag, query FROM shardline.ddl_log ORDER BY id DESC on the source",
                ));
            }
            match g.format {
                Format::Json => print_json(&serde_json::json!({ "skipped": args.id }))?,
                _ => println!("cdc will pass over schema change {}", args.id),
            }
        }
        CdcCommand::Drop(args) => {
            shardline_cdc::status::drop_all(&topology, &args.slot.slot, &args.publication)
                .await
                .map_err(hinted)?;
            if g.format == Format::Text {
                println!(
                    "dropped slot {} and publication {}, cleared the targets' progress",
                    args.slot.slot, args.publication
                );
            }
        }
    }
    Ok(super::exit::OK)
}

/// Every shard's reverse stream, until stopped; the first failure stops all.
async fn run_reverse(
    topology: &shardline_topology::Topology,
    forward: &RunOptions,
    g: &Global,
) -> anyhow::Result<u8> {
    use shardline_cdc::reverse::{reverse_options, reverse_topology};
    let shards = topology
        .sharded_context()
        .map(|c| c.databases().len())
        .unwrap_or(0);
    if shards == 0 {
        return Err(Hint::error(
            "the topology has no single sharded context to stream back from",
            "define one [contexts.NAME] with shard_key and shards",
        ));
    }
    let stop = signals::stop_on_signal();
    let mut streams = tokio::task::JoinSet::new();
    for i in 0..shards {
        let t = reverse_topology(topology, i).expect("a shard of the sharded context");
        let o = reverse_options(forward, i);
        let stop = stop.clone();
        streams.spawn(async move { (i, shardline_cdc::run::run(&t, &o, stop).await) });
    }
    let mut reports = Vec::new();
    while let Some(done) = streams.join_next().await {
        let (i, result) = done?;
        match result {
            Ok(r) => reports.push((i, r)),
            Err(e) => {
                streams.abort_all();
                return Err(hinted(e));
            }
        }
    }
    reports.sort_by_key(|(i, _)| *i);
    match g.format {
        Format::Json => print_json(
            &reports
                .iter()
                .map(|(i, r)| serde_json::json!({ "shard": i, "report": r }))
                .collect::<Vec<_>>(),
        )?,
        _ => {
            for (i, r) in &reports {
                eprintln!(
                    "shard {i} → monolith stopped: {} transactions, {} changes in {:.1} s; slot confirmed at {}",
                    r.transactions, r.changes, r.seconds, r.confirmed_lsn
                );
            }
        }
    }
    Ok(super::exit::OK)
}

fn hinted(e: CdcError) -> anyhow::Error {
    let hint = match &e {
        CdcError::Connect(c) => c.hint(),
        CdcError::Setup(_) => "apply the fixes shown, then start cdc again".into(),
        CdcError::Privileges(_) => {
            "run the grants shown as a superuser (or connect as one), then start cdc again".into()
        }
        CdcError::Apply(shardline_cdc::apply::ApplyError::Diverged { .. }) => {
            "the target lost or changed a row the source still had: compare with `shardline verify`, repair the target (or copy the table again with `shardline backfill --restart`), then start cdc again; or set `[cdc] on_divergence = \"count\"` to record such changes and go on".into()
        }
        CdcError::Source(shardline_cdc::source::SourceError::SlotInUse { .. }) => {
            "stop the running `shardline cdc run` first".into()
        }
        CdcError::Source(shardline_cdc::source::SourceError::Query(q))
            if shardline_topology::pgerror::sqlstate(q) == Some("42501") =>
        {
            privilege_hint(q)
        }
        CdcError::Metrics { .. } => {
            "choose a free address for --metrics-listen, such as 127.0.0.1:9187".into()
        }
        CdcError::Ddl { fix, .. } => fix.clone(),
        CdcError::Apply(shardline_cdc::apply::ApplyError::Ddl { fix, .. }) => fix.clone(),
        CdcError::Apply(_) | CdcError::Stream(_) => {
            "start `shardline cdc run` again: it resumes where each target stopped".into()
        }
        _ => return e.into(),
    };
    Hint::error(e.to_string(), hint)
}

/// What to grant when a set-up statement on the source was refused: the
/// database's CREATE when that is what PostgreSQL named, else the
/// privileges cdc needs.
fn privilege_hint(e: &tokio_postgres::Error) -> String {
    let message = e.as_db_error().map(|d| d.message()).unwrap_or_default();
    shardline_topology::pgerror::create_grant_hint(message).unwrap_or_else(|| {
        "connect as a role that may do this (cdc needs REPLICATION, CREATE on the source database and ownership of the listed tables), or as a superuser; then start cdc again".into()
    })
}
