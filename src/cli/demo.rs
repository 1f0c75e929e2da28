//! `shardline demo`: the migration end to end on a local fleet.
//!
//! A list of steps, each a short function: later capabilities add theirs.

use std::path::PathBuf;
use std::time::Instant;

use shardline_gen::GenRequest;
use shardline_topology::{ContextKind, ShardKey, Topology};

use super::dev::{self, DirArgs, UpArgs};
use super::progress::Progress;
use super::Global;

/// Run the whole migration on a local fleet it starts itself
///
/// Starts a fleet (monolith, shards, settlements, analytics), fills the
/// monolith with generated history and shows where merchants live. Safe to
/// run again: it reuses the fleet and regenerates the history.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  shardline demo
  shardline demo --rows 1000000 --shards 8
  shardline dev down --dir .shardline-demo --purge    # clean up afterwards")]
pub struct Args {
    /// Directory of the demo's fleet
    #[arg(long, default_value = ".shardline-demo", value_name = "DIR")]
    dir: PathBuf,
    /// Payments to generate
    #[arg(long, default_value_t = 200_000, value_name = "N")]
    rows: u64,
    /// Transaction shards
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    shards: u16,
    /// Port of the demo's monolith; the other servers take the ports after it
    #[arg(long, default_value_t = 55320, value_name = "PORT")]
    base_port: u16,
}

pub async fn run(args: Args, g: &Global) -> anyhow::Result<u8> {
    let started = Instant::now();
    step(1, "start a local fleet");
    let up = UpArgs {
        shards: args.shards,
        dir: DirArgs {
            dir: args.dir.clone(),
        },
        base_port: args.base_port,
    };
    let (fleet, config) = dev::up(&up)?;
    for m in &fleet.members {
        println!("   {:<12} 127.0.0.1:{}/{}", m.name, m.port, m.database);
    }
    let topology = Topology::load(&config)?;

    step(2, "generate the monolith's history");
    generate(&topology, args.rows, g).await?;

    step(3, "where merchants live");
    placement(&topology)?;

    println!(
        "\ndone in {:.0} s. Try:\n   export SHARDLINE_CONFIG={}\n   shardline route 1001 1002\n   shardline dev status --dir {}\n   shardline dev down --dir {} --purge",
        started.elapsed().as_secs_f64(),
        config.display(),
        args.dir.display(),
        args.dir.display()
    );
    Ok(super::exit::OK)
}

fn step(n: u32, what: &str) {
    println!("\n== {n}. {what}");
}

async fn generate(topology: &Topology, rows: u64, g: &Global) -> anyhow::Result<()> {
    let request = GenRequest {
        payments: rows,
        seed: 1,
        merchants: None,
        truncate: true,
    };
    let progress = std::sync::Arc::new(Progress::new("payments", rows, "payments", g.quiet));
    let reporter = std::sync::Arc::clone(&progress);
    let report = shardline_gen::generate(&topology.source, &request, move |p| {
        reporter.set(p.payments_done)
    })
    .await?;
    progress.finish();
    for (table, n) in &report.tables {
        println!("   {table:<15} {n:>10} rows");
    }
    println!(
        "   {:.1} s, {:.0} rows/s",
        report.seconds, report.rows_per_sec
    );
    Ok(())
}

/// How the biggest merchants spread over the shards.
fn placement(topology: &Topology) -> anyhow::Result<()> {
    let Some(context) = topology.sharded_context() else {
        return Ok(());
    };
    let ContextKind::Sharded { placement, .. } = &context.kind else {
        return Ok(());
    };
    for rank in 1..=5 {
        let merchant = shardline_gen::history::History::merchant_id(rank);
        let key = ShardKey::Int(merchant);
        println!(
            "   merchant {merchant} (#{rank} by size) -> bucket {:>4} -> shard {}",
            placement.bucket(&key),
            placement.shard(&key)
        );
    }
    println!("   in SQL: {}", placement.bucket_sql("merchant_id"));
    Ok(())
}
