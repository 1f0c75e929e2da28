//! Comparing one table: bucket checksums on every side, re-checks, then
//! bisection of the buckets that stay different down to rows.
//!
//! Every row has a bucket on both sides. For a sharded table it is the
//! placement bucket, so the same pass proves placement: a shard holding rows
//! of a bucket it does not own has misplaced rows. Unsharded tables bucket
//! by ranges of the primary key where every side orders it alike
//! (`keyrange.rs`: a differing range is then re-checked and read
//! through the key's index, never by a second scan), else by a hash of the
//! key, which no collation or key type can make two sides disagree on.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use shardline_topology::{ConnString, Placement};
use tokio_postgres::Client;

use crate::checksum::{key_bucket, row_hash, Column, RowHash};
use crate::keyrange::{KeyRanges, MAX_INDEXED_RANGES};
use crate::report::TableReport;
use crate::rows::rows_of_buckets;
use crate::{Progress, VerifyError};

/// How a table's rows should be spread over its targets.
#[derive(Clone, Debug)]
pub enum Layout {
    Sharded {
        placement: Placement,
        shard_key: String,
    },
    /// One target holds every row.
    Single,
}

/// One table (or read model) to compare.
#[derive(Clone, Debug)]
pub struct TableSpec {
    pub name: String,
    /// The source side: a table, or a query in parentheses for a read model.
    pub source_relation: String,
    /// The target side's table.
    pub target_relation: String,
    pub columns: Vec<Column>,
    /// Columns identifying a row (primary key, or a read model's groups).
    pub key: Vec<Column>,
    pub layout: Layout,
    pub targets: Vec<ConnString>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Counts,
    Checksums,
    Rows,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub level: Level,
    /// Re-check differing buckets this many times before reporting them.
    pub rechecks: u32,
    pub recheck_delay: Duration,
    /// Rows listed per table; the rest are counted.
    pub max_rows: usize,
    pub max_rows_per_sec: Option<u64>,
    /// Requested; resolved per comparison from the sides' versions.
    pub row_hash: RowHash,
    pub progress: Arc<Progress>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Sum {
    pub(crate) rows: i64,
    hash: i128,
}

pub(crate) type Buckets = BTreeMap<i64, Sum>;

/// A side's connection, name and server version (`server_version_num`).
pub struct Side {
    pub name: String,
    pub client: Client,
    pub version: i32,
}

/// One table's comparison: what to compare, and how rows are hashed on
/// every side of it.
pub(crate) struct Job<'a> {
    pub(crate) spec: &'a TableSpec,
    hash: RowHash,
    /// `--max-rows-per-sec`, per side.
    rate: Option<u64>,
    progress: &'a Progress,
    /// Buckets as ranges of the key, where every side orders it alike.
    pub(crate) ranges: Option<KeyRanges>,
}

impl TableSpec {
    pub(crate) fn owner(&self, bucket: i64) -> usize {
        match &self.layout {
            Layout::Sharded { placement, .. } => placement.shard_of_bucket(bucket as u32),
            Layout::Single => 0,
        }
    }
}

impl Job<'_> {
    pub(crate) fn bucket_expr(&self) -> String {
        match &self.spec.layout {
            Layout::Sharded {
                placement,
                shard_key,
            } => placement.bucket_sql(&format!("t.{}", shardline_topology::quote_ident(shard_key))),
            Layout::Single => match &self.ranges {
                Some(r) => r.bucket_sql("t"),
                None => key_bucket(&self.spec.key, "t", self.hash),
            },
        }
    }

    pub(crate) fn row_hash(&self) -> String {
        row_hash(&self.spec.columns, "t", self.hash)
    }
}

/// Per-bucket counts (and checksums) of one side, optionally only `only`.
async fn buckets(
    side: &Side,
    job: &Job<'_>,
    relation: &str,
    level: Level,
    only: Option<&BTreeSet<i64>>,
) -> Result<Buckets, VerifyError> {
    let spec = job.spec;
    let hash = if level == Level::Counts {
        "0::numeric".to_string()
    } else {
        format!("sum({})", job.row_hash())
    };
    let filter = match only {
        // A few key ranges are read through the key's index.
        Some(set) if set.len() <= MAX_INDEXED_RANGES && job.ranges.is_some() => {
            let ranges = job.ranges.as_ref().expect("checked");
            format!(" WHERE {}", ranges.ranges_sql(set, "t"))
        }
        Some(set) => format!(
            " WHERE {} IN ({})",
            job.bucket_expr(),
            set.iter()
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ),
        None => String::new(),
    };
    let sql = |range: &str| {
        format!(
            "SELECT ({})::int8 AS b, count(*), ({hash})::text FROM {relation} t{filter}{range} GROUP BY 1",
            job.bucket_expr()
        )
    };
    let sliced =
        job.rate.is_some() && !relation.starts_with('(') && side.version >= TID_RANGE_SINCE;
    if !sliced {
        return bucket_rows(side, job, &sql("")).await;
    }
    let rate = job.rate.unwrap_or(1);
    let glue = if filter.is_empty() { " WHERE" } else { " AND" };
    // One snapshot for every slice, so the slices add up to one table.
    let begin = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";
    let err = |e| VerifyError::query(&side.name, &spec.name, e);
    side.client.batch_execute(begin).await.map_err(err)?;
    let blocks_per_slice = blocks_per_second(side, spec, relation, rate).await?;
    let blocks = heap_blocks(side, spec, relation).await?;
    let started = std::time::Instant::now();
    let (mut out, mut rows, mut from) = (Buckets::new(), 0i64, 0i64);
    loop {
        let upper = from + blocks_per_slice;
        let last = upper >= blocks;
        // The last slice is open above: rows added since the count are in it.
        let range = if last {
            format!("{glue} t.ctid >= '({from},0)'::tid")
        } else {
            format!("{glue} t.ctid >= '({from},0)'::tid AND t.ctid < '({upper},0)'::tid")
        };
        for (b, sum) in bucket_rows(side, job, &sql(&range)).await? {
            rows += sum.rows;
            let entry = out.entry(b).or_default();
            entry.rows += sum.rows;
            entry.hash += sum.hash;
        }
        let due = Duration::from_secs_f64(rows as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        if last {
            break;
        }
        from = upper;
    }
    side.client.batch_execute("COMMIT").await.map_err(err)?;
    Ok(out)
}

/// The first server version that reads a TID range without a full scan.
const TID_RANGE_SINCE: i32 = 140_000;

/// The planner's estimate of a table's rows (0 for a read model's query or
/// a table never analysed).
async fn estimated_rows(source: &Side, spec: &TableSpec) -> Result<u64, VerifyError> {
    if spec.source_relation.starts_with('(') {
        return Ok(0);
    }
    let row = source
        .client
        .query_opt(
            "SELECT greatest(reltuples, 0)::int8 FROM pg_class WHERE oid = to_regclass($1)",
            &[&spec.source_relation],
        )
        .await
        .map_err(|e| VerifyError::query(&source.name, &spec.name, e))?;
    Ok(row.map(|r| r.get::<_, i64>(0).max(0) as u64).unwrap_or(0))
}

/// Blocks in the table's heap now.
async fn heap_blocks(side: &Side, spec: &TableSpec, relation: &str) -> Result<i64, VerifyError> {
    side.client
        .query_one(
            "SELECT (pg_relation_size(to_regclass($1)) / current_setting('block_size')::int)::int8",
            &[&relation],
        )
        .await
        .map(|r| r.get(0))
        .map_err(|e| VerifyError::query(&side.name, &spec.name, e))
}

/// Heap blocks holding about `rate` rows, from the planner's statistics
/// (100 rows a block where the table was never analysed).
async fn blocks_per_second(
    side: &Side,
    spec: &TableSpec,
    relation: &str,
    rate: u64,
) -> Result<i64, VerifyError> {
    let row = side
        .client
        .query_one(
            "SELECT reltuples::float8, relpages::int8 FROM pg_class WHERE oid = to_regclass($1)",
            &[&relation],
        )
        .await
        .map_err(|e| VerifyError::query(&side.name, &spec.name, e))?;
    let (tuples, pages): (f64, i64) = (row.get(0), row.get(1));
    let per_block = if tuples > 0.0 && pages > 0 {
        tuples / pages as f64
    } else {
        100.0
    };
    Ok(((rate as f64 / per_block).ceil() as i64).max(1))
}

/// Runs one bucket query: rows and checksum per bucket.
async fn bucket_rows(side: &Side, job: &Job<'_>, sql: &str) -> Result<Buckets, VerifyError> {
    let rows = side
        .client
        .query(sql, &[])
        .await
        .map_err(|e| VerifyError::query(&side.name, &job.spec.name, e))?;
    let scanned: i64 = rows.iter().map(|r| r.get::<_, i64>(1)).sum();
    job.progress
        .rows_scanned
        .fetch_add(scanned.max(0) as u64, Ordering::Relaxed);
    Ok(rows
        .iter()
        .map(|r| {
            let hash: Option<String> = r.get(2);
            (
                r.get::<_, i64>(0),
                Sum {
                    rows: r.get(1),
                    hash: hash.and_then(|h| h.parse().ok()).unwrap_or(0),
                },
            )
        })
        .collect())
}

/// Buckets whose rows differ between the source and the targets: on the
/// owner, or present on a target that does not own them.
fn differing(spec: &TableSpec, source: &Buckets, targets: &[Buckets]) -> BTreeSet<i64> {
    let mut out = BTreeSet::new();
    let all: BTreeSet<i64> = source
        .keys()
        .chain(targets.iter().flat_map(|t| t.keys()))
        .copied()
        .collect();
    for b in all {
        let owner = spec.owner(b);
        let expected = source.get(&b).copied().unwrap_or_default();
        let actual = targets
            .get(owner)
            .and_then(|t| t.get(&b))
            .copied()
            .unwrap_or_default();
        let misplaced = targets
            .iter()
            .enumerate()
            .any(|(i, t)| i != owner && t.get(&b).is_some_and(|s| s.rows > 0));
        if expected != actual || misplaced {
            out.insert(b);
        }
    }
    out
}

pub async fn compare(
    spec: &TableSpec,
    source: &Side,
    targets: &[Side],
    options: &Options,
) -> Result<TableReport, VerifyError> {
    let versions: Vec<i32> = std::iter::once(source)
        .chain(targets)
        .map(|s| s.version)
        .collect();
    let ranges = match spec.layout {
        Layout::Single if options.level != Level::Counts => {
            let on: Vec<(&Side, &str)> = targets
                .iter()
                .map(|t| (t, spec.target_relation.as_str()))
                .collect();
            KeyRanges::plan(&spec.name, &spec.key, (source, &spec.source_relation), &on).await?
        }
        _ => None,
    };
    let jit = ranges.as_ref().is_some_and(KeyRanges::is_tree);
    if jit {
        set_all(source, targets, spec, "SET jit = off").await?;
    }
    let job = &Job {
        spec,
        hash: options.row_hash.resolve(&versions),
        rate: options.max_rows_per_sec.filter(|r| *r > 0),
        progress: &options.progress,
        ranges,
    };
    let report = compare_job(job, source, targets, options).await;
    if jit {
        set_all(source, targets, spec, "RESET jit").await?;
    }
    report
}

/// Runs one setting on every side.
async fn set_all(
    source: &Side,
    targets: &[Side],
    spec: &TableSpec,
    sql: &str,
) -> Result<(), VerifyError> {
    for side in std::iter::once(source).chain(targets) {
        side.client
            .batch_execute(sql)
            .await
            .map_err(|e| VerifyError::query(&side.name, &spec.name, e))?;
    }
    Ok(())
}

async fn compare_job(
    job: &Job<'_>,
    source: &Side,
    targets: &[Side],
    options: &Options,
) -> Result<TableReport, VerifyError> {
    let spec = job.spec;
    *job.progress.table.lock().expect("progress lock") = spec.name.clone();
    job.progress
        .rows_estimated
        .fetch_add(2 * estimated_rows(source, spec).await?, Ordering::Relaxed);
    // Every side scans at once: the source and each shard are separate
    // servers, so the comparison takes as long as the slowest scan.
    let started = std::time::Instant::now();
    let (src, tgt) = tokio::try_join!(
        buckets(source, job, &spec.source_relation, options.level, None),
        futures_util::future::try_join_all(targets.iter().map(|side| buckets(
            side,
            job,
            &spec.target_relation,
            options.level,
            None
        )))
    )?;
    let mut report = TableReport::new(&spec.name);
    report.source_rows = src.values().map(|s| s.rows).sum();
    report.target_rows = tgt.iter().flat_map(|t| t.values()).map(|s| s.rows).sum();
    pace(
        report.source_rows.max(report.target_rows),
        started.elapsed(),
        options.max_rows_per_sec,
    )
    .await;
    report.buckets = src
        .len()
        .max(tgt.iter().map(|t| t.len()).max().unwrap_or(0));
    let mut diff = differing(spec, &src, &tgt);
    let (mut src, mut tgt) = (src, tgt);
    // Changes in flight (CDC applying) settle: compare the differing
    // buckets again before believing them.
    let mut rechecks = 0;
    while !diff.is_empty() && rechecks < options.rechecks {
        tokio::time::sleep(options.recheck_delay).await;
        rechecks += 1;
        let again = buckets(
            source,
            job,
            &spec.source_relation,
            options.level,
            Some(&diff),
        )
        .await?;
        let mut again_t = Vec::new();
        for side in targets {
            again_t
                .push(buckets(side, job, &spec.target_relation, options.level, Some(&diff)).await?);
        }
        for b in &diff {
            update(&mut src, *b, again.get(b));
            for (t, a) in tgt.iter_mut().zip(&again_t) {
                update(t, *b, a.get(b));
            }
        }
        let still = differing(spec, &src, &tgt);
        report.converged += diff.difference(&still).count();
        diff = still;
    }
    report.rechecks = rechecks;
    report.differing_buckets = diff.len();
    if options.level == Level::Rows && !diff.is_empty() {
        rows_of_buckets(
            job,
            source,
            targets,
            &diff,
            (&src, &tgt),
            &mut report,
            options.max_rows,
        )
        .await?;
    }
    Ok(report)
}

/// `--max-rows-per-sec`: after a scan of `rows` rows per side that took
/// `took`, waits so the average rate stays within the limit. Table scans
/// are already paced slice by slice, so this waits only after a read
/// model's query, which cannot be sliced and runs at full speed.
async fn pace(rows: i64, took: Duration, max_rows_per_sec: Option<u64>) {
    let Some(rate) = max_rows_per_sec.filter(|r| *r > 0) else {
        return;
    };
    let due = Duration::from_secs_f64(rows.max(0) as f64 / rate as f64);
    if let Some(wait) = due.checked_sub(took) {
        tokio::time::sleep(wait).await;
    }
}

fn update(buckets: &mut Buckets, b: i64, fresh: Option<&Sum>) {
    match fresh {
        Some(s) => {
            buckets.insert(b, *s);
        }
        None => {
            buckets.remove(&b);
        }
    }
}
