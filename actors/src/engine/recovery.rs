//! Recovery at start: every unfinished entity gets its actor back, one function per
//! kind, owners before the tasks they own (so no task's end finds its owner missing).
//!
//! Owns: reading what is unfinished from the journal (off the actor thread), after the
//! shims of the last daemon that had not heard their start was journaled have recorded
//! who they are (the handover lock, see `agents::channel`); rebuilding the dependency
//! graph from it, and the `RecoveryGate` that reads wait on.
//! Must never: let a request in before recovery finished (the handler is atomic), or
//! let a read show a state that recovery is about to replace: a task journaled
//! `running` whose agent ended while no daemon ran is shown only once its end is
//! journaled (issue 11, point 15).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::{broadcast, watch};

use super::Engine;
use crate::agents::channel;
use crate::agents::run_dir::{RunDir, is_same_process_alive};
use crate::error::EngineError;
use crate::journal::Committed;
use crate::model::dag::{DependencyState, Resolution, classify};
use crate::model::loops::LoopRecord;
use crate::model::{PipelineRecord, Record, TaskRecord, TaskStatus};
use crate::pipeline::PipelineActor;

/// The longest reads wait for the ends of runs that finished while no daemon ran; past
/// it they are served (and the log says which tasks had not settled).
const SETTLE_LIMIT: Duration = Duration::from_secs(30);

/// The longest recovery waits for the last daemon's shims to let the handover lock go;
/// each needs a few system calls once its daemon is gone, unless it is stopped.
const HANDOVER_LIMIT: Duration = Duration::from_secs(10);

/// Open once recovery has settled: every unfinished entity has its actor again, and
/// every task journaled `running` whose agent is gone has its end (or its requeue)
/// journaled. Until then the store still says `running` of a run that is over.
#[derive(Clone)]
pub struct RecoveryGate(watch::Receiver<bool>);

impl RecoveryGate {
    pub(super) fn new(rx: watch::Receiver<bool>) -> RecoveryGate {
        RecoveryGate(rx)
    }

    /// Returns once recovery has settled (at once afterwards, or if the engine is gone).
    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|open| *open).await;
    }
}

/// Bring every unfinished entity back to life. Sent once, at start; answers how many
/// tasks were recovered.
#[derive(Message)]
#[rtype(result = "Result<usize, EngineError>")]
pub struct Recover;

/// What recovery reads from the journal.
struct Unfinished {
    schedules: Vec<crate::model::schedule::ScheduleRecord>,
    pipelines: Vec<PipelineRecord>,
    loops: Vec<LoopRecord>,
    tasks: Vec<TaskRecord>,
    /// The finished dependencies of blocked tasks.
    finished_deps: Vec<TaskRecord>,
    /// Tasks journaled `running` whose shim is gone: their actors journal what
    /// happened, and reads wait for that.
    ended_away: HashSet<String>,
}

/// Whether the run of a task journaled `running` is over: its exit record is written
/// (the shim may still be exiting), or its shim is gone (or was never recorded).
fn ended_while_away(t: &TaskRecord, runs_root: &Path) -> bool {
    t.status == TaskStatus::Running
        && (RunDir::new(runs_root, &t.id).has_exit()
            || match (t.shim_pid, t.shim_start_time) {
                (Some(pid), Some(start)) => !is_same_process_alive(pid, start),
                _ => true,
            })
}

impl Handler<Recover> for Engine {
    // Atomic: the engine handles nothing else until every unfinished entity has its
    // actor again, so a cancel that arrives meanwhile finds it live, not "finished".
    type Result = AtomicResponse<Self, Result<usize, EngineError>>;

    fn handle(&mut self, _msg: Recover, _ctx: &mut Context<Self>) -> Self::Result {
        let store = self.store.clone();
        let runs_root = self.runs_root.clone();
        let read = async move {
            tokio::task::spawn_blocking(move || {
                match channel::wait_for_handover(&channel::handover_lock(&runs_root), HANDOVER_LIMIT) {
                    Ok(true) => {}
                    Ok(false) => tracing::warn!(
                        "a shim of the last daemon held the handover lock for {} s; recovering without it (a task it runs may run again)",
                        HANDOVER_LIMIT.as_secs()
                    ),
                    Err(e) => tracing::warn!(error = %e, "cannot take the handover lock; recovering without it"),
                }
                let schedules = store.live_schedules()?;
                let pipelines = store.live_pipelines()?;
                let loops = store.live_loops()?;
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
                let ended_away = tasks
                    .iter()
                    .filter(|t| ended_while_away(t, &runs_root))
                    .map(|t| t.id.clone())
                    .collect();
                Ok::<_, rusqlite::Error>(Unfinished {
                    schedules,
                    pipelines,
                    loops,
                    tasks,
                    finished_deps,
                    ended_away,
                })
            })
            .await
            .map_err(|e| EngineError::Internal(e.to_string()))?
            .map_err(|e| EngineError::Store(e.to_string(), "beat.db".into()))
        };
        AtomicResponse::new(Box::pin(read.into_actor(self).map(|res, act, ctx| {
            let unfinished = match res {
                Ok(u) => u,
                Err(e) => {
                    // Nothing recovered: reads show the journal as it is.
                    act.recovered.send_replace(true);
                    return Err(e);
                }
            };
            // Subscribed before any actor exists, so no end they journal is missed.
            let committed = act.writer.subscribe();
            // Owners first: schedules, then pipelines, then tasks.
            for s in unfinished.schedules {
                act.spawn_schedule_actor(s, ctx);
            }
            act.recover_pipelines(unfinished.pipelines, ctx);
            act.recover_loops(unfinished.loops, ctx);
            let count = act.recover_tasks(unfinished.tasks, unfinished.finished_deps, ctx);
            actix::spawn(settle(
                committed,
                unfinished.ended_away,
                act.recovered.clone(),
            ));
            Ok(count)
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

    /// Running and paused loops: each reads its awaited tasks when it starts.
    fn recover_loops(&mut self, loops: Vec<LoopRecord>, ctx: &mut Context<Self>) {
        for l in loops {
            self.spawn_loop_actor(l, ctx);
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

/// Opens the gate once every task of `waiting` has been journaled in a state other than
/// `running` (or after `SETTLE_LIMIT`).
async fn settle(
    mut committed: broadcast::Receiver<Committed>,
    mut waiting: HashSet<String>,
    gate: Arc<watch::Sender<bool>>,
) {
    let limit = tokio::time::sleep(SETTLE_LIMIT);
    tokio::pin!(limit);
    while !waiting.is_empty() {
        tokio::select! {
            record = committed.recv() => match record {
                Ok(Record::Task(t)) if t.status != TaskStatus::Running => {
                    waiting.remove(&t.id);
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "recovery missed commits; serving reads now");
                    break;
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            _ = &mut limit => {
                tracing::warn!(tasks = ?waiting, "runs that ended while no daemon ran are not journaled yet; serving reads anyway");
                break;
            }
        }
    }
    gate.send_replace(true);
}
