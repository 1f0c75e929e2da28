//! The job: the consistent point, resume in generations, workers, completion.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;
use tokio_postgres::Client;

use crate::catalog::{self, query_error};
use crate::control::{self, Job, SOURCE_DDL, TARGET_DDL};
use crate::copy::TableCopy;
use crate::error::BackfillError;
use crate::plan::plan;
use crate::prepare::Prepared;
use crate::snapshot::{self, SnapshotHolder};
use crate::throttle::Throttle;
use crate::worker::{worker, Shared};
use crate::{BackfillReport, BackfillRequest, Event, TableReport};

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
    crate::create::create_tables(&prepared, &targets, request.defer_indexes).await?;

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
            Err(e) => first_error = first_error.or(Some(BackfillError::Worker(e.to_string()))),
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    if *stop.borrow() {
        return Err(BackfillError::Interrupted);
    }
    // A target connection lost while the workers copied (a restart, a
    // cut) is replaced, as the workers replaced theirs: the last checks
    // read every target.
    for (i, client) in targets.iter_mut().enumerate() {
        if client.is_closed() {
            *client = prepared.targets[i].connect().await?;
        }
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
                return Err(BackfillError::OrphanSlot {
                    slot: request.job.clone(),
                });
            }
            // The publication must exist before the slot: pgoutput reads
            // publications as of each change's position in the WAL.
            shardline_cdc::source::ensure_publication(source, &request.job, &prepared.routes)
                .await
                .map_err(|e| match e {
                    // The source went away (a restart): resumable, like
                    // any other lost connection.
                    shardline_cdc::source::SourceError::Query(e)
                        if shardline_topology::pgerror::is_connection_lost(&e) =>
                    {
                        query_error(source_name, e)
                    }
                    e => BackfillError::Publication {
                        publication: request.job.clone(),
                        cause: e.to_string(),
                    },
                })?;
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
                    relation: None,
                    first_block: 0,
                    end_block: None,
                }]
            } else {
                let fresh = catalog::describe(source, &t.def.table)
                    .await
                    .map_err(|e| catalog::schema_error(source_name, e))?
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
                let relation = c.relation.as_ref().map(|r| r.to_string());
                source
                    .execute(
                        "INSERT INTO shardline.backfill_chunk (job_name, table_name, generation, chunk_no, first_block, end_block, relation)
                         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                        &[&job.name, &t.def.name, &job.generation, &c.number, &c.first_block, &c.end_block, &relation],
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
        crate::create::build_deferred_indexes(prepared, targets).await?;
    }
    crate::create::carry_sequences(source, source_name, prepared, targets).await?;
    source
        .execute(
            "UPDATE shardline.backfill_job SET state = 'done', finished_at = now() WHERE job_name = $1",
            &[&job.name],
        )
        .await
        .map_err(|e| query_error(source_name, e))?;
    Ok(true)
}
