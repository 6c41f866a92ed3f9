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

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let mut child = Command::new("git")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    // git on a huge or network-mounted tree must not hold a task's end forever.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => break,
            Ok(Some(_)) => return None,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take()?, &mut out).ok()?;
    Some(out)
}

/// Builds the checkpoint of a task that just reached `status`.
pub fn build(
    task: &TaskRecord,
    run: &RunDir,
    status: TaskStatus,
    error: Option<String>,
) -> Checkpoint {
    let readable = std::fs::read(run.readable())
        .or_else(|_| std::fs::read(run.stdout()))
        .unwrap_or_default();
    let output_summary = tail_summary(&String::from_utf8_lossy(&readable));
    let stderr = std::fs::read(run.stderr()).unwrap_or_default();
    let stderr_tail = tail_summary(&String::from_utf8_lossy(&stderr));
    let error_summary = error.or_else(|| (!stderr_tail.trim().is_empty()).then_some(stderr_tail));
    let dir = Path::new(&task.working_directory);
    let git_commit_sha = git(dir, &["rev-parse", "HEAD"]).map(|s| s.trim().to_string());
    let (git_branch, git_dirty_files) = if git_commit_sha.is_some() {
        let branch = git(dir, &["rev-parse", "--abbrev-ref", "HEAD"]).map(|s| s.trim().to_string());
        let dirty = git(dir, &["status", "--porcelain"])
            .map(|s| {
                s.lines()
                    .filter(|l| l.len() > 3)
                    .map(|l| l[3..].to_string())
                    .collect()
            })
            .unwrap_or_default();
        (branch, dirty)
    } else {
        (None, Vec::new())
    };
    Checkpoint {
        checkpoint_type: status,
        output_summary,
        error_summary,
        git_branch,
        git_commit_sha,
        git_dirty_files,
        created_at: now_ms(),
    }
}

/// The prompt of a resumed task (spec 8.4): the previous attempt's context first.
pub fn resume_prompt(previous: &TaskRecord, additional_context: Option<&str>) -> String {
    let mut p = String::from("PREVIOUS TASK CONTEXT:\n");
    p.push_str(&format!(
        "The previous attempt ({}) ended with status: {}{}.\n\nOriginal prompt: {}\n",
        previous.id,
        previous.status,
        previous
            .reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default(),
        previous.prompt
    ));
    if let Some(cp) = &previous.checkpoint {
        if !cp.output_summary.trim().is_empty() {
            p.push_str(&format!(
                "\nLast output:\n{}\n",
                cp.output_summary.trim_end()
            ));
        }
        if let Some(e) = cp.error_summary.as_deref().filter(|e| !e.trim().is_empty()) {
            p.push_str(&format!("\nError: {}\n", e.trim_end()));
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
    }
    if let Some(ctx) = additional_context.filter(|c| !c.trim().is_empty()) {
        p.push_str(&format!("\nAdditional context: {ctx}\n"));
    }
    p.push_str("\nPlease continue the task from where the previous attempt left off, or retry it, taking the results above into account.\n");
    p
}

#[cfg(test)]
mod tests {
    use super::*;

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
