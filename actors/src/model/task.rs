//! The task entity and its state machine.
//!
//! A task moves `queued -> running -> completed | failed | cancelled`; `queued` may also
//! end in `cancelled` (the user) or `failed` (the agent could not be started). `blocked`
//! is reserved for tasks waiting on dependencies. Every terminal state carries a reason a
//! person can read. Transitions are pure: the journal stores each event beside the
//! record it produced, and folding the events must give the stored records back.

use serde::{Deserialize, Serialize};

use super::Millis;
use super::kind::{EntityKind, EntityRef, InvalidTransition};
use super::reasons;
pub use super::run::Usage;
use super::run::{ExitRecord, KillCause};

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    Blocked,
    #[default]
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 6] = [
        TaskStatus::Blocked,
        TaskStatus::Queued,
        TaskStatus::Running,
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Blocked => "blocked",
            TaskStatus::Queued => "queued",
            TaskStatus::Running => "running",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<TaskStatus> {
        TaskStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled
        )
    }
}

impl std::fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// P0 is the most urgent; P2 is the default. Ordered so that `P0 < P1 < P2`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub enum Priority {
    P0,
    P1,
    #[default]
    P2,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::P0 => "P0",
            Priority::P1 => "P1",
            Priority::P2 => "P2",
        }
    }

    pub fn parse(text: &str) -> Option<Priority> {
        match text {
            "P0" => Some(Priority::P0),
            "P1" => Some(Priority::P1),
            "P2" => Some(Priority::P2),
            _ => None,
        }
    }
}

/// Everything the engine knows about one task. The `tasks` table holds exactly this.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskRecord {
    pub id: String,
    pub prompt: String,
    pub status: TaskStatus,
    pub priority: Priority,
    pub agent: String,
    pub working_directory: String,
    /// Wall-clock limit of one run, in milliseconds.
    pub timeout: u64,
    /// Kill the agent after this long without output, in milliseconds.
    pub idle_timeout: Option<u64>,
    /// Bytes of agent output kept; more is discarded behind a visible marker.
    pub max_output_buffer: u64,
    pub parent_task_id: Option<String>,
    pub retry_count: Option<u32>,
    pub retry_of: Option<String>,
    pub created_at: Millis,
    pub started_at: Option<Millis>,
    pub completed_at: Option<Millis>,
    /// The task may not start before this time (rate-limit resets, pipeline delays).
    pub not_before: Option<Millis>,
    /// The agent's exit code; `None` when it died by a signal or never ran.
    pub exit_code: Option<i32>,
    /// The signal that ended the agent, as a name such as `SIGKILL`.
    pub signal: Option<String>,
    /// Why the task is where it is, for people.
    pub reason: Option<String>,
    /// The shim that parents the agent: its PID and its start time in clock ticks since
    /// boot (from `/proc`), so that a reused PID is never mistaken for it.
    pub shim_pid: Option<u32>,
    pub shim_start_time: Option<u64>,
    /// Set when a cancel was asked for while the agent ran: the user's reason.
    pub cancel_reason: Option<String>,
    pub output_bytes: Option<u64>,
    pub output_truncated: bool,
    /// Model the agent is asked to use (task setting, else the agent's configuration).
    #[serde(default)]
    pub model: Option<String>,
    /// Text appended to the agent's system prompt.
    #[serde(default)]
    pub system_prompt: Option<String>,
    /// The agent's own session id, as its output reported it.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Continue this agent session when starting (resume).
    #[serde(default)]
    pub resume_session: Option<String>,
    /// The agent's final answer.
    #[serde(default)]
    pub result: Option<String>,
    #[serde(default)]
    pub usage: Option<Usage>,
    /// How many times the task was queued again after a rate limit.
    #[serde(default)]
    pub rate_limit_retries: u32,
    #[serde(default)]
    pub checkpoint: Option<Checkpoint>,
    /// Tasks that must complete before this one runs.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// The task whose checkpoint this one's prompt carries (also in `depends_on`).
    #[serde(default)]
    pub continue_from: Option<String>,
    #[serde(default)]
    pub pipeline_id: Option<String>,
    /// Position in its pipeline, from 1.
    #[serde(default)]
    pub pipeline_step: Option<u32>,
    /// Wait this long after becoming ready before starting (a pipeline step's delay), ms.
    #[serde(default)]
    pub start_delay: Option<u64>,
    /// For a task cancelled by a failure cascade: the task at the cascade's root.
    #[serde(default)]
    pub cascade_root: Option<String>,
    /// The entity that made this task and is told when it ends (its pipeline, say).
    #[serde(default)]
    pub owner: Option<EntityRef>,
    /// What the task is to its owner (a loop's `iteration` or `eval`), shown in listings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// What a finished task leaves for whoever continues from it (spec 1.5, with the real
/// output the original lost, W3).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    /// `completed`, `failed` or `cancelled`.
    pub checkpoint_type: TaskStatus,
    /// The last lines (at most 50, at most 8 KiB) of the agent's readable output.
    pub output_summary: String,
    pub error_summary: Option<String>,
    pub git_branch: Option<String>,
    pub git_commit_sha: Option<String>,
    #[serde(default)]
    pub git_dirty_files: Vec<String>,
    pub created_at: Millis,
}

/// One transition of a task, as journaled. Each variant names what happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum TaskEvent {
    /// A new task, in its first state (queued or blocked).
    Submitted { task: Box<TaskRecord> },
    /// The shim was spawned for the task's agent.
    Started {
        at: Millis,
        shim_pid: u32,
        shim_start_time: u64,
    },
    /// The user asked to cancel a running task; the shim is stopping the agent.
    CancelRequested { reason: String },
    /// The agent's run ended and its result was read from its exit record.
    Finished { at: Millis, outcome: ExitOutcome },
    /// The shim vanished without leaving a result.
    Lost { at: Millis, reason: String },
    /// A queued or blocked task was cancelled before it ran.
    Cancelled { at: Millis, reason: String },
    /// The agent could not be started at all (missing CLI, bad working directory).
    StartFailed { at: Millis, reason: String },
    /// A running task whose agent was never launched goes back to the queue
    /// (a crash between being granted a slot and spawning the shim).
    Requeued { reason: String },
    /// The run ended on a rate limit: the task waits until `not_before`, then runs again.
    RateLimited {
        at: Millis,
        not_before: Millis,
        outcome: ExitOutcome,
    },
    /// A finished task's checkpoint, committed with its terminal transition.
    Checkpointed { checkpoint: Box<Checkpoint> },
    /// Every dependency completed: the task may run (after `not_before`, if set), with
    /// its prompt enriched by the checkpoint of the task it continues from.
    Unblocked {
        at: Millis,
        prompt: Option<String>,
        not_before: Option<Millis>,
    },
    /// What the running agent is doing, for the task's reason ("retrying after HTTP 500
    /// (attempt 3 of 10)").
    Progress { reason: String },
    /// Why a queued task waits for headroom (`None`: it no longer does); journaled only
    /// when it changes.
    Waiting { reason: Option<String> },
    /// A dependency failed or was cancelled: so is this task, naming the cascade's root.
    DependencyFailed {
        at: Millis,
        dependency: String,
        root: String,
        reason: String,
    },
}

impl TaskEvent {
    /// The transition's name in the `events` table.
    pub fn name(&self) -> &'static str {
        match self {
            TaskEvent::Submitted { .. } => "submitted",
            TaskEvent::Started { .. } => "started",
            TaskEvent::CancelRequested { .. } => "cancel_requested",
            TaskEvent::Finished { .. } => "finished",
            TaskEvent::Lost { .. } => "lost",
            TaskEvent::Cancelled { .. } => "cancelled",
            TaskEvent::StartFailed { .. } => "start_failed",
            TaskEvent::Requeued { .. } => "requeued",
            TaskEvent::RateLimited { .. } => "rate_limited",
            TaskEvent::Checkpointed { .. } => "checkpointed",
            TaskEvent::Unblocked { .. } => "unblocked",
            TaskEvent::DependencyFailed { .. } => "dependency_failed",
            TaskEvent::Progress { .. } => "progress",
            TaskEvent::Waiting { .. } => "waiting",
        }
    }
}

/// The terminal result of one run, derived from the shim's exit record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitOutcome {
    pub status: TaskStatus,
    pub exit_code: Option<i32>,
    pub signal: Option<String>,
    pub reason: String,
    pub output_bytes: u64,
    pub output_truncated: bool,
    #[serde(default)]
    pub session_id: Option<String>,
    #[serde(default)]
    pub result: Option<String>,
    #[serde(default)]
    pub usage: Option<Usage>,
    /// The run ended on a rate limit; the provider's reset time, when it gave one.
    #[serde(default)]
    pub rate_limited: bool,
    #[serde(default)]
    pub rate_limit_reset: Option<Millis>,
}

fn invalid(prev: Option<&TaskRecord>, event: &TaskEvent) -> InvalidTransition {
    InvalidTransition {
        kind: EntityKind::Task,
        id: prev.map(|t| t.id.clone()).unwrap_or_default(),
        event: event.name(),
        from: prev
            .map(|t| t.status.as_str().to_string())
            .unwrap_or_else(|| "(none)".to_string()),
    }
}

/// The state machine: the record that `event` makes of `prev`.
pub fn apply(
    prev: Option<&TaskRecord>,
    event: &TaskEvent,
) -> Result<TaskRecord, InvalidTransition> {
    use TaskStatus::*;
    let Some(prev) = prev else {
        return match event {
            TaskEvent::Submitted { task } if matches!(task.status, Queued | Blocked) => {
                Ok((**task).clone())
            }
            _ => Err(invalid(None, event)),
        };
    };
    let mut next = prev.clone();
    match (prev.status, event) {
        (
            Queued,
            TaskEvent::Started {
                at,
                shim_pid,
                shim_start_time,
            },
        ) => {
            next.status = Running;
            next.started_at = Some(*at);
            next.shim_pid = Some(*shim_pid);
            next.shim_start_time = Some(*shim_start_time);
            next.reason = None;
        }
        (Running, TaskEvent::Progress { reason }) => {
            next.reason = Some(reason.clone());
        }
        (Queued, TaskEvent::Waiting { reason }) => {
            next.reason = reason.clone();
        }
        (Running, TaskEvent::CancelRequested { reason }) => {
            next.cancel_reason = Some(reason.clone());
        }
        (Running, TaskEvent::Finished { at, outcome }) if outcome.status.is_terminal() => {
            next.status = outcome.status;
            next.completed_at = Some(*at);
            take_run_results(&mut next, outcome);
        }
        (
            Running,
            TaskEvent::RateLimited {
                at: _,
                not_before,
                outcome,
            },
        ) => {
            take_run_results(&mut next, outcome);
            next.status = Queued;
            next.not_before = Some(*not_before);
            next.rate_limit_retries += 1;
            next.started_at = None;
            next.shim_pid = None;
            next.shim_start_time = None;
            next.cancel_reason = None;
        }
        (
            Blocked,
            TaskEvent::Unblocked {
                at: _,
                prompt,
                not_before,
            },
        ) => {
            next.status = Queued;
            if let Some(p) = prompt {
                next.prompt = p.clone();
            }
            next.not_before = *not_before;
            next.reason = None;
        }
        (
            Blocked | Queued,
            TaskEvent::DependencyFailed {
                at,
                dependency: _,
                root,
                reason,
            },
        ) => {
            next.status = Cancelled;
            next.completed_at = Some(*at);
            next.cascade_root = Some(root.clone());
            next.reason = Some(reason.clone());
        }
        (Completed | Failed | Cancelled, TaskEvent::Checkpointed { checkpoint }) => {
            next.checkpoint = Some((**checkpoint).clone());
        }
        (Running, TaskEvent::Lost { at, reason }) => {
            next.status = Failed;
            next.completed_at = Some(*at);
            next.reason = Some(reason.clone());
        }
        (Running, TaskEvent::Requeued { reason }) => {
            next.status = Queued;
            next.started_at = None;
            next.shim_pid = None;
            next.shim_start_time = None;
            next.reason = Some(reason.clone());
        }
        (Queued | Blocked, TaskEvent::Cancelled { at, reason }) => {
            next.status = Cancelled;
            next.completed_at = Some(*at);
            next.reason = Some(reason.clone());
        }
        (Queued, TaskEvent::StartFailed { at, reason }) => {
            next.status = Failed;
            next.completed_at = Some(*at);
            next.reason = Some(reason.clone());
        }
        _ => return Err(invalid(Some(prev), event)),
    }
    Ok(next)
}

fn take_run_results(next: &mut TaskRecord, outcome: &ExitOutcome) {
    next.exit_code = outcome.exit_code;
    next.signal = outcome.signal.clone();
    next.reason = Some(outcome.reason.clone());
    next.output_bytes = Some(outcome.output_bytes);
    next.output_truncated = outcome.output_truncated;
    if outcome.session_id.is_some() {
        next.session_id = outcome.session_id.clone();
    }
    if outcome.result.is_some() {
        next.result = outcome.result.clone();
    }
    if outcome.usage.is_some() {
        next.usage = outcome.usage.clone();
    }
}

/// Turns what the shim recorded into the task's terminal state and a sentence for people.
/// A signal is a failure, never a success (the original counted it as success, spec W6).
pub fn outcome_of_exit(exit: &ExitRecord, cancel_reason: Option<&str>) -> ExitOutcome {
    let mut summary = exit.summary.clone().unwrap_or_default();
    let structured = summary.format.is_structured();
    summary.account_for_exit(exit.exit_code);
    let (status, reason) = if let Some(error) = &exit.spawn_error {
        (TaskStatus::Failed, reasons::start_failed(error))
    } else {
        match &exit.killed_for {
            Some(KillCause::Cancel) => (
                TaskStatus::Cancelled,
                reasons::cancelled_by_user(cancel_reason.unwrap_or("")),
            ),
            Some(KillCause::Unrecoverable) => (
                TaskStatus::Failed,
                reasons::unrecoverable(summary.unrecoverable.as_deref()),
            ),
            Some(KillCause::Timeout { after_ms }) => {
                (TaskStatus::Failed, reasons::timed_out(*after_ms))
            }
            Some(KillCause::Idle { after_ms }) => (TaskStatus::Failed, reasons::idle(*after_ms)),
            None => match (exit.exit_code, exit.signal) {
                // Success needs the exit status *and* the agent's own result: Gemini
                // exits 0 with no result line after a kill.
                (Some(0), _) if !structured || summary.success == Some(true) => {
                    (TaskStatus::Completed, reasons::exited_with(0))
                }
                (Some(0), _) if !summary.result_seen => {
                    (TaskStatus::Failed, reasons::NO_RESULT.to_string())
                }
                (Some(code), _) => (
                    TaskStatus::Failed,
                    reasons::failure(&reasons::exited_with(code), &summary),
                ),
                (None, Some(sig)) => (
                    TaskStatus::Failed,
                    reasons::failure(&reasons::killed_by(sig), &summary),
                ),
                (None, None) => (TaskStatus::Failed, reasons::NO_EXIT_STATUS.to_string()),
            },
        }
    };
    let rate_limited = status == TaskStatus::Failed
        && exit.killed_for.is_none()
        && exit.spawn_error.is_none()
        && summary.unrecoverable.is_none()
        && summary.rate_limited;
    ExitOutcome {
        status,
        exit_code: exit.exit_code,
        signal: exit.signal.map(reasons::signal_name),
        reason,
        output_bytes: exit.output_bytes,
        output_truncated: exit.truncated,
        session_id: summary.session_id.clone(),
        result: summary
            .answer
            .clone()
            .filter(|_| status == TaskStatus::Completed),
        usage: summary.usage.clone(),
        rate_limited,
        rate_limit_reset: summary.rate_limit_reset,
    }
}

#[cfg(test)]
pub mod tests_support {
    use super::*;

    pub fn record_with_prompt(prompt: &str) -> TaskRecord {
        TaskRecord {
            prompt: prompt.to_string(),
            ..queued("task-test")
        }
    }

    pub fn queued(id: &str) -> TaskRecord {
        TaskRecord {
            id: id.to_string(),
            prompt: "p".into(),
            status: TaskStatus::Queued,
            priority: Priority::P2,
            agent: "shell".into(),
            working_directory: "/".into(),
            timeout: 1000,
            idle_timeout: None,
            max_output_buffer: 1024,
            parent_task_id: None,
            retry_count: None,
            retry_of: None,
            created_at: 1,
            started_at: None,
            completed_at: None,
            not_before: None,
            exit_code: None,
            signal: None,
            reason: None,
            shim_pid: None,
            shim_start_time: None,
            cancel_reason: None,
            output_bytes: None,
            output_truncated: false,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::queued;
    use super::*;
    use crate::model::run::{OutputFormat, RunSummary};

    fn exit(code: Option<i32>, signal: Option<i32>, killed_for: Option<KillCause>) -> ExitRecord {
        ExitRecord {
            exit_code: code,
            signal,
            killed_for,
            ..Default::default()
        }
    }

    fn structured(code: i32, summary: RunSummary) -> ExitRecord {
        ExitRecord {
            exit_code: Some(code),
            summary: Some(RunSummary {
                format: OutputFormat::ClaudeStreamJson,
                ..summary
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_structured_agent_succeeds_only_with_a_successful_result() {
        let ok = outcome_of_exit(
            &structured(
                0,
                RunSummary {
                    result_seen: true,
                    success: Some(true),
                    answer: Some("done".into()),
                    ..Default::default()
                },
            ),
            None,
        );
        assert_eq!(
            (ok.status, ok.result.as_deref()),
            (TaskStatus::Completed, Some("done"))
        );
        let silent = outcome_of_exit(&structured(0, RunSummary::default()), None);
        assert_eq!(
            silent.status,
            TaskStatus::Failed,
            "exit 0 without a result is not success"
        );
        assert!(silent.reason.contains("never reported a result"));
        let denied = outcome_of_exit(
            &structured(
                0,
                RunSummary {
                    result_seen: true,
                    success: Some(false),
                    error: Some("boom".into()),
                    ..Default::default()
                },
            ),
            None,
        );
        assert_eq!(denied.status, TaskStatus::Failed);
    }

    #[test]
    fn gemini_exit_codes_are_http_statuses() {
        let gemini = |code| ExitRecord {
            exit_code: Some(code),
            summary: Some(RunSummary {
                format: OutputFormat::GeminiStreamJson,
                result_seen: true,
                success: Some(false),
                error: Some("[API Error: slow down]".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let limited = outcome_of_exit(&gemini(173), None);
        assert!(
            limited.rate_limited && limited.reason.contains("HTTP 429"),
            "{}",
            limited.reason
        );
        assert!(
            outcome_of_exit(&gemini(145), None)
                .reason
                .contains("HTTP 401")
        );
        assert!(
            outcome_of_exit(&gemini(244), None)
                .reason
                .contains("HTTP 500")
        );
    }

    #[test]
    fn provider_errors_name_their_cause() {
        let e = outcome_of_exit(
            &structured(
                1,
                RunSummary {
                    result_seen: true,
                    success: Some(false),
                    http_status: Some(401),
                    error: Some("Failed to authenticate. API Error: 401".into()),
                    ..Default::default()
                },
            ),
            None,
        );
        assert_eq!(
            e.reason,
            "exited with code 1: the provider refused the credentials (HTTP 401): Failed to authenticate. API Error: 401"
        );
        assert!(!e.rate_limited);
        let r = outcome_of_exit(
            &structured(
                1,
                RunSummary {
                    http_status: Some(429),
                    rate_limited: true,
                    ..Default::default()
                },
            ),
            None,
        );
        assert!(r.rate_limited);
        assert!(
            r.reason.contains("rate limited by the provider (HTTP 429)"),
            "{}",
            r.reason
        );
    }

    #[test]
    fn a_signal_is_a_failure_with_its_name() {
        let o = outcome_of_exit(&exit(None, Some(9), None), None);
        assert_eq!(o.status, TaskStatus::Failed);
        assert_eq!(o.signal.as_deref(), Some("SIGKILL"));
        assert_eq!(o.reason, "killed by signal SIGKILL");
        assert_eq!(o.exit_code, None);
    }

    #[test]
    fn exit_codes_decide_success() {
        assert_eq!(
            outcome_of_exit(&exit(Some(0), None, None), None).status,
            TaskStatus::Completed
        );
        let o = outcome_of_exit(&exit(Some(3), None, None), None);
        assert_eq!(
            (o.status, o.reason.as_str()),
            (TaskStatus::Failed, "exited with code 3")
        );
    }

    #[test]
    fn kills_say_why() {
        let c = outcome_of_exit(
            &exit(None, Some(15), Some(KillCause::Cancel)),
            Some("wrong repo"),
        );
        assert_eq!(c.status, TaskStatus::Cancelled);
        assert_eq!(c.reason, "cancelled by the user: wrong repo");
        let t = outcome_of_exit(
            &exit(None, Some(15), Some(KillCause::Timeout { after_ms: 2000 })),
            None,
        );
        assert_eq!(
            (t.status, t.reason.as_str()),
            (TaskStatus::Failed, "timed out after 2 s")
        );
        let i = outcome_of_exit(
            &exit(None, Some(9), Some(KillCause::Idle { after_ms: 90_000 })),
            None,
        );
        assert_eq!(i.reason, "no output for 90 s");
    }

    #[test]
    fn terminal_states_accept_nothing() {
        let t = queued("task-a");
        let done = apply(
            Some(&t),
            &TaskEvent::Cancelled {
                at: 2,
                reason: "x".into(),
            },
        )
        .unwrap();
        assert_eq!(done.status, TaskStatus::Cancelled);
        for ev in [
            TaskEvent::Started {
                at: 3,
                shim_pid: 1,
                shim_start_time: 1,
            },
            TaskEvent::Cancelled {
                at: 3,
                reason: "again".into(),
            },
            TaskEvent::Lost {
                at: 3,
                reason: "x".into(),
            },
        ] {
            assert!(apply(Some(&done), &ev).is_err(), "{ev:?} must be refused");
        }
    }

    #[test]
    fn a_queued_task_says_why_it_waits_until_it_starts() {
        let t = queued("task-a");
        let why = "waiting for memory: 3.1 GiB available".to_string();
        let waiting = apply(
            Some(&t),
            &TaskEvent::Waiting {
                reason: Some(why.clone()),
            },
        )
        .unwrap();
        assert_eq!(waiting.status, TaskStatus::Queued);
        assert_eq!(waiting.reason, Some(why));
        let started = apply(
            Some(&waiting),
            &TaskEvent::Started {
                at: 2,
                shim_pid: 10,
                shim_start_time: 5,
            },
        )
        .unwrap();
        assert_eq!(started.reason, None);
        // Only a queued task waits for headroom.
        assert!(apply(Some(&started), &TaskEvent::Waiting { reason: None }).is_err());
    }

    #[test]
    fn a_running_task_cannot_be_cancelled_directly() {
        let t = queued("task-a");
        let r = apply(
            Some(&t),
            &TaskEvent::Started {
                at: 2,
                shim_pid: 10,
                shim_start_time: 5,
            },
        )
        .unwrap();
        assert!(
            apply(
                Some(&r),
                &TaskEvent::Cancelled {
                    at: 3,
                    reason: "x".into()
                }
            )
            .is_err()
        );
        let asked = apply(Some(&r), &TaskEvent::CancelRequested { reason: "x".into() }).unwrap();
        assert_eq!(asked.status, TaskStatus::Running);
        assert_eq!(asked.cancel_reason.as_deref(), Some("x"));
    }
}
