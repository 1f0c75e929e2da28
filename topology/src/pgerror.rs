//! One rendering of a `tokio_postgres::Error` for every message shardline
//! prints.
//!
//! `tokio_postgres::Error`'s own `Display` says only `db error` for an
//! error the server sent, and `error communicating with the server` for a
//! broken connection: the cause lives in its source. [`describe`] keeps
//! what PostgreSQL said (message, SQLSTATE, detail, hint, and where in a
//! function or statement it happened), or the whole chain of causes for
//! errors of the client side, so no error loses its reason on the way to
//! the user.

use std::error::Error as _;

/// `message (SQLSTATE xxxxx); detail: …; hint: …` for a server error, or
/// the error and its causes (`error communicating with the server:
/// Connection reset by peer`) for anything else.
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut text = format!("{} (SQLSTATE {})", db.message(), db.code().code());
        if let Some(detail) = db.detail() {
            text.push_str("; detail: ");
            text.push_str(detail);
        }
        if let Some(hint) = db.hint() {
            text.push_str("; server hint: ");
            text.push_str(hint);
        }
        if let Some(context) = db.where_() {
            text.push_str("; context: ");
            text.push_str(&context.replace('\n', " / "));
        }
        return text;
    }
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let part = c.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = c.source();
    }
    text
}

/// The SQLSTATE of a server error, if the server sent one.
pub fn sqlstate(e: &tokio_postgres::Error) -> Option<&str> {
    e.as_db_error().map(|d| d.code().code())
}

/// Whether the error is the connection going away (closed, reset, an I/O
/// failure, the server shutting down) rather than something the statement
/// did: worth a reconnect, not a fix.
pub fn is_connection_lost(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match sqlstate(e) {
        // admin_shutdown, crash_shutdown, cannot_connect_now, and class 08.
        Some(code) => matches!(code, "57P01" | "57P02" | "57P03") || code.starts_with("08"),
        None => {
            let mut cause = e.source();
            while let Some(c) = cause {
                if c.is::<std::io::Error>() {
                    return true;
                }
                cause = c.source();
            }
            false
        }
    }
}

/// The grant that lets shardline set itself up on a database that refused
/// it `CREATE` (shardline keeps its state in a schema `shardline` there),
/// read from PostgreSQL's message (`permission denied for database D`,
/// alone or as [`describe`] renders it); `None` for any other refusal.
pub fn create_grant_hint(message: &str) -> Option<String> {
    let rest = message.split("permission denied for database ").nth(1)?;
    let db = rest.split(" (SQLSTATE").next()?.trim();
    Some(format!(
        "as a superuser, GRANT CREATE ON DATABASE {} TO the role shardline connects as (shardline keeps its progress in a schema shardline there), or connect as a superuser; then run the same command again",
        crate::display_ident(db)
    ))
}

#[cfg(test)]
mod tests {
    use super::create_grant_hint;

    #[test]
    fn the_create_grant_names_the_database_as_sql_writes_it() {
        let plain = create_grant_hint("permission denied for database postgres").unwrap();
        assert!(plain.starts_with("as a superuser, GRANT CREATE ON DATABASE postgres TO"));
        let rendered = create_grant_hint(
            "db: permission denied for database Pay Ments (SQLSTATE 42501); detail: x",
        )
        .unwrap();
        assert!(
            rendered.contains("GRANT CREATE ON DATABASE \"Pay Ments\" TO"),
            "{rendered}"
        );
        assert_eq!(
            create_grant_hint("permission denied for table payments"),
            None
        );
    }
}
