//! The job: pre-flight checks, the consistent point, workers, completion.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardline_cdc::route::Routes;
use shardline_topology::{ConnString, ContextKind, Topology};
use tokio::sync::watch;
use tokio_postgres::Client;

use crate::catalog::{self, query_error, TableDef};
use crate::control::{self, Job, SOURCE_DDL, TARGET_DDL};
use crate::copy::{copy_chunk, Chunk, Routing, TableCopy, TargetConn};
use crate::error::BackfillError;
use crate::plan::plan;
use crate::readmodel;
use crate::snapshot::{self, SnapshotHolder};
use crate::throttle::Throttle;
use crate::{BackfillReport, BackfillRequest, Event, TablePlan, TableReport};

/// How often a copy that failed on a lost target is tried again, and the
/// first wait between tries (doubling after each).
const RETRIES: u32 = 4;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

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
    let mut targets: Vec<ConnString> = Vec::new();
    let mut target_clients: Vec<Client> = Vec::new();
    let mut tables = Vec::new();
    let mut to_create = Vec::new();
    let mut differences = Vec::new();

    let wanted = |t: &str| {
        request.tables.as_ref().is_none_or(|list| {
            list.iter()
                .any(|w| catalog::normalise(w) == catalog::normalise(t))
        })
    };
    if let Some(list) = &request.tables {
        for t in list {
            let known = topology.context_of_table(t).is_some()
                || topology.read_models.iter().any(|r| &r.name == t);
            if !known {
                return Err(BackfillError::MissingTable {
                    table: format!("{t} (not listed in the topology)"),
                });
            }
        }
    }
    let target_id = |conn: &ConnString, targets: &mut Vec<ConnString>| -> usize {
        match targets.iter().position(|t| t.identity() == conn.identity()) {
            Some(i) => i,
            None => {
                targets.push(conn.clone());
                targets.len() - 1
            }
        }
    };
    let mut work: Vec<(String, Routing, Vec<usize>, Option<String>)> = Vec::new();
    for context in &topology.contexts {
        let ids: Vec<usize> = context
            .databases()
            .into_iter()
            .map(|c| target_id(c, &mut targets))
            .collect();
        match &context.kind {
            ContextKind::Sharded {
                shard_key,
                placement,
                reference_tables,
                ..
            } => {
                for t in context.tables.iter().filter(|t| wanted(t)) {
                    let routing = Routing::Sharded {
                        key_index: usize::MAX,
                        placement: placement.clone(),
                    };
                    work.push((t.clone(), routing, ids.clone(), Some(shard_key.clone())));
                }
                for t in reference_tables.iter().filter(|t| wanted(t)) {
                    work.push((t.clone(), Routing::Everywhere, ids.clone(), None));
                }
            }
            ContextKind::Single { .. } => {
                for t in context.tables.iter().filter(|t| wanted(t)) {
                    work.push((t.clone(), Routing::Everywhere, ids.clone(), None));
                }
            }
        }
    }
    for conn in &targets {
        target_clients.push(conn.connect().await?);
    }
    for (table, mut routing, ids, shard_key) in work {
        let def = catalog::describe(&source, &table)
            .await
            .map_err(|e| query_error(&source_name, e))?
            .ok_or_else(|| BackfillError::MissingTable {
                table: table.clone(),
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
            &mut to_create,
            &mut differences,
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
            .map(|c| target_id(c, &mut targets))
            .collect();
        while target_clients.len() < targets.len() {
            target_clients.push(targets[target_clients.len()].connect().await?);
        }
        let def = readmodel::shape(&source, &source_name, rm).await?;
        check_targets(
            &def,
            &ids,
            &targets,
            &target_clients,
            request.create,
            false,
            &mut to_create,
            &mut differences,
        )
        .await?;
        tables.push(Arc::new(TableCopy {
            def,
            routing: Routing::Everywhere,
            targets: ids,
            query: Some(rm.query()),
        }));
    }
    if !differences.is_empty() {
        return Err(BackfillError::Differences(differences));
    }
    Ok(Prepared {
        source: topology.source.clone(),
        targets,
        tables,
        to_create,
        routes,
    })
}

async fn check_targets(
    def: &TableDef,
    ids: &[usize],
    targets: &[ConnString],
    clients: &[Client],
    create: bool,
    strict_nulls: bool,
    to_create: &mut Vec<(usize, TableDef)>,
    differences: &mut Vec<String>,
) -> Result<(), BackfillError> {
    for &i in ids {
        let name = targets[i].to_string();
        match catalog::describe(&clients[i], &def.name)
            .await
            .map_err(|e| query_error(&name, e))?
        {
            None if create => to_create.push((i, def.clone())),
            None => {
                return Err(BackfillError::TargetMissing {
                    table: def.name.clone(),
                    target: name,
                })
            }
            Some(existing) => {
                differences.extend(catalog::differences(def, &existing, &name, strict_nulls))
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

/// Runs (or resumes, or joins) the job.
pub async fn run(
    prepared: Prepared,
    request: &BackfillRequest,
    stop: watch::Receiver<bool>,
    on_event: Arc<dyn Fn(Event) + Send + Sync>,
) -> Result<BackfillReport, BackfillError> {
    let started = Instant::now();
    let source_name = prepared.source.to_string();
    let source = prepared.source.connect().await?;
    let mut targets = Vec::new();
    for t in &prepared.targets {
        let client = t.connect().await?;
        client
            .batch_execute(TARGET_DDL)
            .await
            .map_err(|e| query_error(&t.to_string(), e))?;
        targets.push(client);
    }
    source
        .batch_execute(SOURCE_DDL)
        .await
        .map_err(|e| query_error(&source_name, e))?;
    if request.restart {
        restart(&source, &source_name, &prepared, &targets, &request.job).await?;
    }
    for (i, def) in &prepared.to_create {
        let mut sql = def.create_sql();
        if !request.defer_indexes {
            for index in &def.indexes {
                sql.push_str(&format!(";\n{index}"));
            }
        }
        targets[*i]
            .batch_execute(&sql)
            .await
            .map_err(|e| query_error(&prepared.targets[*i].to_string(), e))?;
    }

    let (job, holder) = establish(&source, &source_name, &prepared, &targets, request).await?;
    let leader = holder.is_some();
    let by_name: HashMap<String, Arc<TableCopy>> = prepared
        .tables
        .iter()
        .map(|t| (t.def.name.clone(), Arc::clone(t)))
        .collect();
    for t in &prepared.tables {
        on_event(Event::Planned {
            table: t.def.name.clone(),
            est_rows: t.def.est_rows.max(0) as u64,
        });
    }

    let throttle = Arc::new(Throttle::new(request.max_rows_per_sec));
    let shared = Arc::new(Shared {
        job: job.clone(),
        prepared_targets: prepared.targets.clone(),
        source: prepared.source.clone(),
        tables: by_name,
        throttle,
        on_event: Arc::clone(&on_event),
        wait_for_others: leader,
    });
    let mut workers = Vec::new();
    for w in 0..request.workers.max(1) {
        let shared = Arc::clone(&shared);
        let stop = stop.clone();
        workers.push(tokio::spawn(async move { worker(w, shared, stop).await }));
    }
    let mut first_error = None;
    let mut totals: HashMap<String, (u64, u64, u32)> = HashMap::new();
    for w in workers {
        match w.await {
            Ok(Ok(done)) => {
                for (table, (rows, bytes, chunks)) in done {
                    let e = totals.entry(table).or_default();
                    e.0 += rows;
                    e.1 += bytes;
                    e.2 += chunks;
                }
            }
            Ok(Err(e)) => first_error = first_error.or(Some(e)),
            Err(e) => {
                first_error =
                    first_error.or(Some(BackfillError::Snapshot(format!("worker failed: {e}"))))
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    if *stop.borrow() {
        return Err(BackfillError::Interrupted);
    }
    let complete = if leader {
        finish(&source, &source_name, &prepared, &targets, &job, request).await?
    } else {
        false
    };
    drop(holder);
    let seconds = started.elapsed().as_secs_f64();
    let mut tables: Vec<TableReport> = prepared
        .tables
        .iter()
        .map(|t| {
            let (rows, bytes, chunks) = totals.get(&t.def.name).copied().unwrap_or_default();
            TableReport {
                table: t.def.name.clone(),
                rows,
                bytes,
                chunks,
                targets: t.targets.len(),
            }
        })
        .collect();
    tables.sort_by(|a, b| a.table.cmp(&b.table));
    let rows: u64 = tables.iter().map(|t| t.rows).sum();
    Ok(BackfillReport {
        job: job.name.clone(),
        slot: job.slot.clone(),
        consistent_lsn: job.consistent_lsn.clone(),
        generation: job.generation,
        complete,
        tables,
        seconds,
        rows_per_sec: rows as f64 / seconds.max(1e-9),
    })
}

/// Empties a target table. TRUNCATE refuses a table other tables reference
/// by foreign key; then the rows are deleted with foreign key checks off
/// (the referencing rows are emptied or copied again by the same job).
async fn empty_table(client: &Client, quoted: &str) -> Result<(), tokio_postgres::Error> {
    if client
        .batch_execute(&format!("TRUNCATE {quoted}"))
        .await
        .is_ok()
    {
        return Ok(());
    }
    let deleted = client
        .batch_execute(&format!(
            "BEGIN; SET LOCAL session_replication_role = replica; DELETE FROM {quoted}; COMMIT"
        ))
        .await;
    if deleted.is_err() {
        let _ = client.batch_execute("ROLLBACK").await;
    }
    deleted
}

async fn restart(
    source: &Client,
    source_name: &str,
    prepared: &Prepared,
    targets: &[Client],
    job: &str,
) -> Result<(), BackfillError> {
    source
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active",
            &[&job],
        )
        .await
        .map_err(|e| query_error(source_name, e))?;
    source
        .batch_execute(&format!(
            "DELETE FROM shardline.backfill_chunk WHERE job_name = '{j}'; DELETE FROM shardline.backfill_table WHERE job_name = '{j}';
             DELETE FROM shardline.backfill_job WHERE job_name = '{j}';",
            j = job.replace('\'', "''")
        ))
        .await
        .map_err(|e| query_error(source_name, e))?;
    for t in &prepared.tables {
        for &i in &t.targets {
            if prepared
                .to_create
                .iter()
                .any(|(ci, d)| *ci == i && d.name == t.def.name)
            {
                continue;
            }
            empty_table(&targets[i], &t.def.quoted())
                .await
                .map_err(|e| query_error(&prepared.targets[i].to_string(), e))?;
        }
    }
    for (i, client) in targets.iter().enumerate() {
        client
            .execute(
                "DELETE FROM shardline.backfill_done WHERE job_name = $1",
                &[&job],
            )
            .await
            .map_err(|e| query_error(&prepared.targets[i].to_string(), e))?;
    }
    Ok(())
}

/// Creates the job and its consistent point, joins a job whose snapshot is
/// alive, or resumes one whose snapshot is gone in a new generation.
async fn establish(
    source: &Client,
    source_name: &str,
    prepared: &Prepared,
    targets: &[Client],
    request: &BackfillRequest,
) -> Result<(Job, Option<SnapshotHolder>), BackfillError> {
    let q = |e| query_error(source_name, e);
    let existing = control::load_job(source, source_name, &request.job).await?;
    let (job, holder, fresh_tables) = match existing {
        None => {
            let slot_exists = source
                .query_opt(
                    "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
                    &[&request.job],
                )
                .await
                .map_err(q)?
                .is_some();
            for t in &prepared.tables {
                for &i in &t.targets {
                    if prepared
                        .to_create
                        .iter()
                        .any(|(ci, d)| *ci == i && d.name == t.def.name)
                    {
                        continue;
                    }
                    let filled: bool = targets[i]
                        .query_one(
                            &format!("SELECT EXISTS (SELECT 1 FROM {})", t.def.quoted()),
                            &[],
                        )
                        .await
                        .map_err(|e| query_error(&prepared.targets[i].to_string(), e))?
                        .get(0);
                    if filled && t.query.is_none() {
                        return Err(BackfillError::TargetNotEmpty {
                            table: t.def.name.clone(),
                            target: prepared.targets[i].to_string(),
                        });
                    }
                }
            }
            if slot_exists {
                return Err(BackfillError::Snapshot(format!(
                    "slot {} already exists but no backfill job records it; drop it (shardline cdc drop) or run with --restart",
                    request.job
                )));
            }
            // The publication must exist before the slot: pgoutput reads
            // publications as of each change's position in the WAL.
            shardline_cdc::source::ensure_publication(source, &request.job, &prepared.routes)
                .await
                .map_err(|e| BackfillError::Snapshot(e.to_string()))?;
            let holder = snapshot::export(&prepared.source, &request.job, false).await?;
            source
                .execute(
                    "INSERT INTO shardline.backfill_job (job_name, slot_name, consistent_lsn, snapshot_name, generation, state)
                     VALUES ($1, $1, $2::text::pg_lsn, $3, 1, 'copying')",
                    &[&request.job, &holder.consistent_lsn, &holder.snapshot],
                )
                .await
                .map_err(q)?;
            let job = control::load_job(source, source_name, &request.job)
                .await?
                .expect("job just written");
            (job, Some(holder), true)
        }
        Some(job) if snapshot::importable(source, &job.snapshot).await => (job, None, false),
        Some(job) => {
            // The snapshot died with the process that held it: a new
            // generation, copied from a new snapshot.
            let generation = job.generation + 1;
            let holder = snapshot::export(
                &prepared.source,
                &format!("{}_g{generation}", job.slot),
                true,
            )
            .await?;
            source
                .execute(
                    "UPDATE shardline.backfill_job SET generation = $2, snapshot_name = $3, state = 'copying' WHERE job_name = $1",
                    &[&job.name, &generation, &holder.snapshot],
                )
                .await
                .map_err(q)?;
            let job = control::load_job(source, source_name, &request.job)
                .await?
                .expect("job exists");
            (job, Some(holder), false)
        }
    };
    if let Some(holder) = &holder {
        // Plan every table not complete: new, or cut short with the old
        // snapshot (its partial rows are removed and it is copied again).
        for t in &prepared.tables {
            let row = source
                .query_opt(
                    "SELECT generation, state FROM shardline.backfill_table WHERE job_name = $1 AND table_name = $2",
                    &[&job.name, &t.def.name],
                )
                .await
                .map_err(q)?;
            let complete = match &row {
                Some(r) if r.get::<_, String>(1) == "done" => true,
                Some(r) => {
                    is_complete(
                        source,
                        source_name,
                        targets,
                        prepared,
                        &job.name,
                        t,
                        r.get(0),
                    )
                    .await?
                }
                None => false,
            };
            if complete {
                continue;
            }
            if row.is_some() || !fresh_tables {
                for &i in &t.targets {
                    let name = prepared.targets[i].to_string();
                    empty_table(&targets[i], &t.def.quoted())
                        .await
                        .map_err(|e| query_error(&name, e))?;
                    targets[i]
                        .execute(
                            "DELETE FROM shardline.backfill_done WHERE job_name = $1 AND table_name = $2",
                            &[&job.name, &t.def.name],
                        )
                        .await
                        .map_err(|e| query_error(&name, e))?;
                }
            }
            let chunks = if t.query.is_some() {
                vec![crate::plan::PlannedChunk {
                    number: 0,
                    first_block: 0,
                    end_block: None,
                }]
            } else {
                let fresh = catalog::describe(source, &t.def.name)
                    .await
                    .map_err(q)?
                    .unwrap_or_else(|| t.def.clone());
                plan(&fresh, request.chunk_rows)
            };
            source
                .execute(
                    "INSERT INTO shardline.backfill_table (job_name, table_name, generation, snapshot_lsn, state)
                     VALUES ($1, $2, $3, $4::text::pg_lsn, 'copying')
                     ON CONFLICT (job_name, table_name) DO UPDATE SET generation = excluded.generation,
                         snapshot_lsn = excluded.snapshot_lsn, state = 'copying'",
                    &[&job.name, &t.def.name, &job.generation, &holder.consistent_lsn],
                )
                .await
                .map_err(q)?;
            for c in chunks {
                source
                    .execute(
                        "INSERT INTO shardline.backfill_chunk (job_name, table_name, generation, chunk_no, first_block, end_block)
                         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                        &[&job.name, &t.def.name, &job.generation, &c.number, &c.first_block, &c.end_block],
                    )
                    .await
                    .map_err(q)?;
            }
        }
    }
    Ok((job, holder))
}

/// Whether every chunk of `table`'s generation is on every one of its targets.
async fn is_complete(
    source: &Client,
    source_name: &str,
    targets: &[Client],
    prepared: &Prepared,
    job: &str,
    table: &TableCopy,
    generation: i32,
) -> Result<bool, BackfillError> {
    let planned: i64 = source
        .query_one(
            "SELECT count(*) FROM shardline.backfill_chunk WHERE job_name = $1 AND table_name = $2 AND generation = $3",
            &[&job, &table.def.name, &generation],
        )
        .await
        .map_err(|e| query_error(source_name, e))?
        .get(0);
    if planned == 0 {
        return Ok(false);
    }
    for &i in &table.targets {
        let done = control::done_on_target(
            &targets[i],
            &prepared.targets[i].to_string(),
            job,
            &table.def.name,
            generation,
        )
        .await?;
        if (done.len() as i64) < planned {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Marks complete tables, builds deferred indexes and closes the job.
/// Success means every chunk of every table is on every target.
async fn finish(
    source: &Client,
    source_name: &str,
    prepared: &Prepared,
    targets: &[Client],
    job: &Job,
    request: &BackfillRequest,
) -> Result<bool, BackfillError> {
    let mut missing = Vec::new();
    for t in &prepared.tables {
        let generation: i32 = source
            .query_one(
                "SELECT generation FROM shardline.backfill_table WHERE job_name = $1 AND table_name = $2",
                &[&job.name, &t.def.name],
            )
            .await
            .map_err(|e| query_error(source_name, e))?
            .get(0);
        if is_complete(
            source,
            source_name,
            targets,
            prepared,
            &job.name,
            t,
            generation,
        )
        .await?
        {
            source
                .execute(
                    "UPDATE shardline.backfill_table SET state = 'done' WHERE job_name = $1 AND table_name = $2",
                    &[&job.name, &t.def.name],
                )
                .await
                .map_err(|e| query_error(source_name, e))?;
        } else {
            missing.push(t.def.name.clone());
        }
    }
    if !missing.is_empty() {
        return Err(BackfillError::Copy {
            table: missing.join(", "),
            chunk: -1,
            target: "every target".into(),
            cause: "some chunks are not on every target yet".into(),
        });
    }
    if request.defer_indexes {
        for (i, def) in &prepared.to_create {
            for index in &def.indexes {
                let sql = index
                    .replacen("CREATE INDEX", "CREATE INDEX IF NOT EXISTS", 1)
                    .replacen(
                        "CREATE UNIQUE INDEX",
                        "CREATE UNIQUE INDEX IF NOT EXISTS",
                        1,
                    );
                targets[*i]
                    .batch_execute(&sql)
                    .await
                    .map_err(|e| query_error(&prepared.targets[*i].to_string(), e))?;
            }
        }
    }
    source
        .execute(
            "UPDATE shardline.backfill_job SET state = 'done', finished_at = now() WHERE job_name = $1",
            &[&job.name],
        )
        .await
        .map_err(|e| query_error(source_name, e))?;
    Ok(true)
}

struct Shared {
    job: Job,
    prepared_targets: Vec<ConnString>,
    source: ConnString,
    tables: HashMap<String, Arc<TableCopy>>,
    throttle: Arc<Throttle>,
    on_event: Arc<dyn Fn(Event) + Send + Sync>,
    /// The snapshot's holder waits for chunks other processes still copy.
    wait_for_others: bool,
}

type Totals = HashMap<String, (u64, u64, u32)>;

/// Claims chunks until none is left, copying each into the targets that
/// lack it. The claim's row lock is held while the chunk is copied, so a
/// worker that dies releases its chunk to the others.
async fn worker(
    _id: usize,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) -> Result<Totals, BackfillError> {
    let source_name = shared.source.to_string();
    let control = shared.source.connect().await?;
    let reader = shared.source.connect().await?;
    let mut clients: HashMap<usize, Client> = HashMap::new();
    let mut totals = Totals::new();
    loop {
        if *stop.borrow() {
            return Ok(totals);
        }
        control
            .batch_execute("BEGIN")
            .await
            .map_err(|e| query_error(&source_name, e))?;
        let claimed = control
            .query_opt(
                "SELECT c.table_name, c.generation, c.chunk_no, c.first_block, c.end_block
                   FROM shardline.backfill_chunk c
                   JOIN shardline.backfill_table t USING (job_name, table_name, generation)
                  WHERE c.job_name = $1 AND NOT c.done
                  ORDER BY c.table_name, c.chunk_no
                  LIMIT 1 FOR UPDATE OF c SKIP LOCKED",
                &[&shared.job.name],
            )
            .await
            .map_err(|e| query_error(&source_name, e))?;
        let Some(row) = claimed else {
            control
                .batch_execute("COMMIT")
                .await
                .map_err(|e| query_error(&source_name, e))?;
            let pending: i64 = control
                .query_one(
                    "SELECT count(*) FROM shardline.backfill_chunk c JOIN shardline.backfill_table t USING (job_name, table_name, generation)
                      WHERE c.job_name = $1 AND NOT c.done",
                    &[&shared.job.name],
                )
                .await
                .map_err(|e| query_error(&source_name, e))?
                .get(0);
            if pending == 0 || !shared.wait_for_others {
                return Ok(totals);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        let table_name: String = row.get(0);
        let Some(table) = shared.tables.get(&table_name).cloned() else {
            // A table of this job that this run was not asked to copy.
            control
                .batch_execute("ROLLBACK")
                .await
                .map_err(|e| query_error(&source_name, e))?;
            return Ok(totals);
        };
        let chunk = Chunk {
            table,
            generation: row.get(1),
            number: row.get(2),
            first_block: row.get(3),
            end_block: row.get(4),
        };
        let copied = copy_with_retries(&shared, &reader, &mut clients, &chunk, &stop).await;
        let copied = match copied {
            Ok(c) => c,
            Err(e) => {
                let _ = control.batch_execute("ROLLBACK").await;
                return Err(e);
            }
        };
        control
            .execute(
                "UPDATE shardline.backfill_chunk SET done = true, rows = $5
                  WHERE job_name = $1 AND table_name = $2 AND generation = $3 AND chunk_no = $4",
                &[
                    &shared.job.name,
                    &table_name,
                    &chunk.generation,
                    &chunk.number,
                    &(copied.rows as i64),
                ],
            )
            .await
            .map_err(|e| query_error(&source_name, e))?;
        control
            .batch_execute("COMMIT")
            .await
            .map_err(|e| query_error(&source_name, e))?;
        let e = totals.entry(table_name.clone()).or_default();
        e.0 += copied.rows;
        e.1 += copied.bytes;
        e.2 += 1;
        (shared.on_event)(Event::ChunkDone {
            table: table_name,
            rows: copied.rows,
            bytes: copied.bytes,
        });
    }
}

async fn copy_with_retries(
    shared: &Shared,
    reader: &Client,
    clients: &mut HashMap<usize, Client>,
    chunk: &Chunk,
    stop: &watch::Receiver<bool>,
) -> Result<crate::copy::Copied, BackfillError> {
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = copy_once(shared, reader, clients, chunk, stop).await;
        match result {
            Err(e) if e.is_transient() && attempt < RETRIES && !*stop.borrow() => {
                tracing::warn!(error = %e, attempt, "retrying chunk after {backoff:?}");
                // A lost target connection is replaced on the next try.
                clients.retain(|_, c| !c.is_closed());
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            other => return other,
        }
    }
}

async fn copy_once(
    shared: &Shared,
    reader: &Client,
    clients: &mut HashMap<usize, Client>,
    chunk: &Chunk,
    stop: &watch::Receiver<bool>,
) -> Result<crate::copy::Copied, BackfillError> {
    let mut needed = Vec::new();
    for &i in &chunk.table.targets {
        if !clients.contains_key(&i) {
            let client =
                shared.prepared_targets[i]
                    .connect()
                    .await
                    .map_err(|e| BackfillError::Copy {
                        table: chunk.table.def.name.clone(),
                        chunk: chunk.number,
                        target: shared.prepared_targets[i].to_string(),
                        cause: e.to_string(),
                    })?;
            // Like PostgreSQL's own apply workers: no triggers and no foreign
            // key checks for rows that were valid on the source, so tables
            // can be copied in any order. Needs superuser; without it the
            // copy still works, and a foreign key violation is retried.
            if let Err(e) = client
                .batch_execute("SET session_replication_role = replica")
                .await
            {
                tracing::debug!(error = %e, "target keeps triggers and foreign key checks");
            }
            clients.insert(i, client);
        }
        let name = shared.prepared_targets[i].to_string();
        let done = control::done_on_target(
            &clients[&i],
            &name,
            &shared.job.name,
            &chunk.table.def.name,
            chunk.generation,
        )
        .await
        .map_err(|e| BackfillError::Copy {
            table: chunk.table.def.name.clone(),
            chunk: chunk.number,
            target: name.clone(),
            cause: e.to_string(),
        })?;
        if !done.contains(&chunk.number) {
            needed.push(i);
        }
    }
    let names: Vec<String> = needed
        .iter()
        .map(|i| shared.prepared_targets[*i].to_string())
        .collect();
    let conns: Vec<TargetConn> = needed
        .iter()
        .zip(&names)
        .map(|(i, name)| TargetConn {
            index: *i,
            name,
            client: &clients[i],
        })
        .collect();
    if conns.is_empty() {
        return Ok(crate::copy::Copied::default());
    }
    copy_chunk(
        reader,
        &shared.job.snapshot,
        &shared.job.name,
        chunk,
        &conns,
        &shared.throttle,
        stop,
    )
    .await
}
