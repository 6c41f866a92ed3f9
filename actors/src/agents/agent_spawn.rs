//! How a shim starts its agent: a `vfork`-style child (`clone` with `CLONE_VM |
//! CLONE_VFORK`) that puts itself in a process group of its own, takes the agent's
//! standard descriptors and working directory, and execs the program, found on `PATH`
//! as `execvp` finds it.
//!
//! Why not `std::process::Command`: it starts the child with glibc's `posix_spawn`,
//! whose child asks the kernel for the disposition of each of the 64 signals and sets
//! those with a handler back to the default: 127 system calls on the path of every
//! run, while the shim (the parent here) is suspended. A shim installs no handler (it
//! reads its signals from a signalfd), so the child needs none of them: it sets SIGPIPE
//! back to the default and empties the signal mask, as `Command` does, and keeps every
//! other disposition (SIGHUP stays ignored, as it did).
//!
//! Owns: the child between `clone` and `execve`, and the pipes of its stdout and stderr.
//! Must never: run in a process that has a signal handler (the child shares the
//! parent's memory until its exec), allocate or take a lock in the child, or leave a
//! child that failed to exec unreaped.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// A started agent: its PID (also its process group) and the read ends of its stdout
/// and stderr.
#[derive(Debug)]
pub struct SpawnedAgent {
    pub pid: i32,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// The stack the child runs on until its exec: it calls a few system calls, nothing
/// more.
const CHILD_STACK: usize = 64 * 1024;

/// What the child needs, built before the `clone`: it may not allocate.
struct ChildPlan {
    /// Where to look for the program, in order.
    candidates: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: *const *const libc::c_char,
    cwd: CString,
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
    /// Set by the child when it could not exec: the `errno` to report.
    error: libc::c_int,
}

/// Starts `program` with `args` in `cwd`, in a process group of its own (it leads it),
/// with `stdin` (`/dev/null` when `None`) and its stdout and stderr on new pipes. The
/// environment is this process's. The error is the one `Command::spawn` would give:
/// the program not found, not executable, the directory missing.
///
/// The child is the caller's to reap.
pub fn spawn_in_own_group(
    program: &OsStr,
    args: &[impl AsRef<OsStr>],
    cwd: &Path,
    stdin: Option<OwnedFd>,
) -> io::Result<SpawnedAgent> {
    let stdin = match stdin {
        Some(fd) => fd,
        None => std::fs::File::open("/dev/null")?.into(),
    };
    let (stdout_read, stdout_write) = pipe()?;
    let (stderr_read, stderr_write) = pipe()?;
    let argv_strings: Vec<CString> = std::iter::once(program)
        .chain(args.iter().map(AsRef::as_ref))
        .map(|a| c_string(a.as_bytes().to_vec()))
        .collect::<io::Result<_>>()?;
    let mut argv: Vec<*const libc::c_char> = argv_strings.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    unsafe extern "C" {
        static environ: *const *const libc::c_char;
    }
    let mut plan = ChildPlan {
        candidates: candidates(program)?,
        argv,
        // SAFETY: reading the pointer; the shim is single-threaded, nothing changes it.
        envp: unsafe { environ },
        cwd: c_string(cwd.as_os_str().as_bytes().to_vec())?,
        stdin: stdin.as_raw_fd(),
        stdout: stdout_write.as_raw_fd(),
        stderr: stderr_write.as_raw_fd(),
        error: 0,
    };
    let mut stack = vec![0u8; CHILD_STACK];
    // SAFETY: the stack grows down from its 16-byte aligned end; `plan` and `stack`
    // outlive the child's use of them (CLONE_VFORK: we resume only once it has exec'd
    // or exited). Every signal is blocked around the clone, so no handler could run in
    // the child on our memory; the child sets its own mask before its exec.
    let pid = unsafe {
        let top = stack.as_mut_ptr().add(CHILD_STACK);
        let top = top.sub(top as usize % 16);
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut before: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut before);
        let pid = libc::clone(
            child,
            top.cast(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&raw mut plan).cast(),
        );
        libc::pthread_sigmask(libc::SIG_SETMASK, &before, std::ptr::null_mut());
        pid
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the child wrote it, if at all, before it exited; it no longer runs.
    let error = unsafe { std::ptr::read_volatile(&plan.error) };
    if error != 0 {
        // It exited without an exec: reap it here, it is no agent.
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        return Err(io::Error::from_raw_os_error(error));
    }
    drop((stdin, stdout_write, stderr_write));
    Ok(SpawnedAgent {
        pid,
        stdout: stdout_read,
        stderr: stderr_read,
    })
}

/// The child, on its own stack, sharing the parent's memory until its exec: system
/// calls only.
extern "C" fn child(plan: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `plan` is the parent's `ChildPlan`, alive while the parent is suspended.
    let plan = unsafe { &mut *plan.cast::<ChildPlan>() };
    // SAFETY: plain system calls on values the parent prepared.
    unsafe {
        let failed = |plan: &mut ChildPlan| -> libc::c_int {
            plan.error = *libc::__errno_location();
            libc::_exit(127)
        };
        if libc::setpgid(0, 0) != 0
            || libc::dup2(plan.stdin, 0) < 0
            || libc::dup2(plan.stdout, 1) < 0
            || libc::dup2(plan.stderr, 2) < 0
            || libc::chdir(plan.cwd.as_ptr()) != 0
        {
            return failed(plan);
        }
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        // As execvp: a candidate that is missing or not a directory is passed over; one
        // that is there but not executable is remembered; any other error ends the search.
        let mut error = libc::ENOENT;
        for path in &plan.candidates {
            libc::execve(path.as_ptr(), plan.argv.as_ptr(), plan.envp);
            match *libc::__errno_location() {
                libc::ENOENT | libc::ENOTDIR => {}
                libc::EACCES => error = libc::EACCES,
                other => {
                    error = other;
                    break;
                }
            }
        }
        plan.error = error;
        libc::_exit(127)
    }
}

/// The paths to try for `program`: itself when it holds a `/`, else each `PATH`
/// directory joined with it (`/bin:/usr/bin` without `PATH`; an empty entry is the
/// working directory), as `execvp` does.
fn candidates(program: &OsStr) -> io::Result<Vec<CString>> {
    if program.is_empty() {
        return Err(io::Error::from_raw_os_error(libc::ENOENT));
    }
    if program.as_bytes().contains(&b'/') {
        return Ok(vec![c_string(program.as_bytes().to_vec())?]);
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/bin:/usr/bin".into());
    path.as_bytes()
        .split(|b| *b == b':')
        .map(|dir| {
            let mut full = dir.to_vec();
            if !full.is_empty() {
                full.push(b'/');
            }
            full.extend_from_slice(program.as_bytes());
            c_string(full)
        })
        .collect()
}

fn c_string(bytes: Vec<u8>) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "a command-line argument, the program or the directory holds a NUL byte",
        )
    })
}

/// A pipe, both ends close-on-exec: (read end, write end).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn run(program: &str, args: &[&str], cwd: &Path) -> io::Result<(i32, String, String)> {
        let agent = spawn_in_own_group(OsStr::new(program), args, cwd, None)?;
        let (mut out, mut err) = (String::new(), String::new());
        std::fs::File::from(agent.stdout).read_to_string(&mut out)?;
        std::fs::File::from(agent.stderr).read_to_string(&mut err)?;
        let mut status = 0;
        // SAFETY: reaping the child we started.
        unsafe { libc::waitpid(agent.pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status), "{status}");
        let pid = agent.pid;
        Ok((libc::WEXITSTATUS(status), format!("{pid}\n{out}"), err))
    }

    #[test]
    fn the_agent_leads_its_own_group_in_its_directory_with_its_output_on_the_pipes() {
        let dir = tempfile::tempdir().unwrap();
        let (code, out, err) = run(
            "sh",
            &["-c", "ps -o pgid= -p $$; pwd; echo oops >&2; exit 3"],
            dir.path(),
        )
        .unwrap();
        assert_eq!(code, 3);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[1].trim(), lines[0], "its group is its own PID");
        assert_eq!(
            Path::new(lines[2]).canonicalize().unwrap(),
            dir.path().canonicalize().unwrap()
        );
        assert_eq!(err, "oops\n");
    }

    #[test]
    fn the_agent_starts_with_an_empty_mask_default_sigpipe_and_no_stdin() {
        // The test thread blocks and ignores what a shim does; the agent must not
        // inherit the mask or SIGPIPE's disposition.
        let (code, out, _) = {
            // SAFETY: changing this thread's mask and a disposition for the test.
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGTERM);
                libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                libc::signal(libc::SIGPIPE, libc::SIG_IGN);
            }
            run(
                "sh",
                &["-c", "grep -E '^Sig(Blk|Ign)' /proc/self/status; cat"],
                Path::new("/"),
            )
            .unwrap()
        };
        assert_eq!(code, 0);
        let blocked = out.lines().find(|l| l.starts_with("SigBlk:")).unwrap();
        assert!(blocked.ends_with("0000000000000000"), "{blocked}");
        let ignored = out.lines().find(|l| l.starts_with("SigIgn:")).unwrap();
        let mask = u64::from_str_radix(ignored.split_whitespace().nth(1).unwrap(), 16).unwrap();
        assert_eq!(mask & (1 << (libc::SIGPIPE - 1)), 0, "{ignored}");
    }

    #[test]
    fn a_program_found_nowhere_or_not_executable_or_a_missing_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = run("no-such-program-anywhere", &[], dir.path()).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound, "{missing}");
        let script = dir.path().join("not-executable");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        let refused = run(script.to_str().unwrap(), &[], dir.path()).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::PermissionDenied, "{refused}");
        let gone = run("sh", &["-c", "true"], &dir.path().join("gone")).unwrap_err();
        assert_eq!(gone.kind(), io::ErrorKind::NotFound, "{gone}");
    }
}
