//! What the router counts per backend database: statements, errors, a
//! latency histogram with fixed buckets, and whether the database answered
//! the last time the router tried. `SHOW shardline.stats`,
//! `SHOW shardline.shards` ([`crate::admin`]) and the Prometheus text
//! ([`Stats::render`]) read the same counters.
//!
//! Counters are atomics updated by the backend connection itself (one
//! round trip, from the first message sent to ReadyForQuery, is one
//! query), so the session code that relays messages does not change.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shardline_metrics::label;

/// Upper bounds of the latency histogram, in microseconds: a statement
/// relayed to a local shard takes about a hundred, a slow report seconds.
pub const LATENCY_BUCKETS_US: [u64; 18] = [
    50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000,
    1_000_000, 2_000_000, 5_000_000, 10_000_000, 60_000_000,
];

/// Whether a database answered the router's last attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// No connection was tried yet.
    Unknown,
    Up,
    Down,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Up => "up",
            Self::Down => "down",
        }
    }
}

/// The counters of one backend database.
#[derive(Debug)]
pub struct DbStats {
    /// Context name.
    pub context: String,
    /// Shard index in a sharded context; `None` for an unsharded one.
    pub shard: Option<usize>,
    /// `user@host:port/dbname`, never the password.
    pub target: String,
    queries: AtomicU64,
    errors: AtomicU64,
    /// Per bucket of [`LATENCY_BUCKETS_US`], then one past the last bound.
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
    health: AtomicU8,
    last_error: Mutex<Option<String>>,
}

impl DbStats {
    pub fn new(context: &str, shard: Option<usize>, target: String) -> Self {
        Self {
            context: context.to_string(),
            shard,
            target,
            queries: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
            health: AtomicU8::new(0),
            last_error: Mutex::new(None),
        }
    }

    /// A round trip finished (its ReadyForQuery arrived).
    pub fn query(&self, elapsed: Duration) {
        let us = elapsed.as_micros().min(u64::MAX as u128) as u64;
        let i = LATENCY_BUCKETS_US.partition_point(|b| *b < us);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.queries.fetch_add(1, Ordering::Relaxed);
        self.health.store(1, Ordering::Relaxed);
    }

    /// The database answered with an error (the statement failed there).
    pub fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection was opened.
    pub fn up(&self) {
        self.health.store(1, Ordering::Relaxed);
    }

    /// A connection could not be opened or broke; `cause` never holds a
    /// password (it names the target by its display form).
    pub fn down(&self, cause: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.health.store(2, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(cause.to_string());
    }

    pub fn health(&self) -> Health {
        match self.health.load(Ordering::Relaxed) {
            1 => Health::Up,
            2 => Health::Down,
            _ => Health::Unknown,
        }
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    fn counts(&self) -> [u64; LATENCY_BUCKETS_US.len() + 1] {
        std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed))
    }

    /// The latency below which a fraction `q` of queries finished, in
    /// milliseconds, interpolated inside its histogram bucket; `None`
    /// before the first query.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        quantile_us(&self.counts(), q).map(|us| us / 1000.0)
    }

    pub fn mean_ms(&self) -> Option<f64> {
        let n = self.queries();
        (n > 0).then(|| self.sum_us.load(Ordering::Relaxed) as f64 / n as f64 / 1000.0)
    }
}

fn quantile_us(counts: &[u64], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil().max(1.0);
    let mut seen = 0u64;
    for (i, c) in counts.iter().enumerate() {
        if *c > 0 && (seen + c) as f64 >= rank {
            let low = if i == 0 { 0 } else { LATENCY_BUCKETS_US[i - 1] } as f64;
            // The last bucket has no upper bound: report its lower one.
            let Some(&high) = LATENCY_BUCKETS_US.get(i) else {
                return Some(low);
            };
            let within = (rank - seen as f64) / *c as f64;
            return Some(low + (high as f64 - low) * within);
        }
        seen += c;
    }
    None
}

/// One pool's occupancy, as deadpool reports it.
#[derive(Clone, Copy, Debug, Default)]
pub struct PoolState {
    pub max_size: usize,
    /// Connections open (in use or idle).
    pub size: usize,
    pub idle: usize,
    /// Clients waiting for a connection.
    pub waiting: usize,
}

/// Every database's counters: `[context][shard]` as the pools are laid out.
#[derive(Debug, Default)]
pub struct Stats {
    pub dbs: Vec<Vec<Arc<DbStats>>>,
}

impl Stats {
    /// The Prometheus text exposition: per database counters, the latency
    /// histogram, pool gauges and health (`pools` in the same layout).
    pub fn render(&self, pools: &[Vec<PoolState>]) -> String {
        let mut out = String::new();
        let all: Vec<(&DbStats, PoolState)> = self
            .dbs
            .iter()
            .zip(pools)
            .flat_map(|(d, p)| d.iter().map(|s| &**s).zip(p.iter().copied()))
            .collect();
        let labels = |s: &DbStats| {
            let shard = s.shard.map(|n| n.to_string()).unwrap_or_default();
            format!(
                "context=\"{}\",shard=\"{shard}\",database=\"{}\"",
                label(&s.context),
                label(&s.target)
            )
        };
        type Field = fn(&DbStats, PoolState) -> String;
        let series: [(&str, &str, &str, Field); 7] = [
            (
                "shardline_router_queries_total",
                "counter",
                "Round trips relayed to the database (statements or extended-protocol batches).",
                |s, _| s.queries().to_string(),
            ),
            (
                "shardline_router_errors_total",
                "counter",
                "Errors from the database, and connections to it that failed or broke.",
                |s, _| s.errors().to_string(),
            ),
            (
                "shardline_router_up",
                "gauge",
                "1 when the database answered the router's last attempt, 0 when it did not (or was never tried).",
                |s, _| u8::from(s.health() == Health::Up).to_string(),
            ),
            (
                "shardline_router_pool_max",
                "gauge",
                "Largest number of connections the pool opens.",
                |_, p| p.max_size.to_string(),
            ),
            (
                "shardline_router_pool_connections",
                "gauge",
                "Connections open in the pool, in use or idle.",
                |_, p| p.size.to_string(),
            ),
            (
                "shardline_router_pool_idle",
                "gauge",
                "Idle connections in the pool.",
                |_, p| p.idle.to_string(),
            ),
            (
                "shardline_router_pool_waiting",
                "gauge",
                "Clients waiting for a connection of the pool.",
                |_, p| p.waiting.to_string(),
            ),
        ];
        for (name, kind, help, field) in series {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (s, p) in &all {
                let _ = writeln!(out, "{name}{{{}}} {}", labels(s), field(s, *p));
            }
        }
        let name = "shardline_router_query_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time from sending a statement to the database to its ReadyForQuery.\n# TYPE {name} histogram"
        );
        for (s, _) in &all {
            let l = labels(s);
            let mut cumulative = 0;
            let counts = s.counts();
            for (bound, c) in LATENCY_BUCKETS_US.iter().zip(counts) {
                cumulative += c;
                let le = *bound as f64 / 1e6;
                let _ = writeln!(out, "{name}_bucket{{{l},le=\"{le}\"}} {cumulative}");
            }
            cumulative += counts[LATENCY_BUCKETS_US.len()];
            let _ = writeln!(out, "{name}_bucket{{{l},le=\"+Inf\"}} {cumulative}");
            let sum = s.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(out, "{name}_sum{{{l}}} {sum}");
            let _ = writeln!(out, "{name}_count{{{l}}} {cumulative}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_inside_their_bucket() {
        let s = DbStats::new("transactions", Some(1), "postgres@h:1/tx".into());
        assert_eq!(s.quantile_ms(0.5), None);
        for _ in 0..99 {
            s.query(Duration::from_micros(150)); // bucket 100..200
        }
        s.query(Duration::from_millis(30)); // bucket 20..50 ms
        let p50 = s.quantile_ms(0.5).unwrap();
        assert!((0.1..=0.2).contains(&p50), "{p50}");
        let p99 = s.quantile_ms(0.99).unwrap();
        assert!((0.1..=0.2).contains(&p99), "{p99}");
        let max = s.quantile_ms(1.0).unwrap();
        assert!((20.0..=50.0).contains(&max), "{max}");
        s.query(Duration::from_secs(100)); // past the last bound
        assert_eq!(s.quantile_ms(1.0), Some(60_000.0));
    }

    #[test]
    fn renders_per_database_series_and_a_cumulative_histogram() {
        let a = Arc::new(DbStats::new(
            "transactions",
            Some(0),
            "postgres@h:1/tx".into(),
        ));
        let b = Arc::new(DbStats::new("say \"hi\"", None, "postgres@h:2/s".into()));
        a.query(Duration::from_micros(80));
        a.query(Duration::from_micros(700));
        a.error();
        b.down("cannot reach postgres@h:2/s: refused");
        let stats = Stats {
            dbs: vec![vec![a], vec![b]],
        };
        let pool = PoolState {
            max_size: 8,
            size: 2,
            idle: 1,
            waiting: 0,
        };
        let text = stats.render(&[vec![pool], vec![PoolState::default()]]);
        let a = "context=\"transactions\",shard=\"0\",database=\"postgres@h:1/tx\"";
        let b = "context=\"say \\\"hi\\\"\",shard=\"\",database=\"postgres@h:2/s\"";
        for line in [
            format!("shardline_router_queries_total{{{a}}} 2"),
            format!("shardline_router_errors_total{{{a}}} 1"),
            format!("shardline_router_errors_total{{{b}}} 1"),
            format!("shardline_router_up{{{a}}} 1"),
            format!("shardline_router_up{{{b}}} 0"),
            format!("shardline_router_pool_connections{{{a}}} 2"),
            format!("shardline_router_pool_idle{{{a}}} 1"),
            format!("shardline_router_query_duration_seconds_bucket{{{a},le=\"0.0001\"}} 1"),
            format!("shardline_router_query_duration_seconds_bucket{{{a},le=\"0.0005\"}} 1"),
            format!("shardline_router_query_duration_seconds_bucket{{{a},le=\"0.001\"}} 2"),
            format!("shardline_router_query_duration_seconds_bucket{{{a},le=\"+Inf\"}} 2"),
            format!("shardline_router_query_duration_seconds_count{{{a}}} 2"),
            "# TYPE shardline_router_query_duration_seconds histogram".to_string(),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
    }
}
