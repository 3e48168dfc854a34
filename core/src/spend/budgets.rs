//! Budgets as operators see and define them: the view of a budget's current window (admin API,
//! CLI), validation of budget definitions, and the spec of a stored budget.

use serde_json::{Value, json};

use super::{BudgetSpec, Scope, Source, Window};
use crate::clock::now_ms;
use crate::store::ledger::CounterState;
use crate::store::{Store, StoreError};

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

/// A budget with its current window as the store has it (the CLI; a serving gateway answers
/// from its ledger: [`super::ledger::Ledger::budget_view`]).
pub async fn budget_view(store: &Store, spec: &BudgetSpec) -> Result<Value, StoreError> {
    let (start, end) = spec.window.bounds(now_ms(), spec.tz);
    let state = store.counter_state(&spec.counter_id(), start).await?;
    Ok(view_of(spec, (start, end), state))
}

/// A budget with its window `bounds` and counter `state`.
pub fn view_of(spec: &BudgetSpec, bounds: (i64, i64), state: CounterState) -> Value {
    let (start, end) = bounds;
    let remaining = (spec.limit_nanos - state.used - state.reserved).max(0);
    json!({
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
    })
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
