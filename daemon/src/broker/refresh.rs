//! Single-flight requests to the provider, their durable end, and the
//! schedule.
//!
//! One request at a time per installation: a caller that needs a new
//! token notes the slot's attempt counter, takes its `flight` lock, and if
//! an attempt finished while it waited takes that attempt's result instead
//! of making another request. So any number of concurrent gets, `tokctl
//! refresh` and the scheduler share one request; with a provider that
//! rotates refresh tokens a second request would burn the grant.
//!
//! The request runs in a task of its own that owns the `flight` guard (and
//! that stop waits for): a caller that goes away cannot cut a rotation
//! short between the provider's answer and the write to disk. The answer
//! is written durably before anyone sees it; if the write fails the tokens
//! are kept and served from memory and the write is retried under the same
//! lock, so it never overwrites a newer record.

use super::decision::{Decision, Got, Want};
use super::endpoints::Resolver;
use super::installation::{self, Spec};
use super::keeping::{Keeper, unsaved};
use super::slots::{Flight, Installations, Slot};
use super::{Error, Event};
use crate::oauth::{ErrorKind, OAuthClient, TokenResponse};
use crate::schedule;
use crate::sync::lock;
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};
use tracing::{debug, error, info, warn};

/// Retries of a failed state write: the first delay, doubled up to the cap.
const SAVE_RETRY_FIRST: Duration = Duration::from_secs(1);
const SAVE_RETRY_CAP: Duration = Duration::from_secs(60);

/// Requests to the provider, one at a time per installation, and what
/// comes of them.
#[derive(Debug)]
pub struct Refresher {
    installations: Arc<Installations>,
    keeper: Arc<Keeper>,
    resolver: Arc<Resolver>,
    http: OAuthClient,
    this: Weak<Refresher>,
}

impl Refresher {
    pub(super) fn new(
        installations: Arc<Installations>,
        keeper: Arc<Keeper>,
        resolver: Arc<Resolver>,
        http: OAuthClient,
    ) -> Arc<Self> {
        Arc::new_cyclic(|this| Self {
            installations,
            keeper,
            resolver,
            http,
            this: this.clone(),
        })
    }

    fn arc(&self) -> Arc<Self> {
        // `self` is always reached through the Arc built in `new`.
        self.this
            .upgrade()
            .expect("the refresher outlives its own calls")
    }

    /// Refreshes now on request (`tokctl refresh`), even after a failure.
    pub async fn refresh_now(&self, name: &str) -> Result<Option<SystemTime>, Error> {
        let slot = self.installations.get(name)?;
        let spec = slot.spec();
        let seen = {
            let inner = lock(&slot.inner);
            let installation = &inner.installation;
            // Tokens in a locked keyring are not missing: the attempt asks
            // for it to be unlocked.
            let unread = installation.tokens_unread || installation.keyring_down.is_some();
            if !unread && installation.needs_a_login_to_request(&spec) {
                return Err(installation::no_token(&spec));
            }
            inner.attempts
        };
        let got = self.request(&slot, seen, Want::Refresh, false).await?;
        Ok(got.expiry())
    }

    /// A refresh the queue (expiry, backoff or cron) asked for.
    pub(super) async fn scheduled(&self, name: &str) {
        let installations = &self.installations;
        let Ok(slot) = installations.get(name) else {
            return;
        };
        if lock(&slot.inner).installation.keyring_down.is_some() {
            // Only a check whether the keyring is back (with the read or
            // move it may owe); a refresh, if one is due, comes after.
            // (When it is, the others waiting for it are checked soon.)
            if let Ok(_guard) = installations.flight(&slot).await {
                let _ = self.keeper.gate(&slot, false).await;
            }
            installations.schedule(&slot);
            return;
        }
        let seen = {
            let inner = lock(&slot.inner);
            if inner
                .installation
                .skips_scheduled(&slot.spec(), installations.clock.now())
            {
                debug!(installation = %name, state = %inner.installation.kind(), "scheduled refresh skipped");
                drop(inner);
                installations.schedule(&slot);
                return;
            }
            inner.attempts
        };
        debug!(installation = %name, "scheduled refresh");
        let _ = self.request(&slot, seen, Want::Scheduled, false).await;
    }

    /// Makes one request to the provider unless one finished since the
    /// caller saw `seen` attempts, in which case its result is shared
    /// (read under the one lock this takes). `want`: what the caller
    /// wants back; unless it is the schedule, a locked keyring is worth
    /// asking the desktop to unlock. `keyring_first`: the caller decided before the
    /// keyring's tokens were read, so decide again once they are.
    pub(super) async fn request(
        &self,
        slot: &Arc<Slot>,
        seen: u32,
        want: Want,
        keyring_first: bool,
    ) -> Result<Got, Error> {
        let flight = self.installations.flight(slot).await;
        {
            let spec = slot.spec();
            let at = self.installations.at(&spec);
            let mut inner = lock(&slot.inner);
            let shared = match &flight {
                // Stopping: no request, but a held token still serves.
                Err(error) => Some(Err(error.clone())),
                Ok(_) if inner.attempts != seen => {
                    Some(inner.last_outcome.clone().map_err(|error| *error))
                }
                Ok(_) => None,
            };
            if let Some(outcome) = shared {
                return at.settle(&mut inner.installation, outcome, want);
            }
        }
        let guard = flight?;
        self.request_holding(slot, guard, want, keyring_first).await
    }

    /// [`Refresher::request`] for a caller that holds `guard`, the
    /// installation's `flight` lock, and knows no attempt finished since
    /// it decided.
    pub(super) async fn request_holding(
        &self,
        slot: &Arc<Slot>,
        guard: Flight,
        want: Want,
        keyring_first: bool,
    ) -> Result<Got, Error> {
        let (this, slot) = (self.arc(), slot.clone());
        // Boxed: the request (an HTTP exchange and a write) is a large
        // future, and every caller waiting on this one would otherwise
        // carry its size.
        self.in_flight(
            guard,
            "refresh",
            Box::pin(async move {
                // Nothing is asked of the provider when its answer could not
                // be kept where tokens go.
                if let Err(error) = this.keeper.gate(&slot, want.asked()).await {
                    let spec = slot.spec();
                    let at = this.installations.at(&spec);
                    let mut inner = lock(&slot.inner);
                    let installation = &mut inner.installation;
                    // Decided before the keyring was tried: what it would
                    // have decided with the keyring down.
                    if let (true, Want::Token(min_valid)) = (keyring_first, want) {
                        match at.decide_request(installation, min_valid) {
                            Decision::Serve(token) => return Ok(Got::Token(token)),
                            Decision::Refuse(error) => return Err(error),
                            _ => {}
                        }
                    }
                    return at.settle(installation, Err(error), want);
                }
                if let (true, Want::Token(min_valid)) = (keyring_first, want) {
                    let spec = slot.spec();
                    let at = this.installations.at(&spec);
                    let decision =
                        at.decide_after_keyring(&lock(&slot.inner).installation, min_valid);
                    match decision {
                        Decision::Serve(token) => return Ok(Got::Token(token)),
                        Decision::Refuse(error) => return Err(error),
                        _ => {}
                    }
                }
                this.attempt(&slot, want).await
            }),
        )
        .await
    }

    /// Runs `work` in a tracked task of its own that holds `guard`, the
    /// installation's `flight` lock.
    pub(super) async fn in_flight<T: Send + 'static>(
        &self,
        guard: Flight,
        what: &'static str,
        work: impl Future<Output = Result<T, Error>> + Send + 'static,
    ) -> Result<T, Error> {
        let task = self.installations.tasks.spawn(async move {
            let _guard = guard;
            work.await
        });
        task.await.unwrap_or_else(|error| {
            error!(%error, "the {what} task failed");
            Err(Error::ProviderUnavailable(format!(
                "the {what} failed inside tokd; see its log"
            )))
        })
    }

    /// One request to the provider; the caller holds `flight`. Returns
    /// what the caller wanted, decided under the lock that records the
    /// outcome.
    async fn attempt(&self, slot: &Slot, want: Want) -> Result<Got, Error> {
        let installations = &self.installations;
        let spec = slot.spec();
        let refresh_token = {
            let mut inner = lock(&slot.inner);
            installations.change(slot, &mut inner, |installation, _| {
                installation.begin_request();
            });
            // Client credentials never use one, even one kept by an
            // earlier tokd.
            match spec.grant() {
                crate::config::Grant::AuthorizationCode => {
                    inner.installation.record.refresh_token.clone()
                }
                crate::config::Grant::ClientCredentials => None,
            }
        };
        let consumer = &spec.consumer;
        debug!(installation = %slot.name, "asking the provider for a token");
        let http = &self.http;
        let resolver = &self.resolver;
        // Client credentials are always asked for with the client's own
        // credentials, even where the provider sent a refresh token with
        // the last answer (RFC 6749 §4.4.3 says it should not): nothing of
        // the grant can be lost, and no sentence says it could be.
        let mut result = match (&refresh_token, spec.grant()) {
            (Some(refresh_token), crate::config::Grant::AuthorizationCode) => {
                resolver
                    .with_endpoints(consumer, |endpoints| async move {
                        http.refresh(consumer, &endpoints, refresh_token).await
                    })
                    .await
            }
            (_, crate::config::Grant::ClientCredentials) => {
                let scopes = spec.scopes();
                let scopes = &scopes;
                resolver
                    .with_endpoints(consumer, |endpoints| async move {
                        http.client_credentials(consumer, &endpoints, scopes).await
                    })
                    .await
            }
            (None, crate::config::Grant::AuthorizationCode) => {
                let mut inner = lock(&slot.inner);
                let error = installations.change(slot, &mut inner, |installation, spec| {
                    installation.no_refresh_token(spec)
                });
                inner.finished(Err(error.clone()));
                return Err(error);
            }
        };
        // Before declaring the grant lost: another writer (a restored
        // backup, a second tokd sharing this home, a hand edit) may have
        // put a newer refresh token in the state file.
        if let (Err(error), Some(used)) = (&result, &refresh_token)
            && error.kind == ErrorKind::NeedsLogin
            && let Some(newer) = self.keeper.newer_stored(slot, used).await
            && let Some(newer_token) = newer.refresh_token.clone()
        {
            info!(installation = %slot.name, "the refresh token was refused, but the state file holds another one; trying that");
            lock(&slot.inner).installation.record = newer;
            let newer_token = &newer_token;
            result = resolver
                .with_endpoints(consumer, |endpoints| async move {
                    http.refresh(consumer, &endpoints, newer_token).await
                })
                .await;
        }
        match result {
            Ok(response) => self.keep_answer(slot, &spec, response, want).await,
            Err(failure) => {
                let (now, monotonic) = installations.now();
                let mut inner = lock(&slot.inner);
                let error = installations.change(slot, &mut inner, |installation, spec| {
                    installation.failed(spec, &failure, now, schedule::random_fraction())
                });
                inner.finished(Err(error.clone()));
                warn!(installation = %slot.name, error = %failure.message, state = %inner.installation.kind(), "request to the provider failed");
                super::decision::At {
                    spec: &spec,
                    now,
                    monotonic,
                }
                .settle(&mut inner.installation, Err(error), want)
            }
        }
    }

    /// Keeps a token response durably, then makes it visible; returns what
    /// the caller wanted. The caller holds `flight`.
    pub(super) async fn keep_answer(
        &self,
        slot: &Slot,
        spec: &Spec,
        response: TokenResponse,
        want: Want,
    ) -> Result<Got, Error> {
        let installations = &self.installations;
        let (now, monotonic) = installations.now();
        let mut record = {
            let mut inner = lock(&slot.inner);
            inner.writing = true;
            installation::renewed(&inner.installation.record, response, spec, now)
        };
        let unsaved = match self.keeper.save(slot, &record).await {
            Ok(store) => {
                record.store = store;
                None
            }
            Err(error) => {
                // The new tokens exist only in memory now: keep serving
                // them (the old refresh token may already be dead), say so
                // loudly and keep trying to write them.
                error!(installation = %slot.name, %error, "cannot write the new tokens; they are held in memory only until a write succeeds");
                Some(unsaved(&error))
            }
        };
        let expires_at = record.expires_at;
        let retry = unsaved.is_some();
        let got = {
            let mut inner = lock(&slot.inner);
            installations.change(slot, &mut inner, |installation, _| {
                installation.succeeded(record, unsaved, now, monotonic);
            });
            inner.writing = false;
            inner.finished(Ok(()));
            installations
                .at(spec)
                .settle(&mut inner.installation, Ok(()), want)
        };
        if retry {
            self.retry_save(&slot.name);
        }
        info!(installation = %slot.name, expires_at = ?expires_at.map(schedule::unix_seconds), "token refreshed");
        installations.emit(Event::TokenRefreshed {
            name: slot.name.to_string(),
            expires_at,
        });
        got
    }

    /// Retries the write of `name`'s record until it succeeds, the slot
    /// goes away, or tokd stops (which tries once more itself). Each try
    /// holds the installation's `flight` lock.
    fn retry_save(&self, name: &str) {
        let weak = self.this.clone();
        let name = name.to_owned();
        self.installations.tasks.spawn_until_stopped(async move {
            let mut delay = SAVE_RETRY_FIRST;
            loop {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(SAVE_RETRY_CAP);
                let Some(this) = weak.upgrade() else { return };
                let Ok(slot) = this.installations.get(&name) else {
                    return;
                };
                let _guard = slot.take_flight().await;
                if this.save_if_unsaved(&slot).await {
                    return;
                }
            }
        });
    }

    /// Writes the slot's record if a write is owed; true when nothing is
    /// owed any more. The caller holds `flight`.
    pub(super) async fn save_if_unsaved(&self, slot: &Slot) -> bool {
        let record = {
            let inner = lock(&slot.inner);
            if inner.installation.unsaved.is_none() {
                return true;
            }
            inner.installation.record.clone()
        };
        let outcome = self.keeper.save(slot, &record).await;
        match &outcome {
            Ok(_) => {
                info!(installation = %slot.name, "the tokens held in memory are written now");
            }
            Err(error) => {
                warn!(installation = %slot.name, %error, "still cannot write the tokens held in memory");
            }
        }
        let written = outcome.is_ok();
        let mut inner = lock(&slot.inner);
        self.installations
            .change(slot, &mut inner, |installation, _| {
                installation.write_retried(outcome.as_ref().map(|_| ()).map_err(unsaved));
                if let Ok(store) = outcome {
                    installation.record.store = store;
                }
            });
        written
    }
}
