//! Agents and what their runs leave: parsed results, rate limits, checkpoints, resume,
//! agent management, and missing CLIs. These use the fake agent; the real CLIs are
//! driven in `real_agents.rs`.

mod common;

use std::process::Command;

use common::{Beat, FAKE};
use serde_json::{Value, json};

/// A command agent that speaks Claude Code's stream-json (the fake agent prints it).
fn claude_like(extra: Value) -> Beat {
    let mut config = json!({
        "agents": {
            "fake": { "command": [FAKE, "{prompt}"] },
            "fakeclaude": { "command": [FAKE, "{prompt}"], "outputFormat": "claude-stream-json" }
        }
    });
    if let (Value::Object(c), Value::Object(e)) = (&mut config, extra) {
        c.extend(e);
    }
    Beat::with_config(config)
}

const INIT: &str =
    r#"print {"type":"system","subtype":"init","session_id":"sess-42","model":"m-1"}"#;
const TOOL: &str = r#"print {"type":"assistant","message":{"content":[{"type":"text","text":"Writing the file."},{"type":"tool_use","name":"Write","input":{"file_path":"/w/hello.txt","content":"hi"}}]}}"#;
const OK: &str = r#"print {"type":"result","subtype":"success","is_error":false,"result":"All done.","session_id":"sess-42","total_cost_usd":0.25,"usage":{"input_tokens":1200,"output_tokens":34,"cache_read_input_tokens":5,"cache_creation_input_tokens":7}}"#;
const LIMITED: &str = r#"print {"type":"result","subtype":"success","is_error":true,"api_error_status":429,"result":"API Error: Request rejected (429) · slow down","session_id":"sess-42","usage":{"input_tokens":0,"output_tokens":0}}"#;

#[test]
fn a_structured_agent_s_result_session_and_usage_are_recorded() {
    let beat = claude_like(json!({}));
    let script = format!("{INIT}; {TOOL}; {OK}");
    let id = beat.submit(&script, &["--agent", "fakeclaude"]);
    let t = beat.wait(&id);
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["result"], "All done.");
    assert_eq!(t["sessionId"], "sess-42");
    assert_eq!(
        t["usage"],
        json!({ "inputTokens": 1200, "outputTokens": 34, "cacheReadTokens": 5, "cacheWriteTokens": 7, "costUsd": 0.25 })
    );
    // `beat logs` keeps the raw lines; the foreground view is readable.
    assert!(beat.ok(&["logs", &id]).lines().all(|l| l.starts_with('{')));
    let fg = beat.output(&["run", "-f", "--agent", "fakeclaude", "--", &script]);
    assert_eq!(fg.status.code(), Some(0));
    // Text and tool calls, not JSON (the answer itself is in the result, shown by status).
    assert_eq!(
        String::from_utf8_lossy(&fg.stdout),
        "Writing the file.\n→ Write /w/hello.txt\n"
    );
    // TaskStatus through MCP has the new fields beside the original's.
    let mut mcp = beat.mcp();
    let s = mcp.ok("TaskStatus", json!({ "taskId": id }));
    assert_eq!(
        (s["result"].as_str(), s["sessionId"].as_str()),
        (Some("All done."), Some("sess-42"))
    );
    assert_eq!(s["usage"]["inputTokens"], 1200);
}

#[test]
fn exit_zero_without_the_agent_s_result_is_not_success() {
    let beat = claude_like(json!({}));
    let t = beat.wait(&beat.submit(&format!("{INIT}; exit 0"), &["--agent", "fakeclaude"]));
    assert_eq!(t["status"], "failed");
    assert_eq!(
        t["reason"],
        "the agent exited with code 0 but never reported a result"
    );
}

#[test]
fn a_rate_limited_run_is_queued_again_and_then_completes() {
    let beat = claude_like(json!({ "rateLimitBackoffMs": 100 }));
    let marker = beat.workdir.path().join("ran-once");
    let script = format!(
        "first-run {}; {INIT}; {LIMITED}; exit 1; else; {INIT}; {OK}",
        marker.display()
    );
    let id = beat.submit(&script, &["--agent", "fakeclaude"]);
    let t = beat.wait(&id);
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["rateLimitRetries"], 1);
    assert_eq!(
        beat.start_counts().get(&id),
        Some(&2),
        "ran again after the rate limit, once"
    );
    let names: Vec<&'static str> = beat
        .store()
        .events()
        .unwrap()
        .iter()
        .filter(|e| e.entity_id == id)
        .map(|e| e.event.name())
        .collect();
    assert_eq!(
        names,
        [
            "submitted",
            "started",
            "rate_limited",
            "started",
            "finished",
            "checkpointed"
        ]
    );
    beat.assert_fold_matches_state();
}

#[test]
fn a_rate_limited_task_shows_it_waits_and_until_when_and_gives_up_after_its_retries() {
    let beat = claude_like(json!({ "rateLimitBackoffMs": 3_600_000, "rateLimitRetries": 1 }));
    let script = format!("{INIT}; {LIMITED}; exit 1");
    let id = beat.submit(&script, &["--agent", "fakeclaude"]);
    // The status is committed before the next start could happen (in an hour).
    common::wait_until(
        "the rate-limited state",
        std::time::Duration::from_secs(20),
        || beat.status(&id)["rateLimitRetries"] == 1,
    );
    let t = beat.status(&id);
    assert_eq!(t["status"], "queued");
    let reason = t["reason"].as_str().unwrap();
    assert!(
        reason.contains("rate limited by the provider (HTTP 429)")
            && reason.contains("waiting until"),
        "{reason}"
    );
    assert!(
        t["notBefore"].as_str().is_some_and(|s| s.ends_with('Z')),
        "{t}"
    );
    beat.ok(&["cancel", &id]);
    assert_eq!(beat.status(&id)["status"], "cancelled");

    // With no retries left, a rate limit is a failure that says so.
    let none = claude_like(json!({ "rateLimitRetries": 0 }));
    let f = none.wait(&none.submit(&script, &["--agent", "fakeclaude"]));
    assert_eq!(f["status"], "failed");
    assert!(
        f["reason"]
            .as_str()
            .unwrap()
            .contains("rate limited by the provider (HTTP 429)")
    );
}

fn git(dir: &std::path::Path, args: &[&str]) {
    let ok = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
        .status
        .success();
    assert!(ok, "git {args:?}");
}

#[test]
fn every_finished_task_keeps_a_checkpoint_and_resume_carries_it() {
    let beat = Beat::new();
    let dir = beat.workdir.path();
    git(dir, &["init", "-q"]);
    std::fs::write(dir.join("tracked.txt"), "v1").unwrap();
    git(dir, &["add", "."]);
    git(dir, &["commit", "-qm", "first"]);
    std::fs::write(dir.join("tracked.txt"), "v2").unwrap();
    let id = beat.submit("lines 60 step; eprint it broke; exit 2", &[]);
    let t = beat.wait(&id);
    let cp = &t["checkpoint"];
    assert_eq!(cp["checkpointType"], "failed");
    let summary = cp["outputSummary"].as_str().unwrap();
    assert_eq!(summary.lines().count(), 50, "the last 50 lines");
    assert!(
        summary.starts_with("step 11") && summary.ends_with("step 60"),
        "{summary}"
    );
    assert!(
        cp["errorSummary"]
            .as_str()
            .unwrap()
            .contains("exited with code 2")
    );
    assert_eq!(cp["gitBranch"], "main");
    assert_eq!(cp["gitCommitSha"].as_str().map(str::len), Some(40));
    assert_eq!(cp["gitDirtyFiles"], json!(["tracked.txt"]));

    let r = beat.json(&["resume", &id, "--context", "try harder", "--json"]);
    let resumed = beat.status(r["taskId"].as_str().unwrap());
    assert_eq!(resumed["retryOf"], id.as_str());
    let prompt = resumed["prompt"].as_str().unwrap();
    assert!(prompt.starts_with("PREVIOUS TASK CONTEXT:"), "{prompt}");
    for part in [
        "Original prompt: lines 60 step; eprint it broke; exit 2",
        "step 60",
        "Git state: branch=main",
        "Modified files: tracked.txt",
        "Additional context: try harder",
    ] {
        assert!(
            prompt.contains(part),
            "resume prompt lacks {part:?}:\n{prompt}"
        );
    }
    // A cancelled queued task has a checkpoint too.
    let cancelled = Beat::with_config(json!({ "memoryReserve": 1u64 << 40 }));
    let q = cancelled.submit("print never", &[]);
    cancelled.ok(&["cancel", &q]);
    assert_eq!(
        cancelled.status(&q)["checkpoint"]["checkpointType"],
        "cancelled"
    );
}

#[test]
fn agents_are_listed_checked_and_configured_with_keys_masked() {
    // A folder on PATH, empty at first: no `claude` is installed.
    let bin = tempfile::tempdir().unwrap();
    let path = format!("{}:/usr/bin:/bin", bin.path().display());
    let beat = Beat::with_config_and_env(json!({}), &[("PATH", &path)]);
    let list = beat.json(&["agents", "list", "--json"]);
    let names: Vec<&str> = list["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["provider"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["claude", "codex", "gemini", "shell", "fake"]);
    assert_eq!(list["defaultAgent"], "fake");
    let check = beat.json(&["agents", "check", "--json"]);
    let claude = &check["agents"][0];
    assert_eq!(
        (claude["cliFound"].as_bool(), claude["authStatus"].as_str()),
        (Some(false), Some("not-configured"))
    );
    assert!(
        claude["hint"]
            .as_str()
            .unwrap()
            .contains("npm install -g @anthropic-ai/claude-code")
    );

    let key = "sk-ant-secret-0123456789";
    beat.ok(&["agents", "config", "set", "claude", "apiKey", key]);
    beat.ok(&[
        "agents",
        "config",
        "set",
        "claude",
        "model",
        "claude-test-1",
    ]);
    let shown = beat.json(&["agents", "config", "show", "claude", "--json"]);
    assert_eq!(shown["agents"][0]["storedKey"], "sk-...789");
    assert_eq!(shown["agents"][0]["model"], "claude-test-1");
    let config = std::fs::read_to_string(beat.path().join("config.json")).unwrap();
    assert!(config.contains(key), "the key is stored in config.json");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(beat.path().join("config.json"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let show = beat.ok(&["config", "show"]);
    assert!(!show.contains(key) && show.contains("sk-...789"), "{show}");
    // A task runs with the key: a stand-in `claude` says whether its environment has it.
    let claude = bin.path().join("claude");
    let script = r#"#!/bin/sh
if [ "$ANTHROPIC_API_KEY" = '@KEY@' ]; then r=key-received; else r=no-key; fi
echo "{\"type\":\"result\",\"subtype\":\"success\",\"is_error\":false,\"result\":\"$r\"}"
"#;
    std::fs::write(&claude, script.replace("@KEY@", key)).unwrap();
    std::fs::set_permissions(&claude, std::fs::Permissions::from_mode(0o755)).unwrap();
    let id = beat.submit("say hi", &["--agent", "claude"]);
    let t = beat.wait(&id);
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["result"], "key-received", "the task ran with the key");
    // Stopped first: the log is written by a thread of its own, flushed at exit.
    beat.ok(&["daemon", "stop"]);
    let log = std::fs::read_to_string(beat.path().join("daemon.log")).expect("daemon.log");
    assert!(!log.is_empty(), "the daemon logged something");
    assert!(!log.contains(key), "the key never reaches the log");
    for entry in std::fs::read_dir(beat.run_dir(&id)).unwrap().flatten() {
        let content = String::from_utf8_lossy(&std::fs::read(entry.path()).unwrap()).into_owned();
        assert!(
            !content.contains(key),
            "the key never reaches the run folder ({})",
            entry.path().display()
        );
    }
    let events: String = beat
        .store()
        .events()
        .unwrap()
        .iter()
        .map(|e| format!("{:?}", e.event))
        .collect();
    assert!(!events.contains(key), "the key never reaches the journal");

    let mut mcp = beat.mcp();
    let c = mcp.ok("ConfigureAgent", json!({ "agent": "gemini", "action": "set", "baseUrl": "http://127.0.0.1:1", "model": "gemini-x" }));
    assert!(c["message"].as_str().unwrap().contains("baseUrl"));
    let g = mcp.ok("ConfigureAgent", json!({ "agent": "gemini" }));
    assert_eq!(
        (g["model"].as_str(), g["baseUrl"].as_str()),
        (Some("gemini-x"), Some("http://127.0.0.1:1"))
    );
    let l = mcp.ok("ListAgents", json!({}));
    assert_eq!(l["agents"][0]["storedKey"], "sk-...789");
    let (bad, is_error) = mcp.call("ConfigureAgent", json!({ "agent": "nosuch" }));
    assert!(is_error && bad["error"].as_str().unwrap().contains("unknown agent"));
    beat.ok(&["agents", "config", "reset", "claude"]);
    assert!(
        !std::fs::read_to_string(beat.path().join("config.json"))
            .unwrap()
            .contains(key)
    );
}

#[test]
fn a_missing_cli_is_refused_at_submit_and_a_vanished_one_fails_at_start() {
    let beat = Beat::with_config_and_env(json!({}), &[("PATH", "/usr/bin:/bin")]);
    for (agent, package) in [
        ("claude", "@anthropic-ai/claude-code"),
        ("codex", "@openai/codex"),
        ("gemini", "@google/gemini-cli"),
    ] {
        let out = beat.output(&["run", "--agent", agent, "do something"]);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("needs the program '{agent}'")) && err.contains(package),
            "{err}"
        );
    }
    // No default agent: the error says how to set one.
    beat.ok(&["config", "reset", "defaultAgent"]);
    let out = beat.output(&["run", "x"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("beat init --agent"));

    // A CLI that disappears while its task waits: the task fails at once, saying how
    // to install it, and other tasks go on.
    let bin = tempfile::tempdir().unwrap();
    let cli = bin.path().join("vanishing-cli");
    std::fs::copy(FAKE, &cli).unwrap();
    let held = Beat::with_config(json!({
        "memoryReserve": 1u64 << 40,
        "agents": { "fake": { "command": [FAKE, "{prompt}"] }, "vanishing": { "command": [cli.display().to_string(), "{prompt}"] } }
    }));
    let doomed = held.submit("print hi", &["--agent", "vanishing"]);
    let fine = held.submit("print still-running", &[]);
    std::fs::remove_file(&cli).unwrap();
    held.config_set("memoryReserve", "0");
    let t = held.wait(&doomed);
    assert_eq!(t["status"], "failed");
    assert!(
        t["reason"]
            .as_str()
            .unwrap()
            .contains("was not found in PATH"),
        "{t}"
    );
    assert_eq!(held.wait(&fine)["status"], "completed");
}

#[test]
fn init_sets_the_default_agent_and_needs_a_terminal_to_ask() {
    let beat = Beat::new();
    beat.ok(&["init", "--agent", "shell"]);
    let config: Value =
        serde_json::from_slice(&std::fs::read(beat.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(config["defaultAgent"], "shell");
    assert_eq!(
        beat.wait(&beat.submit("echo via-default", &[]))["agent"],
        "shell"
    );
    let asked = beat.output(&["init"]);
    assert_eq!(asked.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&asked.stderr).contains("beat init --agent"));
    assert_eq!(
        beat.output(&["init", "--agent", "nosuch"]).status.code(),
        Some(2)
    );
}

/// A run whose report is larger than the channel carries (here, 2000 changed files in
/// its checkpoint) ends through its run folder instead: the daemon closes the channel,
/// the shim writes the record there, and nothing of the result is lost.
#[test]
fn a_report_too_large_for_the_channel_ends_through_the_run_folder() {
    let beat = Beat::new();
    let dir = beat.workdir.path();
    git(dir, &["init", "-q"]);
    for n in 0..2000 {
        let name = format!("an-untracked-file-with-a-long-name-number-{n:05}.txt");
        std::fs::write(dir.join(name), "x").unwrap();
    }
    let id = beat.submit("print done", &[]);
    let t = beat.wait(&id);
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["checkpoint"]["outputSummary"], "done");
    let dirty = t["checkpoint"]["gitDirtyFiles"].as_array().unwrap();
    assert_eq!(dirty.len(), 2000);
    // The record went through the folder, where the daemon read it.
    let run = backbeat_actors::agents::run_dir::RunDir {
        path: beat.run_dir(&id),
    };
    assert!(run.has_exit(), "the exit record is on the run folder");
}
