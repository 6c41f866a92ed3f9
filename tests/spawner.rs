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

/// The parent and the state (`R`, `S`, ...) of a live process, from `/proc/PID/stat`.
fn parent_and_state(pid: i32) -> Option<(i32, String)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?.to_string();
    let parent = fields.next()?.parse().ok()?;
    Some((parent, state))
}

/// The daemon's spawners: the processes named `beat-spawner` that no spawner forked. A
/// shim bears its spawner's name from its fork until it names itself.
fn spawners(beat: &Beat) -> Vec<i32> {
    let named = processes_named(beat, "beat-spawner");
    named
        .iter()
        .copied()
        .filter(|&pid| parent_and_state(pid).is_some_and(|(parent, _)| !named.contains(&parent)))
        .collect()
}

/// The daemon's one spawner.
fn the_spawner(beat: &Beat) -> i32 {
    let spawners = spawners(beat);
    assert_eq!(spawners.len(), 1, "one spawner per daemon: {spawners:?}");
    spawners[0]
}

/// Whether the spawner is asleep (in `poll`, waiting for the daemon or a shim) and no
/// shim it forked is still unnamed. It sleeps only once a shim waits for the next run,
/// and a shim forked ahead of that names itself `beat-standby` on its own time.
fn spawner_at_rest(beat: &Beat) -> bool {
    let [spawner] = spawners(beat)[..] else {
        return false;
    };
    // Its state first: a shim forked before it fell asleep shows in the names read after.
    let asleep = parent_and_state(spawner).is_some_and(|(_, state)| state == "S");
    asleep && processes_named(beat, "beat-spawner") == [spawner]
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
    let spawner = the_spawner(&beat);
    kill9(spawner);
    wait_until("the spawner to die", Duration::from_secs(10), || {
        !pid_exists(spawner)
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
    start_gated_script(beat, "", "print done")
}

/// The same, for an agent that runs the steps `before` (each ended by `;`) once it
/// started, and `after` once the gate is written.
fn start_gated_script(beat: &Beat, before: &str, after: &str) -> (String, i32, std::path::PathBuf) {
    let pidfile = beat.workdir.path().join("agent.pid");
    let gate = beat.workdir.path().join("gate");
    // Those of an earlier gated run.
    let _ = std::fs::remove_file(&pidfile);
    let _ = std::fs::remove_file(&gate);
    let id = beat.submit(
        &format!(
            "pidfile {}; {before} waitfile {}; {after}",
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
    wait_until("the spawner to be at rest", Duration::from_secs(10), || {
        spawner_at_rest(&beat)
    });
    let spawner = the_spawner(&beat);
    let waiting = processes_named(&beat, "beat-standby");
    assert!(!waiting.is_empty(), "a shim waits for the next run");
    let daemon = beat.daemon_pid().expect("daemon running") as i32;
    kill9(daemon);
    // The spawner follows the daemon out (its socket closes), and so do the shims that
    // wait for a run; the run's shim and agent stay.
    wait_until("the spawner to exit", Duration::from_secs(10), || {
        !pid_exists(spawner)
    });
    wait_until("the waiting shims to exit", Duration::from_secs(10), || {
        waiting.iter().all(|p| !pid_exists(*p))
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
    let program = program_of(the_spawner(&beat));
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
    assert_eq!(program_of(the_spawner(beat)), alone, "a copy of the daemon");
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

/// The shims waiting for a run (`beat-standby`), once no run is under way.
fn waiting_shims(beat: &Beat) -> Vec<i32> {
    wait_until(
        "every shim to be done with its run, and the spawner at rest",
        Duration::from_secs(10),
        || spawner_at_rest(beat) && processes_named(beat, "beat-shim").is_empty(),
    );
    let mut waiting = processes_named(beat, "beat-standby");
    waiting.sort_unstable();
    waiting
}

/// After one run: the shims that wait for the next (the one forked ahead of it, and the
/// one that supervised the run).
fn waiting_after_a_run(beat: &Beat) -> Vec<i32> {
    let first = beat.submit("print one", &[]);
    assert_eq!(beat.wait(&first)["status"], "completed");
    let waiting = waiting_shims(beat);
    assert!(!waiting.is_empty(), "a shim waits for the next run");
    waiting
}

/// The one shim supervising a run now.
fn the_running_shim(beat: &Beat) -> i32 {
    let shims = processes_named(beat, "beat-shim");
    assert_eq!(shims.len(), 1, "one run, one shim: {shims:?}");
    shims[0]
}

#[test]
fn the_next_run_is_supervised_by_a_shim_that_waited_for_it() {
    let beat = Beat::new();
    let waiting = waiting_after_a_run(&beat);
    let (id, _agent, gate) = start_gated_run(&beat);
    let shim = the_running_shim(&beat);
    assert!(
        waiting.contains(&shim),
        "the run's shim {shim} is one that waited: {waiting:?}"
    );
    std::fs::write(&gate, "go").unwrap();
    let t = beat.wait(&id);
    assert_eq!(t["status"], "completed", "{t}");
}

#[test]
fn a_shim_supervises_the_next_run_once_the_last_one_is_journaled() {
    let beat = Beat::new();
    let (first, _agent, gate) = start_gated_run(&beat);
    let shim = the_running_shim(&beat);
    std::fs::write(&gate, "go").unwrap();
    assert_eq!(beat.wait(&first)["status"], "completed");
    assert!(
        waiting_shims(&beat).contains(&shim),
        "the shim waits again once its run is journaled"
    );
    // The next run gets its own environment, not the last one's.
    let (second, _agent, gate) = start_gated_script(&beat, "", "env BACKBEAT_TASK_ID");
    assert_eq!(
        the_running_shim(&beat),
        shim,
        "the last shim freed is the first to serve"
    );
    std::fs::write(&gate, "go").unwrap();
    assert_eq!(beat.wait(&second)["status"], "completed");
    assert_eq!(
        beat.ok(&["logs", &second]).trim(),
        format!("BACKBEAT_TASK_ID={second}")
    );
}

#[test]
fn a_cancel_stops_the_run_it_names_and_not_the_next_one_of_the_same_shim() {
    let beat = Beat::new();
    let (first, _agent, _gate) = start_gated_run(&beat);
    let shim = the_running_shim(&beat);
    beat.ok(&["cancel", &first]);
    assert_eq!(beat.wait(&first)["status"], "cancelled");
    assert!(
        waiting_shims(&beat).contains(&shim),
        "the shim of a cancelled run waits again"
    );
    // Whatever the cancel left with the shim is not carried into its next run.
    let gate = beat.workdir.path().join("gate");
    let second = beat.submit(&format!("waitfile {}; print two", gate.display()), &[]);
    wait_until("the next run to start", Duration::from_secs(10), || {
        processes_named(&beat, "beat-shim") == [shim]
    });
    std::fs::write(&gate, "go").unwrap();
    let t = beat.wait(&second);
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(beat.ok(&["logs", &second]).trim(), "two");
}

#[test]
fn a_shim_whose_run_left_a_process_behind_supervises_no_other_run() {
    let beat = Beat::new();
    let escaped = beat.workdir.path().join("escaped.pid");
    let (id, _agent, gate) = start_gated_script(
        &beat,
        &format!("escape {} 60000;", escaped.display()),
        "print done",
    );
    let shim = the_running_shim(&beat);
    std::fs::write(&gate, "go").unwrap();
    assert_eq!(beat.wait(&id)["status"], "completed");
    let (left_behind, _) = read_pidfile(&escaped);
    wait_until("the shim to exit", Duration::from_secs(10), || {
        !pid_exists(shim)
    });
    assert!(
        pid_exists(left_behind),
        "the process outside the agent's group was not the shim's to stop"
    );
    kill9(left_behind);
    assert!(!waiting_shims(&beat).contains(&shim));
}

#[test]
fn a_run_still_starts_when_the_waiting_shims_are_gone() {
    let beat = Beat::new();
    let waiting = waiting_after_a_run(&beat);
    // TERM ends a shim that waits: no run is its to stop.
    for &pid in &waiting {
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    wait_until("the waiting shims to exit", Duration::from_secs(10), || {
        waiting.iter().all(|p| !pid_exists(*p))
    });
    let second = beat.submit("print two", &[]);
    let t = beat.wait(&second);
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(beat.ok(&["logs", &second]).trim(), "two");
    let now = waiting_shims(&beat);
    assert!(
        !now.is_empty() && now.iter().all(|p| !waiting.contains(p)),
        "new shims wait for the next run: {now:?}"
    );
}

#[test]
fn no_more_than_eight_shims_wait_after_a_burst() {
    let beat = Beat::with_config(serde_json::json!({ "maxWorkers": 12 }));
    let together = beat.workdir.path().join("together");
    std::fs::create_dir(&together).unwrap();
    let ids: Vec<String> = (0..12)
        .map(|_| beat.submit(&format!("rendezvous {} 12", together.display()), &[]))
        .collect();
    for id in &ids {
        assert_eq!(beat.wait(id)["status"], "completed");
    }
    // Twelve shims supervised the burst at once; eight of them (`IDLE_MAX`) are kept,
    // and the others exit (each may still be on its way out when the runs end).
    wait_until("eight shims to wait", Duration::from_secs(10), || {
        waiting_shims(&beat).len() == 8
    });
}

#[test]
fn a_run_whose_environment_is_too_large_for_a_waiting_shim_is_forked_and_keeps_them() {
    // 100 kB, more than the 64 KiB handed to a shim that waits.
    let big = "x".repeat(100_000);
    let beat = Beat::with_config_and_env(serde_json::json!({}), &[("BIG", &big)]);
    let waiting = waiting_after_a_run(&beat);
    let id = beat.submit("env BIG", &[]);
    let t = beat.wait(&id);
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(beat.ok(&["logs", &id]).trim(), format!("BIG={big}"));
    assert_eq!(
        waiting_shims(&beat),
        waiting,
        "the shims that waited still wait, for a run that fits"
    );
}
