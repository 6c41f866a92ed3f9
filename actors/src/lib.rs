//! Backbeat's engine.
//!
//! Pure state machines at the core (`model`), the journal that makes every transition
//! durable before it is acknowledged (`journal`), and thin actix actors around them:
//! `Engine` (registry by kind, routing, recovery), `TaskActor` (one live task),
//! `PipelineActor` (one live pipeline), `ResourceGovernor` (admission), `AgentProcess`
//! (one agent run, through its shim), `Journal` (group commit). Entity actors share one
//! supervised-entity pattern (`entity`). See `docs/ARCHITECTURE.md` for the map and
//! the invariants. No actor stats a file, scans `PATH` or writes a file on the actix
//! thread (`blocking` checks it in debug builds).

pub mod agents;
pub mod blocking;
pub mod clock_timer;
pub mod engine;
pub mod entity;
pub mod error;
pub mod governor;
pub mod journal;
pub mod loops;
pub mod measure;
pub mod model;
pub mod pipeline;
pub mod schedule;
pub mod schedule_timer;
pub mod service_unit;
pub mod settings;
pub mod task;

pub use engine::{
    Cancel, CancelPipeline, CreatePipeline, Engine, EngineConfig, EngineHandle, NewTask, Recover,
    Resume, Retry, Submit,
};
pub use error::EngineError;
pub use model::{Priority, TaskRecord, TaskStatus};
