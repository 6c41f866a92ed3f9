//! What the README promises and no other test checked: configuration precedence, the CPU
//! reserve, Ctrl-C on a foreground run, `logs -f`, `--prompt-file -`, the agent's
//! environment and stdin, rate-limit back-off, timeouts that stop the whole group, the
//! socket's mode, `ResumeTask` and `CancelPipeline` through MCP, and per-step pipeline
//! settings. Each test names the README's sentence it holds to.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::Duration;

use backbeat_actors::model::{Event, TaskEvent};
use common::{Beat, FAKE, pid_exists, read_pidfile, wait_until};
use serde_json::{Value, json};

/// "Environment variables override the file, and the file overrides the defaults." "A
/// bad value is reported and ignored, for that key alone."
#[test]
fn the_environment_wins_over_config_json_and_a_bad_value_falls_back_alone() {
    let beat = Beat::with_config_and_env(
        json!({ "timeout": 120000, "idleTimeout": 90000, "maxOutputBuffer": 5000 }),
        &[("TASK_TIMEOUT", "4000"), ("TASK_IDLE_TIMEOUT", "banana")],
    );
    let id = beat.submit("print x", &[]);
    let t = beat.wait(&id);
    assert_eq!(t["timeout"], 4000, "the environment wins over config.json");
    assert_eq!(
        t["idleTimeout"], 90000,
        "a bad value in the environment is ignored: config.json's value applies"
    );
    assert_eq!(
        t["maxOutputBuffer"], 5000,
        "a key the environment does not set comes from config.json"
    );
    // The log is written by a thread of its own: wait for the line.
    wait_until(
        "the bad value to be reported",
        Duration::from_secs(20),
        || {
            std::fs::read_to_string(beat.path().join("daemon.log"))
                .is_ok_and(|log| log.contains("TASK_IDLE_TIMEOUT") && log.contains("banana"))
        },
    );
}

/// "`cpuCoresReserved` ... 0 (off)": agents never take more than the cores left after it.
#[test]
fn a_cpu_reserve_holds_starts_back_until_the_configuration_allows_them() {
    // The most the setting takes, beyond this machine's cores.
    let beat = Beat::with_config(json!({ "cpuCoresReserved": 1024 }));
    let id = beat.submit("print finally", &[]);
    wait_until(
        "the governor to defer the start for the CPU reserve",
        Duration::from_secs(20),
        || {
            std::fs::read_to_string(beat.path().join("daemon.log"))
                .is_ok_and(|l| l.contains("(cpuCoresReserved)"))
        },
    );
    assert_eq!(beat.status(&id)["status"], "queued");
    beat.config_set("cpuCoresReserved", "0");
    assert_eq!(beat.wait(&id)["status"], "completed");
}

/// "130 after Ctrl-C, which cancels the task first."
#[test]
fn ctrl_c_on_a_foreground_run_cancels_the_task_and_exits_130() {
    let beat = Beat::new();
    let pidfile = beat.workdir.path().join("agent.pid");
    let mut run = beat
        .cmd(&[
            "run",
            "-f",
            "--",
            &format!("pidfile {}; sleep 60000", pidfile.display()),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (agent, pgid) = read_pidfile(&pidfile);
    // SAFETY: kill(2) on the child we spawned.
    unsafe {
        libc::kill(run.id() as i32, libc::SIGINT);
    }
    let status = run.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let tasks = beat.json(&["list", "--json"]);
    let t = &tasks.as_array().unwrap()[0];
    assert_eq!(t["status"], "cancelled", "{t}");
    assert!(
        !pid_exists(agent) && common::group_members(pgid).is_empty(),
        "the agent's group is gone"
    );
}

/// "`beat logs <task-id> [-f]`": follows the output as it comes, and ends with the task.
#[test]
fn logs_follow_prints_output_as_it_comes_and_ends_with_the_task() {
    let beat = Beat::new();
    let go = beat.workdir.path().join("go");
    let id = beat.submit(
        &format!("print one; await {}; print two", go.display()),
        &[],
    );
    let mut follow = beat
        .cmd(&["logs", "-f", &id])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(follow.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert_eq!(first, "one\n", "the output so far, before the task ends");
    std::fs::write(&go, "").unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "two\n");
    assert!(follow.wait().unwrap().success());
    assert_eq!(beat.status(&id)["status"], "completed");
}

/// "`--prompt-file FILE` (or `-` for stdin)".
#[test]
fn prompt_file_dash_reads_the_prompt_from_stdin() {
    let beat = Beat::new();
    let prompt = "print from-stdin «ü»";
    let mut run = beat
        .cmd(&["run", "--json", "--prompt-file", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    run.stdin
        .take()
        .unwrap()
        .write_all(prompt.as_bytes())
        .unwrap();
    let out = run.wait_with_output().unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = v["taskId"].as_str().unwrap();
    let t = beat.wait(id);
    assert_eq!(t["prompt"], prompt);
    assert_eq!(beat.ok(&["logs", id]), "from-stdin «ü»\n");
}

/// "Every agent runs in its own process group, with stdin from `/dev/null` ...
/// `BACKBEAT_WORKER=true` and `BACKBEAT_TASK_ID` are set."
#[test]
fn agents_get_backbeat_s_variables_and_stdin_from_dev_null() {
    let beat = Beat::new();
    let id = beat.submit(
        r#"echo "$BACKBEAT_WORKER $BACKBEAT_TASK_ID"; readlink /proc/self/fd/0; cut -d' ' -f5 /proc/$$/stat; echo $$"#,
        &["--agent", "shell"],
    );
    assert_eq!(beat.wait(&id)["status"], "completed");
    let out = beat.ok(&["logs", &id]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], format!("true {id}"));
    assert_eq!(lines[1], "/dev/null");
    assert_eq!(
        lines[2], lines[3],
        "the agent leads a process group of its own"
    );
}

/// "Only the variables by which Claude Code marks its own children are removed ...
/// Every other `CLAUDE_CODE_*` setting is kept. As root, Claude gets `IS_SANDBOX=1`."
#[test]
fn claude_gets_the_user_s_settings_without_nesting_markers() {
    let bin = tempfile::tempdir().unwrap();
    let claude = bin.path().join("claude");
    let vars = [
        "CLAUDECODE",
        "CLAUDE_CODE_ENTRYPOINT",
        "CLAUDE_CODE_SSE_PORT",
        "CLAUDE_CODE_SESSION_ID",
        "CLAUDE_CODE_CHILD_SESSION",
        "CLAUDE_CODE_EXECPATH",
        "CLAUDE_CODE_OAUTH_TOKEN",
        "CLAUDE_CODE_USE_BEDROCK",
        "CLAUDE_CODE_MAX_RETRIES",
        "IS_SANDBOX",
    ];
    // A stand-in `claude` whose answer is its environment: NAME=value;…
    let report: String = vars
        .iter()
        .map(|v| format!("{v}=${{{v}-unset}};"))
        .collect();
    let script = r#"#!/bin/sh
echo "{\"type\":\"result\",\"subtype\":\"success\",\"is_error\":false,\"result\":\"@REPORT@\"}"
"#;
    std::fs::write(&claude, script.replace("@REPORT@", &report)).unwrap();
    std::fs::set_permissions(&claude, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.path().display(), common::SYSTEM_PATH);
    let beat = Beat::with_config_and_env(
        json!({}),
        &[
            ("PATH", &path),
            ("CLAUDECODE", "1"),
            ("CLAUDE_CODE_ENTRYPOINT", "cli"),
            ("CLAUDE_CODE_SSE_PORT", "4242"),
            ("CLAUDE_CODE_SESSION_ID", "parent-session"),
            ("CLAUDE_CODE_CHILD_SESSION", "1"),
            ("CLAUDE_CODE_EXECPATH", "/parent/claude"),
            ("CLAUDE_CODE_OAUTH_TOKEN", "sk-ant-oat01-x"),
            ("CLAUDE_CODE_USE_BEDROCK", "1"),
            ("CLAUDE_CODE_MAX_RETRIES", "2"),
            ("IS_SANDBOX", "yes"),
        ],
    );
    let t = beat.wait(&beat.submit("hi", &["--agent", "claude"]));
    assert_eq!(t["status"], "completed", "{t}");
    let seen: std::collections::HashMap<String, String> = t["result"]
        .as_str()
        .unwrap()
        .split(';')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for marker in &vars[..6] {
        assert_eq!(seen[*marker], "unset", "{marker} is removed: {seen:?}");
    }
    assert_eq!(seen["CLAUDE_CODE_OAUTH_TOKEN"], "sk-ant-oat01-x");
    assert_eq!(seen["CLAUDE_CODE_USE_BEDROCK"], "1");
    assert_eq!(seen["CLAUDE_CODE_MAX_RETRIES"], "2");
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    assert_eq!(
        seen["IS_SANDBOX"],
        if root { "1" } else { "yes" },
        "as root, IS_SANDBOX=1 replaces an inherited value Claude would refuse"
    );
}

/// "after a back-off that doubles each time (`rateLimitBackoffMs`) ... at most
/// `rateLimitRetries` times".
#[test]
fn rate_limit_back_off_doubles_with_each_retry() {
    let beat = Beat::with_config(json!({
        "rateLimitBackoffMs": 100,
        "rateLimitRetries": 3,
        "agents": {
            "fakeclaude": { "command": [FAKE, "{prompt}"], "outputFormat": "claude-stream-json" }
        }
    }));
    let limited = r#"print {"type":"result","subtype":"success","is_error":true,"api_error_status":429,"result":"API Error: Request rejected (429) · slow down","usage":{"input_tokens":0,"output_tokens":0}}; exit 1"#;
    let id = beat.submit(limited, &["--agent", "fakeclaude"]);
    let t = beat.wait(&id);
    assert_eq!(t["status"], "failed", "{t}");
    assert_eq!(t["rateLimitRetries"], 3);
    let waits: Vec<i64> = beat
        .store()
        .events()
        .unwrap()
        .into_iter()
        .filter(|e| e.entity_id == id)
        .filter_map(|e| match e.event {
            Event::Task(TaskEvent::RateLimited { at, not_before, .. }) => Some(not_before - at),
            _ => None,
        })
        .collect();
    assert_eq!(waits, [100, 200, 400]);
    assert_eq!(
        beat.start_counts()[&id],
        4,
        "the first run and three retries"
    );
}

/// "Cancel, timeouts and idle timeouts stop the agent's whole group: TERM, then KILL
/// after `killGracePeriodMs`."
#[test]
fn timeouts_and_idle_timeouts_stop_the_whole_group() {
    let beat = Beat::with_config(json!({ "killGracePeriodMs": 300 }));
    for (flag, reason) in [
        ("--timeout", "timed out after 1 s"),
        ("--idle-timeout", "no output for 1 s"),
    ] {
        let dir = beat.workdir.path();
        let grandchild = dir.join(format!("gc{flag}.pid"));
        let agent = dir.join(format!("agent{flag}.pid"));
        // The grandchild ignores TERM: only the group's KILL ends it.
        let id = beat.submit(
            &format!(
                "grandchild {} 60000; pidfile {}; ignore-term; sleep 60000",
                grandchild.display(),
                agent.display()
            ),
            &[flag, "1s"],
        );
        let (child_pid, _) = read_pidfile(&grandchild);
        let (agent_pid, pgid) = read_pidfile(&agent);
        let t = beat.wait(&id);
        assert_eq!(t["status"], "failed", "{t}");
        assert_eq!(t["reason"], reason);
        assert!(!pid_exists(agent_pid) && !pid_exists(child_pid), "{flag}");
        assert!(common::group_members(pgid).is_empty(), "{flag}");
    }
}

/// "`beat.sock`: the socket, mode 0600."
#[test]
fn the_socket_is_private() {
    let beat = Beat::new();
    beat.ok(&["daemon", "start"]);
    let mode = std::fs::metadata(beat.path().join("beat.sock"))
        .expect("beat.sock in the home")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// `ResumeTask` and `CancelPipeline`, as an MCP client calls them.
#[test]
fn resume_task_and_cancel_pipeline_through_mcp() {
    let beat = Beat::new();
    let mut mcp = beat.mcp();
    let first = mcp.ok("DelegateTask", json!({ "prompt": "print first-output" }));
    let first_id = first["taskId"].as_str().unwrap().to_string();
    mcp.ok("WaitTask", json!({ "taskId": first_id }));
    let resumed = mcp.ok(
        "ResumeTask",
        json!({ "taskId": first_id, "additionalContext": "then do more" }),
    );
    assert_eq!(resumed["parentTaskId"], first_id.as_str(), "{resumed}");
    let new_id = resumed["newTaskId"].as_str().unwrap();
    let t = beat.status(new_id);
    let prompt = t["prompt"].as_str().unwrap();
    assert!(
        prompt.contains("first-output") && prompt.contains("then do more"),
        "the new prompt carries the checkpoint and the context: {prompt}"
    );

    let gate = beat.workdir.path().join("step1.pid");
    let p = mcp.ok(
        "CreatePipeline",
        json!({ "steps": [
            { "prompt": format!("pidfile {}; sleep 60000", gate.display()) },
            { "prompt": "print two" },
            { "prompt": "print three" }
        ]}),
    );
    let (agent, pgid) = read_pidfile(&gate);
    let c = mcp.ok(
        "CancelPipeline",
        json!({ "pipelineId": p["pipelineId"], "reason": "not needed" }),
    );
    assert_eq!(c["status"], "cancelled", "{c}");
    let st = mcp.ok("PipelineStatus", json!({ "pipelineId": p["pipelineId"] }));
    for s in st["steps"].as_array().unwrap() {
        assert_eq!(s["status"], "cancelled", "{st}");
    }
    assert!(!pid_exists(agent) && common::group_members(pgid).is_empty());
}

/// "Each step can have its own agent, priority, working directory and `delayMs`."
#[test]
fn pipeline_steps_take_their_own_priority_directory_and_delay() {
    let beat = Beat::new();
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let mut mcp = beat.mcp();
    let p = mcp.ok(
        "CreatePipeline",
        json!({ "steps": [
            { "prompt": "cwd", "priority": "P0", "workingDirectory": a.path() },
            { "prompt": "cwd", "priority": "P1", "workingDirectory": b.path(), "delayMs": 400 }
        ]}),
    );
    let ids: Vec<String> = p["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["taskId"].as_str().unwrap().to_string())
        .collect();
    let last = mcp.ok("WaitTask", json!({ "taskId": ids[1] }));
    assert_eq!(last["status"], "completed", "{last}");
    for (id, (priority, dir)) in ids.iter().zip([("P0", a.path()), ("P1", b.path())]) {
        let t = beat.status(id);
        assert_eq!(t["priority"], priority, "{t}");
        assert_eq!(beat.ok(&["logs", id]).trim_end(), dir.display().to_string());
    }
    let first = beat.store().task(&ids[0]).unwrap().unwrap();
    let second = beat.store().task(&ids[1]).unwrap().unwrap();
    assert!(
        second.started_at.unwrap() - first.completed_at.unwrap() >= 400,
        "the second step waits its delay after the first ends"
    );
}
