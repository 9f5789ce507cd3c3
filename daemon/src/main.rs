//! The `tokd` binary: parses arguments, sets up logging and signals, and
//! hands over to [`tokd::run`]. See ARCHITECTURE.md.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use tokd::config::Config;
use tokd::oauth::OAuthClient;
use tokd::server::{Control, Setup};
use tokd::storage::StateFolder;
use tokd::text::error_chain as chain;
use tokd::{broker, paths};
use tracing::{error, info, warn};

/// Zeroing on free, over mimalloc: see the `tokd-alloc` crate.
#[global_allocator]
static ALLOCATOR: tokd_alloc::Allocator = tokd_alloc::ALLOCATOR;

/// A per-user OAuth 2.0 token broker: it keeps the access tokens of
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
    /// prints each table's first problem with its file and line, all in one
    /// run, or a one-line summary. Nothing is fetched from the network.
    #[arg(long, value_name = "PATH", num_args = 0..=1)]
    check_config: Option<Option<PathBuf>>,

    /// With --check-config: also fetch the discovery document of every
    /// consumer with an `issuer`, check it, and print its endpoints.
    #[arg(long, requires = "check_config")]
    online: bool,
}

const AFTER_HELP: &str = "\
Logging goes to stderr, filtered by TOKD_LOG (default: info), e.g.
TOKD_LOG=debug or TOKD_LOG=tokd=trace. Tokens and secrets are never logged.

Without --check-config, tokd serves org.tokd.tokd1 on the session bus
(DBUS_SESSION_BUS_ADDRESS), and the same interface peer to peer on
$XDG_RUNTIME_DIR/tokd/bus for this user, until SIGTERM or SIGINT, after which it starts
no new request, waits (at most 65 s) for requests already sent to
providers so that their tokens are written, and exits. SIGHUP reloads
the config. State is kept under $XDG_STATE_HOME/tokd/.

Exit status: 0 on success (and after SIGTERM), 1 when the config is
invalid or unreadable or the bus cannot be served, 2 for bad usage.";

fn main() -> ExitCode {
    // Pages freed after a burst of calls go back to the system at once
    // (while tokd has one thread: nothing has started another yet).
    let purging = tokd_alloc::return_freed_pages_at_once();
    // Before any secret is read: no core dump of tokd's memory, and no
    // ptrace or /proc/PID/mem by other processes of this user without
    // CAP_SYS_PTRACE.
    let not_dumpable =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable);
    let args = Args::parse();
    init_logging();
    if !purging {
        warn!("mimalloc's purge delay was not set: tokd had more than one thread at start");
    }
    if let Err(error) = not_dumpable {
        warn!(%error, "cannot make tokd's memory undumpable; a core dump could hold tokens");
    }
    if let Some(path) = args.check_config {
        return check_config(path.or(args.config), args.online);
    }
    // One thread is plenty: the daemon waits on the network and the bus;
    // store writes go to tokio's blocking pool.
    let outcome = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| Failure::new("cannot start the async runtime", error))
        .and_then(|runtime| runtime.block_on(serve(args.config)));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            error!("{failure}");
            ExitCode::FAILURE
        }
    }
}

/// A failure before or while serving, printed with its causes.
#[derive(Debug)]
struct Failure(String);

impl Failure {
    fn new(what: &str, error: impl std::error::Error) -> Self {
        Self(format!("{what}: {}", chain(&error)))
    }

    fn of(error: impl std::error::Error) -> Self {
        Self(chain(&error))
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

async fn serve(explicit: Option<PathBuf>) -> Result<(), Failure> {
    // Before the name is taken: a SIGTERM sent as soon as tokd is seen on
    // the bus must stop it cleanly, not kill it by the default action.
    let mut signals =
        Signals::install().map_err(|e| Failure::new("cannot install signal handlers", e))?;
    let path = paths::config_path(explicit)
        .map_err(Failure::of)
        .inspect_err(record_start_error)?;
    let config = if path.exists() {
        let config = Config::from_path(&path)
            .map_err(Failure::of)
            .inspect_err(record_start_error)?;
        for warning in config.warnings(&path) {
            warn!("{warning}");
        }
        config
    } else {
        // A first start (often by D-Bus activation from `tokctl list`)
        // before any config exists: serve nothing rather than fail, so
        // tokctl can say so; `tokctl reload` picks the file up later.
        warn!(config = %path.display(), "no config file yet; serving no installations until it exists and `tokctl reload` runs");
        Config::from_str("").map_err(Failure::of)?
    };
    let state = paths::state_dir()
        .map_err(Failure::of)
        .and_then(|dir| StateFolder::open(dir).map_err(Failure::of))
        .inspect_err(record_start_error)?;
    // This start's setup is sound: a reason a former one gave is stale.
    if let Some(file) = tokd_shared::start_error_path() {
        let _ = std::fs::remove_file(file);
    }
    let http = OAuthClient::new().map_err(Failure::of)?;
    let private_socket = tokd_shared::private_socket_path();
    if private_socket.is_none() {
        warn!("XDG_RUNTIME_DIR is not set: no private socket; clients use the session bus");
    }
    info!(config = %path.display(), state = %state.dir().display(), "starting");
    let setup = Setup {
        config,
        config_path: Some(path),
        state,
        http,
        bus: zbus::connection::Builder::session(),
        private_socket,
        options: broker::Options::default(),
    };
    let (control, receiver) = tokio::sync::mpsc::unbounded_channel();
    let run = tokd::run(setup, receiver);
    tokio::pin!(run);
    loop {
        tokio::select! {
            outcome = &mut run => return outcome.map_err(Failure::of),
            signal = signals.next() => {
                // The receiver lives as long as `run`, which is still going.
                let _ = control.send(signal);
            }
        }
    }
}

/// Keeps why this tokd cannot start where tokctl looks when it cannot
/// start tokd (`$XDG_RUNTIME_DIR/tokd/start-error`, 0600 in the 0700
/// runtime folder): started by D-Bus activation, tokd's own stderr goes
/// where the user does not look.
fn record_start_error(failure: &Failure) {
    let Some(file) = tokd_shared::start_error_path() else {
        return;
    };
    let written = file
        .parent()
        .map_or(Ok(()), |folder| {
            tokd::os::private_folder(folder, "runtime folder").map_err(std::io::Error::other)
        })
        .and_then(|()| {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let _ = std::fs::remove_file(&file);
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&file)?
                .write_all(failure.0.as_bytes())
        });
    if let Err(error) = written {
        warn!(path = %file.display(), %error, "cannot keep why tokd could not start");
    }
}

/// SIGTERM, SIGINT and SIGHUP.
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

    /// The next signal, as what it asks of the daemon.
    async fn next(&mut self) -> Control {
        tokio::select! {
            _ = self.term.recv() => { info!("SIGTERM: stopping"); Control::Stop }
            _ = self.int.recv() => { info!("SIGINT: stopping"); Control::Stop }
            _ = self.hup.recv() => { info!("SIGHUP: reloading the config"); Control::Reload }
        }
    }
}

#[allow(clippy::print_stdout)] // the result of --check-config
fn check_config(explicit: Option<PathBuf>, online: bool) -> ExitCode {
    let checked = paths::config_path(explicit)
        .map_err(Failure::of)
        .and_then(|path| {
            let config = Config::from_path(&path).map_err(Failure::of)?;
            Ok((path, config))
        });
    let (path, config) = match checked {
        Ok(checked) => checked,
        Err(failure) => {
            // Each problem on its own line (a config's are all reported).
            let lines: Vec<&str> = failure.0.lines().collect();
            for line in &lines {
                eprintln!("tokd: {line}");
            }
            if lines.len() > 1 {
                eprintln!("tokd: {} problems", lines.len());
            }
            return ExitCode::FAILURE;
        }
    };
    for warning in config.warnings(&path) {
        eprintln!("tokd: warning: {warning}");
    }
    if online {
        let discovered = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| Failure::new("cannot start the async runtime", error))
            .and_then(|runtime| runtime.block_on(discover_all(&config)));
        match discovered {
            Ok(lines) => lines.iter().for_each(|line| println!("{line}")),
            Err(failure) => {
                eprintln!("tokd: {failure}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!("{}: ok: {}", path.display(), config.summary());
    ExitCode::SUCCESS
}

/// Each consumer with an `issuer`: its endpoints as discovered now.
async fn discover_all(config: &Config) -> Result<Vec<String>, Failure> {
    let http = OAuthClient::new().map_err(Failure::of)?;
    let mut lines = Vec::new();
    for consumer in config.consumers.values() {
        let Some(issuer) = &consumer.issuer else {
            continue;
        };
        let document = http
            .discover(issuer)
            .await
            .map_err(|error| Failure(format!("consumer `{}`: {}", consumer.name, error.message)))?;
        let endpoints =
            tokd::oauth::Endpoints::of(consumer, Some(&document)).map_err(Failure::of)?;
        let show = |url: &Option<url::Url>| url.as_ref().map_or("-".to_owned(), |u| u.to_string());
        lines.push(format!(
            "consumer `{}`: discovered from {issuer}: token {}, authorize {}, device {}, revoke {}",
            consumer.name,
            endpoints.token_url,
            show(&endpoints.auth_url),
            show(&endpoints.device_url),
            show(&endpoints.revoke_url),
        ));
    }
    Ok(lines)
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

#[cfg(test)]
mod tests {
    use super::Args;

    #[test]
    fn the_man_page_in_the_repository_is_up_to_date() {
        use clap::CommandFactory as _;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../man");
        let pages = tokd_testkit::generated::man_pages(Args::command());
        tokd_testkit::generated::check_generated(&dir, &pages, |name| name == "tokd.1");
    }
}
