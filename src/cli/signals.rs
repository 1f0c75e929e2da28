//! SIGINT and SIGTERM ask long-running commands to stop cleanly.

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// A flag that turns true on the first SIGINT or SIGTERM.
pub fn stop_on_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        tracing::warn!("stopping: finishing or rolling back work in flight");
        let _ = tx.send(true);
    });
    rx
}
