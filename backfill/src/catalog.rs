//! What backfill needs of a table's definition: the columns it copies,
//! the key, the relations that hold the rows, and (for listed tables) the
//! whole definition read by the schema crate, from which targets are
//! created and against which they are compared.

use std::fmt::Write;
use std::sync::Arc;

use shardline_schema::{SchemaError, Table};
use shardline_topology::{quote_ident, TableName};
use tokio_postgres::Client;

use crate::error::BackfillError;

/// A column as backfill copies it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnDef {
    pub name: String,
    /// `format_type(atttypid, atttypmod)`, e.g. `numeric(18,2)`.
    pub sql_type: String,
    pub not_null: bool,
}

/// A relation that holds rows: the table, or one leaf partition of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leaf {
    pub relation: TableName,
    pub est_rows: i64,
    pub blocks: i64,
}

/// Everything needed to copy a table and to create it elsewhere.
#[derive(Clone, Debug)]
pub struct TableDef {
    /// The canonical name ([`TableName`]'s display form), as the control
    /// schema records it.
    pub name: String,
    pub table: TableName,
    /// The columns copied, in table order: generated columns are left out
    /// (PostgreSQL computes them, and refuses a value for them).
    pub columns: Vec<ColumnDef>,
    pub primary_key: Vec<String>,
    pub est_rows: i64,
    pub bytes: i64,
    pub blocks: i64,
    /// The relations read, each in its own block ranges: the leaf
    /// partitions of a partitioned table (a parent has no heap), else the
    /// table itself.
    pub leaves: Vec<Leaf>,
    /// The whole definition (`None` for a read model's result shape).
    pub schema: Option<Arc<Table>>,
}

impl TableDef {
    /// A listed table's copy definition from its whole definition.
    pub fn from_schema(table: Table) -> Self {
        let columns = table
            .stored_columns()
            .map(|c| ColumnDef {
                name: c.name.clone(),
                sql_type: c.sql_type.clone(),
                not_null: c.not_null,
            })
            .collect();
        let primary_key = table
            .primary_key()
            .map(|k| k.columns.clone())
            .unwrap_or_default();
        let leaves = table
            .leaves()
            .into_iter()
            .map(|(relation, stats)| Leaf {
                relation,
                est_rows: stats.est_rows,
                blocks: stats.blocks,
            })
            .collect();
        Self {
            name: table.name.to_string(),
            table: table.name.clone(),
            columns,
            primary_key,
            est_rows: table.stats.est_rows,
            bytes: table.stats.bytes,
            blocks: table.stats.blocks,
            leaves,
            schema: Some(Arc::new(table)),
        }
    }

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

    /// `CREATE TABLE` with columns, NOT NULL and the primary key: the
    /// table of a read model (listed tables are created from their whole
    /// definition by the schema crate).
    pub fn create_sql(&self) -> String {
        let mut sql = String::new();
        let _ = writeln!(
            sql,
            "CREATE SCHEMA IF NOT EXISTS {};",
            quote_ident(&self.table.schema)
        );
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
pub async fn describe(client: &Client, table: &TableName) -> Result<Option<TableDef>, SchemaError> {
    Ok(shardline_schema::read_table(client, table)
        .await?
        .map(TableDef::from_schema))
}

/// A catalog read that failed, naming the database.
pub fn schema_error(db: &str, e: SchemaError) -> BackfillError {
    let lost = match &e {
        SchemaError::Query(e) => shardline_topology::pgerror::is_connection_lost(e),
        _ => false,
    };
    BackfillError::Query {
        database: db.to_string(),
        cause: e.to_string(),
        lost,
    }
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

/// `body` between dollar quotes whose tag it does not contain: a label
/// such as `paid$$` would end a plain `$$` quote early.
pub fn dollar_quote(body: &str) -> String {
    let mut tag = String::from("$shardline$");
    let mut n = 0;
    while body.contains(&tag) {
        n += 1;
        tag = format!("$shardline{n}$");
    }
    format!("{tag}{body}{tag}")
}

/// Runs a catalog query, naming the database on failure.
pub fn query_error(db: &str, e: tokio_postgres::Error) -> BackfillError {
    BackfillError::Query {
        database: db.to_string(),
        cause: shardline_topology::describe_pg_error(&e),
        lost: shardline_topology::pgerror::is_connection_lost(&e),
    }
}
