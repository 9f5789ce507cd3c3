//! Who is on the other end of a call, for the caller policies
//! (`crate::callers`): a pidfd for the calling process, then its identity
//! read through it.
//!
//! - The private socket: the kernel's `SO_PEERPIDFD` of the process that
//!   connected (Linux 6.5 and later); on older kernels the pid of
//!   `SO_PEERCRED`, opened as a pidfd at accept.
//! - The session bus: the bus's `ProcessFD` for the sender where the bus
//!   gives one (dbus-daemon 1.15.8 and later, dbus-broker 35), else its
//!   `ProcessID` opened as a pidfd, and the bus asked again that the
//!   sender still has that pid.
//!
//! A caller is identified at its first call that needs it and keeps that
//! identity for its connection: a program that `exec`s another while
//! keeping its connection stays what it was (the README says so).

use super::{Manager, UID_CACHE, caller_allowed, wire_error};
use crate::broker::Broker;
use crate::callers::identity::{self, Caller};
use crate::sync::lock;
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use tokd_shared::Error;
use tracing::debug;
use tracing::warn;
use zbus::Connection;
use zbus::message::Header;
use zbus::names::UniqueName;

/// How many bus callers' identities are kept.
const CALLER_CACHE: usize = 1024;

/// How the object learns who calls: the uid check of every method, and
/// the identity and policy of those that hand out tokens.
impl Manager {
    pub fn new(broker: Arc<Broker>, own_uid: u32) -> Self {
        Self {
            broker,
            own_uid,
            uids: Mutex::new(HashMap::new()),
            bus: tokio::sync::OnceCell::new(),
            peer: None,
            bus_callers: BusCallers::default(),
        }
    }

    /// The object for one private-socket client.
    pub fn for_peer(broker: Arc<Broker>, own_uid: u32, peer: Peer) -> Self {
        Self {
            peer: Some(peer),
            ..Self::new(broker, own_uid)
        }
    }

    /// Who is calling (see `caller.rs`).
    pub(super) async fn caller(
        &self,
        connection: &Connection,
        header: &Header<'_>,
    ) -> Result<Arc<Caller>, Error> {
        Ok(match (&self.peer, header.sender()) {
            (Some(peer), _) => peer.caller(),
            (None, Some(sender)) => {
                let proxy = bus_proxy(&self.bus, connection).await?;
                self.bus_callers.caller(proxy, sender).await
            }
            (None, None) => Arc::new(Caller::default()),
        })
    }

    /// Identifies the caller and asks its policy whether it may have
    /// `name`'s tokens (see `crate::callers`).
    pub(super) async fn admit(
        &self,
        connection: &Connection,
        header: &Header<'_>,
        name: &str,
    ) -> Result<Arc<Caller>, Error> {
        let caller = self.caller(connection, header).await?;
        self.broker
            .callers()
            .admit(name, &caller)
            .await
            .map_err(Error::AccessDenied)?;
        Ok(caller)
    }

    /// Refuses callers whose uid is not the daemon's.
    pub(super) async fn check_caller(
        &self,
        connection: &Connection,
        header: &Header<'_>,
    ) -> Result<(), Error> {
        let Some(sender) = header.sender() else {
            // A peer-to-peer connection has no bus to ask; its peer was
            // checked when the connection was accepted.
            return Ok(());
        };
        let cached = lock(&self.uids).get(sender.as_str()).copied();
        let uid = match cached {
            Some(uid) => uid,
            // Boxed: the bus call is a large future, and every call in
            // flight would otherwise carry its size though only a new
            // caller's first call makes it.
            None => Box::pin(self.ask_uid(connection, sender)).await?,
        };
        caller_allowed(uid, self.own_uid)
            .inspect_err(|_| warn!(caller_uid = uid, "refused a caller with another uid"))
    }

    /// Checks a change to `name`'s allowed callers: the caller is the
    /// user's, not in a sandbox (an app must not allow itself), `name`
    /// exists and `rule` is a rule.
    pub(super) async fn policy_change(
        &self,
        connection: &Connection,
        header: &Header<'_>,
        name: &str,
        rule: &str,
    ) -> Result<crate::callers::Rule, Error> {
        self.check_caller(connection, header).await?;
        self.broker.status(name).map_err(wire_error)?;
        let caller = self.caller(connection, header).await?;
        if let Some(app) = &caller.flatpak {
            warn!(
                installation = name,
                app, "refused a sandboxed app's change of allowed callers"
            );
            return Err(Error::AccessDenied(format!(
                "Flatpak app {app} may not change who gets the tokens of `{name}`; run tokctl outside the sandbox"
            )));
        }
        rule.parse().map_err(Error::InvalidArgument)
    }

    /// Asks the bus for the uid of `sender`, and remembers it.
    pub(super) async fn ask_uid(
        &self,
        connection: &Connection,
        sender: &zbus::names::UniqueName<'_>,
    ) -> Result<u32, Error> {
        let proxy = bus_proxy(&self.bus, connection).await?;
        let uid = proxy
            .get_connection_unix_user(sender.clone().into())
            .await
            .map_err(zbus::Error::from)?;
        let mut uids = lock(&self.uids);
        if uids.len() >= UID_CACHE {
            uids.clear();
        }
        uids.insert(sender.to_string(), uid);
        Ok(uid)
    }
}

/// The process at the other end of a private-socket connection.
#[derive(Debug)]
pub struct Peer {
    pidfd: Option<OwnedFd>,
    /// Read at the first call that needs it, then kept for the
    /// connection's life.
    caller: std::sync::OnceLock<Arc<Caller>>,
}

impl Peer {
    /// Takes the connecting process's pidfd from an accepted socket.
    pub fn of(stream: &tokio::net::UnixStream) -> Self {
        let pidfd = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerPidfd)
            .ok()
            .or_else(|| {
                let pid = stream.peer_cred().ok()?.pid()?;
                identity::pidfd_of_pid(u32::try_from(pid).ok()?)
            });
        Self {
            pidfd,
            caller: std::sync::OnceLock::new(),
        }
    }

    pub fn caller(&self) -> Arc<Caller> {
        self.caller
            .get_or_init(|| {
                Arc::new(
                    self.pidfd
                        .as_ref()
                        .map_or_else(Caller::default, |fd| identity::identify(fd.as_fd())),
                )
            })
            .clone()
    }
}

/// The bus's callers, by unique name: each identified at its first call
/// that needs it (through a pidfd, closed after), then kept: a unique
/// name is one connection, never reused on a bus.
#[derive(Debug, Default)]
pub struct BusCallers {
    callers: Mutex<HashMap<String, Arc<Caller>>>,
}

impl BusCallers {
    /// Identifies `sender`; an unknown caller when the bus cannot say.
    pub async fn caller(
        &self,
        proxy: &zbus::fdo::DBusProxy<'static>,
        sender: &UniqueName<'_>,
    ) -> Arc<Caller> {
        if let Some(caller) = lock(&self.callers).get(sender.as_str()) {
            return caller.clone();
        }
        let Some(pidfd) = pidfd_of_sender(proxy, sender).await else {
            return Arc::new(Caller::default());
        };
        let caller = Arc::new(identity::identify(pidfd.as_fd()));
        // An unknown caller is not kept: the next call tries again.
        if !caller.unknown() {
            let mut callers = lock(&self.callers);
            if callers.len() >= CALLER_CACHE {
                callers.clear();
            }
            callers.insert(sender.to_string(), caller.clone());
        }
        caller
    }
}

async fn pidfd_of_sender(
    proxy: &zbus::fdo::DBusProxy<'static>,
    sender: &UniqueName<'_>,
) -> Option<OwnedFd> {
    let credentials = proxy
        .get_connection_credentials(sender.clone().into())
        .await
        .inspect_err(|error| debug!(%error, %sender, "no credentials for a caller"))
        .ok()?;
    let pid = credentials.process_id();
    if let Some(pidfd) = credentials.into_process_fd() {
        return Some(pidfd.into());
    }
    let pidfd = identity::pidfd_of_pid(pid?)?;
    // The pid was read before the pidfd was opened: ask again, so that a
    // sender gone (and its pid reused) in between is not taken for the
    // new process.
    let again = proxy
        .get_connection_unix_process_id(sender.clone().into())
        .await
        .ok()?;
    (Some(again) == pid).then_some(pidfd)
}

/// The bus proxy a [`BusCallers`] asks, built on first use.
pub async fn bus_proxy<'a>(
    cell: &'a tokio::sync::OnceCell<zbus::fdo::DBusProxy<'static>>,
    connection: &Connection,
) -> zbus::Result<&'a zbus::fdo::DBusProxy<'static>> {
    cell.get_or_try_init(|| async {
        zbus::fdo::DBusProxy::builder(connection)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
    })
    .await
}
