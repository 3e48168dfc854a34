//! The on-disk schema of `gateway.toml`, parsed strictly (`deny_unknown_fields`).
//!
//! These types mirror the file; [`super::load`] validates them and derives the immutable
//! [`super::Snapshot`] that requests read.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// The whole `gateway.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayFile {
    /// Listener-independent server limits.
    #[serde(default)]
    pub server: ServerSection,
    /// Upstream providers by name.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderSection>,
    /// Models clients may call, by tollgate model name.
    #[serde(default)]
    pub models: BTreeMap<String, ModelSection>,
    /// Model groups: an alias clients call, served by several deployments in script order.
    #[serde(default)]
    pub groups: BTreeMap<String, GroupSection>,
    /// Budgets declared in the policy directory (others are managed with the CLI / admin API).
    #[serde(default)]
    pub budgets: Vec<BudgetSection>,
    /// Quotas: requests, tokens, cost and concurrency per window.
    #[serde(default)]
    pub quotas: Vec<QuotaSection>,
    /// Network and payload limits per key or team.
    #[serde(default)]
    pub limits: Vec<LimitSection>,
    /// Where budget threshold events go.
    #[serde(default)]
    pub notifications: NotificationsSection,
    /// MCP servers by slug (more can live in `mcp/<slug>.toml`).
    #[serde(default)]
    pub mcp_servers: BTreeMap<String, super::mcp::McpServerSection>,
    /// Virtual MCP servers by slug.
    #[serde(default)]
    pub mcp_virtual: BTreeMap<String, super::mcp::McpVirtualSection>,
    /// Where plugin components and data may live besides the policy directory.
    #[serde(default)]
    pub plugins: PluginsSection,
    /// How calls to providers are retried, cooled down and proxied (all providers).
    #[serde(default)]
    pub upstream: UpstreamSection,
}

/// `[upstream]`: retries, backoff, cooldowns and the outbound proxy of every provider call.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    /// Attempts per request across its failover list, the first included (default: each
    /// deployment once). Above the number of deployments the list is tried again, with backoff.
    pub max_attempts: Option<Spanned<u32>>,
    /// Retries (attempts after the first) may add at most this fraction of the requests to the
    /// provider load, gateway-wide (default 0.2).
    pub retry_budget_ratio: Option<Spanned<f64>>,
    /// Retries per second always allowed, whatever the ratio (default 5).
    pub retry_budget_min_per_sec: Option<Spanned<f64>>,
    /// First backoff before trying a deployment again (default 100 ms); doubles each time, with
    /// full jitter.
    pub backoff_base_ms: Option<Spanned<u64>>,
    /// Longest backoff (default 2000 ms).
    pub backoff_max_ms: Option<Spanned<u64>>,
    /// The longest `Retry-After` the gateway waits for before trying the same deployment again;
    /// a longer one is not waited for (default 5000 ms).
    pub max_retry_after_ms: Option<Spanned<u64>>,
    /// Consecutive failures that start a deployment's cooldown (default 3).
    pub cooldown_after: Option<Spanned<u32>>,
    /// The first cooldown (default 30 s); a failed half-open probe doubles it.
    pub cooldown_ms: Option<Spanned<u64>>,
    /// The longest cooldown (default 300 s).
    pub max_cooldown_ms: Option<Spanned<u64>>,
    /// An outbound HTTP proxy for every provider (`http://[user:password@]host:port`).
    pub proxy: Option<Spanned<String>>,
    /// Hosts reached directly (comma-separated; domains, `.suffix`, IPs, CIDR ranges).
    pub no_proxy: Option<Spanned<String>>,
}

/// `[plugins]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsSection {
    /// Folders (relative to the policy directory, or absolute) that plugin manifests may name
    /// in `wasm` and `capabilities.read_dir`, symlinks resolved; the policy directory always is.
    #[serde(default)]
    pub allowed_dirs: Vec<String>,
}

/// `[[budgets]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetSection {
    /// `organization`, `team`, `user` or `key`.
    pub scope: Spanned<String>,
    /// Team name, owner or key id; omitted for `organization`.
    #[serde(default)]
    pub subject: String,
    /// `daily`, `weekly`, `monthly` or `lifetime`.
    pub window: Spanned<String>,
    /// The limit in USD.
    pub limit_usd: Spanned<f64>,
    /// IANA time zone the windows are aligned in.
    #[serde(default = "default_tz")]
    pub timezone: Spanned<String>,
    /// Percentages of the limit that emit a notification once per window.
    #[serde(default = "default_thresholds")]
    pub thresholds: Vec<u32>,
}

/// `[[quotas]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaSection {
    /// A stable name for the quota's counters (letters, digits, `-`, `_`); defaults to one made
    /// of its scope, subject, metric and window, so reordering quotas never moves a counter.
    pub name: Option<Spanned<String>>,
    /// `organization`, `team`, `key` or `model`.
    pub scope: Spanned<String>,
    /// The one team, key id or model it applies to; omitted: each one gets its own counter.
    pub subject: Option<String>,
    /// `requests`, `input_tokens`, `output_tokens`, `total_tokens`, `cost_usd` or `concurrency`.
    pub metric: Spanned<String>,
    /// The limit per window (USD for `cost_usd`, in-flight requests for `concurrency`).
    pub limit: Spanned<f64>,
    /// `second`, `minute`, `hour`, `day` or `month` (not for `concurrency`).
    pub window: Option<Spanned<String>>,
    /// IANA time zone for `day` and `month` windows.
    #[serde(default = "default_tz")]
    pub timezone: Spanned<String>,
}

/// `[[limits]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSection {
    /// `organization`, `team` or `key`.
    pub scope: Spanned<String>,
    /// The team or key id; omitted for `organization`.
    #[serde(default)]
    pub subject: String,
    /// If set, only these networks may call (CIDR or single addresses).
    #[serde(default)]
    pub ip_allow: Vec<Spanned<String>>,
    /// These networks may not call.
    #[serde(default)]
    pub ip_deny: Vec<Spanned<String>>,
    /// Largest request body.
    pub max_request_bytes: Option<usize>,
}

/// `[notifications]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationsSection {
    /// A URL that receives budget threshold events as JSON POSTs (retried off the hot path).
    pub webhook_url: Option<Spanned<String>>,
}

fn default_tz() -> Spanned<String> {
    Spanned::new(0..0, "UTC".to_string())
}

fn default_thresholds() -> Vec<u32> {
    vec![50, 80, 100]
}

/// `[groups.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSection {
    /// Routing script (file stem in `routing/`); without one, deployments are tried by priority.
    pub routing: Option<Spanned<String>>,
    /// Tags shown to access rules as `model.tags`.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The deployments.
    pub deployments: Vec<DeploymentSection>,
    /// Let native endpoints of other families use this group's deployments through the
    /// translation core (a mixed-family group can then fail over across families).
    #[serde(default)]
    pub translate: bool,
}

/// One entry of `deployments = [...]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentSection {
    /// A model from `[models]`.
    pub model: Spanned<String>,
    /// Relative weight for weighted strategies.
    #[serde(default = "default_weight")]
    pub weight: i64,
    /// Lower is preferred.
    #[serde(default)]
    pub priority: i64,
    /// Region label.
    #[serde(default)]
    pub region: String,
    /// Free-form tags.
    #[serde(default)]
    pub tags: Vec<String>,
}

fn default_weight() -> i64 {
    1
}

/// `[server]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Largest accepted request body; larger bodies get 413 `request_too_large`.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Largest non-streaming upstream response the gateway buffers to read usage from.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
    /// How long a budget or quota hold lives before any gateway reclaims it (the longest call,
    /// stream included, that can still settle against its hold).
    #[serde(default = "default_hold_ttl_secs")]
    pub hold_ttl_secs: u64,
    /// How long a replica's budget and quota lease (PostgreSQL) lives without renewal: a
    /// crashed replica's unused slice returns to the others after this long.
    #[serde(default = "default_lease_ttl_secs")]
    pub lease_ttl_secs: u64,
}

fn default_hold_ttl_secs() -> u64 {
    900
}

fn default_lease_ttl_secs() -> u64 {
    10
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            max_body_bytes: default_max_body_bytes(),
            max_response_bytes: default_max_response_bytes(),
            hold_ttl_secs: default_hold_ttl_secs(),
            lease_ttl_secs: default_lease_ttl_secs(),
        }
    }
}

fn default_max_body_bytes() -> usize {
    4 * 1024 * 1024
}

fn default_max_response_bytes() -> usize {
    64 * 1024 * 1024
}

pub use crate::family::ProviderFamily;

/// `[providers.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSection {
    /// API family.
    pub family: ProviderFamily,
    /// Base URL including the version prefix, e.g. `https://api.openai.com/v1`.
    pub base_url: Option<Spanned<String>>,
    /// Where the provider credential comes from; omitted means no credential is sent.
    pub credential: Option<CredentialSection>,
    /// Time allowed for the provider to answer (headers of a stream, whole body otherwise), and
    /// the longest silence allowed between two chunks of a stream; the default of
    /// `first_byte_timeout_ms` and `idle_timeout_ms` (60 s).
    pub timeout_ms: Option<Spanned<u64>>,
    /// Time allowed to open a connection (TCP and TLS, through the proxy if any); 10 s.
    pub connect_timeout_ms: Option<Spanned<u64>>,
    /// Time allowed from sending the request to the provider's response headers.
    pub first_byte_timeout_ms: Option<Spanned<u64>>,
    /// The longest silence between two chunks of a body (streamed or not).
    pub idle_timeout_ms: Option<Spanned<u64>>,
    /// The longest a whole call may take, from sending to the last byte, streams included.
    /// Unset: a non-streamed answer must be complete within `timeout_ms`, and a stream lasts as
    /// long as its chunks keep coming.
    pub total_timeout_ms: Option<Spanned<u64>>,
    /// An outbound HTTP proxy for this provider (`http://[user:password@]host:port`), overriding
    /// `[upstream] proxy`.
    pub proxy: Option<Spanned<String>>,
    /// Hosts reached directly, not through the proxy (comma-separated: `localhost,.internal,
    /// 10.0.0.0/8`), overriding `[upstream] no_proxy`.
    pub no_proxy: Option<Spanned<String>>,
    /// A disabled provider answers 403 `provider_disabled`.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Azure: the `api-version` query parameter; Anthropic: the `anthropic-version` header
    /// (default `2023-06-01`). Refused for other families.
    pub api_version: Option<Spanned<String>>,
    /// `family = "adapter"`: the provider-adapter plugin (`plugins/<name>.toml`) that speaks
    /// this provider's API. Refused for other families.
    pub adapter: Option<Spanned<String>>,
}

fn default_true() -> bool {
    true
}

/// `credential = { env = "NAME" }` or `credential = { file = "path" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialSection {
    /// Environment variable holding the key.
    pub env: Option<String>,
    /// File holding the key (relative paths are relative to the policy directory).
    pub file: Option<String>,
}

/// `[models.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Name of the provider serving the model.
    pub provider: Spanned<String>,
    /// The model id the provider expects; defaults to the tollgate name.
    pub upstream_model: Option<String>,
    /// Prices in USD per one million tokens.
    #[serde(default)]
    pub pricing: PricingSection,
    /// Tags shown to access rules as `model.tags`.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The most output tokens the model produces per completion: holds assume it when a request
    /// sets no output limit, and a larger `max_tokens` is refused (400). Unset: holds assume
    /// [`DEFAULT_MAX_OUTPUT_TOKENS`] and any positive limit is accepted.
    pub max_output_tokens: Option<Spanned<i64>>,
    /// Serve native endpoints of other families through the translation core (otherwise they
    /// answer 400 `provider_not_allowed`), e.g. Claude Code's `/v1/messages` from an OpenAI model.
    #[serde(default)]
    pub translate: bool,
}

/// The output bound holds assume for a model that declares no `max_output_tokens`.
pub const DEFAULT_MAX_OUTPUT_TOKENS: i64 = 4096;

/// `pricing = { input_per_mtok, output_per_mtok, cached_input_per_mtok }` in USD per 1M tokens.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricingSection {
    /// Price of one million uncached input tokens.
    pub input_per_mtok: Option<Spanned<f64>>,
    /// Price of one million output tokens (reasoning tokens are output tokens).
    pub output_per_mtok: Option<Spanned<f64>>,
    /// Price of one million cached input tokens; defaults to the input price.
    pub cached_input_per_mtok: Option<Spanned<f64>>,
    /// Price of one million tokens written to the prompt cache (Anthropic's cache creation);
    /// defaults to the input price.
    pub cache_write_per_mtok: Option<Spanned<f64>>,
    /// USD per generated image, by `SIZE` or `SIZE/QUALITY` (`"1024x1024/hd"`): images from
    /// providers that report no usage are billed with it, and image holds include it.
    #[serde(default)]
    pub images: BTreeMap<String, Spanned<f64>>,
}
