//! What one agent run leaves behind, as the model reads it.
//!
//! Owns: the types of a run's result that the task's state machine turns into an
//! outcome: the shim's exit record (an attribute of the run folder, or `exit.json`), why the shim stopped the agent, and
//! the summary of the agent's structured output. The shim writes them and `agents/`
//! reads them from the run folder; both use these types from here.
//! Must never: read or write files, or know where a run folder lives (that is
//! `agents::run_dir`).

use serde::{Deserialize, Serialize};

/// Tokens (and cost, where the agent reports it) of one run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    #[serde(default)]
    pub cache_read_tokens: u64,
    #[serde(default)]
    pub cache_write_tokens: u64,
    #[serde(default)]
    pub cost_usd: Option<f64>,
}

/// How an agent writes its stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutputFormat {
    /// Plain text: every line is output; the exit status alone decides.
    #[default]
    Plain,
    ClaudeStreamJson,
    CodexJson,
    GeminiStreamJson,
}

impl OutputFormat {
    pub fn is_structured(self) -> bool {
        self != OutputFormat::Plain
    }
}

/// What a run amounts to, from its output: part of the shim's exit record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    pub format: OutputFormat,
    pub session_id: Option<String>,
    pub model: Option<String>,
    /// The agent's result event arrived (structured agents).
    pub result_seen: bool,
    pub success: Option<bool>,
    pub answer: Option<String>,
    pub error: Option<String>,
    pub http_status: Option<u16>,
    pub rate_limited: bool,
    pub rate_limit_reset: Option<i64>,
    pub usage: Option<Usage>,
    /// An error that retrying cannot fix (a refused key, a model that does not exist):
    /// the cause and what to do, for the task's reason.
    #[serde(default)]
    pub unrecoverable: Option<String>,
}

impl RunSummary {
    /// What the exit code adds to the output: Gemini exits with the HTTP status & 0xFF
    /// in its JSON modes (401 -> 145, 429 -> 173, 500 -> 244) and may not name it.
    pub fn account_for_exit(&mut self, exit_code: Option<i32>) {
        if self.format == OutputFormat::GeminiStreamJson
            && self.http_status.is_none()
            && self.success == Some(false)
            && let Some(code) = exit_code.filter(|c| (144..=255).contains(c))
        {
            let status = code as u16 + 256;
            self.http_status = Some(status);
            self.rate_limited |= status == 429;
        }
    }
}

/// Why the shim stopped the agent, when it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cause", rename_all = "camelCase")]
pub enum KillCause {
    /// The daemon asked (on the run's channel, or SIGTERM to an adopted shim): a user's
    /// cancel.
    Cancel,
    Timeout {
        #[serde(rename = "afterMs")]
        after_ms: u64,
    },
    Idle {
        #[serde(rename = "afterMs")]
        after_ms: u64,
    },
    /// The agent kept retrying an error that retrying cannot fix (a refused key); the
    /// cause is the summary's `unrecoverable`.
    Unrecoverable,
}

/// The result of one run, as the shim hands it over: in its report on the run's channel,
/// or, where the daemon could not take it, on the run folder (`RunDir::record_exit`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitRecord {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub killed_for: Option<KillCause>,
    pub started_at: i64,
    pub ended_at: i64,
    /// Peak resident memory of the agent and its reaped descendants, in KiB.
    pub max_rss_kb: u64,
    /// Bytes of output the agent produced (kept or not).
    pub output_bytes: u64,
    pub truncated: bool,
    /// The agent could not be executed at all.
    pub spawn_error: Option<String>,
    /// What the agent's structured output said (session, answer, usage, error).
    #[serde(default)]
    pub summary: Option<RunSummary>,
}
