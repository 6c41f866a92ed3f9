//! Schedules and their executions as journaled entities (`Entity`): the glue between
//! `model::schedule`'s state machines and the journal's kind-tagged transitions.
//!
//! Owns: the two `Entity` implementations. Must never: hold a rule of its own (the
//! rules are `apply` and `apply_execution`).

use super::{
    ExecutionEvent, ExecutionRecord, ScheduleEvent, ScheduleRecord, apply, apply_execution,
};
use crate::model::entity::entity_glue;
use crate::model::{Entity, EntityKind, InvalidTransition};

impl Entity for ScheduleRecord {
    const KIND: EntityKind = EntityKind::Schedule;
    type Event = ScheduleEvent;
    entity_glue!(Schedule);

    /// A finished schedule whose runs still run stays live: it follows them to the end.
    fn is_terminal(&self) -> bool {
        self.status.is_finished() && self.running.is_empty()
    }

    fn apply(prev: Option<&Self>, event: &ScheduleEvent) -> Result<Self, InvalidTransition> {
        apply(prev, event).map_err(|e| InvalidTransition {
            kind: EntityKind::Schedule,
            id: e.schedule_id,
            event: e.event,
            from: e.from,
        })
    }
}

impl Entity for ExecutionRecord {
    const KIND: EntityKind = EntityKind::ScheduleRun;
    type Event = ExecutionEvent;
    entity_glue!(ScheduleRun);

    fn is_terminal(&self) -> bool {
        self.status.is_final()
    }

    fn apply(prev: Option<&Self>, event: &ExecutionEvent) -> Result<Self, InvalidTransition> {
        apply_execution(prev, event).map_err(|e| InvalidTransition {
            kind: EntityKind::ScheduleRun,
            id: e.execution_id,
            event: e.event,
            from: e.from,
        })
    }
}
