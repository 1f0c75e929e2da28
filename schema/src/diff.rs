//! Comparing a target's definition of a table with the source's.
//!
//! [`compare`] names every difference as an object (`column amount`,
//! `index payments_idem`, `sequence public.payments_id_seq`) with the
//! source's and the target's rendering of it; `None` on one side means the
//! object is missing there. Backfill refuses a target table that differs,
//! `schema diff` reports it, and both use this one comparison.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::ddl::{self, index_definition};
use crate::table::{Sequence, Table};

/// How a target is expected to hold the source's table.
#[derive(Clone, Copy, Debug, Default)]
pub struct CompareOptions<'a> {
    /// The target keeps the source's partitioning (else it is one plain table).
    pub partitioned: bool,
    /// Objects not carried, by name: left out of the comparison.
    pub skip: &'a [String],
    /// Sequences were given interleaved shares at the cutover (see the
    /// cutover crate): their increments and positions differ on purpose.
    pub interleaved: bool,
    /// Extensions installed on the target, for columns whose type an
    /// extension provides (`None`: not checked).
    pub target_extensions: Option<&'a [String]>,
}

/// One way a target's definition differs from the source's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// The object, such as `column amount` or `check constraint c`.
    pub object: String,
    /// The source's rendering (`None`: the object exists only on the target).
    pub source: Option<String>,
    /// The target's rendering (`None`: missing on the target).
    pub target: Option<String>,
}

impl Difference {
    /// `column amount: numeric(18,2) on the source, numeric(12,2) on the
    /// target` and the like.
    pub fn describe(&self) -> String {
        match (&self.source, &self.target) {
            (Some(s), None) => format!("{} is missing on the target (source: {s})", self.object),
            (None, Some(t)) => format!("{} exists only on the target ({t})", self.object),
            (Some(s), Some(t)) => {
                format!("{}: {s} on the source, {t} on the target", self.object)
            }
            (None, None) => self.object.clone(),
        }
    }
}

fn diff(out: &mut Vec<Difference>, object: String, source: Option<String>, target: Option<String>) {
    if source != target {
        out.push(Difference {
            object,
            source,
            target,
        });
    }
}

/// Every difference between `source` and `target` (the same table on two
/// databases), in a stable order.
pub fn compare(source: &Table, target: &Table, options: &CompareOptions) -> Vec<Difference> {
    let mut out = Vec::new();
    let skip = |name: &str| options.skip.iter().any(|s| s == name);

    // Columns: by name; order does not matter to shardline's copies.
    let columns = |t: &Table| -> BTreeMap<String, String> {
        t.columns
            .iter()
            .map(|c| (c.name.clone(), column_text(c)))
            .collect()
    };
    pair(&mut out, "column", columns(source), columns(target), |_| {
        false
    });
    for c in &source.columns {
        if let (Some(s), Some(t)) = (&c.comment, target.column(&c.name).map(|t| &t.comment)) {
            diff(
                &mut out,
                format!("comment on column {}", c.name),
                Some(s.clone()),
                t.clone(),
            );
        }
    }

    // Constraints, by name.
    let constraints = |t: &Table| -> BTreeMap<String, String> {
        t.constraints
            .iter()
            .map(|c| {
                (
                    format!("{} {}", c.kind.word(), c.name),
                    c.definition.clone(),
                )
            })
            .collect()
    };
    pair(
        &mut out,
        "",
        constraints(source),
        constraints(target),
        |k| k.rsplit(' ').next().is_some_and(&skip),
    );

    // Indexes, by name, as they apply to the whole table.
    let indexes = |t: &Table| -> BTreeMap<String, String> {
        t.indexes
            .iter()
            .map(|i| (i.name.clone(), index_definition(&i.definition)))
            .collect()
    };
    pair(&mut out, "index", indexes(source), indexes(target), skip);

    // Partitioning.
    let expected_key = if options.partitioned {
        source.partition_key.clone()
    } else {
        None
    };
    diff(
        &mut out,
        "partitioning".into(),
        expected_key.or(Some("none".into())),
        target.partition_key.clone().or(Some("none".into())),
    );
    if options.partitioned && source.is_partitioned() {
        let parts = |t: &Table| -> BTreeMap<String, String> {
            t.partitions
                .iter()
                .map(|p| {
                    let sub = p
                        .partition_key
                        .as_deref()
                        .map(|k| format!(" PARTITION BY {k}"))
                        .unwrap_or_default();
                    (p.name.to_string(), format!("{}{sub}", p.bound))
                })
                .collect()
        };
        pair(&mut out, "partition", parts(source), parts(target), |_| {
            false
        });
    }

    // Types the columns use.
    let types = |t: &Table| -> BTreeMap<String, String> {
        t.types
            .iter()
            .map(|u| (format!("{} {}", u.kind_word(), u.name()), ddl::user_type(u)))
            .collect()
    };
    pair(&mut out, "", types(source), types(target), |_| false);
    if let Some(installed) = options.target_extensions {
        for e in &source.extension_types {
            if !e.extension.is_empty() && !installed.contains(&e.extension) {
                out.push(Difference {
                    object: format!("extension {} (type {} of a column)", e.extension, e.name),
                    source: Some("installed".into()),
                    target: None,
                });
            }
        }
    }

    // Sequences: their options and where they stand.
    for s in &source.sequences {
        let t = target.sequences.iter().find(|t| t.name == s.name);
        let object = format!("sequence {}", s.name);
        match t {
            None => diff(&mut out, object, Some(sequence_text(s, false)), None),
            Some(t) => {
                diff(
                    &mut out,
                    object.clone(),
                    Some(sequence_text(s, options.interleaved)),
                    Some(sequence_text(t, options.interleaved)),
                );
                if !options.interleaved {
                    if let Some(behind) = behind(s, t) {
                        out.push(Difference {
                            object: format!("position of sequence {}", s.name),
                            source: Some(format!("last value {behind}")),
                            target: Some(match t.last_value {
                                Some(v) => format!("last value {v}, behind the source"),
                                None => "never used, behind the source".into(),
                            }),
                        });
                    }
                }
            }
        }
    }

    diff(
        &mut out,
        "comment on the table".into(),
        source.comment.clone(),
        target.comment.clone(),
    );
    out
}

/// The source's position when the target's sequence could still hand out
/// a value the source already has.
fn behind(source: &Sequence, target: &Sequence) -> Option<i64> {
    let s = source.last_value?;
    let ahead = match target.last_value {
        None => false,
        Some(t) if source.increment < 0 => t <= s,
        Some(t) => t >= s,
    };
    (!ahead).then_some(s)
}

fn sequence_text(s: &Sequence, interleaved: bool) -> String {
    let mut text = format!(
        "{} min {} max {} cycle {}",
        s.data_type, s.min, s.max, s.cycle
    );
    if !interleaved {
        text.push_str(&format!(" increment {}", s.increment));
    }
    if let Some(col) = &s.owned_by {
        text.push_str(&format!(" owned by {col}"));
    }
    text
}

fn column_text(c: &crate::table::Column) -> String {
    let mut text = c.sql_type.clone();
    if let Some(coll) = &c.collation {
        text.push_str(&format!(" COLLATE {coll}"));
    }
    if c.not_null {
        text.push_str(" NOT NULL");
    }
    if let Some(d) = &c.default {
        text.push_str(&format!(" DEFAULT {d}"));
    }
    if let Some(g) = &c.generated {
        text.push_str(&format!(" GENERATED ALWAYS AS ({g}) STORED"));
    }
    if let Some(i) = c.identity {
        text.push_str(match i {
            crate::table::Identity::Always => " GENERATED ALWAYS AS IDENTITY",
            crate::table::Identity::ByDefault => " GENERATED BY DEFAULT AS IDENTITY",
        });
    }
    text
}

/// Pairs two maps of object → rendering by key; `prefix` names the kind
/// when the key does not already.
fn pair(
    out: &mut Vec<Difference>,
    prefix: &str,
    source: BTreeMap<String, String>,
    mut target: BTreeMap<String, String>,
    skip: impl Fn(&str) -> bool,
) {
    let object = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix} {k}")
        }
    };
    for (k, s) in source {
        let t = target.remove(&k);
        if skip(&k) {
            continue;
        }
        diff(out, object(&k), Some(s), t);
    }
    for (k, t) in target {
        if !skip(&k) {
            diff(out, object(&k), None, Some(t));
        }
    }
}
