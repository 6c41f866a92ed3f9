//! Resolved settings, as the engine sees them.
//!
//! Owns: the typed view of the configuration (defaults for new tasks, admission limits,
//! agents) and the defaults derived from the machine. Must never: read files or the
//! environment; the front end resolves environment over file over defaults and hands
//! the engine a snapshot through a `SettingsSource`.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Settings of one agent (`agents.<name>` in `config.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentSettings {
    /// Argv template of a user-defined command agent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// Extra environment for this agent, applied after inherited variables are
    /// filtered (it wins over the daemon's own environment).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// How a command agent writes its output (`plain`, `claude-stream-json`,
    /// `codex-json`, `gemini-stream-json`): a wrapper around a real CLI keeps its parsing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_format: Option<crate::model::run::OutputFormat>,
    /// Extra arguments for a built-in CLI, placed before the prompt (e.g. Codex `-c`
    /// overrides).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Bytes this agent takes at its peak, for admission; wins over what the governor
    /// learns from its runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_memory: Option<u64>,
}

/// Everything the engine reads from the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Default wall-clock limit of a task, ms.
    pub timeout: u64,
    /// Default output limit of a task, bytes.
    pub max_output_buffer: u64,
    /// Default idle limit (no output), ms; `None` disables it.
    pub idle_timeout: Option<u64>,
    /// Most agents running at once.
    pub max_workers: usize,
    /// CPU cores that must stay idle for a new agent to start (0 disables the check).
    pub cpu_cores_reserved: f64,
    /// Bytes of memory that must stay available after a new agent starts.
    pub memory_reserve: u64,
    /// Between TERM and KILL when stopping an agent's process group, ms.
    pub kill_grace_period_ms: u64,
    pub default_agent: Option<String>,
    pub agents: BTreeMap<String, AgentSettings>,
    /// How many times a run that ends on a rate limit is queued again.
    pub rate_limit_retries: u32,
    /// First wait after a rate limit with no reset time from the provider, ms; doubles.
    pub rate_limit_backoff_ms: u64,
    /// Finished tasks and pipelines are removed this many days after they ended.
    pub task_retention_days: u32,
    /// A schedule's occurrence later than this (ms) follows its missed-run policy.
    pub schedule_grace_period_ms: u64,
}

pub const DEFAULT_TIMEOUT_MS: u64 = 1_800_000;
pub const DEFAULT_MAX_OUTPUT_BUFFER: u64 = 10 * 1024 * 1024;
pub const DEFAULT_KILL_GRACE_MS: u64 = 5_000;
pub const DEFAULT_TASK_RETENTION_DAYS: u32 = 7;

impl Default for Settings {
    fn default() -> Self {
        let machine = Machine::detect();
        Settings {
            timeout: DEFAULT_TIMEOUT_MS,
            max_output_buffer: DEFAULT_MAX_OUTPUT_BUFFER,
            idle_timeout: None,
            max_workers: machine.default_max_workers(),
            cpu_cores_reserved: 0.0,
            memory_reserve: machine.default_memory_reserve(),
            kill_grace_period_ms: DEFAULT_KILL_GRACE_MS,
            default_agent: None,
            agents: BTreeMap::new(),
            rate_limit_retries: 3,
            rate_limit_backoff_ms: 60_000,
            task_retention_days: DEFAULT_TASK_RETENTION_DAYS,
            schedule_grace_period_ms: crate::model::schedule::DEFAULT_GRACE_PERIOD_MS as u64,
        }
    }
}

/// The machine's size, from cgroup limits where a container sets them.
#[derive(Debug, Clone, Copy)]
pub struct Machine {
    pub cores: usize,
    pub total_memory: u64,
}

impl Machine {
    pub fn detect() -> Machine {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let mut sys = sysinfo::System::new();
        sys.refresh_memory();
        let total_memory = sys
            .cgroup_limits()
            .map(|c| c.total_memory)
            .filter(|&m| m > 0)
            .unwrap_or_else(|| sys.total_memory());
        Machine {
            cores,
            total_memory,
        }
    }

    /// Agents mostly wait on the network, so several per core; memory bounds it at one
    /// per GiB. At least one, so a small machine still runs tasks.
    pub fn default_max_workers(&self) -> usize {
        let by_cpu = self.cores * 4;
        let by_memory = (self.total_memory / (1 << 30)) as usize;
        by_cpu.min(by_memory).max(1)
    }

    /// The original reserved 2.5 GiB, which stops everything on small machines: keep a
    /// tenth of memory, at most 2.5 GiB.
    pub fn default_memory_reserve(&self) -> u64 {
        (self.total_memory / 10).min(2_684_354_560)
    }
}

/// Where the engine gets the current settings; `beat config set` takes effect for new
/// work without a restart because the source re-reads the file when it changes.
pub type SettingsSource = Arc<dyn Fn() -> Arc<Settings> + Send + Sync>;

/// A source that always gives the same settings (tests, benchmarks).
pub fn fixed_settings(settings: Settings) -> SettingsSource {
    let settings = Arc::new(settings);
    Arc::new(move || settings.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_two_core_machine_runs_tasks_by_default() {
        let m = Machine {
            cores: 2,
            total_memory: 24 << 30,
        };
        assert_eq!(m.default_max_workers(), 8);
        let tiny = Machine {
            cores: 1,
            total_memory: 512 << 20,
        };
        assert_eq!(tiny.default_max_workers(), 1);
        assert!(tiny.default_memory_reserve() < tiny.total_memory);
    }
}
