//! The CLI's MCP client: the same socket and the same tools every MCP client uses.
//!
//! Owns: connecting (starting the daemon on demand) and reconnecting after the daemon
//! went away, the hello line, sending a tool's typed arguments (the very structs the
//! tool parses), and turning tool results into values or `CliError`s. It speaks
//! newline-delimited JSON-RPC itself (a command makes one or two calls: a full MCP
//! client library's session machinery cost more than the call). Its hello asks for
//! tools only: the daemon answers `tools/call` without an MCP session (no
//! `initialize`); a daemon of an older build, which does not know that, refuses the
//! call without the acknowledgement, and the client opens an MCP session instead.
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

use super::server::{Hello, TOOLS_ONLY_ACK};
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

/// How a connection talks to the daemon.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Session {
    /// `tools/call` only, no MCP session: what this build's daemon offers the CLI.
    ToolsOnly,
    /// An MCP session (`initialize` first): for a daemon of an older build.
    Mcp,
}

/// One connection to the daemon: JSON-RPC lines both ways.
struct Connection {
    lines: Lines<BufReader<OwnedReadHalf>>,
    writer: OwnedWriteHalf,
    session: Session,
    /// The daemon said it serves this session: its tools-only acknowledgement, or any
    /// answer (in an MCP session, the one to `initialize`).
    acknowledged: bool,
}

/// The first line every Backbeat client sends: its working directory, and whether it
/// needs tools only (the CLI) or an MCP session (the proxy of MCP clients).
pub fn hello_line(tools_only: bool) -> String {
    let hello = Hello {
        backbeat: "hello".into(),
        cwd: std::env::current_dir()
            .ok()
            .map(|p| p.display().to_string()),
        tools_only,
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

/// Connects and sends the hello line; for an MCP session, `initialize` and
/// `notifications/initialized` in the same write: the daemon answers `initialize`
/// before it reads on, so a command's first call follows at once instead of after a
/// round trip. The answer to `initialize` (or the tools-only acknowledgement) is read
/// with the first call's.
async fn open(home: &Home, session: Session) -> Result<Connection, CliError> {
    let stream = connect_or_start(home).await?;
    let (read, mut writer) = stream.into_split();
    let connection = |writer| Connection {
        lines: BufReader::new(read).lines(),
        writer,
        session,
        acknowledged: false,
    };
    if session == Session::ToolsOnly {
        writer
            .write_all(hello_line(true).as_bytes())
            .await
            .map_err(disconnected)?;
        return Ok(connection(writer));
    }
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
        .write_all(format!("{}{initialize}\n{initialized}\n", hello_line(false)).as_bytes())
        .await
        .map_err(disconnected)?;
    Ok(connection(writer))
}

/// `open`, again while the daemon is going away or coming back.
async fn open_patiently(home: &Home, session: Session) -> Result<Connection, CliError> {
    let deadline = Instant::now() + RECONNECT_LIMIT;
    loop {
        match open(home, session).await {
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
            if line == TOOLS_ONLY_ACK {
                self.acknowledged = true;
                continue;
            }
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
            self.acknowledged = true;
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
            connection: tokio::sync::Mutex::new(open_patiently(home, Session::ToolsOnly).await?),
            next_id: AtomicU64::new(INITIALIZE_ID + 1),
            home: home.clone(),
        })
    }

    /// Connects again after the daemon went away (stopped, crashed or restarting),
    /// starting one when none comes back, for at most a minute.
    pub async fn reconnect(&mut self) -> Result<(), CliError> {
        let session = self.connection.get_mut().session;
        *self.connection.get_mut() = open_patiently(&self.home, session).await?;
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
        let params = || json!({ "name": tool, "arguments": arguments_of(args) });
        let mut connection = self.connection.lock().await;
        let mut result = connection.request(id, "tools/call", params()).await;
        if matches!(result, Err(CliError::Disconnected(_) | CliError::Daemon(_)))
            && connection.session == Session::ToolsOnly
            && !connection.acknowledged
        {
            // A daemon of an older build: it refused the call or closed the connection
            // without acknowledging tools only (which this build does before it runs
            // any call), so nothing ran. An MCP session instead.
            *connection = open_patiently(&self.home, Session::Mcp).await?;
            result = connection.request(id, "tools/call", params()).await;
        }
        drop(connection);
        let result = result.map_err(|e| match e {
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// The next connection to a stand-in daemon: its first `count` lines, and its
    /// writer (the connection stays open while the writer lives).
    async fn accept(listener: &UnixListener, count: usize) -> (Vec<Value>, OwnedWriteHalf) {
        let (stream, _) = listener.accept().await.unwrap();
        let (read, write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let mut read = Vec::new();
        while read.len() < count {
            let line = lines.next_line().await.unwrap().expect("a line");
            read.push(serde_json::from_str(&line).unwrap());
        }
        (read, write)
    }

    /// Writes `lines` to the client, each on a line of its own.
    async fn answer(write: &mut OwnedWriteHalf, lines: &[String]) {
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        write.write_all(text.as_bytes()).await.unwrap();
    }

    /// A home whose socket a stand-in daemon listens on.
    fn stand_in() -> (tempfile::TempDir, Home, UnixListener) {
        let dir = tempfile::tempdir().unwrap();
        let home = Home {
            root: dir.path().to_path_buf(),
            database: None,
        };
        let listener = UnixListener::bind(home.socket()).unwrap();
        (dir, home, listener)
    }

    /// A JSON-RPC refusal of request `id`.
    fn refusal(id: &Value, message: &str) -> String {
        json!({ "jsonrpc": "2.0", "id": id, "error": { "code": -32602, "message": message } })
            .to_string()
    }

    /// What a daemon of an older build does with a tools-only hello: it knows no such
    /// thing, serves MCP, and refuses a call that came without a session. The client
    /// then opens an MCP session and gets its answer.
    #[tokio::test]
    async fn a_daemon_that_refuses_tools_only_is_asked_again_in_an_mcp_session() {
        let (_dir, home, listener) = stand_in();
        let older_daemon = tokio::spawn(async move {
            let (read, mut first) = accept(&listener, 2).await;
            let [hello, call] = read.try_into().unwrap();
            assert_eq!(hello["toolsOnly"], true);
            answer(
                &mut first,
                &[refusal(&call["id"], "request _meta is missing")],
            )
            .await;
            let (read, mut second) = accept(&listener, 4).await;
            let [hello, initialize, _initialized, call] = read.try_into().unwrap();
            assert!(hello.get("toolsOnly").is_none(), "{hello}");
            assert_eq!(initialize["method"], "initialize");
            let answers = [
                json!({ "jsonrpc": "2.0", "id": initialize["id"], "result": {} }),
                json!({ "jsonrpc": "2.0", "id": call["id"], "result": {
                    "content": [{ "type": "text", "text": "{\"answered\":\"in a session\"}" }] }}),
            ];
            answer(&mut second, &answers.map(|a| a.to_string())).await;
            call
        });
        let client = DaemonClient::connect(&home).await.unwrap();
        let answer = client.call(&TaskStatusArgs::default()).await.unwrap();
        assert_eq!(answer["answered"], "in a session");
        let call = older_daemon.await.unwrap();
        assert_eq!(call["params"]["name"], "TaskStatus");
    }

    /// A daemon of this build acknowledges tools only before it runs any call: its
    /// refusal of a call is the call's answer, never a reason to send it again.
    #[tokio::test]
    async fn a_refusal_after_the_acknowledgement_is_the_answer() {
        let (_dir, home, listener) = stand_in();
        let daemon = tokio::spawn(async move {
            let (read, mut write) = accept(&listener, 2).await;
            let [_hello, call] = read.try_into().unwrap();
            let refused = refusal(&call["id"], "Invalid params");
            answer(&mut write, &[TOOLS_ONLY_ACK.to_string(), refused]).await;
            // No second connection is accepted: a call sent again would hang here.
            (listener, write)
        });
        let client = DaemonClient::connect(&home).await.unwrap();
        // Bounded: a client that sent the call again would wait for an answer forever.
        let args = TaskStatusArgs::default();
        let call = client.call(&args);
        let refused = tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .expect("the refusal was taken as the answer, not sent again")
            .unwrap_err();
        assert!(
            matches!(&refused, CliError::Daemon(m) if m.contains("Invalid params")),
            "{refused}"
        );
        drop(daemon.await.unwrap());
    }
}
