//! `shardline schema`: the targets' table definitions against the source's.

use shardline_schema::drift::{self, DriftRequest};

use super::output::{print_json, Hint};
use super::{exit, Format, Global};

/// Table definitions: compare the targets with the source, run a migration on them
#[derive(clap::Subcommand, Debug)]
pub enum SchemaCommand {
    Diff(DiffArgs),
    Apply(super::schema_apply::ApplyArgs),
}

/// Compare every target's table definitions with the source's
///
/// Columns (types, collations, NOT NULL, defaults, identity, generated),
/// constraints, indexes, partitions (where the context keeps the source's
/// partitioning), the types columns use, comments, and sequences with their
/// positions. What backfill does not carry (see `backfill --dry-run`) is
/// not drift. Exit 0: no drift; 1: drift, each difference named; 2: could
/// not run.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  shardline schema diff
  shardline schema diff --tables payments,'\"Ledger\"'
  shardline --format json schema diff > drift.json")]
pub struct DiffArgs {
    /// Only these tables (comma-separated, as SQL names them) [default: all in the topology]
    #[arg(long, value_delimiter = ',', value_name = "T,...")]
    tables: Option<Vec<String>>,
    /// Leave sequence positions out (a running cdc moves them up on each heartbeat)
    #[arg(long)]
    no_positions: bool,
}

pub async fn run(cmd: SchemaCommand, g: &Global) -> anyhow::Result<u8> {
    match cmd {
        SchemaCommand::Diff(args) => diff(args, g).await,
        SchemaCommand::Apply(args) => super::schema_apply::apply(args, g).await,
    }
}

async fn diff(args: DiffArgs, g: &Global) -> anyhow::Result<u8> {
    let topology = g.topology()?;
    let request = DriftRequest {
        tables: args.tables,
        positions: !args.no_positions,
    };
    let report = drift::diff(&topology, &request)
        .await
        .map_err(|e| Hint::error(e.to_string(), e.hint()))?;
    match g.format {
        Format::Json => print_json(&report)?,
        Format::Text | Format::Markdown => {
            for d in &report.drift {
                println!("{}", d.describe());
            }
            println!(
                "{}: {} tables on {} databases compared with the source",
                if report.equal {
                    "no drift".to_string()
                } else {
                    format!("{} differences", report.drift.len())
                },
                report.tables,
                report.databases
            );
        }
    }
    Ok(if report.equal {
        exit::OK
    } else {
        exit::DIFFERENCES
    })
}
