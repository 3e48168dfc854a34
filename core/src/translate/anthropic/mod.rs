//! Anthropic Messages: the two hub converters for requests and answers.

mod request;
mod response;

use serde_json::{Value, json};

use crate::translate::TranslateError;
use crate::translate::content::{object_to_arguments, str_of};

pub(crate) use request::{from_hub as request_from_hub, to_hub as request_to_hub};
pub(crate) use response::{
    completion_id, finish_reason, from_hub as answer_from_hub, message_id, stop_reason,
    to_hub as answer_to_hub,
};

/// Anthropic content blocks of one assistant turn -> one hub (OpenAI chat) assistant message:
/// text joined, `tool_use` blocks as tool calls (named through `name`), thinking text as
/// `reasoning_content` and the thinking blocks themselves, signatures included, in
/// `thinking_blocks` so they can be replayed byte-identical. With `strict`, a block of any
/// other type is an error; otherwise it is left out.
fn hub_assistant(
    blocks: &[Value],
    name: impl Fn(&str) -> String,
    strict: bool,
) -> Result<Value, TranslateError> {
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut thinking = Vec::new();
    let mut calls = Vec::new();
    for block in blocks {
        match str_of(block, "type") {
            Some("text") => text.push_str(str_of(block, "text").unwrap_or("")),
            Some("thinking") => {
                reasoning.push_str(str_of(block, "thinking").unwrap_or(""));
                thinking.push(block.clone());
            }
            Some("redacted_thinking") => thinking.push(block.clone()),
            Some("tool_use") => calls.push(json!({
                "id": str_of(block, "id").unwrap_or(""),
                "type": "function",
                "function": {
                    "name": name(str_of(block, "name").unwrap_or("")),
                    "arguments": object_to_arguments(block.get("input")),
                },
            })),
            other if strict => {
                return Err(TranslateError::new(format!(
                    "assistant block '{}' cannot be translated from Anthropic Messages",
                    other.unwrap_or("?")
                )));
            }
            _ => {}
        }
    }
    let mut message = json!({
        "role": "assistant",
        "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) },
    });
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    if !reasoning.is_empty() {
        message["reasoning_content"] = json!(reasoning);
    }
    if !thinking.is_empty() {
        message["thinking_blocks"] = Value::Array(thinking);
    }
    Ok(message)
}
