//! Prune: remove finished tasks and pipelines now (the daemon also does it daily with
//! `taskRetentionDays`). Thin: one Engine message, the answer shaped for people and
//! scripts.

use backbeat_actors::engine::Prune;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::context::{ToolContext, ToolOutcome};

/// Remove finished work that ended at least `olderThanMs` ago.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PruneArgs {
    /// Age in ms; 0 removes every finished task and pipeline. Default: the
    /// taskRetentionDays setting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub older_than_ms: Option<u64>,
}

pub async fn prune(server: &ToolContext, args: PruneArgs) -> ToolOutcome {
    let report = server
        .engine
        .engine
        .send(Prune {
            older_than_ms: args.older_than_ms,
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok(json!({
        "success": true,
        "olderThanMs": report.older_than_ms,
        "removedTasks": report.tasks,
        "removedPipelines": report.pipelines,
        "removedLoops": report.loops,
        "removedScheduleRuns": report.schedule_runs,
        "runFolderBytes": report.run_folder_bytes,
    }))
}
