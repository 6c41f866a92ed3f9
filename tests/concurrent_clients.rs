//! Many front ends submitting at the same moment: every task runs exactly once (with the
//! original, 100 tasks submitted from the CLI ran 174 to 193 times), and the first
//! commands of several front ends starting the daemon together end with one daemon.

mod common;

use std::sync::{Arc, Barrier};

use common::Beat;
use serde_json::json;

const PER_CLIENT: usize = 100;

#[test]
fn four_cli_and_mcp_clients_submitting_100_tasks_each_run_every_task_once() {
    let beat = Arc::new(Beat::new());
    beat.ok(&["daemon", "start"]);
    let barrier = Arc::new(Barrier::new(4));
    let mut handles = Vec::new();
    for client in 0..4 {
        let beat = beat.clone();
        let barrier = barrier.clone();
        handles.push(std::thread::spawn(move || {
            let mut ids = Vec::new();
            if client % 2 == 0 {
                barrier.wait();
                for n in 0..PER_CLIENT {
                    let text = format!("cli-{client}-{n}");
                    ids.push((beat.submit(&format!("print {text}"), &[]), text));
                }
            } else {
                let mut mcp = beat.mcp();
                barrier.wait();
                for n in 0..PER_CLIENT {
                    let text = format!("mcp-{client}-{n}");
                    let v = mcp.ok("DelegateTask", json!({ "prompt": format!("print {text}") }));
                    ids.push((v["taskId"].as_str().unwrap().to_string(), text));
                }
            }
            ids
        }));
    }
    let submitted: Vec<(String, String)> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let ids: Vec<String> = submitted.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(ids.len(), 4 * PER_CLIENT);
    let mut mcp = beat.mcp();
    for id in &ids {
        let v = mcp.ok("WaitTask", json!({ "taskId": id, "timeoutMs": 120000 }));
        assert_eq!(v["status"], "completed", "{v}");
    }
    let counts = beat.start_counts();
    assert_eq!(counts.len(), ids.len());
    for id in &ids {
        assert_eq!(
            counts.get(id),
            Some(&1),
            "task {id} started {:?} times",
            counts.get(id)
        );
    }
    // Every task ran its own prompt, once: its output is exactly what its prompt printed.
    for (id, text) in &submitted {
        let out = std::fs::read_to_string(beat.run_dir(id).join("stdout.log")).unwrap();
        assert_eq!(out, format!("{text}\n"), "task {id}");
    }
    beat.assert_fold_matches_state();
}

#[test]
fn front_ends_starting_the_daemon_together_end_with_one_daemon() {
    let beat = Arc::new(Beat::new());
    let barrier = Arc::new(Barrier::new(6));
    let handles: Vec<_> = (0..6)
        .map(|n| {
            let beat = beat.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                if n % 2 == 0 {
                    beat.ok(&["list", "--json"])
                } else {
                    beat.ok(&["daemon", "start"])
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let pid = beat.daemon_pid().expect("a daemon runs");
    let daemons = common_daemons_for(beat.path());
    assert_eq!(daemons, vec![pid], "exactly one daemon for this home");
}

/// PIDs of live `beat daemon` processes whose BACKBEAT_HOME is `home`.
fn common_daemons_for(home: &std::path::Path) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(
            &std::fs::read(entry.path().join("cmdline")).unwrap_or_default(),
        )
        .into_owned();
        // The shim spawner and the shims it forks share the daemon's command line; their
        // names (comm) tell them apart.
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if !cmdline.contains("daemon\0start")
            || comm.trim() != "beat"
            || !common::pid_exists(pid as i32)
        {
            continue;
        }
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let wanted = format!("BACKBEAT_HOME={}", home.display());
        if environ.split(|b| *b == 0).any(|kv| kv == wanted.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}
