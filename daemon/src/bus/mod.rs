//! `org.tokd.tokd1.Manager`: the D-Bus adapter over the broker. Each method
//! checks the caller, calls the broker, and maps its answer to the wire
//! types of `tokd-shared` (`InstallationInfo`, `org.tokd.tokd1.Error.*`);
//! broker events become signals. No logic beyond translating lives here.
//!
//! The same object is served on the session bus (here) and peer to peer
//! on the private socket (`private.rs`). `notify.rs` tells the desktop
//! when a human must log in.
//!
//! On the bus, the object is registered before the name is requested, so
//! a client activated by the name never finds it without the object.

mod ask;
mod caller;
mod notify;
mod private;

pub use private::{PrivateSocket, PrivateSocketError, serve_private};

use crate::broker::{self, Broker, Event, View};
use crate::schedule::unix_seconds;
use crate::tasks::Tasks;
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
pub(crate) const UID_CACHE: usize = 1024;

/// The served object.
#[derive(Debug)]
pub struct Manager {
    broker: Arc<Broker>,
    own_uid: u32,
    uids: Mutex<HashMap<String, u32>>,
    bus: tokio::sync::OnceCell<zbus::fdo::DBusProxy<'static>>,
    /// The private-socket client this object serves (`None` on the bus).
    peer: Option<Arc<caller::Peer>>,
    bus_callers: caller::BusCallers,
}

/// A change of allowed callers that could not be written.
fn cannot_keep(reason: String) -> Error {
    Error::Misconfigured(format!(
        "cannot keep the allowed callers ({reason}); nothing changed"
    ))
}

/// The uid rule, on its own so that it can be tested without a second user.
pub fn caller_allowed(caller: u32, own: u32) -> Result<(), Error> {
    if caller == own {
        Ok(())
    } else {
        Err(Error::AccessDenied(format!(
            "tokd answers only its own user (uid {own}); uid {caller} must run its own tokd"
        )))
    }
}

/// The named D-Bus error for each broker error.
fn wire_error(error: broker::Error) -> Error {
    match error {
        broker::Error::UnknownInstallation(m) => Error::UnknownInstallation(m),
        broker::Error::NeedsLogin(m) => Error::NeedsLogin(m),
        broker::Error::Misconfigured(m) => Error::Misconfigured(m),
        broker::Error::ProviderUnavailable(m) => Error::ProviderUnavailable(m),
        broker::Error::InvalidArgument(m) => Error::InvalidArgument(m),
        broker::Error::Stopping(m) => Error::Stopping(m),
        broker::Error::Locked(m) => Error::Locked(m),
    }
}

/// The wire form of a view: times in Unix seconds (0 for none), empty
/// strings for nothing to say.
fn wire_info(view: View) -> InstallationInfo {
    let seconds = |time: Option<std::time::SystemTime>| time.map_or(0, unix_seconds);
    InstallationInfo {
        name: view.name,
        consumer: view.consumer,
        grant: view.grant.as_str().to_owned(),
        state: view.state.as_str().to_owned(),
        message: view.message,
        scopes: view.scopes.join(" "),
        expires_at: seconds(view.expires_at),
        last_refresh: seconds(view.last_refresh),
        next_refresh: seconds(view.next_refresh),
        last_error: view.last_error.unwrap_or_default(),
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
        let caller = Box::pin(self.admit(connection, &header, name)).await?;
        let token = self
            .broker
            .get_token(name, Duration::from_secs(min_valid_secs.into()))
            .await
            .map_err(wire_error)?;
        self.broker.callers().delivered(name, "GetToken", &caller);
        Ok((
            token.access_token.expose().to_owned(),
            token.expires_at.map_or(0, unix_seconds),
            token.token_type.to_owned(),
            token.warning.unwrap_or_default(),
        ))
    }

    /// GetKubeCredential: a token for the Kubernetes API at `server`
    /// (which the installation's `kube_servers` must name).
    #[zbus(out_args("access_token", "expires_at", "warning"))]
    async fn get_kube_credential(
        &self,
        name: &str,
        server: &str,
        min_valid_secs: u32,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(String, i64, String), Error> {
        self.check_caller(connection, &header).await?;
        let caller = Box::pin(self.admit(connection, &header, name)).await?;
        let token = self
            .broker
            .kube_credential(name, server, Duration::from_secs(min_valid_secs.into()))
            .await
            .map_err(wire_error)?;
        self.broker
            .callers()
            .delivered(name, "GetKubeCredential", &caller);
        Ok((
            token.access_token.expose().to_owned(),
            token.expires_at.map_or(0, unix_seconds),
            token.warning.unwrap_or_default(),
        ))
    }

    /// GitRemotes: where git may be given the installation's tokens.
    #[zbus(out_args("remotes"))]
    async fn git_remotes(
        &self,
        name: &str,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<Vec<String>, Error> {
        self.check_caller(connection, &header).await?;
        self.broker.git_remotes(name).map_err(wire_error)
    }

    /// GetGitCredential: a token for git at `protocol://host`, with the
    /// user name to send it with (empty: keep git's own).
    #[zbus(out_args("username", "password", "expires_at", "warning"))]
    async fn get_git_credential(
        &self,
        name: &str,
        protocol: &str,
        host: &str,
        min_valid_secs: u32,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(String, String, i64, String), Error> {
        self.check_caller(connection, &header).await?;
        let caller = Box::pin(self.admit(connection, &header, name)).await?;
        let credential = self
            .broker
            .git_credential(
                name,
                protocol,
                host,
                Duration::from_secs(min_valid_secs.into()),
            )
            .await
            .map_err(wire_error)?;
        self.broker
            .callers()
            .delivered(name, "GetGitCredential", &caller);
        let token = credential.token;
        Ok((
            credential.username.unwrap_or_default(),
            token.access_token.expose().to_owned(),
            token.expires_at.map_or(0, unix_seconds),
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
        self.check_host(connection, &header).await?;
        Ok(self.broker.list().into_iter().map(wire_info).collect())
    }

    /// Status: one installation.
    #[zbus(out_args("installation"))]
    async fn status(
        &self,
        name: &str,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<InstallationInfo, Error> {
        self.check_host(connection, &header).await?;
        self.broker.status(name).map(wire_info).map_err(wire_error)
    }

    /// Refresh: a new token now; returns its expiry.
    #[zbus(out_args("expires_at"))]
    async fn refresh(
        &self,
        name: &str,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<i64, Error> {
        self.check_host(connection, &header).await?;
        let expires_at = self.broker.refresh_now(name).await.map_err(wire_error)?;
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
        self.check_host(connection, &header).await?;
        let (url, listening) = self
            .broker
            .begin_login(name, None)
            .await
            .map_err(wire_error)?;
        Ok((url.to_string(), listening))
    }

    /// BeginLoginWithin: as BeginLogin, waiting `timeout_secs` for the
    /// browser.
    #[zbus(out_args("url", "listening"))]
    async fn begin_login_within(
        &self,
        name: &str,
        timeout_secs: u32,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(String, bool), Error> {
        self.check_host(connection, &header).await?;
        let wait = Duration::from_secs(timeout_secs.into());
        let (url, listening) = self
            .broker
            .begin_login(name, Some(wait))
            .await
            .map_err(wire_error)?;
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
        self.check_host(connection, &header).await?;
        let expires_at = self
            .broker
            .complete_login(name, code)
            .await
            .map_err(wire_error)?;
        Ok(expires_at.map_or(0, unix_seconds))
    }

    /// BeginDeviceLogin: a device code for the user, polled by tokd.
    #[zbus(out_args(
        "verification_uri",
        "verification_uri_complete",
        "user_code",
        "expires_at"
    ))]
    async fn begin_device_login(
        &self,
        name: &str,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(String, String, String, i64), Error> {
        self.check_host(connection, &header).await?;
        let login = self
            .broker
            .begin_device_login(name)
            .await
            .map_err(wire_error)?;
        Ok((
            login.verification_uri.to_string(),
            login
                .verification_uri_complete
                .map(|url| url.to_string())
                .unwrap_or_default(),
            login.user_code,
            unix_seconds(login.expires_at),
        ))
    }

    /// Revoke: revokes at the provider when possible and forgets the tokens.
    #[zbus(out_args("message"))]
    async fn revoke(
        &self,
        name: &str,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, Error> {
        self.check_host(connection, &header).await?;
        self.broker.revoke(name).await.map_err(wire_error)
    }

    /// TokenStores: where each installation's tokens are kept.
    #[zbus(out_args("stores"))]
    async fn token_stores(
        &self,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<HashMap<String, String>, Error> {
        self.check_host(connection, &header).await?;
        Ok(self
            .broker
            .list()
            .into_iter()
            .map(|view| {
                let kept = self.broker.keeper().store_of(&view.name);
                (
                    view.name,
                    kept.map(|k| k.as_str().to_owned()).unwrap_or_default(),
                )
            })
            .collect())
    }

    /// Registries: the container registries the config names, as
    /// (registry, installation, user name).
    #[zbus(out_args("registries"))]
    async fn registries(
        &self,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<Vec<(String, String, String)>, Error> {
        self.check_caller(connection, &header).await?;
        Ok(self.broker.registries())
    }

    /// ConfigPath: the config file tokd reads (empty: none).
    #[zbus(out_args("path"))]
    async fn config_path(
        &self,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, Error> {
        self.check_host(connection, &header).await?;
        Ok(self
            .broker
            .config_path()
            .map(|path| path.display().to_string())
            .unwrap_or_default())
    }

    /// Reload: re-reads the config file.
    #[zbus(out_args("summary"))]
    async fn reload(
        &self,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, Error> {
        self.check_host(connection, &header).await?;
        self.broker.reload().await.map_err(wire_error)
    }

    /// AllowCaller: lets callers that `rule` names get `name`'s tokens
    /// from now on (kept in the state folder); false if it already did.
    #[zbus(out_args("added"))]
    async fn allow_caller(
        &self,
        name: &str,
        rule: &str,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<bool, Error> {
        let rule = self.policy_change(connection, &header, name, rule).await?;
        if self.broker.callers().policy(name).is_none() {
            return Err(Error::InvalidArgument(format!(
                "`{name}` serves every caller of yours (it has no `callers` in the config), so there is nothing to allow"
            )));
        }
        self.broker
            .callers()
            .allow(name, rule)
            .await
            .map_err(cannot_keep)
    }

    /// ForgetCaller: takes back what AllowCaller (or an "Always") allowed;
    /// false if it was not allowed.
    #[zbus(out_args("removed"))]
    async fn forget_caller(
        &self,
        name: &str,
        rule: &str,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<bool, Error> {
        let rule = self.policy_change(connection, &header, name, rule).await?;
        self.broker
            .callers()
            .forget(name, &rule)
            .await
            .map_err(cannot_keep)
    }

    /// Callers: `name`'s policy: whether it has one, its `callers`, its
    /// `unknown_callers`, and the callers allowed since.
    #[zbus(out_args("limited", "configured", "unknown_callers", "allowed"))]
    async fn callers(
        &self,
        name: &str,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(bool, Vec<String>, String, Vec<String>), Error> {
        self.check_host(connection, &header).await?;
        self.broker.status(name).map_err(wire_error)?;
        let gate = self.broker.callers();
        let remembered = gate.remembered(name).await;
        let texts =
            |rules: &[crate::callers::Rule]| rules.iter().map(ToString::to_string).collect();
        Ok(match gate.policy(name) {
            Some(policy) => (
                true,
                texts(&policy.rules),
                policy.unknown.as_str().to_owned(),
                texts(&remembered),
            ),
            None => (false, Vec::new(), String::new(), texts(&remembered)),
        })
    }

    /// Deliveries: the last tokens handed out, oldest first: (Unix
    /// seconds, installation, method, caller). Never a token.
    #[zbus(out_args("deliveries"))]
    async fn deliveries(
        &self,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<Vec<(i64, String, String, String)>, Error> {
        self.check_host(connection, &header).await?;
        Ok(self
            .broker
            .callers()
            .deliveries()
            .into_iter()
            .map(|d| {
                (
                    unix_seconds(d.at),
                    d.installation,
                    d.how.to_owned(),
                    d.caller,
                )
            })
            .collect())
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

/// Why the bus could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("another tokd already owns {BUS_NAME} on this session bus")]
    NameTaken,
    #[error("cannot serve on the session bus (is DBUS_SESSION_BUS_ADDRESS set?)")]
    Bus(#[source] zbus::Error),
    #[error("cannot tell this process's uid")]
    Uid(#[source] std::io::Error),
}

/// Serves `broker` on `connection` (the object, then the name) and
/// forwards its events as signals (a task of `tasks`). Fails when the
/// name is taken.
pub async fn serve(
    connection: &Connection,
    broker: Arc<Broker>,
    events: UnboundedReceiver<Event>,
    tasks: &Tasks,
) -> Result<(), ServeError> {
    let own_uid = crate::os::current_uid().map_err(ServeError::Uid)?;
    // The object first, then the name, without queueing: a second tokd
    // must fail now, not wait in the queue (and never refresh anything).
    connection
        .object_server()
        .at(OBJECT_PATH, Manager::new(broker.clone(), own_uid))
        .await
        .map_err(ServeError::Bus)?;
    let reply = connection
        .request_name_with_flags(BUS_NAME, zbus::fdo::RequestNameFlags::DO_NOT_QUEUE)
        .await
        .map_err(|error| match error {
            zbus::Error::NameTaken => ServeError::NameTaken,
            other => ServeError::Bus(other),
        })?;
    match reply {
        zbus::fdo::RequestNameReply::PrimaryOwner | zbus::fdo::RequestNameReply::AlreadyOwner => {}
        zbus::fdo::RequestNameReply::Exists | zbus::fdo::RequestNameReply::InQueue => {
            return Err(ServeError::NameTaken);
        }
    }
    info!(name = BUS_NAME, "serving on the session bus");
    let emitter = SignalEmitter::new(connection, OBJECT_PATH)
        .map_err(ServeError::Bus)?
        .to_owned();
    broker
        .callers()
        .set_asker(Arc::new(ask::Ask::new(connection.clone(), &broker)));
    let notifier = notify::Notifier::new(connection.clone(), broker, tasks.clone());
    tasks.spawn_until_stopped(forward(emitter, events, notifier));
    Ok(())
}

/// Releases the name, then takes the object off the bus. The object holds
/// the broker, which holds the keyring client on this same connection:
/// dropping the connection alone would not close it while the object is
/// served, and an in-process daemon would keep the name after it stopped.
pub async fn unserve(connection: &Connection) {
    if let Err(error) = connection.release_name(BUS_NAME).await {
        tracing::warn!(%error, "cannot release the bus name");
    }
    let _ = connection
        .object_server()
        .remove::<Manager, _>(OBJECT_PATH)
        .await;
}

async fn forward(
    emitter: SignalEmitter<'static>,
    mut events: UnboundedReceiver<Event>,
    notifier: notify::Notifier,
) {
    while let Some(event) = events.recv().await {
        notifier.observe(&event);
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
            Event::LoginWanted { .. } => Ok(()),
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
        assert!(
            matches!(&refusal, Error::AccessDenied(sentence) if sentence.contains("uid 1000")),
            "{refusal}"
        );
        assert!(caller_allowed(0, 1000).is_err(), "not even root");
    }
}
