//! SSE streams are relayed chunk by chunk and billed from the final usage chunk.

use std::time::Duration;

use futures_util::StreamExt;
use mock_upstream::{MockConfig, MockHandle};
use serde_json::{Value, json};

use crate::common::{Gateway, http, mock, request_id, standard_policy};

/// Reads a whole SSE response into its `data:` payloads.
async fn events(response: reqwest::Response) -> Vec<String> {
    let text = response.text().await.unwrap();
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| e.strip_prefix("data: ").unwrap_or(e).to_string())
        .collect()
}

/// A gateway on the standard policy (and its mock), and a chat stream for `model` through it.
async fn stream_through(
    model: &str,
    include_usage: Option<bool>,
) -> (MockHandle, Gateway, reqwest::Response) {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&standard_policy(&mock));
    let (_, secret) = gw.create_key("*");
    let response = http()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&secret)
        .json(&stream_body(model, include_usage))
        .send()
        .await
        .unwrap();
    (mock, gw, response)
}

fn stream_body(model: &str, include_usage: Option<bool>) -> Value {
    let mut body =
        json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "count"}]});
    if let Some(include) = include_usage {
        body["stream_options"] = json!({"include_usage": include});
    }
    body
}

#[tokio::test]
async fn stream_is_relayed_intact_and_billed_from_the_usage_chunk_the_client_did_not_ask_for() {
    let (mock, gw, response) = stream_through("chat", None).await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let id = request_id(&response);
    let events = events(response).await;
    // role chunk + 20 content chunks + finish chunk + [DONE]; the usage chunk is hidden.
    assert_eq!(events.len(), 23, "{events:#?}");
    assert_eq!(events.last().unwrap(), "[DONE]");
    let content: String = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    let expected: String = (0..20).map(|i| format!("tok{i} ")).collect();
    assert_eq!(content, expected);
    assert!(events.iter().all(|e| !e.contains("\"choices\":[]")));

    // The gateway asked upstream for usage even though the client did not.
    assert_eq!(
        mock.received()[0].body["stream_options"]["include_usage"],
        true
    );
    let row = gw.row_for(&id).await;
    assert_eq!(row["stream"], 1);
    assert_eq!(row["stream_status"], "completed");
    assert_eq!(row["input_tokens"], 11);
    assert_eq!(row["output_tokens"], 7);
    assert_eq!(row["cached_input_tokens"], 2);
    assert_eq!(row["reasoning_tokens"], 3);
    assert_eq!(row["cost_nanos"], 9 * 2500 + 2 * 1250 + 7 * 10_000);
    assert!(row["ttfb_us"].as_i64().unwrap() <= row["latency_us"].as_i64().unwrap());
}

#[tokio::test]
async fn usage_chunk_is_forwarded_when_the_client_asked_for_it() {
    let (_mock, _gw, response) = stream_through("chat", Some(true)).await;
    let events = events(response).await;
    assert_eq!(events.len(), 24);
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["prompt_tokens"], 11);
}

#[tokio::test]
async fn chunks_arrive_as_the_upstream_produces_them() {
    // The upstream waits 50 ms between chunks: a buffering gateway would deliver everything at
    // the end, a relaying one delivers the first chunk long before the last.
    let (_mock, _gw, response) = stream_through("slow-stream", None).await;
    let started = std::time::Instant::now();
    let mut body = response.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    let first_at = started.elapsed();
    assert!(String::from_utf8_lossy(&first).starts_with("data: "));
    let mut reads = 1;
    while let Some(chunk) = body.next().await {
        chunk.unwrap();
        reads += 1;
    }
    let total = started.elapsed();
    assert!(reads >= 10, "the stream arrived in {reads} reads");
    assert!(
        total - first_at >= Duration::from_millis(500),
        "first chunk at {first_at:?}, end at {total:?}"
    );
}

#[tokio::test]
async fn client_disconnect_mid_stream_still_writes_the_record() {
    let (_mock, gw, response) = stream_through("stall", None).await;
    let id = request_id(&response);
    let mut body = response.bytes_stream();
    body.next().await.unwrap().unwrap();
    drop(body);
    let row = gw.row_for(&id).await;
    assert_eq!(row["status"], 200);
    assert_eq!(row["stream_status"], "client_disconnected");
}

#[tokio::test]
async fn a_silent_upstream_stream_ends_with_an_error_event_after_its_timeout() {
    let (_mock, gw, response) = stream_through("stall", None).await;
    let id = request_id(&response);
    let events = tokio::time::timeout(Duration::from_secs(10), events(response))
        .await
        .unwrap();
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_timeout");
    let row = gw.row_for(&id).await;
    assert_eq!(row["stream_status"], "idle_timeout");
    assert_eq!(row["error_code"], "upstream_timeout");
}

#[tokio::test]
async fn responses_api_streams_are_billed_from_the_completed_event() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&standard_policy(&mock));
    let (_, secret) = gw.create_key("*");
    let response = http()
        .post(gw.url("/v1/responses"))
        .bearer_auth(&secret)
        .json(&json!({"model": "chat", "input": "hi", "stream": true}))
        .send()
        .await
        .unwrap();
    let id = request_id(&response);
    let text = response.text().await.unwrap();
    assert!(text.contains("event: response.completed"));
    let row = gw.row_for(&id).await;
    assert_eq!(row["input_tokens"], 13);
    assert_eq!(row["output_tokens"], 4);
    assert_eq!(row["reasoning_tokens"], 1);
}
