//! The `schedules` and `schedule_runs` tables: indexed columns beside the record as JSON.
//! A schedule row is `live` while it is active or paused, or while a run it started
//! still runs (recovery brings those back); an execution row is indexed by schedule and
//! by the task or pipeline it launched.

use rusqlite::{Connection, params};

use super::{Table, expect_one};
use crate::model::Entity;
use crate::model::schedule::{ExecutionEvent, ExecutionRecord, ScheduleEvent, ScheduleRecord};

impl Table for ScheduleRecord {
    const TABLE: &'static str = "schedules";

    fn write(
        conn: &Connection,
        event: &ScheduleEvent,
        s: &ScheduleRecord,
        record: &str,
    ) -> rusqlite::Result<()> {
        let live = !s.is_terminal();
        match event {
            ScheduleEvent::Created { .. } => {
                conn.prepare_cached(
                    "INSERT INTO schedules(id, status, live, created_at, next_run_at, record)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![
                    s.id,
                    s.status.as_str(),
                    live,
                    s.created_at,
                    s.next_run_at,
                    record
                ])?;
                Ok(())
            }
            _ => {
                let changed = conn
                    .prepare_cached(
                        "UPDATE schedules SET status = ?2, live = ?3, next_run_at = ?4, record = ?5
                         WHERE id = ?1",
                    )?
                    .execute(params![
                        s.id,
                        s.status.as_str(),
                        live,
                        s.next_run_at,
                        record
                    ])?;
                expect_one(changed, "schedule", &s.id)
            }
        }
    }
}

impl Table for ExecutionRecord {
    const TABLE: &'static str = "schedule_runs";

    fn write(
        conn: &Connection,
        event: &ExecutionEvent,
        e: &ExecutionRecord,
        record: &str,
    ) -> rusqlite::Result<()> {
        match event {
            ExecutionEvent::Recorded { .. } => {
                conn.prepare_cached(
                    "INSERT INTO schedule_runs(id, schedule_id, scheduled_for, status, task_id,
                     pipeline_id, record) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?
                .execute(params![
                    e.id,
                    e.schedule_id,
                    e.scheduled_for,
                    e.status.as_str(),
                    e.task_id,
                    e.pipeline_id,
                    record
                ])?;
                Ok(())
            }
            ExecutionEvent::Ended { .. } => {
                let changed = conn
                    .prepare_cached(
                        "UPDATE schedule_runs SET status = ?2, record = ?3 WHERE id = ?1",
                    )?
                    .execute(params![e.id, e.status.as_str(), record])?;
                expect_one(changed, "schedule run", &e.id)
            }
        }
    }
}
