//! Validation of new work, and the first record of a task.
//!
//! Owns: the limits of a request (prompt size, timeouts, buffers, dependencies) and the
//! errors that say what to do about them.
//! Must never: touch the journal or actors.

use std::path::{Path, PathBuf};

use super::requests::NewTask;
use crate::agents::resolve_agent;
use crate::error::EngineError;
use crate::model::{TaskRecord, TaskStatus, now_ms};
use crate::settings::Settings;

/// Most dependencies one task may have.
pub const MAX_DEPENDENCIES: usize = 100;
/// Largest prompt accepted: 1 MiB (the original stopped at 4000 characters).
pub const MAX_PROMPT_BYTES: usize = 1 << 20;
pub const MIN_TIMEOUT_MS: u64 = 1_000;
pub const MAX_TIMEOUT_MS: u64 = 86_400_000;
pub const MIN_OUTPUT_BUFFER: u64 = 1_024;
pub const MAX_OUTPUT_BUFFER: u64 = 1 << 30;

/// Where a new task comes from: nothing (a submit), or an earlier task (retry, resume).
#[derive(Default)]
pub(super) struct Lineage {
    pub parent_task_id: Option<String>,
    pub retry_count: Option<u32>,
    pub retry_of: Option<String>,
    pub resume_session: Option<String>,
}

impl Lineage {
    pub fn after(t: &TaskRecord) -> Lineage {
        Lineage {
            parent_task_id: Some(t.parent_task_id.clone().unwrap_or(t.id.clone())),
            retry_count: Some(t.retry_count.unwrap_or(0) + 1),
            retry_of: Some(t.id.clone()),
            resume_session: None,
        }
    }
}

/// The request that runs `t` again, with `prompt`.
pub(super) fn again(t: &TaskRecord, prompt: String) -> NewTask {
    NewTask {
        prompt,
        priority: t.priority,
        agent: Some(t.agent.clone()),
        working_directory: PathBuf::from(&t.working_directory),
        timeout: Some(t.timeout),
        idle_timeout: t.idle_timeout,
        max_output_buffer: Some(t.max_output_buffer),
        model: t.model.clone(),
        system_prompt: t.system_prompt.clone(),
        depends_on: Vec::new(),
        continue_from: None,
    }
}

/// Validates a request and builds the task's first record.
pub(super) fn build(
    req: NewTask,
    lineage: Lineage,
    settings: &Settings,
) -> Result<TaskRecord, EngineError> {
    validate(&req)?;
    let adapter = resolve_agent(req.agent.as_deref(), settings)?;
    Ok(TaskRecord {
        id: format!("task-{}", uuid::Uuid::now_v7()),
        prompt: req.prompt,
        status: TaskStatus::Queued,
        priority: req.priority,
        agent: adapter.name().to_string(),
        working_directory: req.working_directory.display().to_string(),
        timeout: req.timeout.unwrap_or(settings.timeout),
        idle_timeout: req.idle_timeout.or(settings.idle_timeout),
        max_output_buffer: req.max_output_buffer.unwrap_or(settings.max_output_buffer),
        parent_task_id: lineage.parent_task_id,
        retry_count: lineage.retry_count,
        retry_of: lineage.retry_of,
        created_at: now_ms(),
        model: req.model.filter(|m| !m.trim().is_empty()),
        system_prompt: req.system_prompt.filter(|s| !s.trim().is_empty()),
        resume_session: lineage.resume_session,
        depends_on: req.depends_on,
        continue_from: req.continue_from,
        ..Default::default()
    })
}

pub(super) fn validate_dependencies(deps: &[String]) -> Result<(), EngineError> {
    if deps.len() > MAX_DEPENDENCIES {
        return Err(EngineError::InvalidInput(format!(
            "{} dependencies given; a task may have at most {MAX_DEPENDENCIES}",
            deps.len()
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for d in deps {
        if !d.starts_with("task-") {
            return Err(EngineError::InvalidInput(format!(
                "'{d}' is not a task id (task-…)"
            )));
        }
        if !seen.insert(d) {
            return Err(EngineError::InvalidInput(format!(
                "dependency {d} is given twice"
            )));
        }
    }
    Ok(())
}

fn validate(req: &NewTask) -> Result<(), EngineError> {
    let bad = |m: String| Err(EngineError::InvalidInput(m));
    if req.prompt.trim().is_empty() {
        return bad("the prompt is empty: say what the agent should do".into());
    }
    if req.prompt.len() > MAX_PROMPT_BYTES {
        return bad(format!(
            "the prompt is {} bytes; the limit is {MAX_PROMPT_BYTES} (1 MiB). Put long material in a file and point the agent at it",
            req.prompt.len()
        ));
    }
    check_working_directory(&req.working_directory)?;
    if let Some(t) = req.timeout
        && !(MIN_TIMEOUT_MS..=MAX_TIMEOUT_MS).contains(&t)
    {
        return bad(format!(
            "timeout {t} ms is out of range: give {MIN_TIMEOUT_MS} to {MAX_TIMEOUT_MS} ms (1 s to 24 h)"
        ));
    }
    if let Some(t) = req.idle_timeout
        && !(MIN_TIMEOUT_MS..=MAX_TIMEOUT_MS).contains(&t)
    {
        return bad(format!(
            "idle timeout {t} ms is out of range: give {MIN_TIMEOUT_MS} to {MAX_TIMEOUT_MS} ms"
        ));
    }
    if let Some(b) = req.max_output_buffer
        && !(MIN_OUTPUT_BUFFER..=MAX_OUTPUT_BUFFER).contains(&b)
    {
        return bad(format!(
            "maxOutputBuffer {b} is out of range: give {MIN_OUTPUT_BUFFER} to {MAX_OUTPUT_BUFFER} bytes"
        ));
    }
    Ok(())
}

/// The working directory must exist and be a directory (any directory: the original's
/// "inside the server's cwd" rule, spec W20, is dropped).
pub fn check_working_directory(dir: &Path) -> Result<(), EngineError> {
    if !dir.is_absolute() {
        return Err(EngineError::InvalidInput(format!(
            "working directory '{}' is not an absolute path",
            dir.display()
        )));
    }
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(EngineError::InvalidInput(format!(
            "working directory '{}' is not a directory",
            dir.display()
        ))),
        Err(e) => Err(EngineError::InvalidInput(format!(
            "working directory '{}' cannot be used: {e}. Create it first, or pass an existing one",
            dir.display()
        ))),
    }
}

/// A validated task owned by `owner` (a loop's iteration or eval task).
pub fn owned_task(
    req: NewTask,
    owner: crate::model::EntityRef,
    settings: &Settings,
) -> Result<TaskRecord, EngineError> {
    let mut t = build(req, Lineage::default(), settings)?;
    t.owner = Some(owner);
    Ok(t)
}
