//! The daemon's one entry: [`run`] owns the order in which tokd starts and
//! stops, so that `main.rs` only parses arguments, sets up logging and
//! signals, and tests can drive a whole daemon in-process.
//!
//! Start: connect to the bus, choose where tokens are kept, load every
//! installation (tokens in the keyring included), serve the object on the
//! bus and take the name (object first), bind the private socket (only
//! the name's owner may replace a stale one), move tokens to where they
//! belong, then start refreshing on schedule.
//!
//! Stop (on [`Control::Stop`], or when the bus goes away): the broker
//! starts no new request and waits, at most [`STOP_BOUND`], for requests
//! already sent, so that their rotated tokens are written; meanwhile held
//! tokens are still served and the name is kept, so that a successor
//! cannot refresh with a token being rotated. Then the private socket is
//! removed and the name released.

use crate::broker::{Broker, Options, STOP_BOUND};
use crate::bus::{self, ServeError};
use crate::config::Config;
use crate::oauth::OAuthClient;
use crate::storage::{SecretService, StateFolder, Storage};
use crate::tasks::Tasks;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;
use tracing::{info, warn};

/// How long the serving tasks (private-socket clients, signal forwarding)
/// get to end once the broker has stopped.
const SERVING_STOP_BOUND: Duration = Duration::from_secs(2);

/// Everything a daemon is made of.
#[derive(Debug)]
pub struct Setup {
    pub config: Config,
    /// What `reload` re-reads (`None`: reload refuses).
    pub config_path: Option<PathBuf>,
    /// The state folder.
    pub state: StateFolder,
    pub http: OAuthClient,
    /// The bus to serve on (`Builder::session()` in tokd).
    pub bus: zbus::connection::Builder<'static>,
    /// Where to serve the private socket, if anywhere.
    pub private_socket: Option<PathBuf>,
    pub options: Options,
}

/// What the daemon's owner asks of it while it runs (tokd: signals).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Re-read the config file (SIGHUP).
    Reload,
    /// Stop (SIGTERM, SIGINT).
    Stop,
}

/// Why the daemon stopped other than by [`Control::Stop`].
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("the session bus went away")]
    BusGone,
}

/// Runs a daemon until `control` says stop (or closes), or its bus goes
/// away.
pub async fn run(setup: Setup, mut control: UnboundedReceiver<Control>) -> Result<(), RunError> {
    let (events, receiver) = tokio::sync::mpsc::unbounded_channel();
    // The connection first, without the name: the keyring is read over
    // it before anything is served.
    let connection = setup
        .bus
        .build()
        .await
        .map_err(|error| RunError::Serve(ServeError::Bus(error)))?;
    let storage = Storage::new(
        setup.state,
        Some(Arc::new(SecretService::new(connection.clone()))),
    );
    storage.begin(setup.config.daemon.store).await;
    let broker = Broker::start(
        setup.config,
        setup.config_path,
        Arc::new(storage),
        setup.http,
        events,
        setup.options,
    );
    broker.keeper().read_keyring_all().await;
    let serving = Tasks::new();
    bus::serve(&connection, broker.clone(), receiver, &serving).await?;
    // After the name: holding it proves no other tokd of this session
    // serves, so a socket already there is a stale one. Without the socket
    // tokctl still works, over the bus.
    let private = setup.private_socket.and_then(|path| {
        bus::serve_private(broker.clone(), &path, &serving)
            .inspect_err(|error| {
                warn!(
                    "no private socket ({}); clients use the session bus",
                    crate::text::error_chain(error)
                );
            })
            .ok()
    });
    // Also after the name: only the one tokd of this session moves tokens
    // between the state files and the keyring.
    broker.keeper().move_all().await;
    broker.start_schedules();
    let outcome = loop {
        tokio::select! {
            asked = control.recv() => match asked {
                Some(Control::Reload) => match broker.reload().await {
                    Ok(summary) => info!(%summary, "config reloaded on request"),
                    Err(error) => warn!(%error, "config refused"),
                },
                Some(Control::Stop) | None => break Ok(()),
            },
            () = connection.closed() => {
                // Without its bus nobody can reach tokd; a new one is started
                // by the next session (or by systemd's Restart=on-failure).
                warn!("the session bus went away; stopping");
                break Err(RunError::BusGone);
            }
        }
    };
    broker.stop(STOP_BOUND).await;
    // The socket goes first: a successor binds its own once it has the
    // name, which dropping the connection releases.
    drop(private);
    serving.stop(SERVING_STOP_BOUND).await;
    bus::unserve(&connection).await;
    drop(connection);
    info!("stopped");
    outcome
}
