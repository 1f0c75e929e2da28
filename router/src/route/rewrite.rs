//! Statements rewritten for the shards, from their parse tree: a
//! multi-row INSERT split by shard, a SELECT without its OFFSET, avg()
//! split into sum and count. Each is deparsed back to SQL.

use std::collections::BTreeSet;

use pg_query::protobuf;
use pg_query::NodeEnum;

use crate::error::RouteError;
use crate::merge::{Aggregate, Output};

/// One INSERT statement per shard, each with that shard's VALUES rows, in
/// their original order.
pub(super) fn split_insert(
    tree: &protobuf::ParseResult,
    index: usize,
    row_shards: &[usize],
) -> Result<Vec<(usize, String)>, RouteError> {
    let shards: BTreeSet<usize> = row_shards.iter().copied().collect();
    let raw = &tree.stmts[index];
    shards
        .into_iter()
        .map(|shard| {
            let mut raw = raw.clone();
            let values = raw
                .stmt
                .as_mut()
                .and_then(|s| s.node.as_mut())
                .and_then(|n| match n {
                    NodeEnum::InsertStmt(ins) => ins.select_stmt.as_mut(),
                    _ => None,
                })
                .and_then(|s| s.node.as_mut())
                .and_then(|n| match n {
                    NodeEnum::SelectStmt(sel) => Some(&mut sel.values_lists),
                    _ => None,
                })
                .ok_or_else(|| RouteError::Unsupported {
                    statement: "this INSERT form".into(),
                })?;
            let mut row = 0;
            values.retain(|_| {
                let keep = row_shards[row] == shard;
                row += 1;
                keep
            });
            let sql = pg_query::deparse(&protobuf::ParseResult {
                version: tree.version,
                stmts: vec![raw],
            })
            .map_err(|e| RouteError::Syntax {
                message: e.to_string(),
            })?;
            Ok((shard, sql))
        })
        .collect()
}

/// A SELECT without its OFFSET and with `LIMIT count` (none when `None`):
/// what each shard runs so the merged stream can skip the offset itself.
pub(super) fn without_offset(
    tree: &protobuf::ParseResult,
    index: usize,
    count: Option<u64>,
) -> Result<String, RouteError> {
    let mut raw = tree.stmts[index].clone();
    let Some(NodeEnum::SelectStmt(sel)) = raw.stmt.as_mut().and_then(|s| s.node.as_mut()) else {
        return Err(RouteError::Unsupported {
            statement: "this SELECT form with OFFSET across shards".into(),
        });
    };
    sel.limit_offset = None;
    sel.limit_count = count.map(|n| {
        let val = match i32::try_from(n) {
            Ok(i) => protobuf::a_const::Val::Ival(protobuf::Integer { ival: i }),
            Err(_) => protobuf::a_const::Val::Fval(protobuf::Float {
                fval: n.to_string(),
            }),
        };
        Box::new(protobuf::Node {
            node: Some(NodeEnum::AConst(protobuf::AConst {
                isnull: false,
                location: -1,
                val: Some(val),
            })),
        })
    });
    pg_query::deparse(&protobuf::ParseResult {
        version: tree.version,
        stmts: vec![raw],
    })
    .map_err(|e| RouteError::Syntax {
        message: e.to_string(),
    })
}

/// A SELECT with each avg(x) output column split into `sum(x) AS <its
/// name>, count(x)`, the same call (FILTER included) under both names.
pub(super) fn split_avg(
    tree: &protobuf::ParseResult,
    index: usize,
    outputs: &[Output],
) -> Result<String, RouteError> {
    let unsupported = || RouteError::Unsupported {
        statement: "this avg() form across shards".into(),
    };
    let mut raw = tree.stmts[index].clone();
    let Some(NodeEnum::SelectStmt(sel)) = raw.stmt.as_mut().and_then(|s| s.node.as_mut()) else {
        return Err(unsupported());
    };
    let name = |n: &str| protobuf::Node {
        node: Some(NodeEnum::String(protobuf::String { sval: n.into() })),
    };
    let mut targets = Vec::with_capacity(sel.target_list.len() + 1);
    for (t, o) in std::mem::take(&mut sel.target_list)
        .into_iter()
        .zip(outputs)
    {
        if *o != Output::Aggregate(Aggregate::Avg) {
            targets.push(t);
            continue;
        }
        let Some(NodeEnum::ResTarget(rt)) = &t.node else {
            return Err(unsupported());
        };
        let Some(NodeEnum::FuncCall(call)) = rt.val.as_ref().and_then(|v| v.node.as_ref()) else {
            return Err(unsupported());
        };
        for (func, column) in [
            (
                "sum",
                if rt.name.is_empty() {
                    "avg"
                } else {
                    rt.name.as_str()
                },
            ),
            ("count", "count"),
        ] {
            let mut call = call.clone();
            call.funcname = vec![name(func)];
            let mut part = rt.clone();
            part.name = column.to_string();
            part.val = Some(Box::new(protobuf::Node {
                node: Some(NodeEnum::FuncCall(call)),
            }));
            targets.push(protobuf::Node {
                node: Some(NodeEnum::ResTarget(part)),
            });
        }
    }
    sel.target_list = targets;
    pg_query::deparse(&protobuf::ParseResult {
        version: tree.version,
        stmts: vec![raw],
    })
    .map_err(|e| RouteError::Syntax {
        message: e.to_string(),
    })
}
