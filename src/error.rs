//! The one error type of the front ends, mapped to exit codes and MCP results.

use backbeat_actors::EngineError;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Wrong words on the command line: exit 2.
    #[error("{0}")]
    Usage(String),
    /// The daemon said no (unknown task, bad input, ...): exit 1.
    #[error("{0}")]
    Refused(String),
    /// The daemon could not be started, or answered something unreadable: exit 1.
    #[error("{0}")]
    Daemon(String),
    /// The connection to the daemon was lost or could not be made (it stopped, crashed
    /// or is restarting): exit 1, unless the command reconnects.
    #[error("{0}")]
    Disconnected(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => 2,
            _ => 1,
        }
    }
}
