//! The SQLite backend: one write connection on the writer thread, WAL checkpoints on a
//! thread of their own.
//!
//! Owns: turning an append into SQL (an `events` row per transition, then the kind's
//! state row through `tables::Table`), in one transaction per group.
//! Must never: be used from an actor thread (it blocks on fsync).

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use rusqlite::{Connection, params};

use super::Append;
use super::backend::Backend;
use super::tables::Table;
use crate::model::{Transition, now_ms};

/// Transitions between two nudges of the checkpointer.
const CHECKPOINT_EVERY: usize = 1000;

pub struct SqliteBackend {
    conn: Connection,
    path: PathBuf,
    nudge: mpsc::SyncSender<()>,
    since_checkpoint: usize,
    /// Reused for every JSON payload and record (no allocation per transition).
    event_json: Vec<u8>,
    record_json: Vec<u8>,
}

impl SqliteBackend {
    /// Takes an open, migrated write connection to `path`.
    pub fn new(conn: Connection, path: &Path) -> SqliteBackend {
        // WAL checkpoints run on a connection of their own, off the writer's path (they
        // took a fifth of its time inline); the writer nudges it after commits.
        let _ = conn.pragma_update(None, "wal_autocheckpoint", 0);
        let (nudge, nudged) = mpsc::sync_channel::<()>(1);
        let db = path.to_path_buf();
        std::thread::Builder::new()
            .name("journal-checkpointer".into())
            .spawn(move || checkpoint_loop(&db, nudged))
            .expect("spawning the checkpoint thread");
        SqliteBackend {
            conn,
            path: path.to_path_buf(),
            nudge,
            since_checkpoint: 0,
            event_json: Vec::with_capacity(4096),
            record_json: Vec::with_capacity(4096),
        }
    }

    fn write_group(&mut self, appends: &[&Append]) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        let at = now_ms();
        for append in appends {
            for t in &append.transitions {
                match t {
                    Transition::Task(e, r) => write_transition(
                        &tx,
                        at,
                        e,
                        r,
                        &mut self.event_json,
                        &mut self.record_json,
                    )?,
                    Transition::Pipeline(e, r) => write_transition(
                        &tx,
                        at,
                        e,
                        r,
                        &mut self.event_json,
                        &mut self.record_json,
                    )?,
                    Transition::Loop(e, r) => write_transition(
                        &tx,
                        at,
                        e,
                        r,
                        &mut self.event_json,
                        &mut self.record_json,
                    )?,
                    Transition::Schedule(e, r) => write_transition(
                        &tx,
                        at,
                        e,
                        r,
                        &mut self.event_json,
                        &mut self.record_json,
                    )?,
                    Transition::ScheduleRun(e, r) => write_transition(
                        &tx,
                        at,
                        e,
                        r,
                        &mut self.event_json,
                        &mut self.record_json,
                    )?,
                }
            }
        }
        tx.commit()
    }
}

impl Backend for SqliteBackend {
    fn write(&mut self, appends: &[&Append]) -> Result<(), String> {
        self.write_group(appends).map_err(|e| e.to_string())
    }

    fn after_commit(&mut self, transitions: usize) {
        self.since_checkpoint += transitions;
        if self.since_checkpoint >= CHECKPOINT_EVERY && self.nudge.try_send(()).is_ok() {
            self.since_checkpoint = 0;
        }
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }
}

fn to_json(buf: &mut Vec<u8>, value: &impl serde::Serialize) -> rusqlite::Result<()> {
    buf.clear();
    serde_json::to_writer(&mut *buf, value)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

fn as_str(buf: &[u8]) -> &str {
    // serde_json writes UTF-8 only.
    std::str::from_utf8(buf).unwrap_or_default()
}

/// Journals one transition: its event row, then its state row.
pub(super) fn write_transition<T: Table>(
    conn: &Connection,
    at: i64,
    event: &T::Event,
    record: &T,
    event_json: &mut Vec<u8>,
    record_json: &mut Vec<u8>,
) -> rusqlite::Result<()> {
    to_json(event_json, event)?;
    to_json(record_json, record)?;
    conn.prepare_cached(
        "INSERT INTO events(at, entity_kind, entity_id, transition, payload)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        at,
        T::KIND.as_str(),
        record.id(),
        T::event_name(event),
        as_str(event_json)
    ])?;
    T::write(conn, event, record, as_str(record_json))
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
