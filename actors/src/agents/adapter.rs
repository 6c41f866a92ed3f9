//! The adapter interface and the agents of the engine core: `shell` and `command`.
//!
//! The real CLIs (`claude`, `codex`, `gemini`) plug in here as further adapters: each
//! turns a task into a `LaunchCommand` (argv, environment, stdin) and may parse the
//! agent's output lines into typed events.

use std::path::{Path, PathBuf};

use super::parse::OutputFormat;
use crate::model::TaskRecord;
use crate::settings::{AgentSettings, Settings};

/// Prompts longer than this never go on the command line (Linux caps one argument at
/// 128 KiB); they are written to `prompt.txt` and given on stdin or as a file.
pub const MAX_PROMPT_ARG_BYTES: usize = 100 * 1024;

/// How to start one agent run.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LaunchCommand {
    pub argv: Vec<String>,
    /// Variables added to (or overriding) the daemon's environment. `{runDir}` in a
    /// value is replaced by the run folder's path.
    pub env_set: Vec<(String, String)>,
    /// Variables set only where the daemon's environment lacks them (environment over
    /// configuration: a key in the environment wins over one in `config.json`).
    pub env_default: Vec<(String, String)>,
    /// Variables removed from the daemon's environment: exact names, or prefixes
    /// ending in `*`.
    pub env_remove: Vec<String>,
    /// Give the prompt on stdin followed by end-of-file (else stdin is `/dev/null`).
    pub prompt_on_stdin: bool,
    /// Files written into the run folder before the agent starts (name, content).
    pub files: Vec<(String, String)>,
    pub output_format: OutputFormat,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    #[error(
        "unknown agent '{name}'. Known agents: {known}. Define one with `beat config set agents.{name}.command '[\"my-cli\", \"{{prompt}}\"]'`, or choose one with --agent"
    )]
    Unknown { name: String, known: String },
    #[error(
        "no agent given and no default agent is set. Name one with --agent (MCP: the `agent` field), or set a default with `beat init --agent <agent>` (or `beat config set defaultAgent <agent>`). Known agents: {known}"
    )]
    NoDefault { known: String },
    #[error(
        "the agent '{agent}' needs the program '{program}', which was not found in PATH. {hint}"
    )]
    ProgramNotFound {
        agent: String,
        program: String,
        hint: String,
    },
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
    fn description(&self) -> &str {
        "a command defined in the configuration"
    }
    /// How to install the program, for error messages.
    fn install_hint(&self) -> String {
        "Install it, or fix the agent's command in the configuration".into()
    }
    /// The environment variable that carries this agent's API key.
    fn api_key_env(&self) -> Option<&'static str> {
        None
    }
    /// The CLI's own login, for hints (`claude login`).
    fn login_hint(&self) -> Option<&'static str> {
        None
    }
    /// Whether the CLI can continue one of its own sessions.
    fn supports_resume(&self) -> bool {
        false
    }
}

/// Settings every adapter applies the same way: the agent's `env`, and its API key and
/// base URL (only where the environment has none: environment over configuration).
fn common_env(
    cmd: &mut LaunchCommand,
    settings: &AgentSettings,
    key_env: Option<&str>,
    url_env: Option<&str>,
) {
    if let (Some(var), Some(key)) = (key_env, settings.api_key.as_ref()) {
        cmd.env_default.push((var.into(), key.clone()));
    }
    if let (Some(var), Some(url)) = (url_env, settings.base_url.as_ref()) {
        cmd.env_default.push((var.into(), url.clone()));
    }
    cmd.env_set
        .extend(settings.env.iter().map(|(k, v)| (k.clone(), v.clone())));
}

fn model_of<'a>(task: &'a TaskRecord, settings: &'a AgentSettings) -> Option<&'a str> {
    task.model.as_deref().or(settings.model.as_deref())
}

fn system_prompt_of<'a>(task: &'a TaskRecord, settings: &'a AgentSettings) -> Option<&'a str> {
    task.system_prompt
        .as_deref()
        .or(settings.system_prompt.as_deref())
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// What a Claude Code session sets in its children's environment to mark them as part
/// of itself (read from the pinned CLI, 2.1.197: its shell and MCP children get
/// `CLAUDECODE`, `CLAUDE_CODE_SESSION_ID`, `CLAUDE_CODE_CHILD_SESSION` and
/// `CLAUDE_CODE_EXECPATH`; `CLAUDE_CODE_ENTRYPOINT` and `CLAUDE_CODE_SSE_PORT` tie it to
/// the parent's front end and IDE). A Claude Code that delegated to Backbeat must not make
/// its agents run as its "nested sessions". Every other `CLAUDE_CODE_*` variable is the
/// user's configuration (`CLAUDE_CODE_OAUTH_TOKEN`, `CLAUDE_CODE_USE_BEDROCK`, ...) and is
/// kept.
pub const CLAUDE_NESTING_MARKERS: [&str; 6] = [
    "CLAUDECODE",
    "CLAUDE_CODE_ENTRYPOINT",
    "CLAUDE_CODE_SSE_PORT",
    "CLAUDE_CODE_SESSION_ID",
    "CLAUDE_CODE_CHILD_SESSION",
    "CLAUDE_CODE_EXECPATH",
];

/// Claude Code: `claude -p --output-format stream-json --verbose`, permissions skipped so
/// that an unattended agent can write files.
pub struct ClaudeAgent;

impl AgentAdapter for ClaudeAgent {
    fn name(&self) -> &str {
        "claude"
    }
    fn program(&self) -> Option<&str> {
        Some("claude")
    }
    fn description(&self) -> &str {
        "Claude Code (Anthropic)"
    }
    fn install_hint(&self) -> String {
        "Install it with `npm install -g @anthropic-ai/claude-code`, then log in with `claude login` or set ANTHROPIC_API_KEY".into()
    }
    fn api_key_env(&self) -> Option<&'static str> {
        Some("ANTHROPIC_API_KEY")
    }
    fn login_hint(&self) -> Option<&'static str> {
        Some("claude login")
    }
    fn supports_resume(&self) -> bool {
        true
    }
    fn command(&self, task: &TaskRecord, settings: &AgentSettings) -> LaunchCommand {
        let mut argv: Vec<String> = [
            "claude",
            "-p",
            "--output-format",
            "stream-json",
            "--verbose",
            "--dangerously-skip-permissions",
        ]
        .map(String::from)
        .to_vec();
        if let Some(m) = model_of(task, settings) {
            argv.extend(["--model".into(), m.into()]);
        }
        if let Some(s) = system_prompt_of(task, settings) {
            argv.extend(["--append-system-prompt".into(), s.into()]);
        }
        if let Some(id) = &task.resume_session {
            argv.extend(["--resume".into(), id.clone()]);
        }
        argv.extend(settings.args.iter().cloned());
        let fits = task.prompt.len() <= MAX_PROMPT_ARG_BYTES;
        if fits {
            // After `--`, a prompt that starts with `-` is not taken for an option.
            argv.extend(["--".into(), task.prompt.clone()]);
        }
        let mut cmd = LaunchCommand {
            argv,
            env_remove: CLAUDE_NESTING_MARKERS.map(String::from).to_vec(),
            prompt_on_stdin: !fits,
            output_format: OutputFormat::ClaudeStreamJson,
            ..Default::default()
        };
        if is_root() {
            // Claude refuses to skip permissions as root unless told it is sandboxed.
            // Set, not defaulted: Claude accepts only "1" (an inherited "yes" fails).
            cmd.env_set.push(("IS_SANDBOX".into(), "1".into()));
        }
        common_env(
            &mut cmd,
            settings,
            self.api_key_env(),
            Some("ANTHROPIC_BASE_URL"),
        );
        cmd
    }
}

/// Codex CLI: `codex exec --json` with approvals and sandbox bypassed (the original's
/// `--quiet --full-auto` no longer exist, spec W25).
pub struct CodexAgent;

/// A TOML basic string for `-c key=value` overrides. JSON escaping covers quotes,
/// backslashes and control characters; TOML also forbids a raw DEL. (Codex uses a value
/// that does not parse as TOML raw, silently: it must always parse.)
fn toml_string(s: &str) -> String {
    serde_json::to_string(s)
        .unwrap_or_else(|_| "\"\"".into())
        .replace('\u{7f}', "\\u007F")
}

impl AgentAdapter for CodexAgent {
    fn name(&self) -> &str {
        "codex"
    }
    fn program(&self) -> Option<&str> {
        Some("codex")
    }
    fn description(&self) -> &str {
        "Codex CLI (OpenAI)"
    }
    fn install_hint(&self) -> String {
        "Install it with `npm install -g @openai/codex`, then log in with `codex login` or set OPENAI_API_KEY".into()
    }
    fn api_key_env(&self) -> Option<&'static str> {
        Some("OPENAI_API_KEY")
    }
    fn login_hint(&self) -> Option<&'static str> {
        Some("codex login")
    }
    fn supports_resume(&self) -> bool {
        true
    }
    fn command(&self, task: &TaskRecord, settings: &AgentSettings) -> LaunchCommand {
        let mut argv: Vec<String> = vec!["codex".into(), "exec".into()];
        if task.resume_session.is_some() {
            argv.push("resume".into());
        }
        argv.extend(
            [
                "--json",
                "--skip-git-repo-check",
                "--dangerously-bypass-approvals-and-sandbox",
            ]
            .map(String::from),
        );
        if let Some(m) = model_of(task, settings) {
            argv.extend(["-m".into(), m.into()]);
        }
        if let Some(s) = system_prompt_of(task, settings) {
            argv.extend([
                "-c".into(),
                format!("developer_instructions={}", toml_string(s)),
            ]);
        }
        if let Some(url) = &settings.base_url {
            // A provider of our own pointing at the base URL, keyed by OPENAI_API_KEY.
            for (k, v) in [
                ("model_providers.backbeat.name", "backbeat"),
                ("model_providers.backbeat.base_url", url.as_str()),
                ("model_providers.backbeat.env_key", "OPENAI_API_KEY"),
                ("model_providers.backbeat.wire_api", "responses"),
                ("model_provider", "backbeat"),
            ] {
                argv.extend(["-c".into(), format!("{k}={}", toml_string(v))]);
            }
        }
        argv.extend(settings.args.iter().cloned());
        if let Some(id) = &task.resume_session {
            argv.push(id.clone());
        }
        let fits = task.prompt.len() <= MAX_PROMPT_ARG_BYTES;
        // `-` makes codex read the prompt from stdin, which is then the prompt file.
        argv.extend([
            "--".into(),
            if fits {
                task.prompt.clone()
            } else {
                "-".into()
            },
        ]);
        let mut cmd = LaunchCommand {
            argv,
            prompt_on_stdin: !fits,
            output_format: OutputFormat::CodexJson,
            ..Default::default()
        };
        common_env(&mut cmd, settings, self.api_key_env(), None);
        cmd
    }
}

/// Gemini CLI: `gemini -p … --yolo --output-format stream-json`, the workspace trusted
/// (an untrusted folder downgrades `--yolo` and headless runs exit 55).
pub struct GeminiAgent;

impl AgentAdapter for GeminiAgent {
    fn name(&self) -> &str {
        "gemini"
    }
    fn program(&self) -> Option<&str> {
        Some("gemini")
    }
    fn description(&self) -> &str {
        "Gemini CLI (Google)"
    }
    fn install_hint(&self) -> String {
        "Install it with `npm install -g @google/gemini-cli`, then set GEMINI_API_KEY or log in with `gcloud auth application-default login`".into()
    }
    fn api_key_env(&self) -> Option<&'static str> {
        Some("GEMINI_API_KEY")
    }
    fn login_hint(&self) -> Option<&'static str> {
        Some("gcloud auth application-default login")
    }
    fn supports_resume(&self) -> bool {
        true
    }
    fn command(&self, task: &TaskRecord, settings: &AgentSettings) -> LaunchCommand {
        let mut argv: Vec<String> = ["gemini", "--yolo", "--output-format", "stream-json"]
            .map(String::from)
            .to_vec();
        if let Some(m) = model_of(task, settings) {
            argv.extend(["-m".into(), m.into()]);
        }
        if let Some(id) = &task.resume_session {
            argv.extend(["--resume".into(), id.clone()]);
        }
        argv.extend(settings.args.iter().cloned());
        let fits = task.prompt.len() <= MAX_PROMPT_ARG_BYTES;
        // `--prompt=` keeps a prompt that starts with `-` a prompt; an empty one makes
        // Gemini read the prompt from stdin.
        argv.push(format!(
            "--prompt={}",
            if fits { task.prompt.as_str() } else { "" }
        ));
        let mut cmd = LaunchCommand {
            argv,
            prompt_on_stdin: !fits,
            output_format: OutputFormat::GeminiStreamJson,
            env_default: vec![("GEMINI_CLI_TRUST_WORKSPACE".into(), "true".into())],
            ..Default::default()
        };
        if let Some(s) = system_prompt_of(task, settings) {
            cmd.files.push(("system.md".into(), s.to_string()));
            cmd.env_set
                .push(("GEMINI_SYSTEM_MD".into(), "{runDir}/system.md".into()));
        }
        common_env(
            &mut cmd,
            settings,
            self.api_key_env(),
            Some("GOOGLE_GEMINI_BASE_URL"),
        );
        cmd
    }
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
    fn description(&self) -> &str {
        "runs the prompt with sh -c (built in)"
    }
    fn command(&self, task: &TaskRecord, settings: &AgentSettings) -> LaunchCommand {
        let mut cmd = self.plain(task);
        common_env(&mut cmd, settings, None, None);
        cmd
    }
}

impl ShellAgent {
    fn plain(&self, task: &TaskRecord) -> LaunchCommand {
        if task.prompt.len() <= MAX_PROMPT_ARG_BYTES {
            LaunchCommand {
                // `--`: a prompt that starts with `-` is a command, not an option of sh.
                argv: vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "--".into(),
                    task.prompt.clone(),
                ],
                ..Default::default()
            }
        } else {
            LaunchCommand {
                argv: vec!["/bin/sh".into(), "-s".into()],
                prompt_on_stdin: true,
                ..Default::default()
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

impl CommandAgent {
    pub fn new(name: &str, template: Vec<String>) -> CommandAgent {
        CommandAgent {
            name: name.to_string(),
            template,
        }
    }
}

impl AgentAdapter for CommandAgent {
    fn name(&self) -> &str {
        &self.name
    }
    fn program(&self) -> Option<&str> {
        self.template.first().map(String::as_str)
    }
    fn command(&self, task: &TaskRecord, settings: &AgentSettings) -> LaunchCommand {
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
        let mut cmd = LaunchCommand {
            argv,
            prompt_on_stdin: !uses_placeholder || !fits,
            output_format: settings.output_format.unwrap_or_default(),
            ..Default::default()
        };
        common_env(&mut cmd, settings, None, None);
        cmd
    }
}

/// The built-in agents, by name.
pub fn builtin_agent(name: &str) -> Option<Box<dyn AgentAdapter>> {
    match name {
        "shell" => Some(Box::new(ShellAgent)),
        "claude" => Some(Box::new(ClaudeAgent)),
        "codex" => Some(Box::new(CodexAgent)),
        "gemini" => Some(Box::new(GeminiAgent)),
        _ => None,
    }
}

pub const BUILTIN_AGENTS: [&str; 4] = ["claude", "codex", "gemini", "shell"];

/// Every agent: the built-ins, then those the configuration defines.
pub fn agent_names(settings: &Settings) -> Vec<String> {
    let mut names: Vec<String> = BUILTIN_AGENTS.iter().map(|s| s.to_string()).collect();
    for (name, a) in &settings.agents {
        if a.command.is_some() && !names.contains(name) {
            names.push(name.clone());
        }
    }
    names
}

/// Names of the agents the settings know, for error messages.
pub fn known_agents(settings: &Settings) -> String {
    agent_names(settings).join(", ")
}

/// The adapter for `name` (a command in the configuration wins over a built-in of the
/// same name), without checking that its program exists.
pub fn adapter_for(name: &str, settings: &Settings) -> Result<Box<dyn AgentAdapter>, AgentError> {
    match settings.agents.get(name).and_then(|a| a.command.clone()) {
        Some(template) => {
            if template.is_empty() || template[0].is_empty() {
                return Err(AgentError::EmptyCommand {
                    agent: name.to_string(),
                });
            }
            Ok(Box::new(CommandAgent {
                name: name.to_string(),
                template,
            }))
        }
        None => builtin_agent(name).ok_or_else(|| AgentError::Unknown {
            name: name.to_string(),
            known: known_agents(settings),
        }),
    }
}

/// The adapter for `name` (or the default agent), checked to be runnable now.
pub fn resolve_agent(
    name: Option<&str>,
    settings: &Settings,
) -> Result<Box<dyn AgentAdapter>, AgentError> {
    resolve_agent_with(name, settings, find_program)
}

/// `resolve_agent` with the program looked up by `find` (the agent pool's cache).
pub fn resolve_agent_with(
    name: Option<&str>,
    settings: &Settings,
    find: impl FnOnce(&str) -> Option<PathBuf>,
) -> Result<Box<dyn AgentAdapter>, AgentError> {
    let name = match name.or(settings.default_agent.as_deref()) {
        Some(n) => n,
        None => {
            return Err(AgentError::NoDefault {
                known: known_agents(settings),
            });
        }
    };
    let adapter = adapter_for(name, settings)?;
    if let Some(program) = adapter.program()
        && find(program).is_none()
    {
        return Err(AgentError::ProgramNotFound {
            agent: name.to_string(),
            program: program.to_string(),
            hint: adapter.install_hint(),
        });
    }
    Ok(adapter)
}

/// The path of `program`: itself when it contains a slash, else the first executable
/// of that name in the daemon's `PATH`.
pub fn find_program(program: &str) -> Option<PathBuf> {
    find_program_in(program, std::env::var_os("PATH").as_deref())
}

/// The path of `program`, searched in `path` (a `PATH` value) unless it has a slash.
pub fn find_program_in(program: &str, path: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return is_executable(&p).then_some(p);
    }
    std::env::split_paths(path?)
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
}

/// A regular file someone may execute (one `stat`).
pub fn is_executable(path: &Path) -> bool {
    crate::blocking::assert_off_actix_thread("a program lookup");
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::task::tests_support::record_with_prompt;

    #[test]
    fn shell_runs_short_prompts_inline_and_long_ones_on_stdin() {
        let s = AgentSettings::default();
        let short = ShellAgent.command(&record_with_prompt("echo hi"), &s);
        assert_eq!(short.argv, ["/bin/sh", "-c", "--", "echo hi"]);
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
        assert!(
            err.to_string()
                .contains("Known agents: claude, codex, gemini, shell"),
            "{err}"
        );
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

    #[test]
    fn real_clis_get_structured_output_and_their_settings() {
        let mut task = record_with_prompt("héllo \"wörld\"\nline2");
        task.model = Some("m-1".into());
        task.system_prompt = Some("be brief".into());
        let settings = AgentSettings {
            api_key: Some("sk-x".into()),
            base_url: Some("http://127.0.0.1:9".into()),
            ..Default::default()
        };
        let c = ClaudeAgent.command(&task, &settings);
        assert!(
            c.argv
                .windows(2)
                .any(|w| w == ["--output-format", "stream-json"])
        );
        assert!(c.argv.windows(2).any(|w| w == ["--model", "m-1"]));
        assert!(
            c.argv
                .windows(2)
                .any(|w| w == ["--append-system-prompt", "be brief"])
        );
        assert_eq!(
            c.argv.last().unwrap(),
            &task.prompt,
            "the prompt is passed intact"
        );
        assert!(c.env_remove.contains(&"CLAUDECODE".to_string()));
        for kept in [
            "CLAUDE_CODE_OAUTH_TOKEN",
            "CLAUDE_CODE_USE_BEDROCK",
            "CLAUDE_CODE_USE_VERTEX",
            "CLAUDE_CODE_MAX_RETRIES",
        ] {
            assert!(
                !c.env_remove.iter().any(|r| r == kept || r.ends_with('*')),
                "{kept} is the user's setting, not a nesting marker"
            );
        }
        assert!(
            c.env_default
                .contains(&("ANTHROPIC_API_KEY".into(), "sk-x".into()))
        );
        let x = CodexAgent.command(&task, &settings);
        assert_eq!(&x.argv[..2], ["codex", "exec"]);
        assert!(x.argv.contains(&"--json".to_string()));
        assert!(
            !x.argv.iter().any(|a| a == "--full-auto" || a == "--quiet"),
            "flags that no longer exist (W25)"
        );
        assert!(
            x.argv
                .contains(&"developer_instructions=\"be brief\"".to_string())
        );
        let g = GeminiAgent.command(&task, &settings);
        assert!(
            g.argv
                .windows(2)
                .any(|w| w == ["--output-format", "stream-json"])
        );
        assert_eq!(g.files, [("system.md".to_string(), "be brief".to_string())]);
        assert_eq!(
            g.argv.last().unwrap(),
            &format!("--prompt={}", task.prompt),
            "a prompt starting with '-' stays a prompt"
        );
        task.resume_session = Some("sess-1".into());
        assert!(
            ClaudeAgent
                .command(&task, &settings)
                .argv
                .windows(2)
                .any(|w| w == ["--resume", "sess-1"])
        );
        let resumed = CodexAgent.command(&task, &settings).argv;
        assert_eq!(&resumed[..3], ["codex", "exec", "resume"]);
        let n = resumed.len();
        assert_eq!(
            &resumed[n - 3..],
            ["sess-1", "--", task.prompt.as_str()],
            "flags, then the session, then the prompt"
        );
        assert!(
            GeminiAgent
                .command(&task, &settings)
                .argv
                .windows(2)
                .any(|w| w == ["--resume", "sess-1"])
        );
    }

    #[test]
    fn toml_strings_always_parse() {
        assert_eq!(toml_string("plain"), "\"plain\"");
        assert_eq!(toml_string("a\"b\\c\nd"), "\"a\\\"b\\\\c\\nd\"");
        assert_eq!(toml_string("del\u{7f}"), "\"del\\u007F\"");
    }

    #[test]
    fn huge_prompts_never_travel_as_one_argument() {
        let task = record_with_prompt(&"y".repeat(300 * 1024));
        for adapter in [
            &ClaudeAgent as &dyn AgentAdapter,
            &CodexAgent,
            &GeminiAgent,
            &ShellAgent,
        ] {
            let c = adapter.command(&task, &AgentSettings::default());
            assert!(c.prompt_on_stdin, "{}", adapter.name());
            assert!(
                c.argv.iter().all(|a| a.len() <= MAX_PROMPT_ARG_BYTES),
                "{}",
                adapter.name()
            );
        }
    }
}
