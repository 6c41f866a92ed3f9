//! The narrow interface between group commit and a database.
//!
//! Owns: the `Backend` trait. Group commit (`writer.rs`), the `Journal` actor and every
//! entity actor know only this trait and `Append`; SQLite (`sqlite.rs`) is one
//! implementation, and a second (PostgreSQL) would be another, touching no actor.
//! Must never: grow methods that name a kind's columns: kinds are mapped inside a
//! backend (`tables/` for SQLite).

use super::Append;

/// A database that can make groups of appends durable.
pub trait Backend: Send + 'static {
    /// Writes every transition of `appends` in one transaction, in order; returns only
    /// once the transaction is durable (or failed, leaving nothing behind).
    fn write(&mut self, appends: &[&Append]) -> Result<(), String>;

    /// Background upkeep after commits holding `transitions` transitions in all
    /// (SQLite: WAL checkpoints). Must not block for long.
    fn after_commit(&mut self, _transitions: usize) {}

    /// Where the data lives, for error messages.
    fn location(&self) -> String;
}
