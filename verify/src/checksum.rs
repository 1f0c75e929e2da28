//! Checksums computed inside PostgreSQL: per bucket, a row count beside the
//! sum of a 48-bit slice of each row's md5.
//!
//! Rows are rendered to text in a normalised way first: the session pins
//! TimeZone, DateStyle, IntervalStyle and extra_float_digits, floats are
//! rendered after adding zero (so -0 and 0 agree, as they compare equal),
//! and the row constructor's text form marks NULL (nothing) apart from the
//! empty string (`""`). A sum beside a count catches what XOR-style
//! combinations miss: duplicated rows and changes that cancel out.

use shardline_topology::quote_ident;

/// Settings every verify session runs with, on every side.
pub const SESSION_SETTINGS: &str =
    "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; \
     SET extra_float_digits = 3; SET bytea_output = 'hex'; SET statement_timeout = 0";

/// A column and its catalog type, as checksums need them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub sql_type: String,
}

/// SQL rendering one column for hashing.
pub fn column_expr(c: &Column, alias: &str) -> String {
    let col = format!("{alias}.{}", quote_ident(&c.name));
    match c.sql_type.as_str() {
        // -0 and 0 are equal; IEEE addition of +0 turns -0 into 0.
        "real" | "double precision" => format!("({col} + 0)"),
        _ => col,
    }
}

/// The normalised text of a whole row.
pub fn row_text(columns: &[Column], alias: &str) -> String {
    let parts: Vec<String> = columns.iter().map(|c| column_expr(c, alias)).collect();
    format!("row({})::text", parts.join(", "))
}

/// A 48-bit slice of the row text's md5, as bigint.
pub fn row_hash(columns: &[Column], alias: &str) -> String {
    format!(
        "('x' || substr(md5({}), 1, 12))::bit(48)::bigint",
        row_text(columns, alias)
    )
}

/// The text of a row's primary key, used to match rows across sides.
pub fn key_text(key: &[Column], alias: &str) -> String {
    row_text(key, alias)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_are_normalised_and_rows_quoted() {
        let cols = vec![
            Column {
                name: "id".into(),
                sql_type: "bigint".into(),
            },
            Column {
                name: "ratio".into(),
                sql_type: "double precision".into(),
            },
        ];
        assert_eq!(
            row_text(&cols, "t"),
            "row(t.\"id\", (t.\"ratio\" + 0))::text"
        );
        assert!(row_hash(&cols, "t").starts_with("('x' || substr(md5(row("));
    }
}
