//! `AgentProcess`: follows one run of an agent through its shim.
//!
//! A shim this daemon spawned is awaited as a child; a shim adopted after a restart is
//! checked by PID and start time until its `exit.json` appears. Either way the result is
//! read from the run folder and sent to the task. Cancelling sends SIGTERM to the shim,
//! which stops the agent's whole process group (TERM, grace, KILL) and records why.

use std::time::Duration;

use actix::prelude::*;

use super::run_dir::{ExitRecord, RunDir, is_same_process_alive};
use crate::model::reasons;

/// How the run ended, as far as the files tell.
#[derive(Debug, Clone)]
pub enum RunResult {
    Exited(Box<ExitRecord>),
    /// The shim is gone and left no result.
    Lost(String),
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct AgentExited(pub RunResult);

/// Ask the shim to stop the agent (a user's cancel).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Terminate;

pub struct AgentProcess {
    run: RunDir,
    shim_pid: u32,
    shim_start_time: u64,
    child: Option<tokio::process::Child>,
    task: Recipient<AgentExited>,
    reported: bool,
}

/// How often an adopted shim (not our child) is checked.
const ADOPTED_POLL: Duration = Duration::from_millis(100);

impl AgentProcess {
    /// Follows a shim spawned by this daemon.
    pub fn spawned(
        run: RunDir,
        child: tokio::process::Child,
        shim_pid: u32,
        shim_start_time: u64,
        task: Recipient<AgentExited>,
    ) -> AgentProcess {
        AgentProcess {
            run,
            shim_pid,
            shim_start_time,
            child: Some(child),
            task,
            reported: false,
        }
    }

    /// Follows a shim left running by an earlier daemon.
    pub fn adopted(
        run: RunDir,
        shim_pid: u32,
        shim_start_time: u64,
        task: Recipient<AgentExited>,
    ) -> AgentProcess {
        AgentProcess {
            run,
            shim_pid,
            shim_start_time,
            child: None,
            task,
            reported: false,
        }
    }

    /// Reports the result if there is one; returns whether the run is over.
    fn collect(&mut self, ctx: &mut Context<Self>, shim_exited: bool) -> bool {
        // Liveness first, then the file: the shim writes exit.json before it exits, so
        // a dead shim seen before the read means the read is final.
        let alive = !shim_exited && is_same_process_alive(self.shim_pid, self.shim_start_time);
        let result = match self.run.read_exit() {
            Ok(Some(exit)) => RunResult::Exited(Box::new(exit)),
            Ok(None) if alive => return false,
            Ok(None) => RunResult::Lost(reasons::shim_lost(self.shim_pid)),
            Err(e) if alive => {
                tracing::debug!(error = %e, "exit.json not readable yet");
                return false;
            }
            Err(e) => RunResult::Lost(reasons::exit_unreadable(&e.to_string())),
        };
        if !self.reported {
            self.reported = true;
            self.task.do_send(AgentExited(result));
        }
        ctx.stop();
        true
    }
}

impl Actor for AgentProcess {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        match self.child.take() {
            Some(mut child) => {
                ctx.spawn(
                    async move { child.wait().await }
                        .into_actor(self)
                        .map(|_, act, ctx| {
                            act.collect(ctx, true);
                        }),
                );
            }
            None => {
                if !self.collect(ctx, false) {
                    ctx.run_interval(ADOPTED_POLL, |act, ctx| {
                        act.collect(ctx, false);
                    });
                }
            }
        }
    }
}

impl Handler<Terminate> for AgentProcess {
    type Result = ();

    fn handle(&mut self, _msg: Terminate, _ctx: &mut Context<Self>) {
        if is_same_process_alive(self.shim_pid, self.shim_start_time) {
            // SAFETY: kill(2) with a PID we verified by start time.
            unsafe {
                libc::kill(self.shim_pid as i32, libc::SIGTERM);
            }
        }
    }
}
