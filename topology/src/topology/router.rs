//! `[router]`: where the router listens, its users, TLS for its clients,
//! and how it pools backends and bounds clients (`pooling.rs`).

mod pooling;

pub use pooling::{
    PoolMode, RouterLimits, DEFAULT_BACKEND_READ_TIMEOUT, DEFAULT_IDLE_CLIENT_TIMEOUT,
    DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT, DEFAULT_LOGIN_TIMEOUT, DEFAULT_MAX_CLIENT_BUFFER_BYTES,
    DEFAULT_MAX_CLIENT_CONN, DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_POOL_MODE, DEFAULT_POOL_SIZE,
    DEFAULT_POOL_TIMEOUT,
};

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Seg, Validator};

/// Where the router listens when the topology does not say: the port
/// PgBouncer made familiar for a PostgreSQL-speaking proxy.
pub const DEFAULT_ROUTER_LISTEN: &str = "127.0.0.1:6432";

#[derive(Clone, Debug)]
pub struct RouterConfig {
    pub listen: SocketAddr,
    pub users: Vec<RouterUser>,
    /// TLS for the router's clients; `None` when `tls = "off"` (the
    /// default without a certificate).
    pub tls: Option<RouterTls>,
    pub pool_mode: PoolMode,
    /// Backend connections per database.
    pub pool_size: usize,
    pub limits: RouterLimits,
}

/// `[router] tls_cert`, `tls_key` and `tls`: the files are only named
/// here (relative paths resolved against the topology file's directory);
/// the router reads and checks them when it starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterTls {
    /// PEM: the server certificate, then any intermediates.
    pub cert: PathBuf,
    /// PEM: the private key (PKCS#8, RSA or SEC1).
    pub key: PathBuf,
    /// `tls = "require"`: a client that does not ask for TLS is refused.
    pub required: bool,
}

/// How the router treats a client that does or does not ask for TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TlsMode {
    /// Every SSLRequest is answered `N`.
    Off,
    /// TLS for clients that ask, plain connections for the others.
    Allow,
    /// TLS for every client; one that does not ask is refused (28000).
    Require,
}

impl std::str::FromStr for TlsMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(Self::Off),
            "allow" => Ok(Self::Allow),
            "require" => Ok(Self::Require),
            _ => Err(format!(
                "{s:?} is not a TLS mode: write \"off\", \"allow\" or \"require\""
            )),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RouterUser {
    pub name: String,
    pub password: Secret,
}

/// A secret that never prints itself.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(********)")
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRouter {
    listen: Option<String>,
    #[serde(default)]
    users: Vec<RawRouterUser>,
    tls: Option<String>,
    tls_cert: Option<String>,
    tls_key: Option<String>,
    pool_mode: Option<String>,
    pool_size: Option<i64>,
    max_client_conn: Option<i64>,
    pool_timeout: Option<pooling::Raw>,
    login_timeout: Option<pooling::Raw>,
    idle_in_transaction_timeout: Option<pooling::Raw>,
    idle_client_timeout: Option<pooling::Raw>,
    max_message_bytes: Option<pooling::Raw>,
    max_client_buffer_bytes: Option<pooling::Raw>,
    backend_read_timeout: Option<pooling::Raw>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRouterUser {
    name: String,
    password: String,
}

impl Validator<'_> {
    pub(super) fn router(&mut self, raw: Option<RawRouter>, path: &Path) -> Option<RouterConfig> {
        let raw = raw.unwrap_or_default();
        let listen_text = raw.listen.as_deref().unwrap_or(DEFAULT_ROUTER_LISTEN);
        let listen = match listen_text.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.problem(
                    &[Seg::Key("router"), Seg::Key("listen")],
                    format!("{listen_text:?} is not an address like \"127.0.0.1:6432\""),
                );
                None
            }
        };
        let mut users = Vec::new();
        let mut seen = HashMap::new();
        for (i, u) in raw.users.into_iter().enumerate() {
            let at = |key: &'static str| {
                [
                    Seg::Key("router"),
                    Seg::Key("users"),
                    Seg::Index(i),
                    Seg::Key(key),
                ]
            };
            if u.name.trim().is_empty() {
                self.problem(&at("name"), "empty user name");
            } else if seen.insert(u.name.clone(), i).is_some() {
                self.problem(&at("name"), format!("user {:?} is listed twice", u.name));
            }
            if u.password.is_empty() {
                self.problem(&at("password"), "empty password; SCRAM needs one");
            }
            users.push(RouterUser {
                name: u.name,
                password: Secret::new(u.password),
            });
        }
        let tls = self.router_tls(raw.tls, raw.tls_cert, raw.tls_key, path);
        let pooling = self.router_pooling(pooling::RawPooling {
            pool_mode: raw.pool_mode,
            pool_size: raw.pool_size,
            max_client_conn: raw.max_client_conn,
            pool_timeout: raw.pool_timeout,
            login_timeout: raw.login_timeout,
            idle_in_transaction_timeout: raw.idle_in_transaction_timeout,
            idle_client_timeout: raw.idle_client_timeout,
            max_message_bytes: raw.max_message_bytes,
            max_client_buffer_bytes: raw.max_client_buffer_bytes,
            backend_read_timeout: raw.backend_read_timeout,
        });
        let (pool_mode, pool_size, limits) = pooling?;
        Some(RouterConfig {
            listen: listen?,
            users,
            tls: tls?,
            pool_mode,
            pool_size,
            limits,
        })
    }

    /// `tls`, `tls_cert` and `tls_key` of `[router]`: the mode defaults to
    /// `allow` with a certificate and `off` without; a certificate goes
    /// with its key.
    fn router_tls(
        &mut self,
        mode: Option<String>,
        cert: Option<String>,
        key: Option<String>,
        path: &Path,
    ) -> Option<Option<RouterTls>> {
        let at = |key: &'static str| [Seg::Key("router"), Seg::Key(key)];
        let before = self.problems.len();
        let mode = match mode.as_deref().map(str::parse::<TlsMode>) {
            None if cert.is_some() => TlsMode::Allow,
            None => TlsMode::Off,
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                self.problem(&at("tls"), e);
                TlsMode::Off
            }
        };
        let file = |v: &mut Self, key: &'static str, value: &Option<String>| match value {
            Some(p) if p.trim().is_empty() => {
                v.problem(&at(key), "empty path");
                None
            }
            Some(p) => Some(path.parent().unwrap_or(Path::new("")).join(p)),
            None => None,
        };
        let cert_path = file(self, "tls_cert", &cert);
        let key_path = file(self, "tls_key", &key);
        match (&cert, &key) {
            (Some(_), None) => self.problem(
                &at("tls_key"),
                "missing: tls_cert needs the PEM file of its private key",
            ),
            (None, Some(_)) => self.problem(
                &at("tls_cert"),
                "missing: tls_key needs the PEM file of the certificate it signs for",
            ),
            (None, None) if mode != TlsMode::Off => self.problem(
                &at("tls"),
                format!(
                    "\"{}\" needs a certificate: set tls_cert and tls_key (PEM files)",
                    if mode == TlsMode::Require {
                        "require"
                    } else {
                        "allow"
                    }
                ),
            ),
            _ => {}
        }
        if self.problems.len() > before {
            return None;
        }
        Some(match (mode, cert_path, key_path) {
            (TlsMode::Off, _, _) => None,
            (mode, Some(cert), Some(key)) => Some(RouterTls {
                cert,
                key,
                required: mode == TlsMode::Require,
            }),
            _ => None,
        })
    }
}
