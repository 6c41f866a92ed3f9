//! End-to-end figures of Backbeat, each beside its goal (see `docs/BENCHMARKS.md`).
//!
//! Run with `cargo bench --bench e2e`; `cargo bench --bench e2e -- journal memory` runs
//! only the named measurements (`status`, `start`, `throughput`, `journal`, `memory`,
//! `dag`, `admission`, `loop`, `schedules`).
//! Arguments that start with `-` (cargo passes `--bench`) are ignored.
//!
//! Every measurement works in a fresh `BACKBEAT_HOME` under the temp folder, talks to
//! the daemon only through its Unix socket (the `beat` CLI, or one persistent
//! `beat mcp start` session), stops the daemon when it is done and kills whatever
//! process of that home is left (agents outlive a daemon stop by design). Every loop is
//! bounded in count and in time.
//!
//! Output: one line `figure: <name> = <value> <unit> (goal <goal>)` per figure, then a
//! markdown table of them all. Exits 1 when a measurement could not run.
//!
//! Environment: `BEAT_BIN` runs another `beat` binary than the one cargo built for this
//! bench; `TMPDIR` chooses where the homes and the journal database live.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use backbeat_actors::journal::{Append, JournalWriter, open_write_connection};
use backbeat_actors::model::TaskEvent;
use serde_json::{Value, json};
use support::{processes_with, wait_bounded};

#[path = "support/mod.rs"]
mod support;

type Result<T> = std::result::Result<T, String>;

/// One measurement: given the `beat` binary, its figures.
type Measure = fn(&Path) -> Result<Vec<Figure>>;

/// The longest any single reply, command or wait may take before the bench gives up.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);
/// Requests kept in flight on the MCP session when submitting "as fast as possible".
const PIPELINE_WINDOW: usize = 64;

fn main() {
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let bin = beat_binary();
    print_context(&bin);
    let measurements: [(&str, Measure); 9] = [
        ("status", status_latency),
        ("start", start_latency),
        ("throughput", throughput),
        ("journal", journal_rate),
        ("memory", daemon_memory),
        ("dag", dag),
        ("admission", admission),
        ("loop", loop_gap),
        ("schedules", schedules),
    ];
    let mut figures = Vec::new();
    let mut failed = Vec::new();
    for (name, measure) in measurements {
        if !only.is_empty() && !only.iter().any(|o| o == name) {
            continue;
        }
        println!("== {name} (load average {})", load_average());
        let began = Instant::now();
        match measure(&bin) {
            Ok(found) => {
                for figure in found {
                    println!("{}", figure.line());
                    figures.push(figure);
                }
            }
            Err(e) => {
                println!("error: {name}: {e}");
                failed.push(name);
            }
        }
        println!("({name} took {:.1} s)", began.elapsed().as_secs_f64());
    }
    print_table(&figures, &failed);
    if let Ok(mut spent) = SPENT_HOMES.lock() {
        spent.clear(); // deletes them
    }
    if !failed.is_empty() {
        std::process::exit(1);
    }
}

/// `BEAT_BIN`, else the `beat` that cargo built (in the bench profile) for this bench.
fn beat_binary() -> PathBuf {
    std::env::var_os("BEAT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_beat")))
}

fn print_context(bin: &Path) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let tmp = std::env::temp_dir();
    let fs = Command::new("findmnt")
        .args(["-n", "-o", "FSTYPE", "-T"])
        .arg(&tmp)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!("binary: {}", bin.display());
    println!("cores: {cores}; temp folder: {} ({fs})", tmp.display());
}

/// The 1-minute load average: other work on the machine skews every figure.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(String::from))
        .unwrap_or_else(|| "?".into())
}

// ---------------------------------------------------------------------------------
// Figures and statistics

struct Goal {
    text: String,
    met: bool,
}

struct Figure {
    name: &'static str,
    value: f64,
    unit: &'static str,
    goal: Option<Goal>,
}

impl Figure {
    fn at_most(name: &'static str, value: f64, unit: &'static str, limit: f64) -> Figure {
        let goal = Goal {
            text: format!("<= {} {unit}", limit_text(limit)),
            met: value <= limit,
        };
        Figure {
            name,
            value,
            unit,
            goal: Some(goal),
        }
    }

    fn at_least(name: &'static str, value: f64, unit: &'static str, limit: f64) -> Figure {
        let goal = Goal {
            text: format!(">= {} {unit}", limit_text(limit)),
            met: value >= limit,
        };
        Figure {
            name,
            value,
            unit,
            goal: Some(goal),
        }
    }

    /// A figure shown for context, without a goal.
    fn info(name: &'static str, value: f64, unit: &'static str) -> Figure {
        Figure {
            name,
            value,
            unit,
            goal: None,
        }
    }

    fn goal_text(&self) -> &str {
        self.goal.as_ref().map_or("none", |g| g.text.as_str())
    }

    fn verdict(&self) -> &'static str {
        match &self.goal {
            None => "-",
            Some(g) if g.met => "met",
            Some(_) => "MISSED",
        }
    }

    fn line(&self) -> String {
        format!(
            "figure: {} = {} {} (goal {})",
            self.name,
            number(self.value),
            self.unit,
            self.goal_text()
        )
    }
}

/// A number with as many decimals as its size calls for.
fn number(v: f64) -> String {
    match v.abs() {
        a if a >= 1000.0 => format!("{v:.0}"),
        a if a >= 100.0 => format!("{v:.1}"),
        _ => format!("{v:.2}"),
    }
}

/// A goal's limit: whole numbers without decimals, thousands grouped (`50 000`).
fn limit_text(v: f64) -> String {
    if v.fract() != 0.0 {
        return number(v);
    }
    let digits = format!("{v:.0}");
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

fn print_table(figures: &[Figure], failed: &[&str]) {
    println!();
    println!("| Figure | Measured | Goal | |");
    println!("|---|---|---|---|");
    for f in figures {
        println!(
            "| {} | {} {} | {} | {} |",
            f.name,
            number(f.value),
            f.unit,
            f.goal_text(),
            f.verdict()
        );
    }
    for name in failed {
        println!("| {name} | could not run | | ERROR |");
    }
}

/// The nearest-rank percentile `p` (0 to 100) of `samples`.
fn percentile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn epoch_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

fn epoch_ms() -> i64 {
    (epoch_ns() / 1_000_000) as i64
}

// ---------------------------------------------------------------------------------
// Processes

/// The resident set of `pid` in MiB, from `/proc/<pid>/status`.
fn rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("cannot read /proc/{pid}/status: {e}"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no VmRSS line in /proc/{pid}/status"))?;
    Ok(kb / 1024.0)
}

/// SIGKILLs every process whose environment says `BACKBEAT_HOME=<home>`: the daemon if
/// it did not stop, and the shims and agents that outlive it.
fn kill_processes_of(home: &Path) {
    for pid in processes_with(&format!("BACKBEAT_HOME={}", home.display())) {
        // SAFETY: kill(2) on a process of our own temp home, found just now.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
}

// ---------------------------------------------------------------------------------
// A temporary BACKBEAT_HOME

/// A fresh home; dropping it stops its daemon and kills what is left of it.
struct BeatHome {
    bin: PathBuf,
    /// `None` only once dropped (handed to `SPENT_HOMES`).
    dir: Option<tempfile::TempDir>,
}

/// Homes whose daemon is stopped, deleted when the bench ends, not between
/// measurements: on a journal-less ext4 (this machine's `/tmp`), every inode created
/// in the minute after many were deleted costs 10 to 170 µs more (the allocator skips
/// recently freed inodes, reading each), so deleting one measurement's 1000 run folders
/// would slow the next measurement's file creation. See docs/BENCHMARKS.md.
static SPENT_HOMES: std::sync::Mutex<Vec<tempfile::TempDir>> = std::sync::Mutex::new(Vec::new());

impl BeatHome {
    fn new(bin: &Path) -> Result<BeatHome> {
        let dir = tempfile::Builder::new()
            .prefix("beat-e2e-")
            .tempdir()
            .map_err(|e| format!("cannot make a temp home: {e}"))?;
        let home = BeatHome {
            bin: bin.to_path_buf(),
            dir: Some(dir),
        };
        std::fs::create_dir(home.workdir())
            .map_err(|e| format!("cannot make {}: {e}", home.workdir().display()))?;
        Ok(home)
    }

    fn path(&self) -> &Path {
        self.dir.as_ref().expect("a home in use").path()
    }

    /// Where the tasks run: an empty folder, not a git repository (a finished task's
    /// checkpoint runs `git` in its working directory), so that the figures do not
    /// depend on the checkout the bench runs from.
    fn workdir(&self) -> PathBuf {
        self.path().join("work")
    }

    /// Makes the working folder a git repository with one commit.
    fn init_git_repo(&self) -> Result<()> {
        let git = |args: &[&str]| -> Result<()> {
            let out = Command::new("git")
                .args(["-c", "user.name=bench", "-c", "user.email=bench@localhost"])
                .args(args)
                .current_dir(self.workdir())
                .output()
                .map_err(|e| format!("cannot run git: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "`git {}` failed: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            Ok(())
        };
        std::fs::write(self.workdir().join("README"), "bench\n")
            .map_err(|e| format!("cannot write in the working folder: {e}"))?;
        git(&["init", "-q"])?;
        git(&["add", "README"])?;
        git(&["commit", "-q", "-m", "init"])
    }

    /// DelegateTask arguments: `prompt` for the shell agent, in the working folder.
    fn task(&self, prompt: &str) -> Value {
        json!({
            "prompt": prompt,
            "agent": "shell",
            "workingDirectory": self.workdir().display().to_string(),
        })
    }

    /// `beat <args>` for this home, run from the working folder.
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args)
            .env("BACKBEAT_HOME", self.path())
            .current_dir(self.workdir())
            .stdin(Stdio::null());
        c
    }

    /// Runs `beat <args>` to completion; its stdout, or an error with its stderr.
    fn beat(&self, args: &[&str]) -> Result<String> {
        let out = self
            .command(args)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.bin.display()))?;
        if !out.status.success() {
            return Err(format!(
                "`beat {}` failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn configure(&self, pairs: &[(&str, &str)]) -> Result<()> {
        for (key, value) in pairs {
            self.beat(&["config", "set", key, value])?;
        }
        Ok(())
    }

    /// Starts the daemon and returns its PID.
    fn start_daemon(&self) -> Result<u32> {
        self.beat(&["daemon", "start"])?;
        let status: Value = serde_json::from_str(&self.beat(&["daemon", "status", "--json"])?)
            .map_err(|e| format!("`beat daemon status --json` is not JSON: {e}"))?;
        status["pid"]
            .as_u64()
            .map(|p| p as u32)
            .ok_or_else(|| format!("the daemon did not start: {status}"))
    }

    fn mcp(&self) -> Result<McpSession> {
        McpSession::start(self)
    }

    /// The end of the daemon's log, to explain a failure.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.path().join("daemon.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }

    /// Adds the end of the daemon's log to an error.
    fn explain<T>(&self, r: Result<T>) -> Result<T> {
        r.map_err(|e| match self.log_tail() {
            tail if tail.is_empty() => e,
            tail => format!("{e}\n  daemon.log ends with:\n{tail}"),
        })
    }
}

impl Drop for BeatHome {
    fn drop(&mut self) {
        let _ = self.command(&["daemon", "stop"]).output();
        kill_processes_of(self.path());
        if let (Some(dir), Ok(mut spent)) = (self.dir.take(), SPENT_HOMES.lock()) {
            spent.push(dir);
        }
    }
}

// ---------------------------------------------------------------------------------
// A persistent `beat mcp start` session

/// One `beat mcp start` process: newline-delimited JSON-RPC on its stdin and stdout.
/// A thread reads the replies, so that requests can be pipelined without a deadlock.
struct McpSession {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Each reply line with its id, read by the reader thread.
    replies: mpsc::Receiver<(Option<u64>, String)>,
    /// Replies that arrived while another one was awaited.
    early: HashMap<u64, String>,
    next_id: u64,
}

/// The id of a JSON-RPC line: all the reader thread looks at. The harness shares the
/// bench's two cores, so it builds no more of a reply than the bench reads.
#[derive(serde::Deserialize)]
struct ReplyId {
    #[serde(default)]
    id: Option<u64>,
}

/// A JSON-RPC reply, as far as a bench reads it.
#[derive(serde::Deserialize)]
struct Reply<R> {
    result: Option<R>,
    #[serde(default)]
    error: Option<Value>,
}

/// The result of `tools/call`: its first text block and whether it is an error.
#[derive(serde::Deserialize)]
struct ToolResult {
    #[serde(default)]
    content: Vec<TextBlock>,
    #[serde(default, rename = "isError")]
    is_error: bool,
}

#[derive(serde::Deserialize)]
struct TextBlock {
    #[serde(default)]
    text: String,
}

impl McpSession {
    fn start(home: &BeatHome) -> Result<McpSession> {
        let mut child = home
            .command(&["mcp", "start"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start `beat mcp start`: {e}"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or("`beat mcp start` has no stdout")?;
        let (tx, replies) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(ReplyId { id }) = serde_json::from_str::<ReplyId>(&line)
                    && tx.send((id, line)).is_err()
                {
                    break;
                }
            }
        });
        let mut session = McpSession {
            stdin: child.stdin.take(),
            child,
            replies,
            early: HashMap::new(),
            next_id: 1,
        };
        session.request(
            "initialize",
            json!({
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": { "name": "backbeat-e2e", "version": "0" }
            }),
        )?;
        session.write(&json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }))?;
        Ok(session)
    }

    fn write(&mut self, message: &Value) -> Result<()> {
        let stdin = self.stdin.as_mut().ok_or("the MCP session is closed")?;
        let mut line = message.to_string();
        line.push('\n');
        stdin
            .write_all(line.as_bytes())
            .map_err(|e| format!("writing to `beat mcp start` failed: {e}"))
    }

    fn send(&mut self, method: &str, params: Value) -> Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        self.write(&json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }))?;
        Ok(id)
    }

    fn send_tool(&mut self, tool: &str, args: Value) -> Result<u64> {
        self.send("tools/call", json!({ "name": tool, "arguments": args }))
    }

    /// The `result` of request `id`, read as `R`.
    fn reply<R: serde::de::DeserializeOwned>(&mut self, id: u64) -> Result<R> {
        let deadline = Instant::now() + STEP_TIMEOUT;
        let line = loop {
            if let Some(line) = self.early.remove(&id) {
                break line;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let (got, line) = self.replies.recv_timeout(left).map_err(|_| {
                format!("no reply to request {id} within {STEP_TIMEOUT:?} (or the session ended)")
            })?;
            match got {
                Some(got) if got == id => break line,
                Some(got) => {
                    self.early.insert(got, line);
                }
                None => {} // a notification
            }
        };
        let reply: Reply<R> = serde_json::from_str(&line)
            .map_err(|e| format!("reply {id} is not what a bench reads ({e}): {line}"))?;
        match (reply.error, reply.result) {
            (Some(e), _) => Err(format!("JSON-RPC error: {e}")),
            (None, Some(result)) => Ok(result),
            (None, None) => Err(format!("reply {id} has neither result nor error: {line}")),
        }
    }

    fn request(&mut self, method: &str, params: Value) -> Result<Value> {
        let id = self.send(method, params)?;
        self.reply(id)
    }

    /// Calls a tool and returns the JSON object of its answer.
    fn call(&mut self, tool: &str, args: Value) -> Result<Value> {
        let id = self.send_tool(tool, args)?;
        self.tool_reply(tool, id)
    }

    fn tool_reply(&mut self, tool: &str, id: u64) -> Result<Value> {
        let result: ToolResult = self.reply(id)?;
        let text = result.content.first().map_or("", |b| b.text.as_str());
        let value: Value = serde_json::from_str(text)
            .map_err(|e| format!("{tool} answered with text that is not JSON ({e}): {text}"))?;
        if result.is_error {
            return Err(format!("{tool} refused: {value}"));
        }
        Ok(value)
    }

    /// Calls `tool` once per argument object, keeping up to `window` calls in flight;
    /// the answers come back in the order of the arguments.
    fn call_many(
        &mut self,
        tool: &str,
        args: impl IntoIterator<Item = Value>,
        window: usize,
    ) -> Result<Vec<Value>> {
        let mut args = args.into_iter().peekable();
        let mut in_flight = VecDeque::new();
        let mut answers = Vec::new();
        while args.peek().is_some() || !in_flight.is_empty() {
            if in_flight.len() < window
                && let Some(a) = args.next()
            {
                in_flight.push_back(self.send_tool(tool, a)?);
                continue;
            }
            let id = in_flight.pop_front().ok_or("nothing in flight")?;
            answers.push(self.tool_reply(tool, id)?);
        }
        Ok(answers)
    }
}

impl Drop for McpSession {
    fn drop(&mut self) {
        drop(self.stdin.take()); // `beat mcp start` exits when its stdin closes
        if wait_bounded(&mut self.child, Duration::from_secs(5)).is_err() {
            let _ = self.child.kill();
        }
    }
}

fn task_id(answer: &Value) -> Result<String> {
    answer["taskId"]
        .as_str()
        .map(String::from)
        .ok_or_else(|| format!("no taskId in {answer}"))
}

// ---------------------------------------------------------------------------------
// 1. `beat status <id>` with a warm daemon

const STATUS_WARMUP: usize = 10;
const STATUS_RUNS: usize = 200;

fn status_latency(bin: &Path) -> Result<Vec<Figure>> {
    let home = BeatHome::new(bin)?;
    home.explain(status_latency_in(&home))
}

fn status_latency_in(home: &BeatHome) -> Result<Vec<Figure>> {
    let submitted: Value =
        serde_json::from_str(&home.beat(&["run", "--agent", "shell", "--json", "true"])?)
            .map_err(|e| format!("`beat run --json` is not JSON: {e}"))?;
    let id = task_id(&submitted)?;
    home.beat(&["wait", &id])?;
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut samples = Vec::with_capacity(STATUS_RUNS);
    for run in 0..STATUS_WARMUP + STATUS_RUNS {
        if Instant::now() > deadline {
            println!(
                "note: status stopped after {} runs (time limit)",
                samples.len()
            );
            break;
        }
        let took = time_status(home, &id)?;
        if run >= STATUS_WARMUP {
            samples.push(ms(took));
        }
    }
    Ok(vec![
        Figure::at_most("status_p50", percentile(&samples, 50.0), "ms", 5.0),
        Figure::info("status_p95", percentile(&samples, 95.0), "ms"),
    ])
}

/// One `beat status <id>`, from spawn to exit.
fn time_status(home: &BeatHome, id: &str) -> Result<Duration> {
    let began = Instant::now();
    let mut child = home
        .command(&["status", id])
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run beat status: {e}"))?;
    let status = wait_bounded(&mut child, Duration::from_secs(10))?;
    let took = began.elapsed();
    if !status.success() {
        return Err(format!("`beat status {id}` failed ({status})"));
    }
    Ok(took)
}

// ---------------------------------------------------------------------------------
// 2. DelegateTask to agent running, with a free slot

const START_WARMUP: usize = 3;
const START_SAMPLES: usize = 50;

fn start_latency(bin: &Path) -> Result<Vec<Figure>> {
    let home = BeatHome::new(bin)?;
    home.explain(start_latency_in(&home))
}

fn start_latency_in(home: &BeatHome) -> Result<Vec<Figure>> {
    let marks = home.path().join("marks");
    std::fs::create_dir(&marks).map_err(|e| format!("cannot make {}: {e}", marks.display()))?;
    let mut mcp = home.mcp()?;
    let deadline = Instant::now() + Duration::from_secs(90);
    let (mut starts, mut replies) = (Vec::new(), Vec::new());
    for i in 0..START_WARMUP + START_SAMPLES {
        if Instant::now() > deadline {
            println!(
                "note: start stopped after {} samples (time limit)",
                starts.len()
            );
            break;
        }
        let (start, reply) = one_start(home, &mut mcp, &marks.join(i.to_string()))?;
        if i >= START_WARMUP {
            starts.push(start);
            replies.push(reply);
        }
    }
    Ok(vec![
        Figure::at_most("start_latency_p50", percentile(&starts, 50.0), "ms", 10.0),
        Figure::info("start_latency_p95", percentile(&starts, 95.0), "ms"),
        Figure::info("delegate_reply_p50", percentile(&replies, 50.0), "ms"),
    ])
}

/// Delegates `date +%s%N > mark` and waits for it; returns (agent start - send time,
/// DelegateTask round trip), in ms.
fn one_start(home: &BeatHome, mcp: &mut McpSession, mark: &Path) -> Result<(f64, f64)> {
    let prompt = format!("date +%s%N > '{}'", mark.display());
    let sent_ns = epoch_ns();
    let sent = Instant::now();
    let answer = mcp.call("DelegateTask", home.task(&prompt))?;
    let reply_ms = ms(sent.elapsed());
    let id = task_id(&answer)?;
    let done = mcp.call("WaitTask", json!({ "taskId": id, "timeoutMs": 30_000 }))?;
    if done["status"] != "completed" {
        return Err(format!("task {id} did not complete: {done}"));
    }
    let text = std::fs::read_to_string(mark)
        .map_err(|e| format!("task {id} left no {}: {e}", mark.display()))?;
    let started_ns: i128 = text.trim().parse().map_err(|e| {
        format!(
            "{} holds '{}', not nanoseconds: {e}",
            mark.display(),
            text.trim()
        )
    })?;
    Ok(((started_ns - sent_ns) as f64 / 1e6, reply_ms))
}

// ---------------------------------------------------------------------------------
// 3. 1000 trivial tasks, 4 workers, against xargs -P4

const THROUGHPUT_TASKS: usize = 1000;

/// One way of running the 1000 commands.
struct Run {
    /// Commands per second, first submission to last completion.
    rate: f64,
    /// CPU time (user + system) per command of every process involved, in ms.
    cpu_ms: f64,
}

fn throughput(bin: &Path) -> Result<Vec<Figure>> {
    let (beat, daemon_cpu_ms, submit_ms, xargs) = {
        let home = BeatHome::new(bin)?;
        home.explain(beat_throughput(&home, true))?
    }; // each home's daemon is stopped before the next run
    let xargs = xargs.ok_or("xargs was not measured")?;
    let in_repo = {
        let home = BeatHome::new(bin)?;
        home.init_git_repo()?;
        home.explain(beat_throughput(&home, false))?.0
    };
    Ok(vec![
        Figure::info("throughput_beat", beat.rate, "tasks/s"),
        Figure::info("throughput_xargs_p4", xargs.rate, "tasks/s"),
        Figure::at_least(
            "throughput_vs_xargs",
            100.0 * beat.rate / xargs.rate,
            "%",
            50.0,
        ),
        Figure::info("submit_1000_time", submit_ms, "ms"),
        Figure::info("cpu_per_task_beat", beat.cpu_ms, "ms"),
        Figure::info("cpu_per_task_beat_daemon", daemon_cpu_ms, "ms"),
        Figure::info("cpu_per_task_xargs", xargs.cpu_ms, "ms"),
        Figure::info("throughput_beat_git_repo", in_repo.rate, "tasks/s"),
        Figure::info("cpu_per_task_beat_git_repo", in_repo.cpu_ms, "ms"),
    ])
}

/// The 1000 tasks through one MCP session: submitted pipelined, then awaited with
/// WaitTask. Returns the run, the daemon's own CPU per task (ms), the time the
/// submissions took (ms) and, with `against_xargs`, xargs' run over the same commands
/// measured right before and right after (their mean: the machine's speed drifts by
/// tens of percent over a minute, and both sides must see the same machine). The run's
/// CPU is the daemon's plus its reaped children's (each shim, which has reaped its
/// agent).
fn beat_throughput(home: &BeatHome, against_xargs: bool) -> Result<(Run, f64, f64, Option<Run>)> {
    home.configure(&[("maxWorkers", "4"), ("memoryReserve", "0")])?;
    let pid = home.start_daemon()?;
    let mut mcp = home.mcp()?;
    let first = task_id(&mcp.call("DelegateTask", home.task("true"))?)?; // warm-up
    mcp.call("WaitTask", json!({ "taskId": first, "timeoutMs": 30_000 }))?;
    let xargs_before = against_xargs.then(xargs_throughput).transpose()?;

    let cpu_before = process_cpu(pid)?;
    let client_before = own_cpu();
    let began_ms = epoch_ms();
    let began = Instant::now();
    let submitted = mcp.call_many(
        "DelegateTask",
        (0..THROUGHPUT_TASKS).map(|_| home.task("true")),
        PIPELINE_WINDOW,
    )?;
    let submit_ms = ms(began.elapsed());
    let ids = submitted.iter().map(task_id).collect::<Result<Vec<_>>>()?;
    let finished = wait_all_completed(&mut mcp, &ids, STEP_TIMEOUT)?;
    let wall_s = began.elapsed().as_secs_f64();
    let cpu_after = process_cpu(pid)?;
    let client_cpu_s = own_cpu() - client_before;
    let xargs_after = against_xargs.then(xargs_throughput).transpose()?;
    let last_end = latest(&finished, "endTime")?;
    let span_s = ((last_end - began_ms) as f64 / 1000.0).max(0.001);
    let per_task = |seconds: f64| seconds * 1000.0 / THROUGHPUT_TASKS as f64;
    println!(
        "note: beat: {THROUGHPUT_TASKS} tasks, last completion after {span_s:.2} s \
         (all WaitTask answers after {wall_s:.2} s); this bench's own MCP client used \
         {:.3} ms of CPU per task on the same cores",
        per_task(client_cpu_s)
    );
    let run = Run {
        rate: THROUGHPUT_TASKS as f64 / span_s,
        cpu_ms: per_task(cpu_after.total() - cpu_before.total()),
    };
    let xargs = match (xargs_before, xargs_after) {
        (Some(a), Some(b)) => Some(Run {
            rate: (a.rate + b.rate) / 2.0,
            cpu_ms: (a.cpu_ms + b.cpu_ms) / 2.0,
        }),
        _ => None,
    };
    Ok((
        run,
        per_task(cpu_after.own - cpu_before.own),
        submit_ms,
        xargs,
    ))
}

/// WaitTask for every task (pipelined); an error unless all of them completed.
fn wait_all_completed(
    mcp: &mut McpSession,
    ids: &[String],
    timeout: Duration,
) -> Result<Vec<Value>> {
    let finished = mcp.call_many(
        "WaitTask",
        ids.iter()
            .map(|id| json!({ "taskId": id, "timeoutMs": timeout.as_millis() as u64 })),
        PIPELINE_WINDOW,
    )?;
    let not_done = finished
        .iter()
        .filter(|f| f["status"] != "completed")
        .count();
    if not_done > 0 {
        return Err(format!(
            "{not_done} of {} tasks did not complete",
            ids.len()
        ));
    }
    Ok(finished)
}

/// The latest value of a millisecond time field among the statuses.
fn latest(statuses: &[Value], field: &str) -> Result<i64> {
    statuses
        .iter()
        .filter_map(|f| f[field].as_i64())
        .max()
        .ok_or_else(|| format!("no task reported a {field}"))
}

/// `xargs -P4 -n1 sh -c` over the same commands.
fn xargs_throughput() -> Result<Run> {
    let cpu_before = reaped_children_cpu();
    let began = Instant::now();
    let mut child = Command::new("xargs")
        .args(["-P4", "-n1", "sh", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run xargs: {e}"))?;
    let input = "true\n".repeat(THROUGHPUT_TASKS);
    child
        .stdin
        .take()
        .ok_or("xargs has no stdin")?
        .write_all(input.as_bytes())
        .map_err(|e| format!("writing to xargs failed: {e}"))?;
    let status = wait_bounded(&mut child, STEP_TIMEOUT)?;
    let took = began.elapsed().as_secs_f64();
    if !status.success() {
        return Err(format!("xargs failed ({status})"));
    }
    let cpu = reaped_children_cpu() - cpu_before;
    println!("note: xargs -P4: {THROUGHPUT_TASKS} commands in {took:.2} s");
    Ok(Run {
        rate: THROUGHPUT_TASKS as f64 / took,
        cpu_ms: cpu * 1000.0 / THROUGHPUT_TASKS as f64,
    })
}

/// CPU time of a process, in seconds: its own, and that of the children it reaped.
struct ProcessCpu {
    own: f64,
    children: f64,
}

impl ProcessCpu {
    fn total(&self) -> f64 {
        self.own + self.children
    }
}

/// `utime + stime` and `cutime + cstime` from `/proc/<pid>/stat`.
fn process_cpu(pid: u32) -> Result<ProcessCpu> {
    let mut cpu = one_process_cpu(pid)?;
    cpu.children += live_descendants_cpu(pid);
    Ok(cpu)
}

/// The CPU time of a process's live descendants, with what each has reaped: the daemon's
/// shim spawner, and the shims that wait for their next run (each holds its agents' time
/// until it exits and the spawner reaps it).
fn live_descendants_cpu(pid: u32) -> f64 {
    live_children(pid)
        .into_iter()
        .map(|child| {
            one_process_cpu(child).map_or(0.0, |c| c.own + c.children) + live_descendants_cpu(child)
        })
        .sum()
}

/// Direct children of a process that are still alive (from every thread's list).
fn live_children(pid: u32) -> Vec<u32> {
    let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    threads
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

fn one_process_cpu(pid: u32) -> Result<ProcessCpu> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("cannot read /proc/{pid}/stat: {e}"))?;
    // The fields after the command name, which may itself hold spaces: state is the
    // first, utime the 12th.
    let fields: Vec<f64> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default()
        .split_whitespace()
        .skip(11)
        .take(4)
        .filter_map(|f| f.parse().ok())
        .collect();
    let [utime, stime, cutime, cstime] = fields[..] else {
        return Err(format!("/proc/{pid}/stat has no CPU times: {stat}"));
    };
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ProcessCpu {
        own: (utime + stime) / ticks,
        children: (cutime + cstime) / ticks,
    })
}

/// CPU time of every child this process has reaped (and of their reaped children), s.
fn reaped_children_cpu() -> f64 {
    rusage_cpu(libc::RUSAGE_CHILDREN)
}

/// CPU time of this bench process (all its threads), in seconds.
fn own_cpu() -> f64 {
    rusage_cpu(libc::RUSAGE_SELF)
}

fn rusage_cpu(who: libc::c_int) -> f64 {
    // SAFETY: getrusage writes one rusage we own.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

// ---------------------------------------------------------------------------------
// 4. Durable journal transitions per second

const JOURNAL_TRANSITIONS: usize = 200_000;
const JOURNAL_SENDERS: usize = 64;

fn journal_rate(_bin: &Path) -> Result<Vec<Figure>> {
    let lifecycle = Arc::new(Lifecycle::new()?);
    let dir = tempfile::Builder::new()
        .prefix("beat-e2e-journal-")
        .tempdir()
        .map_err(|e| format!("cannot make a temp folder: {e}"))?;
    let db = dir.path().join("beat.db");
    let conn =
        open_write_connection(&db).map_err(|e| format!("cannot open {}: {e}", db.display()))?;
    let writer = JournalWriter::start(conn, &db);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot build a tokio runtime: {e}"))?;
    let tasks = JOURNAL_TRANSITIONS.div_ceil(3);
    let deadline = Instant::now() + Duration::from_secs(90);
    let began = Instant::now();
    let written = runtime.block_on(async {
        let mut senders = tokio::task::JoinSet::new();
        for sender in 0..JOURNAL_SENDERS {
            let (writer, lifecycle) = (writer.clone(), lifecycle.clone());
            senders.spawn(journal_sender(writer, lifecycle, sender, tasks, deadline));
        }
        let mut total = 0;
        while let Some(joined) = senders.join_next().await {
            total += joined.map_err(|e| format!("a sender panicked: {e}"))??;
        }
        Ok::<usize, String>(total)
    })?;
    let took = began.elapsed().as_secs_f64();
    drop(writer);
    let stored = count_rows(&db, "SELECT COUNT(*) FROM events")?;
    if stored != written {
        return Err(format!(
            "{written} transitions acknowledged but {stored} events stored"
        ));
    }
    println!("note: journal: {written} transitions from {JOURNAL_SENDERS} senders in {took:.2} s");
    Ok(vec![Figure::at_least(
        "journal_transitions",
        written as f64 / took,
        "/s",
        50_000.0,
    )])
}

/// Journals Submitted, Started and Finished for every `JOURNAL_SENDERS`-th task from
/// `first`, each append awaited before the next; returns the transitions written.
async fn journal_sender(
    writer: JournalWriter,
    lifecycle: Arc<Lifecycle>,
    first: usize,
    tasks: usize,
    deadline: Instant,
) -> Result<usize> {
    let mut written = 0;
    for n in (first..tasks).step_by(JOURNAL_SENDERS) {
        if Instant::now() > deadline {
            break;
        }
        let mut record = None;
        for event in lifecycle.for_task(n) {
            let next = backbeat_actors::model::apply(record.as_ref(), &event)
                .map_err(|e| format!("the bench built a bad transition: {e}"))?;
            writer
                .append(Append::task(event, next.clone()))
                .await
                .map_err(|_| "the journal writer went away".to_string())?
                .map_err(|e| e.to_string())?;
            record = Some(next);
            written += 1;
        }
    }
    Ok(written)
}

/// The three transitions of a task that runs and succeeds, as the engine journals them.
/// The templates are built once from JSON (so that fields the model gains later, with
/// serde defaults, do not break the bench); `for_task` fills in one task's id and times.
struct Lifecycle {
    submitted: TaskEvent,
    started: TaskEvent,
    finished: TaskEvent,
}

impl Lifecycle {
    fn new() -> Result<Lifecycle> {
        let task = json!({
            "id": "task-00000000-0000-4000-8000-000000000000",
            "prompt": "Fix the failing test in src/parser.rs, run cargo test, and summarise \
                       what changed in a short commit message.",
            "status": "queued",
            "priority": "P2",
            "agent": "claude",
            "workingDirectory": "/home/dev/projects/backbeat",
            "timeout": 1_800_000,
            "idleTimeout": null,
            "maxOutputBuffer": 10 * 1024 * 1024,
            "parentTaskId": null,
            "retryCount": null,
            "retryOf": null,
            "createdAt": 0,
            "startedAt": null,
            "completedAt": null,
            "notBefore": null,
            "exitCode": null,
            "signal": null,
            "reason": null,
            "shimPid": null,
            "shimStartTime": null,
            "cancelReason": null,
            "outputBytes": null,
            "outputTruncated": false,
        });
        let outcome = json!({
            "status": "completed",
            "exitCode": 0,
            "signal": null,
            "reason": "exited with code 0",
            "outputBytes": 18_432,
            "outputTruncated": false,
        });
        Ok(Lifecycle {
            submitted: event(json!({ "type": "submitted", "task": task }))?,
            started: event(
                json!({ "type": "started", "at": 0, "shim_pid": 0, "shim_start_time": 0 }),
            )?,
            finished: event(json!({ "type": "finished", "at": 0, "outcome": outcome }))?,
        })
    }

    fn for_task(&self, n: usize) -> [TaskEvent; 3] {
        let created = backbeat_actors::model::now_ms();
        let mut submitted = self.submitted.clone();
        if let TaskEvent::Submitted { task, .. } = &mut submitted {
            // Ids as the engine makes them (UUIDv7: time-ordered, so new rows land at the
            // end of the id index instead of on a random page of it).
            task.id = format!("task-{}", uuid::Uuid::now_v7());
            task.created_at = created;
        }
        let mut started = self.started.clone();
        if let TaskEvent::Started {
            at,
            shim_pid,
            shim_start_time,
            ..
        } = &mut started
        {
            *at = created + 3;
            *shim_pid = 40_000 + (n % 20_000) as u32;
            *shim_start_time = 123_456_789 + n as u64;
        }
        let mut finished = self.finished.clone();
        if let TaskEvent::Finished { at, .. } = &mut finished {
            *at = created + 4_200;
        }
        [submitted, started, finished]
    }
}

fn event(v: Value) -> Result<TaskEvent> {
    serde_json::from_value(v.clone())
        .map_err(|e| format!("the bench's {v} is not a TaskEvent of this model: {e}"))
}

fn count_rows(db: &Path, sql: &str) -> Result<usize> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| format!("cannot open {}: {e}", db.display()))?;
    conn.query_row(sql, [], |r| r.get::<_, i64>(0))
        .map(|n| n as usize)
        .map_err(|e| format!("`{sql}` failed: {e}"))
}

// ---------------------------------------------------------------------------------
// 5. Daemon memory, idle and with 10 000 queued tasks

const QUEUED_TASKS: usize = 10_000;

fn daemon_memory(bin: &Path) -> Result<Vec<Figure>> {
    let home = BeatHome::new(bin)?;
    home.explain(daemon_memory_in(&home))
}

fn daemon_memory_in(home: &BeatHome) -> Result<Vec<Figure>> {
    home.configure(&[("maxWorkers", "1"), ("memoryReserve", "0")])?;
    let pid = home.start_daemon()?;
    std::thread::sleep(Duration::from_secs(1));
    let idle = rss_mib(pid)?;

    let mut mcp = home.mcp()?;
    let blocker = task_id(&mcp.call("DelegateTask", home.task("sleep 600"))?)?;
    wait_until_running(&mut mcp, &blocker)?;
    let began = Instant::now();
    mcp.call_many(
        "DelegateTask",
        (0..QUEUED_TASKS).map(|_| home.task("true")),
        PIPELINE_WINDOW,
    )?;
    let submit_s = began.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(1));
    let loaded = rss_mib(pid)?;
    let queued = count_rows(
        &home.path().join("beat.db"),
        "SELECT COUNT(*) FROM tasks WHERE status = 'queued'",
    )?;
    if queued != QUEUED_TASKS {
        println!("note: memory: {queued} tasks queued, not {QUEUED_TASKS}");
    }
    Ok(vec![
        Figure::at_most("daemon_rss_idle", idle, "MiB", 20.0),
        Figure::at_most("daemon_rss_10k_queued", loaded, "MiB", 100.0),
        Figure::info("submit_10k_time", submit_s, "s"),
        Figure::info("submit_10k_rate", QUEUED_TASKS as f64 / submit_s, "tasks/s"),
    ])
}

// ---------------------------------------------------------------------------------
// 6. A DAG of 10 000 trivial tasks with about 50 000 edges, submitted through MCP

const DAG_TASKS: usize = 10_000;
const DAG_DEPS: usize = 5;

fn dag(bin: &Path) -> Result<Vec<Figure>> {
    let home = BeatHome::new(bin)?;
    let r = dag_in(&home);
    home.explain(r)
}

/// Each batch of `PIPELINE_WINDOW` tasks depends on earlier batches only (so that
/// submissions can be pipelined): every task after the first batch names `DAG_DEPS`
/// earlier tasks, chosen by a fixed pseudo-random sequence.
fn dag_in(home: &BeatHome) -> Result<Vec<Figure>> {
    home.configure(&[("maxWorkers", "4"), ("memoryReserve", "0")])?;
    home.start_daemon()?;
    let mut mcp = home.mcp()?;
    let mut ids: Vec<String> = Vec::with_capacity(DAG_TASKS);
    let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
    let mut edges = 0usize;
    let began = Instant::now();
    while ids.len() < DAG_TASKS {
        let start = ids.len();
        let batch = PIPELINE_WINDOW.min(DAG_TASKS - start);
        let requests: Vec<Value> = (0..batch)
            .map(|_| {
                let mut task = home.task("true");
                let mut deps = std::collections::BTreeSet::new();
                while deps.len() < DAG_DEPS.min(start) {
                    seed = seed
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    deps.insert((seed >> 33) as usize % start);
                }
                edges += deps.len();
                if !deps.is_empty() {
                    task["dependsOn"] = json!(deps.iter().map(|d| &ids[*d]).collect::<Vec<_>>());
                }
                task
            })
            .collect();
        for reply in mcp.call_many("DelegateTask", requests, PIPELINE_WINDOW)? {
            ids.push(task_id(&reply)?);
        }
    }
    let submit_s = began.elapsed().as_secs_f64();
    let finished = wait_all_completed(&mut mcp, &ids, Duration::from_secs(600))?;
    let first_start = finished
        .iter()
        .filter_map(|f| f["startTime"].as_i64())
        .min()
        .ok_or("no task reported a startTime")?;
    let last_end = latest(&finished, "endTime")?;
    let span_s = ((last_end - first_start) as f64 / 1000.0).max(0.001);
    println!(
        "note: dag: {DAG_TASKS} tasks, {edges} edges, submitted in {submit_s:.2} s, \
         first start to last completion {span_s:.2} s"
    );
    Ok(vec![
        Figure::info("dag_edges", edges as f64, "edges"),
        Figure::info("dag_submit_time", submit_s, "s"),
        Figure::info("dag_submit_rate", DAG_TASKS as f64 / submit_s, "tasks/s"),
        Figure::info("dag_run_rate", DAG_TASKS as f64 / span_s, "tasks/s"),
        Figure::info(
            "dag_span_per_task",
            span_s * 1000.0 / DAG_TASKS as f64,
            "ms",
        ),
    ])
}

// ---------------------------------------------------------------------------------
// 7. A retry loop's orchestration between iterations

const LOOP_ITERATIONS: usize = 21;

fn loop_gap(bin: &Path) -> Result<Vec<Figure>> {
    let home = BeatHome::new(bin)?;
    let r = loop_gap_in(&home);
    home.explain(r)
}

/// A retry loop whose agent only stamps the time it starts and whose eval stamps the
/// time it ends and fails (cooldown 0): the gap from one iteration's eval end to the
/// next iteration's agent start is the loop's own orchestration (journal, the eval's
/// result, the next task's creation, admission and the shim's spawn).
fn loop_gap_in(home: &BeatHome) -> Result<Vec<Figure>> {
    home.configure(&[("memoryReserve", "0")])?;
    home.start_daemon()?;
    let starts = home.path().join("agent-starts");
    let ends = home.path().join("eval-ends");
    let mut mcp = home.mcp()?;
    let created = mcp.call(
        "CreateLoop",
        json!({
            "prompt": format!("date +%s%N >> '{}'", starts.display()),
            "agent": "shell",
            "strategy": "retry",
            "exitCondition": format!("date +%s%N >> '{}'; false", ends.display()),
            "maxIterations": LOOP_ITERATIONS,
            "maxConsecutiveFailures": 0,
            "cooldownMs": 0,
            "workingDirectory": home.workdir().display().to_string(),
        }),
    )?;
    let id = created["loopId"]
        .as_str()
        .ok_or_else(|| format!("no loopId in {created}"))?
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = mcp.call("LoopStatus", json!({ "loopId": id }))?;
        match s["loop"]["status"].as_str() {
            Some("running") if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Some("failed") => break,
            other => return Err(format!("loop {id} ended {other:?}: {s}")),
        }
    }
    let stamps = |path: &Path| -> Result<Vec<i128>> {
        std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?
            .lines()
            .map(|l| {
                l.trim()
                    .parse()
                    .map_err(|e| format!("bad stamp {l:?}: {e}"))
            })
            .collect()
    };
    let (starts, ends) = (stamps(&starts)?, stamps(&ends)?);
    if starts.len() != LOOP_ITERATIONS || ends.len() != LOOP_ITERATIONS {
        return Err(format!(
            "expected {LOOP_ITERATIONS} agent starts and eval ends, got {} and {}",
            starts.len(),
            ends.len()
        ));
    }
    let gaps: Vec<f64> = (1..LOOP_ITERATIONS)
        .map(|i| (starts[i] - ends[i - 1]) as f64 / 1e6)
        .collect();
    let iteration: Vec<f64> = (1..LOOP_ITERATIONS)
        .map(|i| (starts[i] - starts[i - 1]) as f64 / 1e6)
        .collect();
    Ok(vec![
        Figure::at_most("loop_gap_p50", percentile(&gaps, 50.0), "ms", 20.0),
        Figure::info("loop_gap_p95", percentile(&gaps, 95.0), "ms"),
        Figure::info("loop_iteration_p50", percentile(&iteration, 50.0), "ms"),
    ])
}

/// Polls TaskStatus until `id` runs (at most 10 s).
fn wait_until_running(mcp: &mut McpSession, id: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = mcp.call("TaskStatus", json!({ "taskId": id }))?;
        match status["status"].as_str() {
            Some("running") => return Ok(()),
            Some("queued") if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            _ => return Err(format!("the blocker task did not start running: {status}")),
        }
    }
}

// ---------------------------------------------------------------------------------
// 7. Admission by real headroom: agents that grow under a memory reserve, and CPU-bound
//    agents under a CPU reserve

/// Agents that each grow to a known size.
const GROWERS: usize = 24;
/// How many of them the memory reserve leaves room for at once.
const GROWER_ROOM: f64 = 3.5;
const GIB: u64 = 1 << 30;
const MIB_F: f64 = (1u64 << 20) as f64;
/// CPU-bound agents, each burning one core for 1.5 s.
const BURNERS: usize = 8;
const PYTHON: &str = "/usr/bin/python3";

fn admission(bin: &Path) -> Result<Vec<Figure>> {
    let mut figures = {
        let home = BeatHome::new(bin)?;
        home.explain(memory_admission_in(&home))?
    };
    let home = BeatHome::new(bin)?;
    figures.extend(home.explain(cpu_admission_in(&home))?);
    Ok(figures)
}

/// `MemAvailable`, in bytes (this machine's agents run in no limited cgroup; the
/// governor reads the same figure).
fn mem_available() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| backbeat_actors::measure::parse_meminfo_available(&m))
        .unwrap_or(0)
}

/// `MemAvailable` as it settles: the lowest of readings over 2 s. It moves by itself
/// (here by up to 2 GiB within a minute, with no agent running, as the page cache
/// changes), and a reserve set from a passing high leaves less room than the run
/// assumes: the governor then rightly starts fewer agents than the ideal counts.
fn settled_mem_available() -> u64 {
    let mut lowest = u64::MAX;
    for _ in 0..20 {
        lowest = lowest.min(mem_available());
        std::thread::sleep(Duration::from_millis(100));
    }
    lowest
}

/// Samples `MemAvailable` every 20 ms until stopped: the lowest seen, and (with
/// `agents`) the room the machine had for the agents over time.
struct MemoryWatch {
    stop: Arc<std::sync::atomic::AtomicBool>,
    seen: Option<std::thread::JoinHandle<Watched>>,
}

/// The agents a watch counts: processes named `comm` whose environment holds `marker`,
/// each needing `size` bytes, above `reserve`.
struct WatchedAgents {
    comm: &'static str,
    marker: String,
    size: u64,
    reserve: u64,
}

struct Watched {
    lowest: u64,
    /// The mean over the run of how many agents the machine had room for: what was
    /// available plus what the agents held, above the reserve, in whole agents. The
    /// machine's own `MemAvailable` moves during a run (its memory balloon gives and
    /// takes), so the room at the start is not the room the run had.
    mean_room: Option<f64>,
}

impl MemoryWatch {
    fn start(agents: Option<WatchedAgents>) -> MemoryWatch {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let seen = std::thread::spawn(move || {
            let mut lowest = u64::MAX;
            let (mut rooms, mut samples) = (0u64, 0u64);
            let mut tick = 0u32;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let available = mem_available();
                lowest = lowest.min(available);
                // Every fifth sample: reading every process's environment costs more.
                if let Some(a) = &agents
                    && tick.is_multiple_of(5)
                {
                    let held = resident_bytes(&processes_named_with(a.comm, &a.marker));
                    rooms += (available + held).saturating_sub(a.reserve) / a.size;
                    samples += 1;
                }
                tick += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Watched {
                lowest,
                mean_room: (samples > 0).then(|| rooms as f64 / samples as f64),
            }
        });
        MemoryWatch {
            stop,
            seen: Some(seen),
        }
    }

    fn finish(mut self) -> Watched {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.seen
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or(Watched {
                lowest: 0,
                mean_room: None,
            })
    }
}

impl Drop for MemoryWatch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The processes named `comm` whose environment holds `marker`.
fn processes_named_with(comm: &str, marker: &str) -> Vec<u32> {
    processes_with(marker)
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
        })
        .collect()
}

/// Resident memory of the processes, in bytes (`/proc/<pid>/statm`).
fn resident_bytes(pids: &[u32]) -> u64 {
    // SAFETY: sysconf(3) has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/statm")).ok())
        .filter_map(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| pages * page)
        .sum()
}

/// The most tasks that ran at once, from their start and end times.
fn peak_concurrency(finished: &[Value]) -> usize {
    most_at_once(
        finished
            .iter()
            .filter_map(|f| Some([(f["startTime"].as_i64()?, 1), (f["endTime"].as_i64()?, -1)]))
            .flatten()
            .collect(),
    )
}

/// The most lives at once, from their starts (+1) and ends (-1); an end and a start at
/// the same instant count the end first.
fn most_at_once<T: Ord>(mut edges: Vec<(T, i32)>) -> usize {
    edges.sort();
    let (mut now, mut peak) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        peak = peak.max(now);
    }
    peak as usize
}

/// The most agents alive at once, from the `S <ns>` and `E <ns>` lines they wrote.
fn agents_at_once(lives: &Path) -> Result<usize> {
    let text = std::fs::read_to_string(lives)
        .map_err(|e| format!("cannot read {}: {e}", lives.display()))?;
    Ok(most_at_once(
        text.lines()
            .filter_map(|l| {
                let (kind, at) = l.split_once(' ')?;
                Some((at.parse::<u128>().ok()?, if kind == "S" { 1 } else { -1 }))
            })
            .collect(),
    ))
}

/// The median run time of the tasks, in s.
fn median_run_s(finished: &[Value]) -> f64 {
    let runs: Vec<f64> = finished
        .iter()
        .filter_map(|f| Some((f["endTime"].as_i64()? - f["startTime"].as_i64()?) as f64 / 1000.0))
        .collect();
    percentile(&runs, 50.0)
}

/// 24 agents that each grow to `size` over 1.5 s (15 steps) and hold it 1.5 s, under a
/// reserve that leaves room for 3.5 of them.
fn memory_admission_in(home: &BeatHome) -> Result<Vec<Figure>> {
    if !Path::new(PYTHON).exists() {
        return Err(format!("{PYTHON} is needed for the growing agents"));
    }
    let available = settled_mem_available();
    // 1.5 GiB each, smaller where the machine has less: the reserve keeps at least 1 GiB.
    let size = (3 * GIB / 2).min(available.saturating_sub(GIB) * 2 / 7);
    if size < 64 << 20 {
        return Err(format!(
            "only {available} bytes available: too little to run this"
        ));
    }
    let reserve = available - (GROWER_ROOM * size as f64) as u64;
    let room = ((available - reserve) / size) as usize;
    println!(
        "note: admission: {GROWERS} agents of {:.2} GiB each (grow 1.5 s, hold 1.5 s); \
         {:.2} GiB available at the start, memoryReserve {:.2} GiB: room for {room} at once",
        size as f64 / GIB as f64,
        available as f64 / GIB as f64,
        reserve as f64 / GIB as f64
    );
    home.configure(&[
        ("maxWorkers", &GROWERS.to_string()),
        ("memoryReserve", &reserve.to_string()),
    ])?;
    home.start_daemon()?;
    let mut mcp = home.mcp()?;
    let step = size / 15;
    // Each agent notes when it starts and when it is about to exit (its memory is freed
    // at exit, after the note): the peak of agents at once comes from these, not from
    // the tasks' times, where a task's end is journaled a little after its agent exited
    // and the next agent may already have been started in the memory it freed.
    let lives = home.path().join("lives.txt");
    let grower = format!(
        "{PYTHON} -c 'import time\nopen(\"{lives}\", \"a\").write(\"S %d\\n\" % time.time_ns())\nheld = []\nfor _ in range(15):\n    held.append(b\"\\x01\" * {step})\n    time.sleep(0.1)\ntime.sleep(1.5)\nopen(\"{lives}\", \"a\").write(\"E %d\\n\" % time.time_ns())'",
        lives = lives.display()
    );
    let watch = MemoryWatch::start(Some(WatchedAgents {
        comm: "python3",
        marker: format!("BACKBEAT_HOME={}", home.path().display()),
        size,
        reserve,
    }));
    let began_ms = epoch_ms();
    let submitted = mcp.call_many(
        "DelegateTask",
        (0..GROWERS).map(|_| home.task(&grower)),
        PIPELINE_WINDOW,
    )?;
    let ids = submitted.iter().map(task_id).collect::<Result<Vec<_>>>()?;
    let finished = wait_all_completed(&mut mcp, &ids, Duration::from_secs(600));
    let watched = watch.finish();
    let lowest = watched.lowest;
    let finished = finished?;
    println!(
        "note: admission: {:.2} GiB available once every agent ended ({:.2} GiB at the start)",
        mem_available() as f64 / GIB as f64,
        available as f64 / GIB as f64
    );
    let makespan_s = (latest(&finished, "endTime")? - began_ms) as f64 / 1000.0;
    let run_s = median_run_s(&finished);
    // The ideal for the room the machine had during the run (a fluid schedule: the
    // agents' total run time spread over that many at once), and for the room at the
    // start, which the run may not have had.
    let mean_room = watched.mean_room.unwrap_or(room as f64).max(1.0);
    let ideal_s = (GROWERS as f64 * run_s / mean_room).max(run_s);
    let ideal_start_room_s = GROWERS.div_ceil(room.max(1)) as f64 * run_s;
    println!(
        "note: admission: room for {mean_room:.2} agents on average during the run \
         (available plus what the agents held, above the reserve); ideal {ideal_s:.1} s \
         for it, {ideal_start_room_s:.1} s for the room at the start"
    );
    let peak = agents_at_once(&lives)?;
    println!(
        "note: admission: {} agents at once by the tasks' start and end times (a task ends \
         when its agent's exit is journaled)",
        peak_concurrency(&finished)
    );
    println!(
        "note: admission: lowest available {:.2} GiB against the {:.2} GiB reserve; \
         makespan {makespan_s:.1} s, ideal {ideal_s:.1} s (median run {run_s:.2} s); \
         at most {peak} agents at once",
        lowest as f64 / GIB as f64,
        reserve as f64 / GIB as f64,
    );
    Ok(vec![
        Figure::info("admission_agent_size", size as f64 / MIB_F, "MiB"),
        Figure::info("admission_memory_reserve", reserve as f64 / MIB_F, "MiB"),
        Figure::at_least(
            "admission_lowest_headroom_above_reserve",
            (lowest as f64 - reserve as f64) / MIB_F,
            "MiB",
            0.0,
        ),
        Figure::at_most(
            "admission_makespan_vs_ideal",
            makespan_s / ideal_s,
            "x",
            1.25,
        ),
        Figure::info("admission_makespan", makespan_s, "s"),
        Figure::info("admission_ideal_makespan", ideal_s, "s"),
        Figure::info("admission_mean_room", mean_room, "agents"),
        Figure::info(
            "admission_makespan_vs_start_room_ideal",
            makespan_s / ideal_start_room_s,
            "x",
        ),
        // Reported, not a goal: the room is reckoned from `MemAvailable` at the start,
        // and that estimate moves by itself during the run (by over 1 GiB here, either
        // way); the goal is the reserve, judged on the memory really available.
        Figure::info("admission_peak_agents", peak as f64, "agents"),
    ])
}

/// 8 agents that each burn one core for 1.5 s, with `cpuCoresReserved` leaving the
/// agents all cores but one... of two: never more than the cores left may run at once.
fn cpu_admission_in(home: &BeatHome) -> Result<Vec<Figure>> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let reserved = cores.saturating_sub(1).max(1);
    let left = cores.saturating_sub(reserved).max(1);
    home.configure(&[
        ("maxWorkers", &BURNERS.to_string()),
        ("memoryReserve", "0"),
        ("cpuCoresReserved", &reserved.to_string()),
    ])?;
    home.start_daemon()?;
    let mut mcp = home.mcp()?;
    let burner = format!(
        "{PYTHON} -c 'import time\nend = time.time() + 1.5\nwhile time.time() < end:\n    pass'"
    );
    let began_ms = epoch_ms();
    let submitted = mcp.call_many(
        "DelegateTask",
        (0..BURNERS).map(|_| home.task(&burner)),
        PIPELINE_WINDOW,
    )?;
    let ids = submitted.iter().map(task_id).collect::<Result<Vec<_>>>()?;
    let finished = wait_all_completed(&mut mcp, &ids, Duration::from_secs(600))?;
    let makespan_s = (latest(&finished, "endTime")? - began_ms) as f64 / 1000.0;
    let run_s = median_run_s(&finished);
    let ideal_s = BURNERS.div_ceil(left) as f64 * run_s;
    let peak = peak_concurrency(&finished);
    println!(
        "note: admission cpu: {BURNERS} agents burning a core for 1.5 s, {cores} cores, \
         cpuCoresReserved {reserved}: at most {peak} at once (goal {left}); makespan \
         {makespan_s:.1} s, ideal {ideal_s:.1} s"
    );
    Ok(vec![
        Figure::at_most(
            "admission_cpu_peak_agents",
            peak as f64,
            "agents",
            left as f64,
        ),
        Figure::at_most(
            "admission_cpu_makespan_vs_ideal",
            makespan_s / ideal_s,
            "x",
            1.25,
        ),
    ])
}

// 9. 10 000 active schedules: creation rate through one MCP session, the daemon's
//    memory, its CPU between fires, and the lateness of fires under that load

const SCHEDULES: usize = 10_000;
/// One-time schedules that fire during the lateness measurement.
const FIRING: usize = 500;

fn schedules(bin: &Path) -> Result<Vec<Figure>> {
    let home = BeatHome::new(bin)?;
    home.explain(schedules_in(&home))
}

fn schedules_in(home: &BeatHome) -> Result<Vec<Figure>> {
    home.configure(&[("maxWorkers", "2"), ("memoryReserve", "0")])?;
    let pid = home.start_daemon()?;
    let mut mcp = home.mcp()?;
    // Cron schedules that will not fire during the bench (once a year, on 1 January).
    let dir = home.workdir().display().to_string();
    let cron = |n: usize| {
        json!({
            "prompt": format!("true {n}"),
            "agent": "shell",
            "workingDirectory": dir,
            "scheduleType": "cron",
            "cronExpression": format!("{} {} 1 1 *", n % 60, (n / 60) % 24),
        })
    };
    let began = Instant::now();
    mcp.call_many("ScheduleTask", (0..SCHEDULES).map(cron), PIPELINE_WINDOW)?;
    let create_s = began.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(1));
    let rss = rss_mib(pid)?;
    // Between fires: the daemon only sleeps (one timer for all schedules).
    let before = one_process_cpu(pid)?.own;
    let idle_window = Duration::from_secs(5);
    std::thread::sleep(idle_window);
    let idle_cpu = (one_process_cpu(pid)?.own - before) / idle_window.as_secs_f64() * 100.0;
    // Lateness: FIRING one-time schedules due within one second, 3 s from now.
    let due = epoch_ms() + 3_000;
    let at = |n: usize| {
        let t = due + (n as i64 * 1000) / FIRING as i64;
        let iso = chrono::DateTime::from_timestamp_millis(t)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        json!({
            "prompt": "true",
            "agent": "shell",
            "workingDirectory": dir,
            "scheduleType": "one_time",
            "scheduledAt": iso,
        })
    };
    mcp.call_many("ScheduleTask", (0..FIRING).map(at), PIPELINE_WINDOW)?;
    let db = home.path().join("beat.db");
    let deadline = Instant::now() + STEP_TIMEOUT;
    while count_rows(&db, "SELECT COUNT(*) FROM schedule_runs")? < FIRING {
        if Instant::now() > deadline {
            return Err("the one-time schedules did not all fire".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let conn = rusqlite::Connection::open(&db).map_err(|e| e.to_string())?;
    let mut stmt = conn
        .prepare("SELECT json_extract(record, '$.firedAt') - scheduled_for FROM schedule_runs")
        .map_err(|e| e.to_string())?;
    let lateness: Vec<f64> = stmt
        .query_map([], |r| r.get::<_, i64>(0))
        .map_err(|e| e.to_string())?
        .filter_map(|r| r.ok())
        .map(|v| v as f64)
        .collect();
    Ok(vec![
        Figure::at_least(
            "schedule_create_rate",
            SCHEDULES as f64 / create_s,
            "schedules/s",
            1000.0,
        ),
        Figure::at_most("daemon_rss_10k_schedules", rss, "MiB", 100.0),
        Figure::at_most("idle_cpu_10k_schedules", idle_cpu, "% of a core", 1.0),
        Figure::at_most(
            "fire_lateness_p50",
            percentile(&lateness, 50.0),
            "ms",
            1000.0,
        ),
        Figure::at_most(
            "fire_lateness_p99",
            percentile(&lateness, 99.0),
            "ms",
            1000.0,
        ),
    ])
}
