//! `beat`: the command line of Backbeat, and the entry point of its daemon and shim.
//!
//! Front ends only: every command is a client of the daemon's MCP socket (or a plain
//! read of files under `BACKBEAT_HOME`); the engine lives in `backbeat-actors`.

mod cli;
mod config;
mod daemon;
mod error;
mod launcher;
mod mcp;
mod paths;
mod shim;

/// The version `beat --version` and the MCP `serverInfo` report: the package version
/// and the commit it was built from (build.rs).
pub const VERSION: &str = env!("BACKBEAT_VERSION");

fn main() {
    let code = cli::main();
    // Exit without waiting on runtime threads (a blocked stdin reader, for one).
    std::process::exit(code);
}
