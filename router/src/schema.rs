//! The part of the topology routing needs: which context each table
//! belongs to, and how the sharded contexts place their keys.

use std::collections::HashMap;

use shardline_topology::{ContextKind, Placement, ShardKeyType, TableName, Topology};

/// How a table is laid out in its context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Split over the shards by the context's shard key.
    Sharded,
    /// Copied whole to every shard of a sharded context.
    Replicated,
    /// In the one database of an unsharded context.
    Whole,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct TableInfo {
    pub context: usize,
    pub role: Role,
}

/// A context as the router sees it.
#[derive(Clone, Debug)]
pub struct ContextInfo {
    pub name: String,
    /// Shard key column and placement, for a sharded context.
    pub sharding: Option<(String, Placement)>,
    /// Number of databases: the shards, or 1.
    pub databases: usize,
}

#[derive(Clone, Debug)]
pub struct Schema {
    tables: HashMap<TableName, TableInfo>,
    pub(crate) contexts: Vec<ContextInfo>,
}

impl Schema {
    pub fn new(topology: &Topology) -> Self {
        let mut tables = HashMap::new();
        let mut contexts = Vec::new();
        for (i, c) in topology.contexts.iter().enumerate() {
            let (sharding, databases, replicated) = match &c.kind {
                ContextKind::Sharded {
                    shard_key,
                    placement,
                    shards,
                    reference_tables,
                } => (
                    Some((shard_key.clone(), placement.clone())),
                    shards.len(),
                    reference_tables.clone(),
                ),
                ContextKind::Single { .. } => (None, 1, Vec::new()),
            };
            let role = if sharding.is_some() {
                Role::Sharded
            } else {
                Role::Whole
            };
            for t in &c.tables {
                tables.insert(t.clone(), TableInfo { context: i, role });
            }
            for t in replicated {
                tables.insert(
                    t,
                    TableInfo {
                        context: i,
                        role: Role::Replicated,
                    },
                );
            }
            contexts.push(ContextInfo {
                name: c.name.clone(),
                sharding,
                databases,
            });
        }
        Self { tables, contexts }
    }

    /// A table by the name a statement used, in [`TableName`]'s SQL
    /// syntax (`payments`, `public.payments`, `"Payments"`), matched
    /// exactly as PostgreSQL matches names. A partition is not its parent:
    /// statements name the table the topology lists.
    pub(crate) fn table(&self, name: &str) -> Option<TableInfo> {
        self.tables.get(&TableName::parse(name).ok()?).copied()
    }

    /// System catalogs exist in every database and belong to no context.
    pub(crate) fn is_catalog(&self, name: &str) -> bool {
        let Ok(t) = TableName::parse(name) else {
            return false;
        };
        t.schema == "pg_catalog"
            || t.schema == "information_schema"
            || (t.name.starts_with("pg_") && !self.tables.contains_key(&t))
    }

    pub fn context_index(&self, name: &str) -> Option<usize> {
        self.contexts.iter().position(|c| c.name == name)
    }

    pub fn contexts(&self) -> &[ContextInfo] {
        &self.contexts
    }

    pub fn context(&self, index: usize) -> &ContextInfo {
        &self.contexts[index]
    }

    pub(crate) fn shard_key(&self, table: &str) -> Option<&str> {
        let info = self.table(table)?;
        self.contexts[info.context]
            .sharding
            .as_ref()
            .map(|(k, _)| k.as_str())
    }

    pub(crate) fn key_type(&self, table: &str) -> Option<ShardKeyType> {
        let info = self.table(table)?;
        self.contexts[info.context]
            .sharding
            .as_ref()
            .map(|(_, p)| p.key_type())
    }

    /// The one sharded context `SET shardline.merchant_id` applies to.
    pub fn override_context(&self) -> Option<usize> {
        let mut sharded = self
            .contexts
            .iter()
            .enumerate()
            .filter(|(_, c)| c.sharding.is_some());
        match (sharded.next(), sharded.next()) {
            (Some((i, _)), None) => Some(i),
            _ => None,
        }
    }

    pub(crate) fn override_key_type(&self) -> Option<ShardKeyType> {
        let i = self.override_context()?;
        self.contexts[i]
            .sharding
            .as_ref()
            .map(|(_, p)| p.key_type())
    }
}
