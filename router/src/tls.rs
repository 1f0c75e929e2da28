//! TLS for the router's clients: the server configuration read from the
//! topology's PEM files at start-up, and [`ClientStream`], the client
//! connection a session reads and writes, plain or encrypted.
//!
//! A client asks for TLS the classic way, with an SSLRequest answered `S`
//! (then the handshake) or `N`; or, since PostgreSQL 17, with
//! `sslnegotiation=direct`: its first bytes are a TLS ClientHello, which
//! must offer the ALPN protocol `postgresql`. Either way the startup
//! packet, the login and every statement then travel encrypted. Only the
//! router's certificate is checked (by the client); client certificates
//! are not asked for.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use shardline_topology::RouterTls;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, InconsistentKeys, ServerConfig};
use tokio_rustls::{server, TlsAcceptor};

use crate::message::{self as msg, FrameError};
use crate::ProxyError;

/// The ALPN protocol of PostgreSQL 17 clients; required for direct TLS.
pub const ALPN: &[u8] = b"postgresql";

/// The message a client that does not ask for TLS gets under
/// `tls = "require"` (SQLSTATE 28000, as PostgreSQL's own refusal of a
/// connection no `hostssl` line lets in without encryption).
pub const REQUIRED: &str = "the router requires TLS; connect with sslmode=require";

/// The content type of a TLS handshake record: the first byte of a
/// ClientHello, where a startup packet would start its length.
const HANDSHAKE_RECORD: u8 = 0x16;

/// How long a client may take over its TLS handshake, as PostgreSQL's
/// default `authentication_timeout`.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

/// The router's TLS settings, loaded and checked.
pub(crate) struct Tls {
    acceptor: TlsAcceptor,
    /// `tls = "require"`: a client that did not ask for TLS is refused.
    pub required: bool,
}

impl Tls {
    /// Reads the certificate chain and key named by the topology and
    /// checks that they belong together, so that a mistake stops the
    /// router at start-up rather than failing every client's handshake.
    pub fn load(config: &RouterTls) -> Result<Self, ProxyError> {
        let read = |file: &'static str, path: &Path| {
            std::fs::read(path).map_err(|cause| ProxyError::TlsFile {
                file,
                path: path.to_path_buf(),
                cause: cause.to_string(),
            })
        };
        let pem = |file: &'static str, path: &Path, expected: &'static str| ProxyError::TlsFile {
            file,
            path: path.to_path_buf(),
            cause: format!("holds no {expected}"),
        };
        let certs = CertificateDer::pem_slice_iter(&read("tls_cert", &config.cert)?)
            .collect::<Result<Vec<_>, _>>()
            .ok()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| pem("tls_cert", &config.cert, "PEM certificate"))?;
        let key = PrivateKeyDer::from_pem_slice(&read("tls_key", &config.key)?).map_err(|_| {
            pem(
                "tls_key",
                &config.key,
                "unencrypted PEM private key (PKCS#8, RSA or SEC1)",
            )
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // The key alone first, so that its errors name its file.
        (provider.key_provider.load_private_key(key.clone_key())).map_err(|e| {
            ProxyError::TlsFile {
                file: "tls_key",
                path: config.key.clone(),
                cause: e.to_string(),
            }
        })?;
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
            .map_err(|e| match e {
                rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch) => {
                    ProxyError::TlsKeyMismatch {
                        cert: config.cert.clone(),
                        key: config.key.clone(),
                    }
                }
                e => ProxyError::TlsFile {
                    file: "tls_cert",
                    path: config.cert.clone(),
                    cause: e.to_string(),
                },
            })?;
        server.alpn_protocols = vec![ALPN.to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            required: config.required,
        })
    }
}

/// A client's connection: plain TCP until the client negotiates TLS.
pub(crate) enum ClientStream {
    Plain(TcpStream),
    Tls(Box<server::TlsStream<TcpStream>>),
    /// A handshake that failed took the connection with it.
    Closed,
}

impl ClientStream {
    /// Answers an SSLRequest: `S` and the handshake when TLS is set up,
    /// else `N` (the client then goes on in plain text or leaves).
    pub async fn ssl_request(&mut self, tls: Option<&Tls>) -> Result<(), FrameError> {
        match (tls, &mut *self) {
            (Some(tls), Self::Plain(tcp)) => {
                tcp.write_all(b"S").await?;
                self.handshake(tls).await
            }
            (None, Self::Plain(tcp)) => Ok(tcp.write_all(b"N").await?),
            _ => Err(FrameError::Malformed(
                "SSLRequest on a connection that is already encrypted".into(),
            )),
        }
    }

    /// Direct TLS (`sslnegotiation=direct`): when the client's first byte
    /// starts a TLS handshake rather than a startup packet, runs the
    /// handshake, which must have agreed on ALPN `postgresql`.
    pub async fn direct(&mut self, tls: Option<&Tls>) -> Result<(), FrameError> {
        let (Some(tls), Self::Plain(tcp)) = (tls, &mut *self) else {
            return Ok(());
        };
        let mut first = [0u8];
        if tcp.peek(&mut first).await? == 0 || first[0] != HANDSHAKE_RECORD {
            return Ok(());
        }
        self.handshake(tls).await?;
        match self {
            Self::Tls(s) if s.get_ref().1.alpn_protocol() == Some(ALPN) => Ok(()),
            _ => Err(FrameError::Malformed(
                "direct TLS connection without the ALPN protocol \"postgresql\"".into(),
            )),
        }
    }

    /// Whether the client must be refused: TLS is required and this
    /// connection is plain. Writes the refusal to `out` when so.
    pub fn refuse(&self, tls: Option<&Tls>, out: &mut BytesMut) -> bool {
        if !tls.is_some_and(|t| t.required) || matches!(self, Self::Tls(_)) {
            return false;
        }
        // FATAL, as PostgreSQL refuses a login: the connection ends here.
        msg::frame(out, b'E', |o| {
            for (field, value) in [
                (b'S', "FATAL"),
                (b'V', "FATAL"),
                (b'C', "28000"),
                (b'M', REQUIRED),
            ] {
                o.extend_from_slice(&[field]);
                msg::put_cstr(o, value);
            }
            o.extend_from_slice(&[0]);
        });
        true
    }

    async fn handshake(&mut self, tls: &Tls) -> Result<(), FrameError> {
        let Self::Plain(tcp) = std::mem::replace(self, Self::Closed) else {
            unreachable!("a handshake starts on a plain connection");
        };
        let accepted = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.acceptor.accept(tcp))
            .await
            .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")));
        match accepted {
            Ok(s) => {
                *self = Self::Tls(Box::new(s));
                Ok(())
            }
            Err(e) => Err(FrameError::Io(io::Error::new(
                e.kind(),
                format!("TLS handshake failed: {e}"),
            ))),
        }
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the TLS handshake failed")
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Self::Closed => Poll::Ready(Err(closed())),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Self::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Self::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
            Self::Closed => false,
        }
    }

    /// Sends what TLS still buffers; a no-op on plain TCP.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Self::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Self::Closed => Poll::Ready(Ok(())),
        }
    }
}
