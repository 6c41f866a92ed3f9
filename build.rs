//! Build script: the version `beat --version` and the MCP `serverInfo` report is the
//! package version plus the commit it was built from (`0.1.0+56125b8`), so that two
//! builds can be told apart; without git, the package version alone.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

fn main() {
    let version = env!("CARGO_PKG_VERSION");
    let full = match git(&["rev-parse", "--short=7", "HEAD"]) {
        Some(commit) => format!("{version}+{commit}"),
        None => version.to_string(),
    };
    println!("cargo:rustc-env=BACKBEAT_VERSION={full}");
    // Built again when HEAD moves: to another branch, or its branch to a new commit.
    for path in [
        Some("HEAD".to_string()),
        git(&["symbolic-ref", "-q", "HEAD"]),
    ]
    .into_iter()
    .flatten()
    {
        if let Some(file) = git(&["rev-parse", "--git-path", &path]) {
            println!("cargo:rerun-if-changed={file}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
    // `beat` is started for every command (and by the daemon for every shim). As a
    // position-independent executable, the dynamic loader applied its 44 000 relative
    // relocations at each start, copying 1.2 MB of relocated data into every process
    // (page faults were most of `beat --version`). Linked at a fixed address, the
    // linker resolves them once. Only the final link changes: the code is the same.
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg-bin=beat=-no-pie");
    }
}
