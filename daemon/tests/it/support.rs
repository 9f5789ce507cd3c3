//! Shared helpers of the integration tests.

use std::future::Future;
use std::time::Duration;

/// Every async test runs under this bound, so a hang fails instead of
/// stalling CI.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(60);

pub async fn within<T>(test: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .expect("the test did not finish within its timeout")
}

/// As `within`, for the few tests that need longer.
pub async fn within_for<T>(limit: Duration, test: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, test)
        .await
        .expect("the test did not finish within its timeout")
}

/// Polls `check` every 50 ms until it holds or `limit` passes.
pub async fn eventually(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
