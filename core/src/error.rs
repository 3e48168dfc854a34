//! Gateway errors: small domain enums, one mapping to status + stable code, family-native bodies.
//!
//! Every error a client can see has a stable machine `code` (see DESIGN.md and section 4 of the
//! reference specification) and a human message. [`GatewayError::render`] is the single place
//! that turns an error into an HTTP response; it has no side effects (logging happens in the
//! server middleware, recording in the record stage).
//!
//! A client sees a stable code and a message, never internal detail: the upstream URL and the
//! HTTP client's error chain, raw database errors and anything else that describes the inside
//! of the gateway stay in [`GatewayError`]'s `Display`, which the response carries to the logging
//! middleware as an [`ErrorDetail`] extension (never serialized).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

pub use crate::family::Family;

/// Authentication failures (401 on every endpoint family).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No key in any accepted header or query parameter.
    #[error(
        "missing API key: send it as 'Authorization: Bearer <key>', 'x-api-key', 'x-goog-api-key' or '?key='"
    )]
    Missing,
    /// A key that is malformed or not known to the store.
    #[error("invalid API key")]
    Unknown,
    /// A known key past its expiry.
    #[error("API key has expired")]
    Expired,
    /// A known key that was revoked.
    #[error("API key has been revoked")]
    Revoked,
}

/// The request itself cannot be served as sent (400 / 413).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    /// The body could not be read from the connection.
    #[error("request body could not be read: {0}")]
    UnreadableBody(String),
    /// The body is larger than the configured limit.
    #[error("request body exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The configured limit in bytes.
        limit: usize,
    },
    /// The body is not valid JSON or a field has the wrong type.
    #[error("{0}")]
    Invalid(String),
}

/// Authorization failures: the model, its provider, and the key's grants.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AccessError {
    /// No model with that name in the policy directory.
    #[error("model not found: '{0}' is not configured in this gateway")]
    ModelNotFound(String),
    /// A native endpoint was called with a model of another provider family.
    #[error(
        "model '{model}' is served by a '{family}' provider and cannot be called on this endpoint"
    )]
    ProviderNotAllowed {
        /// The requested model.
        model: String,
        /// The family of the model's provider.
        family: String,
    },
    /// The key has no Model Access grant for the model.
    #[error("model not allowed: this API key has no access to model '{0}'")]
    ModelNotAllowed(String),
    /// The model's provider is switched off.
    #[error("provider '{0}' is disabled")]
    ProviderDisabled(String),
    /// The model's provider has no usable credential.
    #[error("provider '{0}' has no usable credential configured")]
    ProviderCredentialMissing(String),
    /// The client's address is outside the networks a limit allows, or inside a denied one.
    #[error("the client address is not allowed by the {scope} network limits")]
    IpNotAllowed {
        /// `organization`, `team` or `key`.
        scope: &'static str,
        /// The team or key id the limit belongs to (empty for the organization).
        subject: String,
    },
    /// A CEL access rule denied the request (or failed to evaluate: fail closed).
    #[error("denied by access rule '{rule}'{}", reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default())]
    PolicyDenied {
        /// The rule's name (its file stem).
        rule: String,
        /// The rule's reason, or the evaluation error.
        reason: Option<String>,
        /// The status the rule asked for (403 by default).
        status: u16,
    },
}

/// Upstream failures after the request was accepted.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum UpstreamError {
    /// The provider could not be reached (connect, TLS, reset).
    #[error("provider '{provider}' is unreachable: {detail}")]
    Unreachable {
        /// Provider name.
        provider: String,
        /// What went wrong, without secrets.
        detail: String,
    },
    /// The provider refused the gateway's own credential (401 / 403).
    #[error("provider '{provider}' refused the gateway's credential (status {status})")]
    CredentialRejected {
        /// Provider name.
        provider: String,
        /// Upstream status code.
        status: u16,
    },
    /// The provider answered with a server error.
    #[error("provider '{provider}' answered with status {status}")]
    ServerError {
        /// Provider name.
        provider: String,
        /// Upstream status code.
        status: u16,
    },
    /// The provider answered with something that cannot be relayed.
    #[error("provider '{provider}' sent an unusable response: {detail}")]
    BadResponse {
        /// Provider name.
        provider: String,
        /// What was wrong with it.
        detail: String,
    },
    /// The provider did not answer within its timeout.
    #[error("provider '{provider}' did not answer within {timeout_ms} ms")]
    Timeout {
        /// Provider name.
        provider: String,
        /// The timeout that elapsed.
        timeout_ms: u64,
    },
    /// A provider-adapter plugin refused to translate (`adapter_error`) or failed: trapped, ran
    /// out of time or memory (`adapter_failed`).
    #[error("provider '{provider}': adapter '{adapter}' {detail}")]
    Adapter {
        /// Provider name.
        provider: String,
        /// The adapter plugin's name.
        adapter: String,
        /// `adapter_error` or `adapter_failed`.
        code: &'static str,
        /// What went wrong (the adapter's own code and message, or the failure).
        detail: String,
    },
}

/// MCP gateway failures (reference spec 4.4).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum McpError {
    /// The path names no server (400 `invalid_mcp_ref`).
    #[error("the MCP path names no server: use /v1/mcp/{{slug}}")]
    InvalidRef,
    /// Unknown or disabled server (404 `mcp_not_found`).
    #[error("MCP server '{0}' is not configured or is disabled")]
    NotFound(String),
    /// No MCP Access grant for the server (403 `mcp_not_allowed`).
    #[error("this API key has no MCP Access to server '{0}'")]
    NotAllowed(String),
    /// The key has the grant but is outside the server's Team Scope and API Key Scope (403
    /// `mcp_not_allowed`).
    #[error("MCP server '{0}' is scoped to other teams and keys than this API key's")]
    OutOfScope(String),
    /// A tool rule or the keyword filter denied a call (403 `mcp_guardrail_block`).
    #[error("blocked by the MCP guardrail of server '{server}': {reason}")]
    GuardrailBlock {
        /// The server slug.
        server: String,
        /// Which rule denied (never the matched content beyond the keyword itself).
        reason: String,
    },
    /// Upstream credential could not be prepared (502 `mcp_auth_error`).
    #[error("could not prepare the upstream credential of MCP server '{server}': {detail}")]
    Auth {
        /// The server slug.
        server: String,
        /// What went wrong, without secrets.
        detail: String,
    },
    /// The HTTP or SSE upstream failed (502 `mcp_upstream_error`).
    #[error("MCP server '{server}' failed: {detail}")]
    Upstream {
        /// The server slug.
        server: String,
        /// What went wrong.
        detail: String,
    },
    /// The stdio command failed (502 `mcp_stdio_error`).
    #[error("the stdio command of MCP server '{server}' failed: {detail}")]
    Stdio {
        /// The server slug.
        server: String,
        /// What went wrong.
        detail: String,
    },
    /// A session id that this gateway did not issue, or that expired (404 `mcp_session_not_found`,
    /// so clients re-initialise).
    #[error("unknown or expired MCP session: initialize a new one")]
    SessionNotFound,
}

/// A store needed for a decision is unavailable: fail closed (503).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{what} is unavailable, refusing to serve ungoverned: {detail}")]
pub struct UnavailableError {
    /// Stable code, e.g. `auth_unavailable`.
    pub code: &'static str,
    /// Which capability is down.
    pub what: &'static str,
    /// Error detail (never secrets).
    pub detail: String,
}

/// A guardrail plugin refused the traffic (403): its own denial, or its failure when it fails
/// closed. The message names the plugin and the finding categories, never the matched text.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("blocked by guardrail '{plugin}'{}: {reason}", if categories.is_empty() { String::new() } else { format!(" ({})", categories.join(", ")) })]
pub struct GuardrailError {
    /// The plugin's name (its manifest's file stem).
    pub plugin: String,
    /// `safety_blocked`, `plugin_blocked` (failed closed) or the plugin's own code.
    pub code: String,
    /// Finding categories (never content).
    pub categories: Vec<String>,
    /// The plugin's reason.
    pub reason: String,
}

/// A budget could not hold the worst-case cost of the call (402).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetExceeded {
    /// The budget's id.
    pub budget_id: String,
    /// `organization`, `team`, `user`, `key`.
    pub scope: &'static str,
    /// Team, owner or key id.
    pub subject: String,
    /// `daily`, `weekly`, `monthly`, `lifetime`.
    pub window: &'static str,
    /// Limit (nano-USD).
    pub limit_nanos: i64,
    /// Settled spend in the window (nano-USD).
    pub spent_nanos: i64,
    /// Held by in-flight calls (nano-USD).
    pub reserved_nanos: i64,
    /// What this call needed to hold (nano-USD).
    pub requested_nanos: i64,
    /// When the window resets (Unix ms), if it does.
    pub resets_at_ms: Option<i64>,
}

impl BudgetExceeded {
    fn remaining_nanos(&self) -> i64 {
        (self.limit_nanos - self.spent_nanos - self.reserved_nanos).max(0)
    }
}

/// A quota or rate limit is full (429).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaExceeded {
    /// `quota_exceeded` or `rate_limit_exceeded`.
    pub code: &'static str,
    /// `organization`, `team`, `user`, `key`, `model`.
    pub scope: &'static str,
    /// The team, key, model... it counts for.
    pub subject: String,
    /// e.g. `requests_per_minute`, `concurrency`, `ip`.
    pub limit_name: String,
    /// The limit.
    pub limit: i64,
    /// Used in the window.
    pub used: i64,
    /// Held by in-flight calls.
    pub reserved: i64,
    /// Seconds until a retry can succeed (0: not a matter of time).
    pub retry_after_secs: u64,
}

/// What the logs get about an error the client saw without its internal detail.
#[derive(Debug, Clone)]
pub struct ErrorDetail {
    /// The stable code.
    pub code: String,
    /// The full description, with passwords in URLs redacted.
    pub detail: String,
}

fn usd(nanos: i64) -> f64 {
    nanos as f64 / 1e9
}

/// Everything the gateway itself can answer with instead of an upstream response.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum GatewayError {
    /// 401.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// 400 / 413.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// 400 / 403.
    #[error(transparent)]
    Access(#[from] AccessError),
    /// 502 / 504.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// 503.
    #[error(transparent)]
    Unavailable(#[from] UnavailableError),
    /// 403 from a guardrail plugin.
    #[error(transparent)]
    Guardrail(#[from] GuardrailError),
    /// MCP gateway errors.
    #[error(transparent)]
    Mcp(#[from] McpError),
    /// 404 for an unknown route.
    #[error("no route for {0}")]
    NotFound(String),
    /// 405 for a known route called with another method.
    #[error("method not allowed: {0}")]
    MethodNotAllowed(String),
    /// A routing script failed and its failure mode is to fail closed (500).
    #[error("{0}")]
    Routing(String),
    /// A budget cannot hold the call (402 `budget_exceeded`).
    #[error(
        "budget exceeded: the {} {} budget{} has {:.6} USD left of {:.6} USD and this call may cost up to {:.6} USD",
        .0.window, .0.scope, if .0.subject.is_empty() { String::new() } else { format!(" of '{}'", .0.subject) },
        usd(.0.remaining_nanos()), usd(.0.limit_nanos), usd(.0.requested_nanos)
    )]
    Budget(Box<BudgetExceeded>),
    /// A quota or rate limit is full (429).
    #[error(
        "{} limit of {} reached for {} '{}'{}",
        .0.limit_name, .0.limit, .0.scope, .0.subject,
        if .0.retry_after_secs > 0 { format!("; retry in {} s", .0.retry_after_secs) } else { String::new() }
    )]
    Quota(Box<QuotaExceeded>),
    /// An admin endpoint was called without the admin token (401) or while disabled (404).
    #[error("{message}")]
    Admin {
        /// 401 or 404.
        status: u16,
        /// What to do.
        message: String,
    },
}

impl GatewayError {
    /// The HTTP status the client sees.
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::Auth(_) => StatusCode::UNAUTHORIZED,
            GatewayError::Request(RequestError::TooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::Request(_) => StatusCode::BAD_REQUEST,
            GatewayError::Access(e) => match e {
                AccessError::ModelNotFound(_)
                | AccessError::ProviderNotAllowed { .. }
                | AccessError::ProviderCredentialMissing(_) => StatusCode::BAD_REQUEST,
                AccessError::ModelNotAllowed(_)
                | AccessError::ProviderDisabled(_)
                | AccessError::IpNotAllowed { .. } => StatusCode::FORBIDDEN,
                AccessError::PolicyDenied { status, .. } => {
                    StatusCode::from_u16(*status).unwrap_or(StatusCode::FORBIDDEN)
                }
            },
            GatewayError::Upstream(UpstreamError::Timeout { .. }) => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::Upstream(_) => StatusCode::BAD_GATEWAY,
            GatewayError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::Guardrail(_) => StatusCode::FORBIDDEN,
            GatewayError::Mcp(e) => match e {
                McpError::InvalidRef => StatusCode::BAD_REQUEST,
                McpError::NotFound(_) | McpError::SessionNotFound => StatusCode::NOT_FOUND,
                McpError::NotAllowed(_)
                | McpError::OutOfScope(_)
                | McpError::GuardrailBlock { .. } => StatusCode::FORBIDDEN,
                McpError::Auth { .. } | McpError::Upstream { .. } | McpError::Stdio { .. } => {
                    StatusCode::BAD_GATEWAY
                }
            },
            GatewayError::NotFound(_) => StatusCode::NOT_FOUND,
            GatewayError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::Routing(_) => StatusCode::INTERNAL_SERVER_ERROR,
            GatewayError::Budget(_) => StatusCode::PAYMENT_REQUIRED,
            GatewayError::Quota(_) => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::Admin { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::UNAUTHORIZED)
            }
        }
    }

    /// The stable machine code (also the low-cardinality `kind` for metrics). Guardrail
    /// plugins may choose their own (`[a-z][a-z0-9_]*`), hence the borrow.
    pub fn code(&self) -> &str {
        match self {
            GatewayError::Auth(e) => match e {
                AuthError::Missing | AuthError::Unknown => "unauthorized",
                AuthError::Expired => "api_key_expired",
                AuthError::Revoked => "api_key_revoked",
            },
            GatewayError::Request(e) => match e {
                RequestError::UnreadableBody(_) => "invalid_request_body",
                RequestError::TooLarge { .. } => "request_too_large",
                RequestError::Invalid(_) => "invalid_request",
            },
            GatewayError::Access(e) => match e {
                AccessError::ModelNotFound(_) => "model_not_found",
                AccessError::ProviderNotAllowed { .. } => "provider_not_allowed",
                AccessError::ModelNotAllowed(_) => "model_not_allowed",
                AccessError::ProviderDisabled(_) => "provider_disabled",
                AccessError::ProviderCredentialMissing(_) => "provider_api_key_not_configured",
                AccessError::PolicyDenied { .. } => "policy_denied",
                AccessError::IpNotAllowed { .. } => "ip_not_allowed",
            },
            GatewayError::Upstream(e) => match e {
                UpstreamError::Timeout { .. } => "upstream_timeout",
                UpstreamError::Adapter { code, .. } => code,
                _ => "upstream_error",
            },
            GatewayError::Unavailable(e) => e.code,
            GatewayError::Guardrail(e) => &e.code,
            GatewayError::Mcp(e) => match e {
                McpError::InvalidRef => "invalid_mcp_ref",
                McpError::NotFound(_) => "mcp_not_found",
                McpError::NotAllowed(_) | McpError::OutOfScope(_) => "mcp_not_allowed",
                McpError::GuardrailBlock { .. } => "mcp_guardrail_block",
                McpError::Auth { .. } => "mcp_auth_error",
                McpError::Upstream { .. } => "mcp_upstream_error",
                McpError::Stdio { .. } => "mcp_stdio_error",
                McpError::SessionNotFound => "mcp_session_not_found",
            },
            GatewayError::NotFound(_) => "not_found",
            GatewayError::MethodNotAllowed(_) => "method_not_allowed",
            GatewayError::Routing(_) => "routing_error",
            GatewayError::Budget(_) => "budget_exceeded",
            GatewayError::Quota(q) => q.code,
            GatewayError::Admin { status: 404, .. } => "admin_disabled",
            GatewayError::Admin { .. } => "unauthorized",
        }
    }

    /// Whether trying another deployment could succeed (used by routing and failover).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            GatewayError::Upstream(
                UpstreamError::Unreachable { .. }
                    | UpstreamError::ServerError { .. }
                    | UpstreamError::CredentialRejected { .. }
                    | UpstreamError::Timeout { .. }
            )
        )
    }

    /// The OpenAI-style `type` field.
    fn openai_type(&self) -> &'static str {
        match self {
            GatewayError::Auth(_) => "authentication_error",
            GatewayError::Request(_)
            | GatewayError::NotFound(_)
            | GatewayError::MethodNotAllowed(_) => "invalid_request_error",
            GatewayError::Access(AccessError::ModelNotAllowed(_))
            | GatewayError::Access(AccessError::ProviderDisabled(_))
            | GatewayError::Access(AccessError::PolicyDenied { .. })
            | GatewayError::Access(AccessError::IpNotAllowed { .. })
            | GatewayError::Guardrail(_) => "permission_error",
            GatewayError::Access(_) => "invalid_request_error",
            GatewayError::Mcp(e) => match e {
                McpError::InvalidRef | McpError::NotFound(_) | McpError::SessionNotFound => {
                    "invalid_request_error"
                }
                McpError::NotAllowed(_)
                | McpError::OutOfScope(_)
                | McpError::GuardrailBlock { .. } => "permission_error",
                McpError::Auth { .. } | McpError::Upstream { .. } | McpError::Stdio { .. } => {
                    "api_error"
                }
            },
            GatewayError::Upstream(_) | GatewayError::Routing(_) => "api_error",
            GatewayError::Admin { .. } => "authentication_error",
            GatewayError::Unavailable(_) => "service_unavailable",
            GatewayError::Budget(_) => "insufficient_quota",
            GatewayError::Quota(_) => "rate_limit_error",
        }
    }

    /// Extra fields of the error object: which budget or limit, and when to retry.
    fn extra(&self) -> Option<serde_json::Map<String, Value>> {
        let value = match self {
            GatewayError::Budget(b) => json!({
                "scope": b.scope,
                "budget": {
                    "id": b.budget_id, "scope": b.scope, "subject": b.subject, "window": b.window,
                    "limit_usd": usd(b.limit_nanos), "spent_usd": usd(b.spent_nanos),
                    "reserved_usd": usd(b.reserved_nanos), "remaining_usd": usd(b.remaining_nanos()),
                    "requested_usd": usd(b.requested_nanos),
                    "limit_nanos": b.limit_nanos, "spent_nanos": b.spent_nanos,
                    "reserved_nanos": b.reserved_nanos, "remaining_nanos": b.remaining_nanos(),
                    "requested_nanos": b.requested_nanos, "resets_at_ms": b.resets_at_ms,
                }
            }),
            GatewayError::Access(AccessError::IpNotAllowed { scope, subject }) => json!({
                "scope": scope, "subject": subject, "limit": "ip",
            }),
            GatewayError::Quota(q) => {
                let mut v = json!({
                    "scope": q.scope, "subject": q.subject, "limit": q.limit_name,
                    "limit_value": q.limit, "used": q.used, "reserved": q.reserved,
                });
                if q.retry_after_secs > 0 {
                    v["retry_after"] = json!(q.retry_after_secs);
                }
                v
            }
            _ => return None,
        };
        value.as_object().cloned()
    }

    /// The Anthropic-style `error.type` field.
    fn anthropic_type(&self) -> &'static str {
        match self.status().as_u16() {
            401 => "authentication_error",
            402 => "billing_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            503 => "overloaded_error",
            400 => "invalid_request_error",
            _ => "api_error",
        }
    }

    /// The Gemini/Google RPC status name.
    fn google_status(&self) -> &'static str {
        match self.status().as_u16() {
            400 | 413 => "INVALID_ARGUMENT",
            401 => "UNAUTHENTICATED",
            402 | 429 => "RESOURCE_EXHAUSTED",
            403 => "PERMISSION_DENIED",
            404 => "NOT_FOUND",
            503 => "UNAVAILABLE",
            504 => "DEADLINE_EXCEEDED",
            _ => "INTERNAL",
        }
    }

    /// The message a client sees: the `Display` text without internal detail (the upstream
    /// URL and client error chain, raw database errors).
    pub fn client_message(&self) -> String {
        match self {
            GatewayError::Upstream(UpstreamError::Unreachable { provider, .. }) => {
                format!("provider '{provider}' is unreachable")
            }
            GatewayError::Upstream(UpstreamError::BadResponse { provider, .. }) => {
                format!("provider '{provider}' sent an unusable response")
            }
            GatewayError::Unavailable(e) => {
                format!("{} is unavailable, refusing to serve ungoverned", e.what)
            }
            _ => self.to_string(),
        }
    }

    /// The JSON body for `family`.
    pub fn body(&self, family: Family) -> Value {
        let message = self.client_message();
        let code = self.code();
        let mut body = match family {
            Family::OpenAi => json!({
                "error": { "code": code, "message": message, "type": self.openai_type() }
            }),
            Family::Anthropic => json!({
                "type": "error",
                "error": { "type": self.anthropic_type(), "message": message, "code": code }
            }),
            Family::Gemini => json!({
                "error": {
                    "code": self.status().as_u16(),
                    "message": message,
                    "status": self.google_status(),
                    "details": [{
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": code,
                        "domain": "tollgate"
                    }]
                }
            }),
        };
        if let Some(extra) = self.extra()
            && let Some(error) = body.get_mut("error").and_then(Value::as_object_mut)
        {
            if family == Family::Gemini {
                if let Some(Value::Object(info)) =
                    error.get_mut("details").and_then(|d| d.get_mut(0))
                {
                    info.insert("metadata".into(), Value::Object(extra));
                }
            } else {
                error.extend(extra);
            }
        }
        body
    }

    /// The full response for `family`. Pure: no logging, no recording; the internal detail
    /// rides along as an [`ErrorDetail`] extension for the logging middleware.
    pub fn render(&self, family: Family) -> Response {
        let body = self.body(family).to_string();
        let mut response = (self.status(), body).into_response();
        response.extensions_mut().insert(ErrorDetail {
            code: self.code().to_string(),
            detail: crate::store::redact::redact_urls(&self.to_string()),
        });
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let GatewayError::Quota(q) = self
            && q.retry_after_secs > 0
            && let Ok(value) = HeaderValue::from_str(&q.retry_after_secs.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_auth_failure_is_a_401_with_a_distinct_code() {
        let codes: Vec<_> = [AuthError::Unknown, AuthError::Expired, AuthError::Revoked]
            .into_iter()
            .map(GatewayError::from)
            .map(|e| {
                assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
                e.code().to_string()
            })
            .collect();
        assert_eq!(
            codes,
            ["unauthorized", "api_key_expired", "api_key_revoked"]
        );
    }

    #[test]
    fn model_not_found_is_a_400_not_a_404() {
        let e = GatewayError::from(AccessError::ModelNotFound("x".into()));
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(e.code(), "model_not_found");
    }

    #[test]
    fn bodies_follow_each_family_shape() {
        let e = GatewayError::from(AccessError::ModelNotAllowed("m".into()));
        let openai = e.body(Family::OpenAi);
        assert_eq!(openai["error"]["code"], "model_not_allowed");
        assert_eq!(openai["error"]["type"], "permission_error");
        let anthropic = e.body(Family::Anthropic);
        assert_eq!(anthropic["type"], "error");
        assert_eq!(anthropic["error"]["type"], "permission_error");
        assert_eq!(anthropic["error"]["code"], "model_not_allowed");
        let gemini = e.body(Family::Gemini);
        assert_eq!(gemini["error"]["code"], 403);
        assert_eq!(gemini["error"]["status"], "PERMISSION_DENIED");
        assert_eq!(gemini["error"]["details"][0]["reason"], "model_not_allowed");
    }

    #[test]
    fn only_upstream_failures_are_retryable() {
        let timeout = GatewayError::from(UpstreamError::Timeout {
            provider: "p".into(),
            timeout_ms: 5,
        });
        assert!(timeout.is_retryable());
        assert_eq!(timeout.status(), StatusCode::GATEWAY_TIMEOUT);
        assert!(!GatewayError::from(AuthError::Revoked).is_retryable());
    }

    #[test]
    fn client_bodies_carry_no_upstream_url_nor_database_error() {
        let errors = [
            GatewayError::from(UpstreamError::Unreachable {
                provider: "p".into(),
                detail: "error sending request for url (http://10.9.8.7:8080/v1/chat/completions): tcp connect error".into(),
            }),
            GatewayError::from(UpstreamError::BadResponse {
                provider: "p".into(),
                detail: "error decoding response body from http://10.9.8.7:8080/v1".into(),
            }),
            GatewayError::from(UnavailableError {
                code: "auth_unavailable",
                what: "the key store",
                detail: "error returned from database: password authentication failed for user \"tollgate\" at db.internal:5432".into(),
            }),
        ];
        for error in errors {
            // The detail is kept for the log.
            assert!(error.to_string().len() > error.client_message().len());
            for family in [Family::OpenAi, Family::Anthropic, Family::Gemini] {
                let body = error.body(family).to_string();
                for leak in [
                    "10.9.8.7",
                    "http://",
                    "db.internal",
                    "password",
                    "tcp connect",
                ] {
                    assert!(!body.contains(leak), "{leak:?} leaked: {body}");
                }
            }
        }
    }
}
