//! Retention (issue 11, points 14 and 15), through the real `beat`: `beat prune` and
//! the `Prune` tool remove finished tasks and pipelines with their events and run
//! folders, never what is live or what live work still needs; the daemon prunes what
//! is older than `taskRetentionDays` when it starts; event sequence numbers are never
//! handed out twice; and the first list after a crash already shows the runs that
//! ended while no daemon ran.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use backbeat_actors::agents::run_dir::RunDir;
use common::{Beat, pid_exists, read_pidfile, wait_until};
use serde_json::{Value, json};

const DAY_MS: i64 = 86_400_000;

fn ids(v: &Value, key: &str) -> BTreeSet<String> {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Creates a pipeline of fake-agent scripts; returns its id and its steps' task ids.
fn pipeline(beat: &Beat, steps: &[&str]) -> (String, Vec<String>) {
    let mut args = vec!["pipeline", "--json"];
    args.extend_from_slice(steps);
    let v = beat.json(&args);
    let steps = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["taskId"].as_str().unwrap().to_string())
        .collect();
    (v["pipelineId"].as_str().unwrap().to_string(), steps)
}

fn wait_for_status(beat: &Beat, id: &str, status: &str) {
    wait_until(
        &format!("{id} to be {status}"),
        Duration::from_secs(30),
        || beat.status(id)["status"] == status,
    );
}

/// Every entity id that still has events in the journal.
fn ids_with_events(beat: &Beat) -> BTreeSet<String> {
    beat.store()
        .events()
        .unwrap()
        .into_iter()
        .map(|e| e.entity_id)
        .collect()
}

#[test]
fn prune_removes_finished_work_with_its_events_and_run_folders_and_never_what_live_work_needs() {
    let beat = Beat::with_config(json!({ "maxWorkers": 2 }));
    let dir = beat.workdir.path();
    let completed = beat.submit("print one", &[]);
    let failed = beat.submit("print two; exit 3", &[]);
    let needed_dep = beat.submit("print dependency", &[]);
    let continued = beat.submit("print continued", &[]);
    for id in [&completed, &failed, &needed_dep, &continued] {
        beat.wait(id);
    }
    let (done_pipeline, done_steps) = pipeline(&beat, &["print p1a", "print p1b"]);
    beat.wait(&done_steps[1]);
    wait_for_status(&beat, &done_steps[1], "completed");
    // Live work: a pipeline whose finished first step its running second step follows,
    // a running task, a task blocked on a finished and a running task, and a queued
    // task (both slots are taken) that continues from a finished one.
    let go = dir.join("go");
    let (live_pipeline, live_steps) =
        pipeline(&beat, &["print p2a", &format!("await {}", go.display())]);
    wait_for_status(&beat, &live_steps[1], "running");
    let running = beat.submit(&format!("await {}", go.display()), &[]);
    wait_for_status(&beat, &running, "running");
    let blocked = beat.submit(
        "print blocked",
        &["--deps", &format!("{needed_dep},{running}")],
    );
    let queued = beat.submit("print queued", &["--continue-from", &continued]);
    assert_eq!(beat.status(&blocked)["status"], "blocked");
    assert_eq!(beat.status(&queued)["status"], "queued");
    for id in [&completed, &failed, &done_steps[0], &needed_dep] {
        assert!(beat.run_dir(id).exists(), "{id} has a run folder to remove");
    }

    let removed = beat.json(&["prune", "--older-than", "0s", "--json"]);
    assert_eq!(
        ids(&removed, "removedTasks"),
        set(&[&completed, &failed, &done_steps[0], &done_steps[1]]),
        "{removed}"
    );
    assert_eq!(ids(&removed, "removedPipelines"), set(&[&done_pipeline]));
    assert!(removed["runFolderBytes"].as_u64().unwrap() > 0, "{removed}");
    for id in [&completed, &failed, &done_steps[0], &done_steps[1]] {
        assert!(!beat.run_dir(id).exists(), "{id}'s run folder is gone");
        let out = beat.output(&["status", id]);
        assert!(!out.status.success(), "{id} is gone from the journal");
    }
    let with_events = ids_with_events(&beat);
    for id in [&completed, &failed, &done_steps[0], &done_pipeline] {
        assert!(!with_events.contains(id.as_str()), "{id}'s events are gone");
    }
    // What live work needs stays, output and all.
    for id in [&needed_dep, &continued, &live_steps[0]] {
        assert!(beat.run_dir(id).exists(), "{id} keeps its run folder");
        assert!(with_events.contains(id.as_str()), "{id} keeps its events");
    }
    assert_eq!(beat.ok(&["logs", &needed_dep]), "dependency\n");
    assert_eq!(
        beat.json(&["pipeline", "status", "--json", &live_pipeline])["status"],
        "running"
    );
    beat.assert_fold_matches_state();

    // Once the live work finished, the same prune (here through the MCP tool) takes
    // the rest: a continuation that ran keeps nothing alive.
    std::fs::write(&go, "").unwrap();
    for id in [&running, &blocked, &live_steps[1]] {
        assert_eq!(beat.wait(id)["status"], "completed", "{id}");
    }
    // The continuation ran (its prompt, which carries the checkpoint, is no script the
    // fake agent knows: it fails, which is finished all the same).
    let continuation = beat.wait(&queued);
    assert!(continuation["startedAt"].is_string(), "{continuation}");
    wait_for_status(&beat, &live_steps[1], "completed");
    let mut mcp = beat.mcp();
    let tools = mcp.request("tools/list", json!({}));
    assert!(
        tools["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "Prune"),
        "Prune is listed: {tools}"
    );
    wait_until(
        "the live pipeline to complete",
        Duration::from_secs(30),
        || beat.json(&["pipeline", "status", "--json", &live_pipeline])["status"] == "completed",
    );
    let removed = mcp.ok("Prune", json!({ "olderThanMs": 0 }));
    mcp.close();
    assert_eq!(
        ids(&removed, "removedTasks"),
        set(&[
            &needed_dep,
            &continued,
            &live_steps[0],
            &live_steps[1],
            &running,
            &blocked,
            &queued
        ]),
        "{removed}"
    );
    assert_eq!(ids(&removed, "removedPipelines"), set(&[&live_pipeline]));
    assert_eq!(beat.json(&["list", "--json"]), json!([]));
    assert!(beat.store().events().unwrap().is_empty());
    beat.assert_fold_matches_state();
    // Text output: a count on stderr, the ids on stdout (none left now).
    let out = beat.output(&["prune", "--older-than", "0s"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("removed 0 tasks, 0 pipelines, 0 loops and 0 schedule executions"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn prune_keeps_what_ended_more_recently_than_older_than() {
    let beat = Beat::new();
    let id = beat.submit("print recent", &[]);
    beat.wait(&id);
    let removed = beat.json(&["prune", "--older-than", "1h", "--json"]);
    assert_eq!(removed["olderThanMs"], 3_600_000);
    assert_eq!(ids(&removed, "removedTasks"), set(&[]), "{removed}");
    assert_eq!(beat.status(&id)["status"], "completed");
    let bad = beat.output(&["prune", "--older-than", "soon"]);
    assert_eq!(
        bad.status.code(),
        Some(2),
        "a bad duration is a usage error"
    );
}

#[test]
fn event_sequence_numbers_are_never_reused_after_the_newest_events_are_pruned() {
    let beat = Beat::new();
    for script in ["print a", "print b"] {
        let id = beat.submit(script, &[]);
        beat.wait(&id);
    }
    let highest = beat.store().events().unwrap().last().unwrap().seq;
    let removed = beat.json(&["prune", "--older-than", "0s", "--json"]);
    assert_eq!(ids(&removed, "removedTasks").len(), 2);
    assert!(beat.store().events().unwrap().is_empty());
    // Also across a restart (a fresh writer connection).
    beat.ok(&["daemon", "stop"]);
    let next = beat.submit("print c", &[]);
    let events = beat.store().events().unwrap();
    let first = events.iter().find(|e| e.entity_id == next).unwrap();
    assert!(
        first.seq > highest,
        "the new task's first event got seq {}, not above the pruned {highest}",
        first.seq
    );
}

/// Moves a finished task's times `days` into the past, in its record and in its
/// events alike (so the journal still folds to the table), while no daemon runs.
fn age(beat: &Beat, id: &str, days: i64) {
    let conn = rusqlite::Connection::open(beat.path().join("beat.db")).unwrap();
    let shift = days * DAY_MS;
    let record: String = conn
        .query_row("SELECT record FROM tasks WHERE id = ?1", [id], |r| r.get(0))
        .unwrap();
    let mut record: Value = serde_json::from_str(&record).unwrap();
    shift_times(&mut record, shift);
    conn.execute(
        "UPDATE tasks SET created_at = created_at - ?2, record = ?3 WHERE id = ?1",
        rusqlite::params![id, shift, record.to_string()],
    )
    .unwrap();
    let events: Vec<(i64, String)> = conn
        .prepare("SELECT seq, payload FROM events WHERE entity_id = ?1")
        .unwrap()
        .query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for (seq, payload) in events {
        let mut v: Value = serde_json::from_str(&payload).unwrap();
        shift_times(&mut v, shift);
        conn.execute(
            "UPDATE events SET payload = ?2 WHERE seq = ?1",
            rusqlite::params![seq, v.to_string()],
        )
        .unwrap();
    }
}

/// Every `at`, `createdAt`, `startedAt` and `completedAt` in `v`, `shift` earlier.
fn shift_times(v: &mut Value, shift: i64) {
    match v {
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                if matches!(
                    key.as_str(),
                    "at" | "createdAt" | "startedAt" | "completedAt"
                ) && let Some(ms) = value.as_i64()
                {
                    *value = Value::from(ms - shift);
                } else {
                    shift_times(value, shift);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| shift_times(i, shift)),
        _ => {}
    }
}

#[test]
fn the_daemon_prunes_at_start_what_ended_longer_ago_than_task_retention_days() {
    // TASK_RETENTION_DAYS (the original's variable) wins over config.json.
    let beat = Beat::with_config_and_env(
        json!({ "taskRetentionDays": 2 }),
        &[("TASK_RETENTION_DAYS", "10")],
    );
    let ids: Vec<String> = ["print old", "print older", "print new"]
        .iter()
        .map(|s| {
            let id = beat.submit(s, &[]);
            beat.wait(&id);
            id
        })
        .collect();
    beat.ok(&["daemon", "stop"]);
    age(&beat, &ids[0], 8);
    age(&beat, &ids[1], 12);
    let log = beat.path().join("daemon.log");
    let logged_before = std::fs::read_to_string(&log).unwrap_or_default().len();

    beat.ok(&["daemon", "start"]);
    wait_until(
        "the start-up prune to report",
        Duration::from_secs(30),
        || {
            std::fs::read_to_string(&log).unwrap_or_default()[logged_before..]
                .contains("removed finished work past its retention")
        },
    );
    let left: BTreeSet<String> = beat
        .json(&["list", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        left,
        set(&[&ids[0], &ids[2]]),
        "only the 12-day-old task went"
    );
    assert!(!beat.run_dir(&ids[1]).exists());
    assert!(beat.run_dir(&ids[0]).exists());
    beat.assert_fold_matches_state();
}

#[test]
fn the_first_list_after_a_crash_shows_runs_that_ended_meanwhile_as_finished() {
    let beat = Beat::new();
    let dir = beat.workdir.path();
    let (go, pidfile) = (dir.join("go"), dir.join("agent.pid"));
    let id = beat.submit(
        &format!(
            "pidfile {}; await {}; print done",
            pidfile.display(),
            go.display()
        ),
        &[],
    );
    let (agent, _) = read_pidfile(&pidfile);
    wait_for_status(&beat, &id, "running");
    beat.kill_daemon();
    std::fs::write(&go, "").unwrap();
    // The agent ends, then its shim records the result and exits.
    let run = RunDir {
        path: beat.run_dir(&id),
    };
    wait_until("the run to end", Duration::from_secs(30), || {
        !pid_exists(agent) && run.has_exit()
    });

    // The very first command after the crash starts the daemon and lists.
    let list = beat.json(&["list", "--json"]);
    let task = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id.as_str())
        .unwrap_or_else(|| panic!("{id} not listed: {list}"));
    assert_eq!(task["status"], "completed", "{task}");
    assert_eq!(beat.ok(&["logs", &id]), "done\n");
}
