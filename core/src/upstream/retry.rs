//! How many times a request may be tried, how long to wait between tries, and the gateway-wide
//! retry budget that keeps a failing provider from multiplying the load on it.
//!
//! Every attempt after a request's first one (a failover to the next deployment, or the list
//! tried again) spends one token of the [`RetryBudget`]; every request deposits
//! `retry_budget_ratio` tokens, and `retry_budget_min_per_sec` tokens accrue each second, so
//! retries add at most that fraction to the provider load (plus the floor), whatever fails.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::health::CooldownPolicy;

/// `[upstream]` as requests use it.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts per request, the first included; `None`: each deployment once.
    pub max_attempts: Option<u32>,
    /// Tokens each request deposits into the retry budget.
    pub budget_ratio: f64,
    /// Tokens that accrue per second.
    pub budget_min_per_sec: f64,
    /// First backoff before trying a deployment again.
    pub backoff_base: Duration,
    /// Longest backoff.
    pub backoff_max: Duration,
    /// Longest `Retry-After` waited for.
    pub max_retry_after: Duration,
    /// When deployments cool down, and for how long.
    pub cooldown: CooldownPolicy,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: None,
            budget_ratio: 0.2,
            budget_min_per_sec: 5.0,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_millis(2000),
            max_retry_after: Duration::from_millis(5000),
            cooldown: CooldownPolicy::default(),
        }
    }
}

impl RetryPolicy {
    /// The attempts of a request whose route has `deployments` candidates.
    pub fn attempts(&self, deployments: usize) -> usize {
        match self.max_attempts {
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
            None => deployments,
        }
    }

    /// The exponential backoff before the `retry`-th try of a deployment already tried (1 for
    /// the first retry), with full jitter: uniform in `[0, min(max, base * 2^(retry-1))]`.
    pub fn backoff(&self, retry: u32) -> Duration {
        let exp = self
            .backoff_base
            .saturating_mul(1u32 << retry.saturating_sub(1).min(20));
        let ceiling = exp.min(self.backoff_max);
        ceiling.mul_f64(jitter())
    }

    /// How long to wait before trying again a deployment that answered with `retry_after`:
    /// `None` when it asks for longer than `max_retry_after` (do not wait, do not retry it).
    pub fn wait_for(&self, retry: u32, retry_after: Option<Duration>) -> Option<Duration> {
        let backoff = self.backoff(retry);
        match retry_after {
            Some(asked) if asked > self.max_retry_after => None,
            Some(asked) => Some(asked.max(backoff)),
            None => Some(backoff),
        }
    }
}

/// A number in `[0, 1)` that differs between calls (jitter only, not for secrets).
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// The gateway-wide retry budget (a token bucket); survives policy reloads.
#[derive(Debug)]
pub struct RetryBudget {
    state: Mutex<BudgetState>,
}

#[derive(Debug)]
struct BudgetState {
    tokens: f64,
    refilled: Instant,
}

/// Seconds of `min_per_sec` the bucket holds at most (and starts with).
const BUCKET_SECONDS: f64 = 10.0;

impl Default for RetryBudget {
    fn default() -> Self {
        Self::new(&RetryPolicy::default())
    }
}

impl RetryBudget {
    /// A full bucket for `policy`.
    pub fn new(policy: &RetryPolicy) -> Self {
        RetryBudget {
            state: Mutex::new(BudgetState {
                tokens: capacity(policy),
                refilled: Instant::now(),
            }),
        }
    }

    /// A request starts: deposits its share.
    pub fn deposit(&self, policy: &RetryPolicy) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        refill(&mut state, policy);
        state.tokens = (state.tokens + policy.budget_ratio).min(capacity(policy));
    }

    /// Takes one retry token; `false` when the budget is spent.
    pub fn withdraw(&self, policy: &RetryPolicy) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        refill(&mut state, policy);
        if state.tokens >= 1.0 {
            state.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Tokens left (for tests and metrics).
    pub fn balance(&self) -> f64 {
        self.state.lock().map(|s| s.tokens).unwrap_or(0.0)
    }
}

/// The most tokens the bucket holds: ten seconds of the floor, and never less than what a burst
/// of deposits can add up to a few retries.
fn capacity(policy: &RetryPolicy) -> f64 {
    (policy.budget_min_per_sec * BUCKET_SECONDS).max(policy.budget_ratio * 100.0)
}

fn refill(state: &mut BudgetState, policy: &RetryPolicy) {
    let now = Instant::now();
    let secs = now.duration_since(state.refilled).as_secs_f64();
    state.refilled = now;
    state.tokens = (state.tokens + secs * policy.budget_min_per_sec).min(capacity(policy));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(ratio: f64, floor: f64) -> RetryPolicy {
        RetryPolicy {
            budget_ratio: ratio,
            budget_min_per_sec: floor,
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn without_a_floor_retries_are_a_fraction_of_requests() {
        let p = policy(0.5, 0.0);
        let budget = RetryBudget::new(&p);
        // The bucket starts with what 100 requests would have deposited: spend it.
        while budget.withdraw(&p) {}
        let mut retries = 0;
        for _ in 0..100 {
            budget.deposit(&p);
            if budget.withdraw(&p) {
                retries += 1;
            }
        }
        assert_eq!(retries, 50);
    }

    #[test]
    fn a_zero_budget_allows_no_retry() {
        let p = policy(0.0, 0.0);
        let budget = RetryBudget::new(&p);
        budget.deposit(&p);
        assert!(!budget.withdraw(&p));
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let p = RetryPolicy {
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_millis(250),
            ..RetryPolicy::default()
        };
        for retry in 1..40 {
            let b = p.backoff(retry);
            assert!(b <= Duration::from_millis(250), "{retry}: {b:?}");
        }
        assert!(p.backoff(1) <= Duration::from_millis(100));
    }

    #[test]
    fn retry_after_is_honoured_up_to_its_cap() {
        let p = RetryPolicy {
            max_retry_after: Duration::from_secs(2),
            backoff_max: Duration::from_millis(10),
            ..RetryPolicy::default()
        };
        assert_eq!(
            p.wait_for(1, Some(Duration::from_secs(1))),
            Some(Duration::from_secs(1))
        );
        assert_eq!(p.wait_for(1, Some(Duration::from_secs(7))), None);
        assert!(
            p.wait_for(1, None)
                .is_some_and(|d| d <= Duration::from_millis(10))
        );
    }

    #[test]
    fn attempts_default_to_each_deployment_once() {
        assert_eq!(RetryPolicy::default().attempts(3), 3);
        let p = RetryPolicy {
            max_attempts: Some(2),
            ..RetryPolicy::default()
        };
        assert_eq!(p.attempts(5), 2);
    }
}
