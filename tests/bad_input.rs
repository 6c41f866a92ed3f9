//! Bad input gets a clear error, loses nothing, and the daemon keeps serving.

mod common;

use common::Beat;
use serde_json::json;

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_cli_refuses_bad_input_with_messages_that_say_what_to_do() {
    let beat = Beat::new();
    beat.ok(&["daemon", "start"]);
    let daemon = beat.daemon_pid();

    let unknown = beat.output(&["status", "task-00000000-0000-0000-0000-000000000000"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        stderr_of(&unknown).contains("not found") && stderr_of(&unknown).contains("beat list"),
        "{}",
        stderr_of(&unknown)
    );
    for verb in ["cancel", "retry", "logs", "wait"] {
        let out = beat.output(&[verb, "task-nope"]);
        assert_eq!(out.status.code(), Some(1), "beat {verb} of an unknown task");
        assert!(
            stderr_of(&out).contains("task-nope not found"),
            "{verb}: {}",
            stderr_of(&out)
        );
    }

    let priority = beat.output(&["run", "--priority", "P9", "print x"]);
    assert_eq!(priority.status.code(), Some(2), "a usage error exits 2");
    assert!(stderr_of(&priority).contains("P9"));

    let empty = beat.output(&["run", "--", "  "]);
    assert_eq!(
        empty.status.code(),
        Some(2),
        "an empty prompt is a usage error"
    );
    assert!(
        stderr_of(&empty).contains("prompt is empty"),
        "{}",
        stderr_of(&empty)
    );

    let agent = beat.output(&["run", "--agent", "nosuch", "print x"]);
    assert_eq!(agent.status.code(), Some(1));
    assert!(
        stderr_of(&agent).contains("unknown agent 'nosuch'")
            && stderr_of(&agent).contains("Known agents: claude, codex, gemini, shell, fake"),
        "{}",
        stderr_of(&agent)
    );

    beat.config_set(
        "agents.ghost.command",
        r#"["/nonexistent/ghost-cli", "{prompt}"]"#,
    );
    let missing = beat.output(&["run", "--agent", "ghost", "hello"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr_of(&missing).contains("was not found"),
        "{}",
        stderr_of(&missing)
    );

    let dir = beat.output(&["run", "-w", "/nonexistent/dir", "print x"]);
    assert_eq!(dir.status.code(), Some(1));
    assert!(
        stderr_of(&dir).contains("/nonexistent/dir") && stderr_of(&dir).contains("cannot be used"),
        "{}",
        stderr_of(&dir)
    );

    let timeout = beat.output(&["run", "--timeout", "5", "print x"]);
    assert_eq!(
        timeout.status.code(),
        Some(2),
        "a time limit out of range is a usage error"
    );
    assert!(
        stderr_of(&timeout).contains("from 1s to 24h"),
        "{}",
        stderr_of(&timeout)
    );

    let key = beat.output(&["config", "set", "noSuchKey", "1"]);
    assert_eq!(key.status.code(), Some(2));
    let value = beat.output(&["config", "set", "maxWorkers", "lots"]);
    assert_eq!(value.status.code(), Some(2));
    assert!(stderr_of(&value).contains("whole number"));

    // Nothing was created by the refused requests, and the same daemon still serves.
    assert_eq!(beat.json(&["list", "--json"]), json!([]));
    assert_eq!(beat.daemon_pid(), daemon);
    let id = beat.submit("print still-serving", &[]);
    assert_eq!(beat.wait(&id)["status"], "completed");
}

#[test]
fn mcp_errors_are_is_error_results_and_the_server_keeps_serving() {
    let beat = Beat::new();
    let mut mcp = beat.mcp();
    let cases = [
        (
            "TaskStatus",
            json!({ "taskId": "task-unknown" }),
            "not found",
        ),
        (
            "CancelTask",
            json!({ "taskId": "task-unknown" }),
            "not found",
        ),
        (
            "DelegateTask",
            json!({ "prompt": "x", "priority": "P9" }),
            "Invalid arguments for DelegateTask",
        ),
        ("DelegateTask", json!({ "prompt": "" }), "prompt is empty"),
        (
            "DelegateTask",
            json!({ "prompt": "x", "agent": "nosuch" }),
            "unknown agent",
        ),
        (
            "DelegateTask",
            json!({ "prompt": "x", "workingDirectory": "/nonexistent/dir" }),
            "cannot be used",
        ),
        (
            "DelegateTask",
            json!({ "prompt": "x", "timeout": "soon" }),
            "Invalid arguments",
        ),
        (
            "DelegateTask",
            json!({ "prompt": "x", "bogusField": 1 }),
            "unknown field `bogusField`",
        ),
        ("DelegateTask", json!({}), "missing field `prompt`"),
        ("NoSuchTool", json!({}), "Unknown tool: NoSuchTool"),
    ];
    for (tool, args, expected) in cases {
        let (v, is_error) = mcp.call(tool, args.clone());
        assert!(is_error, "{tool} {args} must be an isError result: {v}");
        let message = v["error"].as_str().unwrap_or_default();
        assert!(message.contains(expected), "{tool} {args}: {message}");
        if tool != "NoSuchTool" {
            assert_eq!(v["success"], false);
        }
    }
    // A line that is not JSON: -32700; a tools/call whose params are wrong: -32602.
    mcp.send_raw("this is not json");
    mcp.send_raw(r#"{"jsonrpc":"2.0","id":"x","method":"tools/call","params":{"name":42}}"#);
    let reply = mcp.read_message();
    assert_eq!(reply["error"]["code"], -32700, "{reply}");
    let reply = mcp.read_message();
    assert_eq!(
        (&reply["id"], &reply["error"]["code"]),
        (&json!("x"), &json!(-32602)),
        "{reply}"
    );
    // A method that does not exist: "method not found", for that request's id.
    mcp.send_raw(r#"{"jsonrpc":"2.0","id":"m","method":"no/such/method"}"#);
    let reply = mcp.read_message();
    assert_eq!(reply["id"], "m", "{reply}");
    assert_eq!(reply["error"]["code"], -32601, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("no/such/method"),
        "{reply}"
    );
    let d = mcp.ok("DelegateTask", json!({ "prompt": "print ok" }));
    let w = mcp.ok("WaitTask", json!({ "taskId": d["taskId"] }));
    assert_eq!(w["status"], "completed");
    assert_eq!(
        beat.json(&["list", "--json"]).as_array().unwrap().len(),
        1,
        "only the valid task exists"
    );
}

/// Each malformed input gets the JSON-RPC error that names what is wrong with it, and the
/// server goes on serving.
#[test]
fn each_malformed_request_gets_its_own_json_rpc_error() {
    let beat = Beat::new();
    let mut mcp = beat.mcp();
    let cases = [
        ("this is not json", json!(null), -32700),
        (
            r#"{"jsonrpc":"2.0","id":"n","method":"tools/call","params":{"name":42}}"#,
            json!("n"),
            -32602,
        ),
        (
            r#"{"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"name":"TaskStatus","arguments":[1]}}"#,
            json!("a"),
            -32602,
        ),
        (
            r#"{"jsonrpc":"2.0","id":"u","method":"no/such"}"#,
            json!("u"),
            -32601,
        ),
    ];
    for (line, id, code) in cases {
        mcp.send_raw(line);
        let reply = mcp.read_any_message();
        assert_eq!(reply["id"], id, "{line}: {reply}");
        assert_eq!(reply["error"]["code"], code, "{line}: {reply}");
    }
    let d = mcp.ok("DelegateTask", json!({ "prompt": "print ok" }));
    assert_eq!(
        mcp.ok("WaitTask", json!({ "taskId": d["taskId"] }))["status"],
        "completed"
    );
}

#[test]
fn the_advertised_schemas_match_what_is_accepted() {
    let beat = Beat::new();
    let mut mcp = beat.mcp();
    let tools = mcp.request("tools/list", json!({}));
    let delegate = tools["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "DelegateTask")
        .unwrap()
        .clone();
    let schema = &delegate["inputSchema"];
    assert_eq!(schema["type"], "object");
    assert_eq!(schema["required"], json!(["prompt"]));
    assert_eq!(
        schema["additionalProperties"], false,
        "unknown fields are refused, so the schema says so"
    );
    assert_eq!(schema["properties"]["timeout"]["minimum"], 1000);
    assert_eq!(schema["properties"]["timeout"]["maximum"], 86400000);
    let priorities = schema["properties"]["priority"].to_string();
    for p in ["P0", "P1", "P2"] {
        assert!(priorities.contains(p), "{priorities}");
    }
    // The status tool's id pattern admits real ids (the original's did not, spec 3.0).
    let status = tools["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "TaskStatus")
        .unwrap();
    assert_eq!(
        status["inputSchema"]["properties"]["taskId"]["pattern"],
        "^task-"
    );
    // Values at the advertised bounds are accepted.
    let ok = mcp.ok(
        "DelegateTask",
        json!({ "prompt": "print edge", "timeout": 1000, "maxOutputBuffer": 1024 }),
    );
    assert_eq!(
        beat.wait(ok["taskId"].as_str().unwrap())["status"],
        "completed"
    );
}

#[test]
fn mcp_start_exits_when_its_client_closes_stdin() {
    let beat = Beat::new();
    let mcp = beat.mcp();
    let status = mcp.close();
    assert!(
        status.success(),
        "beat mcp start exits cleanly on EOF: {status}"
    );
    // The daemon it started stays up for other clients.
    assert!(beat.daemon_pid().is_some());
}
