//! The rows of a partition an `ALTER TABLE` attached or detached on the
//! source. They joined or left the listed table with no row changes in the
//! stream; the capture sends each as a transactional logical message right
//! after the command's log row (see the `shardline-ddl` crate). Each becomes
//! an insert or a delete of the listed table, described as the capture saw
//! it at that point, and goes the way of any row change of that table:
//! routed by the shard key, to read models, in the same target transaction.
//! One message at a time: memory does not grow with the partition.

use bytes::Bytes;
use serde::Deserialize;
use shardline_ddl::{Captured, PartitionChange, Replay};
use shardline_topology::TableName;

use crate::change::Tables;
use crate::pgoutput::{
    ColumnValue, LogicalMessage, OldTuple, Relation, RelationColumn, ReplicaIdentity, TupleData,
};
use crate::route::Routes;
use crate::run::CdcError;

/// The rows expected after one captured command.
pub(super) struct Expected {
    ddl: i64,
    parts: Vec<Part>,
}

struct Part {
    part: usize,
    delete: bool,
    /// The listed table alone, described as the capture recorded it.
    table: Tables,
}

/// A row message as a row change of the listed table.
pub struct Replayed<'a> {
    /// The listed table alone, as the capture described it.
    pub tables: &'a Tables,
    pub message: LogicalMessage,
    /// The table's relation id in `tables`.
    pub relation: u32,
    /// Which of the command's partition changes the row belongs to.
    pub part: usize,
}

/// One row message: the log row it follows, which of its partition
/// changes, and the values in the order that change lists its columns.
#[derive(Deserialize)]
struct RowMessage {
    ddl: i64,
    part: usize,
    row: Vec<Option<String>>,
}

/// Stands for the listed table in its own [`Tables`]: no real relation
/// of the stream shares it.
const RELATION: u32 = u32::MAX;

impl Expected {
    pub(super) fn new(
        c: &Captured,
        replays: &[Replay],
        tables: &Tables,
        routes: &Routes,
    ) -> Result<Self, CdcError> {
        let mut parts = Vec::new();
        for r in replays {
            let Some(change) = c.partitions.get(r.part) else {
                return Err(CdcError::Stream(format!(
                    "DDL log row {}: no partition change {} for its rows",
                    c.id, r.part
                )));
            };
            let mut table = tables.alone(&r.table);
            table.describe(relation(&r.table, change), routes)?;
            parts.push(Part {
                part: r.part,
                delete: r.delete,
                table,
            });
        }
        Ok(Self { ddl: c.id, parts })
    }

    /// The row change a message carries, with the table it is planned
    /// on; `None` for the rows of a command not carried.
    pub(super) fn row(&self, content: &Bytes) -> Result<Option<Replayed<'_>>, CdcError> {
        let message: RowMessage = serde_json::from_slice(content).map_err(|e| {
            CdcError::Stream(format!(
                "a row message of a partition change cannot be read: {e}"
            ))
        })?;
        if message.ddl != self.ddl {
            return Ok(None);
        }
        let Some(part) = self.parts.iter().find(|p| p.part == message.part) else {
            return Ok(None);
        };
        let columns = part.table.get(RELATION)?.relation.columns.len();
        if message.row.len() != columns {
            return Err(CdcError::Stream(format!(
                "DDL log row {}: a row message holds {} values for {columns} columns",
                self.ddl,
                message.row.len()
            )));
        }
        let tuple = TupleData(
            message
                .row
                .into_iter()
                .map(|v| match v {
                    Some(text) => ColumnValue::Text(Bytes::from(text)),
                    None => ColumnValue::Null,
                })
                .collect(),
        );
        let change = if part.delete {
            LogicalMessage::Delete {
                relation: RELATION,
                old: OldTuple::Full(tuple),
            }
        } else {
            LogicalMessage::Insert {
                relation: RELATION,
                new: tuple,
            }
        };
        Ok(Some(Replayed {
            tables: &part.table,
            message: change,
            relation: RELATION,
            part: part.part,
        }))
    }
}

/// The listed table as the stream would describe it at the command.
fn relation(table: &str, change: &PartitionChange) -> Relation {
    let name = TableName::parse(table).unwrap_or_else(|_| TableName::new("public", table));
    let replica_identity = match change.replica_identity.as_str() {
        "f" => ReplicaIdentity::Full,
        "n" => ReplicaIdentity::Nothing,
        "i" => ReplicaIdentity::Index,
        _ => ReplicaIdentity::Default,
    };
    Relation {
        id: RELATION,
        namespace: name.schema,
        name: name.name,
        replica_identity,
        columns: change
            .columns
            .iter()
            .map(|c| RelationColumn {
                is_key: replica_identity == ReplicaIdentity::Full || change.identity.contains(c),
                name: c.clone(),
                // Rows travel as text; the applier casts by the target's
                // column types.
                type_oid: 0,
                type_modifier: -1,
            })
            .collect(),
    }
}
