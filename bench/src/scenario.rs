//! Scenarios: what one benchmark row measures: a policy directory, the request sent through
//! tollgate, the equivalent request sent straight to the mock, and the loads to apply.
//!
//! Adding a scenario is one `impl Scenario` plus one line in [`all`]. A scenario whose
//! capability does not exist yet is an [`Entry::NotBuilt`]: listed in the table, never measured
//! (and never faked).

use bytes::Bytes;
use serde_json::{Value, json};

use crate::BenchConfig;
use crate::driver::Load;

/// The model name clients send to tollgate.
pub const MODEL: &str = "bench-chat";
/// The model id tollgate sends upstream (and the direct baseline sends to the mock).
pub const UPSTREAM_MODEL: &str = "bench-chat-1";
/// Environment variable the bench sets on the gateway for the provider credential.
pub const PROVIDER_KEY_ENV: &str = "TOLLGATE_BENCH_PROVIDER_KEY";

/// One HTTP request the driver sends over and over.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    /// Request path, e.g. `/v1/chat/completions`.
    pub path: String,
    /// The JSON body.
    pub body: Bytes,
    /// Whether the answer is a server-sent event stream (time to first byte is measured, and
    /// the stream must end with `data: [DONE]`).
    pub stream: bool,
}

impl RequestSpec {
    /// A POST of `body` (JSON) to `path`.
    pub fn json(path: &str, body: &Value, stream: bool) -> Self {
        Self {
            path: path.to_string(),
            body: Bytes::from(body.to_string()),
            stream,
        }
    }
}

/// Where the gateway's provider lives.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// The provider base URL, `http://127.0.0.1:PORT/v1`.
    pub base_url: String,
}

/// A benchmark scenario.
pub trait Scenario: Send + Sync {
    /// Short name used by `--scenarios` and in the table.
    fn name(&self) -> &'static str;

    /// One line saying what the scenario exercises.
    fn summary(&self) -> &'static str;

    /// The policy directory: (relative path, contents) pairs. `gateway.toml` at least.
    fn policy_files(&self, upstream: &Upstream) -> Vec<(String, String)>;

    /// Files copied into the policy directory: (relative path, source). A scenario's plugins
    /// travel with its policies, as an operator deploys them.
    fn policy_copies(&self) -> Vec<(String, std::path::PathBuf)> {
        Vec::new()
    }

    /// The Model Access grant of the bench key (`tollgate keys create --models`).
    fn key_models(&self) -> &'static str {
        "*"
    }

    /// Whether the bench key needs an MCP Access grant (`tollgate keys create --mcp '*'`).
    fn key_mcp(&self) -> bool {
        false
    }

    /// The request sent through tollgate (the harness adds `Authorization: Bearer KEY`).
    fn gateway_request(&self) -> RequestSpec;

    /// The equivalent request sent straight to the mock: the baseline.
    fn direct_request(&self) -> RequestSpec;

    /// The loads to measure, each against the mock and through tollgate.
    fn loads(&self, config: &BenchConfig) -> Vec<Load>;

    /// The store the gateway runs on.
    fn store(&self) -> StoreKind {
        StoreKind::Sqlite
    }

    /// How many gateway processes (replicas) serve the load, side by side on one shared store
    /// (which must then be PostgreSQL) with one key. Closed loop: worker `i` talks to replica
    /// `i % n`; open loop: request `k` goes to replica `k % n`.
    fn replicas(&self) -> usize {
        1
    }

    /// Whether nginx `proxy_pass` in front of the mock is a meaningful floor for this scenario
    /// (it is for plain proxying; it governs nothing).
    fn nginx_baseline(&self) -> bool {
        false
    }
}

/// The store a scenario's gateway runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// An SQLite file in the scenario's temp dir (the embedded default).
    Sqlite,
    /// A fresh database on the PostgreSQL at 127.0.0.1:5432, dropped afterwards.
    Postgres,
}

/// A row of the table: a scenario that can run, or one whose capability is not built yet.
pub enum Entry {
    /// Measured.
    Ready(Box<dyn Scenario>),
    /// Listed as "not available yet (capability not built)", never measured.
    NotBuilt {
        /// Scenario name.
        name: &'static str,
        /// What it will measure.
        summary: &'static str,
    },
}

impl Entry {
    /// The scenario name.
    pub fn name(&self) -> &'static str {
        match self {
            Entry::Ready(scenario) => scenario.name(),
            Entry::NotBuilt { name, .. } => name,
        }
    }
}

/// Every scenario, in table order. When a capability lands, its `NotBuilt` line becomes
/// `Entry::Ready(Box::new(TheScenario))`.
pub fn all() -> Vec<Entry> {
    vec![
        Entry::Ready(Box::new(Passthrough)),
        Entry::Ready(Box::new(Streaming)),
        Entry::Ready(Box::new(Governed::SQLITE)),
        Entry::Ready(Box::new(Governed::POSTGRES)),
        Entry::Ready(Box::new(Governed::REPLICAS)),
        Entry::Ready(Box::new(Governed::STREAMING)),
        Entry::Ready(Box::new(Mcp)),
        Entry::Ready(Box::new(crate::families::Family::ANTHROPIC)),
        Entry::Ready(Box::new(crate::families::Family::ANTHROPIC_STREAM)),
        Entry::Ready(Box::new(crate::families::Family::TRANSLATED)),
        Entry::Ready(Box::new(crate::families::Family::TRANSLATED_STREAM)),
    ]
}

/// The `gateway.toml` with one OpenAI-family provider (the mock) and the bench model.
pub fn basic_gateway_toml(upstream: &Upstream) -> String {
    format!(
        r#"# Written by tollgate-bench.
[providers.mock]
family = "openai"
base_url = "{base}"
credential = {{ env = "{PROVIDER_KEY_ENV}" }}

[models."{MODEL}"]
provider = "mock"
upstream_model = "{UPSTREAM_MODEL}"
pricing = {{ input_per_mtok = 0.15, output_per_mtok = 0.6 }}
"#,
        base = upstream.base_url
    )
}

/// A chat completions body of about 1 KB (`model` + a system and a user message).
pub fn chat_body(model: &str) -> Value {
    let system = "You are a concise assistant for an internal engineering team. Answer in plain \
                  English, cite the document section you used, and say so when you do not know.";
    let mut user = String::from(
        "Summarise the following incident notes in three bullet points and propose one follow-up \
         action. Notes: ",
    );
    let notes = "at 09:12 the ingest queue backed up after a config push; consumers were \
                 restarted at 09:31; lag recovered by 09:48; no data was lost. ";
    while user.len() < 720 {
        user.push_str(notes);
    }
    json!({
        "model": model,
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": user},
        ],
        "temperature": 0.2,
        "max_tokens": 256,
        "user": "bench-user-42",
    })
}

/// A non-streaming ~1 KB chat request for `model`.
fn unary_chat(model: &str) -> RequestSpec {
    RequestSpec::json("/v1/chat/completions", &chat_body(model), false)
}

/// The fixed rate (open loop) and the fixed concurrency (closed loop) of `config`.
fn open_and_closed(config: &BenchConfig, extra_concurrency: usize) -> Vec<Load> {
    let mut loads = vec![Load::Open { rate: config.rate }];
    if extra_concurrency != config.concurrency {
        loads.push(Load::Closed {
            concurrency: extra_concurrency,
        });
    }
    loads.push(Load::Closed {
        concurrency: config.concurrency,
    });
    loads
}

/// `passthrough`: key auth + Model Access grant + usage record on a non-streaming ~1 KB chat
/// request.
#[derive(Debug)]
pub struct Passthrough;

impl Scenario for Passthrough {
    fn name(&self) -> &'static str {
        "passthrough"
    }

    fn summary(&self) -> &'static str {
        "key auth + Model Access grant + usage record, non-streaming ~1 KB chat request"
    }

    fn policy_files(&self, upstream: &Upstream) -> Vec<(String, String)> {
        vec![("gateway.toml".into(), basic_gateway_toml(upstream))]
    }

    fn gateway_request(&self) -> RequestSpec {
        unary_chat(MODEL)
    }

    fn direct_request(&self) -> RequestSpec {
        unary_chat(UPSTREAM_MODEL)
    }

    fn loads(&self, config: &BenchConfig) -> Vec<Load> {
        open_and_closed(config, 1)
    }

    fn nginx_baseline(&self) -> bool {
        true
    }
}

/// `mcp`: a JSON-RPC `tools/call` over Streamable HTTP, through `/v1/mcp/bench` (MCP Access,
/// tool rules, keyword filter, pricing, usage row) against a POST to the mock's `/mcp`.
#[derive(Debug)]
pub struct Mcp;

impl Mcp {
    fn call() -> Value {
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
               "params": {"name": "echo", "arguments": {"message": "hello from the bench"}}})
    }
}

impl Scenario for Mcp {
    fn name(&self) -> &'static str {
        "mcp"
    }

    fn summary(&self) -> &'static str {
        "MCP tools/call over Streamable HTTP: MCP Access, tool rules, keyword filter, pricing, usage row"
    }

    fn policy_files(&self, upstream: &Upstream) -> Vec<(String, String)> {
        let root = upstream.base_url.trim_end_matches("/v1");
        let toml = format!(
            "# Written by tollgate-bench.\n[mcp_servers.bench]\ntransport = \"streamable_http\"\n\
             url = \"{root}/mcp\"\nallowed_tools = [\"echo\"]\nblocked_keywords = [\"private key\"]\n\
             pricing = {{ call_nanos = 2000, input_byte_nanos = 1, output_byte_nanos = 1 }}\n"
        );
        vec![("gateway.toml".into(), toml)]
    }

    fn key_mcp(&self) -> bool {
        true
    }

    fn gateway_request(&self) -> RequestSpec {
        RequestSpec::json("/v1/mcp/bench", &Self::call(), false)
    }

    fn direct_request(&self) -> RequestSpec {
        RequestSpec::json("/mcp", &Self::call(), false)
    }

    fn loads(&self, config: &BenchConfig) -> Vec<Load> {
        open_and_closed(config, config.concurrency)
    }
}

/// `streaming`: a chat stream of 20 content chunks; time to first byte and total time.
///
/// The client does not ask for the usage chunk, so tollgate requests it upstream and hides it
/// (the default path). The direct baseline asks the mock for it, so the mock does the same work
/// in both runs.
#[derive(Debug)]
pub struct Streaming;

impl Scenario for Streaming {
    fn name(&self) -> &'static str {
        "streaming"
    }

    fn summary(&self) -> &'static str {
        "SSE chat stream, 20 content chunks, usage read from the stream"
    }

    fn policy_files(&self, upstream: &Upstream) -> Vec<(String, String)> {
        vec![("gateway.toml".into(), basic_gateway_toml(upstream))]
    }

    fn gateway_request(&self) -> RequestSpec {
        let mut body = chat_body(MODEL);
        body["stream"] = Value::Bool(true);
        RequestSpec::json("/v1/chat/completions", &body, true)
    }

    fn direct_request(&self) -> RequestSpec {
        let mut body = chat_body(UPSTREAM_MODEL);
        body["stream"] = Value::Bool(true);
        body["stream_options"] = json!({"include_usage": true});
        RequestSpec::json("/v1/chat/completions", &body, true)
    }

    fn nginx_baseline(&self) -> bool {
        true
    }

    fn loads(&self, config: &BenchConfig) -> Vec<Load> {
        vec![Load::Open {
            rate: config.stream_rate.unwrap_or(config.rate),
        }]
    }
}

/// Where `./scripts/build-plugins` puts the built guardrails.
pub fn plugin_dist() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/dist")
}

/// `governed`: everything on the path at once — key auth, three CEL access rules, a Rhai
/// routing script over a three-deployment model group, the `pii-guard` WASM guardrail scanning
/// the ~1 KB prompt, a budget hold + settle, a request quota, and the usage record.
/// `governed-postgres` is the same with the PostgreSQL store; `governed-replicas` the same with
/// two gateway processes sharing one PostgreSQL database and one key, the load split between
/// them; `governed-streaming` the same policy on a streamed request (time to first byte through
/// every stage).
#[derive(Debug)]
pub struct Governed {
    /// Run on PostgreSQL instead of SQLite.
    pub postgres: bool,
    /// Stream the answer (SSE, 20 content chunks) instead of one JSON answer.
    pub stream: bool,
    /// Gateway processes sharing the store (more than one needs `postgres`).
    pub replicas: usize,
}

impl Governed {
    /// `governed`: one gateway on SQLite.
    pub const SQLITE: Self = Self {
        postgres: false,
        stream: false,
        replicas: 1,
    };
    /// `governed-postgres`: one gateway on PostgreSQL.
    pub const POSTGRES: Self = Self {
        postgres: true,
        stream: false,
        replicas: 1,
    };
    /// `governed-replicas`: two gateways on one PostgreSQL database.
    pub const REPLICAS: Self = Self {
        postgres: true,
        stream: false,
        replicas: 2,
    };
    /// `governed-streaming`: one gateway on SQLite, streamed answers.
    pub const STREAMING: Self = Self {
        postgres: false,
        stream: true,
        replicas: 1,
    };
}

impl Scenario for Governed {
    fn name(&self) -> &'static str {
        match (self.postgres, self.stream, self.replicas > 1) {
            (true, _, true) => "governed-replicas",
            (true, _, false) => "governed-postgres",
            (false, true, _) => "governed-streaming",
            (false, false, _) => "governed",
        }
    }

    fn summary(&self) -> &'static str {
        match (self.postgres, self.stream) {
            (true, _) if self.replicas > 1 => {
                "governed on 2 gateway replicas sharing one PostgreSQL database and key, load split between them"
            }
            (true, _) => "governed, with budget and quota holds in the PostgreSQL store",
            (false, true) => {
                "governed, on an SSE chat stream of 20 content chunks (usage read from the stream)"
            }
            (false, false) => {
                "3 CEL rules, Rhai routing over 3 deployments, pii-guard on 1 KB, budget hold+settle, quota"
            }
        }
    }

    fn policy_files(&self, upstream: &Upstream) -> Vec<(String, String)> {
        let base = &upstream.base_url;
        let gateway = format!(
            r#"# Written by tollgate-bench: the governed scenario.
[providers.mock-a]
family = "openai"
base_url = "{base}"
credential = {{ env = "{PROVIDER_KEY_ENV}" }}

[providers.mock-b]
family = "openai"
base_url = "{base}"
credential = {{ env = "{PROVIDER_KEY_ENV}" }}

[providers.mock-c]
family = "openai"
base_url = "{base}"
credential = {{ env = "{PROVIDER_KEY_ENV}" }}

[models."bench-a"]
provider = "mock-a"
upstream_model = "{UPSTREAM_MODEL}"
pricing = {{ input_per_mtok = 0.15, output_per_mtok = 0.6 }}
tags = ["chat"]

[models."bench-b"]
provider = "mock-b"
upstream_model = "{UPSTREAM_MODEL}"
pricing = {{ input_per_mtok = 0.2, output_per_mtok = 0.8 }}
tags = ["chat"]

[models."bench-c"]
provider = "mock-c"
upstream_model = "{UPSTREAM_MODEL}"
pricing = {{ input_per_mtok = 2.5, output_per_mtok = 10.0 }}
tags = ["chat", "premium"]

[groups."{MODEL}"]
routing = "cheapest-healthy"
tags = ["chat"]
deployments = [
  {{ model = "bench-a", priority = 0, region = "us", weight = 3 }},
  {{ model = "bench-b", priority = 1, region = "eu", weight = 1 }},
  {{ model = "bench-c", priority = 2, region = "us", weight = 1 }},
]

[[budgets]]
scope = "organization"
window = "monthly"
limit_usd = 1000000.0

[[quotas]]
scope = "key"
metric = "requests"
limit = 1000000000
window = "minute"
"#
        );
        let pii = format!(
            r#"description = "pii-guard on the bench group"
wasm = "plugins/pii-guard.wasm"
world = "guardrail"
phases = ["request"]
failure_mode = "closed"

[applies_to]
models = ["{MODEL}"]

[config]
mode = "mask"
"#
        );
        vec![
            ("gateway.toml".into(), gateway),
            (
                "access/max-tokens.cel".into(),
                "request.max_tokens == null || request.max_tokens <= 4096\n".into(),
            ),
            (
                "access/loopback-only.cel".into(),
                r#"request.client_ip == null || cidr_contains("127.0.0.0/8", request.client_ip)"#
                    .into(),
            ),
            (
                "access/no-premium-groups.cel".into(),
                r#"!("premium" in model.tags) || key.team == "research""#.into(),
            ),
            (
                "routing/cheapest-healthy.rhai".into(),
                r#"fn route(request, candidates) {
    candidates.sort(|a, b| {
        if a.health.in_cooldown != b.health.in_cooldown {
            return if a.health.in_cooldown { 1 } else { -1 };
        }
        let x = a.price.input + a.price.output;
        let y = b.price.input + b.price.output;
        if x < y { -1 } else if x > y { 1 } else { a.priority - b.priority }
    });
    candidates
}
"#
                .into(),
            ),
            ("plugins/pii-guard.toml".into(), pii),
        ]
    }

    fn policy_copies(&self) -> Vec<(String, std::path::PathBuf)> {
        vec![(
            "plugins/pii-guard.wasm".into(),
            plugin_dist().join("pii-guard.wasm"),
        )]
    }

    fn gateway_request(&self) -> RequestSpec {
        if self.stream {
            Streaming.gateway_request()
        } else {
            unary_chat(MODEL)
        }
    }

    fn direct_request(&self) -> RequestSpec {
        if self.stream {
            Streaming.direct_request()
        } else {
            unary_chat(UPSTREAM_MODEL)
        }
    }

    fn loads(&self, config: &BenchConfig) -> Vec<Load> {
        if self.stream {
            Streaming.loads(config)
        } else {
            open_and_closed(config, 16)
        }
    }

    fn store(&self) -> StoreKind {
        if self.postgres {
            StoreKind::Postgres
        } else {
            StoreKind::Sqlite
        }
    }

    fn replicas(&self) -> usize {
        self.replicas.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chat_body_is_about_one_kilobyte() {
        let len = chat_body(MODEL).to_string().len();
        assert!((900..=1200).contains(&len), "{len}");
    }

    #[test]
    fn scenario_names_are_unique() {
        let names: Vec<_> = all().iter().map(Entry::name).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len());
    }

    #[test]
    fn replicated_scenarios_share_a_postgres_store() {
        for entry in all() {
            if let Entry::Ready(scenario) = entry
                && scenario.replicas() > 1
            {
                assert_eq!(scenario.store(), StoreKind::Postgres, "{}", scenario.name());
            }
        }
        assert_eq!(Governed::REPLICAS.name(), "governed-replicas");
        assert_eq!(Governed::REPLICAS.replicas(), 2);
        let config = BenchConfig::default();
        assert_eq!(
            Governed::REPLICAS.loads(&config),
            Governed::POSTGRES.loads(&config)
        );
    }
}
