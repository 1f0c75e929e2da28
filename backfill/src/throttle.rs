//! `--max-rows-per-sec`: one budget shared by every worker of a process.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

pub struct Throttle {
    rate: Option<f64>,
    /// When the rows taken so far are paid for.
    paid_until: Mutex<Instant>,
}

impl Throttle {
    pub fn new(rows_per_sec: Option<u64>) -> Self {
        Self {
            rate: rows_per_sec.filter(|r| *r > 0).map(|r| r as f64),
            paid_until: Mutex::new(Instant::now()),
        }
    }

    /// Waits as long as `rows` more rows cost at the configured rate.
    pub async fn take(&self, rows: u64) {
        let Some(rate) = self.rate else { return };
        let wait = {
            let mut paid = self.paid_until.lock().expect("throttle lock");
            let now = Instant::now();
            // Idle time is not saved up beyond one second of rows.
            let start = (*paid).max(now - Duration::from_secs(1));
            *paid = start + Duration::from_secs_f64(rows as f64 / rate);
            paid.saturating_duration_since(now)
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rows_are_paced_to_the_rate() {
        let t = Throttle::new(Some(1000));
        let start = tokio::time::Instant::now();
        for _ in 0..10 {
            t.take(500).await;
        }
        let elapsed = start.elapsed().as_secs_f64();
        assert!(
            (3.5..=5.5).contains(&elapsed),
            "5000 rows at 1000/s took {elapsed} s"
        );
        let free = Throttle::new(None);
        free.take(1_000_000).await;
    }
}
