//! One target database's applier: statements in, durable positions out.
//!
//! Each target has one task with one connection. It receives the statements
//! of source transactions in commit order and commits them together with the
//! source position they reach (`shardline.cdc_progress`), in one target
//! transaction: after a crash the target's recorded position says exactly
//! which source transactions it has, so none is lost or applied twice.
//! Source transactions are grouped into one target commit (group commit):
//! a group commits when it holds [`Grouping::changes`] row changes, when its
//! first complete transaction has waited [`Grouping::wait`], or when the
//! coordinator says the stream has caught up with the server
//! ([`Command::CaughtUp`]): a backlog commits in few large groups whoever
//! is faster, the walsender or the appliers, and a quiet stream's change
//! commits as soon as it is complete. Statements travel in batches of one
//! round trip ([`crate::script`]).
//!
//! Row changes arrive as data ([`crate::rows::RowOp`]): runs of inserts
//! into one table become one multi-row `INSERT` (or `COPY`, for long
//! runs), and updates or deletes of
//! rows still in such a run change the run instead of becoming statements
//! ([`crate::rows::Batcher`]). Read-model adjustments of every source
//! transaction in the group are netted and written as one `MERGE` per read
//! model right before the progress mark ([`crate::delta::Netted`]). Both
//! live only inside the open target transaction: what commits is exactly
//! the group's source transactions, under the position of the last one.
//!
//! A target of a context with an `apply_interval` streams its statements
//! into one open target transaction and commits it at most once per
//! interval: readers there see the source's changes in steps, and the slot
//! is not confirmed past them until they commit. Memory stays bounded,
//! since statements leave in batches as they come.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::SinkExt;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::Client;

use shardline_topology::OnDivergence;
use tokio_postgres::SimpleQueryMessage;

use crate::delta::{DeltaSpec, MergeGuard, Netted, MAX_NETTED_ROWS};
use crate::divergence::{self, Divergence};
use crate::lsn::Lsn;
use crate::rows::{BatchStats, Batcher, RowOp};
use crate::script::{Check, Part, Script};

/// The control table of CDC progress, created on every target.
pub const PROGRESS_DDL: &str = "CREATE SCHEMA IF NOT EXISTS shardline;
CREATE TABLE IF NOT EXISTS shardline.cdc_progress (
    slot_name  text PRIMARY KEY,
    commit_lsn pg_lsn NOT NULL,
    end_lsn    pg_lsn NOT NULL,
    -- when the source committed the last transaction applied here
    commit_time timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- Schema changes that cannot run in a transaction (CONCURRENTLY), recorded
-- with the progress mark and run right after it commits.
CREATE TABLE IF NOT EXISTS shardline.ddl_pending (
    slot_name   text NOT NULL,
    ddl_id      bigint NOT NULL,
    step        int NOT NULL,
    sql         text NOT NULL,
    guard       text,
    search_path text NOT NULL,
    index_name  text,
    PRIMARY KEY (slot_name, ddl_id, step)
);";

/// Serialises the creation of the progress table by streams sharing a
/// target.
const PROGRESS_DDL_LOCK: i64 = 0x7368_6c63_6463_0001;

/// Flush a batch once it holds this much SQL: one round trip carries a lot,
/// and the target parses it as one simple query.
const MAX_BATCH_BYTES: usize = 1 << 20;

/// When a target's group of source transactions commits (`[cdc]
/// group_wait` and `group_changes`). Each commit costs the target a flush,
/// a progress upsert and its statements' parse and plan, so a backlog
/// wants few large groups; a quiet stream wants each change committed at
/// once.
#[derive(Clone, Copy, Debug)]
pub struct Grouping {
    /// The longest the group's first complete source transaction waits.
    pub wait: std::time::Duration,
    /// Commit once the group holds this many changes.
    pub changes: usize,
}

impl From<&shardline_topology::CdcConfig> for Grouping {
    fn from(c: &shardline_topology::CdcConfig) -> Self {
        Self {
            wait: c.group_wait,
            changes: c.group_changes,
        }
    }
}

/// What the coordinator asks of an applier.
#[derive(Debug)]
pub enum Command {
    Exec(String),
    /// A statement that must change exactly one row (the delete half of a
    /// move between shards); see [`crate::divergence`].
    ExecOne {
        sql: String,
        what: Divergence,
    },
    /// One row change (batched with its neighbours).
    Row(RowOp),
    /// Delta rows of a read model on this target, from one source
    /// transaction (netted with the rest of the group).
    Delta {
        spec: Arc<DeltaSpec>,
        rows: Vec<(i8, crate::delta::DeltaRow)>,
    },
    /// The read model's source table was truncated: empty it, and drop its
    /// adjustments held so far.
    ResetModel(Arc<DeltaSpec>),
    /// Read one row inside the open transaction (for moves between shards).
    Fetch {
        sql: String,
        reply: oneshot::Sender<Result<Option<Vec<Option<String>>>, ApplyError>>,
    },
    /// A schema change, at its position in the source transaction.
    Ddl(Box<crate::ddl::TargetDdl>),
    /// A row of a partition the schema change before it attached or
    /// detached: applied where that change's rows apply
    /// ([`crate::ddl::TargetDdl::replays`]).
    ReplayRow {
        part: usize,
        op: RowOp,
    },
    /// The source transaction ending here is complete.
    Commit {
        commit_lsn: Lsn,
        end_lsn: Lsn,
        /// Microseconds since 2000-01-01, as the source stamped the commit.
        commit_time: i64,
    },
    /// The server reported that it has sent everything up to and past the
    /// last transaction: nothing more is on its way, so the open group
    /// commits now instead of waiting out [`Grouping::wait`]. Sent only
    /// between source transactions.
    CaughtUp,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    #[error("target {target}: {cause}")]
    Target {
        target: String,
        cause: String,
        /// The connection went away (worth a reconnect).
        lost: bool,
    },
    #[error("target {target}: {what}: the target diverged from the source before this change; nothing of its target transaction was committed")]
    Diverged { target: String, what: String },
    #[error("schema change {id} (`{statement}`) cannot be applied on {target}: {cause}")]
    Ddl {
        target: String,
        id: i64,
        statement: String,
        cause: String,
        fix: String,
    },
}

/// What an applier counts for the run's report, metrics and status.
#[derive(Debug, Default)]
pub struct Tally {
    /// Changes that found the target diverged (under `on_divergence =
    /// "count"`), committed.
    pub divergences: AtomicU64,
    /// Target transactions committed since the coordinator last took
    /// the count.
    pub commits: AtomicU64,
}

/// The advisory lock class of a slot's applier on a target (the key is
/// the slot name's hash).
const APPLIER_LOCK: i32 = 0x7368_6c61;

/// A target's recorded position for a slot: the commit LSN of the last
/// source transaction it holds (zero when it has none).
///
/// First this session takes the slot's applier lock on the target and
/// keeps it while it lives. A killed cdc's backend may still be running
/// its last group, and commit it after a new cdc read the position: the
/// new one would then apply that group a second time (read-model MERGEs
/// are not idempotent). The old backend holds the lock until it ends.
pub async fn recorded_position(client: &Client, slot: &str) -> Result<Lsn, tokio_postgres::Error> {
    let lock = "SELECT pg_try_advisory_lock($1, hashtext($2::text))";
    let free: bool = client
        .query_one(lock, &[&APPLIER_LOCK, &slot])
        .await?
        .get(0);
    if !free {
        tracing::warn!(
            slot,
            "an earlier cdc session still applies to this target; waiting up to 60 s for it to end"
        );
        client.batch_execute("SET lock_timeout = '60s'").await?;
        let waited = client
            .execute(
                "SELECT pg_advisory_lock($1, hashtext($2::text))",
                &[&APPLIER_LOCK, &slot],
            )
            .await;
        client.batch_execute("RESET lock_timeout").await?;
        waited?;
    }
    // Several streams may share a target (every shard's way back writes
    // to the monolith): concurrent CREATE … IF NOT EXISTS can still collide
    // in the catalog, so they take turns. One query string runs as one
    // transaction, which holds the lock to its end.
    client
        .batch_execute(&format!(
            "SELECT pg_advisory_xact_lock({PROGRESS_DDL_LOCK}); {PROGRESS_DDL} {}",
            crate::divergence::DDL
        ))
        .await?;
    let row = client
        .query_opt(
            "SELECT commit_lsn::text FROM shardline.cdc_progress WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    Ok(row
        .and_then(|r| r.get::<_, String>(0).parse().ok())
        .unwrap_or(Lsn::ZERO))
}

/// The replication origin an applier marks its target transactions with:
/// `shardline.forward.<slot>.<target>`. A stream from that target back to
/// the monolith (the cutover's way back) skips transactions carrying it,
/// since they are the monolith's own changes coming back. One origin per
/// target, because PostgreSQL lets one session at a time use an origin.
pub fn forward_origin(slot: &str, target: &str) -> String {
    origin_name(FORWARD_ORIGIN, slot, target)
}

/// The origin prefix of forward CDC (monolith → shards).
pub const FORWARD_ORIGIN: &str = "shardline.forward";

/// `<prefix>.<slot>.<target>`.
pub fn origin_name(prefix: &str, slot: &str, target: &str) -> String {
    format!("{prefix}.{slot}.{target}")
}

pub struct Applier {
    pub target: usize,
    pub name: String,
    pub client: Client,
    pub slot: String,
    /// The source's TimeZone: read-model group expressions such as
    /// `date_trunc('day', created_at)` evaluate here as they do there.
    pub time_zone: String,
    /// Commit at most this often (`None`: in groups, see [`Grouping`]).
    pub apply_interval: Option<std::time::Duration>,
    pub grouping: Grouping,
    /// The replication origin of the transactions committed here.
    pub origin: String,
    pub on_divergence: OnDivergence,
    pub tally: Arc<Tally>,
}

struct Pending {
    batch: Script,
    /// `COPY` statements prepared on this connection, by their text.
    copy_statements: HashMap<String, tokio_postgres::Statement>,
    /// When the open group's first source transaction completed.
    group_started: Option<tokio::time::Instant>,
    /// Changes in the open group.
    changes: usize,
    /// Target transactions committed, for the log.
    commits: u64,
    rows: Batcher,
    deltas: Vec<Netted>,
    in_transaction: bool,
    grouped: usize,
    last: Option<(Lsn, Lsn, i64)>,
    /// Statements of a source transaction whose commit has not arrived.
    partial: bool,
    /// Changes of the open target transaction that found the target
    /// diverged (counted, not stopped at).
    diverged: Vec<Divergence>,
    /// Read-model groups recorded as diverged by the open transaction's
    /// `MERGE`s (read back before it commits).
    model_diverged: u64,
    /// The open transaction wrote a read-model `MERGE`.
    merged: bool,
    /// The open group holds a schema change: it commits at the end of that
    /// source transaction (a new enum label is usable only after it).
    ends_group: bool,
    /// Schema changes wait in `shardline.ddl_pending` for the commit.
    pending_ddl: bool,
    /// The partition changes of the last schema change whose rows this
    /// target takes.
    replays: Vec<usize>,
}

impl Pending {
    fn begin(&mut self) {
        if !self.in_transaction {
            self.batch.statement("BEGIN");
            self.in_transaction = true;
        }
    }
}

impl Applier {
    /// Runs until the command channel closes. Every completed group is
    /// reported on `durable` as (target, end LSN); an open, unfinished
    /// source transaction is rolled back when the channel closes.
    pub async fn run(
        self,
        mut commands: mpsc::Receiver<Command>,
        durable: mpsc::UnboundedSender<(usize, Lsn)>,
    ) -> Result<(), ApplyError> {
        self.client
            .batch_execute(&format!(
                "SET standard_conforming_strings = on; SET synchronous_commit = on; SET TimeZone = '{}'",
                self.time_zone.replace('\'', "''")
            ))
            .await
            .map_err(|e| self.error(e))?;
        // As PostgreSQL's apply workers do: the source already checked
        // foreign keys and ran triggers; and a stream back from this target
        // tells these transactions from the application's by their origin.
        // `crate::privilege` checked the role may do both before streaming.
        self.client
            .batch_execute("SET session_replication_role = replica")
            .await
            .map_err(|e| self.error(e))?;
        let origin = &self.origin;
        self.client
            .execute(
                "SELECT pg_replication_origin_create($1::text)
                 WHERE NOT EXISTS (SELECT 1 FROM pg_replication_origin WHERE roname = $1::text)",
                &[&origin],
            )
            .await
            .map_err(|e| self.error(e))?;
        self.client
            .execute(
                "SELECT pg_replication_origin_session_setup($1::text)",
                &[&origin],
            )
            .await
            .map_err(|e| self.error(e))?;
        let mut p = Pending {
            batch: Script::new(),
            copy_statements: HashMap::new(),
            group_started: None,
            changes: 0,
            commits: 0,
            rows: Batcher::new(),
            deltas: Vec::new(),
            in_transaction: false,
            grouped: 0,
            last: None,
            partial: false,
            diverged: Vec::new(),
            model_diverged: 0,
            merged: false,
            ends_group: false,
            pending_ddl: false,
            replays: Vec::new(),
        };
        let guard = MergeGuard {
            slot: self.slot.clone(),
            stop: self.on_divergence == OnDivergence::Stop,
        };
        // Left by a run that stopped between a commit and its concurrent
        // schema changes.
        self.run_pending_ddl().await?;
        let mut last_commit = tokio::time::Instant::now();
        loop {
            // Complete transactions wait for the interval to end, or for
            // the group's wait to end (unless the stream catches up first).
            let deadline = match (self.apply_interval, p.group_started) {
                _ if p.grouped == 0 || p.partial => None,
                (Some(interval), _) => Some(last_commit + interval),
                (None, Some(started)) => Some(started + self.grouping.wait),
                (None, None) => None,
            };
            let command = match deadline {
                Some(deadline) => {
                    tokio::select! {
                        c = commands.recv() => c,
                        _ = tokio::time::sleep_until(deadline) => {
                            self.commit(&mut p, &durable, &guard).await?;
                            last_commit = tokio::time::Instant::now();
                            continue;
                        }
                    }
                }
                None => commands.recv().await,
            };
            let Some(command) = command else { break };
            match command {
                Command::Exec(sql) => {
                    p.begin();
                    p.changes += 1;
                    p.rows.flush(&mut p.batch);
                    p.batch.statement(&sql);
                    p.partial = true;
                    if p.batch.len() >= MAX_BATCH_BYTES {
                        self.send(&mut p).await?;
                    }
                }
                Command::ExecOne { sql, what } => {
                    p.begin();
                    p.changes += 1;
                    p.rows.flush(&mut p.batch);
                    p.batch.checked(&sql, Check::OneRow(what));
                    p.partial = true;
                    if p.batch.len() >= MAX_BATCH_BYTES {
                        self.send(&mut p).await?;
                    }
                }
                // A partition's row where that change's rows do not apply.
                Command::ReplayRow { part, .. } if !p.replays.contains(&part) => {}
                Command::Row(op) | Command::ReplayRow { op, .. } => {
                    p.begin();
                    p.changes += 1;
                    p.rows.push(op, &mut p.batch);
                    p.partial = true;
                    if p.batch.len() >= MAX_BATCH_BYTES {
                        self.send(&mut p).await?;
                    }
                }
                Command::Delta { spec, rows } => {
                    p.begin();
                    p.changes += rows.len();
                    p.partial = true;
                    let at = match p.deltas.iter().position(|n| Arc::ptr_eq(&n.spec, &spec)) {
                        Some(at) => at,
                        None => {
                            p.deltas.push(Netted::new(spec));
                            p.deltas.len() - 1
                        }
                    };
                    let netted = &mut p.deltas[at];
                    netted.add(rows);
                    if netted.len() >= MAX_NETTED_ROWS {
                        if let Some(sql) = netted.take_sql(&guard) {
                            p.batch.statement(&sql);
                            p.merged = true;
                        }
                        if p.batch.len() >= MAX_BATCH_BYTES {
                            self.send(&mut p).await?;
                        }
                    }
                }
                Command::ResetModel(spec) => {
                    p.begin();
                    p.partial = true;
                    for n in p.deltas.iter_mut().filter(|n| Arc::ptr_eq(&n.spec, &spec)) {
                        n.clear();
                    }
                    p.rows.flush(&mut p.batch);
                    p.batch.statement(&spec.delete_sql());
                }
                Command::Ddl(ddl) => {
                    p.begin();
                    p.partial = true;
                    p.ends_group |= ddl.ends_group;
                    p.rows.flush(&mut p.batch);
                    // What came before runs first, so an error is the
                    // schema change's own.
                    self.send(&mut p).await?;
                    p.replays = self.replays_here(&ddl).await?;
                    p.pending_ddl |= self.ddl(&ddl).await?;
                }
                Command::Fetch { sql, reply } => {
                    p.rows.flush(&mut p.batch);
                    self.send(&mut p).await?;
                    let row = self
                        .client
                        .query_opt(&sql, &[])
                        .await
                        .map_err(|e| self.error(e));
                    let row = row.map(|r| {
                        r.map(|r| {
                            (0..r.len())
                                .map(|i| r.get::<_, Option<String>>(i))
                                .collect()
                        })
                    });
                    let _ = reply.send(row);
                }
                Command::Commit {
                    commit_lsn,
                    end_lsn,
                    commit_time,
                } => {
                    p.begin();
                    p.last = Some((commit_lsn, end_lsn, commit_time));
                    p.grouped += 1;
                    p.partial = false;
                    let started = *p
                        .group_started
                        .get_or_insert_with(tokio::time::Instant::now);
                    // Never on whether the queue happens to be empty: that
                    // says only who is faster, the stream or this applier.
                    let due = match self.apply_interval {
                        _ if p.ends_group => true,
                        Some(interval) => last_commit.elapsed() >= interval,
                        None => {
                            started.elapsed() >= self.grouping.wait
                                || p.changes >= self.grouping.changes
                        }
                    };
                    if due {
                        self.commit(&mut p, &durable, &guard).await?;
                        last_commit = tokio::time::Instant::now();
                    }
                }
                Command::CaughtUp => {
                    if self.apply_interval.is_none() && p.grouped > 0 && !p.partial {
                        self.commit(&mut p, &durable, &guard).await?;
                        last_commit = tokio::time::Instant::now();
                    }
                }
            }
        }
        // The stream ended. A group holding only complete source
        // transactions commits; one that also holds part of an unfinished
        // transaction rolls back whole: nothing of it was reported durable,
        // so the slot sends it all again next time.
        if p.grouped > 0 && !p.partial {
            self.commit(&mut p, &durable, &guard).await?;
        }
        let BatchStats {
            inserts,
            copies,
            inserted_rows,
            folded,
            single,
        } = p.rows.stats;
        tracing::debug!(target = %self.name, commits = p.commits, inserts, copies, inserted_rows, folded, single, "row changes batched");
        if p.in_transaction {
            self.client
                .batch_execute("ROLLBACK")
                .await
                .map_err(|e| self.error(e))?;
        }
        Ok(())
    }

    async fn commit(
        &self,
        p: &mut Pending,
        durable: &mpsc::UnboundedSender<(usize, Lsn)>,
        guard: &MergeGuard,
    ) -> Result<(), ApplyError> {
        let Some((commit_lsn, end_lsn, commit_time)) = p.last else {
            return Ok(());
        };
        p.rows.flush(&mut p.batch);
        for n in &mut p.deltas {
            if let Some(sql) = n.take_sql(guard) {
                p.batch.statement(&sql);
                p.merged = true;
            }
        }
        if p.merged && self.on_divergence == OnDivergence::Count {
            p.batch
                .checked(divergence::MODEL_DIVERGENCES_SQL, Check::ModelDivergences);
        }
        // Row counts are known only once the statements ran: they must be
        // seen before the progress mark commits (under `stop` nothing of a
        // diverged group may commit).
        if p.batch.has_checks() {
            self.send(p).await?;
        }
        if !p.diverged.is_empty() {
            let record = divergence::record_sql(&self.slot, &commit_lsn.to_string(), &p.diverged);
            p.batch.statement(&record);
        }
        p.batch.statement(&format!(
            "INSERT INTO shardline.cdc_progress (slot_name, commit_lsn, end_lsn, commit_time)
             VALUES ('{slot}', '{commit_lsn}', '{end_lsn}', timestamptz '2000-01-01 00:00:00+00' + {commit_time} * interval '1 microsecond')
             ON CONFLICT (slot_name) DO UPDATE SET commit_lsn = excluded.commit_lsn, end_lsn = excluded.end_lsn,
                 commit_time = excluded.commit_time, updated_at = now()",
            slot = self.slot.replace('\'', "''"),
        ));
        p.batch.statement("COMMIT");
        self.send(p).await?;
        let found = p.diverged.len() as u64 + p.model_diverged;
        if found > 0 {
            self.tally.divergences.fetch_add(found, Ordering::Relaxed);
            tracing::warn!(target = %self.name, divergences = found, first = ?p.diverged.first().map(|d| d.to_string()), "changes found the target diverged; recorded in shardline.cdc_divergence");
        }
        p.diverged.clear();
        p.model_diverged = 0;
        p.merged = false;
        p.in_transaction = false;
        p.ends_group = false;
        if std::mem::take(&mut p.pending_ddl) {
            self.run_pending_ddl().await?;
        }
        p.grouped = 0;
        p.changes = 0;
        p.last = None;
        p.group_started = None;
        p.commits += 1;
        self.tally.commits.fetch_add(1, Ordering::Relaxed);
        let _ = durable.send((self.target, end_lsn));
        Ok(())
    }

    /// Runs what the batch holds, in order.
    async fn send(&self, p: &mut Pending) -> Result<(), ApplyError> {
        for part in p.batch.take() {
            match part {
                Part::Sql(sql) if sql.checks.is_empty() => self
                    .client
                    .batch_execute(&sql.text)
                    .await
                    .map_err(|e| self.error(e))?,
                Part::Sql(sql) => {
                    let messages = self
                        .client
                        .simple_query(&sql.text)
                        .await
                        .map_err(|e| self.error(e))?;
                    self.verify(sql, &messages, p)?;
                }
                Part::Copy { statement, data } => {
                    let prepared = match p.copy_statements.get(&statement) {
                        Some(s) => s.clone(),
                        None => {
                            let s = self
                                .client
                                .prepare(&statement)
                                .await
                                .map_err(|e| self.error(e))?;
                            p.copy_statements.insert(statement, s.clone());
                            s
                        }
                    };
                    let sink = self
                        .client
                        .copy_in::<_, Bytes>(&prepared)
                        .await
                        .map_err(|e| self.error(e))?;
                    futures_util::pin_mut!(sink);
                    sink.send(Bytes::from(data))
                        .await
                        .map_err(|e| self.error(e))?;
                    sink.finish().await.map_err(|e| self.error(e))?;
                }
            }
        }
        Ok(())
    }

    /// Compares each checked statement's result with what it expected.
    fn verify(
        &self,
        sql: crate::script::Sql,
        messages: &[SimpleQueryMessage],
        p: &mut Pending,
    ) -> Result<(), ApplyError> {
        let mut counts = Vec::with_capacity(sql.statements);
        let mut first_value: HashMap<usize, String> = HashMap::new();
        for m in messages {
            match m {
                SimpleQueryMessage::CommandComplete(n) => counts.push(*n),
                SimpleQueryMessage::Row(row) => {
                    if let Some(v) = row.get(0) {
                        first_value
                            .entry(counts.len())
                            .or_insert_with(|| v.to_string());
                    }
                }
                _ => {}
            }
        }
        for (i, check) in sql.checks {
            match check {
                Check::OneRow(what) => {
                    let Some(&n) = counts.get(i) else {
                        return Err(ApplyError::Target {
                            target: self.name.clone(),
                            cause: format!("statement {i} of a batch sent no result"),
                            lost: false,
                        });
                    };
                    if n == 1 {
                        continue;
                    }
                    if self.on_divergence == OnDivergence::Stop {
                        return Err(ApplyError::Diverged {
                            target: self.name.clone(),
                            what: what.to_string(),
                        });
                    }
                    p.diverged.push(what);
                }
                Check::ModelDivergences => {
                    p.model_diverged += first_value
                        .get(&i)
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0);
                }
            }
        }
        Ok(())
    }

    pub(crate) fn error(&self, e: tokio_postgres::Error) -> ApplyError {
        if shardline_topology::pgerror::sqlstate(&e) == Some(divergence::SQLSTATE) {
            let what = e
                .as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or_default();
            return ApplyError::Diverged {
                target: self.name.clone(),
                what,
            };
        }
        let cause = shardline_topology::describe_pg_error(&e);
        ApplyError::Target {
            target: self.name.clone(),
            cause,
            lost: shardline_topology::pgerror::is_connection_lost(&e),
        }
    }
}
