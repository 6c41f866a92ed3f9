//! `TaskActor`: one live task.
//!
//! Owns: the task's record while it is live, its slot request with the governor, the
//! address of its run's `AgentProcess` (launched and owned by the `AgentPool`), and the
//! callers waiting for a cancel to take effect.
//! Its journal steps (commit, commit until durable, reload after a restart, end) are
//! the supervised-entity pattern of `entity.rs`; this file holds only what is a task's.
//! Must never: change its record before the journal committed the transition, or panic
//! in a handler (actix restarts stopped actors, not panicked ones), or reach back into
//! the engine (it speaks through the recipients in `TaskDeps`). A finished task tells
//! its registry, which drops its address: memory follows live work only.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::agents::channel::ExitAck;
use crate::agents::checkpoint::{self, RunTail};
use crate::agents::pool::{Adopt, FindShim, ForgetShim, Launch};
use crate::agents::process::RunResult;
use crate::agents::run_dir::RunDir;
use crate::agents::{AgentExited, AgentPool, AgentProcess, AgentProgress, RunHandle, Terminate};
use crate::entity::{EntityActor, EntityCore, EntityEnded, Lifecycle};
use crate::error::EngineError;
use crate::governor::{Enqueue, Grant, Launched, Release, ResourceGovernor, WaitReason, Withdraw};
use crate::journal::{Append, Store};
use crate::model::task::Checkpoint;
use crate::model::{
    EntityKind, TaskEvent, TaskRecord, TaskStatus, Transition, apply, now_ms, outcome_of_exit,
};
use crate::model::{rate_limit, reasons};
use crate::settings::SettingsSource;

/// What a task actor needs from the rest of the engine.
#[derive(Clone)]
pub struct TaskDeps {
    pub journal: Recipient<Append>,
    /// Told when the task ended (the Engine's registry).
    pub registry: Recipient<EntityEnded>,
    pub governor: Addr<ResourceGovernor>,
    /// Launches and follows the task's runs.
    pub pool: Addr<AgentPool>,
    /// Where run folders live (`RunDir::new(runs_root, task_id)`).
    pub runs_root: Arc<Path>,
    pub settings: SettingsSource,
    pub store: Store,
}

/// Cancel this task; the answer comes once the cancel took effect.
#[derive(Message)]
#[rtype(result = "Result<TaskRecord, EngineError>")]
pub struct CancelTask {
    pub reason: String,
}

/// The task as last committed (what its actor holds).
#[derive(Message)]
#[rtype(result = "TaskRecord")]
pub struct CurrentRecord;

/// Take part in the cancel of the task's owner (a pipeline): offer the transitions
/// that cancel this task, to be committed in the owner's transaction, and adopt them
/// once `verdict` says they were.
#[derive(Message)]
#[rtype(result = "Result<Joined, EngineError>")]
pub struct JoinCancel {
    pub reason: String,
    pub verdict: oneshot::Receiver<bool>,
}

/// A task's part in its owner's cancel.
pub struct Joined {
    pub transitions: Vec<Transition>,
    /// For a running task: resolves once the agent stopped and the task ended.
    pub ended: Option<oneshot::Receiver<Result<TaskRecord, EngineError>>>,
}

/// What a dependency's end means for this task (from the engine's graph).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Resolved(pub crate::model::dag::Resolution);

type CancelWaiter = oneshot::Sender<Result<TaskRecord, EngineError>>;

pub struct TaskActor {
    core: EntityCore<TaskRecord>,
    deps: TaskDeps,
    process: Option<Addr<AgentProcess>>,
    cancel_waiters: Vec<CancelWaiter>,
    /// Journaled by this daemon a moment ago and not yet picked up: no shim can exist
    /// for it, so its first pick-up does not look for one (a restart of the actor
    /// does).
    new_here: bool,
}

impl TaskActor {
    pub fn new(record: TaskRecord, deps: TaskDeps) -> TaskActor {
        TaskActor {
            core: EntityCore::new(
                record,
                deps.journal.clone(),
                deps.registry.clone(),
                deps.store.clone(),
            ),
            deps,
            process: None,
            cancel_waiters: Vec::new(),
            new_here: false,
        }
    }

    /// A task this daemon has just journaled as new (never a recovered one).
    pub fn new_here(record: TaskRecord, deps: TaskDeps) -> TaskActor {
        TaskActor {
            new_here: true,
            ..TaskActor::new(record, deps)
        }
    }

    fn task(&self) -> &TaskRecord {
        &self.core.record
    }

    /// A terminal transition and the task's checkpoint (last output, error, git state);
    /// `then` gets both events, to commit together. The checkpoint comes from `tail`,
    /// what the run's follower read when the run ended, or else is built off the actor
    /// thread (a run that never started, a cancel while queued).
    fn with_checkpoint(
        &mut self,
        terminal: TaskEvent,
        tail: Option<RunTail>,
        ctx: &mut Context<Self>,
        then: impl FnOnce(&mut Self, &mut Context<Self>, Result<Vec<TaskEvent>, EngineError>) + 'static,
    ) {
        let after = match apply(Some(self.task()), &terminal) {
            Ok(after) => after,
            Err(e) => return then(self, ctx, Err(e.into())),
        };
        let error = after
            .reason
            .clone()
            .filter(|_| after.status != TaskStatus::Completed);
        let with = |terminal, checkpoint| {
            vec![
                terminal,
                TaskEvent::Checkpointed {
                    checkpoint: Box::new(checkpoint),
                },
            ]
        };
        if let Some(tail) = tail {
            let checkpoint = checkpoint::assemble(tail, after.status, error);
            return then(self, ctx, Ok(with(terminal, checkpoint)));
        }
        let run = RunDir::new(&self.deps.runs_root, &self.task().id);
        let build = tokio::task::spawn_blocking(move || {
            checkpoint::build(&after, &run, after.status, error)
        });
        ctx.wait(build.into_actor(self).map(move |checkpoint, act, ctx| {
            let events = match checkpoint {
                Ok(checkpoint) => with(terminal, checkpoint),
                Err(_) => vec![terminal],
            };
            then(act, ctx, Ok(events));
        }));
    }

    /// Records a result that must be recorded (with its checkpoint), retried until the
    /// journal takes it; then `then`.
    fn finish_until_durable(
        &mut self,
        terminal: TaskEvent,
        tail: Option<RunTail>,
        ctx: &mut Context<Self>,
        then: impl FnOnce(&mut Self, &mut Context<Self>) + 'static,
    ) {
        self.with_checkpoint(terminal, tail, ctx, move |act, ctx, events| match events {
            Ok(events) => act.commit_until_durable(events, ctx, then),
            Err(e) => {
                tracing::error!(task = %act.task().id, error = %e, "impossible transition; reloading the task");
                ctx.stop(); // the supervisor restarts the actor from the journal
            }
        });
    }

    /// Picks up the task from whatever state it is in.
    fn pick_up(&mut self, ctx: &mut Context<Self>) {
        let new_here = std::mem::take(&mut self.new_here);
        match self.task().status {
            TaskStatus::Queued if new_here => self.enqueue_when_due(ctx),
            TaskStatus::Queued => self.enqueue_or_adopt_orphan(ctx),
            TaskStatus::Running => self.adopt(ctx),
            TaskStatus::Blocked => {}
            _ => self.end(ctx),
        }
    }

    fn enqueue_or_adopt_orphan(&mut self, ctx: &mut Context<Self>) {
        // A shim may exist for a queued task if the last daemon died between spawning it
        // and journaling the start: adopt it rather than run the agent twice.
        let find = self.deps.pool.send(FindShim {
            task_id: self.core.record.id.clone(),
        });
        ctx.wait(find.into_actor(self).map(|shim, act, ctx| match shim {
            Ok(Some(shim)) => {
                let event = TaskEvent::Started {
                    at: now_ms(),
                    shim_pid: shim.pid,
                    shim_start_time: shim.start_time,
                };
                act.commit_until_durable(vec![event], ctx, |act, ctx| act.adopt(ctx));
            }
            _ => act.enqueue_when_due(ctx),
        }));
    }

    fn enqueue_when_due(&mut self, ctx: &mut Context<Self>) {
        // Waiting for a time (a rate limit's reset): enqueue when it comes.
        if let Some(not_before) = self.core.record.not_before {
            let wait = not_before - now_ms();
            if wait > 0 {
                ctx.run_later(Duration::from_millis(wait as u64), |act, ctx| {
                    if act.core.record.status == TaskStatus::Queued {
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
            task_id: self.core.record.id.clone(),
            priority: self.core.record.priority,
            agent: self.core.record.agent.clone(),
            // A loop's iterations and a schedule's runs repeat one kind of work: what
            // their earlier runs took is the best guess of what the next one takes.
            footprint_key: self
                .core
                .record
                .owner
                .as_ref()
                .filter(|o| matches!(o.kind, EntityKind::Loop | EntityKind::Schedule))
                .map(|o| o.id.clone()),
            recipient: ctx.address().recipient(),
            reason_to: Some(ctx.address().recipient()),
        });
    }

    fn adopt(&mut self, ctx: &mut Context<Self>) {
        let (Some(pid), Some(start)) =
            (self.core.record.shim_pid, self.core.record.shim_start_time)
        else {
            let event = TaskEvent::Requeued {
                reason: reasons::REQUEUED_NOT_LAUNCHED.into(),
            };
            return self.commit_until_durable(vec![event], ctx, |act, ctx| act.pick_up(ctx));
        };
        let adopt = self.deps.pool.send(Adopt {
            task_id: self.core.record.id.clone(),
            working_directory: self.core.record.working_directory.clone().into(),
            shim_pid: pid,
            shim_start_time: start,
            report_to: ctx.address().recipient(),
            progress_to: ctx.address().recipient(),
        });
        ctx.wait(adopt.into_actor(self).map(|process, act, ctx| match process {
            Ok(process) => act.process = Some(process),
            Err(e) => {
                tracing::error!(task = %act.core.record.id, error = %e, "the agent pool did not adopt the run; reloading the task");
                ctx.stop();
            }
        }));
        // An adopted agent holds a slot too.
        self.deps.governor.do_send(crate::governor::Adopted {
            task_id: self.core.record.id.clone(),
            agent: self.core.record.agent.clone(),
            shim_pid: Some(pid),
        });
    }

    /// Asks the pool to launch the agent; nothing else is handled until it answers.
    fn start_agent(&mut self, ctx: &mut Context<Self>) {
        let launch = self.deps.pool.send(Launch {
            task: self.core.record.clone(),
            report_to: ctx.address().recipient(),
            progress_to: ctx.address().recipient(),
            release_to: self.deps.governor.clone().recipient(),
        });
        ctx.wait(launch.into_actor(self).map(|res, act, ctx| {
            let launched = match res {
                Ok(launched) => launched.map_err(|e| e.to_string()),
                Err(e) => Err(reasons::start_failed(&format!(
                    "the agent pool is gone: {e}"
                ))),
            };
            act.agent_launched(launched, ctx);
        }));
    }

    fn agent_launched(&mut self, launched: Result<RunHandle, String>, ctx: &mut Context<Self>) {
        match launched {
            Err(reason) => {
                let event = TaskEvent::StartFailed {
                    at: now_ms(),
                    reason,
                };
                self.finish_until_durable(event, None, ctx, |act, ctx| {
                    act.release(None);
                    act.end(ctx)
                });
            }
            Ok(run) => {
                self.process = Some(run.process);
                self.deps.governor.do_send(Launched {
                    task_id: self.core.record.id.clone(),
                    shim_pid: run.shim_pid,
                });
                let event = TaskEvent::Started {
                    at: now_ms(),
                    shim_pid: run.shim_pid,
                    shim_start_time: run.shim_start_time,
                };
                self.commit_until_durable(vec![event], ctx, |act, _| {
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
            task_id: self.core.record.id.clone(),
            max_rss_kb,
        });
    }
}

impl EntityActor for TaskActor {
    type Entity = TaskRecord;

    fn core(&self) -> &EntityCore<TaskRecord> {
        &self.core
    }

    fn core_mut(&mut self) -> &mut EntityCore<TaskRecord> {
        &mut self.core
    }

    fn resume(&mut self, ctx: &mut Context<Self>) {
        self.pick_up(ctx);
    }

    /// The task is terminal: answer cancel waiters.
    fn ending(&mut self, _ctx: &mut Context<Self>) {
        for waiter in self.cancel_waiters.drain(..) {
            let _ = waiter.send(Ok(self.core.record.clone()));
        }
        self.process = None;
    }
}

impl Actor for TaskActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.start_entity(ctx);
    }
}

impl Supervised for TaskActor {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        self.restart_entity();
        self.process = None;
    }
}

impl Handler<Grant> for TaskActor {
    type Result = ();

    fn handle(&mut self, _msg: Grant, ctx: &mut Context<Self>) {
        if self.core.record.status != TaskStatus::Queued || self.process.is_some() {
            return self.release(None);
        }
        self.start_agent(ctx);
    }
}

impl Handler<AgentExited> for TaskActor {
    type Result = ();

    fn handle(&mut self, msg: AgentExited, ctx: &mut Context<Self>) {
        if self.core.record.status != TaskStatus::Running {
            return;
        }
        self.process = None;
        let tail = Some(msg.tail);
        // Told to the shim once the result is journaled (in the `then` of the commit).
        let ack = msg.ack;
        let acked = |ack: Option<ExitAck>| {
            move |act: &mut Self, ctx: &mut Context<Self>| {
                if let Some(ack) = ack {
                    ack.durable();
                }
                act.end(ctx)
            }
        };
        let (outcome, rss) = match msg.result {
            RunResult::Exited(exit) => (
                outcome_of_exit(&exit, self.core.record.cancel_reason.as_deref()),
                Some(exit.max_rss_kb),
            ),
            RunResult::Lost(reason) => {
                self.release(None);
                let event = TaskEvent::Lost {
                    at: now_ms(),
                    reason,
                };
                return self.finish_until_durable(event, tail, ctx, acked(ack));
            }
        };
        // The agent has exited: its slot, CPU and memory are free now. Releasing them
        // before the result is journaled lets the next task start while this one's
        // checkpoint and commit run (nothing here is reported to anyone).
        self.release(rss);
        let settings = (self.deps.settings)();
        if outcome.rate_limited
            && let Some(plan) = rate_limit::plan_retry(
                now_ms(),
                self.core.record.rate_limit_retries,
                settings.rate_limit_retries,
                settings.rate_limit_backoff_ms,
                outcome.rate_limit_reset,
            )
        {
            return self.wait_for_rate_limit(outcome, plan, settings.rate_limit_retries, ack, ctx);
        }
        let event = TaskEvent::Finished {
            at: now_ms(),
            outcome,
        };
        self.finish_until_durable(event, tail, ctx, acked(ack));
    }
}

impl Handler<AgentProgress> for TaskActor {
    type Result = ();

    /// The agent's retries become the task's reason while it runs.
    fn handle(&mut self, msg: AgentProgress, ctx: &mut Context<Self>) {
        if self.core.record.status != TaskStatus::Running
            || self.core.record.reason.as_deref() == Some(msg.0.as_str())
        {
            return;
        }
        let event = TaskEvent::Progress { reason: msg.0 };
        self.commit(vec![event], Vec::new(), ctx, |act, _, res| {
            if let Err(e) = res {
                tracing::warn!(task = %act.core.record.id, error = %e, "progress not journaled");
            }
        });
    }
}

impl Handler<WaitReason> for TaskActor {
    type Result = ();

    /// Why the governor holds the start back becomes the task's reason while it waits.
    fn handle(&mut self, msg: WaitReason, ctx: &mut Context<Self>) {
        if self.core.record.status != TaskStatus::Queued || self.core.record.reason == msg.0 {
            return;
        }
        let event = TaskEvent::Waiting { reason: msg.0 };
        self.commit(vec![event], Vec::new(), ctx, |act, _, res| {
            if let Err(e) = res {
                tracing::warn!(task = %act.core.record.id, error = %e, "waiting reason not journaled");
            }
        });
    }
}

impl TaskActor {
    /// A run that ended on a rate limit: queue the task again for after the provider's
    /// reset time, or after a back-off that doubles with each attempt.
    fn wait_for_rate_limit(
        &mut self,
        mut outcome: crate::model::ExitOutcome,
        plan: rate_limit::RetryPlan,
        max_retries: u32,
        ack: Option<ExitAck>,
        ctx: &mut Context<Self>,
    ) {
        let not_before = plan.not_before;
        outcome.reason =
            reasons::rate_limit_wait(&outcome.reason, not_before, plan.attempt, max_retries);
        // The old run's identity goes first: a crash after this leaves the task running
        // with a dead shim and its exit record (a shim whose result was never
        // acknowledged writes it to the folder), which recovery reads again.
        let forget = self.deps.pool.send(ForgetShim {
            task_id: self.core.record.id.clone(),
        });
        ctx.wait(forget.into_actor(self).map(move |_, act, ctx| {
            let event = TaskEvent::RateLimited {
                at: plan.decided_at,
                not_before,
                outcome,
            };
            act.commit_until_durable(vec![event], ctx, |act, ctx| {
                if let Some(ack) = ack {
                    ack.durable();
                }
                act.pick_up(ctx)
            });
        }));
    }
}

impl Handler<Resolved> for TaskActor {
    type Result = ();

    fn handle(&mut self, msg: Resolved, ctx: &mut Context<Self>) {
        use crate::model::dag::Resolution;
        match msg.0 {
            Resolution::Ready { .. } if self.core.record.status == TaskStatus::Blocked => {
                self.unblock(ctx)
            }
            Resolution::Doomed {
                dependency,
                root,
                status,
                ..
            } if matches!(
                self.core.record.status,
                TaskStatus::Blocked | TaskStatus::Queued
            ) =>
            {
                let event = TaskEvent::DependencyFailed {
                    at: now_ms(),
                    reason: crate::model::dag::dependency_failed(&dependency, &root, status),
                    dependency,
                    root,
                };
                self.deps.governor.do_send(Withdraw {
                    task_id: self.core.record.id.clone(),
                });
                self.finish_until_durable(event, None, ctx, |act, ctx| act.end(ctx));
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
        let not_before = self.core.record.start_delay.map(|d| now_ms() + d as i64);
        let Some(from) = self.core.record.continue_from.clone() else {
            let event = TaskEvent::Unblocked {
                at: now_ms(),
                prompt: None,
                not_before,
            };
            return self.commit_until_durable(vec![event], ctx, |act, ctx| act.pick_up(ctx));
        };
        let store = self.deps.store.clone();
        let read = async move { tokio::task::spawn_blocking(move || store.task(&from)).await };
        ctx.wait(read.into_actor(self).map(move |res, act, ctx| {
            let prompt = match res {
                Ok(Ok(Some(previous))) => {
                    Some(crate::agents::checkpoint::continuation_prompt(&previous, &act.core.record.prompt))
                }
                other => {
                    tracing::warn!(task = %act.core.record.id, ?other, "continueFrom task unreadable; running the prompt as it is");
                    None
                }
            };
            let event = TaskEvent::Unblocked { at: now_ms(), prompt, not_before };
            act.commit_until_durable(vec![event], ctx, |act, ctx| act.pick_up(ctx));
        }));
    }
}

impl Handler<CurrentRecord> for TaskActor {
    type Result = MessageResult<CurrentRecord>;

    fn handle(&mut self, _msg: CurrentRecord, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(self.core.record.clone())
    }
}

impl Handler<CancelTask> for TaskActor {
    type Result = ResponseFuture<Result<TaskRecord, EngineError>>;

    fn handle(&mut self, msg: CancelTask, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        let reason = msg.reason.trim().to_string();
        match self.core.record.status {
            TaskStatus::Queued | TaskStatus::Blocked => {
                let event = TaskEvent::Cancelled {
                    at: now_ms(),
                    reason: reasons::cancelled_by_user(&reason),
                };
                self.with_checkpoint(event, None, ctx, move |act, ctx, events| {
                    let events = match events {
                        Ok(events) => events,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    act.commit(events, Vec::new(), ctx, move |act, ctx, res| match res {
                        Ok(()) => {
                            act.deps.governor.do_send(Withdraw {
                                task_id: act.core.record.id.clone(),
                            });
                            let _ = tx.send(Ok(act.core.record.clone()));
                            act.end(ctx);
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    });
                });
            }
            TaskStatus::Running => {
                self.cancel_waiters.push(tx);
                if self.core.record.cancel_reason.is_none() {
                    let event = TaskEvent::CancelRequested { reason };
                    self.commit(vec![event], Vec::new(), ctx, |act, _, res| match res {
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
                    id: self.core.record.id.clone(),
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

impl Handler<JoinCancel> for TaskActor {
    type Result = Result<Joined, EngineError>;

    fn handle(&mut self, msg: JoinCancel, ctx: &mut Context<Self>) -> Self::Result {
        let record = &self.core.record;
        match record.status {
            TaskStatus::Queued | TaskStatus::Blocked => {
                // Never ran (or waits to run again): the checkpoint is the reason, built
                // here, so the owner's one transaction carries it with the cancel.
                let at = now_ms();
                let reason = format!("cancelled by the user: {}", msg.reason);
                let checkpoint = Checkpoint {
                    checkpoint_type: TaskStatus::Cancelled,
                    error_summary: Some(reason.clone()),
                    created_at: at,
                    ..Default::default()
                };
                let events = vec![
                    TaskEvent::Cancelled { at, reason },
                    TaskEvent::Checkpointed {
                        checkpoint: Box::new(checkpoint),
                    },
                ];
                let transitions = self.join(events, msg.verdict, ctx, |act, ctx, committed| {
                    if committed {
                        act.deps.governor.do_send(Withdraw {
                            task_id: act.core.record.id.clone(),
                        });
                        act.end(ctx);
                    }
                })?;
                Ok(Joined {
                    transitions,
                    ended: None,
                })
            }
            TaskStatus::Running => {
                let (tx, rx) = oneshot::channel();
                self.cancel_waiters.push(tx);
                let transitions = if record.cancel_reason.is_none() {
                    let event = TaskEvent::CancelRequested { reason: msg.reason };
                    self.join(vec![event], msg.verdict, ctx, |act, _, committed| {
                        if committed && let Some(p) = &act.process {
                            p.do_send(Terminate);
                        }
                    })?
                } else {
                    Vec::new() // already stopping
                };
                Ok(Joined {
                    transitions,
                    ended: Some(rx),
                })
            }
            _ => Ok(Joined {
                transitions: Vec::new(),
                ended: None,
            }),
        }
    }
}
