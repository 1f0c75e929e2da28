//! What of a source table its targets can hold, and what they cannot.
//!
//! Targets get the table whole (see the schema crate), except what cannot
//! mean the same thing there. Each such object is an [`Obstacle`]: `backfill
//! --dry-run` lists them, and a run refuses to start while one is not let
//! go by the context's `skip_objects`. Letting one go means:
//!
//! - a foreign key whose rows may live on another database (another
//!   context, a table the topology does not list, or a sharded table
//!   referenced without its shard key): not created;
//! - a unique, primary key or exclusion constraint, or a unique index, of
//!   a sharded table without the shard key: created on each shard, where
//!   it holds among that shard's rows only;
//! - a trigger, row security policy or rule: not created (they run user
//!   code the targets may not have).
//!
//! Column types nothing can carry (a table's row type, a range type) and
//! foreign-table partitions cannot be let go: the table cannot be created.

use crate::table::{ConstraintKind, Table};
use serde::Serialize;
use shardline_topology::{Context, ContextKind, Topology};

/// An object of a source table that its targets cannot hold as it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Obstacle {
    /// The table, canonical name.
    pub table: String,
    /// The object, such as `foreign key payments_merchant_fk`.
    pub object: String,
    /// Its name, as `skip_objects` lists it.
    pub name: String,
    pub why: String,
    /// Listed in the context's `skip_objects`.
    pub allowed: bool,
    /// Whether `skip_objects` can let it go at all.
    pub skippable: bool,
    /// Whether targets still get it once let go (per shard).
    pub created: bool,
}

impl Obstacle {
    /// One line: `table public.payments: foreign key payments_merchant_fk
    /// references public.merchants, which lives in context analytics`.
    pub fn describe(&self) -> String {
        format!("table {}: {} {}", self.table, self.object, self.why)
    }
}

/// Every obstacle of `table`, listed in `context`.
pub fn obstacles(topology: &Topology, context: &Context, table: &Table) -> Vec<Obstacle> {
    let mut out = Vec::new();
    let mut push = |object: String, name: &str, why: String, skippable: bool, created: bool| {
        out.push(Obstacle {
            table: table.name.to_string(),
            object,
            name: name.to_string(),
            why,
            allowed: skippable && context.skip_objects.iter().any(|s| s == name),
            skippable,
            created,
        })
    };
    let (shard_key, references_ok): (Option<&str>, Vec<_>) = match &context.kind {
        ContextKind::Sharded {
            shard_key,
            reference_tables,
            ..
        } => {
            let is_reference = reference_tables.contains(&table.name);
            (
                (!is_reference).then_some(shard_key.as_str()),
                reference_tables.clone(),
            )
        }
        ContextKind::Single { .. } => (None, Vec::new()),
    };
    for c in &table.constraints {
        let object = format!("{} {}", c.kind.word(), c.name);
        match c.kind {
            ConstraintKind::ForeignKey => {
                let Some((referenced, ref_columns)) = &c.references else {
                    continue;
                };
                let why = match topology.context_of_table(referenced) {
                    None => Some(format!(
                        "references {referenced}, which the topology does not list (the targets will not have it)"
                    )),
                    Some(other) if other.name != context.name => Some(format!(
                        "references {referenced}, which lives in context {} (another database)",
                        other.name
                    )),
                    Some(_) => match (&context.kind, shard_key) {
                        (ContextKind::Single { .. }, _) => None,
                        _ if references_ok.contains(referenced) => None,
                        (_, None) => Some(format!(
                            "references {referenced}, a sharded table, from a reference table: each shard holds only its own rows of {referenced}"
                        )),
                        (_, Some(key)) => {
                            let here = c.columns.iter().position(|x| x == key);
                            let there = ref_columns.iter().position(|x| x == key);
                            match (here, there) {
                                (Some(a), Some(b)) if a == b => None,
                                _ => Some(format!(
                                    "references {referenced} without matching the shard key {key} on both sides, so a referenced row may live on another shard"
                                )),
                            }
                        }
                    },
                };
                if let Some(why) = why {
                    push(object, &c.name, why, true, false);
                }
            }
            ConstraintKind::PrimaryKey | ConstraintKind::Unique | ConstraintKind::Exclusion => {
                if let Some(key) = shard_key {
                    if !c.columns.iter().any(|x| x == key) {
                        push(
                            object,
                            &c.name,
                            format!("does not include the shard key {key}: each shard can enforce it only among its own rows"),
                            true,
                            true,
                        );
                    }
                }
            }
            ConstraintKind::Check => {}
        }
    }
    if let Some(key) = shard_key {
        for i in table.indexes.iter().filter(|i| i.unique) {
            if !i.columns.iter().any(|x| x == key) {
                push(
                    format!("unique index {}", i.name),
                    &i.name,
                    format!("does not include the shard key {key}: each shard can enforce it only among its own rows"),
                    true,
                    true,
                );
            }
        }
    }
    for t in &table.triggers {
        push(
            format!("trigger {}", t.name),
            &t.name,
            "runs a function the targets may not have; it is not created there".into(),
            true,
            false,
        );
    }
    for p in &table.policies {
        push(
            format!("row security policy {}", p.name),
            &p.name,
            "is not created on the targets".into(),
            true,
            false,
        );
    }
    for r in &table.rules {
        push(
            format!("rule {}", r.name),
            &r.name,
            "is not created on the targets".into(),
            true,
            false,
        );
    }
    for e in table
        .extension_types
        .iter()
        .filter(|e| e.extension.is_empty())
    {
        push(
            format!("column type {}", e.name),
            &e.name.to_string(),
            "is a row, range or base type that no extension provides; shardline cannot create it on the targets".into(),
            false,
            false,
        );
    }
    for p in table.partitions.iter().filter(|p| p.foreign) {
        push(
            format!("partition {}", p.name),
            &p.name.to_string(),
            "is a foreign table; shardline copies only partitions with rows of their own".into(),
            false,
            false,
        );
    }
    out
}

/// Names left out when creating the table on a target: obstacles that are
/// not created even when let go.
pub fn not_created(obstacles: &[Obstacle]) -> Vec<String> {
    obstacles
        .iter()
        .filter(|o| !o.created)
        .map(|o| o.name.clone())
        .collect()
}
