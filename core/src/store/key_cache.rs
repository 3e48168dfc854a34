//! In-memory cache of key lookups (positive and negative), invalidated by the store's key version.
//!
//! A watcher task polls the store's key version every [`POLL`]; on a change it clears the cache
//! and then reports the version it applied in its instance row. Key changes made elsewhere (the
//! CLI, another replica) wait for every live instance to report the new version, so a revoked
//! key is refused on the very next request once `tollgate keys revoke` has returned.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::watch;

use super::keys::hash_secret;
use super::{KeyRecord, Store, StoreError};

/// How often the key version is polled.
pub const POLL: Duration = Duration::from_millis(50);
/// How often the instance heartbeat is written when nothing changed.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// Entries kept before the cache is cleared wholesale (bounds memory under key-guessing).
const MAX_ENTRIES: usize = 100_000;

/// The cache.
#[derive(Debug)]
pub struct KeyCache {
    store: Store,
    entries: RwLock<HashMap<String, Option<Arc<KeyRecord>>>>,
    version: AtomicI64,
}

impl KeyCache {
    /// An empty cache at the store's current key version.
    pub fn new(store: Store, version: i64) -> Self {
        Self {
            store,
            entries: RwLock::new(HashMap::new()),
            version: AtomicI64::new(version),
        }
    }

    /// The key version this cache reflects.
    pub fn version(&self) -> i64 {
        self.version.load(Ordering::Acquire)
    }

    /// Looks a presented secret up: cache first, then the store.
    pub async fn lookup(&self, secret: &str) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        let hash = hash_secret(secret);
        if let Ok(entries) = self.entries.read()
            && let Some(hit) = entries.get(&hash)
        {
            return Ok(hit.clone());
        }
        let seen = self.version();
        let found = self.store.key_by_hash(&hash).await?.map(Arc::new);
        if let Ok(mut entries) = self.entries.write() {
            // Only cache what was read under the version still in force; a concurrent
            // invalidation may have made this read stale.
            if self.version() == seen {
                if entries.len() >= MAX_ENTRIES {
                    entries.clear();
                }
                entries.insert(hash, found.clone());
            }
        }
        Ok(found)
    }

    /// Drops every entry and moves to `version`.
    pub fn invalidate(&self, version: i64) {
        if let Ok(mut entries) = self.entries.write() {
            entries.clear();
            self.version.store(version, Ordering::Release);
        }
    }

    /// Runs until `shutdown` flips: polls the key version, invalidates, reports it applied.
    pub async fn watch(self: Arc<Self>, instance_id: String, mut shutdown: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(POLL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_beat = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.changed() => return,
            }
            match self.store.keys_version().await {
                Ok(current) if current != self.version() => {
                    self.invalidate(current);
                    tracing::debug!(version = current, "key cache invalidated");
                    if let Err(e) = self.store.instance_heartbeat(&instance_id, current).await {
                        tracing::warn!(error = %e, "could not report the applied key version");
                    }
                    last_beat = tokio::time::Instant::now();
                }
                Ok(current) if last_beat.elapsed() >= HEARTBEAT => {
                    if let Err(e) = self.store.instance_heartbeat(&instance_id, current).await {
                        tracing::warn!(error = %e, "instance heartbeat failed");
                    }
                    last_beat = tokio::time::Instant::now();
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "key version poll failed"),
            }
        }
    }
}
