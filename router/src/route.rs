//! The router: statement text and bind values in, a [`Route`] out.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use pg_query::protobuf;
use shardline_topology::{ShardKey, ShardKeyType, Topology};

use crate::cache::{ParseCache, DEFAULT_CACHE_BYTES, DEFAULT_CAPACITY};
use crate::error::RouteError;
use crate::merge::{Aggregate, Limit, MergeShape, Output};
use crate::schema::Schema;
use crate::statement::{self, Analyzed, Constraint, Control, Data, KeyExpr, Pin};

mod rewrite;
use rewrite::{split_avg, split_insert, without_offset};

/// The format code of a bind parameter (Bind message).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Binary,
}

/// A bind parameter as the client sent it: raw bytes, its format and the
/// type OID it was prepared with (0 when the server was left to infer it).
#[derive(Clone, Copy, Debug)]
pub struct Param<'a> {
    pub value: Option<&'a [u8]>,
    pub format: Format,
    pub type_oid: u32,
}

impl<'a> Param<'a> {
    pub fn text(value: &'a str) -> Self {
        Self {
            value: Some(value.as_bytes()),
            format: Format::Text,
            type_oid: 0,
        }
    }

    pub fn binary(value: &'a [u8], type_oid: u32) -> Self {
        Self {
            value: Some(value),
            format: Format::Binary,
            type_oid,
        }
    }
}

/// Where a statement text goes.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// No table of the topology: session and transaction statements,
    /// `SELECT 1`, catalog queries. Any backend answers alike; a session
    /// inside a transaction keeps using its backend.
    Any,
    /// The one database of an unsharded context.
    Database { context: String },
    /// One shard.
    Shard { context: String, shard: usize },
    /// Any one shard: a read of replicated tables only.
    AnyShard { context: String },
    /// The same statement on several shards. A read is merged as `merge`
    /// says; a write (`merge` is `None`) touches disjoint rows on each.
    Shards {
        context: String,
        shards: Vec<usize>,
        merge: Option<MergeShape>,
    },
    /// A write to a replicated table: the same statement on every shard.
    Broadcast { context: String },
    /// A multi-row INSERT split by shard: each shard gets its own rows.
    Split {
        context: String,
        parts: Vec<(usize, String)>,
    },
}

impl Target {
    /// Whether the target is one database, so a transaction can stay on it.
    pub fn single(&self) -> Option<(&str, usize)> {
        match self {
            Self::Database { context } => Some((context, 0)),
            Self::Shard { context, shard } => Some((context, *shard)),
            _ => None,
        }
    }
}

/// What a statement is, for the session that runs it.
#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    Control(Control),
    /// `SET shardline.merchant_id` (`None`: RESET).
    SetKey(Option<ShardKey>),
    Session,
    /// SET, RESET, DISCARD or DEALLOCATE: session state the router copies
    /// to every backend the client uses; the name of a custom parameter.
    Setting(Option<String>),
    /// SET LOCAL or SET TRANSACTION.
    LocalSetting,
    /// `DEALLOCATE name` of a statement the client prepared.
    Deallocate(String),
    Read,
    Write,
}

impl Kind {
    /// SET, RESET, SET LOCAL and the like: statements about settings.
    pub fn is_setting(&self) -> bool {
        matches!(self, Self::Setting(_) | Self::LocalSetting)
    }
}

/// The routing decision for a whole statement text.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    pub target: Target,
    /// The text's statements in order.
    pub kinds: Vec<Kind>,
    /// Session state the text leaves that cannot follow the client to
    /// another backend.
    pub pin: Option<Pin>,
}

/// A statement text, parsed and analysed once.
pub(crate) struct Parsed {
    pub(crate) statements: Vec<Analyzed>,
    pin: Option<Pin>,
    protobuf: protobuf::ParseResult,
}

impl Parsed {
    /// What the analysis of a text holds in memory, estimated from its
    /// parse tree's encoded size: the decoded tree (boxed nodes, strings)
    /// and the analysis made from it take several times that.
    fn weight(&self) -> usize {
        256 + 8 * prost::Message::encoded_len(&self.protobuf)
    }
}

/// Routes statements by the topology; shared by every client session.
pub struct Router {
    schema: Schema,
    cache: Mutex<Caches>,
}

/// Parse results by text, and by shape ([`crate::shape`]).
struct Caches {
    texts: ParseCache<Parsed>,
    /// A shape's analysis when it routes as its texts do, `None` when not.
    shapes: ParseCache<Option<Arc<Parsed>>>,
    /// Statements routed without a parse, and texts parsed.
    hits: u64,
    misses: u64,
}

impl Router {
    pub fn new(topology: &Topology) -> Self {
        Self::with_schema(Schema::new(topology), DEFAULT_CAPACITY)
    }

    pub fn with_schema(schema: Schema, cache_capacity: usize) -> Self {
        Self::with_cache(schema, cache_capacity, DEFAULT_CACHE_BYTES)
    }

    /// [`Router::with_schema`] with a bound on each cache's estimated bytes.
    pub fn with_cache(schema: Schema, cache_capacity: usize, cache_bytes: usize) -> Self {
        Self {
            schema,
            cache: Mutex::new(Caches {
                texts: ParseCache::new(cache_capacity, cache_bytes),
                shapes: ParseCache::new(cache_capacity, cache_bytes),
                hits: 0,
                misses: 0,
            }),
        }
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// (hits, misses, entries) of the parse cache: statements routed
    /// without parsing, texts parsed, texts and shapes held.
    pub fn cache_stats(&self) -> (u64, u64, usize) {
        let c = self.lock();
        (c.hits, c.misses, c.texts.len() + c.shapes.len())
    }

    /// The analysis of a text, cached by the text.
    pub(crate) fn parsed(&self, sql: &str) -> Result<Arc<Parsed>, RouteError> {
        if let Some(p) = self.cached(sql) {
            return Ok(p);
        }
        let parsed = Arc::new(self.analyse(sql)?);
        let weight = parsed.weight();
        self.lock().texts.insert(sql, parsed.clone(), weight);
        Ok(parsed)
    }

    /// The cached analysis of a text, counted as a hit.
    fn cached(&self, sql: &str) -> Option<Arc<Parsed>> {
        let mut c = self.lock();
        let found = c.texts.get(sql);
        if found.is_some() {
            c.hits += 1;
        }
        found
    }

    /// A shape's cached verdict, counted as a hit when it is usable.
    pub(crate) fn shape_cached(&self, text: &str) -> Option<Option<Arc<Parsed>>> {
        let mut c = self.lock();
        let found = c.shapes.get(text).map(|v| v.as_ref().clone());
        if let Some(Some(_)) = found {
            c.hits += 1;
        }
        found
    }

    pub(crate) fn shape_insert(&self, text: &str, verdict: Option<Arc<Parsed>>) {
        let weight = verdict.as_ref().map_or(0, |p| p.weight());
        self.lock().shapes.insert(text, Arc::new(verdict), weight);
    }

    /// Parses and analyses a text (uncached).
    pub(crate) fn analyse(&self, sql: &str) -> Result<Parsed, RouteError> {
        self.lock().misses += 1;
        let result = pg_query::parse(sql).map_err(|e| RouteError::Syntax {
            message: e.to_string(),
        })?;
        let tree = serde_json::to_value(&result.protobuf).map_err(|e| RouteError::Syntax {
            message: e.to_string(),
        })?;
        let mut statements = statement::analyze(&tree, &self.schema);
        let pin = statement::pin(&tree);
        for (index, st) in statements.iter_mut().enumerate() {
            if let Analyzed::Data(Data {
                merge:
                    Ok(MergeShape::Rows {
                        limit,
                        offset,
                        shard_sql,
                        ..
                    }),
                ..
            }) = st
            {
                if *offset > 0 {
                    let count = match limit {
                        Some(Limit::Count(n)) => Some(n.saturating_add(*offset)),
                        _ => None,
                    };
                    *shard_sql = Some(without_offset(&result.protobuf, index, count)?);
                }
            }
            if let Analyzed::Data(Data {
                merge:
                    Ok(MergeShape::Aggregate {
                        outputs, shard_sql, ..
                    }),
                ..
            }) = st
            {
                if outputs.contains(&Output::Aggregate(Aggregate::Avg)) {
                    *shard_sql = Some(split_avg(&result.protobuf, index, outputs)?);
                }
            }
        }
        Ok(Parsed {
            statements,
            pin,
            protobuf: result.protobuf,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Caches> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Routes a statement text. `params` are the Bind values (empty for the
    /// simple protocol); `key` is the session's `shardline.merchant_id`,
    /// used by statements that name no key of their own.
    pub fn route(
        &self,
        sql: &str,
        params: &[Param<'_>],
        key: Option<&ShardKey>,
    ) -> Result<Route, RouteError> {
        let parsed = match self.cached(sql) {
            Some(p) => p,
            None => {
                if let Some(route) = self.route_shape(sql, params, key) {
                    return Ok(route);
                }
                self.parsed(sql)?
            }
        };
        self.route_parsed(&parsed, params, key)
    }

    /// Routes a text by parsing the text itself, never its shape: what
    /// [`Router::route`] must agree with.
    #[cfg(test)]
    pub(crate) fn route_text(
        &self,
        sql: &str,
        params: &[Param<'_>],
        key: Option<&ShardKey>,
    ) -> Result<Route, RouteError> {
        let parsed = self.parsed(sql)?;
        self.route_parsed(&parsed, params, key)
    }

    /// Routes a text by its shape, when the shape is known to route as the
    /// text does and the statement goes to one database. `None`: route the
    /// text itself (which also gives any error exactly as before).
    fn route_shape(
        &self,
        sql: &str,
        params: &[Param<'_>],
        key: Option<&ShardKey>,
    ) -> Option<Route> {
        let (parsed, values) = self.shape(sql, params.len())?;
        let mut all = Vec::with_capacity(params.len() + values.len());
        all.extend_from_slice(params);
        all.extend(values.iter().map(|v| Param::text(v)));
        let route = self.route_parsed(&parsed, &all, key).ok()?;
        matches!(
            route.target,
            Target::Any | Target::Database { .. } | Target::Shard { .. } | Target::AnyShard { .. }
        )
        .then_some(route)
    }

    /// The analysis routing reads for a text: its own, or its shape's with
    /// the literal values appended to `params` (for [`Router::touch`], to
    /// which an over-approximation is as good).
    pub(crate) fn analysis(
        &self,
        sql: &str,
        given: usize,
    ) -> Result<(Arc<Parsed>, Vec<String>), RouteError> {
        if let Some(p) = self.cached(sql) {
            return Ok((p, Vec::new()));
        }
        if let Some(found) = self.shape(sql, given) {
            return Ok(found);
        }
        Ok((self.parsed(sql)?, Vec::new()))
    }

    fn route_parsed(
        &self,
        parsed: &Parsed,
        params: &[Param<'_>],
        key: Option<&ShardKey>,
    ) -> Result<Route, RouteError> {
        let mut key = key.cloned();
        let mut kinds = Vec::with_capacity(parsed.statements.len());
        let mut target: Option<Target> = None;
        for (index, st) in parsed.statements.iter().enumerate() {
            let (kind, t) = match st {
                Analyzed::Rejected(e) => return Err(e.clone()),
                Analyzed::Control(c) => (Kind::Control(*c), Target::Any),
                Analyzed::Session => (Kind::Session, Target::Any),
                Analyzed::Setting(custom) => (Kind::Setting(custom.clone()), Target::Any),
                Analyzed::LocalSetting => (Kind::LocalSetting, Target::Any),
                Analyzed::Deallocate(name) => (Kind::Deallocate(name.clone()), Target::Any),
                Analyzed::SetKey(k) => {
                    let resolved = match k {
                        Some(k) => self.key_value(k, params, self.override_type())?,
                        None => None,
                    };
                    key.clone_from(&resolved);
                    (Kind::SetKey(resolved), Target::Any)
                }
                Analyzed::Data(d) => {
                    let kind = if d.verb.is_write() {
                        Kind::Write
                    } else {
                        Kind::Read
                    };
                    let single = parsed.statements.len() == 1;
                    let t = self.data(d, params, key.as_ref(), &parsed.protobuf, index, single)?;
                    (kind, t)
                }
            };
            kinds.push(kind);
            target = match (target, t) {
                (None, t) | (Some(Target::Any), t) => Some(t),
                (Some(prev), Target::Any) => Some(prev),
                (Some(prev), t) if prev == t && prev.single().is_some() => Some(prev),
                (Some(_), _) => {
                    return Err(RouteError::Unsupported {
                        statement: "a query string whose statements go to different databases"
                            .into(),
                    })
                }
            };
        }
        Ok(Route {
            target: target.unwrap_or(Target::Any),
            kinds,
            pin: parsed.pin,
        })
    }

    /// The context a statement text reads or writes, without bind values:
    /// where to prepare or describe it before it is bound.
    pub fn home(&self, sql: &str) -> Result<Option<usize>, RouteError> {
        let parsed = self.parsed(sql)?;
        let mut home = None;
        for st in &parsed.statements {
            match st {
                Analyzed::Rejected(e) => return Err(e.clone()),
                Analyzed::Data(d) => {
                    for (_, c) in &d.contexts {
                        if home.is_some_and(|h| h != *c) {
                            return Err(self.cross_context(d));
                        }
                        home = Some(*c);
                    }
                }
                _ => {}
            }
        }
        Ok(home)
    }

    fn cross_context(&self, d: &Data) -> RouteError {
        let mut seen = Vec::new();
        for (table, c) in &d.contexts {
            let entry = format!("{table} ({})", self.schema.context(*c).name);
            if !seen.contains(&entry) {
                seen.push(entry);
            }
        }
        RouteError::CrossContext {
            tables: seen.join(", "),
        }
    }

    fn override_type(&self) -> ShardKeyType {
        self.schema
            .override_key_type()
            .unwrap_or(ShardKeyType::Bigint)
    }

    fn data(
        &self,
        d: &Data,
        params: &[Param<'_>],
        key: Option<&ShardKey>,
        protobuf: &protobuf::ParseResult,
        index: usize,
        single: bool,
    ) -> Result<Target, RouteError> {
        let mut contexts: Vec<usize> = d.contexts.iter().map(|(_, c)| *c).collect();
        contexts.sort_unstable();
        contexts.dedup();
        let ctx = match contexts.as_slice() {
            [] => return Ok(Target::Any),
            [one] => *one,
            _ => return Err(self.cross_context(d)),
        };
        let info = self.schema.context(ctx);
        let context = info.name.clone();
        let Some((shard_key, placement)) = &info.sharding else {
            return Ok(Target::Database { context });
        };
        if d.writes_replicated {
            if !d.scopes.is_empty() {
                return Err(RouteError::ReplicatedWriteMixed {
                    table: d.target.clone().unwrap_or_default(),
                });
            }
            return Ok(Target::Broadcast { context });
        }
        let shard_of = |k: &KeyExpr| -> Result<Option<usize>, RouteError> {
            Ok(self
                .key_value(k, params, placement.key_type())?
                .map(|k| placement.shard(&k)))
        };
        let resolve = |c: &Constraint| -> Result<Option<BTreeSet<usize>>, RouteError> {
            resolve(c, &shard_of)
        };
        let override_shard = key.map(|k| placement.shard(k));

        if let Some(rows) = &d.insert_keys {
            let shards = rows
                .iter()
                .map(|k| shard_of(k).map(|s| s.unwrap_or(0)))
                .collect::<Result<Vec<_>, _>>()?;
            let distinct: BTreeSet<usize> = shards.iter().copied().collect();
            for scope in &d.scopes {
                let set = resolve(&scope.constraint)?.or(override_shard.map(|s| [s].into()));
                if set
                    .as_ref()
                    .is_none_or(|s| !s.is_subset(&distinct) || distinct.len() > 1)
                {
                    return Err(RouteError::SubqueryAcrossShards {
                        table: scope.table.clone(),
                        key: shard_key.clone(),
                    });
                }
            }
            let table = d.target.clone().unwrap_or_default();
            return match distinct.len() {
                0 | 1 => Ok(Target::Shard {
                    context,
                    shard: distinct.first().copied().unwrap_or(0),
                }),
                _ if !params.is_empty() || !single => Err(RouteError::SplitWithParameters {
                    table,
                    shards: distinct.into_iter().collect(),
                }),
                _ => Ok(Target::Split {
                    context,
                    parts: split_insert(protobuf, index, &shards)?,
                }),
            };
        }

        if d.scopes.is_empty() {
            return Ok(Target::AnyShard { context });
        }
        let sets = d
            .scopes
            .iter()
            .map(|s| Ok(resolve(&s.constraint)?.or(override_shard.map(|s| [s].into()))))
            .collect::<Result<Vec<_>, RouteError>>()?;
        if sets.iter().all(Option::is_some) {
            let union: BTreeSet<usize> = sets.iter().flatten().flatten().copied().collect();
            if union.len() <= 1 {
                return Ok(Target::Shard {
                    context,
                    shard: union.first().copied().unwrap_or(0),
                });
            }
        }
        if d.scopes.len() > 1 {
            let scope = d
                .scopes
                .iter()
                .zip(&sets)
                .find(|(_, s)| s.as_ref().is_none_or(|s| s.len() != 1))
                .map(|(scope, _)| scope)
                .unwrap_or(&d.scopes[0]);
            return Err(RouteError::SubqueryAcrossShards {
                table: scope.table.clone(),
                key: shard_key.clone(),
            });
        }
        let shards: Vec<usize> = match &sets[0] {
            Some(set) => set.iter().copied().collect(),
            None if d.verb.is_write() => {
                return Err(RouteError::WriteWithoutKey {
                    statement: d.verb.name(),
                    table: d.scopes[0].table.clone(),
                    key: shard_key.clone(),
                })
            }
            None => (0..info.databases).collect(),
        };
        if d.verb.is_write() {
            return Ok(Target::Shards {
                context,
                shards,
                merge: None,
            });
        }
        match &d.merge {
            Ok(shape) => Ok(Target::Shards {
                context,
                shards,
                merge: Some(shape.clone()),
            }),
            Err(reason) => Err(RouteError::Unmergeable {
                shards,
                reason: reason.clone(),
            }),
        }
    }

    /// The value of a key expression, `None` for NULL.
    pub(crate) fn key_value(
        &self,
        k: &KeyExpr,
        params: &[Param<'_>],
        key_type: ShardKeyType,
    ) -> Result<Option<ShardKey>, RouteError> {
        match k {
            KeyExpr::Null => Ok(None),
            KeyExpr::Literal(k) => Ok(Some(k.clone())),
            KeyExpr::Param(i) | KeyExpr::CastParam(i, _) => {
                let p = params.get(*i).ok_or(RouteError::MissingParameter {
                    number: i + 1,
                    given: params.len(),
                })?;
                let mut p = *p;
                if let (KeyExpr::CastParam(_, oid), 0) = (k, p.type_oid) {
                    p.type_oid = *oid;
                }
                param_key(&p, *i + 1, key_type)
            }
        }
    }
}

/// The shards a constraint allows, `None` for every shard.
pub(crate) fn resolve(
    c: &Constraint,
    shard_of: &dyn Fn(&KeyExpr) -> Result<Option<usize>, RouteError>,
) -> Result<Option<BTreeSet<usize>>, RouteError> {
    Ok(match c {
        Constraint::Any => None,
        Constraint::Keys(keys) => {
            let mut set = BTreeSet::new();
            for k in keys {
                set.extend(shard_of(k)?);
            }
            Some(set)
        }
        Constraint::And(parts) => {
            let mut acc: Option<BTreeSet<usize>> = None;
            for p in parts {
                if let Some(set) = resolve(p, shard_of)? {
                    acc = Some(match acc {
                        Some(a) => a.intersection(&set).copied().collect(),
                        None => set,
                    });
                }
            }
            acc
        }
        Constraint::Or(parts) => {
            let mut acc = BTreeSet::new();
            for p in parts {
                match resolve(p, shard_of)? {
                    Some(set) => acc.extend(set),
                    None => return Ok(None),
                }
            }
            Some(acc)
        }
    })
}

/// PostgreSQL type OIDs a key parameter may be declared with.
mod oid {
    pub const UNSPECIFIED: u32 = 0;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const NAME: u32 = 19;
    pub const VARCHAR: u32 = 1043;
    pub const BPCHAR: u32 = 1042;
    pub const UNKNOWN: u32 = 705;
    pub const UUID: u32 = 2950;
}

/// A bind parameter's value as a shard key of `key_type`.
fn param_key(
    p: &Param<'_>,
    number: usize,
    key_type: ShardKeyType,
) -> Result<Option<ShardKey>, RouteError> {
    let Some(bytes) = p.value else {
        return Ok(None);
    };
    let wrong = || RouteError::ParameterType {
        number,
        oid: p.type_oid,
    };
    if p.format == Format::Text {
        let text = std::str::from_utf8(bytes).map_err(|_| wrong())?;
        return Ok(Some(key_type.parse_key(text)?));
    }
    let int = |v: i64| -> Result<Option<ShardKey>, RouteError> {
        match key_type {
            ShardKeyType::Bigint | ShardKeyType::Integer | ShardKeyType::Smallint => {
                Ok(Some(key_type.parse_key(&v.to_string())?))
            }
            _ => Err(wrong()),
        }
    };
    let fixed = |n: usize| -> Result<&[u8], RouteError> {
        (bytes.len() == n).then_some(bytes).ok_or(wrong())
    };
    match p.type_oid {
        oid::INT8 => int(i64::from_be_bytes(
            fixed(8)?.try_into().map_err(|_| wrong())?,
        )),
        oid::INT4 => int(i32::from_be_bytes(fixed(4)?.try_into().map_err(|_| wrong())?).into()),
        oid::INT2 => int(i16::from_be_bytes(fixed(2)?.try_into().map_err(|_| wrong())?).into()),
        oid::TEXT | oid::VARCHAR | oid::NAME | oid::BPCHAR | oid::UNKNOWN => {
            let text = std::str::from_utf8(bytes).map_err(|_| wrong())?;
            Ok(Some(key_type.parse_key(text)?))
        }
        oid::UUID if key_type == ShardKeyType::Uuid => {
            let b: [u8; 16] = bytes.try_into().map_err(|_| wrong())?;
            Ok(Some(ShardKey::Uuid(b)))
        }
        // Inferred from the column: the key type's own binary form.
        oid::UNSPECIFIED => match key_type {
            ShardKeyType::Bigint => int(i64::from_be_bytes(
                fixed(8)?.try_into().map_err(|_| wrong())?,
            )),
            ShardKeyType::Integer => {
                int(i32::from_be_bytes(fixed(4)?.try_into().map_err(|_| wrong())?).into())
            }
            ShardKeyType::Smallint => {
                int(i16::from_be_bytes(fixed(2)?.try_into().map_err(|_| wrong())?).into())
            }
            ShardKeyType::Text => Ok(Some(ShardKey::Text(
                String::from_utf8(bytes.to_vec()).map_err(|_| wrong())?,
            ))),
            ShardKeyType::Uuid => Ok(Some(ShardKey::Uuid(bytes.try_into().map_err(|_| wrong())?))),
        },
        _ => Err(wrong()),
    }
}
