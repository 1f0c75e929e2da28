//! ORDER BY over rows from several shards: the sort columns resolved
//! against the RowDescription, the sort key of each DataRow, and the
//! k-way merge that keeps one pending row per shard in a binary heap.
//!
//! Each shard already sorted its rows (the statement is sent as written),
//! so the merged stream is sorted by always taking the smallest pending
//! row; nothing is buffered beyond one row per shard.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::datum::{Datum, Decoder, Undecodable};
use crate::merge::{SortColumn, SortKey};
use crate::row::{self, Column};

/// One ORDER BY item resolved to an output column.
#[derive(Clone, Debug)]
struct Key {
    index: usize,
    decoder: Decoder,
    descending: bool,
    nulls_first: bool,
}

/// A statement's ORDER BY, resolved for one result.
#[derive(Clone, Debug)]
pub(crate) struct Order {
    keys: Vec<Key>,
}

/// The sort key of one row: a value (or NULL) per ORDER BY item.
pub(crate) type RowKey = Vec<Option<Datum>>;

impl Order {
    /// Resolves the ORDER BY items against the result's columns; the
    /// reason when one cannot be merged. `c_collation` says the database
    /// sorts text bytewise.
    pub fn resolve(
        sort: &[SortKey],
        columns: &[Column],
        c_collation: bool,
    ) -> Result<Self, String> {
        let keys = sort
            .iter()
            .map(|k| {
                let index = match &k.column {
                    SortColumn::Position(i) if *i < columns.len() => *i,
                    SortColumn::Position(i) => {
                        return Err(format!("ORDER BY {} is not an output column", i + 1))
                    }
                    SortColumn::Name(name) => {
                        let mut found = columns.iter().enumerate().filter(|(_, c)| &c.name == name);
                        match (found.next(), found.next()) {
                            (Some((i, _)), None) => i,
                            (None, _) => {
                                return Err(format!("ORDER BY {name} is not an output column"))
                            }
                            (Some(_), Some(_)) => {
                                return Err(format!("ORDER BY {name} names two output columns"))
                            }
                        }
                    }
                };
                let c = &columns[index];
                let decoder = Decoder::for_type(c.type_oid, c.format == 1, k.bytewise || c_collation)
                    .map_err(|e| match e {
                        Undecodable::Collation => format!(
                            "ORDER BY {} sorts text by a collation the router cannot reproduce; write ORDER BY {} COLLATE \"C\"",
                            c.name, c.name
                        ),
                        Undecodable::Type(t) => format!(
                            "ORDER BY {}: the router does not order values of type oid {t}",
                            c.name
                        ),
                    })?;
                Ok(Key {
                    index,
                    decoder,
                    descending: k.descending,
                    nulls_first: k.nulls_first,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Self { keys })
    }

    /// The sort key of a DataRow body.
    pub fn key(&self, data_row: &[u8]) -> Result<RowKey, String> {
        let fields = row::fields(data_row).ok_or("a malformed DataRow")?;
        self.keys
            .iter()
            .map(|k| match fields.get(k.index) {
                Some(None) => Ok(None),
                Some(Some(b)) => k.decoder.decode(b).map(Some).ok_or_else(|| {
                    format!(
                        "a value of type oid {} the router cannot read: {:?}",
                        k.decoder.type_oid,
                        String::from_utf8_lossy(b)
                    )
                }),
                None => Err("a DataRow with too few columns".into()),
            })
            .collect()
    }

    /// Which of two rows comes first: ASC/DESC and NULLS FIRST/LAST per
    /// item, as PostgreSQL sorts.
    pub fn cmp(&self, a: &RowKey, b: &RowKey) -> Ordering {
        for (k, (x, y)) in self.keys.iter().zip(a.iter().zip(b)) {
            let o = match (x, y) {
                (None, None) => Ordering::Equal,
                (None, Some(_)) if k.nulls_first => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some(_), None) if k.nulls_first => Ordering::Greater,
                (Some(_), None) => Ordering::Less,
                (Some(x), Some(y)) if k.descending => y.total_cmp(x),
                (Some(x), Some(y)) => x.total_cmp(y),
            };
            if o != Ordering::Equal {
                return o;
            }
        }
        Ordering::Equal
    }
}

/// A row waiting in the merge: its key, its shard and its payload.
struct Pending<'a, T> {
    order: &'a Order,
    key: RowKey,
    shard: usize,
    row: T,
}

impl<T> PartialEq for Pending<'_, T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl<T> Eq for Pending<'_, T> {}

impl<T> PartialOrd for Pending<'_, T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Pending<'_, T> {
    /// Reversed: `BinaryHeap` is a max-heap and the merge takes the
    /// smallest row. Ties go to the lower shard, so output is stable.
    fn cmp(&self, other: &Self) -> Ordering {
        self.order
            .cmp(&self.key, &other.key)
            .then(self.shard.cmp(&other.shard))
            .reverse()
    }
}

/// The k-way merge: at most one pending row per shard.
pub(crate) struct Merge<'a, T> {
    order: &'a Order,
    heap: BinaryHeap<Pending<'a, T>>,
}

impl<'a, T> Merge<'a, T> {
    pub fn new(order: &'a Order) -> Self {
        Self {
            order,
            heap: BinaryHeap::new(),
        }
    }

    /// Adds shard `shard`'s next row (none may be pending for it).
    pub fn push(&mut self, shard: usize, key: RowKey, row: T) {
        self.heap.push(Pending {
            order: self.order,
            key,
            shard,
            row,
        });
    }

    /// The smallest pending row and its shard; refill from that shard next.
    pub fn pop(&mut self) -> Option<(usize, T)> {
        self.heap.pop().map(|p| (p.shard, p.row))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datum::oid;
    use crate::row::tests::description;
    use bytes::BytesMut;

    fn key(name: &str, descending: bool, nulls_first: bool) -> SortKey {
        SortKey {
            column: SortColumn::Name(name.into()),
            descending,
            nulls_first,
            bytewise: false,
        }
    }

    fn text_row(vals: &[Option<&str>]) -> Vec<u8> {
        let mut out = BytesMut::new();
        let f: Vec<Option<&[u8]>> = vals.iter().map(|v| v.map(str::as_bytes)).collect();
        row::data_row(&mut out, &f);
        out[5..].to_vec()
    }

    /// Merges already-sorted shard streams and returns the first column.
    fn merged(order: &Order, shards: &[Vec<Vec<u8>>]) -> Vec<String> {
        let mut iters: Vec<_> = shards.iter().map(|s| s.iter()).collect();
        let mut m = Merge::new(order);
        for (i, it) in iters.iter_mut().enumerate() {
            if let Some(r) = it.next() {
                m.push(i, order.key(r).unwrap(), r);
            }
        }
        let mut out = Vec::new();
        while let Some((i, r)) = m.pop() {
            let f = row::fields(r).unwrap();
            out.push(f[0].map_or("NULL".into(), |b| String::from_utf8_lossy(b).into_owned()));
            if let Some(r) = iters[i].next() {
                m.push(i, order.key(r).unwrap(), r);
            }
        }
        out
    }

    #[test]
    fn merges_sorted_streams_with_desc_and_nulls_as_postgresql() {
        let cols = row::columns(&description(&[
            ("amount", oid::NUMERIC, 0),
            ("id", oid::INT8, 0),
        ]))
        .unwrap();
        let rows = |v: &[Option<&str>]| {
            v.iter()
                .map(|a| text_row(&[*a, Some("1")]))
                .collect::<Vec<_>>()
        };
        // (order, shard streams each sorted that way, merged result)
        type Case<'a> = (SortKey, &'a [&'a [Option<&'a str>]], &'a [&'a str]);
        let cases: &[Case] = &[
            (
                key("amount", false, false),
                &[&[Some("1.5"), Some("10"), None], &[Some("2"), None]],
                &["1.5", "2", "10", "NULL", "NULL"],
            ),
            (
                key("amount", true, true),
                &[&[None, Some("10"), Some("1.5")], &[Some("2")]],
                &["NULL", "10", "2", "1.5"],
            ),
            (
                key("amount", false, true),
                &[&[None, Some("-1")], &[None, Some("0.5")], &[]],
                &["NULL", "NULL", "-1", "0.5"],
            ),
            (
                key("amount", true, false),
                &[&[Some("3"), None], &[Some("4"), Some("3.0")]],
                &["4", "3", "3.0", "NULL"],
            ),
        ];
        for (k, shards, want) in cases {
            let order = Order::resolve(std::slice::from_ref(k), &cols, false).unwrap();
            let shards: Vec<_> = shards.iter().map(|s| rows(s)).collect();
            assert_eq!(merged(&order, &shards), *want, "{k:?}");
        }
    }

    #[test]
    fn positions_names_and_refusals() {
        let cols = row::columns(&description(&[
            ("id", oid::INT8, 1),
            ("status", oid::TEXT, 0),
            ("id", oid::INT4, 0),
            ("span", 1186, 0),
        ]))
        .unwrap();
        let by = |column, bytewise| SortKey {
            column,
            descending: false,
            nulls_first: false,
            bytewise,
        };
        let status = |bytewise| by(SortColumn::Name("status".into()), bytewise);
        assert!(Order::resolve(&[by(SortColumn::Position(0), false)], &cols, false).is_ok());
        assert!(Order::resolve(&[status(true)], &cols, false).is_ok());
        assert!(Order::resolve(&[status(false)], &cols, true).is_ok());
        let refused = [
            (status(false), "COLLATE \"C\""),
            (
                by(SortColumn::Name("id".into()), false),
                "two output columns",
            ),
            (
                by(SortColumn::Name("nope".into()), false),
                "not an output column",
            ),
            (by(SortColumn::Position(4), false), "not an output column"),
            (by(SortColumn::Name("span".into()), false), "type oid 1186"),
        ];
        for (k, why) in refused {
            let e = Order::resolve(std::slice::from_ref(&k), &cols, false).unwrap_err();
            assert!(e.contains(why), "{k:?}: {e}");
        }
        // Binary column 0: the key decodes the binary int8.
        let order = Order::resolve(&[by(SortColumn::Position(0), false)], &cols, false).unwrap();
        let mut out = BytesMut::new();
        row::data_row(&mut out, &[Some(&7i64.to_be_bytes()[..]), None, None, None]);
        let k = order.key(&out[5..]).unwrap();
        assert!(matches!(k[0], Some(Datum::Int(7))));
        let e = order.key(&text_row(&[])).unwrap_err();
        assert!(e.contains("too few"), "{e}");
    }
}
