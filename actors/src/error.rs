//! The engine's errors. Each message says what to do about it.

use crate::agents::AgentError;
use crate::journal::JournalError;
use crate::model::{InvalidTransition, PipelineStatus, TaskStatus};

#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error("task {0} not found. List tasks with `beat list` (MCP: TaskStatus without taskId)")]
    TaskNotFound(String),
    #[error("task {id} cannot be cancelled: it is already {status}")]
    CannotCancel { id: String, status: TaskStatus },
    #[error(
        "task {id} cannot be retried while it is {status}: wait for it to finish, or cancel it first"
    )]
    CannotRetry { id: String, status: TaskStatus },
    #[error(
        "task {id} cannot be resumed while it is {status}: wait for it to finish, or cancel it first"
    )]
    CannotResume { id: String, status: TaskStatus },
    #[error(
        "pipeline {0} not found. Pipeline ids look like pipeline-…; CreatePipeline (beat pipeline) returns them"
    )]
    PipelineNotFound(String),
    #[error(
        "pipeline {id} cannot be cancelled: it is already {status}, so nothing of it is left to stop"
    )]
    CannotCancelPipeline { id: String, status: PipelineStatus },
    #[error(
        "loop {0} not found. Loop ids look like loop-…; CreateLoop (beat loop) returns them, ListLoops (beat loop list) shows them"
    )]
    LoopNotFound(String),
    #[error("loop {id} cannot be {action}: it is {status}")]
    LoopState {
        id: String,
        action: &'static str,
        status: crate::model::loops::LoopStatus,
    },
    #[error(
        "schedule {0} not found. Schedule ids look like schedule-…; ListSchedules (beat schedule list) shows them"
    )]
    ScheduleNotFound(String),
    #[error("{0}")]
    InvalidInput(String),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("reading the database failed: {0}. Check that {1} is readable")]
    Store(String, String),
    #[error("internal error: {0}. Please report it; the daemon log has details")]
    Internal(String),
}

impl From<InvalidTransition> for EngineError {
    fn from(e: InvalidTransition) -> Self {
        EngineError::Internal(e.to_string())
    }
}

impl From<actix::MailboxError> for EngineError {
    fn from(e: actix::MailboxError) -> Self {
        EngineError::Internal(format!("an engine actor did not answer ({e})"))
    }
}
