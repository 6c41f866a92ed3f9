//! The shim spawner: shims are forked by a small process of the daemon's, not exec'd.
//! These tests check what that must not change: a run outlives the daemon and the
//! spawner, and a spawner that is gone costs speed, never a task.

mod common;

use std::time::Duration;

use common::{Beat, pid_exists, read_pidfile, wait_until};

/// PIDs of live processes named `comm` whose environment names this test's home.
fn processes_named(beat: &Beat, comm: &str) -> Vec<i32> {
    let wanted = format!("BACKBEAT_HOME={}", beat.home.path().display());
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let name = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        if name.trim() == comm
            && environ.split(|b| *b == 0).any(|kv| kv == wanted.as_bytes())
            && pid_exists(pid)
        {
            pids.push(pid);
        }
    }
    pids
}

fn kill9(pid: i32) {
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

#[test]
fn a_task_still_runs_when_the_spawner_is_gone() {
    let beat = Beat::new();
    let first = beat.submit("print one", &[]);
    assert_eq!(beat.wait(&first)["status"], "completed");
    let spawners = processes_named(&beat, "beat-spawner");
    assert_eq!(spawners.len(), 1, "one spawner per daemon: {spawners:?}");
    kill9(spawners[0]);
    wait_until("the spawner to die", Duration::from_secs(10), || {
        !pid_exists(spawners[0])
    });
    let second = beat.submit("print two", &[]);
    let t = beat.wait(&second);
    assert_eq!(t["status"], "completed", "{t}");
    // The log is written by a thread of its own: wait for the line.
    wait_until(
        "the log to say the run was started by exec, and why",
        Duration::from_secs(20),
        || {
            std::fs::read_to_string(beat.home.path().join("daemon.log"))
                .is_ok_and(|log| log.contains("exec'ing the shim instead"))
        },
    );
}

/// Submits a task whose agent runs until the returned gate file is written; returns
/// once the agent runs: the task's id, the agent's PID and the gate.
fn start_gated_run(beat: &Beat) -> (String, i32, std::path::PathBuf) {
    let pidfile = beat.workdir.path().join("agent.pid");
    let gate = beat.workdir.path().join("gate");
    let id = beat.submit(
        &format!(
            "pidfile {}; waitfile {}; print done",
            pidfile.display(),
            gate.display()
        ),
        &[],
    );
    let (agent, _) = read_pidfile(&pidfile);
    (id, agent, gate)
}

#[test]
fn a_forked_shim_outlives_the_daemon_and_its_spawner() {
    let beat = Beat::new();
    let (id, agent, gate) = start_gated_run(&beat);
    let shims = processes_named(&beat, "beat-shim");
    assert_eq!(shims.len(), 1, "the run's shim: {shims:?}");
    let spawner = processes_named(&beat, "beat-spawner");
    let daemon = beat.daemon_pid().expect("daemon running") as i32;
    kill9(daemon);
    // The spawner follows the daemon out (its socket closes); the shim and agent stay.
    wait_until("the spawner to exit", Duration::from_secs(10), || {
        spawner.iter().all(|p| !pid_exists(*p))
    });
    assert!(pid_exists(shims[0]), "the shim survived");
    assert!(pid_exists(agent), "the agent survived");
    std::fs::write(&gate, "go").unwrap();
    let t = beat.wait(&id);
    assert_eq!(t["status"], "completed", "{t}");
}

/// The program a process runs.
fn program_of(pid: i32) -> std::path::PathBuf {
    std::fs::read_link(format!("/proc/{pid}/exe")).unwrap()
}

#[test]
fn the_spawner_is_a_small_program_of_its_own_when_installed_beside_beat() {
    let beat = Beat::new();
    let id = beat.submit("print one", &[]);
    assert_eq!(beat.wait(&id)["status"], "completed");
    let spawners = processes_named(&beat, "beat-spawner");
    assert_eq!(spawners.len(), 1, "one spawner per daemon: {spawners:?}");
    let program = program_of(spawners[0]);
    assert_eq!(
        program.file_name().and_then(|n| n.to_str()),
        Some("beat-spawner"),
        "{}",
        program.display()
    );
}

#[test]
fn without_beat_spawner_beside_it_the_daemon_forks_its_own_spawner() {
    let beat = Beat::new();
    let (_install, alone) = install_beat(None);
    runs_with_a_forked_spawner(&beat, &alone);
    beat.ok(&["daemon", "stop"]);
}

/// Starts the daemon from `alone` and checks that a task runs, with a spawner that is a
/// copy of that daemon.
fn runs_with_a_forked_spawner(beat: &Beat, alone: &std::path::Path) {
    let started = beat
        .command(alone)
        .args(["daemon", "start"])
        .output()
        .unwrap();
    assert!(started.status.success(), "{started:?}");
    let id = beat.submit("print one", &[]);
    let t = beat.wait(&id);
    assert_eq!(t["status"], "completed", "{t}");
    let spawners = processes_named(beat, "beat-spawner");
    assert_eq!(spawners.len(), 1, "one spawner per daemon: {spawners:?}");
    assert_eq!(program_of(spawners[0]), alone, "a copy of the daemon");
}

/// A `beat` installed alone in a new folder, with `spawner` (if any) as the
/// `beat-spawner` beside it.
fn install_beat(spawner: Option<&str>) -> (tempfile::TempDir, std::path::PathBuf) {
    let install = tempfile::tempdir().unwrap();
    let beat = install.path().join("beat");
    std::fs::hard_link(common::BEAT, &beat)
        .or_else(|_| std::fs::copy(common::BEAT, &beat).map(|_| ()))
        .unwrap();
    if let Some(script) = spawner {
        use std::os::unix::fs::PermissionsExt;
        let path = install.path().join("beat-spawner");
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    (install, beat)
}

#[test]
fn a_beat_spawner_of_another_build_refuses_to_serve_and_says_why() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_beat-spawner"))
        .args(["0.0.0+another", "/dev/null", "/dev/null"])
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("the daemon is 0.0.0+another"), "{said}");
    assert!(said.contains("cargo install --path ."), "{said}");
}

#[test]
fn a_beat_spawner_that_does_not_answer_is_replaced_by_a_fork_of_the_daemon() {
    let beat = Beat::new();
    // What another build's spawner does: it exits at once, saying why.
    let (_install, alone) = install_beat(Some(
        "#!/bin/sh\necho 'beat-spawner: another build' >&2\nexit 3\n",
    ));
    runs_with_a_forked_spawner(&beat, &alone);
    let log = std::fs::read_to_string(beat.home.path().join("daemon.log")).unwrap();
    assert!(log.contains("beat-spawner: another build"), "{log}");
    beat.ok(&["daemon", "stop"]);
}

#[test]
fn a_run_that_prints_nothing_leaves_no_run_folder() {
    let beat = Beat::new();
    let id = beat.submit("exit 0", &[]);
    let t = beat.wait(&id);
    assert_eq!(t["status"], "completed", "{t}");
    // Its shim handed the result over the channel and exits once told it is journaled;
    // had the daemon not said so, the shim would write the record to the folder first.
    wait_until("the run's shim to exit", Duration::from_secs(10), || {
        processes_named(&beat, "beat-shim").is_empty()
    });
    assert!(
        !beat.run_dir(&id).exists(),
        "no file was written for the run"
    );
    assert_eq!(beat.ok(&["logs", &id]), "");
}

/// After one run: the one shim forked ahead of the next run (its `comm` is
/// `beat-standby` until it takes a run).
fn standby_after_a_run(beat: &Beat) -> Vec<i32> {
    let first = beat.submit("print one", &[]);
    assert_eq!(beat.wait(&first)["status"], "completed");
    let standby = processes_named(beat, "beat-standby");
    assert_eq!(
        standby.len(),
        1,
        "one shim waits for the next run: {standby:?}"
    );
    standby
}

#[test]
fn the_next_run_is_supervised_by_a_shim_forked_ahead_of_it() {
    let beat = Beat::new();
    let standby = standby_after_a_run(&beat);
    let (id, _agent, gate) = start_gated_run(&beat);
    assert_eq!(
        processes_named(&beat, "beat-shim"),
        standby,
        "the run's shim is the one that waited"
    );
    std::fs::write(&gate, "go").unwrap();
    let t = beat.wait(&id);
    assert_eq!(t["status"], "completed", "{t}");
}

#[test]
fn a_run_still_starts_when_the_shim_forked_ahead_of_it_is_gone() {
    let beat = Beat::new();
    let standby = standby_after_a_run(&beat);
    kill9(standby[0]);
    wait_until("the waiting shim to die", Duration::from_secs(10), || {
        !pid_exists(standby[0])
    });
    let second = beat.submit("print two", &[]);
    let t = beat.wait(&second);
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(beat.ok(&["logs", &second]).trim(), "two");
    wait_until(
        "another shim to wait for the next run",
        Duration::from_secs(10),
        || {
            let now = processes_named(&beat, "beat-standby");
            now.len() == 1 && now != standby
        },
    );
}

#[test]
fn a_run_whose_environment_is_too_large_for_the_waiting_shim_is_forked_and_keeps_it() {
    // 100 kB, more than the 64 KiB handed to the shim forked ahead.
    let big = "x".repeat(100_000);
    let beat = Beat::with_config_and_env(serde_json::json!({}), &[("BIG", &big)]);
    let standby = standby_after_a_run(&beat);
    let id = beat.submit("env BIG", &[]);
    let t = beat.wait(&id);
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(beat.ok(&["logs", &id]).trim(), format!("BIG={big}"));
    assert_eq!(
        processes_named(&beat, "beat-standby"),
        standby,
        "the shim forked ahead still waits, for a run that fits"
    );
}
