//! Eval loops against the real binary (issue 8): retry and optimize loops with the fake
//! agent and `sh` evals, git keep-or-reset in real repositories, pause, resume, cancel,
//! bad input, and daemon crashes at each step of an iteration.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Beat, wait_until};
use serde_json::Value;

/// `beat loop … --json`: the new loop's id.
fn create(beat: &Beat, args: &[&str]) -> String {
    let mut all = vec!["loop", "--json"];
    all.extend_from_slice(args);
    let v = beat.json(&all);
    v["loopId"].as_str().expect("loopId").to_string()
}

/// `beat wait <loop>`: its exit code.
fn wait_loop(beat: &Beat, id: &str) -> i32 {
    beat.output(&["wait", id]).status.code().unwrap_or(-1)
}

fn status(beat: &Beat, id: &str) -> Value {
    beat.json(&["loop", "status", id, "--history", "--json"])
}

/// Iterations oldest first.
fn iterations(v: &Value) -> Vec<Value> {
    let mut its = v["iterations"].as_array().cloned().unwrap_or_default();
    its.sort_by_key(|i| i["iterationNumber"].as_u64());
    its
}

fn statuses(v: &Value) -> Vec<String> {
    iterations(v)
        .iter()
        .map(|i| i["status"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Runs git in `dir` with a clean environment (no user config, a fixed identity).
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", common::SYSTEM_PATH)
        .env("HOME", dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "T")
        .env("GIT_AUTHOR_EMAIL", "t@t")
        .env("GIT_COMMITTER_NAME", "T")
        .env("GIT_COMMITTER_EMAIL", "t@t")
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A repository with one commit on `main` and a second branch `other`.
fn repo(dir: &Path) {
    git(dir, &["init", "-q", "-b", "main"]);
    std::fs::write(dir.join("README"), "start\n").unwrap();
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "start"]);
    git(dir, &["branch", "other"]);
}

/// A shell eval that fails until its `n`th run (counting in `counter`).
fn passes_on(n: u32, counter: &Path) -> String {
    format!(
        "c=$(cat {p} 2>/dev/null || echo 0); c=$((c+1)); echo $c > {p}; echo \"run $c of iteration $BACKBEAT_ITERATION\"; [ $c -ge {n} ]",
        p = counter.display()
    )
}

#[test]
fn a_retry_loop_passes_on_its_third_iteration() {
    let beat = Beat::new();
    let counter = beat.user_home.path().join("evals");
    let id = create(
        &beat,
        &["--until", &passes_on(3, &counter), "--", "print working"],
    );
    assert!(id.starts_with("loop-"));
    assert_eq!(wait_loop(&beat, &id), 0, "the loop completed");
    let v = status(&beat, &id);
    assert_eq!(v["status"], "completed");
    assert_eq!(v["currentIteration"], 3);
    assert_eq!(statuses(&v), ["fail", "fail", "pass"]);
    let last = &iterations(&v)[2];
    assert_eq!(last["evalOutput"], "run 3 of iteration 3");
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("passed at iteration 3"),
        "{v}"
    );
    // The ledger: a header and one line per iteration.
    let tsv = beat.ok(&["loop", "results", &id]);
    let lines: Vec<&str> = tsv.lines().collect();
    assert!(lines[0].starts_with("iteration\tstatus\tscore\tbest\tcommit"));
    assert_eq!(lines.len(), 4, "{tsv}");
    assert!(lines[3].starts_with("3\tpass"), "{tsv}");
    // The loop's tasks are marked in `beat list`: three iterations, three evals.
    let list = beat.ok(&["list"]);
    assert_eq!(
        list.matches(&format!("[eval of {id}]")).count(),
        3,
        "{list}"
    );
    assert_eq!(
        list.matches(&format!("[iteration of {id}]")).count(),
        3,
        "{list}"
    );
    // Each task (iteration and eval) ran once.
    assert!(beat.start_counts().values().all(|&n| n == 1));
}

#[test]
fn a_retry_loop_that_reaches_max_iterations_fails_naming_the_limit() {
    let beat = Beat::new();
    let id = create(
        &beat,
        &[
            "--until",
            "false",
            "--max-iterations",
            "2",
            "--max-failures",
            "0",
            "--",
            "print x",
        ],
    );
    assert_eq!(wait_loop(&beat, &id), 1);
    let v = status(&beat, &id);
    assert_eq!(v["status"], "failed");
    assert_eq!(statuses(&v), ["fail", "fail"]);
    let reason = v["reason"].as_str().unwrap();
    assert!(reason.contains("maxIterations"), "{reason}");
}

#[test]
fn consecutive_failures_end_a_retry_loop() {
    let beat = Beat::new();
    let id = create(
        &beat,
        &["--until", "exit 3", "--max-failures", "2", "--", "print x"],
    );
    assert_eq!(wait_loop(&beat, &id), 1);
    let v = status(&beat, &id);
    assert_eq!(statuses(&v), ["fail", "fail"]);
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("maxConsecutiveFailures"),
        "{v}"
    );
    assert_eq!(iterations(&v)[0]["exitCode"], 3);
}

/// An optimize loop whose iteration N writes `workN.txt`, scored by the table `scores`.
fn optimize_in_repo(beat: &Beat, scores: &[&str], extra: &[&str]) -> String {
    let counter = beat.user_home.path().join("agent-runs");
    let agent = format!(
        "c=$(cat {p} 2>/dev/null || echo 0); c=$((c+1)); echo $c > {p}; echo work $c > work$c.txt",
        p = counter.display()
    );
    let cases: String = scores
        .iter()
        .enumerate()
        .map(|(i, s)| format!("{}) echo '{s}';; ", i + 1))
        .collect();
    let eval = format!("case $BACKBEAT_ITERATION in {cases}*) echo 0;; esac");
    let mut args = vec![
        "--eval",
        &eval,
        "--maximize",
        "-a",
        "shell",
        "--max-failures",
        "0",
    ];
    args.extend_from_slice(extra);
    args.push("--");
    args.push(&agent);
    create(beat, &args)
}

#[test]
fn an_optimize_loop_keeps_better_work_in_git_and_resets_the_rest() {
    let beat = Beat::new();
    let dir = beat.workdir.path();
    repo(dir);
    let main_before = git(dir, &["rev-parse", "main"]);
    let other_before = git(dir, &["rev-parse", "other"]);
    let id = optimize_in_repo(
        &beat,
        &["5 points", "3", "7.5"],
        &["--max-iterations", "3", "--git-branch", "loop/opt"],
    );
    assert_eq!(wait_loop(&beat, &id), 0, "{}", status(&beat, &id));
    let v = status(&beat, &id);
    assert_eq!(statuses(&v), ["keep", "discard", "keep"]);
    assert_eq!(v["bestScore"], 7.5);
    assert_eq!(v["bestIterationId"], 3);
    let reason = v["reason"].as_str().unwrap();
    assert!(
        reason.contains("maxIterations") && reason.contains("7.5"),
        "{reason}"
    );

    // Only kept work survives, on the loop's branch; nothing else moved.
    assert_eq!(git(dir, &["rev-parse", "--abbrev-ref", "HEAD"]), "loop/opt");
    assert!(dir.join("work1.txt").exists());
    assert!(!dir.join("work2.txt").exists(), "discarded work is gone");
    assert!(dir.join("work3.txt").exists());
    assert_eq!(git(dir, &["status", "--porcelain"]), "");
    let log = git(dir, &["log", "--format=%s", "main..loop/opt"]);
    assert_eq!(log.lines().count(), 2, "{log}");
    assert!(
        log.contains("iteration 3") && log.contains("iteration 1"),
        "{log}"
    );
    assert_eq!(git(dir, &["rev-parse", "main"]), main_before);
    assert_eq!(git(dir, &["rev-parse", "other"]), other_before);
    let its = iterations(&v);
    assert_eq!(
        its[2]["gitCommitSha"].as_str().unwrap(),
        git(dir, &["rev-parse", "loop/opt"])
    );
    assert_eq!(
        its[1]["gitCommitSha"], its[0]["gitCommitSha"],
        "reset to the kept commit"
    );
    beat.assert_fold_matches_state();
}

#[test]
fn patience_stops_an_optimize_loop_that_no_longer_improves() {
    let beat = Beat::new();
    let id = optimize_in_repo(
        &beat,
        &["5", "4", "5", "9"],
        &["--max-iterations", "10", "--patience", "2"],
    );
    assert_eq!(wait_loop(&beat, &id), 0);
    let v = status(&beat, &id);
    assert_eq!(statuses(&v), ["keep", "discard", "discard"]);
    assert!(v["reason"].as_str().unwrap().contains("patience"), "{v}");
}

#[test]
fn pause_lets_the_running_iteration_finish_and_resume_goes_on() {
    let beat = Beat::new();
    let go = beat.user_home.path().join("go");
    let counter = beat.user_home.path().join("evals");
    let prompt = format!("await {}", go.display());
    let id = create(&beat, &["--until", &passes_on(2, &counter), "--", &prompt]);
    wait_until("iteration 1 to run", Duration::from_secs(30), || {
        status(&beat, &id)["currentIteration"] == 1
    });
    beat.ok(&["loop", "pause", &id]);
    assert_eq!(status(&beat, &id)["status"], "paused");
    let again = beat.output(&["loop", "pause", &id]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("only a running loop"));
    std::fs::write(&go, "").unwrap();
    wait_until("iteration 1 to be judged", Duration::from_secs(30), || {
        statuses(&status(&beat, &id)) == ["fail"]
    });
    let v = status(&beat, &id);
    assert_eq!(v["status"], "paused");
    assert_eq!(v["currentIteration"], 1, "no iteration starts while paused");
    beat.ok(&["loop", "resume", &id]);
    assert_eq!(wait_loop(&beat, &id), 0);
    assert_eq!(statuses(&status(&beat, &id)), ["fail", "pass"]);
}

#[test]
fn cancel_with_cancel_tasks_stops_the_running_iteration() {
    let beat = Beat::new();
    let never = beat.user_home.path().join("never");
    let prompt = format!("await {}", never.display());
    let id = create(&beat, &["--until", "true", "--", &prompt]);
    wait_until("iteration 1 to run", Duration::from_secs(30), || {
        status(&beat, &id)["currentIteration"] == 1
    });
    let task = iterations(&status(&beat, &id))[0]["taskId"]
        .as_str()
        .unwrap()
        .to_string();
    beat.ok(&["loop", "cancel", &id, "--cancel-tasks", "enough"]);
    assert_eq!(wait_loop(&beat, &id), 1);
    assert_eq!(status(&beat, &id)["status"], "cancelled");
    assert_eq!(beat.wait(&task)["status"], "cancelled");
    let again = beat.output(&["loop", "cancel", &id]);
    assert_eq!(again.status.code(), Some(1));
}

#[test]
fn a_user_cancelled_iteration_task_does_not_count() {
    let beat = Beat::new();
    let gate = beat.user_home.path().join("gate");
    let counter = beat.user_home.path().join("evals");
    let prompt = format!("await {}", gate.display());
    let id = create(
        &beat,
        &[
            "--until",
            &passes_on(1, &counter),
            "--max-iterations",
            "1",
            "--",
            &prompt,
        ],
    );
    wait_until("iteration 1 to run", Duration::from_secs(30), || {
        status(&beat, &id)["currentIteration"] == 1
    });
    let task = iterations(&status(&beat, &id))[0]["taskId"]
        .as_str()
        .unwrap()
        .to_string();
    beat.ok(&["cancel", &task]);
    std::fs::write(&gate, "").unwrap();
    // With maxIterations 1, the loop completes only if the cancelled one did not count.
    assert_eq!(wait_loop(&beat, &id), 0, "{}", status(&beat, &id));
    assert_eq!(statuses(&status(&beat, &id)), ["cancelled", "pass"]);
}

#[test]
fn a_pipeline_loop_runs_its_steps_in_order_each_iteration() {
    let beat = Beat::new();
    let id = create(
        &beat,
        &[
            "--until",
            "grep -q two order.txt",
            "--pipeline",
            "--step",
            "write order.txt one",
            "--step",
            "write order.txt two",
        ],
    );
    assert_eq!(wait_loop(&beat, &id), 0, "{}", status(&beat, &id));
    let v = status(&beat, &id);
    assert_eq!(statuses(&v), ["pass"]);
    assert_eq!(
        iterations(&v)[0]["pipelineTaskIds"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn bad_loop_input_is_refused_with_what_to_do() {
    let beat = Beat::new();
    let refused = |args: &[&str], says: &str| {
        let mut all = vec!["loop"];
        all.extend_from_slice(args);
        let out = beat.output(&all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{args:?} was accepted");
        assert!(err.contains(says), "{args:?}: {err}");
    };
    refused(&["--", "p"], "--until CMD");
    refused(&["--eval", "echo 1", "--", "p"], "--minimize or --maximize");
    refused(
        &["--until", "true", "--eval-timeout", "10", "--", "p"],
        "evalTimeout",
    );
    refused(
        &["--until", "true", "--pipeline", "--step", "only one"],
        "2 to 20 steps",
    );
    refused(
        &["--until", "true", "--git-branch", "bad..name", "--", "p"],
        "not a valid branch name",
    );
    refused(
        &["--until", "true", "--git-branch", "b", "--", "p"],
        "not in a git repository",
    );
    refused(
        &["--until", "true", "--max-cost", "1", "--", "p"],
        "does not report its cost",
    );
    refused(
        &["--until", "true", "--patience", "2", "--", "p"],
        "patience is for optimize",
    );
    refused(&["status", "loop-nope"], "not found");
    refused(&["pause", "loop-nope"], "not found");
}

#[test]
fn a_git_loop_refuses_a_dirty_directory_and_an_existing_branch() {
    let beat = Beat::new();
    let dir = beat.workdir.path();
    repo(dir);
    let out = beat.output(&[
        "loop",
        "--until",
        "true",
        "--git-branch",
        "other",
        "--",
        "p",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("exists"),
        "{out:?}"
    );
    std::fs::write(dir.join("dirty.txt"), "x").unwrap();
    let out = beat.output(&[
        "loop",
        "--until",
        "true",
        "--git-branch",
        "fresh",
        "--",
        "p",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("uncommitted"),
        "{out:?}"
    );
}

/// Kills the daemon at a point an iteration reached (`at`), lets it finish, and checks
/// that the loop went on with every task started once and each iteration recorded once.
fn crash_and_go_on(eval_waits: bool) {
    let beat = Beat::new();
    let home = beat.user_home.path();
    let release = home.join("release");
    let counter = home.join("evals");
    let marker = home.join("eval-started");
    let prompt = if eval_waits {
        "print working".to_string()
    } else {
        format!("await {}", release.display())
    };
    let eval = if eval_waits {
        format!(
            "touch {m}; while [ ! -e {r} ]; do sleep 0.01; done; {pass}",
            m = marker.display(),
            r = release.display(),
            pass = passes_on(2, &counter)
        )
    } else {
        passes_on(2, &counter)
    };
    let id = create(&beat, &["--until", &eval, "--", &prompt]);
    if eval_waits {
        wait_until("the eval to run", Duration::from_secs(30), || {
            marker.exists()
        });
    } else {
        wait_until("iteration 1 to run", Duration::from_secs(30), || {
            status(&beat, &id)["currentIteration"] == 1
        });
    }
    beat.kill_daemon();
    std::fs::write(&release, "").unwrap();
    // Any command starts a new daemon, which recovers the loop.
    assert_eq!(wait_loop(&beat, &id), 0, "{}", status(&beat, &id));
    let v = status(&beat, &id);
    assert_eq!(statuses(&v), ["fail", "pass"]);
    let numbers: Vec<u64> = iterations(&v)
        .iter()
        .map(|i| i["iterationNumber"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [1, 2]);
    assert!(
        beat.start_counts().values().all(|&n| n == 1),
        "a task ran twice: {:?}",
        beat.start_counts()
    );
    assert_eq!(
        std::fs::read_to_string(&counter).unwrap().trim(),
        "2",
        "each eval ran once"
    );
    beat.assert_fold_matches_state();
}

#[test]
fn a_daemon_crash_while_the_agent_runs_loses_nothing() {
    crash_and_go_on(false);
}

#[test]
fn a_daemon_crash_during_the_eval_neither_repeats_nor_orphans_it() {
    crash_and_go_on(true);
}

#[test]
fn a_daemon_crash_between_iterations_loses_nothing() {
    let beat = Beat::new();
    let counter = beat.user_home.path().join("evals");
    let id = create(
        &beat,
        &[
            "--until",
            &passes_on(2, &counter),
            "--cooldown",
            "2s",
            "--",
            "print x",
        ],
    );
    wait_until("iteration 1 to be judged", Duration::from_secs(30), || {
        statuses(&status(&beat, &id)) == ["fail"]
    });
    beat.kill_daemon();
    assert_eq!(wait_loop(&beat, &id), 0);
    assert_eq!(statuses(&status(&beat, &id)), ["fail", "pass"]);
    assert!(beat.start_counts().values().all(|&n| n == 1));
}

/// A command agent that speaks Claude Code's stream-json (the fake agent prints it).
fn claude_like(extra: serde_json::Value) -> Beat {
    let mut config = serde_json::json!({
        "agents": {
            "fake": { "command": [common::FAKE, "{prompt}"] },
            "fakeclaude": { "command": [common::FAKE, "{prompt}"], "outputFormat": "claude-stream-json" }
        }
    });
    if let (Value::Object(c), Value::Object(e)) = (&mut config, extra) {
        c.extend(e);
    }
    Beat::with_config(config)
}

const INIT: &str =
    r#"print {"type":"system","subtype":"init","session_id":"sess-42","model":"m-1"}"#;
const OK: &str = r#"print {"type":"result","subtype":"success","is_error":false,"result":"All done.","session_id":"sess-42","total_cost_usd":0.25,"usage":{"input_tokens":1200,"output_tokens":34}}"#;
const LIMITED: &str = r#"print {"type":"result","subtype":"success","is_error":true,"api_error_status":429,"result":"API Error: Request rejected (429) · slow down","session_id":"sess-42","usage":{"input_tokens":0,"output_tokens":0}}"#;

#[test]
fn a_rate_limited_iteration_waits_for_the_reset_and_is_not_a_failure() {
    let beat = claude_like(serde_json::json!({ "rateLimitBackoffMs": 100 }));
    let marker = beat.user_home.path().join("ran-once");
    let script = format!(
        "first-run {}; {INIT}; {LIMITED}; exit 1; else; {INIT}; {OK}",
        marker.display()
    );
    let id = create(
        &beat,
        &[
            "--until",
            "true",
            "--max-iterations",
            "1",
            "-a",
            "fakeclaude",
            "--",
            &script,
        ],
    );
    assert_eq!(wait_loop(&beat, &id), 0, "{}", status(&beat, &id));
    let v = status(&beat, &id);
    assert_eq!(statuses(&v), ["pass"]);
    let task = beat.status(iterations(&v)[0]["taskId"].as_str().unwrap());
    assert_eq!(task["rateLimitRetries"], 1, "{task}");
    // The iteration's usage is the agent's.
    assert_eq!(iterations(&v)[0]["usage"]["inputTokens"], 1200);
}

#[test]
fn checkpoint_gives_the_next_iteration_the_previous_one_s_context() {
    let beat = claude_like(serde_json::json!({}));
    let counter = beat.user_home.path().join("evals");
    // The context is appended to the prompt, so it lands in the last `print`.
    let script = format!("{INIT}; {OK}");
    let id = create(
        &beat,
        &[
            "--until",
            &passes_on(2, &counter),
            "--checkpoint",
            "-a",
            "fakeclaude",
            "--",
            &script,
        ],
    );
    assert_eq!(wait_loop(&beat, &id), 0, "{}", status(&beat, &id));
    let its = iterations(&status(&beat, &id));
    let second = beat.status(its[1]["taskId"].as_str().unwrap());
    let prompt = second["prompt"].as_str().unwrap();
    for part in [
        "--- Previous Iteration Context ---",
        "Iteration 1 status: fail",
        "run 1 of iteration 1",
    ] {
        assert!(
            prompt.contains(part),
            "the prompt lacks {part:?}:\n{prompt}"
        );
    }
    let first = beat.status(its[0]["taskId"].as_str().unwrap());
    assert!(!first["prompt"].as_str().unwrap().contains("Previous"));
}

#[test]
fn the_loop_tools_answer_with_the_original_s_keys() {
    let beat = Beat::new();
    let mut mcp = beat.mcp();
    let created = mcp.ok(
        "CreateLoop",
        serde_json::json!({ "prompt": "print hi", "strategy": "retry", "exitCondition": "true" }),
    );
    for key in [
        "success",
        "loopId",
        "strategy",
        "status",
        "maxIterations",
        "message",
    ] {
        assert!(
            created.get(key).is_some(),
            "CreateLoop lacks {key}: {created}"
        );
    }
    assert_eq!(created["maxIterations"], 10);
    let id = created["loopId"].as_str().unwrap().to_string();
    assert_eq!(wait_loop(&beat, &id), 0);
    let s = mcp.ok(
        "LoopStatus",
        serde_json::json!({ "loopId": id, "includeHistory": true }),
    );
    for key in [
        "id",
        "strategy",
        "status",
        "currentIteration",
        "maxIterations",
        "consecutiveFailures",
        "maxConsecutiveFailures",
        "bestScore",
        "exitCondition",
        "evalDirection",
        "cooldownMs",
        "freshContext",
        "promptPreview",
        "workingDirectory",
        "gitBranch",
        "gitBaseBranch",
        "scheduleId",
        "createdAt",
        "updatedAt",
        "completedAt",
    ] {
        assert!(s["loop"].get(key).is_some(), "LoopStatus.loop lacks {key}");
    }
    let it = &s["iterations"][0];
    for key in [
        "iterationNumber",
        "status",
        "taskId",
        "score",
        "bestScore",
        "exitCode",
        "errorMessage",
        "gitCommitSha",
        "durationMs",
        "usage",
        "evalOutput",
        "startedAt",
        "completedAt",
    ] {
        assert!(it.get(key).is_some(), "an iteration lacks {key}: {it}");
    }
    let list = mcp.ok("ListLoops", serde_json::json!({ "status": "completed" }));
    assert_eq!(list["count"], 1);
    assert_eq!(list["loops"][0]["id"], id.as_str());
    let (refused, is_error) = mcp.call("PauseLoop", serde_json::json!({ "loopId": id }));
    assert!(is_error, "{refused}");
    assert!(
        refused.to_string().contains("only a running loop"),
        "{refused}"
    );
    let (unknown, is_error) = mcp.call("ResumeLoop", serde_json::json!({ "loopId": "loop-x" }));
    assert!(
        is_error && unknown.to_string().contains("not found"),
        "{unknown}"
    );
}

#[test]
fn an_agent_eval_judges_the_iteration_by_its_last_line() {
    let answer = r#"print {"type":"result","subtype":"success","is_error":false,"result":"The work is right.\nPASS","session_id":"s-1","usage":{"input_tokens":10,"output_tokens":2}}"#;
    let judge_script = format!("{INIT}; {answer}");
    let beat = claude_like(serde_json::json!({
        "agents": {
            "fake": { "command": [common::FAKE, "{prompt}"] },
            "judge": { "command": [common::FAKE, judge_script], "outputFormat": "claude-stream-json" }
        }
    }));
    let mut mcp = beat.mcp();
    let created = mcp.ok(
        "CreateLoop",
        serde_json::json!({
            "prompt": "print working",
            "strategy": "retry",
            "evalMode": "agent",
            "evalPrompt": "check that the work is right",
            "evalAgent": "judge",
        }),
    );
    let id = created["loopId"].as_str().unwrap().to_string();
    assert_eq!(wait_loop(&beat, &id), 0, "{}", status(&beat, &id));
    let v = status(&beat, &id);
    assert_eq!(statuses(&v), ["pass"]);
    let it = &iterations(&v)[0];
    assert_eq!(it["evalOutput"], "PASS");
    // The judge's tokens count towards the loop's usage.
    assert_eq!(it["usage"]["inputTokens"], 10);
}

#[test]
fn a_forced_pause_cancels_the_running_iteration_which_does_not_count() {
    let beat = Beat::new();
    let never = beat.user_home.path().join("never");
    let prompt = format!("await {}", never.display());
    let id = create(
        &beat,
        &["--until", "true", "--max-iterations", "1", "--", &prompt],
    );
    wait_until("iteration 1 to run", Duration::from_secs(30), || {
        status(&beat, &id)["currentIteration"] == 1
    });
    beat.ok(&["loop", "pause", &id, "--force"]);
    wait_until(
        "iteration 1 to be cancelled",
        Duration::from_secs(30),
        || statuses(&status(&beat, &id)) == ["cancelled"],
    );
    assert_eq!(status(&beat, &id)["status"], "paused");
    beat.ok(&["loop", "resume", &id]);
    wait_until("iteration 2 to run", Duration::from_secs(30), || {
        status(&beat, &id)["currentIteration"] == 2
    });
    beat.ok(&["loop", "cancel", &id, "--cancel-tasks"]);
    assert_eq!(wait_loop(&beat, &id), 1);
    beat.assert_fold_matches_state();
}

/// Kills at arbitrary moments (a fixed pseudo-random sequence of delays, not waits for
/// events: the point is to land anywhere) over several loops at once.
#[test]
fn loops_survive_kills_at_arbitrary_moments() {
    let beat = Beat::with_config(serde_json::json!({ "maxWorkers": 4 }));
    let ids: Vec<(String, std::path::PathBuf)> = (0..4)
        .map(|n| {
            let counter = beat.user_home.path().join(format!("evals-{n}"));
            let id = create(
                &beat,
                &[
                    "--until",
                    &passes_on(4, &counter),
                    "--max-failures",
                    "0",
                    "--",
                    "print x",
                ],
            );
            (id, counter)
        })
        .collect();
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..4 {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        std::thread::sleep(Duration::from_millis(20 + (seed >> 33) % 200));
        if beat.daemon_pid().is_some() {
            beat.kill_daemon();
        }
    }
    for (id, counter) in &ids {
        assert_eq!(wait_loop(&beat, id), 0, "{}", status(&beat, id));
        let v = status(&beat, id);
        assert_eq!(statuses(&v), ["fail", "fail", "fail", "pass"], "{v}");
        assert_eq!(std::fs::read_to_string(counter).unwrap().trim(), "4");
    }
    assert!(
        beat.start_counts().values().all(|&n| n == 1),
        "{:?}",
        beat.start_counts()
    );
    beat.assert_fold_matches_state();
}

#[test]
fn beat_wait_takes_a_pipeline_id() {
    let beat = Beat::new();
    let ok = beat.json(&["pipeline", "--json", "print a", "print b"]);
    let id = ok["pipelineId"].as_str().unwrap();
    assert_eq!(beat.output(&["wait", id]).status.code(), Some(0));
    let bad = beat.json(&["pipeline", "--json", "exit 3", "print b"]);
    let id = bad["pipelineId"].as_str().unwrap();
    assert_eq!(beat.output(&["wait", id]).status.code(), Some(1));
}

#[test]
fn a_worktree_loop_leaves_the_user_s_checkout_alone_and_keeps_its_branch() {
    let beat = Beat::new();
    let dir = beat.workdir.path();
    repo(dir);
    let id = optimize_in_repo(
        &beat,
        &["5"],
        &[
            "--max-iterations",
            "1",
            "--git-branch",
            "loop/wt",
            "--worktree",
        ],
    );
    assert_eq!(wait_loop(&beat, &id), 0, "{}", status(&beat, &id));
    let v = status(&beat, &id);
    assert_eq!(statuses(&v), ["keep"]);
    let worktree = v["worktreePath"].as_str().unwrap().to_string();
    assert!(
        worktree.starts_with(beat.path().to_str().unwrap()),
        "{worktree}"
    );
    // The user's checkout: still on main, clean, without the loop's work.
    assert_eq!(git(dir, &["rev-parse", "--abbrev-ref", "HEAD"]), "main");
    assert_eq!(git(dir, &["status", "--porcelain"]), "");
    assert!(!dir.join("work1.txt").exists());
    // The worktree is gone; the branch stays, with the kept work.
    assert!(!Path::new(&worktree).exists(), "the worktree was removed");
    assert_eq!(git(dir, &["show", "loop/wt:work1.txt"]), "work 1");
}

#[test]
fn prune_removes_a_finished_loop_with_its_iterations_and_tasks() {
    let beat = Beat::new();
    let id = create(&beat, &["print work", "--until", "true"]);
    assert_eq!(wait_loop(&beat, &id), 0);
    let tasks: Vec<String> = beat
        .store()
        .all::<backbeat_actors::TaskRecord>()
        .unwrap()
        .into_iter()
        .filter(|t| t.owner.as_ref().is_some_and(|o| o.id == id))
        .map(|t| t.id)
        .collect();
    assert!(!tasks.is_empty(), "the loop ran tasks");
    let v = beat.json(&["prune", "--older-than", "0s", "--json"]);
    assert_eq!(v["removedLoops"], serde_json::json!([id]), "{v}");
    for t in &tasks {
        assert!(
            v["removedTasks"].as_array().unwrap().iter().any(|r| r == t),
            "the loop's task {t} goes with it: {v}"
        );
    }
    assert!(beat.store().eval_loop(&id).unwrap().is_none());
    assert!(beat.store().loop_iterations(&id).unwrap().is_empty());
    assert!(!beat.output(&["loop", "status", &id]).status.success());
    beat.assert_fold_matches_state();
}

/// The daemon dies while the loop's `git commit` runs (a `git` wrapper on the daemon's
/// PATH holds the commit until the test lets it go): after the restart the loop goes
/// on, and the iteration records the one commit that was made, once.
#[test]
fn a_daemon_crash_during_the_git_commit_records_the_commit_once() {
    let mut beat = Beat::new();
    let dir = beat.workdir.path().to_path_buf();
    repo(&dir);
    let real_git = common::SYSTEM_PATH
        .split(':')
        .map(|d| Path::new(d).join("git"))
        .find(|p| p.exists())
        .expect("git on the system PATH");
    let wrap = tempfile::tempdir().unwrap();
    let (holding, release, done) = (
        wrap.path().join("holding"),
        wrap.path().join("release"),
        wrap.path().join("done"),
    );
    let script = format!(
        "#!/bin/sh\ncase \" $* \" in *\" commit \"*) touch {h}; while [ ! -e {r} ]; do sleep 0.01; done; {g} \"$@\"; s=$?; touch {d}; exit $s;; esac\nexec {g} \"$@\"\n",
        h = holding.display(),
        r = release.display(),
        d = done.display(),
        g = real_git.display()
    );
    let wrapper = wrap.path().join("git");
    std::fs::write(&wrapper, script).unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    beat.env.retain(|(k, _)| k != "PATH");
    beat.env.push((
        "PATH".into(),
        format!("{}:{}", wrap.path().display(), common::SYSTEM_PATH),
    ));
    let id = optimize_in_repo(
        &beat,
        &["5"],
        &["--max-iterations", "1", "--git-branch", "loop/crash"],
    );
    wait_until(
        "the loop's commit to start",
        Duration::from_secs(30),
        || holding.exists(),
    );
    beat.kill_daemon();
    std::fs::write(&release, "").unwrap();
    wait_until(
        "the orphaned commit to finish",
        Duration::from_secs(30),
        || done.exists(),
    );
    assert_eq!(wait_loop(&beat, &id), 0, "{}", status(&beat, &id));
    let v = status(&beat, &id);
    assert_eq!(statuses(&v), ["keep"]);
    let log = git(&dir, &["log", "--format=%s", "main..loop/crash"]);
    assert_eq!(
        log.lines().count(),
        1,
        "one commit for the one iteration: {log}"
    );
    assert_eq!(
        iterations(&v)[0]["gitCommitSha"].as_str().unwrap(),
        git(&dir, &["rev-parse", "loop/crash"])
    );
    assert!(beat.start_counts().values().all(|&n| n == 1));
    beat.assert_fold_matches_state();
}
