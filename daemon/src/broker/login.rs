//! Logins: starting one (`state`, PKCE, the authorization URL, a loopback
//! listener for the answer), taking the provider's answer, and exchanging
//! the code, once, under the installation's `flight` lock.

use super::decision::Want;
use super::device::Polling;
use super::endpoints::Resolver;
use super::installation::Spec;
use super::keeping::Keeper;
use super::refresh::Refresher;
use super::slots::{Installations, Slot};
use super::{Error, Event};
use crate::config::{self, Grant};
use crate::login::{self, Answer, Logins, Page, Pending};
use crate::oauth::OAuthClient;
use crate::oauth::{self, Pkce};
use crate::secret::{AuthorizationCode, PkceVerifier};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};
use tracing::{info, warn};
use url::Url;

/// The longest code accepted from a caller.
const MAX_CODE_LEN: usize = 4096;

/// Logins: the pending ones, their listeners, and the device logins
/// being polled.
#[derive(Debug)]
pub struct LoginDesk {
    pub(super) installations: Arc<Installations>,
    pub(super) refresher: Arc<Refresher>,
    pub(super) keeper: Arc<Keeper>,
    pub(super) resolver: Arc<Resolver>,
    pub(super) http: OAuthClient,
    /// Browser logins waiting for the provider's answer.
    pub(super) pending: Arc<Logins>,
    /// The device logins polling now, by installation.
    pub(super) device: Mutex<HashMap<String, Polling>>,
    pub(super) this: Weak<LoginDesk>,
}

impl LoginDesk {
    pub(super) fn new(
        installations: Arc<Installations>,
        refresher: Arc<Refresher>,
        keeper: Arc<Keeper>,
        resolver: Arc<Resolver>,
        http: OAuthClient,
        login_timeout: std::time::Duration,
    ) -> Arc<Self> {
        Arc::new_cyclic(|this| Self {
            installations,
            refresher,
            keeper,
            resolver,
            http,
            pending: Arc::new(Logins::new(login_timeout)),
            device: Mutex::default(),
            this: this.clone(),
        })
    }

    pub(super) fn arc(&self) -> Arc<Self> {
        // `self` is always reached through the Arc built in `new`.
        self.this
            .upgrade()
            .expect("the login desk outlives its own calls")
    }

    /// Forgets `name`'s pending logins (it left the config).
    pub(super) fn forget(&self, name: &str) {
        self.pending.take_by_name(name);
    }

    /// Whether a login of `name` can be finished without a terminal: a
    /// browser login whose answer tokd receives on a loopback
    /// `redirect_uri` (what a notification's "Log in" starts).
    pub fn login_finishes_by_itself(&self, name: &str) -> bool {
        self.installations.get(name).is_ok_and(|slot| {
            let spec = slot.spec();
            let consumer = &spec.consumer;
            spec.grant() == Grant::AuthorizationCode
                && (consumer.auth_url.is_some() || consumer.issuer.is_some())
                && consumer
                    .redirect_uri
                    .as_ref()
                    .is_some_and(|uri| uri.scheme() == "http" && config::is_loopback(uri))
        })
    }

    /// Starts an authorization-code login: the URL to open, and whether the
    /// daemon listens on the loopback `redirect_uri` for the answer, for
    /// `wait` (none: the longest, [`login::LOGIN_TIMEOUT`]; more is
    /// refused). A login finished by hand waits the longest.
    pub async fn begin_login(
        &self,
        name: &str,
        wait: Option<Duration>,
    ) -> Result<(Url, bool), Error> {
        self.installations.refuse_if_stopping()?;
        if let Some(wait) = wait
            && (wait > login::LOGIN_TIMEOUT || wait.is_zero())
        {
            return Err(Error::InvalidArgument(format!(
                "tokd waits at most {} for a login, and more than nothing; ask for {} or less",
                humantime::format_duration(login::LOGIN_TIMEOUT),
                humantime::format_duration(login::LOGIN_TIMEOUT)
            )));
        }
        let slot = self.installations.get(name)?;
        let spec = slot.spec();
        if spec.grant() != Grant::AuthorizationCode {
            return Err(Error::InvalidArgument(format!(
                "`{name}` uses client credentials and needs no login; `tokctl refresh {name}` requests a new token"
            )));
        }
        // A login whose tokens could not be kept is refused before the user
        // goes through the provider's pages (a human is there: the
        // desktop is asked to unlock the keyring).
        self.keyring_ready(&slot).await?;
        let consumer = &spec.consumer;
        let endpoints = self.resolver.endpoints(consumer).await.map_err(|error| {
            Error::of_kind(
                error.kind,
                format!("cannot start the login of `{name}`: {}", error.message),
            )
        })?;
        let state = oauth::random_token(24);
        let pkce = Pkce::generate();
        let redirect_uri = consumer.redirect_uri.clone();
        let url = oauth::authorization_url(
            consumer,
            &endpoints,
            &spec.scopes(),
            &state,
            Some(&pkce.challenge),
            redirect_uri.as_ref(),
        )
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "consumer `{}` has no auth_url, so `{name}` logs in with the device flow: `tokctl login {name} --device`",
                consumer.name
            ))
        })?;
        let loopback = redirect_uri
            .as_ref()
            .filter(|uri| uri.scheme() == "http" && config::is_loopback(uri));
        let wait = match loopback {
            Some(_) => self.pending.wait(wait),
            None => self.pending.wait(None),
        };
        let listen_addrs = match loopback {
            Some(uri) => login::ensure_listener(
                &self.pending,
                &self.installations.tasks,
                uri,
                self.answer_handler(),
                wait,
            )
            .await
            .map_err(|error| {
                Error::Misconfigured(format!(
                    "{error}; free that port and run `tokctl login {name}` again"
                ))
            })?,
            None => Vec::new(),
        };
        let listening = !listen_addrs.is_empty();
        self.pending.add(
            Pending {
                name: name.to_owned(),
                state,
                verifier: pkce.verifier,
                redirect_uri,
                listen_addrs,
            },
            wait,
        );
        info!(installation = %name, listening, "login started");
        Ok((url, listening))
    }

    /// The listener's callback: the broker's side of an answer.
    fn answer_handler(&self) -> login::Handler {
        let weak = self.this.clone();
        Arc::new(move |answer| {
            let weak = weak.clone();
            Box::pin(async move {
                match weak.upgrade() {
                    Some(desk) => desk.take_answer(answer).await,
                    None => Page::new(503, "tokd is stopping."),
                }
            })
        })
    }

    /// What the provider sent the browser back with: a pending login is
    /// taken only with its own `state` and with a code or an error, and
    /// used once.
    async fn take_answer(&self, answer: Answer) -> Page {
        if answer.code.is_none() && answer.error.is_none() {
            return Page::new(400, "The answer has no code.");
        }
        let Some(pending) = answer
            .state
            .as_deref()
            .and_then(|state| self.pending.take_by_state(state))
        else {
            warn!("a login answer with an unknown or used state was refused");
            return Page::new(
                400,
                "This login answer is unknown, already used or expired. Run `tokctl login NAME` again.",
            );
        };
        let name = pending.name;
        if let Some(error) = answer.error {
            let detail = match answer.error_description {
                Some(description) => format!("{error}: {description}"),
                None => error,
            };
            let detail = oauth::sanitize(&detail, 200);
            let message = format!(
                "the provider refused the login of `{name}` ({detail}); run `tokctl login {name}` again"
            );
            self.installations.emit(Event::LoginFinished {
                name,
                success: false,
                message: message.clone(),
            });
            return Page::new(200, message);
        }
        let Some(code) = answer.code else {
            return Page::new(400, "The answer has no code.");
        };
        let Ok(slot) = self.installations.get(&name) else {
            return Page::new(410, "That installation is gone from the config.");
        };
        match self
            .exchange(
                &slot,
                code,
                Some(pending.verifier),
                pending.redirect_uri,
                ByHand::No,
            )
            .await
        {
            Ok(_) => Page::new(
                200,
                format!("Logged in: tokd holds a token for `{name}`. You can close this tab."),
            ),
            Err(error) => Page::new(200, error.to_string()),
        }
    }

    /// Finishes a login with a code typed in by hand. Uses the pending
    /// login's PKCE verifier when `begin_login` was called; without one the
    /// code is exchanged without PKCE (a URL made elsewhere).
    pub async fn complete_login(
        &self,
        name: &str,
        code: &str,
    ) -> Result<Option<SystemTime>, Error> {
        let slot = self.installations.get(name)?;
        let code = code.trim();
        if code.is_empty() || code.len() > MAX_CODE_LEN || code.chars().any(char::is_control) {
            return Err(Error::InvalidArgument(
                "that code is empty, too long or has control characters; paste the `code` value from the address the browser was sent to".to_owned(),
            ));
        }
        let taken = self.pending.take_for_code(name);
        let (verifier, redirect_uri) = match &taken {
            Some(taken) => (
                Some(taken.pending.verifier.clone()),
                taken.pending.redirect_uri.clone(),
            ),
            None => (None, slot.spec().consumer.redirect_uri.clone()),
        };
        let outcome = self
            .exchange(
                &slot,
                AuthorizationCode::new(code),
                verifier,
                redirect_uri,
                ByHand::Yes,
            )
            .await;
        // A code not sent (the keyring locked, tokd stopping) or sent to a
        // provider that failed has most likely not been used: the same
        // command may be run again, as the sentence says, and finds the
        // login's verifier still there, for the time the login had left.
        let unused = matches!(
            outcome,
            Err(Error::ProviderUnavailable(_) | Error::Locked(_) | Error::Stopping(_))
        );
        if let (true, Some(taken)) = (unused, taken) {
            self.pending.put_back(taken);
        }
        outcome
    }

    /// Exchanges a code under the installation's `flight` lock.
    async fn exchange(
        &self,
        slot: &Arc<Slot>,
        code: AuthorizationCode,
        verifier: Option<PkceVerifier>,
        redirect_uri: Option<Url>,
        by_hand: ByHand,
    ) -> Result<Option<SystemTime>, Error> {
        let guard = match self.installations.flight(slot).await {
            Ok(guard) => guard,
            Err(error) => return Err(self.login_failed(slot, error)),
        };
        let (desk, slot) = (self.arc(), slot.clone());
        self.refresher
            .in_flight(guard, "login", async move {
                // A code is used once: not before its tokens can be kept.
                if let Err(error) = desk.keeper.gate(&slot, true).await {
                    return Err(desk.login_failed(&slot, error));
                }
                let spec = slot.spec();
                desk.exchange_locked(&slot, &spec, code, verifier, redirect_uri, by_hand)
                    .await
            })
            .await
    }

    /// Makes sure the keyring (when the tokens go there) can keep a
    /// login's tokens, asking the desktop to unlock it.
    pub(super) async fn keyring_ready(&self, slot: &Arc<Slot>) -> Result<(), Error> {
        let _guard = self.installations.flight(slot).await?;
        self.keeper.gate(slot, true).await
    }

    /// A login that ends before its code is sent: `LoginFinished` says so
    /// (a waiting `tokctl login` must not wait for the browser in vain).
    fn login_failed(&self, slot: &Slot, error: Error) -> Error {
        self.installations.emit(Event::LoginFinished {
            name: slot.name.to_string(),
            success: false,
            message: error.to_string(),
        });
        error
    }

    async fn exchange_locked(
        &self,
        slot: &Slot,
        spec: &Spec,
        code: AuthorizationCode,
        verifier: Option<PkceVerifier>,
        redirect_uri: Option<Url>,
        by_hand: ByHand,
    ) -> Result<Option<SystemTime>, Error> {
        let (http, consumer) = (&self.http, &spec.consumer);
        let (code, verifier, redirect_uri) = (&code, verifier.as_ref(), redirect_uri.as_ref());
        let result = self
            .resolver
            .with_endpoints(consumer, |endpoints| async move {
                http.exchange_code(consumer, &endpoints, code, verifier, redirect_uri)
                    .await
            })
            .await;
        let name = slot.name.to_string();
        match result {
            Ok(response) => {
                let expires_at = self
                    .refresher
                    .keep_answer(slot, spec, response, Want::Refresh)
                    .await
                    .map_or(None, |got| got.expiry());
                self.installations.emit(Event::LoginFinished {
                    name: name.clone(),
                    success: true,
                    message: format!("logged in: `{name}` holds a fresh token"),
                });
                info!(installation = %name, "login finished");
                Ok(expires_at)
            }
            Err(error) => {
                let message = match error.kind {
                    oauth::ErrorKind::Transient => match by_hand {
                        ByHand::Yes => format!(
                            "the login of `{name}` could not be finished: {}; try again with the same code in a moment (a code works for a few minutes), or run `tokctl login {name}` for a new one",
                            error.message
                        ),
                        ByHand::No => format!(
                            "the login of `{name}` could not be finished: {}; run `tokctl login {name}` again",
                            error.message
                        ),
                    },
                    oauth::ErrorKind::NeedsLogin => format!(
                        "the provider refused the login of `{name}` ({}); run `tokctl login {name}` again",
                        error.message
                    ),
                    oauth::ErrorKind::Misconfigured => format!(
                        "the provider refused consumer `{}` at the login of `{name}` ({}); fix the config, `tokctl reload`, and log in again",
                        spec.consumer.name, error.message
                    ),
                };
                warn!(installation = %name, error = %error.message, "login failed");
                self.installations.emit(Event::LoginFinished {
                    name,
                    success: false,
                    message: message.clone(),
                });
                Err(Error::of_kind(error.kind, message))
            }
        }
    }
}

/// Whether a code came typed in by hand (`tokctl login NAME --code`),
/// which can be typed again, or through the login listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ByHand {
    Yes,
    No,
}
