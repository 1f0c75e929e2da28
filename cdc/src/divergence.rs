//! Divergence: a change that finds a target not as the source had it.
//!
//! The source changed one row; the target must change exactly one. An
//! UPDATE or DELETE that matches no row there means the target lost or
//! changed that row before this change (a manual edit, a restore, a bug):
//! applying on would hide it. Every path that writes such a change knows
//! the row it expects to touch:
//!
//! - single UPDATE and DELETE statements ([`crate::rows`]) and the delete
//!   half of a move between shards carry a [`crate::script::Check`]; the
//!   applier reads each statement's row count before it commits;
//! - updates and deletes folded into a run of inserts touch rows the run
//!   itself holds, so they cannot miss;
//! - read-model `MERGE`s ([`crate::delta`]) call [`FUNCTION`] from the
//!   clauses that would leave a group with fewer than zero rows, or remove
//!   rows from a group the read model does not hold.
//!
//! What happens then is the topology's `[cdc] on_divergence`: `stop` (the
//! default) fails the target transaction, so nothing of the group commits
//! and cdc stops naming the table, key and target; `count` records each one
//! in `shardline.cdc_divergence` on that target, in the same transaction
//! as the change, and goes on (`cdc status` and the metrics count them).
//! Changes skipped because a target already has them (its recorded
//! position, or a table's backfill position) touch nothing and expect
//! nothing.

use std::fmt::Write;

use crate::rows::{Cell, Shape};

/// One change that found its target diverged.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Divergence {
    /// The table (quoted, as in the statement) or read model.
    pub relation: String,
    /// `update`, `delete`, `move` (the delete on the old shard) or
    /// `adjust` (a read-model group).
    pub operation: &'static str,
    /// `column = value, …` of the row's key (values cut to 64 characters).
    pub key: String,
}

impl Divergence {
    /// The divergence of an update or delete of the row `key` identifies.
    pub fn of_row(shape: &Shape, operation: &'static str, key: &[Cell]) -> Self {
        let pairs = shape
            .key
            .iter()
            .zip(key)
            .map(|(&i, v)| (shape.columns[i].as_str(), v.as_deref()));
        Self {
            relation: shape.qualified.clone(),
            operation,
            key: render_key(pairs),
        }
    }
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the {} of {} where {} matched no row",
            self.operation, self.relation, self.key
        )
    }
}

/// Longest value shown in a key, in characters.
const SHOWN_VALUE_CHARS: usize = 64;

/// `a = 1, b = 'x', c IS NULL` for a message (values cut to 64 chars).
pub fn render_key<'a>(pairs: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>) -> String {
    let mut out = String::new();
    for (i, (column, value)) in pairs.into_iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        match value {
            None => {
                let _ = write!(out, "{column} IS NULL");
            }
            Some(v) => {
                let text = String::from_utf8_lossy(v);
                let mut shown: String = text.chars().take(SHOWN_VALUE_CHARS).collect();
                if shown.len() < text.len() {
                    shown.push('…');
                }
                let _ = write!(out, "{column} = '{}'", shown.replace('\'', "''"));
            }
        }
    }
    out
}

/// The SQLSTATE [`FUNCTION`] raises under `on_divergence = "stop"`.
pub const SQLSTATE: &str = "SLD01";

/// The table of divergences counted on a target, and the function a
/// read-model `MERGE` calls when a group would go wrong. Created with the
/// progress table on every target.
pub const DDL: &str = "CREATE TABLE IF NOT EXISTS shardline.cdc_divergence (
    slot_name  text NOT NULL,
    -- the commit position of the last source transaction of the target
    -- transaction that found it (NULL for read-model groups)
    commit_lsn pg_lsn,
    relation   text NOT NULL,
    operation  text NOT NULL,
    key        text NOT NULL,
    noticed_at timestamptz NOT NULL DEFAULT now()
);
CREATE OR REPLACE FUNCTION shardline.cdc_diverged(rows bigint, slot text, read_model text, grp text, stop boolean)
RETURNS bigint LANGUAGE plpgsql AS $fn$
BEGIN
    IF stop THEN
        RAISE EXCEPTION 'read model %: adjusting group % leaves it with % rows', read_model, grp, rows
            USING ERRCODE = 'SLD01',
                  DETAIL = 'the read model did not hold rows the source removed: it diverged before this change';
    END IF;
    INSERT INTO shardline.cdc_divergence (slot_name, relation, operation, key)
        VALUES (slot, read_model, 'adjust', grp);
    PERFORM set_config('shardline.model_divergences',
        (coalesce(nullif(current_setting('shardline.model_divergences', true), ''), '0')::bigint + 1)::text, true);
    RETURN rows;
END
$fn$;";

/// Reads how many read-model groups [`FUNCTION`] recorded in the open
/// target transaction (one row, one column: a number or empty).
pub const MODEL_DIVERGENCES_SQL: &str =
    "SELECT coalesce(nullif(current_setting('shardline.model_divergences', true), ''), '0')";

/// The name of the function a read-model `MERGE` calls.
pub const FUNCTION: &str = "shardline.cdc_diverged";

/// Records divergences on the target, in the open target transaction.
pub fn record_sql(slot: &str, commit_lsn: &str, found: &[Divergence]) -> String {
    let mut sql = String::from(
        "INSERT INTO shardline.cdc_divergence (slot_name, commit_lsn, relation, operation, key) VALUES ",
    );
    for (i, d) in found.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        let _ = write!(sql, "(");
        for (j, v) in [slot, commit_lsn, &d.relation, d.operation, &d.key]
            .into_iter()
            .enumerate()
        {
            if j > 0 {
                sql.push_str(", ");
            }
            crate::sql::push_literal(&mut sql, Some(v.as_bytes()));
        }
        sql.push(')');
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_shown_with_their_values_cut_and_quoted() {
        let long = "x".repeat(100);
        let key = render_key([
            ("merchant_id", Some(&b"7"[..])),
            ("note", Some(long.as_bytes())),
            ("it's", None),
            ("q", Some(&b"a'b"[..])),
        ]);
        assert_eq!(
            key,
            format!(
                "merchant_id = '7', note = '{}…', it's IS NULL, q = 'a''b'",
                "x".repeat(64)
            )
        );
        let sql = record_sql(
            "s",
            "0/10",
            &[Divergence {
                relation: "\"public\".\"p\"".into(),
                operation: "delete",
                key: "id = '1'".into(),
            }],
        );
        assert!(
            sql.ends_with("VALUES ('s', '0/10', '\"public\".\"p\"', 'delete', 'id = ''1''')"),
            "{sql}"
        );
    }
}
