//! How each kind is an `Entity`: its kind, its status as stored, its state machine and
//! its place in the kind-tagged enums.
//!
//! Owns: one `impl Entity` per kind (the schedule's two are in `schedule/entity.rs`).
//! Must never: hold rules: each impl only points at its kind's own `apply`.

use super::entity::{Entity, EntityKind, InvalidTransition, Record, Transition};
use super::loops::{self, LoopEvent, LoopRecord};
use super::pipeline::{self, PipelineEvent, PipelineRecord};
use super::task::{self, TaskEvent, TaskRecord};

impl Entity for TaskRecord {
    const KIND: EntityKind = EntityKind::Task;
    type Event = TaskEvent;

    fn id(&self) -> &str {
        &self.id
    }

    fn status_name(&self) -> &'static str {
        self.status.as_str()
    }

    fn is_terminal(&self) -> bool {
        self.status.is_terminal()
    }

    fn apply(prev: Option<&Self>, event: &TaskEvent) -> Result<Self, InvalidTransition> {
        task::apply(prev, event)
    }

    fn event_name(event: &TaskEvent) -> &'static str {
        event.name()
    }

    fn transition(event: TaskEvent, record: Self) -> Transition {
        Transition::Task(event, record)
    }

    fn into_record(self) -> Record {
        Record::Task(self)
    }

    fn from_record(record: &Record) -> Option<&Self> {
        match record {
            Record::Task(t) => Some(t),
            _ => None,
        }
    }
}

impl Entity for PipelineRecord {
    const KIND: EntityKind = EntityKind::Pipeline;
    type Event = PipelineEvent;

    fn id(&self) -> &str {
        &self.id
    }

    fn status_name(&self) -> &'static str {
        self.status.as_str()
    }

    fn is_terminal(&self) -> bool {
        self.status.is_terminal()
    }

    fn apply(prev: Option<&Self>, event: &PipelineEvent) -> Result<Self, InvalidTransition> {
        pipeline::apply(prev, event)
    }

    fn event_name(event: &PipelineEvent) -> &'static str {
        event.name()
    }

    fn transition(event: PipelineEvent, record: Self) -> Transition {
        Transition::Pipeline(event, record)
    }

    fn into_record(self) -> Record {
        Record::Pipeline(self)
    }

    fn from_record(record: &Record) -> Option<&Self> {
        match record {
            Record::Pipeline(p) => Some(p),
            _ => None,
        }
    }
}

impl Entity for LoopRecord {
    const KIND: EntityKind = EntityKind::Loop;
    type Event = LoopEvent;

    fn id(&self) -> &str {
        &self.id
    }

    fn status_name(&self) -> &'static str {
        self.status.as_str()
    }

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

    fn event_name(event: &LoopEvent) -> &'static str {
        event.name()
    }

    fn transition(event: LoopEvent, record: Self) -> Transition {
        Transition::Loop(event, record)
    }

    fn into_record(self) -> Record {
        Record::Loop(self)
    }

    fn from_record(record: &Record) -> Option<&Self> {
        match record {
            Record::Loop(l) => Some(l),
            _ => None,
        }
    }
}
