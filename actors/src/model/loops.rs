//! The eval loop entity and its pure state machine (spec 1.9, 9; issue 8).
//!
//! Owns: the loop record (its settings, counters, budgets and the latest iteration), the
//! events that change it, `apply`, the outcome rules (`decide_next`), and the pure parts
//! around them: parsing an eval's score or an agent's verdict, validating a `CreateLoop`
//! request, what a shell eval is given (`EvalSpec`), and the results ledger (TSV and a
//! sparkline of scores).
//! Must never: run processes, touch git, the clock or the database. The actor reads the
//! clock and passes it in; everything here is deterministic so the journal can be folded
//! and property-tested.
//!
//! One iteration at a time, in phases: `working` (its task or pipeline runs), then
//! `evaluating` (the tail task completed; the eval runs), then `settling` (the result is
//! decided and durable; git commits or resets), then `done`. The result is journaled
//! before git acts, so a crash never runs an eval twice, and git's two actions are
//! idempotent, so redoing them after a crash is harmless. Whether the loop ends is decided
//! between iterations by `decide_next`, from the record alone.
//!
//! After every event, `LoopRecord::latest` is the iteration row that event touched (the
//! journal upserts it into `loop_iterations` beside the loop row).

use serde::{Deserialize, Serialize};

use super::task::{Priority, Usage};
use super::{Millis, reasons::human_duration};

/// Prompts are accepted up to 1 MiB (DESIGN 10; the engine's task limit is the same).
pub const MAX_PROMPT_BYTES: usize = 1 << 20;
/// Steps of a pipeline loop (spec 9.1).
pub const PIPELINE_STEPS: std::ops::RangeInclusive<usize> = 2..=20;
/// A shell eval may take 1 s to 5 min (spec 9.1); an agent eval up to 10 min (autobeat).
pub const SHELL_EVAL_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 1_000..=300_000;
pub const AGENT_EVAL_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 1_000..=600_000;
pub const DEFAULT_EVAL_TIMEOUT_MS: u64 = 60_000;
pub const DEFAULT_MAX_ITERATIONS: u32 = 10;
pub const DEFAULT_MAX_CONSECUTIVE_FAILURES: u32 = 3;
/// How long a rate-limited iteration waits when the provider named no reset time.
pub const DEFAULT_RATE_LIMIT_WAIT_MS: i64 = 60_000;

// ---------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------

/// `retry` runs until the exit condition passes; `optimize` keeps the best score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    #[default]
    Retry,
    Optimize,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Retry => "retry",
            Strategy::Optimize => "optimize",
        }
    }
}

/// Which way an optimize loop's score improves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Minimize,
    Maximize,
}

impl Direction {
    /// Strictly better, as the original: an equal score is not an improvement.
    pub fn is_better(self, candidate: f64, best: f64) -> bool {
        match self {
            Direction::Minimize => candidate < best,
            Direction::Maximize => candidate > best,
        }
    }
}

/// Who judges an iteration: a shell command, or an agent reading the work (v1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EvalMode {
    #[default]
    Shell,
    Agent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoopStatus {
    #[default]
    Running,
    Paused,
    Completed,
    Failed,
    Cancelled,
}

impl LoopStatus {
    pub const ALL: [LoopStatus; 5] = [
        LoopStatus::Running,
        LoopStatus::Paused,
        LoopStatus::Completed,
        LoopStatus::Failed,
        LoopStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LoopStatus::Running => "running",
            LoopStatus::Paused => "paused",
            LoopStatus::Completed => "completed",
            LoopStatus::Failed => "failed",
            LoopStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<LoopStatus> {
        LoopStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            LoopStatus::Completed | LoopStatus::Failed | LoopStatus::Cancelled
        )
    }
}

impl std::fmt::Display for LoopStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An iteration's result. Retry: `pass` | `fail`; optimize: `keep` | `discard` | `crash`;
/// both: `fail` (its task failed, timed out or was lost), `cancelled` (by the user).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IterationStatus {
    #[default]
    Running,
    Pass,
    Fail,
    Keep,
    Discard,
    Crash,
    Cancelled,
}

impl IterationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            IterationStatus::Running => "running",
            IterationStatus::Pass => "pass",
            IterationStatus::Fail => "fail",
            IterationStatus::Keep => "keep",
            IterationStatus::Discard => "discard",
            IterationStatus::Crash => "crash",
            IterationStatus::Cancelled => "cancelled",
        }
    }

    /// `pass` and `keep` commit the iteration's work; every other result resets it.
    pub fn keeps_work(self) -> bool {
        matches!(self, IterationStatus::Pass | IterationStatus::Keep)
    }
}

impl std::fmt::Display for IterationStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the latest iteration is in its life (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IterationPhase {
    #[default]
    Working,
    Evaluating,
    Settling,
    Done,
}

// ---------------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------------

/// Everything the engine knows about one loop: the `loops` table holds exactly this. Keys
/// are the original's (`LoopStatus` response) plus the new settings beside them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoopRecord {
    pub id: String,
    pub strategy: Strategy,
    /// The iteration prompt; empty for a pipeline loop.
    pub prompt: String,
    /// One task per step, each depending on the one before (2 to 20), or empty.
    #[serde(default)]
    pub pipeline_steps: Vec<String>,
    pub priority: Priority,
    pub agent: String,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub system_prompt: Option<String>,
    /// The directory the user named. The loop works there, or in `worktree_path`.
    pub working_directory: String,
    /// Shell mode: the command that judges each iteration.
    pub exit_condition: String,
    pub eval_direction: Option<Direction>,
    /// Milliseconds the eval may take.
    pub eval_timeout: u64,
    pub eval_mode: EvalMode,
    pub eval_prompt: Option<String>,
    /// The agent that judges (agent mode); the loop's agent when not given.
    pub eval_agent: Option<String>,
    /// 0 = unlimited. Counts every iteration except those the user cancelled (W8).
    pub max_iterations: u32,
    /// 0 = unlimited.
    pub max_consecutive_failures: u32,
    pub cooldown_ms: u64,
    /// `false` (`--checkpoint`): the next iteration continues from the previous one.
    pub fresh_context: bool,
    /// USD, summed from the iterations' agent usage.
    pub max_cost: Option<f64>,
    pub max_tokens: Option<u64>,
    /// Milliseconds of running (paused time excluded).
    pub max_duration: Option<u64>,
    /// Optimize: stop after this many iterations in a row without a better score.
    pub patience: Option<u32>,
    pub schedule_id: Option<String>,
    /// The loop's own branch; `None` leaves git alone.
    pub git_branch: Option<String>,
    /// The branch checked out when the loop was created.
    pub git_base_branch: Option<String>,
    /// `--worktree`: the loop runs in a worktree of its own.
    #[serde(default)]
    pub worktree: bool,
    pub worktree_path: Option<String>,
    /// HEAD when the branch was created: what a reset returns to before anything is kept.
    pub git_start_commit_sha: Option<String>,
    /// The commit of the last `pass`/`keep`: what a reset returns to.
    pub kept_commit_sha: Option<String>,

    pub status: LoopStatus,
    /// The number of the latest iteration started (0 before the first). Never reused.
    pub current_iteration: u32,
    /// Iterations that count towards `maxIterations` (all but user-cancelled ones).
    pub iterations_counted: u32,
    pub best_score: Option<f64>,
    /// The iteration *number* of the best score (the original's name).
    pub best_iteration_id: Option<u32>,
    pub consecutive_failures: u32,
    /// Optimize: iterations in a row since the best score last improved (patience).
    pub iterations_without_improvement: u32,
    pub total_input_tokens: u64,
    pub total_output_tokens: u64,
    pub total_cost_usd: f64,
    /// Why the loop is where it is, for people.
    pub reason: Option<String>,
    /// No new iteration starts before this time (cooldown, rate-limit reset).
    pub not_before: Option<Millis>,
    pub paused_at: Option<Millis>,
    /// Milliseconds spent paused so far (not counted by `maxDuration`).
    pub paused_ms: u64,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub completed_at: Option<Millis>,
    /// The latest iteration, as its row in `loop_iterations`.
    pub latest: Option<IterationRecord>,
}

/// One iteration: a row of `loop_iterations` and a line of the results ledger.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IterationRecord {
    pub loop_id: String,
    /// 1-based; unique per loop.
    pub iteration_number: u32,
    /// The iteration's tasks: one, or one per pipeline step, in order.
    pub task_ids: Vec<String>,
    /// Tasks whose end the loop has recorded (each exactly once).
    #[serde(default)]
    pub ended_task_ids: Vec<String>,
    /// The task running an agent eval, or the supervised shell eval's run id.
    pub eval_task_id: Option<String>,
    pub status: IterationStatus,
    pub phase: IterationPhase,
    pub score: Option<f64>,
    /// The loop's best score after this iteration.
    pub best_score: Option<f64>,
    pub exit_code: Option<i32>,
    pub error_message: Option<String>,
    /// The eval's last non-empty output line.
    pub eval_output: Option<String>,
    /// The eval's last output lines (bounded by whoever ran it).
    pub eval_output_tail: Option<String>,
    pub git_branch: Option<String>,
    /// The commit the iteration started from.
    pub pre_iteration_commit_sha: Option<String>,
    /// After `pass`/`keep`: its commit (the previous one when it changed nothing);
    /// otherwise the commit the tree was reset to.
    pub git_commit_sha: Option<String>,
    /// `git diff --shortstat` of the kept commit.
    pub git_diff_summary: Option<String>,
    /// The iteration's task ended on a rate limit: not a failure, the loop waits.
    #[serde(default)]
    pub rate_limited: bool,
    /// While a task waits for a rate-limit reset: until when.
    pub rate_limited_until: Option<Millis>,
    pub usage: Usage,
    /// A short word for people: why it was kept, discarded, cancelled.
    pub note: Option<String>,
    pub started_at: Millis,
    pub completed_at: Option<Millis>,
    pub duration_ms: Option<u64>,
}

impl IterationRecord {
    /// The tail task: the one whose completion triggers the eval (the original's `taskId`).
    pub fn task_id(&self) -> Option<&str> {
        self.task_ids.last().map(String::as_str)
    }

    /// Tasks the loop has not yet heard the end of.
    pub fn unended_task_ids(&self) -> Vec<String> {
        self.task_ids
            .iter()
            .filter(|t| !self.ended_task_ids.contains(t))
            .cloned()
            .collect()
    }
}

impl LoopRecord {
    /// Where iterations run and evals and git act.
    pub fn work_dir(&self) -> &str {
        self.worktree_path
            .as_deref()
            .unwrap_or(&self.working_directory)
    }

    pub fn is_pipeline(&self) -> bool {
        !self.pipeline_steps.is_empty()
    }

    pub fn total_tokens(&self) -> u64 {
        self.total_input_tokens + self.total_output_tokens
    }

    /// The commit a reset returns to: the last kept one, else the start.
    pub fn reset_target(&self) -> Option<&str> {
        self.kept_commit_sha
            .as_deref()
            .or(self.git_start_commit_sha.as_deref())
    }

    /// Milliseconds of running since creation, paused time excluded.
    pub fn active_ms(&self, now: Millis) -> u64 {
        let paused_now = self.paused_at.map(|p| (now - p).max(0)).unwrap_or(0) as u64;
        let end = self.completed_at.unwrap_or(now);
        ((end - self.created_at).max(0) as u64).saturating_sub(self.paused_ms + paused_now)
    }

    /// The first 50 characters of the prompt (the original's `promptPreview`).
    pub fn prompt_preview(&self) -> String {
        preview(&self.prompt, 50)
    }
}

/// The first `n` characters of `text`, with `...` when cut.
pub fn preview(text: &str, n: usize) -> String {
    match text.char_indices().nth(n) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

// ---------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------

/// How one of an iteration's tasks ended, as the loop needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskEndKind {
    Completed,
    /// Failed, timed out or lost: a failure of the iteration.
    Failed,
    /// Cancelled by the user: the iteration does not count.
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskEnd {
    pub kind: TaskEndKind,
    /// The task's reason ("timed out after 30 min", "exited with code 1").
    pub reason: String,
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub usage: Option<Usage>,
    /// The run failed on a provider rate limit: not a failure; the loop waits.
    #[serde(default)]
    pub rate_limited: bool,
    #[serde(default)]
    pub rate_limit_reset: Option<Millis>,
}

/// What an eval concluded.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verdict", content = "score", rename_all = "lowercase")]
pub enum Verdict {
    /// Retry: the exit condition passed.
    Pass,
    /// Retry: it did not (non-zero exit, timeout, an agent's `fail`).
    Fail,
    /// Optimize: a finite score.
    Score(f64),
    /// Optimize: no score (non-zero exit, timeout, no number).
    Crash,
}

/// The result of one eval, as journaled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EvalReport {
    pub verdict: Verdict,
    pub exit_code: Option<i32>,
    /// The last non-empty output line.
    pub last_line: Option<String>,
    pub output_tail: Option<String>,
    /// Why it failed or crashed, for people.
    pub message: Option<String>,
    /// An agent eval's usage (counts towards the budgets).
    #[serde(default)]
    pub usage: Option<Usage>,
}

/// One transition of a loop, as journaled. Each variant names what happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum LoopEvent {
    /// A new loop, running, before its first iteration (git prepared, when asked for).
    Created {
        record: Box<LoopRecord>,
    },
    /// Iteration `number` began: its tasks were created in the same transaction.
    IterationStarted {
        at: Millis,
        number: u32,
        task_ids: Vec<String>,
    },
    /// A task of the iteration waits for a rate-limit reset (it will run again).
    RateLimited {
        at: Millis,
        number: u32,
        task_id: String,
        until: Millis,
    },
    /// A task of the iteration ended.
    TaskEnded {
        at: Millis,
        number: u32,
        task_id: String,
        end: TaskEnd,
    },
    /// The eval of the iteration started (under this id, to adopt it after a crash).
    EvalStarted {
        at: Millis,
        number: u32,
        eval_id: String,
    },
    /// The eval ended: the iteration's result is decided (git not yet done).
    Evaluated {
        at: Millis,
        number: u32,
        report: EvalReport,
    },
    /// Git committed or reset (or there is no git): the iteration is done.
    Settled {
        at: Millis,
        number: u32,
        commit_sha: Option<String>,
        diff_summary: Option<String>,
    },
    /// Graceful: the running iteration goes on, no new one starts. `force`: the running
    /// iteration is cancelled too.
    Paused {
        at: Millis,
        force: bool,
    },
    Resumed {
        at: Millis,
    },
    /// The user cancelled the loop (its running iteration, if any, is cancelled; with
    /// `cancelTasks` the actor cancels every unended task of it, W27). The working tree
    /// is left as it is, for the user to look at.
    Cancelled {
        at: Millis,
        reason: String,
    },
    /// The loop ended: an outcome rule of `decide_next`, or an error the engine could not
    /// get past (a git failure, a task that could not be created). A running iteration
    /// is cancelled with it, and the actor cancels its unended tasks.
    Finished {
        at: Millis,
        status: LoopStatus,
        reason: String,
    },
}

impl LoopEvent {
    /// The transition's name in the `events` table.
    pub fn name(&self) -> &'static str {
        match self {
            LoopEvent::Created { .. } => "created",
            LoopEvent::IterationStarted { .. } => "iteration_started",
            LoopEvent::RateLimited { .. } => "rate_limited",
            LoopEvent::TaskEnded { .. } => "task_ended",
            LoopEvent::EvalStarted { .. } => "eval_started",
            LoopEvent::Evaluated { .. } => "evaluated",
            LoopEvent::Settled { .. } => "settled",
            LoopEvent::Paused { .. } => "paused",
            LoopEvent::Resumed { .. } => "resumed",
            LoopEvent::Cancelled { .. } => "cancelled",
            LoopEvent::Finished { .. } => "finished",
        }
    }

    fn at(&self) -> Millis {
        match self {
            LoopEvent::Created { record } => record.created_at,
            LoopEvent::IterationStarted { at, .. }
            | LoopEvent::RateLimited { at, .. }
            | LoopEvent::TaskEnded { at, .. }
            | LoopEvent::EvalStarted { at, .. }
            | LoopEvent::Evaluated { at, .. }
            | LoopEvent::Settled { at, .. }
            | LoopEvent::Paused { at, .. }
            | LoopEvent::Resumed { at }
            | LoopEvent::Cancelled { at, .. }
            | LoopEvent::Finished { at, .. } => *at,
        }
    }
}

/// A transition that the current state does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("loop {loop_id}: cannot apply '{event}' in state {from}: {why}")]
pub struct InvalidTransition {
    pub loop_id: String,
    pub event: &'static str,
    pub from: String,
    pub why: &'static str,
}

fn invalid(prev: Option<&LoopRecord>, event: &LoopEvent, why: &'static str) -> InvalidTransition {
    InvalidTransition {
        loop_id: prev.map(|l| l.id.clone()).unwrap_or_default(),
        event: event.name(),
        from: match prev {
            None => "(none)".to_string(),
            Some(l) => match &l.latest {
                Some(i) => format!(
                    "{}, iteration {} {:?}/{}",
                    l.status, i.iteration_number, i.phase, i.status
                ),
                None => l.status.to_string(),
            },
        },
        why,
    }
}

// ---------------------------------------------------------------------------------
// The state machine
// ---------------------------------------------------------------------------------

/// The state machine: the record that `event` makes of `prev`.
pub fn apply(
    prev: Option<&LoopRecord>,
    event: &LoopEvent,
) -> Result<LoopRecord, InvalidTransition> {
    use IterationPhase::*;
    use LoopStatus::*;
    let Some(prev) = prev else {
        return match event {
            LoopEvent::Created { record } => {
                check_new_record(record).map_err(|why| invalid(None, event, why))?;
                Ok((**record).clone())
            }
            _ => Err(invalid(None, event, "the loop does not exist")),
        };
    };
    let fail = |why| Err(invalid(Some(prev), event, why));
    let mut next = prev.clone();
    next.updated_at = event.at().max(prev.updated_at);
    match event {
        LoopEvent::Created { .. } => return fail("the loop exists already"),
        LoopEvent::IterationStarted {
            at,
            number,
            task_ids,
        } => {
            if decide_next(prev, *at) != (NextStep::Start { number: *number }) {
                return fail("the next step is not to start this iteration");
            }
            let expected = if prev.is_pipeline() {
                prev.pipeline_steps.len()
            } else {
                1
            };
            if task_ids.len() != expected || has_duplicates(task_ids) {
                return fail("one distinct task per step is needed");
            }
            next.current_iteration = *number;
            next.not_before = None;
            next.latest = Some(IterationRecord {
                loop_id: prev.id.clone(),
                iteration_number: *number,
                task_ids: task_ids.clone(),
                git_branch: prev.git_branch.clone(),
                pre_iteration_commit_sha: prev.reset_target().map(str::to_string),
                best_score: prev.best_score,
                started_at: *at,
                ..Default::default()
            });
        }
        LoopEvent::RateLimited {
            at: _,
            number,
            task_id,
            until,
        } => {
            let Some(it) = live_mut(&mut next, *number) else {
                return fail("no such live iteration");
            };
            if it.phase != Working || !is_unended(it, task_id) {
                return fail("the task is not one of the iteration's running tasks");
            }
            it.rate_limited_until = Some(*until);
        }
        LoopEvent::TaskEnded {
            at: _,
            number,
            task_id,
            end,
        } => {
            let loop_live = !prev.status.is_terminal();
            let Some(it) = next
                .latest
                .as_mut()
                .filter(|i| i.iteration_number == *number)
            else {
                return fail("no such iteration");
            };
            if !is_unended(it, task_id) {
                return fail("not a task of the iteration, or its end is recorded already");
            }
            it.ended_task_ids.push(task_id.clone());
            it.rate_limited_until = None;
            let usage = end.usage.clone().unwrap_or_default();
            add_usage(&mut it.usage, &usage);
            let decide = loop_live && it.phase == Working;
            let step = it.task_ids.iter().position(|t| t == task_id).unwrap_or(0);
            let steps = it.task_ids.len();
            add_totals(&mut next, &usage);
            if decide {
                match end.kind {
                    TaskEndKind::Completed if step + 1 == steps => {
                        it_mut(&mut next).phase = Evaluating;
                    }
                    TaskEndKind::Completed => {}
                    TaskEndKind::Failed => {
                        let what = if steps > 1 {
                            format!(
                                "pipeline step {} of {steps} failed: {}",
                                step + 1,
                                end.reason
                            )
                        } else {
                            format!("the task failed: {}", end.reason)
                        };
                        let it = it_mut(&mut next);
                        it.exit_code = end.exit_code;
                        it.error_message = Some(what);
                        if end.rate_limited {
                            it.rate_limited = true;
                            it.rate_limited_until = end.rate_limit_reset;
                            it.note = Some("rate limited; not counted as a failure".to_string());
                        }
                        decide_result(&mut next, IterationStatus::Fail, None);
                    }
                    TaskEndKind::Cancelled => {
                        it_mut(&mut next).note = Some("cancelled by the user".to_string());
                        decide_result(&mut next, IterationStatus::Cancelled, None);
                    }
                }
            }
        }
        LoopEvent::EvalStarted {
            at: _,
            number,
            eval_id,
        } => {
            if prev.status.is_terminal() {
                return fail("the loop has ended");
            }
            let Some(it) = live_mut(&mut next, *number) else {
                return fail("no such live iteration");
            };
            if it.phase != Evaluating {
                return fail("the iteration is not being evaluated");
            }
            it.eval_task_id = Some(eval_id.clone());
        }
        LoopEvent::Evaluated {
            at: _,
            number,
            report,
        } => {
            if prev.status.is_terminal() {
                return fail("the loop has ended");
            }
            let Some(it) = live_mut(&mut next, *number) else {
                return fail("no such live iteration");
            };
            if it.phase != Evaluating {
                return fail("the iteration is not being evaluated");
            }
            it.exit_code = report.exit_code;
            it.eval_output = report.last_line.clone();
            it.eval_output_tail = report.output_tail.clone();
            it.error_message = report.message.clone();
            let usage = report.usage.clone().unwrap_or_default();
            add_usage(&mut it.usage, &usage);
            add_totals(&mut next, &usage);
            let (status, score) = match (prev.strategy, report.verdict) {
                (Strategy::Retry, Verdict::Pass) => (IterationStatus::Pass, None),
                (Strategy::Retry, Verdict::Fail | Verdict::Crash) => (IterationStatus::Fail, None),
                (Strategy::Optimize, Verdict::Score(s)) if s.is_finite() => {
                    let better = match (prev.best_score, prev.eval_direction) {
                        (None, _) => true,
                        (Some(best), Some(dir)) => dir.is_better(s, best),
                        (Some(_), None) => false,
                    };
                    let status = if better {
                        IterationStatus::Keep
                    } else {
                        IterationStatus::Discard
                    };
                    (status, Some(s))
                }
                (Strategy::Optimize, Verdict::Crash) => (IterationStatus::Crash, None),
                _ => return fail("the verdict does not suit the loop's strategy"),
            };
            decide_result(&mut next, status, score);
        }
        LoopEvent::Settled {
            at,
            number,
            commit_sha,
            diff_summary,
        } => {
            let cooldown = prev.cooldown_ms as i64;
            let Some(it) = live_mut(&mut next, *number) else {
                return fail("no such live iteration");
            };
            if it.phase != Settling || !it.unended_task_ids().is_empty() {
                return fail("the iteration is not ready to settle");
            }
            it.phase = Done;
            it.git_commit_sha = commit_sha.clone();
            it.git_diff_summary = diff_summary.clone();
            it.completed_at = Some(*at);
            it.duration_ms = Some((*at - it.started_at).max(0) as u64);
            let kept = it.status.keeps_work() && commit_sha.is_some();
            let wait_rate_limit = it.rate_limited.then(|| {
                it.rate_limited_until
                    .unwrap_or(*at + DEFAULT_RATE_LIMIT_WAIT_MS)
            });
            if kept {
                next.kept_commit_sha = commit_sha.clone();
            }
            let cooldown_end = (cooldown > 0).then_some(*at + cooldown);
            next.not_before = cooldown_end.max(wait_rate_limit);
        }
        LoopEvent::Paused { at, force } => {
            if prev.status != Running {
                return fail("only a running loop can be paused");
            }
            next.status = Paused;
            next.paused_at = Some(*at);
            if *force
                && let Some(it) = next.latest.as_mut()
                && it.status == IterationStatus::Running
            {
                it.note = Some("cancelled by a forced pause".to_string());
                decide_result(&mut next, IterationStatus::Cancelled, None);
            }
        }
        LoopEvent::Resumed { at } => {
            if prev.status != Paused {
                return fail("only a paused loop can be resumed");
            }
            next.status = Running;
            next.paused_ms += prev.paused_at.map(|p| (*at - p).max(0) as u64).unwrap_or(0);
            next.paused_at = None;
        }
        LoopEvent::Cancelled { at, reason } => {
            if prev.status.is_terminal() {
                return fail("the loop has ended");
            }
            end_loop(
                &mut next,
                *at,
                Cancelled,
                reason.clone(),
                "the loop was cancelled",
            );
        }
        LoopEvent::Finished { at, status, reason } => {
            if prev.status.is_terminal() {
                return fail("the loop has ended");
            }
            if !matches!(status, Completed | Failed) {
                return fail("a loop finishes completed or failed");
            }
            end_loop(&mut next, *at, *status, reason.clone(), "the loop ended");
        }
    }
    Ok(next)
}

fn check_new_record(record: &LoopRecord) -> Result<(), &'static str> {
    if record.status != LoopStatus::Running
        || record.current_iteration != 0
        || record.latest.is_some()
    {
        return Err("a new loop is running and has no iteration yet");
    }
    if record.git_branch.is_some() && record.git_start_commit_sha.is_none() {
        return Err("a git loop needs its start commit");
    }
    if record.strategy == Strategy::Optimize && record.eval_direction.is_none() {
        return Err("an optimize loop needs a direction");
    }
    Ok(())
}

fn has_duplicates(ids: &[String]) -> bool {
    ids.iter().enumerate().any(|(i, a)| ids[..i].contains(a))
}

fn is_unended(it: &IterationRecord, task_id: &str) -> bool {
    it.task_ids.iter().any(|t| t == task_id) && !it.ended_task_ids.iter().any(|t| t == task_id)
}

fn live_mut(rec: &mut LoopRecord, number: u32) -> Option<&mut IterationRecord> {
    rec.latest
        .as_mut()
        .filter(|i| i.iteration_number == number && i.phase != IterationPhase::Done)
}

/// The latest iteration; only called where it is known to exist.
fn it_mut(rec: &mut LoopRecord) -> &mut IterationRecord {
    rec.latest.get_or_insert_with(IterationRecord::default)
}

fn add_usage(total: &mut Usage, more: &Usage) {
    total.input_tokens += more.input_tokens;
    total.output_tokens += more.output_tokens;
    total.cache_read_tokens += more.cache_read_tokens;
    total.cache_write_tokens += more.cache_write_tokens;
    if let Some(c) = more.cost_usd {
        total.cost_usd = Some(add_cost(total.cost_usd.unwrap_or(0.0), c));
    }
}

fn add_totals(rec: &mut LoopRecord, usage: &Usage) {
    rec.total_input_tokens += usage.input_tokens;
    rec.total_output_tokens += usage.output_tokens;
    rec.total_cost_usd = add_cost(rec.total_cost_usd, usage.cost_usd.unwrap_or(0.0));
}

/// Sums of costs are kept to the micro-dollar: such short decimals survive a JSON round
/// trip exactly, so folding the journaled events gives back the stored totals.
fn add_cost(total: f64, more: f64) -> f64 {
    ((total + more) * 1e6).round() / 1e6
}

/// Records the latest iteration's result and what it does to the loop's counters (9.4).
fn decide_result(rec: &mut LoopRecord, status: IterationStatus, score: Option<f64>) {
    use IterationStatus::*;
    let number = rec.current_iteration;
    let rate_limited = rec.latest.as_ref().is_some_and(|i| i.rate_limited);
    match status {
        Cancelled => {}
        Pass => {
            rec.iterations_counted += 1;
            rec.consecutive_failures = 0;
        }
        Keep => {
            rec.iterations_counted += 1;
            rec.consecutive_failures = 0;
            rec.iterations_without_improvement = 0;
            rec.best_score = score;
            rec.best_iteration_id = Some(number);
        }
        Fail if rate_limited => rec.iterations_counted += 1,
        Fail | Discard | Crash => {
            rec.iterations_counted += 1;
            rec.consecutive_failures += 1;
            if rec.strategy == Strategy::Optimize {
                rec.iterations_without_improvement += 1;
            }
        }
        Running => {}
    }
    let best = rec.best_score;
    let it = it_mut(rec);
    it.status = status;
    it.score = score;
    it.best_score = best;
    it.phase = IterationPhase::Settling;
    if it.note.is_none() {
        it.note = match status {
            Keep => Some("new best".to_string()),
            Discard => Some("no better than the best".to_string()),
            _ => None,
        };
    }
}

fn end_loop(rec: &mut LoopRecord, at: Millis, status: LoopStatus, reason: String, why: &str) {
    if let Some(paused) = rec.paused_at.take() {
        rec.paused_ms += (at - paused).max(0) as u64;
    }
    rec.status = status;
    rec.reason = Some(reason);
    rec.completed_at = Some(at);
    rec.not_before = None;
    if let Some(it) = rec.latest.as_mut()
        && it.phase != IterationPhase::Done
    {
        if it.status == IterationStatus::Running {
            it.status = IterationStatus::Cancelled;
            it.note = Some(why.to_string());
        }
        it.phase = IterationPhase::Done;
        it.completed_at = Some(at);
        it.duration_ms = Some((at - it.started_at).max(0) as u64);
    }
}

// ---------------------------------------------------------------------------------
// What to do next
// ---------------------------------------------------------------------------------

/// What git does to settle an iteration.
#[derive(Debug, Clone, PartialEq)]
pub enum GitStep {
    /// The loop has no branch: git is left alone.
    None,
    /// `pass`/`keep`: commit every change (`git add -A`) with this message.
    Commit { message: String },
    /// Anything else: hard reset and clean back to this commit.
    ResetTo { sha: String },
}

/// The one thing the loop's actor should do now.
#[derive(Debug, Clone, PartialEq)]
pub enum NextStep {
    /// The loop has ended.
    Done,
    /// Paused between iterations: nothing until it is resumed.
    Paused,
    /// Start iteration `number` (create its tasks with `IterationStarted`).
    Start { number: u32 },
    /// Cooldown or a rate-limit reset: start no iteration before this time.
    WaitUntil { at: Millis },
    /// The iteration's tasks run: wait to hear of their ends.
    AwaitTasks { number: u32 },
    /// The tail task completed: run the eval (or adopt the one recorded as started).
    Evaluate {
        number: u32,
        eval_id: Option<String>,
    },
    /// The result is decided but some of the iteration's tasks still run: cancel them
    /// and wait for their ends before touching the working tree.
    StopTasks { number: u32, task_ids: Vec<String> },
    /// Do this git step, then journal `Settled`.
    Settle { number: u32, git: GitStep },
    /// End the loop (journal `Finished`).
    Finish { status: LoopStatus, reason: String },
}

/// The outcome rules (spec 9.4 with issue 8's fixes): what the loop does next, from its
/// record and the time alone. Pure, so recovery after a crash asks the same question.
pub fn decide_next(rec: &LoopRecord, now: Millis) -> NextStep {
    if rec.status.is_terminal() {
        return NextStep::Done;
    }
    if let Some(it) = &rec.latest {
        let number = it.iteration_number;
        match it.phase {
            IterationPhase::Working => return NextStep::AwaitTasks { number },
            IterationPhase::Evaluating => {
                return NextStep::Evaluate {
                    number,
                    eval_id: it.eval_task_id.clone(),
                };
            }
            IterationPhase::Settling => {
                let task_ids = it.unended_task_ids();
                return if task_ids.is_empty() {
                    NextStep::Settle {
                        number,
                        git: git_step(rec, it),
                    }
                } else {
                    NextStep::StopTasks { number, task_ids }
                };
            }
            IterationPhase::Done => {}
        }
    }
    if let Some((status, reason)) = end_rule(rec, now) {
        return NextStep::Finish { status, reason };
    }
    if rec.status == LoopStatus::Paused {
        return NextStep::Paused;
    }
    match rec.not_before {
        Some(t) if t > now => NextStep::WaitUntil { at: t },
        _ => NextStep::Start {
            number: rec.current_iteration + 1,
        },
    }
}

fn git_step(rec: &LoopRecord, it: &IterationRecord) -> GitStep {
    if rec.git_branch.is_none() {
        return GitStep::None;
    }
    if it.status.keeps_work() {
        GitStep::Commit {
            message: commit_message(rec, it),
        }
    } else {
        match rec.reset_target() {
            Some(sha) => GitStep::ResetTo {
                sha: sha.to_string(),
            },
            None => GitStep::None,
        }
    }
}

/// `backbeat loop loop-… iteration 3: keep, score 0.91`
pub fn commit_message(rec: &LoopRecord, it: &IterationRecord) -> String {
    let mut m = format!(
        "backbeat loop {} iteration {}: {}",
        rec.id, it.iteration_number, it.status
    );
    if let Some(s) = it.score {
        m.push_str(&format!(", score {}", format_score(s)));
    }
    m
}

/// Whether the loop ends now, between iterations, and how; `None` to go on.
fn end_rule(rec: &LoopRecord, now: Millis) -> Option<(LoopStatus, String)> {
    if rec.strategy == Strategy::Retry
        && let Some(it) = &rec.latest
        && it.status == IterationStatus::Pass
    {
        return Some((
            LoopStatus::Completed,
            format!(
                "the exit condition passed at iteration {}",
                it.iteration_number
            ),
        ));
    }
    let limit = limit_reached(rec, now)?;
    Some(
        match (rec.strategy, rec.best_score, rec.best_iteration_id) {
            (Strategy::Retry, _, _) => (
                LoopStatus::Failed,
                format!("{limit} without the exit condition passing"),
            ),
            (Strategy::Optimize, Some(best), Some(n)) => (
                LoopStatus::Completed,
                format!(
                    "{limit}; best score {} at iteration {n}",
                    format_score(best)
                ),
            ),
            (Strategy::Optimize, _, _) => (
                LoopStatus::Failed,
                format!("{limit}; no iteration was kept"),
            ),
        },
    )
}

/// The first limit the loop has reached, named for people.
fn limit_reached(rec: &LoopRecord, now: Millis) -> Option<String> {
    if rec.max_iterations > 0 && rec.iterations_counted >= rec.max_iterations {
        return Some(format!(
            "reached maxIterations ({} iterations)",
            rec.max_iterations
        ));
    }
    if rec.max_consecutive_failures > 0 && rec.consecutive_failures >= rec.max_consecutive_failures
    {
        return Some(format!(
            "reached maxConsecutiveFailures ({} failures in a row)",
            rec.consecutive_failures
        ));
    }
    if let Some(max) = rec.max_cost
        && rec.total_cost_usd >= max
    {
        return Some(format!(
            "reached maxCost (${:.4} spent of ${max})",
            rec.total_cost_usd
        ));
    }
    if let Some(max) = rec.max_tokens
        && rec.total_tokens() >= max
    {
        return Some(format!(
            "reached maxTokens ({} tokens used of {max})",
            rec.total_tokens()
        ));
    }
    if let Some(max) = rec.max_duration
        && rec.active_ms(now) >= max
    {
        return Some(format!("reached maxDuration ({})", human_duration(max)));
    }
    if let Some(p) = rec.patience
        && rec.strategy == Strategy::Optimize
        && rec.iterations_without_improvement >= p
    {
        return Some(format!(
            "no better score in {p} iterations in a row (patience {p})"
        ));
    }
    None
}

/// A score as people read it: `7`, `0.25`, `-350`.
pub fn format_score(s: f64) -> String {
    format!("{s}")
}

// ---------------------------------------------------------------------------------
// What an iteration's tasks are asked
// ---------------------------------------------------------------------------------

/// The prompts of the next iteration's tasks, in order: one per pipeline step, or the
/// loop's prompt. With `freshContext: false` (single-task loops, spec 9.5) the prompt
/// carries the previous iteration's context: its agent's checkpoint (the real output,
/// which the original lost, W3), its commit, its result and what the eval said, so the
/// agent learns why the last attempt fell short. The actor also continues the previous
/// tail task's agent session (`continues_session`).
pub fn iteration_prompts(
    rec: &LoopRecord,
    previous: Option<&IterationRecord>,
    checkpoint: Option<&super::task::Checkpoint>,
) -> Vec<String> {
    if rec.is_pipeline() {
        return rec.pipeline_steps.clone();
    }
    let Some(prev) = previous.filter(|_| !rec.fresh_context) else {
        return vec![rec.prompt.clone()];
    };
    let mut p = format!("{}\n\n--- Previous Iteration Context ---\n", rec.prompt);
    if let Some(cp) = checkpoint {
        if !cp.output_summary.trim().is_empty() {
            p.push_str(&format!("Output: {}\n", cp.output_summary.trim_end()));
        }
        if let Some(e) = cp.error_summary.as_deref().filter(|e| !e.trim().is_empty()) {
            p.push_str(&format!("Errors: {}\n", e.trim_end()));
        }
    }
    if let Some(sha) = prev
        .git_commit_sha
        .as_deref()
        .or(checkpoint.and_then(|c| c.git_commit_sha.as_deref()))
    {
        p.push_str(&format!("Git commit: {sha}\n"));
    }
    p.push_str(&format!(
        "Iteration {} status: {}",
        prev.iteration_number, prev.status
    ));
    if let Some(score) = prev.score {
        p.push_str(&format!(", score {}", format_score(score)));
    }
    if let Some(best) = prev.best_score {
        p.push_str(&format!(" (best so far {})", format_score(best)));
    }
    p.push('\n');
    if let Some(why) = &prev.error_message {
        p.push_str(&format!("Why: {why}\n"));
    }
    if let Some(tail) = prev
        .eval_output_tail
        .as_deref()
        .filter(|t| !t.trim().is_empty())
    {
        p.push_str(&format!("Eval output:\n{}\n", tail.trim_end()));
    }
    p.push_str("---");
    vec![p]
}

/// Whether the next iteration continues the previous tail task's agent session.
pub fn continues_session(rec: &LoopRecord) -> bool {
    !rec.fresh_context && !rec.is_pipeline() && rec.current_iteration > 0
}

// ---------------------------------------------------------------------------------
// Evaluation: what the eval gets, and what its output means
// ---------------------------------------------------------------------------------

/// How many lines of an eval's output an iteration keeps.
pub const EVAL_TAIL_LINES: usize = 20;
/// And at most this many bytes of them.
pub const EVAL_TAIL_BYTES: usize = 4096;

/// What a shell eval is run with (spec 9.3): `sh -c <exitCondition>` in the loop's
/// directory, with the loop, iteration and tail task in its environment, for at most
/// `timeout_ms`. The runner adds these variables to the daemon's environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalSpec {
    pub argv: Vec<String>,
    pub working_directory: String,
    pub env: Vec<(String, String)>,
    pub timeout_ms: u64,
}

/// The shell eval of the latest iteration; `None` for an agent eval or before any.
pub fn shell_eval_spec(rec: &LoopRecord) -> Option<EvalSpec> {
    let it = rec.latest.as_ref()?;
    if rec.eval_mode != EvalMode::Shell {
        return None;
    }
    Some(EvalSpec {
        argv: vec!["sh".into(), "-c".into(), rec.exit_condition.clone()],
        working_directory: rec.work_dir().to_string(),
        env: vec![
            ("BACKBEAT_LOOP_ID".into(), rec.id.clone()),
            ("BACKBEAT_ITERATION".into(), it.iteration_number.to_string()),
            (
                "BACKBEAT_TASK_ID".into(),
                it.task_id().unwrap_or_default().to_string(),
            ),
        ],
        timeout_ms: rec.eval_timeout,
    })
}

/// The prompt of an agent eval (v1.1) for the latest iteration: it tells the judge where
/// to look, not to change anything, and how to answer on its last line.
pub fn agent_eval_prompt(rec: &LoopRecord) -> Option<String> {
    let it = rec.latest.as_ref()?;
    if rec.eval_mode != EvalMode::Agent {
        return None;
    }
    let task = it.task_id().unwrap_or_default();
    let mut p = format!(
        "[EVAL] You are judging iteration {} of loop {}. Do not modify any file.\n\
         Working directory: {}\n\
         The work was done by task {task}; `beat logs {task}` shows what its agent said.\n",
        it.iteration_number,
        rec.id,
        rec.work_dir()
    );
    if let Some(pre) = &it.pre_iteration_commit_sha {
        p.push_str(&format!(
            "`git diff {pre}` shows what it changed in the working tree.\n"
        ));
    }
    p.push('\n');
    p.push_str(rec.eval_prompt.as_deref().unwrap_or_default());
    p.push_str("\n\n");
    p.push_str(&match (rec.strategy, rec.eval_direction) {
        (Strategy::Retry, _) => {
            "End your answer with a line holding only PASS or FAIL.".to_string()
        }
        (Strategy::Optimize, dir) => format!(
            "End your answer with a line holding only the score, a number ({} is better).",
            if dir == Some(Direction::Minimize) {
                "lower"
            } else {
                "higher"
            }
        ),
    });
    Some(p)
}

/// How a shell eval's process ended, as its runner saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EvalProcessResult {
    pub exit_code: Option<i32>,
    /// The signal that ended it, as a name (`SIGKILL`).
    pub signal: Option<String>,
    /// Set when it was killed for taking longer than `evalTimeout`.
    pub timed_out_after: Option<u64>,
    pub stdout: String,
    pub stderr: String,
}

/// The result of a shell eval (spec 9.3): retry passes on exit 0; optimize needs exit 0
/// and a leading number on the last non-empty stdout line, else it is a crash.
pub fn shell_eval_report(strategy: Strategy, run: &EvalProcessResult) -> EvalReport {
    let last_line = last_non_empty_line(&run.stdout).or_else(|| last_non_empty_line(&run.stderr));
    let output_tail = output_tail(&run.stdout, &run.stderr);
    let how = match (run.timed_out_after, run.exit_code, &run.signal) {
        (Some(ms), _, _) => Some(format!("the eval timed out after {}", human_duration(ms))),
        (None, Some(0), _) => None,
        (None, Some(code), _) => Some(format!("the eval exited with code {code}")),
        (None, None, Some(sig)) => Some(format!("the eval was killed by signal {sig}")),
        (None, None, None) => Some("the eval ended without an exit status".to_string()),
    };
    let with_stderr = |how: String| match last_non_empty_line(&run.stderr) {
        Some(err) => format!("{how}: {err}"),
        None => how,
    };
    let (verdict, message) = match (strategy, how) {
        (Strategy::Retry, None) => (Verdict::Pass, None),
        (Strategy::Retry, Some(how)) => (Verdict::Fail, Some(with_stderr(how))),
        (Strategy::Optimize, Some(how)) => (Verdict::Crash, Some(with_stderr(how))),
        (Strategy::Optimize, None) => match parse_score(&run.stdout) {
            Some(s) => (Verdict::Score(s), None),
            None => (
                Verdict::Crash,
                Some(match last_non_empty_line(&run.stdout) {
                    Some(line) => format!(
                        "invalid score: the eval's last line '{}' does not start with a number",
                        preview(&line, 80)
                    ),
                    None => "invalid score: the eval printed nothing".to_string(),
                }),
            ),
        },
    };
    EvalReport {
        verdict,
        exit_code: run.exit_code,
        last_line,
        output_tail,
        message,
        usage: None,
    }
}

/// The result of an agent eval: its final answer's last line is the verdict. `failure`
/// is the eval task's reason when it did not complete.
pub fn agent_eval_report(
    strategy: Strategy,
    answer: Option<&str>,
    failure: Option<&str>,
    usage: Option<Usage>,
) -> EvalReport {
    let text = answer.unwrap_or_default();
    let last_line = last_non_empty_line(text);
    let no = match strategy {
        Strategy::Retry => Verdict::Fail,
        Strategy::Optimize => Verdict::Crash,
    };
    let (verdict, message) = match (failure, parse_agent_verdict(strategy, text)) {
        (Some(why), _) => (no, Some(format!("the eval agent failed: {why}"))),
        (None, Some(v)) => (v, None),
        (None, None) => {
            let wanted = match strategy {
                Strategy::Retry => "PASS or FAIL",
                Strategy::Optimize => "a score",
            };
            let got = match &last_line {
                Some(l) => format!("its last line was '{}'", preview(l, 80)),
                None => "it gave no answer".to_string(),
            };
            (
                no,
                Some(format!("the eval agent did not answer {wanted}: {got}")),
            )
        }
    };
    EvalReport {
        verdict,
        exit_code: None,
        last_line,
        output_tail: output_tail(text, ""),
        message,
        usage,
    }
}

/// The score an optimize eval printed: the leading number of its last non-empty line,
/// as the original's `parseFloat` (`7 points` is 7, `-3.5e2 x` is -350). `None` when
/// there is no line, no leading number, or it is not finite.
pub fn parse_score(stdout: &str) -> Option<f64> {
    leading_number(&last_non_empty_line(stdout)?)
}

/// An agent's verdict on its last non-empty line, with light markdown (`**PASS**`,
/// `Score: 7.5`) forgiven. Retry: `pass`/`fail` in any case. Optimize: a number.
pub fn parse_agent_verdict(strategy: Strategy, answer: &str) -> Option<Verdict> {
    let line = last_non_empty_line(answer)?;
    let word = line
        .trim_matches(|c: char| c.is_whitespace() || matches!(c, '*' | '`' | '_' | '"' | '\''))
        .trim_end_matches(['.', '!']);
    match strategy {
        Strategy::Retry if word.eq_ignore_ascii_case("pass") => Some(Verdict::Pass),
        Strategy::Retry if word.eq_ignore_ascii_case("fail") => Some(Verdict::Fail),
        Strategy::Retry => None,
        Strategy::Optimize => {
            let number = match word.get(..6) {
                Some(p) if p.eq_ignore_ascii_case("score:") => word[6..].trim_start(),
                _ => word,
            };
            leading_number(number).map(Verdict::Score)
        }
    }
}

fn last_non_empty_line(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .map(str::to_string)
}

/// The longest prefix of `text` (after leading spaces) that is a decimal number, parsed.
fn leading_number(text: &str) -> Option<f64> {
    let b = text.trim_start().as_bytes();
    let digits = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        i
    };
    let mut i = if matches!(b.first(), Some(b'+' | b'-')) {
        1
    } else {
        0
    };
    let int_end = digits(i);
    let mut end = int_end;
    let mut seen_digit = int_end > i;
    i = int_end;
    if b.get(i) == Some(&b'.') {
        let frac_end = digits(i + 1);
        if frac_end > i + 1 || seen_digit {
            seen_digit |= frac_end > i + 1;
            end = frac_end;
        }
        i = end;
    }
    if !seen_digit {
        return None;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(b.get(i + 1), Some(b'+' | b'-')));
        let exp_end = digits(i + 1 + sign);
        if exp_end > i + 1 + sign {
            end = exp_end;
        }
    }
    let text = std::str::from_utf8(&b[..end]).ok()?;
    text.parse::<f64>().ok().filter(|v| v.is_finite())
}

fn output_tail(stdout: &str, stderr: &str) -> Option<String> {
    let tail = |t: &str| {
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(EVAL_TAIL_LINES)..].join("\n")
    };
    let mut out = tail(stdout);
    if !stderr.trim().is_empty() {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str("--- stderr ---\n");
        out.push_str(&tail(stderr));
    }
    if out.len() > EVAL_TAIL_BYTES {
        let mut cut = out.len() - EVAL_TAIL_BYTES;
        while !out.is_char_boundary(cut) {
            cut += 1;
        }
        out = out[cut..].to_string();
    }
    (!out.trim().is_empty()).then_some(out)
}

// ---------------------------------------------------------------------------------
// Creating a loop: the request and its validation (spec 9.1, issue 8 point 14)
// ---------------------------------------------------------------------------------

/// A `CreateLoop` request with the original's field names; `None` takes the default.
/// `agent` and `workingDirectory` arrive resolved by the front end.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateLoopRequest {
    pub prompt: Option<String>,
    pub strategy: Strategy,
    pub exit_condition: Option<String>,
    pub eval_direction: Option<Direction>,
    pub eval_timeout: Option<u64>,
    pub eval_mode: Option<EvalMode>,
    pub eval_prompt: Option<String>,
    pub eval_agent: Option<String>,
    pub working_directory: String,
    pub max_iterations: Option<u32>,
    pub max_consecutive_failures: Option<u32>,
    pub cooldown_ms: Option<u64>,
    pub fresh_context: Option<bool>,
    pub pipeline_steps: Option<Vec<String>>,
    pub priority: Option<Priority>,
    pub agent: String,
    pub model: Option<String>,
    pub system_prompt: Option<String>,
    pub git_branch: Option<String>,
    #[serde(default)]
    pub worktree: bool,
    pub max_cost: Option<f64>,
    pub max_tokens: Option<u64>,
    pub max_duration: Option<u64>,
    pub patience: Option<u32>,
    pub schedule_id: Option<String>,
}

/// Why a `CreateLoop` request was refused, with what to do instead.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LoopRequestError {
    #[error("a loop needs a prompt, or pipelineSteps (2 to 20) for a pipeline loop")]
    MissingPrompt,
    #[error(
        "give either a prompt or pipelineSteps, not both: a pipeline loop's prompts are its steps"
    )]
    PromptAndSteps,
    #[error(
        "the prompt is {0} bytes; the limit is {MAX_PROMPT_BYTES} (1 MiB). Put long material in a file and point the agent at it"
    )]
    PromptTooLong(usize),
    #[error("a pipeline loop has 2 to 20 steps; {0} given")]
    PipelineSteps(usize),
    #[error("pipeline step {0} is empty: every step needs a prompt")]
    BlankStep(usize),
    #[error(
        "freshContext: false (--checkpoint) applies to single-task loops only, not to pipeline loops"
    )]
    FreshContextOnPipeline,
    #[error(
        "a shell eval needs exitCondition: the command that judges each iteration (retry: exit 0 passes; optimize: prints the score as its last line)"
    )]
    MissingExitCondition,
    #[error(
        "exitCondition is for shell evals; an agent eval (evalMode: agent) is told what to judge by evalPrompt"
    )]
    ExitConditionWithAgentEval,
    #[error(
        "an agent eval (evalMode: agent) needs evalPrompt: what the judging agent should check"
    )]
    MissingEvalPrompt,
    #[error("{0} is for agent evals; set evalMode: agent, or leave it out")]
    AgentEvalFieldInShellMode(&'static str),
    #[error("an optimize loop needs evalDirection: minimize or maximize (--minimize / --maximize)")]
    MissingDirection,
    #[error(
        "evalDirection is for optimize loops; a retry loop passes when its exit condition exits 0"
    )]
    DirectionOnRetry,
    #[error("evalTimeout is {given} ms; a {mode} eval may take {min} to {max} ms")]
    EvalTimeout {
        given: u64,
        mode: &'static str,
        min: u64,
        max: u64,
    },
    #[error("workingDirectory must be an absolute path; '{0}' is not")]
    WorkingDirectory(String),
    #[error("gitBranch '{name}' is not a valid branch name: {why}")]
    BranchName { name: String, why: &'static str },
    #[error("worktree needs gitBranch: the worktree holds the loop's own branch")]
    WorktreeWithoutBranch,
    #[error(
        "maxCost cannot be enforced: {0} does not report its cost. Use maxTokens, maxIterations or maxDuration instead"
    )]
    CostNotReported(String),
    #[error("{field} must be greater than 0 (leave it out for no limit)")]
    ZeroBudget { field: &'static str },
    #[error("maxCost must be a positive number of US dollars")]
    BadCost,
    #[error("patience is for optimize loops: a retry loop stops when its exit condition passes")]
    PatienceOnRetry,
}

/// Validates a request and makes the new loop's record (running, no iteration yet).
/// The git fields (`gitBaseBranch`, `gitStartCommitSha`, `worktreePath`) are the caller's
/// to fill in after it prepared the branch. `reports_cost`: every agent the loop would
/// run (its agent and, for agent evals, the judge) reports the cost of its runs.
pub fn new_loop(
    id: String,
    req: &CreateLoopRequest,
    reports_cost: bool,
    at: Millis,
) -> Result<LoopRecord, LoopRequestError> {
    use LoopRequestError as E;
    let prompt = req.prompt.clone().unwrap_or_default();
    let steps = req.pipeline_steps.clone().unwrap_or_default();
    match (prompt.trim().is_empty(), steps.is_empty()) {
        (true, true) => return Err(E::MissingPrompt),
        (false, false) => return Err(E::PromptAndSteps),
        _ => {}
    }
    if prompt.len() > MAX_PROMPT_BYTES {
        return Err(E::PromptTooLong(prompt.len()));
    }
    if !steps.is_empty() {
        if !PIPELINE_STEPS.contains(&steps.len()) {
            return Err(E::PipelineSteps(steps.len()));
        }
        if let Some(i) = steps.iter().position(|s| s.trim().is_empty()) {
            return Err(E::BlankStep(i + 1));
        }
        if let Some(s) = steps.iter().find(|s| s.len() > MAX_PROMPT_BYTES) {
            return Err(E::PromptTooLong(s.len()));
        }
        if req.fresh_context == Some(false) {
            return Err(E::FreshContextOnPipeline);
        }
    }
    let mode = req.eval_mode.unwrap_or_default();
    let exit_condition = req.exit_condition.clone().unwrap_or_default();
    let has_exit_condition = !exit_condition.trim().is_empty();
    match mode {
        EvalMode::Shell => {
            if !has_exit_condition {
                return Err(E::MissingExitCondition);
            }
            if req.eval_prompt.is_some() {
                return Err(E::AgentEvalFieldInShellMode("evalPrompt"));
            }
            if req.eval_agent.is_some() {
                return Err(E::AgentEvalFieldInShellMode("evalAgent"));
            }
        }
        EvalMode::Agent => {
            if has_exit_condition {
                return Err(E::ExitConditionWithAgentEval);
            }
            if req
                .eval_prompt
                .as_deref()
                .is_none_or(|p| p.trim().is_empty())
            {
                return Err(E::MissingEvalPrompt);
            }
        }
    }
    match (req.strategy, req.eval_direction) {
        (Strategy::Optimize, None) => return Err(E::MissingDirection),
        (Strategy::Retry, Some(_)) => return Err(E::DirectionOnRetry),
        _ => {}
    }
    let eval_timeout = req.eval_timeout.unwrap_or(DEFAULT_EVAL_TIMEOUT_MS);
    let (range, mode_name) = match mode {
        EvalMode::Shell => (SHELL_EVAL_TIMEOUT_MS, "shell"),
        EvalMode::Agent => (AGENT_EVAL_TIMEOUT_MS, "agent"),
    };
    if !range.contains(&eval_timeout) {
        return Err(E::EvalTimeout {
            given: eval_timeout,
            mode: mode_name,
            min: *range.start(),
            max: *range.end(),
        });
    }
    if !req.working_directory.starts_with('/') {
        return Err(E::WorkingDirectory(req.working_directory.clone()));
    }
    if let Some(name) = &req.git_branch {
        check_branch_name(name).map_err(|why| E::BranchName {
            name: name.clone(),
            why,
        })?;
    } else if req.worktree {
        return Err(E::WorktreeWithoutBranch);
    }
    if let Some(cost) = req.max_cost {
        if !(cost.is_finite() && cost > 0.0) {
            return Err(E::BadCost);
        }
        if !reports_cost {
            let mut who = format!("agent '{}'", req.agent);
            if mode == EvalMode::Agent {
                let judge = req.eval_agent.as_deref().unwrap_or(&req.agent);
                if judge != req.agent {
                    who = format!("agent '{}' or the eval agent '{judge}'", req.agent);
                }
            }
            return Err(E::CostNotReported(who));
        }
    }
    if req.max_tokens == Some(0) {
        return Err(E::ZeroBudget { field: "maxTokens" });
    }
    if req.max_duration == Some(0) {
        return Err(E::ZeroBudget {
            field: "maxDuration",
        });
    }
    match (req.strategy, req.patience) {
        (Strategy::Retry, Some(_)) => return Err(E::PatienceOnRetry),
        (_, Some(0)) => return Err(E::ZeroBudget { field: "patience" }),
        _ => {}
    }
    Ok(LoopRecord {
        id,
        strategy: req.strategy,
        prompt,
        pipeline_steps: steps,
        priority: req.priority.unwrap_or_default(),
        agent: req.agent.clone(),
        model: req.model.clone(),
        system_prompt: req.system_prompt.clone(),
        working_directory: req.working_directory.clone(),
        exit_condition,
        eval_direction: req.eval_direction,
        eval_timeout,
        eval_mode: mode,
        eval_prompt: req.eval_prompt.clone(),
        eval_agent: req.eval_agent.clone(),
        max_iterations: req.max_iterations.unwrap_or(DEFAULT_MAX_ITERATIONS),
        max_consecutive_failures: req
            .max_consecutive_failures
            .unwrap_or(DEFAULT_MAX_CONSECUTIVE_FAILURES),
        cooldown_ms: req.cooldown_ms.unwrap_or(0),
        fresh_context: req.fresh_context.unwrap_or(true),
        max_cost: req.max_cost,
        max_tokens: req.max_tokens,
        max_duration: req.max_duration,
        patience: req.patience,
        schedule_id: req.schedule_id.clone(),
        git_branch: req.git_branch.clone(),
        worktree: req.worktree,
        status: LoopStatus::Running,
        created_at: at,
        updated_at: at,
        ..Default::default()
    })
}

/// A branch name git accepts (`git check-ref-format --branch`); the error says why not.
pub fn check_branch_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("it is empty");
    }
    if name.starts_with('-') {
        return Err("it starts with '-'");
    }
    if name == "HEAD" || name == "@" {
        return Err("'HEAD' and '@' name the current commit, not a branch");
    }
    if name.contains("..") {
        return Err("it contains '..'");
    }
    if name.contains("@{") {
        return Err("it contains '@{'");
    }
    if let Some(c) = name
        .chars()
        .find(|c| c.is_ascii_control() || " ~^:?*[\\".contains(*c))
    {
        return Err(if c == ' ' {
            "it contains a space"
        } else if c.is_ascii_control() {
            "it contains a control character"
        } else {
            "it contains one of ~ ^ : ? * [ \\"
        });
    }
    if name.ends_with('.') {
        return Err("it ends with '.'");
    }
    if name.split('/').any(str::is_empty) {
        return Err("it starts or ends with '/' or contains '//'");
    }
    if name.split('/').any(|c| c.starts_with('.')) {
        return Err("a part of it starts with '.'");
    }
    if name.split('/').any(|c| c.ends_with(".lock")) {
        return Err("a part of it ends with '.lock'");
    }
    Ok(())
}

/// A scheduled loop's branch: the name with the fire time as a suffix, so every run
/// gets a branch of its own (`perf-20261130-2215`).
pub fn scheduled_branch_name(branch: &str, fired_at: Millis) -> String {
    let time = chrono::DateTime::from_timestamp_millis(fired_at)
        .map(|t| t.format("%Y%m%d-%H%M%S").to_string())
        .unwrap_or_else(|| fired_at.to_string());
    format!("{branch}-{time}")
}

/// A second git loop may not work in a directory a live git loop already uses (they
/// would commit and reset under each other). `live` are the loops not yet ended.
pub fn check_git_directory_free<'a>(
    work_dir: &str,
    live: impl IntoIterator<Item = &'a LoopRecord>,
) -> Result<(), String> {
    match live.into_iter().find(|l| {
        !l.status.is_terminal()
            && l.git_branch.is_some()
            && !l.worktree
            && l.working_directory == work_dir
    }) {
        Some(l) => Err(format!(
            "loop {} ({}) already works with git in {work_dir}: cancel it, wait for it to end, or give this loop worktree: true (--worktree)",
            l.id,
            l.git_branch.as_deref().unwrap_or_default()
        )),
        None => Ok(()),
    }
}

// ---------------------------------------------------------------------------------
// Views: the original's response shapes (spec 3.3), with the new keys beside them
// ---------------------------------------------------------------------------------

/// A time as the original's loop responses give it: ISO-8601 UTC with milliseconds.
pub fn iso_time(ms: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

/// `loop` of a `LoopStatus` response.
pub fn loop_status_view(rec: &LoopRecord) -> serde_json::Value {
    let mut v = serde_json::json!({
        "id": rec.id,
        "strategy": rec.strategy,
        "status": rec.status,
        "currentIteration": rec.current_iteration,
        "maxIterations": rec.max_iterations,
        "consecutiveFailures": rec.consecutive_failures,
        "maxConsecutiveFailures": rec.max_consecutive_failures,
        "bestScore": rec.best_score,
        "bestIterationId": rec.best_iteration_id,
        "exitCondition": rec.exit_condition,
        "evalDirection": rec.eval_direction,
        "evalTimeout": rec.eval_timeout,
        "evalMode": rec.eval_mode,
        "evalPrompt": rec.eval_prompt,
        "evalAgent": rec.eval_agent,
        "cooldownMs": rec.cooldown_ms,
        "freshContext": rec.fresh_context,
        "promptPreview": rec.prompt_preview(),
        "agent": rec.agent,
        "workingDirectory": rec.working_directory,
        "gitBranch": rec.git_branch,
        "gitBaseBranch": rec.git_base_branch,
        "gitStartCommitSha": rec.git_start_commit_sha,
        "keptCommitSha": rec.kept_commit_sha,
        "worktree": rec.worktree,
        "worktreePath": rec.worktree_path,
        "maxCost": rec.max_cost,
        "maxTokens": rec.max_tokens,
        "maxDuration": rec.max_duration,
        "patience": rec.patience,
        "totalCostUsd": rec.total_cost_usd,
        "totalTokens": rec.total_tokens(),
        "reason": rec.reason,
        "scheduleId": rec.schedule_id,
        "createdAt": iso_time(rec.created_at),
        "updatedAt": iso_time(rec.updated_at),
        "completedAt": rec.completed_at.map(iso_time),
        "notBefore": rec.not_before.map(iso_time),
    });
    if rec.is_pipeline() {
        v["isPipeline"] = true.into();
        v["pipelineSteps"] = rec
            .pipeline_steps
            .iter()
            .enumerate()
            .map(|(index, step)| serde_json::json!({"index": index, "prompt": preview(step, 80)}))
            .collect();
    }
    v
}

/// One entry of `iterations` in a `LoopStatus` response (and of `beat loop results --json`).
pub fn iteration_view(it: &IterationRecord) -> serde_json::Value {
    serde_json::json!({
        "iterationNumber": it.iteration_number,
        "status": it.status,
        "taskId": it.task_id(),
        "pipelineTaskIds": (it.task_ids.len() > 1).then_some(&it.task_ids),
        "score": it.score,
        "bestScore": it.best_score,
        "exitCode": it.exit_code,
        "errorMessage": it.error_message,
        "evalOutput": it.eval_output,
        "gitBranch": it.git_branch,
        "gitCommitSha": it.git_commit_sha,
        "gitDiffSummary": it.git_diff_summary,
        "durationMs": it.duration_ms,
        "usage": {
            "inputTokens": it.usage.input_tokens,
            "outputTokens": it.usage.output_tokens,
            "costUsd": it.usage.cost_usd,
        },
        "note": it.note,
        "startedAt": iso_time(it.started_at),
        "completedAt": it.completed_at.map(iso_time),
    })
}

/// One entry of a `ListLoops` response.
pub fn loop_list_view(rec: &LoopRecord) -> serde_json::Value {
    serde_json::json!({
        "id": rec.id,
        "strategy": rec.strategy,
        "status": rec.status,
        "currentIteration": rec.current_iteration,
        "maxIterations": rec.max_iterations,
        "bestScore": rec.best_score,
        "promptPreview": rec.prompt_preview(),
        "isPipeline": rec.is_pipeline(),
        "createdAt": iso_time(rec.created_at),
    })
}

// ---------------------------------------------------------------------------------
// The results ledger
// ---------------------------------------------------------------------------------

/// The ledger's columns (like autoresearch's results.tsv).
pub const LEDGER_HEADER: &str =
    "iteration\tstatus\tscore\tbest\tcommit\tduration_s\ttokens\tcost_usd\tnote";

/// The results ledger as TSV: the header, then one line per iteration in the order given.
pub fn ledger_tsv(iterations: &[IterationRecord]) -> String {
    let mut out = String::from(LEDGER_HEADER);
    out.push('\n');
    let score = |s: Option<f64>| s.map(format_score).unwrap_or_default();
    for it in iterations {
        let note = it
            .note
            .clone()
            .or_else(|| it.error_message.clone())
            .unwrap_or_default()
            .replace(['\t', '\n', '\r'], " ");
        let fields = [
            it.iteration_number.to_string(),
            it.status.to_string(),
            score(it.score),
            score(it.best_score),
            it.git_commit_sha
                .as_deref()
                .map(|s| s.chars().take(7).collect())
                .unwrap_or_default(),
            it.duration_ms
                .map(|d| format!("{:.1}", d as f64 / 1000.0))
                .unwrap_or_default(),
            (it.usage.input_tokens + it.usage.output_tokens).to_string(),
            it.usage
                .cost_usd
                .map(|c| format!("{c:.4}"))
                .unwrap_or_default(),
            note,
        ];
        out.push_str(&fields.join("\t"));
        out.push('\n');
    }
    out
}

const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// One bar per score, low to high; `·` where an iteration has no score.
pub fn sparkline(scores: &[Option<f64>]) -> String {
    let known = scores.iter().flatten().copied();
    let (lo, hi) = known.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), s| {
        (lo.min(s), hi.max(s))
    });
    scores
        .iter()
        .map(|s| match s {
            None => '·',
            Some(_) if hi <= lo => BARS[BARS.len() / 2],
            Some(s) => {
                let at = ((s - lo) / (hi - lo) * (BARS.len() - 1) as f64).round();
                BARS[(at as usize).min(BARS.len() - 1)]
            }
        })
        .collect()
}

/// The scores of the last `width` iterations as one line a person reads at a glance:
/// `scores ▁▃▅·█  low 1 high 7  best 7 (iteration 5)`. `None` when nothing scored.
pub fn score_chart(iterations: &[IterationRecord], width: usize) -> Option<String> {
    let shown = &iterations[iterations.len().saturating_sub(width)..];
    let scores: Vec<Option<f64>> = shown.iter().map(|i| i.score).collect();
    let known: Vec<f64> = scores.iter().flatten().copied().collect();
    if known.is_empty() {
        return None;
    }
    let lo = known.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = known.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut line = format!(
        "scores {}  low {} high {}",
        sparkline(&scores),
        format_score(lo),
        format_score(hi)
    );
    if let Some(best) = iterations
        .iter()
        .rev()
        .find(|i| i.status == IterationStatus::Keep)
    {
        line.push_str(&format!(
            "  best {} (iteration {})",
            best.score.map(format_score).unwrap_or_default(),
            best.iteration_number
        ));
    }
    Some(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Millis = 1_000_000;

    fn request(strategy: Strategy) -> CreateLoopRequest {
        CreateLoopRequest {
            prompt: Some("make the tests pass".into()),
            strategy,
            exit_condition: Some("cargo test".into()),
            eval_direction: (strategy == Strategy::Optimize).then_some(Direction::Maximize),
            working_directory: "/repo".into(),
            agent: "claude".into(),
            ..Default::default()
        }
    }

    /// A loop driven the way its actor would, one journal event at a time.
    struct Drive {
        rec: LoopRecord,
        now: Millis,
    }

    impl Drive {
        fn new(req: CreateLoopRequest) -> Drive {
            let mut rec = new_loop("loop-1".into(), &req, true, T0).unwrap();
            if rec.git_branch.is_some() {
                rec.git_start_commit_sha = Some("start".into());
            }
            let rec = apply(
                None,
                &LoopEvent::Created {
                    record: Box::new(rec),
                },
            )
            .unwrap();
            Drive { rec, now: T0 }
        }

        fn with(strategy: Strategy, edit: impl FnOnce(&mut CreateLoopRequest)) -> Drive {
            let mut req = request(strategy);
            edit(&mut req);
            Drive::new(req)
        }

        fn ev(&mut self, e: LoopEvent) {
            self.rec = apply(Some(&self.rec), &e).unwrap_or_else(|err| panic!("{err}"));
        }

        fn refused(&self, e: LoopEvent) -> bool {
            apply(Some(&self.rec), &e).is_err()
        }

        fn next(&self) -> NextStep {
            decide_next(&self.rec, self.now)
        }

        fn tick(&mut self, ms: Millis) {
            self.now += ms;
        }

        fn start(&mut self) -> u32 {
            let NextStep::Start { number } = self.next() else {
                panic!("expected a start, got {:?}", self.next());
            };
            let steps = self.rec.pipeline_steps.len().max(1);
            let task_ids = (1..=steps).map(|s| format!("task-{number}-{s}")).collect();
            self.ev(LoopEvent::IterationStarted {
                at: self.now,
                number,
                task_ids,
            });
            number
        }

        fn number(&self) -> u32 {
            self.rec.current_iteration
        }

        fn end_task(&mut self, step: usize, kind: TaskEndKind, usage: Option<Usage>) {
            let task_id = self.rec.latest.as_ref().unwrap().task_ids[step].clone();
            self.ev(LoopEvent::TaskEnded {
                at: self.now,
                number: self.number(),
                task_id,
                end: TaskEnd {
                    kind,
                    reason: "timed out after 30 min".into(),
                    exit_code: None,
                    usage,
                    rate_limited: false,
                    rate_limit_reset: None,
                },
            });
        }

        fn complete_tasks(&mut self) {
            for step in 0..self.rec.latest.as_ref().unwrap().task_ids.len() {
                self.end_task(step, TaskEndKind::Completed, None);
            }
        }

        fn evaluate(&mut self, verdict: Verdict) {
            self.ev(LoopEvent::Evaluated {
                at: self.now,
                number: self.number(),
                report: EvalReport {
                    verdict,
                    exit_code: Some(0),
                    last_line: None,
                    output_tail: None,
                    message: None,
                    usage: None,
                },
            });
        }

        /// Does what `Settle` asks, as git would, and journals it.
        fn settle(&mut self) {
            let NextStep::Settle { number, git } = self.next() else {
                panic!("expected to settle, got {:?}", self.next());
            };
            let commit_sha = match git {
                GitStep::None => None,
                GitStep::Commit { .. } => Some(format!("commit-{number}")),
                GitStep::ResetTo { sha } => Some(sha),
            };
            self.ev(LoopEvent::Settled {
                at: self.now,
                number,
                commit_sha,
                diff_summary: None,
            });
        }

        /// One whole iteration whose task completes and whose eval says `verdict`.
        fn iteration(&mut self, verdict: Verdict) -> u32 {
            let n = self.start();
            self.tick(1000);
            self.complete_tasks();
            assert_eq!(
                self.next(),
                NextStep::Evaluate {
                    number: n,
                    eval_id: None
                }
            );
            self.evaluate(verdict);
            self.settle();
            n
        }

        /// One whole iteration whose task fails (timed out, lost).
        fn failed_iteration(&mut self) -> u32 {
            let n = self.start();
            self.end_task(0, TaskEndKind::Failed, None);
            self.settle();
            n
        }

        fn status_of_latest(&self) -> IterationStatus {
            self.rec.latest.as_ref().unwrap().status
        }

        fn finish(&self) -> (LoopStatus, String) {
            match self.next() {
                NextStep::Finish { status, reason } => (status, reason),
                other => panic!("expected the loop to finish, got {other:?}"),
            }
        }
    }

    // --- retry ---

    #[test]
    fn a_retry_loop_completes_only_when_its_condition_passes() {
        let mut d = Drive::with(Strategy::Retry, |_| {});
        d.iteration(Verdict::Fail);
        assert_eq!(d.status_of_latest(), IterationStatus::Fail);
        assert_eq!(d.rec.consecutive_failures, 1);
        d.iteration(Verdict::Pass);
        assert_eq!(d.status_of_latest(), IterationStatus::Pass);
        assert_eq!(d.rec.consecutive_failures, 0);
        let (status, reason) = d.finish();
        assert_eq!(status, LoopStatus::Completed);
        assert_eq!(reason, "the exit condition passed at iteration 2");
    }

    #[test]
    fn a_retry_loop_that_reaches_max_iterations_without_passing_fails() {
        // The original ended it `completed` (W8).
        let mut d = Drive::with(Strategy::Retry, |r| {
            r.max_iterations = Some(3);
            r.max_consecutive_failures = Some(0);
        });
        for _ in 0..3 {
            d.iteration(Verdict::Fail);
        }
        let (status, reason) = d.finish();
        assert_eq!(status, LoopStatus::Failed);
        assert!(reason.contains("maxIterations (3 iterations)"), "{reason}");
        assert!(reason.contains("without the exit condition passing"));
    }

    #[test]
    fn max_iterations_counts_iterations_whose_task_failed() {
        // W8: the original never checked maxIterations on a task failure and spun forever
        // with maxConsecutiveFailures 0.
        let mut d = Drive::with(Strategy::Retry, |r| {
            r.max_iterations = Some(2);
            r.max_consecutive_failures = Some(0);
        });
        d.failed_iteration();
        d.failed_iteration();
        assert_eq!(d.rec.iterations_counted, 2);
        assert_eq!(d.finish().0, LoopStatus::Failed);
        let refused = d.refused(LoopEvent::IterationStarted {
            at: d.now,
            number: 3,
            task_ids: vec!["task-x".into()],
        });
        assert!(refused, "a third iteration must not start");
    }

    #[test]
    fn consecutive_failures_end_a_retry_loop_failed() {
        let mut d = Drive::with(Strategy::Retry, |r| r.max_consecutive_failures = Some(2));
        d.iteration(Verdict::Fail);
        assert!(matches!(d.next(), NextStep::Start { number: 2 }));
        d.failed_iteration();
        let (status, reason) = d.finish();
        assert_eq!(status, LoopStatus::Failed);
        assert!(
            reason.contains("maxConsecutiveFailures (2 failures in a row)"),
            "{reason}"
        );
    }

    #[test]
    fn a_timed_out_or_lost_task_is_a_failure_that_counts() {
        let mut d = Drive::with(Strategy::Retry, |_| {});
        d.start();
        d.end_task(0, TaskEndKind::Failed, None);
        let it = d.rec.latest.clone().unwrap();
        assert_eq!(it.status, IterationStatus::Fail);
        assert_eq!(
            it.error_message.as_deref(),
            Some("the task failed: timed out after 30 min")
        );
        assert_eq!(d.rec.consecutive_failures, 1);
        assert_eq!(d.rec.iterations_counted, 1);
    }

    #[test]
    fn a_user_cancelled_iteration_does_not_count_and_the_loop_goes_on() {
        let mut d = Drive::with(Strategy::Retry, |r| {
            r.max_iterations = Some(1);
            r.max_consecutive_failures = Some(1);
        });
        d.start();
        d.end_task(0, TaskEndKind::Cancelled, None);
        assert_eq!(d.status_of_latest(), IterationStatus::Cancelled);
        d.settle();
        assert_eq!(
            (d.rec.iterations_counted, d.rec.consecutive_failures),
            (0, 0)
        );
        // Never stalls (W9): the next iteration is due at once, with a new number.
        assert_eq!(d.next(), NextStep::Start { number: 2 });
        d.iteration(Verdict::Pass);
        assert_eq!(d.finish().0, LoopStatus::Completed);
    }

    // --- optimize ---

    #[test]
    fn optimize_keeps_strict_improvements_and_discards_the_rest() {
        let mut d = Drive::with(Strategy::Optimize, |r| r.max_consecutive_failures = Some(0));
        d.iteration(Verdict::Score(5.0));
        assert_eq!(d.status_of_latest(), IterationStatus::Keep);
        d.iteration(Verdict::Score(7.0));
        assert_eq!(d.status_of_latest(), IterationStatus::Keep);
        d.iteration(Verdict::Score(7.0));
        assert_eq!(
            d.status_of_latest(),
            IterationStatus::Discard,
            "equal is not better"
        );
        d.iteration(Verdict::Score(6.0));
        assert_eq!(d.status_of_latest(), IterationStatus::Discard);
        let it = d.rec.latest.clone().unwrap();
        assert_eq!((it.score, it.best_score), (Some(6.0), Some(7.0)));
        assert_eq!(
            (d.rec.best_score, d.rec.best_iteration_id),
            (Some(7.0), Some(2))
        );
        assert_eq!(d.rec.consecutive_failures, 2);
        d.iteration(Verdict::Crash);
        assert_eq!(d.status_of_latest(), IterationStatus::Crash);
        assert_eq!(d.rec.consecutive_failures, 3);
    }

    #[test]
    fn minimize_prefers_lower_scores() {
        let mut d = Drive::with(Strategy::Optimize, |r| {
            r.eval_direction = Some(Direction::Minimize)
        });
        d.iteration(Verdict::Score(5.0));
        d.iteration(Verdict::Score(-3.5e2));
        assert_eq!(d.status_of_latest(), IterationStatus::Keep);
        d.iteration(Verdict::Score(1.0));
        assert_eq!(d.status_of_latest(), IterationStatus::Discard);
        assert_eq!(d.rec.best_score, Some(-350.0));
    }

    #[test]
    fn an_optimize_loop_at_a_limit_completes_when_it_kept_something() {
        let mut d = Drive::with(Strategy::Optimize, |r| r.max_iterations = Some(2));
        d.iteration(Verdict::Score(0.5));
        d.iteration(Verdict::Score(0.25));
        let (status, reason) = d.finish();
        assert_eq!(status, LoopStatus::Completed);
        assert_eq!(
            reason,
            "reached maxIterations (2 iterations); best score 0.5 at iteration 1"
        );
    }

    #[test]
    fn an_optimize_loop_at_a_limit_fails_when_nothing_was_kept() {
        let mut d = Drive::with(Strategy::Optimize, |r| r.max_consecutive_failures = Some(2));
        d.iteration(Verdict::Crash);
        d.failed_iteration();
        let (status, reason) = d.finish();
        assert_eq!(status, LoopStatus::Failed);
        assert!(reason.ends_with("; no iteration was kept"), "{reason}");
    }

    #[test]
    fn patience_ends_an_optimize_loop_that_stopped_improving() {
        let mut d = Drive::with(Strategy::Optimize, |r| {
            r.patience = Some(2);
            r.max_consecutive_failures = Some(0);
        });
        d.iteration(Verdict::Score(1.0));
        d.iteration(Verdict::Score(0.5));
        d.iteration(Verdict::Score(2.0));
        assert_eq!(
            d.rec.iterations_without_improvement, 0,
            "a keep resets patience"
        );
        d.iteration(Verdict::Score(2.0));
        assert!(matches!(d.next(), NextStep::Start { .. }));
        d.iteration(Verdict::Crash);
        let (status, reason) = d.finish();
        assert_eq!(status, LoopStatus::Completed);
        assert_eq!(
            reason,
            "no better score in 2 iterations in a row (patience 2); best score 2 at iteration 3"
        );
    }

    // --- budgets ---

    fn usage(tokens: u64, cost: Option<f64>) -> Option<Usage> {
        Some(Usage {
            input_tokens: tokens,
            output_tokens: tokens,
            cost_usd: cost,
            ..Default::default()
        })
    }

    #[test]
    fn the_cost_budget_ends_a_retry_loop_failed() {
        let mut d = Drive::with(Strategy::Retry, |r| r.max_cost = Some(1.0));
        for expected_total in [0.6, 1.2] {
            d.start();
            d.end_task(0, TaskEndKind::Completed, usage(10, Some(0.6)));
            d.evaluate(Verdict::Fail);
            d.settle();
            assert!((d.rec.total_cost_usd - expected_total).abs() < 1e-9);
        }
        let (status, reason) = d.finish();
        assert_eq!(status, LoopStatus::Failed);
        assert!(
            reason.starts_with("reached maxCost ($1.2000 spent of $1)"),
            "{reason}"
        );
        assert_eq!(d.rec.latest.unwrap().usage.cost_usd, Some(0.6));
    }

    #[test]
    fn the_token_budget_counts_agent_eval_usage_too() {
        let mut d = Drive::with(Strategy::Optimize, |r| r.max_tokens = Some(100));
        d.start();
        d.end_task(0, TaskEndKind::Completed, usage(20, None));
        d.ev(LoopEvent::Evaluated {
            at: d.now,
            number: 1,
            report: EvalReport {
                verdict: Verdict::Score(3.0),
                exit_code: None,
                last_line: Some("3".into()),
                output_tail: None,
                message: None,
                usage: usage(10, None),
            },
        });
        d.settle();
        assert_eq!(d.rec.total_tokens(), 60);
        assert!(matches!(d.next(), NextStep::Start { .. }));
        d.start();
        d.end_task(0, TaskEndKind::Failed, usage(25, None));
        d.settle();
        let (status, reason) = d.finish();
        assert_eq!(status, LoopStatus::Completed, "it kept iteration 1");
        assert!(
            reason.starts_with("reached maxTokens (110 tokens used of 100)"),
            "{reason}"
        );
    }

    #[test]
    fn the_duration_budget_leaves_paused_time_out() {
        let mut d = Drive::with(Strategy::Retry, |r| r.max_duration = Some(10_000));
        d.iteration(Verdict::Fail);
        d.ev(LoopEvent::Paused {
            at: d.now,
            force: false,
        });
        d.tick(60_000);
        assert_eq!(
            d.next(),
            NextStep::Paused,
            "paused time is not running time"
        );
        d.ev(LoopEvent::Resumed { at: d.now });
        assert!(matches!(d.next(), NextStep::Start { number: 2 }));
        d.tick(9_000);
        let (status, reason) = d.finish();
        assert_eq!(status, LoopStatus::Failed);
        assert!(reason.starts_with("reached maxDuration (10 s)"), "{reason}");
    }

    // --- waiting ---

    #[test]
    fn cooldown_delays_the_next_iteration() {
        let mut d = Drive::with(Strategy::Retry, |r| r.cooldown_ms = Some(5_000));
        d.iteration(Verdict::Fail);
        let until = d.now + 5_000;
        assert_eq!(d.next(), NextStep::WaitUntil { at: until });
        let early = d.refused(LoopEvent::IterationStarted {
            at: d.now,
            number: 2,
            task_ids: vec!["task-2".into()],
        });
        assert!(early, "no start during the cooldown");
        d.now = until;
        assert_eq!(d.start(), 2);
    }

    #[test]
    fn a_rate_limited_iteration_waits_and_is_not_a_failure() {
        let mut d = Drive::with(Strategy::Retry, |r| r.max_consecutive_failures = Some(1));
        d.start();
        d.ev(LoopEvent::RateLimited {
            at: d.now,
            number: 1,
            task_id: "task-1-1".into(),
            until: d.now + 30_000,
        });
        assert_eq!(d.rec.consecutive_failures, 0);
        assert_eq!(
            d.rec.latest.as_ref().unwrap().rate_limited_until,
            Some(d.now + 30_000)
        );
        assert_eq!(d.next(), NextStep::AwaitTasks { number: 1 });
        let reset = d.now + 90_000;
        d.ev(LoopEvent::TaskEnded {
            at: d.now,
            number: 1,
            task_id: "task-1-1".into(),
            end: TaskEnd {
                kind: TaskEndKind::Failed,
                reason: "rate limited by the provider (HTTP 429)".into(),
                exit_code: Some(1),
                usage: None,
                rate_limited: true,
                rate_limit_reset: Some(reset),
            },
        });
        d.settle();
        assert_eq!(
            d.rec.consecutive_failures, 0,
            "a rate limit is not a failure"
        );
        assert_eq!(d.next(), NextStep::WaitUntil { at: reset });
        d.now = reset;
        assert_eq!(d.start(), 2);
    }

    // --- pause, resume, cancel ---

    #[test]
    fn a_graceful_pause_lets_the_iteration_finish_and_starts_no_other() {
        let mut d = Drive::with(Strategy::Retry, |_| {});
        d.start();
        d.ev(LoopEvent::Paused {
            at: d.now,
            force: false,
        });
        assert_eq!(d.next(), NextStep::AwaitTasks { number: 1 });
        d.complete_tasks();
        d.evaluate(Verdict::Fail);
        d.settle();
        assert_eq!(d.next(), NextStep::Paused);
        assert!(d.refused(LoopEvent::Paused {
            at: d.now,
            force: false
        }));
        d.ev(LoopEvent::Resumed { at: d.now });
        d.iteration(Verdict::Pass);
        assert_eq!(d.finish().0, LoopStatus::Completed);
    }

    #[test]
    fn a_pass_while_paused_still_completes_the_loop() {
        let mut d = Drive::with(Strategy::Retry, |_| {});
        d.start();
        d.ev(LoopEvent::Paused {
            at: d.now,
            force: false,
        });
        d.complete_tasks();
        d.evaluate(Verdict::Pass);
        d.settle();
        assert_eq!(d.finish().0, LoopStatus::Completed);
    }

    #[test]
    fn a_forced_pause_cancels_every_task_of_the_iteration_then_resets() {
        let mut d = Drive::with(Strategy::Retry, |r| {
            r.prompt = None;
            r.pipeline_steps = Some(vec!["a".into(), "b".into(), "c".into()]);
            r.git_branch = Some("loop/x".into());
        });
        d.start();
        d.end_task(0, TaskEndKind::Completed, None);
        d.ev(LoopEvent::Paused {
            at: d.now,
            force: true,
        });
        assert_eq!(d.status_of_latest(), IterationStatus::Cancelled);
        // Every step still running is to be stopped, not only the tail (W27).
        assert_eq!(
            d.next(),
            NextStep::StopTasks {
                number: 1,
                task_ids: vec!["task-1-2".into(), "task-1-3".into()]
            }
        );
        d.end_task(1, TaskEndKind::Cancelled, None);
        d.end_task(2, TaskEndKind::Cancelled, None);
        assert_eq!(
            d.next(),
            NextStep::Settle {
                number: 1,
                git: GitStep::ResetTo {
                    sha: "start".into()
                }
            }
        );
        d.settle();
        assert_eq!(d.next(), NextStep::Paused);
        assert_eq!(d.rec.iterations_counted, 0);
    }

    #[test]
    fn cancel_ends_the_loop_and_its_iteration_and_nothing_else_applies() {
        let mut d = Drive::with(Strategy::Retry, |_| {});
        d.start();
        d.ev(LoopEvent::Cancelled {
            at: d.now,
            reason: "wrong repo".into(),
        });
        assert_eq!(d.rec.status, LoopStatus::Cancelled);
        assert_eq!(d.rec.reason.as_deref(), Some("wrong repo"));
        assert_eq!(d.status_of_latest(), IterationStatus::Cancelled);
        assert_eq!(d.next(), NextStep::Done);
        // Its task's late end still counts its usage, once.
        d.end_task(0, TaskEndKind::Cancelled, usage(5, Some(0.1)));
        assert_eq!(d.rec.total_tokens(), 10);
        assert_eq!(d.status_of_latest(), IterationStatus::Cancelled);
        assert!(d.refused(LoopEvent::Resumed { at: d.now }));
        assert!(d.refused(LoopEvent::Cancelled {
            at: d.now,
            reason: "again".into()
        }));
        assert!(d.refused(LoopEvent::Finished {
            at: d.now,
            status: LoopStatus::Completed,
            reason: "x".into()
        }));
    }

    // --- pipelines ---

    #[test]
    fn a_pipeline_iteration_is_judged_after_its_last_step_only() {
        let mut d = Drive::with(Strategy::Retry, |r| {
            r.prompt = None;
            r.pipeline_steps = Some(vec!["plan".into(), "build".into()]);
        });
        d.start();
        d.end_task(0, TaskEndKind::Completed, None);
        assert_eq!(d.next(), NextStep::AwaitTasks { number: 1 });
        d.end_task(1, TaskEndKind::Completed, None);
        assert!(matches!(d.next(), NextStep::Evaluate { number: 1, .. }));
    }

    #[test]
    fn a_failed_pipeline_step_fails_the_iteration_and_stops_the_rest() {
        let mut d = Drive::with(Strategy::Retry, |r| {
            r.prompt = None;
            r.pipeline_steps = Some(vec!["a".into(), "b".into(), "c".into()]);
        });
        d.start();
        d.end_task(0, TaskEndKind::Failed, None);
        let it = d.rec.latest.clone().unwrap();
        assert_eq!(it.status, IterationStatus::Fail);
        assert_eq!(
            it.error_message.as_deref(),
            Some("pipeline step 1 of 3 failed: timed out after 30 min")
        );
        assert!(
            matches!(d.next(), NextStep::StopTasks { ref task_ids, .. } if task_ids.len() == 2)
        );
    }

    // --- git ---

    #[test]
    fn keep_commits_and_the_rest_reset_to_the_last_kept_commit() {
        let mut d = Drive::with(Strategy::Optimize, |r| r.git_branch = Some("perf".into()));
        d.start();
        d.complete_tasks();
        d.evaluate(Verdict::Crash);
        assert_eq!(
            d.next(),
            NextStep::Settle {
                number: 1,
                git: GitStep::ResetTo {
                    sha: "start".into()
                }
            }
        );
        d.settle();
        d.start();
        d.complete_tasks();
        d.evaluate(Verdict::Score(0.91));
        assert_eq!(
            d.next(),
            NextStep::Settle {
                number: 2,
                git: GitStep::Commit {
                    message: "backbeat loop loop-1 iteration 2: keep, score 0.91".into()
                }
            }
        );
        d.settle();
        assert_eq!(d.rec.kept_commit_sha.as_deref(), Some("commit-2"));
        d.start();
        assert_eq!(
            d.rec
                .latest
                .as_ref()
                .unwrap()
                .pre_iteration_commit_sha
                .as_deref(),
            Some("commit-2")
        );
        d.complete_tasks();
        d.evaluate(Verdict::Score(0.5));
        assert!(matches!(
            d.next(),
            NextStep::Settle { git: GitStep::ResetTo { ref sha }, .. } if sha == "commit-2"
        ));
    }

    #[test]
    fn without_a_branch_git_is_left_alone() {
        let mut d = Drive::with(Strategy::Retry, |_| {});
        d.start();
        d.complete_tasks();
        d.evaluate(Verdict::Pass);
        assert_eq!(
            d.next(),
            NextStep::Settle {
                number: 1,
                git: GitStep::None
            }
        );
    }

    #[test]
    fn a_git_loop_needs_its_start_commit() {
        let mut rec = new_loop(
            "loop-g".into(),
            &CreateLoopRequest {
                git_branch: Some("b".into()),
                ..request(Strategy::Retry)
            },
            true,
            T0,
        )
        .unwrap();
        let created = |r: &LoopRecord| {
            apply(
                None,
                &LoopEvent::Created {
                    record: Box::new(r.clone()),
                },
            )
        };
        assert!(created(&rec).is_err());
        rec.git_start_commit_sha = Some("abc".into());
        assert!(created(&rec).is_ok());
    }

    // --- journal discipline ---

    #[test]
    fn each_result_is_recorded_once_and_numbers_are_never_reused() {
        let mut d = Drive::with(Strategy::Retry, |_| {});
        d.start();
        d.end_task(0, TaskEndKind::Completed, None);
        let again = LoopEvent::TaskEnded {
            at: d.now,
            number: 1,
            task_id: "task-1-1".into(),
            end: TaskEnd {
                kind: TaskEndKind::Completed,
                reason: String::new(),
                exit_code: Some(0),
                usage: None,
                rate_limited: false,
                rate_limit_reset: None,
            },
        };
        assert!(d.refused(again), "a task's end is recorded once");
        d.evaluate(Verdict::Fail);
        assert!(
            d.refused(LoopEvent::Evaluated {
                at: d.now,
                number: 1,
                report: EvalReport {
                    verdict: Verdict::Pass,
                    exit_code: Some(0),
                    last_line: None,
                    output_tail: None,
                    message: None,
                    usage: None
                }
            }),
            "an eval result is recorded once"
        );
        d.settle();
        for number in [1, 3] {
            assert!(d.refused(LoopEvent::IterationStarted {
                at: d.now,
                number,
                task_ids: vec!["task-n".into()]
            }));
        }
        assert_eq!(d.start(), 2);
    }

    #[test]
    fn a_verdict_must_suit_the_strategy() {
        let mut d = Drive::with(Strategy::Retry, |_| {});
        d.start();
        d.complete_tasks();
        assert!(d.refused(LoopEvent::Evaluated {
            at: d.now,
            number: 1,
            report: EvalReport {
                verdict: Verdict::Score(1.0),
                exit_code: Some(0),
                last_line: None,
                output_tail: None,
                message: None,
                usage: None
            }
        }));
    }

    #[test]
    fn records_and_events_round_trip_through_json_with_the_original_keys() {
        let mut d = Drive::with(Strategy::Optimize, |_| {});
        d.iteration(Verdict::Score(4.5));
        let json = serde_json::to_value(&d.rec).unwrap();
        for key in [
            "strategy",
            "currentIteration",
            "maxIterations",
            "consecutiveFailures",
            "maxConsecutiveFailures",
            "bestScore",
            "bestIterationId",
            "exitCondition",
            "evalDirection",
            "cooldownMs",
            "freshContext",
            "workingDirectory",
            "gitBranch",
            "gitBaseBranch",
            "scheduleId",
            "createdAt",
            "updatedAt",
            "completedAt",
        ] {
            assert!(json.get(key).is_some(), "missing {key}");
        }
        assert_eq!(json["latest"]["status"], "keep");
        assert_eq!(json["evalDirection"], "maximize");
        let back: LoopRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, d.rec);
        let ev = LoopEvent::Evaluated {
            at: 1,
            number: 1,
            report: EvalReport {
                verdict: Verdict::Score(-2.5),
                exit_code: Some(0),
                last_line: Some("-2.5".into()),
                output_tail: None,
                message: None,
                usage: None,
            },
        };
        let text = serde_json::to_string(&ev).unwrap();
        assert!(text.contains(r#""type":"evaluated""#), "{text}");
        assert_eq!(serde_json::from_str::<LoopEvent>(&text).unwrap(), ev);
    }

    // --- prompts ---

    #[test]
    fn a_checkpoint_loop_tells_the_next_iteration_how_the_last_one_went() {
        let mut d = Drive::with(Strategy::Optimize, |r| {
            r.fresh_context = Some(false);
            r.git_branch = Some("perf".into());
        });
        assert_eq!(
            iteration_prompts(&d.rec, None, None),
            ["make the tests pass"]
        );
        assert!(!continues_session(&d.rec), "nothing to continue yet");
        d.start();
        d.complete_tasks();
        d.ev(LoopEvent::Evaluated {
            at: d.now,
            number: 1,
            report: EvalReport {
                verdict: Verdict::Crash,
                exit_code: Some(2),
                last_line: Some("error: 3 tests failed".into()),
                output_tail: Some("running 9 tests\nerror: 3 tests failed".into()),
                message: Some("the eval exited with code 2".into()),
                usage: None,
            },
        });
        d.settle();
        assert!(continues_session(&d.rec));
        let cp = crate::model::task::Checkpoint {
            output_summary: "I rewrote the parser.\n".into(),
            error_summary: Some("warning: unused".into()),
            ..Default::default()
        };
        let prev = d.rec.latest.clone().unwrap();
        assert_eq!(
            iteration_prompts(&d.rec, Some(&prev), Some(&cp)),
            [
                "make the tests pass\n\n--- Previous Iteration Context ---\n\
              Output: I rewrote the parser.\n\
              Errors: warning: unused\n\
              Git commit: start\n\
              Iteration 1 status: crash\n\
              Why: the eval exited with code 2\n\
              Eval output:\nrunning 9 tests\nerror: 3 tests failed\n---"
            ]
        );
        d.rec.fresh_context = true;
        assert_eq!(
            iteration_prompts(&d.rec, Some(&prev), Some(&cp)),
            ["make the tests pass"]
        );
        assert!(!continues_session(&d.rec));
    }

    #[test]
    fn a_pipeline_iteration_asks_each_step_its_own_prompt() {
        let d = Drive::with(Strategy::Retry, |r| {
            r.prompt = None;
            r.pipeline_steps = Some(vec!["plan".into(), "build".into()]);
        });
        assert_eq!(iteration_prompts(&d.rec, None, None), ["plan", "build"]);
    }

    // --- parsing evals ---

    #[test]
    fn scores_are_the_leading_number_of_the_last_non_empty_line() {
        let cases: &[(&str, Option<f64>)] = &[
            ("7 points", Some(7.0)),
            ("-3.5e2 x", Some(-350.0)),
            ("building...\nscore follows\n  0.91  \n\n", Some(0.91)),
            ("+.5", Some(0.5)),
            ("5.", Some(5.0)),
            ("1e", Some(1.0)),
            ("2e+3ms", Some(2000.0)),
            ("0x10", Some(0.0)),
            ("42\nno number here", None),
            ("", None),
            ("\n  \n", None),
            ("Infinity", None),
            ("NaN", None),
            (".", None),
            ("-", None),
            ("1e999", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_score(text), *want, "{text:?}");
        }
    }

    fn run(code: Option<i32>, stdout: &str, stderr: &str) -> EvalProcessResult {
        EvalProcessResult {
            exit_code: code,
            stdout: stdout.into(),
            stderr: stderr.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_shell_retry_eval_passes_on_exit_zero_only() {
        let pass = shell_eval_report(Strategy::Retry, &run(Some(0), "ok\n", ""));
        assert_eq!(
            (pass.verdict, pass.last_line.as_deref()),
            (Verdict::Pass, Some("ok"))
        );
        let fail = shell_eval_report(Strategy::Retry, &run(Some(2), "", "3 tests failed\n"));
        assert_eq!(fail.verdict, Verdict::Fail);
        assert_eq!(
            fail.message.as_deref(),
            Some("the eval exited with code 2: 3 tests failed")
        );
        let slow = shell_eval_report(
            Strategy::Retry,
            &EvalProcessResult {
                timed_out_after: Some(60_000),
                signal: Some("SIGKILL".into()),
                ..Default::default()
            },
        );
        assert_eq!(slow.verdict, Verdict::Fail);
        assert_eq!(
            slow.message.as_deref(),
            Some("the eval timed out after 1 min")
        );
    }

    #[test]
    fn a_shell_optimize_eval_without_a_number_is_a_crash() {
        let ok = shell_eval_report(Strategy::Optimize, &run(Some(0), "7 points\n", ""));
        assert_eq!(ok.verdict, Verdict::Score(7.0));
        let words = shell_eval_report(Strategy::Optimize, &run(Some(0), "done\n", ""));
        assert_eq!(words.verdict, Verdict::Crash);
        assert_eq!(
            words.message.as_deref(),
            Some("invalid score: the eval's last line 'done' does not start with a number")
        );
        let silent = shell_eval_report(Strategy::Optimize, &run(Some(0), "", ""));
        assert_eq!(
            silent.message.as_deref(),
            Some("invalid score: the eval printed nothing")
        );
        let died = shell_eval_report(
            Strategy::Optimize,
            &EvalProcessResult {
                signal: Some("SIGSEGV".into()),
                stdout: "5\n".into(),
                ..Default::default()
            },
        );
        assert_eq!(
            died.verdict,
            Verdict::Crash,
            "a score from a crashed eval is not used"
        );
        assert_eq!(
            died.message.as_deref(),
            Some("the eval was killed by signal SIGSEGV")
        );
    }

    #[test]
    fn the_eval_output_tail_is_bounded() {
        let long: String = (1..=100).map(|i| format!("line {i}\n")).collect();
        let r = shell_eval_report(Strategy::Retry, &run(Some(1), &long, "boom"));
        let tail = r.output_tail.unwrap();
        assert!(tail.starts_with("line 81\n"), "{tail}");
        assert!(tail.ends_with("line 100\n--- stderr ---\nboom"), "{tail}");
        let wide = "é".repeat(5000);
        let r = shell_eval_report(Strategy::Retry, &run(Some(0), &wide, ""));
        assert!(r.output_tail.unwrap().len() <= EVAL_TAIL_BYTES);
    }

    #[test]
    fn an_agent_verdict_is_its_last_line() {
        let cases: &[(Strategy, &str, Option<Verdict>)] = &[
            (Strategy::Retry, "All good.\nPASS", Some(Verdict::Pass)),
            (Strategy::Retry, "checked\n**fail**\n", Some(Verdict::Fail)),
            (Strategy::Retry, "Pass.", Some(Verdict::Pass)),
            (Strategy::Retry, "PASS\nbut one more thing", None),
            (Strategy::Retry, "passing", None),
            (
                Strategy::Optimize,
                "reasoning\n8.5",
                Some(Verdict::Score(8.5)),
            ),
            (Strategy::Optimize, "Score: 3", Some(Verdict::Score(3.0))),
            (Strategy::Optimize, "`42`", Some(Verdict::Score(42.0))),
            (Strategy::Optimize, "PASS", None),
        ];
        for (strategy, text, want) in cases {
            assert_eq!(parse_agent_verdict(*strategy, text), *want, "{text:?}");
        }
        let r = agent_eval_report(Strategy::Optimize, Some("hmm\nno idea"), None, None);
        assert_eq!(r.verdict, Verdict::Crash);
        assert_eq!(
            r.message.as_deref(),
            Some("the eval agent did not answer a score: its last line was 'no idea'")
        );
        let r = agent_eval_report(Strategy::Retry, None, Some("timed out after 10 min"), None);
        assert_eq!(r.verdict, Verdict::Fail);
        assert_eq!(
            r.message.as_deref(),
            Some("the eval agent failed: timed out after 10 min")
        );
    }

    #[test]
    fn the_shell_eval_gets_the_loop_iteration_and_tail_task() {
        let mut d = Drive::with(Strategy::Retry, |r| {
            r.prompt = None;
            r.pipeline_steps = Some(vec!["a".into(), "b".into()]);
            r.eval_timeout = Some(5_000);
        });
        assert_eq!(shell_eval_spec(&d.rec), None, "no iteration yet");
        d.start();
        let spec = shell_eval_spec(&d.rec).unwrap();
        assert_eq!(spec.argv, ["sh", "-c", "cargo test"]);
        assert_eq!(spec.working_directory, "/repo");
        assert_eq!(spec.timeout_ms, 5_000);
        assert_eq!(
            spec.env,
            [
                ("BACKBEAT_LOOP_ID".to_string(), "loop-1".to_string()),
                ("BACKBEAT_ITERATION".to_string(), "1".to_string()),
                ("BACKBEAT_TASK_ID".to_string(), "task-1-2".to_string()),
            ]
        );
        d.rec.worktree_path = Some("/home/.backbeat/worktrees/loop-1".into());
        assert_eq!(
            shell_eval_spec(&d.rec).unwrap().working_directory,
            "/home/.backbeat/worktrees/loop-1"
        );
        assert_eq!(agent_eval_prompt(&d.rec), None);
    }

    #[test]
    fn the_agent_eval_prompt_says_how_to_answer() {
        let mut d = Drive::with(Strategy::Optimize, |r| {
            r.exit_condition = None;
            r.eval_mode = Some(EvalMode::Agent);
            r.eval_prompt = Some("Rate the README from 0 to 10.".into());
            r.eval_direction = Some(Direction::Minimize);
        });
        d.start();
        let p = agent_eval_prompt(&d.rec).unwrap();
        assert!(
            p.starts_with("[EVAL] You are judging iteration 1 of loop loop-1."),
            "{p}"
        );
        assert!(p.contains("Do not modify any file."));
        assert!(p.contains("`beat logs task-1-1`"));
        assert!(p.contains("Rate the README from 0 to 10."));
        assert!(p.ends_with("the score, a number (lower is better)."), "{p}");
        assert_eq!(shell_eval_spec(&d.rec), None);
    }

    // --- validation ---

    fn refusal(edit: impl FnOnce(&mut CreateLoopRequest)) -> LoopRequestError {
        refusal_with(true, edit)
    }

    fn refusal_with(
        reports_cost: bool,
        edit: impl FnOnce(&mut CreateLoopRequest),
    ) -> LoopRequestError {
        let mut req = request(Strategy::Retry);
        edit(&mut req);
        new_loop("loop-v".into(), &req, reports_cost, T0).expect_err("must be refused")
    }

    #[test]
    fn a_valid_request_gets_the_original_defaults() {
        let rec = new_loop("loop-d".into(), &request(Strategy::Retry), false, T0).unwrap();
        assert_eq!(rec.max_iterations, 10);
        assert_eq!(rec.max_consecutive_failures, 3);
        assert_eq!(rec.eval_timeout, 60_000);
        assert_eq!(rec.cooldown_ms, 0);
        assert!(rec.fresh_context);
        assert_eq!(rec.eval_mode, EvalMode::Shell);
        assert_eq!(rec.priority, Priority::P2);
        assert_eq!(rec.status, LoopStatus::Running);
        assert_eq!((rec.created_at, rec.updated_at), (T0, T0));
        assert_eq!(decide_next(&rec, T0), NextStep::Start { number: 1 });
    }

    #[test]
    fn bad_requests_are_refused_with_what_to_do() {
        use LoopRequestError as E;
        assert_eq!(refusal(|r| r.prompt = Some("  ".into())), E::MissingPrompt);
        assert_eq!(
            refusal(|r| r.pipeline_steps = Some(vec!["a".into(), "b".into()])),
            E::PromptAndSteps
        );
        assert_eq!(
            refusal(|r| r.prompt = Some("x".repeat(MAX_PROMPT_BYTES + 1))),
            E::PromptTooLong(MAX_PROMPT_BYTES + 1)
        );
        let steps = |n: usize| Some((0..n).map(|i| format!("step {i}")).collect::<Vec<_>>());
        for n in [1, 21] {
            assert_eq!(
                refusal(|r| {
                    r.prompt = None;
                    r.pipeline_steps = steps(n);
                }),
                E::PipelineSteps(n)
            );
        }
        assert_eq!(
            refusal(|r| {
                r.prompt = None;
                r.pipeline_steps = Some(vec!["a".into(), " ".into()]);
            }),
            E::BlankStep(2)
        );
        assert_eq!(
            refusal(|r| {
                r.prompt = None;
                r.pipeline_steps = steps(2);
                r.fresh_context = Some(false);
            }),
            E::FreshContextOnPipeline
        );
        assert_eq!(
            refusal(|r| r.exit_condition = None),
            E::MissingExitCondition
        );
        assert_eq!(
            refusal(|r| r.eval_prompt = Some("judge".into())),
            E::AgentEvalFieldInShellMode("evalPrompt")
        );
        assert_eq!(
            refusal(|r| r.eval_mode = Some(EvalMode::Agent)),
            E::ExitConditionWithAgentEval
        );
        assert_eq!(
            refusal(|r| {
                r.eval_mode = Some(EvalMode::Agent);
                r.exit_condition = None;
            }),
            E::MissingEvalPrompt
        );
        assert_eq!(
            refusal(|r| r.eval_direction = Some(Direction::Minimize)),
            E::DirectionOnRetry
        );
        assert_eq!(
            refusal(|r| {
                r.strategy = Strategy::Optimize;
                r.eval_direction = None;
            }),
            E::MissingDirection
        );
        for bad in [999, 300_001] {
            assert!(matches!(
                refusal(|r| r.eval_timeout = Some(bad)),
                E::EvalTimeout { given, mode: "shell", min: 1_000, max: 300_000 } if given == bad
            ));
        }
        assert_eq!(
            refusal(|r| r.working_directory = "repo".into()),
            E::WorkingDirectory("repo".into())
        );
        assert!(matches!(
            refusal(|r| r.git_branch = Some("bad..name".into())),
            E::BranchName {
                why: "it contains '..'",
                ..
            }
        ));
        assert_eq!(refusal(|r| r.worktree = true), E::WorktreeWithoutBranch);
        assert_eq!(refusal(|r| r.max_cost = Some(-1.0)), E::BadCost);
        assert_eq!(
            refusal(|r| r.max_tokens = Some(0)),
            E::ZeroBudget { field: "maxTokens" }
        );
        assert_eq!(
            refusal(|r| r.max_duration = Some(0)),
            E::ZeroBudget {
                field: "maxDuration"
            }
        );
        assert_eq!(refusal(|r| r.patience = Some(3)), E::PatienceOnRetry);
        assert_eq!(
            refusal(|r| {
                r.strategy = Strategy::Optimize;
                r.eval_direction = Some(Direction::Maximize);
                r.patience = Some(0);
            }),
            E::ZeroBudget { field: "patience" }
        );
    }

    #[test]
    fn agent_evals_may_take_longer_than_shell_evals() {
        let mut req = request(Strategy::Retry);
        req.exit_condition = None;
        req.eval_mode = Some(EvalMode::Agent);
        req.eval_prompt = Some("judge".into());
        req.eval_timeout = Some(600_000);
        assert!(new_loop("l".into(), &req, true, T0).is_ok());
        req.eval_timeout = Some(600_001);
        assert!(new_loop("l".into(), &req, true, T0).is_err());
    }

    #[test]
    fn max_cost_is_refused_for_agents_that_report_no_cost() {
        let e = refusal_with(false, |r| {
            r.agent = "codex".into();
            r.max_cost = Some(5.0);
        });
        assert_eq!(
            e.to_string(),
            "maxCost cannot be enforced: agent 'codex' does not report its cost. Use maxTokens, maxIterations or maxDuration instead"
        );
        let mut req = request(Strategy::Retry);
        req.max_cost = Some(5.0);
        assert_eq!(
            new_loop("l".into(), &req, true, T0).unwrap().max_cost,
            Some(5.0)
        );
    }

    #[test]
    fn branch_names_follow_git_rules() {
        for good in [
            "perf",
            "loop/perf-1",
            "a.b",
            "feature/x_y",
            "v1.2",
            "ünïcode",
        ] {
            assert_eq!(check_branch_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "-x",
            "HEAD",
            "@",
            "a..b",
            "a@{b",
            "a b",
            "a~1",
            "a^",
            "a:b",
            "a?",
            "a*",
            "a[b",
            "a\\b",
            "a\tb",
            "a.",
            "/a",
            "a/",
            "a//b",
            ".a",
            "a/.b",
            "a.lock",
            "a/b.lock/c",
        ] {
            assert!(check_branch_name(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn a_scheduled_loop_branch_carries_its_fire_time() {
        // 2026-11-30 22:15:00 UTC
        assert_eq!(
            scheduled_branch_name("perf", 1_796_076_900_000),
            "perf-20261130-221500"
        );
        assert_eq!(check_branch_name(&scheduled_branch_name("perf", 0)), Ok(()));
    }

    #[test]
    fn a_second_git_loop_on_one_directory_is_refused() {
        let mut running = Drive::with(Strategy::Retry, |r| r.git_branch = Some("a".into())).rec;
        let e = check_git_directory_free("/repo", [&running]).unwrap_err();
        assert!(e.contains("already works with git in /repo"), "{e}");
        assert!(check_git_directory_free("/other", [&running]).is_ok());
        running.worktree = true;
        assert!(
            check_git_directory_free("/repo", [&running]).is_ok(),
            "a worktree loop leaves the checkout alone"
        );
        running.worktree = false;
        running.status = LoopStatus::Completed;
        assert!(check_git_directory_free("/repo", [&running]).is_ok());
    }

    // --- views ---

    #[test]
    fn loop_status_has_the_original_keys_and_iso_times() {
        let mut d = Drive::with(Strategy::Optimize, |r| {
            r.prompt = None;
            r.pipeline_steps = Some(vec!["x".repeat(100), "build".into()]);
        });
        d.iteration(Verdict::Score(2.0));
        let v = loop_status_view(&d.rec);
        for key in [
            "id",
            "strategy",
            "status",
            "currentIteration",
            "maxIterations",
            "consecutiveFailures",
            "maxConsecutiveFailures",
            "bestScore",
            "exitCondition",
            "evalDirection",
            "cooldownMs",
            "freshContext",
            "promptPreview",
            "workingDirectory",
            "gitBranch",
            "gitBaseBranch",
            "scheduleId",
            "createdAt",
            "updatedAt",
            "completedAt",
            "isPipeline",
            "pipelineSteps",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["createdAt"], "1970-01-01T00:16:40.000Z");
        assert_eq!(v["completedAt"], serde_json::Value::Null);
        assert_eq!(v["pipelineSteps"][0]["index"], 0);
        assert_eq!(
            v["pipelineSteps"][0]["prompt"],
            format!("{}...", "x".repeat(80))
        );
        let it = iteration_view(d.rec.latest.as_ref().unwrap());
        assert_eq!(it["taskId"], "task-1-2");
        assert_eq!(
            it["pipelineTaskIds"],
            serde_json::json!(["task-1-1", "task-1-2"])
        );
        assert_eq!(
            (it["score"].as_f64(), it["bestScore"].as_f64()),
            (Some(2.0), Some(2.0))
        );
        assert_eq!(it["durationMs"], 1000);
        assert!(it["usage"].get("costUsd").is_some());
        let listed = loop_list_view(&d.rec);
        assert_eq!(
            (
                listed["isPipeline"].as_bool(),
                listed["currentIteration"].as_u64()
            ),
            (Some(true), Some(1))
        );
    }

    // --- the ledger ---

    #[test]
    fn the_ledger_is_tsv_with_the_autoresearch_columns() {
        let mut d = Drive::with(Strategy::Optimize, |r| r.git_branch = Some("perf".into()));
        let mut rows = Vec::new();
        for verdict in [Verdict::Score(1.5), Verdict::Crash] {
            d.start();
            d.tick(2_500);
            d.end_task(0, TaskEndKind::Completed, usage(100, Some(0.0123)));
            d.evaluate(verdict);
            if verdict == Verdict::Crash {
                d.rec.latest.as_mut().unwrap().error_message = Some("exit 3:\tboom\nx".into());
                d.rec.latest.as_mut().unwrap().note = None;
            }
            d.settle();
            rows.push(d.rec.latest.clone().unwrap());
        }
        assert_eq!(
            ledger_tsv(&rows),
            "iteration\tstatus\tscore\tbest\tcommit\tduration_s\ttokens\tcost_usd\tnote\n\
             1\tkeep\t1.5\t1.5\tcommit-\t2.5\t200\t0.0123\tnew best\n\
             2\tcrash\t\t1.5\tcommit-\t2.5\t200\t0.0123\texit 3: boom x\n"
        );
    }

    #[test]
    fn the_sparkline_shows_the_trend() {
        assert_eq!(sparkline(&[Some(0.0), Some(3.5), None, Some(7.0)]), "▁▅·█");
        assert_eq!(sparkline(&[Some(2.0), Some(2.0)]), "▅▅");
        assert_eq!(sparkline(&[None]), "·");
        let its: Vec<IterationRecord> = [
            (1, Some(1.0), IterationStatus::Keep),
            (2, None, IterationStatus::Crash),
            (3, Some(7.0), IterationStatus::Keep),
            (4, Some(4.0), IterationStatus::Discard),
        ]
        .into_iter()
        .map(|(n, score, status)| IterationRecord {
            iteration_number: n,
            score,
            status,
            ..Default::default()
        })
        .collect();
        assert_eq!(
            score_chart(&its, 3).unwrap(),
            "scores ·█▁  low 4 high 7  best 7 (iteration 3)"
        );
        assert_eq!(score_chart(&its[1..2], 10), None);
    }

    // --- properties ---

    mod properties {
        use super::*;
        use proptest::prelude::*;
        use proptest::sample::Index;
        use proptest::strategy::Strategy as Gen;

        use super::Strategy;

        /// What the outside world may do to a loop; numbers and tasks are taken from the
        /// current record (sometimes deliberately wrong) so that deep states are reached.
        #[derive(Debug, Clone)]
        enum Op {
            Tick(i64),
            Start {
                offset: i64,
            },
            RateLimit(Index),
            EndTask {
                pick: Index,
                kind: TaskEndKind,
                rate_limited: bool,
                tokens: u64,
                cost: Option<f64>,
            },
            EvalStarted,
            Evaluate(Verdict),
            Settle {
                commit: bool,
            },
            Pause {
                force: bool,
            },
            Resume,
            Cancel,
            Finish(LoopStatus),
            /// Whatever `decide_next` asks for, done as a well-behaved actor would.
            Follow(Index),
        }

        fn kind() -> impl Gen<Value = TaskEndKind> {
            prop_oneof![
                4 => Just(TaskEndKind::Completed),
                2 => Just(TaskEndKind::Failed),
                1 => Just(TaskEndKind::Cancelled),
            ]
        }

        fn verdict() -> impl Gen<Value = Verdict> {
            prop_oneof![
                Just(Verdict::Pass),
                Just(Verdict::Fail),
                Just(Verdict::Crash),
                (-3i32..4).prop_map(|s| Verdict::Score(s as f64)),
            ]
        }

        fn op() -> impl Gen<Value = Op> {
            prop_oneof![
                2 => (0i64..20_000).prop_map(Op::Tick),
                3 => prop_oneof![Just(0i64), Just(0), Just(0), Just(-1), Just(1)]
                    .prop_map(|offset| Op::Start { offset }),
                1 => any::<Index>().prop_map(Op::RateLimit),
                5 => (any::<Index>(), kind(), any::<bool>(), 0u64..50, proptest::option::of(0.0f64..0.5))
                    .prop_map(|(pick, kind, rl, tokens, cost)| Op::EndTask {
                        pick, kind, rate_limited: rl && kind == TaskEndKind::Failed, tokens, cost,
                    }),
                1 => Just(Op::EvalStarted),
                3 => verdict().prop_map(Op::Evaluate),
                3 => any::<bool>().prop_map(|commit| Op::Settle { commit }),
                1 => any::<bool>().prop_map(|force| Op::Pause { force }),
                1 => Just(Op::Resume),
                1 => Just(Op::Cancel),
                1 => prop_oneof![
                    Just(LoopStatus::Completed),
                    Just(LoopStatus::Failed),
                    Just(LoopStatus::Running),
                ]
                .prop_map(Op::Finish),
                6 => any::<Index>().prop_map(Op::Follow),
            ]
        }

        fn settings() -> impl Gen<Value = CreateLoopRequest> {
            (
                any::<bool>(),
                0usize..4,
                0u32..5,
                0u32..4,
                prop_oneof![Just(0u64), Just(5_000)],
                proptest::option::of(1u32..4),
                proptest::option::of(prop_oneof![Just(0.3f64), Just(1.0)]),
                proptest::option::of(50u64..200),
                proptest::option::of(30_000u64..200_000),
                any::<bool>(),
            )
                .prop_map(
                    |(
                        optimize,
                        steps,
                        max_it,
                        max_cf,
                        cooldown,
                        patience,
                        cost,
                        tokens,
                        duration,
                        git,
                    )| {
                        let strategy = if optimize {
                            Strategy::Optimize
                        } else {
                            Strategy::Retry
                        };
                        let mut r = request(strategy);
                        if steps >= 2 {
                            r.prompt = None;
                            r.pipeline_steps =
                                Some((0..steps).map(|i| format!("step {i}")).collect());
                        }
                        r.max_iterations = Some(max_it);
                        r.max_consecutive_failures = Some(max_cf);
                        r.cooldown_ms = Some(cooldown);
                        r.patience = patience.filter(|_| optimize);
                        r.max_cost = cost;
                        r.max_tokens = tokens;
                        r.max_duration = duration;
                        r.git_branch = git.then(|| "loop/prop".to_string());
                        r
                    },
                )
        }

        fn end(
            kind: TaskEndKind,
            rate_limited: bool,
            tokens: u64,
            cost: Option<f64>,
            now: Millis,
        ) -> TaskEnd {
            TaskEnd {
                kind,
                reason: "r".into(),
                exit_code: None,
                usage: Some(Usage {
                    input_tokens: tokens,
                    output_tokens: tokens,
                    cost_usd: cost,
                    ..Default::default()
                }),
                rate_limited,
                rate_limit_reset: rate_limited.then_some(now + 1_000),
            }
        }

        fn report(verdict: Verdict) -> EvalReport {
            EvalReport {
                verdict,
                exit_code: Some(0),
                last_line: None,
                output_tail: None,
                message: None,
                usage: None,
            }
        }

        /// The event for `op` in the current state (it may well be refused).
        fn event_for(rec: &LoopRecord, op: &Op, now: Millis) -> Option<LoopEvent> {
            let number = rec.current_iteration;
            let tasks = rec
                .latest
                .as_ref()
                .map(|i| i.task_ids.clone())
                .unwrap_or_default();
            let pick = |i: &Index| {
                if tasks.is_empty() {
                    "task-none".to_string()
                } else {
                    i.get(&tasks).clone()
                }
            };
            Some(match op {
                Op::Tick(_) => return None,
                Op::Start { offset } => {
                    let n = (number as i64 + 1 + offset).max(0) as u32;
                    let steps = rec.pipeline_steps.len().max(1);
                    LoopEvent::IterationStarted {
                        at: now,
                        number: n,
                        task_ids: (0..steps).map(|s| format!("task-{n}-{s}")).collect(),
                    }
                }
                Op::RateLimit(i) => LoopEvent::RateLimited {
                    at: now,
                    number,
                    task_id: pick(i),
                    until: now + 500,
                },
                Op::EndTask {
                    pick: i,
                    kind,
                    rate_limited,
                    tokens,
                    cost,
                } => LoopEvent::TaskEnded {
                    at: now,
                    number,
                    task_id: pick(i),
                    end: end(*kind, *rate_limited, *tokens, *cost, now),
                },
                Op::EvalStarted => LoopEvent::EvalStarted {
                    at: now,
                    number,
                    eval_id: format!("eval-{number}"),
                },
                Op::Evaluate(v) => LoopEvent::Evaluated {
                    at: now,
                    number,
                    report: report(*v),
                },
                Op::Settle { commit } => LoopEvent::Settled {
                    at: now,
                    number,
                    commit_sha: commit.then(|| format!("sha-{number}")),
                    diff_summary: None,
                },
                Op::Pause { force } => LoopEvent::Paused {
                    at: now,
                    force: *force,
                },
                Op::Resume => LoopEvent::Resumed { at: now },
                Op::Cancel => LoopEvent::Cancelled {
                    at: now,
                    reason: "user".into(),
                },
                Op::Finish(status) => LoopEvent::Finished {
                    at: now,
                    status: *status,
                    reason: "engine".into(),
                },
                Op::Follow(i) => return follow(rec, now, i),
            })
        }

        /// What a well-behaved actor journals for `decide_next`'s answer.
        fn follow(rec: &LoopRecord, now: Millis, i: &Index) -> Option<LoopEvent> {
            Some(match decide_next(rec, now) {
                NextStep::Done | NextStep::WaitUntil { .. } => return None,
                NextStep::Paused => LoopEvent::Resumed { at: now },
                NextStep::Start { number } => LoopEvent::IterationStarted {
                    at: now,
                    number,
                    task_ids: (0..rec.pipeline_steps.len().max(1))
                        .map(|s| format!("task-{number}-{s}"))
                        .collect(),
                },
                NextStep::AwaitTasks { number } => {
                    let it = rec.latest.as_ref()?;
                    let kinds = [
                        TaskEndKind::Completed,
                        TaskEndKind::Completed,
                        TaskEndKind::Failed,
                        TaskEndKind::Cancelled,
                    ];
                    LoopEvent::TaskEnded {
                        at: now,
                        number,
                        task_id: it.unended_task_ids().first()?.clone(),
                        end: end(*i.get(&kinds), false, 10, Some(0.1), now),
                    }
                }
                NextStep::Evaluate { number, .. } => {
                    let verdicts = match rec.strategy {
                        Strategy::Retry => {
                            vec![Verdict::Pass, Verdict::Fail, Verdict::Fail, Verdict::Crash]
                        }
                        Strategy::Optimize => vec![
                            Verdict::Score(1.0),
                            Verdict::Score(2.0),
                            Verdict::Score(0.0),
                            Verdict::Crash,
                        ],
                    };
                    LoopEvent::Evaluated {
                        at: now,
                        number,
                        report: report(*i.get(&verdicts)),
                    }
                }
                NextStep::StopTasks { number, task_ids } => LoopEvent::TaskEnded {
                    at: now,
                    number,
                    task_id: task_ids[0].clone(),
                    end: end(TaskEndKind::Cancelled, false, 0, None, now),
                },
                NextStep::Settle { number, git } => LoopEvent::Settled {
                    at: now,
                    number,
                    commit_sha: match git {
                        GitStep::None => None,
                        GitStep::Commit { .. } => Some(format!("sha-{number}")),
                        GitStep::ResetTo { sha } => Some(sha),
                    },
                    diff_summary: None,
                },
                NextStep::Finish { status, reason } => LoopEvent::Finished {
                    at: now,
                    status,
                    reason,
                },
            })
        }

        /// What every reachable record satisfies.
        fn check_invariants(rec: &LoopRecord, now: Millis) -> Result<(), TestCaseError> {
            let number = rec.latest.as_ref().map_or(0, |i| i.iteration_number);
            prop_assert_eq!(rec.current_iteration, number);
            prop_assert!(rec.iterations_counted <= rec.current_iteration);
            prop_assert!(rec.consecutive_failures <= rec.iterations_counted);
            prop_assert_eq!(rec.best_score.is_some(), rec.best_iteration_id.is_some());
            prop_assert!(rec.best_iteration_id.unwrap_or(0) <= rec.current_iteration);
            prop_assert_eq!(rec.status.is_terminal(), rec.completed_at.is_some());
            prop_assert_eq!(rec.status == LoopStatus::Paused, rec.paused_at.is_some());
            if rec.strategy == Strategy::Retry {
                prop_assert!(rec.best_score.is_none() && rec.iterations_without_improvement == 0);
            }
            if let Some(it) = &rec.latest {
                use IterationPhase::*;
                prop_assert!(it.ended_task_ids.iter().all(|t| it.task_ids.contains(t)));
                prop_assert!(!has_duplicates(&it.ended_task_ids));
                match it.phase {
                    Working => {
                        prop_assert_eq!(it.status, IterationStatus::Running);
                        // Never stalls: something is still to be heard of.
                        prop_assert!(!it.unended_task_ids().is_empty());
                    }
                    Evaluating => {
                        prop_assert_eq!(it.status, IterationStatus::Running);
                        let tail = it.task_id().unwrap_or_default().to_string();
                        prop_assert!(it.ended_task_ids.contains(&tail));
                    }
                    Settling | Done => prop_assert!(it.status != IterationStatus::Running),
                }
                if rec.status.is_terminal() {
                    prop_assert_eq!(it.phase, Done);
                }
                let allowed: &[IterationStatus] = match rec.strategy {
                    Strategy::Retry => &[
                        IterationStatus::Running,
                        IterationStatus::Pass,
                        IterationStatus::Fail,
                        IterationStatus::Cancelled,
                    ],
                    Strategy::Optimize => &[
                        IterationStatus::Running,
                        IterationStatus::Keep,
                        IterationStatus::Discard,
                        IterationStatus::Crash,
                        IterationStatus::Fail,
                        IterationStatus::Cancelled,
                    ],
                };
                prop_assert!(
                    allowed.contains(&it.status),
                    "{:?} in a {:?} loop",
                    it.status,
                    rec.strategy
                );
            }
            if !rec.status.is_terminal() {
                prop_assert_ne!(decide_next(rec, now), NextStep::Done);
            }
            let json = serde_json::to_string(rec).unwrap();
            prop_assert_eq!(&serde_json::from_str::<LoopRecord>(&json).unwrap(), rec);
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(400))]

            /// Random events never make an invalid record, and iteration numbers go up by
            /// one at each start, never reused.
            #[test]
            fn random_events_keep_the_loop_valid(req in settings(), ops in proptest::collection::vec(op(), 1..120)) {
                let mut rec = new_loop("loop-p".into(), &req, true, T0).unwrap();
                if rec.git_branch.is_some() {
                    rec.git_start_commit_sha = Some("start".into());
                }
                let mut rec = apply(None, &LoopEvent::Created { record: Box::new(rec) }).unwrap();
                let mut now = T0;
                let mut started = Vec::new();
                for op in &ops {
                    if let Op::Tick(dt) = op {
                        now += dt;
                    }
                    let Some(ev) = event_for(&rec, op, now) else { continue };
                    match apply(Some(&rec), &ev) {
                        Ok(next) => {
                            if let LoopEvent::IterationStarted { number, .. } = ev {
                                started.push(number);
                            }
                            rec = next;
                            check_invariants(&rec, now)?;
                        }
                        Err(_) => {
                            prop_assert!(!matches!(op, Op::Follow(_)), "the actor's own step was refused: {:?} for {:?}", ev, decide_next(&rec, now));
                        }
                    }
                }
                let expected: Vec<u32> = (1..=started.len() as u32).collect();
                prop_assert_eq!(started, expected);
            }

            /// An actor that does what `decide_next` says always brings a bounded loop to
            /// an end (W8, W9), and never runs more counted iterations than allowed.
            #[test]
            fn following_decide_next_always_ends(req in settings(), choices in proptest::collection::vec(any::<Index>(), 64)) {
                let mut req = req;
                req.max_iterations = Some(req.max_iterations.unwrap_or(1).max(1));
                let mut rec = new_loop("loop-f".into(), &req, true, T0).unwrap();
                if rec.git_branch.is_some() {
                    rec.git_start_commit_sha = Some("start".into());
                }
                let mut rec = apply(None, &LoopEvent::Created { record: Box::new(rec) }).unwrap();
                let mut now = T0;
                let mut steps = 0;
                while !rec.status.is_terminal() {
                    steps += 1;
                    prop_assert!(steps < 5_000, "the loop never ended: {:?}", rec);
                    if let NextStep::WaitUntil { at } = decide_next(&rec, now) {
                        now = at;
                        continue;
                    }
                    now += 100;
                    let ev = follow(&rec, now, &choices[steps % choices.len()])
                        .expect("a live loop always has a next step");
                    rec = apply(Some(&rec), &ev).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    check_invariants(&rec, now)?;
                }
                prop_assert!(rec.iterations_counted <= rec.max_iterations);
                prop_assert!(matches!(rec.status, LoopStatus::Completed | LoopStatus::Failed));
                if rec.status == LoopStatus::Completed && rec.strategy == Strategy::Retry {
                    prop_assert_eq!(rec.latest.map(|i| i.status), Some(IterationStatus::Pass));
                }
            }
        }
    }
}
