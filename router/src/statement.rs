//! What one SQL statement touches: its tables grouped by query level
//! (scope), the shard-key constraints of each level, the key of each
//! INSERT row, and the shape a scatter SELECT would need merging in.
//!
//! Analysis depends only on the statement text and the topology, never on
//! bind values, so it is cached by text ([`crate::cache`]); bind values are
//! looked at when a [`crate::Router`] resolves the keys.

use std::collections::HashSet;

use serde_json::Value;
use shardline_topology::{ShardKey, ShardKeyType, TableName, DEFAULT_SCHEMA};

use crate::error::RouteError;
use crate::merge::{self, MergeShape};
use crate::schema::{Role, Schema};
use crate::tree::{self, boolean, child, int, list, node, node_of, string};

/// A shard key as written in the statement.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum KeyExpr {
    Literal(ShardKey),
    /// A bind parameter, zero-based (`$1` is 0).
    Param(usize),
    /// A bind parameter cast in the text (`$1::text::bigint`): PostgreSQL
    /// infers its type from the innermost cast, given here as a type OID.
    CastParam(usize, u32),
    /// `NULL`: equal to nothing.
    Null,
}

/// What a WHERE clause says about the shard key of a query level.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Constraint {
    /// Nothing usable: the rows may be on any shard.
    Any,
    /// The key is one of these.
    Keys(Vec<KeyExpr>),
    And(Vec<Constraint>),
    Or(Vec<Constraint>),
}

/// One query level (a SELECT, or the target of an INSERT, UPDATE or
/// DELETE) that reads or writes sharded tables.
#[derive(Clone, Debug)]
pub(crate) struct Scope {
    /// The first sharded table of the level, for messages.
    pub table: String,
    pub constraint: Constraint,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Select,
    Insert,
    Update,
    Delete,
}

impl Verb {
    pub fn is_write(self) -> bool {
        self != Self::Select
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Select => "SELECT",
            Self::Insert => "INSERT",
            Self::Update => "UPDATE",
            Self::Delete => "DELETE",
        }
    }
}

/// Transaction control, which the session acts on itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    Begin,
    Commit,
    Rollback,
    /// SAVEPOINT, RELEASE, ROLLBACK TO: stay on the transaction's shard.
    Savepoint,
}

/// A reading or writing statement on tables of the topology.
#[derive(Clone, Debug)]
pub(crate) struct Data {
    pub verb: Verb,
    /// The written table, for INSERT, UPDATE and DELETE.
    pub target: Option<String>,
    /// Context index of every table of the topology the statement names.
    pub contexts: Vec<(String, usize)>,
    /// Levels reading or writing sharded (not replicated) tables.
    pub scopes: Vec<Scope>,
    /// Whether the statement writes a replicated table.
    pub writes_replicated: bool,
    /// INSERT into a sharded table: the key of each VALUES row.
    pub insert_keys: Option<Vec<KeyExpr>>,
    /// How rows of several shards would be merged, or why they cannot be.
    pub merge: Result<MergeShape, String>,
}

/// One analysed statement.
#[derive(Clone, Debug)]
pub(crate) enum Analyzed {
    Control(Control),
    /// `SET shardline.merchant_id = …` (`None`: RESET).
    SetKey(Option<KeyExpr>),
    /// Touches no table of the topology: SHOW, `SELECT 1`, catalog
    /// queries. Any backend answers it the same.
    Session,
    /// `SET LOCAL` or `SET TRANSACTION`: lasts for the transaction.
    LocalSetting,
    /// Changes the session's state on the backend that runs it: SET,
    /// RESET, DISCARD, DEALLOCATE. The router copies the new state to the
    /// other backends the session uses. Carries the name of a custom
    /// (dotted) parameter, which PostgreSQL does not list in pg_settings.
    Setting(Option<String>),
    Data(Data),
    Rejected(RouteError),
}

/// The name of the router's override setting.
pub const KEY_SETTING: &str = "shardline.merchant_id";

/// Analyses every statement of a parse result.
pub(crate) fn analyze(parsed: &Value, schema: &Schema) -> Vec<Analyzed> {
    list(parsed, "stmts")
        .iter()
        .map(|raw| match raw.get("stmt") {
            Some(stmt) => analyze_statement(stmt, schema),
            None => Analyzed::Session,
        })
        .collect()
}

fn analyze_statement(stmt: &Value, schema: &Schema) -> Analyzed {
    let Some((kind, fields)) = node(stmt) else {
        return Analyzed::Session;
    };
    match kind {
        "TransactionStmt" => match int(fields, "kind") {
            1 | 2 => Analyzed::Control(Control::Begin),
            3 => Analyzed::Control(Control::Commit),
            4 => Analyzed::Control(Control::Rollback),
            5..=7 => Analyzed::Control(Control::Savepoint),
            _ => Analyzed::Rejected(RouteError::Unsupported {
                statement: "two-phase commit".into(),
            }),
        },
        "VariableSetStmt" if string(fields, "name").eq_ignore_ascii_case(KEY_SETTING) => {
            set_key(fields, schema)
        }
        "SelectStmt" | "InsertStmt" | "UpdateStmt" | "DeleteStmt" => data(kind, fields, schema),
        "ExplainStmt" => match child(fields, "query") {
            Some(q) => analyze_statement(q, schema),
            None => Analyzed::Session,
        },
        "VariableSetStmt"
            if boolean(fields, "is_local") || string(fields, "name").starts_with("TRANSACTION") =>
        {
            Analyzed::LocalSetting
        }
        "VariableSetStmt" => {
            let name = string(fields, "name").to_ascii_lowercase();
            Analyzed::Setting(name.contains('.').then_some(name))
        }
        "DiscardStmt" | "DeallocateStmt" => Analyzed::Setting(None),
        "VariableShowStmt" | "ListenStmt" | "UnlistenStmt" | "NotifyStmt" | "CheckPointStmt" => {
            Analyzed::Session
        }
        other => {
            // Utility statements (DDL, COPY, PREPARE, DO, …) on tables of the
            // topology would need running on every database of a context,
            // atomically; on no table they are still refused, since
            // nothing says which database the author meant.
            let statement = other.trim_end_matches("Stmt").to_string();
            Analyzed::Rejected(RouteError::Unsupported { statement })
        }
    }
}

fn set_key(fields: &Value, schema: &Schema) -> Analyzed {
    match int(fields, "kind") {
        1 => {
            let Some(key_type) = schema.override_key_type() else {
                return Analyzed::Rejected(RouteError::Unsupported {
                    statement: format!("SET {KEY_SETTING} without exactly one sharded context"),
                });
            };
            let args = list(fields, "args");
            match args.first().map(|a| key_expr(a, key_type)) {
                Some(Ok(Some(k))) if args.len() == 1 => Analyzed::SetKey(Some(k)),
                Some(Err(e)) => Analyzed::Rejected(e),
                _ => Analyzed::Rejected(RouteError::Unsupported {
                    statement: format!("SET {KEY_SETTING} to anything but one constant"),
                }),
            }
        }
        2 | 5 | 6 => Analyzed::SetKey(None),
        _ => Analyzed::Rejected(RouteError::Unsupported {
            statement: format!("this form of SET {KEY_SETTING}"),
        }),
    }
}

/// A table reference found in a query level.
struct TableRef {
    /// The table's [`TableName::short`] form: what the schema is asked
    /// about and what messages show.
    name: String,
    /// The relation's own name, as columns may be qualified with it.
    rel: String,
    alias: Option<String>,
}

/// A query level found by the walk: its statement node and its tables.
struct Level<'a> {
    kind: &'a str,
    fields: &'a Value,
    tables: Vec<TableRef>,
}

fn data(kind: &str, fields: &Value, schema: &Schema) -> Analyzed {
    let mut ctes = HashSet::new();
    collect_cte_names(fields, &mut ctes);
    let mut levels = vec![Level {
        kind,
        fields,
        tables: Vec::new(),
    }];
    walk(fields, 0, &mut levels, &ctes);

    let verb = match kind {
        "InsertStmt" => Verb::Insert,
        "UpdateStmt" => Verb::Update,
        "DeleteStmt" => Verb::Delete,
        _ => Verb::Select,
    };
    if let Some(into) = child(fields, "into_clause") {
        if !into.is_null() {
            return Analyzed::Rejected(RouteError::Unsupported {
                statement: "SELECT INTO".into(),
            });
        }
    }
    let target = (verb != Verb::Select)
        .then(|| child(fields, "relation").map(range_var_name))
        .flatten();

    let mut contexts = Vec::new();
    let mut scopes = Vec::new();
    let mut writes_replicated = false;
    for (i, level) in levels.iter().enumerate() {
        let mut sharded = Vec::new();
        for t in &level.tables {
            if schema.is_catalog(&t.name) {
                continue;
            }
            let Some(info) = schema.table(&t.name) else {
                return Analyzed::Rejected(RouteError::UnknownTable {
                    table: t.name.clone(),
                });
            };
            contexts.push((t.name.clone(), info.context));
            match info.role {
                Role::Sharded => sharded.push(t),
                Role::Replicated if i == 0 && target.as_deref() == Some(t.name.as_str()) => {
                    writes_replicated = true;
                }
                _ => {}
            }
        }
        if sharded.is_empty() {
            continue;
        }
        let key = schema
            .shard_key(sharded[0].name.as_str())
            .unwrap_or_default();
        let qualifiers: HashSet<&str> = sharded
            .iter()
            .flat_map(|t| [Some(t.rel.as_str()), t.alias.as_deref()])
            .flatten()
            .collect();
        let look = KeyLook {
            key,
            qualifiers: &qualifiers,
            key_type: schema
                .key_type(&sharded[0].name)
                .unwrap_or(ShardKeyType::Bigint),
        };
        if level.kind == "UpdateStmt" {
            let sets_key = list(level.fields, "target_list")
                .iter()
                .any(|t| node_of(t, "ResTarget").is_some_and(|r| string(r, "name") == key));
            if sets_key {
                return Analyzed::Rejected(RouteError::UpdatesKey {
                    table: sharded[0].name.clone(),
                    key: key.to_string(),
                });
            }
        }
        let constraint = match level.kind {
            "InsertStmt" => Constraint::Any,
            _ => match child(level.fields, "where_clause") {
                Some(w) => match look.constraint(w) {
                    Ok(c) => c,
                    Err(e) => return Analyzed::Rejected(e),
                },
                None => Constraint::Any,
            },
        };
        scopes.push(Scope {
            table: sharded[0].name.clone(),
            constraint,
        });
    }

    let insert_keys = if verb == Verb::Insert
        && target
            .as_deref()
            .and_then(|t| schema.table(t))
            .is_some_and(|i| i.role == Role::Sharded)
    {
        match insert_keys(fields, target.as_deref().unwrap_or_default(), schema) {
            Ok(k) => Some(k),
            Err(e) => return Analyzed::Rejected(e),
        }
    } else {
        None
    };
    // The target level of an INSERT is placed by its rows, not a WHERE.
    if insert_keys.is_some() {
        scopes.retain(|s| Some(&s.table) != target.as_ref() || s.constraint != Constraint::Any);
    }

    let merge = if verb == Verb::Select {
        let key = scopes
            .first()
            .and_then(|s| schema.shard_key(&s.table))
            .unwrap_or_default();
        merge::shape(fields, key)
    } else {
        Err("writes are not merged".into())
    };
    Analyzed::Data(Data {
        verb,
        target,
        contexts,
        scopes,
        writes_replicated,
        insert_keys,
        merge,
    })
}

fn collect_cte_names(v: &Value, out: &mut HashSet<String>) {
    match v {
        Value::Object(map) => {
            if let Some(Value::String(name)) = map.get("ctename") {
                out.insert(name.clone());
            }
            map.values().for_each(|c| collect_cte_names(c, out));
        }
        Value::Array(items) => items.iter().for_each(|c| collect_cte_names(c, out)),
        _ => {}
    }
}

/// A RangeVar's table in its canonical short form (pg_query has already
/// folded unquoted names and unquoted quoted ones, as PostgreSQL does).
fn range_var_name(rv: &Value) -> String {
    let schema = string(rv, "schemaname");
    let rel = string(rv, "relname");
    let schema = if schema.is_empty() {
        DEFAULT_SCHEMA
    } else {
        schema
    };
    TableName::new(schema, rel).short()
}

/// Visits every child of `v`, opening a new level at each SELECT, INSERT,
/// UPDATE or DELETE and adding every table reference (a `RangeVar`, found
/// by its `relname` field wherever it sits) to the innermost level.
fn walk<'a>(v: &'a Value, level: usize, levels: &mut Vec<Level<'a>>, ctes: &HashSet<String>) {
    match v {
        Value::Object(map) => {
            if let (Some(Value::String(_)), Some(_)) = (map.get("relname"), map.get("inh")) {
                let name = range_var_name(v);
                let rel = string(v, "relname").to_string();
                if !(string(v, "schemaname").is_empty() && ctes.contains(&rel)) {
                    let alias = child(v, "alias")
                        .map(|a| string(a, "aliasname").to_string())
                        .filter(|a| !a.is_empty());
                    levels[level].tables.push(TableRef { name, rel, alias });
                }
                return;
            }
            if let Some((kind, fields)) = node(v) {
                if matches!(
                    kind,
                    "SelectStmt" | "InsertStmt" | "UpdateStmt" | "DeleteStmt"
                ) {
                    levels.push(Level {
                        kind,
                        fields,
                        tables: Vec::new(),
                    });
                    let inner = levels.len() - 1;
                    walk(fields, inner, levels, ctes);
                    return;
                }
            }
            map.values().for_each(|c| walk(c, level, levels, ctes));
        }
        Value::Array(items) => items.iter().for_each(|c| walk(c, level, levels, ctes)),
        _ => {}
    }
}

/// Finds shard-key conditions of one level.
struct KeyLook<'a> {
    key: &'a str,
    /// Names and aliases of the level's sharded tables.
    qualifiers: &'a HashSet<&'a str>,
    key_type: ShardKeyType,
}

impl KeyLook<'_> {
    fn constraint(&self, expr: &Value) -> Result<Constraint, RouteError> {
        let Some((kind, f)) = node(expr) else {
            return Ok(Constraint::Any);
        };
        Ok(match kind {
            "BoolExpr" => {
                let args = list(f, "args")
                    .iter()
                    .map(|a| self.constraint(a))
                    .collect::<Result<Vec<_>, _>>()?;
                match int(f, "boolop") {
                    1 => Constraint::And(args),
                    2 => Constraint::Or(args),
                    _ => Constraint::Any,
                }
            }
            "AExpr" if tree::operator(f) == "=" => {
                let (l, r) = (child(f, "lexpr"), child(f, "rexpr"));
                let (Some(l), Some(r)) = (l, r) else {
                    return Ok(Constraint::Any);
                };
                match int(f, "kind") {
                    // key = value, value = key
                    1 => {
                        let (col, val) = if self.is_key(l) { (l, r) } else { (r, l) };
                        if !self.is_key(col) {
                            return Ok(Constraint::Any);
                        }
                        match key_expr(val, self.key_type)? {
                            Some(k) => Constraint::Keys(vec![k]),
                            None => Constraint::Any,
                        }
                    }
                    // key IN (…), key = ANY(ARRAY[…])
                    2 | 7 if self.is_key(l) => {
                        let items =
                            node_of(r, "List")
                                .or_else(|| node_of(r, "AArrayExpr"))
                                .map(|n| {
                                    let field = if n.get("items").is_some() {
                                        "items"
                                    } else {
                                        "elements"
                                    };
                                    list(n, field)
                                });
                        let Some(items) = items else {
                            return Ok(Constraint::Any);
                        };
                        let mut keys = Vec::with_capacity(items.len());
                        for item in items {
                            match key_expr(item, self.key_type)? {
                                Some(k) => keys.push(k),
                                None => return Ok(Constraint::Any),
                            }
                        }
                        Constraint::Keys(keys)
                    }
                    _ => Constraint::Any,
                }
            }
            _ => Constraint::Any,
        })
    }

    fn is_key(&self, expr: &Value) -> bool {
        let Some(col) = node_of(expr, "ColumnRef") else {
            return false;
        };
        match tree::names(list(col, "fields")).as_slice() {
            [c] => c == self.key,
            [.., q, c] => c == self.key && self.qualifiers.contains(q.as_str()),
            [] => false,
        }
    }
}

/// A constant, NULL or bind parameter in a key position; `None` for any
/// other expression.
fn key_expr(v: &Value, key_type: ShardKeyType) -> Result<Option<KeyExpr>, RouteError> {
    match node(v) {
        Some(("AConst", c)) => match tree::constant_text(c) {
            Some(text) => Ok(Some(KeyExpr::Literal(key_type.parse_key(&text)?))),
            None if tree::boolean(c, "isnull") => Ok(Some(KeyExpr::Null)),
            None => Ok(None),
        },
        Some(("ParamRef", p)) => Ok(Some(KeyExpr::Param((int(p, "number") - 1).max(0) as usize))),
        Some(("TypeCast", t)) => match child(t, "arg") {
            Some(arg) => match node_of(arg, "ParamRef") {
                Some(p) => {
                    let names = child(t, "type_name")
                        .map(|n| tree::names(list(n, "names")))
                        .unwrap_or_default();
                    let index = (int(p, "number") - 1).max(0) as usize;
                    Ok(Some(match type_oid(names.last().map(String::as_str)) {
                        Some(oid) => KeyExpr::CastParam(index, oid),
                        // A cast to a type a key cannot be: not a key.
                        None => return Ok(None),
                    }))
                }
                None => key_expr(arg, key_type),
            },
            None => Ok(None),
        },
        _ => Ok(None),
    }
}

/// The OID of a type a cast names, for the types a key may be bound as.
fn type_oid(name: Option<&str>) -> Option<u32> {
    Some(match name? {
        "int8" | "bigint" => 20,
        "int4" | "integer" | "int" => 23,
        "int2" | "smallint" => 21,
        "text" => 25,
        "varchar" => 1043,
        "uuid" => 2950,
        _ => return None,
    })
}

/// The key of each VALUES row of an INSERT into a sharded table.
fn insert_keys(fields: &Value, table: &str, schema: &Schema) -> Result<Vec<KeyExpr>, RouteError> {
    let key = schema.shard_key(table).unwrap_or_default();
    let key_type = schema.key_type(table).unwrap_or(ShardKeyType::Bigint);
    let cols: Vec<String> = list(fields, "cols")
        .iter()
        .filter_map(|c| node_of(c, "ResTarget").map(|r| string(r, "name").to_string()))
        .collect();
    let position =
        cols.iter()
            .position(|c| c == key)
            .ok_or_else(|| RouteError::InsertWithoutKey {
                table: table.into(),
                key: key.into(),
            })?;
    let select = child(fields, "select_stmt").and_then(|s| node_of(s, "SelectStmt"));
    let rows = select.map(|s| list(s, "values_lists")).unwrap_or(&[]);
    if rows.is_empty() {
        return Err(RouteError::InsertSelect {
            table: table.into(),
            key: key.into(),
        });
    }
    rows.iter()
        .enumerate()
        .map(|(i, row)| {
            let items = node_of(row, "List")
                .map(|l| list(l, "items"))
                .unwrap_or(&[]);
            let item = items.get(position);
            let not_constant = |what: &str| RouteError::InsertKeyNotConstant {
                table: table.into(),
                key: key.into(),
                row: i + 1,
                what: what.into(),
            };
            match item.map(|v| key_expr(v, key_type)).transpose()?.flatten() {
                Some(KeyExpr::Null) => Err(not_constant("NULL")),
                Some(k) => Ok(k),
                None => Err(not_constant(
                    item.and_then(node).map(|(k, _)| k).unwrap_or("missing"),
                )),
            }
        })
        .collect()
}
