//! Every target of a topology compared with the source: `shardline schema
//! diff`, and the first step of `shardline verify`.
//!
//! Each listed table (and reference table) is read on the source and on
//! every database of its context, and compared as its targets are meant
//! to hold it: the context's `partitioning`, without what cannot be
//! carried or the context lets go (see [`crate::carry`]), and with the
//! cutover's interleaved sequences taken into account.

use serde::Serialize;
use shardline_topology::{ConnString, Context, ContextKind, TableName, Topology};
use tokio_postgres::Client;

use crate::diff::{compare, CompareOptions};
use crate::{carry, catalog, SchemaError};

/// One difference between a target and the source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Drift {
    /// The target, `user@host:port/db`.
    pub database: String,
    /// The table, canonical name.
    pub table: String,
    /// The object, such as `column amount` or `index payments_idem`.
    pub object: String,
    /// The source's rendering (`null`: only on the target).
    pub source: Option<String>,
    /// The target's rendering (`null`: missing on the target).
    pub target: Option<String>,
}

impl Drift {
    /// `table public.payments on …/tx: column amount: numeric(18,2) on the
    /// source, numeric(12,2) on the target`.
    pub fn describe(&self) -> String {
        let d = crate::diff::Difference {
            object: self.object.clone(),
            source: self.source.clone(),
            target: self.target.clone(),
        };
        format!(
            "table {} on {}: {}",
            self.table,
            self.database,
            d.describe()
        )
    }
}

/// The result of comparing every target with the source.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DriftReport {
    /// No difference at all.
    pub equal: bool,
    /// Tables compared, and databases they were compared on.
    pub tables: usize,
    pub databases: usize,
    pub drift: Vec<Drift>,
}

/// What to compare.
#[derive(Clone, Debug, Default)]
pub struct DriftRequest {
    /// Only these tables (as SQL names them); all listed when `None`.
    pub tables: Option<Vec<String>>,
    /// Report target sequences behind the source's (cdc moves them up on
    /// each heartbeat, so a live run may lag by one).
    pub positions: bool,
}

/// Compares every target's definition of every listed table with the
/// source's.
pub async fn diff(topology: &Topology, request: &DriftRequest) -> Result<DriftReport, SchemaError> {
    let mut wanted = Vec::new();
    for text in request.tables.iter().flatten() {
        let name = TableName::parse(text)
            .ok()
            .filter(|t| topology.context_of_table(t).is_some())
            .ok_or_else(|| SchemaError::Unlisted { text: text.clone() })?;
        wanted.push(name);
    }
    let source_name = topology.source.to_string();
    let source = topology.source.connect().await?;
    let interleaved = crate::drift::interleaved(&source)
        .await
        .map_err(|e| SchemaError::from(e).on(&source_name))?;
    let mut report = DriftReport::default();
    let mut databases = std::collections::HashSet::new();
    for context in &topology.contexts {
        let mut clients: Vec<(String, Client, Vec<String>)> = Vec::new();
        for db in context.databases() {
            clients.push(connect(db).await?);
        }
        for table in listed(context) {
            if request.tables.is_some() && !wanted.contains(table) {
                continue;
            }
            let def = catalog::read_table(&source, table)
                .await
                .map_err(|e| e.on(&source_name))?
                .ok_or_else(|| SchemaError::MissingTable {
                    table: table.to_string(),
                })?;
            let obstacles = carry::obstacles(topology, context, &def);
            let mut skip: Vec<String> = obstacles.iter().map(|o| o.name.clone()).collect();
            skip.extend(context.skip_objects.iter().cloned());
            report.tables += 1;
            for (name, client, extensions) in &clients {
                databases.insert(name.clone());
                let options = CompareOptions {
                    partitioned: context.partitioning == shardline_topology::Partitioning::Source,
                    skip: &skip,
                    interleaved,
                    target_extensions: Some(extensions),
                    positions: request.positions,
                };
                let theirs = catalog::read_table(client, table)
                    .await
                    .map_err(|e| e.on(name))?;
                let Some(theirs) = theirs else {
                    report.drift.push(Drift {
                        database: name.clone(),
                        table: def.name.to_string(),
                        object: "the table".into(),
                        source: Some("exists".into()),
                        target: None,
                    });
                    continue;
                };
                report
                    .drift
                    .extend(compare(&def, &theirs, &options).into_iter().map(|d| Drift {
                        database: name.clone(),
                        table: def.name.to_string(),
                        object: d.object,
                        source: d.source,
                        target: d.target,
                    }));
            }
        }
    }
    report.databases = databases.len();
    report.equal = report.drift.is_empty();
    Ok(report)
}

fn listed(context: &Context) -> Vec<&TableName> {
    let mut out: Vec<&TableName> = context.tables.iter().collect();
    if let ContextKind::Sharded {
        reference_tables, ..
    } = &context.kind
    {
        out.extend(reference_tables);
    }
    out
}

async fn connect(db: &ConnString) -> Result<(String, Client, Vec<String>), SchemaError> {
    let name = db.to_string();
    let client = db.connect().await?;
    let extensions = catalog::extensions(&client)
        .await
        .map_err(|e| e.on(&name))?;
    Ok((name, client, extensions))
}

/// Whether a cutover gave the databases interleaved sequence shares
/// (`shardline.cutover_sequences` on the source holds them).
pub async fn interleaved(source: &Client) -> Result<bool, tokio_postgres::Error> {
    let exists: bool = source
        .query_one(
            "SELECT to_regclass('shardline.cutover_sequences') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    if !exists {
        return Ok(false);
    }
    Ok(source
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM shardline.cutover_sequences)",
            &[],
        )
        .await?
        .get(0))
}
