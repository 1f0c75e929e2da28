//! The extended query protocol: messages are collected until Sync (or
//! Flush), then the batch is routed by its Bind values and sent to one
//! database, or answered by the router when it only holds transaction
//! control and `SET shardline.merchant_id`.
//!
//! Client statements are kept by the session and prepared on whichever
//! backend runs them ([`super::prepared`]).

use std::collections::VecDeque;

use bytes::BytesMut;

use super::prepared::{rewritten_name, Outgoing, Rewrite, Statement};
use super::scatter::ScatterRead;
use super::{relay_frame, Db, Fatal, Session, Txn};
use crate::backend::BackendError;
use crate::message::{self as msg, Frame};
use crate::{Control, Format, Kind, Limit, MergeShape, Param, Target};

impl Session {
    // The extended protocol.

    /// Handles the messages received since the last Sync (`sync`) or Flush.
    pub(super) async fn extended(&mut self, sync: bool) -> Result<(), Fatal> {
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        if self.skip_until_sync {
            self.skip_until_sync = !sync;
            if sync {
                self.close_exchange().await;
                self.ready();
            }
            return Ok(());
        }
        if self.admin_batch(&batch, sync) {
            return Ok(());
        }
        if let Err((code, message, hint)) = self.cutover_admit(&batch).await {
            self.reject(code, &message, hint.as_deref());
            if sync {
                self.ready();
            } else {
                self.skip_until_sync = true;
            }
            return Ok(());
        }
        match self.plan(&batch) {
            Err((code, message, hint)) => {
                self.reject(code, &message, hint.as_deref());
                if sync {
                    self.ready();
                } else {
                    self.skip_until_sync = true;
                }
            }
            Ok(Plan::Local(effects)) => self.answer_locally(&batch, effects, sync),
            Ok(Plan::Forward(db, bound)) => self.forward(db, &batch, sync, bound).await,
            Ok(Plan::Defer(db, texts)) if sync => self.defer_settings(db, &batch, texts).await,
            Ok(Plan::Defer(db, _)) => self.forward(db, &batch, sync, false).await,
            Ok(Plan::Scatter(s)) => self.scatter_extended(&batch, s, sync).await,
        }
        Ok(())
    }

    /// Decides where a batch goes, updating the client's statements.
    fn plan(&mut self, batch: &[Frame]) -> Result<Plan, (&'static str, String, Option<String>)> {
        let mut target: Option<Db> = None;
        let mut local = true;
        let mut effects = Vec::new();
        let mut homes: Vec<Db> = Vec::new();
        let mut last_bind_local: Option<bool> = None;
        let mut scatter: Option<Scatter> = None;
        let mut execute_limited = false;
        let mut settings = Vec::new();
        let mut setting_texts = Vec::new();
        let mut only_settings = true;
        let mut pins = Vec::new();
        let failed = matches!(self.txn, Txn::Failed(_));
        let shared = self.shared.clone();
        let router = &shared.router;
        for f in batch {
            match f.tag {
                b'P' => {
                    let p =
                        msg::parse_parse(f.body()).map_err(|e| ("08P01", e.to_string(), None))?;
                    match router.home(&p.sql) {
                        Ok(Some(c)) => homes.push((c, 0)),
                        Ok(None) => {}
                        Err(e) => {
                            return Err((e.sqlstate(), e.to_string(), Some(e.hint().to_string())))
                        }
                    }
                    let name = p.name.clone();
                    self.register(name, Statement::new(p, f.raw.clone()))?;
                }
                b'B' => {
                    let bind = msg::parse_bind(f).map_err(|e| ("08P01", e.to_string(), None))?;
                    let st = self.statements.get(&bind.statement).ok_or_else(|| {
                        (
                            "26000",
                            format!("prepared statement \"{}\" does not exist", bind.statement),
                            None,
                        )
                    })?;
                    let params: Vec<Param<'_>> = bind
                        .values
                        .iter()
                        .enumerate()
                        .map(|(i, v)| Param {
                            value: v.as_deref(),
                            format: if bind.format(i) == 1 {
                                Format::Binary
                            } else {
                                Format::Text
                            },
                            type_oid: st.types.get(i).copied().unwrap_or(0),
                        })
                        .collect();
                    let route = router
                        .route(&st.sql, &params, self.key.as_ref())
                        .map_err(|e| (e.sqlstate(), e.to_string(), Some(e.hint().to_string())))?;
                    let route = self.cutover_place(route, &st.sql, &params)?;
                    if let Some(p) = route.pin {
                        pins.push(p);
                    }
                    let is_local = route.kinds.len() == 1
                        && matches!(
                            (&route.kinds[0], &self.txn),
                            (Kind::SetKey(_), _)
                                | (Kind::Control(Control::Begin), Txn::Idle)
                                | (
                                    Kind::Control(Control::Commit | Control::Rollback),
                                    Txn::Pending(_) | Txn::Failed(_),
                                )
                        );
                    if failed && !is_local {
                        return Err((
                            "25P02",
                            "current transaction is aborted, commands ignored until end of transaction block".into(),
                            None,
                        ));
                    }
                    last_bind_local = Some(is_local);
                    if is_local {
                        effects.push(route.kinds[0].clone());
                        continue;
                    }
                    local = false;
                    settings.extend(route.kinds.iter().cloned());
                    if route.kinds.iter().all(Kind::is_setting) {
                        setting_texts.push(st.sql.clone());
                    } else {
                        only_settings = false;
                    }
                    let dbs = self.target_dbs(&route.target);
                    let single = matches!(
                        route.target,
                        Target::Any
                            | Target::Database { .. }
                            | Target::Shard { .. }
                            | Target::AnyShard { .. }
                    );
                    if !single {
                        let Target::Shards {
                            merge: Some(shape), ..
                        } = route.target
                        else {
                            return Err((
                                "0A000",
                                format!(
                                    "the statement writes on {} databases; the router runs such writes through the simple protocol only",
                                    dbs.len()
                                ),
                                Some("add the shard key to the statement, or send it as a simple query".into()),
                            ));
                        };
                        if self.txn != Txn::Idle {
                            return Err((
                                "0A000",
                                format!("the statement needs {} databases, but a transaction stays on one; run it outside the transaction", dbs.len()),
                                Some("a transaction is pinned to the shard of its first statement".into()),
                            ));
                        }
                        if scatter.is_some() || target.is_some() {
                            return Err((
                                "0A000",
                                "a SELECT on several shards must be the only bound statement before its Sync".into(),
                                Some("Sync after the statement".into()),
                            ));
                        }
                        let limit = match &shape {
                            MergeShape::Rows {
                                limit: Some(Limit::Count(n)),
                                ..
                            } => Some(*n),
                            MergeShape::Rows {
                                limit: Some(Limit::Param(i)),
                                ..
                            } => bind_limit(&bind, *i),
                            _ => None,
                        };
                        scatter = Some(Scatter {
                            dbs,
                            shape,
                            limit,
                            types: st.types.clone(),
                        });
                        continue;
                    }
                    if matches!(route.target, Target::Any) {
                        continue;
                    }
                    let db = dbs[0];
                    if let Txn::Pinned(p) = self.txn {
                        if p != db {
                            return Err((
                                "0A000",
                                format!(
                                    "this transaction runs on {}; the statement needs {}",
                                    self.db_name(p),
                                    self.db_name(db)
                                ),
                                Some("a transaction stays on one shard: commit it, then run the statement".into()),
                            ));
                        }
                    }
                    if scatter.is_some() {
                        return Err((
                            "0A000",
                            "a SELECT on several shards must be the only bound statement before its Sync".into(),
                            Some("Sync after the statement".into()),
                        ));
                    }
                    match target {
                        Some(t) if t != db => {
                            return Err((
                                "0A000",
                                format!(
                                    "statements before one Sync go to {} and {}; the router sends a pipeline to one database",
                                    self.db_name(t),
                                    self.db_name(db)
                                ),
                                Some("Sync between statements for different merchants".into()),
                            ))
                        }
                        _ => target = Some(db),
                    }
                }
                b'C' => {
                    local = false;
                    if let Ok((b'S', name)) = msg::parse_target(f.body()) {
                        self.forget(&name);
                    }
                }
                b'E' if last_bind_local != Some(true) => {
                    local = false;
                    let mut b = f.body();
                    let _ = msg::cstr(&mut b);
                    execute_limited |= b != [0, 0, 0, 0];
                }
                b'D' => {
                    if let Ok((b'P', _)) = msg::parse_target(f.body()) {
                        if last_bind_local != Some(true) {
                            local = false;
                        }
                    }
                    if let Ok((b'S', name)) = msg::parse_target(f.body()) {
                        if !self.statements.contains_key(&name) {
                            return Err((
                                "26000",
                                format!("prepared statement \"{name}\" does not exist"),
                                None,
                            ));
                        }
                        let is_control = self
                            .statements
                            .get(&name)
                            .map(|s| router.route(&s.sql, &[], None))
                            .is_some_and(|r| {
                                matches!(r, Ok(r) if r.kinds.len() == 1 && matches!(r.kinds[0], Kind::Control(_) | Kind::SetKey(_)))
                            });
                        if !is_control {
                            local = false;
                        }
                    }
                }
                _ => {}
            }
        }
        // Under transaction pooling the backend is kept from here to the
        // end of the session.
        for p in pins {
            self.pin(p);
        }
        // An exchange the client left open with Flush continues where it is.
        let open = self.open_exchange();
        if let (Some(o), Some(t)) = (open, target) {
            if o != t {
                return Err((
                    "0A000",
                    format!(
                        "statements before one Sync go to {} and {}; the router sends a pipeline to one database",
                        self.db_name(o),
                        self.db_name(t)
                    ),
                    Some("Sync between statements for different merchants".into()),
                ));
            }
        }
        if local {
            return Ok(match open {
                Some(db) if effects.is_empty() => Plan::Forward(db, false),
                _ => Plan::Local(effects),
            });
        }
        if let Some(scatter) = scatter {
            if execute_limited {
                return Err((
                    "0A000",
                    "a SELECT on several shards is executed whole; Execute with a row limit is not merged".into(),
                    Some("fetch all rows (row limit 0), or add the shard key to the statement".into()),
                ));
            }
            return Ok(Plan::Scatter(scatter));
        }
        let db = target
            .or(open)
            .or(match self.txn {
                Txn::Pinned(db) => Some(db),
                _ => None,
            })
            .or(homes.first().copied())
            .unwrap_or_else(|| self.default_db());
        if only_settings && !setting_texts.is_empty() && matches!(self.txn, Txn::Pending(_)) {
            return Ok(Plan::Defer(db, setting_texts));
        }
        self.settings.note(&settings, db);
        Ok(Plan::Forward(db, target.is_some()))
    }

    /// Answers a batch of transaction-control and `SET shardline.…`
    /// statements without a backend.
    fn answer_locally(&mut self, batch: &[Frame], effects: Vec<Kind>, sync: bool) {
        let mut effects = effects.into_iter();
        for f in batch {
            match f.tag {
                b'P' => msg::empty(&mut self.out, b'1'),
                b'B' => msg::empty(&mut self.out, b'2'),
                b'C' => msg::empty(&mut self.out, b'3'),
                b'D' => {
                    if let Ok((b'S', _)) = msg::parse_target(f.body()) {
                        msg::parameter_description(&mut self.out, &[]);
                    }
                    msg::empty(&mut self.out, b'n');
                }
                b'E' => {
                    let tag = match effects.next() {
                        Some(Kind::SetKey(k)) => {
                            let set = k.is_some();
                            self.key = k;
                            if set {
                                "SET"
                            } else {
                                "RESET"
                            }
                        }
                        Some(Kind::Control(Control::Begin)) => {
                            self.txn = Txn::Pending("BEGIN".into());
                            "BEGIN"
                        }
                        Some(Kind::Control(c)) => {
                            let was_failed = matches!(self.txn, Txn::Failed(_));
                            if let Txn::Pending(begin) = &self.txn {
                                self.settings.end_pending(begin, c == Control::Commit);
                            }
                            // A failed transaction's database still holds
                            // it open: that connection is dropped.
                            if let Txn::Failed(Some(db)) = self.txn {
                                self.discard(db);
                            }
                            self.txn = Txn::Idle;
                            if c == Control::Commit && !was_failed {
                                "COMMIT"
                            } else {
                                "ROLLBACK"
                            }
                        }
                        _ => "SELECT 0",
                    };
                    msg::command_complete(&mut self.out, tag);
                }
                _ => {}
            }
        }
        if sync {
            self.ready();
        }
    }

    /// Sends a batch to one backend, preparing the client's statements it
    /// lacks, and relays the answers.
    async fn forward(&mut self, db: Db, batch: &[Frame], sync: bool, bound: bool) {
        let pending = match &self.txn {
            Txn::Pending(begin) if bound => Some(begin.clone()),
            _ => None,
        };
        if pending.is_some() {
            self.settings.began_on(db);
        }
        let keeps_state = !bound && matches!(self.txn, Txn::Pending(_));
        if let Err(e) = self.backend(db).await {
            self.backend_failed(db, &e);
            if sync {
                self.ready()
            } else {
                self.skip_until_sync = true
            }
            return;
        }
        let b = self.backends.get_mut(&db).expect("backend");
        let Outgoing {
            mut out,
            parses,
            closes,
            expected,
            parsed_here,
            ..
        } = Outgoing::build(b, batch, &self.statements, false, None);
        msg::empty(&mut out, if sync { b'S' } else { b'H' });
        let result = self
            .relay_batch(db, out, pending, sync, expected, parses, closes)
            .await;
        match result {
            Ok(Relayed { errored, parsed }) => {
                if errored {
                    if let Some(b) = self.backends.get_mut(&db) {
                        for name in &parsed_here {
                            b.prepared.remove(name);
                        }
                    }
                    // A Parse the server skipped or refused made nothing.
                    let failed: Vec<String> = (batch.iter())
                        .filter(|f| f.tag == b'P')
                        .filter_map(|f| msg::parse_parse(f.body()).ok())
                        .skip(parsed)
                        .map(|p| p.name)
                        .collect();
                    for name in failed {
                        self.forget(&name);
                    }
                }
                if sync {
                    let status = self.backends.get(&db).map(|b| b.status).unwrap_or(b'I');
                    if !keeps_state {
                        self.after(db, status);
                    }
                    self.ready();
                } else if errored {
                    self.skip_until_sync = false;
                }
            }
            Err(e) => {
                self.backend_failed(db, &e);
                if sync {
                    self.ready();
                } else {
                    self.skip_until_sync = true;
                }
            }
        }
    }

    /// The extended protocol's `Session::defer_setting`: the batch runs in
    /// a transaction on `db` that is rolled back, then the settings' texts
    /// join the pending transaction's opening.
    async fn defer_settings(&mut self, db: Db, batch: &[Frame], texts: Vec<String>) {
        let Txn::Pending(begin) = self.txn.clone() else {
            return;
        };
        self.txn = Txn::Pending("BEGIN".into());
        self.forward(db, batch, true, true).await;
        let valid = matches!(self.txn, Txn::Pinned(_));
        if let Some(b) = self.backends.get_mut(&db) {
            if b.run("ROLLBACK").await.is_err() {
                self.discard(db);
            }
        }
        self.txn = if valid {
            self.settings.deferred = true;
            Txn::Pending(format!("{begin};\n{}", texts.join(";\n")))
        } else {
            Txn::Failed(None)
        };
    }

    /// Runs one bound SELECT on several shards and merges the answers.
    /// Each backend gets the client's batch with the statements it lacks
    /// prepared, a Describe of the portal when the client sent none, and
    /// Sync; the client gets one answer, as from one database.
    async fn scatter_extended(&mut self, batch: &[Frame], s: Scatter, sync: bool) {
        if !sync {
            self.reject(
                "0A000",
                "a SELECT on several shards is run at Sync; Flush before it is not supported",
                Some("send Sync after Execute"),
            );
            self.skip_until_sync = true;
            return;
        }
        let describe = batch
            .iter()
            .any(|f| f.tag == b'D' && matches!(msg::parse_target(f.body()), Ok((b'P', _))));
        let (offset, shard_sql) = match &s.shape {
            MergeShape::Rows {
                offset, shard_sql, ..
            } => (*offset, shard_sql.as_deref()),
            MergeShape::Aggregate { shard_sql, .. } => (0, shard_sql.as_deref()),
        };
        let rewrite = shard_sql.map(|sql| Rewrite {
            sql,
            types: &s.types,
        });
        let mut frames = Vec::with_capacity(s.dbs.len());
        let mut queues = Vec::with_capacity(s.dbs.len());
        let mut parsed: Vec<String> = Vec::new();
        // Every backend first, so none records statements it is never sent.
        for db in &s.dbs {
            if let Err(e) = self.backend(*db).await {
                self.backend_failed(*db, &e);
                self.ready();
                return;
            }
        }
        for db in &s.dbs {
            let b = self.backends.get_mut(db).expect("backend");
            let o = Outgoing::build(b, batch, &self.statements, !describe, rewrite.as_ref());
            let mut out = o.out;
            msg::empty(&mut out, b'S');
            frames.push((*db, out.freeze()));
            queues.push((o.parses, o.closes));
            parsed = o.parsed_here;
        }
        let read = ScatterRead {
            shape: &s.shape,
            limit: s.limit,
            offset,
            extended: true,
            describe,
        };
        let ok = self.scatter_read_with(frames, read, queues).await;
        if !ok {
            // A statement the batch parsed may not exist on every shard.
            let rewritten = shard_sql.map(rewritten_name);
            for db in &s.dbs {
                if let Some(b) = self.backends.get_mut(db) {
                    for name in parsed.iter().chain(&rewritten) {
                        b.prepared.remove(name);
                    }
                }
            }
        }
        self.ready();
    }

    /// Sends a batch and relays its answers: to the ReadyForQuery after a
    /// Sync, or until each message is answered (or one fails) after a
    /// Flush.
    #[allow(clippy::too_many_arguments)]
    async fn relay_batch(
        &mut self,
        db: Db,
        out: BytesMut,
        begin: Option<String>,
        sync: bool,
        expected: usize,
        mut parses: VecDeque<bool>,
        mut closes: VecDeque<bool>,
    ) -> Result<Relayed, BackendError> {
        let cap = self.shared.limits.max_client_buffer_bytes;
        let b = self.backends.get_mut(&db).expect("backend");
        if let Some(begin) = begin {
            b.run(&begin).await?;
            self.txn = Txn::Pinned(db);
        }
        b.send(&out).await?;
        let mut done = 0usize;
        let mut r = Relayed::default();
        loop {
            if !sync && (done >= expected || r.errored) {
                return Ok(r);
            }
            let got = super::recv_watching(b, &mut self.client, &mut self.inbuf, cap).await;
            if let Err(BackendError::ClientGone { .. }) = &got {
                self.gone = true;
            }
            let f = got?;
            let relay = match f.tag {
                b'Z' => return Ok(r),
                b'1' => {
                    done += 1;
                    let client = parses.pop_front().unwrap_or(true);
                    r.parsed += usize::from(client);
                    client
                }
                b'3' => {
                    done += 1;
                    closes.pop_front().unwrap_or(true)
                }
                b'E' => {
                    r.errored = true;
                    true
                }
                b'2' | b'T' | b'n' | b'C' | b'I' | b's' => {
                    done += 1;
                    true
                }
                _ => true,
            };
            if relay {
                relay_frame(&mut self.client, &mut self.out, &f.raw).await?;
            }
        }
    }

    /// Ends an exchange the client opened with Flush and abandoned (its
    /// batch was refused): Sync on the backend, its answer read to the
    /// ReadyForQuery, which gives the transaction's state.
    pub(super) async fn close_exchange(&mut self) {
        let Some(db) = self.open_exchange() else {
            return;
        };
        let mut sync = BytesMut::new();
        msg::empty(&mut sync, b'S');
        let b = self.backends.get_mut(&db).expect("backend");
        let done = async {
            b.send(&sync).await?;
            while b.recv().await?.tag != b'Z' {}
            Ok::<u8, BackendError>(b.status)
        }
        .await;
        match done {
            Ok(status) => self.after(db, status),
            Err(e) => self.backend_failed(db, &e),
        }
    }
}

/// What relaying a batch saw.
#[derive(Default)]
struct Relayed {
    /// The backend answered one of the messages with an error.
    errored: bool,
    /// ParseCompletes of the client's own Parse messages: those after the
    /// first `parsed` did not create their statement.
    parsed: usize,
}

/// The limit a bind parameter gives: text or binary integer, NULL for none.
fn bind_limit(bind: &msg::Bind, i: usize) -> Option<u64> {
    let v = bind.values.get(i)?.as_deref()?;
    if bind.format(i) == 1 {
        match v.len() {
            8 => u64::try_from(i64::from_be_bytes(v.try_into().ok()?)).ok(),
            4 => u64::try_from(i32::from_be_bytes(v.try_into().ok()?)).ok(),
            _ => None,
        }
    } else {
        std::str::from_utf8(v).ok()?.trim().parse().ok()
    }
}

/// A SELECT bound to run on several shards and be merged.
struct Scatter {
    dbs: Vec<Db>,
    shape: MergeShape,
    limit: Option<u64>,
    /// The bound statement's declared parameter types.
    types: Vec<u32>,
}

enum Plan {
    /// Answered by the router: the effects of each bound statement.
    Local(Vec<Kind>),
    /// One SELECT on several shards, merged.
    Scatter(Scatter),
    /// Sent to one database; `true` when a bound statement chose it (so a
    /// pending BEGIN goes with it), `false` for preparing or describing.
    Forward(Db, bool),
    /// Only settings, in a transaction the router has not begun anywhere
    /// yet: their texts (see `Session::defer_setting`).
    Defer(Db, Vec<String>),
}
