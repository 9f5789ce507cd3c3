//! tokd's memory allocator, in a crate of its own because it holds the
//! workspace's only `unsafe` block: one call that sets a number inside
//! mimalloc.
//!
//! Every block tokd frees is zeroed first: tokens pass through buffers
//! tokd does not own (the HTTP client's, the JSON parser's), and a
//! rotated-out refresh token must not linger in freed memory.
//!
//! Under it, mimalloc rather than glibc's malloc: glibc gives each thread
//! of the blocking pool (store writes, DNS) an arena of its own and keeps
//! what was freed in them (10,000 client-credentials installations
//! fetched: 44 MiB of tokd's own memory under glibc, 28 MiB under
//! mimalloc; BENCHMARKS.md). Without transparent huge pages (`no_thp`),
//! which would make its idle heap 8 MiB.

/// The allocator tokd's binary installs with `#[global_allocator]`.
pub type Allocator = zeroizing_alloc::ZeroAlloc<mimalloc::MiMalloc>;

/// The allocator's value, for `static ALLOCATOR: Allocator = ALLOCATOR;`.
pub const ALLOCATOR: Allocator = zeroizing_alloc::ZeroAlloc(mimalloc::MiMalloc);

/// mimalloc's `mi_option_purge_delay`: its place in `mi_option_e`
/// (mimalloc v2's `mimalloc.h`; the Rust binding names no constant for
/// it). The test below checks that this option's default is the 10 ms
/// the header documents for it, so a renumbering would fail there.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Makes mimalloc give pages it no longer uses back to the system at once.
///
/// By default it waits 10 ms and then purges only when a later call into
/// the allocator comes by; a daemon that goes idle after a burst of calls
/// makes no such call, and kept the burst's peak (+6 MiB after 1,000
/// concurrent gets) for as long as it stayed idle. With no delay, the
/// pages go back as the burst's memory is freed (+0.2 MiB), with no
/// measurable cost in calls per second (BENCHMARKS.md, "What each change
/// bought"). Call it first thing in `main`: it does nothing once the
/// process has a second thread, and says so by returning `false`.
pub fn return_freed_pages_at_once() -> bool {
    if !single_threaded() {
        return false;
    }
    // SAFETY: `mi_option_set` takes no pointer and any value is valid for
    // this option (0: purge at once; negative: never). It writes the
    // option's value and its "initialized" flag with two plain stores,
    // which another thread reading the option at the same time would race
    // with: the check above makes sure no other thread exists (nothing
    // here starts one, and a thread started by another thread cannot
    // appear before this call returns).
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(PURGE_DELAY, 0);
    }
    true
}

/// Whether this process has one thread (`Threads:` in
/// `/proc/self/status`).
fn single_threaded() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|line| line.strip_prefix("Threads:"))
            .is_some_and(|count| count.trim() == "1")
    })
}

/// An option's value, for the test.
#[cfg(test)]
fn option(option: libmimalloc_sys::mi_option_t) -> std::ffi::c_long {
    // SAFETY: `mi_option_get` reads a number from mimalloc's option
    // table; it takes no pointer. Reads race with nothing: the test sets
    // nothing.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_get(option)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Option 15 is the purge delay: its default is the 10 ms the header
    /// documents, and its neighbours' are theirs (eager commit delay 1,
    /// NUMA nodes 0), so a renumbering would show here. That setting it
    /// works is shown by `bench/run` (memory after a burst), where tokd
    /// calls it with one thread.
    #[test]
    fn the_option_is_the_purge_delay_and_is_not_set_once_threads_run() {
        // MIMALLOC_* in the environment would change the defaults.
        if std::env::vars_os().all(|(key, _)| !key.to_string_lossy().starts_with("MIMALLOC_")) {
            assert_eq!(
                option(PURGE_DELAY),
                10,
                "option 15 is not the purge delay (10 ms)"
            );
            assert_eq!(
                option(PURGE_DELAY - 1),
                1,
                "option 14 is not the eager commit delay"
            );
            assert_eq!(
                option(PURGE_DELAY + 1),
                0,
                "option 16 is not the NUMA node count"
            );
        }
        // The test harness runs tests on threads of its own.
        assert!(!return_freed_pages_at_once());
        assert_ne!(option(PURGE_DELAY), 0);
    }
}
