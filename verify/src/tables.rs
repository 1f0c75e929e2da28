//! What to compare: the topology's tables and read models as specs.

use shardline_topology::{ConnString, ContextKind, TableName, Topology};

use crate::checksum::{Column, SESSION_SETTINGS};
use crate::compare::{Layout, Side, TableSpec};
use crate::VerifyError;

/// A side: a connection with the normalising session settings, and its
/// server's version.
pub async fn connect(conn: &ConnString) -> Result<Side, VerifyError> {
    let name = conn.to_string();
    let client = conn.connect().await?;
    client
        .batch_execute(SESSION_SETTINGS)
        .await
        .map_err(|e| VerifyError::query(&name, "(session)", e))?;
    let version: String = client
        .query_one("SHOW server_version_num", &[])
        .await
        .map_err(|e| VerifyError::query(&name, "(session)", e))?
        .get(0);
    Ok(Side {
        version: version.parse().unwrap_or(0),
        name,
        client,
    })
}

pub async fn check_exists(side: &Side, spec: &TableSpec) -> Result<(), VerifyError> {
    let exists: bool = side
        .client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&spec.target_relation],
        )
        .await
        .map_err(|e| VerifyError::query(&side.name, &spec.name, e))?
        .get(0);
    if exists {
        Ok(())
    } else {
        Err(VerifyError::MissingTable {
            table: spec.name.clone(),
            database: side.name.clone(),
        })
    }
}

/// The spec restricted to the columns every target has too, and the
/// columns one side has that another lacks. Read models keep their spec:
/// their columns come from the target table itself.
pub async fn shared_columns(
    spec: &TableSpec,
    targets: &[Side],
) -> Result<(TableSpec, Vec<crate::report::ColumnDrift>), VerifyError> {
    let mut shared = spec.clone();
    let mut drift = Vec::new();
    if spec.source_relation.starts_with('(') {
        return Ok((shared, drift));
    }
    for t in targets {
        let (columns, _) = shape(t, &spec.target_relation).await?;
        let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
        for c in &spec.columns {
            if !names.contains(&c.name.as_str()) {
                drift.push(crate::report::ColumnDrift {
                    database: t.name.clone(),
                    column: c.name.clone(),
                    only_on: "source",
                });
            }
        }
        for c in &columns {
            if !spec.columns.iter().any(|s| s.name == c.name) {
                drift.push(crate::report::ColumnDrift {
                    database: t.name.clone(),
                    column: c.name.clone(),
                    only_on: "target",
                });
            }
        }
        shared.columns.retain(|c| names.contains(&c.name.as_str()));
    }
    Ok((shared, drift))
}

/// Columns (in order) and primary key of a table.
async fn shape(side: &Side, table: &str) -> Result<(Vec<Column>, Vec<Column>), VerifyError> {
    let rows = side
        .client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod),
                    coalesce(a.attnum = ANY (i.indkey), false), array_position(i.indkey::int2[], a.attnum)
               FROM pg_attribute a
               LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary
              WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
              ORDER BY a.attnum",
            &[&table],
        )
        .await
        .map_err(|e| VerifyError::query(&side.name, table, e))?;
    if rows.is_empty() {
        return Err(VerifyError::MissingTable {
            table: table.to_string(),
            database: side.name.clone(),
        });
    }
    let columns: Vec<Column> = rows
        .iter()
        .map(|r| Column {
            name: r.get(0),
            sql_type: r.get(1),
        })
        .collect();
    let mut key: Vec<(i32, Column)> = rows
        .iter()
        .filter(|r| r.get::<_, bool>(2))
        .map(|r| {
            (
                r.get::<_, Option<i32>>(3).unwrap_or(0),
                Column {
                    name: r.get(0),
                    sql_type: r.get(1),
                },
            )
        })
        .collect();
    key.sort_by_key(|(pos, _)| *pos);
    Ok((columns, key.into_iter().map(|(_, c)| c).collect()))
}

pub async fn specs(
    topology: &Topology,
    source: &Side,
    only: Option<&[String]>,
) -> Result<Vec<TableSpec>, VerifyError> {
    // Names given on the command line read as SQL reads them, like the
    // topology's; a read model is named as the topology names it.
    let mut wanted_tables = Vec::new();
    if let Some(list) = only {
        for t in list {
            let parsed = TableName::parse(t).ok();
            let known = parsed
                .as_ref()
                .is_some_and(|p| topology.context_of_table(p).is_some())
                || topology.read_models.iter().any(|r| &r.name == t);
            if !known {
                return Err(VerifyError::Unlisted { table: t.clone() });
            }
            wanted_tables.extend(parsed);
        }
    }
    let wanted = |t: &TableName| only.is_none() || wanted_tables.contains(t);
    let mut out = Vec::new();
    for context in &topology.contexts {
        let (tables, reference): (Vec<&TableName>, Vec<&TableName>) = match &context.kind {
            ContextKind::Sharded {
                reference_tables, ..
            } => (
                context.tables.iter().collect(),
                reference_tables.iter().collect(),
            ),
            ContextKind::Single { .. } => (context.tables.iter().collect(), Vec::new()),
        };
        for table in tables.into_iter().filter(|t| wanted(t)) {
            let (columns, key) = shape(source, &table.quoted()).await?;
            if key.is_empty() {
                return Err(VerifyError::NoPrimaryKey {
                    table: table.short(),
                });
            }
            let layout = match &context.kind {
                ContextKind::Sharded {
                    placement,
                    shard_key,
                    ..
                } => Layout::Sharded {
                    placement: placement.clone(),
                    shard_key: shard_key.clone(),
                },
                ContextKind::Single { .. } => Layout::Single,
            };
            out.push(TableSpec {
                name: table.short(),
                source_relation: table.quoted(),
                target_relation: table.quoted(),
                columns,
                key,
                layout,
                targets: context.databases().into_iter().cloned().collect(),
            });
        }
        // A reference table is whole on every shard: one comparison each.
        for table in reference.into_iter().filter(|t| wanted(t)) {
            let (columns, key) = shape(source, &table.quoted()).await?;
            if key.is_empty() {
                return Err(VerifyError::NoPrimaryKey {
                    table: table.short(),
                });
            }
            for (i, shard) in context.databases().into_iter().enumerate() {
                out.push(TableSpec {
                    name: format!("{} (shard {i})", table.short()),
                    source_relation: table.quoted(),
                    target_relation: table.quoted(),
                    columns: columns.clone(),
                    key: key.clone(),
                    layout: Layout::Single,
                    targets: vec![shard.clone()],
                });
            }
        }
    }
    for rm in topology
        .read_models
        .iter()
        .filter(|r| only.is_none_or(|l| l.contains(&r.name)))
    {
        let Some(context) = topology.context(&rm.context) else {
            continue;
        };
        let target = context.databases()[0].clone();
        let side = connect(&target).await?;
        let (columns, _) = shape(&side, &rm.table().quoted()).await?;
        let groups = rm.group_columns();
        let key = columns
            .iter()
            .filter(|c| groups.contains(&c.name))
            .cloned()
            .collect();
        out.push(TableSpec {
            name: format!("{} (read model)", rm.name),
            source_relation: format!("({})", rm.query()),
            target_relation: rm.table().quoted(),
            columns,
            key,
            layout: Layout::Single,
            targets: vec![target],
        });
    }
    Ok(out)
}
