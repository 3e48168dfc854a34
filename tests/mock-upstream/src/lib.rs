//! A fast mock LLM provider for tollgate's end-to-end tests and benchmark.
//!
//! It serves OpenAI chat completions (JSON and SSE with usage), embeddings, responses (JSON and
//! SSE) and image generations, Anthropic messages, Gemini `generateContent` and Ollama's
//! native `/api/chat` ([`ollama`]), with optional
//! artificial latency. Behaviour can be steered per request through the model id the gateway
//! sends upstream:
//!
//! | upstream model id     | behaviour                                                     |
//! |-----------------------|---------------------------------------------------------------|
//! | `mock-500`            | 500 with an OpenAI-style error body                           |
//! | `mock-400`            | 400 with an OpenAI-style error body (`code: mock_bad_param`)  |
//! | `mock-slow`           | answers after 2 s                                             |
//! | `mock-hang`           | sends no headers for 60 s                                     |
//! | `mock-drip`           | a body dripped slowly for about 20 s: JSON byte by byte, a stream one event per 200 ms |
//! | `mock-stall-stream`   | sends the first chunk of a stream, then goes silent for 30 s  |
//! | `mock-slow-stream`    | streams with 50 ms between chunks                             |
//! | `mock-secret`         | answers [`SECRET_CHUNKS`] (a cloud key and an email split across chunks) |
//! | `mock-429`            | 429 with `Retry-After: 7` and an OpenAI-style error body      |
//! | `mock-429-1s`         | 429 with `Retry-After: 1`                                     |
//! | `mock-401`            | 401 `invalid_api_key` (the gateway's provider credential is refused) |
//! | `mock-403`            | 403 (the provider credential lacks the permission)            |
//! | `mock-reset-mid-body` | 200, then the connection is cut after the first part of the body (JSON or SSE) |
//! | `mock-absurd-usage`   | chat: a normal answer whose usage claims 1.8e18 prompt tokens |
//! | `mock-malformed-json` | 200 `application/json` whose body is not JSON                 |
//! | `mock-truncated-sse`  | a chat stream that ends after three chunks: no finish, usage nor `[DONE]` |
//! | `mock-no-usage`       | images: one image per `n` and no `usage` (as DALL-E answers)  |
//! | `mock-tools`          | chat: a refusal and a tool call whose arguments hold [`TOOL_EMAIL`] (streamed: the arguments in [`TOOL_ARGUMENT_CHUNKS`]) |
//! | `mock-text-plain`     | chat: a `text/plain` answer holding [`TOOL_EMAIL`]            |
//! | anything else         | a normal answer                                               |
//!
//! A test can also fail the mock on command, whatever the request's model says: one fault for
//! every request ([`MockHandle::set_fault`]) or a queue of faults for the next requests
//! ([`MockHandle::queue_faults`]), each named like the model ids above.
//!
//! When recording is on, every request (path, headers, JSON body) is kept for assertions.

mod families;
pub mod ollama;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures_util::StreamExt;
use serde_json::{Value, json};

/// Fixed usage the mock reports for chat completions.
pub const CHAT_USAGE: (i64, i64, i64, i64) = (11, 7, 2, 3);

/// The answer of model `mock-secret`: as stream chunks, with an AWS access key id and an email
/// address each split across two chunks; as one message when not streamed.
pub const SECRET_CHUNKS: &[&str] = &[
    "Here is the key AKIAIOSF",
    "ODNN7EXAMPLE and the contact jane.d",
    "oe@example.com, nothing else.",
];

/// The address model `mock-tools` puts in its tool-call arguments and refusal, and
/// `mock-text-plain` in its answer.
pub const TOOL_EMAIL: &str = "jane.doe@example.com";

/// The tool-call argument deltas of a streamed `mock-tools` answer: the address is split.
pub const TOOL_ARGUMENT_CHUNKS: &[&str] = &["{\"to\": \"jane.d", "oe@example.com\", \"n\": 1}"];

/// One request the mock received.
#[derive(Debug, Clone)]
pub struct Received {
    /// Request path.
    pub path: String,
    /// Request headers.
    pub headers: HeaderMap,
    /// The JSON body (Null if not JSON).
    pub body: Value,
}

/// Mock configuration.
#[derive(Debug, Clone)]
pub struct MockConfig {
    /// Added before every answer.
    pub latency: Duration,
    /// Chunks in a chat stream (content chunks, before the final and usage chunks).
    pub stream_chunks: usize,
    /// Keep every request for assertions (off for benchmarks).
    pub record: bool,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            stream_chunks: 20,
            record: true,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: MockConfig,
    received: Mutex<Vec<Received>>,
    /// Faults on command: (one for every request, a queue for the next ones).
    faults: Mutex<(Option<String>, std::collections::VecDeque<String>)>,
}

impl Shared {
    /// The fault commanded for the next request, if any.
    fn commanded(&self) -> Option<String> {
        let mut faults = self.faults.lock().ok()?;
        faults.1.pop_front().or_else(|| faults.0.clone())
    }
}

/// A running mock.
#[derive(Debug, Clone)]
pub struct MockHandle {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl MockHandle {
    /// `http://addr/v1`, the base URL to configure a provider with.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared
            .received
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Fails every request with `fault` (a model id of the table above), or stops (`None`).
    pub fn set_fault(&self, fault: Option<&str>) {
        if let Ok(mut faults) = self.shared.faults.lock() {
            faults.0 = fault.map(str::to_string);
        }
    }

    /// Fails the next requests with these faults, one each, in order.
    pub fn queue_faults(&self, faults: &[&str]) {
        if let Ok(mut queue) = self.shared.faults.lock() {
            queue.1.extend(faults.iter().map(|f| f.to_string()));
        }
    }

    /// Number of requests received so far.
    pub fn count(&self) -> usize {
        self.shared.received.lock().map(|r| r.len()).unwrap_or(0)
    }
}

/// Starts the mock on `addr` (use port 0 for a free one) in the current runtime.
pub async fn start(addr: SocketAddr, config: MockConfig) -> std::io::Result<MockHandle> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared {
        config,
        received: Mutex::new(Vec::new()),
        faults: Mutex::new(Default::default()),
    });
    let app = router(shared.clone());
    tokio::spawn(async move {
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let _ = axum::serve(listener, app).await;
    });
    Ok(MockHandle { addr, shared })
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/embeddings", post(embeddings))
        .route("/mcp", post(mcp_tool_call))
        .route("/v1/responses", post(responses))
        .route("/v1/images/generations", post(images))
        .route("/v1/completions", post(families::completions))
        .route("/v1/messages", post(families::anthropic_messages))
        .route("/api/chat", post(ollama::chat))
        .route(
            "/v1/messages/count_tokens",
            post(families::anthropic_count_tokens),
        )
        .route("/v1beta/models/{target}", post(families::gemini))
        .route("/v1/models/{target}", post(families::gemini))
        .route(
            "/openai/deployments/{deployment}/chat/completions",
            post(families::azure_chat),
        )
        .route("/{*vllm}", post(families::vllm))
        .with_state(shared)
}

pub(crate) fn remember(shared: &Shared, path: &str, headers: &HeaderMap, body: &Bytes) -> Value {
    let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    if shared.config.record
        && let Ok(mut received) = shared.received.lock()
    {
        received.push(Received {
            path: path.to_string(),
            headers: headers.clone(),
            body: value.clone(),
        });
    }
    value
}

pub(crate) fn json_response(status: StatusCode, value: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

pub(crate) fn sse_response(
    events: Vec<String>,
    gap: Duration,
    stall_after_first: bool,
) -> Response {
    let stream = futures_util::stream::iter(events.into_iter().enumerate()).then(
        move |(i, event)| async move {
            if i > 0 && !gap.is_zero() {
                tokio::time::sleep(gap).await;
            }
            if i == 1 && stall_after_first {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            Ok::<_, Infallible>(Bytes::from(event))
        },
    );
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Records a request and applies its model-steered behaviour: `Ok((body, model))` to answer
/// normally, `Err(response)` when the model id asks for a failure.
pub(crate) async fn admit(
    shared: &Shared,
    path: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(Value, String), Response> {
    let request = remember(shared, path, headers, body);
    let model = shared.commanded().unwrap_or_else(|| {
        request
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    });
    match steer(shared, &model).await {
        Some(response) => Err(response),
        None => Ok((request, model)),
    }
}

/// Applies model-steered failures; `None` means answer normally.
pub(crate) async fn steer(shared: &Shared, model: &str) -> Option<Response> {
    if !shared.config.latency.is_zero() {
        tokio::time::sleep(shared.config.latency).await;
    }
    match model {
        "mock-500" => Some(json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({"error": {"message": "mock internal error", "type": "server_error", "code": null}}),
        )),
        "mock-400" => Some(json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": {"message": "mock rejects this parameter", "type": "invalid_request_error", "param": "temperature", "code": "mock_bad_param"}}),
        )),
        "mock-slow" => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            None
        }
        "mock-hang" => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            None
        }
        "mock-429-1s" => {
            let mut response = json_response(
                StatusCode::TOO_MANY_REQUESTS,
                &json!({"error": {"message": "mock rate limit", "type": "rate_limit_error", "code": "rate_limit_exceeded"}}),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            Some(response)
        }
        "mock-429" => {
            let mut response = json_response(
                StatusCode::TOO_MANY_REQUESTS,
                &json!({"error": {"message": "mock rate limit", "type": "rate_limit_error", "code": "rate_limit_exceeded"}}),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("7"));
            Some(response)
        }
        "mock-401" => Some(json_response(
            StatusCode::UNAUTHORIZED,
            &json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": "invalid_api_key"}}),
        )),
        "mock-403" => Some(json_response(
            StatusCode::FORBIDDEN,
            &json!({"error": {"message": "this key may not use the model", "type": "permission_error", "code": "model_not_permitted"}}),
        )),
        _ => None,
    }
}

fn chat_usage() -> Value {
    let (prompt, completion, cached, reasoning) = CHAT_USAGE;
    json!({
        "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": reasoning, "audio_tokens": 0,
            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
    })
}

async fn chat(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let (request, model) = match admit(&shared, "/v1/chat/completions", &headers, &body).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    let stream = request
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let secret = model == "mock-secret";
    match model.as_str() {
        "mock-reset-mid-body" => {
            let first = if stream {
                "data: {\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"partial \"}}]}\n\n"
            } else {
                "{\"id\": \"chatcmpl-mock\", \"object\": \"chat.completion\", \"choices\": ["
            };
            let parts: Vec<Result<Bytes, std::io::Error>> = vec![
                Ok(Bytes::from_static(first.as_bytes())),
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "mock cuts the body",
                )),
            ];
            let body = futures_util::stream::iter(parts).then(|part| async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                part
            });
            let content_type = if stream {
                "text/event-stream"
            } else {
                "application/json"
            };
            return Response::builder()
                .header(header::CONTENT_TYPE, content_type)
                .body(Body::from_stream(body))
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
        }
        "mock-text-plain" => {
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                format!("plain answer for {TOOL_EMAIL}"),
            )
                .into_response();
        }
        "mock-tools" if !stream => {
            let arguments = json!({"to": TOOL_EMAIL, "n": 1}).to_string();
            return json_response(
                StatusCode::OK,
                &json!({
                    "id": "chatcmpl-mock", "object": "chat.completion", "created": 1_700_000_000, "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": null,
                        "refusal": format!("I will not write to {TOOL_EMAIL}"),
                        "tool_calls": [{"id": "call_1", "type": "function",
                            "function": {"name": "send_mail", "arguments": arguments}}]},
                        "finish_reason": "tool_calls"}],
                    "usage": chat_usage(),
                }),
            );
        }
        "mock-drip" if !stream => {
            let text = json!({
                "id": "chatcmpl-mock", "object": "chat.completion", "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "drip"}, "finish_reason": "stop"}],
                "usage": chat_usage(),
            })
            .to_string();
            let bytes: Vec<u8> = text.into_bytes();
            let gap = Duration::from_millis((20_000 / bytes.len().max(1)).max(1) as u64);
            let body = futures_util::stream::iter(bytes).then(move |b| async move {
                tokio::time::sleep(gap).await;
                Ok::<_, Infallible>(Bytes::from(vec![b]))
            });
            return Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from_stream(body))
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
        }
        "mock-absurd-usage" if !stream => {
            return json_response(
                StatusCode::OK,
                &json!({
                    "id": "chatcmpl-mock", "object": "chat.completion", "created": 1_700_000_000, "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1_800_000_000_000_000_000_u64, "completion_tokens": 5,
                              "total_tokens": 1_800_000_000_000_000_005_u64},
                }),
            );
        }
        "mock-malformed-json" if !stream => {
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                "{\"id\": \"chatcmpl-mock\", \"choices\": [{\"message\": <html>",
            )
                .into_response();
        }
        _ => {}
    }
    if !stream {
        let content = if secret {
            SECRET_CHUNKS.concat()
        } else {
            "mock answer".to_string()
        };
        return json_response(
            StatusCode::OK,
            &json!({
                "id": "chatcmpl-mock", "object": "chat.completion", "created": 1_700_000_000, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                "usage": chat_usage(),
            }),
        );
    }
    let include_usage = request
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let chunk = |delta: Value, finish: Value| {
        let mut c = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000,
                           "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        if include_usage {
            c["usage"] = Value::Null;
        }
        format!("data: {c}\n\n")
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    if secret {
        for piece in SECRET_CHUNKS {
            events.push(chunk(json!({"content": piece}), Value::Null));
        }
    } else if model == "mock-tools" {
        events.push(chunk(
            json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                   "function": {"name": "send_mail", "arguments": ""}}]}),
            Value::Null,
        ));
        for piece in TOOL_ARGUMENT_CHUNKS {
            events.push(chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
                Value::Null,
            ));
        }
    } else {
        for i in 0..shared.config.stream_chunks {
            events.push(chunk(json!({"content": format!("tok{i} ")}), Value::Null));
        }
    }
    if model == "mock-truncated-sse" {
        events.truncate(3);
        return sse_response(events, Duration::from_millis(10), false);
    }
    events.push(chunk(json!({}), json!("stop")));
    if include_usage {
        let c = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000,
                       "model": model, "choices": [], "usage": chat_usage()});
        events.push(format!("data: {c}\n\n"));
    }
    events.push("data: [DONE]\n\n".to_string());
    let gap = match model.as_str() {
        "mock-slow-stream" => Duration::from_millis(50),
        "mock-drip" => {
            // About 20 s of events, one every 200 ms.
            let filler = chunk(json!({"content": "drip "}), Value::Null);
            for _ in 0..100usize.saturating_sub(events.len()) {
                events.insert(1, filler.clone());
            }
            Duration::from_millis(200)
        }
        _ => Duration::ZERO,
    };
    sse_response(events, gap, model == "mock-stall-stream")
}

/// A minimal MCP server (for the benchmark's MCP scenario): answers every JSON-RPC request with
/// the result of an `echo` tool call.
async fn mcp_tool_call(body: Bytes) -> Response {
    let id = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("id").cloned())
        .unwrap_or(Value::Null);
    json_response(
        StatusCode::OK,
        &json!({"jsonrpc": "2.0", "id": id,
                "result": {"content": [{"type": "text", "text": "Echo: bench"}], "isError": false}}),
    )
}

async fn embeddings(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (_, model) = match admit(&shared, "/v1/embeddings", &headers, &body).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    json_response(
        StatusCode::OK,
        &json!({"object": "list", "model": model,
                "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
                "usage": {"prompt_tokens": 5, "total_tokens": 5}}),
    )
}

async fn responses(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let (request, model) = match admit(&shared, "/v1/responses", &headers, &body).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    let usage = json!({"input_tokens": 13, "output_tokens": 4, "total_tokens": 17,
                       "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 1}});
    let done = json!({"id": "resp_mock", "object": "response", "status": "completed", "model": model,
                      "output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "mock answer"}]}],
                      "usage": usage});
    if !request
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        return json_response(StatusCode::OK, &done);
    }
    let events = vec![
        format!(
            "event: response.created\ndata: {}\n\n",
            json!({"type": "response.created", "response": {"id": "resp_mock", "status": "in_progress"}})
        ),
        format!(
            "event: response.output_text.delta\ndata: {}\n\n",
            json!({"type": "response.output_text.delta", "delta": "mock answer"})
        ),
        format!(
            "event: response.completed\ndata: {}\n\n",
            json!({"type": "response.completed", "response": done})
        ),
    ];
    sse_response(events, Duration::ZERO, false)
}

async fn images(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let (request, model) = match admit(&shared, "/v1/images/generations", &headers, &body).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    if model == "mock-no-usage" {
        // Like DALL-E: one image per `n`, and no usage at all.
        let n = request.get("n").and_then(Value::as_u64).unwrap_or(1);
        let data: Vec<Value> = (0..n).map(|_| json!({"b64_json": "aGVsbG8="})).collect();
        return json_response(
            StatusCode::OK,
            &json!({"created": 1_700_000_000, "data": data}),
        );
    }
    json_response(
        StatusCode::OK,
        &json!({"created": 1_700_000_000, "data": [{"b64_json": "aGVsbG8="}],
                "usage": {"input_tokens": 9, "output_tokens": 272, "total_tokens": 281}}),
    )
}
