//! `beat daemon start|stop|status`.

use clap::Subcommand;
use serde_json::json;

use super::{outln, print_json};
use crate::error::CliError;
use crate::paths::Home;

#[derive(Subcommand)]
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
