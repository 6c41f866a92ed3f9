//! Dependencies and pipelines: the blocked state, the rules for dependencies on finished
//! and unknown tasks, the failure cascade, continueFrom chains, pipelines, and a DAG
//! that survives a daemon killed with SIGKILL.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Beat, FAKE, pid_exists, wait_until};
use serde_json::{Value, json};

fn id_of(v: &Value) -> String {
    v["taskId"].as_str().expect("taskId").to_string()
}

/// Position of each task's `started` and `finished` events in the journal.
fn event_order(beat: &Beat) -> (HashMap<String, i64>, HashMap<String, i64>) {
    let (mut started, mut finished) = (HashMap::new(), HashMap::new());
    for e in beat.store().events().unwrap() {
        match e.event.name() {
            "started" => {
                started.insert(e.entity_id, e.seq);
            }
            "finished" => {
                finished.insert(e.entity_id, e.seq);
            }
            _ => {}
        }
    }
    (started, finished)
}

#[test]
fn a_diamond_runs_d_only_after_b_and_c_each_task_once() {
    let beat = Beat::new();
    // A holds until the test has seen D blocked (a file, not a guessed time).
    let go = beat.workdir.path().join("go");
    let a = beat.submit(&format!("await {}; print a", go.display()), &[]);
    let b = beat.submit("sleep 50; print b", &["--deps", &a]);
    let c = beat.submit("sleep 150; print c", &["--deps", &a]);
    let d = beat.submit("print d", &["--deps", &format!("{b},{c}")]);
    assert_eq!(beat.status(&d)["status"], "blocked");
    let blocked = beat.json(&["list", "--status", "blocked", "--json"]);
    assert!(
        blocked
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == d.as_str()),
        "beat list --status blocked shows it"
    );
    let s = beat.json(&["status", "--json", &d]);
    assert_eq!(s["dependsOn"].as_array().unwrap().len(), 2);
    std::fs::write(&go, "").unwrap();
    assert_eq!(beat.wait(&d)["status"], "completed");
    let (started, finished) = event_order(&beat);
    assert!(
        started[&d] > finished[&b] && started[&d] > finished[&c],
        "D started only after B and C finished"
    );
    assert!(started[&b] > finished[&a] && started[&c] > finished[&a]);
    for id in [&a, &b, &c, &d] {
        assert_eq!(beat.start_counts().get(id), Some(&1));
    }
    let a_status = beat.json(&["status", "--json", &a]);
    let dependents: Vec<&str> = a_status["dependents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["taskId"].as_str().unwrap())
        .collect();
    assert_eq!(dependents, [b.as_str(), c.as_str()]);
    beat.assert_fold_matches_state();
}

/// A task whose dependencies have all completed is queued from its first commit: the
/// answer says `queued`, and the journal never has it blocked.
#[test]
fn a_task_whose_dependencies_all_completed_is_queued_from_its_first_commit() {
    let beat = Beat::new();
    let done = beat.submit("print done", &[]);
    beat.wait(&done);
    let mut mcp = beat.mcp();
    let v = mcp.ok(
        "DelegateTask",
        json!({ "prompt": "print after", "dependsOn": [done] }),
    );
    assert_eq!(v["status"], "queued", "{v}");
    let id = v["taskId"].as_str().unwrap().to_string();
    assert_eq!(beat.wait(&id)["status"], "completed");
    let names: Vec<String> = beat
        .store()
        .events()
        .unwrap()
        .into_iter()
        .filter(|e| e.entity_id == id)
        .map(|e| match e.event {
            backbeat_actors::model::Event::Task(t) => t.name().to_string(),
            other => panic!("a task event was expected: {other:?}"),
        })
        .collect();
    assert_eq!(names.first().map(String::as_str), Some("submitted"));
    assert!(!names.iter().any(|n| n == "unblocked"), "{names:?}");
    beat.assert_fold_matches_state();
}

#[test]
fn dependency_rules_through_the_cli() {
    let beat = Beat::new();
    let unknown = beat.output(&[
        "run",
        "--deps",
        "task-00000000-0000-0000-0000-000000000000",
        "--",
        "print x",
    ]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("not found"));

    let done = beat.submit("print done", &[]);
    beat.wait(&done);
    let after_done = beat.submit("print after", &["--deps", &done]);
    assert_eq!(
        beat.wait(&after_done)["status"],
        "completed",
        "a completed dependency is met at once"
    );

    let failed = beat.submit("exit 2", &[]);
    beat.wait(&failed);
    let t = beat.status(&beat.submit("print never", &["--deps", &failed]));
    assert_eq!(
        t["status"], "cancelled",
        "a failed dependency cancels the new task at once"
    );
    assert_eq!(
        t["reason"],
        format!("cancelled because its dependency {failed} failed")
    );

    let cancelled = beat.submit("print x", &["--deps", &failed]);
    let t = beat.status(&beat.submit("print never", &["--deps", &cancelled]));
    assert_eq!(t["status"], "cancelled");
    assert!(
        t["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("(the cascade began at {failed})")),
        "{t}"
    );

    let twice = beat.output(&["run", "--deps", &format!("{done},{done}"), "--", "print x"]);
    assert!(String::from_utf8_lossy(&twice.stderr).contains("given twice"));
    let many: Vec<String> = (0..101).map(|_| done.clone()).collect();
    let too_many = beat.output(&["run", "--deps", &many.join(","), "--", "print x"]);
    assert!(String::from_utf8_lossy(&too_many.stderr).contains("at most 100"));
    beat.assert_fold_matches_state();
}

#[test]
fn dependency_rules_through_mcp_and_the_cascade_names_its_root() {
    let beat = Beat::new();
    let mut mcp = beat.mcp();
    let (e, is_error) = mcp.call(
        "DelegateTask",
        json!({ "prompt": "print x", "dependsOn": ["task-unknown"] }),
    );
    assert!(is_error && e["error"].as_str().unwrap().contains("not found"));
    let (e, is_error) = mcp.call(
        "DelegateTask",
        json!({ "prompt": "print x", "dependsOn": ["not-a-task"] }),
    );
    assert!(is_error && e["error"].as_str().unwrap().contains("not a task id"));

    // Finished dependencies: completed is met at once; failed or cancelled cancels at once.
    let done = id_of(&mcp.ok("DelegateTask", json!({ "prompt": "print done" })));
    mcp.ok("WaitTask", json!({ "taskId": done }));
    let met = id_of(&mcp.ok(
        "DelegateTask",
        json!({ "prompt": "print met", "dependsOn": [done] }),
    ));
    assert_eq!(
        mcp.ok("WaitTask", json!({ "taskId": met }))["status"],
        "completed"
    );
    let failed = id_of(&mcp.ok("DelegateTask", json!({ "prompt": "exit 9" })));
    mcp.ok("WaitTask", json!({ "taskId": failed }));
    let doomed = mcp.ok(
        "DelegateTask",
        json!({ "prompt": "print never", "dependsOn": [done, failed] }),
    );
    assert_eq!(doomed["status"], "cancelled", "{doomed}");
    let d1 = mcp.ok("TaskStatus", json!({ "taskId": id_of(&doomed) }));
    assert_eq!(
        d1["reason"],
        format!("cancelled because its dependency {failed} failed")
    );
    let doomed2 = mcp.ok(
        "DelegateTask",
        json!({ "prompt": "print never", "dependsOn": [id_of(&doomed)] }),
    );
    let d2 = mcp.ok("TaskStatus", json!({ "taskId": id_of(&doomed2) }));
    assert!(
        d2["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("(the cascade began at {failed})")),
        "{d2}"
    );
    let (e, is_error) = mcp.call(
        "DelegateTask",
        json!({ "prompt": "x", "dependsOn": [done, done] }),
    );
    assert!(is_error && e["error"].as_str().unwrap().contains("given twice"));
    let (e, is_error) = mcp.call(
        "DelegateTask",
        json!({ "prompt": "x", "dependsOn": vec![done.clone(); 101] }),
    );
    assert!(
        is_error && e["error"].as_str().unwrap().contains("at most 100"),
        "{e}"
    );

    // A waits for a gate file; B and D depend on A; C depends on B.
    let gate = beat.workdir.path().join("gate.pid");
    let a = id_of(&mcp.ok(
        "DelegateTask",
        json!({ "prompt": format!("pidfile {}; sleep 60000", gate.display()) }),
    ));
    let b = id_of(&mcp.ok(
        "DelegateTask",
        json!({ "prompt": "print b", "dependsOn": [a] }),
    ));
    let c = id_of(&mcp.ok(
        "DelegateTask",
        json!({ "prompt": "print c", "dependsOn": [b] }),
    ));
    let d = id_of(&mcp.ok(
        "DelegateTask",
        json!({ "prompt": "print d", "dependsOn": [a] }),
    ));
    let s = mcp.ok("TaskStatus", json!({ "taskId": c }));
    assert_eq!(s["status"], "blocked");
    assert_eq!(
        s["dependsOn"],
        json!([{ "taskId": b, "status": "blocked" }])
    );
    common::read_pidfile(&gate);
    // A fails (killed): everything downstream is cancelled, naming A.
    let (pid, _) = common::read_pidfile(&gate);
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    let w = mcp.ok("WaitTask", json!({ "taskId": c }));
    assert_eq!(w["status"], "cancelled");
    assert_eq!(
        w["reason"],
        format!("cancelled because its dependency {b} was cancelled (the cascade began at {a})")
    );
    for id in [&b, &d] {
        let t = mcp.ok("WaitTask", json!({ "taskId": id }));
        assert_eq!(
            t["reason"],
            format!("cancelled because its dependency {a} failed"),
            "{t}"
        );
    }
    assert_eq!(beat.start_counts().get(&b), None, "no dependent ran");

    // Cancelling a task cascades too, from any front end.
    let x = beat.submit("sleep 60000", &[]);
    let y = id_of(&mcp.ok(
        "DelegateTask",
        json!({ "prompt": "print y", "dependsOn": [x] }),
    ));
    beat.ok(&["cancel", &x]);
    let t = mcp.ok("WaitTask", json!({ "taskId": y }));
    let xs = beat.status(&x);
    assert_eq!(xs["status"], "cancelled", "{xs}");
    assert_eq!(
        t["reason"],
        format!("cancelled because its dependency {x} was cancelled")
    );
    beat.assert_fold_matches_state();
}

#[test]
fn continue_from_carries_real_output_through_a_chain() {
    // An agent that records the prompt it was given (stdin) and prints a result.
    let beat = Beat::with_config(json!({
        "defaultAgent": "recorder",
        "agents": { "recorder": { "command": ["/bin/sh", "-c", "cat > \"$BACKBEAT_TASK_ID.prompt\"; echo \"result-of-$BACKBEAT_TASK_ID\""] } }
    }));
    let a = beat.submit("first step", &[]);
    let b = beat.submit("second step", &["--continue-from", &a]);
    let mut mcp = beat.mcp();
    let c = id_of(&mcp.ok(
        "DelegateTask",
        json!({ "prompt": "third step", "continueFrom": b }),
    ));
    assert_eq!(beat.wait(&c)["status"], "completed");
    let prompt_of = |id: &str| {
        std::fs::read_to_string(beat.workdir.path().join(format!("{id}.prompt"))).unwrap()
    };
    let b_prompt = prompt_of(&b);
    assert!(b_prompt.starts_with("DEPENDENCY CONTEXT:"), "{b_prompt}");
    assert!(
        b_prompt.contains(&format!("Output:\nresult-of-{a}")),
        "B carries A's real output: {b_prompt}"
    );
    assert!(b_prompt.ends_with("YOUR TASK:\nsecond step"));
    let c_prompt = prompt_of(&c);
    assert!(
        c_prompt.contains(&format!("Output:\nresult-of-{b}")),
        "C carries B's output: {c_prompt}"
    );
    assert!(
        c_prompt.contains(&format!("result-of-{a}")),
        "and, through B's prompt, A's: {c_prompt}"
    );
    let shown = beat.json(&["status", "--json", &b]);
    assert_eq!(
        shown["dependsOn"],
        json!([{ "taskId": a, "status": "completed" }]),
        "with its state"
    );
}

#[test]
fn pipelines_run_in_order_with_delays_and_per_step_agents() {
    let beat = Beat::new();
    let out = |p: &str| beat.workdir.path().join(p).display().to_string();
    let v = beat.json(&[
        "pipeline",
        "--json",
        "--delay",
        "300ms",
        &format!("write {} 1", out("s1")),
        "--step",
        &format!("write {} 2", out("s2")),
        &format!("write {} 3", out("s3")),
    ]);
    let pid = v["pipelineId"].as_str().unwrap().to_string();
    assert!(pid.starts_with("pipeline-"));
    let ids: Vec<String> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["taskId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 3);
    for id in &ids {
        assert_eq!(beat.wait(id)["status"], "completed");
    }
    let st = beat.json(&["pipeline", "status", &pid, "--json"]);
    assert_eq!(st["status"], "completed");
    let times: Vec<(i64, i64)> = ids
        .iter()
        .map(|id| {
            let t = beat.store().task(id).unwrap().unwrap();
            (t.started_at.unwrap(), t.completed_at.unwrap())
        })
        .collect();
    for w in times.windows(2) {
        assert!(
            w[1].0 - w[0].1 >= 300,
            "each step after the first waits its delay: {times:?}"
        );
    }
    for (n, p) in ["s1", "s2", "s3"].iter().enumerate() {
        assert_eq!(
            std::fs::read_to_string(out(p)).unwrap(),
            (n + 1).to_string()
        );
    }

    // Through MCP: per-step agents, and a failing middle step cancels the rest.
    let mut mcp = beat.mcp();
    let p = mcp.ok(
        "CreatePipeline",
        json!({ "steps": [
            { "prompt": "echo from-shell", "agent": "shell" },
            { "prompt": "exit 5" },
            { "prompt": "print never" }
        ]}),
    );
    let steps: Vec<String> = p["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["taskId"].as_str().unwrap().to_string())
        .collect();
    let last = mcp.ok("WaitTask", json!({ "taskId": steps[2] }));
    assert_eq!(last["status"], "cancelled");
    let st = mcp.ok("PipelineStatus", json!({ "pipelineId": p["pipelineId"] }));
    assert_eq!(st["status"], "failed");
    let states: Vec<&str> = st["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["completed", "failed", "cancelled"]);
    assert_eq!(beat.status(&steps[0])["agent"], "shell");
    assert_eq!(beat.status(&steps[1])["agent"], "fake");
    let (bad, is_error) = mcp.call(
        "CreatePipeline",
        json!({ "steps": [{ "prompt": "only one" }] }),
    );
    assert!(is_error, "{bad}");
}

#[test]
fn cancelling_a_pipeline_stops_its_running_step_and_the_rest() {
    let beat = Beat::with_config(json!({ "killGracePeriodMs": 500 }));
    let gate = beat.workdir.path().join("step1.pid");
    let v = beat.json(&[
        "pipeline",
        "--json",
        &format!("pidfile {}; sleep 60000", gate.display()),
        "print two",
        "print three",
    ]);
    let pid = v["pipelineId"].as_str().unwrap().to_string();
    let (agent, pgid) = common::read_pidfile(&gate);
    beat.ok(&["pipeline", "cancel", &pid, "not", "needed"]);
    let st = beat.json(&["pipeline", "status", &pid, "--json"]);
    assert_eq!(st["status"], "cancelled");
    for s in st["steps"].as_array().unwrap() {
        assert_eq!(s["status"], "cancelled", "{st}");
    }
    assert!(
        !pid_exists(agent) && common::group_members(pgid).is_empty(),
        "no process of the running step is left"
    );
    // One transaction: the pipeline's cancel and each unfinished step's are consecutive
    // events of one append (the running step's as a cancel request, its end later).
    let events = beat.store().events().unwrap();
    let at = events
        .iter()
        .position(|e| e.entity_id == pid && e.event.name() == "cancelled")
        .expect("the pipeline's cancelled event");
    let steps: Vec<String> = st["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["taskId"].as_str().unwrap().to_string())
        .collect();
    let append: Vec<(String, &str)> = events[at..at + 6]
        .iter()
        .map(|e| (e.entity_id.clone(), e.event.name()))
        .collect();
    assert_eq!(
        append,
        [
            (pid.clone(), "cancelled"),
            (steps[0].clone(), "cancel_requested"),
            (steps[1].clone(), "cancelled"),
            (steps[1].clone(), "checkpointed"),
            (steps[2].clone(), "cancelled"),
            (steps[2].clone(), "checkpointed"),
        ]
    );
    assert!(
        events[at..at + 6]
            .windows(2)
            .all(|w| w[1].seq == w[0].seq + 1),
        "one append, nothing between"
    );
    beat.assert_fold_matches_state();
    // Cancelling it again says it is over, and is not reported as a success.
    let again = beat.output(&["pipeline", "cancel", &pid]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("already cancelled"), "{err}");
    let mut mcp = beat.mcp();
    let (e, is_error) = mcp.call("PipelineStatus", json!({ "pipelineId": "pipeline-nope" }));
    assert!(is_error && e["error"].as_str().unwrap().contains("not found"));
}

#[test]
fn a_200_task_dag_survives_sigkill_and_runs_every_task_once_in_order() {
    let beat = Beat::with_config(json!({ "maxWorkers": 4 }));
    let mut mcp = beat.mcp();
    let mut ids: Vec<String> = Vec::new();
    let mut edges: Vec<(usize, usize)> = Vec::new();
    for i in 0..200usize {
        // Up to two earlier dependencies, chosen deterministically.
        let deps: Vec<usize> = if i == 0 {
            vec![]
        } else {
            let mut d = vec![(i * 7) % i, (i * 13 + 5) % i];
            d.sort();
            d.dedup();
            d
        };
        for d in &deps {
            edges.push((*d, i));
        }
        let dep_ids: Vec<&String> = deps.iter().map(|d| &ids[*d]).collect();
        let v = mcp.ok(
            "DelegateTask",
            json!({ "prompt": format!("sleep 20; print {i}"), "dependsOn": dep_ids }),
        );
        ids.push(id_of(&v));
    }
    wait_until("some tasks to complete", Duration::from_secs(60), || {
        beat.store()
            .tasks(&Default::default())
            .unwrap()
            .iter()
            .filter(|t| t.status.as_str() == "completed")
            .count()
            >= 30
    });
    drop(mcp);
    beat.kill_daemon();
    beat.ok(&["list"]);
    let mut mcp = beat.mcp();
    for id in &ids {
        let t = mcp.ok("WaitTask", json!({ "taskId": id, "timeoutMs": 120000 }));
        assert_eq!(t["status"], "completed", "{t}");
    }
    let counts = beat.start_counts();
    for id in &ids {
        assert_eq!(counts.get(id), Some(&1), "{id} ran once");
    }
    let (started, finished) = event_order(&beat);
    for (d, t) in edges {
        assert!(
            started[&ids[t]] > finished[&ids[d]],
            "edge {d} -> {t} respected"
        );
    }
    beat.assert_fold_matches_state();
    let _ = FAKE;
}

#[test]
fn a_pipeline_is_an_entity_that_survives_a_crash_and_ends_by_its_steps() {
    let beat = Beat::new();
    let gate = beat.workdir.path().join("step1.pid");
    let go = beat.workdir.path().join("go");
    let v = beat.json(&[
        "pipeline",
        "--json",
        &format!(
            "pidfile {}; await {}; print one",
            gate.display(),
            go.display()
        ),
        "print two",
    ]);
    let pid = v["pipelineId"].as_str().unwrap().to_string();
    let steps: Vec<String> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["taskId"].as_str().unwrap().to_string())
        .collect();
    let st = beat.json(&["pipeline", "status", &pid, "--json"]);
    assert_eq!(st["status"], "running");
    let (agent, _) = common::read_pidfile(&gate);

    // The daemon dies; the first step completes while none runs.
    let daemon = beat.daemon_pid().expect("daemon running");
    unsafe {
        libc::kill(daemon as i32, libc::SIGKILL);
    }
    wait_until("the daemon to die", Duration::from_secs(10), || {
        !pid_exists(daemon as i32)
    });
    std::fs::write(&go, "").unwrap();
    wait_until(
        "the first step's agent to finish",
        Duration::from_secs(30),
        || !pid_exists(agent),
    );

    // The next daemon recovers the pipeline, which learns of the first step from the
    // journal and of the second by message; its own row says how it ended.
    assert_eq!(beat.wait(&steps[1])["status"], "completed");
    // The pipeline commits its end just after its last step's.
    let mut mcp = beat.mcp();
    wait_until("the pipeline to complete", Duration::from_secs(10), || {
        mcp.ok("PipelineStatus", json!({ "pipelineId": pid }))["status"] != "running"
    });
    let st = beat.json(&["pipeline", "status", &pid, "--json"]);
    assert_eq!(st["status"], "completed", "{st}");
    let record = beat
        .store()
        .pipeline(&pid)
        .unwrap()
        .expect("a pipeline row");
    assert_eq!(record.steps, steps);
    assert!(record.completed_at.is_some());
    beat.assert_fold_matches_state();

    let (e, is_error) = mcp.call("CancelPipeline", json!({ "pipelineId": pid }));
    assert!(
        is_error,
        "cancelling a finished pipeline is not a success: {e}"
    );
    assert!(
        e["error"].as_str().unwrap().contains("already completed"),
        "{e}"
    );
    let (e, is_error) = mcp.call("CancelPipeline", json!({ "pipelineId": "pipeline-nope" }));
    assert!(
        is_error && e["error"].as_str().unwrap().contains("not found"),
        "{e}"
    );
}
