//! The policy directory: an immutable snapshot of everything a request decides with.
//!
//! A snapshot is built by [`load::load_dir`] (the same code path for `serve`, `check` and, later,
//! reloads) and shared through [`Policies`], an `ArcSwap`. A request takes the snapshot once at
//! entry and keeps it until it is recorded, so a swap never changes a request mid-flight.

pub mod config;
pub mod load;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
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
    /// Answer timeout and the longest silence between stream chunks.
    pub timeout: Duration,
    /// A disabled provider answers 403 `provider_disabled`.
    pub enabled: bool,
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
}

/// Server limits from `[server]`.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Largest buffered non-streaming upstream response.
    pub max_response_bytes: usize,
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
}

impl Snapshot {
    /// Looks a model up by the name the client sent.
    pub fn model(&self, name: &str) -> Option<&Arc<Model>> {
        self.models.get(name)
    }
}

/// The live policy set: the swap point for reloads.
pub struct Policies {
    current: ArcSwap<Snapshot>,
    generation: AtomicU64,
    dir: PathBuf,
}

impl Policies {
    /// Loads `dir` once; fails with every error found.
    pub fn open(dir: &Path) -> Result<Self, Vec<LoadError>> {
        let snapshot = load_dir(dir, 1)?;
        Ok(Self {
            current: ArcSwap::from_pointee(snapshot),
            generation: AtomicU64::new(1),
            dir: dir.to_path_buf(),
        })
    }

    /// The snapshot a new request should use.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Rebuilds from disk and swaps atomically; on error the current snapshot keeps serving.
    pub fn reload(&self) -> Result<Arc<Snapshot>, Vec<LoadError>> {
        let next = self.generation.load(Ordering::Acquire) + 1;
        let snapshot = Arc::new(load_dir(&self.dir, next)?);
        self.generation.store(next, Ordering::Release);
        self.current.store(snapshot.clone());
        Ok(snapshot)
    }
}
