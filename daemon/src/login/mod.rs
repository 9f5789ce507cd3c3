//! Logins in progress, and the loopback listener that receives the
//! provider's answer.
//!
//! A pending login is its `state`, its PKCE verifier and where the answer
//! is awaited; each is used once and forgotten after its own wait (what
//! the caller waits, at most [`LOGIN_TIMEOUT`]).
//! Several installations of one consumer share its `redirect_uri`, so one
//! listener per address serves every pending login there (`listener.rs`).
//!
//! This module never reaches into the broker: the broker hands the
//! listener a callback ([`Handler`]) that takes the provider's answer and
//! returns the page to show.

mod listener;
mod peer;

pub use listener::{
    Answer, HEADER_TIMEOUT, Handler, ListenError, MAX_CONNECTIONS, Page, ensure_listener,
};
pub use peer::uid_of_peer;

use crate::secret::PkceVerifier;
use crate::sync::lock;
use listener::Listener;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use url::Url;

/// The longest a login may take from its start to the provider's answer.
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(600);

/// A login waiting for the provider's answer.
#[derive(Debug)]
pub struct Pending {
    pub name: String,
    pub state: String,
    pub verifier: PkceVerifier,
    pub redirect_uri: Option<Url>,
    /// The loopback addresses listened on for the answer, if any.
    pub listen_addrs: Vec<SocketAddr>,
}

/// A pending login taken out, with the time it had until it is forgotten.
#[derive(Debug)]
pub struct Taken {
    pub pending: Pending,
    until: Instant,
}

#[derive(Debug)]
struct Entry {
    pending: Pending,
    /// When it is forgotten.
    until: Instant,
}

/// Pending logins and the listeners serving them.
#[derive(Debug)]
pub struct Logins {
    pending: Mutex<Vec<Entry>>,
    listeners: Mutex<HashMap<SocketAddr, Arc<Listener>>>,
    /// The longest wait: [`LOGIN_TIMEOUT`], unless a test shortens it.
    timeout: Duration,
}

impl Logins {
    pub fn new(timeout: Duration) -> Self {
        Self {
            pending: Mutex::default(),
            listeners: Mutex::default(),
            timeout,
        }
    }

    /// How long a login asked to wait `wait` (none: the longest) waits.
    pub fn wait(&self, wait: Option<Duration>) -> Duration {
        wait.map_or(self.timeout, |wait| wait.min(self.timeout))
    }

    /// Adds a login, forgotten after `wait`; an earlier pending login of
    /// the same installation is dropped (its state stops working).
    pub fn add(&self, pending: Pending, wait: Duration) {
        let now = Instant::now();
        let mut entries = lock(&self.pending);
        entries.retain(|e| e.pending.name != pending.name && e.until > now);
        entries.push(Entry {
            pending,
            until: now + self.wait(Some(wait)),
        });
    }

    /// Takes the pending login of installation `name`.
    pub fn take_by_name(&self, name: &str) -> Option<Pending> {
        self.take(|p| p.name == name).map(|taken| taken.pending)
    }

    /// Takes the pending login of installation `name` for a code typed in
    /// by hand, which [`Logins::put_back`] can return if the code was not
    /// used.
    pub fn take_for_code(&self, name: &str) -> Option<Taken> {
        self.take(|p| p.name == name)
    }

    /// Returns a login taken for a code that was not used (the provider
    /// failed before it could use it), with the time it had left: not
    /// when that is over, nor when a newer login of the installation
    /// began meanwhile (that one's code is the one to use).
    pub fn put_back(&self, taken: Taken) {
        let now = Instant::now();
        let mut entries = lock(&self.pending);
        if taken.until <= now || entries.iter().any(|e| e.pending.name == taken.pending.name) {
            return;
        }
        entries.push(Entry {
            pending: taken.pending,
            until: taken.until,
        });
    }

    /// Takes the pending login that `state` belongs to.
    pub fn take_by_state(&self, state: &str) -> Option<Pending> {
        self.take(|p| p.state == state).map(|taken| taken.pending)
    }

    /// Takes a login out; its listener closes if no other login waits on
    /// it.
    fn take(&self, matches: impl Fn(&Pending) -> bool) -> Option<Taken> {
        let taken = {
            let mut entries = lock(&self.pending);
            let now = Instant::now();
            entries.retain(|e| e.until > now);
            let index = entries.iter().position(|e| matches(&e.pending))?;
            let entry = entries.swap_remove(index);
            Taken {
                pending: entry.pending,
                until: entry.until,
            }
        };
        for addr in &taken.pending.listen_addrs {
            self.wake(*addr);
        }
        Some(taken)
    }

    /// Makes the listener on `addr` check whether a login still waits on
    /// it.
    fn wake(&self, addr: SocketAddr) {
        if let Some(listener) = lock(&self.listeners).get(&addr) {
            listener.wake();
        }
    }

    fn any_waiting_on(&self, addr: SocketAddr) -> bool {
        let now = Instant::now();
        lock(&self.pending)
            .iter()
            .any(|e| e.until > now && e.pending.listen_addrs.contains(&addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(name: &str, state: &str) -> Pending {
        Pending {
            name: name.to_owned(),
            state: state.to_owned(),
            verifier: PkceVerifier::new("verifier"),
            redirect_uri: None,
            listen_addrs: Vec::new(),
        }
    }

    /// A login taken for a typed code comes back only with the time it had
    /// left, and never over a newer login of the same installation.
    #[test]
    fn a_login_put_back_keeps_its_deadline_and_yields_to_a_newer_one() {
        let logins = Logins::new(LOGIN_TIMEOUT);
        logins.add(pending("a", "first"), Duration::from_secs(60));
        let taken = logins.take_for_code("a").expect("pending");
        let until = taken.until;
        logins.put_back(taken);
        let again = logins.take_for_code("a").expect("put back");
        assert_eq!(
            (again.pending.state.as_str(), again.until),
            ("first", until)
        );

        // Over: not put back.
        let over = Taken {
            pending: pending("a", "first"),
            until: Instant::now() - Duration::from_secs(1),
        };
        logins.put_back(over);
        assert!(logins.take_by_name("a").is_none());

        // A newer login began meanwhile: it stays, the old one is dropped.
        logins.add(pending("a", "newer"), Duration::from_secs(60));
        logins.put_back(again);
        assert_eq!(
            logins.take_by_name("a").map(|p| p.state),
            Some("newer".to_owned())
        );
        assert!(logins.take_by_name("a").is_none());
    }
}
