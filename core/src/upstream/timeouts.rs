//! The four clocks of a provider call: connect, first byte, idle between chunks, and total,
//! and the body reader and stream deadlines that enforce them.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::time::Sleep;

use super::BodyStream;

/// The longest any provider timeout may be set to (a day): larger values would overflow the
/// clock arithmetic and mean "never" anyway.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// The default `timeout_ms`.
pub const DEFAULT_ANSWER: Duration = Duration::from_secs(60);

/// The default `connect_timeout_ms` (also the shared client's).
pub const DEFAULT_CONNECT: Duration = Duration::from_secs(10);

/// A provider's timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Opening a connection (TCP, TLS, proxy).
    pub connect: Duration,
    /// From sending the request to the response headers.
    pub first_byte: Duration,
    /// The longest silence between two body chunks.
    pub idle: Duration,
    /// A whole call, streams included; `None`: a non-streamed answer must be complete within
    /// `answer`, a stream lasts while chunks keep coming.
    pub total: Option<Duration>,
    /// A whole non-streamed answer when `total` is unset (`timeout_ms`).
    pub answer: Duration,
}

impl Timeouts {
    /// The same `timeout` for everything but connecting, as `timeout_ms` alone sets it.
    pub fn uniform(timeout: Duration) -> Self {
        Timeouts {
            connect: DEFAULT_CONNECT,
            first_byte: timeout,
            idle: timeout,
            total: None,
            answer: timeout,
        }
    }

    /// Time left for the response headers of a call sent at `sent`.
    pub fn headers_left(&self, sent: Instant) -> Duration {
        match self.total {
            Some(total) => self.first_byte.min(total.saturating_sub(sent.elapsed())),
            None => self.first_byte,
        }
    }

    /// Time left for a whole non-streamed body of a call sent at `sent`.
    pub fn unary_left(&self, sent: Instant) -> Duration {
        self.total
            .unwrap_or(self.answer)
            .saturating_sub(sent.elapsed())
    }

    /// The timeout a client is told about when `expired` fired.
    pub fn millis(&self, expired: Expired) -> u64 {
        let d = match expired {
            Expired::FirstByte => self.first_byte,
            Expired::Idle => self.idle,
            Expired::Total => self.total.unwrap_or(self.answer),
        };
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Self::uniform(DEFAULT_ANSWER)
    }
}

/// Which clock ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// No response headers in time.
    FirstByte,
    /// Silence between chunks.
    Idle,
    /// The whole call took too long.
    Total,
}

impl Expired {
    /// The `stream_status` of a stream it ended.
    pub fn stream_status(self) -> &'static str {
        match self {
            Expired::FirstByte | Expired::Idle => "idle_timeout",
            Expired::Total => "total_timeout",
        }
    }

    /// What the client's error event says.
    pub fn message(self) -> &'static str {
        match self {
            Expired::FirstByte | Expired::Idle => {
                "the provider's stream went silent for longer than its timeout"
            }
            Expired::Total => "the provider's stream lasted longer than its total timeout",
        }
    }
}

/// The idle and total deadlines of a relayed stream.
pub struct Deadlines {
    idle_after: Duration,
    idle: Pin<Box<Sleep>>,
    total: Option<Pin<Box<Sleep>>>,
}

impl Deadlines {
    /// Deadlines for a stream whose call was sent at `sent`.
    pub fn new(timeouts: &Timeouts, sent: Instant) -> Self {
        let now = tokio::time::Instant::now();
        let total = timeouts.total.map(|total| {
            Box::pin(tokio::time::sleep_until(
                now + total.saturating_sub(sent.elapsed()),
            ))
        });
        Deadlines {
            idle_after: timeouts.idle,
            idle: Box::pin(tokio::time::sleep_until(now + timeouts.idle)),
            total,
        }
    }

    /// The idle timeout.
    pub fn idle_after(&self) -> Duration {
        self.idle_after
    }

    /// A chunk arrived: the idle clock starts again.
    pub fn touch(&mut self) {
        let deadline = tokio::time::Instant::now() + self.idle_after;
        self.idle.as_mut().reset(deadline);
    }

    /// Ready with the clock that ran out, if one did (registers the wakers otherwise).
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<Expired> {
        if let Some(total) = self.total.as_mut()
            && total.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Expired::Total);
        }
        if self.idle.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Expired::Idle);
        }
        Poll::Pending
    }
}

/// Why a body could not be read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// A clock ran out.
    Timeout(Expired),
    /// The body failed, or was too large (the detail is for the log).
    Bad(String),
}

/// Reads a whole non-streamed body within `limit` bytes, the idle clock between chunks and
/// what is left of the call's total time.
pub async fn collect(
    mut body: BodyStream,
    limit: usize,
    timeouts: &Timeouts,
    sent: Instant,
) -> Result<Bytes, ReadError> {
    let deadline = tokio::time::Instant::now() + timeouts.unary_left(sent);
    let mut buf = BytesMut::new();
    loop {
        let idle_end = tokio::time::Instant::now() + timeouts.idle;
        let (until, expired) = if idle_end < deadline {
            (idle_end, Expired::Idle)
        } else {
            (deadline, Expired::Total)
        };
        let chunk = match tokio::time::timeout_at(until, body.next()).await {
            Err(_) => return Err(ReadError::Timeout(expired)),
            Ok(None) => return Ok(buf.freeze()),
            Ok(Some(chunk)) => chunk.map_err(ReadError::Bad)?,
        };
        if buf.len() + chunk.len() > limit {
            return Err(ReadError::Bad(format!(
                "response larger than server.max_response_bytes ({limit})"
            )));
        }
        buf.extend_from_slice(&chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(parts: Vec<(u64, &'static str)>) -> BodyStream {
        Box::pin(
            futures_util::stream::iter(parts).then(|(wait_ms, text)| async move {
                tokio::time::sleep(Duration::from_millis(wait_ms)).await;
                Ok(Bytes::from_static(text.as_bytes()))
            }),
        )
    }

    fn timeouts(idle_ms: u64, total_ms: Option<u64>) -> Timeouts {
        Timeouts {
            connect: DEFAULT_CONNECT,
            first_byte: Duration::from_secs(60),
            idle: Duration::from_millis(idle_ms),
            total: total_ms.map(Duration::from_millis),
            answer: Duration::from_secs(60),
        }
    }

    #[tokio::test]
    async fn a_body_that_goes_silent_ends_on_the_idle_clock() {
        let t = timeouts(100, None);
        let out = collect(body(vec![(0, "a"), (5000, "b")]), 1024, &t, Instant::now()).await;
        assert_eq!(out, Err(ReadError::Timeout(Expired::Idle)));
    }

    #[tokio::test]
    async fn a_slow_drip_ends_on_the_total_clock_even_when_every_chunk_is_in_time() {
        let t = timeouts(2000, Some(250));
        let parts = (0..100).map(|_| (20, "x")).collect();
        let out = collect(body(parts), 1024, &t, Instant::now()).await;
        assert_eq!(out, Err(ReadError::Timeout(Expired::Total)));
    }

    #[tokio::test]
    async fn a_body_in_time_and_within_the_limit_is_read_whole() {
        let t = timeouts(5000, Some(10_000));
        let out = collect(body(vec![(0, "ab"), (1, "cd")]), 4, &t, Instant::now()).await;
        assert_eq!(out, Ok(Bytes::from_static(b"abcd")));
        let out = collect(body(vec![(0, "ab"), (0, "cde")]), 4, &t, Instant::now()).await;
        assert!(matches!(out, Err(ReadError::Bad(_))));
    }

    #[test]
    fn headers_wait_at_most_what_is_left_of_the_total() {
        let t = Timeouts {
            total: Some(Duration::from_millis(500)),
            ..Timeouts::uniform(Duration::from_secs(5))
        };
        assert!(t.headers_left(Instant::now()) <= Duration::from_millis(500));
        assert_eq!(
            Timeouts::uniform(Duration::from_secs(5)).headers_left(Instant::now()),
            Duration::from_secs(5)
        );
    }
}
