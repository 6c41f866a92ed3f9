//! Checkpoints: what a finished task leaves for whoever continues from it.
//!
//! Owns: reading the tail of a run's readable output and the git state of its working
//! directory. Blocking (files, `git`): call it from `spawn_blocking`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::run_dir::RunDir;
use crate::model::task::Checkpoint;
use crate::model::{TaskRecord, TaskStatus, now_ms};

pub const SUMMARY_LINES: usize = 50;
pub const SUMMARY_BYTES: usize = 8 * 1024;

/// The last `SUMMARY_LINES` lines of `text`, at most `SUMMARY_BYTES` (cut at a line or
/// character boundary).
pub fn tail_summary(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = lines[lines.len().saturating_sub(SUMMARY_LINES)..].join("\n");
    if out.len() > SUMMARY_BYTES {
        let mut cut = out.len() - SUMMARY_BYTES;
        while !out.is_char_boundary(cut) {
            cut += 1;
        }
        out = out[cut..].to_string();
        if let Some(nl) = out.find('\n') {
            out = out[nl + 1..].to_string();
        }
    }
    out
}

/// The repository around `dir`, found without running anything: most tasks of a busy
/// queue are not in one, and spawning `git` for each would cost more than the task.
fn in_git_repository(dir: &Path) -> bool {
    dir.ancestors().any(|d| d.join(".git").exists())
}

/// Runs `git` with a time limit: a huge or network-mounted tree must not hold a task's
/// end forever.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let child = Command::new("git")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(out)) if out.status.success() => String::from_utf8(out.stdout).ok(),
        Ok(_) => None,
        Err(_) => {
            // SAFETY: kill(2) on our own child, which has not been reaped yet.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
            None
        }
    }
}

/// Branch, commit and changed files, from one `git status --porcelain=v2 --branch`.
fn git_state(dir: &Path) -> (Option<String>, Option<String>, Vec<String>) {
    if !in_git_repository(dir) {
        return (None, None, Vec::new());
    }
    let Some(out) = git(dir, &["status", "--porcelain=v2", "--branch"]) else {
        return (None, None, Vec::new());
    };
    parse_porcelain_v2(&out)
}

fn parse_porcelain_v2(out: &str) -> (Option<String>, Option<String>, Vec<String>) {
    let (mut branch, mut commit, mut files) = (None, None, Vec::new());
    for line in out.lines() {
        if let Some(oid) = line.strip_prefix("# branch.oid ") {
            commit = (oid != "(initial)").then(|| oid.to_string());
        } else if let Some(head) = line.strip_prefix("# branch.head ") {
            branch = Some(if head == "(detached)" {
                "HEAD".to_string()
            } else {
                head.to_string()
            });
        } else if let Some(path) = line.strip_prefix("? ") {
            files.push(path.to_string());
        } else {
            // "1 XY sub mH mI mW hH hI path", "2 … X<score> path\torig", "u … path".
            let fields = match line.chars().next() {
                Some('1') => 9,
                Some('2') => 10,
                Some('u') => 11,
                _ => continue,
            };
            if let Some(path) = line.splitn(fields, ' ').nth(fields - 1) {
                files.push(path.split('\t').next().unwrap_or(path).to_string());
            }
        }
    }
    (branch, commit, files)
}

/// The last bytes of a file: twice the summary's size, enough for `tail_summary` to cut
/// at a line boundary, without reading output of up to `maxOutputBuffer` at every end.
fn read_tail(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(
        len.saturating_sub(2 * SUMMARY_BYTES as u64),
    ))?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail)?;
    Ok(tail)
}

/// What a finished run left behind for its checkpoint: the tails of its output and of
/// its stderr, and the git state of its working directory. Read once, off the actix
/// thread, by whoever looks at the run when it ends.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunTail {
    pub output_summary: String,
    pub stderr_tail: String,
    pub git_branch: Option<String>,
    pub git_commit_sha: Option<String>,
    pub git_dirty_files: Vec<String>,
}

/// Reads what the run in `run` left: its output's tail and the git state of
/// `working_directory`. Blocking.
pub fn observe(run: &RunDir, working_directory: &Path) -> RunTail {
    let readable = read_tail(&run.readable())
        .or_else(|_| read_tail(&run.stdout()))
        .unwrap_or_default();
    let stderr = read_tail(&run.stderr()).unwrap_or_default();
    RunTail {
        output_summary: tail_summary(&String::from_utf8_lossy(&readable)),
        stderr_tail: tail_summary(&String::from_utf8_lossy(&stderr)),
        ..observe_git(working_directory)
    }
}

/// What a run that printed nothing left: the git state of `working_directory` alone.
/// Blocking.
pub fn observe_git(working_directory: &Path) -> RunTail {
    let (git_branch, git_commit_sha, git_dirty_files) = git_state(working_directory);
    RunTail {
        git_branch,
        git_commit_sha,
        git_dirty_files,
        ..RunTail::default()
    }
}

/// The checkpoint of a task that reached `status`, from what its run left; `error`
/// (the task's reason when it did not complete) comes before the stderr's tail.
pub fn assemble(tail: RunTail, status: TaskStatus, error: Option<String>) -> Checkpoint {
    let stderr_tail = tail.stderr_tail;
    Checkpoint {
        checkpoint_type: status,
        output_summary: tail.output_summary,
        error_summary: error.or_else(|| (!stderr_tail.trim().is_empty()).then_some(stderr_tail)),
        git_branch: tail.git_branch,
        git_commit_sha: tail.git_commit_sha,
        git_dirty_files: tail.git_dirty_files,
        created_at: now_ms(),
    }
}

/// Builds the checkpoint of a task that just reached `status`. Blocking.
pub fn build(
    task: &TaskRecord,
    run: &RunDir,
    status: TaskStatus,
    error: Option<String>,
) -> Checkpoint {
    assemble(
        observe(run, Path::new(&task.working_directory)),
        status,
        error,
    )
}

/// The checkpoint's output, error and git state, each on its lines, with the labels the
/// two prompt layouts use.
fn checkpoint_details(cp: &Checkpoint, output_label: &str, error_label: &str) -> String {
    let mut p = String::new();
    if !cp.output_summary.trim().is_empty() {
        p.push_str(&format!(
            "\n{output_label}\n{}\n",
            cp.output_summary.trim_end()
        ));
    }
    if let Some(e) = cp.error_summary.as_deref().filter(|e| !e.trim().is_empty()) {
        p.push_str(&format!("\n{error_label} {}\n", e.trim_end()));
    }
    if cp.git_branch.is_some() || cp.git_commit_sha.is_some() {
        p.push_str(&format!(
            "\nGit state: branch={}, commit={}\n",
            cp.git_branch.as_deref().unwrap_or("unknown"),
            cp.git_commit_sha.as_deref().unwrap_or("unknown")
        ));
    }
    if !cp.git_dirty_files.is_empty() {
        p.push_str(&format!(
            "Modified files: {}\n",
            cp.git_dirty_files.join(", ")
        ));
    }
    p
}

/// The prompt of a task that continues from `previous` (spec 8.3): the prerequisite's
/// result first, then the task's own prompt.
pub fn continuation_prompt(previous: &TaskRecord, prompt: &str) -> String {
    let status = previous
        .checkpoint
        .as_ref()
        .map(|c| c.checkpoint_type)
        .unwrap_or(previous.status);
    let mut p = format!(
        "DEPENDENCY CONTEXT:\nA prerequisite task has finished; what follows is its result.\n\n\
         Prerequisite prompt: {}\nStatus: {status}\n",
        previous.prompt
    );
    if let Some(cp) = &previous.checkpoint {
        p.push_str(&checkpoint_details(cp, "Output:", "Errors encountered:"));
    }
    p.push_str(&format!("\n---\n\nYOUR TASK:\n{prompt}"));
    p
}

/// The prompt of a resumed task (spec 8.4): the previous attempt's context first.
pub fn resume_prompt(previous: &TaskRecord, additional_context: Option<&str>) -> String {
    let reason = previous
        .reason
        .as_deref()
        .map(|r| format!(" ({r})"))
        .unwrap_or_default();
    let mut p = format!(
        "PREVIOUS TASK CONTEXT:\nThe previous attempt ({}) ended with status: {}{reason}.\n\n\
         Original prompt: {}\n",
        previous.id, previous.status, previous.prompt
    );
    if let Some(cp) = &previous.checkpoint {
        p.push_str(&checkpoint_details(cp, "Last output:", "Error:"));
    }
    if let Some(ctx) = additional_context.filter(|c| !c.trim().is_empty()) {
        p.push_str(&format!("\nAdditional context: {ctx}\n"));
    }
    p.push_str(
        "\nPlease continue the task from where the previous attempt left off, or retry it, \
         taking the results above into account.\n",
    );
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn porcelain_v2_gives_branch_commit_and_every_changed_path() {
        let out = "# branch.oid 0123456789abcdef0123456789abcdef01234567\n# branch.head main\n\
                   1 .M N... 100644 100644 100644 aaa bbb src/with space.rs\n\
                   2 R. N... 100644 100644 100644 aaa bbb R100 new name.rs\told.rs\n\
                   ? untracked.txt\n";
        let (branch, commit, files) = parse_porcelain_v2(out);
        assert_eq!(branch.as_deref(), Some("main"));
        assert_eq!(
            commit.as_deref(),
            Some("0123456789abcdef0123456789abcdef01234567")
        );
        assert_eq!(files, ["src/with space.rs", "new name.rs", "untracked.txt"]);
        let (_, initial, _) = parse_porcelain_v2("# branch.oid (initial)\n# branch.head main\n");
        assert_eq!(initial, None);
    }

    #[test]
    fn no_git_runs_outside_a_repository() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!in_git_repository(dir.path()));
        assert_eq!(git_state(dir.path()), (None, None, Vec::new()));
    }

    #[test]
    fn the_summary_keeps_the_last_50_lines_within_8_kib() {
        let text: String = (1..=80).map(|n| format!("line {n}\n")).collect();
        let s = tail_summary(&text);
        assert_eq!(s.lines().count(), 50);
        assert!(s.starts_with("line 31") && s.ends_with("line 80"));
        let long: String = (0..50)
            .map(|n| format!("{n} {}\n", "é".repeat(200)))
            .collect();
        let s = tail_summary(&long);
        assert!(s.len() <= SUMMARY_BYTES);
        assert!(s.ends_with(&"é".repeat(200)));
    }
}
