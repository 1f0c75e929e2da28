//! Table definitions read from the catalog, compared and recreated on targets.

use std::fmt::Write;

use shardline_topology::{quote_ident, TableName};
use tokio_postgres::Client;

use crate::error::BackfillError;

/// A column as the catalog describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnDef {
    pub name: String,
    /// `format_type(atttypid, atttypmod)`, e.g. `numeric(18,2)`.
    pub sql_type: String,
    pub not_null: bool,
}

/// An enum type a table's columns use, to create on targets before the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnumType {
    pub schema: String,
    pub name: String,
    pub labels: Vec<String>,
}

/// Everything needed to copy a table and to create it elsewhere.
#[derive(Clone, Debug)]
pub struct TableDef {
    /// The canonical name ([`TableName`]'s display form), as the control
    /// schema records it.
    pub name: String,
    pub table: TableName,
    pub columns: Vec<ColumnDef>,
    pub primary_key: Vec<String>,
    /// `CREATE INDEX …` of each secondary index.
    pub indexes: Vec<String>,
    pub enums: Vec<EnumType>,
    pub est_rows: i64,
    pub bytes: i64,
    pub blocks: i64,
}

impl TableDef {
    pub fn quoted(&self) -> String {
        self.table.quoted()
    }

    pub fn column_list(&self) -> String {
        self.columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// `CREATE TABLE` with columns, NOT NULL and the primary key.
    pub fn create_sql(&self) -> String {
        let mut sql = String::new();
        let schema = &self.table.schema;
        let _ = writeln!(sql, "CREATE SCHEMA IF NOT EXISTS {};", quote_ident(schema));
        for e in &self.enums {
            let labels: Vec<String> = e
                .labels
                .iter()
                .map(|l| format!("'{}'", l.replace('\'', "''")))
                .collect();
            let _ = writeln!(
                sql,
                "DO $$ BEGIN CREATE TYPE {}.{} AS ENUM ({}); EXCEPTION WHEN duplicate_object THEN NULL; END $$;",
                quote_ident(&e.schema),
                quote_ident(&e.name),
                labels.join(", ")
            );
        }
        let mut parts: Vec<String> = self
            .columns
            .iter()
            .map(|c| {
                format!(
                    "{} {}{}",
                    quote_ident(&c.name),
                    c.sql_type,
                    if c.not_null { " NOT NULL" } else { "" }
                )
            })
            .collect();
        if !self.primary_key.is_empty() {
            let pk: Vec<String> = self.primary_key.iter().map(|c| quote_ident(c)).collect();
            parts.push(format!("PRIMARY KEY ({})", pk.join(", ")));
        }
        let _ = write!(
            sql,
            "CREATE TABLE {} (\n    {}\n);",
            self.quoted(),
            parts.join(",\n    ")
        );
        sql
    }
}

/// Reads a table's definition; `None` when it does not exist.
pub async fn describe(
    client: &Client,
    table: &TableName,
) -> Result<Option<TableDef>, tokio_postgres::Error> {
    let Some(oid) = client
        .query_one("SELECT to_regclass($1)::oid", &[&table.quoted()])
        .await?
        .get::<_, Option<u32>>(0)
    else {
        return Ok(None);
    };
    let rows = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                    t.typtype = 'e', tn.nspname::text, t.typname::text, t.oid
               FROM pg_attribute a
               JOIN pg_type t ON t.oid = a.atttypid
               JOIN pg_namespace tn ON tn.oid = t.typnamespace
              WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
              ORDER BY a.attnum",
            &[&oid],
        )
        .await?;
    let mut columns = Vec::new();
    let mut enums = Vec::new();
    for r in &rows {
        columns.push(ColumnDef {
            name: r.get(0),
            sql_type: r.get(1),
            not_null: r.get(2),
        });
        if r.get::<_, bool>(3) {
            let type_oid: u32 = r.get(6);
            let labels = client
                .query("SELECT enumlabel::text FROM pg_enum WHERE enumtypid = $1 ORDER BY enumsortorder", &[&type_oid])
                .await?
                .iter()
                .map(|l| l.get(0))
                .collect();
            let e = EnumType {
                schema: r.get(4),
                name: r.get(5),
                labels,
            };
            if !enums.contains(&e) {
                enums.push(e);
            }
        }
    }
    let primary_key = client
        .query(
            "SELECT a.attname::text
               FROM pg_index i
               CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
              WHERE i.indrelid = $1 AND i.indisprimary
              ORDER BY k.ord",
            &[&oid],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let indexes = client
        .query(
            "SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = $1 AND NOT indisprimary ORDER BY indexrelid",
            &[&oid],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let stats = client
        .query_one(
            "SELECT greatest(reltuples, 0)::int8, pg_relation_size(oid),
                    pg_relation_size(oid) / current_setting('block_size')::int8
               FROM pg_class WHERE oid = $1",
            &[&oid],
        )
        .await?;
    Ok(Some(TableDef {
        name: table.to_string(),
        table: table.clone(),
        columns,
        primary_key,
        indexes,
        enums,
        est_rows: stats.get(0),
        bytes: stats.get(1),
        blocks: stats.get(2),
    }))
}

/// Every way `target` differs from `source`, as sentences naming the table.
/// Without `strict_nulls`, a NOT NULL target column may take a column the
/// source calls nullable (an aggregate that never yields NULL in practice:
/// the copy itself fails, naming the column, if one does).
pub fn differences(
    source: &TableDef,
    target: &TableDef,
    where_: &str,
    strict_nulls: bool,
) -> Vec<String> {
    let t = &source.name;
    let mut out = Vec::new();
    for c in &source.columns {
        match target.columns.iter().find(|x| x.name == c.name) {
            None => out.push(format!(
                "table {t}: column {} is missing on {where_}",
                c.name
            )),
            Some(x) if x.sql_type != c.sql_type => out.push(format!(
                "table {t}: column {} is {} on the source but {} on {where_}",
                c.name, c.sql_type, x.sql_type
            )),
            Some(x) if x.not_null != c.not_null && (strict_nulls || c.not_null) => {
                out.push(format!(
                    "table {t}: column {} is {} on the source but {} on {where_}",
                    c.name,
                    if c.not_null { "NOT NULL" } else { "nullable" },
                    if x.not_null { "NOT NULL" } else { "nullable" }
                ))
            }
            Some(_) => {}
        }
    }
    for x in &target.columns {
        if !source.columns.iter().any(|c| c.name == x.name) && x.not_null {
            out.push(format!(
                "table {t}: column {} exists only on {where_} and is NOT NULL",
                x.name
            ));
        }
    }
    if source.primary_key != target.primary_key {
        out.push(format!(
            "table {t}: primary key is ({}) on the source but ({}) on {where_}",
            source.primary_key.join(", "),
            target.primary_key.join(", ")
        ));
    }
    out
}

/// Runs a catalog query, naming the database on failure.
pub fn query_error(db: &str, e: tokio_postgres::Error) -> BackfillError {
    BackfillError::Query {
        database: db.to_string(),
        cause: e
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_else(|| e.to_string()),
    }
}
