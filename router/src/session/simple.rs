//! The simple query protocol: one Query message, routed as a whole and
//! answered by one database or merged from several (see [`super::scatter`]).

use bytes::{Bytes, BytesMut};

use super::scatter::ScatterRead;
use super::{relay_frame, Db, Fatal, Session, Txn};
use crate::backend::BackendError;
use crate::message::{self as msg, Frame};
use crate::{Control, Kind, MergeShape, Target};

impl Session {
    pub(super) async fn simple(&mut self, frame: Frame) -> Result<(), Fatal> {
        let sql = msg::parse_query(&frame)?;
        if self.admin_simple(&sql) {
            return Ok(());
        }
        let route = self.shared.router.route(&sql, &[], self.key.as_ref());
        if let Txn::Failed(db) = self.txn.clone() {
            let ends = matches!(&route, Ok(r) if r.kinds.len() == 1
                && matches!(r.kinds[0], Kind::Control(Control::Commit | Control::Rollback)));
            if ends {
                let tag = self.end_failed(db).await;
                msg::command_complete(&mut self.out, tag);
            } else {
                msg::error_response(
                    &mut self.out,
                    "25P02",
                    "current transaction is aborted, commands ignored until end of transaction block",
                    None,
                );
            }
            self.ready();
            return Ok(());
        }
        let route = match route {
            Ok(r) => r,
            Err(e) => {
                self.reject(e.sqlstate(), &e.to_string(), Some(e.hint()));
                self.ready();
                return Ok(());
            }
        };
        if let Some(p) = route.pin {
            self.pin(p);
        }
        if route.kinds.len() == 1 {
            match (&route.kinds[0], &self.txn) {
                // Backends hold the client's statements under the router's
                // names: the client's own is forgotten here.
                (Kind::Deallocate(name), _) => {
                    if self.statements.contains_key(name) {
                        self.forget(name);
                        msg::command_complete(&mut self.out, "DEALLOCATE");
                    } else {
                        let m = format!("prepared statement \"{name}\" does not exist");
                        self.reject("26000", &m, None);
                    }
                    self.ready();
                    return Ok(());
                }
                (Kind::SetKey(k), _) => {
                    self.key.clone_from(k);
                    msg::command_complete(&mut self.out, if k.is_some() { "SET" } else { "RESET" });
                    self.ready();
                    return Ok(());
                }
                (Kind::Control(Control::Begin), Txn::Idle) => {
                    self.txn = Txn::Pending(sql);
                    msg::command_complete(&mut self.out, "BEGIN");
                    self.ready();
                    return Ok(());
                }
                (Kind::Control(c @ (Control::Commit | Control::Rollback)), Txn::Pending(begin)) => {
                    self.settings.end_pending(begin, *c == Control::Commit);
                    self.txn = Txn::Idle;
                    let tag = if *c == Control::Commit {
                        "COMMIT"
                    } else {
                        "ROLLBACK"
                    };
                    msg::command_complete(&mut self.out, tag);
                    self.ready();
                    return Ok(());
                }
                _ => {}
            }
        } else if let Some(Kind::SetKey(k)) = route
            .kinds
            .iter()
            .rev()
            .find(|k| matches!(k, Kind::SetKey(_)))
        {
            self.key.clone_from(k);
        }
        let route = match self.cutover_route(route, &sql, &[]).await {
            Ok(r) => r,
            Err((code, message, hint)) => {
                self.reject(code, &message, hint.as_deref());
                self.ready();
                return Ok(());
            }
        };
        let dbs = self.target_dbs(&route.target);
        if let [db] = dbs.as_slice() {
            if !matches!(
                route.target,
                Target::Broadcast { .. } | Target::Split { .. } | Target::Shards { .. }
            ) {
                let settings_only = |kinds: &[Kind]| kinds.iter().all(Kind::is_setting);
                let defer = match (&self.txn, route.kinds.as_slice()) {
                    (Txn::Pending(_), kinds) => settings_only(kinds),
                    (Txn::Idle, [Kind::Control(Control::Begin), rest @ ..]) => {
                        !rest.is_empty() && settings_only(rest)
                    }
                    _ => false,
                };
                if defer {
                    self.defer_setting(*db, &frame.raw, &sql).await;
                    self.ready();
                    return Ok(());
                }
                self.settings.note(&route.kinds, *db);
                self.single(*db, &frame.raw, matches!(route.target, Target::Any))
                    .await;
                self.ready();
                return Ok(());
            }
        }
        if self.txn != Txn::Idle {
            let m = format!(
                "the statement needs {} databases, but a transaction stays on one; run it outside the transaction",
                dbs.len()
            );
            self.reject(
                "0A000",
                &m,
                Some("a transaction is pinned to the shard of its first statement"),
            );
            self.ready();
            return Ok(());
        }
        if route.kinds.len() != 1 {
            self.reject(
                "0A000",
                "a query string with several statements cannot span shards",
                Some("send the statements one by one"),
            );
            self.ready();
            return Ok(());
        }
        match route.target {
            Target::Shards {
                merge: Some(shape), ..
            } => {
                let limit = match &shape {
                    MergeShape::Rows {
                        limit: Some(crate::Limit::Count(n)),
                        ..
                    } => Some(*n),
                    _ => None,
                };
                let (offset, shard_sql) = match &shape {
                    MergeShape::Rows {
                        offset, shard_sql, ..
                    } => (*offset, shard_sql),
                    MergeShape::Aggregate { shard_sql, .. } => (0, shard_sql),
                };
                let raw = match shard_sql {
                    Some(sql) => {
                        let mut q = BytesMut::new();
                        msg::query(&mut q, sql);
                        q.freeze()
                    }
                    None => frame.raw.clone(),
                };
                let frames = dbs.iter().map(|db| (*db, raw.clone())).collect();
                let read = ScatterRead {
                    shape: &shape,
                    limit,
                    offset,
                    extended: false,
                    describe: true,
                };
                self.scatter_read(frames, read).await;
            }
            Target::Split { parts, .. } => {
                let frames: Vec<(Db, Bytes)> = parts
                    .iter()
                    .zip(&dbs)
                    .map(|((_, sql), db)| {
                        let mut q = BytesMut::new();
                        msg::query(&mut q, sql);
                        (*db, q.freeze())
                    })
                    .collect();
                self.write_many(frames, true).await;
            }
            Target::Broadcast { .. } => {
                let frames = dbs.iter().map(|db| (*db, frame.raw.clone())).collect();
                self.write_many(frames, false).await;
            }
            _ => {
                let frames = dbs.iter().map(|db| (*db, frame.raw.clone())).collect();
                self.write_many(frames, true).await;
            }
        }
        self.ready();
        Ok(())
    }

    /// Runs a client Query on one database and relays its answer.
    async fn single(&mut self, db: Db, raw: &Bytes, any: bool) {
        if let Txn::Pinned(p) = self.txn {
            if p != db && !any {
                let m = format!(
                    "this transaction runs on {}; the statement needs {}",
                    self.db_name(p),
                    self.db_name(db)
                );
                self.reject(
                    "0A000",
                    &m,
                    Some("a transaction stays on one shard: commit it, then run the statement"),
                );
                return;
            }
        }
        let pending = match &self.txn {
            Txn::Pending(begin) if !any => Some(begin.clone()),
            _ => None,
        };
        if pending.is_some() {
            self.settings.began_on(db);
        }
        let result = self.relay_query(db, raw, pending).await;
        match result {
            Ok(status) => {
                if !(any && matches!(self.txn, Txn::Pending(_))) {
                    self.after(db, status);
                }
            }
            Err(e) => self.backend_failed(db, &e),
        }
    }

    /// A SET or SET LOCAL in a transaction not yet begun on any database
    /// (BEGIN was answered by the router, or comes in the same query): it
    /// must last as long as the transaction, on whichever database the
    /// transaction lands. It runs on `db` inside a transaction that is then
    /// rolled back, so the client gets PostgreSQL's own answer, and its
    /// error fails the transaction; its text then joins the transaction's
    /// opening statements.
    async fn defer_setting(&mut self, db: Db, raw: &Bytes, sql: &str) {
        let (begin, opening) = match &self.txn {
            Txn::Pending(begin) => (Some("BEGIN".to_string()), format!("{begin};\n{sql}")),
            _ => (None, sql.to_string()),
        };
        let status = match self.relay_query(db, raw, begin).await {
            Ok(status) => status,
            Err(e) => return self.backend_failed(db, &e),
        };
        let b = self.backends.get_mut(&db).expect("backend");
        if let Err(e) = b.run("ROLLBACK").await {
            return self.backend_failed(db, &e);
        }
        self.txn = if status == b'E' {
            Txn::Failed(None)
        } else {
            self.settings.deferred = true;
            Txn::Pending(opening)
        };
    }

    async fn relay_query(
        &mut self,
        db: Db,
        raw: &Bytes,
        begin: Option<String>,
    ) -> Result<u8, BackendError> {
        let b = self.backend(db).await?;
        if let Some(begin) = begin {
            b.run(&begin).await?;
        }
        b.send(raw).await?;
        loop {
            let f = self.recv(db).await?;
            if f.tag == b'Z' {
                return Ok(f.body().first().copied().unwrap_or(b'I'));
            }
            relay_frame(&mut self.client, &mut self.out, &f.raw).await?;
        }
    }
}
