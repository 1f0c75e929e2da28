//! Real PostgreSQL servers for tests and for the local fleet.
//!
//! [`PgServer::start`] gives a test its own server in one call: `initdb`
//! (once per test process, then copied), `pg_ctl start` on a free loopback
//! port with `wal_level=logical`. Dropping the handle stops the server and
//! removes its directory, also while a test panics. In case the test process
//! dies before it can drop anything (SIGKILL, abort), each server has a small
//! watcher process that stops it once its owner is gone, so `cargo test`
//! never leaves a postgres behind.
//!
//! [`PgServerBuilder::persistent`] keeps a server's directory and process
//! past the handle; a [`Fleet`] is a set of such servers under one
//! directory, which `shardline dev up` builds.
//!
//! PostgreSQL refuses to run as root; when this process is root the server
//! runs as the `postgres` OS user.

mod fleet;
mod install;
mod server;
mod tls;

pub use fleet::{Fleet, Member, MemberSpec, MemberStatus};
pub use install::{find_bindir, Bindir};
pub use server::{PgServer, PgServerBuilder};
pub use tls::{TestCerts, CLIENT_CERT_USER};

/// Errors of starting and driving a server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestkitError {
    #[error("PostgreSQL server programs (initdb, pg_ctl) were not found in SHARDLINE_PG_BINDIR, `pg_config --bindir`, PATH or /usr/lib/postgresql/*/bin")]
    PostgresNotFound,
    #[error("this process runs as root and PostgreSQL refuses root, but there is no `postgres` OS user to run it as")]
    NoPostgresUser,
    #[error("{program} failed ({status}): {output}")]
    Command {
        program: String,
        status: String,
        output: String,
    },
    #[error("port {port} on 127.0.0.1 is already in use by another process")]
    PortInUse { port: u16 },
    #[error("the fleet in {dir} has the servers [{have}], not [{want}]")]
    FleetMismatch {
        dir: std::path::PathBuf,
        have: String,
        want: String,
    },
    #[error(
        "the postgres OS user cannot reach {dir}: a parent directory is closed to other users"
    )]
    Unreachable { dir: std::path::PathBuf },
    #[error("{context}: {cause}")]
    Io {
        context: String,
        cause: std::io::Error,
    },
}

impl TestkitError {
    pub fn hint(&self) -> &'static str {
        match self {
            Self::PostgresNotFound => "run scripts/setup (it installs the Debian package postgresql), or set SHARDLINE_PG_BINDIR",
            Self::NoPostgresUser => "create one (useradd --system postgres) or run as an ordinary user",
            Self::PortInUse { .. } => "stop what uses the port, or choose other ports (shardline dev up --base-port N)",
            Self::Unreachable { .. } => "choose a directory others can enter (e.g. under /var/tmp), or chmod o+x its parents",
            Self::FleetMismatch { .. } => "use the same --shards as before, another --dir, or `shardline dev down --purge` first",
            Self::Command { .. } | Self::Io { .. } => "see the server log in the data directory",
        }
    }

    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |cause| Self::Io { context, cause }
    }
}
