//! What the source slot may be told: the confirmed position.
//!
//! A source transaction is dispatched to the targets it touches; each target
//! commits it (with the LSN it reached) in its own time. The slot may only be
//! confirmed up to the end of the newest transaction such that it and every
//! earlier one are durable on every target they touched. Anything a keepalive
//! or a heartbeat says about the server's WAL position can only move the
//! confirmed position while nothing is in flight: confirming past an unapplied
//! transaction on a keepalive is how pgcopydb lost data (issue 1033).

use std::collections::{BTreeSet, VecDeque};
use std::time::Instant;

use crate::lsn::Lsn;

#[derive(Debug)]
struct InFlight {
    end_lsn: Lsn,
    pending: BTreeSet<usize>,
    /// Microseconds since 2000-01-01, as the source stamped the commit.
    commit_time: i64,
    dispatched_at: Instant,
}

/// The confirmed position and the transactions that hold it back.
#[derive(Debug)]
pub struct Confirmations {
    in_flight: VecDeque<InFlight>,
    confirmed: Lsn,
    /// Seconds from dispatch to durable everywhere, of transactions that
    /// completed since the last [`Confirmations::take_latencies`].
    latencies: Vec<f64>,
}

impl Confirmations {
    /// Starts at a position already durable everywhere (the slot's
    /// confirmed position, or backfill's consistent point).
    pub fn new(start: Lsn) -> Self {
        Self {
            in_flight: VecDeque::new(),
            confirmed: start,
            latencies: Vec::new(),
        }
    }

    /// Records a source transaction ending at `end_lsn`, sent to `targets`.
    /// Transactions must be dispatched in commit order.
    pub fn dispatched(&mut self, end_lsn: Lsn, targets: impl IntoIterator<Item = usize>) {
        self.dispatched_at(end_lsn, targets, 0);
    }

    /// [`Confirmations::dispatched`], with the source's commit time
    /// (microseconds since 2000-01-01) for lag in seconds.
    pub fn dispatched_at(
        &mut self,
        end_lsn: Lsn,
        targets: impl IntoIterator<Item = usize>,
        commit_time: i64,
    ) {
        debug_assert!(self.in_flight.back().is_none_or(|t| t.end_lsn <= end_lsn));
        self.in_flight.push_back(InFlight {
            end_lsn,
            pending: targets.into_iter().collect(),
            commit_time,
            dispatched_at: Instant::now(),
        });
        self.advance();
    }

    /// A target has committed everything dispatched to it up to `up_to`.
    pub fn durable(&mut self, target: usize, up_to: Lsn) {
        for t in self.in_flight.iter_mut().take_while(|t| t.end_lsn <= up_to) {
            t.pending.remove(&target);
        }
        self.advance();
    }

    /// The server reports a WAL position with nothing of ours before it
    /// (a heartbeat message or a keepalive). Moves the confirmed position
    /// only when no transaction is in flight.
    pub fn idle_at(&mut self, lsn: Lsn) {
        if self.in_flight.is_empty() && lsn > self.confirmed {
            self.confirmed = lsn;
        }
    }

    pub fn confirmed(&self) -> Lsn {
        self.confirmed
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The commit time of the oldest transaction `target` has not yet made
    /// durable, if any.
    pub fn oldest_outstanding(&self, target: usize) -> Option<i64> {
        self.in_flight
            .iter()
            .find(|t| t.pending.contains(&target))
            .map(|t| t.commit_time)
    }

    /// Dispatch-to-durable seconds of transactions completed since the last call.
    pub fn take_latencies(&mut self) -> Vec<f64> {
        std::mem::take(&mut self.latencies)
    }

    fn advance(&mut self) {
        while let Some(front) = self.in_flight.front() {
            if !front.pending.is_empty() {
                break;
            }
            self.confirmed = self.confirmed.max(front.end_lsn);
            if self.latencies.len() < 100_000 {
                self.latencies
                    .push(front.dispatched_at.elapsed().as_secs_f64());
            }
            self.in_flight.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirms_only_what_every_target_made_durable() {
        let mut c = Confirmations::new(Lsn(100));
        c.dispatched(Lsn(200), [0, 1]);
        c.dispatched(Lsn(300), [1]);
        c.dispatched(Lsn(400), [0]);
        c.durable(1, Lsn(300));
        assert_eq!(c.confirmed(), Lsn(100), "target 0 has not applied 200 yet");
        c.durable(0, Lsn(200));
        assert_eq!(c.confirmed(), Lsn(300));
        c.durable(0, Lsn(400));
        assert_eq!(c.confirmed(), Lsn(400));
        assert_eq!(c.in_flight(), 0);
    }

    #[test]
    fn keepalive_does_not_confirm_past_unapplied_transactions_pgcopydb_1033() {
        let mut c = Confirmations::new(Lsn(100));
        c.dispatched(Lsn(200), [0]);
        c.idle_at(Lsn(900));
        assert_eq!(c.confirmed(), Lsn(100));
        c.durable(0, Lsn(200));
        assert_eq!(c.confirmed(), Lsn(200));
        c.idle_at(Lsn(900));
        assert_eq!(
            c.confirmed(),
            Lsn(900),
            "an idle source still lets the slot advance"
        );
        c.idle_at(Lsn(500));
        assert_eq!(c.confirmed(), Lsn(900), "never backwards");
    }

    #[test]
    fn transactions_touching_no_target_confirm_in_order() {
        let mut c = Confirmations::new(Lsn(0));
        c.dispatched(Lsn(10), [2]);
        c.dispatched(Lsn(20), []);
        assert_eq!(c.confirmed(), Lsn(0));
        c.durable(2, Lsn(10));
        assert_eq!(c.confirmed(), Lsn(20));
    }
}
