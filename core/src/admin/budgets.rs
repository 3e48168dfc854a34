//! `/admin/v1/budgets` (policy-declared ones read-only, stored ones editable) with their
//! current and previous windows, the usage rows a window counts, and `/admin/v1/quotas`.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};

use super::usage::usage_page;
use super::{Admin, ApiError, Call, Reply, page, page_of};
use crate::clock::now_ms;
use crate::spend::{BudgetSpec, Scope, Source};
use crate::store::admin::rfc3339;
use crate::store::ledger::{BudgetRecord, CounterState};
use crate::store::usage_query::UsageFilter;

fn usd(nanos: i64) -> f64 {
    nanos as f64 / 1e9
}

async fn counter(admin: &Admin, id: &str, start: i64) -> Result<CounterState, ApiError> {
    Ok(match &admin.gateway {
        Some(app) => app.ledger.counter_state(id, start).await?,
        None => admin.store.counter_state(id, start).await?,
    })
}

fn window_json(limit: i64, (start, end): (i64, i64), state: CounterState) -> Value {
    let remaining = (limit - state.used - state.reserved).max(0);
    json!({
        "start": rfc3339(Some(start)),
        "end": rfc3339((end != i64::MAX).then_some(end)),
        "used_nanos": state.used,
        "held_nanos": state.reserved,
        "remaining_nanos": remaining,
        "used_usd": usd(state.used),
        "held_usd": usd(state.reserved),
        "remaining_usd": usd(remaining),
    })
}

/// The window bounds of a budget: current, and the previous one (none for lifetime).
fn windows(spec: &BudgetSpec) -> ((i64, i64), Option<(i64, i64)>) {
    let current = spec.window.bounds(now_ms(), spec.tz);
    let previous = (current.0 > 0 && current.1 != i64::MAX)
        .then(|| spec.window.bounds(current.0 - 1, spec.tz));
    (current, previous)
}

async fn view(admin: &Admin, spec: &BudgetSpec) -> Result<Value, ApiError> {
    let (current, previous) = windows(spec);
    let id = spec.counter_id();
    let now_state = counter(admin, &id, current.0).await?;
    let previous = match previous {
        Some(bounds) => window_json(
            spec.limit_nanos,
            bounds,
            counter(admin, &id, bounds.0).await?,
        ),
        None => Value::Null,
    };
    Ok(json!({
        "id": spec.id,
        "scope": spec.scope.as_str(),
        "subject": spec.subject,
        "window": spec.window.budget_name(),
        "limit_nanos": spec.limit_nanos,
        "limit_usd": usd(spec.limit_nanos),
        "timezone": spec.tz.name(),
        "thresholds": spec.thresholds,
        "source": match spec.source { Source::Policy => "policy", Source::Store => "store" },
        "current": window_json(spec.limit_nanos, current, now_state),
        "previous": previous,
    }))
}

async fn specs(admin: &Admin) -> Result<Vec<(BudgetSpec, Option<BudgetRecord>)>, ApiError> {
    let mut out: Vec<(BudgetSpec, Option<BudgetRecord>)> = Vec::new();
    if let Some(app) = &admin.gateway {
        out.extend(
            app.policies
                .snapshot()
                .budgets
                .iter()
                .map(|b| ((**b).clone(), None)),
        );
    }
    for record in admin.store.list_budgets().await? {
        if let Some(spec) = crate::spend::ledger::stored_spec(&record) {
            out.push((spec, Some(record)));
        }
    }
    Ok(out)
}

async fn find(admin: &Admin, id: &str) -> Result<(BudgetSpec, Option<BudgetRecord>), ApiError> {
    specs(admin)
        .await?
        .into_iter()
        .find(|(s, _)| s.id == id)
        .ok_or_else(|| ApiError::not_found(format!("no budget with id '{id}'")))
}

async fn refresh(admin: &Admin) -> Result<(), ApiError> {
    if let Some(app) = &admin.gateway {
        app.ledger.refresh_budgets().await?;
    }
    Ok(())
}

/// `GET /budgets`.
pub async fn list(admin: Arc<Admin>, call: Call) -> Result<Reply, ApiError> {
    let mut data = Vec::new();
    for (spec, _) in specs(&admin).await? {
        data.push(view(&admin, &spec).await?);
    }
    page_of(&call, data)
}

/// `GET /budgets/{id}`.
pub async fn get(admin: Arc<Admin>, call: Call) -> Result<Reply, ApiError> {
    let (spec, _) = find(&admin, &call.param("id")).await?;
    Ok(Reply::ok(view(&admin, &spec).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetCreate {
    scope: String,
    #[serde(default)]
    subject: String,
    window: String,
    #[serde(default)]
    limit_usd: Option<f64>,
    #[serde(default)]
    limit_nanos: Option<i64>,
    #[serde(default)]
    timezone: Option<String>,
    #[serde(default)]
    thresholds: Option<Vec<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetUpdate {
    #[serde(default)]
    limit_usd: Option<f64>,
    #[serde(default)]
    limit_nanos: Option<i64>,
    #[serde(default)]
    timezone: Option<String>,
    #[serde(default)]
    thresholds: Option<Vec<u32>>,
}

/// The largest budget limit: a billion USD.
pub const MAX_LIMIT_USD: f64 = 1e9;

fn limit_of(usd: Option<f64>, nanos: Option<i64>) -> Result<Option<i64>, ApiError> {
    const MAX_NANOS: i64 = 1_000_000_000_000_000_000;
    match (usd, nanos) {
        (Some(_), Some(_)) => Err(ApiError::invalid("give limit_usd or limit_nanos, not both")),
        (None, Some(n)) if !(0..=MAX_NANOS).contains(&n) => Err(ApiError::invalid(format!(
            "limit_nanos must be from 0 to {MAX_NANOS} (a billion USD)"
        ))),
        (Some(u), None) if !(0.0..=MAX_LIMIT_USD).contains(&u) => Err(ApiError::invalid(format!(
            "limit_usd {u} must be from 0 to {MAX_LIMIT_USD}"
        ))),
        (None, Some(n)) => Ok(Some(n)),
        (Some(u), None) => crate::usage::Pricing::nanos_per_mtok(u)
            .map(Some)
            .ok_or_else(|| {
                ApiError::invalid(format!("limit_usd {u} must be a non-negative amount"))
            }),
        (None, None) => Ok(None),
    }
}

fn record(
    scope: &str,
    subject: &str,
    window: &str,
    limit_nanos: i64,
    timezone: &str,
    thresholds: Vec<u32>,
) -> Result<BudgetRecord, ApiError> {
    let mut record =
        crate::spend::ledger::budget_record(scope, subject, window, 0.0, timezone, thresholds)
            .map_err(ApiError::invalid)?;
    record.limit_nanos = limit_nanos;
    Ok(record)
}

fn record_json(r: &BudgetRecord) -> Value {
    json!({
        "id": r.id, "scope": r.scope, "subject": r.subject, "window": r.window,
        "limit_nanos": r.limit_nanos, "timezone": r.timezone, "thresholds": r.thresholds,
    })
}

/// `POST /budgets`.
pub async fn create(admin: Arc<Admin>, call: Call) -> Result<Reply, ApiError> {
    let body: BudgetCreate = call.json()?;
    let Some(limit) = limit_of(body.limit_usd, body.limit_nanos)? else {
        return Err(ApiError::invalid("a budget needs limit_usd or limit_nanos"));
    };
    let new = record(
        &body.scope,
        &body.subject,
        &body.window,
        limit,
        body.timezone.as_deref().unwrap_or("UTC"),
        body.thresholds.unwrap_or_else(|| vec![50, 80, 100]),
    )?;
    if admin
        .store
        .list_budgets()
        .await?
        .iter()
        .any(|b| b.scope == new.scope && b.subject == new.subject && b.window == new.window)
    {
        return Err(ApiError::conflict(format!(
            "a {} {} budget for '{}' exists already: PATCH it",
            new.window, new.scope, new.subject
        )));
    }
    let saved = admin.store.set_budget(&new).await?;
    admin
        .store
        .audit(
            &call.actor.id,
            "budget.create",
            Some(&saved.id),
            None,
            Some(&record_json(&saved)),
        )
        .await?;
    refresh(&admin).await?;
    let spec = crate::spend::ledger::stored_spec(&saved)
        .ok_or_else(|| ApiError::store("the stored budget could not be read back"))?;
    Ok(Reply::Json(201, view(&admin, &spec).await?))
}

/// `PATCH /budgets/{id}`.
pub async fn update(admin: Arc<Admin>, call: Call) -> Result<Reply, ApiError> {
    let id = call.param("id");
    let body: BudgetUpdate = call.json()?;
    let (_, stored) = find(&admin, &id).await?;
    let Some(before) = stored else {
        return Err(ApiError::conflict(format!(
            "budget '{id}' is declared in the policy directory: change it in gateway.toml"
        )));
    };
    let next = record(
        &before.scope,
        &before.subject,
        &before.window,
        limit_of(body.limit_usd, body.limit_nanos)?.unwrap_or(before.limit_nanos),
        body.timezone.as_deref().unwrap_or(&before.timezone),
        body.thresholds.unwrap_or_else(|| before.thresholds.clone()),
    )?;
    let saved = admin.store.set_budget(&next).await?;
    admin
        .store
        .audit(
            &call.actor.id,
            "budget.update",
            Some(&id),
            Some(&record_json(&before)),
            Some(&record_json(&saved)),
        )
        .await?;
    refresh(&admin).await?;
    let spec = crate::spend::ledger::stored_spec(&saved)
        .ok_or_else(|| ApiError::store("the stored budget could not be read back"))?;
    Ok(Reply::ok(view(&admin, &spec).await?))
}

/// `DELETE /budgets/{id}`.
pub async fn delete(admin: Arc<Admin>, call: Call) -> Result<Reply, ApiError> {
    let id = call.param("id");
    let (_, stored) = find(&admin, &id).await?;
    let Some(before) = stored else {
        return Err(ApiError::conflict(format!(
            "budget '{id}' is declared in the policy directory: remove it from gateway.toml"
        )));
    };
    if !admin.store.delete_budget(&id).await? {
        return Err(ApiError::not_found(format!("no budget with id '{id}'")));
    }
    admin
        .store
        .audit(
            &call.actor.id,
            "budget.delete",
            Some(&id),
            Some(&record_json(&before)),
            None,
        )
        .await?;
    refresh(&admin).await?;
    Ok(Reply::ok(json!({"deleted": id})))
}

/// `GET /budgets/{id}/usage?window=current|previous`.
pub async fn usage(admin: Arc<Admin>, call: Call) -> Result<Reply, ApiError> {
    let (spec, _) = find(&admin, &call.param("id")).await?;
    // Bad paging parameters are refused even where the window turns out empty.
    let limit = call.limit()?;
    let cursor = super::usage::cursor(&call)?;
    let (current, previous) = windows(&spec);
    let bounds = match call.q("window").as_deref() {
        None | Some("current") => current,
        Some("previous") => match previous {
            Some(b) => b,
            None => return Ok(page(Vec::new(), None)),
        },
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "window '{other}' must be current or previous"
            )));
        }
    };
    let mut filter = UsageFilter {
        from_ms: Some(bounds.0),
        to_ms: (bounds.1 != i64::MAX).then_some(bounds.1),
        ..UsageFilter::default()
    };
    match spec.scope {
        Scope::Team => filter.team = Some(spec.subject.clone()),
        Scope::User => filter.user = Some(spec.subject.clone()),
        Scope::Key => filter.key = Some(spec.subject.clone()),
        Scope::Model => filter.model = Some(spec.subject.clone()),
        Scope::Organization => {}
    }
    let rows = admin.store.usage_page(&filter, limit + 1, cursor).await?;
    Ok(usage_page(rows, limit))
}

/// `GET /quotas`: policy quotas with the current window of those with one subject (quotas that
/// apply to every subject separately show `per_subject: true` and no totals).
pub async fn quotas(admin: Arc<Admin>, call: Call) -> Result<Reply, ApiError> {
    let Some(app) = &admin.gateway else {
        return Err(ApiError::needs_gateway("listing quotas"));
    };
    let snapshot = app.policies.snapshot();
    let mut data = Vec::new();
    for q in &snapshot.quotas {
        let mut out = json!({
            "id": q.name,
            "scope": q.scope.as_str(),
            "subject": q.subject,
            "window": q.window.map(|w| w.quota_name()),
            "kind": match q.metric {
                crate::spend::Metric::Requests | crate::spend::Metric::Concurrency => "requests",
                crate::spend::Metric::Cost => "cost",
                _ => "tokens",
            },
            "metric": q.metric.as_str(),
            "limit": q.limit,
            "per_subject": q.subject.is_none(),
            "used": Value::Null,
            "held": Value::Null,
            "remaining": Value::Null,
        });
        if let Some(subject) = &q.subject {
            let start = q.window.map_or(0, |w| w.bounds(now_ms(), q.tz).0);
            let state = app
                .ledger
                .counter_state(&format!("quota:{}:{subject}", q.name), start)
                .await?;
            out["used"] = json!(state.used);
            out["held"] = json!(state.reserved);
            out["remaining"] = json!((q.limit - state.used - state.reserved).max(0));
        }
        data.push(out);
    }
    page_of(&call, data)
}
