//! Connections from the router to the shards and context databases, and
//! the per-database pools (deadpool `managed`) that hold them.
//!
//! A backend connection is a raw socket after startup: the router writes
//! client frames to it and reads backend frames back, without decoding
//! rows. It remembers which named statements it has prepared, so a client
//! statement follows the client to whichever pooled connection serves it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use shardline_topology::login::login;
use shardline_topology::{ConnString, ConnectError, DbStream};
use tokio::io::AsyncWriteExt;

use crate::message::{self, read_frame, Frame, FrameError};
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
                message: format!("{e} (hint: {})", e.hint()),
            },
        }
    }

    pub fn sqlstate(&self) -> &'static str {
        match self {
            // connection_failure for a connection that broke, and
            // sqlclient_unable_to_establish_sqlconnection for one that
            // could not be opened, as libpq-based clients classify them.
            Self::Lost { .. } => "08006",
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
    /// Host and port, where a CancelRequest for this backend goes.
    pub addr: (String, u16),
    stats: Arc<DbStats>,
    /// When the round trip in flight began; client statements only.
    sent_at: Option<Instant>,
    /// Off while the router runs its own statements (BEGIN, ROLLBACK,
    /// DISCARD ALL), which are not the clients' queries.
    counting: bool,
    /// When the last ReadyForQuery arrived: the server was alive then.
    ready_at: Option<Instant>,
    /// Which version of its client's settings the connection holds; 0:
    /// none, as a pooled connection is (see [`crate::session`]).
    pub settings: u64,
}

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
            addr: (conn.host(), conn.port()),
            stats,
            sent_at: None,
            counting: true,
            ready_at: None,
            settings: 0,
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

    /// Whether a message was sent that its ReadyForQuery has not answered yet.
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Relaxed)
    }

    /// Where and with which key a CancelRequest reaches this backend.
    pub fn backend_key(&self) -> Option<crate::cancel::BackendKey> {
        self.cancel_key
            .map(|(pid, secret)| crate::cancel::BackendKey {
                host: self.addr.0.clone(),
                port: self.addr.1,
                pid,
                secret,
                running: self.running.clone(),
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
        let got = read_frame(&mut self.stream, &mut self.buf).await;
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
        let idle = n < 0
            && matches!(
                std::io::Error::last_os_error().kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
            );
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
    /// parameters), unless this connection holds that version already.
    pub async fn apply_settings(&mut self, script: &str, version: u64) -> Result<(), BackendError> {
        if self.settings == version {
            return Ok(());
        }
        if let Some((code, message)) = self.run(script).await? {
            return Err(BackendError::Settings {
                target: self.target.clone(),
                code,
                message,
            });
        }
        self.settings = version;
        Ok(())
    }

    /// Makes the connection fit for the next client: out of any
    /// transaction, no session state (`DISCARD ALL` drops prepared
    /// statements, settings, temporary tables, advisory locks).
    pub async fn reset(&mut self) -> Result<(), BackendError> {
        if self.status != b'I' {
            self.run("ROLLBACK").await?;
        }
        if let Some((code, message)) = self.run("DISCARD ALL").await? {
            self.broken = true;
            return Err(BackendError::Refused {
                target: self.target.clone(),
                code,
                message,
            });
        }
        self.prepared.clear();
        self.settings = 0;
        Ok(())
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
}

impl deadpool::managed::Manager for Manager {
    type Type = Backend;
    type Error = BackendError;

    async fn create(&self) -> Result<Backend, BackendError> {
        let connected = Backend::connect(&self.conn, self.stats.clone()).await;
        match &connected {
            Ok(_) => self.stats.up(),
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
        if b.is_dead() || b.status != b'I' {
            return Err(deadpool::managed::RecycleError::Message(
                "connection was not reset".into(),
            ));
        }
        Ok(())
    }
}

pub type Pool = deadpool::managed::Pool<Manager>;
pub type Pooled = deadpool::managed::Object<Manager>;
