//! The mock's Ollama native chat API (`POST /api/chat`): JSON answers and NDJSON streams with
//! Ollama's `prompt_eval_count` / `eval_count`, tool calls when the request offers tools.
//!
//! | model             | behaviour                                                         |
//! |-------------------|-------------------------------------------------------------------|
//! | `mock-404`        | 404 `{"error": "model 'mock-404' not found"}`                      |
//! | `mock-500`        | 500 (see the crate's steered failures)                             |
//! | `mock-stream-error` | streams one line, then an `{"error": ...}` line                  |
//! | anything else     | `mock answer` (or [`OLLAMA_STREAM`] streamed), usage [`OLLAMA_USAGE`] |

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{Shared, admit, json_response};

/// (prompt_eval_count, eval_count) of every answer.
pub const OLLAMA_USAGE: (u64, u64) = (13, 8);

/// The streamed answer's pieces.
pub const OLLAMA_STREAM: &[&str] = &["Hello", " from", " Ollama"];

const CREATED_AT: &str = "2026-11-29T07:40:13.5Z";

fn line(value: &Value) -> String {
    format!("{value}\n")
}

pub(crate) async fn chat(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (request, model) = match admit(&shared, "/api/chat", &headers, &body).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    if model == "mock-404" {
        return json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": format!("model '{model}' not found")}),
        );
    }
    let stream = request
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let tools = request
        .get("tools")
        .and_then(Value::as_array)
        .is_some_and(|t| !t.is_empty());
    let (prompt, output) = OLLAMA_USAGE;
    let done = |content: &str, tool_calls: Option<Value>| {
        let mut message = json!({"role": "assistant", "content": content});
        if let Some(calls) = tool_calls {
            message["tool_calls"] = calls;
        }
        json!({"model": model, "created_at": CREATED_AT, "message": message, "done": true,
               "done_reason": "stop", "total_duration": 1_000_000, "prompt_eval_count": prompt,
               "eval_count": output})
    };
    let calls = tools
        .then(|| json!([{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]));
    if !stream {
        return json_response(
            StatusCode::OK,
            &done(if tools { "" } else { "mock answer" }, calls),
        );
    }
    let mut lines: Vec<String> = OLLAMA_STREAM
        .iter()
        .map(|piece| {
            line(&json!({"model": model, "created_at": CREATED_AT,
                         "message": {"role": "assistant", "content": piece}, "done": false}))
        })
        .collect();
    if model == "mock-stream-error" {
        lines.truncate(1);
        lines.push(line(&json!({"error": "mock: the runner crashed"})));
    } else {
        if let Some(calls) = calls {
            lines.push(line(&json!({"model": model, "created_at": CREATED_AT,
                "message": {"role": "assistant", "content": "", "tool_calls": calls}, "done": false})));
        }
        lines.push(line(&done("", None)));
    }
    let stream = futures_util::stream::iter(
        lines
            .into_iter()
            .map(|l| Ok::<_, Infallible>(Bytes::from(l))),
    );
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
