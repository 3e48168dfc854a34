//! The load driver: keep-alive HTTP/1.1 connections (hyper's connection API, no pool machinery
//! of its own), an open-loop fixed-rate mode and a closed-loop fixed-concurrency mode, latencies
//! in HDR histograms.
//!
//! - **Open loop** ([`Load::Open`]): request `i` is due at `start + i / rate`, whether or not
//!   earlier answers came back. A dedicated scheduling thread (`std::thread::sleep`, ~50 µs
//!   slack, instead of tokio's 1 ms timer) dispatches each request at its due time, and latency
//!   is measured **from the due time**, so a stalled server is charged for the requests it
//!   delayed (no coordinated omission). The dispatch lag itself is reported separately.
//! - **Closed loop** ([`Load::Closed`]): `concurrency` workers, each with its own connection,
//!   send the next request as soon as the previous answer ended. Measures throughput.
//!
//! A phase runs against one or more [`Target`]s (the replicas of a gateway): closed-loop worker
//! `i` keeps its connection to target `i % n`, open-loop request `k` goes to target `k % n`. The
//! latency histograms are merged over all of them; successful answers are also counted per
//! target.
//!
//! Both modes are bounded by a duration **and** a request count, run a warm-up first (same load,
//! not recorded) and give every request a timeout. A request succeeds when the status is 200 and
//! the body is complete: a JSON body, or a stream ending with `data: [DONE]`. For streams the
//! time to the first body byte (TTFB) is recorded besides the total time.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::scenario::RequestSpec;

/// Histograms are in microseconds, up to this many (60 s).
const MAX_TRACKED_US: u64 = 60_000_000;
/// Distinct error messages kept per phase.
const MAX_ERROR_KINDS: usize = 20;
/// Open loop: requests in flight at most (beyond it they wait, and their wait is measured).
const MAX_IN_FLIGHT: usize = 2048;
/// The stream terminator a complete SSE chat stream ends with.
const DONE: &[u8] = b"data: [DONE]\n\n";
/// Anthropic streams end with a `message_stop` event instead.
const MESSAGE_STOP: &[u8] = b"{\"type\":\"message_stop\"}";
/// Bytes kept from the end of a stream to recognise its terminator.
const TAIL: usize = 64;

/// Whether a stream's last bytes are a clean end: OpenAI's `[DONE]` or Anthropic's
/// `message_stop` event.
fn stream_complete(tail: &[u8]) -> bool {
    tail.ends_with(DONE) || tail.windows(MESSAGE_STOP.len()).any(|w| w == MESSAGE_STOP)
}

type Sender = SendRequest<Full<Bytes>>;

/// How load is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Load {
    /// Fixed arrival rate (requests per second), regardless of answers.
    Open {
        /// Requests per second.
        rate: u32,
    },
    /// Fixed number of requests in flight.
    Closed {
        /// Workers, each with one connection.
        concurrency: usize,
    },
}

impl Load {
    /// Table label: `open 1000/s` or `closed c=32`.
    pub fn label(&self) -> String {
        match self {
            Load::Open { rate } => format!("open {rate}/s"),
            Load::Closed { concurrency } => format!("closed c={concurrency}"),
        }
    }
}

/// What to send and where.
#[derive(Debug, Clone)]
pub struct Target {
    /// The server.
    pub addr: SocketAddr,
    /// The request.
    pub request: RequestSpec,
    /// `Authorization` header value, if any.
    pub authorization: Option<HeaderValue>,
    host: HeaderValue,
}

impl Target {
    /// A target; `bearer` becomes `Authorization: Bearer ...`.
    pub fn new(
        addr: SocketAddr,
        request: RequestSpec,
        bearer: Option<&str>,
    ) -> anyhow::Result<Self> {
        let authorization = bearer
            .map(|secret| HeaderValue::from_str(&format!("Bearer {secret}")))
            .transpose()
            .context("the key is not a valid header value")?;
        let host = HeaderValue::from_str(&addr.to_string()).context("host header")?;
        Ok(Self {
            addr,
            request,
            authorization,
            host,
        })
    }

    fn build(&self) -> Result<Request<Full<Bytes>>, String> {
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(self.request.path.as_str())
            .header(HOST, self.host.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(auth) = &self.authorization {
            builder = builder.header(AUTHORIZATION, auth.clone());
        }
        builder
            .body(Full::new(self.request.body.clone()))
            .map_err(|e| format!("request: {e}"))
    }
}

/// Bounds and options of one measured phase.
#[derive(Debug, Clone, Copy)]
pub struct PhaseOptions {
    /// Measured time.
    pub duration: Duration,
    /// Unrecorded time at the same load before measuring.
    pub warmup: Duration,
    /// Measured requests at most.
    pub max_requests: u64,
    /// Per-request timeout (from the due time in open loop).
    pub timeout: Duration,
    /// Width of the per-window latency histograms (open loop), for drift over a long run.
    pub window: Duration,
}

/// Percentiles of one histogram, in microseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Recorded values.
    pub count: u64,
    /// Smallest.
    pub min_us: u64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest.
    pub max_us: u64,
}

impl Summary {
    fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            min_us: h.min(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

/// Latency of one time window of a phase.
#[derive(Debug, Clone, Serialize)]
pub struct WindowSummary {
    /// Window start, seconds since the measurement began.
    pub from_s: f64,
    /// Window end.
    pub to_s: f64,
    /// Total latency in the window.
    pub latency: Summary,
}

/// The outcome of one phase.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseResult {
    /// The load applied.
    pub load: Load,
    /// Seconds from the start of measurement to the last measured answer.
    pub elapsed_s: f64,
    /// Measured requests sent.
    pub requests: u64,
    /// Measured requests that succeeded.
    pub ok: u64,
    /// Measured requests that failed.
    pub failed: u64,
    /// Warm-up requests sent (their latencies are not recorded).
    pub warmup_requests: u64,
    /// Warm-up requests that failed.
    pub warmup_failed: u64,
    /// CPU time (user + system) the gateway process used per request during the phase,
    /// warm-up included (µs); filled in by the harness for gateway phases.
    pub gateway_cpu_us_per_request: Option<f64>,
    /// With several gateway replicas: each replica's share of `gateway_cpu_us_per_request`
    /// (its CPU time over the phase / all requests sent), in target order; the sum is
    /// `gateway_cpu_us_per_request`. Empty with one target.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub replica_cpu_us_per_request: Vec<f64>,
    /// CPU time (user + system) of the PostgreSQL server (every process named `postgres`)
    /// during the phase, per request sent (µs); filled in for scenarios on the PostgreSQL store.
    /// Informational: it includes whatever else the server did meanwhile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postgres_cpu_us_per_request: Option<f64>,
    /// Requests whose budget and quota holds took a store round trip during the phase (warm-up
    /// included), summed over the replicas: those no leased slice admitted. Filled in on the
    /// PostgreSQL store when the build reports it (`tollgate_budget_store_holds_total`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_holds: Option<u64>,
    /// Measured successful answers per target, in target order (with several targets).
    #[serde(skip_serializing_if = "one_or_none")]
    pub ok_per_target: Vec<u64>,
    /// Failure messages and their counts (warm-up included).
    pub errors: BTreeMap<String, u64>,
    /// Successful answers per second.
    pub rps: f64,
    /// Total latency of successful requests (open loop: from the due time).
    pub latency: Summary,
    /// Time to the first body byte (streams only).
    pub ttfb: Option<Summary>,
    /// Open loop: how late the driver dispatched requests (a validity check on the driver).
    pub dispatch_lag: Option<Summary>,
    /// Open loop: latency per window.
    pub windows: Vec<WindowSummary>,
    /// When measurement began (for matching RSS samples).
    #[serde(skip)]
    pub measure_start: Option<Instant>,
    /// When the last measured answer ended.
    #[serde(skip)]
    pub measure_end: Option<Instant>,
}

fn one_or_none(v: &[u64]) -> bool {
    v.len() < 2
}

impl PhaseResult {
    /// Whether every request (warm-up included) succeeded and at least one was measured.
    pub fn all_succeeded(&self) -> bool {
        self.ok > 0 && self.failed == 0 && self.warmup_failed == 0
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_TRACKED_US, 3)
        .unwrap_or_else(|e| panic!("constant histogram bounds are valid: {e}"))
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Per-phase counters and histograms.
struct Tally {
    latency: Histogram<u64>,
    ttfb: Option<Histogram<u64>>,
    lag: Option<Histogram<u64>>,
    windows: Vec<Histogram<u64>>,
    window: Duration,
    requests: u64,
    ok: u64,
    failed: u64,
    warmup_requests: u64,
    warmup_failed: u64,
    errors: BTreeMap<String, u64>,
    last_end: Option<Instant>,
}

impl Tally {
    fn new(stream: bool, open_loop: bool, window: Duration) -> Self {
        Self {
            latency: histogram(),
            ttfb: stream.then(histogram),
            lag: open_loop.then(histogram),
            windows: Vec::new(),
            window,
            requests: 0,
            ok: 0,
            failed: 0,
            warmup_requests: 0,
            warmup_failed: 0,
            errors: BTreeMap::new(),
            last_end: None,
        }
    }

    fn error(&mut self, message: String, n: u64) {
        if let Some(count) = self.errors.get_mut(&message) {
            *count += n;
        } else if self.errors.len() < MAX_ERROR_KINDS {
            self.errors.insert(message, n);
        } else {
            *self.errors.entry("(other errors)".into()).or_default() += n;
        }
    }

    /// Records one request; `origin` is where latency counts from, `offset` its place in the
    /// measurement (for windows), `measured` false during warm-up.
    fn record(
        &mut self,
        measured: bool,
        origin: Instant,
        offset: Duration,
        outcome: Result<Timing, String>,
    ) {
        if !measured {
            self.warmup_requests += 1;
        }
        match outcome {
            Err(message) => {
                if measured {
                    self.requests += 1;
                    self.failed += 1;
                } else {
                    self.warmup_failed += 1;
                }
                self.error(message, 1);
            }
            Ok(timing) => {
                if !measured {
                    return;
                }
                self.requests += 1;
                self.ok += 1;
                let total = micros(timing.done.saturating_duration_since(origin));
                self.latency.saturating_record(total);
                if let (Some(h), Some(first)) = (self.ttfb.as_mut(), timing.first_byte) {
                    h.saturating_record(micros(first.saturating_duration_since(origin)));
                }
                if !self.window.is_zero() {
                    let index = (offset.as_secs_f64() / self.window.as_secs_f64()) as usize;
                    while self.windows.len() <= index {
                        self.windows.push(histogram());
                    }
                    self.windows[index].saturating_record(total);
                }
                self.last_end = Some(self.last_end.map_or(timing.done, |t| t.max(timing.done)));
            }
        }
    }

    fn merge(&mut self, other: Tally) {
        let _ = self.latency.add(&other.latency);
        if let (Some(a), Some(b)) = (self.ttfb.as_mut(), other.ttfb.as_ref()) {
            let _ = a.add(b);
        }
        self.requests += other.requests;
        self.ok += other.ok;
        self.failed += other.failed;
        self.warmup_requests += other.warmup_requests;
        self.warmup_failed += other.warmup_failed;
        for (message, n) in other.errors {
            self.error(message, n);
        }
        self.last_end = match (self.last_end, other.last_end) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }

    fn finish(self, load: Load, measure_start: Instant) -> PhaseResult {
        let end = self.last_end.unwrap_or(measure_start);
        let elapsed = end.saturating_duration_since(measure_start).as_secs_f64();
        let window = self.window.as_secs_f64();
        PhaseResult {
            load,
            elapsed_s: elapsed,
            requests: self.requests,
            ok: self.ok,
            failed: self.failed,
            warmup_requests: self.warmup_requests,
            warmup_failed: self.warmup_failed,
            gateway_cpu_us_per_request: None,
            replica_cpu_us_per_request: Vec::new(),
            postgres_cpu_us_per_request: None,
            store_holds: None,
            ok_per_target: Vec::new(),
            errors: self.errors,
            rps: if elapsed > 0.0 {
                self.ok as f64 / elapsed
            } else {
                0.0
            },
            latency: Summary::of(&self.latency),
            ttfb: self.ttfb.as_ref().map(Summary::of),
            dispatch_lag: self.lag.as_ref().map(Summary::of),
            windows: self
                .windows
                .iter()
                .enumerate()
                .map(|(i, h)| WindowSummary {
                    from_s: i as f64 * window,
                    to_s: ((i + 1) as f64 * window).min(elapsed.max(i as f64 * window)),
                    latency: Summary::of(h),
                })
                .collect(),
            measure_start: Some(measure_start),
            measure_end: Some(end),
        }
    }
}

/// When the answer's first body byte and its end arrived.
#[derive(Debug, Clone, Copy)]
struct Timing {
    first_byte: Option<Instant>,
    done: Instant,
}

async fn connect(addr: SocketAddr) -> Result<Sender, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("nodelay: {e}"))?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        // Ends when the sender is dropped or the server closes the connection.
        let _ = connection.await;
    });
    Ok(sender)
}

/// One request/response on `sender`.
async fn exchange(sender: &mut Sender, target: &Target) -> Result<Timing, String> {
    sender
        .ready()
        .await
        .map_err(|e| format!("connection: {e}"))?;
    let response = sender
        .send_request(target.build()?)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let status = response.status();
    let mut body = response.into_body();
    let mut first_byte = None;
    let mut length = 0usize;
    // The first bytes (for error messages) and the last ones (for the stream terminator).
    let mut head = Vec::new();
    let mut tail = Vec::with_capacity(64);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("body: {e}"))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        if first_byte.is_none() {
            first_byte = Some(Instant::now());
        }
        length += data.len();
        if status != StatusCode::OK && head.len() < 160 {
            head.extend_from_slice(&data[..data.len().min(160 - head.len())]);
        }
        if target.request.stream {
            tail.extend_from_slice(&data[data.len().saturating_sub(TAIL)..]);
            let excess = tail.len().saturating_sub(TAIL);
            tail.drain(..excess);
        }
    }
    let done = Instant::now();
    if status != StatusCode::OK {
        return Err(format!(
            "status {}: {}",
            status.as_u16(),
            String::from_utf8_lossy(&head)
        ));
    }
    if length == 0 {
        return Err("empty body".into());
    }
    if target.request.stream && !stream_complete(&tail) {
        return Err("stream did not end with data: [DONE] (or Anthropic's message_stop)".into());
    }
    Ok(Timing { first_byte, done })
}

/// Idle keep-alive connections shared by open-loop requests.
struct Pool {
    addr: SocketAddr,
    idle: Mutex<Vec<Sender>>,
}

impl Pool {
    async fn acquire(&self) -> Result<Sender, String> {
        loop {
            let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
            match idle {
                Some(sender) if sender.is_closed() => continue,
                Some(sender) => return Ok(sender),
                None => return connect(self.addr).await,
            }
        }
    }

    fn release(&self, sender: Sender) {
        if !sender.is_closed()
            && let Ok(mut idle) = self.idle.lock()
        {
            idle.push(sender);
        }
    }
}

/// Runs one phase against `targets` on the current runtime: one target, or the replicas of a
/// gateway sharing the load (closed loop: worker `i` talks to target `i % n`; open loop: request
/// `k` goes to target `k % n`).
pub async fn run_phase(
    targets: &[Arc<Target>],
    load: Load,
    options: PhaseOptions,
) -> anyhow::Result<PhaseResult> {
    anyhow::ensure!(!targets.is_empty(), "a phase needs at least one target");
    match load {
        Load::Open { rate } => open_loop(targets, rate, options).await,
        Load::Closed { concurrency } => closed_loop(targets, concurrency, options).await,
    }
}

/// One target of an open-loop phase with its idle connections and its count of successes.
struct OpenTarget {
    target: Arc<Target>,
    pool: Pool,
    ok: AtomicU64,
}

struct OpenShared {
    targets: Vec<OpenTarget>,
    in_flight: Semaphore,
    tally: Mutex<Tally>,
    timeout: Duration,
    measure_start: Instant,
}

/// Request `index` of an open-loop phase, due at `due`, sent to target `index % n`.
async fn open_request(shared: Arc<OpenShared>, index: u64, due: Instant, measured: bool) {
    let dispatched = Instant::now();
    let n = shared.targets.len() as u64;
    let to = &shared.targets[usize::try_from(index % n).unwrap_or(0)];
    let outcome = tokio::time::timeout_at((due + shared.timeout).into(), async {
        let _permit = shared
            .in_flight
            .acquire()
            .await
            .map_err(|e| format!("semaphore: {e}"))?;
        let mut sender = to.pool.acquire().await?;
        let outcome = exchange(&mut sender, &to.target).await;
        if outcome.is_ok() {
            to.pool.release(sender);
        }
        outcome
    })
    .await
    .unwrap_or_else(|_| Err(format!("timeout after {:?}", shared.timeout)));
    if measured && outcome.is_ok() {
        to.ok.fetch_add(1, Ordering::Relaxed);
    }
    if let Ok(mut tally) = shared.tally.lock() {
        if measured && let Some(lag) = tally.lag.as_mut() {
            lag.saturating_record(micros(dispatched.saturating_duration_since(due)));
        }
        let offset = due.saturating_duration_since(shared.measure_start);
        tally.record(measured, due, offset, outcome);
    }
}

async fn open_loop(
    targets: &[Arc<Target>],
    rate: u32,
    options: PhaseOptions,
) -> anyhow::Result<PhaseResult> {
    anyhow::ensure!(rate > 0, "the open-loop rate must be positive");
    let stream = targets.iter().any(|t| t.request.stream);
    let per_sec = u64::from(rate);
    let warmup_n = (options.warmup.as_secs_f64() * per_sec as f64).round() as u64;
    let measured_n = ((options.duration.as_secs_f64() * per_sec as f64).round() as u64)
        .min(options.max_requests)
        .max(1);
    let start = Instant::now() + Duration::from_millis(5);
    let measure_start = start + Duration::from_nanos(warmup_n * 1_000_000_000 / per_sec);
    let shared = Arc::new(OpenShared {
        targets: targets
            .iter()
            .map(|target| OpenTarget {
                pool: Pool {
                    addr: target.addr,
                    idle: Mutex::new(Vec::new()),
                },
                target: target.clone(),
                ok: AtomicU64::new(0),
            })
            .collect(),
        in_flight: Semaphore::new(MAX_IN_FLIGHT),
        tally: Mutex::new(Tally::new(stream, true, options.window)),
        timeout: options.timeout,
        measure_start,
    });
    let handle = tokio::runtime::Handle::current();
    // Give up scheduling if the driver itself falls this far behind.
    let give_up = measure_start + options.duration + Duration::from_secs(5);
    let scheduler = {
        let shared = shared.clone();
        tokio::task::spawn_blocking(move || {
            let total = warmup_n + measured_n;
            let mut tasks = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
            for i in 0..total {
                let due = start + Duration::from_nanos(i * 1_000_000_000 / per_sec);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                } else if now > give_up {
                    break;
                }
                tasks.push(handle.spawn(open_request(shared.clone(), i, due, i >= warmup_n)));
            }
            tasks
        })
    };
    let tasks = scheduler.await.context("the scheduler thread failed")?;
    for task in tasks {
        task.await.context("a request task failed")?;
    }
    let shared = Arc::try_unwrap(shared)
        .ok()
        .context("request tasks still hold the tally")?;
    let ok_per_target = shared
        .targets
        .iter()
        .map(|t| t.ok.load(Ordering::Relaxed))
        .collect();
    let tally = shared
        .tally
        .into_inner()
        .ok()
        .context("the tally's lock is poisoned")?;
    let mut result = tally.finish(Load::Open { rate }, measure_start);
    result.ok_per_target = ok_per_target;
    let unsent = measured_n.saturating_sub(result.requests);
    if unsent > 0 {
        result.failed += unsent;
        result.requests += unsent;
        result.errors.insert(
            "not sent: the driver fell more than 5 s behind schedule".into(),
            unsent,
        );
    }
    Ok(result)
}

async fn closed_loop(
    targets: &[Arc<Target>],
    concurrency: usize,
    options: PhaseOptions,
) -> anyhow::Result<PhaseResult> {
    anyhow::ensure!(concurrency > 0, "the concurrency must be positive");
    let stream = targets.iter().any(|t| t.request.stream);
    let start = Instant::now();
    let measure_start = start + options.warmup;
    let end = measure_start + options.duration;
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..concurrency {
        // Worker i keeps its connection to target i % n.
        let index = worker % targets.len();
        let target = targets[index].clone();
        let sent = sent.clone();
        let stop = stop.clone();
        workers.spawn(async move {
            // Windows are only kept for the open loop.
            let mut tally = Tally::new(target.request.stream, false, Duration::ZERO);
            let mut sender: Option<Sender> = None;
            loop {
                let now = Instant::now();
                if now >= end || stop.load(Ordering::Relaxed) {
                    break;
                }
                let measured = now >= measure_start;
                if measured && sent.fetch_add(1, Ordering::Relaxed) >= options.max_requests {
                    stop.store(true, Ordering::Relaxed);
                    break;
                }
                let began = Instant::now();
                let outcome = tokio::time::timeout(options.timeout, async {
                    let mut s = match sender.take() {
                        Some(s) if !s.is_closed() => s,
                        _ => connect(target.addr).await?,
                    };
                    let outcome = exchange(&mut s, &target).await;
                    if outcome.is_ok() {
                        sender = Some(s);
                    }
                    outcome
                })
                .await
                .unwrap_or_else(|_| Err(format!("timeout after {:?}", options.timeout)));
                let failed = outcome.is_err();
                tally.record(measured, began, Duration::ZERO, outcome);
                if failed {
                    // Do not spin on a server that refuses connections.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            (index, tally)
        });
    }
    let mut total = Tally::new(stream, false, Duration::ZERO);
    let mut ok_per_target = vec![0; targets.len()];
    while let Some(joined) = workers.join_next().await {
        let (index, tally) = joined.context("a closed-loop worker failed")?;
        ok_per_target[index] += tally.ok;
        total.merge(tally);
    }
    let mut result = total.finish(Load::Closed { concurrency }, measure_start);
    result.ok_per_target = ok_per_target;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_merge_counts_and_errors() {
        let now = Instant::now();
        let mut a = Tally::new(false, false, Duration::ZERO);
        let mut b = Tally::new(false, false, Duration::ZERO);
        let timing = Timing {
            first_byte: None,
            done: now + Duration::from_millis(2),
        };
        a.record(true, now, Duration::ZERO, Ok(timing));
        b.record(true, now, Duration::ZERO, Err("boom".into()));
        b.record(true, now, Duration::ZERO, Err("boom".into()));
        b.record(false, now, Duration::ZERO, Err("warm".into()));
        a.merge(b);
        assert_eq!((a.requests, a.ok, a.failed, a.warmup_failed), (3, 1, 2, 1));
        assert_eq!(a.errors.get("boom"), Some(&2));
        assert_eq!(a.errors.get("warm"), Some(&1));
        let result = a.finish(Load::Closed { concurrency: 1 }, now);
        assert!(result.latency.p50_us >= 1900, "{:?}", result.latency);
        assert!(!result.all_succeeded());
    }

    #[test]
    fn windows_split_latency_by_offset() {
        let now = Instant::now();
        let mut t = Tally::new(false, true, Duration::from_secs(10));
        for (offset, ms) in [(1, 1), (15, 5), (25, 9)] {
            let timing = Timing {
                first_byte: None,
                done: now + Duration::from_millis(ms),
            };
            t.record(true, now, Duration::from_secs(offset), Ok(timing));
        }
        let result = t.finish(Load::Open { rate: 1 }, now);
        assert_eq!(result.windows.len(), 3);
        assert!(result.windows[2].latency.p50_us > result.windows[0].latency.p50_us);
    }

    /// Two in-process mocks recording what they receive, and one target for each.
    async fn two_mocks() -> (Vec<mock_upstream::MockHandle>, Vec<Arc<Target>>) {
        let mut mocks = Vec::new();
        let mut targets = Vec::new();
        for _ in 0..2 {
            let mock = mock_upstream::start(
                SocketAddr::from(([127, 0, 0, 1], 0)),
                mock_upstream::MockConfig::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("mock: {e}"));
            let request = RequestSpec::json(
                "/v1/chat/completions",
                &crate::scenario::chat_body(crate::scenario::UPSTREAM_MODEL),
                false,
            );
            targets.push(Arc::new(
                Target::new(mock.addr, request, None).unwrap_or_else(|e| panic!("target: {e}")),
            ));
            mocks.push(mock);
        }
        (mocks, targets)
    }

    fn short(warmup_ms: u64, duration_ms: u64) -> PhaseOptions {
        PhaseOptions {
            duration: Duration::from_millis(duration_ms),
            warmup: Duration::from_millis(warmup_ms),
            max_requests: 10_000,
            timeout: Duration::from_secs(5),
            window: Duration::ZERO,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn closed_loop_workers_each_keep_to_one_replica() {
        // Three workers on two replicas: workers 0 and 2 on the first, worker 1 on the second.
        let (mocks, targets) = two_mocks().await;
        let load = Load::Closed { concurrency: 3 };
        let result = run_phase(&targets, load, short(0, 300))
            .await
            .unwrap_or_else(|e| panic!("phase: {e}"));
        assert!(result.all_succeeded(), "{result:?}");
        let received: Vec<u64> = mocks.iter().map(|m| m.count() as u64).collect();
        assert!(received.iter().all(|&n| n > 0), "{received:?}");
        // No warm-up: every request either mock received was measured, and counted against it.
        assert_eq!(result.ok_per_target, received);
        assert_eq!(result.ok_per_target.iter().sum::<u64>(), result.ok);

        // One worker on two replicas: the second one is never called.
        let (mocks, targets) = two_mocks().await;
        let load = Load::Closed { concurrency: 1 };
        let result = run_phase(&targets, load, short(0, 100))
            .await
            .unwrap_or_else(|e| panic!("phase: {e}"));
        assert!(result.ok > 0, "{result:?}");
        assert_eq!(result.ok_per_target, vec![result.ok, 0]);
        assert_eq!(mocks[1].count(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn open_loop_requests_alternate_between_replicas() {
        let (mocks, targets) = two_mocks().await;
        // 200/s: 20 warm-up requests (0..20) then 41 measured ones (20..61).
        let result = run_phase(&targets, Load::Open { rate: 200 }, short(100, 205))
            .await
            .unwrap_or_else(|e| panic!("phase: {e}"));
        assert!(result.all_succeeded(), "{result:?}");
        assert_eq!((result.warmup_requests, result.requests), (20, 41));
        // Request k went to replica k % 2: 31 and 30 in all, 21 and 20 of them measured.
        let received: Vec<usize> = mocks.iter().map(mock_upstream::MockHandle::count).collect();
        assert_eq!(received, vec![31, 30]);
        assert_eq!(result.ok_per_target, vec![21, 20]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_target_still_counts_its_answers() {
        let (mocks, targets) = two_mocks().await;
        let result = run_phase(&targets[..1], Load::Open { rate: 100 }, short(0, 100))
            .await
            .unwrap_or_else(|e| panic!("phase: {e}"));
        assert_eq!(result.ok_per_target, vec![10]);
        assert_eq!((mocks[0].count(), mocks[1].count()), (10, 0));
        assert!(
            run_phase(&[], Load::Open { rate: 100 }, short(0, 100))
                .await
                .is_err()
        );
    }
}
