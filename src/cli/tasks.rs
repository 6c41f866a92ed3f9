//! Task commands: list, status, logs, cancel, retry, wait.

use backbeat_actors::{TaskRecord, TaskStatus};
use clap::{Args, ValueEnum};
use serde_json::{Value, json};

use super::follow::{Follower, Sink, exit_code_of, follow_files, tail_offset, wait_finished};
use super::{iso, outln, print_json};
use crate::error::CliError;
use crate::mcp::client::{DaemonClient, record_of};
use crate::mcp::tools::tasks::{
    CancelTaskArgs, ResumeTaskArgs, RetryTaskArgs, StatusField, SummaryLine, SummaryList,
    TaskStatusArgs,
};
use crate::paths::Home;

/// The states `--status` takes.
#[derive(Clone, Copy, ValueEnum)]
enum StatusChoice {
    Blocked,
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl From<StatusChoice> for StatusField {
    fn from(s: StatusChoice) -> StatusField {
        match s {
            StatusChoice::Blocked => StatusField::Blocked,
            StatusChoice::Queued => StatusField::Queued,
            StatusChoice::Running => StatusField::Running,
            StatusChoice::Completed => StatusField::Completed,
            StatusChoice::Failed => StatusField::Failed,
            StatusChoice::Cancelled => StatusField::Cancelled,
        }
    }
}

#[derive(Args)]
pub struct ListArgs {
    /// Only tasks in this state
    #[arg(long, value_enum)]
    status: Option<StatusChoice>,
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

/// The table `beat list` prints; `None` when there are no tasks.
fn list_table(tasks: &[SummaryLine]) -> Option<String> {
    use std::fmt::Write;
    if tasks.is_empty() {
        return None;
    }
    let mut out = format!(
        "{:<41}  {:<9}  {:<8}  {:<24}  PROMPT\n",
        "ID", "STATUS", "AGENT", "CREATED"
    );
    for t in tasks {
        let _ = write!(
            out,
            "{:<41}  {:<9}  {:<8}  {:<24}  ",
            t.id,
            t.status.as_str(),
            t.agent,
            iso(t.created_at),
        );
        if let (Some(role), Some(owner)) = (&t.role, &t.owner) {
            let _ = write!(out, "[{role} of {}] ", owner.id);
        }
        let _ = writeln!(out, "{}", t.prompt_preview.replace('\n', " "));
    }
    // Why queued work waits (memory, CPU, a first run alone): once per distinct reason.
    let mut why: Vec<(&str, usize)> = Vec::new();
    for t in tasks.iter().filter(|t| t.status == TaskStatus::Queued) {
        if let Some(r) = t.reason.as_deref() {
            match why.iter_mut().find(|(w, _)| *w == r) {
                Some((_, n)) => *n += 1,
                None => why.push((r, 1)),
            }
        }
    }
    for (reason, n) in why {
        let _ = writeln!(out, "{n} queued: {reason}");
    }
    Some(out)
}

pub async fn list(args: ListArgs, home: &Home) -> Result<i32, CliError> {
    let mut client = DaemonClient::connect(home).await?;
    let query = TaskStatusArgs {
        task_id: None,
        status: args.status.map(StatusField::from),
        limit: Some(args.limit),
        // The table needs a tenth of each record; --json prints them whole.
        summary: (!args.json).then_some(true),
    };
    if !args.json {
        let list: SummaryList = client.read_as(&query).await?;
        client.close().await;
        match list_table(&list.tasks) {
            // One write for the whole table.
            Some(table) => super::write_stdout(table.as_bytes()),
            None => eprintln!("No tasks."),
        }
        return Ok(0);
    }
    let mut v = client.read(&query).await?;
    client.close().await;
    let tasks = match v["tasks"].take() {
        Value::Array(tasks) => tasks,
        _ => Vec::new(),
    };
    print_json(&Value::Array(
        tasks
            .into_iter()
            .map(|mut t| {
                if let Value::Object(m) = &mut t {
                    m.remove("promptPreview");
                }
                t
            })
            .collect(),
    ));
    Ok(0)
}

fn print_task(t: &TaskRecord) {
    let time = |ms: Option<i64>| ms.map(iso).unwrap_or_else(|| "-".into());
    let status = match &t.reason {
        Some(r) => format!("{} ({r})", t.status),
        None => t.status.to_string(),
    };
    outln!("ID:         {}", t.id);
    outln!("Status:     {status}");
    outln!("Agent:      {}", t.agent);
    outln!("Priority:   {}", t.priority.as_str());
    outln!("Directory:  {}", t.working_directory);
    outln!("Created:    {}", time(Some(t.created_at)));
    outln!("Started:    {}", time(t.started_at));
    outln!("Completed:  {}", time(t.completed_at));
    if let (Some(s), Some(e)) = (t.started_at, t.completed_at) {
        outln!("Duration:   {:.3} s", (e - s) as f64 / 1000.0);
    }
    outln!(
        "Exit code:  {}",
        t.exit_code
            .map(|c| c.to_string())
            .unwrap_or_else(|| "-".into())
    );
    if let Some(sig) = &t.signal {
        outln!("Signal:     {sig}");
    }
    if let Some(m) = &t.model {
        outln!("Model:      {m}");
    }
    if let Some(nb) = t.not_before.filter(|_| !t.status.is_terminal()) {
        outln!("Not before: {}", iso(nb));
    }
    if let Some(s) = &t.session_id {
        outln!("Session:    {s}");
    }
    if let Some(u) = &t.usage {
        let cost = u.cost_usd.map(|c| format!(", ${c:.4}")).unwrap_or_default();
        outln!(
            "Tokens:     {} in, {} out, {} cache read, {} cache write{cost}",
            u.input_tokens,
            u.output_tokens,
            u.cache_read_tokens,
            u.cache_write_tokens
        );
    }
    if let Some(parent) = &t.retry_of {
        outln!(
            "Retry of:   {parent} (retry #{})",
            t.retry_count.unwrap_or(0)
        );
    }
    outln!("Prompt:     {}", t.prompt);
    if let Some(r) = &t.result {
        outln!("Result:     {r}");
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
    let mut client = DaemonClient::connect(home).await?;
    let v = client
        .read(&TaskStatusArgs {
            task_id: Some(id),
            ..Default::default()
        })
        .await?;
    client.close().await;
    if args.json {
        let mut record = v["task"].clone();
        record["dependsOn"] = v["dependsOn"].clone();
        record["dependents"] = v["dependents"].clone();
        print_json(&record);
    } else {
        print_task(&record_of(&v["task"])?);
        for (label, key) in [("Depends on:", "dependsOn"), ("Dependents:", "dependents")] {
            for (i, d) in v[key].as_array().into_iter().flatten().enumerate() {
                let head = if i == 0 { label } else { "" };
                outln!(
                    "{head:<12}{} ({})",
                    d["taskId"].as_str().unwrap_or(""),
                    d["status"].as_str().unwrap_or("")
                );
            }
        }
    }
    Ok(0)
}

pub async fn logs(args: LogsArgs, home: &Home) -> Result<i32, CliError> {
    let mut client = DaemonClient::connect(home).await?;
    let task = client.task(&args.id).await?;
    let run = home.run(&task.id);
    let mut out = Follower::new(run.stdout(), Sink::Stdout);
    let mut err = Follower::new(run.stderr(), Sink::Stderr);
    if let Some(n) = args.tail {
        out.skip_to(tail_offset(&run.stdout(), n));
        err.skip_to(tail_offset(&run.stderr(), n));
    }
    out.drain();
    err.drain();
    if args.follow && !task.status.is_terminal() {
        // Resume from where the first read stopped.
        let followed = follow_files(&mut client, &task.id, Some((out, err)), None).await;
        client.close().await;
        return followed.map(|_| 0);
    }
    client.close().await;
    Ok(0)
}

pub async fn cancel(args: CancelArgs, home: &Home) -> Result<i32, CliError> {
    let client = DaemonClient::connect(home).await?;
    let reason = args.reason.join(" ");
    let v = client
        .call(&CancelTaskArgs {
            task_id: args.id,
            reason: (!reason.trim().is_empty()).then_some(reason),
        })
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
    let v = client.call(&RetryTaskArgs { task_id: args.id }).await?;
    client.close().await;
    let id = v["newTaskId"].as_str().unwrap_or_default();
    if args.json {
        print_json(
            &json!({ "taskId": id, "retryCount": v["retryCount"], "parentTaskId": v["parentTaskId"] }),
        );
    } else {
        outln!("Task ID: {id}");
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
    let v = client
        .call(&ResumeTaskArgs {
            task_id: args.id,
            additional_context: args.context,
        })
        .await?;
    client.close().await;
    let id = v["newTaskId"].as_str().unwrap_or_default();
    if args.json {
        print_json(
            &json!({ "taskId": id, "retryCount": v["retryCount"], "parentTaskId": v["parentTaskId"], "resumesSession": v["resumesSession"] }),
        );
    } else {
        outln!("Task ID: {id}");
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
    if args.id.starts_with("loop-") || args.id.starts_with("pipeline-") {
        return super::loops::wait_entity(&args.id, args.json, home).await;
    }
    let mut client = DaemonClient::connect(home).await?;
    let v = wait_finished(&mut client, &args.id).await;
    client.close().await;
    let v = v?;
    let record = record_of(&v["task"])?;
    if args.json {
        print_json(&v["task"]);
    } else {
        eprintln!(
            "{} {}",
            record.id,
            record.reason.as_deref().unwrap_or(record.status.as_str())
        );
    }
    Ok(exit_code_of(&record))
}
