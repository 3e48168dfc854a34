//! The spend ledger at runtime: which budgets and quotas apply, the hold before the call, the
//! settlement after it, and budget threshold events.
//!
//! Where the counters live depends on the store:
//! - **Embedded (SQLite, one gateway)**: in memory ([`MemoryLedger`]): a hold and a settlement
//!   cost microseconds; what a settlement charges is persisted write-behind in the same
//!   transaction as the request's usage row, so after any crash the stored spend is the sum of
//!   the stored usage rows' charges; the counters are rebuilt from the store at start. A second
//!   gateway on the same file is refused (an exclusive lock on `<db>.serve-lock`).
//! - **Shared (PostgreSQL, several replicas)**: leases ([`LeaseBook`]): each replica leases a
//!   slice of every budget and quota window it serves from, atomically in the database (the sum
//!   of leases, holds and spend never passes the limit), and admits requests from its slice in
//!   memory; a keeper task tops slices up ahead of need, returns what idle slices do not use,
//!   renews them, and answers recalls. What a request spends from a slice moves from the lease
//!   into `used` in the same transaction as its usage row. When no slice can serve a request
//!   (none yet, or too little remains to slice), it is held per request in SQL; a refusal there
//!   first recalls the unused slices of every replica, so near the limit exactly the affordable
//!   calls are served. Per-request holds are settled by a batching worker, idempotent per hold
//!   id, renewed while running, and reclaimed by any replica when their gateway died; so are
//!   leases, after `[server] lease_ttl_secs` without renewal.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde_json::{Value, json};
use tokio::sync::watch;

pub use super::budgets::{budget_record, budget_view, stored_spec};
use super::estimate::Estimate;
use super::lease::{LeaseAction, LeaseBook, LeaseRow};
use super::memory::MemoryLedger;
use super::settle::{Notifier, settlements_of};
use super::{BudgetSpec, Metric, QuotaSpec, Scope};
use crate::clock::now_ms;
use crate::error::{BudgetExceeded, GatewayError, QuotaExceeded, UnavailableError};
use crate::policy::{Snapshot, Target};
use crate::store::ledger::{CounterState, HoldOutcome, HoldRequest, Settlement};
use crate::store::{Backend, KeyRecord, Store, StoreError};
use crate::usage::TokenUsage;

/// How often budget definitions are re-read when they changed, and expired holds reclaimed.
const POLL: Duration = Duration::from_millis(200);
const RECLAIM_EVERY: Duration = Duration::from_secs(2);
/// The lease keeper's tick (shared store).
const LEASE_TICK: Duration = Duration::from_millis(25);
/// A lease takes at most this share of what remains of a window (1/4): other replicas can
/// lease too, and the last part is held per request.
const LEASE_SHARE: i64 = 4;
/// How often a request refused in the store waits for recalled slices before the refusal
/// stands (bounded: a dead replica's lease answers only when it expires).
const RECALL_TRIES: u32 = 10;
/// Per-request holds in the store at once (below the pool's 16 connections, which the usage
/// writer and the lease keeper share). A burst of requests queues here
/// rather than in the pool, whose acquire timeout would turn a busy store into a 503 as if it
/// were down.
const STORE_HOLDS_AT_ONCE: usize = 8;

/// What one held counter is for.
#[derive(Debug, Clone)]
pub enum HeldFor {
    /// A budget (nano-USD).
    Budget(Arc<BudgetSpec>),
    /// A quota.
    Quota(Metric),
}

/// One counter held for a request.
#[derive(Debug, Clone)]
pub struct Held {
    /// The counter.
    pub counter_id: String,
    /// Its window.
    pub window_start_ms: i64,
    /// What it is for.
    pub kind: HeldFor,
}

/// The holds of one request, settled when the request is recorded.
#[derive(Debug)]
pub struct Reservation {
    /// The hold id (the request id).
    pub hold_id: String,
    /// Held counters.
    pub held: Vec<Held>,
    /// The estimate held.
    pub estimate: Estimate,
    /// Worst-case cost held on budgets.
    pub cost_nanos: i64,
    /// Where threshold events go.
    pub webhook: Option<String>,
    /// Admitted from this replica's leased slices (shared store), not held in the store.
    pub local: bool,
}

impl Reservation {
    /// The trail entry for the usage record.
    pub fn decision(&self) -> crate::pipeline::decision::Decision {
        #[derive(serde::Serialize)]
        struct Held<'a> {
            stage: &'static str,
            outcome: &'static str,
            counters: Vec<&'a str>,
            estimated_input_tokens: i64,
            estimated_output_tokens: i64,
            held_cost_nanos: i64,
            from: &'static str,
        }
        crate::pipeline::decision::Decision::of(&Held {
            stage: "reserve",
            outcome: "held",
            counters: self.held.iter().map(|h| h.counter_id.as_str()).collect(),
            estimated_input_tokens: self.estimate.input_tokens,
            estimated_output_tokens: self.estimate.output_tokens,
            held_cost_nanos: self.cost_nanos,
            from: if self.local { "lease" } else { "store" },
        })
    }
}

/// Whole microseconds of `d`, for a histogram.
fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Ledger counters for `/metrics`.
#[derive(Debug, Default)]
pub struct LedgerStats {
    /// Requests that took holds.
    pub held: AtomicU64,
    /// Holds that took a store round trip: every hold on a per-request store, and on a shared
    /// store those no leased slice of this replica could admit.
    pub store_holds: AtomicU64,
    /// Requests refused for a budget.
    pub budget_refusals: AtomicU64,
    /// Requests refused for a quota.
    pub quota_refusals: AtomicU64,
    /// Settlements committed.
    pub settled: AtomicU64,
    /// Expired holds reclaimed.
    pub reclaimed: AtomicU64,
    /// Threshold events emitted.
    pub alerts: AtomicU64,
    /// Counter states read from the store to check budget thresholds (shared store).
    pub threshold_reads: AtomicU64,
    /// How late the lease keeper's ticks started (shared store): a starved keeper lets slices
    /// run dry, and requests then hold in the store.
    pub lease_tick_lag: crate::metrics::Histogram,
    /// How long each of the lease keeper's ticks took (its store calls included).
    pub lease_tick_time: crate::metrics::Histogram,
}

/// Where counters and holds live.
enum Counters {
    /// In memory, persisted write-behind with usage rows (embedded store). The lock file keeps
    /// a second gateway off the same database while this one serves.
    Memory {
        ledger: MemoryLedger,
        _lock: std::fs::File,
    },
    /// In the store, one hold per request (a store that is neither an embedded file nor
    /// PostgreSQL, e.g. an in-memory SQLite database).
    Store,
    /// Leased slices in this replica's memory, per-request holds in the store when no slice
    /// serves (PostgreSQL).
    Leased(LeaseBook),
}

/// The ledger.
pub struct Ledger {
    store: Store,
    counters: Counters,
    stored_budgets: ArcSwap<Vec<Arc<BudgetSpec>>>,
    budgets_version: AtomicI64,
    /// Counters.
    pub stats: Arc<LedgerStats>,
    http: reqwest::Client,
    /// Hold ids of requests in flight, whose holds are renewed until they settle.
    live: std::sync::Mutex<std::collections::HashSet<String>>,
    /// The hold time-to-live of the latest snapshot, in ms.
    hold_ttl_ms: AtomicI64,
    /// The lease time-to-live of the latest snapshot, in ms.
    lease_ttl_ms: AtomicI64,
    /// Admits per-request holds to the store ([`STORE_HOLDS_AT_ONCE`]).
    store_holds: tokio::sync::Semaphore,
    /// Budget windows whose thresholds are checked on the next scheduled check.
    thresholds_pending: Arc<std::sync::Mutex<PendingThresholds>>,
}

/// Budget windows waiting for their scheduled threshold check.
#[derive(Default)]
struct PendingThresholds {
    checks: Vec<PendingThreshold>,
    /// When the check that will take them was scheduled (Unix ms).
    scheduled_at_ms: i64,
}

impl PendingThresholds {
    /// Adds the budget windows with thresholds among `held` (unless pending already); whether
    /// the caller must schedule a check: none is pending, or the pending one is stale.
    fn join(&mut self, held: &[Held], webhook: Option<&str>, now_ms: i64) -> bool {
        let idle = self.checks.is_empty();
        let stale = !idle && now_ms - self.scheduled_at_ms > THRESHOLD_STALE_MS;
        for held in held {
            let HeldFor::Budget(budget) = &held.kind else {
                continue;
            };
            if budget.thresholds.is_empty() {
                continue;
            }
            let known = self.checks.iter().any(|p| {
                p.held.counter_id == held.counter_id
                    && p.held.window_start_ms == held.window_start_ms
                    && p.webhook.as_deref() == webhook
            });
            if !known {
                self.checks.push(PendingThreshold {
                    held: held.clone(),
                    webhook: webhook.map(str::to_owned),
                });
            }
        }
        let schedule = (idle && !self.checks.is_empty()) || stale;
        if schedule {
            self.scheduled_at_ms = now_ms;
        }
        schedule
    }
}

/// A budget window to check for crossed thresholds, and where its events go.
struct PendingThreshold {
    held: Held,
    webhook: Option<String>,
}

/// How long after a settlement whose charges the usage writer commits its budget thresholds
/// are checked on the stored state (the writer commits within its linger).
const THRESHOLD_DELAY: Duration = Duration::from_millis(500);
/// A scheduled check that has not taken its windows after this long never will (its runtime
/// stopped): the next settlement schedules another, so windows are never stranded.
const THRESHOLD_STALE_MS: i64 = 5_000;

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").finish_non_exhaustive()
    }
}

impl Ledger {
    /// Starts the ledger. On an embedded store the counters are rebuilt in memory, and a store
    /// another gateway serves is refused.
    pub async fn start(store: Store, http: reqwest::Client) -> Result<Arc<Ledger>, StoreError> {
        let counters = match (store.backend(), store.sqlite_path()) {
            (Backend::Sqlite, Some(path)) => {
                let lock = lock_embedded(path)?;
                let ledger = MemoryLedger::new();
                let left = store.clear_holds().await?;
                if left > 0 {
                    tracing::warn!(
                        holds = left,
                        "dropped holds a previous gateway left in the store"
                    );
                }
                for (counter, window, used) in store.latest_counters().await? {
                    ledger.load(&counter, window, used);
                }
                Counters::Memory {
                    ledger,
                    _lock: lock,
                }
            }
            (Backend::Postgres, _) => {
                let replica = uuid::Uuid::now_v7().simple().to_string();
                Counters::Leased(LeaseBook::new(&replica))
            }
            _ => Counters::Store,
        };
        let stats = Arc::new(LedgerStats::default());
        let ledger = Arc::new(Ledger {
            counters,
            store: store.clone(),
            stored_budgets: ArcSwap::from_pointee(Vec::new()),
            budgets_version: AtomicI64::new(-1),
            stats: stats.clone(),
            http: http.clone(),
            live: std::sync::Mutex::default(),
            hold_ttl_ms: AtomicI64::new(60_000),
            lease_ttl_ms: AtomicI64::new(10_000),
            store_holds: tokio::sync::Semaphore::new(STORE_HOLDS_AT_ONCE),
            thresholds_pending: Arc::default(),
        });
        ledger.refresh_budgets().await?;
        Ok(ledger)
    }

    fn notifier(&self) -> Notifier {
        Notifier {
            store: self.store.clone(),
            http: self.http.clone(),
            stats: self.stats.clone(),
        }
    }

    /// Whether counters and holds live in memory (embedded store).
    pub fn in_memory(&self) -> bool {
        matches!(self.counters, Counters::Memory { .. })
    }

    /// A counter's state in one window.
    pub async fn counter_state(
        &self,
        counter_id: &str,
        window_start_ms: i64,
    ) -> Result<CounterState, StoreError> {
        match &self.counters {
            Counters::Memory { ledger, .. } => Ok(ledger.state(counter_id, window_start_ms)),
            Counters::Store | Counters::Leased(_) => {
                self.store.counter_state(counter_id, window_start_ms).await
            }
        }
    }

    /// Requests holding capacity now.
    pub async fn outstanding_holds(&self) -> Result<i64, StoreError> {
        match &self.counters {
            Counters::Memory { ledger, .. } => Ok(i64::try_from(ledger.outstanding()).unwrap_or(0)),
            Counters::Store => self.store.outstanding_holds().await,
            Counters::Leased(book) => Ok(self.store.outstanding_holds().await?
                + i64::try_from(book.outstanding()).unwrap_or(0)),
        }
    }

    /// A budget with its current window, as this gateway holds it (admin API).
    pub async fn budget_view(&self, spec: &BudgetSpec) -> Result<Value, StoreError> {
        let bounds = spec.window.bounds(now_ms(), spec.tz);
        let state = self.counter_state(&spec.counter_id(), bounds.0).await?;
        Ok(super::budgets::view_of(spec, bounds, state))
    }

    /// Re-reads stored budgets if they changed.
    pub async fn refresh_budgets(&self) -> Result<(), StoreError> {
        let version = self.store.version("budgets").await?;
        if version == self.budgets_version.load(Ordering::Acquire) {
            return Ok(());
        }
        let records = self.store.list_budgets().await?;
        let specs: Vec<Arc<BudgetSpec>> = records
            .iter()
            .filter_map(stored_spec)
            .map(Arc::new)
            .collect();
        self.stored_budgets.store(Arc::new(specs));
        self.budgets_version.store(version, Ordering::Release);
        Ok(())
    }

    /// A per-request hold in the store, for a request no slice of this replica serves. A
    /// refusal first recalls the unused slices of every replica on the refused counter (this
    /// one's included) and is retried; it stands once no recall is left unanswered, or after a
    /// bounded wait (a dead replica answers only when its lease expires).
    async fn hold_in_store(
        &self,
        book: &LeaseBook,
        hold_id: &str,
        holds: &[HoldRequest],
        expires_at_ms: i64,
    ) -> Result<HoldOutcome, StoreError> {
        let mut attempt = 0;
        loop {
            let turn = self.store_holds.acquire().await;
            let outcome = self.store.hold(hold_id, holds, expires_at_ms).await?;
            let HoldOutcome::Refused { index, .. } = &outcome else {
                return Ok(outcome);
            };
            let Some(refused) = holds.get(*index) else {
                return Ok(outcome);
            };
            if attempt >= RECALL_TRIES {
                return Ok(outcome);
            }
            let key = (refused.counter_id.clone(), refused.window_start_ms);
            let own = book.unused(&key);
            if own > 0 {
                book.recall(&key);
            }
            let others = self
                .store
                .recall_leases(
                    &refused.counter_id,
                    refused.window_start_ms,
                    book.replica(),
                    attempt == 0,
                )
                .await?;
            drop(turn);
            if own <= 0 && others == 0 {
                return Ok(outcome);
            }
            attempt += 1;
            tokio::time::sleep(LEASE_TICK * 2).await;
        }
    }

    /// The lease keeper (shared store), until `stop` flips: every tick, renews this replica's
    /// leases when due (and learns of recalls and of leases the store lost), then tops slices
    /// up and returns what idle or recalled slices do not use. On stop every unused part is
    /// returned, and what in-flight requests free as they settle, for a bounded while.
    async fn keep_leases(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let Counters::Leased(book) = &self.counters else {
            return;
        };
        let mut ticker = tokio::time::interval(LEASE_TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_renewal: Option<tokio::time::Instant> = None;
        loop {
            let scheduled = tokio::select! {
                at = ticker.tick() => at,
                _ = stop.changed() => break,
            };
            let started = tokio::time::Instant::now();
            self.stats
                .lease_tick_lag
                .observe_us(micros(started.saturating_duration_since(scheduled)));
            let ttl = self.lease_ttl_ms.load(Ordering::Relaxed).max(100);
            if book.leasing() {
                let due = last_renewal.is_none_or(|at| {
                    at.elapsed() >= Duration::from_millis(u64::try_from(ttl / 4).unwrap_or(0))
                });
                let started = now_ms();
                let rows = if due {
                    self.store
                        .renew_leases(book.replica(), started.saturating_add(ttl))
                        .await
                } else {
                    self.store.lease_rows(book.replica()).await
                };
                match rows {
                    Ok(rows) => {
                        let rows: Vec<LeaseRow> = rows
                            .into_iter()
                            .map(|(counter, window, lease_id, recalled)| LeaseRow {
                                key: (counter, window),
                                lease_id,
                                recalled,
                            })
                            .collect();
                        let valid_until = due.then(|| started.saturating_add(ttl * 3 / 4));
                        if due {
                            last_renewal = Some(tokio::time::Instant::now());
                        }
                        book.reconcile(&rows, valid_until);
                    }
                    Err(e) => tracing::warn!(error = %e, "leases could not be renewed"),
                }
            }
            for action in book.plan(now_ms()) {
                self.apply_lease(book, action, ttl).await;
            }
            self.stats
                .lease_tick_time
                .observe_us(micros(started.elapsed()));
        }
        for action in book.drain() {
            self.apply_lease(book, action, 0).await;
        }
        for _ in 0..100 {
            if book.outstanding() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for action in book.drain() {
            self.apply_lease(book, action, 0).await;
        }
    }

    /// Carries out one keeper action in the store and reports the outcome to the book.
    async fn apply_lease(&self, book: &LeaseBook, action: LeaseAction, ttl: i64) {
        match action {
            LeaseAction::Grant {
                key,
                lease_id,
                limit,
                want,
                min,
            } => {
                let now = now_ms();
                match self
                    .store
                    .grant_lease(
                        &key.0,
                        key.1,
                        limit,
                        &lease_id,
                        book.replica(),
                        want,
                        min,
                        LEASE_SHARE,
                        now.saturating_add(ttl),
                    )
                    .await
                {
                    Ok(0) => {}
                    Ok(granted) => {
                        book.granted(&key, &lease_id, granted, now.saturating_add(ttl * 3 / 4));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, counter = %key.0, "a lease could not be topped up")
                    }
                }
            }
            LeaseAction::Return {
                key,
                lease_id,
                amount,
                drop,
            } => match self
                .store
                .return_lease(&key.0, key.1, &lease_id, amount, drop)
                .await
            {
                Ok(_) => book.returned(&key, &lease_id, amount, true),
                Err(e) => {
                    tracing::warn!(error = %e, counter = %key.0, "an unused lease could not be returned");
                    book.returned(&key, &lease_id, amount, false);
                }
            },
        }
    }

    /// Polls budget definitions and reclaims expired holds until `stop` flips.
    pub async fn watch(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let keeper = matches!(self.counters, Counters::Leased(_))
            .then(|| tokio::spawn(self.clone().keep_leases(stop.clone())));
        let mut ticker = tokio::time::interval(POLL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_reclaim = tokio::time::Instant::now();
        let mut last_renewal = tokio::time::Instant::now();
        let mut last_prune = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.changed() => break,
            }
            if let Err(e) = self.refresh_budgets().await {
                tracing::warn!(error = %e, "budget definitions could not be refreshed");
            }
            if let Counters::Memory { ledger, .. } = &self.counters {
                // Holds die with the process: nothing to renew or reclaim. Forget ended windows.
                if last_prune.elapsed() >= Duration::from_secs(10) {
                    last_prune = tokio::time::Instant::now();
                    ledger.prune_superseded();
                }
                continue;
            }
            // Holds of requests still running are renewed well before they expire.
            let ttl_ms = self.hold_ttl_ms.load(Ordering::Relaxed);
            let renew_every = Duration::from_millis(u64::try_from(ttl_ms / 3).unwrap_or(0));
            if last_renewal.elapsed() >= renew_every {
                last_renewal = tokio::time::Instant::now();
                let ids: Vec<String> = self.live_holds();
                if !ids.is_empty()
                    && let Err(e) = self.store.renew_holds(&ids, now_ms() + ttl_ms).await
                {
                    tracing::warn!(error = %e, "holds of running requests could not be renewed");
                }
            }
            if last_prune.elapsed() >= Duration::from_secs(60) {
                last_prune = tokio::time::Instant::now();
                if let Err(e) = self.store.prune_settled(now_ms() - 86_400_000).await {
                    tracing::warn!(error = %e, "settled hold ids could not be pruned");
                }
            }
            if last_reclaim.elapsed() >= RECLAIM_EVERY {
                last_reclaim = tokio::time::Instant::now();
                match self.store.reclaim_expired_holds(now_ms()).await {
                    Ok(0) => {}
                    Ok(n) => {
                        self.stats.reclaimed.fetch_add(n, Ordering::Relaxed);
                        tracing::warn!(
                            holds = n,
                            "reclaimed expired holds (a gateway stopped before settling)"
                        );
                    }
                    Err(e) => tracing::warn!(error = %e, "expired holds could not be reclaimed"),
                }
                if matches!(self.counters, Counters::Leased(_)) {
                    match self.store.reclaim_expired_leases(now_ms()).await {
                        Ok(0) => {}
                        Ok(n) => {
                            self.stats.reclaimed.fetch_add(n, Ordering::Relaxed);
                            tracing::warn!(
                                leases = n,
                                "returned expired leases (a replica stopped renewing them)"
                            );
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "expired leases could not be returned");
                        }
                    }
                }
            }
        }
        if let Some(keeper) = keeper {
            let _ = keeper.await;
        }
    }

    /// Hold ids of the requests in flight.
    fn live_holds(&self) -> Vec<String> {
        self.live
            .lock()
            .map(|live| live.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether any budget is managed in the store.
    pub fn has_stored_budgets(&self) -> bool {
        !self.stored_budgets.load().is_empty()
    }

    /// Every budget that applies to `key` (policy-declared and stored).
    pub fn budgets_for(&self, snapshot: &Snapshot, key: &KeyRecord) -> Vec<Arc<BudgetSpec>> {
        let stored = self.stored_budgets.load();
        snapshot
            .budgets
            .iter()
            .chain(stored.iter())
            .filter(|b| match b.scope {
                Scope::Organization => true,
                Scope::Team => key.team.as_deref() == Some(b.subject.as_str()),
                Scope::User => key.owner.as_deref() == Some(b.subject.as_str()),
                Scope::Key => key.id == b.subject,
                Scope::Model => false,
            })
            .cloned()
            .collect()
    }

    /// Holds the worst case on every applicable budget and quota, or refuses the request.
    /// `Ok(None)`: nothing applies.
    pub async fn reserve(
        &self,
        snapshot: &Snapshot,
        key: &KeyRecord,
        target: &Target,
        estimate: Estimate,
        request_id: &str,
    ) -> Result<Option<Reservation>, GatewayError> {
        let budgets = self.budgets_for(snapshot, key);
        let quotas: Vec<(&QuotaSpec, String)> = snapshot
            .quotas
            .iter()
            .filter_map(|q| {
                let subject = match q.scope {
                    Scope::Organization => Some(String::new()),
                    Scope::Team => key.team.clone(),
                    Scope::User => key.owner.clone(),
                    Scope::Key => Some(key.id.clone()),
                    Scope::Model => Some(target.name().to_string()),
                }?;
                match &q.subject {
                    Some(only) if *only != subject => None,
                    _ => Some((q, subject)),
                }
            })
            .collect();
        if budgets.is_empty() && quotas.is_empty() {
            return Ok(None);
        }
        let cost_nanos = estimate.cost_nanos(&target.worst_pricing());
        let now = now_ms();
        let mut requests: Vec<(HoldRequest, Held, i64)> = Vec::new();
        for b in &budgets {
            let (start, end) = b.window.bounds(now, b.tz);
            requests.push((
                HoldRequest {
                    counter_id: b.counter_id(),
                    window_start_ms: start,
                    window_end_ms: end,
                    amount: cost_nanos,
                    limit: b.limit_nanos,
                },
                Held {
                    counter_id: b.counter_id(),
                    window_start_ms: start,
                    kind: HeldFor::Budget(b.clone()),
                },
                end,
            ));
        }
        for (q, subject) in &quotas {
            let (start, end) = match q.window {
                Some(w) => w.bounds(now, q.tz),
                None => (0, i64::MAX),
            };
            let amount = match q.metric {
                Metric::Requests | Metric::Concurrency => 1,
                Metric::InputTokens => estimate.input_tokens,
                Metric::OutputTokens => estimate.output_tokens,
                Metric::TotalTokens => estimate.input_tokens + estimate.output_tokens,
                Metric::Cost => cost_nanos,
            };
            let counter_id = format!("quota:{}:{}", q.name, subject);
            requests.push((
                HoldRequest {
                    counter_id: counter_id.clone(),
                    window_start_ms: start,
                    window_end_ms: end,
                    amount,
                    limit: q.limit,
                },
                Held {
                    counter_id,
                    window_start_ms: start,
                    kind: HeldFor::Quota(q.metric),
                },
                end,
            ));
        }
        requests.sort_by(|a, b| a.0.counter_id.cmp(&b.0.counter_id));
        requests.dedup_by(|a, b| a.0.counter_id == b.0.counter_id);
        let holds: Vec<HoldRequest> = requests.iter().map(|r| r.0.clone()).collect();
        let ttl_ms = i64::try_from(snapshot.limits.hold_ttl.as_millis()).unwrap_or(i64::MAX);
        self.hold_ttl_ms.store(ttl_ms, Ordering::Relaxed);
        self.lease_ttl_ms.store(
            i64::try_from(snapshot.limits.lease_ttl.as_millis()).unwrap_or(i64::MAX),
            Ordering::Relaxed,
        );
        let expires = now.saturating_add(ttl_ms);
        let mut local = false;
        let outcome = match &self.counters {
            Counters::Memory { ledger, .. } => Ok(ledger.hold(request_id, &holds)),
            Counters::Store => {
                let _turn = self.store_holds.acquire().await;
                self.stats.store_holds.fetch_add(1, Ordering::Relaxed);
                self.store.hold(request_id, &holds, expires).await
            }
            Counters::Leased(book) => {
                if book.hold(request_id, &holds, now) {
                    local = true;
                    Ok(HoldOutcome::Held)
                } else {
                    self.stats.store_holds.fetch_add(1, Ordering::Relaxed);
                    self.hold_in_store(book, request_id, &holds, expires).await
                }
            }
        }
        .map_err(|e| {
            GatewayError::Unavailable(UnavailableError {
                code: "budget_unavailable",
                what: "the budget store",
                detail: e.to_string(),
            })
        })?;
        match outcome {
            HoldOutcome::Held => {
                self.stats.held.fetch_add(1, Ordering::Relaxed);
                if !local
                    && !self.in_memory()
                    && let Ok(mut live) = self.live.lock()
                {
                    live.insert(request_id.to_string());
                }
                Ok(Some(Reservation {
                    hold_id: request_id.to_string(),
                    held: requests.into_iter().map(|r| r.1).collect(),
                    estimate,
                    cost_nanos,
                    webhook: snapshot.webhook_url.clone(),
                    local,
                }))
            }
            HoldOutcome::Refused { index, state } => {
                let (hold, held, end) = &requests[index];
                match &held.kind {
                    HeldFor::Budget(b) => {
                        self.stats.budget_refusals.fetch_add(1, Ordering::Relaxed);
                        Err(GatewayError::Budget(Box::new(BudgetExceeded {
                            budget_id: b.id.clone(),
                            scope: b.scope.as_str(),
                            subject: b.subject.clone(),
                            window: b.window.budget_name(),
                            limit_nanos: b.limit_nanos,
                            spent_nanos: state.used,
                            reserved_nanos: state.reserved,
                            requested_nanos: hold.amount,
                            resets_at_ms: (*end != i64::MAX).then_some(*end),
                        })))
                    }
                    HeldFor::Quota(_) => {
                        self.stats.quota_refusals.fetch_add(1, Ordering::Relaxed);
                        let Some((q, subject)) = quotas
                            .iter()
                            .find(|(q, s)| format!("quota:{}:{}", q.name, s) == hold.counter_id)
                        else {
                            return Err(GatewayError::Routing("quota bookkeeping mismatch".into()));
                        };
                        let retry_after = if q.window.is_none() {
                            1
                        } else {
                            u64::try_from((end - now + 999) / 1000).unwrap_or(1).max(1)
                        };
                        Err(GatewayError::Quota(Box::new(QuotaExceeded {
                            code: q.code(),
                            scope: q.scope.as_str(),
                            subject: subject.clone(),
                            limit_name: q.limit_name(),
                            limit: q.limit,
                            used: state.used,
                            reserved: state.reserved,
                            retry_after_secs: retry_after,
                        })))
                    }
                }
            }
        }
    }

    /// The `budget` variable of access rules: every applicable budget and quota with its state
    /// in the current window, plus the tightest remaining budget and the highest use.
    pub async fn spend_view(
        &self,
        snapshot: &Snapshot,
        key: &KeyRecord,
        target: &Target,
    ) -> Result<Value, StoreError> {
        let now = now_ms();
        let mut budgets = Vec::new();
        let (mut remaining_usd, mut percent_used): (Option<f64>, f64) = (None, 0.0);
        for b in self.budgets_for(snapshot, key) {
            let (start, _) = b.window.bounds(now, b.tz);
            let state = self.counter_state(&b.counter_id(), start).await?;
            let remaining = (b.limit_nanos - state.used - state.reserved).max(0) as f64 / 1e9;
            let percent = if b.limit_nanos > 0 {
                state.used as f64 * 100.0 / b.limit_nanos as f64
            } else {
                100.0
            };
            remaining_usd = Some(remaining_usd.map_or(remaining, |r| r.min(remaining)));
            percent_used = percent_used.max(percent);
            budgets.push(json!({
                "id": b.id, "scope": b.scope.as_str(), "subject": b.subject, "window": b.window.budget_name(),
                "limit_usd": b.limit_nanos as f64 / 1e9, "spent_usd": state.used as f64 / 1e9,
                "reserved_usd": state.reserved as f64 / 1e9, "remaining_usd": remaining, "percent_used": percent,
            }));
        }
        let mut quotas = Vec::new();
        for q in &snapshot.quotas {
            let subject = match q.scope {
                Scope::Organization => Some(String::new()),
                Scope::Team => key.team.clone(),
                Scope::User => key.owner.clone(),
                Scope::Key => Some(key.id.clone()),
                Scope::Model => Some(target.name().to_string()),
            };
            let Some(subject) = subject.filter(|s| q.subject.as_ref().is_none_or(|only| only == s))
            else {
                continue;
            };
            let start = q.window.map_or(0, |w| w.bounds(now, q.tz).0);
            let state = self
                .counter_state(&format!("quota:{}:{}", q.name, subject), start)
                .await?;
            let remaining = (q.limit - state.used - state.reserved).max(0);
            quotas.push(json!({
                "scope": q.scope.as_str(), "subject": subject, "limit": q.limit_name(), "limit_value": q.limit,
                "used": state.used, "reserved": state.reserved, "remaining": remaining,
                "percent_used": if q.limit > 0 { state.used as f64 * 100.0 / q.limit as f64 } else { 100.0 },
            }));
        }
        Ok(json!({
            "remaining_usd": remaining_usd,
            "percent_used": percent_used,
            "budgets": budgets,
            "quotas": quotas,
        }))
    }

    /// Settles `reservation` with what the call really used, and returns the charges for the
    /// usage writer to persist with the request's usage row (in one transaction; journaled
    /// while the store is away, so an outage or a restart loses no settlement and a replay
    /// charges once). In memory and from a leased slice: applied here at once. A hold in the
    /// store: the charges name it, and the writer deletes it with the row.
    pub fn settle(
        &self,
        reservation: Reservation,
        tokens: TokenUsage,
        cost_nanos: i64,
    ) -> Vec<Settlement> {
        if let Counters::Memory { ledger, .. } = &self.counters {
            let charges = settlements_of(&reservation, &tokens, cost_nanos);
            let before: Vec<i64> = reservation
                .held
                .iter()
                .map(|h| ledger.state(&h.counter_id, h.window_start_ms).used)
                .collect();
            let Some(states) = ledger.settle(&reservation.hold_id, &charges) else {
                return Vec::new();
            };
            self.stats.settled.fetch_add(1, Ordering::Relaxed);
            let crossed = cost_nanos > 0
                && reservation.held.iter().zip(&before).any(|(h, used)| {
                    let HeldFor::Budget(b) = &h.kind else {
                        return false;
                    };
                    b.limit_nanos > 0
                        && b.thresholds.iter().any(|t| {
                            let mark = i128::from(b.limit_nanos) * i128::from(*t);
                            i128::from(*used) * 100 < mark
                                && i128::from(used.saturating_add(cost_nanos)) * 100 >= mark
                        })
                });
            if crossed {
                let notifier = self.notifier();
                tokio::spawn(async move {
                    notifier
                        .thresholds(
                            &reservation.held,
                            reservation.webhook.as_deref(),
                            &states,
                            Some(&before),
                        )
                        .await;
                });
            }
            return charges;
        }
        if let Counters::Leased(book) = &self.counters
            && reservation.local
        {
            let mut charges = settlements_of(&reservation, &tokens, cost_nanos);
            if !book.settle(&reservation.hold_id, &mut charges) {
                return Vec::new();
            }
            self.stats.settled.fetch_add(1, Ordering::Relaxed);
            self.thresholds_after_commit(reservation, cost_nanos);
            return charges;
        }
        // A hold in the store: settled by the usage writer in the transaction of the request's
        // usage row (journaled with it while the store is away), once per hold id.
        if let Ok(mut live) = self.live.lock() {
            live.remove(&reservation.hold_id);
        }
        let mut charges = settlements_of(&reservation, &tokens, cost_nanos);
        for charge in &mut charges {
            charge.hold = Some(reservation.hold_id.clone());
        }
        self.stats.settled.fetch_add(1, Ordering::Relaxed);
        self.thresholds_after_commit(reservation, cost_nanos);
        charges
    }

    /// Budget threshold events of a settlement whose charges reach the store with the usage
    /// row: checked on the stored state once the writer has had time to commit it (the store
    /// deduplicates events per budget window and threshold).
    ///
    /// Checks are coalesced per budget window and webhook: the first settlement that touches a
    /// window schedules one check [`THRESHOLD_DELAY`] later, and settlements until then join
    /// it. So a busy budget costs the store one read per window and delay, not one per request
    /// (a read per request was a quarter of a replica's CPU under load on PostgreSQL).
    fn thresholds_after_commit(&self, reservation: Reservation, cost_nanos: i64) {
        let thresholds = reservation
            .held
            .iter()
            .any(|h| matches!(&h.kind, HeldFor::Budget(b) if !b.thresholds.is_empty()));
        // Most requests settle budgets without thresholds: no lock, no clock read.
        if cost_nanos <= 0 || !thresholds {
            return;
        }
        let schedule = self
            .thresholds_pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .join(&reservation.held, reservation.webhook.as_deref(), now_ms());
        if !schedule {
            return;
        }
        let notifier = self.notifier();
        let pending = self.thresholds_pending.clone();
        tokio::spawn(async move {
            tokio::time::sleep(THRESHOLD_DELAY).await;
            let due = std::mem::take(
                &mut pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .checks,
            );
            let mut states: Vec<((String, i64), CounterState)> = Vec::new();
            for check in &due {
                let key = (check.held.counter_id.clone(), check.held.window_start_ms);
                if states.iter().any(|(k, _)| *k == key) {
                    continue;
                }
                notifier
                    .stats
                    .threshold_reads
                    .fetch_add(1, Ordering::Relaxed);
                match notifier.store.counter_state(&key.0, key.1).await {
                    Ok(state) => states.push((key, state)),
                    Err(e) => {
                        tracing::warn!(error = %e, counter = %key.0, "budget threshold check could not read the counter")
                    }
                }
            }
            for check in &due {
                notifier
                    .thresholds(
                        std::slice::from_ref(&check.held),
                        check.webhook.as_deref(),
                        &states,
                        None,
                    )
                    .await;
            }
        });
    }

    /// The HTTP client (for webhooks).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }
}

/// Takes the exclusive serve lock of an embedded store, or refuses with a clear message.
fn lock_embedded(db: &std::path::Path) -> Result<std::fs::File, StoreError> {
    let mut path = db.as_os_str().to_owned();
    path.push(".serve-lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::Locked(format!("cannot open {}: {e}", path.to_string_lossy())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked(format!(
            "another tollgate gateway is already serving on {}: SQLite holds budgets in one \
             gateway's memory, so it serves one gateway; run several replicas on PostgreSQL",
            db.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Locked(format!(
            "cannot lock {}: {e}",
            path.to_string_lossy()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget_held(id: &str, thresholds: Vec<u32>) -> Held {
        Held {
            counter_id: format!("budget:{id}"),
            window_start_ms: 1_000,
            kind: HeldFor::Budget(Arc::new(BudgetSpec {
                id: id.into(),
                scope: Scope::Organization,
                subject: String::new(),
                window: super::super::window::Window::Month,
                tz: chrono_tz::UTC,
                limit_nanos: 1_000_000,
                thresholds,
                source: super::super::Source::Policy,
            })),
        }
    }

    #[test]
    fn threshold_checks_coalesce_per_window_and_are_never_stranded() {
        let mut pending = PendingThresholds::default();
        let a = budget_held("a", vec![50]);
        let quiet = budget_held("q", Vec::new());
        // The first settlement schedules; the next ones of the same window join it.
        assert!(pending.join(&[a.clone(), quiet.clone()], Some("http://hook"), 0));
        assert!(!pending.join(std::slice::from_ref(&a), Some("http://hook"), 100));
        assert_eq!(
            pending.checks.len(),
            1,
            "a budget without thresholds is never checked"
        );
        // Another webhook or window is a separate check under the same schedule.
        assert!(!pending.join(std::slice::from_ref(&a), None, 200));
        assert!(!pending.join(&[budget_held("b", vec![80])], None, 300));
        assert_eq!(pending.checks.len(), 3);
        // The scheduled check never took them (its runtime stopped): a later settlement
        // schedules again instead of leaving them pending forever.
        assert!(pending.join(std::slice::from_ref(&a), None, THRESHOLD_STALE_MS + 1));
        assert!(!pending.join(std::slice::from_ref(&a), None, THRESHOLD_STALE_MS + 2));
        // Once a check has taken them, the next settlement schedules anew.
        pending.checks.clear();
        assert!(!pending.join(&[quiet], None, THRESHOLD_STALE_MS + 3));
        assert!(pending.join(&[a], None, THRESHOLD_STALE_MS + 4));
    }
}
