//! Where an export reads and what: databases, the result's columns, and
//! the COPY statement each database runs.
//!
//! `--table` reads the table from the context that holds it (all shards
//! of a sharded context; one shard for a reference table, since every
//! shard holds all of it), or from the read model's context; `--from
//! source` reads the monolith, where a read model is computed with its
//! query. `--query` runs on the source unless `--from` names a context,
//! and then on every database of it.

use shardline_topology::{quote_ident, ConnString, ContextKind, TableName, Topology};
use tokio_postgres::types::Kind;
use tokio_postgres::Client;

use crate::error::ExportError;
use crate::types::{column_spec, ColumnSpec, NumericPolicy, Unmapped};
use crate::{From, What};

/// The databases to read and the statement that describes the result.
#[derive(Debug)]
pub struct Plan {
    pub databases: Vec<ConnString>,
    pub what: Select,
}

#[derive(Debug, Clone)]
pub enum Select {
    Table(TableName),
    Query(String),
}

impl Select {
    /// A query with the result's shape, for describing it.
    fn describe_sql(&self) -> String {
        match self {
            Self::Table(t) => format!("SELECT * FROM {}", t.quoted()),
            Self::Query(q) => q.clone(),
        }
    }

    /// The binary COPY of the result; columns marked `cast_to_text` are
    /// read through their text form.
    pub fn copy_sql(&self, columns: &[ColumnSpec]) -> String {
        let casts = columns.iter().any(|c| c.cast_to_text);
        let list = || {
            columns
                .iter()
                .map(|c| {
                    let q = quote_ident(&c.name);
                    if c.cast_to_text {
                        format!("{q}::text")
                    } else {
                        q
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        match (self, casts) {
            // A SELECT, not `COPY table`: that refuses a partitioned table,
            // while a SELECT on it reads every partition.
            (Self::Table(t), _) => format!(
                "COPY (SELECT {} FROM {}) TO STDOUT (FORMAT binary)",
                list(),
                t.quoted()
            ),
            (Self::Query(q), false) => format!("COPY ({q}) TO STDOUT (FORMAT binary)"),
            (Self::Query(q), true) => format!(
                "COPY (SELECT {} FROM ({q}) AS shardline_export) TO STDOUT (FORMAT binary)",
                list()
            ),
        }
    }
}

/// Chooses the databases and the statement; connects to nothing.
pub fn plan(topology: &Topology, what: &What, from: &From) -> Result<Plan, ExportError> {
    let context_dbs =
        |name: &str, table: Option<&TableName>| -> Result<Vec<ConnString>, ExportError> {
            let ctx = topology
                .context(name)
                .ok_or_else(|| ExportError::UnknownContext {
                    name: name.to_string(),
                    known: topology
                        .contexts
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                })?;
            if let (
                ContextKind::Sharded {
                    shards,
                    reference_tables,
                    ..
                },
                Some(t),
            ) = (&ctx.kind, table)
            {
                if reference_tables.contains(t) {
                    return Ok(vec![shards[0].clone()]);
                }
            }
            Ok(ctx.databases().into_iter().cloned().collect())
        };
    let source = || vec![topology.source.clone()];
    Ok(match what {
        What::Query(q) => Plan {
            databases: match from {
                From::Source | From::Default => source(),
                From::Context(c) => context_dbs(c, None)?,
            },
            what: Select::Query(q.trim().trim_end_matches(';').to_string()),
        },
        What::Table(text) => {
            let read_model = topology.read_models.iter().find(|r| &r.name == text);
            let t = &match read_model {
                Some(rm) => rm.table(),
                None => TableName::parse(text).map_err(|e| ExportError::BadTableName {
                    text: e.text,
                    why: e.why,
                })?,
            };
            match (from, read_model) {
                (From::Source, Some(rm)) => Plan {
                    databases: source(),
                    what: Select::Query(rm.query()),
                },
                (From::Source, None) => Plan {
                    databases: source(),
                    what: Select::Table(t.clone()),
                },
                (From::Context(c), _) => Plan {
                    databases: context_dbs(c, Some(t))?,
                    what: Select::Table(t.clone()),
                },
                (From::Default, Some(rm)) => Plan {
                    databases: context_dbs(&rm.context, None)?,
                    what: Select::Table(t.clone()),
                },
                (From::Default, None) => match topology.context_of_table(t) {
                    Some(ctx) => Plan {
                        databases: context_dbs(&ctx.name, Some(t))?,
                        what: Select::Table(t.clone()),
                    },
                    None => Plan {
                        databases: source(),
                        what: Select::Table(t.clone()),
                    },
                },
            }
        }
    })
}

/// The result's columns on one database, checked for an exact mapping.
pub async fn describe(
    client: &Client,
    database: &str,
    select: &Select,
    numeric: NumericPolicy,
    cast_unknown: bool,
) -> Result<Vec<ColumnSpec>, ExportError> {
    if let Select::Table(t) = select {
        let exists: Option<u32> = client
            .query_one("SELECT to_regclass($1)::oid", &[&t.quoted()])
            .await
            .map_err(|e| ExportError::query(database, e))?
            .get(0);
        if exists.is_none() {
            return Err(ExportError::MissingTable {
                table: t.short(),
                database: database.to_string(),
            });
        }
    }
    let stmt = client
        .prepare(&select.describe_sql())
        .await
        .map_err(|e| ExportError::query(database, e))?;
    let mut specs = Vec::with_capacity(stmt.columns().len());
    for c in stmt.columns() {
        let typmod = match c.type_().kind() {
            Kind::Domain(_) if c.type_modifier() == -1 => {
                domain_typmod(client, database, c.type_().oid()).await?
            }
            _ => c.type_modifier(),
        };
        let spec =
            column_spec(c.name(), c.type_(), typmod, numeric, cast_unknown).map_err(|e| {
                let pg_type = crate::types::type_name(c.type_(), typmod);
                match e {
                    Unmapped::Unsupported => ExportError::UnsupportedType {
                        column: c.name().to_string(),
                        pg_type,
                    },
                    Unmapped::UnconstrainedNumeric => ExportError::UnconstrainedNumeric {
                        column: c.name().to_string(),
                        pg_type,
                    },
                }
            })?;
        specs.push(spec);
    }
    Ok(specs)
}

/// The modifier a domain gives its base type (`CREATE DOMAIN amount AS
/// numeric(18,2)`), from the nearest domain in its chain that has one.
async fn domain_typmod(client: &Client, database: &str, domain: u32) -> Result<i32, ExportError> {
    const SQL: &str = "
        WITH RECURSIVE chain(oid, base, typmod, depth) AS (
            SELECT oid, typbasetype, typtypmod, 0 FROM pg_type WHERE oid = $1
            UNION ALL
            SELECT t.oid, t.typbasetype, t.typtypmod, c.depth + 1
              FROM pg_type t JOIN chain c ON t.oid = c.base
             WHERE c.typmod = -1 AND t.typtype = 'd')
        SELECT coalesce((SELECT typmod FROM chain WHERE typmod <> -1 ORDER BY depth LIMIT 1), -1)";
    client
        .query_one(SQL, &[&domain])
        .await
        .map(|r| r.get(0))
        .map_err(|e| ExportError::query(database, e))
}

/// The planner's row estimate for a table (0 for a query).
pub async fn estimate_rows(client: &Client, select: &Select) -> u64 {
    let Select::Table(t) = select else {
        return 0;
    };
    client
        .query_one(
            "SELECT greatest(reltuples, 0)::int8 FROM pg_class WHERE oid = to_regclass($1)",
            &[&t.quoted()],
        )
        .await
        .map(|r| r.get::<_, i64>(0) as u64)
        .unwrap_or(0)
}

/// Every database must give the result the same shape.
pub fn same_shape(
    first: &[ColumnSpec],
    first_db: &str,
    other: &[ColumnSpec],
    other_db: &str,
) -> Result<(), ExportError> {
    for (i, a) in first.iter().enumerate() {
        let b = other.get(i);
        if b.map(|b| (&b.name, &b.pg_type)) != Some((&a.name, &a.pg_type)) {
            return Err(ExportError::ShapeMismatch {
                column: a.name.clone(),
                pg_type: a.pg_type.clone(),
                database: first_db.to_string(),
                other_type: b.map_or("missing".into(), |b| format!("{} {}", b.name, b.pg_type)),
                other: other_db.to_string(),
            });
        }
    }
    if let Some(extra) = other.get(first.len()) {
        return Err(ExportError::ShapeMismatch {
            column: extra.name.clone(),
            pg_type: "missing".into(),
            database: first_db.to_string(),
            other_type: extra.pg_type.clone(),
            other: other_db.to_string(),
        });
    }
    Ok(())
}
