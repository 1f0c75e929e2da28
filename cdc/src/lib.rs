//! Change data capture from the monolith.
//!
//! The monolith's changes arrive over logical replication in PostgreSQL's
//! `pgoutput` format; [`pgoutput::decode`] turns each message into a
//! [`pgoutput::LogicalMessage`] (pure code over bytes, no server needed).
//! Positions in the stream are [`Lsn`]s.
//!
//! [`run::run`] streams the slot: [`source`] checks the source and sets up
//! the publication and slot, [`route`] and [`change`] turn each row change
//! into statements for the targets it belongs on, one [`apply::Applier`]
//! per target commits them with the source position they reach, and
//! [`confirm::Confirmations`] decides what the slot may be told. [`status`]
//! reports where the slot and every target stand.
//!
//! [`rows`] is how an applier turns row changes into few statements
//! (multi-row inserts or `COPY`, updates folded into them); [`script`]
//! holds what it sends in one go.
//!
//! [`delta`] keeps count and sum read models current change by change, in
//! the same target transaction as the progress mark; [`readmodel`]
//! recomputes the others from the source, per touched group where it can.
//! [`metrics`] serves Prometheus metrics of a run.
//!
//! [`ddl`] carries the source's schema changes: a row of the DDL log met
//! in the stream becomes statements the appliers run at that position.
//!
//! [`jsonl`] writes the decoded stream as JSON lines instead of applying it.
//!
//! [`sequence`] keeps the targets' sequences ahead of the source's (the
//! stream carries no sequence changes).
//!
//! [`reverse`] streams each shard back to the monolith (a cutover's way
//! back), with replication origins that keep the two directions apart.

pub mod apply;
pub mod change;
pub mod confirm;
pub mod ddl;
pub mod delta;
pub mod divergence;
pub mod jsonl;
pub mod lsn;
pub mod metrics;
pub mod pgoutput;
pub mod privilege;
pub mod readmodel;
pub mod retry;
pub mod reverse;
pub mod route;
pub mod rows;
pub mod run;
pub mod script;
pub mod sequence;
pub mod source;
pub mod sql;
pub mod status;

pub use lsn::Lsn;
