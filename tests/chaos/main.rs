//! The chaos suite: every long-running command, as the real binary, run
//! through faults under a mixed write load (inserts, updates that move
//! merchants between shards, TOASTed values, deletes): connections cut
//! mid-stream, servers restarted, SIGKILL, latency, silent peers, refused
//! reconnects ([`shardline_testkit::FaultProxy`]). Each scenario ends by
//! comparing every target with the source in SQL of its own (no row lost,
//! none doubled, none on the wrong shard), not with `shardline verify`
//! alone.
//!
//! Slow scenarios take a seed (`SHARDLINE_CHAOS_SEED`, else one from the
//! clock) and a bounded duration; the seed is printed at the start of each
//! scenario (shown on failure), so a failing run can be replayed.

mod backfill;
mod cdc;
mod cutover;
mod group;
mod harness;
mod router;
mod verify;
