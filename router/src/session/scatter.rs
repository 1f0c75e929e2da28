//! Statements on several databases at once: a SELECT whose rows are
//! merged, and writes whose row counts are combined. Every database is sent
//! its statement before any answer is read, so they run at the same time.
//!
//! A scatter SELECT is answered as one database would answer it: one
//! RowDescription, the merged DataRows, one CommandComplete. Rows are
//! concatenated, or k-way merged when ordered ([`crate::order`]), or
//! re-aggregated ([`crate::aggregate`]); a merge the router cannot do
//! exactly for the result's column types is refused with 0A000 before any
//! row is sent.

use std::collections::VecDeque;

use bytes::Bytes;

use super::{Db, Session, FLUSH_AT};
use crate::aggregate::Combine;
use crate::message::{self as msg, Frame};
use crate::order::{Merge, Order};
use crate::row::{self, Column};
use crate::{Aggregate, MergeShape, Output, SortKey};

/// Where a shard's answer stands.
struct Shard {
    db: Db,
    /// Its ReadyForQuery was read (or the connection was dropped).
    done: bool,
    /// Whether each ParseComplete / CloseComplete is the client's.
    parses: VecDeque<bool>,
    closes: VecDeque<bool>,
}

/// Why a scatter read stopped early.
enum Stop {
    /// A backend failed; the client was already told.
    Reported,
    /// A shard's own ErrorResponse, relayed as is.
    Backend(Bytes),
    /// The router refuses: SQLSTATE, message, hint.
    Refuse(&'static str, String, &'static str),
    ClientGone,
}

const MERGE_HINT: &str = "ORDER BY output columns of integer, numeric, float, bool, date, timestamp or uuid type, or text with COLLATE \"C\"; or add the shard key to the WHERE clause";

/// How one scatter SELECT is answered.
pub(super) struct ScatterRead<'a> {
    pub shape: &'a MergeShape,
    /// The LIMIT, resolved (bind parameters read).
    pub limit: Option<u64>,
    /// Rows of the merged stream skipped before the LIMIT counts.
    pub offset: u64,
    /// The extended protocol: the shards' answers open with ParseComplete
    /// and BindComplete, and the rows' RowDescription answers a Describe of
    /// the portal that the router adds when the client did not.
    pub extended: bool,
    /// Whether the client asked for the rows' RowDescription.
    pub describe: bool,
}

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
        if !self.backends.contains_key(&db) {
            return None;
        }
        match self.recv(db).await {
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

    /// A SELECT on several shards, merged into one answer. Each database is
    /// sent its frames (a Query, or a Parse/Bind/Describe/Execute/Sync).
    pub(super) async fn scatter_read(&mut self, frames: Vec<(Db, Bytes)>, read: ScatterRead<'_>) {
        let queues = frames.iter().map(|_| Default::default()).collect();
        self.scatter_read_with(frames, read, queues).await;
    }

    /// [`Self::scatter_read`] with, per shard, whether each ParseComplete
    /// and CloseComplete answers the client (`true`) or the router. Returns
    /// whether the answer was merged without an error.
    pub(super) async fn scatter_read_with(
        &mut self,
        frames: Vec<(Db, Bytes)>,
        read: ScatterRead<'_>,
        queues: Vec<(VecDeque<bool>, VecDeque<bool>)>,
    ) -> bool {
        if !self.send_all(&frames).await {
            return false;
        }
        let mut shards: Vec<Shard> = frames
            .iter()
            .zip(queues)
            .map(|((db, _), (parses, closes))| Shard {
                db: *db,
                done: false,
                parses,
                closes,
            })
            .collect();
        let result = self.merge_answers(&mut shards, &read).await;
        // Every shard's answer is read to its end, so each connection is
        // ready for the next statement, whatever was sent to the client.
        for sh in &shards {
            if !sh.done {
                self.drain_one(sh.db).await;
            }
        }
        match result {
            Ok(rows) => {
                msg::command_complete(&mut self.out, &format!("SELECT {rows}"));
                return true;
            }
            Err(Stop::Backend(e)) => self.out.extend_from_slice(&e),
            Err(Stop::Refuse(code, m, hint)) => self.reject(code, &m, Some(hint)),
            Err(Stop::Reported | Stop::ClientGone) => {}
        }
        false
    }

    async fn merge_answers(
        &mut self,
        shards: &mut [Shard],
        read: &ScatterRead<'_>,
    ) -> Result<u64, Stop> {
        let mut described: Option<(Frame, Vec<Column>)> = None;
        for i in 0..shards.len() {
            let t = self.head(shards, i, read.extended).await?;
            let cols = row::columns(t.body()).ok_or_else(|| {
                Stop::Refuse(
                    "08P01",
                    "a shard sent a malformed RowDescription".into(),
                    MERGE_HINT,
                )
            })?;
            match &described {
                None => described = Some((t, cols)),
                Some((_, first)) => {
                    let same = first.len() == cols.len()
                        && first
                            .iter()
                            .zip(&cols)
                            .all(|(a, b)| a.type_oid == b.type_oid && a.format == b.format);
                    if !same {
                        return Err(Stop::Refuse(
                            "XX000",
                            format!(
                                "shards answered with different columns: {first:?} and {cols:?}"
                            ),
                            "check that every shard has the same schema",
                        ));
                    }
                }
            }
        }
        let Some((t, columns)) = described else {
            return Ok(0);
        };
        let c_collation = self.c_collation(shards);
        let n_shards = shards.len();
        let refuse = |m: String| {
            Stop::Refuse(
                "0A000",
                format!(
                    "SELECT on {} shards cannot be merged correctly: {m}",
                    n_shards
                ),
                MERGE_HINT,
            )
        };
        let limit = read.limit.unwrap_or(u64::MAX);
        match read.shape {
            MergeShape::Rows { order, .. } if order.is_empty() => {
                self.relay_description(&t, read)?;
                let (mut rows, mut skip) = (0, read.offset);
                for i in 0..shards.len() {
                    while let Some(r) = self.next_row(shards, i).await? {
                        if skip > 0 {
                            skip -= 1;
                        } else if rows < limit {
                            rows += 1;
                            self.out.extend_from_slice(&r.raw);
                            self.flush_or_stop().await?;
                        }
                    }
                }
                Ok(rows)
            }
            MergeShape::Rows { order, .. } => {
                let order = Order::resolve(order, &columns, c_collation).map_err(refuse)?;
                self.relay_description(&t, read)?;
                let mut merge = Merge::new(&order);
                for i in 0..shards.len() {
                    if let Some(r) = self.next_row(shards, i).await? {
                        let key = order.key(r.body()).map_err(refuse)?;
                        merge.push(i, key, r);
                    }
                }
                let (mut rows, mut skip) = (0, read.offset);
                while rows < limit {
                    let Some((i, r)) = merge.pop() else { break };
                    if skip > 0 {
                        skip -= 1;
                    } else {
                        rows += 1;
                        self.out.extend_from_slice(&r.raw);
                        self.flush_or_stop().await?;
                    }
                    if let Some(r) = self.next_row(shards, i).await? {
                        let key = order.key(r.body()).map_err(refuse)?;
                        merge.push(i, key, r);
                    }
                }
                Ok(rows)
            }
            MergeShape::Aggregate { outputs, order, .. } => {
                self.combine(shards, &t, &columns, outputs, order, read)
                    .await
            }
        }
    }

    /// Re-aggregates every shard's rows, then sorts the combined rows.
    async fn combine(
        &mut self,
        shards: &mut [Shard],
        t: &Frame,
        columns: &[Column],
        outputs: &[Output],
        sort: &[SortKey],
        read: &ScatterRead<'_>,
    ) -> Result<u64, Stop> {
        let c_collation = self.c_collation(shards);
        let n_shards = shards.len();
        let refuse = |code: &'static str, m: String| {
            Stop::Refuse(
                code,
                format!(
                    "SELECT on {} shards cannot be merged correctly: {m}",
                    n_shards
                ),
                MERGE_HINT,
            )
        };
        let mut combine =
            Combine::new(outputs, columns, c_collation).map_err(|e| refuse(e.code, e.message))?;
        // With avg, the client gets its own columns, not the shards' pairs.
        let client_t = if outputs.contains(&Output::Aggregate(Aggregate::Avg)) {
            let avg: Vec<bool> = outputs
                .iter()
                .map(|o| *o == Output::Aggregate(Aggregate::Avg))
                .collect();
            let raw = row::join_avg_columns(t.body(), &avg)
                .ok_or_else(|| {
                    refuse(
                        "XX000",
                        "a RowDescription without avg's sum and count".into(),
                    )
                })?
                .freeze();
            Frame { tag: b'T', raw }
        } else {
            t.clone()
        };
        let client_columns = row::columns(client_t.body()).unwrap_or_default();
        let order =
            Order::resolve(sort, &client_columns, c_collation).map_err(|m| refuse("0A000", m))?;
        for i in 0..shards.len() {
            while let Some(r) = self.next_row(shards, i).await? {
                combine
                    .add(r.body())
                    .map_err(|e| refuse(e.code, e.message))?;
            }
        }
        let rows = combine.finish().map_err(|e| refuse(e.code, e.message))?;
        let mut keyed = rows
            .into_iter()
            .map(|r| order.key(&r[5..]).map(|k| (k, r)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|m| refuse("0A000", m))?;
        // Stable: groups with equal keys keep their first-seen order.
        keyed.sort_by(|a, b| order.cmp(&a.0, &b.0));
        self.relay_description(&client_t, read)?;
        let limit = read.limit.unwrap_or(u64::MAX);
        let mut n = 0;
        for (_, r) in keyed {
            if n >= limit {
                break;
            }
            n += 1;
            self.out.extend_from_slice(&r);
            self.flush_or_stop().await?;
        }
        Ok(n)
    }

    /// Whether every shard sorts text bytewise (collation C).
    fn c_collation(&self, shards: &[Shard]) -> bool {
        shards
            .iter()
            .all(|sh| self.backends.get(&sh.db).is_some_and(|b| b.bytewise_text))
    }

    fn relay_description(&mut self, t: &Frame, read: &ScatterRead<'_>) -> Result<(), Stop> {
        if read.describe {
            self.out.extend_from_slice(&t.raw);
        }
        Ok(())
    }

    async fn flush_or_stop(&mut self) -> Result<(), Stop> {
        if self.flush_if_full().await {
            Ok(())
        } else {
            self.gone = true;
            Err(Stop::ClientGone)
        }
    }

    async fn next_frame(&mut self, shards: &mut [Shard], i: usize) -> Result<Frame, Stop> {
        match self.recv_from(shards[i].db).await {
            // The shard's server ends this connection (shutdown, a
            // terminated backend): the statement fails, the client's
            // connection to the router does not.
            Some(f) if f.tag == b'E' && msg::is_fatal(f.body()) => {
                shards[i].done = true;
                let (code, message) = msg::error_fields(f.body());
                let db = shards[i].db;
                let m = format!("{}: {message}", self.db_name(db));
                self.discard(db);
                self.reject(
                    if code.is_empty() { "08006" } else { &code },
                    &m,
                    Some("the router retries with a new connection on the next statement"),
                );
                Err(Stop::Reported)
            }
            Some(f) => {
                if f.tag == b'Z' {
                    shards[i].done = true;
                }
                Ok(f)
            }
            None => {
                shards[i].done = true;
                Err(Stop::Reported)
            }
        }
    }

    /// Reads a shard's answer up to the RowDescription of its rows. What
    /// comes before (ParseComplete, a statement's description,
    /// BindComplete) is relayed from the first shard only.
    async fn head(
        &mut self,
        shards: &mut [Shard],
        i: usize,
        extended: bool,
    ) -> Result<Frame, Stop> {
        let mut bound = !extended;
        loop {
            let f = self.next_frame(shards, i).await?;
            match f.tag {
                b'T' if bound => return Ok(f),
                b'E' => return Err(Stop::Backend(f.raw)),
                b'Z' | b'n' if bound => {
                    return Err(Stop::Refuse(
                        "XX000",
                        format!(
                            "{} answered the SELECT without rows",
                            self.db_name(shards[i].db)
                        ),
                        "check that every shard has the same schema",
                    ))
                }
                b'2' => {
                    bound = true;
                    if i == 0 {
                        self.out.extend_from_slice(&f.raw);
                    }
                }
                b'1' | b'3' => {
                    let q = if f.tag == b'1' {
                        &mut shards[i].parses
                    } else {
                        &mut shards[i].closes
                    };
                    if q.pop_front().unwrap_or(true) && i == 0 {
                        self.out.extend_from_slice(&f.raw);
                    }
                }
                _ if i == 0 => self.out.extend_from_slice(&f.raw),
                _ => {}
            }
        }
    }

    /// A shard's next DataRow, or `None` once its answer has ended.
    async fn next_row(&mut self, shards: &mut [Shard], i: usize) -> Result<Option<Frame>, Stop> {
        loop {
            if shards[i].done {
                return Ok(None);
            }
            let f = self.next_frame(shards, i).await?;
            match f.tag {
                b'D' => return Ok(Some(f)),
                b'E' => return Err(Stop::Backend(f.raw)),
                b'N' => self.out.extend_from_slice(&f.raw),
                _ => {}
            }
        }
    }

    /// Reads the remaining answers of shards already sent a query, after
    /// one of them failed: those before `failed` in `dbs`.
    pub(super) async fn drain(&mut self, dbs: &[Db], failed: Db) {
        for db in dbs.iter().take_while(|db| **db != failed) {
            self.drain_one(*db).await;
        }
    }

    /// Reads a backend's answer up to its ReadyForQuery, so the connection
    /// serves the next statement; one that fails meanwhile is dropped.
    async fn drain_one(&mut self, db: Db) {
        while self.backends.contains_key(&db) {
            // A client that hung up leaves nothing worth reading: the
            // connection is dropped, which cancels its statement.
            if self.gone {
                self.discard(db);
                break;
            }
            match self.recv(db).await {
                Ok(f) if f.tag == b'Z' => break,
                Ok(_) => {}
                Err(_) => {
                    self.discard(db);
                    break;
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
                    // The others' answers are still on their connections.
                    for (later, _) in &frames[i + 1..] {
                        self.drain_one(*later).await;
                    }
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
                    // RETURNING rows and notices are relayed as they come,
                    // never gathered: the output is written once it is large.
                    _ if sum || i == 0 => {
                        self.out.extend_from_slice(&f.raw);
                        if !self.flush_if_full().await {
                            self.gone = true;
                            for (db, _) in &frames[i..] {
                                self.drain_one(*db).await;
                            }
                            return;
                        }
                    }
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
