//! The client's session settings on every backend it uses. A client talks
//! to one PostgreSQL session as far as it knows, but its statements run on
//! several backends; a `SET statement_timeout` (or a TimeZone in the
//! startup packet) must hold on each of them.
//!
//! After a SET, RESET, DISCARD or DEALLOCATE, once the session is outside
//! a transaction, the router reads the resulting settings back from the
//! backend that ran it ([`Backend::session_state`]): reading the outcome
//! instead of replaying statements gets ROLLBACK, savepoints and failed
//! statements right. Every other backend is brought to those settings
//! before its next statement, unless it holds them already.

use std::sync::Arc;

use super::{Db, Fatal, Session};
use crate::backend::{Backend, BackendError};
use crate::message::FrameError;
use crate::Kind;

#[derive(Default)]
pub(super) struct Settings {
    /// A script that gives a fresh connection the client's settings;
    /// empty while the client has set nothing.
    script: Arc<str>,
    /// The backend that ran a statement changing them, not read back yet.
    changed: Option<Db>,
    /// Custom (dotted) parameters the client has set: pg_settings does not
    /// list them, so they are read back by name.
    custom: Vec<String>,
    /// The pending transaction's opening holds settings (see
    /// `Session::defer_setting`).
    pub deferred: bool,
    /// A pending transaction with settings that the client committed
    /// before it touched any database: its opening, to run and commit.
    to_commit: Option<String>,
}

impl Settings {
    /// Brings a backend to the current settings (the defaults while the
    /// client has set nothing).
    pub async fn apply(&self, b: &mut Backend) -> Result<(), BackendError> {
        b.apply_settings(&self.script).await
    }

    /// Notes statements about to run on `db`: any setting among them may
    /// change the session's settings there.
    pub fn note(&mut self, kinds: &[Kind], db: Db) {
        for k in kinds {
            if let Kind::Setting(custom) = k {
                self.changed = Some(db);
                if let Some(name) = custom {
                    if !self.custom.contains(name) {
                        self.custom.push(name.clone());
                    }
                }
            }
        }
    }

    /// The pending transaction begins on `db`, with its settings.
    pub fn began_on(&mut self, db: Db) {
        if std::mem::take(&mut self.deferred) {
            self.changed = Some(db);
        }
    }

    /// The client ends a transaction that never reached a database.
    pub fn end_pending(&mut self, begin: &str, commit: bool) {
        if std::mem::take(&mut self.deferred) && commit {
            self.to_commit = Some(begin.to_string());
        }
    }

    /// A backend that failed before its change was read back took the
    /// change with it: it failed inside the transaction or the statement
    /// that made it, and PostgreSQL would have rolled it back too.
    pub fn lost(&mut self, db: Db) {
        if self.changed == Some(db) {
            self.changed = None;
        }
    }
}

impl Session {
    /// Reads a change back, outside a transaction only: inside one it
    /// lives on the transaction's backend, and may still roll back.
    pub(super) async fn read_back_settings(&mut self) -> Result<(), Fatal> {
        if let Some(begin) = self.settings.to_commit.take() {
            let db = self.default_db();
            let b = self.backend(db).await.map_err(Fatal::Settings)?;
            match b.run(&format!("{begin};\nCOMMIT")).await {
                Ok(None) => self.settings.changed = Some(db),
                Ok(Some((code, message))) => {
                    return Err(Fatal::Settings(BackendError::Settings {
                        target: self.db_name(db),
                        code,
                        message,
                    }))
                }
                Err(e) => return Err(Fatal::Settings(e)),
            }
        }
        let Some(db) = self.settings.changed.take() else {
            return Ok(());
        };
        let Some(b) = self.backends.get_mut(&db) else {
            return Ok(());
        };
        // A pipeline that ended with Flush, not Sync, is still open there.
        if b.is_running() {
            self.settings.changed = Some(db);
            return Ok(());
        }
        match b.session_state(&self.settings.custom).await {
            Ok(script) => {
                self.settings.script = Arc::from(script);
                b.settings = self.settings.script.clone();
                Ok(())
            }
            Err(e) => {
                self.discard(db);
                Err(Fatal::Settings(e))
            }
        }
    }

    /// Takes the settings in the client's startup packet (TimeZone,
    /// application_name, `options=-c name=value`, …) as the session's
    /// first version. client_encoding stays UTF8, which the router speaks.
    pub(super) fn startup_settings(
        &mut self,
        params: &[(String, String)],
    ) -> Result<(), FrameError> {
        let mut pairs = Vec::new();
        for (name, value) in params {
            match name.as_str() {
                "user" | "database" | "client_encoding" => {}
                "replication" => {
                    return Err(FrameError::Malformed(
                        "the router does not serve replication connections".into(),
                    ))
                }
                "options" => pairs.extend(command_line_settings(value)?),
                _ => pairs.push((name.clone(), value.clone())),
            }
        }
        if pairs.is_empty() {
            return Ok(());
        }
        let calls: Vec<String> = pairs
            .iter()
            .map(|(n, v)| format!("set_config({}, {}, false)", literal(n), literal(v)))
            .collect();
        self.settings.script = Arc::from(format!(
            "RESET ALL; RESET ROLE; SELECT {}",
            calls.join(", ")
        ));
        Ok(())
    }
}

/// The `-c name=value` and `--name=value` settings of a startup packet's
/// `options`, where a backslash escapes the next character.
fn command_line_settings(options: &str) -> Result<Vec<(String, String)>, FrameError> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => word.extend(chars.next()),
            c if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    let mut settings = Vec::new();
    let mut words = words.into_iter();
    while let Some(w) = words.next() {
        let setting = match w.as_str() {
            "-c" => words.next().unwrap_or_default(),
            w => match w.strip_prefix("--").or_else(|| w.strip_prefix("-c")) {
                Some(rest) => rest.to_string(),
                None => String::new(),
            },
        };
        let Some((name, value)) = setting.split_once('=') else {
            return Err(FrameError::Malformed(format!(
                "startup option {w:?}: the router takes only -c name=value and --name=value"
            )));
        };
        settings.push((name.replace('-', "_"), value.to_string()));
    }
    Ok(settings)
}

/// A string literal that reads the same whatever standard_conforming_strings is.
pub(crate) fn literal(s: &str) -> String {
    format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_give_their_settings() {
        let got = command_line_settings(r"-c search_path=app,public --statement-timeout=5s -cTimeZone=UTC -c application_name=a\ b").unwrap();
        let want = [
            ("search_path", "app,public"),
            ("statement_timeout", "5s"),
            ("TimeZone", "UTC"),
            ("application_name", "a b"),
        ];
        assert_eq!(
            got,
            want.map(|(n, v)| (n.to_string(), v.to_string())).to_vec()
        );
        assert!(command_line_settings("-d 5").is_err());
        assert!(command_line_settings("-c search_path").is_err());
        assert!(command_line_settings("").unwrap().is_empty());
    }

    #[test]
    fn literals_survive_quotes_and_backslashes() {
        assert_eq!(literal(r"it's a\b"), r"E'it\'s a\\b'");
    }
}
