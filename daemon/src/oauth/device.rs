//! The device authorization grant (RFC 8628): a code the user enters on
//! another device, and the polling of the token endpoint until they do.

use super::discovery::Endpoints;
use super::error::{ErrorKind, OAuthError};
use super::post::Request;
use super::response::parse_object;
use super::{OAuthClient, TokenResponse};
use crate::config::Consumer;
use crate::secret::DeviceCode;
use crate::text::sanitize;
use serde::Deserialize;
use serde_json::Value;
use std::time::Duration;
use url::Url;

/// The grant type of a device token request.
pub const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// The polling interval when the provider names none (RFC 8628 §3.2).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// The code's life when the provider names none.
const DEFAULT_EXPIRY: Duration = Duration::from_secs(600);
/// The longest code life believed.
const MAX_EXPIRY: Duration = Duration::from_secs(3600);

/// What the device endpoint answered.
#[derive(Debug, Clone)]
pub struct DeviceAuthorization {
    pub device_code: DeviceCode,
    /// What the user types.
    pub user_code: String,
    /// Where the user goes.
    pub verification_uri: Url,
    /// The same with the code in it, when the provider gives one.
    pub verification_uri_complete: Option<Url>,
    pub expires_in: Duration,
    pub interval: Duration,
}

#[derive(Deserialize, Default)]
struct RawDeviceAuthorization {
    device_code: Option<Value>,
    user_code: Option<Value>,
    verification_uri: Option<Value>,
    /// Google's name for it.
    verification_url: Option<Value>,
    verification_uri_complete: Option<Value>,
    expires_in: Option<Value>,
    interval: Option<Value>,
}

impl OAuthClient {
    /// Asks the device endpoint for a code.
    pub async fn device_authorization(
        &self,
        consumer: &Consumer,
        endpoints: &Endpoints,
        scopes: &[String],
    ) -> Result<DeviceAuthorization, OAuthError> {
        let Some(url) = endpoints.device_url.clone() else {
            return Err(OAuthError::new(
                ErrorKind::Misconfigured,
                format!(
                    "consumer `{}` has no device_url; add it (or an issuer or a preset that has one), or log in with the browser",
                    consumer.name
                ),
            ));
        };
        let mut request = Request::new(url.clone(), "device endpoint");
        request.client_id_in_body();
        if !scopes.is_empty() {
            request.field("scope", &scopes.join(" "));
        }
        let answer = self.post(consumer, endpoints, request).await?;
        parse_device_authorization(answer.body()).map_err(|why| {
            let mut error = OAuthError::new(
                ErrorKind::Transient,
                format!(
                    "device endpoint {} answered {} but {why}",
                    super::post::describe(&url),
                    answer.status
                ),
            );
            error.status = Some(answer.status);
            error
        })
    }

    /// Asks the token endpoint whether the user has approved the code.
    /// Until they do it fails with `authorization_pending` (or
    /// `slow_down`), which the caller reads from [`OAuthError::error`].
    pub async fn device_token(
        &self,
        consumer: &Consumer,
        endpoints: &Endpoints,
        device_code: &DeviceCode,
    ) -> Result<TokenResponse, OAuthError> {
        let mut request = Request::token(consumer, endpoints, DEVICE_GRANT);
        request.secret_field("device_code", device_code.expose());
        self.token_request(consumer, endpoints, request).await
    }
}

/// Parses a device authorization answer. Never quotes the body (the device
/// code is in it).
pub fn parse_device_authorization(body: &[u8]) -> Result<DeviceAuthorization, String> {
    let raw: RawDeviceAuthorization = parse_object(body).map_err(|error| error.to_string())?;
    let text = |value: Option<Value>| match value {
        Some(Value::String(text)) if !text.is_empty() => Some(text),
        _ => None,
    };
    let seconds = |value: Option<Value>| match value {
        Some(Value::Number(number)) => number.as_u64(),
        Some(Value::String(text)) => text.trim().parse().ok(),
        _ => None,
    };
    let web = |value: Option<Value>| {
        text(value)
            .and_then(|text| Url::parse(&text).ok())
            .filter(|url| matches!(url.scheme(), "https" | "http"))
    };
    // `https://accounts.google.com@evil.example/` shows one host and opens
    // another: an address with a user part is refused.
    let userinfo = |url: &Option<Url>| {
        url.as_ref()
            .is_some_and(|url| !url.username().is_empty() || url.password().is_some())
    };
    let (plain, complete) = (
        web(raw.verification_uri.clone()).or_else(|| web(raw.verification_url.clone())),
        web(raw.verification_uri_complete.clone()),
    );
    if userinfo(&plain) || userinfo(&complete) {
        return Err(
            "the verification_uri has a user part before an `@`, which makes an address look like another's; refused"
                .to_owned(),
        );
    }
    let device_code = text(raw.device_code).ok_or("the answer has no device_code")?;
    let user_code = text(raw.user_code).ok_or("the answer has no user_code")?;
    let verification_uri = plain.ok_or("the answer has no usable verification_uri")?;
    Ok(DeviceAuthorization {
        device_code: DeviceCode::new(device_code),
        user_code: sanitize(&user_code, 64),
        verification_uri,
        verification_uri_complete: complete,
        expires_in: seconds(raw.expires_in)
            .filter(|s| *s > 0)
            .map_or(DEFAULT_EXPIRY, Duration::from_secs)
            .min(MAX_EXPIRY),
        interval: seconds(raw.interval)
            .filter(|s| *s > 0)
            .map_or(DEFAULT_INTERVAL, |s| Duration::from_secs(s.min(60))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_answer_with_and_without_the_optional_fields() {
        let full = parse_device_authorization(
            br#"{"device_code":"D","user_code":"WDJB-MJHT","verification_uri":"https://example.com/device",
                "verification_uri_complete":"https://example.com/device?user_code=WDJB-MJHT","expires_in":1800,"interval":5}"#,
        )
        .expect("parses");
        assert_eq!(full.user_code, "WDJB-MJHT");
        assert_eq!(full.device_code.expose(), "D");
        assert_eq!(full.expires_in, Duration::from_secs(1800));
        assert!(full.verification_uri_complete.is_some());
        // Google: `verification_url`, no interval.
        let google = parse_device_authorization(
            br#"{"device_code":"D","user_code":"ABC","verification_url":"https://www.google.com/device","expires_in":"1800"}"#,
        )
        .expect("parses");
        assert_eq!(
            google.verification_uri.as_str(),
            "https://www.google.com/device"
        );
        assert_eq!(google.interval, DEFAULT_INTERVAL);
        assert!(google.verification_uri_complete.is_none());
    }

    #[test]
    fn an_unusable_device_answer_is_refused_without_quoting_it() {
        let error = parse_device_authorization(br#"{"device_code":"SECRET-D","user_code":"U"}"#)
            .expect_err("no verification_uri");
        assert!(!error.contains("SECRET"), "{error}");
        let hostile = parse_device_authorization(
            br#"{"device_code":"D","user_code":"A\u001b[2JB","verification_uri":"javascript:alert(1)"}"#,
        );
        assert!(hostile.is_err(), "not a web address");
        let escaped = parse_device_authorization(
            br#"{"device_code":"D","user_code":"A\u001b[2JB","verification_uri":"https://x.example/"}"#,
        )
        .expect("parses");
        assert!(
            !escaped.user_code.contains('\u{1b}'),
            "{:?}",
            escaped.user_code
        );
        for field in [
            "verification_uri",
            "verification_url",
            "verification_uri_complete",
        ] {
            let mut body = serde_json::json!({
                "device_code": "D", "user_code": "U",
                "verification_uri": "https://accounts.example.com/device",
            });
            if field == "verification_url" {
                // Google's older name, read when the standard one is absent.
                body.as_object_mut()
                    .expect("object")
                    .remove("verification_uri");
            }
            body[field] = "https://accounts.google.com@127.0.0.1:8080/device".into();
            let error =
                parse_device_authorization(body.to_string().as_bytes()).expect_err("a user part");
            assert!(error.contains("user part"), "{field}: {error}");
        }
    }
}
