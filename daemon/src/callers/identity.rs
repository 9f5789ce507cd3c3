//! Who is calling: a process's systemd unit, executable and Flatpak app,
//! read through a pidfd so that a recycled pid cannot stand in for it.
//!
//! The recipe: the pidfd's pid (given with the pidfd by the kernel, as
//! `SO_PEERCRED` and `SO_PEERPIDFD` of one socket are, when `/proc` is of
//! tokd's own pid namespace; else read from `/proc/self/fdinfo/FD`, which
//! gives it as `/proc` names it); open `/proc/PID` as a folder; then check that
//! the pidfd's process still holds PID. A pid is reused only after its
//! process is reaped: if the process is still running (its pidfd not
//! readable), it was running when the folder was opened; if it has
//! exited, the pidfd's pid reads -1 once it is reaped. Either way, when
//! the check passes, the folder opened is this process's, and every later
//! read through it fails rather than reach another.

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
    /// The whole cgroup path the unit was taken from.
    pub cgroup: Option<String>,
    /// Whether the process sees the same root folder as tokd (`Some(false)`:
    /// a Flatpak app, a snap, a container, a chroot). `None` when it was
    /// not looked at ([`identify_light`]) or could not be read.
    pub host: Option<bool>,
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

    /// Whether the caller is known to run outside any sandbox.
    pub fn on_the_host(&self) -> bool {
        self.host == Some(true)
    }
}

/// Text from a process made fit for a sentence or a log line: one line,
/// no control characters, bounded.
fn shown(text: &str) -> String {
    crate::text::sanitize(text, 512)
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.unknown() {
            f.write_str("a process tokd cannot identify")?;
        } else if let Some(app) = &self.flatpak {
            write!(f, "Flatpak app {}", shown(app))?;
        } else {
            let mut parts = Vec::new();
            if self.host == Some(false) {
                parts.push("a sandboxed".to_owned());
            }
            if let Some(exe) = &self.exe {
                parts.push(shown(&exe.to_string_lossy()));
            }
            if let Some(unit) = &self.unit {
                parts.push(format!("in {}", shown(unit)));
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

/// Identifies the process `pidfd` refers to: [`identify_light`], and
/// whether it shares tokd's root folder, and if not, its Flatpak app id.
/// Never fails: what cannot be read stays `None`. It reads through the
/// process's root, which a sandbox may serve from a FUSE file system that
/// never answers: callers run it on a blocking thread with a timeout.
pub fn identify(process: &Process) -> Caller {
    let Some((folder, mut caller)) = open_and_read(process) else {
        return Caller::default();
    };
    caller.host = same_root(&folder);
    if caller.host == Some(false) {
        caller.flatpak = read_at(&folder, "root/.flatpak-info").and_then(|text| flatpak_app(&text));
    }
    // tokd in a user namespace of its own (the implicit `PrivateUsers=` of
    // a hardened systemd user unit) cannot read another process's root
    // or program; its cgroup it can. systemd puts sandboxes in scopes
    // named after them, which the sandboxed app cannot rename.
    if caller.host.is_none()
        && let Some(cgroup) = &caller.cgroup
    {
        let sandbox = sandbox_of_cgroup(cgroup);
        caller.host = Some(sandbox.is_none());
        caller.flatpak = sandbox.flatten();
    }
    caller
}

/// Whether a cgroup path is a sandbox's scope (a Flatpak app's, a snap's,
/// a container's): `Some(app id)` for a Flatpak app, `Some(None)` for
/// another sandbox, `None` for none.
pub fn sandbox_of_cgroup(path: &str) -> Option<Option<String>> {
    path.split('/').find_map(|part| {
        if let Some(rest) = part.strip_prefix("app-flatpak-") {
            // app-flatpak-org.example.App-1234.scope
            let app = rest
                .strip_suffix(".scope")
                .and_then(|rest| rest.rsplit_once('-'))
                .map(|(app, _)| app)
                .filter(|app| valid_app_id(app));
            return Some(app.map(str::to_owned));
        }
        let other = ["snap.", "libpod-", "docker-", "lxc.payload"]
            .iter()
            .any(|prefix| part.starts_with(prefix));
        other.then_some(None)
    })
}

/// The pid, cgroup, unit and program of the process `pidfd` refers to:
/// procfs only, nothing read through the process's own files, so it
/// cannot be made to wait.
pub fn identify_light(process: &Process) -> Caller {
    open_and_read(process).map_or_else(Caller::default, |(_, caller)| caller)
}

/// A process held by its pidfd, and its pid.
#[derive(Debug)]
pub struct Process {
    pidfd: OwnedFd,
    pid: u32,
}

impl Process {
    /// `pid`: the pidfd's pid where the kernel handed both over together
    /// (`SO_PEERCRED` and `SO_PEERPIDFD` of one socket: the same process
    /// by construction); `None` reads it from the pidfd. `None` when the
    /// process has been reaped (or lives in a pid namespace tokd cannot
    /// see into).
    pub fn new(pidfd: OwnedFd, pid: Option<u32>) -> Option<Self> {
        // Pids the kernel hands tokd are in tokd's pid namespace; `/proc`
        // may be another's (see `proc_is_ours`): then the pidfd says.
        let pid = match pid.filter(|pid| *pid > 0 && proc_is_ours()) {
            Some(pid) => pid,
            None => pid_of(pidfd.as_fd())?,
        };
        Some(Self { pidfd, pid })
    }

    /// A process known by its pid only: racy (the pid may have been
    /// reused before the call), which is why callers prefer a pidfd the
    /// kernel or the bus hands over.
    pub fn of_pid(pid: u32) -> Option<Self> {
        let raw = rustix::process::Pid::from_raw(i32::try_from(pid).ok()?)?;
        let pidfd = rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty()).ok()?;
        Self::new(pidfd, Some(pid))
    }

    /// Whether the process still holds its pid (see the module's comment).
    fn holds_its_pid(&self) -> bool {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        let mut fds = [PollFd::new(&self.pidfd, PollFlags::IN)];
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // Not readable: still running (one call, where reading the pid
        // back from procfs costs three and a formatted file).
        let running = poll(&mut fds, Some(&zero)) == Ok(0);
        running || pid_of(self.pidfd.as_fd()) == Some(self.pid)
    }
}

/// Whether `/proc` shows tokd's own pid namespace, so that a pid the
/// kernel hands tokd (`SO_PEERCRED`'s, `pidfd_open`'s) names the same
/// process under `/proc`. Not so when tokd runs in a pid namespace of its
/// own under a `/proc` mounted for another (`unshare -p` without
/// `--mount-proc`): `/proc/self` then reads tokd's pid out there.
fn proc_is_ours() -> bool {
    static OURS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OURS.get_or_init(|| {
        std::fs::read_link("/proc/self")
            .ok()
            .and_then(|link| link.to_str()?.parse::<u32>().ok())
            == Some(std::process::id())
    })
}

fn open_and_read(process: &Process) -> Option<(OwnedFd, Caller)> {
    let pid = process.pid;
    let folder = rustix::fs::open(
        format!("/proc/{pid}"),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    // Still this process (see the module's comment)?
    if !process.holds_its_pid() {
        return None;
    }
    let cgroup = read_at(&folder, "cgroup").and_then(|text| cgroup_path(&text));
    let unit = cgroup.as_deref().and_then(innermost_unit);
    let exe = rustix::fs::readlinkat(&folder, "exe", Vec::new())
        .ok()
        .map(|path| {
            let mut bytes = path.into_bytes();
            // A program replaced on disk (an upgrade) is still the one at
            // its path.
            if bytes.ends_with(b" (deleted)") {
                bytes.truncate(bytes.len() - b" (deleted)".len());
            }
            PathBuf::from(std::ffi::OsString::from_vec(bytes))
        });
    let caller = Caller {
        pid: Some(pid),
        unit,
        cgroup,
        host: None,
        exe,
        flatpak: None,
    };
    Some((folder, caller))
}

/// Whether `/proc/PID/root` is tokd's own root folder (the same file
/// system and inode: tokd's systemd sandbox has its own mount namespace
/// but the same root).
fn same_root(folder: &OwnedFd) -> Option<bool> {
    let theirs = rustix::fs::statat(folder, "root", rustix::fs::AtFlags::empty()).ok()?;
    let ours = rustix::fs::stat("/").ok()?;
    Some(theirs.st_dev == ours.st_dev && theirs.st_ino == ours.st_ino)
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

/// Identifies a process by pid alone (see [`Process::of_pid`]).
pub fn identify_pid(pid: u32) -> Caller {
    Process::of_pid(pid).map_or_else(Caller::default, |process| identify(&process))
}

/// The systemd path of a `/proc/PID/cgroup`: the unified hierarchy's
/// (`0::`) when it names a unit, else the v1 `name=systemd` one (hybrid
/// systems).
pub fn cgroup_path(text: &str) -> Option<String> {
    let unified = text
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .filter(|path| innermost_unit(path).is_some());
    unified
        .or_else(|| {
            text.lines()
                .find_map(|line| line.split_once(":name=systemd:").map(|(_, path)| path))
        })
        .map(|path| path.trim().to_owned())
}

/// The systemd unit of a `/proc/PID/cgroup` (see [`cgroup_path`]).
pub fn unit_of_cgroup(text: &str) -> Option<String> {
    cgroup_path(text).as_deref().and_then(innermost_unit)
}

pub fn innermost_unit(path: &str) -> Option<String> {
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
    fn a_sandbox_scope_says_which_sandbox() {
        let scope = "/user.slice/user-1000.slice/user@1000.service/app.slice/app-flatpak-org.gnome.Evolution-2290.scope";
        assert_eq!(
            sandbox_of_cgroup(scope),
            Some(Some("org.gnome.Evolution".to_owned()))
        );
        assert_eq!(
            sandbox_of_cgroup(
                "/user.slice/user-1000.slice/user@1000.service/app.slice/snap.firefox.firefox-1.scope"
            ),
            Some(None)
        );
        assert_eq!(
            sandbox_of_cgroup("/user.slice/user-1000.slice/session-2.scope"),
            None
        );
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
        assert_eq!(caller.host, Some(true), "this process shares its own root");
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
        let process = Process::of_pid(child.id()).expect("a pidfd of a live or zombie child");
        child.wait().expect("reaped");
        assert_eq!(identify(&process), Caller::default());
        // Its pidfd says so whether or not its pid is given.
        let again = Process::of_pid(std::process::id()).expect("this process");
        let reaped = Process::new(process.pidfd, None);
        assert!(reaped.is_none());
        assert!(again.holds_its_pid());
    }

    #[test]
    fn an_exited_process_not_yet_reaped_still_holds_its_pid() {
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("true runs");
        let process = Process::of_pid(child.id()).expect("a pidfd");
        // Exited (its pidfd readable) but not reaped: a zombie keeps its pid.
        let mut fds = [rustix::event::PollFd::new(
            &process.pidfd,
            rustix::event::PollFlags::IN,
        )];
        rustix::event::poll(&mut fds, None).expect("poll");
        assert!(process.holds_its_pid());
        assert_eq!(identify(&process).pid, Some(child.id()));
        child.wait().expect("reaped");
        assert!(!process.holds_its_pid());
    }

    #[test]
    fn a_caller_tokd_cannot_place_is_not_on_the_host() {
        // A sender gone before tokd asked the bus about it, a process
        // reaped, a root that could not be read: all fail closed.
        assert!(!Caller::default().on_the_host());
        let light = Caller {
            pid: Some(7),
            exe: Some(PathBuf::from("/usr/bin/curl")),
            ..Caller::default()
        };
        assert!(!light.on_the_host(), "the light identity never says host");
    }

    #[test]
    fn what_a_process_says_of_itself_is_shown_on_one_line() {
        let caller = Caller {
            pid: Some(7),
            exe: Some(PathBuf::from(
                "/tmp/x\n2026 INFO token handed out caller=\u{1b}[31mFlatpak",
            )),
            ..Caller::default()
        };
        let text = caller.to_string();
        assert!(!text.contains('\n') && !text.contains('\u{1b}'), "{text:?}");
    }
}
