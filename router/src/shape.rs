//! Routing texts that differ only in literals from one parse.
//!
//! A text's shape is its normalised form ([`crate::literal`]): literals as
//! placeholders. The shape is parsed once and its keys are then read from
//! each text's literal values, as from bind values. That is only right when
//! the shape routes as the texts themselves do, which the normalisation
//! alone cannot promise: `merchant_id = -5` becomes `merchant_id = -$1`,
//! no longer a key; `INTERVAL '1 day'` becomes a syntax error. So the first
//! text of a shape is parsed both ways, and the shape is used only when the
//! two analyses agree on everything routing reads (tables, contexts, key
//! positions and, there, the values). Analyses that differ refuse the shape
//! for good; its texts are parsed as before.
//!
//! What the comparison leaves out, the merge shape (LIMIT, OFFSET and
//! ORDER BY values sit in it), is read only for statements on several
//! shards, and [`crate::Router::route`] uses a shape only for statements
//! on one database. Every routing error also falls back to the original
//! text, so a client sees the same error either way.

use std::sync::Arc;

use shardline_topology::{ShardKey, ShardKeyType};

use crate::literal::{self, Normalized};
use crate::route::Parsed;
use crate::statement::{Analyzed, Constraint, Data, KeyExpr};
use crate::Router;

/// What comparing a shape's analysis with its first text's tells.
enum Verdict {
    Alike,
    Differ,
    /// The text is refused for its values (a key that is not a number):
    /// another text of the shape decides.
    Unsure,
}

impl Router {
    /// The analysis of `sql`'s shape and its literal values, when the shape
    /// is known to route as its texts do. `given`: how many bind values
    /// come with the text (the literals are numbered after them).
    pub(crate) fn shape(&self, sql: &str, given: usize) -> Option<(Arc<Parsed>, Vec<String>)> {
        let n = literal::normalize(sql)?;
        if n.first != given {
            return None;
        }
        if let Some(known) = self.shape_cached(&n.text) {
            return known.map(|p| (p, n.values));
        }
        let verdict = self.verify(sql, &n)?;
        self.shape_insert(&n.text, verdict.clone());
        verdict.map(|p| (p, n.values))
    }

    /// The shape's analysis if it routes as `sql` does, `None` if not;
    /// `None` outside when this text cannot tell.
    fn verify(&self, sql: &str, n: &Normalized) -> Option<Option<Arc<Parsed>>> {
        let Ok(shaped) = self.analyse(&n.text) else {
            return Some(None);
        };
        let original = self.parsed(sql).ok()?;
        let lits = Literals {
            first: n.first,
            values: &n.values,
            router: self,
        };
        match lits.statements(&shaped.statements, &original.statements) {
            Verdict::Alike => Some(Some(Arc::new(shaped))),
            Verdict::Differ => Some(None),
            Verdict::Unsure => None,
        }
    }
}

/// The literal values of the text a shape is compared with.
struct Literals<'a> {
    first: usize,
    values: &'a [String],
    router: &'a Router,
}

impl Literals<'_> {
    fn statements(&self, shaped: &[Analyzed], original: &[Analyzed]) -> Verdict {
        if shaped.len() != original.len() {
            return Verdict::Differ;
        }
        for (s, o) in shaped.iter().zip(original) {
            let alike = match (s, o) {
                (Analyzed::Rejected(_), _) => false,
                (_, Analyzed::Rejected(_)) => return Verdict::Unsure,
                (Analyzed::Control(a), Analyzed::Control(b)) => a == b,
                (Analyzed::Session, Analyzed::Session)
                | (Analyzed::LocalSetting, Analyzed::LocalSetting) => true,
                (Analyzed::Setting(a), Analyzed::Setting(b)) => a == b,
                (Analyzed::SetKey(a), Analyzed::SetKey(b)) => {
                    let key_type = self.router.schema().override_key_type();
                    match (a, b, key_type) {
                        (None, None, _) => true,
                        (Some(a), Some(b), Some(t)) => self.key(a, b, t),
                        _ => false,
                    }
                }
                (Analyzed::Data(a), Analyzed::Data(b)) => self.data(a, b),
                _ => false,
            };
            if !alike {
                return Verdict::Differ;
            }
        }
        Verdict::Alike
    }

    fn data(&self, s: &Data, o: &Data) -> bool {
        let schema = self.router.schema();
        let key_type = |table: &str| schema.key_type(table).unwrap_or(ShardKeyType::Bigint);
        let same_frame = s.verb == o.verb
            && s.target == o.target
            && s.contexts == o.contexts
            && s.writes_replicated == o.writes_replicated
            && s.scopes.len() == o.scopes.len();
        if !same_frame {
            return false;
        }
        let scopes = s.scopes.iter().zip(&o.scopes).all(|(a, b)| {
            a.table == b.table && self.constraint(&a.constraint, &b.constraint, key_type(&a.table))
        });
        let inserts = match (&s.insert_keys, &o.insert_keys) {
            (None, None) => true,
            (Some(a), Some(b)) => {
                let t = key_type(s.target.as_deref().unwrap_or_default());
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| self.key(x, y, t))
            }
            _ => false,
        };
        scopes && inserts
    }

    fn constraint(&self, s: &Constraint, o: &Constraint, t: ShardKeyType) -> bool {
        match (s, o) {
            (Constraint::Any, Constraint::Any) => true,
            (Constraint::Keys(a), Constraint::Keys(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| self.key(x, y, t))
            }
            (Constraint::And(a), Constraint::And(b)) | (Constraint::Or(a), Constraint::Or(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| self.constraint(x, y, t))
            }
            _ => false,
        }
    }

    /// A shape's key against the text's: a placeholder of the shape must
    /// sit where the text has a literal, and its value read as a key must
    /// be that literal's.
    fn key(&self, s: &KeyExpr, o: &KeyExpr, t: ShardKeyType) -> bool {
        match (s, o) {
            (KeyExpr::Param(i) | KeyExpr::CastParam(i, _), KeyExpr::Literal(k))
                if *i >= self.first =>
            {
                self.values
                    .get(*i - self.first)
                    .and_then(|v| t.parse_key(v).ok())
                    .is_some_and(|v: ShardKey| v == *k)
            }
            (KeyExpr::Param(i) | KeyExpr::CastParam(i, _), _) if *i >= self.first => false,
            _ => s == o,
        }
    }
}
