//! Connections from the router to the shards and context databases, and
//! the per-database pools (deadpool `managed`) that hold them.
//!
//! A backend connection is a raw socket after startup: the router writes
//! client frames to it and reads backend frames back, without decoding
//! rows. It remembers which named statements it has prepared, so a client
//! statement follows the client to whichever pooled connection serves it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use shardline_topology::login::login;
use shardline_topology::transport::Attempt;
use shardline_topology::{ConnString, ConnectError, DbStream};
use tokio::io::AsyncWriteExt;

use crate::message::{self, read_frame, take_frame, Frame, FrameError, MAX_BACKEND_MESSAGE};
use crate::stats::DbStats;

/// Why a backend could not be reached or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    #[error("cannot reach {target}: {cause}")]
    Unreachable { target: String, cause: String },
    #[error("lost the connection to {target}: {cause}")]
    Lost { target: String, cause: String },
    #[error("{target} refused the router: {code} {message}")]
    Refused {
        target: String,
        code: String,
        message: String,
    },
    #[error("{target} asks for an authentication method the router does not speak (code {code})")]
    UnsupportedAuth { target: String, code: i32 },
    #[error("{target} broke the protocol: {cause}")]
    Protocol { target: String, cause: String },
    /// The client's settings (startup parameters, SET) fail on this
    /// backend; PostgreSQL's own error.
    #[error("{target} rejects this session's settings: {code} {message}")]
    Settings {
        target: String,
        code: String,
        message: String,
    },
    /// No connection of the pool came free within `pool_timeout`.
    #[error("no connection to {target} came free within pool_timeout ({} ms); all {size} of its pool are in use", waited.as_millis())]
    PoolTimeout {
        target: String,
        waited: std::time::Duration,
        size: usize,
    },
    /// The client hung up while its statement ran; the statement is
    /// cancelled and its connection closed.
    #[error("the client hung up while its statement ran on {target}")]
    ClientGone { target: String },
}

impl BackendError {
    /// A failed connect or login: a refusal keeps the server's SQLSTATE
    /// (or the one shardline's TLS and password rules give it).
    fn from_connect(target: &str, e: ConnectError) -> Self {
        match e {
            ConnectError::Unreachable { cause, .. } => Self::Unreachable {
                target: target.to_string(),
                cause,
            },
            e => Self::Refused {
                target: target.to_string(),
                code: e.sqlstate().to_string(),
                message: match &e {
                    // The target is in this error's own text already.
                    ConnectError::AuthRefused { refusal, .. } => {
                        format!("{refusal} (hint: {})", e.hint())
                    }
                    _ => format!("{e} (hint: {})", e.hint()),
                },
            },
        }
    }

    pub fn sqlstate(&self) -> &'static str {
        match self {
            // connection_failure for a connection that broke, and
            // sqlclient_unable_to_establish_sqlconnection for one that
            // could not be opened, as libpq-based clients classify them.
            Self::Lost { .. } | Self::ClientGone { .. } => "08006",
            // too_many_connections, as PostgreSQL answers past max_connections.
            Self::PoolTimeout { .. } => "53300",
            Self::Unreachable { .. } => "08001",
            Self::Refused { .. } | Self::UnsupportedAuth { .. } => "08004",
            Self::Protocol { .. } => "08P01",
            Self::Settings { .. } => "22023",
        }
    }
}

pub struct Backend {
    stream: DbStream,
    buf: BytesMut,
    target: String,
    /// Named statements prepared on this connection: name → text.
    pub prepared: HashMap<String, String>,
    /// ParameterStatus values the server sent at startup.
    pub parameters: Vec<(String, String)>,
    /// Transaction status of the last ReadyForQuery: `I`, `T` or `E`.
    pub status: u8,
    /// Set when the connection can no longer be trusted (an i/o or
    /// protocol error mid-exchange); such a connection is never pooled.
    pub broken: bool,
    /// The database sorts text bytewise: its collation is C (or POSIX) and
    /// no column of a user table has another. Read once at connect.
    pub bytewise_text: bool,
    /// Startup is over: a FATAL error from now on ends the connection.
    started: bool,
    /// The server's BackendKeyData (process id, secret), for cancelling.
    pub cancel_key: Option<(i32, i32)>,
    /// A message is in flight (see [`crate::cancel::BackendKey::running`]).
    running: Arc<AtomicBool>,
    /// Cancel requests for this connection being forwarded right now
    /// (see [`crate::cancel::BackendKey::cancelling`]).
    cancelling: Arc<AtomicUsize>,
    /// How a read that waits long checks the server is still there; set
    /// by the pool's manager.
    liveness: Option<Arc<crate::liveness::Liveness>>,
    /// Host and port, where a CancelRequest for this backend goes.
    /// Where and how a cancel of this connection's statements goes.
    pub cancel_route: Arc<crate::cancel::CancelRoute>,
    stats: Arc<DbStats>,
    /// When the round trip in flight began; client statements only.
    sent_at: Option<Instant>,
    /// Off while the router runs its own statements (BEGIN, ROLLBACK,
    /// DISCARD ALL), which are not the clients' queries.
    counting: bool,
    /// When the last ReadyForQuery arrived: the server was alive then.
    ready_at: Option<Instant>,
    /// The settings script the connection last ran; empty: none, as a
    /// new connection is (see [`crate::session`]). Clients with the same
    /// settings (a fleet's pods log in alike) share connections as they
    /// are, without running the script again.
    pub settings: Arc<str>,
}

/// Messages a server sends unasked to a live session: a notification
/// (after LISTEN), a notice, a changed parameter. They wait to be relayed
/// with the client's next answer.
const ASYNC_MESSAGES: [u8; 3] = [b'A', b'N', b'S'];

/// How long after a ReadyForQuery a connection is taken to be alive
/// without asking the kernel: a client's next statement usually comes well
/// within this, and a server that went away in between fails that one
/// statement, as it would if it went away while the statement ran.
const FRESH: std::time::Duration = std::time::Duration::from_millis(5);

/// Whether text sorts by its bytes in the connected database: default
/// collation C or POSIX from the libc provider (`datlocprovider` exists
/// from PostgreSQL 15, hence the jsonb lookup), and no user column with a
/// collation other than default, C or POSIX (OIDs 100, 950, 951).
const BYTEWISE_TEXT: &str = "SELECT d.datcollate IN ('C', 'POSIX')
   AND coalesce(to_jsonb(d) ->> 'datlocprovider', 'c') = 'c'
   AND NOT EXISTS (SELECT 1 FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
                   JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE a.attnum > 0 AND a.attcollation NOT IN (0, 100, 950, 951)
                     AND n.nspname NOT IN ('pg_catalog', 'information_schema'))
  FROM pg_database d WHERE d.datname = current_database()";

/// Reads a session's settings back: every parameter the session set
/// (source `session`) and the custom ones named in `$custom`, as
/// `set_config` calls after a `RESET ALL`, and the role, which `RESET ALL`
/// leaves alone; and the names of the statements prepared on the
/// connection. client_encoding stays the router's UTF8.
const SESSION_STATE: &str = "SELECT 'RESET ALL; SELECT ' || string_agg(format('set_config(%L, %L, false)', name, setting), ', ' ORDER BY ord, name),
       (SELECT coalesce(json_agg(name), '[]')::text FROM pg_prepared_statements)
  FROM (SELECT 1 AS ord, name, setting FROM pg_settings
         WHERE source = 'session' AND name NOT IN ('role', 'client_encoding')
        UNION SELECT 1, n, current_setting(n, true) FROM unnest(ARRAY[$custom]::text[]) n
         WHERE current_setting(n, true) IS NOT NULL
        UNION ALL SELECT 2, 'role', current_setting('role')) s";

/// How long opening a backend connection (TCP and login) may take: a
/// shard whose host is gone fails its statements after this, not after
/// the kernel's minutes-long TCP timeout.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl Backend {
    pub async fn connect(conn: &ConnString, stats: Arc<DbStats>) -> Result<Self, BackendError> {
        match tokio::time::timeout(CONNECT_TIMEOUT, Self::open(conn, stats)).await {
            Ok(opened) => opened,
            Err(_) => Err(BackendError::Unreachable {
                target: conn.to_string(),
                cause: format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
            }),
        }
    }

    async fn open(conn: &ConnString, stats: Arc<DbStats>) -> Result<Self, BackendError> {
        let target = conn.to_string();
        // TCP or TLS as the URL's sslmode says, and the login under its
        // password rule (shardline_topology's transport and login).
        let params = [
            ("application_name", "shardline-router"),
            ("client_encoding", "UTF8"),
        ];
        let stream = conn
            .each_attempt(|mut stream| async move {
                let protected = stream.is_protected();
                login(&mut stream, conn, &params, protected).await?;
                Ok(stream)
            })
            .await
            .map_err(|e| BackendError::from_connect(&target, e))?;
        crate::liveness::keepalive(&stream, conn);
        let tls = stream.is_tls();
        let mut b = Self {
            stream,
            buf: BytesMut::with_capacity(8192),
            target: target.clone(),
            prepared: HashMap::new(),
            parameters: Vec::new(),
            status: b'I',
            broken: false,
            bytewise_text: false,
            started: false,
            cancel_key: None,
            running: Arc::new(AtomicBool::new(false)),
            cancelling: Arc::default(),
            liveness: None,
            cancel_route: Arc::new(crate::cancel::CancelRoute {
                conn: conn.clone(),
                attempt: if tls {
                    Attempt::Tls { or_plain: false }
                } else {
                    Attempt::Plain
                },
            }),
            stats,
            sent_at: None,
            counting: true,
            ready_at: None,
            settings: Arc::from(""),
        };
        loop {
            let f = b.recv().await?;
            match f.tag {
                b'S' => {
                    let mut body = f.body();
                    let name = message::cstr(&mut body).unwrap_or_default();
                    let value = message::cstr(&mut body).unwrap_or_default();
                    b.parameters.push((name, value));
                }
                b'K' if f.body().len() == 8 => {
                    let body = f.body();
                    let pid = i32::from_be_bytes(body[..4].try_into().unwrap_or_default());
                    let secret = i32::from_be_bytes(body[4..].try_into().unwrap_or_default());
                    b.cancel_key = Some((pid, secret));
                }
                b'Z' => {
                    b.started = true;
                    b.bytewise_text = b.first_value(BYTEWISE_TEXT).await?.as_deref() == Some("t");
                    return Ok(b);
                }
                b'E' => return Err(b.refused(&f)),
                _ => {}
            }
        }
    }

    /// `user@host:port/dbname`, for messages.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Cancel requests for this connection picked up and not delivered.
    pub fn cancels_in_flight(&self) -> usize {
        self.cancelling.load(Ordering::Acquire)
    }

    /// Whether a message was sent that its ReadyForQuery has not answered yet.
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Relaxed)
    }

    /// Where and with which key a CancelRequest reaches this backend.
    pub fn backend_key(&self) -> Option<crate::cancel::BackendKey> {
        self.cancel_key
            .map(|(pid, secret)| crate::cancel::BackendKey {
                route: self.cancel_route.clone(),
                pid,
                secret,
                running: self.running.clone(),
                cancelling: self.cancelling.clone(),
            })
    }

    fn refused(&self, f: &Frame) -> BackendError {
        let (code, message) = message::error_fields(f.body());
        BackendError::Refused {
            target: self.target.clone(),
            code,
            message,
        }
    }

    fn protocol(&self, cause: String) -> BackendError {
        BackendError::Protocol {
            target: self.target.clone(),
            cause,
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), BackendError> {
        if self.started && self.counting && self.sent_at.is_none() {
            self.sent_at = Some(Instant::now());
        }
        if self.started {
            self.running.store(true, Ordering::Relaxed);
        }
        if let Err(e) = self.stream.write_all(bytes).await {
            return Err(self.lost(e.to_string()));
        }
        Ok(())
    }

    /// The next frame. After startup, a FATAL error (the server shutting
    /// down, the backend terminated) is the end of the connection, not an
    /// answer to relay: it comes back as [`BackendError::Lost`].
    pub async fn recv(&mut self) -> Result<Frame, BackendError> {
        let got = match take_frame(&mut self.buf, MAX_BACKEND_MESSAGE) {
            Ok(None) => self.read_watched().await,
            buffered => buffered,
        };
        let cause = match got {
            Ok(Some(f)) => {
                match f.tag {
                    b'Z' => {
                        self.status = f.body().first().copied().unwrap_or(b'I');
                        self.running.store(false, Ordering::Relaxed);
                        let now = Instant::now();
                        if let Some(t) = self.sent_at.take() {
                            self.stats.query(now.saturating_duration_since(t));
                        }
                        self.ready_at = Some(now);
                    }
                    b'E' if self.started && is_fatal(f.body()) => {
                        let (code, message) = message::error_fields(f.body());
                        return Err(self.lost(format!("{code} {message}")));
                    }
                    b'E' if self.counting => self.stats.error(),
                    _ => {}
                }
                return Ok(f);
            }
            Ok(None) | Err(FrameError::Closed) => "the server closed the connection".to_string(),
            Err(e) => e.to_string(),
        };
        Err(self.lost(cause))
    }

    /// Reads a frame from the socket. While a statement runs, a wait past
    /// `backend_read_timeout` asks [`crate::liveness`] whether the server
    /// still answers: a slow statement goes on, a silent server ends it.
    async fn read_watched(&mut self) -> Result<Option<Frame>, FrameError> {
        let watch = (self.started && self.is_running())
            .then(|| self.liveness.clone())
            .flatten();
        let Some(live) = watch else {
            return read_frame(&mut self.stream, &mut self.buf, MAX_BACKEND_MESSAGE).await;
        };
        loop {
            let read = read_frame(&mut self.stream, &mut self.buf, MAX_BACKEND_MESSAGE);
            match tokio::time::timeout(live.wait, read).await {
                Ok(got) => return got,
                Err(_) if live.answers().await => continue,
                Err(_) => {
                    return Err(FrameError::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "no answer within backend_read_timeout ({} ms), and a new connection got none either",
                            live.wait.as_millis()
                        ),
                    )))
                }
            }
        }
    }

    fn lost(&mut self, cause: String) -> BackendError {
        self.broken = true;
        let e = BackendError::Lost {
            target: self.target.clone(),
            cause,
        };
        self.stats.down(&e.to_string());
        e
    }

    /// Whether an idle connection is known to be dead: the server closed
    /// it or sent something unasked (a FATAL error at shutdown). Checked
    /// before a held or pooled connection is used again, so a shard that
    /// restarted is reconnected instead of failing one more statement.
    pub fn is_dead(&mut self) -> bool {
        if self.buf.first().is_some_and(|t| ASYNC_MESSAGES.contains(t)) {
            return false;
        }
        if self.broken || !self.buf.is_empty() {
            self.broken = true;
            return true;
        }
        if self.ready_at.is_some_and(|t| t.elapsed() < FRESH) {
            return false;
        }
        use std::os::fd::AsRawFd;
        let mut byte = 0u8;
        // SAFETY: recv on an open socket of ours into one valid byte;
        // MSG_PEEK leaves the data in place, MSG_DONTWAIT never blocks.
        let n = unsafe {
            libc::recv(
                self.stream.as_raw_fd(),
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        let idle = (n < 0
            && matches!(
                std::io::Error::last_os_error().kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
            ))
            || (n == 1 && ASYNC_MESSAGES.contains(&byte));
        if !idle {
            self.broken = true;
        }
        !idle
    }

    /// Runs router-made SQL to completion, discarding its results; returns
    /// the first error's SQLSTATE and message, if any.
    pub async fn run(&mut self, sql: &str) -> Result<Option<(String, String)>, BackendError> {
        let counting = std::mem::replace(&mut self.counting, false);
        let result = self.run_uncounted(sql).await;
        self.counting = counting;
        result
    }

    async fn run_uncounted(&mut self, sql: &str) -> Result<Option<(String, String)>, BackendError> {
        let mut out = BytesMut::new();
        message::query(&mut out, sql);
        self.send(&out).await?;
        let mut error = None;
        loop {
            let f = self.recv().await?;
            match f.tag {
                b'E' if error.is_none() => error = Some(message::error_fields(f.body())),
                b'S' => self.parameter_status(f.body()),
                b'Z' => return Ok(error),
                _ => {}
            }
        }
    }

    /// Records a ParameterStatus the server sent after startup, so a
    /// client that logs in later is told the value in force.
    fn parameter_status(&mut self, mut body: &[u8]) {
        let (Ok(name), Ok(value)) = (message::cstr(&mut body), message::cstr(&mut body)) else {
            return;
        };
        match self.parameters.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => *v = value,
            None => self.parameters.push((name, value)),
        }
    }

    /// The first column of the first row of router-made SQL, as text;
    /// `None` for no row, NULL or an error.
    async fn first_value(&mut self, sql: &str) -> Result<Option<String>, BackendError> {
        Ok(self.first_row(sql).await?.into_iter().next().flatten())
    }

    /// The first row of router-made SQL, as text; empty for no row or an
    /// error.
    async fn first_row(&mut self, sql: &str) -> Result<Vec<Option<String>>, BackendError> {
        let mut out = BytesMut::new();
        message::query(&mut out, sql);
        self.send(&out).await?;
        let mut row = None;
        loop {
            let f = self.recv().await?;
            match f.tag {
                b'D' if row.is_none() => {
                    row = crate::row::fields(f.body()).map(|fields| {
                        fields
                            .iter()
                            .map(|v| v.map(|v| String::from_utf8_lossy(v).into_owned()))
                            .collect()
                    });
                }
                b'Z' => return Ok(row.unwrap_or_default()),
                _ => {}
            }
        }
    }

    /// The session state a client's SET, RESET, DISCARD or DEALLOCATE
    /// left on this connection, as a script that gives another connection
    /// the same settings. Statements the client deallocated are forgotten
    /// here, so the router prepares them again when they are used.
    pub async fn session_state(&mut self, custom: &[String]) -> Result<String, BackendError> {
        let names: Vec<String> = custom.iter().map(|n| crate::session::literal(n)).collect();
        let sql = SESSION_STATE.replace("$custom", &names.join(", "));
        let row = self.first_row(&sql).await?;
        let (Some(Some(script)), Some(Some(prepared))) = (row.first(), row.get(1)) else {
            return Err(self.protocol("no answer to the session-state query".into()));
        };
        let prepared: Vec<String> = serde_json::from_str(prepared)
            .map_err(|e| self.protocol(format!("prepared statement list: {e}")))?;
        self.prepared.retain(|name, _| prepared.contains(name));
        Ok(script.clone())
    }

    /// Runs a script of [`Backend::session_state`] (or startup
    /// parameters), unless this connection ran the same script last: each
    /// script begins with `RESET ALL`, so the same script leaves the same
    /// settings. The empty script is no settings: `RESET ALL` and the role
    /// (which `RESET ALL` leaves alone) back to the connection's own.
    pub async fn apply_settings(&mut self, script: &Arc<str>) -> Result<(), BackendError> {
        if Arc::ptr_eq(&self.settings, script) || self.settings == *script {
            return Ok(());
        }
        let sql = if script.is_empty() {
            "RESET ALL; RESET ROLE"
        } else {
            script
        };
        if let Some((code, message)) = self.run(sql).await? {
            return Err(BackendError::Settings {
                target: self.target.clone(),
                code,
                message,
            });
        }
        self.settings = script.clone();
        Ok(())
    }

    /// Brings the connection out of whatever its client left it in: an
    /// extended-protocol exchange without its Sync (after an error the
    /// server ignores everything until one) is ended with a Sync and read
    /// to its ReadyForQuery, and a transaction is rolled back. Session
    /// state stays: under transaction pooling it is versioned
    /// ([`Backend::settings`]) and replaced before the next client's use.
    pub async fn settle(&mut self) -> Result<(), BackendError> {
        if self.is_running() {
            let counting = std::mem::replace(&mut self.counting, false);
            let mut sync = BytesMut::new();
            message::empty(&mut sync, b'S');
            let drained = async {
                self.send(&sync).await?;
                while self.recv().await?.tag != b'Z' {}
                Ok(())
            }
            .await;
            self.counting = counting;
            drained?;
        }
        if self.status != b'I' {
            self.run("ROLLBACK").await?;
        }
        Ok(())
    }

    /// Makes the connection fit for any next client: [`Backend::settle`],
    /// then no session state (`DISCARD ALL` drops prepared statements,
    /// settings, temporary tables, advisory locks, LISTEN).
    pub async fn reset(&mut self) -> Result<(), BackendError> {
        self.settle().await?;
        if let Some((code, message)) = self.run("DISCARD ALL").await? {
            self.broken = true;
            return Err(BackendError::Refused {
                target: self.target.clone(),
                code,
                message,
            });
        }
        self.prepared.clear();
        self.settings = Arc::from("");
        Ok(())
    }
}

impl Drop for Backend {
    /// A connection dropped mid-statement (its client gone, a session
    /// task that panicked, a broken exchange) has its statement cancelled,
    /// so the server stops work nobody will read and frees its locks.
    fn drop(&mut self) {
        if !(self.started && self.is_running()) {
            return;
        }
        let (Some(key), Ok(rt)) = (self.backend_key(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        rt.spawn(async move {
            if let Err(e) = crate::cancel::forward(&key).await {
                tracing::debug!(target = %key.route.conn, error = %e, "cancelling an abandoned statement failed");
            }
        });
    }
}

/// Whether an ErrorResponse body has severity FATAL or PANIC.
fn is_fatal(mut b: &[u8]) -> bool {
    while let Some((&field, rest)) = b.split_first() {
        if field == 0 {
            break;
        }
        b = rest;
        let Ok(value) = message::cstr(&mut b) else {
            break;
        };
        if field == b'V' || field == b'S' {
            return value == "FATAL" || value == "PANIC";
        }
    }
    false
}

/// Creates connections to one database for its pool.
pub struct Manager {
    pub conn: ConnString,
    pub stats: Arc<DbStats>,
    pub liveness: Arc<crate::liveness::Liveness>,
    /// The ParameterStatus values of the last connection opened: what a
    /// client without settings of its own is told at login.
    pub parameters: std::sync::Mutex<Option<Vec<(String, String)>>>,
}

impl Manager {
    pub fn new(conn: ConnString, stats: Arc<DbStats>, read_timeout: std::time::Duration) -> Self {
        Self {
            liveness: Arc::new(crate::liveness::Liveness::new(
                conn.clone(),
                stats.clone(),
                read_timeout,
            )),
            conn,
            stats,
            parameters: Default::default(),
        }
    }

    pub fn parameters(&self) -> Option<Vec<(String, String)>> {
        self.parameters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl deadpool::managed::Manager for Manager {
    type Type = Backend;
    type Error = BackendError;

    async fn create(&self) -> Result<Backend, BackendError> {
        let mut connected = Backend::connect(&self.conn, self.stats.clone()).await;
        match &mut connected {
            Ok(b) => {
                self.stats.up();
                b.liveness = Some(self.liveness.clone());
                *self.parameters.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(b.parameters.clone());
            }
            Err(e) => self.stats.down(&e.to_string()),
        }
        connected
    }

    async fn recycle(
        &self,
        b: &mut Backend,
        _: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<BackendError> {
        // Connections are reset when a client lets go of them; one that
        // could not be is never handed out again, nor one the server closed
        // while it sat in the pool.
        if b.is_dead() || b.status != b'I' || b.is_running() {
            return Err(deadpool::managed::RecycleError::Message(
                "connection was not reset".into(),
            ));
        }
        Ok(())
    }
}

pub type Pool = deadpool::managed::Pool<Manager>;
pub type Pooled = deadpool::managed::Object<Manager>;

/// A pooled connection a session holds. Dropped while it runs a
/// statement or a transaction (a session task that panicked, a client
/// gone), it is closed instead of going back to the pool, so its
/// statement is cancelled at once ([`Backend`]'s drop) and nobody else
/// ever gets it; a clean one goes back to the pool.
pub struct Lease(Option<Pooled>);

impl Lease {
    pub fn new(b: Pooled) -> Self {
        Self(Some(b))
    }

    /// Closes the connection: it never returns to the pool.
    pub fn close(mut self) {
        if let Some(b) = self.0.take() {
            drop(Pooled::take(b));
        }
    }
}

impl std::ops::Deref for Lease {
    type Target = Backend;
    fn deref(&self) -> &Backend {
        self.0
            .as_ref()
            .expect("a lease holds its connection until dropped")
    }
}

impl std::ops::DerefMut for Lease {
    fn deref_mut(&mut self) -> &mut Backend {
        self.0
            .as_mut()
            .expect("a lease holds its connection until dropped")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(b) = self.0.take() {
            if b.broken || b.status != b'I' || b.is_running() {
                drop(Pooled::take(b));
            }
        }
    }
}
