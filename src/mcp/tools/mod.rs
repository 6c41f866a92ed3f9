//! The MCP tools, one file per family. Each tool's JSON Schema is generated from the
//! very struct its arguments are parsed into, so what is advertised is what is accepted.

pub mod agents;
pub mod pipelines;
pub mod tasks;

use rmcp::model::Tool;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Every tool this server lists: only tools that work.
pub fn all() -> Vec<Tool> {
    let mut all = tasks::tools();
    all.extend(agents::tools());
    all.extend(pipelines::tools());
    all
}

/// A tool whose input schema is that of `T`.
pub fn tool<T: JsonSchema + 'static>(name: &'static str, description: &'static str) -> Tool {
    let schema = schemars::SchemaGenerator::new(
        schemars::generate::SchemaSettings::draft2020_12().with(|s| {
            s.inline_subschemas = true;
        }),
    )
    .into_root_schema_for::<T>();
    let mut object = match serde_json::to_value(schema) {
        Ok(Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    object.remove("$schema");
    object.remove("title");
    object.entry("type").or_insert(Value::from("object"));
    object
        .entry("properties")
        .or_insert(Value::Object(Default::default()));
    Tool::new(name, description, object)
}

/// Parses a tool's arguments; the error names the tool and what was wrong.
pub fn parse<T: DeserializeOwned>(tool: &str, args: Value) -> Result<T, String> {
    serde_json::from_value(args).map_err(|e| {
        format!("Invalid arguments for {tool}: {e}. See the tool's input schema in tools/list")
    })
}
