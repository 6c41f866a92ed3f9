//! The `beat` command line: parsing, dispatch, exit codes, and shared output helpers.
//!
//! Data goes to stdout (`Task ID: ...`, `--json`, logs); messages for people to stderr.
//! Exit codes: 0 success; a foreground run or `beat wait` whose task failed with agent
//! exit code N exits N, any other failure or a cancel 1; usage errors 2; Ctrl-C 130.

mod agents;
mod config;
mod daemon;
mod follow;
mod loops;
mod mcp;
mod pipeline;
mod prune;
mod run;
mod schedule;
mod tasks;

use std::io::Write;
use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};
use serde_json::Value;

use crate::error::CliError;
use crate::mcp::tools::tasks::PriorityField;
use crate::paths::Home;

#[derive(Parser)]
#[command(
    name = "beat",
    version = crate::VERSION,
    about = "Run AI coding agents as durable background workers",
    disable_version_flag = true
)]
pub struct Cli {
    /// Print the version
    #[arg(short = 'v', short_alias = 'V', long, action = clap::ArgAction::Version)]
    version: Option<bool>,
    #[command(subcommand)]
    command: Option<Command>,
}

// `defer` on every subcommand enum: a subcommand's arguments are built only when it is
// the one named. Building all of them was 0.2 to 0.4 ms of every command's start.
#[derive(Subcommand)]
#[command(defer = true)]
enum Command {
    /// Delegate a task to an agent (detached; -f to follow it)
    Run(run::RunArgs),
    /// List tasks, newest first
    #[command(alias = "ls")]
    List(tasks::ListArgs),
    /// Show one task, or list tasks
    Status(tasks::StatusArgs),
    /// Print a task's output
    Logs(tasks::LogsArgs),
    /// Cancel a queued or running task
    Cancel(tasks::CancelArgs),
    /// Run a finished task again as a new task
    Retry(tasks::RetryArgs),
    /// Wait until a task finishes; exits like `beat run -f`
    Wait(tasks::WaitArgs),
    /// Continue a finished task, with its checkpoint and the agent's session
    Resume(tasks::ResumeArgs),
    /// List agents, check them, and set their API key, model, base URL, system prompt
    Agents(agents::AgentsArgs),
    /// Choose the default agent
    Init(agents::InitArgs),
    /// Run prompts one after the other (or: pipeline status|cancel <id>)
    Pipeline(pipeline::PipelineArgs),
    /// Remove finished tasks and pipelines now (the daemon does it daily after taskRetentionDays)
    Prune(prune::PruneCliArgs),
    Loop(loops::LoopArgs),
    /// Cron and one-time schedules of tasks and pipelines
    #[command(subcommand)]
    Schedule(schedule::ScheduleCommand),
    /// Show or change the configuration
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Start, stop or inspect the daemon
    #[command(subcommand)]
    Daemon(daemon::DaemonCommand),
    /// The MCP server for MCP clients
    #[command(subcommand)]
    Mcp(mcp::McpCommand),
    /// Internal: parent of one agent process
    #[command(hide = true)]
    Shim {
        run_dir: PathBuf,
    },
}

pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    let Some(command) = cli.command else {
        // A bare `beat`: the help, on stdout, as a request for it (the original did so).
        write_stdout(format!("{}\n", Cli::command().render_help()).as_bytes());
        return 0;
    };
    let home = Home::from_env();
    let result = match command {
        Command::Shim { run_dir } => return crate::shim::run(&run_dir),
        Command::Daemon(cmd) => daemon::run(cmd, &home),
        Command::Config(cmd) => config::run(cmd, &home),
        Command::Mcp(cmd) => mcp::run(cmd, &home),
        Command::Run(args) => block_on(run::run(args, &home)),
        Command::List(args) => block_on(tasks::list(args, &home)),
        Command::Status(args) => block_on(tasks::status(args, &home)),
        Command::Logs(args) => block_on(tasks::logs(args, &home)),
        Command::Cancel(args) => block_on(tasks::cancel(args, &home)),
        Command::Retry(args) => block_on(tasks::retry(args, &home)),
        Command::Wait(args) => block_on(tasks::wait(args, &home)),
        Command::Resume(args) => block_on(tasks::resume(args, &home)),
        Command::Agents(args) => block_on(agents::run(args, &home)),
        Command::Init(args) => block_on(agents::init(args, &home)),
        Command::Pipeline(args) => block_on(pipeline::run(args, &home)),
        Command::Prune(args) => block_on(prune::run(args, &home)),
        Command::Loop(args) => block_on(loops::run(args, &home)),
        Command::Schedule(cmd) => block_on(schedule::run(cmd, &home)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("beat: {e}");
            e.exit_code()
        }
    }
}

pub fn block_on<F: std::future::Future<Output = Result<i32, CliError>>>(
    f: F,
) -> Result<i32, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

/// Writes to stdout. A reader that went away (`beat list | head -1`) ends the command
/// quietly, as command-line tools do, instead of a panic.
pub fn write_stdout(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(bytes).and_then(|_| out.flush())
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        std::process::exit(0);
    }
}

/// Writes to stderr; a closed stderr is not worth failing for.
pub fn write_stderr(bytes: &[u8]) {
    let _ = std::io::stderr().write_all(bytes);
}

/// `println!` for command output: see `write_stdout`.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format!("{}\n", format_args!($($arg)*)).as_bytes())
    };
}
pub(crate) use outln;

/// Prints one JSON document on stdout, its times as ISO-8601 strings.
pub fn print_json(v: &Value) {
    let mut v = v.clone();
    iso_times(&mut v);
    outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
}

/// Every time in a JSON document for people: a `...At` or `notBefore` key holding
/// milliseconds since the epoch becomes an ISO-8601 string, at any depth.
pub fn iso_times(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                if (key.ends_with("At") || key == "notBefore")
                    && let Some(ms) = value.as_i64()
                {
                    *value = Value::from(iso(ms));
                } else {
                    iso_times(value);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(iso_times),
        _ => {}
    }
}

/// Milliseconds since the epoch as an ISO-8601 UTC string.
pub fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// `1500`, `1500ms`, `30s`, `5m`, `2h`, `3d` as milliseconds.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (number, unit) = match t.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&t[..i], &t[i..]),
        None => (t, "ms"),
    };
    let n: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration: use e.g. 1500, 30s, 5m or 2h"))?;
    let factor = match unit {
        "ms" => 1.0,
        "s" => 1_000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        "d" => 86_400_000.0,
        _ => {
            return Err(format!(
                "'{text}' has an unknown unit: use ms, s, m, h or d"
            ));
        }
    };
    Ok((n * factor).round() as u64)
}

/// A task's time limit: a duration from 1 s to 24 h, as the daemon accepts.
pub fn parse_time_limit(text: &str) -> Result<u64, String> {
    let ms = parse_duration(text)?;
    if (1_000..=86_400_000).contains(&ms) {
        Ok(ms)
    } else {
        Err(format!(
            "'{text}' is {ms} ms: a time limit is from 1s to 24h (a bare number is milliseconds)"
        ))
    }
}

/// `P0`, `P1` or `P2`.
pub fn parse_priority(text: &str) -> Result<PriorityField, String> {
    match text {
        "P0" | "p0" => Ok(PriorityField::P0),
        "P1" | "p1" => Ok(PriorityField::P1),
        "P2" | "p2" => Ok(PriorityField::P2),
        _ => Err(format!("'{text}' is not a priority: use P0, P1 or P2")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_become_iso_at_any_depth_and_nothing_else_changes() {
        let mut v = serde_json::json!({
            "createdAt": 0, "timeoutMs": 5000, "notBefore": 1000,
            "checkpoint": { "createdAt": 0, "lines": 3 },
            "steps": [{ "startedAt": 0, "completedAt": null }]
        });
        iso_times(&mut v);
        assert_eq!(v["createdAt"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["notBefore"], "1970-01-01T00:00:01.000Z");
        assert_eq!(v["checkpoint"]["createdAt"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["steps"][0]["startedAt"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["steps"][0]["completedAt"], serde_json::Value::Null);
        assert_eq!(
            (v["timeoutMs"].clone(), v["checkpoint"]["lines"].clone()),
            (5000.into(), 3.into())
        );
    }

    /// Every subcommand's arguments are built only when it is the one named (`defer`):
    /// the whole tree still checks out, and help still shows what each one takes.
    #[test]
    fn deferred_subcommands_still_build_check_and_show_their_arguments() {
        Cli::command().debug_assert();
        let help = |args: &[&str]| match Cli::command().try_get_matches_from(args) {
            Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => e.render().to_string(),
            other => panic!("{args:?} did not print help: {:?}", other.map(|_| ())),
        };
        let top = help(&["beat", "--help"]);
        assert!(top.contains("Delegate a task to an agent"), "{top}");
        assert!(top.contains("Cron and one-time schedules"), "{top}");
        let run = help(&["beat", "run", "--help"]);
        assert!(run.contains("--foreground"), "{run}");
        let create = help(&["beat", "schedule", "create", "--help"]);
        assert!(create.contains("--cron"), "{create}");
        let parsed = Cli::try_parse_from(["beat", "run", "-f", "-a", "shell", "true"]);
        assert!(matches!(
            parsed,
            Ok(Cli {
                command: Some(Command::Run(_)),
                ..
            })
        ));
    }

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(parse_duration("1500").unwrap(), 1500);
        assert_eq!(parse_duration("30s").unwrap(), 30_000);
        assert_eq!(parse_duration("5m").unwrap(), 300_000);
        assert_eq!(parse_duration("2h").unwrap(), 7_200_000);
        assert_eq!(parse_duration("3d").unwrap(), 259_200_000);
        assert_eq!(parse_duration("1.5s").unwrap(), 1_500);
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }
}
