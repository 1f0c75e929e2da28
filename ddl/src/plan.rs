//! What a captured DDL command means for the targets: statements to run
//! where the changed table lives, nothing (a table the topology does not
//! list), or a refusal that names what would go wrong.
//!
//! Pure code: the captured row ([`Captured`]) and what the topology lists
//! ([`Scope`]) in, a [`Plan`] out. The statement is the source's own text
//! where it can be, so a target runs exactly what the source ran; it is
//! rewritten (through PostgreSQL's grammar) only to name what the source
//! named implicitly (an index's generated name), to give existing rows the
//! value the source gave them, to be idempotent, or to leave out what a
//! target does not carry (owners, tablespaces, triggers, foreign keys to
//! tables elsewhere).

use pg_query::protobuf::{self, AlterTableType, ConstrType, ObjectType};
use pg_query::NodeEnum;

use shardline_topology::TableName;

use crate::event::{Captured, Event};
use crate::statement::{self, Statement};

mod alter;
mod objects;
mod partition;

/// What the topology lists, as the planner asks it.
pub struct Scope<'a> {
    /// Whether `schema.name` is a table the topology lists.
    pub listed: &'a (dyn Fn(&str) -> bool + Sync),
    /// The listed partitioned table that `schema.name` is a partition of.
    pub parent_of: &'a (dyn Fn(&str) -> Option<String> + Sync),
    /// Whether rows of the second table live on every target of the first
    /// (a foreign key between them can hold there).
    pub colocated: &'a (dyn Fn(&str, &str) -> bool + Sync),
    /// Every listed table, `schema.name`.
    pub listed_tables: &'a [String],
}

/// Where a step runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Where {
    /// On every target of this listed table (`schema.name`).
    Table(String),
    /// On every target (types, which any table there may use).
    Everywhere,
}

/// One statement for the targets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub at: Where,
    pub sql: String,
    /// A boolean SQL expression evaluated on the target first: the step
    /// runs only where it holds.
    pub guard: Option<String>,
    /// Said in the log where the guard does not hold.
    pub skipped: Option<String>,
    /// What must hold on the target where the guard holds, else cdc stops
    /// there (the target cannot follow the source).
    pub require: Option<Requirement>,
    /// Cannot run in a transaction (`CONCURRENTLY`): runs after the
    /// target transaction that carries the progress mark commits.
    pub concurrent: bool,
    /// The index a concurrent step builds: one left invalid by a failed
    /// try is dropped first.
    pub index: Option<String>,
}

impl Step {
    fn on(table: &str, sql: String) -> Self {
        Self {
            at: Where::Table(table.to_string()),
            sql,
            guard: None,
            skipped: None,
            require: None,
            concurrent: false,
            index: None,
        }
    }

    fn everywhere(sql: String, guard: String) -> Self {
        Self {
            at: Where::Everywhere,
            guard: Some(guard),
            ..Self::on("", sql)
        }
    }
}

/// A condition a target must meet for a step, and what to say when it
/// does not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    /// A boolean SQL expression evaluated on the target.
    pub check: String,
    pub why: String,
    pub fix: String,
}

/// What a change does to a table's columns: read models and shard keys
/// that name the column cannot follow by themselves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    Dropped {
        table: String,
        column: String,
    },
    Renamed {
        table: String,
        from: String,
        to: String,
    },
    Retyped {
        table: String,
        column: String,
    },
}

impl Effect {
    pub fn table(&self) -> &str {
        match self {
            Self::Dropped { table, .. }
            | Self::Renamed { table, .. }
            | Self::Retyped { table, .. } => table,
        }
    }

    pub fn column(&self) -> &str {
        match self {
            Self::Dropped { column, .. } | Self::Retyped { column, .. } => column,
            Self::Renamed { from, .. } => from,
        }
    }

    pub fn verb(&self) -> &'static str {
        match self {
            Self::Dropped { .. } => "drops",
            Self::Renamed { .. } => "renames",
            Self::Retyped { .. } => "changes the type of",
        }
    }
}

/// Rows that joined or left a listed table with a partition (`ATTACH`,
/// `DETACH PARTITION`). The capture sends them right after the command as
/// logical messages; cdc applies them as inserts or deletes of the listed
/// table, routed as any row of it, in the same target transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replay {
    /// Which of the capture's partition changes (`part` of each message).
    pub part: usize,
    /// The listed table (`schema.name`) the rows belong to.
    pub table: String,
    /// Deletes (the rows left), else inserts (they joined).
    pub delete: bool,
    /// A boolean SQL expression evaluated on each target first: the rows
    /// apply only where it holds.
    pub only_where: Option<String>,
}

/// The statements to run, and what they change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub steps: Vec<Step>,
    pub effects: Vec<Effect>,
    /// Parts of the command left out, for the log.
    pub notes: Vec<String>,
    /// The target transaction must commit at the end of this source
    /// transaction (a new enum label is usable only after its commit).
    pub ends_group: bool,
    /// The tables whose definition changed, `schema.name`.
    pub tables: Vec<String>,
    /// Rows that follow the command in the stream.
    pub replays: Vec<Replay>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Nothing to do on the targets; why, for the log.
    Ignore(String),
    Apply(Box<Changes>),
    /// Cannot be applied safely: why, and what the operator can do.
    Refuse {
        why: String,
        fix: String,
    },
}

/// Commands shardline leaves on the source even for listed tables:
/// privileges, owners and triggers belong to each database, sequences to
/// the cutover (ids), and views or functions are not tables.
const NOT_CARRIED: &[&str] = &[
    "GRANT",
    "REVOKE",
    "CREATE TRIGGER",
    "ALTER TRIGGER",
    "DROP TRIGGER",
    "CREATE POLICY",
    "ALTER POLICY",
    "DROP POLICY",
    "CREATE RULE",
    "DROP RULE",
    "CREATE STATISTICS",
    "ALTER STATISTICS",
    "DROP STATISTICS",
    "SECURITY LABEL",
    "CREATE SEQUENCE",
    "ALTER SEQUENCE",
    "DROP SEQUENCE",
    "CREATE VIEW",
    "ALTER VIEW",
    "DROP VIEW",
    "CREATE MATERIALIZED VIEW",
    "REFRESH MATERIALIZED VIEW",
    "DROP MATERIALIZED VIEW",
    "ALTER DEFAULT PRIVILEGES",
];

const TYPE_TAGS: &[&str] = &[
    "CREATE TYPE",
    "ALTER TYPE",
    "DROP TYPE",
    "CREATE DOMAIN",
    "ALTER DOMAIN",
    "DROP DOMAIN",
];

/// Object types that belong to a table.
const TABLE_OBJECTS: &[&str] = &[
    "table",
    "table column",
    "index",
    "table constraint",
    "default value",
];

/// The fix for a command cdc cannot carry: the operator carries it.
pub fn by_hand(id: i64) -> String {
    format!("make the same change on the targets yourself (or decide they do not need it), then run `shardline cdc skip-ddl {id}` and start cdc again")
}

pub fn plan(c: &Captured, scope: &Scope) -> Plan {
    if let Some(error) = &c.error {
        return Plan::Refuse {
            why: format!(
                "the DDL capture failed on the source for a {} command ({error}), so what it changed is unknown",
                c.tag
            ),
            fix: by_hand(c.id),
        };
    }
    let owners: Vec<String> = c
        .objects
        .iter()
        .filter(|o| TABLE_OBJECTS.contains(&o.kind.as_str()))
        .filter_map(|o| o.table.clone())
        .fold(Vec::new(), |mut v, t| {
            if !v.contains(&t) {
                v.push(t);
            }
            v
        });
    let parent = |t: &str| {
        c.table(t)
            .and_then(|s| s.parent.clone())
            .filter(|p| (scope.listed)(p))
            .or_else(|| (scope.parent_of)(t))
    };
    let listed: Vec<&String> = owners.iter().filter(|t| (scope.listed)(t)).collect();
    let partitions: Vec<&String> = owners
        .iter()
        .filter(|t| !(scope.listed)(t) && parent(t).is_some())
        .collect();
    let unlisted: Vec<&String> = owners
        .iter()
        .filter(|t| !(scope.listed)(t) && parent(t).is_none())
        .collect();
    // A schema renamed or dropped under a listed table.
    if c.tag == "ALTER SCHEMA" || c.tag == "DROP SCHEMA" {
        let schemas: Vec<&str> = c
            .objects
            .iter()
            .filter(|o| o.kind == "schema")
            .filter_map(|o| o.identity.as_deref())
            .collect();
        let inside: Vec<&String> = scope
            .listed_tables
            .iter()
            .filter(|t| schemas.iter().any(|s| t.starts_with(&format!("{s}."))))
            .collect();
        if let Some(t) = inside.first() {
            return Plan::Refuse {
                why: format!(
                    "{} changes the schema of listed table {t}, which the topology names",
                    c.tag
                ),
                fix: by_hand(c.id),
            };
        }
    }
    let relevant = !listed.is_empty()
        || !partitions.is_empty()
        || TYPE_TAGS.contains(&c.tag.as_str())
        || c.tag == "DROP INDEX";
    if !relevant {
        // A listed table renamed or moved: the capture sees its new name.
        if let Some(refusal) = moved_away(c, scope) {
            return refusal;
        }
        return Plan::Ignore(format!("{} touches no listed table", c.tag));
    }
    if NOT_CARRIED.contains(&c.tag.as_str()) {
        // A cascade may drop what listed tables hold (a default, a column).
        if c.event == Event::Drop {
            if let Some(o) = c.objects.iter().find(|o| {
                o.kind != "table" && o.table.as_deref().is_some_and(|t| (scope.listed)(t))
            }) {
                return Plan::Refuse {
                    why: format!(
                        "{} also drops {} {} of listed table {}",
                        c.tag,
                        o.kind,
                        o.identity.as_deref().unwrap_or("?"),
                        o.table.as_deref().unwrap_or("?")
                    ),
                    fix: by_hand(c.id),
                };
            }
        }
        return Plan::Ignore(format!("{} is not carried to the targets", c.tag));
    }
    if let (Some(l), Some(u)) = (listed.first(), unlisted.first()) {
        return Plan::Refuse {
            why: format!(
                "the {} command touches listed table {l} and table {u}, which the topology does not list; cdc cannot apply half of it",
                c.tag
            ),
            fix: by_hand(c.id),
        };
    }
    let located = match statement::locate(&c.query, &c.tag, c.ordinal) {
        Ok(s) => s,
        Err(why) => {
            return Plan::Refuse {
                why: format!(
                    "cannot tell which statement ran {} on {}: {why}; the query was: {}",
                    c.tag,
                    owners.first().map(String::as_str).unwrap_or("a type"),
                    short(&c.query)
                ),
                fix: by_hand(c.id),
            }
        }
    };
    let table = listed.first().or(partitions.first()).map(|t| t.to_string());
    let ctx = Ctx {
        c,
        scope,
        statement: &located,
    };
    let planned = match (&located.node, table) {
        (NodeEnum::AlterTableStmt(s), Some(t)) => ctx.alter_table(s, &t),
        (NodeEnum::RenameStmt(s), t) => ctx.rename(s, t),
        (NodeEnum::AlterObjectSchemaStmt(_), Some(t)) if (scope.listed)(&t) => Err(Plan::Refuse {
            why: format!(
                "`{}` moves listed table {t} to another schema; the topology names it",
                located.text
            ),
            fix: by_hand(c.id),
        }),
        (NodeEnum::IndexStmt(s), Some(t)) => ctx.index(s, &t),
        (NodeEnum::DropStmt(s), _) => ctx.drop(s),
        (NodeEnum::AlterEnumStmt(s), _) => ctx.alter_enum(s),
        (
            NodeEnum::CreateEnumStmt(_)
            | NodeEnum::CompositeTypeStmt(_)
            | NodeEnum::CreateRangeStmt(_)
            | NodeEnum::CreateDomainStmt(_),
            _,
        ) => ctx.create_type(),
        (NodeEnum::AlterDomainStmt(_), _) => ctx.alter_type(),
        (NodeEnum::CreateStmt(s), Some(t)) if s.partbound.is_some() => ctx.partition(s, &t),
        (NodeEnum::CommentStmt(s), Some(t)) => ctx.comment(s, &t),
        (_, Some(t)) => Err(Plan::Refuse {
            why: format!(
                "shardline does not carry `{}` on listed table {t} yet",
                short(&located.text)
            ),
            fix: by_hand(c.id),
        }),
        (_, None) => Err(Plan::Ignore(format!("{} touches no listed table", c.tag))),
    };
    match planned {
        Ok(changes) if changes.steps.is_empty() => Plan::Ignore(if changes.notes.is_empty() {
            format!("{} changes nothing the targets hold", c.tag)
        } else {
            changes.notes.join("; ")
        }),
        Ok(changes) => Plan::Apply(Box::new(changes)),
        Err(plan) => plan,
    }
}

/// A listed table renamed (`ALTER TABLE … RENAME TO`) or moved to another
/// schema (`SET SCHEMA`), which the capture reports under its new name.
fn moved_away(c: &Captured, scope: &Scope) -> Option<Plan> {
    if !c.tag.starts_with("ALTER ") || !c.objects.iter().any(|o| o.kind == "table") {
        return None;
    }
    let located = statement::locate(&c.query, &c.tag, c.ordinal).ok()?;
    let (rv, what) = match &located.node {
        NodeEnum::RenameStmt(s)
            if ObjectType::try_from(s.rename_type) == Ok(ObjectType::ObjectTable) =>
        {
            (s.relation.as_ref()?, "renames")
        }
        NodeEnum::AlterObjectSchemaStmt(s)
            if ObjectType::try_from(s.object_type) == Ok(ObjectType::ObjectTable) =>
        {
            (s.relation.as_ref()?, "moves to another schema")
        }
        _ => return None,
    };
    // Unqualified, it was found on the search_path: any listed table of
    // that name counts.
    let table = scope.listed_tables.iter().find(|t| {
        let Ok(t) = TableName::parse(t) else {
            return false;
        };
        t.name == rv.relname && (rv.schemaname.is_empty() || rv.schemaname == t.schema)
    })?;
    Some(Plan::Refuse {
        why: format!("`{}` {what} listed table {table}, which the topology names", short(&located.text)),
        fix: format!("rename it back on the source, or: rename it on every target, change its name in the topology, then run `shardline cdc skip-ddl {}` and start cdc again", c.id),
    })
}

/// A query shortened for a one-line message.
pub fn short(sql: &str) -> String {
    let one_line: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > 200 {
        format!("{}…", one_line.chars().take(200).collect::<String>())
    } else {
        one_line
    }
}

/// A string as an SQL literal.
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `"schema"."name"` of a table in [`TableName`]'s display form.
pub fn quoted(table: &str) -> String {
    TableName::parse(table)
        .map(|t| t.quoted())
        .unwrap_or_else(|_| shardline_topology::quote_ident(table))
}

/// The schema of a table in [`TableName`]'s display form.
fn schema_of(table: &str) -> String {
    TableName::parse(table)
        .map(|t| t.schema)
        .unwrap_or_else(|_| "public".into())
}

/// The name part of an object identity PostgreSQL quoted where needed
/// (`public."Odd.Name"` → `Odd.Name`); the schema is the part before the
/// first dot outside quotes.
fn identity_name(identity: &str, _schema: &str) -> String {
    let mut parts = Vec::new();
    let mut part = String::new();
    let mut chars = identity.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                part.push('"');
            }
            '"' => quoted = !quoted,
            '.' if !quoted => parts.push(std::mem::take(&mut part)),
            c => part.push(c),
        }
    }
    parts.push(part);
    parts.last().cloned().unwrap_or_default()
}

/// Whether the target holds `schema.name` as a partitioned table.
fn partitioned_sql(table: &str) -> String {
    format!(
        "coalesce((SELECT relkind = 'p' FROM pg_class WHERE oid = to_regclass({})), false)",
        literal(&quoted(table))
    )
}

struct Ctx<'a> {
    c: &'a Captured,
    scope: &'a Scope<'a>,
    statement: &'a Statement,
}

impl Ctx<'_> {
    fn refuse(&self, why: String) -> Plan {
        Plan::Refuse {
            why,
            fix: by_hand(self.c.id),
        }
    }

    /// The statement with its tree changed, as SQL.
    fn deparsed(&self, node: NodeEnum) -> Result<String, Plan> {
        Statement {
            text: self.statement.text.clone(),
            node,
        }
        .deparse()
        .map_err(|e| self.refuse(e.to_string()))
    }

    /// Checks that the parsed relation is the table the capture saw.
    fn same_table(&self, rv: &protobuf::RangeVar, table: &str) -> Result<(), Plan> {
        let schema = schema_of(table);
        if let Ok(t) = TableName::parse(table) {
            if rv.relname == t.name && (rv.schemaname.is_empty() || rv.schemaname == t.schema) {
                return Ok(());
            }
        }
        Err(self.refuse(format!(
            "the statement found for the {} command, `{}`, names {} but the command changed {table}; the query was: {}",
            self.c.tag,
            short(&self.statement.text),
            statement::qualified(rv, &schema),
            short(&self.c.query)
        )))
    }

    /// A table the topology lists, or a partition of one: the latter
    /// exists only on targets that keep the source's partitioning.
    fn on_table(&self, table: &str, sql: String) -> Step {
        let mut step = Step::on(table, sql);
        if !(self.scope.listed)(table) {
            if let Some(parent) = self.parent(table) {
                step.at = Where::Table(parent.clone());
                step.guard = Some(format!(
                    "to_regclass({}) IS NOT NULL",
                    literal(&quoted(table))
                ));
                step.skipped = Some(format!(
                    "the target keeps {parent} as one table, without partition {table}"
                ));
            }
        }
        step
    }

    fn parent(&self, table: &str) -> Option<String> {
        self.c
            .table(table)
            .and_then(|s| s.parent.clone())
            .filter(|p| (self.scope.listed)(p))
            .or_else(|| (self.scope.parent_of)(table))
    }

    fn changes(&self, table: &str, steps: Vec<Step>) -> Changes {
        Changes {
            steps,
            tables: vec![table.to_string()],
            ..Changes::default()
        }
    }

    fn rename(&self, s: &protobuf::RenameStmt, table: Option<String>) -> Result<Changes, Plan> {
        let text = self.statement.text.clone();
        let kind = ObjectType::try_from(s.rename_type).unwrap_or(ObjectType::Undefined);
        match (kind, table) {
            (ObjectType::ObjectColumn, Some(t)) => {
                if let Some(rv) = &s.relation {
                    self.same_table(rv, &t)?;
                }
                let mut c = self.changes(&t, vec![self.on_table(&t, text)]);
                c.effects.push(Effect::Renamed {
                    table: t.clone(),
                    from: s.subname.clone(),
                    to: s.newname.clone(),
                });
                Ok(c)
            }
            (ObjectType::ObjectTabconstraint, Some(t)) => {
                let mut step = self.on_table(&t, text);
                // A constraint the target does not hold (a foreign key to
                // a table elsewhere) has nothing to rename there.
                step.guard = Some(format!(
                    "EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass({}) AND conname = {})",
                    literal(&quoted(&t)),
                    literal(&s.subname)
                ));
                Ok(self.changes(&t, vec![step]))
            }
            (ObjectType::ObjectTable | ObjectType::ObjectForeignTable, Some(t))
                if (self.scope.listed)(&t) =>
            {
                Err(Plan::Refuse {
                    why: format!("`{}` renames listed table {t}, which the topology names", short(&text)),
                    fix: format!("rename it back on the source, or: rename it on every target, change its name in the topology, then run `shardline cdc skip-ddl {}` and start cdc again", self.c.id),
                })
            }
            (ObjectType::ObjectTable, Some(t)) => {
                // A partition renamed: where it exists.
                Ok(self.changes(&t, vec![self.on_table(&t, text)]))
            }
            (ObjectType::ObjectIndex, Some(t)) => {
                let mut step = self.on_table(&t, text);
                if let Some(rv) = &s.relation {
                    step.guard = Some(format!(
                        "to_regclass({}) IS NOT NULL",
                        literal(&quoted(&statement::qualified(rv, &schema_of(&t))))
                    ));
                }
                Ok(self.changes(&t, vec![step]))
            }
            (ObjectType::ObjectType | ObjectType::ObjectAttribute | ObjectType::ObjectDomain, _) => {
                self.alter_type()
            }
            (_, Some(t)) => Err(self.refuse(format!(
                "shardline does not carry `{}` on listed table {t} yet",
                short(&text)
            ))),
            (_, None) => Err(Plan::Ignore(format!("{} touches no listed table", self.c.tag))),
        }
    }

    fn index(&self, s: &protobuf::IndexStmt, table: &str) -> Result<Changes, Plan> {
        if let Some(rv) = &s.relation {
            self.same_table(rv, table)?;
        }
        let created = self
            .c
            .objects
            .iter()
            .find(|o| o.kind == "index")
            .and_then(|o| Some((o.schema.clone()?, o.identity.clone()?)));
        let mut node = s.clone();
        let mut edited = false;
        let mut index = None;
        if let Some((schema, identity)) = created {
            let name = identity_name(&identity, &schema);
            // The source chose the name; the target must use the same one
            // (a later DROP INDEX names it).
            if node.idxname.is_empty() {
                node.idxname = name.clone();
                edited = true;
            }
            index = Some(TableName::new(&schema, &name).quoted());
        }
        if node.concurrent && !node.if_not_exists {
            node.if_not_exists = true;
            edited = true;
        }
        let sql = if edited {
            self.deparsed(NodeEnum::IndexStmt(Box::new(node.clone())))?
        } else {
            self.statement.text.clone()
        };
        let mut step = self.on_table(table, sql);
        step.concurrent = node.concurrent;
        step.index = index.filter(|_| node.concurrent);
        Ok(self.changes(table, vec![step]))
    }
}

/// Whether a default expression is a constant: every row gets the same
/// value on the source and on a target.
fn constant(expr: Option<&protobuf::Node>) -> bool {
    match expr.and_then(|e| e.node.as_ref()) {
        None | Some(NodeEnum::AConst(_)) => true,
        Some(NodeEnum::TypeCast(t)) => matches!(
            t.arg.as_deref().and_then(|a| a.node.as_ref()),
            Some(NodeEnum::AConst(_))
        ),
        Some(NodeEnum::AExpr(e)) => {
            // -1
            e.lexpr.is_none() && constant(e.rexpr.as_deref())
        }
        _ => false,
    }
}

fn subtype(cmd: &protobuf::AlterTableCmd) -> AlterTableType {
    AlterTableType::try_from(cmd.subtype).unwrap_or(AlterTableType::Undefined)
}

fn constraint_type(c: &protobuf::Constraint) -> ConstrType {
    ConstrType::try_from(c.contype).unwrap_or(ConstrType::Undefined)
}

#[cfg(test)]
mod tests;
