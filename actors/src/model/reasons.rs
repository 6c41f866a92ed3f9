//! The sentences a task shows as its `reason`, in one place.
//!
//! Owns: every text the engine writes into a task's reason (how a run ended, why a task
//! was cancelled, requeued, lost or is waiting for a rate limit) and into the governor's
//! log when it defers a start, and the small renderings they share (signal names,
//! durations people read).
//! Must never: decide anything. Which sentence applies is the state machine's or the
//! actor's choice; this module only words it, so that the same event always reads the
//! same way wherever it comes from.

use super::Millis;
use super::run::RunSummary;

/// A queued task's end, or a running one's once its agent stopped: the user's reason
/// after the fixed words, which stand alone when the user gave none.
pub fn cancelled_by_user(reason: &str) -> String {
    match reason.trim() {
        "" => "cancelled by the user".to_string(),
        r => format!("cancelled by the user: {r}"),
    }
}

/// The agent could not be executed (the shim's report, or the launch itself failed).
pub fn start_failed(error: &str) -> String {
    format!("the agent could not be started: {error}")
}

/// The daemon could not prepare the run folder or spawn the shim.
pub fn shim_spawn_failed(error: &str) -> String {
    start_failed(&format!("spawning its shim failed: {error}"))
}

/// A task journaled as running whose shim was never spawned (a crash in between).
pub const REQUEUED_NOT_LAUNCHED: &str = "requeued: its agent had not been launched";

/// A structured agent that exited 0 without its result event (Gemini after a kill).
pub const NO_RESULT: &str = "the agent exited with code 0 but never reported a result";

/// Neither an exit code nor a signal: the shim could not tell.
pub const NO_EXIT_STATUS: &str = "ended without an exit status";

/// The shim died without recording the run's exit record.
pub fn shim_lost(shim_pid: u32) -> String {
    format!("lost: the shim (pid {shim_pid}) ended without recording the agent's result")
}

/// The shim ended but its exit record cannot be read.
pub fn exit_unreadable(error: &str) -> String {
    format!("lost: the run's exit record is unreadable: {error}")
}

pub fn exited_with(code: i32) -> String {
    format!("exited with code {code}")
}

pub fn killed_by(signal: i32) -> String {
    format!("killed by signal {}", signal_name(signal))
}

/// The shim stopped the agent at its wall-clock limit.
pub fn timed_out(after_ms: u64) -> String {
    format!("timed out after {}", human_duration(after_ms))
}

/// The shim stopped the agent after a silence (idle timeout).
pub fn idle(after_ms: u64) -> String {
    format!("no output for {}", human_duration(after_ms))
}

/// The shim stopped an agent that kept retrying an error retrying cannot fix.
pub fn unrecoverable(cause: Option<&str>) -> String {
    format!(
        "stopped: {}",
        cause.unwrap_or("the agent kept retrying an error that retrying cannot fix")
    )
}

/// A rate-limited run's reason, extended with when the task runs again.
pub fn rate_limit_wait(run_reason: &str, not_before: Millis, attempt: u32, max: u32) -> String {
    let until = chrono::DateTime::from_timestamp_millis(not_before)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default();
    format!(
        "{run_reason}; waiting until {until} to run again (rate-limit retry {attempt} of {max})"
    )
}

/// "exited with code 1: the provider refused the credentials (HTTP 401): API Error: …"
pub fn failure(how: &str, summary: &RunSummary) -> String {
    if let Some(cause) = &summary.unrecoverable {
        return format!("{how}: {cause}");
    }
    let cause = match summary.http_status {
        Some(401) | Some(403) => Some(format!(
            "the provider refused the credentials (HTTP {})",
            summary.http_status.unwrap_or(401)
        )),
        Some(429) => Some("rate limited by the provider (HTTP 429)".to_string()),
        Some(s) if s >= 500 => Some(format!("the provider failed (HTTP {s})")),
        Some(s) => Some(format!("the provider answered HTTP {s}")),
        None if summary.rate_limited => Some("rate limited by the provider".to_string()),
        None => None,
    };
    let error = summary.error.as_deref().map(|e| {
        e.lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(300)
            .collect::<String>()
    });
    match (cause, error) {
        (Some(c), Some(e)) => format!("{how}: {c}: {e}"),
        (Some(c), None) => format!("{how}: {c}"),
        (None, Some(e)) if !e.is_empty() => format!("{how}: {e}"),
        _ => how.to_string(),
    }
}

/// `SIGKILL` for 9, and so on; `SIG<n>` for numbers this table does not know.
pub fn signal_name(signal: i32) -> String {
    let name = match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        10 => "SIGUSR1",
        11 => "SIGSEGV",
        12 => "SIGUSR2",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        _ => return format!("SIG{signal}"),
    };
    name.to_string()
}

/// `90 s`, `1500 ms`, `2 min`: durations as people write them.
pub fn human_duration(ms: u64) -> String {
    if ms.is_multiple_of(60_000) && ms >= 60_000 {
        format!("{} min", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{} s", ms / 1000)
    } else {
        format!("{ms} ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_without_a_reason_does_not_repeat_itself() {
        assert_eq!(cancelled_by_user(""), "cancelled by the user");
        assert_eq!(cancelled_by_user("  "), "cancelled by the user");
        assert_eq!(
            cancelled_by_user("wrong repo"),
            "cancelled by the user: wrong repo"
        );
    }

    #[test]
    fn a_rate_limit_wait_says_until_when_and_which_attempt() {
        assert_eq!(
            rate_limit_wait(
                "exited with code 1: rate limited by the provider",
                1_700_000_000_000,
                2,
                3
            ),
            "exited with code 1: rate limited by the provider; waiting until 2023-11-14T22:13:20Z to run again (rate-limit retry 2 of 3)"
        );
    }

    #[test]
    fn a_failed_spawn_reads_as_a_failed_start() {
        assert_eq!(
            shim_spawn_failed("No such file or directory (os error 2)"),
            "the agent could not be started: spawning its shim failed: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn durations_and_signals_read_as_people_write_them() {
        assert_eq!(human_duration(120_000), "2 min");
        assert_eq!(human_duration(90_000), "90 s");
        assert_eq!(human_duration(1_500), "1500 ms");
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(64), "SIG64");
        assert_eq!(timed_out(60_000), "timed out after 1 min");
        assert_eq!(idle(5_000), "no output for 5 s");
        assert_eq!(killed_by(15), "killed by signal SIGTERM");
    }
}
