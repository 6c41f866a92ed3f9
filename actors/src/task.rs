//! `TaskActor`: one live task.
//!
//! Owns: the task's record while it is live, its slot request with the governor, its
//! `AgentProcess`, and the callers waiting for a cancel to take effect.
//! Must never: change its record before the journal committed the transition, or panic
//! in a handler (actix restarts stopped actors, not panicked ones). A finished task
//! tells the engine, which drops its address: memory follows live work only.

use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::agents::process::RunResult;
use crate::agents::{AgentExited, AgentProcess, Terminate, resolve_agent};
use crate::engine::EngineDeps;
use crate::error::EngineError;
use crate::governor::{Enqueue, Grant, Release, Withdraw};
use crate::journal::Append;
use crate::model::{TaskEvent, TaskRecord, TaskStatus, apply, now_ms, outcome_of_exit};

/// Cancel this task; the answer comes once the cancel took effect.
#[derive(Message)]
#[rtype(result = "Result<TaskRecord, EngineError>")]
pub struct CancelTask {
    pub reason: String,
}

/// Told to the engine when the task reached a terminal state.
#[derive(Message)]
#[rtype(result = "()")]
pub struct TaskEnded {
    pub task_id: String,
    pub status: TaskStatus,
    /// The task at the root of the failure cascade that ended this one, if any.
    pub cascade_root: Option<String>,
}

/// What a dependency's end means for this task (from the engine's graph).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Resolved(pub crate::model::dag::Resolution);

type CancelWaiter = oneshot::Sender<Result<TaskRecord, EngineError>>;

pub struct TaskActor {
    record: TaskRecord,
    deps: EngineDeps,
    process: Option<Addr<AgentProcess>>,
    cancel_waiters: Vec<CancelWaiter>,
    /// Set by `restarting`: reload the record from the database before going on.
    reload: bool,
    ended: bool,
}

/// When the journal refuses a transition the task must make (disk full), try again.
const JOURNAL_RETRY: Duration = Duration::from_secs(1);

impl TaskActor {
    pub fn new(record: TaskRecord, deps: EngineDeps) -> TaskActor {
        TaskActor {
            record,
            deps,
            process: None,
            cancel_waiters: Vec::new(),
            reload: false,
            ended: false,
        }
    }

    /// Journals `events` (applied in order, committed in one transaction), and only
    /// then adopts the new record and runs `then`. The actor handles nothing else
    /// meanwhile (`ctx.wait`), so a task's transitions are applied in order, while the
    /// journal batches many tasks into one commit.
    fn commit(
        &mut self,
        events: Vec<TaskEvent>,
        ctx: &mut Context<Self>,
        then: impl FnOnce(&mut Self, &mut Context<Self>, Result<(), EngineError>) + 'static,
    ) {
        let mut next = self.record.clone();
        let mut transitions = Vec::with_capacity(events.len());
        for event in events {
            match apply(Some(&next), &event) {
                Ok(after) => {
                    next = after.clone();
                    transitions.push((event, after));
                }
                Err(e) => return then(self, ctx, Err(e.into())),
            }
        }
        let fut = self.deps.journal.send(Append { transitions });
        ctx.wait(fut.into_actor(self).map(move |res, act, ctx| {
            let res = match res {
                Ok(Ok(())) => {
                    act.record = next;
                    Ok(())
                }
                Ok(Err(e)) => Err(EngineError::from(e)),
                Err(e) => Err(EngineError::from(e)),
            };
            then(act, ctx, res);
        }));
    }

    /// Like `commit`, for transitions that must happen: retried until the journal
    /// takes them, so that a full disk delays a result but never loses it.
    fn commit_until_done(
        &mut self,
        events: Vec<TaskEvent>,
        ctx: &mut Context<Self>,
        then: impl FnOnce(&mut Self, &mut Context<Self>) + 'static,
    ) {
        let retry = events.clone();
        self.commit(events, ctx, move |act, ctx, res| match res {
            Ok(()) => then(act, ctx),
            Err(EngineError::Journal(e)) => {
                tracing::error!(task = %act.record.id, error = %e, "journal refused a transition; retrying");
                ctx.run_later(JOURNAL_RETRY, move |act, ctx| act.commit_until_done(retry, ctx, then));
            }
            Err(e) => {
                tracing::error!(task = %act.record.id, error = %e, "impossible transition; reloading the task");
                ctx.stop(); // the supervisor restarts the actor from the database
            }
        });
    }

    /// Commits a terminal transition together with the task's checkpoint (last output,
    /// error, git state), built off the actor thread; then `then`.
    fn finish(
        &mut self,
        terminal: TaskEvent,
        ctx: &mut Context<Self>,
        then: impl FnOnce(&mut Self, &mut Context<Self>, Result<(), EngineError>) + 'static,
    ) {
        let after = match apply(Some(&self.record), &terminal) {
            Ok(after) => after,
            Err(e) => return then(self, ctx, Err(e.into())),
        };
        let run = self.deps.launcher.run_dir(&self.record.id);
        let error = after
            .reason
            .clone()
            .filter(|_| after.status != TaskStatus::Completed);
        let build = tokio::task::spawn_blocking(move || {
            crate::agents::checkpoint::build(&after, &run, after.status, error)
        });
        ctx.wait(build.into_actor(self).map(move |checkpoint, act, ctx| {
            let mut events = vec![terminal];
            if let Ok(checkpoint) = checkpoint {
                events.push(TaskEvent::Checkpointed {
                    checkpoint: Box::new(checkpoint),
                });
            }
            act.commit(events, ctx, then);
        }));
    }

    /// `finish` for results that must be recorded: retried until the journal takes them.
    fn finish_until_done(
        &mut self,
        terminal: TaskEvent,
        ctx: &mut Context<Self>,
        then: impl FnOnce(&mut Self, &mut Context<Self>) + 'static,
    ) {
        let retry = terminal.clone();
        self.finish(terminal, ctx, move |act, ctx, res| match res {
            Ok(()) => then(act, ctx),
            Err(EngineError::Journal(e)) => {
                tracing::error!(task = %act.record.id, error = %e, "journal refused a result; retrying");
                ctx.run_later(JOURNAL_RETRY, move |act, ctx| act.finish_until_done(retry, ctx, then));
            }
            Err(e) => {
                tracing::error!(task = %act.record.id, error = %e, "impossible transition; reloading the task");
                ctx.stop();
            }
        });
    }

    /// Picks up the task from whatever state it is in.
    fn resume(&mut self, ctx: &mut Context<Self>) {
        match self.record.status {
            TaskStatus::Queued => self.enqueue_or_adopt_orphan(ctx),
            TaskStatus::Running => self.adopt(ctx),
            TaskStatus::Blocked => {}
            _ => self.end(ctx),
        }
    }

    fn enqueue_or_adopt_orphan(&mut self, ctx: &mut Context<Self>) {
        // A shim may exist for a queued task if the last daemon died between spawning it
        // and journaling the start: adopt it rather than run the agent twice.
        let run = self.deps.launcher.run_dir(&self.record.id);
        if let Some(shim) = run.read_shim() {
            let event = TaskEvent::Started {
                at: now_ms(),
                shim_pid: shim.pid,
                shim_start_time: shim.start_time,
            };
            return self.commit_until_done(vec![event], ctx, |act, ctx| act.adopt(ctx));
        }
        // Waiting for a time (a rate limit's reset): enqueue when it comes.
        if let Some(not_before) = self.record.not_before {
            let wait = not_before - now_ms();
            if wait > 0 {
                ctx.run_later(Duration::from_millis(wait as u64), |act, ctx| {
                    if act.record.status == TaskStatus::Queued {
                        act.enqueue(ctx);
                    }
                });
                return;
            }
        }
        self.enqueue(ctx);
    }

    fn enqueue(&mut self, ctx: &mut Context<Self>) {
        self.deps.governor.do_send(Enqueue {
            task_id: self.record.id.clone(),
            priority: self.record.priority,
            agent: self.record.agent.clone(),
            recipient: ctx.address().recipient(),
        });
    }

    fn adopt(&mut self, ctx: &mut Context<Self>) {
        let (Some(pid), Some(start)) = (self.record.shim_pid, self.record.shim_start_time) else {
            let event = TaskEvent::Requeued {
                reason: "requeued: its agent had not been launched".into(),
            };
            return self.commit_until_done(vec![event], ctx, |act, ctx| act.resume(ctx));
        };
        let run = self.deps.launcher.run_dir(&self.record.id);
        let process = AgentProcess::adopted(run, pid, start, ctx.address().recipient());
        self.process = Some(process.start());
        // An adopted agent holds a slot too.
        self.deps.governor.do_send(crate::governor::Adopted {
            task_id: self.record.id.clone(),
            agent: self.record.agent.clone(),
        });
    }

    fn start_agent(&mut self, ctx: &mut Context<Self>) {
        let settings = (self.deps.settings)();
        let launched = resolve_agent(Some(&self.record.agent), &settings)
            .map_err(|e| e.to_string())
            .and_then(|adapter| {
                let agent_settings = settings
                    .agents
                    .get(&self.record.agent)
                    .cloned()
                    .unwrap_or_default();
                let cmd = adapter.command(&self.record, &agent_settings);
                self.deps
                    .launcher
                    .launch(&self.record, &cmd, &settings)
                    .map_err(|e| {
                        format!("the agent could not be started: spawning its shim failed: {e}")
                    })
            });
        match launched {
            Err(reason) => {
                let event = TaskEvent::StartFailed {
                    at: now_ms(),
                    reason,
                };
                self.finish_until_done(event, ctx, |act, ctx| {
                    act.release(None);
                    act.end(ctx)
                });
            }
            Ok(l) => {
                let run = self.deps.launcher.run_dir(&self.record.id);
                let process = AgentProcess::spawned(
                    run,
                    l.child,
                    l.pid,
                    l.start_time,
                    ctx.address().recipient(),
                );
                self.process = Some(process.start());
                let event = TaskEvent::Started {
                    at: now_ms(),
                    shim_pid: l.pid,
                    shim_start_time: l.start_time,
                };
                self.commit_until_done(vec![event], ctx, |act, _| {
                    // A cancel that arrived while the start was being journaled.
                    if !act.cancel_waiters.is_empty()
                        && let Some(p) = &act.process
                    {
                        p.do_send(Terminate);
                    }
                });
            }
        }
    }

    fn release(&self, max_rss_kb: Option<u64>) {
        self.deps.governor.do_send(Release {
            task_id: self.record.id.clone(),
            max_rss_kb,
        });
    }

    /// The task is terminal: answer cancel waiters and let the engine drop us.
    fn end(&mut self, _ctx: &mut Context<Self>) {
        for waiter in self.cancel_waiters.drain(..) {
            let _ = waiter.send(Ok(self.record.clone()));
        }
        if !self.ended {
            self.ended = true;
            self.process = None;
            self.deps.engine.do_send(TaskEnded {
                task_id: self.record.id.clone(),
                status: self.record.status,
                cascade_root: self.record.cascade_root.clone(),
            });
        }
    }
}

impl Actor for TaskActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if !self.reload {
            return self.resume(ctx);
        }
        self.reload = false;
        let store = self.deps.store.clone();
        let id = self.record.id.clone();
        let read = async move { tokio::task::spawn_blocking(move || store.task(&id)).await };
        ctx.wait(read.into_actor(self).map(|res, act, ctx| match res {
            Ok(Ok(Some(record))) => {
                act.record = record;
                act.resume(ctx);
            }
            other => {
                tracing::error!(task = %act.record.id, result = ?other.map(|r| r.map(|o| o.is_some())), "could not reload task");
                act.end(ctx);
            }
        }));
    }
}

impl Supervised for TaskActor {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        self.reload = true;
        self.process = None;
    }
}

impl Handler<Grant> for TaskActor {
    type Result = ();

    fn handle(&mut self, _msg: Grant, ctx: &mut Context<Self>) {
        if self.record.status != TaskStatus::Queued || self.process.is_some() {
            return self.release(None);
        }
        self.start_agent(ctx);
    }
}

impl Handler<AgentExited> for TaskActor {
    type Result = ();

    fn handle(&mut self, msg: AgentExited, ctx: &mut Context<Self>) {
        if self.record.status != TaskStatus::Running {
            return;
        }
        self.process = None;
        let (outcome, rss) = match msg.0 {
            RunResult::Exited(exit) => (
                outcome_of_exit(&exit, self.record.cancel_reason.as_deref()),
                Some(exit.max_rss_kb),
            ),
            RunResult::Lost(reason) => {
                let event = TaskEvent::Lost {
                    at: now_ms(),
                    reason,
                };
                return self.finish_until_done(event, ctx, |act, ctx| {
                    act.release(None);
                    act.end(ctx);
                });
            }
        };
        let settings = (self.deps.settings)();
        if outcome.rate_limited && self.record.rate_limit_retries < settings.rate_limit_retries {
            return self.wait_for_rate_limit(
                outcome,
                rss,
                settings.rate_limit_retries,
                settings.rate_limit_backoff_ms,
                ctx,
            );
        }
        let event = TaskEvent::Finished {
            at: now_ms(),
            outcome,
        };
        self.finish_until_done(event, ctx, move |act, ctx| {
            act.release(rss);
            act.end(ctx);
        });
    }
}

impl TaskActor {
    /// A run that ended on a rate limit: queue the task again for after the provider's
    /// reset time, or after a back-off that doubles with each attempt.
    fn wait_for_rate_limit(
        &mut self,
        mut outcome: crate::model::ExitOutcome,
        rss: Option<u64>,
        max_retries: u32,
        backoff_ms: u64,
        ctx: &mut Context<Self>,
    ) {
        let now = now_ms();
        let attempt = self.record.rate_limit_retries + 1;
        let backoff = backoff_ms.saturating_mul(1u64 << (attempt - 1).min(16)) as i64;
        let not_before = outcome
            .rate_limit_reset
            .filter(|&t| t > now)
            .unwrap_or(now + backoff);
        let until = chrono::DateTime::from_timestamp_millis(not_before)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default();
        outcome.reason = format!(
            "{}; waiting until {until} to run again (rate-limit retry {attempt} of {max_retries})",
            outcome.reason
        );
        // The old run's identity goes first: a crash after this leaves the task running
        // with a dead shim and its exit.json, which recovery reads again.
        let run = self.deps.launcher.run_dir(&self.record.id);
        let _ = std::fs::remove_file(run.shim());
        let event = TaskEvent::RateLimited {
            at: now,
            not_before,
            outcome,
        };
        self.commit_until_done(vec![event], ctx, move |act, ctx| {
            act.release(rss);
            act.resume(ctx);
        });
    }
}

impl Handler<Resolved> for TaskActor {
    type Result = ();

    fn handle(&mut self, msg: Resolved, ctx: &mut Context<Self>) {
        use crate::model::dag::Resolution;
        match msg.0 {
            Resolution::Ready { .. } if self.record.status == TaskStatus::Blocked => {
                self.unblock(ctx)
            }
            Resolution::Doomed {
                dependency,
                root,
                status,
                ..
            } if matches!(self.record.status, TaskStatus::Blocked | TaskStatus::Queued) => {
                let event = TaskEvent::DependencyFailed {
                    at: now_ms(),
                    reason: crate::engine::cascade_reason(&dependency, &root, status),
                    dependency,
                    root,
                };
                self.deps.governor.do_send(Withdraw {
                    task_id: self.record.id.clone(),
                });
                self.finish_until_done(event, ctx, |act, ctx| act.end(ctx));
            }
            _ => {}
        }
    }
}

impl TaskActor {
    /// Every dependency completed: queue the task, its prompt enriched with the
    /// checkpoint of the task it continues from (read from the journal: the real last
    /// lines of output, spec 8.3).
    fn unblock(&mut self, ctx: &mut Context<Self>) {
        let not_before = self.record.start_delay.map(|d| now_ms() + d as i64);
        let Some(from) = self.record.continue_from.clone() else {
            let event = TaskEvent::Unblocked {
                at: now_ms(),
                prompt: None,
                not_before,
            };
            return self.commit_until_done(vec![event], ctx, |act, ctx| act.resume(ctx));
        };
        let store = self.deps.store.clone();
        let read = async move { tokio::task::spawn_blocking(move || store.task(&from)).await };
        ctx.wait(read.into_actor(self).map(move |res, act, ctx| {
            let prompt = match res {
                Ok(Ok(Some(previous))) => {
                    Some(crate::agents::checkpoint::continuation_prompt(&previous, &act.record.prompt))
                }
                other => {
                    tracing::warn!(task = %act.record.id, ?other, "continueFrom task unreadable; running the prompt as it is");
                    None
                }
            };
            let event = TaskEvent::Unblocked { at: now_ms(), prompt, not_before };
            act.commit_until_done(vec![event], ctx, |act, ctx| act.resume(ctx));
        }));
    }
}

impl Handler<CancelTask> for TaskActor {
    type Result = ResponseFuture<Result<TaskRecord, EngineError>>;

    fn handle(&mut self, msg: CancelTask, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        // Empty when none was given: the reason then reads "cancelled by the user".
        let reason = msg.reason.trim().to_string();
        match self.record.status {
            TaskStatus::Queued | TaskStatus::Blocked => {
                let event = TaskEvent::Cancelled {
                    at: now_ms(),
                    reason: if reason.is_empty() {
                        "cancelled by the user".to_string()
                    } else {
                        format!("cancelled by the user: {reason}")
                    },
                };
                self.finish(event, ctx, move |act, ctx, res| match res {
                    Ok(()) => {
                        act.deps.governor.do_send(Withdraw {
                            task_id: act.record.id.clone(),
                        });
                        let _ = tx.send(Ok(act.record.clone()));
                        act.end(ctx);
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                });
            }
            TaskStatus::Running => {
                self.cancel_waiters.push(tx);
                if self.record.cancel_reason.is_none() {
                    let event = TaskEvent::CancelRequested { reason };
                    self.commit(vec![event], ctx, |act, _, res| match res {
                        Ok(()) => {
                            if let Some(p) = &act.process {
                                p.do_send(Terminate);
                            }
                        }
                        Err(e) => {
                            for w in act.cancel_waiters.drain(..) {
                                let _ = w.send(Err(e.clone()));
                            }
                        }
                    });
                }
            }
            status => {
                let _ = tx.send(Err(EngineError::CannotCancel {
                    id: self.record.id.clone(),
                    status,
                }));
            }
        }
        Box::pin(async move {
            rx.await.unwrap_or_else(|_| {
                Err(EngineError::Internal(
                    "the task stopped before answering".into(),
                ))
            })
        })
    }
}
