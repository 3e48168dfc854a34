//! Admin endpoints: `/admin/policies` (status and reload), `/admin/budgets` and the test clock.
//! (`/metrics` lives in [`super::ops`].)
//!
//! The admin token is checked by [`crate::admin_auth`]: constant time, a backoff after repeated
//! failures (429 with `Retry-After`); `/metrics` needs it too with `--protect-metrics`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::admin_auth::{self, Check};
use crate::error::{Family, GatewayError, QuotaExceeded};
use crate::state::AppState;

/// Checks the admin bearer token (constant time, with a per-client backoff on failures).
pub(crate) fn authorize(app: &AppState, request: &Request) -> Result<(), GatewayError> {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let client = request
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    match app.admin.check(client, presented) {
        Check::Allowed => Ok(()),
        Check::Disabled => Err(GatewayError::Admin {
            status: 404,
            message: "the admin API is disabled: start the gateway with TOLLGATE_ADMIN_TOKEN set"
                .into(),
        }),
        Check::Denied => Err(GatewayError::Admin {
            status: 401,
            message: "admin endpoints need 'Authorization: Bearer <admin token>'".into(),
        }),
        Check::Backoff(retry_after_secs) => {
            let failures = i64::from(admin_auth::FREE_FAILURES);
            Err(GatewayError::Quota(Box::new(QuotaExceeded {
                code: "rate_limit_exceeded",
                scope: "admin",
                subject: client.map(|ip| ip.to_string()).unwrap_or_default(),
                limit_name: "admin_token_failures".into(),
                limit: failures,
                used: failures,
                reserved: 0,
                retry_after_secs,
            })))
        }
    }
}

fn status_json(app: &AppState) -> Value {
    let snapshot = app.policies.snapshot();
    let status = app.policies.status();
    json!({
        "dir": snapshot.dir.display().to_string(),
        "generation": snapshot.generation,
        "loaded_at_ms": snapshot.loaded_at_ms,
        "content_hash": snapshot.content_hash,
        "models": snapshot.models.keys().collect::<Vec<_>>(),
        "groups": snapshot.groups.keys().collect::<Vec<_>>(),
        "access_rules": snapshot.access_rules.iter().map(|r| json!({
            "name": r.name,
            "mode": match r.mode { crate::policy::cel::RuleMode::Enforce => "enforce", crate::policy::cel::RuleMode::Shadow => "shadow" },
            "description": r.description,
        })).collect::<Vec<_>>(),
        "routing_scripts": snapshot.routing.keys().collect::<Vec<_>>(),
        "plugins": snapshot.plugins.iter().map(|p| json!({
            "name": p.name,
            "description": p.description,
            "phases": p.phases.iter().map(|ph| ph.as_str()).collect::<Vec<_>>(),
            "failure_mode": p.failure_mode.as_str(),
            "wasm": p.wasm_path.display().to_string(),
            "wasm_sha256": p.wasm_hash,
            "warm_instances": p.instances.idle(),
        })).collect::<Vec<_>>(),
        "reloads_ok": status.reloads_ok,
        "reloads_failed": status.reloads_failed,
        "reloads_unchanged": status.reloads_unchanged,
        "last_error": if status.last_errors.is_empty() { Value::Null } else {
            json!({"at_ms": status.last_error_at_ms, "errors": status.last_errors})
        },
    })
}

/// `GET /admin/policies`: generation, load time, content hash, rules, scripts and the last
/// reload error (cleared by the next successful load).
pub async fn policies(State(app): State<Arc<AppState>>, request: Request) -> Response {
    if let Err(e) = authorize(&app, &request) {
        return e.render(Family::OpenAi);
    }
    Json(status_json(&app)).into_response()
}

/// `POST /admin/policies/reload`: reloads now and returns the resulting status.
pub async fn reload(State(app): State<Arc<AppState>>, request: Request) -> Response {
    if let Err(e) = authorize(&app, &request) {
        return e.render(Family::OpenAi);
    }
    if let Err(e) = crate::admin::reload_audited(&app, "env").await {
        return store_down(e);
    }
    Json(status_json(&app)).into_response()
}

/// `GET /admin/budgets`: every budget (policy-declared and stored) with its current window.
pub async fn list_budgets(State(app): State<Arc<AppState>>, request: Request) -> Response {
    if let Err(e) = authorize(&app, &request) {
        return e.render(Family::OpenAi);
    }
    let snapshot = app.policies.snapshot();
    let stored = match app.store.list_budgets().await {
        Ok(records) => records,
        Err(e) => return store_down(e),
    };
    let mut specs: Vec<crate::spend::BudgetSpec> =
        snapshot.budgets.iter().map(|b| (**b).clone()).collect();
    specs.extend(stored.iter().filter_map(crate::spend::ledger::stored_spec));
    let mut views = Vec::new();
    for spec in &specs {
        match app.ledger.budget_view(spec).await {
            Ok(v) => views.push(v),
            Err(e) => return store_down(e),
        }
    }
    Json(json!({"budgets": views})).into_response()
}

/// `GET /admin/budgets/{id}`.
pub async fn show_budget(
    State(app): State<Arc<AppState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    request: Request,
) -> Response {
    if let Err(e) = authorize(&app, &request) {
        return e.render(Family::OpenAi);
    }
    let snapshot = app.policies.snapshot();
    let spec = match snapshot.budgets.iter().find(|b| b.id == id) {
        Some(b) => Some((**b).clone()),
        None => match app.store.list_budgets().await {
            Ok(records) => records
                .iter()
                .find(|r| r.id == id)
                .and_then(crate::spend::ledger::stored_spec),
            Err(e) => return store_down(e),
        },
    };
    let Some(spec) = spec else {
        return GatewayError::NotFound(format!("budget {id}")).render(Family::OpenAi);
    };
    match app.ledger.budget_view(&spec).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => store_down(e),
    }
}

/// The body of `PUT /admin/budgets`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetBody {
    scope: String,
    #[serde(default)]
    subject: String,
    window: String,
    limit_usd: f64,
    #[serde(default = "utc")]
    timezone: String,
    #[serde(default = "thresholds")]
    thresholds: Vec<u32>,
}

fn utc() -> String {
    "UTC".into()
}

fn thresholds() -> Vec<u32> {
    vec![50, 80, 100]
}

/// `PUT /admin/budgets`: creates or updates the budget for (scope, subject, window).
pub async fn set_budget(State(app): State<Arc<AppState>>, request: Request) -> Response {
    if let Err(e) = authorize(&app, &request) {
        return e.render(Family::OpenAi);
    }
    let bytes = match axum::body::to_bytes(request.into_body(), 64 * 1024).await {
        Ok(b) => b,
        Err(e) => {
            return GatewayError::from(crate::error::RequestError::UnreadableBody(e.to_string()))
                .render(Family::OpenAi);
        }
    };
    let body: BudgetBody = match serde_json::from_slice(&bytes) {
        Ok(b) => b,
        Err(e) => {
            return GatewayError::from(crate::error::RequestError::Invalid(e.to_string()))
                .render(Family::OpenAi);
        }
    };
    let record = match crate::spend::ledger::budget_record(
        &body.scope,
        &body.subject,
        &body.window,
        body.limit_usd,
        &body.timezone,
        body.thresholds,
    ) {
        Ok(r) => r,
        Err(message) => {
            return GatewayError::from(crate::error::RequestError::Invalid(message))
                .render(Family::OpenAi);
        }
    };
    let saved = match app.store.set_budget(&record).await {
        Ok(saved) => saved,
        Err(e) => return store_down(e),
    };
    let after = json!({"id": saved.id, "scope": saved.scope, "subject": saved.subject,
        "window": saved.window, "limit_nanos": saved.limit_nanos, "timezone": saved.timezone,
        "thresholds": saved.thresholds});
    if let Err(e) = app
        .store
        .audit("env", "budget.set", Some(&saved.id), None, Some(&after))
        .await
    {
        return store_down(e);
    }
    if let Err(e) = app.ledger.refresh_budgets().await {
        return store_down(e);
    }
    match crate::spend::ledger::stored_spec(&saved) {
        Some(spec) => match app.ledger.budget_view(&spec).await {
            Ok(v) => Json(v).into_response(),
            Err(e) => store_down(e),
        },
        None => GatewayError::Routing("stored budget could not be read back".into())
            .render(Family::OpenAi),
    }
}

/// `DELETE /admin/budgets/{id}`.
pub async fn delete_budget(
    State(app): State<Arc<AppState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    request: Request,
) -> Response {
    if let Err(e) = authorize(&app, &request) {
        return e.render(Family::OpenAi);
    }
    match app.store.delete_budget(&id).await {
        Ok(true) => {
            if let Err(e) = app
                .store
                .audit("env", "budget.delete", Some(&id), None, None)
                .await
            {
                return store_down(e);
            }
            let _ = app.ledger.refresh_budgets().await;
            Json(json!({"deleted": id})).into_response()
        }
        Ok(false) => GatewayError::NotFound(format!(
            "budget {id} (policy-declared budgets are removed from gateway.toml)"
        ))
        .render(Family::OpenAi),
        Err(e) => store_down(e),
    }
}

fn store_down(e: crate::store::StoreError) -> Response {
    GatewayError::Unavailable(crate::error::UnavailableError {
        code: "store_unavailable",
        what: "the store",
        detail: e.to_string(),
    })
    .render(Family::OpenAi)
}

/// `POST /admin/test/clock` `{"offset_ms": N}`: shifts the gateway clock (only with
/// `--unsafe-test-clock`; for tests of budget and quota windows).
pub async fn test_clock(State(app): State<Arc<AppState>>, request: Request) -> Response {
    if let Err(e) = authorize(&app, &request) {
        return e.render(Family::OpenAi);
    }
    if !app.test_clock {
        return GatewayError::NotFound(
            "POST /admin/test/clock (start with --unsafe-test-clock)".into(),
        )
        .render(Family::OpenAi);
    }
    let bytes = axum::body::to_bytes(request.into_body(), 1024)
        .await
        .unwrap_or_default();
    let offset = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v.get("offset_ms").and_then(Value::as_i64));
    let Some(offset) = offset else {
        return GatewayError::from(crate::error::RequestError::Invalid(
            "expected {\"offset_ms\": N}".into(),
        ))
        .render(Family::OpenAi);
    };
    crate::clock::set_offset_ms(offset);
    Json(json!({"offset_ms": crate::clock::offset_ms(), "now_ms": crate::clock::now_ms()}))
        .into_response()
}
