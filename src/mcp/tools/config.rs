//! The configuration tools: ShowConfig, the settings the daemon uses (its answer is
//! computed in the daemon, with the daemon's environment, which is the one its tasks
//! get; `beat config show` prints it and compares it with the calling shell's), and
//! ReloadConfig, which puts `config.json` in force now (`beat config set` calls it; the
//! daemon also notices a hand edit by itself).
//! Must never: show an API key unmasked.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::agents::mask;
use super::context::{ToolContext, ToolOutcome};
use crate::config::{KEYS, Source, load_settings, read_file, resolve};

/// The settings the daemon uses, each with its value and where it comes from.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShowConfigArgs {}

/// The `agents` section with API keys masked.
fn masked_agents(file: &Map<String, Value>) -> Value {
    let mut agents = file.get("agents").cloned().unwrap_or(json!({}));
    if let Value::Object(map) = &mut agents {
        for agent in map.values_mut() {
            if let Some(Value::String(k)) = agent.get("apiKey").cloned() {
                agent["apiKey"] = Value::from(mask(&k));
            }
        }
    }
    agents
}

/// Re-read `config.json` now.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReloadConfigArgs {}

pub async fn reload(_server: &ToolContext, _args: ReloadConfigArgs) -> ToolOutcome {
    crate::config::reload_daemon_settings().await;
    Ok(json!({ "success": true, "message": "config.json is in force for new work" }))
}

pub async fn show(server: &ToolContext, _args: ShowConfigArgs) -> ToolOutcome {
    // It reads config.json: on the blocking pool, never on the actix thread.
    let path = server.home.config();
    tokio::task::spawn_blocking(move || show_blocking(path))
        .await
        .map_err(|e| e.to_string())?
}

fn show_blocking(path: std::path::PathBuf) -> ToolOutcome {
    let file = read_file(&path)?;
    let mut warnings = Vec::new();
    let settings = load_settings(&path, &mut warnings);
    let mut out = Map::new();
    let mut environment = Map::new();
    for key in KEYS {
        let (value, source) = resolve(key, &file, &mut Vec::new());
        let value = value.unwrap_or_else(|| match key.name {
            "timeout" => Value::from(settings.timeout),
            "maxOutputBuffer" => Value::from(settings.max_output_buffer),
            "maxWorkers" => Value::from(settings.max_workers),
            "cpuCoresReserved" => Value::from(settings.cpu_cores_reserved),
            "memoryReserve" => Value::from(settings.memory_reserve),
            "killGracePeriodMs" => Value::from(settings.kill_grace_period_ms),
            "rateLimitRetries" => Value::from(settings.rate_limit_retries),
            "rateLimitBackoffMs" => Value::from(settings.rate_limit_backoff_ms),
            "logLevel" => Value::from("info"),
            _ => Value::Null,
        });
        let source = match source {
            Source::Environment => format!("environment ({})", key.env),
            Source::File => "config.json".into(),
            Source::Default => "default".into(),
        };
        out.insert(
            key.name.into(),
            json!({ "value": value, "source": source, "env": key.env, "help": key.help }),
        );
        environment.insert(
            key.env.into(),
            std::env::var(key.env)
                .ok()
                .filter(|v| !v.is_empty())
                .map(Value::from)
                .unwrap_or(Value::Null),
        );
    }
    out.insert("agents".into(), masked_agents(&file));
    Ok(json!({
        "success": true,
        "path": path.display().to_string(),
        "settings": out,
        "environment": environment,
        "warnings": warnings,
    }))
}
