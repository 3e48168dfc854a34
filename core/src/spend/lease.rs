//! The local half of the shared store's leases (PostgreSQL, several replicas): the slices of
//! budget and quota windows this replica leased, and the holds it admitted from them in memory.
//!
//! A slice is capacity the store already counts as `reserved` for this replica (a row in
//! `leases`), so admitting a request from it needs no round trip: the check
//! `held + amount <= granted` is a few nanoseconds under one short lock. The keeper
//! ([`super::ledger::Ledger`]'s lease loop) asks [`LeaseBook::plan`] what to do every tick and
//! reports back: top slices up ahead of need (sized from the recent demand), return what an idle
//! or recalled slice does not use, renew, and start a new epoch when the store lost a lease
//! (it expired while this replica stalled), so a late charge of the old lease never shrinks the
//! new one.
//!
//! Settling a local hold charges the real amount from the slice: the charge carries the lease
//! id, and the usage writer moves it from the lease into `used` in the same transaction as the
//! usage row, so the stored spend is always the sum of the stored usage rows' charges, and the
//! unused rest of a crashed replica's lease is simply returned when it expires.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::memory::CounterKey;
use crate::store::ledger::{HoldRequest, Settlement};

/// Demand is looked at per tick; a slice is sized to cover this many ticks of it.
const AHEAD_TICKS: i64 = 40;
/// A slice holds at least this many of the largest request seen.
const MIN_CALLS: i64 = 4;
/// Ticks without demand after which a slice is returned.
const IDLE_TICKS: u32 = 80;
/// Ticks a recalled slice stops topping up and admitting.
const RECALL_TICKS: u32 = 40;
/// Requests per [`RATE_TICKS`] below which a counter is not worth a lease: at a low rate the
/// per-request hold in the store costs little, and a store outage is seen at once.
const MIN_RATE: u32 = 8;
/// The ticks the request rate is counted over (two seconds).
const RATE_TICKS: usize = 80;
/// How long before a busy slice's window ends the next window's slice is leased, so the
/// requests of the new window are admitted locally from its first millisecond instead of
/// holding in the store until a keeper tick has seen them (at every minute of a per-minute
/// quota, say).
const NEXT_WINDOW_AHEAD_MS: i64 = 500;

/// One leased counter window.
#[derive(Debug, Clone)]
struct Slice {
    /// The lease (`<replica>.<epoch>`) its capacity belongs to.
    lease_id: String,
    /// The limit it was granted under (a lower limit returns it).
    limit: i64,
    /// Where its window ends and the next one starts (`i64::MAX`: never), as the requests say.
    window_end_ms: i64,
    /// What the store holds for this lease, as far as this replica has not spent it.
    granted: i64,
    /// Held by local requests in flight.
    held: i64,
    /// Admits until then (ms); renewed by the keeper well before the store's expiry.
    valid_until_ms: i64,
    /// Asked for since the last tick.
    demand: i64,
    /// Smoothed demand per tick.
    rate: i64,
    /// The largest single request seen.
    largest: i64,
    /// Ticks since the last demand.
    idle_ticks: u32,
    /// Requests since the last tick.
    calls: u32,
    /// Requests per tick over the last [`RATE_TICKS`] ticks (a ring).
    recent: [u32; RATE_TICKS],
    /// Where the ring's next tick goes.
    at: usize,
    /// Ticks left during which it neither admits nor tops up (recalled, or its limit lowered).
    quiet_ticks: u32,
    /// Another replica asked for the unused part back; answer on the next plan.
    answer_recall: bool,
}

impl Slice {
    fn free(&self) -> i64 {
        self.granted - self.held
    }
}

/// One counter a local hold took capacity from.
#[derive(Debug, Clone)]
struct LocalHeld {
    key: CounterKey,
    amount: i64,
    lease_id: String,
}

#[derive(Debug, Default)]
struct Book {
    slices: HashMap<CounterKey, Slice>,
    holds: HashMap<String, Vec<LocalHeld>>,
    epoch: u64,
}

/// What the keeper must do in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseAction {
    /// Ask for up to `want` more (at least `min`, or nothing) under `limit`.
    Grant {
        /// Counter window.
        key: CounterKey,
        /// Lease id.
        lease_id: String,
        /// The counter's limit.
        limit: i64,
        /// Wanted.
        want: i64,
        /// The least that is worth a lease.
        min: i64,
    },
    /// Give `amount` back (already taken out of the slice); `answer` clears a recall.
    Return {
        /// Counter window.
        key: CounterKey,
        /// Lease id.
        lease_id: String,
        /// Returned.
        amount: i64,
        /// Whether the lease row can go (nothing held, nothing left).
        drop: bool,
    },
}

/// A lease row as the store reports it.
#[derive(Debug, Clone)]
pub struct LeaseRow {
    /// Counter window.
    pub key: CounterKey,
    /// Lease id.
    pub lease_id: String,
    /// Whether another replica recalled it.
    pub recalled: bool,
}

/// This replica's slices and local holds.
#[derive(Debug)]
pub struct LeaseBook {
    replica: String,
    book: Mutex<Book>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl LeaseBook {
    /// An empty book for `replica` (unique per process).
    pub fn new(replica: &str) -> Self {
        Self {
            replica: replica.to_string(),
            book: Mutex::new(Book::default()),
        }
    }

    /// The replica id (the `replica_id` of its lease rows).
    pub fn replica(&self) -> &str {
        &self.replica
    }

    fn lease_id(&self, epoch: u64) -> String {
        format!("{}.{epoch}", self.replica)
    }

    /// Admits `hold_id` from local slices, all or nothing: `true` if every counter's slice is
    /// valid at `now_ms` and has room. Either way the demand is noted for the keeper.
    pub fn hold(&self, hold_id: &str, requests: &[HoldRequest], now_ms: i64) -> bool {
        let mut guard = lock(&self.book);
        let book = &mut *guard;
        let lease_id = self.lease_id(book.epoch);
        let mut admit = !book.holds.contains_key(hold_id);
        for (i, r) in requests.iter().enumerate() {
            let key = (r.counter_id.clone(), r.window_start_ms);
            let slice = book.slices.entry(key.clone()).or_insert_with(|| Slice {
                lease_id: lease_id.clone(),
                limit: r.limit,
                window_end_ms: r.window_end_ms,
                granted: 0,
                held: 0,
                valid_until_ms: 0,
                demand: 0,
                rate: 0,
                largest: 0,
                idle_ticks: 0,
                calls: 0,
                recent: [0; RATE_TICKS],
                at: 0,
                quiet_ticks: 0,
                answer_recall: false,
            });
            slice.window_end_ms = r.window_end_ms;
            slice.demand = slice.demand.saturating_add(r.amount.max(0));
            slice.largest = slice.largest.max(r.amount);
            slice.idle_ticks = 0;
            slice.calls = slice.calls.saturating_add(1);
            if r.limit < slice.limit {
                // Lowered while leased: give the slice back and lease again under the new one.
                slice.limit = r.limit;
                slice.quiet_ticks = RECALL_TICKS;
            } else if r.limit > slice.limit && slice.granted == 0 {
                slice.limit = r.limit;
            }
            let earlier: i64 = requests[..i]
                .iter()
                .filter(|e| e.counter_id == r.counter_id && e.window_start_ms == r.window_start_ms)
                .map(|e| e.amount)
                .sum();
            admit &= r.amount >= 0
                && slice.quiet_ticks == 0
                && slice.valid_until_ms > now_ms
                && slice.free() >= earlier.saturating_add(r.amount);
        }
        if !admit {
            return false;
        }
        let mut held = Vec::with_capacity(requests.len());
        for r in requests {
            let key = (r.counter_id.clone(), r.window_start_ms);
            if let Some(slice) = book.slices.get_mut(&key) {
                slice.held += r.amount;
                held.push(LocalHeld {
                    key,
                    amount: r.amount,
                    lease_id: slice.lease_id.clone(),
                });
            }
        }
        book.holds.insert(hold_id.to_string(), held);
        true
    }

    /// Settles a local hold: releases it and charges each counter's real amount from its
    /// slice. Each charge taken from a still-current lease is tagged with its lease id (the
    /// store moves it from the lease into `used`); a charge of a lost lease is untagged (a
    /// plain charge). `false` if `hold_id` is not held here (settled already): nothing changes.
    pub fn settle(&self, hold_id: &str, charges: &mut [Settlement]) -> bool {
        let mut book = lock(&self.book);
        let Some(held) = book.holds.remove(hold_id) else {
            return false;
        };
        for h in held {
            let actual: i64 = charges
                .iter()
                .filter(|c| c.counter_id == h.key.0 && c.window_start_ms == h.key.1)
                .map(|c| c.actual)
                .sum();
            let Some(slice) = book.slices.get_mut(&h.key) else {
                continue;
            };
            if slice.lease_id != h.lease_id {
                continue;
            }
            slice.held -= h.amount;
            slice.granted -= actual;
            for c in charges
                .iter_mut()
                .filter(|c| c.counter_id == h.key.0 && c.window_start_ms == h.key.1)
            {
                c.lease = Some(h.lease_id.clone());
            }
        }
        true
    }

    /// Whether `hold_id` is held locally.
    pub fn holds(&self, hold_id: &str) -> bool {
        lock(&self.book).holds.contains_key(hold_id)
    }

    /// Local holds in flight.
    pub fn outstanding(&self) -> usize {
        lock(&self.book).holds.len()
    }

    /// One keeper tick at `now_ms`: what to grant and return. Returned amounts are taken out
    /// of their slices now (no request can admit from them while the store is told); report
    /// the outcome with [`LeaseBook::granted`] and [`LeaseBook::returned`]. A busy slice whose
    /// window ends within [`NEXT_WINDOW_AHEAD_MS`] gets the next window's slice, sized from its
    /// own demand.
    pub fn plan(&self, now_ms: i64) -> Vec<LeaseAction> {
        let mut book = lock(&self.book);
        let mut actions = Vec::new();
        let mut forget = Vec::new();
        let mut next_windows = Vec::new();
        for (key, slice) in &mut book.slices {
            // Rounded up: rounded down, a demand of up to 3 per tick (a request quota below
            // 160 requests/s) smoothed to 0, and its slices were sized for MIN_CALLS requests,
            // which ran dry between ticks and sent requests to the store.
            slice.rate = (slice.rate.saturating_mul(3).saturating_add(slice.demand) + 3) / 4;
            let demanded = slice.demand > 0 || slice.calls > 0;
            slice.demand = 0;
            slice.recent[slice.at] = std::mem::take(&mut slice.calls);
            slice.at = (slice.at + 1) % RATE_TICKS;
            let per_second: u32 = slice.recent.iter().sum();
            if !demanded {
                slice.idle_ticks = slice.idle_ticks.saturating_add(1);
            }
            let answer = std::mem::take(&mut slice.answer_recall);
            let quiet = slice.quiet_ticks > 0;
            slice.quiet_ticks = slice.quiet_ticks.saturating_sub(1);
            let idle = slice.idle_ticks >= IDLE_TICKS;
            if quiet || idle || answer {
                let amount = slice.free().max(0);
                slice.granted -= amount;
                let drop = slice.held == 0 && slice.granted == 0;
                if drop {
                    // The row goes: nothing of this slice is valid until it is granted again.
                    slice.valid_until_ms = 0;
                }
                if amount > 0 || answer || (drop && idle) {
                    actions.push(LeaseAction::Return {
                        key: key.clone(),
                        lease_id: slice.lease_id.clone(),
                        amount,
                        drop,
                    });
                }
                if drop && idle {
                    forget.push(key.clone());
                }
                continue;
            }
            let largest = slice.largest.max(1);
            let target = slice
                .rate
                .saturating_mul(AHEAD_TICKS)
                .max(largest.saturating_mul(MIN_CALLS));
            let free = slice.free();
            if per_second >= MIN_RATE
                && slice.window_end_ms != i64::MAX
                && slice.window_end_ms > now_ms
                && slice.window_end_ms - now_ms <= NEXT_WINDOW_AHEAD_MS
            {
                next_windows.push((key.clone(), slice.window_end_ms, target));
            }
            if per_second >= MIN_RATE && (free < target / 2 || free < largest) {
                actions.push(LeaseAction::Grant {
                    key: key.clone(),
                    lease_id: slice.lease_id.clone(),
                    limit: slice.limit,
                    want: target - free.max(0),
                    min: largest,
                });
            }
        }
        for key in forget {
            book.slices.remove(&key);
        }
        let lease_id = self.lease_id(book.epoch);
        for (current_key, start, target) in next_windows {
            let key = (current_key.0.clone(), start);
            if book.slices.contains_key(&key) {
                continue;
            }
            let Some(current) = book.slices.get(&current_key).cloned() else {
                continue;
            };
            let largest = current.largest.max(1);
            actions.push(LeaseAction::Grant {
                key: key.clone(),
                lease_id: lease_id.clone(),
                limit: current.limit,
                want: target,
                min: largest,
            });
            // Its own end is learnt from its first request; until then it has no next window.
            book.slices.insert(
                key,
                Slice {
                    lease_id: lease_id.clone(),
                    window_end_ms: i64::MAX,
                    granted: 0,
                    held: 0,
                    valid_until_ms: 0,
                    demand: 0,
                    idle_ticks: 0,
                    calls: 0,
                    quiet_ticks: 0,
                    answer_recall: false,
                    ..current
                },
            );
        }
        actions
    }

    /// Reports a grant of `amount` to `lease_id`, valid until `valid_until_ms`.
    pub fn granted(&self, key: &CounterKey, lease_id: &str, amount: i64, valid_until_ms: i64) {
        let mut book = lock(&self.book);
        if let Some(slice) = book.slices.get_mut(key)
            && slice.lease_id == lease_id
        {
            slice.granted += amount;
            slice.valid_until_ms = valid_until_ms;
        }
    }

    /// Reports a return: `ok` false puts the amount back into the slice (the store did not
    /// take it; it stays leased).
    pub fn returned(&self, key: &CounterKey, lease_id: &str, amount: i64, ok: bool) {
        if ok {
            return;
        }
        let mut book = lock(&self.book);
        if let Some(slice) = book.slices.get_mut(key)
            && slice.lease_id == lease_id
        {
            slice.granted += amount;
        }
    }

    /// Whether any slice is leased (the keeper then polls the store every tick).
    pub fn leasing(&self) -> bool {
        lock(&self.book)
            .slices
            .values()
            .any(|s| s.granted != 0 || s.held != 0 || s.valid_until_ms > 0)
    }

    /// What a slice has that no request holds (0 without a slice).
    pub fn unused(&self, key: &CounterKey) -> i64 {
        lock(&self.book).slices.get(key).map_or(0, Slice::free)
    }

    /// Reconciles with the store's rows of this replica; after a renewal, `valid_until_ms`
    /// says until when the renewed slices admit. Recalled slices answer on the next plan and
    /// stop admitting a while; a slice whose row is gone (it expired and was returned) starts a
    /// new epoch with nothing granted.
    pub fn reconcile(&self, rows: &[LeaseRow], valid_until_ms: Option<i64>) {
        let mut guard = lock(&self.book);
        let book = &mut *guard;
        let mut lost = false;
        for (key, slice) in &mut book.slices {
            match rows
                .iter()
                .find(|r| r.key == *key && r.lease_id == slice.lease_id)
            {
                Some(row) => {
                    if let Some(until) = valid_until_ms {
                        slice.valid_until_ms = until;
                    }
                    if row.recalled {
                        slice.answer_recall = true;
                        slice.quiet_ticks = RECALL_TICKS;
                    }
                }
                None if slice.granted > 0 || slice.valid_until_ms > 0 => lost = true,
                None => {}
            }
        }
        if !lost {
            return;
        }
        book.epoch += 1;
        let lease_id = self.lease_id(book.epoch);
        for (key, slice) in &mut book.slices {
            if rows
                .iter()
                .any(|r| r.key == *key && r.lease_id == slice.lease_id)
            {
                continue;
            }
            tracing::warn!(counter = %key.0, "a lease expired in the store while this replica held it; leasing anew");
            slice.lease_id = lease_id.clone();
            slice.granted = 0;
            slice.held = 0;
            slice.valid_until_ms = 0;
        }
    }

    /// Marks every slice of `key` recalled by this replica itself (a request here was refused
    /// in the store): its unused part goes back on the next plan.
    pub fn recall(&self, key: &CounterKey) {
        if let Some(slice) = lock(&self.book).slices.get_mut(key) {
            slice.answer_recall = true;
            slice.quiet_ticks = RECALL_TICKS;
        }
    }

    /// Takes every slice's unused part out for a final return (shutdown); nothing is admitted
    /// afterwards.
    pub fn drain(&self) -> Vec<LeaseAction> {
        let mut book = lock(&self.book);
        let mut actions = Vec::new();
        for (key, slice) in &mut book.slices {
            let amount = slice.free().max(0);
            slice.granted -= amount;
            slice.valid_until_ms = 0;
            slice.quiet_ticks = u32::MAX;
            actions.push(LeaseAction::Return {
                key: key.clone(),
                lease_id: slice.lease_id.clone(),
                amount,
                drop: slice.held == 0 && slice.granted == 0,
            });
        }
        actions
    }

    /// Every slice as `(key, granted, held)` (tests and the property checks).
    pub fn slices(&self) -> Vec<(CounterKey, i64, i64)> {
        let book = lock(&self.book);
        let mut all: Vec<_> = book
            .slices
            .iter()
            .map(|(k, s)| (k.clone(), s.granted, s.held))
            .collect();
        all.sort();
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(amount: i64, limit: i64) -> HoldRequest {
        HoldRequest {
            counter_id: "budget:b".into(),
            window_start_ms: 0,
            window_end_ms: i64::MAX,
            amount,
            limit,
        }
    }

    fn key() -> CounterKey {
        ("budget:b".to_string(), 0)
    }

    /// Sends enough requests through `book` for it to want a lease, and grants `amount`.
    fn leased(book: &LeaseBook, amount: i64) -> String {
        for i in 0..MIN_RATE {
            assert!(!book.hold(&format!("warm{i}"), &[req(10, 1_000)], 0));
        }
        let actions = book.plan(0);
        let Some(LeaseAction::Grant { lease_id, min, .. }) = actions.first() else {
            panic!("no grant wanted: {actions:?}");
        };
        assert_eq!(*min, 10);
        book.granted(&key(), lease_id, amount, 1_000);
        lease_id.clone()
    }

    #[test]
    fn a_busy_slice_leases_the_next_window_before_it_starts() {
        let book = LeaseBook::new("r");
        let request = |start: i64, amount: i64| HoldRequest {
            counter_id: "budget:b".into(),
            window_start_ms: start,
            window_end_ms: start + 60_000,
            amount,
            limit: 1_000,
        };
        for i in 0..MIN_RATE {
            assert!(!book.hold(&format!("warm{i}"), &[request(0, 10)], 1_000));
        }
        // Far from the window's end, only the current window is asked for.
        let actions = book.plan(1_000);
        let [LeaseAction::Grant { key, lease_id, .. }] = actions.as_slice() else {
            panic!("one grant wanted: {actions:?}");
        };
        assert_eq!(*key, ("budget:b".to_string(), 0));
        book.granted(key, lease_id, 100, 120_000);
        let next = ("budget:b".to_string(), 60_000);
        let asks_next = |actions: Vec<LeaseAction>| {
            actions
                .into_iter()
                .filter(|a| matches!(a, LeaseAction::Grant { key, .. } if *key == next))
                .collect::<Vec<_>>()
        };
        assert!(asks_next(book.plan(59_000)).is_empty(), "not due yet");
        // Within NEXT_WINDOW_AHEAD_MS of its end, the next window's slice is asked for, sized
        // from the current one's demand (at least MIN_CALLS of its largest request).
        let actions = asks_next(book.plan(60_000 - NEXT_WINDOW_AHEAD_MS));
        let [
            LeaseAction::Grant {
                key,
                lease_id,
                limit,
                want,
                min,
            },
        ] = actions.as_slice()
        else {
            panic!("the next window's grant wanted: {actions:?}");
        };
        assert_eq!((key, *limit, *min), (&next, 1_000, 10));
        assert!(*want >= 40, "{want}");
        // Nothing of it admits before it is granted; once granted, the new window's first
        // request is admitted locally.
        assert!(!book.hold("early", &[request(60_000, 10)], 59_600));
        book.granted(&next, lease_id, 50, 120_000);
        assert!(book.hold("first", &[request(60_000, 10)], 60_000));
        assert_eq!(book.unused(&next), 40);
        // A slice whose window never ends has no next window to lease.
        let lifetime = LeaseBook::new("r");
        for i in 0..MIN_RATE {
            assert!(!lifetime.hold(&format!("w{i}"), &[req(10, 1_000)], 0));
        }
        assert_eq!(lifetime.plan(i64::MAX - 1).len(), 1);
    }

    #[test]
    fn a_request_a_tick_still_leases_a_second_of_demand() {
        let book = LeaseBook::new("r");
        let one = HoldRequest {
            counter_id: "quota:q:k".into(),
            window_start_ms: 0,
            window_end_ms: i64::MAX,
            amount: 1,
            limit: 1_000_000,
        };
        let mut wanted = 0;
        for tick in 0..20 {
            assert!(!book.hold(&format!("h{tick}"), std::slice::from_ref(&one), 0));
            for action in book.plan(0) {
                if let LeaseAction::Grant { want, .. } = action {
                    wanted = want;
                }
            }
        }
        // AHEAD_TICKS of one request each, not MIN_CALLS.
        assert_eq!(wanted, AHEAD_TICKS);
    }

    #[test]
    fn a_slice_admits_exactly_what_it_was_granted() {
        let book = LeaseBook::new("r");
        leased(&book, 35);
        assert!(book.hold("a", &[req(10, 1_000)], 5));
        assert!(book.hold("b", &[req(10, 1_000)], 5));
        assert!(book.hold("c", &[req(10, 1_000)], 5));
        assert!(!book.hold("d", &[req(10, 1_000)], 5), "5 left, 10 asked");
        assert!(
            !book.hold("e", &[req(1, 1_000)], 2_000),
            "the slice has expired"
        );
        assert_eq!(book.unused(&key()), 5);
    }

    #[test]
    fn a_settlement_charges_the_slice_and_tags_the_lease_once() {
        let book = LeaseBook::new("r");
        let lease_id = leased(&book, 100);
        assert!(book.hold("a", &[req(40, 1_000)], 5));
        let mut charges = vec![Settlement {
            counter_id: "budget:b".into(),
            window_start_ms: 0,
            actual: 25,
            lease: None,
            hold: None,
        }];
        assert!(book.settle("a", &mut charges));
        assert_eq!(charges[0].lease.as_deref(), Some(lease_id.as_str()));
        assert_eq!(book.slices(), vec![(key(), 75, 0)]);
        assert!(!book.settle("a", &mut charges), "settled twice");
        assert_eq!(book.slices(), vec![(key(), 75, 0)]);
    }

    #[test]
    fn a_lease_the_store_lost_starts_a_new_epoch_and_old_charges_are_plain() {
        let book = LeaseBook::new("r");
        let old = leased(&book, 100);
        assert!(book.hold("a", &[req(40, 1_000)], 5));
        book.reconcile(&[], Some(2_000));
        assert_eq!(book.slices(), vec![(key(), 0, 0)]);
        assert!(
            !book.hold("b", &[req(1, 1_000)], 5),
            "nothing granted any more"
        );
        let mut charges = vec![Settlement {
            counter_id: "budget:b".into(),
            window_start_ms: 0,
            actual: 40,
            lease: None,
            hold: None,
        }];
        assert!(book.settle("a", &mut charges));
        assert_eq!(
            charges[0].lease, None,
            "the old lease is gone: a plain charge"
        );
        let grant = book.plan(0).into_iter().find_map(|a| match a {
            LeaseAction::Grant { lease_id, .. } => Some(lease_id),
            LeaseAction::Return { .. } => None,
        });
        assert!(grant.is_some_and(|new| new != old));
    }

    #[test]
    fn a_recall_returns_the_unused_part_and_stops_admitting() {
        let book = LeaseBook::new("r");
        let lease_id = leased(&book, 100);
        assert!(book.hold("a", &[req(30, 1_000)], 5));
        book.reconcile(
            &[LeaseRow {
                key: key(),
                lease_id: lease_id.clone(),
                recalled: true,
            }],
            Some(1_000),
        );
        assert!(
            !book.hold("b", &[req(1, 1_000)], 5),
            "recalled: no admission"
        );
        let actions = book.plan(0);
        assert!(
            actions.contains(&LeaseAction::Return {
                key: key(),
                lease_id,
                amount: 70,
                drop: false
            }),
            "{actions:?}"
        );
        assert_eq!(book.unused(&key()), 0);
    }

    #[test]
    fn a_lowered_limit_gives_the_slice_back() {
        let book = LeaseBook::new("r");
        leased(&book, 100);
        assert!(!book.hold("a", &[req(10, 500)], 5));
        assert!(
            book.plan(0)
                .iter()
                .any(|a| matches!(a, LeaseAction::Return { amount: 100, .. }))
        );
    }

    #[test]
    fn a_rare_counter_is_not_leased() {
        let book = LeaseBook::new("r");
        assert!(!book.hold("a", &[req(10, 1_000)], 0));
        assert!(book.plan(0).is_empty(), "one request is not worth a lease");
    }
}
