//! `AgentPool`: launches agent runs and owns the `AgentProcess` actors that follow them.
//!
//! Owns: the launcher (run folder, prompt file, `spec.json`, the spawn of `beat shim` in
//! a session of its own), the cache of where each agent CLI is installed, the run-folder
//! files a task reads or clears between runs (the shim's identity), and the registry of live
//! `AgentProcess` actors by task id.
//! Must never: do blocking work on the actix thread, which also carries every other
//! actor and every MCP connection: program lookups, run-folder reads and writes and the
//! fork of the shim all run on tokio's blocking pool, and the pool's handlers only
//! start that work and act on its result. Nor hold a pipe to an agent: each run's shim
//! outlives the daemon, writes the output to files, and is adopted again by PID and
//! start time after a restart.

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;

use super::adapter::{AgentError, resolve_agent_with};
use super::launch::{Launched, Launcher};
use super::process::{AgentExited, AgentProcess, AgentProgress, FollowedRun, RunOver};
use super::programs::ProgramCache;
use super::run_dir::{RunDir, ShimIdentity};
use crate::governor::Release;
use crate::model::{TaskRecord, reasons};
use crate::settings::SettingsSource;

/// Start `task`'s agent; its result will come to `report_to` as `AgentExited`.
#[derive(Message)]
#[rtype(result = "Result<RunHandle, LaunchError>")]
pub struct Launch {
    pub task: TaskRecord,
    pub report_to: Recipient<AgentExited>,
    /// Told what the agent is doing while it runs (its retries).
    pub progress_to: Recipient<AgentProgress>,
    /// Told the moment the agent's exit is reported, so that its slot is free before
    /// the task has journaled anything (the task's own release then finds it free).
    pub release_to: Recipient<Release>,
}

/// A run the pool launched or adopted.
#[derive(Debug, Clone)]
pub struct RunHandle {
    /// The actor that follows the run (send it `Terminate` to cancel).
    pub process: Addr<AgentProcess>,
    pub shim_pid: u32,
    pub shim_start_time: u64,
}

/// Why a launch failed; its text is the task's reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LaunchError {
    /// The agent is unknown or its CLI is not installed.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The run folder could not be written or the shim not spawned.
    #[error("{}", reasons::shim_spawn_failed(.0))]
    Spawn(String),
}

/// Follow a shim left running by an earlier daemon (or by this one, before a restart
/// of the task's actor). Answers the actor that follows it.
#[derive(Message)]
#[rtype(result = "Addr<AgentProcess>")]
pub struct Adopt {
    pub task_id: String,
    /// The task's working directory (for its checkpoint's git state).
    pub working_directory: std::path::PathBuf,
    pub shim_pid: u32,
    pub shim_start_time: u64,
    pub report_to: Recipient<AgentExited>,
    pub progress_to: Recipient<AgentProgress>,
}

/// The identity of a shim the task's run folder records, if any: a shim
/// spawned by a daemon that died before it journaled the start (or one of this daemon's
/// own, for a task whose actor restarted before it journaled the start).
#[derive(Message)]
#[rtype(result = "Option<ShimIdentity>")]
pub struct FindShim {
    pub task_id: String,
}

/// Clear the identity of the task's last shim before the task runs again.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ForgetShim {
    pub task_id: String,
}

pub struct AgentPool {
    launcher: Arc<Launcher>,
    programs: Arc<ProgramCache>,
    settings: SettingsSource,
    /// Live followers by task id, with their shim.
    runs: HashMap<String, (Addr<AgentProcess>, ShimIdentity)>,
}

impl AgentPool {
    pub fn new(
        launcher: Launcher,
        programs: Arc<ProgramCache>,
        settings: SettingsSource,
    ) -> AgentPool {
        AgentPool {
            launcher: Arc::new(launcher),
            programs,
            settings,
            runs: HashMap::new(),
        }
    }

    fn run_dir(&self, task_id: &str) -> RunDir {
        self.launcher.run_dir(task_id)
    }
}

impl Actor for AgentPool {
    type Context = Context<Self>;
}

/// The blocking part of a launch: resolve the agent (its CLI looked up through the
/// cache), build its command line, write the run folder, spawn the shim.
fn launch_blocking(
    task: &TaskRecord,
    launcher: &Launcher,
    programs: &ProgramCache,
    settings: &SettingsSource,
) -> Result<Launched, LaunchError> {
    let settings = settings();
    let adapter = resolve_agent_with(Some(&task.agent), &settings, |p| programs.find(p))?;
    let agent_settings = settings
        .agents
        .get(&task.agent)
        .cloned()
        .unwrap_or_default();
    let cmd = adapter.command(task, &agent_settings);
    launcher
        .launch(task, &cmd, &settings)
        .map_err(|e| LaunchError::Spawn(e.to_string()))
}

impl Handler<Launch> for AgentPool {
    type Result = ResponseActFuture<Self, Result<RunHandle, LaunchError>>;

    fn handle(&mut self, msg: Launch, _ctx: &mut Context<Self>) -> Self::Result {
        let Launch {
            task,
            report_to,
            progress_to,
            release_to,
        } = msg;
        let task_id = task.id.clone();
        let working_directory = std::path::PathBuf::from(&task.working_directory);
        let (launcher, programs) = (self.launcher.clone(), self.programs.clone());
        let settings = self.settings.clone();
        let work = tokio::task::spawn_blocking(move || {
            launch_blocking(&task, &launcher, &programs, &settings)
        });
        Box::pin(work.into_actor(self).map(move |joined, act, ctx| {
            let launched = joined.map_err(|e| LaunchError::Spawn(e.to_string()))??;
            let followed = FollowedRun {
                task_id: task_id.clone(),
                run: act.run_dir(&task_id),
                working_directory,
                shim_pid: launched.pid,
                shim_start_time: launched.start_time,
            };
            let process = AgentProcess::spawned(
                followed,
                launched.exit,
                report_to,
                ctx.address().recipient(),
            )
            .with_progress(progress_to)
            .with_release(release_to)
            .start();
            let shim = ShimIdentity {
                pid: launched.pid,
                start_time: launched.start_time,
            };
            act.runs.insert(task_id, (process.clone(), shim));
            Ok(RunHandle {
                process,
                shim_pid: launched.pid,
                shim_start_time: launched.start_time,
            })
        }))
    }
}

impl Handler<Adopt> for AgentPool {
    type Result = MessageResult<Adopt>;

    fn handle(&mut self, msg: Adopt, ctx: &mut Context<Self>) -> Self::Result {
        // A task's actor restarted by its supervisor keeps its address, so the run's
        // existing follower already reports to it: one follower per run.
        if let Some((process, _)) = self.runs.get(&msg.task_id)
            && process.connected()
        {
            return MessageResult(process.clone());
        }
        let followed = FollowedRun {
            task_id: msg.task_id.clone(),
            run: self.run_dir(&msg.task_id),
            working_directory: msg.working_directory,
            shim_pid: msg.shim_pid,
            shim_start_time: msg.shim_start_time,
        };
        let process = AgentProcess::adopted(followed, msg.report_to, ctx.address().recipient())
            .with_progress(msg.progress_to)
            .start();
        let shim = ShimIdentity {
            pid: msg.shim_pid,
            start_time: msg.shim_start_time,
        };
        self.runs.insert(msg.task_id, (process.clone(), shim));
        MessageResult(process)
    }
}

impl Handler<FindShim> for AgentPool {
    type Result = ResponseFuture<Option<ShimIdentity>>;

    fn handle(&mut self, msg: FindShim, _ctx: &mut Context<Self>) -> Self::Result {
        // A shim of this daemon whose start is not journaled yet has recorded nothing on
        // its folder (it would, if this daemon died): the registry knows it.
        if let Some((process, shim)) = self.runs.get(&msg.task_id)
            && process.connected()
        {
            let shim = *shim;
            return Box::pin(async move { Some(shim) });
        }
        let run = self.run_dir(&msg.task_id);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || run.read_shim())
                .await
                .ok()
                .flatten()
        })
    }
}

impl Handler<ForgetShim> for AgentPool {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: ForgetShim, _ctx: &mut Context<Self>) -> Self::Result {
        let run = self.run_dir(&msg.task_id);
        Box::pin(async move {
            let removed = tokio::task::spawn_blocking(move || run.forget_shim()).await;
            match removed {
                Ok(Err(e)) => {
                    tracing::warn!(task = %msg.task_id, error = %e, "could not clear the shim's identity");
                }
                Err(e) => {
                    tracing::warn!(task = %msg.task_id, error = %e, "could not clear the shim's identity")
                }
                Ok(Ok(())) => {}
            }
        })
    }
}

impl Handler<RunOver> for AgentPool {
    type Result = ();

    fn handle(&mut self, msg: RunOver, _ctx: &mut Context<Self>) {
        // Only the follower that ended: the task may have a newer run already.
        if self.runs.get(&msg.task_id).map(|(p, _)| p) == Some(&msg.process) {
            self.runs.remove(&msg.task_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::model::task::tests_support::queued;
    use crate::settings::{AgentSettings, Settings, fixed_settings};

    /// Receives a run's end; the launches under test never get that far.
    struct Unreached;
    impl Actor for Unreached {
        type Context = Context<Self>;
    }
    impl Handler<AgentExited> for Unreached {
        type Result = ();
        fn handle(&mut self, _: AgentExited, _: &mut Context<Self>) {}
    }

    impl Handler<AgentProgress> for Unreached {
        type Result = ();
        fn handle(&mut self, _: AgentProgress, _: &mut Context<Self>) {}
    }

    impl Handler<Release> for Unreached {
        type Result = ();
        fn handle(&mut self, _: Release, _: &mut Context<Self>) {}
    }

    fn pool(runs_root: &Path, settings: Settings) -> Addr<AgentPool> {
        let launcher = Launcher {
            runs_root: runs_root.to_path_buf(),
            shim_command: vec!["/nonexistent/beat".into(), "shim".into()],
            base_env: Vec::new(),
            spawner: None,
        };
        AgentPool::new(
            launcher,
            Arc::new(ProgramCache::new(None)),
            fixed_settings(settings),
        )
        .start()
    }

    #[actix_rt::test]
    async fn a_recorded_shim_is_found_until_it_is_forgotten() {
        let runs = tempfile::tempdir().unwrap();
        let pool = pool(runs.path(), Settings::default());
        let find = || FindShim {
            task_id: "task-a".into(),
        };
        assert_eq!(pool.send(find()).await.unwrap(), None);
        let run = RunDir::new(runs.path(), "task-a");
        std::fs::create_dir_all(&run.path).unwrap();
        let shim = ShimIdentity {
            pid: 4242,
            start_time: 77,
        };
        run.record_shim(&shim).unwrap();
        assert_eq!(pool.send(find()).await.unwrap(), Some(shim));
        pool.send(ForgetShim {
            task_id: "task-a".into(),
        })
        .await
        .unwrap();
        assert_eq!(run.read_shim(), None);
        assert_eq!(pool.send(find()).await.unwrap(), None);
        // Forgetting what is not there is no error.
        pool.send(ForgetShim {
            task_id: "task-a".into(),
        })
        .await
        .unwrap();
    }

    #[actix_rt::test]
    async fn a_missing_cli_fails_the_launch_before_any_file_is_written() {
        let runs = tempfile::tempdir().unwrap();
        let mut settings = Settings::default();
        settings.agents.insert(
            "ghost".into(),
            AgentSettings {
                command: Some(vec!["ghost-cli".into(), "{prompt}".into()]),
                ..Default::default()
            },
        );
        let pool = pool(runs.path(), settings);
        let task = TaskRecord {
            agent: "ghost".into(),
            ..queued("task-g")
        };
        let err = pool
            .send(Launch {
                task,
                report_to: Unreached.start().recipient(),
                progress_to: Unreached.start().recipient(),
                release_to: Unreached.start().recipient(),
            })
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(&err, LaunchError::Agent(AgentError::ProgramNotFound { program, .. }) if program == "ghost-cli"),
            "{err}"
        );
        assert!(!RunDir::new(runs.path(), "task-g").path.exists());
    }

    #[actix_rt::test]
    async fn a_shim_that_cannot_be_spawned_fails_the_launch_saying_so() {
        let runs = tempfile::tempdir().unwrap();
        let pool = pool(runs.path(), Settings::default());
        let task = TaskRecord {
            agent: "shell".into(),
            ..queued("task-s")
        };
        let err = pool
            .send(Launch {
                task,
                report_to: Unreached.start().recipient(),
                progress_to: Unreached.start().recipient(),
                release_to: Unreached.start().recipient(),
            })
            .await
            .unwrap()
            .unwrap_err();
        assert!(matches!(err, LaunchError::Spawn(_)), "{err}");
        assert!(
            err.to_string()
                .starts_with("the agent could not be started: spawning its shim failed:"),
            "{err}"
        );
        // The run folder was prepared before the spawn failed.
        assert!(RunDir::new(runs.path(), "task-s").spec().exists());
    }
}
