//! Reaching the daemon from a front end: finding it (the PID under its lock), starting
//! it on demand and waiting until it answers, and stopping it.
//!
//! Owns: the lock's inspection, the spawn of `beat daemon start --foreground` in a
//! session of its own, the start-up error read back from `daemon.log`.
//! Must never: depend on the MCP code (the daemon and the MCP client both use this).

use std::fs::File;
use std::io::Read;
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::net::UnixStream;

use crate::error::CliError;
use crate::paths::Home;

/// Tries to take the daemon lock without waiting; `None` when another process holds it.
pub fn try_lock(home: &Home) -> std::io::Result<Option<File>> {
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
pub const STARTUP_FAILURE: &str = "daemon failed to start:";

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
