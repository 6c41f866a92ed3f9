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

use crate::agents::{Launcher, resolve_agent};
use crate::error::EngineError;
use crate::governor::ResourceGovernor;
use crate::journal::{Append, Journal, JournalWriter, Store};
use crate::model::{Priority, TaskEvent, TaskRecord, TaskStatus, apply, now_ms};
use crate::settings::SettingsSource;
use crate::task::{CancelTask, TaskActor, TaskEnded};

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
    pub launcher: Arc<Launcher>,
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
}

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
    launcher: Arc<Launcher>,
    settings: SettingsSource,
    store: Store,
    live: HashMap<String, Addr<TaskActor>>,
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
        let launcher = Arc::new(Launcher {
            runs_root: config.runs_root,
            shim_command: config.shim_command,
            base_env: std::env::vars_os().collect(),
        });
        let engine = Engine {
            journal,
            governor: governor.clone(),
            launcher,
            settings: config.settings,
            store: store.clone(),
            live: HashMap::new(),
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
            launcher: self.launcher.clone(),
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
        self.live.insert(id, addr);
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
            ..Default::default()
        })
    }

    /// Journals a new task, then brings its actor to life, then answers.
    fn admit(
        &mut self,
        record: TaskRecord,
    ) -> ResponseActFuture<Self, Result<TaskRecord, EngineError>> {
        let event = TaskEvent::Submitted {
            task: Box::new(record.clone()),
        };
        if let Err(e) = apply(None, &event) {
            return Box::pin(fut::ready(Err(e.into())));
        }
        let commit = self.journal.send(Append::task(event, record.clone()));
        Box::pin(commit.into_actor(self).map(move |res, act, ctx| {
            match res {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e.into()),
                Err(e) => return Err(e.into()),
            }
            act.spawn_task_actor(record.clone(), ctx);
            Ok(record)
        }))
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
    }
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
        match self.build(msg.0, Lineage::default()) {
            Ok(record) => self.admit(record),
            Err(e) => Box::pin(fut::ready(Err(e))),
        }
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

impl Handler<Retry> for Engine {
    type Result = ResponseActFuture<Self, Result<TaskRecord, EngineError>>;

    fn handle(&mut self, msg: Retry, _ctx: &mut Context<Self>) -> Self::Result {
        let store = self.store.clone();
        let id = msg.task_id;
        let read = async move { (read_task(&store, &id).await, id) };
        Box::pin(read.into_actor(self).then(|(res, id), act, _| {
            let built = match res {
                Err(e) => Err(e),
                Ok(None) => Err(EngineError::TaskNotFound(id)),
                Ok(Some(t)) if !t.status.is_terminal() => Err(EngineError::CannotRetry {
                    id,
                    status: t.status,
                }),
                Ok(Some(t)) => act.build(again(&t, t.prompt.clone()), Lineage::after(&t)),
            };
            match built {
                Ok(record) => act.admit(record),
                Err(e) => Box::pin(fut::ready(Err(e))),
            }
        }))
    }
}

impl Handler<Resume> for Engine {
    type Result = ResponseActFuture<Self, Result<TaskRecord, EngineError>>;

    fn handle(&mut self, msg: Resume, _ctx: &mut Context<Self>) -> Self::Result {
        let store = self.store.clone();
        let id = msg.task_id;
        let context = msg.additional_context;
        let read = async move { (read_task(&store, &id).await, id) };
        Box::pin(read.into_actor(self).then(move |(res, id), act, _| {
            let built = match res {
                Err(e) => Err(e),
                Ok(None) => Err(EngineError::TaskNotFound(id)),
                Ok(Some(t)) if !t.status.is_terminal() => Err(EngineError::CannotResume {
                    id,
                    status: t.status,
                }),
                Ok(Some(t)) => {
                    let prompt = crate::agents::checkpoint::resume_prompt(&t, context.as_deref());
                    let settings = (act.settings)();
                    let resumable = crate::agents::adapter_for(&t.agent, &settings)
                        .map(|a| a.supports_resume())
                        .unwrap_or(false);
                    let mut lineage = Lineage::after(&t);
                    lineage.resume_session = t.session_id.clone().filter(|_| resumable);
                    act.build(again(&t, prompt), lineage)
                }
            };
            match built {
                Ok(record) => act.admit(record),
                Err(e) => Box::pin(fut::ready(Err(e))),
            }
        }))
    }
}

impl Handler<Recover> for Engine {
    // Atomic: the engine handles nothing else until every unfinished task has its actor
    // again, so a cancel that arrives meanwhile finds the task live, not "finished".
    type Result = AtomicResponse<Self, Result<usize, EngineError>>;

    fn handle(&mut self, _msg: Recover, _ctx: &mut Context<Self>) -> Self::Result {
        let store = self.store.clone();
        let read = async move {
            tokio::task::spawn_blocking(move || store.live_tasks())
                .await
                .map_err(|e| EngineError::Internal(e.to_string()))?
                .map_err(|e| EngineError::Store(e.to_string(), "beat.db".into()))
        };
        AtomicResponse::new(Box::pin(read.into_actor(self).map(|res, act, ctx| {
            let tasks = res?;
            let count = tasks.len();
            for task in tasks {
                act.spawn_task_actor(task, ctx);
            }
            Ok(count)
        })))
    }
}

impl Handler<TaskEnded> for Engine {
    type Result = ();

    fn handle(&mut self, msg: TaskEnded, _ctx: &mut Context<Self>) {
        self.live.remove(&msg.task_id);
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
