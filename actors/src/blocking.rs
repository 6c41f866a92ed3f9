//! The rule that the actix thread never waits on the file system, checked where it
//! would be broken, and the one way the engine's actors hop off that thread.
//!
//! Owns: `assert_off_actix_thread`, called at the top of every function that stats a
//! file or scans `PATH` for new work (the working-directory check, every program
//! lookup). In a debug build (every test run of `beat` and of this crate) it panics
//! when called on a thread that runs an actix arbiter, naming the work, so any test
//! whose path puts such work back on the actix thread fails; in a release build it
//! compiles to nothing. `off_actix_thread` runs such work on tokio's blocking pool.
//! Must never: panic in a release build (the daemon never panics on input), or do any
//! work of its own.

use crate::error::EngineError;

/// Whether this thread runs an actix arbiter: the daemon's actix thread, which carries
/// every actor and every MCP connection. tokio's blocking threads run none.
pub fn on_actix_thread() -> bool {
    actix::Arbiter::try_current().is_some()
}

/// Panics, in a debug build only, if `work` (which stats files or scans `PATH`) was
/// called on the actix thread.
#[inline]
#[track_caller]
pub fn assert_off_actix_thread(work: &str) {
    if cfg!(debug_assertions) && on_actix_thread() {
        panic!(
            "{work} ran on the actix thread, which must never wait on the file system: \
             run it through `blocking::off_actix_thread` (tokio's blocking pool)"
        );
    }
}

/// Runs `work` (validation that stats files or scans `PATH`) on tokio's blocking pool.
pub async fn off_actix_thread<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, EngineError> + Send + 'static,
) -> Result<T, EngineError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| EngineError::Internal(format!("validation did not finish: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `f` panics when run on an actix system's thread, and what it answers
    /// when run through `off_actix_thread` in the same system.
    fn on_and_off<T: Send + 'static>(
        f: impl Fn() -> T + Send + Sync + Copy + std::panic::UnwindSafe + 'static,
    ) -> (bool, T) {
        let system = actix::System::new();
        let on = system.block_on(async move { std::panic::catch_unwind(f).is_err() });
        let off = system
            .block_on(off_actix_thread(move || Ok(f())))
            .expect("the blocking pool ran it");
        (on, off)
    }

    #[test]
    fn no_actix_thread_outside_a_system_nor_on_the_blocking_pool() {
        assert!(!on_actix_thread());
        let system = actix::System::new();
        assert!(system.block_on(async { on_actix_thread() }));
        let off = system.block_on(off_actix_thread(|| Ok(on_actix_thread())));
        assert!(!off.unwrap());
    }

    #[cfg(debug_assertions)]
    #[test]
    fn a_debug_build_panics_when_work_is_asserted_off_the_actix_thread_but_runs_on_it() {
        let (panicked, off) = on_and_off(|| assert_off_actix_thread("a test's stat"));
        assert!(panicked, "the guard let a stat run on the actix thread");
        assert_eq!(off, ());
    }

    #[cfg(not(debug_assertions))]
    #[test]
    fn a_release_build_never_panics_on_the_guard() {
        let (panicked, _) = on_and_off(|| assert_off_actix_thread("a test's stat"));
        assert!(!panicked);
    }
}
