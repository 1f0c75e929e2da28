//! `shardline schema apply`: one SQL file on every database of a context,
//! after the cutover (the monolith's stream no longer carries changes).
//!
//! **All or nothing** when every statement can run in a transaction: each
//! database runs the file and records it in one transaction, then
//! `PREPARE TRANSACTION`; only when every database prepared does any
//! commit (`COMMIT PREPARED`), else all roll back. A run killed between
//! the two phases is finished by the next one: a database that already
//! committed means every one prepared, so the rest commit; none committed
//! means no commit began, so all roll back (presumed abort, no decision
//! log needed).
//!
//! **Database by database** when a statement cannot run in a transaction
//! (`CREATE INDEX CONCURRENTLY`): runs of transactional statements commit
//! together with the count of statements done (`shardline.schema_migrations`
//! on each database), others run alone and are counted after; a re-run
//! resumes each database at its first statement not done and skips the
//! databases that finished. A statement that may have run without being
//! counted (a kill in between) runs again, made idempotent where the
//! grammar allows (`IF NOT EXISTS`, an invalid index dropped first).
//!
//! A migration is known by its file name and the hash of its content; the
//! same name with other content where it already ran is refused.

use std::path::Path;

use pg_query::NodeEnum;
use serde::Serialize;
use sha2::{Digest, Sha256};
use shardline_topology::ConnString;
use tokio_postgres::Client;

use crate::statement::{self, Statement};
use crate::DdlError;
use shardline_topology::describe_pg_error;

/// The record of migrations on each database.
const RECORD_DDL: &str = "CREATE SCHEMA IF NOT EXISTS shardline;
CREATE TABLE IF NOT EXISTS shardline.schema_migrations (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    statements  int NOT NULL,
    -- statements applied so far (all of them once finished_at is set)
    done        int NOT NULL,
    finished_at timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now()
);";

/// One migration file, split into statements.
#[derive(Clone, Debug)]
pub struct Migration {
    /// The file name.
    pub name: String,
    /// `name@` and the first 16 hex digits of the content's SHA-256.
    pub id: String,
    pub statements: Vec<Statement>,
}

impl Migration {
    pub fn read(path: &Path) -> Result<Self, DdlError> {
        let text = std::fs::read_to_string(path).map_err(|e| DdlError::ReadFile {
            path: path.display().to_string(),
            cause: e.to_string(),
        })?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        Self::parse(&name, &text)
    }

    pub fn parse(name: &str, text: &str) -> Result<Self, DdlError> {
        let statements = statement::split(text)?;
        if statements.is_empty() {
            return Err(DdlError::EmptyMigration { file: name.into() });
        }
        for (i, s) in statements.iter().enumerate() {
            if matches!(s.node, NodeEnum::TransactionStmt(_)) {
                return Err(DdlError::TransactionControl {
                    file: name.into(),
                    index: i + 1,
                    sql: s.text.clone(),
                });
            }
        }
        let hash = Sha256::digest(text.as_bytes());
        let hex: String = hash.iter().take(8).map(|b| format!("{b:02x}")).collect();
        Ok(Self {
            name: name.into(),
            id: format!("{name}@{hex}"),
            statements,
        })
    }

    /// The first statement (1-based) that cannot run in a transaction.
    pub fn not_transactional(&self) -> Option<(usize, &Statement)> {
        self.statements
            .iter()
            .enumerate()
            .find(|(_, s)| !statement::transactional(&s.node))
            .map(|(i, s)| (i + 1, s))
    }
}

/// How a migration runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Two-phase commit across the databases.
    AllOrNothing,
    /// One database after the other, resumable.
    PerDatabase,
}

/// What the caller asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wanted {
    /// All or nothing where the statements allow it, else per database.
    Auto,
    PerDatabase,
}

/// A database of the context, by its redacted name.
#[derive(Clone, Debug)]
pub struct Database {
    pub name: String,
    pub conn: ConnString,
}

/// Where a database stands with a migration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Standing {
    /// Every statement applied.
    Done,
    /// Resumes at this statement (1-based).
    Resumes {
        at: usize,
    },
    ToRun,
}

#[derive(Clone, Debug, Serialize)]
pub struct DatabasePlan {
    pub database: String,
    #[serde(flatten)]
    pub standing: Standing,
}

/// What `schema apply` will do (and, after it ran, did).
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub migration: String,
    pub statements: Vec<String>,
    pub mode: Mode,
    /// Why this mode.
    pub why: String,
    pub databases: Vec<DatabasePlan>,
}

/// Reads where each database stands and chooses the mode. Writes nothing.
pub async fn plan(m: &Migration, dbs: &[Database], wanted: Wanted) -> Result<Plan, DdlError> {
    let (mode, why) = match (wanted, m.not_transactional()) {
        (Wanted::PerDatabase, _) => (Mode::PerDatabase, "asked for (--per-database)".to_string()),
        (Wanted::Auto, Some((i, s))) => (
            Mode::PerDatabase,
            format!(
                "statement {i} (`{}`) cannot run inside a transaction",
                crate::plan::short(&s.text)
            ),
        ),
        (Wanted::Auto, None) => (
            Mode::AllOrNothing,
            "every statement can run in a transaction: two-phase commit".to_string(),
        ),
    };
    let mut databases = Vec::new();
    for db in dbs {
        let client = db.conn.connect().await?;
        if mode == Mode::AllOrNothing {
            let setting: i64 = client
                .query_one(
                    "SELECT current_setting('max_prepared_transactions')::bigint",
                    &[],
                )
                .await
                .map_err(|e| query(db, &e))?
                .get(0);
            if setting == 0 {
                return Err(DdlError::NoPreparedTransactions {
                    database: db.name.clone(),
                    setting,
                });
            }
        }
        let standing = match recorded(&client, db, m).await? {
            Some(done) if done >= m.statements.len() => Standing::Done,
            Some(done) if done > 0 => Standing::Resumes { at: done + 1 },
            _ => Standing::ToRun,
        };
        databases.push(DatabasePlan {
            database: db.name.clone(),
            standing,
        });
    }
    Ok(Plan {
        migration: m.id.clone(),
        statements: m.statements.iter().map(|s| s.text.clone()).collect(),
        mode,
        why,
        databases,
    })
}

/// Runs the migration as planned; `progress` hears of each database done.
pub async fn apply(
    m: &Migration,
    dbs: &[Database],
    plan: &Plan,
    progress: impl Fn(&str, &Standing),
) -> Result<(), DdlError> {
    match plan.mode {
        Mode::AllOrNothing => all_or_nothing(m, dbs, progress).await,
        Mode::PerDatabase => {
            for db in dbs {
                per_database(m, db).await?;
                progress(&db.name, &Standing::Done);
            }
            Ok(())
        }
    }
}

fn query(db: &Database, e: &tokio_postgres::Error) -> DdlError {
    DdlError::Query {
        database: db.name.clone(),
        cause: describe_pg_error(e),
    }
}

/// Statements done on a database (None: never started there). Refuses a
/// migration of the same name recorded with other content.
async fn recorded(
    client: &Client,
    db: &Database,
    m: &Migration,
) -> Result<Option<usize>, DdlError> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('shardline.schema_migrations') IS NOT NULL",
            &[],
        )
        .await
        .map_err(|e| query(db, &e))?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let rows = client
        .query(
            "SELECT id, done FROM shardline.schema_migrations WHERE name = $1",
            &[&m.name],
        )
        .await
        .map_err(|e| query(db, &e))?;
    for r in &rows {
        let id: String = r.get(0);
        if id != m.id {
            return Err(DdlError::Changed {
                name: m.name.clone(),
                database: db.name.clone(),
                recorded: id,
                id: m.id.clone(),
            });
        }
    }
    Ok(rows.first().map(|r| r.get::<_, i32>(1) as usize))
}

/// The global transaction id of a migration's part on a database.
fn gid(m: &Migration, db: &Database) -> String {
    let hash = m.id.rsplit('@').next().unwrap_or_default();
    let database: String = Sha256::digest(db.name.as_bytes())
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("shardline_migrate_{hash}_{database}")
}

async fn all_or_nothing(
    m: &Migration,
    dbs: &[Database],
    progress: impl Fn(&str, &Standing),
) -> Result<(), DdlError> {
    let mut clients = Vec::new();
    for db in dbs {
        let client = db.conn.connect().await?;
        client
            .batch_execute(RECORD_DDL)
            .await
            .map_err(|e| query(db, &e))?;
        clients.push(client);
    }
    recover(m, dbs, &clients).await?;
    // Phase one: every database runs its part and prepares it.
    let mut prepared: Vec<usize> = Vec::new();
    for (i, (db, client)) in dbs.iter().zip(&clients).enumerate() {
        if recorded(client, db, m).await? == Some(m.statements.len()) {
            progress(&db.name, &Standing::Done);
            continue;
        }
        let ran = async {
            client
                .batch_execute("BEGIN")
                .await
                .map_err(|e| query(db, &e))?;
            run_statements(m, db, client, 0..m.statements.len()).await?;
            record(client, db, m, m.statements.len(), true).await?;
            client
                .batch_execute(&format!("PREPARE TRANSACTION '{}'", gid(m, db)))
                .await
                .map_err(|e| query(db, &e))
        }
        .await;
        if let Err(e) = ran {
            let _ = client.batch_execute("ROLLBACK").await;
            for &j in &prepared {
                let _ = clients[j]
                    .batch_execute(&format!("ROLLBACK PREPARED '{}'", gid(m, &dbs[j])))
                    .await;
            }
            return Err(e);
        }
        prepared.push(i);
    }
    // Phase two: every part prepared, so every part commits.
    for &i in &prepared {
        clients[i]
            .batch_execute(&format!("COMMIT PREPARED '{}'", gid(m, &dbs[i])))
            .await
            .map_err(|e| query(&dbs[i], &e))?;
        progress(&dbs[i].name, &Standing::Done);
    }
    Ok(())
}

/// Finishes what a killed all-or-nothing run left prepared.
async fn recover(m: &Migration, dbs: &[Database], clients: &[Client]) -> Result<(), DdlError> {
    let mut left = Vec::new();
    let mut committed = false;
    for (i, (db, client)) in dbs.iter().zip(clients).enumerate() {
        let found = client
            .query_opt(
                "SELECT 1 FROM pg_prepared_xacts WHERE gid = $1",
                &[&gid(m, db)],
            )
            .await
            .map_err(|e| query(db, &e))?
            .is_some();
        if found {
            left.push(i);
        }
        committed |= recorded(client, db, m).await? == Some(m.statements.len());
    }
    for i in left {
        let verb = if committed { "COMMIT" } else { "ROLLBACK" };
        tracing::warn!(database = %dbs[i].name, migration = %m.id, "an earlier run left its part prepared: {verb} PREPARED");
        clients[i]
            .batch_execute(&format!("{verb} PREPARED '{}'", gid(m, &dbs[i])))
            .await
            .map_err(|e| query(&dbs[i], &e))?;
    }
    Ok(())
}

async fn run_statements(
    m: &Migration,
    db: &Database,
    client: &Client,
    range: std::ops::Range<usize>,
) -> Result<(), DdlError> {
    for i in range {
        let s = &m.statements[i];
        client
            .batch_execute(&s.text)
            .await
            .map_err(|e| DdlError::Statement {
                migration: m.id.clone(),
                index: i + 1,
                sql: s.text.clone(),
                database: db.name.clone(),
                cause: describe_pg_error(&e),
            })?;
    }
    Ok(())
}

async fn record(
    client: &Client,
    db: &Database,
    m: &Migration,
    done: usize,
    finished: bool,
) -> Result<(), DdlError> {
    client
        .execute(
            "INSERT INTO shardline.schema_migrations (id, name, statements, done, finished_at)
             VALUES ($1, $2, $3, $4, CASE WHEN $5 THEN now() END)
             ON CONFLICT (id) DO UPDATE SET done = excluded.done, finished_at = excluded.finished_at, updated_at = now()",
            &[&m.id, &m.name, &(m.statements.len() as i32), &(done as i32), &finished],
        )
        .await
        .map_err(|e| query(db, &e))?;
    Ok(())
}

/// Runs what a database has not done yet: transactional runs with their
/// count, others alone (made idempotent) and counted after.
async fn per_database(m: &Migration, db: &Database) -> Result<(), DdlError> {
    let client = db.conn.connect().await?;
    client
        .batch_execute(RECORD_DDL)
        .await
        .map_err(|e| query(db, &e))?;
    let mut at = recorded(&client, db, m).await?.unwrap_or(0);
    let n = m.statements.len();
    while at < n {
        if statement::transactional(&m.statements[at].node) {
            let end = (at..n)
                .find(|&i| !statement::transactional(&m.statements[i].node))
                .unwrap_or(n);
            client
                .batch_execute("BEGIN")
                .await
                .map_err(|e| query(db, &e))?;
            let ran = async {
                run_statements(m, db, &client, at..end).await?;
                record(&client, db, m, end, end == n).await
            }
            .await;
            if let Err(e) = ran {
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(e);
            }
            client
                .batch_execute("COMMIT")
                .await
                .map_err(|e| query(db, &e))?;
            at = end;
        } else {
            let s = &m.statements[at];
            let again = idempotent(s);
            if let Some(index) = again.invalid_index.as_deref() {
                drop_invalid_index(&client, db, index).await?;
            }
            client
                .batch_execute(&again.sql)
                .await
                .map_err(|e| DdlError::Statement {
                    migration: m.id.clone(),
                    index: at + 1,
                    sql: s.text.clone(),
                    database: db.name.clone(),
                    cause: describe_pg_error(&e),
                })?;
            at += 1;
            record(&client, db, m, at, at == n).await?;
        }
    }
    Ok(())
}

struct Again {
    sql: String,
    /// An index a failed concurrent build may have left invalid.
    invalid_index: Option<String>,
}

/// A statement that may run a second time: `IF NOT EXISTS` / `IF EXISTS`
/// where the grammar has them.
fn idempotent(s: &Statement) -> Again {
    let as_is = Again {
        sql: s.text.clone(),
        invalid_index: None,
    };
    let (node, index) = match &s.node {
        NodeEnum::IndexStmt(i) if !i.idxname.is_empty() => {
            let mut i = i.clone();
            i.if_not_exists = true;
            let name = match &i.relation {
                Some(rv) if !rv.schemaname.is_empty() => format!(
                    "{}.{}",
                    shardline_topology::quote_ident(&rv.schemaname),
                    shardline_topology::quote_ident(&i.idxname)
                ),
                _ => shardline_topology::quote_ident(&i.idxname),
            };
            (NodeEnum::IndexStmt(i), Some(name))
        }
        NodeEnum::DropStmt(d) => {
            let mut d = d.clone();
            d.missing_ok = true;
            (NodeEnum::DropStmt(d), None)
        }
        _ => return as_is,
    };
    match node.deparse() {
        Ok(sql) => Again {
            sql,
            invalid_index: index,
        },
        Err(_) => as_is,
    }
}

async fn drop_invalid_index(client: &Client, db: &Database, index: &str) -> Result<(), DdlError> {
    let invalid: bool = client
        .query_one(
            "SELECT coalesce((SELECT NOT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)), false)",
            &[&index],
        )
        .await
        .map_err(|e| query(db, &e))?
        .get(0);
    if invalid {
        tracing::warn!(database = %db.name, %index, "dropping the invalid index an interrupted build left, to build it again");
        client
            .batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {index}"))
            .await
            .map_err(|e| query(db, &e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_migration_is_named_by_file_and_content() {
        let a = Migration::parse(
            "0042_risk.sql",
            "ALTER TABLE payments ADD risk int; CREATE INDEX ON payments (risk);",
        )
        .unwrap();
        let b = Migration::parse("0042_risk.sql", "ALTER TABLE payments ADD risk bigint;").unwrap();
        assert_eq!(a.statements.len(), 2);
        assert!(a.id.starts_with("0042_risk.sql@") && a.id.len() == "0042_risk.sql@".len() + 16);
        assert_ne!(a.id, b.id);
        assert!(a.not_transactional().is_none());
        let c = Migration::parse(
            "x.sql",
            "ALTER TABLE t ADD a int; CREATE INDEX CONCURRENTLY i ON t (a)",
        )
        .unwrap();
        assert_eq!(c.not_transactional().map(|(i, _)| i), Some(2));
    }

    #[test]
    fn transaction_control_and_empty_files_are_refused() {
        let e = Migration::parse("x.sql", "BEGIN; ALTER TABLE t ADD a int; COMMIT;").unwrap_err();
        assert!(e.to_string().contains("statement 1: `BEGIN`"), "{e}");
        assert!(Migration::parse("x.sql", "-- nothing\n").is_err());
    }

    #[test]
    fn statements_that_run_again_are_made_idempotent() {
        let s = statement::split("CREATE INDEX CONCURRENTLY i ON public.t (a)").unwrap();
        let again = idempotent(&s[0]);
        assert!(again.sql.contains("IF NOT EXISTS i"), "{}", again.sql);
        assert_eq!(again.invalid_index.as_deref(), Some(r#""public"."i""#));
        let s = statement::split("DROP INDEX CONCURRENTLY i").unwrap();
        assert!(idempotent(&s[0]).sql.contains("IF EXISTS"));
    }
}
