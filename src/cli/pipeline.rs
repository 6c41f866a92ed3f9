//! `beat pipeline <prompt>… [--step <prompt>]… [--delay D]`, `beat pipeline status <id>`,
//! `beat pipeline cancel <id> [reason]`.

use std::path::PathBuf;

use clap::{Args, CommandFactory, Subcommand};
use serde_json::json;

use super::{outln, parse_duration, parse_priority, print_json};
use crate::error::CliError;
use crate::mcp::client::DaemonClient;
use crate::mcp::tools::pipelines::{
    CancelPipelineArgs, CreatePipelineArgs, PipelineStatusArgs, StepArgs,
};
use crate::mcp::tools::tasks::PriorityField;
use crate::paths::{Home, absolute};

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct PipelineArgs {
    #[command(subcommand)]
    command: Option<PipelineCommand>,
    /// The steps' prompts, in order (a prompt that is exactly `status` or `cancel` goes after `--`)
    prompts: Vec<String>,
    /// A step's prompt (repeatable; mixes with the positional prompts in the order given)
    #[arg(long = "step")]
    steps: Vec<String>,
    /// Wait before each step after the first: ms, or 30s, 5m
    #[arg(long, value_parser = parse_duration)]
    delay: Option<u64>,
    /// Agent of every step
    #[arg(short, long)]
    agent: Option<String>,
    #[arg(short, long, value_parser = parse_priority)]
    priority: Option<PriorityField>,
    #[arg(short, long = "working-directory")]
    working_directory: Option<PathBuf>,
    /// Print {"pipelineId": …, "steps": […]}
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
#[command(defer = true)]
enum PipelineCommand {
    /// The pipeline's state and each step's task and state
    Status {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Stop the running step and cancel the rest
    Cancel { id: String, reason: Vec<String> },
}

/// The step prompts in the order they were written, positional and `--step` mixed.
fn ordered_steps(args: &PipelineArgs) -> Vec<String> {
    let matches = super::Cli::command()
        .try_get_matches_from(std::env::args_os())
        .ok();
    let sub = matches
        .as_ref()
        .and_then(|m| m.subcommand_matches("pipeline"));
    let (Some(sub), false) = (sub, args.prompts.is_empty() || args.steps.is_empty()) else {
        return args.prompts.iter().chain(&args.steps).cloned().collect();
    };
    let mut indexed: Vec<(usize, String)> = Vec::new();
    if let Some(ix) = sub.indices_of("prompts") {
        indexed.extend(ix.zip(args.prompts.iter().cloned()));
    }
    if let Some(ix) = sub.indices_of("steps") {
        indexed.extend(ix.zip(args.steps.iter().cloned()));
    }
    indexed.sort_by_key(|(i, _)| *i);
    indexed.into_iter().map(|(_, s)| s).collect()
}

pub async fn run(args: PipelineArgs, home: &Home) -> Result<i32, CliError> {
    let client = DaemonClient::connect(home).await?;
    let code = match &args.command {
        Some(PipelineCommand::Status { id, json }) => {
            let v = client
                .call(&PipelineStatusArgs {
                    pipeline_id: id.clone(),
                })
                .await?;
            if *json {
                print_json(
                    &json!({ "pipelineId": v["pipelineId"], "status": v["status"], "steps": v["steps"] }),
                );
            } else {
                outln!(
                    "{}  {}",
                    v["pipelineId"].as_str().unwrap_or(""),
                    v["status"].as_str().unwrap_or("")
                );
                for s in v["steps"].as_array().into_iter().flatten() {
                    outln!(
                        "  {}. {}  {:<9}  {}",
                        s["index"].as_u64().unwrap_or(0) + 1,
                        s["taskId"].as_str().unwrap_or(""),
                        s["status"].as_str().unwrap_or(""),
                        s["reason"].as_str().unwrap_or("")
                    );
                }
            }
            0
        }
        Some(PipelineCommand::Cancel { id, reason }) => {
            let reason = reason.join(" ");
            let v = client
                .call(&CancelPipelineArgs {
                    pipeline_id: id.clone(),
                    reason: (!reason.trim().is_empty()).then_some(reason),
                })
                .await?;
            eprintln!("{}", v["message"].as_str().unwrap_or("cancelled"));
            0
        }
        None => {
            let steps = ordered_steps(&args);
            if steps.len() < 2 {
                return Err(CliError::Usage("a pipeline needs at least 2 steps: beat pipeline <prompt> <prompt> [--step <prompt>]…".into()));
            }
            let cwd = std::env::current_dir()?;
            let request = CreatePipelineArgs {
                steps: steps
                    .into_iter()
                    .enumerate()
                    .map(|(i, prompt)| StepArgs {
                        prompt,
                        delay_ms: args.delay.filter(|_| i > 0),
                        ..Default::default()
                    })
                    .collect(),
                priority: args.priority,
                working_directory: Some(
                    absolute(
                        &args
                            .working_directory
                            .clone()
                            .unwrap_or_else(|| cwd.clone()),
                        &cwd,
                    )
                    .display()
                    .to_string(),
                ),
                agent: args.agent.clone(),
            };
            let v = client.call(&request).await?;
            if args.json {
                print_json(&json!({ "pipelineId": v["pipelineId"], "steps": v["steps"] }));
            } else {
                outln!("Pipeline ID: {}", v["pipelineId"].as_str().unwrap_or(""));
                for s in v["steps"].as_array().into_iter().flatten() {
                    eprintln!(
                        "  {}. {}",
                        s["index"].as_u64().unwrap_or(0) + 1,
                        s["taskId"].as_str().unwrap_or("")
                    );
                }
            }
            0
        }
    };
    client.close().await;
    Ok(code)
}
