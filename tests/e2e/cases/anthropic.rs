//! The Anthropic endpoint family: `/v1/messages` and `/v1/messages/count_tokens`, natively
//! against a mock Anthropic, with the official `anthropic` Python SDK and raw HTTP.

use mock_upstream::MockConfig;
use serde_json::{Value, json};

use crate::common::{
    Gateway, PROVIDER_KEY, family_policy, http, mock, repo_root, request_id, run_python,
};

/// Budgets, quotas and a group for the error cases.
const GOVERNANCE: &str = r#"
[models.claude-quota]
provider = "anthropic"
upstream_model = "claude-mock"

[[budgets]]
scope = "team"
subject = "broke"
window = "daily"
limit_usd = 0.000001

[[quotas]]
scope = "model"
subject = "claude-quota"
metric = "requests"
limit = 1
window = "minute"
"#;

const SDK_CALLS: &str = r#"
import os, anthropic
client = anthropic.Anthropic(base_url=os.environ["BASE"], api_key=os.environ["KEY"], max_retries=0)
msg = client.messages.create(model="claude", max_tokens=100,
    messages=[{"role": "user", "content": "hello"}])
print("json:", msg.content[0].text, msg.usage.input_tokens, msg.usage.output_tokens, msg.stop_reason)
with client.messages.stream(model="claude", max_tokens=100,
        messages=[{"role": "user", "content": "hello"}]) as stream:
    text = "".join(stream.text_stream)
    final = stream.get_final_message()
print("stream:", text.strip(), final.usage.output_tokens, final.stop_reason)
tools = [{"name": "get_weather", "description": "weather of a city",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]
first = client.messages.create(model="claude", max_tokens=100, tools=tools,
    messages=[{"role": "user", "content": "weather in Paris?"}])
call = [b for b in first.content if b.type == "tool_use"][0]
print("tool:", first.stop_reason, call.name, call.input["city"])
second = client.messages.create(model="claude", max_tokens=100, tools=tools, messages=[
    {"role": "user", "content": "weather in Paris?"},
    {"role": "assistant", "content": first.content},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny, 21C"}]},
])
print("answer:", second.content[0].text)
with client.messages.stream(model="claude", max_tokens=100, tools=tools,
        messages=[{"role": "user", "content": "weather in Paris?"}]) as stream:
    final = stream.get_final_message()
call = [b for b in final.content if b.type == "tool_use"][0]
print("stream tool:", final.stop_reason, call.name, call.input["city"])
count = client.messages.count_tokens(model="claude", messages=[{"role": "user", "content": "hi"}])
print("count:", count.input_tokens)
"#;

#[tokio::test]
async fn the_anthropic_sdk_calls_messages_json_stream_tools_and_count_tokens_natively() {
    let mock = mock(MockConfig {
        stream_chunks: 3,
        ..MockConfig::default()
    })
    .await;
    let gw = Gateway::start(&family_policy(&mock, ""));
    let (_, secret) = gw.create_key("*");
    let out = run_python(
        "anthropic",
        SDK_CALLS,
        &[("BASE", &gw.base), ("KEY", &secret)],
    )
    .await;
    assert!(out.contains("json: mock answer 11 7 end_turn"), "{out}");
    assert!(out.contains("stream: tok0 tok1 tok2 7 end_turn"), "{out}");
    assert!(out.contains("tool: tool_use get_weather Paris"), "{out}");
    assert!(out.contains("answer: the tool said: sunny, 21C"), "{out}");
    assert!(
        out.contains("stream tool: tool_use get_weather Paris"),
        "{out}"
    );
    assert!(out.contains("count: 42"), "{out}");

    let received = mock.received();
    assert_eq!(received.len(), 6, "{received:#?}");
    for r in &received {
        assert_eq!(r.headers["x-api-key"], PROVIDER_KEY);
        assert!(r.headers.get("anthropic-version").is_some());
        assert!(
            r.headers.get("authorization").is_none(),
            "the virtual key never reaches the provider"
        );
        assert_eq!(r.body["model"], "claude-mock");
    }
    assert_eq!(received[5].path, "/v1/messages/count_tokens");
    let rows = gw.wait_rows(6).await;
    // input 11 + cache read 2: all input, each class once.
    assert_eq!(rows[0]["input_tokens"], 13);
    assert_eq!(rows[0]["cached_input_tokens"], 2);
    assert_eq!(rows[1]["stream_status"], "completed");
    assert_eq!(rows[1]["output_tokens"], 7);
    assert_eq!(rows[1]["endpoint"], "/v1/messages");
}

#[tokio::test]
async fn the_anthropic_sdk_raises_its_typed_errors_for_gateway_and_provider_errors() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&family_policy(&mock, GOVERNANCE));
    let (_, secret) = gw.create_key("*");
    let (_, narrow) = gw.create_key("claude");
    let (_, broke) = gw.create_key_with(&["--models", "*", "--team", "broke"]);
    let script = r#"
import os, anthropic
def client(key):
    return anthropic.Anthropic(base_url=os.environ["BASE"], api_key=key, max_retries=0)
def attempt(label, key, model, cls):
    try:
        client(key).messages.create(model=model, max_tokens=10, messages=[{"role": "user", "content": "hi"}])
        print(label, "no error")
    except cls as e:
        body = e.body if isinstance(e.body, dict) else {}
        err = body.get("error", {})
        retry = e.response.headers.get("retry-after")
        print(label, type(e).__name__, e.status_code, err.get("type"), err.get("code"), retry)
attempt("badkey", "tg-not-a-key", "claude", anthropic.AuthenticationError)
attempt("unknown", os.environ["KEY"], "nope", anthropic.BadRequestError)
attempt("family", os.environ["KEY"], "gpt", anthropic.BadRequestError)
attempt("grant", os.environ["NARROW"], "gemini-flash", anthropic.PermissionDeniedError)
attempt("budget", os.environ["BROKE"], "claude", anthropic.PaymentRequiredError)
attempt("quota1", os.environ["KEY"], "claude-quota", Exception)
attempt("quota2", os.environ["KEY"], "claude-quota", anthropic.RateLimitError)
attempt("provider429", os.environ["KEY"], "claude-429", anthropic.RateLimitError)
attempt("provider500", os.environ["KEY"], "claude-500", anthropic.InternalServerError)
"#;
    let out = run_python(
        "anthropic",
        script,
        &[
            ("BASE", &gw.base),
            ("KEY", &secret),
            ("NARROW", &narrow),
            ("BROKE", &broke),
        ],
    )
    .await;
    for expected in [
        "badkey AuthenticationError 401 authentication_error unauthorized None",
        "unknown BadRequestError 400 invalid_request_error model_not_found None",
        "family BadRequestError 400 invalid_request_error provider_not_allowed None",
        "grant PermissionDeniedError 403 permission_error model_not_allowed None",
        "budget PaymentRequiredError 402 billing_error budget_exceeded None",
        "quota1 no error",
        "quota2 RateLimitError 429 rate_limit_error rate_limit_exceeded",
        // The provider's own 429 passes through: its body, status and Retry-After.
        "provider429 RateLimitError 429 rate_limit_error None 7",
        "provider500 InternalServerError 502 api_error upstream_error None",
    ] {
        assert!(out.contains(expected), "missing '{expected}' in:\n{out}");
    }
}

#[tokio::test]
async fn cache_reads_and_writes_are_counted_once_and_priced_each_at_its_price() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&family_policy(&mock, ""));
    let (_, secret) = gw.create_key("*");
    let body = json!({"model": "claude-cache", "max_tokens": 100, "stream": true,
                      "messages": [{"role": "user", "content": "hello"}]});
    let response = http()
        .post(gw.url("/v1/messages"))
        .header("x-api-key", &secret)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    let text = response.text().await.unwrap();
    assert!(text.contains("event: message_stop"), "{text}");
    let row = gw.row_for(&id).await;
    assert_eq!(row["input_tokens"], 10_007);
    assert_eq!(row["cached_input_tokens"], 9000);
    assert_eq!(row["output_tokens"], 50);
    assert_eq!(row["total_tokens"], 10_057);
    assert_eq!(row["cache_creation_tokens"], 1000);
    assert_eq!(row["endpoint_family"], "anthropic");
    assert_eq!(row["upstream_family"], "anthropic");
    // 7 × $3 + 9000 × $0.30 + 1000 × $3.75 + 50 × $15 per million tokens, in nano-USD.
    assert_eq!(row["cost_nanos"], 21_000 + 2_700_000 + 3_750_000 + 750_000);
}

#[tokio::test]
async fn an_error_event_after_the_200_reaches_the_client_and_what_was_produced_is_billed() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&family_policy(&mock, ""));
    let (_, secret) = gw.create_key("*");
    let body = json!({"model": "claude-stream-error", "max_tokens": 100, "stream": true,
                      "messages": [{"role": "user", "content": "hello"}]});
    let response = http()
        .post(gw.url("/v1/messages"))
        .bearer_auth(&secret)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    let text = response.text().await.unwrap();
    assert!(text.contains("event: error"), "{text}");
    assert!(text.contains("overloaded_error"), "{text}");
    assert!(!text.contains("message_stop"), "{text}");
    let row = gw.row_for(&id).await;
    assert_eq!(row["stream_status"], "upstream_error");
    assert_eq!(row["error_code"], "upstream_error");
    assert_eq!(row["input_tokens"], 13);
    // Two text deltas were produced before the error, more than message_start's 1.
    assert!(row["output_tokens"].as_i64().unwrap() >= 2, "{row}");
    assert!(row["cost_nanos"].as_i64().unwrap() > 0, "{row}");
}

#[tokio::test]
async fn gateway_errors_on_messages_use_the_anthropic_envelope_for_curl_style_keys() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&family_policy(&mock, ""));
    let response = http()
        .post(gw.url("/v1/messages"))
        .header("x-api-key", "tg-wrong")
        .json(&json!({"model": "claude", "max_tokens": 5, "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "authentication_error");
    assert_eq!(body["error"]["code"], "unauthorized");
    assert_eq!(mock.count(), 0);
}

#[tokio::test]
async fn the_readme_anthropic_sdk_example_runs_against_the_demo() {
    let gw = Gateway::start_dir(&repo_root().join("policies"));
    let (_, secret) = gw.create_key("*");
    let script = repo_root().join("examples/quickstart/anthropic_client.py");
    let script = std::fs::read_to_string(script).unwrap();
    let out = run_python(
        "anthropic",
        &script,
        &[
            ("TOLLGATE_API_KEY", &secret),
            ("TOLLGATE_BASE_URL", &gw.base),
        ],
    )
    .await;
    assert!(
        out.contains("message: This answer comes from tollgate's offline demo provider"),
        "{out}"
    );
    assert!(out.contains("stream: This answer comes from"), "{out}");
    assert!(out.contains("stream stop: end_turn"), "{out}");
    assert!(out.contains("count: "), "{out}");
}

#[tokio::test]
async fn guardrails_mask_anthropic_and_gemini_prompts_before_the_provider_sees_them() {
    let wasm = repo_root().join("plugins/dist/pii-guard.wasm");
    assert!(
        wasm.is_file(),
        "{} is missing: run ./scripts/build-plugins (./scripts/test does)",
        wasm.display()
    );
    let manifest = format!(
        "wasm = {:?}\nworld = \"guardrail\"\nphases = [\"request\"]\n[config]\nmode = \"mask\"\n",
        wasm.display().to_string()
    );
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start_with(
        &family_policy(&mock, ""),
        &[("plugins/pii.toml", &manifest)],
        &[],
    );
    let (_, secret) = gw.create_key("*");
    let response = http()
        .post(gw.url("/v1/messages"))
        .header("x-api-key", &secret)
        .json(&json!({"model": "claude", "max_tokens": 10, "system": "mail ops@example.com",
                      "messages": [{"role": "user", "content": [{"type": "text", "text": "write to jane.doe@example.com"}]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = http()
        .post(gw.url("/v1beta/models/gemini-flash:generateContent"))
        .header("x-goog-api-key", &secret)
        .json(&json!({"contents": [{"role": "user", "parts": [{"text": "write to jane.doe@example.com"}]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let received = mock.received();
    assert_eq!(received.len(), 2);
    for r in &received {
        let sent = r.body.to_string();
        assert!(
            !sent.contains("example.com"),
            "reached the provider: {sent}"
        );
        assert!(sent.contains("[EMAIL]"), "{sent}");
    }
}
