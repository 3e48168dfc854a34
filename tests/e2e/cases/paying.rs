//! No spending without paying: every token the provider produces is billed and settled, what is
//! forwarded never exceeds what was held, and a hold lives as long as its request.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use mock_upstream::{MockConfig, MockHandle};
use serde_json::{Value, json};
use tollgate::store::Store;

use crate::common::{Gateway, expect_error, http, mock};

/// The mock's chat usage (11 input of which 2 cached, 7 output) at the `priced` model's prices.
const CHAT_NANOS: i64 = 9 * 2500 + 2 * 1250 + 7 * 10_000;

fn policy(mock: &MockHandle, server_extra: &str, extra: &str) -> String {
    let base = mock.base_url();
    format!(
        r#"
[server]
max_body_bytes = 65536
{server_extra}

[providers.mock]
family = "openai"
base_url = "{base}"
credential = {{ env = "TG_TEST_PROVIDER_KEY" }}
timeout_ms = 5000

[models.priced]
provider = "mock"
upstream_model = "upstream-priced"
pricing = {{ input_per_mtok = 2.5, output_per_mtok = 10.0, cached_input_per_mtok = 1.25 }}
max_output_tokens = 300

[models.absurd]
provider = "mock"
upstream_model = "mock-absurd-usage"
pricing = {{ input_per_mtok = 2.5, output_per_mtok = 10.0, cached_input_per_mtok = 1.25 }}
max_output_tokens = 300

[models.slow-stream]
provider = "mock"
upstream_model = "mock-slow-stream"
pricing = {{ input_per_mtok = 2.5, output_per_mtok = 10.0, cached_input_per_mtok = 1.25 }}

[[budgets]]
scope = "organization"
window = "daily"
limit_usd = 10.0
{extra}
"#
    )
}

async fn budget_window(gw: &Gateway) -> Value {
    gw.admin_get("/admin/budgets").await["budgets"][0]["current_window"].clone()
}

/// Waits until nothing is held on the budget any more, then returns its window.
async fn settled_window(gw: &Gateway) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let window = budget_window(gw).await;
        if window["reserved_nanos"] == 0 && window["spent_nanos"].as_i64() != Some(0) {
            return window;
        }
        assert!(Instant::now() < deadline, "never settled: {window}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends a chat call and hangs up as soon as the provider has it (the mock answers 800 ms
/// later), before any byte of the answer.
async fn leave_once_upstream_called(gw: &Gateway, mock: &MockHandle, secret: &str, body: Value) {
    let request = http()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(secret)
        .json(&body)
        .send();
    let client = tokio::spawn(request);
    let deadline = Instant::now() + Duration::from_secs(10);
    while mock.count() == 0 {
        assert!(
            Instant::now() < deadline,
            "the call never reached the provider"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        !client.is_finished(),
        "the answer came before the client left"
    );
    client.abort();
    assert!(client.await.is_err(), "the client hung up");
}

#[tokio::test]
async fn a_client_that_disconnects_during_a_non_streamed_call_is_billed_its_real_usage() {
    let mock = mock(MockConfig {
        latency: Duration::from_millis(800),
        ..MockConfig::default()
    })
    .await;
    let gw = Gateway::start(&policy(&mock, "", ""));
    let (_, secret) = gw.create_key("*");
    let body = json!({"model": "priced", "max_tokens": 50, "messages": [{"role": "user", "content": "hello"}]});
    leave_once_upstream_called(&gw, &mock, &secret, body).await;
    let row = gw.wait_rows(1).await.remove(0);
    assert_eq!(row["status"], 499, "{row}");
    assert_eq!(row["error_code"], "client_closed_request");
    assert_eq!(
        row["input_tokens"], 11,
        "the provider's usage was read: {row}"
    );
    assert_eq!(row["output_tokens"], 7);
    assert_eq!(row["cost_nanos"], CHAT_NANOS);
    assert_eq!(mock.count(), 1);
    let window = settled_window(&gw).await;
    assert_eq!(window["spent_nanos"], CHAT_NANOS);
}

#[tokio::test]
async fn a_stream_cut_before_its_first_byte_is_billed_its_real_usage() {
    let mock = mock(MockConfig {
        latency: Duration::from_millis(800),
        ..MockConfig::default()
    })
    .await;
    let gw = Gateway::start(&policy(&mock, "", ""));
    let (_, secret) = gw.create_key("*");
    let body = json!({"model": "priced", "stream": true, "max_tokens": 50,
                      "messages": [{"role": "user", "content": "hello"}]});
    leave_once_upstream_called(&gw, &mock, &secret, body).await;
    let row = gw.wait_rows(1).await.remove(0);
    assert_eq!(row["status"], 499, "{row}");
    assert_eq!(row["stream_status"], "client_disconnected", "{row}");
    assert_eq!(
        row["input_tokens"], 11,
        "the provider's usage was read: {row}"
    );
    assert_eq!(row["output_tokens"], 7);
    assert_eq!(row["cost_nanos"], CHAT_NANOS);
    let window = settled_window(&gw).await;
    assert_eq!(window["spent_nanos"], CHAT_NANOS);
}

#[tokio::test]
async fn the_held_output_cap_is_forwarded_when_the_client_sets_none() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&policy(&mock, "", ""));
    let (_, secret) = gw.create_key("*");
    let chat = |body: Value| {
        http()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(&secret)
            .json(&body)
            .send()
    };
    let messages = json!([{"role": "user", "content": "hello"}]);
    assert_eq!(
        chat(json!({"model": "priced", "messages": messages}))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        chat(json!({"model": "priced", "max_tokens": 40, "messages": messages}))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        chat(json!({"model": "priced", "n": 2, "max_completion_tokens": 30, "messages": messages}))
            .await
            .unwrap()
            .status(),
        200
    );
    let responses = http()
        .post(gw.url("/v1/responses"))
        .bearer_auth(&secret)
        .json(&json!({"model": "priced", "input": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(responses.status(), 200);
    let received = mock.received();
    assert_eq!(received.len(), 4);
    // No cap from the client: the model's bound that was held.
    assert_eq!(received[0].body["max_completion_tokens"], 300);
    assert!(received[0].body.get("max_tokens").is_none());
    // The client's own cap is kept as it was sent.
    assert_eq!(received[1].body["max_tokens"], 40);
    assert!(received[1].body.get("max_completion_tokens").is_none());
    assert_eq!(received[2].body["max_completion_tokens"], 30);
    assert_eq!(received[3].body["max_output_tokens"], 300);
    let rows = gw.wait_rows(4).await;
    let held: Vec<i64> = rows
        .iter()
        .map(|r| {
            let decisions: Value = serde_json::from_str(r["decisions"].as_str().unwrap()).unwrap();
            decisions
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["stage"] == "reserve")
                .map(|d| d["estimated_output_tokens"].as_i64().unwrap())
                .unwrap()
        })
        .collect();
    // n = 2 completions of at most 30 tokens each are held as 60.
    assert_eq!(held, [300, 40, 60, 300]);
}

#[tokio::test]
async fn max_tokens_the_model_cannot_accept_is_refused_with_400() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&policy(&mock, "", ""));
    let (_, secret) = gw.create_key("*");
    for bad in [
        json!(0),
        json!(-5),
        json!(1.5),
        json!("100"),
        json!(1e20),
        json!(301),
        json!(18_446_744_073_709_551_615_u64),
    ] {
        for field in ["max_tokens", "max_completion_tokens"] {
            let response = http()
                .post(gw.url("/v1/chat/completions"))
                .bearer_auth(&secret)
                .json(&json!({"model": "priced", field: bad,
                              "messages": [{"role": "user", "content": "hello"}]}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 400, "{field}={bad}");
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], "invalid_request", "{body}");
            let message = body["error"]["message"].as_str().unwrap();
            assert!(message.contains(field), "{field}={bad}: {message}");
        }
    }
    let response = http()
        .post(gw.url("/v1/responses"))
        .bearer_auth(&secret)
        .json(&json!({"model": "priced", "max_output_tokens": 0, "input": "hello"}))
        .send()
        .await
        .unwrap();
    expect_error(response, 400, "invalid_request").await;
    assert_eq!(mock.count(), 0, "nothing unbounded went upstream");
    // The model's maximum itself is fine.
    let response = http()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&secret)
        .json(&json!({"model": "priced", "max_tokens": 300,
                      "messages": [{"role": "user", "content": "hello"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn images_without_usage_are_priced_per_image() {
    let mock = mock(MockConfig::default()).await;
    let painter = r#"
[models.painter]
provider = "mock"
upstream_model = "mock-no-usage"
pricing = { images = { "1024x1024" = 0.04, "1024x1024/hd" = 0.08 } }
"#;
    let gw = Gateway::start(&policy(&mock, "", painter));
    let (_, secret) = gw.create_key("*");
    let response = http()
        .post(gw.url("/v1/images/generations"))
        .bearer_auth(&secret)
        .json(
            &json!({"model": "painter", "prompt": "a lighthouse", "n": 2,
                      "size": "1024x1024", "quality": "hd"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let row = gw.wait_rows(1).await.remove(0);
    assert_eq!(row["cost_nanos"], 2 * 80_000_000, "{row}");
    let window = settled_window(&gw).await;
    assert_eq!(window["spent_nanos"], 2 * 80_000_000);
    // A size the model has no price for is refused before it is generated unpaid.
    let response = http()
        .post(gw.url("/v1/images/generations"))
        .bearer_auth(&secret)
        .json(&json!({"model": "painter", "prompt": "a lighthouse", "size": "256x256"}))
        .send()
        .await
        .unwrap();
    expect_error(response, 400, "invalid_request").await;
}

#[tokio::test]
async fn a_stream_longer_than_the_hold_ttl_keeps_its_hold() {
    let mock = mock(MockConfig {
        stream_chunks: 70,
        ..MockConfig::default()
    })
    .await;
    let gw = Gateway::start(&policy(&mock, "hold_ttl_secs = 1", ""));
    let (_, secret) = gw.create_key("*");
    let response = http()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&secret)
        .json(
            &json!({"model": "slow-stream", "stream": true, "max_tokens": 100,
                      "messages": [{"role": "user", "content": "hello"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let reader = tokio::spawn(async move {
        let mut stream = response.bytes_stream();
        let mut text = String::new();
        while let Some(chunk) = stream.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        }
        text
    });
    // 70 chunks 50 ms apart: the stream runs 3.5 s, the hold lives 1 s and expired holds are
    // reclaimed every 2 s.
    tokio::time::sleep(Duration::from_millis(2800)).await;
    assert!(!reader.is_finished(), "the stream is still running");
    let window = budget_window(&gw).await;
    assert!(
        window["reserved_nanos"].as_i64().unwrap() > 0,
        "the running stream lost its hold: {window}"
    );
    let text = reader.await.unwrap();
    assert!(text.contains("[DONE]"));
    let row = gw.wait_rows(1).await.remove(0);
    assert_eq!(row["cost_nanos"], CHAT_NANOS);
    let window = settled_window(&gw).await;
    assert_eq!(window["spent_nanos"], CHAT_NANOS, "charged once");
    let store = Store::open(&gw.db_url).await.unwrap();
    assert_eq!(store.outstanding_holds().await.unwrap(), 0);
}

#[tokio::test]
async fn a_provider_reporting_absurd_usage_is_billed_its_hold_not_the_budget() {
    // A broken provider claims 1.8e18 prompt tokens: priced, that is i64::MAX nano-USD on the
    // budget and every later call refused with 402. It is billed the held estimate instead,
    // its raw usage kept and the anomaly named in the decision trail.
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&policy(&mock, "", ""));
    let (_, secret) = gw.create_key("*");
    let send = |model: &'static str| {
        http()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(&secret)
            .json(&json!({"model": model, "max_tokens": 20,
                          "messages": [{"role": "user", "content": "hi"}]}))
            .send()
    };
    let response = send("absurd").await.expect("send");
    assert_eq!(response.status(), 200);
    let id = response.headers()["x-request-id"]
        .to_str()
        .expect("id")
        .to_string();
    let row = gw.row_for(&id).await;
    let cost = row["cost_nanos"].as_i64().expect("cost");
    assert!(
        cost > 0 && cost < 1_000_000,
        "billed the hold, not the claim: {row}"
    );
    assert!(
        row["provider_usage"]
            .as_str()
            .is_some_and(|u| u.contains("1800000000000000000")),
        "{row}"
    );
    assert!(
        row["decisions"].to_string().contains("implausible"),
        "{row}"
    );
    let window = settled_window(&gw).await;
    assert_eq!(window["spent_nanos"], cost);
    let next = send("priced").await.expect("send");
    assert_eq!(
        next.status(),
        200,
        "the budget is not exhausted by the claim"
    );
}
