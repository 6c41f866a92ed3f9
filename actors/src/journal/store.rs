//! Reads: read-only connections in a small pool, used off the actor threads. Records are
//! read from their `record` column only (`tables::read_record`); a task list's summaries
//! read only the fields they hold from it (`TaskSummary`).

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, params};

use super::schema::open_read_connection;
use super::tables::{self, Table, read_record};
use crate::model::loops::{IterationRecord, LoopRecord};
use crate::model::schedule::{ExecutionRecord, ExecutionStatus, ScheduleRecord, ScheduleStatus};
use crate::model::{EntityKind, EntityRef, Event, PipelineRecord, TaskRecord, TaskStatus};

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
    pub kind: EntityKind,
    pub entity_id: String,
    pub event: Event,
}

/// Filter of a task listing, newest first.
#[derive(Debug, Clone, Default)]
pub struct TaskQuery {
    pub status: Option<TaskStatus>,
    pub limit: Option<usize>,
}

/// What a task list shows of a task (`beat list`): a few fields of its record, read
/// without building the rest of it (a list of 100 full records was most of the cost of
/// `beat list`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSummary {
    pub id: String,
    pub status: TaskStatus,
    pub agent: String,
    pub created_at: i64,
    pub reason: Option<String>,
    pub role: Option<String>,
    pub owner: Option<EntityRef>,
    /// The prompt's first characters (as many as asked for), cut between characters.
    pub prompt: String,
}

impl TaskSummary {
    /// The summary of a whole record: what `Store::task_summaries` reads without
    /// building the record (the reference its tests compare with).
    pub fn of(t: &TaskRecord, prompt_chars: usize) -> TaskSummary {
        TaskSummary {
            id: t.id.clone(),
            status: t.status,
            agent: t.agent.clone(),
            created_at: t.created_at,
            reason: t.reason.clone(),
            role: t.role.clone(),
            owner: t.owner.clone(),
            prompt: t.prompt.chars().take(prompt_chars).collect(),
        }
    }
}

/// The fields of a task record that a summary holds, borrowed from the record's JSON
/// where it has no escapes; every other field is skipped unread.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct SummaryFields<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    status: TaskStatus,
    #[serde(borrow)]
    agent: Cow<'a, str>,
    created_at: i64,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    owner: Option<EntityRef>,
    #[serde(borrow)]
    prompt: Cow<'a, str>,
}

/// The first `chars` characters of `text` (all of it when shorter).
fn first_chars(text: &str, chars: usize) -> &str {
    match text.char_indices().nth(chars) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

fn summary_row(row: &rusqlite::Row<'_>, prompt_chars: usize) -> rusqlite::Result<TaskSummary> {
    let text = row.get_ref(0)?.as_str()?;
    let f: SummaryFields =
        serde_json::from_str(text).map_err(|e| conversion_error(0, format!("task record: {e}")))?;
    Ok(TaskSummary {
        id: f.id.into_owned(),
        status: f.status,
        agent: f.agent.into_owned(),
        created_at: f.created_at,
        reason: f.reason,
        role: f.role,
        owner: f.owner,
        prompt: first_chars(&f.prompt, prompt_chars).to_string(),
    })
}

fn conversion_error(column: usize, message: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, message.into())
}

fn task_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<TaskRecord> {
    read_record(row, 0)
}

impl Store {
    pub fn new(path: &Path) -> Store {
        Store {
            path: path.to_path_buf(),
            pool: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
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

    /// One record of any kind, by id.
    pub fn get<T: Table>(&self, id: &str) -> rusqlite::Result<Option<T>> {
        self.with(|c| tables::get::<T>(c, id))
    }

    /// Every record of a kind, in creation order (audits and tests).
    pub fn all<T: Table>(&self) -> rusqlite::Result<Vec<T>> {
        self.with(|c| {
            c.prepare(&format!("SELECT record FROM {} ORDER BY rowid", T::TABLE))?
                .query_map([], |r| read_record(r, 0))?
                .collect()
        })
    }

    pub fn task(&self, id: &str) -> rusqlite::Result<Option<TaskRecord>> {
        self.get(id)
    }

    pub fn tasks(&self, query: &TaskQuery) -> rusqlite::Result<Vec<TaskRecord>> {
        self.task_rows(query, task_row)
    }

    /// `tasks`, as summaries whose prompt is cut after `prompt_chars` characters.
    pub fn task_summaries(
        &self,
        query: &TaskQuery,
        prompt_chars: usize,
    ) -> rusqlite::Result<Vec<TaskSummary>> {
        self.task_rows(query, |r| summary_row(r, prompt_chars))
    }

    /// The records `query` selects, newest first, each read by `row`.
    fn task_rows<T>(
        &self,
        query: &TaskQuery,
        row: impl Fn(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<Vec<T>> {
        let limit = limit_clause(query.limit);
        self.with(|c| match query.status {
            Some(status) => c
                .prepare_cached(&format!(
                    "SELECT record FROM tasks WHERE status = ?1
                     ORDER BY created_at DESC, id DESC {limit}"
                ))?
                .query_map(params![status.as_str()], &row)?
                .collect(),
            None => c
                .prepare_cached(&format!(
                    "SELECT record FROM tasks ORDER BY created_at DESC, id DESC {limit}"
                ))?
                .query_map([], &row)?
                .collect(),
        })
    }

    /// Tasks that are not finished, oldest first: what recovery brings back to life.
    pub fn live_tasks(&self) -> rusqlite::Result<Vec<TaskRecord>> {
        self.with(|c| {
            c.prepare(
                "SELECT record FROM tasks WHERE status IN ('blocked', 'queued', 'running')
                 ORDER BY created_at ASC, rowid ASC",
            )?
            .query_map([], task_row)?
            .collect()
        })
    }

    /// Tasks by id (those that exist).
    pub fn tasks_by_id(&self, ids: &[String]) -> rusqlite::Result<Vec<TaskRecord>> {
        self.with(|c| {
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(t) = tables::get::<TaskRecord>(c, id)? {
                    out.push(t);
                }
            }
            Ok(out)
        })
    }

    /// The tasks that depend directly on `id`.
    pub fn dependents(&self, id: &str) -> rusqlite::Result<Vec<TaskRecord>> {
        self.with(|c| {
            c.prepare_cached(
                "SELECT record FROM tasks
                 WHERE id IN (SELECT task_id FROM task_edges WHERE depends_on = ?1)
                 ORDER BY created_at, rowid",
            )?
            .query_map(params![id], task_row)?
            .collect()
        })
    }

    pub fn pipeline(&self, id: &str) -> rusqlite::Result<Option<PipelineRecord>> {
        self.get(id)
    }

    /// The steps of a pipeline, in order.
    pub fn pipeline_steps(&self, id: &str) -> rusqlite::Result<Vec<TaskRecord>> {
        self.with(|c| {
            let mut steps: Vec<TaskRecord> = c
                .prepare_cached("SELECT record FROM tasks WHERE pipeline_id = ?1")?
                .query_map(params![id], task_row)?
                .collect::<rusqlite::Result<_>>()?;
            steps.sort_by_key(|t| t.pipeline_step);
            Ok(steps)
        })
    }

    /// Pipelines still running: what recovery brings back to life.
    pub fn live_pipelines(&self) -> rusqlite::Result<Vec<PipelineRecord>> {
        self.with(|c| {
            c.prepare(
                "SELECT record FROM pipelines WHERE status = 'running' ORDER BY created_at, rowid",
            )?
            .query_map([], |r| read_record(r, 0))?
            .collect()
        })
    }

    /// How the task, loop or pipeline that `run` launched ended, with its reason;
    /// `None` while it runs, or when the run launched nothing.
    pub fn end_of_run(
        &self,
        run: &ExecutionRecord,
    ) -> rusqlite::Result<Option<(ExecutionStatus, Option<String>)>> {
        Ok(if let Some(t) = &run.task_id {
            self.task(t)?
                .and_then(|t| Some((ExecutionStatus::of_task(t.status)?, t.reason)))
        } else if let Some(l) = &run.loop_id {
            self.eval_loop(l)?
                .and_then(|l| Some((ExecutionStatus::of_loop(l.status)?, l.reason)))
        } else if let Some(p) = &run.pipeline_id {
            self.pipeline(p)?
                .and_then(|p| Some((ExecutionStatus::of_pipeline(p.status)?, p.reason)))
        } else {
            None
        })
    }

    pub fn eval_loop(&self, id: &str) -> rusqlite::Result<Option<LoopRecord>> {
        self.get(id)
    }

    /// Loops not ended (running or paused): what recovery brings back to life.
    pub fn live_loops(&self) -> rusqlite::Result<Vec<LoopRecord>> {
        self.with(|c| {
            c.prepare(
                "SELECT record FROM loops WHERE status IN ('running','paused') ORDER BY created_at, rowid",
            )?
            .query_map([], |r| read_record(r, 0))?
            .collect()
        })
    }

    /// Loops, newest first, optionally of one status.
    pub fn loops(&self, status: Option<&str>, limit: usize) -> rusqlite::Result<Vec<LoopRecord>> {
        let limit = limit_clause(Some(limit));
        self.with(|c| {
            c.prepare_cached(&format!(
                "SELECT record FROM loops WHERE (?1 IS NULL OR status = ?1)
                 ORDER BY created_at DESC, rowid DESC {limit}"
            ))?
            .query_map(params![status], |r| read_record(r, 0))?
            .collect()
        })
    }

    /// Schedules that are active, paused, or following a run: what recovery brings back.
    pub fn live_schedules(&self) -> rusqlite::Result<Vec<ScheduleRecord>> {
        self.with(|c| {
            c.prepare("SELECT record FROM schedules WHERE live ORDER BY created_at, rowid")?
                .query_map([], |r| read_record(r, 0))?
                .collect()
        })
    }

    /// Schedules, newest first (`ListSchedules`).
    pub fn schedules(
        &self,
        status: Option<ScheduleStatus>,
        limit: usize,
        offset: usize,
    ) -> rusqlite::Result<Vec<ScheduleRecord>> {
        let limit = limit_clause(Some(limit));
        self.with(|c| {
            c.prepare_cached(&format!(
                "SELECT record FROM schedules WHERE (?1 IS NULL OR status = ?1)
                 ORDER BY created_at DESC, rowid DESC {limit} OFFSET {offset}"
            ))?
            .query_map(params![status.map(|s| s.as_str())], |r| read_record(r, 0))?
            .collect()
        })
    }

    pub fn schedule(&self, id: &str) -> rusqlite::Result<Option<ScheduleRecord>> {
        self.get(id)
    }

    /// A schedule's executions, the newest occurrence first.
    pub fn schedule_runs(
        &self,
        schedule_id: &str,
        limit: usize,
    ) -> rusqlite::Result<Vec<ExecutionRecord>> {
        let limit = limit_clause(Some(limit));
        self.with(|c| {
            c.prepare_cached(&format!(
                "SELECT record FROM schedule_runs WHERE schedule_id = ?1
                 ORDER BY scheduled_for DESC, rowid DESC {limit}"
            ))?
            .query_map(params![schedule_id], |r| read_record(r, 0))?
            .collect()
        })
    }

    /// A loop's iterations, oldest first.
    pub fn loop_iterations(&self, loop_id: &str) -> rusqlite::Result<Vec<IterationRecord>> {
        self.with(|c| {
            c.prepare_cached(
                "SELECT record FROM loop_iterations WHERE loop_id = ?1 ORDER BY iteration_number",
            )?
            .query_map(params![loop_id], |r| {
                let text = r.get_ref(0)?.as_str()?;
                serde_json::from_str(text).map_err(|e| conversion_error(0, e.to_string()))
            })?
            .collect()
        })
    }

    /// The schedule's most recent execution that ran or was refused (not one that a
    /// policy dropped): what `afterSchedule` follows.
    pub fn latest_run(&self, schedule_id: &str) -> rusqlite::Result<Option<ExecutionRecord>> {
        self.with(|c| {
            c.prepare_cached(
                "SELECT record FROM schedule_runs WHERE schedule_id = ?1
                 AND status IN ('triggered','completed','failed','cancelled')
                 ORDER BY rowid DESC LIMIT 1",
            )?
            .query_map(params![schedule_id], |r| read_record(r, 0))?
            .next()
            .transpose()
        })
    }

    /// Executions by id (those that exist).
    pub fn runs_by_id(&self, ids: &[String]) -> rusqlite::Result<Vec<ExecutionRecord>> {
        self.with(|c| {
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(e) = tables::get::<ExecutionRecord>(c, id)? {
                    out.push(e);
                }
            }
            Ok(out)
        })
    }

    /// The execution that launched pipeline `id`, if a schedule did.
    pub fn run_of_pipeline(&self, id: &str) -> rusqlite::Result<Option<ExecutionRecord>> {
        self.with(|c| {
            c.prepare_cached("SELECT record FROM schedule_runs WHERE pipeline_id = ?1")?
                .query_map(params![id], |r| read_record(r, 0))?
                .next()
                .transpose()
        })
    }

    /// Every event in commit order (for replay checks and audits).
    pub fn events(&self) -> rusqlite::Result<Vec<StoredEvent>> {
        self.with(|c| {
            let mut stmt =
                c.prepare("SELECT seq, entity_kind, entity_id, payload FROM events ORDER BY seq")?;
            let rows = stmt.query_map([], |row| {
                let kind_text = row.get_ref(1)?.as_str()?;
                let kind = EntityKind::parse(kind_text)
                    .ok_or_else(|| conversion_error(1, format!("unknown kind {kind_text}")))?;
                let event = Event::from_json(kind, row.get_ref(3)?.as_str()?)
                    .map_err(|e| conversion_error(3, e.to_string()))?;
                Ok(StoredEvent {
                    seq: row.get(0)?,
                    kind,
                    entity_id: row.get(2)?,
                    event,
                })
            })?;
            rows.collect()
        })
    }

    /// How many times each task was started: a task that ran twice shows 2.
    pub fn start_counts(&self) -> rusqlite::Result<Vec<(String, i64)>> {
        self.with(|c| {
            c.prepare(
                "SELECT entity_id, COUNT(*) FROM events
                 WHERE entity_kind = 'task' AND transition = 'started' GROUP BY entity_id",
            )?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect()
        })
    }
}

/// A `LIMIT` clause written into a statement's text, not bound: SQLite plans with a bound
/// `LIMIT`'s value, so every new binding of it (each call of a cached statement)
/// expired the statement and parsed and planned it again (7 % of the daemon's CPU for
/// `beat list`). Each limit in use has its own cached statement; a number in the text
/// is no injection. `None`: no limit.
fn limit_clause(limit: Option<usize>) -> String {
    match limit {
        Some(n) => format!("LIMIT {}", n.min(i64::MAX as usize)),
        None => "LIMIT -1".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::task::tests_support::queued;

    fn task(id: &str, prompt: &str, created_at: i64) -> TaskRecord {
        TaskRecord {
            prompt: prompt.into(),
            created_at,
            ..queued(id)
        }
    }

    /// Writes the rows as the journal writes them (nulls left out: `compact_json`).
    fn store_of(dir: &Path, tasks: &[TaskRecord]) -> Store {
        let path = dir.join("beat.db");
        let conn = super::super::open_write_connection(&path).unwrap();
        for t in tasks {
            let mut record = Vec::new();
            super::super::compact_json::write(&mut record, t).unwrap();
            conn.execute(
                "INSERT INTO tasks(id, status, created_at, record) VALUES (?1, ?2, ?3, ?4)",
                params![
                    t.id,
                    t.status.as_str(),
                    t.created_at,
                    String::from_utf8(record).unwrap()
                ],
            )
            .unwrap();
        }
        Store::new(&path)
    }

    /// A list read again reuses its statement as prepared: SQLite planned with a bound
    /// `LIMIT`'s value and parsed the statement again at every call.
    #[test]
    fn a_list_read_again_is_not_prepared_again() {
        let dir = tempfile::tempdir().unwrap();
        let tasks = [task("task-a", "a", 1), task("task-b", "b", 2)];
        let store = store_of(dir.path(), &tasks);
        let queries = [
            TaskQuery {
                status: None,
                limit: Some(100),
            },
            TaskQuery {
                status: Some(TaskStatus::Queued),
                limit: Some(100),
            },
        ];
        for query in &queries {
            for _ in 0..3 {
                assert_eq!(store.task_summaries(query, 10).unwrap().len(), 2);
            }
        }
        // Every statement of the pooled connection the lists ran on (its cache holds
        // them), whatever its text: none was prepared a second time.
        let reprepared = store
            .with(|c| {
                let mut counts = Vec::new();
                // SAFETY: walking the connection's own statements while it is borrowed
                // here, reading a counter of each.
                unsafe {
                    let mut statement =
                        rusqlite::ffi::sqlite3_next_stmt(c.handle(), std::ptr::null_mut());
                    while !statement.is_null() {
                        counts.push(rusqlite::ffi::sqlite3_stmt_status(
                            statement,
                            rusqlite::ffi::SQLITE_STMTSTATUS_REPREPARE,
                            0,
                        ));
                        statement = rusqlite::ffi::sqlite3_next_stmt(c.handle(), statement);
                    }
                }
                Ok(counts)
            })
            .unwrap();
        assert!(
            reprepared.len() >= 2,
            "the lists' statements are cached: {reprepared:?}"
        );
        assert!(
            reprepared.iter().all(|&n| n == 0),
            "prepared again: {reprepared:?}"
        );
    }

    #[test]
    fn summaries_hold_the_listed_fields_of_the_full_records_with_the_prompt_cut_between_characters()
    {
        let dir = tempfile::tempdir().unwrap();
        let mut owned = task("task-b", "é\u{1F600}\"quoted\"\\ and\nmore ünïcode text", 2);
        owned.status = TaskStatus::Failed;
        owned.reason = Some("the agent exited with code 1 \u{2014} \"see logs\"".into());
        owned.role = Some("eval".into());
        owned.owner = Some(EntityRef::new(EntityKind::Loop, "loop-1"));
        owned.result = Some("a result that the summary does not hold".into());
        let tasks = [
            task("task-a", "short", 1),
            owned,
            task("task-c", &"ß".repeat(300), 3),
            task("task-d", "", 3),
        ];
        let store = store_of(dir.path(), &tasks);
        let query = TaskQuery::default();
        let full = store.tasks(&query).unwrap();
        for chars in [0, 1, 3, 50, 51, 1000] {
            let summaries = store.task_summaries(&query, chars).unwrap();
            let expected: Vec<TaskSummary> =
                full.iter().map(|t| TaskSummary::of(t, chars)).collect();
            assert_eq!(summaries, expected, "prompt cut after {chars} characters");
        }
        // Newest first, and the filter and limit of the full listing.
        let ids = |q: &TaskQuery| -> Vec<String> {
            store
                .task_summaries(q, 10)
                .unwrap()
                .into_iter()
                .map(|s| s.id)
                .collect()
        };
        assert_eq!(ids(&query), ["task-d", "task-c", "task-b", "task-a"]);
        let failed = TaskQuery {
            status: Some(TaskStatus::Failed),
            limit: None,
        };
        assert_eq!(ids(&failed), ["task-b"]);
        let two = TaskQuery {
            status: None,
            limit: Some(2),
        };
        assert_eq!(ids(&two), ["task-d", "task-c"]);
    }
}
