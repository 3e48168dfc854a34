//! The spend ledger at runtime: which budgets and quotas apply, the hold before the call, the
//! settlement after it (queued, retried, flushed on shutdown), reclamation of expired holds and
//! budget threshold events.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::estimate::Estimate;
use super::{BudgetSpec, Metric, QuotaSpec, Scope, Source, Window};
use crate::clock::now_ms;
use crate::error::{BudgetExceeded, GatewayError, QuotaExceeded, UnavailableError};
use crate::policy::{Snapshot, Target};
use crate::store::ledger::{HoldOutcome, HoldRequest, Settlement};
use crate::store::{KeyRecord, Store, StoreError};
use crate::usage::TokenUsage;

/// How often budget definitions are re-read when they changed, and expired holds reclaimed.
const POLL: Duration = Duration::from_millis(200);
const RECLAIM_EVERY: Duration = Duration::from_secs(2);
const QUEUE: usize = 65_536;

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
}

impl Reservation {
    /// The trail entry for the usage record.
    pub fn decision(&self) -> Value {
        json!({
            "stage": "reserve", "outcome": "held",
            "counters": self.held.iter().map(|h| h.counter_id.clone()).collect::<Vec<_>>(),
            "estimated_input_tokens": self.estimate.input_tokens,
            "estimated_output_tokens": self.estimate.output_tokens,
            "held_cost_nanos": self.cost_nanos,
        })
    }
}

struct SettleJob {
    reservation: Reservation,
    tokens: TokenUsage,
    cost_nanos: i64,
}

/// Ledger counters for `/metrics`.
#[derive(Debug, Default)]
pub struct LedgerStats {
    /// Requests that took holds.
    pub held: AtomicU64,
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
    /// Settlement attempts that failed (retried).
    pub settle_failures: AtomicU64,
}

/// The ledger.
pub struct Ledger {
    store: Store,
    stored_budgets: ArcSwap<Vec<Arc<BudgetSpec>>>,
    budgets_version: AtomicI64,
    settle_tx: mpsc::Sender<SettleJob>,
    /// Counters.
    pub stats: Arc<LedgerStats>,
    http: reqwest::Client,
    /// Hold ids of requests in flight, whose holds are renewed until they settle.
    live: std::sync::Mutex<std::collections::HashSet<String>>,
    /// The hold time-to-live of the latest snapshot, in ms.
    hold_ttl_ms: AtomicI64,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").finish_non_exhaustive()
    }
}

/// Converts a stored budget to a spec (skipping ones whose values no longer parse).
fn spec_of(record: &crate::store::ledger::BudgetRecord) -> Option<BudgetSpec> {
    Some(BudgetSpec {
        id: record.id.clone(),
        scope: Scope::parse(&record.scope)?,
        subject: record.subject.clone(),
        window: Window::parse_budget(&record.window)?,
        tz: record.timezone.parse().ok()?,
        limit_nanos: record.limit_nanos,
        thresholds: record.thresholds.clone(),
        source: Source::Store,
    })
}

impl Ledger {
    /// Starts the ledger and its settlement worker; await the handle after dropping every
    /// `Arc<Ledger>` to flush pending settlements.
    pub async fn start(
        store: Store,
        http: reqwest::Client,
    ) -> Result<(Arc<Ledger>, JoinHandle<()>), StoreError> {
        let (settle_tx, settle_rx) = mpsc::channel(QUEUE);
        let stats = Arc::new(LedgerStats::default());
        let ledger = Arc::new(Ledger {
            store: store.clone(),
            stored_budgets: ArcSwap::from_pointee(Vec::new()),
            budgets_version: AtomicI64::new(-1),
            settle_tx,
            stats: stats.clone(),
            http: http.clone(),
            live: std::sync::Mutex::default(),
            hold_ttl_ms: AtomicI64::new(60_000),
        });
        ledger.refresh_budgets().await?;
        let worker = tokio::spawn(settle_worker(store, settle_rx, stats, http));
        Ok((ledger, worker))
    }

    /// Re-reads stored budgets if they changed.
    pub async fn refresh_budgets(&self) -> Result<(), StoreError> {
        let version = self.store.version("budgets").await?;
        if version == self.budgets_version.load(Ordering::Acquire) {
            return Ok(());
        }
        let records = self.store.list_budgets().await?;
        let specs: Vec<Arc<BudgetSpec>> =
            records.iter().filter_map(spec_of).map(Arc::new).collect();
        self.stored_budgets.store(Arc::new(specs));
        self.budgets_version.store(version, Ordering::Release);
        Ok(())
    }

    /// Polls budget definitions and reclaims expired holds until `stop` flips.
    pub async fn watch(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(POLL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_reclaim = tokio::time::Instant::now();
        let mut last_renewal = tokio::time::Instant::now();
        let mut last_prune = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.changed() => return,
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
            if let Err(e) = self.refresh_budgets().await {
                tracing::warn!(error = %e, "budget definitions could not be refreshed");
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
            }
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
        let expires = now.saturating_add(ttl_ms);
        let outcome = self
            .store
            .hold(request_id, &holds, expires)
            .await
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
                if let Ok(mut live) = self.live.lock() {
                    live.insert(request_id.to_string());
                }
                Ok(Some(Reservation {
                    hold_id: request_id.to_string(),
                    held: requests.into_iter().map(|r| r.1).collect(),
                    estimate,
                    cost_nanos,
                    webhook: snapshot.webhook_url.clone(),
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
            let state = self.store.counter_state(&b.counter_id(), start).await?;
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
                .store
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

    /// Queues the settlement of `reservation` with what the call really used. Never blocks;
    /// the worker retries until the store takes it.
    pub fn settle(&self, reservation: Reservation, tokens: TokenUsage, cost_nanos: i64) {
        if let Ok(mut live) = self.live.lock() {
            live.remove(&reservation.hold_id);
        }
        let job = SettleJob {
            reservation,
            tokens,
            cost_nanos,
        };
        match self.settle_tx.try_send(job) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(job)) => {
                let tx = self.settle_tx.clone();
                tokio::spawn(async move {
                    if tx.send(job).await.is_err() {
                        tracing::error!(
                            "settlement worker stopped; the hold will be reclaimed at expiry"
                        );
                    }
                });
            }
            Err(mpsc::error::TrySendError::Closed(job)) => {
                tracing::error!(hold = %job.reservation.hold_id, "settlement worker stopped; the hold will be reclaimed at expiry");
            }
        }
    }

    /// The HTTP client (for webhooks).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }
}

/// Settlements per transaction at most.
const SETTLE_BATCH: usize = 256;

async fn settle_worker(
    store: Store,
    mut rx: mpsc::Receiver<SettleJob>,
    stats: Arc<LedgerStats>,
    http: reqwest::Client,
) {
    let mut jobs = Vec::with_capacity(SETTLE_BATCH);
    while rx.recv_many(&mut jobs, SETTLE_BATCH).await > 0 {
        let batch: Vec<(String, Vec<Settlement>)> = jobs
            .iter()
            .map(|job| {
                let settlements = job
                    .reservation
                    .held
                    .iter()
                    .map(|h| Settlement {
                        counter_id: h.counter_id.clone(),
                        window_start_ms: h.window_start_ms,
                        actual: match &h.kind {
                            HeldFor::Budget(_) | HeldFor::Quota(Metric::Cost) => job.cost_nanos,
                            HeldFor::Quota(Metric::Requests) => 1,
                            HeldFor::Quota(Metric::Concurrency) => 0,
                            HeldFor::Quota(Metric::InputTokens) => job.tokens.input,
                            HeldFor::Quota(Metric::OutputTokens) => job.tokens.output,
                            HeldFor::Quota(Metric::TotalTokens) => job.tokens.total(),
                        },
                    })
                    .collect();
                (job.reservation.hold_id.clone(), settlements)
            })
            .collect();
        let mut backoff = Duration::from_millis(50);
        let states = loop {
            match store.settle_batch(&batch).await {
                Ok(states) => break states,
                Err(e) => {
                    stats.settle_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(settlements = batch.len(), error = %e, "settlement failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        stats
            .settled
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        // Threshold events: once per budget window and threshold, checked on the state after
        // the batch, for budgets this batch charged.
        let mut charged: Vec<(&Held, Option<String>)> = Vec::new();
        for job in &jobs {
            if job.cost_nanos == 0 {
                continue;
            }
            for held in &job.reservation.held {
                if matches!(held.kind, HeldFor::Budget(_))
                    && !charged.iter().any(|(h, _)| {
                        h.counter_id == held.counter_id && h.window_start_ms == held.window_start_ms
                    })
                {
                    charged.push((held, job.reservation.webhook.clone()));
                }
            }
        }
        for (held, webhook) in charged {
            let HeldFor::Budget(budget) = &held.kind else {
                continue;
            };
            let Some((_, state)) = states
                .iter()
                .find(|((c, w), _)| *c == held.counter_id && *w == held.window_start_ms)
            else {
                continue;
            };
            if budget.limit_nanos <= 0 {
                continue;
            }
            let percent = i128::from(state.used) * 100 / i128::from(budget.limit_nanos);
            for threshold in &budget.thresholds {
                if percent < i128::from(*threshold) {
                    continue;
                }
                match store
                    .record_alert(&held.counter_id, held.window_start_ms, *threshold)
                    .await
                {
                    Ok(true) => {
                        stats.alerts.fetch_add(1, Ordering::Relaxed);
                        let event = json!({
                            "event": "budget_threshold",
                            "budget_id": budget.id,
                            "scope": budget.scope.as_str(),
                            "subject": budget.subject,
                            "window": budget.window.budget_name(),
                            "window_start_ms": held.window_start_ms,
                            "threshold_percent": threshold,
                            "limit_usd": budget.limit_nanos as f64 / 1e9,
                            "spent_usd": state.used as f64 / 1e9,
                            "at_ms": now_ms(),
                        });
                        tracing::warn!(budget = %budget.id, threshold, spent_nanos = state.used, limit_nanos = budget.limit_nanos, "budget threshold crossed");
                        if let Some(url) = webhook.clone() {
                            tokio::spawn(deliver(http.clone(), url, event));
                        }
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "budget threshold could not be recorded"),
                }
            }
        }
        jobs.clear();
    }
    tracing::debug!("settlement worker drained");
}

/// Delivers one event with retries (5 attempts, exponential backoff), off the request path.
async fn deliver(http: reqwest::Client, url: String, event: Value) {
    let mut backoff = Duration::from_millis(200);
    for attempt in 1..=5 {
        match http
            .post(&url)
            .json(&event)
            .timeout(Duration::from_secs(5))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => tracing::warn!(
                attempt,
                status = r.status().as_u16(),
                "budget webhook rejected the event"
            ),
            Err(e) => tracing::warn!(attempt, error = %e, "budget webhook unreachable"),
        }
        tokio::time::sleep(backoff).await;
        backoff *= 2;
    }
    tracing::error!(%url, "budget webhook gave up after 5 attempts");
}

/// A budget with its current window, as the admin API and the CLI show it.
pub async fn budget_view(store: &Store, spec: &BudgetSpec) -> Result<Value, StoreError> {
    let now = now_ms();
    let (start, end) = spec.window.bounds(now, spec.tz);
    let state = store.counter_state(&spec.counter_id(), start).await?;
    let remaining = (spec.limit_nanos - state.used - state.reserved).max(0);
    Ok(json!({
        "id": spec.id,
        "source": match spec.source { Source::Policy => "policy", Source::Store => "store" },
        "scope": spec.scope.as_str(),
        "subject": spec.subject,
        "window": spec.window.budget_name(),
        "timezone": spec.tz.name(),
        "thresholds": spec.thresholds,
        "limit_usd": spec.limit_nanos as f64 / 1e9,
        "limit_nanos": spec.limit_nanos,
        "current_window": {
            "start_ms": start,
            "end_ms": (end != i64::MAX).then_some(end),
            "spent_nanos": state.used,
            "reserved_nanos": state.reserved,
            "remaining_nanos": remaining,
            "spent_usd": state.used as f64 / 1e9,
            "remaining_usd": remaining as f64 / 1e9,
            "percent_used": if spec.limit_nanos > 0 { state.used as f64 * 100.0 / spec.limit_nanos as f64 } else { 0.0 },
        },
    }))
}

/// Validates and converts an admin/CLI budget definition to a store record.
pub fn budget_record(
    scope: &str,
    subject: &str,
    window: &str,
    limit_usd: f64,
    timezone: &str,
    thresholds: Vec<u32>,
) -> Result<crate::store::ledger::BudgetRecord, String> {
    let scope_kind = Scope::parse(scope)
        .filter(|s| *s != Scope::Model)
        .ok_or_else(|| format!("scope '{scope}' must be organization, team, user or key"))?;
    if (scope_kind == Scope::Organization) != subject.is_empty() {
        return Err("an organization budget has no subject; every other scope needs one".into());
    }
    let window_kind = Window::parse_budget(window)
        .ok_or_else(|| format!("window '{window}' must be daily, weekly, monthly or lifetime"))?;
    let limit_nanos = crate::usage::Pricing::nanos_per_mtok(limit_usd)
        .ok_or_else(|| format!("limit {limit_usd} must be a non-negative amount of USD"))?;
    timezone
        .parse::<chrono_tz::Tz>()
        .map_err(|_| format!("'{timezone}' is not an IANA time zone"))?;
    if thresholds.iter().any(|t| *t == 0 || *t > 1000) {
        return Err("thresholds are percentages between 1 and 1000".into());
    }
    Ok(crate::store::ledger::BudgetRecord {
        id: format!("bud_{}", uuid::Uuid::now_v7().simple()),
        scope: scope_kind.as_str().to_string(),
        subject: subject.to_string(),
        window: window_kind.budget_name().to_string(),
        limit_nanos,
        timezone: timezone.to_string(),
        thresholds,
        updated_at_ms: 0,
    })
}

/// The spec of a stored budget.
pub fn stored_spec(record: &crate::store::ledger::BudgetRecord) -> Option<BudgetSpec> {
    spec_of(record)
}
