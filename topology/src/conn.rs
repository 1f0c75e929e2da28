//! Connection strings as libpq users write them, and connecting with errors
//! that say what went wrong and what to try.
//!
//! Both the `key=value` and the URL forms are accepted. Whatever a string
//! leaves out comes from the PG* environment variables, then libpq's
//! defaults; a missing password is looked up in `PGPASSWORD`, then in the
//! password file (`PGPASSFILE` or `~/.pgpass`). A [`ConnString`] never prints
//! its password.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config, NoTls};

/// How long a connection attempt may take before the server counts as
/// unreachable: long enough for a busy server, short enough for a person.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A parsed, completed connection string.
#[derive(Clone)]
pub struct ConnString {
    config: Config,
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
    Authentication { target: String, cause: String },
    #[error("database {dbname:?} does not exist on {target}")]
    MissingDatabase { target: String, dbname: String },
    #[error("{target} refused the connection: {cause}")]
    Refused { target: String, cause: String },
}

impl ConnectError {
    /// What a person could try next.
    pub fn hint(&self) -> String {
        match self {
            Self::Unreachable { .. } => {
                "is the server running and listening on that host and port? (`shardline dev up` starts a local fleet)"
                    .into()
            }
            Self::Authentication { .. } => {
                "check the user and password in the connection string, PGPASSWORD or ~/.pgpass".into()
            }
            Self::MissingDatabase { dbname, .. } => {
                format!("create it (createdb {dbname}) or fix the database name in the topology")
            }
            Self::Refused { .. } => "check the server's log and pg_hba.conf".into(),
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
        let mut config = Config::from_str(s).map_err(|e| ConnStringError::Invalid {
            reason: scrub(&e.to_string(), s),
        })?;
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
        if config.get_password().is_none() {
            let from_file = || {
                let file = env("PGPASSFILE")
                    .map(PathBuf::from)
                    .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".pgpass")))?;
                let text = std::fs::read_to_string(file).ok()?;
                let conn = ConnString {
                    config: config.clone(),
                };
                pgpass_lookup(&text, &conn.host(), conn.port(), conn.dbname(), conn.user())
            };
            if let Some(pw) = env("PGPASSWORD").or_else(from_file) {
                config.password(pw);
            }
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("shardline");
        }
        Ok(Self { config })
    }

    pub fn config(&self) -> &Config {
        &self.config
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

    /// The same server, another database.
    pub fn with_dbname(&self, dbname: &str) -> Self {
        let mut config = self.config.clone();
        config.dbname(dbname);
        Self { config }
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

    /// A libpq key=value string, password included, for tools such as psql
    /// that take one. Never log it.
    pub fn to_libpq_string(&self) -> String {
        let quote = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
        let mut parts = vec![
            format!("host={}", quote(&self.host())),
            format!("port={}", self.port()),
            format!("user={}", quote(self.user())),
            format!("dbname={}", quote(self.dbname())),
        ];
        if let Some(pw) = self.config.get_password() {
            parts.push(format!("password={}", quote(&String::from_utf8_lossy(pw))));
        }
        parts.join(" ")
    }

    /// Opens a connection and drives it on the current tokio runtime.
    pub async fn connect(&self) -> Result<Client, ConnectError> {
        let (client, connection) = self
            .config
            .connect(NoTls)
            .await
            .map_err(|e| self.classify(e))?;
        let target = self.to_string();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%target, error = %e, "connection closed");
            }
        });
        Ok(client)
    }

    fn classify(&self, e: tokio_postgres::Error) -> ConnectError {
        let target = self.to_string();
        if let Some(db) = e.as_db_error() {
            let cause = crate::pgerror::describe(&e);
            return match db.code().code() {
                "28P01" | "28000" => ConnectError::Authentication { target, cause },
                "3D000" => ConnectError::MissingDatabase {
                    target,
                    dbname: self.dbname().to_string(),
                },
                _ => ConnectError::Refused { target, cause },
            };
        }
        let cause = std::error::Error::source(&e)
            .map(|s| s.to_string())
            .unwrap_or_else(|| e.to_string());
        if cause.contains("password missing") || cause.contains("password") {
            return ConnectError::Authentication { target, cause };
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
