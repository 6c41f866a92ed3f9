//! Schedules through the real binary: the daemon fires them on its own (no client
//! connected), on a clock the test controls (`BACKBEAT_TEST_CLOCK_FILE`, test-only: the
//! daemon reads its wall-clock time from that file and re-reads it at least every
//! second), with real SQLite and the fake agent. Waits are on the journal's rows, never
//! on a guessed time.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use backbeat_actors::agents::run_dir::RunDir;
use backbeat_actors::model::schedule::{
    ExecutionRecord, ExecutionStatus, ScheduleRecord, TargetKind,
};
use common::{Beat, pid_exists, read_pidfile, wait_until};
use serde_json::{Value, json};

/// A `Beat` whose daemon reads the time from a file the test writes.
struct Clocked {
    beat: Beat,
    clock: PathBuf,
    _dir: tempfile::TempDir,
}

fn ms(iso: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(iso)
        .unwrap()
        .timestamp_millis()
}

impl Clocked {
    fn at(iso: &str) -> Clocked {
        Clocked::with_config(iso, json!({}))
    }

    fn with_config(iso: &str, config: Value) -> Clocked {
        let dir = tempfile::tempdir().unwrap();
        let clock = dir.path().join("clock");
        std::fs::write(&clock, ms(iso).to_string()).unwrap();
        let beat = Beat::with_config_and_env(
            config,
            &[("BACKBEAT_TEST_CLOCK_FILE", clock.to_str().unwrap())],
        );
        Clocked {
            beat,
            clock,
            _dir: dir,
        }
    }

    fn set(&self, iso: &str) {
        let tmp = self.clock.with_extension("tmp");
        std::fs::write(&tmp, ms(iso).to_string()).unwrap();
        std::fs::rename(&tmp, &self.clock).unwrap();
    }

    fn create(&self, args: &[&str]) -> Value {
        let mut all = vec!["schedule", "create", "--json"];
        all.extend_from_slice(args);
        self.beat.json(&all)
    }

    fn schedule(&self, id: &str) -> ScheduleRecord {
        self.beat
            .store()
            .schedule(id)
            .unwrap()
            .expect("the schedule")
    }

    fn runs(&self, id: &str) -> Vec<ExecutionRecord> {
        let mut runs = self.beat.store().schedule_runs(id, 1000).unwrap();
        runs.reverse(); // oldest first
        runs
    }

    /// Waits until the schedule's executions satisfy `cond` (polling the journal: the
    /// daemon fires with no client to tell).
    fn wait_runs(&self, id: &str, what: &str, cond: impl Fn(&[ExecutionRecord]) -> bool) {
        wait_until(what, Duration::from_secs(20), || cond(&self.runs(id)));
    }

    fn wait_schedule(&self, id: &str, what: &str, cond: impl Fn(&ScheduleRecord) -> bool) {
        wait_until(what, Duration::from_secs(20), || cond(&self.schedule(id)));
    }
}

fn id_of(v: &Value) -> String {
    v["scheduleId"].as_str().expect("scheduleId").to_string()
}

fn statuses(runs: &[ExecutionRecord]) -> Vec<ExecutionStatus> {
    runs.iter().map(|r| r.status).collect()
}

#[test]
fn a_cron_schedule_fires_on_time_with_no_client_connected() {
    let c = Clocked::at("2030-01-01T08:59:00Z");
    let v = c.create(&["--cron", "0 9 * * *", "--", "print scheduled-hello"]);
    let id = id_of(&v);
    assert_eq!(v["nextRunAt"], "2030-01-01T09:00:00.000Z", "{v}");
    assert_eq!(v["status"], "active");
    assert!(c.runs(&id).is_empty(), "fired before its time");
    // Nobody is connected now; the daemon alone must notice the time.
    let moved = Instant::now();
    c.set("2030-01-01T09:00:00Z");
    c.wait_runs(&id, "the 09:00 run to be triggered", |r| !r.is_empty());
    // The daemon re-reads the wall clock at least every second; the rest is the fire's
    // commit (an fsync) on a machine the tests share.
    assert!(
        moved.elapsed() < Duration::from_millis(3000),
        "fired {:?} after its time came",
        moved.elapsed()
    );
    c.wait_runs(&id, "the run to complete", |r| {
        r[0].status == ExecutionStatus::Completed
    });
    let runs = c.runs(&id);
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].scheduled_for, ms("2030-01-01T09:00:00Z"));
    let task = c.beat.status(runs[0].task_id.as_deref().unwrap());
    assert_eq!(task["status"], "completed");
    let s = c.schedule(&id);
    assert_eq!(s.run_count, 1);
    assert_eq!(s.next_run_at, Some(ms("2030-01-02T09:00:00Z")));
    let status = c
        .beat
        .json(&["schedule", "status", &id, "--history", "--json"]);
    assert_eq!(status["history"][0]["status"], "completed", "{status}");
    assert_eq!(
        status["history"][0]["taskId"],
        runs[0].task_id.clone().unwrap().as_str()
    );
    c.beat.assert_fold_matches_state();
}

#[test]
fn a_one_time_schedule_fires_once_and_completes() {
    let c = Clocked::at("2030-01-01T08:00:00Z");
    let id = id_of(&c.create(&["--at", "2030-01-01T09:30:00Z", "--", "print once"]));
    c.set("2030-01-01T09:30:01Z");
    c.wait_schedule(&id, "the schedule to complete", |s| {
        s.status.as_str() == "completed"
    });
    c.wait_runs(&id, "its run to complete", |r| {
        r.len() == 1 && r[0].status == ExecutionStatus::Completed
    });
    c.set("2030-01-02T09:30:01Z");
    let list = c.beat.json(&["schedule", "list", "--json"]);
    assert_eq!(list[0]["status"], "completed");
    assert_eq!(list[0]["runCount"], 1);
    assert_eq!(c.runs(&id).len(), 1);
}

#[test]
fn invalid_cron_zone_and_time_are_refused_saying_what_was_wrong() {
    let c = Clocked::at("2030-01-01T08:00:00Z");
    for (args, expected) in [
        (vec!["--cron", "61 * * * *"], "61 * * * *"),
        (
            vec!["--cron", "0 9 * * *", "--timezone", "Mars/Olympus"],
            "Mars/Olympus",
        ),
        (vec!["--at", "tomorrow at nine"], "tomorrow at nine"),
        (vec!["--at", "2029-01-01T09:00:00Z"], "in the past"),
        (
            vec!["--cron", "0 9 * * *", "--max-runs", "0"],
            "maxRuns must be 1 or more",
        ),
    ] {
        let mut all = vec!["schedule", "create"];
        all.extend_from_slice(&args);
        all.extend_from_slice(&["--", "print x"]);
        let out = c.beat.output(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    let list = c.beat.json(&["schedule", "list", "--json"]);
    assert_eq!(list, json!([]));
}

#[test]
fn pause_resume_and_cancel() {
    let c = Clocked::at("2030-01-01T08:59:00Z");
    let id = id_of(&c.create(&["--cron", "0 9 * * *", "--", "print x"]));
    c.beat.ok(&["schedule", "pause", &id]);
    let again = c.beat.output(&["schedule", "pause", &id]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not active"));
    // While paused its 09:00 passes; resuming computes the next time from now.
    c.set("2030-01-01T09:05:00Z");
    let v = c.beat.json(&["schedule", "resume", &id, "--json"]);
    assert_eq!(v["nextRunAt"], "2030-01-02T09:00:00.000Z", "{v}");
    assert!(c.runs(&id).is_empty(), "a paused schedule fired");
    c.beat
        .ok(&["schedule", "cancel", &id, "no", "longer", "needed"]);
    let s = c.schedule(&id);
    assert_eq!(s.status.as_str(), "cancelled");
    assert!(s.reason.unwrap().contains("no longer needed"));
    let again = c.beat.output(&["schedule", "cancel", &id]);
    assert!(
        !again.status.success(),
        "cancelling a cancelled schedule succeeded"
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("already cancelled"));
    let unknown = c.beat.output(&["schedule", "status", "schedule-nope"]);
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("not found"));
}

#[test]
fn an_occurrence_while_the_previous_run_runs_is_skipped_and_recorded() {
    let c = Clocked::at("2030-01-01T08:59:30Z");
    let go = c.beat.workdir.path().join("go");
    let script = format!("await {}; print done", go.display());
    let id = id_of(&c.create(&["--cron", "* * * * *", "--", &script]));
    c.set("2030-01-01T09:00:00Z");
    c.wait_runs(&id, "the first run", |r| r.len() == 1);
    c.set("2030-01-01T09:01:00Z");
    c.wait_runs(&id, "the second occurrence to be skipped", |r| r.len() == 2);
    let runs = c.runs(&id);
    assert_eq!(runs[1].status, ExecutionStatus::Skipped);
    assert!(runs[1].reason.as_deref().unwrap().contains("still running"));
    assert_eq!(
        c.schedule(&id).next_run_at,
        Some(ms("2030-01-01T09:02:00Z"))
    );
    std::fs::write(&go, "").unwrap();
    c.wait_runs(&id, "the first run to complete", |r| {
        r[0].status == ExecutionStatus::Completed
    });
}

#[test]
fn missed_runs_follow_their_policy_when_the_daemon_starts() {
    let c = Clocked::at("2030-01-01T08:59:00Z");
    let skip = id_of(&c.create(&["--cron", "0 9 * * *", "--", "print s"]));
    let catchup = id_of(&c.create(&[
        "--cron",
        "0 9 * * *",
        "--missed-run-policy",
        "catchup",
        "--",
        "print c",
    ]));
    let fail = id_of(&c.create(&[
        "--cron",
        "0 9 * * *",
        "--missed-run-policy",
        "fail",
        "--",
        "print f",
    ]));
    c.beat.ok(&["daemon", "stop"]);
    // An hour later (beyond the 5-minute grace), a daemon starts again.
    c.set("2030-01-01T10:00:00Z");
    c.beat.ok(&["schedule", "list"]);
    c.wait_runs(&skip, "skip's missed row", |r| r.len() == 1);
    c.wait_runs(&catchup, "catchup's run to complete", |r| {
        r.len() == 1 && r[0].status == ExecutionStatus::Completed
    });
    c.wait_schedule(&fail, "fail to cancel the schedule", |s| {
        s.status.as_str() == "cancelled"
    });
    assert_eq!(statuses(&c.runs(&skip)), [ExecutionStatus::Missed]);
    let s = c.schedule(&skip);
    assert_eq!(s.status.as_str(), "active");
    assert_eq!(s.next_run_at, Some(ms("2030-01-02T09:00:00Z")));
    let cu = c.schedule(&catchup);
    assert_eq!(cu.next_run_at, Some(ms("2030-01-02T09:00:00Z")));
    assert_eq!(statuses(&c.runs(&fail)), [ExecutionStatus::Missed]);
    assert!(
        c.schedule(&fail)
            .reason
            .unwrap()
            .contains("missedRunPolicy is fail")
    );
}

#[test]
fn a_run_within_the_grace_period_still_fires_after_a_restart() {
    let c = Clocked::with_config(
        "2030-01-01T08:59:00Z",
        json!({ "scheduleGracePeriodMs": 600000 }),
    );
    let id = id_of(&c.create(&["--cron", "0 9 * * *", "--", "print late"]));
    c.beat.ok(&["daemon", "stop"]);
    c.set("2030-01-01T09:08:00Z"); // 8 min late: within a 10 min grace
    c.beat.ok(&["schedule", "list"]);
    c.wait_runs(&id, "the late run to complete", |r| {
        r.len() == 1 && r[0].status == ExecutionStatus::Completed
    });
}

#[test]
fn history_rows_reach_failed_and_max_runs_completes_the_schedule() {
    let c = Clocked::at("2030-01-01T08:59:30Z");
    let id = id_of(&c.create(&["--cron", "* * * * *", "--max-runs", "2", "--", "exit 3"]));
    c.set("2030-01-01T09:00:00Z");
    c.wait_runs(&id, "run 1 to fail", |r| {
        r.len() == 1 && r[0].status == ExecutionStatus::Failed
    });
    c.set("2030-01-01T09:01:00Z");
    c.wait_schedule(&id, "maxRuns to complete it", |s| {
        s.status.as_str() == "completed"
    });
    c.wait_runs(&id, "run 2 to fail", |r| {
        r.len() == 2 && r[1].status == ExecutionStatus::Failed
    });
    // Each failed row says why, as its task does.
    for run in c.runs(&id) {
        let task = c.beat.status(run.task_id.as_deref().unwrap());
        assert_eq!(run.reason.as_deref(), task["reason"].as_str(), "{run:?}");
        assert!(run.reason.as_deref().unwrap_or("").contains('3'), "{run:?}");
    }
    let s = c.schedule(&id);
    assert_eq!(s.run_count, 2);
    assert!(s.reason.unwrap().contains("maxRuns"));
    assert_eq!(s.next_run_at, None);
}

#[test]
fn expires_at_is_checked_before_firing() {
    let c = Clocked::at("2030-01-01T08:59:30Z");
    let id = id_of(&c.create(&[
        "--cron",
        "* * * * *",
        "--expires-at",
        "2030-01-01T09:00:30Z",
        "--",
        "print e",
    ]));
    c.set("2030-01-01T09:00:00Z");
    c.wait_runs(&id, "the run before expiry to complete", |r| {
        r.len() == 1 && r[0].status == ExecutionStatus::Completed
    });
    c.set("2030-01-01T09:01:00Z");
    c.wait_schedule(&id, "the schedule to expire", |s| {
        s.status.as_str() == "expired"
    });
    assert_eq!(c.runs(&id).len(), 1, "a run fired after expiresAt");
}

#[test]
fn a_schedule_after_a_failed_one_is_refused_naming_it() {
    let c = Clocked::at("2030-01-01T08:59:00Z");
    let first = id_of(&c.create(&["--at", "2030-01-01T09:00:00Z", "--", "exit 2"]));
    let second = id_of(&c.create(&[
        "--at",
        "2030-01-01T09:01:00Z",
        "--after",
        &first,
        "--",
        "print never",
    ]));
    c.set("2030-01-01T09:00:00Z");
    c.wait_runs(&first, "the first run to fail", |r| {
        r.len() == 1 && r[0].status == ExecutionStatus::Failed
    });
    c.set("2030-01-01T09:01:00Z");
    c.wait_runs(&second, "the follower's occurrence", |r| r.len() == 1);
    let run = &c.runs(&second)[0];
    assert_eq!(run.status, ExecutionStatus::Cancelled);
    assert!(run.reason.as_deref().unwrap().contains(&first), "{run:?}");
    assert!(run.task_id.is_none(), "a refused run created a task");
}

/// The run a follower waits for ends while the daemon is down, so at the restart the
/// follower may read that run's row before it says so. Whichever it sees, the occurrence
/// never runs as if nothing were followed: it is refused (or its task fails with its
/// dependency), naming what failed.
#[test]
fn a_follower_whose_followed_run_failed_while_the_daemon_was_down_never_runs() {
    let c = Clocked::at("2030-01-01T08:59:00Z");
    let dir = c.beat.workdir.path();
    let (go, pidfile, ran) = (dir.join("go"), dir.join("agent.pid"), dir.join("ran"));
    let script = format!(
        "pidfile {}; await {}; exit 2",
        pidfile.display(),
        go.display()
    );
    let first = id_of(&c.create(&["--at", "2030-01-01T09:00:00Z", "--", &script]));
    let second = id_of(&c.create(&[
        "--at",
        "2030-01-01T09:01:00Z",
        "--after",
        &first,
        "--",
        &format!("write {} yes", ran.display()),
    ]));
    c.set("2030-01-01T09:00:00Z");
    c.wait_runs(&first, "the first run", |r| r.len() == 1);
    let first_task = c.runs(&first)[0].task_id.clone().unwrap();
    let (agent, _) = read_pidfile(&pidfile);
    c.beat.kill_daemon();
    // While no daemon runs: the followed run fails, and the follower becomes due.
    std::fs::write(&go, "").unwrap();
    let run = RunDir {
        path: c.beat.run_dir(&first_task),
    };
    wait_until("the followed run to end", Duration::from_secs(30), || {
        !pid_exists(agent) && run.has_exit()
    });
    c.set("2030-01-01T09:01:00Z");
    c.beat.ok(&["schedule", "list"]); // a new daemon starts and recovers
    c.wait_runs(&second, "the follower's occurrence to end", |r| {
        r.len() == 1 && r[0].status != ExecutionStatus::Triggered
    });
    let run = &c.runs(&second)[0];
    assert_ne!(run.status, ExecutionStatus::Completed, "{run:?}");
    let reason = run.reason.clone().unwrap_or_default();
    assert!(
        reason.contains(&first) || reason.contains(&first_task),
        "the reason names neither the followed schedule nor its task: {run:?}"
    );
    assert!(
        !ran.exists(),
        "the follower ran although what it follows failed"
    );
    c.beat.assert_fold_matches_state();
}

/// `afterSchedule` must name a schedule that exists and whose runs end in a task: a
/// typo would otherwise make a follower that never waits for anything.
#[test]
fn after_schedule_naming_an_unknown_or_a_loop_schedule_is_refused() {
    let c = Clocked::at("2030-01-01T08:59:00Z");
    let out = c.beat.output(&[
        "schedule",
        "create",
        "--cron",
        "0 9 * * *",
        "--after",
        "schedule-nope",
        "--",
        "print x",
    ]);
    assert!(
        !out.status.success(),
        "an unknown afterSchedule was accepted"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("schedule-nope") && err.contains("no such schedule"),
        "{err}"
    );
    let looping = id_of(&c.create(&[
        "--cron",
        "0 9 * * *",
        "--loop",
        "--until",
        "true",
        "--",
        "print x",
    ]));
    let out = c.beat.output(&[
        "schedule",
        "create",
        "--cron",
        "0 9 * * *",
        "--after",
        &looping,
        "--",
        "print x",
    ]);
    assert!(
        !out.status.success(),
        "a follower of a loop schedule was accepted"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&looping) && err.contains("loop"), "{err}");
    assert_eq!(c.beat.store().all::<ScheduleRecord>().unwrap().len(), 1);
}

#[test]
fn a_follower_waits_for_the_running_run_it_follows() {
    let c = Clocked::at("2030-01-01T08:59:00Z");
    let go = c.beat.workdir.path().join("go");
    let script = format!("await {}", go.display());
    let first = id_of(&c.create(&["--at", "2030-01-01T09:00:00Z", "--", &script]));
    let second = id_of(&c.create(&[
        "--at",
        "2030-01-01T09:01:00Z",
        "--after",
        &first,
        "--",
        "print after",
    ]));
    c.set("2030-01-01T09:00:00Z");
    c.wait_runs(&first, "the first run", |r| r.len() == 1);
    c.set("2030-01-01T09:01:00Z");
    c.wait_runs(&second, "the follower's run", |r| r.len() == 1);
    let follower_task = c.runs(&second)[0].task_id.clone().unwrap();
    let first_task = c.runs(&first)[0].task_id.clone().unwrap();
    let t = c.beat.status(&follower_task);
    assert_eq!(t["status"], "blocked", "{t}");
    assert_eq!(t["dependsOn"][0]["taskId"], first_task.as_str(), "{t}");
    std::fs::write(&go, "").unwrap();
    c.wait_runs(&second, "the follower to complete", |r| {
        r[0].status == ExecutionStatus::Completed
    });
}

#[test]
fn a_scheduled_pipeline_fires_its_steps_and_its_row_follows_the_pipeline() {
    let c = Clocked::at("2030-01-01T08:59:00Z");
    let v = c.create(&[
        "--cron",
        "0 9 * * *",
        "--pipeline",
        "--step",
        "print one",
        "--step",
        "print two",
    ]);
    let id = id_of(&v);
    c.set("2030-01-01T09:00:00Z");
    c.wait_runs(&id, "the pipeline's run to complete", |r| {
        r.len() == 1 && r[0].status == ExecutionStatus::Completed
    });
    let pipeline = c.runs(&id)[0].pipeline_id.clone().expect("a pipeline id");
    let p = c.beat.json(&["pipeline", "status", &pipeline, "--json"]);
    assert_eq!(p["status"], "completed");
    assert_eq!(p["steps"].as_array().unwrap().len(), 2);
}

#[test]
fn run_now_fires_once_without_changing_the_timing_and_next_lists_fire_times() {
    let c = Clocked::at("2030-01-01T08:59:00Z");
    let id = id_of(&c.create(&[
        "--cron",
        "30 2 * * *",
        "--timezone",
        "America/New_York",
        "--",
        "print now",
    ]));
    let before = c.schedule(&id).next_run_at;
    let v = c.beat.json(&["schedule", "run", &id, "--json"]);
    assert!(v["taskId"].as_str().unwrap().starts_with("task-"), "{v}");
    c.wait_runs(&id, "the manual run to complete", |r| {
        r.len() == 1 && r[0].status == ExecutionStatus::Completed
    });
    assert_eq!(c.schedule(&id).next_run_at, before);
    let next = c.beat.json(&["schedule", "next", &id, "-n", "3", "--json"]);
    let times = next["nextRuns"].as_array().unwrap();
    assert_eq!(times.len(), 3, "{next}");
    assert!(
        times[0].as_str().unwrap().contains("T02:30:00-05:00"),
        "{next}"
    );
}

/// SIGKILL around fires: whatever moment the daemon dies, each occurrence ends with
/// exactly one execution row and one task, and the run count matches.
#[test]
fn a_daemon_killed_around_a_fire_never_fires_twice_nor_loses_one() {
    let c = Clocked::at("2030-01-01T08:59:30Z");
    let id = id_of(&c.create(&[
        "--cron",
        "* * * * *",
        "--overlap",
        "allowAll",
        "--",
        "print tick",
    ]));
    for minute in 0..6u64 {
        let at = format!("2030-01-01T09:{minute:02}:00Z");
        c.set(&at);
        // Die at a different moment of each fire: at once, or a few ms into it.
        std::thread::sleep(Duration::from_millis(minute * 150));
        c.beat.kill_daemon();
        c.beat.ok(&["schedule", "list"]); // a new daemon starts and recovers
        let due = ms(&at);
        c.wait_runs(&id, "the occurrence to be fired once", |r| {
            r.iter().any(|e| e.scheduled_for == due)
        });
    }
    let runs = c.runs(&id);
    let mut times: Vec<i64> = runs.iter().map(|r| r.scheduled_for).collect();
    times.dedup();
    assert_eq!(
        times.len(),
        runs.len(),
        "an occurrence fired twice: {runs:?}"
    );
    assert_eq!(runs.len(), 6, "{runs:?}");
    assert_eq!(c.schedule(&id).run_count, 6);
    let tasks: std::collections::HashSet<_> =
        runs.iter().filter_map(|r| r.task_id.clone()).collect();
    assert_eq!(tasks.len(), 6);
    let all_tasks = c.beat.store().tasks(&Default::default()).unwrap();
    assert_eq!(
        all_tasks.len(),
        6,
        "a task exists without its execution row"
    );
    c.beat.assert_fold_matches_state();
}

#[test]
fn daemon_install_writes_the_systemd_user_unit() {
    let beat = Beat::new();
    let out = beat.output(&["daemon", "install", "--systemd", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let path = PathBuf::from(v["unitPath"].as_str().unwrap());
    assert!(path.starts_with(beat.user_home.path().join(".config/systemd/user")));
    let unit = std::fs::read_to_string(&path).unwrap();
    assert!(
        unit.contains(&format!(
            "ExecStart=\"{}\" daemon start --foreground",
            common::BEAT
        )),
        "{unit}"
    );
    assert!(
        unit.contains(&format!(
            "Environment=\"BACKBEAT_HOME={}\"",
            beat.path().display()
        )),
        "{unit}"
    );
    assert!(unit.contains("WantedBy=default.target"));
    assert!(
        v["instructions"]
            .as_str()
            .unwrap()
            .contains("loginctl enable-linger")
    );
    // Without systemd (this machine), nothing is written and it says how to start it.
    let other = Beat::new();
    let v = other.json(&["daemon", "install", "--json"]);
    if v["systemd"] == json!(false) {
        assert!(v["unitPath"].is_null());
        assert!(v["instructions"].as_str().unwrap().contains("daemon start"));
    }
}

#[test]
fn buffer_one_runs_once_more_when_the_running_run_ends() {
    let c = Clocked::at("2030-01-01T08:59:30Z");
    let go = c.beat.workdir.path().join("go");
    let script = format!("await {}", go.display());
    let id = id_of(&c.create(&[
        "--cron",
        "* * * * *",
        "--overlap",
        "bufferOne",
        "--",
        &script,
    ]));
    c.set("2030-01-01T09:00:00Z");
    c.wait_runs(&id, "the first run", |r| r.len() == 1);
    c.set("2030-01-01T09:01:00Z");
    c.wait_schedule(&id, "the 09:01 occurrence to be held", |s| {
        s.buffered_run == Some(ms("2030-01-01T09:01:00Z"))
    });
    c.set("2030-01-01T09:02:00Z");
    c.wait_runs(
        &id,
        "a second occurrence while one is held to be skipped",
        |r| r.len() == 2 && r[1].status == ExecutionStatus::Skipped,
    );
    std::fs::write(&go, "").unwrap();
    // Rows come ordered by the occurrence they are for: 09:00, 09:01 (held), 09:02.
    c.wait_runs(&id, "the held run to fire and complete", |r| {
        r.len() == 3 && r[1].status == ExecutionStatus::Completed
    });
    let runs = c.runs(&id);
    assert_eq!(runs[0].status, ExecutionStatus::Completed);
    assert_eq!(runs[1].scheduled_for, ms("2030-01-01T09:01:00Z"));
    assert_eq!(runs[2].status, ExecutionStatus::Skipped);
}

#[test]
fn cancel_other_cancels_the_running_run_and_starts_the_new_one() {
    let c = Clocked::at("2030-01-01T08:59:30Z");
    let never = c.beat.workdir.path().join("never");
    let script = format!("await {}", never.display());
    let id = id_of(&c.create(&[
        "--cron",
        "* * * * *",
        "--overlap",
        "cancelOther",
        "--",
        &script,
    ]));
    c.set("2030-01-01T09:00:00Z");
    c.wait_runs(&id, "the first run", |r| r.len() == 1);
    c.set("2030-01-01T09:01:00Z");
    c.wait_runs(&id, "the first run to be cancelled for the second", |r| {
        r.len() == 2 && r[0].status == ExecutionStatus::Cancelled
    });
    assert_eq!(c.runs(&id)[1].status, ExecutionStatus::Triggered);
    let v = c
        .beat
        .json(&["schedule", "cancel", &id, "--cancel-tasks", "--json"]);
    assert_eq!(v["cancelTasksRequested"], true);
    c.wait_runs(&id, "cancelTasks to cancel the second run", |r| {
        r[1].status == ExecutionStatus::Cancelled
    });
    c.wait_schedule(&id, "the schedule to let go of its runs", |s| {
        s.running.is_empty()
    });
}

#[test]
fn prune_removes_ended_executions_with_their_tasks_but_keeps_each_schedule_s_latest_run() {
    // The test clock stands in the past, so every execution ended before now.
    let c = Clocked::at("2020-01-01T00:00:30Z");
    let id = id_of(&c.create(&["--cron", "* * * * *", "--", "print minutely"]));
    c.set("2020-01-01T00:01:00Z");
    c.wait_runs(&id, "the first run to complete", |r| {
        r.len() == 1 && r[0].status == ExecutionStatus::Completed
    });
    c.set("2020-01-01T00:02:00Z");
    c.wait_runs(&id, "the second run to complete", |r| {
        r.len() == 2 && r[1].status == ExecutionStatus::Completed
    });
    let runs = c.runs(&id);
    let first_task = runs[0].task_id.clone().expect("the first run's task");
    let v = c.beat.json(&["prune", "--older-than", "0s", "--json"]);
    let removed: Vec<&str> = v["removedScheduleRuns"]
        .as_array()
        .expect("removedScheduleRuns")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        removed,
        [runs[0].id.as_str()],
        "only the older run goes: {v}"
    );
    assert!(
        v["removedTasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == &first_task),
        "its task goes with it: {v}"
    );
    let left = c.runs(&id);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id, runs[1].id, "the latest run stays");
    assert_eq!(
        c.schedule(&id).status.as_str(),
        "active",
        "the schedule stays"
    );
    c.beat.assert_fold_matches_state();
}

#[test]
fn a_cron_schedule_loop_fires_a_loop_and_its_row_follows_the_loop_to_its_end() {
    let c = Clocked::at("2030-01-01T08:59:00Z");
    let v = c.create(&[
        "--cron",
        "0 9 * * *",
        "--loop",
        "--until",
        "true",
        "--",
        "print looping",
    ]);
    let id = id_of(&v);
    assert_eq!(v["nextRunAt"], "2030-01-01T09:00:00.000Z", "{v}");
    assert_eq!(c.schedule(&id).target, TargetKind::Loop);
    c.set("2030-01-01T09:00:00Z");
    c.wait_runs(&id, "the loop run to complete", |r| {
        r.len() == 1 && r[0].status == ExecutionStatus::Completed
    });
    let run = &c.runs(&id)[0];
    let loop_id = run.loop_id.clone().expect("the run names its loop");
    assert!(run.task_id.is_none() && run.pipeline_id.is_none());
    let l = c
        .beat
        .store()
        .eval_loop(&loop_id)
        .unwrap()
        .expect("the loop");
    assert_eq!(l.status.as_str(), "completed");
    assert_eq!(l.schedule_id.as_deref(), Some(id.as_str()));
    let s = c
        .beat
        .json(&["schedule", "status", &id, "--history", "--json"]);
    assert_eq!(s["history"][0]["loopId"], loop_id.as_str(), "{s}");
}

#[test]
fn a_schedule_loop_with_invalid_loop_settings_is_refused_at_creation() {
    let c = Clocked::at("2030-01-01T08:59:00Z");
    // An optimize loop needs its direction; a shell eval needs its command.
    let out = c.beat.output(&[
        "schedule",
        "create",
        "--cron",
        "0 9 * * *",
        "--loop",
        "--until",
        "true",
        "--git-branch",
        "bad..name",
        "--",
        "print x",
    ]);
    assert!(!out.status.success(), "an invalid branch was accepted");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("branch"), "{err}");
    let out = c.beat.output(&[
        "schedule",
        "create",
        "--cron",
        "0 9 * * *",
        "--loop",
        "--until",
        "true",
        "--agent",
        "no-such-agent",
        "--",
        "print x",
    ]);
    assert!(!out.status.success(), "an unknown agent was accepted");
    assert!(
        c.beat.store().schedules(None, 10, 0).unwrap().is_empty(),
        "a refused schedule was stored"
    );
}

#[test]
fn cancelling_a_schedule_cancels_its_running_loop() {
    let c = Clocked::at("2030-01-01T08:59:00Z");
    let never = c.beat.workdir.path().join("never");
    let prompt = format!("await {}", never.display());
    let id = id_of(&c.create(&[
        "--cron",
        "0 9 * * *",
        "--loop",
        "--until",
        "true",
        "--",
        &prompt,
    ]));
    c.set("2030-01-01T09:00:00Z");
    c.wait_runs(&id, "the loop run to be triggered", |r| r.len() == 1);
    let loop_id = c.runs(&id)[0].loop_id.clone().expect("the loop id");
    // The running loop is the schedule's running execution: overlap skip holds.
    c.set("2030-01-02T09:00:00Z");
    c.wait_runs(&id, "the next occurrence to be skipped", |r| r.len() == 2);
    assert_eq!(c.runs(&id)[1].status, ExecutionStatus::Skipped);
    // Without --cancel-tasks: a schedule's loops end with it all the same (spec 9.10).
    c.beat.ok(&["schedule", "cancel", &id]);
    c.wait_runs(&id, "the loop run to be cancelled", |r| {
        r[0].status == ExecutionStatus::Cancelled
    });
    let l = c
        .beat
        .store()
        .eval_loop(&loop_id)
        .unwrap()
        .expect("the loop");
    assert_eq!(l.status.as_str(), "cancelled");
    assert_eq!(c.schedule(&id).status.as_str(), "cancelled");
}

#[test]
fn schedule_loop_over_mcp_answers_the_original_s_keys_and_suffixes_the_branch() {
    let c = Clocked::at("2030-01-01T08:59:00Z");
    let dir = c.beat.workdir.path().join("repo");
    std::fs::create_dir_all(&dir).unwrap();
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(&dir)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t")
            .output()
            .expect("git");
        assert!(out.status.success(), "git {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    git(&["init", "-q", "-b", "main"]);
    std::fs::write(dir.join("f"), "x").unwrap();
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "start"]);
    let mut mcp = c.beat.mcp();
    let (refused, is_error) = mcp.call(
        "ScheduleLoop",
        json!({"strategy": "retry", "prompt": "print x", "scheduleType": "cron",
               "cronExpression": "0 9 * * *", "workingDirectory": dir}),
    );
    assert!(
        is_error,
        "a retry loop without exitCondition was accepted: {refused}"
    );
    assert!(refused.to_string().contains("exitCondition"), "{refused}");
    let v = mcp.ok(
        "ScheduleLoop",
        json!({"strategy": "retry", "prompt": "print x", "exitCondition": "true",
               "gitBranch": "nightly", "scheduleType": "cron",
               "cronExpression": "0 9 * * *", "workingDirectory": dir}),
    );
    assert_eq!(v["loopStrategy"], "retry", "{v}");
    assert_eq!(v["nextRunAt"], "2030-01-01T09:00:00.000Z", "{v}");
    assert_eq!(v["status"], "active");
    let id = id_of(&v);
    c.set("2030-01-01T09:00:00Z");
    c.wait_runs(&id, "the loop run to complete", |r| {
        r.len() == 1 && r[0].status == ExecutionStatus::Completed
    });
    let l = c
        .beat
        .store()
        .eval_loop(c.runs(&id)[0].loop_id.as_deref().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(l.git_branch.as_deref(), Some("nightly-20300101-090000"));
    git(&["rev-parse", "--verify", "nightly-20300101-090000"]);
    mcp.close();
}

#[test]
fn a_scheduled_loop_s_row_follows_it_to_its_end_across_a_daemon_restart() {
    let c = Clocked::at("2030-01-01T08:59:00Z");
    let go = c.beat.workdir.path().join("go");
    let prompt = format!("await {}; print done", go.display());
    let id = id_of(&c.create(&[
        "--cron",
        "0 9 * * *",
        "--loop",
        "--until",
        "true",
        "--",
        &prompt,
    ]));
    c.set("2030-01-01T09:00:00Z");
    c.wait_runs(&id, "the loop run to be triggered", |r| r.len() == 1);
    let loop_id = c.runs(&id)[0].loop_id.clone().expect("the loop id");
    c.beat.kill_daemon();
    std::fs::write(&go, "").unwrap();
    c.beat.ok(&["schedule", "list"]); // a new daemon starts and recovers
    let store = c.beat.store();
    wait_until("the loop to end", Duration::from_secs(30), || {
        store
            .eval_loop(&loop_id)
            .unwrap()
            .is_some_and(|l| l.status.is_terminal())
    });
    // Its task outlived the daemon (the shim), so the recovered loop passes.
    let l = store.eval_loop(&loop_id).unwrap().unwrap();
    assert_eq!(l.status.as_str(), "completed");
    c.wait_runs(&id, "the row to follow the loop's end", |r| {
        r[0].status == ExecutionStatus::Completed
    });
}
