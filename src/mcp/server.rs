//! The daemon's MCP server: one `BackbeatMcp` per connection, all sharing the engine.
//!
//! Owns: `initialize` (with the usage guide generated from the tool table), `tools/list`
//! (answered without touching the engine, so that a cold start answers at once) and the
//! dispatch of `tools/call`, both read from `tools::TOOLS`. Errors of a tool are
//! `isError` results whose text says what to do; only a broken JSON-RPC message is a
//! protocol error.

use std::path::PathBuf;

use backbeat_actors::EngineHandle;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde::Deserialize;
use serde_json::{Value, json};

use super::tools::{self, ToolContext, ToolReply};
use crate::paths::Home;

/// The first line a Backbeat client sends before MCP: who it is and where it works.
#[derive(Debug, Default, Deserialize, serde::Serialize)]
pub struct Hello {
    pub backbeat: String,
    pub cwd: Option<String>,
}

#[derive(Clone)]
pub struct BackbeatMcp {
    context: ToolContext,
}

impl BackbeatMcp {
    pub fn new(engine: EngineHandle, home: Home, cwd: Option<PathBuf>) -> BackbeatMcp {
        let session_cwd = cwd
            .filter(|p| p.is_absolute())
            .or_else(|| std::env::current_dir().ok())
            .unwrap_or_else(|| PathBuf::from("/"));
        BackbeatMcp {
            context: ToolContext {
                engine,
                home,
                session_cwd,
            },
        }
    }
}

pub fn to_result(outcome: ToolReply) -> CallToolResult {
    match outcome {
        Ok(answer) => CallToolResult::success(vec![ContentBlock::text(answer.into_text())]),
        Err(message) => CallToolResult::error(vec![ContentBlock::text(
            json!({ "success": false, "error": message }).to_string(),
        )]),
    }
}

/// What `initialize` answers with: the daemon's, and the proxy's while the daemon starts.
pub fn server_config() -> ServerConfig {
    ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
        .with_server_info(Implementation::new("backbeat", crate::VERSION))
        .with_instructions(tools::instructions())
}

impl ServerHandler for BackbeatMcp {
    fn get_info(&self) -> ServerConfig {
        server_config()
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(tools::listed()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let args = Value::Object(request.arguments.unwrap_or_default());
        let result = match tools::find(&request.name) {
            Some(tool) => to_result((tool.call)(&self.context, args).await),
            None => CallToolResult::error(vec![ContentBlock::text(
                json!({
                    "success": false,
                    "error": format!("Unknown tool: {}. Call tools/list for the tools this server has", request.name),
                    "code": "INVALID_TOOL"
                })
                .to_string(),
            )]),
        };
        Ok(result.into())
    }
}
