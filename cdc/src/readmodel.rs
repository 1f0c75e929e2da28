//! Read models kept current while CDC runs.
//!
//! A read model whose source table changed is recomputed from the source
//! and replaced in its context in one target transaction, at most once per
//! refresh interval and once more when CDC stops: readers see either the
//! old or the new result, never a half. The result reflects the source as
//! of the refresh, so a read model is eventually consistent with the
//! stream, and exact once the stream is quiet.
//!
//! Read models of counts and sums over a table with full replica identity
//! are kept incrementally instead ([`crate::delta`]); this recomputation is
//! for the others (min, max, latest value, distinct counts).

use std::collections::BTreeSet;

use futures_util::{SinkExt, StreamExt};
use shardline_topology::{output_name, quote_ident, quote_table, ConnString, ReadModel, Topology};

use crate::route::normalise;
use crate::run::CdcError;

struct Model {
    read_model: ReadModel,
    from: String,
    target: ConnString,
}

#[derive(Default)]
pub struct Refresher {
    models: Vec<Model>,
    dirty: BTreeSet<usize>,
}

impl Refresher {
    pub fn new(topology: &Topology) -> Self {
        let models = topology
            .read_models
            .iter()
            .filter_map(|rm| {
                let target = topology
                    .context(&rm.context)?
                    .databases()
                    .first()
                    .map(|c| (*c).clone())?;
                Some(Model {
                    read_model: rm.clone(),
                    from: normalise(&rm.from),
                    target,
                })
            })
            .collect();
        Self {
            models,
            dirty: BTreeSet::new(),
        }
    }

    /// Leaves the named read models to someone else (incremental upkeep).
    pub fn without(mut self, names: &[&str]) -> Self {
        self.models
            .retain(|m| !names.contains(&m.read_model.name.as_str()));
        self
    }

    /// A change to `table` (`schema.name`) makes the read models over it stale.
    pub fn touch(&mut self, table: &str) {
        for (i, m) in self.models.iter().enumerate() {
            if m.from == table {
                self.dirty.insert(i);
            }
        }
    }

    /// Recomputes every stale read model; returns how many.
    pub async fn refresh(&mut self, source: &ConnString) -> Result<usize, CdcError> {
        let dirty = std::mem::take(&mut self.dirty);
        for &i in &dirty {
            if let Err(e) = refresh_one(&self.models[i], source).await {
                self.dirty.extend(dirty.iter().copied());
                return Err(e);
            }
        }
        Ok(dirty.len())
    }
}

async fn refresh_one(model: &Model, source: &ConnString) -> Result<(), CdcError> {
    let rm = &model.read_model;
    let src = source.connect().await?;
    let tgt = model.target.connect().await?;
    let failed = |db: &ConnString, e: tokio_postgres::Error| CdcError::Query {
        target: db.to_string(),
        cause: format!(
            "read model {}: {}",
            rm.name,
            e.as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or_else(|| e.to_string())
        ),
    };
    let columns: Vec<String> = rm
        .group_by
        .iter()
        .chain(&rm.aggregates)
        .map(|c| quote_ident(&output_name(c)))
        .collect();
    let table = quote_table(&rm.name);
    tgt.batch_execute(&format!("BEGIN; DELETE FROM {table}"))
        .await
        .map_err(|e| failed(&model.target, e))?;
    let result = async {
        let rows = src
            .copy_out(&format!("COPY ({}) TO STDOUT (FORMAT binary)", rm.query()))
            .await
            .map_err(|e| failed(source, e))?;
        let sink = tgt
            .copy_in::<_, bytes::Bytes>(&format!(
                "COPY {table} ({}) FROM STDIN (FORMAT binary)",
                columns.join(", ")
            ))
            .await
            .map_err(|e| failed(&model.target, e))?;
        futures_util::pin_mut!(rows);
        futures_util::pin_mut!(sink);
        // The binary stream passes through whole: header, tuples, trailer.
        while let Some(chunk) = rows.next().await {
            sink.send(chunk.map_err(|e| failed(source, e))?)
                .await
                .map_err(|e| failed(&model.target, e))?;
        }
        sink.finish().await.map_err(|e| failed(&model.target, e))?;
        tgt.batch_execute("COMMIT")
            .await
            .map_err(|e| failed(&model.target, e))
    }
    .await;
    if result.is_err() {
        let _ = tgt.batch_execute("ROLLBACK").await;
    }
    result
}
