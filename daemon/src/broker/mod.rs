//! The broker: tokd's core. It holds every installation, hands out tokens,
//! refreshes them one request at a time, runs logins, reloads and revokes.
//! It knows nothing of D-Bus: the bus adapter (`bus/`) calls its methods,
//! maps its [`Error`]s and [`View`]s to wire types, and turns its
//! [`Event`]s into signals.
//!
//! It is made of parts by responsibility, each a type of its own that
//! holds what it needs (shared as `Arc`s):
//! - [`Installations`] (`slots.rs`): the installations by name, each in a
//!   `Slot` with its two locks; `change`, the one way an installation
//!   changes (it re-arms the schedule and emits `StateChanged`);
//! - `installation.rs`: one installation's state machine, what a get
//!   decides, and its due-time rule, pure;
//! - [`Refresher`] (`refresh.rs`): single-flight requests to the provider,
//!   the durable write and its retry, the schedule's refreshes; a request
//!   returns what its caller wanted;
//! - [`Keeper`] (`keeping.rs`): what the storage's outcomes mean for
//!   installations (`locked` when the keyring is down, tokens read from
//!   it, moves);
//! - `Resolver` (`endpoints.rs`): each consumer's endpoints, discovered;
//! - [`LoginDesk`] (`login.rs`, `device.rs`): browser and device logins;
//! - here, [`Broker`]: the entry the bus adapter and `server.rs` call:
//!   start and stop, `get_token`, views, and (`reload.rs`, `revoke.rs`,
//!   `git.rs`) what their names say.

mod decision;
mod device;
mod endpoints;
mod error;
mod git;
mod installation;
mod keeping;
mod kube;
mod login;
mod refresh;
mod reload;
mod revoke;
mod slots;

pub use device::DeviceLogin;
pub use error::Error;
pub use git::GitCredential;
pub use installation::{
    Empty, Installation, KeyringDown, LoginNeeded, Misconfiguration, Spec, State, Token,
};
pub use keeping::Keeper;
pub use login::LoginDesk;
pub use refresh::Refresher;
pub use slots::Installations;

use crate::config::{self, Config, Grant};
use crate::oauth::OAuthClient;
use crate::schedule::{self, Clock};
use crate::storage::Storage;
use crate::sync::{lock, read};
use decision::{Decision, Got, Want};
use endpoints::Resolver;
use slots::Slot;
use std::path::PathBuf;
use std::sync::{Arc, RwLock, Weak};
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

/// The broker. Shared as `Arc<Broker>` by the bus adapter and the
/// scheduler.
#[derive(Debug)]
pub struct Broker {
    config_path: Option<PathBuf>,
    /// The `[daemon]` table of the config in force. The rest of the config
    /// lives on in the specs (each installation's and consumer's share);
    /// the whole file is not kept, which with 10,000 installations is a
    /// map of 10,000 names.
    daemon: RwLock<config::DaemonConfig>,
    /// The container registries the config names (usually none).
    registries: RwLock<std::collections::BTreeMap<String, config::RegistryLogin>>,
    /// The Kubernetes API servers the config names: (server, installation).
    kube_servers: RwLock<Vec<(String, String)>>,
    /// Who may get which installation's tokens, and who got them.
    callers: Arc<crate::callers::Gate>,
    installations: Arc<Installations>,
    keeper: Arc<Keeper>,
    resolver: Arc<Resolver>,
    refresher: Arc<Refresher>,
    logins: Arc<LoginDesk>,
    http: OAuthClient,
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
        let installations = Arc::new(Installations::new(
            options.clock,
            options.check_cap,
            events,
            config.daemon.refresh_margin,
        ));
        let callers = Arc::new(crate::callers::Gate::new(storage.clone(), config.policies));
        let keeper = Arc::new(Keeper::new(installations.clone(), storage.clone()));
        let resolver = Arc::new(Resolver::new(http.clone(), storage.clone()));
        let refresher = Refresher::new(
            installations.clone(),
            keeper.clone(),
            resolver.clone(),
            http.clone(),
        );
        let logins = LoginDesk::new(
            installations.clone(),
            refresher.clone(),
            keeper.clone(),
            resolver.clone(),
            http.clone(),
            options.login_timeout,
        );
        let loaded = storage.load_at_start(specs.iter().map(|spec| spec.name()));
        let slots = specs
            .into_iter()
            .zip(loaded)
            .map(|(spec, loaded)| Arc::new(Slot::loaded(spec, loaded)))
            .map(|slot| (slot.name.clone(), slot))
            .collect();
        installations.replace(slots, config.daemon.refresh_margin);
        for slot in installations.all() {
            installations.schedule(&slot);
        }
        info!(
            installations = installations.all().len(),
            "installations loaded"
        );
        Arc::new_cyclic(|this| Broker {
            config_path,
            daemon: RwLock::new(config.daemon),
            registries: RwLock::new(config.registries),
            kube_servers: RwLock::new(config.kube_servers),
            callers,
            installations,
            keeper,
            resolver,
            refresher,
            logins,
            http,
            this: this.clone(),
        })
    }

    /// Starts refreshing on schedule. Called once the daemon owns its bus
    /// name, so that a second tokd that loses the name never touches a
    /// provider.
    pub fn start_schedules(&self) {
        let weak = Arc::downgrade(&self.refresher);
        let queue = self.installations.queue.clone();
        let tasks = self.installations.tasks.clone();
        self.installations.tasks.spawn_until_stopped(async move {
            queue
                .run(|name| {
                    if let Some(refresher) = weak.upgrade() {
                        tasks.spawn(async move { refresher.scheduled(&name).await });
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
        let tasks = &self.installations.tasks;
        tasks.begin_stop();
        let slots = self.installations.all();
        let busy = slots.iter().filter(|slot| slot.busy()).count();
        if busy > 0 {
            info!(busy, bound = %humantime::format_duration(bound), "waiting for requests already sent to providers");
        }
        tasks.stop(bound).await;
        let mut unfinished = Vec::new();
        for slot in &slots {
            match slot.try_take_flight() {
                Some(_guard) => {
                    self.refresher.save_if_unsaved(slot).await;
                }
                None => unfinished.push(slot.name.to_string()),
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

    /// What the installations know of where their tokens are kept.
    pub fn keeper(&self) -> &Keeper {
        &self.keeper
    }

    /// The config file `reload` reads, if any.
    pub fn config_path(&self) -> Option<&std::path::Path> {
        self.config_path.as_deref()
    }

    /// Who may get which installation's tokens (the bus asks it before a
    /// token goes out), and who got them.
    pub fn callers(&self) -> &Arc<crate::callers::Gate> {
        &self.callers
    }

    /// The container registries the config names, each with the
    /// installation whose tokens it gets and the user name they go with:
    /// (registry, installation, user name), sorted by registry.
    pub fn registries(&self) -> Vec<(String, String, String)> {
        read(&self.registries)
            .iter()
            .map(|(registry, login)| {
                (
                    registry.clone(),
                    login.installation.clone(),
                    login.username.clone(),
                )
            })
            .collect()
    }

    /// Whether the config lets tokd notify the desktop (`[daemon] notify`).
    pub fn notifications_on(&self) -> bool {
        read(&self.daemon).notify
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
            self.installations.emit(Event::LoginWanted {
                name: name.to_owned(),
                message: message.clone(),
            });
        }
        result
    }

    /// [`Broker::get_token`]'s work. It takes the installation's lock at
    /// most twice: once to decide (a held token that lasts is served right
    /// there), and once, holding the `flight` lock, to take the result of
    /// a request that finished meanwhile; a request it makes itself
    /// returns the token.
    async fn token_for(&self, name: &str, min_valid: Duration) -> Result<Token, Error> {
        if min_valid > MAX_MIN_VALID {
            return Err(Error::InvalidArgument(format!(
                "a minimum validity of {} is more than any token lives; ask for at most 24h",
                humantime::format_duration(min_valid)
            )));
        }
        let slot = self.installations.get(name)?;
        let spec = slot.spec();
        let want = Want::Token(min_valid);
        let at = self.installations.at(&spec);
        let (decision, seen) = {
            let inner = lock(&slot.inner);
            (at.decide(&inner.installation, min_valid), inner.attempts)
        };
        let got = match decision {
            Decision::Serve(token) => return Ok(token),
            Decision::Refuse(error) => return Err(error),
            Decision::Request { keyring_first } => {
                self.refresher
                    .request(&slot, seen, want, keyring_first)
                    .await
            }
            // A refresh is in flight: a provider that rotates may already
            // have killed the held access token with its refresh token
            // (django-oauth-toolkit deletes it at once), so wait for the
            // new one, within a bound; a refresh still unanswered by then
            // leaves the held token to the caller.
            Decision::AwaitRotation(held) => {
                debug!(installation = %name, "a refresh is in flight; waiting for its token");
                let guard = match tokio::time::timeout(ROTATION_WAIT, slot.take_flight()).await {
                    Ok(guard) => guard,
                    // Answered, and the new tokens are being written (a
                    // slow keyring): the held token may be dead; the write
                    // is bounded by its own timeouts.
                    Err(_) if lock(&slot.inner).writing => slot.take_flight().await,
                    Err(_) => {
                        debug!(installation = %name, "the refresh in flight is still unanswered; serving the held token");
                        return Ok(held);
                    }
                };
                let stopping = self.installations.refuse_if_stopping();
                let at = self.installations.at(&spec);
                let keyring_first = {
                    let mut inner = lock(&slot.inner);
                    let installation = &mut inner.installation;
                    match (at.decide(installation, min_valid), stopping) {
                        (Decision::Serve(token) | Decision::AwaitRotation(token), _) => {
                            return Ok(token);
                        }
                        (Decision::Refuse(error), _) => return Err(error),
                        // Stopping: no request, but a held token still
                        // serves.
                        (Decision::Request { .. }, Err(error)) => {
                            return at.settle(installation, Err(error), want).and_then(|got| {
                                match got {
                                    Got::Token(token) => Ok(token),
                                    Got::Expiry(_) => Err(installation::no_token(&spec)),
                                }
                            });
                        }
                        (Decision::Request { keyring_first }, Ok(())) => keyring_first,
                    }
                };
                self.refresher
                    .request_holding(&slot, guard, want, keyring_first)
                    .await
            }
        }?;
        match got {
            Got::Token(token) => Ok(token),
            Got::Expiry(_) => Err(installation::no_token(&spec)),
        }
    }

    /// Refreshes now on request (`tokctl refresh`), even after a failure.
    pub async fn refresh_now(&self, name: &str) -> Result<Option<SystemTime>, Error> {
        self.refresher.refresh_now(name).await
    }

    /// Every installation, sorted by name.
    pub fn list(&self) -> Vec<View> {
        self.installations
            .all()
            .iter()
            .map(|slot| self.installations.view(slot))
            .collect()
    }

    /// One installation.
    pub fn status(&self, name: &str) -> Result<View, Error> {
        let slot = self.installations.get(name)?;
        Ok(self.installations.view(&slot))
    }

    /// Whether a login of `name` can be finished without a terminal (see
    /// [`LoginDesk::login_finishes_by_itself`]).
    pub fn login_finishes_by_itself(&self, name: &str) -> bool {
        self.logins.login_finishes_by_itself(name)
    }

    /// Starts a browser login (see [`LoginDesk::begin_login`]).
    pub async fn begin_login(
        &self,
        name: &str,
        wait: Option<Duration>,
    ) -> Result<(url::Url, bool), Error> {
        self.logins.begin_login(name, wait).await
    }

    /// Finishes a login with a code typed by hand (see
    /// [`LoginDesk::complete_login`]).
    pub async fn complete_login(
        &self,
        name: &str,
        code: &str,
    ) -> Result<Option<SystemTime>, Error> {
        self.logins.complete_login(name, code).await
    }

    /// Starts a device login (see [`LoginDesk::begin_device_login`]).
    pub async fn begin_device_login(&self, name: &str) -> Result<DeviceLogin, Error> {
        self.logins.begin_device_login(name).await
    }
}

fn specs_of(config: &Config) -> Vec<Arc<Spec>> {
    let mut identities = std::collections::HashSet::new();
    config
        .installations
        .values()
        .filter_map(|installation| {
            let consumer = config.consumer_of(installation)?.clone();
            Some(Arc::new(
                Spec::new(installation.clone(), consumer).sharing(&mut identities),
            ))
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
