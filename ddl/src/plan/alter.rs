//! `ALTER TABLE` on a listed table (or a partition of one), subcommand by
//! subcommand: carried as the source ran it, carried in a form the target
//! can reproduce, left out (with a note), or refused.

use pg_query::protobuf::{self, AlterTableType as At, ConstrType};
use pg_query::NodeEnum;

use super::{constant, constraint_type, literal, quoted, short, subtype};
use super::{Changes, Ctx, Effect, Plan, Requirement, Step};

/// Serial pseudo-types: a column of one gets a sequence default.
const SERIALS: &[&str] = &[
    "serial",
    "bigserial",
    "smallserial",
    "serial2",
    "serial4",
    "serial8",
];

impl Ctx<'_> {
    pub(super) fn alter_table(
        &self,
        s: &protobuf::AlterTableStmt,
        table: &str,
    ) -> Result<Changes, Plan> {
        if let Some(rv) = &s.relation {
            self.same_table(rv, table)?;
        }
        let mut node = s.clone();
        let mut kept = Vec::new();
        let mut before = Vec::new();
        let mut after = Vec::new();
        let mut changes = self.changes(table, Vec::new());
        let mut edited = false;
        for cmd_node in &s.cmds {
            let Some(NodeEnum::AlterTableCmd(cmd)) = &cmd_node.node else {
                continue;
            };
            let mut cmd = cmd.clone();
            match subtype(&cmd) {
                At::AtAddColumn => {
                    let Some(NodeEnum::ColumnDef(def)) =
                        cmd.def.as_deref().and_then(|d| d.node.clone())
                    else {
                        continue;
                    };
                    let (def, extra, guard, stripped) = self.add_column(*def, table)?;
                    edited |= extra.is_some() || stripped;
                    if let Some(g) = guard {
                        before.push(g);
                    }
                    cmd.def = Some(Box::new(protobuf::Node {
                        node: Some(NodeEnum::ColumnDef(Box::new(def))),
                    }));
                    kept.push(cmd);
                    if let Some(set_default) = extra {
                        kept.push(Box::new(set_default));
                    }
                }
                At::AtDropColumn => {
                    changes.effects.push(Effect::Dropped {
                        table: table.to_string(),
                        column: cmd.name.clone(),
                    });
                    kept.push(cmd);
                }
                At::AtAlterColumnType => {
                    changes.effects.push(Effect::Retyped {
                        table: table.to_string(),
                        column: cmd.name.clone(),
                    });
                    kept.push(cmd);
                }
                At::AtAddConstraint => {
                    let fk = match cmd.def.as_deref().and_then(|d| d.node.as_ref()) {
                        Some(NodeEnum::Constraint(c))
                            if constraint_type(c) == ConstrType::ConstrForeign =>
                        {
                            c.pktable.clone()
                        }
                        _ => None,
                    };
                    match fk {
                        Some(rv) if !self.fk_holds(table, &rv) => {
                            changes.notes.push(self.fk_note(table, &rv));
                            edited = true;
                        }
                        _ => kept.push(cmd),
                    }
                }
                At::AtDropConstraint => {
                    // The target may not hold it (a foreign key left out).
                    edited |= !cmd.missing_ok;
                    cmd.missing_ok = true;
                    kept.push(cmd);
                }
                At::AtValidateConstraint => {
                    // Only where the constraint was carried.
                    let mut one = s.clone();
                    one.cmds = vec![protobuf::Node {
                        node: Some(NodeEnum::AlterTableCmd(cmd.clone())),
                    }];
                    let mut step =
                        self.on_table(table, self.deparsed(NodeEnum::AlterTableStmt(one))?);
                    step.guard = Some(format!(
                        "EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass({}) AND conname = {})",
                        literal(&quoted(table)),
                        literal(&cmd.name)
                    ));
                    after.push(step);
                    edited = true;
                }
                At::AtColumnDefault
                | At::AtDropNotNull
                | At::AtSetNotNull
                | At::AtSetStatistics
                | At::AtSetOptions
                | At::AtResetOptions
                | At::AtSetStorage
                | At::AtSetCompression
                | At::AtAlterConstraint
                | At::AtDropExpression
                | At::AtSetExpression
                | At::AtAddIdentity
                | At::AtSetIdentity
                | At::AtDropIdentity
                | At::AtSetRelOptions
                | At::AtResetRelOptions
                | At::AtReplaceRelOptions
                | At::AtReplicaIdentity
                | At::AtEnableRowSecurity
                | At::AtDisableRowSecurity
                | At::AtForceRowSecurity
                | At::AtNoForceRowSecurity
                | At::AtClusterOn
                | At::AtDropCluster
                | At::AtAddIndexConstraint => kept.push(cmd),
                At::AtChangeOwner
                | At::AtSetTableSpace
                | At::AtSetAccessMethod
                | At::AtSetLogged
                | At::AtSetUnLogged
                | At::AtEnableTrig
                | At::AtEnableAlwaysTrig
                | At::AtEnableReplicaTrig
                | At::AtDisableTrig
                | At::AtEnableTrigAll
                | At::AtDisableTrigAll
                | At::AtEnableTrigUser
                | At::AtDisableTrigUser
                | At::AtEnableRule
                | At::AtEnableAlwaysRule
                | At::AtEnableReplicaRule
                | At::AtDisableRule
                | At::AtGenericOptions
                | At::AtAlterColumnGenericOptions
                | At::AtDropOids => {
                    changes.notes.push(format!(
                        "{table}: {} stays on the source (owners, storage and triggers belong to each database)",
                        subtype(&cmd).as_str_name()
                    ));
                    edited = true;
                }
                At::AtDetachPartition | At::AtDetachPartitionFinalize => {
                    let (step, replay) = self.detach_partition(s, &cmd, table)?;
                    after.push(step);
                    changes.replays.extend(replay);
                    edited = true;
                }
                At::AtAttachPartition => {
                    let (steps, replay) = self.attach_partition(s, &cmd, table)?;
                    after.extend(steps);
                    changes.replays.push(replay);
                    edited = true;
                }
                At::AtAddInherit | At::AtDropInherit | At::AtAddOf | At::AtDropOf => {
                    return Err(self.refuse(format!(
                        "`{}` changes which rows listed table {table} shows, which the stream does not carry",
                        short(&self.statement.text)
                    )));
                }
                other => {
                    return Err(self.refuse(format!(
                        "shardline does not carry ALTER TABLE {} ({}) on listed table {table} yet",
                        table,
                        other.as_str_name()
                    )));
                }
            }
        }
        let mut steps = before;
        if !kept.is_empty() {
            let sql = if edited {
                node.cmds = kept
                    .into_iter()
                    .map(|c| protobuf::Node {
                        node: Some(NodeEnum::AlterTableCmd(c)),
                    })
                    .collect();
                self.deparsed(NodeEnum::AlterTableStmt(node))?
            } else {
                self.statement.text.clone()
            };
            steps.push(self.on_table(table, sql));
        }
        steps.extend(after);
        changes.steps = steps;
        Ok(changes)
    }

    /// An added column as the target must add it. A non-constant default
    /// (`now()`) gave the rows that existed one value on the source,
    /// recorded by the capture: the target adds the column with that value
    /// as its default, then sets the real default (`extra`). A default that
    /// gave each row its own value (volatile, identity, serial) cannot be
    /// reproduced where rows exist: a guard step stops cdc on such a target.
    #[allow(clippy::type_complexity)]
    fn add_column(
        &self,
        mut def: protobuf::ColumnDef,
        table: &str,
    ) -> Result<
        (
            protobuf::ColumnDef,
            Option<protobuf::AlterTableCmd>,
            Option<Step>,
            bool,
        ),
        Plan,
    > {
        let mut stripped = false;
        let mut constraints = Vec::new();
        for c in std::mem::take(&mut def.constraints) {
            if let Some(NodeEnum::Constraint(k)) = &c.node {
                if constraint_type(k) == ConstrType::ConstrForeign {
                    if let Some(rv) = &k.pktable {
                        if !self.fk_holds(table, rv) {
                            stripped = true;
                            continue;
                        }
                    }
                }
            }
            constraints.push(c);
        }
        def.constraints = constraints;
        let default_at = def.constraints.iter().position(|c| {
            matches!(&c.node, Some(NodeEnum::Constraint(k)) if constraint_type(k) == ConstrType::ConstrDefault)
        });
        let identity = def.constraints.iter().any(|c| {
            matches!(&c.node, Some(NodeEnum::Constraint(k)) if constraint_type(k) == ConstrType::ConstrIdentity)
        }) || !def.identity.is_empty();
        let serial = def
            .type_name
            .as_ref()
            .and_then(|t| super::statement::names(&t.names).last().cloned())
            .is_some_and(|n| SERIALS.contains(&n.as_str()));
        let expr = default_at.and_then(|i| match &def.constraints[i].node {
            Some(NodeEnum::Constraint(k)) => k.raw_expr.as_deref().cloned(),
            _ => None,
        });
        if !identity && !serial && constant(expr.as_ref()) {
            return Ok((def, None, None, stripped));
        }
        let column = self.c.table(table).and_then(|t| t.column(&def.colname));
        if let (false, false, Some(i), Some(missing), Some(expr)) = (
            identity,
            serial,
            default_at,
            column.and_then(|c| c.missing.clone()),
            expr.clone(),
        ) {
            let cast = protobuf::Node {
                node: Some(NodeEnum::TypeCast(Box::new(protobuf::TypeCast {
                    arg: Some(Box::new(protobuf::Node {
                        node: Some(NodeEnum::AConst(protobuf::AConst {
                            isnull: false,
                            location: -1,
                            val: Some(protobuf::a_const::Val::Sval(protobuf::String {
                                sval: missing,
                            })),
                        })),
                    })),
                    type_name: def.type_name.clone(),
                    location: -1,
                }))),
            };
            if let Some(NodeEnum::Constraint(k)) = def.constraints[i].node.as_mut() {
                k.raw_expr = Some(Box::new(cast));
            }
            let set_default = protobuf::AlterTableCmd {
                subtype: At::AtColumnDefault as i32,
                name: def.colname.clone(),
                def: Some(Box::new(expr)),
                behavior: protobuf::DropBehavior::DropRestrict as i32,
                ..Default::default()
            };
            return Ok((def, Some(set_default), None, stripped));
        }
        let what = if identity {
            "an identity".to_string()
        } else if serial {
            "a serial".to_string()
        } else {
            format!(
                "a default ({}) that",
                expr.as_ref()
                    .and_then(expr_sql)
                    .unwrap_or_else(|| "an expression".into())
            )
        };
        let mut guard = Step::on(table, String::new());
        guard.require = Some(Requirement {
            check: format!("NOT EXISTS (SELECT 1 FROM {} LIMIT 1)", quoted(table)),
            why: format!(
                "ADD COLUMN {} on {table} has {what} gave every existing row its own value on the source; this target holds rows, which would get other values",
                def.colname
            ),
            fix: format!(
                "add the column on the targets yourself and copy its values from the source, then run `shardline cdc skip-ddl {}` and start cdc again (or copy everything again: `shardline backfill --restart`)",
                self.c.id
            ),
        });
        Ok((def, None, Some(guard), stripped))
    }

    /// Whether a foreign key from `table` to `rv` can hold on the targets.
    fn fk_holds(&self, table: &str, rv: &protobuf::RangeVar) -> bool {
        let referenced = super::statement::qualified(rv, &super::schema_of(table));
        (self.scope.listed)(&referenced) && (self.scope.colocated)(table, &referenced)
    }

    fn fk_note(&self, table: &str, rv: &protobuf::RangeVar) -> String {
        format!(
            "{table}: the foreign key to {} stays on the source (the referenced rows are not on the same target)",
            rv.relname
        )
    }
}

/// An expression as SQL text (deparsed as the one item of a SELECT).
fn expr_sql(expr: &protobuf::Node) -> Option<String> {
    let select = protobuf::SelectStmt {
        target_list: vec![protobuf::Node {
            node: Some(NodeEnum::ResTarget(Box::new(protobuf::ResTarget {
                val: Some(Box::new(expr.clone())),
                location: -1,
                ..Default::default()
            }))),
        }],
        limit_option: protobuf::LimitOption::Default as i32,
        op: protobuf::SetOperation::SetopNone as i32,
        ..Default::default()
    };
    let sql = NodeEnum::SelectStmt(Box::new(select)).deparse().ok()?;
    Some(sql.strip_prefix("SELECT ").unwrap_or(&sql).to_string())
}
