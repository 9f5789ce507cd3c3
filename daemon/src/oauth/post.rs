//! One form POST to a provider: client authentication, the answer read
//! with a size cap, and a failure classified and told without a secret.

use super::error::{ErrorKind, OAuthError, Scrubber, classify};
use super::{OAuthClient, discovery::Endpoints, response::parse_error_response};
use crate::config::ClientSecretError;
use crate::config::{ClientAuth, Consumer};
use crate::secret::ClientSecret;
use crate::text::sanitize;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use std::time::{Duration, SystemTime};
use url::Url;
use zeroize::Zeroizing;

/// Bodies larger than this are cut off: no token response is this big.
const MAX_BODY: usize = 1024 * 1024;
/// How much of an unusable error body is quoted in a message.
const EXCERPT: usize = 120;
/// The least wait before retrying after an answer that is not OAuth's (a
/// 3xx or 4xx without an `error`): likely a proxy, a firewall or a captive
/// portal, which will not change in seconds, but is not proof that the
/// grant or the client is bad.
pub const NOT_OAUTH_RETRY: Duration = Duration::from_secs(15 * 60);

/// A request about to be sent: where, its form fields, and every secret it
/// carries (for scrubbing what comes back).
#[derive(Debug)]
pub(super) struct Request {
    url: Url,
    what: &'static str,
    fields: Vec<(Key, Zeroizing<String>)>,
    scrubber: Scrubber,
    timeout: Option<Duration>,
    /// `client_id` goes in the body whatever the client authentication.
    client_id_in_body: bool,
}

impl Request {
    pub fn new(url: Url, what: &'static str) -> Self {
        Self {
            url,
            what,
            fields: Vec::new(),
            scrubber: Scrubber::default(),
            timeout: None,
            client_id_in_body: false,
        }
    }

    /// Names the client with `client_id` in the body also when it
    /// authenticates with HTTP Basic (the device authorization request:
    /// RFC 8628 §3.1 asks for it, and oauthlib-based servers such as
    /// django-oauth-toolkit refuse the request without it even under
    /// Basic).
    pub fn client_id_in_body(&mut self) {
        self.client_id_in_body = true;
    }

    /// A request to the token endpoint for `grant_type`, with the
    /// consumer's `token_params`.
    pub fn token(consumer: &Consumer, endpoints: &Endpoints, grant_type: &str) -> Self {
        let mut request = Self::new(endpoints.token_url.clone(), "token endpoint");
        request.field("grant_type", grant_type);
        for (key, value) in &consumer.token_params {
            request
                .fields
                .push((Key::Configured(key.clone()), Zeroizing::new(value.clone())));
        }
        request
    }

    pub fn field(&mut self, key: &'static str, value: &str) {
        self.fields
            .push((Key::Own(key), Zeroizing::new(value.to_owned())));
    }

    /// A field whose value must never be shown.
    pub fn secret_field(&mut self, key: &'static str, value: &str) {
        self.scrubber.add(value);
        self.field(key, value);
    }

    /// Overrides the client's total timeout for this request.
    pub fn timeout(&mut self, timeout: Duration) {
        self.timeout = Some(timeout);
    }
}

/// A form field's name: tokd's own, or one from the consumer's
/// `token_params`.
#[derive(Debug)]
enum Key {
    Own(&'static str),
    Configured(String),
}

impl Key {
    fn as_str(&self) -> &str {
        match self {
            Self::Own(key) => key,
            Self::Configured(key) => key,
        }
    }
}

/// A 2xx answer.
#[derive(Debug)]
pub(super) struct Answer {
    pub status: u16,
    body: Zeroizing<Vec<u8>>,
    scrubber: Scrubber,
}

impl Answer {
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// `text` without any form of a secret the request carried.
    pub fn scrub(&self, text: &str) -> String {
        self.scrubber.scrub(text)
    }
}

impl OAuthClient {
    /// Sends one form POST with client authentication. Returns the 2xx
    /// answer, or the classified failure.
    pub(super) async fn post(
        &self,
        consumer: &Consumer,
        endpoints: &Endpoints,
        mut request: Request,
    ) -> Result<Answer, OAuthError> {
        let secret = consumer.secret.resolve().await.map_err(secret_failure)?;
        let mut builder = self
            .http
            .post(request.url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            );
        if let Some(timeout) = request.timeout {
            builder = builder.timeout(timeout);
        }
        match (endpoints.client_auth, &secret) {
            (ClientAuth::Basic, Some(secret)) => {
                if request.client_id_in_body {
                    request.field("client_id", &consumer.client_id);
                }
                let credentials = basic_credentials(&consumer.client_id, secret);
                request.scrubber.add(secret.expose());
                request.scrubber.add(&credentials);
                builder = builder.header(
                    reqwest::header::AUTHORIZATION,
                    format!("Basic {}", credentials.as_str()),
                );
            }
            (ClientAuth::Post, Some(secret)) => {
                request.field("client_id", &consumer.client_id);
                request.secret_field("client_secret", secret.expose());
            }
            // A public client identifies itself in the body.
            (_, None) => request.field("client_id", &consumer.client_id),
        }
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(
                request
                    .fields
                    .iter()
                    .map(|(key, value)| (key.as_str(), value.as_str())),
            )
            .finish();
        let Request {
            url,
            what,
            scrubber,
            ..
        } = request;
        let failure = |kind, text: String| OAuthError::new(kind, scrubber.scrub(&text));

        let mut response = builder.body(body).send().await.map_err(|error| {
            let mut failure = failure(
                ErrorKind::Transient,
                format!(
                    "cannot reach {what} {}: {}",
                    describe(&url),
                    crate::text::error_chain(&error)
                ),
            );
            // Unless it never connected, the request may have arrived.
            failure.outcome_unknown = !error.is_connect();
            failure
        })?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| parse_retry_after(value, SystemTime::now()));
        // Provider text is scrubbed before it is cut short: a secret the
        // cut splits would no longer be found whole, and its first part
        // would be shown.
        let quote = |text: &str, limit: usize| sanitize(&scrubber.scrub(text), limit);
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|value| value.to_str().ok())
            .map(|value| quote(value, EXCERPT));

        let mut body = Zeroizing::new(Vec::new());
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
                    let mut failure = failure(
                        ErrorKind::Transient,
                        format!(
                            "{what} {} answered {status} but the body could not be read: {}",
                            describe(&url),
                            crate::text::error_chain(&error)
                        ),
                    );
                    failure.status = Some(status);
                    failure.outcome_unknown = true;
                    return Err(failure);
                }
            }
        }

        if (200..300).contains(&status) {
            return Ok(Answer {
                status,
                body,
                scrubber,
            });
        }

        let parsed = parse_error_response(&body);
        let code = parsed
            .as_ref()
            .and_then(|parsed| parsed.error.as_deref())
            .map(|code| quote(code, 60));
        let description = parsed
            .as_ref()
            .and_then(|parsed| parsed.error_description.as_deref())
            .map(|text| quote(text, 200));
        let kind = classify(status, code.as_deref(), description.as_deref());
        let not_oauth = code.is_none() && status < 500 && ![408, 429].contains(&status);
        let mut detail = match (&code, &description) {
            (Some(code), Some(description)) => format!(": {code} ({description})"),
            (Some(code), None) => format!(": {code}"),
            (None, _) => match &location {
                Some(location) if (300..400).contains(&status) => {
                    format!(", a redirect to {location}")
                }
                _ => excerpt_suffix(&body, &scrubber),
            },
        };
        if not_oauth {
            detail.push_str(
                "; that is not an OAuth answer but likely a proxy, a firewall or a wrong URL, so tokd retries slowly: check the URL",
            );
        }
        let mut message = format!("{what} {} answered {status}{detail}", describe(&url));
        if let Some(retry_after) = retry_after {
            message.push_str(&format!("; retry after {}s", retry_after.as_secs()));
        }
        let retry_after = if not_oauth {
            Some(retry_after.map_or(NOT_OAUTH_RETRY, |after| after.max(NOT_OAUTH_RETRY)))
        } else {
            retry_after
        };
        Err(OAuthError {
            kind,
            status: Some(status),
            error: code,
            description,
            retry_after,
            message: scrubber.scrub(&message),
            outcome_unknown: false,
            grant_at_risk: false,
        })
    }
}

/// `base64(urlencode(id) ":" urlencode(secret))`, the value after `Basic `
/// (RFC 6749 §2.3.1).
fn basic_credentials(client_id: &str, secret: &ClientSecret) -> Zeroizing<String> {
    let encode =
        |text: &str| url::form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>();
    let plain = Zeroizing::new(format!("{}:{}", encode(client_id), encode(secret.expose())));
    Zeroizing::new(STANDARD.encode(plain.as_bytes()))
}

/// A secret that could not be had. A failing or slow command may be a locked
/// password store that will open later, so those are transient; a missing
/// program or file will not fix itself.
fn secret_failure(error: ClientSecretError) -> OAuthError {
    let kind = match error {
        ClientSecretError::Timeout { .. } | ClientSecretError::Failed { .. } => {
            ErrorKind::Transient
        }
        _ => ErrorKind::Misconfigured,
    };
    OAuthError::new(kind, error.to_string())
}

/// `(host)` for messages: enough to tell endpoints apart, no query string.
pub(super) fn describe(url: &Url) -> String {
    let host = url.host_str().unwrap_or("?");
    match url.port() {
        Some(port) => format!("({host}:{port})"),
        None => format!("({host})"),
    }
}

/// A short quote of an error body that is not an OAuth answer (an HTML
/// error page, say). Never used for a 2xx body.
fn excerpt_suffix(body: &[u8], scrubber: &Scrubber) -> String {
    // All of it scrubbed (a page's tags, dropped by `sanitize`, may stand
    // before a secret), then quoted from its start.
    let text = String::from_utf8_lossy(body);
    let excerpt = sanitize(&scrubber.scrub(&text), EXCERPT);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_urlencoded_first() {
        let encoded = basic_credentials("id with:colon", &ClientSecret::new("s&e=c/r+t"));
        let decoded =
            String::from_utf8(STANDARD.decode(encoded.as_str()).expect("base64")).expect("utf8");
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
