//! The daemon process: one per `BACKBEAT_HOME`.
//!
//! Owns: the exclusive lock (`daemon.lock`, which also holds the PID), the Unix socket
//! (0600, in a 0700 home), the log file, the actix system that hosts the engine, the
//! accept loop that serves MCP to every client, start on demand, and graceful stop.
//! Must never: write to stdout (it belongs to no one here), or kill agents when it stops:
//! they keep running in their shims for the next daemon to adopt.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use backbeat_actors::engine::{Engine, EngineConfig, Recover};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::error::CliError;
use crate::mcp::server::{BackbeatMcp, Hello};
use crate::paths::Home;

/// Tries to take the daemon lock without waiting; `None` when another process holds it.
fn try_lock(home: &Home) -> std::io::Result<Option<File>> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(home.lock())?;
    // SAFETY: flock on a descriptor we own.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        Ok(Some(file))
    } else {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(None)
        } else {
            Err(e)
        }
    }
}

/// The PID of the running daemon, if one holds the lock.
pub fn running_pid(home: &Home) -> Option<u32> {
    if !home.lock().exists() {
        return None;
    }
    match try_lock(home) {
        Ok(None) => {
            let mut text = String::new();
            File::open(home.lock())
                .ok()?
                .read_to_string(&mut text)
                .ok()?;
            text.trim().parse().ok()
        }
        _ => None, // we got the lock (released on drop): nobody runs
    }
}

fn init_logging(home: &Home, foreground: bool) {
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
        tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(f))
    });
    let stderr_layer =
        foreground.then(|| tracing_subscriber::fmt::layer().with_writer(std::io::stderr));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(file_layer)
        .with(stderr_layer)
        .try_init();
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
    init_logging(home, foreground);
    // A configuration that cannot be read is refused, never replaced by the defaults.
    crate::config::read_file(&home.config()).map_err(CliError::Refused)?;
    let socket_path = home.prepare_socket_dir()?;
    let _ = std::fs::remove_file(&socket_path);

    let exe = std::env::current_exe()?;
    let system = actix_rt::System::new();
    let result = system.block_on(serve(home.clone(), socket_path.clone(), exe));
    let _ = std::fs::remove_file(&socket_path);
    drop(lock);
    result
}

async fn serve(home: Home, socket_path: PathBuf, exe: PathBuf) -> Result<(), CliError> {
    let listener = tokio::net::UnixListener::bind(&socket_path)?;
    std::fs::set_permissions(&socket_path, std::fs::Permissions::from_mode(0o600))?;
    let handle = Engine::start(EngineConfig {
        db_path: home.db(),
        runs_root: home.runs(),
        shim_command: vec![exe.into_os_string(), "shim".into()],
        settings: crate::config::settings_source(home.config()),
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
            match protocol_error(&line) {
                Some(reply) => {
                    let _ = tx.send(reply.to_string());
                }
                None => {
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
    let server = BackbeatMcp::new(handle, home, hello.cwd.map(PathBuf::from));
    match server.serve(theirs).await {
        Ok(running) => {
            let _ = running.waiting().await;
        }
        Err(e) => tracing::debug!(error = %e, "MCP session ended during initialization"),
    }
}

/// The JSON-RPC error for a line the MCP library cannot answer rightly: -32700 for one
/// that is not JSON, -32602 for `tools/call` without a tool name or whose `arguments`
/// is not an object.
fn protocol_error(line: &str) -> Option<serde_json::Value> {
    use serde_json::{Value, json};
    let v: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => {
            return Some(json!({ "jsonrpc": "2.0", "id": null, "error": {
                "code": -32700,
                "message": format!("Parse error: the line is not JSON ({e}); send one JSON-RPC message per line")
            }}));
        }
    };
    let arguments = &v["params"]["arguments"];
    if v["method"] == "tools/call"
        && (!v["params"]["name"].is_string() || !(arguments.is_null() || arguments.is_object()))
    {
        return Some(
            json!({ "jsonrpc": "2.0", "id": v.get("id").cloned().unwrap_or(Value::Null), "error": {
                "code": -32602,
                "message": "Invalid params: tools/call takes the tool's name as a string and its arguments as an object of the tool's fields (see tools/list)"
            }}),
        );
    }
    None
}

/// Starts a daemon for `home` unless one answers, and waits until it does. Two front
/// ends racing here end with one daemon: the lock decides, the loser exits at once. A
/// daemon that still holds the lock while it stops makes ours exit at once too: then
/// another is started, until one answers or 15 s pass.
pub async fn connect_or_start(home: &Home) -> Result<UnixStream, CliError> {
    home.check_database()?;
    let socket = home.socket();
    if let Ok(s) = UnixStream::connect(&socket).await {
        return Ok(s);
    }
    home.ensure()?;
    let exe = std::env::current_exe()?;
    let log_start = std::fs::metadata(home.log()).map(|m| m.len()).unwrap_or(0);
    let spawn = || {
        let mut command = Command::new(&exe);
        command
            .args(["daemon", "start", "--foreground"])
            .env("BACKBEAT_HOME", &home.root)
            .env_remove("BACKBEAT_DATABASE_PATH")
            .env_remove("BACKBEAT_LOG_STDERR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(db) = &home.database {
            command.env("BACKBEAT_DATABASE_PATH", db);
        }
        // SAFETY: setsid is async-signal-safe. A session of its own keeps the daemon out
        // of reach of a client that kills its MCP server's process group.
        unsafe {
            command.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        command
            .spawn()
            .map_err(|e| CliError::Daemon(format!("cannot start the daemon: {e}")))
    };
    let mut child = spawn()?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(s) = UnixStream::connect(&socket).await {
            // Reap our child later without blocking: it runs on, or it lost the race.
            std::thread::spawn(move || child.wait());
            return Ok(s);
        }
        match child.try_wait() {
            Ok(Some(status)) if !status.success() => {
                let cause = startup_error(home, log_start)
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default();
                return Err(CliError::Daemon(format!(
                    "the daemon failed to start ({status}){cause}; see {}",
                    home.log().display()
                )));
            }
            // Another daemon held the lock: it may be one that is stopping.
            Ok(Some(_)) if running_pid(home).is_none() => child = spawn()?,
            _ => {}
        }
        if Instant::now() > deadline {
            return Err(CliError::Daemon(format!(
                "the daemon did not answer on {} within 15 s; see {}",
                socket.display(),
                home.log().display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The error a daemon that failed to start logged after `offset` of its log.
fn startup_error(home: &Home, offset: u64) -> Option<String> {
    let bytes = std::fs::read(home.log()).ok()?;
    let text = String::from_utf8_lossy(bytes.get(offset as usize..)?);
    text.lines().rev().find_map(|l| {
        l.split_once(STARTUP_FAILURE)
            .map(|(_, e)| e.trim().to_string())
    })
}

/// The words that start a start-up failure's line in `daemon.log`.
const STARTUP_FAILURE: &str = "daemon failed to start:";

/// Sends SIGTERM to the daemon and waits until it released its lock.
pub fn stop(home: &Home) -> Result<bool, CliError> {
    let Some(pid) = running_pid(home) else {
        return Ok(false);
    };
    // SAFETY: kill(2) on the PID recorded under the lock we just saw held.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    // The daemon we signalled: another may take the lock right after it (a client
    // starting one on demand), and is not ours to wait for.
    while running_pid(home) == Some(pid) {
        if Instant::now() > deadline {
            return Err(CliError::Daemon(format!(
                "the daemon (pid {pid}) did not stop within 20 s"
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(true)
}
