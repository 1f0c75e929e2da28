//! Argument parsing and dispatch. Each subcommand lives in its own module
//! with an `Args` struct and a `run` function that turns the arguments into
//! a typed request, validates it before connecting anywhere, and calls one
//! library function.

mod backfill;
mod cdc;
mod cutover;
mod demo;
mod dev;
pub mod exit;
mod export;
mod gen;
mod output;
mod progress;
mod route;
mod router;
mod schema;
mod schema_apply;
mod signals;
mod verify;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use shardline_topology::Topology;

pub use output::{report_error, Format};

/// Move a monolithic PostgreSQL payment database onto merchant-sharded
/// PostgreSQL without downtime, and prove nothing was lost on the way.
#[derive(Parser, Debug)]
#[command(name = "shardline", version, propagate_version = true)]
#[command(after_help = "Examples:
  shardline demo                                  # a local fleet, history, the whole migration
  shardline dev up --shards 4 --dir .shardline    # start a local fleet and write its topology
  shardline --config .shardline/shardline.toml route 42 1001

Exit codes: 0 success, 1 differences found (verify, schema diff), 2 could not run, 130 interrupted.")]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand takes.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Topology file [default: $SHARDLINE_CONFIG, else ./shardline.toml]
    #[arg(long, global = true, value_name = "FILE", env = "SHARDLINE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Output for people (text), for scripts (json), or for documents (markdown: verify)
    #[arg(long, global = true, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// More log output (-v info, -vv debug, -vvv trace)
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,
    /// Only errors
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

impl Global {
    pub fn config_path(&self) -> PathBuf {
        self.config
            .clone()
            .unwrap_or_else(|| PathBuf::from("shardline.toml"))
    }

    /// Loads and validates the topology; nothing is connected yet.
    pub fn topology(&self) -> anyhow::Result<Topology> {
        Ok(Topology::load(&self.config_path())?)
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    Demo(demo::Args),
    /// A local fleet of PostgreSQL servers: up, status, down
    #[command(
        subcommand,
        after_help = "Examples:\n  shardline dev up --shards 4 --dir .shardline\n  shardline dev status\n  shardline dev down --purge"
    )]
    Dev(dev::DevCommand),
    Gen(gen::Args),
    Backfill(backfill::Args),
    Verify(verify::Args),
    /// Change data capture: stream every monolith change to the targets
    #[command(
        subcommand,
        after_help = "Examples:\n  shardline cdc run\n  shardline cdc status\n  shardline cdc drop"
    )]
    Cdc(cdc::CdcCommand),
    Route(route::Args),
    Export(export::Args),
    Router(router::Args),
    /// Staged cutover: plan, start and follow cohorts of merchants moving to the shards
    #[command(
        subcommand,
        after_help = "Examples:\n  shardline cutover plan --cohort 5\n  shardline cutover start --cohort 5\n  shardline cutover status"
    )]
    Cutover(cutover::CutoverCommand),
    /// Table definitions: compare the targets with the source, run a migration on them
    #[command(
        subcommand,
        after_help = "Examples:\n  shardline schema diff\n  shardline --format json schema diff\n  shardline schema apply migrations/0042_risk_score.sql --dry-run"
    )]
    Schema(schema::SchemaCommand),
}

pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    let g = &cli.global;
    match cli.command {
        Command::Demo(args) => demo::run(args, g).await,
        Command::Dev(cmd) => dev::run(cmd, g).await,
        Command::Gen(args) => gen::run(args, g).await,
        Command::Backfill(args) => backfill::run(args, g).await,
        Command::Cdc(cmd) => cdc::run(cmd, g).await,
        Command::Verify(args) => verify::run(args, g).await,
        Command::Route(args) => route::run(args, g).await,
        Command::Export(args) => export::run(args, g).await,
        Command::Router(args) => router::run(args, g).await,
        Command::Cutover(cmd) => cutover::run(cmd, g).await,
        Command::Schema(cmd) => schema::run(cmd, g).await,
    }
}

/// Logs go to stderr; `SHARDLINE_LOG` (or `RUST_LOG`) overrides -v/-q.
pub fn init_logging(g: &Global) {
    let default = match (g.quiet, g.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    };
    let filter = std::env::var("SHARDLINE_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default.to_string());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if g.format == Format::Json {
        builder.json().init();
    } else {
        builder.init();
    }
}
