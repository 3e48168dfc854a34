//! `GET /admin/v1/openapi.json`: the OpenAPI 3.1 document, built from the route table (every
//! route, its parameters, body and answer) and the schemas below.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use axum::body::Bytes;
use serde_json::{Map, Value, json};

use super::{Admin, ApiError, Call, Reply, routes};

/// The component schemas, built once.
fn components() -> &'static Map<String, Value> {
    static SCHEMAS: OnceLock<Map<String, Value>> = OnceLock::new();
    SCHEMAS.get_or_init(schemas)
}

fn types_of(schema: &Value) -> Vec<&str> {
    match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// An integral JSON number written as a float (`50.0`): JSON Schema counts it as an integer.
fn integral(value: &Value) -> Option<Value> {
    let f = value.as_f64().filter(|_| value.is_f64())?;
    // Within ±2^53 a float holds every integer exactly.
    (f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_992.0).then(|| json!(f as i64))
}

/// Holds a request body to its documented schema `name` before a handler reads it: a JSON
/// object (never an array or a scalar), `null` only where the schema allows it, and integral
/// floats (`50.0`) as the integers JSON Schema takes them for. Field names and value types the
/// handler checks itself.
pub fn conform_body(name: &str, body: &Bytes) -> Result<Bytes, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))?;
    let Value::Object(mut fields) = value else {
        return Err(ApiError::invalid("the JSON body must be an object"));
    };
    let properties = &components()[name]["properties"];
    for (field, value) in &mut fields {
        let schema = &properties[field.as_str()];
        let types = types_of(schema);
        if value.is_null() {
            let nullable =
                types.contains(&"null") || (types.is_empty() && schema.get("$ref").is_none());
            if !nullable {
                return Err(ApiError::invalid(format!("'{field}' must not be null")));
            }
        } else if types.contains(&"integer") {
            if let Some(int) = integral(value) {
                *value = int;
            }
        } else if types.contains(&"array")
            && types_of(&schema["items"]).contains(&"integer")
            && let Value::Array(items) = value
        {
            for item in items {
                if let Some(int) = integral(item) {
                    *item = int;
                }
            }
        }
    }
    Ok(Bytes::from(Value::Object(fields).to_string()))
}

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
/// Text with at least one visible character and no control character.
const PLAIN: &str =
    "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$";
/// A display name: 1 to 200 characters, not only spaces.
fn name() -> Value {
    json!({"type": "string", "minLength": 1, "maxLength": 200, "pattern": PLAIN})
}
/// A team or user id: a slug.
fn slug() -> Value {
    json!({"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]{0,63}$"})
}
fn nslug() -> Value {
    json!({"type": ["string", "null"], "pattern": "^[a-z0-9][a-z0-9._-]{0,63}$"})
}
/// A key's team or user: a slug; `""` or `null` for none.
fn owner() -> Value {
    json!({"type": ["string", "null"], "pattern": "^([a-z0-9][a-z0-9._-]{0,63})?$"})
}
fn nemail() -> Value {
    json!({"type": ["string", "null"], "maxLength": 254, "pattern": "^[^\\s@]*@[^\\s]*$"})
}
/// Model or MCP server names of a grant (`*` for all).
fn grant_names(min: u64) -> Value {
    json!({"type": "array", "minItems": min, "items": {"type": "string", "pattern": PLAIN}})
}
fn thresholds() -> Value {
    json!({"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 1000}})
}
/// A request body: only the listed fields.
fn input(props: &[(&str, Value)], required: &[&str]) -> Value {
    let mut schema = obj(props, required);
    schema["additionalProperties"] = Value::Bool(false);
    schema
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
        input(
            &[
                ("name", name()),
                ("team", owner()),
                ("user", owner()),
                ("models", grant_names(1)),
                ("mcp_servers", grant_names(0)),
                ("metadata", any_object()),
                ("expires_at", ntime()),
            ],
            &["name", "models"],
        ),
    );
    put(
        "KeyUpdate",
        input(
            &[
                ("name", name()),
                ("team", owner()),
                ("user", owner()),
                ("models", grant_names(1)),
                ("mcp_servers", grant_names(0)),
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
        input(
            &[("id", slug()), ("name", name()), ("metadata", any_object())],
            &["id", "name"],
        ),
    );
    put(
        "TeamUpdate",
        input(&[("name", name()), ("metadata", any_object())], &[]),
    );
    put(
        "UserCreate",
        input(
            &[
                ("id", slug()),
                ("name", name()),
                ("email", nemail()),
                ("team", nslug()),
                ("metadata", any_object()),
            ],
            &["id", "name"],
        ),
    );
    put(
        "UserUpdate",
        input(
            &[
                ("name", name()),
                ("email", nemail()),
                ("team", nslug()),
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
    let budget_limits = [
        (
            "limit_usd",
            json!({"type": "number", "minimum": 0, "maximum": super::budgets::MAX_LIMIT_USD}),
        ),
        (
            "limit_nanos",
            json!({"type": "integer", "format": "int64", "minimum": 0, "maximum": 1_000_000_000_000_000_000_i64}),
        ),
        ("timezone", r("TimeZone")),
        ("thresholds", thresholds()),
    ];
    // limit_usd or limit_nanos, not both.
    let one_limit = json!({"oneOf": [
        {"required": ["limit_usd"], "not": {"required": ["limit_nanos"]}},
        {"required": ["limit_nanos"], "not": {"required": ["limit_usd"]}},
    ]});
    let mut create = vec![
        (
            "scope",
            json!({"type": "string", "enum": ["organization", "team", "user", "key"]}),
        ),
        ("subject", s()),
        (
            "window",
            json!({"type": "string", "enum": ["daily", "weekly", "monthly", "lifetime"]}),
        ),
    ];
    create.extend(budget_limits.iter().cloned());
    let mut budget_create = input(&create, &["scope", "window"]);
    // An organization budget has no subject; every other scope names one.
    budget_create["allOf"] = json!([
        one_limit,
        {"oneOf": [
            {"properties": {"scope": {"const": "organization"}, "subject": {"maxLength": 0}}},
            {"properties": {"scope": {"enum": ["team", "user", "key"]}, "subject": {"minLength": 1}},
             "required": ["subject"]},
        ]},
    ]);
    put("BudgetCreate", budget_create);
    let mut budget_update = input(&budget_limits, &[]);
    budget_update["not"] = json!({"required": ["limit_usd", "limit_nanos"]});
    put("BudgetUpdate", budget_update);
    put(
        "TimeZone",
        json!({
            "type": "string",
            "description": "An IANA time zone name.",
            "enum": chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name()).collect::<Vec<_>>(),
        }),
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
                ("reloads_unchanged", int()),
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
        input(
            &[
                ("name", name()),
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

/// The schema of a query parameter: what the handlers accept, no more.
fn param_schema(p: &super::Param) -> Value {
    match p.kind {
        "integer" => json!({"type": "integer", "minimum": 1, "maximum": 500}),
        "time" => json!({"anyOf": [
            {"type": "string", "format": "date-time"},
            {"type": "integer", "format": "int64", "minimum": 0, "maximum": super::MAX_TIME_MS},
        ]}),
        "status" => json!({"type": "string", "pattern": "^(ok|error|[1-5]xx|[1-5][0-9]{2})$"}),
        _ if !p.values.is_empty() => json!({"type": "string", "enum": p.values}),
        _ => s(),
    }
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
                "description": p.description, "schema": param_schema(p),
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
    let schemas = components().clone();
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
            "schemas": schemas,
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
    fn bodies_are_held_to_their_schema_before_a_handler_reads_them() {
        let conform = |name: &str, body: &str| {
            conform_body(name, &Bytes::from(body.to_string()))
                .map(|b| serde_json::from_slice::<Value>(&b).unwrap())
                .map_err(|e| e.message)
        };
        // serde would read a JSON array as the struct's fields in order.
        assert!(
            conform("BudgetUpdate", "[null, null]")
                .unwrap_err()
                .contains("object")
        );
        assert!(
            conform("TeamUpdate", r#"{"metadata": null}"#)
                .unwrap_err()
                .contains("null")
        );
        assert!(
            conform("BudgetUpdate", r#"{"timezone": null}"#)
                .unwrap_err()
                .contains("null")
        );
        // Nullable fields keep their null; integral floats become integers.
        assert_eq!(
            conform("UserUpdate", r#"{"team": null}"#).unwrap(),
            json!({"team": null})
        );
        assert_eq!(
            conform(
                "BudgetUpdate",
                r#"{"limit_nanos": 5.0, "thresholds": [50.0, 80]}"#
            )
            .unwrap(),
            json!({"limit_nanos": 5, "thresholds": [50, 80]})
        );
        assert_eq!(
            conform("BudgetUpdate", r#"{"limit_usd": 5.0}"#).unwrap(),
            json!({"limit_usd": 5.0})
        );
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
