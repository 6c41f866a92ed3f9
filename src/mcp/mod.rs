//! MCP and its tools: the daemon's server, the CLI's client (`tools/call` without a session), and
//! the stdio proxy.
//!
//! Must never: print to stdout except the protocol bytes of `beat mcp start`.

pub mod client;
pub mod proxy;
pub mod server;
pub mod tools;
