//! The channel between the daemon and a shim the spawner forked: a `SOCK_SEQPACKET`
//! socket pair, one message per packet.
//!
//! Why: a run whose result goes through the run folder costs a new inode (the folder),
//! two extended attributes (the shim's identity, the exit record) and a blocking read
//! in the daemon, more than a trivial agent itself. Over the channel, a run that prints
//! nothing touches no file at all, and every guarantee of the folder stays, because the
//! shim writes to the folder exactly when the daemon could lose what it sent:
//!
//! - the shim starts the agent at once, and holds a shared lock on the runs' *handover
//!   lock* until the daemon says the run's result is durable (`FINISHED`). If the channel
//!   closes first (the daemon died, or stopped), the shim records its identity on the
//!   run folder before it lets the lock go; the next daemon's recovery, which takes the
//!   lock exclusively before it reads anything, finds it, and adopts the run instead of
//!   running the agent twice if the crash left the task `queued` (a task journaled
//!   `running` is adopted by the PID and start time in the journal);
//! - at the end the shim sends its report (exit record and checkpoint tail) and waits
//!   for `FINISHED`. If the channel closes first, the shim writes the record to the run
//!   folder, where the next daemon (or this one, for a report it could not read) finds
//!   it.
//!
//! Nothing is said when the start is journaled: waking every shim for it would cost a
//! trivial run more than the identity a daemon's death makes each running shim write.
//!
//! A cancel goes the same way (`TERMINATE`), so that it reaches this run and no other:
//! once a run's result is journaled, its shim may go on to supervise another run.
//!
//! Owns: the wire format (the one-byte acknowledgement and cancel, the report as JSON), the
//! handover lock's path and its two sides, and `ExitAck`, the daemon's promise to
//! acknowledge a report once it is journaled (dropped unacknowledged, it closes the
//! channel, which makes the shim write the record to the folder).
//! Must never: block on the actix thread (every send here is non-blocking, and a full
//! socket is treated like a closed one), or let an acknowledgement precede its commit.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::checkpoint::RunTail;
use super::run_dir::ExitRecord;

/// Daemon to shim: the run's result is journaled; the shim may exit without writing it.
pub const FINISHED: u8 = b'F';

/// Daemon to shim: stop the agent (a user's cancel). Sent on the run's own channel, not
/// as a signal to the shim's PID: a shim may supervise a later run once this one is
/// journaled, and a signal sent late would reach that run.
pub const TERMINATE: u8 = b'T';

/// The largest report the daemon reads from the channel; a larger one (a huge list of
/// dirty files, say) makes the daemon close the channel, and the shim then writes the
/// record to the run folder, where the daemon reads it.
pub const MAX_REPORT: usize = 64 * 1024;

/// The lock every unacknowledged shim holds shared (see the module's docs).
pub const HANDOVER_LOCK: &str = ".handover.lock";

pub fn handover_lock(runs_root: &Path) -> PathBuf {
    runs_root.join(HANDOVER_LOCK)
}

/// Shim to daemon: how the run ended and what it left for the checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShimReport {
    pub exit: ExitRecord,
    pub tail: RunTail,
}

/// What a shim reads from its channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FromDaemon {
    Finished,
    Terminate,
    /// The daemon's end is closed: it died, or dropped the run.
    Gone,
    /// Nothing to read now.
    Nothing,
}

/// A `SOCK_SEQPACKET` socket pair, both ends close-on-exec: a run's channel (and the
/// daemon's socket to its spawner).
pub fn seqpacket_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(std::io::Error::from)
}

/// One packet received without blocking, into `buf`: its real length (larger than
/// `buf` when it was cut: `MSG_TRUNC`), 0 at end-of-file, or the error (`WouldBlock`
/// when there is none).
pub fn recv_now(channel: RawFd, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        // SAFETY: recv(2) into a buffer we own, of its length.
        let n = unsafe {
            libc::recv(
                channel,
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Sends `bytes` in one packet with `descriptor`, if any (`SCM_RIGHTS`); the number of
/// bytes sent. `flags` as for sendmsg(2).
pub fn send_with_descriptor(
    socket: RawFd,
    bytes: &[u8],
    descriptor: Option<&OwnedFd>,
    flags: nix::sys::socket::MsgFlags,
) -> std::io::Result<usize> {
    use nix::sys::socket::{ControlMessage, sendmsg};
    let fds: Vec<RawFd> = descriptor.iter().map(|d| d.as_raw_fd()).collect();
    let rights = [ControlMessage::ScmRights(&fds)];
    let cmsgs = if fds.is_empty() { &[][..] } else { &rights[..] };
    sendmsg::<()>(socket, &[std::io::IoSlice::new(bytes)], cmsgs, flags, None)
        .map_err(std::io::Error::from)
}

/// Receives one packet into `buf`, waiting for it, with the descriptor it carries if
/// any (`SCM_RIGHTS`, made close-on-exec); an interrupted wait is retried. A length of 0
/// is end-of-file.
pub fn recv_with_descriptor(
    socket: RawFd,
    buf: &mut [u8],
) -> std::io::Result<(usize, Option<OwnedFd>)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    loop {
        let mut iov = [std::io::IoSliceMut::new(buf)];
        let mut space = nix::cmsg_space!([RawFd; 1]);
        let msg = match recvmsg::<()>(
            socket,
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => msg,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        let mut descriptor = None;
        for cmsg in msg.cmsgs().map_err(std::io::Error::from)? {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                for raw in fds {
                    // SAFETY: the kernel just gave us this descriptor; we own it now.
                    descriptor.get_or_insert(unsafe { OwnedFd::from_raw_fd(raw) });
                }
            }
        }
        return Ok((msg.bytes, descriptor));
    }
}

/// Reads one message without blocking. A byte the protocol does not know counts as
/// `Nothing`: a newer daemon's message is not a reason to stop an agent.
pub fn read_from_daemon(channel: RawFd) -> FromDaemon {
    let mut byte = [0u8; 1];
    match recv_now(channel, &mut byte) {
        Ok(0) => FromDaemon::Gone,
        Ok(_) if byte[0] == FINISHED => FromDaemon::Finished,
        Ok(_) if byte[0] == TERMINATE => FromDaemon::Terminate,
        Ok(_) => FromDaemon::Nothing,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => FromDaemon::Nothing,
        Err(_) => FromDaemon::Gone,
    }
}

/// Sends one packet without blocking; `false` if it could not be sent whole (a closed
/// or full channel, a packet too large).
pub fn send_packet(channel: RawFd, bytes: &[u8]) -> bool {
    loop {
        // SAFETY: send(2) of a buffer we own; MSG_NOSIGNAL: a closed peer is an error,
        // not a SIGPIPE.
        let n = unsafe {
            libc::send(
                channel,
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n >= 0 {
            return n as usize == bytes.len();
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return false;
        }
    }
}

/// The daemon's promise to tell the shim once the run's result is journaled. Dropped
/// without `durable`, it closes the channel, and the shim writes the result to the run
/// folder instead.
#[derive(Debug)]
pub struct ExitAck(OwnedFd);

impl ExitAck {
    pub fn new(channel: OwnedFd) -> ExitAck {
        ExitAck(channel)
    }

    /// The result is journaled: the shim may exit without writing it. If the shim is
    /// already gone, nothing is lost (it wrote the folder).
    pub fn durable(self) {
        send_packet(self.0.as_raw_fd(), &[FINISHED]);
    }
}

/// The shim's side of the handover lock: held shared until the result is journaled (or
/// the shim's identity is on the run folder). `None` if the lock cannot be opened, in
/// which case the shim records its identity up front instead.
pub fn hold_handover(lock: &Path) -> Option<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(lock.as_os_str().as_bytes()).ok()?;
    // SAFETY: open(2) and flock(2) on a descriptor we then own.
    unsafe {
        let fd = libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_CREAT | libc::O_CLOEXEC,
            0o600,
        );
        if fd < 0 {
            return None;
        }
        let fd = OwnedFd::from_raw_fd(fd);
        while libc::flock(fd.as_raw_fd(), libc::LOCK_SH) != 0 {
            if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                return None;
            }
        }
        Some(fd)
    }
}

/// The recovering daemon's side: waits until every shim of an earlier daemon has either
/// heard that its result is durable or recorded its identity. Blocking. `false` if `limit` passed first (a shim stopped by a debugger,
/// say): recovery then goes on without it.
pub fn wait_for_handover(lock: &Path, limit: Duration) -> std::io::Result<bool> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(lock)?;
    // flock(2) has no timeout: it waits on a thread of its own, which lets the lock go
    // as soon as it has it, even after we stopped waiting.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let taken = loop {
            // SAFETY: flock(2) on a descriptor this thread owns.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                break Ok(());
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                break Err(e);
            }
        };
        drop(file);
        let _ = tx.send(taken);
    });
    match rx.recv_timeout(limit) {
        Ok(taken) => taken.map(|()| true),
        Err(_) => Ok(false),
    }
}

/// Reads one report from the daemon's end of a channel without blocking.
pub enum Received {
    Report(Box<ShimReport>),
    /// A packet that is not a report this daemon can read (too large, malformed).
    Unreadable(String),
    /// The shim's end is closed: it exited (having written the folder, or died).
    Closed,
    WouldBlock,
}

pub fn receive_report(channel: RawFd, buf: &mut [u8]) -> Received {
    match recv_now(channel, buf) {
        Ok(0) => Received::Closed,
        Ok(n) if n > buf.len() => Received::Unreadable(format!("a report of {n} bytes")),
        Ok(n) => match serde_json::from_slice(&buf[..n]) {
            Ok(report) => Received::Report(Box::new(report)),
            Err(e) => Received::Unreadable(e.to_string()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Received::WouldBlock,
        Err(_) => Received::Closed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> ShimReport {
        ShimReport {
            exit: ExitRecord {
                exit_code: Some(0),
                started_at: 1,
                ended_at: 2,
                max_rss_kb: 3,
                ..ExitRecord::default()
            },
            tail: RunTail {
                output_summary: "done".into(),
                ..RunTail::default()
            },
        }
    }

    #[test]
    fn a_report_crosses_the_channel_and_an_ack_comes_back() {
        let (daemon, shim) = seqpacket_pair().unwrap();
        let bytes = serde_json::to_vec(&report()).unwrap();
        assert!(send_packet(shim.as_raw_fd(), &bytes));
        let mut buf = vec![0u8; MAX_REPORT];
        match receive_report(daemon.as_raw_fd(), &mut buf) {
            Received::Report(r) => assert_eq!(*r, report()),
            _ => panic!("no report"),
        }
        assert!(matches!(
            receive_report(daemon.as_raw_fd(), &mut buf),
            Received::WouldBlock
        ));
        assert_eq!(read_from_daemon(shim.as_raw_fd()), FromDaemon::Nothing);
        ExitAck::new(daemon).durable();
        assert_eq!(read_from_daemon(shim.as_raw_fd()), FromDaemon::Finished);
        // The ack's end is closed once it is spent.
        assert_eq!(read_from_daemon(shim.as_raw_fd()), FromDaemon::Gone);
    }

    #[test]
    fn an_ack_dropped_unsent_reads_as_the_daemon_gone() {
        let (daemon, shim) = seqpacket_pair().unwrap();
        drop(ExitAck::new(daemon));
        assert_eq!(read_from_daemon(shim.as_raw_fd()), FromDaemon::Gone);
    }

    #[test]
    fn a_report_larger_than_the_buffer_is_unreadable_not_cut() {
        let (daemon, shim) = seqpacket_pair().unwrap();
        let mut big = report();
        big.tail.output_summary = "x".repeat(2000);
        assert!(send_packet(
            shim.as_raw_fd(),
            &serde_json::to_vec(&big).unwrap()
        ));
        let mut small = vec![0u8; 100];
        assert!(matches!(
            receive_report(daemon.as_raw_fd(), &mut small),
            Received::Unreadable(_)
        ));
        drop(shim);
        assert!(matches!(
            receive_report(daemon.as_raw_fd(), &mut small),
            Received::Closed
        ));
    }

    #[test]
    fn recovery_waits_for_a_shim_holding_the_handover_lock() {
        let dir = tempfile::tempdir().unwrap();
        let lock = handover_lock(dir.path());
        let held = hold_handover(&lock).unwrap();
        // Two shims share it; recovery waits for both.
        let second = hold_handover(&lock).unwrap();
        assert!(!wait_for_handover(&lock, Duration::from_millis(50)).unwrap());
        drop(held);
        assert!(!wait_for_handover(&lock, Duration::from_millis(50)).unwrap());
        drop(second);
        assert!(wait_for_handover(&lock, Duration::from_secs(10)).unwrap());
    }
}
