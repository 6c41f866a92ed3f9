//! The schedule entity, its executions, and every decision about when and whether to fire.
//!
//! A schedule (spec 1.7) is `active`, `paused`, or finished: `completed` (its one-time run
//! fired, or `maxRuns` was reached), `cancelled` (by the user, or missed with
//! `missedRunPolicy: fail`) or `expired` (`expiresAt` came). Each occurrence leaves an
//! execution row that follows its run to the end: `triggered` then `completed`, `failed`
//! or `cancelled`; `missed` and `skipped` where a policy dropped the occurrence.
//!
//! Owns: `ScheduleRecord`/`ScheduleEvent`/`apply`, `ExecutionRecord`/`ExecutionEvent`/
//! `apply_execution`, creation-time validation (`validate_timing`), and `decide`, the pure
//! function that, given a schedule, the time, the grace period and the followed
//! schedule's latest run, says what the `ScheduleActor` must do: wait until an instant,
//! journal events, or fire (in one transaction with what the fire creates).
//! Must never: read the clock, touch the journal, or know what a task, pipeline or loop
//! is: the target's template is opaque JSON, and what a fire created is just ids.
//!
//! Rules that fix the original (spec 18): `expiresAt` is checked before firing, never
//! after (W17); overlap is decided from the record's running executions, which the journal
//! keeps across restarts (W17), and a dropped occurrence advances the next time (W13);
//! `afterSchedule` follows the other schedule's latest run as a task dependency would,
//! never by timing (W18); cancelling a finished schedule is refused (W17).

pub mod cron;
mod entity;

use chrono::{DateTime, LocalResult, NaiveDateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use super::Millis;
use super::loops::LoopStatus;
use super::pipeline::PipelineStatus;
use super::task::TaskStatus;
pub use cron::{CronSchedule, next_fire, parse_timezone, render_next_n};

/// Default grace period for missed runs (`scheduleGracePeriodMs`), 5 minutes.
pub const DEFAULT_GRACE_PERIOD_MS: i64 = 300_000;
/// A pipeline has this many steps at least and at most.
pub const PIPELINE_STEPS: std::ops::RangeInclusive<usize> = 2..=20;

/// Cron (repeats) or one-time (fires once at `scheduledAt`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum ScheduleType {
    #[default]
    #[serde(rename = "cron")]
    Cron,
    #[serde(rename = "one_time")]
    OneTime,
}

impl ScheduleType {
    pub fn as_str(self) -> &'static str {
        match self {
            ScheduleType::Cron => "cron",
            ScheduleType::OneTime => "one_time",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [ScheduleType::Cron, ScheduleType::OneTime]
            .into_iter()
            .find(|t| t.as_str() == text)
    }
}

/// What to do with an occurrence that came while no daemon ran (older than the grace).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MissedRunPolicy {
    /// Drop it (recorded as `missed`); a one-time schedule is then completed.
    #[default]
    Skip,
    /// Run once now, however many occurrences were missed.
    Catchup,
    /// Record it as `missed` and cancel the schedule.
    Fail,
}

impl MissedRunPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            MissedRunPolicy::Skip => "skip",
            MissedRunPolicy::Catchup => "catchup",
            MissedRunPolicy::Fail => "fail",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        use MissedRunPolicy::*;
        [Skip, Catchup, Fail]
            .into_iter()
            .find(|p| p.as_str() == text)
    }
}

/// What to do with an occurrence that comes while an earlier run still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OverlapPolicy {
    /// Drop it (recorded as `skipped`); the next time follows as usual.
    #[default]
    Skip,
    /// Hold one occurrence and run it when the running one ends; drop any more.
    BufferOne,
    /// Run it beside the running ones.
    AllowAll,
    /// Cancel the running ones and run it.
    CancelOther,
}

impl OverlapPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            OverlapPolicy::Skip => "skip",
            OverlapPolicy::BufferOne => "bufferOne",
            OverlapPolicy::AllowAll => "allowAll",
            OverlapPolicy::CancelOther => "cancelOther",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        use OverlapPolicy::*;
        [Skip, BufferOne, AllowAll, CancelOther]
            .into_iter()
            .find(|p| p.as_str() == text)
    }
}

/// Where a schedule is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleStatus {
    #[default]
    Active,
    Paused,
    Completed,
    Cancelled,
    Expired,
}

impl ScheduleStatus {
    pub const ALL: [ScheduleStatus; 5] = [
        ScheduleStatus::Active,
        ScheduleStatus::Paused,
        ScheduleStatus::Completed,
        ScheduleStatus::Cancelled,
        ScheduleStatus::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ScheduleStatus::Active => "active",
            ScheduleStatus::Paused => "paused",
            ScheduleStatus::Completed => "completed",
            ScheduleStatus::Cancelled => "cancelled",
            ScheduleStatus::Expired => "expired",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Completed, cancelled and expired schedules never fire again.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            ScheduleStatus::Completed | ScheduleStatus::Cancelled | ScheduleStatus::Expired
        )
    }
}

impl std::fmt::Display for ScheduleStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What each fire creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    #[default]
    Task,
    Pipeline,
    Loop,
}

/// Everything the engine knows about one schedule. The `schedules` table holds this.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleRecord {
    pub id: String,
    pub schedule_type: ScheduleType,
    pub cron_expression: Option<String>,
    /// The one-time run's time.
    pub scheduled_at: Option<Millis>,
    /// IANA zone the cron expression is read in.
    pub timezone: String,
    pub missed_run_policy: MissedRunPolicy,
    pub overlap_policy: OverlapPolicy,
    pub max_runs: Option<u32>,
    /// Occurrences that fired (or were refused by `afterSchedule`), manual runs included.
    pub run_count: u32,
    pub expires_at: Option<Millis>,
    pub after_schedule_id: Option<String>,
    pub status: ScheduleStatus,
    pub next_run_at: Option<Millis>,
    pub last_run_at: Option<Millis>,
    pub target: TargetKind,
    /// What each fire creates (a task, pipeline or loop request), opaque to the model.
    pub template: serde_json::Value,
    /// The occurrence `bufferOne` holds back until the running run ends (its time).
    pub buffered_run: Option<Millis>,
    /// Executions whose runs have not ended: what the overlap policy looks at.
    #[serde(default)]
    pub running: Vec<String>,
    /// Why the schedule is where it is (finished or paused), for people.
    pub reason: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// What one fire created; the ids the execution row points to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Launched {
    pub task_id: Option<String>,
    pub pipeline_id: Option<String>,
    pub loop_id: Option<String>,
}

/// One transition of a schedule, as journaled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ScheduleEvent {
    /// A new, active schedule with its first `nextRunAt`.
    Created {
        schedule: Box<ScheduleRecord>,
    },
    /// An occurrence fired: `launched` was created in the same transaction.
    #[serde(rename_all = "camelCase")]
    Fired {
        at: Millis,
        scheduled_for: Millis,
        execution_id: String,
        launched: Launched,
        next_run_at: Option<Millis>,
        /// The run `bufferOne` held back.
        buffered: bool,
        /// `beat schedule run`: fired by hand, the timing unchanged.
        manual: bool,
    },
    /// `afterSchedule`: the followed schedule's latest run failed or was cancelled, so
    /// this occurrence is cancelled without creating anything (it counts as a run).
    #[serde(rename_all = "camelCase")]
    Refused {
        at: Millis,
        scheduled_for: Millis,
        next_run_at: Option<Millis>,
        reason: String,
        /// The refused occurrence was the one `bufferOne` held.
        buffered: bool,
    },
    /// Overlap policy `skip` (or a second occurrence under `bufferOne`) dropped it.
    #[serde(rename_all = "camelCase")]
    Skipped {
        at: Millis,
        scheduled_for: Millis,
        next_run_at: Option<Millis>,
        reason: String,
    },
    /// `bufferOne` held the occurrence until the running run ends.
    #[serde(rename_all = "camelCase")]
    Buffered {
        at: Millis,
        scheduled_for: Millis,
        next_run_at: Option<Millis>,
    },
    /// The occurrence was older than the grace period (no daemon at its time).
    #[serde(rename_all = "camelCase")]
    Missed {
        at: Millis,
        scheduled_for: Millis,
        next_run_at: Option<Millis>,
        policy: MissedRunPolicy,
    },
    /// A run this schedule started ended (its task, pipeline or loop did).
    #[serde(rename_all = "camelCase")]
    ExecutionEnded {
        at: Millis,
        execution_id: String,
        status: ExecutionStatus,
    },
    Paused {
        at: Millis,
        reason: Option<String>,
    },
    /// Back to active; a cron schedule's next time is computed from the resume.
    #[serde(rename_all = "camelCase")]
    Resumed {
        at: Millis,
        next_run_at: Option<Millis>,
    },
    Cancelled {
        at: Millis,
        reason: String,
    },
    /// No run is left: one-time run done, `maxRuns` reached, or nothing more to fire.
    Completed {
        at: Millis,
        reason: String,
    },
    /// `expiresAt` came; nothing fires after it.
    Expired {
        at: Millis,
    },
}

impl ScheduleEvent {
    /// The transition's name in the `events` table.
    pub fn name(&self) -> &'static str {
        match self {
            ScheduleEvent::Created { .. } => "created",
            ScheduleEvent::Fired { .. } => "fired",
            ScheduleEvent::Refused { .. } => "refused",
            ScheduleEvent::Skipped { .. } => "skipped",
            ScheduleEvent::Buffered { .. } => "buffered",
            ScheduleEvent::Missed { .. } => "missed",
            ScheduleEvent::ExecutionEnded { .. } => "execution_ended",
            ScheduleEvent::Paused { .. } => "paused",
            ScheduleEvent::Resumed { .. } => "resumed",
            ScheduleEvent::Cancelled { .. } => "cancelled",
            ScheduleEvent::Completed { .. } => "completed",
            ScheduleEvent::Expired { .. } => "expired",
        }
    }

    fn at(&self) -> Millis {
        match self {
            ScheduleEvent::Created { schedule } => schedule.updated_at,
            ScheduleEvent::Fired { at, .. }
            | ScheduleEvent::Refused { at, .. }
            | ScheduleEvent::Skipped { at, .. }
            | ScheduleEvent::Buffered { at, .. }
            | ScheduleEvent::Missed { at, .. }
            | ScheduleEvent::ExecutionEnded { at, .. }
            | ScheduleEvent::Paused { at, .. }
            | ScheduleEvent::Resumed { at, .. }
            | ScheduleEvent::Cancelled { at, .. }
            | ScheduleEvent::Completed { at, .. }
            | ScheduleEvent::Expired { at } => *at,
        }
    }
}

/// A transition that the schedule's current state does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("schedule {schedule_id}: cannot apply '{event}' in state {from}")]
pub struct InvalidTransition {
    pub schedule_id: String,
    pub event: &'static str,
    pub from: String,
}

fn invalid(prev: Option<&ScheduleRecord>, event: &ScheduleEvent) -> InvalidTransition {
    InvalidTransition {
        schedule_id: prev.map(|s| s.id.clone()).unwrap_or_default(),
        event: event.name(),
        from: prev
            .map(|s| s.status.as_str().to_string())
            .unwrap_or_else(|| "(none)".to_string()),
    }
}

/// The schedule's state machine: the record that `event` makes of `prev`.
pub fn apply(
    prev: Option<&ScheduleRecord>,
    event: &ScheduleEvent,
) -> Result<ScheduleRecord, InvalidTransition> {
    use ScheduleStatus::*;
    let Some(prev) = prev else {
        return match event {
            ScheduleEvent::Created { schedule }
                if schedule.status == Active && schedule.running.is_empty() =>
            {
                Ok((**schedule).clone())
            }
            _ => Err(invalid(None, event)),
        };
    };
    let mut next = prev.clone();
    next.updated_at = event.at();
    match (prev.status, event) {
        (
            Active | Paused,
            ScheduleEvent::Fired {
                at,
                execution_id,
                next_run_at,
                buffered,
                manual,
                ..
            },
        ) if prev.status == Active || *manual => {
            if prev.running.contains(execution_id) {
                return Err(invalid(Some(prev), event));
            }
            next.run_count += 1;
            next.last_run_at = Some(*at);
            next.next_run_at = *next_run_at;
            next.running.push(execution_id.clone());
            if *buffered {
                next.buffered_run = None;
            }
        }
        (
            Active,
            ScheduleEvent::Refused {
                at,
                next_run_at,
                buffered,
                ..
            },
        ) => {
            if *buffered {
                next.buffered_run = None;
            }
            next.run_count += 1;
            next.last_run_at = Some(*at);
            next.next_run_at = *next_run_at;
        }
        (Active, ScheduleEvent::Skipped { next_run_at, .. })
        | (Active, ScheduleEvent::Missed { next_run_at, .. }) => {
            next.next_run_at = *next_run_at;
        }
        (
            Active,
            ScheduleEvent::Buffered {
                scheduled_for,
                next_run_at,
                ..
            },
        ) if prev.buffered_run.is_none() => {
            next.buffered_run = Some(*scheduled_for);
            next.next_run_at = *next_run_at;
        }
        (_, ScheduleEvent::ExecutionEnded { execution_id, .. }) => {
            if !prev.running.contains(execution_id) {
                return Err(invalid(Some(prev), event));
            }
            next.running.retain(|id| id != execution_id);
        }
        (Active, ScheduleEvent::Paused { reason, .. }) => {
            next.status = Paused;
            next.reason = reason.clone();
        }
        (Paused, ScheduleEvent::Resumed { next_run_at, .. }) => {
            next.status = Active;
            next.next_run_at = *next_run_at;
            next.reason = None;
        }
        (Active | Paused, ScheduleEvent::Cancelled { reason, .. }) => {
            finish(&mut next, Cancelled, reason.clone());
        }
        (Active | Paused, ScheduleEvent::Completed { reason, .. }) => {
            finish(&mut next, Completed, reason.clone());
        }
        (Active | Paused, ScheduleEvent::Expired { at }) => {
            let reason = format!("expired at {}", iso(*at));
            finish(&mut next, Expired, reason);
        }
        _ => return Err(invalid(Some(prev), event)),
    }
    Ok(next)
}

fn finish(next: &mut ScheduleRecord, status: ScheduleStatus, reason: String) {
    next.status = status;
    next.next_run_at = None;
    next.buffered_run = None;
    next.reason = Some(reason);
}

// ---------------------------------------------------------------------------------------
// Executions
// ---------------------------------------------------------------------------------------

/// Where one occurrence's run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionStatus {
    #[default]
    Triggered,
    Completed,
    Failed,
    Cancelled,
    Missed,
    Skipped,
}

impl ExecutionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionStatus::Triggered => "triggered",
            ExecutionStatus::Completed => "completed",
            ExecutionStatus::Failed => "failed",
            ExecutionStatus::Cancelled => "cancelled",
            ExecutionStatus::Missed => "missed",
            ExecutionStatus::Skipped => "skipped",
        }
    }

    /// Every status but `triggered` is final.
    pub fn is_final(self) -> bool {
        self != ExecutionStatus::Triggered
    }

    /// How an execution ends whose task ended with `status`; `None` while it runs.
    pub fn of_task(status: TaskStatus) -> Option<ExecutionStatus> {
        match status {
            TaskStatus::Completed => Some(ExecutionStatus::Completed),
            TaskStatus::Cancelled => Some(ExecutionStatus::Cancelled),
            TaskStatus::Failed => Some(ExecutionStatus::Failed),
            TaskStatus::Blocked | TaskStatus::Queued | TaskStatus::Running => None,
        }
    }

    /// How an execution ends whose pipeline ended with `status`; `None` while it runs.
    pub fn of_pipeline(status: PipelineStatus) -> Option<ExecutionStatus> {
        match status {
            PipelineStatus::Completed => Some(ExecutionStatus::Completed),
            PipelineStatus::Cancelled => Some(ExecutionStatus::Cancelled),
            PipelineStatus::Failed => Some(ExecutionStatus::Failed),
            PipelineStatus::Running => None,
        }
    }

    /// How an execution ends whose loop ended with `status`; `None` while it runs.
    pub fn of_loop(status: LoopStatus) -> Option<ExecutionStatus> {
        match status {
            LoopStatus::Completed => Some(ExecutionStatus::Completed),
            LoopStatus::Cancelled => Some(ExecutionStatus::Cancelled),
            LoopStatus::Failed => Some(ExecutionStatus::Failed),
            LoopStatus::Running | LoopStatus::Paused => None,
        }
    }
}

/// One occurrence of a schedule (the `schedule_runs` table).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionRecord {
    pub id: String,
    pub schedule_id: String,
    /// The occurrence's time (for a catch-up, the first missed one).
    pub scheduled_for: Millis,
    /// When the daemon acted on it (fired, skipped, recorded it missed).
    pub fired_at: Millis,
    pub status: ExecutionStatus,
    pub task_id: Option<String>,
    pub pipeline_id: Option<String>,
    pub loop_id: Option<String>,
    pub reason: Option<String>,
    pub ended_at: Option<Millis>,
}

/// One transition of an execution, as journaled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ExecutionEvent {
    /// The row, as `execution_for` made it from the schedule's event.
    Recorded { execution: Box<ExecutionRecord> },
    /// Its task, pipeline or loop ended.
    Ended {
        at: Millis,
        status: ExecutionStatus,
        reason: Option<String>,
    },
}

impl ExecutionEvent {
    pub fn name(&self) -> &'static str {
        match self {
            ExecutionEvent::Recorded { .. } => "recorded",
            ExecutionEvent::Ended { .. } => "ended",
        }
    }
}

/// An execution transition that its current state does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("schedule execution {execution_id}: cannot apply '{event}' in state {from}")]
pub struct InvalidExecutionTransition {
    pub execution_id: String,
    pub event: &'static str,
    pub from: String,
}

/// The execution's state machine: a run ends once, from `triggered`, in
/// `completed`, `failed` or `cancelled`.
pub fn apply_execution(
    prev: Option<&ExecutionRecord>,
    event: &ExecutionEvent,
) -> Result<ExecutionRecord, InvalidExecutionTransition> {
    let refuse = || InvalidExecutionTransition {
        execution_id: prev.map(|e| e.id.clone()).unwrap_or_default(),
        event: event.name(),
        from: prev.map_or("(none)", |e| e.status.as_str()).to_string(),
    };
    match (prev, event) {
        (None, ExecutionEvent::Recorded { execution }) => Ok((**execution).clone()),
        (Some(prev), ExecutionEvent::Ended { at, status, reason })
            if prev.status == ExecutionStatus::Triggered
                && matches!(
                    status,
                    ExecutionStatus::Completed
                        | ExecutionStatus::Failed
                        | ExecutionStatus::Cancelled
                ) =>
        {
            let mut next = prev.clone();
            next.status = *status;
            next.ended_at = Some(*at);
            if reason.is_some() {
                next.reason = reason.clone();
            }
            Ok(next)
        }
        _ => Err(refuse()),
    }
}

/// The execution row a schedule event leaves, if it leaves one: `triggered` for a fire,
/// `cancelled` for a refusal, `skipped` and `missed` for dropped occurrences.
pub fn execution_for(
    schedule_id: &str,
    execution_id: &str,
    event: &ScheduleEvent,
) -> Option<ExecutionRecord> {
    let base = |scheduled_for: Millis, at: Millis, status: ExecutionStatus| ExecutionRecord {
        id: execution_id.to_string(),
        schedule_id: schedule_id.to_string(),
        scheduled_for,
        fired_at: at,
        status,
        ..Default::default()
    };
    match event {
        ScheduleEvent::Fired {
            at,
            scheduled_for,
            launched,
            manual,
            ..
        } => Some(ExecutionRecord {
            task_id: launched.task_id.clone(),
            pipeline_id: launched.pipeline_id.clone(),
            loop_id: launched.loop_id.clone(),
            reason: manual.then(|| "fired by hand".to_string()),
            ..base(*scheduled_for, *at, ExecutionStatus::Triggered)
        }),
        ScheduleEvent::Refused {
            at,
            scheduled_for,
            reason,
            ..
        } => Some(ExecutionRecord {
            reason: Some(reason.clone()),
            ended_at: Some(*at),
            ..base(*scheduled_for, *at, ExecutionStatus::Cancelled)
        }),
        ScheduleEvent::Skipped {
            at,
            scheduled_for,
            reason,
            ..
        } => Some(ExecutionRecord {
            reason: Some(reason.clone()),
            ended_at: Some(*at),
            ..base(*scheduled_for, *at, ExecutionStatus::Skipped)
        }),
        ScheduleEvent::Missed {
            at,
            scheduled_for,
            policy,
            ..
        } => Some(ExecutionRecord {
            reason: Some(format!(
                "missed by {} (the daemon was not running, or the machine was asleep; missedRunPolicy {})",
                human_ms(at - scheduled_for),
                policy.as_str()
            )),
            ended_at: Some(*at),
            ..base(*scheduled_for, *at, ExecutionStatus::Missed)
        }),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// Validation at creation
// ---------------------------------------------------------------------------------------

/// Why a schedule cannot be created; each message says what was wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSchedule {
    #[error("invalid cron expression '{expression}': {message}")]
    InvalidCron { expression: String, message: String },
    #[error(
        "unknown time zone '{zone}': use an IANA zone name such as UTC, Europe/Berlin or America/New_York"
    )]
    UnknownTimezone { zone: String },
    #[error("a cron schedule needs cronExpression (--cron), such as '0 9 * * 1-5'")]
    MissingCronExpression,
    #[error(
        "a one_time schedule needs scheduledAt (--at), an ISO-8601 time such as 2026-12-01T09:00:00Z"
    )]
    MissingScheduledAt,
    #[error("scheduledAt is for one_time schedules; a cron schedule takes cronExpression only")]
    ScheduledAtWithCron,
    #[error("cronExpression is for cron schedules; a one_time schedule takes scheduledAt only")]
    CronWithOneTime,
    #[error(
        "{field} '{value}' is not an ISO-8601 time: use e.g. 2026-12-01T09:00:00Z, \
         2026-12-01T09:00:00+01:00, or 2026-12-01T09:00 (read in the schedule's time zone)"
    )]
    UnparsableTime { field: &'static str, value: String },
    #[error("{field} '{value}' does not exist in {zone}: the clocks skip that hour")]
    NonexistentLocalTime {
        field: &'static str,
        value: String,
        zone: String,
    },
    #[error("{field} {value} is in the past (now is {now}): give a future time")]
    InPast {
        field: &'static str,
        value: String,
        now: String,
    },
    #[error(
        "expiresAt {expires_at} comes before the first run at {first_run}: the schedule would never fire"
    )]
    ExpiresBeforeFirstRun {
        expires_at: String,
        first_run: String,
    },
    #[error("maxRuns must be 1 or more (got {value})")]
    MaxRunsTooSmall { value: i64 },
    #[error("a pipeline has 2 to 20 steps (got {count})")]
    PipelineSteps { count: usize },
}

/// The timing fields of a create request, as the user gave them.
#[derive(Debug, Clone, Default)]
pub struct TimingRequest<'a> {
    pub schedule_type: ScheduleType,
    pub cron_expression: Option<&'a str>,
    pub scheduled_at: Option<&'a str>,
    /// IANA zone; `UTC` when absent.
    pub timezone: Option<&'a str>,
    pub expires_at: Option<&'a str>,
    pub max_runs: Option<i64>,
}

/// Validated timing, with the first `nextRunAt` (returned at creation, spec 17 v1.1).
#[derive(Debug, Clone, PartialEq)]
pub struct Timing {
    pub schedule_type: ScheduleType,
    pub cron_expression: Option<String>,
    pub scheduled_at: Option<Millis>,
    pub timezone: String,
    pub expires_at: Option<Millis>,
    pub max_runs: Option<u32>,
    pub next_run_at: Millis,
}

/// Checks a create request's timing at `now` and computes its first run.
pub fn validate_timing(req: &TimingRequest<'_>, now: Millis) -> Result<Timing, InvalidSchedule> {
    let timezone = req
        .timezone
        .map(str::trim)
        .filter(|z| !z.is_empty())
        .unwrap_or("UTC");
    let tz = parse_timezone(timezone)?;
    let now_utc = to_utc(now);
    let max_runs = match req.max_runs {
        None => None,
        Some(n) if n < 1 => return Err(InvalidSchedule::MaxRunsTooSmall { value: n }),
        Some(n) => Some(u32::try_from(n).unwrap_or(u32::MAX)),
    };
    let future = |field: &'static str, text: &str| -> Result<Millis, InvalidSchedule> {
        let at = parse_time(field, text, tz)?;
        if at <= now {
            return Err(InvalidSchedule::InPast {
                field,
                value: text.to_string(),
                now: iso(now),
            });
        }
        Ok(at)
    };
    let (cron_expression, scheduled_at, next_run_at) = match req.schedule_type {
        ScheduleType::Cron => {
            if req.scheduled_at.is_some() {
                return Err(InvalidSchedule::ScheduledAtWithCron);
            }
            let expression = req
                .cron_expression
                .filter(|e| !e.trim().is_empty())
                .ok_or(InvalidSchedule::MissingCronExpression)?;
            let cron = CronSchedule::parse(expression, timezone)?;
            let next = cron
                .next_after(now_utc)
                .ok_or_else(|| InvalidSchedule::InvalidCron {
                    expression: expression.to_string(),
                    message: "it fires no more after now".into(),
                })?;
            (
                Some(expression.trim().to_string()),
                None,
                next.timestamp_millis(),
            )
        }
        ScheduleType::OneTime => {
            if req.cron_expression.is_some() {
                return Err(InvalidSchedule::CronWithOneTime);
            }
            let text = req
                .scheduled_at
                .ok_or(InvalidSchedule::MissingScheduledAt)?;
            let at = future("scheduledAt", text)?;
            (None, Some(at), at)
        }
    };
    let expires_at = match req.expires_at {
        None => None,
        Some(text) => {
            let at = future("expiresAt", text)?;
            if at <= next_run_at {
                return Err(InvalidSchedule::ExpiresBeforeFirstRun {
                    expires_at: text.to_string(),
                    first_run: iso(next_run_at),
                });
            }
            Some(at)
        }
    };
    Ok(Timing {
        schedule_type: req.schedule_type,
        cron_expression,
        scheduled_at,
        timezone: timezone.to_string(),
        expires_at,
        max_runs,
        next_run_at,
    })
}

/// Checks a pipeline's step count (2 to 20).
pub fn validate_pipeline_steps(count: usize) -> Result<(), InvalidSchedule> {
    if PIPELINE_STEPS.contains(&count) {
        Ok(())
    } else {
        Err(InvalidSchedule::PipelineSteps { count })
    }
}

/// An ISO-8601 time: RFC 3339 with an offset, or a wall-clock time without one, read in
/// `tz` (the earlier of two when the clocks go back; refused in a skipped hour).
fn parse_time(
    field: &'static str,
    text: &str,
    tz: chrono_tz::Tz,
) -> Result<Millis, InvalidSchedule> {
    let text = text.trim();
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.timestamp_millis());
    }
    let unparsable = || InvalidSchedule::UnparsableTime {
        field,
        value: text.to_string(),
    };
    let naive = [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
    .ok_or_else(unparsable)?;
    match tz.from_local_datetime(&naive) {
        LocalResult::Single(at) | LocalResult::Ambiguous(at, _) => Ok(at.timestamp_millis()),
        LocalResult::None => Err(InvalidSchedule::NonexistentLocalTime {
            field,
            value: text.to_string(),
            zone: tz.name().to_string(),
        }),
    }
}

/// What a new schedule starts as; `Created` journals it.
pub struct NewSchedule {
    pub id: String,
    pub timing: Timing,
    pub missed_run_policy: MissedRunPolicy,
    pub overlap_policy: OverlapPolicy,
    pub after_schedule_id: Option<String>,
    pub target: TargetKind,
    pub template: serde_json::Value,
}

impl NewSchedule {
    /// The `Created` event of this schedule at `now`.
    pub fn created(self, now: Millis) -> ScheduleEvent {
        let t = self.timing;
        ScheduleEvent::Created {
            schedule: Box::new(ScheduleRecord {
                id: self.id,
                schedule_type: t.schedule_type,
                cron_expression: t.cron_expression,
                scheduled_at: t.scheduled_at,
                timezone: t.timezone,
                missed_run_policy: self.missed_run_policy,
                overlap_policy: self.overlap_policy,
                max_runs: t.max_runs,
                run_count: 0,
                expires_at: t.expires_at,
                after_schedule_id: self.after_schedule_id,
                status: ScheduleStatus::Active,
                next_run_at: Some(t.next_run_at),
                last_run_at: None,
                target: self.target,
                template: self.template,
                buffered_run: None,
                running: Vec::new(),
                reason: None,
                created_at: now,
                updated_at: now,
            }),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Decisions
// ---------------------------------------------------------------------------------------

/// What `decide` needs besides the schedule.
#[derive(Debug, Clone, Copy)]
pub struct DueContext<'a> {
    /// Wall-clock now.
    pub now: Millis,
    /// Occurrences later than this (ms) follow the missed-run policy.
    pub grace_ms: i64,
    /// With `afterScheduleId`: the followed schedule's most recent execution that
    /// launched something (triggered, completed, failed or cancelled), if any.
    pub followed: Option<&'a ExecutionRecord>,
}

/// What the `ScheduleActor` must do now.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Nothing will happen unless a command or a run's end says so.
    Idle,
    /// Nothing to do before this wall-clock instant; ask again then.
    WaitUntil(Millis),
    /// Journal these events (nothing is created), then ask again.
    Record(Vec<ScheduleEvent>),
    /// Create the run and journal `plan.events(..)` in one transaction, then ask again.
    Fire(Box<FirePlan>),
}

/// A fire to make: what it is for, and what it does to the schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct FirePlan {
    pub scheduled_for: Millis,
    pub next_run_at: Option<Millis>,
    /// Set when this is the schedule's last run: it completes with this reason.
    pub complete_reason: Option<String>,
    /// `cancelOther`: executions whose runs must be cancelled.
    pub cancel_running: Vec<String>,
    /// `afterSchedule`: the unfinished run that this one must wait for (its task,
    /// pipeline or loop becomes a dependency of what this fire creates).
    pub wait_for: Option<ExecutionRecord>,
    pub buffered: bool,
    pub manual: bool,
}

impl FirePlan {
    /// The events to journal with the created run, in order.
    pub fn events(&self, at: Millis, execution_id: &str, launched: Launched) -> Vec<ScheduleEvent> {
        let mut events = vec![ScheduleEvent::Fired {
            at,
            scheduled_for: self.scheduled_for,
            execution_id: execution_id.to_string(),
            launched,
            next_run_at: self.next_run_at,
            buffered: self.buffered,
            manual: self.manual,
        }];
        if let Some(reason) = &self.complete_reason {
            events.push(ScheduleEvent::Completed {
                at,
                reason: reason.clone(),
            });
        }
        events
    }
}

/// What the schedule must do at `ctx.now`. The order of the checks is the rule: a
/// finished or paused schedule does nothing (a paused one still expires); `expiresAt` is
/// checked before anything fires; a run that `bufferOne` held fires as soon as nothing
/// runs; an occurrence not yet due is waited for; one later than the grace follows the
/// missed-run policy; then the overlap policy, then `afterSchedule`, then the fire.
pub fn decide(s: &ScheduleRecord, ctx: &DueContext<'_>) -> Decision {
    let now = ctx.now;
    if s.status.is_finished() {
        return Decision::Idle;
    }
    if let Some(expires) = s.expires_at
        && now >= expires
    {
        return Decision::Record(vec![ScheduleEvent::Expired { at: now }]);
    }
    if s.status == ScheduleStatus::Paused {
        return s.expires_at.map_or(Decision::Idle, Decision::WaitUntil);
    }
    if let Some(held) = s.buffered_run
        && s.running.is_empty()
    {
        let plan = FirePlan {
            scheduled_for: held,
            next_run_at: s.next_run_at,
            complete_reason: completion_after_fire(s, s.next_run_at),
            cancel_running: Vec::new(),
            wait_for: None,
            buffered: true,
            manual: false,
        };
        return follow_rule(s, ctx, plan);
    }
    let Some(due) = s.next_run_at else {
        // Nothing scheduled: only a held run (waiting for the running one) is left.
        return Decision::Idle;
    };
    if now < due {
        let wake = s.expires_at.map_or(due, |e| e.min(due));
        return Decision::WaitUntil(wake);
    }
    let next = match next_time_after(s, now.max(due)) {
        Ok(next) => next,
        Err(reason) => {
            return Decision::Record(vec![ScheduleEvent::Paused {
                at: now,
                reason: Some(reason),
            }]);
        }
    };
    if now - due > ctx.grace_ms {
        match s.missed_run_policy {
            MissedRunPolicy::Skip => {
                let mut events = vec![ScheduleEvent::Missed {
                    at: now,
                    scheduled_for: due,
                    next_run_at: next,
                    policy: MissedRunPolicy::Skip,
                }];
                if next.is_none() {
                    events.push(ScheduleEvent::Completed {
                        at: now,
                        reason: format!(
                            "its run at {} was missed (the daemon was not running, or the machine was asleep) and missedRunPolicy is skip",
                            iso(due)
                        ),
                    });
                }
                return Decision::Record(events);
            }
            MissedRunPolicy::Fail => {
                return Decision::Record(vec![
                    ScheduleEvent::Missed {
                        at: now,
                        scheduled_for: due,
                        next_run_at: None,
                        policy: MissedRunPolicy::Fail,
                    },
                    ScheduleEvent::Cancelled {
                        at: now,
                        reason: format!(
                            "its run at {} was missed by {} and missedRunPolicy is fail",
                            iso(due),
                            human_ms(now - due)
                        ),
                    },
                ]);
            }
            // One run now for however many were missed; the next time counts from now.
            MissedRunPolicy::Catchup => {}
        }
    }
    let mut cancel_running = Vec::new();
    if let Some(running) = s.running.first() {
        match s.overlap_policy {
            OverlapPolicy::AllowAll => {}
            OverlapPolicy::CancelOther => cancel_running = s.running.clone(),
            OverlapPolicy::BufferOne if s.buffered_run.is_none() => {
                return Decision::Record(vec![ScheduleEvent::Buffered {
                    at: now,
                    scheduled_for: due,
                    next_run_at: next,
                }]);
            }
            OverlapPolicy::Skip | OverlapPolicy::BufferOne => {
                let reason = if s.overlap_policy == OverlapPolicy::Skip {
                    format!(
                        "the previous run (execution {running}) was still running (overlapPolicy skip)"
                    )
                } else {
                    format!(
                        "a run was already waiting for execution {running} to end (overlapPolicy bufferOne)"
                    )
                };
                let mut events = vec![ScheduleEvent::Skipped {
                    at: now,
                    scheduled_for: due,
                    next_run_at: next,
                    reason,
                }];
                if next.is_none() && s.buffered_run.is_none() {
                    events.push(ScheduleEvent::Completed {
                        at: now,
                        reason: "its only occurrence was skipped: a previous run was still running"
                            .into(),
                    });
                }
                return Decision::Record(events);
            }
        }
    }
    let plan = FirePlan {
        scheduled_for: due,
        next_run_at: next,
        complete_reason: completion_after_fire(s, next),
        cancel_running,
        wait_for: None,
        buffered: false,
        manual: false,
    };
    follow_rule(s, ctx, plan)
}

/// `afterSchedule`, when the run that `plan` was to wait for has ended since `decide`
/// read it (its row may not say so yet): the same rule as at `decide`, with how it
/// ended. `ended` is that run with its final status (and reason).
pub fn follow_ended(
    s: &ScheduleRecord,
    now: Millis,
    ended: &ExecutionRecord,
    mut plan: FirePlan,
) -> Decision {
    plan.wait_for = None;
    let ctx = DueContext {
        now,
        grace_ms: 0,
        followed: Some(ended),
    };
    match follow_rule(s, &ctx, plan) {
        // Still unfinished by the caller's reading: it has nothing left to wait for.
        Decision::Fire(mut plan) => {
            plan.wait_for = None;
            Decision::Fire(plan)
        }
        other => other,
    }
}

/// `afterSchedule`: wait for the followed schedule's unfinished latest run, refuse when it
/// failed or was cancelled, go ahead when it completed (or there was none).
fn follow_rule(s: &ScheduleRecord, ctx: &DueContext<'_>, mut plan: FirePlan) -> Decision {
    let (Some(followed_id), Some(latest)) = (&s.after_schedule_id, ctx.followed) else {
        return Decision::Fire(Box::new(plan));
    };
    match latest.status {
        ExecutionStatus::Triggered => {
            plan.wait_for = Some(latest.clone());
            Decision::Fire(Box::new(plan))
        }
        ExecutionStatus::Failed | ExecutionStatus::Cancelled => {
            let mut reason = format!(
                "schedule {followed_id}'s latest run (execution {}, for {}) {}",
                latest.id,
                iso(latest.scheduled_for),
                latest.status.as_str()
            );
            if let Some(why) = &latest.reason {
                reason.push_str(&format!(": {why}"));
            }
            let mut events = vec![ScheduleEvent::Refused {
                at: ctx.now,
                scheduled_for: plan.scheduled_for,
                next_run_at: plan.next_run_at,
                reason,
                buffered: plan.buffered,
            }];
            if let Some(done) = plan.complete_reason {
                events.push(ScheduleEvent::Completed {
                    at: ctx.now,
                    reason: done,
                });
            }
            Decision::Record(events)
        }
        ExecutionStatus::Completed | ExecutionStatus::Missed | ExecutionStatus::Skipped => {
            Decision::Fire(Box::new(plan))
        }
    }
}

/// Why the schedule completes after one more run, if it does.
fn completion_after_fire(s: &ScheduleRecord, next: Option<Millis>) -> Option<String> {
    if let Some(max) = s.max_runs
        && s.run_count + 1 >= max
    {
        return Some(format!("reached maxRuns ({max})"));
    }
    match s.schedule_type {
        ScheduleType::OneTime if next.is_none() => Some("its one-time run fired".into()),
        ScheduleType::Cron if next.is_none() => Some("its cron expression fires no more".into()),
        _ => None,
    }
}

/// The schedule's next time strictly after `after`: the cron's next fire, none for a
/// one-time schedule. An error (the stored expression no longer parses) pauses it.
fn next_time_after(s: &ScheduleRecord, after: Millis) -> Result<Option<Millis>, String> {
    match s.schedule_type {
        ScheduleType::OneTime => Ok(None),
        ScheduleType::Cron => {
            let expression = s.cron_expression.as_deref().unwrap_or("");
            let cron = CronSchedule::parse(expression, &s.timezone)
                .map_err(|e| format!("its next run cannot be computed: {e}"))?;
            Ok(cron.next_after(to_utc(after)).map(|t| t.timestamp_millis()))
        }
    }
}

/// Why a command on a schedule is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleCommandError {
    #[error(
        "schedule {id} is not active (status: {status}); only an active schedule can be paused"
    )]
    NotActive { id: String, status: ScheduleStatus },
    #[error(
        "schedule {id} is not paused (status: {status}); only a paused schedule can be resumed"
    )]
    NotPaused { id: String, status: ScheduleStatus },
    #[error("schedule {id} is already {status}; a finished schedule cannot be {action}")]
    Finished {
        id: String,
        status: ScheduleStatus,
        action: &'static str,
    },
}

/// `PauseSchedule`: only an active schedule.
pub fn plan_pause(s: &ScheduleRecord, now: Millis) -> Result<ScheduleEvent, ScheduleCommandError> {
    if s.status != ScheduleStatus::Active {
        return Err(ScheduleCommandError::NotActive {
            id: s.id.clone(),
            status: s.status,
        });
    }
    Ok(ScheduleEvent::Paused {
        at: now,
        reason: Some("paused by the user".into()),
    })
}

/// `ResumeSchedule`: only a paused schedule. A cron schedule's next time is its next
/// fire after `now` (what came while paused does not run); a one-time schedule keeps its
/// time, and if that passed while paused the missed-run policy decides.
pub fn plan_resume(s: &ScheduleRecord, now: Millis) -> Result<ScheduleEvent, ScheduleCommandError> {
    if s.status != ScheduleStatus::Paused {
        return Err(ScheduleCommandError::NotPaused {
            id: s.id.clone(),
            status: s.status,
        });
    }
    let next_run_at = match s.schedule_type {
        ScheduleType::OneTime => s.next_run_at,
        ScheduleType::Cron => next_time_after(s, now).ok().flatten(),
    };
    Ok(ScheduleEvent::Resumed {
        at: now,
        next_run_at,
    })
}

/// `CancelSchedule`: an active or paused schedule; a finished one is refused, not flipped.
pub fn plan_cancel(
    s: &ScheduleRecord,
    now: Millis,
    reason: Option<&str>,
) -> Result<ScheduleEvent, ScheduleCommandError> {
    if s.status.is_finished() {
        return Err(ScheduleCommandError::Finished {
            id: s.id.clone(),
            status: s.status,
            action: "cancelled",
        });
    }
    let reason = match reason.map(str::trim).filter(|r| !r.is_empty()) {
        Some(r) => format!("cancelled by the user: {r}"),
        None => "cancelled by the user".into(),
    };
    Ok(ScheduleEvent::Cancelled { at: now, reason })
}

/// `beat schedule run` / `TriggerSchedule`: one run now, the timing unchanged. Allowed on
/// an active or paused schedule; it counts toward `maxRuns`.
pub fn plan_manual_fire(s: &ScheduleRecord, now: Millis) -> Result<FirePlan, ScheduleCommandError> {
    if s.status.is_finished() {
        return Err(ScheduleCommandError::Finished {
            id: s.id.clone(),
            status: s.status,
            action: "run",
        });
    }
    let complete_reason = s
        .max_runs
        .filter(|max| s.run_count + 1 >= *max)
        .map(|max| format!("reached maxRuns ({max})"));
    Ok(FirePlan {
        scheduled_for: now,
        next_run_at: s.next_run_at,
        complete_reason,
        cancel_running: Vec::new(),
        wait_for: None,
        buffered: false,
        manual: true,
    })
}

// ---------------------------------------------------------------------------------------

fn to_utc(ms: Millis) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// An instant as people read it, in UTC.
fn iso(ms: Millis) -> String {
    to_utc(ms).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn human_ms(ms: i64) -> String {
    let s = ms / 1000;
    match s {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86_400),
    }
}

#[cfg(test)]
mod cron_tests;
#[cfg(test)]
mod tests;
