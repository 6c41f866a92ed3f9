//! What both benches need from the processes they start: a bounded wait, and the
//! processes found by a marker in their environment.
//!
//! Owns: process helpers for `benches/e2e.rs` and `benches/cli.rs` (each includes this
//! file). Must never: time anything itself.

use std::process::{Child, ExitStatus};
use std::time::Duration;

/// The words of the error of a wait that ran out of time.
pub const TIMED_OUT: &str = "ran longer than";

/// Waits for `child` at most `timeout`; kills it past that. Uses a pidfd, so that the
/// wait ends the moment the child exits (no polling interval in the measurement).
pub fn wait_bounded(child: &mut Child, timeout: Duration) -> Result<ExitStatus, String> {
    // SAFETY: pidfd_open(2) on the PID of a child we have not reaped yet.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) } as i32;
    if fd >= 0 {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd; the descriptor is ours and closed right after.
        let ready = unsafe { libc::poll(&mut pfd, 1, millis) };
        // SAFETY: closing the descriptor pidfd_open gave us.
        unsafe { libc::close(fd) };
        if ready == 0 {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("a child process {TIMED_OUT} {timeout:?}"));
        }
    }
    child
        .wait()
        .map_err(|e| format!("waiting for a child failed: {e}"))
}

/// The processes (other than this one) whose environment holds `marker` (`KEY=value`).
pub fn processes_with(marker: &str) -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let environ = std::fs::read(e.path().join("environ")).ok()?;
            (pid != me && environ.split(|b| *b == 0).any(|v| v == marker.as_bytes())).then_some(pid)
        })
        .collect()
}
