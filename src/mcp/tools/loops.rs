//! Loop tools (spec 3.3): CreateLoop, LoopStatus, ListLoops, CancelLoop, PauseLoop and
//! ResumeLoop, with the original's names, fields, defaults and response keys, and the
//! new settings (budgets, patience, worktree, agent eval) beside them.
//!
//! Thin: a loop is an entity of the engine (`LoopActor` over `model::loops`); these
//! handlers parse arguments, send one Engine message or read the store, and shape the
//! answer with the model's views.

use std::path::Path;

use backbeat_actors::Priority;
use backbeat_actors::engine::{CancelLoop, CreateLoop, PauseLoop, ResumeLoop};
use backbeat_actors::model::loops::{
    self, CreateLoopRequest, Direction, EvalMode, LoopStatus, Strategy,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::context::{ToolContext, ToolOutcome};
use super::tasks::{PriorityField, read};
use crate::paths::absolute;

#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StrategyField {
    Retry,
    Optimize,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DirectionField {
    Minimize,
    Maximize,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EvalModeField {
    Shell,
    Agent,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LoopStatusField {
    Running,
    Paused,
    Completed,
    Failed,
    Cancelled,
}

/// Run an agent, judge its work with an eval, and iterate: `retry` until the exit
/// condition passes, `optimize` keeping the best score.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CreateLoopArgs {
    /// Required unless pipelineSteps is given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    pub strategy: Option<StrategyField>,
    /// Shell eval: retry passes on exit 0; optimize reads the score from the last line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_condition: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_direction: Option<DirectionField>,
    /// Milliseconds (default 60000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_timeout: Option<u64>,
    /// `shell` (default) or `agent`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_mode: Option<EvalModeField>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_prompt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_directory: Option<String>,
    /// Default 10; 0 = unlimited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_iterations: Option<u32>,
    /// Default 3; 0 = unlimited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_consecutive_failures: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cooldown_ms: Option<u64>,
    /// Default true; false continues from the previous iteration's checkpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fresh_context: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pipeline_steps: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<PriorityField>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub git_branch: Option<String>,
    /// Run in a git worktree of the loop's own (needs gitBranch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worktree: Option<bool>,
    /// USD (agents that report cost only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_cost: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// Milliseconds of running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_duration: Option<u64>,
    /// Optimize: stop after this many iterations without a better score.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patience: Option<u32>,
}

#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoopStatusArgs {
    #[schemars(length(min = 1))]
    pub loop_id: String,
    #[serde(default)]
    pub include_history: bool,
    /// Default 20.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history_limit: Option<usize>,
}

#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ListLoopsArgs {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<LoopStatusField>,
    /// 1 to 100 (default 20).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CancelLoopArgs {
    pub loop_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Default true: cancel every running task of the current iteration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancel_tasks: Option<bool>,
}

#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PauseLoopArgs {
    pub loop_id: String,
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResumeLoopArgs {
    pub loop_id: String,
}

pub(super) fn request(
    server: &ToolContext,
    a: CreateLoopArgs,
) -> Result<CreateLoopRequest, String> {
    let Some(strategy) = a.strategy else {
        return Err("strategy is required: retry or optimize".into());
    };
    let dir = a
        .working_directory
        .as_deref()
        .map(|d| absolute(Path::new(d), &server.session_cwd))
        .unwrap_or_else(|| server.session_cwd.clone());
    Ok(CreateLoopRequest {
        prompt: a.prompt,
        strategy: match strategy {
            StrategyField::Retry => Strategy::Retry,
            StrategyField::Optimize => Strategy::Optimize,
        },
        exit_condition: a.exit_condition,
        eval_direction: a.eval_direction.map(|d| match d {
            DirectionField::Minimize => Direction::Minimize,
            DirectionField::Maximize => Direction::Maximize,
        }),
        eval_timeout: a.eval_timeout,
        eval_mode: a.eval_mode.map(|m| match m {
            EvalModeField::Shell => EvalMode::Shell,
            EvalModeField::Agent => EvalMode::Agent,
        }),
        eval_prompt: a.eval_prompt,
        eval_agent: a.eval_agent,
        working_directory: dir.display().to_string(),
        max_iterations: a.max_iterations,
        max_consecutive_failures: a.max_consecutive_failures,
        cooldown_ms: a.cooldown_ms,
        fresh_context: a.fresh_context,
        pipeline_steps: a.pipeline_steps,
        priority: a.priority.map(Priority::from),
        agent: a.agent.unwrap_or_default(),
        model: a.model,
        system_prompt: a.system_prompt,
        git_branch: a.git_branch,
        worktree: a.worktree.unwrap_or(false),
        max_cost: a.max_cost,
        max_tokens: a.max_tokens,
        max_duration: a.max_duration,
        patience: a.patience,
        schedule_id: None,
    })
}

pub async fn create(server: &ToolContext, args: CreateLoopArgs) -> ToolOutcome {
    let req = request(server, args)?;
    let rec = server
        .engine
        .engine
        .send(CreateLoop(req))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok(json!({
        "success": true,
        "loopId": rec.id,
        "strategy": rec.strategy,
        "status": rec.status,
        "maxIterations": rec.max_iterations,
        "gitBranch": rec.git_branch,
        "worktreePath": rec.worktree_path,
        "message": "Loop created successfully",
    }))
}

pub async fn status(server: &ToolContext, args: LoopStatusArgs) -> ToolOutcome {
    let id = args.loop_id.clone();
    let history = args.include_history;
    let (rec, iterations) = read(server, move |s| {
        let rec = s.eval_loop(&id)?;
        let its = match (&rec, history) {
            (Some(_), true) => s.loop_iterations(&id)?,
            _ => Vec::new(),
        };
        Ok((rec, its))
    })
    .await?;
    let Some(rec) = rec else {
        return Err(backbeat_actors::EngineError::LoopNotFound(args.loop_id).to_string());
    };
    let mut out = json!({"success": true, "loop": loops::loop_status_view(&rec)});
    if history {
        let limit = args.history_limit.unwrap_or(20).max(1);
        out["iterations"] = iterations
            .iter()
            .rev()
            .take(limit)
            .map(loops::iteration_view)
            .collect();
    }
    Ok(out)
}

pub async fn list(server: &ToolContext, args: ListLoopsArgs) -> ToolOutcome {
    let limit = args.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(format!("limit {limit} is out of range: give 1 to 100"));
    }
    let status = args.status.map(|s| match s {
        LoopStatusField::Running => LoopStatus::Running,
        LoopStatusField::Paused => LoopStatus::Paused,
        LoopStatusField::Completed => LoopStatus::Completed,
        LoopStatusField::Failed => LoopStatus::Failed,
        LoopStatusField::Cancelled => LoopStatus::Cancelled,
    });
    let found = read(server, move |s| s.loops(status.map(|s| s.as_str()), limit)).await?;
    Ok(json!({
        "success": true,
        "loops": found.iter().map(loops::loop_list_view).collect::<Vec<_>>(),
        "count": found.len(),
    }))
}

pub async fn cancel(server: &ToolContext, args: CancelLoopArgs) -> ToolOutcome {
    let cancel_tasks = args.cancel_tasks.unwrap_or(true);
    let rec = server
        .engine
        .engine
        .send(CancelLoop {
            loop_id: args.loop_id,
            reason: args.reason,
            cancel_tasks,
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok(json!({
        "success": true,
        "message": format!("Loop {} cancelled", rec.id),
        "reason": rec.reason,
        "cancelTasksRequested": cancel_tasks,
    }))
}

pub async fn pause(server: &ToolContext, args: PauseLoopArgs) -> ToolOutcome {
    let rec = server
        .engine
        .engine
        .send(PauseLoop {
            loop_id: args.loop_id,
            force: args.force,
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok(json!({
        "success": true,
        "message": format!("Loop {} paused", rec.id),
        "force": args.force,
    }))
}

pub async fn resume(server: &ToolContext, args: ResumeLoopArgs) -> ToolOutcome {
    let rec = server
        .engine
        .engine
        .send(ResumeLoop {
            loop_id: args.loop_id,
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok(json!({
        "success": true,
        "message": format!("Loop {} resumed", rec.id),
    }))
}
