//! Group commit: one write connection on its own thread; every append queued while the
//! previous COMMIT ran goes into the next transaction, and each sender hears back only
//! after that COMMIT returned.

use std::path::Path;
use std::sync::mpsc;

use actix::prelude::*;
use rusqlite::{Connection, params};
use tokio::sync::{broadcast, oneshot};

use crate::model::{TaskEvent, TaskRecord, now_ms};

#[derive(Debug, Clone, thiserror::Error)]
pub enum JournalError {
    #[error(
        "the journal could not write to {path}: {message}. Free disk space or fix permissions; nothing was changed"
    )]
    Write { path: String, message: String },
    #[error("the journal is closed (the daemon is shutting down); try again in a moment")]
    Closed,
}

/// One or more transitions that commit together, all or none.
#[derive(Debug, Clone)]
pub struct Append {
    pub transitions: Vec<(TaskEvent, TaskRecord)>,
}

impl Append {
    pub fn task(event: TaskEvent, record: TaskRecord) -> Append {
        Append {
            transitions: vec![(event, record)],
        }
    }
}

impl Message for Append {
    type Result = Result<(), JournalError>;
}

/// A transition that has been committed, as broadcast to waiters after COMMIT.
pub type Committed = TaskRecord;

struct Pending {
    append: Append,
    reply: oneshot::Sender<Result<(), JournalError>>,
}

/// The handle of the writer thread. Cloning it is cheap; dropping the last one ends the
/// thread after it has committed what it holds.
#[derive(Clone)]
pub struct JournalWriter {
    queue: mpsc::Sender<Pending>,
    committed: broadcast::Sender<Committed>,
}

/// Largest group: bounds the time one COMMIT takes.
const MAX_GROUP: usize = 4096;

impl JournalWriter {
    /// Starts the writer thread on an open, migrated connection.
    pub fn start(conn: Connection, db_path: &Path) -> JournalWriter {
        let (queue, rx) = mpsc::channel::<Pending>();
        let (committed, _) = broadcast::channel(4096);
        let publish = committed.clone();
        let path = db_path.display().to_string();
        // WAL checkpoints run on a connection of their own, off the writer's path (they
        // took a fifth of its time inline); the writer nudges it after commits.
        let _ = conn.pragma_update(None, "wal_autocheckpoint", 0);
        let (nudge, nudged) = mpsc::sync_channel::<()>(1);
        let db = db_path.to_path_buf();
        std::thread::Builder::new()
            .name("journal-checkpointer".into())
            .spawn(move || checkpoint_loop(&db, nudged))
            .expect("spawning the checkpoint thread");
        std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || write_loop(conn, rx, publish, path, nudge))
            .expect("spawning the journal thread");
        JournalWriter { queue, committed }
    }

    /// Queues `append` and resolves once it is committed (or failed).
    pub fn append(&self, append: Append) -> oneshot::Receiver<Result<(), JournalError>> {
        let (reply, rx) = oneshot::channel();
        if let Err(mpsc::SendError(p)) = self.queue.send(Pending { append, reply }) {
            let _ = p.reply.send(Err(JournalError::Closed));
        }
        rx
    }

    /// Committed records, in commit order, for anyone waiting on a task.
    pub fn subscribe(&self) -> broadcast::Receiver<Committed> {
        self.committed.subscribe()
    }
}

/// Copies the WAL back into the database whenever the writer says it has grown.
fn checkpoint_loop(db: &Path, nudged: mpsc::Receiver<()>) {
    let Ok(conn) = Connection::open(db) else {
        return;
    };
    let _ = conn.busy_timeout(std::time::Duration::from_secs(10));
    while nudged.recv().is_ok() {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "WAL checkpoint failed; the next one will retry");
        }
    }
    // The writer is gone: fold the WAL back and truncate it.
    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
}

/// Transitions between two nudges of the checkpointer.
const CHECKPOINT_EVERY: usize = 1000;

fn write_loop(
    mut conn: Connection,
    rx: mpsc::Receiver<Pending>,
    publish: broadcast::Sender<Committed>,
    path: String,
    nudge: mpsc::SyncSender<()>,
) {
    let mut since_checkpoint = 0usize;
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(p) => group.push(p),
                Err(_) => break,
            }
        }
        since_checkpoint += group
            .iter()
            .map(|p| p.append.transitions.len())
            .sum::<usize>();
        let outcome = write_group(&mut conn, group.iter().map(|p| &p.append));
        match outcome {
            Ok(()) => finish(group, &publish, |_| Ok(())),
            Err(_) if group.len() > 1 => {
                // One bad append must not fail its neighbours: retry each alone.
                for pending in group {
                    let res = write_group(&mut conn, std::iter::once(&pending.append));
                    let res = res.map_err(|e| write_error(&path, e));
                    finish(vec![pending], &publish, |_| res.clone());
                }
            }
            Err(e) => {
                let err = write_error(&path, e);
                tracing::error!(error = %err, "journal write failed");
                finish(group, &publish, |_| Err(err.clone()));
            }
        }
        if since_checkpoint >= CHECKPOINT_EVERY && nudge.try_send(()).is_ok() {
            since_checkpoint = 0;
        }
    }
}

fn write_error(path: &str, e: rusqlite::Error) -> JournalError {
    JournalError::Write {
        path: path.to_string(),
        message: e.to_string(),
    }
}

fn finish(
    group: Vec<Pending>,
    publish: &broadcast::Sender<Committed>,
    result: impl Fn(&Append) -> Result<(), JournalError>,
) {
    for pending in group {
        let res = result(&pending.append);
        if res.is_ok() {
            // Waiters see each task's state after the whole append, never a middle
            // step of it (a terminal state before its checkpoint, say).
            let transitions = &pending.append.transitions;
            for (i, (_, record)) in transitions.iter().enumerate() {
                if !transitions[i + 1..]
                    .iter()
                    .any(|(_, later)| later.id == record.id)
                {
                    let _ = publish.send(record.clone());
                }
            }
        }
        let _ = pending.reply.send(res);
    }
}

fn write_group<'a>(
    conn: &mut Connection,
    appends: impl Iterator<Item = &'a Append>,
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut insert_event = tx.prepare_cached(
            "INSERT INTO events(at, entity_kind, entity_id, transition, payload)
             VALUES (?1, 'task', ?2, ?3, ?4)",
        )?;
        let mut upsert_task = tx.prepare_cached(UPSERT_TASK)?;
        let mut insert_edge = tx.prepare_cached(
            "INSERT OR IGNORE INTO task_edges(task_id, depends_on) VALUES (?1, ?2)",
        )?;
        let at = now_ms();
        for append in appends {
            for (event, record) in &append.transitions {
                let payload = serde_json::to_string(event)
                    .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
                insert_event.execute(params![at, record.id, event.name(), payload])?;
                upsert_task.execute(rusqlite::params_from_iter(task_params(record).iter()))?;
                if matches!(event, TaskEvent::Submitted { .. }) {
                    for dep in &record.depends_on {
                        insert_edge.execute(params![record.id, dep])?;
                    }
                }
            }
        }
    }
    tx.commit()
}

/// An upsert, not `INSERT OR REPLACE`: the row keeps its rowid, so tasks created in the
/// same millisecond keep their submission order (recovery replays them in that order).
const UPSERT_TASK: &str = "INSERT INTO tasks(
    id, prompt, status, priority, agent, working_directory, timeout, idle_timeout,
    max_output_buffer, parent_task_id, retry_count, retry_of, created_at, started_at,
    completed_at, not_before, exit_code, signal, reason, shim_pid, shim_start_time,
    cancel_reason, output_bytes, output_truncated, model, system_prompt, session_id,
    resume_session, result, usage, rate_limit_retries, checkpoint, depends_on, continue_from,
    pipeline_id, pipeline_step, start_delay, cascade_root)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
    ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31, ?32, ?33, ?34,
    ?35, ?36, ?37, ?38)
    ON CONFLICT(id) DO UPDATE SET
    prompt = excluded.prompt,
    status = excluded.status,
    priority = excluded.priority,
    agent = excluded.agent,
    working_directory = excluded.working_directory,
    timeout = excluded.timeout,
    idle_timeout = excluded.idle_timeout,
    max_output_buffer = excluded.max_output_buffer,
    parent_task_id = excluded.parent_task_id,
    retry_count = excluded.retry_count,
    retry_of = excluded.retry_of,
    created_at = excluded.created_at,
    started_at = excluded.started_at,
    completed_at = excluded.completed_at,
    not_before = excluded.not_before,
    exit_code = excluded.exit_code,
    signal = excluded.signal,
    reason = excluded.reason,
    shim_pid = excluded.shim_pid,
    shim_start_time = excluded.shim_start_time,
    cancel_reason = excluded.cancel_reason,
    output_bytes = excluded.output_bytes,
    output_truncated = excluded.output_truncated,
    model = excluded.model,
    system_prompt = excluded.system_prompt,
    session_id = excluded.session_id,
    resume_session = excluded.resume_session,
    result = excluded.result,
    usage = excluded.usage,
    rate_limit_retries = excluded.rate_limit_retries,
    checkpoint = excluded.checkpoint,
    depends_on = excluded.depends_on,
    continue_from = excluded.continue_from,
    pipeline_id = excluded.pipeline_id,
    pipeline_step = excluded.pipeline_step,
    start_delay = excluded.start_delay,
    cascade_root = excluded.cascade_root";

fn task_params(t: &TaskRecord) -> Vec<Box<dyn rusqlite::ToSql + '_>> {
    vec![
        Box::new(&t.id),
        Box::new(&t.prompt),
        Box::new(t.status.as_str()),
        Box::new(t.priority.as_str()),
        Box::new(&t.agent),
        Box::new(&t.working_directory),
        Box::new(t.timeout as i64),
        Box::new(t.idle_timeout.map(|v| v as i64)),
        Box::new(t.max_output_buffer as i64),
        Box::new(&t.parent_task_id),
        Box::new(t.retry_count),
        Box::new(&t.retry_of),
        Box::new(t.created_at),
        Box::new(t.started_at),
        Box::new(t.completed_at),
        Box::new(t.not_before),
        Box::new(t.exit_code),
        Box::new(&t.signal),
        Box::new(&t.reason),
        Box::new(t.shim_pid),
        Box::new(t.shim_start_time.map(|v| v as i64)),
        Box::new(&t.cancel_reason),
        Box::new(t.output_bytes.map(|v| v as i64)),
        Box::new(t.output_truncated),
        Box::new(&t.model),
        Box::new(&t.system_prompt),
        Box::new(&t.session_id),
        Box::new(&t.resume_session),
        Box::new(&t.result),
        Box::new(t.usage.as_ref().and_then(|u| serde_json::to_string(u).ok())),
        Box::new(t.rate_limit_retries),
        Box::new(
            t.checkpoint
                .as_ref()
                .and_then(|c| serde_json::to_string(c).ok()),
        ),
        Box::new(
            (!t.depends_on.is_empty())
                .then(|| serde_json::to_string(&t.depends_on).ok())
                .flatten(),
        ),
        Box::new(&t.continue_from),
        Box::new(&t.pipeline_id),
        Box::new(t.pipeline_step),
        Box::new(t.start_delay.map(|v| v as i64)),
        Box::new(&t.cascade_root),
    ]
}

/// The actor in front of the writer thread. Its handler never blocks: it queues the
/// append and returns a future that resolves after COMMIT.
pub struct Journal {
    writer: JournalWriter,
}

impl Journal {
    pub fn new(writer: JournalWriter) -> Journal {
        Journal { writer }
    }
}

impl Actor for Journal {
    type Context = Context<Self>;
}

impl Handler<Append> for Journal {
    type Result = ResponseFuture<Result<(), JournalError>>;

    fn handle(&mut self, msg: Append, _ctx: &mut Self::Context) -> Self::Result {
        let rx = self.writer.append(msg);
        Box::pin(async move { rx.await.unwrap_or(Err(JournalError::Closed)) })
    }
}
