//! The daemon's core: installations, their tokens and states, single-flight
//! refreshes, logins, revocation and reload. Knows nothing of D-Bus: the
//! bus layer (`bus.rs`) calls these methods and turns [`Event`]s into
//! signals.
//!
//! Concurrency, per installation ([`Slot`]):
//! - `inner` (a std mutex, never held across an await) holds the record,
//!   the state and a counter of finished attempts;
//! - `flight` (a tokio mutex) is held for the whole of one request to the
//!   provider. A caller that needs a new token notes the attempt counter,
//!   takes `flight`, and if an attempt finished meanwhile takes that
//!   attempt's result instead of making another request. So any number of
//!   concurrent gets and the scheduler share one request.
//! - The request runs in a spawned task that owns the `flight` guard: a
//!   caller that goes away cannot cut a rotation between the provider's
//!   answer and the write to disk.
//! - No lock is shared between installations except the name map, which is
//!   only read for a lookup.

use crate::config::{self, Config, Consumer, Grant, Installation};
use crate::login::{self, Logins};
use crate::oauth::{self, ErrorKind, OAuthClient, OAuthError, Pkce, RevocableToken, TokenResponse};
use crate::schedule::{self, Clock, Queue, lock};
use crate::secret::{AccessToken, AuthorizationCode, PkceVerifier, RefreshToken};
use crate::store::{Loaded, Record, Store};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokd_shared::{InstallationInfo, InstallationState};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{debug, error, info, warn};
use url::Url;

/// The largest `min_valid` a caller may ask for.
pub const MAX_MIN_VALID: Duration = Duration::from_secs(24 * 3600);
/// The longest code accepted from a caller.
const MAX_CODE_LEN: usize = 4096;
/// How long shutdown waits for requests already sent to a provider. Longer
/// than a request's own timeout, so that one always finishes and its
/// rotated refresh token is written.
pub const SHUTDOWN_BOUND: Duration = Duration::from_secs(35);
/// Retries of a failed state write: the first delay, doubled up to the cap.
const SAVE_RETRY_FIRST: Duration = Duration::from_secs(1);
const SAVE_RETRY_CAP: Duration = Duration::from_secs(60);

/// Something clients may want to hear about; the bus layer emits each as a
/// signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    TokenRefreshed {
        name: String,
        expires_at: Option<SystemTime>,
    },
    StateChanged {
        name: String,
        state: InstallationState,
        message: String,
    },
    LoginFinished {
        name: String,
        success: bool,
        message: String,
    },
}

/// Why a call failed, with one sentence that says what to do. Never holds a
/// secret: provider texts are sanitized and scrubbed by the OAuth client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    UnknownInstallation(String),
    #[error("{0}")]
    NeedsLogin(String),
    #[error("{0}")]
    Misconfigured(String),
    #[error("{0}")]
    ProviderUnavailable(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Stopping(String),
}

impl From<ServeError> for tokd_shared::Error {
    fn from(error: ServeError) -> Self {
        match error {
            ServeError::UnknownInstallation(m) => Self::UnknownInstallation(m),
            ServeError::NeedsLogin(m) => Self::NeedsLogin(m),
            ServeError::Misconfigured(m) => Self::Misconfigured(m),
            ServeError::ProviderUnavailable(m) => Self::ProviderUnavailable(m),
            ServeError::InvalidArgument(m) => Self::InvalidArgument(m),
            ServeError::Stopping(m) => Self::Stopping(m),
        }
    }
}

/// An access token handed to a caller.
#[derive(Debug, Clone)]
pub struct Token {
    pub access_token: AccessToken,
    pub expires_at: Option<SystemTime>,
    pub token_type: String,
    /// Set when the token is valid for less than was asked because the
    /// provider is failing: one sentence for the caller's stderr.
    pub warning: Option<String>,
}

impl Token {
    fn with_warning(mut self, now: SystemTime, min_valid: Duration, failure: &str) -> Self {
        let left = self
            .expires_at
            .and_then(|at| at.duration_since(now).ok())
            .map(|d| humantime::format_duration(Duration::from_secs(d.as_secs())).to_string());
        self.warning = Some(format!(
            "this token is valid for {} only, less than the {} asked for: {failure}",
            left.unwrap_or_else(|| "a moment".to_owned()),
            humantime::format_duration(min_valid)
        ));
        self
    }
}

/// What an installation is configured as; replaced on reload.
#[derive(Debug)]
pub(crate) struct Spec {
    pub installation: Arc<Installation>,
    pub consumer: Arc<Consumer>,
}

impl Spec {
    /// Whom tokens obtained under this spec belong to: client, token
    /// endpoint, grant and scopes. Stored with the tokens.
    fn identity(&self) -> String {
        format!(
            "{} {} {} {}",
            self.consumer.client_id,
            self.consumer.token_url,
            self.installation.grant.as_str(),
            self.installation.scopes.join(" ")
        )
    }

    /// Whether a token obtained under `other` is still good under `self`.
    fn same_identity(&self, other: &Spec) -> bool {
        self.identity() == other.identity()
    }
}

/// One installation at run time.
#[derive(Debug)]
pub(crate) struct Slot {
    /// Shared with the slots map's key.
    pub name: Arc<str>,
    spec: Mutex<Arc<Spec>>,
    inner: Mutex<Inner>,
    flight: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Debug)]
struct Inner {
    record: Record,
    state: InstallationState,
    message: String,
    /// Transient failures in a row.
    failures: u32,
    /// When the next try after a transient failure is allowed.
    retry_at: Option<SystemTime>,
    /// What the last transient failure was, for messages.
    failure: String,
    /// Attempts finished so far, and the result of the last one.
    attempts: u64,
    last_outcome: Result<(), ServeError>,
    /// The record in memory is newer than the file: a write failed and is
    /// being retried.
    unsaved: bool,
}

impl Inner {
    fn token_valid_for(&self, now: SystemTime, min_valid: Duration) -> Option<Token> {
        let access_token = self.record.access_token.clone()?;
        if let Some(expires_at) = self.record.expires_at
            && expires_at < now + min_valid
        {
            return None;
        }
        Some(Token {
            access_token,
            expires_at: self.record.expires_at,
            token_type: self
                .record
                .token_type
                .clone()
                .unwrap_or_else(|| "bearer".to_owned()),
            warning: None,
        })
    }
}

impl Slot {
    fn new(spec: Arc<Spec>, record: Record, state: InstallationState, message: String) -> Self {
        Self {
            name: Arc::from(spec.installation.name.as_str()),
            spec: Mutex::new(spec),
            inner: Mutex::new(Inner {
                record,
                state,
                message,
                failures: 0,
                retry_at: None,
                failure: String::new(),
                attempts: 0,
                last_outcome: Ok(()),
                unsaved: false,
            }),
            flight: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    pub(crate) fn spec(&self) -> Arc<Spec> {
        lock(&self.spec).clone()
    }
}

/// The daemon's state. Shared as `Arc<Daemon>` by the bus layer, the
/// scheduler and the login listener.
#[derive(Debug)]
pub struct Daemon {
    config_path: Option<PathBuf>,
    config: RwLock<Arc<Config>>,
    slots: RwLock<BTreeMap<Arc<str>, Arc<Slot>>>,
    store: Store,
    http: OAuthClient,
    events: UnboundedSender<Event>,
    queue: Arc<Queue>,
    pub(crate) logins: Logins,
    cron: tokio::sync::Mutex<Option<Cron>>,
    clock: Clock,
    /// Set by [`Daemon::shutdown`]: no new request to a provider starts.
    stopping: AtomicBool,
    this: Weak<Daemon>,
}

/// How a daemon tells time; tests replace the defaults.
#[derive(Debug, Clone)]
pub struct Options {
    /// The wall clock expiry is judged by.
    pub clock: Clock,
    /// The longest the scheduler sleeps before reading the clock again.
    pub check_cap: Duration,
    /// How long a login may wait for the provider's answer.
    pub login_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            clock: Clock::default(),
            check_cap: schedule::CHECK_CAP,
            login_timeout: login::LOGIN_TIMEOUT,
        }
    }
}

impl Daemon {
    /// Loads every installation's record and starts the scheduler.
    /// `config_path` is what `reload` re-reads (`None`: reload refuses).
    pub async fn start(
        config: Config,
        config_path: Option<PathBuf>,
        store: Store,
        http: OAuthClient,
        events: UnboundedSender<Event>,
    ) -> Arc<Self> {
        Self::start_with(config, config_path, store, http, events, Options::default()).await
    }

    /// As [`Daemon::start`], with a given clock and scheduler cap.
    pub async fn start_with(
        config: Config,
        config_path: Option<PathBuf>,
        store: Store,
        http: OAuthClient,
        events: UnboundedSender<Event>,
        options: Options,
    ) -> Arc<Self> {
        // The specs first, so that the config moves in rather than being
        // copied: with 10,000 installations a copy is megabytes.
        let specs = specs_of(&config);
        let daemon = Arc::new_cyclic(|this| Daemon {
            config_path,
            config: RwLock::new(Arc::new(config)),
            slots: RwLock::new(BTreeMap::new()),
            store,
            http,
            events,
            queue: Arc::new(Queue::new(options.clock.clone(), options.check_cap)),
            logins: Logins::new(options.login_timeout),
            cron: tokio::sync::Mutex::new(None),
            clock: options.clock,
            stopping: AtomicBool::new(false),
            this: this.clone(),
        });
        // At start nothing else runs yet, so the records are read right
        // here: on the runtime's thread, their memory comes from the main
        // heap rather than a second malloc arena for the blocking pool,
        // which with 10,000 installations cost about 3 MiB more RSS.
        let loaded = daemon
            .store
            .load_many(specs.iter().map(|spec| spec.installation.name.as_str()));
        let slots = specs
            .into_iter()
            .zip(loaded)
            .map(|(spec, loaded)| slot_from(spec, loaded.map_err(|e| e.to_string())))
            .map(|slot| (slot.name.clone(), Arc::new(slot)))
            .collect();
        *daemon.slots.write().unwrap_or_else(|e| e.into_inner()) = slots;
        for slot in daemon.all_slots() {
            daemon.schedule(&slot);
        }
        info!(
            installations = daemon.all_slots().len(),
            "installations loaded"
        );
        daemon
    }

    /// Starts refreshing on schedule (the due-time queue and the cron
    /// jobs). Called once the daemon owns its bus name, so that a second
    /// tokd that loses the name never touches a provider.
    pub async fn start_schedules(&self) {
        let config = self
            .config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        self.restart_cron(&config).await;
        let weak = self.this.clone();
        let queue = self.queue.clone();
        tokio::spawn(async move {
            queue
                .run(|name| {
                    if let Some(daemon) = weak.upgrade() {
                        tokio::spawn(async move { daemon.scheduled(&name).await });
                    }
                })
                .await;
        });
    }

    fn arc(&self) -> Arc<Daemon> {
        // `self` is always reached through the Arc built in `start`.
        self.this
            .upgrade()
            .expect("the daemon outlives its own calls")
    }

    /// Loads the records of `specs` from disk in one blocking task (on a
    /// reload, while calls are being answered).
    async fn load_slots(&self, specs: Vec<Arc<Spec>>) -> Vec<Slot> {
        let store = self.store.clone();
        let names: Vec<String> = specs.iter().map(|s| s.installation.name.clone()).collect();
        let loaded = tokio::task::spawn_blocking(move || {
            store
                .load_many(names.iter().map(String::as_str))
                .into_iter()
                .map(|loaded| loaded.map_err(|e| e.to_string()))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_else(|error| {
            error!(%error, "state loader failed");
            Vec::new()
        });
        let mut loaded = loaded.into_iter();
        specs
            .into_iter()
            .map(|spec| {
                let result = loaded
                    .next()
                    .unwrap_or_else(|| Err("the state loader failed".to_owned()));
                slot_from(spec, result)
            })
            .collect()
    }

    fn all_slots(&self) -> Vec<Arc<Slot>> {
        self.slots
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub(crate) fn slot(&self, name: &str) -> Result<Arc<Slot>, ServeError> {
        check_name(name)?;
        self.slots
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| {
                ServeError::UnknownInstallation(format!(
                    "no installation is named `{name}`; `tokctl list` shows the configured ones"
                ))
            })
    }

    fn margin(&self) -> Option<Duration> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .daemon
            .refresh_margin
    }

    pub(crate) fn emit(&self, event: Event) {
        // Nobody listening (tests without a bus) is fine.
        let _ = self.events.send(event);
    }

    fn set_state(&self, slot: &Slot, inner: &mut Inner, state: InstallationState, message: String) {
        let changed = inner.state != state || inner.message != message;
        inner.state = state;
        inner.message = message.clone();
        if changed {
            self.emit(Event::StateChanged {
                name: slot.name.to_string(),
                state,
                message,
            });
        }
    }

    /// Puts `slot` in the queue according to its state and token.
    fn schedule(&self, slot: &Slot) {
        let now = self.clock.now();
        let due = {
            let inner = lock(&slot.inner);
            match inner.state {
                InstallationState::Failing => inner.retry_at,
                InstallationState::Valid | InstallationState::Refreshing => {
                    match (inner.record.expires_at, inner.record.last_refresh) {
                        (Some(expires_at), obtained) => {
                            let obtained = obtained.unwrap_or(now).min(expires_at);
                            let due = schedule::refresh_due(
                                obtained,
                                expires_at,
                                self.margin(),
                                schedule::random_fraction(),
                            );
                            // Overdue after a restart or a suspend: soon,
                            // spread over a few seconds.
                            Some(if due <= now {
                                now + Duration::from_secs(5).mul_f64(schedule::random_fraction())
                            } else {
                                due
                            })
                        }
                        (None, _) => None,
                    }
                }
                _ => None,
            }
        };
        self.queue.set(&slot.name, due);
    }

    /// A token for `name` valid for at least `min_valid`, refreshing first
    /// when the held one expires sooner. After a refresh the newest token
    /// is returned even if its whole lifetime is shorter than `min_valid`.
    pub async fn get_token(&self, name: &str, min_valid: Duration) -> Result<Token, ServeError> {
        if min_valid > MAX_MIN_VALID {
            return Err(ServeError::InvalidArgument(format!(
                "a minimum validity of {} is more than any token lives; ask for at most 24h",
                humantime::format_duration(min_valid)
            )));
        }
        let slot = self.slot(name)?;
        let now = self.clock.now();
        let seen = {
            let inner = lock(&slot.inner);
            // A lost grant takes its access tokens with it at the provider
            // (revocation, Bitbucket's scope change): say so at once rather
            // than hand out a token that will be refused.
            if inner.state == InstallationState::NeedsLogin {
                return Err(ServeError::NeedsLogin(inner.message.clone()));
            }
            if let Some(token) = inner.token_valid_for(now, min_valid) {
                return Ok(token);
            }
            match self.refusal(&slot, &inner, now) {
                Ok(()) => {}
                // Backing off after a transient failure: the held token,
                // if it is valid at all, beats no token.
                Err(ServeError::ProviderUnavailable(message)) => {
                    return match inner.token_valid_for(now, Duration::ZERO) {
                        Some(token) => Ok(token.with_warning(now, min_valid, &message)),
                        None => Err(ServeError::ProviderUnavailable(message)),
                    };
                }
                Err(error) => return Err(error),
            }
            inner.attempts
        };
        let outcome = self.attempt_shared(&slot, seen).await;
        let now = self.clock.now();
        let inner = lock(&slot.inner);
        match (inner.token_valid_for(now, Duration::ZERO), outcome) {
            (Some(token), Ok(())) => Ok(token),
            // A transient failure (or a shutdown) with a token still valid:
            // serve it, saying why it is short.
            (
                Some(token),
                Err(ServeError::ProviderUnavailable(message) | ServeError::Stopping(message)),
            ) => Ok(token.with_warning(now, min_valid, &message)),
            (_, Err(error)) => Err(error),
            (None, Ok(())) => Err(no_token_error(&slot.spec())),
        }
    }

    /// Why a new token cannot be requested now, if it cannot.
    fn refusal(&self, slot: &Slot, inner: &Inner, now: SystemTime) -> Result<(), ServeError> {
        match inner.state {
            InstallationState::NeedsLogin => Err(ServeError::NeedsLogin(inner.message.clone())),
            InstallationState::Misconfigured => {
                Err(ServeError::Misconfigured(inner.message.clone()))
            }
            InstallationState::Failing if inner.retry_at.is_some_and(|at| at > now) => {
                let wait = inner
                    .retry_at
                    .and_then(|at| at.duration_since(now).ok())
                    .unwrap_or_default();
                Err(ServeError::ProviderUnavailable(failing_message(
                    &inner.failure,
                    wait,
                )))
            }
            _ => {
                let spec = slot.spec();
                if spec.installation.grant == Grant::AuthorizationCode
                    && inner.record.refresh_token.is_none()
                {
                    Err(no_token_error(&spec))
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Refreshes now on request (`tokctl refresh`), even after a failure.
    pub async fn refresh_now(&self, name: &str) -> Result<Option<SystemTime>, ServeError> {
        let slot = self.slot(name)?;
        let seen = {
            let inner = lock(&slot.inner);
            let spec = slot.spec();
            if spec.installation.grant == Grant::AuthorizationCode
                && inner.record.refresh_token.is_none()
            {
                return Err(no_token_error(&spec));
            }
            inner.attempts
        };
        self.attempt_shared(&slot, seen).await?;
        Ok(lock(&slot.inner).record.expires_at)
    }

    /// A refresh the queue or a cron schedule asked for.
    pub(crate) async fn scheduled(&self, name: &str) {
        let Ok(slot) = self.slot(name) else { return };
        let seen = {
            let inner = lock(&slot.inner);
            if self.refusal(&slot, &inner, self.clock.now()).is_err()
                && inner.state != InstallationState::Failing
            {
                debug!(installation = %name, state = %inner.state, "scheduled refresh skipped");
                return;
            }
            inner.attempts
        };
        debug!(installation = %name, "scheduled refresh");
        let _ = self.attempt_shared(&slot, seen).await;
    }

    /// Makes one request to the provider unless one finished since the
    /// caller saw `seen` attempts, in which case its result is shared.
    async fn attempt_shared(&self, slot: &Arc<Slot>, seen: u64) -> Result<(), ServeError> {
        let guard = self.flight(slot).await?;
        {
            let inner = lock(&slot.inner);
            if inner.attempts != seen {
                return inner.last_outcome.clone();
            }
        }
        let (daemon, slot) = (self.arc(), slot.clone());
        in_flight(guard, "refresh", async move { daemon.attempt(&slot).await }).await
    }

    /// Takes the installation's `flight` lock, unless tokd is stopping.
    async fn flight(&self, slot: &Slot) -> Result<tokio::sync::OwnedMutexGuard<()>, ServeError> {
        self.refuse_if_stopping()?;
        let guard = slot.flight.clone().lock_owned().await;
        // Checked again: shutdown may have begun while this call waited.
        self.refuse_if_stopping()?;
        Ok(guard)
    }

    fn refuse_if_stopping(&self) -> Result<(), ServeError> {
        if self.stopping.load(Ordering::SeqCst) {
            Err(ServeError::Stopping(
                "tokd is stopping and starts no new requests; run the command again in a moment"
                    .to_owned(),
            ))
        } else {
            Ok(())
        }
    }

    /// Stops for good: no new request to a provider starts (calls that
    /// need one get [`ServeError::Stopping`]; held tokens are still
    /// served), the scheduler and cron stop, and requests already sent are
    /// waited for, at most `bound`, so that a rotated refresh token is
    /// written before the process exits. Owed writes are tried once more.
    /// Returns the installations still busy when the bound ran out.
    pub async fn shutdown(&self, bound: Duration) -> Vec<String> {
        self.stopping.store(true, Ordering::SeqCst);
        self.queue.stop();
        if let Some(Cron(mut cron)) = self.cron.lock().await.take()
            && let Err(error) = cron.shutdown().await
        {
            warn!(%error, "cannot stop the cron scheduler");
        }
        let deadline = tokio::time::Instant::now() + bound;
        let slots = self.all_slots();
        let busy = slots
            .iter()
            .filter(|s| s.flight.try_lock().is_err())
            .count();
        if busy > 0 {
            info!(busy, bound = %humantime::format_duration(bound), "waiting for requests already sent to providers");
        }
        // The guards are kept until the end: nothing starts meanwhile.
        let mut guards = Vec::with_capacity(slots.len());
        let mut unfinished = Vec::new();
        for slot in &slots {
            match tokio::time::timeout_at(deadline, slot.flight.clone().lock_owned()).await {
                Ok(guard) => {
                    self.save_if_unsaved(slot).await;
                    guards.push(guard);
                }
                Err(_) => unfinished.push(slot.name.to_string()),
            }
        }
        if !unfinished.is_empty() {
            error!(installations = ?unfinished, "stopping with requests still unanswered; a rotated refresh token may be lost");
        }
        unfinished
    }

    /// One request to the provider; the caller holds `flight`.
    async fn attempt(&self, slot: &Slot) -> Result<(), ServeError> {
        let spec = slot.spec();
        let refresh_token = {
            let mut inner = lock(&slot.inner);
            let token = inner.record.refresh_token.clone();
            self.set_state(
                slot,
                &mut inner,
                InstallationState::Refreshing,
                String::new(),
            );
            token
        };
        let consumer = &spec.consumer;
        debug!(installation = %slot.name, "asking the provider for a token");
        let mut result = match (&refresh_token, spec.installation.grant) {
            (Some(refresh_token), _) => self.http.refresh(consumer, refresh_token).await,
            (None, Grant::ClientCredentials) => {
                self.http
                    .client_credentials(consumer, &spec.installation.scopes)
                    .await
            }
            (None, Grant::AuthorizationCode) => {
                let error = no_token_error(&spec);
                let mut inner = lock(&slot.inner);
                self.set_state(
                    slot,
                    &mut inner,
                    InstallationState::NeedsLogin,
                    error.to_string(),
                );
                inner.attempts += 1;
                inner.last_outcome = Err(error.clone());
                return Err(error);
            }
        };
        // Before declaring the grant lost: another writer (a restored
        // backup, a second tokd sharing this home, a hand edit) may have
        // put a newer refresh token in the state file.
        if let (Err(error), Some(used)) = (&result, &refresh_token)
            && error.kind == ErrorKind::NeedsLogin
            && let Some(newer) = self.newer_on_disk(&slot.name, used).await
            && let Some(newer_token) = newer.refresh_token.clone()
        {
            info!(installation = %slot.name, "the refresh token was refused, but the state file holds another one; trying that");
            lock(&slot.inner).record = newer;
            result = self.http.refresh(consumer, &newer_token).await;
        }
        match result {
            Ok(response) => {
                self.accept(slot, &spec, response).await;
                Ok(())
            }
            Err(error) => Err(self.fail(slot, &spec, &error)),
        }
    }

    /// The record in the state file when its refresh token is not `used`.
    async fn newer_on_disk(&self, name: &str, used: &RefreshToken) -> Option<Record> {
        let store = self.store.clone();
        let file = name.to_owned();
        let loaded = tokio::task::spawn_blocking(move || store.load(&file)).await;
        match loaded {
            Ok(Ok(Loaded::Found(record)))
                if record.refresh_token.as_ref().is_some_and(|t| t != used) =>
            {
                Some(record)
            }
            _ => None,
        }
    }

    /// Stores a token response durably, then makes it visible.
    async fn accept(&self, slot: &Slot, spec: &Spec, response: TokenResponse) {
        let now = self.clock.now();
        let mut record = lock(&slot.inner).record.clone();
        let renewable = response.refresh_token.is_some()
            || record.refresh_token.is_some()
            || spec.installation.grant == Grant::ClientCredentials;
        record.version = crate::store::FORMAT_VERSION;
        record.expires_at = response.expires_at(now, renewable);
        record.access_token = Some(response.access_token);
        if let Some(refresh_token) = response.refresh_token {
            record.refresh_token = Some(refresh_token);
        }
        record.token_type = Some(response.token_type);
        if let Some(scopes) = response.scopes {
            record.scopes = scopes;
        }
        record.last_refresh = Some(now);
        record.last_error = None;
        record.issued_for = Some(spec.identity());
        let saved = self.save(&slot.name, &record).await;
        let message = match &saved {
            Ok(()) => String::new(),
            Err(error) => {
                // The new tokens exist only in memory now: keep serving
                // them (the old refresh token may already be dead), say so
                // loudly and keep trying to write them.
                error!(installation = %slot.name, %error, "cannot write the new tokens; they are held in memory only until a write succeeds");
                unsaved_message(error)
            }
        };
        let expires_at = record.expires_at;
        {
            let mut inner = lock(&slot.inner);
            inner.record = record;
            inner.failures = 0;
            inner.retry_at = None;
            inner.attempts += 1;
            inner.last_outcome = Ok(());
            inner.unsaved = saved.is_err();
            inner.record.last_error = (!message.is_empty()).then(|| message.clone());
            self.set_state(slot, &mut inner, InstallationState::Valid, message);
        }
        if saved.is_err() {
            self.retry_save(&slot.name);
        }
        info!(installation = %slot.name, expires_at = ?expires_at.map(unix_seconds), "token refreshed");
        self.emit(Event::TokenRefreshed {
            name: slot.name.to_string(),
            expires_at,
        });
        self.schedule(slot);
    }

    /// Retries the write of `name`'s record until it succeeds, the slot
    /// goes away, or a newer write made it unnecessary. Each try holds the
    /// installation's `flight` lock, so it never overwrites a newer record.
    fn retry_save(&self, name: &str) {
        let weak = self.this.clone();
        let name = name.to_owned();
        tokio::spawn(async move {
            let mut delay = SAVE_RETRY_FIRST;
            loop {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(SAVE_RETRY_CAP);
                let Some(daemon) = weak.upgrade() else { return };
                let Some(slot) = daemon.slot_if_exists(&name) else {
                    return;
                };
                let _guard = slot.flight.lock().await;
                if daemon.save_if_unsaved(&slot).await {
                    return;
                }
            }
        });
    }

    /// Writes the slot's record if a write is owed; true when nothing is
    /// owed any more. The caller holds `flight`.
    async fn save_if_unsaved(&self, slot: &Slot) -> bool {
        let record = {
            let inner = lock(&slot.inner);
            if !inner.unsaved {
                return true;
            }
            inner.record.clone()
        };
        match self.save(&slot.name, &record).await {
            Ok(()) => {
                info!(installation = %slot.name, "the tokens held in memory are written now");
                let mut inner = lock(&slot.inner);
                inner.unsaved = false;
                inner.record.last_error = None;
                let state = inner.state;
                if state == InstallationState::Valid {
                    self.set_state(slot, &mut inner, state, String::new());
                }
                true
            }
            Err(error) => {
                warn!(installation = %slot.name, %error, "still cannot write the tokens held in memory");
                let mut inner = lock(&slot.inner);
                let message = unsaved_message(&error);
                inner.record.last_error = Some(message.clone());
                let state = inner.state;
                if state == InstallationState::Valid {
                    self.set_state(slot, &mut inner, state, message);
                }
                false
            }
        }
    }

    async fn save(&self, name: &str, record: &Record) -> Result<(), String> {
        let store = self.store.clone();
        let name = name.to_owned();
        let record = record.clone();
        match tokio::task::spawn_blocking(move || store.save(&name, &record)).await {
            Ok(result) => result.map_err(|error| error.to_string()),
            Err(error) => Err(error.to_string()),
        }
    }

    /// Records a failed request and says what it means.
    fn fail(&self, slot: &Slot, spec: &Spec, error: &OAuthError) -> ServeError {
        let name = &slot.name;
        let (state, serve_error) = match error.kind {
            ErrorKind::NeedsLogin => (
                InstallationState::NeedsLogin,
                ServeError::NeedsLogin(format!(
                    "the authorization of `{name}` is lost ({}); run `tokctl login {name}`",
                    error.message
                )),
            ),
            ErrorKind::Misconfigured => (
                InstallationState::Misconfigured,
                ServeError::Misconfigured(format!(
                    "consumer `{}` is misconfigured ({}); fix the config and run `tokctl reload`",
                    spec.consumer.name, error.message
                )),
            ),
            ErrorKind::Transient => {
                let mut inner = lock(&slot.inner);
                inner.failures += 1;
                let delay = schedule::backoff(
                    inner.failures,
                    error.retry_after,
                    schedule::random_fraction(),
                );
                inner.retry_at = Some(self.clock.now() + delay);
                inner.failure.clone_from(&error.message);
                drop(inner);
                (
                    InstallationState::Failing,
                    ServeError::ProviderUnavailable(failing_message(&error.message, delay)),
                )
            }
        };
        warn!(installation = %name, error = %error.message, state = %state, "request to the provider failed");
        {
            let mut inner = lock(&slot.inner);
            inner.attempts += 1;
            inner.last_outcome = Err(serve_error.clone());
            inner.record.last_error = Some(serve_error.to_string());
            self.set_state(slot, &mut inner, state, serve_error.to_string());
        }
        self.schedule(slot);
        serve_error
    }

    /// Starts an authorization-code login: the URL to open, and whether the
    /// daemon listens on the loopback `redirect_uri` for the answer.
    pub async fn begin_login(&self, name: &str) -> Result<(Url, bool), ServeError> {
        self.refuse_if_stopping()?;
        let slot = self.slot(name)?;
        let spec = slot.spec();
        if spec.installation.grant != Grant::AuthorizationCode {
            return Err(ServeError::InvalidArgument(format!(
                "`{name}` uses client credentials and needs no login; `tokctl refresh {name}` requests a new token"
            )));
        }
        let consumer = &spec.consumer;
        let state = oauth::random_token(24);
        let pkce = Pkce::generate();
        let redirect_uri = consumer.redirect_uri.clone();
        let url = oauth::authorization_url(
            consumer,
            &spec.installation.scopes,
            &state,
            Some(&pkce.challenge),
            redirect_uri.as_ref(),
        )
        .ok_or_else(|| {
            ServeError::Misconfigured(format!(
                "consumer `{}` has no auth_url; add one to the config",
                consumer.name
            ))
        })?;
        let listening = redirect_uri
            .as_ref()
            .filter(|uri| uri.scheme() == "http" && config::is_loopback(uri));
        let listen_addr = match listening {
            Some(uri) => Some(login::ensure_listener(&self.arc(), uri, name).await?),
            None => None,
        };
        let listening = listen_addr.is_some();
        self.logins.add(login::Pending {
            name: name.to_owned(),
            state,
            verifier: pkce.verifier,
            redirect_uri,
            listen_addr,
        });
        info!(installation = %name, listening, "login started");
        Ok((url, listening))
    }

    /// Finishes a login with a code typed in by hand. Uses the pending
    /// login's PKCE verifier when `begin_login` was called; without one the
    /// code is exchanged without PKCE (a URL made elsewhere).
    pub async fn complete_login(
        &self,
        name: &str,
        code: &str,
    ) -> Result<Option<SystemTime>, ServeError> {
        let slot = self.slot(name)?;
        let code = code.trim();
        if code.is_empty() || code.len() > MAX_CODE_LEN || code.chars().any(char::is_control) {
            return Err(ServeError::InvalidArgument(
                "that code is empty, too long or has control characters; paste the `code` value from the address the browser was sent to".to_owned(),
            ));
        }
        let (verifier, redirect_uri) = match self.logins.take_by_name(name) {
            Some(pending) => {
                // Its listener may have nothing left to wait for.
                self.logins.wake_listeners();
                (Some(pending.verifier), pending.redirect_uri)
            }
            None => (None, slot.spec().consumer.redirect_uri.clone()),
        };
        self.exchange(&slot, AuthorizationCode::new(code), verifier, redirect_uri)
            .await
    }

    /// Exchanges a code under the installation's `flight` lock.
    pub(crate) async fn exchange(
        &self,
        slot: &Arc<Slot>,
        code: AuthorizationCode,
        verifier: Option<PkceVerifier>,
        redirect_uri: Option<Url>,
    ) -> Result<Option<SystemTime>, ServeError> {
        let guard = self.flight(slot).await?;
        let (daemon, slot) = (self.arc(), slot.clone());
        in_flight(guard, "login", async move {
            daemon
                .exchange_locked(&slot, code, verifier, redirect_uri)
                .await
        })
        .await
    }

    async fn exchange_locked(
        &self,
        slot: &Slot,
        code: AuthorizationCode,
        verifier: Option<PkceVerifier>,
        redirect_uri: Option<Url>,
    ) -> Result<Option<SystemTime>, ServeError> {
        let spec = slot.spec();
        let result = self
            .http
            .exchange_code(
                &spec.consumer,
                &code,
                verifier.as_ref(),
                redirect_uri.as_ref(),
            )
            .await;
        let name = slot.name.to_string();
        match result {
            Ok(response) => {
                self.accept(slot, &spec, response).await;
                let expires_at = lock(&slot.inner).record.expires_at;
                self.emit(Event::LoginFinished {
                    name: name.clone(),
                    success: true,
                    message: format!("logged in: `{name}` holds a fresh token"),
                });
                info!(installation = %name, "login finished");
                Ok(expires_at)
            }
            Err(error) => {
                let message = format!(
                    "the provider refused the login of `{name}` ({}); run `tokctl login {name}` again",
                    error.message
                );
                warn!(installation = %name, error = %error.message, "login failed");
                self.emit(Event::LoginFinished {
                    name,
                    success: false,
                    message: message.clone(),
                });
                Err(match error.kind {
                    ErrorKind::Transient => ServeError::ProviderUnavailable(message),
                    ErrorKind::Misconfigured => ServeError::Misconfigured(message),
                    ErrorKind::NeedsLogin => ServeError::NeedsLogin(message),
                })
            }
        }
    }

    /// Revokes the installation's grant at the provider when it has a
    /// revocation endpoint, then forgets its tokens.
    pub async fn revoke(&self, name: &str) -> Result<String, ServeError> {
        let slot = self.slot(name)?;
        let guard = self.flight(&slot).await?;
        let daemon = self.arc();
        in_flight(guard, "revocation", async move {
            daemon.revoke_locked(&slot).await
        })
        .await
    }

    async fn revoke_locked(&self, slot: &Slot) -> Result<String, ServeError> {
        let name = &slot.name;
        let spec = slot.spec();
        let record = lock(&slot.inner).record.clone();
        if record.access_token.is_none() && record.refresh_token.is_none() {
            return Ok(format!("`{name}` holds no token; nothing to revoke"));
        }
        let told_provider = spec.consumer.revoke_url.is_some();
        if told_provider {
            let revoke = |token| self.http.revoke(&spec.consumer, token);
            let refused = |error: OAuthError| {
                let message = format!(
                    "the provider did not accept the revocation of `{name}` ({}); the tokens are kept, try again later",
                    error.message
                );
                match error.kind {
                    ErrorKind::Misconfigured => ServeError::Misconfigured(message),
                    _ => ServeError::ProviderUnavailable(message),
                }
            };
            if let Some(token) = &record.refresh_token {
                revoke(RevocableToken::Refresh(token))
                    .await
                    .map_err(refused)?;
            }
            if let Some(token) = &record.access_token {
                revoke(RevocableToken::Access(token))
                    .await
                    .map_err(refused)?;
            }
        }
        let store = self.store.clone();
        let file = name.clone();
        match tokio::task::spawn_blocking(move || store.remove(&file)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                return Err(ServeError::Misconfigured(format!(
                    "cannot remove the state file of `{name}`: {error}"
                )));
            }
            Err(error) => {
                return Err(ServeError::Misconfigured(format!(
                    "cannot remove the state file of `{name}`: {error}"
                )));
            }
        }
        {
            let mut inner = lock(&slot.inner);
            inner.record = Record::default();
            inner.failures = 0;
            inner.retry_at = None;
            inner.attempts += 1;
            inner.last_outcome = Ok(());
            inner.unsaved = false;
            self.set_state(
                slot,
                &mut inner,
                InstallationState::Empty,
                empty_message(&spec),
            );
        }
        self.queue.set(name, None);
        info!(installation = %name, told_provider, "revoked");
        Ok(if told_provider {
            format!("revoked `{name}` at the provider and forgot its tokens")
        } else {
            format!(
                "forgot the tokens of `{name}`; consumer `{}` has no revoke_url, so also revoke the grant on the provider's website",
                spec.consumer.name
            )
        })
    }

    /// Re-reads the config file. An invalid file is refused and the running
    /// config stays. Installations whose name, client, token URL, scopes and
    /// grant are unchanged keep their tokens and schedules.
    pub async fn reload(&self) -> Result<String, ServeError> {
        self.refuse_if_stopping()?;
        let Some(path) = self.config_path.clone() else {
            return Err(ServeError::InvalidArgument(
                "this tokd was started without a config file; restart it instead".to_owned(),
            ));
        };
        let config = tokio::task::spawn_blocking(move || Config::from_path(&path))
            .await
            .map_err(|error| ServeError::Misconfigured(error.to_string()))?
            .map_err(|error| {
                ServeError::Misconfigured(format!(
                    "{error}; the running config stays, fix the file and reload again"
                ))
            })?;
        self.apply(config).await;
        let summary = self
            .config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .summary();
        info!(%summary, "config reloaded");
        Ok(summary)
    }

    async fn apply(&self, config: Config) {
        let old: BTreeMap<Arc<str>, Arc<Slot>> =
            self.slots.read().unwrap_or_else(|e| e.into_inner()).clone();
        let mut slots: BTreeMap<Arc<str>, Arc<Slot>> = BTreeMap::new();
        let mut changed = Vec::new();
        let mut added = Vec::new();
        for spec in specs_of(&config) {
            let name = spec.installation.name.clone();
            let slot = match old.get(name.as_str()) {
                Some(slot) if slot.spec().same_identity(&spec) => {
                    *lock(&slot.spec) = spec;
                    slot.clone()
                }
                Some(_) => {
                    // The tokens were issued to another client or for other
                    // scopes: they do not belong to this installation now.
                    let (state, message) = identity_changed(&spec);
                    let slot = Arc::new(Slot::new(spec, Record::default(), state, message.clone()));
                    changed.push((name.clone(), state, message));
                    slot
                }
                None => {
                    added.push(spec);
                    continue;
                }
            };
            slots.insert(slot.name.clone(), slot);
        }
        for slot in self.load_slots(added).await {
            slots.insert(slot.name.clone(), Arc::new(slot));
        }
        for name in old.keys().filter(|name| !slots.contains_key(*name)) {
            self.queue.set(name, None);
            self.logins.take_by_name(name);
        }
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config.clone());
        *self.slots.write().unwrap_or_else(|e| e.into_inner()) = slots;
        for (name, state, message) in changed {
            self.emit(Event::StateChanged {
                name,
                state,
                message,
            });
        }
        for slot in self.all_slots() {
            self.schedule(&slot);
        }
        self.restart_cron(&config).await;
    }

    /// (Re)creates the cron jobs. The cron library ticks twice a second
    /// while it runs, so it runs only when some installation has a
    /// `schedule`.
    async fn restart_cron(&self, config: &Config) {
        let mut cron = self.cron.lock().await;
        if let Some(Cron(mut old)) = cron.take()
            && let Err(error) = old.shutdown().await
        {
            warn!(%error, "cannot stop the cron scheduler");
        }
        let jobs: Vec<(String, String)> = config
            .installations
            .values()
            .filter_map(|i| Some((i.name.clone(), i.schedule.as_ref()?.as_str().to_owned())))
            .collect();
        if jobs.is_empty() {
            return;
        }
        let scheduler = match tokio_cron_scheduler::JobScheduler::new().await {
            Ok(scheduler) => scheduler,
            Err(error) => {
                error!(%error, "cannot start the cron scheduler; schedules are ignored");
                return;
            }
        };
        for (name, expression) in jobs {
            let weak = self.this.clone();
            let job_name = name.clone();
            let job = tokio_cron_scheduler::Job::new_async(expression.as_str(), move |_, _| {
                let weak = weak.clone();
                let name = job_name.clone();
                Box::pin(async move {
                    if let Some(daemon) = weak.upgrade() {
                        daemon.scheduled(&name).await;
                    }
                })
            });
            let added = match job {
                Ok(job) => scheduler.add(job).await.map(drop),
                Err(error) => Err(error),
            };
            if let Err(error) = added {
                error!(installation = %name, %error, "cannot add the cron schedule");
            }
        }
        if let Err(error) = scheduler.start().await {
            error!(%error, "cannot start the cron scheduler; schedules are ignored");
            return;
        }
        *cron = Some(Cron(scheduler));
    }

    /// Every installation, sorted by name.
    pub fn list(&self) -> Vec<InstallationInfo> {
        self.all_slots()
            .iter()
            .map(|slot| self.info(slot))
            .collect()
    }

    /// One installation.
    pub fn status(&self, name: &str) -> Result<InstallationInfo, ServeError> {
        Ok(self.info(&self.slot(name)?))
    }

    fn info(&self, slot: &Arc<Slot>) -> InstallationInfo {
        let spec = slot.spec();
        let inner = lock(&slot.inner);
        InstallationInfo {
            name: slot.name.to_string(),
            consumer: spec.consumer.name.clone(),
            grant: spec.installation.grant.as_str().to_owned(),
            state: inner.state.as_str().to_owned(),
            message: inner.message.clone(),
            scopes: inner.record.scopes.join(" "),
            expires_at: inner.record.expires_at.map_or(0, unix_seconds),
            last_refresh: inner.record.last_refresh.map_or(0, unix_seconds),
            next_refresh: self.queue.get(&slot.name).map_or(0, unix_seconds),
            last_error: inner.record.last_error.clone().unwrap_or_default(),
        }
    }

    /// The installation a pending login belongs to, if it still exists.
    pub(crate) fn slot_if_exists(&self, name: &str) -> Option<Arc<Slot>> {
        self.slot(name).ok()
    }
}

/// A slot for `spec` from what loading its record found.
fn slot_from(spec: Arc<Spec>, loaded: Result<Loaded, String>) -> Slot {
    let name = spec.installation.name.clone();
    let (record, state, message) = match loaded {
        // Issued under another client, endpoint or scopes (the config
        // changed while tokd was not running): not this installation's.
        Ok(Loaded::Found(record))
            if record
                .issued_for
                .as_ref()
                .is_some_and(|issued_for| *issued_for != spec.identity()) =>
        {
            info!(installation = %name, "the stored tokens were issued under another consumer or other scopes; not using them");
            let (state, message) = identity_changed(&spec);
            (Record::default(), state, message)
        }
        Ok(Loaded::Found(record)) if record.access_token.is_some() => {
            (record, InstallationState::Valid, String::new())
        }
        Ok(Loaded::Found(_) | Loaded::Missing) => {
            let message = empty_message(&spec);
            (Record::default(), InstallationState::Empty, message)
        }
        Ok(Loaded::MovedAside { moved_to, reason }) => {
            warn!(installation = %name, moved_to = %moved_to.display(), %reason, "unreadable state file moved aside");
            let message = format!(
                "the state file was unreadable ({reason}) and was moved to {}; {}",
                moved_to.display(),
                empty_message(&spec)
            );
            (Record::default(), InstallationState::Empty, message)
        }
        Err(error) => {
            error!(installation = %name, %error, "cannot load state");
            let message = format!("cannot load the state file: {error}");
            (Record::default(), InstallationState::Misconfigured, message)
        }
    };
    Slot::new(spec, record, state, message)
}

/// Runs `work` in a task of its own that holds `guard`, the installation's
/// `flight` lock: a caller that goes away cannot cut a rotation short
/// between the provider's answer and the write to disk.
async fn in_flight<T: Send + 'static>(
    guard: tokio::sync::OwnedMutexGuard<()>,
    what: &'static str,
    work: impl Future<Output = Result<T, ServeError>> + Send + 'static,
) -> Result<T, ServeError> {
    let task = tokio::spawn(async move {
        let _guard = guard;
        work.await
    });
    task.await.unwrap_or_else(|error| {
        error!(%error, "the {what} task failed");
        Err(ServeError::ProviderUnavailable(format!(
            "the {what} failed inside tokd; see its log"
        )))
    })
}

/// The cron scheduler, while some installation has a `schedule`.
struct Cron(tokio_cron_scheduler::JobScheduler);

impl std::fmt::Debug for Cron {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cron")
    }
}

fn specs_of(config: &Config) -> Vec<Arc<Spec>> {
    config
        .installations
        .values()
        .filter_map(|installation| {
            let consumer = config.consumer_of(installation)?.clone();
            Some(Arc::new(Spec {
                installation: installation.clone(),
                consumer,
            }))
        })
        .collect()
}

fn empty_message(spec: &Spec) -> String {
    let name = &spec.installation.name;
    match spec.installation.grant {
        Grant::AuthorizationCode => format!("`{name}` is not logged in; run `tokctl login {name}`"),
        Grant::ClientCredentials => String::new(),
    }
}

/// The state of an installation whose consumer identity or scopes changed
/// since its tokens were issued.
fn identity_changed(spec: &Spec) -> (InstallationState, String) {
    let name = &spec.installation.name;
    match spec.installation.grant {
        Grant::AuthorizationCode => (
            InstallationState::NeedsLogin,
            format!("the consumer or scopes of `{name}` changed; run `tokctl login {name}`"),
        ),
        Grant::ClientCredentials => (InstallationState::Empty, String::new()),
    }
}

fn failing_message(failure: &str, wait: Duration) -> String {
    format!(
        "the provider is failing ({failure}); tokd tries again in {}",
        humantime::format_duration(Duration::from_secs(wait.as_secs().max(1)))
    )
}

fn unsaved_message(error: &str) -> String {
    format!(
        "the new tokens could not be written ({error}); they are held in memory only and tokd keeps trying to write them: free space or fix the state folder"
    )
}

fn no_token_error(spec: &Spec) -> ServeError {
    let name = &spec.installation.name;
    match spec.installation.grant {
        Grant::AuthorizationCode => ServeError::NeedsLogin(format!(
            "`{name}` has no token yet; run `tokctl login {name}`"
        )),
        Grant::ClientCredentials => ServeError::ProviderUnavailable(format!(
            "`{name}` has no token and none could be requested; see `tokctl status {name}`"
        )),
    }
}

/// Installation names are what the config allows; anything else is refused
/// before any lookup (it also keeps odd bytes out of messages and logs).
pub fn check_name(name: &str) -> Result<(), ServeError> {
    if name.len() <= 128 && config::valid_name(name) {
        Ok(())
    } else {
        Err(ServeError::InvalidArgument(
            "an installation name is 1 to 128 letters, digits, '.', '_' or '-'; `tokctl list` shows the configured ones".to_owned(),
        ))
    }
}

/// Unix seconds of a wall-clock time (0 before 1970).
pub fn unix_seconds(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
