//! Task commands: list, status, logs, cancel, retry, wait.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use backbeat_actors::{TaskRecord, TaskStatus};
use clap::Args;
use serde_json::{Value, json};

use super::{iso, print_json, record_for_cli};
use crate::error::CliError;
use crate::mcp::client::{DaemonClient, record_of};
use crate::paths::Home;

#[derive(Args)]
pub struct ListArgs {
    /// Only tasks in this state
    #[arg(long, value_parser = ["blocked", "queued", "running", "completed", "failed", "cancelled"])]
    status: Option<String>,
    /// Most tasks shown
    #[arg(long, default_value_t = 100)]
    limit: u32,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct StatusArgs {
    /// A task id; without it, the newest tasks are listed
    id: Option<String>,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct LogsArgs {
    id: String,
    /// Keep printing new output until the task finishes
    #[arg(short, long)]
    follow: bool,
    /// Only the last N lines of each stream
    #[arg(long)]
    tail: Option<usize>,
}

#[derive(Args)]
pub struct CancelArgs {
    id: String,
    /// Why (shown in the task's reason)
    reason: Vec<String>,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct RetryArgs {
    id: String,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ResumeArgs {
    id: String,
    /// More instructions for the new attempt
    #[arg(long)]
    context: Option<String>,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct WaitArgs {
    id: String,
    /// Print the finished task as JSON
    #[arg(long)]
    json: bool,
}

/// The exit code a finished task calls for (DESIGN section 10).
pub fn exit_code_of(task: &TaskRecord) -> i32 {
    match (task.status, task.exit_code) {
        (TaskStatus::Completed, _) => 0,
        (TaskStatus::Failed, Some(code)) if (1..=255).contains(&code) => code,
        _ => 1,
    }
}

fn list_table(tasks: &[Value]) {
    if tasks.is_empty() {
        eprintln!("No tasks.");
        return;
    }
    println!(
        "{:<41}  {:<9}  {:<8}  {:<24}  PROMPT",
        "ID", "STATUS", "AGENT", "CREATED"
    );
    for t in tasks {
        println!(
            "{:<41}  {:<9}  {:<8}  {:<24}  {}",
            t["id"].as_str().unwrap_or(""),
            t["status"].as_str().unwrap_or(""),
            t["agent"].as_str().unwrap_or(""),
            t["createdAt"].as_i64().map(iso).unwrap_or_default(),
            t["promptPreview"].as_str().unwrap_or("").replace('\n', " "),
        );
    }
    // Why queued work waits (memory, CPU, a first run alone): once per distinct reason.
    let mut why: Vec<(&str, usize)> = Vec::new();
    for t in tasks.iter().filter(|t| t["status"] == "queued") {
        if let Some(r) = t["reason"].as_str() {
            match why.iter_mut().find(|(w, _)| *w == r) {
                Some((_, n)) => *n += 1,
                None => why.push((r, 1)),
            }
        }
    }
    for (reason, n) in why {
        println!("{n} queued: {reason}");
    }
}

pub async fn list(args: ListArgs, home: &Home) -> Result<i32, CliError> {
    let client = DaemonClient::connect(home).await?;
    let mut req = json!({ "limit": args.limit });
    if let Some(s) = args.status {
        req["status"] = Value::from(s);
    }
    let v = client.call("TaskStatus", req).await?;
    client.close().await;
    let tasks = v["tasks"].as_array().cloned().unwrap_or_default();
    if args.json {
        print_json(&Value::Array(
            tasks
                .iter()
                .map(|t| {
                    let mut r = record_for_cli(t);
                    if let Value::Object(m) = &mut r {
                        m.remove("promptPreview");
                    }
                    r
                })
                .collect(),
        ));
    } else {
        list_table(&tasks);
    }
    Ok(0)
}

fn print_task(t: &TaskRecord) {
    let time = |ms: Option<i64>| ms.map(iso).unwrap_or_else(|| "-".into());
    let status = match &t.reason {
        Some(r) => format!("{} ({r})", t.status),
        None => t.status.to_string(),
    };
    println!("ID:         {}", t.id);
    println!("Status:     {status}");
    println!("Agent:      {}", t.agent);
    println!("Priority:   {}", t.priority.as_str());
    println!("Directory:  {}", t.working_directory);
    println!("Created:    {}", time(Some(t.created_at)));
    println!("Started:    {}", time(t.started_at));
    println!("Completed:  {}", time(t.completed_at));
    if let (Some(s), Some(e)) = (t.started_at, t.completed_at) {
        println!("Duration:   {:.3} s", (e - s) as f64 / 1000.0);
    }
    println!(
        "Exit code:  {}",
        t.exit_code
            .map(|c| c.to_string())
            .unwrap_or_else(|| "-".into())
    );
    if let Some(sig) = &t.signal {
        println!("Signal:     {sig}");
    }
    if let Some(m) = &t.model {
        println!("Model:      {m}");
    }
    if let Some(nb) = t.not_before.filter(|_| !t.status.is_terminal()) {
        println!("Not before: {}", iso(nb));
    }
    if let Some(s) = &t.session_id {
        println!("Session:    {s}");
    }
    if let Some(u) = &t.usage {
        let cost = u.cost_usd.map(|c| format!(", ${c:.4}")).unwrap_or_default();
        println!(
            "Tokens:     {} in, {} out, {} cache read, {} cache write{cost}",
            u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_write_tokens
        );
    }
    if let Some(parent) = &t.retry_of {
        println!(
            "Retry of:   {parent} (retry #{})",
            t.retry_count.unwrap_or(0)
        );
    }
    println!("Prompt:     {}", t.prompt);
    if let Some(r) = &t.result {
        println!("Result:     {r}");
    }
}

pub async fn status(args: StatusArgs, home: &Home) -> Result<i32, CliError> {
    let Some(id) = args.id else {
        return list(
            ListArgs {
                status: None,
                limit: 100,
                json: args.json,
            },
            home,
        )
        .await;
    };
    let client = DaemonClient::connect(home).await?;
    let v = client.call("TaskStatus", json!({ "taskId": id })).await?;
    client.close().await;
    if args.json {
        let mut record = record_for_cli(&v["task"]);
        record["dependsOn"] = v["dependsOn"].clone();
        record["dependents"] = v["dependents"].clone();
        print_json(&record);
    } else {
        print_task(&record_of(&v["task"])?);
        for (label, key) in [("Depends on:", "dependsOn"), ("Dependents:", "dependents")] {
            for (i, d) in v[key].as_array().into_iter().flatten().enumerate() {
                let head = if i == 0 { label } else { "" };
                println!(
                    "{head:<12}{} ({})",
                    d["taskId"].as_str().unwrap_or(""),
                    d["status"].as_str().unwrap_or("")
                );
            }
        }
    }
    Ok(0)
}

/// Follows one output file from where it was last read.
pub struct Follower {
    path: PathBuf,
    offset: u64,
    to_stderr: bool,
    /// Not yet decided between a run's `output.txt` and `stdout.log`: the run folder.
    undecided: Option<PathBuf>,
}

impl Follower {
    pub fn new(path: PathBuf, to_stderr: bool) -> Follower {
        Follower {
            path,
            offset: 0,
            to_stderr,
            undecided: None,
        }
    }

    /// A run's stdout as people read it: `output.txt` when the shim writes a readable
    /// transcript (it creates that file before `stdout.log`), else `stdout.log`.
    pub fn readable(run: &std::path::Path) -> Follower {
        Follower {
            undecided: Some(run.to_path_buf()),
            ..Follower::new(run.join("stdout.log"), false)
        }
    }

    pub fn skip_to(&mut self, offset: u64) {
        self.offset = offset;
    }

    /// Copies what was appended since the last call.
    pub fn drain(&mut self) {
        if let Some(run) = &self.undecided {
            if !run.join("stdout.log").exists() {
                return; // the shim has not started writing yet
            }
            let readable = run.join("output.txt");
            if readable.exists() {
                self.path = readable;
            }
            self.undecided = None;
        }
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return;
        };
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        if let Ok(n) = file.read_to_end(&mut buf) {
            self.offset += n as u64;
            if n > 0 {
                if self.to_stderr {
                    let _ = std::io::stderr().write_all(&buf);
                } else {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(&buf);
                    let _ = out.flush();
                }
            }
        }
    }
}

fn tail_offset(path: &PathBuf, lines: usize) -> u64 {
    let Ok(bytes) = std::fs::read(path) else {
        return 0;
    };
    let mut seen = 0;
    let end = if bytes.ends_with(b"\n") {
        bytes.len() - 1
    } else {
        bytes.len()
    };
    for i in (0..end).rev() {
        if bytes[i] == b'\n' {
            seen += 1;
            if seen == lines {
                return i as u64 + 1;
            }
        }
    }
    0
}

pub async fn logs(args: LogsArgs, home: &Home) -> Result<i32, CliError> {
    let client = DaemonClient::connect(home).await?;
    let task = client.task(&args.id).await?;
    let run = home.run_dir(&task.id);
    let mut out = Follower::new(run.join("stdout.log"), false);
    let mut err = Follower::new(run.join("stderr.log"), true);
    if let Some(n) = args.tail {
        out.skip_to(tail_offset(&run.join("stdout.log"), n));
        err.skip_to(tail_offset(&run.join("stderr.log"), n));
    }
    out.drain();
    err.drain();
    if args.follow && !task.status.is_terminal() {
        // Resume from where the first read stopped.
        let code = super::run::follow_files(&client, &task.id, out, err, false).await;
        client.close().await;
        return code.map(|_| 0);
    }
    client.close().await;
    Ok(0)
}

pub async fn cancel(args: CancelArgs, home: &Home) -> Result<i32, CliError> {
    let client = DaemonClient::connect(home).await?;
    let v = client
        .call(
            "CancelTask",
            json!({ "taskId": args.id, "reason": args.reason.join(" ") }),
        )
        .await?;
    client.close().await;
    if args.json {
        print_json(&json!({ "taskId": v["taskId"], "status": v["status"], "reason": v["reason"] }));
    } else {
        eprintln!("{}", v["message"].as_str().unwrap_or("cancelled"));
    }
    Ok(0)
}

pub async fn retry(args: RetryArgs, home: &Home) -> Result<i32, CliError> {
    let client = DaemonClient::connect(home).await?;
    let v = client
        .call("RetryTask", json!({ "taskId": args.id }))
        .await?;
    client.close().await;
    let id = v["newTaskId"].as_str().unwrap_or_default();
    if args.json {
        print_json(
            &json!({ "taskId": id, "retryCount": v["retryCount"], "parentTaskId": v["parentTaskId"] }),
        );
    } else {
        println!("Task ID: {id}");
        eprintln!(
            "Retry #{} of {}",
            v["retryCount"],
            v["parentTaskId"].as_str().unwrap_or("")
        );
    }
    Ok(0)
}

pub async fn resume(args: ResumeArgs, home: &Home) -> Result<i32, CliError> {
    let client = DaemonClient::connect(home).await?;
    let mut req = json!({ "taskId": args.id });
    if let Some(c) = args.context {
        req["additionalContext"] = Value::from(c);
    }
    let v = client.call("ResumeTask", req).await?;
    client.close().await;
    let id = v["newTaskId"].as_str().unwrap_or_default();
    if args.json {
        print_json(
            &json!({ "taskId": id, "retryCount": v["retryCount"], "parentTaskId": v["parentTaskId"], "resumesSession": v["resumesSession"] }),
        );
    } else {
        println!("Task ID: {id}");
        match v["resumesSession"].as_str() {
            Some(s) => eprintln!("Resumes the agent's session {s}"),
            None => eprintln!(
                "The agent's session cannot be resumed; the new prompt carries the checkpoint"
            ),
        }
    }
    Ok(0)
}

pub async fn wait(args: WaitArgs, home: &Home) -> Result<i32, CliError> {
    let client = DaemonClient::connect(home).await?;
    loop {
        let v = client
            .call(
                "WaitTask",
                json!({ "taskId": args.id, "timeoutMs": 3_600_000 }),
            )
            .await?;
        if v["finished"] == Value::Bool(true) {
            client.close().await;
            let record = record_of(&v["task"])?;
            if args.json {
                print_json(&record_for_cli(&v["task"]));
            } else {
                eprintln!(
                    "{} {}",
                    record.id,
                    record.reason.as_deref().unwrap_or(record.status.as_str())
                );
            }
            return Ok(exit_code_of(&record));
        }
    }
}
