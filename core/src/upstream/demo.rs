//! The `demo` provider family: an offline, deterministic responder in the shape of the endpoint
//! it is called on (OpenAI here; Anthropic, Gemini and legacy completions in `demo_native`).
//!
//! It exists so that a fresh checkout answers real requests through the whole governed path
//! with no network and no provider account. Answers say plainly that they come from the demo
//! provider; usage is realistic (about four characters per token) so pricing and records can be
//! seen working. It is never used unless a provider in `gateway.toml` has `family = "demo"`.

use axum::http::{HeaderValue, StatusCode};
use bytes::Bytes;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{UpstreamReply, demo_native};
use crate::clock::now_ms;
use crate::family::Endpoint;

/// A 1x1 transparent PNG, for image generation.
const PIXEL_PNG_B64: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";

/// Rough token count: one token per four bytes, at least one for non-empty text.
pub(super) fn tokens(text: &str) -> i64 {
    i64::try_from(text.len().div_ceil(4)).unwrap_or(i64::MAX)
}

fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// All prompt text of a chat or responses request, and the last user turn.
pub(super) fn prompt(body: &Value) -> (String, String) {
    let mut all = String::new();
    let mut last_user = String::new();
    if let Some(messages) = body.get("messages").and_then(Value::as_array) {
        for m in messages {
            let text = m.get("content").map(text_of).unwrap_or_default();
            if m.get("role").and_then(Value::as_str) == Some("user") {
                last_user = text.clone();
            }
            all.push_str(&text);
            all.push('\n');
        }
    }
    match body.get("input") {
        Some(Value::String(s)) => {
            last_user = s.clone();
            all.push_str(s);
        }
        Some(Value::Array(items)) => {
            for item in items {
                let text = item
                    .get("content")
                    .map(text_of)
                    .unwrap_or_else(|| text_of(item));
                last_user = text.clone();
                all.push_str(&text);
            }
        }
        _ => {}
    }
    if let Some(s) = body.get("instructions").and_then(Value::as_str) {
        all.push_str(s);
    }
    (all, last_user)
}

pub(super) fn answer_for(last_user: &str) -> String {
    let quoted: String = last_user.chars().take(120).collect();
    let words = last_user.split_whitespace().count();
    format!(
        "This answer comes from tollgate's offline demo provider. Your message had {words} words \
         and began: \"{quoted}\". Point a model at a real provider in gateway.toml for real answers."
    )
}

pub(super) fn json_reply(value: Value) -> UpstreamReply {
    let bytes = Bytes::from(value.to_string());
    UpstreamReply {
        status: StatusCode::OK,
        content_type: Some(HeaderValue::from_static("application/json")),
        provider_request_id: None,
        retry_after: None,
        body: Box::pin(futures_util::stream::iter([Ok(bytes)])),
    }
}

pub(super) fn sse_reply(events: Vec<String>) -> UpstreamReply {
    let chunks: Vec<Result<Bytes, String>> =
        events.into_iter().map(|e| Ok(Bytes::from(e))).collect();
    UpstreamReply {
        status: StatusCode::OK,
        content_type: Some(HeaderValue::from_static("text/event-stream")),
        provider_request_id: None,
        retry_after: None,
        body: Box::pin(futures_util::stream::iter(chunks)),
    }
}

pub(super) fn error_reply(status: StatusCode, message: &str) -> UpstreamReply {
    let mut reply = json_reply(json!({
        "error": {"message": message, "type": "invalid_request_error", "code": "demo_invalid_request"}
    }));
    reply.status = status;
    reply
}

/// Answers `body` (already carrying the upstream model id, except Gemini's which is
/// `upstream_model`) for `endpoint`, in that endpoint's shape.
pub fn respond(endpoint: Endpoint, body: &[u8], upstream_model: &str) -> UpstreamReply {
    let Ok(body) = serde_json::from_slice::<Value>(body) else {
        return error_reply(StatusCode::BAD_REQUEST, "demo provider: body is not JSON");
    };
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or(upstream_model)
        .to_string();
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let created = now_ms() / 1000;
    let id = format!(
        "demo-{}",
        &hex::encode(Sha256::digest(body.to_string().as_bytes()))[..24]
    );
    match endpoint {
        Endpoint::ChatCompletions | Endpoint::Unified => chat(&body, &model, stream, created, &id),
        Endpoint::Responses => responses(&body, &model, stream, created, &id),
        Endpoint::Embeddings => embeddings(&body, &model),
        Endpoint::ImagesGenerations => images(&body, created),
        Endpoint::Completions => demo_native::completions(&body, &model, stream, created, &id),
        Endpoint::Messages => demo_native::messages(&body, &model, stream, &id),
        Endpoint::CountTokens => demo_native::count_tokens(&body),
        Endpoint::GeminiGenerate => demo_native::gemini(&body, &model, false),
        Endpoint::GeminiStream => demo_native::gemini(&body, &model, true),
        Endpoint::GeminiCountTokens => demo_native::gemini_count_tokens(&body),
        Endpoint::GeminiEmbed => demo_native::gemini_embed(&body),
        Endpoint::GeminiBatchEmbed => demo_native::gemini_batch_embed(&body),
        Endpoint::Vllm(route) => match route.upstream {
            "/v1/chat/completions" => chat(&body, &model, stream, created, &id),
            "/v1/completions" => demo_native::completions(&body, &model, stream, created, &id),
            "/v1/responses" => responses(&body, &model, stream, created, &id),
            "/v1/embeddings" => embeddings(&body, &model),
            "/tokenize" => demo_native::tokenize(&body),
            _ => error_reply(
                StatusCode::NOT_IMPLEMENTED,
                "demo provider: this vLLM route has no demo answer",
            ),
        },
    }
}

fn chat(body: &Value, model: &str, stream: bool, created: i64, id: &str) -> UpstreamReply {
    let (all, last_user) = prompt(body);
    if body
        .get("messages")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
    {
        return error_reply(
            StatusCode::BAD_REQUEST,
            "demo provider: 'messages' must be a non-empty array",
        );
    }
    let answer = answer_for(&last_user);
    let usage = json!({
        "prompt_tokens": tokens(&all),
        "completion_tokens": tokens(&answer),
        "total_tokens": tokens(&all) + tokens(&answer),
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0}
    });
    if !stream {
        return json_reply(json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                         "finish_reason": "stop", "logprobs": null}],
            "usage": usage,
        }));
    }
    let include_usage = body
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let chunk = |delta: Value, finish: Value| {
        let mut c = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        if include_usage {
            c["usage"] = Value::Null;
        }
        format!("data: {c}\n\n")
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    for piece in answer.split_inclusive(' ') {
        events.push(chunk(json!({"content": piece}), Value::Null));
    }
    events.push(chunk(json!({}), json!("stop")));
    if include_usage {
        let c = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [], "usage": usage,
        });
        events.push(format!("data: {c}\n\n"));
    }
    events.push("data: [DONE]\n\n".to_string());
    sse_reply(events)
}

fn responses(body: &Value, model: &str, stream: bool, created: i64, id: &str) -> UpstreamReply {
    let (all, last_user) = prompt(body);
    let answer = answer_for(&last_user);
    let usage = json!({
        "input_tokens": tokens(&all),
        "output_tokens": tokens(&answer),
        "total_tokens": tokens(&all) + tokens(&answer),
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 0}
    });
    let message = json!({
        "type": "message", "id": format!("msg_{id}"), "status": "completed", "role": "assistant",
        "content": [{"type": "output_text", "text": answer, "annotations": []}]
    });
    let response = |status: &str, output: Value, usage: Value| {
        json!({
            "id": format!("resp_{id}"), "object": "response", "created_at": created,
            "status": status, "model": model, "output": output, "usage": usage,
        })
    };
    if !stream {
        return json_reply(response("completed", json!([message]), usage));
    }
    let event = |kind: &str, data: Value| format!("event: {kind}\ndata: {data}\n\n");
    let mut events = vec![event(
        "response.created",
        json!({"type": "response.created", "response": response("in_progress", json!([]), Value::Null)}),
    )];
    for piece in answer.split_inclusive(' ') {
        events.push(event(
            "response.output_text.delta",
            json!({"type": "response.output_text.delta", "output_index": 0, "content_index": 0, "delta": piece}),
        ));
    }
    events.push(event(
        "response.completed",
        json!({"type": "response.completed", "response": response("completed", json!([message]), usage)}),
    ));
    sse_reply(events)
}

/// A deterministic unit-range vector of `dimensions` for `text`.
pub(super) fn vector(text: &str, dimensions: usize) -> Vec<f64> {
    let mut vector = Vec::with_capacity(dimensions);
    let mut seed = Sha256::digest(text.as_bytes());
    while vector.len() < dimensions {
        for pair in seed.chunks(2) {
            if vector.len() == dimensions {
                break;
            }
            let raw = u16::from_be_bytes([pair[0], pair[1]]);
            vector.push(f64::from(raw) / 32767.5 - 1.0);
        }
        seed = Sha256::digest(seed);
    }
    vector
}

fn embeddings(body: &Value, model: &str) -> UpstreamReply {
    let inputs: Vec<String> = match body.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
            .collect(),
        _ => {
            return error_reply(
                StatusCode::BAD_REQUEST,
                "demo provider: 'input' must be a string or an array",
            );
        }
    };
    let dimensions = body
        .get("dimensions")
        .and_then(Value::as_u64)
        .map_or(16, |d| d.clamp(1, 3072) as usize);
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, text)| {
            json!({"object": "embedding", "index": index, "embedding": vector(text, dimensions)})
        })
        .collect();
    let prompt_tokens: i64 = inputs.iter().map(|t| tokens(t)).sum();
    json_reply(json!({
        "object": "list", "data": data, "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
    }))
}

fn images(body: &Value, created: i64) -> UpstreamReply {
    let prompt = body
        .get("prompt")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if prompt.is_empty() {
        return error_reply(
            StatusCode::BAD_REQUEST,
            "demo provider: 'prompt' is required",
        );
    }
    let n = body
        .get("n")
        .and_then(Value::as_u64)
        .unwrap_or(1)
        .clamp(1, 10);
    let data: Vec<Value> = (0..n)
        .map(|_| json!({"b64_json": PIXEL_PNG_B64, "revised_prompt": prompt}))
        .collect();
    let output = i64::try_from(n).unwrap_or(1) * 272;
    json_reply(json!({
        "created": created, "data": data,
        "usage": {"input_tokens": tokens(prompt), "output_tokens": output,
                  "total_tokens": tokens(prompt) + output,
                  "input_tokens_details": {"text_tokens": tokens(prompt), "image_tokens": 0}}
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    async fn collect(reply: UpstreamReply) -> String {
        let chunks: Vec<_> = reply.body.collect().await;
        chunks
            .into_iter()
            .map(|c| String::from_utf8(c.expect("chunk").to_vec()).expect("utf8"))
            .collect()
    }

    #[tokio::test]
    async fn chat_answers_are_deterministic_with_usage() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"hello there"}]}"#;
        let a = collect(respond(Endpoint::ChatCompletions, body, "m")).await;
        let b = collect(respond(Endpoint::ChatCompletions, body, "m")).await;
        assert_eq!(a, b);
        let v: Value = serde_json::from_str(&a).expect("json");
        assert_eq!(v["usage"]["prompt_tokens"], 3);
        assert!(
            v["choices"][0]["message"]["content"]
                .as_str()
                .expect("text")
                .contains("demo provider")
        );
    }

    #[tokio::test]
    async fn chat_streams_end_with_usage_and_done() {
        let body = br#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;
        let reply = respond(Endpoint::ChatCompletions, body, "m");
        assert_eq!(
            reply.content_type.as_ref().map(|v| v.to_str().ok()),
            Some(Some("text/event-stream"))
        );
        let text = collect(reply).await;
        assert!(text.ends_with("data: [DONE]\n\n"));
        assert!(text.contains("\"choices\":[],\"usage\":{"));
    }

    #[tokio::test]
    async fn embeddings_have_the_requested_dimensions() {
        let body = br#"{"model":"m","input":["a","b"],"dimensions":5}"#;
        let v: Value =
            serde_json::from_str(&collect(respond(Endpoint::Embeddings, body, "m")).await)
                .expect("json");
        assert_eq!(v["data"].as_array().map(Vec::len), Some(2));
        assert_eq!(v["data"][0]["embedding"].as_array().map(Vec::len), Some(5));
    }
}
