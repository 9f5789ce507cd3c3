//! Logins in progress and the loopback listener that receives the
//! provider's answer.
//!
//! `begin_login` records a pending login (state, PKCE verifier) and makes
//! sure a listener runs on the consumer's loopback `redirect_uri`. Several
//! installations of one consumer share its `redirect_uri`, so one listener
//! per address serves every pending login there, told apart by `state`.
//! A request is accepted only on the redirect path, with a `state` that a
//! pending login holds; each state is used once. The listener closes when
//! no login is pending on it any more, or [`LOGIN_TIMEOUT`] after the last
//! login started there.

use crate::schedule::lock;
use crate::secret::{AuthorizationCode, PkceVerifier};
use crate::service::{Daemon, Event, ServeError};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, info, warn};
use url::Url;

/// How long a login may take from `begin_login` to the provider's answer.
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(600);
/// How long one callback connection may take.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// A login waiting for the provider's answer.
#[derive(Debug)]
pub(crate) struct Pending {
    pub name: String,
    pub state: String,
    pub verifier: PkceVerifier,
    pub redirect_uri: Option<Url>,
    /// The loopback address listened on for the answer, if any.
    pub listen_addr: Option<SocketAddr>,
}

#[derive(Debug)]
struct Entry {
    pending: Pending,
    started: Instant,
}

/// Pending logins and the listeners serving them.
#[derive(Debug)]
pub struct Logins {
    pending: Mutex<Vec<Entry>>,
    listeners: Mutex<HashMap<SocketAddr, Arc<Listener>>>,
    /// [`LOGIN_TIMEOUT`], unless a test shortens it.
    timeout: Duration,
}

impl Default for Logins {
    fn default() -> Self {
        Self::new(LOGIN_TIMEOUT)
    }
}

#[derive(Debug)]
struct Listener {
    deadline: Mutex<Instant>,
    wake: Notify,
}

impl Logins {
    pub(crate) fn new(timeout: Duration) -> Self {
        Self {
            pending: Mutex::default(),
            listeners: Mutex::default(),
            timeout,
        }
    }

    /// Adds a login; an earlier pending login of the same installation is
    /// dropped (its state stops working).
    pub(crate) fn add(&self, pending: Pending) {
        let mut entries = lock(&self.pending);
        entries.retain(|e| e.pending.name != pending.name && e.started.elapsed() < self.timeout);
        entries.push(Entry {
            pending,
            started: Instant::now(),
        });
    }

    pub(crate) fn take_by_name(&self, name: &str) -> Option<Pending> {
        self.take(|p| p.name == name)
    }

    fn take_by_state(&self, state: &str) -> Option<Pending> {
        self.take(|p| p.state == state)
    }

    fn take(&self, matches: impl Fn(&Pending) -> bool) -> Option<Pending> {
        let mut entries = lock(&self.pending);
        entries.retain(|e| e.started.elapsed() < self.timeout);
        let index = entries.iter().position(|e| matches(&e.pending))?;
        Some(entries.swap_remove(index).pending)
    }

    /// Makes every listener check whether a login still waits on it.
    pub(crate) fn wake_listeners(&self) {
        for listener in lock(&self.listeners).values() {
            listener.wake.notify_one();
        }
    }

    fn any_waiting_on(&self, addr: SocketAddr) -> bool {
        lock(&self.pending)
            .iter()
            .any(|e| e.started.elapsed() < self.timeout && e.pending.listen_addr == Some(addr))
    }
}

/// Makes sure something listens on `uri` (a loopback http URL); returns
/// the address.
pub(crate) async fn ensure_listener(
    daemon: &Arc<Daemon>,
    uri: &Url,
    name: &str,
) -> Result<SocketAddr, ServeError> {
    let cannot = |detail: String| {
        ServeError::Misconfigured(format!(
            "cannot listen on {uri} for the login answer ({detail}); free that port, or open the URL anyway and finish with `tokctl login {name} --code CODE`"
        ))
    };
    let host = uri.host_str().unwrap_or("localhost");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_or_known_default().unwrap_or(80);
    // `localhost` takes a resolver call: tokio's, off the runtime thread.
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|error| cannot(error.to_string()))?
        .collect();
    if let Some((addr, listener)) = addrs.iter().find_map(|addr| {
        let listener = lock(&daemon.logins.listeners).get(addr).cloned()?;
        Some((*addr, listener))
    }) {
        *lock(&listener.deadline) = Instant::now() + daemon.logins.timeout;
        listener.wake.notify_one();
        return Ok(addr);
    }
    let mut last_error = String::from("no address");
    for addr in addrs {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(socket) => {
                let listener = Arc::new(Listener {
                    deadline: Mutex::new(Instant::now() + daemon.logins.timeout),
                    wake: Notify::new(),
                });
                lock(&daemon.logins.listeners).insert(addr, listener.clone());
                let path = uri.path().to_owned();
                tokio::spawn(serve(daemon.clone(), socket, addr, path, listener));
                info!(%addr, "listening for a login answer");
                return Ok(addr);
            }
            Err(error) => last_error = error.to_string(),
        }
    }
    Err(cannot(last_error))
}

async fn serve(
    daemon: Arc<Daemon>,
    socket: tokio::net::TcpListener,
    addr: SocketAddr,
    path: String,
    listener: Arc<Listener>,
) {
    loop {
        let deadline = *lock(&listener.deadline);
        tokio::select! {
            accepted = socket.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let daemon = daemon.clone();
                let path = path.clone();
                let listener = listener.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let daemon = daemon.clone();
                        let path = path.clone();
                        let listener = listener.clone();
                        async move {
                            let response = answer(&daemon, &path, request).await;
                            listener.wake.notify_one();
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let connection = hyper::server::conn::http1::Builder::new()
                        .keep_alive(false)
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                    if tokio::time::timeout(CONNECTION_TIMEOUT, connection).await.is_err() {
                        debug!("a login callback connection timed out");
                    }
                });
            }
            () = tokio::time::sleep_until(deadline) => {
                if Instant::now() >= *lock(&listener.deadline) {
                    break;
                }
            }
            () = listener.wake.notified() => {
                if !daemon.logins.any_waiting_on(addr) {
                    break;
                }
            }
        }
    }
    lock(&daemon.logins.listeners).remove(&addr);
    info!(%addr, "login listener closed");
}

async fn answer(
    daemon: &Arc<Daemon>,
    path: &str,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    if request.method() != Method::GET {
        return page(StatusCode::METHOD_NOT_ALLOWED, "Only GET is answered here.");
    }
    if request.uri().path() != path {
        return page(StatusCode::NOT_FOUND, "Nothing here.");
    }
    let mut state = None;
    let mut code = None;
    let mut error = None;
    let mut description = None;
    for (key, value) in url::form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
    {
        match key.as_ref() {
            "state" => state = Some(value.into_owned()),
            "code" => code = Some(AuthorizationCode::new(value.into_owned())),
            "error" => error = Some(value.into_owned()),
            "error_description" => description = Some(value.into_owned()),
            _ => {}
        }
    }
    let Some(pending) = state
        .as_deref()
        .and_then(|s| daemon.logins.take_by_state(s))
    else {
        warn!("a login answer with an unknown or used state was refused");
        return page(
            StatusCode::BAD_REQUEST,
            "This login answer is unknown, already used or expired. Run `tokctl login NAME` again.",
        );
    };
    let name = pending.name.clone();
    if let Some(error) = error {
        let detail = match description {
            Some(description) => format!("{error}: {description}"),
            None => error,
        };
        let detail = crate::oauth::sanitize(&detail, 200);
        let message = format!(
            "the provider refused the login of `{name}` ({detail}); run `tokctl login {name}` again"
        );
        daemon.emit(Event::LoginFinished {
            name,
            success: false,
            message: message.clone(),
        });
        return page(StatusCode::OK, &message);
    }
    let Some(code) = code else {
        return page(StatusCode::BAD_REQUEST, "The answer has no code.");
    };
    let Some(slot) = daemon.slot_if_exists(&name) else {
        return page(
            StatusCode::GONE,
            "That installation is gone from the config.",
        );
    };
    match daemon
        .exchange(&slot, code, Some(pending.verifier), pending.redirect_uri)
        .await
    {
        Ok(_) => page(
            StatusCode::OK,
            &format!("Logged in: tokd holds a token for `{name}`. You can close this tab."),
        ),
        Err(error) => page(StatusCode::OK, &error.to_string()),
    }
}

fn page(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let escaped = text
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>tokd</title></head><body><p>{escaped}</p></body></html>\n"
    );
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}
