//! The configuration: `config.json` in `BACKBEAT_HOME`, the environment, the defaults.
//!
//! Owns: reading and writing `config.json` (0600, unknown keys kept), the environment
//! variables of the original (`TASK_TIMEOUT`, `MAX_OUTPUT_BUFFER`, ...), their
//! precedence (environment over file over defaults) and validation.
//! Must never: let one bad value reset the others (the original did, spec W22): a bad
//! value is reported and that one key falls back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use backbeat_actors::settings::{AgentSettings, Settings, SettingsSource};
use serde_json::{Map, Value};

/// One setting that `beat config` can show and set.
pub struct Key {
    pub name: &'static str,
    pub env: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

#[derive(Clone, Copy)]
pub enum Kind {
    /// An integer in a range.
    Int(u64, u64),
    Float(f64, f64),
    Text,
    Level,
}

pub const KEYS: &[Key] = &[
    Key {
        name: "timeout",
        env: "TASK_TIMEOUT",
        kind: Kind::Int(1_000, 86_400_000),
        help: "default task timeout, ms",
    },
    Key {
        name: "maxOutputBuffer",
        env: "MAX_OUTPUT_BUFFER",
        kind: Kind::Int(1_024, 1 << 30),
        help: "default output kept per task, bytes",
    },
    Key {
        name: "idleTimeout",
        env: "TASK_IDLE_TIMEOUT",
        kind: Kind::Int(1_000, 86_400_000),
        help: "default idle timeout (no output), ms; unset disables",
    },
    Key {
        name: "maxWorkers",
        env: "MAX_WORKERS",
        kind: Kind::Int(1, 1_000),
        help: "most agents running at once",
    },
    Key {
        name: "cpuCoresReserved",
        env: "CPU_CORES_RESERVED",
        kind: Kind::Float(0.0, 1024.0),
        help: "cores that must stay idle for a new agent to start (0 disables)",
    },
    Key {
        name: "memoryReserve",
        env: "MEMORY_RESERVE",
        kind: Kind::Int(0, 1 << 40),
        help: "bytes of memory that must stay available",
    },
    Key {
        name: "killGracePeriodMs",
        env: "PROCESS_KILL_GRACE_PERIOD_MS",
        kind: Kind::Int(0, 60_000),
        help: "time between TERM and KILL, ms",
    },
    Key {
        name: "scheduleGracePeriodMs",
        env: "SCHEDULE_GRACE_PERIOD_MS",
        kind: Kind::Int(0, 1 << 40),
        help: "how late a schedule's run may start before its missed-run policy applies, ms",
    },
    Key {
        name: "rateLimitRetries",
        env: "RATE_LIMIT_RETRIES",
        kind: Kind::Int(0, 100),
        help: "times a rate-limited run is queued again",
    },
    Key {
        name: "rateLimitBackoffMs",
        env: "RATE_LIMIT_BACKOFF_MS",
        kind: Kind::Int(0, 86_400_000),
        help: "first wait after a rate limit without a reset time, ms (doubles)",
    },
    Key {
        name: "taskRetentionDays",
        env: "TASK_RETENTION_DAYS",
        kind: Kind::Int(1, 365),
        help: "days a finished task or pipeline is kept (with its output) before it is removed",
    },
    Key {
        name: "defaultAgent",
        env: "BACKBEAT_DEFAULT_AGENT",
        kind: Kind::Text,
        help: "agent used when a task names none",
    },
    Key {
        name: "logLevel",
        env: "LOG_LEVEL",
        kind: Kind::Level,
        help: "debug, info, warn or error",
    },
];

pub fn key(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

/// Parses and checks a value for `key`; the error says what is allowed.
pub fn parse_value(key: &Key, text: &str) -> Result<Value, String> {
    match key.kind {
        Kind::Int(min, max) => match text.trim().parse::<u64>() {
            Ok(v) if (min..=max).contains(&v) => Ok(Value::from(v)),
            _ => Err(format!(
                "{} must be a whole number from {min} to {max}",
                key.name
            )),
        },
        Kind::Float(min, max) => match text.trim().parse::<f64>() {
            Ok(v) if v.is_finite() && (min..=max).contains(&v) => Ok(Value::from(v)),
            _ => Err(format!("{} must be a number from {min} to {max}", key.name)),
        },
        Kind::Text if !text.trim().is_empty() => Ok(Value::from(text.trim())),
        Kind::Text => Err(format!("{} must not be empty", key.name)),
        Kind::Level => match text.trim() {
            l @ ("debug" | "info" | "warn" | "error") => Ok(Value::from(l)),
            _ => Err(format!(
                "{} must be one of debug, info, warn, error",
                key.name
            )),
        },
    }
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Where a resolved value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Environment,
    File,
    Default,
}

/// The file's contents (an empty object when there is none).
pub fn read_file(path: &Path) -> Result<Map<String, Value>, String> {
    match std::fs::read(path) {
        Ok(bytes) => match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err(format!(
                "{} is not a JSON object: fix it, or remove it to use the defaults",
                path.display()
            )),
            Err(e) => Err(format!(
                "{} is not valid JSON ({e}): fix it, or remove it to use the defaults",
                path.display()
            )),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Map::new()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Writes the file atomically with mode 0600.
pub fn write_file(path: &Path, map: &Map<String, Value>) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("json.tmp");
    let text =
        serde_json::to_string_pretty(&Value::Object(map.clone())).map_err(|e| e.to_string())?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot replace {}: {e}", path.display()))
}

/// The settings an agent entry of `config.json` takes, and what each must be.
pub const AGENT_FIELDS: &[&str] = &[
    "command",
    "model",
    "systemPrompt",
    "baseUrl",
    "apiKey",
    "outputFormat",
    "expectedMemory",
];

/// Checks one agent setting: `command` is a JSON array of strings, `outputFormat` one
/// of the known formats, the rest text. The error says what is allowed.
pub fn parse_agent_field(field: &str, value: &str) -> Result<Value, String> {
    match field {
        "command" => {
            let v: Value = serde_json::from_str(value).map_err(|_| {
                "agents.<name>.command takes a JSON array of strings, e.g. '[\"my-cli\", \"--print\", \"{prompt}\"]'".to_string()
            })?;
            match &v {
                Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_string) => {
                    Ok(v)
                }
                _ => Err("agents.<name>.command must be a non-empty JSON array of strings".into()),
            }
        }
        "model" | "systemPrompt" | "baseUrl" | "apiKey" => Ok(Value::from(value)),
        "expectedMemory" => value.parse::<u64>().map(Value::from).map_err(|_| {
            "agents.<name>.expectedMemory takes bytes, e.g. 1610612736 for 1.5 GiB".to_string()
        }),
        "outputFormat" => match value {
            "plain" | "claude-stream-json" | "codex-json" | "gemini-stream-json" => {
                Ok(Value::from(value))
            }
            _ => Err(
                "outputFormat is one of plain, claude-stream-json, codex-json, gemini-stream-json"
                    .into(),
            ),
        },
        other => Err(format!(
            "unknown agent setting '{other}': use {}",
            AGENT_FIELDS.join(", ")
        )),
    }
}

/// Sets agent settings in `config.json`: the one writer of `agents.<name>`, used by
/// `ConfigureAgent` and `beat config set agents.…` alike.
pub fn set_agent_settings(
    path: &Path,
    agent: &str,
    fields: &[(&str, Value)],
) -> Result<(), String> {
    let mut file = read_file(path)?;
    let agents = file
        .entry("agents")
        .or_insert_with(|| Value::Object(Map::new()));
    if !agents.is_object() {
        *agents = Value::Object(Map::new());
    }
    if let Some(agents) = agents.as_object_mut() {
        let entry = agents
            .entry(agent.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        if let Some(entry) = entry.as_object_mut() {
            for (field, value) in fields {
                entry.insert(field.to_string(), value.clone());
            }
        }
    }
    write_file(path, &file)
}

/// Removes an agent's settings (one `field`, or all of them); whether anything was.
pub fn reset_agent_settings(path: &Path, agent: &str, field: Option<&str>) -> Result<bool, String> {
    let mut file = read_file(path)?;
    let Some(agents) = file.get_mut("agents").and_then(Value::as_object_mut) else {
        return Ok(false);
    };
    let removed = match field {
        None => agents.remove(agent).is_some(),
        Some(f) => agents
            .get_mut(agent)
            .and_then(Value::as_object_mut)
            .and_then(|a| a.remove(f))
            .is_some(),
    };
    if agents.is_empty() {
        file.remove("agents");
    }
    if removed {
        write_file(path, &file)?;
    }
    Ok(removed)
}

/// A resolved value and where it came from; `None` when unset everywhere.
pub fn resolve(
    key: &Key,
    file: &Map<String, Value>,
    warnings: &mut Vec<String>,
) -> (Option<Value>, Source) {
    if let Ok(text) = std::env::var(key.env)
        && !text.is_empty()
    {
        match parse_value(key, &text) {
            Ok(v) => return (Some(v), Source::Environment),
            Err(e) => warnings.push(format!("ignoring {}={text}: {e}", key.env)),
        }
    }
    if let Some(v) = file.get(key.name).filter(|v| !v.is_null()) {
        match parse_value(key, &value_text(v)) {
            Ok(v) => return (Some(v), Source::File),
            Err(e) => warnings.push(format!("ignoring {} in config.json: {e}", key.name)),
        }
    }
    (None, Source::Default)
}

/// Environment over file over defaults, for the engine.
pub fn load_settings(path: &Path, warnings: &mut Vec<String>) -> Settings {
    let file = read_file(path).unwrap_or_else(|e| {
        warnings.push(e);
        Map::new()
    });
    let mut s = Settings::default();
    let get = |name: &str, warnings: &mut Vec<String>| {
        key(name).and_then(|k| resolve(k, &file, warnings).0)
    };
    if let Some(v) = get("timeout", warnings).and_then(|v| v.as_u64()) {
        s.timeout = v;
    }
    if let Some(v) = get("maxOutputBuffer", warnings).and_then(|v| v.as_u64()) {
        s.max_output_buffer = v;
    }
    s.idle_timeout = get("idleTimeout", warnings).and_then(|v| v.as_u64());
    if let Some(v) = get("maxWorkers", warnings).and_then(|v| v.as_u64()) {
        s.max_workers = v as usize;
    }
    if let Some(v) = get("cpuCoresReserved", warnings).and_then(|v| v.as_f64()) {
        s.cpu_cores_reserved = v;
    }
    if let Some(v) = get("memoryReserve", warnings).and_then(|v| v.as_u64()) {
        s.memory_reserve = v;
    }
    if let Some(v) = get("killGracePeriodMs", warnings).and_then(|v| v.as_u64()) {
        s.kill_grace_period_ms = v;
    }
    if let Some(v) = get("scheduleGracePeriodMs", warnings).and_then(|v| v.as_u64()) {
        s.schedule_grace_period_ms = v;
    }
    if let Some(v) = get("rateLimitRetries", warnings).and_then(|v| v.as_u64()) {
        s.rate_limit_retries = v as u32;
    }
    if let Some(v) = get("rateLimitBackoffMs", warnings).and_then(|v| v.as_u64()) {
        s.rate_limit_backoff_ms = v;
    }
    if let Some(v) = get("taskRetentionDays", warnings).and_then(|v| v.as_u64()) {
        s.task_retention_days = v as u32;
    }
    s.default_agent = get("defaultAgent", warnings).and_then(|v| v.as_str().map(String::from));
    if let Some(Value::Object(agents)) = file.get("agents") {
        let mut map = BTreeMap::new();
        for (name, value) in agents {
            match serde_json::from_value::<AgentSettings>(value.clone()) {
                Ok(a) => {
                    map.insert(name.clone(), a);
                }
                Err(e) => warnings.push(format!("ignoring agents.{name} in config.json: {e}")),
            }
        }
        s.agents = map;
    }
    s
}

/// The daemon's settings, kept current without a file system call on the reading
/// thread: readers clone an `Arc`. A watcher thread waits on inotify for the file's
/// folder and re-reads `config.json` when it is written or replaced (a hand edit applies
/// to new work within milliseconds), and `reload` re-reads it at once: `ReloadConfig`
/// (which `beat config set` calls) and `ConfigureAgent` do, so that a change is in
/// force before they answer. The environment is the daemon's, read when it started.
pub struct LiveSettings {
    path: PathBuf,
    current: Mutex<Arc<Settings>>,
}

/// The daemon's live settings, once it has started them (the one `config.json` a daemon
/// serves; the tools that change it reload it here).
static DAEMON_SETTINGS: std::sync::OnceLock<Arc<LiveSettings>> = std::sync::OnceLock::new();

/// The daemon's live settings (`None` outside a daemon).
pub fn daemon_settings() -> Option<Arc<LiveSettings>> {
    DAEMON_SETTINGS.get().cloned()
}

/// Re-reads the daemon's settings now, if this is a daemon (off the actix thread).
pub async fn reload_daemon_settings() {
    let _ = tokio::task::spawn_blocking(reload_daemon_settings_blocking).await;
}

/// `reload_daemon_settings`, from code already on the blocking pool.
pub fn reload_daemon_settings_blocking() {
    if let Some(live) = daemon_settings() {
        live.reload();
    }
}

impl LiveSettings {
    /// Reads the settings and starts watching the file. The first started in a process
    /// is the daemon's (`daemon_settings`).
    pub fn start(path: PathBuf) -> Arc<LiveSettings> {
        let live = Arc::new(LiveSettings {
            current: Mutex::new(load_live(&path, None)),
            path,
        });
        let _ = DAEMON_SETTINGS.set(live.clone());
        let watcher = live.clone();
        let started = std::thread::Builder::new()
            .name("config-watch".into())
            .spawn(move || watcher.watch());
        if let Err(e) = started {
            tracing::warn!(error = %e, "config.json is not watched: hand edits apply after `beat config set` or a restart");
        }
        live
    }

    /// The engine's view: the current settings, no file read.
    pub fn source(self: &Arc<Self>) -> SettingsSource {
        let live = self.clone();
        Arc::new(move || live.current())
    }

    pub fn current(&self) -> Arc<Settings> {
        match self.current.lock() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Re-reads `config.json` now. Blocking: call it off the actix thread.
    pub fn reload(&self) {
        let before = self.current();
        let next = load_live(&self.path, Some(&before));
        match self.current.lock() {
            Ok(mut c) => *c = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
    }

    /// Waits for changes to the file (its folder's events naming it) and re-reads it.
    fn watch(&self) {
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        let (Some(dir), Some(name)) = (self.path.parent(), self.path.file_name()) else {
            return;
        };
        let watched = Inotify::init(InitFlags::IN_CLOEXEC).and_then(|fd| {
            fd.add_watch(
                dir,
                AddWatchFlags::IN_CLOSE_WRITE
                    | AddWatchFlags::IN_MOVED_TO
                    | AddWatchFlags::IN_CREATE
                    | AddWatchFlags::IN_DELETE,
            )?;
            Ok(fd)
        });
        let fd = match watched {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!(error = %e, "config.json is not watched: hand edits apply after `beat config set` or a restart");
                return;
            }
        };
        loop {
            match fd.read_events() {
                Ok(events) => {
                    if events
                        .iter()
                        .any(|e| e.mask.contains(AddWatchFlags::IN_IGNORED))
                    {
                        return; // the folder is gone
                    }
                    if events.iter().any(|e| e.name.as_deref() == Some(name)) {
                        self.reload();
                    }
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "stopped watching config.json");
                    return;
                }
            }
        }
    }
}

/// Reads the settings; a file that became unreadable keeps those read before, and
/// says so.
fn load_live(path: &Path, before: Option<&Arc<Settings>>) -> Arc<Settings> {
    if let (Err(e), Some(before)) = (read_file(path), before) {
        tracing::error!("{e}; the settings read before stay in use");
        return before.clone();
    }
    let mut warnings = Vec::new();
    let s = load_settings(path, &mut warnings);
    for w in warnings {
        tracing::warn!("{w}");
    }
    Arc::new(s)
}
