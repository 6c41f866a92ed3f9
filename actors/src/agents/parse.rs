//! Parsing agent output into typed events while it runs.
//!
//! Owns: the readers of Claude Code's `stream-json`, Codex's `exec --json` and Gemini
//! CLI's `stream-json` lines, the filling of a run's summary (`model::run::RunSummary`:
//! session id, final answer, usage, error, rate limit), and the readable rendering that
//! `beat run -f` and checkpoints show.
//! Must never: fail on a line it does not understand (agents add fields and event kinds;
//! unknown lines are passed over), or treat an exit status alone as success.

use serde_json::Value;

pub use crate::model::run::{OutputFormat, RunSummary};
use crate::model::task::Usage;

/// One thing an agent reported.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentEvent {
    Session {
        id: String,
        model: Option<String>,
    },
    Text(String),
    ToolUse {
        name: String,
        detail: String,
    },
    Usage(Usage),
    /// The agent is retrying a failed request (HTTP status, attempt and the number of
    /// attempts it will make, and its error, when it says).
    Retry {
        status: Option<u16>,
        attempt: Option<u64>,
        max_attempts: Option<u64>,
        error: Option<String>,
    },
    RateLimited {
        reset_at: Option<i64>,
    },
    Result {
        success: bool,
        answer: Option<String>,
        error: Option<String>,
        http_status: Option<u16>,
    },
    Error(String),
}

/// Reads one agent's stdout line by line.
#[derive(Debug, Default)]
pub struct StreamParser {
    pub summary: RunSummary,
    /// Gemini streams its answer as deltas: the answer is their concatenation.
    gemini_answer: String,
    last_text: Option<String>,
}

impl StreamParser {
    pub fn new(format: OutputFormat) -> StreamParser {
        StreamParser {
            summary: RunSummary {
                format,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// The events of one line of stdout; updates the summary.
    pub fn line(&mut self, line: &str) -> Vec<AgentEvent> {
        let format = self.summary.format;
        if format == OutputFormat::Plain {
            return vec![AgentEvent::Text(line.to_string())];
        }
        let Ok(v) = serde_json::from_str::<Value>(line.trim()) else {
            return Vec::new(); // not JSON: a stray line, not an event
        };
        let events = match format {
            OutputFormat::ClaudeStreamJson => claude(&v),
            OutputFormat::CodexJson => codex(&v),
            OutputFormat::GeminiStreamJson => gemini(&v),
            OutputFormat::Plain => Vec::new(),
        };
        for e in &events {
            self.absorb(e);
        }
        events
    }

    fn absorb(&mut self, e: &AgentEvent) {
        let s = &mut self.summary;
        match e {
            AgentEvent::Session { id, model } => {
                s.session_id = Some(id.clone());
                if model.is_some() {
                    s.model = model.clone();
                }
            }
            AgentEvent::Text(t) => {
                if s.format == OutputFormat::GeminiStreamJson {
                    self.gemini_answer.push_str(t);
                }
                self.last_text = Some(t.clone());
            }
            AgentEvent::Usage(u) => s.usage = Some(u.clone()),
            AgentEvent::Retry {
                status,
                attempt,
                error,
                ..
            } => {
                if *status == Some(429) {
                    s.rate_limited = true;
                }
                // One retry is let through (a refreshed login, a proxy's hiccup); a
                // second refusal in a row is final.
                if attempt.unwrap_or(1) >= 2
                    && s.unrecoverable.is_none()
                    && let Some(cause) = unrecoverable_cause(s.format, *status, error.as_deref())
                {
                    s.unrecoverable = Some(cause);
                }
            }
            AgentEvent::RateLimited { reset_at } => {
                s.rate_limited = true;
                if reset_at.is_some() {
                    s.rate_limit_reset = *reset_at;
                }
            }
            AgentEvent::Result {
                success,
                answer,
                error,
                http_status,
            } => {
                s.result_seen = true;
                s.success = Some(*success);
                s.answer = answer.clone().or_else(|| match s.format {
                    OutputFormat::GeminiStreamJson if *success => Some(self.gemini_answer.clone()),
                    OutputFormat::CodexJson if *success => self.last_text.clone(),
                    _ => None,
                });
                if error.is_some() {
                    s.error = error.clone();
                }
                let status = http_status.or_else(|| error.as_deref().and_then(http_status_in));
                if status.is_some() {
                    s.http_status = status;
                }
                if status == Some(429) || error.as_deref().is_some_and(mentions_rate_limit) {
                    s.rate_limited = true;
                }
                if let Some(secs) = error.as_deref().and_then(suggested_retry_secs) {
                    s.rate_limited = true;
                    s.rate_limit_reset = Some(crate::model::now_ms() + (secs * 1000.0) as i64);
                }
                if !*success && s.unrecoverable.is_none() {
                    s.unrecoverable = unrecoverable_cause(s.format, status, error.as_deref());
                }
            }
            AgentEvent::Error(msg) => {
                if s.error.is_none() {
                    s.error = Some(msg.clone());
                }
            }
            AgentEvent::ToolUse { .. } => {}
        }
    }
}

/// A line for people: the agent's text and tool calls, not its JSON.
pub fn render(event: &AgentEvent) -> Option<String> {
    match event {
        AgentEvent::Text(t) => Some(t.clone()),
        AgentEvent::ToolUse { name, detail } if detail.is_empty() => Some(format!("→ {name}")),
        AgentEvent::ToolUse { name, detail } => Some(format!("→ {name} {detail}")),
        AgentEvent::Retry { .. } => retry_reason(event).map(|r| format!("… {r}")),
        AgentEvent::Result {
            success: false,
            error: Some(e),
            ..
        } => Some(format!("✗ {e}")),
        AgentEvent::Error(e) => Some(format!("! {e}")),
        _ => None,
    }
}

/// "retrying after HTTP 401 (attempt 3 of 10)": what a task's reason says while its
/// agent retries a request.
pub fn retry_reason(event: &AgentEvent) -> Option<String> {
    let AgentEvent::Retry {
        status,
        attempt,
        max_attempts,
        ..
    } = event
    else {
        return None;
    };
    let after = status
        .map(|s| format!(" after HTTP {s}"))
        .unwrap_or_default();
    let count = match (attempt, max_attempts) {
        (Some(a), Some(m)) => format!(" (attempt {a} of {m})"),
        (Some(a), None) => format!(" (attempt {a})"),
        _ => String::new(),
    };
    Some(format!("retrying{after}{count}"))
}

/// A retry that an agent reports on stderr only: Gemini CLI writes "Attempt 2 failed
/// with status 503. Retrying with backoff... <error>" there, and nothing on stdout.
pub fn stderr_retry(format: OutputFormat, line: &str) -> Option<AgentEvent> {
    if format != OutputFormat::GeminiStreamJson {
        return None;
    }
    let rest = line.trim().strip_prefix("Attempt ")?;
    let (attempt, rest) = rest.split_once(' ')?;
    let rest = rest.strip_prefix("failed with status ")?;
    let status: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let error = rest
        .split_once("Retrying with backoff...")
        .map(|(_, e)| e.trim().to_string())
        .filter(|e| !e.is_empty());
    Some(AgentEvent::Retry {
        status: status.parse().ok(),
        attempt: attempt.parse().ok(),
        max_attempts: None,
        error,
    })
}

/// The cause and the remedy of an error that retrying cannot fix, or `None` when a
/// retry may help (rate limits, server errors, network trouble).
pub fn unrecoverable_cause(
    format: OutputFormat,
    status: Option<u16>,
    error: Option<&str>,
) -> Option<String> {
    let (key_var, agent, login) = match format {
        OutputFormat::ClaudeStreamJson => (
            "ANTHROPIC_API_KEY or CLAUDE_CODE_OAUTH_TOKEN",
            "claude",
            "`claude login`",
        ),
        OutputFormat::CodexJson => ("OPENAI_API_KEY", "codex", "`codex login`"),
        OutputFormat::GeminiStreamJson => (
            "GEMINI_API_KEY",
            "gemini",
            "`gcloud auth application-default login`",
        ),
        OutputFormat::Plain => return None,
    };
    let lower = error.unwrap_or("").to_ascii_lowercase();
    let says_model_missing = (lower.contains("model") || lower.contains("model_not_found"))
        && (lower.contains("not found")
            || lower.contains("does not exist")
            || lower.contains("not_found")
            || lower.contains("may not exist"));
    let detail = error
        .and_then(|e| e.lines().find(|l| !l.trim().is_empty()))
        .map(|e| format!(": {}", e.chars().take(200).collect::<String>()))
        .unwrap_or_default();
    let status = status.or_else(|| error.and_then(http_status_in));
    match status {
        Some(401) => Some(format!(
            "the provider refused the credentials (HTTP 401{detail}); retrying cannot fix this. Check the key ({key_var}, or `beat config set agents.{agent}.apiKey …`), or log in with {login}"
        )),
        Some(403) => Some(format!(
            "the provider refused access (HTTP 403{detail}); retrying cannot fix this. Check that the key ({key_var}) is allowed to use this model and endpoint, or log in with {login}"
        )),
        Some(404) | None if says_model_missing || status == Some(404) => Some(format!(
            "the provider does not know the model or the endpoint (HTTP 404{detail}); retrying cannot fix this. Choose a model it serves with --model (or agents.{agent}.model), and check agents.{agent}.baseUrl"
        )),
        _ => None,
    }
}

fn str_of(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(String::from)
}

fn u64_of(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// A short description of a tool call's input: the path, command or pattern it acts on.
fn tool_detail(input: &Value) -> String {
    for key in [
        "file_path",
        "path",
        "command",
        "cmd",
        "pattern",
        "url",
        "absolute_path",
    ] {
        if let Some(s) = input.get(key).and_then(Value::as_str) {
            return s.lines().next().unwrap_or("").chars().take(120).collect();
        }
    }
    String::new()
}

fn claude(v: &Value) -> Vec<AgentEvent> {
    let mut out = Vec::new();
    match (v["type"].as_str(), v["subtype"].as_str()) {
        (Some("system"), Some("init")) => {
            if let Some(id) = str_of(v, "session_id") {
                out.push(AgentEvent::Session {
                    id,
                    model: str_of(v, "model"),
                });
            }
        }
        (Some("system"), Some("api_retry")) => out.push(AgentEvent::Retry {
            status: v["error_status"].as_u64().map(|s| s as u16),
            attempt: v["attempt"].as_u64(),
            max_attempts: v["max_retries"].as_u64(),
            error: str_of(v, "error"),
        }),
        // A claude.ai login's limits (Claude Code 2.1.197): the reset in Unix seconds.
        // With an API key Claude prints no reset at all, only `error: rate_limit`.
        (Some("rate_limit_event"), _) => {
            let info = &v["rate_limit_info"];
            if info["status"].as_str() == Some("rejected") {
                out.push(AgentEvent::RateLimited {
                    reset_at: info["resetsAt"].as_f64().map(|s| (s * 1000.0) as i64),
                });
            }
        }
        (Some("assistant"), _) => {
            if v["error"].as_str() == Some("rate_limit") {
                out.push(AgentEvent::RateLimited { reset_at: None });
            }
            for block in v["message"]["content"].as_array().into_iter().flatten() {
                match block["type"].as_str() {
                    Some("text") => {
                        if let Some(t) = block["text"].as_str() {
                            out.push(AgentEvent::Text(t.to_string()));
                        }
                    }
                    Some("tool_use") => out.push(AgentEvent::ToolUse {
                        name: str_of(block, "name").unwrap_or_default(),
                        detail: tool_detail(&block["input"]),
                    }),
                    _ => {}
                }
            }
        }
        (Some("result"), _) => {
            let u = &v["usage"];
            out.push(AgentEvent::Usage(Usage {
                input_tokens: u64_of(u, "input_tokens"),
                output_tokens: u64_of(u, "output_tokens"),
                cache_read_tokens: u64_of(u, "cache_read_input_tokens"),
                cache_write_tokens: u64_of(u, "cache_creation_input_tokens"),
                cost_usd: v["total_cost_usd"].as_f64(),
            }));
            let is_error = v["is_error"].as_bool().unwrap_or(false)
                || v["subtype"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("error"));
            let text = str_of(v, "result");
            out.push(AgentEvent::Result {
                success: !is_error,
                answer: if is_error { None } else { text.clone() },
                error: if is_error {
                    text.or_else(|| {
                        v["errors"].as_array().map(|e| {
                            e.iter()
                                .filter_map(Value::as_str)
                                .collect::<Vec<_>>()
                                .join("; ")
                        })
                    })
                } else {
                    None
                },
                http_status: v["api_error_status"].as_u64().map(|s| s as u16),
            });
            if let Some(id) = str_of(v, "session_id") {
                out.insert(0, AgentEvent::Session { id, model: None });
            }
        }
        _ => {}
    }
    out
}

fn codex(v: &Value) -> Vec<AgentEvent> {
    let mut out = Vec::new();
    match v["type"].as_str() {
        Some("thread.started") => {
            if let Some(id) = str_of(v, "thread_id") {
                out.push(AgentEvent::Session { id, model: None });
            }
        }
        Some("item.completed") | Some("item.started") => {
            let item = &v["item"];
            let completed = v["type"] == "item.completed";
            match item["type"].as_str() {
                Some("agent_message") if completed => {
                    if let Some(t) = item["text"].as_str() {
                        out.push(AgentEvent::Text(t.to_string()));
                    }
                }
                Some("command_execution") if !completed => out.push(AgentEvent::ToolUse {
                    name: "exec".into(),
                    detail: str_of(item, "command").unwrap_or_default(),
                }),
                Some("file_change") if completed => {
                    for change in item["changes"].as_array().into_iter().flatten() {
                        out.push(AgentEvent::ToolUse {
                            name: format!("edit ({})", change["kind"].as_str().unwrap_or("change")),
                            detail: str_of(change, "path").unwrap_or_default(),
                        });
                    }
                }
                Some("error") if completed => {
                    // Warnings such as unknown model metadata: shown, not fatal.
                    if let Some(m) = item["message"].as_str() {
                        out.push(AgentEvent::Error(m.to_string()));
                    }
                }
                _ => {}
            }
        }
        Some("turn.completed") => {
            let u = &v["usage"];
            out.push(AgentEvent::Usage(Usage {
                input_tokens: u64_of(u, "input_tokens"),
                output_tokens: u64_of(u, "output_tokens"),
                cache_read_tokens: u64_of(u, "cached_input_tokens"),
                cache_write_tokens: u64_of(u, "cache_write_input_tokens"),
                cost_usd: None,
            }));
            out.push(AgentEvent::Result {
                success: true,
                answer: None,
                error: None,
                http_status: None,
            });
        }
        Some("turn.failed") => {
            let message = v["error"]["message"].as_str().map(String::from);
            out.push(AgentEvent::Result {
                success: false,
                answer: None,
                error: message,
                http_status: None,
            });
        }
        Some("error") => {
            let message = str_of(v, "message").unwrap_or_default();
            if let Some(rest) = message.strip_prefix("Reconnecting") {
                // "Reconnecting... 3/5 (unexpected status 401 Unauthorized: …)"
                let (attempt, max_attempts) = rest
                    .trim_start_matches(['.', ' ', '…'])
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.split_once('/'))
                    .map(|(a, m)| (a.parse().ok(), m.parse().ok()))
                    .unwrap_or((None, None));
                let error = rest
                    .find('(')
                    .map(|i| rest[i + 1..].trim_end_matches(')').to_string());
                out.push(AgentEvent::Retry {
                    status: error.as_deref().and_then(http_status_in),
                    attempt,
                    max_attempts,
                    error,
                });
            }
            out.push(AgentEvent::Error(message));
        }
        _ => {}
    }
    out
}

fn gemini(v: &Value) -> Vec<AgentEvent> {
    let mut out = Vec::new();
    match v["type"].as_str() {
        Some("init") => {
            if let Some(id) = str_of(v, "session_id") {
                out.push(AgentEvent::Session {
                    id,
                    model: str_of(v, "model"),
                });
            }
        }
        Some("message") if v["role"] == "assistant" => {
            if let Some(t) = v["content"].as_str() {
                out.push(AgentEvent::Text(t.to_string()));
            }
        }
        Some("tool_use") => out.push(AgentEvent::ToolUse {
            name: str_of(v, "tool_name").unwrap_or_default(),
            detail: tool_detail(&v["parameters"]),
        }),
        Some("result") => {
            let stats = &v["stats"];
            out.push(AgentEvent::Usage(Usage {
                input_tokens: u64_of(stats, "input_tokens"),
                output_tokens: u64_of(stats, "output_tokens"),
                cache_read_tokens: u64_of(stats, "cached"),
                cache_write_tokens: 0,
                cost_usd: None,
            }));
            let success = v["status"] == "success";
            out.push(AgentEvent::Result {
                success,
                answer: None,
                error: if success {
                    None
                } else {
                    v["error"]["message"].as_str().map(String::from)
                },
                http_status: v["error"]["code"].as_u64().map(|c| c as u16),
            });
        }
        Some("error") => {
            if let Some(m) = v["message"].as_str() {
                out.push(AgentEvent::Error(m.to_string()));
            }
        }
        _ => {}
    }
    out
}

/// The first HTTP error status named in an error message ("(429)", "401 Unauthorized",
/// `"code":401`).
pub fn http_status_in(text: &str) -> Option<u16> {
    const KNOWN: [u16; 11] = [400, 401, 403, 404, 408, 429, 500, 502, 503, 504, 529];
    let bytes = text.as_bytes();
    (0..bytes.len().saturating_sub(2)).find_map(|i| {
        let digits = &bytes[i..i + 3];
        let before_ok = i == 0 || !bytes[i - 1].is_ascii_digit();
        let after_ok = i + 3 == bytes.len() || !bytes[i + 3].is_ascii_digit();
        if before_ok && after_ok && digits.iter().all(u8::is_ascii_digit) {
            let n: u16 = std::str::from_utf8(digits).ok()?.parse().ok()?;
            KNOWN.contains(&n).then_some(n)
        } else {
            None
        }
    })
}

/// "Suggested retry after 1s." (Gemini), "Please retry in 12.5s": seconds to wait.
pub fn suggested_retry_secs(text: &str) -> Option<f64> {
    let lower = text.to_ascii_lowercase();
    let at = ["retry after ", "retry in "]
        .iter()
        .find_map(|p| lower.find(p).map(|i| i + p.len()))?;
    let number: String = lower[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let secs: f64 = number.parse().ok()?;
    let unit = &lower[at + number.len()..];
    match unit.trim_start().chars().next() {
        Some('s') => Some(secs),
        Some('m') if unit.trim_start().starts_with("ms") => Some(secs / 1000.0),
        Some('m') => Some(secs * 60.0),
        _ => None,
    }
}

pub fn mentions_rate_limit(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    [
        "rate limit",
        "rate_limit",
        "too many requests",
        "resource_exhausted",
        "429",
    ]
    .iter()
    .any(|p| t.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(format: OutputFormat, text: &str) -> (RunSummary, Vec<String>) {
        let mut p = StreamParser::new(format);
        let mut readable = Vec::new();
        for line in text.lines() {
            for e in p.line(line) {
                if let Some(r) = render(&e) {
                    readable.push(r);
                }
            }
        }
        (p.summary, readable)
    }

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/");

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!("{FIXTURES}{name}")).unwrap()
    }

    #[test]
    fn claude_success_gives_answer_session_usage_and_cost() {
        let (s, readable) = run(
            OutputFormat::ClaudeStreamJson,
            &fixture("claude-stream-json.jsonl"),
        );
        assert_eq!(
            s.session_id.as_deref(),
            Some("fbef2dde-c020-4dd6-bc5a-9073b18339e9")
        );
        assert_eq!(s.success, Some(true));
        assert_eq!(
            s.answer.as_deref(),
            Some("Created hello.txt containing hi.")
        );
        let u = s.usage.unwrap();
        assert_eq!((u.input_tokens, u.output_tokens), (57884, 29));
        assert_eq!(u.cost_usd, Some(0.174087));
        assert!(
            readable
                .iter()
                .any(|l| l == "→ Write /home/user/work-claude/hello.txt"),
            "{readable:?}"
        );
        assert!(
            !readable.iter().any(|l| l.starts_with('{')),
            "no raw JSON in the readable output"
        );
    }

    #[test]
    fn claude_errors_name_their_http_status() {
        let (s, _) = run(
            OutputFormat::ClaudeStreamJson,
            &fixture("claude-error429-noretry-stream-json.jsonl"),
        );
        assert_eq!(
            (s.success, s.http_status, s.rate_limited),
            (Some(false), Some(429), true)
        );
        assert_eq!(
            s.rate_limit_reset, None,
            "Claude with an API key tells no reset"
        );
        let (s, _) = run(
            OutputFormat::ClaudeStreamJson,
            &fixture("claude-error401-noretry-stream-json.jsonl"),
        );
        assert_eq!((s.http_status, s.rate_limited), (Some(401), false));
        assert!(s.error.unwrap().contains("401"));
        let (s, readable) = run(
            OutputFormat::ClaudeStreamJson,
            &fixture("claude-error500-default-retries-killed-at-120s-stream-json.jsonl"),
        );
        assert!(!s.result_seen, "killed before its result");
        assert!(
            readable
                .iter()
                .any(|l| l.contains("retrying after HTTP 500"))
        );
    }

    #[test]
    fn claude_rate_limit_events_give_the_reset_of_a_login_limit() {
        let (s, _) = run(
            OutputFormat::ClaudeStreamJson,
            concat!(
                r#"{"type":"rate_limit_event","rate_limit_info":{"status":"allowed_warning","resetsAt":1764550000},"session_id":"s"}"#,
                "\n",
                r#"{"type":"rate_limit_event","rate_limit_info":{"status":"rejected","resetsAt":1764553600,"rateLimitType":"five_hour"},"session_id":"s"}"#,
                "\n",
                r#"{"type":"result","subtype":"success","is_error":true,"api_error_status":429,"result":"API Error: Request rejected (429)","session_id":"s"}"#,
            ),
        );
        assert!(s.rate_limited);
        assert_eq!(s.rate_limit_reset, Some(1_764_553_600_000));
    }

    #[test]
    fn codex_answer_is_the_last_agent_message() {
        let (s, readable) = run(OutputFormat::CodexJson, &fixture("codex-json.jsonl"));
        assert_eq!(
            s.session_id.as_deref(),
            Some("01a20f35-a9c4-7b70-ace2-7c5342bd50ca")
        );
        assert_eq!(
            s.answer.as_deref(),
            Some("Created hello.txt containing hi.")
        );
        assert_eq!(
            s.usage.as_ref().map(|u| (u.input_tokens, u.output_tokens)),
            Some((19157, 19))
        );
        assert!(
            readable.iter().any(|l| l.starts_with("→ exec /bin/bash")),
            "{readable:?}"
        );
        let (p, readable) = run(
            OutputFormat::CodexJson,
            &fixture("codex-apply-patch-json.jsonl"),
        );
        assert_eq!(p.success, Some(true));
        assert!(
            readable
                .iter()
                .any(|l| l == "→ edit (add) /home/user/work/hello.txt"),
            "{readable:?}"
        );
    }

    #[test]
    fn codex_failures_and_rate_limits() {
        let (s, _) = run(
            OutputFormat::CodexJson,
            &fixture("codex-error429-noretry-json.jsonl"),
        );
        assert_eq!(
            (s.success, s.http_status, s.rate_limited),
            (Some(false), Some(429), true)
        );
        let (s, _) = run(
            OutputFormat::CodexJson,
            &fixture("codex-error401-noretry-json.jsonl"),
        );
        assert_eq!(s.http_status, Some(401));
    }

    #[test]
    fn gemini_answer_is_the_concatenated_deltas() {
        let (s, readable) = run(
            OutputFormat::GeminiStreamJson,
            &fixture("gemini-stream-json.jsonl"),
        );
        assert_eq!(
            s.answer.as_deref(),
            Some("Created hello.txt containing hi.")
        );
        assert_eq!(
            s.session_id.as_deref(),
            Some("be47fbba-1df6-4f23-b92e-a092ee495841")
        );
        assert_eq!(s.usage.map(|u| u.input_tokens), Some(23592));
        assert!(
            readable
                .iter()
                .any(|l| l == "→ write_file /home/user/work-gemini/hello.txt")
        );
        let (e, _) = run(
            OutputFormat::GeminiStreamJson,
            &fixture("gemini-error429-maxAttempts1-stream-json.jsonl"),
        );
        assert_eq!(
            (e.success, e.http_status, e.rate_limited),
            (Some(false), Some(429), true)
        );
        let (e, _) = run(
            OutputFormat::GeminiStreamJson,
            &fixture("gemini-error401-stream-json.jsonl"),
        );
        assert_eq!(e.http_status, Some(401));
    }

    #[test]
    fn statuses_are_found_in_messages() {
        assert_eq!(
            http_status_in("API Error: Request rejected (429) · x"),
            Some(429)
        );
        assert_eq!(
            http_status_in("unexpected status 401 Unauthorized"),
            Some(401)
        );
        assert_eq!(http_status_in("{\"code\":500}"), Some(500));
        assert_eq!(http_status_in("took 4290 ms"), None);
        assert_eq!(http_status_in("no status"), None);
    }

    #[test]
    fn suggested_retry_times_are_read() {
        assert_eq!(
            suggested_retry_secs("[API Error: x\nSuggested retry after 1s.]"),
            Some(1.0)
        );
        assert_eq!(suggested_retry_secs("Please retry in 12.5s"), Some(12.5));
        assert_eq!(suggested_retry_secs("retry after 250ms"), Some(0.25));
        assert_eq!(suggested_retry_secs("no hint here"), None);
    }

    #[test]
    fn retries_are_read_and_refusals_that_retrying_cannot_fix_are_named() {
        let retry = |attempt: u64, status: u16| {
            format!(
                r#"{{"type":"system","subtype":"api_retry","attempt":{attempt},"max_retries":10,"retry_delay_ms":500,"error_status":{status},"error":"authentication_failed"}}"#
            )
        };
        let mut p = StreamParser::new(OutputFormat::ClaudeStreamJson);
        let events = p.line(&retry(1, 401));
        assert_eq!(
            events.iter().find_map(retry_reason).as_deref(),
            Some("retrying after HTTP 401 (attempt 1 of 10)")
        );
        assert_eq!(p.summary.unrecoverable, None, "one retry is let through");
        p.line(&retry(2, 401));
        let cause = p
            .summary
            .unrecoverable
            .clone()
            .expect("a second 401 is final");
        assert!(cause.contains("HTTP 401"), "{cause}");
        assert!(
            cause.contains("ANTHROPIC_API_KEY") && cause.contains("claude login"),
            "says what to do: {cause}"
        );
        let mut p = StreamParser::new(OutputFormat::ClaudeStreamJson);
        p.line(&retry(1, 500));
        p.line(&retry(2, 500));
        assert_eq!(p.summary.unrecoverable, None, "a server error may pass");

        let mut p = StreamParser::new(OutputFormat::CodexJson);
        let line = r#"{"type":"error","message":"Reconnecting... 2/5 (unexpected status 403 Forbidden: no access, url: http://x/v1/responses)"}"#;
        let events = p.line(line);
        assert_eq!(
            events.iter().find_map(retry_reason).as_deref(),
            Some("retrying after HTTP 403 (attempt 2 of 5)")
        );
        let cause = p.summary.unrecoverable.clone().expect("403 is final");
        assert!(
            cause.contains("HTTP 403") && cause.contains("OPENAI_API_KEY"),
            "{cause}"
        );

        let (s, _) = run(
            OutputFormat::GeminiStreamJson,
            &fixture("gemini-error401-stream-json.jsonl"),
        );
        assert!(
            s.unrecoverable
                .as_deref()
                .is_some_and(|c| c.contains("GEMINI_API_KEY")),
            "{s:?}"
        );
        let (s, _) = run(
            OutputFormat::ClaudeStreamJson,
            &fixture("claude-error429-noretry-stream-json.jsonl"),
        );
        assert_eq!(s.unrecoverable, None, "a rate limit passes");
        let model_missing = unrecoverable_cause(
            OutputFormat::CodexJson,
            None,
            Some("The model `nope` does not exist or you do not have access to it."),
        )
        .unwrap();
        assert!(model_missing.contains("--model"), "{model_missing}");
    }

    #[test]
    fn gemini_retries_are_read_from_its_stderr() {
        let line = r#"Attempt 2 failed with status 503. Retrying with backoff... _ApiError: {"error":{"code":503}}"#;
        let event = stderr_retry(OutputFormat::GeminiStreamJson, line).unwrap();
        assert_eq!(
            retry_reason(&event).as_deref(),
            Some("retrying after HTTP 503 (attempt 2)")
        );
        assert_eq!(stderr_retry(OutputFormat::ClaudeStreamJson, line), None);
        assert_eq!(
            stderr_retry(OutputFormat::GeminiStreamJson, "YOLO mode is enabled."),
            None
        );
    }

    #[test]
    fn unknown_lines_are_passed_over() {
        let mut p = StreamParser::new(OutputFormat::ClaudeStreamJson);
        assert!(p.line("not json").is_empty());
        assert!(p.line("{\"type\":\"brand_new_event\"}").is_empty());
        assert!(!p.summary.result_seen);
    }
}
