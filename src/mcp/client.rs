//! The CLI's MCP client: the same socket and the same tools every MCP client uses.
//!
//! Owns: connecting (starting the daemon on demand) and reconnecting after the daemon
//! went away, the hello line, sending a tool's typed arguments (the very structs the
//! tool parses), and turning tool results into values or `CliError`s. It speaks
//! newline-delimited JSON-RPC itself (a command makes one or two calls: a full MCP
//! client library's session machinery cost more than the call), with the handshake
//! sent in the same write as the hello line.
//! Must never: build a tool's arguments by hand: they are the tool's own argument type.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use backbeat_actors::TaskRecord;
use rmcp::model::ProtocolVersion;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde::de::IgnoredAny;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use super::server::Hello;
use super::tools::ToolArgs;
use super::tools::tasks::TaskStatusArgs;
use crate::error::CliError;
use crate::launcher::connect_or_start;
use crate::paths::Home;

/// How long a command waits for a daemon that went away to come back.
const RECONNECT_LIMIT: Duration = Duration::from_secs(60);

/// The id of the client's `initialize`; tool calls count from 1.
const INITIALIZE_ID: u64 = 0;

pub struct DaemonClient {
    /// Behind a lock so that calls take `&self`; a command makes one call at a time.
    connection: tokio::sync::Mutex<Connection>,
    next_id: AtomicU64,
    home: Home,
}

/// One connection to the daemon: JSON-RPC lines both ways.
struct Connection {
    lines: Lines<BufReader<OwnedReadHalf>>,
    writer: OwnedWriteHalf,
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

fn disconnected(e: std::io::Error) -> CliError {
    CliError::Disconnected(format!("the daemon closed the connection: {e}"))
}

/// Connects and sends the hello line, `initialize` and `notifications/initialized` in
/// one write: the daemon answers `initialize` before it reads on, so a command's first
/// call follows at once instead of after a round trip. The answer to `initialize` is
/// read (and checked) with the first call's.
async fn open(home: &Home) -> Result<Connection, CliError> {
    let stream = connect_or_start(home).await?;
    let (read, mut writer) = stream.into_split();
    let initialize = json!({
        "jsonrpc": "2.0",
        "id": INITIALIZE_ID,
        "method": "initialize",
        "params": {
            "protocolVersion": ProtocolVersion::LATEST_WITH_INITIALIZE,
            "capabilities": {},
            "clientInfo": { "name": "beat", "version": crate::VERSION }
        }
    });
    let initialized = json!({ "jsonrpc": "2.0", "method": "notifications/initialized" });
    writer
        .write_all(format!("{}{initialize}\n{initialized}\n", hello_line()).as_bytes())
        .await
        .map_err(disconnected)?;
    Ok(Connection {
        lines: BufReader::new(read).lines(),
        writer,
    })
}

/// `open`, again while the daemon is going away or coming back.
async fn open_patiently(home: &Home) -> Result<Connection, CliError> {
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

/// A line from the daemon, read only as far as a tool call's answer needs (a list's
/// answer is large: no tree of `Value`s for its envelope).
#[derive(Deserialize)]
struct Incoming {
    id: Option<Value>,
    method: Option<IgnoredAny>,
    result: Option<CallResult>,
    error: Option<Value>,
}

/// The `result` of `tools/call` (other results read as an empty one).
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct CallResult {
    #[serde(default)]
    content: Vec<Content>,
    is_error: Option<bool>,
}

#[derive(Deserialize)]
struct Content {
    text: Option<String>,
}

impl Connection {
    /// Sends request `id` and reads until its answer: the `result` of a JSON-RPC
    /// response. Other lines (the `initialize` answer, notifications, answers to
    /// requests given up on) are skipped; a refused `initialize` ends the call.
    async fn request(
        &mut self,
        id: u64,
        method: &str,
        params: Value,
    ) -> Result<CallResult, CliError> {
        let line = json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params });
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .await
            .map_err(disconnected)?;
        loop {
            let line = self.lines.next_line().await.map_err(disconnected)?;
            let Some(line) = line else {
                return Err(CliError::Disconnected(
                    "the daemon closed the connection".into(),
                ));
            };
            let Ok(message) = serde_json::from_str::<Incoming>(&line) else {
                continue;
            };
            let answer_to = message.id.as_ref().and_then(Value::as_u64);
            if message.method.is_some() || answer_to.is_none() {
                continue;
            }
            if let Some(error) = &message.error {
                if answer_to == Some(INITIALIZE_ID) {
                    return Err(CliError::Disconnected(format!(
                        "the daemon did not complete the MCP handshake: {error}"
                    )));
                }
                if answer_to == Some(id) {
                    return Err(CliError::Daemon(format!(
                        "the daemon refused the {method} request: {error}"
                    )));
                }
            }
            if answer_to == Some(id) {
                return Ok(message.result.unwrap_or_default());
            }
        }
    }
}

impl DaemonClient {
    /// Connects, starting the daemon when none runs. A daemon that is stopping or
    /// restarting meanwhile is waited for (at most a minute).
    pub async fn connect(home: &Home) -> Result<DaemonClient, CliError> {
        Ok(DaemonClient {
            connection: tokio::sync::Mutex::new(open_patiently(home).await?),
            next_id: AtomicU64::new(INITIALIZE_ID + 1),
            home: home.clone(),
        })
    }

    /// Connects again after the daemon went away (stopped, crashed or restarting),
    /// starting one when none comes back, for at most a minute.
    pub async fn reconnect(&mut self) -> Result<(), CliError> {
        *self.connection.get_mut() = open_patiently(&self.home).await?;
        Ok(())
    }

    /// Calls the tool whose arguments `args` are; a tool error becomes
    /// `CliError::Refused` with its message, a lost daemon `CliError::Disconnected`.
    pub async fn call<A: ToolArgs>(&self, args: &A) -> Result<Value, CliError> {
        let text = self.call_text(args).await?;
        Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// `call`, with the answer's JSON text as the tool sent it.
    async fn call_text<A: ToolArgs>(&self, args: &A) -> Result<String, CliError> {
        let tool = A::TOOL;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let params = json!({ "name": tool, "arguments": arguments_of(args) });
        let result = self
            .connection
            .lock()
            .await
            .request(id, "tools/call", params)
            .await
            .map_err(|e| match e {
                CliError::Disconnected(why) => CliError::Disconnected(format!(
                    "calling {tool} failed: the daemon went away ({why})"
                )),
                other => other,
            })?;
        let text = result
            .content
            .into_iter()
            .find_map(|c| c.text)
            .unwrap_or_default();
        if result.is_error == Some(true) {
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(String::from))
                .unwrap_or(text);
            return Err(CliError::Refused(message));
        }
        Ok(text)
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

    /// `read`, with the answer parsed into `T` (no tree of `Value`s for a long list).
    pub async fn read_as<A: ToolArgs, T: DeserializeOwned>(
        &mut self,
        args: &A,
    ) -> Result<T, CliError> {
        let text = loop {
            match self.call_text(args).await {
                Err(CliError::Disconnected(_)) => self.reconnect().await?,
                other => break other?,
            }
        };
        serde_json::from_str(&text).map_err(|e| {
            CliError::Daemon(format!(
                "the daemon's answer to {} is not what this CLI reads: {e}",
                A::TOOL
            ))
        })
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

    /// Ends the session: the daemon sees the connection close.
    pub async fn close(self) {
        let _ = self.connection.into_inner().writer.shutdown().await;
    }
}

pub fn record_of(v: &Value) -> Result<TaskRecord, CliError> {
    serde_json::from_value(v.clone()).map_err(|e| {
        CliError::Daemon(format!(
            "the daemon sent a task record this CLI cannot read: {e}"
        ))
    })
}
