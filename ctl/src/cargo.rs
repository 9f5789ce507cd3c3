//! tokctl as Cargo's credential provider (Cargo's credential-provider
//! protocol, version 1). Cargo starts the provider as
//! `tokctl --cargo-plugin` and nothing else; the rest of the configured
//! command line arrives in each request's `args`:
//!
//! ```toml
//! [registries.company]
//! index = "sparse+https://crates.example.com/index/"
//! credential-provider = ["tokctl", "cargo-credential", "NAME"]
//! ```
//!
//! The registry must be one NAME's `registries` names (its index URL's
//! host, or host:port), over `https`, or plain `http` to a loopback
//! address: an index URL that reaches tokctl from elsewhere (`cargo
//! install --index`, a dependency's `registry-index`) gets nothing. (A
//! project's own `.cargo/config.toml` can run commands as the user
//! anyway; the check is no defence against it.)
//!
//! tokctl says hello (`{"v":[1]}`), then answers one JSON line per
//! request until stdin closes: `get` with a fresh token of NAME (as
//! `Bearer TOKEN`, or the bare token with `--raw` after NAME) cached by
//! Cargo until it expires; `login` and `logout` with
//! `operation-not-supported` (tokd holds the token, and `tokctl login` and
//! `revoke` are how it comes and goes). A token that cannot be had is an
//! `other` error carrying tokctl's sentence, which Cargo shows.

use crate::failure::{Failure, exit};
use crate::{DEFAULT_TIMEOUT, Deadline, manager, say};
use serde::Deserialize;
use serde_json::{Value, json};
use std::io::{BufRead as _, Read as _};
use tokd_shared::ManagerProxy;

/// The first argument Cargo gives every credential provider.
pub const PLUGIN_FLAG: &str = "--cargo-plugin";
/// The word that names this protocol in the configured command line.
pub const COMMAND: &str = "cargo-credential";
/// The longest request line read.
const MAX_LINE: usize = 64 * 1024;

/// Whether Cargo started this tokctl as its credential provider.
pub fn called_by_cargo() -> bool {
    let mut args = std::env::args_os().skip(1);
    args.next().is_some_and(|first| first == PLUGIN_FLAG) && args.next().is_none()
}

/// What Cargo asks.
#[derive(Debug, Deserialize)]
struct Request {
    v: u32,
    kind: String,
    #[serde(default)]
    registry: Registry,
    #[serde(default)]
    args: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Registry {
    #[serde(rename = "index-url", default)]
    index_url: String,
}

/// What to fetch for a `get`: the installation, and whether Cargo wants
/// the bare token.
#[derive(Debug, PartialEq, Eq)]
pub struct Wanted {
    pub name: String,
    pub raw: bool,
}

/// The installation the configured arguments name: `[cargo-credential]
/// NAME [--raw]`.
pub fn wanted(configured: &[String]) -> Result<Wanted, String> {
    let args: Vec<&str> = configured
        .iter()
        .map(String::as_str)
        .skip_while(|arg| *arg == COMMAND)
        .collect();
    match args.as_slice() {
        [name] if !name.starts_with('-') => Ok(Wanted {
            name: (*name).to_owned(),
            raw: false,
        }),
        [name, "--raw"] | ["--raw", name] if !name.starts_with('-') => Ok(Wanted {
            name: (*name).to_owned(),
            raw: true,
        }),
        _ => Err(format!(
            "tokctl needs the installation: credential-provider = [\"tokctl\", \"{COMMAND}\", \"NAME\"] (optionally \"--raw\" after NAME); the arguments after \"tokctl\" were {configured:?}"
        )),
    }
}

/// Speaks the protocol on stdin and stdout until Cargo closes stdin.
pub fn serve() -> std::process::ExitCode {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return std::process::ExitCode::FAILURE;
    };
    if !say::out(&format!("{}\n", json!({"v": [1]}))) {
        return std::process::ExitCode::FAILURE;
    }
    let mut proxy: Option<(zbus::Connection, ManagerProxy<'static>)> = None;
    let mut stdin = std::io::stdin().lock();
    let mut line = String::new();
    loop {
        line.clear();
        match std::io::Read::by_ref(&mut stdin)
            .take(MAX_LINE as u64)
            .read_line(&mut line)
        {
            Ok(0) | Err(_) => return std::process::ExitCode::SUCCESS,
            Ok(_) => {}
        }
        let answer = match serde_json::from_str::<Request>(&line) {
            Ok(request) => runtime.block_on(answer(&request, &mut proxy)),
            Err(error) => other(&format!("tokctl cannot read Cargo's request: {error}")),
        };
        if !say::out(&format!("{answer}\n")) {
            return std::process::ExitCode::FAILURE;
        }
    }
}

async fn answer(
    request: &Request,
    proxy: &mut Option<(zbus::Connection, ManagerProxy<'static>)>,
) -> Value {
    if request.v != 1 {
        return other(&format!(
            "tokctl speaks version 1 of Cargo's credential protocol, not {}",
            request.v
        ));
    }
    match request.kind.as_str() {
        "get" => {}
        // tokd holds the token: `cargo login` has nothing to store, and
        // `cargo logout` nothing to forget (`tokctl revoke NAME` does).
        _ => return json!({"Err": {"kind": "operation-not-supported"}}),
    }
    let wanted = match wanted(&request.args) {
        Ok(wanted) => wanted,
        Err(message) => return other(&message),
    };
    match token(&wanted.name, &request.registry.index_url, proxy).await {
        Ok((token, expires_at)) => {
            let token = if wanted.raw {
                token
            } else {
                format!("Bearer {token}")
            };
            let mut ok = json!({
                "kind": "get",
                "token": token,
                "cache": "session",
                "operation_independent": true,
            });
            if expires_at > 0 {
                ok["cache"] = json!("expires");
                ok["expiration"] = json!(expires_at);
            }
            json!({"Ok": ok})
        }
        Err(failure) => other(&failure.message),
    }
}

/// The registry (`host` or `host:port`, lowercase) of a Cargo index URL
/// that may be given a token: `https`, or `http` to a loopback address.
pub fn index_registry(index_url: &str) -> Result<String, String> {
    let url = index_url
        .strip_prefix("sparse+")
        .or_else(|| index_url.strip_prefix("registry+"))
        .unwrap_or(index_url);
    let (scheme, _) = url.split_once("://").unwrap_or(("", ""));
    let registry = crate::docker::registry_of(url)
        .filter(|_| matches!(scheme, "https" | "http"))
        .ok_or_else(|| format!("tokctl gives tokens to https registries only, not {index_url}"))?;
    let host = registry
        .rsplit_once(':')
        .map_or(registry.as_str(), |(host, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                host
            } else {
                registry.as_str()
            }
        });
    let loopback = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
        .is_ok_and(|address| address.is_loopback());
    if scheme == "http" && !loopback {
        return Err(format!(
            "tokctl sends no token over plain http except to this machine, and {index_url} is not on it; use https"
        ));
    }
    Ok(registry)
}

async fn token(
    name: &str,
    index_url: &str,
    proxy: &mut Option<(zbus::Connection, ManagerProxy<'static>)>,
) -> Result<(String, i64), Failure> {
    let registry =
        index_registry(index_url).map_err(|message| Failure::new(exit::OTHER, message))?;
    let deadline = Deadline::new(DEFAULT_TIMEOUT);
    if proxy.is_none() {
        *proxy = Some(manager(&deadline, false).await?);
    }
    let Some((_, proxy)) = proxy.as_ref() else {
        return Err(Failure::new(
            crate::failure::exit::OTHER,
            "tokctl lost its connection to tokd",
        ));
    };
    let registries = deadline.bound(proxy.registries()).await??;
    if !registries
        .iter()
        .any(|(known, installation, _)| *known == registry && installation == name)
    {
        return Err(Failure::new(
            exit::OTHER,
            format!(
                "`{name}` gives its tokens to the registries its `registries` names, and {registry} (from {index_url}, in Cargo's configuration) is not one; only if that registry is yours, add \"{registry}\" to `registries` in [installations.{name}] and run `tokctl reload`"
            ),
        ));
    }
    let (token, expires_at, _, warning) = deadline.bound(proxy.get_token(name, 60)).await??;
    if !warning.is_empty() {
        say::warning(&warning);
    }
    Ok((token, expires_at))
}

fn other(message: &str) -> Value {
    json!({"Err": {"kind": "other", "message": message, "caused-by": []}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configured_arguments_name_the_installation() {
        let args = |list: &[&str]| list.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            wanted(&args(&["cargo-credential", "company"])),
            Ok(Wanted {
                name: "company".into(),
                raw: false
            })
        );
        assert_eq!(
            wanted(&args(&["company", "--raw"])),
            Ok(Wanted {
                name: "company".into(),
                raw: true
            })
        );
        assert!(wanted(&args(&["cargo-credential"])).is_err());
        assert!(wanted(&args(&["a", "b"])).is_err());
    }

    #[test]
    fn only_https_registries_or_loopback_ones_get_a_token() {
        assert_eq!(
            index_registry("sparse+https://Crates.Example.com/index/").as_deref(),
            Ok("crates.example.com")
        );
        assert_eq!(
            index_registry("https://github.com/org/index").as_deref(),
            Ok("github.com")
        );
        assert_eq!(
            index_registry("sparse+http://127.0.0.1:8080/index/").as_deref(),
            Ok("127.0.0.1:8080")
        );
        assert!(index_registry("sparse+http://crates.example.com/index/").is_err());
        assert!(index_registry("sparse+http://127.0.0.1.evil.example/index/").is_err());
        assert!(index_registry("sparse+https://user@crates.example.com/index/").is_err());
        assert!(index_registry("file:///srv/index").is_err());
        assert!(index_registry("ssh://git@example.com/index").is_err());
    }
}
