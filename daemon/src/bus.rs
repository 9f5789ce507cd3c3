//! `org.tokd.tokd1.Manager` on the session bus and on the private socket:
//! the interface, the caller checks, and signals from the core's events.
//!
//! The private socket (`$XDG_RUNTIME_DIR/tokd/bus`) serves the same object
//! peer to peer, one zbus connection per client, as systemd's private
//! socket does for systemctl: no bus daemon hop and no `Hello` (a
//! `tokctl get` takes 0.92 ms this way, 1.14 ms over the bus; see
//! BENCHMARKS.md). Its caller check happens once, at
//! accept, from the socket's peer credentials. Signals go out on the
//! session bus only (a client that waits for one, `tokctl login`, uses it).
//!
//! The object is registered before the name is requested (zbus's
//! connection builder does both in that order), so a client activated by
//! the name never finds it without the object.

use crate::service::{Daemon, Event, unix_seconds};
use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokd_shared::{BUS_NAME, Error, InstallationInfo, OBJECT_PATH};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc::UnboundedReceiver;
use tracing::{debug, info, warn};
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

/// How long a client of the private socket may take to authenticate.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The private socket while it is served. Dropping it stops accepting and
/// removes the socket file (if it is still the one bound here).
#[derive(Debug)]
pub struct PrivateSocket {
    path: PathBuf,
    inode: (u64, u64),
    accept: tokio::task::JoinHandle<()>,
}

impl PrivateSocket {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PrivateSocket {
    fn drop(&mut self) {
        self.accept.abort();
        // A successor may have bound the path already; leave its socket.
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Serves `daemon` peer to peer on a Unix socket at `path` (mode 0600, in
/// a 0700 folder created if needed). Call it once the bus name is owned:
/// a socket left by a killed tokd is replaced.
pub fn serve_private(daemon: Arc<Daemon>, path: &Path) -> Result<PrivateSocket, String> {
    let own_uid = crate::store::current_uid().map_err(|e| e.to_string())?;
    if let Some(folder) = path.parent() {
        crate::store::private_folder(folder, "runtime folder").map_err(|e| e.to_string())?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => debug!(path = %path.display(), "replaced a stale private socket"),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(format!("cannot replace {}: {error}", path.display())),
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot restrict {}: {e}", path.display()))?;
    let metadata = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    let guid = new_guid();
    let accept = tokio::spawn(accept_peers(listener, daemon, own_uid, guid));
    info!(path = %path.display(), "serving on the private socket");
    Ok(PrivateSocket {
        path: path.to_owned(),
        inode: (metadata.dev(), metadata.ino()),
        accept,
    })
}

/// A server GUID for the handshake: 32 hex digits, new at every start.
fn new_guid() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    // Should the generator fail, zeros still make a valid GUID: it only
    // names this server to its clients, it guards nothing.
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn accept_peers(listener: UnixListener, daemon: Arc<Daemon>, own_uid: u32, guid: String) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors, say: wait rather than spin.
                warn!(%error, "cannot accept on the private socket");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let uid = match stream.peer_cred() {
            Ok(credentials) => credentials.uid(),
            Err(error) => {
                warn!(%error, "cannot read a private-socket peer's credentials; refused");
                continue;
            }
        };
        if caller_allowed(uid, own_uid).is_err() {
            warn!(
                caller_uid = uid,
                "refused a private-socket connection from another uid"
            );
            continue;
        }
        tokio::spawn(serve_peer(stream, daemon.clone(), own_uid, guid.clone()));
    }
}

/// A private-socket connection as zbus sees it: the stream, and the uid
/// already checked at accept as the peer's credentials.
///
/// zbus's own Unix stream would look the peer's supplementary groups up
/// through NSS (reading /etc/passwd and /etc/group on a blocking thread)
/// for every connection, a thread hop on the path of every `tokctl get`;
/// tokd needs only the uid. No file descriptors cross this socket.
#[derive(Debug)]
struct PeerSocket {
    stream: UnixStream,
    uid: u32,
}

#[derive(Debug)]
struct PeerReader {
    read: tokio::net::unix::OwnedReadHalf,
    uid: u32,
}

#[derive(Debug)]
struct PeerWriter(tokio::net::unix::OwnedWriteHalf);

impl zbus::connection::Socket for PeerSocket {
    type ReadHalf = PeerReader;
    type WriteHalf = PeerWriter;

    fn split(self) -> zbus::connection::socket::Split<PeerReader, PeerWriter> {
        let (read, write) = self.stream.into_split();
        zbus::connection::socket::Split::new(
            PeerReader {
                read,
                uid: self.uid,
            },
            PeerWriter(write),
        )
    }
}

#[zbus::export::async_trait::async_trait]
impl zbus::connection::socket::ReadHalf for PeerReader {
    async fn recvmsg(
        &mut self,
        buffer: &mut [u8],
    ) -> std::io::Result<(usize, Vec<std::os::fd::OwnedFd>)> {
        use tokio::io::AsyncReadExt;
        Ok((self.read.read(buffer).await?, Vec::new()))
    }

    async fn peer_credentials(&mut self) -> std::io::Result<zbus::fdo::ConnectionCredentials> {
        Ok(zbus::fdo::ConnectionCredentials::default().set_unix_user_id(self.uid))
    }
}

#[zbus::export::async_trait::async_trait]
impl zbus::connection::socket::WriteHalf for PeerWriter {
    async fn sendmsg(
        &mut self,
        buffer: &[u8],
        _fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> std::io::Result<usize> {
        use tokio::io::AsyncWriteExt;
        self.0.write(buffer).await
    }

    async fn close(&mut self) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.0.shutdown().await
    }
}

/// One client of the private socket, until it hangs up.
async fn serve_peer(stream: UnixStream, daemon: Arc<Daemon>, own_uid: u32, guid: String) {
    let build = zbus::connection::Builder::socket(PeerSocket {
        stream,
        uid: own_uid,
    })
    .server(guid.as_str())
    .p2p()
    .serve_at(OBJECT_PATH, Manager::new(daemon, own_uid))
    .build();
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, build).await {
        Ok(Ok(connection)) => connection.closed().await,
        Ok(Err(error)) => debug!(%error, "a private-socket client failed its handshake"),
        Err(_) => debug!("a private-socket client did not authenticate in time"),
    }
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
