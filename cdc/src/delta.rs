//! Read models kept current change by change.
//!
//! A read model whose aggregates are all `count(*)`, `count(expr)` and
//! `sum(expr)`, with a `count(*)` among them, over a source table with
//! `REPLICA IDENTITY FULL` (so every update and delete carries the whole old
//! row), is adjusted incrementally: each change becomes delta rows (the old
//! row with sign -1, the new row with sign +1), and a batch of them becomes
//! one `MERGE` on the read model's database, queued to that database's
//! applier inside the same target transaction as its progress mark. So a
//! read model is exactly as current as its database's recorded position,
//! and a crash neither loses nor repeats an adjustment.
//!
//! The delta rows travel as text in a `VALUES` list and are cast to the
//! source columns' types on the target, so the read model's `where` filter
//! and group expressions (`date_trunc('day', created_at)`) are evaluated by
//! PostgreSQL exactly as the read model's own query evaluates them. A group
//! whose count reaches zero is deleted. Values of types the target may not
//! know (enums, domains, other user-defined types) travel as `text`.
//!
//! Other read models (min, max, distinct counts, a source table without
//! full replica identity) are recomputed from the source by
//! [`crate::readmodel::Refresher`].

use std::fmt::Write;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use shardline_topology::{output_name, quote_ident, ReadModel};

use crate::pgoutput::{ColumnValue, LogicalMessage, OldTuple, Relation};
use crate::rows::Cell;

/// One row image of a delta: the values of the read model's columns, as
/// the stream sent them (slices of its messages, not copies).
pub type DeltaRow = Vec<Cell>;

/// Delta rows buffered per read model before they are sent as one `MERGE`:
/// bounds memory on large source transactions, and keeps each statement
/// well below a megabyte for typical rows.
pub const MAX_PENDING_ROWS: usize = 500;

/// One aggregate of a read model, as the incremental path understands it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Aggregate {
    CountStar { name: String },
    Count { name: String, expr: String },
    Sum { name: String, expr: String },
}

impl Aggregate {
    pub fn name(&self) -> &str {
        match self {
            Self::CountStar { name } | Self::Count { name, .. } | Self::Sum { name, .. } => name,
        }
    }

    /// Reads `count(*) AS n`, `count(x)`, `sum(amount) AS volume`; `None`
    /// for anything else (other functions, DISTINCT, FILTER, OVER).
    pub fn parse(entry: &str) -> Option<Self> {
        let name = output_name(entry);
        let expr = match split_alias(entry) {
            Some((expr, _)) => expr,
            None => entry.trim(),
        };
        let open = expr.find('(')?;
        let function = expr[..open].trim().to_ascii_lowercase();
        let inner = expr[open + 1..].strip_suffix(')')?.trim();
        // The parentheses must close only at the very end (no `FILTER (…)`).
        let mut depth = 1i32;
        for c in inner.chars() {
            depth += match c {
                '(' => 1,
                ')' => -1,
                _ => 0,
            };
            if depth == 0 {
                return None;
            }
        }
        let lower = inner.to_ascii_lowercase();
        if depth != 1 || lower.starts_with("distinct ") || lower.starts_with("all ") {
            return None;
        }
        match (function.as_str(), inner) {
            ("count", "*") => Some(Self::CountStar { name }),
            ("count", _) if !inner.is_empty() => Some(Self::Count {
                name,
                expr: inner.to_string(),
            }),
            ("sum", _) if !inner.is_empty() => Some(Self::Sum {
                name,
                expr: inner.to_string(),
            }),
            _ => None,
        }
    }

    /// The aggregate over delta rows whose sign is in `shardline_sign`.
    fn delta(&self) -> String {
        match self {
            Self::CountStar { .. } => "sum(shardline_sign)::bigint".into(),
            Self::Count { expr, .. } => {
                format!(
                    "sum(CASE WHEN ({expr}) IS NOT NULL THEN shardline_sign ELSE 0 END)::bigint"
                )
            }
            Self::Sum { expr, .. } => format!("sum(shardline_sign * ({expr}))"),
        }
    }
}

/// `expr AS name` → (`expr`, `name`), splitting at the last top-level `AS`.
fn split_alias(entry: &str) -> Option<(&str, &str)> {
    let lower = entry.to_ascii_lowercase();
    let at = lower.rfind(" as ")?;
    if entry[at..].contains(')') {
        return None;
    }
    Some((entry[..at].trim(), entry[at + 4..].trim()))
}

/// Why a read model is not kept incrementally.
pub fn not_incremental(rm: &ReadModel) -> Option<String> {
    let parsed: Vec<Option<Aggregate>> =
        rm.aggregates.iter().map(|a| Aggregate::parse(a)).collect();
    if let Some(i) = parsed.iter().position(Option::is_none) {
        return Some(format!(
            "aggregate {:?} is not count(*), count(expr) or sum(expr)",
            rm.aggregates[i]
        ));
    }
    if !parsed
        .iter()
        .any(|a| matches!(a, Some(Aggregate::CountStar { .. })))
    {
        return Some("it has no count(*) aggregate to tell when a group is empty".into());
    }
    None
}

/// One read model kept incrementally: what the coordinator buffers for
/// the source transaction in flight.
#[derive(Debug)]
pub struct DeltaModel {
    pub name: String,
    /// The source table, `schema.name`.
    pub from: String,
    /// The target index of the read model's database.
    pub target: usize,
    /// How its adjustments become SQL, shared with the applier.
    pub spec: Arc<DeltaSpec>,
    pending: Vec<(i8, DeltaRow)>,
    /// The relation last recorded and where each of the spec's columns is
    /// in its rows (until a schema change describes the relation again:
    /// [`DeltaModel::relation_changed`]).
    positions: Option<(u32, Vec<Option<usize>>)>,
}

/// The SQL side of an incremental read model.
#[derive(Debug)]
pub struct DeltaSpec {
    pub name: String,
    table: String,
    group_by: Vec<String>,
    group_names: Vec<String>,
    /// The group expressions without their aliases.
    group_exprs: Vec<String>,
    filter: Option<String>,
    aggregates: Vec<Aggregate>,
    count: String,
    /// The source table's columns and the type each is cast to.
    columns: Vec<(String, String)>,
}

/// What a change did to a model's buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Recorded {
    /// Delta rows buffered.
    Buffered,
    /// The change did not carry every value the delta needs (no full old
    /// row): the model must be recomputed from the source.
    Incomplete,
}

impl DeltaModel {
    /// `columns`: the source table's column names and their cast types.
    pub fn new(rm: &ReadModel, target: usize, columns: Vec<(String, String)>) -> Option<Self> {
        let aggregates: Vec<Aggregate> = rm
            .aggregates
            .iter()
            .map(|a| Aggregate::parse(a))
            .collect::<Option<_>>()?;
        let count = aggregates.iter().find_map(|a| match a {
            Aggregate::CountStar { name } => Some(name.clone()),
            _ => None,
        })?;
        let texts = rm
            .filter
            .iter()
            .chain(&rm.group_by)
            .chain(&rm.aggregates)
            .map(String::as_str);
        let columns = referenced_columns(texts, &rm.from, columns);
        Some(Self::with(rm, target, aggregates, count, columns))
    }

    /// A recorder of the rows a change touched, for a read model that is
    /// recomputed group by group (min, max, …): [`DeltaModel::record`]
    /// buffers row images and [`DeltaSpec::touched_groups_sql`] finds
    /// their groups; no `MERGE` is ever made of it.
    pub fn for_groups(rm: &ReadModel, target: usize, columns: Vec<(String, String)>) -> Self {
        let columns = referenced_columns(rm.group_by.iter().map(String::as_str), &rm.from, columns);
        Self::with(rm, target, Vec::new(), String::new(), columns)
    }

    fn with(
        rm: &ReadModel,
        target: usize,
        aggregates: Vec<Aggregate>,
        count: String,
        columns: Vec<(String, String)>,
    ) -> Self {
        Self {
            name: rm.name.clone(),
            from: rm.from.to_string(),
            target,
            spec: Arc::new(DeltaSpec {
                name: rm.name.clone(),
                table: rm.table().quoted(),
                group_by: rm.group_by.clone(),
                group_names: rm.group_columns(),
                group_exprs: group_exprs(rm),
                filter: rm.filter.clone(),
                aggregates,
                count,
                columns,
            }),
            pending: Vec::new(),
            positions: None,
        }
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The source table was described again (its columns may have moved).
    pub fn relation_changed(&mut self) {
        self.positions = None;
    }

    /// Buffers the delta rows of one insert, update or delete of the
    /// source table described by `relation`.
    pub fn record(&mut self, relation: &Relation, message: &LogicalMessage) -> Recorded {
        let known = matches!(&self.positions, Some((id, _)) if *id == relation.id);
        if !known {
            let positions = self
                .spec
                .columns
                .iter()
                .map(|(c, _)| relation.columns.iter().position(|rc| &rc.name == c))
                .collect();
            self.positions = Some((relation.id, positions));
        }
        let Some((_, position)) = &self.positions else {
            return Recorded::Incomplete;
        };
        let image = |values: &[ColumnValue], fallback: Option<&[ColumnValue]>| {
            position
                .iter()
                .map(|p| {
                    let Some(i) = *p else { return Some(None) };
                    match values.get(i)? {
                        ColumnValue::Null => Some(None),
                        ColumnValue::Text(b) | ColumnValue::Binary(b) => Some(Some(b.clone())),
                        // Unchanged: the old row's value is the new one.
                        ColumnValue::UnchangedToast => match fallback?.get(i)? {
                            ColumnValue::Text(b) | ColumnValue::Binary(b) => Some(Some(b.clone())),
                            ColumnValue::Null => Some(None),
                            ColumnValue::UnchangedToast => None,
                        },
                    }
                })
                .collect::<Option<DeltaRow>>()
        };
        let rows: Option<Vec<(i8, DeltaRow)>> = match message {
            LogicalMessage::Insert { new, .. } => image(&new.0, None).map(|r| vec![(1, r)]),
            LogicalMessage::Update {
                old: Some(OldTuple::Full(old)),
                new,
                ..
            } => image(&old.0, None)
                .and_then(|o| image(&new.0, Some(&old.0)).map(|n| vec![(-1, o), (1, n)])),
            LogicalMessage::Delete {
                old: OldTuple::Full(old),
                ..
            } => image(&old.0, None).map(|o| vec![(-1, o)]),
            _ => None,
        };
        match rows {
            Some(rows) => {
                self.pending.extend(rows);
                Recorded::Buffered
            }
            None => Recorded::Incomplete,
        }
    }

    /// The `MERGE` that applies the buffered delta rows (and empties the
    /// buffer); `None` when nothing is buffered.
    pub fn take_sql(&mut self, guard: &MergeGuard) -> Option<String> {
        if self.pending.is_empty() {
            return None;
        }
        let rows = std::mem::take(&mut self.pending);
        Some(
            self.spec.merge(
                rows.iter()
                    .map(|(sign, row)| (i64::from(*sign), row.as_slice())),
                guard,
            ),
        )
    }

    /// The buffered delta rows (and empties the buffer).
    pub fn take_rows(&mut self) -> Vec<(i8, DeltaRow)> {
        std::mem::take(&mut self.pending)
    }

    /// Empties the read model: the source table was truncated. Anything
    /// buffered before the truncate is moot.
    pub fn truncate_sql(&mut self) -> String {
        self.pending.clear();
        self.spec.delete_sql()
    }
}

/// The columns the read model's expressions name: only they travel in delta
/// rows (fewer bytes to send and cast, and row images that differ only in
/// other columns cancel out). Identifiers are read outside string literals,
/// unquoted ones folded to lower case; an expression naming the table
/// itself (a whole-row reference such as `payments.*` or `to_json(payments)`)
/// keeps every column. A column missed here cannot give a wrong result: the
/// expression would name a column the delta rows lack, an error.
pub fn referenced_columns<'a>(
    texts: impl IntoIterator<Item = &'a str>,
    from: &shardline_topology::TableName,
    columns: Vec<(String, String)>,
) -> Vec<(String, String)> {
    let mut names = std::collections::HashSet::new();
    for text in texts {
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\'' => {
                    // A literal, with '' as a quote inside it.
                    while let Some(c) = chars.next() {
                        if c == '\'' {
                            if chars.peek() == Some(&'\'') {
                                chars.next();
                            } else {
                                break;
                            }
                        }
                    }
                }
                '"' => {
                    let mut name = String::new();
                    while let Some(c) = chars.next() {
                        if c == '"' {
                            if chars.peek() == Some(&'"') {
                                chars.next();
                            } else {
                                break;
                            }
                        }
                        name.push(c);
                    }
                    names.insert(name);
                }
                c if c.is_alphabetic() || c == '_' => {
                    let mut name = c.to_lowercase().to_string();
                    while let Some(&c) = chars.peek() {
                        if c.is_alphanumeric() || c == '_' || c == '$' {
                            name.extend(c.to_lowercase());
                            chars.next();
                        } else {
                            break;
                        }
                    }
                    names.insert(name);
                }
                _ => {}
            }
        }
    }
    // A whole-row reference (`ledger.*`, `ledger`) needs every column.
    if names.contains(&from.name) {
        return columns;
    }
    columns
        .into_iter()
        .filter(|(c, _)| names.contains(c))
        .collect()
}

/// `date_trunc('day', created_at) AS day` → `date_trunc('day', created_at)`.
fn group_exprs(rm: &ReadModel) -> Vec<String> {
    rm.group_by
        .iter()
        .map(|g| match split_alias(g) {
            Some((expr, _)) => expr.to_string(),
            None => g.trim().to_string(),
        })
        .collect()
}

impl DeltaSpec {
    /// How row images sent as text become typed columns: the casts
    /// `v.c0::type AS name, …` of the row source's columns `c0, c1, …`.
    fn casts(&self) -> String {
        let casts: Vec<String> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, (name, ty))| format!("v.c{i}::{ty} AS {}", quote_ident(name)))
            .collect();
        casts.join(", ")
    }

    /// Row images (with their weights, if any) as the row source
    /// `v([shardline_sign,] c0, c1, …)`, one text array per column
    /// ([`crate::sql::unnest`]).
    fn row_source(&self, weights: Option<&[i64]>, rows: &[&[Cell]]) -> String {
        let mut names = Vec::with_capacity(self.columns.len() + 1);
        let weights: Option<Vec<String>> = weights.map(|w| w.iter().map(i64::to_string).collect());
        // Text as the stream sent it; a byte that is not UTF-8 (a
        // SQL_ASCII source) becomes U+FFFD, as in every statement.
        let texts: Vec<Vec<Option<std::borrow::Cow<'_, str>>>> = (0..self.columns.len())
            .map(|i| {
                rows.iter()
                    .map(|r| r[i].as_deref().map(String::from_utf8_lossy))
                    .collect()
            })
            .collect();
        let mut columns: Vec<(&str, Vec<Option<&str>>)> = Vec::with_capacity(texts.len() + 1);
        if let Some(w) = &weights {
            names.push("shardline_sign".to_string());
            columns.push(("int8", w.iter().map(|s| Some(s.as_str())).collect()));
        }
        for (i, column) in texts.iter().enumerate() {
            names.push(format!("c{i}"));
            columns.push(("text", column.iter().map(|v| v.as_deref()).collect()));
        }
        crate::sql::unnest(columns, "v", &names)
    }

    /// The distinct groups of row images, evaluated by PostgreSQL with the
    /// read model's own group expressions: `SELECT DISTINCT <exprs> FROM
    /// (<images cast to the source's types>) AS <alias>`. `alias` is the
    /// source table's name, so qualified column references resolve too.
    pub fn touched_groups_sql<'a>(
        &self,
        rows: impl IntoIterator<Item = &'a [Cell]>,
        alias: &str,
    ) -> String {
        let rows: Vec<&[Cell]> = rows.into_iter().collect();
        format!(
            "SELECT DISTINCT {} FROM (SELECT {} FROM {}) AS {}",
            self.group_exprs.join(", "),
            self.casts(),
            self.row_source(None, &rows),
            quote_ident(alias),
        )
    }

    /// The read model's query restricted to the groups `touched` (a query
    /// of their group values) selects: `… WHERE <filter> AND (<exprs>) IN
    /// (touched) GROUP BY …`.
    pub fn groups_query(&self, rm: &ReadModel, touched: &str) -> String {
        let positions: Vec<String> = (1..=self.group_by.len()).map(|i| i.to_string()).collect();
        let filter = self
            .filter
            .as_deref()
            .map(|f| format!("({f}) AND "))
            .unwrap_or_default();
        format!(
            "SELECT {}, {} FROM {} WHERE {filter}({}) IN ({touched}) GROUP BY {}",
            self.group_by.join(", "),
            rm.aggregates.join(", "),
            rm.from.quoted(),
            self.group_exprs.join(", "),
            positions.join(", ")
        )
    }

    /// Empties the read model's table.
    pub fn delete_sql(&self) -> String {
        format!("DELETE FROM {}", self.table)
    }

    /// The `MERGE` that applies delta rows, each with its weight (how many
    /// times the row image is added, negative for removed). A group it would
    /// leave with fewer than zero rows, or remove rows from while the read
    /// model lacks it, goes through [`crate::divergence::FUNCTION`] as
    /// `guard` says.
    pub fn merge<'a>(
        &self,
        rows: impl IntoIterator<Item = (i64, &'a [Cell])>,
        guard: &MergeGuard,
    ) -> String {
        let (weights, rows): (Vec<i64>, Vec<&[Cell]>) = rows.into_iter().unzip();
        let source = self.row_source(Some(&weights), &rows);
        let casts = self.casts();
        let positions: Vec<String> = (1..=self.group_by.len()).map(|i| i.to_string()).collect();
        let deltas: Vec<String> = self
            .aggregates
            .iter()
            .map(|a| format!("{} AS {}", a.delta(), quote_ident(a.name())))
            .collect();
        let filter = self
            .filter
            .as_deref()
            .map(|f| format!(" WHERE {f}"))
            .unwrap_or_default();
        let on: Vec<String> = self
            .group_names
            .iter()
            .map(|g| format!("t.{0} = g.{0}", quote_ident(g)))
            .collect();
        let count = quote_ident(&self.count);
        let set: Vec<String> = self
            .aggregates
            .iter()
            .map(|a| {
                let c = quote_ident(a.name());
                match a {
                    // sum() of no values is NULL, so a NULL delta changes nothing.
                    Aggregate::Sum { .. } => format!(
                        "{c} = CASE WHEN g.{c} IS NULL THEN t.{c} WHEN t.{c} IS NULL THEN g.{c} ELSE t.{c} + g.{c} END"
                    ),
                    _ => format!("{c} = t.{c} + g.{c}"),
                }
            })
            .collect();
        let all: Vec<String> = self
            .group_names
            .iter()
            .map(String::as_str)
            .chain(self.aggregates.iter().map(Aggregate::name))
            .map(quote_ident)
            .collect();
        let from_g: Vec<String> = all.iter().map(|c| format!("g.{c}")).collect();
        // The group as `(7,"2026-01-01 00:00:00+00",EUR)`, for the record.
        let group: Vec<String> = self
            .group_names
            .iter()
            .map(|g| format!("g.{}", quote_ident(g)))
            .collect();
        let diverged = |rows: &str| {
            let mut call = format!("{}(({rows})::bigint, ", crate::divergence::FUNCTION);
            crate::sql::push_literal(&mut call, Some(guard.slot.as_bytes()));
            call.push_str(", ");
            crate::sql::push_literal(&mut call, Some(self.name.as_bytes()));
            let _ = write!(call, ", (row({}))::text, {})", group.join(", "), guard.stop);
            call
        };
        let mut set_diverged = vec![format!(
            "{count} = {}",
            diverged(&format!("t.{count} + g.{count}"))
        )];
        set_diverged.extend(
            set.iter()
                .filter(|s| !s.starts_with(&format!("{count} = ")))
                .cloned(),
        );
        let mut from_g_diverged = from_g.clone();
        let at = self.group_names.len()
            + self
                .aggregates
                .iter()
                .position(|a| a.name() == self.count)
                .unwrap_or(0);
        from_g_diverged[at] = diverged(&format!("g.{count}"));
        format!(
            "MERGE INTO {table} AS t USING (SELECT {group_by}, {deltas} FROM (SELECT v.shardline_sign, {casts} FROM {source}) AS d{filter} GROUP BY {positions}) AS g ON {on} \
             WHEN MATCHED AND t.{count} + g.{count} = 0 THEN DELETE \
             WHEN MATCHED AND t.{count} + g.{count} < 0 THEN UPDATE SET {set_diverged} \
             WHEN MATCHED THEN UPDATE SET {set} \
             WHEN NOT MATCHED AND g.{count} > 0 THEN INSERT ({all}) VALUES ({from_g}) \
             WHEN NOT MATCHED THEN INSERT ({all}) VALUES ({from_g_diverged})",
            table = self.table,
            group_by = self.group_by.join(", "),
            deltas = deltas.join(", "),

            positions = positions.join(", "),
            on = on.join(" AND "),
            set = set.join(", "),
            set_diverged = set_diverged.join(", "),
            all = all.join(", "),
            from_g = from_g.join(", "),
            from_g_diverged = from_g_diverged.join(", "),
        )
    }
}

/// What a read-model `MERGE` does with a group it cannot adjust: record it
/// under `slot` and go on, or (`stop`) fail the target transaction.
#[derive(Clone, Debug, Default)]
pub struct MergeGuard {
    pub slot: String,
    pub stop: bool,
}

/// Distinct delta rows an applier nets before it writes them as one `MERGE`.
pub const MAX_NETTED_ROWS: usize = 5_000;

/// One read model's delta rows of a target transaction, netted: a row
/// image added and removed again (a payment inserted, then updated in the
/// same commit group) cancels out exactly before any SQL is written, since
/// the filter and every aggregate are functions of the row image. What is
/// left becomes one `MERGE` (weights as signs) in the same target
/// transaction as the progress mark of the group.
#[derive(Debug)]
pub struct Netted {
    pub spec: Arc<DeltaSpec>,
    rows: FxHashMap<DeltaRow, i64>,
}

impl Netted {
    pub fn new(spec: Arc<DeltaSpec>) -> Self {
        Self {
            spec,
            rows: FxHashMap::default(),
        }
    }

    pub fn add(&mut self, rows: Vec<(i8, DeltaRow)>) {
        for (sign, row) in rows {
            *self.rows.entry(row).or_insert(0) += i64::from(sign);
        }
    }

    /// Distinct row images held.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Forgets the held rows (the read model is emptied, or the target
    /// transaction rolls back).
    pub fn clear(&mut self) {
        self.rows.clear();
    }

    /// The `MERGE` of the rows whose weight is not zero (and empties the
    /// buffer); `None` when nothing is left.
    pub fn take_sql(&mut self, guard: &MergeGuard) -> Option<String> {
        let rows = std::mem::take(&mut self.rows);
        // In the map's order: the MERGE sums per group, so the order of its
        // rows changes nothing.
        let live: Vec<(i64, &[Cell])> = rows
            .iter()
            .filter(|(_, w)| **w != 0)
            .map(|(row, w)| (*w, row.as_slice()))
            .collect();
        if live.is_empty() {
            return None;
        }
        Some(self.spec.merge(live, guard))
    }
}

/// The source catalog's columns of `table` with the type each delta value
/// is cast to on the target, and whether the table has full replica
/// identity. Built-in types keep their exact type (with typmod); types a
/// target may lack travel as text.
pub const COLUMNS_SQL: &str = "SELECT a.attname::text,
        CASE WHEN a.atttypid < 16384 THEN format_type(a.atttypid, a.atttypmod) ELSE 'text' END,
        c.relreplident = 'f'
   FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid
  WHERE c.oid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
  ORDER BY a.attnum";

/// The read models of `topology` that can be kept incrementally, each
/// with its source table's columns. Says in the log why any other one is
/// recomputed instead, with the fix when there is one.
pub async fn prepare(
    source: &tokio_postgres::Client,
    topology: &shardline_topology::Topology,
    routes: &crate::route::Routes,
) -> Result<Vec<DeltaModel>, tokio_postgres::Error> {
    let mut models = Vec::new();
    for rm in &topology.read_models {
        if let Some(why) = not_incremental(rm) {
            tracing::info!(read_model = %rm.name, "recomputed from the source every refresh interval: {why}");
            continue;
        }
        let from = &rm.from;
        let rows = source.query(COLUMNS_SQL, &[&from.quoted()]).await?;
        let Some(first) = rows.first() else { continue };
        if !first.get::<_, bool>(2) {
            tracing::warn!(read_model = %rm.name, "recomputed from the source every refresh interval, since updates and deletes of {from} do not carry the old row (fix, to keep it incrementally: ALTER TABLE {from} REPLICA IDENTITY FULL;)");
            continue;
        }
        let target = topology
            .context(&rm.context)
            .and_then(|c| c.databases().first().copied().cloned())
            .and_then(|db| routes.target_of(&db));
        let Some(target) = target else { continue };
        let columns = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        if let Some(m) = DeltaModel::new(rm, target, columns) {
            tracing::info!(read_model = %rm.name, "kept incrementally");
            models.push(m);
        }
    }
    Ok(models)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregates_that_can_be_adjusted_are_recognised() {
        assert_eq!(
            Aggregate::parse("count(*) AS payments"),
            Some(Aggregate::CountStar {
                name: "payments".into()
            })
        );
        assert_eq!(
            Aggregate::parse("SUM(amount * 2) as volume"),
            Some(Aggregate::Sum {
                name: "volume".into(),
                expr: "amount * 2".into()
            })
        );
        assert_eq!(
            Aggregate::parse("count(coalesce(a, b)) AS n"),
            Some(Aggregate::Count {
                name: "n".into(),
                expr: "coalesce(a, b)".into()
            })
        );
        for other in [
            "max(amount) AS top",
            "count(DISTINCT currency) AS currencies",
            "sum(amount) FILTER (WHERE amount > 0) AS positive",
            "avg(amount) AS mean",
            "count(*) OVER () AS n",
        ] {
            assert_eq!(Aggregate::parse(other), None, "{other}");
        }
    }

    fn model(aggregates: &[&str]) -> ReadModel {
        ReadModel {
            name: "daily".into(),
            from: shardline_topology::TableName::parse("payments").unwrap(),
            filter: Some("status = 'captured'".into()),
            group_by: vec![
                "merchant_id".into(),
                "date_trunc('day', created_at) AS day".into(),
            ],
            aggregates: aggregates.iter().map(|s| s.to_string()).collect(),
            context: "analytics".into(),
        }
    }

    #[test]
    fn delta_rows_carry_only_the_columns_the_expressions_name() {
        let columns: Vec<(String, String)> = [
            "merchant_id",
            "amount",
            "status",
            "created_at",
            "note",
            "Day",
            "day",
        ]
        .iter()
        .map(|c| (c.to_string(), "text".to_string()))
        .collect();
        let names = |texts: &[&str], from: &str| -> Vec<String> {
            let from = shardline_topology::TableName::parse(from).unwrap();
            referenced_columns(texts.iter().copied(), &from, columns.clone())
                .into_iter()
                .map(|(c, _)| c)
                .collect()
        };
        assert_eq!(
            names(
                &[
                    "status = 'captured note'",
                    "Merchant_Id",
                    "date_trunc('day', created_at) AS day",
                    "sum(amount) AS v"
                ],
                "payments"
            ),
            ["merchant_id", "amount", "status", "created_at", "day"],
            "words inside literals are not columns; unquoted names fold to lower case"
        );
        assert_eq!(names(&["\"Day\"", "count(*)"], "public.payments"), ["Day"]);
        assert_eq!(
            names(&["max(payments.amount)"], "public.payments").len(),
            columns.len(),
            "a whole-row or qualified reference keeps every column"
        );
    }

    #[test]
    fn a_model_needs_count_star_and_only_counts_and_sums() {
        assert_eq!(
            not_incremental(&model(&["count(*) AS n", "sum(amount) AS v"])),
            None
        );
        assert!(not_incremental(&model(&["sum(amount) AS v"]))
            .unwrap()
            .contains("count(*)"));
        assert!(
            not_incremental(&model(&["count(*) AS n", "max(amount) AS m"]))
                .unwrap()
                .contains("max(amount)")
        );
    }

    #[test]
    fn deltas_become_one_merge_with_the_filter_and_groups_evaluated_in_sql() {
        let columns = vec![
            ("merchant_id".to_string(), "bigint".to_string()),
            ("amount".to_string(), "numeric(18,2)".to_string()),
            ("status".to_string(), "text".to_string()),
            (
                "created_at".to_string(),
                "timestamp with time zone".to_string(),
            ),
        ];
        let mut m =
            DeltaModel::new(&model(&["count(*) AS n", "sum(amount) AS v"]), 3, columns).unwrap();
        let guard = MergeGuard {
            slot: "s".into(),
            stop: true,
        };
        assert_eq!(m.take_sql(&guard), None);
        m.pending.push((
            1,
            vec![
                Some("7".into()),
                Some("1.50".into()),
                Some("captured".into()),
                Some("2026-01-01 10:00:00+00".into()),
            ],
        ));
        m.pending
            .push((-1, vec![Some("7".into()), None, Some("it's".into()), None]));
        let sql = m.take_sql(&guard).unwrap();
        assert_eq!(m.pending(), 0);
        assert!(sql.starts_with("MERGE INTO \"public\".\"daily\" AS t USING (SELECT merchant_id, date_trunc('day', created_at) AS day, sum(shardline_sign)::bigint AS \"n\", sum(shardline_sign * (amount)) AS \"v\" FROM (SELECT v.shardline_sign, v.c0::bigint AS \"merchant_id\", v.c1::numeric(18,2) AS \"amount\""), "{sql}");
        assert!(sql.contains(r#"FROM unnest('{"1","-1"}'::int8[], '{"7","7"}'::text[], '{"1.50",NULL}'::text[], '{"captured","it''s"}'::text[], '{"2026-01-01 10:00:00+00",NULL}'::text[]) AS v(shardline_sign, c0, c1, c2, c3)) AS d"#), "{sql}");
        assert!(sql.contains("AS d WHERE status = 'captured' GROUP BY 1, 2) AS g ON t.\"merchant_id\" = g.\"merchant_id\" AND t.\"day\" = g.\"day\""), "{sql}");
        assert!(
            sql.contains("WHEN MATCHED AND t.\"n\" + g.\"n\" = 0 THEN DELETE"),
            "{sql}"
        );
        assert!(sql.contains("WHEN MATCHED AND t.\"n\" + g.\"n\" < 0 THEN UPDATE SET \"n\" = shardline.cdc_diverged((t.\"n\" + g.\"n\")::bigint, 's', 'daily', (row(g.\"merchant_id\", g.\"day\"))::text, true), \"v\" = CASE"), "{sql}");
        assert!(sql.contains("WHEN NOT MATCHED AND g.\"n\" > 0 THEN INSERT (\"merchant_id\", \"day\", \"n\", \"v\") VALUES (g.\"merchant_id\", g.\"day\", g.\"n\", g.\"v\")"), "{sql}");
        assert!(sql.ends_with("WHEN NOT MATCHED THEN INSERT (\"merchant_id\", \"day\", \"n\", \"v\") VALUES (g.\"merchant_id\", g.\"day\", shardline.cdc_diverged((g.\"n\")::bigint, 's', 'daily', (row(g.\"merchant_id\", g.\"day\"))::text, true), g.\"v\")"), "{sql}");
    }
}
