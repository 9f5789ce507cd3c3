//! Parsing what token endpoints answer, tolerantly: `scope` or `scopes`
//! (string or list, space- or comma-separated), `token_type` in any case,
//! `expires_in` as a number, a numeric string or missing, unknown fields
//! ignored, JSON or (as GitHub can answer) a form-encoded body.
//!
//! Pure functions of bytes; no HTTP here.

use crate::secret::{AccessToken, RefreshToken};
use serde::Deserialize;
use serde_json::Value;
use std::time::{Duration, SystemTime};

/// The lifetime assumed when a provider sends no `expires_in` but the token
/// can be renewed (a refresh token came with it, or the grant is client
/// credentials): renewing hourly is cheap and safe.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);
/// The longest lifetime believed: a larger `expires_in` (up to 2^64 s from
/// a buggy or hostile provider) is taken as this, which also keeps the
/// expiry arithmetic from overflowing.
pub const MAX_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A successful token response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenResponse {
    pub access_token: AccessToken,
    /// Lowercased; `bearer` when the provider left it out.
    pub token_type: String,
    /// `None` when the provider sent no usable `expires_in`.
    pub expires_in: Option<Duration>,
    /// `None` when the response carries none (keep the old one).
    pub refresh_token: Option<RefreshToken>,
    /// `None` when the response names no scopes.
    pub scopes: Option<Vec<String>>,
}

impl TokenResponse {
    /// Wall-clock expiry of the access token received at `now`.
    ///
    /// With `expires_in`, that. Without it: [`DEFAULT_LIFETIME`] when the
    /// token can be renewed without a human (`renewable`); otherwise `None`,
    /// a token that does not expire (GitHub OAuth apps send neither a
    /// lifetime nor a refresh token, and their tokens live until revoked).
    pub fn expires_at(&self, now: SystemTime, renewable: bool) -> Option<SystemTime> {
        let lifetime = match (self.expires_in, renewable) {
            (Some(lifetime), _) => lifetime.min(MAX_LIFETIME),
            (None, true) => DEFAULT_LIFETIME,
            (None, false) => return None,
        };
        // `now` comes from the system clock, which could be absurd too.
        Some(now.checked_add(lifetime).unwrap_or(now))
    }
}

/// The fields of an RFC 6749 §5.2 error response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorResponse {
    pub error: Option<String>,
    pub error_description: Option<String>,
}

/// Why a 2xx body was not a usable token response. Never quotes the body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("the body is empty")]
    Empty,
    #[error("the body is not JSON ({0})")]
    NotJson(String),
    #[error("the response has no access_token")]
    NoAccessToken,
    #[error("the token type is {0:?}, and tokd serves only bearer tokens")]
    UnsupportedTokenType(String),
    /// A token with a byte outside RFC 6749's VSCHAR (printable ASCII):
    /// sent on, a CR or LF in it would inject a header.
    #[error("the {0} has characters no token may have (only printable ASCII is allowed)")]
    TokenCharacters(&'static str),
}

/// Whether `token` is made of RFC 6749's VSCHAR (%x20-7E) only (Appendix
/// A.12, A.17).
pub fn vschar_only(token: &str) -> bool {
    token.bytes().all(|byte| (0x20..=0x7e).contains(&byte))
}

#[derive(Deserialize, Default)]
struct RawTokenResponse {
    access_token: Option<Value>,
    token_type: Option<Value>,
    expires_in: Option<Value>,
    refresh_token: Option<Value>,
    scope: Option<Value>,
    scopes: Option<Value>,
}

fn as_text(value: Option<Value>) -> Option<String> {
    match value? {
        Value::String(text) if !text.is_empty() => Some(text),
        _ => None,
    }
}

/// `3600`, `3600.0`, `"3600"`; anything else (negative, garbage) is `None`,
/// and so is `0`: a token that expires as it is issued cannot be served,
/// and some servers write 0 for "no lifetime given".
fn parse_expires_in(value: Option<&Value>) -> Option<Duration> {
    let seconds = match value? {
        Value::Number(number) => number.as_u64().or_else(|| {
            number
                .as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .map(|f| f as u64)
        })?,
        Value::String(text) => text.trim().parse::<u64>().ok()?,
        _ => return None,
    };
    (seconds > 0).then(|| Duration::from_secs(seconds).min(MAX_LIFETIME))
}

fn parse_scopes(value: Option<&Value>) -> Option<Vec<String>> {
    // RFC 6749 §3.3: a scope is printable ASCII but space, `"` and `\`.
    // Anything else (an escape sequence, a bidi control) is not a scope
    // and is dropped: scopes are shown to users and sent over D-Bus.
    let scope_token = |scope: &&str| {
        !scope.is_empty()
            && scope
                .bytes()
                .all(|b| matches!(b, 0x21 | 0x23..=0x5b | 0x5d..=0x7e))
    };
    let split = |text: &str| -> Vec<String> {
        text.split(|c: char| c.is_whitespace() || c == ',')
            .filter(scope_token)
            .map(str::to_owned)
            .collect()
    };
    match value? {
        Value::String(text) => Some(split(text)),
        Value::Array(items) => Some(
            items
                .iter()
                .filter_map(Value::as_str)
                .flat_map(split)
                .collect(),
        ),
        _ => None,
    }
}

/// Reads a JSON object, or a form-encoded body, into string-keyed values.
pub(super) fn parse_object<T: for<'de> Deserialize<'de> + Default>(
    body: &[u8],
) -> Result<T, ParseError> {
    // Some servers put a UTF-8 byte order mark before the JSON.
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let trimmed = body.trim_ascii();
    if trimmed.is_empty() {
        return Err(ParseError::Empty);
    }
    if trimmed.first() == Some(&b'{') {
        return serde_json::from_slice(trimmed).map_err(|error| {
            ParseError::NotJson(format!("line {}, column {}", error.line(), error.column()))
        });
    }
    // GitHub answers `access_token=...&token_type=bearer` unless asked for
    // JSON; accept that shape too, but nothing that is not key=value pairs.
    let looks_like_form = trimmed
        .iter()
        .all(|b| b.is_ascii_graphic() && *b != b'<' && *b != b'{')
        && trimmed.contains(&b'=');
    if !looks_like_form {
        return Err(ParseError::NotJson("it is not an object".to_owned()));
    }
    let object: serde_json::Map<String, Value> = url::form_urlencoded::parse(trimmed)
        .map(|(key, value)| (key.into_owned(), Value::String(value.into_owned())))
        .collect();
    serde_json::from_value(Value::Object(object))
        .map_err(|_| ParseError::NotJson("unexpected form fields".to_owned()))
}

/// Parses a 2xx token response body.
pub fn parse_token_response(body: &[u8]) -> Result<TokenResponse, ParseError> {
    let raw: RawTokenResponse = parse_object(body)?;
    let expires_in = parse_expires_in(raw.expires_in.as_ref());
    let scopes = parse_scopes(raw.scope.as_ref()).or_else(|| parse_scopes(raw.scopes.as_ref()));
    let access_token = as_text(raw.access_token).ok_or(ParseError::NoAccessToken)?;
    if !vschar_only(&access_token) {
        return Err(ParseError::TokenCharacters("access token"));
    }
    let refresh_token = as_text(raw.refresh_token);
    if refresh_token
        .as_deref()
        .is_some_and(|token| !vschar_only(token))
    {
        return Err(ParseError::TokenCharacters("refresh token"));
    }
    // RFC 6750: `bearer` in any case; missing means bearer too. Anything
    // else (a MAC or DPoP token, a provider's "N/A") cannot be sent as
    // `Authorization: Bearer`.
    let token_type = match as_text(raw.token_type) {
        None => "bearer".to_owned(),
        Some(text) if text.eq_ignore_ascii_case("bearer") => "bearer".to_owned(),
        Some(text) => {
            return Err(ParseError::UnsupportedTokenType(crate::text::sanitize(
                &text, 40,
            )));
        }
    };
    Ok(TokenResponse {
        access_token: AccessToken::new(access_token),
        token_type,
        expires_in,
        refresh_token: refresh_token.map(RefreshToken::new),
        scopes,
    })
}

#[derive(Deserialize, Default)]
struct RawErrorResponse {
    error: Option<Value>,
    error_description: Option<Value>,
}

/// Parses an error body; `None` when it is not an RFC 6749 error object.
pub fn parse_error_response(body: &[u8]) -> Option<ErrorResponse> {
    let raw: RawErrorResponse = parse_object(body).ok()?;
    let error = as_text(raw.error);
    let error_description = as_text(raw.error_description);
    if error.is_none() && error_description.is_none() {
        return None;
    }
    Some(ErrorResponse {
        error,
        error_description,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> TokenResponse {
        parse_token_response(body.as_bytes()).expect("should parse")
    }

    /// Found by the `token_response` fuzz target: an `expires_in` near
    /// 2^64 made the expiry overflow and panic.
    #[test]
    fn an_absurd_lifetime_is_capped_instead_of_overflowing() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        for body in [
            r#"{"access_token": "a", "expires_in": "18446744073709551615"}"#,
            r#"{"access_token": "a", "expires_in": 18446744073709551615}"#,
            r#"{"access_token": "a", "expires_in": 1e300}"#,
        ] {
            let response = parse(body);
            assert_eq!(response.expires_in, Some(MAX_LIFETIME), "{body}");
            assert_eq!(response.expires_at(now, true), Some(now + MAX_LIFETIME));
        }
    }

    #[test]
    fn bitbucket_shape() {
        // As documented by Bitbucket Cloud: `scopes`, lowercase `bearer`.
        let response = parse(
            r#"{"access_token": "AT", "scopes": "repository pullrequest", "token_type": "bearer",
                "expires_in": 7200, "state": "authorization_code", "refresh_token": "RT"}"#,
        );
        assert_eq!(response.access_token.expose(), "AT");
        assert_eq!(
            response.refresh_token.as_ref().map(RefreshToken::expose),
            Some("RT")
        );
        assert_eq!(response.token_type, "bearer");
        assert_eq!(response.expires_in, Some(Duration::from_secs(7200)));
        assert_eq!(
            response.scopes,
            Some(vec!["repository".to_owned(), "pullrequest".to_owned()])
        );
    }

    #[test]
    fn wso2_shape() {
        let response = parse(
            r#"{"access_token":"AT","refresh_token":"RT2","scope":"default openid",
                "token_type":"Bearer","expires_in":3600}"#,
        );
        assert_eq!(response.token_type, "bearer");
        assert_eq!(
            response.scopes,
            Some(vec!["default".to_owned(), "openid".to_owned()])
        );
    }

    #[test]
    fn smartthings_shape() {
        let response = parse(
            r#"{"access_token":"AT","token_type":"bearer","refresh_token":"RT","expires_in":86399,
                "scope":"r:devices:* x:devices:*","access_tier":0,"installed_app_id":"abc"}"#,
        );
        assert_eq!(response.expires_in, Some(Duration::from_secs(86399)));
        assert_eq!(response.scopes.as_ref().map(Vec::len), Some(2));
    }

    #[test]
    fn github_form_shape_and_comma_scopes() {
        let response = parse(
            "access_token=gho_16C7e42F292c6912E7710c838347Ae178B4a&scope=repo%2Cgist&token_type=bearer",
        );
        assert_eq!(
            response.access_token.expose(),
            "gho_16C7e42F292c6912E7710c838347Ae178B4a"
        );
        assert_eq!(
            response.scopes,
            Some(vec!["repo".to_owned(), "gist".to_owned()])
        );
        assert_eq!(response.expires_in, None);
        assert_eq!(response.refresh_token, None);
    }

    #[test]
    fn expires_in_every_form() {
        for (value, expected) in [
            ("3600", Some(3600)),
            ("\"3600\"", Some(3600)),
            ("\" 60 \"", Some(60)),
            ("3600.7", Some(3600)),
            ("0", None),
            ("\"0\"", None),
            ("-5", None),
            ("\"soon\"", None),
            ("null", None),
            ("true", None),
        ] {
            let response = parse(&format!(r#"{{"access_token":"A","expires_in":{value}}}"#));
            assert_eq!(
                response.expires_in,
                expected.map(Duration::from_secs),
                "expires_in = {value}"
            );
        }
        assert_eq!(parse(r#"{"access_token":"A"}"#).expires_in, None);
    }

    #[test]
    fn missing_expires_in_has_a_documented_default() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let with = parse(r#"{"access_token":"A","expires_in":"120"}"#);
        assert_eq!(
            with.expires_at(now, false),
            Some(now + Duration::from_secs(120))
        );
        let without = parse(r#"{"access_token":"A"}"#);
        assert_eq!(without.expires_at(now, true), Some(now + DEFAULT_LIFETIME));
        assert_eq!(
            without.expires_at(now, false),
            None,
            "GitHub-style non-expiring token"
        );
    }

    #[test]
    fn tokens_outside_printable_ascii_are_refused() {
        for (body, which) in [
            (r#"{"access_token":"A\r\nX-Injected: 1"}"#, "access token"),
            (r#"{"access_token":"A\u0000B"}"#, "access token"),
            (r#"{"access_token":"caf\u00e9"}"#, "access token"),
            (r#"{"access_token":"A\u007f"}"#, "access token"),
            (
                r#"{"access_token":"A","refresh_token":"R\nX"}"#,
                "refresh token",
            ),
            (
                r#"{"access_token":"A","refresh_token":"R\u2028"}"#,
                "refresh token",
            ),
        ] {
            let error = parse_token_response(body.as_bytes()).expect_err(body);
            assert_eq!(error, ParseError::TokenCharacters(which), "{body}");
        }
        // The whole of VSCHAR is fine, space and `~` included.
        let all: String = (0x20u8..=0x7e).map(char::from).collect();
        let body = serde_json::json!({ "access_token": all, "refresh_token": all }).to_string();
        let response = parse_token_response(body.as_bytes()).expect("parsed");
        assert_eq!(response.access_token.expose(), all);
    }

    #[test]
    fn token_type_bearer_in_any_case_or_missing_and_nothing_else() {
        for given in ["\"BEARER\"", "\"Bearer\"", "\"bearer\""] {
            let response = parse(&format!(r#"{{"access_token":"A","token_type":{given}}}"#));
            assert_eq!(response.token_type, "bearer");
        }
        assert_eq!(parse(r#"{"access_token":"A"}"#).token_type, "bearer");
        for (given, shown) in [("\"N/A\"", "N/A"), ("\"mac\"", "mac"), ("\"DPoP\"", "DPoP")] {
            let body = format!(r#"{{"access_token":"A","token_type":{given}}}"#);
            assert_eq!(
                parse_token_response(body.as_bytes()),
                Err(ParseError::UnsupportedTokenType(shown.to_owned()))
            );
        }
    }

    #[test]
    fn a_byte_order_mark_before_the_json_is_skipped() {
        let response = parse("\u{feff}{\"access_token\":\"A\",\"expires_in\":60}");
        assert_eq!(response.access_token.expose(), "A");
        assert_eq!(response.expires_in, Some(Duration::from_secs(60)));
    }

    #[test]
    fn scope_list_and_precedence() {
        let response = parse(r#"{"access_token":"A","scope":["a","b c"],"scopes":"ignored"}"#);
        assert_eq!(
            response.scopes,
            Some(vec!["a".to_owned(), "b".to_owned(), "c".to_owned()])
        );
        assert_eq!(parse(r#"{"access_token":"A"}"#).scopes, None);
    }

    #[test]
    fn empty_refresh_token_is_none() {
        assert_eq!(
            parse(r#"{"access_token":"A","refresh_token":""}"#).refresh_token,
            None
        );
        assert_eq!(
            parse(r#"{"access_token":"A","refresh_token":null}"#).refresh_token,
            None
        );
    }

    #[test]
    fn tokens_of_several_kilobytes() {
        let long = "x".repeat(8 * 1024);
        let response = parse(&format!(
            r#"{{"access_token":"{long}","refresh_token":"{long}"}}"#
        ));
        assert_eq!(response.access_token.expose().len(), 8 * 1024);
    }

    #[test]
    fn unusable_bodies() {
        assert_eq!(parse_token_response(b""), Err(ParseError::Empty));
        assert_eq!(parse_token_response(b" \n"), Err(ParseError::Empty));
        assert!(matches!(
            parse_token_response(b"<html><body>Bad Gateway</body></html>"),
            Err(ParseError::NotJson(_))
        ));
        assert!(matches!(
            parse_token_response(b"{\"access_token\": "),
            Err(ParseError::NotJson(_))
        ));
        assert!(matches!(
            parse_token_response(b"\x00\xff\xfe"),
            Err(ParseError::NotJson(_))
        ));
        assert_eq!(parse_token_response(b"{}"), Err(ParseError::NoAccessToken));
        assert_eq!(
            parse_token_response(br#"{"access_token": ""}"#),
            Err(ParseError::NoAccessToken)
        );
        assert_eq!(
            parse_token_response(br#"{"access_token": 42}"#),
            Err(ParseError::NoAccessToken)
        );
    }

    #[test]
    fn parse_errors_never_quote_the_body() {
        let body = br#"{"access_token": "SECRET-VALUE" "#;
        let error = parse_token_response(body).expect_err("truncated");
        assert!(!error.to_string().contains("SECRET"), "{error}");
    }

    #[test]
    fn error_responses() {
        let bitbucket = parse_error_response(
            br#"{"error_description": "Invalid refresh_token", "error": "invalid_request"}"#,
        )
        .expect("parses");
        assert_eq!(bitbucket.error.as_deref(), Some("invalid_request"));
        assert_eq!(
            bitbucket.error_description.as_deref(),
            Some("Invalid refresh_token")
        );
        let form = parse_error_response(
            b"error=bad_verification_code&error_description=The+code+passed+is+incorrect",
        )
        .expect("form");
        assert_eq!(form.error.as_deref(), Some("bad_verification_code"));
        assert_eq!(
            form.error_description.as_deref(),
            Some("The code passed is incorrect")
        );
        assert_eq!(parse_error_response(b"<html>502</html>"), None);
        assert_eq!(parse_error_response(b""), None);
        assert_eq!(parse_error_response(br#"{"message": "nope"}"#), None);
        assert_eq!(parse_error_response(br#"{"error": {"code": 5}}"#), None);
    }
}
