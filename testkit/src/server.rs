//! The emulator's HTTP server and its state.

use crate::{
    AcceptedAuth, Behaviour, Counters, DeadRefreshAnswer, Fault, FaultBody, Mangle,
    RecordedRequest, Rotation, WellKnown,
};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use ring::rand::SecureRandom as _;
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

#[derive(Debug, Clone)]
struct Client {
    /// `None`: a public client (identified by `client_id` alone).
    secret: Option<String>,
}

/// A device code and what the user did with it.
#[derive(Debug)]
struct DeviceGrant {
    client_id: String,
    scopes: Vec<String>,
    user_code: String,
    decision: Option<bool>,
    expires: Instant,
    interval: std::time::Duration,
    last_poll: Option<Instant>,
    used: bool,
}

#[derive(Debug)]
struct IssuedCode {
    client_id: String,
    redirect_uri: Option<String>,
    scopes: Vec<String>,
    challenge: Option<String>,
    used: bool,
    /// Whether the authorization asked for what a refresh token needs.
    offline: bool,
}

#[derive(Debug)]
struct Grant {
    client_id: String,
    scopes: Vec<String>,
    revoked: bool,
}

#[derive(Debug)]
struct RefreshState {
    grant: u64,
    /// When it was first exchanged (for the grace window).
    first_used: Option<Instant>,
    /// Replaced by a newer one (rotation).
    superseded: bool,
    /// The refresh token that replaced it.
    successor: Option<String>,
    revoked: bool,
}

#[derive(Debug)]
struct AccessState {
    /// `None` for client-credentials tokens.
    grant: Option<u64>,
    client_id: String,
    expires: Instant,
    revoked: bool,
}

#[derive(Debug)]
struct State {
    behaviour: Behaviour,
    clients: HashMap<String, Client>,
    codes: HashMap<String, IssuedCode>,
    grants: Vec<Grant>,
    refresh_tokens: HashMap<String, RefreshState>,
    access_tokens: HashMap<String, AccessState>,
    faults: VecDeque<Fault>,
    sticky_fault: Option<Fault>,
    holds: VecDeque<HeldGate>,
    /// Requests decided (tokens issued, old ones used up) whose answer is
    /// held back: a slow network after a fast provider.
    answer_holds: VecDeque<HeldGate>,
    counters: Counters,
    last_request: Option<RecordedRequest>,
    /// Token and revocation requests being decided now.
    deciding: usize,
    devices: HashMap<String, DeviceGrant>,
    /// Answer the next polls with `slow_down`, whatever their timing.
    slow_downs: usize,
    well_known: WellKnown,
    /// Where the token endpoint is (it can move).
    token_path: String,
    /// Our own address, for discovery documents.
    base: String,
    git: Option<crate::git::GitServer>,
}

#[derive(Debug)]
struct HeldGate {
    arrived: tokio::sync::oneshot::Sender<()>,
    release: tokio::sync::oneshot::Receiver<()>,
}

/// A request held by [`Emulator::hold_next`].
#[derive(Debug)]
pub struct Hold {
    arrived: Option<tokio::sync::oneshot::Receiver<()>>,
    release: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Hold {
    /// Waits until the held request has arrived (it then waits for
    /// [`Hold::release`]).
    pub async fn arrived(&mut self) {
        if let Some(arrived) = self.arrived.take() {
            let _ = arrived.await;
        }
    }

    /// Lets the held request go on.
    pub fn release(mut self) {
        if let Some(release) = self.release.take() {
            let _ = release.send(());
        }
    }
}

fn held_gate() -> (HeldGate, Hold) {
    let (arrived_tx, arrived) = tokio::sync::oneshot::channel();
    let (release, release_rx) = tokio::sync::oneshot::channel();
    (
        HeldGate {
            arrived: arrived_tx,
            release: release_rx,
        },
        Hold {
            arrived: Some(arrived),
            release: Some(release),
        },
    )
}

/// Whether an access token is one the emulator issued and still honours
/// (see [`Emulator::checker`]).
#[derive(Debug, Clone)]
pub struct TokenChecker(Arc<Mutex<State>>);

impl TokenChecker {
    pub fn is_valid(&self, token: &str) -> bool {
        let state = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        access_valid(&state, token)
    }
}

/// A running emulator. Dropping it stops the server.
#[derive(Debug)]
pub struct Emulator {
    address: SocketAddr,
    state: Arc<Mutex<State>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

fn random_text(length: usize) -> String {
    let mut bytes = vec![0u8; length.div_ceil(4) * 3 + 3];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("system random");
    let mut text = URL_SAFE_NO_PAD.encode(bytes);
    text.truncate(length.max(1));
    text
}

type HttpResponse = Response<Full<Bytes>>;

fn respond(status: u16, content_type: &str, body: impl Into<Bytes>) -> HttpResponse {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        content_type.parse().expect("valid content type"),
    );
    response.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        "no-store".parse().expect("valid"),
    );
    response
}

fn json_response(status: u16, value: Value) -> HttpResponse {
    respond(status, "application/json", value.to_string())
}

fn oauth_error(status: u16, error: &str, description: &str) -> HttpResponse {
    json_response(
        status,
        json!({"error": error, "error_description": description}),
    )
}

impl Emulator {
    /// Starts a server on 127.0.0.1 with a free port. Must be called inside
    /// a tokio runtime.
    pub async fn start(behaviour: Behaviour) -> Self {
        Self::start_at(behaviour, 0)
            .await
            .expect("bind the emulator on 127.0.0.1")
    }

    /// Starts a server on 127.0.0.1 at `port` (0: a free one).
    pub async fn start_at(behaviour: Behaviour, port: u16) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let address = listener.local_addr().expect("local address");
        let state = Arc::new(Mutex::new(State {
            behaviour,
            clients: HashMap::new(),
            codes: HashMap::new(),
            grants: Vec::new(),
            refresh_tokens: HashMap::new(),
            access_tokens: HashMap::new(),
            faults: VecDeque::new(),
            sticky_fault: None,
            holds: VecDeque::new(),
            answer_holds: VecDeque::new(),
            counters: Counters::default(),
            last_request: None,
            deciding: 0,
            devices: HashMap::new(),
            slow_downs: 0,
            well_known: WellKnown::default(),
            token_path: "/token".to_owned(),
            base: format!("http://{address}"),
            git: None,
        }));
        let shared = Arc::clone(&state);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, std::convert::Infallible>(handle(state, request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self {
            address,
            state,
            accept,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn token_url(&self) -> String {
        format!("{}{}", self.base_url(), self.lock().token_path)
    }

    /// The device authorization endpoint.
    pub fn device_url(&self) -> String {
        format!("{}/device", self.base_url())
    }

    /// The issuer its discovery documents name (unless told otherwise).
    pub fn issuer(&self) -> String {
        self.base_url()
    }

    /// Which discovery documents to serve, with which issuer.
    pub fn set_well_known(&self, well_known: WellKnown) {
        self.lock().well_known = well_known;
    }

    /// Moves the token endpoint to `path`: the old one answers 404, and
    /// the discovery documents name the new one.
    pub fn move_token_endpoint(&self, path: &str) {
        self.lock().token_path = path.to_owned();
    }

    /// Registers a public client: no secret, `client_id` in the body.
    pub fn register_public_client(&self, client_id: &str) {
        self.lock()
            .clients
            .insert(client_id.to_owned(), Client { secret: None });
    }

    /// The user entered `user_code` and approved (or, with `approve`
    /// false, refused). Returns whether such a code is waiting.
    pub fn decide_device(&self, user_code: &str, approve: bool) -> bool {
        let mut state = self.lock();
        match state
            .devices
            .values_mut()
            .find(|device| device.user_code == user_code)
        {
            Some(device) => {
                device.decision = Some(approve);
                true
            }
            None => false,
        }
    }

    /// Answers the next `count` device polls with `slow_down`.
    pub fn slow_down_next(&self, count: usize) {
        self.lock().slow_downs += count;
    }

    pub fn auth_url(&self) -> String {
        format!("{}/authorize", self.base_url())
    }

    pub fn revoke_url(&self) -> String {
        format!("{}/revoke", self.base_url())
    }

    /// A `[consumers.NAME]` table pointing at this emulator, with a
    /// secret file and a redirect URI.
    pub fn consumer_table(
        &self,
        name: &str,
        client_id: &str,
        secret_file: &std::path::Path,
        redirect_uri: &str,
    ) -> String {
        format!(
            "[consumers.{name}]\ntoken_url = \"{}\"\nauth_url = \"{}\"\nrevoke_url = \"{}\"\nclient_id = \"{client_id}\"\nclient_secret_file = \"{}\"\nredirect_uri = \"{redirect_uri}\"\n",
            self.token_url(),
            self.auth_url(),
            self.revoke_url(),
            secret_file.display()
        )
    }

    pub fn user_url(&self) -> String {
        format!("{}/api/user", self.base_url())
    }

    /// Registers a consumer (OAuth client).
    pub fn register_client(&self, client_id: &str, secret: &str) {
        self.lock().clients.insert(
            client_id.to_owned(),
            Client {
                secret: Some(secret.to_owned()),
            },
        );
    }

    pub fn behaviour(&self) -> Behaviour {
        self.lock().behaviour.clone()
    }

    /// Changes behaviour from now on (tokens already issued stay).
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        self.lock().behaviour = behaviour;
    }

    /// What a human approving in the browser produces: a one-use code, as
    /// if obtained by hand.
    pub fn issue_code(
        &self,
        client_id: &str,
        scopes: &[&str],
        redirect_uri: Option<&str>,
        challenge: Option<&str>,
    ) -> String {
        let code = random_text(24);
        self.lock().codes.insert(
            code.clone(),
            IssuedCode {
                client_id: client_id.to_owned(),
                redirect_uri: redirect_uri.map(str::to_owned),
                scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
                challenge: challenge.map(str::to_owned),
                used: false,
                offline: true,
            },
        );
        code
    }

    /// Injects `fault` into the next `count` token or revocation requests.
    pub fn fail_next(&self, count: usize, fault: Fault) {
        let mut state = self.lock();
        for _ in 0..count {
            state.faults.push_back(fault.clone());
        }
    }

    /// Injects `fault` into every request until `clear_faults`.
    pub fn fail_always(&self, fault: Fault) {
        self.lock().sticky_fault = Some(fault);
    }

    /// Holds the next token or revocation request when it arrives, before
    /// anything about it is decided, until the returned [`Hold`] is
    /// released or dropped.
    pub fn hold_next(&self) -> Hold {
        let (gate, hold) = held_gate();
        self.lock().holds.push_back(gate);
        hold
    }

    /// Decides the next token or revocation request at once (tokens
    /// issued, a rotated refresh token used up) and holds its answer until
    /// [`Hold::release`]; [`Hold::arrived`] returns once it is decided.
    pub fn hold_next_answer(&self) -> Hold {
        let (gate, hold) = held_gate();
        self.lock().answer_holds.push_back(gate);
        hold
    }

    /// Waits until no token or revocation request is being decided (one
    /// whose client went away is still decided, as a real provider would).
    pub async fn settled(&self) {
        while self.lock().deciding > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    pub fn clear_faults(&self) {
        let mut state = self.lock();
        state.faults.clear();
        state.sticky_fault = None;
    }

    pub fn counters(&self) -> Counters {
        self.lock().counters
    }

    pub fn last_request(&self) -> Option<RecordedRequest> {
        self.lock().last_request.clone()
    }

    /// Revokes the grant (installation) that `token` (access or refresh)
    /// belongs to, as a user removing the app at the provider would.
    /// Returns whether a grant was found.
    pub fn revoke_grant_of(&self, token: &str) -> bool {
        let mut state = self.lock();
        let grant = grant_of(&state, token);
        match grant {
            Some(grant) => {
                revoke_grant(&mut state, grant);
                true
            }
            None => false,
        }
    }

    /// Revokes one access token and nothing else (its refresh token still
    /// works), as a provider does when it ends sessions early.
    pub fn revoke_access_token(&self, token: &str) -> bool {
        match self.lock().access_tokens.get_mut(token) {
            Some(access) => {
                access.revoked = true;
                true
            }
            None => false,
        }
    }

    /// Bitbucket: changing a consumer's scopes revokes all its tokens.
    pub fn change_consumer_scopes(&self, client_id: &str) {
        let mut state = self.lock();
        let grants: Vec<u64> = (0..state.grants.len() as u64)
            .filter(|grant| state.grants[*grant as usize].client_id == client_id)
            .collect();
        for grant in grants {
            revoke_grant(&mut state, grant);
        }
        for access in state.access_tokens.values_mut() {
            if access.client_id == client_id {
                access.revoked = true;
            }
        }
    }

    /// Whether `token` would be accepted by the provider's API now.
    /// Serves the bare repositories under `root` at `/git/` to HTTP Basic
    /// with `username` and a valid access token (see `git.rs`).
    pub fn serve_git(&self, root: &std::path::Path, username: &str) {
        self.lock().git = Some(crate::git::GitServer {
            root: root.to_owned(),
            username: username.to_owned(),
            requests: Vec::new(),
        });
    }

    /// Every request the git server had, in order.
    pub fn git_requests(&self) -> Vec<crate::git::GitRequest> {
        self.lock()
            .git
            .as_ref()
            .map(|git| git.requests.clone())
            .unwrap_or_default()
    }

    /// A handle that tells whether an access token is live, for the
    /// resource servers beside the emulator (SMTP, registries, an API).
    pub fn checker(&self) -> TokenChecker {
        TokenChecker(Arc::clone(&self.state))
    }

    pub fn access_token_is_valid(&self, token: &str) -> bool {
        let state = self.lock();
        access_valid(&state, token)
    }

    /// Whether `token` is a refresh token the provider would still accept.
    pub fn refresh_token_is_valid(&self, token: &str) -> bool {
        let state = self.lock();
        let behaviour = state.behaviour.clone();
        refresh_usable(&state, &behaviour, token)
    }

    /// The refresh token that a rotation issued in place of `token`.
    pub fn successor_of(&self, token: &str) -> Option<String> {
        self.lock().refresh_tokens.get(token)?.successor.clone()
    }

    /// How many grants (installations) were ever created.
    pub fn grant_count(&self) -> usize {
        self.lock().grants.len()
    }

    /// Scopes of the grant `token` belongs to.
    pub fn scopes_of(&self, token: &str) -> Option<Vec<String>> {
        let state = self.lock();
        let grant = grant_of(&state, token)?;
        Some(state.grants[grant as usize].scopes.clone())
    }
}

/// The grant an access or refresh token belongs to.
fn grant_of(state: &State, token: &str) -> Option<u64> {
    state
        .refresh_tokens
        .get(token)
        .map(|refresh| refresh.grant)
        .or_else(|| {
            state
                .access_tokens
                .get(token)
                .and_then(|access| access.grant)
        })
}

fn revoke_grant(state: &mut State, grant: u64) {
    state.grants[grant as usize].revoked = true;
    for refresh in state.refresh_tokens.values_mut() {
        if refresh.grant == grant {
            refresh.revoked = true;
        }
    }
    for access in state.access_tokens.values_mut() {
        if access.grant == Some(grant) {
            access.revoked = true;
        }
    }
}

fn access_valid(state: &State, token: &str) -> bool {
    state.access_tokens.get(token).is_some_and(|access| {
        !access.revoked
            && access.expires > Instant::now()
            && access
                .grant
                .is_none_or(|grant| !state.grants[grant as usize].revoked)
    })
}

fn refresh_usable(state: &State, behaviour: &Behaviour, token: &str) -> bool {
    let Some(refresh) = state.refresh_tokens.get(token) else {
        return false;
    };
    if refresh.revoked || state.grants[refresh.grant as usize].revoked {
        return false;
    }
    if !refresh.superseded {
        return true;
    }
    match behaviour.rotation {
        Rotation::Never => true,
        Rotation::Strict => false,
        Rotation::Grace(window) => refresh
            .first_used
            .is_some_and(|first| first.elapsed() < window),
    }
}

async fn handle(state: Arc<Mutex<State>>, request: Request<Incoming>) -> HttpResponse {
    let lock = || {
        state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    };
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    match (method.as_str(), path.as_str()) {
        ("GET", "/authorize") => {
            let query = request.uri().query().unwrap_or("").to_owned();
            authorize(&mut lock(), &query)
        }
        ("GET", "/api/user") => {
            let bearer = request
                .headers()
                .get(hyper::header::AUTHORIZATION)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.strip_prefix("Bearer "))
                .map(str::to_owned);
            match bearer {
                Some(token) if access_valid(&lock(), &token) => {
                    json_response(200, json!({"ok": true}))
                }
                _ => oauth_error(401, "invalid_token", "Access token expired or revoked"),
            }
        }
        ("GET", _) if path.starts_with("/git/") => {
            let authorization = request
                .headers()
                .get(hyper::header::AUTHORIZATION)
                .and_then(|value| value.to_str().ok());
            git_answer(&mut lock(), &path["/git/".len()..], authorization)
        }
        ("GET", "/.well-known/oauth-authorization-server")
        | ("GET", "/.well-known/openid-configuration") => discovery_document(&mut lock(), &path),
        ("POST", _) if path == "/device" => {
            let recorded = record(request).await;
            device_authorization(&mut lock(), &recorded)
        }
        ("POST", _) if path == lock().token_path || path == "/revoke" => {
            let recorded = record(request).await;
            // Decided in a task of its own: a client that gives up (a
            // timeout) does not stop the provider from acting, as with a
            // real one that rotates a refresh token nobody reads.
            let (state, path) = (Arc::clone(&state), path.clone());
            lock().deciding += 1;
            let decided = tokio::spawn(async move {
                let response = decide(Arc::clone(&state), &path, recorded).await;
                state
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .deciding -= 1;
                response
            });
            decided
                .await
                .unwrap_or_else(|_| respond(500, "text/plain", "the emulator failed"))
        }
        _ => respond(
            404,
            "text/html",
            "<html><body><h1>404 Not Found</h1></body></html>",
        ),
    }
}

/// A request to the git server (see `git.rs`).
fn git_answer(state: &mut State, path: &str, authorization: Option<&str>) -> HttpResponse {
    let credentials = crate::git::basic_credentials(authorization);
    let accepted = credentials.as_ref().is_some_and(|(user, password)| {
        state.git.as_ref().is_some_and(|git| *user == git.username) && access_valid(state, password)
    });
    let Some(git) = state.git.as_mut() else {
        return respond(404, "text/plain", "no git server");
    };
    git.requests.push(crate::git::GitRequest {
        path: path.to_owned(),
        username: credentials.as_ref().map(|(user, _)| user.clone()),
        password: credentials.map(|(_, password)| password),
        accepted,
    });
    if !accepted {
        let mut response = respond(401, "text/plain", "authentication required");
        response.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            "Basic realm=\"emulated git\"".parse().expect("valid"),
        );
        return response;
    }
    match crate::git::file_in(&git.root, path).map(std::fs::read) {
        Some(Ok(bytes)) => respond(200, "application/octet-stream", bytes),
        _ => respond(404, "text/plain", "not found"),
    }
}

async fn decide(state: Arc<Mutex<State>>, path: &str, recorded: RecordedRequest) -> HttpResponse {
    let lock = || {
        state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    };
    let hold = lock().holds.pop_front();
    if let Some(HeldGate { arrived, release }) = hold {
        let _ = arrived.send(());
        let _ = release.await;
    }
    let fault = {
        let mut state = lock();
        state.last_request = Some(recorded.clone());
        state
            .faults
            .pop_front()
            .or_else(|| state.sticky_fault.clone())
    };
    let mut mangle = None;
    if let Some(fault) = fault {
        if !fault.delay.is_zero() {
            tokio::time::sleep(fault.delay).await;
        }
        if let Some((status, body)) = fault.answer {
            lock().counters.refused += 1;
            return fault_response(status, &body, fault.retry_after.as_deref(), &recorded);
        }
        mangle = fault.mangle;
    }
    let (response, answer_hold) = {
        let mut state = lock();
        let response = if path == "/revoke" {
            revoke(&mut state, &recorded)
        } else {
            token(&mut state, &recorded)
        };
        (response, state.answer_holds.pop_front())
    };
    if let Some(HeldGate { arrived, release }) = answer_hold {
        let _ = arrived.send(());
        let _ = release.await;
    }
    match mangle {
        Some(mangle) => mangled(response, mangle).await,
        None => response,
    }
}

/// The real answer with its body changed as `mangle` says.
async fn mangled(response: HttpResponse, mangle: Mangle) -> HttpResponse {
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|collected| collected.to_bytes().to_vec())
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body).into_owned();
    let changed: Vec<u8> = match mangle {
        Mangle::Bom => [b"\xEF\xBB\xBF".as_slice(), &body].concat(),
        Mangle::TrailingBytes => format!("{text}garbage}}").into_bytes(),
        Mangle::HtmlWrapped => format!("<html><body><pre>{text}</pre></body></html>").into_bytes(),
        Mangle::NumericAccessToken => {
            let mut value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            value["access_token"] = json!(12345);
            value.to_string().into_bytes()
        }
        Mangle::HostileScope => {
            let mut value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let scopes = value["scope"].as_str().unwrap_or_default().to_owned();
            value["scope"] = json!(format!(
                "{scopes} \u{1b}]0;owned\u{7} \u{1b}[2J \u{1b}]8;;https://evil.example\u{1b}\\link \u{202E}nimda"
            ));
            value.to_string().into_bytes()
        }
        Mangle::HeaderInAccessToken => {
            let mut value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let token = value["access_token"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            value["access_token"] = json!(format!("{token}\r\nX-Injected: yes"));
            value.to_string().into_bytes()
        }
    };
    respond(status, "application/json", changed)
}

fn fault_response(
    status: u16,
    body: &FaultBody,
    retry_after: Option<&str>,
    request: &RecordedRequest,
) -> HttpResponse {
    let mut response = match body {
        FaultBody::Html => respond(
            status,
            "text/html",
            format!(
                "<html><head><title>{status} Bad Gateway</title></head><body><center><h1>{status} Bad Gateway</h1></center><hr><center>nginx</center></body></html>"
            ),
        ),
        FaultBody::Empty => respond(status, "text/plain", ""),
        FaultBody::Garbage => respond(
            status,
            "application/json",
            Bytes::from_static(b"\x00\xff{{\"acc"),
        ),
        FaultBody::Json(text) => respond(status, "application/json", text.clone()),
        FaultBody::Echo => oauth_error(
            status,
            "invalid_request",
            &format!(
                "could not use {} with {}",
                request.raw_body,
                request
                    .authorization
                    .as_deref()
                    .unwrap_or("no authorization")
            ),
        ),
        FaultBody::Redirect(location) => {
            let mut response = respond(status, "text/html", "");
            response.headers_mut().insert(
                hyper::header::LOCATION,
                location.parse().expect("valid location"),
            );
            response
        }
    };
    if let Some(value) = retry_after {
        response.headers_mut().insert(
            hyper::header::RETRY_AFTER,
            value.parse().expect("valid header"),
        );
    }
    response
}

async fn record(request: Request<Incoming>) -> RecordedRequest {
    let header = |name: hyper::header::HeaderName| {
        request
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = header(hyper::header::CONTENT_TYPE);
    let accept = header(hyper::header::ACCEPT);
    let authorization = header(hyper::header::AUTHORIZATION);
    let basic = header(hyper::header::AUTHORIZATION)
        .and_then(|value| value.strip_prefix("Basic ").map(str::to_owned))
        .and_then(|encoded| STANDARD.decode(encoded).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| {
            let (id, secret) = text.split_once(':')?;
            let decode = |part: &str| {
                url::form_urlencoded::parse(format!("x={part}").as_bytes())
                    .next()
                    .map(|(_, value)| value.into_owned())
                    .unwrap_or_default()
            };
            Some((decode(id), decode(secret)))
        });
    let body = request
        .into_body()
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .unwrap_or_default();
    let is_form = content_type
        .as_deref()
        .is_some_and(|value| value.starts_with("application/x-www-form-urlencoded"));
    let form = if is_form {
        url::form_urlencoded::parse(&body).into_owned().collect()
    } else {
        Vec::new()
    };
    RecordedRequest {
        content_type,
        accept,
        basic,
        form,
        authorization,
        raw_body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn authorize(state: &mut State, query: &str) -> HttpResponse {
    let params: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let get = |key: &str| params.get(key).map(String::as_str);
    if get("response_type") != Some("code") {
        return respond(
            400,
            "text/html",
            "<html><body>unsupported response_type</body></html>",
        );
    }
    let Some(client_id) = get("client_id").filter(|id| state.clients.contains_key(*id)) else {
        return respond(
            400,
            "text/html",
            "<html><body>Invalid client_id</body></html>",
        );
    };
    let Some(redirect_uri) = get("redirect_uri") else {
        return respond(
            400,
            "text/html",
            "<html><body>redirect_uri required</body></html>",
        );
    };
    if get("code_challenge").is_some() && get("code_challenge_method") != Some("S256") {
        return respond(
            400,
            "text/html",
            "<html><body>only S256 is supported</body></html>",
        );
    }
    let scopes: Vec<String> = get("scope")
        .unwrap_or("")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let has = |(key, value): &(&str, &str)| match *key {
        "scope" => scopes.iter().any(|scope| scope == value),
        key => get(key) == Some(*value),
    };
    if let Some((key, value)) = state
        .behaviour
        .required_auth_params
        .iter()
        .find(|needed| !has(needed))
    {
        return respond(
            400,
            "text/html",
            format!("<html><body>{key}={value} is required</body></html>"),
        );
    }
    let offline = state.behaviour.offline_needs.iter().all(has);
    let code = random_text(24);
    state.codes.insert(
        code.clone(),
        IssuedCode {
            client_id: client_id.to_owned(),
            redirect_uri: Some(redirect_uri.to_owned()),
            scopes: get("scope")
                .unwrap_or("")
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
            challenge: get("code_challenge").map(str::to_owned),
            used: false,
            offline,
        },
    );
    let mut location = match url::Url::parse(redirect_uri) {
        Ok(url) => url,
        Err(_) => {
            return respond(
                400,
                "text/html",
                "<html><body>bad redirect_uri</body></html>",
            );
        }
    };
    location.query_pairs_mut().append_pair("code", &code);
    if let Some(client_state) = get("state") {
        location
            .query_pairs_mut()
            .append_pair("state", client_state);
    }
    let mut response = respond(302, "text/html", "");
    response.headers_mut().insert(
        hyper::header::LOCATION,
        location.as_str().parse().expect("valid location"),
    );
    response
}

/// Checks client authentication as the behaviour demands; returns the
/// client id or the refusal.
fn authenticate(state: &State, request: &RecordedRequest) -> Result<String, Box<HttpResponse>> {
    let accepted = state.behaviour.accepted_auth;
    let from_body = request.form_value("client_secret").map(|secret| {
        (
            request.form_value("client_id").unwrap_or("").to_owned(),
            secret.to_owned(),
        )
    });
    let presented = match (accepted, &request.basic, from_body) {
        (AcceptedAuth::Basic | AcceptedAuth::Either, Some(basic), _) => Some(basic.clone()),
        (AcceptedAuth::Post | AcceptedAuth::Either, _, Some(body)) => Some(body),
        _ => None,
    };
    let Some((client_id, secret)) = presented else {
        let how = match accepted {
            AcceptedAuth::Basic => "HTTP Basic",
            AcceptedAuth::Post => "client_secret_post",
            AcceptedAuth::Either => "HTTP Basic or client_secret_post",
        };
        return Err(Box::new(oauth_error(
            401,
            "invalid_client",
            &format!("Client authentication failed: use {how}"),
        )));
    };
    match state.clients.get(&client_id) {
        Some(client) if client.secret.as_deref() == Some(secret.as_str()) => Ok(client_id),
        _ => Err(Box::new(oauth_error(
            401,
            "invalid_client",
            "Client authentication failed",
        ))),
    }
}

/// A public client names itself in the body and has no secret; anything
/// else authenticates as usual.
fn identify(state: &State, request: &RecordedRequest) -> Result<String, Box<HttpResponse>> {
    if request.basic.is_none()
        && request.form_value("client_secret").is_none()
        && let Some(client_id) = request.form_value("client_id")
        && state
            .clients
            .get(client_id)
            .is_some_and(|client| client.secret.is_none())
    {
        return Ok(client_id.to_owned());
    }
    authenticate(state, request)
}

fn discovery_document(state: &mut State, path: &str) -> HttpResponse {
    let served = match path {
        "/.well-known/oauth-authorization-server" => state.well_known.rfc8414,
        _ => state.well_known.openid,
    };
    if !served {
        return respond(404, "text/html", "<html><body>404</body></html>");
    }
    state.counters.discovery += 1;
    let base = &state.base;
    let issuer = state
        .well_known
        .issuer
        .clone()
        .unwrap_or_else(|| base.clone());
    let mut document = json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{base}/authorize"),
        "token_endpoint": format!("{base}{}", state.token_path),
        "device_authorization_endpoint": format!("{base}/device"),
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials",
            "urn:ietf:params:oauth:grant-type:device_code"],
        "code_challenge_methods_supported": ["S256"],
    });
    let methods = match state.behaviour.accepted_auth {
        AcceptedAuth::Basic => json!(["client_secret_basic"]),
        AcceptedAuth::Post => json!(["client_secret_post"]),
        AcceptedAuth::Either => json!(["client_secret_basic", "client_secret_post"]),
    };
    document["token_endpoint_auth_methods_supported"] = methods;
    if state.behaviour.revocation {
        document["revocation_endpoint"] = json!(format!("{base}/revoke"));
    }
    json_response(200, document)
}

fn device_authorization(state: &mut State, request: &RecordedRequest) -> HttpResponse {
    if state.behaviour.device_needs_client_id_in_body && request.form_value("client_id").is_none() {
        return oauth_error(400, "invalid_request", "Missing client_id parameter.");
    }
    let client_id = match identify(state, request) {
        Ok(client_id) => client_id,
        Err(refusal) => return *refusal,
    };
    state.counters.device_codes += 1;
    let device_code = random_text(32);
    let letters: String = random_text(16)
        .chars()
        .filter(char::is_ascii_alphabetic)
        .map(|c| c.to_ascii_uppercase())
        .take(8)
        .collect();
    let user_code = format!(
        "{}-{}",
        &letters[..4.min(letters.len())],
        &letters[4.min(letters.len())..]
    );
    let scopes = request.scopes();
    let behaviour = &state.behaviour;
    let (interval, expires_in) = (behaviour.device_interval, behaviour.device_expires_in);
    state.devices.insert(
        device_code.clone(),
        DeviceGrant {
            client_id,
            scopes,
            user_code: user_code.clone(),
            decision: None,
            expires: Instant::now() + expires_in,
            interval,
            last_poll: None,
            used: false,
        },
    );
    let verification = format!("{}/activate", state.base);
    json_response(
        200,
        json!({
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": verification,
            "verification_uri_complete": format!("{verification}?user_code={user_code}"),
            "expires_in": expires_in.as_secs(),
            "interval": interval.as_secs(),
        }),
    )
}

fn poll_device(state: &mut State, request: &RecordedRequest, client_id: &str) -> HttpResponse {
    state.counters.device_polls += 1;
    let Some(code) = request.form_value("device_code") else {
        return oauth_error(400, "invalid_request", "Missing device_code");
    };
    let slow_down = state.slow_downs > 0;
    if slow_down {
        state.slow_downs -= 1;
    }
    let now = Instant::now();
    let Some(device) = state.devices.get_mut(code) else {
        return oauth_error(400, "invalid_grant", "Unknown device_code");
    };
    if device.client_id != client_id || device.used {
        return oauth_error(400, "invalid_grant", "Unknown device_code");
    }
    if now >= device.expires {
        return oauth_error(400, "expired_token", "The device code has expired");
    }
    // RFC 8628 §3.5: polling faster than asked gets slow_down, and the
    // interval grows by 5 s (a little slack for the client's timers).
    let too_soon = device.last_poll.is_some_and(|last| {
        now.duration_since(last) + std::time::Duration::from_millis(500) < device.interval
    });
    device.last_poll = Some(now);
    if too_soon || slow_down {
        device.interval += std::time::Duration::from_secs(5);
        if too_soon {
            state.counters.device_polls_too_soon += 1;
        }
        return oauth_error(400, "slow_down", "Polling too fast");
    }
    match device.decision {
        None => oauth_error(
            400,
            "authorization_pending",
            "The user has not answered yet",
        ),
        Some(false) => oauth_error(400, "access_denied", "The user refused"),
        Some(true) => {
            device.used = true;
            let scopes = device.scopes.clone();
            let grant = open_grant(state, client_id, &scopes);
            let refresh = issue_refresh(state, grant);
            let access = issue_access(state, Some(grant), client_id);
            token_body(state, &access, Some(&refresh), &scopes)
        }
    }
}

fn token(state: &mut State, request: &RecordedRequest) -> HttpResponse {
    let is_form = request
        .content_type
        .as_deref()
        .is_some_and(|value| value.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        state.counters.refused += 1;
        let status = state.behaviour.non_form_status;
        return oauth_error(
            status,
            "invalid_request",
            "The request body must be application/x-www-form-urlencoded",
        );
    }
    let client_id = match identify(state, request) {
        Ok(client_id) => client_id,
        Err(refusal) => {
            state.counters.refused += 1;
            return *refusal;
        }
    };
    match request.form_value("grant_type") {
        Some("urn:ietf:params:oauth:grant-type:device_code") => {
            poll_device(state, request, &client_id)
        }
        Some("authorization_code") => {
            state.counters.authorization_code += 1;
            exchange_code(state, request, &client_id)
        }
        Some("refresh_token") => {
            state.counters.refresh_token += 1;
            use_refresh_token(state, request, &client_id)
        }
        Some("client_credentials") => {
            state.counters.client_credentials += 1;
            let scopes = request.scopes();
            if state.behaviour.refresh_with_client_credentials {
                let grant = open_grant(state, &client_id, &scopes);
                let refresh = issue_refresh(state, grant);
                let access = issue_access(state, Some(grant), &client_id);
                return token_body(state, &access, Some(&refresh), &scopes);
            }
            let access = issue_access(state, None, &client_id);
            token_body(state, &access, None, &scopes)
        }
        _ => {
            state.counters.refused += 1;
            oauth_error(400, "unsupported_grant_type", "Unsupported grant type")
        }
    }
}

fn exchange_code(state: &mut State, request: &RecordedRequest, client_id: &str) -> HttpResponse {
    let Some(code) = request.form_value("code") else {
        return oauth_error(400, "invalid_request", "Missing code");
    };
    let Some(issued) = state.codes.get_mut(code) else {
        return oauth_error(400, "invalid_grant", "The specified code is not valid.");
    };
    if issued.used || issued.client_id != client_id {
        return oauth_error(400, "invalid_grant", "The specified code is not valid.");
    }
    // One use, whatever happens next.
    issued.used = true;
    if issued.redirect_uri.is_some()
        && issued.redirect_uri.as_deref() != request.form_value("redirect_uri")
    {
        return oauth_error(
            400,
            "invalid_grant",
            "redirect_uri does not match the authorization request",
        );
    }
    if let Some(challenge) = issued.challenge.clone() {
        let Some(verifier) = request.form_value("code_verifier") else {
            return oauth_error(400, "invalid_grant", "code_verifier required");
        };
        let digest = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
        if URL_SAFE_NO_PAD.encode(digest.as_ref()) != challenge {
            return oauth_error(400, "invalid_grant", "PKCE verification failed");
        }
    }
    let scopes = issued.scopes.clone();
    let offline = issued.offline;
    let grant = open_grant(state, client_id, &scopes);
    let refresh = offline.then(|| issue_refresh(state, grant));
    let access = issue_access(state, Some(grant), client_id);
    token_body(state, &access, refresh.as_deref(), &scopes)
}

fn use_refresh_token(
    state: &mut State,
    request: &RecordedRequest,
    client_id: &str,
) -> HttpResponse {
    let behaviour = state.behaviour.clone();
    let dead = |behaviour: &Behaviour| match behaviour.dead_refresh {
        DeadRefreshAnswer::InvalidGrant => {
            oauth_error(400, "invalid_grant", "Invalid refresh token")
        }
        DeadRefreshAnswer::BitbucketInvalidRequest => {
            oauth_error(400, "invalid_request", "Invalid refresh_token")
        }
    };
    let Some(presented) = request.form_value("refresh_token") else {
        return oauth_error(400, "invalid_request", "Missing refresh_token");
    };
    if !refresh_usable(state, &behaviour, presented) {
        return dead(&behaviour);
    }
    let grant = state.refresh_tokens[presented].grant;
    if state.grants[grant as usize].client_id != client_id {
        return dead(&behaviour);
    }
    let refresh = match behaviour.rotation {
        Rotation::Never => presented.to_owned(),
        Rotation::Strict | Rotation::Grace(_) => {
            let old = state
                .refresh_tokens
                .get_mut(presented)
                .expect("checked above");
            old.superseded = true;
            old.first_used.get_or_insert_with(Instant::now);
            let new = issue_refresh(state, grant);
            if let Some(old) = state.refresh_tokens.get_mut(presented) {
                old.successor = Some(new.clone());
            }
            new
        }
    };
    if behaviour.rotation != Rotation::Never && behaviour.revoke_access_on_rotation {
        for access in state.access_tokens.values_mut() {
            if access.grant == Some(grant) {
                access.revoked = true;
            }
        }
    }
    let scopes = state.grants[grant as usize].scopes.clone();
    let access = issue_access(state, Some(grant), client_id);
    token_body(state, &access, Some(&refresh), &scopes)
}

fn revoke(state: &mut State, request: &RecordedRequest) -> HttpResponse {
    if !state.behaviour.revocation {
        return respond(
            404,
            "text/html",
            "<html><body><h1>404 Not Found</h1></body></html>",
        );
    }
    if let Err(refusal) = authenticate(state, request) {
        return *refusal;
    }
    state.counters.revoke += 1;
    let Some(token) = request.form_value("token") else {
        return oauth_error(400, "invalid_request", "Missing token");
    };
    if let Some(refresh) = state.refresh_tokens.get(token) {
        // Revoking a refresh token ends its grant (RFC 7009 §2.1).
        let grant = refresh.grant;
        revoke_grant(state, grant);
    } else if let Some(access) = state.access_tokens.get_mut(token) {
        access.revoked = true;
    }
    // RFC 7009 §2.2: 200 whether or not the token was known.
    respond(200, "application/json", "")
}

/// A new grant of `scopes` to `client_id`; its number.
fn open_grant(state: &mut State, client_id: &str, scopes: &[String]) -> u64 {
    state.grants.push(Grant {
        client_id: client_id.to_owned(),
        scopes: scopes.to_vec(),
        revoked: false,
    });
    state.grants.len() as u64 - 1
}

fn issue_refresh(state: &mut State, grant: u64) -> String {
    let token = random_text(state.behaviour.token_length);
    state.refresh_tokens.insert(
        token.clone(),
        RefreshState {
            grant,
            first_used: None,
            superseded: false,
            successor: None,
            revoked: false,
        },
    );
    token
}

fn issue_access(state: &mut State, grant: Option<u64>, client_id: &str) -> String {
    let token = random_text(state.behaviour.token_length);
    state.access_tokens.insert(
        token.clone(),
        AccessState {
            grant,
            client_id: client_id.to_owned(),
            expires: Instant::now() + state.behaviour.access_lifetime,
            revoked: false,
        },
    );
    token
}

fn token_body(
    state: &State,
    access: &str,
    refresh: Option<&str>,
    scopes: &[String],
) -> HttpResponse {
    let behaviour = &state.behaviour;
    let mut body = serde_json::Map::new();
    body.insert("access_token".into(), json!(access));
    body.insert("token_type".into(), json!(behaviour.token_type));
    if !behaviour.omit_expires_in {
        let seconds = behaviour.expires_in_sent.unwrap_or_else(|| {
            i64::try_from(behaviour.access_lifetime.as_secs()).unwrap_or(i64::MAX)
        });
        let value = if behaviour.expires_in_as_string {
            json!(seconds.to_string())
        } else {
            json!(seconds)
        };
        body.insert("expires_in".into(), value);
    }
    if let Some(refresh) = refresh {
        body.insert("refresh_token".into(), json!(refresh));
    }
    body.insert(behaviour.scope_field.into(), json!(scopes.join(" ")));
    // Providers add fields of their own; clients must ignore them.
    body.insert("x_emulator".into(), json!(behaviour.name));
    json_response(200, Value::Object(body))
}
