//! How an entity is named: its kind, a reference to one, and the error of a transition
//! its state does not allow.
//!
//! Owns: `EntityKind`, `EntityRef`, `InvalidTransition`.
//! Must never: import an entity kind's file (each kind's file imports this one; the
//! kind-tagged enums that import every kind live in `entity.rs`).

use serde::{Deserialize, Serialize};

/// The kinds of entity the journal records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntityKind {
    Task,
    Pipeline,
    Loop,
    Schedule,
    /// One execution (occurrence) of a schedule: a row of `schedule_runs`.
    ScheduleRun,
}

impl EntityKind {
    pub const ALL: [EntityKind; 5] = [
        EntityKind::Task,
        EntityKind::Pipeline,
        EntityKind::Loop,
        EntityKind::Schedule,
        EntityKind::ScheduleRun,
    ];

    /// The kind's name in the `events` table and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            EntityKind::Task => "task",
            EntityKind::Pipeline => "pipeline",
            EntityKind::Loop => "loop",
            EntityKind::Schedule => "schedule",
            EntityKind::ScheduleRun => "schedule_run",
        }
    }

    pub fn parse(text: &str) -> Option<EntityKind> {
        EntityKind::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

impl std::fmt::Display for EntityKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entity, named by kind and id (a task's owner, say).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EntityRef {
    pub kind: EntityKind,
    pub id: String,
}

impl EntityRef {
    pub fn new(kind: EntityKind, id: impl Into<String>) -> EntityRef {
        EntityRef {
            kind,
            id: id.into(),
        }
    }
}

/// A transition that the current state does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {id}: cannot apply '{event}' in state {from}")]
pub struct InvalidTransition {
    pub kind: EntityKind,
    pub id: String,
    pub event: &'static str,
    pub from: String,
}
