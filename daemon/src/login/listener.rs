//! The loopback listener on a consumer's `redirect_uri`.
//!
//! A request is answered only on the redirect path and only with GET; its
//! query (`state`, `code`, `error`, `error_description`) is handed to the
//! [`Handler`] the broker gave, whose [`Page`] is shown in the browser.
//! The listener closes when no pending login waits on its address any
//! more, or [`super::LOGIN_TIMEOUT`] after the last login started there, or
//! when tokd stops.

use super::Logins;
use crate::secret::AuthorizationCode;
use crate::sync::lock;
use crate::tasks::Tasks;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, info};
use url::Url;

/// How long one callback connection may take.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// What the provider sent the browser back with.
#[derive(Debug, Default)]
pub struct Answer {
    pub state: Option<String>,
    pub code: Option<AuthorizationCode>,
    pub error: Option<String>,
    pub error_description: Option<String>,
}

/// What the browser is shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub status: u16,
    pub text: String,
}

impl Page {
    pub fn new(status: u16, text: impl Into<String>) -> Self {
        Self {
            status,
            text: text.into(),
        }
    }
}

/// Takes an answer and says what to show: the broker's side of a login.
pub type Handler = Arc<dyn Fn(Answer) -> Pin<Box<dyn Future<Output = Page> + Send>> + Send + Sync>;

/// Why nothing can listen on a `redirect_uri`.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {uri} for the login answer ({detail})")]
pub struct ListenError {
    pub uri: Url,
    pub detail: String,
}

/// One listening address.
#[derive(Debug)]
pub(super) struct Listener {
    deadline: Mutex<Instant>,
    wake: Notify,
}

impl Listener {
    pub(super) fn wake(&self) {
        self.wake.notify_one();
    }
}

/// Makes sure something listens on `uri` (a loopback http URL) and hands
/// answers to `handler`; returns the address.
pub async fn ensure_listener(
    logins: &Arc<Logins>,
    tasks: &Tasks,
    uri: &Url,
    handler: Handler,
) -> Result<SocketAddr, ListenError> {
    let cannot = |detail: String| ListenError {
        uri: uri.clone(),
        detail,
    };
    let host = uri.host_str().unwrap_or("localhost");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_or_known_default().unwrap_or(80);
    // `localhost` takes a resolver call: tokio's, off the runtime thread.
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|error| cannot(error.to_string()))?
        .collect();
    // Looked up and bound under one lock, so that a listener deciding to
    // close cannot slip between the lookup and the bind.
    let mut listeners = lock(&logins.listeners);
    if let Some((addr, listener)) = addrs
        .iter()
        .find_map(|addr| Some((*addr, listeners.get(addr)?.clone())))
    {
        *lock(&listener.deadline) = Instant::now() + logins.timeout;
        return Ok(addr);
    }
    let mut last_error = String::from("no address");
    for addr in addrs {
        let bound = std::net::TcpListener::bind(addr)
            .and_then(|socket| socket.set_nonblocking(true).map(|()| socket))
            .and_then(tokio::net::TcpListener::from_std);
        match bound {
            Ok(socket) => {
                let listener = Arc::new(Listener {
                    deadline: Mutex::new(Instant::now() + logins.timeout),
                    wake: Notify::new(),
                });
                listeners.insert(addr, listener.clone());
                let path = uri.path().to_owned();
                let serving = serve(
                    logins.clone(),
                    tasks.clone(),
                    socket,
                    addr,
                    path,
                    listener,
                    handler,
                );
                tasks.spawn_until_stopped(serving);
                info!(%addr, "listening for a login answer");
                return Ok(addr);
            }
            Err(error) => last_error = error.to_string(),
        }
    }
    Err(cannot(last_error))
}

async fn serve(
    logins: Arc<Logins>,
    tasks: Tasks,
    socket: tokio::net::TcpListener,
    addr: SocketAddr,
    path: String,
    listener: Arc<Listener>,
    handler: Handler,
) {
    loop {
        let deadline = *lock(&listener.deadline);
        tokio::select! {
            accepted = socket.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let (logins, path, handler) = (logins.clone(), path.clone(), handler.clone());
                tasks.spawn_until_stopped(connection(stream, logins, addr, path, handler));
            }
            () = tokio::time::sleep_until(deadline) => {}
            () = listener.wake.notified() => {}
        }
        // Decided and removed under the map's lock, and the socket closed
        // there too: a login starting meanwhile either finds this listener
        // or binds the address anew.
        let mut listeners = lock(&logins.listeners);
        let expired = Instant::now() >= *lock(&listener.deadline);
        if expired || !logins.any_waiting_on(addr) {
            listeners.remove(&addr);
            drop(socket);
            break;
        }
    }
    info!(%addr, "login listener closed");
}

async fn connection(
    stream: tokio::net::TcpStream,
    logins: Arc<Logins>,
    addr: SocketAddr,
    path: String,
    handler: Handler,
) {
    let service = hyper::service::service_fn(move |request| {
        let (logins, path, handler) = (logins.clone(), path.clone(), handler.clone());
        async move {
            let response = answer(&path, &handler, request).await;
            // The answer may have used up the last login waiting here.
            logins.wake(addr);
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    if tokio::time::timeout(CONNECTION_TIMEOUT, connection)
        .await
        .is_err()
    {
        debug!("a login callback connection timed out");
    }
}

async fn answer(
    path: &str,
    handler: &Handler,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    if request.method() != Method::GET {
        return page(&Page::new(405, "Only GET is answered here."));
    }
    if request.uri().path() != path {
        return page(&Page::new(404, "Nothing here."));
    }
    let mut answer = Answer::default();
    for (key, value) in url::form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
    {
        match key.as_ref() {
            "state" => answer.state = Some(value.into_owned()),
            "code" => answer.code = Some(AuthorizationCode::new(value.into_owned())),
            "error" => answer.error = Some(value.into_owned()),
            "error_description" => answer.error_description = Some(value.into_owned()),
            _ => {}
        }
    }
    page(&handler(answer).await)
}

fn page(page: &Page) -> Response<Full<Bytes>> {
    let escaped = page
        .text
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>tokd</title></head><body><p>{escaped}</p></body></html>\n"
    );
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::from_u16(page.status).unwrap_or(StatusCode::OK);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}
