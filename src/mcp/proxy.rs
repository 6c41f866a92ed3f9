//! `beat mcp start`: the stdio server that MCP clients configure.
//!
//! It forwards newline-delimited JSON-RPC between stdio and the daemon's socket (after
//! the hello line that gives the daemon this process's working directory), starting
//! the daemon if needed, and exits when stdin closes (the original kept running, spec
//! W21). When the daemon goes away (stopped, crashed, restarted) the session survives:
//! every request still in flight is answered with an error that says to retry, and the
//! next message connects again (starting a daemon if none runs), replaying the client's
//! `initialize` and `notifications/initialized` first and dropping that reply, so the
//! client never sees the switch.
//!
//! When no daemon runs at start, the daemon is started in the background and the
//! client's `initialize` is answered here, by rmcp's own negotiation with the daemon's
//! `server_config`: the very answer the daemon gives, without waiting for it to start.
//! The daemon then gets the handshake as after a restart.
//!
//! Must never: leave a request of the client without an answer, or write anything but
//! protocol messages to stdout.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use rmcp::ServerHandler;
use tokio::net::UnixStream;
use tokio::sync::oneshot;

use super::client::hello_line;
use super::server::server_config;
use crate::error::CliError;
use crate::launcher::connect_or_start;
use crate::paths::Home;

/// The id of the replayed `initialize`, whose reply the client must not see.
const REPLAY_ID: &str = "backbeat-proxy-reconnect";

/// The two fields of a JSON-RPC message the proxy looks at. Every other field (a
/// task's whole record, in most answers) is skipped without being built.
#[derive(serde::Deserialize)]
struct Envelope {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    method: Option<String>,
}

impl Envelope {
    fn of(line: &str) -> Option<Envelope> {
        serde_json::from_str(line).ok()
    }
}

/// What the proxy remembers of the client's session.
#[derive(Default)]
struct Session {
    initialize: Option<Value>,
    initialized: Option<String>,
    /// Requests sent to the daemon and not answered yet: id (as JSON text) to method.
    in_flight: HashMap<String, (Value, String)>,
}

impl Session {
    /// Notes a line from the client before it is forwarded.
    fn outgoing(&mut self, line: &str) {
        let Some(Envelope { id, method }) = Envelope::of(line) else {
            return;
        };
        let method = method.unwrap_or_default();
        match (method.as_str(), &id) {
            ("initialize", Some(_)) => self.initialize = serde_json::from_str(line).ok(),
            ("notifications/initialized", None) => self.initialized = Some(line.to_string()),
            _ => {}
        }
        if let (Some(id), false) = (id, method.is_empty()) {
            self.in_flight.insert(id.to_string(), (id, method));
        }
    }

    /// Notes the client's `initialize`, answered by the proxy itself: the daemon gets
    /// it as a replay, whose reply the client must not see twice.
    fn answered_here(&mut self, line: &str) {
        self.initialize = serde_json::from_str(line).ok();
    }

    /// Notes a line from the daemon; false when the client must not see it.
    fn incoming(&mut self, line: &str) -> bool {
        let Some(Envelope { id, method }) = Envelope::of(line) else {
            return true;
        };
        if method.is_none()
            && let Some(id) = id
        {
            if id == REPLAY_ID {
                return false;
            }
            self.in_flight.remove(&id.to_string());
        }
        true
    }

    /// Answers every request in flight: the daemon that had them is gone.
    fn lost_replies(&mut self) -> Vec<String> {
        self.in_flight
            .drain()
            .map(|(_, (id, method))| lost_reply(&id, &method).to_string())
            .collect()
    }
}

/// The answer to a request whose daemon went away before answering.
fn lost_reply(id: &Value, method: &str) -> Value {
    let message = format!(
        "The Backbeat daemon stopped before answering this {method} request (it was stopped, \
         crashed or restarted); nothing is lost, the daemon is started again on the next call: \
         retry the call"
    );
    if method == "tools/call" {
        json!({
            "jsonrpc": "2.0",
            "id": id,
            "result": {
                "content": [{ "type": "text", "text": json!({ "success": false, "error": message, "code": "DAEMON_RESTARTED" }).to_string() }],
                "isError": true
            }
        })
    } else {
        json!({ "jsonrpc": "2.0", "id": id, "error": { "code": -32603, "message": message } })
    }
}

struct Connection {
    lines: Lines<BufReader<OwnedReadHalf>>,
    writer: OwnedWriteHalf,
}

/// Connects (starting the daemon if none runs) and replays the session's handshake.
async fn connect(home: &Home, session: &Session) -> Result<Connection, CliError> {
    handshake(connect_or_start(home).await?, session).await
}

/// A daemon being started in the background: its connection once it answers.
type Starting = oneshot::Receiver<Result<std::os::unix::net::UnixStream, CliError>>;

/// How long a daemon's start waits for the client's `initialize` to be answered.
const ANSWER_FIRST_LIMIT: Duration = Duration::from_millis(5);

/// Starts a daemon on a thread of its own, and connects to it. The start waits until
/// `answered` is dropped (the client's `initialize` was answered, or the client sent
/// something else), for at most `ANSWER_FIRST_LIMIT`: on two cores, forking and
/// starting the daemon at the same moment held up the answer (the next call waits for
/// the daemon anyway, and its start takes far longer than the answer).
fn start_in_background(home: &Home, answered: std::sync::mpsc::Receiver<()>) -> Starting {
    let (tx, rx) = oneshot::channel();
    let home = home.clone();
    std::thread::spawn(move || {
        let _ = answered.recv_timeout(ANSWER_FIRST_LIMIT);
        let connected = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(CliError::from)
            .and_then(|rt| rt.block_on(async { Ok(connect_or_start(&home).await?.into_std()?) }));
        let _ = tx.send(connected);
    });
    rx
}

/// The connection to the daemon started in the background, with the session's
/// handshake replayed. A daemon that accepted and then went away (one that failed to
/// start after it bound its socket) is started again, so that a failure to start is
/// reported with its cause.
async fn started(
    starting: Starting,
    home: &Home,
    session: &Session,
) -> Result<Connection, CliError> {
    let stream = starting
        .await
        .map_err(|_| CliError::Daemon("starting the daemon stopped half-way".into()))??;
    let mut connected = handshake(UnixStream::from_std(stream)?, session).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        match connected {
            Err(CliError::Disconnected(_)) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                connected = connect(home, session).await;
            }
            other => return other,
        }
    }
}

/// A handler that only answers `initialize`, exactly as the daemon's server does.
struct Handshake;

impl ServerHandler for Handshake {
    fn get_info(&self) -> rmcp::model::ServerConfig {
        server_config()
    }
}

/// The daemon's answer to an `initialize` request line, made here as rmcp's server
/// makes it (its `negotiate_initialize` with the daemon's `server_config`, sent as a
/// JSON-RPC response), without running a server session in the process (that cost
/// half a millisecond before the first answer). `None` for any other line, or one
/// that the negotiation refuses: those go to the daemon, which answers them itself.
fn initialize_answer(request: &str) -> Option<String> {
    use rmcp::model::{
        ClientJsonRpcMessage, ClientRequest, JsonRpcMessage, ServerJsonRpcMessage, ServerResult,
    };
    let JsonRpcMessage::Request(request) =
        serde_json::from_str::<ClientJsonRpcMessage>(request).ok()?
    else {
        return None;
    };
    let ClientRequest::InitializeRequest(initialize) = request.request else {
        return None;
    };
    let result = Handshake.negotiate_initialize(&initialize.params).ok()?;
    serde_json::to_string(&ServerJsonRpcMessage::response(
        ServerResult::InitializeResult(result),
        request.id,
    ))
    .ok()
}

/// A connection the daemon closed (it went away, or failed to start after it bound).
fn gone(e: std::io::Error) -> CliError {
    CliError::Disconnected(format!("the daemon closed the connection: {e}"))
}

async fn handshake(stream: UnixStream, session: &Session) -> Result<Connection, CliError> {
    let (read, mut writer) = stream.into_split();
    writer
        .write_all(hello_line(false).as_bytes())
        .await
        .map_err(gone)?;
    let mut lines = BufReader::new(read).lines();
    if let Some(init) = &session.initialize {
        let mut replay = init.clone();
        replay["id"] = Value::from(REPLAY_ID);
        writer
            .write_all(format!("{replay}\n").as_bytes())
            .await
            .map_err(gone)?;
        let answered = tokio::time::timeout(Duration::from_secs(15), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if Envelope::of(&line).is_some_and(|e| e.id.is_some_and(|id| id == REPLAY_ID)) {
                    return true;
                }
            }
            false
        })
        .await;
        if answered != Ok(true) {
            return Err(CliError::Disconnected(
                "the restarted daemon did not answer the MCP handshake".into(),
            ));
        }
        if let Some(note) = &session.initialized {
            writer
                .write_all(format!("{note}\n").as_bytes())
                .await
                .map_err(gone)?;
        }
    }
    Ok(Connection { lines, writer })
}

/// Writes one message to the client, in one write. Written here, not through tokio's
/// stdout, which hands every write and flush to a thread of its blocking pool (three
/// threads started before the first answer reached the client). The proxy waits on
/// this write either way: the loop reads nothing else until the client took it.
fn emit(line: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut message = Vec::with_capacity(line.len() + 1);
    message.extend_from_slice(line.as_bytes());
    message.push(b'\n');
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&message)?;
    stdout.flush()
}

pub async fn run(home: &Home) -> Result<(), CliError> {
    let mut session = Session::default();
    // A daemon that answers is used at once; else one is started in the background.
    let mut starting: Option<Starting> = None;
    // Dropped once the client's first line is handled: the daemon's start goes on.
    let (answered, answered_rx) = std::sync::mpsc::channel::<()>();
    let mut answered = Some(answered);
    home.check_database()?;
    let mut conn = match UnixStream::connect(home.socket()).await {
        Ok(stream) => Some(handshake(stream, &session).await?),
        Err(_) => {
            home.ensure()?;
            starting = Some(start_in_background(home, answered_rx));
            None
        }
    };
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = stdin.next_line() => {
                let Ok(Some(line)) = line else { break };
                if line.trim().is_empty() {
                    continue;
                }
                // The daemon is still starting: answer `initialize` here.
                if starting.is_some()
                    && conn.is_none()
                    && session.initialize.is_none()
                    && let Some(reply) = initialize_answer(&line)
                {
                    session.answered_here(&line);
                    emit(&reply)?;
                    answered.take();
                    continue;
                }
                answered.take();
                session.outgoing(&line);
                // Sent to the daemon we have; when it is gone, to a new one. A daemon
                // that is dying may still accept a connection and then drop it: try
                // a few times.
                let mut sent = false;
                for attempt in 0..5 {
                    if conn.is_none() {
                        if let Some(rx) = starting.take() {
                            // A daemon that fails to start ends the session, as it
                            // did before the client was answered here.
                            conn = Some(started(rx, home, &session).await?);
                            // The replayed handshake carried this notification.
                            if session.initialized.as_deref() == Some(line.as_str()) {
                                sent = true;
                                break;
                            }
                            continue;
                        }
                        if attempt > 1 {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        match connect(home, &session).await {
                            Ok(c) => conn = Some(c),
                            Err(e) => {
                                tracing::debug!(error = %e, "reconnecting failed");
                                continue;
                            }
                        }
                    }
                    if let Some(c) = &mut conn {
                        if c.writer.write_all(format!("{line}\n").as_bytes()).await.is_ok() {
                            sent = true;
                            break;
                        }
                        conn = None;
                    }
                }
                if !sent {
                    for reply in session.lost_replies() {
                        emit(&reply)?;
                    }
                }
            }
            line = async { conn.as_mut().map(|c| c.lines.next_line()).unwrap().await }, if conn.is_some() => {
                match line {
                    Ok(Some(line)) => {
                        if session.incoming(&line) {
                            emit(&line)?;
                        }
                    }
                    _ => {
                        // The daemon went away: answer what it had; reconnect on demand.
                        conn = None;
                        for reply in session.lost_replies() {
                            emit(&reply)?;
                        }
                    }
                }
            }
        }
    }
    // The daemon this session started stays up for other clients: wait until it
    // answers (a failure to start is still reported).
    answered.take();
    if let Some(rx) = starting.take() {
        conn = Some(started(rx, home, &session).await?);
    }
    // stdin closed: let answers still in flight through, briefly, then exit.
    if let Some(mut c) = conn {
        let _ = c.writer.shutdown().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while !session.in_flight.is_empty() {
                match c.lines.next_line().await {
                    Ok(Some(line)) => {
                        if session.incoming(&line) {
                            let _ = emit(&line);
                        }
                    }
                    _ => break,
                }
            }
        })
        .await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_in_flight_are_answered_once_the_daemon_is_gone() {
        let mut s = Session::default();
        s.outgoing(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#);
        s.outgoing(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        assert!(s.incoming(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#));
        s.outgoing(r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{}}"#);
        s.outgoing(r#"{"jsonrpc":"2.0","id":"b","method":"tools/list"}"#);
        assert!(s.incoming(r#"{"jsonrpc":"2.0","id":"b","result":{}}"#));
        let lost: Vec<Value> = s
            .lost_replies()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lost.len(), 1, "only the unanswered request: {lost:?}");
        assert_eq!(lost[0]["id"], 2);
        assert_eq!(lost[0]["result"]["isError"], true);
        assert!(s.lost_replies().is_empty(), "answered once");
        assert!(s.initialize.is_some() && s.initialized.is_some());
    }

    #[test]
    fn the_replayed_handshake_reply_is_dropped_and_other_methods_get_errors() {
        let mut s = Session::default();
        assert!(!s.incoming(&format!(
            r#"{{"jsonrpc":"2.0","id":"{REPLAY_ID}","result":{{}}}}"#
        )));
        let other = lost_reply(&json!(7), "tools/list");
        assert_eq!(other["error"]["code"], -32603);
        assert!(
            other["error"]["message"]
                .as_str()
                .unwrap()
                .contains("retry")
        );
    }
}
