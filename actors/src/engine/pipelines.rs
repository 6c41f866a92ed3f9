//! Pipelines: creation (its record and every step in one transaction) and cancel
//! (routed to the pipeline's actor with its live steps).
//!
//! Owns: turning a request into validated steps (pure checks first, then every step's
//! directory and agent in one hop to the blocking pool); the rules themselves (wiring, step
//! counts, when a pipeline ends) are `model::pipeline`'s.
//! Must never: decide a pipeline's state from here (its actor does).

use actix::prelude::*;

use super::validation::{Lineage, check};
use super::{Engine, NewTask};
use crate::blocking::off_actix_thread;
use crate::error::EngineError;
use crate::model::pipeline::{self, PipelineRecord};
use crate::model::{TaskRecord, now_ms};
use crate::pipeline::{CancelSteps, PipelineActor};

/// A pipeline: steps that run one after the other, each depending on the one before,
/// each waiting `delay` ms (if given) once it may start.
#[derive(Message)]
#[rtype(result = "Result<(PipelineRecord, Vec<TaskRecord>), EngineError>")]
pub struct CreatePipeline {
    pub steps: Vec<(NewTask, Option<u64>)>,
}

/// Cancel a pipeline and every unfinished step in one transaction; answers once its
/// running step stopped. A finished pipeline is refused, saying how it ended.
#[derive(Message)]
#[rtype(result = "Result<PipelineRecord, EngineError>")]
pub struct CancelPipeline {
    pub pipeline_id: String,
    pub reason: Option<String>,
}

impl Engine {
    pub(super) fn spawn_pipeline_actor(&mut self, actor: PipelineActor, record: PipelineRecord) {
        if self.live.is_live_pipeline(&record.id) {
            return;
        }
        let addr = actix::Supervisor::start(move |_| actor);
        self.live.add_pipeline(record.id, addr, record.steps);
    }
}

impl Handler<CreatePipeline> for Engine {
    type Result = ResponseActFuture<Self, Result<(PipelineRecord, Vec<TaskRecord>), EngineError>>;

    fn handle(&mut self, msg: CreatePipeline, _ctx: &mut Context<Self>) -> Self::Result {
        if let Err(e) = pipeline::check_step_count(msg.steps.len()) {
            return Box::pin(fut::ready(Err(EngineError::InvalidInput(e))));
        }
        let step_error =
            |i: usize, e: EngineError| EngineError::InvalidInput(format!("step {}: {e}", i + 1));
        if let Some((i, e)) = msg
            .steps
            .iter()
            .enumerate()
            .find_map(|(i, (step, _))| check(step).err().map(|e| (i, e)))
        {
            return Box::pin(fut::ready(Err(step_error(i, e))));
        }
        // Every step's directory and agent are checked in one hop, in order.
        let validator = self.validator();
        let built = off_actix_thread(move || {
            let mut records = Vec::with_capacity(msg.steps.len());
            let mut delays = Vec::with_capacity(msg.steps.len());
            for (i, (step, delay)) in msg.steps.into_iter().enumerate() {
                records.push(
                    validator
                        .build(step, Lineage::default())
                        .map_err(|e| step_error(i, e))?,
                );
                delays.push(delay);
            }
            Ok((records, delays))
        });
        Box::pin(built.into_actor(self).then(|built, act, _| {
            let (mut records, delays) = match built {
                Ok(built) => built,
                Err(e) => return Box::pin(fut::ready(Err(e))) as Created,
            };
            let pipeline_id = format!("pipeline-{}", uuid::Uuid::now_v7());
            let record = pipeline::wire(&pipeline_id, &mut records, &delays, now_ms());
            for r in &records {
                for dep in &r.depends_on {
                    act.graph.wait_for(&r.id, dep);
                }
            }
            Box::pin(
                act.admit_all(records, Some(record.clone()))
                    .map(move |res, _, _| res.map(|steps| (record, steps))),
            )
        }))
    }
}

/// What `CreatePipeline` answers: the pipeline and its steps.
type Created = ResponseActFuture<Engine, Result<(PipelineRecord, Vec<TaskRecord>), EngineError>>;

impl Handler<CancelPipeline> for Engine {
    type Result = ResponseFuture<Result<PipelineRecord, EngineError>>;

    fn handle(&mut self, msg: CancelPipeline, _ctx: &mut Context<Self>) -> Self::Result {
        let id = msg.pipeline_id;
        let reason = pipeline::cancel_reason(&id, msg.reason.as_deref());
        if let Some(actor) = self.live.pipeline(&id) {
            let steps = self.live.live_steps(&id);
            let req = actor.send(CancelSteps { reason, steps });
            return Box::pin(async move { req.await? });
        }
        let store = self.store.clone();
        Box::pin(async move {
            let found = tokio::task::spawn_blocking({
                let id = id.clone();
                move || store.pipeline(&id)
            })
            .await
            .map_err(|e| EngineError::Internal(e.to_string()))?
            .map_err(|e| EngineError::Store(e.to_string(), "beat.db".into()))?;
            match found {
                None => Err(EngineError::PipelineNotFound(id)),
                Some(p) => Err(EngineError::CannotCancelPipeline {
                    id,
                    status: p.status,
                }),
            }
        })
    }
}
