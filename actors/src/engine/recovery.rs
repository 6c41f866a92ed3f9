//! Recovery at start: every unfinished entity gets its actor back, one function per
//! kind, owners before the tasks they own (so no task's end finds its owner missing).
//!
//! Owns: reading what is unfinished from the journal (off the actor thread) and
//! rebuilding the dependency graph from it.
//! Must never: let a request in before recovery finished (the handler is atomic).

use std::collections::{HashMap, HashSet};

use actix::prelude::*;

use super::Engine;
use crate::error::EngineError;
use crate::model::dag::{DependencyState, Resolution, classify};
use crate::model::{PipelineRecord, TaskRecord, TaskStatus};
use crate::pipeline::PipelineActor;

/// Bring every unfinished entity back to life. Sent once, at start; answers how many
/// tasks were recovered.
#[derive(Message)]
#[rtype(result = "Result<usize, EngineError>")]
pub struct Recover;

/// What recovery reads from the journal.
struct Unfinished {
    schedules: Vec<crate::model::schedule::ScheduleRecord>,
    pipelines: Vec<PipelineRecord>,
    tasks: Vec<TaskRecord>,
    /// The finished dependencies of blocked tasks.
    finished_deps: Vec<TaskRecord>,
}

impl Handler<Recover> for Engine {
    // Atomic: the engine handles nothing else until every unfinished entity has its
    // actor again, so a cancel that arrives meanwhile finds it live, not "finished".
    type Result = AtomicResponse<Self, Result<usize, EngineError>>;

    fn handle(&mut self, _msg: Recover, _ctx: &mut Context<Self>) -> Self::Result {
        let store = self.store.clone();
        let read = async move {
            tokio::task::spawn_blocking(move || {
                let schedules = store.live_schedules()?;
                let pipelines = store.live_pipelines()?;
                let tasks = store.live_tasks()?;
                let live: HashSet<&String> = tasks.iter().map(|t| &t.id).collect();
                let finished: Vec<String> = tasks
                    .iter()
                    .filter(|t| t.status == TaskStatus::Blocked)
                    .flat_map(|t| t.depends_on.iter())
                    .filter(|d| !live.contains(d))
                    .cloned()
                    .collect();
                let finished_deps = store.tasks_by_id(&finished)?;
                Ok::<_, rusqlite::Error>(Unfinished {
                    schedules,
                    pipelines,
                    tasks,
                    finished_deps,
                })
            })
            .await
            .map_err(|e| EngineError::Internal(e.to_string()))?
            .map_err(|e| EngineError::Store(e.to_string(), "beat.db".into()))
        };
        AtomicResponse::new(Box::pin(read.into_actor(self).map(|res, act, ctx| {
            let unfinished = res?;
            // Owners first: schedules, then pipelines, then tasks.
            for s in unfinished.schedules {
                act.spawn_schedule_actor(s, ctx);
            }
            act.recover_pipelines(unfinished.pipelines, ctx);
            Ok(act.recover_tasks(unfinished.tasks, unfinished.finished_deps, ctx))
        })))
    }
}

impl Engine {
    /// Running pipelines: each reads its steps' states when it starts.
    fn recover_pipelines(&mut self, pipelines: Vec<PipelineRecord>, ctx: &mut Context<Self>) {
        for p in pipelines {
            let actor = PipelineActor::recovered(
                p.clone(),
                self.journal.clone().recipient(),
                ctx.address().recipient(),
                self.store.clone(),
            );
            self.spawn_pipeline_actor(actor, p);
        }
    }

    /// Unfinished tasks; blocked ones wait again for their live dependencies, or learn
    /// now that the others completed or failed.
    fn recover_tasks(
        &mut self,
        tasks: Vec<TaskRecord>,
        finished_deps: Vec<TaskRecord>,
        ctx: &mut Context<Self>,
    ) -> usize {
        let count = tasks.len();
        let live: HashSet<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
        let finished: HashMap<&str, &TaskRecord> =
            finished_deps.iter().map(|t| (t.id.as_str(), t)).collect();
        let mut outcomes = Vec::new();
        for task in tasks.iter().filter(|t| t.status == TaskStatus::Blocked) {
            let classified = classify(&task.depends_on, |d| {
                if live.contains(d) {
                    return DependencyState::Live;
                }
                match finished.get(d) {
                    Some(t) => DependencyState::Finished {
                        status: t.status,
                        cascade_root: t.cascade_root.as_deref(),
                    },
                    None => DependencyState::Unknown,
                }
            });
            for dep in &classified.waiting {
                self.graph.wait_for(&task.id, dep);
            }
            // A dependency missing from the journal can never complete.
            let doom = classified.doom.or_else(|| {
                classified
                    .unknown
                    .first()
                    .map(|d| (d.clone(), d.clone(), TaskStatus::Cancelled))
            });
            outcomes.push(match doom {
                Some((dependency, root, status)) => {
                    self.graph.forget(&task.id);
                    Some(Resolution::Doomed {
                        task: task.id.clone(),
                        dependency,
                        root,
                        status,
                    })
                }
                None if !self.graph.is_waiting(&task.id) => Some(Resolution::Ready {
                    task: task.id.clone(),
                }),
                None => None,
            });
        }
        for task in tasks {
            self.spawn_task_actor(task, ctx);
        }
        for r in outcomes.into_iter().flatten() {
            self.deliver(r);
        }
        count
    }
}
