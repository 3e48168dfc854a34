//! Property checks of the in-memory ledger: random interleavings of hold, settle, release,
//! duplicate settlement, write-behind flush, crash (rebuild from what was persisted) and window
//! rollover, from fixed seeds so a failure replays. After every step: no counter over its limit,
//! `reserved` is exactly what live holds hold, no settlement applied twice, and after a crash the
//! rebuilt spend equals the persisted usage costs.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::memory::{CounterKey, MemoryLedger};
use crate::store::ledger::{HoldOutcome, HoldRequest, Settlement};

/// Counters a request may hold on: (id, limit).
const COUNTERS: [(&str, i64); 3] = [
    ("budget:org", 1_000),
    ("budget:team", 600),
    ("quota:rpm", 12),
];

struct LiveHold {
    id: String,
    held: Vec<(CounterKey, i64)>,
}

/// What the store holds: counters' `used` and the usage rows' charges, written together.
#[derive(Default)]
struct Persisted {
    used: BTreeMap<CounterKey, i64>,
    /// Σ of the charges of stored usage rows, per counter.
    rows: BTreeMap<CounterKey, i64>,
}

fn run_case(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut ledger = MemoryLedger::new();
    let mut persisted = Persisted::default();
    // Charges settled in memory but not yet written (the write-behind queue).
    let mut pending: Vec<(CounterKey, i64)> = Vec::new();
    let mut live: Vec<LiveHold> = Vec::new();
    let mut settled: Vec<String> = Vec::new();
    // Σ actual per counter since the last rebuild, on top of what was persisted then.
    let mut expected_used: BTreeMap<CounterKey, i64> = BTreeMap::new();
    let mut window = 0_i64;
    let mut next_id = 0_u64;
    for _step in 0..300 {
        match rng.random_range(0..100) {
            0..40 => {
                next_id += 1;
                let id = format!("h{next_id}");
                let amount = rng.random_range(0..200);
                let mut requests: Vec<HoldRequest> = COUNTERS
                    .iter()
                    .filter(|_| rng.random_bool(0.7))
                    .map(|(c, limit)| HoldRequest {
                        counter_id: (*c).to_string(),
                        window_start_ms: window,
                        window_end_ms: i64::MAX,
                        amount: if c.starts_with("quota") { 1 } else { amount },
                        limit: *limit,
                    })
                    .collect();
                requests.sort_by(|a, b| a.counter_id.cmp(&b.counter_id));
                let fits = requests.iter().all(|r| {
                    let s = ledger.state(&r.counter_id, r.window_start_ms);
                    s.used + s.reserved + r.amount <= r.limit
                });
                match ledger.hold(&id, &requests) {
                    HoldOutcome::Held => {
                        assert!(fits, "seed {seed}: held beyond a limit");
                        live.push(LiveHold {
                            id,
                            held: requests
                                .iter()
                                .map(|r| ((r.counter_id.clone(), r.window_start_ms), r.amount))
                                .collect(),
                        });
                    }
                    HoldOutcome::Refused { .. } => {
                        assert!(!fits, "seed {seed}: refused a hold that fits");
                    }
                }
            }
            40..65 if !live.is_empty() => {
                // Settle with what was really used (never more than held), or release (0).
                let hold = live.swap_remove(rng.random_range(0..live.len()));
                let release = rng.random_bool(0.2);
                let settlements: Vec<Settlement> = hold
                    .held
                    .iter()
                    .map(|(key, amount)| Settlement {
                        counter_id: key.0.clone(),
                        window_start_ms: key.1,
                        actual: if release {
                            0
                        } else {
                            rng.random_range(0..=*amount)
                        },
                        lease: None,
                        hold: None,
                    })
                    .collect();
                assert!(ledger.settle(&hold.id, &settlements).is_some());
                for s in settlements {
                    let key = (s.counter_id, s.window_start_ms);
                    *expected_used.entry(key.clone()).or_default() += s.actual;
                    pending.push((key, s.actual));
                }
                settled.push(hold.id);
            }
            65..75 if !settled.is_empty() => {
                // A retried settlement of an id already settled charges nothing.
                let id = &settled[rng.random_range(0..settled.len())];
                let again = [Settlement {
                    counter_id: COUNTERS[0].0.to_string(),
                    window_start_ms: window,
                    actual: 50,
                    lease: None,
                    hold: None,
                }];
                assert!(
                    ledger.settle(id, &again).is_none(),
                    "seed {seed}: settled twice"
                );
            }
            75..88 => {
                // The writer commits the queued usage rows and their counter charges together.
                for (key, actual) in pending.drain(..) {
                    *persisted.used.entry(key.clone()).or_default() += actual;
                    *persisted.rows.entry(key).or_default() += actual;
                }
            }
            88..94 => {
                // Crash: memory, the unwritten queue and in-flight requests are gone; rebuild.
                pending.clear();
                live.clear();
                ledger = MemoryLedger::new();
                for (key, used) in &persisted.used {
                    ledger.load(&key.0, key.1, *used);
                }
                assert_eq!(
                    persisted.used, persisted.rows,
                    "seed {seed}: spend != usage rows"
                );
                expected_used = persisted.used.clone();
            }
            94..100 => {
                window += 1;
                let current = window;
                // Ended windows with nothing held are forgotten; their spend stays persisted.
                let keep = |key: &CounterKey| {
                    key.1 >= current - 1
                        || live.iter().any(|h| h.held.iter().any(|(k, _)| k == key))
                };
                ledger.prune(keep);
                expected_used.retain(|key, _| keep(key));
            }
            _ => {}
        }
        check(seed, &ledger, &live, &expected_used);
    }
    // Every request ends: nothing stays held.
    for hold in live.drain(..) {
        assert!(ledger.settle(&hold.id, &[]).is_some());
    }
    assert_eq!(ledger.outstanding(), 0, "seed {seed}: a hold leaked");
    assert!(
        ledger.snapshot().iter().all(|(_, s)| s.reserved == 0),
        "seed {seed}: reserved left behind"
    );
}

fn check(
    seed: u64,
    ledger: &MemoryLedger,
    live: &[LiveHold],
    expected_used: &BTreeMap<CounterKey, i64>,
) {
    assert_eq!(ledger.outstanding(), live.len(), "seed {seed}: holds");
    for (key, state) in ledger.snapshot() {
        let limit = COUNTERS
            .iter()
            .find(|(c, _)| *c == key.0)
            .map_or(i64::MAX, |(_, l)| *l);
        assert!(
            state.used + state.reserved <= limit,
            "seed {seed}: {key:?} over its limit: {state:?}"
        );
        let held: i64 = live
            .iter()
            .flat_map(|h| h.held.iter())
            .filter(|(k, _)| *k == key)
            .map(|(_, a)| *a)
            .sum();
        assert_eq!(state.reserved, held, "seed {seed}: {key:?} reserved");
        assert_eq!(
            state.used,
            expected_used.get(&key).copied().unwrap_or(0),
            "seed {seed}: {key:?} used"
        );
    }
}

#[test]
fn ledger_invariants_hold_under_random_interleavings() {
    for seed in 0..400 {
        run_case(seed);
    }
}
