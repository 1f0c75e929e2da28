//! The capture on the source: an event trigger on `ddl_command_end` and
//! `sql_drop` writes each DDL command into [`LOG_TABLE`], which is in the
//! publication, so the command reaches cdc at its exact position in the
//! stream (see `capture.sql` for what a row holds). The rows of a
//! partition an `ALTER TABLE` attached or detached follow their log row as
//! transactional logical messages ([`ROWS_PREFIX`]), so they too arrive
//! at that position, with no table to grow or clean.
//!
//! Event triggers can only be created by a superuser; [`missing_privilege`]
//! says so before anything is created.

use tokio_postgres::Client;

/// The log table's schema and name, as the stream's Relation message names it.
pub const LOG_SCHEMA: &str = "shardline";
pub const LOG_NAME: &str = "ddl_log";
/// `shardline.ddl_log`.
pub const LOG_TABLE: &str = "shardline.ddl_log";
/// The prefix of the logical messages that carry, one each, the rows of a
/// partition an `ALTER TABLE` attached or detached (see `capture.sql`).
pub const ROWS_PREFIX: &str = "shardline.ddl_rows";

/// The schema, table, functions and event triggers of the capture.
const INSTALL_SQL: &str = include_str!("capture.sql");

/// Serialises installs by several processes (backfill workers, cdc).
const INSTALL_LOCK: i64 = 0x7368_6c64_646c_0001;

const REMOVE_SQL: &str = "DROP EVENT TRIGGER IF EXISTS shardline_ddl_end;
DROP EVENT TRIGGER IF EXISTS shardline_ddl_drop;
DROP EVENT TRIGGER IF EXISTS shardline_ddl_start;
DROP FUNCTION IF EXISTS shardline.ddl_capture();
DROP FUNCTION IF EXISTS shardline.ddl_start();
DROP FUNCTION IF EXISTS shardline.ddl_partition_rows(bigint, int, jsonb);
DROP FUNCTION IF EXISTS shardline.ddl_partition_changes(text);
DROP FUNCTION IF EXISTS shardline.ddl_partitions();
DROP FUNCTION IF EXISTS shardline.ddl_record(text, text, text, text);
DROP FUNCTION IF EXISTS shardline.ddl_table(oid);
DROP FUNCTION IF EXISTS shardline.ddl_missing_value(oid, int2);";

/// Whether the event triggers exist and fire.
pub async fn installed(client: &Client) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT count(*) = 3 FROM pg_event_trigger
              WHERE evtname IN ('shardline_ddl_end', 'shardline_ddl_drop', 'shardline_ddl_start') AND evtenabled IN ('O', 'A')",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// The privilege the capture's installation lacks: `Some(role)` when it is
/// not installed and the connected role is not a superuser.
pub async fn missing_privilege(client: &Client) -> Result<Option<String>, tokio_postgres::Error> {
    if installed(client).await? {
        return Ok(None);
    }
    let row = client
        .query_one(
            "SELECT current_user::text, rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await?;
    Ok((!row.get::<_, bool>(1)).then(|| row.get(0)))
}

/// Creates (or brings up to date) the log table, its functions and the
/// event triggers. Idempotent; one transaction (one query string).
pub async fn install(client: &Client) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(&format!(
            "SET LOCAL client_min_messages = warning; SELECT pg_advisory_xact_lock({INSTALL_LOCK}); {INSTALL_SQL}"
        ))
        .await
}

/// Removes the event triggers and functions; the log stays as history.
pub async fn remove(client: &Client) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(&format!(
            "SET LOCAL client_min_messages = warning; {REMOVE_SQL}"
        ))
        .await
}

/// Records that an operator applied log entry `id` by hand: cdc passes
/// over it from now on.
pub async fn skip(client: &Client, id: i64) -> Result<bool, tokio_postgres::Error> {
    if !has_log(client).await? {
        return Ok(false);
    }
    let exists = client
        .query_opt("SELECT 1 FROM shardline.ddl_log WHERE id = $1", &[&id])
        .await?
        .is_some();
    if exists {
        client
            .execute(
                "INSERT INTO shardline.ddl_skip (ddl_id) VALUES ($1) ON CONFLICT DO NOTHING",
                &[&id],
            )
            .await?;
    }
    Ok(exists)
}

/// Whether an operator marked log entry `id` as applied by hand.
pub async fn skipped(client: &Client, id: i64) -> Result<bool, tokio_postgres::Error> {
    if !has_log(client).await? {
        return Ok(false);
    }
    Ok(client
        .query_opt("SELECT 1 FROM shardline.ddl_skip WHERE ddl_id = $1", &[&id])
        .await?
        .is_some())
}

async fn has_log(client: &Client) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_one(
            "SELECT to_regclass('shardline.ddl_log') IS NOT NULL AND to_regclass('shardline.ddl_skip') IS NOT NULL",
            &[],
        )
        .await?
        .get(0))
}
