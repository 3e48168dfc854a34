//! Operational endpoints for load balancers, scrapers and clients: `/healthz` (liveness),
//! `/readyz` (policy loaded, store reachable), `/metrics` (Prometheus text) and the
//! key-validation endpoint `GET /v1/key/info` (also `/v1/validate-key`, reference spec 2.11).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::clock::now_ms;
use crate::error::Family;
use crate::metrics::header as family_header;
use crate::pipeline::{Flow, authenticate};
use crate::state::AppState;

/// How long `/readyz` waits for the store before calling it unreachable.
const STORE_PROBE: Duration = Duration::from_secs(2);

/// `GET /healthz`: the process is up and serving HTTP.
pub async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: 200 when a policy snapshot is loaded and the store answers a query within
/// [`STORE_PROBE`]; 503 with the reason otherwise (a load balancer stops sending traffic).
pub async fn readyz(State(app): State<Arc<AppState>>) -> Response {
    let snapshot = app.policies.snapshot();
    let status = app.policies.status();
    let policy_ok = snapshot.generation > 0;
    let probe = tokio::time::timeout(STORE_PROBE, app.store.keys_version()).await;
    // The store's own error stays in the log: this endpoint answers without authentication.
    let store_error = match probe {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readyz: the store did not answer");
            Some("the store refused the connection or the query".to_string())
        }
        Err(_) => Some(format!(
            "the store did not answer within {} ms",
            STORE_PROBE.as_millis()
        )),
    };
    let backend = match app.store.backend() {
        crate::store::Backend::Sqlite => "sqlite",
        crate::store::Backend::Postgres => "postgres",
    };
    let checks = json!({
        "policy": {
            "ok": policy_ok,
            "generation": snapshot.generation,
            "last_reload_failed": !status.last_errors.is_empty(),
        },
        "store": {"ok": store_error.is_none(), "backend": backend, "error": store_error},
    });
    let reason = match (&store_error, policy_ok) {
        (Some(e), _) => Some(format!("the {backend} store is unreachable: {e}")),
        (None, false) => Some("no policy snapshot is loaded".to_string()),
        (None, true) => None,
    };
    match reason {
        None => Json(json!({"status": "ready", "checks": checks})).into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "reason": reason, "checks": checks})),
        )
            .into_response(),
    }
}

/// The gateway while its store has not answered yet (a PostgreSQL store down at start):
/// `/healthz` is live, `/readyz` answers 503 with the reason, every other request the
/// family-native 503 `store_unavailable` (the store's error and URL stay in the log). Once the
/// store is connected and migrated, every request goes to the full router.
pub struct Starting {
    backend: &'static str,
    policies: Arc<crate::policy::Policies>,
    ready: std::sync::OnceLock<axum::Router>,
    attempts: std::sync::atomic::AtomicU64,
}

impl Starting {
    /// Not ready yet, on a store of `backend` (`postgres`).
    pub fn new(backend: &'static str, policies: Arc<crate::policy::Policies>) -> Self {
        Self {
            backend,
            policies,
            ready: std::sync::OnceLock::new(),
            attempts: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The store answered: `router` serves every request from now on.
    pub fn ready(&self, router: axum::Router) {
        let _ = self.ready.set(router);
    }

    /// Counts a failed attempt to reach the store; returns how many have failed.
    pub fn failed(&self) -> u64 {
        self.attempts.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// The router of a gateway that started without its store ([`Starting`]).
pub fn starting_router(starting: Arc<Starting>) -> axum::Router {
    axum::Router::new()
        .fallback(starting_request)
        .with_state(starting)
}

async fn starting_request(State(starting): State<Arc<Starting>>, request: Request) -> Response {
    use tower_service::Service as _;
    if let Some(router) = starting.ready.get() {
        let mut router = router.clone();
        return match router.call(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
    }
    let path = request.uri().path();
    if path == "/healthz" {
        return "ok".into_response();
    }
    let reason = format!(
        "the {} store is not connected yet: connecting and migrating in the background ({} attempts failed so far)",
        starting.backend,
        starting.attempts.load(Ordering::Relaxed)
    );
    if path == "/readyz" {
        let snapshot = starting.policies.snapshot();
        let checks = json!({
            "policy": {
                "ok": snapshot.generation > 0,
                "generation": snapshot.generation,
                "last_reload_failed": !starting.policies.status().last_errors.is_empty(),
            },
            "store": {"ok": false, "backend": starting.backend, "error": "not connected yet"},
        });
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "reason": reason, "checks": checks})),
        )
            .into_response();
    }
    let request_path = path.to_string();
    let family = if path.starts_with("/v1/messages") {
        Family::Anthropic
    } else if path.starts_with("/v1beta/")
        || (path.starts_with("/v1/models/") && request.method() == axum::http::Method::POST)
    {
        Family::Gemini
    } else {
        family_of(&request)
    };
    let mut response = crate::error::GatewayError::Unavailable(crate::error::UnavailableError {
        code: "store_unavailable",
        what: "the store",
        detail: reason,
    })
    .render(family);
    // The full router's middleware gives every request its id; this answer has none yet.
    let id = uuid::Uuid::new_v4().simple().to_string();
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    tracing::debug!(request_id = %id, path = %request_path, "refused: the store is not connected yet");
    response
}

/// `GET /metrics`: Prometheus text format (needs the admin token with `--protect-metrics`).
pub async fn metrics(State(app): State<Arc<AppState>>, request: Request) -> Response {
    if app.admin.protects_metrics()
        && let Err(e) = super::admin::authorize(&app, &request)
    {
        return e.render(Family::OpenAi);
    }
    let mut out = String::with_capacity(16 * 1024);
    render_gateway(&app, &mut out);
    app.metrics.render(&mut out);
    render_budgets(&app, &mut out).await;
    crate::plugins::metrics::render(&mut out);
    render_runtime(&app, &mut out);
    let mut response = out.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}

/// Tasks alive in the runtime (a leak, e.g. a task per failed call, shows as a climb) and the
/// retries the gateway-wide retry budget allows now.
fn render_runtime(app: &AppState, out: &mut String) {
    let tasks = super::threads::alive_tasks();
    family_header(
        out,
        "tollgate_runtime_alive_tasks",
        "gauge",
        "Tasks alive in the gateway's async runtimes (main and connection threads).",
    );
    let _ = writeln!(out, "tollgate_runtime_alive_tasks {tasks}");
    if let Some(open) = super::threads::open_connections() {
        family_header(
            out,
            "tollgate_connection_thread_connections",
            "gauge",
            "Client connections open on each connection thread.",
        );
        for (thread, open) in open.iter().enumerate() {
            let _ = writeln!(
                out,
                "tollgate_connection_thread_connections{{thread=\"{thread}\"}} {open}"
            );
        }
    }
    family_header(
        out,
        "tollgate_retry_budget_tokens",
        "gauge",
        "Retries the gateway-wide retry budget allows now.",
    );
    let _ = writeln!(
        out,
        "tollgate_retry_budget_tokens {}",
        app.health.retries.balance().floor()
    );
}

/// Policy, key cache, usage writer and ledger counters.
fn render_gateway(app: &AppState, out: &mut String) {
    let snapshot = app.policies.snapshot();
    let status = app.policies.status();
    let stats = app.usage.stats();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, f64)]| {
        family_header(out, name, kind, help);
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
        "Policy loads by result (unchanged: the files were as they were).",
        &[
            ("{result=\"ok\"}", status.reloads_ok as f64),
            ("{result=\"error\"}", status.reloads_failed as f64),
            ("{result=\"unchanged\"}", status.reloads_unchanged as f64),
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
        "tollgate_key_cache_store_lookups_total",
        "counter",
        "Key lookups that reached the store (cache misses; concurrent misses of one key share one).",
        &[("", app.keys.store_lookups() as f64)],
    );
    let enqueued = stats.enqueued.load(Ordering::Relaxed);
    let written = stats.written.load(Ordering::Relaxed);
    metric(
        "tollgate_usage_records_enqueued_total",
        "counter",
        "Usage records handed to the writer.",
        &[("", enqueued as f64)],
    );
    metric(
        "tollgate_usage_records_written_total",
        "counter",
        "Usage records committed to the store.",
        &[("", written as f64)],
    );
    metric(
        "tollgate_usage_queue_depth",
        "gauge",
        "Usage records handed to the writer and not yet committed.",
        &[("", enqueued.saturating_sub(written) as f64)],
    );
    metric(
        "tollgate_usage_flush_failures_total",
        "counter",
        "Failed usage flushes (each retried).",
        &[("", stats.failed_flushes.load(Ordering::Relaxed) as f64)],
    );
    let ledger = &app.ledger.stats;
    for (name, help, value) in [
        (
            "tollgate_budget_holds_total",
            "Requests that took budget or quota holds.",
            &ledger.held,
        ),
        (
            "tollgate_budget_store_holds_total",
            "Requests whose holds took a store round trip (no leased slice admitted them).",
            &ledger.store_holds,
        ),
        (
            "tollgate_budget_refusals_total",
            "Requests refused by a budget (402).",
            &ledger.budget_refusals,
        ),
        (
            "tollgate_quota_refusals_total",
            "Requests refused by a quota or rate limit (429).",
            &ledger.quota_refusals,
        ),
        (
            "tollgate_settlements_total",
            "Holds settled with the real usage.",
            &ledger.settled,
        ),
        (
            "tollgate_holds_reclaimed_total",
            "Expired holds reclaimed by this gateway.",
            &ledger.reclaimed,
        ),
        (
            "tollgate_budget_threshold_events_total",
            "Budget threshold crossings notified.",
            &ledger.alerts,
        ),
        (
            "tollgate_budget_threshold_reads_total",
            "Budget counters read from the store to check thresholds (coalesced per window).",
            &ledger.threshold_reads,
        ),
    ] {
        metric(
            name,
            "counter",
            help,
            &[("", value.load(Ordering::Relaxed) as f64)],
        );
    }
    for (name, help, histogram) in [
        (
            "tollgate_usage_batch_seconds",
            "Time each write of a usage batch to the store took (rows and their charges, one transaction).",
            &stats.batch_time,
        ),
        (
            "tollgate_lease_keeper_tick_lag_seconds",
            "How late the lease keeper's ticks started (shared store; every 25 ms).",
            &ledger.lease_tick_lag,
        ),
        (
            "tollgate_lease_keeper_tick_seconds",
            "Time each of the lease keeper's ticks took, its store calls included (shared store).",
            &ledger.lease_tick_time,
        ),
    ] {
        family_header(out, name, "histogram", help);
        histogram.render(out, name, "");
    }
}

/// Every budget's current window (limit, spent, held, remaining) and the holds outstanding.
/// Read from the ledger at scrape time; a store that cannot answer leaves them out (and says so
/// in `tollgate_budget_scrape_errors`).
async fn render_budgets(app: &AppState, out: &mut String) {
    let snapshot = app.policies.snapshot();
    let mut specs: Vec<crate::spend::BudgetSpec> =
        snapshot.budgets.iter().map(|b| (**b).clone()).collect();
    let mut errors = 0u32;
    match app.store.list_budgets().await {
        Ok(records) => specs.extend(records.iter().filter_map(crate::spend::ledger::stored_spec)),
        Err(e) => {
            errors += 1;
            tracing::warn!(error = %e, "metrics: stored budgets could not be read");
        }
    }
    let now = now_ms();
    let mut rows = Vec::with_capacity(specs.len());
    for spec in &specs {
        let (start, _) = spec.window.bounds(now, spec.tz);
        match app.ledger.counter_state(&spec.counter_id(), start).await {
            Ok(state) => rows.push((spec, state)),
            Err(e) => {
                errors += 1;
                tracing::warn!(error = %e, budget = %spec.id, "metrics: a budget could not be read");
            }
        }
    }
    for (name, help, pick) in [
        (
            "tollgate_budget_limit_usd",
            "Limit of a budget's current window.",
            0,
        ),
        (
            "tollgate_budget_spent_usd",
            "Settled spend in a budget's current window.",
            1,
        ),
        (
            "tollgate_budget_held_usd",
            "Spend held by requests in flight in a budget's current window.",
            2,
        ),
        (
            "tollgate_budget_remaining_usd",
            "What a budget's current window can still hold (limit - spent - held, at least 0).",
            3,
        ),
    ] {
        family_header(out, name, "gauge", help);
        for (spec, state) in &rows {
            let nanos = match pick {
                0 => spec.limit_nanos,
                1 => state.used,
                2 => state.reserved,
                _ => (spec.limit_nanos - state.used - state.reserved).max(0),
            };
            let _ = writeln!(
                out,
                "{name}{{budget=\"{}\",scope=\"{}\",subject=\"{}\",window=\"{}\"}} {}",
                crate::metrics::escape(&spec.id),
                spec.scope.as_str(),
                crate::metrics::escape(&spec.subject),
                spec.window.budget_name(),
                nanos as f64 / 1e9
            );
        }
    }
    match app.ledger.outstanding_holds().await {
        Ok(n) => {
            family_header(
                out,
                "tollgate_holds_outstanding",
                "gauge",
                "Requests holding budget or quota capacity now.",
            );
            let _ = writeln!(out, "tollgate_holds_outstanding {n}");
        }
        Err(e) => {
            errors += 1;
            tracing::warn!(error = %e, "metrics: outstanding holds could not be read");
        }
    }
    family_header(
        out,
        "tollgate_budget_scrape_errors",
        "gauge",
        "Budget figures this scrape could not read from the store.",
    );
    let _ = writeln!(out, "tollgate_budget_scrape_errors {errors}");
}

/// The family whose error shape answers a key presented this way (`x-api-key`: Anthropic;
/// `x-goog-api-key` or `?key=`: Gemini; otherwise OpenAI).
fn family_of(request: &Request) -> Family {
    let headers = request.headers();
    if headers.contains_key(header::AUTHORIZATION) {
        Family::OpenAi
    } else if headers.contains_key("x-api-key") {
        Family::Anthropic
    } else if headers.contains_key("x-goog-api-key")
        || request
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|p| p.starts_with("key=")))
    {
        Family::Gemini
    } else {
        Family::OpenAi
    }
}

fn grant_json(grant: &crate::store::ModelGrant) -> Value {
    match grant {
        crate::store::ModelGrant::All => json!("*"),
        crate::store::ModelGrant::Only(names) => json!(names),
    }
}

/// `GET /v1/key/info` (and `/v1/validate-key`): whether the presented virtual key works, and
/// what it is: its own id, name, team, owner, grants, expiry and the budgets that apply to it
/// with what remains. Never a secret (only the display prefix), never another key. A missing,
/// unknown, expired or revoked key gets the same 401 codes as every other endpoint.
pub async fn key_info(State(app): State<Arc<AppState>>, request: Request) -> Response {
    let family = family_of(&request);
    let key = match authenticate::run(&app, request.headers(), request.uri().query()).await {
        Flow::Continue(key) => key,
        Flow::Respond(error) => return error.render(family),
    };
    let snapshot = app.policies.snapshot();
    let now = now_ms();
    let mut budgets = Vec::new();
    for spec in app.ledger.budgets_for(&snapshot, &key) {
        let (start, end) = spec.window.bounds(now, spec.tz);
        let state = match app.ledger.counter_state(&spec.counter_id(), start).await {
            Ok(state) => state,
            Err(e) => {
                return crate::error::GatewayError::Unavailable(crate::error::UnavailableError {
                    code: "budget_unavailable",
                    what: "the budget store",
                    detail: e.to_string(),
                })
                .render(family);
            }
        };
        let remaining = (spec.limit_nanos - state.used - state.reserved).max(0);
        budgets.push(json!({
            "id": spec.id,
            "scope": spec.scope.as_str(),
            "subject": spec.subject,
            "window": spec.window.budget_name(),
            "window_start_ms": start,
            "window_end_ms": (end != i64::MAX).then_some(end),
            "limit_usd": spec.limit_nanos as f64 / 1e9,
            "spent_usd": state.used as f64 / 1e9,
            "held_usd": state.reserved as f64 / 1e9,
            "remaining_usd": remaining as f64 / 1e9,
            "remaining_nanos": remaining,
        }));
    }
    let models: Vec<&String> = snapshot
        .models
        .keys()
        .chain(snapshot.groups.keys())
        .filter(|name| key.models.allows(name))
        .collect();
    Json(json!({
        "valid": true,
        "key": {
            "id": key.id,
            "name": key.name,
            "team": key.team,
            "owner": key.owner,
            "secret_prefix": key.secret_prefix,
            "created_at_ms": key.created_at_ms,
            "expires_at_ms": key.expires_at_ms,
            "rotations": key.rotations,
        },
        "grants": {
            "models": grant_json(&key.models),
            "mcp": grant_json(&key.mcp),
        },
        "models": models,
        "budgets": budgets,
    }))
    .into_response()
}
