//! Before a job writes anything: connect everywhere, read every
//! definition, collect every difference; and the plan a dry run prints.

use std::sync::Arc;

use shardline_cdc::route::{Routes, TableRoute};
use shardline_topology::{ConnString, TableName, Topology};
use tokio_postgres::Client;

use crate::catalog::{self, query_error, TableDef};
use crate::copy::{Routing, TableCopy};
use crate::error::BackfillError;
use crate::plan::plan;
use crate::readmodel;
use crate::{BackfillRequest, TablePlan};

/// Everything a run works with, checked before anything is written.
pub struct Prepared {
    pub source: ConnString,
    pub targets: Vec<ConnString>,
    pub tables: Vec<Arc<TableCopy>>,
    /// Tables to create on targets: (target, table definition).
    pub to_create: Vec<(usize, TableDef)>,
    /// Where CDC sends each table's changes: the publication covers them.
    pub routes: Routes,
}

/// Connects everywhere, reads every definition, and collects every
/// difference between source and targets. Writes nothing.
pub async fn prepare(
    topology: &Topology,
    request: &BackfillRequest,
) -> Result<Prepared, BackfillError> {
    let source = topology.source.connect().await?;
    let source_name = topology.source.to_string();
    // What CDC will need of the source is checked now: a copy that CDC
    // cannot continue would be wasted.
    let routes = Routes::from_topology(topology);
    let problems = shardline_cdc::source::check(&source, &routes, &request.job)
        .await
        .map_err(|e| query_error(&source_name, e))?;
    if !problems.is_empty() {
        return Err(BackfillError::SourceSetup(
            problems.iter().map(|p| p.to_string()).collect(),
        ));
    }
    let mut target_clients: Vec<Client> = Vec::new();
    let mut tables = Vec::new();
    let mut found = Findings::default();

    // Names given on the command line read as SQL reads them, like the
    // topology's; a read model is named as the topology names it.
    let mut wanted_tables = Vec::new();
    if let Some(list) = &request.tables {
        for t in list {
            let parsed = TableName::parse(t).ok();
            let known = parsed
                .as_ref()
                .is_some_and(|p| topology.context_of_table(p).is_some())
                || topology.read_models.iter().any(|r| &r.name == t);
            if !known {
                return Err(BackfillError::MissingTable {
                    table: format!("{t} (not listed in the topology)"),
                });
            }
            wanted_tables.extend(parsed);
        }
    }
    let wanted = |t: &TableName| request.tables.is_none() || wanted_tables.contains(t);
    // The same targets, numbered the same way, as CDC's routes.
    let targets: Vec<ConnString> = routes.targets.clone();
    let mut listed: Vec<(&TableName, &TableRoute)> =
        routes.tables().filter(|(t, _)| wanted(t)).collect();
    listed.sort_by_key(|(t, _)| *t);
    let work: Vec<(TableName, Routing, Vec<usize>, Option<String>)> = listed
        .into_iter()
        .map(|(table, route)| match route {
            TableRoute::Sharded {
                key_column,
                placement,
                shards,
            } => (
                (*table).clone(),
                Routing::Sharded {
                    key_index: usize::MAX,
                    placement: placement.clone(),
                },
                shards.clone(),
                Some(key_column.clone()),
            ),
            other => ((*table).clone(), Routing::Everywhere, other.targets(), None),
        })
        .collect();
    for conn in &targets {
        target_clients.push(conn.connect().await?);
    }
    for (table, mut routing, ids, shard_key) in work {
        let def = catalog::describe(&source, &table)
            .await
            .map_err(|e| query_error(&source_name, e))?
            .ok_or_else(|| BackfillError::MissingTable {
                table: table.to_string(),
            })?;
        if let (Routing::Sharded { key_index, .. }, Some(column)) = (&mut routing, &shard_key) {
            let index =
                def.column_index(column)
                    .ok_or_else(|| BackfillError::NoShardKeyColumn {
                        table: def.name.clone(),
                        column: column.clone(),
                    })?;
            *key_index = index;
            if !def.columns[index].not_null {
                let nulls: i64 = source
                    .query_one(
                        &format!(
                            "SELECT count(*) FROM {} WHERE {} IS NULL",
                            def.quoted(),
                            shardline_topology::quote_ident(column)
                        ),
                        &[],
                    )
                    .await
                    .map_err(|e| query_error(&source_name, e))?
                    .get(0);
                if nulls > 0 {
                    return Err(BackfillError::NullShardKey {
                        table: def.name.clone(),
                        column: column.clone(),
                        count: nulls,
                    });
                }
            }
        }
        check_targets(
            &def,
            &ids,
            &targets,
            &target_clients,
            request.create,
            true,
            &mut found,
        )
        .await?;
        tables.push(Arc::new(TableCopy {
            def,
            routing,
            targets: ids,
            query: None,
        }));
    }
    for rm in topology
        .read_models
        .iter()
        .filter(|r| request.tables.as_ref().is_none_or(|l| l.contains(&r.name)))
    {
        let Some(ctx) = topology.context(&rm.context) else {
            continue;
        };
        let ids: Vec<usize> = ctx
            .databases()
            .into_iter()
            .filter_map(|c| routes.target_of(c))
            .collect();
        let def = readmodel::shape(&source, &source_name, rm).await?;
        check_targets(
            &def,
            &ids,
            &targets,
            &target_clients,
            request.create,
            false,
            &mut found,
        )
        .await?;
        tables.push(Arc::new(TableCopy {
            def,
            routing: Routing::Everywhere,
            targets: ids,
            query: Some(rm.query()),
        }));
    }
    if !found.differences.is_empty() {
        return Err(BackfillError::Differences(found.differences));
    }
    Ok(Prepared {
        source: topology.source.clone(),
        targets,
        tables,
        to_create: found.to_create,
        routes,
    })
}

/// What checking the targets found: tables to create, and differences
/// between existing target tables and the source.
#[derive(Default)]
struct Findings {
    to_create: Vec<(usize, TableDef)>,
    differences: Vec<String>,
}

async fn check_targets(
    def: &TableDef,
    ids: &[usize],
    targets: &[ConnString],
    clients: &[Client],
    create: bool,
    strict_nulls: bool,
    found: &mut Findings,
) -> Result<(), BackfillError> {
    for &i in ids {
        let name = targets[i].to_string();
        match catalog::describe(&clients[i], &def.table)
            .await
            .map_err(|e| query_error(&name, e))?
        {
            None if create => found.to_create.push((i, def.clone())),
            None => {
                return Err(BackfillError::TargetMissing {
                    table: def.name.clone(),
                    target: name,
                })
            }
            Some(existing) => {
                found
                    .differences
                    .extend(catalog::differences(def, &existing, &name, strict_nulls))
            }
        }
    }
    Ok(())
}

/// The plan a dry run prints: chunks and estimates per table.
pub async fn dry_run(
    prepared: &Prepared,
    request: &BackfillRequest,
) -> Result<Vec<TablePlan>, BackfillError> {
    let source = prepared.source.connect().await?;
    let mut out = Vec::new();
    for t in &prepared.tables {
        let chunks = if t.query.is_some() {
            1
        } else {
            plan(&t.def, request.chunk_rows).len()
        };
        let mut per_target = vec![0i64; t.targets.len()];
        if let Routing::Sharded {
            key_index,
            placement,
        } = &t.routing
        {
            // A 1% block sample tells how rows spread over shards.
            let column = shardline_topology::quote_ident(&t.def.columns[*key_index].name);
            let sql = format!(
                "SELECT {} AS bucket, count(*) FROM {} TABLESAMPLE SYSTEM (1) GROUP BY 1",
                placement.bucket_sql(&column),
                t.def.quoted()
            );
            let rows = source
                .query(&sql, &[])
                .await
                .map_err(|e| query_error(&prepared.source.to_string(), e))?;
            let sampled: i64 = rows.iter().map(|r| r.get::<_, i64>(1)).sum();
            for r in &rows {
                let shard = placement.shard_of_bucket(r.get::<_, i64>(0) as u32);
                per_target[shard] += r.get::<_, i64>(1);
            }
            for v in &mut per_target {
                *v = if sampled > 0 {
                    *v * t.def.est_rows / sampled
                } else {
                    0
                };
            }
        } else {
            per_target.iter_mut().for_each(|v| *v = t.def.est_rows);
        }
        out.push(TablePlan {
            table: t.def.name.clone(),
            read_model: t.query.is_some(),
            chunks,
            est_rows: t.def.est_rows,
            est_bytes: t.def.bytes,
            targets: t
                .targets
                .iter()
                .zip(per_target)
                .map(|(i, n)| (prepared.targets[*i].to_string(), n))
                .collect(),
            create: prepared
                .to_create
                .iter()
                .filter(|(_, d)| d.name == t.def.name)
                .count(),
        });
    }
    Ok(out)
}
