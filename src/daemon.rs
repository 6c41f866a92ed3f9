//! The daemon process: one per `BACKBEAT_HOME`.
//!
//! Owns: holding the exclusive lock (`daemon.lock`, which also holds the PID), the Unix
//! socket (0600, in a 0700 home), the log file, the actix system that hosts the engine,
//! the accept loop that serves every client (an MCP session, or tools only for the CLI),
//! and graceful stop. Starting it on demand, finding it and stopping it are the front
//! ends' side: `launcher.rs`.
//! Must never: write to stdout (it belongs to no one here), or kill agents when it stops:
//! they keep running in their shims for the next daemon to adopt.

use std::io::{Seek, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use backbeat_actors::agents::spawner::Spawner;
use backbeat_actors::engine::{Engine, EngineConfig, Recover};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use crate::error::CliError;
use crate::launcher::{STARTUP_FAILURE, try_lock};
use crate::mcp::server::{BackbeatMcp, Hello, TOOLS_ONLY_ACK, answer_call, session_context};
use crate::mcp::tools::ToolContext;
use crate::paths::Home;

/// How long an idle thread of the blocking pool (file reads, program lookups, the
/// spawner's requests) is kept. tokio's default, 10 s, made the first task after a
/// quiet spell wait for new threads at each of its hops; an idle thread costs only its
/// stack's touched pages.
const BLOCKING_THREAD_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(600);

/// Sets up the daemon's log. Lines go to `daemon.log` through a writer thread, so that
/// no actor's thread (the actix thread above all) ever waits on a file write; nothing is
/// dropped when it falls behind (the caller waits instead). In the foreground, stderr
/// gets the same lines through a writer thread of its own. The returned guards flush
/// what is still queued when dropped: keep them until the daemon stops.
fn init_logging(home: &Home, foreground: bool) -> Vec<tracing_appender::non_blocking::WorkerGuard> {
    // A queue of 1024 lines (32 KiB): the default 128 000 kept 4 MiB resident per writer.
    let writer_thread = |name: &str| {
        tracing_appender::non_blocking::NonBlockingBuilder::default()
            .buffered_lines_limit(1024)
            .lossy(false)
            .thread_name(name)
    };
    let mut guards = Vec::new();
    use tracing_subscriber::prelude::*;
    let level = std::env::var("LOG_LEVEL").unwrap_or_else(|_| "info".into());
    let level = match level.as_str() {
        "debug" | "info" | "warn" | "error" => level.as_str(),
        _ => "info",
    };
    // rmcp logs every session at info: keep those for debug.
    let filter = tracing_subscriber::EnvFilter::try_new(format!("{level},rmcp=warn"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(home.log());
    let file_layer = file.ok().map(|f| {
        let (writer, guard) = writer_thread("daemon-log").finish(f);
        guards.push(guard);
        tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(writer)
    });
    // A daemon started for a client runs in the foreground with stderr on /dev/null:
    // formatting every line a second time for nothing is skipped.
    let stderr_layer = (foreground && !stderr_is_null()).then(|| {
        let (writer, guard) = writer_thread("daemon-stderr").finish(std::io::stderr());
        guards.push(guard);
        tracing_subscriber::fmt::layer().with_writer(writer)
    });
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(file_layer)
        .with(stderr_layer)
        .try_init();
    guards
}

/// Whether stderr is `/dev/null`.
fn stderr_is_null() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(null) = std::fs::metadata("/dev/null") else {
        return false;
    };
    // SAFETY: fstat(2) of descriptor 2 into a zeroed struct we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(2, &mut st) } != 0 {
        return false;
    }
    (st.st_mode & libc::S_IFMT) == libc::S_IFCHR && st.st_rdev == null.rdev()
}

/// Runs the daemon in this process until SIGTERM or SIGINT. Returns at once, with
/// success, when another daemon already holds the lock. A failure to start is written
/// to `daemon.log` first, where the front end that started it reads the cause.
pub fn run(home: &Home, foreground: bool) -> Result<(), CliError> {
    let result = run_inner(home, foreground);
    if let Err(e) = &result {
        let line = format!(
            "{} ERROR {STARTUP_FAILURE} {e}\n",
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        );
        if let Ok(mut log) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(home.log())
        {
            let _ = log.write_all(line.as_bytes());
        }
    }
    result
}

fn run_inner(home: &Home, foreground: bool) -> Result<(), CliError> {
    home.ensure()?;
    // A configuration that cannot be read is refused, never replaced by the defaults;
    // before the lock and the spawner, so that a refused start leaves nothing behind.
    crate::config::read_file(&home.config()).map_err(CliError::Refused)?;
    let Some(mut lock) = try_lock(home)? else {
        if foreground {
            eprintln!("beat: a daemon already runs for {}", home.root.display());
        }
        return Ok(());
    };
    lock.set_len(0)?;
    lock.rewind()?;
    write!(lock, "{}", std::process::id())?;
    lock.sync_all()?;
    let handover = backbeat_actors::agents::channel::handover_lock(&home.runs());
    let program = std::env::current_exe()?.with_file_name("beat-spawner");
    let small = if program.is_file() {
        Spawner::exec(&program, crate::VERSION, &home.log(), &handover)
            .inspect_err(|e| eprintln!("beat: {e}; forking the spawner from the daemon instead"))
            .ok()
    } else {
        None
    };
    let started = match small {
        Some(spawner) => Ok(spawner),
        // SAFETY: no thread exists yet (logging, the actix system and tokio start below;
        // a failed `exec` started none).
        None => unsafe { Spawner::start(crate::shim::run_forked, &home.log(), &handover) },
    };
    let spawner = match started {
        Ok(s) => Some(std::sync::Arc::new(s)),
        Err(e) => {
            eprintln!("beat: the shim spawner could not start ({e}); shims will be exec'd");
            None
        }
    };
    let _log_flushed_on_exit = init_logging(home, foreground);
    let socket_path = home.prepare_socket_dir()?;
    let _ = std::fs::remove_file(&socket_path);

    let exe = std::env::current_exe()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_keep_alive(BLOCKING_THREAD_KEEP_ALIVE)
        .build()?;
    let system = actix_rt::System::with_tokio_rt(|| runtime);
    let result = system.block_on(serve(home.clone(), socket_path.clone(), exe, spawner));
    if let Err(e) = &result {
        tracing::error!(error = %e, "daemon stopped on an error");
    }
    let _ = std::fs::remove_file(&socket_path);
    drop(lock);
    result
}

async fn serve(
    home: Home,
    socket_path: PathBuf,
    exe: PathBuf,
    spawner: Option<std::sync::Arc<Spawner>>,
) -> Result<(), CliError> {
    let listener = tokio::net::UnixListener::bind(&socket_path)?;
    std::fs::set_permissions(&socket_path, std::fs::Permissions::from_mode(0o600))?;
    let handle = Engine::start(EngineConfig {
        db_path: home.db(),
        runs_root: home.runs(),
        shim_command: vec![exe.into_os_string(), "shim".into()],
        spawner,
        settings: crate::config::LiveSettings::start(home.config()).source(),
        clock: backbeat_actors::clock_timer::daemon_clock(),
    })?;
    tracing::info!(pid = std::process::id(), socket = %socket_path.display(), "daemon started");
    // Queued now, before any connection is accepted: the engine recovers before it
    // handles any request (tools/list needs no engine and answers meanwhile).
    let recovery = handle.engine.send(Recover);
    actix_rt::spawn(async move {
        match recovery.await {
            Ok(Ok(n)) => tracing::info!(tasks = n, "recovery done"),
            other => tracing::error!(?other, "recovery failed"),
        }
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let handle = handle.clone();
                    let home = home.clone();
                    actix_rt::spawn(async move { serve_connection(stream, handle, home).await });
                }
                Err(e) => tracing::warn!(error = %e, "accept failed"),
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("daemon stopping; running agents keep running and will be adopted");
    Ok(())
}

async fn serve_connection(stream: UnixStream, handle: backbeat_actors::EngineHandle, home: Home) {
    use rmcp::ServiceExt;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    // The first line is our hello (the client's working directory). A client that
    // speaks MCP straight away is served too, with the daemon's directory.
    let Ok(Some(first)) = lines.next_line().await else {
        return;
    };
    let (hello, replay) = match serde_json::from_str::<Hello>(&first) {
        Ok(h) if h.backbeat == "hello" => (h, None),
        _ => (Hello::default(), Some(first)),
    };
    let context = session_context(handle, home, hello.cwd.map(PathBuf::from));
    if hello.tools_only {
        return serve_tool_calls(lines, write, context).await;
    }
    // rmcp gets the lines that are JSON-RPC it can answer; the others are answered
    // here (it would drop a line that is not JSON, and call non-object arguments an
    // unknown method). Its replies and ours share one writer, a line at a time.
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let (from_rmcp, mut to_rmcp) = tokio::io::split(ours);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    actix_rt::spawn(async move {
        let mut replies = BufReader::new(from_rmcp).lines();
        loop {
            let line = tokio::select! {
                l = replies.next_line() => match l {
                    Ok(Some(l)) => l,
                    _ => break,
                },
                Some(l) = rx.recv() => l,
            };
            if write
                .write_all(format!("{line}\n").as_bytes())
                .await
                .is_err()
            {
                break;
            }
        }
        let _ = write.shutdown().await;
    });
    actix_rt::spawn(async move {
        let mut next = replay;
        loop {
            let line = match next.take() {
                Some(l) => l,
                None => match lines.next_line().await {
                    Ok(Some(l)) => l,
                    _ => break,
                },
            };
            if line.trim().is_empty() {
                continue;
            }
            match checked(&line) {
                Err(reply) => {
                    let _ = tx.send(reply.to_string());
                }
                Ok(_) => {
                    if to_rmcp
                        .write_all(format!("{line}\n").as_bytes())
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = to_rmcp.shutdown().await;
    });
    match BackbeatMcp::new(context).serve(theirs).await {
        Ok(running) => {
            let _ = running.waiting().await;
        }
        Err(e) => tracing::debug!(error = %e, "MCP session ended during initialization"),
    }
}

/// A connection whose hello asked for tools only (the `beat` CLI): JSON-RPC
/// `tools/call` requests answered by the same tools, with the same results as in an
/// MCP session, without the session (no `initialize`, no in-memory pipe, each line
/// parsed once, the answers written by one writer task). Calls run side by side: a CancelTask is answered while a
/// WaitTask of the same connection waits. When the client goes away, its calls still
/// waiting are dropped.
async fn serve_tool_calls(
    mut lines: Lines<BufReader<OwnedReadHalf>>,
    mut write: OwnedWriteHalf,
    context: ToolContext,
) {
    // Written before any call runs: a client that never reads it knows that nothing ran
    // (a daemon of an older build refuses a call without it, or closes the connection).
    let ack = format!("{TOOLS_ONLY_ACK}\n");
    if write.write_all(ack.as_bytes()).await.is_err() {
        return;
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let writer = actix_rt::spawn(async move {
        while let Some(mut line) = rx.recv().await {
            line.push('\n');
            if write.write_all(line.as_bytes()).await.is_err() {
                break;
            }
        }
        let _ = write.shutdown().await;
    });
    let mut calls = tokio::task::JoinSet::new();
    while let Ok(Some(line)) = lines.next_line().await {
        while calls.try_join_next().is_some() {}
        if line.trim().is_empty() {
            continue;
        }
        let ToolCall {
            id,
            name,
            arguments,
        } = match tool_call(&line) {
            Ok(Some(call)) => call,
            Ok(None) => continue, // a notification or a response: nothing to answer
            Err(reply) => {
                let _ = tx.send(reply.to_string());
                continue;
            }
        };
        let (tx, context) = (tx.clone(), context.clone());
        calls.spawn_local(async move {
            let result = answer_call(&context, &name, arguments).await;
            let reply = serde_json::json!({ "jsonrpc": "2.0", "id": id, "result": result });
            let _ = tx.send(reply.to_string());
        });
    }
    drop(calls);
    drop(tx);
    let _ = writer.await;
}

/// A `tools/call` request of a tools-only connection.
#[derive(Debug)]
struct ToolCall {
    id: serde_json::Value,
    name: String,
    arguments: Option<serde_json::Map<String, serde_json::Value>>,
}

/// One line of a tools-only connection: a `tools/call` request, `None` for a
/// notification or a response, or the JSON-RPC error to answer with.
fn tool_call(line: &str) -> Result<Option<ToolCall>, serde_json::Value> {
    use serde_json::{Value, json};
    let mut message = checked(line)?;
    let (Some(id), Some(method)) = (message.get("id").cloned(), message.get("method")) else {
        return Ok(None);
    };
    if method != "tools/call" {
        return Err(json!({ "jsonrpc": "2.0", "id": id, "error": {
            "code": -32601,
            "message": format!("Method not found: {method} (this connection's hello asked for tools/call only; connect without toolsOnly for an MCP session)")
        }}));
    }
    let mut params = message["params"].take();
    let name = params["name"].as_str().unwrap_or_default().to_string();
    let arguments = match params["arguments"].take() {
        Value::Object(map) => Some(map),
        _ => None,
    };
    Ok(Some(ToolCall {
        id,
        name,
        arguments,
    }))
}

/// A line as JSON, or the JSON-RPC error for a line the MCP library cannot answer
/// rightly: -32700 for one that is not JSON, -32602 for `tools/call` without a tool
/// name or whose `arguments` is not an object.
fn checked(line: &str) -> Result<serde_json::Value, serde_json::Value> {
    use serde_json::{Value, json};
    let v: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => {
            return Err(json!({ "jsonrpc": "2.0", "id": null, "error": {
                "code": -32700,
                "message": format!("Parse error: the line is not JSON ({e}); send one JSON-RPC message per line")
            }}));
        }
    };
    let arguments = &v["params"]["arguments"];
    if v["method"] == "tools/call"
        && (!v["params"]["name"].is_string() || !(arguments.is_null() || arguments.is_object()))
    {
        return Err(
            json!({ "jsonrpc": "2.0", "id": v.get("id").cloned().unwrap_or(Value::Null), "error": {
                "code": -32602,
                "message": "Invalid params: tools/call takes the tool's name as a string and its arguments as an object of the tool's fields (see tools/list)"
            }}),
        );
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::{checked, tool_call};

    #[test]
    fn only_lines_rmcp_would_mishandle_are_answered_here() {
        let protocol_error = |line: &str| checked(line).err();
        assert_eq!(protocol_error("not json").unwrap()["error"]["code"], -32700);
        let call = |params: &str| {
            protocol_error(&format!(
                r#"{{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{params}}}"#
            ))
        };
        assert_eq!(
            call(r#"{"name":"X","arguments":5}"#).unwrap()["error"]["code"],
            -32602
        );
        assert_eq!(call(r#"{"name":42}"#).unwrap()["id"], 3);
        assert!(call(r#"{"name":"X","arguments":{}}"#).is_none());
        assert!(call(r#"{"name":"X"}"#).is_none());
        assert!(protocol_error(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#).is_none());
    }

    #[test]
    fn a_tools_only_connection_answers_tools_call_and_refuses_other_methods() {
        let super::ToolCall {
            id,
            name,
            arguments,
        } = tool_call(r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"TaskStatus","arguments":{"taskId":"task-1"}}}"#)
                .unwrap()
                .unwrap();
        assert_eq!((id, name.as_str()), (serde_json::json!(7), "TaskStatus"));
        assert_eq!(arguments.unwrap()["taskId"], "task-1");
        let refused = tool_call(r#"{"jsonrpc":"2.0","id":8,"method":"tools/list"}"#).unwrap_err();
        assert_eq!(refused["error"]["code"], -32601);
        assert_eq!(refused["id"], 8);
        let notification = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
        assert!(tool_call(notification).unwrap().is_none());
        assert_eq!(tool_call("{").unwrap_err()["error"]["code"], -32700);
        let bad_arguments = r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"X","arguments":[]}}"#;
        assert_eq!(
            tool_call(bad_arguments).unwrap_err()["error"]["code"],
            -32602
        );
    }
}
