//! The launcher: prepares a task's run folder (when the run has files to be given) and
//! spawns its shim, forked by the spawner or exec'd as `beat shim`.
//!
//! Every function here blocks (file writes, fork): only the `AgentPool` calls them, from
//! tokio's blocking pool, never from the actix thread.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::adapter::LaunchCommand;
use super::run_dir::{RunDir, RunSpec, SPEC_FILE, process_start_time, write_atomically};
use super::spawner::Spawner;
use crate::model::TaskRecord;
use crate::settings::Settings;

/// Spawns shims. One per engine, owned by the `AgentPool`.
pub struct Launcher {
    pub runs_root: PathBuf,
    /// The program and leading arguments that run the shim: `[beat, shim]`.
    pub shim_command: Vec<OsString>,
    /// The environment the daemon started with; agents get it plus their settings.
    pub base_env: Vec<(OsString, OsString)>,
    /// Forks shims without exec (see `spawner`); without one, the shim is exec'd.
    pub spawner: Option<std::sync::Arc<Spawner>>,
}

/// How the daemon learns that a shim it started has exited.
pub enum ShimExit {
    /// An exec'd shim: the daemon's own child.
    Child(tokio::process::Child),
    /// A shim forked by the spawner: the daemon's end of the run's channel (see
    /// `channel`), which reads end-of-file once the shim has exited.
    Channel(std::os::fd::OwnedFd),
}

/// A shim that has been started for this daemon.
pub struct Launched {
    pub exit: ShimExit,
    pub pid: u32,
    pub start_time: u64,
}

impl Launcher {
    pub fn run_dir(&self, task_id: &str) -> RunDir {
        RunDir::new(&self.runs_root, task_id)
    }

    /// The agent's environment: the daemon's, less what the adapter removes, plus what
    /// it sets, plus `BACKBEAT_WORKER` and `BACKBEAT_TASK_ID`.
    pub fn agent_env(
        &self,
        task: &TaskRecord,
        cmd: &LaunchCommand,
        run_dir: &Path,
    ) -> Vec<(OsString, OsString)> {
        let removed = |name: &OsString| {
            let name = name.to_string_lossy();
            cmd.env_remove
                .iter()
                .any(|pat| match pat.strip_suffix('*') {
                    Some(prefix) => name.starts_with(prefix),
                    None => name == pat.as_str(),
                })
        };
        let mut env: Vec<(OsString, OsString)> = self
            .base_env
            .iter()
            .filter(|(k, _)| !removed(k))
            .cloned()
            .collect();
        let run_dir = run_dir.display().to_string();
        for (k, v) in &cmd.env_default {
            if !env
                .iter()
                .any(|(name, value)| name == k.as_str() && !value.is_empty())
            {
                env.retain(|(name, _)| name != k.as_str()); // an empty value counts as unset
                env.push((k.into(), v.into()));
            }
        }
        let mut set = |k: &str, v: &str| {
            env.retain(|(name, _)| name != k);
            env.push((k.into(), v.into()));
        };
        for (k, v) in &cmd.env_set {
            set(k, &v.replace("{runDir}", &run_dir));
        }
        set("BACKBEAT_WORKER", "true");
        set("BACKBEAT_TASK_ID", &task.id);
        env
    }

    /// Writes the run folder and spawns the shim in a session of its own, so that
    /// nothing that signals the daemon's process group reaches the agent.
    ///
    /// A run with no file to prepare gets no folder here: a shim forked by the spawner
    /// creates it when there is something to write (output, or a result the daemon
    /// could not take). A folder left by an earlier run of the task is removed first, so
    /// that none of its files or records passes for this run's.
    pub fn launch(
        &self,
        task: &TaskRecord,
        cmd: &LaunchCommand,
        settings: &Settings,
    ) -> std::io::Result<Launched> {
        let run = self.run_dir(&task.id);
        match std::fs::remove_dir_all(&run.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        if cmd.prompt_on_stdin || !cmd.files.is_empty() {
            run.ensure()?;
        }
        if cmd.prompt_on_stdin {
            std::fs::write(run.prompt(), &task.prompt)?;
        }
        for (name, content) in &cmd.files {
            std::fs::write(run.path.join(name), content)?;
        }
        let spec = RunSpec {
            task_id: task.id.clone(),
            argv: cmd.argv.clone(),
            cwd: PathBuf::from(&task.working_directory),
            prompt_on_stdin: cmd.prompt_on_stdin,
            timeout_ms: task.timeout,
            idle_timeout_ms: task.idle_timeout,
            max_output_bytes: task.max_output_buffer,
            kill_grace_ms: settings.kill_grace_period_ms,
            output_format: cmd.output_format,
        };
        let bytes = serde_json::to_vec(&spec).map_err(std::io::Error::other)?;
        self.spawn_shim(&run, &bytes, self.agent_env(task, cmd, &run.path))
    }

    fn spawn_shim(
        &self,
        run: &RunDir,
        spec: &[u8],
        env: Vec<(OsString, OsString)>,
    ) -> std::io::Result<Launched> {
        let run_path = &run.path;
        if let Some(spawner) = &self.spawner {
            match spawner.spawn_shim(run_path, spec, &env) {
                Ok(shim) => {
                    return Ok(Launched {
                        exit: ShimExit::Channel(shim.channel),
                        pid: shim.pid,
                        start_time: shim.start_time,
                    });
                }
                // The spawner is an optimisation: if it is gone (killed by the OOM
                // killer, say) before it got the request, the run still starts, by exec.
                // Any later failure may have forked a shim already: never start twice.
                Err(e) if e.kind() == std::io::ErrorKind::NotConnected => {
                    tracing::warn!(error = %e, "exec'ing the shim instead")
                }
                Err(e) => return Err(e),
            }
        }
        // The exec'd shim reads its spec from the run folder. Not fsynced: if the
        // machine dies before the shim starts, recovery finds no shim identity and
        // launches again.
        run.ensure()?;
        write_atomically(&run_path.join(SPEC_FILE), spec, false)?;
        let log = std::fs::File::create(run_path.join("shim.log"))?;
        let mut command = tokio::process::Command::new(&self.shim_command[0]);
        command
            .args(&self.shim_command[1..])
            .arg(run_path)
            .env_clear()
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(false);
        // SAFETY: setsid and sigprocmask are async-signal-safe and touch no memory of
        // the parent. TERM and INT stay blocked until the shim has its handler in place
        // (it unblocks them then): a cancel that comes at once is delayed, never lost,
        // and never kills the shim before it can stop its agent.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGTERM);
                libc::sigaddset(&mut set, libc::SIGINT);
                libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                Ok(())
            });
        }
        let child = command.spawn()?;
        let pid = child
            .id()
            .ok_or_else(|| std::io::Error::other("the shim exited at once"))?;
        let start_time = process_start_time(pid)
            .ok_or_else(|| std::io::Error::other("the shim vanished right after it was spawned"))?;
        Ok(Launched {
            exit: ShimExit::Child(child),
            pid,
            start_time,
        })
    }
}
