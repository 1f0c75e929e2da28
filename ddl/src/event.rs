//! One row of the DDL log as the stream delivers it.

use serde::Deserialize;
use shardline_topology::TableName;

use crate::DdlError;

/// Which event trigger wrote the row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// `ddl_command_end`: a command finished; `objects` are what it
    /// created or altered.
    CommandEnd,
    /// `sql_drop`: what a command dropped (logged just before its
    /// `ddl_command_end`).
    Drop,
}

/// A database object a command touched, as the event trigger saw it.
#[derive(Clone, Debug, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct Object {
    /// PostgreSQL's object type: `table`, `table column`, `index`, `type`…
    #[serde(rename = "type")]
    pub kind: String,
    pub identity: Option<String>,
    pub schema: Option<String>,
    /// The table it belongs to (itself for a table), as
    /// [`TableName`]'s display form.
    pub table: Option<String>,
    /// Dropped objects: PostgreSQL's address names.
    #[serde(default)]
    pub address: Option<Vec<String>>,
}

/// A column of a touched table after the command.
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct ColumnState {
    pub name: String,
    #[serde(rename = "type")]
    pub sql_type: String,
    /// Rows that existed when the column was added with a default read
    /// this value (`attmissingval`): no rewrite gave each its own.
    #[serde(default)]
    pub has_missing: bool,
    /// That value as text, when it could be read.
    pub missing: Option<String>,
}

/// A touched table after the command.
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct TableState {
    pub schema: String,
    pub name: String,
    #[serde(default)]
    pub partitioned: bool,
    /// The partitioned table it is a partition of ([`TableName`]'s
    /// display form).
    pub parent: Option<String>,
    #[serde(default)]
    pub primary_key: Vec<String>,
    #[serde(default)]
    pub columns: Vec<ColumnState>,
}

impl TableState {
    /// The table as [`TableName`] displays it: the one string per table
    /// that the planner and cdc compare.
    pub fn qualified(&self) -> String {
        TableName::new(&self.schema, &self.name).to_string()
    }

    pub fn column(&self, name: &str) -> Option<&ColumnState> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// What an `ALTER TABLE` did to a partitioned table's partitions, as the
/// capture saw it: the rows of `partition` joined or left `parent` (and its
/// root, whose rows the stream publishes) without row changes in the
/// stream, so they follow the log row as logical messages.
#[derive(Clone, Debug, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct PartitionChange {
    /// `attach`, `detach`, or `unknown` (the capture could not tell).
    pub op: String,
    /// [`TableName`]'s display form, as the others.
    #[serde(default)]
    pub partition: String,
    #[serde(default)]
    pub parent: String,
    #[serde(default)]
    pub root: String,
    /// The root's columns as each row message lists their values.
    #[serde(default)]
    pub columns: Vec<String>,
    /// The root's `relreplident`.
    #[serde(default)]
    pub replica_identity: String,
    /// The columns of the root's replica identity (primary key or index).
    #[serde(default)]
    pub identity: Vec<String>,
}

/// One captured DDL command.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Captured {
    /// The log row's id: what `shardline cdc skip-ddl` names.
    pub id: i64,
    pub event: Event,
    /// PostgreSQL's command tag, such as `ALTER TABLE`.
    pub tag: String,
    /// The client's whole query (all its statements).
    pub query: String,
    /// The command's place among the query's commands with this tag.
    pub ordinal: i32,
    pub search_path: String,
    /// The role that ran it.
    pub role: String,
    pub objects: Vec<Object>,
    pub tables: Vec<TableState>,
    /// Partitions an `ALTER TABLE` attached or detached; their rows follow
    /// as logical messages, `part` naming the index here.
    pub partitions: Vec<PartitionChange>,
    /// The capture failed: the command is unknown.
    pub error: Option<String>,
}

impl Captured {
    /// Reads a log row from its columns' text values, looked up by name.
    pub fn from_row<'a>(value: impl Fn(&str) -> Option<&'a str>) -> Result<Self, DdlError> {
        let text = |name: &str| value(name).unwrap_or_default().to_string();
        let bad = |column: &str, why: String| DdlError::BadLogRow {
            column: column.to_string(),
            why,
        };
        let id = text("id")
            .parse()
            .map_err(|e: std::num::ParseIntError| bad("id", e.to_string()))?;
        let event = match text("event").as_str() {
            "sql_drop" => Event::Drop,
            "ddl_command_end" => Event::CommandEnd,
            other => return Err(bad("event", format!("unknown event {other:?}"))),
        };
        let json = |name: &str| value(name).filter(|v| !v.is_empty()).unwrap_or("[]");
        let mut objects: Vec<Object> =
            serde_json::from_str(json("objects")).map_err(|e| bad("objects", e.to_string()))?;
        let mut tables: Vec<TableState> =
            serde_json::from_str(json("tables")).map_err(|e| bad("tables", e.to_string()))?;
        let mut partitions: Vec<PartitionChange> = serde_json::from_str(json("partition_rows"))
            .map_err(|e| bad("partition_rows", e.to_string()))?;
        // Names arrive as the source quoted them; one spelling from here on.
        for p in &mut partitions {
            for name in [&mut p.partition, &mut p.parent, &mut p.root] {
                *name = canonical(name);
            }
        }
        for o in &mut objects {
            o.table = o.table.take().map(|t| canonical(&t));
        }
        for t in &mut tables {
            t.parent = t.parent.take().map(|p| canonical(&p));
        }
        Ok(Self {
            id,
            event,
            tag: text("command_tag"),
            query: text("query"),
            ordinal: text("ordinal").parse().unwrap_or(-1),
            search_path: text("search_path"),
            role: text("role"),
            objects,
            tables,
            partitions,
            error: value("error").map(str::to_string),
        })
    }

    /// The tables the command touched, `schema.name`, each once.
    pub fn touched_tables(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for t in self
            .objects
            .iter()
            .filter_map(|o| o.table.clone())
            .chain(self.tables.iter().map(TableState::qualified))
        {
            if !out.contains(&t) {
                out.push(t);
            }
        }
        out
    }

    pub fn table(&self, qualified: &str) -> Option<&TableState> {
        self.tables.iter().find(|t| t.qualified() == qualified)
    }
}

/// A table name as PostgreSQL's `quote_ident` wrote it, in [`TableName`]'s
/// display form.
fn canonical(quoted: &str) -> String {
    TableName::parse(quoted)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| quoted.to_string())
}
