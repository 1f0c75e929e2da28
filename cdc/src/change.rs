//! From decoded row changes to statements for each target.
//!
//! A [`Tables`] cache holds what the stream said about each relation and
//! what the topology says about where its rows live. [`Tables::plan`] turns
//! one insert, update or delete into [`Op`]s: plain statements for one
//! target, or a move between shards when an update changed the shard key.

use std::collections::HashMap;
use std::sync::Arc;

use shardline_topology::{ShardKey, TableName};

use crate::pgoutput::{
    ColumnValue, LogicalMessage, OldTuple, Relation, ReplicaIdentity, TupleData,
};
use crate::route::{Routes, TableRoute};
use crate::rows::{Cell, RowOp, Shape};

/// What to do on the targets for one row change, as SQL text.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Run a statement on one target.
    Exec { target: usize, sql: String },
    /// Move a row from one shard to another (see [`RowPlan::Move`]).
    Move {
        from: usize,
        to: usize,
        table: String,
        columns: Vec<String>,
        values: Vec<Option<Option<Vec<u8>>>>,
        key: Vec<(String, Option<Vec<u8>>)>,
    },
}

/// What to do on the targets for one row change, as data for the appliers.
#[derive(Clone, Debug, PartialEq)]
pub enum RowPlan {
    /// Apply a row change on one target.
    Row { target: usize, op: RowOp },
    /// Move a row from one shard to another. `missing` lists columns whose
    /// value did not change and was not sent (unchanged TOAST): they must be
    /// read from the row on `from` before it is deleted there.
    Move {
        from: usize,
        to: usize,
        table: String,
        columns: Vec<String>,
        values: Vec<Option<Option<Vec<u8>>>>,
        key: Vec<(String, Option<Vec<u8>>)>,
        /// The key finds one row (else it finds identical rows, of which
        /// one moves).
        unique: bool,
    },
}

/// A change the applier cannot place.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChangeError {
    #[error("the stream sent a change for relation {0} before describing it")]
    UnknownRelation(u32),
    #[error("table {table} is published but not listed in any context of the topology")]
    Unlisted { table: String },
    #[error("table {table}: a {op} carries no value for the shard key {column}, so its shard is unknown; run ALTER TABLE {table} REPLICA IDENTITY FULL (or make {column} part of the primary key)")]
    NoShardKey {
        table: String,
        op: &'static str,
        column: String,
    },
    #[error(
        "table {table}: shard key {column} is NULL in a {op}; rows need a shard key to be placed"
    )]
    NullShardKey {
        table: String,
        op: &'static str,
        column: String,
    },
    #[error(
        "table {table}: shard key value {value:?} of column {column} is not a valid key: {why}"
    )]
    BadShardKey {
        table: String,
        column: String,
        value: String,
        why: String,
    },
    #[error("table {table}: replica identity is NOTHING, so its updates and deletes cannot be applied; run ALTER TABLE {table} REPLICA IDENTITY DEFAULT (with a primary key) or FULL")]
    NoReplicaIdentity { table: String },
    #[error("table {table}: column {column} is not valid UTF-8 text")]
    NotUtf8 { table: String, column: String },
    #[error("table {table}: an update gave the GENERATED ALWAYS identity column {column} a new value, which an UPDATE cannot write on the targets; update the row on every target by hand (with OVERRIDING SYSTEM VALUE via DELETE and INSERT), then start cdc again")]
    IdentityChanged { table: String, column: String },
    #[error("table {table}: the source's columns changed ({detail}) without a captured schema change (the DDL capture is off, `[source] ddl = \"stop\"`, or was removed); apply the same change to every target, then start cdc again")]
    ColumnsChanged { table: String, detail: String },
}

/// One relation as the stream described it, with its route.
#[derive(Clone, Debug)]
pub struct Table {
    pub relation: Relation,
    /// The canonical name ([`TableName`]'s display form).
    name: String,
    /// `"schema"."name"`, quoted.
    pub qualified: String,
    pub route: TableRoute,
    /// Column indices identifying a row: the replica identity's columns.
    pub key: Vec<usize>,
    pub shard_key: Option<usize>,
    /// Names, key and quoting shared by every row change of the table.
    pub shape: Arc<Shape>,
}

/// The relations seen so far in this session.
#[derive(Debug, Default)]
pub struct Tables {
    by_id: HashMap<u32, Table>,
    /// Column names of each table as last described, to notice DDL.
    first_columns: HashMap<String, Vec<String>>,
    /// Relations described but not listed, by id: the partitions of a
    /// listed table (pgoutput describes a partition as well as the root it
    /// publishes the partition's rows as), refused only if a change names one.
    unlisted: HashMap<u32, String>,
    /// Tables a carried schema change touched: their next description
    /// may change their columns.
    expected: std::collections::HashSet<String>,
    /// Primary key columns of tables, by `schema.name`: under REPLICA
    /// IDENTITY FULL every column is flagged as identity, but the primary
    /// key alone finds the row on a target (by index, whatever the types).
    primary_keys: HashMap<String, Vec<String>>,
    /// `GENERATED ALWAYS` identity columns of tables, by canonical name.
    identity_always: HashMap<String, Vec<String>>,
}

impl Tables {
    /// Known primary keys make rows of REPLICA IDENTITY FULL tables found
    /// by their key alone.
    pub fn with_primary_keys(primary_keys: HashMap<String, Vec<String>>) -> Self {
        Self {
            primary_keys,
            ..Self::default()
        }
    }

    /// Known `GENERATED ALWAYS` identity columns are left out of updates.
    pub fn with_identity_always(mut self, columns: HashMap<String, Vec<String>>) -> Self {
        self.identity_always = columns;
        self
    }

    /// An empty cache that knows what this one knows of `table`'s keys: for
    /// rows described apart from the stream's relations.
    pub fn alone(&self, table: &str) -> Self {
        let only = |m: &HashMap<String, Vec<String>>| -> HashMap<String, Vec<String>> {
            m.get(table)
                .map(|v| (table.to_string(), v.clone()))
                .into_iter()
                .collect()
        };
        Self {
            primary_keys: only(&self.primary_keys),
            identity_always: only(&self.identity_always),
            ..Self::default()
        }
    }

    /// A carried schema change touched `table` (`schema.name`): its next
    /// description may change its columns.
    pub fn expect_change(&mut self, table: &str) {
        self.expected.insert(table.to_string());
    }

    /// The primary key of `table` after a schema change.
    pub fn set_primary_key(&mut self, table: &str, columns: Vec<String>) {
        if columns.is_empty() {
            self.primary_keys.remove(table);
        } else {
            self.primary_keys.insert(table.to_string(), columns);
        }
    }

    /// Records a Relation message. A table whose column list changed
    /// without a carried schema change before it stops the stream (see
    /// [`ChangeError::ColumnsChanged`]).
    pub fn describe(&mut self, relation: Relation, routes: &Routes) -> Result<(), ChangeError> {
        let table_name = TableName::new(&relation.namespace, &relation.name);
        let name = table_name.to_string();
        let Some(route) = routes.route(&relation.namespace, &relation.name).cloned() else {
            // pgoutput describes a partition next to the partitioned table
            // its changes are published as: only a change of an unlisted
            // table is an error.
            self.unlisted.insert(relation.id, name);
            return Ok(());
        };
        self.unlisted.remove(&relation.id);
        let columns: Vec<String> = relation.columns.iter().map(|c| c.name.clone()).collect();
        let expected = self.expected.remove(&name);
        let first = self
            .first_columns
            .entry(name.clone())
            .or_insert_with(|| columns.clone());
        if expected {
            first.clone_from(&columns);
        }
        if *first != columns {
            let added: Vec<&String> = columns.iter().filter(|c| !first.contains(c)).collect();
            let dropped: Vec<&String> = first.iter().filter(|c| !columns.contains(c)).collect();
            return Err(ChangeError::ColumnsChanged {
                table: name,
                detail: format!("added {added:?}, dropped {dropped:?}"),
            });
        }
        let shard_key = match &route {
            TableRoute::Sharded { key_column, .. } => {
                let missing = || ChangeError::NoShardKey {
                    table: name.clone(),
                    op: "change",
                    column: key_column.clone(),
                };
                let index = columns
                    .iter()
                    .position(|c| c == key_column)
                    .ok_or_else(missing)?;
                // Without the shard key in the replica identity, a delete
                // (or an update moving the row) cannot say where the row was.
                let identity_has_key = relation.replica_identity == ReplicaIdentity::Full
                    || relation.columns[index].is_key;
                if !identity_has_key {
                    return Err(ChangeError::NoShardKey {
                        table: name,
                        op: "delete or key-changing update",
                        column: key_column.clone(),
                    });
                }
                Some(index)
            }
            _ => None,
        };
        let primary_key: Option<Vec<usize>> = self
            .primary_keys
            .get(&name)
            .filter(|_| relation.replica_identity == ReplicaIdentity::Full)
            .and_then(|pk| {
                pk.iter()
                    .map(|k| columns.iter().position(|c| c == k))
                    .collect()
            });
        let unique_key = primary_key.is_some()
            || matches!(
                relation.replica_identity,
                ReplicaIdentity::Default | ReplicaIdentity::Index
            );
        let key = primary_key.unwrap_or_else(|| {
            relation
                .columns
                .iter()
                .enumerate()
                .filter(|(_, c)| c.is_key)
                .map(|(i, _)| i)
                .collect()
        });
        let qualified = table_name.quoted();
        let always = self
            .identity_always
            .get(&name)
            .map(|cols| {
                cols.iter()
                    .filter_map(|c| columns.iter().position(|x| x == c))
                    .collect()
            })
            .unwrap_or_default();
        let shape = Arc::new(Shape {
            qualified: qualified.clone(),
            always,
            columns,
            unique_key: unique_key && !key.is_empty(),
            key: key.clone(),
        });
        self.by_id.insert(
            relation.id,
            Table {
                name,
                relation,
                qualified,
                route,
                key,
                shard_key,
                shape,
            },
        );
        Ok(())
    }

    pub fn get(&self, id: u32) -> Result<&Table, ChangeError> {
        if let Some(table) = self.unlisted.get(&id) {
            return Err(ChangeError::Unlisted {
                table: table.clone(),
            });
        }
        self.by_id.get(&id).ok_or(ChangeError::UnknownRelation(id))
    }

    /// The statements that apply one insert, update or delete.
    pub fn plan(&self, message: &LogicalMessage) -> Result<Vec<Op>, ChangeError> {
        Ok(self
            .plan_rows(message)?
            .into_iter()
            .map(|p| match p {
                RowPlan::Row { target, op } => Op::Exec {
                    target,
                    sql: op.sql(),
                },
                RowPlan::Move {
                    from,
                    to,
                    table,
                    columns,
                    values,
                    key,
                    unique: _,
                } => Op::Move {
                    from,
                    to,
                    table,
                    columns,
                    values,
                    key,
                },
            })
            .collect())
    }

    /// The row changes that apply one insert, update or delete.
    pub fn plan_rows(&self, message: &LogicalMessage) -> Result<Vec<RowPlan>, ChangeError> {
        let each = |targets: Vec<usize>, op: RowOp| -> Vec<RowPlan> {
            let mut plans = Vec::with_capacity(targets.len());
            if let Some((&last, others)) = targets.split_last() {
                for &target in others {
                    plans.push(RowPlan::Row {
                        target,
                        op: op.clone(),
                    });
                }
                plans.push(RowPlan::Row { target: last, op });
            }
            plans
        };
        match message {
            LogicalMessage::Insert { relation, new } => {
                let t = self.get(*relation)?;
                let targets = t.targets_of(new, "insert")?;
                let row = t.values(new)?.into_iter().map(Option::flatten).collect();
                Ok(each(
                    targets,
                    RowOp::Insert {
                        shape: t.shape.clone(),
                        row,
                    },
                ))
            }
            LogicalMessage::Update { relation, old, new } => {
                let t = self.get(*relation)?;
                t.check_identity()?;
                // The old key when it changed (or the whole old row under
                // REPLICA IDENTITY FULL); else the key is in the new row.
                let key_source = old.as_ref().map(OldTuple::data).unwrap_or(new);
                let from = t.targets_of(key_source, "update")?;
                let to = t.targets_of(new, "update")?;
                let key = t.key_cells(key_source)?;
                let values = t.values(new)?;
                if let Some(old) = old {
                    let before = t.values(old.data())?;
                    for &i in &t.shape.always {
                        if let (Some(a), Some(b)) = (&before[i], &values[i]) {
                            if a != b {
                                return Err(ChangeError::IdentityChanged {
                                    table: t.name().to_string(),
                                    column: t.shape.columns[i].clone(),
                                });
                            }
                        }
                    }
                }
                if let (TableRoute::Sharded { .. }, [from], [to]) =
                    (&t.route, from.as_slice(), to.as_slice())
                {
                    if from != to {
                        // Under REPLICA IDENTITY FULL the old row carries
                        // every value, detoasted: an unchanged TOASTed value
                        // is the old one. The move needs no read of it, which
                        // after a restart may find the row already gone from
                        // the old shard and changed (moved, deleted) on the
                        // source.
                        let mut values = values;
                        if let Some(OldTuple::Full(old)) = old {
                            let old = t.values(old)?;
                            for (v, o) in values.iter_mut().zip(old) {
                                if v.is_none() {
                                    *v = o;
                                }
                            }
                        }
                        return Ok(vec![RowPlan::Move {
                            from: *from,
                            to: *to,
                            table: t.qualified.clone(),
                            columns: t.shape.columns.clone(),
                            values: values
                                .iter()
                                .map(|v| v.as_ref().map(|inner| inner.as_ref().map(|b| b.to_vec())))
                                .collect(),
                            key: t
                                .key
                                .iter()
                                .zip(&key)
                                .map(|(&i, v)| {
                                    (t.shape.columns[i].clone(), v.as_ref().map(|b| b.to_vec()))
                                })
                                .collect(),
                            unique: t.shape.unique_key,
                        }]);
                    }
                }
                Ok(each(
                    to,
                    RowOp::Update {
                        shape: t.shape.clone(),
                        new: values,
                        key,
                    },
                ))
            }
            LogicalMessage::Delete { relation, old } => {
                let t = self.get(*relation)?;
                t.check_identity()?;
                let targets = t.targets_of(old.data(), "delete")?;
                let key = t.key_cells(old.data())?;
                Ok(each(
                    targets,
                    RowOp::Delete {
                        shape: t.shape.clone(),
                        key,
                    },
                ))
            }
            _ => Ok(Vec::new()),
        }
    }
}

impl Table {
    /// The table's canonical name ([`TableName`]'s display form).
    pub fn name(&self) -> &str {
        &self.name
    }

    fn check_identity(&self) -> Result<(), ChangeError> {
        if self.relation.replica_identity == ReplicaIdentity::Nothing || self.key.is_empty() {
            return Err(ChangeError::NoReplicaIdentity {
                table: self.name().to_string(),
            });
        }
        Ok(())
    }

    /// Each column's value: `None` for unchanged TOAST (keep what is there),
    /// `Some(None)` for NULL.
    fn values(&self, tuple: &TupleData) -> Result<Vec<Option<Cell>>, ChangeError> {
        tuple
            .0
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                ColumnValue::UnchangedToast => Ok(None),
                ColumnValue::Null => Ok(Some(None)),
                ColumnValue::Text(b) | ColumnValue::Binary(b) => {
                    self.check_utf8(i, b)?;
                    Ok(Some(Some(b.clone())))
                }
            })
            .collect()
    }

    /// The key's values in a row image, in the order of [`Table::key`].
    fn key_cells(&self, tuple: &TupleData) -> Result<Vec<Cell>, ChangeError> {
        self.key
            .iter()
            .map(|&i| match tuple.0.get(i) {
                Some(ColumnValue::Text(b) | ColumnValue::Binary(b)) => {
                    self.check_utf8(i, b)?;
                    Ok(Some(b.clone()))
                }
                _ => Ok(None),
            })
            .collect()
    }

    fn check_utf8(&self, column: usize, value: &[u8]) -> Result<(), ChangeError> {
        match std::str::from_utf8(value) {
            Ok(_) => Ok(()),
            Err(_) => Err(ChangeError::NotUtf8 {
                table: self.name().to_string(),
                column: self
                    .relation
                    .columns
                    .get(column)
                    .map(|c| c.name.clone())
                    .unwrap_or_default(),
            }),
        }
    }

    /// The targets a row image belongs on.
    fn targets_of(&self, tuple: &TupleData, op: &'static str) -> Result<Vec<usize>, ChangeError> {
        match &self.route {
            TableRoute::Single(t) => Ok(vec![*t]),
            TableRoute::Everywhere(ts) => Ok(ts.clone()),
            TableRoute::Sharded {
                key_column,
                placement,
                shards,
            } => {
                let column = key_column.clone();
                let index = self.shard_key.ok_or_else(|| ChangeError::NoShardKey {
                    table: self.name().to_string(),
                    op,
                    column: column.clone(),
                })?;
                let text = match tuple.0.get(index) {
                    Some(ColumnValue::Text(b)) | Some(ColumnValue::Binary(b)) => {
                        String::from_utf8_lossy(b)
                    }
                    Some(ColumnValue::Null) => {
                        return Err(ChangeError::NullShardKey {
                            table: self.name().to_string(),
                            op,
                            column,
                        })
                    }
                    _ => {
                        return Err(ChangeError::NoShardKey {
                            table: self.name().to_string(),
                            op,
                            column,
                        })
                    }
                };
                let key: ShardKey = placement.key_type().parse_key(&text).map_err(|e| {
                    ChangeError::BadShardKey {
                        table: self.name().to_string(),
                        column: column.clone(),
                        value: text.to_string(),
                        why: e.to_string(),
                    }
                })?;
                Ok(vec![shards[placement.shard(&key)]])
            }
        }
    }
}

#[cfg(test)]
mod tests;
