//! One client connection: startup and SCRAM, then each statement routed
//! and relayed.
//!
//! Backends are taken from the per-database pools when a statement first
//! needs them and kept for the client's session, then reset and returned
//! when the client leaves. A transaction stays on the first database it
//! touches; a statement that needs another one is an error that fails the
//! transaction, and its COMMIT then rolls back, as in PostgreSQL.
//! The extended protocol (Parse, Bind, Describe, Execute) is in
//! [`extended`].

use std::collections::HashMap;

mod cutover;
mod extended;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use shardline_topology::ShardKey;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::backend::{BackendError, Pooled};
use crate::message::{self as msg, Frame, FrameError};
use crate::server::Shared;
use crate::{Control, Kind, MergeShape, Target};

/// A database: (context index, shard index or 0).
type Db = (usize, usize);

/// Bytes buffered for the client before a write is forced.
const FLUSH_AT: usize = 64 * 1024;

#[derive(Clone, Debug, PartialEq)]
enum Txn {
    Idle,
    /// BEGIN was answered by the router; it is sent to the first database
    /// a statement of the transaction needs.
    Pending(String),
    Pinned(Db),
    /// Failed; the database holds an aborted transaction, if any.
    Failed(Option<Db>),
}

struct Statement {
    sql: String,
    types: Vec<u32>,
    /// The client's Parse frame, replayed on backends that lack it.
    parse: Bytes,
}

/// An error that ends the client's connection.
#[derive(Debug)]
pub(crate) enum Fatal {
    Client(FrameError),
}

impl From<FrameError> for Fatal {
    fn from(e: FrameError) -> Self {
        Self::Client(e)
    }
}

impl From<std::io::Error> for Fatal {
    fn from(e: std::io::Error) -> Self {
        Self::Client(FrameError::Io(e))
    }
}

pub(crate) struct Session {
    shared: Arc<Shared>,
    client: TcpStream,
    inbuf: BytesMut,
    out: BytesMut,
    backends: HashMap<Db, Pooled>,
    statements: HashMap<String, Statement>,
    key: Option<ShardKey>,
    txn: Txn,
    batch: Vec<Frame>,
    skip_until_sync: bool,
    /// The open transaction's buckets, for a cutover's drain.
    cutover: crate::cohort::Registration,
}

impl Session {
    pub fn new(shared: Arc<Shared>, client: TcpStream) -> Self {
        client.set_nodelay(true).ok();
        Self {
            shared,
            client,
            inbuf: BytesMut::with_capacity(8192),
            out: BytesMut::with_capacity(8192),
            backends: HashMap::new(),
            statements: HashMap::new(),
            key: None,
            txn: Txn::Idle,
            batch: Vec::new(),
            skip_until_sync: false,
            cutover: Default::default(),
        }
    }

    /// Serves the client until it leaves or breaks the protocol; then
    /// resets and returns the backends.
    pub async fn run(mut self) {
        let result = self.serve().await;
        if let Err(Fatal::Client(e)) = &result {
            if let FrameError::Malformed(why) = e {
                msg::error_response(
                    &mut self.out,
                    "08P01",
                    &format!("invalid message: {why}"),
                    None,
                );
                let _ = self.flush().await;
            }
            tracing::debug!(error = %e, "client connection closed");
        }
        self.release().await;
    }

    async fn serve(&mut self) -> Result<(), Fatal> {
        if !self.startup().await? {
            return Ok(());
        }
        loop {
            if self.txn == Txn::Idle {
                self.cutover_release();
            }
            if self.batch.is_empty() || self.out.len() > FLUSH_AT {
                self.flush().await?;
            }
            let Some(frame) = msg::read_frame(&mut self.client, &mut self.inbuf).await? else {
                return Ok(());
            };
            if self.skip_until_sync && frame.tag != b'S' {
                continue;
            }
            match frame.tag {
                b'Q' => self.simple(frame).await?,
                b'P' | b'B' | b'D' | b'E' | b'C' => {
                    self.check(&frame)?;
                    self.batch.push(frame);
                }
                b'S' => self.extended(true).await?,
                b'H' => self.extended(false).await?,
                b'X' => return Ok(()),
                other => {
                    return Err(Fatal::Client(FrameError::Malformed(format!(
                        "unexpected message type {:?}",
                        other as char
                    ))))
                }
            }
        }
    }

    /// Validates an extended-protocol frame when it arrives, so a
    /// malformed one closes the connection before anything is sent on.
    fn check(&self, f: &Frame) -> Result<(), FrameError> {
        match f.tag {
            b'P' => msg::parse_parse(f.body()).map(|_| ()),
            b'B' => msg::parse_bind(f).map(|_| ()),
            b'D' | b'C' => msg::parse_target(f.body()).map(|_| ()),
            _ => {
                let mut b = f.body();
                msg::cstr(&mut b).map(|_| ())?;
                if b.len() != 4 {
                    return Err(FrameError::Malformed(
                        "Execute without its row limit".into(),
                    ));
                }
                Ok(())
            }
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            self.client.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    // Startup and authentication.

    async fn startup(&mut self) -> Result<bool, Fatal> {
        let params = loop {
            let (code, body) = msg::read_startup(&mut self.client).await?;
            match code {
                msg::SSL_REQUEST | msg::GSSENC_REQUEST => self.client.write_all(b"N").await?,
                msg::CANCEL_REQUEST => return Ok(false),
                msg::PROTOCOL_3_0 => break msg::startup_params(&body)?,
                other => {
                    let m = format!(
                        "unsupported frontend protocol {}.{}",
                        other >> 16,
                        other & 0xffff
                    );
                    msg::error_response(&mut self.out, "0A000", &m, None);
                    self.flush().await?;
                    return Ok(false);
                }
            }
        };
        let user = params
            .iter()
            .find(|(k, _)| k == "user")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        if !self.authenticate(&user).await? {
            return Ok(false);
        }
        msg::authentication(&mut self.out, 0, &[]);
        let db = self.default_db();
        let parameters = match self.backend(db).await {
            Ok(b) => b.parameters.clone(),
            Err(_) => Vec::new(),
        };
        let mut sent = Vec::new();
        for (k, v) in &parameters {
            msg::parameter_status(&mut self.out, k, v);
            sent.push(k.as_str());
        }
        for (k, v) in [
            ("server_version", "16.0"),
            ("server_encoding", "UTF8"),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO, MDY"),
            ("integer_datetimes", "on"),
            ("standard_conforming_strings", "on"),
        ] {
            if !sent.contains(&k) {
                msg::parameter_status(&mut self.out, k, v);
            }
        }
        msg::backend_key_data(&mut self.out, rand::random::<i32>(), rand::random::<i32>());
        msg::ready_for_query(&mut self.out, b'I');
        self.flush().await?;
        Ok(true)
    }

    async fn authenticate(&mut self, user: &str) -> Result<bool, Fatal> {
        let failed = |s: &mut Self| {
            msg::error_response(
                &mut s.out,
                "28P01",
                &format!("password authentication failed for user \"{user}\""),
                None,
            );
        };
        let Some(verifier) = self.shared.users.get(user).cloned() else {
            failed(self);
            self.flush().await?;
            return Ok(false);
        };
        let mut mechanisms = Vec::new();
        mechanisms.extend_from_slice(crate::scram::MECHANISM.as_bytes());
        mechanisms.extend_from_slice(&[0, 0]);
        msg::authentication(&mut self.out, 10, &mechanisms);
        self.flush().await?;

        let first = self.password_message().await?;
        let mut b = first.body();
        let mechanism = msg::cstr(&mut b)?;
        if mechanism != crate::scram::MECHANISM || b.len() < 4 {
            failed(self);
            self.flush().await?;
            return Ok(false);
        }
        let client_first = String::from_utf8_lossy(&b[4..]).to_string();
        let nonce = base64_nonce();
        let Ok((exchange, server_first)) =
            crate::scram::Exchange::start(&verifier, &client_first, &nonce)
        else {
            failed(self);
            self.flush().await?;
            return Ok(false);
        };
        msg::authentication(&mut self.out, 11, server_first.as_bytes());
        self.flush().await?;
        let last = self.password_message().await?;
        let client_final = String::from_utf8_lossy(last.body()).to_string();
        match exchange.finish(&verifier, &client_final) {
            Ok(server_final) => {
                msg::authentication(&mut self.out, 12, server_final.as_bytes());
                Ok(true)
            }
            Err(_) => {
                failed(self);
                self.flush().await?;
                Ok(false)
            }
        }
    }

    async fn password_message(&mut self) -> Result<Frame, Fatal> {
        match msg::read_frame(&mut self.client, &mut self.inbuf).await? {
            Some(f) if f.tag == b'p' => Ok(f),
            Some(f) => Err(Fatal::Client(FrameError::Malformed(format!(
                "expected a password message, got {:?}",
                f.tag as char
            )))),
            None => Err(Fatal::Client(FrameError::Closed)),
        }
    }

    // Backends.

    fn default_db(&self) -> Db {
        match self.txn {
            Txn::Pinned(db) | Txn::Failed(Some(db)) => db,
            _ => self.backends.keys().next().copied().unwrap_or((0, 0)),
        }
    }

    fn db_name(&self, db: Db) -> String {
        if db.0 >= self.shared.router.schema().contexts().len() {
            return "the monolith".into();
        }
        let c = self.shared.router.schema().context(db.0);
        if c.sharding.is_some() {
            format!("shard {} of {}", db.1, c.name)
        } else {
            c.name.clone()
        }
    }

    async fn backend(&mut self, db: Db) -> Result<&mut Pooled, BackendError> {
        if !self.backends.contains_key(&db) {
            let pool = &self.shared.pools[db.0][db.1];
            let b = pool.get().await.map_err(|e| match e {
                deadpool::managed::PoolError::Backend(e) => e,
                other => BackendError::Unreachable {
                    target: self.db_name(db),
                    cause: other.to_string(),
                },
            })?;
            self.backends.insert(db, b);
        }
        Ok(self.backends.get_mut(&db).expect("just inserted"))
    }

    /// Drops a backend that failed mid-exchange; it never returns to the pool.
    fn discard(&mut self, db: Db) {
        if let Some(b) = self.backends.remove(&db) {
            drop(Pooled::take(b));
        }
    }

    async fn release(&mut self) {
        self.cutover_release();
        for (_, mut b) in self.backends.drain() {
            if b.broken || b.reset().await.is_err() {
                drop(Pooled::take(b));
            }
        }
    }

    // Replies.

    fn status(&self) -> u8 {
        match self.txn {
            Txn::Idle => b'I',
            Txn::Pending(_) | Txn::Pinned(_) => b'T',
            Txn::Failed(_) => b'E',
        }
    }

    fn ready(&mut self) {
        let s = self.status();
        msg::ready_for_query(&mut self.out, s);
    }

    /// Sends an error the router raised; inside a transaction it fails
    /// the transaction.
    fn reject(&mut self, code: &str, message: &str, hint: Option<&str>) {
        msg::error_response(&mut self.out, code, message, hint);
        self.txn = match std::mem::replace(&mut self.txn, Txn::Idle) {
            Txn::Idle => Txn::Idle,
            Txn::Pending(_) => Txn::Failed(None),
            Txn::Pinned(db) => Txn::Failed(Some(db)),
            Txn::Failed(db) => Txn::Failed(db),
        };
    }

    fn backend_failed(&mut self, db: Db, e: &BackendError) {
        self.discard(db);
        let m = format!("{}: {e}", self.db_name(db));
        self.reject(
            e.sqlstate(),
            &m,
            Some("the router retries with a new connection on the next statement"),
        );
        if let Txn::Failed(Some(d)) = self.txn {
            if d == db {
                self.txn = Txn::Failed(None);
            }
        }
    }

    fn after(&mut self, db: Db, status: u8) {
        // A transaction the router failed stays failed until its client
        // ends it, whatever its backend thinks.
        if matches!(self.txn, Txn::Failed(_)) {
            return;
        }
        self.txn = match status {
            b'T' => Txn::Pinned(db),
            b'E' => Txn::Failed(Some(db)),
            _ => Txn::Idle,
        };
    }

    /// Ends a failed transaction: ROLLBACK on its database, whatever the
    /// client asked (COMMIT of a failed transaction rolls back).
    async fn end_failed(&mut self, db: Option<Db>) -> &'static str {
        if let Some(db) = db {
            if let Ok(b) = self.backend(db).await {
                if b.run("ROLLBACK").await.is_err() {
                    self.discard(db);
                }
            }
        }
        self.txn = Txn::Idle;
        "ROLLBACK"
    }

    fn target_dbs(&self, target: &Target) -> Vec<Db> {
        let schema = self.shared.router.schema();
        let ctx = |name: &str| match name {
            crate::cohort::MONOLITH => schema.contexts().len(),
            _ => schema.context_index(name).unwrap_or(0),
        };
        match target {
            Target::Any => vec![self.default_db()],
            Target::Database { context } => vec![(ctx(context), 0)],
            Target::Shard { context, shard } => vec![(ctx(context), *shard)],
            Target::AnyShard { context } => {
                let c = ctx(context);
                match self.txn {
                    Txn::Pinned((pc, s)) if pc == c => vec![(c, s)],
                    _ => vec![(c, 0)],
                }
            }
            Target::Shards {
                context, shards, ..
            } => shards.iter().map(|s| (ctx(context), *s)).collect(),
            Target::Broadcast { context } => {
                let c = ctx(context);
                (0..schema.context(c).databases).map(|s| (c, s)).collect()
            }
            Target::Split { context, parts } => {
                parts.iter().map(|(s, _)| (ctx(context), *s)).collect()
            }
        }
    }

    // The simple protocol.

    async fn simple(&mut self, frame: Frame) -> Result<(), Fatal> {
        let sql = msg::parse_query(&frame)?;
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
        if route.kinds.len() == 1 {
            match (&route.kinds[0], &self.txn) {
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
                (Kind::Control(c @ (Control::Commit | Control::Rollback)), Txn::Pending(_)) => {
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
                merge: Some(MergeShape::Rows { order, limit }),
                ..
            } if order.is_empty() => {
                let limit = match limit {
                    Some(crate::Limit::Count(n)) => Some(n),
                    _ => None,
                };
                self.scatter_rows(&dbs, &frame.raw, limit).await;
            }
            Target::Shards {
                merge: Some(_),
                shards,
                ..
            } => {
                let m = format!("SELECT on shards {shards:?} needs an ordered or aggregate merge, which this router version does not do yet");
                self.reject("0A000", &m, Some("add the shard key to the WHERE clause"));
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
        let b = self.backends.get_mut(&db).expect("backend");
        loop {
            let f = b.recv().await?;
            if f.tag == b'Z' {
                return Ok(b.status);
            }
            self.out.extend_from_slice(&f.raw);
            if self.out.len() > FLUSH_AT {
                self.client
                    .write_all(&self.out)
                    .await
                    .map_err(|e| BackendError::Protocol {
                        target: "client".into(),
                        cause: e.to_string(),
                    })?;
                self.out.clear();
            }
        }
    }

    /// A SELECT on several shards whose rows are simply concatenated, cut
    /// at `limit`. Every shard gets the query first, so they run at once.
    async fn scatter_rows(&mut self, dbs: &[Db], raw: &Bytes, limit: Option<u64>) {
        for db in dbs {
            let sent = match self.backend(*db).await {
                Ok(b) => b.send(raw).await,
                Err(e) => Err(e),
            };
            if let Err(e) = sent {
                self.backend_failed(*db, &e);
                self.drain(dbs, *db).await;
                return;
            }
        }
        let mut rows: u64 = 0;
        let mut described: Option<Bytes> = None;
        let mut error: Option<Bytes> = None;
        for db in dbs {
            let b = self.backends.get_mut(db).expect("backend");
            loop {
                let f = match b.recv().await {
                    Ok(f) => f,
                    Err(e) => {
                        self.backend_failed(*db, &e);
                        return;
                    }
                };
                match f.tag {
                    b'Z' => break,
                    b'T' => match &described {
                        None => {
                            self.out.extend_from_slice(&f.raw);
                            described = Some(f.raw.clone());
                        }
                        // Same column count; table OIDs differ per database.
                        Some(first) if first.get(5..7) == f.raw.get(5..7) => {}
                        Some(_) => {
                            error.get_or_insert_with(|| {
                                let mut e = BytesMut::new();
                                msg::error_response(
                                    &mut e,
                                    "XX000",
                                    "shards answered with different columns",
                                    None,
                                );
                                e.freeze()
                            });
                        }
                    },
                    b'D' => {
                        if error.is_none() && limit.is_none_or(|l| rows < l) {
                            rows += 1;
                            self.out.extend_from_slice(&f.raw);
                        }
                    }
                    b'E' => {
                        error.get_or_insert(f.raw.clone());
                    }
                    // CommandComplete is replaced by one for the merged rows.
                    b'C' => {}
                    _ => self.out.extend_from_slice(&f.raw),
                }
                if self.out.len() > FLUSH_AT {
                    if self.client.write_all(&self.out).await.is_err() {
                        return;
                    }
                    self.out.clear();
                }
            }
        }
        match error {
            Some(e) => self.out.extend_from_slice(&e),
            None => msg::command_complete(&mut self.out, &format!("SELECT {rows}")),
        }
    }

    /// Reads the remaining answers of shards already sent a query, after
    /// one of them failed.
    async fn drain(&mut self, dbs: &[Db], failed: Db) {
        for db in dbs {
            if *db == failed {
                break;
            }
            if let Some(b) = self.backends.get_mut(db) {
                loop {
                    match b.recv().await {
                        Ok(f) if f.tag == b'Z' => break,
                        Ok(_) => {}
                        Err(_) => {
                            self.discard(*db);
                            break;
                        }
                    }
                }
            }
        }
    }

    /// A write on several shards (disjoint rows, or a replicated table's
    /// copies). The row count is summed over shards when `sum`, else the
    /// first shard's is reported (each copy of a replicated table changes
    /// the same rows).
    async fn write_many(&mut self, frames: Vec<(Db, Bytes)>, sum: bool) {
        for (db, raw) in &frames {
            let sent = match self.backend(*db).await {
                Ok(b) => b.send(raw).await,
                Err(e) => Err(e),
            };
            if let Err(e) = sent {
                self.backend_failed(*db, &e);
                let dbs: Vec<Db> = frames.iter().map(|(d, _)| *d).collect();
                self.drain(&dbs, *db).await;
                return;
            }
        }
        let mut verb = String::new();
        let mut count: u64 = 0;
        let mut error: Option<Bytes> = None;
        for (i, (db, _)) in frames.iter().enumerate() {
            let b = self.backends.get_mut(db).expect("backend");
            loop {
                let f = match b.recv().await {
                    Ok(f) => f,
                    Err(e) => {
                        self.backend_failed(*db, &e);
                        return;
                    }
                };
                match f.tag {
                    b'Z' => break,
                    b'C' => {
                        let mut body = f.body();
                        let tag = msg::cstr(&mut body).unwrap_or_default();
                        let (head, n) = tag.rsplit_once(' ').unwrap_or((&tag, "0"));
                        let n: u64 = n.parse().unwrap_or(0);
                        if i == 0 {
                            verb = head.to_string();
                            count = n;
                        } else if sum {
                            count += n;
                        }
                    }
                    b'E' => {
                        error.get_or_insert(f.raw.clone());
                    }
                    // RETURNING rows and notices are relayed as they come.
                    _ if sum => self.out.extend_from_slice(&f.raw),
                    _ if i == 0 => self.out.extend_from_slice(&f.raw),
                    _ => {}
                }
            }
        }
        match error {
            Some(e) => self.out.extend_from_slice(&e),
            None => msg::command_complete(&mut self.out, &format!("{verb} {count}")),
        }
    }
}

fn base64_nonce() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 18]>())
}
