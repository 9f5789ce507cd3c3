//! What a caller gets: decided under the installation's lock, from the
//! installation as it is, at one moment ([`At`]). Pure, like
//! `installation.rs`: the time is an argument.
//!
//! A get decides once ([`At::decide`]): serve the held token, refuse, wait
//! for a refresh in flight, or request. A request that finishes (its own
//! or one it waited for) gives each caller what it wanted
//! ([`At::settle`]).

use super::Error;
use super::installation::{Installation, Spec, State, Token, no_token};
use std::time::{Duration, Instant, SystemTime};

/// Why a token shorter than asked is served after a refresh.
const SHORT_LIVED: &str = "the provider's tokens do not live that long, and this one is the newest";

/// What a get decides under the installation's lock.
#[derive(Debug)]
pub enum Decision {
    /// The token to hand out.
    Serve(Token),
    /// Why there is none.
    Refuse(Error),
    /// A refresh is in flight: wait for it, within a bound, else hand out
    /// this held token.
    AwaitRotation(Token),
    /// Ask the provider; `keyring_first`: read the tokens kept in the
    /// keyring first, and decide again with them.
    Request { keyring_first: bool },
}

/// What a caller of a request wants back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// A token valid this long (a get): the held one, with a warning,
    /// when the provider fails and it is still valid.
    Token(Duration),
    /// A new token (`tokctl refresh`, a login): the outcome as it is,
    /// and the new expiry.
    Refresh,
    /// The same, for the schedule: nobody is waiting, so the desktop is
    /// not asked to unlock a locked keyring.
    Scheduled,
}

impl Want {
    /// Whether someone waits for the answer (so a locked keyring is worth
    /// an unlock dialog).
    pub fn asked(self) -> bool {
        self != Want::Scheduled
    }
}

/// What a request gave its caller.
#[derive(Debug)]
pub enum Got {
    Token(Token),
    /// The held token's expiry (`None`: it does not expire, or there is
    /// none).
    Expiry(Option<SystemTime>),
}

impl Got {
    pub fn expiry(&self) -> Option<SystemTime> {
        match self {
            Got::Token(token) => token.expires_at,
            Got::Expiry(expiry) => *expiry,
        }
    }
}

/// One moment, for one installation's spec: `now` by the wall clock and
/// `monotonic`, the same moment by the monotonic clock.
#[derive(Debug, Clone, Copy)]
pub struct At<'a> {
    pub spec: &'a Spec,
    pub now: SystemTime,
    pub monotonic: Instant,
}

impl At<'_> {
    /// What a caller asking for a token valid for `min_valid` gets.
    pub fn decide(&self, installation: &Installation, min_valid: Duration) -> Decision {
        // A lost grant takes its access tokens with it at the provider
        // (revocation, Bitbucket's scope change): say so at once rather
        // than hand out a token that will be refused.
        match installation.token_valid_for(self.now, self.monotonic, min_valid) {
            // A provider that rotates may kill the held access token with
            // the refresh token in flight.
            Some(token) if matches!(installation.state, State::Refreshing { .. }) => {
                return Decision::AwaitRotation(token);
            }
            Some(token) if !matches!(installation.state, State::NeedsLogin(_)) => {
                return Decision::Serve(token);
            }
            _ => {}
        }
        // Asking for more than the provider's tokens live, a caller takes
        // the held token for a while rather than refresh (`decide_request`);
        // not the one a refresh in flight may be killing.
        if matches!(installation.state, State::Refreshing { .. })
            && installation.fell_short_recently(self.monotonic)
            && let Some(held) =
                installation.token_valid_for(self.now, self.monotonic, Duration::ZERO)
        {
            return Decision::AwaitRotation(held.with_warning(self.now, min_valid, SHORT_LIVED));
        }
        // Tokens kept in a keyring that was locked or away: read first
        // (asking the desktop to unlock it); they may do.
        if installation.keyring_down.is_some() || installation.tokens_unread {
            return Decision::Request {
                keyring_first: true,
            };
        }
        self.decide_request(installation, min_valid)
    }

    /// [`At::decide`] once the keyring has been read: the tokens read may
    /// do.
    pub fn decide_after_keyring(
        &self,
        installation: &Installation,
        min_valid: Duration,
    ) -> Decision {
        match installation.token_valid_for(self.now, self.monotonic, min_valid) {
            Some(token) => Decision::Serve(token),
            None => self.decide_request(installation, min_valid),
        }
    }

    /// Whether a caller whose held token will not do may ask the provider.
    pub fn decide_request(&self, installation: &Installation, min_valid: Duration) -> Decision {
        let (spec, now) = (self.spec, self.now);
        if let State::NeedsLogin(_) = installation.state {
            return Decision::Refuse(Error::NeedsLogin(installation.message(spec, now)));
        }
        let held = installation.token_valid_for(now, self.monotonic, Duration::ZERO);
        if let Some(token) = held.clone()
            && installation.fell_short_recently(self.monotonic)
        {
            return Decision::Serve(token.with_warning(now, min_valid, SHORT_LIVED));
        }
        match installation.refusal(spec, now) {
            // The request asks the desktop to unlock the keyring.
            Ok(()) | Err(Error::Locked(_)) => Decision::Request {
                keyring_first: false,
            },
            // Backing off after a transient failure: the held token, if it
            // is valid at all, beats no token.
            Err(Error::ProviderUnavailable(message)) => match held {
                Some(token) => Decision::Serve(token.with_warning(now, min_valid, &message)),
                None => Decision::Refuse(Error::ProviderUnavailable(message)),
            },
            Err(error) => Decision::Refuse(error),
        }
    }

    /// What a request that ended with `outcome` gives a caller who wanted
    /// `want`. A get given a token shorter than it asked for marks the
    /// installation, so that the next ones take it rather than refresh.
    pub fn settle(
        &self,
        installation: &mut Installation,
        outcome: Result<(), Error>,
        want: Want,
    ) -> Result<Got, Error> {
        let Want::Token(min_valid) = want else {
            return outcome.map(|()| Got::Expiry(installation.record.expires_at));
        };
        let (now, monotonic) = (self.now, self.monotonic);
        let served = match (
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
                None => Err(no_token(self.spec)),
            },
        };
        served.map(Got::Token)
    }
}
