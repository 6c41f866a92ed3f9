//! The MCP tools: one table (`TOOLS`) declares each tool once, with its name, argument
//! type, description and handler. `tools/list`, the dispatch of `tools/call` and the
//! usage guide sent in `initialize` are all read from it, so a tool cannot be callable
//! yet unlisted, nor listed yet described nowhere. Each tool's JSON Schema is generated
//! from the very struct its arguments are parsed into (and that the CLI serializes), so
//! what is advertised is what is accepted.
//!
//! Owns: the table and the schemas. What handlers share is in `context.rs`.
//! Must never: import the MCP server (the server reads this table, not the reverse).

pub mod agents;
pub mod config;
pub mod context;
pub mod loops;
pub mod pipelines;
pub mod retention;
pub mod schedules;
pub mod tasks;

use rmcp::model::Tool;
use schemars::JsonSchema;
use serde_json::{Map, Value};

pub use context::{Answer, ToolContext, ToolFuture, ToolReply, parse};

/// One tool, declared once.
pub struct ToolDef {
    pub name: &'static str,
    pub description: &'static str,
    /// The JSON Schema of the argument type.
    pub schema: fn() -> Map<String, Value>,
    /// Parses the arguments into the argument type and runs the handler.
    pub call: for<'a> fn(&'a ToolContext, Value) -> ToolFuture<'a>,
}

/// A tool's argument type: what a client serializes to call it (see `DaemonClient::call`).
pub trait ToolArgs: serde::Serialize {
    /// The tool these are the arguments of.
    const TOOL: &'static str;
}

/// Declares the tools: `"Name" => ArgsType, handler, "description";` each, in the
/// order `tools/list` shows them. Makes `TOOLS` and ties each argument type to its tool.
macro_rules! tools {
    ($($name:literal => $args:ty, $handler:path, $description:expr;)*) => {
        $(impl ToolArgs for $args {
            const TOOL: &'static str = $name;
        })*

        /// Every tool this server has, in the order `tools/list` shows them.
        pub static TOOLS: &[ToolDef] = &[$(tool!($name, $args, $handler, $description)),*];
    };
}

/// One entry of `TOOLS`: the parser and handler behind a function pointer.
macro_rules! tool {
    ($name:literal, $args:ty, $handler:path, $description:expr) => {{
        fn call(ctx: &ToolContext, args: Value) -> ToolFuture<'_> {
            Box::pin(async move {
                let parsed: $args = parse($name, args)?;
                $handler(ctx, parsed).await.map(Answer::from)
            })
        }
        ToolDef {
            name: $name,
            description: $description,
            schema: schema_of::<$args>,
            call,
        }
    }};
}

tools! {
    "DelegateTask" => tasks::DelegateTaskArgs, tasks::delegate,
        "Delegate a task to a background agent. Returns its taskId at once (it does not wait); the task runs when a slot is free.";
    "TaskStatus" => tasks::TaskStatusArgs, tasks::status,
        "Status of one task (taskId), or the newest tasks when taskId is omitted.";
    "TaskLogs" => tasks::TaskLogsArgs, tasks::logs,
        "Output of a task: the last lines of its stdout and stderr.";
    "WaitTask" => tasks::WaitTaskArgs, tasks::wait,
        "Wait until a task is completed, failed or cancelled (or timeoutMs passes), then return its status.";
    "CancelTask" => tasks::CancelTaskArgs, tasks::cancel,
        "Cancel a queued or running task. The agent's whole process group is stopped (TERM, grace period, KILL).";
    "RetryTask" => tasks::RetryTaskArgs, tasks::retry,
        "Run a finished task again as a new task with the same prompt and settings.";
    "ResumeTask" => tasks::ResumeTaskArgs, tasks::resume,
        "Continue a finished task as a new task whose prompt carries the previous attempt's checkpoint, in the agent's own session where its CLI allows.";
    "CreatePipeline" => pipelines::CreatePipelineArgs, pipelines::create,
        "Create a pipeline: 2 to 20 steps that run one after the other, each starting when the one before completed. Returns the pipelineId and each step's taskId at once. A step's index is its position in steps, from 0; its task's pipelineStep counts from 1.";
    "PipelineStatus" => pipelines::PipelineStatusArgs, pipelines::status,
        "A pipeline's state (running, completed, failed, cancelled) and each step's task and state.";
    "CancelPipeline" => pipelines::CancelPipelineArgs, pipelines::cancel,
        "Cancel a pipeline: stop its running step and cancel the steps after it.";
    "CreateLoop" => loops::CreateLoopArgs, loops::create,
        "Create an eval loop: run an agent (or pipelineSteps), judge its work with exitCondition (or an agent eval), and iterate. strategy retry runs until the eval exits 0; optimize keeps the best score (evalDirection minimize or maximize) and, with gitBranch, commits kept work and resets the rest. Returns the loopId at once.";
    "LoopStatus" => loops::LoopStatusArgs, loops::status,
        "A loop's state, counters, best score and budgets; with includeHistory, its iterations (newest first) with score, commit, duration and usage.";
    "ListLoops" => loops::ListLoopsArgs, loops::list,
        "The newest loops, optionally of one status.";
    "CancelLoop" => loops::CancelLoopArgs, loops::cancel,
        "Cancel a running or paused loop; with cancelTasks (default true) every running task of its current iteration is cancelled too.";
    "PauseLoop" => loops::PauseLoopArgs, loops::pause,
        "Pause a running loop: no new iteration starts; with force the running iteration is cancelled too.";
    "ResumeLoop" => loops::ResumeLoopArgs, loops::resume,
        "Resume a paused loop.";
    "ScheduleTask" => schedules::ScheduleTaskArgs, schedules::schedule_task,
        "Schedule a task: cron (cronExpression, in timezone) or one_time (scheduledAt). The daemon fires it on time with no client connected. Returns the scheduleId and nextRunAt.";
    "SchedulePipeline" => schedules::SchedulePipelineArgs, schedules::schedule_pipeline,
        "Schedule a pipeline: each fire creates its 2 to 20 steps, each starting when the one before completed. Returns the scheduleId and nextRunAt.";
    "ScheduleLoop" => schedules::ScheduleLoopArgs, schedules::schedule_loop,
        "Schedule a loop: CreateLoop's fields plus the schedule's timing. Each fire creates the loop (a gitBranch gets the fire time as a suffix); cancelling the schedule cancels its running loops. Returns the scheduleId and nextRunAt.";
    "ListSchedules" => schedules::ListSchedulesArgs, schedules::list,
        "List schedules, newest first, optionally by status.";
    "ScheduleStatus" => schedules::ScheduleStatusArgs, schedules::status,
        "A schedule's settings and state; with includeHistory its executions (triggered, completed, failed, cancelled, missed, skipped) with their task, pipeline or loop ids.";
    "CancelSchedule" => schedules::CancelScheduleArgs, schedules::cancel,
        "Cancel an active or paused schedule and its running loops; with cancelTasks also its running tasks and pipelines.";
    "PauseSchedule" => schedules::PauseScheduleArgs, schedules::pause,
        "Pause an active schedule: nothing fires until it is resumed.";
    "ResumeSchedule" => schedules::ResumeScheduleArgs, schedules::resume,
        "Resume a paused schedule; a cron schedule's next run is its next time from now.";
    "TriggerSchedule" => schedules::TriggerScheduleArgs, schedules::trigger,
        "Fire a schedule once now, without changing its timing (it counts toward maxRuns).";
    "ListAgents" => agents::ListAgentsArgs, agents::list,
        "List the agents Backbeat can run, whether each is ready, and the default agent.";
    "ConfigureAgent" => agents::ConfigureAgentArgs, agents::configure,
        "Check an agent's readiness, or set or reset its API key, model, base URL and system prompt.";
    "Prune" => retention::PruneArgs, retention::prune,
        "Remove finished tasks and pipelines that ended at least olderThanMs ago (default: taskRetentionDays), with their events and output. Never removes running, queued or blocked work, nor a finished task that unfinished work depends on or continues from.";
    "ShowConfig" => config::ShowConfigArgs, config::show,
        "The settings the daemon uses (its environment over config.json over defaults), each with where it comes from.";
    "ReloadConfig" => config::ReloadConfigArgs, config::reload,
        "Put config.json in force for new work now (the daemon also re-reads it by itself when it changes).";
}

/// The tool named `name`.
pub fn find(name: &str) -> Option<&'static ToolDef> {
    TOOLS.iter().find(|t| t.name == name)
}

/// `tools/list`: every tool of the table.
pub fn listed() -> Vec<Tool> {
    TOOLS
        .iter()
        .map(|t| Tool::new(t.name, t.description, (t.schema)()))
        .collect()
}

/// The usage guide sent in `initialize`: how the tools fit together, then each tool's
/// own description, read from the table so that it cannot go stale.
pub fn instructions() -> String {
    let mut text = String::from(
        "Backbeat runs coding agents (claude, codex, gemini, shell, ...) as durable background \
         tasks that survive restarts. DelegateTask returns a taskId at once and never waits; \
         follow the task with TaskStatus and TaskLogs, or block on WaitTask until it finishes. \
         Ids chain: pass earlier taskIds in DelegateTask's dependsOn to run a task after them, \
         or one in continueFrom to also carry its result into the new prompt. A tool error \
         comes back as an isError result whose text says what to do.\n\nTools:\n",
    );
    for t in TOOLS {
        text.push_str(&format!("- {}: {}\n", t.name, t.description));
    }
    text
}

/// The JSON Schema of `T`, as an MCP tool's `inputSchema`.
pub fn schema_of<T: JsonSchema>() -> Map<String, Value> {
    let schema = schemars::SchemaGenerator::new(
        schemars::generate::SchemaSettings::draft2020_12().with(|s| {
            s.inline_subschemas = true;
        }),
    )
    .into_root_schema_for::<T>();
    let mut object = match serde_json::to_value(schema) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    object.remove("$schema");
    object.remove("title");
    object.entry("type").or_insert(Value::from("object"));
    object
        .entry("properties")
        .or_insert(Value::Object(Default::default()));
    object
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tool_is_declared_once() {
        let mut names: Vec<&str> = TOOLS.iter().map(|t| t.name).collect();
        names.sort();
        let before = names.len();
        names.dedup();
        assert_eq!(names.len(), before, "a tool is declared twice");
        assert!(find("ResumeTask").is_some());
    }

    #[test]
    fn the_instructions_name_every_tool_and_only_fields_that_exist() {
        let text = instructions();
        for t in TOOLS {
            assert!(text.contains(t.name), "{} missing from the guide", t.name);
        }
        let delegate = (find("DelegateTask").unwrap().schema)();
        for field in ["dependsOn", "continueFrom"] {
            assert!(text.contains(field));
            assert!(
                delegate["properties"].get(field).is_some(),
                "the guide names {field}, which DelegateTask does not take"
            );
        }
        for tool in ["TaskStatus", "TaskLogs", "WaitTask"] {
            assert!(find(tool).is_some());
        }
    }
}
