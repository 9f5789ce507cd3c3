//! Tokens for git: what `tokctl git-credential` asks for. A token goes
//! only where its consumer serves git (`git_hosts`), over HTTPS, or over
//! plain HTTP to a loopback port a `git_hosts` entry names: a credential
//! helper configured for every host must not hand a Bitbucket token to
//! whatever server a submodule points at, nor to another local user's
//! listener on 127.0.0.1.

use super::{Broker, Error, Token};
use crate::config;
use std::time::Duration;
use url::Url;

/// What git is given.
#[derive(Debug)]
pub struct GitCredential {
    /// The consumer's `git_username` (or its preset's); `None` when it
    /// has none, and the helper keeps the one git has.
    pub username: Option<String>,
    pub token: Token,
}

impl Broker {
    /// A token for git at `protocol://host`, valid for at least
    /// `min_valid`, with the user name git should send it with.
    pub async fn git_credential(
        &self,
        name: &str,
        protocol: &str,
        host: &str,
        min_valid: Duration,
    ) -> Result<GitCredential, Error> {
        let spec = self.installations.get(name)?.spec();
        let consumer = &spec.consumer;
        check_transport(protocol, host)?;
        if protocol == "http" && !consumer.names_git_port(host) {
            return Err(Error::InvalidArgument(format!(
                "not sending a token to {host} over plain HTTP: any user of this machine can listen there; if that git server is yours, list \"{host}\" (with its port) in `git_hosts` in [consumers.{}]",
                consumer.name,
            )));
        }
        if !consumer.serves_git_host(host) {
            return Err(Error::InvalidArgument(format!(
                "`{name}` (consumer `{}`) is not for git at {host}: its git hosts are {}; add the host to `git_hosts` in [consumers.{}] if it belongs there",
                consumer.name,
                if consumer.git_hosts.is_empty() {
                    "none".to_owned()
                } else {
                    consumer.git_hosts.join(", ")
                },
                consumer.name,
            )));
        }
        let token = self.get_token(name, min_valid).await?;
        Ok(GitCredential {
            username: consumer.git_username.clone(),
            token,
        })
    }
}

impl Broker {
    /// Where git may be given `name`'s tokens, as git names a remote's
    /// scheme and host: `https://HOST` for each of the consumer's git
    /// hosts, `http://HOST:PORT` for a loopback one (`tokctl git-setup`).
    pub fn git_remotes(&self, name: &str) -> Result<Vec<String>, Error> {
        let spec = self.installations.get(name)?.spec();
        Ok(spec
            .consumer
            .git_hosts
            .iter()
            .map(|host| remote_of(host))
            .collect())
    }
}

/// A `git_hosts` entry as the scheme and host of a git remote: `https`,
/// or `http` for a loopback address with a port; an IPv6 address kept
/// without its brackets (a default from an endpoint's host) gets them back.
fn remote_of(host: &str) -> String {
    let host = if host.matches(':').count() > 1 && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    let plain = Url::parse(&format!("http://{host}/"))
        .is_ok_and(|url| config::is_loopback(&url) && url.port().is_some());
    format!("{}://{host}", if plain { "http" } else { "https" })
}

/// HTTPS anywhere; plain HTTP to this machine only (a token over HTTP
/// crosses the network readable).
fn check_transport(protocol: &str, host: &str) -> Result<(), Error> {
    let valid_host = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    if !valid_host {
        return Err(Error::InvalidArgument(
            "git asked for a credential without a valid host".to_owned(),
        ));
    }
    match protocol {
        "https" => Ok(()),
        "http"
            if Url::parse(&format!("http://{host}/"))
                .is_ok_and(|url| config::is_loopback(&url)) =>
        {
            Ok(())
        }
        "http" => Err(Error::InvalidArgument(format!(
            "not sending a token to {host} over plain HTTP; use an https:// remote"
        ))),
        other => Err(Error::InvalidArgument(format!(
            "tokens are for git over HTTPS, not `{other}`"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::{check_transport, remote_of};

    #[test]
    fn git_hosts_become_remotes() {
        assert_eq!(remote_of("bitbucket.org"), "https://bitbucket.org");
        assert_eq!(
            remote_of("git.example.com:8443"),
            "https://git.example.com:8443"
        );
        assert_eq!(remote_of("127.0.0.1:8080"), "http://127.0.0.1:8080");
        assert_eq!(remote_of("2001:db8::1"), "https://[2001:db8::1]");
        assert_eq!(remote_of("[::1]:9000"), "http://[::1]:9000");
    }

    #[test]
    fn tokens_go_over_https_or_to_loopback() {
        assert!(check_transport("https", "bitbucket.org").is_ok());
        assert!(check_transport("https", "git.example.com:8443").is_ok());
        assert!(check_transport("http", "127.0.0.1:8080").is_ok());
        assert!(check_transport("http", "localhost").is_ok());
        assert!(check_transport("http", "[::1]:9000").is_ok());
        for (protocol, host) in [
            ("http", "bitbucket.org"),
            ("http", "127.0.0.1.evil.example"),
            ("ssh", "bitbucket.org"),
            ("https", ""),
            ("https", "bitbucket.org/path"),
            ("https", "user@bitbucket.org"),
        ] {
            assert!(
                check_transport(protocol, host).is_err(),
                "{protocol}://{host} accepted"
            );
        }
    }
}
