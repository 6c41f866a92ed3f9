//! Group commit: one backend on its own thread; every append queued while the previous
//! COMMIT ran goes into the next transaction, and each sender hears back only after
//! that COMMIT returned. Then the records it committed are broadcast to waiters.
//!
//! Under load (an append came in while the last COMMIT ran) a group smaller than
//! `Gathering::few` also waits for appends that keep coming, each within
//! `Gathering::gap` of the last, for at most `Gathering::limit`: fewer, larger commits,
//! with less work per transition. An append to an idle journal is committed at once (a
//! lone task's latency never pays the wait), and so is a group that is large already
//! (its senders outpace the commits; a wait would only idle the writer).

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

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

/// How a group of a busy journal waits for more appends.
#[derive(Debug, Clone, Copy)]
struct Gathering {
    /// An append that comes within this of the last one joins the group: about the
    /// spacing of a loaded daemon's appends (a few per millisecond), and below a
    /// commit's time.
    gap: Duration,
    /// The most a group waits for more.
    limit: Duration,
    /// A group that has this many appends already waits for none: appends come faster
    /// than commits, and a wait would only idle the writer.
    few: usize,
    max_group: usize,
}

const GATHERING: Gathering = Gathering {
    gap: Duration::from_micros(200),
    limit: Duration::from_millis(1),
    few: 8,
    max_group: MAX_GROUP,
};

impl JournalWriter {
    /// Starts the writer thread on an open, migrated SQLite connection.
    pub fn start(conn: Connection, db_path: &Path) -> JournalWriter {
        JournalWriter::with_backend(SqliteBackend::new(conn, db_path))
    }

    /// Starts the writer thread on any backend.
    pub fn with_backend(backend: impl Backend) -> JournalWriter {
        JournalWriter::gathering(backend, GATHERING)
    }

    fn gathering(backend: impl Backend, gathering: Gathering) -> JournalWriter {
        let (queue, rx) = mpsc::channel::<Pending>();
        let (committed, _) = broadcast::channel(4096);
        let publish = committed.clone();
        std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || write_loop(backend, rx, publish, gathering))
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
    gathering: Gathering,
) {
    let mut group: Vec<Pending> = Vec::new();
    // The first append that came in while the last COMMIT ran: the journal is busy.
    let mut came_during_commit: Option<Pending> = None;
    loop {
        let busy = came_during_commit.is_some();
        let Some(first) = came_during_commit.take().or_else(|| rx.recv().ok()) else {
            break; // every sender is gone, and nothing is left to commit
        };
        group.push(first);
        take_queued(&rx, &mut group, gathering.max_group);
        if busy && group.len() < gathering.few {
            gather(&rx, &mut group, gathering);
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
        came_during_commit = rx.try_recv().ok();
    }
}

/// Moves the appends already queued into `group`, up to `max_group`.
fn take_queued(rx: &mpsc::Receiver<Pending>, group: &mut Vec<Pending>, max_group: usize) {
    while group.len() < max_group {
        match rx.try_recv() {
            Ok(p) => group.push(p),
            Err(_) => break,
        }
    }
}

/// Adds appends to `group` while they keep coming (see `Gathering`).
fn gather(rx: &mpsc::Receiver<Pending>, group: &mut Vec<Pending>, gathering: Gathering) {
    let until = Instant::now() + gathering.limit;
    while group.len() < gathering.max_group {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        match rx.recv_timeout(left.min(gathering.gap)) {
            Ok(p) => {
                group.push(p);
                take_queued(rx, group, gathering.max_group);
            }
            Err(_) => return, // a gap with nothing, or every sender is gone
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend whose every COMMIT says it began, then waits for the test's permit, and
    /// records how many appends it held.
    struct GatedBackend {
        began: mpsc::Sender<()>,
        permits: mpsc::Receiver<()>,
        commits: std::sync::Arc<std::sync::Mutex<Vec<usize>>>,
    }

    impl Backend for GatedBackend {
        fn write(&mut self, appends: &[&Append]) -> Result<(), String> {
            let _ = self.began.send(());
            self.permits.recv().map_err(|e| e.to_string())?;
            self.commits.lock().unwrap().push(appends.len());
            Ok(())
        }

        fn location(&self) -> String {
            "the test's gate".into()
        }
    }

    struct Harness {
        writer: JournalWriter,
        began: mpsc::Receiver<()>,
        permits: mpsc::Sender<()>,
        commits: std::sync::Arc<std::sync::Mutex<Vec<usize>>>,
    }

    /// A writer over a gated backend. Gaps and limits are a minute, so a group that
    /// wrongly waits makes the test wait far past its bound.
    fn harness(few: usize, max_group: usize) -> Harness {
        let (began_tx, began) = mpsc::channel();
        let (permits, permits_rx) = mpsc::channel();
        let commits = std::sync::Arc::default();
        let backend = GatedBackend {
            began: began_tx,
            permits: permits_rx,
            commits: std::sync::Arc::clone(&commits),
        };
        let gathering = Gathering {
            gap: Duration::from_secs(60),
            limit: Duration::from_secs(60),
            few,
            max_group,
        };
        Harness {
            writer: JournalWriter::gathering(backend, gathering),
            began,
            permits,
            commits,
        }
    }

    const BOUND: Duration = Duration::from_secs(30);

    impl Harness {
        fn append(&self) -> oneshot::Receiver<Result<(), JournalError>> {
            self.writer.append(Append::default())
        }

        /// Waits for a COMMIT to begin, then lets it through.
        fn commit_next(&self) {
            self.began.recv_timeout(BOUND).expect("a commit began");
            self.permits.send(()).unwrap();
        }

        fn commits(&self) -> Vec<usize> {
            self.commits.lock().unwrap().clone()
        }
    }

    /// The reply to an append, or a failure if none comes within `BOUND`.
    fn answered(reply: oneshot::Receiver<Result<(), JournalError>>) {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(reply.blocking_recv());
        });
        let got = rx
            .recv_timeout(BOUND)
            .expect("the append was answered in time");
        assert!(matches!(got, Ok(Ok(()))), "{got:?}");
    }

    #[test]
    fn an_append_to_an_idle_journal_is_committed_at_once() {
        let h = harness(8, MAX_GROUP);
        let first = h.append();
        h.commit_next();
        answered(first);
        // Nothing came in during that commit: the next append waits for no company.
        let second = h.append();
        h.commit_next();
        answered(second);
        assert_eq!(h.commits(), vec![1, 1]);
    }

    #[test]
    fn appends_that_keep_coming_to_a_busy_journal_join_one_commit() {
        let h = harness(8, 3);
        let first = h.append();
        h.began.recv_timeout(BOUND).expect("the first commit began");
        // Two come in while the first commit runs: the journal is busy.
        let (second, third) = (h.append(), h.append());
        h.permits.send(()).unwrap();
        answered(first);
        // One more comes while the group gathers; it fills the group (3), which then
        // commits without waiting out the minute.
        let fourth = h.append();
        h.commit_next();
        for reply in [second, third, fourth] {
            answered(reply);
        }
        assert_eq!(h.commits(), vec![1, 3]);
    }

    #[test]
    fn a_busy_journal_whose_group_is_large_already_waits_for_no_more() {
        let h = harness(2, MAX_GROUP);
        let first = h.append();
        h.began.recv_timeout(BOUND).expect("the first commit began");
        let (second, third) = (h.append(), h.append());
        h.permits.send(()).unwrap();
        answered(first);
        h.commit_next();
        answered(second);
        answered(third);
        assert_eq!(h.commits(), vec![1, 2]);
    }
}
