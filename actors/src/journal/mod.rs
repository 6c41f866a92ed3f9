//! The journal: every state transition, durable before anyone hears of it.
//!
//! Owns: the SQLite database (`beat.db`), its migrations, the one write connection
//! (a dedicated thread doing group commit), the `Journal` actor in front of it, and the
//! read-only connections (`Store`) that status and list queries use.
//! Must never: reply to a writer before COMMIT returned; write a state row without the
//! event that produced it in the same transaction; run SQLite on an actor thread.

mod schema;
mod store;
mod writer;

pub use schema::open_write_connection;
pub use store::{Store, StoredEvent, TaskQuery};
pub use writer::{Append, Committed, Journal, JournalError, JournalWriter};
