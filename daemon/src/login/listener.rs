//! The loopback listener on a consumer's `redirect_uri`.
//!
//! Only connections from sockets of tokd's own user are answered (the
//! kernel's socket tables say whose, see `peer.rs`): the `state` in the URL
//! is visible to other users (in `xdg-open`'s arguments), so another user
//! must not be able to answer in the browser's place. At most
//! [`MAX_CONNECTIONS`] are served at once (more are closed at once), and a
//! request's header must arrive within [`HEADER_TIMEOUT`]: a flood cannot
//! use up tokd's descriptors. A request is answered only on the redirect
//! path and only with GET; its query (`state`, `code`, `error`,
//! `error_description`) is handed to the [`Handler`] the broker gave, whose
//! [`Page`] is shown in the browser. The listener closes when no pending
//! login waits on its address any more, when the longest wait of the
//! logins started there ends (at most [`super::LOGIN_TIMEOUT`]), or when
//! tokd stops.
//!
//! `localhost` is listened on at both 127.0.0.1 and ::1, whatever the
//! resolver says: a browser may send the answer to either, and another
//! user must not hold the one tokd left free.

use super::{Logins, peer};
use crate::accept::AcceptErrors;
use crate::secret::AuthorizationCode;
use crate::sync::lock;
use crate::tasks::Tasks;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tracing::{debug, info, warn};
use url::Url;

/// How long one callback connection may take (the code exchange happens
/// while the browser waits).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a request's header may take to arrive.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Callback connections served at once per address; more are closed at
/// once. A browser opens one or two.
pub const MAX_CONNECTIONS: usize = 8;

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
/// answers to `handler`; returns the addresses listened on.
pub async fn ensure_listener(
    logins: &Arc<Logins>,
    tasks: &Tasks,
    uri: &Url,
    handler: Handler,
    wait: Duration,
) -> Result<Vec<SocketAddr>, ListenError> {
    let until = Instant::now() + logins.wait(Some(wait));
    let cannot = |detail: String| ListenError {
        uri: uri.clone(),
        detail,
    };
    let port = uri.port_or_known_default().unwrap_or(80);
    let addrs: Vec<SocketAddr> = match uri.host() {
        Some(url::Host::Ipv4(ip)) => vec![SocketAddr::new(IpAddr::V4(ip), port)],
        Some(url::Host::Ipv6(ip)) => vec![SocketAddr::new(IpAddr::V6(ip), port)],
        // `localhost` (the only name the config lets through here).
        _ => vec![
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port),
        ],
    };
    let localhost = addrs.len() > 1;
    // Looked up and bound under one lock, so that a listener deciding to
    // close cannot slip between the lookup and the bind.
    let mut listeners = lock(&logins.listeners);
    let mut bound = Vec::new();
    let mut listening = Vec::new();
    for addr in addrs {
        if let Some(listener) = listeners.get(&addr) {
            let mut deadline = lock(&listener.deadline);
            *deadline = (*deadline).max(until);
            listening.push(addr);
            continue;
        }
        let socket = std::net::TcpListener::bind(addr)
            .and_then(|socket| socket.set_nonblocking(true).map(|()| socket))
            .and_then(tokio::net::TcpListener::from_std);
        match socket {
            Ok(socket) => bound.push((addr, socket)),
            // No IPv6 on this machine: nobody can take ::1 either.
            Err(error) if localhost && error.kind() == std::io::ErrorKind::AddrNotAvailable => {
                debug!(%addr, "no such loopback address here");
            }
            Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => {
                return Err(cannot(format!(
                    "{addr} is taken by another program, perhaps another user's"
                )));
            }
            Err(error) => return Err(cannot(format!("{addr}: {error}"))),
        }
    }
    for (addr, socket) in bound {
        let listener = Arc::new(Listener {
            deadline: Mutex::new(until),
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
            handler.clone(),
        );
        tasks.spawn_until_stopped(serving);
        info!(%addr, "listening for a login answer");
        listening.push(addr);
    }
    if listening.is_empty() {
        return Err(cannot("no loopback address".to_owned()));
    }
    Ok(listening)
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
    let own_uid = crate::os::current_uid().ok();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut errors = AcceptErrors::new("the login listener");
    let refused = Arc::new(AtomicU64::new(0));
    loop {
        let deadline = *lock(&listener.deadline);
        tokio::select! {
            accepted = socket.accept() => match accepted {
                Ok((stream, peer)) => {
                    errors.succeeded();
                    // At most MAX_CONNECTIONS are looked up or served at
                    // once; the rest are closed at once, so a flood costs
                    // an accept and a close each.
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        debug!(%addr, "too many login callback connections; closed one");
                        continue;
                    };
                    let (logins, path, handler) = (logins.clone(), path.clone(), handler.clone());
                    let refused = refused.clone();
                    tasks.spawn_until_stopped(async move {
                        let _slot = slot;
                        // Off the runtime's thread: the lookup is a
                        // netlink exchange with the kernel.
                        let owner = tokio::task::spawn_blocking(move || peer::uid_of_peer(addr, peer))
                            .await
                            .ok()
                            .and_then(Result::ok)
                            .flatten();
                        if owner.is_none() || owner != own_uid {
                            // Closed without a word; said once per listener.
                            if refused.fetch_add(1, Ordering::Relaxed) == 0 {
                                warn!(%addr, caller_uid = ?owner, "refused a login answer from another user's connection");
                            }
                            return;
                        }
                        connection(stream, logins, addr, path, handler).await;
                    });
                }
                Err(error) => errors.failed(&error).await,
            },
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
    let refused = refused.load(Ordering::Relaxed);
    if refused > 0 {
        warn!(%addr, refused, "connections from other users were refused while listening");
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
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
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
