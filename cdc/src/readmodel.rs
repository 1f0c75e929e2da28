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
//!
//! Over a source table with full replica identity, only the groups the
//! changes touched are recomputed: the old and new row images of each
//! change are kept (up to [`MAX_TOUCHED_ROWS`]), the source evaluates the
//! read model's group expressions over them, and the target deletes those
//! groups and inserts what the read model's query, restricted to them,
//! returns on the source, in one transaction. A truncate, a change without
//! its old row, too many rows or a touched group with a NULL key fall back
//! to recomputing the whole read model, as does any error of the per-group
//! path.

use std::collections::BTreeSet;

use futures_util::{SinkExt, StreamExt};
use shardline_topology::{output_name, quote_ident, ConnString, ReadModel, Topology};

use crate::delta::{DeltaModel, Recorded, COLUMNS_SQL};
use crate::pgoutput::{LogicalMessage, Relation};
use crate::run::CdcError;

/// Row images kept per read model between refreshes; beyond this the whole
/// read model is recomputed.
pub const MAX_TOUCHED_ROWS: usize = 20_000;

struct Model {
    read_model: ReadModel,
    from: String,
    target: ConnString,
    /// Row images of the changes since the last refresh (full replica
    /// identity only).
    touched: Option<DeltaModel>,
    /// The next refresh recomputes everything.
    whole: bool,
}

/// What one refresh round did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Refreshed {
    /// Read models recomputed whole.
    pub whole: usize,
    /// Read models recomputed for their touched groups only.
    pub groups: usize,
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
                    from: rm.from.to_string(),
                    target,
                    touched: None,
                    whole: true,
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

    /// Reads the source tables' columns, so that read models over tables
    /// with full replica identity are recomputed per touched group.
    pub async fn prepare_groups(
        &mut self,
        source: &tokio_postgres::Client,
    ) -> Result<(), tokio_postgres::Error> {
        for m in &mut self.models {
            let rows = source
                .query(COLUMNS_SQL, &[&m.read_model.from.quoted()])
                .await?;
            if rows.first().is_some_and(|r| r.get::<_, bool>(2)) {
                let columns = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
                m.touched = Some(DeltaModel::for_groups(&m.read_model, 0, columns));
                m.whole = false;
            }
        }
        Ok(())
    }

    /// A change to `table` (`schema.name`) makes the read models over it
    /// stale, wholly (a truncate, or any change not given to
    /// [`Refresher::touch_row`]).
    pub fn touch(&mut self, table: &str) {
        for (i, m) in self.models.iter_mut().enumerate() {
            if m.from == table {
                self.dirty.insert(i);
                m.whole = true;
                if let Some(t) = &mut m.touched {
                    t.take_rows();
                }
            }
        }
    }

    /// `table` was described again: its columns may have moved.
    pub fn relation_changed(&mut self, table: &str) {
        for m in self.models.iter_mut().filter(|m| m.from == table) {
            if let Some(t) = &mut m.touched {
                t.relation_changed();
            }
        }
    }

    /// An insert, update or delete of `table` makes the groups of its row
    /// images stale.
    pub fn touch_row(&mut self, table: &str, relation: &Relation, message: &LogicalMessage) {
        for (i, m) in self.models.iter_mut().enumerate() {
            if m.from != table {
                continue;
            }
            self.dirty.insert(i);
            if m.whole {
                continue;
            }
            let Some(t) = &mut m.touched else {
                m.whole = true;
                continue;
            };
            if t.record(relation, message) == Recorded::Incomplete || t.pending() > MAX_TOUCHED_ROWS
            {
                m.whole = true;
                t.take_rows();
            }
        }
    }

    /// Recomputes every stale read model, whole or per touched group.
    pub async fn refresh(&mut self, source: &ConnString) -> Result<Refreshed, CdcError> {
        let dirty = std::mem::take(&mut self.dirty);
        let mut done = Refreshed::default();
        for &i in &dirty {
            let m = &mut self.models[i];
            let rows = m.touched.as_mut().map(DeltaModel::take_rows);
            let mut per_group = false;
            if let Some(rows) = rows.filter(|r| !m.whole && !r.is_empty()) {
                match refresh_groups(m, &rows, source).await {
                    Ok(done) => per_group = done,
                    Err(e) => {
                        tracing::debug!(read_model = %m.read_model.name, error = %e, "per-group recompute failed; recomputing whole");
                    }
                }
            }
            if !per_group {
                if let Err(e) = refresh_one(m, source).await {
                    for &j in &dirty {
                        self.models[j].whole = true;
                    }
                    self.dirty.extend(dirty.iter().copied());
                    return Err(e);
                }
            }
            if per_group {
                done.groups += 1;
            } else {
                done.whole += 1;
            }
            m.whole = m.touched.is_none();
        }
        Ok(done)
    }
}

fn failed(rm: &ReadModel, db: &ConnString, e: tokio_postgres::Error) -> CdcError {
    CdcError::Query {
        target: db.to_string(),
        cause: format!(
            "read model {}: {}",
            rm.name,
            shardline_topology::describe_pg_error(&e)
        ),
        lost: shardline_topology::pgerror::is_connection_lost(&e),
    }
}

/// Streams the binary COPY of `query` on `src` into `into` on `tgt`.
async fn copy_across(
    rm: &ReadModel,
    (src, source): (&tokio_postgres::Client, &ConnString),
    (tgt, target): (&tokio_postgres::Client, &ConnString),
    query: &str,
    into: &str,
) -> Result<(), CdcError> {
    let rows = src
        .copy_out(&format!("COPY ({query}) TO STDOUT (FORMAT binary)"))
        .await
        .map_err(|e| failed(rm, source, e))?;
    let sink = tgt
        .copy_in::<_, bytes::Bytes>(&format!("COPY {into} FROM STDIN (FORMAT binary)"))
        .await
        .map_err(|e| failed(rm, target, e))?;
    futures_util::pin_mut!(rows);
    futures_util::pin_mut!(sink);
    // The binary stream passes through whole: header, tuples, trailer.
    while let Some(chunk) = rows.next().await {
        sink.send(chunk.map_err(|e| failed(rm, source, e))?)
            .await
            .map_err(|e| failed(rm, target, e))?;
    }
    sink.finish().await.map_err(|e| failed(rm, target, e))?;
    Ok(())
}

/// Recomputes the groups of `rows` (row images of the source table) in one
/// target transaction. `Ok(false)`: a touched group has a NULL key, which
/// `IN` cannot select; the caller recomputes everything.
async fn refresh_groups(
    model: &Model,
    rows: &[(i8, crate::delta::DeltaRow)],
    source: &ConnString,
) -> Result<bool, CdcError> {
    let rm = &model.read_model;
    let Some(spec) = model.touched.as_ref().map(|t| t.spec.clone()) else {
        return Ok(false);
    };
    let alias = &rm.from.name;
    let touched = spec.touched_groups_sql(rows.iter().map(|(_, r)| r.as_slice()), alias);
    let src = crate::sql::connect(source).await?;
    let tgt = crate::sql::connect(&model.target).await?;
    let has_null: bool = src
        .query_one(
            &format!("SELECT coalesce(bool_or(NOT (g IS NOT NULL)), false) FROM ({touched}) g"),
            &[],
        )
        .await
        .map_err(|e| failed(rm, source, e))?
        .get(0);
    if has_null {
        return Ok(false);
    }
    let names: Vec<String> = rm.group_columns().iter().map(|c| quote_ident(c)).collect();
    let names = names.join(", ");
    let table = rm.table().quoted();
    tgt.batch_execute(&format!(
        "BEGIN; CREATE TEMP TABLE shardline_touched ON COMMIT DROP AS SELECT {names} FROM {table} WITH NO DATA"
    ))
    .await
    .map_err(|e| failed(rm, &model.target, e))?;
    let result = async {
        copy_across(
            rm,
            (&src, source),
            (&tgt, &model.target),
            &touched,
            &format!("shardline_touched ({names})"),
        )
        .await?;
        tgt.batch_execute(&format!(
            "DELETE FROM {table} WHERE ({names}) IN (SELECT {names} FROM shardline_touched)"
        ))
        .await
        .map_err(|e| failed(rm, &model.target, e))?;
        copy_across(
            rm,
            (&src, source),
            (&tgt, &model.target),
            &spec.groups_query(rm, &touched),
            &format!("{table} ({})", all_columns(rm).join(", ")),
        )
        .await?;
        tgt.batch_execute("COMMIT")
            .await
            .map_err(|e| failed(rm, &model.target, e))
    }
    .await;
    if result.is_err() {
        let _ = tgt.batch_execute("ROLLBACK").await;
    }
    result.map(|()| true)
}

fn all_columns(rm: &ReadModel) -> Vec<String> {
    rm.group_by
        .iter()
        .chain(&rm.aggregates)
        .map(|c| quote_ident(&output_name(c)))
        .collect()
}

async fn refresh_one(model: &Model, source: &ConnString) -> Result<(), CdcError> {
    let rm = &model.read_model;
    let src = crate::sql::connect(source).await?;
    let tgt = crate::sql::connect(&model.target).await?;
    let table = rm.table().quoted();
    tgt.batch_execute(&format!("BEGIN; DELETE FROM {table}"))
        .await
        .map_err(|e| failed(rm, &model.target, e))?;
    let result = async {
        copy_across(
            rm,
            (&src, source),
            (&tgt, &model.target),
            &rm.query(),
            &format!("{table} ({})", all_columns(rm).join(", ")),
        )
        .await?;
        tgt.batch_execute("COMMIT")
            .await
            .map_err(|e| failed(rm, &model.target, e))
    }
    .await;
    if result.is_err() {
        let _ = tgt.batch_execute("ROLLBACK").await;
    }
    result
}
