//! The private socket, `$XDG_RUNTIME_DIR/tokd/bus`: the same object peer
//! to peer, one zbus connection per client, as systemd's private socket
//! does for systemctl: no bus daemon hop and no `Hello` (see
//! BENCHMARKS.md). Its caller check happens once, at accept, from the
//! socket's peer credentials. Signals go out on the session bus only (a
//! client that waits for one, `tokctl login`, uses it).

use super::{Manager, caller_allowed};
use crate::accept::AcceptErrors;
use crate::broker::Broker;
use crate::os::FolderError;
use crate::tasks::Tasks;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokd_shared::OBJECT_PATH;
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, info, warn};

/// Why the private socket could not be served.
#[derive(Debug, thiserror::Error)]
pub enum PrivateSocketError {
    #[error(transparent)]
    Folder(#[from] FolderError),
    #[error("cannot replace {}", .path.display())]
    Replace {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is there and is not a socket; tokd leaves it alone", .0.display())]
    NotASocket(PathBuf),
    #[error("cannot listen on {}", .path.display())]
    Listen {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot tell this process's uid")]
    Uid(#[source] std::io::Error),
}

/// How long a client of the private socket may take to authenticate.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The private socket while it is served. Its accept loop is a task of
/// the `Tasks` it was served with; dropping it removes the socket file (if
/// it is still the one bound here).
#[derive(Debug)]
pub struct PrivateSocket {
    path: PathBuf,
    inode: (u64, u64),
}

impl PrivateSocket {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PrivateSocket {
    fn drop(&mut self) {
        // A successor may have bound the path already; leave its socket.
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Serves `broker` peer to peer on a Unix socket at `path` (mode 0600, in
/// a 0700 folder created if needed), accepting in a task of `tasks`. Call
/// it once the bus name is owned: a socket left by a killed tokd is
/// replaced.
pub fn serve_private(
    broker: Arc<Broker>,
    path: &Path,
    tasks: &Tasks,
) -> Result<PrivateSocket, PrivateSocketError> {
    let own_uid = crate::os::current_uid().map_err(PrivateSocketError::Uid)?;
    if let Some(folder) = path.parent() {
        // $XDG_RUNTIME_DIR must be this user's alone; it is not changed.
        if let Some(runtime) = folder.parent() {
            if std::fs::symlink_metadata(runtime)
                .is_err_and(|error| error.kind() == std::io::ErrorKind::NotFound)
            {
                crate::os::private_folder(runtime, "XDG_RUNTIME_DIR")?;
            }
            crate::os::check_private_folder(runtime, "XDG_RUNTIME_DIR")?;
        }
        crate::os::private_folder(folder, "runtime folder")?;
    }
    // Only a socket (a stale one, the name being ours) is replaced.
    match std::fs::symlink_metadata(path) {
        Ok(metadata) if metadata.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|source| PrivateSocketError::Replace {
                path: path.to_owned(),
                source,
            })?;
            debug!(path = %path.display(), "replaced a stale private socket");
        }
        Ok(_) => return Err(PrivateSocketError::NotASocket(path.to_owned())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(PrivateSocketError::Replace {
                path: path.to_owned(),
                source,
            });
        }
    }
    let listen_error = |source| PrivateSocketError::Listen {
        path: path.to_owned(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(listen_error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(listen_error)?;
    let metadata = std::fs::symlink_metadata(path).map_err(listen_error)?;
    let guid = new_guid();
    tasks.spawn_until_stopped(accept_peers(listener, broker, own_uid, guid, tasks.clone()));
    info!(path = %path.display(), "serving on the private socket");
    Ok(PrivateSocket {
        path: path.to_owned(),
        inode: (metadata.dev(), metadata.ino()),
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

async fn accept_peers(
    listener: UnixListener,
    broker: Arc<Broker>,
    own_uid: u32,
    guid: String,
    tasks: Tasks,
) {
    let mut errors = AcceptErrors::new("the private socket");
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                errors.succeeded();
                stream
            }
            Err(error) => {
                errors.failed(&error).await;
                continue;
            }
        };
        let (uid, pid) = match stream.peer_cred() {
            Ok(credentials) => (credentials.uid(), credentials.pid()),
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
        let peer = super::caller::Peer::of(&stream, pid);
        tasks.spawn_until_stopped(serve_peer(
            stream,
            peer,
            broker.clone(),
            own_uid,
            guid.clone(),
        ));
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
async fn serve_peer(
    stream: UnixStream,
    peer: super::caller::Peer,
    broker: Arc<Broker>,
    own_uid: u32,
    guid: String,
) {
    let build = zbus::connection::Builder::socket(PeerSocket {
        stream,
        uid: own_uid,
    })
    .server(guid.as_str())
    .p2p()
    .serve_at(OBJECT_PATH, Manager::for_peer(broker, own_uid, peer))
    .build();
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, build).await {
        Ok(Ok(connection)) => connection.closed().await,
        Ok(Err(error)) => debug!(%error, "a private-socket client failed its handshake"),
        Err(_) => debug!("a private-socket client did not authenticate in time"),
    }
}
