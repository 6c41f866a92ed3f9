//! Where things live: `BACKBEAT_HOME`, else `BACKBEAT_DATA_DIR` (the original's name for
//! the data folder), else `~/.backbeat`; the database file may be put elsewhere with
//! `BACKBEAT_DATABASE_PATH`.
//!
//! Owns: the names of the files every front end and the daemon agree on, and the
//! checks that the home can be used, with errors that name the path and what to do.
//! Must never: create anything except the home folder itself (0700), change the mode
//! of a home its owner made read-only, or point at the original's `backbeat.db`.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use backbeat_actors::agents::run_dir::RunDir;

/// Longest Unix socket path the kernel takes is 108 bytes with its NUL.
const MAX_SOCKET_PATH: usize = 100;

/// The file name of the original Backbeat's database, which is never read.
const ORIGINAL_DB: &str = "backbeat.db";

#[derive(Debug, Clone)]
pub struct Home {
    pub root: PathBuf,
    /// `BACKBEAT_DATABASE_PATH`, when set: the database file outside the home.
    pub database: Option<PathBuf>,
}

/// An environment variable holding a path; a relative one is taken from the current
/// directory, so that every process of one user names the same file.
fn path_var(name: &str) -> Option<PathBuf> {
    let p = PathBuf::from(std::env::var_os(name).filter(|v| !v.is_empty())?);
    Some(absolute(&p, &std::env::current_dir().unwrap_or_default()))
}

fn error(kind: std::io::ErrorKind, message: String) -> std::io::Error {
    std::io::Error::new(kind, message)
}

impl Home {
    /// `BACKBEAT_HOME`, else `BACKBEAT_DATA_DIR`, else `~/.backbeat`; the database is
    /// `BACKBEAT_DATABASE_PATH`, else `beat.db` in the home.
    pub fn from_env() -> Home {
        let root = path_var("BACKBEAT_HOME")
            .or_else(|| path_var("BACKBEAT_DATA_DIR"))
            .unwrap_or_else(|| {
                std::env::var_os("HOME")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("/tmp"))
                    .join(".backbeat")
            });
        Home {
            root,
            database: path_var("BACKBEAT_DATABASE_PATH"),
        }
    }

    /// Makes the home (0700) if it is missing, and checks that it can be used. Each
    /// error names the path and what to do. A home its owner made read-only is left
    /// as it is and reported; one readable by others is made private again.
    pub fn ensure(&self) -> std::io::Result<()> {
        use std::io::ErrorKind;
        let root = self.root.display();
        let what_to_do = "set BACKBEAT_HOME to a folder you can write";
        match std::fs::metadata(&self.root) {
            Ok(m) if !m.is_dir() => {
                return Err(error(
                    ErrorKind::AlreadyExists,
                    format!(
                        "the Backbeat home {root} is a file, not a folder: move it away, or {what_to_do}"
                    ),
                ));
            }
            Ok(m) => {
                let mode = m.permissions().mode() & 0o777;
                if mode & 0o200 == 0 {
                    return Err(error(
                        ErrorKind::PermissionDenied,
                        format!(
                            "the Backbeat home {root} cannot be written (mode {mode:04o}): make it writable (chmod u+w {root}), or {what_to_do}"
                        ),
                    ));
                }
                if mode & 0o077 != 0 {
                    std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o700))
                        .map_err(|e| {
                            error(
                                e.kind(),
                                format!("cannot make the Backbeat home {root} private (0700): {e}"),
                            )
                        })?;
                }
            }
            Err(_) => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&self.root)
                    .map_err(|e| {
                        error(
                            e.kind(),
                            format!("cannot create the Backbeat home {root}: {e}; {what_to_do}"),
                        )
                    })?;
            }
        }
        self.check_database()?;
        if let Some(dir) = self.database.as_ref().and_then(|db| db.parent()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| {
                    error(
                        e.kind(),
                        format!(
                            "cannot create {} for BACKBEAT_DATABASE_PATH: {e}",
                            dir.display()
                        ),
                    )
                })?;
        }
        Ok(())
    }

    /// Refuses a `BACKBEAT_DATABASE_PATH` that names the original's database.
    pub fn check_database(&self) -> std::io::Result<()> {
        use std::io::ErrorKind;
        if let Some(db) = &self.database
            && db.file_name().is_some_and(|n| n == ORIGINAL_DB)
        {
            return Err(error(
                ErrorKind::InvalidInput,
                format!(
                    "BACKBEAT_DATABASE_PATH names {}: that is the original Backbeat's database, which this one never reads or changes. Name another file, e.g. beat.db",
                    db.display()
                ),
            ));
        }
        Ok(())
    }

    pub fn config(&self) -> PathBuf {
        self.root.join("config.json")
    }
    pub fn db(&self) -> PathBuf {
        self.database
            .clone()
            .unwrap_or_else(|| self.root.join("beat.db"))
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
