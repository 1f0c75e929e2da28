//! Replication sessions (pgwire-replication, for backfill's snapshot and
//! CDC's stream) under the same TLS and password rules as every other
//! connection.
//!
//! pgwire-replication opens its own socket and answers a clear-text
//! password request whenever a server sends one; its TLS feature would
//! bring a second crypto provider (aws-lc). So when TLS or a password is at
//! stake, a relay stands in front of it: pgwire-replication connects to a
//! Unix socket in a private directory (mode 0700, removed once connected),
//! the relay logs in to the server itself ([`crate::login`] over
//! [`crate::transport`]: the same sslmode plan, certificate checks and
//! `require_auth` rule), answers pgwire-replication's startup with
//! AuthenticationOk, then copies bytes both ways. pgwire-replication never
//! holds the password. A string with nothing to protect (no password, no
//! `require_auth`, and `sslmode=disable` or a server that offers no TLS)
//! connects directly, without the extra hop.

use std::path::{Path, PathBuf};
use std::time::Duration;

use pgwire_replication::{Publication, ReplicationConfig, TlsConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::conn::{ConnString, ConnectError};
use crate::login;
use crate::tls::SslMode;
use crate::transport;

/// How long the relay waits for pgwire-replication to connect to it.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(30);

/// Buffer of each direction of the relay: a WAL stream is bulk data.
const RELAY_BUFFER: usize = 64 * 1024;

/// The largest startup packet accepted from pgwire-replication.
const MAX_STARTUP: usize = 10_000;

impl ConnString {
    /// A replication config for this string's server: host, port, user,
    /// database and transport set; the caller adds the rest (start LSN,
    /// intervals, application name).
    pub async fn replication(
        &self,
        slot: &str,
        publication: impl Into<Publication>,
    ) -> Result<ReplicationConfig, ConnectError> {
        let base = |host: String, port: u16| {
            ReplicationConfig::new(host, self.user(), "", self.dbname(), slot, publication)
                .with_port(port)
                .with_tls(TlsConfig::disabled())
        };
        if self.nothing_to_protect().await? {
            return Ok(base(self.host(), self.port()));
        }
        let (dir, listener) = private_socket(self.port())?;
        tokio::spawn(relay(self.clone(), listener, dir.clone()));
        Ok(base(dir.display().to_string(), self.port()))
    }

    async fn nothing_to_protect(&self) -> Result<bool, ConnectError> {
        if self.has_password() || self.require_auth().is_some() {
            return Ok(false);
        }
        Ok(match self.tls().mode() {
            SslMode::Disable => true,
            SslMode::Prefer => !transport::offers_tls(self).await?,
            _ => false,
        })
    }
}

/// A listening Unix socket in a fresh directory only this user may enter.
fn private_socket(port: u16) -> Result<(PathBuf, UnixListener), ConnectError> {
    use std::os::unix::fs::DirBuilderExt;
    let failed = |e: std::io::Error| ConnectError::Unreachable {
        target: "the replication relay".into(),
        cause: format!("cannot create its socket: {e}"),
    };
    let mut base = std::env::temp_dir();
    // sun_path holds 108 bytes.
    if base.as_os_str().len() > 60 {
        base = PathBuf::from("/tmp");
    }
    let dir = base.join(format!(
        "shardline-relay-{}-{:016x}",
        std::process::id(),
        rand_u64()
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(failed)?;
    let listener = UnixListener::bind(dir.join(format!(".s.PGSQL.{port}"))).map_err(|e| {
        let _ = std::fs::remove_dir_all(&dir);
        failed(e)
    })?;
    Ok((dir, listener))
}

/// Enough randomness for a directory name nobody can guess in advance.
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish()
}

async fn relay(conn: ConnString, listener: UnixListener, dir: PathBuf) {
    let accepted = tokio::time::timeout(ACCEPT_TIMEOUT, listener.accept()).await;
    drop(listener);
    remove(&dir);
    let Ok(Ok((mut client, _))) = accepted else {
        tracing::debug!(target = %conn, "the replication client never connected to its relay");
        return;
    };
    let params = match read_startup(&mut client).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(target = %conn, error = %e, "bad startup from the replication client");
            return;
        }
    };
    let upstream = conn
        .each_attempt(|mut stream| {
            let params = &params;
            let conn = &conn;
            async move {
                let pairs: Vec<(&str, &str)> = params
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let protected = stream.is_protected();
                let login = login::login(&mut stream, conn, &pairs, protected);
                match tokio::time::timeout(conn.connect_timeout(), login).await {
                    Ok(r) => r.map(|()| stream),
                    Err(_) => Err(ConnectError::Unreachable {
                        target: conn.to_string(),
                        cause: format!(
                            "no answer to the login within {} s",
                            conn.connect_timeout().as_secs()
                        ),
                    }),
                }
            }
        })
        .await;
    let mut upstream = match upstream {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(target = %conn, error = %e, hint = %e.hint(), "replication login failed");
            let _ = client.write_all(&error_response(&e)).await;
            return;
        }
    };
    // AuthenticationOk; the server's ParameterStatus, BackendKeyData and
    // ReadyForQuery follow through the copy.
    if client
        .write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 0])
        .await
        .is_err()
    {
        return;
    }
    if let Err(e) = tokio::io::copy_bidirectional_with_sizes(
        &mut client,
        &mut upstream,
        RELAY_BUFFER,
        RELAY_BUFFER,
    )
    .await
    {
        tracing::debug!(target = %conn, error = %e, "replication relay closed");
    }
}

fn remove(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

/// The startup packet's parameters (after the protocol version).
async fn read_startup(s: &mut UnixStream) -> std::io::Result<Vec<(String, String)>> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let len = s.read_u32().await? as usize;
    if !(8..=MAX_STARTUP).contains(&len) {
        return Err(bad("startup packet length"));
    }
    let mut body = vec![0u8; len - 4];
    s.read_exact(&mut body).await?;
    if body[..4] != 196608u32.to_be_bytes() {
        return Err(bad("startup protocol version"));
    }
    let strings: Vec<String> = body[4..]
        .split(|&b| b == 0)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    Ok(strings
        .chunks_exact(2)
        .filter(|kv| !kv[0].is_empty())
        .map(|kv| (kv[0].clone(), kv[1].clone()))
        .collect())
}

/// A FATAL ErrorResponse carrying the refusal and its hint: the replication
/// client reports the message, and drops hints, hence both in one.
fn error_response(e: &ConnectError) -> Vec<u8> {
    let mut body = Vec::new();
    for (kind, value) in [
        (b'S', "FATAL".to_string()),
        (b'V', "FATAL".to_string()),
        (b'C', e.sqlstate().to_string()),
        (b'M', format!("{e}; hint: {}", e.hint())),
    ] {
        body.push(kind);
        body.extend(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = vec![b'E'];
    out.extend(((body.len() + 4) as u32).to_be_bytes());
    out.extend(body);
    out
}
