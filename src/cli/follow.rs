//! Following a task until it ends: its output files, and `WaitTask` on the daemon,
//! across daemon restarts (the task goes on without the daemon; so does the follower).
//!
//! Owns: copying what a run's output files gain, the exit code a finished task calls
//! for, and waiting that reconnects. Used by `run -f`, `wait` and `logs -f`.
//! Must never: treat a lost daemon as a failed task.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use backbeat_actors::agents::run_dir::RunDir;
use backbeat_actors::{TaskRecord, TaskStatus};
use serde_json::Value;

use crate::error::CliError;
use crate::mcp::client::DaemonClient;
use crate::mcp::tools::tasks::{CancelTaskArgs, WaitTaskArgs};

/// The exit code a finished task calls for (DESIGN section 10).
pub fn exit_code_of(task: &TaskRecord) -> i32 {
    match (task.status, task.exit_code) {
        (TaskStatus::Completed, _) => 0,
        (TaskStatus::Failed, Some(code)) if (1..=255).contains(&code) => code,
        _ => 1,
    }
}

/// Where a follower copies what it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Stdout,
    Stderr,
}

/// Follows one output file from where it was last read.
pub struct Follower {
    path: PathBuf,
    offset: u64,
    sink: Sink,
    /// Not yet decided between a run's readable transcript and its stdout: the run.
    undecided: Option<RunDir>,
}

impl Follower {
    pub fn new(path: PathBuf, sink: Sink) -> Follower {
        Follower {
            path,
            offset: 0,
            sink,
            undecided: None,
        }
    }

    /// A run's stdout as people read it: the readable transcript when the shim writes
    /// one (it creates that file before `stdout.log`), else `stdout.log`.
    pub fn readable(run: RunDir, sink: Sink) -> Follower {
        Follower {
            undecided: Some(RunDir {
                path: run.path.clone(),
            }),
            ..Follower::new(run.stdout(), sink)
        }
    }

    pub fn skip_to(&mut self, offset: u64) {
        self.offset = offset;
    }

    /// Copies what was appended since the last call.
    pub fn drain(&mut self) {
        if let Some(run) = &self.undecided {
            if !run.stdout().exists() {
                return; // the shim has not started writing yet
            }
            let readable = run.readable();
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
                match self.sink {
                    Sink::Stderr => super::write_stderr(&buf),
                    Sink::Stdout => super::write_stdout(&buf),
                }
            }
        }
    }
}

/// The offset where the last `lines` lines of a file start.
pub fn tail_offset(path: &Path, lines: usize) -> u64 {
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

fn wait_args(id: &str) -> WaitTaskArgs {
    WaitTaskArgs {
        task_id: id.to_string(),
        timeout_ms: Some(3_600_000),
    }
}

/// How following ended.
pub enum Followed {
    /// The task finished: the `WaitTask` answer, with its record in `task`.
    Finished(Value),
    /// Ctrl-C: the task was asked to cancel.
    Interrupted,
}

/// Waits until the task is finished, connecting again whenever the daemon goes away.
pub async fn wait_finished(client: &mut DaemonClient, id: &str) -> Result<Value, CliError> {
    match follow_files(client, id, None, None).await? {
        Followed::Finished(v) => Ok(v),
        Followed::Interrupted => Err(CliError::Refused("interrupted".into())),
    }
}

/// Copies what the followers' files gain until the task is finished; an interrupt
/// (Ctrl-C) on `interrupts` cancels the task. The caller creates that listener before
/// it submits, so a Ctrl-C that comes at any moment after is caught, never the default
/// death of the process with its task left running. A daemon that goes away meanwhile
/// is reconnected to (and started when none comes back); following goes on.
pub async fn follow_files(
    client: &mut DaemonClient,
    id: &str,
    mut files: Option<(Follower, Follower)>,
    mut interrupts: Option<&mut tokio::signal::unix::Signal>,
) -> Result<Followed, CliError> {
    let drain = |files: &mut Option<(Follower, Follower)>| {
        if let Some((out, err)) = files {
            out.drain();
            err.drain();
        }
    };
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let args = wait_args(id);
    loop {
        let outcome = {
            let wait = client.call(&args);
            tokio::pin!(wait);
            loop {
                let interrupted = async {
                    match interrupts.as_deref_mut() {
                        Some(signal) => signal.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    done = &mut wait => break Some(done),
                    _ = interrupted => break None,
                    _ = tick.tick() => drain(&mut files),
                }
            }
        };
        match outcome {
            None => {
                eprintln!("\nbeat: interrupted; cancelling {id}");
                let cancel = CancelTaskArgs {
                    task_id: id.to_string(),
                    reason: Some("interrupted (Ctrl-C)".into()),
                };
                if let Err(CliError::Disconnected(_)) = client.call(&cancel).await {
                    client.reconnect().await?;
                    client.call(&cancel).await?;
                }
                drain(&mut files);
                return Ok(Followed::Interrupted);
            }
            Some(Ok(v)) if v["finished"] == Value::Bool(true) => {
                drain(&mut files);
                return Ok(Followed::Finished(v));
            }
            Some(Ok(_)) => {} // an hour passed: wait again
            Some(Err(CliError::Disconnected(_))) => {
                drain(&mut files);
                client.reconnect().await?;
            }
            Some(Err(e)) => return Err(e),
        }
    }
}
