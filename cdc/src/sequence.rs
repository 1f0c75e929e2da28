//! Keeping the targets' sequences ahead of the source's.
//!
//! Logical replication carries no sequence changes: a target's copy of
//! `payments_id_seq` stays where backfill left it while the monolith keeps
//! handing out ids. On every heartbeat a forward cdc run reads the
//! positions of the listed tables' sequences on the source and moves each
//! target's copy up to them (never back), so a target that starts taking
//! inserts (a cutover) never hands out an id the source already used.
//! Once a cutover has given each database an interleaved share of every
//! sequence (`shardline.cutover_sequences` on the source, see the cutover
//! crate), positions are no longer copied: that would break the shares.

use std::collections::HashMap;

use shardline_schema::{catalog, ddl, Sequence};
use shardline_topology::{ConnString, TableName};
use tokio_postgres::Client;

use crate::route::Routes;

/// The sequences behind the listed tables and the targets holding each.
pub struct SequenceSync {
    /// Sequence → target indices.
    targets_of: Vec<(TableName, Vec<usize>)>,
    /// Last position written per (sequence, target).
    written: HashMap<(TableName, usize), i64>,
    clients: HashMap<usize, Client>,
}

impl SequenceSync {
    /// Finds the sequences of every listed table (serial, identity and
    /// `nextval` defaults) on the source.
    pub async fn new(
        source: &Client,
        routes: &Routes,
    ) -> Result<Self, shardline_schema::SchemaError> {
        let mut targets_of: Vec<(TableName, Vec<usize>)> = Vec::new();
        for (table, route) in routes.tables() {
            let Some(def) = shardline_schema::read_table(source, table).await? else {
                continue;
            };
            for s in def.sequences {
                match targets_of.iter_mut().find(|(n, _)| *n == s.name) {
                    Some((_, ts)) => {
                        for t in route.targets() {
                            if !ts.contains(&t) {
                                ts.push(t);
                            }
                        }
                    }
                    None => targets_of.push((s.name, route.targets())),
                }
            }
        }
        Ok(Self {
            targets_of,
            written: HashMap::new(),
            clients: HashMap::new(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.targets_of.is_empty()
    }

    /// Moves every target's sequences up to the source's positions.
    /// Errors are returned for logging: a target that is down gets its
    /// sequences at the next beat, and the stream goes on.
    pub async fn sync(&mut self, source: &Client, targets: &[ConnString]) -> Result<(), String> {
        if self.targets_of.is_empty()
            || shardline_schema::drift::interleaved(source)
                .await
                .map_err(|e| e.to_string())?
        {
            return Ok(());
        }
        let names: Vec<TableName> = self.targets_of.iter().map(|(n, _)| n.clone()).collect();
        let now: Vec<Sequence> = catalog::read_sequences(source, &names)
            .await
            .map_err(|e| e.to_string())?;
        let mut errors = Vec::new();
        for s in &now {
            let Some(value) = s.last_value else { continue };
            let ids = self
                .targets_of
                .iter()
                .find(|(n, _)| *n == s.name)
                .map(|(_, ids)| ids.clone())
                .unwrap_or_default();
            for i in ids {
                if self.written.get(&(s.name.clone(), i)) == Some(&value) {
                    continue;
                }
                let client = match self.clients.get(&i) {
                    Some(c) if !c.is_closed() => c,
                    _ => match targets[i].connect().await {
                        Ok(c) => self.clients.entry(i).insert_entry(c).into_mut(),
                        Err(e) => {
                            errors.push(format!("{}: {e}", targets[i]));
                            continue;
                        }
                    },
                };
                match client.batch_execute(&ddl::advance_sequence(s, value)).await {
                    Ok(()) => {
                        self.written.insert((s.name.clone(), i), value);
                    }
                    Err(e) => errors.push(format!("{} on {}: {e}", s.name, targets[i])),
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}
