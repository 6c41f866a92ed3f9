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
fn every_listed_tool_is_callable_and_every_callable_tool_is_listed() {
    let beat = Beat::new();
    let mut mcp = beat.mcp();
    let names = tool_names(&mut mcp);
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
