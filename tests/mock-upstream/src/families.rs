//! The mock's other provider families: Anthropic Messages (JSON, SSE, tools, count_tokens),
//! Gemini (`generateContent`, `streamGenerateContent` as SSE or JSON array, `countTokens`,
//! `embedContent`, function calls), Azure OpenAI deployments, OpenAI legacy completions and a
//! vLLM server's raw routes (every path is recorded, so tests can prove what was never
//! forwarded).
//!
//! Model-steered behaviour on these families, in the family's own error envelope:
//!
//! | upstream model id     | behaviour                                                     |
//! |-----------------------|---------------------------------------------------------------|
//! | `mock-500`            | 500                                                           |
//! | `mock-429`            | 429 with `Retry-After: 7`                                     |
//! | `mock-cache`          | Anthropic usage: input 7, cache read 9000, creation 1000, output 50 |
//! | `mock-stream-error`   | a stream that sends some text, then an error event (after the 200) |
//! | `mock-secret`         | a stream of [`SECRET_CHUNKS`](super::SECRET_CHUNKS): a key and an address split across chunks |

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{Shared, json_response, remember, sse_response};

/// Anthropic usage of a normal answer.
fn anthropic_usage(model: &str) -> Value {
    if model == "mock-cache" {
        json!({"input_tokens": 7, "cache_read_input_tokens": 9000,
               "cache_creation_input_tokens": 1000, "output_tokens": 50})
    } else {
        json!({"input_tokens": 11, "output_tokens": 7, "cache_read_input_tokens": 2,
               "cache_creation_input_tokens": 0})
    }
}

fn with_retry_after(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("7"));
    response
}

fn anthropic_failure(model: &str) -> Option<Response> {
    let error = |status: StatusCode, kind: &str, message: &str| {
        json_response(
            status,
            &json!({"type": "error", "error": {"type": kind, "message": message}}),
        )
    };
    match model {
        "mock-500" => Some(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "api_error",
            "mock internal error",
        )),
        "mock-429" => Some(with_retry_after(error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "mock rate limit",
        ))),
        "mock-400" => Some(error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "mock rejects this parameter",
        )),
        _ => None,
    }
}

/// The first tool of the request, when the last user turn is not a tool result.
fn anthropic_tool_to_call(request: &Value) -> Option<String> {
    let tool = request.pointer("/tools/0/name")?.as_str()?.to_string();
    let last = request.get("messages")?.as_array()?.last()?;
    let answered = last
        .get("content")
        .and_then(Value::as_array)
        .is_some_and(|blocks| {
            blocks
                .iter()
                .any(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
        });
    (!answered).then_some(tool)
}

/// The text of the tool results in the last user turn, if any.
fn anthropic_tool_result(request: &Value) -> Option<String> {
    let last = request.get("messages")?.as_array()?.last()?;
    let blocks = last.get("content")?.as_array()?;
    let texts: Vec<String> = blocks
        .iter()
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
        .map(|b| match b.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => String::new(),
        })
        .collect();
    (!texts.is_empty()).then(|| texts.join(" | "))
}

/// `POST /v1/messages`.
pub async fn anthropic_messages(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = remember(&shared, "/v1/messages", &headers, &body);
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if !shared.config.latency.is_zero() {
        tokio::time::sleep(shared.config.latency).await;
    }
    if let Some(response) = anthropic_failure(&model) {
        return response;
    }
    let usage = anthropic_usage(&model);
    let tool = anthropic_tool_to_call(&request);
    let text = match anthropic_tool_result(&request) {
        Some(result) => format!("the tool said: {result}"),
        None => "mock answer".to_string(),
    };
    let stream = request
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if !stream {
        let (content, stop) = match &tool {
            Some(name) => (
                json!([{"type": "text", "text": "calling a tool"},
                       {"type": "tool_use", "id": "toolu_mock1", "name": name, "input": {"city": "Paris"}}]),
                "tool_use",
            ),
            None => (json!([{"type": "text", "text": text}]), "end_turn"),
        };
        return json_response(
            StatusCode::OK,
            &json!({"id": "msg_mock", "type": "message", "role": "assistant", "model": model,
                    "content": content, "stop_reason": stop, "stop_sequence": null, "usage": usage}),
        );
    }
    let event = |kind: &str, data: Value| format!("event: {kind}\ndata: {data}\n\n");
    let mut start_usage = usage.clone();
    start_usage["output_tokens"] = json!(1);
    let mut events = vec![event(
        "message_start",
        json!({"type": "message_start", "message": {"id": "msg_mock", "type": "message", "role": "assistant",
               "model": model, "content": [], "stop_reason": null, "stop_sequence": null, "usage": start_usage}}),
    )];
    events.push(event(
        "content_block_start",
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    ));
    events.push(event("ping", json!({"type": "ping"})));
    let pieces: Vec<String> = if tool.is_some() {
        vec!["calling a tool".to_string()]
    } else if model == "mock-stream-error" {
        vec!["tok0 ".into(), "tok1 ".into()]
    } else if model == "mock-secret" {
        super::SECRET_CHUNKS.iter().map(|c| c.to_string()).collect()
    } else if text == "mock answer" {
        (0..shared.config.stream_chunks)
            .map(|i| format!("tok{i} "))
            .collect()
    } else {
        vec![text.clone()]
    };
    for piece in pieces {
        events.push(event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}),
        ));
    }
    if model == "mock-stream-error" {
        events.push(event(
            "error",
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "mock overloaded mid-stream"}}),
        ));
        return sse_response(events, Duration::ZERO, false);
    }
    events.push(event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    let mut stop = "end_turn";
    if let Some(name) = &tool {
        stop = "tool_use";
        events.push(event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_mock1", "name": name, "input": {}}}),
        ));
        for part in ["{\"city\": ", "\"Paris\"}"] {
            events.push(event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": part}}),
            ));
        }
        events.push(event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 1}),
        ));
    }
    let output = usage.get("output_tokens").cloned().unwrap_or(json!(7));
    events.push(event(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": output}}),
    ));
    events.push(event("message_stop", json!({"type": "message_stop"})));
    sse_response(events, Duration::ZERO, false)
}

/// `POST /v1/messages/count_tokens`.
pub async fn anthropic_count_tokens(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    remember(&shared, "/v1/messages/count_tokens", &headers, &body);
    json_response(StatusCode::OK, &json!({"input_tokens": 42}))
}

fn gemini_failure(model: &str) -> Option<Response> {
    let error = |status: StatusCode, name: &str, message: &str| {
        json_response(
            status,
            &json!({"error": {"code": status.as_u16(), "message": message, "status": name}}),
        )
    };
    match model {
        "mock-500" => Some(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "mock internal error",
        )),
        "mock-429" => Some(with_retry_after(error(
            StatusCode::TOO_MANY_REQUESTS,
            "RESOURCE_EXHAUSTED",
            "mock quota exhausted",
        ))),
        "mock-400" => Some(error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "mock rejects this parameter",
        )),
        _ => None,
    }
}

/// The first function declaration, when the last turn is not a function response.
fn gemini_function_to_call(request: &Value) -> Option<String> {
    let name = request
        .pointer("/tools/0/functionDeclarations/0/name")?
        .as_str()?
        .to_string();
    let last = request.get("contents")?.as_array()?.last()?;
    let answered = last
        .get("parts")
        .and_then(Value::as_array)
        .is_some_and(|parts| parts.iter().any(|p| p.get("functionResponse").is_some()));
    (!answered).then_some(name)
}

fn gemini_usage(output: i64) -> Value {
    json!({"promptTokenCount": 11, "candidatesTokenCount": output, "totalTokenCount": 11 + output,
           "cachedContentTokenCount": 2})
}

/// `POST /{v1beta,v1}/models/{model}:{method}`.
pub async fn gemini(
    State(shared): State<Arc<Shared>>,
    Path(target): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = match &query {
        Some(q) => format!("/models/{target}?{q}"),
        None => format!("/models/{target}"),
    };
    let request = remember(&shared, &path, &headers, &body);
    let (model, method) = target.rsplit_once(':').unwrap_or((&target, ""));
    if !shared.config.latency.is_zero() {
        tokio::time::sleep(shared.config.latency).await;
    }
    if let Some(response) = gemini_failure(model) {
        return response;
    }
    if request.get("model").is_some() {
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": {"code": 400, "message": "Invalid JSON payload received. Unknown name \"model\"", "status": "INVALID_ARGUMENT"}}),
        );
    }
    match method {
        "countTokens" => return json_response(StatusCode::OK, &json!({"totalTokens": 11})),
        "batchEmbedContents" => {
            let n = request
                .get("requests")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            let embeddings: Vec<Value> =
                (0..n).map(|_| json!({"values": [0.1, 0.2, 0.3]})).collect();
            return json_response(StatusCode::OK, &json!({"embeddings": embeddings}));
        }
        "embedContent" => {
            return json_response(
                StatusCode::OK,
                &json!({"embedding": {"values": [0.1, 0.2, 0.3]}}),
            );
        }
        "generateContent" | "streamGenerateContent" => {}
        _ => {
            return json_response(
                StatusCode::NOT_FOUND,
                &json!({"error": {"code": 404, "message": "unknown method", "status": "NOT_FOUND"}}),
            );
        }
    }
    let parts = match gemini_function_to_call(&request) {
        Some(name) => json!([{"functionCall": {"name": name, "args": {"city": "Paris"}}}]),
        None => json!([{"text": "mock answer"}]),
    };
    let chunk = |parts: Value, finish: Option<&str>, output: i64| {
        let mut candidate = json!({"content": {"role": "model", "parts": parts}, "index": 0});
        if let Some(finish) = finish {
            candidate["finishReason"] = json!(finish);
        }
        json!({"candidates": [candidate], "usageMetadata": gemini_usage(output), "modelVersion": model})
    };
    if method == "generateContent" {
        return json_response(StatusCode::OK, &chunk(parts, Some("STOP"), 7));
    }
    let mut chunks: Vec<Value> = Vec::new();
    if model == "mock-secret" && parts[0].get("text").is_some() {
        for (i, piece) in super::SECRET_CHUNKS.iter().enumerate() {
            let output = i64::try_from(i).unwrap_or(0) + 1;
            chunks.push(chunk(json!([{"text": piece}]), None, output));
        }
        chunks.push(chunk(json!([{"text": ""}]), Some("STOP"), 7));
    } else if parts[0].get("text").is_some() {
        for i in 0..shared.config.stream_chunks.min(5) {
            chunks.push(chunk(
                json!([{"text": format!("tok{i} ")}]),
                None,
                i64::try_from(i).unwrap_or(0) + 1,
            ));
        }
        if model == "mock-stream-error" {
            chunks.push(json!({"error": {"code": 503, "message": "mock overloaded mid-stream", "status": "UNAVAILABLE"}}));
        } else {
            chunks.push(chunk(json!([{"text": ""}]), Some("STOP"), 7));
        }
    } else {
        chunks.push(chunk(parts, Some("STOP"), 7));
    }
    let sse = query
        .as_deref()
        .is_some_and(|q| q.split('&').any(|p| p == "alt=sse"));
    if sse {
        let events = chunks
            .into_iter()
            .map(|c| format!("data: {c}\r\n\r\n"))
            .collect();
        return sse_response(events, Duration::ZERO, false);
    }
    let array = Value::Array(chunks).to_string();
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        array,
    )
        .into_response()
}

/// `POST /openai/deployments/{deployment}/chat/completions?api-version=...` (Azure OpenAI).
pub async fn azure_chat(
    State(shared): State<Arc<Shared>>,
    Path(deployment): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!(
        "/openai/deployments/{deployment}/chat/completions?{}",
        query.unwrap_or_default()
    );
    remember(&shared, &path, &headers, &body);
    json_response(
        StatusCode::OK,
        &json!({"id": "chatcmpl-azure", "object": "chat.completion", "created": 1_700_000_000, "model": deployment,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "azure answer"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}),
    )
}

/// `POST /v1/completions` (OpenAI legacy, and vLLM's).
pub async fn completions(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = remember(&shared, "/v1/completions", &headers, &body);
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let usage = json!({"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7});
    if !request
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        return json_response(
            StatusCode::OK,
            &json!({"id": "cmpl-mock", "object": "text_completion", "created": 1_700_000_000, "model": model,
                    "choices": [{"text": "mock completion", "index": 0, "logprobs": null, "finish_reason": "stop"}],
                    "usage": usage}),
        );
    }
    let chunk = |text: &str, finish: Value| {
        let c = json!({"id": "cmpl-mock", "object": "text_completion", "created": 1_700_000_000, "model": model,
                       "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}]});
        format!("data: {c}\n\n")
    };
    let mut events = vec![
        chunk("mock ", Value::Null),
        chunk("completion", json!("stop")),
    ];
    if request
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        let c = json!({"id": "cmpl-mock", "object": "text_completion", "created": 1_700_000_000,
                       "model": model, "choices": [], "usage": usage});
        events.push(format!("data: {c}\n\n"));
    }
    events.push("data: [DONE]\n\n".to_string());
    sse_response(events, Duration::ZERO, false)
}

/// Any other POST: a vLLM server's root routes (`/tokenize`, `/pooling`, `/score`, ...). Also
/// answers its development routes (`/sleep`, ...), so a test can prove none were forwarded.
pub async fn vllm(
    State(shared): State<Arc<Shared>>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/{path}");
    let request = remember(&shared, &path, &headers, &body);
    let answer = match path.as_str() {
        "/tokenize" => json!({"count": 3, "max_model_len": 4096, "tokens": [101, 102, 103]}),
        "/detokenize" => json!({"prompt": "abc"}),
        "/score" | "/v1/score" | "/rerank" | "/v1/rerank" | "/v2/rerank" | "/pooling"
        | "/classify" => json!({"id": "vllm-mock", "object": "list", "model": request.get("model"),
                  "data": [{"index": 0, "score": 0.5}],
                  "usage": {"prompt_tokens": 5, "total_tokens": 5}}),
        _ => json!({"vllm_mock": path}),
    };
    json_response(StatusCode::OK, &answer)
}
