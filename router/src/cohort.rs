//! Cutover in the router: which side serves each bucket of the sharded
//! context, and the hold that lets a cohort of buckets switch sides
//! without a statement running on the wrong one.
//!
//! With `[cutover] enabled = true` the router reads the bucket owners from
//! the monolith (`shardline_cutover::control`) and LISTENs for their
//! changes on a dedicated connection ([`Cohorts::watch`], reconnecting on
//! loss). Until it has read them, and whenever that connection is down,
//! statements that depend on them wait.
//!
//! Routing during cutover ([`Cohorts::place`]):
//!
//! - a keyed statement of the sharded context goes to the monolith (the
//!   `[source] url` database) when its buckets are the monolith's, to its
//!   shard when they are the shards'; a statement over buckets of both
//!   sides is refused (`0A000`);
//! - a keyless statement of the sharded context goes to the monolith
//!   while no bucket has moved, is scattered over the shards once all
//!   have, and is refused in between (`0A000`, with the count of buckets
//!   on each side);
//! - writes of reference tables, and every statement of the unsharded
//!   contexts, stay on the monolith: CDC feeds their copies from it, so a
//!   write elsewhere would diverge. Moving those is a later stage; reads of
//!   reference tables inside a shard's transaction stay on that shard.
//!
//! The hold ([`Cohorts::admit`]): while a cohort is `holding`, a statement
//! that opens a transaction (or runs alone) on one of its buckets waits.
//! Statements of transactions that already touched some bucket go on, and
//! the router counts every open transaction per bucket it touched; once
//! no open transaction touches a held bucket it acknowledges the hold's
//! epoch. After that acknowledgement a transaction that reaches a held
//! bucket is refused with `40001` (retry the transaction), because the
//! coordinator may already have recorded the switch position. When the
//! cohort is switched (or aborted) the held statements are released to
//! the side that now serves them. A transaction left on the monolith that
//! reaches a bucket switched since it began is refused with `40001` too,
//! never run on the wrong side.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use shardline_cutover::control::{self, Owners, HEARTBEAT_MILLIS};
use shardline_topology::{ConnString, Placement, ShardKey};
use tokio::sync::{watch, Notify};
use tokio_postgres::AsyncMessage;

use crate::route::resolve;
use crate::statement::Analyzed;
use crate::{Param, Router, Target};

/// The name of the monolith in a [`Target::Database`]: no context of a
/// topology can be called so.
pub(crate) const MONOLITH: &str = "\u{0}monolith";

/// Pause between attempts to reach the monolith's control state.
const RECONNECT: Duration = Duration::from_secs(1);

/// A router releases a hold on its own this long after its deadline, when
/// no coordinator finished it (see `shardline_cutover::control::expire`).
const EXPIRE_GRACE: Duration = Duration::from_secs(1);

/// The buckets a statement reads or writes in the sharded context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Touch {
    /// No table of the sharded context, or only its reference tables.
    Nothing,
    Buckets(Vec<u32>),
    /// No key: any bucket.
    All,
}

/// Which side serves what a statement touches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    Monolith,
    Shards,
    Both,
}

/// A statement the cutover state does not let run: SQLSTATE, message, hint.
pub(crate) type Refusal = (&'static str, String, Option<String>);

#[derive(Debug)]
struct Held {
    cohort: i32,
    epoch: i64,
    buckets: Vec<bool>,
    acked: bool,
    seen_at: Instant,
    max_pause: Duration,
}

#[derive(Debug)]
struct View {
    /// The state was read and the control connection is up.
    loaded: bool,
    on_shards: Vec<bool>,
    shards_count: usize,
    held: Option<Held>,
    /// Open transactions (or running statements) per bucket they touched.
    open: Vec<u32>,
    /// Open keyless statements of the sharded context.
    open_all: u32,
    /// Times the owners changed, so a transaction can tell a bucket moved
    /// while it was open.
    flips: u64,
}

impl View {
    fn drained(&self) -> bool {
        let Some(h) = &self.held else { return false };
        self.open_all == 0
            && h.buckets
                .iter()
                .zip(&self.open)
                .all(|(held, open)| !held || *open == 0)
    }

    fn side(&self, touch: &Touch) -> Option<Side> {
        let of = |b: &u32| self.on_shards.get(*b as usize).copied().unwrap_or(false);
        match touch {
            Touch::Nothing => None,
            Touch::Buckets(bs) if bs.is_empty() => None,
            Touch::Buckets(bs) => {
                let shards = bs.iter().filter(|b| of(b)).count();
                Some(if shards == 0 {
                    Side::Monolith
                } else if shards == bs.len() {
                    Side::Shards
                } else {
                    Side::Both
                })
            }
            Touch::All => Some(self.all_side()),
        }
    }

    fn all_side(&self) -> Side {
        if self.shards_count == 0 {
            Side::Monolith
        } else if self.shards_count == self.on_shards.len() {
            Side::Shards
        } else {
            Side::Both
        }
    }

    fn holds(&self, touch: &Touch) -> bool {
        let Some(h) = &self.held else { return false };
        match touch {
            Touch::Nothing => false,
            Touch::All => true,
            Touch::Buckets(bs) => bs
                .iter()
                .any(|b| h.buckets.get(*b as usize).copied().unwrap_or(false)),
        }
    }
}

/// One client session's open transaction, as the drain counts it.
#[derive(Debug, Default)]
pub(crate) struct Registration {
    buckets: Vec<u32>,
    all: bool,
    active: bool,
    flips_at_start: u64,
}

impl Registration {
    pub fn is_active(&self) -> bool {
        self.active
    }
}

/// What [`Cohorts::admit`] decided.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Admission {
    pub side: Option<Side>,
    /// Every bucket is on the shards.
    pub all_on_shards: bool,
    /// The owners changed since the transaction began.
    pub flipped: bool,
}

/// The cutover state as this router sees it; shared by every session.
pub struct Cohorts {
    view: Mutex<View>,
    version: watch::Sender<u64>,
    drained: Notify,
    placement: Placement,
    source: ConnString,
    router_id: String,
}

impl Cohorts {
    pub fn new(placement: Placement, source: ConnString) -> Arc<Self> {
        let n = placement.buckets() as usize;
        let router_id = format!(
            "{}-{}-{:08x}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "router".into()),
            std::process::id(),
            rand::random::<u32>()
        );
        Arc::new(Self {
            view: Mutex::new(View {
                loaded: false,
                on_shards: vec![false; n],
                shards_count: 0,
                held: None,
                open: vec![0; n],
                open_all: 0,
                flips: 0,
            }),
            version: watch::channel(0).0,
            drained: Notify::new(),
            placement,
            source,
            router_id,
        })
    }

    pub fn router_id(&self) -> &str {
        &self.router_id
    }

    fn lock(&self) -> MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn changed(&self) {
        self.version.send_modify(|v| *v += 1);
        self.drained.notify_waiters();
    }

    /// The key's bucket, for a session's `SET shardline.merchant_id`.
    fn bucket(&self, key: &ShardKey) -> u32 {
        self.placement.bucket(key)
    }

    /// Waits until the statement may run, counts it in its transaction's
    /// registration, and says which side serves it. A transaction (or a
    /// pipeline before its Sync) that already touched a bucket goes on
    /// into held buckets until the hold is acknowledged: its router waits
    /// for it, so holding it could deadlock the drain.
    pub(crate) async fn admit(
        &self,
        reg: &mut Registration,
        touch: &Touch,
    ) -> Result<Admission, Refusal> {
        let mut version = self.version.subscribe();
        loop {
            version.borrow_and_update();
            {
                let mut v = self.lock();
                if v.loaded {
                    let continuing = reg.active;
                    let held = v.holds(touch);
                    if held && continuing && v.held.as_ref().is_some_and(|h| h.acked) {
                        return Err((
                            "40001",
                            "this transaction reached a merchant whose bucket is switching to the shards".into(),
                            Some("retry the transaction; it will run where the merchant now lives".into()),
                        ));
                    }
                    if !held || continuing {
                        register(&mut v, reg, touch);
                        return Ok(Admission {
                            side: v.side(touch),
                            all_on_shards: v.all_side() == Side::Shards,
                            flipped: v.flips > reg.flips_at_start,
                        });
                    }
                }
            }
            if version.changed().await.is_err() {
                return Err(("57P01", "the router is shutting down".into(), None));
            }
        }
    }

    /// The side of a statement [`Cohorts::admit`] let in: its buckets are
    /// counted in `reg`, so they cannot switch under it.
    pub(crate) fn peek(&self, reg: &Registration, touch: &Touch) -> Admission {
        let v = self.lock();
        Admission {
            side: v.side(touch),
            all_on_shards: v.all_side() == Side::Shards,
            flipped: v.flips > reg.flips_at_start,
        }
    }

    /// Ends a session's transaction for the drain.
    pub(crate) fn release(&self, reg: &mut Registration) {
        if !reg.active {
            return;
        }
        let mut v = self.lock();
        for b in reg.buckets.drain(..) {
            if let Some(n) = v.open.get_mut(b as usize) {
                *n = n.saturating_sub(1);
            }
        }
        if reg.all {
            v.open_all = v.open_all.saturating_sub(1);
            reg.all = false;
        }
        reg.active = false;
        let drained = v.drained();
        drop(v);
        if drained {
            self.drained.notify_waiters();
        }
    }

    /// Where the statement goes given its side: `Ok(None)` keeps the
    /// router's own target, `Ok(Some)` replaces it.
    pub(crate) fn place(
        target: &Target,
        admission: &Admission,
        pinned_to_shard: bool,
    ) -> Result<Option<Target>, Refusal> {
        let monolith = || {
            Some(Target::Database {
                context: MONOLITH.into(),
            })
        };
        Ok(match target {
            Target::Any => None,
            Target::Database { .. } => monolith(),
            Target::AnyShard { .. } if pinned_to_shard || admission.all_on_shards => None,
            Target::AnyShard { .. } => monolith(),
            Target::Broadcast { .. } if admission.all_on_shards => None,
            Target::Broadcast { .. } => monolith(),
            Target::Shard { .. } | Target::Shards { .. } | Target::Split { .. } => {
                match admission.side {
                    Some(Side::Monolith) => monolith(),
                    Some(Side::Shards) | None => None,
                    Some(Side::Both) => {
                        return Err((
                            "0A000",
                            "the statement touches merchants served by the monolith and merchants already moved to the shards".into(),
                            Some("during cutover, give each statement one merchant (or merchants of one side)".into()),
                        ))
                    }
                }
            }
        })
    }

    /// Removes this router's heartbeat row (best effort).
    pub async fn leave(&self) {
        let left = async {
            let client = self.source.connect().await.ok()?;
            control::leave(&client, &self.router_id).await.ok()
        };
        if tokio::time::timeout(Duration::from_secs(2), left)
            .await
            .ok()
            .flatten()
            .is_none()
        {
            tracing::warn!(router = %self.router_id, "could not remove this router from the cutover state; a cutover waits for its heartbeat to expire");
        }
    }

    /// Follows the state in the monolith for as long as the router runs.
    pub async fn watch(self: Arc<Self>) {
        loop {
            if let Err(e) = self.follow().await {
                tracing::warn!(error = %e, "lost the cutover state; statements that depend on it wait");
            }
            self.lock().loaded = false;
            self.changed();
            tokio::time::sleep(RECONNECT).await;
        }
    }

    /// Ends with why it stopped following (only logged: the loop retries).
    async fn follow(&self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let (mut client, mut connection) = self.source.open().await?;
        let (notes, mut notified) = tokio::sync::mpsc::unbounded_channel::<()>();
        let driver = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(m) = messages.next().await {
                match m {
                    Ok(AsyncMessage::Notification(_)) => {
                        if notes.send(()).is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "cutover control connection closed");
                        break;
                    }
                }
            }
        });
        let _stop = AbortOnDrop(driver);
        control::ensure(&mut client).await?;
        client
            .batch_execute(&format!("LISTEN {}", control::CHANNEL))
            .await?;
        // Registered before it routes anything: a coordinator that reads
        // the routers after this waits for this router's acknowledgement.
        control::heartbeat(&client, &self.router_id, 0).await?;
        self.reload(&client).await?;
        let mut beat = tokio::time::interval(Duration::from_millis(HEARTBEAT_MILLIS));
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if let Some(epoch) = self.try_ack() {
                control::heartbeat(&client, &self.router_id, epoch).await?;
                tracing::info!(epoch, "acknowledged the hold");
                continue;
            }
            tokio::select! {
                note = notified.recv() => {
                    if note.is_none() {
                        return Ok(());
                    }
                    while notified.try_recv().is_ok() {}
                    self.reload(&client).await?;
                }
                _ = beat.tick() => {
                    control::heartbeat(&client, &self.router_id, 0).await?;
                    if let Some(cohort) = self.expired() {
                        control::expire(&client, cohort).await?;
                        self.reload(&client).await?;
                    }
                }
                _ = &mut drained => {}
            }
        }
    }

    /// Marks the hold acknowledged once no open transaction touches it;
    /// from then on no open transaction may reach its buckets.
    fn try_ack(&self) -> Option<i64> {
        let mut v = self.lock();
        if v.held.as_ref().is_some_and(|h| !h.acked) && v.drained() {
            let h = v.held.as_mut()?;
            h.acked = true;
            return Some(h.epoch);
        }
        None
    }

    fn expired(&self) -> Option<i32> {
        let v = self.lock();
        let h = v.held.as_ref()?;
        (h.seen_at.elapsed() > h.max_pause + EXPIRE_GRACE).then_some(h.cohort)
    }

    async fn reload(&self, client: &tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
        let owners = control::load(client).await?;
        self.apply(&owners);
        Ok(())
    }

    fn apply(&self, owners: &Owners) {
        let mut v = self.lock();
        let n = v.on_shards.len();
        let mut on_shards = vec![false; n];
        for b in &owners.on_shards {
            if let Some(slot) = on_shards.get_mut(*b as usize) {
                *slot = true;
            }
        }
        if on_shards != v.on_shards {
            v.flips += 1;
            v.shards_count = on_shards.iter().filter(|s| **s).count();
            v.on_shards = on_shards;
        }
        match (&owners.hold, &v.held) {
            (Some(h), Some(cur)) if cur.epoch == h.epoch => {}
            (Some(h), _) => {
                let mut buckets = vec![false; n];
                for b in &h.buckets {
                    if let Some(slot) = buckets.get_mut(*b as usize) {
                        *slot = true;
                    }
                }
                v.held = Some(Held {
                    cohort: h.cohort,
                    epoch: h.epoch,
                    buckets,
                    acked: false,
                    seen_at: Instant::now(),
                    max_pause: Duration::from_millis(h.max_pause_ms.max(0) as u64),
                });
            }
            (None, _) => v.held = None,
        }
        v.loaded = true;
        drop(v);
        self.changed();
    }
}

/// The cutover state for a topology that enables it.
pub(crate) fn enabled(topology: &shardline_topology::Topology) -> Option<Arc<Cohorts>> {
    if !topology.cutover.enabled {
        return None;
    }
    let placement = match &topology.sharded_context()?.kind {
        shardline_topology::ContextKind::Sharded { placement, .. } => placement.clone(),
        shardline_topology::ContextKind::Single { .. } => return None,
    };
    Some(Cohorts::new(placement, topology.source.clone()))
}

fn register(v: &mut View, reg: &mut Registration, touch: &Touch) {
    if !reg.active {
        reg.active = true;
        reg.flips_at_start = v.flips;
    }
    match touch {
        Touch::Nothing => {}
        Touch::All => {
            if !reg.all {
                reg.all = true;
                v.open_all += 1;
            }
        }
        Touch::Buckets(bs) => {
            for b in bs {
                if !reg.buckets.contains(b) {
                    reg.buckets.push(*b);
                    if let Some(n) = v.open.get_mut(*b as usize) {
                        *n += 1;
                    }
                }
            }
        }
    }
}

pub(crate) struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Router {
    /// The buckets of the sharded context a statement touches, from the
    /// same key analysis routing uses (an over-approximation is safe: it
    /// only holds or counts a statement more often).
    pub(crate) fn touch(
        &self,
        cohorts: &Cohorts,
        sql: &str,
        params: &[Param<'_>],
        key: Option<&ShardKey>,
    ) -> Touch {
        let Ok((parsed, values)) = self.analysis(sql, params.len()) else {
            return Touch::All;
        };
        let mut all = params.to_vec();
        all.extend(values.iter().map(|v| Param::text(v)));
        let params = all.as_slice();
        let schema = self.schema();
        let mut buckets: Vec<u32> = Vec::new();
        let mut key = key.cloned();
        for st in &parsed.statements {
            let d = match st {
                Analyzed::Data(d) => d,
                Analyzed::SetKey(Some(k)) => {
                    key = self
                        .key_value(k, params, cohorts.placement.key_type())
                        .ok()
                        .flatten();
                    continue;
                }
                Analyzed::SetKey(None) => {
                    key = None;
                    continue;
                }
                _ => continue,
            };
            let sharded = d
                .contexts
                .iter()
                .any(|(_, c)| schema.context(*c).sharding.is_some());
            if !sharded {
                continue;
            }
            let key_type = cohorts.placement.key_type();
            let bucket_of = |k: &crate::statement::KeyExpr| {
                Ok(self
                    .key_value(k, params, key_type)?
                    .map(|k| cohorts.bucket(&k) as usize))
            };
            if let Some(rows) = &d.insert_keys {
                for k in rows {
                    match bucket_of(k) {
                        Ok(Some(b)) => buckets.push(b as u32),
                        Ok(None) => {}
                        Err(_) => return Touch::All,
                    }
                }
            }
            for scope in &d.scopes {
                match resolve(&scope.constraint, &bucket_of) {
                    Ok(Some(set)) => buckets.extend(set.into_iter().map(|b| b as u32)),
                    Ok(None) => match &key {
                        Some(k) => buckets.push(cohorts.bucket(k)),
                        None => return Touch::All,
                    },
                    Err(_) => return Touch::All,
                }
            }
        }
        if buckets.is_empty() {
            return Touch::Nothing;
        }
        buckets.sort_unstable();
        buckets.dedup();
        Touch::Buckets(buckets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardline_topology::ShardKeyType;

    fn cohorts() -> Arc<Cohorts> {
        let placement = Placement::even(ShardKeyType::Bigint, 16, 2).unwrap();
        let source = ConnString::parse("host=127.0.0.1 port=1 user=u dbname=d").unwrap();
        Cohorts::new(placement, source)
    }

    fn owners(on_shards: &[u32], hold: Option<(i64, &[u32])>) -> Owners {
        Owners {
            on_shards: on_shards.to_vec(),
            hold: hold.map(|(epoch, buckets)| control::Hold {
                cohort: 1,
                epoch,
                buckets: buckets.to_vec(),
                max_pause_ms: 30_000,
            }),
        }
    }

    fn now<T>(f: impl std::future::Future<Output = T>) -> Option<T> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_millis(50), f)
                .await
                .ok()
        })
    }

    #[test]
    fn statements_wait_until_the_state_is_loaded() {
        let c = cohorts();
        let mut reg = Registration::default();
        assert!(now(c.admit(&mut reg, &Touch::Buckets(vec![1]))).is_none());
        c.apply(&owners(&[], None));
        let a = now(c.admit(&mut reg, &Touch::Buckets(vec![1])))
            .unwrap()
            .unwrap();
        assert_eq!(a.side, Some(Side::Monolith));
    }

    #[test]
    fn a_hold_waits_for_open_transactions_then_holds_new_ones_and_refuses_late_ones() {
        let c = cohorts();
        c.apply(&owners(&[], None));
        let mut open = Registration::default();
        now(c.admit(&mut open, &Touch::Buckets(vec![3])))
            .unwrap()
            .unwrap();
        let mut other = Registration::default();
        now(c.admit(&mut other, &Touch::Buckets(vec![5])))
            .unwrap()
            .unwrap();
        c.apply(&owners(&[], Some((7, &[3, 4]))));
        // An open transaction on a held bucket keeps the hold from draining.
        assert_eq!(c.try_ack(), None);
        // A new statement on a held bucket waits; another bucket runs.
        let mut new = Registration::default();
        assert!(now(c.admit(&mut new, &Touch::Buckets(vec![4]))).is_none());
        assert!(now(c.admit(&mut new, &Touch::Buckets(vec![6]))).is_some());
        c.release(&mut new);
        // The open transaction on another bucket may go on into a held one
        // while the hold drains, and is then waited for.
        now(c.admit(&mut other, &Touch::Buckets(vec![4])))
            .unwrap()
            .unwrap();
        c.release(&mut open);
        assert_eq!(c.try_ack(), None);
        c.release(&mut other);
        assert_eq!(c.try_ack(), Some(7));
        // After the acknowledgement, an open transaction reaching a held
        // bucket is refused as retryable.
        let mut late = Registration::default();
        now(c.admit(&mut late, &Touch::Buckets(vec![9])))
            .unwrap()
            .unwrap();
        let e = now(c.admit(&mut late, &Touch::Buckets(vec![3])))
            .unwrap()
            .unwrap_err();
        assert_eq!(e.0, "40001");
        c.release(&mut late);
        // The switch releases the held buckets to the shards.
        c.apply(&owners(&[3, 4], None));
        let a = now(c.admit(&mut new, &Touch::Buckets(vec![4])))
            .unwrap()
            .unwrap();
        assert_eq!(a.side, Some(Side::Shards));
        assert!(!a.flipped);
    }

    #[test]
    fn keyless_statements_go_to_the_side_that_has_every_bucket() {
        let c = cohorts();
        c.apply(&owners(&[], None));
        let mut reg = Registration::default();
        let a = now(c.admit(&mut reg, &Touch::All)).unwrap().unwrap();
        assert_eq!(a.side, Some(Side::Monolith));
        let shards = Target::Shards {
            context: "tx".into(),
            shards: vec![0, 1],
            merge: None,
        };
        assert!(matches!(
            Cohorts::place(&shards, &a, false),
            Ok(Some(Target::Database { .. }))
        ));
        c.release(&mut reg);
        c.apply(&owners(&[1], None));
        let a = now(c.admit(&mut reg, &Touch::All)).unwrap().unwrap();
        assert_eq!(a.side, Some(Side::Both));
        assert_eq!(Cohorts::place(&shards, &a, false).unwrap_err().0, "0A000");
        c.release(&mut reg);
        c.apply(&owners(&(0..16).collect::<Vec<_>>(), None));
        let a = now(c.admit(&mut reg, &Touch::All)).unwrap().unwrap();
        assert_eq!(Cohorts::place(&shards, &a, false).unwrap(), None);
    }

    #[test]
    fn a_transaction_sees_that_a_bucket_moved_while_it_was_open() {
        let c = cohorts();
        c.apply(&owners(&[], None));
        let mut reg = Registration::default();
        now(c.admit(&mut reg, &Touch::Buckets(vec![1])))
            .unwrap()
            .unwrap();
        c.apply(&owners(&[2], None));
        let a = now(c.admit(&mut reg, &Touch::Buckets(vec![2])))
            .unwrap()
            .unwrap();
        assert!(a.flipped);
        assert_eq!(a.side, Some(Side::Shards));
    }
}
