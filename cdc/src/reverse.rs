//! The way back of a cutover: each shard streamed to the monolith.
//!
//! After a cohort switches, its merchants write on the shards. A reverse
//! stream per shard carries those changes to the monolith, so a cohort can
//! be rolled back without losing a payment. It is the same [`crate::run`]
//! with the roles swapped ([`reverse_topology`]): the shard is the source,
//! the monolith the one target, and [`reverse_options`] give each shard its
//! own slot and the origins that keep the two directions from echoing:
//!
//! - forward appliers mark what they write on a shard with an origin under
//!   [`crate::apply::FORWARD_ORIGIN`]; the reverse stream skips those
//!   transactions (they came from the monolith);
//! - reverse appliers mark what they write on the monolith with an origin
//!   under [`REVERSE_ORIGIN`]; forward CDC skips those (they came from a
//!   shard).
//!
//! No bucket filter is needed: on a shard, only merchants served by the
//! shards are written by anyone but the forward applier.

use shardline_topology::{Context, ContextKind, CutoverConfig, Topology};

use crate::run::RunOptions;

/// The origin prefix of reverse CDC (shard → monolith).
pub const REVERSE_ORIGIN: &str = "shardline.reverse";

/// The publication of the sharded tables on each shard.
pub const REVERSE_PUBLICATION: &str = "shardline_reverse";

/// The topology of shard `shard`'s reverse stream: that shard as the
/// source, the monolith as the one database of a context holding the
/// sharded tables (reference tables are written on the monolith only).
pub fn reverse_topology(topology: &Topology, shard: usize) -> Option<Topology> {
    let sharded = topology.sharded_context()?;
    let ContextKind::Sharded { shards, .. } = &sharded.kind else {
        return None;
    };
    let source = shards.get(shard)?.clone();
    Some(Topology {
        path: topology.path.clone(),
        source,
        contexts: vec![Context {
            name: "monolith".into(),
            tables: sharded.tables.clone(),
            kind: ContextKind::Single {
                url: topology.source.clone(),
            },
            apply_interval: None,
            partitioning: Default::default(),
            skip_objects: Vec::new(),
        }],
        read_models: Vec::new(),
        router: topology.router.clone(),
        cutover: CutoverConfig::default(),
        cdc: topology.cdc,
        // Schema changes after the cutover run on every database
        // (`shardline schema apply`), not through the way back.
        ddl: shardline_topology::DdlMode::Stop,
    })
}

/// The slot of shard `shard`'s reverse stream: one per shard, since the
/// monolith records each stream's progress under its slot's name.
pub fn reverse_slot(shard: usize) -> String {
    format!("shardline_reverse_{shard}")
}

/// The options of shard `shard`'s reverse stream, from the forward ones.
pub fn reverse_options(forward: &RunOptions, shard: usize) -> RunOptions {
    RunOptions {
        slot: reverse_slot(shard),
        publication: REVERSE_PUBLICATION.into(),
        origin: REVERSE_ORIGIN.into(),
        skip_origin: format!("{}.", crate::apply::FORWARD_ORIGIN),
        jsonl: None,
        metrics_listen: None,
        ..forward.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_directions_skip_each_other() {
        let forward = RunOptions::default();
        let back = reverse_options(&forward, 1);
        let f = crate::apply::origin_name(&forward.origin, &forward.slot, "shard");
        let b = crate::apply::origin_name(&back.origin, &back.slot, "monolith");
        assert!(f.starts_with(&back.skip_origin), "{f} {}", back.skip_origin);
        assert!(
            b.starts_with(&forward.skip_origin),
            "{b} {}",
            forward.skip_origin
        );
        assert!(!f.starts_with(&forward.skip_origin));
        assert!(!b.starts_with(&back.skip_origin));
        assert_ne!(back.slot, reverse_options(&forward, 0).slot);
    }
}
