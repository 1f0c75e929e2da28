//! Connection strings as libpq users write them, and connecting with errors
//! that say what went wrong and what to try.
//!
//! Both the `key=value` and the URL forms are accepted. Whatever a string
//! leaves out comes from the PG* environment variables, then libpq's
//! defaults; a missing password is looked up in `PGPASSWORD`, then in the
//! password file (`PGPASSFILE` or `~/.pgpass`). A [`ConnString`] never prints
//! its password.
//!
//! TLS (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`; see [`crate::tls`])
//! and `require_auth` (see [`crate::auth`]) are shardline's, not
//! tokio-postgres's: [`ConnString::open`] negotiates the stream itself
//! ([`crate::transport`]) and hands tokio-postgres a connection that is
//! already encrypted, watched until the login is over.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::config::{Host, SslMode as PgSslMode};
use tokio_postgres::tls::NoTlsStream;
use tokio_postgres::{Client, Config, Connection, NoTls};

use crate::auth::{self, AuthCheck, AuthRefusal, AuthWatch, RequireAuth};
use crate::tls::{TlsFailure, TlsParams, TlsSettings};
use crate::transport::{self, Attempt, DbStream};

/// How long a connection attempt may take before the server counts as
/// unreachable: long enough for a busy server, short enough for a person.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A tokio-postgres connection over shardline's transport; drive it (spawn
/// it) for the [`Client`] to work.
pub type DbConnection = Connection<AuthWatch<DbStream>, NoTlsStream>;

/// The parameters shardline reads itself; the rest go to tokio-postgres.
const OWN_PARAMS: &[&str] = &[
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "require_auth",
    "sslnegotiation",
];

/// A parsed, completed connection string.
#[derive(Clone)]
pub struct ConnString {
    /// Everything tokio-postgres knows, with TLS off: the stream it gets
    /// is already negotiated.
    config: Config,
    tls: TlsSettings,
    require_auth: Option<RequireAuth>,
}

/// Why a connection string could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnStringError {
    #[error("invalid connection string: {reason}")]
    Invalid { reason: String },
    #[error("connection string names {0} hosts; shardline needs exactly one per server")]
    MultipleHosts(usize),
}

/// Why a connection failed, classified so the CLI can give a hint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    #[error("cannot reach {target}: {cause}")]
    Unreachable { target: String, cause: String },
    #[error("authentication failed for {target}: {cause}")]
    Authentication {
        target: String,
        code: String,
        cause: String,
    },
    #[error("database {dbname:?} does not exist on {target}")]
    MissingDatabase { target: String, dbname: String },
    #[error("{target} refused the connection: {cause}")]
    Refused {
        target: String,
        code: String,
        cause: String,
    },
    #[error("{target} does not support SSL, and sslmode={sslmode} requires it")]
    TlsUnsupported { target: String, sslmode: String },
    #[error("TLS with {target} failed (host {host:?}): {cause}")]
    Tls {
        target: String,
        host: String,
        kind: TlsFailure,
        cause: String,
    },
    #[error("refused to log in to {target}: {refusal}")]
    AuthRefused {
        target: String,
        refusal: AuthRefusal,
    },
    #[error("{target} asks for {method}, which shardline does not speak")]
    UnsupportedAuth { target: String, method: String },
}

impl ConnectError {
    /// What a person could try next.
    pub fn hint(&self) -> String {
        match self {
            Self::Unreachable { .. } => {
                "is the server running and listening on that host and port? (`shardline dev up` starts a local fleet)"
                    .into()
            }
            Self::Authentication { code, .. } if code == "28000" => {
                "check the server's pg_hba.conf: a hostssl line needs sslmode=require or stronger, clientcert=verify-full or cert needs sslcert and sslkey (a certificate whose CN is the user)"
                    .into()
            }
            Self::Authentication { .. } => {
                "check the user and password in the connection string, PGPASSWORD or ~/.pgpass".into()
            }
            Self::MissingDatabase { dbname, .. } => {
                format!("create it (createdb {dbname}) or fix the database name in the topology")
            }
            Self::Refused { .. } => "check the server's log and pg_hba.conf".into(),
            Self::TlsUnsupported { .. } => {
                "turn TLS on in the server (ssl = on with ssl_cert_file and ssl_key_file in postgresql.conf), or use sslmode=prefer where the network is trusted"
                    .into()
            }
            Self::Tls { kind, .. } => match kind {
                TlsFailure::UnknownIssuer => {
                    "sslrootcert must hold the CA that signed the server's certificate (see the chain with `openssl s_client -starttls postgres -connect HOST:PORT -showcerts`)"
                }
                TlsFailure::WrongName => {
                    "connect by a name the certificate lists in its subjectAltName, reissue the certificate for this host, or use sslmode=verify-ca (checks the CA, not the name)"
                }
                TlsFailure::Expired => {
                    "renew the server's certificate (ssl_cert_file) and reload the server, or check this machine's clock"
                }
                TlsFailure::ClientCertificate => {
                    "the server did not accept the client certificate: set sslcert and sslkey to a certificate signed by the server's ssl_ca_file"
                }
                _ => {
                    "compare ssl_cert_file on the server with sslrootcert here; `openssl s_client -starttls postgres -connect HOST:PORT` shows what the server presents"
                }
            }
            .into(),
            Self::AuthRefused { refusal, .. } => match refusal {
                AuthRefusal::Unencrypted(m) => format!(
                    "connect with sslmode=require (or verify-full), or move the server to SCRAM (password_encryption = 'scram-sha-256', scram-sha-256 in pg_hba.conf, then set the password again), or allow it explicitly with require_auth={m}"
                ),
                AuthRefusal::NotAllowed { method, .. } => format!(
                    "add {method} to require_auth, or change the method in the server's pg_hba.conf"
                ),
                AuthRefusal::Incomplete => {
                    "something may be impersonating the server: connect with sslmode=verify-full".into()
                }
            },
            Self::UnsupportedAuth { .. } => {
                "use scram-sha-256, md5, password, trust or cert for this user in the server's pg_hba.conf".into()
            }
        }
    }

    /// The SQLSTATE a proxy answers its own client with: the server's own
    /// where it sent one, else as libpq-based clients classify a failed
    /// connection.
    pub fn sqlstate(&self) -> &str {
        match self {
            Self::Authentication { code, .. } | Self::Refused { code, .. } => code,
            Self::MissingDatabase { .. } => "3D000",
            Self::AuthRefused { .. } | Self::UnsupportedAuth { .. } => "28000",
            Self::Unreachable { .. } | Self::TlsUnsupported { .. } | Self::Tls { .. } => "08001",
        }
    }

    /// Whether the next attempt of the sslmode's plan (TLS after plain,
    /// plain after TLS) could succeed where this one failed.
    fn retry_other_way(&self) -> bool {
        match self {
            Self::Authentication { code, .. } => code == "28000",
            Self::AuthRefused { refusal, .. } => matches!(refusal, AuthRefusal::Unencrypted(_)),
            Self::Tls { .. } | Self::TlsUnsupported { .. } => true,
            _ => false,
        }
    }
}

impl ConnString {
    /// Parses `s` and fills in what it leaves out from the environment.
    pub fn parse(s: &str) -> Result<Self, ConnStringError> {
        Self::parse_with(s, &|name| std::env::var(name).ok())
    }

    /// [`ConnString::parse`] with an explicit environment, for tests.
    pub fn parse_with(
        s: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConnStringError> {
        let invalid = |reason: String| ConnStringError::Invalid { reason };
        let (rest, own) = split_params(s).map_err(|r| invalid(scrub(&r, s)))?;
        let own_value = |key: &str, var: &str| {
            own.iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .or_else(|| env(var))
        };
        if let Some(n) = own_value("sslnegotiation", "PGSSLNEGOTIATION") {
            if n != "postgres" {
                return Err(invalid(format!(
                    "sslnegotiation={n} is not supported; shardline asks for TLS with an SSLRequest (sslnegotiation=postgres)"
                )));
            }
        }
        let tls = TlsSettings::load(
            TlsParams {
                sslmode: own_value("sslmode", "PGSSLMODE"),
                sslrootcert: own_value("sslrootcert", "PGSSLROOTCERT"),
                sslcert: own_value("sslcert", "PGSSLCERT"),
                sslkey: own_value("sslkey", "PGSSLKEY"),
            },
            env,
        )
        .map_err(invalid)?;
        let require_auth = own_value("require_auth", "PGREQUIREAUTH")
            .map(|r| RequireAuth::parse(&r))
            .transpose()
            .map_err(invalid)?;
        let mut config = Config::from_str(&rest).map_err(|e| ConnStringError::Invalid {
            reason: scrub(&e.to_string(), s),
        })?;
        config.ssl_mode(PgSslMode::Disable);
        if config.get_hosts().len() > 1 {
            return Err(ConnStringError::MultipleHosts(config.get_hosts().len()));
        }
        if config.get_hosts().is_empty() {
            config.host(env("PGHOST").as_deref().unwrap_or("localhost"));
        }
        if config.get_ports().is_empty() {
            let port = match env("PGPORT") {
                Some(p) => p.parse::<u16>().map_err(|_| ConnStringError::Invalid {
                    reason: format!("PGPORT={p:?} is not a port number"),
                })?,
                None => 5432,
            };
            config.port(port);
        }
        if config.get_user().is_none() {
            let user = env("PGUSER")
                .or_else(|| env("USER"))
                .unwrap_or_else(|| "postgres".into());
            config.user(&user);
        }
        if config.get_dbname().is_none() {
            let db = env("PGDATABASE")
                .unwrap_or_else(|| config.get_user().unwrap_or_default().to_string());
            config.dbname(&db);
        }
        let mut conn = Self {
            config,
            tls,
            require_auth,
        };
        if conn.config.get_password().is_none() {
            let from_file = || {
                let file = env("PGPASSFILE")
                    .map(PathBuf::from)
                    .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".pgpass")))?;
                let text = std::fs::read_to_string(file).ok()?;
                pgpass_lookup(&text, &conn.host(), conn.port(), conn.dbname(), conn.user())
            };
            if let Some(pw) = env("PGPASSWORD").or_else(from_file) {
                conn.config.password(pw);
            }
        }
        if conn.config.get_connect_timeout().is_none() {
            conn.config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        if conn.config.get_application_name().is_none() {
            conn.config.application_name("shardline");
        }
        Ok(conn)
    }

    /// tokio-postgres's view of the string (TLS and require_auth are not
    /// in it: see [`ConnString::tls`]).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The string's TLS settings.
    pub fn tls(&self) -> &TlsSettings {
        &self.tls
    }

    pub fn require_auth(&self) -> Option<&RequireAuth> {
        self.require_auth.as_ref()
    }

    pub fn host(&self) -> String {
        match self.config.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(Host::Unix(p)) => p.display().to_string(),
            None => String::new(),
        }
    }

    pub fn port(&self) -> u16 {
        self.config.get_ports().first().copied().unwrap_or(5432)
    }

    pub fn dbname(&self) -> &str {
        self.config.get_dbname().unwrap_or_default()
    }

    pub fn user(&self) -> &str {
        self.config.get_user().unwrap_or_default()
    }

    pub fn has_password(&self) -> bool {
        self.config.get_password().is_some()
    }

    /// The password, for code that logs in by itself. Never log it.
    pub fn password(&self) -> Option<&[u8]> {
        self.config.get_password()
    }

    pub fn connect_timeout(&self) -> Duration {
        self.config
            .get_connect_timeout()
            .copied()
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT)
    }

    /// The same server, another database.
    pub fn with_dbname(&self, dbname: &str) -> Self {
        let mut conn = self.clone();
        conn.config.dbname(dbname);
        conn
    }

    /// Identity of the database this string points at, for spotting two
    /// topology entries that name the same database.
    pub fn identity(&self) -> (String, u16, String) {
        (
            self.host().to_ascii_lowercase(),
            self.port(),
            self.dbname().to_string(),
        )
    }

    /// A libpq key=value string, password and TLS settings included, for
    /// tools such as psql that take one. Never log it.
    pub fn to_libpq_string(&self) -> String {
        let mut parts = vec![
            format!("host={}", quote_value(&self.host())),
            format!("port={}", self.port()),
            format!("user={}", quote_value(self.user())),
            format!("dbname={}", quote_value(self.dbname())),
        ];
        if let Some(pw) = self.config.get_password() {
            parts.push(format!(
                "password={}",
                quote_value(&String::from_utf8_lossy(pw))
            ));
        }
        for (key, value) in self.tls.libpq_params() {
            parts.push(format!("{key}={}", quote_value(&value)));
        }
        if let Some(rule) = &self.require_auth {
            parts.push(format!("require_auth={}", quote_value(rule.as_str())));
        }
        parts.join(" ")
    }

    /// Opens a connection and drives it on the current tokio runtime.
    pub async fn connect(&self) -> Result<Client, ConnectError> {
        let (client, connection) = self.open().await?;
        let target = self.to_string();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%target, error = %e, "connection closed");
            }
        });
        Ok(client)
    }

    /// Opens a connection and returns it with its driver, for callers that
    /// read its asynchronous messages (notifications).
    pub async fn open(&self) -> Result<(Client, DbConnection), ConnectError> {
        self.each_attempt(|stream| async move {
            let check = AuthCheck::new(self.require_auth.clone(), stream.is_protected());
            let watched = AuthWatch::new(stream, check);
            let login = self.config.connect_raw(watched, NoTls);
            match tokio::time::timeout(self.connect_timeout(), login).await {
                Ok(r) => r.map_err(|e| self.classify(e)),
                Err(_) => Err(ConnectError::Unreachable {
                    target: self.to_string(),
                    cause: format!(
                        "no answer to the login within {} s",
                        self.connect_timeout().as_secs()
                    ),
                }),
            }
        })
        .await
    }

    /// Runs `login` on the streams of the sslmode's plan (see
    /// [`transport::plan`]) until one succeeds or a failure is final.
    pub async fn each_attempt<T, F, Fut>(&self, mut login: F) -> Result<T, ConnectError>
    where
        F: FnMut(DbStream) -> Fut,
        Fut: std::future::Future<Output = Result<T, ConnectError>>,
    {
        let mut last = None;
        let mut plain_tried = false;
        for &attempt in transport::plan(self.tls.mode()) {
            if attempt == Attempt::Plain && plain_tried {
                break;
            }
            let result = match transport::open(self, attempt).await {
                Ok(stream) => {
                    plain_tried |= !stream.is_tls();
                    login(stream).await
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(t) => return Ok(t),
                Err(e) if e.retry_other_way() => {
                    tracing::debug!(target = %self, error = %e, "trying the sslmode's other way");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("every sslmode's plan has an attempt"))
    }

    /// A server's ErrorResponse during login, classified.
    pub(crate) fn server_error(&self, code: String, cause: String) -> ConnectError {
        let target = self.to_string();
        match code.as_str() {
            "28P01" | "28000" => ConnectError::Authentication {
                target,
                code,
                cause,
            },
            "3D000" => ConnectError::MissingDatabase {
                target,
                dbname: self.dbname().to_string(),
            },
            _ => ConnectError::Refused {
                target,
                code,
                cause,
            },
        }
    }

    fn classify(&self, e: tokio_postgres::Error) -> ConnectError {
        let target = self.to_string();
        if let Some(db) = e.as_db_error() {
            return self.server_error(db.code().code().to_string(), db.message().to_string());
        }
        if let Some(refusal) = auth::refusal_in(&e) {
            return ConnectError::AuthRefused { target, refusal };
        }
        let cause = std::error::Error::source(&e)
            .map(|s| s.to_string())
            .unwrap_or_else(|| e.to_string());
        if cause.contains("password") {
            return ConnectError::Authentication {
                target,
                code: "28P01".into(),
                cause,
            };
        }
        ConnectError::Unreachable { target, cause }
    }
}

impl fmt::Display for ConnString {
    /// `user@host:port/dbname`: everything but the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}@{}:{}/{}",
            self.user(),
            self.host(),
            self.port(),
            self.dbname()
        )
    }
}

impl fmt::Debug for ConnString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnString({self})")
    }
}

/// A libpq value, quoted.
fn quote_value(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Takes shardline's own parameters ([`OWN_PARAMS`]) out of a string in
/// either form; returns the rest, for tokio-postgres, and them.
fn split_params(s: &str) -> Result<(String, Vec<(String, String)>), String> {
    let own = |k: &str| OWN_PARAMS.contains(&k);
    if s.starts_with("postgres://") || s.starts_with("postgresql://") {
        let Some((base, query)) = s.split_once('?') else {
            return Ok((s.to_string(), Vec::new()));
        };
        let mut kept = Vec::new();
        let mut taken = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(k)?;
            if own(&key) {
                taken.push((key, percent_decode(v)?));
            } else {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return Ok((rest, taken));
    }
    let mut kept = Vec::new();
    let mut taken = Vec::new();
    for (key, value) in libpq_pairs(s)? {
        if own(&key) {
            taken.push((key, value));
        } else {
            kept.push(format!("{key}={}", quote_value(&value)));
        }
    }
    Ok((kept.join(" "), taken))
}

/// The `key=value` pairs of a libpq string: spaces around `=` allowed,
/// values in single quotes or bare, `\` escaping the next character.
fn libpq_pairs(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!("{key:?} has no value (expected {key}=value)"));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => value.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err(format!("the value of {key} misses its closing quote")),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent-encoding in {s:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8 once decoded"))
}

/// Finds the password for a connection in a `.pgpass` file: the first line
/// whose fields match, `*` matching anything, `\` escaping `:` and `\`.
fn pgpass_lookup(text: &str, host: &str, port: u16, db: &str, user: &str) -> Option<String> {
    let port = port.to_string();
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .find_map(|line| {
            let fields = split_pgpass_line(line);
            if fields.len() != 5 {
                return None;
            }
            let matches = |pattern: &str, value: &str| pattern == "*" || pattern == value;
            let host_matches = matches(&fields[0], host)
                || (fields[0] == "localhost" && (host == "127.0.0.1" || host.starts_with('/')));
            (host_matches
                && matches(&fields[1], &port)
                && matches(&fields[2], db)
                && matches(&fields[3], user))
            .then(|| fields[4].clone())
        })
}

fn split_pgpass_line(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    fields.last_mut().unwrap().push(next);
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut().unwrap().push(c),
        }
    }
    fields
}

/// Removes a connection string's password from an error message that may
/// quote the string back.
fn scrub(message: &str, conn: &str) -> String {
    let mut out = message.to_string();
    for secret in password_candidates(conn) {
        if !secret.is_empty() {
            out = out.replace(&secret, "********");
        }
    }
    out
}

fn password_candidates(conn: &str) -> Vec<String> {
    let mut found = Vec::new();
    if let Ok(url) = url::Url::parse(conn) {
        if let Some(pw) = url.password() {
            found.push(pw.to_string());
        }
    } else if let Some(rest) = conn.split("://").nth(1) {
        // A URL too broken for the parser: take what sits between ':' and '@'.
        if let Some((userinfo, _)) = rest.split_once('@') {
            if let Some((_, pw)) = userinfo.split_once(':') {
                found.push(pw.to_string());
            }
        }
    }
    for part in conn.split_whitespace() {
        if let Some(pw) = part.strip_prefix("password=") {
            found.push(pw.trim_matches('\'').to_string());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn both_forms_parse_to_the_same_target() {
        let none = env(&[]);
        let url =
            ConnString::parse_with("postgres://alice:s3cret@db1:6543/payments", &none).unwrap();
        let kv = ConnString::parse_with(
            "host=db1 port=6543 user=alice password=s3cret dbname=payments",
            &none,
        )
        .unwrap();
        assert_eq!(url.identity(), kv.identity());
        assert_eq!(url.to_string(), "alice@db1:6543/payments");
        assert!(!format!("{url:?}").contains("s3cret"));
    }

    #[test]
    fn environment_fills_the_gaps() {
        let vars = [
            ("PGHOST", "10.0.0.9"),
            ("PGPORT", "7000"),
            ("PGUSER", "bob"),
            ("PGPASSWORD", "pw"),
        ];
        let c = ConnString::parse_with("dbname=ledger", &env(&vars)).unwrap();
        assert_eq!(c.to_string(), "bob@10.0.0.9:7000/ledger");
        assert!(c.has_password());
        let c = ConnString::parse_with("", &env(&[("USER", "carol")])).unwrap();
        assert_eq!(c.to_string(), "carol@localhost:5432/carol");
        assert!(!c.has_password());
    }

    #[test]
    fn pgpass_matches_with_wildcards_and_escapes() {
        let text =
            "# comment\nother:5432:*:alice:nope\ndb1:*:pay*:alice:no\ndb1:6543:*:alice:pa\\:ss\n";
        assert_eq!(
            pgpass_lookup(text, "db1", 6543, "payments", "alice").as_deref(),
            Some("pa:ss")
        );
        assert_eq!(pgpass_lookup(text, "db2", 6543, "payments", "alice"), None);
        let dir = std::env::temp_dir().join(format!("pgpass-test-{}", std::process::id()));
        std::fs::write(&dir, text).unwrap();
        let path = dir.display().to_string();
        let c = ConnString::parse_with(
            "postgres://alice@db1:6543/payments",
            &env(&[("PGPASSFILE", &path)]),
        )
        .unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert!(c.has_password());
    }

    #[test]
    fn tls_and_require_auth_parse_from_both_forms_and_the_environment() {
        let none = env(&[]);
        let url = ConnString::parse_with(
            "postgresql://alice:pw@db1:6543/payments?application_name=x&sslmode=require&require_auth=scram-sha-256%2Cnone",
            &none,
        )
        .unwrap();
        let kv = ConnString::parse_with(
            "host=db1 port = 6543 user=alice password='p w' dbname=payments sslmode = 'require' require_auth=scram-sha-256,none",
            &none,
        )
        .unwrap();
        for c in [&url, &kv] {
            assert_eq!(c.tls().mode(), crate::SslMode::Require);
            assert_eq!(c.require_auth().unwrap().as_str(), "scram-sha-256,none");
            assert_eq!(c.identity(), ("db1".into(), 6543, "payments".into()));
        }
        assert_eq!(url.config().get_application_name(), Some("x"));
        assert_eq!(kv.password(), Some(&b"p w"[..]));
        let libpq = kv.to_libpq_string();
        assert!(
            libpq.contains("sslmode='require'")
                && libpq.contains("require_auth='scram-sha-256,none'"),
            "{libpq}"
        );
        let again = ConnString::parse_with(&libpq, &none).unwrap();
        assert_eq!(again.tls().mode(), crate::SslMode::Require);
        assert_eq!(again.password(), Some(&b"p w"[..]));

        let from_env = ConnString::parse_with(
            "host=db1",
            &env(&[("PGSSLMODE", "disable"), ("PGREQUIREAUTH", "password")]),
        )
        .unwrap();
        assert_eq!(from_env.tls().mode(), crate::SslMode::Disable);
        assert_eq!(from_env.require_auth().unwrap().as_str(), "password");
        // The string wins over the environment.
        let c = ConnString::parse_with("host=db1 sslmode=allow", &env(&[("PGSSLMODE", "disable")]))
            .unwrap();
        assert_eq!(c.tls().mode(), crate::SslMode::Allow);
        assert_eq!(
            ConnString::parse_with("host=db1", &none)
                .unwrap()
                .tls()
                .mode(),
            crate::SslMode::Prefer
        );
    }

    #[test]
    fn bad_tls_parameters_are_named() {
        let none = env(&[]);
        let err = |s: &str| ConnString::parse_with(s, &none).unwrap_err().to_string();
        assert!(err("host=db1 sslmode=verify").contains("sslmode \"verify\" is not one of"));
        assert!(err("postgres://db1/x?require_auth=kerberos")
            .contains("require_auth method \"kerberos\""));
        assert!(err("host=db1 sslnegotiation=direct")
            .contains("sslnegotiation=direct is not supported"));
        assert!(
            err("host=db1 sslrootcert=/nonexistent/ca.pem sslmode=verify-ca")
                .contains("sslrootcert /nonexistent/ca.pem: cannot read it")
        );
        assert!(err("host=db1 password='unclosed").contains("closing quote"));
    }

    #[test]
    fn errors_never_echo_the_password() {
        let err = ConnString::parse_with("postgres://alice:hunter2@db1:notaport/x", &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
        let err = ConnString::parse_with("host=db1 password=hunter2 bogus_key=1", &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }
}
