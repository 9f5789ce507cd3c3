//! tokctl: asks the tokd daemon over D-Bus for a token (and the rest of
//! the commands in the README). One call per run on a current-thread runtime;
//! no daemon code is compiled in.
//!
//! stdout carries only the result. On failure stdout stays empty, stderr
//! has one line (what happened, what to do) and the exit status says which
//! kind of failure it was (see [`EXIT_HELP`]).

mod add;
mod callers;
mod cargo;
mod complete;
mod direct;
mod docker;
mod exec;
mod failure;
mod git;
mod kube;
mod login;
mod output;
mod say;

use clap::{Parser, Subcommand, ValueEnum};
use failure::{Failure, exit};
use output::{JsonInstallation, JsonStatus, details, expiry_phrase, table, to_json};
use std::future::Future;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokd_shared::ManagerProxy;

const EXIT_HELP: &str = "\
Exit status:
  0  success
  1  other failure (a login refused or timed out, access denied)
  2  bad usage, or an argument the daemon refused
  3  no installation has that name
  4  a login is needed: run `tokctl login NAME`
  5  the provider is failing and no valid token is held; tokd retries by itself
  6  the consumer or config is wrong: fix it, then `tokctl reload`
  7  tokd cannot be reached (not running, no session bus, stopping)
  8  the keyring holding the tokens is locked or gone: unlock or start it
  9  tokd cannot start (its config is wrong): fix what it says, run again

On failure stdout is empty and stderr has one line saying what to do.

tokctl reaches tokd over its private socket, $XDG_RUNTIME_DIR/tokd/bus,
when it answers and belongs to this user, else over the session bus
(which starts tokd if needed).

Cargo's credential provider: `tokctl --cargo-plugin`, which Cargo runs for
credential-provider = [\"tokctl\", \"cargo-credential\", \"NAME\"].
The container tools' credential helper: tokctl linked as
docker-credential-tokd (get|store|erase|list|version).";

/// How long tokctl waits for tokd unless `--timeout` says otherwise:
/// enough for a refresh at a slow provider.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `login` waits for the browser unless `--timeout` says
/// otherwise.
pub(crate) const DEFAULT_LOGIN_WAIT: Duration = Duration::from_secs(300);
/// How long the private socket's handshake may take before tokctl uses
/// the session bus instead (tokd answers it in well under a millisecond).
const SOCKET_HANDSHAKE: Duration = Duration::from_secs(2);

/// Get fresh OAuth 2.0 access tokens from the tokd daemon.
///
/// git clone "https://x-token-auth:$(tokctl get bitbucket)@bitbucket.org/team/repo.git"
#[derive(Debug, Parser)]
#[command(name = "tokctl", version, after_help = EXIT_HELP)]
pub(crate) struct Cli {
    /// Give up (exit 7) when tokd has not answered within DURATION
    /// (default 60s: time for a refresh at a slow provider). For `login`,
    /// how long to wait for the browser (default 5m).
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_duration)]
    timeout: Option<Duration>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print an access token valid for at least --min-valid.
    Get {
        /// The installation, as named in the config (`tokctl list` shows them).
        #[arg(add = names())]
        name: String,
        /// Refresh first if the held token expires sooner than this
        /// (e.g. 90s, 5m, or plain seconds).
        #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
        min_valid: Duration,
        /// raw: the token; header: `Authorization: Bearer TOKEN`; json: an
        /// object with access_token, token_type, expires_at, expires_in;
        /// xoauth2 or oauthbearer: the base64 SASL initial response a mail
        /// client sends after `AUTH XOAUTH2` or `AUTH OAUTHBEARER` (RFC
        /// 7628), for --user.
        #[arg(long, value_enum, default_value_t = Format::Raw)]
        format: Format,
        /// The mail address (or account name) that --format xoauth2 and
        /// oauthbearer log in as.
        #[arg(long, value_name = "ADDRESS")]
        user: Option<String>,
    },
    /// Every installation: state, expiry, next refresh.
    List {
        /// One JSON array of objects: name, consumer, grant
        /// (authorization_code or client_credentials), state (empty, valid,
        /// refreshing, failing, needs-login, misconfigured, locked), message,
        /// scopes (granted, or asked for before a login), expires_at,
        /// last_refresh, next_refresh (Unix seconds or null), last_error.
        /// Strings with nothing to say are null.
        #[arg(long)]
        json: bool,
    },
    /// One installation in detail (or all of them).
    Status {
        /// The installation (all of them without it).
        #[arg(add = names())]
        name: Option<String>,
        /// One JSON object with the fields of `list --json` and tokens_in
        /// (keyring, file, or null when it holds none); an array without
        /// NAME.
        #[arg(long)]
        json: bool,
    },
    /// Authorize an installation: in the browser (authorization code +
    /// PKCE), or with a code entered on another device (--device). Without
    /// a display and without --no-browser or --code, the device flow is
    /// used when the consumer has one.
    Login {
        /// The installation, as named in the config (`tokctl list` shows them).
        #[arg(add = names())]
        name: String,
        /// Print the URL instead of opening a browser (and keep to the
        /// browser flow).
        #[arg(long, conflicts_with = "device")]
        no_browser: bool,
        /// Log in with a code entered on any device (RFC 8628): for SSH
        /// sessions and machines without a browser. The URL goes to stdout
        /// (for a QR code, say), the code to stderr.
        #[arg(long)]
        device: bool,
        /// Finish with a code copied by hand from the address the browser
        /// landed on (`-` reads it from stdin, keeping it out of `ps`).
        /// Codes may start with `-`.
        #[arg(
            long,
            value_name = "CODE",
            allow_hyphen_values = true,
            conflicts_with = "device"
        )]
        code: Option<String>,
    },
    /// Refresh now.
    Refresh {
        /// The installation, as named in the config (`tokctl list` shows them).
        #[arg(add = names())]
        name: String,
    },
    /// Revoke the grant at the provider (if it can) and forget the tokens.
    Revoke {
        /// The installation, as named in the config (`tokctl list` shows them).
        #[arg(add = names())]
        name: String,
    },
    /// Make tokd re-read its config file.
    Reload,
    /// Run COMMAND with fresh tokens in its environment, never in its
    /// arguments (which anyone can read in `ps`).
    ///
    ///   tokctl exec bitbucket -- ./deploy.sh               # $TOKEN
    ///   tokctl exec bitbucket --env BB_TOKEN -- ./deploy.sh
    ///   tokctl exec --env bitbucket=BB_TOKEN --env github=GH_TOKEN -- ./sync.sh
    ///
    /// tokctl becomes COMMAND (exec), so the exit status is COMMAND's:
    /// 126 when it cannot be run, 127 when it is not found. When a token
    /// cannot be had, COMMAND is not run and the status is tokctl's own.
    #[command(verbatim_doc_comment)]
    Exec {
        /// The installation whose token goes in $TOKEN (or in --env VAR).
        #[arg(add = names())]
        name: Option<String>,
        /// VAR: the variable for NAME's token (default TOKEN).
        /// INSTALLATION=VAR: that installation's token in VAR. Repeatable.
        /// Not a variable read as COMMAND starts (LD_*, PATH, IFS, ENV,
        /// BASH_ENV, LANG, LC_*, NODE_OPTIONS, …).
        #[arg(long = "env", value_name = "VAR | INSTALLATION=VAR")]
        env: Vec<String>,
        /// Refresh first if a held token expires sooner than this.
        #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
        min_valid: Duration,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "COMMAND", add = complete::command_line())]
        command: Vec<std::ffi::OsString>,
    },
    /// git's credential helper: gives git a fresh token of NAME.
    ///
    /// Set it up once per host, e.g.
    ///   git config --global credential.https://bitbucket.org.helper '!tokctl git-credential bitbucket'
    ///
    /// git runs it with `get`, `store` or `erase` and the request on
    /// stdin. `get` prints username, password and password_expiry_utc,
    /// or nothing when it cannot help (the reason goes to stderr and git
    /// asks its next helper). Tokens go only over https (or http to this
    /// machine) to the consumer's git hosts. `store` is ignored; `erase`
    /// (git saw the token refused) makes tokd refresh it.
    #[command(verbatim_doc_comment)]
    GitCredential {
        /// The installation whose tokens git gets.
        #[arg(add = names())]
        name: String,
        /// What git asks: get, store or erase (others are ignored).
        #[arg(add = complete::git_operations())]
        operation: String,
        /// Refresh first if the held token expires sooner than this.
        #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
        min_valid: Duration,
    },
    /// Add an installation, and its consumer, to tokd's config, then
    /// reload tokd and log in. The client secret goes into the keyring
    /// when tokd keeps its tokens there (through secret-tool), else into a
    /// 0600 file beside the config; never into the config. Missing values
    /// are asked for on a terminal; every one has a flag, for scripts.
    ///
    ///   tokctl add github --provider github --client-id Iv1.0123 --scope repo
    ///   printf %s "$SECRET" | tokctl add bot --token-url https://sso.example.com/token \
    ///       --client-id deploy --client-secret-stdin --client-credentials
    #[command(verbatim_doc_comment)]
    Add(add::Args),
    /// Set git up to ask `tokctl git-credential NAME` for each host NAME's
    /// tokens may go to (its consumer's git hosts), and no other helper,
    /// in your global git config.
    ///
    /// Safe beside a general helper such as `store`, which would
    /// otherwise keep every token in plain text: each host's section is
    /// written at the end with an empty `helper` first, and general
    /// helpers (now or added later with `git config --global
    /// credential.helper`) stay in a `[credential]` section above it.
    /// Run it again after changing `git_hosts`.
    #[command(verbatim_doc_comment)]
    GitSetup {
        /// The installation whose tokens git gets.
        #[arg(add = names())]
        name: String,
    },
    /// kubectl's exec credential plugin: prints an ExecCredential
    /// (client.authentication.k8s.io/v1 or v1beta1, as kubectl asks in
    /// KUBERNETES_EXEC_INFO) with a fresh token of NAME and its expiry.
    ///
    /// In the kubeconfig's user:
    ///   exec:
    ///     apiVersion: client.authentication.k8s.io/v1
    ///     command: tokctl
    ///     args: [kube-credential, NAME]
    ///     interactiveMode: IfAvailable
    ///     provideClusterInfo: true
    ///
    /// The cluster's server must be in NAME's `kube_servers` in tokd's
    /// config. When NAME needs a login and kubectl lets the plugin
    /// interact, the login runs (its messages on stderr); otherwise the
    /// reason goes to stderr with tokctl's exit status.
    #[command(verbatim_doc_comment)]
    KubeCredential {
        /// The installation whose tokens kubectl gets.
        #[arg(add = names())]
        name: String,
        /// Refresh first if the held token expires sooner than this.
        #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
        min_valid: Duration,
    },
    /// Let a program get NAME's tokens when NAME's config limits its
    /// callers (`callers`); kept by tokd (in
    /// $XDG_STATE_HOME/tokd/callers/NAME.json) until `tokctl disallow`.
    ///
    ///   tokctl allow work unit:backup.service
    ///   tokctl allow work flatpak:org.gnome.Evolution
    #[command(verbatim_doc_comment)]
    Allow(callers::Change),
    /// Take back what `tokctl allow` (or an "Always" answer) allowed.
    Disallow(callers::Change),
    /// Who may get NAME's tokens: its config's `callers`, what was allowed
    /// since, and what happens to others (deny or ask).
    Callers {
        /// The installation.
        #[arg(add = names())]
        name: String,
    },
    /// Who got which installation's token, and when: the last 200 tokens
    /// tokd handed out (the journal has every one). Never a token.
    Log {
        /// Only this installation's.
        #[arg(add = names())]
        name: Option<String>,
    },
    /// Print the script that completes tokctl's commands, options and
    /// installation names (from the running tokd) in SHELL.
    ///
    ///   bash: echo 'eval "$(tokctl completions bash)"' >> ~/.bashrc
    ///   zsh:  echo 'eval "$(tokctl completions zsh)"' >> ~/.zshrc
    ///   fish: echo 'tokctl completions fish | source' >> ~/.config/fish/config.fish
    #[command(verbatim_doc_comment)]
    Completions { shell: complete::Shell },
}

/// Completes an installation name from the running tokd.
fn names() -> clap_complete::engine::ArgValueCompleter {
    clap_complete::engine::ArgValueCompleter::new(complete::installation_names)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Raw,
    Header,
    Json,
    Xoauth2,
    Oauthbearer,
}

fn main() -> ExitCode {
    complete::answer_if_asked();
    if cargo::called_by_cargo() {
        return cargo::serve();
    }
    if docker::called_as_helper() {
        return docker::serve();
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help and version: as clap writes them, on stdout.
        Err(error) if !error.use_stderr() => {
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            say::raw_line(&failure::usage_line(&error));
            return ExitCode::from(exit::USAGE);
        }
    };
    let deadline = Deadline::new(cli.timeout.unwrap_or(DEFAULT_TIMEOUT));
    let skip_socket = match direct::get(&cli.command, &deadline) {
        direct::Tried::Done(result) => return finish(result),
        direct::Tried::Not { skip_socket } => skip_socket,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(&Failure::new(exit::OTHER, error.to_string())),
    };
    finish(runtime.block_on(run(cli.command, cli.timeout, deadline, skip_socket)))
}

/// Prints what a run produced and says how it ended.
fn finish(result: Result<String, Failure>) -> ExitCode {
    match result {
        Ok(output) => {
            if !say::out(&output) {
                // A closed pipe: nothing sensible left to say.
                return ExitCode::from(exit::OTHER);
            }
            ExitCode::SUCCESS
        }
        Err(failure) => fail(&failure),
    }
}

fn fail(failure: &Failure) -> ExitCode {
    say::line(&failure.message);
    ExitCode::from(failure.status)
}

/// Runs one command; returns what goes to stdout. Every exchange with
/// tokd must end by `deadline` (`timeout`, default [`DEFAULT_TIMEOUT`],
/// after the start); only `login`'s wait for the browser has its own.
/// `skip_socket`: the private socket was found unusable (see
/// [`direct::get`]).
async fn run(
    command: Command,
    timeout: Option<Duration>,
    deadline: Deadline,
    skip_socket: bool,
) -> Result<String, Failure> {
    if let Command::Completions { shell } = command {
        return Ok(complete::script(shell));
    }
    // git's request is read before tokd is asked anything; `store` needs
    // no daemon at all.
    let git_request = match &command {
        Command::GitCredential { operation, .. } => match git::read(operation)? {
            Some(request) => Some(request),
            None => return Ok(String::new()),
        },
        _ => None,
    };
    let exec_bindings = match &command {
        Command::Exec { name, env, .. } => Some(exec::bindings(name.as_deref(), env)?),
        _ => None,
    };
    // A usage error is said before tokd is reached (or started).
    let sasl = match &command {
        Command::Get { format, user, .. } => output::sasl_user(*format, user.as_deref())
            .map_err(|message| Failure::new(exit::USAGE, message))?
            .map(str::to_owned),
        _ => None,
    };
    let kube = match &command {
        Command::KubeCredential { .. } => Some(kube::exec_info(
            std::env::var("KUBERNETES_EXEC_INFO").ok().as_deref(),
        )?),
        _ => None,
    };
    // Waiting for LoginFinished needs the bus: signals are not sent on
    // the private socket.
    let waits_for_a_signal = matches!(command, Command::Login { code: None, .. } | Command::Add(_))
        || kube.as_ref().is_some_and(|info| info.interactive);
    let (_connection, proxy) = manager(&deadline, waits_for_a_signal || skip_socket).await?;
    match command {
        Command::Get {
            name,
            min_valid,
            format,
            ..
        } => {
            let secs = u32::try_from(min_valid.as_secs()).unwrap_or(u32::MAX);
            let (token, expires_at, token_type, warning) =
                deadline.bound(proxy.get_token(&name, secs)).await??;
            Ok(output::token(
                &token,
                expires_at,
                &token_type,
                &warning,
                format,
                sasl.as_deref(),
            ))
        }
        Command::List { json } => {
            let list = deadline.bound(proxy.list()).await??;
            if list.is_empty() {
                say_none_configured(&proxy, &deadline).await;
            }
            Ok(if json {
                to_json(&list.iter().map(JsonInstallation::from).collect::<Vec<_>>())
            } else {
                table(&list, now())
            })
        }
        Command::Status { name, json } => {
            let list = match name {
                Some(name) => vec![deadline.bound(proxy.status(&name)).await??],
                None => deadline.bound(proxy.list()).await??,
            };
            if list.is_empty() {
                say_none_configured(&proxy, &deadline).await;
            }
            // Where each one's tokens are kept; an older tokd without the
            // method says nothing about it.
            let stores = deadline
                .bound(proxy.token_stores())
                .await?
                .unwrap_or_default();
            let kept = |info: &tokd_shared::InstallationInfo| {
                stores
                    .get(&info.name)
                    .map(String::as_str)
                    .filter(|kept| !kept.is_empty())
            };
            let status = |info| JsonStatus::new(info, kept(info));
            Ok(match (json, list.as_slice()) {
                (true, [one]) => to_json(&status(one)),
                (true, _) => to_json(&list.iter().map(status).collect::<Vec<_>>()),
                (false, _) => list
                    .iter()
                    .map(|info| details(info, kept(info), now()))
                    .collect::<Vec<_>>()
                    .join("\n"),
            })
        }
        Command::Login {
            name,
            no_browser,
            device,
            code,
        } => {
            let flow = match (code, device, no_browser) {
                (Some(code), _, _) => login::Flow::Code(code),
                (None, true, _) => login::Flow::Device,
                (None, false, true) => login::Flow::Browser { open: false },
                (None, false, false) => login::Flow::default_here(),
            };
            login::login(&proxy, &deadline, &name, flow, timeout).await
        }
        Command::KubeCredential { name, min_valid } => {
            kube::run(
                &proxy,
                &deadline,
                kube.unwrap_or_default(),
                &name,
                min_valid,
                timeout,
            )
            .await
        }
        Command::Add(args) => add::run(&proxy, &deadline, args, timeout).await,
        Command::GitSetup { name } => {
            let remotes = deadline.bound(proxy.git_remotes(&name)).await??;
            let said = git::setup(&name, &remotes)?;
            for line in said.lines() {
                say::line(line);
            }
            Ok(String::new())
        }
        Command::Refresh { name } => {
            let expires_at = deadline.bound(proxy.refresh(&name)).await??;
            say::line(&format!(
                "refreshed `{name}`; {}",
                expiry_phrase(expires_at, now())
            ));
            Ok(String::new())
        }
        Command::Revoke { name } => {
            let message = deadline.bound(proxy.revoke(&name)).await??;
            say::line(&message);
            Ok(String::new())
        }
        Command::Reload => {
            let summary = deadline.bound(proxy.reload()).await??;
            say::line(&format!("reloaded: {summary}"));
            Ok(String::new())
        }
        Command::Exec {
            min_valid, command, ..
        } => {
            let bindings = exec_bindings.unwrap_or_default();
            Err(exec::exec(&proxy, &deadline, bindings, min_valid, command).await)
        }
        Command::GitCredential {
            name, min_valid, ..
        } => {
            let Some((operation, request)) = git_request else {
                return Ok(String::new());
            };
            git::answer(&proxy, &deadline, &name, operation, request, min_valid).await
        }
        Command::Allow(change) => callers::allow(&proxy, &deadline, change).await,
        Command::Disallow(change) => callers::disallow(&proxy, &deadline, change).await,
        Command::Callers { name } => callers::show(&proxy, &deadline, &name).await,
        Command::Log { name } => callers::log(&proxy, &deadline, name.as_deref()).await,
        Command::Completions { .. } => Ok(String::new()),
    }
}

/// Says on stderr that no installation is configured, and where.
async fn say_none_configured(proxy: &ManagerProxy<'_>, deadline: &Deadline) {
    let path = match deadline.bound(proxy.config_path()).await {
        Ok(Ok(path)) if !path.is_empty() => path,
        _ => "tokd's config file".to_owned(),
    };
    say::line(&format!(
        "no installations are configured; add one to {path} (see `man tokd.conf`), then run `tokctl reload`"
    ));
}

/// When tokctl gives up on tokd.
#[derive(Debug)]
pub(crate) struct Deadline {
    pub(crate) at: tokio::time::Instant,
    timeout: Duration,
}

impl Deadline {
    fn new(timeout: Duration) -> Self {
        Self {
            at: tokio::time::Instant::now() + timeout,
            timeout,
        }
    }

    /// `work`, or a failure (exit 7) if the deadline passes first.
    pub(crate) async fn bound<T>(&self, work: impl Future<Output = T>) -> Result<T, Failure> {
        tokio::time::timeout_at(self.at, work)
            .await
            .map_err(|_| self.passed())
    }

    /// The failure (exit 7) of a deadline that passed.
    pub(crate) fn passed(&self) -> Failure {
        Failure::new(
            exit::DAEMON_UNREACHABLE,
            format!(
                "tokd did not answer within {}; it may be stopped or stuck (`systemctl --user status tokd`), or use --timeout to wait longer",
                humantime::format_duration(self.timeout)
            ),
        )
    }
}

/// A connection to tokd (see [`connect`]) and its manager's proxy.
pub(crate) async fn manager(
    deadline: &Deadline,
    needs_the_bus: bool,
) -> Result<(zbus::Connection, ManagerProxy<'static>), Failure> {
    let connection = deadline.bound(connect(needs_the_bus)).await??;
    let proxy = deadline
        .bound(
            ManagerProxy::builder(&connection)
                .cache_properties(zbus::proxy::CacheProperties::No)
                .build(),
        )
        .await??;
    Ok((connection, proxy))
}

/// tokd's private socket if it answers and is this user's (one process
/// hop fewer, no `Hello`), else the session bus, which also starts tokd on
/// demand.
pub(crate) async fn connect(needs_the_bus: bool) -> Result<zbus::Connection, Failure> {
    if !needs_the_bus
        && let Some(path) = tokd_shared::private_socket_path()
        // A missing or stale socket (tokd killed) fails here at once.
        && let Ok(stream) = direct::connect(&path, std::time::Instant::now() + SOCKET_HANDSHAKE)
        && direct::served_by_this_user(&stream, &path)
        && stream.set_nonblocking(true).is_ok()
        && let Ok(stream) = tokio::net::UnixStream::from_std(stream)
        && let Ok(Ok(connection)) = tokio::time::timeout(
            SOCKET_HANDSHAKE,
            zbus::connection::Builder::socket(tokd_shared::socket::NoFdSocket(stream))
                .p2p()
                .build(),
        )
        .await
    {
        return Ok(connection);
    }
    zbus::connection::Builder::session()
        .build()
        .await
        .map_err(|error| {
            Failure::new(
                exit::DAEMON_UNREACHABLE,
                format!("cannot reach the session bus ({error}); is DBUS_SESSION_BUS_ADDRESS set?"),
            )
        })
}

/// `90`, `90s`, `5m`, `1h 30m`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(text).map_err(|e| format!("{e} (try 90s, 5m or 1h)"))
}

pub(crate) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_man_pages_in_the_repository_are_up_to_date() {
        use clap::CommandFactory as _;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../man");
        let pages = tokd_testkit::generated::man_pages(Cli::command());
        assert!(
            pages
                .iter()
                .any(|(name, _)| name == "tokctl-git-credential.1")
        );
        tokd_testkit::generated::check_generated(&dir, &pages, |name| {
            name.starts_with("tokctl") && name.ends_with(".1")
        });
    }

    #[test]
    fn durations_take_plain_seconds_and_units() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn a_code_that_starts_with_a_dash_is_a_value() {
        use clap::Parser as _;
        let cli = Cli::try_parse_from(["tokctl", "login", "m", "--code", "-Yx_9"])
            .expect("codes are base64url and may start with '-'");
        match cli.command {
            Command::Login { code, .. } => assert_eq!(code.as_deref(), Some("-Yx_9")),
            other => panic!("{other:?}"),
        }
    }
}
