//! A schema change on one target: the applier's side.
//!
//! Each step runs inside the open target transaction, under the source
//! session's search_path, after its guard (where the target holds what it
//! changes) and its requirement (where the target can follow at all). A
//! step that cannot run in a transaction (`CONCURRENTLY`) is recorded in
//! `shardline.ddl_pending` in that transaction and run once it commits;
//! a run that stopped in between finds it there at start. A concurrent
//! index build that failed leaves an invalid index, dropped before the
//! next try; `IF NOT EXISTS` makes the try idempotent.

use shardline_ddl::plan::{by_hand, literal};
use shardline_ddl::Step;
use shardline_topology::describe_pg_error;

use super::TargetDdl;
use crate::apply::{Applier, ApplyError};

impl Applier {
    /// Runs the in-transaction steps of a schema change; records the
    /// others. True when some wait for the commit.
    pub(crate) async fn ddl(&self, ddl: &TargetDdl) -> Result<bool, ApplyError> {
        let mut pending = false;
        for (i, step) in ddl.steps.iter().enumerate() {
            if step.concurrent {
                let sql = format!(
                    "INSERT INTO shardline.ddl_pending (slot_name, ddl_id, step, sql, guard, search_path, index_name)
                     VALUES ({}, {}, {i}, {}, {}, {}, {}) ON CONFLICT DO NOTHING",
                    literal(&self.slot),
                    ddl.id,
                    literal(&step.sql),
                    step.guard.as_deref().map(literal).unwrap_or_else(|| "NULL".into()),
                    literal(&ddl.search_path),
                    step.index.as_deref().map(literal).unwrap_or_else(|| "NULL".into()),
                );
                self.client
                    .batch_execute(&sql)
                    .await
                    .map_err(|e| self.ddl_error(ddl, &e))?;
                pending = true;
                continue;
            }
            self.client
                .execute(
                    "SELECT set_config('search_path', $1, true)",
                    &[&ddl.search_path],
                )
                .await
                .map_err(|e| self.ddl_error(ddl, &e))?;
            let ran = self.step(ddl, step).await;
            self.client
                .batch_execute("RESET search_path")
                .await
                .map_err(|e| self.ddl_error(ddl, &e))?;
            ran?;
        }
        Ok(pending)
    }

    /// The partition changes whose rows this target takes: those whose
    /// condition holds here (a DETACH's rows are deleted only where the
    /// table is kept whole).
    pub(crate) async fn replays_here(&self, ddl: &TargetDdl) -> Result<Vec<usize>, ApplyError> {
        let mut here = Vec::new();
        for (part, condition) in &ddl.replays {
            let holds = match condition {
                Some(c) => self.holds(ddl, c).await?,
                None => true,
            };
            if holds {
                here.push(*part);
            } else {
                tracing::info!(target = %self.name, ddl = ddl.id, "the rows of the partition change stay: this target keeps the partitioning and ran the command itself");
            }
        }
        Ok(here)
    }

    async fn step(&self, ddl: &TargetDdl, step: &Step) -> Result<(), ApplyError> {
        // The requirement holds where the step runs at all.
        if let Some(guard) = &step.guard {
            if !self.holds(ddl, guard).await? {
                if let Some(why) = &step.skipped {
                    tracing::info!(target = %self.name, ddl = ddl.id, "{why}");
                }
                return Ok(());
            }
        }
        if let Some(r) = &step.require {
            if !self.holds(ddl, &r.check).await? {
                return Err(ApplyError::Ddl {
                    target: self.name.clone(),
                    id: ddl.id,
                    statement: ddl.statement.clone(),
                    cause: r.why.clone(),
                    fix: r.fix.clone(),
                });
            }
        }
        if !step.sql.is_empty() {
            self.client
                .batch_execute(&step.sql)
                .await
                .map_err(|e| self.ddl_error(ddl, &e))?;
        }
        Ok(())
    }

    async fn holds(&self, ddl: &TargetDdl, condition: &str) -> Result<bool, ApplyError> {
        self.client
            .query_one(&format!("SELECT ({condition})::bool"), &[])
            .await
            .map(|r| r.get::<_, Option<bool>>(0).unwrap_or(false))
            .map_err(|e| self.ddl_error(ddl, &e))
    }

    /// Runs the schema changes that wait for a commit, in order, each
    /// removed from the list once done.
    pub(crate) async fn run_pending_ddl(&self) -> Result<(), ApplyError> {
        let rows = self
            .client
            .query(
                "SELECT ddl_id, step, sql, guard, search_path, index_name FROM shardline.ddl_pending
                  WHERE slot_name = $1 ORDER BY ddl_id, step",
                &[&self.slot],
            )
            .await
            .map_err(|e| self.error(e))?;
        for row in rows {
            let (id, step): (i64, i32) = (row.get(0), row.get(1));
            let sql: String = row.get(2);
            let guard: Option<String> = row.get(3);
            let search_path: String = row.get(4);
            let index: Option<String> = row.get(5);
            let ddl = TargetDdl {
                id,
                statement: sql.clone(),
                search_path: search_path.clone(),
                steps: Vec::new(),
                ends_group: false,
                replays: Vec::new(),
            };
            self.client
                .execute(
                    "SELECT set_config('search_path', $1, false)",
                    &[&search_path],
                )
                .await
                .map_err(|e| self.ddl_error(&ddl, &e))?;
            let wanted = match &guard {
                Some(g) => self.holds(&ddl, g).await?,
                None => true,
            };
            if wanted {
                if let Some(index) = &index {
                    let invalid: bool = self
                        .client
                        .query_one(
                            "SELECT coalesce((SELECT NOT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)), false)",
                            &[index],
                        )
                        .await
                        .map_err(|e| self.ddl_error(&ddl, &e))?
                        .get(0);
                    if invalid {
                        tracing::info!(target = %self.name, %index, "dropping the invalid index a failed build left, to build it again");
                        self.client
                            .batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {index}"))
                            .await
                            .map_err(|e| self.ddl_error(&ddl, &e))?;
                    }
                }
                self.client
                    .batch_execute(&sql)
                    .await
                    .map_err(|e| self.ddl_error(&ddl, &e))?;
            }
            self.client
                .execute(
                    "DELETE FROM shardline.ddl_pending WHERE slot_name = $1 AND ddl_id = $2 AND step = $3",
                    &[&self.slot, &id, &step],
                )
                .await
                .map_err(|e| self.error(e))?;
            self.client
                .batch_execute("RESET search_path")
                .await
                .map_err(|e| self.error(e))?;
        }
        Ok(())
    }

    fn ddl_error(&self, ddl: &TargetDdl, e: &tokio_postgres::Error) -> ApplyError {
        ApplyError::Ddl {
            target: self.name.clone(),
            id: ddl.id,
            statement: ddl.statement.clone(),
            cause: describe_pg_error(e),
            fix: by_hand(ddl.id),
        }
    }
}
