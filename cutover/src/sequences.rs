//! Ids after the cutover: interleaved sequence shares.
//!
//! Before the cutover only the monolith hands out ids; cdc copies its
//! rows (ids included) and keeps the targets' sequences at its position.
//! From the first stage on, merchants on the shards insert there while the
//! others insert on the monolith, and a rollback sends merchants back: two
//! databases must never hand out the same id. So the first stage gives
//! every database that holds a sequence (the monolith, and each database
//! of the contexts whose tables use it) a disjoint, interleaved share:
//! with N such databases and the source's increment k, database i gets
//! `INCREMENT BY k·N RESTART WITH base + i·k`, where `base` is above every
//! database's current value plus a margin and a multiple of k·N. Shares
//! never meet, whatever each database hands out and wherever a row is
//! copied; a rollback changes nothing (the shares stay), so ids stay
//! unique both ways. The shares are recorded in
//! `shardline.cutover_sequences` on the monolith; from then on cdc no
//! longer copies sequence positions (see `shardline_cdc::sequence`).
//!
//! The alternative, a Snowflake-style id function (time, database number,
//! counter) in every database's defaults, needs the application's
//! defaults changed and ids that no longer fit small types; sequences keep
//! `bigserial`, identity columns and `nextval` defaults working unchanged,
//! and gaps in ids are all they cost.

use serde::Serialize;
use shardline_schema::{catalog, Sequence};
use shardline_topology::{ConnString, TableName, Topology};
use tokio_postgres::Client;

use crate::CutoverError;

/// Ids kept free above the highest value any database has handed out,
/// for inserts between reading the positions and restarting the sequences.
pub const MARGIN: i64 = 100_000;

const DDL: &str = "CREATE SCHEMA IF NOT EXISTS shardline;
CREATE TABLE IF NOT EXISTS shardline.cutover_sequences (
    sequence_name text NOT NULL,
    database      text NOT NULL,
    increment_by  bigint NOT NULL,
    restart_with  bigint NOT NULL,
    set_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sequence_name, database)
)";

/// One database's share of a sequence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Share {
    pub database: String,
    pub increment: i64,
    pub restart: i64,
}

/// A sequence and every database's share of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SequencePlan {
    pub sequence: String,
    /// Already given by an earlier stage (and kept as it is).
    pub set: bool,
    /// The highest value handed out anywhere when planned.
    pub highest: i64,
    pub shares: Vec<Share>,
    /// Why the sequence is left alone, if it is (a descending sequence).
    pub skipped: Option<String>,
}

/// The shares of `highest` among `n` databases for a sequence of
/// increment `k` (pure, so the arithmetic is tested on its own).
pub fn shares(highest: i64, k: i64, n: usize) -> Vec<(i64, i64)> {
    let step = k * n as i64;
    let floor = highest.saturating_add(MARGIN);
    let base = (floor / step + 1) * step;
    (0..n as i64).map(|i| (step, base + i * k)).collect()
}

/// Every sequence behind the topology's tables, with the databases holding
/// it (the monolith first), as `(sequence, databases)`.
async fn sequences(
    topology: &Topology,
    source: &Client,
) -> Result<Vec<(Sequence, Vec<ConnString>)>, CutoverError> {
    let db = topology.source.to_string();
    let mut out: Vec<(Sequence, Vec<ConnString>)> = Vec::new();
    for context in &topology.contexts {
        let mut tables: Vec<&TableName> = context.tables.iter().collect();
        if let shardline_topology::ContextKind::Sharded {
            reference_tables, ..
        } = &context.kind
        {
            tables.extend(reference_tables);
        }
        for table in tables {
            let def = catalog::read_table(source, table)
                .await
                .map_err(|e| schema_error(&db, e))?;
            for s in def.into_iter().flat_map(|d| d.sequences) {
                let dbs = match out.iter_mut().find(|(x, _)| x.name == s.name) {
                    Some((_, dbs)) => dbs,
                    None => {
                        out.push((s, vec![topology.source.clone()]));
                        &mut out.last_mut().expect("just pushed").1
                    }
                };
                for c in context.databases() {
                    if !dbs.iter().any(|d| d.identity() == c.identity()) {
                        dbs.push(c.clone());
                    }
                }
            }
        }
    }
    Ok(out)
}

fn schema_error(db: &str, e: shardline_schema::SchemaError) -> CutoverError {
    CutoverError::Query {
        what: "reading sequences".into(),
        database: db.to_string(),
        cause: e.to_string(),
    }
}

/// The shares the first stage gives (or gave) each sequence; changes nothing.
pub async fn plan(topology: &Topology) -> Result<Vec<SequencePlan>, CutoverError> {
    let source = topology.source.connect().await?;
    plan_with(topology, &source).await
}

async fn plan_with(
    topology: &Topology,
    source: &Client,
) -> Result<Vec<SequencePlan>, CutoverError> {
    let db = topology.source.to_string();
    let recorded = recorded(source)
        .await
        .map_err(|e| CutoverError::query(&topology.source, "reading sequence shares", e))?;
    let mut out = Vec::new();
    for (s, dbs) in sequences(topology, source).await? {
        let name = s.name.to_string();
        let mine: Vec<Share> = recorded
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, share)| share.clone())
            .collect();
        if !mine.is_empty() {
            out.push(SequencePlan {
                sequence: name,
                set: true,
                highest: 0,
                shares: mine,
                skipped: None,
            });
            continue;
        }
        if s.increment < 0 {
            out.push(SequencePlan {
                sequence: name,
                set: false,
                highest: 0,
                shares: Vec::new(),
                skipped: Some("a descending sequence is not interleaved".into()),
            });
            continue;
        }
        let mut highest = s.last_value.unwrap_or(s.start);
        for conn in dbs.iter().skip(1) {
            let client = conn.connect().await?;
            let found = catalog::read_sequences(&client, std::slice::from_ref(&s.name))
                .await
                .map_err(|e| schema_error(&conn.to_string(), e))?;
            if let Some(v) = found.first().and_then(|t| t.last_value) {
                highest = highest.max(v);
            }
        }
        let shares = shares(highest, s.increment, dbs.len())
            .into_iter()
            .zip(&dbs)
            .map(|((increment, restart), conn)| Share {
                database: conn.to_string(),
                increment,
                restart,
            })
            .collect();
        out.push(SequencePlan {
            sequence: name,
            set: false,
            highest,
            shares,
            skipped: None,
        });
    }
    let _ = db;
    Ok(out)
}

async fn recorded(source: &Client) -> Result<Vec<(String, Share)>, tokio_postgres::Error> {
    if !shardline_schema::drift::interleaved(source).await? {
        return Ok(Vec::new());
    }
    Ok(source
        .query(
            "SELECT sequence_name, database, increment_by, restart_with
               FROM shardline.cutover_sequences ORDER BY sequence_name, restart_with",
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            (
                r.get(0),
                Share {
                    database: r.get(1),
                    increment: r.get(2),
                    restart: r.get(3),
                },
            )
        })
        .collect())
}

/// Gives every sequence not interleaved yet its shares: records them on
/// the monolith first (cdc stops copying positions), then restarts each
/// database's sequence. Idempotent: recorded sequences are left alone.
pub async fn interleave(topology: &Topology) -> Result<Vec<SequencePlan>, CutoverError> {
    let source = topology.source.connect().await?;
    source.batch_execute(DDL).await.map_err(|e| {
        CutoverError::query(&topology.source, "creating shardline.cutover_sequences", e)
    })?;
    let plans = plan_with(topology, &source).await?;
    let all: Vec<ConnString> = topology
        .contexts
        .iter()
        .flat_map(|c| c.databases().into_iter().cloned())
        .chain([topology.source.clone()])
        .collect();
    for p in plans.iter().filter(|p| !p.set && p.skipped.is_none()) {
        let name = TableName::parse(&p.sequence).map_err(|e| CutoverError::Query {
            what: "naming a sequence".into(),
            database: topology.source.to_string(),
            cause: e.to_string(),
        })?;
        for share in &p.shares {
            source
                .execute(
                    "INSERT INTO shardline.cutover_sequences (sequence_name, database, increment_by, restart_with)
                     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                    &[&p.sequence, &share.database, &share.increment, &share.restart],
                )
                .await
                .map_err(|e| CutoverError::query(&topology.source, "recording sequence shares", e))?;
        }
        for share in &p.shares {
            let Some(conn) = all.iter().find(|c| c.to_string() == share.database) else {
                continue;
            };
            let client = conn.connect().await?;
            client
                .batch_execute(&format!(
                    "ALTER SEQUENCE {} INCREMENT BY {} RESTART WITH {}",
                    name.quoted(),
                    share.increment,
                    share.restart
                ))
                .await
                .map_err(|e| CutoverError::query(conn, "giving a sequence its share", e))?;
        }
        tracing::info!(sequence = %p.sequence, databases = p.shares.len(), "sequence interleaved");
    }
    Ok(plans)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_disjoint_and_above_every_value() {
        for (highest, k, n) in [(0, 1, 1), (41, 1, 3), (1_000_000, 5, 4), (-7, 2, 2)] {
            let s = shares(highest, k, n);
            assert_eq!(s.len(), n);
            for (i, (inc, start)) in s.iter().enumerate() {
                assert_eq!(*inc, k * n as i64);
                assert!(*start > highest + MARGIN);
                // The next values of every share, none shared.
                for (j, (_, other)) in s.iter().enumerate() {
                    if i != j {
                        assert_ne!((start - other).rem_euclid(*inc), 0);
                    }
                }
            }
        }
    }
}
