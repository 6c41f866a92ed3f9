//! `beat run`: delegate a task; detached by default, or followed with `-f`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde_json::{Value, json};

use super::{parse_duration, print_json};
use crate::error::CliError;
use crate::mcp::client::DaemonClient;
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
    #[arg(short, long, value_parser = ["P0", "P1", "P2"])]
    priority: Option<String>,
    /// Directory the agent works in (default: the current directory)
    #[arg(short, long = "working-directory")]
    working_directory: Option<PathBuf>,
    /// Wall-clock limit: ms, or 30s, 5m, 2h
    #[arg(short, long, value_parser = parse_duration)]
    timeout: Option<u64>,
    /// Stop the agent after this long without output: ms, or 30s, 5m
    #[arg(long = "idle-timeout", value_parser = parse_duration)]
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
    let mut request = json!({
        "prompt": prompt,
        "workingDirectory": absolute(&args.working_directory.unwrap_or_else(|| cwd.clone()), &cwd).display().to_string(),
    });
    let fields = [
        ("agent", args.agent.map(Value::from)),
        ("priority", args.priority.map(Value::from)),
        ("timeout", args.timeout.map(Value::from)),
        ("idleTimeout", args.idle_timeout.map(Value::from)),
        ("maxOutputBuffer", args.max_output_buffer.map(Value::from)),
        ("model", args.model.map(Value::from)),
        ("systemPrompt", args.system_prompt.map(Value::from)),
        ("continueFrom", args.continue_from.map(Value::from)),
        (
            "dependsOn",
            (!args.deps.is_empty()).then(|| {
                Value::from(
                    args.deps
                        .iter()
                        .map(|d| d.trim())
                        .filter(|d| !d.is_empty())
                        .collect::<Vec<_>>(),
                )
            }),
        ),
    ];
    for (key, value) in fields {
        if let Some(v) = value {
            request[key] = v;
        }
    }
    let client = DaemonClient::connect(home).await?;
    let reply = client.call("DelegateTask", request).await?;
    let id = reply["taskId"].as_str().unwrap_or_default().to_string();
    if !args.foreground {
        if args.json {
            print_json(&json!({ "taskId": id }));
        } else {
            println!("Task ID: {id}");
            eprintln!("Follow it with `beat logs {id} -f`; see it with `beat status {id}`.");
        }
        client.close().await;
        return Ok(0);
    }
    eprintln!("Task ID: {id}");
    let code = follow(&client, home, &id, true).await?;
    if args.json {
        let v = client.call("TaskStatus", json!({ "taskId": id })).await?;
        print_json(&super::record_for_cli(&v["task"]));
    }
    client.close().await;
    Ok(code)
}

/// Streams a task's output until it is finished; Ctrl-C cancels it when
/// `cancel_on_interrupt`. Returns the exit code that the task's end calls for. A
/// structured agent is shown through its readable transcript, not its JSON.
pub async fn follow(
    client: &DaemonClient,
    home: &Home,
    id: &str,
    cancel_on_interrupt: bool,
) -> Result<i32, CliError> {
    let run = home.run_dir(id);
    let out = super::tasks::Follower::readable(&run);
    let err = super::tasks::Follower::new(run.join("stderr.log"), true);
    follow_files(client, id, out, err, cancel_on_interrupt).await
}

/// Copies what the followers' files gain until the task is finished.
pub async fn follow_files(
    client: &DaemonClient,
    id: &str,
    mut out: super::tasks::Follower,
    mut err: super::tasks::Follower,
    cancel_on_interrupt: bool,
) -> Result<i32, CliError> {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let wait = client.call("WaitTask", json!({ "taskId": id, "timeoutMs": 3_600_000 }));
    tokio::pin!(wait);
    let interrupt = tokio::signal::ctrl_c();
    tokio::pin!(interrupt);
    loop {
        tokio::select! {
            done = &mut wait => {
                out.drain();
                err.drain();
                let v = done?;
                if v["finished"] != Value::Bool(true) {
                    // An hour passed: wait again.
                    wait.set(client.call("WaitTask", json!({ "taskId": id, "timeoutMs": 3_600_000 })));
                    continue;
                }
                let record = crate::mcp::client::record_of(&v["task"])?;
                return Ok(super::tasks::exit_code_of(&record));
            }
            _ = &mut interrupt, if cancel_on_interrupt => {
                eprintln!("\nbeat: interrupted; cancelling {id}");
                let _ = client.call("CancelTask", json!({ "taskId": id, "reason": "interrupted (Ctrl-C)" })).await;
                out.drain();
                err.drain();
                return Ok(130);
            }
            _ = tick.tick() => {
                out.drain();
                err.drain();
            }
        }
    }
}
