//! Cross-family translation on native endpoints: a model (or group) opted in with
//! `translate = true` serves another family's SDK through the translation core.

use mock_upstream::MockConfig;
use serde_json::{Value, json};

use crate::common::{Gateway, family_policy, http, mock, request_id, run_python};

/// Models of one family opted in to serve the others' endpoints.
const OPTED_IN: &str = r#"
[models.gpt-for-claude]
provider = "openai"
upstream_model = "upstream-chat-v1"
translate = true
pricing = { input_per_mtok = 2.5, output_per_mtok = 10.0, cached_input_per_mtok = 1.25 }

[models.claude-any]
provider = "anthropic"
upstream_model = "claude-mock"
translate = true

[models.claude-cache-any]
provider = "anthropic"
upstream_model = "mock-cache"
translate = true
pricing = { input_per_mtok = 3.0, output_per_mtok = 15.0, cached_input_per_mtok = 0.3, cache_write_per_mtok = 3.75 }

[models.claude-error-any]
provider = "anthropic"
upstream_model = "mock-stream-error"
translate = true
pricing = { input_per_mtok = 3.0, output_per_mtok = 15.0 }

[models.gemini-any]
provider = "gemini"
upstream_model = "gemini-mock"
translate = true
"#;

#[tokio::test]
async fn the_anthropic_sdk_is_served_by_an_openai_model_opted_in_to_translation() {
    let mock = mock(MockConfig {
        stream_chunks: 3,
        ..MockConfig::default()
    })
    .await;
    let gw = Gateway::start(&family_policy(&mock, OPTED_IN));
    let (_, secret) = gw.create_key("*");
    let script = r#"
import os, anthropic
client = anthropic.Anthropic(base_url=os.environ["BASE"], api_key=os.environ["KEY"], max_retries=0)
msg = client.messages.create(model="gpt-for-claude", max_tokens=100, system="be brief",
    messages=[{"role": "user", "content": "hello"}])
print("json:", msg.content[0].text, msg.stop_reason, msg.usage.input_tokens, msg.usage.output_tokens)
with client.messages.stream(model="gpt-for-claude", max_tokens=100,
        messages=[{"role": "user", "content": "hello"}]) as stream:
    text = "".join(stream.text_stream)
    final = stream.get_final_message()
print("stream:", text.strip(), final.stop_reason, final.usage.output_tokens)
"#;
    let out = run_python("anthropic", script, &[("BASE", &gw.base), ("KEY", &secret)]).await;
    // The OpenAI mock reports prompt 11 (2 cached), completion 7.
    assert!(out.contains("json: mock answer end_turn"), "{out}");
    assert!(out.contains("stream: tok0 tok1 tok2 end_turn 7"), "{out}");
    let received = mock.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].path, "/v1/chat/completions");
    assert_eq!(received[0].body["model"], "upstream-chat-v1");
    assert_eq!(received[0].body["messages"][0]["role"], "system");
    assert_eq!(received[1].body["stream"], true);
    let rows = gw.wait_rows(2).await;
    assert_eq!(rows[0]["input_tokens"], 11);
    assert_eq!(rows[0]["cached_input_tokens"], 2);
    assert_eq!(rows[1]["stream_status"], "completed");
    assert_eq!(rows[1]["output_tokens"], 7);
}

#[tokio::test]
async fn the_openai_sdk_reaches_an_anthropic_model_with_tools_streams_and_usage() {
    let mock = mock(MockConfig {
        stream_chunks: 3,
        ..MockConfig::default()
    })
    .await;
    let gw = Gateway::start(&family_policy(&mock, OPTED_IN));
    let (_, secret) = gw.create_key("*");
    let script = r#"
import os, json, openai
client = openai.OpenAI(base_url=os.environ["BASE"], api_key=os.environ["KEY"], max_retries=0)
r = client.chat.completions.create(model="claude-any", messages=[{"role": "user", "content": "hello"}])
print("json:", r.choices[0].message.content, r.choices[0].finish_reason, r.usage.prompt_tokens, r.usage.completion_tokens)
tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
msgs = [{"role": "user", "content": "weather in Paris?"}]
r = client.chat.completions.create(model="claude-any", messages=msgs, tools=tools)
call = r.choices[0].message.tool_calls[0]
print("tool:", r.choices[0].finish_reason, call.function.name, json.loads(call.function.arguments)["city"])
msgs += [r.choices[0].message.model_dump(exclude_none=True),
         {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"}]
r = client.chat.completions.create(model="claude-any", messages=msgs, tools=tools)
print("answer:", r.choices[0].message.content)
chunks = list(client.chat.completions.create(model="claude-any", stream=True, tools=tools,
    stream_options={"include_usage": True}, messages=[{"role": "user", "content": "weather in Paris?"}]))
args = "".join(tc.function.arguments or "" for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or []))
finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
usage = [c.usage for c in chunks if c.usage and not c.choices]
print("stream tool:", json.loads(args)["city"], finish, usage[0].prompt_tokens, usage[0].completion_tokens)
"#;
    let out = run_python(
        "openai",
        script,
        &[("BASE", &gw.url("/v1")), ("KEY", &secret)],
    )
    .await;
    // Anthropic input 11 + cache read 2 = prompt 13.
    assert!(out.contains("json: mock answer stop 13 7"), "{out}");
    assert!(out.contains("tool: tool_calls get_weather Paris"), "{out}");
    assert!(out.contains("answer: the tool said: sunny, 21C"), "{out}");
    assert!(
        out.contains("stream tool: Paris ['tool_calls'] 13 7"),
        "{out}"
    );
    let received = mock.received();
    assert!(received.iter().all(|r| r.path == "/v1/messages"));
    assert_eq!(
        received[0].body["max_tokens"], 4096,
        "Anthropic needs max_tokens"
    );
    // The tool result went back as one user turn of tool_result blocks.
    let turn = &received[2].body["messages"][2];
    assert_eq!(turn["role"], "user");
    assert_eq!(turn["content"][0]["type"], "tool_result");
}

#[tokio::test]
async fn cache_classes_survive_translation_and_are_priced_each_at_its_price() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&family_policy(&mock, OPTED_IN));
    let (_, secret) = gw.create_key("*");
    let response = http()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&secret)
        .json(
            &json!({"model": "claude-cache-any", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["usage"]["prompt_tokens"], 10_007);
    assert_eq!(
        body["usage"]["prompt_tokens_details"]["cached_tokens"],
        9000
    );
    assert_eq!(body["usage"]["total_tokens"], 10_057);
    let row = gw.row_for(&id).await;
    assert_eq!(row["input_tokens"], 10_007);
    assert_eq!(row["cached_input_tokens"], 9000);
    assert_eq!(row["cache_creation_tokens"], 1000);
    assert_eq!(row["cost_nanos"], 21_000 + 2_700_000 + 3_750_000 + 750_000);
    // The row names both families.
    assert_eq!(row["endpoint_family"], "openai");
    assert_eq!(row["upstream_family"], "anthropic");
}

#[tokio::test]
async fn an_anthropic_error_event_mid_stream_reaches_an_openai_client_as_an_error() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&family_policy(&mock, OPTED_IN));
    let (_, secret) = gw.create_key("*");
    let response = http()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&secret)
        .json(&json!({"model": "claude-error-any", "stream": true,
                      "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    let text = response.text().await.unwrap();
    assert!(text.contains("tok0"), "{text}");
    assert!(text.contains("\"error\""), "{text}");
    assert!(!text.contains("[DONE]"), "{text}");
    let row = gw.row_for(&id).await;
    assert_eq!(row["stream_status"], "upstream_error");
    assert_eq!(row["input_tokens"], 13);
    assert!(row["cost_nanos"].as_i64().unwrap() > 0, "{row}");
}

#[tokio::test]
async fn the_google_genai_sdk_reaches_an_anthropic_model_and_gemini_serves_messages() {
    let mock = mock(MockConfig {
        stream_chunks: 3,
        ..MockConfig::default()
    })
    .await;
    let gw = Gateway::start(&family_policy(&mock, OPTED_IN));
    let (_, secret) = gw.create_key("*");
    let script = r#"
import os
from google import genai
from google.genai import types
client = genai.Client(api_key=os.environ["KEY"], http_options=types.HttpOptions(base_url=os.environ["BASE"]))
r = client.models.generate_content(model="claude-any", contents="hello")
print("json:", r.text, r.usage_metadata.prompt_token_count)
text = "".join(c.text or "" for c in client.models.generate_content_stream(model="claude-any", contents="hello"))
print("stream:", text.strip())
"#;
    let out = run_python(
        "google.genai",
        script,
        &[("BASE", &gw.base), ("KEY", &secret)],
    )
    .await;
    assert!(out.contains("json: mock answer 13"), "{out}");
    assert!(out.contains("stream: tok0 tok1 tok2"), "{out}");
    // And Claude Code's endpoint served from a Gemini model.
    let response = http()
        .post(gw.url("/v1/messages"))
        .header("x-api-key", &secret)
        .json(&json!({"model": "gemini-any", "max_tokens": 50,
                      "messages": [{"role": "user", "content": "hello"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["type"], "message");
    assert_eq!(body["content"][0]["text"], "mock answer");
    let gemini_call = mock
        .received()
        .into_iter()
        .find(|r| r.path.starts_with("/models/"))
        .expect("gemini call");
    assert_eq!(gemini_call.path, "/models/gemini-mock:generateContent");
    assert_eq!(gemini_call.body["contents"][0]["parts"][0]["text"], "hello");
}

#[tokio::test]
async fn stream_guardrails_inspect_translated_and_native_streams_in_the_clients_shape() {
    let wasm = crate::common::repo_root().join("plugins/dist/pii-guard.wasm");
    assert!(
        wasm.is_file(),
        "{} is missing: run ./scripts/build-plugins (./scripts/test does)",
        wasm.display()
    );
    let manifest = format!(
        "wasm = {:?}\nworld = \"guardrail\"\nphases = [\"stream\"]\n",
        wasm.display().to_string()
    );
    let mock = mock(MockConfig {
        stream_chunks: 3,
        ..MockConfig::default()
    })
    .await;
    let gw = Gateway::start_with(
        &family_policy(&mock, OPTED_IN),
        &[("plugins/pii.toml", &manifest)],
        &[],
    );
    let (_, secret) = gw.create_key("*");
    let response = http()
        .post(gw.url("/v1/llm/chat"))
        .bearer_auth(&secret)
        .json(&json!({"model": "claude", "stream": true,
                      "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    let text = response.text().await.unwrap();
    assert!(text.contains("tok2"), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let row = gw.row_for(&id).await;
    assert_eq!(row["stream_status"], "completed");
    let decisions: Vec<Value> = serde_json::from_str(row["decisions"].as_str().unwrap()).unwrap();
    assert!(
        decisions
            .iter()
            .any(|d| d["phase"] == "stream" && d["calls"].as_i64().unwrap_or(0) > 0),
        "{decisions:?}"
    );

    // An Anthropic client stream is read in its own shape (it used to be refused with 403
    // `plugin_blocked` before any upstream call): relayed, inspected, complete.
    let response = http()
        .post(gw.url("/v1/messages"))
        .header("x-api-key", &secret)
        .json(&json!({"model": "claude", "max_tokens": 10, "stream": true,
                      "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    let text = response.text().await.unwrap();
    assert!(text.contains("event: content_block_delta"), "{text}");
    assert!(text.contains("event: message_stop"), "{text}");
    let row = gw.row_for(&id).await;
    assert_eq!(row["stream_status"], "completed");
    let decisions: Vec<Value> = serde_json::from_str(row["decisions"].as_str().unwrap()).unwrap();
    assert!(
        decisions
            .iter()
            .any(|d| d["phase"] == "stream" && d["calls"].as_i64().unwrap_or(0) > 0),
        "{decisions:?}"
    );
}
