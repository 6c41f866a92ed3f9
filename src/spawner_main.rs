//! `beat-spawner`: the shim spawner as a small program of its own.
//!
//! The daemon starts it once (`Spawner::exec`) when it is installed next to `beat`, and
//! it forks one shim per run, like the spawner the daemon forks from itself otherwise.
//! Why a program of its own: a shim is a copy of its spawner, and a copy of this small
//! binary faults in and tears down a fraction of the pages a copy of `beat` does, which
//! is most of what a shim costs a trivial task (`docs/BENCHMARKS.md`).
//!
//! Owns: nothing but its arguments (the log for the shims' stderr, the handover lock)
//! and descriptor 3, its end of the daemon's socket.
//! Must never: print to stdout, or run anything but the spawner's loop and the shims.

// The shim's code, shared with `beat shim` (the exec'd fallback); this program runs
// only the forked half of it.
#[allow(dead_code)]
#[path = "shim.rs"]
mod shim;

use std::path::PathBuf;

fn main() {
    let mut args = std::env::args_os().skip(1);
    let (Some(version), Some(log), Some(handover), None) =
        (args.next(), args.next(), args.next(), args.next())
    else {
        eprintln!(
            "beat-spawner: started by the daemon only (arguments: <version> <log> <handover-lock>)"
        );
        std::process::exit(2);
    };
    // Another build's spawner would not speak this daemon's protocol: the daemon then
    // forks its own.
    let mine = env!("BACKBEAT_VERSION");
    if version.to_str() != Some(mine) {
        eprintln!(
            "beat-spawner: this is build {mine}, the daemon is {}; the daemon forks its own spawner instead (install both from one build: cargo install --path .)",
            version.to_string_lossy()
        );
        std::process::exit(3);
    }
    let code = backbeat_actors::agents::spawner::serve_program(
        shim::run_forked,
        &PathBuf::from(log),
        &PathBuf::from(handover),
    );
    std::process::exit(code);
}
