//! Creating missing target tables from the source's definitions, and
//! carrying the source's sequence positions to the targets' sequences.
//!
//! Each target gets all its missing tables in one transaction (types and
//! sequences it lacks, the tables, their indexes, then foreign keys among
//! them), so a failure leaves nothing half-created.

use std::collections::BTreeMap;

use shardline_schema::{catalog, ddl, ConstraintKind, CreateOptions};
use shardline_topology::TableName;
use tokio_postgres::Client;

use crate::catalog::{query_error, schema_error, TableDef};
use crate::error::BackfillError;
use crate::prepare::{Layout, Prepared};

/// Creates every missing table on its targets.
pub async fn create_tables(
    prepared: &Prepared,
    targets: &[Client],
    defer_indexes: bool,
) -> Result<(), BackfillError> {
    let mut per_target: BTreeMap<usize, Vec<&TableDef>> = BTreeMap::new();
    for (i, def) in &prepared.to_create {
        per_target.entry(*i).or_default().push(def);
    }
    for (i, defs) in per_target {
        let name = prepared.targets[i].to_string();
        let client = &targets[i];
        let wanted_types: Vec<TableName> = defs
            .iter()
            .filter_map(|d| d.schema.as_deref())
            .flat_map(|t| t.types.iter().map(|u| u.name().clone()))
            .collect();
        let wanted_sequences: Vec<TableName> = defs
            .iter()
            .filter_map(|d| d.schema.as_deref())
            .flat_map(|t| t.sequences.iter().map(|s| s.name.clone()))
            .collect();
        let existing_types = catalog::read_types(client, &wanted_types)
            .await
            .map_err(|e| schema_error(&name, e))?;
        let mut have_types: Vec<TableName> =
            existing_types.iter().map(|t| t.name().clone()).collect();
        let mut have_sequences: Vec<TableName> = catalog::read_sequences(client, &wanted_sequences)
            .await
            .map_err(|e| schema_error(&name, e))?
            .into_iter()
            .map(|s| s.name)
            .collect();
        // A type the target has must be the source's, or the table's
        // columns would mean something else there.
        let mut differences = Vec::new();
        for def in &defs {
            for t in def.schema.iter().flat_map(|s| s.types.iter()) {
                if let Some(theirs) = existing_types.iter().find(|x| x.name() == t.name()) {
                    if theirs != t {
                        differences.push(format!(
                            "{} {} on {name}: {} on the source, {} on the target",
                            t.kind_word(),
                            t.name(),
                            ddl::user_type(t),
                            ddl::user_type(theirs)
                        ));
                    }
                }
            }
        }
        if !differences.is_empty() {
            differences.dedup();
            return Err(BackfillError::Differences(differences));
        }
        let mut sql = vec!["BEGIN".to_string()];
        for def in &defs {
            let Some(table) = def.schema.as_deref() else {
                sql.push(def.create_sql());
                continue;
            };
            let layout = layout(prepared, def);
            let options = CreateOptions {
                partitioned: layout.partitioned,
                skip: &layout.not_created,
            };
            sql.extend(ddl::create_statements(
                table,
                &options,
                &have_types,
                &have_sequences,
            ));
            have_types.extend(table.types.iter().map(|t| t.name().clone()));
            have_sequences.extend(table.sequences.iter().map(|s| s.name.clone()));
            if !defer_indexes {
                for index in table.indexes.iter().filter(|x| !options.skips(&x.name)) {
                    sql.extend(ddl::index(table, index));
                }
            }
        }
        for def in &defs {
            let Some(table) = def.schema.as_deref() else {
                continue;
            };
            let layout = layout(prepared, def);
            for fk in table.constraints.iter().filter(|c| {
                c.kind == ConstraintKind::ForeignKey && !layout.not_created.contains(&c.name)
            }) {
                sql.extend(ddl::foreign_key(table, fk));
            }
        }
        sql.push("COMMIT".into());
        if let Err(e) = client.batch_execute(&sql.join(";\n")).await {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(query_error(&name, e));
        }
        tracing::info!(target = %name, tables = defs.len(), "created the missing tables");
    }
    Ok(())
}

fn layout<'a>(prepared: &'a Prepared, def: &TableDef) -> &'a Layout {
    static PLAIN: std::sync::OnceLock<Layout> = std::sync::OnceLock::new();
    prepared
        .layouts
        .get(&def.name)
        .unwrap_or_else(|| PLAIN.get_or_init(Layout::default))
}

/// Builds the indexes left for after the copy (`--defer-indexes`).
pub async fn build_deferred_indexes(
    prepared: &Prepared,
    targets: &[Client],
) -> Result<(), BackfillError> {
    for (i, def) in &prepared.to_create {
        let Some(table) = def.schema.as_deref() else {
            continue;
        };
        let layout = layout(prepared, def);
        for index in table
            .indexes
            .iter()
            .filter(|x| !layout.not_created.contains(&x.name))
        {
            let sql = ddl::index(table, index)
                .join(";\n")
                .replacen("CREATE INDEX ", "CREATE INDEX IF NOT EXISTS ", 1)
                .replacen(
                    "CREATE UNIQUE INDEX ",
                    "CREATE UNIQUE INDEX IF NOT EXISTS ",
                    1,
                );
            targets[*i]
                .batch_execute(&sql)
                .await
                .map_err(|e| query_error(&prepared.targets[*i].to_string(), e))?;
        }
    }
    Ok(())
}

/// Moves every target's copy of the tables' sequences to at least where
/// the source's stands now, so an id the source handed out is never
/// handed out again by a target (cdc keeps them ahead afterwards).
pub async fn carry_sequences(
    source: &Client,
    source_name: &str,
    prepared: &Prepared,
    targets: &[Client],
) -> Result<(), BackfillError> {
    for t in &prepared.tables {
        let Some(table) = t.def.schema.as_deref() else {
            continue;
        };
        if table.sequences.is_empty() {
            continue;
        }
        let names: Vec<TableName> = table.sequences.iter().map(|s| s.name.clone()).collect();
        let now = catalog::read_sequences(source, &names)
            .await
            .map_err(|e| schema_error(source_name, e))?;
        for s in &now {
            let Some(value) = s.last_value else { continue };
            for &i in &t.targets {
                targets[i]
                    .batch_execute(&ddl::advance_sequence(s, value))
                    .await
                    .map_err(|e| query_error(&prepared.targets[i].to_string(), e))?;
            }
        }
    }
    Ok(())
}
