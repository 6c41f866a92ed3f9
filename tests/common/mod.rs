//! Test harness: the real `beat` binary against a temporary `BACKBEAT_HOME`, with the
//! fake agent (`tests/support/fake_agent.rs`) configured as the agent `fake`.
//!
//! Nothing here stands in for a part of Backbeat: tests drive the built binary, its
//! daemon, its socket and its SQLite file, and read results the way users do.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::time::{Duration, Instant};

use backbeat_actors::journal::{Store, TaskQuery};
use backbeat_actors::model::schedule::{ExecutionRecord, ScheduleRecord};
use backbeat_actors::model::{PipelineRecord, Record};
use serde_json::{Value, json};

pub const BEAT: &str = env!("CARGO_BIN_EXE_beat");
pub const FAKE: &str = env!("CARGO_BIN_EXE_fake-agent");

pub struct Beat {
    pub home: tempfile::TempDir,
    pub workdir: tempfile::TempDir,
    /// `HOME` for every command: an empty folder, never the developer's.
    pub user_home: tempfile::TempDir,
    /// Environment for every command (and so for the daemon they start), on top of
    /// `base_env`.
    pub env: Vec<(String, String)>,
}

/// The `PATH` of every command: the system's, never the developer's shell's.
pub const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The whole environment a test's `beat` (and so its daemon and agents) starts from: a
/// system `PATH`, an empty `HOME` and the test's `BACKBEAT_HOME`. Nothing of the shell
/// that runs `cargo test` leaks in (`BACKBEAT_DEFAULT_AGENT`, `TASK_TIMEOUT`, API keys).
pub fn base_env(backbeat_home: &Path, user_home: &Path) -> Vec<(String, String)> {
    vec![
        ("PATH".into(), SYSTEM_PATH.into()),
        ("HOME".into(), user_home.display().to_string()),
        ("BACKBEAT_HOME".into(), backbeat_home.display().to_string()),
        ("LANG".into(), "C.UTF-8".into()),
    ]
}

impl Beat {
    /// A fresh home whose default agent is the fake agent, with `extra` config keys.
    pub fn new() -> Beat {
        Beat::with_config(json!({}))
    }

    pub fn with_config(extra: Value) -> Beat {
        let home = tempfile::Builder::new()
            .prefix("bb")
            .tempdir()
            .expect("temp home");
        let workdir = tempfile::tempdir().expect("temp workdir");
        let user_home = tempfile::tempdir().expect("temp HOME");
        let mut config = json!({
            "defaultAgent": "fake",
            "memoryReserve": 0,
            "agents": { "fake": { "command": [FAKE, "{prompt}"] } },
        });
        if let (Value::Object(c), Value::Object(e)) = (&mut config, extra) {
            c.extend(e);
        }
        std::fs::write(home.path().join("config.json"), config.to_string()).unwrap();
        Beat {
            home,
            workdir,
            user_home,
            env: Vec::new(),
        }
    }

    /// The same, with `vars` in the environment of every command and of the daemon.
    pub fn with_config_and_env(extra: Value, vars: &[(&str, &str)]) -> Beat {
        let mut beat = Beat::with_config(extra);
        beat.env = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        beat
    }

    pub fn path(&self) -> &Path {
        self.home.path()
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.command(BEAT);
        c.args(args);
        c
    }

    /// `program` in the workdir, from this test's clean environment (`base_env` plus
    /// `env`) and with stdin from `/dev/null`.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.env_clear()
            .envs(base_env(self.home.path(), self.user_home.path()))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(self.workdir.path())
            .stdin(Stdio::null());
        c
    }

    pub fn output(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("running beat")
    }

    /// Runs beat; panics with its stderr unless it exits 0. Returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "beat {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let text = self.ok(args);
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("beat {args:?} printed no JSON ({e}): {text}"))
    }

    /// Submits a fake-agent script through the CLI; returns the task id.
    pub fn submit(&self, script: &str, extra: &[&str]) -> String {
        let mut args = vec!["run", "--json"];
        args.extend_from_slice(extra);
        args.push("--");
        args.push(script);
        let v = self.json(&args);
        v["taskId"].as_str().expect("taskId").to_string()
    }

    /// Waits (through `beat wait`) until the task is finished; returns its record.
    pub fn wait(&self, id: &str) -> Value {
        let out = self.output(&["wait", "--json", id]);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "beat wait {id} printed no JSON ({e}); stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    pub fn status(&self, id: &str) -> Value {
        self.json(&["status", "--json", id])
    }

    pub fn daemon_pid(&self) -> Option<u32> {
        let v = self.json(&["daemon", "status", "--json"]);
        v["pid"].as_u64().map(|p| p as u32)
    }

    /// Kills the daemon with SIGKILL and waits until it is gone: its socket refuses
    /// connections. (A killed daemon's main thread shows as a zombie while its other
    /// threads still exit holding the socket: a PID check alone lets the next command
    /// connect to a dying daemon.)
    pub fn kill_daemon(&self) -> u32 {
        let pid = self.daemon_pid().expect("a daemon runs");
        // SAFETY: kill(2) on the PID the daemon reported for itself.
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
        let socket = self.path().join("beat.sock");
        wait_until(
            "the killed daemon to be gone",
            Duration::from_secs(10),
            || !pid_exists(pid as i32) && std::os::unix::net::UnixStream::connect(&socket).is_err(),
        );
        pid
    }

    pub fn run_dir(&self, id: &str) -> PathBuf {
        self.path().join("runs").join(id)
    }

    pub fn store(&self) -> Store {
        Store::new(&self.path().join("beat.db"))
    }

    /// How many times each task was started, from the journal.
    pub fn start_counts(&self) -> std::collections::HashMap<String, i64> {
        self.store()
            .start_counts()
            .expect("reading events")
            .into_iter()
            .collect()
    }

    /// Asserts the journal's invariant: every state table equals the fold of the events.
    ///
    /// The daemon may still be committing, so both sides are read from one consistent
    /// copy of the database (`VACUUM INTO` reads in a single transaction), never from
    /// separate reads that a commit could fall between.
    pub fn assert_fold_matches_state(&self) {
        let snapshot = tempfile::tempdir().expect("a folder for the snapshot");
        let copy = snapshot.path().join("snapshot.db");
        self.store()
            .with(|c| c.execute("VACUUM INTO ?1", [copy.to_str().expect("utf-8 path")]))
            .expect("copying the journal in one read transaction");
        let store = Store::new(&copy);
        let mut folded: std::collections::BTreeMap<String, Record> = Default::default();
        for e in store.events().expect("events") {
            let next = Record::apply(folded.get(&e.entity_id), &e.event)
                .unwrap_or_else(|err| panic!("event {} does not apply: {err}", e.seq));
            folded.insert(e.entity_id.clone(), next);
        }
        let mut table: std::collections::BTreeMap<String, Record> = store
            .tasks(&TaskQuery::default())
            .expect("tasks")
            .into_iter()
            .map(|t| (t.id.clone(), Record::Task(t)))
            .collect();
        table.extend(
            store
                .all::<PipelineRecord>()
                .expect("pipelines")
                .into_iter()
                .map(|p| (p.id.clone(), Record::Pipeline(p))),
        );
        table.extend(
            store
                .all::<backbeat_actors::model::loops::LoopRecord>()
                .expect("loops")
                .into_iter()
                .map(|l| (l.id.clone(), Record::Loop(l))),
        );
        table.extend(
            store
                .all::<ScheduleRecord>()
                .expect("schedules")
                .into_iter()
                .map(|s| (s.id.clone(), Record::Schedule(s))),
        );
        table.extend(
            store
                .all::<ExecutionRecord>()
                .expect("schedule runs")
                .into_iter()
                .map(|e| (e.id.clone(), Record::ScheduleRun(e))),
        );
        assert_eq!(
            folded, table,
            "the state tables differ from the fold of events"
        );
    }

    pub fn config_set(&self, key: &str, value: &str) {
        self.ok(&["config", "set", key, value]);
    }

    pub fn mcp(&self) -> McpSession {
        McpSession::start(self)
    }
}

impl Drop for Beat {
    fn drop(&mut self) {
        let _ = self.cmd(&["daemon", "stop"]).output();
        kill_processes_mentioning(self.home.path());
    }
}

/// Whether this is a CI run (`CI` set to anything but empty, `0` or `false`), where a
/// test must never skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// Says that `test` skips and why, where `cargo test` shows it: straight to the stderr
/// file descriptor, which the test harness does not capture (it captures `eprintln!`,
/// which would hide the skip behind an `ok`). Under CI a skip is a failure.
pub fn skip(test: &str, why: &str) {
    assert!(!in_ci(), "CI is set, so {test} must not skip: {why}");
    let _ = std::io::stderr().write_all(format!("SKIPPED {test}: {why}\n").as_bytes());
}

/// Kills every process whose command line or environment mentions `needle` (the
/// shims of a test's home: a shim forked by the spawner has the daemon's command line
/// and environment, which names the home).
pub fn kill_processes_mentioning(needle: &Path) {
    let needle = needle.display().to_string();
    let env_needle = format!("BACKBEAT_HOME={needle}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let mentions = String::from_utf8_lossy(&cmdline).contains(&needle)
            || environ
                .split(|b| *b == 0)
                .any(|kv| kv == env_needle.as_bytes());
        if mentions && pid != std::process::id() as i32 {
            // The shim leads its own session; its agent's group is its child's PID.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// True while a process with this PID runs. A zombie (dead, not yet reaped by its
/// parent, which for a killed daemon is PID 1) counts as gone.
pub fn pid_exists(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Live processes whose environment carries `BACKBEAT_TASK_ID=<id>`: everything an
/// agent started, whatever group or session it moved to.
pub fn processes_of_task(id: &str) -> Vec<u32> {
    let needle = format!("BACKBEAT_TASK_ID={id}");
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        if environ.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()) && pid_exists(pid as i32) {
            pids.push(pid);
        }
    }
    pids
}

/// PIDs of processes in process group `pgid`, zombies excluded.
pub fn group_members(pgid: i32) -> Vec<i32> {
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let fields: Vec<&str> = after.split_whitespace().collect();
        // fields[0] state, fields[2] pgrp
        if fields.get(2).and_then(|g| g.parse::<i32>().ok()) == Some(pgid) && fields[0] != "Z" {
            pids.push(pid);
        }
    }
    pids
}

/// Waits for `cond`, checking every 10 ms, for at most `limit`: for conditions that
/// have no event to await (a file appearing, a process ending).
pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `PID PGID` from a fake agent's pidfile, once it exists.
pub fn read_pidfile(path: &Path) -> (i32, i32) {
    wait_until(
        &format!("{} to exist", path.display()),
        Duration::from_secs(30),
        || path.exists(),
    );
    let text = std::fs::read_to_string(path).unwrap();
    let mut it = text.split_whitespace().map(|n| n.parse::<i32>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

/// An MCP session through `beat mcp start`: newline-delimited JSON-RPC over stdio.
pub struct McpSession {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    next_id: u64,
}

impl McpSession {
    pub fn start(beat: &Beat) -> McpSession {
        let mut child = beat
            .cmd(&["mcp", "start"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("beat mcp start");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut s = McpSession {
            child,
            stdin,
            stdout,
            next_id: 0,
        };
        let init = s.request(
            "initialize",
            json!({
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": { "name": "backbeat-tests", "version": "0" }
            }),
        );
        assert_eq!(init["result"]["serverInfo"]["name"], "backbeat", "{init}");
        s.send_raw(&json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }).to_string());
        s
    }

    pub fn send_raw(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Reads the next JSON-RPC message (skipping server notifications).
    pub fn read_message(&mut self) -> Value {
        loop {
            let v = self.read_any_message();
            if v.get("id").is_some() {
                return v;
            }
        }
    }

    /// Reads the next line the server writes, whatever it is.
    pub fn read_any_message(&mut self) -> Value {
        let mut line = String::new();
        let n = self
            .stdout
            .read_line(&mut line)
            .expect("reading from beat mcp start");
        assert!(n > 0, "beat mcp start closed its output");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    pub fn request(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.send_raw(
            &json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }).to_string(),
        );
        let reply = self.read_message();
        assert_eq!(reply["id"], json!(id), "out-of-order reply: {reply}");
        reply
    }

    /// Calls a tool: (the JSON of its text content, isError).
    pub fn call(&mut self, tool: &str, args: Value) -> (Value, bool) {
        let reply = self.request("tools/call", json!({ "name": tool, "arguments": args }));
        let result = &reply["result"];
        assert!(
            result.is_object(),
            "tools/call {tool} got no result: {reply}"
        );
        let text = result["content"][0]["text"].as_str().unwrap_or("");
        let value = serde_json::from_str(text).unwrap_or(Value::String(text.to_string()));
        (value, result["isError"] == json!(true))
    }

    /// Calls a tool that must succeed.
    pub fn ok(&mut self, tool: &str, args: Value) -> Value {
        let (v, is_error) = self.call(tool, args);
        assert!(!is_error, "{tool} failed: {v}");
        v
    }

    /// Closes stdin and waits for `beat mcp start` to exit.
    pub fn close(mut self) -> std::process::ExitStatus {
        drop(self.stdin.take());
        self.child.wait().unwrap()
    }
}

impl Drop for McpSession {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
