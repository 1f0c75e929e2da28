//! Statements the router answers itself: `SHOW shardline.shards` (one row
//! per backend database: where it is, the buckets it owns, its pool and
//! whether it is up), `SHOW shardline.stats` (per database: queries,
//! errors, latency quantiles) and `SHOW shardline.clients` (one row per
//! client: who, from where, its state, backends held, what pins it). Both are ordinary result sets, in the
//! simple and the extended protocol, so psql, drivers and scripts read
//! them as they read any query.

use bytes::{BufMut, BytesMut};

use crate::clients::Clients;
use crate::message::{frame, put_cstr};
use crate::schema::Schema;
use crate::stats::{PoolState, Stats};

/// A `SHOW shardline.…` the router answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Shards,
    Stats,
    Clients,
}

impl Command {
    /// Recognises the statement, in any case and spacing, with or without
    /// a trailing semicolon.
    pub fn parse(sql: &str) -> Option<Self> {
        let sql = sql.trim().trim_end_matches(';').trim_end();
        let mut words = sql.split_whitespace();
        if !words.next()?.eq_ignore_ascii_case("show") {
            return None;
        }
        let what = words.next()?.to_ascii_lowercase();
        if words.next().is_some() {
            return None;
        }
        match what.as_str() {
            "shardline.shards" => Some(Self::Shards),
            "shardline.stats" => Some(Self::Stats),
            "shardline.clients" => Some(Self::Clients),
            _ => None,
        }
    }
}

/// A column's type, as its OID tells the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    Int8,
    Float8,
    Text,
    Timestamptz,
}

impl Type {
    fn oid(self) -> u32 {
        match self {
            Self::Int8 => 20,
            Self::Float8 => 701,
            Self::Text => 25,
            Self::Timestamptz => 1184,
        }
    }

    fn len(self) -> i16 {
        match self {
            Self::Int8 | Self::Float8 | Self::Timestamptz => 8,
            Self::Text => -1,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Float(f64),
    Text(String),
    /// A moment, as microseconds since the Unix epoch.
    Timestamp(i64),
}

impl Value {
    fn encode(&self, binary: bool, out: &mut BytesMut) {
        let bytes = match (self, binary) {
            (Self::Null, _) => {
                out.put_i32(-1);
                return;
            }
            (Self::Int(v), true) => v.to_be_bytes().to_vec(),
            (Self::Float(v), true) => v.to_be_bytes().to_vec(),
            (Self::Int(v), false) => v.to_string().into_bytes(),
            (Self::Float(v), false) => format!("{v:.3}").into_bytes(),
            (Self::Text(s), _) => s.as_bytes().to_vec(),
            // PostgreSQL's binary timestamptz counts from 2000-01-01 UTC.
            (Self::Timestamp(us), true) => (us - 946_684_800_000_000).to_be_bytes().to_vec(),
            (Self::Timestamp(us), false) => chrono::DateTime::from_timestamp_micros(*us)
                .map(|t| t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string())
                .unwrap_or_default()
                .into_bytes(),
        };
        out.put_i32(bytes.len() as i32);
        out.put_slice(&bytes);
    }
}

/// Rows the router made, with their columns.
#[derive(Clone, Debug)]
pub struct ResultSet {
    pub columns: Vec<(&'static str, Type)>,
    pub rows: Vec<Vec<Value>>,
}

/// The format of result column `i` from a Bind's result format codes:
/// none (all text), one for all, or one per column.
fn binary(formats: &[i16], i: usize) -> bool {
    match formats {
        [] => false,
        [one] => *one == 1,
        many => many.get(i) == Some(&1),
    }
}

impl ResultSet {
    pub fn row_description(&self, out: &mut BytesMut, formats: &[i16]) {
        frame(out, b'T', |o| {
            o.put_i16(self.columns.len() as i16);
            for (i, (name, ty)) in self.columns.iter().enumerate() {
                put_cstr(o, name);
                o.put_u32(0); // no table
                o.put_i16(0);
                o.put_u32(ty.oid());
                o.put_i16(ty.len());
                o.put_i32(-1);
                o.put_i16(i16::from(binary(formats, i)));
            }
        });
    }

    /// DataRows and the CommandComplete.
    pub fn data_rows(&self, out: &mut BytesMut, formats: &[i16]) {
        for row in &self.rows {
            frame(out, b'D', |o| {
                o.put_i16(row.len() as i16);
                for (i, v) in row.iter().enumerate() {
                    v.encode(binary(formats, i), o);
                }
            });
        }
        frame(out, b'C', |o| put_cstr(o, "SHOW"));
    }
}

/// The answer to `command` from the router's counters, pools and clients.
pub fn answer(
    command: Command,
    schema: &Schema,
    stats: &Stats,
    pools: &[Vec<PoolState>],
    clients: &Clients,
) -> ResultSet {
    if command == Command::Clients {
        return clients_answer(clients);
    }
    let int = |n: usize| Value::Int(n as i64);
    let text = |s: &str| Value::Text(s.to_string());
    let ms = |v: Option<f64>| v.map(Value::Float).unwrap_or(Value::Null);
    let mut rows = Vec::new();
    for (c, (dbs, pools)) in stats.dbs.iter().zip(pools).enumerate() {
        // The monolith's pool, during a cutover, comes after every context.
        let placement =
            (schema.contexts().get(c)).and_then(|info| info.sharding.as_ref().map(|(_, p)| p));
        for (db, pool) in dbs.iter().zip(pools) {
            let shard = db.shard.map(int).unwrap_or(Value::Null);
            rows.push(match command {
                Command::Shards => {
                    let buckets = match (placement, db.shard) {
                        (Some(p), Some(s)) => {
                            let ranges: Vec<String> = p
                                .ranges_of_shard(s)
                                .iter()
                                .map(|r| format!("{}-{}", r.start(), r.end()))
                                .collect();
                            text(&ranges.join(","))
                        }
                        _ => Value::Null,
                    };
                    vec![
                        text(&db.context),
                        shard,
                        text(&db.target),
                        buckets,
                        text(db.health().as_str()),
                        int(pool.max_size),
                        int(pool.size),
                        int(pool.idle),
                        int(pool.waiting),
                        db.last_error().map(Value::Text).unwrap_or(Value::Null),
                    ]
                }
                Command::Stats | Command::Clients => vec![
                    text(&db.context),
                    shard,
                    text(&db.target),
                    Value::Int(db.queries() as i64),
                    Value::Int(db.errors() as i64),
                    ms(db.quantile_ms(0.5)),
                    ms(db.quantile_ms(0.99)),
                    ms(db.mean_ms()),
                ],
            });
        }
    }
    let columns = match command {
        Command::Shards => vec![
            ("context", Type::Text),
            ("shard", Type::Int8),
            ("database", Type::Text),
            ("buckets", Type::Text),
            ("state", Type::Text),
            ("pool_max", Type::Int8),
            ("pool_connections", Type::Int8),
            ("pool_idle", Type::Int8),
            ("pool_waiting", Type::Int8),
            ("last_error", Type::Text),
        ],
        Command::Stats | Command::Clients => vec![
            ("context", Type::Text),
            ("shard", Type::Int8),
            ("database", Type::Text),
            ("queries", Type::Int8),
            ("errors", Type::Int8),
            ("p50_ms", Type::Float8),
            ("p99_ms", Type::Float8),
            ("mean_ms", Type::Float8),
        ],
    };
    ResultSet { columns, rows }
}

/// One row per client, oldest first.
fn clients_answer(clients: &Clients) -> ResultSet {
    let text = |s: Option<String>| s.map(Value::Text).unwrap_or(Value::Null);
    let rows = clients
        .rows()
        .into_iter()
        .map(|c| {
            let since = c
                .since
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_micros() as i64)
                .unwrap_or(0);
            vec![
                text(c.user),
                text(c.application_name),
                Value::Text(c.addr.to_string()),
                Value::Text(c.state.as_str().to_string()),
                Value::Int(c.backends as i64),
                text(c.pinned.map(str::to_string)),
                Value::Timestamp(since),
            ]
        })
        .collect();
    ResultSet {
        columns: vec![
            ("user", Type::Text),
            ("application_name", Type::Text),
            ("address", Type::Text),
            ("state", Type::Text),
            ("backends", Type::Int8),
            ("pinned", Type::Text),
            ("connected_since", Type::Timestamptz),
        ],
        rows,
    }
}

/// The result format codes of a Bind body (after its parameters).
pub fn result_formats(mut b: &[u8]) -> Option<Vec<i16>> {
    fn skip_cstr(b: &mut &[u8]) -> Option<()> {
        let end = b.iter().position(|c| *c == 0)?;
        *b = &b[end + 1..];
        Some(())
    }
    fn i16_of(b: &mut &[u8]) -> Option<i16> {
        let v = i16::from_be_bytes(b.get(..2)?.try_into().ok()?);
        *b = &b[2..];
        Some(v)
    }
    skip_cstr(&mut b)?;
    skip_cstr(&mut b)?;
    let nf = i16_of(&mut b)?.max(0) as usize;
    b = b.get(nf * 2..)?;
    for _ in 0..i16_of(&mut b)?.max(0) {
        let len = i32::from_be_bytes(b.get(..4)?.try_into().ok()?);
        b = b.get(4 + len.max(0) as usize..)?;
    }
    (0..i16_of(&mut b)?.max(0))
        .map(|_| i16_of(&mut b))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_only_the_router_s_own_show_statements() {
        assert_eq!(
            Command::parse("SHOW shardline.shards"),
            Some(Command::Shards)
        );
        assert_eq!(
            Command::parse("  show   SHARDLINE.STATS ;"),
            Some(Command::Stats)
        );
        assert_eq!(
            Command::parse("SHOW SHARDLINE.clients"),
            Some(Command::Clients)
        );
        assert_eq!(Command::parse("SHOW shardline.merchant_id"), None);
        assert_eq!(Command::parse("SHOW search_path"), None);
        assert_eq!(Command::parse("SHOW shardline.stats extra"), None);
        assert_eq!(Command::parse("SELECT 1"), None);
    }

    #[test]
    fn values_encode_in_text_or_binary_as_the_client_asked() {
        let set = ResultSet {
            columns: vec![("n", Type::Int8), ("s", Type::Text)],
            rows: vec![vec![Value::Int(7), Value::Null]],
        };
        let mut text = BytesMut::new();
        set.data_rows(&mut text, &[]);
        assert_eq!(
            &text[..],
            b"D\0\0\0\x0f\0\x02\0\0\0\x017\xff\xff\xff\xffC\0\0\0\x09SHOW\0"
        );
        let mut bin = BytesMut::new();
        set.data_rows(&mut bin, &[1]);
        assert_eq!(&bin[7..19], b"\0\0\0\x08\0\0\0\0\0\0\0\x07");

        // 2000-01-01 00:00:01.5 UTC: 1.5 s past PostgreSQL's epoch.
        let at = Value::Timestamp(946_684_801_500_000);
        let mut t = BytesMut::new();
        at.encode(false, &mut t);
        assert_eq!(&t[4..], b"2000-01-01 00:00:01.500000+00");
        let mut b = BytesMut::new();
        at.encode(true, &mut b);
        assert_eq!(&b[4..], 1_500_000i64.to_be_bytes());
    }

    #[test]
    fn bind_result_formats_are_read_past_the_parameters() {
        let mut b = BytesMut::new();
        put_cstr(&mut b, "");
        put_cstr(&mut b, "s");
        b.put_i16(1);
        b.put_i16(1);
        b.put_i16(2);
        b.put_i32(3);
        b.put_slice(b"abc");
        b.put_i32(-1);
        b.put_i16(2);
        b.put_i16(1);
        b.put_i16(0);
        assert_eq!(result_formats(&b), Some(vec![1, 0]));
        assert_eq!(result_formats(&b[..b.len() - 1]), None);
    }
}
