//! What crosses tokd's D-Bus interface, shared by the daemon and every client.
//!
//! This crate owns the bus names, the wire types and the named D-Bus errors.
//! It never depends on the daemon, never speaks HTTP and never reads config:
//! a client (tokctl, a desktop program) compiles only this.

pub mod direct;
pub mod socket;
pub mod text;

use serde::{Deserialize, Serialize};
use std::fmt;

/// Well-known name the daemon owns on the session bus.
pub const BUS_NAME: &str = "org.tokd.tokd1";
/// Object path of the manager object.
pub const OBJECT_PATH: &str = "/org/tokd/tokd1";
/// Interface of the manager object.
pub const INTERFACE: &str = "org.tokd.tokd1.Manager";
/// Prefix of every named D-Bus error the daemon returns.
pub const ERROR_PREFIX: &str = "org.tokd.tokd1.Error";

/// The daemon's private socket, relative to `$XDG_RUNTIME_DIR`: the same
/// interface as on the session bus, peer to peer (no bus daemon between,
/// no `Hello`), for this user only. tokctl tries it first.
pub const PRIVATE_SOCKET: &str = "tokd/bus";

/// `$XDG_RUNTIME_DIR/tokd/bus`, or `None` when `XDG_RUNTIME_DIR` is unset
/// or not absolute (the XDG spec says to ignore a relative one).
pub fn private_socket_path() -> Option<std::path::PathBuf> {
    let dir = std::path::PathBuf::from(std::env::var_os("XDG_RUNTIME_DIR")?);
    dir.is_absolute().then(|| dir.join(PRIVATE_SOCKET))
}

/// A container registry as tokd's `registries` keys it: Docker Hub's three
/// names (`docker.io` as Podman and skopeo ask, `index.docker.io` as
/// Docker does, `registry-1.docker.io` where it serves) are one,
/// `docker.io`; any other host is itself. `host` is lowercase.
pub fn registry_key(host: &str) -> &str {
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io",
        other => other,
    }
}

/// Why the last tokd could not start, relative to `$XDG_RUNTIME_DIR`:
/// written by tokd when it stops before serving (a config it cannot use),
/// removed once one starts; tokctl shows it when tokd cannot be started.
pub const START_ERROR: &str = "tokd/start-error";

/// `$XDG_RUNTIME_DIR/tokd/start-error` (see [`START_ERROR`]).
pub fn start_error_path() -> Option<std::path::PathBuf> {
    let dir = std::path::PathBuf::from(std::env::var_os("XDG_RUNTIME_DIR")?);
    dir.is_absolute().then(|| dir.join(START_ERROR))
}

/// Where an installation stands. One word per state, the same in `tokctl
/// list`, in `--json` output and on D-Bus (as the lowercase string).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstallationState {
    /// Never authorized: no token held.
    Empty,
    /// A token is held and not expired.
    Valid,
    /// A request to the provider is in flight.
    Refreshing,
    /// The last refresh failed transiently; a retry is scheduled.
    Failing,
    /// The authorization is lost: a human must run `tokctl login NAME`.
    NeedsLogin,
    /// The consumer is misconfigured (bad client credentials, bad grant).
    Misconfigured,
    /// The keyring that holds (or must hold) the tokens is locked or
    /// gone: nothing is asked of the provider until it is back; a held
    /// valid token is still served.
    Locked,
}

impl InstallationState {
    /// Every state, in a stable order.
    pub const ALL: [InstallationState; 7] = [
        Self::Empty,
        Self::Valid,
        Self::Refreshing,
        Self::Failing,
        Self::NeedsLogin,
        Self::Misconfigured,
        Self::Locked,
    ];

    /// The wire and display form: `empty`, `valid`, `refreshing`, `failing`,
    /// `needs-login`, `misconfigured`, `locked`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::Valid => "valid",
            Self::Refreshing => "refreshing",
            Self::Failing => "failing",
            Self::NeedsLogin => "needs-login",
            Self::Misconfigured => "misconfigured",
            Self::Locked => "locked",
        }
    }

    /// Parses the form `as_str` writes.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == text)
    }
}

impl fmt::Display for InstallationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The named errors of `org.tokd.tokd1.Manager`, each carrying one human
/// sentence that says what happened and what to do. Clients match on the
/// variant (the D-Bus error name), never on the sentence.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.tokd.tokd1.Error")]
pub enum Error {
    /// A transport-level failure (the daemon is absent, the bus is down).
    #[zbus(error)]
    ZBus(zbus::Error),
    /// No installation has that name.
    UnknownInstallation(String),
    /// The authorization is lost: run `tokctl login NAME`.
    NeedsLogin(String),
    /// The consumer's configuration is wrong (client id, secret, URLs).
    Misconfigured(String),
    /// The provider is failing (timeouts, 5xx, 429) and no valid token is held.
    ProviderUnavailable(String),
    /// The call's arguments were refused (bad name, absurd duration).
    InvalidArgument(String),
    /// The caller may not have this: it runs as another user than the
    /// daemon, or the installation's caller policy does not name it (the
    /// sentence says the `tokctl allow` that would).
    AccessDenied(String),
    /// tokd is shutting down and starts no new work; ask again in a moment
    /// (D-Bus activation or systemd starts the next one).
    Stopping(String),
    /// The keyring holding the tokens is locked or gone, and no valid
    /// token is held: unlock it (tokd asked the desktop to) or start it.
    Locked(String),
}

/// The result of a call through [`ManagerProxy`]: the daemon's named
/// errors arrive as their [`Error`] variant, anything else (no bus, no
/// daemon) as [`Error::ZBus`].
pub type Result<T> = std::result::Result<T, Error>;

/// One installation as `List` and `Status` describe it (D-Bus signature
/// `(ssssssxxxs)`). Times are Unix seconds; `0` means "none" (never
/// refreshed, a token that does not expire, nothing scheduled). Strings that
/// have nothing to say are empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, zbus::zvariant::Type)]
pub struct InstallationInfo {
    pub name: String,
    pub consumer: String,
    /// `authorization_code` or `client_credentials`.
    pub grant: String,
    /// An [`InstallationState`] in its wire form.
    pub state: String,
    /// One sentence for humans about the state (what to do, if anything).
    pub message: String,
    /// Scopes granted, space-separated.
    pub scopes: String,
    pub expires_at: i64,
    pub last_refresh: i64,
    pub next_refresh: i64,
    /// The last failure, as a sentence; empty after a success.
    pub last_error: String,
}

/// The client side of `org.tokd.tokd1.Manager`. tokctl uses this; desktop
/// programs may too, or read `dbus/org.tokd.tokd1.Manager.xml`.
#[zbus::proxy(
    interface = "org.tokd.tokd1.Manager",
    default_service = "org.tokd.tokd1",
    default_path = "/org/tokd/tokd1"
)]
pub trait Manager {
    /// A token valid for at least `min_valid_secs` (refreshed first when the
    /// held one expires sooner): (access token, expiry in Unix seconds or 0,
    /// token type lowercased, warning). The warning is empty unless the
    /// provider is failing and the held token, still valid, is served
    /// although it expires sooner than asked.
    fn get_token(&self, name: &str, min_valid_secs: u32) -> Result<(String, i64, String, String)>;

    /// Where git may be given the installation's tokens: `https://HOST`
    /// for each of its consumer's git hosts, `http://HOST:PORT` for a
    /// loopback one.
    fn git_remotes(&self, name: &str) -> Result<Vec<String>>;

    /// A token for the Kubernetes API at `server` (an https URL, which the
    /// installation's `kube_servers` must name), valid for at least
    /// `min_valid_secs`: (token, expiry or 0, warning as in `get_token`).
    fn get_kube_credential(
        &self,
        name: &str,
        server: &str,
        min_valid_secs: u32,
    ) -> Result<(String, i64, String)>;

    /// A token for git at `protocol://host` (HTTPS, or HTTP to loopback,
    /// and a host in the consumer's `git_hosts`), valid for at least
    /// `min_valid_secs`: (user name to send it with, empty when the
    /// consumer has none; the token; expiry or 0; warning as in
    /// `get_token`).
    fn get_git_credential(
        &self,
        name: &str,
        protocol: &str,
        host: &str,
        min_valid_secs: u32,
    ) -> Result<(String, String, i64, String)>;

    /// Every installation, sorted by name.
    fn list(&self) -> Result<Vec<InstallationInfo>>;

    /// One installation.
    fn status(&self, name: &str) -> Result<InstallationInfo>;

    /// Refreshes now (sharing an in-flight refresh); returns the new expiry.
    fn refresh(&self, name: &str) -> Result<i64>;

    /// Starts an authorization-code login: (URL to open, whether the daemon
    /// listens on the consumer's loopback `redirect_uri` for the answer).
    fn begin_login(&self, name: &str) -> Result<(String, bool)>;

    /// As `begin_login`, with tokd listening for the browser's answer
    /// `timeout_secs` (at most 600) rather than the longest, 10 minutes.
    fn begin_login_within(&self, name: &str, timeout_secs: u32) -> Result<(String, bool)>;

    /// Finishes a login with a code obtained by hand; returns the expiry.
    fn complete_login(&self, name: &str, code: &str) -> Result<i64>;

    /// Starts a device login (RFC 8628): (where to go, the same with the
    /// code in it or empty, the code to enter, when it expires in Unix
    /// seconds). tokd polls; the outcome comes as `LoginFinished`.
    fn begin_device_login(&self, name: &str) -> Result<(String, String, String, i64)>;

    /// Revokes the grant at the provider (when it has a revocation endpoint)
    /// and forgets the tokens; returns a sentence saying what was done.
    fn revoke(&self, name: &str) -> Result<String>;

    /// Where each installation's tokens are kept, by name: `keyring`,
    /// `file`, or empty when it holds none.
    fn token_stores(&self) -> Result<std::collections::HashMap<String, String>>;

    /// The container registries the config names: (registry, installation,
    /// user name), sorted by registry.
    fn registries(&self) -> Result<Vec<(String, String, String)>>;

    /// The config file tokd reads and `reload` re-reads (empty: none).
    fn config_path(&self) -> Result<String>;

    /// Re-reads the config file; returns a one-line summary.
    fn reload(&self) -> Result<String>;

    /// Lets the callers `rule` names get `name`'s tokens from now on;
    /// false if they already could.
    fn allow_caller(&self, name: &str, rule: &str) -> Result<bool>;

    /// Takes back an allowance; false if there was none.
    fn forget_caller(&self, name: &str, rule: &str) -> Result<bool>;

    /// `name`'s caller policy: (limited, configured rules,
    /// `unknown_callers`, rules allowed since).
    fn callers(&self, name: &str) -> Result<(bool, Vec<String>, String, Vec<String>)>;

    /// The last tokens handed out, oldest first: (Unix seconds,
    /// installation, method, caller).
    fn deliveries(&self) -> Result<Vec<(i64, String, String, String)>>;

    /// A new access token was obtained (expiry in Unix seconds, or 0).
    #[zbus(signal)]
    fn token_refreshed(&self, name: String, expires_at: i64) -> zbus::Result<()>;

    /// An installation's state changed, with a sentence for humans.
    #[zbus(signal)]
    fn state_changed(&self, name: String, state: String, message: String) -> zbus::Result<()>;

    /// A login ended, successfully or not, with a sentence for humans.
    #[zbus(signal)]
    fn login_finished(&self, name: String, success: bool, message: String) -> zbus::Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use zbus::DBusError as _;

    #[test]
    fn state_round_trips_through_its_wire_form() {
        for state in InstallationState::ALL {
            assert_eq!(InstallationState::parse(state.as_str()), Some(state));
        }
        assert_eq!(InstallationState::parse("bogus"), None);
    }

    #[test]
    fn error_names_are_under_the_documented_prefix() {
        let error = Error::NeedsLogin("run `tokctl login x`".into());
        assert_eq!(error.name().as_str(), "org.tokd.tokd1.Error.NeedsLogin");
        let error = Error::UnknownInstallation(String::new());
        assert!(error.name().as_str().starts_with(ERROR_PREFIX));
    }

    #[test]
    fn the_proxy_calls_the_names_the_constants_and_the_xml_give() {
        use zbus::proxy::Defaults;
        let default = |name: Option<&str>| name.map(str::to_owned);
        assert_eq!(
            default(ManagerProxy::INTERFACE.as_ref().map(|n| n.as_str())),
            Some(INTERFACE.to_owned())
        );
        assert_eq!(
            default(ManagerProxy::DESTINATION.as_ref().map(|n| n.as_str())),
            Some(BUS_NAME.to_owned())
        );
        assert_eq!(
            default(ManagerProxy::PATH.as_ref().map(|p| p.as_str())),
            Some(OBJECT_PATH.to_owned())
        );
        let xml = include_str!("../dbus/org.tokd.tokd1.Manager.xml");
        assert!(
            xml.contains(&format!("<interface name=\"{INTERFACE}\">")),
            "the XML names another interface"
        );
    }

    #[test]
    fn a_named_error_reply_arrives_as_its_variant() {
        let reply = |name: &str| {
            let message = zbus::message::Message::method_call("/", "Ping")
                .build(&())
                .expect("message");
            zbus::Error::MethodError(
                zbus::names::OwnedErrorName::try_from(name).expect("name"),
                Some("what to do".to_owned()),
                message,
            )
        };
        for error in [
            Error::UnknownInstallation("what to do".into()),
            Error::NeedsLogin("what to do".into()),
            Error::Misconfigured("what to do".into()),
            Error::ProviderUnavailable("what to do".into()),
            Error::InvalidArgument("what to do".into()),
            Error::AccessDenied("what to do".into()),
            Error::Stopping("what to do".into()),
            Error::Locked("what to do".into()),
        ] {
            let name = error.name().to_string();
            let back = Error::from(reply(&name));
            assert_eq!(back.name().as_str(), name);
            assert_eq!(back.description(), Some("what to do"));
        }
        // Anything else is a transport error.
        assert!(matches!(
            Error::from(reply("org.freedesktop.DBus.Error.ServiceUnknown")),
            Error::ZBus(_)
        ));
    }
}
