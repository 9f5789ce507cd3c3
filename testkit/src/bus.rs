//! A private `dbus-daemon` per test, a throw-away home for tokd, and the
//! real `tokd` process started against both.
//!
//! Nothing here touches the user's session bus or files: the bus listens
//! on a socket in a temporary folder, and tokd's config and state live in
//! another.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// How long a process may take to come up before a test gives up.
pub const START_DEADLINE: Duration = Duration::from_secs(60);

/// A `dbus-daemon` of the session type on a socket of its own; killed on
/// drop. Activation files placed in [`PrivateBus::service_dir`] start
/// services on demand, as on a desktop.
#[derive(Debug)]
pub struct PrivateBus {
    child: Child,
    address: String,
    dir: tempfile::TempDir,
}

impl PrivateBus {
    /// Starts the bus and waits for it to print its address.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temporary folder for the bus");
        let services = dir.path().join("services");
        std::fs::create_dir(&services).expect("service folder");
        let config = dir.path().join("bus.conf");
        std::fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <servicedir>{}</servicedir>
  <policy context="default">
    <allow user="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
                dir.path().join("bus").display(),
                services.display()
            ),
        )
        .expect("bus config");
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .args(["--nofork", "--print-address=1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            // Its own complaints and the stderr of services it activates.
            .stderr(std::fs::File::create(dir.path().join("bus.log")).expect("bus log"))
            .spawn()
            .expect("dbus-daemon must be installed (Debian: dbus-daemon); .ci/run installs it");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut address = String::new();
        BufReader::new(stdout)
            .read_line(&mut address)
            .expect("the bus address");
        let address = address.trim().to_owned();
        assert!(
            address.starts_with("unix:"),
            "dbus-daemon printed {address:?}"
        );
        Self {
            child,
            address,
            dir,
        }
    }

    /// The value for `DBUS_SESSION_BUS_ADDRESS`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Lets other local users reach the bus socket (the folder is 0700
    /// otherwise), for tests of tokd's own caller check.
    pub fn open_to_other_users(&self) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(self.dir.path(), std::fs::Permissions::from_mode(0o711))
            .expect("chmod the bus folder");
    }

    /// Where `.service` activation files are read from.
    pub fn service_dir(&self) -> PathBuf {
        self.dir.path().join("services")
    }

    /// Connects a client to this bus.
    pub async fn connect(&self) -> zbus::Connection {
        zbus::connection::Builder::address(self.address.as_str())
            .build()
            .await
            .expect("connect to the private bus")
    }
}

impl PrivateBus {
    /// Kills the bus now, as when a session ends.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A throw-away `$HOME` with tokd's config and state folders.
#[derive(Debug)]
pub struct Home {
    dir: tempfile::TempDir,
}

impl Default for Home {
    fn default() -> Self {
        Self::new()
    }
}

impl Home {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary home");
        std::fs::create_dir_all(dir.path().join("config/tokd")).expect("config folder");
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `$XDG_CONFIG_HOME/tokd/config.toml`.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config/tokd/config.toml")
    }

    /// `$XDG_STATE_HOME/tokd`.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state/tokd")
    }

    pub fn write_config(&self, text: &str) {
        std::fs::write(self.config_path(), text).expect("write config");
    }

    /// `tokctl ARGS` (at `binary`) as a script in this home would run it: on
    /// `bus`, without a display, stdin closed, killed if dropped.
    pub fn tokctl(
        &self,
        binary: &Path,
        bus: &PrivateBus,
        args: &[&str],
    ) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(binary);
        command
            .args(args)
            .envs(self.env(bus))
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// Writes a secret file (0600) and returns its path.
    pub fn write_secret(&self, name: &str, secret: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.path().join(name);
        std::fs::write(&path, secret).expect("write secret");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .expect("secret mode");
        path
    }

    /// The environment tokd and tokctl run with.
    pub fn env(&self, bus: &PrivateBus) -> Vec<(String, String)> {
        let path = |p: &str| self.dir.path().join(p).display().to_string();
        vec![
            ("DBUS_SESSION_BUS_ADDRESS".into(), bus.address().to_owned()),
            ("HOME".into(), path("")),
            ("XDG_CONFIG_HOME".into(), path("config")),
            ("XDG_STATE_HOME".into(), path("state")),
            ("XDG_RUNTIME_DIR".into(), path("runtime")),
            ("TOKD_LOG".into(), "debug".into()),
        ]
    }
}

/// A running `tokd` process; killed on drop. Its stderr (the log) goes to
/// a file in the home folder.
#[derive(Debug)]
pub struct Tokd {
    child: Child,
    log: PathBuf,
    ready_after: Duration,
}

impl Tokd {
    /// Starts `binary` and waits until it owns its bus name.
    pub async fn start(binary: &Path, home: &Home, bus: &PrivateBus) -> Self {
        Self::start_with_env(binary, home, bus, &[]).await
    }

    /// As `start`, with `extra` added to (or overriding) the environment.
    pub async fn start_with_env(
        binary: &Path,
        home: &Home,
        bus: &PrivateBus,
        extra: &[(&str, &str)],
    ) -> Self {
        Self::start_wrapped(&[], binary, home, bus, extra).await
    }

    /// As `start_with_env`, run through `wrapper` (a command and its
    /// arguments, e.g. `setpriv …`) when it is not empty.
    pub async fn start_wrapped(
        wrapper: &[&str],
        binary: &Path,
        home: &Home,
        bus: &PrivateBus,
        extra: &[(&str, &str)],
    ) -> Self {
        Self::start_inner(wrapper, binary, home, bus, extra, true).await
    }

    /// As `start_with_env`, for a tokd expected to serve the bus only (its
    /// runtime folder is not one it will use): does not wait for the
    /// private socket.
    pub async fn start_without_socket(
        binary: &Path,
        home: &Home,
        bus: &PrivateBus,
        extra: &[(&str, &str)],
    ) -> Self {
        Self::start_inner(&[], binary, home, bus, extra, false).await
    }

    async fn start_inner(
        wrapper: &[&str],
        binary: &Path,
        home: &Home,
        bus: &PrivateBus,
        extra: &[(&str, &str)],
        expect_socket: bool,
    ) -> Self {
        let log = home.path().join(format!("tokd-{}.log", unique()));
        let log_file = std::fs::File::create(&log).expect("log file");
        let connection = bus.connect().await;
        let dbus = zbus::fdo::DBusProxy::new(&connection)
            .await
            .expect("bus proxy");
        let mut owner_changes = dbus
            .receive_name_owner_changed()
            .await
            .expect("NameOwnerChanged");
        let mut command = match wrapper.split_first() {
            Some((program, arguments)) => {
                let mut command = Command::new(program);
                command.args(arguments).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        let spawned = std::time::Instant::now();
        let child = command
            .envs(home.env(bus))
            .envs(extra.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start tokd");
        let mut tokd = Self {
            child,
            log,
            ready_after: Duration::ZERO,
        };
        let wait = async {
            use futures_util::StreamExt;
            loop {
                let name = zbus::names::BusName::try_from(tokd_shared_name()).expect("name");
                if dbus.name_has_owner(name).await.unwrap_or(false) {
                    return;
                }
                let Some(signal) = owner_changes.next().await else {
                    return;
                };
                if let Ok(args) = signal.args()
                    && args.name.as_str() == tokd_shared_name()
                    && args.new_owner.is_some()
                {
                    return;
                }
            }
        };
        if tokio::time::timeout(START_DEADLINE, wait).await.is_err() {
            let _ = tokd.child.kill();
            panic!("tokd did not take its name; log:\n{}", tokd.log_text());
        }
        tokd.ready_after = spawned.elapsed();
        if !expect_socket {
            return tokd;
        }
        // The private socket is bound just after the name is taken (only
        // the name's owner may replace a stale one); tests that use it
        // need it answering.
        let socket = home
            .path()
            .join("runtime")
            .join(tokd_shared::PRIVATE_SOCKET);
        let deadline = std::time::Instant::now() + START_DEADLINE;
        // Connectable, not merely there: a killed tokd leaves its socket.
        while std::os::unix::net::UnixStream::connect(&socket).is_err()
            && std::time::Instant::now() < deadline
        {
            if let Ok(Some(status)) = tokd.child.try_wait() {
                panic!("tokd exited with {status}; log:\n{}", tokd.log_text());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if let Ok(Some(status)) = tokd.child.try_wait() {
            panic!("tokd exited with {status}; log:\n{}", tokd.log_text());
        }
        tokd
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// From spawning the process to seeing it own its bus name (the
    /// benchmark's start time).
    pub fn ready_after(&self) -> Duration {
        self.ready_after
    }

    /// Everything tokd logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(rustix::process::Signal::TERM);
        self.child.wait().expect("wait for tokd")
    }

    /// Sends SIGTERM without waiting (see `exited_within`).
    pub fn send_terminate(&self) {
        self.signal(rustix::process::Signal::TERM);
    }

    /// Waits up to `deadline` for tokd to exit by itself.
    pub async fn exited_within(&mut self, deadline: Duration) -> Option<ExitStatus> {
        let end = tokio::time::Instant::now() + deadline;
        while tokio::time::Instant::now() < end {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// SIGKILL, then waits.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGSTOP: tokd stands still (answers nothing) until `resume`.
    pub fn pause(&self) {
        self.signal(rustix::process::Signal::STOP);
    }

    /// SIGCONT, after `pause`.
    pub fn resume(&self) {
        self.signal(rustix::process::Signal::CONT);
    }

    /// SIGHUP (reload).
    pub fn hangup(&self) {
        self.signal(rustix::process::Signal::HUP);
    }

    fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).expect("a pid");
        rustix::process::kill_process(pid, signal).expect("signal tokd");
    }
}

impl Drop for Tokd {
    fn drop(&mut self) {
        self.kill();
    }
}

fn tokd_shared_name() -> &'static str {
    "org.tokd.tokd1"
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A free loopback port (bound then released; good enough for a test's
/// `redirect_uri`).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}
