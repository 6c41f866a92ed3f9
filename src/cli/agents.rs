//! `beat agents list|check|config` and `beat init`.

use std::io::{BufRead, IsTerminal, Write};

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::{outln, print_json};
use crate::error::CliError;
use crate::mcp::client::DaemonClient;
use crate::mcp::tools::agents::{AgentAction, ConfigureAgentArgs, ListAgentsArgs};
use crate::paths::Home;

#[derive(Args)]
pub struct AgentsArgs {
    #[command(subcommand)]
    command: Option<AgentsCommand>,
}

#[derive(Subcommand)]
#[command(defer = true)]
enum AgentsCommand {
    /// The agents, with the default marked (the default command)
    List {
        #[arg(long)]
        json: bool,
    },
    /// Whether each agent's CLI is installed and how it authenticates
    Check {
        #[arg(long)]
        json: bool,
    },
    /// An agent's settings: apiKey, model, baseUrl, systemPrompt
    #[command(subcommand)]
    Config(AgentConfigCommand),
}

#[derive(Subcommand)]
#[command(defer = true)]
enum AgentConfigCommand {
    /// Set apiKey, model, baseUrl or systemPrompt of an agent
    Set {
        agent: String,
        key: String,
        value: String,
    },
    /// Show an agent's settings (keys masked)
    Show {
        agent: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Remove all of an agent's settings
    Reset { agent: String },
}

#[derive(Args)]
pub struct InitArgs {
    /// The default agent (asked for when omitted on a terminal)
    #[arg(short, long)]
    agent: Option<String>,
    /// Replace an existing default without asking
    #[arg(short, long)]
    yes: bool,
}

async fn agents(home: &Home) -> Result<(Vec<Value>, Option<String>), CliError> {
    let client = DaemonClient::connect(home).await?;
    let v = client.call(&ListAgentsArgs {}).await?;
    client.close().await;
    Ok((
        v["agents"].as_array().cloned().unwrap_or_default(),
        v["defaultAgent"].as_str().map(String::from),
    ))
}

fn badge(a: &Value) -> &'static str {
    match (a["ready"].as_bool(), a["authMethod"].as_str()) {
        (Some(false), _) => "[action needed]",
        (_, Some("cli-installed")) => "[check auth]",
        _ => "[ready]",
    }
}

pub async fn run(args: AgentsArgs, home: &Home) -> Result<i32, CliError> {
    match args.command.unwrap_or(AgentsCommand::List { json: false }) {
        AgentsCommand::List { json } => {
            let (list, default) = agents(home).await?;
            if json {
                print_json(&json!({ "agents": list, "defaultAgent": default }));
            } else {
                for a in &list {
                    let mark = if a["isDefault"] == true {
                        " [default]"
                    } else {
                        ""
                    };
                    outln!(
                        "{:<8} {}{mark}",
                        a["provider"].as_str().unwrap_or(""),
                        a["description"].as_str().unwrap_or("")
                    );
                }
                if default.is_none() {
                    eprintln!("No default agent: run `beat init` to choose one.");
                }
            }
        }
        AgentsCommand::Check { json } => {
            let (list, default) = agents(home).await?;
            if json {
                print_json(&json!({ "agents": list, "defaultAgent": default }));
            } else {
                outln!("{:<8} {:<9} {:<15} STATUS", "AGENT", "CLI", "AUTH");
                for a in &list {
                    outln!(
                        "{:<8} {:<9} {:<15} {}",
                        a["provider"].as_str().unwrap_or(""),
                        if a["cliFound"] == true {
                            "found"
                        } else {
                            "missing"
                        },
                        a["authMethod"].as_str().unwrap_or(""),
                        badge(a)
                    );
                    if let Some(h) = a["hint"].as_str() {
                        outln!("         {h}");
                    }
                }
            }
        }
        AgentsCommand::Config(cmd) => return config(cmd, home).await,
    }
    Ok(0)
}

async fn config(cmd: AgentConfigCommand, home: &Home) -> Result<i32, CliError> {
    let client = DaemonClient::connect(home).await?;
    let result = match cmd {
        AgentConfigCommand::Set { agent, key, value } => {
            let mut request = ConfigureAgentArgs {
                agent,
                action: Some(AgentAction::Set),
                ..Default::default()
            };
            let slot = match key.as_str() {
                "apiKey" => &mut request.api_key,
                "model" => &mut request.model,
                "baseUrl" => &mut request.base_url,
                "systemPrompt" => &mut request.system_prompt,
                other => {
                    return Err(CliError::Usage(format!(
                        "unknown agent setting '{other}': use apiKey, model, baseUrl or systemPrompt"
                    )));
                }
            };
            *slot = Some(value);
            if request.api_key.is_some() {
                eprintln!(
                    "note: a key typed on the command line stays in your shell history; the environment variable is safer"
                );
            }
            let v = client.call(&request).await?;
            eprintln!("{}", v["message"].as_str().unwrap_or("stored"));
            Ok(0)
        }
        AgentConfigCommand::Show { agent, json } => {
            let list = match agent {
                Some(agent) => vec![
                    client
                        .call(&ConfigureAgentArgs {
                            agent,
                            action: Some(AgentAction::Check),
                            ..Default::default()
                        })
                        .await?,
                ],
                None => client.call(&ListAgentsArgs {}).await?["agents"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
            };
            if json {
                print_json(&json!({ "agents": list }));
            } else {
                for a in &list {
                    outln!("{}:", a["provider"].as_str().unwrap_or(""));
                    for key in ["model", "baseUrl", "systemPrompt", "storedKey", "envVar"] {
                        if let Some(v) = a.get(key).filter(|v| !v.is_null()) {
                            outln!(
                                "  {key}: {}",
                                v.as_str()
                                    .map(String::from)
                                    .unwrap_or_else(|| v.to_string())
                            );
                        }
                    }
                }
            }
            Ok(0)
        }
        AgentConfigCommand::Reset { agent } => {
            let v = client
                .call(&ConfigureAgentArgs {
                    agent,
                    action: Some(AgentAction::Reset),
                    ..Default::default()
                })
                .await?;
            eprintln!("{}", v["message"].as_str().unwrap_or("reset"));
            Ok(0)
        }
    };
    client.close().await;
    result
}

/// `beat init`: choose the default agent; asks on a terminal, takes `--agent` otherwise.
pub async fn init(args: InitArgs, home: &Home) -> Result<i32, CliError> {
    let (list, default) = agents(home).await?;
    let names: Vec<String> = list
        .iter()
        .filter_map(|a| a["provider"].as_str().map(String::from))
        .collect();
    let chosen = match args.agent {
        Some(a) => a,
        None => {
            if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
                return Err(CliError::Usage(
                    "no terminal to ask on: use `beat init --agent <agent>`".into(),
                ));
            }
            if let Some(d) = &default
                && !args.yes
            {
                eprint!("The default agent is {d}. Choose another? [y/N] ");
                let _ = std::io::stderr().flush();
                let mut answer = String::new();
                std::io::stdin().lock().read_line(&mut answer)?;
                if !answer.trim().eq_ignore_ascii_case("y") {
                    return Ok(0);
                }
            }
            let mut sorted = list.clone();
            sorted.sort_by_key(|a| a["ready"] != true);
            for (i, a) in sorted.iter().enumerate() {
                eprintln!(
                    "  {}. {:<8} {} {}",
                    i + 1,
                    a["provider"].as_str().unwrap_or(""),
                    a["description"].as_str().unwrap_or(""),
                    badge(a)
                );
            }
            eprint!("Default agent (number or name): ");
            let _ = std::io::stderr().flush();
            let mut answer = String::new();
            std::io::stdin().lock().read_line(&mut answer)?;
            let answer = answer.trim();
            match answer.parse::<usize>() {
                Ok(n) if (1..=sorted.len()).contains(&n) => {
                    sorted[n - 1]["provider"].as_str().unwrap_or("").to_string()
                }
                _ => answer.to_string(),
            }
        }
    };
    if !names.contains(&chosen) {
        return Err(CliError::Usage(format!(
            "unknown agent '{chosen}': choose one of {}",
            names.join(", ")
        )));
    }
    super::config::set_value(home, "defaultAgent", Value::from(chosen.clone()))?;
    super::config::tell_daemon_async(home).await?;
    eprintln!("Default agent: {chosen}");
    if let Some(a) = list.iter().find(|a| a["provider"] == chosen.as_str())
        && let Some(h) = a["hint"].as_str()
    {
        eprintln!("{h}");
    }
    Ok(0)
}
