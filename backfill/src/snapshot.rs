//! One consistent point shared by every reader and by CDC.
//!
//! `CREATE_REPLICATION_SLOT … (SNAPSHOT 'export')` on a replication session
//! creates the slot CDC will stream from and exports the snapshot taken at
//! the slot's consistent point. Readers import it with `SET TRANSACTION
//! SNAPSHOT`; it stays importable while the creating session stays open and
//! idle, so the holder lives as long as the copy.

use pgwire_replication::ReplicationClient;
use shardline_topology::ConnString;

use crate::error::BackfillError;

pub struct SnapshotHolder {
    /// Kept open, unused: closing it ends the snapshot.
    _session: ReplicationClient,
    pub snapshot: String,
    pub consistent_lsn: String,
}

/// Creates `slot` (a temporary one, gone with the session, when
/// `temporary`) and exports its snapshot.
pub async fn export(
    source: &ConnString,
    slot: &str,
    temporary: bool,
) -> Result<SnapshotHolder, BackfillError> {
    let config = source
        .replication(slot, "unused")
        .await?
        .with_application_name("shardline-backfill");
    let mut session = ReplicationClient::connect_gated(config)
        .await
        .map_err(|e| BackfillError::Snapshot(e.to_string()))?;
    let sql = format!(
        "CREATE_REPLICATION_SLOT {} {}LOGICAL pgoutput (SNAPSHOT 'export')",
        shardline_topology::quote_ident(slot),
        if temporary { "TEMPORARY " } else { "" }
    );
    let rows = session
        .simple_query(&sql)
        .await
        .map_err(|e| BackfillError::Snapshot(e.to_string()))?;
    let text = |i: usize| {
        rows.first()
            .and_then(|r| r.get(i).cloned().flatten())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .ok_or_else(|| {
                BackfillError::Snapshot("CREATE_REPLICATION_SLOT returned no snapshot".into())
            })
    };
    Ok(SnapshotHolder {
        consistent_lsn: text(1)?,
        snapshot: text(2)?,
        _session: session,
    })
}

/// Whether a snapshot can still be imported (its holder is alive).
pub async fn importable(client: &tokio_postgres::Client, snapshot: &str) -> bool {
    let sql = format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT '{}'; ROLLBACK",
        snapshot.replace('\'', "''")
    );
    let ok = client.batch_execute(&sql).await.is_ok();
    let _ = client.batch_execute("ROLLBACK").await;
    ok
}
