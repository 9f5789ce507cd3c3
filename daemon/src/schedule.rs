//! When each installation is refreshed next, and the one task that wakes
//! for it.
//!
//! Every installation has at most one due time in a queue ordered by wall
//! clock. One task sleeps until the earliest; sleeps are capped at
//! [`CHECK_CAP`] so that after a suspend (when tokio's monotonic timers
//! stop) the wall clock is looked at again within a minute. There is no
//! loop over all installations and no timer per installation.
//!
//! The rule for due times (also in the README):
//! - margin = `refresh_margin` when configured, else a tenth of the token's
//!   lifetime clamped to 1–10 minutes;
//! - the margin never exceeds half the lifetime, and a refresh is never due
//!   sooner than [`MIN_INTERVAL`] after the last one, so short lifetimes
//!   cannot make the daemon spin;
//! - a random jitter of up to a quarter of the margin (at most 30 s) is
//!   taken off, so installations obtained together spread out.

use crate::sync::lock;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::Notify;

/// The longest the scheduler sleeps before re-reading the wall clock.
pub const CHECK_CAP: Duration = Duration::from_secs(60);
/// The shortest time between two scheduled refreshes of one installation.
pub const MIN_INTERVAL: Duration = Duration::from_secs(5);
/// Refreshes found overdue (after a restart or a suspend) are spread over
/// this long, so that they do not all go out at once.
pub const OVERDUE_SPREAD: Duration = Duration::from_secs(5);
const MIN_MARGIN: Duration = Duration::from_secs(60);
const MAX_MARGIN: Duration = Duration::from_secs(600);
const MAX_JITTER: Duration = Duration::from_secs(30);
/// Retry delays after transient failures: the first cap, doubled per
/// failure up to the last.
const BACKOFF_FIRST: Duration = Duration::from_secs(10);
const BACKOFF_CAP: Duration = Duration::from_secs(900);

/// The margin used when none is configured.
pub fn default_margin(lifetime: Duration) -> Duration {
    (lifetime / 10).clamp(MIN_MARGIN, MAX_MARGIN)
}

/// When a token obtained at `obtained` and expiring at `expires_at` should
/// be refreshed. `jitter` is a random fraction in [0, 1).
pub fn refresh_due(
    obtained: SystemTime,
    expires_at: SystemTime,
    configured_margin: Option<Duration>,
    jitter: f64,
) -> SystemTime {
    let lifetime = expires_at.duration_since(obtained).unwrap_or_default();
    let margin = configured_margin
        .unwrap_or_else(|| default_margin(lifetime))
        .min(lifetime / 2);
    let jitter = (margin / 4).min(MAX_JITTER).mul_f64(jitter.clamp(0.0, 1.0));
    let due = expires_at - margin - jitter;
    due.max(obtained + MIN_INTERVAL)
}

/// How long to wait before retry number `failures` (1 for the first)
/// after a transient failure: full jitter over an exponentially growing
/// cap, never less than [`MIN_INTERVAL`], never before `Retry-After`.
pub fn backoff(failures: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    let cap = BACKOFF_FIRST.saturating_mul(1 << exponent).min(BACKOFF_CAP);
    let delay = cap.mul_f64(jitter.clamp(0.0, 1.0)).max(MIN_INTERVAL);
    match retry_after {
        Some(after) => delay.max(after.min(BACKOFF_CAP * 4)),
        None => delay,
    }
}

/// Unix seconds of a wall-clock time (0 before 1970).
pub fn unix_seconds(time: SystemTime) -> i64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A random fraction in [0, 1) from the system CSPRNG.
pub fn random_fraction() -> f64 {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// The clocks expiry is judged by: the wall clock, moved by whatever
/// [`Clock::jump`] or [`Clock::jump_back`] added, and the monotonic clock,
/// which no jump moves. tokd never jumps it; tests do, to play a suspend or
/// a clock set back without waiting for one.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    /// Milliseconds added to the system clock (negative: taken off).
    offset: Arc<AtomicI64>,
}

impl Clock {
    pub fn now(&self) -> SystemTime {
        let offset = self.offset.load(Ordering::Relaxed);
        let by = Duration::from_millis(offset.unsigned_abs());
        if offset >= 0 {
            SystemTime::now() + by
        } else {
            SystemTime::now() - by
        }
    }

    /// The monotonic clock: never jumps (but stands still in a suspend,
    /// which the wall clock does not).
    pub fn monotonic(&self) -> Instant {
        Instant::now()
    }

    /// Moves the wall clock (and every clone of it) forward by `by`, as a
    /// suspend of that length looks to a program that wakes up after it.
    pub fn jump(&self, by: Duration) {
        let millis = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.offset.fetch_add(millis, Ordering::Relaxed);
    }

    /// Sets the wall clock back by `by`, as an administrator or a bad NTP
    /// answer might.
    pub fn jump_back(&self, by: Duration) {
        let millis = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.offset.fetch_sub(millis, Ordering::Relaxed);
    }
}

/// Due times by installation name.
#[derive(Debug)]
pub struct Queue {
    inner: Mutex<QueueInner>,
    wake: Notify,
    clock: Clock,
    /// The longest sleep before the wall clock is read again.
    check_cap: Duration,
}

impl Default for Queue {
    fn default() -> Self {
        Self::new(Clock::default(), CHECK_CAP)
    }
}

#[derive(Debug, Default)]
struct QueueInner {
    /// One name allocation shared by both indexes (10,000 installations
    /// are 10,000 entries).
    by_time: BTreeSet<(SystemTime, Arc<str>)>,
    by_name: HashMap<Arc<str>, SystemTime>,
}

impl Queue {
    pub fn new(clock: Clock, check_cap: Duration) -> Self {
        Self {
            inner: Mutex::default(),
            wake: Notify::new(),
            clock,
            check_cap,
        }
    }

    /// Sets (or with `None` clears) the due time of `name` (the slot's own
    /// name allocation, shared rather than copied).
    pub fn set(&self, name: &Arc<str>, due: Option<SystemTime>) {
        let earliest_changed = {
            let mut inner = lock(&self.inner);
            let before = inner.by_time.first().map(|(time, _)| *time);
            let key = match inner.by_name.remove_entry(&**name) {
                Some((key, old)) => {
                    inner.by_time.remove(&(old, key.clone()));
                    key
                }
                None => name.clone(),
            };
            if let Some(due) = due {
                inner.by_name.insert(key.clone(), due);
                inner.by_time.insert((due, key));
            }
            inner.by_time.first().map(|(time, _)| *time) != before
        };
        if earliest_changed {
            self.wake.notify_one();
        }
    }

    /// The due time of `name`, if any.
    pub fn get(&self, name: &str) -> Option<SystemTime> {
        lock(&self.inner).by_name.get(name).copied()
    }

    /// Removes and returns every name due at `now`.
    pub fn pop_due(&self, now: SystemTime) -> Vec<String> {
        let mut inner = lock(&self.inner);
        let mut due = Vec::new();
        while let Some((time, _)) = inner.by_time.first() {
            if *time > now {
                break;
            }
            if let Some((_, name)) = inner.by_time.pop_first() {
                inner.by_name.remove(&name);
                due.push(name.to_string());
            }
        }
        due
    }

    /// The earliest due time.
    pub fn next(&self) -> Option<SystemTime> {
        lock(&self.inner).by_time.first().map(|(time, _)| *time)
    }

    /// Sleeps until something is due, then hands each due name to `on_due`.
    /// Never returns: its owner drops it at shutdown.
    pub async fn run(&self, mut on_due: impl FnMut(String)) {
        loop {
            let now = self.clock.now();
            for name in self.pop_due(now) {
                on_due(name);
            }
            // tokio's timers stop during a suspend, so never sleep long
            // without looking at the wall clock again.
            let wait = self
                .next()
                .map_or(self.check_cap, |due| {
                    due.duration_since(now).unwrap_or_default()
                })
                .min(self.check_cap);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.wake.notified() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    #[test]
    fn the_default_margin_is_a_tenth_of_the_lifetime_within_bounds() {
        assert_eq!(default_margin(2 * HOUR), Duration::from_secs(600));
        assert_eq!(default_margin(HOUR / 2), Duration::from_secs(180));
        assert_eq!(default_margin(Duration::from_secs(120)), MIN_MARGIN);
        assert_eq!(default_margin(24 * HOUR), MAX_MARGIN);
    }

    #[test]
    fn a_bitbucket_token_is_refreshed_ten_minutes_early_without_jitter() {
        assert_eq!(refresh_due(at(0), at(7200), None, 0.0), at(6600));
        // Jitter takes off at most a quarter of the margin, capped at 30 s.
        let jittered = refresh_due(at(0), at(7200), None, 0.999_999);
        assert!(jittered >= at(6570) && jittered < at(6571), "{jittered:?}");
    }

    #[test]
    fn a_configured_margin_wins_but_never_exceeds_half_the_lifetime() {
        let five_min = Some(Duration::from_secs(300));
        assert_eq!(refresh_due(at(0), at(7200), five_min, 0.0), at(6900));
        assert_eq!(refresh_due(at(0), at(400), five_min, 0.0), at(200));
    }

    #[test]
    fn short_lifetimes_never_make_it_spin() {
        // A one-second token is not refreshed more often than MIN_INTERVAL.
        assert_eq!(refresh_due(at(0), at(1), None, 0.5), at(5));
        // An already expired token (clock jump) is due at the floor too.
        assert_eq!(refresh_due(at(10), at(0), None, 0.5), at(15));
    }

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        let full = 0.999_999;
        assert!(backoff(1, None, full) <= BACKOFF_FIRST);
        assert!(backoff(4, None, full) > 4 * BACKOFF_FIRST);
        assert!(backoff(40, None, full) <= BACKOFF_CAP);
        assert_eq!(backoff(3, None, 0.0), MIN_INTERVAL);
        assert_eq!(
            backoff(1, Some(Duration::from_secs(120)), 0.0),
            Duration::from_secs(120)
        );
    }

    #[test]
    fn random_fractions_are_in_range_and_vary() {
        let values: Vec<f64> = (0..32).map(|_| random_fraction()).collect();
        assert!(values.iter().all(|v| (0.0..1.0).contains(v)));
        assert!(values.windows(2).any(|w| w[0] != w[1]));
    }

    #[test]
    fn the_queue_pops_what_is_due_in_order_and_replaces_times() {
        let queue = Queue::default();
        queue.set(&Arc::from("b"), Some(at(20)));
        queue.set(&Arc::from("a"), Some(at(10)));
        queue.set(&Arc::from("c"), Some(at(30)));
        queue.set(&Arc::from("c"), Some(at(5)));
        queue.set(&Arc::from("gone"), Some(at(1)));
        queue.set(&Arc::from("gone"), None);
        assert_eq!(queue.next(), Some(at(5)));
        assert_eq!(queue.get("b"), Some(at(20)));
        assert_eq!(queue.pop_due(at(15)), vec!["c", "a"]);
        assert_eq!(queue.pop_due(at(15)), Vec::<String>::new());
        assert_eq!(queue.get("a"), None);
        assert_eq!(queue.next(), Some(at(20)));
    }

    #[tokio::test(start_paused = true)]
    async fn the_runner_wakes_when_an_earlier_time_is_set() {
        let queue = Arc::new(Queue::default());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let runner = {
            let queue = queue.clone();
            tokio::spawn(async move { queue.run(|name| drop(tx.send(name))).await })
        };
        // Far in the future: nothing happens while the runner sleeps.
        queue.set(&Arc::from("later"), Some(SystemTime::now() + 10 * HOUR));
        tokio::task::yield_now().await;
        assert!(rx.try_recv().is_err());
        // Due now: the notify wakes the runner without waiting for the cap.
        queue.set(&Arc::from("now"), Some(SystemTime::now()));
        let name = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await;
        assert_eq!(name.ok().flatten().as_deref(), Some("now"));
        runner.abort();
    }

    /// A suspend: the wall clock jumps while tokio's timers stand still.
    /// Nobody notifies the queue; the capped sleep alone must notice.
    #[tokio::test(start_paused = true)]
    async fn after_a_clock_jump_the_next_capped_wake_hands_out_what_is_overdue() {
        let clock = Clock::default();
        let queue = Arc::new(Queue::new(clock.clone(), CHECK_CAP));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let runner = {
            let queue = queue.clone();
            tokio::spawn(async move { queue.run(|name| drop(tx.send(name))).await })
        };
        queue.set(&Arc::from("token"), Some(clock.now() + 2 * HOUR));
        tokio::task::yield_now().await;
        clock.jump(3 * HOUR);
        // Just short of the cap nothing has looked at the clock yet.
        tokio::time::sleep(CHECK_CAP - Duration::from_secs(1)).await;
        assert!(rx.try_recv().is_err());
        // At the cap the runner reads the wall clock and finds it overdue,
        // although by tokio's clock two hours have not passed.
        let name = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await;
        assert_eq!(name.ok().flatten().as_deref(), Some("token"));
        runner.abort();
    }
}
