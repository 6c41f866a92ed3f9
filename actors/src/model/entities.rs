//! How each kind is an `Entity`: its kind, its status as stored, its state machine and
//! its place in the kind-tagged enums.
//!
//! Owns: one `impl Entity` per kind (the schedule's two are in `schedule/entity.rs`).
//! Must never: hold rules: each impl only points at its kind's own `apply`.

use super::entity::{Entity, EntityKind, InvalidTransition, entity_glue};
use super::loops::{self, LoopEvent, LoopRecord};
use super::pipeline::{self, PipelineEvent, PipelineRecord};
use super::task::{self, TaskEvent, TaskRecord};

impl Entity for TaskRecord {
    const KIND: EntityKind = EntityKind::Task;
    type Event = TaskEvent;
    entity_glue!(Task);

    fn is_terminal(&self) -> bool {
        self.status.is_terminal()
    }

    fn apply(prev: Option<&Self>, event: &TaskEvent) -> Result<Self, InvalidTransition> {
        task::apply(prev, event)
    }
}

impl Entity for PipelineRecord {
    const KIND: EntityKind = EntityKind::Pipeline;
    type Event = PipelineEvent;
    entity_glue!(Pipeline);

    fn is_terminal(&self) -> bool {
        self.status.is_terminal()
    }

    fn apply(prev: Option<&Self>, event: &PipelineEvent) -> Result<Self, InvalidTransition> {
        pipeline::apply(prev, event)
    }
}

impl Entity for LoopRecord {
    const KIND: EntityKind = EntityKind::Loop;
    type Event = LoopEvent;
    entity_glue!(Loop);

    fn is_terminal(&self) -> bool {
        self.status.is_terminal()
    }

    fn apply(prev: Option<&Self>, event: &LoopEvent) -> Result<Self, InvalidTransition> {
        loops::apply(prev, event).map_err(|e| InvalidTransition {
            kind: EntityKind::Loop,
            id: e.loop_id,
            event: e.event,
            from: format!("{} ({})", e.from, e.why),
        })
    }
}
