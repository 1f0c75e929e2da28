//! The cutover state, kept in the monolith (`shardline` schema) so every
//! router and operator reads the same one, and the channel that announces
//! its changes.
//!
//! - `cutover_buckets`: a row per bucket that left the monolith (owner
//!   `shards`), with the cohort that moved it and the monolith position
//!   of its switch. A bucket without a row is served by the monolith.
//! - `cutover_cohorts`: one row per stage: its buckets, its state
//!   (`holding`, `switched`, `aborted`), the hold epoch routers
//!   acknowledge, the pause and its parts, verify results, the error.
//! - `cutover_routers`: each live router's heartbeat and the last hold
//!   epoch it acknowledged (its open transactions on the held buckets
//!   ended and it holds new ones).
//!
//! Every change is followed by `NOTIFY shardline_cutover`; routers reload
//! the whole state (at most one row per bucket) when told.

use tokio_postgres::Client;

/// The channel routers LISTEN on.
pub const CHANNEL: &str = "shardline_cutover";

/// A router that has not written its heartbeat for this long is taken for
/// dead: the coordinator stops waiting for its acknowledgement. A router
/// that cannot write its heartbeat holds every statement it would have to
/// route by the cutover state, so it never acts on a stale state.
pub const ROUTER_LEASE_SECS: i64 = 5;

/// How often routers write their heartbeat.
pub const HEARTBEAT_MILLIS: u64 = 1000;

/// Serialises concurrent creation of the schema (`CREATE … IF NOT EXISTS`
/// can still race on the catalog).
const SCHEMA_LOCK: i64 = 0x7368_6c63_7574_0001;

/// Serialises coordinators: one stage at a time.
pub const COORDINATOR_LOCK: i64 = 0x7368_6c63_7574_0002;

const DDL: &str = "
CREATE SCHEMA IF NOT EXISTS shardline;
CREATE SEQUENCE IF NOT EXISTS shardline.cutover_epoch;
CREATE TABLE IF NOT EXISTS shardline.cutover_buckets (
    bucket int PRIMARY KEY,
    owner text NOT NULL CHECK (owner IN ('monolith', 'shards')),
    cohort int,
    switch_lsn pg_lsn,
    switched_at timestamptz
);
CREATE TABLE IF NOT EXISTS shardline.cutover_cohorts (
    id serial PRIMARY KEY,
    selector text NOT NULL,
    buckets int[] NOT NULL,
    state text NOT NULL CHECK (state IN ('holding', 'switched', 'aborted')),
    epoch bigint NOT NULL,
    max_pause_ms bigint NOT NULL,
    hold_deadline timestamptz NOT NULL,
    routers int,
    drain_ms double precision,
    catchup_ms double precision,
    pause_ms double precision,
    switch_lsn pg_lsn,
    started_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    verify_before jsonb,
    verify_after jsonb,
    error text
);
ALTER TABLE shardline.cutover_cohorts
    ADD COLUMN IF NOT EXISTS direction text NOT NULL DEFAULT 'forward' CHECK (direction IN ('forward', 'back'));
CREATE TABLE IF NOT EXISTS shardline.cutover_routers (
    router_id text PRIMARY KEY,
    started_at timestamptz NOT NULL DEFAULT now(),
    last_seen timestamptz NOT NULL,
    epoch_acked bigint NOT NULL DEFAULT 0
);
";

/// Creates the control schema when missing; safe to run concurrently.
pub async fn ensure(client: &mut Client) -> Result<(), tokio_postgres::Error> {
    let txn = client.transaction().await?;
    txn.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
        .await?;
    txn.batch_execute(DDL).await?;
    txn.commit().await
}

/// Removes the control schema's tables: every bucket is the monolith's
/// again and no stage or router is remembered (a fleet that starts over,
/// as the demo's does).
pub async fn forget(client: &Client) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(
            "DROP TABLE IF EXISTS shardline.cutover_buckets, shardline.cutover_cohorts, shardline.cutover_routers;
             DROP SEQUENCE IF EXISTS shardline.cutover_epoch;",
        )
        .await
}

/// Whether the control schema exists (a monolith no cutover has touched
/// has none: every bucket is its own).
pub async fn exists(client: &Client) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT to_regclass('shardline.cutover_cohorts') IS NOT NULL",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// A hold in progress: routers hold new statements of `buckets`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    pub cohort: i32,
    pub epoch: i64,
    pub buckets: Vec<u32>,
    pub max_pause_ms: i64,
}

/// What a router needs of the state: which buckets the shards serve, and
/// the hold in progress, if any.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Owners {
    pub on_shards: Vec<u32>,
    pub hold: Option<Hold>,
}

/// Reads the owners and the current hold (none of either when the schema
/// does not exist yet).
pub async fn load(client: &Client) -> Result<Owners, tokio_postgres::Error> {
    if !exists(client).await? {
        return Ok(Owners::default());
    }
    let rows = client
        .query(
            "SELECT bucket FROM shardline.cutover_buckets WHERE owner = 'shards' ORDER BY bucket",
            &[],
        )
        .await?;
    let on_shards = rows.iter().map(|r| r.get::<_, i32>(0) as u32).collect();
    let hold = client
        .query_opt(
            "SELECT id, epoch, buckets, max_pause_ms FROM shardline.cutover_cohorts
             WHERE state = 'holding' ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await?
        .map(|r| Hold {
            cohort: r.get(0),
            epoch: r.get(1),
            buckets: r
                .get::<_, Vec<i32>>(2)
                .into_iter()
                .map(|b| b as u32)
                .collect(),
            max_pause_ms: r.get(3),
        });
    Ok(Owners { on_shards, hold })
}

/// Records a router's heartbeat (and the epoch it acknowledged, when it
/// has one).
pub async fn heartbeat(
    client: &Client,
    router_id: &str,
    epoch_acked: i64,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO shardline.cutover_routers (router_id, last_seen, epoch_acked)
             VALUES ($1, clock_timestamp(), $2)
             ON CONFLICT (router_id) DO UPDATE
             SET last_seen = clock_timestamp(),
                 epoch_acked = greatest(shardline.cutover_routers.epoch_acked, excluded.epoch_acked)",
            &[&router_id, &epoch_acked],
        )
        .await?;
    Ok(())
}

/// Removes a router that stops, so no coordinator waits for it.
pub async fn leave(client: &Client, router_id: &str) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "DELETE FROM shardline.cutover_routers WHERE router_id = $1",
            &[&router_id],
        )
        .await?;
    Ok(())
}

/// Ends a hold whose coordinator went away: once the hold's deadline has
/// passed on the monolith's clock, no coordinator may switch it any more
/// (its switch checks the same deadline in the same row), so a router may
/// mark it aborted and serve its merchants from the monolith again.
pub async fn expire(client: &Client, cohort: i32) -> Result<bool, tokio_postgres::Error> {
    let n = client
        .execute(
            "UPDATE shardline.cutover_cohorts
             SET state = 'aborted', finished_at = now(),
                 error = 'the coordinator did not finish the stage before its hold deadline; routers released it'
             WHERE id = $1 AND state = 'holding' AND now() >= hold_deadline",
            &[&cohort],
        )
        .await?;
    if n > 0 {
        notify(client).await?;
    }
    Ok(n > 0)
}

/// Tells every router the state changed.
pub async fn notify(client: &Client) -> Result<(), tokio_postgres::Error> {
    client
        .execute("SELECT pg_notify($1, 'changed')", &[&CHANNEL])
        .await?;
    Ok(())
}
