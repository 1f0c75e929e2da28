//! `SHOW shardline.shards`, `…stats` and `…clients` in a session: the
//! router answers them itself ([`crate::admin`]), in the simple protocol
//! and in an extended-protocol batch made only of them.

use std::collections::HashMap;

use super::prepared::Statement;
use super::Session;
use crate::admin::{self, Command};
use crate::message::{self as msg, Frame};

impl Session {
    fn admin_answer(&self, command: Command) -> admin::ResultSet {
        let shared = &self.shared;
        admin::answer(
            command,
            shared.router.schema(),
            &shared.stats,
            &shared.pool_states(),
            &shared.clients,
        )
    }

    /// Answers a simple Query that is a router `SHOW`; false for any other.
    pub(super) fn admin_simple(&mut self, sql: &str) -> bool {
        let Some(command) = Command::parse(sql) else {
            return false;
        };
        let set = self.admin_answer(command);
        set.row_description(&mut self.out, &[]);
        set.data_rows(&mut self.out, &[]);
        self.ready();
        true
    }

    /// Answers an extended-protocol batch whose every message concerns a
    /// router `SHOW`; false (nothing done) when any does not.
    pub(super) fn admin_batch(&mut self, batch: &[Frame], sync: bool) -> bool {
        let statement = |s: &Self, parsed: &HashMap<String, Command>, name: &str| {
            parsed.get(name).copied().or_else(|| {
                s.statements
                    .get(name)
                    .and_then(|st| Command::parse(&st.sql))
            })
        };
        let mut parsed: HashMap<String, Command> = HashMap::new();
        let mut portals: HashMap<String, (Command, Vec<i16>)> = HashMap::new();
        for f in batch {
            let ours = match f.tag {
                b'P' => match msg::parse_parse(f.body()) {
                    Ok(p) => Command::parse(&p.sql)
                        .map(|c| parsed.insert(p.name, c))
                        .is_some(),
                    Err(_) => false,
                },
                b'B' => {
                    let mut body = f.body();
                    let portal = msg::cstr(&mut body).unwrap_or_default();
                    let bound = msg::parse_bind(f).ok().and_then(|b| {
                        let c = statement(self, &parsed, &b.statement)?;
                        Some((c, admin::result_formats(f.body())?))
                    });
                    bound.map(|b| portals.insert(portal, b)).is_some()
                }
                b'D' | b'C' => match msg::parse_target(f.body()) {
                    Ok((b'S', name)) => statement(self, &parsed, &name).is_some(),
                    Ok((_, name)) => portals.contains_key(&name),
                    Err(_) => false,
                },
                b'E' => {
                    let mut body = f.body();
                    msg::cstr(&mut body).is_ok_and(|p| portals.contains_key(&p))
                }
                _ => false,
            };
            if !ours {
                return false;
            }
        }
        if batch.is_empty() {
            return false;
        }
        for f in batch {
            match f.tag {
                b'P' => {
                    if let Ok(p) = msg::parse_parse(f.body()) {
                        let name = p.name.clone();
                        // Past the client's cap the statement is not kept:
                        // its Bind then finds no such statement.
                        let _ = self.register(name, Statement::new(p, f.raw.clone()));
                    }
                    msg::empty(&mut self.out, b'1');
                }
                b'B' => msg::empty(&mut self.out, b'2'),
                b'D' => match msg::parse_target(f.body()) {
                    Ok((b'S', name)) => {
                        if let Some(c) = statement(self, &parsed, &name) {
                            msg::parameter_description(&mut self.out, &[]);
                            let set = self.admin_answer(c);
                            set.row_description(&mut self.out, &[]);
                        }
                    }
                    Ok((_, name)) => {
                        if let Some((c, formats)) = portals.get(&name) {
                            let set = self.admin_answer(*c);
                            set.row_description(&mut self.out, formats);
                        }
                    }
                    Err(_) => {}
                },
                b'E' => {
                    let mut body = f.body();
                    let name = msg::cstr(&mut body).unwrap_or_default();
                    if let Some((c, formats)) = portals.get(&name) {
                        let set = self.admin_answer(*c);
                        set.data_rows(&mut self.out, formats);
                    }
                }
                b'C' => {
                    if let Ok((b'S', name)) = msg::parse_target(f.body()) {
                        self.forget(&name);
                    }
                    msg::empty(&mut self.out, b'3');
                }
                _ => {}
            }
        }
        if sync {
            self.ready();
        }
        true
    }
}
