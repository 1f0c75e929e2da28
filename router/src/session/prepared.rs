//! A client's prepared statements on backends it shares with others.
//!
//! The client's statements live in its session, by the client's names
//! ([`Statement`]), bounded by `max_client_buffer_bytes`. On a backend a
//! named statement is prepared under a name the router derives from its
//! text and parameter types (`shardline_s_…`), so two clients preparing
//! the same statement share one server-side plan, and one client's `s1`
//! never meets another's. A backend is sent the Parse it lacks just before
//! the Bind or Describe that needs it, and the router swallows the
//! ParseComplete the client did not ask for. So a driver that prepares
//! once (`pgbench -M prepared`, tokio-postgres, JDBC) works on whichever
//! pooled connection serves it next.
//!
//! The client's Close of a statement is not sent on (another client may
//! use the shared one): a Close of a name that never exists stands in, so
//! the CloseComplete comes back in its place. The unnamed statement stays
//! unnamed on the backend, and is trusted only within the batch that
//! parsed it; otherwise the client's Parse is replayed first. Every Parse
//! the router makes is preceded by a Close of the same name, so a backend
//! whose list of statements is uncertain (after an error) never answers
//! "already exists". A backend keeps at most [`BACKEND_STATEMENTS`].

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};

use bytes::{Bytes, BytesMut};

use super::Session;
use crate::backend::Backend;
use crate::message::{self as msg, Frame};

/// Statements kept prepared on one backend: far more than an application
/// uses; past it the router closes one before preparing another.
const BACKEND_STATEMENTS: usize = 1000;

/// A name no statement ever has: the stand-in for a client's Close.
const NO_STATEMENT: &str = "shardline_none";

/// What a statement costs the client beyond its bytes (map entry, name).
const STATEMENT_OVERHEAD: usize = 128;

/// A client's prepared statement.
pub(super) struct Statement {
    pub sql: String,
    pub types: Vec<u32>,
    /// The client's Parse frame, replayed for the unnamed statement.
    pub parse: Bytes,
    /// Its name on backends; empty for the unnamed statement.
    pub backend_name: String,
}

impl Statement {
    pub fn new(p: msg::Parse, raw: Bytes) -> Self {
        let backend_name = if p.name.is_empty() {
            String::new()
        } else {
            statement_name(&p.sql, &p.types)
        };
        Self {
            sql: p.sql,
            types: p.types,
            parse: raw,
            backend_name,
        }
    }

    fn weight(&self, name: &str) -> usize {
        name.len()
            + self.sql.len()
            + self.parse.len()
            + self.backend_name.len()
            + STATEMENT_OVERHEAD
    }
}

/// The name a statement is prepared under on backends: one per text and
/// parameter types.
fn statement_name(sql: &str, types: &[u32]) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    sql.hash(&mut h);
    types.hash(&mut h);
    format!("shardline_s_{:016x}", h.finish())
}

/// The name the router prepares a rewritten statement under on a backend:
/// derived from its text, so each backend prepares it once.
pub(super) fn rewritten_name(sql: &str) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    sql.hash(&mut h);
    format!("shardline_{:016x}", h.finish())
}

impl Session {
    /// Keeps a client statement, within `max_client_buffer_bytes`.
    pub(super) fn register(
        &mut self,
        name: String,
        st: Statement,
    ) -> Result<(), (&'static str, String, Option<String>)> {
        let weight = st.weight(&name);
        let freed = self
            .statements
            .get(&name)
            .map_or(0, |old| old.weight(&name));
        let cap = self.shared.limits.max_client_buffer_bytes;
        let total = self.statement_bytes - freed + weight;
        if total + self.batch_bytes > cap {
            return Err((
                "54000",
                format!(
                    "the client's prepared statements would take {total} bytes, past max_client_buffer_bytes ({cap})"
                ),
                Some("close prepared statements the client no longer uses (or lower the driver's statement cache size)".into()),
            ));
        }
        self.statement_bytes = total;
        self.statements.insert(name, st);
        Ok(())
    }

    /// Forgets a client statement (Close, or a Parse the server refused).
    pub(super) fn forget(&mut self, name: &str) {
        if let Some(old) = self.statements.remove(name) {
            self.statement_bytes -= old.weight(name);
        }
    }
}

/// A client batch as sent to one backend: the client's frames with
/// statement names turned into backend names, and the Parse (and Close)
/// of statements the backend lacks put before the Bind or Describe that
/// needs them.
pub(super) struct Outgoing {
    pub out: BytesMut,
    /// For ParseComplete and CloseComplete: whether the client sent the
    /// message (relay the answer) or the router did (swallow it).
    pub parses: VecDeque<bool>,
    pub closes: VecDeque<bool>,
    /// Answers that end the client's messages (for a batch ended by Flush).
    pub expected: usize,
    /// Backend statements the batch prepares: forgotten again if it fails.
    pub parsed_here: Vec<String>,
    /// The backend's unnamed statement is the client's, parsed in this
    /// batch.
    unnamed: bool,
}

/// A statement the shards run in place of the client's (OFFSET folded
/// into LIMIT, avg split into sum and count).
pub(super) struct Rewrite<'a> {
    pub sql: &'a str,
    pub types: &'a [u32],
}

impl Outgoing {
    /// `describe_portal`: send a Describe of the portal after each Bind
    /// (a scatter needs the rows' RowDescription even when the client did
    /// not ask for it).
    ///
    /// `rewrite`: each Bind binds the router's own statement with this
    /// text instead of the client's (prepared under a name derived from the
    /// text, and its ParseComplete swallowed).
    pub fn build(
        b: &mut Backend,
        batch: &[Frame],
        statements: &HashMap<String, Statement>,
        describe_portal: bool,
        rewrite: Option<&Rewrite<'_>>,
    ) -> Self {
        let mut o = Self {
            out: BytesMut::new(),
            parses: VecDeque::new(),
            closes: VecDeque::new(),
            expected: 0,
            parsed_here: Vec::new(),
            unnamed: false,
        };
        for f in batch {
            match f.tag {
                b'P' => o.parse(b, f),
                // A Bind, or a Describe of a statement, needs the statement
                // prepared on this backend first.
                b'B' => {
                    let name = msg::parse_bind(f).map(|bind| bind.statement);
                    match (rewrite, name) {
                        (Some(r), _) => {
                            let name = rewritten_name(r.sql);
                            if b.prepared.get(&name).map(String::as_str) != Some(r.sql) {
                                o.prepare(b, &name, r.sql, r.types, false);
                            }
                            o.rebind(f, "", &name);
                        }
                        (None, Ok(name)) => {
                            let on_backend = o.ensure(&name, b, statements);
                            o.rebind(f, &name, &on_backend);
                        }
                        (None, Err(_)) => o.out.extend_from_slice(&f.raw),
                    }
                    o.expected += 1;
                    if describe_portal {
                        let portal = msg::cstr(&mut f.body()).unwrap_or_default();
                        msg::describe(&mut o.out, b'P', &portal);
                    }
                }
                b'D' => {
                    match msg::parse_target(f.body()) {
                        Ok((b'S', name)) => {
                            let on_backend = o.ensure(&name, b, statements);
                            msg::describe(&mut o.out, b'S', &on_backend);
                        }
                        _ => o.out.extend_from_slice(&f.raw),
                    }
                    o.expected += 1;
                }
                b'C' => {
                    match msg::parse_target(f.body()) {
                        Ok((b'S', name)) if !name.is_empty() => {
                            msg::close(&mut o.out, b'S', NO_STATEMENT);
                        }
                        Ok((b'S', _)) => {
                            o.unnamed = false;
                            o.out.extend_from_slice(&f.raw);
                        }
                        _ => o.out.extend_from_slice(&f.raw),
                    }
                    o.closes.push_back(true);
                    o.expected += 1;
                }
                _ => {
                    o.out.extend_from_slice(&f.raw);
                    o.expected += 1;
                }
            }
        }
        o
    }

    /// A client's Parse: the unnamed statement as sent; a named one under
    /// its backend name, or, when the backend has it already, an empty
    /// Parse that answers ParseComplete in its place.
    fn parse(&mut self, b: &mut Backend, f: &Frame) {
        match msg::parse_parse(f.body()) {
            Ok(p) if !p.name.is_empty() => {
                let name = statement_name(&p.sql, &p.types);
                if b.prepared.get(&name) == Some(&p.sql) {
                    msg::parse(&mut self.out, "", "", &[]);
                    self.unnamed = false;
                    self.parses.push_back(true);
                    self.expected += 1;
                } else {
                    self.prepare(b, &name, &p.sql, &p.types, true);
                }
            }
            parsed => {
                self.unnamed = parsed.is_ok();
                self.out.extend_from_slice(&f.raw);
                self.parses.push_back(true);
                self.expected += 1;
            }
        }
    }

    /// The backend name of a client statement, prepared there first when
    /// missing (the unnamed one: when not parsed earlier in this batch).
    fn ensure(
        &mut self,
        name: &str,
        b: &mut Backend,
        statements: &HashMap<String, Statement>,
    ) -> String {
        let Some(st) = statements.get(name) else {
            return name.to_string();
        };
        if name.is_empty() {
            if !self.unnamed {
                self.out.extend_from_slice(&st.parse);
                self.parses.push_back(false);
                self.expected += 1;
                self.unnamed = true;
            }
            return String::new();
        }
        if b.prepared.get(&st.backend_name) != Some(&st.sql) {
            self.prepare(b, &st.backend_name, &st.sql, &st.types, false);
        }
        st.backend_name.clone()
    }

    /// Prepares a named statement on the backend: Close of the name (and of
    /// one old statement when the backend holds too many), then Parse.
    /// `client`: the ParseComplete answers the client's own Parse.
    fn prepare(&mut self, b: &mut Backend, name: &str, sql: &str, types: &[u32], client: bool) {
        if b.prepared.len() >= BACKEND_STATEMENTS {
            let old = (b.prepared.keys())
                .find(|k| !self.parsed_here.contains(k))
                .cloned();
            if let Some(old) = old {
                b.prepared.remove(&old);
                msg::close(&mut self.out, b'S', &old);
                self.closes.push_back(false);
                self.expected += 1;
            }
        }
        msg::close(&mut self.out, b'S', name);
        self.closes.push_back(false);
        msg::parse(&mut self.out, name, sql, types);
        self.parses.push_back(client);
        self.expected += 2;
        b.prepared.insert(name.to_string(), sql.to_string());
        self.parsed_here.push(name.to_string());
    }

    /// A client's Bind of statement `from`, binding `to` on the backend.
    fn rebind(&mut self, f: &Frame, from: &str, to: &str) {
        let renamed = if from == to { None } else { msg::rebind(f, to) };
        match renamed {
            Some(raw) => self.out.extend_from_slice(&raw),
            None => self.out.extend_from_slice(&f.raw),
        }
    }
}
