//! What a SELECT run on several shards needs to be merged into the answer
//! one database would have given, decided from the statement alone.
//!
//! Only shapes whose merge is provably correct are accepted:
//! - plain rows: concatenated, or k-way merged when ordered by output
//!   columns; a LIMIT runs on every shard as written and again on the
//!   merged stream;
//! - GROUP BY that includes the shard key: every group lives on one shard,
//!   so grouped rows merge like plain rows;
//! - count, sum, min, max and avg, without GROUP BY or grouped by other
//!   columns: partial results combined per group.
//!
//! Everything else (DISTINCT, avg, window functions, set operations,
//! ORDER BY expressions, HAVING or LIMIT over re-grouped groups) is
//! refused with the reason.

use serde_json::Value;

use crate::tree::{self, child, int, list, node, node_of, string};

/// An ORDER BY column of the output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SortColumn {
    /// By output column name, found in the RowDescription; must be unique.
    Name(String),
    /// By position, zero-based.
    Position(usize),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SortKey {
    pub column: SortColumn,
    pub descending: bool,
    /// PostgreSQL's default: NULLs sort as larger than every value.
    pub nulls_first: bool,
    /// `COLLATE "C"` (or `"POSIX"`) on the item: text sorts by its bytes.
    pub bytewise: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    Count(u64),
    /// A bind parameter, zero-based.
    Param(usize),
}

/// How one output column of an aggregate is combined over shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aggregate {
    /// count: summed.
    Count,
    Sum,
    Min,
    Max,
    /// avg: the shards run `sum(x), count(x)` in its place and the router
    /// divides the totals (numeric exactly, as numeric_div does).
    Avg,
}

/// What an output column of an aggregate SELECT is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// A GROUP BY column: rows with equal values are one group.
    Group,
    Aggregate(Aggregate),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MergeShape {
    Rows {
        order: Vec<SortKey>,
        limit: Option<Limit>,
        /// OFFSET: skipped on the merged stream. The shards get
        /// `shard_sql`, the statement with `LIMIT limit + offset` and no
        /// OFFSET (set by the router, which holds the typed parse tree).
        offset: u64,
        shard_sql: Option<String>,
    },
    /// Aggregates without GROUP BY (one row per shard), or GROUP BY
    /// without the shard key: each shard's groups are combined by their
    /// group values, then ordered by `order`. With avg, the shards get
    /// `shard_sql`, each avg(x) split into sum(x), count(x).
    Aggregate {
        outputs: Vec<Output>,
        order: Vec<SortKey>,
        shard_sql: Option<String>,
    },
}

impl MergeShape {
    /// Whether an avg makes the shards run a rewritten statement.
    pub fn has_avg(&self) -> bool {
        matches!(self, Self::Aggregate { outputs, .. }
            if outputs.contains(&Output::Aggregate(Aggregate::Avg)))
    }
}

/// Aggregate functions of PostgreSQL; a call to one makes a query level an
/// aggregate. User-defined aggregates are not known here: see the README.
const AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "min",
    "max",
    "avg",
    "array_agg",
    "string_agg",
    "bool_and",
    "bool_or",
    "every",
    "bit_and",
    "bit_or",
    "bit_xor",
    "json_agg",
    "jsonb_agg",
    "json_object_agg",
    "jsonb_object_agg",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "variance",
    "var_pop",
    "var_samp",
    "corr",
    "covar_pop",
    "covar_samp",
    "regr_avgx",
    "regr_avgy",
    "regr_count",
    "regr_intercept",
    "regr_r2",
    "regr_slope",
    "regr_sxx",
    "regr_sxy",
    "regr_syy",
    "percentile_cont",
    "percentile_disc",
    "mode",
    "xmlagg",
    "range_agg",
    "range_intersect_agg",
    "any_value",
];

/// The merge a top-level SELECT needs, or why it cannot be merged.
pub(crate) fn shape(select: &Value, shard_key: &str) -> Result<MergeShape, String> {
    if int(select, "op") > 1 {
        return Err("UNION, INTERSECT and EXCEPT are not merged".into());
    }
    if !list(select, "distinct_clause").is_empty() {
        return Err("DISTINCT is not merged".into());
    }
    let targets = list(select, "target_list");
    if !list(select, "window_clause").is_empty() || targets.iter().any(has_window) {
        return Err("window functions are not merged".into());
    }
    if let Some(c) = targets.iter().find_map(other_collation) {
        return Err(format!(
            "an output column with COLLATE \"{c}\" is not merged; the router sorts and compares text bytewise (COLLATE \"C\")"
        ));
    }
    let groups = list(select, "group_clause");
    let has_agg = targets.iter().any(has_aggregate)
        || child(select, "having_clause").is_some_and(has_aggregate);
    if !groups.is_empty() {
        let by_key = groups.iter().any(|g| {
            node_of(g, "ColumnRef").is_some_and(|c| {
                tree::names(list(c, "fields")).last().map(String::as_str) == Some(shard_key)
            })
        });
        if !by_key {
            return grouped(select, targets, groups);
        }
    } else if has_agg || child(select, "having_clause").is_some() {
        return aggregate(select, targets);
    }
    rows(select, targets)
}

/// GROUP BY without the shard key: re-grouped when every output column is
/// a GROUP BY column or a combinable aggregate, and every GROUP BY column
/// is output (otherwise groups that differ only in a hidden column would
/// be wrongly joined).
fn grouped(select: &Value, targets: &[Value], groups: &[Value]) -> Result<MergeShape, String> {
    if child(select, "having_clause").is_some() {
        return Err("HAVING over groups re-grouped from shards is not merged".into());
    }
    if child(select, "limit_count").is_some() || child(select, "limit_offset").is_some() {
        return Err(
            "LIMIT or OFFSET over groups re-grouped from shards is not merged (each shard would cut its own groups)"
                .into(),
        );
    }
    let group_names = groups
        .iter()
        .map(|g| match node_of(g, "ColumnRef") {
            Some(c) => Ok(tree::names(list(c, "fields"))),
            None => Err(
                "GROUP BY an expression or position across shards is not merged; group by columns"
                    .to_string(),
            ),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut seen = vec![false; group_names.len()];
    let outputs = targets
        .iter()
        .map(|t| {
            let val = node_of(t, "ResTarget").and_then(|r| child(r, "val"));
            if let Some(c) = val.and_then(|v| node_of(v, "ColumnRef")) {
                let fields = tree::names(list(c, "fields"));
                let at = group_names.iter().position(|g| {
                    *g == fields
                        || (g.len() == 1 && fields.last() == g.last())
                        || (fields.len() == 1 && g.last() == fields.last())
                });
                return match at {
                    Some(i) => {
                        seen[i] = true;
                        Ok(Output::Group)
                    }
                    None => Err(format!(
                        "output column {} is neither grouped nor aggregated",
                        fields.join(".")
                    )),
                };
            }
            aggregate_call(t).map(Output::Aggregate)
        })
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(i) = seen.iter().position(|s| !s) {
        return Err(format!(
            "GROUP BY {} which is not an output column would need re-grouping",
            group_names[i].join(".")
        ));
    }
    let order = list(select, "sort_clause")
        .iter()
        .map(|s| sort_key(s, targets))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(MergeShape::Aggregate {
        outputs,
        order,
        shard_sql: None,
    })
}

fn aggregate(select: &Value, targets: &[Value]) -> Result<MergeShape, String> {
    if child(select, "having_clause").is_some() {
        return Err("HAVING without GROUP BY is not merged".into());
    }
    if !list(select, "sort_clause").is_empty()
        || child(select, "limit_count").is_some()
        || child(select, "limit_offset").is_some()
    {
        return Err("ORDER BY, LIMIT or OFFSET over aggregates is not merged".into());
    }
    let outputs = targets
        .iter()
        .map(|t| aggregate_call(t).map(Output::Aggregate))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(MergeShape::Aggregate {
        outputs,
        order: Vec::new(),
        shard_sql: None,
    })
}

/// The combinable aggregate an output column calls, or why it is not one.
fn aggregate_call(t: &Value) -> Result<Aggregate, String> {
    let val = node_of(t, "ResTarget").and_then(|r| child(r, "val"));
    let Some(call) = val.and_then(|v| node_of(v, "FuncCall")) else {
        return Err("an output column that is not an aggregate call".to_string());
    };
    let name = tree::names(list(call, "funcname")).join(".");
    let name = name.strip_prefix("pg_catalog.").unwrap_or(&name);
    if tree::boolean(call, "agg_distinct") || !list(call, "agg_order").is_empty() {
        return Err(format!(
            "{name}(DISTINCT …) or an ordered aggregate is not merged"
        ));
    }
    if list(call, "args").iter().any(has_aggregate) {
        return Err(format!("a nested aggregate inside {name}() is not merged"));
    }
    match name {
        "count" => Ok(Aggregate::Count),
        "sum" => Ok(Aggregate::Sum),
        "min" => Ok(Aggregate::Min),
        "max" => Ok(Aggregate::Max),
        "avg" => Ok(Aggregate::Avg),
        other => Err(format!("{other}() across shards is not merged")),
    }
}

fn rows(select: &Value, targets: &[Value]) -> Result<MergeShape, String> {
    let offset = match child(select, "limit_offset") {
        None => 0,
        Some(o) => match node(o) {
            Some(("AConst", c)) if tree::boolean(c, "isnull") => 0,
            Some(("AConst", c)) => match tree::constant_text(c).and_then(|t| t.parse().ok()) {
                Some(n) => n,
                None => return Err("an OFFSET that is not a whole number".into()),
            },
            Some(("ParamRef", _)) => {
                return Err("OFFSET as a bind parameter is not merged; write the number".into())
            }
            _ => return Err("an OFFSET expression is not merged".into()),
        },
    };
    if int(select, "limit_option") == 3 {
        return Err("FETCH … WITH TIES is not merged".into());
    }
    let limit = match child(select, "limit_count") {
        None => None,
        Some(l) => match node(l) {
            Some(("AConst", c)) if tree::boolean(c, "isnull") => None,
            Some(("AConst", c)) => match tree::constant_text(c).and_then(|t| t.parse().ok()) {
                Some(n) => Some(Limit::Count(n)),
                None => return Err("a LIMIT that is not a whole number".into()),
            },
            Some(("ParamRef", p)) => Some(Limit::Param((int(p, "number") - 1).max(0) as usize)),
            _ => return Err("a LIMIT expression is not merged".into()),
        },
    };
    if offset > 0 && matches!(limit, Some(Limit::Param(_))) {
        return Err(
            "OFFSET with LIMIT as a bind parameter is not merged; write the numbers".into(),
        );
    }
    let order = list(select, "sort_clause")
        .iter()
        .map(|s| sort_key(s, targets))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(MergeShape::Rows {
        order,
        limit,
        offset,
        shard_sql: None,
    })
}

fn sort_key(sort: &Value, targets: &[Value]) -> Result<SortKey, String> {
    let s = node_of(sort, "SortBy").ok_or("an ORDER BY item")?;
    let descending = match int(s, "sortby_dir") {
        4 => return Err("ORDER BY … USING is not merged".into()),
        3 => true,
        _ => false,
    };
    let nulls_first = match int(s, "sortby_nulls") {
        2 => true,
        3 => false,
        _ => descending,
    };
    let mut expr = child(s, "node").ok_or("an empty ORDER BY item")?;
    let mut bytewise = false;
    if let Some(c) = node_of(expr, "CollateClause") {
        let collation = tree::names(list(c, "collname"));
        let collation = collation.last().map(String::as_str).unwrap_or("");
        if collation != "C" && collation != "POSIX" {
            return Err(format!(
                "ORDER BY … COLLATE \"{collation}\" is not merged; only COLLATE \"C\" sorts text the way the router can"
            ));
        }
        bytewise = true;
        expr = child(c, "arg").ok_or("an empty COLLATE")?;
        if node_of(expr, "ColumnRef").is_none() {
            return Err("ORDER BY an expression with COLLATE; order by an output column".into());
        }
    }
    let column = match node(expr) {
        Some(("AConst", c)) => match tree::constant_text(c).and_then(|t| t.parse::<usize>().ok()) {
            Some(n) if n >= 1 => SortColumn::Position(n - 1),
            _ => return Err("ORDER BY a constant".into()),
        },
        Some(("ColumnRef", c)) => {
            let fields = tree::names(list(c, "fields"));
            match fields.as_slice() {
                [name] => SortColumn::Name(name.clone()),
                [.., last] => {
                    // A qualified name means the input column; it is the
                    // output column only when selected as such, unrenamed.
                    let selected = targets.iter().any(|t| {
                        node_of(t, "ResTarget").is_some_and(|r| {
                            (string(r, "name").is_empty() || string(r, "name") == last)
                                && child(r, "val")
                                    .and_then(|v| node_of(v, "ColumnRef"))
                                    .is_some_and(|v| tree::names(list(v, "fields")) == fields)
                        })
                    });
                    if !selected {
                        return Err(format!(
                            "ORDER BY {} which is not an output column",
                            fields.join(".")
                        ));
                    }
                    SortColumn::Name(last.clone())
                }
                [] => return Err("ORDER BY an unnamed column".into()),
            }
        }
        _ => return Err("ORDER BY an expression; order by an output column".into()),
    };
    Ok(SortKey {
        column,
        descending,
        nulls_first,
        bytewise,
    })
}

/// The first collation other than C or POSIX named in an expression.
fn other_collation(v: &Value) -> Option<String> {
    let mut found = None;
    find(v, &mut |kind, f| {
        if kind == "CollateClause" {
            let names = tree::names(list(f, "collname"));
            let name = names.last().cloned().unwrap_or_default();
            if name != "C" && name != "POSIX" {
                found = Some(name);
                return true;
            }
        }
        false
    });
    found
}

/// Whether an expression contains a window function call.
fn has_window(v: &Value) -> bool {
    find(v, &mut |kind, f| {
        kind == "FuncCall" && child(f, "over").is_some()
    })
}

/// Whether an expression contains an aggregate call, not counting
/// subqueries (their aggregates are their own).
fn has_aggregate(v: &Value) -> bool {
    find(v, &mut |kind, f| {
        if kind != "FuncCall" || child(f, "over").is_some() {
            return false;
        }
        let names = tree::names(list(f, "funcname"));
        let name = names.last().map(String::as_str).unwrap_or("");
        AGGREGATES.contains(&name)
            || tree::boolean(f, "agg_star")
            || tree::boolean(f, "agg_distinct")
            || tree::boolean(f, "agg_within_group")
            || !list(f, "agg_order").is_empty()
            || child(f, "agg_filter").is_some()
    })
}

/// Depth-first search for a node matching `pred`, not entering subqueries.
fn find(v: &Value, pred: &mut dyn FnMut(&str, &Value) -> bool) -> bool {
    match v {
        Value::Object(map) => {
            if let Some((kind, fields)) = node(v) {
                if kind == "SubLink" || kind == "SelectStmt" {
                    return false;
                }
                if pred(kind, fields) {
                    return true;
                }
            }
            map.values().any(|c| find(c, &mut *pred))
        }
        Value::Array(items) => items.iter().any(|c| find(c, &mut *pred)),
        _ => false,
    }
}
