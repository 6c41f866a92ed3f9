//! Admission of new tasks, and the live dependency graph.
//!
//! Owns: journaling new tasks (all or none, with a pipeline's own `Created` when they
//! are its steps) before their actors exist; classifying a new task's dependencies
//! through `model::dag::classify`, the one place that decides; handing each
//! dependency's outcome to the task it concerns.
//! Must never: acknowledge a task that is not durable, or leave a refused task in the
//! graph.

use actix::prelude::*;

use super::Engine;
use crate::error::EngineError;
use crate::governor::Prepare;
use crate::journal::Append;
use crate::model::dag::dependency_failed;
use crate::model::dag::{DependencyState, Resolution, classify};
use crate::model::task::Checkpoint;
use crate::model::{Entity, PipelineEvent, PipelineRecord, TaskEvent, TaskRecord, TaskStatus};
use crate::model::{apply, now_ms};
use crate::pipeline::PipelineActor;
use crate::task::Resolved;

impl Engine {
    /// Hands a dependency's outcome to the task it concerns (or keeps it until the
    /// task's actor exists).
    pub(super) fn deliver(&mut self, resolution: Resolution) {
        let task = match &resolution {
            Resolution::Ready { task } | Resolution::Doomed { task, .. } => task.clone(),
        };
        match self.live.task(&task) {
            Some(addr) => addr.do_send(Resolved(resolution)),
            None => self.early.entry(task).or_default().push(resolution),
        }
    }

    /// A refused submit leaves nothing behind.
    pub(super) fn forget(&mut self, id: &str) {
        self.graph.forget(id);
        self.early.remove(id);
    }

    /// Journals new tasks (all or none; with their pipeline's `Created`, if they are its
    /// steps), then brings their actors to life, the pipeline's first.
    pub(super) fn admit_all(
        &mut self,
        records: Vec<TaskRecord>,
        pipeline: Option<PipelineRecord>,
    ) -> ResponseActFuture<Self, Result<Vec<TaskRecord>, EngineError>> {
        self.admit_all_with(records, pipeline, Vec::new())
    }

    /// `admit_all`, with `joint` transitions of other entities in the same transaction
    /// (a schedule's fire and its execution row).
    pub(super) fn admit_all_with(
        &mut self,
        records: Vec<TaskRecord>,
        pipeline: Option<PipelineRecord>,
        joint: Vec<crate::model::Transition>,
    ) -> ResponseActFuture<Self, Result<Vec<TaskRecord>, EngineError>> {
        let mut transitions = Vec::with_capacity(records.len() + 1 + joint.len());
        for record in &records {
            let event = TaskEvent::Submitted {
                task: Box::new(record.clone()),
            };
            if let Err(e) = apply(None, &event) {
                return Box::pin(fut::ready(Err(e.into())));
            }
            transitions.push(TaskRecord::transition(event, record.clone()));
        }
        if let Some(p) = &pipeline {
            let event = PipelineEvent::Created {
                pipeline: Box::new(p.clone()),
            };
            if let Err(e) = PipelineRecord::apply(None, &event) {
                return Box::pin(fut::ready(Err(e.into())));
            }
            transitions.push(PipelineRecord::transition(event, p.clone()));
        }
        transitions.extend(joint);
        if records.iter().any(|r| r.status == TaskStatus::Queued) {
            self.governor.do_send(Prepare);
        }
        let commit = self.journal.send(Append::new(transitions));
        Box::pin(commit.into_actor(self).map(move |res, act, ctx| {
            let res = match res {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(EngineError::from(e)),
                Err(e) => Err(EngineError::from(e)),
            };
            if let Err(e) = res {
                for r in &records {
                    act.forget(&r.id);
                }
                return Err(e);
            }
            if let Some(p) = pipeline {
                act.spawn_pipeline_actor(
                    PipelineActor::new(
                        p.clone(),
                        &records,
                        act.journal.clone().recipient(),
                        ctx.address().recipient(),
                        act.store.clone(),
                    ),
                    p,
                );
            }
            for r in &records {
                act.spawn_new_task_actor(r.clone(), ctx);
                if r.status == TaskStatus::Blocked && !act.graph.is_waiting(&r.id) {
                    act.deliver(Resolution::Ready { task: r.id.clone() });
                }
            }
            Ok(records)
        }))
    }

    /// Journals a new task, then brings its actor to life, then answers.
    pub(super) fn admit(
        &mut self,
        record: TaskRecord,
    ) -> ResponseActFuture<Self, Result<TaskRecord, EngineError>> {
        Box::pin(
            self.admit_all(vec![record], None)
                .map(|res, _, _| res.map(|mut v| v.remove(0))),
        )
    }

    /// A task with dependencies: those still live are waited for from now on; the
    /// others are read from the journal, where they are finished (or unknown).
    pub(super) fn admit_with_dependencies(
        &mut self,
        mut record: TaskRecord,
    ) -> ResponseActFuture<Self, Result<TaskRecord, EngineError>> {
        record.status = TaskStatus::Blocked;
        let id = record.id.clone();
        let (live, other): (Vec<String>, Vec<String>) = record
            .depends_on
            .iter()
            .cloned()
            .partition(|d| self.live.is_live_task(d));
        for dep in &live {
            self.graph.wait_for(&id, dep);
        }
        let store = self.store.clone();
        let read = async move {
            tokio::task::spawn_blocking(move || store.tasks_by_id(&other))
                .await
                .map_err(|e| EngineError::Internal(e.to_string()))?
                .map_err(|e| EngineError::Store(e.to_string(), "beat.db".into()))
        };
        Box::pin(read.into_actor(self).then(move |res, act, _ctx| {
            let found = match res {
                Ok(found) => found,
                Err(e) => {
                    act.forget(&id);
                    return Box::pin(fut::ready(Err(e))) as ResponseActFuture<Self, _>;
                }
            };
            let mut classified = classify(&record.depends_on, |d| {
                if live.iter().any(|l| l == d) {
                    return DependencyState::Live;
                }
                match found.iter().find(|t| t.id == d) {
                    Some(t) => DependencyState::Finished {
                        status: t.status,
                        cascade_root: t.cascade_root.as_deref(),
                    },
                    None => DependencyState::Unknown,
                }
            });
            if !classified.unknown.is_empty() {
                act.forget(&id);
                return Box::pin(fut::ready(Err(EngineError::InvalidInput(format!(
                    "dependency {} not found: a task can only depend on tasks that exist (see `beat list`)",
                    classified.unknown.join(", ")
                )))));
            }
            for dep in classified.waiting.iter().filter(|d| !live.contains(d)) {
                act.graph.wait_for(&id, dep); // submitted, its actor not yet up
            }
            // A live dependency may have failed while the others were read.
            if classified.doom.is_none()
                && let Some(early) = act.early.get(&id)
            {
                classified.doom = early.iter().find_map(|r| match r {
                    Resolution::Doomed { dependency, root, status, .. } => {
                        Some((dependency.clone(), root.clone(), *status))
                    }
                    Resolution::Ready { .. } => None,
                });
            }
            if let Some((dependency, root, status)) = classified.doom {
                act.forget(&id);
                return act.admit_doomed(record.clone(), dependency, root, status);
            }
            // Every dependency has completed already: the task is queued from its first
            // commit (answered `queued`, never `blocked` then unblocked a moment later).
            // A continuation still unblocks in its actor, which reads the checkpoint
            // it continues from into its prompt; a delayed step waits as it must.
            let mut record = record.clone();
            if classified.waiting.is_empty()
                && !act.graph.is_waiting(&id)
                && record.continue_from.is_none()
                && record.start_delay.is_none()
            {
                record.status = TaskStatus::Queued;
            }
            act.admit(record)
        }))
    }

    /// A task whose dependency already failed: journaled, and cancelled in the same
    /// transaction, with the reason (the original left it waiting forever, spec W2).
    fn admit_doomed(
        &mut self,
        record: TaskRecord,
        dependency: String,
        root: String,
        status: TaskStatus,
    ) -> ResponseActFuture<Self, Result<TaskRecord, EngineError>> {
        let at = now_ms();
        let reason = dependency_failed(&dependency, &root, status);
        let events = [
            TaskEvent::Submitted {
                task: Box::new(record),
            },
            TaskEvent::DependencyFailed {
                at,
                reason: reason.clone(),
                dependency,
                root,
            },
            TaskEvent::Checkpointed {
                checkpoint: Box::new(Checkpoint {
                    checkpoint_type: TaskStatus::Cancelled,
                    error_summary: Some(reason),
                    created_at: at,
                    ..Default::default()
                }),
            },
        ];
        let mut transitions = Vec::new();
        let mut state: Option<TaskRecord> = None;
        for event in events {
            match apply(state.as_ref(), &event) {
                Ok(next) => {
                    transitions.push(TaskRecord::transition(event, next.clone()));
                    state = Some(next);
                }
                Err(e) => return Box::pin(fut::ready(Err(e.into()))),
            }
        }
        let Some(last) = state else {
            return Box::pin(fut::ready(Err(EngineError::Internal("no state".into()))));
        };
        let commit = self.journal.send(Append::new(transitions));
        Box::pin(commit.into_actor(self).map(move |res, _act, _| match res {
            Ok(Ok(())) => Ok(last),
            Ok(Err(e)) => Err(e.into()),
            Err(e) => Err(e.into()),
        }))
    }
}
