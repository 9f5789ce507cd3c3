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
        self.take(|p| p.name == name)
    }

    /// Takes the pending login that `state` belongs to.
    pub fn take_by_state(&self, state: &str) -> Option<Pending> {
        self.take(|p| p.state == state)
    }

    /// Takes a login out; its listener closes if no other login waits on
    /// it.
    fn take(&self, matches: impl Fn(&Pending) -> bool) -> Option<Pending> {
        let taken = {
            let mut entries = lock(&self.pending);
            let now = Instant::now();
            entries.retain(|e| e.until > now);
            let index = entries.iter().position(|e| matches(&e.pending))?;
            entries.swap_remove(index).pending
        };
        for addr in &taken.listen_addrs {
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
