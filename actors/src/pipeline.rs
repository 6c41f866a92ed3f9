//! `PipelineActor`: one live pipeline.
//!
//! Owns: the pipeline's record while it runs, and what it knows of its steps' states.
//! Its steps are tasks it owns: the Engine tells it (`OwnedTaskEnded`) as each ends, and
//! the rules in `model::pipeline` decide when that ends the pipeline. A cancel is one
//! transaction: the pipeline's `Cancelled` with every unfinished step's cancel, each
//! step actor joining it (`JoinCancel`).
//! Must never: poll its steps, change a step's record itself (each step's actor adopts
//! its own transitions), or reach back into the engine (it answers messages).

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::entity::{EntityActor, EntityCore, EntityEnded, Lifecycle, OwnedTaskEnded};
use crate::error::EngineError;
use crate::journal::{Append, Store};
use crate::model::pipeline::{self, PipelineEvent, PipelineRecord};
use crate::model::{TaskRecord, TaskStatus, now_ms};
use crate::task::{JoinCancel, Joined};

/// Cancel the pipeline and every unfinished step, in one transaction. `steps` are the
/// live step actors (the Engine's registry knows them). Answers once every step ended.
#[derive(Message)]
#[rtype(result = "Result<PipelineRecord, EngineError>")]
pub struct CancelSteps {
    pub reason: String,
    pub steps: Vec<Recipient<JoinCancel>>,
}

type StepEnded = oneshot::Receiver<Result<TaskRecord, EngineError>>;
type CancelReply = oneshot::Sender<Result<(PipelineRecord, Vec<StepEnded>), EngineError>>;

pub struct PipelineActor {
    core: EntityCore<PipelineRecord>,
    /// Each step's id and status, in order; `None` until read from the journal (after
    /// a restart), a step's status `None` if it is unknown there.
    steps: Option<Vec<(String, Option<TaskStatus>)>>,
}

impl PipelineActor {
    /// A pipeline whose steps' states are known (just created).
    pub fn new(
        record: PipelineRecord,
        steps: &[TaskRecord],
        journal: Recipient<Append>,
        registry: Recipient<EntityEnded>,
        store: Store,
    ) -> PipelineActor {
        let steps = steps
            .iter()
            .map(|t| (t.id.clone(), Some(t.status)))
            .collect();
        PipelineActor {
            core: EntityCore::new(record, journal, registry, store),
            steps: Some(steps),
        }
    }

    /// A pipeline brought back from the journal: it reads its steps when it starts.
    pub fn recovered(
        record: PipelineRecord,
        journal: Recipient<Append>,
        registry: Recipient<EntityEnded>,
        store: Store,
    ) -> PipelineActor {
        PipelineActor {
            core: EntityCore::new(record, journal, registry, store),
            steps: None,
        }
    }

    /// Ends the pipeline if its steps' states say so.
    fn decide(&mut self, ctx: &mut Context<Self>) {
        let Some(steps) = &self.steps else { return };
        if let Some(event) = pipeline::on_steps(&self.core.record, steps, now_ms()) {
            self.finish(vec![event], ctx);
        }
    }

    fn read_steps(&mut self, ctx: &mut Context<Self>) {
        let store = self.core.store().clone();
        let id = self.core.record.id.clone();
        let read =
            async move { tokio::task::spawn_blocking(move || store.pipeline_steps(&id)).await };
        ctx.wait(read.into_actor(self).map(|res, act, ctx| {
            let found = match res {
                Ok(Ok(found)) => found,
                other => {
                    // Without its steps it cannot decide; a restart reads again.
                    tracing::error!(pipeline = %act.core.record.id, ?other, "could not read the pipeline's steps");
                    return ctx.stop();
                }
            };
            let steps = act
                .core
                .record
                .steps
                .iter()
                .map(|id| {
                    let status = found.iter().find(|t| &t.id == id).map(|t| t.status);
                    (id.clone(), status)
                })
                .collect();
            act.steps = Some(steps);
            act.decide(ctx);
        }));
    }
}

impl EntityActor for PipelineActor {
    type Entity = PipelineRecord;

    fn core(&self) -> &EntityCore<PipelineRecord> {
        &self.core
    }

    fn core_mut(&mut self) -> &mut EntityCore<PipelineRecord> {
        &mut self.core
    }

    fn resume(&mut self, ctx: &mut Context<Self>) {
        if self.core.record.status.is_terminal() {
            return self.end(ctx);
        }
        match self.steps {
            // A step may have ended while no daemon ran: the journal says.
            None => self.read_steps(ctx),
            Some(_) => self.decide(ctx),
        }
    }
}

impl Actor for PipelineActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.start_entity(ctx);
    }
}

impl Supervised for PipelineActor {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        self.restart_entity();
        self.steps = None;
    }
}

impl Handler<OwnedTaskEnded> for PipelineActor {
    type Result = ();

    fn handle(&mut self, msg: OwnedTaskEnded, ctx: &mut Context<Self>) {
        if let Some(steps) = &mut self.steps
            && let Some(step) = steps.iter_mut().find(|(id, _)| *id == msg.task_id)
        {
            step.1 = Some(msg.status);
        }
        self.decide(ctx);
    }
}

impl Handler<CancelSteps> for PipelineActor {
    type Result = ResponseFuture<Result<PipelineRecord, EngineError>>;

    fn handle(&mut self, msg: CancelSteps, ctx: &mut Context<Self>) -> Self::Result {
        let (reply, answer) = oneshot::channel();
        let record = &self.core.record;
        if record.status.is_terminal() {
            let _ = reply.send(Err(EngineError::CannotCancelPipeline {
                id: record.id.clone(),
                status: record.status,
            }));
        } else {
            self.cancel(msg, reply, ctx);
        }
        Box::pin(async move {
            let (record, ended) = answer.await.unwrap_or_else(|_| {
                Err(EngineError::Internal(
                    "the pipeline stopped before answering".into(),
                ))
            })?;
            // Answer once the running steps' agents stopped, as a task's cancel does.
            for step in ended {
                let _ = step.await;
            }
            Ok(record)
        })
    }
}

impl PipelineActor {
    /// Gathers each live step's cancel, commits them with the pipeline's in one
    /// transaction, and tells the steps whether it committed.
    fn cancel(&mut self, msg: CancelSteps, reply: CancelReply, ctx: &mut Context<Self>) {
        let mut verdicts = Vec::with_capacity(msg.steps.len());
        let mut asks = Vec::with_capacity(msg.steps.len());
        for step in &msg.steps {
            let (verdict, heard) = oneshot::channel();
            verdicts.push(verdict);
            asks.push(step.send(JoinCancel {
                reason: msg.reason.clone(),
                verdict: heard,
            }));
        }
        let gather = async move {
            let mut parts = Vec::with_capacity(asks.len());
            for ask in asks {
                parts.push(ask.await);
            }
            parts
        };
        let reason = msg.reason;
        ctx.wait(gather.into_actor(self).map(move |parts, act, ctx| {
            let mut joint = Vec::new();
            let mut ended = Vec::new();
            for part in parts {
                match part {
                    Ok(Ok(Joined {
                        transitions,
                        ended: e,
                    })) => {
                        joint.extend(transitions);
                        ended.extend(e);
                    }
                    // A step that stopped meanwhile has ended: nothing to cancel.
                    Err(MailboxError::Closed) => {}
                    Ok(Err(e)) => return refuse(verdicts, reply, e),
                    Err(e) => return refuse(verdicts, reply, e.into()),
                }
            }
            let event = PipelineEvent::Cancelled {
                at: now_ms(),
                reason,
            };
            act.commit(vec![event], joint, ctx, move |act, ctx, res| {
                let committed = res.is_ok();
                for verdict in verdicts {
                    let _ = verdict.send(committed);
                }
                match res {
                    Ok(()) => {
                        let _ = reply.send(Ok((act.core.record.clone(), ended)));
                        act.end(ctx);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            });
        }));
    }
}

fn refuse(verdicts: Vec<oneshot::Sender<bool>>, reply: CancelReply, e: EngineError) {
    for verdict in verdicts {
        let _ = verdict.send(false);
    }
    let _ = reply.send(Err(e));
}
