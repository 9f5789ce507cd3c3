//! The `tokd` binary: parses arguments, sets up logging, hands over to the
//! library. See ARCHITECTURE.md.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use tokd::config::Config;
use tokd::paths;

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

Exit status: 0 on success, 1 when the config is invalid or unreadable,
2 for bad usage.";

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging();
    match args.check_config {
        Some(path) => check_config(path.or(args.config)),
        None => {
            // The D-Bus service is built in the next step of the project;
            // this build can only check configs. Say so plainly.
            eprintln!(
                "tokd: this build does not serve D-Bus yet; use `tokd --check-config` to check a config"
            );
            ExitCode::from(2)
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
