//! The name PostgreSQL gives a select-list entry's column.
//!
//! A read model's table has a column per group and aggregate, named as its
//! query names them: backfill creates the table from the query's result
//! and cdc writes those columns by name, so both must agree with
//! PostgreSQL (`FigureColname` in its parser): the alias after the last
//! top-level `AS`, folded to lower case unless quoted; without one, a
//! column's own name, a function's name, or a cast's type name.

/// The output column name of a select-list entry.
pub fn output_name(expr: &str) -> String {
    let expr = expr.trim();
    match split_alias(expr) {
        Some((_, alias)) => identifier(alias),
        None => figure(expr).0,
    }
}

/// `expr AS alias` → (`expr`, `alias`), at the last ` AS ` outside
/// parentheses and quotes (`CAST(x AS date)` has none).
pub fn split_alias(entry: &str) -> Option<(&str, &str)> {
    let at = top_level(entry)
        .filter(|&(i, _)| {
            entry[i..].len() > 4 && entry[i..i + 4].eq_ignore_ascii_case(" as ") && i > 0
        })
        .map(|(i, _)| i)
        .last()?;
    Some((entry[..at].trim(), entry[at + 4..].trim()))
}

/// Byte positions (and characters) of `text` outside parentheses, string
/// literals and quoted identifiers.
fn top_level(text: &str) -> impl Iterator<Item = (usize, char)> + '_ {
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    text.char_indices().filter(move |&(_, c)| {
        if let Some(q) = quote {
            // A doubled quote inside closes and reopens: same effect.
            if c == q {
                quote = None;
            }
            return false;
        }
        match c {
            '\'' | '"' => {
                quote = Some(c);
                depth == 0
            }
            '(' => {
                depth += 1;
                depth == 1
            }
            ')' => {
                depth -= 1;
                false
            }
            _ => depth == 0,
        }
    })
}

/// `"Day"` → `Day`, `Day` → `day`.
fn identifier(text: &str) -> String {
    let t = text.trim();
    match t.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        Some(inner) => inner.replace("\"\"", "\""),
        None => t.to_lowercase(),
    }
}

/// The name and its strength, as PostgreSQL figures one: 2 for a column
/// or function name, 1 for a weak guess (CASE), 0 for none (`?column?`).
fn figure(expr: &str) -> (String, u8) {
    let expr = expr.trim();
    if let Some(at) = last_top_level(expr, "::") {
        let (arg, ty) = (&expr[..at], &expr[at + 2..]);
        return cast(arg, ty);
    }
    let lower = expr.to_ascii_lowercase();
    if lower.starts_with("cast") && expr.ends_with(')') {
        if let Some(open) = expr.find('(') {
            if expr[4..open].trim().is_empty() {
                let inner = &expr[open + 1..expr.len() - 1];
                if let Some((arg, ty)) = split_alias(inner) {
                    return cast(arg, ty);
                }
            }
        }
    }
    if lower.starts_with("case") && lower.ends_with("end") {
        return ("case".into(), 1);
    }
    if let Some(open) = expr.find('(') {
        let name = &expr[..open];
        if expr.ends_with(')') && is_name_chain(name) {
            return (last_part(name), 2);
        }
    }
    if is_name_chain(expr) {
        return (last_part(expr), 2);
    }
    ("?column?".into(), 0)
}

fn cast(arg: &str, ty: &str) -> (String, u8) {
    let (name, strength) = figure(arg);
    if strength > 1 {
        return (name, strength);
    }
    (type_name(ty), 1)
}

/// The catalog name of a type as written in a cast (`integer` → `int4`).
fn type_name(ty: &str) -> String {
    let ty = ty.trim();
    let base = match ty.find(['(', '[']) {
        Some(i) => &ty[..i],
        None => ty,
    };
    let words: Vec<String> = base
        .split_whitespace()
        .map(|w| w.to_ascii_lowercase())
        .collect();
    let joined = words.join(" ");
    let known = match joined.as_str() {
        "int" | "integer" => "int4",
        "bigint" => "int8",
        "smallint" => "int2",
        "real" => "float4",
        "float" | "double precision" => "float8",
        "boolean" => "bool",
        "decimal" | "dec" => "numeric",
        "character varying" => "varchar",
        "character" | "char" => "bpchar",
        "timestamp with time zone" => "timestamptz",
        "timestamp without time zone" => "timestamp",
        "time with time zone" => "timetz",
        "time without time zone" => "time",
        _ => "",
    };
    if known.is_empty() {
        last_part(base)
    } else {
        known.into()
    }
}

fn last_top_level(text: &str, pattern: &str) -> Option<usize> {
    top_level(text)
        .map(|(i, _)| i)
        .filter(|&i| text[i..].starts_with(pattern))
        .last()
}

/// `a`, `s.a`, `"Mixed".col`: identifiers joined by dots.
fn is_name_chain(text: &str) -> bool {
    let text = text.trim();
    !text.is_empty()
        && split_dots(text).iter().all(|part| {
            let p = part.trim();
            if let Some(inner) = p.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
                !inner.is_empty()
            } else {
                let mut chars = p.chars();
                chars.next().is_some_and(|c| c.is_alphabetic() || c == '_')
                    && chars.all(|c| c.is_alphanumeric() || c == '_' || c == '$')
            }
        })
}

fn split_dots(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '.' if !quoted => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn last_part(name: &str) -> String {
    split_dots(name.trim())
        .last()
        .map(|p| identifier(p))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_figured_as_postgresql_does() {
        for (expr, name) in [
            ("sum(amount) as volume", "volume"),
            ("CAST(created_at AS date)", "created_at"),
            ("CAST(created_at AS date) AS day", "day"),
            ("cast('2024-01-01' as date)", "date"),
            ("created_at::date", "created_at"),
            ("(amount * 2)::numeric(10,2)", "numeric"),
            ("date_trunc('day', created_at)", "date_trunc"),
            ("date_trunc('day', created_at) AS Day", "day"),
            ("x AS \"Day\"", "Day"),
            ("Merchant_Id", "merchant_id"),
            ("p.\"Merchant\"", "Merchant"),
            ("'a as b'", "?column?"),
            ("CASE WHEN a THEN 1 END", "case"),
            ("CAST(CASE WHEN a THEN 1 END AS integer)", "int4"),
            ("amount + 1", "?column?"),
        ] {
            assert_eq!(output_name(expr), name, "{expr}");
        }
    }
}
