//! The OAuth client against the provider emulator, over real HTTP on
//! loopback: every grant, both client-authentication styles, every fault.

use crate::support::within;
use std::sync::Arc;
use std::time::Duration;
use tokd::config::{Config, Consumer};
use tokd::oauth::{
    self, Endpoints, ErrorKind, OAuthClient, OAuthError, Pkce, RevocableToken, Timeouts,
    TokenResponse,
};
use tokd::secret::{AuthorizationCode, RefreshToken};
use tokd_testkit::{Behaviour, Emulator, Fault, FaultBody, Mangle};
use url::Url;

const CLIENT_ID: &str = "client-1";
const SECRET: &str = "secret-value-1";
const REDIRECT: &str = "http://127.0.0.1:8765/callback";

fn consumer_with(emulator: &Emulator, client_auth: &str, secret_line: &str) -> Arc<Consumer> {
    let text = format!(
        r#"[consumers.c]
token_url = "{}"
auth_url = "{}"
revoke_url = "{}"
client_id = "{CLIENT_ID}"
{secret_line}
client_auth = "{client_auth}"
redirect_uri = "{REDIRECT}"
"#,
        emulator.token_url(),
        emulator.auth_url(),
        emulator.revoke_url()
    );
    let config = Config::from_str(&text).expect("valid config");
    Arc::clone(&config.consumers["c"])
}

async fn setup(behaviour: Behaviour, client_auth: &str) -> (Emulator, Arc<Consumer>, OAuthClient) {
    let emulator = Emulator::start(behaviour).await;
    emulator.register_client(CLIENT_ID, SECRET);
    let consumer = consumer_with(
        &emulator,
        client_auth,
        &format!("client_secret = \"{SECRET}\""),
    );
    (emulator, consumer, OAuthClient::new().expect("client"))
}

/// Plays the browser: opens the authorization URL, follows nothing, and
/// returns the code and state from the redirect.
async fn approve_in_browser(url: &Url) -> (AuthorizationCode, String) {
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("browser");
    let response = browser.get(url.clone()).send().await.expect("authorize");
    assert_eq!(
        response.status().as_u16(),
        302,
        "the provider redirects back"
    );
    let location = response.headers()[reqwest::header::LOCATION]
        .to_str()
        .expect("ascii")
        .to_owned();
    let location = Url::parse(&location).expect("location");
    assert!(location.as_str().starts_with(REDIRECT), "{location}");
    let pair = |key: &str| {
        location
            .query_pairs()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.into_owned())
            .expect(key)
    };
    (AuthorizationCode::new(pair("code")), pair("state"))
}

async fn login(emulator: &Emulator, consumer: &Consumer, client: &OAuthClient) -> TokenResponse {
    let _ = emulator;
    let pkce = Pkce::generate();
    let state = oauth::random_token(16);
    let scopes = vec!["repository".to_owned(), "pullrequest".to_owned()];
    let redirect = Url::parse(REDIRECT).expect("url");
    let url = oauth::authorization_url(
        consumer,
        &fixed(consumer),
        &scopes,
        &state,
        Some(&pkce.challenge),
        Some(&redirect),
    )
    .expect("consumer has an auth_url");
    let (code, returned_state) = approve_in_browser(&url).await;
    assert_eq!(returned_state, state);
    client
        .exchange_code(
            consumer,
            &fixed(consumer),
            &code,
            Some(&pkce.verifier),
            Some(&redirect),
        )
        .await
        .expect("code exchange")
}

/// The endpoints of a consumer that names them itself (no issuer).
fn fixed(consumer: &Consumer) -> Endpoints {
    Endpoints::of(consumer, None).expect("the consumer names its endpoints")
}

fn refresh_of(response: &TokenResponse) -> RefreshToken {
    response.refresh_token.clone().expect("a refresh token")
}

#[tokio::test]
async fn bitbucket_login_with_pkce_then_refresh_keeps_the_refresh_token() {
    within(async {
        let (emulator, consumer, client) = setup(Behaviour::bitbucket_classic(), "basic").await;
        let first = login(&emulator, &consumer, &client).await;
        assert_eq!(first.token_type, "bearer");
        assert_eq!(first.expires_in, Some(Duration::from_secs(7200)));
        assert_eq!(
            first.scopes.as_deref(),
            Some(&["repository".to_owned(), "pullrequest".to_owned()][..]),
            "Bitbucket's `scopes` field is read"
        );
        assert!(emulator.access_token_is_valid(first.access_token.expose()));

        let second = client
            .refresh(&consumer, &fixed(&consumer), &refresh_of(&first))
            .await
            .expect("refresh");
        assert_ne!(second.access_token, first.access_token);
        assert_eq!(second.refresh_token, first.refresh_token, "not rotated");
        assert!(emulator.access_token_is_valid(second.access_token.expose()));
        assert_eq!(emulator.counters().authorization_code, 1);
        assert_eq!(emulator.counters().refresh_token, 1);
    })
    .await;
}

#[tokio::test]
async fn a_code_works_once() {
    within(async {
        let (emulator, consumer, client) = setup(Behaviour::bitbucket_classic(), "basic").await;
        let code =
            AuthorizationCode::new(emulator.issue_code(CLIENT_ID, &["repository"], None, None));
        client
            .exchange_code(&consumer, &fixed(&consumer), &code, None, None)
            .await
            .expect("a code obtained by hand, without PKCE");
        let error = client
            .exchange_code(&consumer, &fixed(&consumer), &code, None, None)
            .await
            .expect_err("reuse is refused");
        assert_eq!(error.kind, ErrorKind::NeedsLogin);
        assert_eq!(error.status, Some(400));
        assert_eq!(error.error.as_deref(), Some("invalid_grant"));
        assert_eq!(
            error.description.as_deref(),
            Some("The specified code is not valid.")
        );
        assert!(
            error
                .message
                .contains("invalid_grant (The specified code is not valid.)"),
            "{error}"
        );
        assert!(!error.message.contains(code.expose()), "{error}");
    })
    .await;
}

#[tokio::test]
async fn a_wrong_pkce_verifier_is_refused() {
    within(async {
        let (emulator, consumer, client) = setup(Behaviour::wso2(), "basic").await;
        let pkce = Pkce::generate();
        let code = AuthorizationCode::new(emulator.issue_code(
            CLIENT_ID,
            &[],
            Some(REDIRECT),
            Some(&pkce.challenge),
        ));
        let redirect = Url::parse(REDIRECT).expect("url");
        let wrong = Pkce::generate();
        let error = client
            .exchange_code(
                &consumer,
                &fixed(&consumer),
                &code,
                Some(&wrong.verifier),
                Some(&redirect),
            )
            .await
            .expect_err("wrong verifier");
        assert_eq!(error.kind, ErrorKind::NeedsLogin);
        assert!(error.message.contains("PKCE"), "{error}");
        assert!(!error.message.contains(wrong.verifier.expose()));
    })
    .await;
}

#[tokio::test]
async fn wso2_rotates_strictly_and_the_old_refresh_token_dies() {
    within(async {
        let (emulator, consumer, client) = setup(Behaviour::wso2(), "basic").await;
        let first = login(&emulator, &consumer, &client).await;
        assert_eq!(first.token_type, "bearer", "\"Bearer\" is lowercased");
        let old = refresh_of(&first);
        let second = client
            .refresh(&consumer, &fixed(&consumer), &old)
            .await
            .expect("refresh");
        let new = refresh_of(&second);
        assert_ne!(new, old, "rotated");
        let error = client
            .refresh(&consumer, &fixed(&consumer), &old)
            .await
            .expect_err("old is dead");
        assert_eq!(error.kind, ErrorKind::NeedsLogin);
        assert_eq!(error.error.as_deref(), Some("invalid_grant"));
        client
            .refresh(&consumer, &fixed(&consumer), &new)
            .await
            .expect("the new one works");
    })
    .await;
}

#[tokio::test]
async fn bitbucket_2026_rotates_with_a_grace_window_and_long_tokens() {
    within(async {
        let (emulator, consumer, client) = setup(Behaviour::bitbucket_2026(), "basic").await;
        let first = login(&emulator, &consumer, &client).await;
        assert!(first.access_token.expose().len() > 2500);
        assert!(refresh_of(&first).expose().len() > 2500);
        let old = refresh_of(&first);
        let second = client
            .refresh(&consumer, &fixed(&consumer), &old)
            .await
            .expect("refresh");
        assert_ne!(refresh_of(&second), old, "rotated");
        // Within the grace window the old one still works.
        client
            .refresh(&consumer, &fixed(&consumer), &old)
            .await
            .expect("grace window");
    })
    .await;
}

#[tokio::test]
async fn bitbucket_scope_change_revokes_with_invalid_request() {
    within(async {
        let (emulator, consumer, client) = setup(Behaviour::bitbucket_classic(), "basic").await;
        let first = login(&emulator, &consumer, &client).await;
        emulator.change_consumer_scopes(CLIENT_ID);
        assert!(!emulator.access_token_is_valid(first.access_token.expose()));
        let error = client
            .refresh(&consumer, &fixed(&consumer), &refresh_of(&first))
            .await
            .expect_err("revoked");
        assert_eq!(error.kind, ErrorKind::NeedsLogin);
        assert_eq!(error.error.as_deref(), Some("invalid_request"));
        assert_eq!(error.description.as_deref(), Some("Invalid refresh_token"));
    })
    .await;
}

#[tokio::test]
async fn client_credentials_get_no_refresh_token() {
    within(async {
        let (emulator, consumer, client) = setup(Behaviour::bitbucket_classic(), "basic").await;
        let scopes = vec!["repository".to_owned()];
        let response = client
            .client_credentials(&consumer, &fixed(&consumer), &scopes)
            .await
            .expect("token");
        assert_eq!(response.refresh_token, None);
        assert!(emulator.access_token_is_valid(response.access_token.expose()));
        let request = emulator.last_request().expect("recorded");
        assert_eq!(request.form_value("grant_type"), Some("client_credentials"));
        assert_eq!(request.form_value("scope"), Some("repository"));
        assert_eq!(emulator.counters().client_credentials, 1);
    })
    .await;
}

#[tokio::test]
async fn basic_authentication_is_a_header_and_form_body() {
    within(async {
        let (emulator, consumer, client) = setup(Behaviour::bitbucket_classic(), "basic").await;
        client
            .client_credentials(&consumer, &fixed(&consumer), &[])
            .await
            .expect("token");
        let request = emulator.last_request().expect("recorded");
        assert_eq!(
            request.basic,
            Some((CLIENT_ID.to_owned(), SECRET.to_owned()))
        );
        assert_eq!(request.form_value("client_secret"), None);
        assert_eq!(
            request.content_type.as_deref(),
            Some("application/x-www-form-urlencoded")
        );
        assert_eq!(request.accept.as_deref(), Some("application/json"));
    })
    .await;
}

#[tokio::test]
async fn post_authentication_puts_credentials_in_the_body() {
    within(async {
        let (emulator, consumer, client) = setup(Behaviour::post_only(), "post").await;
        let first = login(&emulator, &consumer, &client).await;
        assert_eq!(
            first.expires_in,
            Some(Duration::from_secs(3600)),
            "expires_in sent as a string"
        );
        let request = emulator.last_request().expect("recorded");
        assert_eq!(request.basic, None);
        assert_eq!(request.form_value("client_id"), Some(CLIENT_ID));
        assert_eq!(request.form_value("client_secret"), Some(SECRET));

        // The same provider refuses Basic as bad client credentials.
        let basic = consumer_with(&emulator, "basic", &format!("client_secret = \"{SECRET}\""));
        let error = client
            .client_credentials(&basic, &fixed(&basic), &[])
            .await
            .expect_err("refused");
        assert_eq!(error.kind, ErrorKind::Misconfigured);
        assert_eq!(error.error.as_deref(), Some("invalid_client"));
    })
    .await;
}

#[tokio::test]
async fn smartthings_wants_form_bodies_and_gets_them() {
    within(async {
        let (emulator, consumer, client) = setup(Behaviour::smartthings(), "basic").await;
        let first = login(&emulator, &consumer, &client).await;
        assert_eq!(first.expires_in, Some(Duration::from_secs(86_400)));
        let second = client
            .refresh(&consumer, &fixed(&consumer), &refresh_of(&first))
            .await
            .expect("refresh");
        assert_ne!(
            second.refresh_token, first.refresh_token,
            "store whatever comes back"
        );
        // The emulator behaves like SmartThings for a JSON body: 401.
        let json = reqwest::Client::new()
            .post(emulator.token_url())
            .header("content-type", "application/json")
            .basic_auth(CLIENT_ID, Some(SECRET))
            .body(r#"{"grant_type":"client_credentials"}"#)
            .send()
            .await
            .expect("send");
        assert_eq!(json.status().as_u16(), 401);
    })
    .await;
}

#[tokio::test]
async fn a_wrong_secret_is_misconfiguration() {
    within(async {
        let (emulator, _, client) = setup(Behaviour::wso2(), "basic").await;
        let consumer = consumer_with(&emulator, "basic", "client_secret = \"not-the-secret\"");
        let error = client
            .client_credentials(&consumer, &fixed(&consumer), &[])
            .await
            .expect_err("refused");
        assert_eq!(error.kind, ErrorKind::Misconfigured);
        assert_eq!(error.status, Some(401));
        assert!(!error.message.contains("not-the-secret"), "{error}");
    })
    .await;
}

#[tokio::test]
async fn secret_from_a_command_and_a_file() {
    within(async {
        let (emulator, _, client) = setup(Behaviour::wso2(), "basic").await;
        let command = consumer_with(
            &emulator,
            "basic",
            &format!("client_secret_command = [\"printf\", \"%s\\n\", \"{SECRET}\"]"),
        );
        client
            .client_credentials(&command, &fixed(&command), &[])
            .await
            .expect("command secret");

        let folder = tempfile::tempdir().expect("tempdir");
        let path = folder.path().join("secret");
        std::fs::write(&path, format!("{SECRET}\n")).expect("write");
        let file = consumer_with(
            &emulator,
            "basic",
            &format!("client_secret_file = \"{}\"", path.display()),
        );
        client
            .client_credentials(&file, &fixed(&file), &[])
            .await
            .expect("file secret");

        let failing = consumer_with(&emulator, "basic", "client_secret_command = [\"false\"]");
        let error = client
            .client_credentials(&failing, &fixed(&failing), &[])
            .await
            .expect_err("no secret");
        assert_eq!(
            error.kind,
            ErrorKind::Transient,
            "a locked password store may open later"
        );
        assert_eq!(
            emulator.counters().client_credentials,
            2,
            "no request without a secret"
        );
    })
    .await;
}

/// Runs one request against a fault and returns the failure.
async fn fault(fault: Fault) -> OAuthError {
    let (emulator, consumer, client) = setup(Behaviour::wso2(), "basic").await;
    emulator.fail_next(1, fault);
    let error = client
        .client_credentials(&consumer, &fixed(&consumer), &[])
        .await
        .expect_err("the fault fails the request");
    assert!(!error.message.contains(SECRET), "{error}");
    // The fault was one-shot: the provider recovers.
    client
        .client_credentials(&consumer, &fixed(&consumer), &[])
        .await
        .expect("recovered");
    error
}

#[tokio::test]
async fn html_5xx_is_transient_with_the_status_and_an_excerpt() {
    within(async {
        let error = fault(Fault::status(502, FaultBody::Html)).await;
        assert_eq!(error.kind, ErrorKind::Transient);
        assert_eq!(error.status, Some(502));
        assert!(error.message.contains("answered 502"), "{error}");
        assert!(
            error
                .message
                .contains("\"502 Bad Gateway 502 Bad Gateway nginx\""),
            "{error}"
        );
        assert!(!error.message.contains('<'), "markup is stripped: {error}");
    })
    .await;
}

#[tokio::test]
async fn empty_5xx_says_the_body_was_empty() {
    within(async {
        let error = fault(Fault::status(503, FaultBody::Empty)).await;
        assert_eq!(error.kind, ErrorKind::Transient);
        assert!(
            error.message.contains("answered 503 with an empty body"),
            "{error}"
        );
    })
    .await;
}

#[tokio::test]
async fn garbage_200_is_transient() {
    within(async {
        let error = fault(Fault::status(200, FaultBody::Garbage)).await;
        assert_eq!(error.kind, ErrorKind::Transient);
        assert_eq!(error.status, Some(200));
        assert!(
            error
                .message
                .contains("answered 200 but the body is not JSON"),
            "{error}"
        );
    })
    .await;
}

#[tokio::test]
async fn empty_200_is_transient() {
    within(async {
        let error = fault(Fault::status(200, FaultBody::Empty)).await;
        assert_eq!(error.kind, ErrorKind::Transient);
        assert!(error.message.contains("the body is empty"), "{error}");
    })
    .await;
}

#[tokio::test]
async fn a_429_carries_its_retry_after() {
    within(async {
        let error = fault(Fault::status(429, FaultBody::Empty).with_retry_after("7")).await;
        assert_eq!(error.kind, ErrorKind::Transient);
        assert_eq!(error.retry_after, Some(Duration::from_secs(7)));
        assert!(error.message.contains("retry after 7s"), "{error}");

        let date = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(120));
        let error = fault(Fault::status(503, FaultBody::Html).with_retry_after(date)).await;
        let after = error.retry_after.expect("an HTTP-date is read");
        assert!(
            after > Duration::from_secs(100) && after <= Duration::from_secs(120),
            "{after:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn oauth_errors_in_5xx_stay_transient() {
    within(async {
        let body = r#"{"error":"invalid_grant","error_description":"backend down"}"#;
        let error = fault(Fault::status(503, FaultBody::Json(body.into()))).await;
        assert_eq!(error.kind, ErrorKind::Transient);
        assert_eq!(error.error.as_deref(), Some("invalid_grant"));
    })
    .await;
}

#[tokio::test]
async fn a_redirect_is_not_followed() {
    within(async {
        let (emulator, consumer, client) = setup(Behaviour::wso2(), "basic").await;
        // Following would resend the credentials to the redirect target.
        emulator.fail_next(
            1,
            Fault::redirect(format!("{}/elsewhere", emulator.base_url())),
        );
        let error = client
            .client_credentials(&consumer, &fixed(&consumer), &[])
            .await
            .expect_err("redirected");
        // Not an OAuth answer (a captive portal, a moved endpoint): not
        // permanent, retried slowly.
        assert_eq!(error.kind, ErrorKind::Transient);
        assert_eq!(error.status, Some(302), "the redirect itself is the answer");
        assert!(
            error.message.contains("a redirect to http://127.0.0.1"),
            "{error}"
        );
        assert!(error.message.contains("/elsewhere"), "{error}");
        assert!(error.message.contains("check the URL"), "{error}");
        assert!(
            error.retry_after >= Some(Duration::from_secs(15 * 60)),
            "{error:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_path_that_is_not_a_token_endpoint_is_retried_slowly() {
    within(async {
        let (emulator, _, client) = setup(Behaviour::wso2(), "basic").await;
        let text = format!(
            "[consumers.c]\ntoken_url = \"{}/nowhere\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"{SECRET}\"\n",
            emulator.base_url()
        );
        let config = Config::from_str(&text).expect("valid");
        let error = client
            .client_credentials(&config.consumers["c"], &fixed(&config.consumers["c"]), &[])
            .await
            .expect_err("not a token endpoint");
        // A 404 page is no OAuth answer: a wrong URL, or a proxy in the way
        // for a while. It is said, and retried slowly rather than never.
        assert_eq!(error.kind, ErrorKind::Transient);
        assert_eq!(error.status, Some(404));
        assert!(error.message.contains("404 Not Found"), "{error}");
        assert!(error.message.contains("check the URL"), "{error}");
        assert!(
            error.retry_after >= Some(Duration::from_secs(15 * 60)),
            "{error:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_slow_provider_within_the_timeout_answers() {
    within(async {
        let (emulator, consumer, client) = setup(Behaviour::wso2(), "basic").await;
        emulator.fail_next(1, Fault::slow(Duration::from_millis(300)));
        client
            .client_credentials(&consumer, &fixed(&consumer), &[])
            .await
            .expect("slow but fine");
    })
    .await;
}

#[tokio::test]
async fn a_provider_slower_than_the_timeout_is_transient() {
    within(async {
        let (emulator, consumer, _) = setup(Behaviour::wso2(), "basic").await;
        let client = OAuthClient::with_timeouts(Timeouts {
            connect: Duration::from_secs(5),
            total: Duration::from_millis(300),
            refresh: Duration::from_secs(10),
        })
        .expect("client");
        emulator.fail_next(1, Fault::slow(Duration::from_secs(20)));
        let error = client
            .client_credentials(&consumer, &fixed(&consumer), &[])
            .await
            .expect_err("timed out");
        assert_eq!(error.kind, ErrorKind::Transient);
        assert!(
            error.message.contains("cannot reach token endpoint"),
            "{error}"
        );
        assert!(error.message.contains("timed out"), "{error}");
        assert!(error.outcome_unknown, "the request went out: {error:?}");
        assert!(!error.grant_at_risk, "no refresh token was used");
    })
    .await;
}

/// A refresh may take longer than other requests: under strict rotation a
/// refresh given up while the provider works on it costs the grant. Past
/// its own, longer timeout it says the grant may be lost.
#[tokio::test]
async fn a_refresh_gets_a_longer_timeout_and_says_when_the_grant_is_at_risk() {
    within(async {
        let (emulator, consumer, client) = setup(Behaviour::wso2(), "basic").await;
        let first = login(&emulator, &consumer, &client).await;
        let client = OAuthClient::with_timeouts(Timeouts {
            connect: Duration::from_secs(5),
            total: Duration::from_millis(300),
            refresh: Duration::from_secs(5),
        })
        .expect("client");
        // Slower than the total timeout, within the refresh timeout.
        emulator.fail_next(1, Fault::slow(Duration::from_millis(1500)));
        let second = client
            .refresh(&consumer, &fixed(&consumer), &refresh_of(&first))
            .await
            .expect("a refresh waits longer");
        // Slower than the refresh timeout: the provider rotates anyway.
        emulator.fail_next(1, Fault::slow(Duration::from_secs(8)));
        let error = client
            .refresh(&consumer, &fixed(&consumer), &refresh_of(&second))
            .await
            .expect_err("timed out");
        assert_eq!(error.kind, ErrorKind::Transient);
        assert!(error.grant_at_risk, "{error:?}");
        let rotated = async {
            while emulator
                .successor_of(refresh_of(&second).expose())
                .is_none()
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(20), rotated)
            .await
            .expect("the provider rotated after tokd gave up");
        let lost = client
            .refresh(&consumer, &fixed(&consumer), &refresh_of(&second))
            .await
            .expect_err("used up");
        assert_eq!(lost.kind, ErrorKind::NeedsLogin);
    })
    .await;
}

#[tokio::test]
async fn connection_refused_is_transient() {
    within(async {
        // A port that was free a moment ago: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let text = format!(
            "[consumers.c]\ntoken_url = \"http://127.0.0.1:{port}/token\"\nclient_id = \"id\"\nclient_secret = \"{SECRET}\"\n"
        );
        let config = Config::from_str(&text).expect("valid");
        let error = OAuthClient::new()
            .expect("client")
            .client_credentials(&config.consumers["c"], &fixed(&config.consumers["c"]), &[])
            .await
            .expect_err("nothing listens");
        assert_eq!(error.kind, ErrorKind::Transient);
        assert_eq!(error.status, None);
        assert!(error.message.contains(&format!("(127.0.0.1:{port})")), "{error}");
    })
    .await;
}

#[tokio::test]
async fn a_provider_echoing_secrets_is_scrubbed() {
    within(async {
        let (emulator, consumer, client) = setup(Behaviour::wso2(), "basic").await;
        let first = login(&emulator, &consumer, &client).await;
        let refresh = refresh_of(&first);
        let echo = format!(
            r#"{{"error":"invalid_request","error_description":"bad refresh {} for client secret {SECRET}"}}"#,
            refresh.expose()
        );
        emulator.fail_next(1, Fault::status(400, FaultBody::Json(echo)));
        let error = client.refresh(&consumer, &fixed(&consumer), &refresh).await.expect_err("refused");
        assert!(!error.message.contains(refresh.expose()), "{error}");
        assert!(!error.message.contains(SECRET), "{error}");
        assert!(error.message.contains("[redacted]"), "{error}");
        let debug = format!("{error:?}");
        assert!(!debug.contains(refresh.expose()) && !debug.contains(SECRET), "{debug}");
    })
    .await;
}

/// A proxy or provider that reflects the request: the refresh token as
/// the form carried it (percent-encoded) and the `Authorization: Basic`
/// value (the client secret, base64) come back in the error.
#[tokio::test]
async fn a_provider_echoing_the_request_is_scrubbed_of_every_encoded_form() {
    within(async {
        let (emulator, consumer, client) = setup(Behaviour::wso2(), "basic").await;
        let first = login(&emulator, &consumer, &client).await;
        // A refresh token with characters that form-encoding changes.
        let refresh = RefreshToken::new(format!("{}/+=é x", refresh_of(&first).expose()));
        emulator.fail_next(1, Fault::status(400, FaultBody::Echo));
        let error = client
            .refresh(&consumer, &fixed(&consumer), &refresh)
            .await
            .expect_err("echo");
        let request = emulator.last_request().expect("recorded");
        let authorization = request.authorization.expect("Basic");
        let basic = authorization.strip_prefix("Basic ").expect("Basic");
        let encoded_refresh = request
            .raw_body
            .split('&')
            .find_map(|pair| pair.strip_prefix("refresh_token="))
            .expect("the form carried it")
            .to_owned();
        assert_ne!(encoded_refresh, refresh.expose(), "it was encoded");
        for shown in [error.message.clone(), format!("{error:?}")] {
            for secret in [refresh.expose(), &encoded_refresh, basic, SECRET] {
                assert!(!shown.contains(secret), "{secret} in {shown}");
            }
        }
        assert!(error.message.contains("[redacted]"), "{error}");
    })
    .await;
}

/// A secret that the quote's length limit would cut in two is redacted
/// whole: no part of it is shown (the error description is quoted up to
/// 200 characters, a page that is not OAuth's up to 120).
#[tokio::test]
async fn a_secret_across_the_quotes_cut_shows_no_part_of_itself() {
    within(async {
        let mut behaviour = Behaviour::wso2();
        behaviour.token_length = 300;
        let (emulator, consumer, client) = setup(behaviour, "basic").await;
        let first = login(&emulator, &consumer, &client).await;
        let refresh = refresh_of(&first);
        let padding = "x".repeat(150);
        let description = format!(
            r#"{{"error":"invalid_grant","error_description":"{padding} {}"}}"#,
            refresh.expose()
        );
        let page = format!(
            "<html><body>{} {}</body></html>",
            &padding[..80],
            refresh.expose()
        );
        for fault in [
            Fault::status(400, FaultBody::Json(description)),
            Fault::status(403, FaultBody::Json(page)),
        ] {
            emulator.fail_next(1, fault);
            let error = client
                .refresh(&consumer, &fixed(&consumer), &refresh)
                .await
                .expect_err("refused");
            let secret = refresh.expose();
            for shown in [error.message.clone(), format!("{error:?}")] {
                let part = (0..secret.len() - 12).find(|at| shown.contains(&secret[*at..at + 12]));
                assert_eq!(part, None, "a part of the refresh token is shown: {shown}");
            }
            assert!(error.message.contains("[redacted]"), "{error}");
        }
    })
    .await;
}

/// A 2xx the client cannot use is never quoted: the tokens the provider
/// has just issued are in it. A leading byte order mark is fine.
#[tokio::test]
async fn an_unusable_2xx_is_not_quoted_and_a_byte_order_mark_is_read() {
    within(async {
        let (emulator, consumer, client) = setup(Behaviour::wso2(), "basic").await;
        let first = login(&emulator, &consumer, &client).await;
        emulator.fail_next(1, Fault::mangled(Mangle::Bom));
        let second = client
            .refresh(&consumer, &fixed(&consumer), &refresh_of(&first))
            .await
            .expect("a BOM is skipped");
        assert!(emulator.access_token_is_valid(second.access_token.expose()));
        let mut held = refresh_of(&second);
        for mangle in [
            Mangle::TrailingBytes,
            Mangle::HtmlWrapped,
            Mangle::NumericAccessToken,
        ] {
            emulator.fail_next(1, Fault::mangled(mangle));
            let error = client
                .refresh(&consumer, &fixed(&consumer), &held)
                .await
                .expect_err("unusable");
            assert_eq!(error.kind, ErrorKind::Transient, "{mangle:?}");
            assert!(error.grant_at_risk, "{mangle:?}: the provider rotated");
            // The provider issued a new pair, which only the body held.
            let issued = emulator
                .successor_of(held.expose())
                .expect("rotated at the provider");
            assert!(!error.message.contains(&issued), "{mangle:?}: {error}");
            assert!(
                !error.message.contains(held.expose()),
                "{mangle:?}: {error}"
            );
            assert!(
                error.message.contains("the answer is not shown"),
                "{mangle:?}: {error}"
            );
            held = RefreshToken::new(issued);
        }
    })
    .await;
}

#[tokio::test]
async fn a_token_type_other_than_bearer_is_refused_with_a_sentence() {
    within(async {
        let mut behaviour = Behaviour::wso2();
        behaviour.token_type = "N/A";
        let (_emulator, consumer, client) = setup(behaviour, "basic").await;
        let error = client
            .client_credentials(&consumer, &fixed(&consumer), &[])
            .await
            .expect_err("not bearer");
        assert_eq!(error.kind, ErrorKind::Misconfigured);
        assert!(
            error
                .message
                .contains("the token type is \"N/A\", and tokd serves only bearer tokens"),
            "{error}"
        );
    })
    .await;
}

#[tokio::test]
async fn revocation_ends_the_grant() {
    within(async {
        let (emulator, consumer, client) = setup(Behaviour::wso2(), "basic").await;
        let first = login(&emulator, &consumer, &client).await;
        client
            .revoke(
                &consumer,
                &fixed(&consumer),
                RevocableToken::Refresh(&refresh_of(&first)),
            )
            .await
            .expect("revoked");
        assert_eq!(emulator.counters().revoke, 1);
        assert!(!emulator.access_token_is_valid(first.access_token.expose()));
        let error = client
            .refresh(&consumer, &fixed(&consumer), &refresh_of(&first))
            .await
            .expect_err("dead");
        assert_eq!(error.kind, ErrorKind::NeedsLogin);

        let second = login(&emulator, &consumer, &client).await;
        client
            .revoke(
                &consumer,
                &fixed(&consumer),
                RevocableToken::Access(&second.access_token),
            )
            .await
            .expect("revoked");
        assert!(!emulator.access_token_is_valid(second.access_token.expose()));
        let request = emulator.last_request().expect("recorded");
        assert_eq!(request.form_value("token_type_hint"), Some("access_token"));
    })
    .await;
}

#[tokio::test]
async fn revocation_needs_an_endpoint() {
    within(async {
        let (emulator, _, client) = setup(Behaviour::bitbucket_classic(), "basic").await;
        let text = format!(
            "[consumers.c]\ntoken_url = \"{}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"{SECRET}\"\n",
            emulator.token_url()
        );
        let config = Config::from_str(&text).expect("valid");
        let token = RefreshToken::new("whatever-token");
        let error = client
            .revoke(&config.consumers["c"], &fixed(&config.consumers["c"]), RevocableToken::Refresh(&token))
            .await
            .expect_err("no revoke_url");
        assert_eq!(error.kind, ErrorKind::Misconfigured);
        assert!(error.message.contains("has no revoke_url"), "{error}");

        // A provider without the endpoint answers 404: not an OAuth answer.
        let consumer = consumer_with(&emulator, "basic", &format!("client_secret = \"{SECRET}\""));
        let error = client
            .revoke(&consumer, &fixed(&consumer), RevocableToken::Refresh(&token))
            .await
            .expect_err("404");
        assert_eq!(error.kind, ErrorKind::Transient);
        assert_eq!(error.status, Some(404));
    })
    .await;
}

#[tokio::test]
async fn revocation_faults_are_classified_too() {
    within(async {
        let (emulator, consumer, client) = setup(Behaviour::wso2(), "basic").await;
        emulator.fail_next(
            1,
            Fault::status(503, FaultBody::Empty).with_retry_after("3"),
        );
        let token = RefreshToken::new("whatever-token");
        let error = client
            .revoke(
                &consumer,
                &fixed(&consumer),
                RevocableToken::Refresh(&token),
            )
            .await
            .expect_err("fault");
        assert_eq!(error.kind, ErrorKind::Transient);
        assert_eq!(error.retry_after, Some(Duration::from_secs(3)));
        assert!(error.message.starts_with("revocation endpoint"), "{error}");
    })
    .await;
}

#[tokio::test]
async fn the_authorization_url_carries_state_pkce_and_scopes() {
    within(async {
        let (emulator, consumer, _) = setup(Behaviour::bitbucket_classic(), "basic").await;
        let redirect = Url::parse(REDIRECT).expect("url");
        let url = oauth::authorization_url(
            &consumer,
            &fixed(&consumer),
            &["repository".to_owned(), "account".to_owned()],
            "the-state",
            Some("the-challenge"),
            Some(&redirect),
        )
        .expect("url");
        assert!(url.as_str().starts_with(&emulator.auth_url()));
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        let get = |key: &str| {
            pairs
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("response_type"), Some("code"));
        assert_eq!(get("client_id"), Some(CLIENT_ID));
        assert_eq!(get("redirect_uri"), Some(REDIRECT));
        assert_eq!(get("scope"), Some("repository account"));
        assert_eq!(get("state"), Some("the-state"));
        assert_eq!(get("code_challenge"), Some("the-challenge"));
        assert_eq!(get("code_challenge_method"), Some("S256"));
    })
    .await;
}

#[tokio::test]
async fn revoking_one_installations_grant_leaves_the_other() {
    within(async {
        let (emulator, consumer, client) = setup(Behaviour::bitbucket_classic(), "basic").await;
        let first = login(&emulator, &consumer, &client).await;
        let second = login(&emulator, &consumer, &client).await;
        assert_eq!(emulator.grant_count(), 2, "each login is its own grant");
        assert_ne!(first.refresh_token, second.refresh_token);

        assert!(emulator.revoke_grant_of(refresh_of(&first).expose()));
        let error = client
            .refresh(&consumer, &fixed(&consumer), &refresh_of(&first))
            .await
            .expect_err("revoked");
        assert_eq!(error.kind, ErrorKind::NeedsLogin);
        assert!(!emulator.access_token_is_valid(first.access_token.expose()));

        let renewed = client
            .refresh(&consumer, &fixed(&consumer), &refresh_of(&second))
            .await
            .expect("the other installation is untouched");
        assert!(emulator.access_token_is_valid(renewed.access_token.expose()));
        assert!(emulator.access_token_is_valid(second.access_token.expose()));
        assert!(!emulator.revoke_grant_of("not-a-token"));
    })
    .await;
}
