//! The agent pool finds each agent CLI where it is at launch time, not where it was
//! when the daemon started: a CLI installed later is found, and one moved or removed
//! since its last run is looked for again.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{Beat, FAKE};
use serde_json::json;

/// Installs `late-cli` into `dir`: a script that says where it was installed.
fn install_cli(dir: &Path, label: &str) {
    let path = dir.join("late-cli");
    std::fs::write(&path, format!("#!/bin/sh\necho \"{label}: $1\"\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn a_cli_installed_after_the_daemon_started_is_found_where_it_is_now() {
    let bin = tempfile::tempdir().unwrap();
    let (first, second) = (bin.path().join("first"), bin.path().join("second"));
    std::fs::create_dir_all(&first).unwrap();
    std::fs::create_dir_all(&second).unwrap();
    let path = std::env::join_paths(
        [first.clone(), second.clone()]
            .into_iter()
            .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())),
    )
    .unwrap();
    let beat = Beat::with_config_and_env(
        json!({ "agents": {
            "fake": { "command": [FAKE, "{prompt}"] },
            "late": { "command": ["late-cli", "{prompt}"] },
        }}),
        &[("PATH", path.to_str().unwrap())],
    );

    // The daemon (and its pool) runs before the CLI exists.
    let warm = beat.submit("print warm", &[]);
    assert_eq!(beat.wait(&warm)["status"], "completed");
    let daemon = beat.daemon_pid().expect("a daemon");
    let refused = beat.output(&["run", "--agent", "late", "--", "hello"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("was not found in PATH"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // Installed now: found and run.
    install_cli(&second, "second");
    let id = beat.submit("hello", &["--agent", "late"]);
    assert_eq!(beat.wait(&id)["status"], "completed");
    assert_eq!(beat.ok(&["logs", &id]), "second: hello\n");

    // Removed while a task waits for a slot: the launch looks again and says so, rather
    // than trusting where the CLI was last found.
    beat.config_set("memoryReserve", &(1u64 << 40).to_string());
    let waiting = beat.submit("hello", &["--agent", "late"]);
    assert_eq!(beat.status(&waiting)["status"], "queued");
    std::fs::remove_file(second.join("late-cli")).unwrap();
    beat.config_set("memoryReserve", "0");
    let failed = beat.wait(&waiting);
    assert_eq!(failed["status"], "failed");
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .contains("needs the program 'late-cli', which was not found in PATH"),
        "{failed}"
    );

    // Installed elsewhere on PATH: found there.
    install_cli(&first, "first");
    let id = beat.submit("hello", &["--agent", "late"]);
    assert_eq!(beat.wait(&id)["status"], "completed");
    assert_eq!(beat.ok(&["logs", &id]), "first: hello\n");

    assert_eq!(beat.daemon_pid(), Some(daemon), "one daemon throughout");
}
