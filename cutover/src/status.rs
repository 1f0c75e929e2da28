//! `cutover plan` and `cutover status`: what a stage would move, and where
//! every stage stands. Neither changes anything.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use shardline_topology::{quote_ident, Topology};

use crate::control::{self, ROUTER_LEASE_SECS};
use crate::coordinator::placement;
use crate::error::CutoverError;
use crate::plan::{self, Selector};

/// Merchants shown as a sample of a planned cohort.
const SAMPLE: i64 = 10;

/// What a stage would move.
#[derive(Clone, Debug, Serialize)]
pub struct PlanReport {
    pub selector: String,
    /// Buckets the stage would move (those not on the shards yet).
    pub buckets: Vec<u32>,
    pub buckets_on_shards: usize,
    pub buckets_total: u32,
    /// A few merchants of those buckets, from the monolith.
    pub merchant_sample: Vec<String>,
    /// Rows of those buckets in the monolith, per table and shard.
    pub rows: Vec<TableRows>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TableRows {
    pub table: String,
    /// Rows per shard index.
    pub per_shard: BTreeMap<usize, i64>,
}

/// Plans a stage: nothing is written.
pub async fn plan(topology: &Topology, selector: &Selector) -> Result<PlanReport, CutoverError> {
    let (name, placement) = placement(topology)?;
    let client = topology.source.connect().await?;
    let db = topology.source.to_string();
    let owners = control::load(&client)
        .await
        .map_err(|e| CutoverError::query(&db, "reading the bucket owners", e))?;
    let on_shards: BTreeSet<u32> = owners.on_shards.iter().copied().collect();
    let buckets = plan::cohort(selector, placement, &on_shards);
    let bucket_ints: Vec<i32> = buckets.iter().map(|b| *b as i32).collect();
    let context = topology
        .context(name)
        .ok_or(CutoverError::NoShardedContext)?;
    let key = match &context.kind {
        shardline_topology::ContextKind::Sharded { shard_key, .. } => shard_key.clone(),
        _ => return Err(CutoverError::NoShardedContext),
    };
    let bucket = placement.bucket_sql(&quote_ident(&key));
    let mut rows = Vec::new();
    let mut sample = Vec::new();
    for table in &context.tables {
        let sql = format!(
            "SELECT {bucket} AS b, count(*) FROM {} WHERE {bucket} = ANY($1::int[]) GROUP BY 1",
            table.quoted()
        );
        let found = client
            .query(&sql, &[&bucket_ints])
            .await
            .map_err(|e| CutoverError::query(&db, &format!("counting rows of {table}"), e))?;
        let mut per_shard = BTreeMap::new();
        for r in found {
            let b: i64 = r.get::<_, i64>(0);
            *per_shard
                .entry(placement.shard_of_bucket(b as u32))
                .or_insert(0) += r.get::<_, i64>(1);
        }
        rows.push(TableRows {
            table: table.short(),
            per_shard,
        });
        if sample.is_empty() {
            let sql = format!(
                "SELECT DISTINCT {k}::text FROM {} WHERE {bucket} = ANY($1::int[]) ORDER BY 1 LIMIT {SAMPLE}",
                table.quoted(),
                k = quote_ident(&key)
            );
            sample = client
                .query(&sql, &[&bucket_ints])
                .await
                .map_err(|e| CutoverError::query(&db, &format!("sampling {table}"), e))?
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect();
        }
    }
    Ok(PlanReport {
        selector: selector.describe(),
        buckets,
        buckets_on_shards: on_shards.len(),
        buckets_total: placement.buckets(),
        merchant_sample: sample,
        rows,
    })
}

/// Where the cutover stands.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub enabled: bool,
    pub buckets_total: u32,
    pub buckets_on_shards: usize,
    pub cohorts: Vec<Cohort>,
    pub routers: Vec<RouterSeen>,
    /// Monolith → shards: the CDC slot.
    pub forward: Option<SlotLag>,
    /// Shards → monolith: each shard's reverse slot that exists.
    pub reverse: Vec<SlotLag>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Cohort {
    pub id: i32,
    /// `forward` (to the shards) or `back` (a rollback).
    pub direction: String,
    pub selector: String,
    pub buckets: usize,
    pub state: String,
    pub epoch: i64,
    pub routers: Option<i32>,
    pub drain_ms: Option<f64>,
    pub catchup_ms: Option<f64>,
    pub pause_ms: Option<f64>,
    pub max_pause_ms: i64,
    pub switch_lsn: Option<String>,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub verify_before: Option<serde_json::Value>,
    pub verify_after: Option<serde_json::Value>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RouterSeen {
    pub router_id: String,
    pub seconds_since_seen: f64,
    pub alive: bool,
    pub epoch_acked: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct SlotLag {
    pub slot: String,
    pub active: bool,
    pub confirmed_lsn: Option<String>,
    /// WAL the slot has not confirmed yet.
    pub lag_bytes: Option<i64>,
}

pub async fn status(topology: &Topology, slot: &str) -> Result<Status, CutoverError> {
    let (_, placement) = placement(topology)?;
    let client = topology.source.connect().await?;
    let db = topology.source.to_string();
    let q = |what: &'static str| {
        let db = db.clone();
        move |e| CutoverError::query(&db, what, e)
    };
    let owners = control::load(&client)
        .await
        .map_err(q("reading the owners"))?;
    let mut status = Status {
        enabled: topology.cutover.enabled,
        buckets_total: placement.buckets(),
        buckets_on_shards: owners.on_shards.len(),
        cohorts: Vec::new(),
        routers: Vec::new(),
        forward: None,
        reverse: Vec::new(),
    };
    if control::exists(&client)
        .await
        .map_err(q("reading the schema"))?
    {
        let rows = client
            .query(
                "SELECT id, selector, cardinality(buckets), state, epoch, routers, drain_ms, catchup_ms,
                        pause_ms, max_pause_ms, switch_lsn::text, started_at::text, finished_at::text,
                        verify_before, verify_after, error, direction
                 FROM shardline.cutover_cohorts ORDER BY id",
                &[],
            )
            .await
            .map_err(q("reading the cohorts"))?;
        status.cohorts = rows
            .iter()
            .map(|r| Cohort {
                id: r.get(0),
                selector: r.get(1),
                buckets: r.get::<_, i32>(2) as usize,
                state: r.get(3),
                epoch: r.get(4),
                routers: r.get(5),
                drain_ms: r.get(6),
                catchup_ms: r.get(7),
                pause_ms: r.get(8),
                max_pause_ms: r.get(9),
                switch_lsn: r.get(10),
                started_at: r.get(11),
                finished_at: r.get(12),
                verify_before: r.get(13),
                verify_after: r.get(14),
                error: r.get(15),
                direction: r.get(16),
            })
            .collect();
        let rows = client
            .query(
                "SELECT router_id, extract(epoch FROM clock_timestamp() - last_seen)::float8, epoch_acked
                 FROM shardline.cutover_routers ORDER BY router_id",
                &[],
            )
            .await
            .map_err(q("reading the routers"))?;
        status.routers = rows
            .iter()
            .map(|r| {
                let ago: f64 = r.get(1);
                RouterSeen {
                    router_id: r.get(0),
                    seconds_since_seen: ago,
                    alive: ago < ROUTER_LEASE_SECS as f64,
                    epoch_acked: r.get(2),
                }
            })
            .collect();
    }
    status.forward = client
        .query_opt(
            "SELECT active, confirmed_flush_lsn::text, (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(q("reading the slot"))?
        .map(|r| SlotLag {
            slot: slot.to_string(),
            active: r.get(0),
            confirmed_lsn: r.get(1),
            lag_bytes: r.get(2),
        });
    if let Some(shardline_topology::ContextKind::Sharded { shards, .. }) =
        topology.sharded_context().map(|c| &c.kind)
    {
        for (i, conn) in shards.iter().enumerate() {
            let slot = format!("shardline_reverse_{i}");
            let client = conn.connect().await?;
            let row = client
                .query_opt(
                    "SELECT active, confirmed_flush_lsn::text, (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint
                     FROM pg_replication_slots WHERE slot_name = $1",
                    &[&slot],
                )
                .await
                .map_err(|e| CutoverError::query(conn, "reading the reverse slot", e))?;
            if let Some(r) = row {
                status.reverse.push(SlotLag {
                    slot: format!("{slot} on {conn}"),
                    active: r.get(0),
                    confirmed_lsn: r.get(1),
                    lag_bytes: r.get(2),
                });
            }
        }
    }
    Ok(status)
}
