//! Schedule tools (spec 3.2, 3.3): ScheduleTask, SchedulePipeline, ScheduleLoop, ListSchedules,
//! ScheduleStatus, CancelSchedule, PauseSchedule, ResumeSchedule with the original's
//! names, fields, defaults and response keys (`nextRunAt` is returned at creation), plus
//! `overlapPolicy` and TriggerSchedule (fire once now) beyond the original. Times in
//! answers are ISO-8601 (UTC).
//!
//! Thin: a schedule is an entity of the engine (`ScheduleActor` over `model::schedule`);
//! these handlers parse arguments, send one Engine message or read the store, and shape
//! the answer. ScheduleLoop takes CreateLoop's fields (its loop is checked at creation).

use std::path::Path;

use backbeat_actors::Priority;
use backbeat_actors::engine::{CreateSchedule, ScheduleOp, ScheduleTarget};
use backbeat_actors::model::Millis;
use backbeat_actors::model::schedule::{
    ExecutionRecord, MissedRunPolicy, OverlapPolicy, ScheduleRecord, ScheduleStatus, ScheduleType,
    TargetKind, render_next_n,
};
use backbeat_actors::schedule::{Command, PipelineTemplate, TaskTemplate};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::context::{ToolContext, ToolOutcome};
use super::tasks::{PriorityField, preview, read};
use crate::paths::absolute;

#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema)]
pub enum ScheduleTypeField {
    #[serde(rename = "cron")]
    Cron,
    #[serde(rename = "one_time")]
    OneTime,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MissedRunPolicyField {
    Skip,
    Catchup,
    Fail,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OverlapPolicyField {
    Skip,
    BufferOne,
    AllowAll,
    CancelOther,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleStatusField {
    Active,
    Paused,
    Completed,
    Cancelled,
    Expired,
}

/// The timing fields every schedule takes.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TimingArgs {
    /// `cron` (repeats) or `one_time`.
    pub schedule_type: Option<ScheduleTypeField>,
    /// Five fields (minute hour day-of-month month day-of-week; weekday 0 or 7 is
    /// Sunday), six with seconds first, or @hourly/@daily/@weekly/@monthly. For cron.
    pub cron_expression: Option<String>,
    /// ISO-8601 time of a one_time run, in the future (without an offset it is read in
    /// `timezone`).
    pub scheduled_at: Option<String>,
    /// IANA time zone the expression is read in (default UTC).
    pub timezone: Option<String>,
    /// skip (default), catchup (one run) or fail: what a run missed by more than the
    /// grace period (scheduleGracePeriodMs) does when the daemon starts.
    pub missed_run_policy: Option<MissedRunPolicyField>,
    /// skip (default), bufferOne, allowAll or cancelOther: what an occurrence does while
    /// the previous run still runs.
    pub overlap_policy: Option<OverlapPolicyField>,
    /// Runs at most this many times (1 or more).
    pub max_runs: Option<i64>,
    /// ISO-8601 time after which nothing fires (must be in the future).
    pub expires_at: Option<String>,
    /// A schedule id: each run waits for that schedule's latest run, and is cancelled if
    /// it failed or was cancelled.
    pub after_schedule: Option<String>,
}

/// Schedule a task: a cron schedule or a one-time run.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ScheduleTaskArgs {
    #[schemars(length(min = 1, max = 1048576))]
    pub prompt: String,
    pub priority: Option<PriorityField>,
    pub working_directory: Option<String>,
    pub agent: Option<String>,
    #[serde(flatten)]
    pub timing: TimingArgs,
}

/// One step of a scheduled pipeline.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ScheduleStepArgs {
    #[schemars(length(min = 1, max = 1048576))]
    pub prompt: String,
    pub priority: Option<PriorityField>,
    pub working_directory: Option<String>,
    pub agent: Option<String>,
}

/// Schedule a pipeline: each fire creates its 2 to 20 steps, each after the one before.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SchedulePipelineArgs {
    pub steps: Vec<ScheduleStepArgs>,
    pub priority: Option<PriorityField>,
    pub working_directory: Option<String>,
    pub agent: Option<String>,
    #[serde(flatten)]
    pub timing: TimingArgs,
}

/// Schedule a loop: each fire creates a loop with CreateLoop's fields (its gitBranch
/// gets the fire time as a suffix).
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ScheduleLoopArgs {
    #[serde(flatten)]
    pub r#loop: super::loops::CreateLoopArgs,
    #[serde(flatten)]
    pub timing: TimingArgs,
}

#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ListSchedulesArgs {
    pub status: Option<ScheduleStatusField>,
    /// 1 to 100 (default 50).
    #[schemars(range(min = 1, max = 100))]
    pub limit: Option<u64>,
    pub offset: Option<u64>,
}

#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ScheduleStatusArgs {
    pub schedule_id: String,
    /// Include the executions, newest first (default false).
    pub include_history: Option<bool>,
    /// 1 to 100 (default 10).
    #[schemars(range(min = 1, max = 100))]
    pub history_limit: Option<u64>,
    /// Also list the next N fire times in the schedule's zone (1 to 100).
    #[schemars(range(min = 1, max = 100))]
    pub next_runs: Option<u64>,
}

#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CancelScheduleArgs {
    pub schedule_id: String,
    pub reason: Option<String>,
    /// Also cancel the tasks and pipelines its runs still run (default false).
    pub cancel_tasks: Option<bool>,
}

/// PauseSchedule's arguments.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PauseScheduleArgs {
    pub schedule_id: String,
}

/// ResumeSchedule's arguments.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResumeScheduleArgs {
    pub schedule_id: String,
}

/// TriggerSchedule's arguments.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TriggerScheduleArgs {
    pub schedule_id: String,
}

fn iso(ms: Option<Millis>) -> Value {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| Value::from(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)))
        .unwrap_or(Value::Null)
}

fn create_request(timing: TimingArgs, target: ScheduleTarget) -> Result<CreateSchedule, String> {
    let schedule_type = match (
        timing.schedule_type,
        &timing.cron_expression,
        &timing.scheduled_at,
    ) {
        (Some(ScheduleTypeField::Cron), ..) => ScheduleType::Cron,
        (Some(ScheduleTypeField::OneTime), ..) => ScheduleType::OneTime,
        (None, Some(_), None) => ScheduleType::Cron,
        (None, None, Some(_)) => ScheduleType::OneTime,
        _ => {
            return Err(
                "scheduleType is required: cron (with cronExpression) or one_time (with scheduledAt)"
                    .into(),
            );
        }
    };
    Ok(CreateSchedule {
        schedule_type,
        cron_expression: timing.cron_expression,
        scheduled_at: timing.scheduled_at,
        timezone: timing.timezone,
        expires_at: timing.expires_at,
        max_runs: timing.max_runs,
        missed_run_policy: match timing.missed_run_policy {
            None | Some(MissedRunPolicyField::Skip) => MissedRunPolicy::Skip,
            Some(MissedRunPolicyField::Catchup) => MissedRunPolicy::Catchup,
            Some(MissedRunPolicyField::Fail) => MissedRunPolicy::Fail,
        },
        overlap_policy: match timing.overlap_policy {
            None | Some(OverlapPolicyField::Skip) => OverlapPolicy::Skip,
            Some(OverlapPolicyField::BufferOne) => OverlapPolicy::BufferOne,
            Some(OverlapPolicyField::AllowAll) => OverlapPolicy::AllowAll,
            Some(OverlapPolicyField::CancelOther) => OverlapPolicy::CancelOther,
        },
        after_schedule_id: timing.after_schedule,
        target,
    })
}

async fn create(server: &ToolContext, req: CreateSchedule) -> Result<ScheduleRecord, String> {
    server
        .engine
        .engine
        .send(req)
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

pub async fn schedule_task(server: &ToolContext, args: ScheduleTaskArgs) -> ToolOutcome {
    let template = TaskTemplate {
        prompt: args.prompt,
        priority: args.priority.map(Priority::from).unwrap_or_default(),
        agent: args.agent,
        working_directory: args
            .working_directory
            .as_deref()
            .map(|d| absolute(Path::new(d), &server.session_cwd))
            .unwrap_or_else(|| server.session_cwd.clone()),
        ..Default::default()
    };
    let s = create(
        server,
        create_request(args.timing, ScheduleTarget::Task(template))?,
    )
    .await?;
    Ok(json!({
        "success": true,
        "scheduleId": s.id,
        "scheduleType": s.schedule_type.as_str(),
        "nextRunAt": iso(s.next_run_at),
        "timezone": s.timezone,
        "status": s.status.as_str(),
    }))
}

pub async fn schedule_pipeline(server: &ToolContext, args: SchedulePipelineArgs) -> ToolOutcome {
    let dir_of = |d: &Option<String>| {
        d.as_deref()
            .map(|d| absolute(Path::new(d), &server.session_cwd))
    };
    let shared_dir = dir_of(&args.working_directory).unwrap_or_else(|| server.session_cwd.clone());
    let steps = args
        .steps
        .into_iter()
        .map(|s| TaskTemplate {
            prompt: s.prompt,
            priority: s
                .priority
                .or(args.priority)
                .map(Priority::from)
                .unwrap_or_default(),
            agent: s.agent.or_else(|| args.agent.clone()),
            working_directory: dir_of(&s.working_directory).unwrap_or_else(|| shared_dir.clone()),
            ..Default::default()
        })
        .collect();
    let target = ScheduleTarget::Pipeline(PipelineTemplate { steps });
    let s = create(server, create_request(args.timing, target)?).await?;
    Ok(json!({
        "success": true,
        "scheduleId": s.id,
        "stepCount": step_count(&s),
        "scheduleType": s.schedule_type.as_str(),
        "nextRunAt": iso(s.next_run_at),
        "status": s.status.as_str(),
        "timezone": s.timezone,
    }))
}

pub async fn schedule_loop(server: &ToolContext, args: ScheduleLoopArgs) -> ToolOutcome {
    let req = super::loops::request(server, args.r#loop)?;
    let target = ScheduleTarget::Loop(Box::new(req));
    let s = create(server, create_request(args.timing, target)?).await?;
    Ok(json!({
        "success": true,
        "scheduleId": s.id,
        "scheduleType": s.schedule_type.as_str(),
        "nextRunAt": iso(s.next_run_at),
        "status": s.status.as_str(),
        "timezone": s.timezone,
        "loopStrategy": s.template.get("strategy"),
    }))
}

fn step_count(s: &ScheduleRecord) -> usize {
    s.template["steps"].as_array().map_or(1, |a| a.len())
}

pub async fn list(server: &ToolContext, args: ListSchedulesArgs) -> ToolOutcome {
    let status = args.status.map(|s| match s {
        ScheduleStatusField::Active => ScheduleStatus::Active,
        ScheduleStatusField::Paused => ScheduleStatus::Paused,
        ScheduleStatusField::Completed => ScheduleStatus::Completed,
        ScheduleStatusField::Cancelled => ScheduleStatus::Cancelled,
        ScheduleStatusField::Expired => ScheduleStatus::Expired,
    });
    let limit = args.limit.unwrap_or(50).clamp(1, 100) as usize;
    let offset = args.offset.unwrap_or(0) as usize;
    let found = read(server, move |s| s.schedules(status, limit, offset)).await?;
    let schedules: Vec<Value> = found
        .iter()
        .map(|s| {
            json!({
                "id": s.id,
                "status": s.status.as_str(),
                "scheduleType": s.schedule_type.as_str(),
                "cronExpression": s.cron_expression,
                "nextRunAt": iso(s.next_run_at),
                "runCount": s.run_count,
                "maxRuns": s.max_runs,
                "isPipeline": s.target == TargetKind::Pipeline,
                "stepCount": step_count(s),
            })
        })
        .collect();
    Ok(json!({ "success": true, "count": schedules.len(), "schedules": schedules }))
}

fn history_json(e: &ExecutionRecord) -> Value {
    json!({
        "executionId": e.id,
        "scheduledFor": iso(Some(e.scheduled_for)),
        "executedAt": iso(Some(e.fired_at)),
        "status": e.status.as_str(),
        "taskId": e.task_id,
        "pipelineId": e.pipeline_id,
        "loopId": e.loop_id,
        "errorMessage": e.reason,
        "endedAt": iso(e.ended_at),
    })
}

fn template_json(t: &TaskTemplate) -> Value {
    json!({
        "prompt": preview(&t.prompt, 100),
        "priority": t.priority,
        "workingDirectory": t.working_directory,
        "agent": t.agent,
    })
}

pub async fn status(server: &ToolContext, args: ScheduleStatusArgs) -> ToolOutcome {
    let id = args.schedule_id.clone();
    let history_limit = if args.include_history.unwrap_or(false) {
        Some(args.history_limit.unwrap_or(10).clamp(1, 100) as usize)
    } else {
        None
    };
    let (found, history) = read(server, move |s| {
        let found = s.schedule(&id)?;
        let history = match history_limit {
            Some(n) if found.is_some() => Some(s.schedule_runs(&id, n)?),
            _ => None,
        };
        Ok((found, history))
    })
    .await?;
    let s = found.ok_or_else(|| {
        format!(
            "schedule {} not found. Schedule ids look like schedule-…; ListSchedules (beat schedule list) shows them",
            args.schedule_id
        )
    })?;
    let mut schedule = json!({
        "id": s.id,
        "status": s.status.as_str(),
        "scheduleType": s.schedule_type.as_str(),
        "cronExpression": s.cron_expression,
        "scheduledAt": iso(s.scheduled_at),
        "timezone": s.timezone,
        "missedRunPolicy": s.missed_run_policy.as_str(),
        "overlapPolicy": s.overlap_policy.as_str(),
        "maxRuns": s.max_runs,
        "runCount": s.run_count,
        "lastRunAt": iso(s.last_run_at),
        "nextRunAt": iso(s.next_run_at),
        "expiresAt": iso(s.expires_at),
        "afterScheduleId": s.after_schedule_id,
        "reason": s.reason,
        "running": s.running,
        "createdAt": iso(Some(s.created_at)),
        "updatedAt": iso(Some(s.updated_at)),
    });
    match s.target {
        TargetKind::Pipeline | TargetKind::Loop => {
            let p: PipelineTemplate =
                serde_json::from_value(s.template.clone()).unwrap_or_default();
            schedule["isPipeline"] = json!(true);
            schedule["taskTemplate"] = json!({
                "prompt": format!("Pipeline ({} steps)", p.steps.len()),
                "priority": p.steps.first().map(|t| t.priority),
                "workingDirectory": p.steps.first().map(|t| &t.working_directory),
            });
            schedule["pipelineSteps"] = p
                .steps
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let mut v = template_json(t);
                    v["index"] = json!(i);
                    v
                })
                .collect();
        }
        TargetKind::Task => {
            let t: TaskTemplate = serde_json::from_value(s.template.clone()).unwrap_or_default();
            schedule["taskTemplate"] = template_json(&t);
        }
    }
    let mut out = json!({ "success": true, "schedule": schedule });
    if let Some(history) = history {
        out["history"] = history.iter().map(history_json).collect();
    }
    if let Some(n) = args.next_runs {
        // From the schedule's next time (computed on the daemon's clock), not from this
        // process's clock.
        let from = s
            .next_run_at
            .map(|t| t - 1)
            .and_then(chrono::DateTime::from_timestamp_millis);
        let runs = match (&s.cron_expression, from) {
            (Some(expr), Some(from)) if !s.status.is_finished() => {
                render_next_n(expr, &s.timezone, from, n.clamp(1, 100) as usize)
                    .map_err(|e| e.to_string())?
            }
            _ => s
                .next_run_at
                .map(|t| iso(Some(t)).as_str().unwrap_or_default().to_string())
                .into_iter()
                .collect(),
        };
        out["nextRuns"] = json!(runs);
    }
    Ok(out)
}

async fn op(
    server: &ToolContext,
    schedule_id: String,
    command: Command,
    cancel_tasks: bool,
) -> Result<(ScheduleRecord, Vec<ExecutionRecord>), String> {
    server
        .engine
        .engine
        .send(ScheduleOp {
            schedule_id,
            command,
            cancel_tasks,
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

pub async fn cancel(server: &ToolContext, args: CancelScheduleArgs) -> ToolOutcome {
    let cancel_tasks = args.cancel_tasks.unwrap_or(false);
    let (s, _) = op(
        server,
        args.schedule_id,
        Command::Cancel {
            reason: args.reason.clone(),
        },
        cancel_tasks,
    )
    .await?;
    Ok(json!({
        "success": true,
        "message": format!("Schedule {} cancelled", s.id),
        "reason": args.reason,
        "cancelTasksRequested": cancel_tasks,
        "status": s.status.as_str(),
    }))
}

pub async fn pause(server: &ToolContext, args: PauseScheduleArgs) -> ToolOutcome {
    let (s, _) = op(server, args.schedule_id, Command::Pause, false).await?;
    Ok(json!({
        "success": true,
        "message": format!("Schedule {} paused", s.id),
        "status": s.status.as_str(),
    }))
}

pub async fn resume(server: &ToolContext, args: ResumeScheduleArgs) -> ToolOutcome {
    let (s, _) = op(server, args.schedule_id, Command::Resume, false).await?;
    Ok(json!({
        "success": true,
        "message": format!("Schedule {} resumed", s.id),
        "status": s.status.as_str(),
        "nextRunAt": iso(s.next_run_at),
    }))
}

pub async fn trigger(server: &ToolContext, args: TriggerScheduleArgs) -> ToolOutcome {
    let (s, runs) = op(server, args.schedule_id, Command::Trigger, false).await?;
    let run = runs.first();
    Ok(json!({
        "success": true,
        "message": format!("Schedule {} fired once now; its timing is unchanged", s.id),
        "scheduleId": s.id,
        "executionId": run.map(|r| &r.id),
        "taskId": run.and_then(|r| r.task_id.clone()),
        "pipelineId": run.and_then(|r| r.pipeline_id.clone()),
        "loopId": run.and_then(|r| r.loop_id.clone()),
        "status": s.status.as_str(),
        "nextRunAt": iso(s.next_run_at),
        "runCount": s.run_count,
    }))
}
