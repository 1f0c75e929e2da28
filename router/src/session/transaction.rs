//! The client's transaction as the router sees it, and the replies that
//! move it: ReadyForQuery status, errors that fail it, and the ROLLBACK
//! that ends a failed one.

use super::{Db, Session};
use crate::backend::BackendError;
use crate::message as msg;

#[derive(Clone, Debug, PartialEq)]
pub(super) enum Txn {
    Idle,
    /// BEGIN was answered by the router; it is sent to the first database
    /// a statement of the transaction needs.
    Pending(String),
    Pinned(Db),
    /// Failed; the database holds an aborted transaction, if any.
    Failed(Option<Db>),
}

impl Session {
    pub(super) fn status(&self) -> u8 {
        match self.txn {
            Txn::Idle => b'I',
            Txn::Pending(_) | Txn::Pinned(_) => b'T',
            Txn::Failed(_) => b'E',
        }
    }

    pub(super) fn ready(&mut self) {
        let s = self.status();
        msg::ready_for_query(&mut self.out, s);
    }

    /// Sends an error the router raised; inside a transaction it fails
    /// the transaction.
    pub(super) fn reject(&mut self, code: &str, message: &str, hint: Option<&str>) {
        msg::error_response(&mut self.out, code, message, hint);
        self.txn = match std::mem::replace(&mut self.txn, Txn::Idle) {
            Txn::Idle => Txn::Idle,
            Txn::Pending(_) => Txn::Failed(None),
            Txn::Pinned(db) => Txn::Failed(Some(db)),
            Txn::Failed(db) => Txn::Failed(db),
        };
    }

    pub(super) fn backend_failed(&mut self, db: Db, e: &BackendError) {
        self.discard(db);
        let m = format!("{}: {e}", self.db_name(db));
        let hint = match e {
            BackendError::Settings { .. } => "a client's settings (SET, startup parameters) must be valid on every database its statements reach",
            _ => "the router retries with a new connection on the next statement",
        };
        self.reject(e.sqlstate(), &m, Some(hint));
        if let Txn::Failed(Some(d)) = self.txn {
            if d == db {
                self.txn = Txn::Failed(None);
            }
        }
    }

    pub(super) fn after(&mut self, db: Db, status: u8) {
        // A transaction the router failed stays failed until its client
        // ends it, whatever its backend thinks.
        if matches!(self.txn, Txn::Failed(_)) {
            return;
        }
        self.txn = match status {
            b'T' => Txn::Pinned(db),
            b'E' => Txn::Failed(Some(db)),
            _ => Txn::Idle,
        };
    }

    /// Ends a failed transaction: ROLLBACK on its database, whatever the
    /// client asked (COMMIT of a failed transaction rolls back).
    pub(super) async fn end_failed(&mut self, db: Option<Db>) -> &'static str {
        if let Some(db) = db {
            if let Ok(b) = self.backend(db).await {
                if b.run("ROLLBACK").await.is_err() {
                    self.discard(db);
                }
            }
        }
        self.txn = Txn::Idle;
        "ROLLBACK"
    }
}
