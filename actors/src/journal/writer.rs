//! Group commit: one backend on its own thread; every append queued while the previous
//! COMMIT ran goes into the next transaction, and each sender hears back only after
//! that COMMIT returned. Then the records it committed are broadcast to waiters.

use std::path::Path;
use std::sync::mpsc;

use actix::prelude::*;
use rusqlite::Connection;
use tokio::sync::{broadcast, oneshot};

use super::backend::Backend;
use super::sqlite::SqliteBackend;
use crate::model::{Entity, Record, Transition};

#[derive(Debug, Clone, thiserror::Error)]
pub enum JournalError {
    #[error(
        "the journal could not write to {path}: {message}. Free disk space or fix permissions; nothing was changed"
    )]
    Write { path: String, message: String },
    #[error("the journal is closed (the daemon is shutting down); try again in a moment")]
    Closed,
}

/// Transitions of one or more entities, of any kinds, that commit together: all or none.
#[derive(Debug, Clone, Default)]
pub struct Append {
    pub transitions: Vec<Transition>,
}

impl Append {
    pub fn new(transitions: Vec<Transition>) -> Append {
        Append { transitions }
    }

    /// One transition of one entity.
    pub fn one<E: Entity>(event: E::Event, record: E) -> Append {
        Append {
            transitions: vec![E::transition(event, record)],
        }
    }

    /// One transition of one task.
    pub fn task(event: crate::model::TaskEvent, record: crate::model::TaskRecord) -> Append {
        Append::one(event, record)
    }
}

impl Message for Append {
    type Result = Result<(), JournalError>;
}

/// A record as committed, broadcast to waiters after COMMIT.
pub type Committed = Record;

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
    /// Starts the writer thread on an open, migrated SQLite connection.
    pub fn start(conn: Connection, db_path: &Path) -> JournalWriter {
        JournalWriter::with_backend(SqliteBackend::new(conn, db_path))
    }

    /// Starts the writer thread on any backend.
    pub fn with_backend(backend: impl Backend) -> JournalWriter {
        let (queue, rx) = mpsc::channel::<Pending>();
        let (committed, _) = broadcast::channel(4096);
        let publish = committed.clone();
        std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || write_loop(backend, rx, publish))
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

    /// Committed records, in commit order, for anyone waiting on an entity.
    pub fn subscribe(&self) -> broadcast::Receiver<Committed> {
        self.committed.subscribe()
    }
}

fn write_loop(
    mut backend: impl Backend,
    rx: mpsc::Receiver<Pending>,
    publish: broadcast::Sender<Committed>,
) {
    let mut group: Vec<Pending> = Vec::new();
    while let Ok(first) = rx.recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(p) => group.push(p),
                Err(_) => break,
            }
        }
        let transitions = group.iter().map(|p| p.append.transitions.len()).sum();
        let appends: Vec<&Append> = group.iter().map(|p| &p.append).collect();
        let outcome = backend.write(&appends);
        drop(appends);
        match outcome {
            Ok(()) => finish(group.drain(..), &publish, Ok(())),
            Err(_) if group.len() > 1 => {
                // One bad append must not fail its neighbours: retry each alone.
                for pending in group.drain(..) {
                    let res = backend
                        .write(&[&pending.append])
                        .map_err(|e| write_error(&backend, e));
                    finish(std::iter::once(pending), &publish, res);
                }
            }
            Err(e) => {
                let err = write_error(&backend, e);
                tracing::error!(error = %err, "journal write failed");
                finish(group.drain(..), &publish, Err(err));
            }
        }
        backend.after_commit(transitions);
    }
}

fn write_error(backend: &impl Backend, message: String) -> JournalError {
    JournalError::Write {
        path: backend.location(),
        message,
    }
}

fn finish(
    group: impl Iterator<Item = Pending>,
    publish: &broadcast::Sender<Committed>,
    result: Result<(), JournalError>,
) {
    for pending in group {
        if result.is_ok() && publish.receiver_count() > 0 {
            // Waiters see each entity's state after the whole append, never a middle
            // step of it (a terminal state before its checkpoint, say).
            let transitions = &pending.append.transitions;
            for (i, t) in transitions.iter().enumerate() {
                if !transitions[i + 1..]
                    .iter()
                    .any(|later| later.kind() == t.kind() && later.id() == t.id())
                {
                    let _ = publish.send(t.record());
                }
            }
        }
        let _ = pending.reply.send(result.clone());
    }
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
