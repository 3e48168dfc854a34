//! Provider-adapter plugins end to end: a provider with `family = "adapter"` spoken through the
//! first-party Ollama adapter (`plugins/ollama-adapter`) against the mock's Ollama `/api/chat`,
//! and a trapping adapter (`tests/plugins/trap-adapter`). The components are built by
//! `./scripts/build-plugins` into `plugins/dist/`.

use std::path::PathBuf;

use mock_upstream::MockConfig;
use mock_upstream::ollama::{OLLAMA_STREAM, OLLAMA_USAGE};
use serde_json::{Value, json};

use crate::common::{
    Gateway, PROVIDER_KEY, chat_body, expect_error, http, mock, repo_root, request_id,
};

/// A built component; fails loudly when the build step did not run.
fn wasm(name: &str) -> PathBuf {
    let path = repo_root()
        .join("plugins/dist")
        .join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: run ./scripts/build-plugins (./scripts/test does)",
        path.display()
    );
    path
}

fn adapter_manifest(name: &str) -> String {
    format!(
        "wasm = {:?}\nworld = \"provider-adapter\"\n[config]\nkeep_alive = \"5m\"\n",
        wasm(name).display().to_string()
    )
}

fn trap_manifest() -> String {
    format!(
        "wasm = {:?}\nworld = \"provider-adapter\"\n",
        wasm("trap-adapter").display().to_string()
    )
}

/// Ollama through the adapter; `llama-any` also serves the Anthropic endpoint (translated).
fn policy(mock: &mock_upstream::MockHandle) -> String {
    let root = format!("http://{}", mock.addr);
    let base = mock.base_url();
    let dist = repo_root().join("plugins/dist").display().to_string();
    format!(
        r#"
[providers.ollama]
family = "adapter"
adapter = "ollama-adapter"
base_url = "{root}"
credential = {{ env = "TG_TEST_PROVIDER_KEY" }}

[providers.trapping]
family = "adapter"
adapter = "trap-adapter"
base_url = "{base}"

[models.llama]
provider = "ollama"
upstream_model = "llama3.2"
pricing = {{ input_per_mtok = 1.0, output_per_mtok = 2.0 }}

[models.llama-any]
provider = "ollama"
upstream_model = "llama3.2"
translate = true

[models.llama-missing]
provider = "ollama"
upstream_model = "mock-404"

[models.llama-crash]
provider = "ollama"
upstream_model = "mock-stream-error"
pricing = {{ input_per_mtok = 1.0, output_per_mtok = 2.0 }}

[models.trap]
provider = "trapping"
upstream_model = "anything"

[groups.trap-then-llama]
deployments = [
  {{ model = "trap", priority = 0 }},
  {{ model = "llama", priority = 1 }},
]

[plugins]
allowed_dirs = [{dist:?}]
"#
    )
}

fn start(mock: &mock_upstream::MockHandle) -> Gateway {
    Gateway::start_with(
        &policy(mock),
        &[
            (
                "plugins/ollama-adapter.toml",
                &adapter_manifest("ollama-adapter"),
            ),
            ("plugins/trap-adapter.toml", &trap_manifest()),
        ],
        &[],
    )
}

async fn chat(gw: &Gateway, secret: &str, body: &Value) -> reqwest::Response {
    http()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(secret)
        .json(body)
        .send()
        .await
        .expect("send")
}

#[tokio::test]
async fn an_openai_request_reaches_ollama_natively_and_its_usage_is_recorded_and_priced() {
    let mock = mock(MockConfig::default()).await;
    let gw = start(&mock);
    let (_, secret) = gw.create_key("*");
    let response = chat(&gw, &secret, &chat_body("llama")).await;
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["content"], "mock answer");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let (prompt, output) = OLLAMA_USAGE;
    assert_eq!(body["usage"]["prompt_tokens"], prompt);
    assert_eq!(body["usage"]["completion_tokens"], output);

    // The provider saw Ollama's native request, with the credential the gateway injected.
    let received = mock.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].path, "/api/chat");
    assert_eq!(received[0].body["model"], "llama3.2");
    assert_eq!(received[0].body["stream"], false);
    assert_eq!(received[0].body["keep_alive"], "5m");
    assert_eq!(
        received[0].body["messages"],
        json!([{"role": "user", "content": "hello"}])
    );
    assert_eq!(
        received[0].headers["authorization"],
        format!("Bearer {PROVIDER_KEY}").as_str()
    );

    let row = gw.row_for(&id).await;
    assert_eq!(row["status"], 200);
    assert_eq!(row["provider"], "ollama");
    assert_eq!(row["upstream_family"], "adapter");
    assert_eq!(row["input_tokens"], prompt);
    assert_eq!(row["output_tokens"], output);
    // 13 tokens at $1/Mtok + 8 at $2/Mtok = $0.000029.
    assert_eq!(row["cost_nanos"], 29_000);
}

#[tokio::test]
async fn an_ndjson_stream_becomes_openai_chunks_with_the_usage_chunk_only_when_asked() {
    let mock = mock(MockConfig::default()).await;
    let gw = start(&mock);
    let (_, secret) = gw.create_key("*");
    for include_usage in [true, false] {
        let mut body = chat_body("llama");
        body["stream"] = json!(true);
        if include_usage {
            body["stream_options"] = json!({"include_usage": true});
        }
        let response = chat(&gw, &secret, &body).await;
        assert_eq!(response.status(), 200);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .is_ok_and(|t| t.starts_with("text/event-stream"))
        );
        let id = request_id(&response);
        let text = response.text().await.expect("body");
        let events: Vec<&str> = text
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .collect();
        assert_eq!(events.last(), Some(&"[DONE]"), "{text}");
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).expect("chunk json"))
            .collect();
        let content: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(content, OLLAMA_STREAM.concat());
        let finish: Vec<&Value> = chunks
            .iter()
            .filter(|c| !c["choices"][0]["finish_reason"].is_null())
            .collect();
        assert_eq!(finish.len(), 1);
        assert_eq!(finish[0]["choices"][0]["finish_reason"], "stop");
        let usage_chunks: Vec<&Value> = chunks
            .iter()
            .filter(|c| c["choices"] == json!([]))
            .collect();
        assert_eq!(usage_chunks.len(), usize::from(include_usage), "{text}");
        let row = gw.row_for(&id).await;
        assert_eq!(row["stream_status"], "completed");
        assert_eq!(row["input_tokens"], OLLAMA_USAGE.0);
        assert_eq!(row["output_tokens"], OLLAMA_USAGE.1);
        assert_eq!(row["cost_nanos"], 29_000);
    }
    let received = mock.received();
    assert!(received.iter().all(|r| r.body["stream"] == true));
}

#[tokio::test]
async fn tool_calls_come_back_with_ids_and_json_arguments() {
    let mock = mock(MockConfig::default()).await;
    let gw = start(&mock);
    let (_, secret) = gw.create_key("*");
    let mut body = chat_body("llama");
    body["tools"] = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let response = chat(&gw, &secret, &body).await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.expect("json");
    assert_eq!(answer["choices"][0]["finish_reason"], "tool_calls");
    let call = &answer["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    let arguments: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().expect("string"))
            .expect("arguments parse");
    assert_eq!(arguments, json!({"city": "Paris"}));
    assert!(
        call["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("call_"))
    );
    assert_eq!(
        mock.received()[0].body["tools"][0]["function"]["name"],
        "get_weather"
    );
}

#[tokio::test]
async fn a_streamed_tool_call_finishes_with_tool_calls() {
    // Ollama streams the tool call on a `done: false` line and ends with `done_reason: "stop"`;
    // the stateless adapter cannot see both, so the gateway fixes the finish reason.
    let mock = mock(MockConfig::default()).await;
    let gw = start(&mock);
    let (_, secret) = gw.create_key("*");
    let mut body = chat_body("llama");
    body["stream"] = json!(true);
    body["tools"] = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let response = chat(&gw, &secret, &body).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("body");
    let chunks: Vec<Value> = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str(e).expect("chunk json"))
        .collect();
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
        .flatten()
        .collect();
    assert_eq!(calls.len(), 1, "{text}");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let finish: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, [&json!("tool_calls")], "{text}");
}

#[tokio::test]
async fn an_anthropic_client_is_served_by_an_adapter_model_through_the_translation_core() {
    let mock = mock(MockConfig::default()).await;
    let gw = start(&mock);
    let (_, secret) = gw.create_key("*");
    let response = http()
        .post(gw.url("/v1/messages"))
        .header("x-api-key", &secret)
        .header("anthropic-version", "2023-06-01")
        .json(
            &json!({"model": "llama-any", "max_tokens": 50, "system": "be brief",
                      "messages": [{"role": "user", "content": "hello"}]}),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    let answer: Value = response.json().await.expect("json");
    assert_eq!(answer["type"], "message");
    assert_eq!(answer["content"][0]["text"], "mock answer");
    assert_eq!(answer["usage"]["input_tokens"], OLLAMA_USAGE.0);
    let received = mock.received();
    assert_eq!(received[0].path, "/api/chat");
    assert_eq!(
        received[0].body["messages"][0],
        json!({"role": "system", "content": "be brief"})
    );
    assert_eq!(received[0].body["options"]["num_predict"], 50);
    let row = gw.row_for(&id).await;
    assert_eq!(row["endpoint_family"], "anthropic");
    assert_eq!(row["upstream_family"], "adapter");
}

#[tokio::test]
async fn an_adapter_error_is_a_502_adapter_error_and_nothing_reaches_the_provider() {
    let mock = mock(MockConfig::default()).await;
    let gw = start(&mock);
    let (_, secret) = gw.create_key("*");
    let mut body = chat_body("llama");
    body["n"] = json!(2);
    let response = chat(&gw, &secret, &body).await;
    let id = expect_error(response, 502, "adapter_error").await;
    assert_eq!(mock.count(), 0, "the request never left the gateway");
    let row = gw.row_for(&id).await;
    assert_eq!(row["status"], 502);
    assert_eq!(row["error_code"], "adapter_error");
}

#[tokio::test]
async fn a_provider_error_is_translated_into_an_openai_error_with_its_status() {
    let mock = mock(MockConfig::default()).await;
    let gw = start(&mock);
    let (_, secret) = gw.create_key("*");
    let response = chat(&gw, &secret, &chat_body("llama-missing")).await;
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "model_not_found");
    assert_eq!(body["error"]["message"], "model 'mock-404' not found");
}

#[tokio::test]
async fn an_error_line_mid_stream_ends_the_stream_with_an_error_and_bills_what_was_produced() {
    let mock = mock(MockConfig::default()).await;
    let gw = start(&mock);
    let (_, secret) = gw.create_key("*");
    let mut body = chat_body("llama-crash");
    body["stream"] = json!(true);
    let response = chat(&gw, &secret, &body).await;
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    let text = response.text().await.expect("body");
    assert!(text.contains(OLLAMA_STREAM[0]), "{text}");
    assert!(text.contains("\"error\""), "{text}");
    assert!(!text.contains("[DONE]"), "{text}");
    let row = gw.row_for(&id).await;
    assert_eq!(row["stream_status"], "upstream_error");
    assert_eq!(row["error_code"], "upstream_error");
    assert!(
        row["output_tokens"].as_i64().is_some_and(|n| n > 0),
        "{row}"
    );
    assert!(row["cost_nanos"].as_i64().is_some_and(|n| n > 0), "{row}");
}

#[tokio::test]
async fn a_trapping_adapter_is_a_502_adapter_failed_and_the_gateway_keeps_serving() {
    let mock = mock(MockConfig::default()).await;
    let gw = start(&mock);
    let (_, secret) = gw.create_key("*");
    for _ in 0..2 {
        // Each call traps on a fresh instance: the trapped one was discarded.
        let response = chat(&gw, &secret, &chat_body("trap")).await;
        let id = expect_error(response, 502, "adapter_failed").await;
        let row = gw.row_for(&id).await;
        assert_eq!(row["error_code"], "adapter_failed");
    }
    assert_eq!(mock.count(), 2, "the gateway made both HTTP calls");
    let response = chat(&gw, &secret, &chat_body("llama")).await;
    assert_eq!(response.status(), 200, "other adapters are unaffected");
}

#[tokio::test]
async fn the_unified_endpoint_fails_over_from_a_trapping_adapter_to_ollama_in_one_request() {
    let mock = mock(MockConfig::default()).await;
    let gw = start(&mock);
    let (_, secret) = gw.create_key("*");
    let response = http()
        .post(gw.url("/v1/llm/chat"))
        .bearer_auth(&secret)
        .json(&chat_body("trap-then-llama"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["provider"], "adapter", "{body}");
    assert_eq!(body["content"], "mock answer", "{body}");
    assert_eq!(body["input_tokens"], OLLAMA_USAGE.0, "{body}");
    let paths: Vec<String> = mock.received().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/v1/chat/completions", "/api/chat"]);
    let row = gw.row_for(&id).await;
    assert_eq!(row["served_model"], "llama");
    assert_eq!(row["endpoint_family"], "unified");
    let route = row["route"].as_str().unwrap_or_default();
    assert!(route.contains("adapter_failed"), "{route}");

    // Streamed, the unified endpoint sends OpenAI chunks from the adapter.
    let mut body = chat_body("llama");
    body["stream"] = json!(true);
    let response = http()
        .post(gw.url("/v1/llm/chat"))
        .bearer_auth(&secret)
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("body");
    let content: String = text
        .split("\n\n")
        .filter_map(|e| e.trim().strip_prefix("data: "))
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(content, OLLAMA_STREAM.concat(), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
}
