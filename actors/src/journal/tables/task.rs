//! The `tasks` table: id, status, created_at and pipeline_id are indexed columns (for
//! listings, recovery and pipelines), the record is JSON; `task_edges` indexes who
//! depends on whom, written with the task's `Submitted`.

use rusqlite::{Connection, params};

use super::{Table, expect_one};
use crate::model::{TaskEvent, TaskRecord};

impl Table for TaskRecord {
    const TABLE: &'static str = "tasks";

    fn write(
        conn: &Connection,
        event: &TaskEvent,
        t: &TaskRecord,
        record: &str,
    ) -> rusqlite::Result<()> {
        match event {
            TaskEvent::Submitted { .. } => {
                conn.prepare_cached(
                    "INSERT INTO tasks(id, status, created_at, pipeline_id, record)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![
                    t.id,
                    t.status.as_str(),
                    t.created_at,
                    t.pipeline_id,
                    record
                ])?;
                if !t.depends_on.is_empty() {
                    let mut edge = conn.prepare_cached(
                        "INSERT OR IGNORE INTO task_edges(task_id, depends_on) VALUES (?1, ?2)",
                    )?;
                    for dep in &t.depends_on {
                        edge.execute(params![t.id, dep])?;
                    }
                }
                Ok(())
            }
            // These never change the status: leave its index alone.
            TaskEvent::CancelRequested { .. } | TaskEvent::Checkpointed { .. } => {
                let changed = conn
                    .prepare_cached("UPDATE tasks SET record = ?2 WHERE id = ?1")?
                    .execute(params![t.id, record])?;
                expect_one(changed, "task", &t.id)
            }
            _ => {
                let changed = conn
                    .prepare_cached("UPDATE tasks SET status = ?2, record = ?3 WHERE id = ?1")?
                    .execute(params![t.id, t.status.as_str(), record])?;
                expect_one(changed, "task", &t.id)
            }
        }
    }

    /// The row and its own dependency edges. Edges of tasks that depend on it stay with
    /// those tasks' records (the index follows `dependsOn`).
    fn remove(conn: &Connection, id: &str) -> rusqlite::Result<()> {
        conn.prepare_cached("DELETE FROM task_edges WHERE task_id = ?1")?
            .execute(params![id])?;
        conn.prepare_cached("DELETE FROM tasks WHERE id = ?1")?
            .execute(params![id])?;
        Ok(())
    }
}
