//! Reading pg_query's parse tree.
//!
//! The tree is walked in its serde form (`serde_json::Value`) rather than
//! through the typed protobuf structs, for one reason: completeness. A
//! generic walk visits every child of every node, so a table hidden in a
//! node kind nobody thought of (a lateral function, a MERGE clause, a
//! JSON_TABLE) is still found, and a table that is found is never routed
//! past. The typed structs stay in use where the tree is rewritten
//! (splitting a multi-row INSERT).
//!
//! In serde form a `Node` is `{"node": {"Kind": {fields…}}}`, enum fields
//! are their integer values and every field is present.

use serde_json::Value;

/// The kind and fields of a `Node`.
pub(crate) fn node(v: &Value) -> Option<(&str, &Value)> {
    let inner = v.get("node")?.as_object()?;
    inner.iter().next().map(|(k, v)| (k.as_str(), v))
}

/// The fields of a `Node` of kind `kind`.
pub(crate) fn node_of<'a>(v: &'a Value, kind: &str) -> Option<&'a Value> {
    node(v).filter(|(k, _)| *k == kind).map(|(_, v)| v)
}

pub(crate) fn list<'a>(v: &'a Value, field: &str) -> &'a [Value] {
    v.get(field)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

pub(crate) fn int(v: &Value, field: &str) -> i64 {
    v.get(field).and_then(Value::as_i64).unwrap_or(0)
}

pub(crate) fn string<'a>(v: &'a Value, field: &str) -> &'a str {
    v.get(field).and_then(Value::as_str).unwrap_or("")
}

pub(crate) fn boolean(v: &Value, field: &str) -> bool {
    v.get(field).and_then(Value::as_bool).unwrap_or(false)
}

/// A present, non-null child node.
pub(crate) fn child<'a>(v: &'a Value, field: &str) -> Option<&'a Value> {
    v.get(field).filter(|c| !c.is_null())
}

/// The strings of a name list such as `ColumnRef.fields` or
/// `FuncCall.funcname` (`A_Star` entries become `*`).
pub(crate) fn names(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .filter_map(|n| match node(n) {
            Some(("String", s)) => Some(string(s, "sval").to_string()),
            Some(("AStar", _)) => Some("*".to_string()),
            _ => None,
        })
        .collect()
}

/// The operator name of an `A_Expr` (`=`, `<>`, …).
pub(crate) fn operator(a_expr: &Value) -> String {
    names(list(a_expr, "name")).join(".")
}

/// A constant's text as PostgreSQL's lexer produced it, or `None` for NULL
/// and non-constants. Integers that overflow int4 are `Float` nodes
/// carrying their digits, so every literal keeps its exact text.
pub(crate) fn constant_text(a_const: &Value) -> Option<String> {
    if boolean(a_const, "isnull") {
        return None;
    }
    let (kind, val) = child(a_const, "val")?.as_object()?.iter().next()?;
    match kind.as_str() {
        "Ival" => Some(int(val, "ival").to_string()),
        "Fval" => Some(string(val, "fval").to_string()),
        "Sval" => Some(string(val, "sval").to_string()),
        _ => None,
    }
}
