//! MCP through a real client that is not ours: the official Python SDK (`mcp` from PyPI)
//! runs `tests/mcp_client.py`, which starts `beat mcp start` over stdio and does
//! initialize, tools/list, DelegateTask, TaskStatus until done, TaskLogs, and two errors.
//!
//! The Python comes from `BACKBEAT_TEST_PYTHON` (set by `.ci/run` to a venv with `mcp`),
//! else `python3`. Without the SDK the test skips locally, saying so, and fails in CI.

mod common;

use std::process::Command;

use common::{BEAT, Beat};

fn python_with_mcp() -> Option<String> {
    let python = std::env::var("BACKBEAT_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&python)
        .args(["-c", "import mcp"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(python)
}

#[test]
fn the_official_python_mcp_client_delegates_and_follows_a_task() {
    let Some(python) = python_with_mcp() else {
        common::skip(
            "the_official_python_mcp_client_delegates_and_follows_a_task",
            "no Python with the `mcp` package; set BACKBEAT_TEST_PYTHON (.ci/run does)",
        );
        return;
    };
    let beat = Beat::new();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mcp_client.py");
    let out = beat
        .command(python)
        .args([script, "--beat", BEAT])
        .output()
        .expect("running the Python MCP client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the Python MCP client failed:\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("a JSON summary");
    assert_eq!(summary["ok"], true);
    assert_eq!(summary["serverName"], "backbeat");
    let id = summary["taskId"].as_str().unwrap();
    assert_eq!(beat.status(id)["status"], "completed");
}
