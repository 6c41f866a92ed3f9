//! `beat run`: delegate a task; detached by default, or followed with `-f`.

use std::path::PathBuf;

use backbeat_actors::TaskStatus;
use clap::Args;
use serde_json::json;

use super::follow::{Followed, Follower, Sink, exit_code_of, follow_files};
use super::{outln, parse_priority, parse_time_limit, print_json};
use crate::error::CliError;
use crate::mcp::client::{DaemonClient, record_of};
use crate::mcp::tools::tasks::{DelegateTaskArgs, PriorityField};
use crate::paths::{Home, absolute};

#[derive(Args)]
pub struct RunArgs {
    /// The prompt (words are joined with spaces)
    #[arg(
        required_unless_present = "prompt_file",
        trailing_var_arg = true,
        allow_hyphen_values = false
    )]
    prompt: Vec<String>,
    /// Read the prompt from a file (`-` for stdin): for prompts too long for a command line
    #[arg(long = "prompt-file", conflicts_with = "prompt")]
    prompt_file: Option<PathBuf>,
    /// Agent to run (default: configuration `defaultAgent`)
    #[arg(short, long)]
    agent: Option<String>,
    /// P0 (critical), P1 (high), P2 (normal)
    #[arg(short, long, value_parser = parse_priority)]
    priority: Option<PriorityField>,
    /// Directory the agent works in (default: the current directory)
    #[arg(short, long = "working-directory")]
    working_directory: Option<PathBuf>,
    /// Wall-clock limit: ms, or 30s, 5m, 2h (1s to 24h)
    #[arg(short, long, value_parser = parse_time_limit)]
    timeout: Option<u64>,
    /// Stop the agent after this long without output: ms, or 30s, 5m (1s to 24h)
    #[arg(long = "idle-timeout", value_parser = parse_time_limit)]
    idle_timeout: Option<u64>,
    /// Bytes of output kept
    #[arg(short = 'b', long = "max-output-buffer", visible_alias = "buffer")]
    max_output_buffer: Option<u64>,
    /// Tasks that must complete first (comma-separated, repeatable)
    #[arg(long = "deps", visible_alias = "depends-on", value_delimiter = ',')]
    deps: Vec<String>,
    /// Carry this task's result into the prompt (and depend on it)
    #[arg(short = 'c', long = "continue-from", visible_alias = "continue")]
    continue_from: Option<String>,
    /// Model the agent should use
    #[arg(short, long)]
    model: Option<String>,
    /// Text added to the agent's system prompt
    #[arg(long = "system-prompt")]
    system_prompt: Option<String>,
    /// Stream the agent's output and exit with the task's result
    #[arg(short, long)]
    foreground: bool,
    /// Print {"taskId": ...} as JSON
    #[arg(long)]
    json: bool,
}

pub async fn run(args: RunArgs, home: &Home) -> Result<i32, CliError> {
    let cwd = std::env::current_dir()?;
    let prompt = match &args.prompt_file {
        Some(path) if path.as_os_str() == "-" => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
            text
        }
        Some(path) => std::fs::read_to_string(path).map_err(|e| {
            CliError::Usage(format!(
                "cannot read the prompt file {}: {e}",
                path.display()
            ))
        })?,
        None => args.prompt.join(" "),
    };
    if prompt.trim().is_empty() {
        return Err(CliError::Usage(
            "the prompt is empty: say what the agent should do".into(),
        ));
    }
    let deps: Vec<String> = args
        .deps
        .iter()
        .map(|d| d.trim().to_string())
        .filter(|d| !d.is_empty())
        .collect();
    let request = DelegateTaskArgs {
        prompt,
        priority: args.priority,
        working_directory: Some(
            absolute(&args.working_directory.unwrap_or_else(|| cwd.clone()), &cwd)
                .display()
                .to_string(),
        ),
        timeout: args.timeout,
        idle_timeout: args.idle_timeout,
        max_output_buffer: args.max_output_buffer,
        agent: args.agent,
        model: args.model,
        system_prompt: args.system_prompt,
        depends_on: (!deps.is_empty()).then_some(deps),
        continue_from: args.continue_from,
    };
    // Listening for Ctrl-C from before the submit: from then on it cancels the task.
    let mut interrupts = if args.foreground {
        Some(tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::interrupt(),
        )?)
    } else {
        None
    };
    let mut client = DaemonClient::connect(home).await?;
    let reply = client.call(&request).await?;
    let id = reply["taskId"].as_str().unwrap_or_default().to_string();
    if !args.foreground {
        if args.json {
            print_json(&json!({ "taskId": id }));
        } else {
            outln!("Task ID: {id}");
            eprintln!("Follow it with `beat logs {id} -f`; see it with `beat status {id}`.");
        }
        client.close().await;
        return Ok(0);
    }
    eprintln!("Task ID: {id}");
    // With --json, stdout is the one JSON document: the agent's output goes to stderr.
    let sink = if args.json {
        Sink::Stderr
    } else {
        Sink::Stdout
    };
    let run = home.run(&id);
    let files = (
        Follower::readable(home.run(&id), sink),
        Follower::new(run.stderr(), Sink::Stderr),
    );
    let followed = follow_files(&mut client, &id, Some(files), interrupts.as_mut()).await;
    client.close().await;
    let v = match followed? {
        Followed::Interrupted => return Ok(130),
        Followed::Finished(v) => v,
    };
    let record = record_of(&v["task"])?;
    if args.json {
        print_json(&v["task"]);
    }
    if record.status != TaskStatus::Completed {
        eprintln!(
            "beat: {id} {}",
            record.reason.as_deref().unwrap_or(record.status.as_str())
        );
    }
    Ok(exit_code_of(&record))
}
