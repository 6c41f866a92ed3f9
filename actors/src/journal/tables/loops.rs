//! The `loops` table (id and status indexed, the record as JSON) and `loop_iterations`
//! (one row per iteration, upserted from the record's `latest` with every loop event).

use rusqlite::{Connection, params};

use super::{Table, expect_one};
use crate::model::loops::{LoopEvent, LoopRecord};

impl Table for LoopRecord {
    const TABLE: &'static str = "loops";

    fn write(
        conn: &Connection,
        event: &LoopEvent,
        l: &LoopRecord,
        record: &str,
    ) -> rusqlite::Result<()> {
        match event {
            LoopEvent::Created { .. } => {
                conn.prepare_cached(
                    "INSERT INTO loops(id, status, created_at, record) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![
                    l.id,
                    l.status.as_str(),
                    l.created_at,
                    record
                ])?;
            }
            _ => {
                let changed = conn
                    .prepare_cached("UPDATE loops SET status = ?2, record = ?3 WHERE id = ?1")?
                    .execute(params![l.id, l.status.as_str(), record])?;
                expect_one(changed, "loop", &l.id)?;
            }
        }
        if let Some(it) = &l.latest {
            let json = serde_json::to_string(it)
                .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
            conn.prepare_cached(
                "INSERT INTO loop_iterations(loop_id, iteration_number, status, record)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(loop_id, iteration_number)
                 DO UPDATE SET status = excluded.status, record = excluded.record",
            )?
            .execute(params![
                it.loop_id,
                it.iteration_number,
                it.status.as_str(),
                json
            ])?;
        }
        Ok(())
    }

    fn remove(conn: &Connection, id: &str) -> rusqlite::Result<()> {
        conn.prepare_cached("DELETE FROM loop_iterations WHERE loop_id = ?1")?
            .execute(params![id])?;
        conn.prepare_cached("DELETE FROM loops WHERE id = ?1")?
            .execute(params![id])?;
        Ok(())
    }
}
