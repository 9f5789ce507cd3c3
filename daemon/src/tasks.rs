//! Who owns tokd's background tasks. Every task the daemon spawns goes
//! through a [`Tasks`]: a tracker that stop waits on, and one stop token
//! handed to each task.
//!
//! Two kinds of task:
//! - [`Tasks::spawn`]: work that must reach its end once begun, such as a
//!   request to a provider and the durable write of its answer. Stop waits
//!   for it (bounded by the caller).
//! - [`Tasks::spawn_until_stopped`]: work that runs until tokd stops (the
//!   scheduler, retried writes, login listeners, accept loops). It is
//!   dropped at its next await once stop begins.

use std::future::Future;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;

/// A tracker and its stop token. Clones share both.
#[derive(Debug, Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Tasks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Spawns work that runs to its end; stop waits for it.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Spawns work that ends when stop begins (or by itself before).
    pub fn spawn_until_stopped<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = task => {}
            }
        });
    }

    /// Whether stop has begun: no new work should start.
    pub fn stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Resolves when stop begins.
    pub fn stopped(&self) -> WaitForCancellationFuture<'_> {
        self.stop.cancelled()
    }

    /// Begins the stop: tasks spawned until stopped end at their next
    /// await, and [`Tasks::stopping`] turns true.
    pub fn begin_stop(&self) {
        self.stop.cancel();
    }

    /// Begins the stop and waits at most `bound` for every task; true when
    /// all ended in time.
    pub async fn stop(&self, bound: Duration) -> bool {
        self.begin_stop();
        self.tracker.close();
        tokio::time::timeout(bound, self.tracker.wait())
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn stop_cancels_background_work_and_waits_for_work_that_must_finish() {
        let tasks = Tasks::new();
        let (finished_tx, finished) = tokio::sync::oneshot::channel();
        tasks.spawn(async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            let _ = finished_tx.send(());
        });
        tasks.spawn_until_stopped(std::future::pending());
        assert!(!tasks.stopping());
        assert!(tasks.stop(Duration::from_secs(20)).await, "all ended");
        assert!(tasks.stopping());
        assert!(finished.await.is_ok(), "the work ran to its end");
    }

    #[tokio::test(start_paused = true)]
    async fn stop_gives_up_after_its_bound() {
        let tasks = Tasks::new();
        tasks.spawn(std::future::pending::<()>());
        assert!(!tasks.stop(Duration::from_secs(1)).await);
    }
}
