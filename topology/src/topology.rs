//! The topology file: the source, the bounded contexts and their tables, the
//! read models and the router's users.
//!
//! Loading happens in two steps: serde reads the TOML into raw structs that
//! refuse unknown keys, then [`Topology::validate`] checks every rule and
//! reports *all* broken ones, each with its dotted key and line.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::conn::ConnString;
use crate::name::TableName;
use crate::placement::{Placement, ShardKeyType, DEFAULT_BUCKETS};

mod colname;
mod router;

pub use colname::{output_name, split_alias};

use router::RawRouter;
/// The router's pooling keys and limits, with their defaults.
pub use router::{
    PoolMode, RouterLimits, DEFAULT_BACKEND_READ_TIMEOUT, DEFAULT_IDLE_CLIENT_TIMEOUT,
    DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT, DEFAULT_LOGIN_TIMEOUT, DEFAULT_MAX_CLIENT_BUFFER_BYTES,
    DEFAULT_MAX_CLIENT_CONN, DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_POOL_MODE, DEFAULT_POOL_SIZE,
    DEFAULT_POOL_TIMEOUT,
};
pub use router::{RouterConfig, RouterTls, RouterUser, Secret, DEFAULT_ROUTER_LISTEN};

/// The context read models are kept in unless they name another.
pub const DEFAULT_READ_MODEL_CONTEXT: &str = "analytics";

/// How often CDC commits a context's changes when the topology does not
/// say: continuously (`None`), each source transaction as soon as it is
/// complete, so the context lags the source as little as possible.
pub const DEFAULT_APPLY_INTERVAL: Option<std::time::Duration> = None;

/// The longest `apply_interval`: CDC's slot cannot be confirmed past
/// changes a context holds back, so the source keeps their WAL meanwhile.
pub const MAX_APPLY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// A validated topology.
#[derive(Clone, Debug)]
pub struct Topology {
    pub path: PathBuf,
    pub source: ConnString,
    pub contexts: Vec<Context>,
    pub read_models: Vec<ReadModel>,
    pub router: RouterConfig,
    pub cutover: CutoverConfig,
    pub cdc: CdcConfig,
    /// What cdc does with the source's schema changes (`[source] ddl`).
    pub ddl: DdlMode,
}

/// `[source] ddl`: schema changes on the source while cdc streams.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DdlMode {
    /// An event trigger captures each DDL command into the stream and cdc
    /// applies it on the targets (needs a superuser to install).
    #[default]
    Capture,
    /// Nothing is installed; cdc stops when a table's columns change.
    Stop,
}

/// `[cdc]`: how CDC treats a target that is not as the source had it, and
/// when a target's group of source transactions commits.
#[derive(Clone, Copy, Debug)]
pub struct CdcConfig {
    pub on_divergence: OnDivergence,
    /// `group_wait`: the longest a complete source transaction waits in a
    /// target's open group for more of the stream (a group commits sooner
    /// when the server says the stream has caught up).
    pub group_wait: std::time::Duration,
    /// `group_changes`: a target's group commits once it holds this many
    /// row changes.
    pub group_changes: usize,
}

/// Long enough that a backlog commits in a few dozen groups a second per
/// target instead of one per source transaction (each commit costs the
/// target a flush and a progress mark); short enough that a stream whose
/// server sends no "caught up" keepalive still lags only this much.
pub const DEFAULT_GROUP_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

/// The longest `group_wait`: a group holds its rows' locks on the target
/// and the slot's confirmed position back while it waits.
pub const MAX_GROUP_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Large enough that size rarely closes a group before its wait ends,
/// small enough that a group's locks and its redo on a crash stay modest.
pub const DEFAULT_GROUP_CHANGES: usize = 20_000;

impl Default for CdcConfig {
    fn default() -> Self {
        Self {
            on_divergence: OnDivergence::default(),
            group_wait: DEFAULT_GROUP_WAIT,
            group_changes: DEFAULT_GROUP_CHANGES,
        }
    }
}

/// What CDC does when an UPDATE or DELETE matches no row on a target (or a
/// read-model group would go below zero): the target diverged from the
/// source before this change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDivergence {
    /// Stop, naming the table, key and target, before anything of the
    /// change's target transaction commits (the default: a diverged target
    /// needs a person).
    #[default]
    Stop,
    /// Record it on the target (`shardline.cdc_divergence`), count it in
    /// `cdc status` and the metrics, and go on.
    Count,
}

/// `[cutover]`: whether routers take each bucket's owner (the monolith or
/// the shards) from the cutover state kept in the monolith.
#[derive(Clone, Debug, Default)]
pub struct CutoverConfig {
    /// Off by default: a router then sends every statement to the shards.
    pub enabled: bool,
}

/// A bounded context: a set of tables and where they live.
#[derive(Clone, Debug)]
pub struct Context {
    pub name: String,
    pub tables: Vec<TableName>,
    pub kind: ContextKind,
    /// CDC commits this context's changes at most this often (`None`:
    /// continuously). Eventually consistent by design, such as settlements
    /// every five minutes.
    pub apply_interval: Option<std::time::Duration>,
    /// How partitioned source tables are laid out on this context's databases.
    pub partitioning: Partitioning,
    /// Objects of this context's tables the targets may do without
    /// (constraints, indexes, triggers, policies, rules, by name): what
    /// backfill would otherwise refuse to leave behind.
    pub skip_objects: Vec<String>,
}

/// `partitioning` of a context.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Partitioning {
    /// A partitioned source table becomes one plain table (the default:
    /// shards are small enough, and nothing has to follow new partitions).
    #[default]
    Plain,
    /// Targets keep the source's partitioned parent and its partitions,
    /// with the same bounds (for retention by dropping old partitions).
    Source,
}

#[derive(Clone, Debug)]
pub enum ContextKind {
    /// Tables split by `shard_key` over `shards`.
    Sharded {
        shard_key: String,
        placement: Placement,
        shards: Vec<ConnString>,
        /// Small tables copied whole to every shard.
        reference_tables: Vec<TableName>,
    },
    /// Tables kept whole in one database.
    Single { url: ConnString },
}

impl Context {
    /// Every database of this context, shard order for sharded ones.
    pub fn databases(&self) -> Vec<&ConnString> {
        match &self.kind {
            ContextKind::Sharded { shards, .. } => shards.iter().collect(),
            ContextKind::Single { url } => vec![url],
        }
    }

    pub fn is_sharded(&self) -> bool {
        matches!(self.kind, ContextKind::Sharded { .. })
    }
}

/// A CQRS projection: a group-by over one source table, kept in a context.
#[derive(Clone, Debug, PartialEq)]
pub struct ReadModel {
    pub name: String,
    pub from: TableName,
    pub filter: Option<String>,
    pub group_by: Vec<String>,
    pub aggregates: Vec<String>,
    pub context: String,
}

impl ReadModel {
    /// The query that computes the read model from its source table:
    /// `SELECT <group_by>, <aggregates> FROM <from> WHERE <where> GROUP BY …`.
    pub fn query(&self) -> String {
        let positions: Vec<String> = (1..=self.group_by.len()).map(|i| i.to_string()).collect();
        let filter = self
            .filter
            .as_deref()
            .map(|f| format!(" WHERE {f}"))
            .unwrap_or_default();
        format!(
            "SELECT {}, {} FROM {}{filter} GROUP BY {}",
            self.group_by.join(", "),
            self.aggregates.join(", "),
            self.from.quoted(),
            positions.join(", ")
        )
    }

    /// The read model's table in its context (`public.<name>`).
    pub fn table(&self) -> TableName {
        TableName::new(crate::DEFAULT_SCHEMA, self.name.clone())
    }

    /// The names of the group columns (`expr AS name` → `name`): the read
    /// model table's key.
    pub fn group_columns(&self) -> Vec<String> {
        self.group_by.iter().map(|g| output_name(g)).collect()
    }
}

/// One broken rule of a topology file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key, such as `contexts.transactions.shards[2]`.
    pub key: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}: {}", self.key, self.message),
            None => write!(f, "{}: {}", self.key, self.message),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TopologyError {
    #[error("cannot read topology file {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}: {} problem{}:\n{}", problems.len(), if problems.len() == 1 { "" } else { "s" }, list(problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl TopologyError {
    pub fn hint(&self) -> &'static str {
        match self {
            Self::Read { .. } => {
                "pass --config FILE, set SHARDLINE_CONFIG, or run `shardline dev up` to write one for a local fleet"
            }
            Self::Syntax { .. } | Self::Invalid { .. } => "see the Topology section of the README for every key",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTopology {
    source: Option<RawSource>,
    #[serde(default)]
    contexts: BTreeMap<String, RawContext>,
    #[serde(default)]
    read_models: Vec<RawReadModel>,
    router: Option<RawRouter>,
    cutover: Option<RawCutover>,
    cdc: Option<RawCdc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCdc {
    #[serde(default)]
    on_divergence: OnDivergence,
    group_wait: Option<String>,
    group_changes: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCutover {
    #[serde(default)]
    enabled: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    url: String,
    ddl: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawContext {
    #[serde(default)]
    tables: Vec<String>,
    shard_key: Option<String>,
    shard_key_type: Option<String>,
    shards: Option<Vec<String>>,
    url: Option<String>,
    buckets: Option<u32>,
    bucket_ranges: Option<Vec<String>>,
    #[serde(default)]
    reference_tables: Vec<String>,
    apply_interval: Option<String>,
    partitioning: Option<String>,
    #[serde(default)]
    skip_objects: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReadModel {
    name: String,
    from: String,
    #[serde(rename = "where")]
    filter: Option<String>,
    group_by: Vec<String>,
    aggregates: Vec<String>,
    context: Option<String>,
}

impl Topology {
    /// Reads and validates a topology file.
    pub fn load(path: &Path) -> Result<Self, TopologyError> {
        let text = std::fs::read_to_string(path).map_err(|cause| TopologyError::Read {
            path: path.to_path_buf(),
            cause,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates topology text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, TopologyError> {
        let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let doc = toml_edit::Document::parse(text).map_err(|e| TopologyError::Syntax {
            path: path.to_path_buf(),
            line: e.span().map(|s| line_of(s.start)).unwrap_or(1),
            message: first_line(e.message()),
        })?;
        let raw: RawTopology =
            toml_edit::de::from_str::<RawTopology>(text).map_err(|e| TopologyError::Syntax {
                path: path.to_path_buf(),
                line: e.span().map(|s| line_of(s.start)).unwrap_or(1),
                message: first_line(e.message()),
            })?;
        let mut v = Validator {
            doc: &doc,
            line_of: &line_of,
            problems: Vec::new(),
        };
        let topology = v.topology(raw, path);
        match topology {
            Some(t) if v.problems.is_empty() => Ok(t),
            _ => Err(TopologyError::Invalid {
                path: path.to_path_buf(),
                problems: v.problems,
            }),
        }
    }

    pub fn context(&self, name: &str) -> Option<&Context> {
        self.contexts.iter().find(|c| c.name == name)
    }

    /// The context a table belongs to, as listed (reference tables of a
    /// sharded context count as belonging to it).
    pub fn context_of_table(&self, table: &TableName) -> Option<&Context> {
        self.contexts.iter().find(|c| {
            c.tables.iter().any(|t| t == table)
                || matches!(&c.kind, ContextKind::Sharded { reference_tables, .. } if reference_tables.iter().any(|t| t == table))
        })
    }

    /// The sharded context, when there is exactly one.
    pub fn sharded_context(&self) -> Option<&Context> {
        let mut sharded = self.contexts.iter().filter(|c| c.is_sharded());
        match (sharded.next(), sharded.next()) {
            (Some(c), None) => Some(c),
            _ => None,
        }
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().trim().to_string()
}

enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

struct Validator<'a> {
    doc: &'a toml_edit::Document<&'a str>,
    line_of: &'a dyn Fn(usize) -> usize,
    problems: Vec<Problem>,
}

impl Validator<'_> {
    fn problem(&mut self, path: &[Seg], message: impl Into<String>) {
        let mut key = String::new();
        for seg in path {
            match seg {
                Seg::Key(k) if key.is_empty() => key.push_str(k),
                Seg::Key(k) => {
                    key.push('.');
                    key.push_str(k);
                }
                Seg::Index(i) => key.push_str(&format!("[{i}]")),
            }
        }
        let line = self.line(path);
        self.problems.push(Problem {
            key,
            line,
            message: message.into(),
        });
    }

    /// The line of the deepest part of `path` present in the document.
    fn line(&self, path: &[Seg]) -> Option<usize> {
        self.doc.as_table().line_of_path(path, self.line_of)
    }

    fn conn(&mut self, path: &[Seg], url: &str) -> Option<ConnString> {
        match ConnString::parse(url) {
            Ok(c) => Some(c),
            Err(e) => {
                self.problem(path, e.to_string());
                None
            }
        }
    }

    fn topology(&mut self, raw: RawTopology, path: &Path) -> Option<Topology> {
        let source = match &raw.source {
            Some(s) => self.conn(&[Seg::Key("source"), Seg::Key("url")], &s.url),
            None => {
                self.problem(
                    &[Seg::Key("source")],
                    "missing: the monolith's connection string, [source] url = \"…\"",
                );
                None
            }
        };
        let ddl = match raw.source.as_ref().and_then(|s| s.ddl.as_deref()) {
            None | Some("capture") => DdlMode::Capture,
            Some("stop") => DdlMode::Stop,
            Some(other) => {
                self.problem(
                    &[Seg::Key("source"), Seg::Key("ddl")],
                    format!(
                        "{other:?} is not a DDL mode; use \"capture\" (the default) or \"stop\""
                    ),
                );
                DdlMode::Capture
            }
        };
        if raw.contexts.is_empty() {
            self.problem(
                &[Seg::Key("contexts")],
                "no context is defined; add at least one [contexts.NAME]",
            );
        }
        let mut contexts = Vec::new();
        let mut table_owner: HashMap<TableName, String> = HashMap::new();
        let mut databases: HashMap<(String, u16, String), String> = HashMap::new();
        if let Some(s) = &source {
            databases.insert(s.identity(), "source.url".into());
        }
        for (name, ctx) in raw.contexts {
            if let Some(c) = self.context(&name, ctx, &mut table_owner, &mut databases) {
                contexts.push(c);
            }
        }
        let read_models = self.read_models(raw.read_models, &contexts);
        let router = self.router(raw.router, path);
        Some(Topology {
            path: path.to_path_buf(),
            source: source?,
            contexts,
            read_models,
            router: router?,
            cutover: CutoverConfig {
                enabled: raw.cutover.is_some_and(|c| c.enabled),
            },
            cdc: self.cdc(raw.cdc),
            ddl,
        })
    }

    fn cdc(&mut self, raw: Option<RawCdc>) -> CdcConfig {
        let mut cdc = CdcConfig::default();
        let Some(raw) = raw else { return cdc };
        cdc.on_divergence = raw.on_divergence;
        if let Some(text) = raw.group_wait {
            match parse_group_wait(&text) {
                Ok(wait) => cdc.group_wait = wait,
                Err(e) => self.problem(&[Seg::Key("cdc"), Seg::Key("group_wait")], e),
            }
        }
        match raw.group_changes {
            Some(n) if n >= 1 => cdc.group_changes = n as usize,
            Some(n) => self.problem(
                &[Seg::Key("cdc"), Seg::Key("group_changes")],
                format!("{n} is not a group size: write a whole number of row changes, at least 1 (default {DEFAULT_GROUP_CHANGES})"),
            ),
            None => {}
        }
        cdc
    }

    fn context(
        &mut self,
        name: &str,
        raw: RawContext,
        table_owner: &mut HashMap<TableName, String>,
        databases: &mut HashMap<(String, u16, String), String>,
    ) -> Option<Context> {
        let at = |key: &'static str| [Seg::Key("contexts"), Seg::Key(name), Seg::Key(key)];
        let before = self.problems.len();
        if raw.tables.is_empty() && raw.reference_tables.is_empty() {
            self.problem(&at("tables"), "lists no table");
        }
        let mut tables = Vec::new();
        let mut reference_tables = Vec::new();
        let listed = raw
            .tables
            .iter()
            .map(|t| ("tables", t))
            .chain(raw.reference_tables.iter().map(|t| ("reference_tables", t)));
        for (i, (key, table)) in listed.enumerate() {
            let index = if key == "tables" {
                i
            } else {
                i - raw.tables.len()
            };
            let path = [
                Seg::Key("contexts"),
                Seg::Key(name),
                Seg::Key(key),
                Seg::Index(index),
            ];
            match TableName::parse(table) {
                Err(e) => self.problem(&path, e.to_string()),
                Ok(parsed) => {
                    if let Some(owner) = table_owner.insert(parsed.clone(), name.to_string()) {
                        self.problem(
                            &path,
                            format!("table {parsed} is already listed in context {owner:?}"),
                        );
                    }
                    if key == "tables" {
                        tables.push(parsed);
                    } else {
                        reference_tables.push(parsed);
                    }
                }
            }
        }
        let mut check_db = |v: &mut Self, path: &[Seg], conn: &ConnString, label: String| {
            if let Some(first) = databases.insert(conn.identity(), label) {
                v.problem(path, format!("{conn} is the same database as {first}"));
            }
        };
        let kind = match (raw.shards, raw.url) {
            (Some(_), Some(_)) => {
                self.problem(
                    &at("url"),
                    "a context has either `url` (one database) or `shards`, not both",
                );
                None
            }
            (None, None) => {
                self.problem(
                    &[Seg::Key("contexts"), Seg::Key(name)],
                    "needs `url` (one database) or `shard_key` and `shards`",
                );
                None
            }
            (None, Some(url)) => {
                for key in ["shard_key", "shard_key_type", "buckets", "bucket_ranges"] {
                    let set = match key {
                        "shard_key" => raw.shard_key.is_some(),
                        "shard_key_type" => raw.shard_key_type.is_some(),
                        "buckets" => raw.buckets.is_some(),
                        _ => raw.bucket_ranges.is_some(),
                    };
                    if set {
                        self.problem(
                            &at(key),
                            "only applies to a sharded context (one with `shards`)",
                        );
                    }
                }
                if !raw.reference_tables.is_empty() {
                    self.problem(
                        &at("reference_tables"),
                        "only applies to a sharded context; list the tables in `tables`",
                    );
                }
                let conn = self.conn(&at("url"), &url);
                if let Some(c) = &conn {
                    check_db(self, &at("url"), c, format!("contexts.{name}.url"));
                }
                conn.map(|url| ContextKind::Single { url })
            }
            (Some(shard_urls), None) => {
                if shard_urls.is_empty() {
                    self.problem(
                        &at("shards"),
                        "the shard list is empty; list at least one connection string",
                    );
                }
                let mut shards = Vec::new();
                for (i, url) in shard_urls.iter().enumerate() {
                    let path = [
                        Seg::Key("contexts"),
                        Seg::Key(name),
                        Seg::Key("shards"),
                        Seg::Index(i),
                    ];
                    if let Some(c) = self.conn(&path, url) {
                        check_db(self, &path, &c, format!("contexts.{name}.shards[{i}]"));
                        shards.push(c);
                    }
                }
                let shard_key = raw.shard_key.clone().filter(|k| !k.trim().is_empty());
                if shard_key.is_none() {
                    self.problem(
                        &at("shard_key"),
                        "missing: the column that places rows, such as \"merchant_id\"",
                    );
                }
                let key_type = match raw
                    .shard_key_type
                    .as_deref()
                    .unwrap_or("bigint")
                    .parse::<ShardKeyType>()
                {
                    Ok(t) => Some(t),
                    Err(e) => {
                        self.problem(&at("shard_key_type"), e);
                        None
                    }
                };
                let buckets = raw.buckets.unwrap_or(DEFAULT_BUCKETS);
                let placement = key_type.and_then(|t| {
                    let built = match &raw.bucket_ranges {
                        Some(ranges) if ranges.len() != shard_urls.len() => {
                            self.problem(
                                &at("bucket_ranges"),
                                format!(
                                    "lists {} shards but `shards` has {}",
                                    ranges.len(),
                                    shard_urls.len()
                                ),
                            );
                            return None;
                        }
                        Some(ranges) => Placement::from_ranges(t, buckets, ranges),
                        None => Placement::even(t, buckets, shard_urls.len()),
                    };
                    built
                        .map_err(|e| {
                            let key = if raw.bucket_ranges.is_some() {
                                "bucket_ranges"
                            } else {
                                "buckets"
                            };
                            self.problem(&at(key), e.to_string())
                        })
                        .ok()
                });
                match (shard_key, placement) {
                    (Some(shard_key), Some(placement)) => Some(ContextKind::Sharded {
                        shard_key,
                        placement,
                        shards,
                        reference_tables: std::mem::take(&mut reference_tables),
                    }),
                    _ => None,
                }
            }
        };
        let apply_interval = match raw.apply_interval.as_deref().map(parse_interval) {
            None => DEFAULT_APPLY_INTERVAL,
            Some(Ok(interval)) => interval,
            Some(Err(e)) => {
                self.problem(&at("apply_interval"), e);
                None
            }
        };
        let partitioning = match raw.partitioning.as_deref() {
            None | Some("plain") => Partitioning::Plain,
            Some("source") => Partitioning::Source,
            Some(other) => {
                self.problem(
                    &at("partitioning"),
                    format!("{other:?} is not a partitioning: write \"source\" (keep the source's partitions) or \"plain\" (the default)"),
                );
                Partitioning::Plain
            }
        };
        for (i, o) in raw.skip_objects.iter().enumerate() {
            if o.trim().is_empty() {
                self.problem(
                    &[
                        Seg::Key("contexts"),
                        Seg::Key(name),
                        Seg::Key("skip_objects"),
                        Seg::Index(i),
                    ],
                    "empty object name",
                );
            }
        }
        if self.problems.len() > before {
            return None;
        }
        kind.map(|kind| Context {
            name: name.to_string(),
            tables,
            kind,
            apply_interval,
            partitioning,
            skip_objects: raw.skip_objects,
        })
    }

    fn read_models(&mut self, raw: Vec<RawReadModel>, contexts: &[Context]) -> Vec<ReadModel> {
        let mut names = HashMap::new();
        let mut out = Vec::new();
        for (i, rm) in raw.into_iter().enumerate() {
            let at = |key: &'static str| [Seg::Key("read_models"), Seg::Index(i), Seg::Key(key)];
            if !is_identifier(&rm.name) {
                self.problem(
                    &at("name"),
                    format!(
                        "{:?} is not a plain SQL identifier (lower case letters, digits, _)",
                        rm.name
                    ),
                );
            } else if names.insert(rm.name.clone(), i).is_some() {
                self.problem(
                    &at("name"),
                    format!("read model {:?} is defined twice", rm.name),
                );
            }
            let from = match TableName::parse(&rm.from) {
                Ok(t) => t,
                Err(e) => {
                    self.problem(&at("from"), e.to_string());
                    TableName::new("", "")
                }
            };
            if rm.group_by.is_empty() {
                self.problem(&at("group_by"), "needs at least one grouping expression");
            }
            if rm.aggregates.is_empty() {
                self.problem(
                    &at("aggregates"),
                    "needs at least one aggregate, such as \"count(*) AS payments\"",
                );
            }
            let context = rm
                .context
                .unwrap_or_else(|| DEFAULT_READ_MODEL_CONTEXT.to_string());
            match contexts.iter().find(|c| c.name == context) {
                Some(c) if c.is_sharded() => self.problem(
                    &at("context"),
                    format!(
                        "context {context:?} is sharded; read models live in an unsharded context"
                    ),
                ),
                Some(_) => {}
                None => self.problem(
                    &at("context"),
                    format!("context {context:?} is not defined"),
                ),
            }
            out.push(ReadModel {
                name: rm.name,
                from,
                filter: rm.filter.filter(|f| !f.trim().is_empty()),
                group_by: rm.group_by,
                aggregates: rm.aggregates,
                context,
            });
        }
        out
    }
}

/// `"continuous"` → `None`; `"500ms"`, `"30s"`, `"5m"`, `"1h"` → that long.
/// `[cdc] group_wait`: a whole number of milliseconds or seconds, from
/// zero (every source transaction commits on its own) to [`MAX_GROUP_WAIT`].
pub fn parse_group_wait(text: &str) -> Result<std::time::Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let bad =
        || format!("{text:?} is not a wait: write a whole number with ms or s, such as \"50ms\"");
    let n: u64 = number.parse().map_err(|_| bad())?;
    let wait = match unit.trim() {
        "ms" => std::time::Duration::from_millis(n),
        "s" => std::time::Duration::from_secs(n),
        _ => return Err(bad()),
    };
    if wait > MAX_GROUP_WAIT {
        return Err(format!(
            "{text:?} is longer than 10s: a group holds its locks on the target and the slot's position that long"
        ));
    }
    Ok(wait)
}

pub fn parse_interval(text: &str) -> Result<Option<std::time::Duration>, String> {
    let t = text.trim();
    if t == "continuous" {
        return Ok(None);
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let bad = || {
        format!(
            "{text:?} is not an interval: write \"continuous\" or a whole number with ms, s, m or h, such as \"5m\""
        )
    };
    let n: u64 = number.parse().map_err(|_| bad())?;
    let millis = match unit.trim() {
        "ms" => n,
        "s" => n.saturating_mul(1000),
        "m" => n.saturating_mul(60_000),
        "h" => n.saturating_mul(3_600_000),
        _ => return Err(bad()),
    };
    let d = std::time::Duration::from_millis(millis);
    if d.is_zero() {
        return Err(format!(
            "{text:?} is zero; write \"continuous\" to apply changes as they come"
        ));
    }
    if d > MAX_APPLY_INTERVAL {
        return Err(format!(
            "{text:?} is longer than 24h: the source would keep all that WAL for the slot"
        ));
    }
    Ok(Some(d))
}

/// Whether `s` can be used unquoted as a PostgreSQL identifier.
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && s.len() <= 63
}

/// Finding the line of a dotted key inside a parsed document, through
/// tables, inline tables, arrays of tables and arrays.
trait LineOf {
    fn line_of_path(&self, path: &[Seg], line_of: &dyn Fn(usize) -> usize) -> Option<usize>;
}

impl LineOf for toml_edit::Table {
    fn line_of_path(&self, path: &[Seg], line_of: &dyn Fn(usize) -> usize) -> Option<usize> {
        let Some(Seg::Key(k)) = path.first() else {
            return None;
        };
        let (key, item) = self.get_key_value(k)?;
        let here = key.span().map(|s| line_of(s.start));
        item.line_of_path(&path[1..], line_of).or(here)
    }
}

impl LineOf for toml_edit::Item {
    fn line_of_path(&self, path: &[Seg], line_of: &dyn Fn(usize) -> usize) -> Option<usize> {
        match (path.first(), self) {
            (Some(Seg::Key(_)), toml_edit::Item::Table(t)) => t.line_of_path(path, line_of),
            (Some(Seg::Index(i)), toml_edit::Item::ArrayOfTables(a)) => {
                let t = a.get(*i)?;
                t.line_of_path(&path[1..], line_of)
                    .or(t.span().map(|s| line_of(s.start)))
            }
            (Some(_), toml_edit::Item::Value(v)) => v.line_of_path(path, line_of),
            _ => None,
        }
    }
}

impl LineOf for toml_edit::Value {
    fn line_of_path(&self, path: &[Seg], line_of: &dyn Fn(usize) -> usize) -> Option<usize> {
        match (path.first(), self) {
            (Some(Seg::Key(k)), toml_edit::Value::InlineTable(t)) => {
                let (key, item) = t.get_key_value(k)?;
                let here = key.span().map(|s| line_of(s.start));
                item.line_of_path(&path[1..], line_of).or(here)
            }
            (Some(Seg::Index(i)), toml_edit::Value::Array(a)) => {
                let v = a.get(*i)?;
                v.line_of_path(&path[1..], line_of)
                    .or(v.span().map(|s| line_of(s.start)))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
