//! Agents: how a task becomes a command line, and how its run is watched.
//!
//! Owns: the adapter interface (`AgentAdapter`), the built-in `shell` agent, the
//! user-defined `command` agents of the configuration, the `AgentPool` that launches
//! runs (through the launcher, which prepares a run folder and spawns `beat shim`) and
//! owns the `AgentProcess` actors that follow them.
//! Must never: pass a prompt over 100 KB as one argument, leave stdin an open pipe, or
//! put API keys anywhere but the agent's environment.

pub mod adapter;
pub mod agent_spawn;
pub mod channel;
pub mod checkpoint;
pub mod launch;
pub mod parse;
pub mod pool;
pub mod process;
pub mod programs;
pub mod run_dir;
pub mod spawner;

pub use adapter::{AgentAdapter, AgentError, LaunchCommand, adapter_for, resolve_agent};
pub use launch::{Launched, Launcher, ShimExit};
pub use pool::{AgentPool, LaunchError, RunHandle};
pub use process::{AgentExited, AgentProcess, AgentProgress, Terminate};
