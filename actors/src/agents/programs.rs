//! The agent pool's cache of program lookups.
//!
//! Owns: where each agent CLI was last found. A hit is checked again with one `stat`
//! (the program may have been removed or replaced); a miss, or a hit that no longer
//! holds, scans `PATH` again, so that a CLI installed after the daemon started is
//! found at its next launch. Misses are never cached.
//! Must never: be called on the actix thread: every lookup touches the file system
//! (the pool calls it from its blocking work).

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Mutex;

use super::adapter::{find_program_in, is_executable};

pub struct ProgramCache {
    /// The `PATH` searched: the daemon's, as it started.
    path: Option<OsString>,
    found: Mutex<HashMap<String, PathBuf>>,
}

impl ProgramCache {
    /// A cache that searches `path` (a `PATH` value).
    pub fn new(path: Option<OsString>) -> ProgramCache {
        ProgramCache {
            path,
            found: Mutex::new(HashMap::new()),
        }
    }

    /// A cache that searches the daemon's own `PATH`.
    pub fn from_env() -> ProgramCache {
        ProgramCache::new(std::env::var_os("PATH"))
    }

    /// Where `program` is now, or `None` when it is not installed. Blocking.
    pub fn find(&self, program: &str) -> Option<PathBuf> {
        let cached = self.lock().get(program).cloned();
        if let Some(path) = cached
            && is_executable(&path)
        {
            return Some(path);
        }
        let found = find_program_in(program, self.path.as_deref());
        let mut map = self.lock();
        match &found {
            Some(path) => map.insert(program.to_string(), path.clone()),
            None => map.remove(program),
        };
        found
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, PathBuf>> {
        // A panic elsewhere while the lock was held leaves a map that is still valid.
        self.found
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use super::*;

    fn install(dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn path_of(dirs: &[&Path]) -> Option<OsString> {
        Some(std::env::join_paths(dirs).unwrap())
    }

    #[test]
    fn a_program_installed_after_a_miss_is_found() {
        let bin = tempfile::tempdir().unwrap();
        let cache = ProgramCache::new(path_of(&[bin.path()]));
        assert_eq!(cache.find("late-cli"), None);
        let installed = install(bin.path(), "late-cli");
        assert_eq!(cache.find("late-cli"), Some(installed));
    }

    #[test]
    fn a_removed_program_is_not_found_and_a_moved_one_is_found_where_it_went() {
        let first = tempfile::tempdir().unwrap();
        let second = tempfile::tempdir().unwrap();
        let cache = ProgramCache::new(path_of(&[first.path(), second.path()]));
        let old = install(second.path(), "cli");
        assert_eq!(cache.find("cli"), Some(old.clone()));
        std::fs::remove_file(&old).unwrap();
        assert_eq!(cache.find("cli"), None);
        let new = install(first.path(), "cli");
        assert_eq!(cache.find("cli"), Some(new));
    }

    #[test]
    fn a_file_that_is_not_executable_is_no_program() {
        let bin = tempfile::tempdir().unwrap();
        std::fs::write(bin.path().join("notes"), "text").unwrap();
        let cache = ProgramCache::new(path_of(&[bin.path()]));
        assert_eq!(cache.find("notes"), None);
        let absolute = install(bin.path(), "tool");
        assert_eq!(
            cache.find(absolute.to_str().unwrap()),
            Some(absolute.clone())
        );
        assert_eq!(ProgramCache::new(None).find("tool"), None);
    }
}
