//! Usage records under concurrency: one row per request, exact tokens and cost.

use std::collections::HashSet;

use mock_upstream::MockConfig;

use crate::common::{Gateway, chat_body, http, mock, request_id, standard_policy};

#[tokio::test]
async fn a_burst_of_200_concurrent_requests_leaves_200_exact_rows() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&standard_policy(&mock));
    let (key_id, secret) = gw.create_key("*");
    let client = http();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let client = client.clone();
        let url = gw.url("/v1/chat/completions");
        let secret = secret.clone();
        let stream = i % 4 == 0;
        tasks.push(tokio::spawn(async move {
            let mut body = chat_body("chat");
            body["stream"] = stream.into();
            let response = client
                .post(url)
                .bearer_auth(secret)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let id = request_id(&response);
            response.bytes().await.unwrap();
            id
        }));
    }
    let mut ids = HashSet::new();
    for task in tasks {
        ids.insert(task.await.unwrap());
    }
    assert_eq!(ids.len(), 200, "request ids are unique");
    let rows = gw.wait_rows(200).await;
    assert_eq!(rows.len(), 200);
    let per_call = 9 * 2500 + 2 * 1250 + 7 * 10_000;
    for row in &rows {
        assert!(ids.contains(row["request_id"].as_str().unwrap()));
        assert_eq!(row["key_id"], key_id.as_str());
        assert_eq!(row["status"], 200);
        assert_eq!(row["requested_model"], "chat");
        assert_eq!(row["served_model"], "chat");
        assert_eq!(row["upstream_model"], "upstream-chat-v1");
        assert_eq!(row["provider"], "mock");
        assert_eq!(row["input_tokens"], 11);
        assert_eq!(row["output_tokens"], 7);
        assert_eq!(row["total_tokens"], 18);
        assert_eq!(row["cost_nanos"], per_call);
        assert!(row["latency_us"].as_i64().unwrap() > 0);
        assert!(row["ttfb_us"].as_i64().is_some());
    }
    let total: i64 = rows.iter().map(|r| r["cost_nanos"].as_i64().unwrap()).sum();
    assert_eq!(total, 200 * per_call);
    assert_eq!(rows.iter().filter(|r| r["stream"] == 1).count(), 50);
}

#[tokio::test]
async fn records_carry_the_raw_provider_usage_and_the_decision_trail() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&standard_policy(&mock));
    let (_, secret) = gw.create_key("*");
    let response = http()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&secret)
        .header("user-agent", "e2e-test/1")
        .json(&chat_body("chat"))
        .send()
        .await
        .unwrap();
    let row = gw.row_for(&request_id(&response)).await;
    let raw: serde_json::Value =
        serde_json::from_str(row["provider_usage"].as_str().unwrap()).unwrap();
    assert_eq!(
        raw["completion_tokens_details"]["accepted_prediction_tokens"],
        0
    );
    let decisions: serde_json::Value =
        serde_json::from_str(row["decisions"].as_str().unwrap()).unwrap();
    let stages: Vec<_> = decisions
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["authenticate", "authorize"]);
    assert_eq!(row["method"], "POST");
}
