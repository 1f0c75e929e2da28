//! Which authentication a server may ask for: libpq's `require_auth`
//! (PostgreSQL 16), and shardline's rule that a password never crosses an
//! unencrypted network in clear text or as md5.
//!
//! - Without `require_auth`, a server asking for `password` (clear text)
//!   or `md5` over plain TCP is refused before anything is sent; every
//!   other method, and every method over TLS or a Unix socket, is fine.
//! - With `require_auth`, libpq's rule: only the listed methods (or all but
//!   the `!`-listed ones) are accepted, over TLS or not; `none` allows a
//!   server that asks for nothing (trust). Listing `password` or `md5` is
//!   how a string allows them over plain TCP.
//!
//! [`AuthCheck`] applies the rule to each authentication request a server
//! sends; [`AuthWatch`] runs it on the bytes tokio-postgres reads, which
//! answers the requests itself.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// An authentication method, as `require_auth` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    /// The server asks for nothing (trust, or a client certificate).
    None,
    Password,
    Md5,
    Gss,
    Sspi,
    ScramSha256,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Password => "password",
            Self::Md5 => "md5",
            Self::Gss => "gss",
            Self::Sspi => "sspi",
            Self::ScramSha256 => "scram-sha-256",
        }
    }

    /// Whether the method sends what an eavesdropper could replay.
    fn exposes_password(self) -> bool {
        matches!(self, Self::Password | Self::Md5)
    }
}

impl fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AuthMethod {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "none" => Self::None,
            "password" => Self::Password,
            "md5" => Self::Md5,
            "gss" => Self::Gss,
            "sspi" => Self::Sspi,
            "scram-sha-256" => Self::ScramSha256,
            other => {
                return Err(format!(
                    "require_auth method {other:?} is not one of password, md5, gss, sspi, scram-sha-256, none"
                ))
            }
        })
    }
}

/// A parsed `require_auth`: the methods listed, or (all `!`-prefixed) the
/// methods excluded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequireAuth {
    methods: Vec<AuthMethod>,
    negated: bool,
    text: String,
}

impl RequireAuth {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut methods = Vec::new();
        let mut negated = None;
        for item in text.split(',').map(str::trim) {
            let (neg, name) = match item.strip_prefix('!') {
                Some(name) => (true, name),
                None => (false, item),
            };
            if *negated.get_or_insert(neg) != neg {
                return Err(format!(
                    "require_auth {text:?} mixes negated (!) and plain methods; use one kind"
                ));
            }
            let method = name.parse::<AuthMethod>()?;
            if methods.contains(&method) {
                return Err(format!("require_auth {text:?} names {method} twice"));
            }
            methods.push(method);
        }
        Ok(Self {
            methods,
            negated: negated.unwrap_or(false),
            text: text.to_string(),
        })
    }

    fn allows(&self, method: AuthMethod) -> bool {
        self.methods.contains(&method) != self.negated
    }

    /// Whether the string names `method` itself (not by exclusion).
    fn lists(&self, method: AuthMethod) -> bool {
        !self.negated && self.methods.contains(&method)
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// Why a server's request was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthRefusal {
    /// `password` or `md5` asked over plain TCP, not allowed by `require_auth`.
    Unencrypted(AuthMethod),
    /// A method `require_auth` does not allow.
    NotAllowed { method: AuthMethod, rule: String },
    /// The server said AuthenticationOk in the middle of SCRAM.
    Incomplete,
}

impl fmt::Display for AuthRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unencrypted(m) => write!(
                f,
                "the server asks for {} over an unencrypted connection; the password was not sent",
                match m {
                    AuthMethod::Password => "the password in clear text",
                    _ => "an md5 password hash",
                }
            ),
            Self::NotAllowed { method, rule } => write!(
                f,
                "the server asks for {method} authentication, which require_auth={rule} does not allow"
            ),
            Self::Incomplete => f.write_str(
                "the server ended SCRAM authentication before proving it knows the password",
            ),
        }
    }
}

impl std::error::Error for AuthRefusal {}

/// The rule applied to one connection's authentication requests.
#[derive(Clone, Debug)]
pub struct AuthCheck {
    rule: Option<RequireAuth>,
    /// TLS or a Unix socket: nothing crosses a network in clear.
    protected: bool,
    asked: Option<AuthMethod>,
    sasl_open: bool,
}

impl AuthCheck {
    pub fn new(rule: Option<RequireAuth>, protected: bool) -> Self {
        Self {
            rule,
            protected,
            asked: None,
            sasl_open: false,
        }
    }

    /// Checks one AuthenticationRequest by its code, before it is answered.
    pub fn request(&mut self, code: i32) -> Result<(), AuthRefusal> {
        let method = match code {
            0 => {
                if self.sasl_open {
                    return Err(AuthRefusal::Incomplete);
                }
                if self.asked.is_some() {
                    return Ok(());
                }
                AuthMethod::None
            }
            3 => AuthMethod::Password,
            5 => AuthMethod::Md5,
            7 => AuthMethod::Gss,
            9 => AuthMethod::Sspi,
            10 => {
                self.sasl_open = true;
                AuthMethod::ScramSha256
            }
            12 => {
                self.sasl_open = false;
                return Ok(());
            }
            // GSS and SASL continuations, and methods no client here
            // speaks (it fails on them by itself).
            _ => return Ok(()),
        };
        self.asked = Some(method);
        if let Some(rule) = &self.rule {
            if !rule.allows(method) {
                return Err(AuthRefusal::NotAllowed {
                    method,
                    rule: rule.text.clone(),
                });
            }
        }
        let listed = self.rule.as_ref().is_some_and(|r| r.lists(method));
        if method.exposes_password() && !self.protected && !listed {
            return Err(AuthRefusal::Unencrypted(method));
        }
        Ok(())
    }
}

/// A stream that applies an [`AuthCheck`] to the server's messages until
/// authentication is over, then gets out of the way. A refused request
/// fails the read that brought it (an `io::Error` holding the
/// [`AuthRefusal`]), so the client never sees it and never answers.
pub struct AuthWatch<S> {
    inner: S,
    check: AuthCheck,
    done: bool,
    /// The message being read: tag, length and the first body bytes.
    header: [u8; 9],
    have: usize,
    /// Bytes of the current message's body still to skip.
    skip: usize,
}

impl<S> AuthWatch<S> {
    pub fn new(inner: S, check: AuthCheck) -> Self {
        Self {
            inner,
            check,
            done: false,
            header: [0; 9],
            have: 0,
            skip: 0,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Follows the message framing over `bytes`; checks each
    /// AuthenticationRequest's code.
    fn feed(&mut self, mut bytes: &[u8]) -> Result<(), AuthRefusal> {
        while !bytes.is_empty() && !self.done {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            // An 'R' message is read up to its code; others up to the length.
            let want = if self.have >= 1 && self.header[0] == b'R' {
                9
            } else {
                5
            };
            let n = (want - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have < want {
                continue;
            }
            let len = u32::from_be_bytes(self.header[1..5].try_into().expect("4 bytes")) as usize;
            let body_read = self.have - 5;
            if self.header[0] == b'R' && want == 9 {
                let code = i32::from_be_bytes(self.header[5..9].try_into().expect("4 bytes"));
                self.check.request(code)?;
                if code == 0 {
                    self.done = true;
                }
            } else if self.header[0] == b'R' {
                // The length is known now; read on to the code.
                if len >= 8 {
                    continue;
                }
            }
            self.skip = len.saturating_sub(4).saturating_sub(body_read);
            self.have = 0;
        }
        Ok(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthWatch<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if !this.done => {
                let fresh = buf.filled()[before..].to_vec();
                if let Err(refusal) = this.feed(&fresh) {
                    buf.set_filled(before);
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        refusal,
                    )));
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthWatch<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S: AsRawFd> AsRawFd for AuthWatch<S> {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }
}

/// The refusal inside an i/o error that [`AuthWatch`] raised.
pub(crate) fn refusal_in(e: &(dyn std::error::Error + 'static)) -> Option<AuthRefusal> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(r) = c.downcast_ref::<AuthRefusal>() {
            return Some(r.clone());
        }
        if let Some(io) = c.downcast_ref::<io::Error>() {
            if let Some(r) = io.get_ref().and_then(|i| i.downcast_ref::<AuthRefusal>()) {
                return Some(r.clone());
            }
        }
        cause = c.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> Option<RequireAuth> {
        Some(RequireAuth::parse(s).unwrap())
    }

    #[test]
    fn passwords_over_plain_tcp_need_to_be_listed() {
        for code in [3, 5] {
            let mut c = AuthCheck::new(None, false);
            assert!(matches!(c.request(code), Err(AuthRefusal::Unencrypted(_))));
            assert!(AuthCheck::new(None, true).request(code).is_ok());
            assert!(AuthCheck::new(rule("password,md5"), false)
                .request(code)
                .is_ok());
            // Excluding something else does not name them.
            assert!(AuthCheck::new(rule("!gss"), false).request(code).is_err());
        }
        let mut scram = AuthCheck::new(None, false);
        assert!(scram.request(10).is_ok() && scram.request(11).is_ok());
        assert!(scram.request(12).is_ok() && scram.request(0).is_ok());
    }

    #[test]
    fn require_auth_follows_libpq() {
        let mut c = AuthCheck::new(rule("scram-sha-256"), true);
        assert!(matches!(
            c.request(3),
            Err(AuthRefusal::NotAllowed {
                method: AuthMethod::Password,
                ..
            })
        ));
        // trust needs `none`
        assert!(AuthCheck::new(rule("scram-sha-256"), true)
            .request(0)
            .is_err());
        assert!(AuthCheck::new(rule("scram-sha-256,none"), true)
            .request(0)
            .is_ok());
        assert!(AuthCheck::new(rule("!md5"), true).request(5).is_err());
        assert!(AuthCheck::new(rule("!md5"), true).request(3).is_ok());
        // A SCRAM exchange cut short by AuthenticationOk.
        let mut c = AuthCheck::new(rule("scram-sha-256"), false);
        assert!(c.request(10).is_ok());
        assert_eq!(c.request(0), Err(AuthRefusal::Incomplete));
        assert!(RequireAuth::parse("md5,!gss").is_err());
        assert!(RequireAuth::parse("kerberos").is_err());
    }

    #[test]
    fn the_watch_follows_messages_split_anywhere() {
        // ParameterStatus-like noise, then AuthenticationCleartextPassword.
        let mut bytes = vec![b'S', 0, 0, 0, 7, b'a', 0, b'b'];
        bytes.extend([b'R', 0, 0, 0, 8, 0, 0, 0, 3]);
        for split in 1..bytes.len() {
            let mut w = AuthWatch::new((), AuthCheck::new(None, false));
            let first = w.feed(&bytes[..split]);
            let r = first.and_then(|_| w.feed(&bytes[split..]));
            assert_eq!(
                r,
                Err(AuthRefusal::Unencrypted(AuthMethod::Password)),
                "split {split}"
            );
        }
        // SASL with a body, then OK: allowed; afterwards nothing is parsed.
        let mut ok = vec![b'R', 0, 0, 0, 23, 0, 0, 0, 10];
        ok.extend(b"SCRAM-SHA-256\0\0");
        ok.extend([b'R', 0, 0, 0, 12, 0, 0, 0, 12, 1, 2, 3, 4]);
        ok.extend([b'R', 0, 0, 0, 8, 0, 0, 0, 0]);
        ok.extend([b'R', 0, 0, 0, 8, 0, 0, 0, 3]);
        let mut w = AuthWatch::new((), AuthCheck::new(None, false));
        assert_eq!(w.feed(&ok), Ok(()));
        assert!(w.done);
    }
}
