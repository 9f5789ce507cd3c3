//! A desktop on a private bus, as far as tokd sees one: a notification
//! server (`org.freedesktop.Notifications`) that records every call and
//! can invoke an action as a click would, and an `OpenURI` portal
//! (`org.freedesktop.portal.Desktop`) that records the URLs it is asked
//! to open. Either can be left out, and the notification server can
//! stall (never answer), as a hung desktop component would.

use crate::PrivateBus;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use zbus::object_server::SignalEmitter;

/// One `Notify` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The id the server gave it.
    pub id: u32,
    pub app_name: String,
    pub replaces_id: u32,
    pub summary: String,
    pub body: String,
    /// Key, label, key, label, …
    pub actions: Vec<String>,
    pub expire_timeout: i32,
}

/// What the stub desktop offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DesktopOptions {
    /// A notification server on the bus.
    pub notifications: bool,
    /// Its capabilities include `actions` (and `body-markup`).
    pub actions: bool,
    /// It never answers `Notify` (nor `GetCapabilities`).
    pub stall: bool,
    /// An `OpenURI` portal on the bus.
    pub portal: bool,
    /// Invokes this action of every notification at once, even before
    /// answering `Notify` (so the click reaches tokd before the id does).
    pub click_at_once: Option<&'static str>,
}

impl Default for DesktopOptions {
    fn default() -> Self {
        Self {
            notifications: true,
            actions: true,
            stall: false,
            portal: true,
            click_at_once: None,
        }
    }
}

#[derive(Debug, Default)]
struct Recorded {
    notifications: Vec<Notification>,
    closed: Vec<u32>,
    opened: Vec<String>,
}

/// The running stub; its services go when it is dropped.
#[derive(Debug)]
pub struct Desktop {
    connection: zbus::Connection,
    recorded: Arc<Mutex<Recorded>>,
    changed: Arc<tokio::sync::Notify>,
}

struct NotificationServer {
    options: DesktopOptions,
    recorded: Arc<Mutex<Recorded>>,
    changed: Arc<tokio::sync::Notify>,
}

#[zbus::interface(name = "org.freedesktop.Notifications")]
impl NotificationServer {
    async fn get_capabilities(&self) -> Vec<String> {
        if self.options.stall {
            std::future::pending::<()>().await;
        }
        let mut capabilities = vec!["body".to_owned()];
        if self.options.actions {
            capabilities.push("actions".to_owned());
            capabilities.push("body-markup".to_owned());
        }
        capabilities
    }

    #[allow(clippy::too_many_arguments)]
    async fn notify(
        &self,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
        app_name: String,
        replaces_id: u32,
        _app_icon: String,
        summary: String,
        body: String,
        actions: Vec<String>,
        _hints: HashMap<String, zbus::OwnedVariant>,
        expire_timeout: i32,
    ) -> u32 {
        if self.options.stall {
            std::future::pending::<()>().await;
        }
        let id = {
            let mut recorded = lock(&self.recorded);
            let id = u32::try_from(recorded.notifications.len()).unwrap_or(u32::MAX - 1) + 1;
            recorded.notifications.push(Notification {
                id,
                app_name,
                replaces_id,
                summary,
                body,
                actions,
                expire_timeout,
            });
            id
        };
        self.changed.notify_waiters();
        if let Some(key) = self.options.click_at_once {
            // Before the answer: tokd hears the click before it knows the
            // id, the hardest order for it.
            let _ = Self::action_invoked(&emitter, id, key).await;
        }
        id
    }

    async fn close_notification(&self, id: u32) {
        lock(&self.recorded).closed.push(id);
        self.changed.notify_waiters();
    }

    async fn get_server_information(&self) -> (String, String, String, String) {
        (
            "tokd-testkit".into(),
            "tokd".into(),
            "0".into(),
            "1.2".into(),
        )
    }

    #[zbus(signal)]
    async fn action_invoked(
        emitter: &SignalEmitter<'_>,
        id: u32,
        action_key: &str,
    ) -> zbus::Result<()>;
}

struct Portal {
    recorded: Arc<Mutex<Recorded>>,
    changed: Arc<tokio::sync::Notify>,
}

#[zbus::interface(name = "org.freedesktop.portal.OpenURI")]
impl Portal {
    #[zbus(name = "OpenURI")]
    async fn open_uri(
        &self,
        _parent_window: String,
        uri: String,
        _options: HashMap<String, zbus::OwnedVariant>,
    ) -> zbus::OwnedObjectPath {
        lock(&self.recorded).opened.push(uri);
        self.changed.notify_waiters();
        zbus::OwnedObjectPath::try_from("/org/freedesktop/portal/desktop/request/1_1/t")
            .expect("a valid path")
    }
}

fn lock(recorded: &Mutex<Recorded>) -> std::sync::MutexGuard<'_, Recorded> {
    recorded
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Desktop {
    /// Serves what `options` asks for on `bus`.
    pub async fn start(bus: &PrivateBus, options: DesktopOptions) -> Self {
        let recorded = Arc::new(Mutex::new(Recorded::default()));
        let changed = Arc::new(tokio::sync::Notify::new());
        let mut builder = zbus::connection::Builder::address(bus.address());
        if options.notifications {
            builder = builder
                .serve_at(
                    "/org/freedesktop/Notifications",
                    NotificationServer {
                        options,
                        recorded: recorded.clone(),
                        changed: changed.clone(),
                    },
                )
                .name("org.freedesktop.Notifications");
        }
        if options.portal {
            builder = builder
                .serve_at(
                    "/org/freedesktop/portal/desktop",
                    Portal {
                        recorded: recorded.clone(),
                        changed: changed.clone(),
                    },
                )
                .name("org.freedesktop.portal.Desktop");
        }
        let connection = builder.build().await.expect("the desktop's connection");
        Self {
            connection,
            recorded,
            changed,
        }
    }

    /// Every notification shown so far.
    pub fn notifications(&self) -> Vec<Notification> {
        lock(&self.recorded).notifications.clone()
    }

    /// The ids closed so far.
    pub fn closed(&self) -> Vec<u32> {
        lock(&self.recorded).closed.clone()
    }

    /// The URLs the portal was asked to open.
    pub fn opened(&self) -> Vec<String> {
        lock(&self.recorded).opened.clone()
    }

    /// Waits until `check` holds for what was recorded (callers bound
    /// the wait).
    pub async fn until(&self, mut check: impl FnMut(&Desktop) -> bool) {
        loop {
            let changed = self.changed.notified();
            if check(self) {
                return;
            }
            changed.await;
        }
    }

    /// Clicks action `key` of notification `id`.
    pub async fn invoke(&self, id: u32, key: &str) {
        let emitter = SignalEmitter::new(&self.connection, "/org/freedesktop/Notifications")
            .expect("emitter");
        NotificationServer::action_invoked(&emitter, id, key)
            .await
            .expect("emit ActionInvoked");
    }
}
