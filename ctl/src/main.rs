//! tokctl: asks the tokd daemon over D-Bus for a token (and the rest of
//! the commands in SPEC.md). One call per run on a current-thread runtime;
//! no daemon code is compiled in.
//!
//! stdout carries only the result. On failure stdout stays empty, stderr
//! has one line (what happened, what to do) and the exit status says which
//! kind of failure it was (see [`EXIT_HELP`]).

use clap::{Parser, Subcommand, ValueEnum};
use futures_util::StreamExt;
use serde::Serialize;
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokd_shared::{ERROR_PREFIX, InstallationInfo, ManagerProxy};

/// Exit statuses. Part of the interface: scripts branch on them.
mod exit {
    pub const OTHER: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const UNKNOWN_INSTALLATION: u8 = 3;
    pub const NEEDS_LOGIN: u8 = 4;
    pub const PROVIDER_FAILING: u8 = 5;
    pub const MISCONFIGURED: u8 = 6;
    pub const DAEMON_UNREACHABLE: u8 = 7;
}

const EXIT_HELP: &str = "\
Exit status:
  0  success
  1  other failure (a login refused or timed out, access denied)
  2  bad usage, or an argument the daemon refused
  3  no installation has that name
  4  a login is needed: run `tokctl login NAME`
  5  the provider is failing and no valid token is held; tokd retries by itself
  6  the consumer or config is wrong: fix it, then `tokctl reload`
  7  tokd cannot be reached (not running, no session bus, stopping)

On failure stdout is empty and stderr has one line saying what to do.

tokctl reaches tokd over its private socket, $XDG_RUNTIME_DIR/tokd/bus,
when it answers, else over the session bus (which starts tokd if needed).";

/// tokctl: get fresh OAuth 2.0 access tokens from the tokd daemon.
///
/// git clone "https://x-token-auth:$(tokctl get bitbucket)@bitbucket.org/team/repo.git"
#[derive(Debug, Parser)]
#[command(name = "tokctl", version, after_help = EXIT_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print an access token valid for at least --min-valid.
    Get {
        name: String,
        /// Refresh first if the held token expires sooner than this
        /// (e.g. 90s, 5m, or plain seconds).
        #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
        min_valid: Duration,
        /// raw: the token; header: `Authorization: Bearer TOKEN`; json: an
        /// object with access_token, token_type, expires_at, expires_in.
        #[arg(long, value_enum, default_value_t = Format::Raw)]
        format: Format,
    },
    /// Every installation: state, expiry, next refresh.
    List {
        /// One JSON array (the fields are documented in the README).
        #[arg(long)]
        json: bool,
    },
    /// One installation in detail (or all of them).
    Status {
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Authorize an installation in the browser (authorization code + PKCE).
    Login {
        name: String,
        /// Print the URL instead of opening a browser.
        #[arg(long)]
        no_browser: bool,
        /// Finish with a code copied by hand from the address the browser
        /// landed on (`-` reads it from stdin, keeping it out of `ps`).
        /// Codes may start with `-`.
        #[arg(long, value_name = "CODE", allow_hyphen_values = true)]
        code: Option<String>,
        /// How long to wait for the browser.
        #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Refresh now.
    Refresh { name: String },
    /// Revoke the grant at the provider (if it can) and forget the tokens.
    Revoke { name: String },
    /// Make tokd re-read its config file.
    Reload,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Raw,
    Header,
    Json,
}

/// A failure: its exit status and its one line.
#[derive(Debug)]
struct Failure {
    status: u8,
    message: String,
}

impl Failure {
    fn new(status: u8, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl From<zbus::Error> for Failure {
    fn from(error: zbus::Error) -> Self {
        classify(&error)
    }
}

fn classify(error: &zbus::Error) -> Failure {
    const UNREACHABLE: &str = "tokd is not running and could not be started; start it with `systemctl --user start tokd` (its log: `journalctl --user -u tokd`)";
    let named = match error {
        zbus::Error::MethodError(name, detail, _) => {
            Some((name.as_str().to_owned(), detail.clone().unwrap_or_default()))
        }
        zbus::Error::FDO(fdo) => {
            use zbus::DBusError;
            Some((
                fdo.name().as_str().to_owned(),
                fdo.description().unwrap_or_default().to_owned(),
            ))
        }
        _ => None,
    };
    match (named, error) {
        (Some((name, detail)), _) => {
            let name = name.as_str();
            let status = match name.strip_prefix(ERROR_PREFIX).unwrap_or("") {
                ".UnknownInstallation" => exit::UNKNOWN_INSTALLATION,
                ".NeedsLogin" => exit::NEEDS_LOGIN,
                ".ProviderUnavailable" => exit::PROVIDER_FAILING,
                ".Misconfigured" => exit::MISCONFIGURED,
                ".InvalidArgument" => exit::USAGE,
                ".Stopping" => exit::DAEMON_UNREACHABLE,
                "" if name.starts_with("org.freedesktop.DBus.Error.ServiceUnknown")
                    || name.starts_with("org.freedesktop.DBus.Error.NameHasNoOwner")
                    || name.starts_with("org.freedesktop.DBus.Error.Spawn")
                    || name.starts_with("org.freedesktop.DBus.Error.NoReply")
                    || name.starts_with("org.freedesktop.DBus.Error.Disconnected") =>
                {
                    return Failure::new(exit::DAEMON_UNREACHABLE, UNREACHABLE);
                }
                _ => exit::OTHER,
            };
            let message = if detail.is_empty() {
                name.to_owned()
            } else {
                detail
            };
            Failure::new(status, message)
        }
        (
            None,
            zbus::Error::InputOutput(_)
            | zbus::Error::Address(_)
            | zbus::Error::Handshake(_)
            | zbus::Error::NameTaken,
        ) => Failure::new(
            exit::DAEMON_UNREACHABLE,
            format!("cannot reach the session bus ({error}); is DBUS_SESSION_BUS_ADDRESS set?"),
        ),
        (None, other) => Failure::new(exit::OTHER, format!("D-Bus: {other}")),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let status = if error.use_stderr() { exit::USAGE } else { 0 };
            let _ = error.print();
            return ExitCode::from(status);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(&Failure::new(exit::OTHER, error.to_string())),
    };
    match runtime.block_on(run(cli.command)) {
        Ok(output) => {
            let mut stdout = std::io::stdout().lock();
            if stdout
                .write_all(output.as_bytes())
                .and_then(|()| stdout.flush())
                .is_err()
            {
                // A closed pipe: nothing sensible left to say.
                return ExitCode::from(exit::OTHER);
            }
            ExitCode::SUCCESS
        }
        Err(failure) => fail(&failure),
    }
}

fn fail(failure: &Failure) -> ExitCode {
    eprintln!("tokctl: {}", one_line(&failure.message));
    ExitCode::from(failure.status)
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Runs one command; returns what goes to stdout.
async fn run(command: Command) -> Result<String, Failure> {
    // Waiting for LoginFinished needs the bus: signals are not sent on
    // the private socket.
    let waits_for_a_signal = matches!(command, Command::Login { code: None, .. });
    let connection = connect(waits_for_a_signal).await?;
    let proxy = ManagerProxy::builder(&connection)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await?;
    match command {
        Command::Get {
            name,
            min_valid,
            format,
        } => {
            let secs = u32::try_from(min_valid.as_secs()).unwrap_or(u32::MAX);
            let (token, expires_at, token_type, warning) = proxy.get_token(&name, secs).await?;
            if !warning.is_empty() {
                eprintln!("tokctl: warning: {}", one_line(&warning));
            }
            Ok(format_token(&token, expires_at, &token_type, format, now()))
        }
        Command::List { json } => {
            let list = proxy.list().await?;
            Ok(if json {
                to_json(&list.iter().map(JsonInstallation::from).collect::<Vec<_>>())
            } else {
                table(&list, now())
            })
        }
        Command::Status { name, json } => {
            let list = match name {
                Some(name) => vec![proxy.status(&name).await?],
                None => proxy.list().await?,
            };
            Ok(match (json, list.as_slice()) {
                (true, [one]) => to_json(&JsonInstallation::from(one)),
                (true, _) => to_json(&list.iter().map(JsonInstallation::from).collect::<Vec<_>>()),
                (false, _) => list
                    .iter()
                    .map(|info| details(info, now()))
                    .collect::<Vec<_>>()
                    .join("\n"),
            })
        }
        Command::Login {
            name,
            no_browser,
            code,
            timeout,
        } => login(&proxy, &name, no_browser, code, timeout).await,
        Command::Refresh { name } => {
            let expires_at = proxy.refresh(&name).await?;
            eprintln!(
                "tokctl: refreshed `{name}`; {}",
                expiry_phrase(expires_at, now())
            );
            Ok(String::new())
        }
        Command::Revoke { name } => {
            let message = proxy.revoke(&name).await?;
            eprintln!("tokctl: {message}");
            Ok(String::new())
        }
        Command::Reload => {
            let summary = proxy.reload().await?;
            eprintln!("tokctl: reloaded: {summary}");
            Ok(String::new())
        }
    }
}

/// tokd's private socket if it answers (one process hop fewer, no
/// `Hello`), else the session bus, which also starts tokd on demand.
async fn connect(needs_the_bus: bool) -> Result<zbus::Connection, Failure> {
    if !needs_the_bus
        && let Some(path) = tokd_shared::private_socket_path()
        // A missing or stale socket (tokd killed) fails here at once.
        && let Ok(stream) = std::os::unix::net::UnixStream::connect(path)
        && let Ok(connection) = zbus::connection::Builder::unix_stream(stream)
            .p2p()
            .build()
            .await
    {
        return Ok(connection);
    }
    zbus::connection::Builder::session()
        .build()
        .await
        .map_err(|error| {
            Failure::new(
                exit::DAEMON_UNREACHABLE,
                format!("cannot reach the session bus ({error}); is DBUS_SESSION_BUS_ADDRESS set?"),
            )
        })
}

async fn login(
    proxy: &ManagerProxy<'_>,
    name: &str,
    no_browser: bool,
    code: Option<String>,
    timeout: Duration,
) -> Result<String, Failure> {
    if let Some(code) = code {
        let code = if code == "-" {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).map_err(|e| {
                Failure::new(exit::USAGE, format!("cannot read the code from stdin: {e}"))
            })?;
            line.trim().to_owned()
        } else {
            code
        };
        let expires_at = proxy.complete_login(name, &code).await?;
        eprintln!(
            "tokctl: logged in: `{name}` holds a token; {}",
            expiry_phrase(expires_at, now())
        );
        return Ok(String::new());
    }
    // Subscribe before starting, so the answer cannot slip past.
    let mut finished = proxy.receive_login_finished().await?;
    let (url, listening) = proxy.begin_login(name).await?;
    let opened = !no_browser && has_display() && open_in_browser(&url);
    if opened {
        eprintln!("tokctl: opened the login page of `{name}` in your browser");
    } else {
        // The URL is the result a human without a browser needs: stdout,
        // at once, since the wait follows.
        print_now(&format!("{url}\n"));
        eprintln!("tokctl: open the URL above in a browser to log in to `{name}`");
    }
    if !listening {
        eprintln!(
            "tokctl: then run `tokctl login {name} --code CODE` with the `code` from the address the browser lands on"
        );
        return Ok(String::new());
    }
    eprintln!(
        "tokctl: waiting up to {} for the browser…",
        humantime::format_duration(timeout)
    );
    let wait = async {
        while let Some(signal) = finished.next().await {
            let Ok(args) = signal.args() else { continue };
            if args.name == name {
                return Some((args.success, args.message));
            }
        }
        None
    };
    match tokio::time::timeout(timeout, wait).await {
        Ok(Some((true, message))) => {
            eprintln!("tokctl: {message}");
            Ok(String::new())
        }
        Ok(Some((false, message))) => Err(Failure::new(exit::NEEDS_LOGIN, message)),
        Ok(None) => Err(Failure::new(
            exit::DAEMON_UNREACHABLE,
            "tokd went away during the login; run `tokctl login` again",
        )),
        Err(_) => Err(Failure::new(
            exit::OTHER,
            format!(
                "no answer from the browser within {}; run `tokctl login {name}` again",
                humantime::format_duration(timeout)
            ),
        )),
    }
}

fn print_now(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
}

fn has_display() -> bool {
    ["DISPLAY", "WAYLAND_DISPLAY"]
        .iter()
        .any(|var| std::env::var_os(var).is_some_and(|v| !v.is_empty()))
}

fn open_in_browser(url: &str) -> bool {
    std::process::Command::new("xdg-open")
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .is_ok()
}

/// `90`, `90s`, `5m`, `1h 30m`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(text).map_err(|e| format!("{e} (try 90s, 5m or 1h)"))
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn format_token(
    token: &str,
    expires_at: i64,
    token_type: &str,
    format: Format,
    now: i64,
) -> String {
    match format {
        Format::Raw => format!("{token}\n"),
        Format::Header => format!("Authorization: {} {token}\n", header_scheme(token_type)),
        Format::Json => {
            #[derive(Serialize)]
            struct JsonToken<'a> {
                access_token: &'a str,
                token_type: String,
                expires_at: Option<i64>,
                expires_in: Option<i64>,
            }
            to_json(&JsonToken {
                access_token: token,
                token_type: header_scheme(token_type),
                expires_at: (expires_at != 0).then_some(expires_at),
                expires_in: (expires_at != 0).then(|| (expires_at - now).max(0)),
            })
        }
    }
}

/// `bearer` → `Bearer` (RFC 6750 spelling); other types capitalized.
fn header_scheme(token_type: &str) -> String {
    let lower = token_type.to_ascii_lowercase();
    let mut chars = lower.chars();
    match chars.next() {
        Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
        None => "Bearer".to_owned(),
    }
}

fn to_json<T: Serialize>(value: &T) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

/// The stable `--json` form of one installation (documented in the README).
#[derive(Debug, Serialize)]
struct JsonInstallation<'a> {
    name: &'a str,
    consumer: &'a str,
    grant: &'a str,
    state: &'a str,
    message: Option<&'a str>,
    scopes: Vec<&'a str>,
    expires_at: Option<i64>,
    last_refresh: Option<i64>,
    next_refresh: Option<i64>,
    last_error: Option<&'a str>,
}

impl<'a> From<&'a InstallationInfo> for JsonInstallation<'a> {
    fn from(info: &'a InstallationInfo) -> Self {
        let time = |t: i64| (t != 0).then_some(t);
        let text = |s: &'a str| (!s.is_empty()).then_some(s);
        Self {
            name: &info.name,
            consumer: &info.consumer,
            grant: &info.grant,
            state: &info.state,
            message: text(&info.message),
            scopes: info.scopes.split_whitespace().collect(),
            expires_at: time(info.expires_at),
            last_refresh: time(info.last_refresh),
            next_refresh: time(info.next_refresh),
            last_error: text(&info.last_error),
        }
    }
}

/// `in 1h 59m`, `3m ago`, `-`.
fn relative(time: i64, now: i64) -> String {
    if time == 0 {
        return "-".to_owned();
    }
    let delta = time - now;
    let span = humantime::format_duration(Duration::from_secs(rounded(delta.unsigned_abs())));
    if delta >= 0 {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

/// Keeps the two largest units: 1h 59m, 2m 5s, 3d 4h.
fn rounded(secs: u64) -> u64 {
    match secs {
        0..3600 => secs,
        3600..86_400 => secs - secs % 60,
        _ => secs - secs % 3600,
    }
}

fn expiry_phrase(expires_at: i64, now: i64) -> String {
    if expires_at == 0 {
        "the token does not expire".to_owned()
    } else {
        format!("the token expires {}", relative(expires_at, now))
    }
}

fn table(list: &[InstallationInfo], now: i64) -> String {
    if list.is_empty() {
        return "no installations are configured (see ~/.config/tokd/config.toml, then `tokctl reload`)\n"
            .to_owned();
    }
    let rows: Vec<[String; 5]> = list
        .iter()
        .map(|info| {
            let note = if info.message.is_empty() {
                info.last_error.clone()
            } else {
                info.message.clone()
            };
            [
                info.name.clone(),
                info.state.clone(),
                relative(info.expires_at, now),
                relative(info.next_refresh, now),
                one_line(&note),
            ]
        })
        .collect();
    let header = ["NAME", "STATE", "EXPIRES", "NEXT REFRESH", "NOTE"].map(str::to_owned);
    let mut widths = [0usize; 5];
    for row in std::iter::once(&header).chain(&rows) {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn details(info: &InstallationInfo, now: i64) -> String {
    let mut out = format!("{}\n", info.name);
    let mut field = |key: &str, value: String| {
        if !value.is_empty() {
            out.push_str(&format!("  {key:<13} {value}\n"));
        }
    };
    field("state", info.state.clone());
    field("message", one_line(&info.message));
    field("consumer", info.consumer.clone());
    field("grant", info.grant.clone());
    field("scopes", info.scopes.clone());
    field("expires", relative(info.expires_at, now));
    field("last refresh", relative(info.last_refresh, now));
    field("next refresh", relative(info.next_refresh, now));
    field("last error", one_line(&info.last_error));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_formats() {
        assert_eq!(format_token("t", 0, "bearer", Format::Raw, 0), "t\n");
        assert_eq!(
            format_token("t", 0, "bearer", Format::Header, 0),
            "Authorization: Bearer t\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(&format_token("t", 1100, "bearer", Format::Json, 1000))
                .expect("json");
        assert_eq!(
            json,
            serde_json::json!({"access_token": "t", "token_type": "Bearer", "expires_at": 1100, "expires_in": 100})
        );
        let json: serde_json::Value =
            serde_json::from_str(&format_token("t", 0, "mac", Format::Json, 1000)).expect("json");
        assert_eq!(json["expires_at"], serde_json::Value::Null);
        assert_eq!(json["token_type"], "Mac");
    }

    #[test]
    fn durations_take_plain_seconds_and_units() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn relative_times_keep_two_units() {
        assert_eq!(relative(0, 100), "-");
        assert_eq!(relative(100 + 7170, 100), "in 1h 59m");
        assert_eq!(relative(100 - 125, 100), "2m 5s ago");
    }

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
            (
                "org.freedesktop.DBus.Error.ServiceUnknown",
                exit::DAEMON_UNREACHABLE,
            ),
        ] {
            assert_eq!(classify(&method_error(name)).status, status, "{name}");
        }
        assert_eq!(
            classify(&method_error("org.tokd.tokd1.Error.NeedsLogin")).message,
            "what to do"
        );
    }

    #[test]
    fn a_code_that_starts_with_a_dash_is_a_value() {
        use clap::Parser as _;
        let cli = Cli::try_parse_from(["tokctl", "login", "m", "--code", "-Yx_9"])
            .expect("codes are base64url and may start with '-'");
        match cli.command {
            Command::Login { code, .. } => assert_eq!(code.as_deref(), Some("-Yx_9")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_table_lines_up_and_shows_the_note() {
        let info = InstallationInfo {
            name: "bitbucket".into(),
            consumer: "bb".into(),
            grant: "authorization_code".into(),
            state: "needs-login".into(),
            message: "run `tokctl login bitbucket`".into(),
            scopes: String::new(),
            expires_at: 0,
            last_refresh: 0,
            next_refresh: 0,
            last_error: String::new(),
        };
        let text = table(&[info], 0);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[1].starts_with("bitbucket  needs-login"), "{text}");
        assert!(lines[1].ends_with("run `tokctl login bitbucket`"), "{text}");
    }
}
