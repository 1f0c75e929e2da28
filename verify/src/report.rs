//! The verification report: what was compared, what differs, and how sure
//! it is. Its JSON shape is documented in verify/REPORT.md.

use std::collections::BTreeMap;

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DifferenceKind {
    /// On the source, on no target.
    Missing,
    /// On the target that owns its bucket, not on the source.
    Extra,
    /// The same key more than once on one side.
    Duplicated,
    /// Same key, different values.
    Changed,
    /// On a target that does not own the row's bucket.
    Misplaced,
}

impl DifferenceKind {
    /// The name used in every output format.
    pub fn name(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Extra => "extra",
            Self::Duplicated => "duplicated",
            Self::Changed => "changed",
            Self::Misplaced => "misplaced",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ColumnChange {
    pub column: String,
    pub source: Option<String>,
    pub target: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Difference {
    pub kind: DifferenceKind,
    /// The database holding (or lacking) the row, without password.
    pub database: String,
    /// The row's primary key as PostgreSQL renders a row: `(1001,42)`.
    pub key: String,
    /// For `changed`: each differing column with both values (normalised text).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<ColumnChange>,
}

impl Difference {
    pub fn new(kind: DifferenceKind, database: &str, key: &str) -> Self {
        Self {
            kind,
            database: database.to_string(),
            key: key.to_string(),
            columns: Vec::new(),
        }
    }
}

/// A column one side has and the other lacks (a schema change not on
/// every side yet): reported apart from row differences, and the rows are
/// compared on the columns both sides have.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ColumnDrift {
    /// The target database.
    pub database: String,
    pub column: String,
    /// `source` (the target lacks it) or `target` (the source lacks it).
    pub only_on: &'static str,
}

#[derive(Clone, Debug, Serialize)]
pub struct TableReport {
    pub table: String,
    pub equal: bool,
    pub source_rows: i64,
    pub target_rows: i64,
    /// Buckets holding rows (up to 1024).
    pub buckets: usize,
    /// Buckets still different after the re-checks.
    pub differing_buckets: usize,
    /// Times the differing buckets were compared again.
    pub rechecks: u32,
    /// Buckets that differed at first and agreed on a re-check (changes
    /// that were still being applied).
    pub converged: usize,
    /// Differences per kind, all of them.
    pub counts: BTreeMap<DifferenceKind, u64>,
    /// The first differences, up to the report's row limit.
    pub differences: Vec<Difference>,
    /// Columns on one side only.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub schema_drift: Vec<ColumnDrift>,
}

impl TableReport {
    pub fn new(table: &str) -> Self {
        Self {
            table: table.to_string(),
            equal: true,
            source_rows: 0,
            target_rows: 0,
            buckets: 0,
            differing_buckets: 0,
            rechecks: 0,
            converged: 0,
            counts: BTreeMap::new(),
            differences: Vec::new(),
            schema_drift: Vec::new(),
        }
    }

    pub fn add(&mut self, d: Difference, max_rows: usize) {
        *self.counts.entry(d.kind).or_default() += 1;
        if self.differences.len() < max_rows {
            self.differences.push(d);
        }
    }

    pub fn listed(&self) -> usize {
        self.differences.len()
    }

    pub fn finish(&mut self) {
        self.equal =
            self.differing_buckets == 0 && self.counts.is_empty() && self.schema_drift.is_empty();
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// No schema drift and every table equal.
    pub equal: bool,
    /// How the targets' definitions differ from the source's (see
    /// `shardline schema diff`), apart from the data.
    pub schema_drift: Vec<shardline_schema::drift::Drift>,
    /// `counts`, `checksums` or `rows`.
    pub level: String,
    /// How concurrent changes were handled: differing buckets are compared
    /// again after a pause before they count.
    pub consistency: String,
    pub tables: Vec<TableReport>,
    pub seconds: f64,
}
