//! The blocking side of eval loops: what a `LoopActor` does outside its pure model
//! (`model::loops`), run off the actix thread.
//!
//! Owns: the `LoopActor` (`actor`), and git operations on a loop's branch (`git`).
//! Must never: decide outcomes (that is the model's), or touch the journal.

pub mod actor;
pub mod git;
