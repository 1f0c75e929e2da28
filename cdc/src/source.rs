//! The source side: set-up checks, the publication and the slot.
//!
//! Every check names what is wrong and the exact statement that fixes it,
//! and all of them run before anything is created.

use std::collections::HashMap;

use tokio_postgres::Client;

use crate::lsn::Lsn;
use shardline_topology::TableName;

use crate::route::{Routes, TableRoute};

/// A set-up problem on the source, with its fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    #[error("the source runs with wal_level = {0}; logical replication needs wal_level = logical (fix: ALTER SYSTEM SET wal_level = logical; then restart the server)")]
    WalLevel(String),
    #[error("the source has no free replication slot ({used} of max_replication_slots = {max} in use) (fix: raise max_replication_slots and restart, or drop an unused slot)")]
    NoFreeSlot { used: i64, max: i64 },
    #[error("role {0} may not stream changes (fix: ALTER ROLE {0} REPLICATION; or connect as a superuser)")]
    NoReplicationPrivilege(String),
    #[error("table {0} does not exist on the source (fix the topology's table list)")]
    MissingTable(String),
    #[error("table {table}: replica identity {identity} does not carry the shard key {column}, so deletes cannot be routed (fix: ALTER TABLE {table} REPLICA IDENTITY FULL;)")]
    IdentityWithoutShardKey {
        table: String,
        identity: String,
        column: String,
    },
    #[error("table {table} has replica identity NOTHING (fix: ALTER TABLE {table} REPLICA IDENTITY FULL; or give it a primary key)")]
    NoIdentity { table: String },
    #[error("table {table} has no primary key, so its updates and deletes carry no row identity (fix: ALTER TABLE {table} REPLICA IDENTITY FULL; or add a primary key)")]
    NoPrimaryKey { table: String },
    #[error("slot {slot} exists but uses plugin {plugin} on database {database}; shardline needs a pgoutput slot on this database (fix: SELECT pg_drop_replication_slot('{slot}'); or choose another --slot)")]
    WrongSlot {
        slot: String,
        plugin: String,
        database: String,
    },
    #[error("slot {slot} is in use by process {pid} (another `shardline cdc run`?)")]
    SlotInUse { slot: String, pid: i32 },
    #[error("role {0} cannot install the DDL capture on the source: event triggers need a superuser (fix: run `shardline backfill` or `shardline cdc run` once as a superuser, which installs it; or set ddl = \"stop\" under [source] in the topology, and cdc stops when a table's columns change)")]
    DdlCaptureNeedsSuperuser(String),
    #[error("source query failed: {}", shardline_topology::describe_pg_error(.0))]
    Query(#[from] tokio_postgres::Error),
}

/// Runs every set-up check; returns all problems found.
pub async fn check(
    client: &Client,
    routes: &Routes,
    slot: &str,
) -> Result<Vec<SourceError>, tokio_postgres::Error> {
    let mut problems = Vec::new();
    let wal_level: String = client.query_one("SHOW wal_level", &[]).await?.get(0);
    if wal_level != "logical" {
        problems.push(SourceError::WalLevel(wal_level));
    }
    let row = client
        .query_one(
            "SELECT current_setting('max_replication_slots')::bigint,
                    (SELECT count(*) FROM pg_replication_slots),
                    EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
            &[&slot],
        )
        .await?;
    let (max, used, exists): (i64, i64, bool) = (row.get(0), row.get(1), row.get(2));
    if !exists && used >= max {
        problems.push(SourceError::NoFreeSlot { used, max });
    }
    let row = client
        .query_one("SELECT current_user::text, rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user", &[])
        .await?;
    if !row.get::<_, bool>(1) {
        problems.push(SourceError::NoReplicationPrivilege(row.get(0)));
    }
    if routes.ddl_capture {
        if let Some(role) = shardline_ddl::capture::missing_privilege(client).await? {
            problems.push(SourceError::DdlCaptureNeedsSuperuser(role));
        }
    }
    let mut tables: Vec<(&TableName, &TableRoute)> = routes.tables().collect();
    tables.sort_by_key(|(name, _)| *name);
    for (table, route) in tables {
        let row = client
            .query_opt(
                "SELECT c.relreplident::text,
                        coalesce((SELECT array_agg(a.attname::text)
                                    FROM pg_index i JOIN pg_attribute a
                                      ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
                                   WHERE i.indrelid = c.oid
                                     AND ((c.relreplident = 'd' AND i.indisprimary)
                                       OR (c.relreplident = 'i' AND i.indisreplident))), '{}')
                   FROM pg_class c WHERE c.oid = to_regclass($1)",
                &[&table.quoted()],
            )
            .await?;
        let Some(row) = row else {
            problems.push(SourceError::MissingTable(table.to_string()));
            continue;
        };
        let identity: String = row.get(0);
        let columns: Vec<String> = row.get(1);
        let name = table.to_string();
        match identity.as_str() {
            "n" => problems.push(SourceError::NoIdentity { table: name }),
            "f" => {}
            _ if columns.is_empty() => problems.push(SourceError::NoPrimaryKey { table: name }),
            _ => {
                if let TableRoute::Sharded { key_column, .. } = route {
                    if !columns.contains(key_column) {
                        problems.push(SourceError::IdentityWithoutShardKey {
                            table: name,
                            identity: if identity == "d" {
                                "DEFAULT (the primary key)".into()
                            } else {
                                "USING INDEX".into()
                            },
                            column: key_column.clone(),
                        });
                    }
                }
            }
        }
    }
    Ok(problems)
}

/// Creates the publication for the listed tables, or adds tables missing
/// from an existing one. With DDL capture on, installs it first and
/// publishes its log, so schema changes stream at their position. It publishes a partitioned table's changes under
/// the table the topology names (`publish_via_partition_root`): rows of
/// every partition arrive as the parent's, and a row moving between
/// partitions is an update, not a delete and an insert of two tables.
/// Membership is read from `pg_publication_rel` (what was added), not
/// `pg_publication_tables` (which lists a parent's partitions instead of
/// the parent unless the publication publishes via the root).
pub async fn ensure_publication(
    client: &Client,
    name: &str,
    routes: &Routes,
) -> Result<(), SourceError> {
    let log = TableName::new(
        shardline_ddl::capture::LOG_SCHEMA,
        shardline_ddl::capture::LOG_NAME,
    );
    let mut wanted: Vec<&TableName> = routes.tables().map(|(t, _)| t).collect();
    if routes.ddl_capture {
        shardline_ddl::capture::install(client).await?;
        wanted.push(&log);
    }
    wanted.sort();
    let publication = shardline_topology::quote_ident(name);
    let row = client
        .query_opt(
            "SELECT oid, puballtables, pubviaroot FROM pg_publication WHERE pubname = $1",
            &[&name],
        )
        .await?;
    let Some(row) = row else {
        let list: Vec<String> = wanted.iter().map(|t| t.quoted()).collect();
        client
            .batch_execute(&format!(
                "CREATE PUBLICATION {publication} FOR TABLE {} WITH (publish_via_partition_root = true)",
                list.join(", ")
            ))
            .await?;
        return Ok(());
    };
    let (oid, all_tables, via_root): (u32, bool, bool) = (row.get(0), row.get(1), row.get(2));
    if !via_root {
        client
            .batch_execute(&format!(
                "ALTER PUBLICATION {publication} SET (publish_via_partition_root = true)"
            ))
            .await?;
    }
    if all_tables {
        return Ok(());
    }
    let have: Vec<TableName> = client
        .query(
            "SELECT n.nspname::text, c.relname::text
               FROM pg_publication_rel r
               JOIN pg_class c ON c.oid = r.prrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE r.prpubid = $1",
            &[&oid],
        )
        .await?
        .iter()
        .map(|r| TableName::new(r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect();
    let missing: Vec<String> = wanted
        .iter()
        .filter(|t| !have.contains(t))
        .map(|t| t.quoted())
        .collect();
    if !missing.is_empty() {
        client
            .batch_execute(&format!(
                "ALTER PUBLICATION {publication} ADD TABLE {}",
                missing.join(", ")
            ))
            .await?;
    }
    Ok(())
}

pub async fn slot_exists(client: &Client, slot: &str) -> Result<bool, SourceError> {
    Ok(client
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?
        .is_some())
}

pub async fn publication_exists(client: &Client, name: &str) -> Result<bool, SourceError> {
    Ok(client
        .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&name])
        .await?
        .is_some())
}

/// Where backfill copied each table, for tables a resumed backfill copied
/// from a later snapshot than the slot's start (see the backfill crate).
pub async fn backfill_points(
    client: &Client,
    slot: &str,
) -> Result<HashMap<String, Lsn>, SourceError> {
    let has_table: bool = client
        .query_one(
            "SELECT to_regclass('shardline.backfill_table') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    if !has_table {
        return Ok(HashMap::new());
    }
    let rows = client
        .query(
            "SELECT table_name, snapshot_lsn::text FROM shardline.backfill_table WHERE job_name = $1",
            &[&slot],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| Some((r.get::<_, String>(0), r.get::<_, String>(1).parse().ok()?)))
        .collect())
}

/// Where a slot stands.
#[derive(Debug, Clone)]
pub struct SlotState {
    pub confirmed_flush: Lsn,
    pub created_now: bool,
}

/// Checks the slot, creating it when missing. A slot created here starts
/// at the current WAL position: only changes after it are streamed.
pub async fn ensure_slot(client: &Client, slot: &str) -> Result<SlotState, SourceError> {
    let row = client
        .query_opt(
            "SELECT plugin::text, coalesce(database::text, ''), active_pid, confirmed_flush_lsn::text,
                    current_database()::text
               FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    match row {
        Some(row) => {
            let plugin: String = row.get(0);
            let database: String = row.get(1);
            if plugin != "pgoutput" || database != row.get::<_, String>(4) {
                return Err(SourceError::WrongSlot {
                    slot: slot.to_string(),
                    plugin,
                    database,
                });
            }
            if let Some(pid) = row.get::<_, Option<i32>>(2) {
                return Err(SourceError::SlotInUse {
                    slot: slot.to_string(),
                    pid,
                });
            }
            let confirmed: Option<String> = row.get(3);
            Ok(SlotState {
                confirmed_flush: confirmed.and_then(|l| l.parse().ok()).unwrap_or_default(),
                created_now: false,
            })
        }
        None => {
            let row = client
                .query_one(
                    "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
                    &[&slot],
                )
                .await?;
            Ok(SlotState {
                confirmed_flush: row.get::<_, String>(0).parse().unwrap_or_default(),
                created_now: true,
            })
        }
    }
}

/// The `GENERATED ALWAYS` identity columns of every listed table that has
/// any, by canonical name.
pub async fn identity_always(
    client: &Client,
    routes: &Routes,
) -> Result<HashMap<String, Vec<String>>, SourceError> {
    let mut out = HashMap::new();
    for (table, _) in routes.tables() {
        let columns: Vec<String> = client
            .query(
                "SELECT a.attname::text FROM pg_attribute a
                  WHERE a.attrelid = to_regclass($1) AND a.attidentity = 'a' AND NOT a.attisdropped
                  ORDER BY a.attnum",
                &[&table.quoted()],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !columns.is_empty() {
            out.insert(table.to_string(), columns);
        }
    }
    Ok(out)
}

/// The primary key columns of every listed table that has one, by
/// `schema.name`, in key order.
pub async fn primary_keys(
    client: &Client,
    routes: &Routes,
) -> Result<HashMap<String, Vec<String>>, SourceError> {
    let mut keys = HashMap::new();
    for (table, _) in routes.tables() {
        let row = client
            .query_opt(
                "SELECT array_agg(a.attname::text ORDER BY k.ord)
                   FROM pg_index i
                   CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
                   JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                  WHERE i.indrelid = to_regclass($1) AND i.indisprimary",
                &[&table.quoted()],
            )
            .await?;
        if let Some(columns) = row.and_then(|r| r.get::<_, Option<Vec<String>>>(0)) {
            keys.insert(table.to_string(), columns);
        }
    }
    Ok(keys)
}
