//! What policies see of a request and its key: built once per request, read by CEL access
//! rules, Rhai routing scripts and `tollgate test` cases alike.

use std::collections::BTreeMap;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::store::KeyRecord;

/// Headers never shown to policies (credentials).
const HIDDEN_HEADERS: [&str; 5] = [
    "authorization",
    "x-api-key",
    "x-goog-api-key",
    "cookie",
    "proxy-authorization",
];

/// The request as policies see it.
#[derive(Debug, Clone)]
pub struct RequestFacts {
    /// Endpoint family: `openai`.
    pub endpoint: String,
    /// Route path, e.g. `/v1/chat/completions`.
    pub path: String,
    /// The model (or model group) name the client sent.
    pub model: String,
    /// Whether a stream was asked for.
    pub stream: bool,
    /// `max_tokens` / `max_completion_tokens` / `max_output_tokens`, when sent.
    pub max_tokens: Option<i64>,
    /// A cheap upper-bound estimate of input tokens (body bytes / 4).
    pub estimated_input_tokens: i64,
    /// `temperature`, when sent.
    pub temperature: Option<f64>,
    /// Whether the request carries tools.
    pub has_tools: bool,
    /// Request headers, lower-cased, credentials removed.
    pub headers: BTreeMap<String, String>,
    /// The peer address of the connection.
    pub client_ip: Option<IpAddr>,
    /// The request's `metadata` object, if any.
    pub metadata: Map<String, Value>,
    /// Decision time.
    pub now: DateTime<Utc>,
}

impl RequestFacts {
    /// Facts from a decoded OpenAI-style body; `headers` only when an access rule or routing
    /// script may read them.
    pub fn from_body(
        endpoint: &str,
        path: &str,
        model: &str,
        body: &Map<String, Value>,
        body_len: usize,
        headers: Option<&axum::http::HeaderMap>,
        client_ip: Option<IpAddr>,
    ) -> Self {
        let max_tokens = ["max_tokens", "max_completion_tokens", "max_output_tokens"]
            .iter()
            .find_map(|f| body.get(*f).and_then(Value::as_i64));
        let has_tools = body
            .get("tools")
            .and_then(Value::as_array)
            .is_some_and(|t| !t.is_empty());
        // Copied only when a policy can read them (`None`: no rule or script does).
        let headers = headers
            .into_iter()
            .flat_map(|h| h.iter())
            .filter(|(name, _)| !HIDDEN_HEADERS.contains(&name.as_str()))
            .filter_map(|(name, value)| {
                Some((name.as_str().to_string(), value.to_str().ok()?.to_string()))
            })
            .collect();
        Self {
            endpoint: endpoint.to_string(),
            path: path.to_string(),
            model: model.to_string(),
            stream: body.get("stream").and_then(Value::as_bool).unwrap_or(false),
            max_tokens,
            estimated_input_tokens: i64::try_from(body_len / 4).unwrap_or(i64::MAX),
            temperature: body.get("temperature").and_then(Value::as_f64),
            has_tools,
            headers,
            client_ip,
            metadata: body
                .get("metadata")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
            now: crate::clock::now_utc(),
        }
    }

    /// The JSON view (used for CEL and Rhai).
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "endpoint": self.endpoint,
            "path": self.path,
            "model": self.model,
            "stream": self.stream,
            "max_tokens": self.max_tokens,
            "estimated_input_tokens": self.estimated_input_tokens,
            "temperature": self.temperature,
            "tools": self.has_tools,
            "headers": self.headers,
            "client_ip": self.client_ip.map(|ip| ip.to_string()),
            "metadata": self.metadata,
        })
    }
}

/// The JSON view of a key for policies (never its secret or hash).
pub fn key_json(key: &KeyRecord) -> Value {
    let models = match &key.models {
        crate::store::ModelGrant::All => vec!["*".to_string()],
        crate::store::ModelGrant::Only(names) => names.clone(),
    };
    serde_json::json!({
        "id": key.id,
        "name": key.name,
        "team": key.team,
        "owner": key.owner,
        "models": models,
        "metadata": key.metadata,
        "created_at_ms": key.created_at_ms,
        "expires_at_ms": key.expires_at_ms,
    })
}
