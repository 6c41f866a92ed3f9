//! Agents: how a task becomes a command line, and how its run is watched.
//!
//! Owns: the adapter interface (`AgentAdapter`), the built-in `shell` agent, the
//! user-defined `command` agents of the configuration, the launcher that prepares a run
//! folder and spawns `beat shim`, and the `AgentProcess` actor that follows a run.
//! Must never: pass a prompt over 100 KB as one argument, leave stdin an open pipe, or
//! put API keys anywhere but the agent's environment.

pub mod adapter;
pub mod checkpoint;
pub mod launch;
pub mod parse;
pub mod process;
pub mod run_dir;
pub mod spawner;

pub use adapter::{AgentAdapter, AgentError, LaunchCommand, adapter_for, resolve_agent};
pub use launch::{Launched, Launcher, ShimExit};
pub use process::{AgentExited, AgentProcess, AgentProgress, Terminate};
