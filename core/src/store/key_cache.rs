//! In-memory cache of key lookups, invalidated by the store's key version.
//!
//! Known keys and unknown ones live in separate bounded maps, each evicting its least recently
//! used entries (two generations: a full young generation becomes the old one, whose entries
//! are dropped unless used again), so a client guessing random keys only churns the map of
//! misses and can never push a valid key out.
//!
//! A watcher task polls the store's key version every [`POLL`]; on a change it clears the cache
//! and then reports the version it applied in its instance row. Key changes made elsewhere (the
//! CLI, another replica) wait for every live instance to report the new version, so a revoked
//! key is refused on the very next request once `tollgate keys revoke` has returned. While the
//! store is unreachable, cached keys keep being served; a revocation made meanwhile is honoured
//! within one [`POLL`] of the store answering again (the first successful poll sees the new
//! version and clears the cache).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{OnceCell, watch};

use super::keys::hash_secret;
use super::{KeyRecord, Store, StoreError};

/// How often the key version is polled.
pub const POLL: Duration = Duration::from_millis(50);
/// How often the instance heartbeat is written when nothing changed.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// Known keys kept.
pub const MAX_KEYS: usize = 100_000;
/// Unknown keys kept (a miss evicted early only costs one more store lookup).
pub const MAX_MISSES: usize = 10_000;

/// A map bounded to about `capacity` entries that drops the least recently used ones.
#[derive(Debug)]
struct Generations<V> {
    young: HashMap<String, V>,
    old: HashMap<String, V>,
    half: usize,
}

impl<V: Clone> Generations<V> {
    fn new(capacity: usize) -> Self {
        Self {
            young: HashMap::new(),
            old: HashMap::new(),
            half: (capacity / 2).max(1),
        }
    }

    /// A hit, and whether it came from the old generation (then worth promoting).
    fn get(&self, key: &str) -> Option<(V, bool)> {
        if let Some(v) = self.young.get(key) {
            return Some((v.clone(), false));
        }
        self.old.get(key).map(|v| (v.clone(), true))
    }

    fn insert(&mut self, key: String, value: V) {
        if self.young.len() >= self.half && !self.young.contains_key(&key) {
            self.old = std::mem::take(&mut self.young);
        }
        self.old.remove(&key);
        self.young.insert(key, value);
    }

    fn clear(&mut self) {
        self.young.clear();
        self.old.clear();
    }
}

#[derive(Debug)]
struct Entries {
    known: Generations<Arc<KeyRecord>>,
    unknown: Generations<()>,
}

impl Entries {
    fn get(&self, hash: &str) -> Option<(Option<Arc<KeyRecord>>, bool)> {
        if let Some((record, old)) = self.known.get(hash) {
            return Some((Some(record), old));
        }
        self.unknown.get(hash).map(|((), old)| (None, old))
    }

    fn insert(&mut self, hash: String, found: Option<Arc<KeyRecord>>) {
        match found {
            Some(record) => self.known.insert(hash, record),
            None => self.unknown.insert(hash, ()),
        }
    }
}

/// One store lookup in flight, shared by every request presenting the same key meanwhile.
type Flight = Arc<OnceCell<Option<Arc<KeyRecord>>>>;

/// The cache.
#[derive(Debug)]
pub struct KeyCache {
    store: Store,
    entries: RwLock<Entries>,
    version: AtomicI64,
    /// Lookups in flight by key hash: a burst of requests with one uncached key (a cold start,
    /// a cache cleared by a key change) makes one store query, not one per request, so it
    /// cannot exhaust the store's connection pool and fail closed with 503.
    inflight: Mutex<HashMap<String, Flight>>,
    /// Store queries made (cache misses that reached the store).
    store_lookups: AtomicU64,
}

impl KeyCache {
    /// An empty cache at the store's current key version.
    pub fn new(store: Store, version: i64) -> Self {
        Self::with_capacity(store, version, MAX_MISSES)
    }

    /// An empty cache keeping at most about `max_misses` unknown keys.
    pub fn with_capacity(store: Store, version: i64, max_misses: usize) -> Self {
        Self {
            store,
            entries: RwLock::new(Entries {
                known: Generations::new(MAX_KEYS),
                unknown: Generations::new(max_misses),
            }),
            version: AtomicI64::new(version),
            inflight: Mutex::new(HashMap::new()),
            store_lookups: AtomicU64::new(0),
        }
    }

    /// Store queries made so far for keys not in the cache.
    pub fn store_lookups(&self) -> u64 {
        self.store_lookups.load(Ordering::Relaxed)
    }

    /// The key version this cache reflects.
    pub fn version(&self) -> i64 {
        self.version.load(Ordering::Acquire)
    }

    /// Looks a presented secret up: cache first, then the store.
    pub async fn lookup(&self, secret: &str) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        let hash = hash_secret(secret);
        let hit = self.entries.read().ok().and_then(|e| e.get(&hash));
        if let Some((found, old)) = hit {
            if old && let Ok(mut entries) = self.entries.write() {
                entries.insert(hash, found.clone());
            }
            return Ok(found);
        }
        let flight = match self.inflight.lock() {
            Ok(mut inflight) => inflight.entry(hash.clone()).or_default().clone(),
            Err(_) => Flight::default(),
        };
        let seen = self.version();
        let result = flight
            .get_or_try_init(|| async {
                self.store_lookups.fetch_add(1, Ordering::Relaxed);
                let found = self.store.key_by_hash(&hash).await?.map(Arc::new);
                if let Ok(mut entries) = self.entries.write() {
                    // Only cache what was read under the version still in force; a
                    // concurrent invalidation may have made this read stale.
                    if self.version() == seen {
                        entries.insert(hash.clone(), found.clone());
                    }
                }
                Ok::<_, StoreError>(found)
            })
            .await
            .cloned();
        // The flight is over (answered, or failed: the next request tries again).
        if let Ok(mut inflight) = self.inflight.lock()
            && inflight.get(&hash).is_some_and(|f| Arc::ptr_eq(f, &flight))
        {
            inflight.remove(&hash);
        }
        result
    }

    /// Drops every entry and moves to `version`.
    pub fn invalidate(&self, version: i64) {
        if let Ok(mut entries) = self.entries.write() {
            entries.known.clear();
            entries.unknown.clear();
            self.version.store(version, Ordering::Release);
        }
        // Requests from now on must not join a lookup made under the old version.
        if let Ok(mut inflight) = self.inflight.lock() {
            inflight.clear();
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
                mcp: ModelGrant::parse(""),
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_with_one_uncached_key_makes_one_store_lookup() {
        let (_dir, store, secret) = store_with_key().await;
        let cache = Arc::new(KeyCache::new(store, 0));
        let lookups: Vec<_> = (0..64)
            .map(|_| {
                let cache = cache.clone();
                let secret = secret.clone();
                tokio::spawn(async move { cache.lookup(&secret).await })
            })
            .collect();
        for lookup in lookups {
            let found = lookup.await.unwrap().unwrap();
            assert!(found.is_some());
        }
        assert_eq!(cache.store_lookups(), 1);
        // Cached now: no further store query.
        assert!(cache.lookup(&secret).await.unwrap().is_some());
        assert_eq!(cache.store_lookups(), 1);
    }

    #[test]
    fn generations_keep_recently_used_entries_and_stay_bounded() {
        let mut map = Generations::new(4);
        map.insert("a".into(), 1);
        map.insert("b".into(), 2);
        map.insert("c".into(), 3); // young was full: a, b are old now
        assert_eq!(map.get("a"), Some((1, true)));
        map.insert("a".into(), 1); // used again: promoted
        map.insert("d".into(), 4); // young (c, a) full: c, a old; b dropped
        assert_eq!(map.get("b"), None);
        assert!(map.get("a").is_some() && map.get("c").is_some() && map.get("d").is_some());
        for i in 0..100 {
            map.insert(format!("k{i}"), i);
        }
        assert!(map.young.len() + map.old.len() <= 4);
    }
}
