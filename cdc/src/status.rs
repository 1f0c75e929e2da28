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
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub source_lsn: String,
    pub slot: SlotStatus,
    pub targets: Vec<TargetStatus>,
}

pub async fn status(topology: &Topology, slot: &str) -> Result<Status, CdcError> {
    let source = topology.source.connect().await?;
    let q = |e: tokio_postgres::Error| CdcError::Query {
        target: topology.source.to_string(),
        cause: e.to_string(),
    };
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
            error: None,
        };
        match target_progress(conn, slot, &source_lsn).await {
            Ok(Some((lsn, time, lag, secs))) => {
                t.applied_lsn = Some(lsn);
                t.applied_commit_time = time;
                t.lag_bytes = Some(lag);
                t.lag_seconds = secs;
            }
            Ok(None) => {}
            Err(e) => t.error = Some(e),
        }
        targets.push(t);
    }
    Ok(Status {
        source_lsn,
        slot: slot_status,
        targets,
    })
}

async fn target_progress(
    conn: &shardline_topology::ConnString,
    slot: &str,
    source_lsn: &str,
) -> Result<Option<(String, Option<String>, i64, Option<f64>)>, String> {
    let client = conn.connect().await.map_err(|e| e.to_string())?;
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('shardline.cdc_progress') IS NOT NULL",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let row = client
        .query_opt(
            "SELECT commit_lsn::text, commit_time::text, greatest($2::text::pg_lsn - end_lsn, 0)::int8,
                    extract(epoch FROM now() - commit_time)::float8
               FROM shardline.cdc_progress WHERE slot_name = $1",
            &[&slot, &source_lsn],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))))
}

/// Removes the slot, the publication and every target's progress for the
/// slot. Refuses while the slot is streaming.
pub async fn drop_all(topology: &Topology, slot: &str, publication: &str) -> Result<(), CdcError> {
    let source = topology.source.connect().await?;
    let q = |e: tokio_postgres::Error| CdcError::Query {
        target: topology.source.to_string(),
        cause: e
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_else(|| e.to_string()),
    };
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
        let client = conn.connect().await?;
        client
            .batch_execute(&format!(
                "DO $$ BEGIN IF to_regclass('shardline.cdc_progress') IS NOT NULL THEN
                     DELETE FROM shardline.cdc_progress WHERE slot_name = '{0}'; END IF;
                     IF to_regclass('shardline.ddl_pending') IS NOT NULL THEN
                     DELETE FROM shardline.ddl_pending WHERE slot_name = '{0}'; END IF; END $$",
                slot.replace('\'', "''")
            ))
            .await
            .map_err(|e| CdcError::Query {
                target: conn.to_string(),
                cause: e.to_string(),
            })?;
    }
    Ok(())
}
