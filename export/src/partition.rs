//! Hive-style partitions: which directory each row goes to.
//!
//! `--partition-by COL` puts a row under `COL=<value>/` and leaves the
//! column out of the files (its value is the directory, as Hive, Spark and
//! pyarrow write and read it); `day(COL)` and `month(COL)` put it under
//! `COL_day=2024-03-01/` or `COL_month=2024-03/` and keep `COL` in the
//! files. A timestamptz is cut into days in UTC. NULL goes to
//! `__HIVE_DEFAULT_PARTITION__`. Values are percent-encoded outside
//! `[A-Za-z0-9._~-]` so any text (slashes, `=`, non-ASCII) makes one safe
//! directory name that readers decode back.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Decimal128Type, Int16Type, Int32Type, Int64Type, TimestampMicrosecondType,
};
use arrow_array::{Array, ArrayRef, RecordBatch, UInt32Array};
use arrow_schema::{DataType, SchemaRef};

use crate::types::ColumnSpec;

/// The directory name of a NULL partition value, as Hive names it.
pub const NULL_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PartitionBy {
    Column(String),
    Day(String),
    Month(String),
}

impl PartitionBy {
    /// `COL`, `day(COL)` or `month(COL)`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let inner = |prefix: &str| {
            s.strip_prefix(prefix)
                .and_then(|r| r.strip_suffix(')'))
                .map(|c| c.trim().to_string())
        };
        let p = if let Some(c) = inner("day(") {
            Self::Day(c)
        } else if let Some(c) = inner("month(") {
            Self::Month(c)
        } else {
            Self::Column(s.to_string())
        };
        if p.column().is_empty() || p.column().contains(['(', ')', '/']) {
            return Err(format!(
                "--partition-by {s:?}: expected COL, day(COL) or month(COL)"
            ));
        }
        Ok(p)
    }

    pub fn column(&self) -> &str {
        match self {
            Self::Column(c) | Self::Day(c) | Self::Month(c) => c,
        }
    }

    /// The key in directory names.
    pub fn key(&self) -> String {
        match self {
            Self::Column(c) => c.clone(),
            Self::Day(c) => format!("{c}_day"),
            Self::Month(c) => format!("{c}_month"),
        }
    }
}

impl fmt::Display for PartitionBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Column(c) => write!(f, "{c}"),
            Self::Day(c) => write!(f, "day({c})"),
            Self::Month(c) => write!(f, "month({c})"),
        }
    }
}

/// Why a partition expression does not fit the result's columns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PartitionError {
    UnknownColumn {
        column: String,
        columns: Vec<String>,
    },
    WrongType {
        by: String,
        pg_type: String,
    },
}

/// Splits decoded batches by partition, and knows the files' schema.
#[derive(Debug)]
pub struct Partitioner {
    by: Option<PartitionBy>,
    index: usize,
    /// The columns kept in the files.
    keep: Vec<usize>,
    file_schema: SchemaRef,
}

impl Partitioner {
    pub fn new(
        by: Option<PartitionBy>,
        columns: &[ColumnSpec],
        schema: &SchemaRef,
    ) -> Result<Self, PartitionError> {
        let all: Vec<usize> = (0..columns.len()).collect();
        let Some(by) = by else {
            return Ok(Self {
                by: None,
                index: 0,
                keep: all,
                file_schema: schema.clone(),
            });
        };
        let index = columns
            .iter()
            .position(|c| c.name == by.column())
            .ok_or_else(|| PartitionError::UnknownColumn {
                column: by.column().to_string(),
                columns: columns.iter().map(|c| c.name.clone()).collect(),
            })?;
        let col = &columns[index];
        let fits = match by {
            PartitionBy::Column(_) => col.value.partitionable(),
            PartitionBy::Day(_) | PartitionBy::Month(_) => col.value.is_temporal(),
        };
        if !fits {
            return Err(PartitionError::WrongType {
                by: by.to_string(),
                pg_type: col.pg_type.clone(),
            });
        }
        let keep: Vec<usize> = match by {
            PartitionBy::Column(_) => all.into_iter().filter(|&i| i != index).collect(),
            _ => all,
        };
        let file_schema = Arc::new(schema.project(&keep).expect("indices within the schema"));
        Ok(Self {
            by: Some(by),
            index,
            keep,
            file_schema,
        })
    }

    /// The schema of the Parquet files (without a partition column).
    pub fn file_schema(&self) -> &SchemaRef {
        &self.file_schema
    }

    /// The batch's rows grouped by partition directory (`""` when not
    /// partitioned), in order of first appearance, rows in their order.
    pub fn split(&self, batch: RecordBatch) -> Result<Vec<(String, RecordBatch)>, String> {
        let Some(by) = &self.by else {
            return Ok(vec![(String::new(), batch)]);
        };
        let array = batch.column(self.index);
        let mut groups: Vec<(String, Vec<u32>)> = Vec::new();
        let mut slot: HashMap<String, usize> = HashMap::new();
        for row in 0..batch.num_rows() {
            let value = partition_value(by, array, row)?;
            let dir = format!("{}={}", by.key(), value);
            let i = *slot.entry(dir.clone()).or_insert_with(|| {
                groups.push((dir, Vec::new()));
                groups.len() - 1
            });
            groups[i].1.push(row as u32);
        }
        let projected = batch
            .project(&self.keep)
            .map_err(|e| format!("projecting the partition column away: {e}"))?;
        if groups.len() == 1 {
            let (dir, _) = groups.pop().expect("one group");
            return Ok(vec![(dir, projected)]);
        }
        groups
            .into_iter()
            .map(|(dir, rows)| {
                let indices = UInt32Array::from(rows);
                arrow_select::take::take_record_batch(&projected, &indices)
                    .map(|b| (dir, b))
                    .map_err(|e| e.to_string())
            })
            .collect()
    }
}

/// The directory value of one row: encoded, or the NULL partition.
fn partition_value(by: &PartitionBy, array: &ArrayRef, row: usize) -> Result<String, String> {
    if array.is_null(row) {
        return Ok(NULL_PARTITION.to_string());
    }
    let days = |array: &ArrayRef| -> i64 {
        match array.data_type() {
            DataType::Date32 => array.as_primitive::<Date32Type>().value(row) as i64,
            _ => array
                .as_primitive::<TimestampMicrosecondType>()
                .value(row)
                .div_euclid(86_400_000_000),
        }
    };
    Ok(match by {
        PartitionBy::Day(_) => {
            let (y, m, d) = civil_from_days(days(array));
            format!("{y:04}-{m:02}-{d:02}")
        }
        PartitionBy::Month(_) => {
            let (y, m, _) = civil_from_days(days(array));
            format!("{y:04}-{m:02}")
        }
        PartitionBy::Column(_) => encode(&match array.data_type() {
            DataType::Boolean => array.as_boolean().value(row).to_string(),
            DataType::Int16 => array.as_primitive::<Int16Type>().value(row).to_string(),
            DataType::Int32 => array.as_primitive::<Int32Type>().value(row).to_string(),
            DataType::Int64 => array.as_primitive::<Int64Type>().value(row).to_string(),
            DataType::Utf8 => array.as_string::<i32>().value(row).to_string(),
            DataType::Date32 => {
                let (y, m, d) = civil_from_days(days(array));
                format!("{y:04}-{m:02}-{d:02}")
            }
            DataType::Decimal128(_, _) => {
                array.as_primitive::<Decimal128Type>().value_as_string(row)
            }
            DataType::FixedSizeBinary(16) => {
                let b = array.as_fixed_size_binary().value(row);
                let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
                format!(
                    "{}-{}-{}-{}-{}",
                    &h[0..8],
                    &h[8..12],
                    &h[12..16],
                    &h[16..20],
                    &h[20..]
                )
            }
            other => return Err(format!("cannot partition by a column of type {other}")),
        }),
    })
}

/// Percent-encodes everything outside the URI unreserved characters.
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Year, month, day of a count of days since 1970-01-01 (proleptic
/// Gregorian, as PostgreSQL and Arrow count them).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_expressions_parse() {
        assert_eq!(
            PartitionBy::parse("day(created_at)"),
            Ok(PartitionBy::Day("created_at".into()))
        );
        assert_eq!(
            PartitionBy::parse(" month( created_at ) "),
            Ok(PartitionBy::Month("created_at".into()))
        );
        assert_eq!(
            PartitionBy::parse("currency"),
            Ok(PartitionBy::Column("currency".into()))
        );
        assert!(PartitionBy::parse("year(x)").is_err());
        assert!(PartitionBy::parse("").is_err());
    }

    #[test]
    fn civil_dates_match_known_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(10_957), (2000, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(-719_528), (0, 1, 1));
    }

    #[test]
    fn values_encode_to_one_safe_directory_name() {
        assert_eq!(encode("EUR"), "EUR");
        assert_eq!(encode("a/b=c d"), "a%2Fb%3Dc%20d");
        assert_eq!(encode("Zürich"), "Z%C3%BCrich");
    }
}
