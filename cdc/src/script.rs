//! What an applier sends to its target in one go: SQL text and, for long
//! runs of inserts, `COPY` data, in the order they must run.
//!
//! A multi-row `INSERT` costs the target a parse tree of every value:
//! lexing, one constant per value, coercion and planning, more than the
//! insert itself for runs of hundreds of rows. `COPY … FROM STDIN` hands the
//! same text values straight to the columns' input functions and inserts
//! in batches, so long runs travel as `COPY` data ([`Part::Copy`]) while
//! everything else stays SQL text sent as one simple query.
//!
//! Statements whose row count says whether the target still matched the
//! source (an update or delete of one row) carry a [`Check`]: the applier
//! reads each statement's count and compares.

use crate::divergence::Divergence;

/// What the applier verifies of one statement's result.
#[derive(Clone, Debug, PartialEq)]
pub enum Check {
    /// The statement must change exactly one row; none means the target
    /// no longer had the row the source changed.
    OneRow(Divergence),
    /// A `SELECT` of the read-model divergences the open target
    /// transaction recorded (see [`crate::divergence`]).
    ModelDivergences,
}

/// Statements sent as one simple query.
#[derive(Debug, Default, PartialEq)]
pub struct Sql {
    /// Statements, each ending in `;`.
    pub text: String,
    /// How many statements `text` holds.
    pub statements: usize,
    /// Checks by statement index.
    pub checks: Vec<(usize, Check)>,
}

/// One piece of a script.
#[derive(Debug, PartialEq)]
pub enum Part {
    Sql(Sql),
    /// `COPY table (columns) FROM STDIN` and its rows in text format.
    Copy {
        statement: String,
        data: Vec<u8>,
    },
}

/// Pieces in order; SQL is appended to the last one.
#[derive(Debug, Default)]
pub struct Script {
    parts: Vec<Part>,
    sql: Sql,
    /// Bytes held in `parts`.
    held: usize,
    /// Checks not yet sent.
    checks: usize,
}

impl Script {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one statement (without its `;`).
    pub fn statement(&mut self, sql: &str) {
        self.sql.text.push_str(sql);
        self.sql.text.push(';');
        self.sql.statements += 1;
    }

    /// Appends one statement whose result is checked.
    pub fn checked(&mut self, sql: &str, check: Check) {
        self.sql.checks.push((self.sql.statements, check));
        self.checks += 1;
        self.statement(sql);
    }

    /// Appends a `COPY` after what is there.
    pub fn copy(&mut self, statement: String, data: Vec<u8>) {
        if !self.sql.text.is_empty() {
            self.held += self.sql.text.len();
            self.parts.push(Part::Sql(std::mem::take(&mut self.sql)));
        }
        self.held += statement.len() + data.len();
        self.parts.push(Part::Copy { statement, data });
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.held + self.sql.text.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether statements with a [`Check`] wait to be sent.
    pub fn has_checks(&self) -> bool {
        self.checks > 0
    }

    /// Every part, in order (and empties the script).
    pub fn take(&mut self) -> Vec<Part> {
        let mut parts = std::mem::take(&mut self.parts);
        if !self.sql.text.is_empty() {
            parts.push(Part::Sql(std::mem::take(&mut self.sql)));
        }
        self.held = 0;
        self.checks = 0;
        parts
    }

    /// Forgets everything (its transaction rolls back).
    pub fn clear(&mut self) {
        self.take();
    }

    /// The script as psql would read it (`COPY` data inline, ended by
    /// `\.`): for tests and logs.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Sql(sql) => out.push_str(&sql.text),
                Part::Copy { statement, data } => {
                    out.push_str(statement);
                    out.push_str(";\n");
                    out.push_str(&String::from_utf8_lossy(data));
                    out.push_str("\\.\n");
                }
            }
        }
        out.push_str(&self.sql.text);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_keep_their_order_and_sizes_add_up() {
        let mut s = Script::new();
        assert!(s.is_empty());
        s.statement("BEGIN");
        s.copy("COPY t (a) FROM STDIN".into(), b"1\n2\n".to_vec());
        let gone = Divergence {
            relation: "t".into(),
            operation: "delete",
            key: "a = 1".into(),
        };
        s.checked("DELETE FROM t WHERE a = 1", Check::OneRow(gone.clone()));
        assert!(s.has_checks());
        s.statement("COMMIT");
        assert_eq!(s.len(), 6 + 21 + 4 + 26 + 7);
        assert_eq!(
            s.text(),
            "BEGIN;COPY t (a) FROM STDIN;\n1\n2\n\\.\nDELETE FROM t WHERE a = 1;COMMIT;"
        );
        assert_eq!(
            s.take(),
            vec![
                Part::Sql(Sql {
                    text: "BEGIN;".into(),
                    statements: 1,
                    checks: vec![]
                }),
                Part::Copy {
                    statement: "COPY t (a) FROM STDIN".into(),
                    data: b"1\n2\n".to_vec()
                },
                Part::Sql(Sql {
                    text: "DELETE FROM t WHERE a = 1;COMMIT;".into(),
                    statements: 2,
                    checks: vec![(0, Check::OneRow(gone))]
                })
            ]
        );
        assert!(s.is_empty() && !s.has_checks());
    }
}
