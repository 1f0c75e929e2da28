//! `shardline gen`: fill the monolith with generated history.

use shardline_gen::{GenError, GenRequest};

use super::output::{print_json, Hint};
use super::progress::Progress;
use super::{Format, Global};

/// Fill the monolith with a generated payment history
///
/// Merchants (Zipf-skewed: a few huge ones), payments with their events and
/// refunds over 18 months, then settlements and payouts. The same seed gives
/// the same data. Loads over binary COPY into the topology's [source].
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  shardline gen --rows 1000000 --seed 1
  shardline --config .shardline/shardline.toml gen --rows 200000 --truncate
  shardline --format json gen --rows 10000")]
pub struct Args {
    /// Payments to generate
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    rows: u64,
    /// Seed of the random history
    #[arg(long, default_value_t = 1, value_name = "S")]
    seed: u64,
    /// Merchants [default: one per thousand payments, at least 20]
    #[arg(long, value_name = "M")]
    merchants: Option<u64>,
    /// Empty the history tables first instead of refusing non-empty ones
    #[arg(long)]
    truncate: bool,
}

pub async fn run(args: Args, g: &Global) -> anyhow::Result<u8> {
    if args.rows == 0 {
        return Err(Hint::error(
            "--rows must be at least 1",
            "shardline gen --rows 100000",
        ));
    }
    let topology = g.topology()?;
    let request = GenRequest {
        payments: args.rows,
        seed: args.seed,
        merchants: args.merchants,
        truncate: args.truncate,
    };
    let progress = std::sync::Arc::new(Progress::new(
        "payments",
        args.rows,
        "payments",
        g.quiet || g.format == Format::Json,
    ));
    let reporter = std::sync::Arc::clone(&progress);
    let report = shardline_gen::generate(&topology.source, &request, move |p| {
        reporter.set(p.payments_done)
    })
    .await
    .map_err(|e| match e.hint() {
        Some(hint) => Hint::error(gen_message(&e, &topology.source.to_string()), hint),
        None => anyhow::Error::new(e),
    })?;
    progress.finish();
    match g.format {
        Format::Json => print_json(&report)?,
        Format::Text | Format::Markdown => {
            println!("generated into {} (seed {}):", topology.source, args.seed);
            for (table, rows) in &report.tables {
                println!("  {table:<15} {rows:>12} rows");
            }
            println!("{:.1} s, {:.0} rows/s", report.seconds, report.rows_per_sec);
        }
    }
    Ok(super::exit::OK)
}

fn gen_message(e: &GenError, source: &str) -> String {
    match e {
        GenError::Connect(_) => e.to_string(),
        _ => format!("{source}: {e}"),
    }
}
