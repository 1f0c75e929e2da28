//! Progress for people: an indicatif bar when stderr is a terminal, plain
//! periodic lines otherwise (logs, CI), nothing with --quiet.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressState, ProgressStyle};

/// How often plain-line progress is printed.
const LINE_INTERVAL: Duration = Duration::from_secs(5);

pub struct Progress {
    bar: Option<ProgressBar>,
    lines: Option<Mutex<Lines>>,
}

struct Lines {
    label: String,
    total: u64,
    done: u64,
    started: Instant,
    last: Instant,
}

/// Several bars drawn together (one per table, and a total) without
/// overwriting each other on a terminal.
pub struct Bars {
    multi: Option<MultiProgress>,
    quiet: bool,
}

impl Bars {
    pub fn new(quiet: bool) -> Self {
        let multi = (!quiet && std::io::stderr().is_terminal()).then(MultiProgress::new);
        Self { multi, quiet }
    }

    pub fn add(&self, label: &str, total: u64, unit: &str) -> Progress {
        let p = Progress::new(label, total, unit, self.quiet);
        match (&self.multi, p.bar) {
            (Some(multi), Some(bar)) => Progress {
                bar: Some(multi.add(bar)),
                lines: None,
            },
            (_, bar) => Progress {
                bar,
                lines: p.lines,
            },
        }
    }
}

impl Progress {
    /// A progress display over `total` units called `unit`.
    pub fn new(label: &str, total: u64, unit: &str, quiet: bool) -> Self {
        if quiet {
            return Self {
                bar: None,
                lines: None,
            };
        }
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total);
            let template = format!("{{prefix:>12}} [{{bar:30}}] {{human_pos}}/{{human_len}} {unit} ({{rate}}, ETA {{eta}})");
            bar.set_style(
                ProgressStyle::with_template(&template)
                    .expect("valid template")
                    // indicatif's own {per_sec} prints four decimals.
                    .with_key("rate", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = write!(w, "{:.0}/s", s.per_sec());
                    })
                    .progress_chars("=> "),
            );
            bar.set_prefix(label.to_string());
            return Self {
                bar: Some(bar),
                lines: None,
            };
        }
        let now = Instant::now();
        Self {
            bar: None,
            lines: Some(Mutex::new(Lines {
                label: label.to_string(),
                total,
                done: 0,
                started: now,
                last: now,
            })),
        }
    }

    pub fn set(&self, done: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            stretch(bar);
        }
        if let Some(lines) = &self.lines {
            let mut l = lines.lock().expect("progress lock");
            l.done = done;
            l.total = stretched(done, l.total);
            if l.last.elapsed() >= LINE_INTERVAL {
                l.last = Instant::now();
                let secs = l.started.elapsed().as_secs_f64().max(1e-9);
                eprintln!(
                    "{}: {done}/{} ({:.0}%, {:.0}/s)",
                    l.label,
                    l.total,
                    done as f64 * 100.0 / l.total.max(1) as f64,
                    done as f64 / secs
                );
            }
        }
    }

    /// Raises the total (a total known piece by piece).
    pub fn grow(&self, more: u64) {
        if let Some(bar) = &self.bar {
            bar.inc_length(more);
        }
        if let Some(lines) = &self.lines {
            lines.lock().expect("progress lock").total += more;
        }
    }

    pub fn inc(&self, done: u64) {
        match &self.bar {
            Some(bar) => {
                bar.inc(done);
                stretch(bar);
            }
            None => self.set(self.position() + done),
        }
    }

    fn position(&self) -> u64 {
        self.lines
            .as_ref()
            .map(|l| l.lock().expect("progress lock").done)
            .unwrap_or(0)
    }

    /// Runs `work` to its end while redrawing the display five times a
    /// second from `read`, which returns (done, estimated total) and may
    /// relabel the display. The total only grows.
    pub async fn follow<T>(
        &self,
        work: impl std::future::Future<Output = T>,
        read: impl Fn(&Progress) -> (u64, u64),
    ) -> T {
        tokio::pin!(work);
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let mut total = 0;
        let result = loop {
            tokio::select! {
                result = &mut work => break result,
                _ = tick.tick() => {
                    let (done, estimate) = read(self);
                    let want = estimate.max(done);
                    if want > total {
                        self.grow(want - total);
                        total = want;
                    }
                    self.set(done);
                }
            }
        };
        self.finish();
        result
    }

    /// A line for people that does not break the bar.
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// Names what the display is counting now (the table being compared).
    pub fn set_label(&self, label: &str) {
        if let Some(bar) = &self.bar {
            bar.set_prefix(label.to_string());
        }
        if let Some(lines) = &self.lines {
            lines.lock().expect("progress lock").label = label.to_string();
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.set_length(bar.position());
            bar.finish_and_clear();
        }
    }
}

/// A total that was a planner's estimate can be passed; the bar then shows
/// a total a little above the count so far rather than "1,202,897/1,141,691"
/// (105%), or a full bar while rows still arrive.
fn stretch(bar: &ProgressBar) {
    if let Some(len) = bar.length() {
        let want = stretched(bar.position(), len);
        if want != len {
            bar.set_length(want);
        }
    }
}

/// The total to show for `done` of an estimated `total`: the estimate
/// while the count stays within it, else the count plus 5% (the work is
/// not over yet; [`Progress::finish`] shows the exact count at the end).
fn stretched(done: u64, total: u64) -> u64 {
    if done < total {
        total
    } else {
        done + (done / 20).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_estimate_passed_never_shows_more_than_the_total() {
        assert_eq!(stretched(50, 100), 100);
        for done in [100, 105, 1_000_000] {
            let total = stretched(done, 100);
            assert!(total > done, "{done} of {total}");
            assert!(done * 100 / total < 100);
        }
        let p = Progress::new("t", 100, "rows", false);
        p.set(105);
        if let Some(l) = &p.lines {
            let l = l.lock().unwrap();
            assert!(l.done < l.total, "{} of {}", l.done, l.total);
        }
        if let Some(bar) = &p.bar {
            assert!(bar.position() < bar.length().unwrap());
        }
    }
}
