//! `org.tokd.tokd1.Manager` on the session bus: the interface, the caller
//! check, and signals from the core's events.
//!
//! The object is registered before the name is requested (zbus's
//! connection builder does both in that order), so a client activated by
//! the name never finds it without the object.

use crate::service::{Daemon, Event, unix_seconds};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokd_shared::{BUS_NAME, Error, InstallationInfo, OBJECT_PATH};
use tokio::sync::mpsc::UnboundedReceiver;
use tracing::{info, warn};
use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::{Connection, interface};

/// How many caller uids are remembered. Unique names are never reused on
/// a bus, so a remembered answer stays true; the cache is only bounded.
const UID_CACHE: usize = 1024;

/// The served object.
#[derive(Debug)]
pub struct Manager {
    daemon: Arc<Daemon>,
    own_uid: u32,
    uids: Mutex<HashMap<String, u32>>,
    bus: tokio::sync::OnceCell<zbus::fdo::DBusProxy<'static>>,
}

impl Manager {
    pub fn new(daemon: Arc<Daemon>, own_uid: u32) -> Self {
        Self {
            daemon,
            own_uid,
            uids: Mutex::new(HashMap::new()),
            bus: tokio::sync::OnceCell::new(),
        }
    }

    /// Refuses callers whose uid is not the daemon's.
    async fn check_caller(
        &self,
        connection: &Connection,
        header: &Header<'_>,
    ) -> Result<(), Error> {
        let Some(sender) = header.sender() else {
            // A peer-to-peer connection has no bus to ask; its peer was
            // checked when the connection was accepted.
            return Ok(());
        };
        let cached = crate::schedule::lock(&self.uids)
            .get(sender.as_str())
            .copied();
        let uid = match cached {
            Some(uid) => uid,
            None => {
                let proxy = self
                    .bus
                    .get_or_try_init(|| async {
                        zbus::fdo::DBusProxy::builder(connection)
                            .cache_properties(zbus::proxy::CacheProperties::No)
                            .build()
                            .await
                    })
                    .await?;
                let uid = proxy
                    .get_connection_unix_user(sender.clone().into())
                    .await
                    .map_err(zbus::Error::from)?;
                let mut uids = crate::schedule::lock(&self.uids);
                if uids.len() >= UID_CACHE {
                    uids.clear();
                }
                uids.insert(sender.to_string(), uid);
                uid
            }
        };
        caller_allowed(uid, self.own_uid).map_err(|message| {
            warn!(caller_uid = uid, "refused a caller with another uid");
            Error::AccessDenied(message)
        })
    }
}

/// The uid rule, on its own so that it can be tested without a second user.
pub fn caller_allowed(caller: u32, own: u32) -> Result<(), String> {
    if caller == own {
        Ok(())
    } else {
        Err(format!(
            "tokd answers only its own user (uid {own}); uid {caller} must run its own tokd"
        ))
    }
}

#[interface(name = "org.tokd.tokd1.Manager")]
impl Manager {
    /// GetToken: a token valid for at least `min_valid_secs` seconds.
    #[zbus(out_args("access_token", "expires_at", "token_type", "warning"))]
    async fn get_token(
        &self,
        name: &str,
        min_valid_secs: u32,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(String, i64, String, String), Error> {
        self.check_caller(connection, &header).await?;
        let token = self
            .daemon
            .get_token(name, Duration::from_secs(min_valid_secs.into()))
            .await?;
        Ok((
            token.access_token.expose().to_owned(),
            token.expires_at.map_or(0, unix_seconds),
            token.token_type,
            token.warning.unwrap_or_default(),
        ))
    }

    /// List: every installation.
    #[zbus(out_args("installations"))]
    async fn list(
        &self,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<Vec<InstallationInfo>, Error> {
        self.check_caller(connection, &header).await?;
        Ok(self.daemon.list())
    }

    /// Status: one installation.
    #[zbus(out_args("installation"))]
    async fn status(
        &self,
        name: &str,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<InstallationInfo, Error> {
        self.check_caller(connection, &header).await?;
        Ok(self.daemon.status(name)?)
    }

    /// Refresh: a new token now; returns its expiry.
    #[zbus(out_args("expires_at"))]
    async fn refresh(
        &self,
        name: &str,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<i64, Error> {
        self.check_caller(connection, &header).await?;
        let expires_at = self.daemon.refresh_now(name).await?;
        Ok(expires_at.map_or(0, unix_seconds))
    }

    /// BeginLogin: the URL to open and whether tokd listens for the answer.
    #[zbus(out_args("url", "listening"))]
    async fn begin_login(
        &self,
        name: &str,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(String, bool), Error> {
        self.check_caller(connection, &header).await?;
        let (url, listening) = self.daemon.begin_login(name).await?;
        Ok((url.to_string(), listening))
    }

    /// CompleteLogin: exchanges a code obtained by hand.
    #[zbus(out_args("expires_at"))]
    async fn complete_login(
        &self,
        name: &str,
        code: &str,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<i64, Error> {
        self.check_caller(connection, &header).await?;
        let expires_at = self.daemon.complete_login(name, code).await?;
        Ok(expires_at.map_or(0, unix_seconds))
    }

    /// Revoke: revokes at the provider when possible and forgets the tokens.
    #[zbus(out_args("message"))]
    async fn revoke(
        &self,
        name: &str,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, Error> {
        self.check_caller(connection, &header).await?;
        Ok(self.daemon.revoke(name).await?)
    }

    /// Reload: re-reads the config file.
    #[zbus(out_args("summary"))]
    async fn reload(
        &self,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, Error> {
        self.check_caller(connection, &header).await?;
        Ok(self.daemon.reload().await?)
    }

    #[zbus(signal)]
    async fn token_refreshed(
        emitter: &SignalEmitter<'_>,
        name: &str,
        expires_at: i64,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn state_changed(
        emitter: &SignalEmitter<'_>,
        name: &str,
        state: &str,
        message: &str,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn login_finished(
        emitter: &SignalEmitter<'_>,
        name: &str,
        success: bool,
        message: &str,
    ) -> zbus::Result<()>;
}

/// Serves `daemon` on the session bus (`DBUS_SESSION_BUS_ADDRESS`) and
/// forwards its events as signals. Fails when the name is taken.
pub async fn serve(
    daemon: Arc<Daemon>,
    events: UnboundedReceiver<Event>,
) -> zbus::Result<Connection> {
    let own_uid = crate::store::current_uid().map_err(|e| zbus::Error::Failure(e.to_string()))?;
    // The object first, then the name, without queueing: a second tokd
    // must fail now, not wait in the queue (and never refresh anything).
    let connection = zbus::connection::Builder::session()
        .serve_at(OBJECT_PATH, Manager::new(daemon, own_uid))
        .build()
        .await?;
    let reply = connection
        .request_name_with_flags(BUS_NAME, zbus::fdo::RequestNameFlags::DO_NOT_QUEUE)
        .await?;
    match reply {
        zbus::fdo::RequestNameReply::PrimaryOwner | zbus::fdo::RequestNameReply::AlreadyOwner => {}
        zbus::fdo::RequestNameReply::Exists | zbus::fdo::RequestNameReply::InQueue => {
            return Err(zbus::Error::NameTaken);
        }
    }
    info!(name = BUS_NAME, "serving on the session bus");
    let emitter = SignalEmitter::new(&connection, OBJECT_PATH)?.to_owned();
    tokio::spawn(forward(emitter, events));
    Ok(connection)
}

async fn forward(emitter: SignalEmitter<'static>, mut events: UnboundedReceiver<Event>) {
    while let Some(event) = events.recv().await {
        let sent = match &event {
            Event::TokenRefreshed { name, expires_at } => {
                Manager::token_refreshed(&emitter, name, expires_at.map_or(0, unix_seconds)).await
            }
            Event::StateChanged {
                name,
                state,
                message,
            } => Manager::state_changed(&emitter, name, state.as_str(), message).await,
            Event::LoginFinished {
                name,
                success,
                message,
            } => Manager::login_finished(&emitter, name, *success, message).await,
        };
        if let Err(error) = sent {
            warn!(%error, "cannot emit a signal");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_daemons_own_uid_is_answered() {
        assert!(caller_allowed(1000, 1000).is_ok());
        let refusal = caller_allowed(1001, 1000).expect_err("another uid");
        assert!(refusal.contains("uid 1000"), "{refusal}");
        assert!(caller_allowed(0, 1000).is_err(), "not even root");
    }
}
