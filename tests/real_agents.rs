//! The real agent CLIs (Claude Code 2.1.197, Codex 0.169.0, Gemini CLI 0.61.0, installed
//! by `.ci/install-agents`) driven by `beat` against the project's mock model provider
//! (`tests/support/mock_provider.py`) on 127.0.0.1, each test with a scratch HOME and the
//! settings that keep the CLIs off the network and make them fail fast.
//!
//! The CLIs are found in `BACKBEAT_AGENTS_BIN`, else in `~/.cache/backbeat-agents`. Without
//! them the tests skip locally, saying so, and fail when `CI` is set. Each test that ran
//! writes a `real-cli: …` line to stderr, which `.ci/run` counts.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Beat, wait_until};
use serde_json::{Value, json};

fn agents_bin() -> Option<PathBuf> {
    let dir = std::env::var_os("BACKBEAT_AGENTS_BIN")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".cache/backbeat-agents/node_modules/.bin"))
        })?;
    ["claude", "codex", "gemini"]
        .iter()
        .all(|c| dir.join(c).exists())
        .then_some(dir)
}

/// The CLIs' directory, or `None` (after saying so) when the test must skip.
fn require_clis(test: &str) -> Option<PathBuf> {
    match agents_bin() {
        Some(dir) => Some(dir),
        None => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but the agent CLIs are missing: run .ci/install-agents"
            );
            eprintln!("SKIPPED {test}: the agent CLIs are not installed (run .ci/install-agents)");
            None
        }
    }
}

/// Announces a real-CLI test that ran, past the test harness's output capture.
fn announce(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "real-cli: {line}");
}

struct MockProvider {
    child: Child,
    port: u16,
    script: PathBuf,
    log: PathBuf,
}

impl MockProvider {
    fn start(dir: &Path) -> MockProvider {
        let script = dir.join("script.json");
        let log = dir.join("requests.jsonl");
        std::fs::write(&script, "{}").unwrap();
        let mut child = Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/support/mock_provider.py"
            ))
            .args([
                "--script",
                script.to_str().unwrap(),
                "--log",
                log.to_str().unwrap(),
                "--port",
                "0",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the mock provider");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = serde_json::from_str::<Value>(&line).expect("the mock's port")["port"]
            .as_u64()
            .unwrap() as u16;
        MockProvider {
            child,
            port,
            script,
            log,
        }
    }

    fn script(&self, v: Value) {
        let tmp = self.script.with_extension("tmp");
        std::fs::write(&tmp, v.to_string()).unwrap();
        std::fs::rename(tmp, &self.script).unwrap();
    }

    /// The generation requests seen so far (no preflights or side requests).
    fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|r| ["tool", "text", "error"].contains(&r["reply"].as_str().unwrap_or("")))
            .collect()
    }
}

impl Drop for MockProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A home whose agents talk to the mock, through Backbeat's own agent settings.
fn setup(agent: &str, bin: &Path) -> (Beat, MockProvider, PathBuf) {
    let scratch = tempfile::Builder::new()
        .prefix("bbreal")
        .tempdir()
        .unwrap()
        .keep();
    let home = scratch.join("home");
    std::fs::create_dir_all(home.join(".codex")).unwrap();
    std::fs::create_dir_all(home.join(".gemini")).unwrap();
    std::fs::write(
        home.join(".codex/config.toml"),
        "check_for_update_on_startup = false\n[analytics]\nenabled = false\n[features]\nplugins = false\n",
    )
    .unwrap();
    std::fs::write(
        home.join(".gemini/settings.json"),
        json!({
            "security": { "auth": { "selectedType": "gemini-api-key" }, "folderTrust": { "enabled": false } },
            "privacy": { "usageStatisticsEnabled": false },
            "telemetry": { "enabled": false },
            "general": { "enableAutoUpdate": false, "enableAutoUpdateNotification": false, "maxAttempts": 1 }
        })
        .to_string(),
    )
    .unwrap();
    let mock = MockProvider::start(&scratch);
    let url = format!("http://127.0.0.1:{}", mock.port);
    let config = json!({
        "defaultAgent": agent,
        "rateLimitBackoffMs": 200,
        "rateLimitRetries": 1,
        "killGracePeriodMs": 2000,
        "timeout": 120000,
        "agents": {
            "claude": {
                "baseUrl": url, "apiKey": "sk-ant-mock-key",
                "env": { "CLAUDE_CODE_MAX_RETRIES": "0", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1" }
            },
            "codex": {
                "baseUrl": format!("{url}/v1"), "apiKey": "sk-mock",
                "args": ["-c", "model_providers.backbeat.request_max_retries=0", "-c", "model_providers.backbeat.stream_max_retries=0"]
            },
            "gemini": { "baseUrl": url, "apiKey": "mock-gemini-key" }
        }
    });
    let path = format!("{}:/usr/local/bin:/usr/bin:/bin", bin.display());
    let tmp = scratch.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let beat = Beat::with_config_and_env(
        config,
        &[
            ("PATH", &path),
            ("HOME", home.to_str().unwrap()),
            ("TMPDIR", tmp.to_str().unwrap()),
            ("TERM", "dumb"),
            ("NO_PROXY", "127.0.0.1,localhost"),
            ("DISABLE_TELEMETRY", "1"),
            ("DISABLE_ERROR_REPORTING", "1"),
            ("DISABLE_AUTOUPDATER", "1"),
            ("ANTHROPIC_API_KEY", ""),
            ("ANTHROPIC_BASE_URL", ""),
            ("OPENAI_API_KEY", ""),
            ("OPENAI_BASE_URL", ""),
            ("GEMINI_API_KEY", ""),
            ("GOOGLE_GEMINI_BASE_URL", ""),
        ],
    );
    (beat, mock, scratch)
}

fn model_for(agent: &str) -> &'static str {
    match agent {
        "claude" => "claude-sonnet-4-5",
        "codex" => "gpt-5.5",
        _ => "gemini-2.5-pro",
    }
}

fn real_cli_end_to_end(agent: &str) {
    let Some(bin) = require_clis(agent) else {
        return;
    };
    let (beat, mock, _scratch) = setup(agent, &bin);
    let model = model_for(agent);
    let prompt = "create hello.txt containing hi — «héllo \"wörld\"»\nsecond line ✓";
    let system = "Always answer tersely. ✓ \"quoted\" \\ backslash";

    // 1. A tool call that really writes the file; answer, session and tokens recorded.
    mock.script(json!({ "writeFile": { "path": "hello.txt", "content": "hi" }, "text": "Created hello.txt containing hi." }));
    let started = Instant::now();
    let id = beat.submit(prompt, &["--model", model, "--system-prompt", system]);
    let t = beat.wait(&id);
    assert_eq!(
        t["status"],
        "completed",
        "{agent}: {t}\nstderr: {}",
        std::fs::read_to_string(beat.run_dir(&id).join("stderr.log")).unwrap_or_default()
    );
    assert_eq!(
        std::fs::read_to_string(beat.workdir.path().join("hello.txt"))
            .unwrap()
            .trim_end(),
        "hi"
    );
    assert!(
        t["result"]
            .as_str()
            .unwrap_or("")
            .contains("Created hello.txt"),
        "{t}"
    );
    let session = t["sessionId"].as_str().expect("a session id").to_string();
    assert!(t["usage"]["inputTokens"].as_u64().unwrap_or(0) > 0, "{t}");
    // 2. The provider saw the model, the system prompt and the prompt the task asked for.
    let requests = mock.requests();
    let first = requests.first().expect("a request");
    assert_eq!(first["model"], model);
    assert!(
        first["system"].as_str().unwrap_or("").contains(system),
        "{agent}: system prompt missing: {}",
        first["system"]
    );
    assert_eq!(
        first["userPrompt"], prompt,
        "{agent}: the prompt arrives intact"
    );
    let readable = std::fs::read_to_string(beat.run_dir(&id).join("output.txt")).unwrap();
    assert!(readable.contains("Created hello.txt"), "{readable}");
    announce(&format!(
        "{agent}: tool call wrote the file in {:.1?}",
        started.elapsed()
    ));

    // 3. Resume continues the same session: the provider receives the first run's history.
    mock.script(json!({ "text": "I created hello.txt." }));
    let before = mock.requests().len();
    let resumed = beat.json(&["resume", &id, "--context", "what did you do?", "--json"]);
    assert_eq!(resumed["resumesSession"], session.as_str());
    let r = beat.wait(resumed["taskId"].as_str().unwrap());
    assert_eq!(r["status"], "completed", "{agent}: {r}");
    assert_eq!(
        r["sessionId"],
        session.as_str(),
        "{agent}: the same session continues"
    );
    let later = &mock.requests()[before..];
    let texts = later.last().unwrap()["userTexts"].to_string();
    assert!(
        texts.contains("create hello.txt containing hi"),
        "{agent}: history missing: {texts}"
    );
    announce(&format!("{agent}: resume continued session {session}"));

    // 4. Large prompts arrive intact: 100 KB on the command line, 200 KB through stdin.
    mock.script(json!({ "text": "read it" }));
    for size in [100 * 1024 - 200, 200 * 1024] {
        let mut big = String::with_capacity(size + 64);
        for n in 0.. {
            if big.len() >= size {
                break;
            }
            big.push_str(&format!("line {n} «ü» \"q\"\n"));
        }
        let before = mock.requests().len();
        let file = beat.workdir.path().join("big-prompt.txt");
        std::fs::write(&file, &big).unwrap();
        let id = beat.json(&[
            "run",
            "--json",
            "--model",
            model,
            "--prompt-file",
            file.to_str().unwrap(),
        ])["taskId"]
            .as_str()
            .unwrap()
            .to_string();
        // What is checked is what the provider received. What the CLI does after the
        // answer is its own business: Gemini, given 200 KB on stdin, at times exits 0
        // without printing its answer, which Backbeat rightly reports as a failure.
        let t = beat.wait(&id);
        assert!(
            ["completed", "failed"].contains(&t["status"].as_str().unwrap_or("")),
            "{agent} {size}: {}",
            t["reason"]
        );
        let got = mock.requests()[before]["userPrompt"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let diverges = got
            .chars()
            .zip(big.chars())
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(big.len()));
        assert!(
            got.trim_end() == big.trim_end(),
            "{agent}: a {}-byte prompt arrived changed ({} bytes), from char {diverges}: {:?} vs {:?}",
            big.len(),
            got.len(),
            got.get(big.len().min(got.len())..).unwrap_or(""),
            big.chars()
                .skip(diverges.saturating_sub(20))
                .take(60)
                .collect::<String>()
        );
    }
    announce(&format!(
        "{agent}: 100 KB and 200 KB prompts arrived intact"
    ));

    // 5. HTTP errors fail the task in seconds with a reason that names the cause.
    for (status, cause) in [(401, "401"), (500, "")] {
        let error = json!({ "status": status, "message": format!("mock error {status}") });
        mock.script(json!({ "errors": vec![error; 4] }));
        let started = Instant::now();
        let e = beat.wait(&beat.submit("say hi", &["--model", model]));
        assert_eq!(e["status"], "failed", "{agent} {status}: {e}");
        let reason = e["reason"].as_str().unwrap();
        assert!(
            reason.contains(cause) && reason.len() > "exited with code 1".len() + 2,
            "{agent} {status}: {reason}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{agent} {status}: took {:?}",
            started.elapsed()
        );
    }
    // 429 once: the task waits and runs again, then completes.
    mock.script(json!({ "errors": [{ "status": 429, "retryAfterSeconds": 1, "message": "slow down" }], "text": "fine now" }));
    let limited = beat.wait(&beat.submit("say hi", &["--model", model]));
    assert_eq!(limited["status"], "completed", "{agent} 429: {limited}");
    assert_eq!(limited["rateLimitRetries"], 1);
    announce(&format!("{agent}: 401, 500 and 429 handled"));

    // 6. Cancel while the provider delays its answer: cancelled, nothing of the group left.
    mock.script(json!({ "delayMs": 60000, "text": "too late" }));
    let before = mock.requests().len();
    let slow = beat.submit("take your time", &["--model", model]);
    wait_until(
        "the CLI's request to reach the provider",
        Duration::from_secs(60),
        || mock.requests().len() > before,
    );
    beat.ok(&["cancel", &slow, "changed my mind"]);
    let c = beat.status(&slow);
    assert_eq!(c["status"], "cancelled", "{agent}: {c}");
    assert_eq!(c["reason"], "cancelled by the user: changed my mind");
    assert_eq!(
        common::processes_of_task(&slow),
        Vec::<u32>::new(),
        "{agent}: processes left after cancel"
    );
    announce(&format!("{agent}: cancel left no process"));
    beat.assert_fold_matches_state();
}

#[test]
fn claude_code_end_to_end() {
    real_cli_end_to_end("claude");
}

#[test]
fn codex_end_to_end() {
    real_cli_end_to_end("codex");
}

#[test]
fn gemini_cli_end_to_end() {
    real_cli_end_to_end("gemini");
}
