//! Requests reach the provider with its credential and upstream model id, and nothing else.

use mock_upstream::MockConfig;
use serde_json::{Value, json};

use crate::common::{Gateway, PROVIDER_KEY, chat_body, http, mock, request_id, standard_policy};

#[tokio::test]
async fn provider_key_is_injected_and_virtual_key_never_reaches_upstream() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&standard_policy(&mock));
    let (_, secret) = gw.create_key("*");
    let mut body = chat_body("chat");
    body["tollgate_unknown_field"] = json!({"nested": [1, "two", {"three": 3.5}]});
    body["temperature"] = json!(0.25);
    let response = http()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&secret)
        .header("x-api-key", &secret)
        .header("x-goog-api-key", &secret)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["choices"][0]["message"]["content"], "mock answer");

    let received = mock.received();
    assert_eq!(received.len(), 1);
    let upstream = &received[0];
    assert_eq!(upstream.path, "/v1/chat/completions");
    assert_eq!(
        upstream
            .headers
            .get("authorization")
            .unwrap()
            .to_str()
            .unwrap(),
        format!("Bearer {PROVIDER_KEY}")
    );
    for (name, value) in &upstream.headers {
        let value = value.to_str().unwrap_or("");
        assert!(
            !value.contains(&secret),
            "virtual key leaked upstream in header {name}"
        );
    }
    assert!(upstream.headers.get("x-api-key").is_none());
    assert!(upstream.headers.get("x-goog-api-key").is_none());
    assert!(!upstream.body.to_string().contains(&secret));
    assert_eq!(
        upstream.body["model"], "upstream-chat-v1",
        "upstream sees the upstream model id"
    );
    assert_eq!(
        upstream.body["tollgate_unknown_field"], body["tollgate_unknown_field"],
        "unknown fields pass through"
    );
    assert_eq!(upstream.body["temperature"], 0.25);
    assert_eq!(upstream.body["messages"], body["messages"]);
}

#[tokio::test]
async fn every_accepted_key_form_authenticates() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&standard_policy(&mock));
    let (_, secret) = gw.create_key("*");
    let client = http();
    let url = gw.url("/v1/chat/completions");
    let forms = [
        client.post(&url).bearer_auth(&secret),
        client.post(&url).header("x-api-key", &secret),
        client.post(&url).header("x-goog-api-key", &secret),
        client.post(format!("{url}?key={secret}")),
    ];
    for request in forms {
        let response = request.json(&chat_body("chat")).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    for upstream in mock.received() {
        assert!(!format!("{:?}", upstream.headers).contains(&secret));
    }
}

#[tokio::test]
async fn every_openai_endpoint_is_relayed_with_its_usage() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&standard_policy(&mock));
    let (_, secret) = gw.create_key("*");
    let client = http();
    let cases = [
        (
            "/v1/embeddings",
            json!({"model": "embed", "input": "hello"}),
            5,
            0,
        ),
        (
            "/v1/responses",
            json!({"model": "chat", "input": "hello"}),
            13,
            4,
        ),
        (
            "/v1/images/generations",
            json!({"model": "chat", "prompt": "a cat"}),
            9,
            272,
        ),
    ];
    for (path, body, input, output) in cases {
        let response = client
            .post(gw.url(path))
            .bearer_auth(&secret)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let id = request_id(&response);
        let _: Value = response.json().await.unwrap();
        let row = gw.row_for(&id).await;
        assert_eq!(row["endpoint"], path);
        assert_eq!(row["input_tokens"], input, "{path}");
        assert_eq!(row["output_tokens"], output, "{path}");
        assert!(row["provider_usage"].as_str().unwrap().starts_with('{'));
    }
    let paths: Vec<_> = mock.received().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        ["/v1/embeddings", "/v1/responses", "/v1/images/generations"]
    );
    assert_eq!(mock.received()[0].body["model"], "upstream-embed");
}

#[tokio::test]
async fn models_list_shows_only_granted_models() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&standard_policy(&mock));
    let (_, secret) = gw.create_key("chat,embed");
    let response = http()
        .get(gw.url("/v1/models"))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(request_id(&response).len(), 32);
    let list: Value = response.json().await.unwrap();
    let ids: Vec<_> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["chat", "embed"]);
    assert_eq!(list["object"], "list");
    let (_, all) = gw.create_key("*");
    let list: Value = http()
        .get(gw.url("/v1/models"))
        .bearer_auth(&all)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 11);
}

/// Open connections per connection thread, from `/metrics` (the scrape's own connection
/// included).
async fn thread_connections(gw: &Gateway) -> Vec<f64> {
    let metrics = gw.metrics().await;
    (0..)
        .map_while(|t| {
            metrics
                .get(&format!(
                    "tollgate_connection_thread_connections{{thread=\"{t}\"}}"
                ))
                .copied()
        })
        .collect()
}

/// Polls until the threads hold `total` open connections (closing is seen a moment after the
/// client drops its side); returns the last reading.
async fn wait_for_open(gw: &Gateway, total: f64) -> Vec<f64> {
    let mut open = Vec::new();
    for _ in 0..50 {
        open = thread_connections(gw).await;
        if open.iter().sum::<f64>() == total {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(40)).await;
    }
    open
}

/// A chat call on `client` that the mock answers.
async fn ask(gw: &Gateway, client: &reqwest::Client, secret: &str) {
    let response = client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(secret)
        .json(&chat_body("chat"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["choices"][0]["message"]["content"], "mock answer");
}

#[tokio::test]
async fn connections_are_spread_over_the_connection_threads_and_each_stays_on_one() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start_with(&standard_policy(&mock), &[], &["--connection-threads", "2"]);
    let (_, secret) = gw.create_key("*");
    // Four clients, each keeping its own connection open between requests.
    let clients: Vec<reqwest::Client> = (0..4)
        .map(|_| {
            reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .unwrap()
        })
        .collect();
    for client in &clients {
        ask(&gw, client, &secret).await;
    }
    // Each new connection went to the thread with fewer: 2 and 2, plus the scrape's own.
    let open = wait_for_open(&gw, 5.0).await;
    assert_eq!(open.len(), 2, "{open:?}");
    assert_eq!(open.iter().sum::<f64>(), 5.0, "{open:?}");
    assert!(open.iter().all(|&n| n >= 2.0), "{open:?}");
    // The connections are kept: a second round reuses them on their threads.
    for client in &clients {
        ask(&gw, client, &secret).await;
    }
    assert_eq!(thread_connections(&gw).await.iter().sum::<f64>(), 5.0);
    assert_eq!(mock.received().len(), 8);
    drop(clients);
    let left: f64 = wait_for_open(&gw, 1.0).await.iter().sum();
    assert_eq!(left, 1.0, "closed connections leave their threads");
}

#[tokio::test]
async fn connection_threads_zero_serves_on_the_shared_runtime() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start_with(&standard_policy(&mock), &[], &["--connection-threads", "0"]);
    let (_, secret) = gw.create_key("*");
    ask(&gw, &http(), &secret).await;
    assert!(thread_connections(&gw).await.is_empty());
    assert!(
        gw.metrics()
            .await
            .contains_key("tollgate_runtime_alive_tasks")
    );
}
