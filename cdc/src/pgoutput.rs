//! Decoding of the `pgoutput` logical replication protocol (version 1).
//!
//! Each message of the stream is one [`LogicalMessage`]. Row images arrive
//! as [`TupleData`]: per column NULL, *unchanged TOAST* (the value did not
//! change and was not sent — it must be kept on the target, never written
//! as NULL), or the value in text or binary form. Relation messages describe
//! a table's columns before its first change in a session and again after
//! its definition changes.

use bytes::{Buf, Bytes};

use crate::lsn::Lsn;

/// Microseconds since 2000-01-01 00:00:00 UTC, PostgreSQL's epoch.
pub type PgTimestamp = i64;

#[derive(Clone, Debug, PartialEq)]
pub enum LogicalMessage {
    Begin {
        final_lsn: Lsn,
        commit_time: PgTimestamp,
        xid: u32,
    },
    Commit {
        flags: u8,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_time: PgTimestamp,
    },
    Origin {
        commit_lsn: Lsn,
        name: String,
    },
    Relation(Relation),
    Type {
        oid: u32,
        namespace: String,
        name: String,
    },
    Insert {
        relation: u32,
        new: TupleData,
    },
    Update {
        relation: u32,
        /// The old key ('K', replica identity default or index) or whole
        /// old row ('O', replica identity full); absent when the key did
        /// not change under the default identity.
        old: Option<OldTuple>,
        new: TupleData,
    },
    Delete {
        relation: u32,
        old: OldTuple,
    },
    Truncate {
        cascade: bool,
        restart_identity: bool,
        relations: Vec<u32>,
    },
    Message {
        transactional: bool,
        lsn: Lsn,
        prefix: String,
        content: Bytes,
    },
}

/// A table as the publisher describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    pub id: u32,
    pub namespace: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    pub columns: Vec<RelationColumn>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelationColumn {
    /// Part of the replica identity (the key sent with updates and deletes).
    pub is_key: bool,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

/// `pg_class.relreplident`: what an update or delete carries of the old row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// The primary key.
    Default,
    /// Nothing: updates and deletes cannot be replicated.
    Nothing,
    /// The whole old row.
    Full,
    /// The columns of a chosen unique index.
    Index,
}

#[derive(Clone, Debug, PartialEq)]
pub enum OldTuple {
    Key(TupleData),
    Full(TupleData),
}

impl OldTuple {
    pub fn data(&self) -> &TupleData {
        match self {
            Self::Key(t) | Self::Full(t) => t,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct TupleData(pub Vec<ColumnValue>);

#[derive(Clone, Debug, PartialEq)]
pub enum ColumnValue {
    Null,
    /// A TOASTed value that did not change and was not sent.
    UnchangedToast,
    Text(Bytes),
    Binary(Bytes),
}

/// A message the decoder cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("pgoutput message is empty")]
    Empty,
    #[error("pgoutput message {tag:?} ends early: needed {needed} more bytes at offset {offset}")]
    Truncated {
        tag: char,
        offset: usize,
        needed: usize,
    },
    #[error(
        "pgoutput message {0:?} is not one this decoder knows (protocol version 1 is expected)"
    )]
    UnknownMessage(char),
    #[error("pgoutput {tag:?} message has unknown {what} {value:?}")]
    Unexpected {
        tag: char,
        what: &'static str,
        value: char,
    },
    #[error("pgoutput message {0:?} has a string without its terminating NUL or not in UTF-8")]
    BadString(char),
    #[error("pgoutput message {tag:?} has {extra} bytes after its end")]
    TrailingBytes { tag: char, extra: usize },
}

struct Reader {
    buf: Bytes,
    tag: char,
    start_len: usize,
}

impl Reader {
    fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.buf.remaining() < n {
            return Err(DecodeError::Truncated {
                tag: self.tag,
                offset: self.start_len - self.buf.remaining(),
                needed: n - self.buf.remaining(),
            });
        }
        Ok(())
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }
    fn i16(&mut self) -> Result<i16, DecodeError> {
        self.need(2)?;
        Ok(self.buf.get_i16())
    }
    fn i32(&mut self) -> Result<i32, DecodeError> {
        self.need(4)?;
        Ok(self.buf.get_i32())
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4)?;
        Ok(self.buf.get_u32())
    }
    fn i64(&mut self) -> Result<i64, DecodeError> {
        self.need(8)?;
        Ok(self.buf.get_i64())
    }
    fn lsn(&mut self) -> Result<Lsn, DecodeError> {
        self.need(8)?;
        Ok(Lsn(self.buf.get_u64()))
    }
    fn bytes(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        self.need(n)?;
        Ok(self.buf.split_to(n))
    }
    fn string(&mut self) -> Result<String, DecodeError> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::BadString(self.tag))?;
        let s = self.buf.split_to(end);
        self.buf.advance(1);
        String::from_utf8(s.to_vec()).map_err(|_| DecodeError::BadString(self.tag))
    }

    fn tuple(&mut self) -> Result<TupleData, DecodeError> {
        let n = self.i16()?.max(0) as usize;
        let mut values = Vec::with_capacity(n);
        for _ in 0..n {
            let kind = self.u8()?;
            values.push(match kind {
                b'n' => ColumnValue::Null,
                b'u' => ColumnValue::UnchangedToast,
                b't' | b'b' => {
                    let len = self.i32()?.max(0) as usize;
                    let value = self.bytes(len)?;
                    if kind == b't' {
                        ColumnValue::Text(value)
                    } else {
                        ColumnValue::Binary(value)
                    }
                }
                other => {
                    return Err(DecodeError::Unexpected {
                        tag: self.tag,
                        what: "column kind",
                        value: other as char,
                    })
                }
            });
        }
        Ok(TupleData(values))
    }

    fn old_tuple(&mut self, marker: u8) -> Result<OldTuple, DecodeError> {
        match marker {
            b'K' => Ok(OldTuple::Key(self.tuple()?)),
            b'O' => Ok(OldTuple::Full(self.tuple()?)),
            other => Err(DecodeError::Unexpected {
                tag: self.tag,
                what: "old-tuple marker",
                value: other as char,
            }),
        }
    }

    fn expect_new(&mut self) -> Result<(), DecodeError> {
        match self.u8()? {
            b'N' => Ok(()),
            other => Err(DecodeError::Unexpected {
                tag: self.tag,
                what: "new-tuple marker",
                value: other as char,
            }),
        }
    }
}

/// Decodes one pgoutput message (the payload of one XLogData).
pub fn decode(message: Bytes) -> Result<LogicalMessage, DecodeError> {
    let tag = *message.first().ok_or(DecodeError::Empty)? as char;
    let mut r = Reader {
        start_len: message.len(),
        buf: message.slice(1..),
        tag,
    };
    let decoded = match tag {
        'B' => LogicalMessage::Begin {
            final_lsn: r.lsn()?,
            commit_time: r.i64()?,
            xid: r.u32()?,
        },
        'C' => LogicalMessage::Commit {
            flags: r.u8()?,
            commit_lsn: r.lsn()?,
            end_lsn: r.lsn()?,
            commit_time: r.i64()?,
        },
        'O' => LogicalMessage::Origin {
            commit_lsn: r.lsn()?,
            name: r.string()?,
        },
        'R' => {
            let id = r.u32()?;
            let namespace = r.string()?;
            let name = r.string()?;
            let replica_identity = match r.u8()? {
                b'd' => ReplicaIdentity::Default,
                b'n' => ReplicaIdentity::Nothing,
                b'f' => ReplicaIdentity::Full,
                b'i' => ReplicaIdentity::Index,
                other => {
                    return Err(DecodeError::Unexpected {
                        tag,
                        what: "replica identity",
                        value: other as char,
                    })
                }
            };
            let n = r.i16()?.max(0) as usize;
            let mut columns = Vec::with_capacity(n);
            for _ in 0..n {
                columns.push(RelationColumn {
                    is_key: r.u8()? & 1 == 1,
                    name: r.string()?,
                    type_oid: r.u32()?,
                    type_modifier: r.i32()?,
                });
            }
            LogicalMessage::Relation(Relation {
                id,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        'Y' => LogicalMessage::Type {
            oid: r.u32()?,
            namespace: r.string()?,
            name: r.string()?,
        },
        'I' => {
            let relation = r.u32()?;
            r.expect_new()?;
            LogicalMessage::Insert {
                relation,
                new: r.tuple()?,
            }
        }
        'U' => {
            let relation = r.u32()?;
            let marker = r.u8()?;
            let old = if marker == b'N' {
                None
            } else {
                let old = r.old_tuple(marker)?;
                r.expect_new()?;
                Some(old)
            };
            LogicalMessage::Update {
                relation,
                old,
                new: r.tuple()?,
            }
        }
        'D' => {
            let relation = r.u32()?;
            let marker = r.u8()?;
            LogicalMessage::Delete {
                relation,
                old: r.old_tuple(marker)?,
            }
        }
        'T' => {
            let n = r.u32()? as usize;
            let options = r.u8()?;
            let relations = (0..n).map(|_| r.u32()).collect::<Result<_, _>>()?;
            LogicalMessage::Truncate {
                cascade: options & 1 != 0,
                restart_identity: options & 2 != 0,
                relations,
            }
        }
        'M' => {
            let transactional = r.u8()? & 1 == 1;
            let lsn = r.lsn()?;
            let prefix = r.string()?;
            let len = r.i32()?.max(0) as usize;
            LogicalMessage::Message {
                transactional,
                lsn,
                prefix,
                content: r.bytes(len)?,
            }
        }
        other => return Err(DecodeError::UnknownMessage(other)),
    };
    if !r.buf.is_empty() {
        return Err(DecodeError::TrailingBytes {
            tag,
            extra: r.buf.len(),
        });
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_and_unknown_messages_are_errors() {
        assert_eq!(decode(Bytes::new()), Err(DecodeError::Empty));
        assert_eq!(
            decode(Bytes::from_static(b"Z")),
            Err(DecodeError::UnknownMessage('Z'))
        );
        assert!(matches!(
            decode(Bytes::from_static(b"B\0\0\0\0")),
            Err(DecodeError::Truncated { tag: 'B', .. })
        ));
        let mut insert = b"I\0\0\0\x07N\0\x01t\0\0\0\x05ab".to_vec();
        assert!(matches!(
            decode(Bytes::from(insert.clone())),
            Err(DecodeError::Truncated { tag: 'I', .. })
        ));
        insert.extend_from_slice(b"cde");
        assert_eq!(
            decode(Bytes::from(insert.clone())).unwrap(),
            LogicalMessage::Insert {
                relation: 7,
                new: TupleData(vec![ColumnValue::Text(Bytes::from_static(b"abcde"))])
            }
        );
        insert.push(0);
        assert_eq!(
            decode(Bytes::from(insert)),
            Err(DecodeError::TrailingBytes { tag: 'I', extra: 1 })
        );
        assert!(matches!(
            decode(Bytes::from_static(b"I\0\0\0\x07N\0\x01x")),
            Err(DecodeError::Unexpected {
                what: "column kind",
                value: 'x',
                ..
            })
        ));
    }
}
