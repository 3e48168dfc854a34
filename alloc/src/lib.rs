//! The gateway's global allocator and the one setting it runs with.
//!
//! tollgate allocates through mimalloc 2 (the request path makes many small, short-lived
//! buffers; glibc malloc took 12-14% of the gateway's CPU under load). mimalloc returns freed
//! pages to the operating system after `purge_delay` (10 ms by default), but that delay is not a
//! timer: it is an age checked only when the thread that owns the pages next allocates or frees.
//! A thread that goes quiet keeps its freed pages resident indefinitely, and start-up is where
//! that happens: policy loading, migrations and the Cranelift compilation of every plugin
//! allocate tens of MiB on threads that then go quiet.
//!
//! So [`configure`] (first thing in `main`) purges at free time while the gateway starts, and
//! [`serving`] (once it listens) goes back to mimalloc's own delay: purging at free time while
//! serving too kept peak RSS a few MiB lower but cost 5-6% of the gateway's CPU in page faults,
//! `madvise` calls and the TLB shootdowns they send to the other cores. Measured on the governed
//! benchmark (`docs/performance.md`, "Fourth round"): peak RSS 107-112 MiB with mimalloc's
//! default throughout, 78 MiB purging at free throughout, 89 MiB this way; idle after start
//! 77 MiB, then 48-50 MiB both ways.
//!
//! An operator who sets mimalloc's own `MIMALLOC_PURGE_DELAY` gets that value throughout.

use std::ffi::c_long;

pub use mimalloc::MiMalloc;

/// mimalloc 2's `mi_option_purge_delay` (`mimalloc.h`, `mi_option_e`: the 16th option). The
/// `libmimalloc-sys` bindings leave this one out; the unit tests check the index against the
/// option's documented default and neighbours, so a mimalloc that renumbered it fails them.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// The environment variable mimalloc reads the purge delay from at start.
pub const PURGE_DELAY_ENV: &str = "MIMALLOC_PURGE_DELAY";

/// What [`configure`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeDelay {
    /// Zero until [`serving`]: an emptied page goes back to the OS when it is freed.
    AtFree,
    /// `MIMALLOC_PURGE_DELAY` was set; mimalloc uses that value (milliseconds).
    FromEnvironment(i64),
}

/// Purges at free time until [`serving`]. Call once, first thing in `main`.
pub fn configure() -> PurgeDelay {
    if std::env::var_os(PURGE_DELAY_ENV).is_some() {
        return PurgeDelay::FromEnvironment(purge_delay_ms());
    }
    set_option(PURGE_DELAY, 0);
    PurgeDelay::AtFree
}

/// mimalloc 2's own purge delay, milliseconds.
pub const DEFAULT_PURGE_DELAY_MS: i64 = 10;

/// Back to mimalloc's own purge delay once the gateway serves (unless the operator chose one).
/// A command that never serves (`keys`, `check`) keeps purging at free time; it is short-lived.
pub fn serving() {
    if std::env::var_os(PURGE_DELAY_ENV).is_none() {
        set_option(PURGE_DELAY, DEFAULT_PURGE_DELAY_MS as c_long);
    }
}

/// The purge delay mimalloc is using now, in milliseconds (-1: never purge).
pub fn purge_delay_ms() -> i64 {
    get_option(PURGE_DELAY)
}

#[allow(unsafe_code)]
fn set_option(option: libmimalloc_sys::mi_option_t, value: c_long) {
    // SAFETY: `mi_option_set` takes plain integers and stores them in mimalloc's static option
    // table with a relaxed atomic write; any option index below `_mi_option_last` is valid, and
    // the value of the purge delay is read again at each purge, so setting it after start is
    // supported (mimalloc's own `mi_option_set` docs).
    unsafe { libmimalloc_sys::mi_option_set(option, value) }
}

#[allow(unsafe_code)]
#[allow(clippy::useless_conversion)] // `c_long` is 32 bits on some targets
fn get_option(option: libmimalloc_sys::mi_option_t) -> i64 {
    // SAFETY: as for `set_option`: a read of mimalloc's static option table by index.
    i64::from(unsafe { libmimalloc_sys::mi_option_get(option) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_index_is_mimalloc_2s() {
        // Neighbours with distinctive defaults pin the numbering: eager_commit_delay (14) is 1,
        // use_numa_nodes (16) is 0, os_tag (18) is 100, max_errors (19) is 32.
        assert_eq!(get_option(libmimalloc_sys::mi_option_eager_commit_delay), 1);
        assert_eq!(get_option(libmimalloc_sys::mi_option_use_numa_nodes), 0);
        assert_eq!(get_option(libmimalloc_sys::mi_option_os_tag), 100);
        assert_eq!(get_option(libmimalloc_sys::mi_option_max_errors), 32);
        assert_eq!(
            libmimalloc_sys::mi_option_eager_commit_delay + 1,
            PURGE_DELAY
        );
    }

    #[test]
    fn configure_purges_at_free_unless_the_operator_chose_a_delay() {
        match std::env::var(PURGE_DELAY_ENV) {
            Ok(value) => {
                let chosen: i64 = value.trim().parse().unwrap_or(10);
                assert_eq!(configure(), PurgeDelay::FromEnvironment(chosen));
                assert_eq!(purge_delay_ms(), chosen);
                serving();
                assert_eq!(purge_delay_ms(), chosen);
            }
            Err(_) => {
                assert_eq!(
                    purge_delay_ms(),
                    10,
                    "mimalloc 2's default before configure"
                );
                assert_eq!(configure(), PurgeDelay::AtFree);
                assert_eq!(purge_delay_ms(), 0);
                serving();
                assert_eq!(purge_delay_ms(), DEFAULT_PURGE_DELAY_MS);
            }
        }
    }

    #[test]
    fn an_operator_chosen_delay_wins() {
        if std::env::var_os(PURGE_DELAY_ENV).is_some() {
            return; // this is the child run below
        }
        // mimalloc reads its environment once, at process start: run this binary's test above
        // again in a child that starts with the variable set.
        let Ok(exe) = std::env::current_exe() else {
            panic!("no current executable");
        };
        let out = std::process::Command::new(exe)
            .args([
                "--exact",
                "tests::configure_purges_at_free_unless_the_operator_chose_a_delay",
                "--test-threads=1",
            ])
            .env(PURGE_DELAY_ENV, "37")
            .output();
        let Ok(out) = out else {
            panic!("the child test run did not start");
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("1 passed"), "{stdout}");
    }
}
