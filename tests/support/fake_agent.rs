//! `fake-agent`: a scriptable stand-in for an agent CLI, used only by Backbeat's
//! integration tests (it is a test helper, not part of the daemon).
//!
//! All arguments are joined with single spaces into one script; with no
//! arguments the whole of stdin is the script. The script is a list of steps
//! separated by `;`, each a word followed by its arguments, run in order:
//!
//! `print TEXT`, `eprint TEXT`, `lines N TEXT`, `sleep MS`, `write PATH TEXT`,
//! `pidfile PATH`, `ignore-term`, `grandchild PATH MS`, `escape PATH MS` (a grandchild in
//! a process group of its own), `flood BYTES`,
//! `hold MB`, `exit N`, `signal NAME`, `echo-stdin`, `env NAME`, `cwd`,
//! `await PATH` (wait until PATH exists), `rendezvous DIR N` (leave a file in DIR, then
//! wait until DIR holds N files: N agents running at once). Waits fail after 120 s.
//!
//! `first-run PATH` splits the script: when PATH does not exist, it is created and
//! the steps up to `else` run; when it exists, the steps after `else` run. Tests use it
//! for an agent that behaves differently when a task runs again (rate limits).
//!
//! An unknown step or a bad number prints `fake-agent: ...` to stderr and
//! exits 64; after the last step it exits 0.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn fail(msg: &str) -> ! {
    let _ = std::io::stdout().flush();
    eprintln!("fake-agent: {msg}");
    std::process::exit(64);
}

fn num<T: std::str::FromStr>(s: &str, step: &str) -> T {
    s.trim()
        .parse()
        .unwrap_or_else(|_| fail(&format!("unknown step: {step} (bad number {s:?})")))
}

/// Splits `s` into its first word and the (trimmed) rest.
fn split_word(s: &str) -> (&str, &str) {
    match s.split_once(char::is_whitespace) {
        Some((w, rest)) => (w, rest.trim()),
        None => (s, ""),
    }
}

fn signal_number(name: &str) -> Option<libc::c_int> {
    Some(match name.trim_start_matches("SIG") {
        "TERM" => libc::SIGTERM,
        "KILL" => libc::SIGKILL,
        "INT" => libc::SIGINT,
        "SEGV" => libc::SIGSEGV,
        "ABRT" => libc::SIGABRT,
        "HUP" => libc::SIGHUP,
        "USR1" => libc::SIGUSR1,
        _ => return None,
    })
}

fn write_pidfile(path: &str) -> std::io::Result<()> {
    // SAFETY: getpid and getpgrp cannot fail and have no preconditions.
    let (pid, pgid) = unsafe { (libc::getpid(), libc::getpgrp()) };
    let tmp = format!("{path}.tmp");
    std::fs::write(&tmp, format!("{pid} {pgid}\n"))?;
    std::fs::rename(&tmp, path)
}

/// Waits for `cond`, checking every 5 ms; fails the agent after 120 s.
fn wait_for(step: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !cond() {
        if Instant::now() > deadline {
            fail(&format!("{step}: still waiting after 120 s"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn run_step(step: &str, held: &mut Vec<Vec<u8>>) -> std::io::Result<()> {
    let (word, rest) = split_word(step);
    let mut out = std::io::stdout().lock();
    match word {
        "print" => {
            writeln!(out, "{rest}")?;
            out.flush()?;
        }
        "eprint" => {
            let mut err = std::io::stderr().lock();
            writeln!(err, "{rest}")?;
            err.flush()?;
        }
        "lines" => {
            let (n, text) = split_word(rest);
            for i in 1..=num::<u64>(n, step) {
                writeln!(out, "{text} {i}")?;
            }
            out.flush()?;
        }
        "sleep" => std::thread::sleep(Duration::from_millis(num(rest, step))),
        "write" => {
            let (path, text) = split_word(rest);
            if path.is_empty() {
                fail(&format!("unknown step: {step} (missing path)"));
            }
            std::fs::write(path, text)?;
        }
        "pidfile" => write_pidfile(rest)?,
        // Blocks until the file exists: the test, not a guessed time, says when to go on.
        "waitfile" => {
            while !Path::new(rest).exists() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        // SAFETY: setting a signal disposition to SIG_IGN is always sound.
        "ignore-term" => unsafe {
            libc::signal(libc::SIGTERM, libc::SIG_IGN);
        },
        // `escape` is a grandchild in a process group of its own: it escapes the stop of
        // the agent's group (and TERM to it) and outlives the run.
        "grandchild" | "escape" => {
            use std::os::unix::process::CommandExt;
            let (path, ms) = split_word(rest);
            let ms: u64 = num(ms, step);
            let mut grandchild = Command::new(std::env::current_exe()?);
            grandchild.stdin(Stdio::null());
            if word == "escape" {
                grandchild
                    .arg(format!("pidfile {path}; sleep {ms}"))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .process_group(0);
            } else {
                grandchild.arg(format!("pidfile {path}; ignore-term; sleep {ms}"));
            }
            // Deliberately neither waited for nor killed: it must outlive us.
            grandchild.spawn()?;
            let deadline = Instant::now() + Duration::from_secs(5);
            while !Path::new(path).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        "flood" => {
            let mut left: usize = num(rest, step);
            let line = [b"x".repeat(99), b"\n".to_vec()].concat();
            while left > 0 {
                // A short last line is the tail of a full one, so it keeps its "\n".
                let n = left.min(line.len());
                out.write_all(&line[line.len() - n..])?;
                left -= n;
            }
            out.flush()?;
        }
        "hold" => {
            let bytes = num::<usize>(rest, step).checked_mul(1 << 20);
            let bytes = bytes.unwrap_or_else(|| fail(&format!("unknown step: {step} (too big)")));
            let mut buf = vec![0u8; bytes];
            for i in (0..buf.len()).step_by(4096) {
                buf[i] = 1;
            }
            held.push(std::hint::black_box(buf));
        }
        "exit" => {
            out.flush()?;
            std::process::exit(num(rest, step));
        }
        "signal" => {
            let sig = signal_number(rest)
                .unwrap_or_else(|| fail(&format!("unknown step: {step} (bad signal)")));
            out.flush()?;
            // SAFETY: restoring the default disposition and raising a signal on
            // ourselves is sound; the process is meant to die here. The default
            // is restored for every signal, not just TERM (after `ignore-term`):
            // Rust's runtime has its own SIGSEGV handler that would swallow it.
            unsafe {
                if sig != libc::SIGKILL {
                    libc::signal(sig, libc::SIG_DFL);
                }
                libc::kill(libc::getpid(), sig);
            }
            // Give asynchronous delivery a moment, should it need one.
            std::thread::sleep(Duration::from_secs(5));
            fail(&format!("{step}: still alive after raising the signal"));
        }
        "echo-stdin" => {
            std::io::copy(&mut std::io::stdin().lock(), &mut out)?;
            out.flush()?;
        }
        "env" => {
            let value = std::env::var(rest).unwrap_or_else(|_| "<unset>".to_string());
            writeln!(out, "{rest}={value}")?;
            out.flush()?;
        }
        "await" => wait_for(step, || Path::new(rest).exists()),
        "rendezvous" => {
            let (dir, n) = split_word(rest);
            let n: usize = num(n, step);
            std::fs::write(Path::new(dir).join(std::process::id().to_string()), b"")?;
            wait_for(step, || {
                std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0) >= n
            });
        }
        "cwd" => {
            writeln!(out, "{}", std::env::current_dir()?.display())?;
            out.flush()?;
        }
        _ => fail(&format!("unknown step: {step}")),
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let script = if args.is_empty() {
        let mut s = String::new();
        if let Err(e) = std::io::stdin().read_to_string(&mut s) {
            fail(&format!("cannot read script from stdin: {e}"));
        }
        s
    } else {
        args.join(" ")
    };
    let mut held = Vec::new();
    let mut steps: Vec<&str> = script
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if let Some(marker) = steps.first().and_then(|s| s.strip_prefix("first-run ")) {
        let marker = Path::new(marker.trim());
        let first = !marker.exists();
        if first {
            std::fs::write(marker, b"").unwrap_or_else(|e| fail(&format!("first-run: {e}")));
        }
        let split = steps
            .iter()
            .position(|s| *s == "else")
            .unwrap_or(steps.len());
        steps = if first {
            steps[1..split].to_vec()
        } else {
            steps.get(split + 1..).unwrap_or(&[]).to_vec()
        };
    }
    for step in steps {
        if let Err(e) = run_step(step, &mut held) {
            fail(&format!("step {step:?} failed: {e}"));
        }
    }
    let _ = std::io::stdout().flush();
    drop(held);
}
