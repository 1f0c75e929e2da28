//! PostgreSQL column types → exact Arrow types.
//!
//! The mapping never loses a value: `numeric(p,s)` becomes `Decimal128(p,s)`
//! (p ≤ 38); numeric without a declared precision (or wider than Decimal128
//! holds) cannot be given one exact decimal type, so it becomes its exact
//! decimal text ([`NumericPolicy::Text`], the default) or stops the export
//! naming the column ([`NumericPolicy::Error`]). It is never a double.
//! timestamp and timestamptz become microseconds since the Unix epoch,
//! timestamptz marked as adjusted to UTC; uuid becomes 16 bytes with the
//! UUID logical type and json/jsonb text with the JSON logical type.
//! One-dimensional arrays become lists of their element type, enums their
//! label. Any other type is an error naming the column, unless the caller
//! asked for it to be cast to text on the server.

use std::sync::Arc;

use arrow_schema::extension::{Json, Uuid};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use tokio_postgres::types::{Kind, Type};

/// Decimal128 holds at most 38 decimal digits.
pub const MAX_DECIMAL128_PRECISION: u8 = 38;

/// Metadata key on every Arrow field: the column's PostgreSQL type, so a
/// reader can tell a numeric written as text from a text column.
pub const PG_TYPE_KEY: &str = "shardline.pg_type";

/// What to do with numeric columns that have no exact Decimal128 type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NumericPolicy {
    /// Write the exact decimal text PostgreSQL renders (`12.50`, `NaN`).
    #[default]
    Text,
    /// Stop with an error naming the column.
    Error,
}

/// How one column's binary values are decoded and what Arrow type they get.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValueType {
    Bool,
    Int16,
    Int32,
    Int64,
    Float32,
    Float64,
    /// numeric(p,s) with p ≤ 38: exact, at the declared scale.
    Decimal {
        precision: u8,
        scale: i8,
    },
    /// numeric without an exact Decimal128 type, as its decimal text.
    NumericText,
    /// text, varchar, char(n), name, enums, and values cast to text.
    Text,
    Json,
    Jsonb,
    Date,
    Time,
    Timestamp,
    TimestampTz,
    Uuid,
    Bytes,
    /// A one-dimensional array of the element type.
    List(Box<ValueType>),
}

impl ValueType {
    pub fn data_type(&self) -> DataType {
        match self {
            Self::Bool => DataType::Boolean,
            Self::Int16 => DataType::Int16,
            Self::Int32 => DataType::Int32,
            Self::Int64 => DataType::Int64,
            Self::Float32 => DataType::Float32,
            Self::Float64 => DataType::Float64,
            Self::Decimal { precision, scale } => DataType::Decimal128(*precision, *scale),
            Self::NumericText | Self::Text | Self::Json | Self::Jsonb => DataType::Utf8,
            Self::Date => DataType::Date32,
            Self::Time => DataType::Time64(TimeUnit::Microsecond),
            Self::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            Self::TimestampTz => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            Self::Uuid => DataType::FixedSizeBinary(16),
            Self::Bytes => DataType::Binary,
            Self::List(elem) => DataType::List(Arc::new(elem.field("element"))),
        }
    }

    /// A nullable field of this type, with its logical-type extension.
    pub fn field(&self, name: &str) -> Field {
        let field = Field::new(name, self.data_type(), true);
        match self {
            Self::Uuid => field.with_extension_type(Uuid),
            Self::Json | Self::Jsonb => field.with_extension_type(Json::default()),
            _ => field,
        }
    }

    /// Whether values of this type can name a partition directory.
    pub fn partitionable(&self) -> bool {
        matches!(
            self,
            Self::Bool
                | Self::Int16
                | Self::Int32
                | Self::Int64
                | Self::Text
                | Self::Date
                | Self::Uuid
                | Self::Decimal { .. }
        )
    }

    /// Whether `day(col)` / `month(col)` apply.
    pub fn is_temporal(&self) -> bool {
        matches!(self, Self::Date | Self::Timestamp | Self::TimestampTz)
    }
}

/// A result column: its name, its PostgreSQL type and how it is exported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnSpec {
    pub name: String,
    /// The type as PostgreSQL names it, with its modifier (`numeric(18,2)`).
    pub pg_type: String,
    pub value: ValueType,
    /// Read as `col::text` because the type has no exact mapping and the
    /// caller asked for unknown types as text.
    pub cast_to_text: bool,
}

/// Why a column has no Arrow type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unmapped {
    /// A type with no exact mapping (interval, inet, money, …).
    Unsupported,
    /// numeric without an exact decimal type under [`NumericPolicy::Error`].
    UnconstrainedNumeric,
}

/// Maps a result column (type and type modifier as the server describes
/// it) to its export type. With `cast_unknown`, unsupported types are read
/// as text.
pub fn column_spec(
    name: &str,
    ty: &Type,
    typmod: i32,
    numeric: NumericPolicy,
    cast_unknown: bool,
) -> Result<ColumnSpec, Unmapped> {
    let pg_type = type_name(ty, typmod);
    match value_type(ty, typmod, numeric) {
        Ok(value) => Ok(ColumnSpec {
            name: name.to_string(),
            pg_type,
            value,
            cast_to_text: false,
        }),
        Err(Unmapped::Unsupported) if cast_unknown => Ok(ColumnSpec {
            name: name.to_string(),
            pg_type,
            value: ValueType::Text,
            cast_to_text: true,
        }),
        Err(e) => Err(e),
    }
}

fn value_type(ty: &Type, typmod: i32, numeric: NumericPolicy) -> Result<ValueType, Unmapped> {
    match ty.kind() {
        Kind::Enum(_) => return Ok(ValueType::Text),
        // An array column's modifier is its element's (numeric(10,2)[]).
        Kind::Array(elem) => {
            return Ok(ValueType::List(Box::new(value_type(
                elem, typmod, numeric,
            )?)))
        }
        // A domain travels in its base type's binary form, under the
        // domain's modifier ([`crate::plan`] looks it up: the server
        // describes a domain column without one).
        Kind::Domain(base) => return value_type(base, typmod, numeric),
        _ => {}
    }
    Ok(match *ty {
        Type::BOOL => ValueType::Bool,
        Type::INT2 => ValueType::Int16,
        Type::INT4 => ValueType::Int32,
        Type::INT8 => ValueType::Int64,
        Type::FLOAT4 => ValueType::Float32,
        Type::FLOAT8 => ValueType::Float64,
        Type::NUMERIC => match numeric_typmod(typmod) {
            Some((p, s)) if p <= MAX_DECIMAL128_PRECISION as i32 && s >= 0 => ValueType::Decimal {
                precision: p as u8,
                scale: s as i8,
            },
            _ if numeric == NumericPolicy::Text => ValueType::NumericText,
            _ => return Err(Unmapped::UnconstrainedNumeric),
        },
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => ValueType::Text,
        Type::JSON => ValueType::Json,
        Type::JSONB => ValueType::Jsonb,
        Type::DATE => ValueType::Date,
        Type::TIME => ValueType::Time,
        Type::TIMESTAMP => ValueType::Timestamp,
        Type::TIMESTAMPTZ => ValueType::TimestampTz,
        Type::UUID => ValueType::Uuid,
        Type::BYTEA => ValueType::Bytes,
        _ => return Err(Unmapped::Unsupported),
    })
}

/// `(precision, scale)` of a numeric type modifier; `None` for numeric
/// without one (modifier -1).
pub fn numeric_typmod(typmod: i32) -> Option<(i32, i32)> {
    if typmod < 4 {
        return None;
    }
    let m = typmod - 4;
    let precision = (m >> 16) & 0xffff;
    // The scale is an 11-bit signed field (PostgreSQL 15 allows negative).
    let scale = ((m & 0x7ff) ^ 1024) - 1024;
    Some((precision, scale))
}

/// The type as PostgreSQL would print it, for messages and metadata.
pub fn type_name(ty: &Type, typmod: i32) -> String {
    let base = match ty.kind() {
        Kind::Array(elem) => return format!("{}[]", type_name(elem, typmod)),
        _ => ty.name().to_string(),
    };
    match (*ty == Type::NUMERIC, numeric_typmod(typmod)) {
        (true, Some((p, s))) => format!("numeric({p},{s})"),
        _ => base,
    }
}

/// The Arrow schema of a set of columns.
pub fn schema(columns: &[ColumnSpec]) -> Schema {
    Schema::new(
        columns
            .iter()
            .map(|c| {
                let f = c.value.field(&c.name);
                let mut meta = f.metadata().clone();
                meta.insert(PG_TYPE_KEY.to_string(), c.pg_type.clone());
                f.with_metadata(meta)
            })
            .collect::<Vec<_>>(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_modifiers_decode_precision_and_scale() {
        // numeric(18,2): ((18 << 16) | 2) + 4
        assert_eq!(numeric_typmod((18 << 16 | 2) + 4), Some((18, 2)));
        assert_eq!(numeric_typmod(-1), None);
        // numeric(3,-2) on PostgreSQL 15+
        assert_eq!(
            numeric_typmod((3 << 16 | (0x7ff & -2i32)) + 4),
            Some((3, -2))
        );
    }

    #[test]
    fn numeric_is_decimal_or_text_or_an_error_never_a_double() {
        let t = |m, p| value_type(&Type::NUMERIC, m, p);
        assert_eq!(
            t((18 << 16 | 2) + 4, NumericPolicy::Text),
            Ok(ValueType::Decimal {
                precision: 18,
                scale: 2
            })
        );
        assert_eq!(t(-1, NumericPolicy::Text), Ok(ValueType::NumericText));
        assert_eq!(
            t((50 << 16 | 2) + 4, NumericPolicy::Text),
            Ok(ValueType::NumericText)
        );
        assert_eq!(
            t(-1, NumericPolicy::Error),
            Err(Unmapped::UnconstrainedNumeric)
        );
        assert_eq!(
            value_type(
                &Type::NUMERIC_ARRAY,
                (10 << 16 | 3) + 4,
                NumericPolicy::Text
            ),
            Ok(ValueType::List(Box::new(ValueType::Decimal {
                precision: 10,
                scale: 3
            })))
        );
    }

    #[test]
    fn unknown_types_are_errors_unless_cast() {
        assert_eq!(
            column_spec("d", &Type::INTERVAL, -1, NumericPolicy::Text, false),
            Err(Unmapped::Unsupported)
        );
        let c = column_spec("d", &Type::INTERVAL, -1, NumericPolicy::Text, true).unwrap();
        assert!(c.cast_to_text);
        assert_eq!(c.value, ValueType::Text);
    }

    #[test]
    fn logical_types_ride_on_arrow_extensions() {
        let s = schema(&[
            column_spec("id", &Type::UUID, -1, NumericPolicy::Text, false).unwrap(),
            column_spec("doc", &Type::JSONB, -1, NumericPolicy::Text, false).unwrap(),
        ]);
        assert_eq!(s.field(0).extension_type_name(), Some("arrow.uuid"));
        assert_eq!(s.field(1).extension_type_name(), Some("arrow.json"));
        assert_eq!(s.field(1).metadata()[PG_TYPE_KEY], "jsonb");
    }
}
