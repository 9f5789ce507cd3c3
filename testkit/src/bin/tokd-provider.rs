//! `tokd-provider`: the test kit's OAuth 2.0 provider emulator as a
//! program, to try a tokd config against with no account anywhere.
//!
//! It listens on 127.0.0.1 only, registers one confidential client whose
//! secret it writes to a 0600 file, prints a consumer and an installation
//! to paste into tokd's config, and serves until Ctrl-C. Its login page
//! approves at once (no password), so `tokctl login` completes by itself
//! in the browser. Its grants live in memory: after a restart of the
//! emulator, tokd's tokens are refused and `tokctl login` is needed again,
//! which shows what tokd does when a grant is lost.
#![allow(clippy::print_stdout)] // a program that talks to its user

use clap::Parser;
use ring::rand::SecureRandom as _;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokd_testkit::{Behaviour, Emulator};

const CLIENT_ID: &str = "tokd-provider-client";

/// An OAuth 2.0 provider emulator on 127.0.0.1, for trying tokd without an
/// account anywhere. Prints the config to paste; Ctrl-C stops it.
#[derive(Debug, Parser)]
#[command(name = "tokd-provider", version)]
struct Args {
    /// The port on 127.0.0.1 (0: any free one).
    #[arg(long, default_value_t = 18080)]
    port: u16,
    /// Which provider it behaves like: wso2 (rotating refresh tokens),
    /// bitbucket (refresh tokens that do not rotate), bitbucket-classic,
    /// django (a rotation also kills the old access token), smartthings,
    /// google, atlassian, post-only (client secret in the form body).
    #[arg(long, value_name = "PROVIDER", default_value = "wso2", value_parser = behaviours())]
    behaves_like: String,
    /// How long its access tokens live (e.g. 60s, 5m): short ones show
    /// tokd refreshing on schedule. Default: the provider's own.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    access_lifetime: Option<Duration>,
    /// Where to write the client secret (mode 0600). Default:
    /// $XDG_RUNTIME_DIR/tokd-provider-UID/client.secret, else the same in
    /// the system's temporary folder.
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,
}

fn behaviours() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new([
        "wso2",
        "bitbucket",
        "bitbucket-classic",
        "django",
        "smartthings",
        "google",
        "atlassian",
        "post-only",
    ])
}

fn behaviour(name: &str) -> Behaviour {
    match name {
        "bitbucket" => Behaviour::bitbucket_2026(),
        "bitbucket-classic" => Behaviour::bitbucket_classic(),
        "django" => Behaviour::django_oauth_toolkit(),
        "smartthings" => Behaviour::smartthings(),
        "google" => Behaviour::google(),
        "atlassian" => Behaviour::atlassian(),
        "post-only" => Behaviour::post_only(),
        _ => Behaviour::wso2(),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    let mut chosen = behaviour(&args.behaves_like);
    if let Some(lifetime) = args.access_lifetime {
        chosen.access_lifetime = lifetime;
    }
    let lifetime = chosen.access_lifetime;
    let emulator = match Emulator::start_at(chosen, args.port).await {
        Ok(emulator) => emulator,
        Err(error) => {
            eprintln!(
                "tokd-provider: cannot listen on 127.0.0.1:{} ({error}); choose another with --port",
                args.port
            );
            return ExitCode::FAILURE;
        }
    };
    // A file named by --secret-file is never replaced (a mistyped path
    // must not cost a file); the default one, in the user's own folder,
    // is each run's.
    let replace = args.secret_file.is_none();
    let secret_file = match args.secret_file.map_or_else(default_secret_file, Ok) {
        Ok(path) => path,
        Err(error) => {
            eprintln!("tokd-provider: {error}");
            return ExitCode::FAILURE;
        }
    };
    let secret = random_secret();
    if let Err(error) = write_secret(&secret_file, &secret, replace) {
        eprintln!(
            "tokd-provider: cannot write the client secret to {}: {error}",
            secret_file.display()
        );
        return ExitCode::FAILURE;
    }
    emulator.register_client(CLIENT_ID, &secret);
    println!(
        "tokd-provider: an OAuth 2.0 provider emulator on {} (behaves like {}; access tokens live {})",
        emulator.base_url(),
        args.behaves_like,
        humantime::format_duration(lifetime)
    );
    let config = std::env::var_os("TOKD_CONFIG")
        .filter(|path| !path.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CONFIG_HOME")
                .map(PathBuf::from)
                .filter(|path| path.is_absolute())
                .map(|home| home.join("tokd/config.toml"))
        })
        .map_or_else(
            || "~/.config/tokd/config.toml".to_owned(),
            |path| path.display().to_string(),
        );
    println!("Add to tokd's config ({config}):\n");
    print!(
        "{}",
        emulator.consumer_table(
            "emulator",
            CLIENT_ID,
            &secret_file,
            "http://127.0.0.1:8765/callback"
        )
    );
    println!("\n[installations.try]\nconsumer = \"emulator\"\nscopes = [\"read\"]\n");
    println!(
        "then run `tokctl reload` and `tokctl login try` (its login page approves at once), and `tokctl get try`\n\
         (tokd must be running: installed as the README says, the first tokctl call starts it; else run it\n\
         yourself, e.g. `cargo run --bin tokd` in another terminal, and tokctl as `cargo run --bin tokctl -- …`).\n\
         Ctrl-C stops it; its grants live in memory only."
    );
    let _ = std::io::stdout().flush();
    let _ = tokio::signal::ctrl_c().await;
    ExitCode::SUCCESS
}

/// `$XDG_RUNTIME_DIR/tokd-provider-UID/client.secret`, else the same in
/// the temporary folder (a folder of this user's alone).
fn default_secret_file() -> Result<PathBuf, String> {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    // In a shared temporary folder another user may have made this folder
    // first: it must be this user's, and no one else's to read.
    let folder = base.join(format!(
        "tokd-provider-{}",
        rustix::process::getuid().as_raw()
    ));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&folder)
        .map_err(|error| format!("cannot create {}: {error}", folder.display()))?;
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let meta = std::fs::symlink_metadata(&folder)
        .map_err(|error| format!("cannot read {}: {error}", folder.display()))?;
    if !meta.is_dir()
        || meta.uid() != rustix::process::getuid().as_raw()
        || meta.permissions().mode() & 0o077 != 0
    {
        return Err(format!(
            "{} is not a folder of this user's alone; remove it, or give --secret-file",
            folder.display()
        ));
    }
    Ok(folder.join("client.secret"))
}

fn random_secret() -> String {
    let mut bytes = [0u8; 24];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("system random");
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn write_secret(path: &std::path::Path, secret: &str, replace: bool) -> std::io::Result<()> {
    if replace {
        let _ = std::fs::remove_file(path);
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(secret.as_bytes())
}
