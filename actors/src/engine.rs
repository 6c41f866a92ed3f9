//! `Engine`: the front door of the actor system.
//!
//! Owns: the registry of live task actors, validation of new work, recovery at start,
//! and the routing of requests from the front ends.
//! Must never: acknowledge a submit, cancel or retry before the journal committed it;
//! do blocking I/O on its own thread (reads go to `spawn_blocking`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use actix::prelude::*;

use crate::agents::programs::ProgramCache;
use crate::agents::{AgentPool, Launcher, resolve_agent};
use crate::error::EngineError;
use crate::governor::ResourceGovernor;
use crate::journal::{Append, Journal, JournalWriter, Store};
use crate::model::dag::{DependencyGraph, Resolution};
use crate::model::{Priority, TaskEvent, TaskRecord, TaskStatus, apply, now_ms};
use crate::settings::SettingsSource;
use crate::task::{CancelTask, Resolved, TaskActor, TaskEnded};

/// Most dependencies one task may have.
pub const MAX_DEPENDENCIES: usize = 100;
/// Steps of a pipeline (as the original).
pub const PIPELINE_STEPS: std::ops::RangeInclusive<usize> = 2..=20;

/// Largest prompt accepted: 1 MiB (the original stopped at 4000 characters).
pub const MAX_PROMPT_BYTES: usize = 1 << 20;
pub const MIN_TIMEOUT_MS: u64 = 1_000;
pub const MAX_TIMEOUT_MS: u64 = 86_400_000;
pub const MIN_OUTPUT_BUFFER: u64 = 1_024;
pub const MAX_OUTPUT_BUFFER: u64 = 1 << 30;

/// What every actor of the engine shares.
#[derive(Clone)]
pub struct EngineDeps {
    pub journal: Addr<Journal>,
    pub governor: Addr<ResourceGovernor>,
    pub engine: Recipient<TaskEnded>,
    pub pool: Addr<AgentPool>,
    /// Where run folders live (`RunDir::new(runs_root, task_id)`).
    pub runs_root: Arc<Path>,
    pub settings: SettingsSource,
    pub store: Store,
}

/// A request for new work, as the front ends send it.
#[derive(Debug, Clone, Default)]
pub struct NewTask {
    pub prompt: String,
    pub priority: Priority,
    pub agent: Option<String>,
    pub working_directory: PathBuf,
    pub timeout: Option<u64>,
    pub idle_timeout: Option<u64>,
    pub max_output_buffer: Option<u64>,
    pub model: Option<String>,
    pub system_prompt: Option<String>,
    /// Tasks that must complete first.
    pub depends_on: Vec<String>,
    /// A task whose checkpoint this one's prompt carries (added to `depends_on`).
    pub continue_from: Option<String>,
}

#[derive(Message)]
#[rtype(result = "Result<TaskRecord, EngineError>")]
pub struct Submit(pub NewTask);

/// A pipeline: steps that run one after the other, each depending on the one before,
/// each waiting `delay` ms (if given) once it may start.
#[derive(Message)]
#[rtype(result = "Result<(String, Vec<TaskRecord>), EngineError>")]
pub struct CreatePipeline {
    pub steps: Vec<(NewTask, Option<u64>)>,
}

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
pub struct Cancel {
    pub task_id: String,
    pub reason: String,
}

#[derive(Message)]
#[rtype(result = "Result<TaskRecord, EngineError>")]
pub struct Retry {
    pub task_id: String,
}

/// Bring every unfinished task back to life. Sent once, at start.
#[derive(Message)]
#[rtype(result = "Result<usize, EngineError>")]
pub struct Recover;

pub struct Engine {
    journal: Addr<Journal>,
    governor: Addr<ResourceGovernor>,
    pool: Addr<AgentPool>,
    runs_root: Arc<Path>,
    settings: SettingsSource,
    store: Store,
    live: HashMap<String, Addr<TaskActor>>,
    graph: DependencyGraph,
    /// Resolutions for tasks whose actor is not alive yet (being submitted).
    early: HashMap<String, Vec<Resolution>>,
}

/// The running engine's parts, for the front ends.
#[derive(Clone)]
pub struct EngineHandle {
    pub engine: Addr<Engine>,
    pub governor: Addr<ResourceGovernor>,
    pub store: Store,
    pub writer: JournalWriter,
}

/// Paths and programs the engine needs from its host.
pub struct EngineConfig {
    pub db_path: PathBuf,
    pub runs_root: PathBuf,
    pub shim_command: Vec<std::ffi::OsString>,
    /// Forks shims without exec when the host started one (before its first thread).
    pub spawner: Option<Arc<crate::agents::spawner::Spawner>>,
    pub settings: SettingsSource,
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
        let governor = ResourceGovernor::new(config.settings.clone()).start();
        let store = Store::new(&config.db_path);
        let runs_root: Arc<Path> = config.runs_root.clone().into();
        let launcher = Launcher {
            runs_root: config.runs_root,
            shim_command: config.shim_command,
            spawner: config.spawner,
            base_env: std::env::vars_os().collect(),
        };
        let pool =
            AgentPool::new(launcher, ProgramCache::from_env(), config.settings.clone()).start();
        let engine = Engine {
            journal,
            governor: governor.clone(),
            pool,
            runs_root,
            settings: config.settings,
            store: store.clone(),
            live: HashMap::new(),
            graph: DependencyGraph::new(),
            early: HashMap::new(),
        }
        .start();
        Ok(EngineHandle {
            engine,
            governor,
            store,
            writer,
        })
    }

    fn deps(&self, ctx: &Context<Self>) -> EngineDeps {
        EngineDeps {
            journal: self.journal.clone(),
            governor: self.governor.clone(),
            engine: ctx.address().recipient(),
            pool: self.pool.clone(),
            runs_root: self.runs_root.clone(),
            settings: self.settings.clone(),
            store: self.store.clone(),
        }
    }

    fn spawn_task_actor(&mut self, record: TaskRecord, ctx: &Context<Self>) {
        if self.live.contains_key(&record.id) {
            return; // one actor per task, ever
        }
        let deps = self.deps(ctx);
        let id = record.id.clone();
        let addr = actix::Supervisor::start(move |_| TaskActor::new(record, deps));
        self.live.insert(id.clone(), addr);
        for r in self.early.remove(&id).unwrap_or_default() {
            self.deliver(r);
        }
    }

    /// Hands a dependency's outcome to the task it concerns (or keeps it until the
    /// task's actor exists).
    fn deliver(&mut self, resolution: Resolution) {
        let task = match &resolution {
            Resolution::Ready { task } | Resolution::Doomed { task, .. } => task.clone(),
        };
        match self.live.get(&task) {
            Some(addr) => addr.do_send(Resolved(resolution)),
            None => self.early.entry(task).or_default().push(resolution),
        }
    }

    /// A refused submit leaves nothing behind.
    fn forget(&mut self, id: &str) {
        self.graph.forget(id);
        self.early.remove(id);
    }

    /// Validates a request and builds the task's first record.
    fn build(&self, req: NewTask, lineage: Lineage) -> Result<TaskRecord, EngineError> {
        let settings = (self.settings)();
        validate(&req)?;
        let adapter = resolve_agent(req.agent.as_deref(), &settings)?;
        Ok(TaskRecord {
            id: format!("task-{}", uuid::Uuid::new_v4()),
            prompt: req.prompt,
            status: TaskStatus::Queued,
            priority: req.priority,
            agent: adapter.name().to_string(),
            working_directory: req.working_directory.display().to_string(),
            timeout: req.timeout.unwrap_or(settings.timeout),
            idle_timeout: req.idle_timeout.or(settings.idle_timeout),
            max_output_buffer: req.max_output_buffer.unwrap_or(settings.max_output_buffer),
            parent_task_id: lineage.parent_task_id,
            retry_count: lineage.retry_count,
            retry_of: lineage.retry_of,
            created_at: now_ms(),
            started_at: None,
            completed_at: None,
            not_before: None,
            exit_code: None,
            signal: None,
            reason: None,
            shim_pid: None,
            shim_start_time: None,
            cancel_reason: None,
            output_bytes: None,
            output_truncated: false,
            model: req.model.filter(|m| !m.trim().is_empty()),
            system_prompt: req.system_prompt.filter(|s| !s.trim().is_empty()),
            resume_session: lineage.resume_session,
            depends_on: req.depends_on,
            continue_from: req.continue_from,
            ..Default::default()
        })
    }

    /// Journals new tasks (all or none), then brings their actors to life.
    fn admit_all(
        &mut self,
        records: Vec<TaskRecord>,
    ) -> ResponseActFuture<Self, Result<Vec<TaskRecord>, EngineError>> {
        let mut transitions = Vec::with_capacity(records.len());
        for record in &records {
            let event = TaskEvent::Submitted {
                task: Box::new(record.clone()),
            };
            if let Err(e) = apply(None, &event) {
                return Box::pin(fut::ready(Err(e.into())));
            }
            transitions.push((event, record.clone()));
        }
        let commit = self.journal.send(Append { transitions });
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
            for r in &records {
                act.spawn_task_actor(r.clone(), ctx);
                if r.status == TaskStatus::Blocked && !act.graph.is_waiting(&r.id) {
                    act.deliver(Resolution::Ready { task: r.id.clone() });
                }
            }
            Ok(records)
        }))
    }

    /// A task with dependencies: those still live are waited for from now on; the
    /// others are read from the journal, where they are finished (or unknown).
    fn admit_with_dependencies(
        &mut self,
        mut record: TaskRecord,
    ) -> ResponseActFuture<Self, Result<TaskRecord, EngineError>> {
        record.status = TaskStatus::Blocked;
        let id = record.id.clone();
        let (live, other): (Vec<String>, Vec<String>) = record
            .depends_on
            .iter()
            .cloned()
            .partition(|d| self.live.contains_key(d));
        for dep in &live {
            self.graph.wait_for(&id, dep);
        }
        let store = self.store.clone();
        let wanted = other.clone();
        let read = async move {
            tokio::task::spawn_blocking(move || store.tasks_by_id(&wanted))
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
            let unknown: Vec<&str> = other
                .iter()
                .filter(|d| !found.iter().any(|t| &t.id == *d))
                .map(String::as_str)
                .collect();
            if !unknown.is_empty() {
                act.forget(&id);
                return Box::pin(fut::ready(Err(EngineError::InvalidInput(format!(
                    "dependency {} not found: a task can only depend on tasks that exist (see `beat list`)",
                    unknown.join(", ")
                )))));
            }
            let mut doom: Option<(String, String, TaskStatus)> = None;
            for dep in &found {
                match dep.status {
                    TaskStatus::Completed => {}
                    TaskStatus::Failed | TaskStatus::Cancelled => {
                        doom.get_or_insert(doom_of(dep));
                    }
                    _ => act.graph.wait_for(&id, &dep.id), // submitted, its actor not yet up
                }
            }
            // A live dependency may have failed while the others were read.
            if doom.is_none()
                && let Some(early) = act.early.get(&id)
            {
                doom = early.iter().find_map(|r| match r {
                    Resolution::Doomed { dependency, root, status, .. } => {
                        Some((dependency.clone(), root.clone(), *status))
                    }
                    Resolution::Ready { .. } => None,
                });
            }
            if let Some((dependency, root, status)) = doom {
                act.forget(&id);
                return act.admit_doomed(record.clone(), dependency, root, status);
            }
            act.admit(record.clone())
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
        let submitted = TaskEvent::Submitted {
            task: Box::new(record),
        };
        let failed = TaskEvent::DependencyFailed {
            at: now_ms(),
            reason: crate::model::reasons::dependency_failed(&dependency, &root, status),
            dependency,
            root,
        };
        let mut transitions = Vec::new();
        let mut state: Option<TaskRecord> = None;
        for event in [submitted, failed] {
            match apply(state.as_ref(), &event) {
                Ok(next) => {
                    transitions.push((event, next.clone()));
                    state = Some(next);
                }
                Err(e) => return Box::pin(fut::ready(Err(e.into()))),
            }
        }
        let Some(cancelled) = state else {
            return Box::pin(fut::ready(Err(EngineError::Internal("no state".into()))));
        };
        let checkpoint = crate::model::task::Checkpoint {
            checkpoint_type: TaskStatus::Cancelled,
            error_summary: cancelled.reason.clone(),
            created_at: now_ms(),
            ..Default::default()
        };
        let event = TaskEvent::Checkpointed {
            checkpoint: Box::new(checkpoint),
        };
        let last = match apply(Some(&cancelled), &event) {
            Ok(next) => next,
            Err(e) => return Box::pin(fut::ready(Err(e.into()))),
        };
        transitions.push((event, last.clone()));
        let commit = self.journal.send(Append { transitions });
        Box::pin(commit.into_actor(self).map(move |res, _act, _| match res {
            Ok(Ok(())) => Ok(last),
            Ok(Err(e)) => Err(e.into()),
            Err(e) => Err(e.into()),
        }))
    }

    /// Journals a new task, then brings its actor to life, then answers.
    fn admit(
        &mut self,
        record: TaskRecord,
    ) -> ResponseActFuture<Self, Result<TaskRecord, EngineError>> {
        Box::pin(
            self.admit_all(vec![record])
                .map(|res, _, _| res.map(|mut v| v.remove(0))),
        )
    }
}

#[derive(Default)]
struct Lineage {
    parent_task_id: Option<String>,
    retry_count: Option<u32>,
    retry_of: Option<String>,
    resume_session: Option<String>,
}

impl Lineage {
    fn after(t: &TaskRecord) -> Lineage {
        Lineage {
            parent_task_id: Some(t.parent_task_id.clone().unwrap_or(t.id.clone())),
            retry_count: Some(t.retry_count.unwrap_or(0) + 1),
            retry_of: Some(t.id.clone()),
            resume_session: None,
        }
    }
}

/// The request that runs `t` again, with `prompt`.
fn again(t: &TaskRecord, prompt: String) -> NewTask {
    NewTask {
        prompt,
        priority: t.priority,
        agent: Some(t.agent.clone()),
        working_directory: PathBuf::from(&t.working_directory),
        timeout: Some(t.timeout),
        idle_timeout: t.idle_timeout,
        max_output_buffer: Some(t.max_output_buffer),
        model: t.model.clone(),
        system_prompt: t.system_prompt.clone(),
        depends_on: Vec::new(),
        continue_from: None,
    }
}

/// What a failed or cancelled dependency means for its dependents: the dependency, the
/// root of the cascade it belongs to, and how it ended.
fn doom_of(dep: &TaskRecord) -> (String, String, TaskStatus) {
    let root = dep.cascade_root.clone().unwrap_or_else(|| dep.id.clone());
    (dep.id.clone(), root, dep.status)
}

fn validate_dependencies(deps: &[String]) -> Result<(), EngineError> {
    if deps.len() > MAX_DEPENDENCIES {
        return Err(EngineError::InvalidInput(format!(
            "{} dependencies given; a task may have at most {MAX_DEPENDENCIES}",
            deps.len()
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for d in deps {
        if !d.starts_with("task-") {
            return Err(EngineError::InvalidInput(format!(
                "'{d}' is not a task id (task-…)"
            )));
        }
        if !seen.insert(d) {
            return Err(EngineError::InvalidInput(format!(
                "dependency {d} is given twice"
            )));
        }
    }
    Ok(())
}

fn validate(req: &NewTask) -> Result<(), EngineError> {
    let bad = |m: String| Err(EngineError::InvalidInput(m));
    if req.prompt.trim().is_empty() {
        return bad("the prompt is empty: say what the agent should do".into());
    }
    if req.prompt.len() > MAX_PROMPT_BYTES {
        return bad(format!(
            "the prompt is {} bytes; the limit is {MAX_PROMPT_BYTES} (1 MiB). Put long material in a file and point the agent at it",
            req.prompt.len()
        ));
    }
    check_working_directory(&req.working_directory)?;
    if let Some(t) = req.timeout
        && !(MIN_TIMEOUT_MS..=MAX_TIMEOUT_MS).contains(&t)
    {
        return bad(format!(
            "timeout {t} ms is out of range: give {MIN_TIMEOUT_MS} to {MAX_TIMEOUT_MS} ms (1 s to 24 h)"
        ));
    }
    if let Some(t) = req.idle_timeout
        && !(MIN_TIMEOUT_MS..=MAX_TIMEOUT_MS).contains(&t)
    {
        return bad(format!(
            "idle timeout {t} ms is out of range: give {MIN_TIMEOUT_MS} to {MAX_TIMEOUT_MS} ms"
        ));
    }
    if let Some(b) = req.max_output_buffer
        && !(MIN_OUTPUT_BUFFER..=MAX_OUTPUT_BUFFER).contains(&b)
    {
        return bad(format!(
            "maxOutputBuffer {b} is out of range: give {MIN_OUTPUT_BUFFER} to {MAX_OUTPUT_BUFFER} bytes"
        ));
    }
    Ok(())
}

/// The working directory must exist and be a directory (any directory: the original's
/// "inside the server's cwd" rule, spec W20, is dropped).
pub fn check_working_directory(dir: &Path) -> Result<(), EngineError> {
    if !dir.is_absolute() {
        return Err(EngineError::InvalidInput(format!(
            "working directory '{}' is not an absolute path",
            dir.display()
        )));
    }
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(EngineError::InvalidInput(format!(
            "working directory '{}' is not a directory",
            dir.display()
        ))),
        Err(e) => Err(EngineError::InvalidInput(format!(
            "working directory '{}' cannot be used: {e}. Create it first, or pass an existing one",
            dir.display()
        ))),
    }
}

impl Actor for Engine {
    type Context = Context<Self>;
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
        if let Err(e) = validate_dependencies(&req.depends_on) {
            return Box::pin(fut::ready(Err(e)));
        }
        match self.build(req, Lineage::default()) {
            Ok(record) if record.depends_on.contains(&record.id) => Box::pin(fut::ready(Err(
                EngineError::InvalidInput("a task cannot depend on itself".into()),
            ))),
            Ok(record) if record.depends_on.is_empty() => self.admit(record),
            Ok(record) => self.admit_with_dependencies(record),
            Err(e) => Box::pin(fut::ready(Err(e))),
        }
    }
}

impl Handler<CreatePipeline> for Engine {
    type Result = ResponseActFuture<Self, Result<(String, Vec<TaskRecord>), EngineError>>;

    fn handle(&mut self, msg: CreatePipeline, _ctx: &mut Context<Self>) -> Self::Result {
        if !PIPELINE_STEPS.contains(&msg.steps.len()) {
            return Box::pin(fut::ready(Err(EngineError::InvalidInput(format!(
                "a pipeline has 2 to 20 steps; {} given",
                msg.steps.len()
            )))));
        }
        let pipeline_id = format!("pipeline-{}", uuid::Uuid::new_v4());
        let mut records: Vec<TaskRecord> = Vec::with_capacity(msg.steps.len());
        for (i, (step, delay)) in msg.steps.into_iter().enumerate() {
            let mut record = match self.build(step, Lineage::default()) {
                Ok(r) => r,
                Err(e) => {
                    return Box::pin(fut::ready(Err(EngineError::InvalidInput(format!(
                        "step {}: {e}",
                        i + 1
                    )))));
                }
            };
            record.pipeline_id = Some(pipeline_id.clone());
            record.pipeline_step = Some(i as u32 + 1);
            record.start_delay = delay.filter(|&d| d > 0);
            match records.last() {
                Some(prev) => {
                    record.depends_on = vec![prev.id.clone()];
                    record.status = TaskStatus::Blocked;
                }
                None => record.not_before = record.start_delay.map(|d| now_ms() + d as i64),
            }
            records.push(record);
        }
        for r in &records {
            for dep in &r.depends_on {
                self.graph.wait_for(&r.id, dep);
            }
        }
        Box::pin(
            self.admit_all(records)
                .map(move |res, _, _| res.map(|steps| (pipeline_id, steps))),
        )
    }
}

impl Handler<Cancel> for Engine {
    type Result = ResponseFuture<Result<TaskRecord, EngineError>>;

    fn handle(&mut self, msg: Cancel, _ctx: &mut Context<Self>) -> Self::Result {
        if let Some(actor) = self.live.get(&msg.task_id) {
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

impl Engine {
    /// Reads a finished task and admits the new task that `make` builds from it (retry
    /// and resume); a task that is not finished is refused with `refuse`.
    fn rerun(
        &mut self,
        task_id: String,
        refuse: fn(String, TaskStatus) -> EngineError,
        make: impl FnOnce(&mut Engine, TaskRecord) -> Result<TaskRecord, EngineError> + 'static,
    ) -> ResponseActFuture<Self, Result<TaskRecord, EngineError>> {
        let store = self.store.clone();
        let read = async move { (read_task(&store, &task_id).await, task_id) };
        Box::pin(read.into_actor(self).then(move |(res, id), act, _| {
            let built = match res {
                Err(e) => Err(e),
                Ok(None) => Err(EngineError::TaskNotFound(id)),
                Ok(Some(t)) if !t.status.is_terminal() => Err(refuse(id, t.status)),
                Ok(Some(t)) => make(act, t),
            };
            match built {
                Ok(record) => act.admit(record),
                Err(e) => Box::pin(fut::ready(Err(e))),
            }
        }))
    }
}

impl Handler<Retry> for Engine {
    type Result = ResponseActFuture<Self, Result<TaskRecord, EngineError>>;

    fn handle(&mut self, msg: Retry, _ctx: &mut Context<Self>) -> Self::Result {
        // Dependencies are not carried over (as the original): a retry runs now.
        self.rerun(
            msg.task_id,
            |id, status| EngineError::CannotRetry { id, status },
            |act, t| act.build(again(&t, t.prompt.clone()), Lineage::after(&t)),
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
            move |act, t| {
                let prompt = crate::agents::checkpoint::resume_prompt(&t, context.as_deref());
                let settings = (act.settings)();
                let resumable = crate::agents::adapter_for(&t.agent, &settings)
                    .map(|a| a.supports_resume())
                    .unwrap_or(false);
                let mut lineage = Lineage::after(&t);
                lineage.resume_session = t.session_id.clone().filter(|_| resumable);
                act.build(again(&t, prompt), lineage)
            },
        )
    }
}

impl Handler<Recover> for Engine {
    // Atomic: the engine handles nothing else until every unfinished task has its actor
    // again, so a cancel that arrives meanwhile finds the task live, not "finished".
    type Result = AtomicResponse<Self, Result<usize, EngineError>>;

    fn handle(&mut self, _msg: Recover, _ctx: &mut Context<Self>) -> Self::Result {
        let store = self.store.clone();
        // Unfinished tasks, and the finished dependencies of blocked ones.
        let read = async move {
            tokio::task::spawn_blocking(move || {
                let tasks = store.live_tasks()?;
                let live: std::collections::HashSet<&String> =
                    tasks.iter().map(|t| &t.id).collect();
                let finished: Vec<String> = tasks
                    .iter()
                    .filter(|t| t.status == TaskStatus::Blocked)
                    .flat_map(|t| t.depends_on.iter())
                    .filter(|d| !live.contains(d))
                    .cloned()
                    .collect();
                let deps = store.tasks_by_id(&finished)?;
                Ok::<_, rusqlite::Error>((tasks, deps))
            })
            .await
            .map_err(|e| EngineError::Internal(e.to_string()))?
            .map_err(|e| EngineError::Store(e.to_string(), "beat.db".into()))
        };
        AtomicResponse::new(Box::pin(read.into_actor(self).map(|res, act, ctx| {
            let (tasks, deps) = res?;
            let count = tasks.len();
            let live: std::collections::HashSet<String> =
                tasks.iter().map(|t| t.id.clone()).collect();
            let finished: HashMap<&String, &TaskRecord> = deps.iter().map(|t| (&t.id, t)).collect();
            let mut outcomes = Vec::new();
            for task in tasks.iter().filter(|t| t.status == TaskStatus::Blocked) {
                let mut doom = None;
                for dep in &task.depends_on {
                    if live.contains(dep) {
                        act.graph.wait_for(&task.id, dep);
                        continue;
                    }
                    match finished.get(dep) {
                        Some(d) if d.status == TaskStatus::Completed => {}
                        Some(d) => {
                            doom.get_or_insert(doom_of(d));
                        }
                        None => {
                            doom.get_or_insert((dep.clone(), dep.clone(), TaskStatus::Cancelled));
                        }
                    }
                }
                outcomes.push(match doom {
                    Some((dependency, root, status)) => {
                        act.graph.forget(&task.id);
                        Some(Resolution::Doomed {
                            task: task.id.clone(),
                            dependency,
                            root,
                            status,
                        })
                    }
                    None if !act.graph.is_waiting(&task.id) => Some(Resolution::Ready {
                        task: task.id.clone(),
                    }),
                    None => None,
                });
            }
            for task in tasks {
                act.spawn_task_actor(task, ctx);
            }
            for r in outcomes.into_iter().flatten() {
                act.deliver(r);
            }
            Ok(count)
        })))
    }
}

impl Handler<TaskEnded> for Engine {
    type Result = ();

    fn handle(&mut self, msg: TaskEnded, _ctx: &mut Context<Self>) {
        self.live.remove(&msg.task_id);
        let root = msg.cascade_root.unwrap_or_else(|| msg.task_id.clone());
        for r in self.graph.finish(&msg.task_id, msg.status, &root) {
            self.deliver(r);
        }
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
