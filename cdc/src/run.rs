//! `cdc run`: the stream from the source slot to every target.
//!
//! The coordinator reads the replication stream in order, plans each row
//! change into per-target statements ([`crate::change`]) and hands them to one
//! [`Applier`] per target over bounded channels, so targets apply in parallel
//! while each sees its statements in source commit order. Targets report the
//! source position they made durable; [`Confirmations`] turns those reports
//! into the position confirmed to the slot.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pgwire_replication::{ReplicationClient, ReplicationConfig, ReplicationEvent};
use shardline_topology::{ConnString, ConnectError, Topology};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::apply::{self, Applier, ApplyError, Command};
use crate::change::{ChangeError, RowPlan, Tables};
use crate::confirm::Confirmations;
use crate::lsn::Lsn;
use crate::pgoutput::{self, DecodeError, LogicalMessage};
use crate::route::Routes;
use crate::source::{self, SourceError};
use crate::sql;

/// How often the slot is told the confirmed position (at most).
pub const STATUS_INTERVAL: Duration = Duration::from_millis(100);

/// The prefix of heartbeat messages written into the source's WAL.
pub const HEARTBEAT_PREFIX: &str = "shardline.heartbeat";

/// Session settings that make every value's text form unambiguous and exact.
const STREAM_OPTIONS: &str =
    "-c DateStyle=ISO -c TimeZone=UTC -c IntervalStyle=postgres -c extra_float_digits=3";

/// Commands queued per target before the stream waits for it: enough to
/// keep a target busy, small enough to bound memory on huge transactions.
const TARGET_QUEUE: usize = 1024;

#[derive(Clone)]
pub struct RunOptions {
    pub slot: String,
    pub publication: String,
    /// How often to write a heartbeat into the source's WAL, so an idle
    /// source still lets the slot advance.
    pub heartbeat: Duration,
    /// Warn when the slot holds back more WAL than this many bytes.
    pub max_retained_wal: u64,
    /// How often stale read models are recomputed (and once more at stop).
    pub read_model_refresh: Duration,
    /// Write the change stream as JSON lines here instead of applying it.
    pub jsonl: Option<crate::jsonl::Output>,
    /// Serve Prometheus metrics over HTTP on this address.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The appliers mark their target transactions with the replication
    /// origin `<origin>.<slot>.<target>`.
    pub origin: String,
    /// Source transactions whose origin starts with this came from the
    /// other direction of a cutover: they are not applied.
    pub skip_origin: String,
    /// How long to keep setting the stream up again after a lost
    /// connection before the run fails (zero: fail at once).
    pub retry_for: Duration,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("slot", &self.slot)
            .field("publication", &self.publication)
            .field("heartbeat", &self.heartbeat)
            .field("jsonl", &self.jsonl.is_some())
            .finish()
    }
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            slot: "shardline".into(),
            publication: "shardline".into(),
            heartbeat: Duration::from_secs(10),
            max_retained_wal: 1 << 30,
            read_model_refresh: Duration::from_secs(10),
            jsonl: None,
            metrics_listen: None,
            origin: crate::apply::FORWARD_ORIGIN.into(),
            skip_origin: REVERSE_ORIGIN_PREFIX.into(),
            retry_for: Duration::ZERO,
        }
    }
}

/// What a run did, for the final summary and for tests.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RunReport {
    pub transactions: u64,
    pub changes: u64,
    /// Source transactions a target skipped because it already had them.
    pub skipped: u64,
    /// Target transactions committed, summed over the targets: each holds
    /// a group of source transactions (see `[cdc] group_wait`).
    pub target_commits: u64,
    /// Read models recomputed because their source table changed.
    pub read_model_refreshes: u64,
    /// Of those, recomputed for the groups the changes touched only.
    pub read_model_group_refreshes: u64,
    /// Changes that found a target diverged and were recorded there
    /// (`[cdc] on_divergence = "count"`).
    pub divergences: u64,
    /// Times the stream was set up again after a lost connection.
    pub reconnects: u64,
    /// Attempts to set it up again that failed.
    pub retries: u64,
    pub confirmed_lsn: String,
    pub seconds: f64,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CdcError {
    #[error("cannot start cdc: {}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
    Setup(Vec<SourceError>),
    #[error("cannot start cdc: {}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
    Privileges(Vec<crate::privilege::Missing>),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("replication stream from the source failed: {0}")]
    Stream(String),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Change(#[from] ChangeError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("slot {slot} does not exist, but {target} has applied changes up to {lsn} from an earlier slot of that name: changes since were not streamed (fix: run `shardline backfill --restart` to copy the tables again, or `shardline cdc drop` to forget the old progress if you know the targets are complete)")]
    LostSlot {
        slot: String,
        target: String,
        lsn: Lsn,
    },
    #[error("slot {slot} exists but publication {publication} does not: changes since the slot was created cannot be decoded (fix: shardline backfill --restart, which creates both in order)")]
    PublicationAfterSlot { slot: String, publication: String },
    #[error("cannot serve metrics on {addr}: {cause}")]
    Metrics {
        addr: std::net::SocketAddr,
        cause: String,
    },
    #[error("cannot write the JSON-lines stream: {0}")]
    Sink(String),
    #[error("query on {target} failed: {cause}")]
    Query {
        target: String,
        cause: String,
        /// The connection went away (worth a reconnect).
        lost: bool,
    },
    #[error(
        "schema change {id} on the source, `{statement}`, cannot be carried to the targets: {why}"
    )]
    Ddl {
        id: i64,
        statement: String,
        why: String,
        fix: String,
    },
    #[error("read model {read_model}: a change of {table} did not carry its whole old row, so the read model cannot be adjusted (fix: ALTER TABLE {table} REPLICA IDENTITY FULL; then `shardline backfill --restart` to copy the read model again)")]
    IncompleteChange { read_model: String, table: String },
}

struct Target {
    name: String,
    recorded: Lsn,
    queue: mpsc::Sender<Command>,
    tally: std::sync::Arc<apply::Tally>,
}

struct Txn {
    info: crate::jsonl::TxnInfo,
    touched: BTreeSet<usize>,
    /// Written by the other direction of a cutover (its origin starts with
    /// [`RunOptions::skip_origin`]): the targets already have its rows; only
    /// read models take its changes.
    echo: bool,
}

/// Replication origins of the streams from the shards back to the
/// monolith start so; the transactions they write are not streamed out
/// again.
pub const REVERSE_ORIGIN_PREFIX: &str = "shardline.reverse.";

impl RunReport {
    fn refreshed(&mut self, done: crate::readmodel::Refreshed) {
        self.read_model_refreshes += (done.whole + done.groups) as u64;
        self.read_model_group_refreshes += done.groups as u64;
    }
}

/// Streams until `stop` turns true or the stream fails.
///
/// A connection lost to the source or a target (a restart, a network cut)
/// does not end the run while `options.retry_for` lasts: the stream and
/// the appliers are set up again from the slot and the targets' recorded
/// positions, as a new run would (`crate::retry`). Anything else stops it.
pub async fn run(
    topology: &Topology,
    options: &RunOptions,
    stop: watch::Receiver<bool>,
) -> Result<RunReport, CdcError> {
    let started = Instant::now();
    let routes = Routes::from_topology(topology);
    let names = if options.jsonl.is_some() {
        Vec::new()
    } else {
        routes.targets.iter().map(|c| c.to_string()).collect()
    };
    // Bound before anything is created, so a taken address changes nothing.
    let metrics = crate::metrics::Metrics::new(names);
    if let Some(addr) = options.metrics_listen {
        crate::metrics::serve(addr, metrics.clone(), stop.clone())
            .await
            .map_err(|e| CdcError::Metrics {
                addr,
                cause: e.to_string(),
            })?;
        tracing::info!(%addr, "serving Prometheus metrics");
    }
    let mut report = RunReport::default();
    let mut episode = crate::retry::Episode::default();
    loop {
        let mut streaming = false;
        let attempt = stream_once(
            topology,
            options,
            stop.clone(),
            &metrics,
            &mut report,
            &mut streaming,
            &mut episode,
        )
        .await;
        match attempt {
            Ok(()) => break,
            Err(e) => {
                let wait = episode.failed(e, streaming, options, &stop, &mut report, &metrics)?;
                let mut stop = stop.clone();
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// One stream: set-up, then changes until `stop` or a failure.
async fn stream_once(
    topology: &Topology,
    options: &RunOptions,
    mut stop: watch::Receiver<bool>,
    metrics: &std::sync::Arc<crate::metrics::Metrics>,
    report: &mut RunReport,
    streaming: &mut bool,
    episode: &mut crate::retry::Episode,
) -> Result<(), CdcError> {
    let routes = Routes::from_topology(topology);
    let source = sql::connect(&topology.source).await?;
    let problems = source::check(&source, &routes, &options.slot)
        .await
        .map_err(|e| query_error(&topology.source, e))?;
    if !problems.is_empty() {
        return Err(CdcError::Setup(problems));
    }
    let time_zone: String = source
        .query_one("SELECT current_setting('TimeZone')", &[])
        .await
        .map_err(|e| query_error(&topology.source, e))?
        .get(0);
    let (durable_tx, mut durable_rx) = mpsc::unbounded_channel();
    // An applier that fails says so at once: the stream stops even when no
    // further change is headed its way.
    let (failed_tx, mut failed_rx) = mpsc::unbounded_channel::<()>();
    let mut targets = Vec::new();
    let mut appliers: Vec<JoinHandle<Result<(), ApplyError>>> = Vec::new();
    let jsonl = options.jsonl.clone().map(crate::jsonl::JsonlSink::new);
    // The JSON-lines sink replaces the targets: none is connected.
    let target_list = if jsonl.is_some() {
        &[][..]
    } else {
        &routes.targets[..]
    };
    let mut missing = Vec::new();
    let mut clients = Vec::new();
    for conn in target_list {
        let client = conn.connect().await?;
        missing.extend(
            crate::privilege::missing(&client, &conn.to_string())
                .await
                .map_err(|e| query_error(conn, e))?,
        );
        clients.push(client);
    }
    if !missing.is_empty() {
        return Err(CdcError::Privileges(missing));
    }
    for ((i, conn), client) in target_list.iter().enumerate().zip(clients) {
        let recorded = apply::recorded_position(&client, &options.slot)
            .await
            .map_err(|e| query_error(conn, e))?;
        let (tx, rx) = mpsc::channel(TARGET_QUEUE);
        let tally = std::sync::Arc::new(apply::Tally::default());
        let applier = Applier {
            target: i,
            name: conn.to_string(),
            client,
            slot: options.slot.clone(),
            time_zone: time_zone.clone(),
            apply_interval: topology
                .context(&routes.target_context[i])
                .and_then(|c| c.apply_interval),
            origin: crate::apply::origin_name(&options.origin, &options.slot, &conn.to_string()),
            on_divergence: topology.cdc.on_divergence,
            grouping: apply::Grouping::from(&topology.cdc),
            tally: tally.clone(),
        };
        let (durable, failed) = (durable_tx.clone(), failed_tx.clone());
        appliers.push(tokio::spawn(async move {
            let result = applier.run(rx, durable).await;
            if result.is_err() {
                let _ = failed.send(());
            }
            result
        }));
        targets.push(Target {
            name: conn.to_string(),
            recorded,
            queue: tx,
            tally,
        });
    }
    drop(durable_tx);

    // A target that holds progress of this slot while the slot is gone
    // missed every change between: resuming would silently skip them
    // (supabase/etl 935). Refuse before creating anything.
    if !source::slot_exists(&source, &options.slot).await? {
        if let Some(t) = targets.iter().find(|t| t.recorded > Lsn::ZERO) {
            return Err(CdcError::LostSlot {
                slot: options.slot.clone(),
                target: t.name.clone(),
                lsn: t.recorded,
            });
        }
    }
    if source::slot_exists(&source, &options.slot).await?
        && !source::publication_exists(&source, &options.publication).await?
    {
        // pgoutput reads publications as of each change's WAL position: one
        // created after the slot cannot decode the changes before it.
        return Err(CdcError::PublicationAfterSlot {
            slot: options.slot.clone(),
            publication: options.publication.clone(),
        });
    }
    source::ensure_publication(&source, &options.publication, &routes).await?;
    let slot = match source::ensure_slot(&source, &options.slot).await {
        // After a lost connection the old walsender may hold the slot
        // until it notices (wal_sender_timeout): wait for it.
        Err(SourceError::SlotInUse { slot, pid }) if episode.fault.is_some() => {
            return Err(CdcError::Stream(format!(
                "slot {slot} is still held by process {pid}, the walsender of the lost stream"
            )));
        }
        other => other?,
    };
    if slot.created_now && options.origin == crate::reverse::REVERSE_ORIGIN {
        // The way back starts empty by design: only what the shards are
        // written from now on has to reach the monolith.
        tracing::info!(slot = %options.slot, lsn = %slot.confirmed_flush, "created the reverse slot: the shard's changes from here on stream back to the monolith");
    } else if slot.created_now {
        tracing::warn!(slot = %options.slot, lsn = %slot.confirmed_flush, "created the slot now: only changes from here on are streamed; run `shardline backfill` first to copy what came before");
    }

    let mut applied: Vec<Lsn> = targets.iter().map(|t| t.recorded).collect();
    let mut source_seen = Lsn::ZERO;
    let mut publish = tokio::time::interval(Duration::from_secs(1));
    publish.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let copied_at = source::backfill_points(&source, &options.slot).await?;
    let config = replication_config(&topology.source, options, slot.confirmed_flush).await?;
    let mut stream = ReplicationClient::connect(config)
        .await
        .map_err(|e| CdcError::Stream(e.to_string()))?;
    tracing::info!(slot = %options.slot, from = %slot.confirmed_flush, targets = targets.len(), "streaming");
    *streaming = true;
    episode.recovered(report, metrics);
    crate::retry::record(&source, &options.slot, report, episode).await;
    // Targets sent a commit since the stream last caught up, and where the
    // last dispatched transaction ended (see `Command::CaughtUp`).
    let mut open_groups: BTreeSet<usize> = BTreeSet::new();
    let mut dispatched_end = Lsn::ZERO;

    let mut confirmations = Confirmations::new(slot.confirmed_flush);
    let primary_keys = source::primary_keys(&source, &routes).await?;
    let mut tables = Tables::with_primary_keys(primary_keys)
        .with_identity_always(source::identity_always(&source, &routes).await?);
    let mut deltas = if jsonl.is_some() {
        Vec::new()
    } else {
        crate::delta::prepare(&source, topology, &routes)
            .await
            .map_err(|e| query_error(&topology.source, e))?
    };
    let mut txn: Option<Txn> = None;
    let incremental: Vec<&str> = deltas.iter().map(|m| m.name.as_str()).collect();
    let mut read_models = crate::readmodel::Refresher::new(topology).without(&incremental);
    if jsonl.is_none() {
        read_models
            .prepare_groups(&source)
            .await
            .map_err(|e| query_error(&topology.source, e))?;
    }
    let mut schema = crate::ddl::SchemaStream::new(&source, topology, &routes, &incremental)
        .await
        .map_err(|e| query_error(&topology.source, e))?;
    // First after one period: nothing is stale yet at start, and a tick
    // that waited behind the stream's first events would recompute what
    // they touched at a moment that depends on timing.
    let mut refresh = tokio::time::interval_at(
        tokio::time::Instant::now() + options.read_model_refresh,
        options.read_model_refresh,
    );
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heartbeat = tokio::time::interval(options.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Sequences follow the source on every heartbeat; the reverse stream
    // leaves the monolith's alone (see `crate::sequence`).
    let mut sequences = if jsonl.is_none() && options.origin == crate::apply::FORWARD_ORIGIN {
        Some(
            crate::sequence::SequenceSync::new(&source, &routes)
                .await
                .map_err(|e| CdcError::Stream(format!("reading the source's sequences: {e}")))?,
        )
    } else {
        None
    };

    let outcome: Result<(), CdcError> = async {
        loop {
            tokio::select! {
                biased;
                _ = stop.changed() => {
                    if *stop.borrow() { return Ok(()); }
                }
                Some(()) = failed_rx.recv() => return Ok(()),
                Some((target, lsn)) = durable_rx.recv() => {
                    confirmations.durable(target, lsn);
                    applied[target] = applied[target].max(lsn);
                    stream.update_applied_lsn(pgwire_replication::Lsn(confirmations.confirmed().0));
                }
                event = stream.recv() => {
                    let event = event.map_err(|e| CdcError::Stream(e.to_string()))?;
                    let Some(event) = event else {
                        return Err(CdcError::Stream("the source ended the stream".into()));
                    };
                    match event {
                        ReplicationEvent::Begin { final_lsn, xid, commit_time_micros } => {
                            let info = crate::jsonl::TxnInfo { commit_lsn: Lsn(final_lsn.0), xid, commit_time: commit_time_micros };
                            txn = Some(Txn { info, touched: BTreeSet::new(), echo: false });
                        }
                        ReplicationEvent::XLogData { data, .. } => {
                            let Some(t) = txn.as_mut() else { continue };
                            if let Some(sink) = &jsonl {
                                emit(data, t, &mut tables, &routes, &mut schema, sink, report)?;
                                continue;
                            }
                            let mut upkeep = Upkeep { refresher: &mut read_models, deltas: &mut deltas, schema: &mut schema };
                            let known = Known { routes: &routes, source: &topology.source, client: &source, copied_at: &copied_at, skip_origin: &options.skip_origin };
                            handle(data, t, &mut tables, &known, &targets, &mut upkeep, report).await?;
                        }
                        ReplicationEvent::Commit { lsn, end_lsn, commit_time_micros } => {
                            let Some(t) = txn.take() else { continue };
                            if let Some(sink) = &jsonl {
                                sink.commit().map_err(|e| CdcError::Sink(e.to_string()))?;
                            }
                            let mut t = t;
                            flush_deltas(&mut deltas, &mut t, &targets).await?;
                            for &target in &t.touched {
                                let commit = Command::Commit { commit_lsn: Lsn(lsn.0), end_lsn: Lsn(end_lsn.0), commit_time: commit_time_micros };
                                send(&targets[target], commit).await?;
                            }
                            open_groups.extend(t.touched.iter().copied());
                            dispatched_end = Lsn(end_lsn.0);
                            report.transactions += 1;
                            source_seen = source_seen.max(Lsn(end_lsn.0));
                            confirmations.dispatched_at(Lsn(end_lsn.0), t.touched, commit_time_micros);
                            stream.update_applied_lsn(pgwire_replication::Lsn(confirmations.confirmed().0));
                        }
                        ReplicationEvent::Message { transactional: false, lsn, prefix, .. } if prefix == HEARTBEAT_PREFIX => {
                            source_seen = source_seen.max(Lsn(lsn.0));
                            if txn.is_none() {
                                confirmations.idle_at(Lsn(lsn.0));
                                stream.update_applied_lsn(pgwire_replication::Lsn(confirmations.confirmed().0));
                            }
                        }
                        ReplicationEvent::KeepAlive { wal_end, .. } => {
                            source_seen = source_seen.max(Lsn(wal_end.0));
                            // The walsender pings before it waits for WAL
                            // (WalSndWaitForWal): it has sent everything up
                            // to `wal_end`. At or past the last transaction,
                            // nothing more is on its way; open groups commit
                            // now instead of waiting out group_wait. While it
                            // works through a backlog it does not ping, and
                            // groups grow. (XLogData's wal_end is no such
                            // signal: a logical walsender sets it to the
                            // message's own position.)
                            if txn.is_none() && Lsn(wal_end.0) >= dispatched_end {
                                for target in std::mem::take(&mut open_groups) {
                                    send(&targets[target], Command::CaughtUp).await?;
                                }
                            }
                        }
                        ReplicationEvent::Message { transactional: true, prefix, content, .. } if prefix == shardline_ddl::capture::ROWS_PREFIX => {
                            let Some(t) = txn.as_mut() else { continue };
                            let Some(row) = schema.replayed_row(&content)? else { continue };
                            if let Some(sink) = &jsonl {
                                report.changes += 1;
                                sink.change(&t.info, row.tables.get(row.relation)?, &row.message)
                                    .map_err(|e| CdcError::Sink(e.to_string()))?;
                                continue;
                            }
                            let known = Known { routes: &routes, source: &topology.source, client: &source, copied_at: &copied_at, skip_origin: &options.skip_origin };
                            let change = RowChange { message: &row.message, relation: row.relation, replayed: Some(row.part) };
                            row_change(change, row.tables, t, &known, &targets, &mut read_models, &mut deltas, report).await?;
                        }
                        ReplicationEvent::Message { .. } => {}
                        ReplicationEvent::StoppedAt { .. } => return Ok(()),
                    }
                }
                _ = heartbeat.tick() => {
                    beat(&source, options).await.map_err(|e| query_error(&topology.source, e))?;
                    if let Some(s) = &mut sequences {
                        if let Err(e) = s.sync(&source, &routes.targets).await {
                            tracing::warn!("targets' sequences not moved up to the source's this time: {e}");
                        }
                    }
                }
                _ = publish.tick() => {
                    publish_metrics(metrics, &mut confirmations, &applied, source_seen, report);
                    for (i, t) in targets.iter().enumerate() {
                        metrics.divergences(i, t.tally.divergences.load(std::sync::atomic::Ordering::Relaxed));
                        let commits = t.tally.commits.swap(0, std::sync::atomic::Ordering::Relaxed);
                        metrics.commits(i, commits);
                        report.target_commits += commits;
                    }
                }
                _ = refresh.tick() => {
                    report.refreshed(read_models.refresh(&topology.source).await?);
                }
            }
        }
    }
    .await;

    // Close the queues: appliers commit complete groups, roll back the rest.
    let tallies: Vec<_> = targets.iter().map(|t| t.tally.clone()).collect();
    drop(targets);
    let mut apply_error = None;
    for applier in appliers {
        match applier.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => apply_error = apply_error.or(Some(e)),
            Err(e) => {
                apply_error = apply_error.or(Some(ApplyError::Target {
                    target: "applier".into(),
                    cause: e.to_string(),
                    lost: false,
                }))
            }
        }
    }
    while let Ok((target, lsn)) = durable_rx.try_recv() {
        confirmations.durable(target, lsn);
    }
    stream.update_applied_lsn(pgwire_replication::Lsn(confirmations.confirmed().0));
    let _ = stream.shutdown().await;
    if outcome.is_err() || apply_error.is_some() {
        metrics.error();
    }
    if outcome.is_ok() && apply_error.is_none() {
        report.refreshed(read_models.refresh(&topology.source).await?);
    }
    report.divergences += tallies
        .iter()
        .map(|t| t.divergences.load(std::sync::atomic::Ordering::Relaxed))
        .sum::<u64>();
    for (i, t) in tallies.iter().enumerate() {
        let commits = t.commits.swap(0, std::sync::atomic::Ordering::Relaxed);
        metrics.commits(i, commits);
        report.target_commits += commits;
    }
    report.confirmed_lsn = confirmations.confirmed().to_string();
    // An applier's failure is the cause; the stream's error about that
    // applier having stopped is only its echo.
    if let Some(e) = apply_error {
        return Err(e.into());
    }
    outcome
}

/// Brings the metrics up to date: counters, positions, per-target lag and
/// the latencies of transactions completed since the last call.
fn publish_metrics(
    metrics: &crate::metrics::Metrics,
    confirmations: &mut Confirmations,
    applied: &[Lsn],
    source_seen: Lsn,
    report: &RunReport,
) {
    metrics.progress(report.changes, report.transactions);
    metrics.positions(confirmations.confirmed().0, source_seen.0);
    // Microseconds since 2000-01-01, PostgreSQL's epoch.
    let now = chrono::Utc::now().timestamp_micros() - 946_684_800_000_000;
    for (target, lsn) in applied.iter().enumerate() {
        let (bytes, seconds) = match confirmations.oldest_outstanding(target) {
            Some(committed) => (
                source_seen.0.saturating_sub(lsn.0),
                (now - committed).max(0) as f64 / 1e6,
            ),
            None => (0, 0.0),
        };
        metrics.target(target, lsn.0, bytes, seconds);
    }
    for seconds in confirmations.take_latencies() {
        metrics.applied(seconds);
    }
}

/// Writes one decoded message of a transaction to the JSON-lines sink.
fn emit(
    data: Bytes,
    txn: &mut Txn,
    tables: &mut Tables,
    routes: &Routes,
    schema: &mut crate::ddl::SchemaStream,
    sink: &crate::jsonl::JsonlSink,
    report: &mut RunReport,
) -> Result<(), CdcError> {
    let message = pgoutput::decode(data)?;
    if let Some(captured) = schema.log_row(&message)? {
        report.changes += 1;
        // The sink passes the change on; the tables' next descriptions
        // follow it.
        for t in captured.touched_tables() {
            tables.expect_change(&t);
        }
        schema.expect_all(&captured, tables, routes)?;
        return sink
            .ddl(&txn.info, &captured)
            .map_err(|e| CdcError::Sink(e.to_string()));
    }
    let relations = match &message {
        LogicalMessage::Relation(r) if schema.describe(r) => return Ok(()),
        LogicalMessage::Relation(r) => return Ok(tables.describe(r.clone(), routes)?),
        LogicalMessage::Insert { relation, .. }
        | LogicalMessage::Update { relation, .. }
        | LogicalMessage::Delete { relation, .. } => {
            vec![*relation]
        }
        LogicalMessage::Truncate { relations, .. } => relations.clone(),
        _ => return Ok(()),
    };
    for id in relations.into_iter().filter(|id| !schema.is_log(*id)) {
        report.changes += 1;
        sink.change(&txn.info, tables.get(id)?, &message)
            .map_err(|e| CdcError::Sink(e.to_string()))?;
    }
    Ok(())
}

/// Plans one decoded message of a transaction and queues its statements.
async fn handle(
    data: Bytes,
    txn: &mut Txn,
    tables: &mut Tables,
    known: &Known<'_>,
    targets: &[Target],
    upkeep: &mut Upkeep<'_>,
    report: &mut RunReport,
) -> Result<(), CdcError> {
    let message = pgoutput::decode(data)?;
    // An echo's rows are already on the shards, but the read models have
    // only the monolith's stream to learn of them: they are kept, the rows
    // are not applied.
    if let LogicalMessage::Origin { name, .. } = &message {
        if name.starts_with(known.skip_origin) {
            txn.echo = true;
            return Ok(());
        }
    }
    let Known {
        routes, copied_at, ..
    } = *known;
    let commit_lsn = txn.info.commit_lsn;
    let wanted = |target: usize| commit_lsn > targets[target].recorded;
    let already_copied =
        |tables: &Tables, relation: u32| copied_since(copied_at, tables, relation, commit_lsn);
    if let Some(captured) = upkeep.schema.log_row(&message)? {
        report.changes += 1;
        let copied_after = |table: &str| copied_at.get(table).is_some_and(|lsn| commit_lsn <= *lsn);
        let at = crate::ddl::Context {
            routes,
            source: known.client,
            wanted: &wanted,
            copied_after: &copied_after,
        };
        let ddl = upkeep
            .schema
            .meet(&captured, at, tables, upkeep.refresher)
            .await?;
        for (target, d) in ddl {
            txn.touched.insert(target);
            send(&targets[target], Command::Ddl(Box::new(d))).await?;
        }
        return Ok(());
    }
    match &message {
        LogicalMessage::Relation(r) if upkeep.schema.describe(r) => {}
        LogicalMessage::Relation(r) => {
            tables.describe(r.clone(), routes)?;
            let name = shardline_topology::TableName::new(&r.namespace, &r.name).to_string();
            upkeep.refresher.relation_changed(&name);
            for m in upkeep.deltas.iter_mut().filter(|m| m.from == name) {
                m.relation_changed();
            }
        }
        LogicalMessage::Update { relation, .. } | LogicalMessage::Delete { relation, .. }
            if upkeep.schema.is_log(*relation) => {}
        LogicalMessage::Insert { relation, .. }
        | LogicalMessage::Update { relation, .. }
        | LogicalMessage::Delete { relation, .. } => {
            let change = RowChange {
                message: &message,
                relation: *relation,
                replayed: None,
            };
            row_change(
                change,
                tables,
                txn,
                known,
                targets,
                upkeep.refresher,
                upkeep.deltas,
                report,
            )
            .await?;
        }
        LogicalMessage::Truncate { relations, .. } => {
            for id in relations.iter().filter(|id| !upkeep.schema.is_log(**id)) {
                let name = tables.get(*id)?.name().to_string();
                upkeep.refresher.touch(&name);
                for m in upkeep.deltas.iter_mut().filter(|m| m.from == name) {
                    let copied = copied_at
                        .get(&format!("public.{}", m.name))
                        .is_some_and(|lsn| commit_lsn <= *lsn);
                    if !copied && wanted(m.target) {
                        txn.touched.insert(m.target);
                        m.take_rows();
                        send(&targets[m.target], Command::ResetModel(m.spec.clone())).await?;
                    }
                }
                if txn.echo || already_copied(tables, *id) {
                    continue;
                }
                let table = tables.get(*id)?;
                for target in table.route.targets() {
                    if wanted(target) {
                        txn.touched.insert(target);
                        send(
                            &targets[target],
                            Command::Exec(format!("TRUNCATE {}", table.qualified)),
                        )
                        .await?;
                    }
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// A row change to apply: one of the stream's, or a row of a partition a
/// schema change attached or detached (`replayed`: which of its changes).
struct RowChange<'a> {
    message: &'a LogicalMessage,
    relation: u32,
    replayed: Option<usize>,
}

/// Plans one insert, update or delete of a listed table and queues it
/// for its targets and read models.
#[allow(clippy::too_many_arguments)]
async fn row_change(
    change: RowChange<'_>,
    tables: &Tables,
    txn: &mut Txn,
    known: &Known<'_>,
    targets: &[Target],
    refresher: &mut crate::readmodel::Refresher,
    deltas: &mut [crate::delta::DeltaModel],
    report: &mut RunReport,
) -> Result<(), CdcError> {
    let RowChange {
        message,
        relation,
        replayed,
    } = change;
    let Known {
        source, copied_at, ..
    } = *known;
    let commit_lsn = txn.info.commit_lsn;
    let wanted = |target: usize| commit_lsn > targets[target].recorded;
    let already_copied =
        |tables: &Tables, relation: u32| copied_since(copied_at, tables, relation, commit_lsn);
    report.changes += 1;
    let table = tables.get(relation)?;
    refresher.touch_row(table.name(), &table.relation, message);
    for m in deltas.iter_mut().filter(|m| m.from == table.name()) {
        let copied = copied_at
            .get(&format!("public.{}", m.name))
            .is_some_and(|lsn| commit_lsn <= *lsn);
        if copied || !wanted(m.target) {
            continue;
        }
        if m.record(&table.relation, message) == crate::delta::Recorded::Incomplete {
            return Err(CdcError::IncompleteChange {
                read_model: m.name.clone(),
                table: table.name().to_string(),
            });
        }
        if m.pending() >= crate::delta::MAX_PENDING_ROWS {
            flush_delta(m, txn, targets).await?;
        }
    }
    if txn.echo {
        return Ok(());
    }
    if already_copied(tables, relation) {
        report.skipped += 1;
        return Ok(());
    }
    for plan in tables.plan_rows(message)? {
        match plan {
            RowPlan::Row { target, op } => {
                if wanted(target) {
                    txn.touched.insert(target);
                    let command = match replayed {
                        Some(part) => Command::ReplayRow { part, op },
                        None => Command::Row(op),
                    };
                    send(&targets[target], command).await?;
                } else {
                    report.skipped += 1;
                }
            }
            RowPlan::Move {
                from,
                to,
                table,
                columns,
                values,
                key,
                unique,
            } => {
                let filled = fill_unchanged(
                    &targets[from],
                    wanted(from),
                    source,
                    &table,
                    &columns,
                    values,
                    &key,
                )
                .await?;
                let key_ref: Vec<(&str, sql::Value)> = key
                    .iter()
                    .map(|(c, v)| (c.as_str(), v.as_deref()))
                    .collect();
                if wanted(from) {
                    txn.touched.insert(from);
                    let sql = if unique {
                        sql::delete(&table, &key_ref)
                    } else {
                        sql::delete_one(&table, &key_ref)
                    };
                    let what = crate::divergence::Divergence {
                        relation: table.clone(),
                        operation: "move",
                        key: crate::divergence::render_key(key_ref.iter().copied()),
                    };
                    send(&targets[from], Command::ExecOne { sql, what }).await?;
                }
                if let (true, Some(row)) = (wanted(to), filled) {
                    let cols: Vec<&str> = columns.iter().map(String::as_str).collect();
                    txn.touched.insert(to);
                    let insert =
                        sql::insert(&table, &cols, [row.iter().map(|v| v.as_deref()).collect()]);
                    send(&targets[to], Command::Exec(insert)).await?;
                }
            }
        }
    }
    Ok(())
}

/// Whether backfill copied `relation`'s table from a later snapshot than
/// the slot's start (a resumed job): it already holds the changes of a
/// transaction committed at `commit_lsn`.
fn copied_since(
    copied_at: &HashMap<String, Lsn>,
    tables: &Tables,
    relation: u32,
    commit_lsn: Lsn,
) -> bool {
    tables
        .get(relation)
        .ok()
        .and_then(|t| copied_at.get(t.name()))
        .is_some_and(|lsn| commit_lsn <= *lsn)
}

/// What the stream's changes are placed with.
#[derive(Clone, Copy)]
struct Known<'a> {
    routes: &'a Routes,
    source: &'a ConnString,
    /// The coordinator's own connection to the source.
    client: &'a tokio_postgres::Client,
    /// Where backfill copied each table and read model (see `source::backfill_points`).
    copied_at: &'a HashMap<String, Lsn>,
    skip_origin: &'a str,
}

/// What keeps read models current while the stream is applied.
struct Upkeep<'a> {
    refresher: &'a mut crate::readmodel::Refresher,
    deltas: &'a mut Vec<crate::delta::DeltaModel>,
    schema: &'a mut crate::ddl::SchemaStream,
}

/// Sends one read model's buffered adjustments to its database's applier,
/// inside the open source transaction there (it nets them with the rest of
/// its commit group).
async fn flush_delta(
    model: &mut crate::delta::DeltaModel,
    txn: &mut Txn,
    targets: &[Target],
) -> Result<(), CdcError> {
    if model.pending() > 0 {
        txn.touched.insert(model.target);
        let rows = model.take_rows();
        let spec = model.spec.clone();
        send(&targets[model.target], Command::Delta { spec, rows }).await?;
    }
    Ok(())
}

/// Sends every read model's buffered adjustments: the transaction commits.
async fn flush_deltas(
    deltas: &mut [crate::delta::DeltaModel],
    txn: &mut Txn,
    targets: &[Target],
) -> Result<(), CdcError> {
    for m in deltas {
        flush_delta(m, txn, targets).await?;
    }
    Ok(())
}

/// The full new row of a moved row. Values the source did not send (unchanged
/// TOAST) are read from the row on the old shard inside its open transaction;
/// if the old shard no longer has it (it applied this transaction before a
/// crash while the new shard did not), from the source by the row's new key;
/// any later change of the row follows in the stream.
/// `None` when the row exists nowhere any more: a later delete removes it.
async fn fill_unchanged(
    from: &Target,
    from_open: bool,
    source: &ConnString,
    table: &str,
    columns: &[String],
    values: Vec<Option<Option<Vec<u8>>>>,
    key: &[(String, Option<Vec<u8>>)],
) -> Result<Option<Vec<Option<Vec<u8>>>>, CdcError> {
    let missing: Vec<usize> = values
        .iter()
        .enumerate()
        .filter(|(_, v)| v.is_none())
        .map(|(i, _)| i)
        .collect();
    if missing.is_empty() {
        return Ok(Some(values.into_iter().map(|v| v.flatten()).collect()));
    }
    let select: Vec<String> = missing
        .iter()
        .map(|&i| format!("{}::text", shardline_topology::quote_ident(&columns[i])))
        .collect();
    let key_ref: Vec<(&str, sql::Value)> = key
        .iter()
        .map(|(c, v)| (c.as_str(), v.as_deref()))
        .collect();
    // LIMIT 1: without a unique key, identical rows share every value.
    let fetch = sql::delete(table, &key_ref).replacen(
        "DELETE FROM",
        &format!("SELECT {} FROM", select.join(", ")),
        1,
    ) + " LIMIT 1";
    let mut found = None;
    if from_open {
        let (reply, answer) = oneshot::channel();
        send(
            from,
            Command::Fetch {
                sql: fetch.clone(),
                reply,
            },
        )
        .await?;
        found = answer
            .await
            .map_err(|_| CdcError::Stream(format!("applier for {} stopped", from.name)))??;
    }
    if found.is_none() {
        // On the source the row has its new key (the move already happened
        // there): look it up by the key values of the new row image.
        let new_key: Vec<(&str, sql::Value)> = key
            .iter()
            .map(|(c, _)| {
                let value = columns
                    .iter()
                    .position(|name| name == c)
                    .and_then(|i| values[i].as_ref())
                    .and_then(|v| v.as_deref());
                (c.as_str(), value)
            })
            .collect();
        let fetch_new = sql::delete(table, &new_key).replacen(
            "DELETE FROM",
            &format!("SELECT {} FROM", select.join(", ")),
            1,
        ) + " LIMIT 1";
        let client = sql::connect(source).await?;
        let row = client
            .query_opt(&fetch_new, &[])
            .await
            .map_err(|e| query_error(source, e))?;
        found = row.map(|r| {
            (0..r.len())
                .map(|i| r.get::<_, Option<String>>(i))
                .collect()
        });
    }
    let Some(found) = found else {
        tracing::warn!(%table, "a moved row exists neither on its old shard nor on the source; a later delete in the stream removes it");
        return Ok(None);
    };
    let mut fetched = found.into_iter();
    Ok(Some(
        values
            .into_iter()
            .map(|v| match v {
                Some(value) => value,
                None => fetched.next().flatten().map(String::into_bytes),
            })
            .collect(),
    ))
}

async fn send(target: &Target, command: Command) -> Result<(), CdcError> {
    target.queue.send(command).await.map_err(|_| {
        CdcError::Stream(format!(
            "the applier for {} stopped; see its error",
            target.name
        ))
    })
}

async fn beat(
    source: &tokio_postgres::Client,
    options: &RunOptions,
) -> Result<(), tokio_postgres::Error> {
    source
        .execute(
            "SELECT pg_logical_emit_message(false, $1, now()::text)",
            &[&HEARTBEAT_PREFIX],
        )
        .await?;
    let row = source
        .query_opt(
            "SELECT (pg_current_wal_lsn() - restart_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1",
            &[&options.slot],
        )
        .await?;
    if let Some(retained) = row.and_then(|r| r.get::<_, Option<i64>>(0)) {
        if retained as u64 > options.max_retained_wal {
            tracing::warn!(slot = %options.slot, retained_bytes = retained, "the slot holds back more WAL than the threshold; is a target slow or down?");
        }
    }
    Ok(())
}

async fn replication_config(
    source: &ConnString,
    options: &RunOptions,
    start: Lsn,
) -> Result<ReplicationConfig, CdcError> {
    Ok(source
        .replication(&options.slot, options.publication.clone())
        .await?
        .with_start_lsn(pgwire_replication::Lsn(start.0))
        // The confirmed position is what a cutover waits for (the switch
        // pause), so it reaches the server within 100 ms, not 1 s.
        .with_status_interval(STATUS_INTERVAL)
        .with_wakeup_interval(Duration::from_secs(1))
        .with_options(STREAM_OPTIONS)
        .with_application_name("shardline-cdc"))
}

fn query_error(conn: &ConnString, e: tokio_postgres::Error) -> CdcError {
    CdcError::query(conn, &e)
}

impl CdcError {
    /// A query on `target` failed with `e`.
    pub fn query(target: &impl std::fmt::Display, e: &tokio_postgres::Error) -> Self {
        Self::Query {
            target: target.to_string(),
            cause: shardline_topology::describe_pg_error(e),
            lost: shardline_topology::pgerror::is_connection_lost(e),
        }
    }
}
