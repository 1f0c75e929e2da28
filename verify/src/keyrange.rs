//! Key ranges: the buckets of an unsharded table as ranges of its primary
//! key, so a bucket's rows are read through the primary key index.
//!
//! A bucket that is a hash of the key holds rows from everywhere in the
//! table: finding them again means scanning the whole table a second time.
//! When every side orders the key the same way, buckets are instead cut at
//! keys sampled from the source (`TABLESAMPLE SYSTEM`, so no full scan), in
//! key order: the checksum pass assigns each row its range, and a differing
//! range is then read (and re-checked) by an index range scan of a few
//! thousand rows, in windows of [`WINDOW_ROWS`] when it holds more.
//!
//! "The same way" is checked, not assumed: every side's key columns must
//! have the same types, from a list whose order is the same on every server
//! (integers, numeric, floats, booleans, dates and times, uuid, bytea), and
//! strings must use a byte-order collation (`C`, `POSIX`, `C.UTF-8`). Any
//! other key (a text key under `en_US` or ICU, an enum, a domain, a type
//! that differs between sides) keeps hash buckets; so do read models and
//! sharded tables, whose buckets are the placement.
//!
//! How a row finds its range costs about what hashing its key did: when the
//! first key column is a fixed-width type with enough distinct values the
//! ranges are cut on it alone, by `width_bucket` (a binary search in C);
//! otherwise by a binary tree of row comparisons over the whole key (run
//! with `jit = off`: compiling that tree costs more than the scan).

use std::collections::BTreeSet;

use shardline_topology::quote_ident;

use crate::checksum::Column;
use crate::compare::Side;
use crate::VerifyError;

/// Keys sampled from the source to cut the ranges: about this many per
/// range, so ranges hold similar numbers of rows.
const SAMPLE_ROWS: f64 = 32.0 * 1024.0;
/// Most ranges a table is cut into (as many as there are hash buckets).
const MAX_RANGES: i64 = 1024;
/// A range is read in windows of at most this many source rows.
pub const WINDOW_ROWS: i64 = 20_000;
/// Re-checks and drills read ranges one index scan each up to this many
/// differing ranges; past that one scan of the table is cheaper.
pub const MAX_INDEXED_RANGES: usize = 64;

/// Key column types that order the same on every server (compared by
/// their base type, modifiers stripped).
const ORDERED_TYPES: &[&str] = &[
    "smallint",
    "integer",
    "bigint",
    "oid",
    "numeric",
    "real",
    "double precision",
    "boolean",
    "date",
    "time without time zone",
    "timestamp without time zone",
    "timestamp with time zone",
    "uuid",
    "bytea",
    "text",
    "character varying",
    "character",
];

/// Fixed-width types whose text needs no quoting in an array literal:
/// `width_bucket` searches an array of them in O(log n).
const FIXED_TYPES: &[&str] = &[
    "smallint",
    "integer",
    "bigint",
    "oid",
    "real",
    "double precision",
    "boolean",
    "date",
    "time without time zone",
    "timestamp without time zone",
    "timestamp with time zone",
    "uuid",
];

/// The ranges of one comparison: bucket `i` holds the keys from bound
/// `i - 1` (inclusive) to bound `i` (exclusive); bucket 0 everything below
/// the first bound, the last bucket everything from the last bound on.
#[derive(Clone, Debug)]
pub struct KeyRanges {
    key: Vec<Column>,
    /// The ranges are cut on the first key column alone.
    first_only: bool,
    /// Each bound's key values as text (one value when `first_only`).
    bounds: Vec<Vec<String>>,
}

impl KeyRanges {
    /// Ranges for a table whose key every side orders the same way, from a
    /// sample of the source; `None` where hash buckets must stay.
    pub async fn plan(
        table: &str,
        key: &[Column],
        source: (&Side, &str),
        targets: &[(&Side, &str)],
    ) -> Result<Option<Self>, VerifyError> {
        if key.is_empty() || source.1.starts_with('(') {
            return Ok(None);
        }
        for (side, relation) in std::iter::once(&source).chain(targets) {
            if !ordered_alike(side, table, relation, key).await? {
                return Ok(None);
            }
        }
        let Some(full) = sample(source.0, table, source.1, key).await? else {
            return Ok(None);
        };
        let mut firsts: Vec<Vec<String>> = Vec::new();
        for b in &full {
            if firsts.last().map(|l| &l[0]) != Some(&b[0]) {
                firsts.push(vec![b[0].clone()]);
            }
        }
        let first_only = FIXED_TYPES.contains(&key[0].base_type().as_str())
            && (key.len() == 1 || firsts.len() * 2 >= full.len());
        Ok(Some(Self {
            key: key.to_vec(),
            first_only,
            bounds: if first_only { firsts } else { full },
        }))
    }

    /// The bucket of the row `alias`, as an integer.
    pub fn bucket_sql(&self, alias: &str) -> String {
        if self.bounds.is_empty() {
            return "0".into();
        }
        if self.first_only {
            let elements: Vec<String> = self
                .bounds
                .iter()
                .map(|b| format!("\"{}\"", b[0]))
                .collect();
            return format!(
                "width_bucket({}, {}::{}[])",
                self.key[0].qualified(alias),
                literal(&format!("{{{}}}", elements.join(","))),
                self.key[0].sql_type
            );
        }
        let tuple = self.tuple(alias);
        self.tree(&tuple, 0, self.bounds.len())
    }

    /// Buckets `lo..=hi` as nested comparisons: a binary search.
    fn tree(&self, tuple: &str, lo: usize, hi: usize) -> String {
        if lo == hi {
            return lo.to_string();
        }
        let mid = (lo + hi).div_ceil(2);
        format!(
            "CASE WHEN {tuple} < {} THEN {} ELSE {} END",
            self.value(&self.bounds[mid - 1]),
            self.tree(tuple, lo, mid - 1),
            self.tree(tuple, mid, hi)
        )
    }

    /// The key of `alias`, as the bounds compare with it.
    fn tuple(&self, alias: &str) -> String {
        let cols = if self.first_only {
            &self.key[..1]
        } else {
            &self.key[..]
        };
        tuple_of(cols, alias)
    }

    /// A bound as a typed constant: a scalar or a `ROW(…)`.
    fn value(&self, bound: &[String]) -> String {
        value_of(&self.key, bound)
    }

    /// The condition selecting bucket `b` of `alias`: a range the key's
    /// index reads directly.
    pub fn range_sql(&self, bucket: i64, alias: &str) -> String {
        let tuple = self.tuple(alias);
        let b = bucket.max(0) as usize;
        let lower = (b > 0).then(|| format!("{tuple} >= {}", self.value(&self.bounds[b - 1])));
        let upper = self
            .bounds
            .get(b)
            .map(|bound| format!("{tuple} < {}", self.value(bound)));
        match (lower, upper) {
            (Some(l), Some(u)) => format!("({l} AND {u})"),
            (Some(c), None) | (None, Some(c)) => format!("({c})"),
            (None, None) => "true".into(),
        }
    }

    /// The condition selecting every bucket of `buckets`.
    pub fn ranges_sql(&self, buckets: &BTreeSet<i64>, alias: &str) -> String {
        let parts: Vec<String> = buckets.iter().map(|b| self.range_sql(*b, alias)).collect();
        format!("({})", parts.join(" OR "))
    }

    /// Whether the bucket expression is a tree of comparisons, which the
    /// sides must run without JIT compilation.
    pub fn is_tree(&self) -> bool {
        !self.first_only && !self.bounds.is_empty()
    }

    /// A window of bucket `b`'s rows in key order: those after the key
    /// `after` and up to the key `upto` (both whole keys, as text).
    pub fn window_sql(
        &self,
        bucket: i64,
        alias: &str,
        after: Option<&[String]>,
        upto: Option<&[String]>,
    ) -> String {
        let tuple = tuple_of(&self.key, alias);
        let mut cond = self.range_sql(bucket, alias);
        if let Some(a) = after {
            cond.push_str(&format!(" AND {tuple} > {}", value_of(&self.key, a)));
        }
        if let Some(u) = upto {
            cond.push_str(&format!(" AND {tuple} <= {}", value_of(&self.key, u)));
        }
        cond
    }

    /// `ORDER BY` of the whole key, which the primary key index provides.
    pub fn order_sql(&self, alias: &str) -> String {
        self.key
            .iter()
            .map(|c| c.qualified(alias))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn tuple_of(cols: &[Column], alias: &str) -> String {
    let parts: Vec<String> = cols.iter().map(|c| c.qualified(alias)).collect();
    if parts.len() == 1 {
        parts[0].clone()
    } else {
        format!("ROW({})", parts.join(", "))
    }
}

fn value_of(cols: &[Column], values: &[String]) -> String {
    let parts: Vec<String> = cols
        .iter()
        .zip(values)
        .map(|(c, v)| format!("{}::{}", literal(v), c.sql_type))
        .collect();
    if parts.len() == 1 {
        parts[0].clone()
    } else {
        format!("ROW({})", parts.join(", "))
    }
}

/// A string constant (the session has standard_conforming_strings on).
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Whether a collation orders strings by their bytes (as `C` does): then
/// two servers cannot disagree about which of two keys comes first.
fn byte_order(name: &str) -> bool {
    let n = name.to_ascii_lowercase().replace('-', "");
    matches!(n.as_str(), "c" | "posix" | "c.utf8")
}

/// Whether `side` holds the key columns with the source's types, each in
/// a type and collation whose order is the same everywhere.
async fn ordered_alike(
    side: &Side,
    table: &str,
    relation: &str,
    key: &[Column],
) -> Result<bool, VerifyError> {
    let err = |e| VerifyError::query(&side.name, table, e);
    // The database's default collation: its provider is in the catalog
    // from PostgreSQL 15 on (libc before).
    let default_sql = if side.version >= 150_000 {
        "SELECT datcollate::text, datlocprovider::text FROM pg_database WHERE datname = current_database()"
    } else {
        "SELECT datcollate::text, 'c' FROM pg_database WHERE datname = current_database()"
    };
    let db = side.client.query_one(default_sql, &[]).await.map_err(err)?;
    let default_ok = db.get::<_, String>(1) == "c" && byte_order(&db.get::<_, String>(0));
    let names: Vec<&str> = key.iter().map(|c| c.name.as_str()).collect();
    let rows = side
        .client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attcollation::int8,
                    coalesce(c.collname::text, ''), coalesce(c.collprovider::text, ''),
                    coalesce(c.collcollate::text, '')
               FROM pg_attribute a LEFT JOIN pg_collation c ON c.oid = a.attcollation
              WHERE a.attrelid = to_regclass($1) AND a.attname = ANY($2) AND a.attnum > 0
                AND NOT a.attisdropped",
            &[&relation, &names],
        )
        .await
        .map_err(err)?;
    Ok(key.iter().all(|k| {
        rows.iter().any(|r| {
            let (name, sql_type, collation): (String, String, i64) = (r.get(0), r.get(1), r.get(2));
            let (collname, provider, collate): (String, String, String) =
                (r.get(3), r.get(4), r.get(5));
            let collation_ok = match collation {
                0 => true,
                100 => default_ok,
                _ => byte_order(&collname) || (provider == "c" && byte_order(&collate)),
            };
            name == k.name
                && sql_type == k.sql_type
                && ORDERED_TYPES.contains(&k.base_type().as_str())
                && collation_ok
        })
    }))
}

/// Keys of a sample of the source, in key order, about one per range:
/// the lower bounds of buckets 1, 2, ….
async fn sample(
    side: &Side,
    table: &str,
    relation: &str,
    key: &[Column],
) -> Result<Option<Vec<Vec<String>>>, VerifyError> {
    let err = |e| VerifyError::query(&side.name, table, e);
    // Rows from the statistics, or from the heap's size where they are
    // stale or missing (20 rows a block: a low guess keeps the sample
    // small for a table that grew since it was analysed).
    let leaves = if side.version >= 120_000 {
        "SELECT relid FROM pg_partition_tree(to_regclass($1)) WHERE isleaf"
    } else {
        "SELECT to_regclass($1)"
    };
    let estimate: f64 = side
        .client
        .query_one(
            &format!(
                "SELECT coalesce(sum(greatest(c.reltuples::float8,
                         pg_relation_size(c.oid) / current_setting('block_size')::float8 * 20)), 0)
                   FROM pg_class c WHERE c.oid IN ({leaves})"
            ),
            &[&relation],
        )
        .await
        .map_err(err)?
        .get(0);
    let percent = if estimate > SAMPLE_ROWS {
        (100.0 * SAMPLE_ROWS / estimate).max(0.0001)
    } else {
        100.0
    };
    let cols: Vec<String> = key.iter().map(|c| c.qualified("t")).collect();
    let texts: Vec<String> = key
        .iter()
        .map(|c| format!("{}::text", quote_ident(&c.name)))
        .collect();
    let sql = format!(
        "SELECT {texts} FROM (
           SELECT {cols}, row_number() OVER (ORDER BY {cols}) AS r, count(*) OVER () AS n
             FROM {relation} t TABLESAMPLE SYSTEM ({percent})) s
          WHERE r > 1 AND (r - 1) % greatest((n + {MAX_RANGES} - 1) / {MAX_RANGES}, 1) = 0
          ORDER BY r",
        texts = texts.join(", "),
        cols = cols.join(", "),
    );
    // A relation that cannot be sampled (a view, say) keeps hash buckets.
    let rows = match side.client.query(&sql, &[]).await {
        Ok(rows) => rows,
        Err(e) if e.as_db_error().is_some() => return Ok(None),
        Err(e) => return Err(err(e)),
    };
    Ok(Some(
        rows.iter()
            .map(|r| (0..key.len()).map(|i| r.get::<_, String>(i)).collect())
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, sql_type: &str) -> Column {
        Column {
            name: name.into(),
            sql_type: sql_type.into(),
        }
    }

    fn ranges(key: Vec<Column>, first_only: bool, bounds: &[&[&str]]) -> KeyRanges {
        KeyRanges {
            key,
            first_only,
            bounds: bounds
                .iter()
                .map(|b| b.iter().map(|s| s.to_string()).collect())
                .collect(),
        }
    }

    #[test]
    fn a_first_column_of_fixed_width_is_searched_by_width_bucket() {
        let r = ranges(
            vec![col("merchant_id", "bigint"), col("id", "bigint")],
            true,
            &[&["10"], &["20"]],
        );
        assert_eq!(
            r.bucket_sql("t"),
            "width_bucket(t.\"merchant_id\", '{\"10\",\"20\"}'::bigint[])"
        );
        assert_eq!(r.range_sql(0, "t"), "(t.\"merchant_id\" < '10'::bigint)");
        assert_eq!(
            r.range_sql(1, "t"),
            "(t.\"merchant_id\" >= '10'::bigint AND t.\"merchant_id\" < '20'::bigint)"
        );
        assert_eq!(r.range_sql(2, "t"), "(t.\"merchant_id\" >= '20'::bigint)");
    }

    #[test]
    fn a_whole_key_is_searched_by_a_tree_of_row_comparisons() {
        let r = ranges(
            vec![col("region", "text"), col("id", "bigint")],
            false,
            &[&["eu", "5"], &["it's", "1"]],
        );
        assert_eq!(
            r.bucket_sql("t"),
            "CASE WHEN ROW(t.\"region\", t.\"id\") < ROW('eu'::text, '5'::bigint) THEN 0 \
             ELSE CASE WHEN ROW(t.\"region\", t.\"id\") < ROW('it''s'::text, '1'::bigint) THEN 1 ELSE 2 END END"
        );
        assert_eq!(
            r.window_sql(2, "t", Some(&["us".into(), "7".into()]), None),
            "(ROW(t.\"region\", t.\"id\") >= ROW('it''s'::text, '1'::bigint)) \
             AND ROW(t.\"region\", t.\"id\") > ROW('us'::text, '7'::bigint)"
        );
        let none = ranges(vec![col("code", "text")], false, &[]);
        assert_eq!(none.bucket_sql("t"), "0");
        assert_eq!(none.range_sql(0, "t"), "true");
    }

    #[test]
    fn only_byte_order_collations_are_trusted() {
        assert!(byte_order("C"));
        assert!(byte_order("POSIX"));
        assert!(byte_order("C.UTF-8"));
        assert!(byte_order("C.utf8"));
        assert!(!byte_order("en_US.UTF-8"));
        assert!(!byte_order("und-x-icu"));
    }
}
