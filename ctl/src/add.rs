//! `tokctl add NAME`: a consumer and an installation added to tokd's
//! config without writing TOML by hand. The client secret never goes into
//! the config: into the keyring (through `secret-tool`, read back by
//! `client_secret_command`) when tokd keeps its tokens there, else into a
//! 0600 file beside the config (`client_secret_file`). The tables are
//! appended to the file, so its comments and layout stay as they were;
//! then tokd reloads it, and a config tokd refuses is put back as it was
//! (and the secret removed), with tokd's sentence.

use crate::failure::{Failure, exit};
use crate::{Deadline, login, say};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use tokd_shared::ManagerProxy;

/// What `tokctl add` was told (the flags; prompts fill the rest on a
/// terminal).
#[derive(Debug, Default)]
pub struct Request {
    pub name: String,
    pub consumer: Option<String>,
    pub provider: Option<String>,
    pub issuer: Option<String>,
    pub token_url: Option<String>,
    pub auth_url: Option<String>,
    pub client_id: Option<String>,
    pub secret: Option<String>,
    pub public: bool,
    pub scopes: Vec<String>,
    pub client_credentials: bool,
    pub redirect_port: u16,
    pub callers: Vec<String>,
}

/// `tokctl add`'s arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The new installation's name (also the consumer's, unless
    /// --consumer names one).
    pub name: String,
    /// A preset: atlassian, bitbucket, github, gitlab, google,
    /// microsoft, smartthings.
    #[arg(long, value_name = "PRESET", conflicts_with_all = ["issuer", "token_url"])]
    pub provider: Option<String>,
    /// The authorization server to discover the endpoints from.
    #[arg(long, value_name = "URL", conflicts_with = "token_url")]
    pub issuer: Option<String>,
    /// The token endpoint, for a server without a preset or discovery.
    #[arg(long, value_name = "URL")]
    pub token_url: Option<String>,
    /// The authorization endpoint (browser logins), with --token-url.
    #[arg(long, value_name = "URL", requires = "token_url")]
    pub auth_url: Option<String>,
    /// An existing consumer to add the installation to (another
    /// account at the same provider), or the new consumer's name.
    #[arg(long, value_name = "CONSUMER")]
    pub consumer: Option<String>,
    /// The client id the provider gave you.
    #[arg(long, value_name = "ID")]
    pub client_id: Option<String>,
    /// Read the client secret from stdin (kept out of `ps`).
    #[arg(long, conflicts_with = "public")]
    pub client_secret_stdin: bool,
    /// A public client: no secret (logins use PKCE alone).
    #[arg(long)]
    pub public: bool,
    /// A scope to ask for (repeatable).
    #[arg(long = "scope", value_name = "SCOPE")]
    pub scopes: Vec<String>,
    /// The client-credentials grant: the consumer's own credentials,
    /// no login.
    #[arg(long)]
    pub client_credentials: bool,
    /// Who may get the installation's tokens (repeatable):
    /// unit:NAME.service, exe:/PATH, flatpak:APP.ID or any. Without it,
    /// every program of yours may, and the config gets a commented
    /// `callers` line to fill in.
    #[arg(long = "caller", value_name = "CALLER")]
    pub callers: Vec<String>,
    /// The loopback port of the redirect URI to register at the
    /// provider: http://127.0.0.1:PORT/callback.
    #[arg(long, value_name = "PORT", default_value_t = 8765)]
    pub redirect_port: u16,
    /// Log in right after (on a terminal, tokctl asks).
    #[arg(long, conflicts_with = "no_login")]
    pub login: bool,
    /// Do not log in now.
    #[arg(long)]
    pub no_login: bool,
}

/// `tokctl add`: asks for what is missing (on a terminal), writes the
/// config, reloads tokd (rolling back if it refuses), offers the login.
pub async fn run(
    proxy: &ManagerProxy<'_>,
    deadline: &Deadline,
    args: Args,
    timeout: Option<std::time::Duration>,
) -> Result<String, Failure> {
    let Args {
        name,
        provider,
        issuer,
        token_url,
        auth_url,
        consumer,
        client_id,
        client_secret_stdin,
        public,
        scopes,
        client_credentials,
        callers,
        redirect_port,
        login,
        no_login,
    } = args;
    if public && client_credentials {
        return Err(Failure::new(
            exit::USAGE,
            "--client-credentials needs the consumer's secret (--client-secret-stdin), not --public",
        ));
    }
    let interactive = interactive() && !client_secret_stdin;
    let mut request = Request {
        name: name.clone(),
        consumer,
        provider,
        issuer,
        token_url,
        auth_url,
        client_id,
        secret: None,
        public,
        scopes,
        client_credentials,
        redirect_port,
        callers,
    };
    if client_secret_stdin {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map_err(|error| {
            Failure::new(
                exit::USAGE,
                format!("cannot read the client secret: {error}"),
            )
        })?;
        request.secret = Some(line.trim_end_matches(['\n', '\r']).to_owned());
    }
    let path = match deadline.bound(proxy.config_path()).await?? {
        path if !path.is_empty() => std::path::PathBuf::from(path),
        _ => default_config_path().ok_or_else(|| {
            Failure::new(
                exit::OTHER,
                "cannot tell where tokd's config file is (no HOME)",
            )
        })?,
    };
    if interactive {
        ask_for_what_is_missing(&mut request, &path);
    }
    // A config reached through a link is written where it lives.
    let path = std::fs::canonicalize(&path).unwrap_or(path);
    let keyring = tokens_in_keyring(&path);
    let written = write(&path, &request, keyring)?;
    let refused = match deadline.bound(proxy.reload()).await {
        Ok(Ok(_)) => None,
        Ok(Err(error)) => Some(Failure::from(error)),
        Err(timeout) => Some(timeout),
    };
    if let Some(failure) = refused {
        let restored = if roll_back(&path, &written) {
            "is as it was: nothing was added"
        } else {
            "was changed meanwhile, so it is left as it is"
        };
        // tokd's advice is for a file it reads; here the file is
        // put back, and what to change is the command or the file.
        let reason = failure
            .message
            .split("; the running config stays")
            .next()
            .unwrap_or(&failure.message)
            .to_owned();
        return Err(Failure::new(
            failure.status,
            format!(
                "tokd refused the config with `{name}` added: {reason}; {} {restored}; fix what it says (in the flags, or in the file if the mistake was there already) and run `tokctl add` again",
                path.display()
            ),
        ));
    }
    say::line(&format!("added `{name}` to {}", path.display()));
    let log_in = !client_credentials
        && (login
            || (!no_login
                && interactive
                && prompt(&format!("Log in to `{name}` now? [Y/n] "), false)
                    .is_some_and(|answer| !answer.trim().to_lowercase().starts_with('n'))));
    if log_in {
        return login::login(proxy, deadline, &name, login::Flow::default_here(), timeout).await;
    }
    if !client_credentials {
        say::line(&format!("log in with `tokctl login {name}`"));
    }
    Ok(String::new())
}

/// Where the secret went, to undo it.
#[derive(Debug)]
pub enum Kept {
    None,
    File(PathBuf),
    Keyring(String),
}

/// The attribute value tokd's client-secret items carry in the keyring.
const SECRET_APPLICATION: &str = "tokd-client-secret";

/// What `write` did: the file's text before, and where the secret went.
#[derive(Debug)]
pub struct Written {
    /// `None`: there was no file.
    before: Option<String>,
    /// What was written, to tell whether someone changed it since.
    after: String,
    kept: Kept,
}

/// Appends the consumer (unless it exists) and the installation to the
/// config at `path`.
pub fn write(path: &Path, request: &Request, keyring: bool) -> Result<Written, Failure> {
    let consumer_name = request.consumer.as_deref().unwrap_or(&request.name);
    for (what, name) in [
        ("installation", request.name.as_str()),
        ("consumer", consumer_name),
    ] {
        if !valid_name(name) {
            return Err(Failure::new(
                exit::USAGE,
                format!(
                    "{what} name {name:?} may use only letters, digits, '.', '_' and '-' (it becomes a table name, a file name and a command argument)"
                ),
            ));
        }
    }
    let existed = match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => {
            return Err(Failure::new(
                exit::OTHER,
                format!("cannot read {}: {error}", path.display()),
            ));
        }
    };
    let before = existed.clone().unwrap_or_default();
    let table: toml::Table = toml::from_str(&before).map_err(|error| {
        Failure::new(
            exit::MISCONFIGURED,
            format!(
                "{} is not valid TOML ({}); fix it first (`tokd --check-config`)",
                path.display(),
                error.message()
            ),
        )
    })?;
    let defined = |kind: &str, name: &str| {
        table
            .get(kind)
            .and_then(toml::Value::as_table)
            .is_some_and(|t| t.contains_key(name))
    };
    if defined("installations", &request.name) {
        return Err(Failure::new(
            exit::USAGE,
            format!(
                "installation `{}` is in {} already; choose another name",
                request.name,
                path.display()
            ),
        ));
    }
    let consumer = request
        .consumer
        .clone()
        .unwrap_or_else(|| request.name.clone());
    let mut added = String::new();
    let mut kept = Kept::None;
    if !defined("consumers", &consumer) {
        let quote = |text: &str| toml::Value::String(text.to_owned()).to_string();
        added.push_str(&format!("\n[consumers.{}]\n", key(&consumer)));
        match (&request.provider, &request.issuer, &request.token_url) {
            (Some(provider), _, _) => added.push_str(&format!("provider = {}\n", quote(provider))),
            (None, Some(issuer), _) => added.push_str(&format!("issuer = {}\n", quote(issuer))),
            (None, None, Some(token_url)) => {
                added.push_str(&format!("token_url = {}\n", quote(token_url)));
                if let Some(auth_url) = &request.auth_url {
                    added.push_str(&format!("auth_url = {}\n", quote(auth_url)));
                }
            }
            (None, None, None) => {
                return Err(Failure::new(
                    exit::USAGE,
                    "say which provider: --provider PRESET, --issuer URL, or --token-url URL (and --auth-url URL)",
                ));
            }
        }
        let Some(client_id) = &request.client_id else {
            return Err(Failure::new(
                exit::USAGE,
                "the client id the provider gave you is needed: --client-id ID",
            ));
        };
        added.push_str(&format!("client_id = {}\n", quote(client_id)));
        match &request.secret {
            Some(secret) if !request.public => {
                kept = keep_secret(path, &consumer, secret, keyring)?;
                match &kept {
                    Kept::File(file) => added.push_str(&format!(
                        "client_secret_file = {}\n",
                        quote(&file.display().to_string())
                    )),
                    Kept::Keyring(_) => added.push_str(&format!(
                        "client_secret_command = [\"secret-tool\", \"lookup\", \"application\", \"{SECRET_APPLICATION}\", \"consumer\", {}]\n",
                        quote(&consumer)
                    )),
                    Kept::None => {}
                }
            }
            _ => {}
        }
        if !request.client_credentials {
            added.push_str(&format!(
                "redirect_uri = \"http://127.0.0.1:{}/callback\"\n",
                request.redirect_port
            ));
        }
    }
    let quote = |text: &str| toml::Value::String(text.to_owned()).to_string();
    added.push_str(&format!(
        "\n[installations.{}]\nconsumer = {}\n",
        key(&request.name),
        quote(&consumer)
    ));
    if !request.scopes.is_empty() {
        let scopes: Vec<String> = request.scopes.iter().map(|s| quote(s)).collect();
        added.push_str(&format!("scopes = [{}]\n", scopes.join(", ")));
    }
    if request.client_credentials {
        added.push_str("grant = \"client_credentials\"\n");
    }
    if request.callers.is_empty() {
        // A policy proposed, not imposed: every program of the user gets
        // the tokens until the line is filled in (README "Who may ask").
        added.push_str(
            "# Who may get these tokens (README \"Who may ask\"); without it, every program of yours:\n# callers = [\"unit:NAME.service\", \"flatpak:APP.ID\"]\n",
        );
    } else {
        let callers: Vec<String> = request.callers.iter().map(|c| quote(c)).collect();
        added.push_str(&format!("callers = [{}]\n", callers.join(", ")));
    }
    let mut after = before.clone();
    if !after.is_empty() && !after.ends_with('\n') {
        after.push('\n');
    }
    after.push_str(&added);
    // Checked as TOML before it is written.
    if let Err(error) = toml::from_str::<toml::Table>(&after) {
        undo(&kept);
        return Err(Failure::new(
            exit::USAGE,
            format!("these values make no valid config: {}", error.message()),
        ));
    }
    if let Err(error) = replace(path, &after) {
        undo(&kept);
        return Err(error);
    }
    Ok(Written {
        before: existed,
        after,
        kept,
    })
}

/// Puts the file back as it was (or removes it, if there was none) and
/// forgets the secret: tokd refused the new config, or did not answer.
/// A file someone changed since is left alone; `false` then.
pub fn roll_back(path: &Path, written: &Written) -> bool {
    undo(&written.kept);
    if std::fs::read_to_string(path).ok().as_deref() != Some(written.after.as_str()) {
        return false;
    }
    match &written.before {
        Some(before) => replace(path, before).is_ok(),
        None => std::fs::remove_file(path).is_ok(),
    }
}

/// A table name as TOML writes it: bare when it can be, else quoted (a
/// name with a dot would otherwise be read as a nested table). Names are
/// checked first: they hold no quote or backslash.
fn key(name: &str) -> String {
    if name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
    {
        name.to_owned()
    } else {
        format!("\"{name}\"")
    }
}

fn keep_secret(
    config: &Path,
    consumer: &str,
    secret: &str,
    keyring: bool,
) -> Result<Kept, Failure> {
    if keyring {
        let mut child = std::process::Command::new("secret-tool")
            .args([
                "store",
                "--label",
                &format!("tokd: client secret of {consumer}"),
                "--",
                "application",
                SECRET_APPLICATION,
                "consumer",
                consumer,
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .map_err(|error| {
                Failure::new(
                    exit::OTHER,
                    format!("cannot run secret-tool (Debian: libsecret-tools) to keep the client secret in the keyring: {error}"),
                )
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(secret.as_bytes());
        }
        let status = child
            .wait()
            .map_err(|error| Failure::new(exit::OTHER, error.to_string()))?;
        if !status.success() {
            return Err(Failure::new(
                exit::LOCKED,
                "secret-tool could not keep the client secret in the keyring; unlock the keyring and run the command again",
            ));
        }
        return Ok(Kept::Keyring(consumer.to_owned()));
    }
    let folder = config.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(folder).map_err(|error| {
        Failure::new(
            exit::OTHER,
            format!("cannot create {}: {error}", folder.display()),
        )
    })?;
    let file = folder.join(format!("{consumer}.secret"));
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&file)
        .map_err(|error| {
            Failure::new(
                exit::USAGE,
                format!(
                    "cannot create {} for the client secret: {error}",
                    file.display()
                ),
            )
        })?;
    out.write_all(secret.as_bytes())
        .map_err(|error| Failure::new(exit::OTHER, error.to_string()))?;
    Ok(Kept::File(file))
}

fn undo(kept: &Kept) {
    match kept {
        Kept::None => {}
        Kept::File(file) => {
            let _ = std::fs::remove_file(file);
        }
        Kept::Keyring(consumer) => {
            let _ = std::process::Command::new("secret-tool")
                .args([
                    "clear",
                    "--",
                    "application",
                    SECRET_APPLICATION,
                    "consumer",
                    consumer,
                ])
                .status();
        }
    }
}

/// Writes `text` to `path` through a temporary file and a rename, keeping
/// the file's mode (0600 for a new one).
fn replace(path: &Path, text: &str) -> Result<(), Failure> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let fail = |error: std::io::Error| {
        Failure::new(
            exit::OTHER,
            format!("cannot write {}: {error}", path.display()),
        )
    };
    let folder = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(folder).map_err(fail)?;
    let mode = std::fs::metadata(path).map_or(0o600, |m| m.permissions().mode() & 0o777);
    let temporary = folder.join(format!(
        ".{}.tokctl-add",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("config.toml")
    ));
    let _ = std::fs::remove_file(&temporary);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temporary)
        .map_err(fail)?;
    file.write_all(text.as_bytes()).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    std::fs::rename(&temporary, path).map_err(fail)?;
    Ok(())
}

/// Asks on the terminal; `hidden`: without echo (a secret).
pub fn prompt(question: &str, hidden: bool) -> Option<String> {
    say::raw_prompt(question);
    let stdin = std::io::stdin();
    let restore = hidden.then(|| echo_off(&stdin)).flatten();
    let mut line = String::new();
    let read = stdin.read_line(&mut line);
    if let Some(saved) = restore {
        let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &saved);
        say::raw_prompt("\n");
    }
    read.ok()?;
    Some(line.trim_end_matches(['\n', '\r']).to_owned())
}

fn echo_off(stdin: &std::io::Stdin) -> Option<rustix::termios::Termios> {
    let saved = rustix::termios::tcgetattr(stdin).ok()?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(rustix::termios::LocalModes::ECHO);
    rustix::termios::tcsetattr(stdin, rustix::termios::OptionalActions::Now, &quiet).ok()?;
    Some(saved)
}

/// Whether stdin is a terminal (prompts are asked only then).
pub fn interactive() -> bool {
    rustix::termios::isatty(std::io::stdin())
}

/// A name tokd accepts for a consumer or an installation (as its config
/// parser checks): written into the file bare, it must be nothing else.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Fills what the flags left out by asking, on a terminal (for a new
/// consumer only what a consumer needs; the scopes either way).
pub fn ask_for_what_is_missing(request: &mut Request, config: &Path) {
    let consumer = request.consumer.as_deref().unwrap_or(&request.name);
    let exists = std::fs::read_to_string(config)
        .ok()
        .and_then(|text| toml::from_str::<toml::Table>(&text).ok())
        .is_some_and(|table| {
            table
                .get("consumers")
                .and_then(toml::Value::as_table)
                .is_some_and(|consumers| consumers.contains_key(consumer))
        });
    if !exists {
        ask_for_the_consumer(request);
    }
    if request.scopes.is_empty()
        && let Some(scopes) = prompt(
            "Scopes, separated by spaces (empty for the provider's default): ",
            false,
        )
    {
        request.scopes = scopes.split_whitespace().map(str::to_owned).collect();
    }
}

fn ask_for_the_consumer(request: &mut Request) {
    // Asked again until answered (or stdin ends): nothing else is asked
    // for a provider not known.
    while request.provider.is_none() && request.issuer.is_none() && request.token_url.is_none() {
        let Some(answer) = prompt(
            "Provider: a preset (atlassian, bitbucket, github, gitlab, google, microsoft, smartthings), or a URL: ",
            false,
        ) else {
            return;
        };
        let answer = answer.trim().to_owned();
        if answer.is_empty() {
            continue;
        }
        if !answer.contains("://") {
            request.provider = Some(answer);
        } else if prompt(
            "Is that the issuer, whose endpoints are discovered (RFC 8414)? [Y/n] (n: it is the token endpoint) ",
            false,
        )
        .is_some_and(|yes| yes.trim().to_lowercase().starts_with('n'))
        {
            request.token_url = Some(answer);
            request.auth_url = prompt(
                "Authorization endpoint, for browser logins (empty for none): ",
                false,
            )
            .map(|url| url.trim().to_owned())
            .filter(|url| !url.is_empty());
        } else {
            request.issuer = Some(answer);
        }
    }
    if request.client_id.is_none() {
        request.client_id = prompt("Client id (from the provider's app registration): ", false)
            .map(|id| id.trim().to_owned())
            .filter(|id| !id.is_empty());
    }
    if request.secret.is_none() && !request.public {
        match prompt(
            "Client secret (not shown; empty for a public client): ",
            true,
        ) {
            Some(secret) if !secret.is_empty() => request.secret = Some(secret),
            _ => request.public = true,
        }
    }
}

/// `$TOKD_CONFIG`, else `$XDG_CONFIG_HOME/tokd/config.toml` (as tokd
/// chooses when it was started without one).
pub fn default_config_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("TOKD_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))?;
    Some(base.join("tokd").join("config.toml"))
}

/// Whether tokd keeps its tokens in the keyring: the config's `[daemon]
/// store`, else the choice tokd made at its first start (kept in its
/// state folder).
pub fn tokens_in_keyring(config: &Path) -> bool {
    let configured = std::fs::read_to_string(config)
        .ok()
        .and_then(|text| toml::from_str::<toml::Table>(&text).ok())
        .and_then(|table| {
            table
                .get("daemon")?
                .get("store")?
                .as_str()
                .map(str::to_owned)
        });
    if let Some(store) = configured {
        return store == "keyring";
    }
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/state")));
    state
        .and_then(|state| std::fs::read_to_string(state.join("tokd/daemon/store.json")).ok())
        .is_some_and(|choice| choice.trim() == "\"keyring\"")
}

#[cfg(test)]
#[path = "add_tests.rs"]
mod tests;
