//! The only code that speaks HTTP to providers.
//!
//! Grants: `authorization_code` (with or without PKCE), `refresh_token`,
//! `client_credentials`; revocation (RFC 7009). Client authentication by
//! HTTP Basic (id and secret form-urlencoded first, RFC 6749 §2.3.1) or in
//! the body. Bodies are form-urlencoded, `Accept: application/json`, with
//! connect and total timeouts, and redirects are never followed (a redirect
//! would resend credentials somewhere else). `post.rs` sends one request
//! and classifies its answer; `response.rs` parses answers; `error.rs`
//! sorts failures and scrubs secrets from what they say.
//!
//! Written on reqwest rather than the `oauth2` crate: that crate's error type
//! drops the HTTP status and `Retry-After` of 5xx/429 answers and cannot read
//! Bitbucket's `scopes`, string `expires_in`, or `invalid_request` "Invalid
//! refresh_token" — exactly what the daemon acts on.
//!
//! This module never stores anything and never decides when to refresh.

mod device;
mod discovery;
mod error;
mod post;
mod response;

pub use crate::text::sanitize;
pub use device::{DEFAULT_INTERVAL, DeviceAuthorization, parse_device_authorization};
pub use discovery::{Discovery, Endpoints, check as check_discovery, document_urls};
pub use error::{ErrorKind, OAuthError, classify};
pub use post::parse_retry_after;
pub use response::{
    DEFAULT_LIFETIME, ErrorResponse, MAX_LIFETIME, ParseError, TokenResponse, parse_error_response,
    parse_token_response, vschar_only,
};

use crate::config::Consumer;
use crate::secret::{AccessToken, AuthorizationCode, PkceVerifier, RefreshToken};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use post::Request;
use ring::rand::SecureRandom as _;
use std::time::Duration;
use url::Url;

/// How long requests to providers may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// To connect, for every request.
    pub connect: Duration,
    /// The whole of a request that does not use a refresh token.
    pub total: Duration,
    /// The whole of a request that uses a refresh token. Longer: with a
    /// provider that rotates refresh tokens, giving up on a request the
    /// provider is still working on can cost the grant (the provider
    /// rotates, the answer is never read).
    pub refresh: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(10),
            total: Duration::from_secs(30),
            refresh: Duration::from_secs(60),
        }
    }
}

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

/// The URL a human opens to authorize an installation: tokd's own
/// parameters, then the consumer's `auth_params` (a preset's included).
pub fn authorization_url(
    consumer: &Consumer,
    endpoints: &Endpoints,
    scopes: &[String],
    state: &str,
    pkce_challenge: Option<&str>,
    redirect_uri: Option<&Url>,
) -> Option<Url> {
    let mut url = endpoints.auth_url.clone()?;
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
        for (key, value) in &consumer.auth_params {
            query.append_pair(key, value);
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
    timeouts: Timeouts,
}

impl OAuthClient {
    /// A client with the default timeouts.
    pub fn new() -> Result<Self, OAuthError> {
        Self::with_timeouts(Timeouts::default())
    }

    pub fn with_timeouts(timeouts: Timeouts) -> Result<Self, OAuthError> {
        // reqwest is built without a TLS crypto provider of its own (that
        // would pull aws-lc-sys); ring is the process default. A second
        // install attempt fails harmlessly.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(timeouts.connect)
            .timeout(timeouts.total)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("tokd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| {
                OAuthError::new(
                    ErrorKind::Misconfigured,
                    format!(
                        "cannot build the HTTP client: {}",
                        crate::text::error_chain(&error)
                    ),
                )
            })?;
        Ok(Self { http, timeouts })
    }

    /// Exchanges an authorization code (once: codes are one-use).
    pub async fn exchange_code(
        &self,
        consumer: &Consumer,
        endpoints: &Endpoints,
        code: &AuthorizationCode,
        verifier: Option<&PkceVerifier>,
        redirect_uri: Option<&Url>,
    ) -> Result<TokenResponse, OAuthError> {
        let mut request = Request::token(consumer, endpoints, "authorization_code");
        request.secret_field("code", code.expose());
        if let Some(redirect_uri) = redirect_uri {
            request.field("redirect_uri", redirect_uri.as_str());
        }
        if let Some(verifier) = verifier {
            request.secret_field("code_verifier", verifier.expose());
        }
        self.token_request(consumer, endpoints, request).await
    }

    /// Uses a refresh token. The response may carry a new refresh token
    /// (rotation) or none (keep the old one). A failure whose outcome at the
    /// provider is unknown (a timeout after the request went out, an
    /// unreadable 2xx) is marked [`OAuthError::grant_at_risk`]: a provider
    /// that rotates may have used the refresh token up.
    pub async fn refresh(
        &self,
        consumer: &Consumer,
        endpoints: &Endpoints,
        refresh_token: &RefreshToken,
    ) -> Result<TokenResponse, OAuthError> {
        let mut request = Request::token(consumer, endpoints, "refresh_token");
        request.secret_field("refresh_token", refresh_token.expose());
        request.timeout(self.timeouts.refresh);
        self.token_request(consumer, endpoints, request)
            .await
            .map_err(|mut error| {
                error.grant_at_risk = error.outcome_unknown;
                error
            })
    }

    /// Requests a token with the consumer's own credentials.
    pub async fn client_credentials(
        &self,
        consumer: &Consumer,
        endpoints: &Endpoints,
        scopes: &[String],
    ) -> Result<TokenResponse, OAuthError> {
        let mut request = Request::token(consumer, endpoints, "client_credentials");
        if !scopes.is_empty() {
            request.field("scope", &scopes.join(" "));
        }
        self.token_request(consumer, endpoints, request).await
    }

    /// Revokes a token (RFC 7009). Fails with `Misconfigured` when the
    /// consumer has no `revoke_url`.
    pub async fn revoke(
        &self,
        consumer: &Consumer,
        endpoints: &Endpoints,
        token: RevocableToken<'_>,
    ) -> Result<(), OAuthError> {
        let Some(url) = endpoints.revoke_url.clone() else {
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
        let mut request = Request::new(url, "revocation endpoint");
        request.secret_field("token", value);
        request.field("token_type_hint", hint);
        // RFC 7009 §2.2: 200 whether or not the token was valid; `post`
        // returns Ok only for 2xx.
        self.post(consumer, endpoints, request).await?;
        Ok(())
    }

    /// A request to the token endpoint, its 2xx body parsed. A body that
    /// is not a usable token answer is never quoted: it may hold tokens the
    /// provider has just issued.
    async fn token_request(
        &self,
        consumer: &Consumer,
        endpoints: &Endpoints,
        request: Request,
    ) -> Result<TokenResponse, OAuthError> {
        let answer = self.post(consumer, endpoints, request).await?;
        parse_token_response(answer.body()).map_err(|error| {
            // A token tokd cannot use will not become usable by asking
            // again; anything else may be a passing fault.
            let kind = match error {
                ParseError::UnsupportedTokenType(_) => ErrorKind::Misconfigured,
                _ => ErrorKind::Transient,
            };
            let mut failure = OAuthError::new(
                kind,
                answer.scrub(&format!(
                    "token endpoint {} answered {} but {error}; the answer is not shown, since it may hold tokens",
                    post::describe(&endpoints.token_url),
                    answer.status,
                )),
            );
            failure.status = Some(answer.status);
            // The provider answered "yes": it may have rotated.
            failure.outcome_unknown = true;
            failure
        })
    }
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
}
