//! Upstream error bodies -> the client family's error envelope, the error type following the status.

use serde_json::{Value, json};

use super::Dialect;
use super::content::str_of;

/// The longest upstream text kept as a message when the body is not JSON.
const MAX_MESSAGE: usize = 1000;

/// The status to answer the client with for an upstream `status` (Anthropic's 529 "overloaded"
/// is 503 for the other families, whose SDKs know no 529).
pub fn client_status(from: Dialect, to: Dialect, status: u16) -> u16 {
    if status == 529 && from == Dialect::Anthropic && to != Dialect::Anthropic {
        503
    } else {
        status
    }
}

/// An upstream error body (status + bytes, `from` family's envelope, possibly non-JSON) -> the
/// client family's envelope, keeping the message and a type/status that follow `status`.
pub fn error(from: Dialect, to: Dialect, status: u16, body: &[u8]) -> Value {
    let parsed = serde_json::from_slice::<Value>(body).ok();
    if from == to
        && let Some(value) = parsed.as_ref().filter(|v| v.is_object() || v.is_array())
    {
        return value.clone();
    }
    let message = parsed
        .as_ref()
        .and_then(message_of)
        .unwrap_or_else(|| text_message(status, body));
    let code = parsed.as_ref().and_then(code_of);
    envelope(to, status, &message, code.as_deref())
}

/// A client-family error envelope for `status` and `message`.
pub(crate) fn envelope(to: Dialect, status: u16, message: &str, code: Option<&str>) -> Value {
    match to {
        Dialect::OpenAiChat => json!({"error": {
            "message": message, "type": openai_type(status), "param": null, "code": code,
        }}),
        Dialect::Anthropic => json!({
            "type": "error",
            "error": {"type": anthropic_type(status), "message": message},
        }),
        Dialect::Gemini => {
            let status = if status == 529 { 503 } else { status };
            json!({"error": {"code": status, "message": message, "status": google_status(status)}})
        }
    }
}

/// The error object inside any family's envelope (Gemini's is sometimes wrapped in an array).
fn error_object(value: &Value) -> Option<&Value> {
    let value = match value {
        Value::Array(items) => items.first()?,
        other => other,
    };
    value.get("error")
}

fn message_of(value: &Value) -> Option<String> {
    let error = error_object(value)?;
    match error {
        Value::String(s) => Some(s.clone()),
        other => str_of(other, "message").map(str::to_string),
    }
}

/// The upstream's own machine code or type, kept for OpenAI clients.
fn code_of(value: &Value) -> Option<String> {
    let error = error_object(value)?;
    ["code", "type", "status"]
        .iter()
        .find_map(|key| match error.get(*key) {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        })
}

fn text_message(status: u16, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return format!("upstream answered with status {status}");
    }
    let mut end = text.len().min(MAX_MESSAGE);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// OpenAI error `type` for a status.
pub(crate) fn openai_type(status: u16) -> &'static str {
    match status {
        400 | 413 | 422 => "invalid_request_error",
        401 => "authentication_error",
        402 => "insufficient_quota",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        _ => "api_error",
    }
}

/// Anthropic error `type` for a status.
pub(crate) fn anthropic_type(status: u16) -> &'static str {
    match status {
        400 | 422 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        _ => "api_error",
    }
}

/// Google RPC status name for an HTTP status.
pub(crate) fn google_status(status: u16) -> &'static str {
    match status {
        400 | 413 | 422 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        402 | 429 => "RESOURCE_EXHAUSTED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    }
}
