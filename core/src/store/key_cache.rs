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
    max_entries: usize,
}

impl KeyCache {
    /// An empty cache at the store's current key version.
    pub fn new(store: Store, version: i64) -> Self {
        Self::with_capacity(store, version, MAX_ENTRIES)
    }

    /// An empty cache holding at most `max_entries` lookups.
    pub fn with_capacity(store: Store, version: i64, max_entries: usize) -> Self {
        Self {
            store,
            entries: RwLock::new(HashMap::new()),
            version: AtomicI64::new(version),
            max_entries,
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
                if entries.len() >= self.max_entries {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::keys::{ModelGrant, NewKey};

    async fn store_with_key() -> (tempfile::TempDir, Store, String) {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = Store::open(&url).await.expect("store");
        let (_, secret) = store
            .create_key(&NewKey {
                name: "k".into(),
                team: None,
                owner: None,
                metadata: serde_json::Map::new(),
                models: ModelGrant::parse("*"),
                expires_at_ms: None,
            })
            .await
            .expect("key");
        (dir, store, secret)
    }

    #[tokio::test]
    async fn random_unknown_keys_cannot_flush_a_cached_valid_key() {
        let (_dir, store, secret) = store_with_key().await;
        let version = store.keys_version().await.expect("version");
        let cache = KeyCache::with_capacity(store.clone(), version, 8);
        assert!(cache.lookup(&secret).await.expect("lookup").is_some());
        for i in 0..100 {
            let unknown = format!("tg_guess{i:040}");
            assert!(cache.lookup(&unknown).await.expect("lookup").is_none());
        }
        // With the store gone, only the cache can answer: the valid key is still there.
        store.close().await;
        let cached = cache.lookup(&secret).await.expect("served from the cache");
        assert!(cached.is_some());
    }
}
