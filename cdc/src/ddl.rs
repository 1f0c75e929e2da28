//! Schema changes in the stream: a row of `shardline.ddl_log` (written on
//! the source by the DDL capture, see the `shardline-ddl` crate) meets cdc
//! at its exact position in its source transaction. [`SchemaStream::meet`]
//! plans it and says what each target must run; the applier runs it in the
//! target transaction that carries the progress mark, before the rows that
//! follow it, so a crash neither loses nor repeats it.
//!
//! Changes that targets cannot follow stop cdc here with the statement,
//! why, and the fix; so do changes that read models or the shard key
//! cannot follow (a column they name dropped, renamed or retyped).
//! `shardline cdc skip-ddl ID` records that an operator carried a change by
//! hand: cdc then passes over it.

use std::collections::HashMap;

use shardline_ddl::{plan, Captured, Effect, Event, Plan, Scope, Step, Where};
use shardline_topology::{ReadModel, TableName, Topology};
use tokio_postgres::Client;

use crate::change::Tables;
use crate::pgoutput::{ColumnValue, LogicalMessage, Relation, TupleData};
use crate::readmodel::Refresher;
use crate::route::{Routes, TableRoute};
use crate::run::CdcError;

mod replay;
mod target;

/// What one target runs for one captured command.
#[derive(Clone, Debug)]
pub struct TargetDdl {
    /// The log row's id (what `cdc skip-ddl` names).
    pub id: i64,
    /// The source's statement, for messages.
    pub statement: String,
    /// The source session's search_path: names resolve as they did there.
    pub search_path: String,
    pub steps: Vec<Step>,
    /// Commit the target transaction at the end of this source transaction.
    pub ends_group: bool,
    /// The partition changes whose rows follow (`part`), each with the
    /// condition a target must meet to take them.
    pub replays: Vec<(usize, Option<String>)>,
}

/// The source's schema as far as the stream has shown it.
pub struct SchemaStream {
    capture: bool,
    listed: Vec<String>,
    /// Partitions of listed tables: child → parent, `schema.name`.
    partitions: HashMap<String, String>,
    read_models: Vec<ReadModel>,
    /// Read models kept change by change (their casts follow the source
    /// columns' types as cdc started).
    incremental: Vec<String>,
    /// The log table as this stream described it.
    log_relation: Option<Relation>,
    /// The rows the last carried command said follow it.
    expected: Option<replay::Expected>,
}

/// Lists the partitions of partitioned tables on the source.
const PARTITIONS_SQL: &str =
    "SELECT n.nspname::text, c.relname::text, pn.nspname::text, p.relname::text
   FROM pg_inherits i
   JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_namespace n ON n.oid = c.relnamespace
   JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace pn ON pn.oid = p.relnamespace
  WHERE p.relkind = 'p'";

impl SchemaStream {
    pub async fn new(
        source: &Client,
        topology: &Topology,
        routes: &Routes,
        incremental: &[&str],
    ) -> Result<Self, tokio_postgres::Error> {
        let mut listed: Vec<String> = routes.tables().map(|(t, _)| t.to_string()).collect();
        listed.sort();
        let partitions = source
            .query(PARTITIONS_SQL, &[])
            .await?
            .iter()
            .map(|r| {
                let child = TableName::new(r.get::<_, String>(0), r.get::<_, String>(1));
                let parent = TableName::new(r.get::<_, String>(2), r.get::<_, String>(3));
                (child.to_string(), parent.to_string())
            })
            .filter(|(_, parent)| listed.contains(parent))
            .collect();
        Ok(Self {
            capture: routes.ddl_capture,
            listed,
            partitions,
            read_models: topology.read_models.clone(),
            incremental: incremental.iter().map(|s| s.to_string()).collect(),
            log_relation: None,
            expected: None,
        })
    }

    /// Notes the log table's Relation message; false for any other table.
    pub fn describe(&mut self, relation: &Relation) -> bool {
        let is_log = relation.namespace == shardline_ddl::capture::LOG_SCHEMA
            && relation.name == shardline_ddl::capture::LOG_NAME;
        if is_log {
            self.log_relation = Some(relation.clone());
        }
        is_log
    }

    pub fn is_log(&self, relation: u32) -> bool {
        self.log_relation.as_ref().is_some_and(|r| r.id == relation)
    }

    /// The captured command a message carries (an insert into the log).
    pub fn log_row(&self, message: &LogicalMessage) -> Result<Option<Captured>, CdcError> {
        match (message, &self.log_relation) {
            (LogicalMessage::Insert { relation, new }, Some(log)) if *relation == log.id => {
                Self::captured(log, new).map(Some)
            }
            _ => Ok(None),
        }
    }

    fn captured(relation: &Relation, tuple: &TupleData) -> Result<Captured, CdcError> {
        let value = |name: &str| {
            let i = relation.columns.iter().position(|c| c.name == name)?;
            match tuple.0.get(i)? {
                ColumnValue::Text(b) | ColumnValue::Binary(b) => std::str::from_utf8(b).ok(),
                _ => None,
            }
        };
        Captured::from_row(value).map_err(|e| CdcError::Stream(e.to_string()))
    }

    /// What each target must run for a captured command (none when it
    /// concerns no listed table, or a target already has it).
    pub async fn meet(
        &mut self,
        c: &Captured,
        at: Context<'_>,
        tables: &mut Tables,
        refresher: &mut Refresher,
    ) -> Result<Vec<(usize, TargetDdl)>, CdcError> {
        self.expected = None;
        if !self.capture {
            return Ok(Vec::new());
        }
        // A command that drops something and is not a DROP (ALTER TABLE …
        // DROP COLUMN) is planned from its ddl_command_end row.
        if c.event == Event::Drop && !c.tag.starts_with("DROP ") {
            return Ok(Vec::new());
        }
        let routes = at.routes;
        let route = |t: &str| TableName::parse(t).ok().and_then(|t| routes.route_of(&t));
        let listed = |t: &str| route(t).is_some();
        let parent_of = |t: &str| self.partitions.get(t).cloned();
        let colocated = |a: &str, b: &str| {
            let (Some(ra), Some(rb)) = (route(a), route(b)) else {
                return false;
            };
            let on_b = rb.targets();
            ra.targets().iter().all(|t| on_b.contains(t))
        };
        let scope = Scope {
            listed: &listed,
            parent_of: &parent_of,
            colocated: &colocated,
            listed_tables: &self.listed,
        };
        let planned = plan(c, &scope);
        let statement = statement_of(c);
        let changes = match planned {
            Plan::Ignore(why) => {
                tracing::info!(ddl = c.id, tag = %c.tag, "schema change not carried: {why}");
                return Ok(Vec::new());
            }
            Plan::Refuse { why, fix } => {
                if self.skipped(c, at.source).await? {
                    return Ok(Vec::new());
                }
                return Err(CdcError::Ddl {
                    id: c.id,
                    statement,
                    why,
                    fix,
                });
            }
            Plan::Apply(changes) => changes,
        };
        if self.skipped(c, at.source).await? {
            return Ok(Vec::new());
        }
        for note in &changes.notes {
            tracing::info!(ddl = c.id, "{note}");
        }
        for effect in &changes.effects {
            self.follow(effect, c, &statement, routes, refresher)?;
        }
        for t in changes.tables.iter().chain(
            c.tables
                .iter()
                .map(|t| t.qualified())
                .collect::<Vec<_>>()
                .iter(),
        ) {
            tables.expect_change(t);
        }
        for t in &c.tables {
            tables.set_primary_key(&t.qualified(), t.primary_key.clone());
            if let Some(parent) = t.parent.as_ref().filter(|p| listed(p)) {
                self.partitions.insert(t.qualified(), parent.clone());
            }
        }
        let mut per_target: Vec<(usize, TargetDdl)> = Vec::new();
        for step in changes.steps {
            let targets: Vec<usize> = match &step.at {
                Where::Table(t) => {
                    if (at.copied_after)(t) {
                        continue;
                    }
                    route(t).map(TableRoute::targets).unwrap_or_default()
                }
                Where::Everywhere => (0..routes.targets.len()).collect(),
            };
            for target in targets.into_iter().filter(|t| (at.wanted)(*t)) {
                match per_target.iter_mut().find(|(t, _)| *t == target) {
                    Some((_, d)) => d.steps.push(step.clone()),
                    None => per_target.push((
                        target,
                        TargetDdl {
                            id: c.id,
                            statement: statement.clone(),
                            search_path: c.search_path.clone(),
                            steps: vec![step.clone()],
                            ends_group: changes.ends_group,
                            replays: Vec::new(),
                        },
                    )),
                }
            }
        }
        self.expect_rows(c, &changes.replays, &at, tables, &mut per_target)?;
        tracing::info!(ddl = c.id, %statement, targets = per_target.len(), "schema change carried");
        Ok(per_target)
    }

    /// Notes the rows that follow the command (a partition attached or
    /// detached), and tells every target of their table whether it takes
    /// them; partitions attached become known as the table's.
    fn expect_rows(
        &mut self,
        c: &Captured,
        replays: &[shardline_ddl::Replay],
        at: &Context<'_>,
        tables: &Tables,
        per_target: &mut Vec<(usize, TargetDdl)>,
    ) -> Result<(), CdcError> {
        if replays.is_empty() {
            return Ok(());
        }
        for r in replays {
            if let Some(change) = c.partitions.get(r.part) {
                if r.delete {
                    self.partitions.remove(&change.partition);
                } else {
                    self.partitions
                        .insert(change.partition.clone(), r.table.clone());
                }
            }
            let route = TableName::parse(&r.table)
                .ok()
                .and_then(|t| at.routes.route_of(&t));
            if (at.copied_after)(&r.table) {
                continue;
            }
            let targets = route.map(TableRoute::targets).unwrap_or_default();
            for target in targets.into_iter().filter(|t| (at.wanted)(*t)) {
                let replay = (r.part, r.only_where.clone());
                match per_target.iter_mut().find(|(t, _)| *t == target) {
                    Some((_, d)) => d.replays.push(replay),
                    None => per_target.push((
                        target,
                        TargetDdl {
                            id: c.id,
                            statement: statement_of(c),
                            search_path: c.search_path.clone(),
                            steps: Vec::new(),
                            ends_group: false,
                            replays: vec![replay],
                        },
                    )),
                }
            }
        }
        self.expected = Some(replay::Expected::new(c, replays, tables, at.routes)?);
        Ok(())
    }

    /// The row change a partition's row message stands for, and the one
    /// table it is planned on; `None` when no carried command expects it.
    pub fn replayed_row(
        &self,
        content: &bytes::Bytes,
    ) -> Result<Option<replay::Replayed<'_>>, CdcError> {
        match &self.expected {
            Some(e) => e.row(content),
            None => Ok(None),
        }
    }

    /// For a sink that passes changes on as they are (no targets): the
    /// rows of every partition the command attached to or detached from a
    /// listed table follow as its inserts or deletes.
    pub fn expect_all(
        &mut self,
        c: &Captured,
        tables: &Tables,
        routes: &Routes,
    ) -> Result<(), CdcError> {
        self.expected = None;
        let listed = |t: &str| {
            TableName::parse(t)
                .ok()
                .and_then(|t| routes.route_of(&t))
                .is_some()
        };
        let replays: Vec<shardline_ddl::Replay> = c
            .partitions
            .iter()
            .enumerate()
            .filter(|(_, p)| p.op == "attach" || p.op == "detach")
            .filter_map(|(part, p)| {
                let table = if listed(&p.parent) {
                    p.parent.clone()
                } else {
                    self.partitions.get(&p.parent).cloned()?
                };
                Some(shardline_ddl::Replay {
                    part,
                    table,
                    delete: p.op == "detach",
                    only_where: None,
                })
            })
            .collect();
        if !replays.is_empty() {
            self.expected = Some(replay::Expected::new(c, &replays, tables, routes)?);
        }
        Ok(())
    }

    /// Stops cdc when a change takes away what the shard key or a read
    /// model names; recomputes a read model whose column changed type.
    fn follow(
        &self,
        effect: &Effect,
        c: &Captured,
        statement: &str,
        routes: &Routes,
        refresher: &mut Refresher,
    ) -> Result<(), CdcError> {
        let (table, column) = (effect.table(), effect.column());
        let route = TableName::parse(table).ok();
        if let Some(TableRoute::Sharded { key_column, .. }) =
            route.as_ref().and_then(|t| routes.route_of(t))
        {
            if key_column == column {
                return Err(CdcError::Ddl {
                    id: c.id,
                    statement: statement.to_string(),
                    why: format!(
                        "it {} {column}, the shard key of {table}, which places every row",
                        effect.verb()
                    ),
                    fix: shardline_ddl::plan::by_hand(c.id),
                });
            }
        }
        for rm in self
            .read_models
            .iter()
            .filter(|rm| rm.from.to_string() == table)
        {
            let texts = rm
                .filter
                .iter()
                .chain(&rm.group_by)
                .chain(&rm.aggregates)
                .map(String::as_str);
            let named = !crate::delta::referenced_columns(
                texts,
                &rm.from,
                vec![(column.to_string(), String::new())],
            )
            .is_empty();
            if !named {
                continue;
            }
            let incremental = self.incremental.contains(&rm.name);
            match effect {
                Effect::Retyped { .. } if !incremental => {
                    // Recomputed from the source with the new type.
                    refresher.touch(table);
                    tracing::info!(read_model = %rm.name, ddl = c.id, "read model recomputed: a column it names changed type");
                }
                _ => {
                    let follow = match effect {
                        Effect::Renamed { to, .. } => format!("so it names {to} instead"),
                        _ => format!("so it no longer names {column}"),
                    };
                    return Err(CdcError::Ddl {
                        id: c.id,
                        statement: statement.to_string(),
                        why: format!(
                            "read model {} names column {column} of {table}, which it {}{}",
                            rm.name,
                            effect.verb(),
                            if incremental { " (the read model is kept change by change, with the column's old type)" } else { "" }
                        ),
                        fix: format!(
                            "edit read model {} in the topology {follow}, then start cdc again; if the read model's columns or values change, copy it again with `shardline backfill --restart`",
                            rm.name
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    async fn skipped(&self, c: &Captured, source: &Client) -> Result<bool, CdcError> {
        let skipped = shardline_ddl::capture::skipped(source, c.id)
            .await
            .map_err(|e| CdcError::Query {
                target: "source".into(),
                cause: shardline_topology::describe_pg_error(&e),
                lost: shardline_topology::pgerror::is_connection_lost(&e),
            })?;
        if skipped {
            tracing::warn!(ddl = c.id, tag = %c.tag, "schema change passed over: an operator carried it by hand (cdc skip-ddl)");
        }
        Ok(skipped)
    }
}

/// Where in the stream a captured command is met.
pub struct Context<'a> {
    pub routes: &'a Routes,
    pub source: &'a Client,
    /// Whether a target still needs this source transaction.
    pub wanted: &'a (dyn Fn(usize) -> bool + Sync),
    /// Whether backfill copied a table after this point (its copy already
    /// holds the change).
    pub copied_after: &'a (dyn Fn(&str) -> bool + Sync),
}

/// The source's statement for messages: the one the command came from, or
/// the whole query when it cannot be told.
pub fn statement_of(c: &Captured) -> String {
    shardline_ddl::statement::locate(&c.query, &c.tag, c.ordinal)
        .map(|s| s.text)
        .unwrap_or_else(|_| shardline_ddl::plan::short(&c.query))
}
