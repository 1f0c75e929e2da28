//! A definition rendered as the statements that create it elsewhere.
//!
//! The statements create, in order: schemas, types, sequences, the table
//! (with its partitions when the source's partitioning is kept), its
//! constraints, sequence ownership, comments; indexes and foreign keys
//! are separate ([`index`], [`foreign_key`]) because callers build
//! indexes after a copy and add foreign keys once both tables exist.

use shardline_topology::{quote_ident, TableName};

use crate::table::{
    Column, Constraint, ConstraintKind, Identity, Index, Sequence, Table, UserType,
};

/// What to leave out or change when creating a table.
#[derive(Clone, Copy, Debug, Default)]
pub struct CreateOptions<'a> {
    /// Keep the source's partitioning: a partitioned table with the same
    /// partitions (bounds and default partition too). Otherwise a
    /// partitioned source becomes one plain table.
    pub partitioned: bool,
    /// Constraints and indexes left out, by name (what cannot be carried,
    /// or what the topology lets go).
    pub skip: &'a [String],
}

impl CreateOptions<'_> {
    pub fn skips(&self, name: &str) -> bool {
        self.skip.iter().any(|s| s == name)
    }
}

/// A string literal that reads the same whatever
/// `standard_conforming_strings` says.
pub fn literal(text: &str) -> String {
    if text.contains('\\') {
        format!("E'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
    } else {
        format!("'{}'", text.replace('\'', "''"))
    }
}

/// `CREATE SCHEMA IF NOT EXISTS` for the schema of `name`.
pub fn schema(name: &TableName) -> String {
    format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(&name.schema))
}

/// `CREATE TYPE` or `CREATE DOMAIN` for a user type.
pub fn user_type(t: &UserType) -> String {
    match t {
        UserType::Enum { name, labels } => {
            let labels: Vec<String> = labels.iter().map(|l| literal(l)).collect();
            format!(
                "CREATE TYPE {} AS ENUM ({})",
                name.quoted(),
                labels.join(", ")
            )
        }
        UserType::Domain {
            name,
            base,
            collation,
            not_null,
            default,
            checks,
        } => {
            let mut sql = format!("CREATE DOMAIN {} AS {base}", name.quoted());
            if let Some(c) = collation {
                sql.push_str(&format!(" COLLATE {c}"));
            }
            if let Some(d) = default {
                sql.push_str(&format!(" DEFAULT {d}"));
            }
            if *not_null {
                sql.push_str(" NOT NULL");
            }
            for (check, def) in checks {
                sql.push_str(&format!(" CONSTRAINT {} {def}", quote_ident(check)));
            }
            sql
        }
        UserType::Composite { name, attributes } => {
            let attrs: Vec<String> = attributes
                .iter()
                .map(|(a, ty, coll)| {
                    let coll = coll
                        .as_deref()
                        .map(|c| format!(" COLLATE {c}"))
                        .unwrap_or_default();
                    format!("{} {ty}{coll}", quote_ident(a))
                })
                .collect();
            format!("CREATE TYPE {} AS ({})", name.quoted(), attrs.join(", "))
        }
    }
}

/// Everything that creates `table` on a database where it is missing:
/// its schema, the types and sequences the database lacks (`have_types`,
/// `have_sequences` list those it has), then [`create_table`]. Indexes
/// and foreign keys are not included.
pub fn create_statements(
    table: &Table,
    options: &CreateOptions,
    have_types: &[TableName],
    have_sequences: &[TableName],
) -> Vec<String> {
    let mut schemas: Vec<&TableName> = vec![&table.name];
    schemas.extend(table.types.iter().map(|t| t.name()));
    schemas.extend(table.sequences.iter().map(|s| &s.name));
    schemas.extend(table.partitions.iter().map(|p| &p.name));
    let mut out: Vec<String> = Vec::new();
    for s in schemas {
        let sql = schema(s);
        if !out.contains(&sql) {
            out.push(sql);
        }
    }
    for t in &table.types {
        if !have_types.contains(t.name()) {
            out.push(user_type(t));
        }
    }
    for s in table.sequences.iter().filter(|s| !s.identity) {
        if !have_sequences.contains(&s.name) {
            out.push(sequence(s));
        }
    }
    out.extend(create_table(table, options));
    out
}

fn sequence_options(s: &Sequence) -> String {
    format!(
        "INCREMENT BY {} MINVALUE {} MAXVALUE {} START WITH {} CACHE {} {}",
        s.increment,
        s.min,
        s.max,
        s.start,
        s.cache,
        if s.cycle { "CYCLE" } else { "NO CYCLE" }
    )
}

/// `CREATE SEQUENCE` of a sequence that is not an identity column's
/// (those come with their column).
pub fn sequence(s: &Sequence) -> String {
    format!(
        "CREATE SEQUENCE {} AS {} {}",
        s.name.quoted(),
        s.data_type,
        sequence_options(s)
    )
}

fn column(table: &Table, c: &Column) -> String {
    let mut sql = format!("{} {}", quote_ident(&c.name), c.sql_type);
    if let Some(coll) = &c.collation {
        sql.push_str(&format!(" COLLATE {coll}"));
    }
    if let Some(expr) = &c.generated {
        sql.push_str(&format!(" GENERATED ALWAYS AS ({expr}) STORED"));
    } else if let Some(identity) = c.identity {
        let kind = match identity {
            Identity::Always => "ALWAYS",
            Identity::ByDefault => "BY DEFAULT",
        };
        let options = table
            .sequences
            .iter()
            .find(|s| s.identity && s.owned_by.as_deref() == Some(&c.name))
            .map(|s| {
                format!(
                    " (SEQUENCE NAME {} {})",
                    s.name.quoted(),
                    sequence_options(s)
                )
            })
            .unwrap_or_default();
        sql.push_str(&format!(" GENERATED {kind} AS IDENTITY{options}"));
    } else if let Some(d) = &c.default {
        sql.push_str(&format!(" DEFAULT {d}"));
    }
    if c.not_null {
        sql.push_str(" NOT NULL");
    }
    sql
}

/// The statements that create `table` itself: the table (and its
/// partitions), its primary key, unique, check and exclusion constraints,
/// sequence ownership and comments. Types and sequences it needs come
/// first ([`user_type`], [`sequence`]); indexes and foreign keys after.
pub fn create_table(table: &Table, options: &CreateOptions) -> Vec<String> {
    let name = table.name.quoted();
    let columns: Vec<String> = table.columns.iter().map(|c| column(table, c)).collect();
    let partition_by = match (&table.partition_key, options.partitioned) {
        (Some(key), true) => format!(" PARTITION BY {key}"),
        _ => String::new(),
    };
    let mut out = vec![format!(
        "CREATE TABLE {name} (\n    {}\n){partition_by}",
        columns.join(",\n    ")
    )];
    if options.partitioned {
        for p in table.partitions.iter().filter(|p| !p.foreign) {
            let sub = p
                .partition_key
                .as_deref()
                .map(|k| format!(" PARTITION BY {k}"))
                .unwrap_or_default();
            out.push(format!(
                "CREATE TABLE {} PARTITION OF {} {}{sub}",
                p.name.quoted(),
                p.parent.quoted(),
                p.bound
            ));
        }
    }
    for c in table
        .constraints
        .iter()
        .filter(|c| c.kind != ConstraintKind::ForeignKey && !options.skips(&c.name))
    {
        out.push(add_constraint(table, c));
    }
    for s in table.sequences.iter().filter(|s| !s.identity) {
        if let Some(col) = &s.owned_by {
            out.push(format!(
                "ALTER SEQUENCE {} OWNED BY {name}.{}",
                s.name.quoted(),
                quote_ident(col)
            ));
        }
    }
    out.extend(comments(table, options));
    out
}

fn add_constraint(table: &Table, c: &Constraint) -> String {
    format!(
        "ALTER TABLE {} ADD CONSTRAINT {} {}",
        table.name.quoted(),
        quote_ident(&c.name),
        c.definition
    )
}

fn comments(table: &Table, options: &CreateOptions) -> Vec<String> {
    let name = table.name.quoted();
    let mut out = Vec::new();
    if let Some(c) = &table.comment {
        out.push(format!("COMMENT ON TABLE {name} IS {}", literal(c)));
    }
    for col in &table.columns {
        if let Some(c) = &col.comment {
            out.push(format!(
                "COMMENT ON COLUMN {name}.{} IS {}",
                quote_ident(&col.name),
                literal(c)
            ));
        }
    }
    for con in table
        .constraints
        .iter()
        .filter(|c| c.kind != ConstraintKind::ForeignKey && !options.skips(&c.name))
    {
        if let Some(c) = &con.comment {
            out.push(format!(
                "COMMENT ON CONSTRAINT {} ON {name} IS {}",
                quote_ident(&con.name),
                literal(c)
            ));
        }
    }
    out
}

/// `CREATE INDEX` of an index (of a plain or a partitioned table: a
/// partitioned parent's definition says `ON ONLY`, which would leave the
/// partitions without it), and its comment.
pub fn index(table: &Table, index: &Index) -> Vec<String> {
    let mut out = vec![index_definition(&index.definition)];
    if let Some(c) = &index.comment {
        out.push(format!(
            "COMMENT ON INDEX {} IS {}",
            table.name.sibling(index.name.clone()).quoted(),
            literal(c)
        ));
    }
    out
}

/// An index definition as it applies to the whole table (`ON ONLY` dropped).
pub fn index_definition(definition: &str) -> String {
    definition.replacen(" ON ONLY ", " ON ", 1)
}

/// `ALTER TABLE … ADD CONSTRAINT` of a foreign key, and its comment.
pub fn foreign_key(table: &Table, fk: &Constraint) -> Vec<String> {
    let mut out = vec![add_constraint(table, fk)];
    if let Some(c) = &fk.comment {
        out.push(format!(
            "COMMENT ON CONSTRAINT {} ON {} IS {}",
            quote_ident(&fk.name),
            table.name.quoted(),
            literal(c)
        ));
    }
    out
}

/// `setval` that moves a sequence to `value` (as last handed out), never
/// back: a target already past it keeps its position. "Past" is below for
/// a descending sequence.
pub fn advance_sequence(s: &Sequence, value: i64) -> String {
    let pick = if s.increment < 0 { "least" } else { "greatest" };
    format!(
        "SELECT setval({}, {pick}({value}, last_value), true) FROM {}",
        s.name.literal(),
        s.name.quoted()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_survive_quotes_backslashes_and_dollars() {
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(literal("a\\b'"), "E'a\\\\b'''");
        assert_eq!(literal("$$x$$"), "'$$x$$'");
    }

    #[test]
    fn a_partitioned_parents_index_covers_its_partitions() {
        assert_eq!(
            index_definition("CREATE INDEX i ON ONLY public.t USING btree (a)"),
            "CREATE INDEX i ON public.t USING btree (a)"
        );
        assert_eq!(
            index_definition("CREATE UNIQUE INDEX i ON public.t USING btree (a)"),
            "CREATE UNIQUE INDEX i ON public.t USING btree (a)"
        );
    }
}
