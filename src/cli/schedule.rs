//! `beat schedule create|list|status|cancel|pause|resume|run|next` (spec 4.4, plus
//! `run`: fire once now, and `next`: the next fire times). Each has `--json`.
//!
//! Thin: every command is one MCP tool call (`ScheduleTask`, `SchedulePipeline`,
//! `ListSchedules`, `ScheduleStatus`, `CancelSchedule`, `PauseSchedule`,
//! `ResumeSchedule`, `TriggerSchedule`, `ScheduleLoop` for `--loop`, which takes
//! `beat loop`'s flags).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::loops::{LoopFlags, LoopShared, loop_request};
use super::{outln, parse_priority, print_json};
use crate::error::CliError;
use crate::mcp::client::DaemonClient;
use crate::mcp::tools::schedules::{
    CancelScheduleArgs, ListSchedulesArgs, MissedRunPolicyField, OverlapPolicyField,
    PauseScheduleArgs, ResumeScheduleArgs, ScheduleLoopArgs, SchedulePipelineArgs,
    ScheduleStatusArgs, ScheduleStatusField, ScheduleStepArgs, ScheduleTaskArgs, ScheduleTypeField,
    TimingArgs, TriggerScheduleArgs,
};
use crate::mcp::tools::tasks::PriorityField;
use crate::paths::{Home, absolute};

#[derive(Subcommand)]
#[command(defer = true)]
pub enum ScheduleCommand {
    /// Create a schedule: --cron EXPR (repeats) or --at TIME (once)
    Create(Box<CreateArgs>),
    /// List schedules, newest first
    List {
        #[arg(long, value_parser = parse_status)]
        status: Option<ScheduleStatusField>,
        #[arg(long)]
        limit: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// A schedule's settings and state (--history: its executions)
    Status {
        id: String,
        #[arg(long)]
        history: bool,
        #[arg(long = "history-limit")]
        history_limit: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// Cancel a schedule and its running loops (--cancel-tasks: also its running tasks and pipelines)
    Cancel {
        id: String,
        #[arg(long = "cancel-tasks")]
        cancel_tasks: bool,
        reason: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Pause an active schedule
    Pause {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Resume a paused schedule (a cron schedule's next run counts from now)
    Resume {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Fire a schedule once now, its timing unchanged
    Run {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// The next fire times, in the schedule's zone
    Next {
        id: String,
        #[arg(short = 'n', default_value_t = 5)]
        n: u64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct CreateArgs {
    /// The task's prompt
    prompt: Vec<String>,
    /// Cron expression (implies --type cron): 5 fields, 6 with seconds, or @daily…
    #[arg(long, conflicts_with = "at")]
    cron: Option<String>,
    /// ISO-8601 time of a one-time run (implies --type one_time)
    #[arg(long)]
    at: Option<String>,
    #[arg(long = "type", value_parser = parse_type)]
    schedule_type: Option<ScheduleTypeField>,
    /// IANA time zone (default UTC)
    #[arg(long)]
    timezone: Option<String>,
    /// skip (default), catchup or fail
    #[arg(long = "missed-run-policy", value_parser = parse_missed)]
    missed_run_policy: Option<MissedRunPolicyField>,
    /// skip (default), bufferOne, allowAll or cancelOther
    #[arg(long = "overlap", value_parser = parse_overlap)]
    overlap: Option<OverlapPolicyField>,
    #[arg(short, long, value_parser = parse_priority)]
    priority: Option<PriorityField>,
    #[arg(short, long = "working-directory")]
    working_directory: Option<PathBuf>,
    #[arg(long = "max-runs")]
    max_runs: Option<i64>,
    #[arg(long = "expires-at")]
    expires_at: Option<String>,
    /// Each run waits for this schedule's latest run
    #[arg(long = "after")]
    after: Option<String>,
    #[arg(short, long)]
    agent: Option<String>,
    /// Schedule a pipeline of the --step prompts
    #[arg(long)]
    pipeline: bool,
    /// A pipeline step's prompt (repeatable, with --pipeline)
    #[arg(long = "step")]
    steps: Vec<String>,
    /// Schedule a loop (with `beat loop`'s flags: --until CMD, or --eval CMD
    /// --minimize|--maximize, …); --pipeline --step makes it a pipeline loop
    #[arg(long = "loop")]
    r#loop: bool,
    #[command(flatten)]
    loop_flags: LoopFlags,
    #[arg(long)]
    json: bool,
}

fn parse_type(t: &str) -> Result<ScheduleTypeField, String> {
    match t {
        "cron" => Ok(ScheduleTypeField::Cron),
        "one_time" | "one-time" => Ok(ScheduleTypeField::OneTime),
        _ => Err(format!(
            "'{t}' is not a schedule type: use cron or one_time"
        )),
    }
}

fn parse_missed(t: &str) -> Result<MissedRunPolicyField, String> {
    match t {
        "skip" => Ok(MissedRunPolicyField::Skip),
        "catchup" => Ok(MissedRunPolicyField::Catchup),
        "fail" => Ok(MissedRunPolicyField::Fail),
        _ => Err(format!(
            "'{t}' is not a missed-run policy: use skip, catchup or fail"
        )),
    }
}

fn parse_overlap(t: &str) -> Result<OverlapPolicyField, String> {
    match t {
        "skip" => Ok(OverlapPolicyField::Skip),
        "bufferOne" | "buffer-one" => Ok(OverlapPolicyField::BufferOne),
        "allowAll" | "allow-all" => Ok(OverlapPolicyField::AllowAll),
        "cancelOther" | "cancel-other" => Ok(OverlapPolicyField::CancelOther),
        _ => Err(format!(
            "'{t}' is not an overlap policy: use skip, bufferOne, allowAll or cancelOther"
        )),
    }
}

fn parse_status(t: &str) -> Result<ScheduleStatusField, String> {
    match t {
        "active" => Ok(ScheduleStatusField::Active),
        "paused" => Ok(ScheduleStatusField::Paused),
        "completed" => Ok(ScheduleStatusField::Completed),
        "cancelled" => Ok(ScheduleStatusField::Cancelled),
        "expired" => Ok(ScheduleStatusField::Expired),
        _ => Err(format!(
            "'{t}' is not a schedule status: use active, paused, completed, cancelled or expired"
        )),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

async fn create(client: &DaemonClient, a: CreateArgs) -> Result<i32, CliError> {
    let schedule_type = match (a.schedule_type, &a.cron, &a.at) {
        (Some(ScheduleTypeField::Cron), _, Some(_))
        | (Some(ScheduleTypeField::OneTime), Some(_), _) => {
            return Err(CliError::Usage(
                "--type disagrees with --cron/--at: --cron is a cron schedule, --at a one_time one"
                    .into(),
            ));
        }
        (Some(t), _, _) => t,
        (None, Some(_), _) => ScheduleTypeField::Cron,
        (None, None, Some(_)) => ScheduleTypeField::OneTime,
        (None, None, None) => {
            return Err(CliError::Usage(
                "give --cron EXPR (repeats), --at TIME (once) or --type".into(),
            ));
        }
    };
    if !a.r#loop && (a.loop_flags.until.is_some() || a.loop_flags.eval.is_some()) {
        return Err(CliError::Usage(
            "--until and --eval judge a loop: add --loop to schedule one".into(),
        ));
    }
    if !a.steps.is_empty() && !a.pipeline {
        return Err(CliError::Usage("--step needs --pipeline".into()));
    }
    let cwd = std::env::current_dir()?;
    let dir = Some(
        absolute(
            &a.working_directory.clone().unwrap_or_else(|| cwd.clone()),
            &cwd,
        )
        .display()
        .to_string(),
    );
    let timing = TimingArgs {
        schedule_type: Some(schedule_type),
        cron_expression: a.cron,
        scheduled_at: a.at,
        timezone: a.timezone,
        missed_run_policy: a.missed_run_policy,
        overlap_policy: a.overlap,
        max_runs: a.max_runs,
        expires_at: a.expires_at,
        after_schedule: a.after,
    };
    let v = if a.r#loop {
        let r#loop = loop_request(
            a.prompt.join(" "),
            &a.loop_flags,
            LoopShared {
                pipeline: a.pipeline,
                steps: &a.steps,
                priority: a.priority,
                working_directory: a.working_directory.clone(),
                agent: a.agent.clone(),
            },
        )?;
        client.call(&ScheduleLoopArgs { r#loop, timing }).await?
    } else if a.pipeline {
        let mut steps: Vec<String> = Vec::new();
        if !a.prompt.is_empty() {
            steps.push(a.prompt.join(" "));
        }
        steps.extend(a.steps);
        if steps.len() < 2 {
            return Err(CliError::Usage(
                "a scheduled pipeline needs at least 2 steps: --pipeline --step <prompt> --step <prompt>".into(),
            ));
        }
        client
            .call(&SchedulePipelineArgs {
                steps: steps
                    .into_iter()
                    .map(|prompt| ScheduleStepArgs {
                        prompt,
                        ..Default::default()
                    })
                    .collect(),
                priority: a.priority,
                working_directory: dir,
                agent: a.agent,
                timing,
            })
            .await?
    } else {
        let prompt = a.prompt.join(" ");
        if prompt.trim().is_empty() {
            return Err(CliError::Usage(
                "give the task's prompt: beat schedule create <prompt> --cron EXPR".into(),
            ));
        }
        client
            .call(&ScheduleTaskArgs {
                prompt,
                priority: a.priority,
                working_directory: dir,
                agent: a.agent,
                timing,
            })
            .await?
    };
    if a.json {
        print_json(&v);
    } else {
        outln!("Schedule created: {}", text(&v["scheduleId"]));
        eprintln!(
            "  type {}, zone {}, next run {}",
            text(&v["scheduleType"]),
            text(&v["timezone"]),
            text(&v["nextRunAt"])
        );
    }
    Ok(0)
}

pub async fn run(cmd: ScheduleCommand, home: &Home) -> Result<i32, CliError> {
    let client = DaemonClient::connect(home).await?;
    let code = match cmd {
        ScheduleCommand::Create(a) => create(&client, *a).await?,
        ScheduleCommand::List {
            status,
            limit,
            json,
        } => {
            let v = client
                .call(&ListSchedulesArgs {
                    status,
                    limit,
                    offset: None,
                })
                .await?;
            if json {
                print_json(&v["schedules"]);
            } else {
                for s in v["schedules"].as_array().into_iter().flatten() {
                    outln!(
                        "{}  {:<9}  {:<8}  {:<16}  next {}  runs {}",
                        text(&s["id"]),
                        text(&s["status"]),
                        text(&s["scheduleType"]),
                        text(&s["cronExpression"]),
                        text(&s["nextRunAt"]),
                        text(&s["runCount"])
                    );
                }
            }
            0
        }
        ScheduleCommand::Status {
            id,
            history,
            history_limit,
            json,
        } => {
            let v = client
                .call(&ScheduleStatusArgs {
                    schedule_id: id,
                    include_history: Some(history),
                    history_limit,
                    next_runs: None,
                })
                .await?;
            if json {
                let mut out = v["schedule"].clone();
                if history {
                    out["history"] = v["history"].clone();
                }
                print_json(&out);
            } else {
                let s = &v["schedule"];
                for key in [
                    "id",
                    "status",
                    "scheduleType",
                    "cronExpression",
                    "scheduledAt",
                    "timezone",
                    "missedRunPolicy",
                    "overlapPolicy",
                    "runCount",
                    "maxRuns",
                    "lastRunAt",
                    "nextRunAt",
                    "expiresAt",
                    "afterScheduleId",
                    "reason",
                ] {
                    outln!("{key}: {}", text(&s[key]));
                }
                for h in v["history"].as_array().into_iter().flatten() {
                    outln!(
                        "  {}  {:<9}  {}  {}",
                        text(&h["scheduledFor"]),
                        text(&h["status"]),
                        text(if h["taskId"].is_null() {
                            &h["pipelineId"]
                        } else {
                            &h["taskId"]
                        }),
                        h["errorMessage"].as_str().unwrap_or("")
                    );
                }
            }
            0
        }
        ScheduleCommand::Cancel {
            id,
            cancel_tasks,
            reason,
            json,
        } => {
            let reason = reason.join(" ");
            let v = client
                .call(&CancelScheduleArgs {
                    schedule_id: id,
                    reason: (!reason.trim().is_empty()).then_some(reason),
                    cancel_tasks: Some(cancel_tasks),
                })
                .await?;
            done(&v, json);
            0
        }
        ScheduleCommand::Pause { id, json } => {
            let v = client.call(&PauseScheduleArgs { schedule_id: id }).await?;
            done(&v, json);
            0
        }
        ScheduleCommand::Resume { id, json } => {
            let v = client.call(&ResumeScheduleArgs { schedule_id: id }).await?;
            done(&v, json);
            0
        }
        ScheduleCommand::Run { id, json } => {
            let v = client
                .call(&TriggerScheduleArgs { schedule_id: id })
                .await?;
            if json {
                print_json(&v);
            } else {
                outln!(
                    "Execution {}: {}",
                    text(&v["executionId"]),
                    text(if v["taskId"].is_null() {
                        &v["pipelineId"]
                    } else {
                        &v["taskId"]
                    })
                );
            }
            0
        }
        ScheduleCommand::Next { id, n, json } => {
            let v = client
                .call(&ScheduleStatusArgs {
                    schedule_id: id,
                    include_history: None,
                    history_limit: None,
                    next_runs: Some(n.clamp(1, 100)),
                })
                .await?;
            if json {
                print_json(
                    &json!({ "scheduleId": v["schedule"]["id"], "timezone": v["schedule"]["timezone"], "nextRuns": v["nextRuns"] }),
                );
            } else {
                for t in v["nextRuns"].as_array().into_iter().flatten() {
                    outln!("{}", text(t));
                }
            }
            0
        }
    };
    client.close().await;
    Ok(code)
}

fn done(v: &Value, json: bool) {
    if json {
        print_json(v);
    } else {
        eprintln!("{}", text(&v["message"]));
    }
}
