//! Statements on several databases at once: a SELECT whose rows are
//! merged, and writes whose row counts are combined. Every database is sent
//! its statement before any answer is read, so they run at the same time.

use bytes::{Bytes, BytesMut};

use super::{Db, Session, FLUSH_AT};
use crate::message::{self as msg, Frame};

impl Session {
    /// Sends each database its frames. When one cannot be sent, it is
    /// marked failed, the databases already sent theirs are drained, and
    /// `false` is returned.
    pub(super) async fn send_all(&mut self, frames: &[(Db, Bytes)]) -> bool {
        for (db, raw) in frames {
            let sent = match self.backend(*db).await {
                Ok(b) => b.send(raw).await,
                Err(e) => Err(e),
            };
            if let Err(e) = sent {
                self.backend_failed(*db, &e);
                let dbs: Vec<Db> = frames.iter().map(|(d, _)| *d).collect();
                self.drain(&dbs, *db).await;
                return false;
            }
        }
        true
    }

    /// The next frame from a database already sent a statement, or `None`
    /// after marking it failed (the client is told why).
    pub(super) async fn recv_from(&mut self, db: Db) -> Option<Frame> {
        let b = self.backends.get_mut(&db)?;
        match b.recv().await {
            Ok(f) => Some(f),
            Err(e) => {
                self.backend_failed(db, &e);
                None
            }
        }
    }

    /// Writes the client's buffered answer once it is large; `false` when
    /// the client is gone.
    pub(super) async fn flush_if_full(&mut self) -> bool {
        self.out.len() <= FLUSH_AT || self.flush().await.is_ok()
    }

    /// A SELECT on several shards whose rows are simply concatenated, cut
    /// at `limit`.
    pub(super) async fn scatter_rows(&mut self, dbs: &[Db], raw: &Bytes, limit: Option<u64>) {
        let frames: Vec<(Db, Bytes)> = dbs.iter().map(|db| (*db, raw.clone())).collect();
        if !self.send_all(&frames).await {
            return;
        }
        let mut rows: u64 = 0;
        let mut described: Option<Bytes> = None;
        let mut error: Option<Bytes> = None;
        for db in dbs {
            loop {
                let Some(f) = self.recv_from(*db).await else {
                    return;
                };
                match f.tag {
                    b'Z' => break,
                    b'T' => match &described {
                        None => {
                            self.out.extend_from_slice(&f.raw);
                            described = Some(f.raw.clone());
                        }
                        // Same column count; table OIDs differ per database.
                        Some(first) if first.get(5..7) == f.raw.get(5..7) => {}
                        Some(_) => {
                            error.get_or_insert_with(|| {
                                let mut e = BytesMut::new();
                                msg::error_response(
                                    &mut e,
                                    "XX000",
                                    "shards answered with different columns",
                                    None,
                                );
                                e.freeze()
                            });
                        }
                    },
                    b'D' => {
                        if error.is_none() && limit.is_none_or(|l| rows < l) {
                            rows += 1;
                            self.out.extend_from_slice(&f.raw);
                        }
                    }
                    b'E' => {
                        error.get_or_insert(f.raw.clone());
                    }
                    // CommandComplete is replaced by one for the merged rows.
                    b'C' => {}
                    _ => self.out.extend_from_slice(&f.raw),
                }
                if !self.flush_if_full().await {
                    return;
                }
            }
        }
        match error {
            Some(e) => self.out.extend_from_slice(&e),
            None => msg::command_complete(&mut self.out, &format!("SELECT {rows}")),
        }
    }

    /// Reads the remaining answers of shards already sent a query, after
    /// one of them failed.
    pub(super) async fn drain(&mut self, dbs: &[Db], failed: Db) {
        for db in dbs {
            if *db == failed {
                break;
            }
            if let Some(b) = self.backends.get_mut(db) {
                loop {
                    match b.recv().await {
                        Ok(f) if f.tag == b'Z' => break,
                        Ok(_) => {}
                        Err(_) => {
                            self.discard(*db);
                            break;
                        }
                    }
                }
            }
        }
    }

    /// A write on several shards (disjoint rows, or a replicated table's
    /// copies). The row count is summed over shards when `sum`, else the
    /// first shard's is reported (each copy of a replicated table changes
    /// the same rows).
    pub(super) async fn write_many(&mut self, frames: Vec<(Db, Bytes)>, sum: bool) {
        if !self.send_all(&frames).await {
            return;
        }
        let mut verb = String::new();
        let mut count: u64 = 0;
        let mut error: Option<Bytes> = None;
        for (i, (db, _)) in frames.iter().enumerate() {
            loop {
                let Some(f) = self.recv_from(*db).await else {
                    return;
                };
                match f.tag {
                    b'Z' => break,
                    b'C' => {
                        let mut body = f.body();
                        let tag = msg::cstr(&mut body).unwrap_or_default();
                        let (head, n) = tag.rsplit_once(' ').unwrap_or((&tag, "0"));
                        let n: u64 = n.parse().unwrap_or(0);
                        if i == 0 {
                            verb = head.to_string();
                            count = n;
                        } else if sum {
                            count += n;
                        }
                    }
                    b'E' => {
                        error.get_or_insert(f.raw.clone());
                    }
                    // RETURNING rows and notices are relayed as they come.
                    _ if sum => self.out.extend_from_slice(&f.raw),
                    _ if i == 0 => self.out.extend_from_slice(&f.raw),
                    _ => {}
                }
            }
        }
        match error {
            Some(e) => self.out.extend_from_slice(&e),
            None => msg::command_complete(&mut self.out, &format!("{verb} {count}")),
        }
    }
}
