//! A Kubernetes API endpoint, as far as a client's authentication goes:
//! HTTPS on 127.0.0.1 (kubectl runs exec credential plugins only for
//! https servers) with the test kit's own certificate
//! (`fixtures/loopback.crt`, for 127.0.0.1, valid until 2126), taking
//! only `Authorization: Bearer` tokens the emulator honours. `GET
//! /version` answers as an API server does; anything without a live token
//! gets `401` with a `Status` object.

use crate::TokenChecker;
use crate::served::{Served, serve};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::{Arc, Mutex};

/// The certificate the endpoint presents (self-signed; give it to the
/// client as its certificate authority).
pub const CERTIFICATE: &str = include_str!("../fixtures/loopback.crt");
const KEY: &str = include_str!("../fixtures/loopback.key");

/// One request to the endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeRequest {
    pub path: String,
    /// The bearer token, when one came.
    pub token: Option<String>,
    pub accepted: bool,
}

/// A running endpoint. Dropping it stops it.
#[derive(Debug)]
pub struct KubeApi {
    served: Served,
    requests: Arc<Mutex<Vec<KubeRequest>>>,
}

impl KubeApi {
    /// Starts an endpoint on 127.0.0.1 with a free port that takes the
    /// tokens `checker` says are live.
    pub async fn start(checker: TokenChecker) -> Self {
        let certificate = CertificateDer::from_pem_slice(CERTIFICATE.as_bytes())
            .expect("the test kit's certificate");
        let key = PrivateKeyDer::from_pem_slice(KEY.as_bytes()).expect("the test kit's key");
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![certificate], key)
        .expect("a server configuration");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::clone(&requests);
        let served = serve("API endpoint", Some(acceptor), move |request| {
            handle(&checker, &shared, request)
        })
        .await;
        Self { served, requests }
    }

    /// `https://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("https://{}", self.served.address)
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<KubeRequest> {
        self.requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

fn handle<B>(
    checker: &TokenChecker,
    requests: &Mutex<Vec<KubeRequest>>,
    request: &Request<B>,
) -> Response<Full<Bytes>> {
    let token = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::to_owned);
    let accepted = token
        .as_deref()
        .is_some_and(|token| checker.is_valid(token));
    let path = request.uri().path().to_owned();
    requests
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(KubeRequest {
            path: path.clone(),
            token,
            accepted,
        });
    let (status, body) = if !accepted {
        (
            StatusCode::UNAUTHORIZED,
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}"#,
        )
    } else if path == "/version" {
        (
            StatusCode::OK,
            r#"{"major":"1","minor":"32","gitVersion":"v1.32.0-tokd-testkit","platform":"linux/amd64"}"#,
        )
    } else {
        (
            StatusCode::NOT_FOUND,
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"not served by the test kit","reason":"NotFound","code":404}"#,
        )
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}
