//! What `beat daemon install` writes and says: a systemd user unit that keeps the daemon
//! running, so that schedules fire after a reboot without anyone running `beat`.
//!
//! Owns: the unit file's text, where it goes, and the instructions shown to the user
//! (with systemd, and without it).
//! Must never: write files, run `systemctl`, or look at the machine: the caller finds
//! the paths and whether systemd runs (`/run/systemd/system` exists) and does the I/O.

use std::path::{Path, PathBuf};

/// The unit's file name.
pub const UNIT_NAME: &str = "backbeat.service";

/// Why a unit cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("{what} must be an absolute path (got '{path}')")]
    NotAbsolute { what: &'static str, path: String },
}

/// What the daemon's service needs to know.
#[derive(Debug, Clone)]
pub struct ServiceSpec<'a> {
    /// The `beat` binary, absolute (`std::env::current_exe()`).
    pub beat: &'a Path,
    /// The `BACKBEAT_HOME` the daemon serves, absolute.
    pub home: &'a Path,
}

/// What `beat daemon install` does and prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallPlan {
    /// Where to write `unit_text`; `None` where systemd does not run.
    pub unit_path: Option<PathBuf>,
    pub unit_text: Option<String>,
    /// What to tell the user, in full.
    pub instructions: String,
}

/// `~/.config/systemd/user/backbeat.service` (under `$XDG_CONFIG_HOME` when set).
pub fn unit_path(config_home: &Path) -> PathBuf {
    config_home.join("systemd").join("user").join(UNIT_NAME)
}

/// The systemd user unit that runs `beat daemon start --foreground` for `spec.home`.
pub fn systemd_user_unit(spec: &ServiceSpec<'_>) -> Result<String, UnitError> {
    let beat = absolute("the beat binary", spec.beat)?;
    let home = absolute("BACKBEAT_HOME", spec.home)?;
    Ok(format!(
        "[Unit]\n\
         Description=Backbeat daemon: AI coding agents as durable background workers, and their schedules\n\
         \n\
         [Service]\n\
         Type=simple\n\
         ExecStart={exec} daemon start --foreground\n\
         Environment={env}\n\
         Restart=on-failure\n\
         RestartSec=2\n\
         # Agents run under their own shims and outlive a daemon restart; stopping the\n\
         # service stops the daemon only, which adopts them again when it starts.\n\
         KillMode=process\n\
         \n\
         [Install]\n\
         WantedBy=default.target\n",
        exec = systemd_quote(&beat),
        env = systemd_quote(&format!("BACKBEAT_HOME={home}")),
    ))
}

/// The whole of `beat daemon install`: the unit and the commands to enable it where
/// systemd runs, else how to start the daemon at login.
pub fn install_plan(
    spec: &ServiceSpec<'_>,
    systemd_runs: bool,
    config_home: &Path,
) -> Result<InstallPlan, UnitError> {
    let beat = absolute("the beat binary", spec.beat)?;
    let home = absolute("BACKBEAT_HOME", spec.home)?;
    if systemd_runs {
        let path = unit_path(config_home);
        let text = systemd_user_unit(spec)?;
        let instructions = format!(
            "Wrote the systemd user unit {path}.\n\
             Start the daemon now and at every login:\n\
             \x20   systemctl --user daemon-reload\n\
             \x20   systemctl --user enable --now {UNIT_NAME}\n\
             Keep it running after you log out and start it at boot, before any login\n\
             (so that schedules fire after a reboot):\n\
             \x20   loginctl enable-linger \"$USER\"\n\
             Check it with: systemctl --user status {UNIT_NAME}\n",
            path = path.display(),
        );
        Ok(InstallPlan {
            unit_path: Some(path),
            unit_text: Some(text),
            instructions,
        })
    } else {
        let instructions = format!(
            "systemd does not run here, so no service was installed.\n\
             To have schedules fire without anyone running beat, start the daemon when\n\
             you log in, for example from ~/.profile:\n\
             \x20   BACKBEAT_HOME={home_q} {beat_q} daemon start\n\
             (on macOS, a launchd agent in ~/Library/LaunchAgents running the same command\n\
             with RunAtLoad does this). Schedules that came due while it was not running\n\
             follow their missedRunPolicy when it starts.\n",
            home_q = shell_quote(&home),
            beat_q = shell_quote(&beat),
        );
        Ok(InstallPlan {
            unit_path: None,
            unit_text: None,
            instructions,
        })
    }
}

fn absolute(what: &'static str, path: &Path) -> Result<String, UnitError> {
    let text = path.to_string_lossy().into_owned();
    if path.is_absolute() {
        Ok(text)
    } else {
        Err(UnitError::NotAbsolute { what, path: text })
    }
}

/// One systemd word: double-quoted, with `\` and `"` escaped and `%` (a specifier)
/// doubled, so paths with spaces or percent signs stay whole.
fn systemd_quote(text: &str) -> String {
    let escaped = text
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('%', "%%");
    format!("\"{escaped}\"")
}

/// One POSIX shell word.
fn shell_quote(text: &str) -> String {
    if !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:@".contains(c))
    {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec<'a>(beat: &'a str, home: &'a str) -> ServiceSpec<'a> {
        ServiceSpec {
            beat: Path::new(beat),
            home: Path::new(home),
        }
    }

    #[test]
    fn the_unit_runs_the_absolute_beat_in_the_foreground_restarts_it_and_starts_at_login() {
        let unit = systemd_user_unit(&spec("/usr/local/bin/beat", "/home/ada/.backbeat")).unwrap();
        let lines: Vec<&str> = unit.lines().collect();
        for expected in [
            "[Service]",
            "ExecStart=\"/usr/local/bin/beat\" daemon start --foreground",
            "Environment=\"BACKBEAT_HOME=/home/ada/.backbeat\"",
            "Restart=on-failure",
            "KillMode=process",
            "[Install]",
            "WantedBy=default.target",
        ] {
            assert!(
                lines.contains(&expected),
                "missing {expected:?} in:\n{unit}"
            );
        }
        // Sections in order, every setting under one.
        let unit_at = unit.find("[Unit]").unwrap();
        let service_at = unit.find("[Service]").unwrap();
        let install_at = unit.find("[Install]").unwrap();
        assert!(unit_at < service_at && service_at < install_at);
        assert!(unit.find("ExecStart").unwrap() > service_at);
        assert!(unit.find("WantedBy").unwrap() > install_at);
    }

    #[test]
    fn paths_with_spaces_quotes_and_percent_signs_stay_whole() {
        let unit = systemd_user_unit(&spec("/opt/my tools/beat", "/home/a\"b/100%")).unwrap();
        assert!(
            unit.contains("ExecStart=\"/opt/my tools/beat\" daemon start --foreground"),
            "{unit}"
        );
        assert!(
            unit.contains("Environment=\"BACKBEAT_HOME=/home/a\\\"b/100%%\""),
            "{unit}"
        );
    }

    #[test]
    fn relative_paths_are_refused() {
        let err = systemd_user_unit(&spec("beat", "/home/ada/.backbeat")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the beat binary must be an absolute path (got 'beat')"
        );
        assert!(systemd_user_unit(&spec("/usr/bin/beat", ".backbeat")).is_err());
    }

    #[test]
    fn with_systemd_the_plan_writes_the_unit_and_says_how_to_enable_and_linger() {
        let plan = install_plan(
            &spec("/usr/bin/beat", "/home/ada/.backbeat"),
            true,
            Path::new("/home/ada/.config"),
        )
        .unwrap();
        assert_eq!(
            plan.unit_path.as_deref(),
            Some(Path::new("/home/ada/.config/systemd/user/backbeat.service"))
        );
        assert!(plan.unit_text.unwrap().contains("WantedBy=default.target"));
        for needle in [
            "/home/ada/.config/systemd/user/backbeat.service",
            "systemctl --user daemon-reload",
            "systemctl --user enable --now backbeat.service",
            "loginctl enable-linger",
        ] {
            assert!(
                plan.instructions.contains(needle),
                "missing {needle:?}:\n{}",
                plan.instructions
            );
        }
    }

    #[test]
    fn without_systemd_the_plan_writes_nothing_and_says_how_to_start_at_login() {
        let plan = install_plan(
            &spec("/opt/my tools/beat", "/home/ada/.backbeat"),
            false,
            Path::new("/home/ada/.config"),
        )
        .unwrap();
        assert_eq!(plan.unit_path, None);
        assert_eq!(plan.unit_text, None);
        assert!(
            plan.instructions
                .contains("BACKBEAT_HOME=/home/ada/.backbeat '/opt/my tools/beat' daemon start"),
            "{}",
            plan.instructions
        );
        assert!(!plan.instructions.contains("systemctl"));
    }
}
