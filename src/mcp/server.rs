//! The daemon's MCP server: one `BackbeatMcp` per connection, all sharing the engine.
//!
//! Owns: `initialize` (with the usage guide generated from the tool table), `tools/list`
//! (answered without touching the engine, so that a cold start answers at once) and the
//! dispatch of `tools/call` (`answer_call`, also what a tools-only connection of the CLI
//! is answered with), both read from `tools::TOOLS`. Errors of a tool are
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
    /// The client sends `tools/call` requests only and needs no MCP session (the
    /// `beat` CLI): no `initialize`, and each line parsed once (daemon.rs).
    #[serde(
        default,
        rename = "toolsOnly",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub tools_only: bool,
}

/// What the daemon answers a hello that asks for tools only, before anything else.
pub const TOOLS_ONLY_ACK: &str = r#"{"backbeat":"tools"}"#;

#[derive(Clone)]
pub struct BackbeatMcp {
    context: ToolContext,
}

impl BackbeatMcp {
    pub fn new(context: ToolContext) -> BackbeatMcp {
        BackbeatMcp { context }
    }
}

/// What the tools of one connection work with: the client's directory from its hello
/// (the daemon's when it gave none, or one that is not absolute).
pub fn session_context(engine: EngineHandle, home: Home, cwd: Option<PathBuf>) -> ToolContext {
    let session_cwd = cwd
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_else(|| PathBuf::from("/"));
    ToolContext {
        engine,
        home,
        session_cwd,
    }
}

/// The result of `tools/call` of tool `name`: its answer, or an `isError` result.
pub async fn answer_call(
    context: &ToolContext,
    name: &str,
    arguments: Option<serde_json::Map<String, Value>>,
) -> CallToolResult {
    let args = Value::Object(arguments.unwrap_or_default());
    match tools::find(name) {
        Some(tool) => to_result((tool.call)(context, args).await),
        None => CallToolResult::error(vec![ContentBlock::text(
            json!({
                "success": false,
                "error": format!("Unknown tool: {name}. Call tools/list for the tools this server has"),
                "code": "INVALID_TOOL"
            })
            .to_string(),
        )]),
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
        Ok(answer_call(&self.context, &request.name, request.arguments)
            .await
            .into())
    }
}
