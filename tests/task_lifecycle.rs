//! The life of a task through the CLI and MCP: states, reasons, timeouts, output
//! limits, priorities, and cancel from a different front end than the submitter.

mod common;

use common::{Beat, group_members, pid_exists, read_pidfile};
use serde_json::json;

#[test]
fn a_task_completes_and_keeps_its_output() {
    let beat = Beat::new();
    let id = beat.submit("print hello; eprint warning; print bye", &[]);
    assert!(id.starts_with("task-"));
    let t = beat.wait(&id);
    assert_eq!(t["status"], "completed");
    assert_eq!(t["exitCode"], 0);
    assert_eq!(t["reason"], "exited with code 0");
    for key in ["createdAt", "startedAt", "completedAt"] {
        assert!(
            t[key].as_str().is_some_and(|s| s.ends_with('Z')),
            "{key} is not an ISO time: {t}"
        );
    }
    assert_eq!(beat.ok(&["logs", &id]), "hello\nbye\n");
    let err = beat.output(&["logs", &id]).stderr;
    assert_eq!(String::from_utf8_lossy(&err), "warning\n");
    assert_eq!(beat.ok(&["logs", "--tail", "1", &id]), "bye\n");
    beat.assert_fold_matches_state();
}

#[test]
fn exit_codes_and_signals_are_failures_with_reasons() {
    let beat = Beat::new();
    let failing = beat.submit("print partial; exit 3", &[]);
    let killed = beat.submit("signal KILL", &[]);
    // `beat wait` exits like the task: with the agent's exit code.
    let out = beat.output(&["wait", &failing]);
    assert_eq!(out.status.code(), Some(3));
    let t = beat.status(&failing);
    assert_eq!(
        (t["status"].as_str(), t["exitCode"].as_i64()),
        (Some("failed"), Some(3))
    );
    assert_eq!(t["reason"], "exited with code 3");
    let k = beat.wait(&killed);
    assert_eq!(
        k["status"], "failed",
        "a signal is a failure (spec W6): {k}"
    );
    assert_eq!(k["exitCode"], json!(null));
    assert_eq!(k["signal"], "SIGKILL");
    assert_eq!(k["reason"], "killed by signal SIGKILL");
    assert_eq!(beat.output(&["wait", &killed]).status.code(), Some(1));
}

#[test]
fn foreground_run_streams_output_and_exits_like_the_task() {
    let beat = Beat::new();
    let out = beat.output(&["run", "-f", "--", "print streamed; exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "streamed\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Task ID: task-"));
    let ok = beat.output(&["run", "-f", "--agent", "shell", "echo via-shell"]);
    assert_eq!(ok.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "via-shell\n");
}

#[test]
fn a_task_through_mcp_runs_in_the_clients_directory() {
    let beat = Beat::new();
    let mut mcp = beat.mcp();
    let tools = mcp.request("tools/list", json!({}));
    let names: Vec<&str> = tools["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    for expected in [
        "DelegateTask",
        "TaskStatus",
        "TaskLogs",
        "CancelTask",
        "RetryTask",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    let d = mcp.ok("DelegateTask", json!({ "prompt": "cwd; print from-mcp" }));
    assert_eq!(d["success"], true);
    assert_eq!(d["message"], "Task delegated successfully");
    let id = d["taskId"].as_str().unwrap().to_string();
    let w = mcp.ok("WaitTask", json!({ "taskId": id }));
    assert_eq!(w["status"], "completed");
    let s = mcp.ok("TaskStatus", json!({ "taskId": id }));
    for key in [
        "taskId",
        "status",
        "prompt",
        "startTime",
        "endTime",
        "duration",
        "exitCode",
        "workingDirectory",
        "agent",
    ] {
        assert!(
            s.get(key).is_some(),
            "TaskStatus lacks the original's key {key}: {s}"
        );
    }
    assert_eq!(
        s["workingDirectory"],
        beat.workdir.path().display().to_string()
    );
    let logs = mcp.ok("TaskLogs", json!({ "taskId": id }));
    assert_eq!(
        logs["output"],
        format!("{}\nfrom-mcp\n", beat.workdir.path().display())
    );
    assert_eq!(logs["lineCount"]["output"], 2);
    let r = mcp.ok("RetryTask", json!({ "taskId": id }));
    assert_eq!(r["retryCount"], 1);
    assert_eq!(r["parentTaskId"], id.as_str());
    let retried = beat.wait(r["newTaskId"].as_str().unwrap());
    assert_eq!(retried["status"], "completed");
    assert_eq!(retried["retryOf"], id.as_str());
}

#[test]
fn timeouts_end_the_agent_with_a_reason() {
    let beat = Beat::new();
    let wall = beat.submit("sleep 60000", &["--timeout", "1s"]);
    let idle = beat.submit("print started; sleep 60000", &["--idle-timeout", "1000"]);
    let t = beat.wait(&wall);
    assert_eq!(t["status"], "failed");
    assert_eq!(t["reason"], "timed out after 1 s");
    let i = beat.wait(&idle);
    assert_eq!(i["status"], "failed");
    assert_eq!(i["reason"], "no output for 1 s");
    assert_eq!(beat.ok(&["logs", &idle]), "started\n");
}

/// A hand edit of config.json (replaced by a rename, as editors save, or written in
/// place) applies to new work without any command: the daemon watches the file.
#[test]
fn a_hand_edit_of_config_json_applies_to_new_work() {
    let beat = Beat::new();
    let first = beat.submit("print before", &[]); // the daemon runs
    assert_eq!(beat.wait(&first)["timeout"], 1_800_000);
    let path = beat.path().join("config.json");
    let timeout_of_new_work = || {
        let id = beat.submit("print x", &[]);
        beat.status(&id)["timeout"].as_u64()
    };
    let with_timeout = |ms: u64| {
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        config["timeout"] = json!(ms);
        config.to_string()
    };
    let tmp = path.with_extension("edit");
    std::fs::write(&tmp, with_timeout(7000)).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    common::wait_until(
        "new work to get the renamed file's timeout",
        std::time::Duration::from_secs(20),
        || timeout_of_new_work() == Some(7000),
    );
    std::fs::write(&path, with_timeout(9000)).unwrap();
    common::wait_until(
        "new work to get the rewritten file's timeout",
        std::time::Duration::from_secs(20),
        || timeout_of_new_work() == Some(9000),
    );
}

#[test]
fn the_default_timeout_applies_to_every_task() {
    let beat = Beat::new();
    beat.config_set("timeout", "1000");
    let id = beat.submit("sleep 60000", &[]);
    let t = beat.wait(&id);
    assert_eq!(t["timeout"], 1000);
    assert_eq!(t["reason"], "timed out after 1 s");
}

#[test]
fn output_beyond_the_limit_is_cut_with_a_visible_marker() {
    let beat = Beat::new();
    let id = beat.submit(
        "flood 200000; print after",
        &["--max-output-buffer", "2048"],
    );
    let t = beat.wait(&id);
    assert_eq!(
        t["status"], "completed",
        "the agent keeps running past the limit: {t}"
    );
    assert_eq!(t["outputTruncated"], true);
    assert_eq!(t["outputBytes"], 200_000 + "after\n".len());
    let log = std::fs::read_to_string(beat.run_dir(&id).join("stdout.log")).unwrap();
    let (kept, marker) = log.split_at(2048);
    assert!(kept.bytes().all(|b| b == b'x' || b == b'\n'));
    assert!(
        marker.contains("output truncated at 2048 bytes"),
        "{marker}"
    );
    assert!(!log.contains("after"));
}

#[test]
fn priorities_decide_who_starts_when_slots_are_scarce() {
    let beat = Beat::with_config(json!({ "maxWorkers": 1 }));
    let gate = beat.workdir.path().join("blocker.pid");
    let blocker = beat.submit(&format!("pidfile {}; sleep 60000", gate.display()), &[]);
    read_pidfile(&gate); // the one slot is taken
    let p2a = beat.submit("print a", &["--priority", "P2"]);
    let p2b = beat.submit("print b", &["--priority", "P2"]);
    let p1 = beat.submit("print c", &["--priority", "P1"]);
    let p0 = beat.submit("print d", &["--priority", "P0"]);
    for id in [&p2a, &p2b, &p1, &p0] {
        assert_eq!(beat.status(id)["status"], "queued");
    }
    beat.ok(&["cancel", &blocker, "make", "room"]);
    for id in [&p2a, &p2b, &p1, &p0] {
        assert_eq!(beat.wait(id)["status"], "completed");
    }
    let started: Vec<String> = beat
        .store()
        .events()
        .unwrap()
        .into_iter()
        .filter(|e| e.event.name() == "started" && e.entity_id != blocker)
        .map(|e| e.entity_id)
        .collect();
    assert_eq!(
        started,
        [p0, p1, p2a, p2b],
        "P0, then P1, then P2 first come first served"
    );
}

#[test]
fn a_cancel_right_after_the_start_is_never_lost() {
    let beat = Beat::with_config(json!({ "killGracePeriodMs": 1000 }));
    for _ in 0..20 {
        let id = beat.submit("sleep 60000", &[]);
        beat.ok(&["cancel", &id, "at", "once"]);
        let t = beat.status(&id);
        assert_eq!(t["status"], "cancelled", "{t}");
        assert_eq!(t["reason"], "cancelled by the user: at once");
        assert_eq!(
            common::processes_of_task(&id),
            Vec::<u32>::new(),
            "nothing of {id} is left"
        );
    }
}

#[test]
fn cancel_works_from_another_front_end_and_leaves_no_process() {
    let beat = Beat::with_config(json!({ "maxWorkers": 1, "killGracePeriodMs": 500 }));
    let agent_pid = beat.workdir.path().join("agent.pid");
    let grandchild_pid = beat.workdir.path().join("grandchild.pid");
    // Submitted through MCP: an agent that ignores TERM and has a grandchild.
    let mut mcp = beat.mcp();
    let running = mcp.ok(
        "DelegateTask",
        json!({ "prompt": format!("pidfile {}; grandchild {} 60000; ignore-term; sleep 60000", agent_pid.display(), grandchild_pid.display()) }),
    )["taskId"]
        .as_str()
        .unwrap()
        .to_string();
    let (pid, pgid) = read_pidfile(&agent_pid);
    let (grandchild, gc_pgid) = read_pidfile(&grandchild_pid);
    assert_eq!(pgid, gc_pgid, "the grandchild is in the agent's group");
    // Submitted through the CLI, queued behind it.
    let queued = beat.submit("print never", &[]);
    assert_eq!(beat.status(&queued)["status"], "queued");

    // The queued one is cancelled through MCP, the running one through the CLI.
    let c = mcp.ok(
        "CancelTask",
        json!({ "taskId": queued, "reason": "not needed" }),
    );
    assert_eq!(c["message"], format!("Task {queued} cancelled"));
    let q = beat.status(&queued);
    assert_eq!(q["status"], "cancelled");
    assert_eq!(q["reason"], "cancelled by the user: not needed");
    assert_eq!(q["startedAt"], json!(null));

    beat.ok(&["cancel", &running, "wrong", "repo"]);
    let r = beat.status(&running);
    assert_eq!(r["status"], "cancelled", "{r}");
    assert_eq!(r["reason"], "cancelled by the user: wrong repo");
    // The cancel answered only once the group was gone.
    assert!(
        group_members(pgid).is_empty(),
        "left in the group: {:?}",
        group_members(pgid)
    );
    assert!(!pid_exists(pid) && !pid_exists(grandchild));
    // A finished task cannot be cancelled; the error says why.
    let again = beat.output(&["cancel", &running]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already cancelled"));
    beat.assert_fold_matches_state();
}
