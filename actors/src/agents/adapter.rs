//! The adapter interface and the agents of the engine core: `shell` and `command`.
//!
//! The real CLIs (`claude`, `codex`, `gemini`) plug in here as further adapters: each
//! turns a task into a `LaunchCommand` (argv, environment, stdin) and may parse the
//! agent's output lines into typed events.

use std::path::{Path, PathBuf};

use crate::model::TaskRecord;
use crate::settings::{AgentSettings, Settings};

/// Prompts longer than this never go on the command line (Linux caps one argument at
/// 128 KiB); they are written to `prompt.txt` and given on stdin or as a file.
pub const MAX_PROMPT_ARG_BYTES: usize = 100 * 1024;

/// How to start one agent run.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchCommand {
    pub argv: Vec<String>,
    /// Variables added to (or overriding) the daemon's environment.
    pub env_set: Vec<(String, String)>,
    /// Variables removed from the daemon's environment: exact names, or prefixes
    /// ending in `*` (`CLAUDE_CODE_*`).
    pub env_remove: Vec<String>,
    /// Give the prompt on stdin followed by end-of-file (else stdin is `/dev/null`).
    pub prompt_on_stdin: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    #[error(
        "unknown agent '{name}'. Known agents: {known}. Define one with `beat config set agents.{name}.command '[\"my-cli\", \"{{prompt}}\"]'`, or choose one with --agent"
    )]
    Unknown { name: String, known: String },
    #[error(
        "no agent given and no default agent is set. Name one with --agent (MCP: the `agent` field), or set a default: `beat config set defaultAgent shell`. Known agents: {known}"
    )]
    NoDefault { known: String },
    #[error(
        "the agent '{agent}' needs the program '{program}', which was not found in PATH. Install it, or fix agents.{agent}.command in the configuration"
    )]
    ProgramNotFound { agent: String, program: String },
    #[error(
        "agents.{agent}.command is empty: give the program and its arguments, e.g. [\"my-cli\", \"{{prompt}}\"]"
    )]
    EmptyCommand { agent: String },
}

/// One kind of agent.
pub trait AgentAdapter: Send + Sync {
    /// The name tasks use for it (`shell`, a configured command agent, `claude`, ...).
    fn name(&self) -> &str;
    /// The program that must exist for the agent to run, if any beyond `/bin/sh`.
    fn program(&self) -> Option<&str>;
    /// The command line, environment and stdin for one run of `task`.
    fn command(&self, task: &TaskRecord, settings: &AgentSettings) -> LaunchCommand;
}

/// `shell`: runs the prompt with `sh -c`. Built in so that Backbeat works on a machine
/// with no AI CLI installed. Long prompts are run from `prompt.txt` on stdin.
pub struct ShellAgent;

impl AgentAdapter for ShellAgent {
    fn name(&self) -> &str {
        "shell"
    }
    fn program(&self) -> Option<&str> {
        None
    }
    fn command(&self, task: &TaskRecord, _settings: &AgentSettings) -> LaunchCommand {
        if task.prompt.len() <= MAX_PROMPT_ARG_BYTES {
            LaunchCommand {
                argv: vec!["/bin/sh".into(), "-c".into(), task.prompt.clone()],
                env_set: vec![],
                env_remove: vec![],
                prompt_on_stdin: false,
            }
        } else {
            LaunchCommand {
                argv: vec!["/bin/sh".into(), "-s".into()],
                env_set: vec![],
                env_remove: vec![],
                prompt_on_stdin: true,
            }
        }
    }
}

/// A user-defined agent: `agents.<name>.command` is an argv template. `{prompt}` in an
/// argument is replaced by the prompt; without `{prompt}` the prompt goes on stdin.
pub struct CommandAgent {
    name: String,
    template: Vec<String>,
}

impl AgentAdapter for CommandAgent {
    fn name(&self) -> &str {
        &self.name
    }
    fn program(&self) -> Option<&str> {
        self.template.first().map(String::as_str)
    }
    fn command(&self, task: &TaskRecord, _settings: &AgentSettings) -> LaunchCommand {
        let uses_placeholder = self.template.iter().any(|a| a.contains("{prompt}"));
        let fits = task.prompt.len() <= MAX_PROMPT_ARG_BYTES;
        let argv = self
            .template
            .iter()
            .map(|arg| {
                if uses_placeholder && fits {
                    arg.replace("{prompt}", &task.prompt)
                } else {
                    arg.replace("{prompt}", "-")
                }
            })
            .collect();
        LaunchCommand {
            argv,
            env_set: vec![],
            env_remove: vec![],
            prompt_on_stdin: !uses_placeholder || !fits,
        }
    }
}

/// Names of the agents the settings know, for error messages.
pub fn known_agents(settings: &Settings) -> String {
    let mut names = vec!["shell".to_string()];
    names.extend(
        settings
            .agents
            .iter()
            .filter(|(_, a)| a.command.is_some())
            .map(|(n, _)| n.clone()),
    );
    names.join(", ")
}

/// The adapter for `name` (or the default agent), checked to be runnable now.
pub fn resolve_agent(
    name: Option<&str>,
    settings: &Settings,
) -> Result<Box<dyn AgentAdapter>, AgentError> {
    let name = match name.or(settings.default_agent.as_deref()) {
        Some(n) => n,
        None => {
            return Err(AgentError::NoDefault {
                known: known_agents(settings),
            });
        }
    };
    let adapter: Box<dyn AgentAdapter> =
        match settings.agents.get(name).and_then(|a| a.command.clone()) {
            Some(template) => {
                if template.is_empty() || template[0].is_empty() {
                    return Err(AgentError::EmptyCommand {
                        agent: name.to_string(),
                    });
                }
                Box::new(CommandAgent {
                    name: name.to_string(),
                    template,
                })
            }
            None if name == "shell" => Box::new(ShellAgent),
            None => {
                return Err(AgentError::Unknown {
                    name: name.to_string(),
                    known: known_agents(settings),
                });
            }
        };
    if let Some(program) = adapter.program()
        && find_program(program).is_none()
    {
        return Err(AgentError::ProgramNotFound {
            agent: name.to_string(),
            program: program.to_string(),
        });
    }
    Ok(adapter)
}

/// The path of `program`: itself when it contains a slash, else the first executable
/// of that name in `PATH`.
pub fn find_program(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |p: &Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if program.contains('/') {
        let p = PathBuf::from(program);
        return is_exec(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| is_exec(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::task::tests_support::record_with_prompt;

    #[test]
    fn shell_runs_short_prompts_inline_and_long_ones_on_stdin() {
        let s = AgentSettings::default();
        let short = ShellAgent.command(&record_with_prompt("echo hi"), &s);
        assert_eq!(short.argv, ["/bin/sh", "-c", "echo hi"]);
        assert!(!short.prompt_on_stdin);
        let long = ShellAgent.command(&record_with_prompt(&"x".repeat(200 * 1024)), &s);
        assert!(long.prompt_on_stdin);
        assert!(long.argv.iter().all(|a| a.len() < 100));
    }

    #[test]
    fn command_agents_fill_the_placeholder_or_use_stdin() {
        let a = CommandAgent {
            name: "a".into(),
            template: vec!["x".into(), "--p={prompt}".into()],
        };
        let c = a.command(
            &record_with_prompt("hi \"there\""),
            &AgentSettings::default(),
        );
        assert_eq!(c.argv, ["x", "--p=hi \"there\""]);
        let b = CommandAgent {
            name: "b".into(),
            template: vec!["x".into()],
        };
        assert!(
            b.command(&record_with_prompt("hi"), &AgentSettings::default())
                .prompt_on_stdin
        );
    }

    #[test]
    fn unknown_and_missing_agents_say_what_to_do() {
        let mut settings = Settings::default();
        let err = resolve_agent(Some("nope"), &settings).err().unwrap();
        assert!(err.to_string().contains("Known agents: shell"), "{err}");
        assert!(matches!(
            resolve_agent(None, &settings),
            Err(AgentError::NoDefault { .. })
        ));
        settings.agents.insert(
            "ghost".into(),
            AgentSettings {
                command: Some(vec!["no-such-program-xyz".into()]),
                ..Default::default()
            },
        );
        let err = resolve_agent(Some("ghost"), &settings).err().unwrap();
        assert!(matches!(err, AgentError::ProgramNotFound { .. }), "{err}");
    }
}
