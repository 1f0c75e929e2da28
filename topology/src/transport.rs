//! The byte stream under every connection shardline makes to a database:
//! TCP, TLS over TCP, or a Unix socket, negotiated the way libpq does it
//! for the string's `sslmode`.
//!
//! TLS starts with an SSLRequest, answered `S` (then the handshake) or `N`.
//! `allow` and `prefer` try a second way when the first fails for a reason
//! the other could fix, as libpq does ([`Attempt`]). Unix sockets never
//! use TLS (as in libpq) and count as protected: nothing crosses a network.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_postgres::config::Host;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::conn::{ConnString, ConnectError};
use crate::tls::{self, SslMode};

/// A connection to a database server, before or after login.
pub enum DbStream {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Unix(UnixStream),
}

impl DbStream {
    pub fn is_tls(&self) -> bool {
        matches!(self, Self::Tls(_))
    }

    /// TLS or a Unix socket: a password sent on it crosses no network in
    /// clear.
    pub fn is_protected(&self) -> bool {
        !matches!(self, Self::Tcp(_))
    }
}

impl std::fmt::Debug for DbStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tcp(_) => "DbStream::Tcp",
            Self::Tls(_) => "DbStream::Tls",
            Self::Unix(_) => "DbStream::Unix",
        })
    }
}

/// One way of opening a connection, as a step of an sslmode's plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    Plain,
    /// TLS; `or_plain`: a server that answers `N` is used without it.
    Tls {
        or_plain: bool,
    },
}

/// The attempts an sslmode makes, in order; the next one is tried only
/// when [`ConnectError::retry_other_way`] says the last failure may be
/// fixed by it.
pub fn plan(mode: SslMode) -> &'static [Attempt] {
    match mode {
        SslMode::Disable => &[Attempt::Plain],
        SslMode::Allow => &[Attempt::Plain, Attempt::Tls { or_plain: false }],
        SslMode::Prefer => &[Attempt::Tls { or_plain: true }, Attempt::Plain],
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            &[Attempt::Tls { or_plain: false }]
        }
    }
}

/// The SSLRequest code: 1234 in the high 16 bits, 5679 in the low.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 4, 210, 22, 47];

/// Opens the connection for one attempt: TCP (or a Unix socket), then TLS
/// as the attempt says. Bounded by the string's connect_timeout.
pub async fn open(conn: &ConnString, attempt: Attempt) -> Result<DbStream, ConnectError> {
    let timeout = conn.connect_timeout();
    match tokio::time::timeout(timeout, open_unbounded(conn, attempt)).await {
        Ok(r) => r,
        Err(_) => Err(ConnectError::Unreachable {
            target: conn.to_string(),
            cause: format!("no answer within {} s", timeout.as_secs()),
        }),
    }
}

async fn open_unbounded(conn: &ConnString, attempt: Attempt) -> Result<DbStream, ConnectError> {
    let unreachable = |e: io::Error| ConnectError::Unreachable {
        target: conn.to_string(),
        cause: e.to_string(),
    };
    let config = conn.config();
    let host = config.get_hosts().first().cloned();
    if let Some(Host::Unix(dir)) = &host {
        let path = dir.join(format!(".s.PGSQL.{}", conn.port()));
        return UnixStream::connect(&path)
            .await
            .map(DbStream::Unix)
            .map_err(unreachable);
    }
    let tcp = match config.get_hostaddrs().first() {
        Some(addr) => TcpStream::connect((*addr, conn.port())).await,
        None => TcpStream::connect((conn.host().as_str(), conn.port())).await,
    }
    .map_err(unreachable)?;
    tcp.set_nodelay(true).ok();
    if config.get_keepalives() {
        let mut keepalive = socket2::TcpKeepalive::new().with_time(config.get_keepalives_idle());
        if let Some(interval) = config.get_keepalives_interval() {
            keepalive = keepalive.with_interval(interval);
        }
        if let Some(retries) = config.get_keepalives_retries() {
            keepalive = keepalive.with_retries(retries);
        }
        socket2::SockRef::from(&tcp)
            .set_tcp_keepalive(&keepalive)
            .ok();
    }
    let Attempt::Tls { or_plain } = attempt else {
        return Ok(DbStream::Tcp(tcp));
    };
    start_tls(conn, tcp, or_plain).await
}

async fn start_tls(
    conn: &ConnString,
    mut tcp: TcpStream,
    or_plain: bool,
) -> Result<DbStream, ConnectError> {
    let lost = |e: io::Error| ConnectError::Unreachable {
        target: conn.to_string(),
        cause: format!("during the SSL request: {e}"),
    };
    let Some(config) = conn.tls().config() else {
        return Ok(DbStream::Tcp(tcp));
    };
    tcp.write_all(&SSL_REQUEST).await.map_err(lost)?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.map_err(lost)?;
    match answer[0] {
        b'S' => {}
        b'N' if or_plain => return Ok(DbStream::Tcp(tcp)),
        b'N' => {
            return Err(ConnectError::TlsUnsupported {
                target: conn.to_string(),
                sslmode: conn.tls().mode().to_string(),
            })
        }
        // An ErrorResponse: a server too old for SSLRequest, or one
        // refusing connections altogether.
        other => {
            return Err(ConnectError::Refused {
                target: conn.to_string(),
                code: "08P01".into(),
                cause: format!(
                    "answered the SSL request with {:?} instead of S or N",
                    other as char
                ),
            })
        }
    }
    let host = conn.host();
    let name = tls::server_name(&host).map_err(|cause| ConnectError::Tls {
        target: conn.to_string(),
        host: host.clone(),
        kind: tls::TlsFailure::Other,
        cause,
    })?;
    TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map(|s| DbStream::Tls(Box::new(s)))
        .map_err(|e| {
            let (kind, cause) = tls::classify_handshake(&e);
            ConnectError::Tls {
                target: conn.to_string(),
                host,
                kind,
                cause,
            }
        })
}

/// Asks whether the server speaks TLS at all: an SSLRequest on a fresh
/// connection, closed after the one-byte answer (the server logs nothing).
pub(crate) async fn offers_tls(conn: &ConnString) -> Result<bool, ConnectError> {
    let stream = open(conn, Attempt::Plain).await?;
    let DbStream::Tcp(mut tcp) = stream else {
        return Ok(false);
    };
    let probe = async {
        tcp.write_all(&SSL_REQUEST).await?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await?;
        Ok::<_, io::Error>(answer[0] == b'S')
    };
    probe.await.map_err(|e| ConnectError::Unreachable {
        target: conn.to_string(),
        cause: e.to_string(),
    })
}

impl AsyncRead for DbStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for DbStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Self::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Tcp(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
            Self::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Self::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Self::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

impl AsRawFd for DbStream {
    /// The socket's descriptor (under TLS, the TCP socket's).
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Self::Tcp(s) => s.as_raw_fd(),
            Self::Tls(s) => s.get_ref().0.as_raw_fd(),
            Self::Unix(s) => s.as_raw_fd(),
        }
    }
}
