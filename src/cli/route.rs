//! `shardline route`: where keys live.

use serde::Serialize;
use shardline_topology::{Context, ContextKind};

use super::output::{print_json, Hint};
use super::{Format, Global};

/// Print the bucket and shard of each shard key
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  shardline route 42 1001 -7
  shardline --format json route 42
  shardline route --context transactions 9223372036854775807")]
pub struct Args {
    /// Shard key values (merchant ids), in the context's key type
    #[arg(required = true, value_name = "KEY", allow_hyphen_values = true)]
    keys: Vec<String>,
    /// The sharded context [default: the only sharded one]
    #[arg(long)]
    context: Option<String>,
}

#[derive(Serialize)]
struct Routed {
    key: String,
    bucket: u32,
    shard: usize,
    /// The shard's database, without its password.
    database: String,
}

pub async fn run(args: Args, g: &Global) -> anyhow::Result<u8> {
    let topology = g.topology()?;
    let context: &Context = match &args.context {
        Some(name) => topology.context(name).ok_or_else(|| {
            Hint::error(
                format!("no context named {name:?}"),
                "see [contexts.*] in the topology",
            )
        })?,
        None => topology.sharded_context().ok_or_else(|| {
            Hint::error(
                "the topology has no single sharded context",
                "name one with --context",
            )
        })?,
    };
    let ContextKind::Sharded {
        placement, shards, ..
    } = &context.kind
    else {
        return Err(Hint::error(
            format!("context {:?} is not sharded", context.name),
            "route applies to a context with shard_key and shards",
        ));
    };
    let mut out = Vec::new();
    for text in &args.keys {
        let key = placement.key_type().parse_key(text)?;
        let bucket = placement.bucket(&key);
        let shard = placement.shard_of_bucket(bucket);
        out.push(Routed {
            key: key.to_string(),
            bucket,
            shard,
            database: shards[shard].to_string(),
        });
    }
    match g.format {
        Format::Json => print_json(&out)?,
        Format::Text | Format::Markdown => {
            let width = out.iter().map(|r| r.key.len()).max().unwrap_or(3).max(3);
            println!(
                "{:<width$}  {:>6}  {:>5}  database",
                "key", "bucket", "shard"
            );
            for r in &out {
                println!(
                    "{:<width$}  {:>6}  {:>5}  {}",
                    r.key, r.bucket, r.shard, r.database
                );
            }
        }
    }
    Ok(super::exit::OK)
}
