//! `ScheduleActor`: one live schedule.
//!
//! Owns: the schedule's record while it is active or paused, or while a run it started
//! still runs, and the records of those running executions. It asks `model::schedule::
//! decide` what to do whenever something changed (a wake from the `ScheduleTimer`, a run's
//! end, a command), and does it: waits (one `WakeAt` to the shared timer, no timer of its
//! own), journals what a policy recorded (with the execution rows in the same
//! transaction), or fires: the Engine creates the run and journals it with the
//! schedule's `Fired` and the execution row in ONE append (`FireRun`), so a crash
//! never leaves a run without its row or a row without its run.
//! Its runs are tasks it owns (the Engine tells it `OwnedTaskEnded`) or pipelines (the
//! Engine tells it `PipelineRunEnded`) or loops (`LoopRunEnded`); each end moves the execution row to its final
//! status.
//! Must never: read the machine's clock (it reads the engine's `Clock`), create tasks
//! itself, or poll its runs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::entity::{EntityActor, EntityCore, EntityEnded, Lifecycle, OwnedTaskEnded};
use crate::error::EngineError;
use crate::journal::{Append, Store};
use crate::model::clock::Clock;
use crate::model::schedule::{
    self, Decision, DueContext, ExecutionEvent, ExecutionRecord, ExecutionStatus, FirePlan,
    ScheduleEvent, ScheduleRecord,
};
use crate::model::{Entity, Priority, Transition};
use crate::schedule_timer::{Forget, ScheduleTimer, Wake, WakeAt};

/// When a fire could not be journaled (disk full), try again after this.
const FIRE_RETRY: Duration = Duration::from_secs(1);

/// What a schedule's fire creates: one task's request (stored as the schedule's
/// `template`). A pipeline's template is `PipelineTemplate`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskTemplate {
    pub prompt: String,
    pub priority: Priority,
    pub agent: Option<String>,
    pub working_directory: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
}

/// A scheduled pipeline's steps.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PipelineTemplate {
    pub steps: Vec<TaskTemplate>,
}

/// The Engine creates the run of `plan` and journals it with the schedule's events and
/// the execution row, in one append; answers the schedule's new record and the row.
#[derive(Message)]
#[rtype(result = "Result<(ScheduleRecord, ExecutionRecord), EngineError>")]
pub struct FireRun {
    pub schedule: ScheduleRecord,
    pub plan: FirePlan,
    pub execution_id: String,
    /// `cancelOther`: the running executions to cancel once the new run is durable.
    pub cancel: Vec<ExecutionRecord>,
}

/// A pipeline a schedule launched ended.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct PipelineRunEnded {
    pub pipeline_id: String,
    pub status: ExecutionStatus,
    pub reason: Option<String>,
}

/// A loop a schedule launched ended.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct LoopRunEnded {
    pub loop_id: String,
    pub status: ExecutionStatus,
    pub reason: Option<String>,
}

/// A command on the schedule (pause, resume, cancel, run now).
#[derive(Debug, Clone)]
pub enum Command {
    Pause,
    Resume,
    Cancel { reason: Option<String> },
    Trigger,
}

/// Answers the schedule's record after the command, and (for a cancel) the executions
/// that were running, whose tasks `cancelTasks` stops.
#[derive(Message)]
#[rtype(result = "Result<(ScheduleRecord, Vec<ExecutionRecord>), EngineError>")]
pub struct ScheduleCommand(pub Command);

/// What every schedule actor shares.
#[derive(Clone)]
pub struct ScheduleDeps {
    pub journal: Recipient<Append>,
    pub registry: Recipient<EntityEnded>,
    pub fire: Recipient<FireRun>,
    pub timer: Addr<ScheduleTimer>,
    pub clock: Arc<dyn Clock>,
    pub grace_ms: i64,
    pub store: Store,
}

type CommandReply = oneshot::Sender<Result<(ScheduleRecord, Vec<ExecutionRecord>), EngineError>>;

pub struct ScheduleActor {
    core: EntityCore<ScheduleRecord>,
    deps: ScheduleDeps,
    /// The running executions, by id; `None` until read from the journal.
    runs: Option<HashMap<String, ExecutionRecord>>,
    /// A fire or a read is under way: wakes wait for it (`ctx.wait` already orders
    /// messages; this only avoids a second read of the followed schedule).
    stepping: bool,
}

/// An execution that ended: its id, final status and why.
type EndedRun = (String, ExecutionStatus, Option<String>);

impl ScheduleActor {
    /// A schedule just created (it has no runs).
    pub fn new(record: ScheduleRecord, deps: ScheduleDeps) -> ScheduleActor {
        let runs = record.running.is_empty().then(HashMap::new);
        ScheduleActor {
            core: EntityCore::new(
                record,
                deps.journal.clone(),
                deps.registry.clone(),
                deps.store.clone(),
            ),
            deps,
            runs,
            stepping: false,
        }
    }

    fn id(&self) -> String {
        self.core.record.id.clone()
    }

    /// Reads the running executions and the states of what they launched; ends those
    /// whose run ended while no daemon ran.
    fn read_runs(&mut self, ctx: &mut Context<Self>) {
        let store = self.deps.store.clone();
        let ids = self.core.record.running.clone();
        let read = async move {
            tokio::task::spawn_blocking(move || {
                let runs = store.runs_by_id(&ids)?;
                let mut ended = Vec::new();
                for run in &runs {
                    let launched =
                        run.task_id.is_some() || run.loop_id.is_some() || run.pipeline_id.is_some();
                    let end = if launched {
                        store.end_of_run(run)?
                    } else {
                        Some((ExecutionStatus::Failed, Some("it launched nothing".into())))
                    };
                    if let Some((status, reason)) = end {
                        ended.push((run.id.clone(), status, reason));
                    }
                }
                Ok::<_, rusqlite::Error>((runs, ended))
            })
            .await
        };
        ctx.wait(read.into_actor(self).map(|res, act, ctx| {
            let (runs, ended) = match res {
                Ok(Ok(found)) => found,
                other => {
                    tracing::error!(schedule = %act.id(), ?other, "could not read the schedule's runs");
                    return ctx.stop();
                }
            };
            act.runs = Some(runs.into_iter().map(|r| (r.id.clone(), r)).collect());
            act.end_runs(ended, ctx);
        }));
    }

    /// Journals the end of each `(execution, status, reason)`, then steps.
    fn end_runs(&mut self, ended: Vec<EndedRun>, ctx: &mut Context<Self>) {
        let at = self.deps.clock.now_ms();
        let mut events = Vec::new();
        let mut joint = Vec::new();
        let mut finals = Vec::new();
        for (execution_id, status, reason) in ended {
            let Some(run) = self.runs.as_ref().and_then(|r| r.get(&execution_id)) else {
                continue;
            };
            let event = ExecutionEvent::Ended { at, status, reason };
            match ExecutionRecord::apply(Some(run), &event) {
                Ok(next) => {
                    joint.push(ExecutionRecord::transition(event, next.clone()));
                    finals.push(next);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "execution already ended");
                    continue;
                }
            }
            events.push(ScheduleEvent::ExecutionEnded {
                at,
                execution_id,
                status,
            });
        }
        if events.is_empty() {
            return self.step(ctx);
        }
        self.commit(events, joint, ctx, move |act, ctx, res| {
            match res {
                Ok(()) => {
                    if let Some(runs) = &mut act.runs {
                        for f in finals {
                            runs.remove(&f.id);
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(schedule = %act.id(), error = %e, "could not record a run's end; reloading");
                    return ctx.stop();
                }
            }
            act.step(ctx);
        });
    }

    /// Asks the model what to do now, reading the followed schedule's latest run first
    /// when there is one.
    fn step(&mut self, ctx: &mut Context<Self>) {
        if self.runs.is_none() || self.stepping {
            return;
        }
        let record = &self.core.record;
        if record.status.is_finished() {
            self.deps.timer.do_send(Forget { id: self.id() });
            if record.running.is_empty() {
                self.end(ctx);
            }
            return;
        }
        let Some(followed) = record.after_schedule_id.clone() else {
            return self.decide(None, ctx);
        };
        self.stepping = true;
        let store = self.deps.store.clone();
        let read =
            async move { tokio::task::spawn_blocking(move || store.latest_run(&followed)).await };
        ctx.wait(read.into_actor(self).map(|res, act, ctx| {
            act.stepping = false;
            match res {
                Ok(Ok(latest)) => act.decide(latest.as_ref(), ctx),
                other => {
                    tracing::error!(schedule = %act.id(), ?other, "could not read the followed schedule; retrying");
                    ctx.run_later(FIRE_RETRY, |act, ctx| act.step(ctx));
                }
            }
        }));
    }

    fn decide(&mut self, followed: Option<&ExecutionRecord>, ctx: &mut Context<Self>) {
        let due = DueContext {
            now: self.deps.clock.now_ms(),
            grace_ms: self.deps.grace_ms,
            followed,
        };
        match schedule::decide(&self.core.record, &due) {
            Decision::Idle => self.deps.timer.do_send(Forget { id: self.id() }),
            Decision::WaitUntil(at) => self.deps.timer.do_send(WakeAt {
                id: self.id(),
                at,
                target: ctx.address().recipient(),
            }),
            Decision::Record(events) => self.record_events(events, ctx),
            Decision::Fire(plan) => self.fire(*plan, ctx),
        }
    }

    /// Journals what a policy decided, with the execution rows it leaves.
    fn record_events(&mut self, events: Vec<ScheduleEvent>, ctx: &mut Context<Self>) {
        let id = self.id();
        let joint: Vec<Transition> = events
            .iter()
            .filter_map(|e| {
                let run_id = format!("run-{}", uuid::Uuid::now_v7());
                schedule::execution_for(&id, &run_id, e)
            })
            .map(|row| {
                ExecutionRecord::transition(
                    ExecutionEvent::Recorded {
                        execution: Box::new(row.clone()),
                    },
                    row,
                )
            })
            .collect();
        self.commit(events, joint, ctx, |act, ctx, res| match res {
            Ok(()) => act.step(ctx),
            Err(e) => {
                tracing::error!(schedule = %act.id(), error = %e, "could not journal the schedule's decision; retrying");
                ctx.run_later(FIRE_RETRY, |act, ctx| act.step(ctx));
            }
        });
    }

    fn fire(&mut self, plan: FirePlan, ctx: &mut Context<Self>) {
        let cancel = plan
            .cancel_running
            .iter()
            .filter_map(|id| self.runs.as_ref().and_then(|r| r.get(id)).cloned())
            .collect();
        let req = self.deps.fire.send(FireRun {
            schedule: self.core.record.clone(),
            plan,
            execution_id: format!("run-{}", uuid::Uuid::now_v7()),
            cancel,
        });
        ctx.wait(req.into_actor(self).map(|res, act, ctx| match res {
            Ok(Ok((record, run))) => {
                act.adopt(record, Some(run));
                act.step(ctx);
            }
            other => {
                tracing::error!(schedule = %act.id(), ?other, "could not fire; retrying");
                ctx.run_later(FIRE_RETRY, |act, ctx| act.step(ctx));
            }
        }));
    }

    fn adopt(&mut self, record: ScheduleRecord, run: Option<ExecutionRecord>) {
        self.core.record = record;
        if let (Some(runs), Some(run)) = (&mut self.runs, run)
            && self.core.record.running.contains(&run.id)
        {
            runs.insert(run.id.clone(), run);
        }
    }

    fn command(&mut self, command: Command, reply: CommandReply, ctx: &mut Context<Self>) {
        let now = self.deps.clock.now_ms();
        let s = &self.core.record;
        let planned = match &command {
            Command::Pause => schedule::plan_pause(s, now),
            Command::Resume => schedule::plan_resume(s, now),
            Command::Cancel { reason } => schedule::plan_cancel(s, now, reason.as_deref()),
            Command::Trigger => {
                return match schedule::plan_manual_fire(s, now) {
                    Err(e) => {
                        let _ = reply.send(Err(EngineError::InvalidInput(e.to_string())));
                    }
                    Ok(plan) => {
                        let req = self.deps.fire.send(FireRun {
                            schedule: self.core.record.clone(),
                            plan,
                            execution_id: format!("run-{}", uuid::Uuid::now_v7()),
                            cancel: Vec::new(),
                        });
                        ctx.wait(req.into_actor(self).map(move |res, act, ctx| {
                            let res = match res {
                                Ok(Ok((record, run))) => {
                                    act.adopt(record, Some(run.clone()));
                                    Ok((act.core.record.clone(), vec![run]))
                                }
                                Ok(Err(e)) => Err(e),
                                Err(e) => Err(e.into()),
                            };
                            let _ = reply.send(res);
                            act.step(ctx);
                        }));
                    }
                };
            }
        };
        let event = match planned {
            Ok(e) => e,
            Err(e) => {
                let _ = reply.send(Err(EngineError::InvalidInput(e.to_string())));
                return;
            }
        };
        let running: Vec<ExecutionRecord> = self
            .runs
            .as_ref()
            .map(|r| r.values().cloned().collect())
            .unwrap_or_default();
        self.commit(vec![event], Vec::new(), ctx, move |act, ctx, res| {
            let _ = reply.send(res.map(|()| (act.core.record.clone(), running)));
            act.step(ctx);
        });
    }
}

impl EntityActor for ScheduleActor {
    type Entity = ScheduleRecord;

    fn core(&self) -> &EntityCore<ScheduleRecord> {
        &self.core
    }

    fn core_mut(&mut self) -> &mut EntityCore<ScheduleRecord> {
        &mut self.core
    }

    fn resume(&mut self, ctx: &mut Context<Self>) {
        if self.core.record.is_terminal() {
            return self.end(ctx);
        }
        match self.runs {
            None => self.read_runs(ctx),
            Some(_) => self.step(ctx),
        }
    }

    fn ending(&mut self, _ctx: &mut Context<Self>) {
        self.deps.timer.do_send(Forget { id: self.id() });
    }
}

impl Actor for ScheduleActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.start_entity(ctx);
    }
}

impl Supervised for ScheduleActor {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        self.restart_entity();
        self.runs = None;
        self.stepping = false;
    }
}

impl Handler<Wake> for ScheduleActor {
    type Result = ();

    fn handle(&mut self, _msg: Wake, ctx: &mut Context<Self>) {
        self.step(ctx);
    }
}

impl Handler<OwnedTaskEnded> for ScheduleActor {
    type Result = ();

    fn handle(&mut self, msg: OwnedTaskEnded, ctx: &mut Context<Self>) {
        let Some(runs) = &self.runs else { return };
        // An owned task is told only once it has ended.
        let status = ExecutionStatus::of_task(msg.status).unwrap_or(ExecutionStatus::Failed);
        let ended: Vec<_> = runs
            .values()
            .filter(|r| r.task_id.as_deref() == Some(&msg.task_id) && r.pipeline_id.is_none())
            .map(|r| (r.id.clone(), status, msg.reason.clone()))
            .collect();
        self.end_runs(ended, ctx);
    }
}

impl Handler<PipelineRunEnded> for ScheduleActor {
    type Result = ();

    fn handle(&mut self, msg: PipelineRunEnded, ctx: &mut Context<Self>) {
        let Some(runs) = &self.runs else { return };
        let ended: Vec<_> = runs
            .values()
            .filter(|r| r.pipeline_id.as_deref() == Some(&msg.pipeline_id))
            .map(|r| (r.id.clone(), msg.status, msg.reason.clone()))
            .collect();
        self.end_runs(ended, ctx);
    }
}

impl Handler<LoopRunEnded> for ScheduleActor {
    type Result = ();

    fn handle(&mut self, msg: LoopRunEnded, ctx: &mut Context<Self>) {
        let Some(runs) = &self.runs else { return };
        let ended: Vec<_> = runs
            .values()
            .filter(|r| r.loop_id.as_deref() == Some(&msg.loop_id))
            .map(|r| (r.id.clone(), msg.status, msg.reason.clone()))
            .collect();
        self.end_runs(ended, ctx);
    }
}

impl Handler<ScheduleCommand> for ScheduleActor {
    type Result = ResponseFuture<Result<(ScheduleRecord, Vec<ExecutionRecord>), EngineError>>;

    fn handle(&mut self, msg: ScheduleCommand, ctx: &mut Context<Self>) -> Self::Result {
        let (reply, answer) = oneshot::channel();
        self.command(msg.0, reply, ctx);
        Box::pin(async move {
            answer.await.unwrap_or_else(|_| {
                Err(EngineError::Internal(
                    "the schedule stopped before answering".into(),
                ))
            })
        })
    }
}
