//! A container registry (the OCI distribution API, as far as reading a
//! manifest goes) that takes HTTP Basic with a configured user name and an
//! access token the emulator honours, as Google's Artifact Registry takes
//! `oauth2accesstoken` and a token. Anything else gets `401` with
//! `WWW-Authenticate: Basic`, which is what makes a client ask its
//! credential helper. Plain HTTP on 127.0.0.1 (clients are told
//! `--tls-verify=false`).

use crate::TokenChecker;
use crate::git::basic_credentials;
use crate::served::{Served, serve};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use std::sync::{Arc, Mutex};

/// The manifest served for every repository and tag.
pub const MANIFEST: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;

/// One request to the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciRequest {
    pub path: String,
    /// The Basic credentials, when they came.
    pub credentials: Option<(String, String)>,
    pub accepted: bool,
}

/// A running registry. Dropping it stops it.
#[derive(Debug)]
pub struct OciRegistry {
    served: Served,
    requests: Arc<Mutex<Vec<OciRequest>>>,
}

impl OciRegistry {
    /// Starts a registry on 127.0.0.1 with a free port that takes `username`
    /// with the tokens `checker` says are live.
    pub async fn start(checker: TokenChecker, username: &str) -> Self {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::clone(&requests);
        let username = username.to_owned();
        let served = serve("registry", None, move |request| {
            handle(&checker, &username, &shared, request)
        })
        .await;
        Self { served, requests }
    }

    /// `127.0.0.1:PORT`, as a container tool names the registry.
    pub fn host(&self) -> String {
        self.served.address.to_string()
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<OciRequest> {
        self.requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

fn handle<B>(
    checker: &TokenChecker,
    username: &str,
    requests: &Mutex<Vec<OciRequest>>,
    request: &Request<B>,
) -> Response<Full<Bytes>> {
    let credentials = basic_credentials(
        request
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok()),
    );
    let accepted = credentials
        .as_ref()
        .is_some_and(|(user, password)| user == username && checker.is_valid(password));
    let path = request.uri().path().to_owned();
    requests
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(OciRequest {
            path: path.clone(),
            credentials,
            accepted,
        });
    let mut response = if !accepted {
        let mut response = answer(
            StatusCode::UNAUTHORIZED,
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
        );
        response.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Basic realm=\"tokd-testkit\""),
        );
        response
    } else if path == "/v2/" || path == "/v2" {
        answer(StatusCode::OK, "{}")
    } else if path.starts_with("/v2/") && path.contains("/manifests/") {
        let mut response = answer(StatusCode::OK, MANIFEST);
        let digest = ring::digest::digest(&ring::digest::SHA256, MANIFEST.as_bytes());
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        response.headers_mut().insert(
            "docker-content-digest",
            hyper::header::HeaderValue::from_str(&format!("sha256:{hex}")).expect("a digest"),
        );
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/vnd.oci.image.manifest.v1+json"),
        );
        response
    } else {
        answer(
            StatusCode::NOT_FOUND,
            r#"{"errors":[{"code":"NAME_UNKNOWN","message":"not served by the test kit"}]}"#,
        )
    };
    response.headers_mut().insert(
        "docker-distribution-api-version",
        hyper::header::HeaderValue::from_static("registry/2.0"),
    );
    response
}

fn answer(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}
