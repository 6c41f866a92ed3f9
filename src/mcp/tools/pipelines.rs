//! Pipeline tools: CreatePipeline (the original's fields, plus `delayMs` per step; it
//! returns `pipelineId` and each step's `taskId`), PipelineStatus and CancelPipeline.
//!
//! Thin: a pipeline is an entity of the engine (`PipelineActor` over
//! `model::pipeline`, with its own record and status); these handlers parse arguments,
//! send one Engine message, and shape the answer.

use std::path::Path;

use backbeat_actors::engine::{CancelPipeline, CreatePipeline, NewTask};
use backbeat_actors::model::PipelineRecord;
use backbeat_actors::{Priority, TaskRecord};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::context::{ToolContext, ToolOutcome};
use super::tasks::{PriorityField, preview, read};
use crate::paths::absolute;

/// One step of a pipeline.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StepArgs {
    #[schemars(length(min = 1, max = 1048576))]
    pub prompt: String,
    pub priority: Option<PriorityField>,
    pub working_directory: Option<String>,
    pub agent: Option<String>,
    /// Wait this long (ms) once the step may start, before starting it.
    #[schemars(range(min = 0, max = 86400000))]
    pub delay_ms: Option<u64>,
}

/// Run 2 to 20 prompts one after the other; a failed step cancels the steps after it.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CreatePipelineArgs {
    #[schemars(length(min = 2, max = 20))]
    pub steps: Vec<StepArgs>,
    /// Defaults for every step that names none.
    pub priority: Option<PriorityField>,
    pub working_directory: Option<String>,
    pub agent: Option<String>,
}

/// A pipeline's state and each step's task and state.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PipelineStatusArgs {
    #[schemars(regex(pattern = r"^pipeline-"))]
    pub pipeline_id: String,
}

/// Cancel a pipeline: its running step is stopped and the steps after it cancelled.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CancelPipelineArgs {
    #[schemars(regex(pattern = r"^pipeline-"))]
    pub pipeline_id: String,
    /// Why (shown in each cancelled step's reason).
    pub reason: Option<String>,
}

pub async fn create(server: &ToolContext, args: CreatePipelineArgs) -> ToolOutcome {
    let dir_of = |d: &Option<String>| {
        d.as_deref()
            .map(|d| absolute(Path::new(d), &server.session_cwd))
    };
    let shared_dir = dir_of(&args.working_directory).unwrap_or_else(|| server.session_cwd.clone());
    let steps = args
        .steps
        .into_iter()
        .map(|s| {
            let task = NewTask {
                prompt: s.prompt,
                priority: s
                    .priority
                    .or(args.priority)
                    .map(Priority::from)
                    .unwrap_or_default(),
                agent: s.agent.or_else(|| args.agent.clone()),
                working_directory: dir_of(&s.working_directory)
                    .unwrap_or_else(|| shared_dir.clone()),
                ..Default::default()
            };
            (task, s.delay_ms)
        })
        .collect();
    let (pipeline, tasks) = server
        .engine
        .engine
        .send(CreatePipeline { steps })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok(json!({
        "success": true,
        "pipelineId": pipeline.id,
        "status": pipeline.status,
        "stepCount": tasks.len(),
        "steps": tasks.iter().enumerate().map(|(i, t)| json!({
            "index": i,
            "taskId": t.id,
            "status": t.status,
            "prompt": preview(&t.prompt, 50),
            "delayMs": t.start_delay,
        })).collect::<Vec<_>>(),
    }))
}

/// The pipeline's record and its steps, in order.
async fn find(server: &ToolContext, id: &str) -> Result<(PipelineRecord, Vec<TaskRecord>), String> {
    let key = id.to_string();
    let found = read(server, move |s| {
        Ok(match s.pipeline(&key)? {
            Some(p) => Some((p, s.pipeline_steps(&key)?)),
            None => None,
        })
    })
    .await?;
    found.ok_or_else(|| {
        format!(
            "pipeline {id} not found. Pipeline ids look like pipeline-…; CreatePipeline returns them"
        )
    })
}

pub async fn status(server: &ToolContext, args: PipelineStatusArgs) -> ToolOutcome {
    let (pipeline, steps) = find(server, &args.pipeline_id).await?;
    Ok(json!({
        "success": true,
        "pipelineId": pipeline.id,
        "status": pipeline.status,
        "reason": pipeline.reason,
        "steps": steps.iter().map(|t| json!({
            "index": t.pipeline_step.unwrap_or(0).saturating_sub(1),
            "taskId": t.id,
            "status": t.status,
            "reason": t.reason,
            "agent": t.agent,
            "delayMs": t.start_delay,
            "startedAt": t.started_at,
            "completedAt": t.completed_at,
        })).collect::<Vec<_>>(),
    }))
}

pub async fn cancel(server: &ToolContext, args: CancelPipelineArgs) -> ToolOutcome {
    let pipeline = server
        .engine
        .engine
        .send(CancelPipeline {
            pipeline_id: args.pipeline_id,
            reason: args.reason,
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok(json!({
        "success": true,
        "message": format!("Pipeline {} cancelled", pipeline.id),
        "pipelineId": pipeline.id,
        "status": pipeline.status,
    }))
}
