//! The run folder: the contract between the daemon and `beat shim`.
//!
//! Owns: the layout of `$BACKBEAT_HOME/runs/<task-id>/` (`spec.json`, `prompt.txt`,
//! `stdout.log`, `stderr.log`; the shim's identity and the run's exit record, kept as
//! the folder's `user.backbeat.shim` and `user.backbeat.exit` extended attributes, or
//! as `shim.json` and `exit.json` where the file system refuses them), the types written
//! there, and the process-identity check (PID plus start time) used to adopt a shim
//! after a restart.
//!
//! Why attributes and not files: creating a file costs 10 to 170 µs on a file system
//! that recently deleted many (ext4 without a journal skips recently freed inodes),
//! a large share of a trivial task's cost; an attribute needs no new inode.
//! A run of a shim forked by the spawner has a folder only once it has something to
//! keep (output, or what its channel could not hand over: see `channel`).
//! Must never: hold a pipe to the agent. The daemon only reads files, so that its own
//! death loses no output and no result.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::parse::OutputFormat;
pub use crate::model::run::{ExitRecord, KillCause};

pub const SPEC_FILE: &str = "spec.json";
pub const PROMPT_FILE: &str = "prompt.txt";
pub const STDOUT_FILE: &str = "stdout.log";
pub const STDERR_FILE: &str = "stderr.log";
pub const EXIT_FILE: &str = "exit.json";
pub const SHIM_FILE: &str = "shim.json";
/// The readable transcript of a structured agent (text and tool calls, not JSON).
pub const READABLE_FILE: &str = "output.txt";
/// What the agent is doing that its task's reason should say while it runs ("retrying
/// after HTTP 500 (attempt 3 of 10)"), rewritten by the shim as it changes.
pub const PROGRESS_FILE: &str = "progress.txt";

/// Written by the shim before it starts the agent: who it is, so that a daemon that
/// died between spawning it and journaling the start can still adopt it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShimIdentity {
    pub pid: u32,
    pub start_time: u64,
}

/// The marker written once where output stops being kept.
pub fn truncation_marker(limit: u64) -> String {
    format!(
        "\n[backbeat: output truncated at {limit} bytes (maxOutputBuffer); the rest was discarded]\n"
    )
}

/// What the shim runs and under which limits. The agent's environment is the shim's
/// own (set by the daemon when it spawns the shim), so secrets never touch the disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunSpec {
    pub task_id: String,
    pub argv: Vec<String>,
    pub cwd: PathBuf,
    /// Feed `prompt.txt` on stdin and then end-of-file; otherwise stdin is `/dev/null`.
    pub prompt_on_stdin: bool,
    pub timeout_ms: u64,
    pub idle_timeout_ms: Option<u64>,
    pub max_output_bytes: u64,
    /// Time between TERM and KILL when the shim stops the agent's process group.
    pub kill_grace_ms: u64,
    /// How to read the agent's stdout.
    #[serde(default)]
    pub output_format: OutputFormat,
}

/// Paths inside one task's run folder.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub path: PathBuf,
}

impl RunDir {
    pub fn new(runs_root: &Path, task_id: &str) -> RunDir {
        RunDir {
            path: runs_root.join(task_id),
        }
    }
    pub fn spec(&self) -> PathBuf {
        self.path.join(SPEC_FILE)
    }
    pub fn prompt(&self) -> PathBuf {
        self.path.join(PROMPT_FILE)
    }
    pub fn stdout(&self) -> PathBuf {
        self.path.join(STDOUT_FILE)
    }
    pub fn stderr(&self) -> PathBuf {
        self.path.join(STDERR_FILE)
    }
    pub fn exit(&self) -> PathBuf {
        self.path.join(EXIT_FILE)
    }
    pub fn readable(&self) -> PathBuf {
        self.path.join(READABLE_FILE)
    }
    pub fn progress(&self) -> PathBuf {
        self.path.join(PROGRESS_FILE)
    }
    /// The shim's latest word on what the agent is doing, if any.
    pub fn read_progress(&self) -> Option<String> {
        std::fs::read_to_string(self.progress())
            .ok()
            .filter(|s| !s.is_empty())
    }
    /// Creates the folder if it is not there (a forked shim creates it when it first has
    /// something to write).
    pub fn ensure(&self) -> std::io::Result<()> {
        match std::fs::create_dir(&self.path) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&self.path)
            }
            other => other,
        }
    }

    /// Where the shim's identity is written when the run folder cannot hold it as an
    /// extended attribute.
    pub fn shim(&self) -> PathBuf {
        self.path.join(SHIM_FILE)
    }

    /// Records the shim's identity on the run folder, where the next daemon finds it:
    /// the folder's `user.backbeat.shim` attribute, or `shim.json` where the file
    /// system refuses extended attributes.
    pub fn record_shim(&self, identity: &ShimIdentity) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(identity).map_err(std::io::Error::other)?;
        match xattr::set(&self.path, xattr::SHIM, &bytes) {
            Ok(()) => Ok(()),
            Err(_) => write_atomically(&self.shim(), &bytes, false),
        }
    }

    pub fn read_shim(&self) -> Option<ShimIdentity> {
        let bytes = match xattr::get(&self.path, xattr::SHIM) {
            Ok(Some(bytes)) => bytes,
            _ => std::fs::read(self.shim()).ok()?,
        };
        serde_json::from_slice(&bytes).ok()
    }

    /// Clears the shim's identity (before the task runs again). Clearing what is not
    /// there is no error.
    pub fn forget_shim(&self) -> std::io::Result<()> {
        xattr::remove(&self.path, xattr::SHIM)?;
        match std::fs::remove_file(self.shim()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Records the run's result: the folder's `user.backbeat.exit` attribute (set in
    /// one call, so a reader sees all of it or nothing), or `exit.json` (written to a
    /// temporary name and renamed) where the attribute is refused: no extended
    /// attributes, or a record too large for them (a long final answer).
    ///
    /// Not fsynced: what makes a result durable is the daemon's journal commit, which
    /// follows within milliseconds. A crash of the daemon alone loses nothing (the page
    /// cache outlives it); only a power loss before the file system writes it back, while
    /// no daemon has journaled it, turns the run into a "lost" one.
    pub fn record_exit(&self, record: &ExitRecord) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        match xattr::set(&self.path, xattr::EXIT, &bytes) {
            Ok(()) => Ok(()),
            Err(_) => write_atomically(&self.exit(), &bytes, false),
        }
    }

    /// The run's result, if the shim has recorded it.
    pub fn read_exit(&self) -> std::io::Result<Option<ExitRecord>> {
        let parse = |bytes: Vec<u8>| {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        };
        if let Some(bytes) = xattr::get(&self.path, xattr::EXIT)? {
            return parse(bytes);
        }
        match std::fs::read(self.exit()) {
            Ok(bytes) => parse(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether the shim has recorded the run's result (not read: one size query).
    pub fn has_exit(&self) -> bool {
        xattr::exists(&self.path, xattr::EXIT) || self.exit().exists()
    }

    pub fn read_spec(&self) -> std::io::Result<RunSpec> {
        let bytes = std::fs::read(self.spec())?;
        serde_json::from_slice(&bytes)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }
}

/// The run folder's extended attributes.
mod xattr {
    use std::ffi::{CStr, CString};
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    /// The shim's identity (about 40 bytes).
    pub const SHIM: &CStr = c"user.backbeat.shim";
    /// The run's exit record (about 250 bytes, more with a final answer).
    pub const EXIT: &CStr = c"user.backbeat.exit";

    fn c_path(path: &Path) -> std::io::Result<CString> {
        CString::new(path.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::other("the run folder's path holds a NUL byte"))
    }

    pub fn set(path: &Path, name: &CStr, value: &[u8]) -> std::io::Result<()> {
        let path = c_path(path)?;
        // SAFETY: setxattr(2) with valid C strings and a buffer of the given length.
        let r = unsafe {
            libc::setxattr(
                path.as_ptr(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// The attribute's value; `None` where it is absent, or the file system has none.
    pub fn get(path: &Path, name: &CStr) -> std::io::Result<Option<Vec<u8>>> {
        let path = c_path(path)?;
        let mut buf = vec![0u8; 4096];
        loop {
            // SAFETY: getxattr(2) into a buffer we own, of the given length.
            let n = unsafe {
                libc::getxattr(
                    path.as_ptr(),
                    name.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            if n >= 0 {
                buf.truncate(n as usize);
                return Ok(Some(buf));
            }
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENODATA | libc::EOPNOTSUPP | libc::ENOENT) => return Ok(None),
                // Grown past the buffer (file systems with large attributes): ask again
                // with the size it has now.
                Some(libc::ERANGE) if buf.len() < 1 << 20 => buf.resize(buf.len() * 16, 0),
                _ => return Err(e),
            }
        }
    }

    /// Whether the attribute is there, from its size alone.
    pub fn exists(path: &Path, name: &CStr) -> bool {
        let Ok(path) = c_path(path) else {
            return false;
        };
        // SAFETY: getxattr(2) with a zero size only reports the value's size.
        unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) >= 0 }
    }

    /// Removes the attribute; absent (or unsupported, or no folder) is no error.
    pub fn remove(path: &Path, name: &CStr) -> std::io::Result<()> {
        let path = c_path(path)?;
        // SAFETY: removexattr(2) with valid C strings.
        if unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENODATA | libc::EOPNOTSUPP | libc::ENOENT) => Ok(()),
            _ => Err(e),
        }
    }
}

/// Writes `bytes` to `path` so that readers see either nothing or all of it.
pub fn write_atomically(path: &Path, bytes: &[u8], durable: bool) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        if durable {
            file.sync_all()?;
        }
    }
    std::fs::rename(&tmp, path)?;
    if durable && let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The start time of process `pid` in clock ticks since boot (`/proc/<pid>/stat`,
/// field 22), or `None` when no such process exists. Together with the PID it names a
/// process uniquely, where a PID alone may have been reused.
pub fn process_start_time(pid: u32) -> Option<u64> {
    proc_stat(pid).map(|(_, start)| start)
}

/// State letter and start time of `pid` from `/proc/<pid>/stat`.
fn proc_stat(pid: u32) -> Option<(String, u64)> {
    // Two reads, not the up to five of `read_to_string` (a `/proc` file reports size 0).
    let stat = crate::measure::read_small(Path::new(&format!("/proc/{pid}/stat")))?;
    // The command name (field 2) may contain spaces and parentheses: skip past its end.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // after_name starts at field 3 (state); field 22 is index 19 here.
    Some((fields.first()?.to_string(), fields.get(19)?.parse().ok()?))
}

/// True when the process that was `pid` with `start_time` is still alive (a zombie has
/// finished: it counts as gone).
pub fn is_same_process_alive(pid: u32, start_time: u64) -> bool {
    matches!(proc_stat(pid), Some((state, start)) if start == start_time && state != "Z" && state != "X")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_found_and_a_wrong_start_time_is_not() {
        let me = std::process::id();
        let start = process_start_time(me).expect("own /proc entry");
        assert!(is_same_process_alive(me, start));
        assert!(!is_same_process_alive(me, start + 1));
    }

    #[test]
    fn a_recorded_shim_is_read_back_until_it_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir {
            path: dir.path().to_path_buf(),
        };
        assert_eq!(run.read_shim(), None);
        let shim = ShimIdentity {
            pid: 4242,
            start_time: 77,
        };
        run.record_shim(&shim).unwrap();
        assert_eq!(run.read_shim(), Some(shim));
        run.forget_shim().unwrap();
        assert_eq!(run.read_shim(), None);
        run.forget_shim().unwrap(); // nothing to forget: no error
    }

    #[test]
    fn a_shim_json_written_by_an_earlier_daemon_is_still_read_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir {
            path: dir.path().to_path_buf(),
        };
        let shim = ShimIdentity {
            pid: 7,
            start_time: 8,
        };
        write_atomically(&run.shim(), &serde_json::to_vec(&shim).unwrap(), false).unwrap();
        assert_eq!(run.read_shim(), Some(shim));
        run.forget_shim().unwrap();
        assert!(!run.shim().exists());
        assert_eq!(run.read_shim(), None);
    }

    fn exit_record(answer: Option<String>) -> ExitRecord {
        ExitRecord {
            exit_code: None,
            signal: Some(9),
            killed_for: Some(KillCause::Timeout { after_ms: 5 }),
            started_at: 1,
            ended_at: 2,
            max_rss_kb: 3,
            output_bytes: 4,
            truncated: true,
            spawn_error: None,
            summary: answer.map(|answer| crate::model::run::RunSummary {
                answer: Some(answer),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn an_exit_record_is_an_attribute_of_the_folder_and_needs_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir {
            path: dir.path().to_path_buf(),
        };
        assert_eq!(run.read_exit().unwrap(), None);
        assert!(!run.has_exit());
        let rec = exit_record(Some("done".into()));
        run.record_exit(&rec).unwrap();
        assert!(run.has_exit());
        assert_eq!(run.read_exit().unwrap(), Some(rec));
        let created: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(created.is_empty(), "files created: {created:?}");
    }

    #[test]
    fn an_exit_record_too_large_for_an_attribute_is_written_to_exit_json() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir {
            path: dir.path().to_path_buf(),
        };
        // Larger than any file system's attribute limit (64 KiB on Linux).
        let rec = exit_record(Some("x".repeat(100 * 1024)));
        run.record_exit(&rec).unwrap();
        assert!(run.exit().exists());
        assert!(run.has_exit());
        assert_eq!(run.read_exit().unwrap(), Some(rec));
    }

    #[test]
    fn an_exit_json_left_by_an_earlier_version_is_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir {
            path: dir.path().to_path_buf(),
        };
        let rec = exit_record(None);
        write_atomically(&run.exit(), &serde_json::to_vec(&rec).unwrap(), true).unwrap();
        assert!(run.has_exit());
        assert_eq!(run.read_exit().unwrap(), Some(rec));
    }
}
