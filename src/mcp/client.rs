//! The CLI's MCP client: the same socket and the same tools every MCP client uses.
//!
//! Owns: connecting (starting the daemon on demand) and reconnecting after the daemon
//! went away, the hello line, sending a tool's typed arguments (the very structs the
//! tool parses), and turning tool results into values or `CliError`s.
//! Must never: build a tool's arguments by hand: they are the tool's own argument type.

use std::time::{Duration, Instant};

use backbeat_actors::TaskRecord;
use rmcp::model::CallToolRequestParams;
use rmcp::service::RunningService;
use rmcp::{RoleClient, ServiceExt};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use super::server::Hello;
use super::tools::ToolArgs;
use super::tools::tasks::TaskStatusArgs;
use crate::error::CliError;
use crate::launcher::connect_or_start;
use crate::paths::Home;

/// How long a command waits for a daemon that went away to come back.
const RECONNECT_LIMIT: Duration = Duration::from_secs(60);

pub struct DaemonClient {
    service: RunningService<RoleClient, ()>,
    home: Home,
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

/// A tool's arguments as the JSON object it parses, absent fields left out.
pub fn arguments_of<A: ToolArgs>(args: &A) -> serde_json::Map<String, Value> {
    match serde_json::to_value(args) {
        Ok(Value::Object(map)) => map.into_iter().filter(|(_, v)| !v.is_null()).collect(),
        _ => serde_json::Map::new(),
    }
}

async fn open(home: &Home) -> Result<RunningService<RoleClient, ()>, CliError> {
    let mut stream = connect_or_start(home).await?;
    stream
        .write_all(hello_line().as_bytes())
        .await
        .map_err(|e| CliError::Disconnected(format!("the daemon closed the connection: {e}")))?;
    ().serve(stream).await.map_err(|e| {
        CliError::Disconnected(format!(
            "the daemon did not complete the MCP handshake: {e}"
        ))
    })
}

/// `open`, again while the daemon is going away or coming back.
async fn open_patiently(home: &Home) -> Result<RunningService<RoleClient, ()>, CliError> {
    let deadline = Instant::now() + RECONNECT_LIMIT;
    loop {
        match open(home).await {
            Err(CliError::Disconnected(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

impl DaemonClient {
    /// Connects, starting the daemon when none runs. A daemon that is stopping or
    /// restarting meanwhile is waited for (at most a minute).
    pub async fn connect(home: &Home) -> Result<DaemonClient, CliError> {
        Ok(DaemonClient {
            service: open_patiently(home).await?,
            home: home.clone(),
        })
    }

    /// Connects again after the daemon went away (stopped, crashed or restarting),
    /// starting one when none comes back, for at most a minute.
    pub async fn reconnect(&mut self) -> Result<(), CliError> {
        let service = open_patiently(&self.home).await?;
        let old = std::mem::replace(&mut self.service, service);
        let _ = old.cancel().await;
        Ok(())
    }

    /// Calls the tool whose arguments `args` are; a tool error becomes
    /// `CliError::Refused` with its message, a lost daemon `CliError::Disconnected`.
    pub async fn call<A: ToolArgs>(&self, args: &A) -> Result<Value, CliError> {
        let tool = A::TOOL;
        let params = CallToolRequestParams::new(tool).with_arguments(arguments_of(args));
        let result = self.service.call_tool(params).await.map_err(|e| {
            CliError::Disconnected(format!("calling {tool} failed: the daemon went away ({e})"))
        })?;
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

    /// `call` for calls that change nothing (status, lists, waits): when the daemon
    /// went away, connect again and repeat the call.
    pub async fn read<A: ToolArgs>(&mut self, args: &A) -> Result<Value, CliError> {
        loop {
            match self.call(args).await {
                Err(CliError::Disconnected(_)) => self.reconnect().await?,
                other => return other,
            }
        }
    }

    /// A task's full record.
    pub async fn task(&mut self, id: &str) -> Result<TaskRecord, CliError> {
        let v = self
            .read(&TaskStatusArgs {
                task_id: Some(id.to_string()),
                ..Default::default()
            })
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
