//! What went wrong talking to a provider, sorted into the kinds the daemon
//! acts on. Messages keep the provider's `error`, `error_description` and
//! HTTP status, and are scrubbed of every secret the request carried.

use std::fmt;
use std::time::Duration;
use zeroize::Zeroizing;

/// What the daemon does about a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The grant is gone (`invalid_grant`, Bitbucket's `invalid_request`
    /// "Invalid refresh_token"): a human must log in again. Never retried.
    NeedsLogin,
    /// The consumer's configuration is wrong (`invalid_client`,
    /// `unauthorized_client`, `unsupported_grant_type`, `invalid_scope`, any
    /// other OAuth `error`). Not retried until the config changes.
    Misconfigured,
    /// Connect errors, timeouts, 5xx, 429, unreadable 2xx bodies, and 3xx or
    /// 4xx answers that carry no OAuth `error` (a proxy's page): retry with
    /// backoff, keep serving the held token.
    Transient,
}

/// Sorts a provider's answer into a kind.
///
/// Server trouble wins over the error code: a 503 that says `invalid_grant`
/// is not proof that the grant is gone, and declaring a grant dead wrongly
/// costs a human login, while retrying wrongly costs a request. For the
/// same reason only an OAuth `error` makes a failure permanent: a 403 page
/// from a CDN or a captive portal's redirect is retried (slowly, see
/// `post.rs`).
pub fn classify(status: u16, error: Option<&str>, description: Option<&str>) -> ErrorKind {
    if status >= 500 || status == 429 || status == 408 {
        return ErrorKind::Transient;
    }
    match error {
        Some("invalid_grant" | "invalid_token") => ErrorKind::NeedsLogin,
        Some("invalid_request") if description.is_some_and(names_a_dead_refresh_token) => {
            ErrorKind::NeedsLogin
        }
        Some("temporarily_unavailable" | "server_error" | "slow_down") => ErrorKind::Transient,
        // No OAuth answer at all: not proof of anything.
        None => ErrorKind::Transient,
        // invalid_client, unauthorized_client, unsupported_grant_type,
        // invalid_scope, invalid_request, access_denied, anything unknown:
        // retrying the same request will not help.
        Some(_) if (200..300).contains(&status) => ErrorKind::Transient,
        Some(_) => ErrorKind::Misconfigured,
    }
}

/// Bitbucket answers a revoked or unknown refresh token with
/// `invalid_request` and the description "Invalid refresh_token".
fn names_a_dead_refresh_token(description: &str) -> bool {
    let lower = description.to_ascii_lowercase();
    lower.contains("invalid refresh_token") || lower.contains("invalid refresh token")
}

/// A failed request to a provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    pub kind: ErrorKind,
    /// The HTTP status, when the provider answered.
    pub status: Option<u16>,
    /// The provider's `error` code, when it sent one.
    pub error: Option<String>,
    /// The provider's `error_description`, sanitized.
    pub description: Option<String>,
    /// From a `Retry-After` header, or the least wait tokd chose (after an
    /// answer that is not OAuth's).
    pub retry_after: Option<Duration>,
    /// One sentence saying what failed, scrubbed of secrets.
    pub message: String,
    /// The request may have reached the provider and been acted on, but no
    /// usable answer came back (a timeout after sending, a cut or
    /// unreadable answer).
    pub outcome_unknown: bool,
    /// Set on a refresh whose outcome is unknown: a provider that rotates
    /// refresh tokens may have used this one up, so the grant may be lost.
    pub grant_at_risk: bool,
}

impl fmt::Display for OAuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for OAuthError {}

impl OAuthError {
    pub(crate) fn new(kind: ErrorKind, message: String) -> Self {
        Self {
            kind,
            status: None,
            error: None,
            description: None,
            retry_after: None,
            message,
            outcome_unknown: false,
            grant_at_risk: false,
        }
    }

    pub fn is_transient(&self) -> bool {
        self.kind == ErrorKind::Transient
    }
}

/// Every form in which a request's secrets could come back in an answer
/// (a provider or proxy that reflects the request): as sent, form- and
/// percent-encoded, JSON-escaped, and the `Authorization: Basic` value.
/// Holds secrets, so it zeroizes them when dropped and never prints them.
#[derive(Default)]
pub(crate) struct Scrubber {
    forms: Vec<Zeroizing<String>>,
}

impl std::fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scrubber({} forms)", self.forms.len())
    }
}

impl Scrubber {
    /// Adds `secret` in every form. Very short values would redact ordinary
    /// words; real secrets are long.
    pub fn add(&mut self, secret: &str) {
        if secret.len() < 4 {
            return;
        }
        let forms = [
            secret.to_owned(),
            url::form_urlencoded::byte_serialize(secret.as_bytes()).collect(),
            percent_encoded(secret, false),
            percent_encoded(secret, true),
            secret.replace('/', "\\/"),
        ];
        for form in forms {
            if !self.forms.iter().any(|known| **known == form) {
                self.forms.push(Zeroizing::new(form));
            }
        }
        // Longest first, so that a form containing another is replaced whole.
        self.forms.sort_by_key(|form| std::cmp::Reverse(form.len()));
    }

    /// `text` with every form of every secret replaced by `[redacted]`.
    pub fn scrub(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for form in &self.forms {
            if text.contains(form.as_str()) {
                text = text.replace(form.as_str(), "[redacted]");
            }
        }
        text
    }
}

/// RFC 3986 percent-encoding of everything but unreserved characters.
fn percent_encoded(text: &str, lowercase: bool) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else if lowercase {
            out.push_str(&format!("%{byte:02x}"));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ErrorKind::*;

    #[test]
    fn the_classification_table() {
        let cases: &[(u16, Option<&str>, Option<&str>, ErrorKind)] = &[
            // A lost authorization.
            (400, Some("invalid_grant"), None, NeedsLogin),
            (
                400,
                Some("invalid_grant"),
                Some("The specified code is not valid."),
                NeedsLogin,
            ),
            (401, Some("invalid_token"), None, NeedsLogin),
            // Bitbucket after a scope change.
            (
                400,
                Some("invalid_request"),
                Some("Invalid refresh_token"),
                NeedsLogin,
            ),
            (
                400,
                Some("invalid_request"),
                Some("invalid refresh token"),
                NeedsLogin,
            ),
            // A malformed request is our configuration's fault.
            (
                400,
                Some("invalid_request"),
                Some("Missing redirect_uri"),
                Misconfigured,
            ),
            (401, Some("invalid_client"), None, Misconfigured),
            (400, Some("unauthorized_client"), None, Misconfigured),
            (400, Some("unsupported_grant_type"), None, Misconfigured),
            (400, Some("invalid_scope"), None, Misconfigured),
            (403, Some("access_denied"), None, Misconfigured),
            // No OAuth error: a proxy's or CDN's page, a captive portal.
            (401, None, None, Transient),
            (403, None, None, Transient),
            (404, None, None, Transient),
            (302, None, None, Transient),
            (400, None, Some("something"), Transient),
            // Server trouble, whatever the body says.
            (500, None, None, Transient),
            (502, None, None, Transient),
            (503, Some("invalid_grant"), None, Transient),
            (504, None, None, Transient),
            (429, None, None, Transient),
            (
                429,
                Some("invalid_request"),
                Some("Invalid refresh_token"),
                Transient,
            ),
            (408, None, None, Transient),
            (400, Some("temporarily_unavailable"), None, Transient),
            (400, Some("server_error"), None, Transient),
            // A 200 whose body could not be used.
            (200, None, None, Transient),
        ];
        for (status, error, description, expected) in cases {
            assert_eq!(
                classify(*status, *error, *description),
                *expected,
                "{status} {error:?} {description:?}"
            );
        }
    }

    #[test]
    fn every_form_of_a_secret_is_scrubbed() {
        let mut scrubber = Scrubber::default();
        scrubber.add("s3cr/t+value=");
        scrubber.add("zz");
        for (text, shown) in [
            ("raw s3cr/t+value= here", "raw [redacted] here"),
            ("form s3cr%2Ft%2Bvalue%3D here", "form [redacted] here"),
            ("lower s3cr%2ft%2bvalue%3d here", "lower [redacted] here"),
            ("json s3cr\\/t+value= here", "json [redacted] here"),
            ("short zz stays", "short zz stays"),
        ] {
            assert_eq!(scrubber.scrub(text), shown, "{text}");
        }
        assert!(!format!("{scrubber:?}").contains("s3cr"));
    }
}
