//! Request, token, cost and MCP figures for `/metrics` (Prometheus text format), recorded once
//! per request at the record stage.
//!
//! A series is a set of atomics found by the hash of its label values: a request whose labels
//! were seen before takes a read lock for the lookup, allocates nothing and bumps atomics; only
//! the first request of a new label set allocates the label strings (interned in the series).
//! No lock is held across an await. Labels are bounded: models, providers, MCP servers and
//! teams come from the policy snapshot and the key store, statuses and stages are small sets,
//! and each family keeps at most [`MAX_SERIES`] series, folding any further label set into one
//! whose labels read `_other` (a client inventing MCP tool names cannot grow the exposition).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::store::UsageRecord;

/// Series per family at most; further label sets share one `_other` series.
pub const MAX_SERIES: usize = 2_000;

/// Upper bounds (seconds) of the latency histograms' buckets.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// A latency histogram: cumulative-on-render bucket counts, their sum and count.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// Adds one observation of `us` microseconds.
    pub fn observe_us(&self, us: i64) {
        let us = u64::try_from(us).unwrap_or(0);
        let seconds = us as f64 / 1e6;
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| seconds <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, n) in LATENCY_BUCKETS.iter().zip(&self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let labels = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{labels} {sum}");
        let _ = writeln!(out, "{name}_count{labels} {count}");
    }
}

/// Tokens and cost of one (model, provider, team).
#[derive(Debug, Default)]
pub struct Spend {
    input: AtomicU64,
    output: AtomicU64,
    cached_input: AtomicU64,
    reasoning: AtomicU64,
    cache_creation: AtomicU64,
    cost_nanos: AtomicU64,
}

struct Series<S> {
    labels: Box<[Box<str>]>,
    value: S,
}

/// One metric family: series of `S` keyed by their label values.
struct Family<S> {
    label_names: &'static [&'static str],
    /// foldhash, not SipHash: a request hashes about a dozen label sets, and SipHash there was
    /// 1% of passthrough's instructions. Its weaker flooding resistance is harmless here: label
    /// sets are bounded ([`MAX_SERIES`]) and colliding ones share a bucket.
    hasher: foldhash::fast::RandomState,
    series: RwLock<Index<S>>,
}

/// Series by label hash (a bucket per hash, for collisions) and how many there are.
struct Index<S> {
    by_hash: HashMap<u64, Vec<Arc<Series<S>>>, foldhash::fast::RandomState>,
    len: usize,
}

impl<S: Default> Family<S> {
    fn new(label_names: &'static [&'static str]) -> Self {
        Self {
            label_names,
            hasher: foldhash::fast::RandomState::default(),
            series: RwLock::new(Index {
                by_hash: HashMap::default(),
                len: 0,
            }),
        }
    }

    fn hash(&self, values: &[&str]) -> u64 {
        let mut h = self.hasher.build_hasher();
        for v in values {
            v.hash(&mut h);
        }
        h.finish()
    }

    /// Runs `f` on the series of `values` (created on first use).
    fn with(&self, values: &[&str], f: impl FnOnce(&S)) {
        debug_assert_eq!(values.len(), self.label_names.len());
        let hash = self.hash(values);
        let matches = |s: &Arc<Series<S>>| s.labels.iter().map(|l| &**l).eq(values.iter().copied());
        {
            let series = self.series.read().unwrap_or_else(|e| e.into_inner());
            if let Some(s) = series
                .by_hash
                .get(&hash)
                .and_then(|b| b.iter().find(|s| matches(s)))
            {
                f(&s.value);
                return;
            }
        }
        let mut guard = self.series.write().unwrap_or_else(|e| e.into_inner());
        let series = &mut *guard;
        let full = series.len >= MAX_SERIES;
        let (hash, values): (u64, Vec<&str>) = if full {
            let other = vec!["_other"; values.len()];
            (self.hash(&other), other)
        } else {
            (hash, values.to_vec())
        };
        let bucket = series.by_hash.entry(hash).or_default();
        let found = bucket
            .iter()
            .find(|s| s.labels.iter().map(|l| &**l).eq(values.iter().copied()))
            .cloned();
        let s = found.unwrap_or_else(|| {
            let s = Arc::new(Series {
                labels: values.iter().map(|v| Box::from(*v)).collect(),
                value: S::default(),
            });
            bucket.push(s.clone());
            series.len += 1;
            s
        });
        drop(guard);
        f(&s.value);
    }

    /// Every series with its rendered label list (`a="x",b="y"`), sorted by labels.
    fn collect(&self) -> Vec<(String, Arc<Series<S>>)> {
        let series = self.series.read().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<(String, Arc<Series<S>>)> = series
            .by_hash
            .values()
            .flatten()
            .map(|s| (render_labels(self.label_names, &s.labels), s.clone()))
            .collect();
        drop(series);
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

fn render_labels(names: &[&str], values: &[Box<str>]) -> String {
    let mut out = String::new();
    for (i, (name, value)) in names.iter().zip(values).enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{name}=\"{}\"", escape(value));
    }
    out
}

/// Escapes a label value (backslash, quote, newline).
pub fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The request figures of one gateway process.
pub struct Metrics {
    requests: Family<AtomicU64>,
    overhead: Family<Histogram>,
    upstream: Family<Histogram>,
    spend: Family<Spend>,
    mcp_calls: Family<AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Family::new(&["endpoint", "model", "provider", "status", "denied_stage"]),
            overhead: Family::new(&["endpoint"]),
            upstream: Family::new(&["provider", "model"]),
            spend: Family::new(&["model", "provider", "team"]),
            mcp_calls: Family::new(&["server", "method", "tool", "status"]),
        }
    }
}

/// A status code as a label without allocating.
fn status_label(status: u16, buf: &mut [u8; 5]) -> &str {
    let mut n = status;
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).unwrap_or("0")
}

impl Metrics {
    /// Counts one finished request from its usage record. `model_known`: the requested model
    /// (or group) exists in the policy snapshot, so it may be a label (an unknown name a client
    /// sent is not).
    pub fn observe(&self, record: &UsageRecord, model_known: bool) {
        let model = record.served_model.as_deref().unwrap_or_else(|| {
            if model_known {
                record.requested_model.as_deref().unwrap_or("")
            } else {
                ""
            }
        });
        let provider = record.provider.as_deref().unwrap_or("");
        let mut buf = [0u8; 5];
        let status = status_label(record.status, &mut buf);
        let stage = record.denied_stage.as_deref().unwrap_or("");
        // MCP paths carry the server slug a client asked for: one label for all of them (the
        // known servers are labels of `tollgate_mcp_calls_total`).
        let endpoint = if record.endpoint.starts_with("/v1/mcp") {
            "/v1/mcp"
        } else {
            record.endpoint.as_str()
        };
        self.requests
            .with(&[endpoint, model, provider, status, stage], |n| {
                n.fetch_add(1, Ordering::Relaxed);
            });
        // The gateway's own time before the client's first byte: all of it when nothing was
        // called upstream, otherwise what was not spent waiting for the provider's headers.
        let before_first_byte = record.ttfb_us.unwrap_or(record.latency_us);
        let overhead = match record.upstream_latency_us {
            Some(upstream) => (before_first_byte - upstream).max(0),
            None => before_first_byte,
        };
        self.overhead.with(&[endpoint], |h| h.observe_us(overhead));
        if let Some(upstream) = record.upstream_latency_us {
            self.upstream
                .with(&[provider, model], |h| h.observe_us(upstream));
        }
        let t = &record.tokens;
        if t.total() > 0 || record.cost_nanos > 0 {
            let team = record.team.as_deref().unwrap_or("");
            self.spend.with(&[model, provider, team], |s| {
                let add = |cell: &AtomicU64, v: i64| {
                    cell.fetch_add(u64::try_from(v).unwrap_or(0), Ordering::Relaxed);
                };
                add(&s.input, t.input);
                add(&s.output, t.output);
                add(&s.cached_input, t.cached_input);
                add(&s.reasoning, t.reasoning);
                add(&s.cache_creation, t.cache_creation);
                add(&s.cost_nanos, record.cost_nanos);
            });
        }
        if let Some(mcp) = &record.mcp {
            let method = mcp.method.as_deref().unwrap_or("");
            let tool = mcp.tool.as_deref().unwrap_or("");
            self.mcp_calls
                .with(&[mcp.server.as_str(), method, tool, status], |n| {
                    n.fetch_add(1, Ordering::Relaxed);
                });
        }
    }

    /// Appends every request figure in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        header(
            out,
            "tollgate_requests_total",
            "counter",
            "Requests by endpoint, model, provider, final status and the stage that denied them (empty when none did).",
        );
        for (labels, s) in self.requests.collect() {
            let n = s.value.load(Ordering::Relaxed);
            let _ = writeln!(out, "tollgate_requests_total{{{labels}}} {n}");
        }
        header(
            out,
            "tollgate_gateway_overhead_seconds",
            "histogram",
            "Time the gateway itself added before the client's first byte (everything but waiting for the provider's response headers).",
        );
        for (labels, s) in self.overhead.collect() {
            s.value
                .render(out, "tollgate_gateway_overhead_seconds", &labels);
        }
        header(
            out,
            "tollgate_upstream_latency_seconds",
            "histogram",
            "Time from sending a request upstream to the provider's response headers, by provider and model.",
        );
        for (labels, s) in self.upstream.collect() {
            s.value
                .render(out, "tollgate_upstream_latency_seconds", &labels);
        }
        header(
            out,
            "tollgate_tokens_total",
            "counter",
            "Tokens billed, by model, provider, team and kind (input includes cached_input and cache_creation; output includes reasoning).",
        );
        let spend = self.spend.collect();
        for (labels, s) in &spend {
            let v = &s.value;
            for (kind, cell) in [
                ("input", &v.input),
                ("output", &v.output),
                ("cached_input", &v.cached_input),
                ("reasoning", &v.reasoning),
                ("cache_creation", &v.cache_creation),
            ] {
                let n = cell.load(Ordering::Relaxed);
                let _ = writeln!(out, "tollgate_tokens_total{{{labels},kind=\"{kind}\"}} {n}");
            }
        }
        header(
            out,
            "tollgate_cost_nanousd_total",
            "counter",
            "Cost billed in nano-USD (the usage rows' cost_nanos), by model, provider and team.",
        );
        for (labels, s) in &spend {
            let n = s.value.cost_nanos.load(Ordering::Relaxed);
            let _ = writeln!(out, "tollgate_cost_nanousd_total{{{labels}}} {n}");
        }
        header(
            out,
            "tollgate_mcp_calls_total",
            "counter",
            "MCP requests by server, JSON-RPC method, tool (of tools/call) and status.",
        );
        for (labels, s) in self.mcp_calls.collect() {
            let n = s.value.load(Ordering::Relaxed);
            let _ = writeln!(out, "tollgate_mcp_calls_total{{{labels}}} {n}");
        }
    }
}

/// Writes a family's `# HELP` and `# TYPE` lines.
pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::McpUsage;
    use crate::usage::TokenUsage;

    fn record(status: u16) -> UsageRecord {
        UsageRecord {
            endpoint: "/v1/chat/completions".into(),
            requested_model: Some("chat".into()),
            served_model: Some("chat".into()),
            provider: Some("mock".into()),
            team: Some("research".into()),
            status,
            latency_us: 30_000,
            ttfb_us: Some(25_000),
            upstream_latency_us: Some(20_000),
            tokens: TokenUsage {
                input: 11,
                output: 7,
                cached_input: 2,
                reasoning: 3,
                cache_creation: 0,
            },
            cost_nanos: 95_000,
            ..UsageRecord::default()
        }
    }

    #[test]
    fn requests_tokens_cost_and_latency_add_up() {
        let m = Metrics::default();
        m.observe(&record(200), true);
        m.observe(&record(200), true);
        m.observe(&record(502), true);
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains(
            "tollgate_requests_total{endpoint=\"/v1/chat/completions\",model=\"chat\",provider=\"mock\",status=\"200\",denied_stage=\"\"} 2"
        ), "{out}");
        assert!(out.contains("status=\"502\",denied_stage=\"\"} 1"));
        assert!(out.contains(
            "tollgate_tokens_total{model=\"chat\",provider=\"mock\",team=\"research\",kind=\"input\"} 33"
        ));
        assert!(out.contains(
            "tollgate_cost_nanousd_total{model=\"chat\",provider=\"mock\",team=\"research\"} 285000"
        ));
        // 25 ms to the first byte of which 20 ms upstream: 5 ms overhead, in the 5 ms bucket.
        assert!(out.contains(
            "tollgate_gateway_overhead_seconds_bucket{endpoint=\"/v1/chat/completions\",le=\"0.005\"} 3"
        ));
        assert!(out.contains(
            "tollgate_gateway_overhead_seconds_bucket{endpoint=\"/v1/chat/completions\",le=\"0.0025\"} 0"
        ));
        assert!(out.contains(
            "tollgate_upstream_latency_seconds_count{provider=\"mock\",model=\"chat\"} 3"
        ));
    }

    #[test]
    fn an_unknown_model_name_is_not_a_label() {
        let m = Metrics::default();
        let mut r = record(400);
        r.served_model = None;
        r.provider = None;
        r.requested_model = Some("made-up-by-a-client".into());
        r.denied_stage = Some("authorize".into());
        m.observe(&r, false);
        let mut out = String::new();
        m.render(&mut out);
        assert!(!out.contains("made-up-by-a-client"));
        assert!(
            out.contains("model=\"\",provider=\"\",status=\"400\",denied_stage=\"authorize\"} 1")
        );
    }

    #[test]
    fn series_beyond_the_cap_fold_into_other() {
        let m = Metrics::default();
        for i in 0..MAX_SERIES + 10 {
            let r = UsageRecord {
                endpoint: "/v1/mcp/srv".into(),
                provider: Some("mcp".into()),
                status: 200,
                mcp: Some(McpUsage {
                    server: "srv".into(),
                    method: Some("tools/call".into()),
                    tool: Some(format!("tool-{i}")),
                    ..McpUsage::default()
                }),
                ..UsageRecord::default()
            };
            m.observe(&r, false);
        }
        let mut out = String::new();
        m.render(&mut out);
        let lines = out
            .lines()
            .filter(|l| l.starts_with("tollgate_mcp_calls_total{"))
            .count();
        assert_eq!(lines, MAX_SERIES + 1);
        assert!(out.contains(
            "tollgate_mcp_calls_total{server=\"_other\",method=\"_other\",tool=\"_other\",status=\"_other\"} 10"
        ));
    }

    #[test]
    fn status_labels_are_decimal() {
        let mut buf = [0u8; 5];
        assert_eq!(status_label(200, &mut buf), "200");
        assert_eq!(status_label(0, &mut buf), "0");
        assert_eq!(status_label(65535, &mut buf), "65535");
    }
}
