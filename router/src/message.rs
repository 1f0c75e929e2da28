//! PostgreSQL wire messages as raw frames.
//!
//! Messages are read and forwarded as the bytes the peer sent: a frame is
//! its type byte, its length and its body, kept whole so rows and errors
//! reach the client byte for byte as the backend encoded them. Only the
//! few fields the router acts on are decoded, by the functions below.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The largest message a backend may send: PostgreSQL's own ceiling
/// (`MaxAllocSize`). Clients are held to `[router] max_message_bytes`.
pub const MAX_BACKEND_MESSAGE: usize = (1 << 30) - 1;

/// The largest authentication message, as in PostgreSQL
/// (`PG_MAX_AUTH_TOKEN_LENGTH`).
pub const MAX_AUTH_MESSAGE: usize = 65_535;

/// The largest startup packet, as in PostgreSQL (`MAX_STARTUP_PACKET_LENGTH`).
const MAX_STARTUP: usize = 10_000;

/// How much more buffer one read may reserve: a length header is only a
/// claim, so memory grows with the bytes that actually arrive.
const READ_CHUNK: usize = 64 * 1024;

pub const PROTOCOL_3_0: i32 = 196_608;
pub const SSL_REQUEST: i32 = 80_877_103;
pub const GSSENC_REQUEST: i32 = 80_877_104;
pub const CANCEL_REQUEST: i32 = 80_877_102;

/// One frame: `raw` holds the type byte, length and body.
#[derive(Clone, Debug)]
pub struct Frame {
    pub tag: u8,
    pub raw: Bytes,
}

impl Frame {
    pub fn body(&self) -> &[u8] {
        &self.raw[5..]
    }
}

/// Why a peer's bytes are not a valid message.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A length header past the limit (or below 4): refused unread.
    #[error("message type {:?} declares {len} bytes; the limit is {max}", *tag as char)]
    TooLong { tag: u8, len: i64, max: usize },
}

/// A whole frame at the front of `buf`, taken off it; `None` when more
/// bytes are needed. A length over `max` (a type byte included) is refused
/// before any of it is read.
pub fn take_frame(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, FrameError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 || len as usize > max.saturating_sub(1) {
        return Err(FrameError::TooLong {
            tag: buf[0],
            len: len as i64,
            max,
        });
    }
    let total = len as usize + 1;
    if buf.len() >= total {
        let raw = buf.split_to(total).freeze();
        return Ok(Some(Frame { tag: raw[0], raw }));
    }
    buf.reserve((total - buf.len()).min(READ_CHUNK));
    Ok(None)
}

/// Reads one frame of at most `max` bytes; `None` when the peer closed
/// between messages.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<Frame>, FrameError> {
    loop {
        if let Some(f) = take_frame(buf, max)? {
            return Ok(Some(f));
        }
        if r.read_buf(buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(FrameError::Closed)
            };
        }
    }
}

/// Reads a startup-phase packet (no type byte): its code and body.
pub async fn read_startup<R: AsyncRead + Unpin>(r: &mut R) -> Result<(i32, Bytes), FrameError> {
    let len = r.read_i32().await?;
    if !(8..=MAX_STARTUP as i32).contains(&len) {
        return Err(FrameError::Malformed(format!(
            "startup packet length {len}"
        )));
    }
    let mut body = vec![0u8; len as usize - 4];
    r.read_exact(&mut body).await?;
    let mut b = Bytes::from(body);
    let code = b.get_i32();
    Ok((code, b))
}

/// The `name\0value\0…\0` parameters of a startup packet.
pub fn startup_params(mut body: &[u8]) -> Result<Vec<(String, String)>, FrameError> {
    let mut out = Vec::new();
    loop {
        let name = cstr(&mut body)?;
        if name.is_empty() {
            return Ok(out);
        }
        let value = cstr(&mut body)?;
        out.push((name, value));
    }
}

/// Reads a NUL-terminated string off the front of `b`.
pub fn cstr(b: &mut &[u8]) -> Result<String, FrameError> {
    let end = b
        .iter()
        .position(|&c| c == 0)
        .ok_or_else(|| FrameError::Malformed("string without its terminator".into()))?;
    let s = std::str::from_utf8(&b[..end])
        .map_err(|_| FrameError::Malformed("string is not UTF-8".into()))?
        .to_string();
    *b = &b[end + 1..];
    Ok(s)
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], FrameError> {
    if b.len() < n {
        return Err(FrameError::Malformed("message ends early".into()));
    }
    let (head, tail) = b.split_at(n);
    *b = tail;
    Ok(head)
}

fn i16_of(b: &mut &[u8]) -> Result<i16, FrameError> {
    Ok(i16::from_be_bytes(
        take(b, 2)?.try_into().unwrap_or_default(),
    ))
}

fn i32_of(b: &mut &[u8]) -> Result<i32, FrameError> {
    Ok(i32::from_be_bytes(
        take(b, 4)?.try_into().unwrap_or_default(),
    ))
}

/// A Parse message: statement name, text and declared parameter types.
pub struct Parse {
    pub name: String,
    pub sql: String,
    pub types: Vec<u32>,
}

pub fn parse_parse(mut b: &[u8]) -> Result<Parse, FrameError> {
    let name = cstr(&mut b)?;
    let sql = cstr(&mut b)?;
    let n = i16_of(&mut b)?;
    let types = (0..n.max(0))
        .map(|_| i32_of(&mut b).map(|t| t as u32))
        .collect::<Result<_, _>>()?;
    Ok(Parse { name, sql, types })
}

/// A Bind message: portal, statement, and each parameter's format and bytes.
pub struct Bind {
    pub statement: String,
    pub formats: Vec<i16>,
    pub values: Vec<Option<Bytes>>,
}

impl Bind {
    /// The format of parameter `i`: one code for all, or one each.
    pub fn format(&self, i: usize) -> i16 {
        match self.formats.len() {
            0 => 0,
            1 => self.formats[0],
            _ => self.formats.get(i).copied().unwrap_or(0),
        }
    }
}

pub fn parse_bind(frame: &Frame) -> Result<Bind, FrameError> {
    let mut b = frame.body();
    cstr(&mut b)?; // the portal
    let statement = cstr(&mut b)?;
    let nf = i16_of(&mut b)?;
    let formats = (0..nf.max(0))
        .map(|_| i16_of(&mut b))
        .collect::<Result<_, _>>()?;
    let np = i16_of(&mut b)?;
    let mut values = Vec::with_capacity(np.max(0) as usize);
    for _ in 0..np.max(0) {
        let len = i32_of(&mut b)?;
        if len < 0 {
            values.push(None);
        } else {
            let start = frame.body().len() - b.len();
            take(&mut b, len as usize)?;
            values.push(Some(frame.raw.slice(5 + start..5 + start + len as usize)));
        }
    }
    Ok(Bind {
        statement,
        formats,
        values,
    })
}

/// The target of a Describe or Close: `S`tatement or `P`ortal, and its name.
pub fn parse_target(mut b: &[u8]) -> Result<(u8, String), FrameError> {
    let kind = *take(&mut b, 1)?.first().unwrap_or(&0);
    if kind != b'S' && kind != b'P' {
        return Err(FrameError::Malformed(format!(
            "describe or close of kind {kind}"
        )));
    }
    Ok((kind, cstr(&mut b)?))
}

/// A simple Query's text.
pub fn parse_query(frame: &Frame) -> Result<String, FrameError> {
    let mut b = frame.body();
    cstr(&mut b)
}

// Messages the router writes itself.

pub(crate) fn frame(out: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    out.put_u8(tag);
    let at = out.len();
    out.put_i32(0);
    body(out);
    let len = (out.len() - at) as i32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

pub(crate) fn put_cstr(out: &mut BytesMut, s: &str) {
    out.put_slice(s.as_bytes());
    out.put_u8(0);
}

pub fn authentication(out: &mut BytesMut, code: i32, data: &[u8]) {
    frame(out, b'R', |o| {
        o.put_i32(code);
        o.put_slice(data);
    });
}

pub fn parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    frame(out, b'S', |o| {
        put_cstr(o, name);
        put_cstr(o, value);
    });
}

pub fn backend_key_data(out: &mut BytesMut, pid: i32, secret: i32) {
    frame(out, b'K', |o| {
        o.put_i32(pid);
        o.put_i32(secret);
    });
}

pub fn ready_for_query(out: &mut BytesMut, status: u8) {
    frame(out, b'Z', |o| o.put_u8(status));
}

pub fn command_complete(out: &mut BytesMut, tag: &str) {
    frame(out, b'C', |o| put_cstr(o, tag));
}

/// An ErrorResponse with SQLSTATE, message and optional hint.
pub fn error_response(out: &mut BytesMut, code: &str, message: &str, hint: Option<&str>) {
    error_with_severity(out, "ERROR", code, message, hint);
}

/// An ErrorResponse of severity FATAL: the router closes the connection
/// after it, as PostgreSQL does.
pub fn fatal_response(out: &mut BytesMut, code: &str, message: &str, hint: Option<&str>) {
    error_with_severity(out, "FATAL", code, message, hint);
}

fn error_with_severity(
    out: &mut BytesMut,
    severity: &str,
    code: &str,
    message: &str,
    hint: Option<&str>,
) {
    frame(out, b'E', |o| {
        for (field, value) in [
            (b'S', severity),
            (b'V', severity),
            (b'C', code),
            (b'M', message),
        ] {
            o.put_u8(field);
            put_cstr(o, value);
        }
        if let Some(h) = hint {
            o.put_u8(b'H');
            put_cstr(o, h);
        }
        o.put_u8(0);
    });
}

/// A message with no body (ParseComplete `1`, BindComplete `2`,
/// CloseComplete `3`, NoData `n`, Sync `S`, Flush `H`).
pub fn empty(out: &mut BytesMut, tag: u8) {
    frame(out, tag, |_| {});
}

pub fn parameter_description(out: &mut BytesMut, types: &[u32]) {
    frame(out, b't', |o| {
        o.put_i16(types.len() as i16);
        for t in types {
            o.put_u32(*t);
        }
    });
}

/// A Query message (backends are sent router-made statements this way).
pub fn query(out: &mut BytesMut, sql: &str) {
    frame(out, b'Q', |o| put_cstr(o, sql));
}

/// A Parse message (the router prepares its own statements this way).
pub fn parse(out: &mut BytesMut, name: &str, sql: &str, types: &[u32]) {
    frame(out, b'P', |o| {
        put_cstr(o, name);
        put_cstr(o, sql);
        o.put_i16(types.len() as i16);
        for t in types {
            o.put_u32(*t);
        }
    });
}

/// A client's Bind with another statement name, all else as sent.
pub fn rebind(bind: &Frame, statement: &str) -> Option<Bytes> {
    let mut b = bind.body();
    let portal = cstr(&mut b).ok()?;
    cstr(&mut b).ok()?;
    let mut out = BytesMut::new();
    frame(&mut out, b'B', |o| {
        put_cstr(o, &portal);
        put_cstr(o, statement);
        o.put_slice(b);
    });
    Some(out.freeze())
}

pub fn describe(out: &mut BytesMut, kind: u8, name: &str) {
    frame(out, b'D', |o| {
        o.put_u8(kind);
        put_cstr(o, name);
    });
}

pub fn close(out: &mut BytesMut, kind: u8, name: &str) {
    frame(out, b'C', |o| {
        o.put_u8(kind);
        put_cstr(o, name);
    });
}

/// Whether an ErrorResponse ends the connection (severity FATAL or PANIC).
pub fn is_fatal(mut b: &[u8]) -> bool {
    while let Some((&field, rest)) = b.split_first() {
        if field == 0 {
            break;
        }
        b = rest;
        let Ok(value) = cstr(&mut b) else { break };
        if field == b'V' || field == b'S' {
            return value == "FATAL" || value == "PANIC";
        }
    }
    false
}

/// The SQLSTATE and message of an ErrorResponse body.
pub fn error_fields(mut b: &[u8]) -> (String, String) {
    let (mut code, mut message) = (String::new(), String::new());
    while let Some((&field, rest)) = b.split_first() {
        if field == 0 {
            break;
        }
        b = rest;
        let Ok(value) = cstr(&mut b) else { break };
        match field {
            b'C' => code = value,
            b'M' => message = value,
            _ => {}
        }
    }
    (code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_are_read_whole_and_lengths_are_checked() {
        let mut out = BytesMut::new();
        command_complete(&mut out, "SELECT 1");
        ready_for_query(&mut out, b'I');
        let mut src: &[u8] = &out;
        let mut buf = BytesMut::new();
        let a = read_frame(&mut src, &mut buf, 1024).await.unwrap().unwrap();
        assert_eq!((a.tag, a.body()), (b'C', &b"SELECT 1\0"[..]));
        let b = read_frame(&mut src, &mut buf, 1024).await.unwrap().unwrap();
        assert_eq!(b.body(), b"I");
        assert!(read_frame(&mut src, &mut buf, 1024)
            .await
            .unwrap()
            .is_none());

        let mut bad: &[u8] = &[b'Q', 0, 0, 0, 2];
        assert!(matches!(
            read_frame(&mut bad, &mut BytesMut::new(), 1024).await,
            Err(FrameError::TooLong { len: 2, .. })
        ));
        let mut cut: &[u8] = &[b'Q', 0, 0, 0, 9, b'x'];
        assert!(matches!(
            read_frame(&mut cut, &mut BytesMut::new(), 1024).await,
            Err(FrameError::Closed)
        ));
        // A frame of exactly the limit passes; one byte more does not.
        let mut out = BytesMut::new();
        query(&mut out, &"x".repeat(100));
        let n = out.len();
        assert!(read_frame(&mut &out[..], &mut BytesMut::new(), n)
            .await
            .unwrap()
            .is_some());
        assert!(matches!(
            read_frame(&mut &out[..], &mut BytesMut::new(), n - 1).await,
            Err(FrameError::TooLong { .. })
        ));
    }

    #[tokio::test]
    async fn a_huge_length_header_reserves_only_what_arrives() {
        // A 1 GiB claim with a few bytes behind it: the buffer grows by the
        // bytes read, never to the claim.
        let mut head = vec![b'Q'];
        head.extend_from_slice(&(1i32 << 30).to_be_bytes());
        head.extend_from_slice(b"SELECT");
        let mut buf = BytesMut::new();
        let got = read_frame(&mut &head[..], &mut buf, usize::MAX).await;
        assert!(matches!(got, Err(FrameError::Closed)), "{got:?}");
        assert!(buf.capacity() < 1 << 20, "{}", buf.capacity());
        let refused = read_frame(&mut &head[..], &mut BytesMut::new(), 64 << 20).await;
        assert!(matches!(
            refused,
            Err(FrameError::TooLong {
                len: 1_073_741_824,
                ..
            })
        ));
    }

    #[test]
    fn bind_values_are_slices_of_the_frame() {
        let mut out = BytesMut::new();
        frame(&mut out, b'B', |o| {
            put_cstr(o, "");
            put_cstr(o, "s1");
            o.put_i16(1);
            o.put_i16(1);
            o.put_i16(2);
            o.put_i32(8);
            o.put_i64(42);
            o.put_i32(-1);
            o.put_i16(0);
        });
        let f = Frame {
            tag: b'B',
            raw: out.freeze(),
        };
        let b = parse_bind(&f).unwrap();
        assert_eq!(b.statement, "s1");
        assert_eq!(b.format(1), 1);
        assert_eq!(b.values[0].as_deref(), Some(&42i64.to_be_bytes()[..]));
        assert_eq!(b.values[1], None);

        let r = rebind(&f, "other").unwrap();
        let r = Frame { tag: b'B', raw: r };
        let again = parse_bind(&r).unwrap();
        assert_eq!(again.statement, "other");
        assert_eq!(again.values, b.values);
        assert_eq!(again.format(1), 1);
    }
}
