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
//! Two depths: the light identity (pid, cgroup, program: procfs only)
//! of every token call, for the record of deliveries; and the full one
//! (does it share tokd's root, and if not, which Flatpak app is it),
//! read on a blocking thread with a time limit because it reads through
//! the caller's own root, for a call an installation's policy decides
//! and for every method but the token ones: a sandboxed caller may only
//! ask for tokens. A caller is identified at its first call that needs
//! it and keeps that identity for its connection: a program that `exec`s
//! another while keeping its connection stays what it was (the README
//! says so).

use super::{Manager, UID_CACHE, caller_allowed, wire_error};
use crate::broker::Broker;
use crate::callers::identity::{self, Caller};
use crate::sync::lock;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokd_shared::Error;
use tracing::debug;
use tracing::warn;
use zbus::Connection;
use zbus::message::Header;
use zbus::names::UniqueName;

/// How many bus callers are kept (each holds its pidfd open).
const CALLER_CACHE: usize = 256;
/// How long the full identity may take to read.
const IDENTIFY_TIMEOUT: Duration = Duration::from_secs(2);
/// How many full identities are read at once: a read stuck in a sandbox's
/// FUSE root holds a blocking thread until the file system answers, and
/// the blocking pool also writes state files.
const IDENTIFYING_AT_ONCE: usize = 4;

/// The permits for [`IDENTIFYING_AT_ONCE`].
fn identifying() -> &'static tokio::sync::Semaphore {
    static PERMITS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    PERMITS.get_or_init(|| tokio::sync::Semaphore::new(IDENTIFYING_AT_ONCE))
}

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
            peer: Some(Arc::new(peer)),
            ..Self::new(broker, own_uid)
        }
    }

    /// The calling process, as far as `full` asks (see the module).
    pub(super) async fn caller(
        &self,
        connection: &Connection,
        header: &Header<'_>,
        full: bool,
    ) -> Result<Arc<Caller>, Error> {
        let known = match (&self.peer, header.sender()) {
            (Some(peer), _) => peer.clone(),
            (None, Some(sender)) => {
                let proxy = bus_proxy(&self.bus, connection).await?;
                match self.bus_callers.known(proxy, sender).await {
                    Some(known) => known,
                    None => return Ok(Arc::new(Caller::default())),
                }
            }
            (None, None) => return Ok(Arc::new(Caller::default())),
        };
        Ok(if full {
            known.full().await
        } else {
            known.light()
        })
    }

    /// Identifies the caller and, when `name` has a policy, asks it
    /// whether the caller may have `name`'s tokens (see `crate::callers`).
    pub(super) async fn admit(
        &self,
        connection: &Connection,
        header: &Header<'_>,
        name: &str,
    ) -> Result<Arc<Caller>, Error> {
        let gate = self.broker.callers();
        if gate.policy(name).is_none() {
            return self.caller(connection, header, false).await;
        }
        let caller = self.caller(connection, header, true).await?;
        gate.admit(name, &caller)
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

    /// [`Manager::check_caller`], and the caller must be known to run on
    /// the host: every method but the token ones (a sandboxed app may
    /// only ask for tokens, which its installation's policy decides).
    pub(super) async fn check_host(
        &self,
        connection: &Connection,
        header: &Header<'_>,
    ) -> Result<(), Error> {
        self.check_caller(connection, header).await?;
        let caller = Box::pin(self.caller(connection, header, true)).await?;
        if caller.on_the_host() {
            return Ok(());
        }
        warn!(%caller, "refused a call from a sandbox (or a caller tokd cannot place)");
        Err(Error::AccessDenied(match caller.host {
            Some(false) => format!(
                "{caller} runs in a sandbox: it may get tokens (as each installation's `callers` allows) and nothing else"
            ),
            _ => format!(
                "tokd cannot tell whether {caller} runs in a sandbox, so it may get tokens (as each installation's `callers` allows) and nothing else"
            ),
        }))
    }

    /// Checks a change to `name`'s allowed callers: `name` exists, has a
    /// policy, and `rule` is a rule (the caller was checked by
    /// [`Manager::check_host`]).
    pub(super) async fn policy_change(
        &self,
        connection: &Connection,
        header: &Header<'_>,
        name: &str,
        rule: &str,
    ) -> Result<crate::callers::Rule, Error> {
        self.check_host(connection, header).await?;
        self.broker.status(name).map_err(wire_error)?;
        let rule: crate::callers::Rule = rule.parse().map_err(Error::InvalidArgument)?;
        // Symlinks resolved off the runtime's thread; a path they resolve
        // to must be a rule too (no control characters).
        let resolved = tokio::task::spawn_blocking(move || rule.resolved())
            .await
            .map_err(|_| Error::InvalidArgument("cannot resolve the rule's path".to_owned()))?;
        resolved
            .to_string()
            .parse()
            .map_err(|error: String| Error::InvalidArgument(format!("resolved, {error}")))
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

/// One calling process: its pidfd, and what was read of it.
#[derive(Debug)]
pub struct Peer {
    process: Option<Arc<identity::Process>>,
    light: std::sync::OnceLock<Arc<Caller>>,
    full: tokio::sync::OnceCell<Arc<Caller>>,
}

impl Peer {
    /// Takes the connecting process's pidfd from an accepted socket;
    /// `pid` is its `SO_PEERCRED` pid (taken at connect: with
    /// `SO_PEERPIDFD`, the same process's).
    pub fn of(stream: &tokio::net::UnixStream, pid: Option<i32>) -> Self {
        use nix::errno::Errno;
        let pid = pid.and_then(|pid| u32::try_from(pid).ok());
        let process =
            match nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerPidfd) {
                Ok(pidfd) => identity::Process::new(pidfd, pid),
                // A kernel without SO_PEERPIDFD (before 6.5): the pid taken
                // at connect, opened now (racy; the README says so).
                Err(Errno::ENOPROTOOPT | Errno::EINVAL) => pid.and_then(identity::Process::of_pid),
                // The process that connected is gone (ESRCH): nobody. Its pid
                // may already be another process's.
                Err(_) => None,
            };
        Self::with(process)
    }

    fn with(process: Option<identity::Process>) -> Self {
        Self {
            process: process.map(Arc::new),
            light: std::sync::OnceLock::new(),
            full: tokio::sync::OnceCell::new(),
        }
    }

    /// The light identity (procfs only).
    pub fn light(&self) -> Arc<Caller> {
        if let Some(full) = self.full.get() {
            return full.clone();
        }
        self.light
            .get_or_init(|| {
                Arc::new(
                    self.process
                        .as_deref()
                        .map_or_else(Caller::default, identity::identify_light),
                )
            })
            .clone()
    }

    /// The full identity, read on a blocking thread within
    /// [`IDENTIFY_TIMEOUT`]; past it, the light one (not on the host as
    /// far as tokd can tell).
    pub async fn full(&self) -> Arc<Caller> {
        self.full
            .get_or_init(|| async {
                let Some(process) = self.process.clone() else {
                    return Arc::new(Caller::default());
                };
                let read = async {
                    // The permit goes with the blocking read, and comes back
                    // when the read ends, even if that is after the timeout.
                    let permit = identifying().acquire().await.ok()?;
                    tokio::task::spawn_blocking(move || {
                        let _permit = permit;
                        identity::identify(&process)
                    })
                    .await
                    .ok()
                };
                match tokio::time::timeout(IDENTIFY_TIMEOUT, read).await {
                    Ok(Some(caller)) => Arc::new(caller),
                    _ => {
                        warn!("a caller's identity took too long to read; taken as unknown");
                        self.light()
                    }
                }
            })
            .await
            .clone()
    }
}

/// The bus's callers, by unique name (a unique name is one connection,
/// never reused on a bus).
#[derive(Debug, Default)]
pub struct BusCallers {
    known: Mutex<HashMap<String, Arc<Peer>>>,
}

impl BusCallers {
    /// `sender` as a [`Peer`]; `None` when the bus cannot say who it is
    /// (not kept: the next call asks again).
    async fn known(
        &self,
        proxy: &zbus::fdo::DBusProxy<'static>,
        sender: &UniqueName<'_>,
    ) -> Option<Arc<Peer>> {
        if let Some(known) = lock(&self.known).get(sender.as_str()) {
            return Some(known.clone());
        }
        let peer = Arc::new(Peer::with(Some(process_of_sender(proxy, sender).await?)));
        let mut known = lock(&self.known);
        if known.len() >= CALLER_CACHE {
            known.clear();
        }
        known.insert(sender.to_string(), peer.clone());
        Some(peer)
    }
}

async fn process_of_sender(
    proxy: &zbus::fdo::DBusProxy<'static>,
    sender: &UniqueName<'_>,
) -> Option<identity::Process> {
    let credentials = proxy
        .get_connection_credentials(sender.clone().into())
        .await
        .inspect_err(|error| debug!(%error, %sender, "no credentials for a caller"))
        .ok()?;
    let pid = credentials.process_id();
    if let Some(pidfd) = credentials.into_process_fd() {
        // Its pid read from the pidfd itself, once per sender.
        return identity::Process::new(pidfd.into(), None);
    }
    let process = identity::Process::of_pid(pid?)?;
    // The pid was read before the pidfd was opened: ask again, so that a
    // sender gone (and its pid reused) in between is not taken for the
    // new process.
    let again = proxy
        .get_connection_unix_process_id(sender.clone().into())
        .await
        .ok()?;
    (Some(again) == pid).then_some(process)
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
