//! What an applier sends to its target in one go: SQL text and, for long
//! runs of inserts, `COPY` data, in the order they must run.
//!
//! A multi-row `INSERT` costs the target a parse tree of every value:
//! lexing, one constant per value, coercion and planning, more than the
//! insert itself for runs of hundreds of rows. `COPY … FROM STDIN` hands the
//! same text values straight to the columns' input functions and inserts
//! in batches, so long runs travel as `COPY` data ([`Part::Copy`]) while
//! everything else stays SQL text sent as one simple query.

/// One piece of a script.
#[derive(Debug, PartialEq)]
pub enum Part {
    /// Statements, each ending in `;`.
    Sql(String),
    /// `COPY table (columns) FROM STDIN` and its rows in text format.
    Copy { statement: String, data: Vec<u8> },
}

/// Pieces in order; SQL is appended to the last one.
#[derive(Debug, Default)]
pub struct Script {
    parts: Vec<Part>,
    sql: String,
    /// Bytes held in `parts`.
    held: usize,
}

impl Script {
    pub fn new() -> Self {
        Self::default()
    }

    /// The SQL text being appended to (after every part so far).
    pub fn sql(&mut self) -> &mut String {
        &mut self.sql
    }

    pub fn push_str(&mut self, sql: &str) {
        self.sql.push_str(sql);
    }

    pub fn push(&mut self, c: char) {
        self.sql.push(c);
    }

    /// Appends a `COPY` after what is there.
    pub fn copy(&mut self, statement: String, data: Vec<u8>) {
        if !self.sql.is_empty() {
            self.held += self.sql.len();
            self.parts.push(Part::Sql(std::mem::take(&mut self.sql)));
        }
        self.held += statement.len() + data.len();
        self.parts.push(Part::Copy { statement, data });
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.held + self.sql.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every part, in order (and empties the script).
    pub fn take(&mut self) -> Vec<Part> {
        let mut parts = std::mem::take(&mut self.parts);
        if !self.sql.is_empty() {
            parts.push(Part::Sql(std::mem::take(&mut self.sql)));
        }
        self.held = 0;
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
                Part::Sql(sql) => out.push_str(sql),
                Part::Copy { statement, data } => {
                    out.push_str(statement);
                    out.push_str(";\n");
                    out.push_str(&String::from_utf8_lossy(data));
                    out.push_str("\\.\n");
                }
            }
        }
        out.push_str(&self.sql);
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
        s.push_str("BEGIN;");
        s.copy("COPY t (a) FROM STDIN".into(), b"1\n2\n".to_vec());
        s.sql().push_str("COMMIT;");
        assert_eq!(s.len(), 6 + 21 + 4 + 7);
        assert_eq!(s.text(), "BEGIN;COPY t (a) FROM STDIN;\n1\n2\n\\.\nCOMMIT;");
        assert_eq!(
            s.take(),
            vec![
                Part::Sql("BEGIN;".into()),
                Part::Copy {
                    statement: "COPY t (a) FROM STDIN".into(),
                    data: b"1\n2\n".to_vec()
                },
                Part::Sql("COMMIT;".into())
            ]
        );
        assert!(s.is_empty());
    }
}
