//! Where things live under `BACKBEAT_HOME` (default `~/.backbeat`).
//!
//! Owns: the names of the files every front end and the daemon agree on.
//! Must never: create anything except the home folder itself (0700).

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use backbeat_actors::agents::run_dir::RunDir;

/// Longest Unix socket path the kernel takes is 108 bytes with its NUL.
const MAX_SOCKET_PATH: usize = 100;

#[derive(Debug, Clone)]
pub struct Home {
    pub root: PathBuf,
}

impl Home {
    /// `BACKBEAT_HOME`, else `~/.backbeat`. A relative `BACKBEAT_HOME` is taken from the
    /// current directory, so that every process of one user names the same folder.
    pub fn from_env() -> Home {
        let root = match std::env::var_os("BACKBEAT_HOME").filter(|v| !v.is_empty()) {
            Some(p) => {
                let p = PathBuf::from(p);
                if p.is_absolute() {
                    p
                } else {
                    std::env::current_dir().unwrap_or_default().join(p)
                }
            }
            None => {
                let home = std::env::var_os("HOME")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("/tmp"));
                home.join(".backbeat")
            }
        };
        Home { root }
    }

    pub fn ensure(&self) -> std::io::Result<()> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)?;
        std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o700))
    }

    pub fn config(&self) -> PathBuf {
        self.root.join("config.json")
    }
    pub fn db(&self) -> PathBuf {
        self.root.join("beat.db")
    }
    pub fn log(&self) -> PathBuf {
        self.root.join("daemon.log")
    }
    pub fn lock(&self) -> PathBuf {
        self.root.join("daemon.lock")
    }
    pub fn runs(&self) -> PathBuf {
        self.root.join("runs")
    }
    /// A task's run folder, whose file names `RunDir` owns.
    pub fn run(&self, task_id: &str) -> RunDir {
        RunDir::new(&self.runs(), task_id)
    }

    /// `beat.sock` in the home; where that path is too long for a Unix socket, a short
    /// private path derived from the home's name (and written to `socket-path`).
    pub fn socket(&self) -> PathBuf {
        let direct = self.root.join("beat.sock");
        if direct.as_os_str().len() <= MAX_SOCKET_PATH {
            return direct;
        }
        let mut hash: u64 = 0xcbf29ce484222325;
        for b in self.root.as_os_str().as_encoded_bytes() {
            hash = (hash ^ u64::from(*b)).wrapping_mul(0x100000001b3);
        }
        // SAFETY: getuid cannot fail.
        let uid = unsafe { libc::getuid() };
        PathBuf::from(format!("/tmp/backbeat-{uid}/{hash:016x}.sock"))
    }

    /// Makes the socket's folder when it is outside the home, and records where it is.
    pub fn prepare_socket_dir(&self) -> std::io::Result<PathBuf> {
        let socket = self.socket();
        if let Some(dir) = socket.parent()
            && dir != self.root
        {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
            std::fs::write(self.root.join("socket-path"), socket.display().to_string())?;
        }
        Ok(socket)
    }
}

/// Relative paths against `base`, as the user meant them.
pub fn absolute(path: &Path, base: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}
