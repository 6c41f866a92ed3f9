//! Validation of new work, and the first record of a task.
//!
//! Owns: the limits of a request (prompt size, timeouts, buffers, dependencies) and the
//! errors that say what to do about them. Validation has two halves: `check`, pure, that
//! a handler runs on the actix thread so that bad input is refused at once; and
//! `Validator::build`, which also stats the working directory and looks the agent's CLI
//! up (through a `ProgramCache`: a CLI installed after the daemon started is found, a
//! removed one is not used), and so runs on the blocking pool
//! (`blocking::off_actix_thread`), once per request for all the tasks it makes.
//! Must never: touch the journal or actors; stat or look programs up on the actix
//! thread (`check_working_directory` and every program lookup assert it in debug builds).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::requests::NewTask;
use crate::agents::adapter::resolve_agent_with;
use crate::agents::programs::ProgramCache;
use crate::error::EngineError;
use crate::model::{EntityRef, TaskRecord, TaskStatus, now_ms};
use crate::settings::Settings;

/// Most dependencies one task may have.
pub const MAX_DEPENDENCIES: usize = 100;
/// Largest prompt accepted: 1 MiB (the original stopped at 4000 characters).
pub const MAX_PROMPT_BYTES: usize = 1 << 20;
pub const MIN_TIMEOUT_MS: u64 = 1_000;
pub const MAX_TIMEOUT_MS: u64 = 86_400_000;
pub const MIN_OUTPUT_BUFFER: u64 = 1_024;
pub const MAX_OUTPUT_BUFFER: u64 = 1 << 30;

/// Where a new task comes from: nothing (a submit), or an earlier task (retry, resume).
#[derive(Default)]
pub(super) struct Lineage {
    pub parent_task_id: Option<String>,
    pub retry_count: Option<u32>,
    pub retry_of: Option<String>,
    pub resume_session: Option<String>,
}

impl Lineage {
    pub fn after(t: &TaskRecord) -> Lineage {
        Lineage {
            parent_task_id: Some(t.parent_task_id.clone().unwrap_or(t.id.clone())),
            retry_count: Some(t.retry_count.unwrap_or(0) + 1),
            retry_of: Some(t.id.clone()),
            resume_session: None,
        }
    }
}

/// The request that runs `t` again, with `prompt`.
pub(super) fn again(t: &TaskRecord, prompt: String) -> NewTask {
    NewTask {
        prompt,
        priority: t.priority,
        agent: Some(t.agent.clone()),
        working_directory: PathBuf::from(&t.working_directory),
        timeout: Some(t.timeout),
        idle_timeout: t.idle_timeout,
        max_output_buffer: Some(t.max_output_buffer),
        model: t.model.clone(),
        system_prompt: t.system_prompt.clone(),
        depends_on: Vec::new(),
        continue_from: None,
    }
}

/// What validation needs to take onto the blocking pool: a snapshot of the settings and
/// the cache of program lookups.
#[derive(Clone)]
pub struct Validator {
    settings: Arc<Settings>,
    programs: Arc<ProgramCache>,
}

impl Validator {
    pub fn new(settings: Arc<Settings>, programs: Arc<ProgramCache>) -> Validator {
        Validator { settings, programs }
    }

    /// The settings this validator validates with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Validates a request and builds the task's first record. Blocking (it stats the
    /// working directory and looks the agent's CLI up): call it off the actix thread.
    pub(super) fn build(&self, req: NewTask, lineage: Lineage) -> Result<TaskRecord, EngineError> {
        let settings = &*self.settings;
        check(&req)?;
        check_working_directory(&req.working_directory)?;
        let adapter =
            resolve_agent_with(req.agent.as_deref(), settings, |p| self.programs.find(p))?;
        Ok(TaskRecord {
            id: format!("task-{}", uuid::Uuid::now_v7()),
            prompt: req.prompt,
            status: TaskStatus::Queued,
            priority: req.priority,
            agent: adapter.name().to_string(),
            working_directory: req.working_directory.display().to_string(),
            timeout: req.timeout.unwrap_or(settings.timeout),
            idle_timeout: req.idle_timeout.or(settings.idle_timeout),
            max_output_buffer: req.max_output_buffer.unwrap_or(settings.max_output_buffer),
            parent_task_id: lineage.parent_task_id,
            retry_count: lineage.retry_count,
            retry_of: lineage.retry_of,
            created_at: now_ms(),
            model: req.model.filter(|m| !m.trim().is_empty()),
            system_prompt: req.system_prompt.filter(|s| !s.trim().is_empty()),
            resume_session: lineage.resume_session,
            depends_on: req.depends_on,
            continue_from: req.continue_from,
            ..Default::default()
        })
    }

    /// A validated task owned by `owner` (a loop's iteration or eval task). Blocking.
    pub fn owned_task(&self, req: NewTask, owner: EntityRef) -> Result<TaskRecord, EngineError> {
        let mut t = self.build(req, Lineage::default())?;
        t.owner = Some(owner);
        Ok(t)
    }
}

pub(super) fn validate_dependencies(deps: &[String]) -> Result<(), EngineError> {
    if deps.len() > MAX_DEPENDENCIES {
        return Err(EngineError::InvalidInput(format!(
            "{} dependencies given; a task may have at most {MAX_DEPENDENCIES}",
            deps.len()
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for d in deps {
        if !d.starts_with("task-") {
            return Err(EngineError::InvalidInput(format!(
                "'{d}' is not a task id (task-…)"
            )));
        }
        if !seen.insert(d) {
            return Err(EngineError::InvalidInput(format!(
                "dependency {d} is given twice"
            )));
        }
    }
    Ok(())
}

/// The checks of a request that need no I/O (the prompt, the form of its directory,
/// timeouts, the output limit). Its directory and agent are checked by
/// `Validator::build`, after these.
pub fn check(req: &NewTask) -> Result<(), EngineError> {
    let bad = |m: String| Err(EngineError::InvalidInput(m));
    if req.prompt.trim().is_empty() {
        return bad("the prompt is empty: say what the agent should do".into());
    }
    if req.prompt.len() > MAX_PROMPT_BYTES {
        return bad(format!(
            "the prompt is {} bytes; the limit is {MAX_PROMPT_BYTES} (1 MiB). Put long material in a file and point the agent at it",
            req.prompt.len()
        ));
    }
    check_absolute(&req.working_directory)?;
    if let Some(t) = req.timeout
        && !(MIN_TIMEOUT_MS..=MAX_TIMEOUT_MS).contains(&t)
    {
        return bad(format!(
            "timeout {t} ms is out of range: give {MIN_TIMEOUT_MS} to {MAX_TIMEOUT_MS} ms (1 s to 24 h)"
        ));
    }
    if let Some(t) = req.idle_timeout
        && !(MIN_TIMEOUT_MS..=MAX_TIMEOUT_MS).contains(&t)
    {
        return bad(format!(
            "idle timeout {t} ms is out of range: give {MIN_TIMEOUT_MS} to {MAX_TIMEOUT_MS} ms"
        ));
    }
    if let Some(b) = req.max_output_buffer
        && !(MIN_OUTPUT_BUFFER..=MAX_OUTPUT_BUFFER).contains(&b)
    {
        return bad(format!(
            "maxOutputBuffer {b} is out of range: give {MIN_OUTPUT_BUFFER} to {MAX_OUTPUT_BUFFER} bytes"
        ));
    }
    Ok(())
}

fn check_absolute(dir: &Path) -> Result<(), EngineError> {
    if dir.is_absolute() {
        return Ok(());
    }
    Err(EngineError::InvalidInput(format!(
        "working directory '{}' is not an absolute path",
        dir.display()
    )))
}

/// The working directory must exist and be a directory (any directory: the original's
/// "inside the server's cwd" rule, spec W20, is dropped).
pub fn check_working_directory(dir: &Path) -> Result<(), EngineError> {
    crate::blocking::assert_off_actix_thread("the working-directory check");
    check_absolute(dir)?;
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(EngineError::InvalidInput(format!(
            "working directory '{}' is not a directory",
            dir.display()
        ))),
        Err(e) => Err(EngineError::InvalidInput(format!(
            "working directory '{}' cannot be used: {e}. Create it first, or pass an existing one",
            dir.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::blocking::off_actix_thread;
    use crate::settings::AgentSettings;

    /// A validator whose only agent, `late`, runs `late-cli`, looked up in `bin` alone.
    fn validator_with_late_cli(bin: &Path) -> Validator {
        let mut settings = Settings {
            default_agent: Some("late".into()),
            ..Default::default()
        };
        settings.agents.insert(
            "late".into(),
            AgentSettings {
                command: Some(vec!["late-cli".into(), "{prompt}".into()]),
                ..Default::default()
            },
        );
        let programs = ProgramCache::new(Some(bin.as_os_str().to_owned()));
        Validator::new(Arc::new(settings), Arc::new(programs))
    }

    fn request(dir: &Path) -> NewTask {
        NewTask {
            prompt: "do it".into(),
            working_directory: dir.to_path_buf(),
            ..Default::default()
        }
    }

    #[test]
    fn the_pure_check_refuses_bad_input_without_looking_at_the_disk() {
        // A directory that does not exist passes: `check` does not stat it.
        let missing = Path::new("/nonexistent/backbeat-check");
        assert!(check(&request(missing)).is_ok());
        let relative = check(&request(Path::new("relative/dir"))).unwrap_err();
        assert!(relative.to_string().contains("is not an absolute path"));
        let slow = NewTask {
            timeout: Some(1),
            ..request(missing)
        };
        assert!(
            check(&slow)
                .unwrap_err()
                .to_string()
                .contains("timeout 1 ms")
        );
    }

    #[test]
    fn a_cli_installed_after_a_refusal_is_found_and_a_removed_one_is_refused_again() {
        let bin = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let validator = validator_with_late_cli(bin.path());
        let refused = validator.build(request(dir.path()), Lineage::default());
        assert!(refused.unwrap_err().to_string().contains("late-cli"));
        let cli = bin.path().join("late-cli");
        std::fs::write(&cli, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&cli, std::fs::Permissions::from_mode(0o755)).unwrap();
        let built = validator.build(request(dir.path()), Lineage::default());
        assert_eq!(built.unwrap().agent, "late");
        std::fs::remove_file(&cli).unwrap();
        let refused = validator.build(request(dir.path()), Lineage::default());
        assert!(refused.unwrap_err().to_string().contains("late-cli"));
    }

    #[test]
    fn validation_on_the_blocking_pool_of_an_actix_system_builds_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let bin = tempfile::tempdir().unwrap();
        let validator = validator_with_late_cli(bin.path());
        let req = NewTask {
            agent: Some("shell".into()),
            ..request(dir.path())
        };
        let system = actix::System::new();
        let built = system.block_on(off_actix_thread(move || {
            validator.build(req, Lineage::default())
        }));
        assert_eq!(built.unwrap().agent, "shell");
    }

    /// The guard is called by the functions that stat or scan `PATH`: each panics on
    /// the actix thread (in a debug build), so a handler that calls one there fails
    /// every test that goes through it.
    #[cfg(debug_assertions)]
    #[test]
    fn the_directory_check_and_every_program_lookup_panic_on_the_actix_thread() {
        let dir = tempfile::tempdir().unwrap();
        let bin = tempfile::tempdir().unwrap();
        let validator = validator_with_late_cli(bin.path());
        let on_actix_thread = |f: &(dyn Fn() + std::panic::RefUnwindSafe)| {
            actix::System::new().block_on(async { std::panic::catch_unwind(f).is_err() })
        };
        let path = dir.path().to_path_buf();
        assert!(on_actix_thread(&|| {
            let _ = check_working_directory(&path);
        }));
        assert!(on_actix_thread(&|| {
            let _ = crate::agents::adapter::find_program("sh");
        }));
        assert!(on_actix_thread(&|| {
            let _ = ProgramCache::new(std::env::var_os("PATH")).find("sh");
        }));
        // A request whose directory is fine panics at its agent's lookup.
        assert!(on_actix_thread(&|| {
            let _ = validator.build(request(&path), Lineage::default());
        }));
        // Off the actix thread (a thread that never ran an actix system: the test's
        // own one now has), the same calls answer.
        std::thread::spawn(move || {
            assert!(check_working_directory(&path).is_ok());
            assert!(crate::agents::adapter::find_program("sh").is_some());
        })
        .join()
        .unwrap();
    }
}
