//! Where a consumer's requests go: the endpoints from its config and
//! preset, and those discovered from its `issuer` (RFC 8414, falling back
//! to OpenID Connect Discovery). Explicit endpoints always win.
//!
//! A document is accepted only when its `issuer` is the configured one
//! (RFC 8414 §3.3): a mismatch could send tokens elsewhere. Its endpoints
//! must be https (or loopback http), as configured ones must.

use super::OAuthClient;
use super::error::{ErrorKind, OAuthError};
use super::post::describe;
use crate::config::{ClientAuth, Consumer, is_loopback};
use crate::text::error_chain;
use serde::{Deserialize, Serialize};
use url::Url;

/// The largest discovery document read.
const MAX_DOCUMENT: usize = 256 * 1024;

/// What a discovery document says, as tokd keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Discovery {
    pub issuer: Url,
    #[serde(default)]
    pub authorization_endpoint: Option<Url>,
    pub token_endpoint: Url,
    #[serde(default)]
    pub revocation_endpoint: Option<Url>,
    #[serde(default)]
    pub device_authorization_endpoint: Option<Url>,
    #[serde(default)]
    pub token_endpoint_auth_methods_supported: Vec<String>,
}

/// The endpoints of one consumer, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub token_url: Url,
    pub auth_url: Option<Url>,
    pub revoke_url: Option<Url>,
    pub device_url: Option<Url>,
    pub client_auth: ClientAuth,
}

impl Endpoints {
    /// `consumer`'s endpoints: its own, then `discovered`'s.
    pub fn of(consumer: &Consumer, discovered: Option<&Discovery>) -> Result<Self, OAuthError> {
        let pick = |own: &Option<Url>, found: Option<&Url>| own.clone().or_else(|| found.cloned());
        let token_url = pick(&consumer.token_url, discovered.map(|d| &d.token_endpoint))
            .ok_or_else(|| {
                OAuthError::new(
                    ErrorKind::Misconfigured,
                    format!(
                        "consumer `{}` has no token_url and its issuer has not been discovered yet",
                        consumer.name
                    ),
                )
            })?;
        let client_auth = consumer.client_auth.unwrap_or_else(|| {
            let methods = discovered.map_or(&[][..], |d| &d.token_endpoint_auth_methods_supported);
            let offers = |method: &str| methods.iter().any(|m| m == method);
            // RFC 8414: absent means client_secret_basic.
            if offers("client_secret_post") && !offers("client_secret_basic") {
                ClientAuth::Post
            } else {
                ClientAuth::Basic
            }
        });
        Ok(Self {
            token_url,
            auth_url: pick(
                &consumer.auth_url,
                discovered.and_then(|d| d.authorization_endpoint.as_ref()),
            ),
            revoke_url: pick(
                &consumer.revoke_url,
                discovered.and_then(|d| d.revocation_endpoint.as_ref()),
            ),
            device_url: pick(
                &consumer.device_url,
                discovered.and_then(|d| d.device_authorization_endpoint.as_ref()),
            ),
            client_auth,
        })
    }
}

/// Where the documents of `issuer` are: RFC 8414 §3.1 (the well-known
/// path inserted before the issuer's path), then OpenID Connect Discovery
/// §4 (appended).
pub fn document_urls(issuer: &Url) -> [Url; 2] {
    let path = issuer.path().trim_end_matches('/');
    let mut rfc8414 = issuer.clone();
    rfc8414.set_path(&format!("/.well-known/oauth-authorization-server{path}"));
    let mut openid = issuer.clone();
    openid.set_path(&format!("{path}/.well-known/openid-configuration"));
    [rfc8414, openid]
}

/// Whether two issuer URLs name the same issuer (a trailing slash aside,
/// which URL parsing adds to a bare host).
fn same_issuer(a: &Url, b: &Url) -> bool {
    a.as_str().trim_end_matches('/') == b.as_str().trim_end_matches('/')
}

impl OAuthClient {
    /// Fetches and checks `issuer`'s document.
    pub async fn discover(&self, issuer: &Url) -> Result<Discovery, OAuthError> {
        let mut last = None;
        for url in document_urls(issuer) {
            match self.fetch_document(&url).await {
                Ok(Some(document)) => return check(issuer, &url, document),
                Ok(None) => continue,
                Err(error) => last = Some(error),
            }
        }
        Err(last.unwrap_or_else(|| {
            OAuthError::new(
                ErrorKind::Misconfigured,
                format!(
                    "issuer {issuer} publishes no discovery document (neither /.well-known/oauth-authorization-server nor /.well-known/openid-configuration); replace `issuer` with token_url and auth_url"
                ),
            )
        }))
    }

    /// The document at `url`; `None` when there is none there (404).
    async fn fetch_document(&self, url: &Url) -> Result<Option<Discovery>, OAuthError> {
        let transient = |text: String| {
            let mut error = OAuthError::new(ErrorKind::Transient, text);
            error.status = None;
            error
        };
        let mut response = self
            .http
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|error| {
                transient(format!(
                    "cannot fetch the discovery document {url}: {}",
                    error_chain(&error)
                ))
            })?;
        let status = response.status().as_u16();
        if status == 404 || status == 410 {
            return Ok(None);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|error| {
            transient(format!(
                "cannot read the discovery document {url}: {}",
                error_chain(&error)
            ))
        })? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_DOCUMENT {
                return Err(OAuthError::new(
                    ErrorKind::Misconfigured,
                    format!("the discovery document {url} is larger than 256 KiB"),
                ));
            }
        }
        if !(200..300).contains(&status) {
            let mut error = transient(format!(
                "the discovery document {url} ({}) answered {status}",
                describe(url)
            ));
            error.status = Some(status);
            return Err(error);
        }
        let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&body);
        serde_json::from_slice(body).map(Some).map_err(|error| {
            OAuthError::new(
                ErrorKind::Misconfigured,
                format!(
                    "the discovery document {url} is not one (line {}, column {}); replace `issuer` with token_url and auth_url",
                    error.line(),
                    error.column()
                ),
            )
        })
    }
}

/// Accepts `document` (read from `url`: an address, or the file it was
/// kept in) for `issuer`, or says why not. A kept document passes this
/// again when it is read: the file could have been edited since.
pub fn check(
    issuer: &Url,
    url: &dyn std::fmt::Display,
    document: Discovery,
) -> Result<Discovery, OAuthError> {
    let refuse = |text: String| Err(OAuthError::new(ErrorKind::Misconfigured, text));
    if !same_issuer(&document.issuer, issuer) {
        return refuse(format!(
            "the discovery document {url} names the issuer {}, not {issuer}; refusing it, as RFC 8414 §3.3 says (a wrong issuer could send tokens elsewhere)",
            document.issuer
        ));
    }
    let endpoints = [
        Some(&document.token_endpoint),
        document.authorization_endpoint.as_ref(),
        document.revocation_endpoint.as_ref(),
        document.device_authorization_endpoint.as_ref(),
    ];
    for endpoint in endpoints.into_iter().flatten() {
        // Plain HTTP to this machine only for an issuer on this machine: a
        // remote issuer's document naming a loopback endpoint would send
        // the client secret to whoever listens there.
        let plain_http =
            endpoint.scheme() == "http" && !(is_loopback(endpoint) && is_loopback(issuer));
        if plain_http || !matches!(endpoint.scheme(), "http" | "https") {
            return refuse(format!(
                "the discovery document {url} names the endpoint {endpoint}, which is not https; refusing it"
            ));
        }
    }
    Ok(document)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> Url {
        Url::parse(text).expect("url")
    }

    #[test]
    fn documents_are_looked_for_where_each_standard_says() {
        let [rfc, openid] = document_urls(&url("https://gitlab.example.com"));
        assert_eq!(
            rfc.as_str(),
            "https://gitlab.example.com/.well-known/oauth-authorization-server"
        );
        assert_eq!(
            openid.as_str(),
            "https://gitlab.example.com/.well-known/openid-configuration"
        );
        let [rfc, openid] = document_urls(&url("https://id.example.com/realms/work/"));
        assert_eq!(
            rfc.as_str(),
            "https://id.example.com/.well-known/oauth-authorization-server/realms/work"
        );
        assert_eq!(
            openid.as_str(),
            "https://id.example.com/realms/work/.well-known/openid-configuration"
        );
    }

    fn document(issuer: &str) -> Discovery {
        Discovery {
            issuer: url(issuer),
            authorization_endpoint: Some(url("https://id.example.com/authorize")),
            token_endpoint: url("https://id.example.com/token"),
            revocation_endpoint: None,
            device_authorization_endpoint: Some(url("https://id.example.com/device")),
            token_endpoint_auth_methods_supported: vec!["client_secret_post".into()],
        }
    }

    #[test]
    fn only_a_document_for_the_same_issuer_over_https_is_taken() {
        let issuer = url("https://id.example.com");
        let at = url("https://id.example.com/.well-known/openid-configuration");
        assert!(check(&issuer, &at, document("https://id.example.com")).is_ok());
        let error = check(&issuer, &at, document("https://evil.example")).expect_err("mismatch");
        assert_eq!(error.kind, ErrorKind::Misconfigured);
        assert!(
            error
                .message
                .contains("names the issuer https://evil.example/"),
            "{error}"
        );
        let mut plain = document("https://id.example.com");
        plain.token_endpoint = url("http://id.example.com/token");
        assert!(check(&issuer, &at, plain).is_err());
        // A remote issuer naming an endpoint on this machine over plain
        // HTTP: refused; a loopback issuer (a local test server) may.
        let mut local = document("https://id.example.com");
        local.token_endpoint = url("http://127.0.0.1:8080/token");
        assert!(check(&issuer, &at, local).is_err());
        let loopback = url("http://127.0.0.1:8080");
        let mut both = document("http://127.0.0.1:8080");
        both.token_endpoint = url("http://127.0.0.1:8080/token");
        both.authorization_endpoint = None;
        both.device_authorization_endpoint = None;
        assert!(check(&loopback, &at, both).is_ok());
    }

    #[test]
    fn explicit_endpoints_win_over_discovered_ones() {
        let config = crate::config::Config::from_str(
            r#"[consumers.c]
issuer = "https://id.example.com"
auth_url = "https://login.example.com/authorize"
client_id = "id"
"#,
        )
        .expect("config");
        let consumer = &config.consumers["c"];
        let found = document("https://id.example.com");
        let endpoints = Endpoints::of(consumer, Some(&found)).expect("endpoints");
        assert_eq!(
            endpoints.auth_url,
            Some(url("https://login.example.com/authorize"))
        );
        assert_eq!(endpoints.token_url, url("https://id.example.com/token"));
        assert_eq!(
            endpoints.device_url,
            Some(url("https://id.example.com/device"))
        );
        assert_eq!(
            endpoints.client_auth,
            ClientAuth::Post,
            "the only method offered"
        );
        assert!(
            Endpoints::of(consumer, None).is_err(),
            "nothing discovered yet"
        );
    }
}
