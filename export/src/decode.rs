//! Binary COPY tuples → Arrow record batches.
//!
//! Values arrive in PostgreSQL's binary send format (big-endian integers,
//! days and microseconds since 2000-01-01, numeric as base-10000 digits).
//! Each is decoded into its column's builder exactly: a value that has no
//! exact representation in the column's Arrow type (NaN or an infinity in a
//! decimal column, `infinity` timestamps, a digit beyond the declared scale)
//! is an error naming the column, never a NULL, a zero or a rounded number.
//! Synchronous code over bytes; batches are decoded on the rayon pool.

use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, FixedSizeBinaryBuilder,
    Float32Builder, Float64Builder, Int16Builder, Int32Builder, Int64Builder, StringBuilder,
    Time64MicrosecondBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, ListArray, RecordBatch};
use arrow_buffer::{NullBufferBuilder, OffsetBuffer, ScalarBuffer};
use arrow_schema::{Field, SchemaRef};
use shardline_pgcopy::TupleBatch;

use crate::types::{ColumnSpec, ValueType};

/// Days from 1970-01-01 (Arrow's epoch) to 2000-01-01 (PostgreSQL's).
const PG_EPOCH_DAYS: i32 = 10_957;
/// Microseconds from 1970-01-01 to 2000-01-01.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// A value that cannot be exported exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub column: String,
    pub reason: String,
}

/// Decodes batches of tuples of one result shape.
#[derive(Debug)]
pub struct BatchDecoder {
    columns: Vec<ColumnSpec>,
    schema: SchemaRef,
}

impl BatchDecoder {
    pub fn new(columns: Vec<ColumnSpec>) -> Self {
        let schema = Arc::new(crate::types::schema(&columns));
        Self { columns, schema }
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    pub fn columns(&self) -> &[ColumnSpec] {
        &self.columns
    }

    pub fn decode(&self, batch: &TupleBatch) -> Result<RecordBatch, DecodeError> {
        let n = batch.len();
        let mut builders: Vec<Builder> = self
            .columns
            .iter()
            .map(|c| Builder::new(&c.value, n))
            .collect();
        for tuple in batch.iter() {
            if tuple.field_count() != builders.len() {
                return Err(DecodeError {
                    column: String::new(),
                    reason: format!(
                        "a row has {} fields where {} columns were described",
                        tuple.field_count(),
                        builders.len()
                    ),
                });
            }
            for ((b, value), col) in builders.iter_mut().zip(tuple.fields()).zip(&self.columns) {
                b.append(value).map_err(|reason| DecodeError {
                    column: col.name.clone(),
                    reason,
                })?;
            }
        }
        let arrays: Vec<ArrayRef> = builders.into_iter().map(Builder::finish).collect();
        RecordBatch::try_new(self.schema.clone(), arrays).map_err(|e| DecodeError {
            column: String::new(),
            reason: e.to_string(),
        })
    }
}

/// One column's values as they are decoded.
enum Builder {
    Bool(BooleanBuilder),
    Int16(Int16Builder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Decimal(Decimal128Builder, u8, i8),
    NumericText(StringBuilder),
    Text(StringBuilder),
    Jsonb(StringBuilder),
    Date(Date32Builder),
    Time(Time64MicrosecondBuilder),
    Timestamp(TimestampMicrosecondBuilder),
    Uuid(FixedSizeBinaryBuilder),
    Bytes(BinaryBuilder),
    List(Box<ListBuilder>),
}

/// Offsets and validity over an element builder, so lists nest to any
/// element type without dynamic dispatch.
struct ListBuilder {
    field: Arc<Field>,
    offsets: Vec<i32>,
    nulls: NullBufferBuilder,
    elems: Builder,
    len: i32,
}

fn be<const N: usize>(v: &[u8], what: &str) -> Result<[u8; N], String> {
    v.try_into()
        .map_err(|_| format!("{what} value of {} bytes, expected {N}", v.len()))
}

impl Builder {
    fn new(ty: &ValueType, n: usize) -> Self {
        match ty {
            ValueType::Bool => Self::Bool(BooleanBuilder::with_capacity(n)),
            ValueType::Int16 => Self::Int16(Int16Builder::with_capacity(n)),
            ValueType::Int32 => Self::Int32(Int32Builder::with_capacity(n)),
            ValueType::Int64 => Self::Int64(Int64Builder::with_capacity(n)),
            ValueType::Float32 => Self::Float32(Float32Builder::with_capacity(n)),
            ValueType::Float64 => Self::Float64(Float64Builder::with_capacity(n)),
            ValueType::Decimal { precision, scale } => Self::Decimal(
                Decimal128Builder::with_capacity(n)
                    .with_precision_and_scale(*precision, *scale)
                    .expect("precision and scale checked when the type was mapped"),
                *precision,
                *scale,
            ),
            ValueType::NumericText => Self::NumericText(StringBuilder::with_capacity(n, n * 8)),
            ValueType::Text | ValueType::Json => {
                Self::Text(StringBuilder::with_capacity(n, n * 16))
            }
            ValueType::Jsonb => Self::Jsonb(StringBuilder::with_capacity(n, n * 32)),
            ValueType::Date => Self::Date(Date32Builder::with_capacity(n)),
            ValueType::Time => Self::Time(Time64MicrosecondBuilder::with_capacity(n)),
            ValueType::Timestamp => Self::Timestamp(TimestampMicrosecondBuilder::with_capacity(n)),
            ValueType::TimestampTz => {
                Self::Timestamp(TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC"))
            }
            ValueType::Uuid => Self::Uuid(FixedSizeBinaryBuilder::with_capacity(n, 16)),
            ValueType::Bytes => Self::Bytes(BinaryBuilder::with_capacity(n, n * 16)),
            ValueType::List(elem) => {
                let mut offsets = Vec::with_capacity(n + 1);
                offsets.push(0);
                Self::List(Box::new(ListBuilder {
                    field: Arc::new(elem.field("element")),
                    offsets,
                    nulls: NullBufferBuilder::new(n),
                    elems: Builder::new(elem, n),
                    len: 0,
                }))
            }
        }
    }

    fn append(&mut self, value: Option<&[u8]>) -> Result<(), String> {
        let Some(v) = value else {
            self.append_null();
            return Ok(());
        };
        match self {
            Self::Bool(b) => b.append_value(be::<1>(v, "boolean")?[0] != 0),
            Self::Int16(b) => b.append_value(i16::from_be_bytes(be(v, "smallint")?)),
            Self::Int32(b) => b.append_value(i32::from_be_bytes(be(v, "integer")?)),
            Self::Int64(b) => b.append_value(i64::from_be_bytes(be(v, "bigint")?)),
            Self::Float32(b) => b.append_value(f32::from_be_bytes(be(v, "real")?)),
            Self::Float64(b) => b.append_value(f64::from_be_bytes(be(v, "double precision")?)),
            Self::Decimal(b, precision, scale) => {
                b.append_value(numeric_to_i128(v, *precision, *scale)?)
            }
            Self::NumericText(b) => b.append_value(numeric_to_string(v)?),
            Self::Text(b) => b.append_value(utf8(v)?),
            Self::Jsonb(b) => match v.split_first() {
                Some((1, text)) => b.append_value(utf8(text)?),
                _ => return Err("jsonb value in an unknown binary version".into()),
            },
            Self::Date(b) => {
                let days = i32::from_be_bytes(be(v, "date")?);
                if days == i32::MAX || days == i32::MIN {
                    return Err(
                        "date is infinity or -infinity, which Parquet has no value for".into(),
                    );
                }
                b.append_value(days.checked_add(PG_EPOCH_DAYS).ok_or("date out of range")?)
            }
            Self::Time(b) => b.append_value(i64::from_be_bytes(be(v, "time")?)),
            Self::Timestamp(b) => {
                let micros = i64::from_be_bytes(be(v, "timestamp")?);
                if micros == i64::MAX || micros == i64::MIN {
                    return Err(
                        "timestamp is infinity or -infinity, which Parquet has no value for".into(),
                    );
                }
                b.append_value(
                    micros
                        .checked_add(PG_EPOCH_MICROS)
                        .ok_or("timestamp out of range")?,
                )
            }
            Self::Uuid(b) => b
                .append_value(be::<16>(v, "uuid")?)
                .map_err(|e| e.to_string())?,
            Self::Bytes(b) => b.append_value(v),
            Self::List(l) => l.append(v)?,
        }
        Ok(())
    }

    fn append_null(&mut self) {
        match self {
            Self::Bool(b) => b.append_null(),
            Self::Int16(b) => b.append_null(),
            Self::Int32(b) => b.append_null(),
            Self::Int64(b) => b.append_null(),
            Self::Float32(b) => b.append_null(),
            Self::Float64(b) => b.append_null(),
            Self::Decimal(b, ..) => b.append_null(),
            Self::NumericText(b) | Self::Text(b) | Self::Jsonb(b) => b.append_null(),
            Self::Date(b) => b.append_null(),
            Self::Time(b) => b.append_null(),
            Self::Timestamp(b) => b.append_null(),
            Self::Uuid(b) => b.append_null(),
            Self::Bytes(b) => b.append_null(),
            Self::List(l) => {
                l.nulls.append_null();
                l.offsets.push(l.len);
            }
        }
    }

    fn finish(self) -> ArrayRef {
        use arrow_array::builder::ArrayBuilder;
        match self {
            Self::Bool(mut b) => Arc::new(b.finish()),
            Self::Int16(mut b) => Arc::new(b.finish()),
            Self::Int32(mut b) => Arc::new(b.finish()),
            Self::Int64(mut b) => Arc::new(b.finish()),
            Self::Float32(mut b) => Arc::new(b.finish()),
            Self::Float64(mut b) => Arc::new(b.finish()),
            Self::Decimal(mut b, ..) => Arc::new(b.finish()),
            Self::NumericText(mut b) | Self::Text(mut b) | Self::Jsonb(mut b) => {
                Arc::new(b.finish())
            }
            Self::Date(mut b) => Arc::new(b.finish()),
            Self::Time(mut b) => Arc::new(b.finish()),
            Self::Timestamp(mut b) => Arc::new(b.finish()),
            Self::Uuid(mut b) => ArrayBuilder::finish(&mut b),
            Self::Bytes(mut b) => Arc::new(b.finish()),
            Self::List(l) => {
                let ListBuilder {
                    field,
                    offsets,
                    mut nulls,
                    elems,
                    ..
                } = *l;
                Arc::new(ListArray::new(
                    field,
                    OffsetBuffer::new(ScalarBuffer::from(offsets)),
                    elems.finish(),
                    nulls.finish(),
                ))
            }
        }
    }
}

impl ListBuilder {
    /// A binary array: dimensions, a has-nulls flag, the element type, then
    /// (length, lower bound) per dimension, then the elements.
    fn append(&mut self, v: &[u8]) -> Result<(), String> {
        let header = |at: usize| -> Result<i32, String> {
            v.get(at..at + 4)
                .map(|b| i32::from_be_bytes(b.try_into().expect("4 bytes")))
                .ok_or_else(|| "truncated array value".to_string())
        };
        let ndim = header(0)?;
        let mut pos = 12usize;
        let count = match ndim {
            0 => 0,
            1 => {
                pos += 8;
                header(12)?
            }
            n => {
                return Err(format!(
                    "a {n}-dimensional array; only one-dimensional arrays map to Parquet lists"
                ))
            }
        };
        for _ in 0..count {
            let len = header(pos)?;
            pos += 4;
            if len < 0 {
                self.elems.append_null();
                continue;
            }
            let elem = v
                .get(pos..pos + len as usize)
                .ok_or_else(|| "truncated array element".to_string())?;
            self.elems.append(Some(elem))?;
            pos += len as usize;
        }
        self.len += count;
        self.offsets.push(self.len);
        self.nulls.append_non_null();
        Ok(())
    }
}

fn utf8(v: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(v).map_err(|e| format!("text that is not valid UTF-8 ({e})"))
}

/// A binary numeric's header: digit count, weight of the first digit (in
/// powers of 10000), sign and display scale; then the base-10000 digits.
struct Numeric<'a> {
    weight: i32,
    sign: u16,
    dscale: u16,
    digits: &'a [u8],
}

const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_PINF: u16 = 0xD000;
const NUMERIC_NINF: u16 = 0xF000;

impl<'a> Numeric<'a> {
    fn parse(v: &'a [u8]) -> Result<Self, String> {
        if v.len() < 8 {
            return Err("truncated numeric value".into());
        }
        let ndigits = u16::from_be_bytes([v[0], v[1]]) as usize;
        let digits = &v[8..];
        if digits.len() != ndigits * 2 {
            return Err("numeric value with a wrong digit count".into());
        }
        Ok(Self {
            weight: i16::from_be_bytes([v[2], v[3]]) as i32,
            sign: u16::from_be_bytes([v[4], v[5]]),
            dscale: u16::from_be_bytes([v[6], v[7]]),
            digits,
        })
    }

    fn digit(&self, i: i32) -> i128 {
        if i < 0 || (i as usize) * 2 >= self.digits.len() {
            return 0;
        }
        let i = i as usize * 2;
        u16::from_be_bytes([self.digits[i], self.digits[i + 1]]) as i128
    }

    fn ndigits(&self) -> i32 {
        (self.digits.len() / 2) as i32
    }

    fn special(&self) -> Option<&'static str> {
        match self.sign {
            NUMERIC_NAN => Some("NaN"),
            NUMERIC_PINF => Some("Infinity"),
            NUMERIC_NINF => Some("-Infinity"),
            _ => None,
        }
    }
}

/// 10^0 ..= 10^38, all that i128 holds.
const POW10: [i128; 39] = {
    let mut t = [1i128; 39];
    let mut i = 1;
    while i < 39 {
        t[i] = t[i - 1] * 10;
        i += 1;
    }
    t
};

/// The numeric as an integer count of 10^-scale, exactly, or an error.
pub fn numeric_to_i128(v: &[u8], precision: u8, scale: i8) -> Result<i128, String> {
    let n = Numeric::parse(v)?;
    if let Some(s) = n.special() {
        return Err(format!(
            "numeric {s} has no decimal({precision},{scale}) value"
        ));
    }
    let overflow = || format!("numeric value does not fit decimal({precision},{scale})");
    let mut value: i128 = 0;
    for i in 0..n.ndigits() {
        let d = n.digit(i);
        if d == 0 {
            continue;
        }
        // The power of ten of this base-10000 digit's units in the result.
        let p = 4 * (n.weight - i) + scale as i32;
        let part = if p >= 0 {
            POW10
                .get(p as usize)
                .and_then(|m| d.checked_mul(*m))
                .ok_or_else(overflow)?
        } else {
            let div = POW10[(-p).min(4) as usize];
            if d % div != 0 {
                return Err(format!(
                    "numeric value has more than {scale} decimal places and would be rounded"
                ));
            }
            d / div
        };
        value = value.checked_add(part).ok_or_else(overflow)?;
    }
    if value >= POW10[precision as usize] {
        return Err(overflow());
    }
    Ok(if n.sign == NUMERIC_NEG { -value } else { value })
}

/// The numeric exactly as PostgreSQL prints it (`-12.50`, `0.0001`, `NaN`).
pub fn numeric_to_string(v: &[u8]) -> Result<String, String> {
    let n = Numeric::parse(v)?;
    if let Some(s) = n.special() {
        return Ok(s.to_string());
    }
    let mut out = String::new();
    if n.sign == NUMERIC_NEG {
        out.push('-');
    }
    if n.weight < 0 {
        out.push('0');
    } else {
        for i in 0..=n.weight {
            if i == 0 {
                out.push_str(&n.digit(0).to_string());
            } else {
                out.push_str(&format!("{:04}", n.digit(i)));
            }
        }
    }
    if n.dscale > 0 {
        out.push('.');
        let mut frac = String::new();
        let mut i = n.weight + 1;
        while frac.len() < n.dscale as usize {
            frac.push_str(&format!("{:04}", n.digit(i)));
            i += 1;
        }
        frac.truncate(n.dscale as usize);
        out.push_str(&frac);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a binary numeric from its parts.
    fn numeric(weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(digits.len() as u16).to_be_bytes());
        v.extend_from_slice(&weight.to_be_bytes());
        v.extend_from_slice(&sign.to_be_bytes());
        v.extend_from_slice(&dscale.to_be_bytes());
        for d in digits {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v
    }

    #[test]
    fn numerics_become_exact_scaled_integers() {
        // 12345.6789 = [1, 2345, 6789] weight 1
        let v = numeric(1, 0, 4, &[1, 2345, 6789]);
        assert_eq!(numeric_to_i128(&v, 18, 4), Ok(123_456_789));
        assert_eq!(numeric_to_i128(&v, 18, 6), Ok(12_345_678_900));
        assert!(numeric_to_i128(&v, 18, 2).unwrap_err().contains("rounded"));
        assert!(numeric_to_i128(&v, 8, 4)
            .unwrap_err()
            .contains("does not fit"));
        // -0.05 = [500] weight -1
        let v = numeric(-1, NUMERIC_NEG, 2, &[500]);
        assert_eq!(numeric_to_i128(&v, 5, 2), Ok(-5));
        assert_eq!(numeric_to_string(&v).unwrap(), "-0.05");
        // 10^37 - 1 at scale 0 fits decimal(38,0); 38 nines too.
        let nines = numeric(
            9,
            0,
            0,
            &[99, 9999, 9999, 9999, 9999, 9999, 9999, 9999, 9999, 9999],
        );
        assert_eq!(numeric_to_i128(&nines, 38, 0), Ok(10i128.pow(38) - 1));
        // 28 integer and 10 fraction digits: 40 digits in base-10000 groups.
        let wide = numeric(
            6,
            NUMERIC_NEG,
            10,
            &[9999, 9999, 9999, 9999, 9999, 9999, 9999, 9999, 9999, 9900],
        );
        assert_eq!(numeric_to_i128(&wide, 38, 10), Ok(-(10i128.pow(38) - 1)));
        assert_eq!(numeric_to_i128(&numeric(0, 0, 0, &[]), 5, 2), Ok(0));
        let nan = numeric(0, NUMERIC_NAN, 0, &[]);
        assert!(numeric_to_i128(&nan, 5, 2).unwrap_err().contains("NaN"));
        assert_eq!(numeric_to_string(&nan).unwrap(), "NaN");
    }

    #[test]
    fn numeric_text_keeps_the_display_scale() {
        assert_eq!(
            numeric_to_string(&numeric(0, 0, 2, &[12, 5000])).unwrap(),
            "12.50"
        );
        assert_eq!(numeric_to_string(&numeric(0, 0, 0, &[])).unwrap(), "0");
        assert_eq!(numeric_to_string(&numeric(0, 0, 3, &[])).unwrap(), "0.000");
        assert_eq!(
            numeric_to_string(&numeric(-2, 0, 8, &[1])).unwrap(),
            "0.00000001"
        );
        assert_eq!(
            numeric_to_string(&numeric(2, 0, 0, &[1])).unwrap(),
            "100000000"
        );
    }
}
