//! What a failed tokctl run exits with and says: one status per kind of
//! failure (part of the interface: scripts branch on them) and one line.

use tokd_shared::Error;

/// Exit statuses. Part of the interface: scripts branch on them.
pub mod exit {
    pub const OTHER: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const UNKNOWN_INSTALLATION: u8 = 3;
    pub const NEEDS_LOGIN: u8 = 4;
    pub const PROVIDER_FAILING: u8 = 5;
    pub const MISCONFIGURED: u8 = 6;
    pub const DAEMON_UNREACHABLE: u8 = 7;
    pub const LOCKED: u8 = 8;
    pub const CANNOT_START: u8 = 9;
}

/// A failure: its exit status and its one line.
#[derive(Debug)]
pub struct Failure {
    pub status: u8,
    pub message: String,
}

impl Failure {
    pub fn new(status: u8, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

/// The exit status and sentence of each error: the daemon's named errors
/// by their variant, transport failures by what they mean.
impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        let status = match &error {
            Error::UnknownInstallation(_) => exit::UNKNOWN_INSTALLATION,
            Error::NeedsLogin(_) => exit::NEEDS_LOGIN,
            Error::ProviderUnavailable(_) => exit::PROVIDER_FAILING,
            Error::Misconfigured(_) => exit::MISCONFIGURED,
            Error::InvalidArgument(_) => exit::USAGE,
            Error::Stopping(_) => exit::DAEMON_UNREACHABLE,
            Error::AccessDenied(_) => exit::OTHER,
            Error::Locked(_) => exit::LOCKED,
            Error::ZBus(_) => return transport_failure(error),
        };
        use zbus::DBusError as _;
        let message = match error.description() {
            Some(sentence) if !sentence.is_empty() => sentence.to_owned(),
            _ => error.name().to_string(),
        };
        Failure::new(status, message)
    }
}

impl From<zbus::Error> for Failure {
    fn from(error: zbus::Error) -> Self {
        Error::from(error).into()
    }
}

/// A failure that is not one of the daemon's named errors: tokd absent or
/// not startable, no bus, or something unexpected.
fn transport_failure(error: Error) -> Failure {
    const UNREACHABLE: &str = "tokd is not running and could not be started; start it with `systemctl --user start tokd` (its log: `journalctl --user -u tokd`)";
    use zbus::fdo::Error as Fdo;
    let Error::ZBus(error) = error else {
        return Failure::new(exit::OTHER, error.to_string());
    };
    match zbus::fdo::Error::from(error) {
        Fdo::ServiceUnknown(_)
        | Fdo::NameHasNoOwner(_)
        | Fdo::NoReply(_)
        | Fdo::Disconnected(_)
        | Fdo::SpawnExecFailed(_)
        | Fdo::SpawnForkFailed(_)
        | Fdo::SpawnChildExited(_)
        | Fdo::SpawnChildSignaled(_)
        | Fdo::SpawnFailed(_)
        | Fdo::SpawnFailedToSetup(_)
        | Fdo::SpawnConfigInvalid(_)
        | Fdo::SpawnServiceNotValid(_)
        | Fdo::SpawnServiceNotFound(_)
        | Fdo::SpawnPermissionsInvalid(_)
        | Fdo::SpawnFileInvalid(_)
        | Fdo::SpawnNoMemory(_) => match start_error() {
            Some(reason) => Failure::new(
                exit::CANNOT_START,
                format!(
                    "tokd cannot start: {reason}; fix {} and run the command again (`tokd --check-config` checks the config file)",
                    if reason.contains("; ") {
                        "those"
                    } else {
                        "that"
                    }
                ),
            ),
            None => Failure::new(exit::DAEMON_UNREACHABLE, UNREACHABLE),
        },
        Fdo::ZBus(
            error @ (zbus::Error::InputOutput(_)
            | zbus::Error::Address(_)
            | zbus::Error::Handshake(_)
            | zbus::Error::NameTaken),
        ) => Failure::new(
            exit::DAEMON_UNREACHABLE,
            format!("cannot reach the session bus ({error}); is DBUS_SESSION_BUS_ADDRESS set?"),
        ),
        Fdo::ZBus(other) => Failure::new(exit::OTHER, format!("D-Bus: {other}")),
        other => {
            use zbus::DBusError as _;
            Failure::new(
                exit::OTHER,
                other
                    .description()
                    .unwrap_or(other.name().as_str())
                    .to_owned(),
            )
        }
    }
}

/// Why the last tokd could not start, as it wrote in the runtime folder
/// (`None`: it did not, or the file is not this user's regular file). Its
/// lines (one per problem) become one, `; ` between.
fn start_error() -> Option<String> {
    use std::io::Read as _;
    use std::os::unix::fs::MetadataExt as _;
    let path = tokd_shared::start_error_path()?;
    let meta = std::fs::symlink_metadata(&path).ok()?;
    if !meta.is_file() || meta.uid() != rustix::process::getuid().as_raw() {
        return None;
    }
    let mut text = String::new();
    std::fs::File::open(&path)
        .ok()?
        .take(64 * 1024)
        .read_to_string(&mut text)
        .ok()?;
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    (!lines.is_empty()).then(|| lines.join("; "))
}

/// A usage error on one line, as every tokctl failure is: what is wrong,
/// then the usage it broke.
pub fn usage_line(error: &clap::Error) -> String {
    let rendered = error.render().to_string();
    let mut parts = Vec::new();
    let mut usage = None;
    for line in rendered.lines().map(str::trim) {
        if line.is_empty() || line.starts_with("For more information") {
            continue;
        }
        match line.strip_prefix("Usage: ") {
            Some(rest) => usage = Some(rest.to_owned()),
            None => parts.push(line.trim_start_matches("error: ").to_owned()),
        }
    }
    let mut text = format!("tokctl: {}", parts.join(" "));
    if let Some(usage) = usage {
        text.push_str(&format!(" (usage: {usage})"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_errors_map_to_their_exit_statuses() {
        let method_error = |name: &str| {
            let message = zbus::message::Message::method_call("/", "Ping")
                .build(&())
                .expect("message");
            zbus::Error::MethodError(
                zbus::names::OwnedErrorName::try_from(name).expect("name"),
                Some("what to do".to_owned()),
                message,
            )
        };
        for (name, status) in [
            (
                "org.tokd.tokd1.Error.UnknownInstallation",
                exit::UNKNOWN_INSTALLATION,
            ),
            ("org.tokd.tokd1.Error.NeedsLogin", exit::NEEDS_LOGIN),
            (
                "org.tokd.tokd1.Error.ProviderUnavailable",
                exit::PROVIDER_FAILING,
            ),
            ("org.tokd.tokd1.Error.Misconfigured", exit::MISCONFIGURED),
            ("org.tokd.tokd1.Error.InvalidArgument", exit::USAGE),
            ("org.tokd.tokd1.Error.AccessDenied", exit::OTHER),
            ("org.tokd.tokd1.Error.Stopping", exit::DAEMON_UNREACHABLE),
            ("org.tokd.tokd1.Error.Locked", exit::LOCKED),
            (
                "org.freedesktop.DBus.Error.ServiceUnknown",
                exit::DAEMON_UNREACHABLE,
            ),
        ] {
            assert_eq!(Failure::from(method_error(name)).status, status, "{name}");
        }
        assert_eq!(
            Failure::from(method_error("org.tokd.tokd1.Error.NeedsLogin")).message,
            "what to do"
        );
    }
}
