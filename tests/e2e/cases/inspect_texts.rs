//! Guardrails see every text on every endpoint family (issue 12 item 8): tool-call arguments,
//! tool results sent back, refusals and non-JSON answers are shown to `pii-guard` and masked in
//! place (arguments stay valid JSON), streamed tool-call arguments go through the stream
//! window, and an answer without text still runs (and records) every response plugin.

use mock_upstream::{MockConfig, MockHandle, TOOL_EMAIL};
use serde_json::{Value, json};

use crate::common::{Gateway, family_policy, http, mock, repo_root, request_id};

/// A `pii-guard` manifest (mask mode) for `phases`.
fn pii(phases: &str) -> String {
    format!(
        "wasm = {:?}\nworld = \"guardrail\"\nphases = {phases}\n",
        repo_root()
            .join("plugins/dist/pii-guard.wasm")
            .display()
            .to_string()
    )
}

fn policy(mock: &MockHandle) -> String {
    family_policy(
        mock,
        r#"
[models.tools]
provider = "openai"
upstream_model = "mock-tools"

[models.plain]
provider = "openai"
upstream_model = "mock-text-plain"
"#,
    )
}

async fn post(gw: &Gateway, path: &str, secret: &str, body: &Value) -> reqwest::Response {
    http()
        .post(gw.url(path))
        .bearer_auth(secret)
        .header("x-api-key", secret)
        .header("x-goog-api-key", secret)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// The body the mock received last on a path starting with `prefix`.
fn received(mock: &MockHandle, prefix: &str) -> Value {
    mock.received()
        .into_iter()
        .rev()
        .find(|r| r.path.starts_with(prefix))
        .unwrap_or_else(|| panic!("nothing received on {prefix}"))
        .body
}

#[tokio::test]
async fn tool_arguments_and_results_of_every_family_are_masked_before_the_provider() {
    let mock = mock(MockConfig::default()).await;
    let manifest = pii("[\"request\"]");
    let gw = Gateway::start_with(&policy(&mock), &[("plugins/pii.toml", &manifest)], &[]);
    let (_, secret) = gw.create_key("*");

    // Anthropic: tool_use.input and a tool_result sent back.
    let response = post(&gw, "/v1/messages", &secret, &json!({"model": "claude", "max_tokens": 20, "messages": [
        {"role": "user", "content": "mail my colleague"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "send_mail", "input": {"to": TOOL_EMAIL}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": format!("sent to {TOOL_EMAIL}")}]}
    ]})).await;
    assert_eq!(response.status(), 200);
    let sent = received(&mock, "/v1/messages");
    assert_eq!(sent["messages"][1]["content"][0]["input"]["to"], "[EMAIL]");
    assert_eq!(
        sent["messages"][2]["content"][0]["content"],
        "sent to [EMAIL]"
    );

    // Gemini: functionCall.args and functionResponse.response.
    let response = post(&gw, "/v1beta/models/gemini-flash:generateContent", &secret, &json!({"contents": [
        {"role": "user", "parts": [{"text": "mail my colleague"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "send_mail", "args": {"to": TOOL_EMAIL}}}]},
        {"role": "function", "parts": [{"functionResponse": {"name": "send_mail", "response": {"sent": TOOL_EMAIL}}}]}
    ]})).await;
    assert_eq!(response.status(), 200);
    let sent = received(&mock, "/models/");
    assert_eq!(
        sent["contents"][1]["parts"][0]["functionCall"]["args"]["to"],
        "[EMAIL]"
    );
    assert_eq!(
        sent["contents"][2]["parts"][0]["functionResponse"]["response"]["sent"],
        "[EMAIL]"
    );

    // Responses: function_call.arguments (a JSON string) and function_call_output.
    let response = post(&gw, "/v1/responses", &secret, &json!({"model": "gpt", "input": [
        {"role": "user", "content": "mail my colleague"},
        {"type": "function_call", "call_id": "c1", "name": "send_mail", "arguments": json!({"to": TOOL_EMAIL}).to_string()},
        {"type": "function_call_output", "call_id": "c1", "output": format!("sent to {TOOL_EMAIL}")}
    ]})).await;
    assert_eq!(response.status(), 200);
    let sent = received(&mock, "/v1/responses");
    let args: Value = serde_json::from_str(sent["input"][1]["arguments"].as_str().unwrap())
        .expect("the arguments stay valid JSON");
    assert_eq!(args, json!({"to": "[EMAIL]"}));
    assert_eq!(sent["input"][2]["output"], "sent to [EMAIL]");

    // vLLM raw route: chat tool_calls in the history.
    let response = post(&gw, "/v1/vllm/chat/completions", &secret, &json!({"model": "vllm-chat", "messages": [
        {"role": "user", "content": "mail my colleague"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
            "function": {"name": "send_mail", "arguments": json!({"to": TOOL_EMAIL}).to_string()}}]},
        {"role": "tool", "tool_call_id": "c1", "content": format!("sent to {TOOL_EMAIL}")}
    ]})).await;
    assert_eq!(response.status(), 200);
    let sent = received(&mock, "/v1/chat/completions");
    let args: Value = serde_json::from_str(
        sent["messages"][1]["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap(),
    )
    .expect("valid JSON");
    assert_eq!(args, json!({"to": "[EMAIL]"}));

    for r in mock.received() {
        assert!(
            !r.body.to_string().contains(TOOL_EMAIL),
            "{} leaked: {}",
            r.path,
            r.body
        );
    }
}

#[tokio::test]
async fn answers_tool_calls_refusals_streamed_arguments_and_plain_text_are_masked() {
    let mock = mock(MockConfig::default()).await;
    let manifest = pii("[\"response\", \"stream\"]");
    let gw = Gateway::start_with(&policy(&mock), &[("plugins/pii.toml", &manifest)], &[]);
    let (_, secret) = gw.create_key("*");

    let body = json!({"model": "tools", "messages": [{"role": "user", "content": "mail her"}]});
    let response = post(&gw, "/v1/chat/completions", &secret, &body).await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    let message = &answer["choices"][0]["message"];
    let args: Value = serde_json::from_str(
        message["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap(),
    )
    .expect("masked arguments stay a valid JSON string");
    assert_eq!(args, json!({"to": "[EMAIL]", "n": 1}));
    assert_eq!(message["refusal"], "I will not write to [EMAIL]");

    // Streamed: the address is split across two argument deltas; the window sees it whole.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let response = post(&gw, "/v1/chat/completions", &secret, &streamed).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(!text.contains("jane.d"), "{text}");
    let mut arguments = String::new();
    for event in text.split("\n\n") {
        let Some(data) = event.trim().strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            continue;
        }
        let value: Value = serde_json::from_str(data).unwrap();
        for choice in value["choices"].as_array().into_iter().flatten() {
            for call in choice["delta"]["tool_calls"]
                .as_array()
                .into_iter()
                .flatten()
            {
                arguments.push_str(call["function"]["arguments"].as_str().unwrap_or(""));
            }
        }
    }
    let args: Value = serde_json::from_str(&arguments).expect("streamed arguments stay JSON");
    assert_eq!(args, json!({"to": "[EMAIL]", "n": 1}));

    // A text/plain answer is one text, masked whole.
    let response = post(
        &gw,
        "/v1/chat/completions",
        &secret,
        &json!({"model": "plain", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    assert_eq!(response.text().await.unwrap(), "plain answer for [EMAIL]");
    let row = gw.row_for(&id).await;
    let decisions: Value = serde_json::from_str(row["decisions"].as_str().unwrap()).unwrap();
    assert!(
        decisions
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["phase"] == "response" && d["outcome"] == "rewrite"),
        "{decisions}"
    );
}

#[tokio::test]
async fn an_answer_without_text_still_runs_and_records_every_response_plugin() {
    let mock = mock(MockConfig::default()).await;
    let manifest = pii("[\"response\"]");
    let gw = Gateway::start_with(
        &policy(&mock),
        &[
            ("plugins/10-pii.toml", manifest.as_str()),
            ("plugins/20-pii.toml", manifest.as_str()),
        ],
        &[],
    );
    let (_, secret) = gw.create_key("*");
    let response = post(
        &gw,
        "/v1/embeddings",
        &secret,
        &json!({"model": "gpt", "input": "hello"}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    let row = gw.row_for(&id).await;
    let decisions: Value = serde_json::from_str(row["decisions"].as_str().unwrap()).unwrap();
    let response_phase: Vec<&Value> = decisions
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["phase"] == "response")
        .collect();
    assert_eq!(response_phase.len(), 2, "{decisions}");
    assert!(response_phase.iter().all(|d| d["outcome"] == "allow"));
}
