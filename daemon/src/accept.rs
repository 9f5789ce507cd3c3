//! How tokd's accept loops (the private socket, the login listener) wait
//! out errors: out of file descriptors, say, `accept` fails at once and
//! would fail again at once, so a loop that simply retried would spin a
//! core and flood the log. The wait starts at 10 ms and doubles to 1 s;
//! one line is logged when a streak starts and one when it ends.

use std::time::Duration;
use tracing::{info, warn};

const FIRST: Duration = Duration::from_millis(10);
const CAP: Duration = Duration::from_secs(1);

/// The error streak of one accept loop.
#[derive(Debug)]
pub struct AcceptErrors {
    /// What accepts, for the log ("the private socket").
    what: &'static str,
    /// The last wait, while a streak lasts.
    delay: Option<Duration>,
    failures: u64,
}

impl AcceptErrors {
    pub fn new(what: &'static str) -> Self {
        Self {
            what,
            delay: None,
            failures: 0,
        }
    }

    /// The wait after one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.delay.map_or(FIRST, |delay| (delay * 2).min(CAP));
        self.delay = Some(delay);
        self.failures += 1;
        delay
    }

    /// An accept failed: logs the start of a streak, then waits.
    pub async fn failed(&mut self, error: &std::io::Error) {
        if self.delay.is_none() {
            warn!(what = self.what, %error, "cannot accept connections; waiting before trying again");
        }
        tokio::time::sleep(self.next_delay()).await;
    }

    /// An accept worked: a streak, if any, is over.
    pub fn succeeded(&mut self) {
        if self.delay.take().is_some() {
            info!(
                what = self.what,
                failures = self.failures,
                "accepting connections again"
            );
            self.failures = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_doubles_to_a_cap_and_starts_over_after_a_success() {
        let mut errors = AcceptErrors::new("test");
        let waits: Vec<Duration> = (0..10).map(|_| errors.next_delay()).collect();
        assert_eq!(waits[0], FIRST);
        assert_eq!(waits[1], FIRST * 2);
        assert!(waits.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(waits[9], CAP);
        errors.succeeded();
        assert_eq!(errors.next_delay(), FIRST);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_waits_before_the_next_try() {
        let mut errors = AcceptErrors::new("test");
        let error = std::io::Error::from_raw_os_error(24); // EMFILE
        let started = tokio::time::Instant::now();
        for _ in 0..3 {
            errors.failed(&error).await;
        }
        assert_eq!(started.elapsed(), FIRST + FIRST * 2 + FIRST * 4);
    }
}
