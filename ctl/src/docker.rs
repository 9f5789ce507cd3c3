//! `docker-credential-tokd`: tokctl as a credential helper of Docker,
//! Podman, Buildah and skopeo (the docker-credential-helpers protocol).
//! The tool runs `docker-credential-tokd OPERATION` with the request on
//! stdin; tokctl answers when it is invoked under that name (a link to
//! tokctl). A registry gets the tokens of the one installation whose
//! `registries` name it (host, or host:port, as the tool writes it).
//!
//! - `get`: the server URL on stdin; `{"ServerURL", "Username", "Secret"}`
//!   with a fresh token on stdout, or `credentials not found in native
//!   keychain` (the words the tools look for) and status 1 for a registry
//!   no installation names, so the tool goes on without.
//! - `store`: accepted and ignored (tokd holds the token).
//! - `erase` (`docker logout`): the installation is refreshed, so the
//!   token the tool held is not the one it gets next.
//! - `list`: every configured registry with its user name.
//! - `version`.
//!
//! As the protocol has it, a failure's sentence goes to stdout (the tool
//! shows it), with tokctl's exit status.

use crate::failure::{Failure, exit};
use crate::{DEFAULT_TIMEOUT, Deadline, manager, say};
use std::io::Read as _;
use std::process::ExitCode;

/// The name a tool runs a credential helper by starts with this.
pub const PREFIX: &str = "docker-credential-";
/// What the tools take to mean "no credentials here" (docker's
/// `credentials.errCredentialsNotFoundMessage`).
pub const NOT_FOUND: &str = "credentials not found in native keychain";
/// What `docker-credential-tokd --help` says.
const HELP: &str = "docker-credential-tokd get|store|erase|list|version: tokctl as the credential helper of Docker, Podman, Buildah and skopeo (a link named so). The tool sends the request on stdin. A registry gets the tokens of the installation whose `registries` names it in tokd's config; `store` keeps nothing; `erase` refreshes. See tokctl's README, \"Container registries\".\n";
/// The most read from stdin.
const MAX_INPUT: u64 = 64 * 1024;

/// Whether tokctl was invoked as `docker-credential-…`.
pub fn called_as_helper() -> bool {
    std::env::args_os()
        .next()
        .map(std::path::PathBuf::from)
        .and_then(|path| {
            path.file_name()
                .map(|name| name.to_string_lossy().into_owned())
        })
        .is_some_and(|name| name.starts_with(PREFIX))
}

/// The registry a server URL names, as `registries` entries are written:
/// `https://Registry.Example.com:5000/v2/` → `registry.example.com:5000`.
/// Only an `http://` or `https://` prefix is taken off; `None` for
/// anything but a host name or bracketed IPv6 address with an optional
/// port (a user part, a backslash, spaces…).
pub fn registry_of(server: &str) -> Option<String> {
    let lower = server.trim().to_ascii_lowercase();
    let rest = ["https://", "http://"]
        .iter()
        .find_map(|scheme| lower.strip_prefix(scheme))
        .unwrap_or(&lower);
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let (name, port) = match host.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((address, after)) if after.is_empty() || after.starts_with(':') => {
                (address, after.strip_prefix(':'))
            }
            _ => return None,
        },
        None => match host.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        },
    };
    let name_ok = !name.is_empty()
        && if host.starts_with('[') {
            name.bytes().all(|b| b.is_ascii_hexdigit() || b == b':')
        } else {
            name.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
        };
    let port_ok = port.is_none_or(|port| port.parse::<u16>().is_ok_and(|port| port > 0));
    (name_ok && port_ok).then(|| tokd_shared::registry_key(host).to_owned())
}

/// Answers the operation in the first argument.
pub fn serve() -> ExitCode {
    let operation = std::env::args().nth(1).unwrap_or_default();
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return ExitCode::from(exit::OTHER);
    };
    match runtime.block_on(answer(&operation)) {
        Ok(output) => {
            if say::out(&output) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(exit::OTHER)
            }
        }
        Err(failure) => {
            say::out(&format!("{}\n", failure.message));
            ExitCode::from(failure.status)
        }
    }
}

async fn answer(operation: &str) -> Result<String, Failure> {
    match operation {
        "--help" | "-h" | "help" => {
            return Ok(HELP.to_owned());
        }
        "version" => {
            return Ok(format!(
                "docker-credential-tokd (tokctl {})\n",
                env!("CARGO_PKG_VERSION")
            ));
        }
        "get" | "erase" | "store" | "list" => {}
        _ => {
            return Err(Failure::new(
                exit::USAGE,
                "usage: docker-credential-tokd get|store|erase|list|version (a container tool runs it, with the request on stdin)",
            ));
        }
    }
    let mut input = String::new();
    if operation != "list" {
        std::io::stdin()
            .take(MAX_INPUT)
            .read_to_string(&mut input)
            .map_err(|error| {
                Failure::new(exit::USAGE, format!("cannot read the request: {error}"))
            })?;
    }
    let deadline = Deadline::new(DEFAULT_TIMEOUT);
    let (_connection, proxy) = manager(&deadline, false).await?;
    let registries = deadline.bound(proxy.registries()).await??;
    if operation == "list" {
        let listed: serde_json::Map<String, serde_json::Value> = registries
            .into_iter()
            .map(|(registry, _, username)| (registry, username.into()))
            .collect();
        return Ok(format!("{}\n", serde_json::Value::Object(listed)));
    }
    let server = if operation == "store" {
        // `{"ServerURL": …, "Username": …, "Secret": …}`: only the URL
        // matters; the secret is dropped unread.
        serde_json::from_str::<serde_json::Value>(&input)
            .ok()
            .and_then(|value| value["ServerURL"].as_str().map(str::to_owned))
            .unwrap_or_default()
    } else {
        input.trim().to_owned()
    };
    let server = server.as_str();
    let Some((_, installation, username)) = registry_of(server).and_then(|wanted| {
        registries
            .into_iter()
            .find(|(registry, _, _)| *registry == wanted)
    }) else {
        return Err(Failure::new(
            exit::OTHER,
            if operation == "store" {
                format!(
                    "tokd keeps no credentials for {server}: it gives tokens to the registries its installations' `registries` name, and keeps nothing else; use `credHelpers` for those registries rather than `credsStore`"
                )
            } else {
                NOT_FOUND.to_owned()
            },
        ));
    };
    if operation == "store" {
        return Ok(String::new());
    }
    if operation == "erase" {
        deadline.bound(proxy.refresh(&installation)).await??;
        return Ok(String::new());
    }
    let (token, _, _, warning) = deadline.bound(proxy.get_token(&installation, 60)).await??;
    if !warning.is_empty() {
        say::warning(&warning);
    }
    Ok(format!(
        "{}\n",
        serde_json::json!({"ServerURL": server, "Username": username, "Secret": token})
    ))
}

#[cfg(test)]
mod tests {
    use super::registry_of;

    #[test]
    fn server_urls_name_their_registry() {
        assert_eq!(registry_of("ghcr.io").as_deref(), Some("ghcr.io"));
        assert_eq!(
            registry_of("https://Registry.Example.com:5000/v2/\n").as_deref(),
            Some("registry.example.com:5000")
        );
        assert_eq!(
            registry_of("https://index.docker.io/v1/").as_deref(),
            Some("docker.io"),
            "Docker Hub as Docker names it"
        );
        assert_eq!(registry_of("docker.io").as_deref(), Some("docker.io"));
        assert_eq!(registry_of("https://user@ghcr.io/"), None);
        assert_eq!(registry_of(""), None);
        assert_eq!(
            registry_of("evil.example/a://gcr.io").as_deref(),
            Some("evil.example")
        );
        assert_eq!(registry_of("ftp://gcr.io"), None);
        assert_eq!(registry_of("gcr.io\\@evil.example"), None);
        assert_eq!(registry_of("[::1]:5000").as_deref(), Some("[::1]:5000"));
    }
}
