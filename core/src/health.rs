//! Deployment health: recent error rate, latency EWMA and cooldown, per model, lock-free on the
//! request path. Routing scripts see it; the call stage feeds it after every attempt.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::clock::now_ms;

/// Weight of the newest sample in the moving averages.
const ALPHA: f64 = 0.2;
/// Consecutive failures that start a cooldown.
pub const COOLDOWN_AFTER: u32 = 3;
/// How long a cooldown lasts.
pub const COOLDOWN: Duration = Duration::from_secs(30);
/// The longest cooldown a provider's `Retry-After` can ask for.
pub const MAX_RETRY_AFTER_SECS: u64 = 300;

/// Health of one deployment.
#[derive(Debug, Default)]
pub struct Health {
    latency_ms_bits: AtomicU64,
    error_rate_bits: AtomicU64,
    consecutive_failures: AtomicU32,
    cooldown_until_ms: AtomicI64,
}

fn ewma(cell: &AtomicU64, sample: f64, first: bool) {
    let _ = cell.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
        let old = f64::from_bits(bits);
        let new = if first {
            sample
        } else {
            old + ALPHA * (sample - old)
        };
        Some(new.to_bits())
    });
}

impl Health {
    /// Records an attempt's outcome and latency.
    pub fn record(&self, ok: bool, latency: Duration) {
        let first = self.latency_ms_bits.load(Ordering::Relaxed) == 0;
        ewma(&self.latency_ms_bits, latency.as_secs_f64() * 1000.0, first);
        ewma(&self.error_rate_bits, if ok { 0.0 } else { 1.0 }, false);
        if ok {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        } else if self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1 >= COOLDOWN_AFTER {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            let until = now_ms() + i64::try_from(COOLDOWN.as_millis()).unwrap_or(i64::MAX);
            self.cooldown_until_ms.store(until, Ordering::Relaxed);
        }
    }

    /// Starts (or extends) a cooldown of `duration` now, whatever the failure count: for a
    /// refused credential, or a 429 that says when to come back.
    pub fn cool_down(&self, duration: Duration) {
        let until = now_ms() + i64::try_from(duration.as_millis()).unwrap_or(i64::MAX / 2);
        self.cooldown_until_ms.fetch_max(until, Ordering::Relaxed);
    }

    /// Latency EWMA in ms (0 before the first call).
    pub fn latency_ms(&self) -> f64 {
        f64::from_bits(self.latency_ms_bits.load(Ordering::Relaxed))
    }

    /// Error-rate EWMA, 0..1.
    pub fn error_rate(&self) -> f64 {
        f64::from_bits(self.error_rate_bits.load(Ordering::Relaxed))
    }

    /// Whether the deployment is cooling down.
    pub fn in_cooldown(&self) -> bool {
        self.cooldown_until_ms.load(Ordering::Relaxed) > now_ms()
    }
}

/// Health of every deployment, keyed by model name; survives policy reloads.
#[derive(Debug, Default)]
pub struct HealthRegistry {
    entries: RwLock<HashMap<String, Arc<Health>>>,
}

impl HealthRegistry {
    /// The health of `model` (created on first use).
    pub fn get(&self, model: &str) -> Arc<Health> {
        if let Ok(entries) = self.entries.read()
            && let Some(h) = entries.get(model)
        {
            return h.clone();
        }
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        entries.entry(model.to_string()).or_default().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_raise_error_rate_and_start_a_cooldown() {
        let h = Health::default();
        h.record(true, Duration::from_millis(100));
        assert_eq!(h.latency_ms(), 100.0);
        assert_eq!(h.error_rate(), 0.0);
        for _ in 0..COOLDOWN_AFTER {
            assert!(!h.in_cooldown());
            h.record(false, Duration::from_millis(10));
        }
        assert!(h.in_cooldown());
        assert!(h.error_rate() > 0.4);
        assert!(h.latency_ms() < 100.0);
    }

    #[test]
    fn a_cooldown_can_start_at_once_and_only_grows() {
        let h = Health::default();
        assert!(!h.in_cooldown());
        h.cool_down(Duration::from_secs(60));
        assert!(h.in_cooldown());
        let until = h.cooldown_until_ms.load(Ordering::Relaxed);
        h.cool_down(Duration::from_secs(1));
        assert_eq!(h.cooldown_until_ms.load(Ordering::Relaxed), until);
    }
}
