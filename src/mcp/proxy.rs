//! `beat mcp start`: the stdio server that MCP clients configure.
//!
//! It copies bytes between stdio and the daemon's socket (after the hello line that
//! gives the daemon this process's working directory), starting the daemon if needed,
//! and exits when stdin closes (the original kept running, spec W21).

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::client::hello_line;
use crate::daemon::connect_or_start;
use crate::error::CliError;
use crate::paths::Home;

pub async fn run(home: &Home) -> Result<(), CliError> {
    let stream = connect_or_start(home).await?;
    let (mut from_daemon, mut to_daemon) = stream.into_split();
    to_daemon.write_all(hello_line().as_bytes()).await?;
    let mut stdin = tokio::io::stdin();
    let mut stdout = tokio::io::stdout();
    let upstream = async {
        let _ = tokio::io::copy(&mut stdin, &mut to_daemon).await;
        let _ = to_daemon.shutdown().await;
    };
    let downstream = async {
        let _ = tokio::io::copy(&mut from_daemon, &mut stdout).await;
        let _ = stdout.flush().await;
    };
    tokio::pin!(downstream);
    tokio::select! {
        _ = upstream => {
            // stdin closed: let answers still in flight through, briefly, then exit.
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut downstream).await;
        }
        _ = &mut downstream => {}
    }
    Ok(())
}
