//! The installations by name ([`Installations`]), each in its [`Slot`],
//! and the one way an installation changes ([`Installations::change`]).
//!
//! Concurrency, per installation:
//! - `inner` (a std mutex, never held across an await) holds the
//!   installation and the attempts counter;
//! - `flight` (a one-permit tokio semaphore, held as a [`Flight`]) is held
//!   for the whole of one request to the provider; see `refresh.rs`.
//! - No lock is shared between installations except the name map, which is
//!   only read for a lookup.

use super::decision::At;
use super::installation::{Installation, Spec};
use super::{Error, Event, View, check_name};
use crate::schedule::{self, Clock, Queue};
use crate::storage::{Loaded, StateError};
use crate::sync::{lock, read, write};
use crate::tasks::Tasks;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{error, info};

/// One installation and what serves it.
#[derive(Debug)]
pub(crate) struct Slot {
    /// Shared with the slots map's key.
    pub name: Arc<str>,
    spec: Mutex<Arc<Spec>>,
    pub(super) inner: Mutex<Inner>,
    /// Held for one request to the provider (see `refresh.rs`): one
    /// permit, taken as a [`Flight`]. A semaphore in the slot rather than
    /// a mutex in an `Arc` of its own: the guard must outlive the caller
    /// (it moves into the request's task), and a separate allocation
    /// cost 64 bytes per installation.
    flight: tokio::sync::Semaphore,
}

#[derive(Debug)]
pub(super) struct Inner {
    pub installation: Installation,
    /// Attempts finished so far (counting on past `u32::MAX` from 0: only
    /// compared for a change), and the result of the last one, its error
    /// boxed: a caller that waited for another's request takes its result.
    pub attempts: u32,
    pub last_outcome: Result<(), Box<Error>>,
    /// The provider has answered the request in flight and its tokens are
    /// being written: a caller waiting for them waits for the write too.
    pub writing: bool,
}

impl Inner {
    /// Counts a finished attempt and keeps its result for those that
    /// waited for it.
    pub fn finished(&mut self, outcome: Result<(), Error>) {
        self.attempts = self.attempts.wrapping_add(1);
        self.last_outcome = outcome.map_err(Box::new);
    }
}

/// An installation's `flight` lock, held; owned, so that it can move into
/// the task that makes the request.
#[derive(Debug)]
pub(super) struct Flight(Arc<Slot>);

impl Drop for Flight {
    fn drop(&mut self) {
        self.0.flight.add_permits(1);
    }
}

impl Slot {
    /// Whether a request to the provider is in flight.
    pub(super) fn busy(&self) -> bool {
        self.flight.available_permits() == 0
    }

    /// Takes the `flight` lock, waiting for it (even while tokd stops:
    /// see [`Installations::flight`] for callers that must not).
    pub(super) async fn take_flight(self: &Arc<Self>) -> Flight {
        // The semaphore is never closed.
        if let Ok(permit) = self.flight.acquire().await {
            // Given back when the `Flight` is dropped (not when `permit`
            // is): no await between the two.
            permit.forget();
        }
        Flight(self.clone())
    }

    /// Takes the `flight` lock if it is free.
    pub(super) fn try_take_flight(self: &Arc<Self>) -> Option<Flight> {
        let permit = self.flight.try_acquire().ok()?;
        permit.forget();
        Some(Flight(self.clone()))
    }

    /// A slot for `spec` from what loading its state file found.
    pub(super) fn loaded(spec: Arc<Spec>, loaded: Result<Loaded, StateError>) -> Self {
        Self::new(spec.clone(), loaded_installation(&spec, loaded))
    }

    pub(super) fn new(spec: Arc<Spec>, installation: Installation) -> Self {
        Self {
            name: spec.installation.name.clone(),
            spec: Mutex::new(spec),
            inner: Mutex::new(Inner {
                installation,
                attempts: 0,
                last_outcome: Ok(()),
                writing: false,
            }),
            flight: tokio::sync::Semaphore::new(1),
        }
    }

    pub(crate) fn spec(&self) -> Arc<Spec> {
        lock(&self.spec).clone()
    }

    pub(super) fn set_spec(&self, spec: Arc<Spec>) {
        *lock(&self.spec) = spec;
    }
}

/// Every installation by name, the clock they are judged by, the queue
/// that schedules them, and the events their changes make.
#[derive(Debug)]
pub struct Installations {
    slots: RwLock<BTreeMap<Arc<str>, Arc<Slot>>>,
    pub(super) clock: Clock,
    pub(super) queue: Arc<Queue>,
    events: UnboundedSender<Event>,
    /// `[daemon] refresh_margin`.
    margin: RwLock<Option<Duration>>,
    /// The broker's tasks: their stop is the broker's.
    pub(super) tasks: Tasks,
}

impl Installations {
    pub(super) fn new(
        clock: Clock,
        check_cap: Duration,
        events: UnboundedSender<Event>,
        margin: Option<Duration>,
    ) -> Self {
        Self {
            slots: RwLock::new(BTreeMap::new()),
            queue: Arc::new(Queue::new(clock.clone(), check_cap)),
            clock,
            events,
            margin: RwLock::new(margin),
            tasks: Tasks::new(),
        }
    }

    /// Every slot, sorted by name.
    pub(super) fn all(&self) -> Vec<Arc<Slot>> {
        read(&self.slots).values().cloned().collect()
    }

    /// The slot map as it is (a reload builds the next one from it).
    pub(super) fn map(&self) -> BTreeMap<Arc<str>, Arc<Slot>> {
        read(&self.slots).clone()
    }

    /// Replaces the slot map (start, reload) and the margin.
    pub(super) fn replace(&self, slots: BTreeMap<Arc<str>, Arc<Slot>>, margin: Option<Duration>) {
        *write(&self.margin) = margin;
        *write(&self.slots) = slots;
    }

    pub(crate) fn get(&self, name: &str) -> Result<Arc<Slot>, Error> {
        check_name(name)?;
        read(&self.slots).get(name).cloned().ok_or_else(|| {
            Error::UnknownInstallation(format!(
                "no installation is named `{name}`; `tokctl list` shows the configured ones"
            ))
        })
    }

    /// The wall clock and the monotonic clock, read together.
    pub(super) fn now(&self) -> (SystemTime, Instant) {
        (self.clock.now(), self.clock.monotonic())
    }

    /// Now, for `spec`: what a get decides and settles by.
    pub(super) fn at<'a>(&self, spec: &'a Spec) -> At<'a> {
        let (now, monotonic) = self.now();
        At {
            spec,
            now,
            monotonic,
        }
    }

    pub(super) fn emit(&self, event: Event) {
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
    pub(super) fn change<T>(
        &self,
        slot: &Slot,
        inner: &mut Inner,
        change: impl FnOnce(&mut Installation, &Spec) -> T,
    ) -> T {
        let spec = slot.spec();
        let (now, monotonic) = self.now();
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
        monotonic: Instant,
    ) {
        let due = installation.next_due(
            spec,
            *read(&self.margin),
            now,
            monotonic,
            schedule::random_fraction(),
            schedule::random_fraction(),
        );
        self.queue.set(&slot.name, due);
    }

    /// Puts the slot in the queue at its next due time (or takes it out).
    pub(super) fn schedule(&self, slot: &Slot) {
        let spec = slot.spec();
        let inner = lock(&slot.inner);
        let (now, monotonic) = self.now();
        self.arm(slot, &spec, &inner.installation, now, monotonic);
    }

    /// Takes the installation's `flight` lock, unless tokd is stopping.
    pub(super) async fn flight(&self, slot: &Arc<Slot>) -> Result<Flight, Error> {
        self.refuse_if_stopping()?;
        let guard = slot.take_flight().await;
        // Checked again: stop may have begun while this call waited.
        self.refuse_if_stopping()?;
        Ok(guard)
    }

    pub(super) fn refuse_if_stopping(&self) -> Result<(), Error> {
        if self.tasks.stopping() {
            Err(Error::stopping())
        } else {
            Ok(())
        }
    }

    /// One installation as `list` and `status` show it.
    pub(super) fn view(&self, slot: &Slot) -> View {
        let spec = slot.spec();
        let now = self.clock.now();
        let inner = lock(&slot.inner);
        let installation = &inner.installation;
        View {
            name: slot.name.to_string(),
            consumer: spec.consumer.name.to_string(),
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

/// The installation of `spec` from what loading its state file found, with
/// what the log should hear about it.
pub(super) fn loaded_installation(spec: &Spec, loaded: Result<Loaded, StateError>) -> Installation {
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

#[cfg(test)]
mod size {
    use super::*;

    /// A slot lives in an `Arc` (16 bytes more), one per installation:
    /// 10,000 of them are the bulk of tokd's own memory. mimalloc's size
    /// classes here are 64 bytes apart (320, 384, 448): 16 + 344 takes
    /// 384; past it, a slot costs 64 bytes more per installation.
    #[test]
    fn a_slot_fits_its_allocation_class() {
        let size = std::mem::size_of::<Slot>();
        eprintln!(
            "a slot is {size} bytes; its installation {}",
            std::mem::size_of::<Installation>()
        );
        assert!(size + 16 <= 384, "a slot is {size} bytes");
    }
}
