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

#[tokio::test]
async fn every_call_of_a_batch_is_governed_and_an_oversized_body_answers_413() {
    let (addr, seen) = recording_upstream().await;
    let policy = format!(
        "[mcp_servers.rec]\ntransport = \"streamable_http\"\nurl = \"http://{addr}/mcp\"\n\
         blocked_tools = [\"get-env\"]\nblocked_keywords = [\"private key\"]\n\
         pricing = {{ call_nanos = 1000 }}\nlimits = {{ max_request_bytes = 2048 }}\n"
    );
    let gw = Gateway::start(&policy);
    let (_, key) = gw.create_key_with(&["--mcp", "rec"]);
    let url = gw.url("/v1/mcp/rec");
    let call = |id: i64, tool: &str, message: &str| {
        rpc(
            id,
            "tools/call",
            json!({"name": tool, "arguments": {"message": message}}),
        )
    };

    // One refused call refuses the batch: nothing reaches the server, every request is answered.
    for (refused_index, batch) in [
        (1, json!([call(1, "echo", "fine"), call(2, "get-env", "x")])),
        (
            0,
            json!([call(3, "echo", "my private key"), call(4, "echo", "fine")]),
        ),
    ] {
        let answer = post(&url, &key, None, &batch).await;
        assert_eq!(answer.status().as_u16(), 403);
        let answers: Value = answer.json().await.expect("json");
        let answers = answers.as_array().expect("a batch answer");
        assert_eq!(answers.len(), 2, "{answers:?}");
        for (i, a) in answers.iter().enumerate() {
            assert_eq!(a["error"]["data"]["code"], "mcp_guardrail_block", "{a}");
            let message = a["error"]["message"].as_str().expect("message");
            assert_eq!(
                message.starts_with("not sent"),
                i != refused_index,
                "{message}"
            );
        }
    }
    assert!(seen.lock().expect("lock").is_empty(), "nothing was sent");

    // An allowed batch goes through whole, its row counting every call.
    let allowed = json!([call(5, "echo", "a"), call(6, "add", "b")]);
    let answer = post(&url, &key, None, &allowed).await;
    assert_eq!(answer.status().as_u16(), 200);
    assert_eq!(seen.lock().expect("lock").len(), 1);
    let rows = wait_mcp_rows(&gw, |rows| rows.iter().any(|r| r["status"] == 200)).await;
    let row = rows.iter().find(|r| r["status"] == 200).expect("row");
    assert_eq!(
        row["rpc_method"], "tools/call",
        "one method: no `batch` label"
    );
    assert_eq!(row["tool_calls"], 2);
    assert_eq!(row["tool"], "echo");
    assert_eq!(row["cost_nanos"], 2000);
    let refused: Vec<&Value> = rows.iter().filter(|r| r["status"] == 403).collect();
    assert_eq!(refused.len(), 2, "{rows:#?}");
    assert!(
        refused
            .iter()
            .all(|r| r["error_code"] == "mcp_guardrail_block"
                && r["denied_stage"] == "inspect"
                && r["cost_nanos"] == 0)
    );

    // The server's payload limit.
    let big = call(7, "echo", &"x".repeat(4096));
    let answer = post(&url, &key, None, &big).await;
    assert_eq!(answer.status().as_u16(), 413);
    let body: Value = answer.json().await.expect("json");
    assert_eq!(body["error"]["code"], "request_too_large", "{body}");
    assert_eq!(seen.lock().expect("lock").len(), 1, "not sent");
    let rows = wait_mcp_rows(&gw, |rows| rows.iter().any(|r| r["status"] == 413)).await;
    let row = rows.iter().find(|r| r["status"] == 413).expect("row");
    assert_eq!(row["error_code"], "request_too_large");
    assert_eq!(row["server"], "rec");
}

#[tokio::test]
async fn oauth2_tokens_are_fetched_once_and_cached_and_basic_credentials_are_injected() {
    use crate::common::PROVIDER_KEY;
    // A client-credentials token endpoint that counts its grants and keeps their forms.
    let grants: Arc<Mutex<Vec<String>>> = Arc::default();
    let record = grants.clone();
    let app = axum::Router::new().route(
        "/token",
        axum::routing::post(move |body: String| {
            let record = record.clone();
            async move {
                record.lock().expect("lock").push(body);
                axum::Json(
                    json!({"access_token": "tok-42", "token_type": "Bearer", "expires_in": 3600}),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let token_addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let (addr, _) = recording_upstream().await;
    let policy = format!(
        r#"
[mcp_servers.oauth]
transport = "streamable_http"
url = "http://{addr}/mcp"
auth = {{ type = "oauth2", token_url = "http://{token_addr}/token", client_id = "agent", client_secret = {{ env = "TG_TEST_PROVIDER_KEY" }}, scope = "tools:call" }}

[mcp_servers.basic]
transport = "streamable_http"
url = "http://{addr}/mcp"
auth = {{ type = "basic", username = "gw", password = {{ env = "TG_TEST_PROVIDER_KEY" }} }}

[mcp_servers.broken]
transport = "streamable_http"
url = "http://{addr}/mcp"
auth = {{ type = "oauth2", token_url = "http://{token_addr}/missing", client_id = "agent", client_secret = {{ env = "TG_TEST_PROVIDER_KEY" }} }}
"#
    );
    let gw = Gateway::start(&policy);
    let (_, key) = gw.create_key_with(&["--mcp", "*"]);
    let list = rpc(1, "tools/list", json!({}));
    let seen_auth = |answer: Value| {
        answer["result"]["headers"]["authorization"]
            .as_str()
            .expect("the server saw a credential")
            .to_string()
    };
    for _ in 0..2 {
        let answer = rpc_answer(post(&gw.url("/v1/mcp/oauth"), &key, None, &list).await).await;
        assert_eq!(seen_auth(answer), "Bearer tok-42");
    }
    let forms = grants.lock().expect("lock").clone();
    assert_eq!(
        forms.len(),
        1,
        "one grant, then the cached token: {forms:?}"
    );
    assert!(
        forms[0].contains("grant_type=client_credentials"),
        "{forms:?}"
    );
    assert!(forms[0].contains("client_id=agent"), "{forms:?}");
    assert!(forms[0].contains("scope=tools%3Acall"), "{forms:?}");

    let answer = rpc_answer(post(&gw.url("/v1/mcp/basic"), &key, None, &list).await).await;
    let expected = {
        // RFC 4648 base64 of "gw:<secret>".
        let raw = format!("gw:{PROVIDER_KEY}");
        let table = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in raw.as_bytes().chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(table[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    };
    assert_eq!(seen_auth(answer), format!("Basic {expected}"));

    // A token endpoint that refuses: 502 mcp_auth_error, the secret never in the answer.
    let failed = post(&gw.url("/v1/mcp/broken"), &key, None, &list).await;
    assert_eq!(failed.status().as_u16(), 502);
    let answer = rpc_answer(failed).await;
    assert_eq!(
        answer["error"]["data"]["code"], "mcp_auth_error",
        "{answer}"
    );
    assert!(!answer.to_string().contains(PROVIDER_KEY), "{answer}");
}
