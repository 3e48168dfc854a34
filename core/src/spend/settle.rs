//! Settlement: what each held counter is charged when a request is recorded (the usage writer
//! persists the charges with the request's usage row, [`crate::store::usage_rows`]), and the
//! budget threshold events both ledgers emit (once per budget window and threshold, webhook
//! delivered with retries, off the request path).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};

use super::Metric;
use super::ledger::{Held, HeldFor, LedgerStats, Reservation};
use crate::clock::now_ms;
use crate::store::Store;
use crate::store::ledger::{CounterState, Settlement};
use crate::usage::TokenUsage;

/// What each counter of `reservation` is charged for a call that used `tokens` and cost
/// `cost_nanos`.
pub fn settlements_of(
    reservation: &Reservation,
    tokens: &TokenUsage,
    cost_nanos: i64,
) -> Vec<Settlement> {
    reservation
        .held
        .iter()
        .map(|h| Settlement {
            counter_id: h.counter_id.clone(),
            window_start_ms: h.window_start_ms,
            actual: match &h.kind {
                HeldFor::Budget(_) | HeldFor::Quota(Metric::Cost) => cost_nanos,
                HeldFor::Quota(Metric::Requests) => 1,
                HeldFor::Quota(Metric::Concurrency) => 0,
                HeldFor::Quota(Metric::InputTokens) => tokens.input,
                HeldFor::Quota(Metric::OutputTokens) => tokens.output,
                HeldFor::Quota(Metric::TotalTokens) => tokens.total(),
            },
            lease: None,
            hold: None,
        })
        .collect()
}

/// Where threshold events are recorded and sent.
#[derive(Clone)]
pub(super) struct Notifier {
    pub(super) store: Store,
    pub(super) http: reqwest::Client,
    pub(super) stats: Arc<LedgerStats>,
}

impl Notifier {
    /// Emits the threshold events the budget counters in `held` crossed, given each touched
    /// counter's state after settlement, to `webhook`. `before_used` is, per counter, what was
    /// spent before (the embedded ledger knows it; `None` checks every threshold already
    /// reached, deduplicated by the store).
    pub(super) async fn thresholds(
        &self,
        held: &[Held],
        webhook: Option<&str>,
        states: &[((String, i64), CounterState)],
        before_used: Option<&[i64]>,
    ) {
        for (i, held) in held.iter().enumerate() {
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
            let percent = |used: i64| i128::from(used) * 100 / i128::from(budget.limit_nanos);
            let now = percent(state.used);
            let before = before_used.and_then(|b| b.get(i)).map(|u| percent(*u));
            for threshold in &budget.thresholds {
                let t = i128::from(*threshold);
                if now < t || before.is_some_and(|b| b >= t) {
                    continue;
                }
                match self
                    .store
                    .record_alert(&held.counter_id, held.window_start_ms, *threshold)
                    .await
                {
                    Ok(true) => {
                        self.stats.alerts.fetch_add(1, Ordering::Relaxed);
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
                        if let Some(url) = webhook {
                            tokio::spawn(deliver(self.http.clone(), url.to_owned(), event));
                        }
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "budget threshold could not be recorded"),
                }
            }
        }
    }
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
