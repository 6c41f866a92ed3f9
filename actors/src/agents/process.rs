//! `AgentProcess`: follows one run of an agent through its shim.
//!
//! Started and owned by the `AgentPool`; reports the run's end to its task and tells
//! the pool when it stops. Reads of the run folder and of `/proc` run on the blocking
//! pool, never on the actix thread.
//!
//! A shim the spawner forked reports over the run's channel (see `channel`): its result
//! comes in one packet, and the task acknowledges it once journaled. An exec'd shim is
//! awaited as a child, and a shim adopted after a restart is checked by PID and start
//! time until its exit record appears: for those (and a channel that closes without a
//! report) the result is read from the run folder. Cancelling tells the shim (on the
//! run's channel; SIGTERM to an exec'd or adopted shim, which supervises no other run),
//! and it stops the agent's whole process group (TERM, grace, KILL) and records why.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use actix::prelude::*;
use tokio::io::unix::AsyncFd;

use super::channel::{self, ExitAck, Received};
use super::checkpoint::{self, RunTail};
use super::launch::ShimExit;
use super::run_dir::{ExitRecord, RunDir, is_same_process_alive};
use crate::governor::Release;
use crate::model::reasons;

/// How the run ended, as far as the files tell.
#[derive(Debug, Clone)]
pub enum RunResult {
    Exited(Box<ExitRecord>),
    /// The shim is gone and left no result.
    Lost(String),
}

/// The run is over: how it ended, and what it left for the task's checkpoint (read in
/// the same look at the run, so that the task needs no second trip off the actix
/// thread).
#[derive(Message)]
#[rtype(result = "()")]
pub struct AgentExited {
    pub result: RunResult,
    pub tail: RunTail,
    /// Acknowledge once the result is journaled (a run reported over its channel);
    /// dropped unacknowledged, the shim writes the result to the run folder.
    pub ack: Option<ExitAck>,
}

/// What the agent is doing now, from the shim's `progress.txt` (its retries).
#[derive(Message)]
#[rtype(result = "()")]
pub struct AgentProgress(pub String);

/// Ask the shim to stop the agent (a user's cancel).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Terminate;

/// Told to the pool when a follower stops, so that it drops it from its registry.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RunOver {
    pub task_id: String,
    pub process: Addr<AgentProcess>,
}

/// The run a follower follows: whose it is, where its folder is, and its shim.
pub struct FollowedRun {
    pub task_id: String,
    pub run: RunDir,
    /// The task's working directory, whose git state goes into the checkpoint.
    pub working_directory: PathBuf,
    pub shim_pid: u32,
    pub shim_start_time: u64,
}

pub struct AgentProcess {
    followed: FollowedRun,
    exit: Option<ShimExit>,
    task: Recipient<AgentExited>,
    pool: Recipient<RunOver>,
    /// A look at the run folder is under way (off the actix thread).
    checking: bool,
    reported: bool,
    progress: Option<Recipient<AgentProgress>>,
    last_progress: Option<String>,
    /// The daemon's end of the run's channel, while the run has not reported.
    channel: Option<Rc<AsyncFd<OwnedFd>>>,
    /// Where the run's slot is freed when its report comes (see `with_release`).
    release: Option<Recipient<Release>>,
}

/// How often an adopted shim (not our child) is checked.
const ADOPTED_POLL: Duration = Duration::from_millis(100);
/// How often the shim's `progress.txt` is read.
const PROGRESS_POLL: Duration = Duration::from_millis(250);

impl AgentProcess {
    /// Follows a shim spawned by this daemon.
    pub fn spawned(
        followed: FollowedRun,
        exit: ShimExit,
        task: Recipient<AgentExited>,
        pool: Recipient<RunOver>,
    ) -> AgentProcess {
        AgentProcess {
            exit: Some(exit),
            ..AgentProcess::adopted(followed, task, pool)
        }
    }

    /// Follows a shim left running by an earlier daemon.
    pub fn adopted(
        followed: FollowedRun,
        task: Recipient<AgentExited>,
        pool: Recipient<RunOver>,
    ) -> AgentProcess {
        AgentProcess {
            followed,
            exit: None,
            task,
            pool,
            checking: false,
            reported: false,
            progress: None,
            last_progress: None,
            channel: None,
            release: None,
        }
    }

    /// Also frees the run's slot with `to` the moment the agent's exit is reported over
    /// the channel: the task handles the exit only after its start is journaled, and a
    /// slot held until then would put a commit on the path from one run to the next.
    pub fn with_release(mut self, to: Recipient<Release>) -> AgentProcess {
        self.release = Some(to);
        self
    }

    /// Also tells `to` what the agent is doing while it runs (its retries).
    pub fn with_progress(mut self, to: Recipient<AgentProgress>) -> AgentProcess {
        self.progress = Some(to);
        self
    }

    /// Reads `progress.txt` off the actix thread, then tells the task if it changed.
    fn poll_progress(&mut self, ctx: &mut Context<Self>) {
        let run = self.followed.run.clone();
        let read = tokio::task::spawn_blocking(move || run.read_progress());
        ctx.spawn(read.into_actor(self).map(|now, act, _| {
            let now = now.ok().flatten();
            if let Some(to) = &act.progress
                && now.is_some()
                && now != act.last_progress
            {
                act.last_progress = now.clone();
                to.do_send(AgentProgress(now.unwrap_or_default()));
            }
        }));
    }

    /// Looks at the run (liveness, the exit record) on the blocking pool; reports the result
    /// and stops once there is one.
    fn check(&mut self, ctx: &mut Context<Self>, shim_exited: bool) {
        if self.checking || self.reported {
            return;
        }
        self.checking = true;
        let run = self.followed.run.clone();
        let dir = self.followed.working_directory.clone();
        let (pid, start) = (self.followed.shim_pid, self.followed.shim_start_time);
        let read = tokio::task::spawn_blocking(move || {
            let result = read_result(&run, pid, start, shim_exited)?;
            Some(AgentExited {
                result,
                tail: checkpoint::observe(&run, &dir),
                ack: None,
            })
        });
        ctx.spawn(read.into_actor(self).map(|joined, act, ctx| {
            act.checking = false;
            let exited = match joined {
                Ok(Some(exited)) => exited,
                Ok(None) => return, // still running
                Err(e) => AgentExited {
                    result: RunResult::Lost(reasons::exit_unreadable(&e.to_string())),
                    tail: RunTail::default(),
                    ack: None,
                },
            };
            act.reported = true;
            act.task.do_send(exited);
            ctx.stop();
        }));
    }
}

impl AgentProcess {
    /// Waits for the run's report on its channel.
    fn follow_channel(&mut self, channel: OwnedFd, ctx: &mut Context<Self>) {
        // SAFETY: the channel is ours alone; it is deregistered when the AsyncFd goes.
        let channel = match unsafe { AsyncFd::register(channel) } {
            Ok(channel) => Rc::new(channel),
            Err(e) => {
                // The channel is closed with the error: the shim writes the folder.
                tracing::warn!(task = %self.followed.task_id, error = %e, "cannot watch the run's channel; polling its folder");
                return self.poll_folder(ctx);
            }
        };
        self.channel = Some(channel.clone());
        ctx.spawn(
            async move { next_report(&channel).await }
                .into_actor(self)
                .map(|received, act, ctx| act.received(received, ctx)),
        );
    }

    fn poll_folder(&mut self, ctx: &mut Context<Self>) {
        self.check(ctx, false);
        ctx.run_interval(ADOPTED_POLL, |act, ctx| act.check(ctx, false));
    }

    fn received(&mut self, received: Received, ctx: &mut Context<Self>) {
        let channel = self.channel.take();
        match received {
            Received::Report(report) => {
                // The reading future is done, so this is the only reference left.
                let ack = channel
                    .and_then(|c| Rc::try_unwrap(c).ok())
                    .map(|c| ExitAck::new(c.into_inner()));
                self.reported = true;
                if let Some(release) = &self.release {
                    release.do_send(Release {
                        task_id: self.followed.task_id.clone(),
                        max_rss_kb: Some(report.exit.max_rss_kb),
                    });
                }
                self.task.do_send(AgentExited {
                    result: RunResult::Exited(Box::new(report.exit)),
                    tail: report.tail,
                    ack,
                });
                ctx.stop();
            }
            // The shim exited without a report: it wrote the folder, or it died.
            Received::Closed | Received::WouldBlock => self.check(ctx, true),
            Received::Unreadable(why) => {
                // Closing our end makes the shim write the folder; read it from there.
                tracing::warn!(task = %self.followed.task_id, %why, "unreadable report; reading the run folder");
                drop(channel);
                self.poll_folder(ctx);
            }
        }
    }
}

thread_local! {
    /// One buffer for every report read on this thread (the actix thread reads them
    /// all, one at a time): a zeroed 64 KiB per run was 5 % of that thread's time.
    static REPORT_BUFFER: std::cell::RefCell<Vec<u8>> =
        std::cell::RefCell::new(vec![0u8; channel::MAX_REPORT]);
}

/// The next report on a run's channel (or its end).
async fn next_report(channel: &AsyncFd<OwnedFd>) -> Received {
    loop {
        let Ok(mut ready) = channel.readable().await else {
            return Received::Closed;
        };
        let fd = channel.get_ref().as_raw_fd();
        match REPORT_BUFFER.with_borrow_mut(|buf| channel::receive_report(fd, buf)) {
            Received::WouldBlock => ready.clear_ready(),
            other => return other,
        }
    }
}

/// The run's result if it is over, `None` while the shim still runs. Blocking.
fn read_result(
    run: &RunDir,
    shim_pid: u32,
    start_time: u64,
    shim_exited: bool,
) -> Option<RunResult> {
    // Liveness first, then the record: the shim writes it before it exits, so a
    // dead shim seen before the read means the read is final.
    let alive = !shim_exited && is_same_process_alive(shim_pid, start_time);
    Some(match run.read_exit() {
        Ok(Some(exit)) => RunResult::Exited(Box::new(exit)),
        Ok(None) if alive => return None,
        Ok(None) => RunResult::Lost(reasons::shim_lost(shim_pid)),
        Err(e) if alive => {
            tracing::debug!(error = %e, "exit record not readable yet");
            return None;
        }
        Err(e) => RunResult::Lost(reasons::exit_unreadable(&e.to_string())),
    })
}

impl Actor for AgentProcess {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.progress.is_some() {
            ctx.run_interval(PROGRESS_POLL, |act, ctx| act.poll_progress(ctx));
        }
        match self.exit.take() {
            Some(ShimExit::Child(mut child)) => {
                ctx.spawn(
                    async move { child.wait().await }
                        .into_actor(self)
                        .map(|_, act, ctx| act.check(ctx, true)),
                );
            }
            Some(ShimExit::Channel(channel)) => self.follow_channel(channel, ctx),
            None => self.poll_folder(ctx),
        }
    }

    fn stopped(&mut self, ctx: &mut Context<Self>) {
        self.pool.do_send(RunOver {
            task_id: self.followed.task_id.clone(),
            process: ctx.address(),
        });
    }
}

impl Handler<Terminate> for AgentProcess {
    type Result = ();

    fn handle(&mut self, _msg: Terminate, _ctx: &mut Context<Self>) {
        if let Some(channel) = &self.channel {
            // A forked shim is told on the run's channel, never by PID: once this run is
            // journaled, the same process may supervise another, which a signal still
            // on its way would stop. A closed channel means the report is coming.
            channel::send_packet(channel.get_ref().as_raw_fd(), &[channel::TERMINATE]);
            return;
        }
        if self.reported {
            return;
        }
        // An exec'd or adopted shim supervises this run only, and exits after it.
        let (pid, start) = (self.followed.shim_pid, self.followed.shim_start_time);
        // The identity check reads /proc: off the actix thread, like every file access.
        tokio::task::spawn_blocking(move || {
            if is_same_process_alive(pid, start) {
                // SAFETY: kill(2) with a PID we verified by start time.
                unsafe {
                    libc::kill(pid as i32, libc::SIGTERM);
                }
            }
        });
    }
}
