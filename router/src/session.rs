//! One client connection: startup and SCRAM, then each statement routed
//! and relayed.
//!
//! Backends are taken from the per-database pools when a statement first
//! needs them and kept for the client's session, then reset and returned
//! when the client leaves. A transaction stays on the first database it
//! touches; a statement that needs another one is an error that fails the
//! transaction, and its COMMIT then rolls back, as in PostgreSQL.
//!
//! The parts: [`startup`] (login), [`transaction`] (the client's
//! transaction and the replies that move it), [`settings`] (SET and
//! startup parameters on every backend), [`simple`] and [`extended`]
//! (the two query protocols), [`scatter`] (statements on several shards),
//! [`admin`] (the router's own SHOW), [`cutover`] (cohorts and holds).

mod admin;
mod cutover;
mod extended;
mod scatter;
mod settings;
mod simple;
mod startup;
mod transaction;

pub(crate) use settings::literal;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use shardline_topology::ShardKey;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::backend::{BackendError, Pooled};
use crate::message::{self as msg, Frame, FrameError};
use crate::server::Shared;
use crate::tls::ClientStream;
use crate::Target;
use transaction::Txn;

/// A database: (context index, shard index or 0).
type Db = (usize, usize);

/// Bytes buffered for the client before a write is forced.
const FLUSH_AT: usize = 64 * 1024;

/// Appends a backend's frame to the client's output, writing the output
/// out once it passes [`FLUSH_AT`]. Takes the two fields, not the session,
/// so the caller can go on holding its backend.
async fn relay_frame(
    client: &mut ClientStream,
    out: &mut BytesMut,
    frame: &[u8],
) -> Result<(), BackendError> {
    out.extend_from_slice(frame);
    if out.len() > FLUSH_AT {
        client
            .write_all(out)
            .await
            .map_err(|e| BackendError::Protocol {
                target: "client".into(),
                cause: e.to_string(),
            })?;
        out.clear();
    }
    Ok(())
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
    /// The session's settings could not be read back after a change.
    Settings(BackendError),
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
    client: ClientStream,
    inbuf: BytesMut,
    out: BytesMut,
    backends: HashMap<Db, Pooled>,
    statements: HashMap<String, Statement>,
    key: Option<ShardKey>,
    txn: Txn,
    batch: Vec<Frame>,
    skip_until_sync: bool,
    cancel: Option<crate::cancel::Registration>,
    /// The open transaction's buckets, for a cutover's drain.
    cutover: crate::cohort::Registration,
    settings: settings::Settings,
}

impl Session {
    pub fn new(shared: Arc<Shared>, client: TcpStream) -> Self {
        client.set_nodelay(true).ok();
        Self {
            shared,
            client: ClientStream::Plain(client),
            inbuf: BytesMut::with_capacity(8192),
            out: BytesMut::with_capacity(8192),
            backends: HashMap::new(),
            statements: HashMap::new(),
            key: None,
            txn: Txn::Idle,
            batch: Vec::new(),
            skip_until_sync: false,
            cancel: None,
            cutover: Default::default(),
            settings: Default::default(),
        }
    }

    /// Serves the client until it leaves or breaks the protocol; then
    /// resets and returns the backends.
    pub async fn run(mut self) {
        let result = self.serve().await;
        match &result {
            Err(Fatal::Client(e)) => {
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
            Err(Fatal::Settings(e)) => {
                let m = format!(
                    "{e}; the session's settings are unknown, so the router closes the connection"
                );
                msg::error_response(&mut self.out, e.sqlstate(), &m, Some("connect again"));
                let _ = self.flush().await;
                tracing::warn!(error = %e, "cannot read a session's settings back");
            }
            Ok(()) => {}
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
                self.read_back_settings().await?;
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
            // TLS may hold back the last record; plain TCP returns at once.
            self.client.flush().await?;
        }
        Ok(())
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
        // A held connection the server closed is replaced, unless a
        // transaction lives on it: then the statement fails with the loss.
        if self.txn != Txn::Pinned(db) && self.backends.get_mut(&db).is_some_and(|b| b.is_dead()) {
            self.discard(db);
        }
        if !self.backends.contains_key(&db) {
            let pool = &self.shared.pools[db.0][db.1];
            let b = pool.get().await.map_err(|e| match e {
                deadpool::managed::PoolError::Backend(e) => e,
                other => BackendError::Unreachable {
                    target: self.db_name(db),
                    cause: other.to_string(),
                },
            })?;
            if let Some(c) = &self.cancel {
                c.hold(db, b.backend_key());
            }
            self.backends.insert(db, b);
        }
        let b = self.backends.get_mut(&db).expect("just inserted");
        self.settings.apply(b).await?;
        Ok(b)
    }

    /// Drops a backend that failed mid-exchange; it never returns to the pool.
    fn discard(&mut self, db: Db) {
        self.settings.lost(db);
        if let Some(c) = &self.cancel {
            c.release(db);
        }
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
}
