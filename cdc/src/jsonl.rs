//! The JSON-lines sink: the decoded change stream, one object per change,
//! for piping into a message broker instead of applying to targets.
//!
//! Each line: `{"lsn", "xid", "commit_time", "table", "op", "key", "new",
//! "old"}`, values in PostgreSQL's text form (the stream's session pins it),
//! `null` for SQL NULL. A column whose TOASTed value did not change is left
//! out of `new` and listed in `"unchanged"`. A transaction's lines are
//! flushed at its commit, and only then is the slot confirmed past it.

use std::io::Write;
use std::sync::{Arc, Mutex};

use serde_json::{json, Map, Value};

use crate::change::Table;
use crate::lsn::Lsn;
use crate::pgoutput::{ColumnValue, LogicalMessage, OldTuple, TupleData};

/// Where lines go: stdout for the CLI, a buffer in tests.
pub type Output = Arc<Mutex<Box<dyn Write + Send>>>;

pub struct JsonlSink {
    out: Output,
}

/// The transaction a change belongs to.
pub struct TxnInfo {
    pub commit_lsn: Lsn,
    pub xid: u32,
    /// Microseconds since 2000-01-01 UTC.
    pub commit_time: i64,
}

impl JsonlSink {
    pub fn new(out: Output) -> Self {
        Self { out }
    }

    /// Writes one change (insert, update, delete or truncate).
    pub fn change(
        &self,
        txn: &TxnInfo,
        table: &Table,
        message: &LogicalMessage,
    ) -> std::io::Result<()> {
        let (op, new, old) = match message {
            LogicalMessage::Insert { new, .. } => ("insert", Some(new), None),
            LogicalMessage::Update { new, old, .. } => {
                ("update", Some(new), old.as_ref().map(OldTuple::data))
            }
            LogicalMessage::Delete { old, .. } => ("delete", None, Some(old.data())),
            LogicalMessage::Truncate { .. } => ("truncate", None, None),
            _ => return Ok(()),
        };
        let names: Vec<&str> = table
            .relation
            .columns
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        let key_source = old.or(new);
        let key: Map<String, Value> = table
            .key
            .iter()
            .filter_map(|&i| Some((names[i].to_string(), value(key_source?.0.get(i)?)?)))
            .collect();
        let unchanged: Vec<&str> = new
            .map(|t| {
                t.0.iter()
                    .zip(&names)
                    .filter(|(v, _)| **v == ColumnValue::UnchangedToast)
                    .map(|(_, n)| *n)
                    .collect()
            })
            .unwrap_or_default();
        let line = json!({
            "lsn": txn.commit_lsn.to_string(),
            "xid": txn.xid,
            "commit_time": commit_time(txn.commit_time),
            "table": table.name(),
            "op": op,
            "key": key,
            "new": new.map(|t| row(&names, t)),
            "old": old.map(|t| row(&names, t)),
            "unchanged": unchanged,
        });
        let mut out = self.out.lock().expect("sink lock");
        serde_json::to_writer(&mut *out, &line)?;
        out.write_all(b"\n")
    }

    /// Writes one schema change: `op` is `ddl`, `table` the first table it
    /// touched, and `ddl` what the capture recorded.
    pub fn ddl(&self, txn: &TxnInfo, captured: &shardline_ddl::Captured) -> std::io::Result<()> {
        let line = json!({
            "lsn": txn.commit_lsn.to_string(),
            "xid": txn.xid,
            "commit_time": commit_time(txn.commit_time),
            "table": captured.touched_tables().first(),
            "op": "ddl",
            "ddl": {
                "id": captured.id,
                "tag": captured.tag,
                "event": captured.event,
                "statement": crate::ddl::statement_of(captured),
                "search_path": captured.search_path,
                "role": captured.role,
                "objects": captured.objects,
            },
        });
        let mut out = self.out.lock().expect("sink lock");
        serde_json::to_writer(&mut *out, &line)?;
        out.write_all(b"\n")
    }

    /// Makes a committed transaction's lines leave the process.
    pub fn commit(&self) -> std::io::Result<()> {
        self.out.lock().expect("sink lock").flush()
    }
}

fn value(v: &ColumnValue) -> Option<Value> {
    match v {
        ColumnValue::Null => Some(Value::Null),
        ColumnValue::UnchangedToast => None,
        ColumnValue::Text(b) | ColumnValue::Binary(b) => {
            Some(Value::String(String::from_utf8_lossy(b).into_owned()))
        }
    }
}

fn row(names: &[&str], tuple: &TupleData) -> Map<String, Value> {
    names
        .iter()
        .zip(&tuple.0)
        .filter_map(|(n, v)| Some((n.to_string(), value(v)?)))
        .collect()
}

fn commit_time(micros_since_2000: i64) -> String {
    const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;
    chrono::DateTime::from_timestamp_micros(micros_since_2000 + PG_EPOCH_UNIX_MICROS)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_default()
}
