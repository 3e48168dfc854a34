//! The unified endpoint `POST /v1/llm/chat`: any family upstream, the normalised answer,
//! OpenAI chunks for streams, `include_usage` in both places, the `provider` pin, and a mixed
//! group failing over across families inside one request.

use mock_upstream::MockConfig;
use serde_json::{Value, json};

use crate::common::{Gateway, family_policy, http, mock, request_id};

const MIXED: &str = r#"
[groups.mixed]
deployments = [
  { model = "claude-500", priority = 0 },
  { model = "gpt", priority = 1 },
  { model = "gemini-flash", priority = 2 },
]
"#;

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hello"}]})
}

/// The `data:` payloads of an SSE body.
fn data_events(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|e| e.trim().strip_prefix("data: ").map(str::to_string))
        .collect()
}

#[tokio::test]
async fn unary_answers_are_the_normalised_object_whatever_the_family() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&family_policy(&mock, ""));
    let (_, secret) = gw.create_key("*");
    for (model, provider, input, output) in [
        ("claude", "anthropic", 13, 7),
        ("gemini-flash", "gemini", 11, 7),
        ("gpt", "openai", 11, 7),
        ("vllm-chat", "vllm", 11, 7),
    ] {
        let response = http()
            .post(gw.url("/v1/llm/chat"))
            .bearer_auth(&secret)
            .json(&chat(model))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{model}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["content"], "mock answer", "{model}: {body}");
        assert_eq!(body["provider"], provider, "{body}");
        assert_eq!(body["stop_reason"], "stop", "{body}");
        assert_eq!(body["input_tokens"], input, "{model}: {body}");
        assert_eq!(body["output_tokens"], output, "{model}: {body}");
    }
    let paths: Vec<String> = mock.received().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        [
            "/v1/messages",
            "/models/gemini-mock:generateContent",
            "/v1/chat/completions",
            "/v1/chat/completions"
        ]
    );
}

#[tokio::test]
async fn streams_are_openai_chunks_and_include_usage_works_top_level_and_in_stream_options() {
    let mock = mock(MockConfig {
        stream_chunks: 3,
        ..MockConfig::default()
    })
    .await;
    let gw = Gateway::start(&family_policy(&mock, ""));
    let (_, secret) = gw.create_key("*");
    let cases = [
        (json!({"include_usage": true}), true),
        (json!({"stream_options": {"include_usage": true}}), true),
        (json!({}), false),
    ];
    for model in ["claude", "gemini-flash"] {
        for (extra, wants_usage) in &cases {
            let mut body = chat(model);
            body["stream"] = json!(true);
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            let response = http()
                .post(gw.url("/v1/llm/chat"))
                .bearer_auth(&secret)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let id = request_id(&response);
            let events = data_events(&response.text().await.unwrap());
            assert_eq!(
                events.last().map(String::as_str),
                Some("[DONE]"),
                "{events:?}"
            );
            let chunks: Vec<Value> = events[..events.len() - 1]
                .iter()
                .map(|e| serde_json::from_str(e).expect("chunk"))
                .collect();
            let text: String = chunks
                .iter()
                .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
                .collect();
            assert_eq!(text.trim(), "tok0 tok1 tok2", "{model}: {chunks:?}");
            let usage_chunks: Vec<&Value> = chunks
                .iter()
                .filter(|c| c["choices"].as_array().is_some_and(Vec::is_empty))
                .collect();
            if *wants_usage {
                assert_eq!(usage_chunks.len(), 1, "{model} {extra}: {chunks:?}");
                // After the finish chunk, right before [DONE].
                assert!(
                    chunks.last().unwrap()["choices"]
                        .as_array()
                        .unwrap()
                        .is_empty()
                );
                assert!(usage_chunks[0]["usage"]["total_tokens"].as_i64().unwrap() > 0);
            } else {
                assert!(usage_chunks.is_empty(), "{model} {extra}: {chunks:?}");
            }
            let row = gw.row_for(&id).await;
            assert_eq!(row["output_tokens"], 7, "{model}: billed either way");
        }
    }
}

#[tokio::test]
async fn a_mixed_family_group_fails_over_from_a_failing_anthropic_to_openai_in_one_request() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&family_policy(&mock, MIXED));
    let (_, secret) = gw.create_key("*");
    let response = http()
        .post(gw.url("/v1/llm/chat"))
        .bearer_auth(&secret)
        .json(&chat("mixed"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["provider"], "openai", "{body}");
    assert_eq!(body["content"], "mock answer");
    let paths: Vec<String> = mock.received().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/v1/messages", "/v1/chat/completions"]);
    let row = gw.row_for(&id).await;
    assert_eq!(row["served_model"], "gpt");
    assert_eq!(row["endpoint_family"], "unified");
    assert_eq!(row["upstream_family"], "openai");
    let route: Value = serde_json::from_str(row["route"].as_str().unwrap()).unwrap();
    let attempts = route["attempts"].as_array().unwrap();
    assert_eq!(attempts[0]["outcome"], "failover");
    assert_eq!(attempts[0]["model"], "claude-500");
    assert_eq!(attempts[1]["outcome"], "relayed");

    // A native endpoint does not reach the group's other families unless it opts in.
    let response = http()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&secret)
        .json(&chat("mixed"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(mock.received().last().unwrap().path, "/v1/chat/completions");
    assert_eq!(mock.count(), 3, "claude-500 was skipped, not called");
}

#[tokio::test]
async fn a_provider_pin_keeps_only_that_family_and_a_pin_matching_nothing_is_refused() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&family_policy(&mock, MIXED));
    let (_, secret) = gw.create_key("*");
    let mut body = chat("mixed");
    body["provider"] = json!("gemini");
    let response = http()
        .post(gw.url("/v1/llm/chat"))
        .bearer_auth(&secret)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["provider"], "gemini");
    assert_eq!(mock.count(), 1);
    assert!(mock.received()[0].body.get("provider").is_none());

    body["provider"] = json!("mistral");
    let response = http()
        .post(gw.url("/v1/llm/chat"))
        .bearer_auth(&secret)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "invalid_request");
    assert_eq!(mock.count(), 1);
}
