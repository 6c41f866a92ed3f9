//! Each kind's state table: the one place where a kind meets SQL.
//!
//! Owns: the `Table` trait and one implementation per kind (`task.rs`, `pipeline.rs`).
//! A row is a few indexed columns beside the whole record as JSON (`record`), so a
//! record is read in exactly one way (`read_record`) and written in exactly one way
//! (`Table::write`).
//! Must never: write a state row without its event (the backend writes both in one
//! transaction), or read a record from anything but its `record` column.

mod loops;
mod pipeline;
mod schedule;
mod task;

use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::model::Entity;

/// How one kind is stored.
pub trait Table: Entity {
    /// The state table's name.
    const TABLE: &'static str;

    /// Writes the row of `record`, the state after `event`, with any index rows the kind
    /// keeps (a task's dependency edges). A first event inserts; any other updates, and
    /// fails if the row does not exist.
    fn write(
        conn: &Connection,
        event: &Self::Event,
        record: &Self,
        record_json: &str,
    ) -> rusqlite::Result<()>;

    /// Deletes the row of `id` and any index rows the kind keeps for it (a prune; its
    /// events are deleted in the same transaction).
    fn remove(conn: &Connection, id: &str) -> rusqlite::Result<()> {
        conn.prepare_cached(&format!("DELETE FROM {} WHERE id = ?1", Self::TABLE))?
            .execute(params![id])?;
        Ok(())
    }
}

/// The record in column `index` of `row`.
pub fn read_record<T: Table>(row: &Row<'_>, index: usize) -> rusqlite::Result<T> {
    let text = row.get_ref(index)?.as_str()?;
    serde_json::from_str(text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(
            index,
            rusqlite::types::Type::Text,
            format!("{} record: {e}", T::KIND).into(),
        )
    })
}

/// One record by id.
pub fn get<T: Table>(conn: &Connection, id: &str) -> rusqlite::Result<Option<T>> {
    conn.prepare_cached(&format!("SELECT record FROM {} WHERE id = ?1", T::TABLE))?
        .query_row(params![id], |r| read_record::<T>(r, 0))
        .optional()
}

/// An update of one existing row must change exactly one row: anything else is a
/// transition of an entity that was never created.
fn expect_one(changed: usize, kind: &str, id: &str) -> rusqlite::Result<()> {
    if changed == 1 {
        Ok(())
    } else {
        Err(rusqlite::Error::ToSqlConversionFailure(
            format!("{kind} {id} has no row to update").into(),
        ))
    }
}
