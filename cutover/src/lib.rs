//! Staged cutover: merchants move from the monolith to the shards in
//! cohorts of buckets while payments keep flowing.
//!
//! - [`control`] owns the state in the monolith (`shardline.cutover_*`):
//!   who serves each bucket, each stage (cohort) and the live routers. The
//!   routers (`shardline_router`'s cohort module) read it and LISTEN for
//!   its changes; everything else here writes it.
//! - [`plan`] chooses a stage's buckets: `--cohort P` cumulatively over a
//!   fixed order of buckets, `--merchants LIST` by their buckets (pure
//!   code, no server).
//! - [`coordinator::start`] switches one cohort: hold, drain, wait for CDC
//!   to confirm the monolith's position, switch, all within `max_pause`,
//!   or abort and leave the cohort on the monolith.
//! - [`status`] reports a planned stage and where every stage stands.
//!
//! [`sequences`] gives every database that may hand out ids a disjoint,
//! interleaved share of each sequence at the first stage.
//!
//! [`coordinator::rollback`] is the way back: the same protocol, waiting
//! for every shard's reverse stream (`shardline_cdc::reverse`).
//!
//! Not built yet: moving the unsharded contexts, which stay on the
//! monolith while cutover is enabled.

pub mod control;
pub mod coordinator;
mod error;
pub mod plan;
pub mod sequences;
pub mod status;

pub use coordinator::{rollback, start, Direction, StageReport, StartRequest, DEFAULT_MAX_PAUSE};
pub use error::CutoverError;
pub use plan::Selector;
pub use status::{plan as plan_stage, status, PlanReport, Status};
