//! Property checks of leases (the shared store's ledger), against a real store: random
//! interleavings, on two replicas, of holds (from a slice or per request in the store),
//! settlements, duplicate settlements, usage-writer flushes, keeper ticks (grant, return,
//! renew), time passing, replica crashes (its memory and unwritten rows gone, its leases left to
//! expire and be returned by the other) and window rollover, from fixed seeds so a failure
//! replays. After every step: no counter over its limit, `reserved` is exactly what the store's
//! holds and leases hold, no replica can admit more than the store leased it, and `used` is
//! exactly the committed charges. At the end nothing is held or leased.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::Row;

use super::lease::{LeaseAction, LeaseBook, LeaseRow};
use super::memory::CounterKey;
use crate::store::Store;
use crate::store::ledger::{HoldOutcome, HoldRequest, Settlement};

const COUNTERS: [(&str, i64); 3] = [
    ("budget:org", 20_000),
    ("budget:team", 9_000),
    ("quota:rpm", 150),
];
const TTL: i64 = 1_000;

struct Live {
    id: String,
    local: bool,
    held: Vec<(CounterKey, i64)>,
}

struct Replica {
    book: LeaseBook,
    /// Charges settled but not yet written with their usage rows.
    pending: Vec<Settlement>,
    live: Vec<Live>,
}

impl Replica {
    fn new(n: u64) -> Self {
        Self {
            book: LeaseBook::new(&format!("r{n}")),
            pending: Vec::new(),
            live: Vec::new(),
        }
    }
}

fn limit_of(counter: &str) -> i64 {
    COUNTERS
        .iter()
        .find(|(c, _)| *c == counter)
        .map_or(i64::MAX, |(_, l)| *l)
}

async fn apply(store: &Store, book: &LeaseBook, action: LeaseAction, now: i64) {
    match action {
        LeaseAction::Grant {
            key,
            lease_id,
            limit,
            want,
            min,
        } => {
            let granted = store
                .grant_lease(
                    &key.0,
                    key.1,
                    limit,
                    &lease_id,
                    book.replica(),
                    want,
                    min,
                    4,
                    now + TTL,
                )
                .await
                .expect("grant");
            if granted > 0 {
                book.granted(&key, &lease_id, granted, now + TTL * 3 / 4);
            }
        }
        LeaseAction::Return {
            key,
            lease_id,
            amount,
            drop,
        } => {
            store
                .return_lease(&key.0, key.1, &lease_id, amount, drop)
                .await
                .expect("return");
            book.returned(&key, &lease_id, amount, true);
        }
    }
}

async fn renew(store: &Store, replica: &Replica, now: i64) {
    let rows: Vec<LeaseRow> = store
        .renew_leases(replica.book.replica(), now + TTL)
        .await
        .expect("renew")
        .into_iter()
        .map(|(c, w, lease_id, recalled)| LeaseRow {
            key: (c, w),
            lease_id,
            recalled,
        })
        .collect();
    replica.book.reconcile(&rows, Some(now + TTL * 3 / 4));
    let ids: Vec<String> = replica
        .live
        .iter()
        .filter(|l| !l.local)
        .map(|l| l.id.clone())
        .collect();
    store
        .renew_holds(&ids, now + TTL)
        .await
        .expect("renew holds");
}

async fn sum(store: &Store, sql: &'static str, key: &CounterKey) -> i64 {
    let row = sqlx::query(sql)
        .bind(&key.0)
        .bind(key.1)
        .fetch_one(store.pool())
        .await
        .expect("sum");
    row.try_get(0).expect("sum value")
}

async fn check(
    seed: u64,
    store: &Store,
    replicas: &[Replica],
    windows: i64,
    committed: &BTreeMap<CounterKey, i64>,
) {
    for window in 0..=windows {
        for (counter, limit) in COUNTERS {
            let key = (counter.to_string(), window);
            let state = store.counter_state(counter, window).await.expect("state");
            assert!(
                state.used + state.reserved <= limit,
                "seed {seed}: {key:?} over its limit: {state:?}"
            );
            let holds = sum(
                store,
                "SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM holds WHERE counter_id = $1 AND window_start_ms = $2",
                &key,
            )
            .await;
            let leased = sum(
                store,
                "SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM leases WHERE counter_id = $1 AND window_start_ms = $2",
                &key,
            )
            .await;
            assert_eq!(
                state.reserved,
                holds + leased,
                "seed {seed}: {key:?} reserved is not its holds and leases"
            );
            assert_eq!(
                state.used,
                committed.get(&key).copied().unwrap_or(0),
                "seed {seed}: {key:?} used is not the committed charges"
            );
            // No replica can admit more than the store leased it.
            for r in replicas {
                let Some((_, granted, _)) = r.book.slices().into_iter().find(|(k, _, _)| *k == key)
                else {
                    continue;
                };
                let in_store: i64 = sqlx::query(
                    "SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM leases \
                     WHERE counter_id = $1 AND window_start_ms = $2 AND replica_id = $3",
                )
                .bind(&key.0)
                .bind(key.1)
                .bind(r.book.replica())
                .fetch_one(store.pool())
                .await
                .expect("lease")
                .try_get(0)
                .expect("lease value");
                let unwritten: i64 = r
                    .pending
                    .iter()
                    .filter(|c| c.counter_id == key.0 && c.window_start_ms == key.1)
                    .filter(|c| c.lease.is_some())
                    .map(|c| c.actual)
                    .sum();
                assert!(
                    granted + unwritten <= in_store,
                    "seed {seed}: {key:?} {} may admit {granted} (+{unwritten} unwritten) of {in_store} leased",
                    r.book.replica()
                );
            }
        }
    }
}

/// Runs one seed; returns how many holds were admitted from a slice and how many in the store.
async fn run_case(seed: u64) -> (usize, usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&format!("sqlite://{}", dir.path().join("l.db").display()))
        .await
        .expect("store");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut next_replica = 0_u64;
    let mut replicas: Vec<Replica> = (0..2)
        .map(|_| {
            next_replica += 1;
            Replica::new(next_replica)
        })
        .collect();
    let mut committed: BTreeMap<CounterKey, i64> = BTreeMap::new();
    let mut settled: Vec<(usize, String, bool)> = Vec::new();
    let mut now = 1_000_000_i64;
    let mut window = 0_i64;
    let mut next_id = 0_u64;
    let (mut local, mut in_store) = (0, 0);
    for _step in 0..300 {
        let r = rng.random_range(0..replicas.len());
        match rng.random_range(0..100) {
            0..45 => {
                next_id += 1;
                let id = format!("h{next_id}");
                let amount = rng.random_range(0..120);
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
                let held = requests
                    .iter()
                    .map(|q| ((q.counter_id.clone(), q.window_start_ms), q.amount))
                    .collect();
                let replica = &mut replicas[r];
                if replica.book.hold(&id, &requests, now) {
                    local += 1;
                    replica.live.push(Live {
                        id,
                        local: true,
                        held,
                    });
                } else if matches!(
                    store.hold(&id, &requests, now + TTL).await.expect("hold"),
                    HoldOutcome::Held
                ) {
                    in_store += 1;
                    replica.live.push(Live {
                        id,
                        local: false,
                        held,
                    });
                }
            }
            45..62 if !replicas[r].live.is_empty() => {
                let replica = &mut replicas[r];
                let live = replica
                    .live
                    .swap_remove(rng.random_range(0..replica.live.len()));
                let release = rng.random_bool(0.2);
                let mut charges: Vec<Settlement> = live
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
                if live.local {
                    assert!(replica.book.settle(&live.id, &mut charges));
                    replica.pending.extend(charges);
                } else {
                    store
                        .settle_batch(&[(live.id.clone(), charges.clone())])
                        .await
                        .expect("settle");
                    for c in charges {
                        *committed
                            .entry((c.counter_id, c.window_start_ms))
                            .or_default() += c.actual;
                    }
                }
                settled.push((r, live.id, live.local));
            }
            62..66 if !settled.is_empty() => {
                // A duplicate settlement charges nothing (checked by `used` below).
                let (owner, id, local) = settled[rng.random_range(0..settled.len())].clone();
                let mut again = vec![Settlement {
                    counter_id: COUNTERS[0].0.to_string(),
                    window_start_ms: window,
                    actual: 50,
                    lease: None,
                    hold: None,
                }];
                if local {
                    if let Some(replica) = replicas.get(owner) {
                        assert!(
                            !replica.book.settle(&id, &mut again),
                            "seed {seed}: settled twice"
                        );
                    }
                } else {
                    store
                        .settle_batch(&[(id, again)])
                        .await
                        .expect("settle again");
                }
            }
            66..76 => {
                // The usage writer commits rows with their charges.
                let replica = &mut replicas[r];
                store.apply_charges(&replica.pending).await.expect("write");
                for c in replica.pending.drain(..) {
                    *committed
                        .entry((c.counter_id, c.window_start_ms))
                        .or_default() += c.actual;
                }
            }
            76..88 => {
                // A keeper tick.
                renew(&store, &replicas[r], now).await;
                for action in replicas[r].book.plan(now) {
                    apply(&store, &replicas[r].book, action, now).await;
                }
            }
            88..93 => {
                // Time passes; every live replica renews before its leases could expire.
                for replica in &replicas {
                    renew(&store, replica, now).await;
                }
                now += rng.random_range(1..TTL / 4);
                store.reclaim_expired_leases(now).await.expect("reclaim");
                store.reclaim_expired_holds(now).await.expect("reclaim");
            }
            93..96 => {
                // A crash: memory and unwritten rows are gone; its leases and holds stay in the
                // store until they expire; a new replica takes its place.
                next_replica += 1;
                replicas[r] = Replica::new(next_replica);
                settled.retain(|(owner, _, local)| *owner != r || !local);
            }
            96..97 => window += 1,
            _ => {}
        }
        check(seed, &store, &replicas, window, &committed).await;
    }
    // Every request ends, every row is written, every replica returns its slices; whatever a
    // crashed replica held expires and returns.
    for replica in &mut replicas {
        for live in replica.live.drain(..) {
            if live.local {
                let mut none = Vec::new();
                assert!(replica.book.settle(&live.id, &mut none));
            } else {
                store
                    .settle_batch(&[(live.id, Vec::new())])
                    .await
                    .expect("settle");
            }
        }
        store.apply_charges(&replica.pending).await.expect("write");
        for c in replica.pending.drain(..) {
            *committed
                .entry((c.counter_id, c.window_start_ms))
                .or_default() += c.actual;
        }
        for action in replica.book.drain() {
            apply(&store, &replica.book, action, now).await;
        }
    }
    check(seed, &store, &replicas, window, &committed).await;
    now += 2 * TTL;
    store.reclaim_expired_leases(now).await.expect("reclaim");
    store.reclaim_expired_holds(now).await.expect("reclaim");
    assert_eq!(store.outstanding_holds().await.expect("holds"), 0);
    assert_eq!(store.leased_total().await.expect("leased"), 0);
    for w in 0..=window {
        for (counter, _) in COUNTERS {
            let state = store.counter_state(counter, w).await.expect("state");
            assert_eq!(
                state.reserved, 0,
                "seed {seed}: {counter}@{w} reserved left"
            );
            assert!(state.used <= limit_of(counter));
        }
    }
    (local, in_store)
}

#[tokio::test]
async fn lease_invariants_hold_under_random_interleavings_crashes_and_rollover() {
    let (mut local, mut in_store) = (0, 0);
    for seed in 0..12 {
        let (l, s) = run_case(seed).await;
        local += l;
        in_store += s;
    }
    // Both paths were exercised.
    assert!(
        local > 100 && in_store > 100,
        "{local} from slices, {in_store} in the store"
    );
}
