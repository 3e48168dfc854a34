//! The in-memory half of the ledger for an embedded store (one gateway per SQLite file):
//! counters and holds live here, sharded behind short locks, so a hold or a settlement costs
//! microseconds. The store half persists what settlements charge, write-behind, in the same
//! transaction as the usage rows they come from; at start the counters are rebuilt from it.
//!
//! A hold raises `reserved` on every counter a request needs only if each keeps
//! `used + reserved + amount <= limit` (all or nothing: the shards involved are locked in index
//! order, so concurrent holds never deadlock). A settlement removes the hold and moves what was
//! really used into `used`; settling an id that is no longer held changes nothing, so a retried
//! settlement can never charge twice.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::store::ledger::{CounterState, HoldOutcome, HoldRequest, Settlement};

/// Counter shards (a power of two; more than the cores of a typical gateway).
const SHARDS: usize = 32;

/// A counter in one window: `(counter_id, window_start_ms)`.
pub type CounterKey = (String, i64);

/// What one hold raised: each counter and the amount held on it.
type Held = Vec<(CounterKey, i64)>;

/// The maps' and shards' hasher: foldhash, randomly seeded per process. The keys are counter
/// ids from the policy and hold ids the gateway generates, so SipHash's flooding resistance
/// buys nothing here; it cost about 5 k instructions per governed request (a hold and a
/// settlement hash each counter key four times).
type Hasher = foldhash::fast::RandomState;

/// One shard of counters.
type Counters = HashMap<CounterKey, CounterState, Hasher>;

/// Counters and holds in memory.
#[derive(Debug)]
pub struct MemoryLedger {
    counters: Vec<Mutex<Counters>>,
    holds: Vec<Mutex<HashMap<String, Held, Hasher>>>,
    hasher: Hasher,
}

impl Default for MemoryLedger {
    fn default() -> Self {
        Self::new()
    }
}

/// Locks a mutex, recovering the data if a holder panicked (every update here is a plain
/// arithmetic step that leaves the map consistent).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MemoryLedger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self {
            counters: (0..SHARDS).map(|_| Mutex::default()).collect(),
            holds: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: Hasher::default(),
        }
    }

    fn shard_of<K: Hash + ?Sized>(&self, key: &K) -> usize {
        (self.hasher.hash_one(key) as usize) & (SHARDS - 1)
    }

    fn counter_shard(&self, counter_id: &str, window_start_ms: i64) -> usize {
        self.shard_of(&(counter_id, window_start_ms))
    }

    /// Sets a counter's settled amount (rebuilding from the store at start).
    pub fn load(&self, counter_id: &str, window_start_ms: i64, used: i64) {
        let shard = self.counter_shard(counter_id, window_start_ms);
        lock(&self.counters[shard])
            .entry((counter_id.to_string(), window_start_ms))
            .or_default()
            .used = used;
    }

    /// Holds `requests` for `hold_id`, all or nothing. The index in `Refused` is into
    /// `requests`. A hold id already held is refused at index 0 without change.
    pub fn hold(&self, hold_id: &str, requests: &[HoldRequest]) -> HoldOutcome {
        // The shards involved, each locked once, in index order.
        let mut shards: Vec<usize> = requests
            .iter()
            .map(|r| self.counter_shard(&r.counter_id, r.window_start_ms))
            .collect();
        shards.sort_unstable();
        shards.dedup();
        let mut guards: Vec<(usize, MutexGuard<'_, Counters>)> = shards
            .iter()
            .map(|s| (*s, lock(&self.counters[*s])))
            .collect();
        // Check every counter first (a request may name one counter twice: add them up).
        let mut wanted: Vec<(usize, CounterKey, i64, i64)> = Vec::with_capacity(requests.len());
        for (index, r) in requests.iter().enumerate() {
            let shard = self.counter_shard(&r.counter_id, r.window_start_ms);
            let key = (r.counter_id.clone(), r.window_start_ms);
            let earlier: i64 = wanted
                .iter()
                .filter(|(_, k, _, _)| *k == key)
                .map(|(_, _, a, _)| *a)
                .sum();
            let Ok(g) = guards.binary_search_by_key(&shard, |(s, _)| *s) else {
                return HoldOutcome::Refused {
                    index,
                    state: CounterState::default(),
                };
            };
            let state = guards[g].1.get(&key).copied().unwrap_or_default();
            let total = state
                .used
                .saturating_add(state.reserved)
                .saturating_add(earlier)
                .saturating_add(r.amount);
            if r.amount < 0 || total > r.limit {
                return HoldOutcome::Refused { index, state };
            }
            wanted.push((shard, key, r.amount, r.limit));
        }
        {
            let mut holds = lock(&self.holds[self.shard_of(hold_id)]);
            if holds.contains_key(hold_id) {
                return HoldOutcome::Refused {
                    index: 0,
                    state: CounterState::default(),
                };
            }
            holds.insert(
                hold_id.to_string(),
                wanted.iter().map(|(_, k, a, _)| (k.clone(), *a)).collect(),
            );
        }
        for (shard, key, amount, _) in wanted {
            if let Ok(g) = guards.binary_search_by_key(&shard, |(s, _)| *s) {
                guards[g].1.entry(key).or_default().reserved += amount;
            }
        }
        HoldOutcome::Held
    }

    /// Settles `hold_id`: its holds are released and each counter charged what the request
    /// really used. Returns each touched counter's state afterwards, or `None` if the id is not
    /// held (already settled): nothing changes then.
    pub fn settle(
        &self,
        hold_id: &str,
        settlements: &[Settlement],
    ) -> Option<Vec<(CounterKey, CounterState)>> {
        let held = lock(&self.holds[self.shard_of(hold_id)]).remove(hold_id)?;
        let mut states = Vec::with_capacity(held.len());
        for (key, amount) in held {
            let actual: i64 = settlements
                .iter()
                .filter(|s| s.counter_id == key.0 && s.window_start_ms == key.1)
                .map(|s| s.actual)
                .sum();
            let shard = self.counter_shard(&key.0, key.1);
            let mut counters = lock(&self.counters[shard]);
            let state = counters.entry(key.clone()).or_default();
            state.reserved -= amount;
            state.used = state.used.saturating_add(actual);
            let after = *state;
            drop(counters);
            states.push((key, after));
        }
        Some(states)
    }

    /// A counter's state (zero if it never held anything).
    pub fn state(&self, counter_id: &str, window_start_ms: i64) -> CounterState {
        let shard = self.counter_shard(counter_id, window_start_ms);
        lock(&self.counters[shard])
            .get(&(counter_id.to_string(), window_start_ms))
            .copied()
            .unwrap_or_default()
    }

    /// Requests holding capacity now.
    pub fn outstanding(&self) -> usize {
        self.holds.iter().map(|h| lock(h).len()).sum()
    }

    /// Forgets counters with nothing held for which `keep` says no (windows that ended).
    pub fn prune(&self, keep: impl Fn(&CounterKey) -> bool) {
        for shard in &self.counters {
            lock(shard).retain(|key, state| state.reserved != 0 || keep(key));
        }
    }

    /// Forgets, for every counter, the windows before its latest one that hold nothing (their
    /// spend stays in the store).
    pub fn prune_superseded(&self) {
        let mut latest: HashMap<String, i64> = HashMap::new();
        for shard in &self.counters {
            for (id, window) in lock(shard).keys() {
                let slot = latest.entry(id.clone()).or_insert(*window);
                *slot = (*slot).max(*window);
            }
        }
        self.prune(|(id, window)| latest.get(id).is_none_or(|w| w == window));
    }

    /// Every counter with its state (for tests and the property checks).
    pub fn snapshot(&self) -> Vec<(CounterKey, CounterState)> {
        let mut all: Vec<(CounterKey, CounterState)> = self
            .counters
            .iter()
            .flat_map(|s| {
                lock(s)
                    .iter()
                    .map(|(k, v)| (k.clone(), *v))
                    .collect::<Vec<_>>()
            })
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(counter: &str, amount: i64, limit: i64) -> HoldRequest {
        HoldRequest {
            counter_id: counter.into(),
            window_start_ms: 0,
            window_end_ms: i64::MAX,
            amount,
            limit,
        }
    }

    fn settle(counter: &str, actual: i64) -> Settlement {
        Settlement {
            counter_id: counter.into(),
            window_start_ms: 0,
            actual,
            lease: None,
            hold: None,
        }
    }

    #[test]
    fn a_hold_is_all_or_nothing() {
        let ledger = MemoryLedger::new();
        assert!(matches!(
            ledger.hold("a", &[req("budget", 60, 100), req("quota", 1, 1)]),
            HoldOutcome::Held
        ));
        let refused = ledger.hold("b", &[req("budget", 30, 100), req("quota", 1, 1)]);
        assert!(matches!(refused, HoldOutcome::Refused { index: 1, .. }));
        assert_eq!(
            ledger.state("budget", 0).reserved,
            60,
            "nothing of b was held"
        );
        assert_eq!(ledger.outstanding(), 1);
    }

    #[test]
    fn settling_twice_charges_once_and_releases_the_rest() {
        let ledger = MemoryLedger::new();
        assert!(matches!(
            ledger.hold("a", &[req("budget", 60, 100)]),
            HoldOutcome::Held
        ));
        assert!(ledger.settle("a", &[settle("budget", 25)]).is_some());
        assert!(ledger.settle("a", &[settle("budget", 25)]).is_none());
        assert_eq!(
            ledger.state("budget", 0),
            CounterState {
                used: 25,
                reserved: 0
            }
        );
        assert_eq!(ledger.outstanding(), 0);
    }

    #[test]
    fn exactly_the_affordable_holds_succeed_from_many_threads() {
        let ledger = std::sync::Arc::new(MemoryLedger::new());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let ledger = ledger.clone();
                std::thread::spawn(move || {
                    (0..100)
                        .filter(|i| {
                            let id = format!("{t}-{i}");
                            matches!(
                                ledger.hold(&id, &[req("budget", 7, 350)]),
                                HoldOutcome::Held
                            ) && ledger.settle(&id, &[settle("budget", 7)]).is_some()
                        })
                        .count()
                })
            })
            .collect();
        let served: usize = threads.into_iter().map(|t| t.join().unwrap_or(0)).sum();
        assert_eq!(served, 50);
        assert_eq!(
            ledger.state("budget", 0),
            CounterState {
                used: 350,
                reserved: 0
            }
        );
    }
}
