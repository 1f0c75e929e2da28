//! `shardline dev` (being built).

use super::Global;

/// A local fleet of PostgreSQL servers (being built)
#[derive(clap::Subcommand, Debug)]
pub enum DevCommand {
    Up,
}

pub async fn run(_cmd: DevCommand, _g: &Global) -> anyhow::Result<u8> {
    anyhow::bail!("shardline dev is not built yet")
}
