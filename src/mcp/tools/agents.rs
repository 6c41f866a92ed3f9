//! Agent tools: ListAgents and ConfigureAgent (spec section 3.4, plus `model`,
//! `baseUrl` and `systemPrompt`). Answers describe the daemon's environment, which is
//! the one agents run with.

use std::path::Path;

use backbeat_actors::agents::adapter::{AgentAdapter, adapter_for, agent_names, find_program};
use backbeat_actors::settings::Settings;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::context::{ToolContext, ToolOutcome};
use crate::config::{load_settings, reset_agent_settings, set_agent_settings};

/// List the agents, whether each is ready, and the default.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListAgentsArgs {}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum AgentAction {
    Set,
    #[default]
    Check,
    Reset,
}

/// Check, set or reset an agent's settings (API key, model, base URL, system prompt).
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConfigureAgentArgs {
    /// claude, codex, gemini, or an agent defined in the configuration.
    pub agent: String,
    /// set, check (the default) or reset.
    pub action: Option<AgentAction>,
    #[schemars(length(min = 1))]
    pub api_key: Option<String>,
    pub model: Option<String>,
    pub base_url: Option<String>,
    pub system_prompt: Option<String>,
}

/// `sk-...xyz`; short keys are all stars.
pub fn mask(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 8 {
        "***".into()
    } else {
        format!(
            "{}...{}",
            chars[..3].iter().collect::<String>(),
            chars[chars.len() - 3..].iter().collect::<String>()
        )
    }
}

/// Whether an agent can run, and how it authenticates (spec 5.2 checkAgentAuth).
pub fn agent_status(name: &str, settings: &Settings) -> Value {
    let adapter: Option<Box<dyn AgentAdapter>> = adapter_for(name, settings).ok();
    let configured = settings.agents.get(name).cloned().unwrap_or_default();
    let program = adapter.as_ref().and_then(|a| a.program().map(String::from));
    let cli_found = program.as_deref().is_none_or(|p| find_program(p).is_some());
    let key_env = adapter.as_ref().and_then(|a| a.api_key_env());
    let env_key = key_env
        .and_then(|v| std::env::var(v).ok())
        .filter(|v| !v.is_empty());
    let (ready, method, hint) = match (&env_key, &configured.api_key, cli_found) {
        (_, _, false) => (false, "none", adapter.as_ref().map(|a| a.install_hint())),
        (Some(_), _, true) => (true, "env-var", None),
        (None, Some(_), true) => (true, "config-file", None),
        (None, None, true) => match adapter.as_ref().and_then(|a| a.login_hint()) {
            Some(login) => (
                true,
                "cli-installed",
                Some(format!(
                    "CLI installed; authentication not verified: run `{login}` or set {}",
                    key_env.unwrap_or("its API key")
                )),
            ),
            None => (
                true,
                if program.is_some() {
                    "cli-installed"
                } else {
                    "builtin"
                },
                None,
            ),
        },
    };
    let mut v = json!({
        "provider": name,
        "description": adapter.as_ref().map(|a| a.description().to_string()).unwrap_or_default(),
        "registered": adapter.is_some(),
        "isDefault": settings.default_agent.as_deref() == Some(name),
        "authStatus": if ready { "ready" } else { "not-configured" },
        "authMethod": method,
        "ready": ready,
        "cliFound": cli_found,
        "model": configured.model,
        "baseUrl": configured.base_url,
        "systemPrompt": configured.system_prompt,
    });
    if let Some(h) = hint {
        v["hint"] = Value::from(h);
    }
    if let Some(var) = key_env {
        v["envVar"] = Value::from(var);
    }
    if let Some(k) = &configured.api_key {
        v["storedKey"] = Value::from(mask(k));
    }
    v
}

/// The settings of `config.json` now; a file that cannot be read is refused.
fn current_settings(path: &Path) -> Result<Settings, String> {
    crate::config::read_file(path)?;
    Ok(load_settings(path, &mut Vec::new()))
}

/// Runs `f` (which reads or writes `config.json` and looks agents' CLIs up) on the
/// blocking pool, never on the actix thread.
async fn off_thread(
    server: &ToolContext,
    f: impl FnOnce(&Path) -> ToolOutcome + Send + 'static,
) -> ToolOutcome {
    let path = server.home.config();
    tokio::task::spawn_blocking(move || f(&path))
        .await
        .map_err(|e| e.to_string())?
}

pub async fn list(server: &ToolContext, _args: ListAgentsArgs) -> ToolOutcome {
    off_thread(server, list_blocking).await
}

fn list_blocking(path: &Path) -> ToolOutcome {
    let settings = current_settings(path)?;
    let agents: Vec<Value> = agent_names(&settings)
        .iter()
        .map(|n| agent_status(n, &settings))
        .collect();
    Ok(json!({ "success": true, "agents": agents, "defaultAgent": settings.default_agent }))
}

pub async fn configure(server: &ToolContext, args: ConfigureAgentArgs) -> ToolOutcome {
    off_thread(server, move |path| configure_blocking(path, args)).await
}

fn configure_blocking(path: &Path, args: ConfigureAgentArgs) -> ToolOutcome {
    let settings = current_settings(path)?;
    adapter_for(&args.agent, &settings).map_err(|e| e.to_string())?;
    match args.action.unwrap_or_default() {
        AgentAction::Check => {
            let mut v = agent_status(&args.agent, &settings);
            v["success"] = Value::Bool(true);
            Ok(v)
        }
        AgentAction::Set => {
            let fields = [
                ("apiKey", args.api_key),
                ("model", args.model),
                ("baseUrl", args.base_url),
                ("systemPrompt", args.system_prompt),
            ];
            let given: Vec<(&str, Value)> = fields
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (k, Value::from(v))))
                .collect();
            if given.is_empty() {
                return Err(
                    "action 'set' needs at least one of apiKey, model, baseUrl, systemPrompt"
                        .into(),
                );
            }
            set_agent_settings(path, &args.agent, &given)?;
            // In force for new work before the answer, not when the watcher notices.
            crate::config::reload_daemon_settings_blocking();
            let changed: Vec<String> = given
                .iter()
                .map(|(k, v)| match (k, v.as_str()) {
                    (&"apiKey", Some(key)) => format!("apiKey ({})", mask(key)),
                    _ => k.to_string(),
                })
                .collect();
            Ok(
                json!({ "success": true, "message": format!("Stored for {}: {}", args.agent, changed.join(", ")) }),
            )
        }
        AgentAction::Reset => {
            reset_agent_settings(path, &args.agent, None)?;
            crate::config::reload_daemon_settings_blocking();
            Ok(json!({ "success": true, "message": format!("Settings of {} reset", args.agent) }))
        }
    }
}
