//! The Gemini endpoint family under `/v1beta/models/` and `/v1/models/`, natively against a
//! mock Gemini, with the official `google-genai` Python SDK and raw HTTP.

use mock_upstream::MockConfig;
use serde_json::{Value, json};

use crate::common::{
    Gateway, PROVIDER_KEY, family_policy, http, mock, repo_root, request_id, run_python,
};

const SDK_CALLS: &str = r#"
import os
from google import genai
from google.genai import types
client = genai.Client(api_key=os.environ["KEY"], http_options=types.HttpOptions(base_url=os.environ["BASE"]))
r = client.models.generate_content(model="gemini-flash", contents="hello")
print("json:", r.text, r.usage_metadata.prompt_token_count, r.usage_metadata.candidates_token_count)
text = "".join(c.text or "" for c in client.models.generate_content_stream(model="gemini-flash", contents="hello"))
print("stream:", text.strip())
tool = types.Tool(function_declarations=[types.FunctionDeclaration(
    name="get_weather", description="weather of a city",
    parameters=types.Schema(type="OBJECT", properties={"city": types.Schema(type="STRING")}))])
cfg = types.GenerateContentConfig(tools=[tool],
    automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True))
r = client.models.generate_content(model="gemini-flash", contents="weather in Paris?", config=cfg)
call = r.function_calls[0]
print("tool:", call.name, call.args["city"])
contents = [
    types.Content(role="user", parts=[types.Part(text="weather in Paris?")]),
    r.candidates[0].content,
    types.Content(role="user", parts=[types.Part.from_function_response(name="get_weather", response={"result": "sunny"})]),
]
r2 = client.models.generate_content(model="gemini-flash", contents=contents, config=cfg)
print("answer:", r2.text)
print("count:", client.models.count_tokens(model="gemini-flash", contents="hi").total_tokens)
e = client.models.embed_content(model="gemini-flash", contents="hi")
print("embed:", len(e.embeddings[0].values))
beta = genai.Client(api_key=os.environ["KEY"], http_options=types.HttpOptions(base_url=os.environ["BASE"], api_version="v1beta"))
print("v1beta:", beta.models.generate_content(model="gemini-flash", contents="hello").text)
"#;

#[tokio::test]
async fn the_google_genai_sdk_calls_generate_stream_tools_count_and_embed_natively() {
    let mock = mock(MockConfig {
        stream_chunks: 3,
        ..MockConfig::default()
    })
    .await;
    let gw = Gateway::start(&family_policy(&mock, ""));
    let (_, secret) = gw.create_key("*");
    let out = run_python(
        "google.genai",
        SDK_CALLS,
        &[("BASE", &gw.base), ("KEY", &secret)],
    )
    .await;
    assert!(out.contains("json: mock answer 11 7"), "{out}");
    assert!(out.contains("stream: tok0 tok1 tok2"), "{out}");
    assert!(out.contains("tool: get_weather Paris"), "{out}");
    assert!(out.contains("answer: mock answer"), "{out}");
    assert!(out.contains("count: 11"), "{out}");
    assert!(out.contains("embed: 3"), "{out}");
    assert!(out.contains("v1beta: mock answer"), "{out}");

    let received = mock.received();
    assert_eq!(received.len(), 7, "{received:#?}");
    for r in &received {
        assert_eq!(r.headers["x-goog-api-key"], PROVIDER_KEY);
        assert!(r.headers.get("authorization").is_none());
        assert!(r.path.starts_with("/models/gemini-mock:"), "{}", r.path);
        assert!(
            r.body.get("model").is_none(),
            "Gemini bodies carry no model"
        );
    }
    assert_eq!(
        received[1].path,
        "/models/gemini-mock:streamGenerateContent?alt=sse"
    );
    assert_eq!(
        received[5].body["requests"][0]["model"],
        "models/gemini-mock"
    );
    let rows = gw.wait_rows(7).await;
    assert_eq!(rows[0]["input_tokens"], 11);
    assert_eq!(rows[0]["cached_input_tokens"], 2);
    assert_eq!(rows[0]["output_tokens"], 7);
    assert_eq!(rows[1]["stream_status"], "completed");
    assert_eq!(rows[1]["output_tokens"], 7);
    // Rows record the prefix the SDK called (google-genai 3.x: `/v1/`), templated.
    let endpoints: Vec<&str> = rows
        .iter()
        .map(|r| r["endpoint"].as_str().unwrap())
        .collect();
    assert_eq!(
        endpoints,
        [
            "/v1/models/{model}:generateContent",
            "/v1/models/{model}:streamGenerateContent",
            "/v1/models/{model}:generateContent",
            "/v1/models/{model}:generateContent",
            "/v1/models/{model}:countTokens",
            "/v1/models/{model}:batchEmbedContents",
            "/v1beta/models/{model}:generateContent",
        ]
    );
    for row in &rows {
        assert_eq!(row["endpoint_family"], "gemini");
    }
}

#[tokio::test]
async fn a_stream_without_alt_sse_is_one_json_array_and_the_key_may_come_as_a_query_parameter() {
    let mock = mock(MockConfig {
        stream_chunks: 3,
        ..MockConfig::default()
    })
    .await;
    let gw = Gateway::start(&family_policy(&mock, ""));
    let (_, secret) = gw.create_key("*");
    let body = json!({"contents": [{"role": "user", "parts": [{"text": "hello"}]}]});
    let response = http()
        .post(gw.url(&format!(
            "/v1beta/models/gemini-flash:streamGenerateContent?key={secret}"
        )))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    let text = response.text().await.unwrap();
    let chunks: Vec<Value> = serde_json::from_str(&text).expect("a JSON array");
    assert_eq!(chunks.len(), 4, "{text}");
    assert_eq!(chunks[3]["candidates"][0]["finishReason"], "STOP");
    // The upstream was still asked for SSE, so usage was read chunk by chunk.
    assert_eq!(
        mock.received()[0].path,
        "/models/gemini-mock:streamGenerateContent?alt=sse"
    );
    let row = gw.row_for(&id).await;
    assert_eq!(row["output_tokens"], 7);
    assert_eq!(row["input_tokens"], 11);
}

/// A budget, a quota and failing models for the error cases.
const GOVERNANCE: &str = r#"
[models.gemini-quota]
provider = "gemini"
upstream_model = "gemini-mock"

[models.gemini-500]
provider = "gemini"
upstream_model = "mock-500"

[models.gemini-stream-error]
provider = "gemini"
upstream_model = "mock-stream-error"

[[budgets]]
scope = "team"
subject = "broke"
window = "daily"
limit_usd = 0.000001

[[quotas]]
scope = "model"
subject = "gemini-quota"
metric = "requests"
limit = 1
window = "minute"
"#;

#[tokio::test]
async fn gateway_and_provider_errors_on_gemini_endpoints_use_googles_envelope() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&family_policy(&mock, GOVERNANCE));
    let (_, secret) = gw.create_key("*");
    let (_, narrow) = gw.create_key("gemini-flash");
    let (_, broke) = gw.create_key_with(&["--models", "*", "--team", "broke"]);
    let script = r#"
import os
from google import genai
from google.genai import types, errors
def attempt(label, key, model):
    client = genai.Client(api_key=key, http_options=types.HttpOptions(base_url=os.environ["BASE"], retry_options=None))
    try:
        client.models.generate_content(model=model, contents="hi")
        print(label, "no error")
    except errors.APIError as e:
        print(label, type(e).__name__, e.code, e.status)
attempt("badkey", "tg-wrong", "gemini-flash")
attempt("family", os.environ["KEY"], "claude")
attempt("grant", os.environ["NARROW"], "claude")
attempt("unknown", os.environ["KEY"], "nope")
attempt("provider429", os.environ["KEY"], "gemini-429")
attempt("budget", os.environ["BROKE"], "gemini-flash")
attempt("quota1", os.environ["KEY"], "gemini-quota")
attempt("quota2", os.environ["KEY"], "gemini-quota")
attempt("provider500", os.environ["KEY"], "gemini-500")
"#;
    let out = run_python(
        "google.genai",
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
        "badkey ClientError 401 UNAUTHENTICATED",
        "family ClientError 400 INVALID_ARGUMENT",
        "grant ClientError 403 PERMISSION_DENIED",
        "unknown ClientError 400 INVALID_ARGUMENT",
        "provider429 ClientError 429 RESOURCE_EXHAUSTED",
        "budget ClientError 402 RESOURCE_EXHAUSTED",
        "quota1 no error",
        "quota2 ClientError 429 RESOURCE_EXHAUSTED",
        "provider500 ServerError 502 INTERNAL",
    ] {
        assert!(out.contains(expected), "missing '{expected}' in:\n{out}");
    }
    // The reason carries the stable code.
    let response = http()
        .post(gw.url("/v1/models/claude:generateContent"))
        .header("x-goog-api-key", &secret)
        .json(&json!({"contents": [{"parts": [{"text": "hi"}]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["error"]["details"][0]["reason"],
        "provider_not_allowed"
    );
    // An unknown method is a 404, never forwarded.
    let response = http()
        .post(gw.url("/v1beta/models/gemini-flash:deleteEverything"))
        .header("x-goog-api-key", &secret)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["status"], "NOT_FOUND");
    let forwarded: Vec<String> = mock.received().into_iter().map(|r| r.path).collect();
    assert_eq!(
        forwarded,
        [
            "/models/mock-429:generateContent",
            "/models/gemini-mock:generateContent",
            "/models/mock-500:generateContent"
        ],
        "only the provider 429, the first quota call and the provider 500 went upstream"
    );
}

#[tokio::test]
async fn a_gemini_error_chunk_after_the_200_reaches_the_client_and_is_recorded() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&family_policy(&mock, GOVERNANCE));
    let (_, secret) = gw.create_key("*");
    let response = http()
        .post(gw.url("/v1beta/models/gemini-stream-error:streamGenerateContent?alt=sse"))
        .header("x-goog-api-key", &secret)
        .json(&json!({"contents": [{"role": "user", "parts": [{"text": "hello"}]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    let text = response.text().await.unwrap();
    assert!(text.contains("tok0"), "{text}");
    assert!(text.contains("\"UNAVAILABLE\""), "{text}");
    let row = gw.row_for(&id).await;
    assert_eq!(row["stream_status"], "upstream_error");
    assert_eq!(row["error_code"], "upstream_error");
    assert!(row["output_tokens"].as_i64().unwrap() > 0, "{row}");
}

#[tokio::test]
async fn the_readme_google_genai_sdk_example_runs_against_the_demo() {
    let gw = Gateway::start_dir(&repo_root().join("policies"));
    let (_, secret) = gw.create_key("*");
    let script = repo_root().join("examples/quickstart/gemini_client.py");
    let script = std::fs::read_to_string(script).unwrap();
    let out = run_python(
        "google.genai",
        &script,
        &[
            ("TOLLGATE_API_KEY", &secret),
            ("TOLLGATE_BASE_URL", &gw.base),
        ],
    )
    .await;
    assert!(
        out.contains("content: This answer comes from tollgate's offline demo provider"),
        "{out}"
    );
    assert!(out.contains("stream: This answer comes from"), "{out}");
    assert!(out.contains("embedding dimensions: 16"), "{out}");
}
