//! The sentences a human reads about an installation: derived from its
//! state when asked, so that a wait ("tries again in 23s") is never stale.

use super::{Empty, Installation, KeyringDown, LoginNeeded, Misconfiguration, Spec, State};
use crate::config::Grant;
use std::time::{Duration, SystemTime};

impl Installation {
    /// The state's sentence in short, as of `now`, for `list` and
    /// `status`: a failure's detail is the record's `last_error`, shown
    /// beside it, not in it.
    pub fn summary(&self, spec: &Spec, now: SystemTime) -> String {
        let name = spec.name();
        if let Some(down) = &self.keyring_down {
            return keyring_down(name, down);
        }
        match &self.state {
            State::Failing {
                retry_at,
                grant_at_risk,
                ..
            } => format!(
                "the provider is failing{}; tokd tries again in {}",
                if *grant_at_risk {
                    " and the authorization may be lost"
                } else {
                    ""
                },
                wait(retry_at.duration_since(now).unwrap_or_default())
            ),
            State::NeedsLogin(LoginNeeded::Lost { .. }) => {
                format!("the authorization of `{name}` is lost; run `tokctl login {name}`")
            }
            State::Misconfigured(Misconfiguration::Refused { .. }) => format!(
                "consumer `{}` is misconfigured; fix the config and run `tokctl reload`",
                spec.consumer.name
            ),
            _ => self.message(spec, now),
        }
    }

    /// The sentence for humans about the state, as of `now`, with the
    /// detail of a failure: what callers and signals get.
    pub fn message(&self, spec: &Spec, now: SystemTime) -> String {
        let name = spec.name();
        if let Some(down) = &self.keyring_down {
            return keyring_down(name, down);
        }
        match &self.state {
            State::Empty(Empty::Never) => not_logged_in(spec),
            State::Empty(Empty::MovedAside { moved_to, reason }) => {
                let moved = format!(
                    "the state file could not be used ({reason}) and was moved to {}",
                    moved_to.display()
                );
                match not_logged_in(spec) {
                    what_to_do if what_to_do.is_empty() => moved,
                    what_to_do => format!("{moved}; {what_to_do}"),
                }
            }
            State::Valid => self
                .unsaved
                .as_ref()
                .map(|unsaved| unsaved.sentence())
                .unwrap_or_default(),
            State::Refreshing { .. } => String::new(),
            State::Failing {
                retry_at,
                reason,
                grant_at_risk,
                ..
            } => failing(
                reason,
                *grant_at_risk,
                retry_at.duration_since(now).unwrap_or_default(),
            ),
            State::NeedsLogin(LoginNeeded::NoToken) => {
                format!("`{name}` has no token yet; run `tokctl login {name}`")
            }
            State::NeedsLogin(LoginNeeded::Lost { detail }) => format!(
                "the authorization of `{name}` is lost ({detail}); run `tokctl login {name}`"
            ),
            State::NeedsLogin(LoginNeeded::IdentityChanged) => {
                format!("the consumer or scopes of `{name}` changed; run `tokctl login {name}`")
            }
            State::Misconfigured(Misconfiguration::Refused { detail }) => format!(
                "consumer `{}` is misconfigured ({detail}); fix the config and run `tokctl reload`",
                spec.consumer.name
            ),
            State::Misconfigured(Misconfiguration::StateFile { error }) => {
                format!("cannot load the state file: {error}")
            }
        }
    }
}

fn not_logged_in(spec: &Spec) -> String {
    let name = spec.name();
    match spec.grant() {
        Grant::AuthorizationCode => format!("`{name}` is not logged in; run `tokctl login {name}`"),
        Grant::ClientCredentials => String::new(),
    }
}

/// What a failure with `grant_at_risk` adds to its reason.
pub(super) fn risk(grant_at_risk: bool) -> &'static str {
    if grant_at_risk {
        "; the provider may have used up the refresh token without tokd reading the new one, so the authorization may be lost (if the next try is refused, log in again)"
    } else {
        ""
    }
}

/// A wait as a sentence says it: its two largest units, at least 1s.
fn wait(left: Duration) -> String {
    tokd_shared::text::span(left.as_secs().max(1))
}

fn failing(reason: &str, grant_at_risk: bool, left: Duration) -> String {
    format!(
        "the provider is failing ({reason}){}; tokd tries again in {}",
        risk(grant_at_risk),
        wait(left)
    )
}

fn keyring_down(name: &str, down: &KeyringDown) -> String {
    match down {
        KeyringDown::Locked => format!(
            "the keyring that keeps the tokens of `{name}` is locked; unlock it (tokd asks the desktop to when a caller needs a new token) and tokd carries on"
        ),
        KeyringDown::Gone => format!(
            "no keyring (Secret Service) answers on the session bus, and the tokens of `{name}` are kept there; start it (GNOME Keyring, KWallet, KeePassXC) and tokd carries on"
        ),
        KeyringDown::Failing { detail } => format!(
            "the keyring that keeps the tokens of `{name}` fails ({detail}); tokd tries again by itself"
        ),
    }
}
