//! Desktop notifications: when an installation needs a human (its
//! authorization is lost, or a caller asked for one never logged in),
//! one `org.freedesktop.Notifications` notification per episode (not one
//! per refused call), naming the installation and the reason, with a "Log
//! in" action when the server has actions and tokd can finish the login by
//! itself. The action starts the login and opens the browser through the
//! `org.freedesktop.portal.OpenURI` portal, else `xdg-open`. An episode
//! ends (and its notification is closed) when the installation is valid
//! again. No notification server is not an error; `[daemon] notify =
//! false` turns all of it off.

use crate::broker::{Broker, Event};
use crate::sync::lock;
use crate::tasks::Tasks;
use futures_util::StreamExt as _;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokd_shared::InstallationState;
use tracing::{debug, info, warn};
use zbus::Variant as Value;

/// How long a call to the notification server may take: a stalled server
/// costs a task, never a refresh or a signal.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long opening the browser through the portal may take (the bus may
/// have to start it first).
const PORTAL_TIMEOUT: Duration = Duration::from_secs(30);
/// The action keys that start a login: ours, and the one servers invoke
/// when the notification itself is clicked.
const LOGIN_ACTIONS: [&str; 2] = ["login", "default"];

#[zbus::proxy(
    interface = "org.freedesktop.Notifications",
    default_service = "org.freedesktop.Notifications",
    default_path = "/org/freedesktop/Notifications"
)]
pub(super) trait Notifications {
    fn get_capabilities(&self) -> zbus::Result<Vec<String>>;

    #[allow(clippy::too_many_arguments)]
    fn notify(
        &self,
        app_name: &str,
        replaces_id: u32,
        app_icon: &str,
        summary: &str,
        body: &str,
        actions: &[&str],
        hints: HashMap<&str, Value<'_>>,
        expire_timeout: i32,
    ) -> zbus::Result<u32>;

    fn close_notification(&self, id: u32) -> zbus::Result<()>;

    #[zbus(signal)]
    fn action_invoked(&self, id: u32, action_key: String) -> zbus::Result<()>;
}

#[zbus::proxy(
    interface = "org.freedesktop.portal.OpenURI",
    default_service = "org.freedesktop.portal.Desktop",
    default_path = "/org/freedesktop/portal/desktop"
)]
trait OpenUri {
    #[zbus(name = "OpenURI")]
    fn open_uri(
        &self,
        parent_window: &str,
        uri: &str,
        options: HashMap<&str, Value<'_>>,
    ) -> zbus::Result<zbus::OwnedObjectPath>;
}

/// One installation's episode of needing a human.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Episode {
    /// Being sent, or no server took it.
    Unshown,
    /// Shown with this id.
    Shown(u32),
}

/// Watches the broker's events and tells the desktop.
#[derive(Debug, Clone)]
pub struct Notifier {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    connection: zbus::Connection,
    broker: Arc<Broker>,
    tasks: Tasks,
    episodes: Mutex<HashMap<String, Episode>>,
    /// Whether the action listener runs.
    listening: AtomicBool,
    /// Whether "no notification server" was logged already.
    told_none: AtomicBool,
    /// Woken when a notification's id is known.
    shown: tokio::sync::Notify,
}

impl Notifier {
    pub fn new(connection: zbus::Connection, broker: Arc<Broker>, tasks: Tasks) -> Self {
        Self {
            shared: Arc::new(Shared {
                connection,
                broker,
                tasks,
                episodes: Mutex::default(),
                listening: AtomicBool::new(false),
                told_none: AtomicBool::new(false),
                shown: tokio::sync::Notify::new(),
            }),
        }
    }

    /// Takes note of one broker event; any call to the desktop runs in a
    /// task of its own.
    pub fn observe(&self, event: &Event) {
        match event {
            Event::LoginWanted { name, message }
            | Event::StateChanged {
                name,
                state: InstallationState::NeedsLogin,
                message,
            } => self.wanted(name, message),
            Event::StateChanged {
                name,
                state:
                    InstallationState::Valid
                    | InstallationState::Failing
                    | InstallationState::Misconfigured,
                ..
            } => self.ended(name),
            _ => {}
        }
    }

    fn wanted(&self, name: &str, message: &str) {
        if !self.shared.broker.notifications_on() {
            debug!(installation = %name, "not notifying: notify = false");
            return;
        }
        {
            let mut episodes = lock(&self.shared.episodes);
            if episodes.contains_key(name) {
                return;
            }
            episodes.insert(name.to_owned(), Episode::Unshown);
        }
        let shared = self.shared.clone();
        let (name, message) = (name.to_owned(), message.to_owned());
        self.shared
            .tasks
            .spawn_until_stopped(async move { shared.show(name, message).await });
    }

    fn ended(&self, name: &str) {
        let Some(episode) = lock(&self.shared.episodes).remove(name) else {
            return;
        };
        if let Episode::Shown(id) = episode {
            let shared = self.shared.clone();
            self.shared
                .tasks
                .spawn_until_stopped(async move { shared.close(id).await });
        }
    }
}

impl Shared {
    async fn proxy(&self) -> zbus::Result<NotificationsProxy<'static>> {
        NotificationsProxy::builder(&self.connection)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
    }

    async fn show(self: Arc<Self>, name: String, message: String) {
        match tokio::time::timeout(CALL_TIMEOUT, self.send(&name, &message)).await {
            Ok(Ok(id)) => {
                let ended = match lock(&self.episodes).get_mut(&name) {
                    Some(episode) => {
                        *episode = Episode::Shown(id);
                        false
                    }
                    None => true,
                };
                self.shown.notify_waiters();
                // Logged in meanwhile: take it back.
                if ended {
                    self.close(id).await;
                }
            }
            Ok(Err(error)) => self.failed(&error),
            Err(_) => warn!(
                installation = %name,
                "the notification server did not answer within 5s; not notified"
            ),
        }
    }

    async fn send(self: &Arc<Self>, name: &str, message: &str) -> zbus::Result<u32> {
        let proxy = self.proxy().await?;
        let capabilities = proxy.get_capabilities().await?;
        let has = |capability: &str| capabilities.iter().any(|c| c == capability);
        let login = has("actions") && self.broker.login_finishes_by_itself(name);
        let actions: &[&str] = if login {
            &["default", "Log in", "login", "Log in"]
        } else {
            &[]
        };
        let body = if has("body-markup") {
            escape_markup(message)
        } else {
            message.to_owned()
        };
        // Listening before showing: a click cannot come before it.
        if login && !self.listening.swap(true, Ordering::SeqCst) {
            match proxy.receive_action_invoked().await {
                Ok(actions) => {
                    let shared = self.clone();
                    self.tasks
                        .spawn_until_stopped(async move { shared.listen(actions).await });
                }
                Err(error) => {
                    self.listening.store(false, Ordering::SeqCst);
                    return Err(error);
                }
            }
        }
        let hints = HashMap::from([("urgency", Value::U8(1))]);
        let id = proxy
            .notify(
                "tokd",
                0,
                "dialog-password",
                &format!("{name}: log in again"),
                &body,
                actions,
                hints,
                0,
            )
            .await?;
        info!(installation = %name, id, "notified the desktop that a login is needed");
        Ok(id)
    }

    fn failed(&self, error: &zbus::Error) {
        let absent = matches!(
            zbus::fdo::Error::from(error.clone()),
            zbus::fdo::Error::ServiceUnknown(_) | zbus::fdo::Error::NameHasNoOwner(_)
        );
        if absent {
            if !self.told_none.swap(true, Ordering::SeqCst) {
                info!("no notification server on the session bus; not notifying");
            }
        } else {
            warn!(%error, "cannot notify the desktop");
        }
    }

    async fn close(&self, id: u32) {
        let closed = tokio::time::timeout(CALL_TIMEOUT, async {
            self.proxy().await?.close_notification(id).await
        })
        .await;
        match closed {
            Ok(Ok(())) => {}
            Ok(Err(error)) => debug!(%error, id, "cannot close a notification"),
            Err(_) => debug!(
                id,
                "the notification server did not close a notification in time"
            ),
        }
    }

    /// Starts a login for each "Log in" the user clicks.
    async fn listen(self: Arc<Self>, mut actions: ActionInvokedStream) {
        while let Some(signal) = actions.next().await {
            let Ok(args) = signal.args() else { continue };
            if !LOGIN_ACTIONS.contains(&args.action_key.as_str()) {
                continue;
            }
            let (id, shared) = (args.id, self.clone());
            self.tasks.spawn_until_stopped(async move {
                if let Some(name) = shared.name_of(id).await {
                    shared.log_in(&name).await;
                }
            });
        }
    }

    /// The installation notification `id` is about. A click can arrive
    /// before tokd has read the id from the server's answer (both come
    /// from the server; they are handled by different tasks), so an
    /// unknown id is waited for a moment.
    async fn name_of(&self, id: u32) -> Option<String> {
        let deadline = tokio::time::Instant::now() + CALL_TIMEOUT;
        loop {
            let shown = self.shown.notified();
            let name = lock(&self.episodes)
                .iter()
                .find(|(_, episode)| **episode == Episode::Shown(id))
                .map(|(name, _)| name.clone());
            if name.is_some() {
                return name;
            }
            if tokio::time::timeout_at(deadline, shown).await.is_err() {
                return None;
            }
        }
    }

    async fn log_in(&self, name: &str) {
        let url = match self.broker.begin_login(name, None).await {
            Ok((url, _listening)) => url,
            Err(error) => {
                warn!(installation = %name, %error, "cannot start the login asked for from a notification");
                return;
            }
        };
        info!(installation = %name, "login started from a notification; opening the browser");
        if let Err(error) = self.open(url.as_str()).await {
            warn!(installation = %name, %error, "cannot open the browser; run `tokctl login {name}`");
        }
    }

    /// Opens `url` through the portal when the bus has one, else with
    /// `xdg-open`.
    async fn open(&self, url: &str) -> Result<(), String> {
        let portal = tokio::time::timeout(PORTAL_TIMEOUT, async {
            let proxy = OpenUriProxy::builder(&self.connection)
                .cache_properties(zbus::proxy::CacheProperties::No)
                .build()
                .await?;
            proxy.open_uri("", url, HashMap::new()).await
        })
        .await;
        match portal {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(error)) => debug!(%error, "no OpenURI portal; using xdg-open"),
            Err(_) => debug!("the OpenURI portal did not answer; using xdg-open"),
        }
        let mut child = tokio::process::Command::new("xdg-open")
            .arg(url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|error| format!("xdg-open: {error}"))?;
        match tokio::time::timeout(PORTAL_TIMEOUT, child.wait()).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => Err(format!("xdg-open: {status}")),
            Ok(Err(error)) => Err(format!("xdg-open: {error}")),
            // Still running (some wait for the browser): it is opening.
            Err(_) => Ok(()),
        }
    }
}

/// `text` with the three characters notification markup gives meaning to
/// escaped: provider text must not become a link.
pub(super) fn escape_markup(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::escape_markup;

    #[test]
    fn markup_in_a_reason_is_shown_as_text() {
        assert_eq!(
            escape_markup("<a href=\"x\">log in</a> & more"),
            "&lt;a href=\"x\"&gt;log in&lt;/a&gt; &amp; more"
        );
    }
}
