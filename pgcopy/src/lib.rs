//! PostgreSQL's binary COPY format, framed but not decoded.
//!
//! A binary COPY stream is a header, then tuples (a 16-bit field count, then
//! per field a 32-bit length, -1 for NULL, and that many bytes), then a
//! trailer (field count -1). [`CopyReader`] cuts an incoming stream, in
//! chunks of any size, into [`TupleBatch`]es of complete tuples without
//! copying or decoding their values; a [`Tuple`] hands out its fields as
//! byte slices in PostgreSQL's binary send format. [`CopyWriter`] builds a
//! stream back, either from whole tuples (routing rows between databases
//! byte for byte) or field by field (generating or converting rows).
//!
//! Everything here is synchronous code over bytes: the async COPY plumbing
//! lives with the callers.

use bytes::{BufMut, Bytes, BytesMut};

/// The fixed 11-byte signature, then flags and header-extension length.
pub const HEADER: &[u8; 19] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
/// A field count of -1 ends the stream.
pub const TRAILER: [u8; 2] = [0xff, 0xff];

/// A malformed binary COPY stream.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CopyFormatError {
    #[error("binary COPY stream does not start with the PGCOPY signature")]
    BadSignature,
    #[error(
        "binary COPY header sets flags {0:#x} that this reader does not support (OIDs in rows)"
    )]
    UnsupportedFlags(u32),
    #[error("binary COPY field length {0} is negative and not -1 (NULL)")]
    BadFieldLength(i32),
    #[error("binary COPY field count {0} is negative and not -1 (end of data)")]
    BadFieldCount(i16),
    #[error("binary COPY stream ended in the middle of a tuple ({0} bytes left over)")]
    Truncated(usize),
    #[error("binary COPY stream ended without its trailer")]
    MissingTrailer,
    #[error("binary COPY stream has {0} bytes after its trailer")]
    TrailingData(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Header,
    Tuples,
    Done,
}

/// Cuts a binary COPY stream into batches of complete tuples.
#[derive(Debug)]
pub struct CopyReader {
    pending: BytesMut,
    state: State,
}

impl Default for CopyReader {
    fn default() -> Self {
        Self::new()
    }
}

impl CopyReader {
    pub fn new() -> Self {
        Self {
            pending: BytesMut::new(),
            state: State::Header,
        }
    }

    /// Adds a chunk of the stream and returns the tuples it completed
    /// (possibly none). Incomplete bytes are kept for the next chunk.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<TupleBatch, CopyFormatError> {
        self.pending.extend_from_slice(chunk);
        if self.state == State::Header {
            if self.pending.len() < HEADER.len() {
                return Ok(TupleBatch::default());
            }
            if &self.pending[..SIGNATURE.len()] != SIGNATURE {
                return Err(CopyFormatError::BadSignature);
            }
            let flags = u32::from_be_bytes(self.pending[11..15].try_into().expect("4 bytes"));
            if flags & 0x0001_0000 != 0 {
                return Err(CopyFormatError::UnsupportedFlags(flags));
            }
            let ext =
                u32::from_be_bytes(self.pending[15..19].try_into().expect("4 bytes")) as usize;
            if self.pending.len() < HEADER.len() + ext {
                return Ok(TupleBatch::default());
            }
            let _ = self.pending.split_to(HEADER.len() + ext);
            self.state = State::Tuples;
        }
        if self.state == State::Done {
            return match self.pending.len() {
                0 => Ok(TupleBatch::default()),
                n => Err(CopyFormatError::TrailingData(n)),
            };
        }
        let mut starts = Vec::new();
        let mut pos = 0usize;
        let buf = &self.pending[..];
        loop {
            match tuple_len(&buf[pos..])? {
                Some(TupleLen::Tuple(len)) => {
                    starts.push(pos as u32);
                    pos += len;
                }
                Some(TupleLen::Trailer) => {
                    self.state = State::Done;
                    let data = self.pending.split_to(pos).freeze();
                    let _ = self.pending.split_to(TRAILER.len());
                    if !self.pending.is_empty() {
                        return Err(CopyFormatError::TrailingData(self.pending.len()));
                    }
                    return Ok(TupleBatch { data, starts });
                }
                None => break,
            }
        }
        let data = self.pending.split_to(pos).freeze();
        Ok(TupleBatch { data, starts })
    }

    /// Checks that the stream ended properly: trailer seen, nothing left.
    pub fn finish(&self) -> Result<(), CopyFormatError> {
        match self.state {
            State::Done => Ok(()),
            _ if !self.pending.is_empty() => Err(CopyFormatError::Truncated(self.pending.len())),
            _ => Err(CopyFormatError::MissingTrailer),
        }
    }

    /// Bytes held back waiting for the rest of a tuple.
    pub fn buffered(&self) -> usize {
        self.pending.len()
    }
}

enum TupleLen {
    Tuple(usize),
    Trailer,
}

/// The length of the tuple at the start of `buf`, if `buf` holds all of it.
fn tuple_len(buf: &[u8]) -> Result<Option<TupleLen>, CopyFormatError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let count = i16::from_be_bytes([buf[0], buf[1]]);
    if count == -1 {
        return Ok(Some(TupleLen::Trailer));
    }
    if count < 0 {
        return Err(CopyFormatError::BadFieldCount(count));
    }
    let mut pos = 2usize;
    for _ in 0..count {
        let Some(len) = buf.get(pos..pos + 4) else {
            return Ok(None);
        };
        let len = i32::from_be_bytes(len.try_into().expect("4 bytes"));
        pos += 4;
        match len {
            -1 => {}
            n if n < 0 => return Err(CopyFormatError::BadFieldLength(n)),
            n => pos += n as usize,
        }
        if pos > buf.len() {
            return Ok(None);
        }
    }
    Ok(Some(TupleLen::Tuple(pos)))
}

/// Complete tuples cut from a stream, sharing one buffer.
#[derive(Debug, Clone, Default)]
pub struct TupleBatch {
    data: Bytes,
    starts: Vec<u32>,
}

impl TupleBatch {
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// Bytes of all tuples, as they appear in the stream.
    pub fn byte_len(&self) -> usize {
        self.data.len()
    }

    pub fn tuple(&self, i: usize) -> Tuple<'_> {
        let start = self.starts[i] as usize;
        let end = self
            .starts
            .get(i + 1)
            .map_or(self.data.len(), |&e| e as usize);
        Tuple {
            raw: &self.data[start..end],
        }
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = Tuple<'_>> + '_ {
        (0..self.len()).map(|i| self.tuple(i))
    }
}

/// One tuple, as it appears in the stream.
#[derive(Debug, Clone, Copy)]
pub struct Tuple<'a> {
    raw: &'a [u8],
}

impl<'a> Tuple<'a> {
    /// The tuple's bytes: field count, then each field's length and value.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    pub fn field_count(&self) -> usize {
        i16::from_be_bytes([self.raw[0], self.raw[1]]) as usize
    }

    /// Each field's binary value, `None` for NULL.
    pub fn fields(&self) -> Fields<'a> {
        Fields {
            rest: &self.raw[2..],
            left: self.field_count(),
        }
    }

    /// The field at `index` (`None` for NULL); panics past the last field.
    pub fn field(&self, index: usize) -> Option<&'a [u8]> {
        self.fields()
            .nth(index)
            .expect("field index within the tuple")
    }
}

/// Iterator over a tuple's fields.
#[derive(Debug, Clone)]
pub struct Fields<'a> {
    rest: &'a [u8],
    left: usize,
}

impl<'a> Iterator for Fields<'a> {
    type Item = Option<&'a [u8]>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // Tuples were length-checked when they were cut from the stream.
        let len = i32::from_be_bytes(self.rest[..4].try_into().expect("4 bytes"));
        self.rest = &self.rest[4..];
        if len < 0 {
            return Some(None);
        }
        let (value, rest) = self.rest.split_at(len as usize);
        self.rest = rest;
        Some(Some(value))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for Fields<'_> {}

/// Builds a binary COPY stream.
#[derive(Debug)]
pub struct CopyWriter {
    buf: BytesMut,
}

impl Default for CopyWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl CopyWriter {
    /// A writer whose first bytes are the header.
    pub fn new() -> Self {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        buf.extend_from_slice(HEADER);
        Self { buf }
    }

    /// A writer for the middle of a stream (no header), for building
    /// chunks that follow one written by [`CopyWriter::new`].
    pub fn continuation() -> Self {
        Self {
            buf: BytesMut::with_capacity(64 * 1024),
        }
    }

    /// Appends a whole tuple taken from another stream.
    pub fn tuple(&mut self, tuple: Tuple<'_>) {
        self.buf.extend_from_slice(tuple.raw());
    }

    /// Appends bytes of whole tuples taken from another stream.
    pub fn extend(&mut self, tuples: &[u8]) {
        self.buf.extend_from_slice(tuples);
    }

    /// Starts a tuple of `fields` fields; follow with exactly that many
    /// `field`/`null`/`put_*` calls.
    pub fn begin(&mut self, fields: u16) {
        self.buf.put_i16(fields as i16);
    }

    pub fn field(&mut self, value: Option<&[u8]>) {
        match value {
            Some(v) => {
                self.buf.put_i32(v.len() as i32);
                self.buf.extend_from_slice(v);
            }
            None => self.buf.put_i32(-1),
        }
    }

    pub fn null(&mut self) {
        self.buf.put_i32(-1);
    }

    pub fn put_i16(&mut self, v: i16) {
        self.buf.put_i32(2);
        self.buf.put_i16(v);
    }

    pub fn put_i32(&mut self, v: i32) {
        self.buf.put_i32(4);
        self.buf.put_i32(v);
    }

    pub fn put_i64(&mut self, v: i64) {
        self.buf.put_i32(8);
        self.buf.put_i64(v);
    }

    pub fn put_f64(&mut self, v: f64) {
        self.buf.put_i32(8);
        self.buf.put_f64(v);
    }

    pub fn put_bool(&mut self, v: bool) {
        self.buf.put_i32(1);
        self.buf.put_u8(v.into());
    }

    /// text, varchar, char(n), enums and other types whose binary form is
    /// their text.
    pub fn put_str(&mut self, v: &str) {
        self.field(Some(v.as_bytes()));
    }

    /// A field whose value is written by `write` into the buffer; the
    /// length prefix is filled in afterwards.
    pub fn put_with(&mut self, write: impl FnOnce(&mut BytesMut)) {
        let at = self.buf.len();
        self.buf.put_i32(0);
        write(&mut self.buf);
        let len = (self.buf.len() - at - 4) as i32;
        self.buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Takes what was written so far, to send as one chunk.
    pub fn take(&mut self) -> Bytes {
        self.buf.split().freeze()
    }

    /// Appends the trailer and returns the rest of the stream.
    pub fn finish(mut self) -> Bytes {
        self.buf.extend_from_slice(&TRAILER);
        self.buf.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Bytes {
        let mut w = CopyWriter::new();
        for i in 0..100i64 {
            w.begin(3);
            w.put_i64(i);
            if i % 3 == 0 {
                w.null();
            } else {
                w.put_str(&"é".repeat(i as usize));
            }
            w.put_with(|b| b.put_i32(i as i32 * 2));
        }
        w.finish()
    }

    #[test]
    fn round_trips_in_chunks_of_any_size() {
        let stream = sample();
        for chunk in [1, 2, 7, 19, 100, 4096, stream.len()] {
            let mut r = CopyReader::new();
            let mut rows = Vec::new();
            for part in stream.chunks(chunk) {
                let batch = r.feed(part).unwrap();
                for t in batch.iter() {
                    let f: Vec<Option<&[u8]>> = t.fields().collect();
                    let id = i64::from_be_bytes(f[0].unwrap().try_into().unwrap());
                    rows.push((id, f[1].map(|v| v.len()), t.field(2).unwrap().to_vec()));
                }
            }
            r.finish().unwrap();
            assert_eq!(rows.len(), 100, "chunk size {chunk}");
            assert_eq!(rows[3], (3, None, 6i32.to_be_bytes().to_vec()));
            assert_eq!(rows[4].1, Some(8));
        }
    }

    #[test]
    fn copying_tuples_reproduces_the_stream() {
        let stream = sample();
        let mut r = CopyReader::new();
        let batch = r.feed(&stream).unwrap();
        let mut w = CopyWriter::new();
        batch.iter().for_each(|t| w.tuple(t));
        assert_eq!(w.finish(), stream);
    }

    #[test]
    fn malformed_streams_are_errors() {
        assert_eq!(
            CopyReader::new()
                .feed(b"COPYPG\n\xff\r\n\0\0\0\0\0\0\0\0\0")
                .unwrap_err(),
            CopyFormatError::BadSignature
        );
        let stream = sample();
        let mut r = CopyReader::new();
        r.feed(&stream[..stream.len() - 5]).unwrap();
        assert_eq!(r.finish(), Err(CopyFormatError::Truncated(23)));
        let mut r = CopyReader::new();
        let mut bad = HEADER.to_vec();
        bad.extend_from_slice(&[0, 1, 0xff, 0xff, 0xff, 0xf0]);
        assert_eq!(
            r.feed(&bad).unwrap_err(),
            CopyFormatError::BadFieldLength(-16)
        );
        let mut r = CopyReader::new();
        let mut extra = stream.to_vec();
        extra.push(0);
        assert_eq!(
            r.feed(&extra).unwrap_err(),
            CopyFormatError::TrailingData(1)
        );
        let mut r = CopyReader::new();
        r.feed(HEADER).unwrap();
        assert_eq!(r.finish(), Err(CopyFormatError::MissingTrailer));
    }
}
