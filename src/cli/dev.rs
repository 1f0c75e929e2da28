//! `shardline dev`: a local fleet of PostgreSQL servers for trying things.

use std::path::{Path, PathBuf};

use serde::Serialize;
use shardline_gen::schemas;
use shardline_testkit::{Fleet, MemberSpec};
use shardline_topology::Topology;

use super::output::{print_json, Hint};
use super::{Format, Global};

/// Where `dev up` puts the fleet unless told otherwise.
pub const DEFAULT_DIR: &str = ".shardline";
/// The monolith listens here; shards, settlements and analytics follow.
pub const DEFAULT_BASE_PORT: u16 = 54320;

/// A local fleet: monolith, transaction shards, settlements and analytics
#[derive(clap::Subcommand, Debug)]
pub enum DevCommand {
    Up(UpArgs),
    Status(DirArgs),
    Down(DownArgs),
}

/// Start the monolith, N shards, settlements and analytics, and write DIR/shardline.toml
///
/// Each is a separate PostgreSQL server on loopback, created with its
/// context's schema. Running it again reuses what is there.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  shardline dev up --shards 4 --dir .shardline
  shardline dev up --shards 2 --dir /tmp/fleet --base-port 60000
  export SHARDLINE_CONFIG=.shardline/shardline.toml")]
pub struct UpArgs {
    /// Transaction shards
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub shards: u16,
    #[command(flatten)]
    pub dir: DirArgs,
    /// Port of the monolith; the other servers take the ports after it
    #[arg(long, default_value_t = DEFAULT_BASE_PORT, value_name = "PORT")]
    pub base_port: u16,
}

/// Show each server of the fleet: role, port, running, size
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  shardline dev status
  shardline --format json dev status --dir /tmp/fleet")]
pub struct DirArgs {
    /// The fleet's directory
    #[arg(long, default_value = DEFAULT_DIR, value_name = "DIR")]
    pub dir: PathBuf,
}

/// Stop every server of the fleet
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  shardline dev down
  shardline dev down --dir /tmp/fleet --purge")]
pub struct DownArgs {
    #[command(flatten)]
    pub dir: DirArgs,
    /// Also delete the directory and all its data
    #[arg(long)]
    pub purge: bool,
}

pub async fn run(cmd: DevCommand, g: &Global) -> anyhow::Result<u8> {
    match cmd {
        DevCommand::Up(args) => {
            let (fleet, config) = up(&args)?;
            if g.format == Format::Json {
                return status(&fleet, g);
            }
            status(&fleet, g)?;
            println!("topology: {}", config.display());
            println!(
                "next: export SHARDLINE_CONFIG={} && shardline gen --rows 100000",
                config.display()
            );
            Ok(super::exit::OK)
        }
        DevCommand::Status(args) => status(&load(&args.dir)?, g),
        DevCommand::Down(args) => {
            let fleet = load(&args.dir.dir)?;
            tokio::task::block_in_place(|| fleet.down(args.purge))?;
            if g.format == Format::Text {
                let what = if args.purge {
                    "stopped and removed"
                } else {
                    "stopped"
                };
                println!(
                    "{what} {} servers in {}",
                    fleet.members.len(),
                    fleet.dir.display()
                );
            }
            Ok(super::exit::OK)
        }
    }
}

/// Brings the fleet up with its schemas and returns it with its topology file.
pub fn up(args: &UpArgs) -> anyhow::Result<(Fleet, PathBuf)> {
    let mut specs = vec![spec("monolith", "monolith")];
    specs.extend((0..args.shards).map(|i| spec(&format!("shard{i}"), "tx")));
    specs.push(spec("settlements", "settlements"));
    specs.push(spec("analytics", "analytics"));
    let dir = absolute(&args.dir.dir)?;
    let fleet = tokio::task::block_in_place(|| Fleet::up(&dir, &specs, args.base_port))?;
    for member in &fleet.members {
        let schema = match member.name.as_str() {
            "monolith" => schemas::MONOLITH,
            "settlements" => schemas::SETTLEMENTS,
            "analytics" => schemas::ANALYTICS,
            _ => schemas::TRANSACTIONS,
        };
        let server = fleet.server(&member.name)?;
        tokio::task::block_in_place(|| server.psql(&member.database, schema))?;
    }
    let config = dir.join("shardline.toml");
    if !config.exists() {
        // It holds the router users' passwords: readable by its owner only.
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&config)?
            .write_all(topology_text(&fleet).as_bytes())?;
    }
    Topology::load(&config)?;
    Ok((fleet, config))
}

fn spec(name: &str, database: &str) -> MemberSpec {
    MemberSpec {
        name: name.into(),
        database: database.into(),
    }
}

fn absolute(dir: &Path) -> anyhow::Result<PathBuf> {
    Ok(if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir()?.join(dir)
    })
}

fn load(dir: &Path) -> anyhow::Result<Fleet> {
    Fleet::load(&absolute(dir)?)?.ok_or_else(|| {
        Hint::error(
            format!("no fleet in {}", dir.display()),
            "start one with `shardline dev up`, or pass the --dir it used",
        )
    })
}

/// The topology of a fleet, in the documented format.
fn topology_text(fleet: &Fleet) -> String {
    let url = |name: &str| {
        let m = fleet
            .members
            .iter()
            .find(|m| m.name == name)
            .expect("fleet member");
        format!("postgres://postgres@127.0.0.1:{}/{}", m.port, m.database)
    };
    let shards: Vec<String> = fleet
        .members
        .iter()
        .filter(|m| m.name.starts_with("shard"))
        .map(|m| format!("  \"{}\",", url(&m.name)))
        .collect();
    let password = random_password();
    format!(
        r#"# Written by `shardline dev up` for the local fleet in {dir}.

[source]
url = "{monolith}"

[contexts.transactions]
tables = ["payments", "payment_events", "refunds"]
shard_key = "merchant_id"
shards = [
{shards}
]
# merchants live in the analytics context: the shards cannot check this key
skip_objects = ["payments_merchant_fk"]

[contexts.settlements]
tables = ["settlements", "payouts"]
url = "{settlements}"

[contexts.analytics]
url = "{analytics}"
tables = ["merchants"]

[[read_models]]
name = "merchant_daily_volume"
from = "payments"
where = "status = 'captured'"
group_by = ["merchant_id", "date_trunc('day', created_at) AS day", "currency"]
aggregates = ["count(*) AS payments", "sum(amount) AS volume"]

[router]
listen = "127.0.0.1:6432"

[[router.users]]
name = "shardline"
password = "{password}"
"#,
        dir = fleet.dir.display(),
        monolith = url("monolith"),
        shards = shards.join("\n"),
        settlements = url("settlements"),
        analytics = url("analytics"),
    )
}

fn random_password() -> String {
    let mut bytes = [0u8; 12];
    let filled = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
    if filled.is_err() {
        // No urandom: fall back to the clock; this only guards a local fleet.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        bytes.copy_from_slice(&nanos.to_le_bytes()[..12]);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Serialize)]
struct ServerRow {
    name: String,
    database: String,
    port: u16,
    running: bool,
    size_bytes: Option<u64>,
}

fn status(fleet: &Fleet, g: &Global) -> anyhow::Result<u8> {
    let rows: Vec<ServerRow> = tokio::task::block_in_place(|| fleet.status())?
        .into_iter()
        .map(|s| ServerRow {
            name: s.member.name,
            database: s.member.database,
            port: s.member.port,
            running: s.running,
            size_bytes: s.size_bytes,
        })
        .collect();
    match g.format {
        Format::Json => print_json(&rows)?,
        Format::Text | Format::Markdown => {
            println!(
                "{:<12} {:<12} {:>6}  {:<8} {:>10}",
                "server", "database", "port", "state", "size"
            );
            for r in &rows {
                let size = r
                    .size_bytes
                    .map(|b| format!("{:.1} MB", b as f64 / 1e6))
                    .unwrap_or_else(|| "-".into());
                let state = if r.running { "running" } else { "stopped" };
                println!(
                    "{:<12} {:<12} {:>6}  {:<8} {:>10}",
                    r.name, r.database, r.port, state, size
                );
            }
        }
    }
    Ok(super::exit::OK)
}
