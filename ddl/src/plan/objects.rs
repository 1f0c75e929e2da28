//! Commands on indexes, types, partitions and comments: where each runs
//! and under which guard.

use pg_query::protobuf::{self, ObjectType};
use pg_query::NodeEnum;
use shardline_topology::TableName;

use super::{identity_name, literal, partitioned_sql, quoted, short};
use super::{Changes, Ctx, Effect, Plan, Requirement, Step};

impl Ctx<'_> {
    pub(super) fn drop(&self, s: &protobuf::DropStmt) -> Result<Changes, Plan> {
        let dropped = || self.c.objects.iter().filter(|o| o.address.is_some());
        match ObjectType::try_from(s.remove_type).unwrap_or(ObjectType::Undefined) {
            ObjectType::ObjectIndex => {
                // (schema, name) of every listed table, for the guard.
                let listed = self
                    .scope
                    .listed_tables
                    .iter()
                    .filter_map(|t| TableName::parse(t).ok())
                    .map(|t| format!("({}, {})", literal(&t.schema), literal(&t.name)))
                    .collect::<Vec<_>>()
                    .join(", ");
                let mut steps = Vec::new();
                for o in dropped().filter(|o| o.kind == "index") {
                    let Some([schema, name]) = o.address.as_deref() else {
                        continue;
                    };
                    let index = TableName::new(schema, name).quoted();
                    let sql = format!(
                        "DROP INDEX {}IF EXISTS {index}",
                        if s.concurrent { "CONCURRENTLY " } else { "" }
                    );
                    // Only an index of a listed table (or of a partition of
                    // one) is the source's.
                    let guard = format!(
                        "EXISTS (SELECT 1 FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid
                                  JOIN pg_namespace n ON n.oid = t.relnamespace
                                  LEFT JOIN pg_inherits h ON h.inhrelid = t.oid
                                  LEFT JOIN pg_class p ON p.oid = h.inhparent
                                  LEFT JOIN pg_namespace pn ON pn.oid = p.relnamespace
                                 WHERE i.indexrelid = to_regclass({})
                                   AND ((n.nspname, t.relname) IN (VALUES {listed})
                                     OR (pn.nspname, p.relname) IN (VALUES {listed})))",
                        literal(&index)
                    );
                    let mut step = Step::everywhere(sql, guard);
                    step.concurrent = s.concurrent;
                    steps.push(step);
                }
                Ok(Changes {
                    steps,
                    ..Changes::default()
                })
            }
            ObjectType::ObjectTable | ObjectType::ObjectForeignTable => {
                let mut changes = Changes::default();
                for o in dropped().filter(|o| o.kind == "table") {
                    let Some(t) = o.table.clone() else { continue };
                    if (self.scope.listed)(&t) {
                        return Err(Plan::Refuse {
                            why: format!("`{}` drops listed table {t}, which the topology names", short(&self.statement.text)),
                            fix: format!("remove {t} from the topology and drop it on the targets yourself, then run `shardline cdc skip-ddl {}` and start cdc again", self.c.id),
                        });
                    }
                    let Some(parent) = (self.scope.parent_of)(&t) else {
                        continue;
                    };
                    // A partition dropped (retention): its rows leave the
                    // source without a delete in the stream. A target that
                    // keeps the partitioning drops it too; one that holds the
                    // table whole would keep those rows.
                    let mut step =
                        Step::on(&parent, format!("DROP TABLE IF EXISTS {}", quoted(&t)));
                    step.require = Some(Requirement {
                        check: partitioned_sql(&parent),
                        why: format!("the source dropped partition {t} of {parent} (its rows left without deletes in the stream), but this target keeps {parent} as one table and still holds those rows"),
                        fix: format!("delete those rows on this target, then run `shardline cdc skip-ddl {}` and start cdc again", self.c.id),
                    });
                    changes.tables.push(parent.clone());
                    changes.steps.push(step);
                }
                Ok(changes)
            }
            ObjectType::ObjectType | ObjectType::ObjectDomain => {
                let mut node = s.clone();
                node.missing_ok = true;
                let sql = self.deparsed(NodeEnum::DropStmt(node))?;
                let mut changes = Changes {
                    steps: vec![Step::everywhere(sql, "true".into())],
                    ..Changes::default()
                };
                // CASCADE drops the columns of that type.
                for o in dropped().filter(|o| o.kind == "table column") {
                    if let (Some(t), Some(a)) = (&o.table, &o.address) {
                        if (self.scope.listed)(t) {
                            changes.effects.push(Effect::Dropped {
                                table: t.clone(),
                                column: a.last().cloned().unwrap_or_default(),
                            });
                            changes.tables.push(t.clone());
                        }
                    }
                }
                Ok(changes)
            }
            _ => Err(Plan::Ignore(format!(
                "{} touches no listed table",
                self.c.tag
            ))),
        }
    }

    /// The type a type command names, `schema.name`, from the capture.
    fn type_name(&self) -> Option<(String, String)> {
        self.c
            .objects
            .iter()
            .find(|o| o.kind == "type" || o.kind == "domain")
            .and_then(|o| {
                let schema = o.schema.clone()?;
                let name = identity_name(o.identity.as_deref()?, &schema);
                Some((schema, name))
            })
    }

    pub(super) fn alter_enum(&self, s: &protobuf::AlterEnumStmt) -> Result<Changes, Plan> {
        let mut node = s.clone();
        let adds = !s.new_val.is_empty() && s.old_val.is_empty();
        if adds {
            node.skip_if_new_val_exists = true;
        }
        let sql = if adds && !s.skip_if_new_val_exists {
            self.deparsed(NodeEnum::AlterEnumStmt(node))?
        } else {
            self.statement.text.clone()
        };
        let mut changes = self.alter_type()?;
        changes.steps[0].sql = sql;
        changes.ends_group = adds;
        Ok(changes)
    }

    /// A change of an existing type: where the type exists.
    pub(super) fn alter_type(&self) -> Result<Changes, Plan> {
        let (schema, name) = self.type_name().ok_or_else(|| {
            self.refuse(format!(
                "the capture did not say which type {} changed",
                self.c.tag
            ))
        })?;
        let guard = format!(
            "to_regtype({}) IS NOT NULL",
            literal(&TableName::new(&schema, &name).quoted())
        );
        Ok(Changes {
            steps: vec![Step::everywhere(self.statement.text.clone(), guard)],
            ..Changes::default()
        })
    }

    /// A new type: on every target that has its schema (a listed table may
    /// soon use it), unless it is there already.
    pub(super) fn create_type(&self) -> Result<Changes, Plan> {
        let (schema, name) = self.type_name().ok_or_else(|| {
            self.refuse(format!(
                "the capture did not say which type {} created",
                self.c.tag
            ))
        })?;
        let guard = format!(
            "to_regnamespace({}) IS NOT NULL AND to_regtype({}) IS NULL",
            literal(&shardline_topology::quote_ident(&schema)),
            literal(&TableName::new(&schema, &name).quoted())
        );
        Ok(Changes {
            steps: vec![Step::everywhere(self.statement.text.clone(), guard)],
            ..Changes::default()
        })
    }

    /// `CREATE TABLE … PARTITION OF` a listed table.
    pub(super) fn partition(&self, s: &protobuf::CreateStmt, table: &str) -> Result<Changes, Plan> {
        if let Some(rv) = &s.relation {
            self.same_table(rv, table)?;
        }
        let Some(parent) = self.parent(table) else {
            return Err(Plan::Ignore(format!(
                "{table} is not a partition of a listed table"
            )));
        };
        let mut step = Step::on(&parent, self.statement.text.clone());
        step.guard = Some(format!(
            "{} AND to_regclass({}) IS NULL",
            partitioned_sql(&parent),
            literal(&quoted(table))
        ));
        step.skipped = Some(format!(
            "the target keeps {parent} as one table: partition {table} is not created there"
        ));
        Ok(self.changes(&parent, vec![step]))
    }

    pub(super) fn comment(&self, s: &protobuf::CommentStmt, table: &str) -> Result<Changes, Plan> {
        match ObjectType::try_from(s.objtype).unwrap_or(ObjectType::Undefined) {
            ObjectType::ObjectTable | ObjectType::ObjectColumn | ObjectType::ObjectIndex => {
                let mut step = self.on_table(table, self.statement.text.clone());
                if ObjectType::try_from(s.objtype) == Ok(ObjectType::ObjectIndex) {
                    step.guard = self
                        .c
                        .objects
                        .iter()
                        .find(|o| o.kind == "index")
                        .and_then(|o| o.identity.as_deref())
                        .map(|i| format!("to_regclass({}) IS NOT NULL", literal(i)));
                }
                Ok(self.changes(table, vec![step]))
            }
            _ => Err(Plan::Ignore(format!(
                "{} of this kind is not carried",
                self.c.tag
            ))),
        }
    }
}
