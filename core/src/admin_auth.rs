//! The admin token: a minimum length, a comparison that leaks neither content nor length, and a
//! per-client backoff after repeated failures (429 with `Retry-After`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// The shortest admin token accepted at start-up.
pub const MIN_TOKEN_LEN: usize = 24;
/// Failures a client may make before the backoff starts.
pub const FREE_FAILURES: u32 = 5;
/// The longest backoff (it doubles from 2 s with every further failure).
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// A client's failures are forgotten after this long without one.
const FORGET_AFTER: Duration = Duration::from_secs(900);
/// Clients tracked at most; beyond it, new clients share one record.
const MAX_CLIENTS: usize = 10_000;

/// The outcome of presenting a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The right token.
    Allowed,
    /// No admin token is configured: the admin API is off.
    Disabled,
    /// Missing or wrong token.
    Denied,
    /// Too many failures from this client: not even checked; retry after this many seconds.
    Backoff(u64),
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

/// The admin token and the failure backoff.
pub struct AdminAuth {
    digest: Option<[u8; 32]>,
    protect_metrics: bool,
    failures: Mutex<HashMap<Option<IpAddr>, Failures>>,
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAuth")
            .field("enabled", &self.digest.is_some())
            .field("protect_metrics", &self.protect_metrics)
            .finish()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl AdminAuth {
    /// Checks the configuration: a token shorter than [`MIN_TOKEN_LEN`] is refused, and so is
    /// protecting `/metrics` without a token. The message never contains the token.
    pub fn new(token: Option<&str>, protect_metrics: bool) -> Result<Self, String> {
        let token = token.filter(|t| !t.is_empty());
        if let Some(token) = token
            && token.chars().count() < MIN_TOKEN_LEN
        {
            return Err(format!(
                "the admin token is too short ({} characters): use at least {MIN_TOKEN_LEN}, e.g. `openssl rand -hex 32`",
                token.chars().count()
            ));
        }
        if protect_metrics && token.is_none() {
            return Err(
                "--protect-metrics needs an admin token (TOLLGATE_ADMIN_TOKEN or --admin-token)"
                    .into(),
            );
        }
        Ok(Self {
            digest: token.map(digest),
            protect_metrics,
            failures: Mutex::new(HashMap::new()),
        })
    }

    /// Whether `/metrics` needs the admin token.
    pub fn protects_metrics(&self) -> bool {
        self.protect_metrics
    }

    /// Checks a presented token for `client`. Both sides are compared as SHA-256 digests in
    /// constant time, so neither the content nor the length of the token shows in the timing.
    pub fn check(&self, client: Option<IpAddr>, presented: Option<&str>) -> Check {
        self.check_at(client, presented, Instant::now())
    }

    fn check_at(&self, client: Option<IpAddr>, presented: Option<&str>, now: Instant) -> Check {
        if self.digest.is_none() {
            return Check::Disabled;
        }
        if let Some(wait) = self.backoff_at(client, now) {
            return Check::Backoff(wait);
        }
        if presented.is_some_and(|p| self.matches_env(p)) {
            self.succeeded(client);
            return Check::Allowed;
        }
        self.failed_at(client, now);
        Check::Denied
    }

    /// Whether an admin token is configured in the environment.
    pub fn env_enabled(&self) -> bool {
        self.digest.is_some()
    }

    /// Whether `presented` is the configured (environment) token, compared as SHA-256 digests
    /// in constant time.
    pub fn matches_env(&self, presented: &str) -> bool {
        let Some(expected) = &self.digest else {
            return false;
        };
        let given = digest(presented);
        given
            .iter()
            .zip(expected.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }

    /// Seconds `client` must still wait after too many failures, if it is locked out.
    pub fn backoff(&self, client: Option<IpAddr>) -> Option<u64> {
        self.backoff_at(client, Instant::now())
    }

    fn backoff_at(&self, client: Option<IpAddr>, now: Instant) -> Option<u64> {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let key = if failures.contains_key(&client) || failures.len() < MAX_CLIENTS {
            client
        } else {
            None
        };
        let until = failures.get(&key).and_then(|f| f.locked_until)?;
        (until > now).then(|| {
            let wait = until.duration_since(now);
            wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
        })
    }

    /// Clears `client`'s failures after a token was accepted.
    pub fn succeeded(&self, client: Option<IpAddr>) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.remove(&client);
    }

    /// Counts a failed attempt of `client`, starting or doubling its backoff.
    pub fn failed(&self, client: Option<IpAddr>) {
        self.failed_at(client, Instant::now());
    }

    fn failed_at(&self, client: Option<IpAddr>, now: Instant) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let key = if failures.contains_key(&client) || failures.len() < MAX_CLIENTS {
            client
        } else {
            failures.retain(|_, f| now.duration_since(f.last) < FORGET_AFTER);
            if failures.len() < MAX_CLIENTS {
                client
            } else {
                None
            }
        };
        let entry = failures.entry(key).or_insert(Failures {
            count: 0,
            last: now,
            locked_until: None,
        });
        if now.duration_since(entry.last) >= FORGET_AFTER {
            entry.count = 0;
        }
        entry.count += 1;
        entry.last = now;
        if entry.count >= FREE_FAILURES {
            let doublings = (entry.count - FREE_FAILURES).min(16);
            let backoff = Duration::from_secs(2u64 << doublings).min(MAX_BACKOFF);
            entry.locked_until = Some(now + backoff);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "an-admin-token-of-32-characters!";

    #[test]
    fn short_tokens_and_metrics_protection_without_a_token_are_refused() {
        let err = AdminAuth::new(Some("short-secret"), false).expect_err("too short");
        assert!(
            err.contains("at least 24") && !err.contains("short-secret"),
            "{err}"
        );
        assert!(AdminAuth::new(None, true).is_err());
        assert!(AdminAuth::new(Some(TOKEN), true).is_ok());
        let off = AdminAuth::new(Some(""), false).expect("empty means off");
        assert_eq!(off.check(None, Some("")), Check::Disabled);
    }

    #[test]
    fn only_the_exact_token_passes() {
        let auth = AdminAuth::new(Some(TOKEN), false).expect("auth");
        assert_eq!(auth.check(None, Some(TOKEN)), Check::Allowed);
        assert_eq!(auth.check(None, None), Check::Denied);
        assert_eq!(auth.check(None, Some(&TOKEN[..31])), Check::Denied);
        assert_eq!(auth.check(None, Some(&format!("{TOKEN}x"))), Check::Denied);
    }

    #[test]
    fn repeated_failures_back_off_per_client_and_doubling() {
        let auth = AdminAuth::new(Some(TOKEN), false).expect("auth");
        let attacker = Some(IpAddr::from([203, 0, 113, 9]));
        let operator = Some(IpAddr::from([10, 0, 0, 1]));
        let start = Instant::now();
        for _ in 0..FREE_FAILURES {
            assert_eq!(auth.check_at(attacker, Some("guess"), start), Check::Denied);
        }
        // Locked: even the right token is not checked.
        assert_eq!(
            auth.check_at(attacker, Some(TOKEN), start),
            Check::Backoff(2)
        );
        // Another client is not affected.
        assert_eq!(auth.check_at(operator, Some(TOKEN), start), Check::Allowed);
        // After the backoff, one more failure doubles it.
        let later = start + Duration::from_secs(2);
        assert_eq!(auth.check_at(attacker, Some("guess"), later), Check::Denied);
        assert_eq!(
            auth.check_at(attacker, Some(TOKEN), later),
            Check::Backoff(4)
        );
        // A success clears the record.
        let after = later + Duration::from_secs(4);
        assert_eq!(auth.check_at(attacker, Some(TOKEN), after), Check::Allowed);
        assert_eq!(auth.check_at(attacker, Some("guess"), after), Check::Denied);
    }
}
