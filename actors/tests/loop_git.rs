//! Git for eval loops, against real repositories in temporary directories.
//!
//! Every git command runs with a clean environment (a temporary HOME, no system
//! configuration), so the developer's identity, hooks and settings never leak in and
//! the "no committer identity" case is real.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use backbeat_actors::loops::git::{Git, GitError};
use backbeat_actors::model::loops::check_branch_name;

/// A temporary home and a repository in it, with one commit on `main`.
struct Sandbox {
    _tmp: tempfile::TempDir,
    home: PathBuf,
    repo: PathBuf,
    git: Git,
}

impl Sandbox {
    fn new() -> Sandbox {
        let sandbox = Sandbox::empty();
        sandbox.sh("git init -q -b main");
        fs::write(sandbox.repo.join("README"), "hello\n").unwrap();
        fs::write(sandbox.repo.join(".gitignore"), "*.log\n").unwrap();
        fs::create_dir(sandbox.repo.join("src")).unwrap();
        fs::write(sandbox.repo.join("src/lib.rs"), "fn a() {}\n").unwrap();
        sandbox.sh(
            "git add -A && git -c user.name=Dev -c user.email=dev@example.com commit -q -m init",
        );
        sandbox
    }

    /// A home and an empty directory that is not a repository.
    fn empty() -> Sandbox {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("home");
        let repo = tmp.path().join("repo");
        fs::create_dir_all(&home).unwrap();
        fs::create_dir_all(&repo).unwrap();
        let env = vec![
            (
                "PATH".to_string(),
                std::env::var("PATH").unwrap_or_default(),
            ),
            ("HOME".to_string(), home.display().to_string()),
            (
                "XDG_CONFIG_HOME".to_string(),
                home.join(".config").display().to_string(),
            ),
            ("GIT_CONFIG_NOSYSTEM".to_string(), "1".to_string()),
            // Never find a repository above the sandbox.
            (
                "GIT_CEILING_DIRECTORIES".to_string(),
                tmp.path().display().to_string(),
            ),
        ];
        Sandbox {
            home,
            repo,
            git: Git {
                timeout: Duration::from_secs(30),
                env: Some(env),
            },
            _tmp: tmp,
        }
    }

    /// Runs a shell command in the repository with the sandbox's environment.
    fn sh(&self, script: &str) -> String {
        self.sh_in(&self.repo, script)
    }

    fn sh_in(&self, dir: &Path, script: &str) -> String {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script).current_dir(dir).env_clear();
        for (k, v) in self.git.env.as_ref().unwrap() {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    fn sha_of(&self, rev: &str) -> String {
        self.sh(&format!("git rev-parse {rev}"))
    }
}

#[test]
fn preflight_refuses_a_directory_outside_git() {
    let s = Sandbox::empty();
    let e = s.git.preflight(&s.repo, "loop", true).unwrap_err();
    assert!(matches!(e, GitError::NotARepository { .. }), "{e}");
    assert!(e.to_string().contains("leave gitBranch out"));
}

#[test]
fn preflight_refuses_a_repository_without_a_commit() {
    let s = Sandbox::empty();
    s.sh("git init -q -b main");
    let e = s.git.preflight(&s.repo, "loop", true).unwrap_err();
    assert!(matches!(e, GitError::NoCommit { .. }), "{e}");
}

#[test]
fn preflight_refuses_an_existing_branch() {
    let s = Sandbox::new();
    s.sh("git branch taken");
    let e = s.git.preflight(&s.repo, "taken", true).unwrap_err();
    assert_eq!(
        e,
        GitError::BranchExists {
            dir: s.repo.display().to_string(),
            branch: "taken".into()
        }
    );
}

#[test]
fn preflight_refuses_uncommitted_or_untracked_files_in_place_only() {
    let s = Sandbox::new();
    fs::write(s.repo.join("debug.log"), "ignored files do not count\n").unwrap();
    assert!(s.git.preflight(&s.repo, "loop", true).is_ok());
    fs::write(s.repo.join("notes.txt"), "mine\n").unwrap();
    fs::write(s.repo.join("README"), "changed\n").unwrap();
    let e = s.git.preflight(&s.repo, "loop", true).unwrap_err();
    match &e {
        GitError::UncommittedChanges { files, .. } => {
            assert!(
                files.contains("README") && files.contains("notes.txt"),
                "{files}"
            );
        }
        other => panic!("{other}"),
    }
    assert!(e.to_string().contains("--worktree"));
    let pre = s.git.preflight(&s.repo, "loop", false).unwrap();
    assert_eq!(pre.head_sha, s.sha_of("HEAD"));
    assert_eq!(pre.base_branch.as_deref(), Some("main"));
}

#[test]
fn a_loop_in_place_works_on_a_new_branch_from_head() {
    let s = Sandbox::new();
    let main = s.sha_of("main");
    let c = s.git.start_in_place(&s.repo, "loop/perf").unwrap();
    assert_eq!(c.start_sha, main);
    assert_eq!(c.base_branch.as_deref(), Some("main"));
    assert_eq!(c.work_dir, s.repo);
    assert_eq!(s.sh("git symbolic-ref --short HEAD"), "loop/perf");
    assert!(matches!(
        s.git.start_in_place(&s.repo, "loop/perf"),
        Err(GitError::BranchExists { .. })
    ));
}

#[test]
fn keep_commits_every_change_as_backbeat_when_git_has_no_identity() {
    let s = Sandbox::new();
    let main = s.sha_of("main");
    let c = s.git.start_in_place(&s.repo, "loop").unwrap();
    fs::write(s.repo.join("README"), "hello\nworld\n").unwrap();
    fs::write(s.repo.join("src/new.rs"), "fn b() {}\n").unwrap();
    fs::remove_file(s.repo.join("src/lib.rs")).unwrap();
    let commit = s
        .git
        .commit_all(
            &s.repo,
            "loop",
            "backbeat loop loop-1 iteration 1: keep, score 7",
        )
        .unwrap();
    assert!(commit.committed);
    assert_eq!(commit.sha, s.sha_of("loop"));
    assert_eq!(s.sha_of("loop~1"), c.start_sha);
    assert_eq!(
        commit.diff_summary.as_deref(),
        Some("3 files changed, 2 insertions(+), 1 deletion(-)")
    );
    assert_eq!(
        s.sh("git log -1 --format='%an <%ae>|%cn <%ce>|%s' loop"),
        "Backbeat <backbeat@localhost>|Backbeat <backbeat@localhost>|backbeat loop loop-1 iteration 1: keep, score 7"
    );
    assert_eq!(
        s.sh("git status --porcelain"),
        "",
        "everything was committed"
    );
    assert_eq!(s.sha_of("main"), main, "no other branch moves");
}

#[test]
fn commits_use_the_configured_identity_when_there_is_one() {
    let s = Sandbox::new();
    fs::write(
        s.home.join(".gitconfig"),
        "[user]\n\tname = Ada\n\temail = ada@example.com\n",
    )
    .unwrap();
    s.git.start_in_place(&s.repo, "loop").unwrap();
    fs::write(s.repo.join("README"), "changed\n").unwrap();
    s.git.commit_all(&s.repo, "loop", "m").unwrap();
    assert_eq!(
        s.sh("git log -1 --format='%an <%ae>'"),
        "Ada <ada@example.com>"
    );
}

#[test]
fn nothing_to_commit_keeps_the_previous_commit() {
    let s = Sandbox::new();
    let c = s.git.start_in_place(&s.repo, "loop").unwrap();
    fs::write(s.repo.join("build.log"), "ignored\n").unwrap();
    let commit = s.git.commit_all(&s.repo, "loop", "m").unwrap();
    assert_eq!(
        (commit.sha.as_str(), commit.committed, commit.diff_summary),
        (c.start_sha.as_str(), false, None)
    );
    assert_eq!(s.sha_of("loop"), c.start_sha);
}

#[test]
fn reset_puts_back_the_kept_commit_and_removes_untracked_but_not_ignored_files() {
    let s = Sandbox::new();
    let main = s.sha_of("main");
    s.git.start_in_place(&s.repo, "loop").unwrap();
    fs::write(s.repo.join("README"), "kept\n").unwrap();
    let kept = s.git.commit_all(&s.repo, "loop", "keep").unwrap().sha;
    // A discarded iteration: edits, new files and folders, a deletion, an ignored file.
    fs::write(s.repo.join("README"), "discarded\n").unwrap();
    fs::create_dir_all(s.repo.join("src/tmp/deep")).unwrap();
    fs::write(s.repo.join("src/tmp/deep/x.rs"), "x\n").unwrap();
    fs::write(s.repo.join("new.txt"), "x\n").unwrap();
    fs::remove_file(s.repo.join("src/lib.rs")).unwrap();
    fs::write(s.repo.join("src/cache.log"), "ignored\n").unwrap();
    s.sh("git add new.txt");
    // The loop may work in a subdirectory: the reset still covers the whole tree.
    s.git.reset_to(&s.repo.join("src"), "loop", &kept).unwrap();
    assert_eq!(fs::read_to_string(s.repo.join("README")).unwrap(), "kept\n");
    assert!(s.repo.join("src/lib.rs").exists());
    assert!(!s.repo.join("src/tmp").exists());
    assert!(!s.repo.join("new.txt").exists());
    assert!(s.repo.join("src/cache.log").exists(), "ignored files stay");
    assert_eq!(s.sh("git status --porcelain"), "");
    assert_eq!(s.sha_of("loop"), kept);
    assert_eq!(s.sha_of("main"), main);
}

#[test]
fn reset_returns_to_the_start_commit_and_drops_a_later_commit_of_the_loop() {
    let s = Sandbox::new();
    let c = s.git.start_in_place(&s.repo, "loop").unwrap();
    fs::write(s.repo.join("README"), "agent committed this itself\n").unwrap();
    s.sh("git -c user.name=A -c user.email=a@b commit -q -am agent");
    s.git.reset_to(&s.repo, "loop", &c.start_sha).unwrap();
    assert_eq!(s.sha_of("loop"), c.start_sha);
    assert_eq!(
        fs::read_to_string(s.repo.join("README")).unwrap(),
        "hello\n"
    );
}

#[test]
fn commit_and_reset_refuse_to_act_off_the_loop_branch() {
    let s = Sandbox::new();
    let c = s.git.start_in_place(&s.repo, "loop").unwrap();
    s.sh("git checkout -q main");
    fs::write(s.repo.join("README"), "the user's own work\n").unwrap();
    let main = s.sha_of("main");
    let e = s.git.commit_all(&s.repo, "loop", "m").unwrap_err();
    assert!(
        matches!(&e, GitError::NotOnBranch { found, .. } if found == "branch 'main'"),
        "{e}"
    );
    let e = s.git.reset_to(&s.repo, "loop", &c.start_sha).unwrap_err();
    assert!(matches!(e, GitError::NotOnBranch { .. }));
    assert_eq!(s.sha_of("main"), main);
    assert_eq!(
        fs::read_to_string(s.repo.join("README")).unwrap(),
        "the user's own work\n",
        "the user's checkout is untouched"
    );
}

#[test]
fn reset_refuses_a_commit_that_is_not_on_the_loop_branch() {
    let s = Sandbox::new();
    s.sh("git checkout -q -b other && echo x > other.txt && git add -A && git -c user.name=A -c user.email=a@b commit -q -m other && git checkout -q main");
    let other = s.sha_of("other");
    s.git.start_in_place(&s.repo, "loop").unwrap();
    let e = s.git.reset_to(&s.repo, "loop", &other).unwrap_err();
    assert!(matches!(e, GitError::NotAnAncestor { .. }), "{e}");
    assert_eq!(s.sha_of("loop"), s.sha_of("main"));
}

#[test]
fn a_worktree_loop_leaves_the_users_checkout_alone_and_its_branch_survives() {
    let s = Sandbox::new();
    // The user has work in progress: a worktree loop does not mind.
    fs::write(s.repo.join("README"), "in progress\n").unwrap();
    let worktrees = s.home.join("backbeat/worktrees");
    fs::create_dir_all(&worktrees).unwrap();
    let path = worktrees.join("loop-1");
    let c = s
        .git
        .start_worktree(&s.repo.join("src"), "loop/wt", &path)
        .unwrap();
    assert_eq!(c.worktree_path.as_deref(), Some(path.as_path()));
    assert_eq!(
        c.work_dir,
        path.join("src"),
        "the same subdirectory, in the worktree"
    );
    assert_eq!(s.sh("git symbolic-ref --short HEAD"), "main");
    assert_eq!(s.sh_in(&path, "git symbolic-ref --short HEAD"), "loop/wt");
    fs::write(c.work_dir.join("lib.rs"), "fn better() {}\n").unwrap();
    let commit = s.git.commit_all(&c.work_dir, "loop/wt", "keep").unwrap();
    assert!(commit.committed);
    fs::write(c.work_dir.join("lib.rs"), "fn worse() {}\n").unwrap();
    s.git.reset_to(&c.work_dir, "loop/wt", &commit.sha).unwrap();
    assert_eq!(
        fs::read_to_string(c.work_dir.join("lib.rs")).unwrap(),
        "fn better() {}\n"
    );
    // An unfinished iteration's edits go with the worktree.
    fs::write(c.work_dir.join("lib.rs"), "half done\n").unwrap();
    s.git.remove_worktree(&s.repo, &path).unwrap();
    assert!(!path.exists());
    assert_eq!(s.sha_of("loop/wt"), commit.sha, "the branch stays");
    assert_eq!(
        fs::read_to_string(s.repo.join("README")).unwrap(),
        "in progress\n"
    );
    assert_eq!(
        s.sh("git worktree list --porcelain")
            .matches("worktree ")
            .count(),
        1
    );
    // Removing again (after a crash, say) is harmless.
    s.git.remove_worktree(&s.repo, &path).unwrap();
}

#[test]
fn a_worktree_deleted_by_hand_is_pruned() {
    let s = Sandbox::new();
    let path = s.home.join("wt");
    s.git.start_worktree(&s.repo, "loop", &path).unwrap();
    fs::remove_dir_all(&path).unwrap();
    s.git.remove_worktree(&s.repo, &path).unwrap();
    assert_eq!(
        s.sh("git worktree list --porcelain")
            .matches("worktree ")
            .count(),
        1
    );
    assert!(s.git.branch_exists(&s.repo, "loop").unwrap());
}

#[test]
fn branch_name_rules_agree_with_git() {
    // `@` is left out: `check-ref-format --branch` reads it as HEAD's branch, while as a
    // new branch's name git refuses it (and so do we).
    let s = Sandbox::new();
    for name in [
        "perf",
        "loop/perf-1",
        "a.b",
        "feature/x_y",
        "v1.2",
        "ünïcode",
        "-x",
        "HEAD",
        "a..b",
        "a@{b",
        "a b",
        "a~1",
        "a^",
        "a:b",
        "a?",
        "a*",
        "a[b",
        "a\\b",
        "a.",
        "/a",
        "a/",
        "a//b",
        ".a",
        "a/.b",
        "a.lock",
        "a/b.lock/c",
        "a@b",
        "x/@",
    ] {
        let git_accepts = Command::new("git")
            .args(["check-ref-format", "--branch", name])
            .current_dir(&s.repo)
            .output()
            .unwrap()
            .status
            .success();
        assert_eq!(
            check_branch_name(name).is_ok(),
            git_accepts,
            "{name:?}: git says {git_accepts}"
        );
    }
}
