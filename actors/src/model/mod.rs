//! Entities and their pure state machines.
//!
//! Owns: the data types of every entity the engine journals, and the transition
//! functions `apply(state, event) -> Result<state, InvalidTransition>`.
//! Must never: touch the database, the clock, processes or actors. Everything here is
//! deterministic so that the journal can be replayed and property-tested.

pub mod admission;
pub mod clock;
pub mod dag;
mod entities;
pub mod entity;
pub mod footprints;
pub mod kind;
pub mod loops;
pub mod pipeline;
pub mod rate_limit;
pub mod reasons;
pub mod run;
pub mod schedule;
pub mod task;

pub use entity::{Entity, EntityKind, EntityRef, Event, InvalidTransition, Record, Transition};
pub use pipeline::{PipelineEvent, PipelineRecord, PipelineStatus};
pub use task::{ExitOutcome, Priority, TaskEvent, TaskRecord, TaskStatus, apply, outcome_of_exit};

/// Milliseconds since the Unix epoch: the one time unit the journal stores.
pub type Millis = i64;

/// The current time in milliseconds since the Unix epoch.
pub fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
