//! `Engine`: the front door of the actor system.
//!
//! Owns: the registry of live entity actors by kind (`registry.rs`), validation of new
//! work (`validation.rs`), the live dependency graph and the admission of tasks with
//! dependencies (`dependencies.rs`), pipelines (`pipelines.rs`), recovery at start,
//! one function per kind (`recovery.rs`), retention (`retention.rs`), and the routing
//! of requests from the front ends and of entity ends (to the graph and to the owner
//! of an ended task).
//! Must never: acknowledge a submit, cancel or retry before the journal committed it;
//! do blocking I/O on its own thread: reads go to `spawn_blocking`, and so does the
//! half of validation that stats the working directory and looks the agent's CLI up
//! (one hop per request, then the handler goes on with the engine's state as it is
//! after the hop). The actors it starts never call back into it except by the messages
//! it gave them recipients for.

mod dependencies;
mod loops;
mod pipelines;
mod recovery;
mod registry;
pub mod requests;
mod retention;
mod schedules;
mod task_watch;
pub mod validation;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use actix::prelude::*;

pub use self::loops::{
    CancelLoop, CreateLoop, PauseLoop, ResumeLoop, StartLoop, check_loop_request, prepare_loop,
};
pub use self::pipelines::{CancelPipeline, CreatePipeline};
pub use self::recovery::{Recover, RecoveryGate};
use self::registry::Registry;
pub use self::requests::{AdoptOwnedTasks, Cancel, NewTask, ReadTask};
pub use self::retention::{Prune, PruneReport};
pub use self::schedules::{CreateSchedule, ScheduleOp, ScheduleTarget};
use self::validation::{Lineage, again, check, validate_dependencies};
pub use self::validation::{
    MAX_DEPENDENCIES, MAX_OUTPUT_BUFFER, MAX_PROMPT_BYTES, MAX_TIMEOUT_MS, MIN_OUTPUT_BUFFER,
    MIN_TIMEOUT_MS, Validator, check_working_directory,
};
use crate::agents::programs::ProgramCache;
use crate::agents::{AgentPool, Launcher};
use crate::blocking::off_actix_thread;
use crate::entity::{EntityEnded, OwnedTaskEnded};
use crate::error::EngineError;
use crate::governor::ResourceGovernor;
use crate::journal::{Journal, JournalWriter, Store};
use crate::model::clock::Clock;
use crate::model::dag::{DependencyGraph, Resolution};
pub use crate::model::pipeline::STEPS as PIPELINE_STEPS;
use crate::model::{Record, TaskRecord, TaskStatus};
use crate::schedule::{LoopRunEnded, PipelineRunEnded};
use crate::schedule_timer::ScheduleTimer;
use crate::settings::{Settings, SettingsSource};
use crate::task::{CancelTask, CurrentRecord, TaskActor, TaskDeps};
pub use task_watch::{TaskUpdate, TaskWatch, Watching};

#[derive(Message)]
#[rtype(result = "Result<TaskRecord, EngineError>")]
pub struct Submit(pub NewTask);

/// Continue a finished task: a new task whose prompt carries the checkpoint, resuming
/// the agent's own session where the CLI can.
#[derive(Message)]
#[rtype(result = "Result<TaskRecord, EngineError>")]
pub struct Resume {
    pub task_id: String,
    pub additional_context: Option<String>,
}

#[derive(Message)]
#[rtype(result = "Result<TaskRecord, EngineError>")]
pub struct Retry {
    pub task_id: String,
}

pub struct Engine {
    journal: Addr<Journal>,
    governor: Addr<ResourceGovernor>,
    pool: Addr<AgentPool>,
    /// Where run folders live (`RunDir::new(runs_root, task_id)`).
    runs_root: Arc<Path>,
    settings: SettingsSource,
    store: Store,
    live: Registry,
    graph: DependencyGraph,
    /// Resolutions for tasks whose actor is not alive yet (being submitted).
    early: HashMap<String, Vec<Resolution>>,
    /// Committed records, for recovery to see the ends it waits for.
    writer: JournalWriter,
    /// Opened once recovery settled (`RecoveryGate`).
    recovered: Arc<tokio::sync::watch::Sender<bool>>,
    /// The wall clock schedules fire by (a test's clock in tests).
    clock: Arc<dyn Clock>,
    /// The one timer every schedule waits on.
    timer: Addr<ScheduleTimer>,
    /// Where validation last found each agent CLI (checked again at every use).
    programs: Arc<ProgramCache>,
}

/// The running engine's parts, for the front ends.
#[derive(Clone)]
pub struct EngineHandle {
    pub engine: Addr<Engine>,
    pub governor: Addr<ResourceGovernor>,
    pub store: Store,
    pub writer: JournalWriter,
    /// Waiting for one task's commits (WaitTask) without receiving every commit.
    pub tasks: TaskWatch,
    /// Reads of state wait on it: open once recovery has journaled what it found.
    pub recovered: RecoveryGate,
}

/// Paths and programs the engine needs from its host.
pub struct EngineConfig {
    pub db_path: PathBuf,
    pub runs_root: PathBuf,
    pub shim_command: Vec<std::ffi::OsString>,
    /// Forks shims without exec when the host started one (before its first thread).
    pub spawner: Option<Arc<crate::agents::spawner::Spawner>>,
    pub settings: SettingsSource,
    /// The wall clock schedules fire by: `SystemClock` in the daemon.
    pub clock: Arc<dyn Clock>,
}

impl Engine {
    /// Opens the journal (migrating it) and starts the actors. Call inside an actix
    /// system. Recovery is a separate message so that the host can serve requests
    /// that need no engine state while it runs.
    pub fn start(config: EngineConfig) -> Result<EngineHandle, EngineError> {
        let db = config.db_path.display().to_string();
        let conn = crate::journal::open_write_connection(&config.db_path)
            .map_err(|e| EngineError::Store(e.to_string(), db.clone()))?;
        std::fs::create_dir_all(&config.runs_root).map_err(|e| {
            EngineError::Store(e.to_string(), config.runs_root.display().to_string())
        })?;
        let writer = JournalWriter::start(conn, &config.db_path);
        let journal = Journal::new(writer.clone()).start();
        let governor = ResourceGovernor::new(config.settings.clone())
            .with_footprints_file(config.db_path.with_file_name("footprints.json"))
            .start();
        let store = Store::new(&config.db_path);
        let runs_root: Arc<Path> = config.runs_root.clone().into();
        let launcher = Launcher {
            runs_root: config.runs_root,
            shim_command: config.shim_command,
            spawner: config.spawner,
            base_env: std::env::vars_os().collect(),
        };
        // One cache of program lookups for validation and launching alike.
        let programs = Arc::new(ProgramCache::from_env());
        let pool = AgentPool::new(launcher, programs.clone(), config.settings.clone()).start();
        let (recovered, gate) = tokio::sync::watch::channel(false);
        let engine = Engine {
            journal,
            governor: governor.clone(),
            pool,
            runs_root,
            settings: config.settings,
            store: store.clone(),
            live: Registry::default(),
            graph: DependencyGraph::new(),
            early: HashMap::new(),
            writer: writer.clone(),
            recovered: Arc::new(recovered),
            timer: ScheduleTimer::new(config.clock.clone()).start(),
            clock: config.clock,
            programs,
        }
        .start();
        Ok(EngineHandle {
            engine,
            governor,
            store,
            tasks: TaskWatch::start(writer.subscribe()),
            writer,
            recovered: RecoveryGate::new(gate),
        })
    }

    fn task_deps(&self, ctx: &Context<Self>) -> TaskDeps {
        TaskDeps {
            journal: self.journal.clone().recipient(),
            registry: ctx.address().recipient(),
            governor: self.governor.clone(),
            pool: self.pool.clone(),
            runs_root: self.runs_root.clone(),
            settings: self.settings.clone(),
            store: self.store.clone(),
        }
    }

    fn spawn_task_actor(&mut self, record: TaskRecord, ctx: &Context<Self>) {
        self.spawn_task_actor_as(record, TaskActor::new, ctx)
    }

    /// For a task journaled as new a moment ago: its actor skips the look for an
    /// orphaned shim (none can exist), one blocking read less per task.
    fn spawn_new_task_actor(&mut self, record: TaskRecord, ctx: &Context<Self>) {
        self.spawn_task_actor_as(record, TaskActor::new_here, ctx)
    }

    fn spawn_task_actor_as(
        &mut self,
        record: TaskRecord,
        make: fn(TaskRecord, TaskDeps) -> TaskActor,
        ctx: &Context<Self>,
    ) {
        if self.live.is_live_task(&record.id) {
            return; // one actor per task, ever
        }
        let deps = self.task_deps(ctx);
        let id = record.id.clone();
        let addr = actix::Supervisor::start(move |_| make(record, deps));
        self.live.add_task(id.clone(), addr);
        for r in self.early.remove(&id).unwrap_or_default() {
            self.deliver(r);
        }
    }

    /// What validation takes onto the blocking pool: the settings of now and the cache
    /// of program lookups.
    fn validator(&self) -> Validator {
        Validator::new((self.settings)(), self.programs.clone())
    }

    /// Reads a finished task and admits the new task that `make` makes from it (retry
    /// and resume); a task that is not finished is refused with `refuse`. The read and
    /// the validation are one hop to the blocking pool.
    fn rerun(
        &mut self,
        task_id: String,
        refuse: fn(String, TaskStatus) -> EngineError,
        make: impl FnOnce(&TaskRecord, &Settings) -> (NewTask, Lineage) + Send + 'static,
    ) -> ResponseActFuture<Self, Result<TaskRecord, EngineError>> {
        let store = self.store.clone();
        let validator = self.validator();
        let built = off_actix_thread(move || {
            let t = store
                .task(&task_id)
                .map_err(|e| EngineError::Store(e.to_string(), "beat.db".into()))?
                .ok_or_else(|| EngineError::TaskNotFound(task_id.clone()))?;
            if !t.status.is_terminal() {
                return Err(refuse(task_id, t.status));
            }
            let (req, lineage) = make(&t, validator.settings());
            validator.build(req, lineage)
        });
        Box::pin(built.into_actor(self).then(|built, act, _| match built {
            Ok(record) => act.admit(record),
            Err(e) => Box::pin(fut::ready(Err(e))),
        }))
    }
}

impl Actor for Engine {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        retention::start_daily(ctx);
    }
}

impl Handler<Submit> for Engine {
    type Result = ResponseActFuture<Self, Result<TaskRecord, EngineError>>;

    fn handle(&mut self, msg: Submit, _ctx: &mut Context<Self>) -> Self::Result {
        let mut req = msg.0;
        if let Some(cf) = &req.continue_from
            && !req.depends_on.contains(cf)
        {
            req.depends_on.push(cf.clone());
        }
        if let Err(e) = validate_dependencies(&req.depends_on).and_then(|()| check(&req)) {
            return Box::pin(fut::ready(Err(e)));
        }
        let validator = self.validator();
        let built = off_actix_thread(move || validator.build(req, Lineage::default()));
        // The graph and the registry are read after the hop, as they are then.
        Box::pin(built.into_actor(self).then(|built, act, _| match built {
            Ok(record) if record.depends_on.contains(&record.id) => Box::pin(fut::ready(Err(
                EngineError::InvalidInput("a task cannot depend on itself".into()),
            ))),
            Ok(record) if record.depends_on.is_empty() => act.admit(record),
            Ok(record) => act.admit_with_dependencies(record),
            Err(e) => Box::pin(fut::ready(Err(e))),
        }))
    }
}

impl Handler<Cancel> for Engine {
    type Result = ResponseFuture<Result<TaskRecord, EngineError>>;

    fn handle(&mut self, msg: Cancel, _ctx: &mut Context<Self>) -> Self::Result {
        if let Some(actor) = self.live.task(&msg.task_id) {
            let req = actor.send(CancelTask { reason: msg.reason });
            return Box::pin(async move { req.await? });
        }
        let store = self.store.clone();
        Box::pin(async move {
            let id = msg.task_id;
            match read_task(&store, &id).await? {
                None => Err(EngineError::TaskNotFound(id)),
                Some(t) => Err(EngineError::CannotCancel {
                    id,
                    status: t.status,
                }),
            }
        })
    }
}

impl Handler<ReadTask> for Engine {
    type Result = ResponseFuture<Result<Option<TaskRecord>, EngineError>>;

    fn handle(&mut self, msg: ReadTask, _ctx: &mut Context<Self>) -> Self::Result {
        if let Some(actor) = self.live.task(&msg.task_id) {
            let current = actor.send(CurrentRecord);
            let store = self.store.clone();
            return Box::pin(async move {
                match current.await {
                    Ok(record) => Ok(Some(record)),
                    // The actor stopped meanwhile: its end is journaled.
                    Err(_) => read_task(&store, &msg.task_id).await,
                }
            });
        }
        let store = self.store.clone();
        Box::pin(async move { read_task(&store, &msg.task_id).await })
    }
}

impl Handler<Retry> for Engine {
    type Result = ResponseActFuture<Self, Result<TaskRecord, EngineError>>;

    fn handle(&mut self, msg: Retry, _ctx: &mut Context<Self>) -> Self::Result {
        // Dependencies are not carried over (as the original): a retry runs now.
        self.rerun(
            msg.task_id,
            |id, status| EngineError::CannotRetry { id, status },
            |t, _| (again(t, t.prompt.clone()), Lineage::after(t)),
        )
    }
}

impl Handler<Resume> for Engine {
    type Result = ResponseActFuture<Self, Result<TaskRecord, EngineError>>;

    fn handle(&mut self, msg: Resume, _ctx: &mut Context<Self>) -> Self::Result {
        let context = msg.additional_context;
        self.rerun(
            msg.task_id,
            |id, status| EngineError::CannotResume { id, status },
            move |t, settings| {
                let prompt = crate::agents::checkpoint::resume_prompt(t, context.as_deref());
                let resumable = crate::agents::adapter_for(&t.agent, settings)
                    .map(|a| a.supports_resume())
                    .unwrap_or(false);
                let mut lineage = Lineage::after(t);
                lineage.resume_session = t.session_id.clone().filter(|_| resumable);
                (again(t, prompt), lineage)
            },
        )
    }
}

impl Handler<EntityEnded> for Engine {
    type Result = ();

    fn handle(&mut self, msg: EntityEnded, ctx: &mut Context<Self>) {
        match msg.0 {
            Record::Task(t) => {
                self.live.remove_task(&t.id);
                let root = t.cascade_root.clone().unwrap_or_else(|| t.id.clone());
                // The owner first: a pipeline hears of a failed step before the
                // cancellations that the failure cascades into.
                if let Some(owner) = &t.owner {
                    self.live.tell_owner(
                        owner,
                        OwnedTaskEnded {
                            task_id: t.id.clone(),
                            status: t.status,
                            reason: t.reason.clone(),
                        },
                    );
                }
                for r in self.graph.finish(&t.id, t.status, &root) {
                    self.deliver(r);
                }
            }
            Record::Pipeline(p) => {
                self.live.remove_pipeline(&p.id);
                self.tell_schedule_of_pipeline(p, ctx);
            }
            Record::Loop(l) => {
                self.live.remove_loop(&l.id);
                self.tell_schedule_of_loop(&l);
            }
            Record::Schedule(s) => self.live.remove_schedule(&s.id),
            Record::ScheduleRun(_) => {}
        }
    }
}

impl Engine {
    /// A pipeline that a schedule launched ended: its schedule hears of it (found by the
    /// execution row, so it holds after a restart too).
    fn tell_schedule_of_pipeline(
        &mut self,
        p: crate::model::PipelineRecord,
        ctx: &mut Context<Self>,
    ) {
        use crate::model::schedule::ExecutionStatus;
        // Told only once it has ended.
        let status = ExecutionStatus::of_pipeline(p.status).unwrap_or(ExecutionStatus::Failed);
        let store = self.store.clone();
        let id = p.id.clone();
        let read =
            async move { tokio::task::spawn_blocking(move || store.run_of_pipeline(&id)).await };
        ctx.spawn(read.into_actor(self).map(move |res, act, _| {
            if let Ok(Ok(Some(run))) = res
                && let Some(s) = act.live.schedule(&run.schedule_id)
            {
                s.do_send(PipelineRunEnded {
                    pipeline_id: p.id,
                    status,
                    reason: p.reason,
                });
            }
        }));
    }
}

impl Engine {
    /// A loop that a schedule launched ended: its schedule hears of it (the loop names
    /// its schedule; a finished schedule's actor is gone and needs no word).
    fn tell_schedule_of_loop(&mut self, l: &crate::model::loops::LoopRecord) {
        use crate::model::schedule::ExecutionStatus;
        let Some(s) = l.schedule_id.as_deref().and_then(|s| self.live.schedule(s)) else {
            return;
        };
        // Told only once it has ended.
        let status = ExecutionStatus::of_loop(l.status).unwrap_or(ExecutionStatus::Failed);
        s.do_send(LoopRunEnded {
            loop_id: l.id.clone(),
            status,
            reason: l.reason.clone(),
        });
    }
}

async fn read_task(store: &Store, id: &str) -> Result<Option<TaskRecord>, EngineError> {
    let store = store.clone();
    let id = id.to_string();
    tokio::task::spawn_blocking(move || store.task(&id))
        .await
        .map_err(|e| EngineError::Internal(e.to_string()))?
        .map_err(|e| EngineError::Store(e.to_string(), "beat.db".into()))
}
