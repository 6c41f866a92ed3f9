//! `beat loop <prompt…> (--until CMD | --eval CMD --minimize|--maximize) [flags]` and
//! `beat loop list|status|cancel|pause|resume|results` (spec 4.5, issue 8).
//!
//! Thin: every command is one MCP call to the daemon (only the daemon runs iterations,
//! W10); the views and the ledger are the model's.

use std::path::PathBuf;

use backbeat_actors::model::loops::{IterationRecord, LEDGER_HEADER, ledger_tsv, score_chart};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::{outln, parse_duration, parse_priority, print_json};
use crate::error::CliError;
use crate::mcp::client::DaemonClient;
use crate::mcp::tools::loops::{
    CancelLoopArgs, CreateLoopArgs, DirectionField, ListLoopsArgs, LoopStatusArgs, LoopStatusField,
    PauseLoopArgs, ResumeLoopArgs, StrategyField,
};
use crate::mcp::tools::tasks::PriorityField;
use crate::paths::{Home, absolute};

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct LoopArgs {
    #[command(subcommand)]
    command: Option<LoopCommand>,
    /// The prompt of every iteration (a prompt starting with a sub-command's name goes after `--`)
    prompt: Vec<String>,
    #[command(flatten)]
    flags: LoopFlags,
    /// A pipeline loop: each iteration runs the --step prompts in order
    #[arg(long)]
    pipeline: bool,
    #[arg(long = "step")]
    steps: Vec<String>,
    #[arg(short, long, value_parser = parse_priority)]
    priority: Option<PriorityField>,
    #[arg(short, long = "working-directory")]
    working_directory: Option<PathBuf>,
    #[arg(short, long)]
    agent: Option<String>,
    /// Print {"loopId": …}
    #[arg(long)]
    json: bool,
}

/// What a loop is and how it is judged: `beat loop`'s flags, which `beat schedule create
/// --loop` takes too.
#[derive(Args, Clone, Default)]
pub struct LoopFlags {
    /// Retry until this shell command exits 0
    #[arg(long, conflicts_with = "eval")]
    pub until: Option<String>,
    /// Optimize the score this shell command prints as its last line
    #[arg(long)]
    pub eval: Option<String>,
    #[arg(long, requires = "eval", conflicts_with = "maximize")]
    pub minimize: bool,
    #[arg(long, requires = "eval")]
    pub maximize: bool,
    /// 0 = unlimited (default 10)
    #[arg(long)]
    pub max_iterations: Option<u32>,
    /// Consecutive failures that end the loop; 0 = unlimited (default 3)
    #[arg(long)]
    pub max_failures: Option<u32>,
    /// Pause between iterations: ms, or 30s, 5m
    #[arg(long, value_parser = parse_duration)]
    pub cooldown: Option<u64>,
    /// Eval time limit: ms (1000 to 300000), or 30s, 5m
    #[arg(long, value_parser = parse_duration)]
    pub eval_timeout: Option<u64>,
    /// Each iteration continues from the previous one's checkpoint and session
    #[arg(long)]
    pub checkpoint: bool,
    /// Work on this new git branch: commit kept work, reset the rest
    #[arg(long)]
    pub git_branch: Option<String>,
    /// Run in a git worktree of the loop's own (needs --git-branch)
    #[arg(long)]
    pub worktree: bool,
    /// Budget in USD (agents that report cost only)
    #[arg(long)]
    pub max_cost: Option<f64>,
    #[arg(long)]
    pub max_tokens: Option<u64>,
    /// Budget of running time: ms, or 30m, 2h
    #[arg(long, value_parser = parse_duration)]
    pub max_duration: Option<u64>,
    /// Optimize: stop after N iterations without a better score
    #[arg(long)]
    pub patience: Option<u32>,
}

#[derive(Subcommand)]
#[command(defer = true)]
enum LoopCommand {
    /// The newest loops
    List {
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long)]
        json: bool,
    },
    /// A loop's state and score chart; --history lists its iterations
    Status {
        id: String,
        #[arg(long)]
        history: bool,
        #[arg(long)]
        history_limit: Option<usize>,
        #[arg(long)]
        json: bool,
    },
    /// Cancel a loop (its running tasks only with --cancel-tasks)
    Cancel {
        id: String,
        #[arg(long)]
        cancel_tasks: bool,
        reason: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Pause a running loop (--force cancels the running iteration)
    Pause {
        id: String,
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
    /// Resume a paused loop
    Resume {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// The results ledger as TSV (or --json)
    Results {
        id: String,
        #[arg(long)]
        json: bool,
    },
}

fn status_field(text: &str) -> Result<LoopStatusField, CliError> {
    Ok(match text {
        "running" => LoopStatusField::Running,
        "paused" => LoopStatusField::Paused,
        "completed" => LoopStatusField::Completed,
        "failed" => LoopStatusField::Failed,
        "cancelled" => LoopStatusField::Cancelled,
        _ => {
            return Err(CliError::Usage(format!(
                "'{text}' is not a loop status: running, paused, completed, failed or cancelled"
            )));
        }
    })
}

fn iterations_of(v: &Value) -> Vec<IterationRecord> {
    // The tool's iteration views, back to records for the ledger (oldest first).
    let mut its: Vec<IterationRecord> = v["iterations"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| IterationRecord {
            iteration_number: i["iterationNumber"].as_u64().unwrap_or(0) as u32,
            status: serde_json::from_value(i["status"].clone()).unwrap_or_default(),
            score: i["score"].as_f64(),
            best_score: i["bestScore"].as_f64(),
            git_commit_sha: i["gitCommitSha"].as_str().map(str::to_string),
            duration_ms: i["durationMs"].as_u64(),
            usage: backbeat_actors::model::task::Usage {
                input_tokens: i["usage"]["inputTokens"].as_u64().unwrap_or(0),
                output_tokens: i["usage"]["outputTokens"].as_u64().unwrap_or(0),
                cost_usd: i["usage"]["costUsd"].as_f64(),
                ..Default::default()
            },
            note: i["note"].as_str().map(str::to_string),
            error_message: i["errorMessage"].as_str().map(str::to_string),
            eval_output: i["evalOutput"].as_str().map(str::to_string),
            ..Default::default()
        })
        .collect();
    its.sort_by_key(|i| i.iteration_number);
    its
}

pub async fn run(args: LoopArgs, home: &Home) -> Result<i32, CliError> {
    let request = match &args.command {
        None => Some(create_request(&args)?),
        Some(_) => None,
    };
    let client = DaemonClient::connect(home).await?;
    let res = dispatch(&client, args, request).await;
    client.close().await;
    res
}

fn create_request(args: &LoopArgs) -> Result<CreateLoopArgs, CliError> {
    let prompt = args.prompt.join(" ");
    if prompt.trim() == "get" {
        return Err(CliError::Usage(
            "`beat loop get` is now `beat loop status <id>`".into(),
        ));
    }
    loop_request(
        prompt,
        &args.flags,
        LoopShared {
            pipeline: args.pipeline,
            steps: &args.steps,
            priority: args.priority,
            working_directory: args.working_directory.clone(),
            agent: args.agent.clone(),
        },
    )
}

/// The flags `beat loop` shares with the commands around it (`beat schedule create`).
pub struct LoopShared<'a> {
    pub pipeline: bool,
    pub steps: &'a [String],
    pub priority: Option<PriorityField>,
    pub working_directory: Option<PathBuf>,
    pub agent: Option<String>,
}

/// A CreateLoop request from the command line's prompt and flags.
pub fn loop_request(
    prompt: String,
    flags: &LoopFlags,
    shared: LoopShared<'_>,
) -> Result<CreateLoopArgs, CliError> {
    let args = flags;
    let (strategy, exit_condition, direction) = match (&args.until, &args.eval) {
        (Some(until), None) => (StrategyField::Retry, until.clone(), None),
        (None, Some(eval)) => {
            let direction = match (args.minimize, args.maximize) {
                (true, false) => DirectionField::Minimize,
                (false, true) => DirectionField::Maximize,
                _ => {
                    return Err(CliError::Usage(
                        "--eval needs a direction: --minimize or --maximize".into(),
                    ));
                }
            };
            (StrategyField::Optimize, eval.clone(), Some(direction))
        }
        _ => {
            return Err(CliError::Usage(
                "say how to judge each iteration: --until CMD (retry until it exits 0) or --eval CMD --minimize|--maximize".into(),
            ));
        }
    };
    let pipeline_steps = if shared.pipeline || !shared.steps.is_empty() {
        let mut steps = shared.steps.to_vec();
        if !prompt.trim().is_empty() {
            steps.insert(0, prompt.clone());
        }
        Some(steps)
    } else {
        None
    };
    let cwd = std::env::current_dir()?;
    Ok(CreateLoopArgs {
        prompt: pipeline_steps.is_none().then_some(prompt),
        strategy: Some(strategy),
        exit_condition: Some(exit_condition),
        eval_direction: direction,
        eval_timeout: args.eval_timeout,
        working_directory: Some(
            absolute(
                &shared.working_directory.unwrap_or_else(|| cwd.clone()),
                &cwd,
            )
            .display()
            .to_string(),
        ),
        max_iterations: args.max_iterations,
        max_consecutive_failures: args.max_failures,
        cooldown_ms: args.cooldown,
        fresh_context: args.checkpoint.then_some(false),
        pipeline_steps,
        priority: shared.priority,
        agent: shared.agent,
        git_branch: args.git_branch.clone(),
        worktree: args.worktree.then_some(true),
        max_cost: args.max_cost,
        max_tokens: args.max_tokens,
        max_duration: args.max_duration,
        patience: args.patience,
        ..Default::default()
    })
}

async fn dispatch(
    client: &DaemonClient,
    args: LoopArgs,
    request: Option<CreateLoopArgs>,
) -> Result<i32, CliError> {
    let Some(command) = args.command else {
        let request = request.unwrap_or_default();
        let v = client.call(&request).await?;
        if args.json {
            print_json(&json!({ "loopId": v["loopId"] }));
        } else {
            outln!("Loop ID: {}", v["loopId"].as_str().unwrap_or(""));
        }
        return Ok(0);
    };
    match command {
        LoopCommand::List {
            status,
            limit,
            json,
        } => {
            let status = status.as_deref().map(status_field).transpose()?;
            let v = client.call(&ListLoopsArgs { status, limit }).await?;
            if json {
                print_json(&json!({ "loops": v["loops"], "count": v["count"] }));
            } else {
                for l in v["loops"].as_array().into_iter().flatten() {
                    outln!(
                        "{}  {:<9}  {:<8}  {}/{}  {}",
                        l["id"].as_str().unwrap_or(""),
                        l["status"].as_str().unwrap_or(""),
                        l["strategy"].as_str().unwrap_or(""),
                        l["currentIteration"],
                        l["maxIterations"],
                        l["promptPreview"].as_str().unwrap_or("")
                    );
                }
            }
        }
        LoopCommand::Status {
            id,
            history,
            history_limit,
            json,
        } => {
            // The chart needs the scores even without --history.
            let v = client
                .call(&LoopStatusArgs {
                    loop_id: id,
                    include_history: true,
                    history_limit: Some(history_limit.unwrap_or(if history { 20 } else { 1000 })),
                })
                .await?;
            if json {
                let mut out = v["loop"].clone();
                if history {
                    out["iterations"] = v["iterations"].clone();
                }
                print_json(&out);
            } else {
                print_status(&v, history);
            }
        }
        LoopCommand::Cancel {
            id,
            cancel_tasks,
            reason,
            json,
        } => {
            let reason = reason.join(" ");
            let v = client
                .call(&CancelLoopArgs {
                    loop_id: id.clone(),
                    reason: (!reason.trim().is_empty()).then_some(reason),
                    cancel_tasks: Some(cancel_tasks),
                })
                .await?;
            done(json, &id, &v);
        }
        LoopCommand::Pause { id, force, json } => {
            let v = client
                .call(&PauseLoopArgs {
                    loop_id: id.clone(),
                    force,
                })
                .await?;
            done(json, &id, &v);
        }
        LoopCommand::Resume { id, json } => {
            let v = client
                .call(&ResumeLoopArgs {
                    loop_id: id.clone(),
                })
                .await?;
            done(json, &id, &v);
        }
        LoopCommand::Results { id, json } => {
            let v = client
                .call(&LoopStatusArgs {
                    loop_id: id,
                    include_history: true,
                    history_limit: Some(usize::MAX),
                })
                .await?;
            if json {
                let mut its = v["iterations"].as_array().cloned().unwrap_or_default();
                its.reverse();
                print_json(&json!({ "loopId": v["loop"]["id"], "iterations": its }));
            } else {
                let its = iterations_of(&v);
                let tsv = ledger_tsv(&its);
                debug_assert!(tsv.starts_with(LEDGER_HEADER));
                super::write_stdout(tsv.as_bytes());
            }
        }
    }
    Ok(0)
}

fn done(json: bool, id: &str, v: &Value) {
    if json {
        print_json(&json!({ "loopId": id, "message": v["message"] }));
    } else {
        eprintln!("{}", v["message"].as_str().unwrap_or("done"));
    }
}

fn print_status(v: &Value, history: bool) {
    let l = &v["loop"];
    let s = |k: &str| l[k].as_str().unwrap_or("").to_string();
    outln!("{}  {}  ({})", s("id"), s("status"), s("strategy"));
    outln!(
        "  iteration {}/{}  failures {}/{}  best {}",
        l["currentIteration"],
        l["maxIterations"],
        l["consecutiveFailures"],
        l["maxConsecutiveFailures"],
        l["bestScore"]
    );
    if let Some(reason) = l["reason"].as_str() {
        outln!("  {reason}");
    }
    let its = iterations_of(v);
    if let Some(chart) = score_chart(&its, 60) {
        outln!("  scores {chart}");
    }
    if history {
        for i in v["iterations"].as_array().into_iter().flatten() {
            outln!(
                "  #{:<3} {:<9} score {:<8} {}  {}",
                i["iterationNumber"],
                i["status"].as_str().unwrap_or(""),
                i["score"],
                i["gitCommitSha"]
                    .as_str()
                    .map(|s| &s[..s.len().min(8)])
                    .unwrap_or("-"),
                i["errorMessage"]
                    .as_str()
                    .or(i["note"].as_str())
                    .unwrap_or("")
            );
        }
    }
}

/// `beat wait <loop-…|pipeline-…>`: until the loop or pipeline ends; 0 when it
/// completed, 1 otherwise. Polls its status (loops and pipelines have no long poll yet).
pub async fn wait_entity(id: &str, json: bool, home: &Home) -> Result<i32, CliError> {
    use crate::mcp::tools::pipelines::PipelineStatusArgs;
    let client = DaemonClient::connect(home).await?;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
    let res = loop {
        tick.tick().await;
        let v = if id.starts_with("loop-") {
            client
                .call(&LoopStatusArgs {
                    loop_id: id.to_string(),
                    include_history: false,
                    history_limit: None,
                })
                .await
                .map(|v| v["loop"].clone())
        } else {
            client
                .call(&PipelineStatusArgs {
                    pipeline_id: id.to_string(),
                })
                .await
        };
        let v = match v {
            Ok(v) => v,
            Err(e) => break Err(e),
        };
        let status = v["status"].as_str().unwrap_or("").to_string();
        if matches!(status.as_str(), "completed" | "failed" | "cancelled") {
            if json {
                print_json(&v);
            } else {
                eprintln!("{id} {}", v["reason"].as_str().unwrap_or(&status));
            }
            break Ok(if status == "completed" { 0 } else { 1 });
        }
    };
    client.close().await;
    res
}
