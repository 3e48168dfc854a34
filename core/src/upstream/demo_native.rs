//! The demo provider's answers in the other families' shapes: Anthropic Messages (JSON and the
//! SSE event sequence) and count_tokens, Gemini generateContent (JSON and SSE), countTokens and
//! embedContent, OpenAI legacy completions and vLLM's tokenize. Same deterministic text and
//! usage as the OpenAI-shaped answers.

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::UpstreamReply;
use super::demo::{answer_for, error_reply, json_reply, prompt, sse_reply, tokens, vector};

/// Every text of an Anthropic request (system + messages) and the last user turn.
fn anthropic_prompt(body: &Value) -> (String, String) {
    let (mut all, last) = prompt(body);
    match body.get("system") {
        Some(Value::String(s)) => all.push_str(s),
        Some(Value::Array(blocks)) => {
            for b in blocks {
                if let Some(t) = b.get("text").and_then(Value::as_str) {
                    all.push_str(t);
                }
            }
        }
        _ => {}
    }
    (all, last)
}

/// `POST /v1/messages`.
pub fn messages(body: &Value, model: &str, stream: bool, id: &str) -> UpstreamReply {
    if body
        .get("messages")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
    {
        return anthropic_error("messages: must be a non-empty array");
    }
    if body.get("max_tokens").and_then(Value::as_u64).is_none() {
        return anthropic_error("max_tokens: Field required");
    }
    let (all, last_user) = anthropic_prompt(body);
    let answer = answer_for(&last_user);
    let id = format!("msg_{id}");
    let input = tokens(&all);
    let output = tokens(&answer);
    if !stream {
        return json_reply(json!({
            "id": id, "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": answer}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": input, "output_tokens": output,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
        }));
    }
    let event = |kind: &str, data: Value| format!("event: {kind}\ndata: {data}\n\n");
    let mut events = vec![
        event(
            "message_start",
            json!({"type": "message_start", "message": {
                "id": id, "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": input, "output_tokens": 1,
                          "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}}),
        ),
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        event("ping", json!({"type": "ping"})),
    ];
    for piece in answer.split_inclusive(' ') {
        events.push(event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}),
        ));
    }
    events.push(event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push(event(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
               "usage": {"output_tokens": output}}),
    ));
    events.push(event("message_stop", json!({"type": "message_stop"})));
    sse_reply(events)
}

fn anthropic_error(message: &str) -> UpstreamReply {
    let mut reply = json_reply(json!({
        "type": "error",
        "error": {"type": "invalid_request_error", "message": format!("demo provider: {message}")}
    }));
    reply.status = StatusCode::BAD_REQUEST;
    reply
}

/// `POST /v1/messages/count_tokens`.
pub fn count_tokens(body: &Value) -> UpstreamReply {
    let (all, _) = anthropic_prompt(body);
    json_reply(json!({"input_tokens": tokens(&all)}))
}

/// Every text of a Gemini request (system instruction + contents) and the last user turn.
fn gemini_prompt(body: &Value) -> (String, String) {
    let parts_text = |content: &Value| -> String {
        content
            .get("parts")
            .and_then(Value::as_array)
            .map(|parts| {
                parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    };
    let mut all = String::new();
    let mut last_user = String::new();
    if let Some(system) = body.get("systemInstruction") {
        all.push_str(&parts_text(system));
    }
    for content in body
        .get("contents")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let text = parts_text(content);
        if content.get("role").and_then(Value::as_str) != Some("model") {
            last_user = text.clone();
        }
        all.push('\n');
        all.push_str(&text);
    }
    (all, last_user)
}

fn gemini_error(status: StatusCode, message: &str) -> UpstreamReply {
    let mut reply = json_reply(json!({
        "error": {"code": status.as_u16(), "message": format!("demo provider: {message}"),
                  "status": "INVALID_ARGUMENT"}
    }));
    reply.status = status;
    reply
}

/// `:generateContent` and `:streamGenerateContent?alt=sse`.
pub fn gemini(body: &Value, model: &str, stream: bool) -> UpstreamReply {
    if body
        .get("contents")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
    {
        return gemini_error(
            StatusCode::BAD_REQUEST,
            "contents must be a non-empty array of Content objects",
        );
    }
    let (all, last_user) = gemini_prompt(body);
    let answer = answer_for(&last_user);
    let input = tokens(&all);
    let usage = |output: i64| {
        json!({"promptTokenCount": input, "candidatesTokenCount": output,
               "totalTokenCount": input + output})
    };
    let chunk = |text: &str, finish: Option<&str>, output: i64| {
        let mut candidate =
            json!({"content": {"role": "model", "parts": [{"text": text}]}, "index": 0});
        if let Some(finish) = finish {
            candidate["finishReason"] = json!(finish);
        }
        json!({"candidates": [candidate], "usageMetadata": usage(output), "modelVersion": model})
    };
    if !stream {
        return json_reply(chunk(&answer, Some("STOP"), tokens(&answer)));
    }
    let pieces: Vec<&str> = answer.split_inclusive(' ').collect();
    let mut produced = String::new();
    let events = pieces
        .iter()
        .enumerate()
        .map(|(i, piece)| {
            produced.push_str(piece);
            let finish = (i + 1 == pieces.len()).then_some("STOP");
            format!("data: {}\r\n\r\n", chunk(piece, finish, tokens(&produced)))
        })
        .collect();
    sse_reply(events)
}

/// `:countTokens`.
pub fn gemini_count_tokens(body: &Value) -> UpstreamReply {
    // countTokens takes `contents` or a whole `generateContentRequest`.
    let request = body.get("generateContentRequest").unwrap_or(body);
    let (all, _) = gemini_prompt(request);
    json_reply(json!({"totalTokens": tokens(&all)}))
}

/// `:batchEmbedContents`: one embedding per request.
pub fn gemini_batch_embed(body: &Value) -> UpstreamReply {
    let Some(requests) = body.get("requests").and_then(Value::as_array) else {
        return gemini_error(StatusCode::BAD_REQUEST, "requests is required");
    };
    let embeddings: Vec<Value> = requests
        .iter()
        .map(|r| json!({"values": embed_values(r)}))
        .collect();
    json_reply(json!({"embeddings": embeddings}))
}

/// `:embedContent`.
pub fn gemini_embed(body: &Value) -> UpstreamReply {
    if body.get("content").is_none() {
        return gemini_error(StatusCode::BAD_REQUEST, "content is required");
    }
    json_reply(json!({"embedding": {"values": embed_values(body)}}))
}

/// The demo vector of one embed request (`content`, `outputDimensionality`).
fn embed_values(body: &Value) -> Vec<f64> {
    let content = body.get("content").unwrap_or(&Value::Null);
    let text: String = content
        .get("parts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("text").and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join(" ");
    let dimensions = body
        .get("outputDimensionality")
        .and_then(Value::as_u64)
        .map_or(16, |d| d.clamp(1, 3072) as usize);
    vector(&text, dimensions)
}

/// OpenAI legacy `POST /v1/completions`.
pub fn completions(
    body: &Value,
    model: &str,
    stream: bool,
    created: i64,
    id: &str,
) -> UpstreamReply {
    let prompt_text = match body.get("prompt") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join("\n"),
        _ => {
            return error_reply(
                StatusCode::BAD_REQUEST,
                "demo provider: 'prompt' must be a string or an array of strings",
            );
        }
    };
    let answer = answer_for(&prompt_text);
    let usage = json!({"prompt_tokens": tokens(&prompt_text), "completion_tokens": tokens(&answer),
                       "total_tokens": tokens(&prompt_text) + tokens(&answer)});
    let id = format!("cmpl-{id}");
    if !stream {
        return json_reply(json!({
            "id": id, "object": "text_completion", "created": created, "model": model,
            "choices": [{"text": answer, "index": 0, "logprobs": null, "finish_reason": "stop"}],
            "usage": usage,
        }));
    }
    let chunk = |text: &str, finish: Value| {
        let c = json!({"id": id, "object": "text_completion", "created": created, "model": model,
                       "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}]});
        format!("data: {c}\n\n")
    };
    let mut events: Vec<String> = answer
        .split_inclusive(' ')
        .map(|piece| chunk(piece, Value::Null))
        .collect();
    events.push(chunk("", json!("stop")));
    if body
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        let c = json!({"id": id, "object": "text_completion", "created": created, "model": model,
                       "choices": [], "usage": usage});
        events.push(format!("data: {c}\n\n"));
    }
    events.push("data: [DONE]\n\n".to_string());
    sse_reply(events)
}

/// vLLM `POST /tokenize`: one pseudo token per four bytes.
pub fn tokenize(body: &Value) -> UpstreamReply {
    let text = body
        .get("prompt")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| prompt(body).0);
    let count = tokens(&text);
    let ids: Vec<i64> = (0..count).map(|i| 1000 + i).collect();
    json_reply(json!({"count": count, "max_model_len": 8192, "tokens": ids}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    async fn text(reply: UpstreamReply) -> String {
        let chunks: Vec<_> = reply.body.collect().await;
        chunks
            .into_iter()
            .map(|c| String::from_utf8(c.expect("chunk").to_vec()).expect("utf8"))
            .collect()
    }

    #[tokio::test]
    async fn anthropic_streams_follow_the_event_sequence_with_usage() {
        let body = json!({"model": "m", "max_tokens": 10, "stream": true,
                          "messages": [{"role": "user", "content": "hello"}]});
        let out = text(messages(&body, "m", true, "x")).await;
        let kinds: Vec<&str> = out
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .collect();
        assert_eq!(kinds.first(), Some(&"message_start"));
        assert_eq!(kinds.last(), Some(&"message_stop"));
        assert!(kinds.contains(&"message_delta"));
    }

    #[tokio::test]
    async fn anthropic_requests_without_max_tokens_are_refused_like_anthropic_does() {
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        let reply = messages(&body, "m", false, "x");
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        let v: Value = serde_json::from_str(&text(reply).await).expect("json");
        assert_eq!(v["type"], "error");
    }

    #[tokio::test]
    async fn gemini_answers_carry_usage_metadata() {
        let body = json!({"contents": [{"role": "user", "parts": [{"text": "hello there"}]}]});
        let v: Value = serde_json::from_str(&text(gemini(&body, "g", false)).await).expect("json");
        assert_eq!(v["candidates"][0]["finishReason"], "STOP");
        assert_eq!(v["usageMetadata"]["promptTokenCount"], 3);
    }
}
