//! The policy directory: an immutable snapshot of everything a request decides with.
//!
//! A snapshot is built by [`load::load_dir`] (the same code path for `serve`, `check` and, later,
//! reloads) and shared through [`Policies`], an `ArcSwap`. A request takes the snapshot once at
//! entry and keeps it until it is recorded, so a swap never changes a request mid-flight.

pub mod access_memo;
pub mod cel;
pub mod config;
mod credential;
pub mod facts;
pub mod load;
pub mod mcp;
pub mod rhai;
mod route_memo;
pub mod testing;
mod upstream;
pub mod watch;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;

pub use config::ProviderFamily;
pub use load::{LoadError, load_dir};

use crate::usage::Pricing;

/// A provider credential. Never printed, logged or serialized.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The raw value, only for injecting into the provider request.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Whether a provider has a usable credential.
#[derive(Debug, Clone)]
pub enum Credential {
    /// The provider needs none (self-hosted, demo).
    NotRequired,
    /// Loaded and ready to inject.
    Present(Secret),
    /// Configured but not available (unset variable, unreadable file): requests answer
    /// 400 `provider_api_key_not_configured` until a reload finds it.
    Missing(String),
}

/// A provider as requests see it.
#[derive(Debug)]
pub struct Provider {
    /// Name in `gateway.toml`.
    pub name: String,
    /// API family.
    pub family: ProviderFamily,
    /// Base URL without a trailing slash (absent for the demo family).
    pub base_url: Option<String>,
    /// Credential state.
    pub credential: Credential,
    /// Connect, first-byte, idle and total timeouts.
    pub timeouts: crate::upstream::timeouts::Timeouts,
    /// Proxy and connect settings its client was built from.
    pub net: crate::upstream::proxy::NetSettings,
    /// Its own HTTP client when `net` is not the default (proxy, connect timeout); `None`: the
    /// shared one.
    pub client: Option<reqwest::Client>,
    /// A disabled provider answers 403 `provider_disabled`.
    pub enabled: bool,
    /// Azure's `api-version`, or Anthropic's `anthropic-version`.
    pub api_version: Option<String>,
    /// `family = "adapter"`: the provider-adapter plugin it is spoken through.
    pub adapter: Option<crate::plugins::adapter::Binding>,
}

/// A model clients may call, resolved to its provider.
#[derive(Debug)]
pub struct Model {
    /// The tollgate model name clients send.
    pub name: String,
    /// The provider serving it.
    pub provider: Arc<Provider>,
    /// The id the upstream sees.
    pub upstream_model: String,
    /// Prices in nano-USD per one million tokens.
    pub pricing: Pricing,
    /// Tags shown to access rules.
    pub tags: Vec<String>,
    /// Output bound for budget holds when a request sets no `max_tokens`.
    pub max_output_tokens: i64,
    /// Native endpoints of other families may call it through the translation core.
    pub translate: bool,
    /// The largest output limit a request may set, when the model declares one.
    pub output_limit: Option<i64>,
    /// Per-image prices (image generations without token usage).
    pub image_pricing: crate::spend::image::ImagePricing,
    /// The `model` variable access rules see for this model, built once per snapshot.
    pub cel: ::cel::Value,
    /// Its upstream calls, prepared on first use.
    pub calls: crate::upstream::target::CallMemo,
}

/// One deployment of a model group.
#[derive(Debug)]
pub struct Deployment {
    /// The model serving it.
    pub model: Arc<Model>,
    /// Relative weight.
    pub weight: i64,
    /// Lower is preferred.
    pub priority: i64,
    /// Region label.
    pub region: String,
    /// Tags.
    pub tags: Vec<String>,
}

/// A model group: an alias served by several deployments in the order a script decides.
#[derive(Debug)]
pub struct ModelGroup {
    /// The alias clients call.
    pub name: String,
    /// The routing script; `None` means priority order.
    pub script: Option<Arc<rhai::RoutingScript>>,
    /// Deployments in configured (priority, then declared) order.
    pub deployments: Vec<Deployment>,
    /// Tags shown to access rules.
    pub tags: Vec<String>,
    /// Native endpoints of other families may use its deployments through translation.
    pub translate: bool,
    /// The `model` variable access rules see for this group.
    pub cel: ::cel::Value,
}

/// What a client's model name resolves to.
#[derive(Debug, Clone)]
pub enum Target {
    /// A single model.
    Model(Arc<Model>),
    /// A model group.
    Group(Arc<ModelGroup>),
}

impl Target {
    /// The name clients use.
    pub fn name(&self) -> &str {
        match self {
            Target::Model(m) => &m.name,
            Target::Group(g) => &g.name,
        }
    }

    /// The `model` variable for access rules.
    pub fn cel(&self) -> &::cel::Value {
        match self {
            Target::Model(m) => &m.cel,
            Target::Group(g) => &g.cel,
        }
    }

    /// The highest prices any deployment can be billed at (what a budget hold assumes).
    pub fn worst_pricing(&self) -> Pricing {
        match self {
            Target::Model(m) => m.pricing,
            Target::Group(g) => g
                .deployments
                .iter()
                .fold(Pricing::default(), |worst, d| Pricing {
                    input_nanos_per_mtok: worst
                        .input_nanos_per_mtok
                        .max(d.model.pricing.input_nanos_per_mtok),
                    output_nanos_per_mtok: worst
                        .output_nanos_per_mtok
                        .max(d.model.pricing.output_nanos_per_mtok),
                    cached_input_nanos_per_mtok: worst
                        .cached_input_nanos_per_mtok
                        .max(d.model.pricing.cached_input_nanos_per_mtok),
                    cache_write_nanos_per_mtok: worst
                        .cache_write_nanos_per_mtok
                        .max(d.model.pricing.cache_write_nanos_per_mtok),
                }),
        }
    }

    /// The largest output limit a request may set: the largest of the deployments' limits, or
    /// `None` if one of them declares none.
    pub fn output_limit(&self) -> Option<i64> {
        match self {
            Target::Model(m) => m.output_limit,
            Target::Group(g) => g
                .deployments
                .iter()
                .map(|d| d.model.output_limit)
                .try_fold(0, |max, limit| limit.map(|l| max.max(l))),
        }
    }

    /// The highest per-image prices of any deployment.
    pub fn image_pricing(&self) -> crate::spend::image::ImagePricing {
        match self {
            Target::Model(m) => m.image_pricing.clone(),
            Target::Group(g) => g
                .deployments
                .iter()
                .fold(crate::spend::image::ImagePricing::default(), |worst, d| {
                    worst.worst(&d.model.image_pricing)
                }),
        }
    }

    /// The largest default output bound of any deployment.
    pub fn max_output_tokens(&self) -> i64 {
        match self {
            Target::Model(m) => m.max_output_tokens,
            Target::Group(g) => g
                .deployments
                .iter()
                .map(|d| d.model.max_output_tokens)
                .max()
                .unwrap_or(0),
        }
    }
}

/// Server limits from `[server]`.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Largest buffered non-streaming upstream response.
    pub max_response_bytes: usize,
    /// Lifetime of budget and quota holds.
    pub hold_ttl: Duration,
    /// Lifetime of a replica's lease without renewal (shared store).
    pub lease_ttl: Duration,
}

/// Everything derived from one consistent read of the policy directory.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases by one with every successful load in this process.
    pub generation: u64,
    /// When this snapshot was built (Unix ms).
    pub loaded_at_ms: i64,
    /// SHA-256 over the files that made it.
    pub content_hash: String,
    /// The directory it was loaded from.
    pub dir: PathBuf,
    /// `[server]` limits.
    pub limits: ServerLimits,
    /// Providers by name.
    pub providers: BTreeMap<String, Arc<Provider>>,
    /// Models by tollgate name (sorted, so listings are stable).
    pub models: BTreeMap<String, Arc<Model>>,
    /// Model groups by alias.
    pub groups: BTreeMap<String, Arc<ModelGroup>>,
    /// Access rules, in file-name order.
    pub access_rules: Vec<Arc<cel::AccessRule>>,
    /// The union of what the access rules read.
    pub access_uses: cel::Uses,
    /// The access rules' verdicts while their inputs stay the same.
    pub access_memo: access_memo::AccessMemo,
    /// Routing scripts by name.
    pub routing: BTreeMap<String, Arc<rhai::RoutingScript>>,
    /// Guardrail plugins (`plugins/*.toml`), in manifest file-name order.
    pub plugins: Vec<Arc<crate::plugins::Plugin>>,
    /// Provider-adapter plugins (`plugins/*.toml` with `world = "provider-adapter"`).
    pub adapters: Vec<Arc<crate::plugins::adapter::Adapter>>,
    /// Budgets declared in gateway.toml.
    pub budgets: Vec<Arc<crate::spend::BudgetSpec>>,
    /// Quotas declared in gateway.toml.
    pub quotas: Vec<crate::spend::QuotaSpec>,
    /// Network and payload limits.
    pub limits_by_scope: Vec<crate::spend::LimitSpec>,
    /// Where budget threshold events are POSTed.
    pub webhook_url: Option<String>,
    /// `[upstream]`: attempts, backoff, retry budget and cooldowns.
    pub retry: crate::upstream::retry::RetryPolicy,
    /// MCP servers by slug.
    pub mcp_servers: BTreeMap<String, Arc<crate::mcp::server::McpServer>>,
    /// Virtual MCP servers (several servers' tools behind one slug).
    pub mcp_virtual: BTreeMap<String, Arc<crate::mcp::aggregate::VirtualServer>>,
}

impl Snapshot {
    /// Looks a model up by the name the client sent.
    pub fn model(&self, name: &str) -> Option<&Arc<Model>> {
        self.models.get(name)
    }

    /// Resolves a client's model name to a model or a group.
    pub fn target(&self, name: &str) -> Option<Target> {
        if let Some(model) = self.models.get(name) {
            return Some(Target::Model(model.clone()));
        }
        self.groups.get(name).map(|g| Target::Group(g.clone()))
    }

    /// Every name a client may call: models and groups, sorted.
    pub fn callable_names(&self) -> Vec<(&str, &str)> {
        let mut names: Vec<(&str, &str)> = self
            .models
            .values()
            .map(|m| (m.name.as_str(), m.provider.name.as_str()))
            .chain(self.groups.keys().map(|g| (g.as_str(), "tollgate")))
            .collect();
        names.sort_unstable();
        names
    }
}

/// The outcome of the last reload attempt, for `/admin/policies` and metrics.
#[derive(Debug, Clone, Default)]
pub struct ReloadStatus {
    /// Successful loads since start (the first included).
    pub reloads_ok: u64,
    /// Rejected loads since start.
    pub reloads_failed: u64,
    /// Reloads that found the files as they were (nothing swapped).
    pub reloads_unchanged: u64,
    /// When the last rejected load happened (Unix ms).
    pub last_error_at_ms: Option<i64>,
    /// Its errors, `file:line:col: message`; cleared by the next successful load.
    pub last_errors: Vec<String>,
}

/// The result of a reload.
#[derive(Debug)]
pub enum Reloaded {
    /// A new snapshot is serving.
    Swapped(Arc<Snapshot>),
    /// The files are unchanged (same content hash); nothing was swapped.
    Unchanged,
}

/// The live policy set: the swap point for reloads.
pub struct Policies {
    current: ArcSwap<Snapshot>,
    generation: AtomicU64,
    dir: PathBuf,
    status: Mutex<ReloadStatus>,
    /// Serializes reloads (watcher, SIGHUP) so generations stay ordered.
    reloading: Mutex<()>,
}

impl Policies {
    /// Loads `dir` once; fails with every error found.
    pub fn open(dir: &Path) -> Result<Self, Vec<LoadError>> {
        let snapshot = load_dir(dir, 1, None)?;
        Ok(Self {
            current: ArcSwap::from_pointee(snapshot),
            generation: AtomicU64::new(1),
            dir: dir.to_path_buf(),
            status: Mutex::new(ReloadStatus {
                reloads_ok: 1,
                ..ReloadStatus::default()
            }),
            reloading: Mutex::new(()),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The snapshot a new request should use.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The last reload outcome.
    pub fn status(&self) -> ReloadStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Rebuilds from disk (off the request path: call it from a blocking task) and swaps
    /// atomically. A set that fails to load is rejected whole; the current snapshot keeps
    /// serving and the errors are kept for `/admin/policies`. Unchanged compiled artefacts are
    /// reused.
    pub fn reload(&self) -> Result<Reloaded, Vec<LoadError>> {
        let _guard = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.snapshot();
        let next = self.generation.load(Ordering::Acquire) + 1;
        match load_dir(&self.dir, next, Some(&current)) {
            Ok(snapshot) if snapshot.content_hash == current.content_hash => {
                if let Ok(mut status) = self.status.lock() {
                    status.reloads_unchanged += 1;
                    status.last_errors.clear();
                }
                Ok(Reloaded::Unchanged)
            }
            Ok(snapshot) => {
                let snapshot = Arc::new(snapshot);
                self.generation.store(next, Ordering::Release);
                self.current.store(snapshot.clone());
                if let Ok(mut status) = self.status.lock() {
                    status.reloads_ok += 1;
                    status.last_errors.clear();
                }
                Ok(Reloaded::Swapped(snapshot))
            }
            Err(errors) => {
                if let Ok(mut status) = self.status.lock() {
                    status.reloads_failed += 1;
                    status.last_error_at_ms = Some(crate::clock::now_ms());
                    status.last_errors = errors.iter().map(ToString::to_string).collect();
                }
                Err(errors)
            }
        }
    }
}
