//! What `cdc run` does when a connection goes away.
//!
//! A target or the source restarting, a network cut, a walsender ended by
//! the server: the run does not stop. [`Episode`] tells such a fault
//! ([`is_transient`]) from a mistake that would fail the same way again
//! (a divergence, a missing privilege, a schema change), waits with a
//! growing pause and lets [`crate::run::run`] set everything up again as a
//! fresh run would: the slot streams from its confirmed position and each
//! target skips what it recorded, so nothing is lost or applied twice.
//! Attempts go on for `RunOptions::retry_for` from the fault (`--retry-secs`);
//! then the run fails with the last error, resumable by running it again.
//!
//! Each time streaming (re)starts, the source's `shardline.cdc_run` row for
//! the slot records the process, its reconnects and retries and the last
//! fault, which `cdc status` shows; the metrics count them too.

use std::time::{Duration, Instant};

use shardline_topology::ConnectError;
use tokio::sync::watch;
use tokio_postgres::Client;

use crate::apply::ApplyError;
use crate::metrics::Metrics;
use crate::run::{CdcError, RunOptions, RunReport};
use crate::source::SourceError;

/// The first pause before setting the stream up again; it doubles up to
/// [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Whether `e` is a connection that went away (or a server not accepting
/// connections yet), which a new attempt may get past.
pub fn is_transient(e: &CdcError) -> bool {
    match e {
        CdcError::Connect(ConnectError::Unreachable { .. }) => true,
        // The database system is starting up or shutting down.
        CdcError::Connect(ConnectError::Refused { code, .. }) => {
            code.starts_with("57P0") || code == "53300"
        }
        CdcError::Stream(_) => true,
        CdcError::Apply(ApplyError::Target { lost, .. }) => *lost,
        CdcError::Query { lost, .. } => *lost,
        CdcError::Source(SourceError::Query(e)) => {
            shardline_topology::pgerror::is_connection_lost(e)
        }
        _ => false,
    }
}

/// A run of failed attempts after a fault.
#[derive(Debug, Default)]
pub struct Episode {
    /// When the fault happened and what it was; `None` while streaming
    /// normally.
    pub fault: Option<(Instant, String)>,
    backoff: Duration,
    /// The last fault, kept for the record after recovery.
    last: Option<String>,
}

impl Episode {
    /// An attempt ended with `e`: the pause before the next one, or the
    /// error to end the run with.
    pub fn failed(
        &mut self,
        e: CdcError,
        streamed: bool,
        options: &RunOptions,
        stop: &watch::Receiver<bool>,
        report: &mut RunReport,
        metrics: &Metrics,
    ) -> Result<Duration, CdcError> {
        metrics.error();
        if *stop.borrow() || options.retry_for.is_zero() || !is_transient(&e) {
            return Err(e);
        }
        if streamed || self.fault.is_none() {
            // A new fault, after streaming (again).
            self.fault = Some((Instant::now(), e.to_string()));
            self.backoff = FIRST_BACKOFF;
        } else {
            report.retries += 1;
            metrics.retried();
            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        }
        let (since, _) = self.fault.as_ref().expect("set above");
        if since.elapsed() >= options.retry_for {
            tracing::error!(error = %e, seconds = options.retry_for.as_secs(), "still failing after --retry-secs; stopping");
            return Err(e);
        }
        self.last = Some(e.to_string());
        tracing::warn!(error = %e, retry_in_ms = self.backoff.as_millis() as u64, "lost a connection; setting the stream up again");
        Ok(self.backoff)
    }

    /// Streaming started again after a fault.
    pub fn recovered(&mut self, report: &mut RunReport, metrics: &Metrics) {
        if let Some((since, cause)) = self.fault.take() {
            report.reconnects += 1;
            metrics.reconnected();
            tracing::warn!(after_ms = since.elapsed().as_millis() as u64, fault = %cause, "streaming again");
        }
    }
}

/// The source's record of the runs of each slot, for `cdc status`.
pub const DDL: &str = "CREATE SCHEMA IF NOT EXISTS shardline;
CREATE TABLE IF NOT EXISTS shardline.cdc_run (
    slot_name     text PRIMARY KEY,
    pid           int NOT NULL,
    host          text NOT NULL,
    started_at    timestamptz NOT NULL,
    reconnects    bigint NOT NULL,
    retries       bigint NOT NULL,
    last_fault    text,
    updated_at    timestamptz NOT NULL DEFAULT now()
);";

/// Records that this process streams `slot` (again), with its counts so
/// far. Best effort: a source where the role may not create the table
/// still streams, and says once why `cdc status` will not show the run.
pub async fn record(source: &Client, slot: &str, report: &RunReport, episode: &Episode) {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let upsert = "INSERT INTO shardline.cdc_run (slot_name, pid, host, started_at, reconnects, retries, last_fault)
                  VALUES ($1, $2, $3, now(), $4, $5, $6)
                  ON CONFLICT (slot_name) DO UPDATE SET
                      started_at = CASE WHEN shardline.cdc_run.pid = excluded.pid AND shardline.cdc_run.host = excluded.host
                                        THEN shardline.cdc_run.started_at ELSE excluded.started_at END,
                      pid = excluded.pid, host = excluded.host, reconnects = excluded.reconnects,
                      retries = excluded.retries, last_fault = excluded.last_fault, updated_at = now()";
    let reconnects = report.reconnects as i64;
    let pid = std::process::id() as i32;
    let result = async {
        source.batch_execute(DDL).await?;
        source
            .execute(
                upsert,
                &[
                    &slot,
                    &pid,
                    &host,
                    &reconnects,
                    &(report.retries as i64),
                    &episode.last,
                ],
            )
            .await
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %shardline_topology::describe_pg_error(&e), "cannot record this run in shardline.cdc_run on the source; `cdc status` will not show its reconnects");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_connections_are_retried_and_mistakes_are_not() {
        let lost = CdcError::Apply(ApplyError::Target {
            target: "t".into(),
            cause: "connection closed".into(),
            lost: true,
        });
        let broken = CdcError::Apply(ApplyError::Target {
            target: "t".into(),
            cause: "syntax error".into(),
            lost: false,
        });
        let diverged = CdcError::Apply(ApplyError::Diverged {
            target: "t".into(),
            what: "x".into(),
        });
        assert!(is_transient(&lost));
        assert!(!is_transient(&broken));
        assert!(!is_transient(&diverged));
        assert!(is_transient(&CdcError::Stream("io error".into())));
        assert!(is_transient(&CdcError::Connect(ConnectError::Refused {
            target: "t".into(),
            code: "57P03".into(),
            cause: "the database system is starting up (SQLSTATE 57P03)".into()
        })));
        assert!(!is_transient(&CdcError::Connect(ConnectError::Refused {
            target: "t".into(),
            code: "42501".into(),
            cause: "permission denied for database postgres (SQLSTATE 42501)".into()
        })));

        let options = RunOptions {
            retry_for: Duration::from_secs(60),
            ..RunOptions::default()
        };
        let (_tx, stop) = watch::channel(false);
        let metrics = Metrics::new(Vec::new());
        let mut report = RunReport::default();
        let mut e = Episode::default();
        let lost = || CdcError::Stream("gone".into());
        assert_eq!(
            e.failed(lost(), true, &options, &stop, &mut report, &metrics)
                .unwrap(),
            FIRST_BACKOFF
        );
        assert_eq!(
            e.failed(lost(), false, &options, &stop, &mut report, &metrics)
                .unwrap(),
            FIRST_BACKOFF * 2
        );
        assert_eq!(report.retries, 1);
        e.recovered(&mut report, &metrics);
        assert_eq!(report.reconnects, 1);
        assert!(e
            .failed(broken, true, &options, &stop, &mut report, &metrics)
            .is_err());
        let once = RunOptions::default();
        assert!(e
            .failed(lost(), true, &once, &stop, &mut report, &metrics)
            .is_err());
    }
}
