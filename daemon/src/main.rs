//! The `tokd` binary: parses arguments, sets up logging, hands over to the
//! library. See ARCHITECTURE.md.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use tokd::config::Config;
use tokd::oauth::OAuthClient;
use tokd::service::{Daemon, SHUTDOWN_BOUND};
use tokd::store::Store;
use tokd::{bus, paths};
use tracing::{error, info, warn};

/// tokd: a per-user OAuth 2.0 token broker. It keeps the access tokens of
/// your OAuth installations fresh and serves them over D-Bus to `tokctl`
/// and desktop programs.
#[derive(Debug, Parser)]
#[command(name = "tokd", version, after_help = AFTER_HELP)]
struct Args {
    /// Read the config from PATH instead of $TOKD_CONFIG or
    /// $XDG_CONFIG_HOME/tokd/config.toml.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,

    /// Check a config file (PATH, or the one tokd would read) and exit:
    /// prints the first problem with its file and line, or a one-line summary.
    #[arg(long, value_name = "PATH", num_args = 0..=1)]
    check_config: Option<Option<PathBuf>>,
}

const AFTER_HELP: &str = "\
Logging goes to stderr, filtered by TOKD_LOG (default: info), e.g.
TOKD_LOG=debug or TOKD_LOG=tokd=trace. Tokens and secrets are never logged.

Without --check-config, tokd serves org.tokd.tokd1 on the session bus
(DBUS_SESSION_BUS_ADDRESS), and the same interface peer to peer on
$XDG_RUNTIME_DIR/tokd/bus for this user, until SIGTERM or SIGINT, after which it starts
no new request, waits (at most 35 s) for requests already sent to
providers so that their tokens are written, and exits. SIGHUP reloads
the config. State is kept under $XDG_STATE_HOME/tokd/.

Exit status: 0 on success (and after SIGTERM), 1 when the config is
invalid or unreadable or the bus cannot be served, 2 for bad usage.";

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging();
    if let Some(path) = args.check_config {
        return check_config(path.or(args.config));
    }
    // One thread is plenty: the daemon waits on the network and the bus;
    // store writes go to tokio's blocking pool.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tokd: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(args.config))
}

async fn run(explicit: Option<PathBuf>) -> ExitCode {
    let mut signals = match Signals::install() {
        Ok(signals) => signals,
        Err(error) => {
            error!("cannot install signal handlers: {error}");
            return ExitCode::FAILURE;
        }
    };
    let path = match paths::config_path(explicit) {
        Ok(path) => path,
        Err(error) => {
            error!("{error}");
            return ExitCode::FAILURE;
        }
    };
    let loaded = if path.exists() {
        Config::from_path(&path)
    } else {
        // A first start (often by D-Bus activation from `tokctl list`)
        // before any config exists: serve nothing rather than fail, so
        // tokctl can say so; `tokctl reload` picks the file up later.
        warn!(config = %path.display(), "no config file yet; serving no installations until it exists and `tokctl reload` runs");
        Config::from_str("")
    };
    let config = match loaded {
        Ok(config) => config,
        Err(error) => {
            error!("{error}");
            return ExitCode::FAILURE;
        }
    };
    let store = match paths::state_dir()
        .map_err(|e| e.to_string())
        .and_then(|dir| Store::open(dir).map_err(|e| e.to_string()))
    {
        Ok(store) => store,
        Err(error) => {
            error!("{error}");
            return ExitCode::FAILURE;
        }
    };
    let http = match OAuthClient::new() {
        Ok(http) => http,
        Err(error) => {
            error!("{error}");
            return ExitCode::FAILURE;
        }
    };
    info!(config = %path.display(), state = %store.dir().display(), "starting");
    let (events, receiver) = tokio::sync::mpsc::unbounded_channel();
    let daemon = Daemon::start(config, Some(path), store, http, events).await;
    let connection = match bus::serve(daemon.clone(), receiver).await {
        Ok(connection) => connection,
        Err(zbus::Error::NameTaken) => {
            error!(
                "another tokd already owns {} on this session bus",
                tokd_shared::BUS_NAME
            );
            return ExitCode::FAILURE;
        }
        Err(error) => {
            error!("cannot serve on the session bus: {error}; is DBUS_SESSION_BUS_ADDRESS set?");
            return ExitCode::FAILURE;
        }
    };
    // After the name: holding it proves no other tokd of this session
    // serves, so a socket already there is a stale one. Without the
    // socket tokctl still works, over the bus.
    let private = match tokd_shared::private_socket_path() {
        Some(path) => match bus::serve_private(daemon.clone(), &path) {
            Ok(socket) => Some(socket),
            Err(error) => {
                warn!("no private socket ({error}); clients use the session bus");
                None
            }
        },
        None => {
            warn!("XDG_RUNTIME_DIR is not set: no private socket; clients use the session bus");
            None
        }
    };
    daemon.start_schedules().await;
    let code = tokio::select! {
        () = signals.wait(&daemon) => ExitCode::SUCCESS,
        () = connection.closed() => {
            // Without its bus nobody can reach tokd; a new one is started
            // by the next session (or by systemd's Restart=on-failure).
            error!("the session bus went away; stopping");
            ExitCode::FAILURE
        }
    };
    // Keep the name while requests already sent finish and are written:
    // a successor started now could refresh with a token being rotated.
    // Calls meanwhile get Stopping (or a held token).
    daemon.shutdown(SHUTDOWN_BOUND).await;
    // The socket goes first: a successor binds its own once it has the
    // name, which dropping the connection releases.
    drop(private);
    drop(connection);
    info!("stopped");
    code
}

/// SIGTERM, SIGINT and SIGHUP, installed before the name is taken: a
/// SIGTERM sent as soon as tokd is seen on the bus must stop it cleanly,
/// not kill it by the default action.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Reloads on SIGHUP; returns on SIGTERM or SIGINT.
    async fn wait(&mut self, daemon: &Daemon) {
        loop {
            tokio::select! {
                _ = self.term.recv() => { info!("SIGTERM: stopping"); break; }
                _ = self.int.recv() => { info!("SIGINT: stopping"); break; }
                _ = self.hup.recv() => match daemon.reload().await {
                    Ok(summary) => info!(%summary, "SIGHUP: config reloaded"),
                    Err(error) => warn!(%error, "SIGHUP: config refused"),
                },
            }
        }
    }
}

fn check_config(explicit: Option<PathBuf>) -> ExitCode {
    let path = match paths::config_path(explicit) {
        Ok(path) => path,
        Err(error) => {
            eprintln!("tokd: {error}");
            return ExitCode::FAILURE;
        }
    };
    match Config::from_path(&path) {
        Ok(config) => {
            #[allow(clippy::print_stdout)] // the one result of --check-config
            {
                println!("{}: ok: {}", path.display(), config.summary());
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("tokd: {error}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("TOKD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false);
    // Under systemd the journal stamps every line already.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().init();
    } else {
        builder.init();
    }
}
