//! The admin API under `/admin/v1`: keys, teams, users, budgets, quotas, usage, chargeback,
//! audit, policy, MCP servers, providers, models and admin tokens.
//!
//! One table ([`routes`]) lists every route with its parameters and schemas; the router, the
//! OpenAPI document and the CLI's local mode are all built from it, so none can drift from the
//! others. A handler gets a [`Call`] (who, path parameters, query, body) and answers a [`Reply`]
//! or an [`ApiError`] in the OpenAI error envelope.

mod budgets;
mod gateway;
mod keys;
pub mod openapi;
mod principals;
mod tokens;
mod usage;

pub use gateway::{audit_reloads, reload_audited};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Query, RawPathParams, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::on;
use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::state::AppState;
use crate::store::Store;
use crate::store::admin::ChangeError;

/// Largest admin request body.
const MAX_BODY: usize = 256 * 1024;
/// Default and largest page size.
pub const DEFAULT_LIMIT: i64 = 50;
/// Largest page size.
pub const MAX_LIMIT: i64 = 500;
/// How long a key change waits for running gateways to apply it.
const CONFIRM_WITHIN: Duration = Duration::from_secs(3);
/// An instance whose heartbeat is older than this is considered gone.
const INSTANCE_FRESH_MS: i64 = 5_000;

/// What the admin API works on: the store, and (when served by a gateway) the gateway's live
/// state. The CLI's local mode has only the store.
pub struct Admin {
    /// The store.
    pub store: Store,
    /// The serving gateway; `None` in the CLI's local mode.
    pub gateway: Option<Arc<AppState>>,
}

/// A token's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything.
    Admin,
    /// GET only.
    Read,
}

impl Role {
    /// `admin` or `read`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Read => "read",
        }
    }

    /// Parses a role name.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "admin" => Some(Role::Admin),
            "read" => Some(Role::Read),
            _ => None,
        }
    }
}

/// Who is calling.
#[derive(Debug, Clone)]
pub struct Actor {
    /// Token id: `env` for TOLLGATE_ADMIN_TOKEN, `cli` for the local CLI, or a stored token's id.
    pub id: String,
    /// Role.
    pub role: Role,
}

/// One admin call, as a handler sees it.
#[derive(Debug)]
pub struct Call {
    /// The caller.
    pub actor: Actor,
    /// Path parameters by name.
    pub params: HashMap<String, String>,
    /// Query parameters (each at most once).
    pub query: HashMap<String, String>,
    /// The request body.
    pub body: Bytes,
}

/// A handler's answer.
#[derive(Debug)]
pub enum Reply {
    /// JSON with a status.
    Json(u16, Value),
    /// Another content type (CSV, HTML).
    Text {
        /// `Content-Type`.
        content_type: &'static str,
        /// Body.
        body: String,
    },
}

impl Reply {
    /// 200 with JSON.
    pub fn ok(value: Value) -> Self {
        Reply::Json(200, value)
    }
}

/// An admin error: status, stable code and message, in the OpenAI error envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// Stable code.
    pub code: &'static str,
    /// What went wrong and what to do.
    pub message: String,
    /// `Retry-After` seconds.
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400 `invalid_request`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(400, "invalid_request", message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "not_found", message)
    }

    /// 409 `conflict`.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(409, "conflict", message)
    }

    /// 503 `store_unavailable`.
    pub fn store(e: impl std::fmt::Display) -> Self {
        Self::new(
            503,
            "store_unavailable",
            format!(
                "the store is unavailable: {}",
                crate::store::redact::redact_urls(&e.to_string())
            ),
        )
    }

    /// 409 `gateway_required` for routes that need a running gateway's live state.
    pub fn needs_gateway(what: &str) -> Self {
        Self::new(
            409,
            "gateway_required",
            format!("{what} needs a running gateway: pass --gateway URL --admin-token T"),
        )
    }

    fn kind(&self) -> &'static str {
        match self.status {
            400 | 413 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            409 => "conflict_error",
            429 => "rate_limit_error",
            503 => "service_unavailable",
            _ => "api_error",
        }
    }

    /// The envelope.
    pub fn body(&self) -> Value {
        json!({"error": {"code": self.code, "message": self.message, "type": self.kind()}})
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::store(e)
    }
}

impl From<ChangeError> for ApiError {
    fn from(e: ChangeError) -> Self {
        match e {
            ChangeError::NotFound(m) => ApiError::not_found(m),
            ChangeError::Conflict(m) => ApiError::conflict(m),
            ChangeError::Store(e) => ApiError::store(e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, self.body().to_string()).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(secs) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        response.extensions_mut().insert(crate::error::ErrorDetail {
            code: self.code.to_string(),
            detail: self.message,
        });
        response
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        match self {
            Reply::Json(status, value) => (
                StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
                axum::Json(value),
            )
                .into_response(),
            Reply::Text { content_type, body } => {
                ([(header::CONTENT_TYPE, content_type)], body).into_response()
            }
        }
    }
}

/// A handler.
pub type Handler = fn(Arc<Admin>, Call) -> BoxFuture<'static, Result<Reply, ApiError>>;

/// One query parameter of a route.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    /// Name.
    pub name: &'static str,
    /// What it takes: `string`, `integer` (the page size: 1 to 500), `time` (RFC 3339 or Unix
    /// milliseconds) or `status` (a usage status filter).
    pub kind: &'static str,
    /// Description (allowed values).
    pub description: &'static str,
    /// The only values a `string` parameter takes (empty: any).
    pub values: &'static [&'static str],
}

/// One route of the admin API.
#[derive(Clone)]
pub struct Route {
    /// Method.
    pub method: Method,
    /// Path under `/admin/v1`, with `{name}` parameters.
    pub path: &'static str,
    /// Operation id.
    pub operation: &'static str,
    /// Tag (resource).
    pub tag: &'static str,
    /// One-line summary.
    pub summary: &'static str,
    /// Query parameters accepted (any other is refused).
    pub query: &'static [Param],
    /// Request body schema name.
    pub body: Option<&'static str>,
    /// Success status.
    pub status: u16,
    /// Response schema name (`text/csv`/`text/html` alternatives are described in OpenAPI).
    pub response: &'static str,
    /// Whether it needs a token (only the OpenAPI document does not).
    pub auth: bool,
    /// The handler.
    pub handler: Handler,
}

macro_rules! route {
    ($method:ident $path:literal, $op:literal, $tag:literal, $summary:literal, query: $query:expr, body: $body:expr, $status:literal => $response:literal, $handler:path) => {
        Route {
            method: Method::$method,
            path: $path,
            operation: $op,
            tag: $tag,
            summary: $summary,
            query: $query,
            body: $body,
            status: $status,
            response: $response,
            auth: true,
            handler: |admin, call| Box::pin($handler(admin, call)),
        }
    };
}

const fn p(name: &'static str, kind: &'static str, description: &'static str) -> Param {
    Param {
        name,
        kind,
        description,
        values: &[],
    }
}

/// A string parameter that takes one of `values`.
const fn one_of(
    name: &'static str,
    values: &'static [&'static str],
    description: &'static str,
) -> Param {
    Param {
        name,
        kind: "string",
        description,
        values,
    }
}

const PAGE: [Param; 2] = [
    p("limit", "integer", "Page size: default 50, at most 500."),
    p(
        "cursor",
        "string",
        "The `next_cursor` of the previous page.",
    ),
];

const KEY_LIST: &[Param] = &[
    PAGE[0],
    PAGE[1],
    p("team", "string", "Only keys of this team."),
    p("user", "string", "Only keys of this user."),
    one_of(
        "status",
        &["active", "expired", "revoked"],
        "active, expired or revoked.",
    ),
    p(
        "q",
        "string",
        "Case-insensitive part of the name, or an exact id or prefix.",
    ),
];

const PRINCIPAL_LIST: &[Param] = &[
    PAGE[0],
    PAGE[1],
    p(
        "q",
        "string",
        "Case-insensitive part of the id or name (users: or email).",
    ),
];

const USER_LIST: &[Param] = &[
    PAGE[0],
    PAGE[1],
    p(
        "q",
        "string",
        "Case-insensitive part of the id or name (users: or email).",
    ),
    p("team", "string", "Only users of this team."),
];

const RANGE: [Param; 2] = [
    p(
        "from",
        "time",
        "Start (inclusive): RFC 3339 time or Unix milliseconds.",
    ),
    p(
        "to",
        "time",
        "End (exclusive): RFC 3339 time or Unix milliseconds.",
    ),
];

const USAGE_FILTERS: [Param; 8] = [
    p(
        "status",
        "status",
        "HTTP status (e.g. 429), ok (< 400), error (>= 400), 2xx, 3xx, 4xx or 5xx.",
    ),
    p("provider", "string", "Provider name; `mcp` for MCP calls."),
    p("model", "string", "Requested or served model."),
    p("team", "string", "Team id."),
    p("user", "string", "User id (the key's user)."),
    p("key", "string", "Key id."),
    p(
        "denied_stage",
        "string",
        "The lifecycle stage that refused the call.",
    ),
    p(
        "endpoint",
        "string",
        "Endpoint path (/v1/chat/completions) or family (openai, anthropic, gemini, vllm, unified, mcp).",
    ),
];

const USAGE_LIST: &[Param] = &[
    PAGE[0],
    PAGE[1],
    RANGE[0],
    RANGE[1],
    USAGE_FILTERS[0],
    USAGE_FILTERS[1],
    USAGE_FILTERS[2],
    USAGE_FILTERS[3],
    USAGE_FILTERS[4],
    USAGE_FILTERS[5],
    USAGE_FILTERS[6],
    USAGE_FILTERS[7],
];

const AGGREGATE: &[Param] = &[
    RANGE[0],
    RANGE[1],
    one_of(
        "bucket",
        &["minute", "hour", "day"],
        "minute, hour or day (UTC); without it one row per group.",
    ),
    one_of(
        "group_by",
        &[
            "team", "model", "provider", "key", "user", "status", "endpoint",
        ],
        "team, model, provider, key, user, status or endpoint; without it one row per bucket.",
    ),
    USAGE_FILTERS[0],
    USAGE_FILTERS[1],
    USAGE_FILTERS[2],
    USAGE_FILTERS[3],
    USAGE_FILTERS[4],
    USAGE_FILTERS[5],
    USAGE_FILTERS[6],
    USAGE_FILTERS[7],
];

const CHARGEBACK: &[Param] = &[
    p(
        "from",
        "time",
        "Start (inclusive): RFC 3339 or Unix ms; default the start of the current UTC month.",
    ),
    p(
        "to",
        "time",
        "End (exclusive): RFC 3339 or Unix ms; default now.",
    ),
    one_of(
        "group_by",
        &["team", "key", "model"],
        "team (default), key or model.",
    ),
    one_of(
        "format",
        &["json", "csv", "html"],
        "json (default), csv or html.",
    ),
];

const AUDIT: &[Param] = &[
    PAGE[0],
    PAGE[1],
    RANGE[0],
    RANGE[1],
    p(
        "actor",
        "string",
        "Admin token id (env, cli, system, adm_...).",
    ),
    p(
        "action",
        "string",
        "An action (key.create), or a noun (key) for all its actions.",
    ),
];

const BUDGET_USAGE: &[Param] = &[
    PAGE[0],
    PAGE[1],
    one_of(
        "window",
        &["current", "previous"],
        "current (default) or previous.",
    ),
];

/// Every admin route. The router, the OpenAPI document and the CLI come from this table.
pub fn routes() -> Vec<Route> {
    let mut routes = vec![
        route!(GET "/whoami", "whoami", "auth", "The calling token's id and role.", query: &[], body: None, 200 => "WhoAmI", tokens::whoami),
        route!(GET "/keys", "listKeys", "keys", "List keys (never their secrets).", query: KEY_LIST, body: None, 200 => "KeyList", keys::list),
        route!(POST "/keys", "createKey", "keys", "Create a key; the secret is in this answer only.", query: &[], body: Some("KeyCreate"), 201 => "KeyWithSecret", keys::create),
        route!(GET "/keys/{id}", "getKey", "keys", "One key.", query: &[], body: None, 200 => "Key", keys::get),
        route!(PATCH "/keys/{id}", "updateKey", "keys", "Change a key's name, team, user, metadata, expiry or grants.", query: &[], body: Some("KeyUpdate"), 200 => "Key", keys::update),
        route!(POST "/keys/{id}/revoke", "revokeKey", "keys", "Revoke a key: 401 api_key_revoked from the next request on.", query: &[], body: None, 200 => "Key", keys::revoke),
        route!(POST "/keys/{id}/unrevoke", "unrevokeKey", "keys", "Restore a revoked key.", query: &[], body: None, 200 => "Key", keys::unrevoke),
        route!(POST "/keys/{id}/rotate", "rotateKey", "keys", "Give a key a new secret; the old one stops working.", query: &[], body: None, 200 => "KeyWithSecret", keys::rotate),
        route!(GET "/keys/{id}/rotations", "listKeyRotations", "keys", "A key's rotation history.", query: &PAGE, body: None, 200 => "RotationList", keys::rotations),
        route!(GET "/teams", "listTeams", "teams", "List teams.", query: PRINCIPAL_LIST, body: None, 200 => "TeamList", principals::list_teams),
        route!(POST "/teams", "createTeam", "teams", "Create a team with a chosen id (slug).", query: &[], body: Some("TeamCreate"), 201 => "Team", principals::create_team),
        route!(GET "/teams/{id}", "getTeam", "teams", "One team.", query: &[], body: None, 200 => "Team", principals::get_team),
        route!(PATCH "/teams/{id}", "updateTeam", "teams", "Change a team's name or metadata.", query: &[], body: Some("TeamUpdate"), 200 => "Team", principals::update_team),
        route!(DELETE "/teams/{id}", "deleteTeam", "teams", "Delete a team no key or user refers to.", query: &[], body: None, 200 => "Deleted", principals::delete_team),
        route!(GET "/users", "listUsers", "users", "List users.", query: USER_LIST, body: None, 200 => "UserList", principals::list_users),
        route!(POST "/users", "createUser", "users", "Create a user with a chosen id (slug).", query: &[], body: Some("UserCreate"), 201 => "User", principals::create_user),
        route!(GET "/users/{id}", "getUser", "users", "One user.", query: &[], body: None, 200 => "User", principals::get_user),
        route!(PATCH "/users/{id}", "updateUser", "users", "Change a user's name, email, team or metadata.", query: &[], body: Some("UserUpdate"), 200 => "User", principals::update_user),
        route!(DELETE "/users/{id}", "deleteUser", "users", "Delete a user no key refers to.", query: &[], body: None, 200 => "Deleted", principals::delete_user),
        route!(GET "/budgets", "listBudgets", "budgets", "Budgets (policy-declared and stored) with their current and previous windows.", query: &PAGE, body: None, 200 => "BudgetList", budgets::list),
        route!(POST "/budgets", "createBudget", "budgets", "Create a stored budget.", query: &[], body: Some("BudgetCreate"), 201 => "Budget", budgets::create),
        route!(GET "/budgets/{id}", "getBudget", "budgets", "One budget with its windows.", query: &[], body: None, 200 => "Budget", budgets::get),
        route!(PATCH "/budgets/{id}", "updateBudget", "budgets", "Change a stored budget's limit, time zone or thresholds.", query: &[], body: Some("BudgetUpdate"), 200 => "Budget", budgets::update),
        route!(DELETE "/budgets/{id}", "deleteBudget", "budgets", "Delete a stored budget.", query: &[], body: None, 200 => "Deleted", budgets::delete),
        route!(GET "/budgets/{id}/usage", "listBudgetUsage", "budgets", "The usage rows a budget window counts.", query: BUDGET_USAGE, body: None, 200 => "UsageList", budgets::usage),
        route!(GET "/quotas", "listQuotas", "budgets", "Quotas declared in the policy, with their current window.", query: &PAGE, body: None, 200 => "QuotaList", budgets::quotas),
        route!(GET "/usage", "listUsage", "usage", "Usage rows, newest first.", query: USAGE_LIST, body: None, 200 => "UsageList", usage::list),
        route!(GET "/usage/aggregate", "aggregateUsage", "usage", "Requests, errors, tokens, cost and latency per bucket and group.", query: AGGREGATE, body: None, 200 => "AggregateList", usage::aggregate),
        route!(GET "/usage/{request_id}", "getUsage", "usage", "Every usage row of one request.", query: &[], body: None, 200 => "UsageRows", usage::by_request),
        route!(GET "/chargeback", "chargeback", "usage", "Cost per team, key or model over a period, as JSON, CSV or printable HTML.", query: CHARGEBACK, body: None, 200 => "Chargeback", usage::chargeback),
        route!(GET "/audit", "listAudit", "audit", "Admin changes and policy reloads, newest first.", query: AUDIT, body: None, 200 => "AuditList", tokens::audit),
        route!(GET "/policy", "getPolicy", "gateway", "The serving policy set and its reload status.", query: &[], body: None, 200 => "Policy", gateway::policy),
        route!(POST "/policy/reload", "reloadPolicy", "gateway", "Reload the policy directory now.", query: &[], body: None, 200 => "Policy", gateway::reload),
        route!(GET "/mcp-servers", "listMcpServers", "gateway", "MCP servers (never their credentials).", query: &PAGE, body: None, 200 => "McpServerList", gateway::mcp_servers),
        route!(GET "/providers", "listProviders", "gateway", "Providers and their health (never credentials).", query: &PAGE, body: None, 200 => "ProviderList", gateway::providers),
        route!(GET "/models", "listModels", "gateway", "Models with provider and pricing.", query: &PAGE, body: None, 200 => "ModelList", gateway::models),
        route!(GET "/admin-tokens", "listAdminTokens", "auth", "Stored admin tokens (never their secrets).", query: &PAGE, body: None, 200 => "AdminTokenList", tokens::list),
        route!(POST "/admin-tokens", "createAdminToken", "auth", "Create an admin token (role admin or read); the secret is in this answer only.", query: &[], body: Some("AdminTokenCreate"), 201 => "AdminTokenWithSecret", tokens::create),
        route!(DELETE "/admin-tokens/{id}", "deleteAdminToken", "auth", "Delete an admin token; it stops working at once.", query: &[], body: None, 200 => "Deleted", tokens::delete),
    ];
    let mut doc = route!(GET "/openapi.json", "openapi", "meta", "This OpenAPI 3.1 document (no token needed).", query: &[], body: None, 200 => "OpenApi", openapi::serve);
    doc.auth = false;
    routes.push(doc);
    routes
}

/// The admin router for a serving gateway, to be nested under `/admin/v1`.
pub fn router(app: Arc<AppState>) -> Router {
    build(Arc::new(Admin {
        store: app.store.clone(),
        gateway: Some(app),
    }))
}

fn build(admin: Arc<Admin>) -> Router {
    let mut router: Router<Arc<Admin>> = Router::new();
    for route in routes() {
        let filter = axum::routing::MethodFilter::try_from(route.method.clone())
            .unwrap_or(axum::routing::MethodFilter::GET);
        let r = route.clone();
        router = router.route(
            route.path,
            on(
                filter,
                move |State(admin): State<Arc<Admin>>,
                      params: Result<
                    RawPathParams,
                    axum::extract::rejection::RawPathParamsRejection,
                >,
                      request: Request| {
                    let r = r.clone();
                    let fut: BoxFuture<'static, Response> = Box::pin(async move {
                        let params = params
                            .map(|p| {
                                p.iter()
                                    .map(|(k, v)| (k.to_string(), v.to_string()))
                                    .collect()
                            })
                            .unwrap_or_default();
                        match serve(&admin, &r, params, request).await {
                            Ok(reply) => reply.into_response(),
                            Err(e) => e.into_response(),
                        }
                    });
                    fut
                },
            ),
        );
    }
    router
        .fallback(|request: Request| async move {
            ApiError::not_found(format!(
                "no admin route {} {}",
                request.method(),
                request.uri().path()
            ))
            .into_response()
        })
        .method_not_allowed_fallback(|request: Request| async move {
            ApiError::new(
                405,
                "method_not_allowed",
                format!("method {} is not allowed here", request.method()),
            )
            .into_response()
        })
        .with_state(admin)
}

/// Serves one admin request and writes its access-log line (target `tollgate::admin_access`):
/// who (the token id), which operation, and the outcome, for reads and refusals too. Changes
/// are also in the audit table, with before and after.
async fn serve(
    admin: &Arc<Admin>,
    route: &Route,
    params: HashMap<String, String>,
    request: Request,
) -> Result<Reply, ApiError> {
    let mut who = String::from("unauthenticated");
    let outcome = serve_as(admin, route, params, request, &mut who).await;
    match &outcome {
        Ok(_) => tracing::info!(
            target: "tollgate::admin_access",
            actor = %who, method = %route.method, route = route.path,
            operation = route.operation, status = route.status,
            "admin request"
        ),
        Err(e) => tracing::warn!(
            target: "tollgate::admin_access",
            actor = %who, method = %route.method, route = route.path,
            operation = route.operation, status = e.status, code = e.code,
            "admin request refused"
        ),
    }
    outcome
}

async fn serve_as(
    admin: &Arc<Admin>,
    route: &Route,
    params: HashMap<String, String>,
    request: Request,
    who: &mut String,
) -> Result<Reply, ApiError> {
    let (parts, body) = request.into_parts();
    let actor = if route.auth {
        authenticate(admin, &parts).await?
    } else {
        Actor {
            id: "anonymous".into(),
            role: Role::Read,
        }
    };
    who.clone_from(&actor.id);
    if actor.role == Role::Read && route.method != Method::GET {
        return Err(ApiError::new(
            403,
            "admin_forbidden",
            format!(
                "token '{}' has the read role: it may only GET; {} {} needs an admin token",
                actor.id, route.method, route.path
            ),
        ));
    }
    let query = parse_query(route, &parts.uri)?;
    let body = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        ApiError::new(
            413,
            "request_too_large",
            format!("admin request bodies are limited to {MAX_BODY} bytes"),
        )
    })?;
    let body = match route.body {
        Some(schema) if !body.is_empty() => openapi::conform_body(schema, &body)?,
        _ => body,
    };
    let call = Call {
        actor,
        params,
        query,
        body,
    };
    (route.handler)(admin.clone(), call).await
}

fn parse_query(route: &Route, uri: &axum::http::Uri) -> Result<HashMap<String, String>, ApiError> {
    let pairs: Vec<(String, String)> = match Query::<Vec<(String, String)>>::try_from_uri(uri) {
        Ok(Query(pairs)) => pairs,
        Err(e) => return Err(ApiError::invalid(format!("bad query string: {e}"))),
    };
    let mut query = HashMap::new();
    for (name, value) in pairs {
        if !route.query.iter().any(|p| p.name == name) {
            let known: Vec<&str> = route.query.iter().map(|p| p.name).collect();
            return Err(ApiError::invalid(if known.is_empty() {
                format!(
                    "{} {} takes no query parameters (got '{name}')",
                    route.method, route.path
                )
            } else {
                format!(
                    "unknown query parameter '{name}'; this route takes: {}",
                    known.join(", ")
                )
            }));
        }
        let param = route.query.iter().find(|p| p.name == name);
        if value.is_empty() && param.is_some_and(|p| p.kind != "string" || !p.values.is_empty()) {
            return Err(ApiError::invalid(format!(
                "query parameter '{name}' is empty: give a value or leave it out"
            )));
        }
        if query.insert(name.clone(), value).is_some() {
            return Err(ApiError::invalid(format!(
                "query parameter '{name}' is given more than once"
            )));
        }
    }
    Ok(query)
}

/// Checks the bearer token: the environment's (`env`, admin) or a stored one; a per-client
/// backoff after repeated failures.
async fn authenticate(
    admin: &Admin,
    request: &axum::http::request::Parts,
) -> Result<Actor, ApiError> {
    let Some(app) = &admin.gateway else {
        // The CLI's local mode: the operator holds the database itself.
        return Ok(Actor {
            id: "cli".into(),
            role: Role::Admin,
        });
    };
    let client = request
        .extensions
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    if let Some(wait) = app.admin.backoff(client) {
        return Err(ApiError {
            retry_after: Some(wait),
            ..ApiError::new(
                429,
                "rate_limit_exceeded",
                format!("too many failed admin token attempts from this client; retry in {wait} s"),
            )
        });
    }
    let presented = request
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    if let Some(token) = presented {
        if app.admin.matches_env(token) {
            app.admin.succeeded(client);
            return Ok(Actor {
                id: "env".into(),
                role: Role::Admin,
            });
        }
        if token.starts_with(crate::store::admin::ADMIN_TOKEN_PREFIX)
            && let Some(stored) = admin.store.admin_token_by_secret(token).await?
            && let Some(role) = Role::parse(&stored.role)
        {
            app.admin.succeeded(client);
            return Ok(Actor {
                id: stored.id,
                role,
            });
        }
    }
    app.admin.failed(client);
    Err(ApiError::new(
        401,
        "unauthorized",
        "the admin API needs 'Authorization: Bearer <admin token>' (TOLLGATE_ADMIN_TOKEN or a token from POST /admin/v1/admin-tokens)",
    ))
}

/// Runs one admin request in-process against `store` (the CLI's local mode, actor `cli`):
/// the same routes, validation and audit rows as the HTTP API.
pub async fn call_local(
    store: Store,
    method: Method,
    path_and_query: &str,
    body: Option<Value>,
) -> (u16, String, Bytes) {
    use tower_service::Service as _;
    let mut router = build(Arc::new(Admin {
        store,
        gateway: None,
    }));
    let body = body.map_or_else(axum::body::Body::empty, |b| {
        axum::body::Body::from(b.to_string())
    });
    // The router is the one nested under /admin/v1, which sees paths without that prefix.
    let path_and_query = path_and_query
        .strip_prefix("/admin/v1")
        .unwrap_or(path_and_query);
    let request = match axum::http::Request::builder()
        .method(method)
        .uri(path_and_query)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
    {
        Ok(r) => r,
        Err(e) => {
            let err = ApiError::invalid(format!("bad request: {e}"));
            return (
                400,
                "application/json".into(),
                Bytes::from(err.body().to_string()),
            );
        }
    };
    let response = match router.call(request).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap_or_default();
    (status, content_type, bytes)
}

// ---- helpers shared by the handlers ---------------------------------------------------

impl Call {
    /// A path parameter.
    pub fn param(&self, name: &str) -> String {
        self.params.get(name).cloned().unwrap_or_default()
    }

    /// A query parameter.
    pub fn q(&self, name: &str) -> Option<String> {
        self.query.get(name).filter(|v| !v.is_empty()).cloned()
    }

    /// `limit` (default 50, 1..=500).
    pub fn limit(&self) -> Result<i64, ApiError> {
        match self.q("limit") {
            None => Ok(DEFAULT_LIMIT),
            Some(text) => match text.parse::<i64>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
                _ => Err(ApiError::invalid(format!(
                    "limit '{text}' must be an integer from 1 to {MAX_LIMIT}"
                ))),
            },
        }
    }

    /// A time parameter: RFC 3339 or Unix milliseconds.
    pub fn time(&self, name: &str) -> Result<Option<i64>, ApiError> {
        self.q(name).map(|text| parse_time(name, &text)).transpose()
    }

    /// The JSON body as `T` (unknown fields refused by `T`).
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        if self.body.is_empty() {
            return Err(ApiError::invalid("this route needs a JSON body"));
        }
        serde_json::from_slice(&self.body)
            .map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))
    }
}

/// Refuses text with control characters (a NUL, a newline...): names and grants end up in
/// logs, CSV exports and PostgreSQL `TEXT`, which refuses NUL.
pub fn plain_text(field: &str, text: &str) -> Result<(), ApiError> {
    if text.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(())
}

/// The latest time a parameter takes: 9999-12-31T23:59:59.999Z, in Unix milliseconds.
pub const MAX_TIME_MS: i64 = 253_402_300_799_999;

/// Parses RFC 3339 or Unix milliseconds, from 1970 to the end of year 9999.
pub fn parse_time(name: &str, text: &str) -> Result<i64, ApiError> {
    let ms = match text.parse::<i64>() {
        Ok(ms) => ms,
        Err(_) => chrono::DateTime::parse_from_rfc3339(text)
            .map(|t| t.timestamp_millis())
            .map_err(|_| {
                ApiError::invalid(format!(
                    "{name} '{text}' is neither an RFC 3339 time (2026-11-29T10:00:00Z) nor Unix milliseconds"
                ))
            })?,
    };
    if !(0..=MAX_TIME_MS).contains(&ms) {
        return Err(ApiError::invalid(format!(
            "{name} '{text}' is outside 1970-01-01 to 9999-12-31"
        )));
    }
    Ok(ms)
}

/// A list page.
pub fn page(data: Vec<Value>, next_cursor: Option<String>) -> Reply {
    Reply::ok(json!({"data": data, "next_cursor": next_cursor}))
}

/// A page of a short list held in memory: `cursor` is the offset of the page's first item.
pub fn page_of(call: &Call, data: Vec<Value>) -> Result<Reply, ApiError> {
    let limit = usize::try_from(call.limit()?).unwrap_or(usize::MAX);
    let offset = match call.q("cursor") {
        None => 0,
        Some(c) => c
            .parse::<usize>()
            .map_err(|_| ApiError::invalid(format!("cursor '{c}' is not a cursor of this list")))?,
    };
    let next = (data.len() > offset.saturating_add(limit)).then(|| (offset + limit).to_string());
    Ok(page(
        data.into_iter().skip(offset).take(limit).collect(),
        next,
    ))
}

/// A slug id: 1-64 of `a-z 0-9 - _ .`, starting with a letter or digit.
pub fn valid_slug(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        })
        && id.as_bytes()[0].is_ascii_alphanumeric()
}

/// Waits until every live gateway has applied the current key version, so the change decides
/// the next request everywhere (bounded; a gateway that has not confirmed applies it within a
/// poll of reaching the store).
pub async fn confirm_keys(store: &Store) -> Result<(), ApiError> {
    let version = store.keys_version().await?;
    let deadline = tokio::time::Instant::now() + CONFIRM_WITHIN;
    loop {
        let behind = store.instances_behind(version, INSTANCE_FRESH_MS).await?;
        if behind == 0 || tokio::time::Instant::now() >= deadline {
            if behind > 0 {
                tracing::warn!(
                    behind,
                    "running gateways have not confirmed a key change yet"
                );
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_unique_and_every_path_parameter_is_named() {
        let routes = routes();
        let mut seen = std::collections::HashSet::new();
        for r in &routes {
            assert!(
                seen.insert((r.method.clone(), r.path)),
                "{} {} twice",
                r.method,
                r.path
            );
            assert!(seen.len() < 1000);
        }
        assert!(routes.iter().any(|r| r.path == "/openapi.json" && !r.auth));
    }

    #[test]
    fn slugs_and_times_are_checked() {
        assert!(valid_slug("team-a_1.x"));
        assert!(!valid_slug("Team"));
        assert!(!valid_slug("-a"));
        assert!(!valid_slug(""));
        assert_eq!(parse_time("from", "1000").ok(), Some(1000));
        assert_eq!(parse_time("from", "1970-01-01T00:00:01Z").ok(), Some(1000));
        assert_eq!(
            parse_time("from", "yesterday").map_err(|e| e.code),
            Err("invalid_request")
        );
    }
}
