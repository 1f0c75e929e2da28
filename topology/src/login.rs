//! Logging in on a raw stream, for the callers that speak the protocol
//! themselves after startup (the router's backends, the replication
//! relay): the startup message, then the server's authentication requests
//! answered (clear text, md5, SCRAM-SHA-256) under the string's
//! [`AuthCheck`]. Reads exactly the messages of the login, so whatever the
//! server sends after AuthenticationOk is left on the stream.

use bytes::BytesMut;
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::auth::AuthCheck;
use crate::conn::{ConnString, ConnectError};

/// The largest message accepted during login: authentication requests
/// are small; anything bigger is not a PostgreSQL server talking.
const MAX_LOGIN_MESSAGE: usize = 1 << 20;

/// One backend message: its tag and body.
pub struct Message {
    pub tag: u8,
    pub body: Vec<u8>,
}

/// Reads one message without reading past it.
pub async fn read_message<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<Message> {
    let mut header = [0u8; 5];
    s.read_exact(&mut header).await?;
    let len = u32::from_be_bytes(header[1..].try_into().expect("4 bytes")) as usize;
    if !(4..=MAX_LOGIN_MESSAGE).contains(&len) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a message of {len} bytes during login"),
        ));
    }
    let mut body = vec![0u8; len - 4];
    s.read_exact(&mut body).await?;
    Ok(Message {
        tag: header[0],
        body,
    })
}

/// An ErrorResponse's SQLSTATE and message.
pub fn error_fields(body: &[u8]) -> (String, String) {
    let (mut code, mut message) = (String::new(), String::new());
    let mut rest = body;
    while let Some((&kind, tail)) = rest.split_first() {
        if kind == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        let value = String::from_utf8_lossy(&tail[..end]).into_owned();
        match kind {
            b'C' => code = value,
            b'M' => message = value,
            _ => {}
        }
        rest = tail.get(end + 1..).unwrap_or_default();
    }
    (code, message)
}

/// Sends the startup message with `params` (user and database come from
/// `conn`) and authenticates; returns once the server says
/// AuthenticationOk. `protected`: the stream is TLS or a Unix socket.
pub async fn login<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    conn: &ConnString,
    params: &[(&str, &str)],
    protected: bool,
) -> Result<(), ConnectError> {
    let target = conn.to_string();
    let lost = |e: std::io::Error| ConnectError::Unreachable {
        target: target.clone(),
        cause: format!("during login: {e}"),
    };
    let protocol = |cause: String| ConnectError::Refused {
        target: target.clone(),
        code: "08P01".into(),
        cause,
    };
    let mut out = BytesMut::new();
    let mut all = vec![("user", conn.user()), ("database", conn.dbname())];
    all.extend(
        params
            .iter()
            .filter(|(k, _)| *k != "user" && *k != "database"),
    );
    frontend::startup_message(all.iter().copied(), &mut out)
        .map_err(|e| protocol(e.to_string()))?;
    stream.write_all(&out).await.map_err(lost)?;
    let mut check = AuthCheck::new(conn.require_auth().cloned(), protected);
    let mut scram: Option<sasl::ScramSha256> = None;
    loop {
        let m = read_message(stream).await.map_err(lost)?;
        match m.tag {
            b'E' => {
                let (code, message) = error_fields(&m.body);
                return Err(conn.server_error(code, message));
            }
            b'R' if m.body.len() >= 4 => {}
            // NegotiateProtocolVersion, NoticeResponse: nothing to answer.
            b'v' | b'N' => continue,
            other => {
                return Err(protocol(format!(
                    "unexpected message {:?} during authentication",
                    other as char
                )))
            }
        }
        let code = i32::from_be_bytes(m.body[..4].try_into().expect("4 bytes"));
        let data = &m.body[4..];
        check
            .request(code)
            .map_err(|refusal| ConnectError::AuthRefused {
                target: target.clone(),
                refusal,
            })?;
        let password = || {
            conn.password()
                .map(<[u8]>::to_vec)
                .ok_or_else(|| ConnectError::Authentication {
                    target: target.clone(),
                    code: "28P01".into(),
                    cause: "the server wants a password and the connection string has none".into(),
                })
        };
        let mut out = BytesMut::new();
        match code {
            0 => return Ok(()),
            3 => {
                frontend::password_message(&password()?, &mut out)
                    .map_err(|e| protocol(e.to_string()))?;
            }
            5 => {
                let salt: [u8; 4] = data
                    .try_into()
                    .map_err(|_| protocol("an md5 request without a 4-byte salt".into()))?;
                let hash = md5_hash(conn.user().as_bytes(), &password()?, salt);
                frontend::password_message(hash.as_bytes(), &mut out)
                    .map_err(|e| protocol(e.to_string()))?;
            }
            10 => {
                let offered = data
                    .split(|&b| b == 0)
                    .any(|m| m == sasl::SCRAM_SHA_256.as_bytes());
                if !offered {
                    return Err(ConnectError::UnsupportedAuth {
                        target: target.clone(),
                        method: format!(
                            "SASL {}",
                            String::from_utf8_lossy(data).replace('\0', " ").trim()
                        ),
                    });
                }
                let s = sasl::ScramSha256::new(&password()?, sasl::ChannelBinding::unsupported());
                frontend::sasl_initial_response(sasl::SCRAM_SHA_256, s.message(), &mut out)
                    .map_err(|e| protocol(e.to_string()))?;
                scram = Some(s);
            }
            11 => {
                let s = scram
                    .as_mut()
                    .ok_or_else(|| protocol("SASL continue before start".into()))?;
                s.update(data).map_err(|e| protocol(e.to_string()))?;
                frontend::sasl_response(s.message(), &mut out)
                    .map_err(|e| protocol(e.to_string()))?;
            }
            12 => {
                let mut s = scram
                    .take()
                    .ok_or_else(|| protocol("SASL final before start".into()))?;
                s.finish(data).map_err(|e| ConnectError::Authentication {
                    target: target.clone(),
                    code: "28P01".into(),
                    cause: format!("the server's SCRAM proof is wrong: {e}"),
                })?;
                continue;
            }
            other => {
                return Err(ConnectError::UnsupportedAuth {
                    target: target.clone(),
                    method: format!("authentication request {other}"),
                })
            }
        }
        stream.write_all(&out).await.map_err(lost)?;
    }
}
