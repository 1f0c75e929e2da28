//! Row changes as data, and how a target's queue of them becomes few
//! statements.
//!
//! The coordinator hands each applier [`RowOp`]s rather than SQL text. The
//! applier feeds them, in order, to a [`Batcher`], which keeps the current
//! run of inserts into one table as rows and writes the run as one
//! multi-row `INSERT` when anything else comes (or the run is large):
//!
//! - an insert into the same table joins the run;
//! - an update or delete of a row that is *in the run* (found by its key,
//!   byte for byte) changes or removes that row in the run instead of
//!   becoming a statement of its own, so a row inserted and then updated
//!   (in one source transaction or in several of one target commit) is
//!   written once, as it ended;
//! - anything else (another table, an update of a row not in the run, a
//!   statement) writes the run first, then itself: statements keep their
//!   order.
//!
//! Folding an update into the run moves it before the inserts of other rows
//! that came between, into the same table only. Every state the target
//! passes through is then a subset of a state the source had (the rows
//! before the run plus some of the run's rows as they were at that point),
//! so no unique or exclusion constraint that held on the source can fail.
//! Folding needs a key that identifies one row (a primary key, or a replica
//! identity index): tables identified by all their columns only batch
//! their inserts.
//!
//! Every update or delete written as a statement of its own carries a
//! [`Check`] that it changed exactly one row (see [`crate::divergence`]);
//! one folded into the run changes a row the run holds. Without a unique
//! key such a statement changes one of the identical rows the key finds,
//! not all of them.
//!
//! Nothing here decides durability: the applier writes a run before every
//! commit, fetch or other statement, inside the same target transaction.

use std::sync::Arc;

use bytes::Bytes;
use rustc_hash::FxHashMap;

use crate::divergence::Divergence;
use crate::script::{Check, Script};
use crate::sql;

/// A run is written once it holds this many rows…
pub const MAX_RUN_ROWS: usize = 2_000;
/// …or this many bytes of values.
pub const MAX_RUN_BYTES: usize = 1 << 20;
/// A run of at least this many rows is written as `COPY` data, a shorter
/// one as a multi-row `INSERT` (a `COPY` costs an extra round trip or two;
/// see [`crate::script`]).
pub const COPY_MIN_ROWS: usize = 64;

/// What a table's row changes need to become SQL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shape {
    /// `"schema"."name"`, quoted.
    pub qualified: String,
    pub columns: Vec<String>,
    /// Column indices of the key that finds a row.
    pub key: Vec<usize>,
    /// Whether the key identifies at most one row (primary key or replica
    /// identity index), so updates and deletes may fold into a run.
    pub unique_key: bool,
    /// `GENERATED ALWAYS` identity columns: an UPDATE may not name them
    /// (their value never changes in an update the stream can apply, see
    /// [`crate::change`]); an INSERT sets them with `OVERRIDING SYSTEM VALUE`.
    pub always: Vec<usize>,
}

/// A value: NULL or text bytes.
pub type Cell = Option<Bytes>;

/// One row change for one target.
#[derive(Clone, Debug, PartialEq)]
pub enum RowOp {
    Insert {
        shape: Arc<Shape>,
        row: Vec<Cell>,
    },
    /// `new` holds `None` for a value the stream left out (unchanged
    /// TOAST, keep what is there); `key` the old row's key values, in the
    /// order of [`Shape::key`].
    Update {
        shape: Arc<Shape>,
        new: Vec<Option<Cell>>,
        key: Vec<Cell>,
    },
    Delete {
        shape: Arc<Shape>,
        key: Vec<Cell>,
    },
}

impl RowOp {
    /// The statement that applies this change alone.
    pub fn sql(&self) -> String {
        match self {
            Self::Insert { shape, row } => {
                let columns: Vec<&str> = shape.columns.iter().map(String::as_str).collect();
                sql::insert(
                    &shape.qualified,
                    &columns,
                    [row.iter().map(|v| v.as_deref()).collect()],
                )
            }
            Self::Update { shape, new, key } => {
                let set: Vec<(&str, sql::Value)> = shape
                    .columns
                    .iter()
                    .zip(new)
                    .enumerate()
                    .filter(|(i, _)| !shape.always.contains(i))
                    .filter_map(|(_, (c, v))| v.as_ref().map(|v| (c.as_str(), v.as_deref())))
                    .collect();
                if shape.unique_key {
                    sql::update(&shape.qualified, &set, &key_pairs(shape, key))
                } else {
                    sql::update_one(&shape.qualified, &set, &key_pairs(shape, key))
                }
            }
            Self::Delete { shape, key } if shape.unique_key => {
                sql::delete(&shape.qualified, &key_pairs(shape, key))
            }
            Self::Delete { shape, key } => {
                sql::delete_one(&shape.qualified, &key_pairs(shape, key))
            }
        }
    }

    /// What the change expects of its target: an update or delete changes
    /// exactly the one row the source changed.
    pub fn check(&self) -> Option<Check> {
        match self {
            Self::Insert { .. } => None,
            Self::Update { shape, key, .. } => {
                Some(Check::OneRow(Divergence::of_row(shape, "update", key)))
            }
            Self::Delete { shape, key } => {
                Some(Check::OneRow(Divergence::of_row(shape, "delete", key)))
            }
        }
    }
}

fn key_pairs<'a>(shape: &'a Shape, key: &'a [Cell]) -> Vec<(&'a str, sql::Value<'a>)> {
    shape
        .key
        .iter()
        .zip(key)
        .map(|(&i, v)| (shape.columns[i].as_str(), v.as_deref()))
        .collect()
}

/// Rows inserted into one table, not yet written.
struct Run {
    shape: Arc<Shape>,
    /// `None`: deleted again before it was written.
    rows: Vec<Option<Vec<Cell>>>,
    /// Key values → position in `rows`, for live rows (unique keys only).
    index: FxHashMap<Vec<Cell>, usize>,
    live: usize,
    bytes: usize,
}

impl Run {
    fn key_of(&self, row: &[Cell]) -> Vec<Cell> {
        self.shape.key.iter().map(|&i| row[i].clone()).collect()
    }
}

/// Counts of what the batcher did, for tests and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Multi-row `INSERT`s and `COPY`s written.
    pub inserts: u64,
    /// Of those, `COPY`s.
    pub copies: u64,
    /// Rows they held.
    pub inserted_rows: u64,
    /// Updates and deletes folded into a run.
    pub folded: u64,
    /// Changes written as statements of their own.
    pub single: u64,
}

/// Turns a target's row changes, in order, into statements (see the module
/// documentation).
#[derive(Default)]
pub struct Batcher {
    run: Option<Run>,
    pub stats: BatchStats,
}

impl Batcher {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether rows wait to be written.
    pub fn is_empty(&self) -> bool {
        self.run.is_none()
    }

    /// Takes one change; appends to `out` whatever must run now.
    pub fn push(&mut self, op: RowOp, out: &mut Script) {
        match op {
            RowOp::Insert { shape, row } => {
                let same = self
                    .run
                    .as_ref()
                    .is_some_and(|r| same_table(&r.shape, &shape));
                if !same {
                    self.flush(out);
                }
                let run = self.run.get_or_insert_with(|| Run {
                    shape,
                    rows: Vec::new(),
                    index: FxHashMap::default(),
                    live: 0,
                    bytes: 0,
                });
                if run.shape.unique_key {
                    let key = run.key_of(&row);
                    if run.index.contains_key(&key) {
                        // The same key twice in a run: not from a source
                        // with that key unique; keep the statements apart.
                        let shape = run.shape.clone();
                        self.flush(out);
                        self.push(RowOp::Insert { shape, row }, out);
                        return;
                    }
                    run.index.insert(key, run.rows.len());
                }
                run.bytes += row_bytes(&row);
                run.rows.push(Some(row));
                run.live += 1;
                if run.rows.len() >= MAX_RUN_ROWS || run.bytes >= MAX_RUN_BYTES {
                    self.flush(out);
                }
            }
            RowOp::Update { shape, new, key } => {
                let new = match self.fold_update(&shape, new, &key) {
                    Ok(()) => {
                        self.stats.folded += 1;
                        return;
                    }
                    Err(new) => new,
                };
                self.flush(out);
                self.single(RowOp::Update { shape, new, key }, out);
            }
            RowOp::Delete { shape, key } => {
                if let Some(run) = self
                    .run
                    .as_mut()
                    .filter(|r| r.shape.unique_key && same_table(&r.shape, &shape))
                {
                    if let Some(at) = run.index.remove(&key) {
                        if let Some(row) = run.rows[at].take() {
                            run.bytes = run.bytes.saturating_sub(row_bytes(&row));
                        }
                        run.live -= 1;
                        self.stats.folded += 1;
                        return;
                    }
                }
                self.flush(out);
                self.single(RowOp::Delete { shape, key }, out);
            }
        }
    }

    /// Applies an update to the row in the run it names, if there is one;
    /// gives the new values back when there is none.
    fn fold_update(
        &mut self,
        shape: &Arc<Shape>,
        new: Vec<Option<Cell>>,
        key: &[Cell],
    ) -> Result<(), Vec<Option<Cell>>> {
        let Some(run) = self
            .run
            .as_mut()
            .filter(|r| r.shape.unique_key && same_table(&r.shape, shape))
        else {
            return Err(new);
        };
        let Some(&at) = run.index.get(key) else {
            return Err(new);
        };
        let Some(row) = run.rows[at].as_mut() else {
            return Err(new);
        };
        let new_key: Vec<Cell> = run
            .shape
            .key
            .iter()
            .map(|&i| match &new[i] {
                Some(v) => v.clone(),
                None => row[i].clone(),
            })
            .collect();
        if new_key.as_slice() != key {
            if run.index.contains_key(&new_key) {
                return Err(new);
            }
            run.index.remove(key);
            run.index.insert(new_key, at);
        }
        let old_bytes = row_bytes(row);
        for (cell, value) in row.iter_mut().zip(new) {
            if let Some(value) = value {
                *cell = value;
            }
        }
        run.bytes = (run.bytes + row_bytes(row)).saturating_sub(old_bytes);
        Ok(())
    }

    fn single(&mut self, op: RowOp, out: &mut Script) {
        self.stats.single += 1;
        match op.check() {
            Some(check) => out.checked(&op.sql(), check),
            None => out.statement(&op.sql()),
        }
    }

    /// Writes the run, if any, as one `INSERT` or `COPY`.
    pub fn flush(&mut self, out: &mut Script) {
        let Some(run) = self.run.take() else { return };
        if run.live == 0 {
            return;
        }
        let columns: Vec<&str> = run.shape.columns.iter().map(String::as_str).collect();
        let rows = run.rows.iter().flatten();
        if run.live >= COPY_MIN_ROWS {
            let mut data = Vec::with_capacity(run.bytes + run.live * columns.len());
            for row in rows {
                for (i, v) in row.iter().enumerate() {
                    if i > 0 {
                        data.push(b'\t');
                    }
                    sql::push_copy_value(&mut data, v.as_deref());
                }
                data.push(b'\n');
            }
            out.copy(sql::copy_from_stdin(&run.shape.qualified, &columns), data);
            self.stats.copies += 1;
        } else {
            let rows = rows.map(|row| row.iter().map(|v| v.as_deref()).collect());
            out.statement(&sql::insert(&run.shape.qualified, &columns, rows));
        }
        self.stats.inserts += 1;
        self.stats.inserted_rows += run.live as u64;
    }

    /// Forgets what waits (its transaction rolls back).
    pub fn clear(&mut self) {
        self.run = None;
    }
}

fn same_table(a: &Arc<Shape>, b: &Arc<Shape>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

fn row_bytes(row: &[Cell]) -> usize {
    row.iter()
        .map(|v| v.as_ref().map_or(4, |b| b.len() + 4))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(unique: bool) -> Arc<Shape> {
        Arc::new(Shape {
            qualified: "\"public\".\"p\"".into(),
            columns: vec!["id".into(), "status".into(), "note".into()],
            key: vec![0],
            always: vec![],
            unique_key: unique,
        })
    }

    fn cell(s: &str) -> Cell {
        Some(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn insert(s: &Arc<Shape>, id: &str, status: &str) -> RowOp {
        RowOp::Insert {
            shape: s.clone(),
            row: vec![cell(id), cell(status), cell("n")],
        }
    }

    fn update(s: &Arc<Shape>, id: &str, new_id: &str, status: &str) -> RowOp {
        RowOp::Update {
            shape: s.clone(),
            // note not sent: unchanged TOAST
            new: vec![Some(cell(new_id)), Some(cell(status)), None],
            key: vec![cell(id)],
        }
    }

    fn delete(s: &Arc<Shape>, id: &str) -> RowOp {
        RowOp::Delete {
            shape: s.clone(),
            key: vec![cell(id)],
        }
    }

    fn run(ops: Vec<RowOp>) -> (String, BatchStats) {
        let mut b = Batcher::new();
        let mut out = Script::new();
        for op in ops {
            b.push(op, &mut out);
        }
        b.flush(&mut out);
        (out.text(), b.stats)
    }

    #[test]
    fn inserts_then_updates_of_the_same_rows_become_one_insert_of_the_final_rows() {
        let s = shape(true);
        let (sql, stats) = run(vec![
            insert(&s, "1", "authorized"),
            update(&s, "1", "1", "captured"),
            insert(&s, "2", "authorized"),
            update(&s, "2", "2", "captured"),
            update(&s, "1", "1", "refunded"),
        ]);
        assert_eq!(
            sql,
            "INSERT INTO \"public\".\"p\" (\"id\", \"status\", \"note\") OVERRIDING SYSTEM VALUE VALUES ('1', 'refunded', 'n'), ('2', 'captured', 'n');"
        );
        assert_eq!(stats.folded, 3);
        assert_eq!(stats.inserts, 1);
    }

    #[test]
    fn a_row_touched_again_after_its_run_was_written_gets_its_own_statement() {
        let s = shape(true);
        let other = Arc::new(Shape {
            qualified: "\"public\".\"q\"".into(),
            ..Shape::clone(&s)
        });
        let (sql, _) = run(vec![
            insert(&s, "1", "authorized"),
            insert(&other, "9", "x"),
            update(&s, "1", "1", "captured"),
            delete(&s, "1"),
        ]);
        assert_eq!(
            sql,
            "INSERT INTO \"public\".\"p\" (\"id\", \"status\", \"note\") OVERRIDING SYSTEM VALUE VALUES ('1', 'authorized', 'n');\
             INSERT INTO \"public\".\"q\" (\"id\", \"status\", \"note\") OVERRIDING SYSTEM VALUE VALUES ('9', 'x', 'n');\
             UPDATE \"public\".\"p\" SET \"id\" = '1', \"status\" = 'captured' WHERE \"id\" = '1';\
             DELETE FROM \"public\".\"p\" WHERE \"id\" = '1';"
        );
    }

    #[test]
    fn deleted_rows_leave_the_run_and_their_key_may_come_back() {
        let s = shape(true);
        let (sql, stats) = run(vec![
            insert(&s, "1", "a"),
            insert(&s, "2", "a"),
            delete(&s, "1"),
            insert(&s, "1", "b"),
            delete(&s, "3"),
        ]);
        assert_eq!(
            sql,
            "INSERT INTO \"public\".\"p\" (\"id\", \"status\", \"note\") OVERRIDING SYSTEM VALUE VALUES ('2', 'a', 'n'), ('1', 'b', 'n');\
             DELETE FROM \"public\".\"p\" WHERE \"id\" = '3';"
        );
        assert_eq!(stats.folded, 1);
        let (sql, _) = run(vec![insert(&s, "1", "a"), delete(&s, "1")]);
        assert_eq!(sql, "", "inserted and deleted again: nothing to write");
    }

    #[test]
    fn key_changes_follow_the_row_and_never_merge_two_rows() {
        let s = shape(true);
        let (sql, _) = run(vec![
            insert(&s, "1", "a"),
            update(&s, "1", "5", "b"),
            update(&s, "5", "6", "c"),
            insert(&s, "1", "d"),
        ]);
        assert_eq!(
            sql,
            "INSERT INTO \"public\".\"p\" (\"id\", \"status\", \"note\") OVERRIDING SYSTEM VALUE VALUES ('6', 'c', 'n'), ('1', 'd', 'n');"
        );
        // A key change onto a row still in the run is not folded.
        let (sql, stats) = run(vec![
            insert(&s, "1", "a"),
            insert(&s, "2", "a"),
            update(&s, "1", "2", "b"),
        ]);
        assert_eq!(stats.folded, 0);
        assert!(
            sql.ends_with(
                "UPDATE \"public\".\"p\" SET \"id\" = '2', \"status\" = 'b' WHERE \"id\" = '1';"
            ),
            "{sql}"
        );
    }

    #[test]
    fn without_a_unique_key_only_inserts_are_batched() {
        let s = shape(false);
        let (sql, stats) = run(vec![
            insert(&s, "1", "a"),
            insert(&s, "1", "a"),
            update(&s, "1", "1", "b"),
        ]);
        assert_eq!(
            sql,
            "INSERT INTO \"public\".\"p\" (\"id\", \"status\", \"note\") OVERRIDING SYSTEM VALUE VALUES ('1', 'a', 'n'), ('1', 'a', 'n');\
             UPDATE \"public\".\"p\" SET \"id\" = '1', \"status\" = 'b' WHERE (tableoid, ctid) = (SELECT tableoid, ctid FROM \"public\".\"p\" WHERE \"id\" = '1' LIMIT 1);",
            "an update changes one of the identical rows, as on the source"
        );
        assert_eq!(stats.folded, 0);
    }

    #[test]
    fn single_updates_and_deletes_expect_one_row_and_folded_ones_nothing() {
        let s = shape(true);
        let mut b = Batcher::new();
        let mut out = Script::new();
        b.push(insert(&s, "1", "a"), &mut out);
        b.push(update(&s, "1", "1", "b"), &mut out);
        b.push(delete(&s, "1"), &mut out);
        b.flush(&mut out);
        assert!(!out.has_checks(), "folded into the run: {}", out.text());
        b.push(update(&s, "2", "2", "b"), &mut out);
        b.push(delete(&s, "3"), &mut out);
        let parts = out.take();
        let [crate::script::Part::Sql(sql)] = &parts[..] else {
            panic!("{parts:?}")
        };
        let what: Vec<String> = sql
            .checks
            .iter()
            .map(|(i, c)| match c {
                Check::OneRow(d) => format!("{i}: {d}"),
                other => format!("{i}: {other:?}"),
            })
            .collect();
        assert_eq!(
            what,
            [
                "0: the update of \"public\".\"p\" where id = '2' matched no row",
                "1: the delete of \"public\".\"p\" where id = '3' matched no row"
            ]
        );
    }

    #[test]
    fn large_runs_are_written_in_pieces() {
        let s = shape(true);
        let ops = (0..MAX_RUN_ROWS + 5)
            .map(|i| insert(&s, &i.to_string(), "a"))
            .collect();
        let (sql, stats) = run(ops);
        assert_eq!(stats.inserts, 2);
        assert_eq!(
            stats.copies, 1,
            "the long piece is copied, the short one inserted"
        );
        assert_eq!(stats.inserted_rows, MAX_RUN_ROWS as u64 + 5);
        assert!(sql.starts_with("COPY \"public\".\"p\" (\"id\", \"status\", \"note\") FROM STDIN;\n0\ta\tn\n1\ta\tn\n"), "{sql}");
        assert_eq!(sql.matches("INSERT INTO").count(), 1);
    }

    #[test]
    fn long_runs_are_copied_with_their_folded_updates_and_without_their_deleted_rows() {
        let s = shape(true);
        let mut ops: Vec<RowOp> = (0..COPY_MIN_ROWS + 1)
            .map(|i| insert(&s, &i.to_string(), "a"))
            .collect();
        ops.push(update(&s, "3", "3", "b\tc"));
        ops.push(delete(&s, "4"));
        ops.push(update(&s, "5", "500", "d"));
        let (sql, stats) = run(ops);
        assert_eq!((stats.copies, stats.folded, stats.single), (1, 3, 0));
        assert_eq!(stats.inserted_rows, COPY_MIN_ROWS as u64);
        assert!(sql.contains("\n3\tb\\tc\tn\n500\td\tn\n6\ta\tn\n"), "{sql}");
        assert!(!sql.contains("\n4\t"), "{sql}");
    }
}
