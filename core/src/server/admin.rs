//! Operational endpoints: `/admin/policies` (status and reload) and `/metrics` (Prometheus).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;
use crate::error::{Family, GatewayError};
use crate::policy::watch::{self as policy_watch, Trigger};

/// Checks the admin bearer token in constant time.
fn authorize(app: &AppState, request: &Request) -> Result<(), GatewayError> {
    let Some(expected) = app.admin_token.as_deref() else {
        return Err(GatewayError::Admin {
            status: 404,
            message: "the admin API is disabled: start the gateway with TOLLGATE_ADMIN_TOKEN set"
                .into(),
        });
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let equal = presented.len() == expected.len()
        && presented
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if equal {
        Ok(())
    } else {
        Err(GatewayError::Admin {
            status: 401,
            message: "admin endpoints need 'Authorization: Bearer <admin token>'".into(),
        })
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
        "reloads_ok": status.reloads_ok,
        "reloads_failed": status.reloads_failed,
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
    policy_watch::reload(&app.policies, Trigger::Admin).await;
    Json(status_json(&app)).into_response()
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    let snapshot = app.policies.snapshot();
    let status = app.policies.status();
    let stats = app.usage.stats();
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    metric(
        "tollgate_policy_generation",
        "gauge",
        "Generation of the serving policy snapshot.",
        &[("", snapshot.generation as f64)],
    );
    metric(
        "tollgate_policy_loaded_at_seconds",
        "gauge",
        "When the serving policy snapshot was loaded.",
        &[("", snapshot.loaded_at_ms as f64 / 1000.0)],
    );
    metric(
        "tollgate_policy_reloads_total",
        "counter",
        "Policy loads by result.",
        &[
            ("{result=\"ok\"}", status.reloads_ok as f64),
            ("{result=\"error\"}", status.reloads_failed as f64),
        ],
    );
    metric(
        "tollgate_policy_last_reload_failed",
        "gauge",
        "1 while the last reload attempt was rejected (the previous set keeps serving).",
        &[(
            "",
            if status.last_errors.is_empty() {
                0.0
            } else {
                1.0
            },
        )],
    );
    metric(
        "tollgate_usage_records_enqueued_total",
        "counter",
        "Usage records handed to the writer.",
        &[("", stats.enqueued.load(Ordering::Relaxed) as f64)],
    );
    metric(
        "tollgate_usage_records_written_total",
        "counter",
        "Usage records committed to the store.",
        &[("", stats.written.load(Ordering::Relaxed) as f64)],
    );
    metric(
        "tollgate_usage_flush_failures_total",
        "counter",
        "Failed usage flushes (each retried).",
        &[("", stats.failed_flushes.load(Ordering::Relaxed) as f64)],
    );
    let mut response = out.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}
