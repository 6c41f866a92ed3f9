//! The registry of live entity actors, by kind.
//!
//! Owns: one address per live entity (a task's `TaskActor`, a pipeline's
//! `PipelineActor`; loops and schedules next), and the routing of a task's end to its
//! owner. An entity is registered when its first transition is durable (or when
//! recovery brings it back) and dropped when it tells the Engine it ended, so memory
//! follows live work.
//! Must never: hold an actor of a finished entity, or two actors of one entity.

use std::collections::HashMap;

use actix::prelude::*;

use crate::entity::OwnedTaskEnded;
use crate::loops::actor::LoopActor;
use crate::model::{EntityKind, EntityRef};
use crate::pipeline::PipelineActor;
use crate::schedule::ScheduleActor;
use crate::task::{JoinCancel, TaskActor};

/// A live pipeline and its steps' task ids.
struct LivePipeline {
    addr: Addr<PipelineActor>,
    steps: Vec<String>,
}

#[derive(Default)]
pub(super) struct Registry {
    tasks: HashMap<String, Addr<TaskActor>>,
    pipelines: HashMap<String, LivePipeline>,
    loops: HashMap<String, Addr<LoopActor>>,
    schedules: HashMap<String, Addr<ScheduleActor>>,
}

impl Registry {
    pub fn task(&self, id: &str) -> Option<&Addr<TaskActor>> {
        self.tasks.get(id)
    }

    pub fn is_live_task(&self, id: &str) -> bool {
        self.tasks.contains_key(id)
    }

    pub fn add_task(&mut self, id: String, addr: Addr<TaskActor>) {
        self.tasks.insert(id, addr);
    }

    pub fn remove_task(&mut self, id: &str) {
        self.tasks.remove(id);
    }

    pub fn pipeline(&self, id: &str) -> Option<&Addr<PipelineActor>> {
        self.pipelines.get(id).map(|p| &p.addr)
    }

    pub fn is_live_pipeline(&self, id: &str) -> bool {
        self.pipelines.contains_key(id)
    }

    pub fn add_pipeline(&mut self, id: String, addr: Addr<PipelineActor>, steps: Vec<String>) {
        self.pipelines.insert(id, LivePipeline { addr, steps });
    }

    pub fn remove_pipeline(&mut self, id: &str) {
        self.pipelines.remove(id);
    }

    pub fn eval_loop(&self, id: &str) -> Option<&Addr<LoopActor>> {
        self.loops.get(id)
    }

    pub fn add_loop(&mut self, id: String, addr: Addr<LoopActor>) {
        self.loops.insert(id, addr);
    }

    pub fn remove_loop(&mut self, id: &str) {
        self.loops.remove(id);
    }

    pub fn schedule(&self, id: &str) -> Option<&Addr<ScheduleActor>> {
        self.schedules.get(id)
    }

    pub fn add_schedule(&mut self, id: String, addr: Addr<ScheduleActor>) {
        self.schedules.insert(id, addr);
    }

    pub fn remove_schedule(&mut self, id: &str) {
        self.schedules.remove(id);
    }

    /// The last step of a live pipeline.
    pub fn pipeline_last_step(&self, pipeline: &str) -> Option<String> {
        self.pipelines
            .get(pipeline)
            .and_then(|p| p.steps.last().cloned())
    }

    /// The live step actors of a live pipeline, in order.
    pub fn live_steps(&self, pipeline: &str) -> Vec<Recipient<JoinCancel>> {
        self.pipelines
            .get(pipeline)
            .map(|p| {
                p.steps
                    .iter()
                    .filter_map(|s| self.tasks.get(s))
                    .map(|a| a.clone().recipient())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Tells a task's owner that the task ended (if the owner is live: a finished
    /// owner has nothing left to decide).
    pub fn tell_owner(&self, owner: &EntityRef, ended: OwnedTaskEnded) {
        match owner.kind {
            EntityKind::Pipeline => {
                if let Some(p) = self.pipelines.get(&owner.id) {
                    p.addr.do_send(ended);
                }
            }
            EntityKind::Loop => {
                if let Some(l) = self.loops.get(&owner.id) {
                    l.do_send(ended);
                }
            }
            EntityKind::Schedule => {
                if let Some(s) = self.schedules.get(&owner.id) {
                    s.do_send(ended);
                }
            }
            EntityKind::Task | EntityKind::ScheduleRun => {
                tracing::warn!(owner = %owner.id, "a task cannot own tasks; ignoring");
            }
        }
    }
}
