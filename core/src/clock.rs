//! Wall-clock helpers: every stored time is Unix milliseconds (i64), portable across stores.
//!
//! The clock can be shifted forward for end-to-end tests of budget and quota windows
//! (`tollgate serve --unsafe-test-clock` enables `POST /admin/test/clock`); nothing else moves it.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    let real = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    real.saturating_add(OFFSET_MS.load(Ordering::Relaxed))
}

/// Now, as a UTC date-time.
pub fn now_utc() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(now_ms()).unwrap_or_default()
}

/// Shifts the clock by `offset_ms` from real time (tests only).
pub fn set_offset_ms(offset_ms: i64) {
    OFFSET_MS.store(offset_ms, Ordering::Relaxed);
}

/// The current test offset.
pub fn offset_ms() -> i64 {
    OFFSET_MS.load(Ordering::Relaxed)
}
