//! One `[consumers.NAME]` table: its keys, its preset applied, checked.

use super::ClientSecretSource;
use super::values::HttpUrl;
use super::{CronSchedule, Preset, Source, expand_path, is_loopback};
use crate::secret::ClientSecret;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use toml::Spanned;
use url::Url;

/// How the client authenticates to the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// HTTP Basic with the form-urlencoded id and secret (RFC 6749 §2.3.1).
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Post,
}

/// Parameters tokd sets itself: a consumer cannot set them by
/// `auth_params`.
const OWN_AUTH_PARAMS: &[&str] = &[
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "code_challenge",
    "code_challenge_method",
];

/// Parameters tokd sets itself: a consumer cannot set them by
/// `token_params`.
const OWN_TOKEN_PARAMS: &[&str] = &[
    "grant_type",
    "client_id",
    "client_secret",
    "code",
    "code_verifier",
    "redirect_uri",
    "refresh_token",
    "device_code",
    "scope",
    "token",
    "token_type_hint",
];

/// One consumer, with its preset applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumer {
    pub name: Arc<str>,
    pub provider: Option<Preset>,
    /// The authorization server to discover endpoints from (RFC 8414,
    /// OpenID Connect Discovery). Endpoints below that are set win.
    pub issuer: Option<Url>,
    /// From the config or the preset; `None` only with an `issuer`.
    pub token_url: Option<Url>,
    pub auth_url: Option<Url>,
    pub revoke_url: Option<Url>,
    /// The device authorization endpoint (RFC 8628).
    pub device_url: Option<Url>,
    /// From the config or the preset; `None`: discovered, else Basic.
    pub client_auth: Option<ClientAuth>,
    pub client_id: String,
    pub secret: ClientSecretSource,
    pub redirect_uri: Option<Url>,
    /// Added to the authorization URL (the preset's, then the config's).
    pub auth_params: Vec<(String, String)>,
    /// Added to every request to the token endpoint.
    pub token_params: Vec<(String, String)>,
    /// Scopes the provider needs to issue a refresh token, added to every
    /// installation's.
    pub extra_scopes: Vec<String>,
    /// Refreshes installations that have no `schedule` of their own.
    pub keep_alive: Option<CronSchedule>,
    /// The user name git wants with this consumer's tokens.
    pub git_username: Option<String>,
    /// The hosts `tokctl git-credential` gives this consumer's tokens to
    /// (lowercase host names, without a port).
    pub git_hosts: Vec<String>,
    /// The user name container registries get with this consumer's
    /// tokens (`docker-credential-tokd`).
    pub registry_username: String,
}

impl Consumer {
    /// An installation's scopes plus the consumer's extra ones.
    pub fn scopes_for(&self, scopes: &[String]) -> Vec<String> {
        let mut all = scopes.to_vec();
        for extra in &self.extra_scopes {
            if !all.contains(extra) {
                all.push(extra.clone());
            }
        }
        all
    }

    /// Whether git may be given this consumer's tokens for `host` (a host
    /// name, with or without a `:port`, as git's credential protocol
    /// sends it). A `git_hosts` entry with a port matches that port only;
    /// one without matches the host at any port.
    pub fn serves_git_host(&self, host: &str) -> bool {
        let (name, port) = split_host(host);
        self.git_hosts.iter().any(|known| {
            let (known_name, known_port) = split_host(known);
            known_name.eq_ignore_ascii_case(name) && known_port.is_none_or(|p| Some(p) == port)
        })
    }

    /// Whether a `git_hosts` entry names `host` with its very port: what
    /// plain HTTP to this machine needs, since any local user can listen
    /// on a loopback port (a `git_hosts` entry without a port, or the
    /// consumer's own loopback endpoints, are not enough).
    /// Only an IP address counts (127.0.0.1, ::1): `localhost:8080`
    /// resolves to both, and a git server listening on one leaves the
    /// other's port to anyone.
    pub fn names_git_port(&self, host: &str) -> bool {
        let (name, port) = split_host(host);
        port.is_some()
            && name
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
            && self.git_hosts.iter().any(|known| {
                let (known_name, known_port) = split_host(known);
                known_name.eq_ignore_ascii_case(name) && known_port == port
            })
    }

    /// The URL that says whom tokens belong to: the token endpoint, or the
    /// issuer when the endpoint is discovered.
    pub fn token_identity(&self) -> String {
        match (&self.token_url, &self.issuer) {
            (Some(url), _) => url.to_string(),
            (None, Some(issuer)) => format!("issuer:{issuer}"),
            (None, None) => String::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConsumer {
    provider: Option<Preset>,
    issuer: Option<Spanned<HttpUrl>>,
    tenant: Option<Spanned<String>>,
    token_url: Option<Spanned<HttpUrl>>,
    auth_url: Option<Spanned<HttpUrl>>,
    revoke_url: Option<Spanned<HttpUrl>>,
    device_url: Option<Spanned<HttpUrl>>,
    pub(super) client_id: Option<Spanned<String>>,
    client_secret: Option<Spanned<String>>,
    client_secret_file: Option<Spanned<String>>,
    client_secret_command: Option<Spanned<StringList>>,
    redirect_uri: Option<HttpUrl>,
    client_auth: Option<ClientAuth>,
    auth_params: Option<Spanned<BTreeMap<String, String>>>,
    token_params: Option<Spanned<BTreeMap<String, String>>>,
    git_username: Option<Spanned<String>>,
    git_hosts: Option<Spanned<StringList>>,
    registry_username: Option<Spanned<String>>,
}

/// `host` without a `:port` (and without the brackets of an IPv6
/// literal).
/// A host as git sends it (`name`, `name:port`, `[v6]`, `[v6]:port`) in
/// its name and port.
fn split_host(host: &str) -> (&str, Option<&str>) {
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((name, after)) => (name, after.strip_prefix(':').filter(|p| !p.is_empty())),
            None => (rest, None),
        };
    }
    match host.rsplit_once(':') {
        Some((name, port))
            if !name.contains(':')
                && !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit()) =>
        {
            (name, Some(port))
        }
        _ => (host, None),
    }
}

/// Whether `entry` is a `git_hosts` entry: a host name, or a bracketed
/// IPv6 address, with an optional `:port` (1 to 65535).
fn valid_git_host(entry: &str) -> bool {
    let (name, port) = split_host(entry);
    let name_ok = if entry.starts_with('[') {
        !name.is_empty() && name.bytes().all(|b| b.is_ascii_hexdigit() || b == b':')
    } else {
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
    };
    let port_ok = port.is_none_or(|port| port.parse::<u16>().is_ok_and(|port| port > 0));
    let trailing = entry.starts_with('[') && !entry.ends_with(']') && port.is_none();
    name_ok && port_ok && !trailing
}

/// A list of strings, with an example in the error when a plain string
/// was written.
pub(super) struct StringList(pub Vec<String>);

impl<'de> Deserialize<'de> for StringList {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            List(Vec<String>),
            Text(String),
        }
        match Either::deserialize(deserializer) {
            Ok(Either::List(list)) => Ok(Self(list)),
            Ok(Either::Text(text)) => {
                let example: Vec<String> = text
                    .split_whitespace()
                    .map(|word| format!("{word:?}"))
                    .collect();
                Err(serde::de::Error::custom(format!(
                    "expected a list of strings, one per word, e.g. [{}]",
                    example.join(", ")
                )))
            }
            Err(_) => Err(serde::de::Error::custom(
                "expected a list of strings, e.g. [\"pass\", \"show\", \"oauth/client\"]",
            )),
        }
    }
}

pub(super) fn build_consumer(
    source: &Source<'_>,
    name: &str,
    name_span: Range<usize>,
    raw: RawConsumer,
    base: Option<&Path>,
) -> Result<Consumer, super::ConfigError> {
    let Some(client_id) = raw.client_id else {
        return Err(source.error(
            Some(name_span),
            format!(
                "consumer `{name}` has no `client_id`; add the client id the provider gave you"
            ),
        ));
    };
    if client_id.get_ref().trim().is_empty() {
        return Err(source.error(
            Some(client_id.span()),
            format!("consumer `{name}` has an empty `client_id`"),
        ));
    }
    let secret = secret_source(
        source,
        name,
        raw.client_secret,
        raw.client_secret_file,
        raw.client_secret_command,
        base,
    )?;

    let issuer = raw
        .issuer
        .map(|url| checked_issuer(source, name, url))
        .transpose()?;
    let tenant = match (raw.tenant, raw.provider) {
        (Some(tenant), Some(Preset::Microsoft)) => {
            let text = tenant.get_ref();
            if text.is_empty()
                || !text
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
            {
                return Err(source.error(
                    Some(tenant.span()),
                    format!("consumer `{name}`: `tenant` is a tenant id or domain, e.g. \"contoso.onmicrosoft.com\" or \"common\""),
                ));
            }
            text.clone()
        }
        (Some(tenant), _) => {
            return Err(source.error(
                Some(tenant.span()),
                format!("consumer `{name}`: `tenant` belongs to `provider = \"microsoft\"`"),
            ));
        }
        (None, _) => "common".to_owned(),
    };
    // With an issuer, endpoints are discovered, not the preset's (a
    // preset's are its public service's: gitlab.com, not a self-hosted
    // GitLab).
    let preset = raw.provider.map(Preset::endpoints);
    let preset_urls = preset.filter(|_| issuer.is_none());
    let preset_url =
        |text: &str| Url::parse(&text.replace("{tenant}", &tenant)).expect("preset URLs are valid");

    let token_url = match (raw.token_url, preset_urls, &issuer) {
        (Some(url), _, _) => Some(checked_endpoint(source, name, "token_url", url)?),
        (None, Some(preset), _) => Some(preset_url(preset.token_url)),
        (None, None, Some(_)) => None,
        (None, None, None) => {
            let presets: Vec<&str> = Preset::ALL.iter().map(|p| p.as_str()).collect();
            return Err(source.error(
                Some(name_span),
                format!(
                    "consumer `{name}` needs `token_url`, or an `issuer` to discover it from, or a `provider` preset ({})",
                    presets.join(", ")
                ),
            ));
        }
    };
    let optional = |key: &str, url: Option<Spanned<HttpUrl>>, from_preset: Option<&str>| match (
        url,
        from_preset,
    ) {
        (Some(url), _) => checked_endpoint(source, name, key, url).map(Some),
        (None, Some(text)) => Ok(Some(preset_url(text))),
        (None, None) => Ok(None),
    };
    let auth_url = optional("auth_url", raw.auth_url, preset_urls.map(|p| p.auth_url))?;
    let revoke_url = optional(
        "revoke_url",
        raw.revoke_url,
        preset_urls.and_then(|p| p.revoke_url),
    )?;
    let device_url = optional(
        "device_url",
        raw.device_url,
        preset_urls.and_then(|p| p.device_url),
    )?;
    let client_auth = raw.client_auth.or(preset.map(|preset| preset.client_auth));

    let mut auth_params: Vec<(String, String)> = preset
        .map(|p| {
            p.auth_params
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        })
        .unwrap_or_default();
    for (key, value) in params(
        source,
        name,
        "auth_params",
        raw.auth_params,
        OWN_AUTH_PARAMS,
    )? {
        auth_params.retain(|(known, _)| *known != key);
        auth_params.push((key, value));
    }
    let token_params = params(
        source,
        name,
        "token_params",
        raw.token_params,
        OWN_TOKEN_PARAMS,
    )?;
    let keep_alive = preset
        .and_then(|p| p.keep_alive)
        .map(|text| CronSchedule::parse(text).expect("preset schedules are valid"));
    let git_username = match raw.git_username {
        Some(user)
            if user.get_ref().trim().is_empty() || user.get_ref().contains([':', '@', '/']) =>
        {
            return Err(source.error(
                Some(user.span()),
                format!(
                    "consumer `{name}`: `git_username` may not be empty or hold ':', '@' or '/'"
                ),
            ));
        }
        Some(user) => Some(user.into_inner()),
        None => preset.and_then(|p| p.git_username).map(str::to_owned),
    };
    let registry_username = match raw.registry_username {
        Some(user) if user.get_ref().trim().is_empty() || user.get_ref().contains(':') => {
            return Err(source.error(
                Some(user.span()),
                format!("consumer `{name}`: `registry_username` may not be empty or hold ':'"),
            ));
        }
        Some(user) => user.into_inner(),
        None => preset
            .and_then(|p| p.registry_username)
            .unwrap_or(DEFAULT_REGISTRY_USERNAME)
            .to_owned(),
    };
    let git_hosts = match raw.git_hosts {
        Some(hosts) => {
            let span = hosts.span();
            let hosts = hosts.into_inner().0;
            if hosts.is_empty() || hosts.iter().any(|host| !valid_git_host(host)) {
                return Err(source.error(
                    Some(span),
                    format!(
                        "consumer `{name}`: `git_hosts` lists host names without scheme or path, each with a port if it needs one, e.g. [\"git.example.com\", \"127.0.0.1:8080\"]"
                    ),
                ));
            }
            hosts.iter().map(|host| host.to_ascii_lowercase()).collect()
        }
        None => default_git_hosts(
            preset_urls.map_or(&[][..], |p| p.git_hosts),
            [&issuer, &token_url, &auth_url],
        ),
    };

    Ok(Consumer {
        name: Arc::from(name),
        provider: raw.provider,
        issuer,
        token_url,
        auth_url,
        revoke_url,
        device_url,
        client_auth,
        client_id: client_id.into_inner(),
        secret,
        redirect_uri: raw.redirect_uri.map(|url| url.0),
        auth_params,
        token_params,
        extra_scopes: preset
            .map(|p| p.extra_scopes.iter().map(|s| (*s).to_owned()).collect())
            .unwrap_or_default(),
        keep_alive,
        git_username,
        git_hosts,
        registry_username,
    })
}

/// The user name registries get when neither the consumer nor its preset
/// names one: registries that take an OAuth token mostly ignore it.
pub const DEFAULT_REGISTRY_USERNAME: &str = "oauth2";

/// Whether `entry` names a container registry: a host, or a bracketed
/// IPv6 address, with an optional `:port` (as `git_hosts` entries).
pub fn valid_registry(entry: &str) -> bool {
    valid_git_host(entry)
}

/// The preset's git hosts (its public service's), else the hosts of the
/// consumer's own endpoints: a self-hosted GitLab serves git where it
/// serves OAuth.
fn default_git_hosts<const N: usize>(preset: &[&str], urls: [&Option<Url>; N]) -> Vec<String> {
    if !preset.is_empty() {
        return preset.iter().map(|host| (*host).to_owned()).collect();
    }
    let mut hosts: Vec<String> = Vec::new();
    for url in urls.into_iter().flatten() {
        // Never this machine: any local user can listen on a loopback
        // port, and git would hand them the token over plain HTTP.
        if is_loopback(url) {
            continue;
        }
        if let Some(host) = url.host_str() {
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_ascii_lowercase();
            if !hosts.contains(&host) {
                hosts.push(host);
            }
        }
    }
    hosts
}

fn secret_source(
    source: &Source<'_>,
    name: &str,
    inline: Option<Spanned<String>>,
    file: Option<Spanned<String>>,
    command: Option<Spanned<StringList>>,
    base: Option<&Path>,
) -> Result<ClientSecretSource, super::ConfigError> {
    let mut sources = Vec::new();
    if let Some(secret) = &inline {
        sources.push(("client_secret", secret.span()));
    }
    if let Some(file) = &file {
        sources.push(("client_secret_file", file.span()));
    }
    if let Some(command) = &command {
        sources.push(("client_secret_command", command.span()));
    }
    if let [(first, _), (second, span), ..] = sources.as_slice() {
        return Err(source.error(
            Some(span.clone()),
            format!("consumer `{name}` has both `{first}` and `{second}`; keep exactly one secret source"),
        ));
    }
    Ok(if let Some(secret) = inline {
        ClientSecretSource::Inline(ClientSecret::new(secret.into_inner()))
    } else if let Some(file) = file {
        let span = file.span();
        let path = expand_path(file.get_ref(), base)
            .map_err(|message| source.error(Some(span), message))?;
        ClientSecretSource::File(path)
    } else if let Some(command) = command {
        let span = command.span();
        let argv = command.into_inner().0;
        if argv.first().is_none_or(|program| program.is_empty()) {
            return Err(source.error(
                Some(span),
                format!("consumer `{name}`: `client_secret_command` needs a program, e.g. [\"pass\", \"show\", \"{name}\"]"),
            ));
        }
        ClientSecretSource::Command(argv)
    } else {
        ClientSecretSource::None
    })
}

/// `auth_params` or `token_params`: names tokd sets itself are refused.
fn params(
    source: &Source<'_>,
    consumer: &str,
    key: &str,
    table: Option<Spanned<BTreeMap<String, String>>>,
    own: &[&str],
) -> Result<Vec<(String, String)>, super::ConfigError> {
    let Some(table) = table else {
        return Ok(Vec::new());
    };
    let span = table.span();
    let table = table.into_inner();
    if let Some(taken) = table.keys().find(|name| own.contains(&name.as_str())) {
        return Err(source.error(
            Some(span),
            format!("consumer `{consumer}`: `{key}` may not set `{taken}`, which tokd sets itself"),
        ));
    }
    if let Some(empty) = table.keys().find(|name| name.is_empty()) {
        return Err(source.error(
            Some(span),
            format!("consumer `{consumer}`: `{key}` has a parameter with no name ({empty:?})"),
        ));
    }
    Ok(table.into_iter().collect())
}

/// Endpoints carry secrets, so plain http is refused except on loopback.
fn checked_endpoint(
    source: &Source<'_>,
    consumer: &str,
    key: &str,
    url: Spanned<HttpUrl>,
) -> Result<Url, super::ConfigError> {
    let span = url.span();
    let url = url.into_inner().0;
    if url.scheme() == "http" && !is_loopback(&url) {
        return Err(source.error(
            Some(span),
            format!(
                "consumer `{consumer}`: `{key}` must use https (plain http is allowed only for \
                 127.0.0.1, ::1 and localhost, since it carries secrets)"
            ),
        ));
    }
    Ok(url)
}

/// An issuer is an https URL without query or fragment (RFC 8414 §2).
fn checked_issuer(
    source: &Source<'_>,
    consumer: &str,
    url: Spanned<HttpUrl>,
) -> Result<Url, super::ConfigError> {
    let span = url.span();
    let checked = checked_endpoint(source, consumer, "issuer", url)?;
    if checked.query().is_some() || checked.fragment().is_some() {
        return Err(source.error(
            Some(span),
            format!(
                "consumer `{consumer}`: `issuer` may not have a query or a fragment (RFC 8414)"
            ),
        ));
    }
    Ok(checked)
}
