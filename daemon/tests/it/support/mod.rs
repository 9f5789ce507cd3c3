//! Shared helpers of the integration tests: time bounds, polling, file
//! modes, and the world of a test (`world.rs`).

mod world;

pub use world::{
    CLIENT_ID, Out, SECRET, TokenStore, World, browse, browser, everything_in, query_value,
    tokctl_bin, tokd_bin,
};

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

/// One test per token store from one body:
///
/// ```ignore
/// for_each_store! {
///     /// What it shows.
///     async fn a_promise(store) { ... World::start_in(store, ...) ... }
/// }
/// ```
///
/// declares the tests `a_promise::file` and `a_promise::keyring`, which
/// run the same body with [`TokenStore::File`] and [`TokenStore::Keyring`].
macro_rules! for_each_store {
    ($(#[doc = $doc:expr])* async fn $name:ident($store:ident) $body:block) => {
        $(#[doc = $doc])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn file() {
                body($crate::support::TokenStore::File).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn keyring() {
                body($crate::support::TokenStore::Keyring).await
            }

            async fn body($store: $crate::support::TokenStore) $body
        }
    };
}
pub(crate) use for_each_store;

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

/// The permission bits of `path` (not following a symlink).
pub fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

pub fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// This test process's uid.
pub fn uid() -> u32 {
    tokd::os::current_uid().expect("uid")
}

/// As root, permission bits do not stop tokd from writing unless it runs
/// without CAP_DAC_OVERRIDE; setpriv drops it (and DAC_READ_SEARCH).
pub fn without_override() -> Vec<&'static str> {
    if uid() == 0 {
        vec![
            "setpriv",
            "--inh-caps=-dac_override,-dac_read_search",
            "--bounding-set=-dac_override,-dac_read_search",
        ]
    } else {
        Vec::new()
    }
}

/// `setpriv` arguments that run a program as `nobody` (65534), another
/// local user. The tests run as root in CI; run elsewhere, they need it.
pub fn as_nobody() -> [&'static str; 4] {
    assert_eq!(
        uid(),
        0,
        "this test plays another local user with setpriv and must run as root"
    );
    [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ]
}

/// A shell script run as `nobody` (bash, for its `/dev/tcp`).
pub fn bash_as_nobody(script: &str) -> tokio::process::Command {
    let mut command = tokio::process::Command::new("setpriv");
    command
        .args(&as_nobody()[1..])
        .args(["bash", "-c", script])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    command
}

/// How many descriptors process `pid` has open.
pub fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .count()
}
