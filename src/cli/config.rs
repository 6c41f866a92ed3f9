//! `beat config show|set|reset|path`: the file in `BACKBEAT_HOME`, environment over file
//! over defaults. `set` takes effect for new work without restarting the daemon.

use clap::Subcommand;
use serde_json::{Map, Value, json};

use super::print_json;
use crate::config::{self, KEYS, Source, read_file, resolve, write_file};
use crate::error::CliError;
use crate::mcp::tools::agents::mask;
use crate::paths::Home;

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Show every setting, its value and where it comes from
    Show {
        #[arg(long)]
        json: bool,
    },
    /// Set a key (e.g. `timeout 600000`, `agents.fake.command '["my-cli","{prompt}"]'`)
    Set { key: String, value: String },
    /// Remove a key from the file (back to the default)
    Reset { key: String },
    /// Print the configuration file's path
    Path,
}

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

pub fn run(cmd: ConfigCommand, home: &Home) -> Result<i32, CliError> {
    let path = home.config();
    match cmd {
        ConfigCommand::Path => {
            println!("{}", path.display());
        }
        ConfigCommand::Show { json } => {
            let file = read_file(&path).map_err(CliError::Refused)?;
            let mut warnings = Vec::new();
            let settings = config::load_settings(&path, &mut warnings);
            let mut out = Map::new();
            let mut rows = Vec::new();
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
                rows.push((key.name, value.clone(), source.clone(), key.help));
                out.insert(key.name.into(), json!({ "value": value, "source": source }));
            }
            out.insert("agents".into(), masked_agents(&file));
            if json {
                print_json(&json!({ "path": path.display().to_string(), "settings": out }));
            } else {
                for (name, value, source, help) in rows {
                    println!("{name:<18} {:<14} {source:<32} {help}", value.to_string());
                }
                println!("{:<18} {}", "agents", masked_agents(&file));
                eprintln!("File: {}", path.display());
            }
            for w in warnings {
                eprintln!("warning: {w}");
            }
        }
        ConfigCommand::Set { key, value } => {
            home.ensure()?;
            let mut file = read_file(&path).map_err(CliError::Refused)?;
            if let Some(rest) = key.strip_prefix("agents.") {
                set_agent_key(&mut file, rest, &value)?;
            } else {
                let k = config::key(&key).ok_or_else(|| {
                    let names: Vec<&str> = KEYS.iter().map(|k| k.name).collect();
                    CliError::Usage(format!("unknown key '{key}'. Keys: {}, agents.<name>.<command|model|systemPrompt|baseUrl|apiKey|expectedMemory>", names.join(", ")))
                })?;
                let parsed = config::parse_value(k, &value).map_err(CliError::Usage)?;
                file.insert(key.clone(), parsed);
                if std::env::var(k.env).is_ok_and(|v| !v.is_empty()) {
                    eprintln!(
                        "note: {} is set in the environment and wins over the file",
                        k.env
                    );
                }
            }
            write_file(&path, &file).map_err(CliError::Refused)?;
            eprintln!("{key} set in {}", path.display());
        }
        ConfigCommand::Reset { key } => {
            let mut file = read_file(&path).map_err(CliError::Refused)?;
            let removed = match key.strip_prefix("agents.") {
                Some(rest) => {
                    let (agent, field) = rest
                        .split_once('.')
                        .map(|(a, f)| (a, Some(f)))
                        .unwrap_or((rest, None));
                    match (file.get_mut("agents").and_then(Value::as_object_mut), field) {
                        (Some(agents), None) => agents.remove(agent).is_some(),
                        (Some(agents), Some(f)) => agents
                            .get_mut(agent)
                            .and_then(Value::as_object_mut)
                            .and_then(|a| a.remove(f))
                            .is_some(),
                        _ => false,
                    }
                }
                None => {
                    if config::key(&key).is_none() {
                        return Err(CliError::Usage(format!("unknown key '{key}'")));
                    }
                    file.remove(&key).is_some()
                }
            };
            if removed {
                write_file(&path, &file).map_err(CliError::Refused)?;
            }
            eprintln!("{key} reset to its default");
        }
    }
    Ok(0)
}

/// Sets one top-level key in the file.
pub fn set_value(home: &Home, key: &str, value: Value) -> Result<(), CliError> {
    home.ensure()?;
    let path = home.config();
    let mut file = read_file(&path).map_err(CliError::Refused)?;
    file.insert(key.into(), value);
    write_file(&path, &file).map_err(CliError::Refused)
}

fn set_agent_key(file: &mut Map<String, Value>, rest: &str, value: &str) -> Result<(), CliError> {
    let Some((agent, field)) = rest.split_once('.') else {
        return Err(CliError::Usage(
            "give agents.<name>.<field>, e.g. agents.fake.command".into(),
        ));
    };
    let parsed = match field {
        "command" => {
            let v: Value = serde_json::from_str(value).map_err(|_| {
                CliError::Usage("agents.<name>.command takes a JSON array of strings, e.g. '[\"my-cli\", \"--print\", \"{prompt}\"]'".into())
            })?;
            match &v {
                Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_string) => v,
                _ => {
                    return Err(CliError::Usage(
                        "agents.<name>.command must be a non-empty JSON array of strings".into(),
                    ));
                }
            }
        }
        "model" | "systemPrompt" | "baseUrl" | "apiKey" => Value::from(value),
        "expectedMemory" => Value::from(value.parse::<u64>().map_err(|_| {
            CliError::Usage(
                "agents.<name>.expectedMemory takes bytes, e.g. 1610612736 for 1.5 GiB".into(),
            )
        })?),
        "outputFormat" => match value {
            "plain" | "claude-stream-json" | "codex-json" | "gemini-stream-json" => {
                Value::from(value)
            }
            _ => return Err(CliError::Usage(
                "outputFormat is one of plain, claude-stream-json, codex-json, gemini-stream-json"
                    .into(),
            )),
        },
        other => {
            return Err(CliError::Usage(format!(
                "unknown agent setting '{other}': use command, model, systemPrompt, baseUrl, apiKey or expectedMemory"
            )));
        }
    };
    let agents = file.entry("agents").or_insert_with(|| json!({}));
    if !agents.is_object() {
        *agents = json!({});
    }
    let entry = agents
        .as_object_mut()
        .map(|a| a.entry(agent.to_string()).or_insert_with(|| json!({})));
    if let Some(Value::Object(a)) = entry {
        a.insert(field.into(), parsed);
    }
    Ok(())
}
