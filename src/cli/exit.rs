//! Exit codes, documented in the README and `shardline --help`.

/// Everything went as asked.
pub const OK: u8 = 0;
/// The command ran and found differences (verify).
pub const DIFFERENCES: u8 = 1;
/// The command could not run: bad input, unreachable server, a failed job.
pub const ERROR: u8 = 2;
/// Stopped by SIGINT or SIGTERM; a job stopped so can be resumed.
pub const INTERRUPTED: u8 = 130;

/// Marks an error as an interruption rather than a failure.
#[derive(Debug, thiserror::Error)]
#[error("interrupted; run the same command again to resume")]
pub struct Interrupted;

pub fn code_of(error: &anyhow::Error) -> u8 {
    if error.downcast_ref::<Interrupted>().is_some() {
        INTERRUPTED
    } else {
        ERROR
    }
}
