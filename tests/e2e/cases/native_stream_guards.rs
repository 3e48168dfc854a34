//! Stream guardrails on native Anthropic and Gemini client streams, with the official
//! `anthropic` and `google-genai` SDKs: a masking plugin rewrites a secret split across chunks in
//! the family's own events, and a blocking plugin ends the stream with the family's error, which
//! the SDK raises mid-iteration; what was produced is billed and the verdict is in the trail.

use mock_upstream::MockConfig;
use serde_json::{Value, json};

use crate::common::{Gateway, family_policy, http, mock, repo_root, request_id, run_python};

/// Models whose mock answer streams `SECRET_CHUNKS` (an AWS key id and an address, each split
/// across two chunks), natively and translated from OpenAI.
const SECRET_MODELS: &str = r#"
[models.claude-secret]
provider = "anthropic"
upstream_model = "mock-secret"
pricing = { input_per_mtok = 3.0, output_per_mtok = 15.0 }

[models.gemini-secret]
provider = "gemini"
upstream_model = "mock-secret"
pricing = { input_per_mtok = 0.3, output_per_mtok = 2.5 }

[models.gpt-secret-any]
provider = "openai"
upstream_model = "mock-secret"
translate = true
pricing = { input_per_mtok = 2.5, output_per_mtok = 10.0 }
"#;

fn gateway(mock: &mock_upstream::MockHandle, mode: &str) -> Gateway {
    let wasm = repo_root().join("plugins/dist/pii-guard.wasm");
    assert!(
        wasm.is_file(),
        "{} is missing: run ./scripts/build-plugins (./scripts/test does)",
        wasm.display()
    );
    let manifest = format!(
        "wasm = {:?}\nworld = \"guardrail\"\nphases = [\"stream\"]\n[config]\nmode = \"{mode}\"\n[limits]\nstream_window = 64\n",
        wasm.display().to_string()
    );
    Gateway::start_with(
        &family_policy(mock, SECRET_MODELS),
        &[("plugins/pii.toml", &manifest)],
        &[],
    )
}

const SDK_STREAMS: &str = r#"
import os, anthropic
from google import genai
from google.genai import types, errors
claude = anthropic.Anthropic(base_url=os.environ["BASE"], api_key=os.environ["KEY"], max_retries=0)
gemini = genai.Client(api_key=os.environ["KEY"], http_options=types.HttpOptions(base_url=os.environ["BASE"]))
for model in ["claude-secret", "gpt-secret-any"]:
    try:
        with claude.messages.stream(model=model, max_tokens=100,
                messages=[{"role": "user", "content": "tell me"}]) as stream:
            pieces = list(stream.text_stream)
            final = stream.get_final_message()
        print(model, "pieces:", len(pieces))
        print(model, "text:", "".join(pieces))
        print(model, "final:", final.content[0].text, final.stop_reason)
    except anthropic.APIStatusError as e:
        print(model, "raised:", type(e).__name__, e.body["error"]["type"], e.body["error"]["code"])
try:
    chunks = list(gemini.models.generate_content_stream(model="gemini-secret", contents="tell me"))
    print("gemini pieces:", len(chunks))
    print("gemini text:", "".join(c.text or "" for c in chunks))
except errors.ClientError as e:
    print("gemini raised:", type(e).__name__, e.code, e.status, e.details["error"]["details"][0]["reason"])
"#;

/// The inspect decisions of the stream plugin in a usage row.
fn stream_decision(row: &Value) -> Value {
    let all: Value = serde_json::from_str(row["decisions"].as_str().unwrap()).unwrap();
    all.as_array()
        .unwrap()
        .iter()
        .find(|d| d["stage"] == "inspect" && d["phase"] == "stream")
        .cloned()
        .unwrap_or_else(|| panic!("no stream decision in {all}"))
}

fn row_of<'a>(rows: &'a [Value], model: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["requested_model"] == model)
        .unwrap_or_else(|| panic!("no row for {model}: {rows:#?}"))
}

const MASKED: &str = "Here is the key [CLOUD_KEY] and the contact [EMAIL], nothing else.";

#[tokio::test]
async fn the_anthropic_and_genai_sdks_stream_through_a_masking_plugin_natively_and_translated() {
    let mock = mock(MockConfig::default()).await;
    let gw = gateway(&mock, "mask");
    let (_, secret) = gw.create_key("*");
    let out = run_python(
        "google.genai",
        SDK_STREAMS,
        &[("BASE", &gw.base), ("KEY", &secret)],
    )
    .await;
    for raw in ["AKIAIOSF", "ODNN7EXAMPLE", "jane.d", "example.com"] {
        assert!(!out.contains(raw), "{raw} leaked: {out}");
    }
    for model in ["claude-secret", "gpt-secret-any"] {
        assert!(out.contains(&format!("{model} text: {MASKED}")), "{out}");
        assert!(
            out.contains(&format!("{model} final: {MASKED} end_turn")),
            "{out}"
        );
    }
    assert!(out.contains(&format!("gemini text: {MASKED}")), "{out}");
    // Still streamed in pieces, not buffered into one.
    assert!(!out.contains("pieces: 1\n"), "{out}");

    let rows = gw.wait_rows(3).await;
    for model in ["claude-secret", "gpt-secret-any", "gemini-secret"] {
        let row = row_of(&rows, model);
        assert_eq!(row["stream_status"], "completed", "{row}");
        assert!(row["output_tokens"].as_i64().unwrap() > 0, "{row}");
        let decision = stream_decision(row);
        assert_eq!(decision["outcome"], "rewrite", "{model}: {decision}");
        assert_eq!(decision["findings"]["email"], 1, "{model}: {decision}");
        assert_eq!(decision["findings"]["cloud_key"], 1, "{model}: {decision}");
    }
    assert_eq!(row_of(&rows, "gpt-secret-any")["upstream_family"], "openai");
    assert_eq!(
        row_of(&rows, "gpt-secret-any")["endpoint_family"],
        "anthropic"
    );
}

#[tokio::test]
async fn a_blocking_plugin_makes_each_sdk_raise_its_own_error_mid_stream_and_bills_what_was_produced()
 {
    let mock = mock(MockConfig::default()).await;
    let gw = gateway(&mock, "block");
    let (_, secret) = gw.create_key("*");
    let out = run_python(
        "google.genai",
        SDK_STREAMS,
        &[("BASE", &gw.base), ("KEY", &secret)],
    )
    .await;
    for raw in ["AKIAIOSF", "ODNN7EXAMPLE", "jane.d", "example.com"] {
        assert!(!out.contains(raw), "{raw} leaked: {out}");
    }
    for model in ["claude-secret", "gpt-secret-any"] {
        assert!(
            out.contains(&format!(
                "{model} raised: APIStatusError permission_error safety_blocked"
            )),
            "{out}"
        );
    }
    assert!(
        out.contains("gemini raised: ClientError 403 PERMISSION_DENIED safety_blocked"),
        "{out}"
    );

    let rows = gw.wait_rows(3).await;
    for model in ["claude-secret", "gpt-secret-any", "gemini-secret"] {
        let row = row_of(&rows, model);
        assert_eq!(row["stream_status"], "blocked", "{row}");
        assert_eq!(row["error_code"], "safety_blocked", "{row}");
        assert!(row["input_tokens"].as_i64().unwrap() > 0, "{row}");
        assert!(row["output_tokens"].as_i64().unwrap() > 0, "{row}");
        assert!(row["cost_nanos"].as_i64().unwrap() > 0, "{row}");
        let decision = stream_decision(row);
        assert_eq!(decision["outcome"], "deny", "{model}: {decision}");
    }
    // Anthropic reports output 1 in message_start and the rest only in message_delta, which
    // a blocked stream never reaches: the text produced before the block is billed instead.
    let claude = row_of(&rows, "claude-secret");
    assert!(claude["output_tokens"].as_i64().unwrap() > 1, "{claude}");
}

/// A Gemini stream without `alt=sse` (the default streamed JSON array), through `mode`:
/// the array as the client parsed it, and the usage row.
async fn gemini_array(mode: &str) -> (Vec<Value>, Value) {
    let mock = mock(MockConfig::default()).await;
    let gw = gateway(&mock, mode);
    let (_, secret) = gw.create_key("*");
    let response = http()
        .post(gw.url("/v1/models/gemini-secret:streamGenerateContent"))
        .header("x-goog-api-key", &secret)
        .json(&json!({"contents": [{"role": "user", "parts": [{"text": "tell me"}]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    let text = response.text().await.unwrap();
    for raw in ["AKIAIOSF", "ODNN7EXAMPLE", "jane.d", "example.com"] {
        assert!(!text.contains(raw), "{raw} leaked: {text}");
    }
    let chunks: Vec<Value> =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not one JSON array ({e}): {text}"));
    (chunks, gw.row_for(&id).await)
}

#[tokio::test]
async fn a_gemini_json_array_stream_is_masked_in_its_chunks_and_ends_with_an_error_object_when_blocked()
 {
    let (chunks, row) = gemini_array("mask").await;
    let text: String = chunks
        .iter()
        .flat_map(|c| {
            c["candidates"][0]["content"]["parts"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|p| p["text"].as_str().map(str::to_string))
        .collect();
    assert_eq!(text, MASKED);
    assert!(chunks.len() > 2, "still several chunks: {chunks:?}");
    assert_eq!(
        chunks.last().unwrap()["candidates"][0]["finishReason"],
        "STOP"
    );
    assert_eq!(row["stream_status"], "completed");
    assert_eq!(row["endpoint"], "/v1/models/{model}:streamGenerateContent");
    assert_eq!(stream_decision(&row)["outcome"], "rewrite");

    let (chunks, row) = gemini_array("block").await;
    let error = &chunks.last().unwrap()["error"];
    assert_eq!(error["code"], 403, "{chunks:?}");
    assert_eq!(error["status"], "PERMISSION_DENIED");
    assert_eq!(error["details"][0]["reason"], "safety_blocked");
    assert!(
        chunks
            .iter()
            .all(|c| c["candidates"][0]["finishReason"].is_null()),
        "a blocked stream does not finish: {chunks:?}"
    );
    assert_eq!(row["stream_status"], "blocked");
    assert!(row["output_tokens"].as_i64().unwrap() > 0, "{row}");
    assert_eq!(stream_decision(&row)["outcome"], "deny");
}
