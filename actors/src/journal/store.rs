//! Reads: read-only connections in a small pool, used off the actor threads.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::schema::open_read_connection;
use crate::model::{Priority, TaskEvent, TaskRecord, TaskStatus};

/// Read access to the journal's state tables.
#[derive(Clone)]
pub struct Store {
    path: PathBuf,
    pool: Arc<Mutex<Vec<Connection>>>,
}

/// A row of `events`.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub seq: i64,
    pub entity_id: String,
    pub event: TaskEvent,
}

/// Filter of a task listing, newest first.
#[derive(Debug, Clone, Default)]
pub struct TaskQuery {
    pub status: Option<TaskStatus>,
    pub limit: Option<usize>,
}

const TASK_COLUMNS: &str = "id, prompt, status, priority, agent, working_directory, timeout,
    idle_timeout, max_output_buffer, parent_task_id, retry_count, retry_of, created_at,
    started_at, completed_at, not_before, exit_code, signal, reason, shim_pid,
    shim_start_time, cancel_reason, output_bytes, output_truncated, model, system_prompt,
    session_id, resume_session, result, usage, rate_limit_retries, checkpoint, depends_on,
    continue_from, pipeline_id, pipeline_step, start_delay, cascade_root";

fn json_column<T: serde::de::DeserializeOwned>(
    row: &Row<'_>,
    index: usize,
) -> rusqlite::Result<Option<T>> {
    match row.get::<_, Option<String>>(index)? {
        None => Ok(None),
        Some(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| conversion_error(index, e.to_string())),
    }
}

fn conversion_error(column: usize, message: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, message.into())
}

fn task_from_row(row: &Row<'_>) -> rusqlite::Result<TaskRecord> {
    let status: String = row.get(2)?;
    let priority: String = row.get(3)?;
    Ok(TaskRecord {
        id: row.get(0)?,
        prompt: row.get(1)?,
        status: TaskStatus::parse(&status)
            .ok_or_else(|| conversion_error(2, format!("unknown status {status}")))?,
        priority: Priority::parse(&priority)
            .ok_or_else(|| conversion_error(3, format!("unknown priority {priority}")))?,
        agent: row.get(4)?,
        working_directory: row.get(5)?,
        timeout: row.get::<_, i64>(6)? as u64,
        idle_timeout: row.get::<_, Option<i64>>(7)?.map(|v| v as u64),
        max_output_buffer: row.get::<_, i64>(8)? as u64,
        parent_task_id: row.get(9)?,
        retry_count: row.get(10)?,
        retry_of: row.get(11)?,
        created_at: row.get(12)?,
        started_at: row.get(13)?,
        completed_at: row.get(14)?,
        not_before: row.get(15)?,
        exit_code: row.get(16)?,
        signal: row.get(17)?,
        reason: row.get(18)?,
        shim_pid: row.get(19)?,
        shim_start_time: row.get::<_, Option<i64>>(20)?.map(|v| v as u64),
        cancel_reason: row.get(21)?,
        output_bytes: row.get::<_, Option<i64>>(22)?.map(|v| v as u64),
        output_truncated: row.get(23)?,
        model: row.get(24)?,
        system_prompt: row.get(25)?,
        session_id: row.get(26)?,
        resume_session: row.get(27)?,
        result: row.get(28)?,
        usage: json_column(row, 29)?,
        rate_limit_retries: row.get(30)?,
        checkpoint: json_column(row, 31)?,
        depends_on: json_column(row, 32)?.unwrap_or_default(),
        continue_from: row.get(33)?,
        pipeline_id: row.get(34)?,
        pipeline_step: row.get(35)?,
        start_delay: row.get::<_, Option<i64>>(36)?.map(|v| v as u64),
        cascade_root: row.get(37)?,
    })
}

impl Store {
    pub fn new(path: &Path) -> Store {
        Store {
            path: path.to_path_buf(),
            pool: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Runs `f` on a pooled read connection. Blocking: call it off actor threads.
    pub fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        let pooled = self.pool.lock().map(|mut p| p.pop()).unwrap_or(None);
        let conn = match pooled {
            Some(c) => c,
            None => open_read_connection(&self.path)?,
        };
        let result = f(&conn);
        if let Ok(mut pool) = self.pool.lock()
            && pool.len() < 8
        {
            pool.push(conn);
        }
        result
    }

    pub fn task(&self, id: &str) -> rusqlite::Result<Option<TaskRecord>> {
        self.with(|c| {
            c.prepare_cached(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1"))?
                .query_row(params![id], task_from_row)
                .optional()
        })
    }

    pub fn tasks(&self, query: &TaskQuery) -> rusqlite::Result<Vec<TaskRecord>> {
        let limit = query.limit.map(|l| l as i64).unwrap_or(-1);
        self.with(|c| match query.status {
            Some(status) => c
                .prepare_cached(&format!(
                    "SELECT {TASK_COLUMNS} FROM tasks WHERE status = ?1
                     ORDER BY created_at DESC, id DESC LIMIT ?2"
                ))?
                .query_map(params![status.as_str(), limit], task_from_row)?
                .collect(),
            None => c
                .prepare_cached(&format!(
                    "SELECT {TASK_COLUMNS} FROM tasks ORDER BY created_at DESC, id DESC LIMIT ?1"
                ))?
                .query_map(params![limit], task_from_row)?
                .collect(),
        })
    }

    /// Tasks that are not finished, oldest first: what recovery brings back to life.
    pub fn live_tasks(&self) -> rusqlite::Result<Vec<TaskRecord>> {
        self.with(|c| {
            c.prepare(&format!(
                "SELECT {TASK_COLUMNS} FROM tasks
                 WHERE status IN ('blocked', 'queued', 'running')
                 ORDER BY created_at ASC, rowid ASC"
            ))?
            .query_map([], task_from_row)?
            .collect()
        })
    }

    /// Tasks by id (those that exist).
    pub fn tasks_by_id(&self, ids: &[String]) -> rusqlite::Result<Vec<TaskRecord>> {
        self.with(|c| {
            let mut stmt =
                c.prepare_cached(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1"))?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(t) = stmt.query_row(params![id], task_from_row).optional()? {
                    out.push(t);
                }
            }
            Ok(out)
        })
    }

    /// The tasks that depend directly on `id`.
    pub fn dependents(&self, id: &str) -> rusqlite::Result<Vec<TaskRecord>> {
        self.with(|c| {
            c.prepare_cached(&format!(
                "SELECT {TASK_COLUMNS} FROM tasks
                 WHERE id IN (SELECT task_id FROM task_edges WHERE depends_on = ?1)
                 ORDER BY created_at, rowid"
            ))?
            .query_map(params![id], task_from_row)?
            .collect()
        })
    }

    /// The steps of a pipeline, in order.
    pub fn pipeline(&self, id: &str) -> rusqlite::Result<Vec<TaskRecord>> {
        self.with(|c| {
            c.prepare_cached(&format!(
                "SELECT {TASK_COLUMNS} FROM tasks WHERE pipeline_id = ?1 ORDER BY pipeline_step"
            ))?
            .query_map(params![id], task_from_row)?
            .collect()
        })
    }

    /// Every event in commit order (for replay checks and audits).
    pub fn events(&self) -> rusqlite::Result<Vec<StoredEvent>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT seq, entity_id, payload FROM events WHERE entity_kind = 'task' ORDER BY seq",
            )?;
            let rows = stmt.query_map([], |row| {
                let payload: String = row.get(2)?;
                let event = serde_json::from_str(&payload)
                    .map_err(|e| conversion_error(2, e.to_string()))?;
                Ok(StoredEvent { seq: row.get(0)?, entity_id: row.get(1)?, event })
            })?;
            rows.collect()
        })
    }

    /// How many times each task was started: a task that ran twice shows 2.
    pub fn start_counts(&self) -> rusqlite::Result<Vec<(String, i64)>> {
        self.with(|c| {
            c.prepare(
                "SELECT entity_id, COUNT(*) FROM events WHERE transition = 'started'
                 GROUP BY entity_id",
            )?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect()
        })
    }
}
