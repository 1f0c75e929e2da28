//! Read models: group-by projections of a source table, computed from the
//! job's snapshot and copied whole into their context.
//!
//! The query is `SELECT <group_by>, <aggregates> FROM <from> WHERE <where>
//! GROUP BY <group_by>`. Its result shape (names from the `AS` aliases,
//! types with their modifiers) is read by creating an empty temporary table
//! from it on the source inside a rolled-back transaction; the target table
//! is created with that shape and the group columns as primary key.

use shardline_topology::{quote_ident, ReadModel};
use tokio_postgres::Client;

use crate::catalog::{query_error, ColumnDef, TableDef};
use crate::error::BackfillError;

/// The read model's table as its query defines it.
pub async fn shape(source: &Client, db: &str, rm: &ReadModel) -> Result<TableDef, BackfillError> {
    let probe = format!("shardline_probe_{}", rm.name);
    let created = source
        .batch_execute(&format!(
            "BEGIN; CREATE TEMP TABLE {} ON COMMIT DROP AS {} LIMIT 0",
            quote_ident(&probe),
            rm.query()
        ))
        .await;
    if let Err(e) = created {
        let _ = source.batch_execute("ROLLBACK").await;
        return Err(BackfillError::Query {
            database: db.to_string(),
            cause: format!(
                "read model {}: {}",
                rm.name,
                e.as_db_error()
                    .map(|d| d.message().to_string())
                    .unwrap_or_else(|| e.to_string())
            ),
        });
    }
    let rows = source
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod)
               FROM pg_attribute a WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 ORDER BY a.attnum",
            &[&format!("pg_temp.{probe}")],
        )
        .await;
    let _ = source.batch_execute("ROLLBACK").await;
    let rows = rows.map_err(|e| query_error(db, e))?;
    let group_names = rm.group_columns();
    let columns = rows
        .iter()
        .map(|r| {
            let name: String = r.get(0);
            ColumnDef {
                not_null: group_names.contains(&name),
                name,
                sql_type: r.get(1),
            }
        })
        .collect();
    Ok(TableDef {
        name: rm.table().to_string(),
        table: rm.table(),
        columns,
        primary_key: group_names,
        indexes: Vec::new(),
        enums: Vec::new(),
        est_rows: 0,
        bytes: 0,
        blocks: 0,
    })
}
