//! Deployment health: recent error rate, latency EWMA and cooldown, per model, lock-free on the
//! request path. Routing scripts see it; the call stage feeds it after every attempt.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::clock::now_ms;

/// A probe that has not reported after this long is considered lost.
pub const PROBE_ABANDONED_MS: i64 = 10 * 60 * 1000;

/// Weight of the newest sample in the moving averages.
const ALPHA: f64 = 0.2;
/// The longest cooldown a provider's `Retry-After` can ask for.
pub const MAX_RETRY_AFTER_SECS: u64 = 300;

/// When a deployment cools down and for how long (`[upstream]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CooldownPolicy {
    /// Consecutive failures that start a cooldown.
    pub after: u32,
    /// The first cooldown.
    pub first: Duration,
    /// The longest cooldown (a failed probe doubles the previous one up to it).
    pub max: Duration,
}

impl Default for CooldownPolicy {
    fn default() -> Self {
        CooldownPolicy {
            after: 3,
            first: Duration::from_secs(30),
            max: Duration::from_secs(300),
        }
    }
}

impl CooldownPolicy {
    /// The cooldown after `level` failed probes in a row.
    fn duration(&self, level: u32) -> Duration {
        self.first
            .saturating_mul(1u32 << level.min(20))
            .min(self.max.max(self.first))
    }
}

/// Where a deployment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Serving normally.
    Closed,
    /// Cooling down: tried last.
    Open,
    /// The cooldown is over: the next attempt is a probe that closes it (success) or opens it
    /// again for twice as long (failure). While one probe is in flight, the others treat the
    /// deployment as still cooling down.
    HalfOpen,
}

/// Health of one deployment.
#[derive(Debug, Default)]
pub struct Health {
    latency_ms_bits: AtomicU64,
    error_rate_bits: AtomicU64,
    consecutive_failures: AtomicU32,
    cooldown_until_ms: AtomicI64,
    /// A cooldown started and no success has closed it since.
    tripped: AtomicBool,
    /// Failed probes in a row (each doubles the next cooldown).
    level: AtomicU32,
    /// When the half-open probe in flight started (Unix ms; 0: none). A probe older than
    /// [`PROBE_ABANDONED_MS`] is taken as lost (its task died) and another may start.
    probing_since_ms: AtomicI64,
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

/// An attempt on a deployment: say how it went with [`Health::record`].
#[derive(Debug)]
#[must_use]
pub struct Attempt {
    /// This attempt is the half-open probe.
    pub probe: bool,
}

impl Health {
    /// Where the deployment stands now.
    pub fn state(&self) -> State {
        if self.cooldown_until_ms.load(Ordering::Relaxed) > now_ms() {
            State::Open
        } else if self.tripped.load(Ordering::Relaxed) {
            State::HalfOpen
        } else {
            State::Closed
        }
    }

    /// Starts an attempt; a half-open deployment's first attempt becomes its probe.
    pub fn begin(&self) -> Attempt {
        if self.state() != State::HalfOpen {
            return Attempt { probe: false };
        }
        let now = now_ms();
        let since = self.probing_since_ms.load(Ordering::Acquire);
        let probe = (since == 0 || now - since > PROBE_ABANDONED_MS)
            && self
                .probing_since_ms
                .compare_exchange(since, now.max(1), Ordering::AcqRel, Ordering::Relaxed)
                .is_ok();
        Attempt { probe }
    }

    /// Records an attempt's outcome and latency.
    pub fn record(&self, attempt: Attempt, ok: bool, latency: Duration, policy: &CooldownPolicy) {
        let first = self.latency_ms_bits.load(Ordering::Relaxed) == 0;
        ewma(&self.latency_ms_bits, latency.as_secs_f64() * 1000.0, first);
        ewma(&self.error_rate_bits, if ok { 0.0 } else { 1.0 }, false);
        if attempt.probe {
            self.probing_since_ms.store(0, Ordering::Release);
        }
        if ok {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            if self.state() != State::Open {
                self.tripped.store(false, Ordering::Relaxed);
                self.level.store(0, Ordering::Relaxed);
            }
            return;
        }
        if attempt.probe {
            // The trial failed: open again, for longer.
            let level = self.level.fetch_add(1, Ordering::Relaxed) + 1;
            self.consecutive_failures.store(0, Ordering::Relaxed);
            self.open_for(policy.duration(level));
        } else if self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1 >= policy.after {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            let level = self.level.load(Ordering::Relaxed);
            self.open_for(policy.duration(level));
        }
    }

    fn open_for(&self, duration: Duration) {
        let until = now_ms() + i64::try_from(duration.as_millis()).unwrap_or(i64::MAX / 2);
        self.cooldown_until_ms.fetch_max(until, Ordering::Relaxed);
        self.tripped.store(true, Ordering::Relaxed);
    }

    /// Starts (or extends) a cooldown of `duration` now, whatever the failure count: for a
    /// refused credential, or a 429 that says when to come back.
    pub fn cool_down(&self, duration: Duration) {
        self.open_for(duration);
    }

    /// When the current cooldown ends (Unix ms), if the deployment is cooling down now.
    pub fn cooldown_until_ms(&self) -> Option<i64> {
        let until = self.cooldown_until_ms.load(Ordering::Relaxed);
        (until > now_ms()).then_some(until)
    }

    /// Latency EWMA in ms (0 before the first call).
    pub fn latency_ms(&self) -> f64 {
        f64::from_bits(self.latency_ms_bits.load(Ordering::Relaxed))
    }

    /// Error-rate EWMA, 0..1.
    pub fn error_rate(&self) -> f64 {
        f64::from_bits(self.error_rate_bits.load(Ordering::Relaxed))
    }

    /// Whether routing should treat the deployment as cooling down: open, or half-open with its
    /// probe already in flight.
    pub fn in_cooldown(&self) -> bool {
        match self.state() {
            State::Open => true,
            State::HalfOpen => {
                let since = self.probing_since_ms.load(Ordering::Acquire);
                since != 0 && now_ms() - since <= PROBE_ABANDONED_MS
            }
            State::Closed => false,
        }
    }
}

/// Health of every deployment, keyed by model name; survives policy reloads.
#[derive(Debug, Default)]
pub struct HealthRegistry {
    /// foldhash: the keys are the policy's model names, looked up per attempt.
    entries: RwLock<HashMap<String, Arc<Health>, foldhash::fast::RandomState>>,
    /// The gateway-wide retry budget: how many attempts after the first requests may make.
    pub retries: crate::upstream::retry::RetryBudget,
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

    fn policy(after: u32, first_ms: u64) -> CooldownPolicy {
        CooldownPolicy {
            after,
            first: Duration::from_millis(first_ms),
            max: Duration::from_secs(60),
        }
    }

    fn fail(h: &Health, p: &CooldownPolicy) {
        h.record(h.begin(), false, Duration::from_millis(10), p);
    }

    #[test]
    fn failures_raise_error_rate_and_start_a_cooldown() {
        let p = policy(3, 30_000);
        let h = Health::default();
        h.record(h.begin(), true, Duration::from_millis(100), &p);
        assert_eq!(h.latency_ms(), 100.0);
        assert_eq!(h.error_rate(), 0.0);
        for _ in 0..p.after {
            assert!(!h.in_cooldown());
            fail(&h, &p);
        }
        assert!(h.in_cooldown());
        assert_eq!(h.state(), State::Open);
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

    /// Ends the current cooldown as if its time had passed.
    fn expire(h: &Health) {
        h.cooldown_until_ms.store(0, Ordering::Relaxed);
    }

    #[test]
    fn after_a_cooldown_one_probe_decides_and_the_others_wait_for_it() {
        let p = policy(3, 1000);
        let h = Health::default();
        for _ in 0..3 {
            fail(&h, &p);
        }
        expire(&h);
        assert_eq!(h.state(), State::HalfOpen);
        assert!(!h.in_cooldown());
        let probe = h.begin();
        assert!(probe.probe);
        // While the probe is out, the deployment still counts as cooling down, and no second
        // attempt becomes a probe.
        assert!(h.in_cooldown());
        assert!(!h.begin().probe);
        h.record(probe, true, Duration::from_millis(5), &p);
        assert_eq!(h.state(), State::Closed);
        assert!(!h.in_cooldown());
    }

    #[test]
    fn a_probe_that_never_reports_is_taken_as_lost() {
        let p = policy(1, 1000);
        let h = Health::default();
        fail(&h, &p);
        expire(&h);
        let lost = h.begin();
        assert!(lost.probe);
        assert!(!h.begin().probe);
        // Its task died without recording: after a while another request may probe.
        h.probing_since_ms
            .store(now_ms() - PROBE_ABANDONED_MS - 1, Ordering::Relaxed);
        assert!(!h.in_cooldown());
        assert!(h.begin().probe);
    }

    #[test]
    fn a_failed_probe_opens_again_at_once_for_twice_as_long() {
        let p = policy(3, 1000);
        let h = Health::default();
        for _ in 0..3 {
            fail(&h, &p);
        }
        let first = h.cooldown_until_ms.load(Ordering::Relaxed) - now_ms();
        expire(&h);
        // One failure, not three: the probe alone re-opens the cooldown.
        fail(&h, &p);
        assert_eq!(h.state(), State::Open);
        let second = h.cooldown_until_ms.load(Ordering::Relaxed) - now_ms();
        assert!(second > first + 500, "{first} then {second}");
        expire(&h);
        h.record(h.begin(), true, Duration::from_millis(5), &p);
        assert_eq!(h.state(), State::Closed);
        assert_eq!(h.level.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn cooldowns_stop_growing_at_the_maximum() {
        let p = CooldownPolicy {
            after: 1,
            first: Duration::from_secs(30),
            max: Duration::from_secs(300),
        };
        assert_eq!(p.duration(0), Duration::from_secs(30));
        assert_eq!(p.duration(1), Duration::from_secs(60));
        assert_eq!(p.duration(30), Duration::from_secs(300));
    }
}
