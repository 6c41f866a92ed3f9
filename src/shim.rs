//! `beat shim <run-dir>`: the parent of one agent process.
//!
//! Owns: the agent's process group (it is the group's leader's parent and a child
//! subreaper, so orphaned descendants come back to it), the agent's output files and
//! their size limit, the wall-clock and idle timeouts, and `exit.json`.
//! Must never: outlive its agent's group, leave a process of that group behind, or write
//! a partial `exit.json` (it is written to a temporary file and renamed). It runs in its
//! own session, so it survives the daemon; the daemon stops it with SIGTERM.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backbeat_actors::agents::parse::{
    AgentEvent, OutputFormat, RunSummary, StreamParser, render, retry_reason, stderr_retry,
};
use backbeat_actors::agents::run_dir::{
    ExitRecord, KillCause, RunDir, RunSpec, ShimIdentity, process_start_time, truncation_marker,
    write_atomically,
};
use backbeat_actors::model::now_ms;

enum ShimEvent {
    Exited {
        status: std::process::ExitStatus,
        max_rss_kb: u64,
    },
    Terminate,
    /// The agent is retrying an error that retrying cannot fix: stop it.
    Unrecoverable,
}

/// Output accounting shared by the two stream readers: one budget for both streams.
struct OutputBudget {
    limit: u64,
    kept: Mutex<(u64, bool)>, // bytes kept, truncated
    produced: AtomicU64,
    last_output_ms: AtomicI64,
}

impl OutputBudget {
    fn write(&self, file: &mut File, chunk: &[u8]) {
        self.produced
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        self.last_output_ms.store(now_ms(), Ordering::Relaxed);
        let Ok(mut kept) = self.kept.lock() else {
            return;
        };
        if kept.1 {
            return; // past the limit: drain and discard
        }
        let room = self.limit.saturating_sub(kept.0) as usize;
        if chunk.len() <= room {
            let _ = file.write_all(chunk);
            kept.0 += chunk.len() as u64;
        } else {
            let mut cut = room;
            while cut > 0 && (chunk[cut] & 0xC0) == 0x80 {
                cut -= 1; // never split a UTF-8 character
            }
            let _ = file.write_all(&chunk[..cut]);
            let _ = file.write_all(truncation_marker(self.limit).as_bytes());
            *kept = (self.limit, true);
        }
    }
}

/// Structured output read line by line as it arrives: the run's summary, and a readable
/// transcript (text and tool calls) in `output.txt`, under the same byte limit.
struct Transcript {
    parser: StreamParser,
    partial: Vec<u8>,
    /// The unfinished last line of stderr.
    err_partial: Vec<u8>,
    readable: File,
    written: u64,
    limit: u64,
    /// The last text written did not end its line (Gemini deltas).
    mid_line: bool,
    /// Where the agent's retries are reported (`progress.txt`).
    progress: std::path::PathBuf,
    /// Told once when the agent retries what retrying cannot fix.
    stop: Option<mpsc::Sender<ShimEvent>>,
}

/// A line longer than this is parsed as it is rather than buffered further.
const MAX_LINE: usize = 16 << 20;

impl Transcript {
    fn feed(&mut self, chunk: &[u8]) {
        self.partial.extend_from_slice(chunk);
        while let Some(pos) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=pos).collect();
            self.line(&line);
        }
        if self.partial.len() > MAX_LINE {
            let line = std::mem::take(&mut self.partial);
            self.line(&line);
        }
    }

    /// Stderr, read only for the retries some agents report there alone (Gemini CLI).
    fn feed_stderr(&mut self, chunk: &[u8]) {
        self.err_partial.extend_from_slice(chunk);
        while let Some(pos) = self.err_partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.err_partial.drain(..=pos).collect();
            let format = self.parser.summary.format;
            if let Some(retry) = stderr_retry(format, &String::from_utf8_lossy(&line))
                && let Some(reason) = retry_reason(&retry)
            {
                let _ = write_atomically(&self.progress, reason.as_bytes(), false);
                if self.mid_line {
                    self.write("\n");
                    self.mid_line = false;
                }
                self.write(&format!("… {reason}\n"));
            }
        }
        if self.err_partial.len() > MAX_LINE {
            self.err_partial.clear();
        }
    }

    fn finish(&mut self) -> RunSummary {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.line(&line);
        }
        if self.mid_line {
            self.write("\n");
        }
        self.parser.summary.clone()
    }

    fn write(&mut self, text: &str) {
        if self.written + text.len() as u64 <= self.limit {
            let _ = self.readable.write_all(text.as_bytes());
            self.written += text.len() as u64;
        }
    }

    fn line(&mut self, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        let deltas = self.parser.summary.format == OutputFormat::GeminiStreamJson;
        for event in self.parser.line(text.trim_end_matches(['\n', '\r'])) {
            if let Some(reason) = retry_reason(&event) {
                // Not durable: a lost update only leaves an older reason shown.
                let _ = write_atomically(&self.progress, reason.as_bytes(), false);
            }
            if self.parser.summary.unrecoverable.is_some()
                && !self.parser.summary.result_seen
                && let Some(stop) = self.stop.take()
            {
                let _ = stop.send(ShimEvent::Unrecoverable);
            }
            match (&event, deltas) {
                // Gemini streams its text in pieces: they join into one line.
                (AgentEvent::Text(piece), true) => {
                    self.write(piece);
                    self.mid_line = !piece.ends_with('\n');
                }
                _ => {
                    if let Some(readable) = render(&event) {
                        if self.mid_line {
                            self.write("\n");
                            self.mid_line = false;
                        }
                        self.write(&format!("{readable}\n"));
                    }
                }
            }
        }
    }
}

/// Which of the agent's streams a pump reads.
#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

fn pump(
    mut from: impl Read,
    mut to: File,
    budget: Arc<OutputBudget>,
    transcript: Option<(Arc<Mutex<Transcript>>, Stream)>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                budget.write(&mut to, &buf[..n]);
                if let Some((t, stream)) = &transcript
                    && let Ok(mut t) = t.lock()
                {
                    match stream {
                        Stream::Stdout => t.feed(&buf[..n]),
                        Stream::Stderr => t.feed_stderr(&buf[..n]),
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
}

fn wait_agent(pid: i32) -> (std::process::ExitStatus, u64) {
    let mut status: libc::c_int = 0;
    // SAFETY: plain wait4 on our own child with valid out-pointers.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break;
        }
    }
    (
        std::process::ExitStatus::from_raw(status),
        usage.ru_maxrss.max(0) as u64,
    )
}

fn signal_group(pgid: i32, signal: libc::c_int) -> bool {
    // SAFETY: kill(2) on a process group we created.
    unsafe { libc::kill(-pgid, signal) == 0 }
}

/// Reaps every finished child (orphans come to us as subreaper).
fn reap_children() {
    loop {
        let mut status = 0;
        // SAFETY: non-blocking waitpid on any child.
        let r = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if r <= 0 {
            break;
        }
    }
}

/// Stops whatever is left of the group: TERM, up to `grace` for it to go, then KILL.
fn empty_group(pgid: i32, grace: Duration) {
    reap_children();
    if !signal_group(pgid, 0) {
        return;
    }
    signal_group(pgid, libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        reap_children();
        if !signal_group(pgid, 0) {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    signal_group(pgid, libc::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(5);
    while signal_group(pgid, 0) && Instant::now() < deadline {
        reap_children();
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs the shim; the return value is the shim's own exit code.
pub fn run(run_path: &Path) -> i32 {
    let run = RunDir {
        path: run_path.to_path_buf(),
    };
    let spec = match run.read_spec() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("beat shim: cannot read {}: {e}", run.spec().display());
            return 2;
        }
    };
    // SAFETY: setting signal dispositions and prctl at start, before any thread exists.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
    let me = std::process::id();
    let identity = ShimIdentity {
        pid: me,
        start_time: process_start_time(me).unwrap_or(0),
    };
    if let Err(e) = serde_json::to_vec(&identity)
        .map_err(std::io::Error::other)
        .and_then(|b| write_atomically(&run.shim(), &b, false))
    {
        eprintln!("beat shim: cannot write {}: {e}", run.shim().display());
        return 2;
    }
    // The handler first, then unblock (the daemon spawned us with TERM and INT blocked):
    // a cancel that arrived meanwhile is delivered now, to the handler.
    let signals = signal_hook::iterator::Signals::new([libc::SIGTERM, libc::SIGINT]);
    // SAFETY: changing this thread's signal mask, before any other thread exists.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
    let signals = match signals {
        Ok(s) => s,
        Err(e) => {
            eprintln!("beat shim: cannot handle signals: {e}");
            return 2;
        }
    };
    let record = supervise(&run, &spec, signals);
    let bytes = serde_json::to_vec(&record).unwrap_or_default();
    // Atomic (write, rename) but not fsynced: the two fsyncs cost about 14 ms per run on
    // a slow disk, on the path from one task's end to the next one's start. What makes
    // a result durable is the daemon's journal commit, which follows within
    // milliseconds; only a power loss in that window, or before the file system's next
    // commit while no daemon runs, turns the result into a "lost" run. A crash of the
    // daemon alone loses nothing: the page cache outlives it.
    if let Err(e) = write_atomically(&run.exit(), &bytes, false) {
        eprintln!("beat shim: cannot write {}: {e}", run.exit().display());
        return 2;
    }
    0
}

fn spawn_error(started_at: i64, message: String) -> ExitRecord {
    ExitRecord {
        exit_code: None,
        signal: None,
        killed_for: None,
        started_at,
        ended_at: now_ms(),
        max_rss_kb: 0,
        output_bytes: 0,
        truncated: false,
        spawn_error: Some(message),
        summary: None,
    }
}

fn supervise(
    run: &RunDir,
    spec: &RunSpec,
    mut signals: signal_hook::iterator::Signals,
) -> ExitRecord {
    let started_at = now_ms();
    let (tx, rx) = mpsc::channel();
    // Created before stdout.log: whoever sees stdout.log can tell from output.txt
    // whether the agent has a readable transcript.
    let transcript = if spec.output_format.is_structured() {
        match File::create(run.readable()) {
            Ok(readable) => Some(Arc::new(Mutex::new(Transcript {
                parser: StreamParser::new(spec.output_format),
                partial: Vec::new(),
                err_partial: Vec::new(),
                readable,
                written: 0,
                limit: spec.max_output_bytes,
                mid_line: false,
                progress: run.progress(),
                stop: Some(tx.clone()),
            }))),
            Err(e) => {
                eprintln!("beat shim: cannot create {}: {e}", run.readable().display());
                None
            }
        }
    } else {
        None
    };
    let (out_file, err_file) = match (File::create(run.stdout()), File::create(run.stderr())) {
        (Ok(o), Ok(e)) => (o, e),
        (Err(e), _) | (_, Err(e)) => {
            return spawn_error(started_at, format!("cannot create the output files: {e}"));
        }
    };
    let stdin = if spec.prompt_on_stdin {
        match File::open(run.prompt()) {
            Ok(f) => Stdio::from(f),
            Err(e) => return spawn_error(started_at, format!("cannot open the prompt file: {e}")),
        }
    } else {
        Stdio::null()
    };
    let Some((program, args)) = spec.argv.split_first() else {
        return spawn_error(started_at, "the agent's command line is empty".into());
    };
    let mut child = match Command::new(program)
        .args(args)
        .current_dir(&spec.cwd)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return spawn_error(started_at, format!("{program}: {e}")),
    };
    let pid = child.id() as i32;
    let budget = Arc::new(OutputBudget {
        limit: spec.max_output_bytes,
        kept: Mutex::new((0, false)),
        produced: AtomicU64::new(0),
        last_output_ms: AtomicI64::new(now_ms()),
    });
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let streams = [
        child.stdout.take().map(|s| {
            (
                Box::new(s) as Box<dyn Read + Send>,
                out_file,
                transcript.clone().map(|t| (t, Stream::Stdout)),
            )
        }),
        child.stderr.take().map(|s| {
            (
                Box::new(s) as Box<dyn Read + Send>,
                err_file,
                transcript.clone().map(|t| (t, Stream::Stderr)),
            )
        }),
    ];
    let readers: Vec<_> = streams
        .into_iter()
        .flatten()
        .map(|(from, to, transcript)| {
            let budget = budget.clone();
            let done = done_tx.clone();
            std::thread::spawn(move || {
                pump(from, to, budget, transcript);
                let _ = done.send(());
            })
        })
        .collect();

    let exit_tx = tx.clone();
    std::thread::spawn(move || {
        let (status, max_rss_kb) = wait_agent(pid);
        let _ = exit_tx.send(ShimEvent::Exited { status, max_rss_kb });
    });
    std::thread::spawn(move || {
        for _ in signals.forever() {
            if tx.send(ShimEvent::Terminate).is_err() {
                break;
            }
        }
    });

    let grace = Duration::from_millis(spec.kill_grace_ms);
    let start = Instant::now();
    let wall_deadline = start + Duration::from_millis(spec.timeout_ms);
    let mut killed_for: Option<KillCause> = None;
    let mut kill_at: Option<Instant> = None;
    let stop =
        |cause: KillCause, killed_for: &mut Option<KillCause>, kill_at: &mut Option<Instant>| {
            if killed_for.is_none() {
                *killed_for = Some(cause);
                signal_group(pid, libc::SIGTERM);
                *kill_at = Some(Instant::now() + grace);
            }
        };
    let (status, max_rss_kb) = loop {
        let now = Instant::now();
        let idle_deadline = spec.idle_timeout_ms.map(|ms| {
            let quiet_for =
                (now_ms() - budget.last_output_ms.load(Ordering::Relaxed)).max(0) as u64;
            now + Duration::from_millis(ms.saturating_sub(quiet_for))
        });
        let mut wake = kill_at.unwrap_or(wall_deadline);
        if killed_for.is_none() {
            wake = wake.min(wall_deadline);
            if let Some(d) = idle_deadline {
                wake = wake.min(d);
            }
        }
        match rx.recv_timeout(wake.saturating_duration_since(now)) {
            Ok(ShimEvent::Exited { status, max_rss_kb }) => break (status, max_rss_kb),
            Ok(ShimEvent::Terminate) => stop(KillCause::Cancel, &mut killed_for, &mut kill_at),
            Ok(ShimEvent::Unrecoverable) => {
                stop(KillCause::Unrecoverable, &mut killed_for, &mut kill_at)
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break (std::process::ExitStatus::from_raw(0), 0);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let now = Instant::now();
                if let Some(at) = kill_at
                    && now >= at
                {
                    signal_group(pid, libc::SIGKILL);
                    kill_at = None;
                } else if killed_for.is_none() && now >= wall_deadline {
                    stop(
                        KillCause::Timeout {
                            after_ms: spec.timeout_ms,
                        },
                        &mut killed_for,
                        &mut kill_at,
                    );
                } else if killed_for.is_none()
                    && let (Some(ms), Some(d)) = (spec.idle_timeout_ms, idle_deadline)
                    && now >= d
                {
                    stop(
                        KillCause::Idle { after_ms: ms },
                        &mut killed_for,
                        &mut kill_at,
                    );
                }
            }
        }
    };
    // The agent is gone; nothing of its group may outlive the run.
    let leftover_grace = if killed_for.is_some() {
        Duration::ZERO
    } else {
        grace
    };
    empty_group(pid, leftover_grace);
    // The pipes close once every writer is gone; don't hang on a process that escaped
    // the group while holding them.
    let deadline = Instant::now() + Duration::from_secs(2);
    for _ in 0..readers.len() {
        if done_rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_err()
        {
            break;
        }
    }
    drop(readers);
    let truncated = budget.kept.lock().map(|k| k.1).unwrap_or(false);
    let summary = transcript
        .and_then(|t| t.lock().ok().map(|mut t| t.finish()))
        .or_else(|| Some(RunSummary::default()));
    ExitRecord {
        exit_code: status.code(),
        signal: status.signal(),
        killed_for,
        started_at,
        ended_at: now_ms(),
        max_rss_kb,
        output_bytes: budget.produced.load(Ordering::Relaxed),
        truncated,
        spawn_error: None,
        summary,
    }
}
