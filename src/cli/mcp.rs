//! `beat mcp start|config`.

use clap::Subcommand;
use serde_json::json;

use super::print_json;
use crate::error::CliError;
use crate::paths::Home;

#[derive(Subcommand)]
#[command(defer = true)]
pub enum McpCommand {
    /// The stdio MCP server that MCP clients run (exits when stdin closes)
    Start,
    /// Print the .mcp.json snippet that configures this server
    Config,
}

pub fn run(cmd: McpCommand, home: &Home) -> Result<i32, CliError> {
    match cmd {
        McpCommand::Start => super::block_on(async {
            crate::mcp::proxy::run(home).await?;
            Ok(0)
        }),
        McpCommand::Config => {
            let exe = std::env::current_exe()?.display().to_string();
            print_json(
                &json!({ "mcpServers": { "backbeat": { "command": exe, "args": ["mcp", "start"] } } }),
            );
            Ok(0)
        }
    }
}
