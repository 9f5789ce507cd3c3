//! A real Secret Service for a test: `gnome-keyring-daemon` on the test's
//! private bus, with its own home and runtime folders, its login keyring
//! created and unlocked with a password given on stdin. The test can lock
//! it (the Secret Service's `Lock`), unlock it without a prompt (GNOME
//! Keyring's own interface for tests, `UnlockWithMasterPassword`), stop
//! and restart it, and read what it holds.

use crate::PrivateBus;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use zbus::{OwnedObjectPath, OwnedVariant};

const SERVICE: &str = "org.freedesktop.secrets";
const PATH: &str = "/org/freedesktop/secrets";
const LOGIN: &str = "/org/freedesktop/secrets/collection/login";
const PASSWORD: &str = "tokd-test-keyring-password";

/// One item tokd stored: its label, attributes and secret.
#[derive(Debug, Clone)]
pub struct StoredItem {
    pub label: String,
    pub attributes: HashMap<String, String>,
    pub secret: String,
}

/// A running gnome-keyring-daemon; killed on drop.
#[derive(Debug)]
pub struct GnomeKeyring {
    child: Option<Child>,
    dir: tempfile::TempDir,
    address: String,
}

impl GnomeKeyring {
    /// Starts one on `bus` and waits until it owns `org.freedesktop.secrets`.
    pub async fn start(bus: &PrivateBus) -> Self {
        let dir = tempfile::tempdir().expect("the keyring's folder");
        let mut keyring = Self {
            child: None,
            dir,
            address: bus.address().to_owned(),
        };
        keyring.run().await;
        keyring
    }

    fn folder(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::create_dir_all(&path).expect("a keyring folder");
        set_private(&path);
        path
    }

    async fn run(&mut self) {
        let mut child = Command::new("gnome-keyring-daemon")
            .args(["--foreground", "--unlock", "--components=secrets"])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.folder("home"))
            .env("XDG_DATA_HOME", self.folder("data"))
            .env("XDG_CONFIG_HOME", self.folder("config"))
            .env("XDG_RUNTIME_DIR", self.folder("runtime"))
            .env("DBUS_SESSION_BUS_ADDRESS", &self.address)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(self.log_file())
            .spawn()
            .expect("start gnome-keyring-daemon (Debian: gnome-keyring)");
        {
            let mut stdin = child.stdin.take().expect("stdin");
            stdin
                .write_all(PASSWORD.as_bytes())
                .expect("give the password");
        }
        self.child = Some(child);
        let connection = self.connect().await;
        let dbus = zbus::fdo::DBusProxy::new(&connection).await.expect("bus");
        let name = zbus::names::BusName::try_from(SERVICE).expect("name");
        for _ in 0..200 {
            if dbus.name_has_owner(name.clone()).await.unwrap_or(false)
                && self.login_exists(&connection).await
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("gnome-keyring-daemon did not come up on the private bus");
    }

    /// Where the daemon's stderr goes (appended across restarts), for
    /// the panic messages of a test that finds it misbehaving.
    fn log_file(&self) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("gnome-keyring.log"))
            .expect("the keyring's log")
    }

    /// Whether the daemon still runs, and what it said: for a test that
    /// got an error it did not expect.
    fn describe_now(&self) -> String {
        let alive = match &self.child {
            None => "stopped by the test".to_owned(),
            Some(child) => {
                let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
                    .unwrap_or_default();
                let state = status
                    .lines()
                    .find_map(|line| line.strip_prefix("State:"))
                    .map(str::trim)
                    .unwrap_or("gone");
                format!("pid {} in state {state}", child.id())
            }
        };
        let said =
            std::fs::read_to_string(self.dir.path().join("gnome-keyring.log")).unwrap_or_default();
        format!("gnome-keyring-daemon: {alive}; its stderr:\n{said}")
    }

    async fn login_exists(&self, connection: &zbus::Connection) -> bool {
        let alias: Result<OwnedObjectPath, _> = call(
            connection,
            PATH,
            "org.freedesktop.Secret.Service",
            "ReadAlias",
            &("default",),
        )
        .await;
        alias.is_ok_and(|path| path.as_str() == LOGIN)
    }

    async fn connect(&self) -> zbus::Connection {
        zbus::connection::Builder::address(self.address.as_str())
            .build()
            .await
            .expect("connect to the private bus")
    }

    /// Locks the login keyring, as a screen lock or `Lock` does.
    pub async fn lock(&self) {
        let connection = self.connect().await;
        let login = zbus::ObjectPath::try_from(LOGIN).expect("path");
        let _: (Vec<OwnedObjectPath>, OwnedObjectPath) = call(
            &connection,
            PATH,
            "org.freedesktop.Secret.Service",
            "Lock",
            &(vec![login],),
        )
        .await
        .expect("lock the keyring");
    }

    /// Unlocks the login keyring with its password, without a prompt.
    pub async fn unlock(&self) {
        let connection = self.connect().await;
        let session = plain_session(&connection).await;
        let login = zbus::ObjectPath::try_from(LOGIN).expect("path");
        let secret = (
            session,
            Vec::<u8>::new(),
            PASSWORD.as_bytes().to_vec(),
            "text/plain",
        );
        let () = call(
            &connection,
            PATH,
            "org.gnome.keyring.InternalUnsupportedGuiltRiddenInterface",
            "UnlockWithMasterPassword",
            &(login, secret),
        )
        .await
        .expect("unlock the keyring");
    }

    /// Makes the login keyring the default one (`true`), or leaves the
    /// Secret Service with no default (`false`), as Seahorse's "Set as
    /// default" and a removed alias do.
    pub async fn set_default(&self, login_is_default: bool) {
        let connection = self.connect().await;
        let target = if login_is_default { LOGIN } else { "/" };
        let target = zbus::ObjectPath::try_from(target).expect("path");
        let () = call(
            &connection,
            PATH,
            "org.freedesktop.Secret.Service",
            "SetAlias",
            &("default", target),
        )
        .await
        .expect("set the default alias");
    }

    /// Whether the login keyring is locked.
    pub async fn is_locked(&self) -> bool {
        let connection = self.connect().await;
        let login = OwnedObjectPath::try_from(LOGIN).expect("path");
        let proxy = properties(&connection, &login).await.expect("properties");
        let interface = zbus::names::InterfaceName::try_from("org.freedesktop.Secret.Collection")
            .expect("name");
        let locked = proxy.get(interface, "Locked").await.expect("Locked");
        bool::try_from(locked).expect("a boolean")
    }

    /// Stops the daemon's process (SIGSTOP) or lets it go on (SIGCONT): a
    /// keyring that answers slowly, as one behind a confirmation dialog.
    pub fn pause(&self, paused: bool) {
        if let Some(child) = &self.child {
            let signal = if paused { "-STOP" } else { "-CONT" };
            let sent = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status()
                .expect("kill");
            assert!(sent.success(), "kill {signal}");
        }
    }

    /// Stops the daemon, as when the keyring goes away.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same files (unlocked by the password).
    pub async fn restart(&mut self) {
        self.stop();
        self.run().await;
    }

    /// Every item with `application = tokd`, with its secret (the test
    /// reads them as a user would with `secret-tool search`).
    pub async fn items(&self) -> Vec<StoredItem> {
        let connection = self.connect().await;
        let attributes = HashMap::from([("application", "tokd")]);
        // The daemon answered a search with an error once in a loaded run
        // of the whole suite (the text was not kept): a failure is retried
        // for a while, said on stderr, and the panic tells whether the
        // daemon still runs and what it printed.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let (unlocked, locked): (Vec<OwnedObjectPath>, Vec<OwnedObjectPath>) = loop {
            let searched = call(
                &connection,
                PATH,
                "org.freedesktop.Secret.Service",
                "SearchItems",
                &(attributes.clone(),),
            )
            .await;
            match searched {
                Ok(found) => break found,
                Err(error) if tokio::time::Instant::now() < deadline => {
                    eprintln!("the test keyring refused a search, trying again: {error}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => panic!("search: {error}\n{}", self.describe_now()),
            }
        };
        assert!(locked.is_empty(), "the test reads an unlocked keyring");
        let session = plain_session(&connection).await;
        let mut items = Vec::new();
        for path in unlocked {
            // An item deleted since the search (tokd works meanwhile) is
            // skipped.
            if let Some(item) = read_item(&connection, &path, &session).await {
                items.push(item);
            }
        }
        items
    }

    /// The folder of the daemon's files (to show that nothing of tokd's is
    /// in plain text there either).
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for GnomeKeyring {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A session with no encryption, in which secrets travel as they are.
async fn plain_session(connection: &zbus::Connection) -> OwnedObjectPath {
    let (_, session): (OwnedVariant, OwnedObjectPath) = call(
        connection,
        PATH,
        "org.freedesktop.Secret.Service",
        "OpenSession",
        &("plain", zbus::Variant::from("")),
    )
    .await
    .expect("a session");
    session
}

/// The properties of the Secret Service's object at `path`.
async fn properties(
    connection: &zbus::Connection,
    path: &OwnedObjectPath,
) -> zbus::Result<zbus::fdo::PropertiesProxy<'static>> {
    zbus::fdo::PropertiesProxy::builder(connection)
        .destination(SERVICE)
        .path(path.clone())
        .build()
        .await
}

/// One item's label, attributes and secret; `None` when it is gone.
async fn read_item(
    connection: &zbus::Connection,
    path: &OwnedObjectPath,
    session: &OwnedObjectPath,
) -> Option<StoredItem> {
    let properties = properties(connection, path).await.ok()?;
    let interface = zbus::names::InterfaceName::try_from("org.freedesktop.Secret.Item").ok()?;
    let label = String::try_from(properties.get(interface.clone(), "Label").await.ok()?).ok()?;
    let attributes =
        HashMap::<String, String>::try_from(properties.get(interface, "Attributes").await.ok()?)
            .ok()?;
    let (_, _, value, _): (OwnedObjectPath, Vec<u8>, Vec<u8>, String) = call(
        connection,
        path.as_str(),
        "org.freedesktop.Secret.Item",
        "GetSecret",
        &(session.clone(),),
    )
    .await
    .ok()?;
    Some(StoredItem {
        label,
        attributes,
        secret: String::from_utf8(value).ok()?,
    })
}

fn set_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).expect("chmod");
}

/// One method call to the Secret Service, its reply deserialized.
async fn call<B, R>(
    connection: &zbus::Connection,
    path: &str,
    interface: &str,
    method: &str,
    body: &B,
) -> zbus::Result<R>
where
    B: serde::Serialize + zbus::zvariant::DynamicType,
    R: for<'d> zbus::zvariant::DynamicDeserialize<'d>,
{
    let reply = connection
        .call_method(Some(SERVICE), path, Some(interface), method, body)
        .await?;
    reply.body().deserialize()
}
