//! `beat daemon start|stop|status|install`.

use clap::Subcommand;
use serde_json::json;

use super::{outln, print_json};
use crate::error::CliError;
use crate::paths::Home;

#[derive(Subcommand)]
#[command(defer = true)]
pub enum DaemonCommand {
    /// Start the daemon (detached unless --foreground)
    Start {
        /// Run in this process, logging to stderr too (for service managers)
        #[arg(long)]
        foreground: bool,
    },
    /// Stop the daemon gracefully; running agents keep running and are adopted later
    Stop,
    /// Whether the daemon runs, its PID and socket
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Install a user service that starts the daemon at login/boot (systemd), so that
    /// schedules fire after a reboot; elsewhere, say how to start it at login
    Install {
        /// Write the systemd unit even where systemd does not seem to run
        #[arg(long)]
        systemd: bool,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: DaemonCommand, home: &Home) -> Result<i32, CliError> {
    match cmd {
        DaemonCommand::Start { foreground: true } => {
            crate::daemon::run(home, true)?;
            Ok(0)
        }
        DaemonCommand::Start { foreground: false } => {
            super::block_on(async {
                crate::launcher::connect_or_start(home).await?;
                Ok(0)
            })?;
            let pid = crate::launcher::running_pid(home);
            eprintln!(
                "daemon running (pid {})",
                pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into())
            );
            Ok(0)
        }
        DaemonCommand::Stop => {
            if crate::launcher::stop(home)? {
                eprintln!("daemon stopped");
            } else {
                eprintln!("no daemon was running");
            }
            Ok(0)
        }
        DaemonCommand::Install { systemd, json } => install(home, systemd, json),
        DaemonCommand::Status { json } => {
            let pid = crate::launcher::running_pid(home);
            let socket = home.socket().display().to_string();
            if json {
                print_json(
                    &json!({ "running": pid.is_some(), "pid": pid, "socket": socket, "home": home.root.display().to_string(), "database": home.db().display().to_string() }),
                );
            } else if let Some(pid) = pid {
                outln!("running (pid {pid}), socket {socket}");
            } else {
                outln!("not running");
            }
            Ok(0)
        }
    }
}

/// `beat daemon install`: the plan is `service_unit`'s; this writes the file and prints.
fn install(home: &Home, force_systemd: bool, json: bool) -> Result<i32, CliError> {
    use backbeat_actors::service_unit::{ServiceSpec, install_plan};
    let beat = std::env::current_exe()?;
    let root = std::path::absolute(&home.root)?;
    let config_home = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".config")))
        .ok_or_else(|| CliError::Usage("neither XDG_CONFIG_HOME nor HOME is set".into()))?;
    let systemd_runs = force_systemd || std::path::Path::new("/run/systemd/system").exists();
    let plan = install_plan(
        &ServiceSpec {
            beat: &beat,
            home: &root,
        },
        systemd_runs,
        &config_home,
    )
    .map_err(|e| CliError::Usage(e.to_string()))?;
    if let (Some(path), Some(text)) = (&plan.unit_path, &plan.unit_text) {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, text)?;
    }
    if json {
        print_json(&json!({
            "unitPath": plan.unit_path.as_ref().map(|p| p.display().to_string()),
            "systemd": systemd_runs,
            "instructions": plan.instructions,
        }));
    } else {
        super::write_stderr(plan.instructions.as_bytes());
    }
    Ok(0)
}
