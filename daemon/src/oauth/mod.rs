//! The only code that speaks HTTP to providers.
//!
//! Grants: `authorization_code` (with or without PKCE), `refresh_token`,
//! `client_credentials`; revocation (RFC 7009). Client authentication by
//! HTTP Basic (id and secret form-urlencoded first, RFC 6749 §2.3.1) or in
//! the body. Bodies are form-urlencoded, `Accept: application/json`, with
//! connect and total timeouts, and redirects are never followed (a redirect
//! would resend credentials somewhere else).
//!
//! Written on reqwest rather than the `oauth2` crate: that crate's error type
//! drops the HTTP status and `Retry-After` of 5xx/429 answers and cannot read
//! Bitbucket's `scopes`, string `expires_in`, or `invalid_request` "Invalid
//! refresh_token" — exactly what the daemon acts on.
//!
//! This module never stores anything and never decides when to refresh.

mod error;
mod response;

pub use error::{ErrorKind, OAuthError, classify, sanitize};
pub use response::{
    DEFAULT_LIFETIME, ErrorResponse, MAX_LIFETIME, ParseError, TokenResponse, parse_error_response,
    parse_token_response,
};

use crate::config::{ClientAuth, Consumer};
use crate::secret::{
    AccessToken, AuthorizationCode, ClientSecret, PkceVerifier, RefreshToken, SecretError,
};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SecureRandom as _;
use std::time::{Duration, SystemTime};
use url::Url;

/// Connect timeout for every request to a provider.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Total timeout for every request to a provider.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Bodies larger than this are cut off: no token response is this big.
const MAX_BODY: usize = 1024 * 1024;
/// How much of an unusable body is quoted in a message.
const EXCERPT: usize = 120;

/// A PKCE pair (RFC 7636, method S256).
#[derive(Debug, Clone)]
pub struct Pkce {
    pub verifier: PkceVerifier,
    pub challenge: String,
}

impl Pkce {
    /// 32 random bytes as the verifier (43 characters), SHA-256 challenge.
    pub fn generate() -> Self {
        let verifier = PkceVerifier::new(random_token(32));
        let challenge = Self::challenge_of(&verifier);
        Self {
            verifier,
            challenge,
        }
    }

    pub fn challenge_of(verifier: &PkceVerifier) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, verifier.expose().as_bytes());
        URL_SAFE_NO_PAD.encode(digest.as_ref())
    }
}

/// `bytes` random bytes from the system CSPRNG, base64url without padding.
pub fn random_token(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    ring::rand::SystemRandom::new()
        .fill(&mut buffer)
        .expect("the system random number generator failed");
    URL_SAFE_NO_PAD.encode(buffer)
}

/// The URL a human opens to authorize an installation.
pub fn authorization_url(
    consumer: &Consumer,
    scopes: &[String],
    state: &str,
    pkce_challenge: Option<&str>,
    redirect_uri: Option<&Url>,
) -> Option<Url> {
    let mut url = consumer.auth_url.clone()?;
    {
        let mut query = url.query_pairs_mut();
        query.append_pair("response_type", "code");
        query.append_pair("client_id", &consumer.client_id);
        if let Some(redirect_uri) = redirect_uri {
            query.append_pair("redirect_uri", redirect_uri.as_str());
        }
        if !scopes.is_empty() {
            query.append_pair("scope", &scopes.join(" "));
        }
        query.append_pair("state", state);
        if let Some(challenge) = pkce_challenge {
            query.append_pair("code_challenge", challenge);
            query.append_pair("code_challenge_method", "S256");
        }
    }
    Some(url)
}

/// Which token a revocation names (RFC 7009 `token_type_hint`).
#[derive(Debug, Clone, Copy)]
pub enum RevocableToken<'a> {
    Access(&'a AccessToken),
    Refresh(&'a RefreshToken),
}

/// An HTTP client for token endpoints. Cheap to clone.
#[derive(Debug, Clone)]
pub struct OAuthClient {
    http: reqwest::Client,
}

impl OAuthClient {
    /// A client with the default timeouts.
    pub fn new() -> Result<Self, OAuthError> {
        Self::with_timeouts(CONNECT_TIMEOUT, REQUEST_TIMEOUT)
    }

    pub fn with_timeouts(connect: Duration, total: Duration) -> Result<Self, OAuthError> {
        // reqwest is built without a TLS crypto provider of its own (that
        // would pull aws-lc-sys); ring is the process default. A second
        // install attempt fails harmlessly.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(connect)
            .timeout(total)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("tokd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| {
                OAuthError::new(
                    ErrorKind::Misconfigured,
                    format!("cannot build the HTTP client: {}", error_chain(&error)),
                )
            })?;
        Ok(Self { http })
    }

    /// Exchanges an authorization code (once: codes are one-use).
    pub async fn exchange_code(
        &self,
        consumer: &Consumer,
        code: &AuthorizationCode,
        verifier: Option<&PkceVerifier>,
        redirect_uri: Option<&Url>,
    ) -> Result<TokenResponse, OAuthError> {
        let mut form = vec![
            ("grant_type", "authorization_code".to_owned()),
            ("code", code.expose().to_owned()),
        ];
        if let Some(redirect_uri) = redirect_uri {
            form.push(("redirect_uri", redirect_uri.to_string()));
        }
        if let Some(verifier) = verifier {
            form.push(("code_verifier", verifier.expose().to_owned()));
        }
        let mut sensitive = vec![code.expose()];
        sensitive.extend(verifier.map(PkceVerifier::expose));
        self.token_request(consumer, form, &sensitive).await
    }

    /// Uses a refresh token. The response may carry a new refresh token
    /// (rotation) or none (keep the old one).
    pub async fn refresh(
        &self,
        consumer: &Consumer,
        refresh_token: &RefreshToken,
    ) -> Result<TokenResponse, OAuthError> {
        let form = vec![
            ("grant_type", "refresh_token".to_owned()),
            ("refresh_token", refresh_token.expose().to_owned()),
        ];
        self.token_request(consumer, form, &[refresh_token.expose()])
            .await
    }

    /// Requests a token with the consumer's own credentials.
    pub async fn client_credentials(
        &self,
        consumer: &Consumer,
        scopes: &[String],
    ) -> Result<TokenResponse, OAuthError> {
        let mut form = vec![("grant_type", "client_credentials".to_owned())];
        if !scopes.is_empty() {
            form.push(("scope", scopes.join(" ")));
        }
        self.token_request(consumer, form, &[]).await
    }

    /// Revokes a token (RFC 7009). Fails with `Misconfigured` when the
    /// consumer has no `revoke_url`.
    pub async fn revoke(
        &self,
        consumer: &Consumer,
        token: RevocableToken<'_>,
    ) -> Result<(), OAuthError> {
        let Some(url) = consumer.revoke_url.clone() else {
            return Err(OAuthError::new(
                ErrorKind::Misconfigured,
                format!(
                    "consumer `{}` has no revoke_url; revoke the grant at the provider's website",
                    consumer.name
                ),
            ));
        };
        let (value, hint) = match token {
            RevocableToken::Access(token) => (token.expose(), "access_token"),
            RevocableToken::Refresh(token) => (token.expose(), "refresh_token"),
        };
        let form = vec![
            ("token", value.to_owned()),
            ("token_type_hint", hint.to_owned()),
        ];
        // RFC 7009 §2.2: 200 whether or not the token was valid; `post`
        // returns Ok only for 2xx.
        self.post(consumer, &url, "revocation endpoint", form, &[value])
            .await?;
        Ok(())
    }

    async fn token_request(
        &self,
        consumer: &Consumer,
        form: Vec<(&'static str, String)>,
        sensitive: &[&str],
    ) -> Result<TokenResponse, OAuthError> {
        let url = consumer.token_url.clone();
        let (status, body, secret) = self
            .post(consumer, &url, "token endpoint", form, sensitive)
            .await?;
        parse_token_response(&body).map_err(|error| {
            let mut all: Vec<&str> = sensitive.to_vec();
            all.extend(secret.as_ref().map(ClientSecret::expose));
            let mut failure = OAuthError::new(
                ErrorKind::Transient,
                error::scrub(
                    &format!(
                        "token endpoint {} answered {status} but {error}{}",
                        describe(&url),
                        excerpt_suffix(&body)
                    ),
                    &all,
                ),
            );
            failure.status = Some(status);
            failure
        })
    }

    /// Sends one form POST with client authentication. Returns the status,
    /// the body and the client secret it used (for scrubbing), or the
    /// classified failure.
    async fn post(
        &self,
        consumer: &Consumer,
        url: &Url,
        what: &str,
        mut form: Vec<(&'static str, String)>,
        sensitive: &[&str],
    ) -> Result<(u16, Vec<u8>, Option<ClientSecret>), OAuthError> {
        let secret = consumer.secret.resolve().await.map_err(secret_failure)?;
        let mut request = self
            .http
            .post(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            );
        match (consumer.client_auth, &secret) {
            (ClientAuth::Basic, Some(secret)) => {
                request = request.header(
                    reqwest::header::AUTHORIZATION,
                    basic_authorization(&consumer.client_id, secret),
                );
            }
            (ClientAuth::Post, Some(secret)) => {
                form.push(("client_id", consumer.client_id.clone()));
                form.push(("client_secret", secret.expose().to_owned()));
            }
            // A public client identifies itself in the body.
            (_, None) => form.push(("client_id", consumer.client_id.clone())),
        }
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form.iter().map(|(key, value)| (*key, value.as_str())))
            .finish();

        let mut all: Vec<&str> = sensitive.to_vec();
        all.extend(secret.as_ref().map(ClientSecret::expose));

        let mut response = request.body(body).send().await.map_err(|error| {
            OAuthError::new(
                ErrorKind::Transient,
                error::scrub(
                    &format!(
                        "cannot reach {what} {}: {}",
                        describe(url),
                        error_chain(&error)
                    ),
                    &all,
                ),
            )
        })?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| parse_retry_after(value, SystemTime::now()));
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|value| value.to_str().ok())
            .map(|value| sanitize(value, EXCERPT));

        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = MAX_BODY.saturating_sub(body.len());
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    if room <= chunk.len() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    let mut failure = OAuthError::new(
                        ErrorKind::Transient,
                        error::scrub(
                            &format!(
                                "{what} {} answered {status} but the body could not be read: {}",
                                describe(url),
                                error_chain(&error)
                            ),
                            &all,
                        ),
                    );
                    failure.status = Some(status);
                    return Err(failure);
                }
            }
        }

        if (200..300).contains(&status) {
            return Ok((status, body, secret));
        }

        let parsed = parse_error_response(&body);
        let code = parsed.as_ref().and_then(|parsed| parsed.error.clone());
        let description = parsed
            .as_ref()
            .and_then(|parsed| parsed.error_description.as_deref())
            .map(|text| error::scrub(&sanitize(text, 200), &all));
        let kind = classify(status, code.as_deref(), description.as_deref());
        let detail = match (&code, &description) {
            (Some(code), Some(description)) => format!(": {} ({description})", sanitize(code, 60)),
            (Some(code), None) => format!(": {}", sanitize(code, 60)),
            (None, Some(description)) => format!(": {description}"),
            (None, None) => match &location {
                Some(location) if (300..400).contains(&status) => {
                    format!(", a redirect to {location}; check the URL")
                }
                _ => excerpt_suffix(&body),
            },
        };
        let mut message = format!("{what} {} answered {status}{detail}", describe(url));
        if let Some(retry_after) = retry_after {
            message.push_str(&format!("; retry after {}s", retry_after.as_secs()));
        }
        Err(OAuthError {
            kind,
            status: Some(status),
            error: code.map(|code| sanitize(&code, 60)),
            description,
            retry_after,
            message: error::scrub(&message, &all),
        })
    }
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))`, RFC 6749 §2.3.1.
fn basic_authorization(client_id: &str, secret: &ClientSecret) -> String {
    let encode =
        |text: &str| url::form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>();
    let credentials = format!("{}:{}", encode(client_id), encode(secret.expose()));
    format!("Basic {}", STANDARD.encode(credentials))
}

/// A secret that could not be had. A failing or slow command may be a locked
/// password store that will open later, so those are transient; a missing
/// program or file will not fix itself.
fn secret_failure(error: SecretError) -> OAuthError {
    let kind = match error {
        SecretError::Timeout { .. } | SecretError::Failed { .. } => ErrorKind::Transient,
        _ => ErrorKind::Misconfigured,
    };
    OAuthError::new(kind, error.to_string())
}

/// `(host)` for messages: enough to tell endpoints apart, no query string.
fn describe(url: &Url) -> String {
    let host = url.host_str().unwrap_or("?");
    match url.port() {
        Some(port) => format!("({host}:{port})"),
        None => format!("({host})"),
    }
}

fn excerpt_suffix(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(4096)]);
    let excerpt = sanitize(&text, EXCERPT);
    if excerpt.is_empty() {
        " with an empty body".to_owned()
    } else {
        format!(" with a body that is not an OAuth answer: \"{excerpt}\"")
    }
}

/// `Retry-After` as delay-seconds or an HTTP-date (RFC 9110 §10.2.3).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// An error and its sources on one line (reqwest nests the useful part).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_matches_the_rfc_7636_example() {
        // RFC 7636 appendix B.
        let verifier = PkceVerifier::new("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
        assert_eq!(
            Pkce::challenge_of(&verifier),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let generated = Pkce::generate();
        assert_eq!(generated.verifier.expose().len(), 43);
        assert_ne!(
            generated.verifier.expose(),
            Pkce::generate().verifier.expose()
        );
    }

    #[test]
    fn basic_credentials_are_form_urlencoded_first() {
        let header = basic_authorization("id with:colon", &ClientSecret::new("s&e=c/r+t"));
        let encoded = header.strip_prefix("Basic ").expect("prefix");
        let decoded = String::from_utf8(STANDARD.decode(encoded).expect("base64")).expect("utf8");
        assert_eq!(decoded, "id+with%3Acolon:s%26e%3Dc%2Fr%2Bt");
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:29:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
    }
}
