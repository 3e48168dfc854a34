//! Gemini generateContent answers <-> hub (OpenAI chat.completion) answers, and finish reasons.

use serde_json::{Value, json};

use super::{call_id, split_call_id};
use crate::translate::anthropic::completion_id;
use crate::translate::content::{arguments_to_object, content_text, object_to_arguments, str_of};
use crate::translate::usage::{from_gemini, from_openai, to_gemini, to_openai};
use crate::translate::{ResponseContext, TranslateError};

/// Gemini `finishReason` -> OpenAI `finish_reason`; `STOP` with calls is `tool_calls`, unknown
/// reasons stay visible in lower case (e.g. `malformed_function_call`).
pub(crate) fn finish_reason(reason: &str, has_calls: bool) -> String {
    match reason {
        "STOP" if has_calls => "tool_calls".to_string(),
        "STOP" | "FINISH_REASON_UNSPECIFIED" => "stop".to_string(),
        "MAX_TOKENS" => "length".to_string(),
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            "content_filter".to_string()
        }
        other => other.to_ascii_lowercase(),
    }
}

/// OpenAI `finish_reason` -> Gemini `finishReason`.
pub(crate) fn gemini_reason(finish: &str) -> String {
    match finish {
        "stop" | "tool_calls" | "function_call" => "STOP".to_string(),
        "length" => "MAX_TOKENS".to_string(),
        "content_filter" | "refusal" => "SAFETY".to_string(),
        other => other.to_ascii_uppercase(),
    }
}

/// Gemini answer -> hub answer (one choice per candidate).
pub(crate) fn to_hub(body: &Value, ctx: &ResponseContext) -> Result<Value, TranslateError> {
    let candidates = body.get("candidates").and_then(Value::as_array);
    let mut choices = Vec::new();
    let mut counter = 0usize;
    for (index, candidate) in candidates.into_iter().flatten().enumerate() {
        let mut text = String::new();
        let mut reasoning = String::new();
        let mut calls = Vec::new();
        let parts = candidate
            .get("content")
            .and_then(|c| c.get("parts"))
            .and_then(Value::as_array);
        for part in parts.into_iter().flatten() {
            if let Some(call) = part.get("functionCall") {
                let id = str_of(call, "id").map(str::to_string).unwrap_or_else(|| {
                    counter += 1;
                    call_id(ctx, counter, None)
                });
                let id = match str_of(part, "thoughtSignature") {
                    Some(signature) => format!("{id}{}{signature}", super::THOUGHT_SEPARATOR),
                    None => id,
                };
                calls.push(json!({"id": id, "type": "function", "function": {
                    "name": ctx.names.to_client(str_of(call, "name").unwrap_or("")),
                    "arguments": object_to_arguments(call.get("args")),
                }}));
            } else if part.get("thought") == Some(&json!(true)) {
                reasoning.push_str(str_of(part, "text").unwrap_or(""));
            } else if let Some(t) = str_of(part, "text") {
                text.push_str(t);
            }
        }
        let reason = str_of(candidate, "finishReason").unwrap_or("STOP");
        let mut message = json!({
            "role": "assistant",
            "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) },
        });
        let has_calls = !calls.is_empty();
        if has_calls {
            message["tool_calls"] = Value::Array(calls);
        }
        if !reasoning.is_empty() {
            message["reasoning_content"] = json!(reasoning);
        }
        choices.push(json!({
            "index": candidate.get("index").and_then(Value::as_u64).unwrap_or(index as u64),
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason(reason, has_calls),
        }));
    }
    if choices.is_empty() {
        // A blocked prompt has no candidates: say so, never an empty `stop`.
        let blocked = body
            .get("promptFeedback")
            .and_then(|f| str_of(f, "blockReason"));
        choices.push(json!({
            "index": 0,
            "message": {"role": "assistant", "content": ""},
            "logprobs": null,
            "finish_reason": if blocked.is_some() { "content_filter" } else { "stop" },
        }));
    }
    let usage = body
        .get("usageMetadata")
        .map(from_gemini)
        .unwrap_or_default();
    Ok(json!({
        "id": completion_id(ctx),
        "object": "chat.completion",
        "created": ctx.created,
        "model": ctx.client_model,
        "choices": choices,
        "usage": to_openai(&usage),
    }))
}

/// Hub answer -> Gemini answer.
pub(crate) fn from_hub(hub: &Value, ctx: &ResponseContext) -> Result<Value, TranslateError> {
    let choices = hub
        .get("choices")
        .and_then(Value::as_array)
        .ok_or_else(|| TranslateError::new("the upstream answer has no choices"))?;
    let mut candidates = Vec::new();
    for (index, choice) in choices.iter().enumerate() {
        let message = choice.get("message").unwrap_or(&Value::Null);
        let mut parts = Vec::new();
        if let Some(reasoning) = str_of(message, "reasoning_content").filter(|r| !r.is_empty()) {
            parts.push(json!({"text": reasoning, "thought": true}));
        }
        let text = content_text(message.get("content"));
        if !text.is_empty() {
            parts.push(json!({"text": text}));
        }
        for call in message
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            parts.push(function_call_part(call));
        }
        if parts.is_empty() {
            parts.push(json!({"text": ""}));
        }
        candidates.push(json!({
            "content": {"role": "model", "parts": parts},
            "finishReason": gemini_reason(str_of(choice, "finish_reason").unwrap_or("stop")),
            "index": choice.get("index").and_then(Value::as_u64).unwrap_or(index as u64),
        }));
    }
    let usage = hub.get("usage").map(from_openai).unwrap_or_default();
    Ok(json!({
        "candidates": candidates,
        "usageMetadata": to_gemini(&usage),
        "modelVersion": ctx.client_model,
        "responseId": ctx.request_id,
    }))
}

/// An OpenAI tool call -> a Gemini functionCall part (a signature in the id goes back to its
/// own field).
pub(crate) fn function_call_part(call: &Value) -> Value {
    let function = call.get("function").unwrap_or(&Value::Null);
    let (id, signature) = split_call_id(str_of(call, "id").unwrap_or(""));
    let mut part = json!({"functionCall": {
        "id": id,
        "name": str_of(function, "name").unwrap_or(""),
        "args": arguments_to_object(str_of(function, "arguments").unwrap_or("")),
    }});
    if let Some(signature) = signature {
        part["thoughtSignature"] = json!(signature);
    }
    part
}
