//! Where a source table's changes go: which target databases, and for a
//! sharded table, how a row's shard key picks one of them.

use std::collections::HashMap;

use shardline_topology::{ConnString, ContextKind, Placement, TableName, Topology};

/// How one table's rows map onto targets (indices into [`Routes::targets`]).
#[derive(Clone, Debug)]
pub enum TableRoute {
    /// Each row goes to the shard its key's bucket belongs to.
    Sharded {
        key_column: String,
        placement: Placement,
        /// Target index of each shard, in shard order.
        shards: Vec<usize>,
    },
    /// Every row goes to one database.
    Single(usize),
    /// Every row goes to every listed database (reference tables).
    Everywhere(Vec<usize>),
}

impl TableRoute {
    /// Every target this table can touch.
    pub fn targets(&self) -> Vec<usize> {
        match self {
            Self::Sharded { shards, .. } => shards.clone(),
            Self::Single(t) => vec![*t],
            Self::Everywhere(ts) => ts.clone(),
        }
    }
}

/// The targets of a topology and each listed table's route.
#[derive(Clone, Debug)]
pub struct Routes {
    pub targets: Vec<ConnString>,
    /// The context each target belongs to.
    pub target_context: Vec<String>,
    tables: HashMap<TableName, TableRoute>,
    /// Schema changes are captured on the source and carried
    /// (`[source] ddl = "capture"`).
    pub ddl_capture: bool,
}

impl Routes {
    pub fn from_topology(topology: &Topology) -> Self {
        let mut routes = Routes {
            targets: Vec::new(),
            target_context: Vec::new(),
            tables: HashMap::new(),
            ddl_capture: topology.ddl == shardline_topology::DdlMode::Capture,
        };
        for context in &topology.contexts {
            let ids: Vec<usize> = context
                .databases()
                .into_iter()
                .map(|db| routes.target_id(db, &context.name))
                .collect();
            match &context.kind {
                ContextKind::Sharded {
                    shard_key,
                    placement,
                    reference_tables,
                    ..
                } => {
                    for table in &context.tables {
                        let route = TableRoute::Sharded {
                            key_column: shard_key.clone(),
                            placement: placement.clone(),
                            shards: ids.clone(),
                        };
                        routes.tables.insert(table.clone(), route);
                    }
                    for table in reference_tables {
                        routes
                            .tables
                            .insert(table.clone(), TableRoute::Everywhere(ids.clone()));
                    }
                }
                ContextKind::Single { .. } => {
                    for table in &context.tables {
                        routes
                            .tables
                            .insert(table.clone(), TableRoute::Single(ids[0]));
                    }
                }
            }
        }
        routes
    }

    fn target_id(&mut self, db: &ConnString, context: &str) -> usize {
        if let Some(i) = self.target_of(db) {
            return i;
        }
        self.targets.push(db.clone());
        self.target_context.push(context.to_string());
        self.targets.len() - 1
    }

    /// The index of a database among the targets.
    pub fn target_of(&self, db: &ConnString) -> Option<usize> {
        self.targets
            .iter()
            .position(|t| t.identity() == db.identity())
    }

    /// The route of a table, by its catalog spelling (a Relation
    /// message's namespace and name).
    pub fn route(&self, namespace: &str, name: &str) -> Option<&TableRoute> {
        self.tables.get(&TableName::new(namespace, name))
    }

    /// The route of a table.
    pub fn route_of(&self, table: &TableName) -> Option<&TableRoute> {
        self.tables.get(table)
    }

    /// Every listed table.
    pub fn tables(&self) -> impl Iterator<Item = (&TableName, &TableRoute)> {
        self.tables.iter()
    }
}
