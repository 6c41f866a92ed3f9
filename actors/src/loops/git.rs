//! Git for a loop with `gitBranch` (issue 8 point 6), through the `git` CLI.
//!
//! Owns: the preflight checks before a loop takes a branch, creating that branch from
//! HEAD (in place, or in a worktree of its own), committing an iteration's work, putting
//! the working tree back to a commit, and removing the loop's worktree.
//! Must never: delete a branch, move or commit on any branch but the loop's, clean
//! ignored files, or run on the actix thread (every call blocks; each git command has a
//! timeout, after which its process group is killed).
//!
//! Commits skip hooks and signing: they are the loop's bookkeeping on its own branch, and
//! a hook that prompts, fails or rewrites the tree would make keep-or-reset unreliable.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Who commits when git has no committer identity configured.
pub const FALLBACK_NAME: &str = "Backbeat";
pub const FALLBACK_EMAIL: &str = "backbeat@localhost";

/// Why a git operation of a loop did not happen, with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GitError {
    #[error("{dir} is not in a git repository: run the loop inside one, or leave gitBranch out")]
    NotARepository { dir: String },
    #[error(
        "the git repository at {dir} has no commit yet: make a first commit, then start the loop"
    )]
    NoCommit { dir: String },
    #[error(
        "{dir} has uncommitted changes ({files}): commit or stash them first, or use worktree: true (--worktree) so that the loop works apart from your checkout"
    )]
    UncommittedChanges { dir: String, files: String },
    #[error(
        "branch '{branch}' already exists in {dir}: choose another gitBranch (a loop never reuses or deletes a branch)"
    )]
    BranchExists { dir: String, branch: String },
    #[error(
        "the checkout in {dir} is on {found}, not on the loop's branch '{branch}': switch back (git switch {branch}) before the loop goes on"
    )]
    NotOnBranch {
        dir: String,
        branch: String,
        found: String,
    },
    #[error(
        "commit {sha} is not part of the loop's branch '{branch}': the branch was rewritten outside the loop"
    )]
    NotAnAncestor { sha: String, branch: String },
    #[error("git {args} took longer than {secs} s in {dir} and was stopped")]
    Timeout {
        args: String,
        dir: String,
        secs: u64,
    },
    #[error("git {args} failed in {dir}: {stderr}")]
    Failed {
        args: String,
        dir: String,
        stderr: String,
    },
    #[error("could not run git in {dir}: {error}")]
    Spawn { dir: String, error: String },
}

/// What the preflight learned about the loop's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preflight {
    /// The root of the repository's working tree.
    pub top_level: PathBuf,
    pub head_sha: String,
    /// The branch checked out now (`None` on a detached HEAD).
    pub base_branch: Option<String>,
}

/// Where a loop works once its branch exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopCheckout {
    /// The directory iterations run in (inside the worktree, when there is one).
    pub work_dir: PathBuf,
    pub branch: String,
    /// HEAD when the branch was created.
    pub start_sha: String,
    pub base_branch: Option<String>,
    pub worktree_path: Option<PathBuf>,
}

/// What committing an iteration's work gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// The new commit, or the previous one when there was nothing to commit.
    pub sha: String,
    /// `git --shortstat` of the new commit (`2 files changed, 3 insertions(+)`).
    pub diff_summary: Option<String>,
    pub committed: bool,
}

/// Runs git commands for loops.
#[derive(Debug, Clone)]
pub struct Git {
    /// The longest one git command may take.
    pub timeout: Duration,
    /// When set, git runs with exactly this environment (tests use it to keep the
    /// developer's configuration out); otherwise with the daemon's.
    pub env: Option<Vec<(String, String)>>,
}

impl Default for Git {
    fn default() -> Git {
        Git {
            timeout: Duration::from_secs(120),
            env: None,
        }
    }
}

/// The output of one git command.
struct Output {
    success: bool,
    stdout: String,
    stderr: String,
}

impl Git {
    /// Checks that a loop may take `branch` in `dir`: a repository with a commit, the
    /// branch not there yet, and, when the loop works in place (not in a worktree), no
    /// uncommitted or untracked files (a reset would throw them away).
    pub fn preflight(
        &self,
        dir: &Path,
        branch: &str,
        in_place: bool,
    ) -> Result<Preflight, GitError> {
        let shown = dir.display().to_string();
        let top = self.run(dir, &["rev-parse", "--show-toplevel"])?;
        if !top.success {
            return Err(GitError::NotARepository { dir: shown });
        }
        let top_level = PathBuf::from(top.stdout.trim());
        let head = self.run(dir, &["rev-parse", "--verify", "--quiet", "HEAD^{commit}"])?;
        if !head.success {
            return Err(GitError::NoCommit { dir: shown });
        }
        if self.branch_exists(dir, branch)? {
            return Err(GitError::BranchExists {
                dir: shown,
                branch: branch.to_string(),
            });
        }
        if in_place {
            let status = self.ok(dir, &["status", "--porcelain", "--untracked-files=all"])?;
            let files: Vec<&str> = status.lines().map(|l| l.get(3..).unwrap_or(l)).collect();
            if !files.is_empty() {
                let mut list = files.iter().take(5).copied().collect::<Vec<_>>().join(", ");
                if files.len() > 5 {
                    list.push_str(&format!(" and {} more", files.len() - 5));
                }
                return Err(GitError::UncommittedChanges {
                    dir: shown,
                    files: list,
                });
            }
        }
        Ok(Preflight {
            top_level,
            head_sha: head.stdout.trim().to_string(),
            base_branch: self.current_branch(dir)?,
        })
    }

    /// Creates `branch` from HEAD and switches the checkout in `dir` to it.
    pub fn start_in_place(&self, dir: &Path, branch: &str) -> Result<LoopCheckout, GitError> {
        let pre = self.preflight(dir, branch, true)?;
        self.ok(dir, &["checkout", "-q", "-b", branch, &pre.head_sha, "--"])?;
        Ok(LoopCheckout {
            work_dir: dir.to_path_buf(),
            branch: branch.to_string(),
            start_sha: pre.head_sha,
            base_branch: pre.base_branch,
            worktree_path: None,
        })
    }

    /// Creates `branch` from HEAD in a new worktree at `worktree_path` (which must not
    /// exist); the user's checkout is not touched. When `dir` is a subdirectory of its
    /// repository, the loop works in the same subdirectory of the worktree.
    pub fn start_worktree(
        &self,
        dir: &Path,
        branch: &str,
        worktree_path: &Path,
    ) -> Result<LoopCheckout, GitError> {
        let pre = self.preflight(dir, branch, false)?;
        let path = worktree_path.to_string_lossy();
        self.ok(
            dir,
            &["worktree", "add", "-q", "-b", branch, &path, &pre.head_sha],
        )?;
        let inside = self.ok(dir, &["rev-parse", "--show-prefix"])?;
        let inside = inside.trim().trim_end_matches('/');
        Ok(LoopCheckout {
            work_dir: if inside.is_empty() {
                worktree_path.to_path_buf()
            } else {
                worktree_path.join(inside)
            },
            branch: branch.to_string(),
            start_sha: pre.head_sha,
            base_branch: pre.base_branch,
            worktree_path: Some(worktree_path.to_path_buf()),
        })
    }

    /// Commits every change in the working tree (`git add -A`) on the loop's branch. With
    /// nothing to commit, the previous commit stands and is returned.
    pub fn commit_all(
        &self,
        work_dir: &Path,
        branch: &str,
        message: &str,
    ) -> Result<Commit, GitError> {
        self.ensure_on_branch(work_dir, branch)?;
        self.ok(work_dir, &["add", "-A"])?;
        let staged = self.run(work_dir, &["diff", "--cached", "--quiet"])?;
        if staged.success {
            return Ok(Commit {
                sha: self.head(work_dir)?,
                diff_summary: None,
                committed: false,
            });
        }
        let mut args: Vec<String> = Vec::new();
        if !self.has_identity(work_dir)? {
            args.extend([
                "-c".into(),
                format!("user.name={FALLBACK_NAME}"),
                "-c".into(),
                format!("user.email={FALLBACK_EMAIL}"),
            ]);
        }
        args.extend(
            [
                "-c",
                "commit.gpgsign=false",
                "commit",
                "-q",
                "--no-verify",
                "-m",
                message,
            ]
            .map(String::from),
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ok(work_dir, &args)?;
        let summary = self.ok(work_dir, &["show", "--shortstat", "--format=", "HEAD"])?;
        Ok(Commit {
            sha: self.head(work_dir)?,
            diff_summary: Some(summary.trim().to_string()).filter(|s| !s.is_empty()),
            committed: true,
        })
    }

    /// Puts the loop's branch and working tree back to `sha` (a commit of that branch):
    /// hard reset, then removal of untracked files and directories that are not ignored.
    pub fn reset_to(&self, work_dir: &Path, branch: &str, sha: &str) -> Result<(), GitError> {
        self.ensure_on_branch(work_dir, branch)?;
        let ancestor = self.run(work_dir, &["merge-base", "--is-ancestor", sha, "HEAD"])?;
        if !ancestor.success {
            return Err(GitError::NotAnAncestor {
                sha: sha.to_string(),
                branch: branch.to_string(),
            });
        }
        self.ok(work_dir, &["reset", "-q", "--hard", sha])?;
        // From the top: `git clean` in a subdirectory would clean only that subdirectory.
        let top = self.ok(work_dir, &["rev-parse", "--show-toplevel"])?;
        self.ok(Path::new(top.trim()), &["clean", "-q", "-f", "-d"])?;
        Ok(())
    }

    /// Removes the loop's worktree (its branch stays). Uncommitted work in it is the
    /// unfinished iteration's and goes with it. A worktree already gone is pruned.
    pub fn remove_worktree(&self, repo_dir: &Path, worktree_path: &Path) -> Result<(), GitError> {
        if worktree_path.exists() {
            let path = worktree_path.to_string_lossy();
            self.ok(repo_dir, &["worktree", "remove", "--force", &path])?;
        } else {
            self.ok(repo_dir, &["worktree", "prune"])?;
        }
        Ok(())
    }

    /// The commit checked out in `dir`.
    pub fn head(&self, dir: &Path) -> Result<String, GitError> {
        Ok(self.ok(dir, &["rev-parse", "HEAD"])?.trim().to_string())
    }

    /// The branch checked out in `dir`; `None` on a detached HEAD.
    pub fn current_branch(&self, dir: &Path) -> Result<Option<String>, GitError> {
        let out = self.run(dir, &["symbolic-ref", "--quiet", "--short", "HEAD"])?;
        Ok(out.success.then(|| out.stdout.trim().to_string()))
    }

    pub fn branch_exists(&self, dir: &Path, branch: &str) -> Result<bool, GitError> {
        let r = format!("refs/heads/{branch}");
        Ok(self
            .run(dir, &["rev-parse", "--verify", "--quiet", &r])?
            .success)
    }

    fn ensure_on_branch(&self, dir: &Path, branch: &str) -> Result<(), GitError> {
        match self.current_branch(dir)? {
            Some(b) if b == branch => Ok(()),
            found => Err(GitError::NotOnBranch {
                dir: dir.display().to_string(),
                branch: branch.to_string(),
                found: match found {
                    Some(b) => format!("branch '{b}'"),
                    None => "a detached HEAD".to_string(),
                },
            }),
        }
    }

    /// Whether git knows who commits: an email configured, or given by the environment.
    fn has_identity(&self, dir: &Path) -> Result<bool, GitError> {
        let from_env = ["GIT_COMMITTER_EMAIL", "EMAIL"].iter().any(|k| {
            let value = match &self.env {
                Some(env) => env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()),
                None => std::env::var(k).ok(),
            };
            value.is_some_and(|v| !v.is_empty())
        });
        if from_env {
            return Ok(true);
        }
        let email = self.run(dir, &["config", "user.email"])?;
        Ok(email.success && !email.stdout.trim().is_empty())
    }

    /// Runs git and requires success; its trimmed-at-the-end stdout.
    fn ok(&self, dir: &Path, args: &[&str]) -> Result<String, GitError> {
        let out = self.run(dir, args)?;
        if out.success {
            Ok(out.stdout)
        } else {
            Err(GitError::Failed {
                args: args.join(" "),
                dir: dir.display().to_string(),
                stderr: out.stderr.trim().to_string(),
            })
        }
    }

    /// Runs `git <args>` in `dir`, in a process group of its own, killed (group) after
    /// the timeout.
    fn run(&self, dir: &Path, args: &[&str]) -> Result<Output, GitError> {
        let shown = || dir.display().to_string();
        let mut cmd = Command::new("git");
        cmd.args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        if let Some(env) = &self.env {
            cmd.env_clear().envs(env.iter().map(|(k, v)| (k, v)));
        }
        // Never wait for a person: no pager, no editor, no credential prompt.
        cmd.env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_PAGER", "cat")
            .env("GIT_EDITOR", "true")
            .env("LC_ALL", "C");
        let mut child = cmd.spawn().map_err(|e| GitError::Spawn {
            dir: shown(),
            error: e.to_string(),
        })?;
        let pid = child.id() as i32;
        let (mut stdout, mut stderr) = (child.stdout.take(), child.stderr.take());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut err = String::new();
            let err_reader = std::thread::spawn(move || {
                if let Some(s) = stderr.as_mut() {
                    let _ = s.read_to_string(&mut err);
                }
                err
            });
            let mut out = String::new();
            if let Some(s) = stdout.as_mut() {
                let _ = s.read_to_string(&mut out);
            }
            let err = err_reader.join().unwrap_or_default();
            let status = child.wait();
            let _ = tx.send((status, out, err));
        });
        let (status, stdout, stderr) = match rx.recv_timeout(self.timeout) {
            Ok(done) => done,
            Err(_) => {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                return Err(GitError::Timeout {
                    args: args.join(" "),
                    dir: shown(),
                    secs: self.timeout.as_secs(),
                });
            }
        };
        let status = status.map_err(|e| GitError::Spawn {
            dir: shown(),
            error: e.to_string(),
        })?;
        Ok(Output {
            success: status.success(),
            stdout,
            stderr,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_git_command_that_hangs_is_stopped_at_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let git = Git {
            timeout: Duration::from_millis(300),
            env: Some(vec![
                ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
                ("HOME".into(), dir.path().display().to_string()),
                ("GIT_CONFIG_NOSYSTEM".into(), "1".into()),
            ]),
        };
        let started = std::time::Instant::now();
        let result = git.run(dir.path(), &["-c", "alias.hang=!sleep 30", "hang"]);
        assert!(
            matches!(result, Err(GitError::Timeout { .. })),
            "{:?}",
            result.as_ref().err()
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
