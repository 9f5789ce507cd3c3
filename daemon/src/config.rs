//! The configuration file: parsing, validation and provider presets.
//!
//! `Config::from_str` is pure (text in, config or error out) so that every
//! case is a unit test; `Config::from_path` adds the file name to errors;
//! `Config::warnings` (`warnings.rs`) says what looks wrong in a valid one. Every error names the line and column.
//! This module never touches the network, the state folder or the bus.

mod callers;
mod client_secret;
mod consumer;
mod presets;
mod values;
mod warnings;

pub use consumer::{ClientAuth, Consumer};
pub use presets::{Preset, PresetEndpoints};
pub use values::{CronSchedule, InvalidValue, is_loopback, parse_duration};

use consumer::{RawConsumer, build_consumer};

use crate::storage::Store;
pub use client_secret::{ClientSecretError, ClientSecretSource};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use toml::Spanned;
use values::{ConfigDuration, SpannedList};

/// A parsed, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub daemon: DaemonConfig,
    pub consumers: BTreeMap<String, Arc<Consumer>>,
    /// Shared with the daemon's per-installation specs (one copy each).
    pub installations: BTreeMap<String, Arc<InstallationConfig>>,
    /// Container registries (`host` or `host:port`, lowercase), each
    /// served by one installation (its `registries`).
    pub registries: BTreeMap<String, RegistryLogin>,
    /// Kubernetes API servers (https URLs, without a trailing `/`) and the
    /// installation whose tokens each may get (its `kube_servers`), sorted.
    pub kube_servers: Vec<(String, String)>,
    /// The caller policies of the installations that have one (`callers`,
    /// `unknown_callers`); the others serve every caller of the user.
    pub policies: BTreeMap<String, crate::callers::Policy>,
}

/// Who logs in to a container registry: the installation whose tokens it
/// gets, and the user name they go with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryLogin {
    pub installation: String,
    pub username: String,
}

/// The `[daemon]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonConfig {
    /// Refresh this long before expiry; `None` derives it from the lifetime.
    pub refresh_margin: Option<Duration>,
    /// Whether a desktop notification says when a human must log in.
    pub notify: bool,
    /// Where tokens are kept; `None`: in the keyring when one answered at
    /// first start, else in the state files (see `storage/`).
    pub store: Option<Store>,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            refresh_margin: None,
            notify: true,
            store: None,
        }
    }
}

/// One `[installations.NAME]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallationConfig {
    /// Shared with the installation's slot in the broker.
    pub name: Arc<str>,
    /// Shared by the installations of one consumer.
    pub consumer: Arc<str>,
    pub scopes: Vec<String>,
    pub grant: Grant,
    pub schedule: Option<CronSchedule>,
}

/// How an installation obtains its tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Grant {
    /// A human logs in once (`tokctl login`); refresh tokens do the rest.
    AuthorizationCode,
    /// The consumer's own credentials; no refresh token, no human.
    ClientCredentials,
}

impl Grant {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AuthorizationCode => "authorization_code",
            Self::ClientCredentials => "client_credentials",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    daemon: RawDaemon,
    #[serde(default)]
    consumers: BTreeMap<Spanned<String>, RawConsumer>,
    #[serde(default)]
    installations: BTreeMap<Spanned<String>, RawInstallation>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    refresh_margin: Option<ConfigDuration>,
    notify: Option<bool>,
    store: Option<Store>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInstallation {
    consumer: Spanned<String>,
    scopes: Option<SpannedList>,
    grant: Option<Grant>,
    schedule: Option<CronSchedule>,
    registries: Option<Spanned<consumer::StringList>>,
    kube_servers: Option<Spanned<consumer::StringList>>,
    callers: Option<Spanned<consumer::StringList>>,
    unknown_callers: Option<crate::callers::Unknown>,
}

/// A configuration error, naming the file (when there is one) and the line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}{message}", location_prefix(.path.as_deref(), *.line, *.column))]
    Invalid {
        path: Option<PathBuf>,
        /// 1-based; 0 when the error has no position.
        line: usize,
        column: usize,
        message: String,
    },
    /// More than one problem, in the order of their lines; shown one a line.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Several(Vec<ConfigError>),
}

fn location_prefix(path: Option<&Path>, line: usize, column: usize) -> String {
    let file = path.map_or_else(|| "config".to_owned(), |path| path.display().to_string());
    if line == 0 {
        format!("{file}: ")
    } else {
        format!("{file}:{line}:{column}: ")
    }
}

impl ConfigError {
    /// The 1-based line of an `Invalid` error (0 when unknown).
    pub fn line(&self) -> usize {
        match self {
            Self::Invalid { line, .. } => *line,
            Self::Several(errors) => errors.first().map_or(0, Self::line),
            Self::Read { .. } => 0,
        }
    }

    /// Each problem on its own (one for all but `Several`).
    pub fn problems(&self) -> Vec<&ConfigError> {
        match self {
            Self::Several(errors) => errors.iter().collect(),
            other => vec![other],
        }
    }

    /// The message without the location.
    pub fn message(&self) -> String {
        match self {
            Self::Invalid { message, .. } => message.clone(),
            Self::Several(errors) => errors
                .iter()
                .map(Self::message)
                .collect::<Vec<_>>()
                .join("; "),
            Self::Read { .. } => self.to_string(),
        }
    }

    fn with_path(self, file: &Path) -> Self {
        match self {
            Self::Invalid {
                line,
                column,
                message,
                ..
            } => Self::Invalid {
                path: Some(file.to_owned()),
                line,
                column,
                message,
            },
            Self::Several(errors) => {
                Self::Several(errors.into_iter().map(|e| e.with_path(file)).collect())
            }
            other => other,
        }
    }
}

/// Collects the text and positions while validating.
struct Source<'a> {
    text: &'a str,
}

impl Source<'_> {
    fn error(&self, span: Option<Range<usize>>, message: impl Into<String>) -> ConfigError {
        let (line, column) = span.map_or((0, 0), |span| line_column(self.text, span.start));
        ConfigError::Invalid {
            path: None,
            line,
            column,
            message: message.into(),
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Expands a leading `~` and makes a relative path relative to `base`.
fn expand_path(text: &str, base: Option<&Path>) -> Result<PathBuf, String> {
    let path = if text == "~" || text.starts_with("~/") {
        let home = directories::BaseDirs::new()
            .map(|dirs| dirs.home_dir().to_owned())
            .ok_or("cannot expand `~`: the home folder is unknown")?;
        home.join(text.trim_start_matches('~').trim_start_matches('/'))
    } else {
        PathBuf::from(text)
    };
    Ok(match base {
        Some(base) if path.is_relative() => base.join(path),
        _ => path,
    })
}

/// What toml's bare "duplicate key" means at `span`: a table written
/// twice, or a key set twice in one table.
fn duplicate(text: &str, span: Range<usize>) -> String {
    let line_start = text[..span.start.min(text.len())]
        .rfind('\n')
        .map_or(0, |at| at + 1);
    let line = text[line_start..].lines().next().unwrap_or("").trim();
    if line.starts_with('[') {
        let table = line.split('#').next().unwrap_or(line).trim();
        format!("{table} appears twice; each name is one table, so merge the two")
    } else {
        let key = text.get(span).unwrap_or("").trim();
        format!("`{key}` is set twice in the same table; keep one")
    }
}

impl Config {
    /// Parses and validates config text. Relative `client_secret_file` paths
    /// stay relative (there is no file to be relative to).
    #[allow(clippy::should_implement_trait)] // returns our error type, with positions
    pub fn from_str(text: &str) -> Result<Self, ConfigError> {
        Self::parse(text, None)
    }

    /// Reads, parses and validates the file at `path`; errors name the file.
    /// Relative `client_secret_file` paths are taken from the file's folder.
    pub fn from_path(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path.parent()).map_err(|error| error.with_path(path))
    }

    fn parse(text: &str, base: Option<&Path>) -> Result<Self, ConfigError> {
        let source = Source { text };
        // Every table is checked, and every table's first problem is
        // reported, in one run (a file with four mistakes is fixed in one
        // go, not four). The parser stops at its first problem (a syntax
        // error, an unknown key, a value of the wrong form): that table
        // is blanked out (its bytes become spaces, so every position
        // stays where it was) and the file read again. An installation of
        // a consumer with a problem is not checked against it.
        let mut errors = Vec::new();
        let mut broken = std::collections::BTreeSet::new();
        let mut current = text.to_owned();
        let raw: RawConfig = loop {
            let error = match toml::from_str::<RawConfig>(&current) {
                Ok(raw) => break raw,
                Err(error) => error,
            };
            let message = error.message().trim_end();
            let message = match error.span() {
                Some(span) if message == "duplicate key" => duplicate(text, span),
                _ => message.to_owned(),
            };
            errors.push(source.error(error.span(), message));
            let table = error
                .span()
                .and_then(|span| table_around(&current, span.start));
            match table {
                Some((range, header)) if errors.len() < MAX_PROBLEMS => {
                    // A consumer's installations are not checked
                    // against what is left of it.
                    if let Some(name) = header.strip_prefix("consumers.") {
                        let name = name.split('.').next().unwrap_or(name);
                        broken.insert(name.trim_matches('"').to_owned());
                    }
                    current = blank(&current, range);
                }
                // Outside any table, or too many: no further.
                _ => return Err(several(errors)),
            }
        };

        let mut consumers = BTreeMap::new();
        for (name, raw) in raw.consumers {
            let span = name.span();
            let name = name.into_inner();
            if !valid_name(&name) {
                errors.push(source.error(Some(span), name_error("consumer", &name)));
                broken.insert(name);
                continue;
            }
            match build_consumer(&source, &name, span, raw, base) {
                Ok(consumer) => {
                    consumers.insert(name, Arc::new(consumer));
                }
                Err(error) => {
                    errors.push(error);
                    broken.insert(name);
                }
            }
        }

        let mut installations = BTreeMap::new();
        let mut registries = BTreeMap::new();
        let mut kube_servers = Vec::new();
        let mut policies = BTreeMap::new();
        for (name, mut raw) in raw.installations {
            let span = name.span();
            let name = name.into_inner();
            if !valid_name(&name) {
                errors.push(source.error(Some(span), name_error("installation", &name)));
                continue;
            }
            if broken.contains(raw.consumer.get_ref()) {
                continue;
            }
            let listed = raw.registries.take();
            let servers = raw.kube_servers.take();
            match callers::policy(
                &source,
                &name,
                raw.callers.take(),
                raw.unknown_callers.take(),
            ) {
                Ok(Some(policy)) => {
                    policies.insert(name.clone(), policy);
                }
                Ok(None) => {}
                Err(error) => errors.push(error),
            }
            let installation = match build_installation(&source, &name, raw, &consumers, &broken) {
                Ok(installation) => installation,
                Err(error) => {
                    errors.push(error);
                    continue;
                }
            };
            if let Some(servers) = servers {
                let span = servers.span();
                for server in servers.into_inner().0 {
                    match kube_server(&server) {
                        Some(server) => kube_servers.push((server, name.clone())),
                        None => {
                            errors.push(source.error(
                                Some(span.clone()),
                                format!(
                                    "installation `{name}`: `kube_servers` lists API server URLs as the kubeconfig's `server` has them, https and without a user part, e.g. [\"https://k8s.example.com:6443\"]"
                                ),
                            ));
                            break;
                        }
                    }
                }
            }
            if let Some(listed) = listed {
                let username = consumers
                    .get(&*installation.consumer)
                    .map(|consumer| consumer.registry_username.clone())
                    .unwrap_or_default();
                if let Err(error) =
                    add_registries(&source, &name, listed, &username, &mut registries)
                {
                    errors.push(error);
                }
            }
            installations.insert(name, Arc::new(installation));
        }
        if !errors.is_empty() {
            return Err(several(errors));
        }

        Ok(Config {
            daemon: DaemonConfig {
                refresh_margin: raw.daemon.refresh_margin.map(|d| d.0),
                notify: raw.daemon.notify.unwrap_or(true),
                store: raw.daemon.store,
            },
            consumers,
            installations,
            registries,
            kube_servers: {
                kube_servers.sort();
                kube_servers.dedup();
                kube_servers
            },
            policies,
        })
    }

    /// The consumer an installation uses. Validation guarantees it exists.
    pub fn consumer_of(&self, installation: &InstallationConfig) -> Option<&Arc<Consumer>> {
        self.consumers.get(&*installation.consumer)
    }

    /// One line saying what is configured, for `tokd --check-config`.
    pub fn summary(&self) -> String {
        let names = |keys: Vec<&String>| {
            if keys.is_empty() {
                String::new()
            } else {
                let list: Vec<&str> = keys.into_iter().map(String::as_str).collect();
                format!(" ({})", list.join(", "))
            }
        };
        let plural = |count: usize, word: &str| {
            if count == 1 {
                format!("1 {word}")
            } else {
                format!("{count} {word}s")
            }
        };
        format!(
            "{}{}, {}{}",
            plural(self.consumers.len(), "consumer"),
            names(self.consumers.keys().collect()),
            plural(self.installations.len(), "installation"),
            names(self.installations.keys().collect()),
        )
    }
}

/// A `kube_servers` entry as tokctl compares it with the kubeconfig's
/// `server`: an https URL without user part, query or fragment, its
/// scheme and host lowercase, without a trailing `/`.
pub fn kube_server(text: &str) -> Option<String> {
    let url = url::Url::parse(text.trim()).ok()?;
    (url.scheme() == "https"
        && url.host_str().is_some()
        && url.username().is_empty()
        && url.password().is_none()
        && url.query().is_none()
        && url.fragment().is_none())
    .then(|| url.as_str().trim_end_matches('/').to_owned())
}

/// Adds installation `name`'s `registries` to `registries`; a registry
/// another installation names already is an error (a registry gets one
/// installation's tokens).
fn add_registries(
    source: &Source<'_>,
    name: &str,
    listed: Spanned<consumer::StringList>,
    username: &str,
    registries: &mut BTreeMap<String, RegistryLogin>,
) -> Result<(), ConfigError> {
    let span = listed.span();
    for entry in listed.into_inner().0 {
        if !consumer::valid_registry(&entry) {
            return Err(source.error(
                Some(span),
                format!(
                    "installation `{name}`: `registries` lists registry hosts as a container tool names them, without scheme or path, e.g. [\"ghcr.io\", \"registry.example.com:5000\"]"
                ),
            ));
        }
        let host = tokd_shared::registry_key(&entry.to_ascii_lowercase()).to_owned();
        if let Some(other) = registries.get(&host) {
            let other: &RegistryLogin = other;
            return Err(source.error(
                Some(span),
                format!(
                    "registry `{host}` is in the `registries` of installations `{}` and `{name}`; a registry gets one installation's tokens, so remove it from one",
                    other.installation
                ),
            ));
        }
        registries.insert(
            host,
            RegistryLogin {
                installation: name.to_owned(),
                username: username.to_owned(),
            },
        );
    }
    Ok(())
}

/// The most problems one check reports.
const MAX_PROBLEMS: usize = 50;

/// `errors` (at least one) as one error, in the order of their lines.
fn several(mut errors: Vec<ConfigError>) -> ConfigError {
    errors.sort_by_key(ConfigError::line);
    if errors.len() == 1 {
        errors.remove(0)
    } else {
        ConfigError::Several(errors)
    }
}

/// The table holding byte `offset` of `text`: the range from its
/// `[header]` line to the next header, and the header's name.
fn table_around(text: &str, offset: usize) -> Option<(Range<usize>, String)> {
    let mut start = None;
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            if at > offset {
                let (begin, header) = start?;
                return Some((begin..at, header));
            }
            let header = trimmed
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .trim()
                .to_owned();
            start = Some((at, header));
        }
        at += line.len();
    }
    let (begin, header) = start?;
    Some((begin..text.len(), header))
}

/// `text` with the bytes in `range` made spaces (line breaks kept), in
/// place: every other position stays where it was.
fn blank(text: &str, range: Range<usize>) -> String {
    let mut bytes = text.as_bytes().to_vec();
    let end = range.end.min(bytes.len());
    for byte in &mut bytes[range.start.min(end)..end] {
        if *byte != b'\n' {
            *byte = b' ';
        }
    }
    // Whole characters become spaces (a table starts at a line's start
    // and ends before another's), so the text stays UTF-8; should a range
    // ever cut one, its remains are replaced, not a panic.
    String::from_utf8(bytes)
        .unwrap_or_else(|error| String::from_utf8_lossy(error.as_bytes()).into_owned())
}

fn name_error(what: &str, name: &str) -> String {
    format!(
        "{what} name {name:?} may use only letters, digits, '.', '_' and '-' (it becomes a file name and a command argument)"
    )
}

fn build_installation(
    source: &Source<'_>,
    name: &str,
    raw: RawInstallation,
    consumers: &BTreeMap<String, Arc<Consumer>>,
    broken: &std::collections::BTreeSet<String>,
) -> Result<InstallationConfig, ConfigError> {
    let consumer_name = raw.consumer.get_ref();
    let Some(consumer) = consumers.get(consumer_name) else {
        let mut known: Vec<&str> = consumers
            .keys()
            .chain(broken.iter())
            .map(String::as_str)
            .collect();
        known.sort_unstable();
        let known = if known.is_empty() {
            "no consumers are defined".to_owned()
        } else {
            format!("defined: {}", known.join(", "))
        };
        return Err(source.error(
            Some(raw.consumer.span()),
            format!(
                "installation `{name}` names consumer `{consumer_name}`, which is not defined ({known}); \
                 add a [consumers.{consumer_name}] table"
            ),
        ));
    };
    let grant = raw.grant.unwrap_or(Grant::AuthorizationCode);
    let span = raw.consumer.span();
    match grant {
        Grant::AuthorizationCode
            if consumer.auth_url.is_none()
                && consumer.device_url.is_none()
                && consumer.issuer.is_none() =>
        {
            return Err(source.error(
                Some(span),
                format!(
                    "installation `{name}` uses the authorization_code grant, but consumer \
                     `{consumer_name}` has no `auth_url` or `device_url` (and no provider preset \
                     or `issuer`)"
                ),
            ));
        }
        Grant::ClientCredentials if consumer.secret == ClientSecretSource::None => {
            return Err(source.error(
                Some(span),
                format!(
                    "installation `{name}` uses the client_credentials grant, but consumer \
                     `{consumer_name}` has no client secret (client_secret_command, \
                     client_secret_file or client_secret)"
                ),
            ));
        }
        _ => {}
    }
    let raw_scopes = raw.scopes.map(|list| list.items).unwrap_or_default();
    let mut scopes = Vec::with_capacity(raw_scopes.len());
    for scope in raw_scopes {
        let text = scope.get_ref();
        if text.is_empty() || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(source.error(
                Some(scope.span()),
                format!("installation `{name}`: scope {text:?} may not be empty or contain spaces; list each scope on its own"),
            ));
        }
        scopes.push(scope.into_inner());
    }
    Ok(InstallationConfig {
        name: Arc::from(name),
        consumer: consumer.name.clone(),
        scopes,
        grant,
        schedule: raw.schedule,
    })
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests;
