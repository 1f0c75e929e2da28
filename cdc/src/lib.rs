//! Change data capture from the monolith.
//!
//! The monolith's changes arrive over logical replication in PostgreSQL's
//! `pgoutput` format; [`pgoutput::decode`] turns each message into a
//! [`pgoutput::LogicalMessage`] (pure code over bytes, no server needed).
//! Positions in the stream are [`Lsn`]s.
//!
//! Still to come in this crate (see the CDC issue): the replication
//! transport, routing of changes to shards, exactly-once apply with the
//! source LSN recorded in each target transaction, and read-model upkeep.

pub mod apply;
pub mod change;
pub mod confirm;
pub mod lsn;
pub mod pgoutput;
pub mod route;
pub mod run;
pub mod source;
pub mod sql;

pub use lsn::Lsn;
