//! The requests that the engine's own actors (a loop's) send it, apart from the Engine
//! itself, so that an actor that makes tasks depends on these and not on the Engine.
//!
//! Owns: the shapes of a new task's request, of a cancel, and of the adoption of tasks
//! an entity journaled itself.
//! Must never: import the Engine or any actor.

use std::path::PathBuf;

use actix::prelude::*;

use crate::error::EngineError;
use crate::model::{Priority, TaskRecord};

/// A request for new work, as the front ends send it.
#[derive(Debug, Clone, Default)]
pub struct NewTask {
    pub prompt: String,
    pub priority: Priority,
    pub agent: Option<String>,
    pub working_directory: PathBuf,
    pub timeout: Option<u64>,
    pub idle_timeout: Option<u64>,
    pub max_output_buffer: Option<u64>,
    pub model: Option<String>,
    pub system_prompt: Option<String>,
    /// Tasks that must complete first.
    pub depends_on: Vec<String>,
    /// A task whose checkpoint this one's prompt carries (added to `depends_on`).
    pub continue_from: Option<String>,
}

/// Cancel one task, with the reason its record will carry.
#[derive(Message)]
#[rtype(result = "Result<TaskRecord, EngineError>")]
pub struct Cancel {
    pub task_id: String,
    pub reason: String,
}

/// One task as committed: from its actor while it has one (no trip to the database),
/// else from the journal. `None` when no such task exists.
#[derive(Message)]
#[rtype(result = "Result<Option<TaskRecord>, EngineError>")]
pub struct ReadTask {
    pub task_id: String,
}

/// Start the actors of tasks an entity (a loop) created and journaled itself.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AdoptOwnedTasks(pub Vec<TaskRecord>);
