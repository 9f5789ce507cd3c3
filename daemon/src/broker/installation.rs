//! One installation at run time: its tokens, its state, and the rules that
//! move it. Everything here is a pure function of its inputs (the time and
//! the randomness are arguments), so every transition and every due time
//! is a unit test without HTTP, a disk or a bus.
//!
//! The state is one enum whose variants carry their own data; the sentence
//! a human reads about it is derived from it when asked, so it never goes
//! stale ("tries again in 23s" is computed at display time).

use super::Error;
use crate::config::{self, Consumer, Grant};
use crate::oauth::{ErrorKind, OAuthError, TokenResponse};
use crate::schedule;
use crate::secret::{AccessToken, RefreshToken};
use crate::storage::{Loaded, Record, StateError, Store};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokd_shared::InstallationState;

/// What an installation is configured as; replaced on reload.
#[derive(Debug)]
pub struct Spec {
    pub installation: Arc<config::InstallationConfig>,
    pub consumer: Arc<Consumer>,
    /// See [`Spec::identity`]; one allocation shared by the specs with
    /// the same (see [`Spec::sharing`]), and by their records.
    identity: Arc<str>,
}

impl Spec {
    pub fn new(installation: Arc<config::InstallationConfig>, consumer: Arc<Consumer>) -> Self {
        let identity = format!(
            "{} {} {} {}",
            consumer.client_id,
            consumer.token_identity(),
            installation.grant.as_str(),
            installation.scopes.join(" ")
        );
        Self {
            installation,
            consumer,
            identity: Arc::from(identity),
        }
    }

    /// This spec with its identity shared with the specs in `known` that
    /// have the same (an installation's record keeps it: 10,000
    /// installations of a few consumers have a few identities).
    pub fn sharing(mut self, known: &mut std::collections::HashSet<Arc<str>>) -> Self {
        match known.get(&self.identity) {
            Some(same) => self.identity = same.clone(),
            None => {
                known.insert(self.identity.clone());
            }
        }
        self
    }

    pub fn name(&self) -> &str {
        &self.installation.name
    }

    pub fn grant(&self) -> Grant {
        self.installation.grant
    }

    /// Whom tokens obtained under this spec belong to: client, token
    /// endpoint, grant and scopes. Stored with the tokens.
    pub fn identity(&self) -> Arc<str> {
        self.identity.clone()
    }

    /// Its cron schedule: its own, else its consumer's keep-alive.
    pub fn schedule(&self) -> Option<&crate::config::CronSchedule> {
        self.installation
            .schedule
            .as_ref()
            .or(self.consumer.keep_alive.as_ref())
    }

    /// The scopes asked for: the installation's and the consumer's extra.
    pub fn scopes(&self) -> Vec<String> {
        self.consumer.scopes_for(&self.installation.scopes)
    }

    /// Whether a token obtained under `other` is still good under `self`.
    pub fn same_identity(&self, other: &Spec) -> bool {
        self.identity() == other.identity()
    }
}

/// After a caller's refresh gave a token shorter than it asked for, how
/// long further callers asking as much get the held token (with a
/// warning) instead of another refresh: the provider's tokens do not live
/// longer, and each refresh may rotate the grant.
pub const FELL_SHORT_PAUSE: Duration = Duration::from_secs(30);

/// Where an installation stands, with what each state needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// No token held.
    Empty(Empty),
    /// A token is held.
    Valid,
    /// A request to the provider is in flight; `failures` transient
    /// failures came before it.
    Refreshing { failures: u32 },
    /// The last `failures` requests failed transiently; the next try is
    /// not before `retry_at`. `grant_at_risk`: the last one was a refresh
    /// whose outcome at the provider is unknown, which a rotating provider
    /// may have taken as the refresh token's one use.
    Failing {
        failures: u32,
        retry_at: SystemTime,
        reason: String,
        grant_at_risk: bool,
    },
    /// A human must log in.
    NeedsLogin(LoginNeeded),
    /// Nothing will work until the config changes.
    Misconfigured(Misconfiguration),
}

/// Why no token is held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Empty {
    /// Never logged in, revoked, or (client credentials) not asked yet.
    Never,
    /// The state file could not be read and was moved aside.
    MovedAside { moved_to: PathBuf, reason: String },
}

/// Why a login is needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginNeeded {
    /// There is no refresh token to use.
    NoToken,
    /// The provider refused the grant; `detail` says how.
    Lost { detail: String },
    /// The consumer or scopes changed since the tokens were issued.
    IdentityChanged,
}

/// Why the installation cannot work as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Misconfiguration {
    /// The provider refused the client; `detail` says how.
    Refused { detail: String },
    /// The state file cannot be loaded (e.g. a newer format).
    StateFile { error: String },
}

impl State {
    /// The state's name on the wire and in `tokctl list`.
    pub fn kind(&self) -> InstallationState {
        match self {
            Self::Empty(_) => InstallationState::Empty,
            Self::Valid => InstallationState::Valid,
            Self::Refreshing { .. } => InstallationState::Refreshing,
            Self::Failing { .. } => InstallationState::Failing,
            Self::NeedsLogin(_) => InstallationState::NeedsLogin,
            Self::Misconfigured(_) => InstallationState::Misconfigured,
        }
    }

    /// Transient failures in a row so far.
    fn failures(&self) -> u32 {
        match self {
            Self::Refreshing { failures } | Self::Failing { failures, .. } => *failures,
            _ => 0,
        }
    }
}

/// How often an installation whose keyring is locked or gone checks
/// whether it is back (one property read on the bus).
pub const KEYRING_RECHECK: Duration = Duration::from_secs(30);

/// Why the keyring that keeps an installation's tokens cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyringDown {
    Locked,
    Gone,
    /// The Secret Service answers, but not as it should; `detail` says how.
    Failing {
        detail: String,
    },
}

/// An access token handed to a caller.
#[derive(Debug, Clone)]
pub struct Token {
    pub access_token: AccessToken,
    pub expires_at: Option<SystemTime>,
    /// Always `bearer`: the only type tokd accepts.
    pub token_type: &'static str,
    /// Set when the token is valid for less than was asked because the
    /// provider is failing: one sentence for the caller's stderr.
    pub warning: Option<String>,
}

impl Token {
    pub(crate) fn with_warning(mut self, now: SystemTime, min_valid: Duration, why: &str) -> Self {
        let left = self
            .expires_at
            .and_then(|at| at.duration_since(now).ok())
            .map(|d| tokd_shared::text::span(d.as_secs()));
        self.warning = Some(format!(
            "this token is valid for {} only, less than the {} asked for: {why}",
            left.unwrap_or_else(|| "a moment".to_owned()),
            humantime::format_duration(min_valid)
        ));
        self
    }
}

/// Why new tokens are held in memory only, and what the user can do about
/// it (which depends on where they were to be written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsaved {
    pub why: String,
    pub remedy: &'static str,
}

impl Unsaved {
    /// The sentence for humans.
    pub fn sentence(&self) -> String {
        format!(
            "the new tokens could not be written ({}); they are held in memory only and tokd keeps trying to write them: {}",
            self.why, self.remedy
        )
    }
}

/// One installation's tokens and state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installation {
    /// The tokens, as stored (or to be stored).
    pub record: Record,
    pub state: State,
    /// Set while the record in memory is newer than what is kept: why the
    /// write failed. The write is being retried.
    pub unsaved: Option<Box<Unsaved>>,
    /// When the held token expires by the monotonic clock, if it was
    /// obtained since tokd started: a wall clock set back must not make an
    /// expired token look valid.
    pub deadline: Option<Instant>,
    /// When a caller's refresh last gave a token shorter than it asked for
    /// (see [`FELL_SHORT_PAUSE`]).
    pub fell_short_at: Option<Instant>,
    /// Set while the keyring that keeps (or must keep) the tokens cannot
    /// be used: nothing is asked of the provider, whose answer could not
    /// be kept; a held token is still served. Shown as `locked`.
    pub keyring_down: Option<Box<KeyringDown>>,
    /// The record's tokens are in the keyring and not read yet.
    pub tokens_unread: bool,
}

impl Installation {
    /// What loading the state file found, for `spec`.
    pub fn loaded(spec: &Spec, loaded: Result<Loaded, StateError>) -> Self {
        let (record, state) = match loaded {
            // Issued under another client, endpoint or scopes (the config
            // changed while tokd was not running): not this installation's.
            Ok(Loaded::Found(record))
                if record
                    .issued_for
                    .as_ref()
                    .is_some_and(|issued_for| *issued_for != spec.identity()) =>
            {
                return Self::identity_changed(spec);
            }
            Ok(Loaded::Found(mut record)) if record.access_token.is_some() => {
                record.issued_for = record.issued_for.map(|_| spec.identity());
                expire_if_unprintable(&mut record);
                (record, State::Valid)
            }
            // The tokens are in the keyring: read at start, or when it is
            // unlocked (`tokens_read`).
            Ok(Loaded::Found(mut record)) if record.store == Store::Keyring => {
                record.issued_for = record.issued_for.map(|_| spec.identity());
                let mut installation = Self::with(record, State::Empty(Empty::Never));
                installation.tokens_unread = true;
                return installation;
            }
            Ok(Loaded::Found(_) | Loaded::Missing) => {
                (Record::default(), State::Empty(Empty::Never))
            }
            Ok(Loaded::MovedAside { moved_to, reason }) => (
                Record::default(),
                State::Empty(Empty::MovedAside { moved_to, reason }),
            ),
            Err(error) => (
                Record::default(),
                State::Misconfigured(Misconfiguration::StateFile {
                    error: error.to_string(),
                }),
            ),
        };
        Self::with(record, state)
    }

    fn with(record: Record, state: State) -> Self {
        Self {
            record,
            state,
            unsaved: None,
            deadline: None,
            fell_short_at: None,
            keyring_down: None,
            tokens_unread: false,
        }
    }

    /// The state as `list` shows it: `locked` while the keyring is down.
    pub fn kind(&self) -> InstallationState {
        match self.keyring_down {
            Some(_) => InstallationState::Locked,
            None => self.state.kind(),
        }
    }

    /// The tokens the keyring holds for this installation were read
    /// (`None`: it holds none, e.g. the item was deleted by hand).
    pub fn tokens_read(&mut self, access: Option<AccessToken>, refresh: Option<RefreshToken>) {
        self.tokens_unread = false;
        self.keyring_down = None;
        self.record.access_token = access;
        self.record.refresh_token = refresh;
        expire_if_unprintable(&mut self.record);
        if self.record.access_token.is_some() && matches!(self.state, State::Empty(_)) {
            self.state = State::Valid;
        }
    }

    /// Whether its state file could not be loaded (a loose mode that could
    /// not be fixed, a damaged folder): a reload reads it again.
    pub fn state_file_unusable(&self) -> bool {
        matches!(
            self.state,
            State::Misconfigured(Misconfiguration::StateFile { .. })
        )
    }

    /// The config was reloaded and this installation's identity did not
    /// change: a refusal of the client was the old config's to answer for
    /// (a secret file since put back, a discovery document since fixed),
    /// so the next request tries again. Other states stand.
    pub fn reconfigured(&mut self) {
        if let State::Misconfigured(Misconfiguration::Refused { .. }) = self.state {
            let holds = self.record.access_token.is_some() || self.record.refresh_token.is_some();
            self.state = if holds {
                State::Valid
            } else {
                State::Empty(Empty::Never)
            };
        }
    }

    /// An installation whose consumer identity or scopes changed since its
    /// tokens were issued: the tokens are not its own any more.
    pub fn identity_changed(spec: &Spec) -> Self {
        let state = match spec.grant() {
            Grant::AuthorizationCode => State::NeedsLogin(LoginNeeded::IdentityChanged),
            Grant::ClientCredentials => State::Empty(Empty::Never),
        };
        Self::with(Record::default(), state)
    }

    /// The held token if it is valid for at least `min_valid` from `now`
    /// (`monotonic`: the same moment by the monotonic clock), by the wall
    /// clock and by the monotonic deadline alike.
    pub fn token_valid_for(
        &self,
        now: SystemTime,
        monotonic: Instant,
        min_valid: Duration,
    ) -> Option<Token> {
        if let Some(expires_at) = self.record.expires_at
            && expires_at < now + min_valid
        {
            return None;
        }
        if let Some(deadline) = self.deadline
            && deadline < monotonic + min_valid
        {
            return None;
        }
        self.held_token()
    }

    /// The held token, whatever its expiry.
    pub fn held_token(&self) -> Option<Token> {
        let access_token = self.record.access_token.clone()?;
        Some(Token {
            access_token,
            expires_at: self.record.expires_at,
            token_type: "bearer",
            warning: None,
        })
    }

    /// Why a new token cannot be requested at `now`, if it cannot.
    pub fn refusal(&self, spec: &Spec, now: SystemTime) -> Result<(), Error> {
        if self.keyring_down.is_some() {
            return Err(Error::Locked(self.message(spec, now)));
        }
        match &self.state {
            State::NeedsLogin(_) => Err(Error::NeedsLogin(self.message(spec, now))),
            State::Misconfigured(_) => Err(Error::Misconfigured(self.message(spec, now))),
            State::Failing { retry_at, .. } if *retry_at > now => {
                Err(Error::ProviderUnavailable(self.message(spec, now)))
            }
            _ if self.needs_a_login_to_request(spec) => Err(no_token(spec)),
            _ => Ok(()),
        }
    }

    /// An authorization-code installation without a refresh token cannot
    /// get a token without a human.
    pub fn needs_a_login_to_request(&self, spec: &Spec) -> bool {
        spec.grant() == Grant::AuthorizationCode && self.record.refresh_token.is_none()
    }

    /// Whether a scheduled refresh (expiry or cron) may ask the provider:
    /// not when a human or a config change must come first. During a
    /// backoff it may (the queue holds the retry time).
    fn schedulable(&self, spec: &Spec) -> bool {
        match self.state {
            State::NeedsLogin(_) | State::Misconfigured(_) => false,
            State::Failing { .. } => true,
            _ => !self.needs_a_login_to_request(spec),
        }
    }

    /// Whether a scheduled refresh that comes due now should be skipped.
    pub fn skips_scheduled(&self, spec: &Spec, now: SystemTime) -> bool {
        !matches!(self.state, State::Failing { .. }) && self.refusal(spec, now).is_err()
    }

    /// A request to the provider begins.
    pub fn begin_request(&mut self) {
        self.state = State::Refreshing {
            failures: self.state.failures(),
        };
    }

    /// A request could not even be made: no refresh token (a login is
    /// needed). Returns the error for the caller.
    pub fn no_refresh_token(&mut self, spec: &Spec) -> Error {
        self.state = State::NeedsLogin(LoginNeeded::NoToken);
        no_token(spec)
    }

    /// The provider answered with tokens, which became `record` at `now`
    /// (`monotonic`: the same moment by the monotonic clock); `unsaved`
    /// says why they could not be written, if they could not.
    pub fn succeeded(
        &mut self,
        record: Record,
        unsaved: Option<Unsaved>,
        now: SystemTime,
        monotonic: Instant,
    ) {
        self.deadline = record
            .expires_at
            .map(|at| monotonic + at.duration_since(now).unwrap_or_default());
        self.record = record;
        self.record.last_error = unsaved.as_ref().map(Unsaved::sentence);
        self.state = State::Valid;
        self.unsaved = unsaved.map(Box::new);
    }

    /// A caller asked for more validity than a refresh just gave.
    pub fn fell_short(&mut self, monotonic: Instant) {
        self.fell_short_at = Some(monotonic);
    }

    /// Whether a caller asking for more than the held token gives should
    /// get it anyway, rather than cause another refresh.
    pub fn fell_short_recently(&self, monotonic: Instant) -> bool {
        self.fell_short_at
            .is_some_and(|at| monotonic.saturating_duration_since(at) < FELL_SHORT_PAUSE)
    }

    /// The request failed at `now` with `error`; `jitter` in [0, 1)
    /// spreads the backoff. Returns the error for the caller, whose
    /// sentence is also kept as the record's last error.
    pub fn failed(
        &mut self,
        spec: &Spec,
        error: &OAuthError,
        now: SystemTime,
        jitter: f64,
    ) -> Error {
        let detail = error.message.clone();
        self.state = match error.kind {
            ErrorKind::NeedsLogin => State::NeedsLogin(LoginNeeded::Lost { detail }),
            ErrorKind::Misconfigured => State::Misconfigured(Misconfiguration::Refused { detail }),
            ErrorKind::Transient => {
                let failures = self.state.failures() + 1;
                let delay = schedule::backoff(failures, error.retry_after, jitter);
                State::Failing {
                    failures,
                    retry_at: now + delay,
                    reason: detail,
                    grant_at_risk: error.grant_at_risk,
                }
            }
        };
        self.record.last_error = Some(match &self.state {
            State::Failing {
                reason,
                grant_at_risk,
                ..
            } => format!("{reason}{}", risk(*grant_at_risk)),
            _ => error.message.clone(),
        });
        Error::of_kind(error.kind, self.message(spec, now))
    }

    /// A write owed since an earlier failure happened (`Ok`) or failed
    /// again.
    pub fn write_retried(&mut self, outcome: Result<(), Unsaved>) {
        match outcome {
            Ok(()) => {
                self.unsaved = None;
                self.record.last_error = None;
            }
            Err(unsaved) => {
                self.record.last_error = Some(unsaved.sentence());
                self.unsaved = Some(Box::new(unsaved));
            }
        }
    }

    /// The tokens were revoked and forgotten.
    pub fn revoked(&mut self) {
        *self = Self::with(Record::default(), State::Empty(Empty::Never));
    }

    /// When the installation should next be refreshed, as of `now`
    /// (`monotonic`: the same moment by the monotonic clock): the one rule
    /// for expiry, backoff and cron, which all share one queue.
    ///
    /// - failing: the retry time;
    /// - holding an expiring token: [`schedule::refresh_due`], moved earlier
    ///   if the monotonic deadline says it expires sooner than the wall
    ///   clock does (the clock was set back); when that is already past (a
    ///   restart or a suspend), soon, spread over 5 s by `spread`;
    /// - with a cron `schedule`: its next time, when earlier;
    /// - nothing while a human or a config change must act first;
    /// - while the keyring is down, [`KEYRING_RECHECK`] from now, to see
    ///   whether it is back.
    ///
    /// `margin` is the configured `refresh_margin`; `jitter` and `spread`
    /// are random fractions in [0, 1).
    #[allow(clippy::too_many_arguments)] // each is one input of the rule
    pub fn next_due(
        &self,
        spec: &Spec,
        margin: Option<Duration>,
        now: SystemTime,
        monotonic: Instant,
        jitter: f64,
        spread: f64,
    ) -> Option<SystemTime> {
        if self.keyring_down.is_some() {
            return Some(now + KEYRING_RECHECK);
        }
        if !self.schedulable(spec) {
            return None;
        }
        let by_expiry = match &self.state {
            State::Failing { retry_at, .. } => Some(*retry_at),
            State::Valid | State::Refreshing { .. } => self.record.expires_at.map(|expires_at| {
                let obtained = self.record.last_refresh.unwrap_or(now).min(expires_at);
                let due = schedule::refresh_due(obtained, expires_at, margin, jitter);
                // How much sooner the token really expires than the wall
                // clock says (the clock was set back since it was issued).
                let early = self.deadline.map_or(Duration::ZERO, |deadline| {
                    let by_wall = expires_at.duration_since(now).unwrap_or_default();
                    by_wall.saturating_sub(deadline.saturating_duration_since(monotonic))
                });
                let due = due.checked_sub(early).unwrap_or(now);
                if due <= now {
                    now + schedule::OVERDUE_SPREAD.mul_f64(spread.clamp(0.0, 1.0))
                } else {
                    due
                }
            }),
            _ => None,
        };
        let by_cron = spec.schedule().and_then(|cron| cron.next_after(now));
        match (by_expiry, by_cron) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// A kept access token with a character outside RFC 6749's VSCHAR (kept
/// before tokd checked answers for them; a CR LF in one would add a
/// header where it is sent) is taken as expired: it is never served, and
/// the next get or the schedule replaces it.
fn expire_if_unprintable(record: &mut Record) {
    if record
        .access_token
        .as_ref()
        .is_some_and(|token| !crate::oauth::vschar_only(token.expose()))
    {
        record.expires_at = Some(SystemTime::UNIX_EPOCH);
    }
}

/// The record a successful token response makes of `before`, at `now`.
pub fn renewed(before: &Record, response: TokenResponse, spec: &Spec, now: SystemTime) -> Record {
    let mut record = before.clone();
    let renewable = response.refresh_token.is_some()
        || record.refresh_token.is_some()
        || spec.grant() == Grant::ClientCredentials;
    record.version = crate::storage::FORMAT_VERSION;
    record.expires_at = response.expires_at(now, renewable);
    record.access_token = Some(response.access_token);
    // A refresh token that came with client credentials is not kept: it
    // is never used (see `Refresher::attempt`).
    if let Some(refresh_token) = response.refresh_token
        && spec.grant() == Grant::AuthorizationCode
    {
        record.refresh_token = Some(refresh_token);
    }
    // The scopes granted. Those asked for are not kept: the record's empty
    // list means "as configured" (what the view shows), which saves a copy
    // per installation. Left out of the answer, they are what they were
    // (RFC 6749 §5.1 and §6).
    if let Some(scopes) = response.scopes {
        let asked = spec.scopes();
        let as_asked =
            scopes.len() == asked.len() && scopes.iter().all(|scope| asked.contains(scope));
        record.scopes = if as_asked { Vec::new() } else { scopes };
    }
    record.last_refresh = Some(now);
    record.last_error = None;
    record.issued_for = Some(spec.identity());
    record
}

/// The error when a token is asked for and none can be had without a human
/// (or, for client credentials, none could be requested).
pub fn no_token(spec: &Spec) -> Error {
    let name = spec.name();
    match spec.grant() {
        Grant::AuthorizationCode => Error::NeedsLogin(format!(
            "`{name}` has no token yet; run `tokctl login {name}`"
        )),
        Grant::ClientCredentials => Error::ProviderUnavailable(format!(
            "`{name}` has no token and none could be requested; see `tokctl status {name}`"
        )),
    }
}

mod sentences;

use sentences::risk;

#[cfg(test)]
mod tests;
