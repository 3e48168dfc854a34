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
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            max_body_bytes: default_max_body_bytes(),
            max_response_bytes: default_max_response_bytes(),
        }
    }
}

fn default_max_body_bytes() -> usize {
    4 * 1024 * 1024
}

fn default_max_response_bytes() -> usize {
    64 * 1024 * 1024
}

/// The API family a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderFamily {
    /// The OpenAI API (and compatible servers).
    Openai,
    /// tollgate's built-in offline demo responder: answers deterministically, OpenAI-shaped.
    Demo,
}

impl ProviderFamily {
    /// The lower-case name used in configs, errors and records.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderFamily::Openai => "openai",
            ProviderFamily::Demo => "demo",
        }
    }
}

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
    /// the longest silence allowed between two chunks of a stream.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// A disabled provider answers 403 `provider_disabled`.
    #[serde(default = "default_true")]
    pub enabled: bool,
}

fn default_timeout_ms() -> u64 {
    60_000
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
}

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
}
