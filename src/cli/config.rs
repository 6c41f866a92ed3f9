//! `beat config show|set|reset|path`: the file in `BACKBEAT_HOME`, environment over file
//! over defaults. `set` takes effect for new work without restarting the daemon.

use clap::Subcommand;
use serde_json::{Value, json};

use super::{outln, print_json};
use crate::config::{self, KEYS, read_file, write_file};
use crate::error::CliError;
use crate::mcp::client::DaemonClient;
use crate::mcp::tools::config::{ReloadConfigArgs, ShowConfigArgs};
use crate::paths::Home;

#[derive(Subcommand)]
#[command(defer = true)]
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

pub fn run(cmd: ConfigCommand, home: &Home) -> Result<i32, CliError> {
    let path = home.config();
    match cmd {
        ConfigCommand::Path => {
            outln!("{}", path.display());
        }
        ConfigCommand::Show { json } => return super::block_on(show(home, json)),
        ConfigCommand::Set { key, value } => {
            home.ensure()?;
            if let Some(rest) = key.strip_prefix("agents.") {
                let Some((agent, field)) = rest.split_once('.') else {
                    return Err(CliError::Usage(
                        "give agents.<name>.<field>, e.g. agents.fake.command".into(),
                    ));
                };
                let parsed = config::parse_agent_field(field, &value).map_err(CliError::Usage)?;
                config::set_agent_settings(&path, agent, &[(field, parsed)])
                    .map_err(CliError::Refused)?;
            } else {
                let mut file = read_file(&path).map_err(CliError::Refused)?;
                let k = config::key(&key).ok_or_else(|| {
                    let names: Vec<&str> = KEYS.iter().map(|k| k.name).collect();
                    CliError::Usage(format!(
                        "unknown key '{key}'. Keys: {}, agents.<name>.<{}>",
                        names.join(", "),
                        config::AGENT_FIELDS.join("|")
                    ))
                })?;
                let parsed = config::parse_value(k, &value).map_err(CliError::Usage)?;
                if key == "defaultAgent" {
                    let settings = config::load_settings(&path, &mut Vec::new());
                    let names = backbeat_actors::agents::adapter::agent_names(&settings);
                    if !names.iter().any(|n| parsed.as_str() == Some(n.as_str())) {
                        return Err(CliError::Usage(format!(
                            "unknown agent '{value}': choose one of {} (or define it first with `beat config set agents.{value}.command '[\"my-cli\", \"{{prompt}}\"]'`)",
                            names.join(", ")
                        )));
                    }
                }
                file.insert(key.clone(), parsed);
                if std::env::var(k.env).is_ok_and(|v| !v.is_empty()) {
                    eprintln!(
                        "note: {} is set in the environment and wins over the file",
                        k.env
                    );
                }
                write_file(&path, &file).map_err(CliError::Refused)?;
            }
            eprintln!("{key} set in {}", path.display());
            tell_daemon(home)?;
        }
        ConfigCommand::Reset { key } => {
            match key.strip_prefix("agents.") {
                Some(rest) => {
                    let (agent, field) = rest
                        .split_once('.')
                        .map(|(a, f)| (a, Some(f)))
                        .unwrap_or((rest, None));
                    config::reset_agent_settings(&path, agent, field).map_err(CliError::Refused)?;
                }
                None => {
                    if config::key(&key).is_none() {
                        return Err(CliError::Usage(format!("unknown key '{key}'")));
                    }
                    let mut file = read_file(&path).map_err(CliError::Refused)?;
                    if file.remove(&key).is_some() {
                        write_file(&path, &file).map_err(CliError::Refused)?;
                    }
                }
            }
            eprintln!("{key} reset to its default");
            tell_daemon(home)?;
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

/// A running daemon puts the changed file in force before this command returns (it
/// would notice the change by itself a moment later); no daemon is started for it.
pub fn tell_daemon(home: &Home) -> Result<(), CliError> {
    super::block_on(async { tell_daemon_async(home).await.map(|()| 0) }).map(|_| ())
}

/// `tell_daemon`, from inside a command that is already async.
pub async fn tell_daemon_async(home: &Home) -> Result<(), CliError> {
    if crate::launcher::running_pid(home).is_none() {
        return Ok(());
    }
    let client = DaemonClient::connect(home).await?;
    client.call(&ReloadConfigArgs {}).await?;
    client.close().await;
    Ok(())
}

/// `beat config show`: what the daemon uses (asked of it, since its environment is the
/// one tasks get), and where the calling shell's environment differs.
async fn show(home: &Home, json: bool) -> Result<i32, CliError> {
    let mut client = DaemonClient::connect(home).await?;
    let v = client.read(&ShowConfigArgs {}).await?;
    client.close().await;
    let differences: Vec<String> = v["environment"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(var, daemon)| {
            let shell = std::env::var(var).ok().filter(|s| !s.is_empty());
            (shell.as_deref() != daemon.as_str()).then(|| {
                format!(
                    "{var} is {} in this shell but {} for the daemon",
                    shell.map(|s| format!("'{s}'")).unwrap_or("unset".into()),
                    daemon
                        .as_str()
                        .map(|s| format!("'{s}'"))
                        .unwrap_or("unset".into())
                )
            })
        })
        .collect();
    if json {
        print_json(&json!({
            "path": v["path"],
            "settings": v["settings"],
            "environmentDiffers": differences,
        }));
    } else {
        for key in KEYS {
            let (name, s) = (key.name, &v["settings"][key.name]);
            outln!(
                "{name:<18} {:<14} {:<32} {}",
                s["value"].to_string(),
                s["source"].as_str().unwrap_or(""),
                s["help"].as_str().unwrap_or("")
            );
        }
        outln!("{:<18} {}", "agents", v["settings"]["agents"]);
        eprintln!("File: {}", v["path"].as_str().unwrap_or(""));
    }
    for w in v["warnings"].as_array().into_iter().flatten() {
        eprintln!("warning: {}", w.as_str().unwrap_or(""));
    }
    if !differences.is_empty() {
        eprintln!(
            "note: the daemon uses its own environment, from when it started: {}. Restart it (`beat daemon stop`; the next command starts it) to use this shell's.",
            differences.join("; ")
        );
    }
    Ok(0)
}
