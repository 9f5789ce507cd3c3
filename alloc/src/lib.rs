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
/// bought"). Call it first thing in `main`.
pub fn return_freed_pages_at_once() {
    // SAFETY: `mi_option_set` stores a number in mimalloc's option table
    // (an atomic write): it takes no pointer, and any value is valid for
    // this option (0 means "purge at once").
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(PURGE_DELAY, 0);
    }
}

/// What [`return_freed_pages_at_once`] set, for the test.
#[cfg(test)]
fn purge_delay() -> std::ffi::c_long {
    // SAFETY: `mi_option_get` reads a number from mimalloc's option
    // table; it takes no pointer.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_get(PURGE_DELAY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_option_set_is_the_purge_delay_and_it_becomes_zero() {
        // MIMALLOC_PURGE_DELAY in the environment would change the default.
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(
                purge_delay(),
                10,
                "option 15 is not mimalloc's purge delay (10 ms)"
            );
        }
        return_freed_pages_at_once();
        assert_eq!(purge_delay(), 0);
    }
}
