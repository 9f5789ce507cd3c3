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

use super::installation::{self, Spec};
use super::keeping::unsaved;
use super::{Broker, Error, Event, Slot};
use crate::oauth::{ErrorKind, TokenResponse};
use crate::schedule;
use crate::sync::lock;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tracing::{debug, error, info, warn};

/// Retries of a failed state write: the first delay, doubled up to the cap.
const SAVE_RETRY_FIRST: Duration = Duration::from_secs(1);
const SAVE_RETRY_CAP: Duration = Duration::from_secs(60);

impl Broker {
    /// Refreshes now on request (`tokctl refresh`), even after a failure.
    pub async fn refresh_now(&self, name: &str) -> Result<Option<SystemTime>, Error> {
        let slot = self.slot(name)?;
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
        self.attempt_shared(&slot, seen, true).await?;
        Ok(lock(&slot.inner).installation.record.expires_at)
    }

    /// A refresh the queue (expiry, backoff or cron) asked for.
    pub(crate) async fn scheduled(&self, name: &str) {
        let Ok(slot) = self.slot(name) else { return };
        if lock(&slot.inner).installation.keyring_down.is_some() {
            // Only a check whether the keyring is back (with the read or
            // move it may owe); a refresh, if one is due, comes after.
            let back = match self.flight(&slot).await {
                Ok(_guard) => self.keyring_gate(&slot, false).await.is_ok(),
                Err(_) => false,
            };
            if back {
                info!(installation = %name, "the keyring is usable again");
                // The others waiting for the same keyring need not wait
                // for their own next check.
                // (Spread over a few seconds, as overdue ones are at start.)
                let now = self.clock.now();
                for other in self.all_slots() {
                    if lock(&other.inner).installation.keyring_down.is_some() {
                        let spread = schedule::OVERDUE_SPREAD.mul_f64(schedule::random_fraction());
                        self.queue.set(&other.name, Some(now + spread));
                    }
                }
            }
            self.schedule(&slot);
            return;
        }
        let seen = {
            let inner = lock(&slot.inner);
            if inner
                .installation
                .skips_scheduled(&slot.spec(), self.clock.now())
            {
                debug!(installation = %name, state = %inner.installation.kind(), "scheduled refresh skipped");
                drop(inner);
                self.schedule(&slot);
                return;
            }
            inner.attempts
        };
        debug!(installation = %name, "scheduled refresh");
        let _ = self.attempt_shared(&slot, seen, false).await;
    }

    /// Puts the slot in the queue at its next due time (or takes it out).
    pub(crate) fn schedule(&self, slot: &Slot) {
        let spec = slot.spec();
        let inner = lock(&slot.inner);
        self.arm(
            slot,
            &spec,
            &inner.installation,
            self.clock.now(),
            self.clock.monotonic(),
        );
    }

    /// Makes one request to the provider unless one finished since the
    /// caller saw `seen` attempts, in which case its result is shared.
    /// `asked`: a caller needs the token, so a locked keyring is worth a
    /// prompt on the desktop.
    pub(crate) async fn attempt_shared(
        &self,
        slot: &Arc<Slot>,
        seen: u64,
        asked: bool,
    ) -> Result<(), Error> {
        let guard = self.flight(slot).await?;
        {
            let inner = lock(&slot.inner);
            if inner.attempts != seen {
                return inner.last_outcome.clone();
            }
        }
        let (broker, slot) = (self.arc(), slot.clone());
        self.in_flight(guard, "refresh", async move {
            // Nothing is asked of the provider when its answer could not
            // be kept where tokens go.
            broker.keyring_gate(&slot, asked).await?;
            broker.attempt(&slot).await
        })
        .await
    }

    /// Takes the installation's `flight` lock, unless tokd is stopping.
    pub(crate) async fn flight(
        &self,
        slot: &Slot,
    ) -> Result<tokio::sync::OwnedMutexGuard<()>, Error> {
        self.refuse_if_stopping()?;
        let guard = slot.flight.clone().lock_owned().await;
        // Checked again: stop may have begun while this call waited.
        self.refuse_if_stopping()?;
        Ok(guard)
    }

    pub(crate) fn refuse_if_stopping(&self) -> Result<(), Error> {
        if self.tasks.stopping() {
            Err(Error::stopping())
        } else {
            Ok(())
        }
    }

    /// Runs `work` in a tracked task of its own that holds `guard`, the
    /// installation's `flight` lock.
    pub(crate) async fn in_flight<T: Send + 'static>(
        &self,
        guard: tokio::sync::OwnedMutexGuard<()>,
        what: &'static str,
        work: impl Future<Output = Result<T, Error>> + Send + 'static,
    ) -> Result<T, Error> {
        let task = self.tasks.spawn(async move {
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

    /// One request to the provider; the caller holds `flight`.
    async fn attempt(&self, slot: &Slot) -> Result<(), Error> {
        let spec = slot.spec();
        let refresh_token = {
            let mut inner = lock(&slot.inner);
            self.change(slot, &mut inner, |installation, _| {
                installation.begin_request();
            });
            inner.installation.record.refresh_token.clone()
        };
        let consumer = &spec.consumer;
        debug!(installation = %slot.name, "asking the provider for a token");
        let http = &self.http;
        let mut result = match (&refresh_token, spec.grant()) {
            (Some(refresh_token), _) => {
                self.with_endpoints(consumer, |endpoints| async move {
                    http.refresh(consumer, &endpoints, refresh_token).await
                })
                .await
            }
            (None, crate::config::Grant::ClientCredentials) => {
                let scopes = spec.scopes();
                let scopes = &scopes;
                self.with_endpoints(consumer, |endpoints| async move {
                    http.client_credentials(consumer, &endpoints, scopes).await
                })
                .await
            }
            (None, crate::config::Grant::AuthorizationCode) => {
                let mut inner = lock(&slot.inner);
                let error = self.change(slot, &mut inner, |installation, spec| {
                    installation.no_refresh_token(spec)
                });
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
            && let Some(newer) = self.newer_stored(slot, used).await
            && let Some(newer_token) = newer.refresh_token.clone()
        {
            info!(installation = %slot.name, "the refresh token was refused, but the state file holds another one; trying that");
            lock(&slot.inner).installation.record = newer;
            let newer_token = &newer_token;
            result = self
                .with_endpoints(consumer, |endpoints| async move {
                    http.refresh(consumer, &endpoints, newer_token).await
                })
                .await;
        }
        match result {
            Ok(response) => {
                self.keep_answer(slot, &spec, response).await;
                Ok(())
            }
            Err(failure) => {
                let error = {
                    let now = self.clock.now();
                    let mut inner = lock(&slot.inner);
                    let error = self.change(slot, &mut inner, |installation, spec| {
                        installation.failed(spec, &failure, now, schedule::random_fraction())
                    });
                    inner.attempts += 1;
                    inner.last_outcome = Err(error.clone());
                    warn!(installation = %slot.name, error = %failure.message, state = %inner.installation.kind(), "request to the provider failed");
                    error
                };
                Err(error)
            }
        }
    }

    /// Stores a token response durably, then makes it visible. The caller
    /// holds `flight`.
    pub(crate) async fn keep_answer(&self, slot: &Slot, spec: &Spec, response: TokenResponse) {
        let (now, monotonic) = (self.clock.now(), self.clock.monotonic());
        let mut record = {
            let mut inner = lock(&slot.inner);
            inner.writing = true;
            installation::renewed(&inner.installation.record, response, spec, now)
        };
        let unsaved = match self
            .storage
            .save(&slot.name, &spec.consumer.name, &record)
            .await
        {
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
        {
            let mut inner = lock(&slot.inner);
            self.change(slot, &mut inner, |installation, _| {
                installation.succeeded(record, unsaved, now, monotonic);
            });
            inner.writing = false;
            inner.attempts += 1;
            inner.last_outcome = Ok(());
        }
        if retry {
            self.retry_save(&slot.name);
        }
        info!(installation = %slot.name, expires_at = ?expires_at.map(schedule::unix_seconds), "token refreshed");
        self.emit(Event::TokenRefreshed {
            name: slot.name.to_string(),
            expires_at,
        });
    }

    /// Retries the write of `name`'s record until it succeeds, the slot
    /// goes away, or tokd stops (which tries once more itself). Each try
    /// holds the installation's `flight` lock.
    fn retry_save(&self, name: &str) {
        let weak = self.this.clone();
        let name = name.to_owned();
        self.tasks.spawn_until_stopped(async move {
            let mut delay = SAVE_RETRY_FIRST;
            loop {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(SAVE_RETRY_CAP);
                let Some(broker) = weak.upgrade() else { return };
                let Ok(slot) = broker.slot(&name) else { return };
                let _guard = slot.flight.lock().await;
                if broker.save_if_unsaved(&slot).await {
                    return;
                }
            }
        });
    }

    /// Writes the slot's record if a write is owed; true when nothing is
    /// owed any more. The caller holds `flight`.
    pub(crate) async fn save_if_unsaved(&self, slot: &Slot) -> bool {
        let record = {
            let inner = lock(&slot.inner);
            if inner.installation.unsaved.is_none() {
                return true;
            }
            inner.installation.record.clone()
        };
        let outcome = self
            .storage
            .save(&slot.name, &slot.spec().consumer.name, &record)
            .await;
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
        self.change(slot, &mut inner, |installation, _| {
            installation.write_retried(outcome.as_ref().map(|_| ()).map_err(unsaved));
            if let Ok(store) = outcome {
                installation.record.store = store;
            }
        });
        written
    }
}
