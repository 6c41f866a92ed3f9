//! The front ends as users meet them: the MCP tool table, the stdio proxy and the CLI
//! across daemon restarts, closed pipes, JSON output, exit codes and error messages.
//! Each test drives the real `beat` binary and its daemon (tests/common/mod.rs).

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::json;

fn tool_names(mcp: &mut McpSession) -> BTreeSet<String> {
    let tools = mcp.request("tools/list", json!({}));
    tools["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn resume_task_is_listed_and_callable_through_mcp() {
    let beat = Beat::new();
    let mut mcp = beat.mcp();
    let names = tool_names(&mut mcp);
    assert!(names.contains("ResumeTask"), "{names:?}");
    let d = mcp.ok("DelegateTask", json!({ "prompt": "print first; exit 3" }));
    let id = d["taskId"].as_str().unwrap().to_string();
    let w = mcp.ok("WaitTask", json!({ "taskId": id }));
    assert_eq!(w["status"], "failed");
    let r = mcp.ok(
        "ResumeTask",
        json!({ "taskId": id, "additionalContext": "try harder" }),
    );
    let new_id = r["newTaskId"].as_str().unwrap().to_string();
    assert_ne!(new_id, id);
    let s = mcp.ok("TaskStatus", json!({ "taskId": new_id }));
    assert_eq!(s["task"]["retryOf"], id.as_str());
    assert!(
        s["task"]["prompt"].as_str().unwrap().contains("try harder"),
        "{s}"
    );
}

#[test]
fn every_listed_tool_is_dispatched_to_its_own_argument_parser() {
    let beat = Beat::new();
    let mut mcp = beat.mcp();
    let names = tool_names(&mut mcp);
    // (That no tool is callable yet unlisted holds by construction, one table for both;
    // the unit test every_tool_is_declared_once checks the table.)
    for name in &names {
        // Arguments no tool accepts: a listed tool answers with its own parse error.
        let (v, is_error) = mcp.call(name, json!({ "noSuchField": 1 }));
        assert!(is_error, "{name} accepted an unknown field: {v}");
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .contains(&format!("Invalid arguments for {name}")),
            "{name}: {v}"
        );
    }
    let (v, is_error) = mcp.call("NoSuchTool", json!({}));
    assert!(is_error);
    assert_eq!(v["code"], "INVALID_TOOL", "{v}");
}

fn kill9(pid: u32) {
    // SAFETY: kill(2) on the daemon's PID, read from `beat daemon status`.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
}

#[test]
fn an_mcp_session_carries_on_after_the_daemon_stops_or_restarts() {
    let beat = Beat::new();
    let mut mcp = beat.mcp();
    mcp.ok("TaskStatus", json!({}));
    let first = beat.daemon_pid().expect("a daemon runs");

    // Stopped: the next call starts a daemon again, behind the same session.
    beat.ok(&["daemon", "stop"]);
    assert_eq!(beat.daemon_pid(), None);
    let agents = mcp.ok("ListAgents", json!({}));
    assert_eq!(agents["defaultAgent"], "fake");
    let second = beat.daemon_pid().expect("the proxy started a daemon");
    assert_ne!(first, second);

    // Restarted by someone else: the session moves to the new daemon.
    beat.ok(&["daemon", "stop"]);
    beat.ok(&["daemon", "start"]);
    let third = beat.daemon_pid().expect("restarted");
    assert_ne!(second, third);
    let d = mcp.ok("DelegateTask", json!({ "prompt": "print after-restart" }));
    let id = d["taskId"].as_str().unwrap().to_string();
    let w = mcp.ok("WaitTask", json!({ "taskId": id }));
    assert_eq!(w["status"], "completed");
    // The replayed handshake's reply never reached the client: the next reply read is
    // the answer to the next request.
    let tools = mcp.request("tools/list", json!({}));
    assert!(tools["result"]["tools"].is_array(), "{tools}");
    assert_eq!(mcp.close().code(), Some(0));
}

#[test]
fn a_call_in_flight_when_the_daemon_dies_gets_an_error_saying_to_retry() {
    let beat = Beat::new();
    let mut mcp = beat.mcp();
    let pidfile = beat.workdir.path().join("agent.pid");
    let d = mcp.ok(
        "DelegateTask",
        json!({ "prompt": format!("pidfile {}; sleep 30000", pidfile.display()) }),
    );
    let id = d["taskId"].as_str().unwrap().to_string();
    read_pidfile(&pidfile);
    mcp.send_raw(
        &json!({ "jsonrpc": "2.0", "id": 1000, "method": "tools/call",
                 "params": { "name": "WaitTask", "arguments": { "taskId": id } } })
        .to_string(),
    );
    // The daemon has the WaitTask once the proxy forwarded it; a status call answered
    // after it proves that (replies come in order of the daemon's answers, so read both).
    mcp.send_raw(
        &json!({ "jsonrpc": "2.0", "id": 1001, "method": "tools/call",
                 "params": { "name": "TaskStatus", "arguments": { "taskId": id } } })
        .to_string(),
    );
    let status = mcp.read_message();
    assert_eq!(status["id"], 1001, "{status}");
    kill9(beat.daemon_pid().unwrap());
    let lost = mcp.read_message();
    assert_eq!(lost["id"], 1000, "{lost}");
    assert_eq!(lost["result"]["isError"], true, "{lost}");
    let text = lost["result"]["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("retry"), "{text}");

    // Retrying works: a new daemon adopts the running agent and answers.
    let s = mcp.ok("TaskStatus", json!({ "taskId": id }));
    assert_eq!(s["status"], "running", "{s}");
    mcp.ok("CancelTask", json!({ "taskId": id }));
}

/// True once process `pid` holds a socket open (a CLI connected to the daemon).
fn has_socket(pid: u32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.flatten().any(|fd| {
                std::fs::read_link(fd.path())
                    .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
            })
        })
        .unwrap_or(false)
}

#[test]
fn wait_and_logs_follow_keep_going_across_a_daemon_restart() {
    let beat = Beat::new();
    let pidfile = beat.workdir.path().join("agent.pid");
    // The agent ends only after the restart (a file, not a guessed time).
    let go = beat.workdir.path().join("go");
    let id = beat.submit(
        &format!(
            "print before; pidfile {}; await {}; print after-restart",
            pidfile.display(),
            go.display()
        ),
        &[],
    );
    read_pidfile(&pidfile);
    let wait = beat
        .cmd(&["wait", "--json", &id])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let logs = beat
        .cmd(&["logs", "-f", &id])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(
        "both commands connected",
        std::time::Duration::from_secs(10),
        || has_socket(wait.id()) && has_socket(logs.id()),
    );
    // A restart: stopped, and started again by the commands that wait.
    beat.ok(&["daemon", "stop"]);
    std::fs::write(&go, "").unwrap();
    let wait = wait.wait_with_output().unwrap();
    assert_eq!(
        wait.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&wait.stderr)
    );
    let record: serde_json::Value = serde_json::from_slice(&wait.stdout).unwrap();
    assert_eq!(record["status"], "completed");
    let logs = logs.wait_with_output().unwrap();
    assert_eq!(
        logs.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&logs.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&logs.stdout),
        "before\nafter-restart\n",
        "stderr: {}",
        String::from_utf8_lossy(&logs.stderr)
    );
}

#[test]
fn a_closed_pipe_ends_the_cli_quietly() {
    let beat = Beat::new();
    for _ in 0..3 {
        let id = beat.submit("print x", &[]);
        beat.wait(&id);
    }
    for args in [&["list", "--json"][..], &["list"][..]] {
        let mut child = beat
            .cmd(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The reader goes away before beat writes (as `| head -0` would).
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "beat {args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(0), "beat {args:?}: {stderr}");
    }
}

#[test]
fn run_foreground_json_prints_one_json_document_and_the_output_on_stderr() {
    let beat = Beat::new();
    let out = beat.output(&["run", "-f", "--json", "--", "print hello-from-agent"]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let record: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {stdout}"));
    assert_eq!(record["status"], "completed");
    assert!(!stdout.contains("hello-from-agent\n"), "{stdout}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("hello-from-agent"),
        "the agent's output goes to stderr"
    );
}

#[test]
fn a_failed_foreground_run_says_why_on_stderr() {
    let beat = Beat::new();
    let out = beat.output(&["run", "-f", "--timeout", "1s", "--", "sleep 10000"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("timed out after 1 s"), "{stderr}");
    let exit = beat.output(&["run", "-f", "--", "eprint oops; exit 4"]);
    assert_eq!(exit.status.code(), Some(4));
    let stderr = String::from_utf8_lossy(&exit.stderr);
    assert!(stderr.contains("exited with code 4"), "{stderr}");
}

#[test]
fn initialize_carries_a_usage_guide_naming_every_tool_and_the_real_version() {
    use std::io::{BufRead, BufReader, Write};
    let beat = Beat::new();
    let mut child = beat
        .cmd(&["mcp", "start"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut ask = |msg: serde_json::Value| {
        writeln!(stdin, "{msg}").unwrap();
        if msg["id"] == 1 {
            // The handshake's end, right after its reply.
            let note = json!({ "jsonrpc": "2.0", "method": "notifications/initialized" });
            writeln!(stdin, "{note}").unwrap();
        }
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        serde_json::from_str::<serde_json::Value>(&line).unwrap()
    };
    let init = ask(
        json!({ "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": { "name": "t", "version": "0" } } }),
    );
    let guide = init["result"]["instructions"].as_str().unwrap().to_string();
    let version = init["result"]["serverInfo"]["version"]
        .as_str()
        .unwrap()
        .to_string();
    let tools = ask(json!({ "jsonrpc": "2.0", "id": 2, "method": "tools/list" }));
    for t in tools["result"]["tools"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap();
        assert!(
            guide.contains(&format!("- {name}: ")),
            "{name} missing from:\n{guide}"
        );
    }
    for words in [
        "dependsOn",
        "continueFrom",
        "returns a taskId at once",
        "WaitTask",
    ] {
        assert!(guide.contains(words), "{words} missing from:\n{guide}");
    }
    let _ = child.kill();
    let _ = child.wait();
    let cli = beat.ok(&["--version"]);
    assert_eq!(cli.trim(), format!("beat {version}"));
    assert_eq!(beat.ok(&["-v"]), cli, "-v prints the version too");
    assert!(version.starts_with(env!("CARGO_PKG_VERSION")), "{version}");
}

#[test]
fn malformed_json_rpc_gets_the_right_error_codes() {
    let beat = Beat::new();
    let mut mcp = beat.mcp();
    mcp.send_raw("this is not json");
    let parse = mcp.read_message();
    assert_eq!(parse["error"]["code"], -32700, "{parse}");
    assert_eq!(parse["id"], serde_json::Value::Null);
    for arguments in [json!(5), json!("text"), json!([1])] {
        mcp.send_raw(
            &json!({ "jsonrpc": "2.0", "id": 77, "method": "tools/call",
                     "params": { "name": "TaskStatus", "arguments": arguments } })
            .to_string(),
        );
        let reply = mcp.read_message();
        assert_eq!(reply["id"], 77, "{reply}");
        assert_eq!(reply["error"]["code"], -32602, "{arguments}: {reply}");
    }
    // The session goes on.
    mcp.ok("TaskStatus", json!({}));
}

#[test]
fn a_daemon_that_cannot_start_logs_why_and_the_cli_says_it() {
    let beat = Beat::new();
    // A folder where the database file should be: SQLite cannot open it.
    std::fs::create_dir(beat.path().join("beat.db")).unwrap();
    let out = beat.output(&["list"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the daemon failed to start") && stderr.contains("unable to open database"),
        "{stderr}"
    );
    let log = std::fs::read_to_string(beat.path().join("daemon.log")).unwrap();
    assert!(
        log.contains("daemon failed to start:") && log.contains("unable to open database"),
        "{log}"
    );
}

#[test]
fn a_corrupt_config_is_refused_by_the_daemon_and_the_cli_with_line_and_column() {
    let beat = Beat::new();
    let config = beat.path().join("config.json");
    std::fs::write(&config, "{\n  \"timeout\": 5000,,\n}\n").unwrap();
    for args in [&["list"][..], &["config", "show"][..]] {
        let out = beat.output(args);
        assert_eq!(out.status.code(), Some(1), "beat {args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("config.json") && stderr.contains("line 2 column"),
            "beat {args:?}: {stderr}"
        );
    }
    assert_eq!(beat.daemon_pid(), None, "the daemon refused to start");

    // Corrupted while a daemon runs: the tools that read it refuse it too.
    std::fs::write(
        &config,
        json!({ "defaultAgent": "fake", "memoryReserve": 0,
                "agents": { "fake": { "command": [FAKE, "{prompt}"] } } })
        .to_string(),
    )
    .unwrap();
    beat.ok(&["daemon", "start"]);
    std::fs::write(&config, "{ \"timeout\": }").unwrap();
    let out = beat.output(&["agents", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 1 column"));
    // Tasks keep the settings read before (the fake agent stays the default).
    let id = beat.submit("print still-configured", &[]);
    assert_eq!(beat.wait(&id)["status"], "completed");
}

#[test]
fn config_show_reports_what_the_daemon_uses_and_where_the_shell_differs() {
    let beat = Beat::with_config_and_env(json!({}), &[("RATE_LIMIT_RETRIES", "7")]);
    beat.ok(&["daemon", "start"]);
    let out = beat
        .cmd(&["config", "show", "--json"])
        .env("RATE_LIMIT_RETRIES", "2")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let retries = &shown["settings"]["rateLimitRetries"];
    assert_eq!(retries["value"], 7, "{shown}");
    assert_eq!(retries["source"], "environment (RATE_LIMIT_RETRIES)");
    let differs = shown["environmentDiffers"].to_string();
    assert!(
        differs.contains("RATE_LIMIT_RETRIES is '2' in this shell but '7' for the daemon"),
        "{differs}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("Restart it"));
    // The same shell as the daemon's: nothing differs.
    let same = beat.json(&["config", "show", "--json"]);
    assert_eq!(same["environmentDiffers"], json!([]), "{same}");
}

#[test]
fn the_originals_data_dir_and_database_path_variables_are_honoured() {
    let beat = Beat::new();
    // The original's own database in the folder: never read, never changed.
    let original = beat.path().join("backbeat.db");
    std::fs::write(&original, b"the original's data").unwrap();
    let via_data_dir = |args: &[&str]| {
        beat.cmd(args)
            .env_remove("BACKBEAT_HOME")
            .env("BACKBEAT_DATA_DIR", beat.path())
            .output()
            .unwrap()
    };
    let out = via_data_dir(&["run", "--json", "--", "print via-data-dir"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["taskId"]
        .as_str()
        .unwrap()
        .to_string();
    // The same folder named by BACKBEAT_HOME: the same daemon and database.
    assert_eq!(beat.wait(&id)["status"], "completed");
    assert!(beat.path().join("beat.db").exists());
    assert_eq!(std::fs::read(&original).unwrap(), b"the original's data");
    // Both set: BACKBEAT_HOME wins.
    let other = tempfile::tempdir().unwrap();
    let status = beat
        .cmd(&["daemon", "status", "--json"])
        .env("BACKBEAT_DATA_DIR", other.path())
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["home"], beat.path().display().to_string());

    // BACKBEAT_DATABASE_PATH: the database file, wherever it is (its folder made).
    let fresh = Beat::new();
    let db = fresh.workdir.path().join("data").join("tasks.db");
    let out = fresh
        .cmd(&["run", "--json", "--", "print elsewhere"])
        .env("BACKBEAT_DATABASE_PATH", &db)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        db.exists(),
        "the database is where BACKBEAT_DATABASE_PATH says"
    );
    assert!(!fresh.path().join("beat.db").exists());

    // Pointed at the original's database file: refused, with what to do.
    let refused = beat
        .cmd(&["list"])
        .env("BACKBEAT_DATABASE_PATH", &original)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("original Backbeat's database") && stderr.contains("Name another file"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&original).unwrap(), b"the original's data");
}

#[test]
fn an_unusable_home_gets_an_error_naming_it_and_what_to_do() {
    use std::os::unix::fs::PermissionsExt;
    let beat = Beat::new();
    let file = beat.workdir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let out = beat
        .cmd(&["list"])
        .env("BACKBEAT_HOME", &file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&file.display().to_string()) && stderr.contains("is a file, not a folder"),
        "{stderr}"
    );

    // A home that cannot be created: under a folder nobody may write (for root, /sys).
    let locked = beat.workdir.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).unwrap();
    let parent = if unsafe { libc::geteuid() } == 0 {
        std::path::PathBuf::from("/sys")
    } else {
        locked.clone()
    };
    let home = parent.join("backbeat-home");
    let out = beat
        .cmd(&["list"])
        .env("BACKBEAT_HOME", &home)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "cannot create the Backbeat home {}",
            home.display()
        )) && stderr.contains("set BACKBEAT_HOME to a folder you can write"),
        "{stderr}"
    );

    // A home its owner made read-only: left so, and reported.
    std::fs::set_permissions(beat.path(), std::fs::Permissions::from_mode(0o500)).unwrap();
    let out = beat.output(&["list"]);
    let mode = std::fs::metadata(beat.path()).unwrap().permissions().mode() & 0o777;
    std::fs::set_permissions(beat.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&beat.path().display().to_string())
            && stderr.contains("cannot be written (mode 0500)"),
        "{stderr}"
    );
    assert_eq!(mode, 0o500, "the home's mode is left as its owner set it");
}

/// Every `...At` time anywhere in a CLI JSON document is an ISO-8601 string.
fn assert_iso_times(v: &serde_json::Value, path: &str) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, x) in map {
                if k.ends_with("At") && !x.is_null() {
                    assert!(x.is_string(), "{path}.{k} is not an ISO time: {x}");
                }
                assert_iso_times(x, &format!("{path}.{k}"));
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|x| assert_iso_times(x, path)),
        _ => {}
    }
}

#[test]
fn the_small_things_of_the_command_line() {
    let beat = Beat::new();
    // A bare `beat` asks for help: on stdout, exit 0.
    let bare = beat.output(&[]);
    assert_eq!(bare.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&bare.stdout).contains("Usage: beat"));
    // Usage errors exit 2.
    assert_eq!(
        beat.output(&["run", "--timeout", "10", "x"]).status.code(),
        Some(2)
    );
    assert_eq!(beat.output(&["run", ""]).status.code(), Some(2));
    // An agent that does not exist cannot become the default.
    let nope = beat.output(&["config", "set", "defaultAgent", "nope"]);
    assert_eq!(nope.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&nope.stderr).contains("unknown agent 'nope'"));
    beat.ok(&["config", "set", "defaultAgent", "fake"]);
    // agents list and check print the same shape.
    let list = beat.json(&["agents", "list", "--json"]);
    let check = beat.json(&["agents", "check", "--json"]);
    assert_eq!(
        list["agents"].as_array().unwrap().len(),
        check["agents"].as_array().unwrap().len()
    );
    assert_eq!(list["defaultAgent"], check["defaultAgent"]);

    // Cancelled without a reason: said once.
    let pidfile = beat.workdir.path().join("agent.pid");
    let running = beat.submit(&format!("pidfile {}; sleep 30000", pidfile.display()), &[]);
    let blocked = beat.submit("print never", &["--deps", &running]);
    read_pidfile(&pidfile);
    beat.ok(&["cancel", &blocked]);
    beat.ok(&["cancel", &running]);
    for id in [&running, &blocked] {
        assert_eq!(beat.wait(id)["reason"], "cancelled by the user", "{id}");
    }

    // Every time in CLI JSON is ISO-8601, the checkpoint's too.
    let done = beat.submit("print result", &[]);
    beat.wait(&done);
    let status = beat.status(&done);
    assert!(status["checkpoint"].is_object(), "{status}");
    assert_iso_times(&status, "status");
    assert_iso_times(&beat.json(&["list", "--json"]), "list");

    // A shell prompt that starts with `-` is a command, not an option of sh.
    let dash = beat.output(&[
        "run",
        "-f",
        "--agent",
        "shell",
        "--",
        "-x 2>/dev/null; echo ran",
    ]);
    assert_eq!(String::from_utf8_lossy(&dash.stdout), "ran\n");
    assert!(!String::from_utf8_lossy(&dash.stderr).contains("Illegal option"));
}

#[test]
fn small_things_of_the_mcp_tools() {
    let beat = Beat::new();
    let mut mcp = beat.mcp();
    // Every dependency completed already: the new task is not reported blocked.
    let first = mcp.ok("DelegateTask", json!({ "prompt": "print one" }));
    let first = first["taskId"].as_str().unwrap().to_string();
    mcp.ok("WaitTask", json!({ "taskId": first }));
    let second = mcp.ok(
        "DelegateTask",
        json!({ "prompt": "print two", "dependsOn": [first] }),
    );
    assert_ne!(second["status"], "blocked", "{second}");

    let tools = mcp.request("tools/list", json!({}));
    let tool = |name: &str| {
        tools["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .unwrap()
            .clone()
    };
    let (status, cancel) = (tool("PipelineStatus"), tool("CancelPipeline"));
    assert!(
        status["inputSchema"]["properties"].get("reason").is_none(),
        "{status}"
    );
    assert!(
        cancel["inputSchema"]["properties"].get("reason").is_some(),
        "{cancel}"
    );
    assert_ne!(status["description"], cancel["description"]);
    assert_ne!(
        status["inputSchema"]["description"],
        cancel["inputSchema"]["description"]
    );
}

/// `beat mcp start`, an `initialize`, then `notifications/initialized` and `tools/list`
/// on the same session: the raw `initialize` answer line, once the session is closed.
fn initialize_and_list_tools(beat: &Beat, protocol_version: &str) -> String {
    use std::io::{BufRead, BufReader, Write};
    let mut child = beat
        .cmd(&["mcp", "start"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let initialize = json!({ "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": protocol_version, "capabilities": {},
        "clientInfo": { "name": "t", "version": "0" } } });
    writeln!(stdin, "{initialize}").unwrap();
    let mut answer = String::new();
    stdout.read_line(&mut answer).unwrap();
    writeln!(
        stdin,
        "{}",
        json!({ "jsonrpc": "2.0", "method": "notifications/initialized" })
    )
    .unwrap();
    writeln!(
        stdin,
        "{}",
        json!({ "jsonrpc": "2.0", "id": 2, "method": "tools/list" })
    )
    .unwrap();
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let tools: serde_json::Value = serde_json::from_str(&line).unwrap();
    // The next line is the daemon's answer to id 2: never a second `initialize` answer.
    assert_eq!(tools["id"], 2, "{line}");
    assert!(
        tools["result"]["tools"]
            .as_array()
            .is_some_and(|t| !t.is_empty()),
        "{line}"
    );
    drop(stdin);
    assert!(child.wait().unwrap().success());
    answer
}

#[test]
fn the_initialize_answered_while_the_daemon_starts_is_the_daemons_own_answer() {
    // A version the server speaks, and one it does not (the negotiation falls back).
    for (asked, agreed) in [("2025-06-18", "2025-06-18"), ("1999-01-01", "")] {
        let beat = Beat::new();
        assert_eq!(beat.daemon_pid(), None);
        // No daemon runs: `mcp start` starts one and answers `initialize` itself.
        let cold = initialize_and_list_tools(&beat, asked);
        let pid = beat.daemon_pid().expect("the daemon it started runs on");
        // The daemon runs: it answers `initialize`.
        let warm = initialize_and_list_tools(&beat, asked);
        assert_eq!(beat.daemon_pid(), Some(pid));
        assert_eq!(cold, warm, "the client sees the same answer either way");
        let v: serde_json::Value = serde_json::from_str(&cold).unwrap();
        let version = v["result"]["protocolVersion"].as_str().unwrap_or_default();
        if agreed.is_empty() {
            assert!(!version.is_empty() && version != asked, "{cold}");
        } else {
            assert_eq!(version, agreed, "{cold}");
        }
        assert_eq!(v["result"]["serverInfo"]["name"], "backbeat", "{cold}");
    }
}

#[test]
fn a_session_answered_before_its_daemon_started_calls_tools_and_survives_a_restart() {
    let beat = Beat::new();
    let mut mcp = beat.mcp(); // cold: `initialize` answered by `mcp start`
    let id = mcp.ok(
        "DelegateTask",
        json!({ "prompt": "print cold", "agent": "fake" }),
    )["taskId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        mcp.ok("WaitTask", json!({ "taskId": id }))["task"]["status"],
        "completed"
    );
    beat.kill_daemon();
    // The next call reaches a new daemon, handshake replayed.
    let v = mcp.ok("TaskStatus", json!({ "taskId": id }));
    assert_eq!(v["status"], "completed", "{v}");
}

#[test]
fn mcp_start_says_why_when_the_daemon_it_starts_fails() {
    use std::io::{BufRead, BufReader, Write};
    let beat = Beat::new();
    // A folder where the database file should be: SQLite cannot open it.
    std::fs::create_dir(beat.path().join("beat.db")).unwrap();
    let mut child = beat
        .cmd(&["mcp", "start"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for message in [
        json!({ "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": { "name": "t", "version": "0" } } }),
        json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }),
        json!({ "jsonrpc": "2.0", "id": 2, "method": "tools/list" }),
    ] {
        // The process may be gone before the last line: that is what is tested.
        let _ = writeln!(stdin, "{message}");
    }
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    let mut line = String::new();
    while stdout.read_line(&mut line).unwrap_or(0) > 0 {
        lines.push(std::mem::take(&mut line));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{lines:?}");
    assert!(
        lines.iter().all(|l| !l.contains("\"id\":2")),
        "no answer from a daemon that never ran: {lines:?}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the daemon failed to start") && stderr.contains("unable to open database"),
        "{stderr}"
    );
}

#[test]
fn a_task_list_summary_holds_what_beat_list_shows_of_the_same_tasks() {
    let beat = Beat::new();
    let first = beat.submit("print one", &[]);
    let second = beat.submit("print two", &[]);
    // A preview cut between multi-byte characters, a newline and quotes in it.
    let long = format!("print \"ü\"\n{}", "é€😀".repeat(30));
    let third = beat.submit(&long, &[]);
    for id in [&first, &second, &third] {
        beat.wait(id);
    }
    let mut mcp = beat.mcp();
    let full = mcp.ok("TaskStatus", json!({}));
    let summary = mcp.ok("TaskStatus", json!({ "summary": true }));
    let (full, summary) = (
        full["tasks"].as_array().unwrap().clone(),
        summary["tasks"].as_array().unwrap().clone(),
    );
    assert_eq!(summary.len(), 3);
    assert!(
        summary[0]["promptPreview"]
            .as_str()
            .is_some_and(|p| p.ends_with("...") && p.chars().count() == 53),
        "{}",
        summary[0]
    );
    let keys: BTreeSet<String> = [
        "id",
        "status",
        "agent",
        "createdAt",
        "reason",
        "role",
        "owner",
        "promptPreview",
    ]
    .map(String::from)
    .into();
    for (f, s) in full.iter().zip(&summary) {
        let got: BTreeSet<String> = s.as_object().unwrap().keys().cloned().collect();
        assert_eq!(got, keys, "{s}");
        for k in &keys {
            assert_eq!(f[k], s[k], "{k} differs between {f} and {s}");
        }
    }
    // The table, read from the summaries, is the table of the full records, byte for
    // byte, newest first.
    let table = beat.ok(&["list"]);
    assert_eq!(table, table_of(&full), "{table}");
    let (at_second, at_first) = (table.find(&second).unwrap(), table.find(&first).unwrap());
    assert!(at_second < at_first, "{table}");
    assert!(
        table.contains("print one") && table.contains("completed"),
        "{table}"
    );
    assert_eq!(
        beat.ok(&["status"]),
        table,
        "beat status without an id lists"
    );
}

/// `beat list`'s table made from full records (TaskStatus without `summary`), as the
/// CLI printed it before it read summaries.
fn table_of(records: &[serde_json::Value]) -> String {
    let mut out = format!(
        "{:<41}  {:<9}  {:<8}  {:<24}  PROMPT\n",
        "ID", "STATUS", "AGENT", "CREATED"
    );
    for t in records {
        let created = chrono::DateTime::from_timestamp_millis(t["createdAt"].as_i64().unwrap())
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let prompt = t["prompt"].as_str().unwrap();
        let preview = if prompt.chars().count() > 50 {
            format!("{}...", prompt.chars().take(50).collect::<String>())
        } else {
            prompt.to_string()
        };
        let owned = match (t["role"].as_str(), t["owner"]["id"].as_str()) {
            (Some(role), Some(owner)) => format!("[{role} of {owner}] "),
            _ => String::new(),
        };
        out.push_str(&format!(
            "{:<41}  {:<9}  {:<8}  {:<24}  {owned}{}\n",
            t["id"].as_str().unwrap(),
            t["status"].as_str().unwrap(),
            t["agent"].as_str().unwrap(),
            created,
            preview.replace('\n', " "),
        ));
    }
    out
}
