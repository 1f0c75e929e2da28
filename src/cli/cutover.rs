//! `shardline cutover`: move merchants from the monolith to the shards in
//! cohorts of buckets, under load, with a bounded pause.

use std::time::Duration;

use shardline_cutover::{CutoverError, Selector, StartRequest, DEFAULT_MAX_PAUSE};

use super::output::{print_json, Hint};
use super::{exit, Format, Global};

/// Staged cutover: plan, start and follow cohorts of merchants moving to the shards
#[derive(clap::Subcommand, Debug)]
pub enum CutoverCommand {
    Plan(PlanArgs),
    Start(StartArgs),
    Status(StatusArgs),
    Rollback(RollbackArgs),
}

#[derive(clap::Args, Debug)]
#[group(required = true, multiple = false)]
pub struct Cohort {
    /// Percentage of all buckets on the shards after the stage (cumulative: 5, then 20, then 100)
    #[arg(long, value_name = "PERCENT")]
    cohort: Option<String>,
    /// The merchants whose buckets move (comma-separated); each bucket moves with all its merchants
    #[arg(long, value_name = "LIST")]
    merchants: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct SlotArgs {
    /// The CDC replication slot (monolith → shards)
    #[arg(long, default_value = "shardline")]
    slot: String,
}

/// Show what a stage would move (changes nothing)
///
/// The buckets, a sample of their merchants and their rows per shard in
/// the monolith.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  shardline cutover plan --cohort 5
  shardline cutover plan --merchants 42,1001
  shardline --format json cutover plan --cohort 20")]
pub struct PlanArgs {
    #[command(flatten)]
    cohort: Cohort,
}

/// Switch a cohort to the shards, with a bounded pause
///
/// Every router with `[cutover] enabled = true` holds new statements of the
/// cohort's merchants, lets their open transactions end and acknowledges;
/// once CDC has applied the monolith up to that point, the cohort's buckets
/// are served by the shards and the held statements run there. If the
/// pause would pass --max-pause, nothing switches: the cohort stays on the
/// monolith and the command exits with 2.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  shardline cutover start --cohort 5
  shardline cutover start --cohort 20 --verify
  shardline cutover start --merchants 42,1001 --max-pause 2
  shardline --format json cutover start --cohort 100")]
pub struct StartArgs {
    #[command(flatten)]
    cohort: Cohort,
    /// Longest pause of the cohort's statements, in seconds, before the stage aborts
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_MAX_PAUSE.as_secs_f64())]
    max_pause: f64,
    #[command(flatten)]
    slot: SlotArgs,
    /// Run verify on the sharded tables before the hold and after the switch, and record both
    #[arg(long)]
    verify: bool,
}

/// Show every stage, the routers seen and the CDC lag
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  shardline cutover status
  shardline --format json cutover status")]
pub struct StatusArgs {
    #[command(flatten)]
    slot: SlotArgs,
}

/// Return buckets from the shards to the monolith, with a bounded pause
///
/// The same hold, drain and switch as `start`, waiting for every shard's
/// stream back to the monolith (`shardline cdc run --reverse`, running
/// since before the first stage). `--cohort P` goes back to P% on the
/// shards; `--merchants LIST` returns those merchants' buckets.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  shardline cutover rollback --cohort 5        # after 5, 20: back to 5%
  shardline cutover rollback --merchants 42 --max-pause 2")]
pub struct RollbackArgs {
    #[command(flatten)]
    cohort: Cohort,
    /// Longest pause of the cohort's statements, in seconds, before the rollback aborts
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_MAX_PAUSE.as_secs_f64())]
    max_pause: f64,
    #[command(flatten)]
    slot: SlotArgs,
    /// Run verify on the sharded tables before the hold and after the switch, and record both
    #[arg(long)]
    verify: bool,
}

pub async fn run(cmd: CutoverCommand, g: &Global) -> anyhow::Result<u8> {
    let topology = g.topology()?;
    let selector = |c: &Cohort| -> Result<Selector, CutoverError> {
        let (_, placement) = shardline_cutover::coordinator::placement(&topology)?;
        match (&c.cohort, &c.merchants) {
            (Some(p), _) => Selector::percent(p),
            (_, Some(list)) => Selector::merchants(list, placement),
            (None, None) => Err(CutoverError::NoMerchants),
        }
    };
    match cmd {
        CutoverCommand::Plan(args) => {
            let selector = selector(&args.cohort).map_err(hinted)?;
            let plan = shardline_cutover::plan_stage(&topology, &selector)
                .await
                .map_err(hinted)?;
            match g.format {
                Format::Json => print_json(&plan)?,
                _ => {
                    println!(
                        "stage {}: {} buckets move ({} of {} on the shards before)",
                        plan.selector,
                        plan.buckets.len(),
                        plan.buckets_on_shards,
                        plan.buckets_total
                    );
                    println!(
                        "merchants, for example: {}",
                        plan.merchant_sample.join(", ")
                    );
                    for t in &plan.rows {
                        let per: Vec<String> = t
                            .per_shard
                            .iter()
                            .map(|(s, n)| format!("shard {s}: {n}"))
                            .collect();
                        println!("  {:<20} {}", t.table, per.join(", "));
                    }
                    for s in &plan.sequences {
                        match (&s.skipped, s.set) {
                            (Some(why), _) => println!("  sequence {}: {why}", s.sequence),
                            (None, set) => {
                                println!(
                                    "  sequence {} ({}):",
                                    s.sequence,
                                    if set {
                                        "shares given by an earlier stage".to_string()
                                    } else {
                                        format!("the first stage gives these shares; highest value now {}", s.highest)
                                    }
                                );
                                for share in &s.shares {
                                    println!(
                                        "    INCREMENT BY {} RESTART WITH {} on {}",
                                        share.increment, share.restart, share.database
                                    );
                                }
                            }
                        }
                    }
                    println!("buckets move with all their merchants; nothing was changed");
                }
            }
            Ok(exit::OK)
        }
        CutoverCommand::Start(args) => {
            let selector = selector(&args.cohort).map_err(hinted)?;
            let request = request(selector, args.max_pause, args.slot.slot, args.verify)?;
            let report = shardline_cutover::start(&topology, &request)
                .await
                .map_err(hinted)?;
            print_stage(&report, g)?;
            Ok(exit::OK)
        }
        CutoverCommand::Status(args) => {
            let status = shardline_cutover::status(&topology, &args.slot.slot)
                .await
                .map_err(hinted)?;
            match g.format {
                Format::Json => print_json(&status)?,
                _ => {
                    println!(
                        "cutover {}: {} of {} buckets on the shards",
                        if status.enabled {
                            "enabled"
                        } else {
                            "not enabled in the topology"
                        },
                        status.buckets_on_shards,
                        status.buckets_total
                    );
                    for c in &status.cohorts {
                        let verify = |v: &Option<serde_json::Value>| match v {
                            Some(v) if v["equal"] == true => "equal",
                            Some(_) => "differences",
                            None => "-",
                        };
                        println!(
                            "  cohort {:<3} {:<7} {:<22} {:>5} buckets  {:<9} pause {:>8} ms  verify before {} after {}{}",
                            c.id,
                            c.direction,
                            c.selector,
                            c.buckets,
                            c.state,
                            c.pause_ms.map(|p| format!("{p:.1}")).unwrap_or("-".into()),
                            verify(&c.verify_before),
                            verify(&c.verify_after),
                            c.error.as_ref().map(|e| format!("  ({e})")).unwrap_or_default()
                        );
                    }
                    for r in &status.routers {
                        println!(
                            "  router {} {} (seen {:.1} s ago, acknowledged epoch {})",
                            r.router_id,
                            if r.alive { "alive" } else { "gone" },
                            r.seconds_since_seen,
                            r.epoch_acked
                        );
                    }
                    match &status.forward {
                        Some(s) => println!(
                            "  CDC monolith → shards: slot {} {}, {} bytes behind",
                            s.slot,
                            if s.active { "streaming" } else { "idle" },
                            s.lag_bytes.unwrap_or(0)
                        ),
                        None => println!("  CDC monolith → shards: no slot {}", args.slot.slot),
                    }
                    if status.reverse.is_empty() {
                        println!("  CDC shards → monolith: not running (`shardline cdc run --reverse`; rollback needs it)");
                    }
                    for s in &status.reverse {
                        println!(
                            "  CDC shard → monolith: slot {} {}, {} bytes behind",
                            s.slot,
                            if s.active { "streaming" } else { "idle" },
                            s.lag_bytes.unwrap_or(0)
                        );
                    }
                }
            }
            Ok(exit::OK)
        }
        CutoverCommand::Rollback(args) => {
            let selector = selector(&args.cohort).map_err(hinted)?;
            let request = request(selector, args.max_pause, args.slot.slot, args.verify)?;
            let report = shardline_cutover::rollback(&topology, &request)
                .await
                .map_err(hinted)?;
            print_stage(&report, g)?;
            Ok(exit::OK)
        }
    }
}

fn request(
    selector: Selector,
    max_pause: f64,
    slot: String,
    verify: bool,
) -> anyhow::Result<StartRequest> {
    if !(max_pause > 0.0 && max_pause <= 3600.0) {
        return Err(Hint::error(
            format!("--max-pause {max_pause}: must be above 0 and at most 3600 seconds"),
            "the default is 30; a switch usually pauses well under a second",
        ));
    }
    Ok(StartRequest {
        selector,
        max_pause: Duration::from_secs_f64(max_pause),
        slot,
        verify,
    })
}

fn print_stage(report: &shardline_cutover::StageReport, g: &Global) -> anyhow::Result<()> {
    match g.format {
        Format::Json => print_json(report)?,
        _ => match report.cohort {
            None => println!(
                "stage {}: nothing to move ({} of {} buckets on the shards)",
                report.selector, report.buckets_on_shards, report.buckets_total
            ),
            Some(id) => println!(
                "cohort {id} ({}): {} buckets {}; pause {:.1} ms (drain {:.1} ms, CDC catch-up {:.1} ms), {} routers; {} of {} buckets on the shards",
                report.selector,
                report.buckets.len(),
                report.state,
                report.pause_ms,
                report.drain_ms,
                report.catchup_ms,
                report.routers,
                report.buckets_on_shards,
                report.buckets_total
            ),
        },
    }
    Ok(())
}

fn hinted(e: CutoverError) -> anyhow::Error {
    let hint = e.hint();
    Hint::error(e.to_string(), hint)
}
