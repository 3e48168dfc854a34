//! Graceful shutdown: in-flight requests finish and every answered request has its usage row.

use std::time::{Duration, Instant};

use mock_upstream::MockConfig;

use crate::common::{Gateway, chat_body, http, mock, read_usage, standard_policy};

#[tokio::test]
async fn sigterm_with_requests_in_flight_loses_no_usage_row() {
    let mock = mock(MockConfig {
        latency: Duration::from_millis(600),
        ..MockConfig::default()
    })
    .await;
    let mut gw = Gateway::start(&standard_policy(&mock));
    let (_, secret) = gw.create_key("*");
    let client = http();
    let send = |i: u64| {
        let client = client.clone();
        let url = gw.url("/v1/chat/completions");
        let secret = secret.clone();
        tokio::spawn(async move {
            let mut body = chat_body("chat");
            body["stream"] = i.is_multiple_of(3).into();
            match client
                .post(url)
                .bearer_auth(secret)
                .json(&body)
                .send()
                .await
            {
                Ok(response) => {
                    let status = response.status().as_u16();
                    response.bytes().await.ok().map(|_| status)
                }
                Err(_) => None,
            }
        })
    };
    let in_flight: Vec<_> = (0..40).map(send).collect();
    // Wait until every one of them is at the provider, i.e. in flight inside the gateway.
    let deadline = Instant::now() + Duration::from_secs(20);
    while mock.count() < 40 {
        assert!(
            Instant::now() < deadline,
            "requests never reached the provider"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gw.sigterm();
    // Requests sent after the signal are refused or answered, never half-recorded.
    let late: Vec<_> = (40..60).map(send).collect();
    let mut answered = 0;
    for task in in_flight {
        assert_eq!(
            task.await.unwrap(),
            Some(200),
            "in-flight requests finish normally"
        );
        answered += 1;
    }
    for task in late {
        if let Some(status) = task.await.unwrap() {
            assert_eq!(status, 200);
            answered += 1;
        }
    }
    let status = gw.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "graceful exit: {status:?}");
    let rows = read_usage(&gw.db_url).await;
    assert_eq!(rows.len(), answered, "one usage row per answered request");
    assert!(rows.iter().all(|r| r["status"] == 200));
}

#[tokio::test]
async fn a_stream_still_open_after_the_grace_period_is_ended_recorded_and_settled() {
    // 2,000 chunks 50 ms apart: far longer than the grace period.
    let mock = mock(MockConfig {
        stream_chunks: 2000,
        ..MockConfig::default()
    })
    .await;
    let toml = format!(
        "{}\n[[budgets]]\nscope = \"organization\"\nwindow = \"monthly\"\nlimit_usd = 100\n",
        standard_policy(&mock)
    );
    let mut gw = Gateway::start_with(&toml, &[], &["--shutdown-grace-ms", "300"]);
    let (_, secret) = gw.create_key("*");
    let mut body = chat_body("slow-stream");
    body["stream"] = true.into();
    let mut response = http()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&secret)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut text = String::new();
    while text.matches("data: ").count() < 3 {
        let chunk = response.chunk().await.unwrap().expect("stream open");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    gw.sigterm();
    // The client gets a clean end: an error event in its family's shape, then the end of the
    // body (no cut connection).
    while let Some(chunk) = response.chunk().await.expect("a clean end, not a cut") {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let last = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap();
    let event: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(event["error"]["code"], "gateway_shutting_down", "{text}");
    assert!(!text.contains("[DONE]"));
    assert!(gw.wait_exit(Duration::from_secs(20)).success());
    // Recorded as ended by the shutdown, billed what was streamed, and settled: the stored
    // spend is that cost.
    let rows = read_usage(&gw.db_url).await;
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row["status"], 200);
    assert_eq!(row["stream_status"], "shutdown");
    assert_eq!(row["error_code"], "gateway_shutting_down");
    assert!(row["output_tokens"].as_i64().unwrap() > 0, "{row}");
    let cost = row["cost_nanos"].as_i64().unwrap();
    assert!(cost > 0, "{row}");
    let store = tollgate::store::Store::open(&gw.db_url).await.unwrap();
    assert_eq!(store.outstanding_holds().await.unwrap(), 0);
    let spent: Vec<(String, i64, i64)> = store.latest_counters().await.unwrap();
    assert_eq!(spent.len(), 1, "{spent:?}");
    assert_eq!(spent[0].2, cost, "stored spend equals the recorded cost");
}

/// An MCP upstream whose answers to anything but `initialize` are SSE streams that never end.
async fn endless_mcp_upstream() -> std::net::SocketAddr {
    use axum::response::IntoResponse;
    use futures_util::StreamExt as _;
    let app = axum::Router::new().route(
        "/mcp",
        axum::routing::post(|body: axum::Json<serde_json::Value>| async move {
            let id = body.0["id"].clone();
            if body.0["method"] == "initialize" {
                return (
                    [("content-type", "application/json"), ("mcp-session-id", "up-1")],
                    serde_json::json!({"jsonrpc": "2.0", "id": id, "result": {"protocolVersion": "2025-06-18", "capabilities": {}, "serverInfo": {"name": "endless", "version": "1"}}}).to_string(),
                )
                    .into_response();
            }
            let first = serde_json::json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 1, "progress": 1}});
            let events = futures_util::stream::once(async move {
                Ok::<_, std::convert::Infallible>(format!("event: message\ndata: {first}\n\n"))
            })
            .chain(futures_util::stream::pending());
            (
                [("content-type", "text/event-stream")],
                axum::body::Body::from_stream(events),
            )
                .into_response()
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test]
async fn an_mcp_stream_still_open_after_the_grace_period_ends_and_is_recorded() {
    use futures_util::StreamExt as _;
    let addr = endless_mcp_upstream().await;
    let policy = format!(
        "[mcp_servers.endless]\ntransport = \"streamable_http\"\nurl = \"http://{addr}/mcp\"\n"
    );
    let mut gw = Gateway::start_with(&policy, &[], &["--shutdown-grace-ms", "300"]);
    let (_, key) = gw.create_key_with(&["--mcp", "endless"]);
    let url = gw.url("/v1/mcp/endless");
    let session = super::mcp::initialize(&url, &key, "2025-06-18").await;
    let call = super::mcp::rpc(
        2,
        "tools/call",
        serde_json::json!({"name": "wait", "arguments": {}}),
    );
    let mut response = super::mcp::post(&url, &key, Some(&session), &call).await;
    assert_eq!(response.status(), 200);
    let first = response.chunk().await.unwrap().expect("the first event");
    assert!(String::from_utf8_lossy(&first).contains("notifications/progress"));
    gw.sigterm();
    // The stream ends: the rest of the body is empty and the connection closes cleanly.
    let rest: Vec<_> = futures_util::stream::unfold(response, |mut r| async move {
        r.chunk().await.expect("a clean end").map(|c| (c, r))
    })
    .collect()
    .await;
    assert!(rest.iter().all(|c| c.is_empty()), "{rest:?}");
    assert!(gw.wait_exit(Duration::from_secs(20)).success());
    let rows = read_usage(&gw.db_url).await;
    let call_row = rows
        .iter()
        .find(|r| r["stream_status"] == "shutdown")
        .unwrap_or_else(|| panic!("no row ended by the shutdown: {rows:#?}"));
    assert_eq!(call_row["provider"], "mcp");
    assert_eq!(call_row["status"], 200);
}

#[tokio::test]
async fn a_translated_stream_still_open_after_the_grace_period_ends_with_an_anthropic_error_event()
{
    let mock = mock(MockConfig {
        stream_chunks: 2000,
        ..MockConfig::default()
    })
    .await;
    let extra = r#"
[models.slow-for-claude]
provider = "openai"
upstream_model = "mock-slow-stream"
translate = true
pricing = { input_per_mtok = 2.5, output_per_mtok = 10.0 }
"#;
    let mut gw = Gateway::start_with(
        &crate::common::family_policy(&mock, extra),
        &[],
        &["--shutdown-grace-ms", "300"],
    );
    let (_, secret) = gw.create_key("*");
    let body = serde_json::json!({"model": "slow-for-claude", "max_tokens": 100, "stream": true,
        "messages": [{"role": "user", "content": "hello"}]});
    let mut response = http()
        .post(gw.url("/v1/messages"))
        .header("x-api-key", &secret)
        .header("anthropic-version", "2023-06-01")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut text = String::new();
    while text.matches("content_block_delta").count() < 3 {
        let chunk = response.chunk().await.unwrap().expect("stream open");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    gw.sigterm();
    while let Some(chunk) = response.chunk().await.expect("a clean end, not a cut") {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let last = text.trim_end().rsplit("\n\n").next().unwrap();
    assert!(last.starts_with("event: error"), "{text}");
    assert!(gw.wait_exit(Duration::from_secs(20)).success());
    let rows = read_usage(&gw.db_url).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["stream_status"], "shutdown");
    assert_eq!(rows[0]["error_code"], "gateway_shutting_down");
}
