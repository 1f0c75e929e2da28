//! The switch of one cohort, driven by `shardline cutover start`.
//!
//! 1. **Hold.** A cohort row in state `holding` with a new epoch E and a
//!    deadline (now + `max_pause` on the monolith's clock), then NOTIFY.
//!    Every live router holds new statements of those buckets (statements
//!    of transactions already open go on, or the drain would deadlock),
//!    waits until its open transactions on them end, and acknowledges E.
//! 2. **Drain.** The coordinator waits for the acknowledgement of every
//!    router whose heartbeat is recent ([`ROUTER_LEASE_SECS`]).
//! 3. **Catch up.** It records `pg_current_wal_insert_lsn()` on the
//!    monolith (past every commit so far, whatever `synchronous_commit`
//!    says), commits a logical message after it synchronously (so the
//!    stream carries that position at once, even from an idle monolith),
//!    and waits until the CDC slot's `confirmed_flush_lsn` passes it: CDC
//!    confirms a position only once every target made everything before
//!    it durable, so every change of the held merchants is on the shards.
//! 4. **Switch.** In one monolith transaction, and only if the deadline
//!    has not passed: the buckets' owner becomes `shards`, the cohort
//!    `switched`, NOTIFY. Routers flip and release the held statements to
//!    the shards.
//!
//! If any step would pass the deadline, nothing is switched: the cohort is
//! marked `aborted` with the cause, routers release the held statements to
//! the monolith, and [`start`] returns [`CutoverError::Aborted`]. A
//! coordinator that dies while holding cannot switch after the deadline
//! either (the switch checks it in the same statement), so routers release
//! such a hold themselves once it has passed ([`crate::control::expire`]).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde::Serialize;
use shardline_topology::{ContextKind, Placement, Topology};
use tokio_postgres::Client;

use crate::control::{self, COORDINATOR_LOCK, ROUTER_LEASE_SECS};
use crate::error::CutoverError;
use crate::plan::{self, Selector};

/// The pause limit when the operator gives none: far above the usual
/// pause (well under a second), far below what clients' timeouts allow.
pub const DEFAULT_MAX_PAUSE: Duration = Duration::from_secs(30);

/// How often the coordinator looks at acknowledgements and the slot.
const POLL: Duration = Duration::from_millis(3);

/// How often it writes a heartbeat into the monolith's WAL while waiting
/// for CDC, so an idle monolith's slot moves past the switch position.
const NUDGE: Duration = Duration::from_millis(200);

/// How long a stage waits at most (and never longer than its pause
/// limit), before it holds anything, for CDC to apply what was already
/// written.
const PRE_CATCH_UP: Duration = Duration::from_secs(30);

/// The prefix of the messages the coordinator writes into the monolith's
/// WAL while it waits for CDC (CDC ignores their content).
const NUDGE_PREFIX: &str = "shardline.cutover";

/// Which way a stage moves its buckets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Monolith → shards; waits for forward CDC.
    Forward,
    /// Shards → monolith (rollback); waits for every shard's reverse CDC.
    Back,
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Self::Forward => "forward",
            Self::Back => "back",
        }
    }
}

#[derive(Clone, Debug)]
pub struct StartRequest {
    pub selector: Selector,
    pub max_pause: Duration,
    /// The CDC slot whose confirmed position proves the shards caught up.
    pub slot: String,
    /// Run verify on the sharded context before the hold and after the switch.
    pub verify: bool,
}

/// What a stage did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StageReport {
    /// The cohort row, `None` when there was nothing to move.
    pub cohort: Option<i32>,
    pub selector: String,
    pub state: String,
    pub buckets: Vec<u32>,
    /// Buckets on the shards after the stage, of `buckets_total`.
    pub buckets_on_shards: usize,
    pub buckets_total: u32,
    /// Routers whose acknowledgement the switch waited for.
    pub routers: usize,
    pub drain_ms: f64,
    pub catchup_ms: f64,
    /// Hold to release, as the coordinator measured it.
    pub pause_ms: f64,
    pub switch_lsn: Option<String>,
    pub verify_before: Option<serde_json::Value>,
    pub verify_after: Option<serde_json::Value>,
}

/// The sharded context's placement, or why there is none.
pub fn placement(topology: &Topology) -> Result<(&str, &Placement), CutoverError> {
    let context = topology
        .sharded_context()
        .ok_or(CutoverError::NoShardedContext)?;
    match &context.kind {
        ContextKind::Sharded { placement, .. } => Ok((&context.name, placement)),
        ContextKind::Single { .. } => Err(CutoverError::NoShardedContext),
    }
}

/// Checks what a stage needs before anything is written: cutover enabled,
/// a sharded context, the CDC slot.
pub async fn preflight(topology: &Topology, slot: &str) -> Result<Client, CutoverError> {
    placement(topology)?;
    if !topology.cutover.enabled {
        return Err(CutoverError::NotEnabled {
            path: topology.path.display().to_string(),
        });
    }
    let client = topology.source.connect().await?;
    let found = client
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| CutoverError::query(&topology.source, "looking up the slot", e))?;
    if found.is_none() {
        return Err(CutoverError::NoSlot {
            slot: slot.to_string(),
            database: topology.source.to_string(),
        });
    }
    Ok(client)
}

/// Moves one cohort from the monolith to the shards (see the module
/// documentation for the protocol).
pub async fn start(topology: &Topology, req: &StartRequest) -> Result<StageReport, CutoverError> {
    stage(topology, req, Direction::Forward).await
}

/// Returns buckets from the shards to the monolith with the same protocol,
/// waiting for every shard's reverse stream (`shardline cdc run
/// --reverse`) instead of the forward one. `--cohort P` goes back to P%.
pub async fn rollback(
    topology: &Topology,
    req: &StartRequest,
) -> Result<StageReport, CutoverError> {
    stage(topology, req, Direction::Back).await
}

/// Each shard's connection and reverse slot, checked to exist.
async fn reverse_slots(topology: &Topology) -> Result<Vec<(Client, String, String)>, CutoverError> {
    let shards = match &topology.sharded_context().map(|c| &c.kind) {
        Some(ContextKind::Sharded { shards, .. }) => shards.clone(),
        _ => return Err(CutoverError::NoShardedContext),
    };
    let mut out = Vec::new();
    for (i, conn) in shards.iter().enumerate() {
        let client = conn.connect().await?;
        let slot = format!("shardline_reverse_{i}");
        let found = client
            .query_opt(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(|e| CutoverError::query(conn, "looking up the reverse slot", e))?;
        if found.is_none() {
            return Err(CutoverError::NoReverseSlot {
                slot,
                database: conn.to_string(),
            });
        }
        client
            .batch_execute("SET synchronous_commit = on")
            .await
            .map_err(|e| CutoverError::query(conn, "setting synchronous_commit", e))?;
        out.push((client, slot, conn.to_string()));
    }
    Ok(out)
}

async fn stage(
    topology: &Topology,
    req: &StartRequest,
    direction: Direction,
) -> Result<StageReport, CutoverError> {
    let (_, placement) = placement(topology)?;
    // CDC confirms the slot only past what every context committed, so a
    // context that commits every few minutes holds a switch that long.
    for c in &topology.contexts {
        if let Some(interval) = c.apply_interval.filter(|i| *i >= req.max_pause) {
            return Err(CutoverError::SlowContext {
                context: c.name.clone(),
                interval_secs: interval.as_secs(),
                max_pause_secs: req.max_pause.as_secs_f64(),
            });
        }
    }
    let mut client = preflight(topology, &req.slot).await?;
    let reverse = match direction {
        Direction::Forward => Vec::new(),
        Direction::Back => reverse_slots(topology).await?,
    };
    let db = topology.source.to_string();
    let q = |what: &'static str| {
        let db = db.clone();
        move |e| CutoverError::query(&db, what, e)
    };
    control::ensure(&mut client)
        .await
        .map_err(q("creating the cutover schema"))?;
    client
        .batch_execute("SET synchronous_commit = on")
        .await
        .map_err(q("setting synchronous_commit"))?;
    let locked: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&COORDINATOR_LOCK])
        .await
        .map_err(q("taking the coordinator lock"))?
        .get(0);
    if !locked {
        return Err(CutoverError::Busy { database: db });
    }
    // A hold left by a coordinator that died: past its deadline it can be
    // closed; before, a stage is still in flight.
    let stale: Option<i32> = client
        .query_opt(
            "SELECT id FROM shardline.cutover_cohorts WHERE state = 'holding'",
            &[],
        )
        .await
        .map_err(q("reading the cohorts"))?
        .map(|r| r.get(0));
    if let Some(id) = stale {
        if !control::expire(&client, id)
            .await
            .map_err(q("closing a stale hold"))?
        {
            return Err(CutoverError::Busy { database: db });
        }
    }

    let owners = control::load(&client)
        .await
        .map_err(q("reading the bucket owners"))?;
    let on_shards: BTreeSet<u32> = owners.on_shards.iter().copied().collect();
    let buckets = match direction {
        Direction::Forward => plan::cohort(&req.selector, placement, &on_shards),
        Direction::Back => plan::back(&req.selector, placement, &on_shards),
    };
    let mut report = StageReport {
        selector: req.selector.describe(),
        buckets: buckets.clone(),
        buckets_total: placement.buckets(),
        buckets_on_shards: on_shards.len(),
        state: "nothing to move".into(),
        ..StageReport::default()
    };
    if buckets.is_empty() {
        return Ok(report);
    }
    if req.verify {
        report.verify_before = Some(run_verify(topology).await?);
    }

    // Before holding anything, let CDC catch up with what is already
    // written, so the pause only waits for what comes during the drain.
    // Bounded: under a load CDC cannot keep up with, the stage goes on.
    let ready_by = Instant::now() + PRE_CATCH_UP.min(req.max_pause);
    match direction {
        Direction::Forward => {
            let _ = catch_up(&client, &req.slot, 0, ready_by, "the monolith").await;
        }
        Direction::Back => {
            for (shard, slot, name) in &reverse {
                let _ = catch_up(shard, slot, 0, ready_by, name).await;
            }
        }
    }

    // 1. Hold.
    let max_pause_ms = req.max_pause.as_millis() as i64;
    let bucket_ints: Vec<i32> = buckets.iter().map(|b| *b as i32).collect();
    let txn = client.transaction().await.map_err(q("starting the hold"))?;
    let row = txn
        .query_one(
            "INSERT INTO shardline.cutover_cohorts
                 (selector, buckets, state, epoch, max_pause_ms, hold_deadline, verify_before, direction)
             VALUES ($1, $2, 'holding', nextval('shardline.cutover_epoch'), $3::bigint,
                     clock_timestamp() + $3::bigint * interval '1 millisecond', $4, $5)
             RETURNING id, epoch",
            &[
                &report.selector,
                &bucket_ints,
                &max_pause_ms,
                &report.verify_before,
                &direction.name(),
            ],
        )
        .await
        .map_err(q("recording the hold"))?;
    let (cohort, epoch): (i32, i64) = (row.get(0), row.get(1));
    txn.execute("SELECT pg_notify($1, 'hold')", &[&control::CHANNEL])
        .await
        .map_err(q("announcing the hold"))?;
    txn.commit().await.map_err(q("committing the hold"))?;
    let held_at = Instant::now();
    let deadline = held_at + req.max_pause;
    report.cohort = Some(cohort);
    tracing::info!(cohort, epoch, buckets = buckets.len(), "holding");

    let outcome = switch(
        &client,
        direction,
        &reverse,
        &req.slot,
        cohort,
        epoch,
        &bucket_ints,
        held_at,
        deadline,
        &mut report,
    )
    .await;
    if let Err(cause) = outcome {
        let pause_ms = held_at.elapsed().as_secs_f64() * 1000.0;
        abort(&client, cohort, &cause, pause_ms)
            .await
            .map_err(q("recording the abort"))?;
        return Err(CutoverError::Aborted {
            cohort,
            pause_ms,
            cause,
        });
    }
    (report.state, report.buckets_on_shards) = match direction {
        Direction::Forward => ("switched".into(), on_shards.len() + buckets.len()),
        Direction::Back => ("rolled back".into(), on_shards.len() - buckets.len()),
    };
    if req.verify {
        let after = run_verify(topology).await?;
        client
            .execute(
                "UPDATE shardline.cutover_cohorts SET verify_after = $2 WHERE id = $1",
                &[&cohort, &after],
            )
            .await
            .map_err(q("recording verify"))?;
        report.verify_after = Some(after);
    }
    Ok(report)
}

/// Steps 2 to 4; `Err` is the cause of an abort.
#[allow(clippy::too_many_arguments)]
async fn switch(
    client: &Client,
    direction: Direction,
    reverse: &[(Client, String, String)],
    slot: &str,
    cohort: i32,
    epoch: i64,
    buckets: &[i32],
    held_at: Instant,
    deadline: Instant,
    report: &mut StageReport,
) -> Result<(), String> {
    let sql = |e: tokio_postgres::Error| format!("the monolith failed: {e}");
    // 2. Drain: every live router acknowledges the epoch.
    let lease = format!("{ROUTER_LEASE_SECS} seconds");
    loop {
        let row = client
            .query_one(
                "SELECT count(*), coalesce(string_agg(router_id, ', ') FILTER (WHERE epoch_acked < $1), '')
                 FROM shardline.cutover_routers
                 WHERE last_seen > clock_timestamp() - $2::text::interval",
                &[&epoch, &lease],
            )
            .await
            .map_err(sql)?;
        let waiting: String = row.get(1);
        if waiting.is_empty() {
            report.routers = row.get::<_, i64>(0) as usize;
            break;
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "routers {waiting} did not finish their open transactions on the cohort's merchants in time"
            ));
        }
        tokio::time::sleep(POLL).await;
    }
    report.drain_ms = held_at.elapsed().as_secs_f64() * 1000.0;

    // 3. Catch up: CDC confirms past the current position of every source
    // the held merchants may have written (the monolith going forward,
    // every shard going back).
    let caught_up = Instant::now();
    let lsn = match direction {
        Direction::Forward => catch_up(client, slot, epoch, deadline, "the monolith").await?,
        Direction::Back => {
            for (shard, slot, name) in reverse {
                catch_up(shard, slot, epoch, deadline, name).await?;
            }
            String::new()
        }
    };
    report.catchup_ms = caught_up.elapsed().as_secs_f64() * 1000.0;

    // 4. Switch, only within the deadline.
    let pause_ms = held_at.elapsed().as_secs_f64() * 1000.0;
    let switched = client
        .query_opt(
            "WITH c AS (
                 UPDATE shardline.cutover_cohorts
                 SET state = 'switched', finished_at = clock_timestamp(), switch_lsn = nullif($2, '')::pg_lsn,
                     routers = $3, drain_ms = $4, catchup_ms = $5, pause_ms = $6
                 WHERE id = $1 AND state = 'holding' AND clock_timestamp() < hold_deadline
                 RETURNING id
             ), b AS (
                 INSERT INTO shardline.cutover_buckets (bucket, owner, cohort, switch_lsn, switched_at)
                 SELECT unnest($7::int[]), $9::text, c.id, nullif($2, '')::pg_lsn, clock_timestamp() FROM c
                 ON CONFLICT (bucket) DO UPDATE
                 SET owner = excluded.owner, cohort = excluded.cohort, switch_lsn = excluded.switch_lsn,
                     switched_at = excluded.switched_at
                 RETURNING 1
             )
             SELECT pg_notify($8, 'switched'), (SELECT count(*) FROM b) FROM c",
            &[
                &cohort,
                &lsn,
                &(report.routers as i32),
                &report.drain_ms,
                &report.catchup_ms,
                &pause_ms,
                &buckets,
                &control::CHANNEL,
                &match direction {
                    Direction::Forward => "shards",
                    Direction::Back => "monolith",
                },
            ],
        )
        .await
        .map_err(sql)?;
    if switched.is_none() {
        return Err("the hold deadline passed before the switch".into());
    }
    report.pause_ms = pause_ms;
    report.switch_lsn = (!lsn.is_empty()).then_some(lsn);
    Ok(())
}

/// Waits until `slot` on `source` confirms `source`'s current insert
/// position; returns that position, or the cause of an abort.
async fn catch_up(
    source: &Client,
    slot: &str,
    epoch: i64,
    deadline: Instant,
    name: &str,
) -> Result<String, String> {
    let sql = |e: tokio_postgres::Error| format!("{name} failed: {e}");
    // The insert position, not the write position: with synchronous_commit
    // off a committed transaction's record can lie past the write position.
    let lsn: String = source
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .map_err(sql)?
        .get(0);
    let mut nudged: Option<Instant> = None;
    loop {
        if nudged.is_none_or(|t| t.elapsed() >= NUDGE) {
            // A transactional message, committed synchronously: its commit
            // flushes the WAL up to it, so the stream carries the position
            // now, not at the WAL writer's next round, and CDC confirms it
            // once everything before it is durable on every target.
            source
                .execute(
                    "SELECT pg_logical_emit_message(true, $1, $2::bigint::text)",
                    &[&NUDGE_PREFIX, &epoch],
                )
                .await
                .map_err(sql)?;
            nudged = Some(Instant::now());
        }
        let row = source
            .query_opt(
                "SELECT confirmed_flush_lsn >= $2::text::pg_lsn, confirmed_flush_lsn::text
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot, &lsn],
            )
            .await
            .map_err(sql)?;
        let Some(row) = row else {
            return Err(format!(
                "the replication slot {slot:?} on {name} disappeared"
            ));
        };
        if row.get::<_, Option<bool>>(0) == Some(true) {
            return Ok(lsn);
        }
        if Instant::now() >= deadline {
            let confirmed: Option<String> = row.get(1);
            return Err(format!(
                "CDC did not confirm {name}'s position {lsn} in time (slot {slot:?} confirmed {}); is `shardline cdc run{}` streaming?",
                confirmed.as_deref().unwrap_or("nothing"),
                if slot.starts_with("shardline_reverse_") { " --reverse" } else { "" }
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn abort(
    client: &Client,
    cohort: i32,
    cause: &str,
    pause_ms: f64,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE shardline.cutover_cohorts
             SET state = 'aborted', error = $2, pause_ms = $3, finished_at = clock_timestamp()
             WHERE id = $1 AND state = 'holding'",
            &[&cohort, &cause, &pause_ms],
        )
        .await?;
    control::notify(client).await
}

/// Verify of the sharded context's tables, as JSON for the cohort row.
async fn run_verify(topology: &Topology) -> Result<serde_json::Value, CutoverError> {
    let (name, _) = placement(topology)?;
    let tables = topology
        .context(name)
        .map(|c| c.tables.iter().map(|t| t.to_string()).collect())
        .unwrap_or_default();
    let request = shardline_verify::VerifyRequest {
        tables: Some(tables),
        ..Default::default()
    };
    let report = shardline_verify::verify(topology, &request, |_| {})
        .await
        .map_err(|e| CutoverError::Query {
            what: "verify".into(),
            database: topology.source.to_string(),
            cause: e.to_string(),
        })?;
    Ok(serde_json::json!({
        "equal": report.equal,
        "seconds": report.seconds,
        "tables": report.tables.iter().map(|t| serde_json::json!({
            "table": t.table,
            "equal": t.equal,
            "source_rows": t.source_rows,
            "target_rows": t.target_rows,
            "counts": t.counts.iter().map(|(k, n)| (k.name().to_string(), *n)).collect::<std::collections::BTreeMap<_, _>>(),
        })).collect::<Vec<_>>(),
    }))
}
