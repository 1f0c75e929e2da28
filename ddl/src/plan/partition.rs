//! `ATTACH PARTITION` and `DETACH PARTITION` on a listed table (or a
//! partition of one). The partition's rows join or leave the table with no
//! row changes in the stream; the capture sends them after the command
//! (see `capture.sql`), and the plan says how the targets take them: a
//! target that keeps the source's partitioning gets the partition (created
//! empty, or its own empty table attached) and the rows as inserts, or runs
//! the DETACH; a target that keeps the table whole gets the rows as inserts
//! or deletes.

use pg_query::protobuf::{self, PartitionCmd};
use pg_query::NodeEnum;
use shardline_topology::TableName;

use super::{by_hand, literal, partitioned_sql, quoted, schema_of, short};
use super::{Ctx, Plan, Replay, Requirement, Step};
use crate::event::PartitionChange;

impl Ctx<'_> {
    pub(super) fn attach_partition(
        &self,
        s: &protobuf::AlterTableStmt,
        cmd: &protobuf::AlterTableCmd,
        table: &str,
    ) -> Result<(Vec<Step>, Replay), Plan> {
        let p = partition_cmd(cmd);
        let (part, change) = self.partition_change("attach", p, table)?;
        let child = change.partition.clone();
        let bound = p.and_then(|p| p.bound.clone());
        // Where the target keeps the partitioning: the partition, created
        // empty as the source's is attached (CREATE TABLE … PARTITION OF
        // the same bound), the rows inserted through the parent after.
        let mut create = self.on_table(table, self.partition_of(&child, table, bound)?);
        create.guard = Some(format!(
            "{} AND to_regclass({}) IS NULL",
            partitioned_sql(table),
            literal(&quoted(&child))
        ));
        create.skipped = Some(format!(
            "the target keeps {table} as one table: the rows of attached partition {child} are inserted into it"
        ));
        // A table of that name already there (left by an earlier DETACH):
        // attached as the source's was, if it holds nothing.
        let mut attach = self.on_table(table, self.one_command(s, cmd)?);
        attach.guard = Some(format!(
            "{} AND to_regclass({child_q}) IS NOT NULL AND NOT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = to_regclass({child_q}))",
            partitioned_sql(table),
            child_q = literal(&quoted(&child))
        ));
        attach.skipped = None;
        attach.require = Some(Requirement {
            check: format!("NOT EXISTS (SELECT 1 FROM {} LIMIT 1)", quoted(&child)),
            why: format!(
                "the source attached {child} to {table} with its rows, which cdc inserts; this target already has a table {child} holding rows, which the ATTACH would add to them"
            ),
            fix: format!(
                "empty it on this target (`TRUNCATE {}`; the source's rows follow), or drop it, then start cdc again",
                quoted(&child)
            ),
        });
        let replay = Replay {
            part,
            table: self.listed_table(table),
            delete: false,
            only_where: None,
        };
        Ok((vec![create, attach], replay))
    }

    /// The DETACH, and the rows that left the table. Without the capture's
    /// record of them, a target that keeps the table whole cannot follow.
    pub(super) fn detach_partition(
        &self,
        s: &protobuf::AlterTableStmt,
        cmd: &protobuf::AlterTableCmd,
        table: &str,
    ) -> Result<(Step, Option<Replay>), Plan> {
        let p = partition_cmd(cmd);
        // The target runs it in its transaction: the rows left the source's
        // table at this position.
        let mut cmd = cmd.clone();
        if let Some(NodeEnum::PartitionCmd(p)) =
            cmd.def.as_deref_mut().and_then(|d| d.node.as_mut())
        {
            p.concurrent = false;
        }
        let mut step = self.on_table(table, self.one_command(s, &cmd)?);
        match self.partition_change("detach", p, table) {
            Ok((part, change)) => {
                step.guard = Some(partitioned_sql(table));
                step.skipped = Some(format!(
                    "the target keeps {table} as one table: the rows of detached partition {} are deleted from it",
                    change.partition
                ));
                let replay = Replay {
                    part,
                    table: self.listed_table(table),
                    delete: true,
                    only_where: Some(format!("NOT {}", partitioned_sql(table))),
                };
                Ok((step, Some(replay)))
            }
            Err(_) => {
                let child = p
                    .and_then(|p| p.name.as_ref())
                    .map(|rv| super::statement::qualified(rv, &schema_of(table)))
                    .unwrap_or_default();
                // Checked on every target, the partition there or not.
                step.guard = None;
                step.require = Some(Requirement {
                    check: partitioned_sql(table),
                    why: format!("the source detached partition {child} from {table} and the capture did not record its rows (the source's capture is older than this shardline), but this target keeps {table} as one table and still holds those rows"),
                    fix: format!("delete those rows on this target, then run `shardline cdc skip-ddl {}` and start cdc again", self.c.id),
                });
                Ok((step, None))
            }
        }
    }

    /// The capture's record of the partition `op` moved, and its place.
    fn partition_change(
        &self,
        op: &str,
        p: Option<&PartitionCmd>,
        table: &str,
    ) -> Result<(usize, &PartitionChange), Plan> {
        let rv = p.and_then(|p| p.name.as_ref());
        let found = self.c.partitions.iter().enumerate().find(|(_, c)| {
            let Ok(name) = TableName::parse(&c.partition) else {
                return false;
            };
            c.op == op
                && c.parent == table
                && rv.is_some_and(|rv| {
                    rv.relname == name.name
                        && (rv.schemaname.is_empty() || rv.schemaname == name.schema)
                })
        });
        found.ok_or_else(|| Plan::Refuse {
            why: format!(
                "`{}` moves the rows of a partition into or out of listed table {table}, but the capture did not record them (the source's capture is older than this shardline, or was installed while the command ran)",
                short(&self.statement.text)
            ),
            fix: format!(
                "{op} the partition on the targets and copy or delete its rows there yourself, then run `shardline cdc skip-ddl {}` and start cdc again; `shardline cdc run` installs the newer capture",
                self.c.id
            ),
        })
    }

    /// The listed table `table` is, or is a partition of.
    fn listed_table(&self, table: &str) -> String {
        if (self.scope.listed)(table) {
            table.to_string()
        } else {
            self.parent(table).unwrap_or_else(|| table.to_string())
        }
    }

    /// `ALTER TABLE` with only this one command.
    fn one_command(
        &self,
        s: &protobuf::AlterTableStmt,
        cmd: &protobuf::AlterTableCmd,
    ) -> Result<String, Plan> {
        let mut one = s.clone();
        one.cmds = vec![protobuf::Node {
            node: Some(NodeEnum::AlterTableCmd(Box::new(cmd.clone()))),
        }];
        self.deparsed(NodeEnum::AlterTableStmt(one))
    }

    /// `CREATE TABLE child PARTITION OF parent <bound>`, both names
    /// qualified as the capture resolved them.
    fn partition_of(
        &self,
        child: &str,
        parent: &str,
        bound: Option<protobuf::PartitionBoundSpec>,
    ) -> Result<String, Plan> {
        let template = "CREATE TABLE c PARTITION OF p DEFAULT";
        let parsed = super::statement::split(template)
            .ok()
            .and_then(|mut v| v.pop())
            .map(|s| s.node);
        let (Some(NodeEnum::CreateStmt(mut create)), Some(bound)) = (parsed, bound) else {
            return Err(Plan::Refuse {
                why: format!(
                    "cannot read the partition bound of `{}`",
                    short(&self.statement.text)
                ),
                fix: by_hand(self.c.id),
            });
        };
        let range_var = |t: &str| {
            let name = TableName::parse(t).unwrap_or_else(|_| TableName::new("public", t));
            protobuf::RangeVar {
                schemaname: name.schema,
                relname: name.name,
                inh: true,
                relpersistence: "p".into(),
                location: -1,
                ..Default::default()
            }
        };
        create.relation = Some(range_var(child));
        create.inh_relations = vec![protobuf::Node {
            node: Some(NodeEnum::RangeVar(range_var(parent))),
        }];
        create.partbound = Some(bound);
        self.deparsed(NodeEnum::CreateStmt(create))
    }
}

fn partition_cmd(cmd: &protobuf::AlterTableCmd) -> Option<&PartitionCmd> {
    match cmd.def.as_deref().and_then(|d| d.node.as_ref()) {
        Some(NodeEnum::PartitionCmd(p)) => Some(p),
        _ => None,
    }
}
