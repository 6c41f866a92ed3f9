//! Task tools: DelegateTask, TaskStatus, TaskLogs, CancelTask, RetryTask (the original's
//! names, fields and response keys, spec section 3.1) and WaitTask (new).

use std::path::Path;
use std::time::Duration;

use backbeat_actors::engine::{Cancel, NewTask, Retry, Submit, TaskUpdate};
use backbeat_actors::journal::{TaskQuery, TaskSummary};
use backbeat_actors::model::EntityRef;
use backbeat_actors::{Priority, TaskRecord, TaskStatus};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::context::{Answer, ToolContext, ToolOutcome, ToolReply};
use crate::paths::absolute;

#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema)]
pub enum PriorityField {
    P0,
    P1,
    P2,
}

impl From<PriorityField> for Priority {
    fn from(p: PriorityField) -> Priority {
        match p {
            PriorityField::P0 => Priority::P0,
            PriorityField::P1 => Priority::P1,
            PriorityField::P2 => Priority::P2,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StatusField {
    Blocked,
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl From<StatusField> for TaskStatus {
    fn from(s: StatusField) -> TaskStatus {
        match s {
            StatusField::Blocked => TaskStatus::Blocked,
            StatusField::Queued => TaskStatus::Queued,
            StatusField::Running => TaskStatus::Running,
            StatusField::Completed => TaskStatus::Completed,
            StatusField::Failed => TaskStatus::Failed,
            StatusField::Cancelled => TaskStatus::Cancelled,
        }
    }
}

/// Delegate a prompt to a background agent.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DelegateTaskArgs {
    /// What the agent should do (1 byte to 1 MiB).
    #[schemars(length(min = 1, max = 1048576))]
    pub prompt: String,
    /// P0 (critical), P1 (high) or P2 (normal, the default).
    pub priority: Option<PriorityField>,
    /// Directory the agent works in (default: the client's working directory).
    pub working_directory: Option<String>,
    /// Wall-clock limit in ms, 1000 to 86400000 (default: configuration `timeout`).
    #[schemars(range(min = 1000, max = 86400000))]
    pub timeout: Option<u64>,
    /// Stop the agent after this many ms without output, 1000 to 86400000.
    #[schemars(range(min = 1000, max = 86400000))]
    pub idle_timeout: Option<u64>,
    /// Bytes of output kept, 1024 to 1073741824 (default: configuration `maxOutputBuffer`).
    #[schemars(range(min = 1024, max = 1073741824))]
    pub max_output_buffer: Option<u64>,
    /// Agent to run: claude, codex, gemini, shell, or one defined in the configuration
    /// (default: `defaultAgent`).
    pub agent: Option<String>,
    /// Model the agent should use (default: the agent's configured model, else its own).
    pub model: Option<String>,
    /// Text added to the agent's system prompt.
    pub system_prompt: Option<String>,
    /// Tasks that must complete first (at most 100). A dependency that already
    /// completed counts as met; one that failed or was cancelled cancels this task.
    #[schemars(length(max = 100))]
    pub depends_on: Option<Vec<String>>,
    /// A task whose result (checkpoint) this task's prompt carries; added to dependsOn.
    #[schemars(regex(pattern = r"^task-"))]
    pub continue_from: Option<String>,
}

/// One task's status, or a list of tasks (newest first) when taskId is absent.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TaskStatusArgs {
    #[schemars(regex(pattern = r"^task-"))]
    pub task_id: Option<String>,
    /// Only tasks in this state (list form).
    pub status: Option<StatusField>,
    /// Most tasks listed (list form), 1 to 10000; default 100.
    #[schemars(range(min = 1, max = 10000))]
    pub limit: Option<u32>,
    /// List form: only what `beat list` shows of each task (id, status, agent,
    /// createdAt, reason, role, owner, promptPreview) instead of the full record.
    pub summary: Option<bool>,
}

/// A task's output: the last `tail` lines of stdout and stderr.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TaskLogsArgs {
    #[schemars(regex(pattern = r"^task-"))]
    pub task_id: String,
    /// Lines of each stream, from the end; default 100, 0 for all.
    pub tail: Option<u32>,
}

/// Cancel a queued or running task; answers once the agent's process group is gone.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CancelTaskArgs {
    #[schemars(regex(pattern = r"^task-"))]
    pub task_id: String,
    pub reason: Option<String>,
}

/// Run a finished task again as a new task.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetryTaskArgs {
    #[schemars(regex(pattern = r"^task-"))]
    pub task_id: String,
}

/// Continue a finished task: a new task whose prompt carries the previous attempt's
/// checkpoint, continuing the agent's own session where the CLI can.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResumeTaskArgs {
    #[schemars(regex(pattern = r"^task-"))]
    pub task_id: String,
    /// More instructions for the new attempt.
    #[schemars(length(max = 1048576))]
    pub additional_context: Option<String>,
}

/// Wait until a task is finished (or the wait times out), then return its status.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WaitTaskArgs {
    #[schemars(regex(pattern = r"^task-"))]
    pub task_id: String,
    /// Longest wait in ms, 0 to 3600000; default 60000.
    #[schemars(range(min = 0, max = 3600000))]
    pub timeout_ms: Option<u64>,
}

pub async fn delegate(server: &ToolContext, args: DelegateTaskArgs) -> ToolOutcome {
    let dir = match &args.working_directory {
        Some(d) => absolute(Path::new(d), &server.session_cwd),
        None => server.session_cwd.clone(),
    };
    let request = NewTask {
        prompt: args.prompt,
        priority: args.priority.map(Priority::from).unwrap_or_default(),
        agent: args.agent,
        working_directory: dir,
        timeout: args.timeout,
        idle_timeout: args.idle_timeout,
        max_output_buffer: args.max_output_buffer,
        model: args.model,
        system_prompt: args.system_prompt,
        depends_on: args.depends_on.unwrap_or_default(),
        continue_from: args.continue_from,
    };
    // The engine answers with the committed record: a task whose dependencies have
    // all completed is queued from its first commit (engine/dependencies.rs).
    let task = server
        .engine
        .engine
        .send(Submit(request))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok(json!({
        "success": true,
        "taskId": task.id,
        "message": "Task delegated successfully",
        "status": task.status,
        "agent": task.agent,
    }))
}

pub async fn read<T: Send + 'static>(
    server: &ToolContext,
    f: impl FnOnce(&backbeat_actors::journal::Store) -> rusqlite::Result<T> + Send + 'static,
) -> Result<T, String> {
    // Never older than the journal: after a restart, wait until recovery has journaled
    // the ends of runs that finished while no daemon ran.
    server.engine.recovered.wait().await;
    let store = server.engine.store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("reading the database failed: {e}"))
}

/// One task as committed. A live task is read from its actor, without a trip to the
/// database (WaitTask reads every task it waits for).
pub async fn find(server: &ToolContext, id: &str) -> Result<TaskRecord, String> {
    // Never older than the journal (see `read`).
    server.engine.recovered.wait().await;
    let read = server
        .engine
        .engine
        .send(backbeat_actors::engine::ReadTask {
            task_id: id.to_string(),
        });
    match read.await {
        Ok(Ok(Some(task))) => Ok(task),
        Ok(Ok(None)) => Err(backbeat_actors::EngineError::TaskNotFound(id.to_string()).to_string()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(format!(
            "the engine is gone ({e}); the daemon is stopping, try again"
        )),
    }
}

/// The full record with millisecond times, as the CLI's `--json` builds on.
pub fn record_json(t: &TaskRecord) -> Value {
    let mut v = serde_json::to_value(t).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut v {
        // Internal bookkeeping, not part of the public record.
        map.remove("shimPid");
        map.remove("shimStartTime");
    }
    v
}

pub fn preview(prompt: &str, chars: usize) -> String {
    if prompt.chars().count() > chars {
        format!("{}...", prompt.chars().take(chars).collect::<String>())
    } else {
        prompt.to_string()
    }
}

/// The original's TaskStatus keys, with the new fields beside them.
pub fn status_json(t: &TaskRecord) -> Value {
    let mut v = json!({
        "success": true,
        "taskId": t.id,
        "status": t.status,
        "prompt": preview(&t.prompt, 100),
        "startTime": t.started_at,
        "endTime": t.completed_at,
        "duration": match (t.started_at, t.completed_at) { (Some(s), Some(e)) => Some(e - s), _ => None },
        "exitCode": t.exit_code,
        "workingDirectory": t.working_directory,
        "agent": t.agent,
        "signal": t.signal,
        "reason": t.reason,
        "priority": t.priority,
        "createdAt": t.created_at,
        "notBefore": t.not_before,
        "model": t.model,
        "sessionId": t.session_id,
        "result": t.result,
        "usage": t.usage,
        "rateLimitRetries": t.rate_limit_retries,
    });
    v["task"] = record_json(t);
    v
}

/// `[{taskId, status}]` of the given tasks, in the given order.
fn states(ids: &[String], records: &[TaskRecord]) -> Value {
    Value::Array(
        ids.iter()
            .map(|id| {
                let status = records
                    .iter()
                    .find(|t| &t.id == id)
                    .map(|t| t.status.as_str())
                    .unwrap_or("unknown");
                json!({ "taskId": id, "status": status })
            })
            .collect(),
    )
}

pub async fn status(server: &ToolContext, args: TaskStatusArgs) -> ToolReply {
    if let Some(id) = args.task_id {
        let task = find(server, &id).await?;
        let deps = task.depends_on.clone();
        let (dep_records, dependents) = read(server, move |s| {
            Ok((s.tasks_by_id(&deps)?, s.dependents(&id)?))
        })
        .await?;
        let mut v = status_json(&task);
        v["dependsOn"] = states(&task.depends_on, &dep_records);
        v["dependents"] = Value::Array(
            dependents
                .iter()
                .map(|t| json!({ "taskId": t.id, "status": t.status }))
                .collect(),
        );
        return Ok(v.into());
    }
    let query = TaskQuery {
        status: args.status.map(TaskStatus::from),
        limit: Some(args.limit.unwrap_or(100) as usize),
    };
    if args.summary == Some(true) {
        // One character more than the preview shows tells whether it was cut.
        let tasks = read(server, move |s| s.task_summaries(&query, PREVIEW_CHARS + 1)).await?;
        let list = SummaryList {
            success: true,
            tasks: tasks.into_iter().map(SummaryLine::from).collect(),
        };
        return serde_json::to_string(&list)
            .map(Answer::Text)
            .map_err(|e| e.to_string());
    }
    let tasks = read(server, move |s| s.tasks(&query)).await?;
    let list: Vec<Value> = tasks
        .iter()
        .map(|t| {
            let mut v = record_json(t);
            v["promptPreview"] = Value::from(preview(&t.prompt, PREVIEW_CHARS));
            v
        })
        .collect();
    Ok(json!({ "success": true, "tasks": list }).into())
}

/// Characters of a prompt that a list shows (`promptPreview`).
pub const PREVIEW_CHARS: usize = 50;

/// What `beat list` shows of a task (a `summary: true` list): a tenth of the full
/// record, so that a list of 100 is quick to read from the journal, send and parse.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SummaryLine {
    pub id: String,
    pub status: TaskStatus,
    pub agent: String,
    pub created_at: i64,
    pub reason: Option<String>,
    pub role: Option<String>,
    pub owner: Option<EntityRef>,
    pub prompt_preview: String,
}

impl From<TaskSummary> for SummaryLine {
    fn from(s: TaskSummary) -> SummaryLine {
        SummaryLine {
            prompt_preview: preview(&s.prompt, PREVIEW_CHARS),
            id: s.id,
            status: s.status,
            agent: s.agent,
            created_at: s.created_at,
            reason: s.reason,
            role: s.role,
            owner: s.owner,
        }
    }
}

/// The answer to TaskStatus with `summary: true`.
#[derive(Debug, Serialize, Deserialize)]
pub struct SummaryList {
    pub success: bool,
    pub tasks: Vec<SummaryLine>,
}

/// The last `tail` lines of a file (all when `tail` is 0), and how many lines it has.
pub fn tail_lines(path: &Path, tail: usize) -> (String, usize) {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let total = lines.len();
    let start = if tail == 0 {
        0
    } else {
        total.saturating_sub(tail)
    };
    let mut out = lines[start..].join("\n");
    if !out.is_empty() && text.ends_with('\n') {
        out.push('\n');
    }
    (out, total)
}

pub async fn logs(server: &ToolContext, args: TaskLogsArgs) -> ToolOutcome {
    let task = find(server, &args.task_id).await?;
    let run = server.home.run(&task.id);
    let tail = args.tail.unwrap_or(100) as usize;
    let (out, err) = tokio::task::spawn_blocking(move || {
        (
            tail_lines(&run.stdout(), tail),
            tail_lines(&run.stderr(), tail),
        )
    })
    .await
    .map_err(|e| e.to_string())?;
    Ok(json!({
        "success": true,
        "taskId": task.id,
        "status": task.status,
        "output": out.0,
        "errors": err.0,
        "lineCount": { "output": out.1, "errors": err.1 },
        "outputTruncated": task.output_truncated,
    }))
}

pub async fn cancel(server: &ToolContext, args: CancelTaskArgs) -> ToolOutcome {
    let reason = args.reason.unwrap_or_default();
    let task = server
        .engine
        .engine
        .send(Cancel {
            task_id: args.task_id.clone(),
            reason,
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok(json!({
        "success": true,
        "message": format!("Task {} cancelled", task.id),
        "taskId": task.id,
        "status": task.status,
        "reason": task.reason,
    }))
}

pub async fn retry(server: &ToolContext, args: RetryTaskArgs) -> ToolOutcome {
    let task = server
        .engine
        .engine
        .send(Retry {
            task_id: args.task_id.clone(),
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok(json!({
        "success": true,
        "message": format!("Task {} retried as {}", args.task_id, task.id),
        "newTaskId": task.id,
        "retryCount": task.retry_count,
        "parentTaskId": task.parent_task_id,
    }))
}

pub async fn resume(server: &ToolContext, args: ResumeTaskArgs) -> ToolOutcome {
    let task = server
        .engine
        .engine
        .send(backbeat_actors::Resume {
            task_id: args.task_id.clone(),
            additional_context: args.additional_context,
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok(json!({
        "success": true,
        "message": format!("Task {} resumed as {}", args.task_id, task.id),
        "newTaskId": task.id,
        "retryCount": task.retry_count,
        "parentTaskId": task.parent_task_id,
        "resumesSession": task.resume_session,
    }))
}

pub async fn wait(server: &ToolContext, args: WaitTaskArgs) -> ToolOutcome {
    // Registered before reading, so that no commit falls between the two. Only this
    // task's commits come (not every commit, as from a subscription of its own).
    let mut watching = server.engine.tasks.watch(&args.task_id);
    let mut task = find(server, &args.task_id).await?;
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(args.timeout_ms.unwrap_or(60_000));
    while !task.status.is_terminal() {
        match tokio::time::timeout_at(deadline, watching.next()).await {
            Err(_) => break, // timed out: report the current state
            Ok(TaskUpdate::Committed(record)) => task = *record,
            Ok(TaskUpdate::Lagged) => task = find(server, &args.task_id).await?,
            Ok(TaskUpdate::Closed) => {
                return Err("the daemon is shutting down; wait again in a moment".into());
            }
        }
    }
    let mut v = status_json(&task);
    v["finished"] = Value::from(task.status.is_terminal());
    Ok(v)
}
