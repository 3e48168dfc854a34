//! Observability: `/metrics` figures against the usage rows of real requests, `/readyz` with
//! the store taken away, the key-validation endpoint, and OTLP traces received in process.

use std::time::{Duration, Instant};

use mock_upstream::MockConfig;
use serde_json::Value;

use crate::common::otlp::Receiver;
use crate::common::{
    ADMIN_TOKEN, Gateway, PgDatabase, TcpProxy, chat_body, expect_error, http, mock, post_chat,
    request_id, sample, skip, standard_policy,
};

/// A policy with the standard mock models and a daily budget for the team `research`.
fn budgeted_policy(mock: &mock_upstream::MockHandle) -> String {
    format!(
        "{}\n[[budgets]]\nscope = \"team\"\nsubject = \"research\"\nwindow = \"daily\"\nlimit_usd = 1.0\n",
        standard_policy(mock)
    )
}

fn sum(rows: &[Value], pred: impl Fn(&Value) -> bool, field: &str) -> i64 {
    rows.iter()
        .filter(|r| pred(r))
        .map(|r| r[field].as_i64().unwrap_or(0))
        .sum()
}

#[tokio::test]
async fn metrics_count_the_requests_tokens_and_cost_of_the_usage_rows() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&budgeted_policy(&mock));
    let (_, secret) = gw.create_key_with(&["--models", "*", "--team", "research"]);
    for _ in 0..3 {
        assert_eq!(post_chat(&gw, &secret, "chat").await.status(), 200);
    }
    assert_eq!(post_chat(&gw, &secret, "fail-400").await.status(), 400);
    expect_error(
        post_chat(&gw, &secret, "no-such-model").await,
        400,
        "model_not_found",
    )
    .await;
    expect_error(
        post_chat(&gw, "tg_0000000000000000000000000000000000000000", "chat").await,
        401,
        "unauthorized",
    )
    .await;
    let rows = gw.wait_rows(6).await;
    // The writer's counters follow its commit; wait until nothing is queued.
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let metrics = gw.metrics().await;
        if sample(&metrics, "tollgate_usage_queue_depth") == 0.0 {
            break metrics;
        }
        assert!(Instant::now() < deadline, "the usage queue never drained");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let requests = |model: &str, provider: &str, status: u16, stage: &str| {
        format!(
            "tollgate_requests_total{{endpoint=\"/v1/chat/completions\",model=\"{model}\",provider=\"{provider}\",status=\"{status}\",denied_stage=\"{stage}\"}}"
        )
    };
    assert_eq!(sample(&metrics, &requests("chat", "mock", 200, "")), 3.0);
    assert_eq!(
        sample(&metrics, &requests("fail-400", "mock", 400, "")),
        1.0
    );
    // An unknown model name a client sent is no label.
    assert_eq!(sample(&metrics, &requests("", "", 400, "authorize")), 1.0);
    assert_eq!(
        sample(&metrics, &requests("", "", 401, "authenticate")),
        1.0
    );
    assert!(!metrics.keys().any(|k| k.contains("no-such-model")));
    let total: f64 = metrics
        .iter()
        .filter(|(k, _)| k.starts_with("tollgate_requests_total{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(total, rows.len() as f64, "one count per usage row");

    // Tokens and cost equal the sums of the usage rows, by model, provider and team.
    let chat_rows = |r: &Value| r["served_model"] == "chat";
    assert!(sum(&rows, chat_rows, "cost_nanos") > 0);
    let labels = "model=\"chat\",provider=\"mock\",team=\"research\"";
    for (kind, field) in [
        ("input", "input_tokens"),
        ("output", "output_tokens"),
        ("cached_input", "cached_input_tokens"),
        ("reasoning", "reasoning_tokens"),
    ] {
        assert_eq!(
            sample(
                &metrics,
                &format!("tollgate_tokens_total{{{labels},kind=\"{kind}\"}}")
            ),
            sum(&rows, chat_rows, field) as f64,
            "{kind} tokens"
        );
    }
    let cost = sum(&rows, chat_rows, "cost_nanos");
    assert_eq!(
        sample(
            &metrics,
            &format!("tollgate_cost_nanousd_total{{{labels}}}")
        ),
        cost as f64
    );

    // Latency histograms: one upstream observation per call that reached the mock.
    assert_eq!(
        sample(
            &metrics,
            "tollgate_upstream_latency_seconds_count{provider=\"mock\",model=\"chat\"}"
        ),
        3.0
    );
    assert_eq!(
        sample(
            &metrics,
            "tollgate_gateway_overhead_seconds_count{endpoint=\"/v1/chat/completions\"}"
        ),
        6.0
    );
    assert_eq!(
        sample(
            &metrics,
            "tollgate_gateway_overhead_seconds_bucket{endpoint=\"/v1/chat/completions\",le=\"+Inf\"}"
        ),
        6.0
    );

    // The team's budget: what the rows cost is spent, the rest remains, nothing is held.
    let budget = "budget=\"policy-team-research-daily\",scope=\"team\",subject=\"research\",window=\"daily\"";
    let spent = sample(&metrics, &format!("tollgate_budget_spent_usd{{{budget}}}"));
    let remaining = sample(
        &metrics,
        &format!("tollgate_budget_remaining_usd{{{budget}}}"),
    );
    let team_cost = sum(&rows, |r| r["team"] == "research", "cost_nanos");
    assert_eq!((spent * 1e9).round() as i64, team_cost);
    assert_eq!((remaining * 1e9).round() as i64, 1_000_000_000 - team_cost);
    assert_eq!(
        sample(&metrics, &format!("tollgate_budget_held_usd{{{budget}}}")),
        0.0
    );
    assert_eq!(sample(&metrics, "tollgate_holds_outstanding"), 0.0);
    assert_eq!(
        sample(&metrics, "tollgate_usage_records_written_total"),
        rows.len() as f64
    );
    assert_eq!(sample(&metrics, "tollgate_budget_scrape_errors"), 0.0);
}

#[tokio::test]
async fn protected_metrics_need_the_admin_token() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start_with(&standard_policy(&mock), &[], &["--protect-metrics"]);
    expect_error(
        http().get(gw.url("/metrics")).send().await.unwrap(),
        401,
        "unauthorized",
    )
    .await;
    let response = http()
        .get(gw.url("/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("tollgate_requests_total")
    );
}

#[tokio::test]
async fn readyz_answers_ready_on_a_working_store() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&standard_policy(&mock));
    let response = http().get(gw.url("/readyz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    assert_eq!(body["checks"]["policy"]["generation"], 1);
    assert_eq!(body["checks"]["store"]["backend"], "sqlite");
    assert_eq!(
        http()
            .get(gw.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

// The proxy runs in this runtime while the harness blocks on the gateway's start: two workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_503_with_the_reason_while_the_store_is_away() {
    let test = "readyz_answers_503_with_the_reason_while_the_store_is_away";
    let db = match PgDatabase::create() {
        Ok(db) => db,
        Err(why) => return skip(test, &why),
    };
    let proxy = TcpProxy::start(crate::common::pg_addr()).await;
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start_db(&standard_policy(&mock), &[], &[], &db.url_via(proxy.addr));
    let readyz = || async {
        let response = http().get(gw.url("/readyz")).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.unwrap())
    };
    let (status, body) = readyz().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"]["store"]["backend"], "postgres");
    proxy.cut();
    let (status, body) = readyz().await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["checks"]["store"]["ok"], false);
    assert_eq!(body["checks"]["policy"]["ok"], true);
    let reason = body["reason"].as_str().unwrap();
    assert!(reason.contains("postgres store is unreachable"), "{reason}");
    for leak in ["127.0.0.1", "password", "os error"] {
        assert!(!reason.contains(leak), "readyz leaks {leak:?}: {reason}");
    }
    // Liveness does not depend on the store.
    assert_eq!(
        http()
            .get(gw.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = readyz().await;
        if status == 200 {
            assert_eq!(body["status"], "ready");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still not ready after the store returned: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn key_info_shows_the_callers_own_key_grants_and_remaining_budget() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&budgeted_policy(&mock));
    let expires = "2099-01-01T00:00:00Z";
    let (id, secret) = gw.create_key_with(&[
        "--models",
        "chat,embed",
        "--team",
        "research",
        "--expires-at",
        expires,
    ]);
    let (other_id, _) = gw.create_key_with(&["--models", "*", "--team", "research"]);
    let answered = post_chat(&gw, &secret, "chat").await;
    assert_eq!(answered.status(), 200);
    let row = gw.row_for(&request_id(&answered)).await;
    let cost = row["cost_nanos"].as_i64().unwrap();
    assert!(cost > 0);
    for path in ["/v1/key/info", "/v1/validate-key"] {
        let response = http()
            .get(gw.url(path))
            .bearer_auth(&secret)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let text = response.text().await.unwrap();
        assert!(!text.contains(&secret), "the secret is never returned");
        assert!(!text.contains(&other_id), "never another key");
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["valid"], true);
        assert_eq!(body["key"]["id"], id.as_str());
        assert_eq!(body["key"]["name"], "test");
        assert_eq!(body["key"]["team"], "research");
        assert_eq!(body["key"]["expires_at_ms"], 4_070_908_800_000_i64);
        assert_eq!(
            body["grants"]["models"],
            serde_json::json!(["chat", "embed"])
        );
        assert_eq!(body["grants"]["mcp"], serde_json::json!([]));
        assert_eq!(body["models"], serde_json::json!(["chat", "embed"]));
        let budget = &body["budgets"][0];
        assert_eq!(budget["scope"], "team");
        assert_eq!(budget["window"], "daily");
        assert_eq!(budget["limit_usd"], 1.0);
        assert_eq!(budget["remaining_nanos"], 1_000_000_000 - cost);
        assert_eq!(body["budgets"].as_array().unwrap().len(), 1);
    }
    // The same 401 codes as every other endpoint, in the family the key was presented in.
    expect_error(
        http().get(gw.url("/v1/key/info")).send().await.unwrap(),
        401,
        "unauthorized",
    )
    .await;
    let anthropic = http()
        .get(gw.url("/v1/key/info"))
        .header("x-api-key", "tg_0000000000000000000000000000000000000000")
        .send()
        .await
        .unwrap();
    assert_eq!(anthropic.status(), 401);
    let body: Value = anthropic.json().await.unwrap();
    assert_eq!(body["type"], "error", "Anthropic's error shape: {body}");
    assert_eq!(body["error"]["code"], "unauthorized");
    let out = gw.keys(&["revoke", &id]);
    assert!(out.status.success());
    expect_error(
        http()
            .get(gw.url("/v1/key/info"))
            .bearer_auth(&secret)
            .send()
            .await
            .unwrap(),
        401,
        "api_key_revoked",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_one_trace_with_a_span_per_stage_and_its_context_reaches_the_provider() {
    let receiver = Receiver::start().await;
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start_env(
        &standard_policy(&mock),
        &[],
        &[],
        &[
            ("TOLLGATE_OTLP_ENDPOINT", receiver.base.as_str()),
            ("TOLLGATE_OTLP_SERVICE_NAME", "tollgate-e2e"),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ],
    );
    let (key_id, secret) = gw.create_key("*");
    // The client is part of a trace already: the gateway's span continues it.
    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let response = http()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&secret)
        .header("traceparent", format!("00-{client_trace}-{client_span}-01"))
        .json(&chat_body("chat"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    let spans = receiver
        .wait_for("request span with its record stage", |spans| {
            spans
                .iter()
                .any(|s| s.trace_id == client_trace && s.name == "POST /v1/chat/completions")
                && spans
                    .iter()
                    .any(|s| s.trace_id == client_trace && s.name == "record")
        })
        .await;
    let trace: Vec<_> = spans
        .iter()
        .filter(|s| s.trace_id == client_trace)
        .collect();
    let request = trace
        .iter()
        .find(|s| s.name == "POST /v1/chat/completions")
        .unwrap();
    assert_eq!(
        request.parent_span_id, client_span,
        "continues the client's span"
    );
    assert_eq!(request.kind, 2, "a server span");
    assert_eq!(request.service, "tollgate-e2e");
    let a = &request.attributes;
    assert_eq!(a["tollgate.request_id"], id.as_str());
    assert_eq!(a["gen_ai.operation.name"], "chat");
    assert_eq!(a["gen_ai.system"], "openai");
    assert_eq!(a["gen_ai.request.model"], "chat");
    assert_eq!(a["gen_ai.response.model"], "upstream-chat-v1");
    assert_eq!(a["gen_ai.usage.input_tokens"], 11);
    assert_eq!(a["gen_ai.usage.output_tokens"], 7);
    assert_eq!(a["http.response.status_code"], 200);
    assert_eq!(a["tollgate.key_id"], key_id.as_str());
    let row = gw.row_for(&id).await;
    assert_eq!(a["tollgate.cost_nanos"], row["cost_nanos"]);
    // One child per stage, in the request's trace, under the request span.
    let children: Vec<&str> = trace
        .iter()
        .filter(|s| s.parent_span_id == request.span_id)
        .map(|s| s.name.as_str())
        .collect();
    for stage in [
        "authenticate",
        "authorize",
        "inspect",
        "reserve",
        "route",
        "upstream_attempt mock",
        "record",
    ] {
        assert_eq!(
            children.iter().filter(|c| **c == stage).count(),
            1,
            "one {stage} span under the request: {children:?}"
        );
    }
    let attempt = trace
        .iter()
        .find(|s| s.name == "upstream_attempt mock")
        .unwrap();
    assert_eq!(attempt.kind, 3, "a client span");
    assert_eq!(
        attempt.attributes["gen_ai.request.model"],
        "upstream-chat-v1"
    );
    assert_eq!(attempt.attributes["http.response.status_code"], 200);
    // The provider saw the same trace, as a child of the attempt.
    let seen = mock.received();
    let traceparent = seen
        .last()
        .unwrap()
        .headers
        .get("traceparent")
        .expect("traceparent sent upstream")
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        traceparent,
        format!("00-{client_trace}-{}-01", attempt.span_id)
    );

    // Without a client trace the gateway starts one, and still propagates it.
    let response = post_chat(&gw, &secret, "chat").await;
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    let spans = receiver
        .wait_for("the second request's span", |spans| {
            spans
                .iter()
                .any(|s| s.attributes.get("tollgate.request_id") == Some(&Value::from(id.as_str())))
        })
        .await;
    let root = spans
        .iter()
        .find(|s| s.attributes.get("tollgate.request_id") == Some(&Value::from(id.as_str())))
        .unwrap();
    assert_eq!(root.parent_span_id, "", "a root span");
    let traceparent = mock.received().last().unwrap().headers["traceparent"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        traceparent.starts_with(&format!("00-{}-", root.trace_id)),
        "{traceparent} is in trace {}",
        root.trace_id
    );
}

#[tokio::test]
async fn without_an_otlp_endpoint_nothing_is_propagated_upstream() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&standard_policy(&mock));
    let (_, secret) = gw.create_key("*");
    let response = http()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&secret)
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .json(&chat_body("chat"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        mock.received()
            .last()
            .unwrap()
            .headers
            .get("traceparent")
            .is_none()
    );
}

#[tokio::test]
async fn mcp_calls_are_counted_by_server_method_and_tool_as_their_usage_rows() {
    use super::mcp::{init_params, post, rpc, wait_mcp_rows};
    let (addr, _) = super::mcp_upstream::recording_upstream().await;
    let policy = format!(
        "[mcp_servers.rec]\ntransport = \"streamable_http\"\nurl = \"http://{addr}/mcp\"\nblocked_tools = [\"get-env\"]\n"
    );
    let gw = Gateway::start(&policy);
    let (_, key) = gw.create_key_with(&["--mcp", "rec"]);
    let url = gw.url("/v1/mcp/rec");
    let init = post(
        &url,
        &key,
        None,
        &rpc(1, "initialize", init_params("2025-06-18")),
    )
    .await;
    assert_eq!(init.status(), 200);
    let session = init.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string();
    let call = |id: i64, tool: &str| {
        rpc(
            id,
            "tools/call",
            serde_json::json!({"name": tool, "arguments": {}}),
        )
    };
    for id in 2..4 {
        let answer = post(&url, &key, Some(&session), &call(id, "echo")).await;
        assert_eq!(answer.status(), 200);
    }
    // Refused inside the session as a JSON-RPC error; its usage row (and label) says 403.
    let refused = post(&url, &key, Some(&session), &call(4, "get-env")).await;
    let refused = super::mcp::rpc_answer(refused).await;
    assert_eq!(
        refused["error"]["data"]["code"], "mcp_guardrail_block",
        "{refused}"
    );
    let rows = wait_mcp_rows(&gw, |rows| rows.len() == 4).await;
    let metrics = gw.metrics().await;
    let calls = |method: &str, tool: &str, status: u16| {
        sample(
            &metrics,
            &format!(
                "tollgate_mcp_calls_total{{server=\"rec\",method=\"{method}\",tool=\"{tool}\",status=\"{status}\"}}"
            ),
        )
    };
    assert_eq!(calls("initialize", "", 200), 1.0);
    assert_eq!(calls("tools/call", "echo", 200), 2.0);
    assert_eq!(calls("tools/call", "get-env", 403), 1.0);
    let counted: f64 = metrics
        .iter()
        .filter(|(k, _)| k.starts_with("tollgate_mcp_calls_total{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(counted, rows.len() as f64, "one count per MCP usage row");
    assert_eq!(
        sample(
            &metrics,
            "tollgate_requests_total{endpoint=\"/v1/mcp\",model=\"\",provider=\"mcp\",status=\"403\",denied_stage=\"inspect\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_is_one_upstream_attempt_span_per_deployment_tried() {
    let receiver = Receiver::start().await;
    let mock = mock(MockConfig::default()).await;
    let policy = format!(
        "{}\n[groups.failover]\ndeployments = [{{ model = \"fail-500\", priority = 0 }}, {{ model = \"chat\", priority = 1 }}]\n",
        standard_policy(&mock)
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
    let (_, secret) = gw.create_key("*");
    let response = post_chat(&gw, &secret, "failover").await;
    assert_eq!(response.status(), 200);
    let id = Value::from(request_id(&response));
    let spans = receiver
        .wait_for("the failover request's record span", |spans| {
            spans
                .iter()
                .any(|s| s.attributes.get("tollgate.request_id") == Some(&id))
                && spans.iter().any(|s| s.name == "record")
        })
        .await;
    let request = spans
        .iter()
        .find(|s| s.attributes.get("tollgate.request_id") == Some(&id))
        .unwrap();
    let attempts: Vec<_> = spans
        .iter()
        .filter(|s| s.parent_span_id == request.span_id && s.name == "upstream_attempt mock")
        .collect();
    assert_eq!(attempts.len(), 2, "{spans:#?}");
    let statuses: Vec<&Value> = attempts
        .iter()
        .map(|s| &s.attributes["http.response.status_code"])
        .collect();
    assert!(statuses.contains(&&Value::from(500)) && statuses.contains(&&Value::from(200)));
    assert_eq!(
        request.attributes["gen_ai.response.model"],
        "upstream-chat-v1"
    );
    // Each attempt sent its own span as the provider's parent, in the request's trace.
    let sent: Vec<String> = mock
        .received()
        .iter()
        .filter_map(|r| r.headers.get("traceparent"))
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    for attempt in &attempts {
        assert!(
            sent.contains(&format!("00-{}-{}-01", request.trace_id, attempt.span_id)),
            "{sent:?}"
        );
    }
}
