//! The `pipelines` table: id and status indexed, the record as JSON. Its steps are
//! tasks (`tasks.pipeline_id`).

use rusqlite::{Connection, params};

use super::{Table, expect_one};
use crate::model::{PipelineEvent, PipelineRecord};

impl Table for PipelineRecord {
    const TABLE: &'static str = "pipelines";

    fn write(
        conn: &Connection,
        event: &PipelineEvent,
        p: &PipelineRecord,
        record: &str,
    ) -> rusqlite::Result<()> {
        match event {
            PipelineEvent::Created { .. } => {
                conn.prepare_cached(
                    "INSERT INTO pipelines(id, status, created_at, record) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![
                    p.id,
                    p.status.as_str(),
                    p.created_at,
                    record
                ])?;
                Ok(())
            }
            _ => {
                let changed = conn
                    .prepare_cached("UPDATE pipelines SET status = ?2, record = ?3 WHERE id = ?1")?
                    .execute(params![p.id, p.status.as_str(), record])?;
                expect_one(changed, "pipeline", &p.id)
            }
        }
    }
}
