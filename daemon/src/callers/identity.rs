//! Who is calling: a process's systemd unit, executable and Flatpak app,
//! read through a pidfd so that a recycled pid cannot stand in for it.
//!
//! The recipe: from the pidfd, the pid (`/proc/self/fdinfo/FD`); open
//! `/proc/PID` as a folder; read the pidfd's pid again. A pid is reused
//! only after its process is reaped, and the pidfd's pid reads -1 from
//! then on: if it still reads PID, the folder opened is this process's,
//! and every later read through it fails rather than reach another.

use rustix::fs::{Mode, OFlags};
use std::fmt;
use std::io::Read as _;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt as _;
use std::path::PathBuf;

/// What tokd could establish about a caller. Each part is `None` when it
/// could not be read (the process exited, or is not dumpable: a setuid
/// program's `exe` and `root` are closed to its own user).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    pub pid: Option<u32>,
    /// The systemd unit whose cgroup the process is in (`backup.service`,
    /// `app-flatpak-org.example.App-1234.scope`, `session-2.scope`).
    pub unit: Option<String>,
    /// `/proc/PID/exe`, as this mount namespace sees it.
    pub exe: Option<PathBuf>,
    /// The app id of a Flatpak sandbox (`[Application] name` of the
    /// sandbox's `/.flatpak-info`).
    pub flatpak: Option<String>,
}

impl Caller {
    /// Whether nothing at all is known.
    pub fn unknown(&self) -> bool {
        self.unit.is_none() && self.exe.is_none() && self.flatpak.is_none()
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.unknown() {
            f.write_str("a process tokd cannot identify")?;
        } else if let Some(app) = &self.flatpak {
            write!(f, "Flatpak app {app}")?;
        } else {
            let mut parts = Vec::new();
            if let Some(exe) = &self.exe {
                parts.push(exe.display().to_string());
            }
            if let Some(unit) = &self.unit {
                parts.push(format!("in {unit}"));
            }
            f.write_str(&parts.join(" "))?;
        }
        if let Some(pid) = self.pid {
            write!(f, " (pid {pid})")?;
        }
        Ok(())
    }
}

/// The longest `/proc/PID/cgroup` or `.flatpak-info` read.
const MAX_READ: u64 = 64 * 1024;

/// Identifies the process `pidfd` refers to. Never fails: what cannot be
/// read stays `None`.
pub fn identify(pidfd: BorrowedFd<'_>) -> Caller {
    let Some(pid) = pid_of(pidfd) else {
        return Caller::default();
    };
    let folder = rustix::fs::open(
        format!("/proc/{pid}"),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    );
    // Still this process (see the module's comment)?
    let (Ok(folder), Some(true)) = (folder, pid_of(pidfd).map(|now| now == pid)) else {
        return Caller::default();
    };
    let unit = read_at(&folder, "cgroup").and_then(|text| unit_of_cgroup(&text));
    let exe = rustix::fs::readlinkat(&folder, "exe", Vec::new())
        .ok()
        .map(|path| PathBuf::from(std::ffi::OsString::from_vec(path.into_bytes())));
    let flatpak = read_at(&folder, "root/.flatpak-info").and_then(|text| flatpak_app(&text));
    Caller {
        pid: Some(pid),
        unit,
        exe,
        flatpak,
    }
}

/// The pid a pidfd refers to, from `/proc/self/fdinfo`: `None` once the
/// process has been reaped (-1) or in another pid namespace (0).
fn pid_of(pidfd: BorrowedFd<'_>) -> Option<u32> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd())).ok()?;
    let pid: i64 = info
        .lines()
        .find_map(|line| line.strip_prefix("Pid:"))?
        .trim()
        .parse()
        .ok()?;
    u32::try_from(pid).ok().filter(|pid| *pid > 0)
}

/// A regular file under `folder`, as text, if it is at most [`MAX_READ`].
fn read_at(folder: &OwnedFd, path: &str) -> Option<String> {
    let fd = rustix::fs::openat(
        folder,
        path,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
        Mode::empty(),
    )
    .ok()?;
    let file = std::fs::File::from(fd);
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    file.take(MAX_READ).read_to_string(&mut text).ok()?;
    Some(text)
}

/// A pidfd for a process known by its pid only: racy (the pid may have
/// been reused before the call), which is why callers prefer one the
/// kernel or the bus hands over.
pub fn pidfd_of_pid(pid: u32) -> Option<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(i32::try_from(pid).ok()?)?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
}

/// Identifies a process by pid alone (see [`pidfd_of_pid`]).
pub fn identify_pid(pid: u32) -> Caller {
    pidfd_of_pid(pid).map_or_else(Caller::default, |fd| identify(fd.as_fd()))
}

/// The systemd unit of a `/proc/PID/cgroup`: the innermost component of
/// the unified hierarchy's path (`0::`) that names a unit, else of the
/// v1 `name=systemd` one (hybrid systems).
pub fn unit_of_cgroup(text: &str) -> Option<String> {
    let path_of = |prefix: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(prefix))
            .and_then(innermost_unit)
    };
    path_of("0::").or_else(|| {
        text.lines()
            .find_map(|line| line.split_once(":name=systemd:").map(|(_, path)| path))
            .and_then(innermost_unit)
    })
}

fn innermost_unit(path: &str) -> Option<String> {
    const KINDS: [&str; 3] = [".service", ".scope", ".slice"];
    path.trim()
        .rsplit('/')
        .find(|part| {
            KINDS
                .iter()
                .any(|kind| part.len() > kind.len() && part.ends_with(kind))
        })
        // A slice is a unit, but the user's `user@UID.service` holds
        // everything they start; name it only when nothing finer is there.
        .map(str::to_owned)
}

/// The app id of a `.flatpak-info` keyfile: `name` in `[Application]`.
pub fn flatpak_app(text: &str) -> Option<String> {
    let mut in_application = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_application = line == "[Application]";
        } else if in_application
            && let Some((key, value)) = line.split_once('=')
            && key.trim() == "name"
        {
            let value = value.trim();
            return valid_app_id(value).then(|| value.to_owned());
        }
    }
    None
}

/// A Flatpak app id: at least three dot-separated parts of ASCII
/// letters, digits, `_` and `-`, none starting with a digit, at most 255.
pub fn valid_app_id(id: &str) -> bool {
    id.len() <= 255
        && id.split('.').count() >= 3
        && id.split('.').all(|part| {
            part.chars()
                .next()
                .is_some_and(|first| !first.is_ascii_digit())
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_is_the_innermost_of_the_unified_path_else_the_v1_one() {
        let v2 = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/backup.service\n";
        assert_eq!(unit_of_cgroup(v2).as_deref(), Some("backup.service"));
        let scope = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/app-flatpak-org.example.App-12.scope\n";
        assert_eq!(
            unit_of_cgroup(scope).as_deref(),
            Some("app-flatpak-org.example.App-12.scope")
        );
        let hybrid = "12:cpu:/\n1:name=systemd:/system.slice/cron.service\n0::/\n";
        assert_eq!(unit_of_cgroup(hybrid).as_deref(), Some("cron.service"));
        assert_eq!(unit_of_cgroup("0::/\n"), None);
        assert_eq!(unit_of_cgroup("0::/tokd-test/plain\n"), None);
    }

    #[test]
    fn a_flatpak_info_names_its_app_only_in_the_application_group() {
        let info =
            "[Instance]\nname=org.evil.Other\n\n[Application]\nname=org.example.App\nruntime=x\n";
        assert_eq!(flatpak_app(info).as_deref(), Some("org.example.App"));
        assert_eq!(flatpak_app("[Application]\nname=not an id\n"), None);
        assert_eq!(flatpak_app("name=org.example.App\n"), None);
        assert!(!valid_app_id("org.example"));
        assert!(!valid_app_id("org.1example.App"));
    }

    #[test]
    fn this_process_is_identified_through_its_pidfd() {
        let pid = std::process::id();
        let caller = identify_pid(pid);
        assert_eq!(caller.pid, Some(pid));
        assert_eq!(
            caller.exe.as_deref(),
            std::env::current_exe().ok().as_deref()
        );
        assert_eq!(caller.flatpak, None);
    }

    #[test]
    fn a_reaped_process_is_nobody() {
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("true runs");
        let pidfd = pidfd_of_pid(child.id()).expect("a pidfd of a live or zombie child");
        child.wait().expect("reaped");
        assert_eq!(identify(pidfd.as_fd()), Caller::default());
    }
}
