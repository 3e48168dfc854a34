//! What crosses the MCP gateway: credentials and session ids against a recording upstream, the
//! relay of an upstream's refusal, and CEL access rules reading `mcp.*`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use super::mcp::{init_params, post, rpc, rpc_answer, wait_mcp_rows};
use crate::common::{Gateway, http};

/// A recording MCP upstream: answers `server/discover` with a 4xx JSON-RPC error like a
/// handshake-era server, `initialize` with a session id, anything else with the headers it saw.
pub async fn recording_upstream() -> (SocketAddr, Arc<Mutex<Vec<axum::http::HeaderMap>>>) {
    use axum::http::HeaderMap;
    use axum::response::IntoResponse;
    let seen: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
    let record = seen.clone();
    let app = axum::Router::new().route(
        "/mcp",
        axum::routing::post(move |headers: HeaderMap, body: axum::Json<Value>| {
            let record = record.clone();
            async move {
                record.lock().expect("lock").push(headers.clone());
                let id = body.0["id"].clone();
                match body.0["method"].as_str() {
                    Some("server/discover") => (
                        axum::http::StatusCode::BAD_REQUEST,
                        [("content-type", "application/json")],
                        json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": "Method not found"}}).to_string(),
                    )
                        .into_response(),
                    Some("initialize") => (
                        [("content-type", "application/json"), ("mcp-session-id", "upstream-session-7")],
                        json!({"jsonrpc": "2.0", "id": id, "result": {"protocolVersion": "2025-06-18", "capabilities": {}, "serverInfo": {"name": "rec", "version": "1"}}}).to_string(),
                    )
                        .into_response(),
                    _ => {
                        let seen: serde_json::Map<String, Value> = headers
                            .iter()
                            .map(|(k, v)| (k.to_string(), Value::String(v.to_str().unwrap_or("").into())))
                            .collect();
                        (
                            [("content-type", "application/json")],
                            json!({"jsonrpc": "2.0", "id": id, "result": {"headers": seen}}).to_string(),
                        )
                            .into_response()
                    }
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, seen)
}

#[tokio::test]
async fn the_upstream_sees_its_own_credential_and_session_never_the_callers() {
    let (addr, _) = recording_upstream().await;
    let policy = format!(
        r#"
[mcp_servers.rec]
transport = "streamable_http"
url = "http://{addr}/mcp"
auth = {{ type = "bearer", token = {{ env = "TG_TEST_PROVIDER_KEY" }} }}
"#
    );
    let gw = Gateway::start(&policy);
    let (_, key) = gw.create_key_with(&["--mcp", "rec"]);
    let (_, other_key) = gw.create_key_with(&["--mcp", "rec"]);
    let url = gw.url("/v1/mcp/rec");

    // A handshake-era upstream's refusal of server/discover reaches the client unchanged.
    let discover = post(&url, &key, None, &rpc(1, "server/discover", json!({}))).await;
    assert_eq!(discover.status().as_u16(), 400);
    let answer: Value = discover.json().await.expect("json");
    assert_eq!(answer["error"]["code"], -32601);

    let init = post(
        &url,
        &key,
        None,
        &rpc(2, "initialize", init_params("2025-06-18")),
    )
    .await;
    assert_eq!(init.status().as_u16(), 200);
    let session = init
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .expect("a session id")
        .to_string();
    assert_ne!(
        session, "upstream-session-7",
        "the client gets the gateway's signed id"
    );
    assert!(session.starts_with("tg1."), "{session}");

    let echoed = http()
        .post(&url)
        .bearer_auth(&key)
        .header("x-api-key", &key)
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "2025-06-18")
        .header("mcp-method", "tools/list")
        .header("last-event-id", "41")
        .json(&rpc(3, "tools/list", json!({})))
        .send()
        .await
        .expect("post");
    assert_eq!(echoed.status().as_u16(), 200);
    let seen = rpc_answer(echoed).await["result"]["headers"].clone();
    assert_eq!(
        seen["authorization"],
        format!("Bearer {}", crate::common::PROVIDER_KEY),
        "the configured credential replaces the caller's: {seen}"
    );
    assert!(seen.get("x-api-key").is_none(), "{seen}");
    assert_eq!(seen["mcp-session-id"], "upstream-session-7");
    assert_eq!(seen["mcp-protocol-version"], "2025-06-18");
    assert_eq!(seen["mcp-method"], "tools/list");
    assert_eq!(seen["last-event-id"], "41");
    assert_ne!(seen["host"], gw.base.trim_start_matches("http://"));

    // The signed id works only for the key that opened it, and cannot be forged.
    let stolen = post(
        &url,
        &other_key,
        Some(&session),
        &rpc(4, "tools/list", json!({})),
    )
    .await;
    assert_eq!(stolen.status().as_u16(), 404);
    assert_eq!(
        rpc_answer(stolen).await["error"]["data"]["code"],
        "mcp_session_not_found"
    );
    let forged = post(
        &url,
        &key,
        Some("tg1.75707374.00"),
        &rpc(5, "tools/list", json!({})),
    )
    .await;
    assert_eq!(forged.status().as_u16(), 404);
}

#[tokio::test]
async fn access_rules_read_mcp_variables_and_model_rules_leave_mcp_traffic_alone() {
    let (addr, seen) = recording_upstream().await;
    let policy = format!(
        "[mcp_servers.rec]\ntransport = \"streamable_http\"\nurl = \"http://{addr}/mcp\"\n\n\
         [providers.demo]\nfamily = \"demo\"\n\n[models.chat]\nprovider = \"demo\"\n"
    );
    let rules: &[(&str, &str)] = &[
        (
            "access/mcp-tools.cel",
            "// Large transfers need the finance team.\n\
             mcp.method != \"tools/call\" || mcp.tool != \"transfer\" || mcp.arguments.amount < 100 \
             || key.team == \"finance\"\n  ? true\n  : {\"allow\": false, \"reason\": \"transfers of 100 or more need the finance team\"}\n",
        ),
        (
            "access/models-only.cel",
            "// A model rule: it never decides MCP requests.\nmodel.name != \"forbidden-model\"\n",
        ),
    ];
    let gw = Gateway::start_with(&policy, rules, &[]);
    let (_, key) = gw.create_key_with(&["--mcp", "rec"]);
    let (_, finance) = gw.create_key_with(&["--mcp", "rec", "--team", "finance"]);
    let url = gw.url("/v1/mcp/rec");
    let small = rpc(
        1,
        "tools/call",
        json!({"name": "transfer", "arguments": {"amount": 5}}),
    );
    assert_eq!(post(&url, &key, None, &small).await.status().as_u16(), 200);
    let big = rpc(
        2,
        "tools/call",
        json!({"name": "transfer", "arguments": {"amount": 500}}),
    );
    let denied = post(&url, &key, None, &big).await;
    assert_eq!(denied.status().as_u16(), 403);
    let answer = rpc_answer(denied).await;
    assert_eq!(answer["id"], 2);
    assert_eq!(answer["error"]["data"]["code"], "policy_denied", "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("mcp-tools") && m.contains("finance team")),
        "{answer}"
    );
    assert_eq!(
        post(&url, &finance, None, &big).await.status().as_u16(),
        200
    );
    // Two calls reached the upstream; the denied one did not.
    assert_eq!(seen.lock().expect("lock").len(), 2);
    // A rule reading `mcp` never decides model calls (it would fail closed there).
    let (_, model_key) = gw.create_key("*");
    let chat = http()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&model_key)
        .json(&crate::common::chat_body("chat"))
        .send()
        .await
        .expect("chat");
    assert_eq!(chat.status().as_u16(), 200);
    let rows = wait_mcp_rows(&gw, |rows| {
        rows.iter().filter(|r| r["provider"] == "mcp").count() == 3
    })
    .await;
    let denied_row = rows
        .iter()
        .find(|r| r["error_code"] == "policy_denied")
        .expect("denied row");
    assert!(
        denied_row["decisions"]
            .as_str()
            .is_some_and(|d| d.contains("\"rule\":\"mcp-tools\"") && !d.contains("models-only")),
        "{denied_row}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_call_is_a_client_span_whose_trace_context_reaches_the_server() {
    use crate::common::otlp::Receiver;
    let receiver = Receiver::start().await;
    let (addr, seen) = recording_upstream().await;
    let policy = format!(
        "[mcp_servers.rec]\ntransport = \"streamable_http\"\nurl = \"http://{addr}/mcp\"\n"
    );
    let gw = Gateway::start_env(
        &policy,
        &[],
        &[],
        &[
            ("TOLLGATE_OTLP_ENDPOINT", receiver.base.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ],
    );
    let (_, key) = gw.create_key_with(&["--mcp", "rec"]);
    // The agent is part of a trace already: the gateway's spans continue it.
    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let call = rpc(
        3,
        "tools/call",
        json!({"name": "echo", "arguments": {"message": "traced"}}),
    );
    let answer = http()
        .post(gw.url("/v1/mcp/rec"))
        .bearer_auth(&key)
        .header("accept", "application/json, text/event-stream")
        .header("traceparent", format!("00-{client_trace}-{client_span}-01"))
        .json(&call)
        .send()
        .await
        .expect("post");
    assert_eq!(answer.status().as_u16(), 200);
    let spans = receiver
        .wait_for("the MCP request and call spans", |spans| {
            spans
                .iter()
                .any(|s| s.trace_id == client_trace && s.name == "POST /v1/mcp/rec")
                && spans
                    .iter()
                    .any(|s| s.trace_id == client_trace && s.name == "mcp_call rec")
        })
        .await;
    let request = spans
        .iter()
        .find(|s| s.trace_id == client_trace && s.name == "POST /v1/mcp/rec")
        .expect("request span");
    assert_eq!(
        request.parent_span_id, client_span,
        "continues the client's span"
    );
    assert_eq!(request.kind, 2, "a server span");
    let a = &request.attributes;
    assert_eq!(a["mcp.server"], "rec");
    assert_eq!(a["mcp.method.name"], "tools/call");
    assert_eq!(a["gen_ai.tool.name"], "echo");
    assert_eq!(a["gen_ai.operation.name"], "execute_tool");
    assert_eq!(a["http.response.status_code"], 200);
    let mcp_call = spans
        .iter()
        .find(|s| s.trace_id == client_trace && s.name == "mcp_call rec")
        .expect("call span");
    assert_eq!(
        mcp_call.parent_span_id, request.span_id,
        "under the request"
    );
    assert_eq!(mcp_call.kind, 3, "a client span");
    let c = &mcp_call.attributes;
    assert_eq!(c["mcp.server"], "rec");
    assert_eq!(c["mcp.transport"], "streamable_http");
    assert_eq!(c["mcp.method.name"], "tools/call");
    assert_eq!(c["gen_ai.tool.name"], "echo");
    assert_eq!(c["http.response.status_code"], 200);
    // The server saw the same trace, as a child of the call span, not the client's header.
    let traceparent = seen.lock().expect("lock").last().expect("a request")["traceparent"]
        .to_str()
        .expect("text")
        .to_string();
    assert_eq!(
        traceparent,
        format!("00-{client_trace}-{}-01", mcp_call.span_id)
    );

    // Without an OTLP endpoint the caller's trace context is not forwarded (as for models).
    let plain = Gateway::start(&policy);
    let (_, key) = plain.create_key_with(&["--mcp", "rec"]);
    let answer = http()
        .post(plain.url("/v1/mcp/rec"))
        .bearer_auth(&key)
        .header("accept", "application/json, text/event-stream")
        .header("traceparent", format!("00-{client_trace}-{client_span}-01"))
        .json(&call)
        .send()
        .await
        .expect("post");
    assert_eq!(answer.status().as_u16(), 200);
    let last = seen
        .lock()
        .expect("lock")
        .last()
        .cloned()
        .expect("a request");
    assert!(last.get("traceparent").is_none(), "{last:?}");
}
