//! The journal: every state transition of every kind, durable before anyone hears of it.
//!
//! Owns: the database (`beat.db`), its migrations (`schema.rs`, `migrate.rs`), group
//! commit on a thread of its own (`writer.rs`) over a `Backend` (`backend.rs`; SQLite in
//! `sqlite.rs`), each kind's state table (`tables/`), the `Journal` actor in front of
//! it, the read-only connections (`Store`) that status and list queries use, and the
//! removal of old finished entities (`prune.rs`).
//! Must never: reply to a writer before COMMIT returned; write a state row without the
//! event that produced it in the same transaction; run SQLite on an actor thread.

mod backend;
mod compact_json;
mod migrate;
mod prune;
mod schema;
mod sqlite;
mod store;
mod tables;
mod writer;

pub use backend::Backend;
pub use prune::{Pruned, prune};
pub use schema::open_write_connection;
pub use sqlite::SqliteBackend;
pub use store::{Store, StoredEvent, TaskQuery, TaskSummary};
pub use tables::Table;
pub use writer::{Append, Committed, Journal, JournalError, JournalWriter};
