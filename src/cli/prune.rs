//! `beat prune [--older-than DURATION] [--json]`: remove finished tasks and pipelines
//! now, and say what went.

use clap::Args;

use super::{outln, parse_duration, print_json};
use crate::error::CliError;
use crate::mcp::client::DaemonClient;
use crate::mcp::tools::retention::PruneArgs;
use crate::paths::Home;

#[derive(Args)]
pub struct PruneCliArgs {
    /// Remove what ended at least this long ago: 0s (every finished one), 12h, 3d;
    /// default: taskRetentionDays
    #[arg(long, value_parser = parse_duration)]
    older_than: Option<u64>,
    /// Print {"removedTasks": […], "removedPipelines": […], …}
    #[arg(long)]
    json: bool,
}

pub async fn run(args: PruneCliArgs, home: &Home) -> Result<i32, CliError> {
    let client = DaemonClient::connect(home).await?;
    let v = client
        .call(&PruneArgs {
            older_than_ms: args.older_than,
        })
        .await?;
    client.close().await;
    if args.json {
        let mut v = v;
        if let Some(map) = v.as_object_mut() {
            map.remove("success");
        }
        print_json(&v);
        return Ok(0);
    }
    let ids = |key: &str| -> Vec<String> {
        v[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(String::from))
            .collect()
    };
    let (tasks, pipelines) = (ids("removedTasks"), ids("removedPipelines"));
    let (loops, runs) = (ids("removedLoops"), ids("removedScheduleRuns"));
    let bytes = v["runFolderBytes"].as_u64().unwrap_or(0);
    let count = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    eprintln!(
        "removed {}, {}, {} and {} ({:.1} MiB of output)",
        count(tasks.len(), "task"),
        count(pipelines.len(), "pipeline"),
        count(loops.len(), "loop"),
        count(runs.len(), "schedule execution"),
        bytes as f64 / (1024.0 * 1024.0)
    );
    for id in loops.iter().chain(&runs).chain(&pipelines).chain(&tasks) {
        outln!("{id}");
    }
    Ok(0)
}
