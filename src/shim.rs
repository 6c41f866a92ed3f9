//! `beat shim <run-dir>`: the parent of one agent process.
//!
//! Owns: the agent's process group (it is the group's leader's parent and a child
//! subreaper, so orphaned descendants come back to it), the agent's output files and
//! their size limit, the wall-clock and idle timeouts, and the run's exit record (see
//! `RunDir::record_exit`).
//! A shim forked by the spawner also owns its end of the run's channel (see
//! `backbeat_actors::agents::channel`): it hands its result to the daemon there, and
//! writes to the run folder only what the daemon could otherwise lose.
//! Must never: outlive its agent's group, leave a process of that group behind, or leave
//! a partial exit record (one `setxattr`, or a temporary file renamed). It runs in its
//! own session, so it survives the daemon. The daemon cancels a forked shim's run on its
//! channel (`TERMINATE`) and an exec'd or adopted shim with SIGTERM.
//! A forked shim may supervise another run once the daemon has journaled this one's
//! result (`ShimEnd::Free`), unless a process of this run is still its child.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use backbeat_actors::agents::agent_spawn::spawn_in_own_group;
use backbeat_actors::agents::channel::{self, FromDaemon, ShimReport};
use backbeat_actors::agents::checkpoint;
use backbeat_actors::agents::parse::{
    AgentEvent, OutputFormat, RunSummary, StreamParser, render, retry_reason, stderr_retry,
};
use backbeat_actors::agents::run_dir::{
    ExitRecord, KillCause, RunDir, RunSpec, ShimIdentity, process_start_time, truncation_marker,
    write_atomically,
};
use backbeat_actors::agents::spawner::{ShimChannel, ShimEnd};
use backbeat_actors::model::now_ms;

/// Output accounting for both streams: one budget for the two.
struct OutputBudget {
    limit: u64,
    kept: u64,
    truncated: bool,
    produced: u64,
    last_output: Instant,
}

impl OutputBudget {
    fn write(&mut self, file: &mut File, chunk: &[u8]) {
        self.produced += chunk.len() as u64;
        self.last_output = Instant::now();
        if self.truncated {
            return; // past the limit: drain and discard
        }
        let room = self.limit.saturating_sub(self.kept) as usize;
        if chunk.len() <= room {
            let _ = file.write_all(chunk);
            self.kept += chunk.len() as u64;
        } else {
            let mut cut = room;
            while cut > 0 && (chunk[cut] & 0xC0) == 0x80 {
                cut -= 1; // never split a UTF-8 character
            }
            let _ = file.write_all(&chunk[..cut]);
            let _ = file.write_all(truncation_marker(self.limit).as_bytes());
            (self.kept, self.truncated) = (self.limit, true);
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
    /// Set once when the agent retries what retrying cannot fix: the shim stops it.
    unrecoverable: bool,
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
            if self.parser.summary.unrecoverable.is_some() && !self.parser.summary.result_seen {
                self.unrecoverable = true;
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

/// A forked shim's side of the run's channel.
struct Link {
    channel: OwnedFd,
    /// The handover lock, held until the result is journaled or our identity is
    /// recorded.
    handover: Option<OwnedFd>,
    /// Our identity is on the run folder.
    identified: bool,
    /// The daemon said the result is journaled.
    finished: bool,
    /// The daemon's end is closed.
    gone: bool,
    /// The daemon asked to stop the agent (a user's cancel), not yet acted on.
    cancel: bool,
}

impl Link {
    /// The channel's descriptor for `poll`, while there is something to hear on it.
    fn poll_fd(&self) -> libc::c_int {
        if self.gone {
            -1
        } else {
            self.channel.as_raw_fd()
        }
    }

    /// Reads what the daemon sent, without blocking.
    fn hear(&mut self, run: &RunDir) {
        while !self.gone {
            match channel::read_from_daemon(self.channel.as_raw_fd()) {
                FromDaemon::Finished => {
                    self.finished = true;
                    self.handover = None;
                }
                FromDaemon::Terminate => self.cancel = true,
                FromDaemon::Gone => self.daemon_gone(run),
                FromDaemon::Nothing => return,
            }
        }
    }

    /// The daemon is gone before it journaled the result. If the crash left the task
    /// `queued`, the next daemon can know of this run only from the folder: record who
    /// we are there before letting the handover lock go (its recovery waits for that
    /// lock).
    fn daemon_gone(&mut self, run: &RunDir) {
        self.gone = true;
        if !self.finished {
            self.identify(run);
        }
        self.handover = None;
    }

    /// Records our identity on the run folder, once.
    fn identify(&mut self, run: &RunDir) {
        if std::mem::replace(&mut self.identified, true) {
            return;
        }
        let me = std::process::id();
        let identity = ShimIdentity {
            pid: me,
            start_time: process_start_time(me).unwrap_or(0),
        };
        if let Err(e) = run.ensure().and_then(|()| run.record_shim(&identity)) {
            eprintln!(
                "beat shim: cannot record its identity in {}: {e}",
                run.path.display()
            );
        }
    }

    /// Hands the result to the daemon and waits until it is journaled. `false` if the
    /// daemon could not take it or went away first: then the folder must get it.
    fn hand_over(&mut self, run: &RunDir, report: &ShimReport) -> bool {
        self.hear(run);
        if self.gone {
            return false;
        }
        let sent = serde_json::to_vec(report)
            .is_ok_and(|bytes| channel::send_packet(self.channel.as_raw_fd(), &bytes));
        if !sent {
            // Too large for one packet, or the daemon just went: the folder takes it.
            self.daemon_gone(run);
            return false;
        }
        while !self.finished && !self.gone {
            let mut fd = libc::pollfd {
                fd: self.channel.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll(2) on one descriptor we own; EINTR just polls again.
            unsafe { libc::poll(&mut fd, 1, -1) };
            self.hear(run);
        }
        self.finished
    }
}

fn signal_group(pgid: i32, signal: libc::c_int) -> bool {
    // SAFETY: kill(2) on a process group we created.
    unsafe { libc::kill(-pgid, signal) == 0 }
}

/// Reaps every finished child (orphans come to us as subreaper); the agent's status and
/// peak RSS if it was among them.
fn reap_children(agent: i32) -> Option<(std::process::ExitStatus, u64)> {
    let mut agent_status = None;
    loop {
        let mut status = 0;
        // SAFETY: non-blocking wait4 on any child, with valid out-pointers.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::wait4(-1, &mut status, libc::WNOHANG, &mut usage) };
        if r <= 0 {
            if r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return agent_status;
        }
        if r == agent {
            agent_status = Some((
                std::process::ExitStatus::from_raw(status),
                usage.ru_maxrss.max(0) as u64,
            ));
        }
    }
}

/// One of the agent's output streams, read by the shim's poll loop.
struct Pipe {
    from: Option<OwnedFd>,
    /// Created on the first output of a plain agent (one file fewer for a silent
    /// stream); at once for a structured one, whose readers look for it.
    to: Option<File>,
    path: PathBuf,
    stream: Stream,
}

/// Which of the agent's streams a pipe carries.
#[derive(Clone, Copy, PartialEq)]
enum Stream {
    Stdout,
    Stderr,
}

/// Everything the shim waits on, in one thread: the agent's two pipes and the signals
/// (TERM and INT from the daemon, CHLD from the agent and orphans) through a signalfd.
struct Supervisor {
    pipes: [Pipe; 2],
    signals: OwnedFd,
    budget: OutputBudget,
    transcript: Option<Transcript>,
    agent: i32,
    exited: Option<(std::process::ExitStatus, u64)>,
    terminate_requested: bool,
    link: Option<Link>,
    run: RunDir,
    read_buffer: Vec<u8>,
}

/// The most read from a pipe at once.
const READ_CHUNK: usize = 64 * 1024;

impl Supervisor {
    fn pipes_open(&self) -> bool {
        self.pipes.iter().any(|p| p.from.is_some())
    }

    /// Waits up to `timeout` for output or a signal, and handles what came.
    fn wait(&mut self, timeout: Duration) {
        let mut fds = [
            libc::pollfd {
                fd: self.signals.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            self.pollfd(0),
            self.pollfd(1),
            libc::pollfd {
                fd: self.link.as_ref().map_or(-1, Link::poll_fd),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // Round up: a deadline 0.4 ms away must not turn into a busy loop.
        let ms = if ms == 0 && !timeout.is_zero() { 1 } else { ms };
        // SAFETY: poll(2) on descriptors we own; a negative fd is ignored.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if ready <= 0 {
            return; // timeout, or EINTR
        }
        if fds[0].revents != 0 {
            self.read_signals();
        }
        for (i, fd) in fds[1..3].iter().enumerate() {
            if fd.revents != 0 {
                self.read_pipe(i);
            }
        }
        if fds[3].revents != 0
            && let Some(link) = &mut self.link
        {
            link.hear(&self.run);
            if std::mem::take(&mut link.cancel) {
                self.terminate_requested = true;
            }
        }
    }

    fn pollfd(&self, i: usize) -> libc::pollfd {
        libc::pollfd {
            fd: self.pipes[i].from.as_ref().map_or(-1, |f| f.as_raw_fd()),
            events: libc::POLLIN,
            revents: 0,
        }
    }

    fn read_signals(&mut self) {
        // SAFETY: reading whole signalfd_siginfo records into one we own.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        let mut child = false;
        loop {
            let n = unsafe {
                libc::read(
                    self.signals.as_raw_fd(),
                    (&mut info as *mut libc::signalfd_siginfo).cast(),
                    size,
                )
            };
            if n != size as isize {
                break; // EAGAIN: nothing more pending
            }
            match info.ssi_signo as i32 {
                libc::SIGCHLD => child = true,
                _ => self.terminate_requested = true,
            }
        }
        if child && let Some(exited) = reap_children(self.agent) {
            self.exited.get_or_insert(exited);
        }
    }

    fn read_pipe(&mut self, i: usize) {
        let mut buf = std::mem::take(&mut self.read_buffer);
        self.read_pipe_into(i, &mut buf);
        self.read_buffer = buf;
    }

    /// Reads what is there into `buf`, allocated once and never zeroed: a fresh 64 KiB
    /// on the stack for every read cost a trivial run 16 page faults.
    fn read_pipe_into(&mut self, i: usize, buf: &mut Vec<u8>) {
        if buf.capacity() == 0 {
            buf.reserve_exact(READ_CHUNK);
        }
        buf.clear();
        let pipe = &mut self.pipes[i];
        let Some(from) = &pipe.from else { return };
        // SAFETY: read(2) into the buffer's spare capacity, whose length it then covers.
        let n = unsafe { libc::read(from.as_raw_fd(), buf.as_mut_ptr().cast(), buf.capacity()) };
        if n > 0 {
            // SAFETY: read(2) initialized the first `n` bytes.
            unsafe { buf.set_len(n as usize) };
        }
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if matches!(
                e.kind(),
                std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
            ) {
                return;
            }
        }
        if n <= 0 {
            pipe.from = None; // end of file: every writer is gone
            return;
        }
        let chunk = &buf[..];
        if pipe.to.is_none() {
            // A forked shim's run folder exists only once there is something to keep.
            let created = File::create(&pipe.path).or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => {
                    self.run.ensure()?;
                    File::create(&pipe.path)
                }
                _ => Err(e),
            });
            match created {
                Ok(f) => pipe.to = Some(f),
                Err(e) => {
                    // Written to the daemon's log (our stderr); the output is drained.
                    eprintln!("beat shim: cannot create {}: {e}", pipe.path.display());
                }
            }
        }
        if let Some(to) = &mut pipe.to {
            self.budget.write(to, chunk);
        } else {
            self.budget.produced += chunk.len() as u64;
            self.budget.last_output = Instant::now();
        }
        if let Some(t) = &mut self.transcript {
            match pipe.stream {
                Stream::Stdout => t.feed(chunk),
                Stream::Stderr => t.feed_stderr(chunk),
            }
        }
    }

    /// Stops whatever is left of the agent's group: TERM, up to `grace` for it to go,
    /// then KILL; its output is drained meanwhile.
    fn empty_group(&mut self, grace: Duration) {
        let pgid = self.agent;
        let _ = reap_children(pgid);
        if !signal_group(pgid, 0) {
            return;
        }
        signal_group(pgid, libc::SIGTERM);
        let mut deadline = Instant::now() + grace;
        let mut killed = false;
        loop {
            let _ = reap_children(pgid);
            if !signal_group(pgid, 0) {
                return;
            }
            let now = Instant::now();
            if now >= deadline {
                if killed {
                    return;
                }
                signal_group(pgid, libc::SIGKILL);
                killed = true;
                deadline = now + Duration::from_secs(5);
            }
            self.wait(Duration::from_millis(5).min(deadline.saturating_duration_since(now)));
        }
    }
}

/// Runs the shim exec'd as `beat shim <run-dir>`, which reads its spec from the run
/// folder; the return value is the shim's own exit code.
pub fn run(run_path: &Path) -> i32 {
    let run = RunDir {
        path: run_path.to_path_buf(),
    };
    match run.read_spec() {
        Ok(spec) => supervise_run(run, spec, None).code(),
        Err(e) => {
            eprintln!("beat shim: cannot read {}: {e}", run.spec().display());
            2
        }
    }
}

/// Runs the shim forked by the spawner, which hands it the spec (no `spec.json`: one
/// file fewer to create per run). `ShimEnd::Free` once the daemon has journaled the
/// result and nothing of the run is left: the process may then supervise another run.
pub fn run_forked(run_path: &Path, spec: &[u8], channel: ShimChannel) -> ShimEnd {
    let run = RunDir {
        path: run_path.to_path_buf(),
    };
    let spec = match serde_json::from_slice::<RunSpec>(spec) {
        Ok(spec) => spec,
        Err(e) => {
            eprintln!("beat shim: unreadable spec for {}: {e}", run.path.display());
            return ShimEnd::Exit(2);
        }
    };
    // Taken before anything else, so that a recovering daemon waits for us (see
    // `channel`).
    let handover = channel::hold_handover(&channel.handover_lock);
    let mut link = Link {
        channel: channel.channel,
        handover,
        identified: false,
        finished: false,
        gone: false,
        cancel: false,
    };
    link.hear(&run);
    if link.gone {
        // The daemon died before this shim ran anything: the next daemon runs a task
        // the crash left queued (a run it journaled as started in that instant ends as
        // lost, never twice). Nothing to leave.
        return ShimEnd::Exit(0);
    }
    if link.handover.is_none() {
        // Without the lock, recovery would not wait for us: say who we are up front.
        link.identify(&run);
    }
    supervise_run(run, spec, Some(link))
}

fn supervise_run(run: RunDir, spec: RunSpec, mut link: Option<Link>) -> ShimEnd {
    // SAFETY: setting signal dispositions and prctl at start, before any thread exists.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
    if link.is_none() {
        // An exec'd shim has no channel: its identity goes on the folder at once.
        let me = std::process::id();
        let identity = ShimIdentity {
            pid: me,
            start_time: process_start_time(me).unwrap_or(0),
        };
        if let Err(e) = run.record_shim(&identity) {
            eprintln!(
                "beat shim: cannot record its identity in {}: {e}",
                run.path.display()
            );
            return ShimEnd::Exit(2);
        }
    }
    // TERM and INT are blocked already (the spawner or the daemon started us so), and
    // stay blocked: they are read from a signalfd, with CHLD, in the one poll loop. A
    // cancel that arrived before this point is pending, and read first.
    let signals = match signal_fd(&[libc::SIGTERM, libc::SIGINT, libc::SIGCHLD]) {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("beat shim: cannot handle signals: {e}");
            return ShimEnd::Exit(2);
        }
    };
    let (record, mut link) = supervise(&run, &spec, signals, link.take());
    if let Some(link) = &mut link {
        let report = ShimReport {
            // A run that printed nothing has no output file to read.
            tail: if record.output_bytes == 0 {
                checkpoint::observe_git(&spec.cwd)
            } else {
                checkpoint::observe(&run, &spec.cwd)
            },
            exit: record.clone(),
        };
        if link.hand_over(&run, &report) {
            // Journaled by the daemon: nothing to write. A process left behind (one that
            // escaped the agent's group, and came to us as subreaper) keeps this shim
            // from another run, whose agent it could be mistaken for.
            return if has_children() {
                ShimEnd::Exit(0)
            } else {
                ShimEnd::Free
            };
        }
    }
    // Not fsynced (two fsyncs cost about 14 ms per run on a slow disk, on the path from
    // one task's end to the next one's start): see `RunDir::record_exit`.
    if let Err(e) = run.ensure().and_then(|()| run.record_exit(&record)) {
        eprintln!(
            "beat shim: cannot record the run's result in {}: {e}",
            run.path.display()
        );
        return ShimEnd::Exit(2);
    }
    ShimEnd::Exit(0)
}

/// Whether a child of ours is still alive (zombies are reaped on the way).
fn has_children() -> bool {
    loop {
        // SAFETY: a non-blocking waitpid on any child, its status not kept.
        let r = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
        let interrupted =
            r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR);
        if r > 0 || interrupted {
            continue; // a zombie, reaped
        }
        return r == 0; // else ECHILD: none
    }
}

fn spawn_error(started_at: i64, message: String) -> ExitRecord {
    ExitRecord {
        started_at,
        ended_at: now_ms(),
        spawn_error: Some(message),
        ..ExitRecord::default()
    }
}

/// Blocks `signals` in this (only) thread and opens a signalfd that reads them. The
/// agent does not inherit the mask: its spawn resets it.
fn signal_fd(signals: &[libc::c_int]) -> std::io::Result<OwnedFd> {
    // SAFETY: changing the mask of the shim's only thread, then signalfd(2) on it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &sig in signals {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

fn supervise(
    run: &RunDir,
    spec: &RunSpec,
    signals: OwnedFd,
    link: Option<Link>,
) -> (ExitRecord, Option<Link>) {
    let started_at = now_ms();
    // A structured agent's files are created at once, output.txt before stdout.log:
    // whoever sees stdout.log can tell from output.txt whether the agent has a readable
    // transcript. A plain agent's output files are created when output comes.
    let structured = spec.output_format.is_structured();
    if structured && let Err(e) = run.ensure() {
        return (
            spawn_error(started_at, format!("cannot create the run folder: {e}")),
            link,
        );
    }
    let transcript = if structured {
        match File::create(run.readable()) {
            Ok(readable) => Some(Transcript {
                parser: StreamParser::new(spec.output_format),
                partial: Vec::new(),
                err_partial: Vec::new(),
                readable,
                written: 0,
                limit: spec.max_output_bytes,
                mid_line: false,
                progress: run.progress(),
                unrecoverable: false,
            }),
            Err(e) => {
                eprintln!("beat shim: cannot create {}: {e}", run.readable().display());
                None
            }
        }
    } else {
        None
    };
    let (out_file, err_file) = if structured {
        match (File::create(run.stdout()), File::create(run.stderr())) {
            (Ok(o), Ok(e)) => (Some(o), Some(e)),
            (Err(e), _) | (_, Err(e)) => {
                return (
                    spawn_error(started_at, format!("cannot create the output files: {e}")),
                    link,
                );
            }
        }
    } else {
        (None, None)
    };
    let stdin = if spec.prompt_on_stdin {
        match File::open(run.prompt()) {
            Ok(f) => Some(OwnedFd::from(f)),
            Err(e) => {
                let error = spawn_error(started_at, format!("cannot open the prompt file: {e}"));
                return (error, link);
            }
        }
    } else {
        None // /dev/null
    };
    let Some((program, args)) = spec.argv.split_first() else {
        return (
            spawn_error(started_at, "the agent's command line is empty".into()),
            link,
        );
    };
    let agent = match spawn_in_own_group(program.as_ref(), args, &spec.cwd, stdin) {
        Ok(agent) => agent,
        Err(e) => return (spawn_error(started_at, format!("{program}: {e}")), link),
    };
    let pid = agent.pid;
    let mut link = link;
    // A cancel heard before the agent started.
    let cancelled = link.as_mut().is_some_and(|l| std::mem::take(&mut l.cancel));
    let mut sup = Supervisor {
        pipes: [
            Pipe {
                from: Some(agent.stdout),
                to: out_file,
                path: run.stdout(),
                stream: Stream::Stdout,
            },
            Pipe {
                from: Some(agent.stderr),
                to: err_file,
                path: run.stderr(),
                stream: Stream::Stderr,
            },
        ],
        signals,
        budget: OutputBudget {
            limit: spec.max_output_bytes,
            kept: 0,
            truncated: false,
            produced: 0,
            last_output: Instant::now(),
        },
        transcript,
        agent: pid,
        exited: None,
        terminate_requested: cancelled,
        link,
        run: run.clone(),
        read_buffer: Vec::new(),
    };
    // The agent is reaped by `reap_children`, with its rusage.

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
    // An agent that exited before the signalfd could tell: its CHLD is pending, but
    // look once anyway.
    sup.exited = reap_children(pid);
    let (status, max_rss_kb) = loop {
        if let Some(exited) = sup.exited {
            break exited;
        }
        if std::mem::take(&mut sup.terminate_requested) {
            stop(KillCause::Cancel, &mut killed_for, &mut kill_at);
        }
        if let Some(t) = &mut sup.transcript
            && std::mem::take(&mut t.unrecoverable)
        {
            stop(KillCause::Unrecoverable, &mut killed_for, &mut kill_at);
        }
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
            && let Some(ms) = spec.idle_timeout_ms
            && now >= sup.budget.last_output + Duration::from_millis(ms)
        {
            stop(
                KillCause::Idle { after_ms: ms },
                &mut killed_for,
                &mut kill_at,
            );
        }
        let wake = match (&killed_for, kill_at) {
            (None, _) => match spec.idle_timeout_ms {
                Some(ms) => wall_deadline.min(sup.budget.last_output + Duration::from_millis(ms)),
                None => wall_deadline,
            },
            (Some(_), Some(at)) => at,
            // KILL is sent: only the agent's exit (CHLD) is left to wait for. Not a
            // deadline in the past, which would spin on an agent stuck in the kernel.
            (Some(_), None) => now + Duration::from_secs(1),
        };
        sup.wait(wake.saturating_duration_since(now));
    };
    // The agent is gone; nothing of its group may outlive the run.
    let leftover_grace = if killed_for.is_some() {
        Duration::ZERO
    } else {
        grace
    };
    sup.empty_group(leftover_grace);
    // The pipes close once every writer is gone; don't hang on a process that escaped
    // the group while holding them.
    let deadline = Instant::now() + Duration::from_secs(2);
    while sup.pipes_open() {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        sup.wait(deadline - now);
    }
    let summary = sup
        .transcript
        .as_mut()
        .map(|t| t.finish())
        .or_else(|| Some(RunSummary::default()));
    let record = ExitRecord {
        exit_code: status.code(),
        signal: status.signal(),
        killed_for,
        started_at,
        ended_at: now_ms(),
        max_rss_kb,
        output_bytes: sup.budget.produced,
        truncated: sup.budget.truncated,
        spawn_error: None,
        summary,
    };
    (record, sup.link)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use backbeat_actors::agents::channel::{FINISHED, send_packet};
    use backbeat_actors::agents::checkpoint::RunTail;

    use super::*;

    /// A shim's link and the daemon's end of its channel, for a run folder under `dir`
    /// (not created).
    fn link(dir: &Path, handover: Option<OwnedFd>) -> (Link, OwnedFd, RunDir) {
        let (daemon, shim) = channel::seqpacket_pair().unwrap();
        let link = Link {
            channel: shim,
            handover,
            identified: false,
            finished: false,
            gone: false,
            cancel: false,
        };
        (link, daemon, RunDir::new(dir, "task-1"))
    }

    fn report() -> ShimReport {
        ShimReport {
            exit: ExitRecord {
                exit_code: Some(0),
                started_at: 1,
                ended_at: 2,
                max_rss_kb: 3,
                ..ExitRecord::default()
            },
            tail: RunTail::default(),
        }
    }

    #[test]
    fn a_result_the_daemon_journaled_leaves_no_run_folder() {
        let dir = tempfile::tempdir().unwrap();
        let (mut link, daemon, run) = link(dir.path(), None);
        assert!(send_packet(daemon.as_raw_fd(), &[FINISHED]));
        assert!(link.hand_over(&run, &report()));
        assert!(!run.path.exists(), "nothing was written");
        let mut buf = vec![0u8; channel::MAX_REPORT];
        match channel::receive_report(daemon.as_raw_fd(), &mut buf) {
            channel::Received::Report(r) => assert_eq!(*r, report()),
            _ => panic!("the daemon got no report"),
        }
    }

    #[test]
    fn a_cancel_on_the_channel_is_heard_and_ends_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let (mut link, daemon, run) = link(dir.path(), None);
        assert!(send_packet(daemon.as_raw_fd(), &[channel::TERMINATE]));
        link.hear(&run);
        assert!(link.cancel, "the cancel was heard");
        assert!(
            !link.finished && !link.gone,
            "the run goes on until it is stopped"
        );
    }

    #[test]
    fn a_daemon_gone_before_journaling_the_result_finds_the_shims_identity() {
        let dir = tempfile::tempdir().unwrap();
        let (mut link, daemon, run) = link(dir.path(), None);
        drop(daemon);
        assert!(!link.hand_over(&run, &report()));
        let me = std::process::id();
        assert_eq!(run.read_shim().map(|s| s.pid), Some(me));
    }

    #[test]
    fn the_handover_lock_is_held_until_the_result_is_journaled() {
        let dir = tempfile::tempdir().unwrap();
        let lock = channel::handover_lock(dir.path());
        let held = channel::hold_handover(&lock).unwrap();
        let (mut link, daemon, run) = link(dir.path(), Some(held));
        link.hear(&run);
        assert!(!channel::wait_for_handover(&lock, Duration::from_millis(20)).unwrap());
        assert!(send_packet(daemon.as_raw_fd(), &[FINISHED]));
        link.hear(&run);
        assert!(channel::wait_for_handover(&lock, Duration::from_secs(10)).unwrap());
        assert_eq!(run.read_shim(), None, "no identity was needed");
    }

    #[test]
    fn the_handover_lock_is_let_go_once_the_identity_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let lock = channel::handover_lock(dir.path());
        let held = channel::hold_handover(&lock).unwrap();
        let (mut link, daemon, run) = link(dir.path(), Some(held));
        drop(daemon);
        link.hear(&run);
        assert!(run.read_shim().is_some());
        assert!(channel::wait_for_handover(&lock, Duration::from_secs(10)).unwrap());
    }
}
