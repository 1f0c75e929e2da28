//! Table names, parsed once and rendered one way everywhere.
//!
//! A topology lists tables the way SQL names them: `payments`,
//! `"Payments"`, `"odd.name with space"`, `billing."Ledger"`. Unquoted
//! parts fold to lower case and quoted parts keep every character, exactly
//! as PostgreSQL reads a name, so the table a topology means is the table
//! `psql` would find. Every command then uses the same [`TableName`]: its
//! [`TableName::quoted`] form in SQL (data statements, and catalog lookups
//! through `to_regclass` of that form or by exact `pg_namespace`/`pg_class`
//! names), and its [`fmt::Display`] form in messages and control tables.

use std::fmt;
use std::str::FromStr;

/// The schema of a table named without one.
pub const DEFAULT_SCHEMA: &str = "public";

/// PostgreSQL keeps names up to this many bytes (NAMEDATALEN - 1) and
/// silently truncates longer ones: a longer name would mean another table.
const MAX_NAME_BYTES: usize = 63;

/// A schema-qualified table name, as the catalog spells it (no quotes, no
/// case folding left to do).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    pub schema: String,
    pub name: String,
}

/// Why a text is not a table name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a table name: {why}")]
pub struct NameError {
    pub text: String,
    pub why: String,
}

impl NameError {
    fn new(text: &str, why: impl Into<String>) -> Self {
        Self {
            text: text.to_string(),
            why: why.into(),
        }
    }
}

impl TableName {
    /// A name from its catalog spelling (as `pg_namespace.nspname` and
    /// `pg_class.relname` hold it).
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// Reads a name written as SQL writes it: `[schema.]table`, each part
    /// a plain identifier (folded to lower case) or a double-quoted one
    /// (`""` for a quote inside).
    pub fn parse(text: &str) -> Result<Self, NameError> {
        let mut parts = Vec::new();
        let mut chars = text.trim().chars().peekable();
        loop {
            let mut part = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                loop {
                    match chars.next() {
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            part.push('"');
                        }
                        Some('"') => break,
                        Some(c) => part.push(c),
                        None => return Err(NameError::new(text, "a quote is not closed")),
                    }
                }
                if part.is_empty() {
                    return Err(NameError::new(text, "an empty quoted name (\"\")"));
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == '.' {
                        break;
                    }
                    part.push(c);
                    chars.next();
                }
                if part.is_empty() {
                    return Err(NameError::new(text, "an empty part"));
                }
                if !is_plain(&part) {
                    return Err(NameError::new(
                        text,
                        format!(
                            "{part:?} is not a plain identifier; quote it as SQL does, e.g. '\"{}\"'",
                            part.replace('"', "\"\"")
                        ),
                    ));
                }
                part = part.to_lowercase();
            }
            if part.len() > MAX_NAME_BYTES {
                return Err(NameError::new(
                    text,
                    format!("{part:?} is longer than PostgreSQL's {MAX_NAME_BYTES} bytes"),
                ));
            }
            parts.push(part);
            match chars.next() {
                None => break,
                Some('.') => continue,
                Some(c) => {
                    return Err(NameError::new(
                        text,
                        format!("unexpected {c:?} after a quoted name"),
                    ))
                }
            }
        }
        match parts.len() {
            1 => Ok(Self::new(DEFAULT_SCHEMA, parts.remove(0))),
            2 => {
                let name = parts.pop().unwrap_or_default();
                Ok(Self::new(parts.remove(0), name))
            }
            _ => Err(NameError::new(
                text,
                "more than schema.table (quote a name that holds a dot)",
            )),
        }
    }

    /// `"schema"."name"`: for SQL text, whatever the characters.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    /// A string literal of the quoted form, for `to_regclass(…)` or `…::regclass`.
    pub fn literal(&self) -> String {
        format!("'{}'", self.quoted().replace('\'', "''"))
    }

    /// The name without its schema when that is `public`, quoted only
    /// where SQL needs it: `payments`, `"Payments"`, `billing.ledger`.
    pub fn short(&self) -> String {
        if self.schema == DEFAULT_SCHEMA {
            display_ident(&self.name)
        } else {
            self.to_string()
        }
    }

    /// The same table name in another schema (a sequence or type next to
    /// a table, for instance).
    pub fn sibling(&self, name: impl Into<String>) -> Self {
        Self::new(self.schema.clone(), name)
    }
}

/// `schema.name`, each part quoted only where SQL needs it
/// (`public.payments`, `public."Payments"`, `public."odd.name"`): one
/// string per table, used as its key in control tables and messages.
impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}",
            display_ident(&self.schema),
            display_ident(&self.name)
        )
    }
}

/// A name serialises as its display form, the one string per table.
impl serde::Serialize for TableName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl FromStr for TableName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Quotes an identifier for SQL the way `quote_ident` does, always.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// An identifier as a person writes it: bare when it reads back as
/// itself, quoted otherwise.
pub fn display_ident(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
    if plain {
        name.to_string()
    } else {
        quote_ident(name)
    }
}

/// An unquoted identifier: a letter or `_`, then letters, digits, `_`, `$`.
fn is_plain(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || c == '_' || c == '$')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> TableName {
        TableName::parse(s).unwrap()
    }

    #[test]
    fn names_read_as_sql_reads_them() {
        assert_eq!(p("payments"), TableName::new("public", "payments"));
        assert_eq!(p("Payments"), TableName::new("public", "payments"));
        assert_eq!(p("\"Payments\""), TableName::new("public", "Payments"));
        assert_eq!(
            p("\"odd.name with space\""),
            TableName::new("public", "odd.name with space")
        );
        assert_eq!(p("billing.\"Ledger\""), TableName::new("billing", "Ledger"));
        assert_eq!(p("\"a\"\"b\""), TableName::new("public", "a\"b"));
        assert_eq!(p(" public.x "), TableName::new("public", "x"));
    }

    #[test]
    fn bad_names_say_why() {
        for bad in [
            "",
            "a b",
            "a.b.c",
            "\"open",
            "\"\"",
            "x.",
            "\"a\"b",
            "1abc",
            &"x".repeat(64),
        ] {
            assert!(TableName::parse(bad).is_err(), "{bad:?} parsed");
        }
        let e = TableName::parse("odd name").unwrap_err().to_string();
        assert!(e.contains("quote it"), "{e}");
    }

    #[test]
    fn renderings_round_trip() {
        for text in [
            "payments",
            "\"Payments\"",
            "\"odd.name with space\"",
            "billing.\"Ledger\"",
            "\"a\"\"b\"",
        ] {
            let n = p(text);
            assert_eq!(p(&n.to_string()), n, "{text}");
            assert_eq!(p(&n.short()), n, "{text}");
            assert_eq!(p(&n.quoted()), n, "{text}");
        }
        assert_eq!(p("payments").to_string(), "public.payments");
        assert_eq!(p("payments").short(), "payments");
        assert_eq!(p("\"Payments\"").to_string(), "public.\"Payments\"");
        assert_eq!(p("billing.\"Ledger\"").quoted(), "\"billing\".\"Ledger\"");
        assert_eq!(p("\"it's\"").literal(), "'\"public\".\"it''s\"'");
    }
}
