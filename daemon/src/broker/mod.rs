//! The broker: tokd's core. It holds every installation, hands out tokens,
//! refreshes them one request at a time, runs logins, reloads and revokes.
//! It knows nothing of D-Bus: the bus adapter (`bus/`) calls its methods,
//! maps its [`Error`]s and [`View`]s to wire types, and turns its
//! [`Event`]s into signals.
//!
//! Where each concern lives:
//! - `installation.rs`: one installation's state machine and due-time
//!   rule, pure;
//! - `refresh.rs`: single-flight requests to the provider, the durable
//!   write and its retry, the schedule;
//! - `login.rs`: starting and finishing logins;
//! - `git.rs`: tokens for git, only to the consumer's git hosts;
//! - `reload.rs`, `revoke.rs`: what their names say;
//! - `keeping.rs`: what the storage's outcomes mean for installations
//!   (`locked` when the keyring is down, reading tokens kept there, moves);
//! - here: the installations by name, `get_token`, views, start and stop.
//!
//! Concurrency, per installation ([`Slot`]):
//! - `inner` (a std mutex, never held across an await) holds the
//!   installation and a counter of finished attempts;
//! - `flight` (a tokio mutex) is held for the whole of one request to the
//!   provider; see `refresh.rs`.
//! - No lock is shared between installations except the name map, which is
//!   only read for a lookup.

mod device;
mod endpoints;
mod error;
mod git;
mod installation;
mod keeping;
mod login;
mod refresh;
mod reload;
mod revoke;

pub use device::DeviceLogin;
pub use error::Error;
pub use git::GitCredential;
pub use installation::{
    Empty, Installation, KeyringDown, LoginNeeded, Misconfiguration, Spec, State, Token,
};

use crate::config::{self, Config, Grant};
use crate::login::Logins;
use crate::oauth::OAuthClient;
use crate::schedule::{self, Clock, Queue};
use crate::storage::{Loaded, StateError, Storage};
use crate::sync::{lock, read, write};
use crate::tasks::Tasks;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime};
use tokd_shared::InstallationState;
use tokio::sync::mpsc::UnboundedSender;
use tracing::{debug, error, info};

/// The largest `min_valid` a caller may ask for.
pub const MAX_MIN_VALID: Duration = Duration::from_secs(24 * 3600);
/// How long stop waits for requests already sent to a provider. Longer
/// than a refresh's own timeout (60 s, see `oauth::Timeouts`), so that one
/// always finishes and its rotated refresh token is written.
pub const STOP_BOUND: Duration = Duration::from_secs(65);
/// How long a caller whose held token would do waits for a refresh already
/// in flight (its answer may have made the held token dead) before it is
/// given the held token anyway.
pub const ROTATION_WAIT: Duration = Duration::from_secs(5);
/// Why a token shorter than asked is served after a refresh.
const SHORT_LIVED: &str = "the provider's tokens do not live that long, and this one is the newest";

/// Something clients may want to hear about; the bus adapter emits each as
/// a signal.
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
    /// A caller was refused because `name` needs a login (never logged
    /// in, or the authorization is lost). Not a signal: the desktop
    /// notifier (`bus/notify.rs`) tells the human.
    LoginWanted { name: String, message: String },
}

/// One installation as `list` and `status` describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub name: String,
    pub consumer: String,
    pub grant: Grant,
    pub state: InstallationState,
    /// A sentence about the state (what to do, if anything); may be empty.
    pub message: String,
    /// Scopes granted, or before the provider said so, those asked for.
    pub scopes: Vec<String>,
    pub expires_at: Option<SystemTime>,
    pub last_refresh: Option<SystemTime>,
    pub next_refresh: Option<SystemTime>,
    pub last_error: Option<String>,
}

/// How a broker tells time; tests replace the defaults.
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
            login_timeout: crate::login::LOGIN_TIMEOUT,
        }
    }
}

/// One installation and what serves it.
#[derive(Debug)]
pub(crate) struct Slot {
    /// Shared with the slots map's key.
    pub name: Arc<str>,
    spec: Mutex<Arc<Spec>>,
    inner: Mutex<Inner>,
    /// Held for one request to the provider (see `refresh.rs`).
    flight: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Debug)]
struct Inner {
    installation: Installation,
    /// Attempts finished so far, and the result of the last one: a caller
    /// that waited for another's request takes its result.
    attempts: u64,
    last_outcome: Result<(), Error>,
    /// The provider has answered the request in flight and its tokens are
    /// being written: a caller waiting for them waits for the write too.
    writing: bool,
}

impl Slot {
    fn new(spec: Arc<Spec>, installation: Installation) -> Self {
        Self {
            name: Arc::from(spec.name()),
            spec: Mutex::new(spec),
            inner: Mutex::new(Inner {
                installation,
                attempts: 0,
                last_outcome: Ok(()),
                writing: false,
            }),
            flight: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    pub(crate) fn spec(&self) -> Arc<Spec> {
        lock(&self.spec).clone()
    }
}

/// The broker. Shared as `Arc<Broker>` by the bus adapter, the scheduler
/// and the login listener's callback.
#[derive(Debug)]
pub struct Broker {
    config_path: Option<PathBuf>,
    config: RwLock<Arc<Config>>,
    slots: RwLock<BTreeMap<Arc<str>, Arc<Slot>>>,
    /// Where tokens are kept.
    storage: Arc<Storage>,
    http: OAuthClient,
    events: UnboundedSender<Event>,
    queue: Arc<Queue>,
    logins: Arc<Logins>,
    /// Each consumer's endpoints, once resolved (see `endpoints.rs`).
    endpoints: Mutex<std::collections::HashMap<String, Arc<crate::oauth::Endpoints>>>,
    /// The device logins polling now, by installation.
    device_logins: Mutex<std::collections::HashMap<String, device::Polling>>,
    clock: Clock,
    /// Every task the broker spawns; its stop token is the broker's stop.
    tasks: Tasks,
    this: Weak<Broker>,
}

impl Broker {
    /// Loads every installation's record. Nothing is refreshed until
    /// [`Broker::start_schedules`]. `config_path` is what `reload`
    /// re-reads (`None`: reload refuses).
    pub fn start(
        config: Config,
        config_path: Option<PathBuf>,
        storage: Arc<Storage>,
        http: OAuthClient,
        events: UnboundedSender<Event>,
        options: Options,
    ) -> Arc<Self> {
        // The specs first, so that the config moves in rather than being
        // copied: with 10,000 installations a copy is megabytes.
        let specs = specs_of(&config);
        let broker = Arc::new_cyclic(|this| Broker {
            config_path,
            config: RwLock::new(Arc::new(config)),
            slots: RwLock::new(BTreeMap::new()),
            storage,
            http,
            events,
            queue: Arc::new(Queue::new(options.clock.clone(), options.check_cap)),
            logins: Arc::new(Logins::new(options.login_timeout)),
            endpoints: Mutex::default(),
            device_logins: Mutex::default(),
            clock: options.clock,
            tasks: Tasks::new(),
            this: this.clone(),
        });
        let loaded = broker
            .storage
            .load_at_start(specs.iter().map(|spec| spec.name()));
        let slots = specs
            .into_iter()
            .zip(loaded)
            .map(|(spec, loaded)| slot_from(spec, loaded))
            .map(|slot| (slot.name.clone(), Arc::new(slot)))
            .collect();
        *write(&broker.slots) = slots;
        for slot in broker.all_slots() {
            broker.schedule(&slot);
        }
        info!(
            installations = broker.all_slots().len(),
            "installations loaded"
        );
        broker
    }

    /// Starts refreshing on schedule. Called once the daemon owns its bus
    /// name, so that a second tokd that loses the name never touches a
    /// provider.
    pub fn start_schedules(&self) {
        let weak = self.this.clone();
        let queue = self.queue.clone();
        let tasks = self.tasks.clone();
        self.tasks.spawn_until_stopped(async move {
            queue
                .run(|name| {
                    if let Some(broker) = weak.upgrade() {
                        tasks.spawn(async move { broker.scheduled(&name).await });
                    }
                })
                .await;
        });
    }

    /// Stops for good: no new request to a provider starts (calls that
    /// need one get [`Error::Stopping`]; held tokens are still served), the
    /// scheduler, retries and login listeners stop, and requests already
    /// sent are waited for, at most `bound`, so that a rotated refresh
    /// token is written before the process exits. Owed writes are tried
    /// once more. Returns the installations still busy when the bound ran
    /// out.
    pub async fn stop(&self, bound: Duration) -> Vec<String> {
        self.tasks.begin_stop();
        let slots = self.all_slots();
        let busy = slots
            .iter()
            .filter(|slot| slot.flight.try_lock().is_err())
            .count();
        if busy > 0 {
            info!(busy, bound = %humantime::format_duration(bound), "waiting for requests already sent to providers");
        }
        self.tasks.stop(bound).await;
        let mut unfinished = Vec::new();
        for slot in &slots {
            match slot.flight.clone().try_lock_owned() {
                Ok(_guard) => {
                    self.save_if_unsaved(slot).await;
                }
                Err(_) => unfinished.push(slot.name.to_string()),
            }
        }
        if !unfinished.is_empty() {
            error!(installations = ?unfinished, "stopping with requests still unanswered; a rotated refresh token may be lost");
        }
        unfinished
    }

    fn arc(&self) -> Arc<Broker> {
        // `self` is always reached through the Arc built in `start`.
        self.this
            .upgrade()
            .expect("the broker outlives its own calls")
    }

    fn all_slots(&self) -> Vec<Arc<Slot>> {
        read(&self.slots).values().cloned().collect()
    }

    pub(crate) fn slot(&self, name: &str) -> Result<Arc<Slot>, Error> {
        check_name(name)?;
        read(&self.slots).get(name).cloned().ok_or_else(|| {
            Error::UnknownInstallation(format!(
                "no installation is named `{name}`; `tokctl list` shows the configured ones"
            ))
        })
    }

    /// The config file `reload` reads, if any.
    pub fn config_path(&self) -> Option<&std::path::Path> {
        self.config_path.as_deref()
    }

    /// Whether the config lets tokd notify the desktop (`[daemon] notify`).
    pub fn notifications_on(&self) -> bool {
        read(&self.config).daemon.notify
    }

    fn margin(&self) -> Option<Duration> {
        read(&self.config).daemon.refresh_margin
    }

    fn emit(&self, event: Event) {
        // Nobody listening (tests without a bus) is fine.
        let _ = self.events.send(event);
    }

    /// Applies `change` to the slot's installation, puts it in the queue at
    /// its new due time, and emits `StateChanged` when its state or
    /// sentence changed.
    ///
    /// Every change of an installation goes through here, so none can
    /// leave it out of the queue: tokens read from the keyring after start,
    /// a state file read again on reload, a keyring that is back, a
    /// revocation. (A restarted tokd with its tokens in the keyring once
    /// armed nothing: the schedule was computed before the tokens were
    /// read, and the read did not compute it again.)
    fn change<T>(
        &self,
        slot: &Slot,
        inner: &mut Inner,
        change: impl FnOnce(&mut Installation, &Spec) -> T,
    ) -> T {
        let spec = slot.spec();
        let (now, monotonic) = (self.clock.now(), self.clock.monotonic());
        let before = (
            inner.installation.kind(),
            inner.installation.message(&spec, now),
        );
        let result = change(&mut inner.installation, &spec);
        self.arm(slot, &spec, &inner.installation, now, monotonic);
        let after = (
            inner.installation.kind(),
            inner.installation.message(&spec, now),
        );
        if after != before {
            self.emit(Event::StateChanged {
                name: slot.name.to_string(),
                state: after.0,
                message: after.1,
            });
        }
        result
    }

    /// Puts the slot in the queue at the installation's next due time, as
    /// of `now` (or takes it out).
    fn arm(
        &self,
        slot: &Slot,
        spec: &Spec,
        installation: &Installation,
        now: SystemTime,
        monotonic: std::time::Instant,
    ) {
        let due = installation.next_due(
            spec,
            self.margin(),
            now,
            monotonic,
            schedule::random_fraction(),
            schedule::random_fraction(),
        );
        self.queue.set(&slot.name, due);
    }

    /// A token for `name` valid for at least `min_valid`, refreshing first
    /// when the held one expires sooner. When even a fresh token lives less
    /// than `min_valid`, the fresh one is returned with a warning, and
    /// callers asking as much get it (still with the warning) for
    /// [`installation::FELL_SHORT_PAUSE`] rather than causing a refresh
    /// each.
    pub async fn get_token(&self, name: &str, min_valid: Duration) -> Result<Token, Error> {
        let result = self.token_for(name, min_valid).await;
        if let Err(Error::NeedsLogin(message)) = &result {
            self.emit(Event::LoginWanted {
                name: name.to_owned(),
                message: message.clone(),
            });
        }
        result
    }

    async fn token_for(&self, name: &str, min_valid: Duration) -> Result<Token, Error> {
        if min_valid > MAX_MIN_VALID {
            return Err(Error::InvalidArgument(format!(
                "a minimum validity of {} is more than any token lives; ask for at most 24h",
                humantime::format_duration(min_valid)
            )));
        }
        let slot = self.slot(name)?;
        let (now, monotonic) = (self.clock.now(), self.clock.monotonic());
        // The fast path, a held token that lasts: one lock, nothing cloned
        // but the token.
        let held_during_refresh = {
            let inner = lock(&slot.inner);
            let installation = &inner.installation;
            // A lost grant takes its access tokens with it at the provider
            // (revocation, Bitbucket's scope change): say so at once rather
            // than hand out a token that will be refused.
            match installation.token_valid_for(now, monotonic, min_valid) {
                Some(token) if matches!(installation.state, State::Refreshing { .. }) => {
                    Some(token)
                }
                Some(token) if !matches!(installation.state, State::NeedsLogin(_)) => {
                    return Ok(token);
                }
                _ => None,
            }
        };
        // A refresh is in flight: a provider that rotates may already have
        // killed the held access token with its refresh token
        // (django-oauth-toolkit deletes it at once), so wait for the new
        // one, within a bound; a refresh still unanswered by then leaves
        // the held token to the caller.
        if let Some(held) = held_during_refresh {
            debug!(installation = %name, "a refresh is in flight; waiting for its token");
            let guard = match tokio::time::timeout(ROTATION_WAIT, slot.flight.lock()).await {
                Ok(guard) => guard,
                // Answered, and the new tokens are being written (a slow
                // keyring): the held token may be dead; the write is
                // bounded by its own timeouts.
                Err(_) if lock(&slot.inner).writing => slot.flight.lock().await,
                Err(_) => {
                    debug!(installation = %name, "the refresh in flight is still unanswered; serving the held token");
                    return Ok(held);
                }
            };
            drop(guard);
            let (now, monotonic) = (self.clock.now(), self.clock.monotonic());
            let inner = lock(&slot.inner);
            if !matches!(inner.installation.state, State::NeedsLogin(_))
                && let Some(token) = inner
                    .installation
                    .token_valid_for(now, monotonic, min_valid)
            {
                return Ok(token);
            }
        }
        let spec = slot.spec();
        // Tokens kept in a keyring that was locked or away: read them
        // first (asking the desktop to unlock it); they may do.
        let waiting_for_keyring = {
            let inner = lock(&slot.inner);
            inner.installation.keyring_down.is_some() || inner.installation.tokens_unread
        };
        if waiting_for_keyring {
            let read = async {
                let _guard = self.flight(&slot).await?;
                self.keyring_gate(&slot, true).await
            };
            if read.await.is_ok() {
                let (now, monotonic) = (self.clock.now(), self.clock.monotonic());
                if let Some(token) = lock(&slot.inner)
                    .installation
                    .token_valid_for(now, monotonic, min_valid)
                {
                    return Ok(token);
                }
            }
        }
        let seen = {
            let inner = lock(&slot.inner);
            let installation = &inner.installation;
            if let State::NeedsLogin(_) = installation.state {
                return Err(Error::NeedsLogin(installation.message(&spec, now)));
            }
            let held = installation.token_valid_for(now, monotonic, Duration::ZERO);
            if let Some(token) = held.clone()
                && installation.fell_short_recently(monotonic)
            {
                return Ok(token.with_warning(now, min_valid, SHORT_LIVED));
            }
            match installation.refusal(&spec, now) {
                Ok(()) => {}
                // The attempt asks the desktop to unlock the keyring.
                Err(Error::Locked(_)) => {}
                // Backing off after a transient failure: the held token,
                // if it is valid at all, beats no token.
                Err(Error::ProviderUnavailable(message)) => {
                    return match held {
                        Some(token) => Ok(token.with_warning(now, min_valid, &message)),
                        None => Err(Error::ProviderUnavailable(message)),
                    };
                }
                Err(error) => return Err(error),
            }
            inner.attempts
        };
        let outcome = self.attempt_shared(&slot, seen, true).await;
        let (now, monotonic) = (self.clock.now(), self.clock.monotonic());
        let mut inner = lock(&slot.inner);
        let installation = &mut inner.installation;
        match (
            installation.token_valid_for(now, monotonic, Duration::ZERO),
            outcome,
        ) {
            (Some(token), Ok(())) => {
                if installation
                    .token_valid_for(now, monotonic, min_valid)
                    .is_some()
                {
                    Ok(token)
                } else {
                    installation.fell_short(monotonic);
                    Ok(token.with_warning(now, min_valid, SHORT_LIVED))
                }
            }
            // A transient failure (or a stop) with a token still valid:
            // serve it, saying why it is short.
            (
                Some(token),
                Err(
                    Error::ProviderUnavailable(message)
                    | Error::Stopping(message)
                    | Error::Locked(message),
                ),
            ) => Ok(token.with_warning(now, min_valid, &message)),
            (_, Err(error)) => Err(error),
            // Fresh, and expired already: the provider's lifetime is
            // shorter than the way here. It is still the newest there is.
            (None, Ok(())) => match installation.held_token() {
                Some(token) => Ok(token.with_warning(now, min_valid, SHORT_LIVED)),
                None => Err(installation::no_token(&spec)),
            },
        }
    }

    /// Every installation, sorted by name.
    pub fn list(&self) -> Vec<View> {
        self.all_slots()
            .iter()
            .map(|slot| self.view(slot))
            .collect()
    }

    /// One installation.
    pub fn status(&self, name: &str) -> Result<View, Error> {
        let slot = self.slot(name)?;
        Ok(self.view(&slot))
    }

    fn view(&self, slot: &Slot) -> View {
        let spec = slot.spec();
        let now = self.clock.now();
        let inner = lock(&slot.inner);
        let installation = &inner.installation;
        View {
            name: slot.name.to_string(),
            consumer: spec.consumer.name.clone(),
            grant: spec.grant(),
            state: installation.kind(),
            message: installation.summary(&spec, now),
            // Granted, once a token says so; until then, asked for.
            scopes: if installation.record.scopes.is_empty() {
                spec.scopes()
            } else {
                installation.record.scopes.clone()
            },
            expires_at: installation.record.expires_at,
            last_refresh: installation.record.last_refresh,
            next_refresh: self.queue.get(&slot.name),
            last_error: installation.record.last_error.clone(),
        }
    }
}

/// A slot for `spec` from what loading its record found.
fn slot_from(spec: Arc<Spec>, loaded: Result<Loaded, StateError>) -> Slot {
    let installation = loaded_installation(&spec, loaded);
    Slot::new(spec, installation)
}

/// The installation of `spec` from what loading its record found, with
/// what the log should hear about it.
fn loaded_installation(spec: &Spec, loaded: Result<Loaded, StateError>) -> Installation {
    let name = spec.name();
    match &loaded {
        Ok(Loaded::Found(record))
            if record
                .issued_for
                .as_ref()
                .is_some_and(|issued_for| *issued_for != spec.identity()) =>
        {
            info!(installation = %name, "the stored tokens were issued under another consumer or other scopes; not using them");
        }
        Ok(Loaded::MovedAside { moved_to, reason }) => {
            tracing::warn!(installation = %name, moved_to = %moved_to.display(), %reason, "unreadable state file moved aside");
        }
        Err(error) => error!(installation = %name, %error, "cannot load state"),
        Ok(_) => {}
    }
    Installation::loaded(spec, loaded)
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

/// Installation names are what the config allows; anything else is refused
/// before any lookup (it also keeps odd bytes out of messages and logs).
pub fn check_name(name: &str) -> Result<(), Error> {
    if name.len() <= 128 && config::valid_name(name) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(
            "an installation name is 1 to 128 letters, digits, '.', '_' or '-'; `tokctl list` shows the configured ones".to_owned(),
        ))
    }
}
