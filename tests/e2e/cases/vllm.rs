//! The vLLM endpoint family (`/v1/vllm/...`), OpenAI's `/v1/completions` and
//! `/v1/models/{id}`, and Azure OpenAI deployments outbound.

use mock_upstream::MockConfig;
use serde_json::{Value, json};

use crate::common::{Gateway, PROVIDER_KEY, family_policy, http, mock, request_id, run_python};

#[tokio::test]
async fn the_openai_sdk_talks_to_vllm_routes_under_v1_vllm_v1() {
    let mock = mock(MockConfig {
        stream_chunks: 2,
        ..MockConfig::default()
    })
    .await;
    let gw = Gateway::start(&family_policy(&mock, ""));
    let (_, secret) = gw.create_key("*");
    let script = r#"
import os, openai
client = openai.OpenAI(base_url=os.environ["BASE"], api_key=os.environ["KEY"], max_retries=0)
r = client.chat.completions.create(model="vllm-chat", messages=[{"role": "user", "content": "hi"}])
print("chat:", r.choices[0].message.content, r.usage.prompt_tokens)
chunks = client.chat.completions.create(model="vllm-chat", stream=True, messages=[{"role": "user", "content": "hi"}])
print("stream:", "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip())
c = client.completions.create(model="vllm-chat", prompt="say")
print("completion:", c.choices[0].text)
print("models:", [m.id for m in client.models.list()])
try:
    client.chat.completions.create(model="gpt", messages=[{"role": "user", "content": "hi"}])
except openai.BadRequestError as e:
    print("family:", e.status_code, e.body.get("code"))
"#;
    let out = run_python(
        "openai",
        script,
        &[("BASE", &gw.url("/v1/vllm/v1")), ("KEY", &secret)],
    )
    .await;
    assert!(out.contains("chat: mock answer 11"), "{out}");
    assert!(out.contains("stream: tok0 tok1"), "{out}");
    assert!(out.contains("completion: mock completion"), "{out}");
    assert!(out.contains("models: ['vllm-chat']"), "{out}");
    assert!(out.contains("family: 400 provider_not_allowed"), "{out}");
    let received = mock.received();
    assert_eq!(received.len(), 3, "{received:#?}");
    assert_eq!(received[0].path, "/v1/chat/completions");
    assert_eq!(received[2].path, "/v1/completions");
    for r in &received {
        assert_eq!(r.headers["authorization"], format!("Bearer {PROVIDER_KEY}"));
        assert_eq!(r.body["model"], "meta-llama/Llama-3.1-8B-Instruct");
    }
    // Streams ask vLLM for usage, so they are billed.
    assert_eq!(
        received[1].body["stream_options"]["include_usage"],
        json!(true)
    );
    let rows = gw.wait_rows(3).await;
    assert_eq!(rows[1]["input_tokens"], 11);
    assert_eq!(rows[1]["endpoint"], "/v1/vllm/chat/completions");
}

#[tokio::test]
async fn vllm_utility_routes_are_governed_and_forwarded_and_unknown_routes_never_are() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&family_policy(&mock, ""));
    let (_, secret) = gw.create_key("*");
    let post = |path: &str, body: Value| {
        http()
            .post(gw.url(path))
            .bearer_auth(&secret)
            .json(&body)
            .send()
    };
    let response = post(
        "/v1/vllm/tokenize",
        json!({"model": "vllm-chat", "prompt": "abc"}),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["count"], 3);
    let row = gw.row_for(&id).await;
    assert_eq!(row["endpoint"], "/v1/vllm/tokenize");
    assert_eq!(row["status"], 200);

    let response = post(
        "/v1/vllm/rerank",
        json!({"model": "vllm-chat", "query": "q", "documents": ["a"]}),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    let response = post(
        "/v1/vllm/score",
        json!({"model": "vllm-chat", "text_1": "a", "text_2": "b"}),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200);

    for refused in [
        "/v1/vllm/sleep",
        "/v1/vllm/collective_rpc",
        "/v1/vllm/v1/reset_prefix_cache",
        "/v1/vllm/update_weights",
    ] {
        let response = post(refused, json!({"model": "vllm-chat"})).await.unwrap();
        assert_eq!(response.status(), 404, "{refused}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_found");
    }
    let response = post(
        "/v1/vllm/audio/transcriptions",
        json!({"model": "vllm-chat"}),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 501);
    // A model of another family is refused before anything is forwarded.
    let response = post(
        "/v1/vllm/tokenize",
        json!({"model": "claude", "prompt": "abc"}),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 400);

    let paths: Vec<String> = mock.received().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/tokenize", "/rerank", "/score"]);
}

#[tokio::test]
async fn legacy_completions_model_lookup_and_azure_deployments_work() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&family_policy(&mock, ""));
    let (_, secret) = gw.create_key("*");
    let response = http()
        .post(gw.url("/v1/completions"))
        .bearer_auth(&secret)
        .json(&json!({"model": "gpt", "prompt": "say"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["choices"][0]["text"], "mock completion");
    assert_eq!(gw.row_for(&id).await["total_tokens"], 7);

    let response = http()
        .get(gw.url("/v1/models/gpt"))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["id"], "gpt");
    let response = http()
        .get(gw.url("/v1/models/nope"))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);

    let response = http()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&secret)
        .json(&json!({"model": "azure-chat", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "azure answer");
    let azure = mock
        .received()
        .into_iter()
        .find(|r| r.path.starts_with("/openai/"))
        .expect("azure call");
    assert_eq!(
        azure.path,
        "/openai/deployments/my-gpt4o-deployment/chat/completions?api-version=2024-10-21"
    );
    assert_eq!(azure.headers["api-key"], PROVIDER_KEY);
    assert!(azure.headers.get("authorization").is_none());
}
