//! `cdc status` and `cdc drop`: where the slot and each target stand.

use serde::Serialize;
use shardline_topology::{quote_ident, Topology};

use crate::route::Routes;
use crate::run::CdcError;

#[derive(Debug, Serialize)]
pub struct SlotStatus {
    pub name: String,
    pub exists: bool,
    pub active: bool,
    pub confirmed_lsn: Option<String>,
    /// WAL between the confirmed position and the source's current one.
    pub lag_bytes: Option<i64>,
    /// WAL the slot keeps the source from recycling.
    pub retained_bytes: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct TargetStatus {
    pub target: String,
    pub context: String,
    /// Commit LSN of the last source transaction applied here.
    pub applied_lsn: Option<String>,
    /// When the source committed that transaction.
    pub applied_commit_time: Option<String>,
    /// WAL between what this target applied and the source's current position.
    pub lag_bytes: Option<i64>,
    /// Seconds between that source commit and now.
    pub lag_seconds: Option<f64>,
    /// Changes recorded as having found this target diverged
    /// (`shardline.cdc_divergence`, under `on_divergence = "count"`).
    pub divergences: Option<i64>,
    pub error: Option<String>,
}

/// The last `cdc run` of the slot, as it recorded itself on the source
/// (`crate::retry::record`).
#[derive(Debug, Serialize)]
pub struct RunStatus {
    pub pid: i32,
    pub host: String,
    pub started_at: String,
    /// Times it set the stream up again after a lost connection.
    pub reconnects: i64,
    /// Attempts that failed while doing so.
    pub retries: i64,
    pub last_fault: Option<String>,
    pub updated_at: String,
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub source_lsn: String,
    pub slot: SlotStatus,
    pub run: Option<RunStatus>,
    pub targets: Vec<TargetStatus>,
}

pub async fn status(topology: &Topology, slot: &str) -> Result<Status, CdcError> {
    let source = topology.source.connect().await?;
    let q = |e: tokio_postgres::Error| CdcError::query(&topology.source, &e);
    let source_lsn: String = source
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .map_err(q)?
        .get(0);
    let row = source
        .query_opt(
            "SELECT active, confirmed_flush_lsn::text,
                    (pg_current_wal_lsn() - confirmed_flush_lsn)::int8,
                    (pg_current_wal_lsn() - restart_lsn)::int8
               FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(q)?;
    let slot_status = SlotStatus {
        name: slot.to_string(),
        exists: row.is_some(),
        active: row.as_ref().is_some_and(|r| r.get(0)),
        confirmed_lsn: row.as_ref().and_then(|r| r.get(1)),
        lag_bytes: row.as_ref().and_then(|r| r.get(2)),
        retained_bytes: row.as_ref().and_then(|r| r.get(3)),
    };
    let run = source
        .query_opt(
            "SELECT pid, host, started_at::text, reconnects, retries, last_fault, updated_at::text
               FROM shardline.cdc_run WHERE slot_name = $1 AND to_regclass('shardline.cdc_run') IS NOT NULL",
            &[&slot],
        )
        .await
        .ok()
        .flatten()
        .map(|r| RunStatus {
            pid: r.get(0),
            host: r.get(1),
            started_at: r.get(2),
            reconnects: r.get(3),
            retries: r.get(4),
            last_fault: r.get(5),
            updated_at: r.get(6),
        });
    let routes = Routes::from_topology(topology);
    let mut targets = Vec::new();
    for (i, conn) in routes.targets.iter().enumerate() {
        let mut t = TargetStatus {
            target: conn.to_string(),
            context: routes.target_context[i].clone(),
            applied_lsn: None,
            applied_commit_time: None,
            lag_bytes: None,
            lag_seconds: None,
            divergences: None,
            error: None,
        };
        match target_progress(conn, slot, &source_lsn).await {
            Ok(Some(p)) => {
                t.applied_lsn = Some(p.lsn);
                t.applied_commit_time = p.commit_time;
                t.lag_bytes = Some(p.lag_bytes);
                t.lag_seconds = p.lag_seconds;
                t.divergences = p.divergences;
            }
            Ok(None) => {}
            Err(e) => t.error = Some(e),
        }
        targets.push(t);
    }
    Ok(Status {
        source_lsn,
        slot: slot_status,
        run,
        targets,
    })
}

/// Where one target stands.
struct Progress {
    lsn: String,
    commit_time: Option<String>,
    lag_bytes: i64,
    lag_seconds: Option<f64>,
    divergences: Option<i64>,
}

async fn target_progress(
    conn: &shardline_topology::ConnString,
    slot: &str,
    source_lsn: &str,
) -> Result<Option<Progress>, String> {
    let client = conn.connect().await.map_err(|e| e.to_string())?;
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('shardline.cdc_progress') IS NOT NULL",
            &[],
        )
        .await
        .map_err(|e| shardline_topology::describe_pg_error(&e))?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let row = client
        .query_opt(
            "SELECT commit_lsn::text, commit_time::text, greatest($2::text::pg_lsn - end_lsn, 0)::int8,
                    extract(epoch FROM now() - commit_time)::float8,
                    to_regclass('shardline.cdc_divergence') IS NOT NULL
               FROM shardline.cdc_progress WHERE slot_name = $1",
            &[&slot, &source_lsn],
        )
        .await
        .map_err(|e| shardline_topology::describe_pg_error(&e))?;
    let Some(r) = row else { return Ok(None) };
    let divergences = if r.get::<_, bool>(4) {
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM shardline.cdc_divergence WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(|e| shardline_topology::describe_pg_error(&e))?
            .get(0);
        Some(n)
    } else {
        None
    };
    Ok(Some(Progress {
        lsn: r.get(0),
        commit_time: r.get(1),
        lag_bytes: r.get(2),
        lag_seconds: r.get(3),
        divergences,
    }))
}

/// Removes the slot, the publication and every target's progress for the
/// slot. Refuses while the slot is streaming.
pub async fn drop_all(topology: &Topology, slot: &str, publication: &str) -> Result<(), CdcError> {
    let source = topology.source.connect().await?;
    let q = |e: tokio_postgres::Error| CdcError::query(&topology.source, &e);
    let active: Option<bool> = source
        .query_opt(
            "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(q)?
        .map(|r| r.get(0));
    if active == Some(true) {
        return Err(CdcError::Source(crate::source::SourceError::SlotInUse {
            slot: slot.to_string(),
            pid: 0,
        }));
    }
    if active.is_some() {
        source
            .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
            .await
            .map_err(q)?;
    }
    source
        .batch_execute(&format!(
            "DROP PUBLICATION IF EXISTS {}",
            quote_ident(publication)
        ))
        .await
        .map_err(q)?;
    // The DDL capture goes with the stream it fed; its log stays as history.
    shardline_ddl::capture::remove(&source).await.map_err(q)?;
    for conn in &Routes::from_topology(topology).targets {
        let client = crate::sql::connect(conn).await?;
        client
            .batch_execute(&format!(
                "DO $$ BEGIN IF to_regclass('shardline.cdc_progress') IS NOT NULL THEN
                     DELETE FROM shardline.cdc_progress WHERE slot_name = '{0}'; END IF;
                     IF to_regclass('shardline.ddl_pending') IS NOT NULL THEN
                     DELETE FROM shardline.ddl_pending WHERE slot_name = '{0}'; END IF; END $$",
                slot.replace('\'', "''")
            ))
            .await
            .map_err(|e| CdcError::query(conn, &e))?;
    }
    Ok(())
}
