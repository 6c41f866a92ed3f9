//! The shim spawner: a small single-threaded process that forks shims *without exec*.
//! It is `beat-spawner`, a small program of its own that the daemon
//! starts ([`Spawner::exec`]), or, where that is not installed, a copy of the daemon
//! forked before it starts any thread ([`Spawner::start`]).
//!
//! Why: starting a shim by exec of the `beat` binary cost about 2 ms of CPU per task
//! (page faults, execve, the dynamic loader), and a fork of the multi-threaded daemon
//! another half millisecond; a trivial task needs neither. The spawner is
//! single-threaded and small, so its fork is cheap, and its child runs the shim's code
//! at once (it is the same program). Every guarantee of the exec'd shim stays: the shim
//! runs in a session of its own, outlives the daemon and the spawner, and starts with
//! TERM and INT blocked until its handler is in place.
//!
//! A run's shim is forked ahead of its request, and serves more than one run: the
//! spawner keeps *waiting shims*, children that have done everything a shim does before
//! it knows its run (the fork, its session, its descriptors) and wait for a request on a
//! socket of their own. A request goes to the shim freed last, with a new channel for the
//! run; when no shim waits, the next one is forked after the reply, so the fork and its
//! page faults are off the path from a commit to the agent's start. Once the daemon has
//! journaled a run's result (`FINISHED`), its shim says it is free and waits again,
//! unless something of the run is left (a process that escaped the agent's group), it has
//! served `RUNS_MAX` runs, or its peak memory passed `PEAK_RSS_MAX_KB`: then it exits, as
//! every shim did before. A fork and an exit per run were most of what a shim cost a
//! trivial task. At most `IDLE_MAX` shims wait; one freed beyond that exits. A shim is
//! still one run's only supervisor while that run lasts, and a run is cancelled on its
//! own channel, never by the shim's PID (see `channel`). When no shim waits (the fork
//! failed) or the request is too large for its socket, the spawner forks a shim for the
//! request alone.
//!
//! Owns: one `SOCK_SEQPACKET` socket pair between the daemon and the spawner; the
//! spawner's children until they exit (it reaps them); each shim's request socket.
//! For each run it makes one more socket pair, the run's channel (see `channel`): the
//! shim gets one end with the request, and the daemon gets the other (over
//! `SCM_RIGHTS`) with the shim's PID and start time. The channel closes when the shim is
//! done with the run, so the daemon learns of that without being its parent.
//! Must never: run in a process that has more than one thread when it forks (only
//! [`Spawner::start`] forks from the daemon, and it must be called first), keep any
//! descriptor of the daemon's open in a shim (the daemon's lock above all), let a shim
//! keep another shim's socket (that shim would not see the spawner go), exec a shim, or
//! hand a run to a shim before the last run it supervised is journaled.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::sys::socket::MsgFlags;

use super::channel::{
    recv_now, recv_with_descriptor, send_packet, send_with_descriptor, seqpacket_pair,
};
use super::run_dir::process_start_time;

/// The entry point of a shim: runs it for a run folder, its spec (JSON) and its end of
/// the run's channel, and says whether the process may supervise another run.
pub type ShimMain = fn(&Path, &[u8], ShimChannel) -> ShimEnd;

/// How a run ended for the process that supervised it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShimEnd {
    /// The daemon journaled the result, and nothing of the run is left (no process, no
    /// descriptor, no lock): the process may supervise another run.
    Free,
    /// The process must exit with this code.
    Exit(i32),
}

impl ShimEnd {
    /// The exit code of a process that supervises no other run.
    pub fn code(self) -> i32 {
        match self {
            ShimEnd::Free => 0,
            ShimEnd::Exit(code) => code,
        }
    }
}

/// A forked shim's link to the daemon (see `channel`).
#[derive(Debug)]
pub struct ShimChannel {
    pub channel: OwnedFd,
    /// The handover lock, held shared until the start is journaled.
    pub handover_lock: PathBuf,
}

/// A shim forked by the spawner.
#[derive(Debug)]
pub struct SpawnedShim {
    pub pid: u32,
    pub start_time: u64,
    /// The daemon's end of the run's channel; it reads end-of-file once the shim exits.
    pub channel: OwnedFd,
}

/// The daemon's end of the spawner. Cheap to share: requests are serialized by a lock
/// (each takes a few syscalls on both sides).
#[derive(Debug)]
pub struct Spawner {
    socket: Mutex<OwnedFd>,
}

/// Largest request: a run path and the agent's environment. Environments are far
/// smaller; a larger one is refused with a clear error rather than cut.
const MAX_REQUEST: usize = 1 << 20;

impl Spawner {
    /// Forks the spawner process.
    ///
    /// # Safety
    /// The calling process must have exactly one thread: the spawner child continues
    /// with a copy of this process, and any lock another thread held would stay held.
    /// Shims write their own diagnostics (rare) to `log`, opened for appending, rather
    /// than to a file of their own: one file fewer to create per run.
    pub unsafe fn start(
        shim_main: ShimMain,
        log: &Path,
        handover_lock: &Path,
    ) -> std::io::Result<Spawner> {
        let log = std::ffi::CString::new(log.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::other("the log path holds a NUL byte"))?;
        let (daemon_end, spawner_end) = daemon_socket()?;
        // SAFETY: the caller guarantees one thread; the child only runs `serve`.
        match unsafe { libc::fork() } {
            -1 => Err(std::io::Error::last_os_error()),
            0 => {
                drop(daemon_end);
                let code = serve(spawner_end, shim_main, &log, handover_lock);
                // SAFETY: leaving the spawner without running the daemon's exit handlers.
                unsafe { libc::_exit(code) }
            }
            _pid => {
                drop(spawner_end);
                Ok(Spawner {
                    socket: Mutex::new(daemon_end),
                })
            }
        }
    }

    /// Starts the spawner as a program of its own (`beat-spawner`, a small binary with
    /// the shim's code and little else): its shims then inherit a small address space,
    /// whose page faults and teardown cost a fraction of a copy of the daemon's. The
    /// program gets its end of the socket as descriptor 3, and `version`, `log` and
    /// `handover_lock` as its arguments. It answers `READY` once it serves, and only if
    /// its build is `version` (a `beat-spawner` left from another build would not speak
    /// this daemon's protocol): else this fails, and nothing of it is left. Creates no
    /// thread before it has succeeded, so the caller may still fork (`start`) after a
    /// failure.
    pub fn exec(
        program: &Path,
        version: &str,
        log: &Path,
        handover_lock: &Path,
    ) -> std::io::Result<Spawner> {
        use std::os::unix::process::CommandExt;
        let (daemon_end, spawner_end) = daemon_socket()?;
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let raw = spawner_end.as_raw_fd();
        let mut command = std::process::Command::new(program);
        command
            .arg(version)
            .arg(log)
            .arg(handover_lock)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(stderr);
        // SAFETY: dup2 is async-signal-safe; the copy at 3 has no close-on-exec flag.
        unsafe {
            command.pre_exec(move || {
                // dup2 onto itself would keep the close-on-exec flag: clear it either way.
                if (raw != SPAWNER_FD && libc::dup2(raw, SPAWNER_FD) < 0)
                    || libc::fcntl(SPAWNER_FD, libc::F_SETFD, 0) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn()?;
        drop(spawner_end);
        if let Err(e) = await_ready(&daemon_end) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        // Reaped when it exits (when the daemon's end closes).
        std::thread::Builder::new()
            .name("spawner-reaper".into())
            .spawn(move || child.wait())?;
        Ok(Spawner {
            socket: Mutex::new(daemon_end),
        })
    }

    /// Forks a shim for `run_path` with its `spec` (JSON) and an environment that is
    /// exactly `env`; its stderr goes to the daemon's log. An error of kind
    /// `NotConnected` means that the request never reached the spawner, so no shim was
    /// forked.
    pub fn spawn_shim(
        &self,
        run_path: &Path,
        spec: &[u8],
        env: &[(OsString, OsString)],
    ) -> std::io::Result<SpawnedShim> {
        let request = encode_request(run_path, spec, env);
        if request.len() > MAX_REQUEST {
            return Err(std::io::Error::other(format!(
                "the agent's environment is {} bytes, more than the {MAX_REQUEST} a run may have: remove large variables from the daemon's environment",
                request.len()
            )));
        }
        let socket = self
            .socket
            .lock()
            .map_err(|_| std::io::Error::other("the spawner's lock was poisoned"))?;
        let fd = socket.as_raw_fd();
        send_with_descriptor(fd, &request, None, MsgFlags::empty()).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                format!("the shim spawner is gone: {e}"),
            )
        })?;
        let mut reply = [0u8; 16];
        let (bytes, channel) = recv_with_descriptor(fd, &mut reply)?;
        drop(socket);
        if bytes == 0 {
            return Err(std::io::Error::other(
                "the shim spawner has exited: restart the daemon (beat daemon stop)",
            ));
        }
        let pid = i32::from_ne_bytes(reply[0..4].try_into().unwrap_or_default());
        let errno = i32::from_ne_bytes(reply[4..8].try_into().unwrap_or_default());
        let start_time = u64::from_ne_bytes(reply[8..16].try_into().unwrap_or_default());
        if errno != 0 || pid <= 0 {
            return Err(std::io::Error::from_raw_os_error(errno.max(1)));
        }
        let channel =
            channel.ok_or_else(|| std::io::Error::other("the spawner sent no channel"))?;
        Ok(SpawnedShim {
            pid: pid as u32,
            start_time,
            channel,
        })
    }
}

/// Where `beat-spawner` finds its end of the socket.
pub const SPAWNER_FD: RawFd = 3;

/// What `beat-spawner` sends first, once it serves.
const READY: &[u8] = b"ready";

/// How long a starting `beat-spawner` may take to say it is ready.
const READY_WITHIN_MS: libc::c_int = 5_000;

/// Waits for the started program's `READY`.
fn await_ready(socket: &OwnedFd) -> std::io::Result<()> {
    let mut pfd = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd we own.
    if unsafe { libc::poll(&mut pfd, 1, READY_WITHIN_MS) } <= 0 {
        return Err(std::io::Error::other(
            "beat-spawner did not answer within 5 s",
        ));
    }
    let mut hello = [0u8; 16];
    // SAFETY: recv(2) into a buffer we own.
    let n = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            hello.as_mut_ptr().cast(),
            hello.len(),
            0,
        )
    };
    if n > 0 && &hello[..n as usize] == READY {
        Ok(())
    } else {
        Err(std::io::Error::other(
            "beat-spawner exited at start (another build than this beat's? its reason is in the daemon's log)",
        ))
    }
}

/// The daemon's socket to its spawner, with room for the largest request both ways.
fn daemon_socket() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (daemon_end, spawner_end) = seqpacket_pair()?;
    for fd in [&daemon_end, &spawner_end] {
        let size: libc::c_int = (MAX_REQUEST as libc::c_int) + 4096;
        // SAFETY: setsockopt on a descriptor we own, with a correctly sized value.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    Ok((daemon_end, spawner_end))
}

/// The main of `beat-spawner`: says `READY` on descriptor `SPAWNER_FD`, then serves
/// the daemon there until the daemon's end closes; returns the exit code.
pub fn serve_program(shim_main: ShimMain, log: &Path, handover_lock: &Path) -> i32 {
    let Ok(log) = std::ffi::CString::new(log.as_os_str().as_bytes()) else {
        return 2;
    };
    // SAFETY: the daemon gave us this descriptor at exec; nothing else owns it.
    let socket = unsafe { OwnedFd::from_raw_fd(SPAWNER_FD) };
    if send_with_descriptor(socket.as_raw_fd(), READY, None, MsgFlags::empty()).is_err() {
        return 1;
    }
    serve(socket, shim_main, &log, handover_lock)
}

/// `run_path NUL spec NUL (key=value NUL)*` (the spec is JSON: it holds no NUL).
fn encode_request(run_path: &Path, spec: &[u8], env: &[(OsString, OsString)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + spec.len() + env.len() * 64);
    out.extend_from_slice(run_path.as_os_str().as_bytes());
    out.push(0);
    out.extend_from_slice(spec);
    out.push(0);
    for (k, v) in env {
        out.extend_from_slice(k.as_bytes());
        out.push(b'=');
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// A decoded request: run folder, spec, environment.
type Request<'a> = (PathBuf, &'a [u8], Vec<(OsString, OsString)>);

/// Whether `decode_request` would decode `bytes` (a run path and a spec, each ended by
/// a NUL), told without building anything: what the spawner checks before it hands a
/// request to a waiting shim, which decodes it itself.
fn is_request(bytes: &[u8]) -> bool {
    bytes.split(|b| *b == 0).nth(1).is_some()
}

fn decode_request(bytes: &[u8]) -> Option<Request<'_>> {
    let mut parts = bytes.split(|b| *b == 0);
    let run = PathBuf::from(OsStr::from_bytes(parts.next()?));
    let spec = parts.next()?;
    let env = parts
        .filter(|p| !p.is_empty())
        .filter_map(|p| {
            let eq = p.iter().position(|b| *b == b'=')?;
            Some((
                OsString::from_vec(p[..eq].to_vec()),
                OsString::from_vec(p[eq + 1..].to_vec()),
            ))
        })
        .collect();
    Some((run, spec, env))
}

extern "C" fn on_sigchld(_: libc::c_int) {}

/// The spawner's loop: one request, one shim (one that waits, or a fork), one reply;
/// takes back shims that are free again, and reaps those that exited.
fn serve(socket: OwnedFd, shim_main: ShimMain, log: &std::ffi::CStr, handover: &Path) -> i32 {
    let fd = socket.as_raw_fd();
    // SAFETY: single-threaded; we close what the daemon had open (its lock above all, so
    // that neither the spawner nor a shim keeps the daemon's flock), and take a SIGCHLD
    // handler that does nothing but interrupt `poll`, so exited shims are reaped at once.
    unsafe {
        close_all_but(&[0, 1, 2, fd]);
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigchld as *const () as usize;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGCHLD, &action, std::ptr::null_mut());
        // The daemon's Ctrl-C or TERM is the daemon's to handle; the spawner ends when
        // the daemon's end of the socket closes. Blocked, not ignored: a child inherits
        // the mask, and a signal sent to an ignored signal is discarded even while
        // blocked, so a cancel sent to a shim that has not yet installed its handler
        // would be lost.
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::signal(sig, libc::SIG_DFL);
            libc::sigaddset(&mut set, sig);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        libc::prctl(libc::PR_SET_NAME, c"beat-spawner".as_ptr(), 0, 0, 0);
    }
    // Opened once, not per shim (two path lookups fewer per run); close-on-exec, so an
    // agent inherits neither. A shim's 0 and 1 are /dev/null and its 2 the log.
    let shims = ShimSetup {
        socket: fd,
        main: shim_main,
        null: open_cloexec(c"/dev/null", libc::O_RDWR),
        log: open_cloexec(log, libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND),
        handover: handover.to_path_buf(),
    };
    let mut buf = vec![0u8; MAX_REQUEST + 1];
    // Shims waiting for a run, the last one freed on top (its pages are the warmest),
    // and shims supervising one, whose sockets say when they are free again.
    let mut idle: Vec<Shim> = Vec::new();
    let mut busy: Vec<Shim> = Vec::new();
    let mut polled: Vec<libc::pollfd> = Vec::new();
    loop {
        reap();
        if idle.is_empty() {
            // After the last reply, while the daemon and the last run go on.
            let others = feeds(&idle, &busy);
            idle.extend(Shim::fork(&shims, &mut buf, &others));
        }
        polled.clear();
        polled.extend(
            std::iter::once(fd)
                .chain(busy.iter().map(|s| s.feed.as_raw_fd()))
                .map(|fd| libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                }),
        );
        // SAFETY: pollfds we own, as many as we pass.
        let ready = unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, -1) };
        if ready < 0 {
            continue; // EINTR from SIGCHLD: reap and wait again
        }
        // From the end, so that `swap_remove` moves only shims already looked at.
        for i in (0..busy.len()).rev() {
            if polled[i + 1].revents == 0 {
                continue;
            }
            match busy[i].hear() {
                Heard::Free if idle.len() < IDLE_MAX => idle.push(busy.swap_remove(i)),
                // Enough wait already: this one's socket closes, and it exits.
                Heard::Free | Heard::Gone => drop(busy.swap_remove(i)),
                Heard::Nothing => {}
            }
        }
        if polled[0].revents == 0 {
            continue;
        }
        // SAFETY: reading into a buffer we own.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n == 0 {
            return 0; // the daemon is gone (and, with this end, every idle shim)
        }
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return 1;
        }
        let request = &buf[..n as usize];
        let mut taken = None;
        if request.len() <= SHIM_REQUEST_MAX
            && is_request(request)
            && let Ok((daemon_end, shim_end)) = seqpacket_pair()
        {
            // A shim that is gone (killed) is dropped, and the next one asked.
            while let Some(shim) = idle.pop() {
                if shim.take_run(request, &shim_end) {
                    taken = Some((shim.pid, shim.start_time, daemon_end));
                    busy.push(shim);
                    break;
                }
            }
        }
        let (pid, errno, start_time, channel) = match taken {
            Some((pid, start_time, channel)) => (pid, 0, start_time, Some(channel)),
            // A request too large for a waiting shim's socket, or no shim waiting (the
            // fork failed): a shim of its own for this run.
            None => match decode_request(request) {
                Some((run, spec, env)) => fork_shim(&shims, &run, spec, &env, &feeds(&idle, &busy)),
                None => (-1, libc::EINVAL, 0, None),
            },
        };
        let mut reply = [0u8; 16];
        reply[0..4].copy_from_slice(&pid.to_ne_bytes());
        reply[4..8].copy_from_slice(&errno.to_ne_bytes());
        reply[8..16].copy_from_slice(&start_time.to_ne_bytes());
        if send_with_descriptor(fd, &reply, channel.as_ref(), MsgFlags::empty()).is_err() {
            return 1;
        }
    }
}

/// The spawner's ends of its shims' sockets: what a new child must close.
fn feeds(idle: &[Shim], busy: &[Shim]) -> Vec<RawFd> {
    idle.iter()
        .chain(busy)
        .map(|s| s.feed.as_raw_fd())
        .collect()
}

fn reap() {
    loop {
        let mut status = 0;
        // SAFETY: reaping our own children.
        let r = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if r <= 0 {
            return;
        }
    }
}

/// What the spawner gives every shim: its standard descriptors (opened once), its
/// entry point and the handover lock; and the daemon's socket, which a shim must not keep.
struct ShimSetup {
    socket: RawFd,
    main: ShimMain,
    null: Option<OwnedFd>,
    log: Option<OwnedFd>,
    handover: PathBuf,
}

/// The largest request handed to a waiting shim: far below a socket's default buffer,
/// so its one send never fails for want of room. Larger ones (an environment of more
/// than 64 KiB) are served by a fork.
const SHIM_REQUEST_MAX: usize = 64 * 1024;

/// The most shims kept waiting; one freed beyond that exits. Enough for the runs of a
/// usual `maxWorkers` to follow each other without a fork.
pub const IDLE_MAX: usize = 8;

/// The most runs one process supervises before it exits rather than wait for another:
/// whatever a run leaves behind in the process is bounded.
const RUNS_MAX: u32 = 1000;

/// The peak resident memory past which a shim exits after its run rather than wait for
/// another (a heap grown for a large transcript, say, is not kept by a waiting shim).
const PEAK_RSS_MAX_KB: i64 = 16 * 1024;

/// Shim to spawner, on its own socket: the run is over and journaled, and it waits for
/// the next one.
const FREE: u8 = b'I';

/// A child of the spawner that supervises runs, one at a time: forked ahead of its first
/// request, and waiting again after each run whose result the daemon journaled.
struct Shim {
    pid: i32,
    start_time: u64,
    /// The spawner's end of the shim's socket: requests go out on it, each with the
    /// shim's end of the run's channel, and `FREE` comes back. Closed, a waiting shim
    /// exits.
    feed: OwnedFd,
}

/// What a busy shim said.
enum Heard {
    Free,
    /// Exited (or was killed): its socket is closed.
    Gone,
    Nothing,
}

impl Shim {
    /// Forks a shim that waits for its first run. `buf` is the spawner's request
    /// buffer: the child reads its requests into its own copy of it (no allocation of
    /// its own). `others` are the spawner's ends of the other shims' sockets, which the
    /// child closes (holding one, it would keep that shim from seeing the spawner go).
    /// `None` if the fork failed: requests are then served by a fork each.
    fn fork(shims: &ShimSetup, buf: &mut [u8], others: &[RawFd]) -> Option<Shim> {
        let (feed, shim_end) = seqpacket_pair().ok()?;
        let spawner_end = feed.as_raw_fd();
        let (pid, start_time) = fork_child(shims, c"beat-standby", others, move || {
            // SAFETY: this child's copy of the spawner's end; nothing else uses it.
            unsafe { libc::close(spawner_end) };
            serve_runs(shims, &shim_end, buf)
        })
        .ok()?;
        Some(Shim {
            pid,
            start_time,
            feed,
        })
    }

    /// Hands `request` to the shim with its end of the run's channel (the shim gets a
    /// copy); `false` if the shim is gone (then nothing runs it).
    fn take_run(&self, request: &[u8], shim_end: &OwnedFd) -> bool {
        let sent = send_with_descriptor(
            self.feed.as_raw_fd(),
            request,
            Some(shim_end),
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
        );
        sent.is_ok_and(|n| n == request.len())
    }

    /// Reads what a busy shim said, without blocking.
    fn hear(&self) -> Heard {
        let mut byte = [0u8; 1];
        match recv_now(self.feed.as_raw_fd(), &mut byte) {
            Ok(0) => Heard::Gone,
            Ok(_) if byte[0] == FREE => Heard::Free,
            Ok(_) => Heard::Nothing,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Heard::Nothing,
            Err(_) => Heard::Gone,
        }
    }
}

/// In a shim: waits for a run on `feed`, supervises it, and again after each run that
/// left it free, up to `RUNS_MAX`; returns the exit code. Waiting, the shim takes TERM
/// and INT as any process does (they end it): no run is its to stop then.
fn serve_runs(shims: &ShimSetup, feed: &OwnedFd, buf: &mut [u8]) -> i32 {
    for runs in 1..=RUNS_MAX {
        let Some((n, channel)) = wait_for_run(feed, buf) else {
            return 0; // the spawner is gone: no run is ours
        };
        let Some((run, spec, env)) = decode_request(&buf[..n]) else {
            return 2; // the spawner checked it before handing it over
        };
        // SAFETY: naming this process.
        unsafe { libc::prctl(libc::PR_SET_NAME, c"beat-shim".as_ptr(), 0, 0, 0) };
        let end = become_shim(shims, &run, spec, &env, channel);
        if end != ShimEnd::Free || runs == RUNS_MAX || peak_rss_kb() > PEAK_RSS_MAX_KB {
            return end.code();
        }
        // SAFETY: naming this process.
        unsafe { libc::prctl(libc::PR_SET_NAME, c"beat-standby".as_ptr(), 0, 0, 0) };
        if !send_packet(feed.as_raw_fd(), &[FREE]) {
            return 0; // the spawner is gone
        }
    }
    0
}

/// Waits for a request on `feed` and reads it into `buf`: its length and the run's
/// channel. `None` when the spawner's end is closed. TERM and INT are let through while
/// it waits (their default action ends the process); they stay blocked otherwise.
fn wait_for_run(feed: &OwnedFd, buf: &mut [u8]) -> Option<(usize, OwnedFd)> {
    // SAFETY: building a signal set we own.
    let unblocked = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigprocmask(libc::SIG_SETMASK, std::ptr::null(), &mut set);
        libc::sigdelset(&mut set, libc::SIGTERM);
        libc::sigdelset(&mut set, libc::SIGINT);
        set
    };
    loop {
        let mut pfd = libc::pollfd {
            fd: feed.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd we own, and a mask for the wait only.
        let ready = unsafe { libc::ppoll(&mut pfd, 1, std::ptr::null(), &unblocked) };
        if ready < 0 {
            continue; // EINTR
        }
        return match recv_with_descriptor(feed.as_raw_fd(), buf) {
            Ok((n, Some(channel))) if n > 0 => Some((n, channel)),
            _ => None,
        };
    }
}

/// This process's peak resident memory, in KiB.
fn peak_rss_kb() -> i64 {
    // SAFETY: getrusage(2) into a struct we own.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage.ru_maxrss
    }
}

/// Forks one shim for a request. Returns (pid, errno, start time, the daemon's end of
/// the run's channel) for the reply.
fn fork_shim(
    shims: &ShimSetup,
    run: &Path,
    spec: &[u8],
    env: &[(OsString, OsString)],
    others: &[RawFd],
) -> (i32, i32, u64, Option<OwnedFd>) {
    let (daemon_end, shim_end) = match seqpacket_pair() {
        Ok(pair) => pair,
        Err(e) => return (-1, e.raw_os_error().unwrap_or(libc::EIO), 0, None),
    };
    let spawner_end = daemon_end.as_raw_fd();
    match fork_child(shims, c"beat-shim", others, move || {
        // SAFETY: this child's copy of the spawner's end; nothing else uses it.
        unsafe { libc::close(spawner_end) };
        become_shim(shims, run, spec, env, shim_end).code()
    }) {
        Ok((pid, start_time)) => (pid, 0, start_time, Some(daemon_end)),
        Err(e) => (-1, e.raw_os_error().unwrap_or(libc::EIO), 0, None),
    }
}

/// Forks a child of the spawner, set up as every shim is, named `name`, that runs
/// `child` and exits with its code. Returns the child's PID and start time. `child`
/// runs only in the child; here it is dropped unrun, which closes what it owns (the
/// child's ends of its sockets) in the spawner.
fn fork_child(
    shims: &ShimSetup,
    name: &std::ffi::CStr,
    others: &[RawFd],
    child: impl FnOnce() -> i32,
) -> std::io::Result<(i32, u64)> {
    let forking_at = boot_ticks();
    // SAFETY: the spawner is single-threaded; the child runs `child` and never returns.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: in the new child, single-threaded. A session of its own, so nothing
        // that signals the daemon's group reaches it; TERM and INT blocked until the
        // shim's handler is in place (it unblocks them), so an immediate cancel is
        // delayed, never lost (the spawner keeps them blocked with default dispositions,
        // so one sent before this point is pending, not discarded).
        unsafe {
            libc::close(shims.socket);
            for &fd in others {
                libc::close(fd);
            }
            libc::setsid();
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            libc::signal(libc::SIGCHLD, libc::SIG_DFL);
            // dup2 clears close-on-exec on the copies, which are the shim's own.
            if let Some(null) = &shims.null {
                libc::dup2(null.as_raw_fd(), 0);
                libc::dup2(null.as_raw_fd(), 1);
            }
            if let Some(log) = &shims.log {
                libc::dup2(log.as_raw_fd(), 2);
            }
            libc::prctl(libc::PR_SET_NAME, name.as_ptr(), 0, 0, 0);
        }
        let code = child();
        // SAFETY: the shim is done; leave without the spawner's exit handlers.
        unsafe { libc::_exit(code) }
    }
    let start_time = match (forking_at, boot_ticks()) {
        // The kernel took the child's start time between the two readings of the same
        // clock, in the same ticks: when both fall in one tick, that tick is it.
        (Some(before), Some(after)) if before == after => before,
        // The child cannot be reaped before this read (we reap only in `reap`), so
        // /proc shows it, at worst as a zombie.
        _ => process_start_time(pid as u32).unwrap_or(0),
    };
    Ok((pid, start_time))
}

/// In a forked child named `beat-shim`: takes the run's environment and runs the shim;
/// returns its code.
fn become_shim(
    shims: &ShimSetup,
    run: &Path,
    spec: &[u8],
    env: &[(OsString, OsString)],
    channel: OwnedFd,
) -> ShimEnd {
    // SAFETY: single-threaded child. The environment is replaced wholesale, as
    // `env_clear().envs(..)` did: one array built here, where a `setenv` per variable
    // scans the whole environment each time (quadratic, for the 40 to 100 of an agent).
    unsafe { replace_environment(env) };
    let channel = ShimChannel {
        channel,
        handover_lock: shims.handover.clone(),
    };
    (shims.main)(run, spec, channel)
}

fn open_cloexec(path: &std::ffi::CStr, flags: libc::c_int) -> Option<OwnedFd> {
    // SAFETY: open(2) of a C string; the descriptor is ours.
    let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC, 0o600) };
    // SAFETY: a new descriptor the kernel gave us.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Now on the clock a process's start time is kept in (`/proc/<pid>/stat` field 22:
/// boot time, in clock ticks).
fn boot_ticks() -> Option<u64> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime(2) and sysconf(3) write nothing but the timespec we own.
    let (read, hz) = unsafe {
        (
            libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now),
            libc::sysconf(libc::_SC_CLK_TCK),
        )
    };
    if read != 0 || hz <= 0 {
        return None;
    }
    let ns = now.tv_sec as u128 * 1_000_000_000 + now.tv_nsec as u128;
    Some((ns / (1_000_000_000 / hz as u128)) as u64)
}

/// Makes `env` the process's whole environment. Variables whose name or value holds a
/// NUL byte (which no environment can carry) are left out.
///
/// # Safety
/// Only in a single-threaded process: nothing may read the environment meanwhile, nor
/// keep a pointer into the one it replaces (freed here, when this process set it: a shim
/// sets one per run).
unsafe fn replace_environment(env: &[(OsString, OsString)]) {
    use std::os::unix::ffi::OsStrExt;
    unsafe extern "C" {
        static mut environ: *const *const libc::c_char;
    }
    let entries: Vec<std::ffi::CString> = env
        .iter()
        .filter_map(|(k, v)| {
            let mut entry = Vec::with_capacity(k.len() + v.len() + 1);
            entry.extend_from_slice(k.as_bytes());
            entry.push(b'=');
            entry.extend_from_slice(v.as_bytes());
            std::ffi::CString::new(entry).ok()
        })
        .collect();
    let mut pointers: Vec<*const libc::c_char> = entries.iter().map(|e| e.as_ptr()).collect();
    pointers.push(std::ptr::null());
    // SAFETY: a NUL-terminated array of NUL-terminated strings, kept until the next
    // call; per the function's contract no other thread reads `environ`.
    unsafe {
        environ = pointers.as_ptr();
    }
    SET_ENVIRONMENT.with_borrow_mut(|set| *set = Some((entries, pointers)));
}

thread_local! {
    /// The environment `replace_environment` set last, which `environ` points into.
    #[allow(clippy::type_complexity)]
    static SET_ENVIRONMENT: std::cell::RefCell<Option<(Vec<std::ffi::CString>, Vec<*const libc::c_char>)>> =
        const { std::cell::RefCell::new(None) };
}

/// Closes every descriptor but `keep`.
///
/// # Safety
/// Only in a single-threaded process that owns no `OwnedFd` among those closed.
unsafe fn close_all_but(keep: &[RawFd]) {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<RawFd> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in fds {
        if !keep.contains(&fd) {
            // SAFETY: per the function's contract.
            unsafe {
                libc::close(fd);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_time_read_from_the_boot_clock_is_the_one_proc_shows() {
        // Many forks, so that some straddle a tick (those read /proc, like before).
        let mut compared = 0;
        for _ in 0..200 {
            let before = boot_ticks().unwrap();
            // SAFETY: the child only calls _exit.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                unsafe { libc::_exit(0) }
            }
            let after = boot_ticks().unwrap();
            let shown = process_start_time(pid as u32).unwrap();
            // SAFETY: reaping our own child.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
            assert!(
                before <= shown && shown <= after,
                "{before} <= {shown} <= {after}"
            );
            if before == after {
                assert_eq!(shown, before);
                compared += 1;
            }
        }
        assert!(compared > 0, "no fork fell within one tick");
    }

    #[test]
    fn what_is_handed_to_a_waiting_shim_unread_is_what_a_fork_would_decode() {
        for bytes in [
            &b""[..],
            b"run",
            b"run\0",
            b"\0",
            b"run\0{}",
            b"run\0{}\0A=1\0",
        ] {
            assert_eq!(
                is_request(bytes),
                decode_request(bytes).is_some(),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn a_request_round_trips_with_odd_bytes_in_values() {
        let env = vec![
            (OsString::from("A"), OsString::from("1=2=3")),
            (OsString::from("EMPTY"), OsString::from("")),
            (
                OsString::from("BYTES"),
                OsString::from_vec(vec![0xff, b' ', b'x']),
            ),
        ];
        let bytes = encode_request(Path::new("/tmp/run dir"), br#"{"a":1}"#, &env);
        let (run, spec, back) = decode_request(&bytes).unwrap();
        assert_eq!(run, PathBuf::from("/tmp/run dir"));
        assert_eq!(spec, br#"{"a":1}"#);
        assert_eq!(back, env);
    }
}
