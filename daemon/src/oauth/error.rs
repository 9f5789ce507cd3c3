//! What went wrong talking to a provider, sorted into the kinds the daemon
//! acts on. Messages keep the provider's `error`, `error_description` and
//! HTTP status, and are scrubbed of every secret the request carried.

use std::fmt;
use std::time::Duration;

/// What the daemon does about a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The grant is gone (`invalid_grant`, Bitbucket's `invalid_request`
    /// "Invalid refresh_token"): a human must log in again. Never retried.
    NeedsLogin,
    /// The consumer's configuration is wrong (`invalid_client`,
    /// `unauthorized_client`, `unsupported_grant_type`, `invalid_scope`, any
    /// other 4xx). Not retried until the config changes.
    Misconfigured,
    /// Connect errors, timeouts, 5xx, 429, unreadable 2xx bodies: retry with
    /// backoff, keep serving the held token.
    Transient,
}

/// Sorts a provider's answer into a kind.
///
/// Server trouble wins over the error code: a 503 that says `invalid_grant`
/// is not proof that the grant is gone, and declaring a grant dead wrongly
/// costs a human login, while retrying wrongly costs a request.
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
        // invalid_client, unauthorized_client, unsupported_grant_type,
        // invalid_scope, invalid_request, access_denied, anything unknown:
        // retrying the same request will not help.
        _ if (200..300).contains(&status) => ErrorKind::Transient,
        _ => ErrorKind::Misconfigured,
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
    /// From a `Retry-After` header.
    pub retry_after: Option<Duration>,
    /// One sentence saying what failed, scrubbed of secrets.
    pub message: String,
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
        }
    }

    pub fn is_transient(&self) -> bool {
        self.kind == ErrorKind::Transient
    }
}

/// Makes provider text safe to show: no control characters, no markup,
/// at most `limit` characters.
pub fn sanitize(text: &str, limit: usize) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    let mut last_space = true;
    for c in text.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                if !last_space {
                    out.push(' ');
                    last_space = true;
                }
            }
            _ if in_tag => {}
            c if c.is_whitespace() || c.is_control() => {
                if !last_space {
                    out.push(' ');
                    last_space = true;
                }
            }
            c => {
                out.push(c);
                last_space = false;
            }
        }
    }
    let trimmed = out.trim();
    if trimmed.chars().count() > limit {
        let cut: String = trimmed.chars().take(limit).collect();
        format!("{}…", cut.trim_end())
    } else {
        trimmed.to_owned()
    }
}

/// Replaces every occurrence of the given secrets with `[redacted]`.
pub(crate) fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut text = text.to_owned();
    for secret in secrets {
        // Very short values would redact ordinary words; real secrets are long.
        if secret.len() >= 4 && text.contains(secret) {
            text = text.replace(secret, "[redacted]");
        }
    }
    text
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
            (401, None, None, Misconfigured),
            (403, None, None, Misconfigured),
            (404, None, None, Misconfigured),
            (302, None, None, Misconfigured),
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
    fn sanitize_strips_markup_and_control_characters() {
        assert_eq!(
            sanitize(
                "<html><head><title>502 Bad Gateway</title></head>\n<body>nginx</body></html>",
                80
            ),
            "502 Bad Gateway nginx"
        );
        assert_eq!(sanitize("a\u{1b}[31mred\r\nline", 80), "a [31mred line");
        assert_eq!(
            sanitize(&"x".repeat(300), 10),
            format!("{}…", "x".repeat(10))
        );
        assert_eq!(sanitize("   ", 10), "");
    }

    #[test]
    fn scrub_removes_secrets() {
        assert_eq!(
            scrub("bad token abcdef123 here", &["abcdef123", "zz"]),
            "bad token [redacted] here"
        );
        assert_eq!(scrub("a b", &["a"]), "a b");
    }
}
