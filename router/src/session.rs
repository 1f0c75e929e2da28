//! One client connection: startup and SCRAM, then each statement routed
//! and relayed.
//!
//! Backends are taken from the per-database pools when a statement first
//! needs them. Under transaction pooling (the default) a session gives
//! them back as soon as it is idle: outside a transaction, with no
//! extended-protocol exchange open (ReadyForQuery `I`). What the client
//! set up follows it to the next backend: its settings (versioned, see
//! [`settings`]), its prepared statements (prepared again where missing,
//! see [`prepared`]) and `shardline.merchant_id`. State that cannot follow
//! ([`crate::Pin`]) pins the client to the backends it holds until it
//! leaves, as session pooling does for every client. A leaving client's
//! backends are settled (an open exchange synced, a transaction rolled
//! back), and reset with `DISCARD ALL` when pinned, within
//! [`RESET_TIMEOUT`], or closed.
//!
//! A transaction stays on the first database it touches; a statement that
//! needs another one is an error that fails the transaction, and its
//! COMMIT then rolls back, as in PostgreSQL.
//!
//! The parts: [`startup`] (login), [`transaction`] (the client's
//! transaction and the replies that move it), [`settings`] (SET and
//! startup parameters on every backend), [`simple`] and [`extended`]
//! (the two query protocols), [`prepared`] (the client's statements on
//! shared backends), [`scatter`] (statements on several shards),
//! [`admin`] (the router's own SHOW), [`cutover`] (cohorts and holds).

mod admin;
mod cutover;
mod extended;
mod prepared;
mod scatter;
mod settings;
mod simple;
mod startup;
mod transaction;

pub(crate) use settings::literal;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use shardline_topology::{PoolMode, ShardKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::backend::{Backend, BackendError, Lease};
use crate::clients::{Seat, State};
use crate::message::{self as msg, Frame, FrameError};
use crate::server::Shared;
use crate::tls::ClientStream;
use crate::Target;
use prepared::Statement;
use transaction::Txn;

/// A database: (context index, shard index or 0).
type Db = (usize, usize);

/// Bytes buffered for the client before a write is forced.
const FLUSH_AT: usize = 64 * 1024;

/// How long settling or resetting a backend a client let go of may take
/// before the connection is closed instead (its statement cancelled).
pub(crate) const RESET_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the last words to a client that is being disconnected may
/// take to write: it may not be reading.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(1);

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
            .map_err(|_| BackendError::ClientGone {
                target: "the client".into(),
            })?;
        out.clear();
    }
    Ok(())
}

/// The next frame of a backend running the client's statement, while
/// watching the client: one that hangs up meanwhile ends the wait with
/// [`BackendError::ClientGone`] (the caller drops the backend, which
/// cancels the statement). What the client sends in the meantime is kept
/// in `inbuf`, up to `cap` bytes.
async fn recv_watching(
    b: &mut Backend,
    client: &mut ClientStream,
    inbuf: &mut BytesMut,
    cap: usize,
) -> Result<Frame, BackendError> {
    loop {
        let room = inbuf.len() < cap;
        tokio::select! {
            biased;
            f = b.recv() => return f,
            read = client.read_buf(inbuf), if room => {
                if !matches!(read, Ok(n) if n > 0) {
                    return Err(BackendError::ClientGone { target: b.target().to_string() });
                }
            }
        }
    }
}

/// An error that ends the client's connection.
#[derive(Debug)]
pub(crate) enum Fatal {
    Client(FrameError),
    /// The session's settings could not be read back after a change.
    Settings(BackendError),
    /// A limit ended the session: SQLSTATE and message, sent as FATAL.
    Limit(&'static str, String),
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
    backends: HashMap<Db, Lease>,
    /// The client's prepared statements by its own names.
    statements: HashMap<String, Statement>,
    /// What `statements` weigh, against `max_client_buffer_bytes`.
    statement_bytes: usize,
    key: Option<ShardKey>,
    txn: Txn,
    batch: Vec<Frame>,
    /// What `batch` weighs, against `max_client_buffer_bytes`.
    batch_bytes: usize,
    skip_until_sync: bool,
    cancel: Option<crate::cancel::Registration>,
    /// The open transaction's buckets, for a cutover's drain.
    cutover: crate::cohort::Registration,
    settings: settings::Settings,
    /// The client's entry in `SHOW shardline.clients`.
    seat: Seat,
    /// Why the client keeps its backends for the rest of its session
    /// (always, under session pooling).
    pinned: Option<&'static str>,
    /// The client hung up while a statement ran.
    gone: bool,
}

impl Session {
    pub fn new(shared: Arc<Shared>, client: TcpStream, seat: Seat) -> Self {
        client.set_nodelay(true).ok();
        let pinned = (shared.mode == PoolMode::Session).then_some("pool_mode session");
        if let Some(why) = pinned {
            seat.client.pinned(why);
        }
        Self {
            shared,
            client: ClientStream::Plain(client),
            inbuf: BytesMut::with_capacity(8192),
            out: BytesMut::with_capacity(8192),
            backends: HashMap::new(),
            statements: HashMap::new(),
            statement_bytes: 0,
            key: None,
            txn: Txn::Idle,
            batch: Vec::new(),
            batch_bytes: 0,
            skip_until_sync: false,
            cancel: None,
            cutover: Default::default(),
            settings: Default::default(),
            seat,
            pinned,
            gone: false,
        }
    }

    /// Serves the client until it leaves or breaks the protocol; then
    /// settles and returns the backends.
    pub async fn run(mut self) {
        let limit = self.shared.limits.login_timeout;
        let result = match tokio::time::timeout(limit, self.startup()).await {
            Ok(Ok(true)) => self.serve().await,
            Ok(Ok(false)) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Fatal::Limit(
                "08P01",
                format!(
                    "login_timeout: startup, TLS and authentication took longer than {} ms",
                    limit.as_millis()
                ),
            )),
        };
        match &result {
            Err(Fatal::Client(e)) => {
                let why = match e {
                    FrameError::Malformed(why) => Some(format!("invalid message: {why}")),
                    FrameError::TooLong { tag, len, max } => Some(format!(
                        "invalid message length: message type {:?} declares {len} bytes; max_message_bytes is {max}",
                        *tag as char
                    )),
                    _ => None,
                };
                if let Some(why) = why {
                    self.out.clear();
                    msg::fatal_response(&mut self.out, "08P01", &why, None);
                    self.farewell().await;
                }
                tracing::debug!(error = %e, "client connection closed");
            }
            Err(Fatal::Settings(e)) => {
                let m = format!(
                    "{e}; the session's settings are unknown, so the router closes the connection"
                );
                msg::error_response(&mut self.out, e.sqlstate(), &m, Some("connect again"));
                self.farewell().await;
                tracing::warn!(error = %e, "cannot read a session's settings back");
            }
            Err(Fatal::Limit(code, m)) => {
                msg::fatal_response(&mut self.out, code, m, None);
                self.farewell().await;
                tracing::info!(addr = %self.seat.client.addr, code, "{m}");
            }
            Ok(()) => {}
        }
        self.release().await;
    }

    /// Writes what is buffered for a client that is being disconnected,
    /// within [`FAREWELL_TIMEOUT`].
    async fn farewell(&mut self) {
        let _ = tokio::time::timeout(FAREWELL_TIMEOUT, self.flush()).await;
    }

    async fn serve(&mut self) -> Result<(), Fatal> {
        loop {
            if self.txn == Txn::Idle {
                self.cutover_release();
                self.read_back_settings().await?;
            }
            if self.batch.is_empty() || self.out.len() > FLUSH_AT {
                self.flush().await?;
            }
            if self.gone {
                return Ok(());
            }
            if self.txn == Txn::Idle && self.batch.is_empty() {
                self.let_go().await;
            }
            let Some(frame) = self.next_message().await? else {
                return Ok(());
            };
            self.seat.client.set_state(State::Active);
            if self.skip_until_sync && frame.tag != b'S' {
                continue;
            }
            match frame.tag {
                b'Q' => self.simple(frame).await?,
                b'P' | b'B' | b'D' | b'E' | b'C' => {
                    self.check(&frame)?;
                    self.buffer(frame);
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

    /// The client's next message, within the idle limits: a client idle in
    /// a transaction past `idle_in_transaction_timeout` is disconnected
    /// with 25P03, an idle one past `idle_client_timeout` with 57P05.
    async fn next_message(&mut self) -> Result<Option<Frame>, Fatal> {
        let limits = &self.shared.limits;
        let max = limits.max_message_bytes;
        if let Some(f) = msg::take_frame(&mut self.inbuf, max)? {
            return Ok(Some(f));
        }
        let idle = self.batch.is_empty() && self.open_exchange().is_none();
        let (state, limit) = match self.txn {
            Txn::Idle if idle => (State::Idle, limits.idle_client_timeout),
            Txn::Idle => (State::Active, None),
            _ => (State::IdleInTransaction, limits.idle_in_transaction_timeout),
        };
        self.seat.client.set_state(state);
        let read = msg::read_frame(&mut self.client, &mut self.inbuf, max);
        let Some(limit) = limit else {
            return Ok(read.await?);
        };
        match tokio::time::timeout(limit, read).await {
            Ok(got) => Ok(got?),
            Err(_) if state == State::Idle => Err(Fatal::Limit(
                "57P05",
                format!(
                    "terminating connection due to idle-session timeout (idle_client_timeout is {} ms)",
                    limit.as_millis()
                ),
            )),
            Err(_) => Err(Fatal::Limit(
                "25P03",
                format!(
                    "terminating connection due to idle-in-transaction timeout (idle_in_transaction_timeout is {} ms)",
                    limit.as_millis()
                ),
            )),
        }
    }

    /// Keeps an extended-protocol message until its Sync or Flush, within
    /// `max_client_buffer_bytes` (with the client's prepared statements);
    /// past it the batch is refused (54000) and the rest up to Sync
    /// skipped, so the client's memory never grows with what it sends.
    fn buffer(&mut self, frame: Frame) {
        let cap = self.shared.limits.max_client_buffer_bytes;
        if self.batch_bytes + frame.raw.len() + self.statement_bytes > cap {
            let m = format!(
                "the extended-protocol messages sent before Sync ({} bytes) and the prepared statements ({} bytes) exceed max_client_buffer_bytes ({cap})",
                self.batch_bytes + frame.raw.len(),
                self.statement_bytes
            );
            self.batch.clear();
            self.batch_bytes = 0;
            self.reject(
                "54000",
                &m,
                Some(
                    "send Sync more often, and close prepared statements the client no longer uses",
                ),
            );
            self.skip_until_sync = true;
            return;
        }
        self.batch_bytes += frame.raw.len();
        self.batch.push(frame);
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

    /// The database whose backend is inside an extended-protocol exchange
    /// the client ended with Flush, not Sync: its next messages go there.
    fn open_exchange(&self) -> Option<Db> {
        self.backends
            .iter()
            .find(|(_, b)| b.is_running())
            .map(|(db, _)| *db)
    }

    async fn backend(&mut self, db: Db) -> Result<&mut Lease, BackendError> {
        // A held connection the server closed is replaced, unless a
        // transaction lives on it: then the statement fails with the loss.
        if self.txn != Txn::Pinned(db) && self.backends.get_mut(&db).is_some_and(|b| b.is_dead()) {
            self.discard(db);
        }
        if !self.backends.contains_key(&db) {
            let pool = &self.shared.pools[db.0][db.1];
            self.seat.client.set_state(State::Waiting);
            let got = pool.get().await;
            self.seat.client.set_state(State::Active);
            let b = got.map_err(|e| match e {
                deadpool::managed::PoolError::Backend(e) => e,
                deadpool::managed::PoolError::Timeout(deadpool::managed::TimeoutType::Wait) => {
                    BackendError::PoolTimeout {
                        target: self.db_name(db),
                        waited: self.shared.limits.pool_timeout,
                        size: pool.status().max_size,
                    }
                }
                other => BackendError::Unreachable {
                    target: self.db_name(db),
                    cause: other.to_string(),
                },
            })?;
            if let Some(c) = &self.cancel {
                c.hold(db, b.backend_key());
            }
            self.backends.insert(db, Lease::new(b));
            self.seat.client.set_backends(self.backends.len());
        }
        let b = self.backends.get_mut(&db).expect("just inserted");
        self.settings.apply(b).await?;
        Ok(b)
    }

    /// The next frame of the backend for `db`, running a client statement,
    /// watching the client meanwhile (see [`recv_watching`]).
    async fn recv(&mut self, db: Db) -> Result<Frame, BackendError> {
        let cap = self.shared.limits.max_client_buffer_bytes;
        let Some(b) = self.backends.get_mut(&db) else {
            return Err(BackendError::Lost {
                target: self.db_name(db),
                cause: "the connection was dropped".into(),
            });
        };
        let got = recv_watching(b, &mut self.client, &mut self.inbuf, cap).await;
        if let Err(BackendError::ClientGone { .. }) = &got {
            self.gone = true;
        }
        got
    }

    /// Drops a backend that failed mid-exchange; it never returns to the
    /// pool, and a statement it still runs is cancelled.
    fn discard(&mut self, db: Db) {
        self.settings.lost(db);
        if let Some(c) = &self.cancel {
            c.release(db);
        }
        if let Some(b) = self.backends.remove(&db) {
            b.close();
        }
        self.seat.client.set_backends(self.backends.len());
    }

    /// Under transaction pooling, gives back every backend not inside an
    /// exchange; a pinned client keeps them.
    async fn let_go(&mut self) {
        if self.pinned.is_some() || self.backends.is_empty() {
            return;
        }
        // Usually one backend: found again each time rather than collected.
        while let Some(db) = (self.backends.iter())
            .find(|(_, b)| !b.is_running())
            .map(|(db, _)| *db)
        {
            self.give_back(db, false).await;
        }
    }

    /// Returns the backend for `db` to its pool once nothing of this
    /// client is left on it: no cancel of its on the way, no exchange or
    /// transaction open, and with `reset` no session state either. What
    /// cannot be made so within [`RESET_TIMEOUT`] is closed instead.
    async fn give_back(&mut self, db: Db, reset: bool) {
        let Some(mut b) = self.backends.remove(&db) else {
            return;
        };
        self.seat.client.set_backends(self.backends.len());
        let picked = self.cancel.as_ref().map_or(0, |c| c.release(db));
        if picked == 0 && !reset && !b.broken && !b.is_running() && b.status == b'I' {
            return; // dropping it returns it to the pool
        }
        let clean = async {
            if picked > 0 {
                while b.cancels_in_flight() > 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            if b.broken {
                return false;
            }
            let done = if reset {
                b.reset().await
            } else {
                b.settle().await
            };
            done.is_ok()
        };
        let clean = matches!(tokio::time::timeout(RESET_TIMEOUT, clean).await, Ok(true));
        if !clean {
            self.settings.lost(db);
            b.close();
        }
    }

    /// The client leaves: every backend is settled (reset when the client
    /// was pinned) and given back, or closed.
    async fn release(&mut self) {
        self.cutover_release();
        let reset = self.pinned.is_some();
        let dbs: Vec<Db> = self.backends.keys().copied().collect();
        for db in dbs {
            self.give_back(db, reset).await;
        }
    }

    /// Pins the client to its backends for the rest of its session.
    fn pin(&mut self, pin: crate::Pin) {
        if self.pinned.is_none() {
            self.pinned = Some(pin.as_str());
            self.seat.client.pinned(pin.as_str());
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

impl Drop for Session {
    /// A session that ends by panicking still ends its transaction's
    /// count in a cutover's drain; its backends, dropped mid-exchange,
    /// are cancelled and never pooled again ([`crate::backend::Lease`]).
    fn drop(&mut self) {
        self.cutover_release();
        // Left here only when the task panicked: a pinned client's backends
        // hold state no reset cleared (locks, LISTEN); closed, not pooled.
        if self.pinned.is_some() {
            for (_, b) in self.backends.drain() {
                b.close();
            }
        }
    }
}
