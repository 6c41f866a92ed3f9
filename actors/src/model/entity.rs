//! What every journaled entity kind has in common: a kind, an id, a record, events, and
//! a pure `apply`; and the kind-tagged `Transition`, `Event` and `Record` that the
//! journal carries, so that one append may hold transitions of several kinds.
//!
//! Owns: the `Entity` trait and the kind-tagged enums (`EntityKind`, `EntityRef` and
//! `InvalidTransition` are in `kind.rs`, which the kinds' files import instead of this
//! one, so that no kind depends on the enums that list every kind).
//! Must never: know how an entity is stored or run. Adding a kind adds one variant to
//! `EntityKind` (`kind.rs`), `Transition`, `Event` and `Record` here, its `impl Entity`
//! in `entities.rs`, and nothing else in `model/` besides the kind's own file.

use serde::{Serialize, de::DeserializeOwned};

use super::loops::{LoopEvent, LoopRecord};
use super::pipeline::{PipelineEvent, PipelineRecord};
use super::schedule::{ExecutionEvent, ExecutionRecord, ScheduleEvent, ScheduleRecord};
use super::task::{TaskEvent, TaskRecord};

pub use super::kind::{EntityKind, EntityRef, InvalidTransition};

/// An entity kind: its record, its events and its state machine.
pub trait Entity:
    Clone + std::fmt::Debug + PartialEq + Send + Unpin + 'static + Serialize + DeserializeOwned
{
    const KIND: EntityKind;
    type Event: Clone + std::fmt::Debug + PartialEq + Send + 'static + Serialize + DeserializeOwned;

    fn id(&self) -> &str;
    /// The status as stored (`running`, `completed`, …).
    fn status_name(&self) -> &'static str;
    /// Nothing more will happen to it: its actor may go.
    fn is_terminal(&self) -> bool;
    /// The record that `event` makes of `prev` (`None`: the entity does not exist yet).
    fn apply(prev: Option<&Self>, event: &Self::Event) -> Result<Self, InvalidTransition>;
    /// The transition's name in the `events` table.
    fn event_name(event: &Self::Event) -> &'static str;
    /// The journal's tagged form of one transition of this kind.
    fn transition(event: Self::Event, record: Self) -> Transition;
    /// This kind's record, if `record` is one.
    fn from_record(record: &Record) -> Option<&Self>;
    /// The kind-tagged form of this record.
    fn into_record(self) -> Record;

    fn entity_ref(&self) -> EntityRef {
        EntityRef::new(Self::KIND, self.id())
    }
}

/// The part of an `impl Entity` that only names the kind's variant: `id`, the stored
/// status and event names, and the kind-tagged `Transition` and `Record` forms. Every
/// record has an `id` field, a status with `as_str`, and events with `name`; what differs
/// between kinds (`is_terminal`, `apply`) is written in each impl.
macro_rules! entity_glue {
    ($variant:ident) => {
        fn id(&self) -> &str {
            &self.id
        }

        fn status_name(&self) -> &'static str {
            self.status.as_str()
        }

        fn event_name(event: &Self::Event) -> &'static str {
            event.name()
        }

        fn transition(event: Self::Event, record: Self) -> $crate::model::Transition {
            $crate::model::Transition::$variant(event, record)
        }

        fn into_record(self) -> $crate::model::Record {
            $crate::model::Record::$variant(self)
        }

        fn from_record(record: &$crate::model::Record) -> Option<&Self> {
            match record {
                $crate::model::Record::$variant(r) => Some(r),
                _ => None,
            }
        }
    };
}
pub(crate) use entity_glue;

/// One transition of one entity: the event and the record it produced.
// Not boxed: transitions are moved, not stored, and a box would cost an allocation per
// transition on the journal's hot path.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    Task(TaskEvent, TaskRecord),
    Pipeline(PipelineEvent, PipelineRecord),
    Loop(LoopEvent, LoopRecord),
    Schedule(ScheduleEvent, ScheduleRecord),
    ScheduleRun(ExecutionEvent, ExecutionRecord),
}

/// An event of any kind, as read back from the journal.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Task(TaskEvent),
    Pipeline(PipelineEvent),
    Loop(LoopEvent),
    Schedule(ScheduleEvent),
    ScheduleRun(ExecutionEvent),
}

/// A record of any kind.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Task(TaskRecord),
    Pipeline(PipelineRecord),
    Loop(LoopRecord),
    Schedule(ScheduleRecord),
    ScheduleRun(ExecutionRecord),
}

impl Transition {
    pub fn kind(&self) -> EntityKind {
        match self {
            Transition::Task(..) => EntityKind::Task,
            Transition::Pipeline(..) => EntityKind::Pipeline,
            Transition::Loop(..) => EntityKind::Loop,
            Transition::Schedule(..) => EntityKind::Schedule,
            Transition::ScheduleRun(..) => EntityKind::ScheduleRun,
        }
    }

    pub fn id(&self) -> &str {
        match self {
            Transition::Task(_, r) => &r.id,
            Transition::Pipeline(_, r) => &r.id,
            Transition::Loop(_, r) => &r.id,
            Transition::Schedule(_, r) => &r.id,
            Transition::ScheduleRun(_, r) => &r.id,
        }
    }

    pub fn event_name(&self) -> &'static str {
        match self {
            Transition::Task(e, _) => e.name(),
            Transition::Pipeline(e, _) => e.name(),
            Transition::Loop(e, _) => e.name(),
            Transition::Schedule(e, _) => e.name(),
            Transition::ScheduleRun(e, _) => e.name(),
        }
    }

    pub fn record(&self) -> Record {
        match self {
            Transition::Task(_, r) => Record::Task(r.clone()),
            Transition::Pipeline(_, r) => Record::Pipeline(r.clone()),
            Transition::Loop(_, r) => Record::Loop(r.clone()),
            Transition::Schedule(_, r) => Record::Schedule(r.clone()),
            Transition::ScheduleRun(_, r) => Record::ScheduleRun(r.clone()),
        }
    }
}

impl Event {
    pub fn kind(&self) -> EntityKind {
        match self {
            Event::Task(_) => EntityKind::Task,
            Event::Pipeline(_) => EntityKind::Pipeline,
            Event::Loop(_) => EntityKind::Loop,
            Event::Schedule(_) => EntityKind::Schedule,
            Event::ScheduleRun(_) => EntityKind::ScheduleRun,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Event::Task(e) => e.name(),
            Event::Pipeline(e) => e.name(),
            Event::Loop(e) => e.name(),
            Event::Schedule(e) => e.name(),
            Event::ScheduleRun(e) => e.name(),
        }
    }

    /// Reads a stored payload of kind `kind`.
    pub fn from_json(kind: EntityKind, payload: &str) -> serde_json::Result<Event> {
        Ok(match kind {
            EntityKind::Task => Event::Task(serde_json::from_str(payload)?),
            EntityKind::Pipeline => Event::Pipeline(serde_json::from_str(payload)?),
            EntityKind::Loop => Event::Loop(serde_json::from_str(payload)?),
            EntityKind::Schedule => Event::Schedule(serde_json::from_str(payload)?),
            EntityKind::ScheduleRun => Event::ScheduleRun(serde_json::from_str(payload)?),
        })
    }
}

impl Record {
    pub fn kind(&self) -> EntityKind {
        match self {
            Record::Task(_) => EntityKind::Task,
            Record::Pipeline(_) => EntityKind::Pipeline,
            Record::Loop(_) => EntityKind::Loop,
            Record::Schedule(_) => EntityKind::Schedule,
            Record::ScheduleRun(_) => EntityKind::ScheduleRun,
        }
    }

    pub fn id(&self) -> &str {
        match self {
            Record::Task(r) => &r.id,
            Record::Pipeline(r) => &r.id,
            Record::Loop(r) => &r.id,
            Record::Schedule(r) => &r.id,
            Record::ScheduleRun(r) => &r.id,
        }
    }

    /// The fold step for any kind: `prev` must be of the event's kind.
    pub fn apply(prev: Option<&Record>, event: &Event) -> Result<Record, InvalidTransition> {
        fn typed<E: Entity>(
            prev: Option<&Record>,
            event: &E::Event,
        ) -> Result<E, InvalidTransition> {
            match prev {
                None => E::apply(None, event),
                Some(p) => match E::from_record(p) {
                    Some(p) => E::apply(Some(p), event),
                    None => Err(InvalidTransition {
                        kind: E::KIND,
                        id: p.id().to_string(),
                        event: E::event_name(event),
                        from: format!("a {} record", p.kind()),
                    }),
                },
            }
        }
        Ok(match event {
            Event::Task(e) => Record::Task(typed::<TaskRecord>(prev, e)?),
            Event::Pipeline(e) => Record::Pipeline(typed::<PipelineRecord>(prev, e)?),
            Event::Loop(e) => Record::Loop(typed::<LoopRecord>(prev, e)?),
            Event::Schedule(e) => Record::Schedule(typed::<ScheduleRecord>(prev, e)?),
            Event::ScheduleRun(e) => Record::ScheduleRun(typed::<ExecutionRecord>(prev, e)?),
        })
    }
}
