//! The unified endpoint's normalised answer (`POST /v1/llm/chat`, reference spec 2.3), built
//! from a hub (OpenAI chat.completion) answer whatever the upstream family.

use serde_json::{Map, Value, json};

use super::content::{arguments_to_object, content_text, str_of};
use super::usage::from_openai;

/// A hub answer -> `{id, provider, model, content, stop_reason, input_tokens, output_tokens}`
/// plus `tool_calls` (arguments as objects) and `reasoning` when present. `stop_reason` is the
/// normalised (OpenAI) finish reason; `input_tokens` counts all input, cached included.
pub fn unified_answer(hub: &Value, provider: &str) -> Value {
    let choice = hub
        .get("choices")
        .and_then(|c| c.get(0))
        .unwrap_or(&Value::Null);
    let message = choice.get("message").unwrap_or(&Value::Null);
    let usage = hub.get("usage").map(from_openai).unwrap_or_default();
    let mut out = Map::new();
    out.insert("id".into(), hub.get("id").cloned().unwrap_or(Value::Null));
    out.insert("provider".into(), json!(provider));
    out.insert(
        "model".into(),
        hub.get("model").cloned().unwrap_or(Value::Null),
    );
    out.insert(
        "content".into(),
        json!(content_text(message.get("content"))),
    );
    out.insert(
        "stop_reason".into(),
        json!(str_of(choice, "finish_reason").unwrap_or("stop")),
    );
    out.insert("input_tokens".into(), json!(usage.input));
    out.insert("output_tokens".into(), json!(usage.output));
    let calls: Vec<Value> = message
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|call| {
            let function = call.get("function").unwrap_or(&Value::Null);
            json!({
                "id": str_of(call, "id").unwrap_or(""),
                "name": str_of(function, "name").unwrap_or(""),
                "arguments": arguments_to_object(str_of(function, "arguments").unwrap_or("")),
            })
        })
        .collect();
    if !calls.is_empty() {
        out.insert("tool_calls".into(), Value::Array(calls));
    }
    if let Some(reasoning) = str_of(message, "reasoning_content").filter(|r| !r.is_empty()) {
        out.insert("reasoning".into(), json!(reasoning));
    }
    Value::Object(out)
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn a_hub_answer_becomes_the_normalised_unified_shape() {
        let hub = json!({"id": "chatcmpl-1", "model": "claude", "choices": [{"index": 0,
            "message": {"role": "assistant", "content": "Hi", "tool_calls": [{"id": "t1",
                "type": "function", "function": {"name": "f", "arguments": ""}}]},
            "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 24, "completion_tokens": 48, "total_tokens": 72}});
        assert_eq!(
            unified_answer(&hub, "anthropic"),
            json!({"id": "chatcmpl-1", "provider": "anthropic", "model": "claude", "content": "Hi",
                "stop_reason": "tool_calls", "input_tokens": 24, "output_tokens": 48,
                "tool_calls": [{"id": "t1", "name": "f", "arguments": {}}]})
        );
    }
}
