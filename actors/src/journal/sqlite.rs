//! The SQLite backend: one write connection on the writer thread, WAL checkpoints on a
//! thread of their own.
//!
//! Owns: turning an append into SQL (the kind's state row through `tables::Table`, and
//! an `events` row per transition, inserted many rows per statement), in one
//! transaction per group. Records and events are written as JSON without their unset
//! fields (`compact_json`).
//! Must never: be used from an actor thread (it blocks on fsync).

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use rusqlite::{Connection, params};

use super::Append;
use super::backend::Backend;
use super::compact_json;
use super::tables::Table;
use crate::model::{Transition, now_ms};

/// Transitions between two nudges of the checkpointer.
const CHECKPOINT_EVERY: usize = 1000;

/// Transitions after which the writer finishes a checkpoint itself, so that the WAL
/// starts again from its beginning. The checkpointer alone never lets it: by the time
/// it has copied the frames it saw, the writer has appended more, and SQLite restarts
/// the WAL only when a write begins with every frame copied. The WAL then grows for as
/// long as writes keep coming (hundreds of MB in the journal bench), and every commit
/// extends the file: new blocks zeroed and allocated, and an inode to write at each
/// fsync. The writer's own checkpoint copies only the frames the checkpointer has not
/// (those of its last few commits), then the next write reuses the file from the start.
const RESTART_WAL_EVERY: usize = 4000;

pub struct SqliteBackend {
    conn: Connection,
    path: PathBuf,
    nudge: mpsc::SyncSender<()>,
    since_checkpoint: usize,
    since_wal_restart: usize,
    /// The event payloads of the group being written, one after another (reused: no
    /// allocation per transition).
    event_json: Vec<u8>,
    /// The record of the transition being written (reused).
    record_json: Vec<u8>,
    /// `INSERT INTO events` of `n` rows, for each `n` of `EVENT_CHUNKS`.
    event_inserts: Vec<(usize, String)>,
}

/// Rows per `INSERT INTO events` statement, largest first: a group's events go in as
/// few statements as these sizes allow. `AUTOINCREMENT` reads and writes
/// `sqlite_sequence` once per statement, not per row, so this saves that work (and a
/// statement's setup) for all but one row in a chunk.
const EVENT_CHUNKS: [usize; 4] = [64, 16, 4, 1];

/// The values bound per event row.
const EVENT_COLUMNS: usize = 5;

/// One `events` row staged for its group's INSERT.
struct EventRow<'a> {
    kind: &'static str,
    entity_id: &'a str,
    transition: &'static str,
    /// Where the payload lies in `SqliteBackend::event_json`.
    payload: std::ops::Range<usize>,
}

impl SqliteBackend {
    /// Takes an open, migrated write connection to `path`.
    pub fn new(conn: Connection, path: &Path) -> SqliteBackend {
        // WAL checkpoints run on a connection of their own, off the writer's path (they
        // took a fifth of its time inline); the writer nudges it after commits.
        let _ = conn.pragma_update(None, "wal_autocheckpoint", 0);
        // Every statement the writer uses stays prepared (the kinds' writes and the
        // event inserts of each chunk size).
        conn.set_prepared_statement_cache_capacity(64);
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
            since_wal_restart: 0,
            event_json: Vec::with_capacity(64 * 1024),
            record_json: Vec::with_capacity(4096),
            event_inserts: EVENT_CHUNKS
                .iter()
                .map(|&n| (n, insert_events_sql(n)))
                .collect(),
        }
    }

    fn write_group(&mut self, appends: &[&Append]) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        let at = now_ms();
        self.event_json.clear();
        let mut events: Vec<EventRow<'_>> =
            Vec::with_capacity(appends.iter().map(|a| a.transitions.len()).sum());
        for append in appends {
            for t in &append.transitions {
                let (events_json, record_json) = (&mut self.event_json, &mut self.record_json);
                events.push(match t {
                    Transition::Task(e, r) => stage(&tx, e, r, events_json, record_json)?,
                    Transition::Pipeline(e, r) => stage(&tx, e, r, events_json, record_json)?,
                    Transition::Loop(e, r) => stage(&tx, e, r, events_json, record_json)?,
                    Transition::Schedule(e, r) => stage(&tx, e, r, events_json, record_json)?,
                    Transition::ScheduleRun(e, r) => stage(&tx, e, r, events_json, record_json)?,
                });
            }
        }
        insert_events(&tx, at, &events, &self.event_json, &self.event_inserts)?;
        drop(events);
        tx.commit()
    }
}

impl SqliteBackend {
    /// Copies every WAL frame not yet in the database, without waiting for anyone;
    /// true when none is left (the next write starts the WAL again). False when the
    /// checkpointer holds the checkpoint or a reader still needs older frames: the
    /// writer tries again after its next commit.
    fn checkpoint_all(&self) -> bool {
        match self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            }) {
            Ok((busy, frames, copied)) => busy == 0 && frames == copied,
            Err(e) => {
                tracing::warn!(error = %e, "WAL checkpoint failed; the next one will retry");
                false
            }
        }
    }
}

/// Writes the state row of one transition and stages its event row: the payload is
/// appended to `events_json`.
fn stage<'a, T: Table>(
    conn: &Connection,
    event: &T::Event,
    record: &'a T,
    events_json: &mut Vec<u8>,
    record_json: &mut Vec<u8>,
) -> rusqlite::Result<EventRow<'a>> {
    let start = events_json.len();
    compact_json::write(events_json, event)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    to_json(record_json, record)?;
    T::write(conn, event, record, as_str(record_json))?;
    Ok(EventRow {
        kind: T::KIND.as_str(),
        entity_id: record.id(),
        transition: T::event_name(event),
        payload: start..events_json.len(),
    })
}

/// `INSERT INTO events` of `rows` rows.
fn insert_events_sql(rows: usize) -> String {
    let mut sql =
        String::from("INSERT INTO events(at, entity_kind, entity_id, transition, payload) VALUES ");
    for row in 0..rows {
        let p = row * EVENT_COLUMNS;
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!(
            "(?{}, ?{}, ?{}, ?{}, ?{})",
            p + 1,
            p + 2,
            p + 3,
            p + 4,
            p + 5
        ));
    }
    sql
}

/// Inserts the staged event rows, in order, in as few statements as `chunks` allows.
fn insert_events(
    conn: &Connection,
    at: i64,
    rows: &[EventRow<'_>],
    payloads: &[u8],
    chunks: &[(usize, String)],
) -> rusqlite::Result<()> {
    let mut rest = rows;
    while !rest.is_empty() {
        let (size, sql) = chunks
            .iter()
            .find(|(size, _)| *size <= rest.len())
            .expect("the chunk sizes end with 1");
        let (chunk, after) = rest.split_at(*size);
        let mut stmt = conn.prepare_cached(sql)?;
        for (i, row) in chunk.iter().enumerate() {
            let p = i * EVENT_COLUMNS;
            stmt.raw_bind_parameter(p + 1, at)?;
            stmt.raw_bind_parameter(p + 2, row.kind)?;
            stmt.raw_bind_parameter(p + 3, row.entity_id)?;
            stmt.raw_bind_parameter(p + 4, row.transition)?;
            stmt.raw_bind_parameter(p + 5, as_str(&payloads[row.payload.clone()]))?;
        }
        stmt.raw_execute()?;
        rest = after;
    }
    Ok(())
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
        self.since_wal_restart += transitions;
        if self.since_wal_restart >= RESTART_WAL_EVERY && self.checkpoint_all() {
            self.since_wal_restart = 0;
        }
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }
}

fn to_json(buf: &mut Vec<u8>, value: &impl serde::Serialize) -> rusqlite::Result<()> {
    buf.clear();
    compact_json::write(buf, value)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

fn as_str(buf: &[u8]) -> &str {
    // serde_json writes UTF-8 only.
    std::str::from_utf8(buf).unwrap_or_default()
}

/// Journals one transition alone: its event row, then its state row (migrations).
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

#[cfg(test)]
mod tests {
    use super::{RESTART_WAL_EVERY, SqliteBackend};
    use crate::journal::{Append, Backend, open_write_connection};
    use crate::model::{TaskEvent, TaskRecord, TaskStatus, Transition};

    /// `count` new tasks in one append.
    fn submissions(first: usize, count: usize) -> Append {
        Append::new(
            (first..first + count)
                .map(|n| {
                    let task = TaskRecord {
                        id: format!("task-{n:08}"),
                        prompt: "x".repeat(200),
                        status: TaskStatus::Queued,
                        created_at: n as i64,
                        ..Default::default()
                    };
                    Transition::Task(
                        TaskEvent::Submitted {
                            task: Box::new(task.clone()),
                        },
                        task,
                    )
                })
                .collect(),
        )
    }

    #[test]
    fn after_the_writers_own_checkpoint_the_wal_is_written_again_from_its_beginning() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("beat.db");
        let wal = dir.path().join("beat.db-wal");
        let mut backend = SqliteBackend::new(open_write_connection(&db).unwrap(), &db);
        // No `after_commit` here: the checkpointer is never nudged, so nothing but
        // `checkpoint_all` copies frames.
        let group = RESTART_WAL_EVERY / 4;
        let mut next = 0;
        let mut write_four_groups = |backend: &mut SqliteBackend| {
            for _ in 0..4 {
                backend.write(&[&submissions(next, group)]).unwrap();
                next += group;
            }
            std::fs::metadata(&wal).unwrap().len()
        };
        let first = write_four_groups(&mut backend);
        let without_checkpoint = write_four_groups(&mut backend);
        assert!(
            without_checkpoint > first * 3 / 2,
            "the WAL did not grow ({first} then {without_checkpoint} bytes)"
        );
        assert!(backend.checkpoint_all(), "frames were left in the WAL");
        let after_checkpoint = write_four_groups(&mut backend);
        assert_eq!(
            after_checkpoint, without_checkpoint,
            "the WAL grew after every frame was copied"
        );
    }
}
