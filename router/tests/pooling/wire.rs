//! A raw PostgreSQL wire client, for what drivers never send: Flush
//! without Sync, a length header of 1 GiB, a startup that never comes.

use bytes::{BufMut, BytesMut};
use postgres_protocol::authentication::sasl;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::PASSWORD;

pub struct Wire {
    pub stream: TcpStream,
    buf: BytesMut,
}

/// One message: its type byte and body.
pub type Message = (u8, Vec<u8>);

impl Wire {
    /// Connects and sends the startup packet of user `app`.
    pub async fn startup(port: u16) -> Self {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut w = Self {
            stream,
            buf: BytesMut::new(),
        };
        let mut out = BytesMut::new();
        frontend::startup_message([("user", "app"), ("database", "shardline")], &mut out).unwrap();
        w.send(&out).await;
        w
    }

    /// Connects and logs in with SCRAM, up to the first ReadyForQuery.
    pub async fn login(port: u16) -> Self {
        let mut w = Self::startup(port).await;
        let mut scram = None;
        loop {
            let (tag, body) = w.recv().await.expect("login answered");
            assert_ne!(
                tag,
                b'E',
                "login refused: {}",
                String::from_utf8_lossy(&body)
            );
            if tag == b'Z' {
                return w;
            }
            if tag != b'R' {
                continue;
            }
            let code = i32::from_be_bytes(body[..4].try_into().unwrap());
            let mut out = BytesMut::new();
            match code {
                10 => {
                    let s = sasl::ScramSha256::new(
                        PASSWORD.as_bytes(),
                        sasl::ChannelBinding::unsupported(),
                    );
                    frontend::sasl_initial_response(sasl::SCRAM_SHA_256, s.message(), &mut out)
                        .unwrap();
                    scram = Some(s);
                }
                11 => {
                    let s = scram.as_mut().unwrap();
                    s.update(&body[4..]).unwrap();
                    frontend::sasl_response(s.message(), &mut out).unwrap();
                }
                12 => scram.take().unwrap().finish(&body[4..]).unwrap(),
                _ => {}
            }
            if !out.is_empty() {
                w.send(&out).await;
            }
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next message; `None` once the router closed the connection.
    pub async fn recv(&mut self) -> Option<Message> {
        loop {
            if self.buf.len() >= 5 {
                let len = i32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() > len {
                    let raw = self.buf.split_to(len + 1);
                    return Some((raw[0], raw[5..].to_vec()));
                }
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Messages up to and including one of type `tag`.
    pub async fn until(&mut self, tag: u8) -> Vec<Message> {
        let mut got = Vec::new();
        loop {
            let m = self.recv().await.expect("the router closed the connection");
            let done = m.0 == tag;
            got.push(m);
            if done {
                return got;
            }
        }
    }
}

/// A message of type `tag` with `body`.
pub fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Parse (unnamed unless `name`), Bind and Execute of `sql` without
/// parameters, ended by `end` (Flush `H` or Sync `S`).
pub fn pipeline(name: &str, sql: &str, end: u8) -> Vec<u8> {
    let mut out = BytesMut::new();
    let mut parse = BytesMut::new();
    parse.put_slice(name.as_bytes());
    parse.put_u8(0);
    parse.put_slice(sql.as_bytes());
    parse.put_u8(0);
    parse.put_i16(0);
    out.put_slice(&frame(b'P', &parse));
    let mut bind = BytesMut::new();
    bind.put_u8(0); // portal
    bind.put_slice(name.as_bytes());
    bind.put_u8(0);
    bind.put_i16(0);
    bind.put_i16(0);
    bind.put_i16(0);
    out.put_slice(&frame(b'B', &bind));
    out.put_slice(&frame(b'E', &[0, 0, 0, 0, 0]));
    out.put_slice(&frame(end, &[]));
    out.to_vec()
}

/// The SQLSTATE of an ErrorResponse body.
pub fn sqlstate(body: &[u8]) -> String {
    field(body, b'C')
}

/// A field of an ErrorResponse body.
pub fn field(body: &[u8], wanted: u8) -> String {
    let mut rest = body;
    while let Some((&f, tail)) = rest.split_first() {
        if f == 0 {
            break;
        }
        let end = tail.iter().position(|c| *c == 0).unwrap_or(tail.len());
        if f == wanted {
            return String::from_utf8_lossy(&tail[..end]).into_owned();
        }
        rest = &tail[(end + 1).min(tail.len())..];
    }
    String::new()
}
