//! The session's side of a cutover (see [`crate::cohort`]): each
//! statement of the sharded context is admitted (it may wait while its
//! buckets are held), counted in the open transaction's registration, and
//! sent to the side that serves its buckets.

use bytes::Bytes;

use super::{Session, Txn};
use crate::cohort::{Admission, Cohorts, Refusal, Side};
use crate::message::{self as msg, Frame};
use crate::{Format, Param, Route, Target};

impl Session {
    /// Admits a simple-protocol statement and places it.
    pub(super) async fn cutover_route(
        &mut self,
        route: Route,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Route, Refusal> {
        let Some(cohorts) = self.shared.cohorts.clone() else {
            return Ok(route);
        };
        if route.target == Target::Any {
            return Ok(route);
        }
        let touch = self
            .shared
            .router
            .touch(&cohorts, sql, params, self.key.as_ref());
        let admission = cohorts.admit(&mut self.cutover, &touch).await?;
        self.cutover_target(route, &admission)
    }

    /// Admits every bound statement of an extended-protocol batch before
    /// the batch is planned; planning then places them
    /// ([`Session::cutover_place`]).
    pub(super) async fn cutover_admit(&mut self, batch: &[Frame]) -> Result<(), Refusal> {
        let Some(cohorts) = self.shared.cohorts.clone() else {
            return Ok(());
        };
        let mut parsed_here: Vec<(String, String, Vec<u32>)> = Vec::new();
        for f in batch {
            match f.tag {
                b'P' => {
                    if let Ok(p) = msg::parse_parse(f.body()) {
                        parsed_here.push((p.name, p.sql, p.types));
                    }
                }
                b'B' => {
                    let Ok(bind) = msg::parse_bind(f) else {
                        continue;
                    };
                    let found = parsed_here
                        .iter()
                        .rev()
                        .find(|(n, _, _)| *n == bind.statement)
                        .map(|(_, sql, types)| (sql.clone(), types.clone()))
                        .or_else(|| {
                            self.statements
                                .get(&bind.statement)
                                .map(|s| (s.sql.clone(), s.types.clone()))
                        });
                    let Some((sql, types)) = found else {
                        continue;
                    };
                    let values: Vec<Option<Bytes>> = bind.values.clone();
                    let params: Vec<Param<'_>> = values
                        .iter()
                        .enumerate()
                        .map(|(i, v)| Param {
                            value: v.as_deref(),
                            format: if bind.format(i) == 1 {
                                Format::Binary
                            } else {
                                Format::Text
                            },
                            type_oid: types.get(i).copied().unwrap_or(0),
                        })
                        .collect();
                    let Ok(route) = self.shared.router.route(&sql, &params, self.key.as_ref())
                    else {
                        continue;
                    };
                    if route.target == Target::Any {
                        continue;
                    }
                    let touch =
                        self.shared
                            .router
                            .touch(&cohorts, &sql, &params, self.key.as_ref());
                    cohorts.admit(&mut self.cutover, &touch).await?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Places a bound statement already admitted by
    /// [`Session::cutover_admit`].
    pub(super) fn cutover_place(
        &self,
        route: Route,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Route, Refusal> {
        let Some(cohorts) = self.shared.cohorts.as_ref() else {
            return Ok(route);
        };
        if route.target == Target::Any {
            return Ok(route);
        }
        let touch = self
            .shared
            .router
            .touch(cohorts, sql, params, self.key.as_ref());
        let admission = cohorts.peek(&self.cutover, &touch);
        self.cutover_target(route, &admission)
    }

    fn cutover_target(&self, mut route: Route, admission: &Admission) -> Result<Route, Refusal> {
        let monolith = (self.shared.router.schema().contexts().len(), 0);
        let pinned = match self.txn {
            Txn::Pinned(db) => Some(db),
            _ => None,
        };
        let to_shard = pinned.is_some_and(|db| db != monolith);
        let placed = Cohorts::place(&route.target, admission, to_shard)?;
        if pinned == Some(monolith)
            && placed.is_none()
            && admission.flipped
            && admission.side == Some(Side::Shards)
        {
            return Err((
                "40001",
                "a merchant of this transaction moved to the shards while the transaction was open on the monolith".into(),
                Some("retry the transaction; it will run where the merchant now lives".into()),
            ));
        }
        if to_shard
            && placed.is_some()
            && admission.flipped
            && admission.side == Some(Side::Monolith)
        {
            return Err((
                "40001",
                "a merchant of this transaction returned to the monolith while the transaction was open on a shard".into(),
                Some("retry the transaction; it will run where the merchant now lives".into()),
            ));
        }
        if let Some(target) = placed {
            route.target = target;
        }
        Ok(route)
    }

    pub(super) fn cutover_release(&mut self) {
        if let Some(cohorts) = &self.shared.cohorts {
            if self.cutover.is_active() {
                cohorts.release(&mut self.cutover);
            }
        }
    }
}
