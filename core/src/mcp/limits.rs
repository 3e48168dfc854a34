//! Per-server rate, burst and concurrency limits, enforced in this replica's memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::server::{McpLimits, McpServer};
use crate::error::{GatewayError, QuotaExceeded};

/// A token bucket.
#[derive(Debug)]
struct Bucket {
    capacity: f64,
    per_sec: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(capacity: u32, per_sec: f64) -> Self {
        Self {
            capacity: f64::from(capacity.max(1)),
            per_sec,
            tokens: f64::from(capacity.max(1)),
            last: Instant::now(),
        }
    }

    /// Takes one token at `now`, or says how many whole seconds until one is back.
    fn take(&mut self, now: Instant) -> Result<(), u64> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - self.tokens) / self.per_sec;
            Err(wait.ceil().max(1.0) as u64)
        }
    }
}

#[derive(Debug)]
struct ServerLimiter {
    limits: McpLimits,
    second: Option<Mutex<Bucket>>,
    minute: Option<Mutex<Bucket>>,
    inflight: Option<Arc<Semaphore>>,
}

impl ServerLimiter {
    fn new(limits: McpLimits) -> Self {
        Self {
            limits,
            second: limits
                .requests_per_second
                .map(|rps| Mutex::new(Bucket::new(limits.burst.unwrap_or(rps), f64::from(rps)))),
            minute: limits
                .requests_per_minute
                .map(|rpm| Mutex::new(Bucket::new(rpm, f64::from(rpm) / 60.0))),
            inflight: limits
                .max_concurrency
                .map(|n| Arc::new(Semaphore::new(n as usize))),
        }
    }
}

/// The limiters of every server, rebuilt when a server's limits change.
#[derive(Debug, Default)]
pub struct Limiters {
    servers: Mutex<HashMap<String, Arc<ServerLimiter>>>,
}

/// Held while a request is in flight (releases its concurrency slot when dropped).
#[derive(Debug)]
pub struct Admission {
    _permit: Option<OwnedSemaphorePermit>,
}

fn refused(server: &str, limit_name: &str, limit: u32, retry_after_secs: u64) -> GatewayError {
    GatewayError::Quota(Box::new(QuotaExceeded {
        code: "rate_limit_exceeded",
        scope: "mcp_server",
        subject: server.to_string(),
        limit_name: limit_name.to_string(),
        limit: i64::from(limit),
        used: i64::from(limit),
        reserved: 0,
        retry_after_secs,
    }))
}

impl Limiters {
    fn limiter(&self, server: &McpServer) -> Arc<ServerLimiter> {
        let mut servers = self.servers.lock().unwrap_or_else(|e| e.into_inner());
        match servers.get(&server.slug) {
            Some(l) if l.limits == server.limits => l.clone(),
            _ => {
                let l = Arc::new(ServerLimiter::new(server.limits));
                servers.insert(server.slug.clone(), l.clone());
                l
            }
        }
    }

    /// Admits one request to `server`, or answers 429 `rate_limit_exceeded`.
    pub fn admit(&self, server: &McpServer) -> Result<Admission, GatewayError> {
        let limiter = self.limiter(server);
        let now = Instant::now();
        if let Some(bucket) = &limiter.second {
            let mut b = bucket.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(wait) = b.take(now) {
                return Err(refused(
                    &server.slug,
                    "requests_per_second",
                    limiter.limits.requests_per_second.unwrap_or(0),
                    wait,
                ));
            }
        }
        if let Some(bucket) = &limiter.minute {
            let mut b = bucket.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(wait) = b.take(now) {
                return Err(refused(
                    &server.slug,
                    "requests_per_minute",
                    limiter.limits.requests_per_minute.unwrap_or(0),
                    wait,
                ));
            }
        }
        let permit = match &limiter.inflight {
            None => None,
            Some(semaphore) => match semaphore.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    return Err(refused(
                        &server.slug,
                        "concurrency",
                        limiter.limits.max_concurrency.unwrap_or(0),
                        1,
                    ));
                }
            },
        };
        Ok(Admission { _permit: permit })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_refills_at_its_rate() {
        let start = Instant::now();
        let mut bucket = Bucket::new(2, 1.0);
        assert!(bucket.take(start).is_ok());
        assert!(bucket.take(start).is_ok());
        assert_eq!(bucket.take(start), Err(1));
        assert!(bucket.take(start + Duration::from_millis(1000)).is_ok());
        assert!(bucket.take(start + Duration::from_millis(1000)).is_err());
    }
}
