//! Anthropic Messages answers <-> hub (OpenAI chat.completion) answers, and stop reasons.

use serde_json::{Value, json};

use crate::translate::content::{arguments_to_object, content_text, str_of};
use crate::translate::usage::{from_anthropic, from_openai, to_anthropic, to_openai};
use crate::translate::{ResponseContext, TranslateError};

/// Anthropic `stop_reason` -> OpenAI `finish_reason` (unknown reasons stay visible as is).
pub(crate) fn finish_reason(stop_reason: &str) -> String {
    match stop_reason {
        "end_turn" | "stop_sequence" => "stop",
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        other => other,
    }
    .to_string()
}

/// OpenAI `finish_reason` -> Anthropic `stop_reason`; `stop` with a matched sequence is
/// `stop_sequence`.
pub(crate) fn stop_reason(finish_reason: &str, stop_sequence: Option<&str>) -> String {
    match finish_reason {
        "stop" if stop_sequence.is_some() => "stop_sequence",
        "stop" => "end_turn",
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        other => other,
    }
    .to_string()
}

/// The OpenAI chat.completion id for a request.
pub(crate) fn completion_id(ctx: &ResponseContext) -> String {
    format!("chatcmpl-{}", ctx.request_id)
}

/// The Anthropic message id for a request.
pub(crate) fn message_id(ctx: &ResponseContext) -> String {
    format!("msg_{}", ctx.request_id)
}

/// Anthropic answer -> hub answer.
pub(crate) fn to_hub(body: &Value, ctx: &ResponseContext) -> Result<Value, TranslateError> {
    let blocks = body
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| TranslateError::new("the Anthropic answer has no content array"))?;
    // Blocks the hub has no form for (server tool results, ...) are left out of the answer.
    let message = super::hub_assistant(blocks, |name| ctx.names.to_client(name), false)?;
    let stop = str_of(body, "stop_reason").unwrap_or("end_turn");
    let mut choice = json!({
        "index": 0,
        "message": message,
        "logprobs": null,
        "finish_reason": finish_reason(stop),
    });
    if let Some(sequence) = str_of(body, "stop_sequence") {
        choice["stop_reason"] = json!(sequence);
    }
    let usage = body.get("usage").map(from_anthropic).unwrap_or_default();
    Ok(json!({
        "id": completion_id(ctx),
        "object": "chat.completion",
        "created": ctx.created,
        "model": ctx.client_model,
        "choices": [choice],
        "usage": to_openai(&usage),
    }))
}

/// Hub answer -> Anthropic answer.
pub(crate) fn from_hub(hub: &Value, ctx: &ResponseContext) -> Result<Value, TranslateError> {
    let choice = hub
        .get("choices")
        .and_then(|c| c.get(0))
        .ok_or_else(|| TranslateError::new("the upstream answer has no choices"))?;
    let message = choice.get("message").unwrap_or(&Value::Null);
    let mut content: Vec<Value> = Vec::new();
    match message.get("thinking_blocks").and_then(Value::as_array) {
        Some(blocks) => content.extend(blocks.iter().cloned()),
        None => {
            if let Some(reasoning) = str_of(message, "reasoning_content").filter(|r| !r.is_empty())
            {
                content.push(json!({"type": "thinking", "thinking": reasoning, "signature": ""}));
            }
        }
    }
    let text = content_text(message.get("content"));
    if !text.is_empty() {
        content.push(json!({"type": "text", "text": text}));
    }
    if let Some(refusal) = str_of(message, "refusal").filter(|r| !r.is_empty()) {
        content.push(json!({"type": "text", "text": refusal}));
    }
    for call in message
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let function = call.get("function").unwrap_or(&Value::Null);
        content.push(json!({
            "type": "tool_use",
            "id": str_of(call, "id").unwrap_or(""),
            "name": str_of(function, "name").unwrap_or(""),
            "input": arguments_to_object(str_of(function, "arguments").unwrap_or("")),
        }));
    }
    let sequence = str_of(choice, "stop_reason");
    let finish = str_of(choice, "finish_reason").unwrap_or("stop");
    let usage = hub.get("usage").map(from_openai).unwrap_or_default();
    Ok(json!({
        "id": message_id(ctx),
        "type": "message",
        "role": "assistant",
        "model": ctx.client_model,
        "content": content,
        "stop_reason": stop_reason(finish, sequence),
        "stop_sequence": sequence,
        "usage": to_anthropic(&usage),
    }))
}
