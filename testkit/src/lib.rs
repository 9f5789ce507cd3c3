//! Test support for tokd (never shipped): an OAuth 2.0 provider emulator.
//!
//! [`Emulator`] is a real HTTP server on 127.0.0.1 (port 0) that behaves like
//! the providers the README describes: Bitbucket's non-rotating refresh token and its
//! 2026 rotation with a grace window, WSO2's strict rotation and revocation
//! endpoint, SmartThings refusing JSON bodies, a `client_secret_post`-only
//! server. It checks PKCE, makes codes one-use, counts requests per grant,
//! injects faults (any status, HTML / empty / garbage bodies, delays,
//! `Retry-After`) and revokes grants on demand.
//!
//! Endpoints: `GET /authorize` (auto-approves and redirects, as a browser
//! would be sent back), `POST /token`, `POST /revoke`, `GET /api/user`
//! (answers 200 for a valid access token, 401 otherwise), and, once
//! [`Emulator::serve_git`] is called, `GET /git/...` (a git server that
//! takes the emulator's access tokens, see `git.rs`).

pub mod desktop;
pub mod generated;
mod git;
pub mod keyring;
pub mod kube;
pub mod oci;
pub mod registry;
mod served;
mod server;
pub mod smtp;

pub mod bus;

pub use bus::{Home, PrivateBus, Tokd, free_port};
pub use desktop::{Desktop, DesktopOptions, Notification};
pub use git::GitRequest;
pub use keyring::{GnomeKeyring, StoredItem};
pub use server::{Emulator, TokenChecker};

use std::time::Duration;

/// How the provider treats a refresh token after use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// The same refresh token comes back (Bitbucket classic).
    Never,
    /// A new one every time; the old one stays usable this long after its
    /// first use (Bitbucket 2026: about ten minutes).
    Grace(Duration),
    /// A new one every time; the old one dies at once (WSO2).
    Strict,
}

/// How client authentication must arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptedAuth {
    Basic,
    Post,
    Either,
}

/// What a dead refresh token gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadRefreshAnswer {
    /// `400 invalid_grant` (RFC 6749).
    InvalidGrant,
    /// Bitbucket: `400 invalid_request` "Invalid refresh_token".
    BitbucketInvalidRequest,
}

/// A provider's observable behaviour.
#[derive(Debug, Clone)]
pub struct Behaviour {
    pub name: &'static str,
    pub rotation: Rotation,
    /// `"scope"` or `"scopes"` (Bitbucket).
    pub scope_field: &'static str,
    /// Exactly as sent: `"bearer"`, `"Bearer"`.
    pub token_type: &'static str,
    pub access_lifetime: Duration,
    pub expires_in_as_string: bool,
    pub omit_expires_in: bool,
    /// Length of issued access and refresh tokens.
    pub token_length: usize,
    pub accepted_auth: AcceptedAuth,
    /// Status for a body that is not form-urlencoded (SmartThings: 401).
    pub non_form_status: u16,
    pub dead_refresh: DeadRefreshAnswer,
    /// Whether `POST /revoke` exists.
    pub revocation: bool,
    /// Sends this `expires_in` instead of the lifetime (a provider that
    /// writes 0, say); the token still lives `access_lifetime`.
    pub expires_in_sent: Option<i64>,
    /// What the authorization request must carry for the code to bring a
    /// refresh token: `(param, value)`, `("scope", s)` meaning the scopes
    /// include `s` (Google: access_type=offline and prompt=consent).
    pub offline_needs: &'static [(&'static str, &'static str)],
    /// What the authorization request must carry at all (Atlassian:
    /// audience=api.atlassian.com).
    pub required_auth_params: &'static [(&'static str, &'static str)],
    /// Device codes: the polling interval announced, and their life.
    pub device_interval: Duration,
    pub device_expires_in: Duration,
    /// Whether a rotation also kills the access tokens issued before it
    /// under the same grant (django-oauth-toolkit deletes the old access
    /// token the moment it rotates).
    pub revoke_access_on_rotation: bool,
    /// Whether the device endpoint wants `client_id` in the body even
    /// from a client that authenticates with HTTP Basic (oauthlib:
    /// `400 invalid_request` "Missing client_id parameter.").
    pub device_needs_client_id_in_body: bool,
    /// Whether a client-credentials answer carries a refresh token too
    /// (Keycloak before 12 did; RFC 6749 §4.4.3 says it should not).
    pub refresh_with_client_credentials: bool,
}

impl Behaviour {
    /// Bitbucket Cloud as it long was: the refresh token is not rotated.
    pub fn bitbucket_classic() -> Self {
        Self {
            name: "bitbucket-classic",
            rotation: Rotation::Never,
            scope_field: "scopes",
            token_type: "bearer",
            access_lifetime: Duration::from_secs(7200),
            expires_in_as_string: false,
            omit_expires_in: false,
            token_length: 120,
            accepted_auth: AcceptedAuth::Basic,
            non_form_status: 400,
            dead_refresh: DeadRefreshAnswer::BitbucketInvalidRequest,
            revocation: false,
            expires_in_sent: None,
            offline_needs: &[],
            required_auth_params: &[],
            device_interval: Duration::from_secs(5),
            device_expires_in: Duration::from_secs(600),
            revoke_access_on_rotation: false,
            device_needs_client_id_in_body: false,
            refresh_with_client_credentials: false,
        }
    }

    /// Bitbucket Cloud from 2026: rotation with a ten-minute grace window
    /// and tokens over 2,500 characters.
    pub fn bitbucket_2026() -> Self {
        Self {
            name: "bitbucket-2026",
            rotation: Rotation::Grace(Duration::from_secs(600)),
            token_length: 2600,
            ..Self::bitbucket_classic()
        }
    }

    /// WSO2 API Manager: strict rotation, a revocation endpoint.
    pub fn wso2() -> Self {
        Self {
            name: "wso2",
            rotation: Rotation::Strict,
            scope_field: "scope",
            token_type: "Bearer",
            access_lifetime: Duration::from_secs(3600),
            expires_in_as_string: false,
            omit_expires_in: false,
            token_length: 36,
            accepted_auth: AcceptedAuth::Basic,
            non_form_status: 400,
            dead_refresh: DeadRefreshAnswer::InvalidGrant,
            revocation: true,
            expires_in_sent: None,
            offline_needs: &[],
            required_auth_params: &[],
            device_interval: Duration::from_secs(5),
            device_expires_in: Duration::from_secs(600),
            revoke_access_on_rotation: false,
            device_needs_client_id_in_body: false,
            refresh_with_client_credentials: false,
        }
    }

    /// django-oauth-toolkit (oauthlib), widely deployed in Django
    /// projects: strict rotation that deletes the old access token with
    /// the old refresh token, and a device endpoint that wants
    /// `client_id` in the body whatever the client authentication.
    pub fn django_oauth_toolkit() -> Self {
        Self {
            name: "django-oauth-toolkit",
            rotation: Rotation::Strict,
            revoke_access_on_rotation: true,
            device_needs_client_id_in_body: true,
            refresh_with_client_credentials: false,
            ..Self::wso2()
        }
    }

    /// SmartThings: 24 h tokens, a JSON body gets 401.
    pub fn smartthings() -> Self {
        Self {
            name: "smartthings",
            rotation: Rotation::Strict,
            scope_field: "scope",
            token_type: "bearer",
            access_lifetime: Duration::from_secs(86_400),
            non_form_status: 401,
            token_length: 36,
            revocation: false,
            ..Self::wso2()
        }
    }

    /// Google: a refresh token only for an authorization with
    /// `access_type=offline` and `prompt=consent`; not rotated.
    pub fn google() -> Self {
        Self {
            name: "google",
            rotation: Rotation::Never,
            accepted_auth: AcceptedAuth::Either,
            access_lifetime: Duration::from_secs(3599),
            offline_needs: &[("access_type", "offline"), ("prompt", "consent")],
            ..Self::wso2()
        }
    }

    /// Atlassian Cloud 3LO: `audience` required, a refresh token only with
    /// the `offline_access` scope, rotated at every refresh.
    pub fn atlassian() -> Self {
        Self {
            name: "atlassian",
            rotation: Rotation::Strict,
            accepted_auth: AcceptedAuth::Either,
            offline_needs: &[("scope", "offline_access")],
            required_auth_params: &[("audience", "api.atlassian.com")],
            revocation: false,
            ..Self::wso2()
        }
    }

    /// A generic server that wants `client_secret_post` and sends
    /// `expires_in` as a string.
    pub fn post_only() -> Self {
        Self {
            name: "post-only",
            rotation: Rotation::Never,
            accepted_auth: AcceptedAuth::Post,
            expires_in_as_string: true,
            ..Self::wso2()
        }
    }
}

/// What a fault answers instead of the normal response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultBody {
    Html,
    Empty,
    Garbage,
    /// Raw text sent as `application/json`.
    Json(String),
    /// An empty body with this `Location` header.
    Redirect(String),
    /// An OAuth error whose description reflects the request as it came:
    /// the raw form body and the `Authorization` header (a proxy or a
    /// provider that echoes what it got).
    Echo,
}

/// How a fault mangles the provider's real (successful) answer: the tokens
/// in it are issued and, under rotation, the old refresh token is used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mangle {
    /// A UTF-8 byte order mark before the JSON.
    Bom,
    /// Bytes after the JSON object.
    TrailingBytes,
    /// The JSON inside an HTML page.
    HtmlWrapped,
    /// `"access_token": 12345`, the rest (refresh token included) intact.
    NumericAccessToken,
    /// The access token with a CR LF and a header line after it.
    HeaderInAccessToken,
    /// A `scope` with a window-title escape, a screen clear, an OSC 8
    /// link and a right-to-left override among the real scopes.
    HostileScope,
}

/// A fault injected into the next token (or revocation) request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// Wait this long before answering.
    pub delay: Duration,
    /// `None`: answer normally after the delay (a slow provider).
    pub answer: Option<(u16, FaultBody)>,
    pub retry_after: Option<String>,
    /// With no `answer`: the normal answer, mangled.
    pub mangle: Option<Mangle>,
}

impl Fault {
    pub fn status(status: u16, body: FaultBody) -> Self {
        Self {
            delay: Duration::ZERO,
            answer: Some((status, body)),
            retry_after: None,
            mangle: None,
        }
    }

    /// The real answer, with its tokens, mangled.
    pub fn mangled(mangle: Mangle) -> Self {
        Self {
            delay: Duration::ZERO,
            answer: None,
            retry_after: None,
            mangle: Some(mangle),
        }
    }

    /// A 302 to `location`, as a misconfigured URL or a captive portal gives.
    pub fn redirect(location: impl Into<String>) -> Self {
        Self::status(302, FaultBody::Redirect(location.into()))
    }

    pub fn slow(delay: Duration) -> Self {
        Self {
            delay,
            answer: None,
            retry_after: None,
            mangle: None,
        }
    }

    pub fn with_retry_after(mut self, value: impl Into<String>) -> Self {
        self.retry_after = Some(value.into());
        self
    }

    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// Requests seen by the token endpoint, by grant type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub authorization_code: u64,
    pub refresh_token: u64,
    pub client_credentials: u64,
    pub revoke: u64,
    /// Token requests refused before the grant was looked at (faults, bad
    /// client authentication, bad bodies).
    pub refused: u64,
    /// Device codes handed out, and token requests polling for one.
    pub device_codes: u64,
    pub device_polls: u64,
    /// Polls that came sooner than the interval asked for.
    pub device_polls_too_soon: u64,
    /// Discovery documents served.
    pub discovery: u64,
}

impl Counters {
    pub fn token_requests(&self) -> u64 {
        self.authorization_code
            + self.refresh_token
            + self.client_credentials
            + self.refused
            + self.device_polls
    }
}

/// Which discovery documents the emulator serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WellKnown {
    /// `/.well-known/oauth-authorization-server` (RFC 8414).
    pub rfc8414: bool,
    /// `/.well-known/openid-configuration`.
    pub openid: bool,
    /// An `issuer` other than the emulator's own address (a mismatch).
    pub issuer: Option<String>,
}

impl Default for WellKnown {
    fn default() -> Self {
        Self {
            rfc8414: true,
            openid: true,
            issuer: None,
        }
    }
}

/// How the last token request arrived, for checks of client authentication.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordedRequest {
    pub content_type: Option<String>,
    pub accept: Option<String>,
    /// Decoded `(client_id, client_secret)` from a Basic header.
    pub basic: Option<(String, String)>,
    pub form: Vec<(String, String)>,
    /// The `Authorization` header and the body, as they came.
    pub authorization: Option<String>,
    pub raw_body: String,
}

impl RecordedRequest {
    pub fn form_value(&self, key: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
    }

    /// The scopes the form's `scope` field asks for (none when absent).
    pub fn scopes(&self) -> Vec<String> {
        self.form_value("scope")
            .unwrap_or("")
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }
}
