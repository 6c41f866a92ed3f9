//! The CLI's MCP client: the same socket and the same tools every MCP client uses.
//!
//! Owns: connecting (starting the daemon on demand), the hello line, and turning tool
//! results into values or `CliError`s.

use backbeat_actors::TaskRecord;
use rmcp::model::CallToolRequestParams;
use rmcp::service::RunningService;
use rmcp::{RoleClient, ServiceExt};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use super::server::Hello;
use crate::daemon::connect_or_start;
use crate::error::CliError;
use crate::paths::Home;

pub struct DaemonClient {
    service: RunningService<RoleClient, ()>,
}

/// The first line every Backbeat client sends: its working directory.
pub fn hello_line() -> String {
    let hello = Hello {
        backbeat: "hello".into(),
        cwd: std::env::current_dir()
            .ok()
            .map(|p| p.display().to_string()),
    };
    format!("{}\n", serde_json::to_string(&hello).unwrap_or_default())
}

impl DaemonClient {
    pub async fn connect(home: &Home) -> Result<DaemonClient, CliError> {
        let mut stream = connect_or_start(home).await?;
        stream.write_all(hello_line().as_bytes()).await?;
        let service = ().serve(stream).await.map_err(|e| {
            CliError::Daemon(format!(
                "the daemon did not complete the MCP handshake: {e}"
            ))
        })?;
        Ok(DaemonClient { service })
    }

    /// Calls a tool; a tool error becomes `CliError::Refused` with its message.
    pub async fn call(&self, tool: &str, args: Value) -> Result<Value, CliError> {
        let Value::Object(arguments) = args else {
            return Err(CliError::Usage(format!(
                "arguments of {tool} must be an object"
            )));
        };
        let params = CallToolRequestParams::new(tool.to_string()).with_arguments(arguments);
        let result = self
            .service
            .call_tool(params)
            .await
            .map_err(|e| CliError::Daemon(format!("calling {tool} failed: {e}")))?;
        let text = result
            .content
            .iter()
            .find_map(|c| c.as_text())
            .map(|t| t.text.clone())
            .unwrap_or_default();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
        if result.is_error == Some(true) {
            let message = value
                .get("error")
                .and_then(Value::as_str)
                .map(String::from)
                .unwrap_or(text);
            return Err(CliError::Refused(message));
        }
        Ok(value)
    }

    /// A task's full record.
    pub async fn task(&self, id: &str) -> Result<TaskRecord, CliError> {
        let v = self
            .call("TaskStatus", serde_json::json!({ "taskId": id }))
            .await?;
        record_of(&v["task"])
    }

    pub async fn close(self) {
        let _ = self.service.cancel().await;
    }
}

pub fn record_of(v: &Value) -> Result<TaskRecord, CliError> {
    serde_json::from_value(v.clone()).map_err(|e| {
        CliError::Daemon(format!(
            "the daemon sent a task record this CLI cannot read: {e}"
        ))
    })
}
