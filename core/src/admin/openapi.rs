//! `GET /admin/v1/openapi.json`: the OpenAPI 3.1 document, built from the route table (every
//! route, its parameters, body and answer) and the schemas below.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::{Admin, ApiError, Call, Reply, routes};

fn s() -> Value {
    json!({"type": "string"})
}
fn ns() -> Value {
    json!({"type": ["string", "null"]})
}
fn time() -> Value {
    json!({"type": "string", "format": "date-time"})
}
fn ntime() -> Value {
    json!({"type": ["string", "null"], "format": "date-time"})
}
fn int() -> Value {
    json!({"type": "integer", "format": "int64"})
}
fn nint() -> Value {
    json!({"type": ["integer", "null"], "format": "int64"})
}
fn num() -> Value {
    json!({"type": "number"})
}
fn nnum() -> Value {
    json!({"type": ["number", "null"]})
}
fn boolean() -> Value {
    json!({"type": "boolean"})
}
fn strings() -> Value {
    json!({"type": "array", "items": {"type": "string"}})
}
fn any_object() -> Value {
    json!({"type": "object", "additionalProperties": true})
}
fn r(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}
fn nr(name: &str) -> Value {
    json!({"oneOf": [r(name), {"type": "null"}]})
}
fn any() -> Value {
    json!({})
}

fn obj(props: &[(&str, Value)], required: &[&str]) -> Value {
    let mut properties = Map::new();
    for (name, schema) in props {
        properties.insert((*name).to_string(), schema.clone());
    }
    json!({"type": "object", "properties": properties, "required": required})
}

fn list_of(item: &str) -> Value {
    obj(
        &[
            ("data", json!({"type": "array", "items": r(item)})),
            ("next_cursor", ns()),
        ],
        &["data", "next_cursor"],
    )
}

fn money(prefix: &str) -> [(String, Value); 2] {
    [
        (format!("{prefix}_nanos"), int()),
        (format!("{prefix}_usd"), num()),
    ]
}

fn schemas() -> Map<String, Value> {
    let mut m = Map::new();
    let mut put = |name: &str, v: Value| {
        m.insert(name.to_string(), v);
    };
    put(
        "Error",
        obj(
            &[(
                "error",
                obj(
                    &[("code", s()), ("message", s()), ("type", s())],
                    &["code", "message", "type"],
                ),
            )],
            &["error"],
        ),
    );
    put(
        "WhoAmI",
        obj(
            &[
                ("token_id", s()),
                ("role", json!({"type": "string", "enum": ["admin", "read"]})),
            ],
            &["token_id", "role"],
        ),
    );
    let key_fields = [
        "id",
        "name",
        "team",
        "user",
        "prefix",
        "models",
        "mcp_servers",
        "metadata",
        "status",
        "created_at",
        "updated_at",
        "expires_at",
        "revoked_at",
        "rotations",
    ];
    put(
        "Key",
        obj(
            &[
                ("id", s()),
                ("name", s()),
                ("team", ns()),
                ("user", ns()),
                ("prefix", s()),
                ("models", strings()),
                ("mcp_servers", strings()),
                ("metadata", any_object()),
                (
                    "status",
                    json!({"type": "string", "enum": ["active", "expired", "revoked"]}),
                ),
                ("created_at", time()),
                ("updated_at", time()),
                ("expires_at", ntime()),
                ("revoked_at", ntime()),
                ("rotations", int()),
            ],
            &key_fields,
        ),
    );
    put("KeyList", list_of("Key"));
    put(
        "KeyWithSecret",
        obj(&[("key", r("Key")), ("secret", s())], &["key", "secret"]),
    );
    put(
        "KeyCreate",
        obj(
            &[
                ("name", s()),
                ("team", ns()),
                ("user", ns()),
                ("models", strings()),
                ("mcp_servers", strings()),
                ("metadata", any_object()),
                ("expires_at", ntime()),
            ],
            &["name", "models"],
        ),
    );
    put(
        "KeyUpdate",
        obj(
            &[
                ("name", s()),
                ("team", ns()),
                ("user", ns()),
                ("models", strings()),
                ("mcp_servers", strings()),
                ("metadata", any_object()),
                ("expires_at", ntime()),
            ],
            &[],
        ),
    );
    put(
        "Rotation",
        obj(
            &[
                ("at", time()),
                ("actor", s()),
                ("old_prefix", s()),
                ("new_prefix", s()),
            ],
            &["at", "actor", "old_prefix", "new_prefix"],
        ),
    );
    put("RotationList", list_of("Rotation"));
    let principal = |user: bool| {
        let mut props = vec![
            ("id", s()),
            ("name", s()),
            ("metadata", any_object()),
            ("created_at", time()),
            ("updated_at", time()),
        ];
        let mut required = vec!["id", "name", "metadata", "created_at", "updated_at"];
        if user {
            props.push(("email", ns()));
            props.push(("team", ns()));
            required.extend(["email", "team"]);
        }
        obj(&props, &required)
    };
    put("Team", principal(false));
    put("User", principal(true));
    put("TeamList", list_of("Team"));
    put("UserList", list_of("User"));
    put(
        "TeamCreate",
        obj(
            &[("id", s()), ("name", s()), ("metadata", any_object())],
            &["id", "name"],
        ),
    );
    put(
        "TeamUpdate",
        obj(&[("name", s()), ("metadata", any_object())], &[]),
    );
    put(
        "UserCreate",
        obj(
            &[
                ("id", s()),
                ("name", s()),
                ("email", ns()),
                ("team", ns()),
                ("metadata", any_object()),
            ],
            &["id", "name"],
        ),
    );
    put(
        "UserUpdate",
        obj(
            &[
                ("name", s()),
                ("email", ns()),
                ("team", ns()),
                ("metadata", any_object()),
            ],
            &[],
        ),
    );
    put("Deleted", obj(&[("deleted", s())], &["deleted"]));
    let mut window = vec![("start", time()), ("end", ntime())];
    let window_money: Vec<(String, Value)> = ["used", "held", "remaining"]
        .iter()
        .flat_map(|p| money(p))
        .collect();
    let mut window_required = vec!["start".to_string(), "end".to_string()];
    window_required.extend(window_money.iter().map(|(k, _)| k.clone()));
    let window_money_ref: Vec<(&str, Value)> = window_money
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    window.extend(window_money_ref);
    let window_required_ref: Vec<&str> = window_required.iter().map(String::as_str).collect();
    put("BudgetWindow", obj(&window, &window_required_ref));
    put(
        "Budget",
        obj(
            &[
                ("id", s()),
                (
                    "scope",
                    json!({"type": "string", "enum": ["organization", "team", "user", "key", "model"]}),
                ),
                ("subject", s()),
                (
                    "window",
                    json!({"type": "string", "enum": ["daily", "weekly", "monthly", "lifetime"]}),
                ),
                ("limit_nanos", int()),
                ("limit_usd", num()),
                ("timezone", s()),
                (
                    "thresholds",
                    json!({"type": "array", "items": {"type": "integer"}}),
                ),
                (
                    "source",
                    json!({"type": "string", "enum": ["policy", "store"]}),
                ),
                ("current", r("BudgetWindow")),
                ("previous", nr("BudgetWindow")),
            ],
            &[
                "id",
                "scope",
                "subject",
                "window",
                "limit_nanos",
                "limit_usd",
                "source",
                "current",
                "previous",
            ],
        ),
    );
    put("BudgetList", list_of("Budget"));
    put(
        "BudgetCreate",
        obj(
            &[
                ("scope", s()),
                ("subject", s()),
                ("window", s()),
                ("limit_usd", num()),
                ("limit_nanos", int()),
                ("timezone", s()),
                (
                    "thresholds",
                    json!({"type": "array", "items": {"type": "integer"}}),
                ),
            ],
            &["scope", "window"],
        ),
    );
    put(
        "BudgetUpdate",
        obj(
            &[
                ("limit_usd", num()),
                ("limit_nanos", int()),
                ("timezone", s()),
                (
                    "thresholds",
                    json!({"type": "array", "items": {"type": "integer"}}),
                ),
            ],
            &[],
        ),
    );
    put(
        "Quota",
        obj(
            &[
                ("id", s()),
                ("scope", s()),
                ("subject", ns()),
                ("window", ns()),
                (
                    "kind",
                    json!({"type": "string", "enum": ["requests", "tokens", "cost"]}),
                ),
                ("metric", s()),
                ("limit", int()),
                ("per_subject", boolean()),
                ("used", nint()),
                ("held", nint()),
                ("remaining", nint()),
            ],
            &["id", "scope", "kind", "limit", "used", "held", "remaining"],
        ),
    );
    put("QuotaList", list_of("Quota"));
    let usage_fields: Vec<(&str, Value)> = vec![
        ("id", s()),
        ("request_id", s()),
        ("received_at", time()),
        ("completed_at", time()),
        ("key_id", ns()),
        ("team", ns()),
        ("user", ns()),
        ("method", s()),
        ("endpoint", s()),
        ("endpoint_family", ns()),
        ("stream", boolean()),
        ("requested_model", ns()),
        ("served_model", ns()),
        ("upstream_model", ns()),
        ("provider", ns()),
        ("status", int()),
        ("error_code", ns()),
        ("denied_stage", ns()),
        ("latency_ms", num()),
        ("ttfb_ms", nnum()),
        ("input_tokens", int()),
        ("output_tokens", int()),
        ("cached_input_tokens", int()),
        ("reasoning_tokens", int()),
        ("total_tokens", int()),
        ("cost_nanos", int()),
        ("cost_usd", num()),
        ("stream_status", ns()),
        ("mcp_server", ns()),
        ("mcp_tool", ns()),
        ("decisions", any()),
        ("route", any()),
    ];
    let usage_required: Vec<&str> = usage_fields.iter().map(|(k, _)| *k).collect();
    put("UsageRow", obj(&usage_fields, &usage_required));
    put("UsageList", list_of("UsageRow"));
    put(
        "UsageRows",
        obj(
            &[("data", json!({"type": "array", "items": r("UsageRow")}))],
            &["data"],
        ),
    );
    put(
        "Aggregate",
        obj(
            &[
                ("bucket_start", ntime()),
                ("group", ns()),
                ("requests", int()),
                ("errors", int()),
                ("input_tokens", int()),
                ("output_tokens", int()),
                ("cost_nanos", int()),
                ("cost_usd", num()),
                ("p50_latency_ms", nnum()),
                ("p95_latency_ms", nnum()),
            ],
            &[
                "bucket_start",
                "group",
                "requests",
                "errors",
                "input_tokens",
                "output_tokens",
                "cost_nanos",
                "cost_usd",
                "p50_latency_ms",
                "p95_latency_ms",
            ],
        ),
    );
    put(
        "AggregateList",
        obj(
            &[("data", json!({"type": "array", "items": r("Aggregate")}))],
            &["data"],
        ),
    );
    let line = obj(
        &[
            ("group", ns()),
            ("requests", int()),
            ("input_tokens", int()),
            ("output_tokens", int()),
            ("cost_nanos", int()),
            ("cost_usd", num()),
        ],
        &[
            "group",
            "requests",
            "input_tokens",
            "output_tokens",
            "cost_nanos",
            "cost_usd",
        ],
    );
    put("ChargeLine", line);
    put(
        "Chargeback",
        obj(
            &[
                ("from", time()),
                ("to", time()),
                ("group_by", s()),
                ("lines", json!({"type": "array", "items": r("ChargeLine")})),
                ("total", r("ChargeLine")),
            ],
            &["from", "to", "group_by", "lines", "total"],
        ),
    );
    put(
        "AuditEntry",
        obj(
            &[
                ("id", s()),
                ("at", time()),
                ("actor", s()),
                ("action", s()),
                ("target", ns()),
                ("before", any()),
                ("after", any()),
            ],
            &["id", "at", "actor", "action", "target", "before", "after"],
        ),
    );
    put("AuditList", list_of("AuditEntry"));
    put(
        "PolicyError",
        obj(
            &[("message", s()), ("file", ns()), ("line", nint())],
            &["message", "file", "line"],
        ),
    );
    put(
        "Policy",
        obj(
            &[
                ("generation", int()),
                ("loaded_at", time()),
                ("content_hash", s()),
                ("dir", s()),
                ("files", strings()),
                ("last_error", nr("PolicyError")),
                ("last_errors", strings()),
                ("last_error_at", ntime()),
                ("reloads_ok", int()),
                ("reloads_failed", int()),
            ],
            &[
                "generation",
                "loaded_at",
                "content_hash",
                "files",
                "last_error",
                "reloads_ok",
                "reloads_failed",
            ],
        ),
    );
    put(
        "McpServer",
        obj(
            &[
                ("slug", s()),
                ("description", s()),
                (
                    "transport",
                    json!({"type": "string", "enum": ["streamable_http", "sse", "stdio"]}),
                ),
                ("enabled", boolean()),
                ("url", s()),
                ("command", s()),
                ("allowed_tools", strings()),
                ("blocked_tools", strings()),
                ("pricing", any_object()),
            ],
            &[
                "slug",
                "transport",
                "enabled",
                "allowed_tools",
                "blocked_tools",
                "pricing",
            ],
        ),
    );
    put("McpServerList", list_of("McpServer"));
    put(
        "Provider",
        obj(
            &[
                ("name", s()),
                ("family", s()),
                ("base_url", ns()),
                ("enabled", boolean()),
                (
                    "credential",
                    json!({"type": "string", "enum": ["not_required", "configured", "missing"]}),
                ),
                ("healthy", boolean()),
                ("cooldown_until", ntime()),
                ("models", strings()),
            ],
            &["name", "family", "base_url", "healthy", "cooldown_until"],
        ),
    );
    put("ProviderList", list_of("Provider"));
    put(
        "Model",
        obj(
            &[
                ("name", s()),
                ("provider", ns()),
                ("providers", strings()),
                ("upstream_model", s()),
                ("pricing", json!({"type": ["object", "null"]})),
                ("tags", strings()),
                ("group", boolean()),
                ("deployments", strings()),
            ],
            &["name", "provider", "pricing"],
        ),
    );
    put("ModelList", list_of("Model"));
    put(
        "AdminToken",
        obj(
            &[
                ("id", s()),
                ("name", s()),
                ("role", json!({"type": "string", "enum": ["admin", "read"]})),
                ("prefix", s()),
                ("created_at", time()),
            ],
            &["id", "name", "role", "prefix", "created_at"],
        ),
    );
    put("AdminTokenList", list_of("AdminToken"));
    put(
        "AdminTokenCreate",
        obj(
            &[
                ("name", s()),
                ("role", json!({"type": "string", "enum": ["admin", "read"]})),
            ],
            &["name", "role"],
        ),
    );
    put(
        "AdminTokenWithSecret",
        obj(
            &[("token", r("AdminToken")), ("secret", s())],
            &["token", "secret"],
        ),
    );
    put("OpenApi", any_object());
    m
}

fn error_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": r("Error")}}})
}

/// The whole document.
pub fn document() -> Value {
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for route in routes() {
        let mut parameters: Vec<Value> = Vec::new();
        for segment in route.path.split('/') {
            if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                parameters.push(json!({
                    "name": name, "in": "path", "required": true, "schema": s(),
                }));
            }
        }
        for p in route.query {
            parameters.push(json!({
                "name": p.name, "in": "query", "required": false,
                "description": p.description, "schema": {"type": p.kind},
            }));
        }
        let mut content = Map::new();
        content.insert(
            "application/json".into(),
            json!({"schema": r(route.response)}),
        );
        if route.path == "/chargeback" {
            content.insert("text/csv".into(), json!({"schema": s()}));
            content.insert("text/html".into(), json!({"schema": s()}));
        }
        let mut responses = Map::new();
        responses.insert(
            route.status.to_string(),
            json!({"description": "Success.", "content": content}),
        );
        if !route.query.is_empty() || route.body.is_some() {
            responses.insert(
                "400".into(),
                error_response("invalid_request: a bad parameter or body."),
            );
        }
        if route.auth {
            responses.insert(
                "401".into(),
                error_response("unauthorized: missing or unknown admin token."),
            );
            responses.insert(
                "429".into(),
                error_response("rate_limit_exceeded: too many failed token attempts."),
            );
            responses.insert(
                "503".into(),
                error_response("store_unavailable: the store cannot be reached."),
            );
        }
        if route.method != axum::http::Method::GET {
            responses.insert(
                "403".into(),
                error_response("admin_forbidden: a read token on a write."),
            );
        }
        if route.path.contains('{') {
            responses.insert("404".into(), error_response("not_found."));
        }
        if route.method != axum::http::Method::GET || route.tag == "gateway" {
            responses.insert(
                "409".into(),
                error_response("conflict (or gateway_required in the CLI's local mode)."),
            );
        }
        let mut op = json!({
            "operationId": route.operation,
            "summary": route.summary,
            "tags": [route.tag],
            "parameters": parameters,
            "responses": responses,
        });
        if let Some(body) = route.body {
            op["requestBody"] = json!({
                "required": true,
                "content": {"application/json": {"schema": r(body)}},
            });
        }
        if !route.auth {
            op["security"] = json!([]);
        }
        paths
            .entry(format!("/admin/v1{}", route.path))
            .or_default()
            .insert(route.method.as_str().to_lowercase(), op);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "tollgate admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Manage keys, teams, users, budgets and admin tokens; read usage, chargeback, audit and the gateway's policy state. Errors use the OpenAI envelope {\"error\":{\"code\",\"message\",\"type\"}}. Tokens with the read role may only GET.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas(),
        },
    })
}

/// `GET /openapi.json`.
pub async fn serve(_admin: Arc<Admin>, _call: Call) -> Result<Reply, ApiError> {
    Ok(Reply::ok(document()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    out.push(r.clone());
                }
                for v in map.values() {
                    refs(v, out);
                }
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_route_is_documented_and_every_reference_resolves() {
        let doc = document();
        for route in routes() {
            let path = format!("/admin/v1{}", route.path);
            assert!(
                doc["paths"][&path][route.method.as_str().to_lowercase()].is_object(),
                "{} {path} is missing",
                route.method
            );
        }
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(!found.is_empty());
        for r in found {
            let name = r.trim_start_matches("#/components/schemas/");
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "dangling {r}"
            );
        }
    }
}
