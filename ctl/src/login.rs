//! `tokctl login`: in the browser (tokd listens on the loopback redirect,
//! or the code is copied by hand), or with a code entered on another
//! device. The login itself is tokd's; tokctl starts it, shows the user
//! what to do, and waits for the `LoginFinished` signal.

use crate::failure::{Failure, exit};
use crate::output::expiry_phrase;
use crate::say;
use crate::{DEFAULT_LOGIN_WAIT, Deadline, now};
use futures_util::StreamExt;
use std::time::Duration;
use tokd_shared::{Error, ManagerProxy};

/// How to log in.
#[derive(Debug)]
pub enum Flow {
    /// Finish with a code copied by hand (`-`: from stdin).
    Code(String),
    /// The browser flow; `open`: with `xdg-open`, else the URL is printed.
    Browser { open: bool },
    /// The device flow.
    Device,
    /// No display here: the device flow when the consumer has one (a
    /// browser on another machine cannot reach a loopback redirect on
    /// this one), else the browser flow with the URL printed.
    DeviceIfOffered,
}

impl Flow {
    /// The login a human here gets without saying which: the browser
    /// where there is a display, else the device flow when offered.
    pub fn default_here() -> Self {
        if has_display() {
            Self::Browser { open: true }
        } else {
            Self::DeviceIfOffered
        }
    }
}

pub async fn login(
    proxy: &ManagerProxy<'_>,
    deadline: &Deadline,
    name: &str,
    flow: Flow,
    timeout: Option<Duration>,
) -> Result<String, Failure> {
    let open = match flow {
        Flow::Code(code) => return complete(proxy, deadline, name, code).await,
        Flow::Device => return device(proxy, deadline, name, timeout, false).await,
        Flow::DeviceIfOffered => match device(proxy, deadline, name, timeout, true).await {
            Err(failure) if failure.status == NOT_OFFERED => false,
            outcome => return outcome,
        },
        Flow::Browser { open } => open,
    };
    browser(
        proxy,
        deadline,
        name,
        open,
        timeout.unwrap_or(DEFAULT_LOGIN_WAIT),
    )
    .await
}

/// The longest tokd waits for a browser login.
const MAX_LOGIN_WAIT: Duration = Duration::from_secs(600);

/// How long past a device code's expiry tokctl waits for tokd's verdict.
const DEVICE_GRACE: Duration = Duration::from_secs(15);

/// Not an exit status: the device flow was tried and is not offered.
const NOT_OFFERED: u8 = u8::MAX;

async fn complete(
    proxy: &ManagerProxy<'_>,
    deadline: &Deadline,
    name: &str,
    code: String,
) -> Result<String, Failure> {
    let code = if code == "-" {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map_err(|e| {
            Failure::new(exit::USAGE, format!("cannot read the code from stdin: {e}"))
        })?;
        line.trim().to_owned()
    } else {
        code
    };
    let expires_at = deadline.bound(proxy.complete_login(name, &code)).await??;
    say::line(&format!(
        "logged in: `{name}` holds a token; {}",
        expiry_phrase(expires_at, now())
    ));
    Ok(String::new())
}

async fn browser(
    proxy: &ManagerProxy<'_>,
    deadline: &Deadline,
    name: &str,
    open: bool,
    wait: Duration,
) -> Result<String, Failure> {
    if wait > MAX_LOGIN_WAIT {
        return Err(Failure::new(
            exit::USAGE,
            format!(
                "tokd waits at most {} for a browser login (then it forgets the login); use --timeout {} or less",
                humantime::format_duration(MAX_LOGIN_WAIT),
                humantime::format_duration(MAX_LOGIN_WAIT)
            ),
        ));
    }
    // Subscribe before starting, so the answer cannot slip past.
    let finished = deadline.bound(proxy.receive_login_finished()).await??;
    let owner = watch_tokd(proxy, deadline).await?;
    let secs = u32::try_from(wait.as_secs()).unwrap_or(u32::MAX).max(1);
    let (url, listening) = deadline
        .bound(proxy.begin_login_within(name, secs))
        .await??;
    if open && open_in_browser(&url) {
        say::line(&format!(
            "opened the login page of `{name}` in your browser"
        ));
    } else {
        // The URL is the result a human without a browser needs: stdout,
        // at once, since the wait follows.
        say::out(&format!("{url}\n"));
        say::line(&format!(
            "open the URL above in a browser to log in to `{name}`"
        ));
    }
    if !listening {
        say::line(&format!(
            "then run `tokctl login {name} --code CODE` with the `code` from the address the browser lands on"
        ));
        return Ok(String::new());
    }
    say::line(&format!(
        "waiting up to {} for the browser…",
        humantime::format_duration(wait)
    ));
    finish(finished, owner, name, wait, "the browser").await
}

/// The device flow. `trying`: chosen by tokctl (no display), so a
/// consumer without it is not a failure but a reason to use the browser.
async fn device(
    proxy: &ManagerProxy<'_>,
    deadline: &Deadline,
    name: &str,
    timeout: Option<Duration>,
    trying: bool,
) -> Result<String, Failure> {
    let finished = deadline.bound(proxy.receive_login_finished()).await??;
    let owner = watch_tokd(proxy, deadline).await?;
    let (uri, complete, user_code, expires_at) =
        match deadline.bound(proxy.begin_device_login(name)).await? {
            Ok(started) => started,
            Err(Error::InvalidArgument(_)) if trying => {
                return Err(Failure::new(NOT_OFFERED, String::new()));
            }
            Err(error) => return Err(error.into()),
        };
    if trying {
        say::line(&format!(
            "no display here, so `{name}` logs in with a code entered on another device (`--no-browser` for the browser flow)"
        ));
    }
    // The address to open, for a human or for a QR code maker: stdout.
    say::out(&format!(
        "{}\n",
        if complete.is_empty() { &uri } else { &complete }
    ));
    let left = u64::try_from(expires_at - now()).unwrap_or(0);
    say::line(&format!(
        "to log in to `{name}`, open {uri} on any device and enter the code {user_code} (it expires in {})",
        humantime::format_duration(Duration::from_secs(left))
    ));
    // A little past the code's expiry: tokd says when it has expired.
    let wait = timeout.unwrap_or(Duration::from_secs(left) + DEVICE_GRACE);
    finish(finished, owner, name, wait, "the provider").await
}

/// Subscribes to the loss of tokd's bus name: a tokd that stops or dies
/// during a login takes the login with it, and no `LoginFinished` comes.
async fn watch_tokd(
    proxy: &ManagerProxy<'_>,
    deadline: &Deadline,
) -> Result<zbus::fdo::NameOwnerChangedStream, Failure> {
    let dbus = deadline
        .bound(zbus::fdo::DBusProxy::new(proxy.inner().connection()))
        .await?
        .map_err(|error| Failure::new(exit::DAEMON_UNREACHABLE, error.to_string()))?;
    deadline
        .bound(dbus.receive_name_owner_changed_with_args(&[(0, tokd_shared::BUS_NAME)]))
        .await?
        .map_err(|error| Failure::new(exit::DAEMON_UNREACHABLE, error.to_string()))
}

/// Waits for `LoginFinished` of `name`, or for tokd to go away.
async fn finish(
    finished: tokd_shared::LoginFinishedStream,
    owner: zbus::fdo::NameOwnerChangedStream,
    name: &str,
    wait: Duration,
    from: &str,
) -> Result<String, Failure> {
    enum Heard {
        Finished(tokd_shared::LoginFinished),
        Owner(zbus::fdo::NameOwnerChanged),
    }
    let mut heard =
        futures_util::stream::select(finished.map(Heard::Finished), owner.map(Heard::Owner));
    let answer = async {
        // Both end when the bus connection is gone.
        while let Some(heard) = heard.next().await {
            match heard {
                Heard::Finished(signal) => {
                    let Ok(args) = signal.args() else { continue };
                    if args.name == name {
                        return Some((args.success, args.message));
                    }
                }
                Heard::Owner(change) => {
                    if change.args().is_ok_and(|args| args.new_owner.is_none()) {
                        return None;
                    }
                }
            }
        }
        None
    };
    match tokio::time::timeout(wait, answer).await {
        Ok(Some((true, message))) => {
            say::line(&message);
            Ok(String::new())
        }
        Ok(Some((false, message))) => Err(Failure::new(exit::NEEDS_LOGIN, message)),
        Ok(None) => Err(Failure::new(
            exit::DAEMON_UNREACHABLE,
            format!("tokd went away during the login; run `tokctl login {name}` again"),
        )),
        Err(_) => Err(Failure::new(
            exit::OTHER,
            format!(
                "no answer from {from} within {}; run `tokctl login {name}` again",
                humantime::format_duration(wait)
            ),
        )),
    }
}

pub fn has_display() -> bool {
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
