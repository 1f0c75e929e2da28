//! SQL text for applying row changes to a target.
//!
//! Values arrive in PostgreSQL's text output form (the replication session
//! pins DateStyle, TimeZone, IntervalStyle and extra_float_digits so that
//! form is unambiguous and exact). Written back as untyped string literals,
//! each is parsed by the target column's own input function: the value
//! round-trips exactly without the applier knowing any type. Every session
//! that runs such text sets `standard_conforming_strings = on` (appliers at
//! start, others through [`connect`]), so doubling quotes is the whole of
//! literal escaping.

use std::fmt::Write;

use shardline_topology::{quote_ident, ConnString};
use tokio_postgres::Client;

/// Connects to `conn` for statements holding literals built here. They
/// double quotes and leave backslashes alone, which is exact only with
/// `standard_conforming_strings = on`; a database or role may set it off,
/// so every such session sets it on itself.
pub async fn connect(conn: &ConnString) -> Result<Client, crate::run::CdcError> {
    let client = conn.connect().await?;
    client
        .batch_execute("SET standard_conforming_strings = on")
        .await
        .map_err(|e| crate::run::CdcError::query(conn, &e))?;
    Ok(client)
}

/// A value to write: NULL or a text-form literal.
pub type Value<'a> = Option<&'a [u8]>;

/// Appends `'text'` (or NULL) to `out`.
pub fn push_literal(out: &mut String, value: Value<'_>) {
    match value {
        None => out.push_str("NULL"),
        Some(bytes) => {
            out.push('\'');
            let text = String::from_utf8_lossy(bytes);
            for (i, part) in text.split('\'').enumerate() {
                if i > 0 {
                    out.push_str("''");
                }
                out.push_str(part);
            }
            out.push('\'');
        }
    }
}

/// Appends one element of a text array literal written inside a SQL string
/// literal: `"…"` with `\` and `"` escaped for the array parser and `'`
/// doubled for the string; NULL unquoted. A whole column of values thus
/// travels as one literal (`'{"a","b",NULL}'::text[]`): the target parses
/// one constant instead of one per value, which is what makes a statement
/// over thousands of rows cheap to parse and plan.
pub fn push_array_element(out: &mut String, value: Option<&str>) {
    let Some(text) = value else {
        out.push_str("NULL");
        return;
    };
    out.push('"');
    let mut rest = text;
    while let Some(at) = rest.find(['\\', '"', '\'']) {
        out.push_str(&rest[..at]);
        out.push_str(match rest.as_bytes()[at] {
            b'\\' => "\\\\",
            b'"' => "\\\"",
            _ => "''",
        });
        rest = &rest[at + 1..];
    }
    out.push_str(rest);
    out.push('"');
}

/// `unnest('{…}'::type[], …) AS alias(names)`: columns of values as one
/// row source, each column one array literal (see [`push_array_element`]).
/// `columns` holds, per column, its element type and its values.
pub fn unnest<'a, I>(columns: Vec<(&str, I)>, alias: &str, names: &[String]) -> String
where
    I: IntoIterator<Item = Option<&'a str>>,
{
    let mut sql = String::from("unnest(");
    for (i, (ty, values)) in columns.into_iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str("'{");
        for (j, v) in values.into_iter().enumerate() {
            if j > 0 {
                sql.push(',');
            }
            push_array_element(&mut sql, v);
        }
        let _ = write!(sql, "}}'::{ty}[]");
    }
    let _ = write!(sql, ") AS {alias}({})", names.join(", "));
    sql
}

/// Appends one value of a `COPY … FROM STDIN` row in text format: `\N`
/// for NULL; backslash, newline, carriage return and tab escaped, so no
/// value can end its field, its row or the data.
pub fn push_copy_value(out: &mut Vec<u8>, value: Value<'_>) {
    let Some(bytes) = value else {
        out.extend_from_slice(b"\\N");
        return;
    };
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(escaped);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// `COPY table (cols) FROM STDIN`.
pub fn copy_from_stdin(table: &str, columns: &[&str]) -> String {
    format!("COPY {table} ({}) FROM STDIN", idents(columns))
}

/// `INSERT INTO table (cols) VALUES (...), (...)` for rows of equal shape.
pub fn insert<'a>(
    table: &str,
    columns: &[&str],
    rows: impl IntoIterator<Item = Vec<Value<'a>>>,
) -> String {
    // The source's value of a GENERATED ALWAYS identity column is written
    // as it is; on tables without one the clause changes nothing.
    let mut sql = format!(
        "INSERT INTO {table} ({}) OVERRIDING SYSTEM VALUE VALUES ",
        idents(columns)
    );
    for (i, row) in rows.into_iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for (j, v) in row.into_iter().enumerate() {
            if j > 0 {
                sql.push_str(", ");
            }
            push_literal(&mut sql, v);
        }
        sql.push(')');
    }
    sql
}

/// `UPDATE table SET c = v, … WHERE key = …`; `set` holds only the columns
/// to write (unchanged TOASTed values are left out, so they are kept).
pub fn update(table: &str, set: &[(&str, Value<'_>)], key: &[(&str, Value<'_>)]) -> String {
    let mut sql = format!("UPDATE {table} SET ");
    for (i, (column, value)) in set.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        let _ = write!(sql, "{} = ", quote_ident(column));
        push_literal(&mut sql, *value);
    }
    push_where(&mut sql, key);
    sql
}

/// `DELETE FROM table WHERE key = …`.
pub fn delete(table: &str, key: &[(&str, Value<'_>)]) -> String {
    let mut sql = format!("DELETE FROM {table}");
    push_where(&mut sql, key);
    sql
}

/// `UPDATE table SET … WHERE (tableoid, ctid) = (SELECT … WHERE key … LIMIT
/// 1)`: one row of any identical ones, for a table whose rows are
/// identified by all their columns (no primary key). The source changed one
/// row; its identical twins stay as they are, as PostgreSQL's own apply
/// workers do. `tableoid` keeps a partitioned table's partitions apart.
pub fn update_one(table: &str, set: &[(&str, Value<'_>)], key: &[(&str, Value<'_>)]) -> String {
    let mut sql = update(table, set, &[]);
    sql.truncate(sql.len() - " WHERE ".len());
    push_one_row(&mut sql, table, key);
    sql
}

/// `DELETE FROM table WHERE (tableoid, ctid) = (… LIMIT 1)`: see [`update_one`].
pub fn delete_one(table: &str, key: &[(&str, Value<'_>)]) -> String {
    let mut sql = format!("DELETE FROM {table}");
    push_one_row(&mut sql, table, key);
    sql
}

fn push_one_row(sql: &mut String, table: &str, key: &[(&str, Value<'_>)]) {
    let _ = write!(
        sql,
        " WHERE (tableoid, ctid) = (SELECT tableoid, ctid FROM {table}"
    );
    push_where(sql, key);
    sql.push_str(" LIMIT 1)");
}

fn push_where(sql: &mut String, key: &[(&str, Value<'_>)]) {
    sql.push_str(" WHERE ");
    for (i, (column, value)) in key.iter().enumerate() {
        if i > 0 {
            sql.push_str(" AND ");
        }
        let _ = write!(sql, "{}", quote_ident(column));
        match value {
            None => sql.push_str(" IS NULL"),
            Some(_) => {
                sql.push_str(" = ");
                push_literal(sql, *value);
            }
        }
    }
}

fn idents(columns: &[&str]) -> String {
    columns
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_double_quotes_and_keep_everything_else() {
        let mut s = String::new();
        push_literal(&mut s, Some("it's \\ \"x\" ☕".as_bytes()));
        assert_eq!(s, "'it''s \\ \"x\" ☕'");
        let mut s = String::new();
        push_literal(&mut s, None);
        assert_eq!(s, "NULL");
    }

    #[test]
    fn array_elements_escape_for_the_array_parser_and_the_string() {
        let mut s = String::new();
        for v in [
            Some("plain"),
            Some(r#"a"b\c'd"#),
            Some(""),
            Some("NULL"),
            None,
        ] {
            push_array_element(&mut s, v);
            s.push(',');
        }
        assert_eq!(s, r#""plain","a\"b\\c''d","","NULL",NULL,"#);
        let u = unnest(
            vec![
                ("int8", vec![Some("1"), Some("-1")]),
                ("text", vec![Some("x"), None]),
            ],
            "v",
            &["s".to_string(), "c0".to_string()],
        );
        assert_eq!(
            u,
            r#"unnest('{"1","-1"}'::int8[], '{"x",NULL}'::text[]) AS v(s, c0)"#
        );
    }

    #[test]
    fn copy_values_escape_what_would_end_a_field_or_row() {
        let mut out = Vec::new();
        push_copy_value(&mut out, Some(b"a\tb\nc\rd\\e\\.f 'g\""));
        out.push(b'\t');
        push_copy_value(&mut out, None);
        out.push(b'\t');
        push_copy_value(&mut out, Some(b"\\N"));
        assert_eq!(out, b"a\\tb\\nc\\rd\\\\e\\\\.f 'g\"\t\\N\t\\\\N");
    }

    #[test]
    fn statements_name_columns_and_keys() {
        let t = "\"public\".\"pay\"";
        assert_eq!(
            insert(
                t,
                &["a", "b"],
                [
                    vec![Some(&b"1"[..]), None],
                    vec![Some(&b"2"[..]), Some(&b"x"[..])]
                ]
            ),
            "INSERT INTO \"public\".\"pay\" (\"a\", \"b\") OVERRIDING SYSTEM VALUE VALUES ('1', NULL), ('2', 'x')"
        );
        assert_eq!(
            update(t, &[("amount", Some(&b"1.50"[..]))], &[("merchant_id", Some(&b"7"[..])), ("id", Some(&b"1"[..]))]),
            "UPDATE \"public\".\"pay\" SET \"amount\" = '1.50' WHERE \"merchant_id\" = '7' AND \"id\" = '1'"
        );
        assert_eq!(
            delete(t, &[("k", None)]),
            "DELETE FROM \"public\".\"pay\" WHERE \"k\" IS NULL"
        );
        assert_eq!(
            delete_one(t, &[("k", Some(&b"1"[..])), ("v", None)]),
            "DELETE FROM \"public\".\"pay\" WHERE (tableoid, ctid) = (SELECT tableoid, ctid FROM \"public\".\"pay\" WHERE \"k\" = '1' AND \"v\" IS NULL LIMIT 1)"
        );
        assert_eq!(
            update_one(t, &[("v", Some(&b"2"[..]))], &[("k", Some(&b"1"[..]))]),
            "UPDATE \"public\".\"pay\" SET \"v\" = '2' WHERE (tableoid, ctid) = (SELECT tableoid, ctid FROM \"public\".\"pay\" WHERE \"k\" = '1' LIMIT 1)"
        );
    }
}
