//! `[router]` keys for a production fleet: how backends are shared
//! (`pool_mode`, `pool_size`) and the limits that keep one client from
//! costing another anything but CPU. Each key has a named default below
//! with the reason for its value; `validate` names the key and the rule.

use std::time::Duration;

use serde::Deserialize;

use super::super::{Seg, Validator};

/// Backends per database pool: enough for a few dozen busy clients per
/// shard under transaction pooling, far below `max_connections`.
pub const DEFAULT_POOL_SIZE: usize = 32;

/// Transaction pooling: a backend serves a client for one transaction, so
/// thousands of mostly idle clients share a few dozen backends.
pub const DEFAULT_POOL_MODE: PoolMode = PoolMode::Transaction;

/// Clients connected at once, logged in or not: PgBouncer's figure for a
/// fleet of autoscaled pods, far below the descriptors the router raises
/// its limit to.
pub const DEFAULT_MAX_CLIENT_CONN: usize = 10_000;

/// How long a client waits for a backend before it is refused (53300):
/// long enough to ride out a burst, short enough that a starved pool
/// shows as errors rather than as a hang.
pub const DEFAULT_POOL_TIMEOUT: Duration = Duration::from_secs(5);

/// Startup, TLS handshake and SCRAM together. A socket that sends nothing
/// is closed after this; PostgreSQL's `authentication_timeout` is 60 s,
/// but a pooler facing a fleet should shed half-open sockets sooner.
pub const DEFAULT_LOGIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A client idle inside a transaction holds a backend nobody else can
/// use; after this it is disconnected (25P03) and its transaction rolled
/// back. A payment transaction idle for a minute is a bug.
pub const DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT: Option<Duration> = Some(Duration::from_secs(60));

/// Idle clients outside a transaction hold no backend: kept by default.
pub const DEFAULT_IDLE_CLIENT_TIMEOUT: Option<Duration> = None;

/// The largest message a client may send. PostgreSQL allows 1 GB; a
/// payment application's statements and values are far smaller, and
/// every byte of a message is held in memory before it is routed.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 << 20;

/// What one client may have buffered at the router: extended-protocol
/// messages waiting for their Sync, plus its prepared statements.
pub const DEFAULT_MAX_CLIENT_BUFFER_BYTES: usize = 64 << 20;

/// After this long without a message from a backend that runs a
/// statement, the router checks the database with a new connection; only
/// if that gets no answer within the same time does the statement fail
/// (08006). A slow statement is never cut short by it.
pub const DEFAULT_BACKEND_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// PostgreSQL's own cap on any message (`MaxAllocSize`, 1 GB − 1).
const MAX_MESSAGE_CEILING: usize = (1 << 30) - 1;

/// How backends are shared between clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolMode {
    /// A backend serves a client for one transaction (or one extended
    /// exchange up to Sync outside one), then returns to its pool.
    Transaction,
    /// A client keeps the backends it used until it disconnects.
    Session,
}

impl PoolMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transaction => "transaction",
            Self::Session => "session",
        }
    }
}

/// The router's limits, every one with a default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterLimits {
    pub max_client_conn: usize,
    pub pool_timeout: Duration,
    pub login_timeout: Duration,
    /// `None`: off.
    pub idle_in_transaction_timeout: Option<Duration>,
    /// `None`: off.
    pub idle_client_timeout: Option<Duration>,
    pub max_message_bytes: usize,
    pub max_client_buffer_bytes: usize,
    pub backend_read_timeout: Duration,
}

impl Default for RouterLimits {
    fn default() -> Self {
        Self {
            max_client_conn: DEFAULT_MAX_CLIENT_CONN,
            pool_timeout: DEFAULT_POOL_TIMEOUT,
            login_timeout: DEFAULT_LOGIN_TIMEOUT,
            idle_in_transaction_timeout: DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT,
            idle_client_timeout: DEFAULT_IDLE_CLIENT_TIMEOUT,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_client_buffer_bytes: DEFAULT_MAX_CLIENT_BUFFER_BYTES,
            backend_read_timeout: DEFAULT_BACKEND_READ_TIMEOUT,
        }
    }
}

/// A duration as written: `"5s"`, `"500ms"`, `"2m"`, or `"off"`.
/// A size as written: a number of bytes, or `"64MB"`, `"512kB"`, `"1GB"`.
#[derive(Deserialize, Clone, Debug)]
#[serde(untagged)]
pub(in crate::topology) enum Raw {
    Number(i64),
    Text(String),
}

/// The pooling keys of `[router]`, as written.
#[derive(Default)]
pub(in crate::topology) struct RawPooling {
    pub pool_mode: Option<String>,
    pub pool_size: Option<i64>,
    pub max_client_conn: Option<i64>,
    pub pool_timeout: Option<Raw>,
    pub login_timeout: Option<Raw>,
    pub idle_in_transaction_timeout: Option<Raw>,
    pub idle_client_timeout: Option<Raw>,
    pub max_message_bytes: Option<Raw>,
    pub max_client_buffer_bytes: Option<Raw>,
    pub backend_read_timeout: Option<Raw>,
}

impl Validator<'_> {
    /// Reads and checks the pooling keys; `None` after reporting a problem.
    pub(in crate::topology) fn router_pooling(
        &mut self,
        raw: RawPooling,
    ) -> Option<(PoolMode, usize, RouterLimits)> {
        let before = self.problems.len();
        let at = |key: &'static str| [Seg::Key("router"), Seg::Key(key)];
        let mode = match raw.pool_mode.as_deref() {
            None => DEFAULT_POOL_MODE,
            Some("transaction") => PoolMode::Transaction,
            Some("session") => PoolMode::Session,
            Some(other) => {
                self.problem(
                    &at("pool_mode"),
                    format!("{other:?} is not a pool mode: write \"transaction\" or \"session\""),
                );
                DEFAULT_POOL_MODE
            }
        };
        let count =
            |v: &mut Self, key: &'static str, value: Option<i64>, default: usize| match value {
                None => default,
                Some(n) if n >= 1 => n as usize,
                Some(n) => {
                    v.problem(&at(key), format!("{n} is not a count of at least 1"));
                    default
                }
            };
        let pool_size = count(self, "pool_size", raw.pool_size, DEFAULT_POOL_SIZE);
        let d = RouterLimits::default();
        let max_client_conn = count(
            self,
            "max_client_conn",
            raw.max_client_conn,
            d.max_client_conn,
        );
        let duration = |v: &mut Self, key: &'static str, value: Option<Raw>, off: bool| {
            let value = value?;
            match parse_duration(&value, off) {
                Ok(d) => d,
                Err(e) => {
                    v.problem(&at(key), e);
                    None
                }
            }
        };
        let pool_timeout = duration(self, "pool_timeout", raw.pool_timeout, false);
        let login_timeout = duration(self, "login_timeout", raw.login_timeout, false);
        let backend_read_timeout = duration(
            self,
            "backend_read_timeout",
            raw.backend_read_timeout,
            false,
        );
        let idle_in_transaction_timeout = match raw.idle_in_transaction_timeout {
            None => d.idle_in_transaction_timeout,
            value => duration(self, "idle_in_transaction_timeout", value, true),
        };
        let idle_client_timeout = match raw.idle_client_timeout {
            None => d.idle_client_timeout,
            value => duration(self, "idle_client_timeout", value, true),
        };
        let size = |v: &mut Self, key: &'static str, value: Option<Raw>, default: usize| {
            let Some(value) = value else {
                return default;
            };
            match parse_size(&value) {
                Ok(n) if (8192..=MAX_MESSAGE_CEILING).contains(&n) => n,
                Ok(n) => {
                    v.problem(
                        &at(key),
                        format!("{n} bytes is outside 8kB … 1GB (PostgreSQL's own message limit)"),
                    );
                    default
                }
                Err(e) => {
                    v.problem(&at(key), e);
                    default
                }
            }
        };
        let max_message_bytes = size(
            self,
            "max_message_bytes",
            raw.max_message_bytes,
            d.max_message_bytes,
        );
        let max_client_buffer_bytes = size(
            self,
            "max_client_buffer_bytes",
            raw.max_client_buffer_bytes,
            d.max_client_buffer_bytes.max(max_message_bytes),
        );
        if max_client_buffer_bytes < max_message_bytes {
            self.problem(
                &at("max_client_buffer_bytes"),
                format!(
                    "{max_client_buffer_bytes} bytes is less than max_message_bytes ({max_message_bytes}): a client could not send its largest message"
                ),
            );
        }
        if self.problems.len() > before {
            return None;
        }
        Some((
            mode,
            pool_size,
            RouterLimits {
                max_client_conn,
                pool_timeout: pool_timeout.unwrap_or(d.pool_timeout),
                login_timeout: login_timeout.unwrap_or(d.login_timeout),
                idle_in_transaction_timeout,
                idle_client_timeout,
                max_message_bytes,
                max_client_buffer_bytes,
                backend_read_timeout: backend_read_timeout.unwrap_or(d.backend_read_timeout),
            },
        ))
    }
}

/// `"5s"`, `"500ms"`, `"2m"`, `"1h"` (or a bare number of seconds);
/// `"off"` or 0 gives `None` where `off` is allowed.
fn parse_duration(raw: &Raw, off: bool) -> Result<Option<Duration>, String> {
    let text = match raw {
        Raw::Number(n) => format!("{n}s"),
        Raw::Text(t) => t.trim().to_string(),
    };
    let bad = || {
        let also = if off { ", or \"off\"" } else { "" };
        format!("{text:?} is not a duration: write a whole number with ms, s, m or h, such as \"5s\"{also}")
    };
    if text == "off" {
        return if off { Ok(None) } else { Err(bad()) };
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let millis = match unit.trim() {
        "ms" => n,
        "" | "s" => n.saturating_mul(1000),
        "m" => n.saturating_mul(60_000),
        "h" => n.saturating_mul(3_600_000),
        _ => return Err(bad()),
    };
    match millis {
        0 if off => Ok(None),
        0 => Err(format!("{text:?} is zero; a wait needs a bound above zero")),
        m => Ok(Some(Duration::from_millis(m))),
    }
}

/// A number of bytes, or `"512kB"`, `"64MB"`, `"1GB"` as PostgreSQL
/// writes sizes (powers of 1024).
fn parse_size(raw: &Raw) -> Result<usize, String> {
    let text = match raw {
        Raw::Number(n) if *n >= 0 => return Ok(*n as usize),
        Raw::Number(n) => return Err(format!("{n} is not a size")),
        Raw::Text(t) => t.trim(),
    };
    let bad = || {
        format!("{text:?} is not a size: write a number of bytes, or one with kB, MB or GB, such as \"64MB\"")
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: usize = number.parse().map_err(|_| bad())?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "kB" => 10,
        "MB" => 20,
        "GB" => 30,
        _ => return Err(bad()),
    };
    n.checked_mul(1 << shift).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_read_as_written() {
        let t = |s: &str| Raw::Text(s.into());
        assert_eq!(
            parse_duration(&t("500ms"), false),
            Ok(Some(Duration::from_millis(500)))
        );
        assert_eq!(
            parse_duration(&Raw::Number(5), false),
            Ok(Some(Duration::from_secs(5)))
        );
        assert_eq!(parse_duration(&t("off"), true), Ok(None));
        assert_eq!(parse_duration(&t("0"), true), Ok(None));
        assert!(parse_duration(&t("off"), false).is_err());
        assert!(parse_duration(&t("0s"), false).is_err());
        assert!(parse_duration(&t("5 days"), false).is_err());
        assert_eq!(parse_size(&t("64MB")), Ok(64 << 20));
        assert_eq!(parse_size(&t("512kB")), Ok(512 << 10));
        assert_eq!(parse_size(&Raw::Number(9000)), Ok(9000));
        assert!(parse_size(&t("64 mb")).is_err());
        assert!(parse_size(&Raw::Number(-1)).is_err());
    }
}
