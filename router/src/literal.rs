//! Statement texts with their literals taken out, so texts that differ
//! only in inlined values share one parse.
//!
//! Clients of the simple protocol (and ORMs that inline values) send a new
//! text for every merchant: `… WHERE merchant_id = 17`, then `= 18`. The
//! parse cache keyed by text misses every time. [`normalize`] rewrites
//! plain integer literals and standard single-quoted strings as `$n`
//! placeholders, numbered after the highest `$n` already in the text, and
//! returns their values as PostgreSQL's lexer reads them; the router parses
//! the normalised text once and reads the keys from those values, as it
//! reads bind parameters ([`crate::Router::route`] decides when that is
//! safe, and falls back to the original text when it is not).
//!
//! The scan is a small lexer for the parts of PostgreSQL's grammar that can
//! hide a quote or a digit: `--` and nested `/* */` comments, quoted
//! identifiers, dollar-quoted strings, identifiers (so `t1` and the `E` of
//! `E'…'` are not literals). Anything it is unsure of stays in the text:
//! prefixed strings (`E''`, `U&''`, `B''`, `X''`, `N''`), strings with a
//! backslash (their meaning depends on `standard_conforming_strings`),
//! numbers with a fraction, exponent, underscore or radix prefix. A literal
//! left in the text only makes a different key, never a wrong one.

/// A text with its literals replaced by placeholders.
#[derive(Debug, PartialEq)]
pub(crate) struct Normalized {
    pub text: String,
    /// The literals' values in order: the first is parameter `first + 1`.
    pub values: Vec<String>,
    /// The highest `$n` the original text uses itself (0 for none).
    pub first: usize,
}

/// The text with its plain literals as placeholders; `None` when it has
/// none (or cannot be scanned, e.g. an unterminated quote).
pub(crate) fn normalize(sql: &str) -> Option<Normalized> {
    let b = sql.as_bytes();
    let first = highest_param(b)?;
    let mut text = String::with_capacity(sql.len() + 8);
    let mut values = Vec::new();
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let replaced = match c {
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = line_end(b, i);
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = comment_end(b, i)?;
                continue;
            }
            b'"' => {
                i = quoted_end(b, i, b'"')?;
                continue;
            }
            b'$' => {
                i = dollar_end(b, i)?;
                continue;
            }
            b'\'' => {
                let end = quoted_end(b, i, b'\'')?;
                let body = &sql[i + 1..end - 1];
                if body.contains('\\') || prefixed(b, i) {
                    i = end;
                    continue;
                }
                (end, body.replace("''", "'"))
            }
            b'0'..=b'9' => {
                let end = number_end(b, i);
                let digits = &sql[i..end];
                if end < b.len() && is_number_tail(b[end])
                    || !digits.bytes().all(|d| d.is_ascii_digit())
                {
                    i = end;
                    continue;
                }
                (end, integer_text(digits))
            }
            b'.' if b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                i = number_end(b, i + 1);
                continue;
            }
            c if is_ident_start(c) => {
                i = ident_end(b, i);
                continue;
            }
            _ => {
                i += 1;
                continue;
            }
        };
        let (end, value) = replaced;
        text.push_str(&sql[copied..i]);
        values.push(value);
        text.push('$');
        text.push_str(&(first + values.len()).to_string());
        copied = end;
        i = end;
    }
    if values.is_empty() {
        return None;
    }
    text.push_str(&sql[copied..]);
    Some(Normalized {
        text,
        values,
        first,
    })
}

/// The highest `$n` placeholder of the text, outside quotes and comments;
/// `None` when the text cannot be scanned.
fn highest_param(b: &[u8]) -> Option<usize> {
    let mut highest = 0usize;
    let mut i = 0;
    while i < b.len() {
        i = match b[i] {
            b'-' if b.get(i + 1) == Some(&b'-') => line_end(b, i),
            b'/' if b.get(i + 1) == Some(&b'*') => comment_end(b, i)?,
            b'"' => quoted_end(b, i, b'"')?,
            b'\'' => quoted_end(b, i, b'\'')?,
            b'$' if b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                let end = i + 1 + b[i + 1..].iter().take_while(|d| d.is_ascii_digit()).count();
                let n: usize = std::str::from_utf8(&b[i + 1..end]).ok()?.parse().ok()?;
                highest = highest.max(n);
                end
            }
            b'$' => dollar_end(b, i)?,
            c if is_ident_start(c) => ident_end(b, i),
            b'0'..=b'9' => number_end(b, i),
            _ => i + 1,
        };
    }
    Some(highest)
}

/// An integer literal's value as PostgreSQL's parse tree holds it: an
/// int4 as its number (leading zeros dropped), a larger one as written.
fn integer_text(digits: &str) -> String {
    match digits.parse::<i32>() {
        Ok(n) => n.to_string(),
        Err(_) => digits.to_string(),
    }
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_ident_char(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == b'$'
}

/// What may continue a number token: a fraction, an exponent, a digit
/// group, a radix prefix, or junk PostgreSQL rejects. Any of these keeps
/// the number in the text.
fn is_number_tail(c: u8) -> bool {
    is_ident_char(c) || c == b'.'
}

fn ident_end(b: &[u8], i: usize) -> usize {
    i + b[i..].iter().take_while(|&&c| is_ident_char(c)).count()
}

fn number_end(b: &[u8], i: usize) -> usize {
    i + b[i..].iter().take_while(|c| c.is_ascii_digit()).count()
}

/// Whether the quote at `i` opens a prefixed string (`E'…'`, `U&'…'`,
/// `x'…'`, or any word glued to it, such as a type name's last letter).
fn prefixed(b: &[u8], i: usize) -> bool {
    i > 0 && (is_ident_char(b[i - 1]) || b[i - 1] == b'&')
}

fn line_end(b: &[u8], i: usize) -> usize {
    b[i..]
        .iter()
        .position(|&c| c == b'\n' || c == b'\r')
        .map_or(b.len(), |p| i + p)
}

/// The end of a `/* … */` comment starting at `i`; comments nest.
fn comment_end(b: &[u8], i: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut j = i;
    while j + 1 < b.len() {
        match (b[j], b[j + 1]) {
            (b'/', b'*') => {
                depth += 1;
                j += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                j += 2;
                if depth == 0 {
                    return Some(j);
                }
            }
            _ => j += 1,
        }
    }
    None
}

/// The end (past the closing quote) of a quoted run starting at `i`, where
/// a doubled quote stands for one. A backslash escapes the next byte only
/// in an `E'…'` string.
fn quoted_end(b: &[u8], i: usize, quote: u8) -> Option<usize> {
    let escapes = quote == b'\''
        && i > 0
        && matches!(b[i - 1], b'e' | b'E')
        && !(i > 1 && is_ident_char(b[i - 2]));
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'\\' if escapes => j += 2,
            c if c == quote => {
                if b.get(j + 1) == Some(&quote) {
                    j += 2;
                } else {
                    return Some(j + 1);
                }
            }
            _ => j += 1,
        }
    }
    None
}

/// Past a `$` at `i`: a `$n` placeholder, or a dollar-quoted string
/// (`$$…$$`, `$tag$…$tag$`) skipped whole.
fn dollar_end(b: &[u8], i: usize) -> Option<usize> {
    let rest = &b[i + 1..];
    if rest.first().is_some_and(u8::is_ascii_digit) {
        return Some(number_end(b, i + 1));
    }
    let tag_len = rest
        .iter()
        .take_while(|&&c| is_ident_char(c) && c != b'$')
        .count();
    if rest.get(tag_len) != Some(&b'$') || rest.first().is_some_and(u8::is_ascii_digit) {
        return Some(i + 1);
    }
    let tag = &b[i..i + tag_len + 2];
    let body = i + tag.len();
    b[body..]
        .windows(tag.len())
        .position(|w| w == tag)
        .map(|p| body + p + tag.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(sql: &str) -> Option<(String, Vec<String>)> {
        normalize(sql).map(|n| (n.text, n.values))
    }

    fn same(sql: &str) {
        assert_eq!(norm(sql), None, "{sql}");
    }

    #[test]
    fn integers_and_strings_become_placeholders() {
        assert_eq!(
            norm("SELECT * FROM payments WHERE merchant_id = 17 AND status = 'ok'"),
            Some((
                "SELECT * FROM payments WHERE merchant_id = $1 AND status = $2".into(),
                vec!["17".into(), "ok".into()]
            ))
        );
        assert_eq!(
            norm("INSERT INTO t (a,b) VALUES (1,'it''s')"),
            Some((
                "INSERT INTO t (a,b) VALUES ($1,$2)".into(),
                vec!["1".into(), "it's".into()]
            ))
        );
        // The parse tree holds an int4 as its number, a larger one as written.
        assert_eq!(
            norm("SELECT 007, 0000000000000000000012345678901"),
            Some((
                "SELECT $1, $2".into(),
                vec!["7".into(), "0000000000000000000012345678901".into()]
            ))
        );
        assert_eq!(norm("SELECT ''").map(|n| n.1), Some(vec![String::new()]));
    }

    #[test]
    fn placeholders_are_numbered_after_the_texts_own() {
        let n = normalize("SELECT * FROM t WHERE a = $2 AND b = 5 AND c = $1").unwrap();
        assert_eq!(n.text, "SELECT * FROM t WHERE a = $2 AND b = $3 AND c = $1");
        assert_eq!((n.first, n.values), (2, vec!["5".to_string()]));
        same("SELECT * FROM t WHERE a = $1");
    }

    #[test]
    fn comments_quoted_names_and_dollar_quotes_are_left_alone() {
        assert_eq!(
            norm("SELECT 1 -- it's 2\n, \"col'3\" /* 4 /* 'nested' */ 5 */ FROM t"),
            Some((
                "SELECT $1 -- it's 2\n, \"col'3\" /* 4 /* 'nested' */ 5 */ FROM t".into(),
                vec!["1".into()]
            ))
        );
        assert_eq!(
            norm("SELECT $$ 'a' 1 $$, $tag$ $$ 2 $tag$, 3"),
            Some((
                "SELECT $$ 'a' 1 $$, $tag$ $$ 2 $tag$, $1".into(),
                vec!["3".into()]
            ))
        );
        same("SELECT \"a\"\"1\" FROM t1 WHERE x$1 = col2");
    }

    #[test]
    fn prefixed_strings_and_other_numbers_stay_in_the_text() {
        same("SELECT E'it\\'s 5', U&'d\\0061t', B'101', X'1F', N'abc'");
        same("SELECT 'a\\b'");
        same("SELECT 1.5, .5, 1e3, 1_000, 0x1F, 0o17, 0b101, 5.");
        same("SELECT date'2020-01-01'");
        assert_eq!(
            norm("SELECT e'\\'' || 'x'"),
            Some(("SELECT e'\\'' || $1".into(), vec!["x".into()]))
        );
    }

    #[test]
    fn texts_that_cannot_be_scanned_are_not_normalised() {
        same("SELECT 'open");
        same("SELECT 1 /* open");
        same("SELECT $q$ open");
        same("SELECT \"open");
    }
}
