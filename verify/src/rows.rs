//! Naming the rows of the buckets that stay different: each side's rows of
//! those buckets by key (through the key's index for key ranges, else in
//! one scan per side), matched key by key into missing, extra, duplicated,
//! changed (with the differing columns) or misplaced.

use std::collections::{BTreeSet, HashMap};

use crate::checksum::{key_match, key_text, key_values};
use crate::compare::{Buckets, Job, Side, TableSpec};
use crate::keyrange::{KeyRanges, MAX_INDEXED_RANGES, WINDOW_ROWS};
use crate::report::{Difference, DifferenceKind, TableReport};
use crate::VerifyError;

/// A bucket drilled into holds at most this many rows per side before its
/// rows are fetched (key and hash only).
const ROWS_PER_FETCH: i64 = 20_000;

/// A row of a differing bucket as one side holds it.
struct KeyedRow {
    bucket: i64,
    /// The primary key as PostgreSQL renders a row: `(1001,42)`.
    key: String,
    /// Each key column's text, to find the row again through its index.
    key_values: Vec<Option<String>>,
    hash: i64,
}

/// Every row of `buckets` on one side, in one scan (in slices, by a further
/// hash of the key, when there are many rows).
async fn keyed_rows(
    side: &Side,
    job: &Job<'_>,
    relation: &str,
    buckets: &[i64],
    expected_rows: i64,
) -> Result<Vec<KeyedRow>, VerifyError> {
    let spec = job.spec;
    if buckets.is_empty() || expected_rows == 0 {
        return Ok(Vec::new());
    }
    let list: Vec<String> = buckets.iter().map(|b| b.to_string()).collect();
    let base = format!("({})::int8 IN ({})", job.bucket_expr(), list.join(","));
    let parts = ((expected_rows / ROWS_PER_FETCH + 1) as u64)
        .next_power_of_two()
        .min(1 << 16) as i64;
    let mut out = Vec::new();
    for part in 0..parts {
        let sub = if parts > 1 {
            format!(
                " AND ((hashtext({}) >> 10) & {}) = {part}",
                key_text(&spec.key, "t"),
                parts - 1
            )
        } else {
            String::new()
        };
        let sql = format!(
            "SELECT ({})::int8, {}, {}, {} FROM {relation} t WHERE {base}{sub}",
            job.bucket_expr(),
            job.row_hash(),
            key_text(&spec.key, "t"),
            key_values(&spec.key, "t"),
        );
        out.extend(fetch_keyed(side, job, &sql).await?);
    }
    Ok(out)
}

/// Names every differing row of `buckets`: one scan per side for all of
/// them, every side at once.
pub(crate) async fn rows_of_buckets(
    job: &Job<'_>,
    source: &Side,
    targets: &[Side],
    buckets: &BTreeSet<i64>,
    counts: (&Buckets, &[Buckets]),
    report: &mut TableReport,
    max_rows: usize,
) -> Result<(), VerifyError> {
    let spec = job.spec;
    if let (Some(ranges), [target]) = (&job.ranges, targets) {
        if buckets.len() <= MAX_INDEXED_RANGES {
            let sides = Sides { source, targets };
            for &bucket in buckets {
                rows_of_range(job, ranges, &sides, target, bucket, report, max_rows).await?;
            }
            return Ok(());
        }
    }
    let list: Vec<i64> = buckets.iter().copied().collect();
    let rows_in = |side: &Buckets| {
        list.iter()
            .filter_map(|b| side.get(b))
            .map(|s| s.rows)
            .sum::<i64>()
    };
    let (src_rows, tgt_rows) = tokio::try_join!(
        keyed_rows(source, job, &spec.source_relation, &list, rows_in(counts.0)),
        futures_util::future::try_join_all(
            targets.iter().zip(counts.1).map(|(side, c)| keyed_rows(
                side,
                job,
                &spec.target_relation,
                &list,
                rows_in(c)
            ))
        )
    )?;
    let mut key_values: HashMap<String, Vec<Option<String>>> = HashMap::new();
    let mut expected: HashMap<i64, HashMap<String, Vec<i64>>> = HashMap::new();
    for row in src_rows {
        expected
            .entry(row.bucket)
            .or_default()
            .entry(row.key.clone())
            .or_default()
            .push(row.hash);
        key_values.entry(row.key).or_insert(row.key_values);
    }
    let mut found: HashMap<i64, HashMap<String, Vec<(usize, i64)>>> = HashMap::new();
    for (i, rows) in tgt_rows.into_iter().enumerate() {
        for row in rows {
            found
                .entry(row.bucket)
                .or_default()
                .entry(row.key.clone())
                .or_default()
                .push((i, row.hash));
            key_values.entry(row.key).or_insert(row.key_values);
        }
    }
    let sides = Sides { source, targets };
    for bucket in list {
        let (e, f) = (
            expected.remove(&bucket).unwrap_or_default(),
            found.remove(&bucket).unwrap_or_default(),
        );
        rows_of_bucket(spec, &sides, bucket, (e, f), &key_values, report, max_rows).await?;
    }
    Ok(())
}

/// Names every differing row of one key range, read through the key's
/// index on both sides, window by window in key order: each window is the
/// source's next `WINDOW_ROWS` keys and the target's keys up to the last
/// of them, so the two always cover the same keys.
async fn rows_of_range(
    job: &Job<'_>,
    ranges: &KeyRanges,
    sides: &Sides<'_>,
    target: &Side,
    bucket: i64,
    report: &mut TableReport,
    max_rows: usize,
) -> Result<(), VerifyError> {
    let spec = job.spec;
    let select = |relation: &str, window: String, limit: &str| {
        format!(
            "SELECT {bucket}::int8, {}, {}, {} FROM {relation} t WHERE {window} ORDER BY {}{limit}",
            job.row_hash(),
            key_text(&spec.key, "t"),
            key_values(&spec.key, "t"),
            ranges.order_sql("t"),
        )
    };
    let mut after: Option<Vec<String>> = None;
    loop {
        let window = ranges.window_sql(bucket, "t", after.as_deref(), None);
        let limit = format!(" LIMIT {WINDOW_ROWS}");
        let src = fetch_keyed(
            sides.source,
            job,
            &select(&spec.source_relation, window, &limit),
        )
        .await?;
        let last = (src.len() as i64 == WINDOW_ROWS).then(|| {
            let values = &src.last().expect("a full window").key_values;
            values
                .iter()
                .map(|v| v.clone().unwrap_or_default())
                .collect::<Vec<_>>()
        });
        let window = ranges.window_sql(bucket, "t", after.as_deref(), last.as_deref());
        let tgt = fetch_keyed(target, job, &select(&spec.target_relation, window, "")).await?;
        let mut key_values = HashMap::new();
        let mut expected: HashMap<String, Vec<i64>> = HashMap::new();
        for row in src {
            expected.entry(row.key.clone()).or_default().push(row.hash);
            key_values.entry(row.key).or_insert(row.key_values);
        }
        let mut found: HashMap<String, Vec<(usize, i64)>> = HashMap::new();
        for row in tgt {
            found
                .entry(row.key.clone())
                .or_default()
                .push((0, row.hash));
            key_values.entry(row.key).or_insert(row.key_values);
        }
        rows_of_bucket(
            spec,
            sides,
            bucket,
            (expected, found),
            &key_values,
            report,
            max_rows,
        )
        .await?;
        match last {
            Some(l) => after = Some(l),
            None => return Ok(()),
        }
    }
}

/// Rows as `keyed_rows` selects them: bucket, row hash, key text, key values.
async fn fetch_keyed(side: &Side, job: &Job<'_>, sql: &str) -> Result<Vec<KeyedRow>, VerifyError> {
    let rows = side
        .client
        .query(sql, &[])
        .await
        .map_err(|e| VerifyError::query(&side.name, &job.spec.name, e))?;
    Ok(rows
        .iter()
        .map(|r| KeyedRow {
            bucket: r.get(0),
            hash: r.get(1),
            key: r.get(2),
            key_values: (3..3 + job.spec.key.len()).map(|i| r.get(i)).collect(),
        })
        .collect())
}

struct Sides<'a> {
    source: &'a Side,
    targets: &'a [Side],
}

/// Each side's rows of one bucket: the source's hashes by key, the targets'
/// (target, hash) by key.
type BucketRows = (
    HashMap<String, Vec<i64>>,
    HashMap<String, Vec<(usize, i64)>>,
);

async fn rows_of_bucket(
    spec: &TableSpec,
    sides: &Sides<'_>,
    bucket: i64,
    (expected, found): BucketRows,
    key_values: &HashMap<String, Vec<Option<String>>>,
    report: &mut TableReport,
    max_rows: usize,
) -> Result<(), VerifyError> {
    let Sides { source, targets } = *sides;
    let owner = spec.owner(bucket);
    let keys: BTreeSet<&String> = expected.keys().chain(found.keys()).collect();
    for key in keys {
        let src = expected.get(key).cloned().unwrap_or_default();
        let tgt = found.get(key).cloned().unwrap_or_default();
        let on_owner: Vec<i64> = tgt
            .iter()
            .filter(|(i, _)| *i == owner)
            .map(|(_, h)| *h)
            .collect();
        for (i, _) in tgt.iter().filter(|(i, _)| *i != owner) {
            report.add(
                Difference::new(DifferenceKind::Misplaced, &targets[*i].name, key),
                max_rows,
            );
        }
        if src.len() > 1 {
            report.add(
                Difference::new(DifferenceKind::Duplicated, &source.name, key),
                max_rows,
            );
        }
        match (src.first(), on_owner.as_slice()) {
            (Some(_), []) if tgt.is_empty() => report.add(
                Difference::new(DifferenceKind::Missing, &targets[owner].name, key),
                max_rows,
            ),
            (Some(_), []) => {}
            (None, [_, ..]) => report.add(
                Difference::new(DifferenceKind::Extra, &targets[owner].name, key),
                max_rows,
            ),
            (Some(h), found) => {
                if found.len() > 1 {
                    report.add(
                        Difference::new(DifferenceKind::Duplicated, &targets[owner].name, key),
                        max_rows,
                    );
                }
                if found[0] != *h {
                    let mut d = Difference::new(DifferenceKind::Changed, &targets[owner].name, key);
                    if report.listed() < max_rows {
                        let values = key_values.get(key).map(Vec::as_slice).unwrap_or(&[]);
                        d.columns = changed_columns(spec, source, &targets[owner], values).await?;
                    }
                    report.add(d, max_rows);
                }
            }
            (None, []) => {}
        }
    }
    Ok(())
}

/// Which columns differ for the row whose key columns hold `key_values`,
/// with both values. The row is found through the primary key index.
async fn changed_columns(
    spec: &TableSpec,
    source: &Side,
    target: &Side,
    key_values: &[Option<String>],
) -> Result<Vec<crate::report::ColumnChange>, VerifyError> {
    let fetch = |relation: &str| {
        let values: Vec<String> = spec
            .columns
            .iter()
            .map(|c| format!("({})::text", crate::checksum::column_expr(c, "t")))
            .collect();
        format!(
            "SELECT {} FROM {relation} t WHERE {} LIMIT 1",
            values.join(", "),
            key_match(&spec.key, "t", key_values)
        )
    };
    let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = key_values
        .iter()
        .flatten()
        .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect();
    let a = source
        .client
        .query_opt(&fetch(&spec.source_relation), &params)
        .await
        .map_err(|e| VerifyError::query(&source.name, &spec.name, e))?;
    let b = target
        .client
        .query_opt(&fetch(&spec.target_relation), &params)
        .await
        .map_err(|e| VerifyError::query(&target.name, &spec.name, e))?;
    let (Some(a), Some(b)) = (a, b) else {
        return Ok(Vec::new());
    };
    Ok(spec
        .columns
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let (x, y): (Option<String>, Option<String>) = (a.get(i), b.get(i));
            (x != y).then(|| crate::report::ColumnChange {
                column: c.name.clone(),
                source: x,
                target: y,
            })
        })
        .collect())
}
