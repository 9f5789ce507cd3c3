//! A Cargo registry (sparse index, RFC 2789) that requires
//! authentication (`auth-required`, RFC 3139), as private registries do:
//! every request, `config.json` included, must carry a token the emulator
//! honours in `Authorization` (as is, or after `Bearer `); anything else
//! gets `401` with `WWW-Authenticate: Cargo`. It serves one crate, added
//! with [`Registry::publish`] as the bytes of a `.crate` file.

use crate::TokenChecker;
use crate::served::{Served, serve};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// One request to the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryRequest {
    pub path: String,
    /// The `Authorization` header as sent.
    pub authorization: Option<String>,
    pub accepted: bool,
}

#[derive(Debug, Default)]
struct Contents {
    /// Index path (`he/ll/hello`) → index lines.
    index: HashMap<String, String>,
    /// `NAME/VERSION` → the `.crate` file.
    crates: HashMap<String, Vec<u8>>,
    requests: Vec<RegistryRequest>,
}

/// A running registry. Dropping it stops it.
#[derive(Debug)]
pub struct Registry {
    served: Served,
    contents: Arc<Mutex<Contents>>,
}

impl Registry {
    /// Starts a registry on 127.0.0.1 with a free port that takes the
    /// tokens `checker` says are live.
    pub async fn start(checker: TokenChecker) -> Self {
        let contents = Arc::new(Mutex::new(Contents::default()));
        let shared = Arc::clone(&contents);
        // The registry's own address goes in its `config.json`: known
        // once it listens, so the handler reads it from a cell.
        let address = Arc::new(std::sync::OnceLock::new());
        let own = Arc::clone(&address);
        let served = serve("registry", None, move |request| {
            let at = *own.get().expect("the address is set before a request");
            handle(&checker, &shared, at, request)
        })
        .await;
        let _ = address.set(served.address);
        Self { served, contents }
    }

    /// The index URL for Cargo's config: `sparse+http://127.0.0.1:PORT/index/`.
    pub fn index_url(&self) -> String {
        format!("sparse+http://{}/index/", self.served.address)
    }

    /// `127.0.0.1:PORT`: the registry as tokd's `registries` names it.
    pub fn host(&self) -> String {
        self.served.address.to_string()
    }

    /// Serves `crate_file` (a `.crate`: the gzipped tar of
    /// `NAME-VERSION/`) as `name` `version`, with no dependencies.
    pub fn publish(&self, name: &str, version: &str, crate_file: Vec<u8>) {
        let digest = ring::digest::digest(&ring::digest::SHA256, &crate_file);
        let cksum: String = digest
            .as_ref()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        let line = serde_json::json!({
            "name": name, "vers": version, "deps": [], "cksum": cksum,
            "features": {}, "yanked": false
        });
        let mut contents = self.lock();
        contents
            .index
            .entry(index_path(name))
            .or_default()
            .push_str(&format!("{line}\n"));
        contents
            .crates
            .insert(format!("{name}/{version}"), crate_file);
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<RegistryRequest> {
        self.lock().requests.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Contents> {
        self.contents
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Where the sparse index keeps `name` (lowercase): `1/a`, `2/ab`,
/// `3/a/abc`, `ab/cd/abcd…`.
fn index_path(name: &str) -> String {
    let name = name.to_ascii_lowercase();
    match name.len() {
        1 => format!("1/{name}"),
        2 => format!("2/{name}"),
        3 => format!("3/{}/{name}", &name[..1]),
        _ => format!("{}/{}/{name}", &name[..2], &name[2..4]),
    }
}

fn handle<B>(
    checker: &TokenChecker,
    contents: &Mutex<Contents>,
    address: SocketAddr,
    request: &Request<B>,
) -> Response<Full<Bytes>> {
    let authorization = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let accepted = authorization
        .as_deref()
        .is_some_and(|value| checker.is_valid(value.strip_prefix("Bearer ").unwrap_or(value)));
    let path = request.uri().path().to_owned();
    let mut contents = contents
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    contents.requests.push(RegistryRequest {
        path: path.clone(),
        authorization,
        accepted,
    });
    if !accepted {
        let mut response = answer(StatusCode::UNAUTHORIZED, "a token is required\n");
        response.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Cargo"),
        );
        return response;
    }
    let found = if path == "/index/config.json" {
        Some(
            serde_json::json!({
                "dl": format!("http://{address}/dl/{{crate}}/{{version}}/download"),
                "auth-required": true
            })
            .to_string()
            .into_bytes(),
        )
    } else if let Some(index) = path.strip_prefix("/index/") {
        contents
            .index
            .get(index)
            .map(|lines| lines.clone().into_bytes())
    } else if let Some(file) = path
        .strip_prefix("/dl/")
        .and_then(|rest| rest.strip_suffix("/download"))
    {
        contents.crates.get(file).cloned()
    } else {
        None
    };
    match found {
        Some(body) => answer(StatusCode::OK, body),
        None => answer(StatusCode::NOT_FOUND, "not here\n"),
    }
}

fn answer(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    #[test]
    fn index_paths_are_cargo_s() {
        assert_eq!(super::index_path("a"), "1/a");
        assert_eq!(super::index_path("ab"), "2/ab");
        assert_eq!(super::index_path("abc"), "3/a/abc");
        assert_eq!(super::index_path("Hello"), "he/ll/hello");
    }
}
