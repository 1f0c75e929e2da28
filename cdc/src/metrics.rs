//! Prometheus metrics of a running `cdc run`, in the text exposition format.
//!
//! The coordinator updates a shared [`Metrics`] as it streams; [`serve`]
//! answers every HTTP request on the listening address with
//! [`Metrics::render`]. Lag is per target: bytes of WAL and seconds since
//! the source committed the oldest transaction that target has been sent
//! but not yet made durable (zero for a target with nothing outstanding).

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use shardline_metrics::label;
use tokio::sync::watch;

/// Upper bounds of the apply latency histogram, in seconds.
const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];

#[derive(Debug, Default, Clone)]
struct TargetGauges {
    name: String,
    applied_lsn: u64,
    lag_bytes: u64,
    lag_seconds: f64,
    divergences: u64,
    commits: u64,
}

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// What a running CDC exposes.
#[derive(Debug, Default)]
pub struct Metrics {
    changes: AtomicU64,
    transactions: AtomicU64,
    errors: AtomicU64,
    reconnects: AtomicU64,
    retries: AtomicU64,
    confirmed_lsn: AtomicU64,
    source_lsn: AtomicU64,
    targets: Mutex<Vec<TargetGauges>>,
    latency: Mutex<Histogram>,
}

impl Metrics {
    pub fn new(targets: impl IntoIterator<Item = String>) -> Arc<Self> {
        let targets = targets
            .into_iter()
            .map(|name| TargetGauges {
                name,
                ..TargetGauges::default()
            })
            .collect();
        Arc::new(Self {
            targets: Mutex::new(targets),
            ..Self::default()
        })
    }

    pub fn progress(&self, changes: u64, transactions: u64) {
        self.changes.store(changes, Ordering::Relaxed);
        self.transactions.store(transactions, Ordering::Relaxed);
    }

    pub fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// The stream was set up again after a transient fault.
    pub fn reconnected(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// An attempt to set the stream up again failed (the server still down).
    pub fn retried(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Changes that found a target diverged, in total (`on_divergence = "count"`).
    pub fn divergences(&self, target: usize, total: u64) {
        let mut targets = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = targets.get_mut(target) {
            t.divergences = t.divergences.max(total);
        }
    }

    /// `n` more target transactions committed (one per group of source
    /// transactions).
    pub fn commits(&self, target: usize, n: u64) {
        let mut targets = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = targets.get_mut(target) {
            t.commits += n;
        }
    }

    /// The slot's confirmed position and the newest source position seen.
    pub fn positions(&self, confirmed: u64, source: u64) {
        self.confirmed_lsn.store(confirmed, Ordering::Relaxed);
        self.source_lsn.fetch_max(source, Ordering::Relaxed);
    }

    /// A target's durable position and lag.
    pub fn target(&self, target: usize, applied_lsn: u64, lag_bytes: u64, lag_seconds: f64) {
        let mut targets = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = targets.get_mut(target) {
            t.applied_lsn = t.applied_lsn.max(applied_lsn);
            t.lag_bytes = lag_bytes;
            t.lag_seconds = lag_seconds;
        }
    }

    /// A source transaction became durable on every target it touched,
    /// `seconds` after it was dispatched to them.
    pub fn applied(&self, seconds: f64) {
        let mut h = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += seconds;
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counters = [
            (
                "shardline_cdc_changes_total",
                "Row changes decoded from the source (inserts, updates, deletes).",
                &self.changes,
            ),
            (
                "shardline_cdc_transactions_total",
                "Source transactions dispatched to the targets.",
                &self.transactions,
            ),
            (
                "shardline_cdc_errors_total",
                "Errors that stopped the stream or an applier.",
                &self.errors,
            ),
            (
                "shardline_cdc_reconnects_total",
                "Times the stream and the appliers were set up again after a lost connection.",
                &self.reconnects,
            ),
            (
                "shardline_cdc_retries_total",
                "Attempts to set the stream up again that failed (a server still down).",
                &self.retries,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        for (name, help, value) in [
            (
                "shardline_cdc_confirmed_lsn",
                "Position confirmed to the source slot, as a byte offset.",
                &self.confirmed_lsn,
            ),
            (
                "shardline_cdc_source_lsn",
                "Newest source WAL position seen on the stream, as a byte offset.",
                &self.source_lsn,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let targets = self
            .targets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        type Field = fn(&TargetGauges) -> String;
        let per_target: [(&str, &str, Field); 3] = [
            (
                "shardline_cdc_applied_lsn",
                "End position of the last source transaction durable on the target, as a byte offset.",
                |t| t.applied_lsn.to_string(),
            ),
            (
                "shardline_cdc_lag_bytes",
                "WAL between the newest source position seen and what the target has made durable (0 when nothing is outstanding).",
                |t| t.lag_bytes.to_string(),
            ),
            (
                "shardline_cdc_lag_seconds",
                "Seconds since the source committed the oldest transaction the target has not yet made durable.",
                |t| format!("{:.3}", t.lag_seconds),
            ),
        ];
        let name = "shardline_cdc_divergences_total";
        let _ = writeln!(out, "# HELP {name} Changes that found the target diverged (an update or delete matching no row, a read-model group below zero), recorded under on_divergence = \"count\".\n# TYPE {name} counter");
        for t in &targets {
            let _ = writeln!(
                out,
                "{name}{{target=\"{}\"}} {}",
                label(&t.name),
                t.divergences
            );
        }
        let name = "shardline_cdc_target_commits_total";
        let _ = writeln!(out, "# HELP {name} Target transactions committed, each holding a group of source transactions and its progress mark.\n# TYPE {name} counter");
        for t in &targets {
            let _ = writeln!(out, "{name}{{target=\"{}\"}} {}", label(&t.name), t.commits);
        }
        for (name, help, field) in per_target {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for t in &targets {
                let _ = writeln!(out, "{name}{{target=\"{}\"}} {}", label(&t.name), field(t));
            }
        }
        let h = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        let name = "shardline_cdc_apply_latency_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Seconds from dispatching a source transaction to its being durable on every target it touched.\n# TYPE {name} histogram"
        );
        for (bound, count) in LATENCY_BUCKETS.iter().zip(h.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(out, "{name}_sum {}", h.sum);
        let _ = writeln!(out, "{name}_count {}", h.count);
        out
    }
}

/// Binds `addr` now (so a taken port fails the run before it streams),
/// then answers each connection with the metrics until `stop` turns true.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    shardline_metrics::serve(addr, Arc::new(move || metrics.render()), stop).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_per_target_and_a_histogram() {
        let m = Metrics::new(["postgres@h:1/tx".to_string(), "say \"hi\"".to_string()]);
        m.progress(10, 3);
        m.error();
        m.positions(100, 250);
        m.target(0, 200, 50, 0.25);
        m.applied(0.02);
        m.applied(3.0);
        m.divergences(1, 4);
        m.commits(0, 3);
        m.commits(0, 4);
        m.reconnected();
        m.retried();
        m.retried();
        let text = m.render();
        for line in [
            "# TYPE shardline_cdc_changes_total counter",
            "shardline_cdc_changes_total 10",
            "shardline_cdc_transactions_total 3",
            "shardline_cdc_errors_total 1",
            "shardline_cdc_reconnects_total 1",
            "shardline_cdc_retries_total 2",
            "shardline_cdc_divergences_total{target=\"postgres@h:1/tx\"} 0",
            "shardline_cdc_divergences_total{target=\"say \\\"hi\\\"\"} 4",
            "# TYPE shardline_cdc_target_commits_total counter",
            "shardline_cdc_target_commits_total{target=\"postgres@h:1/tx\"} 7",
            "shardline_cdc_confirmed_lsn 100",
            "shardline_cdc_source_lsn 250",
            "shardline_cdc_lag_bytes{target=\"postgres@h:1/tx\"} 50",
            "shardline_cdc_lag_seconds{target=\"postgres@h:1/tx\"} 0.250",
            "shardline_cdc_lag_bytes{target=\"say \\\"hi\\\"\"} 0",
            "# TYPE shardline_cdc_apply_latency_seconds histogram",
            "shardline_cdc_apply_latency_seconds_bucket{le=\"0.01\"} 0",
            "shardline_cdc_apply_latency_seconds_bucket{le=\"0.025\"} 1",
            "shardline_cdc_apply_latency_seconds_bucket{le=\"5\"} 2",
            "shardline_cdc_apply_latency_seconds_bucket{le=\"+Inf\"} 2",
            "shardline_cdc_apply_latency_seconds_count 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
    }
}
