//! What every tool handler shares: its context, its outcome, and argument parsing.
//! Kept apart from the table (`mod.rs`) so that the tool files, which the table names,
//! never import the table back.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use backbeat_actors::EngineHandle;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::paths::Home;

/// What a handler may use: the engine, the home, and the client's directory.
#[derive(Clone)]
pub struct ToolContext {
    pub engine: EngineHandle,
    pub home: Home,
    /// Where tasks without a working directory run: the client's directory.
    pub session_cwd: PathBuf,
}

/// A tool's answer: `Ok` is a JSON success object, `Err` a message for the caller.
pub type ToolOutcome = Result<Value, String>;

/// A success object as a handler made it: a `Value`, or JSON text written straight
/// from typed data (a list of 100 summaries, without a tree of 800 map entries).
pub enum Answer {
    Json(Value),
    Text(String),
}

impl From<Value> for Answer {
    fn from(v: Value) -> Answer {
        Answer::Json(v)
    }
}

impl Answer {
    /// The JSON text sent as the tool result's content.
    pub fn into_text(self) -> String {
        match self {
            Answer::Json(v) => v.to_string(),
            Answer::Text(t) => t,
        }
    }
}

/// What a tool call comes to: any handler's outcome, as an `Answer`.
pub type ToolReply = Result<Answer, String>;

pub type ToolFuture<'a> = Pin<Box<dyn Future<Output = ToolReply> + Send + 'a>>;

/// Parses a tool's arguments; the error names the tool and what was wrong.
pub fn parse<T: DeserializeOwned>(tool: &str, args: Value) -> Result<T, String> {
    serde_json::from_value(args).map_err(|e| {
        format!("Invalid arguments for {tool}: {e}. See the tool's input schema in tools/list")
    })
}
