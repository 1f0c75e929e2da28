//! `shardline verify` (being built).

use super::Global;

/// (being built)
#[derive(clap::Args, Debug)]
pub struct Args {}

pub async fn run(_args: Args, _g: &Global) -> anyhow::Result<u8> {
    anyhow::bail!("shardline verify is not built yet")
}
