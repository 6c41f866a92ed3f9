//! Crash survival: the daemon killed with SIGKILL while agents run and tasks wait.
//! The next daemon (started by any CLI command) adopts running agents, records the real
//! result of those that finished meanwhile, runs the queued tasks, runs nothing twice,
//! and says "lost" of a run whose shim vanished without a result.

mod common;

use std::time::Duration;

use backbeat_actors::agents::run_dir::{RunDir, ShimIdentity};
use common::{Beat, pid_exists, read_pidfile, wait_until};
use serde_json::json;

/// The identity a shim records on its run folder (an extended attribute, or
/// `shim.json`).
fn shim_identity(run: &std::path::Path) -> Option<ShimIdentity> {
    RunDir {
        path: run.to_path_buf(),
    }
    .read_shim()
}

fn kill9(pid: u32) {
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
}

#[test]
fn running_and_queued_tasks_survive_a_daemon_killed_by_sigkill() {
    let beat = Beat::with_config(json!({ "maxWorkers": 2 }));
    let dir = beat.workdir.path();
    // Two agents that outlive the daemon: they print, wait for `go` (created once the
    // daemon is dead), print more, exit 3.
    let go = dir.join("go");
    let mut running = Vec::new();
    for n in 0..2 {
        let pidfile = dir.join(format!("agent{n}.pid"));
        let script = format!(
            "pidfile {}; print before-{n}; await {}; lines 3 after-{n}; exit 3",
            pidfile.display(),
            go.display()
        );
        running.push((beat.submit(&script, &[]), pidfile));
    }
    let queued: Vec<String> = (0..3)
        .map(|n| beat.submit(&format!("print queued-{n}"), &[]))
        .collect();
    let agents: Vec<(i32, i32)> = running.iter().map(|(_, p)| read_pidfile(p)).collect();
    for id in &queued {
        assert_eq!(beat.status(id)["status"], "queued");
    }

    let daemon = beat.kill_daemon();
    // The agents finish while no daemon runs.
    std::fs::write(&go, "").unwrap();
    for (pid, _) in &agents {
        wait_until("an agent to finish", Duration::from_secs(30), || {
            !pid_exists(*pid)
        });
    }

    // Any CLI command brings a new daemon, which recovers.
    beat.ok(&["list"]);
    assert_ne!(beat.daemon_pid(), Some(daemon));
    for (n, (id, _)) in running.iter().enumerate() {
        let t = beat.wait(id);
        assert_eq!(t["status"], "failed", "{t}");
        assert_eq!(t["exitCode"], 3);
        assert_eq!(
            beat.ok(&["logs", id]),
            format!("before-{n}\nafter-{n} 1\nafter-{n} 2\nafter-{n} 3\n"),
            "the full output survives"
        );
    }
    for (n, id) in queued.iter().enumerate() {
        assert_eq!(beat.wait(id)["status"], "completed");
        assert_eq!(beat.ok(&["logs", id]), format!("queued-{n}\n"));
    }
    let counts = beat.start_counts();
    for id in running.iter().map(|(id, _)| id).chain(&queued) {
        assert_eq!(
            counts.get(id),
            Some(&1),
            "task {id} must have started exactly once"
        );
    }
    beat.assert_fold_matches_state();
}

/// The start time of process `pid` (clock ticks since boot): with the PID, the identity
/// of one process, which a recycled PID does not share.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// The parent of process `pid`.
fn parent_of(pid: i32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// Waits until the current daemon has taken over task `id` while its agent (`agent`,
/// started at `started`) is still the same live process, then lets the agent finish by
/// creating `release`.
fn adopted_alive_then_release(
    beat: &Beat,
    id: &str,
    agent: i32,
    started: u64,
    release: &std::path::Path,
) {
    let t = beat.status(id);
    assert_eq!(t["status"], "running", "{t}");
    assert_eq!(
        start_time(agent),
        Some(started),
        "the agent is the same live process after the new daemon took the task over"
    );
    std::fs::write(release, "").unwrap();
}

#[test]
fn an_agent_still_running_is_adopted_by_the_next_daemon() {
    let beat = Beat::new();
    let pidfile = beat.workdir.path().join("agent.pid");
    let release = beat.workdir.path().join("release");
    let id = beat.submit(
        &format!(
            "pidfile {}; await {}; print adopted",
            pidfile.display(),
            release.display()
        ),
        &[],
    );
    let (agent, _) = read_pidfile(&pidfile);
    let started = start_time(agent).unwrap();
    let daemon = beat.kill_daemon();
    // The new daemon adopts the live shim (the agent cannot end before `release`).
    assert_ne!(beat.daemon_pid(), Some(daemon));
    adopted_alive_then_release(&beat, &id, agent, started, &release);
    let t = beat.wait(&id);
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(beat.ok(&["logs", &id]), "adopted\n");
    assert_eq!(beat.start_counts().get(&id), Some(&1));
}

#[test]
fn graceful_stop_leaves_agents_running_for_the_next_daemon() {
    let beat = Beat::new();
    let pidfile = beat.workdir.path().join("agent.pid");
    let release = beat.workdir.path().join("release");
    let id = beat.submit(
        &format!(
            "pidfile {}; await {}; print survived",
            pidfile.display(),
            release.display()
        ),
        &[],
    );
    let (agent, _) = read_pidfile(&pidfile);
    let started = start_time(agent).unwrap();
    beat.ok(&["daemon", "stop"]);
    assert_eq!(beat.json(&["daemon", "status", "--json"])["running"], false);
    assert!(
        pid_exists(agent),
        "SIGTERM to the daemon must not reach the agent"
    );
    adopted_alive_then_release(&beat, &id, agent, started, &release);
    assert_eq!(beat.wait(&id)["status"], "completed");
    assert_eq!(beat.ok(&["logs", &id]), "survived\n");
}

#[test]
fn a_run_whose_shim_and_agent_vanished_is_lost_not_silent() {
    let beat = Beat::new();
    let pidfile = beat.workdir.path().join("agent.pid");
    let id = beat.submit(&format!("pidfile {}; sleep 60000", pidfile.display()), &[]);
    let (agent, _) = read_pidfile(&pidfile);
    // The agent's parent is its shim (a forked shim records its identity on the run
    // folder only when its daemon dies before journaling the start).
    let shim_pid = parent_of(agent).unwrap();
    beat.kill_daemon();
    kill9(shim_pid);
    kill9(agent as u32);
    wait_until("the shim and agent to die", Duration::from_secs(10), || {
        !pid_exists(shim_pid as i32) && !pid_exists(agent)
    });
    let t = beat.wait(&id);
    assert_eq!(t["status"], "failed");
    let reason = t["reason"].as_str().unwrap();
    assert!(reason.starts_with("lost"), "{reason}");
    beat.assert_fold_matches_state();
}

#[test]
fn a_shim_spawned_just_before_a_crash_is_adopted_not_launched_again() {
    // A task that the governor will never start (the reserve exceeds any machine).
    let beat = Beat::with_config(json!({ "memoryReserve": 1u64 << 40 }));
    let id = beat.submit("print from-the-orphan-shim", &[]);
    assert_eq!(beat.status(&id)["status"], "queued");
    beat.ok(&["daemon", "stop"]);

    // What a daemon leaves behind when it dies after spawning the shim and before
    // journaling the start: a run folder and a live shim, for a task still `queued`.
    let run = beat.run_dir(&id);
    std::fs::create_dir_all(&run).unwrap();
    let spec = json!({
        "taskId": id,
        "argv": [common::FAKE, "sleep 300; print from-the-orphan-shim"],
        "cwd": beat.workdir.path(),
        "promptOnStdin": false,
        "timeoutMs": 60000,
        "idleTimeoutMs": null,
        "maxOutputBytes": 1048576,
        "killGraceMs": 1000
    });
    std::fs::write(run.join("spec.json"), spec.to_string()).unwrap();
    let mut shim = beat
        .command(common::BEAT)
        .args(["shim", run.to_str().unwrap()])
        .spawn()
        .expect("spawning the shim");
    wait_until(
        "the shim to announce itself",
        Duration::from_secs(10),
        || shim_identity(&run).is_some(),
    );

    // The next daemon must adopt it: the reserve would keep a fresh launch queued.
    let t = beat.wait(&id);
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(beat.ok(&["logs", &id]), "from-the-orphan-shim\n");
    assert_eq!(beat.start_counts().get(&id), Some(&1));
    assert!(shim.wait().unwrap().success());
    beat.assert_fold_matches_state();
}

/// The daemon dies while one run's end and the next run's start are both waiting for
/// the journal (held by this test): the first shim never heard that its result was
/// journaled, the second that its start was. Each hands what the next daemon needs to
/// the run folder: the result, and the shim's identity (before it lets the handover
/// lock go, which recovery waits for). Nothing is lost, and nothing runs twice.
#[test]
fn what_a_daemon_died_before_journaling_is_handed_over_through_the_run_folders() {
    let beat = Beat::with_config(json!({ "maxWorkers": 1 }));
    let dir = beat.workdir.path();
    let (first_release, second_release) = (dir.join("release-1"), dir.join("release-2"));
    let second_pidfile = dir.join("second.pid");
    // Each start of the second agent leaves a file here.
    let second_starts = dir.join("second-starts");
    std::fs::create_dir(&second_starts).unwrap();
    let first = beat.submit(
        &format!("await {}; print first", first_release.display()),
        &[],
    );
    wait_until("the first task to run", Duration::from_secs(10), || {
        beat.status(&first)["status"] == "running"
    });
    let second = beat.submit(
        &format!(
            "rendezvous {} 1; pidfile {}; await {}; print second",
            second_starts.display(),
            second_pidfile.display(),
            second_release.display()
        ),
        &[],
    );
    assert_eq!(beat.status(&second)["status"], "queued");

    // Hold the journal's write lock: the daemon can journal neither the first run's end
    // nor the second run's start. The first agent's end frees the only slot at once, so
    // the second agent starts while both wait.
    let journal = rusqlite::Connection::open(beat.path().join("beat.db")).unwrap();
    journal.execute_batch("BEGIN IMMEDIATE").unwrap();
    std::fs::write(&first_release, "").unwrap();
    let (second_agent, _) = read_pidfile(&second_pidfile);
    let second_started = start_time(second_agent).unwrap();
    beat.kill_daemon();
    journal.execute_batch("ROLLBACK").unwrap();
    drop(journal);

    let t = beat.wait(&first);
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(beat.ok(&["logs", &first]), "first\n");
    adopted_alive_then_release(
        &beat,
        &second,
        second_agent,
        second_started,
        &second_release,
    );
    let t = beat.wait(&second);
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(beat.ok(&["logs", &second]), "second\n");
    let starts = beat.start_counts();
    assert_eq!(starts.get(&first), Some(&1));
    assert_eq!(starts.get(&second), Some(&1));
    let agents_started = std::fs::read_dir(&second_starts).unwrap().count();
    assert_eq!(agents_started, 1, "the second agent ran once");
    beat.assert_fold_matches_state();
}
