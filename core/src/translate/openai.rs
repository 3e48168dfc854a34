//! OpenAI Chat Completions, the hub: hub -> upstream request, upstream answer -> hub, and the
//! same-family request adjustments (model swap, output cap, usage in streams).

use serde_json::{Value, json};

use super::content::hub_max_tokens;
use super::{Dialect, RequestOptions, ResponseContext, ToolNames, TranslateError};

/// Hub-only fields removed before a request goes to an OpenAI upstream.
const HUB_MESSAGE_EXTENSIONS: [&str; 3] = ["thinking_blocks", "reasoning_content", "is_error"];
/// `top_k` is not OpenAI's; `reasoning_effort` (mapped from a thinking budget) is refused by
/// OpenAI's non-reasoning models, so thinking settings do not cross into OpenAI requests.
const HUB_REQUEST_EXTENSIONS: [&str; 2] = ["top_k", "reasoning_effort"];

/// A same-family request: the client's body with the upstream model and output cap.
pub(crate) fn same_family_request(dialect: Dialect, body: &Value, opts: &RequestOptions) -> Value {
    let mut body = body.clone();
    match dialect {
        Dialect::OpenAiChat => {
            body["model"] = json!(opts.upstream_model);
            if let Some(cap) = opts.max_tokens {
                let key = if body.get("max_tokens").is_some()
                    && body.get("max_completion_tokens").is_none()
                {
                    "max_tokens"
                } else {
                    "max_completion_tokens"
                };
                body[key] = json!(cap);
            }
            if opts.stream {
                body["stream_options"]["include_usage"] = json!(true);
            }
        }
        Dialect::Anthropic => {
            body["model"] = json!(opts.upstream_model);
            let client = body.get("max_tokens").and_then(Value::as_u64);
            body["max_tokens"] = json!(
                opts.max_tokens
                    .or(client)
                    .unwrap_or(opts.default_max_tokens)
            );
        }
        Dialect::Gemini => {
            if let Some(cap) = opts.max_tokens {
                body["generationConfig"]["maxOutputTokens"] = json!(cap);
            }
        }
    }
    body
}

/// Hub request -> the body for an OpenAI upstream (hub extensions removed, names shortened).
pub(crate) fn request_from_hub(
    mut hub: Value,
    opts: &RequestOptions,
    names: &mut ToolNames,
) -> Result<Value, TranslateError> {
    let cap = opts.max_tokens.or_else(|| hub_max_tokens(&hub));
    let Some(body) = hub.as_object_mut() else {
        return Err(TranslateError::new(
            "the request body must be a JSON object",
        ));
    };
    for key in HUB_REQUEST_EXTENSIONS.iter().chain(&[
        "max_tokens",
        "max_completion_tokens",
        "stream",
        "stream_options",
    ]) {
        body.remove(*key);
    }
    body.insert("model".into(), json!(opts.upstream_model));
    if let Some(cap) = cap {
        body.insert("max_completion_tokens".into(), json!(cap));
    }
    if opts.stream {
        body.insert("stream".into(), json!(true));
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    if let Some(messages) = body.get_mut("messages").and_then(Value::as_array_mut) {
        for message in messages {
            let Some(message) = message.as_object_mut() else {
                continue;
            };
            for key in HUB_MESSAGE_EXTENSIONS {
                message.remove(key);
            }
            message.remove("cache_control");
            // OpenAI refuses unknown keys in content parts (Anthropic's cache_control).
            if let Some(parts) = message.get_mut("content").and_then(Value::as_array_mut) {
                for part in parts.iter_mut().filter_map(Value::as_object_mut) {
                    part.remove("cache_control");
                }
            }
            if let Some(calls) = message.get_mut("tool_calls").and_then(Value::as_array_mut) {
                for call in calls {
                    rename(call, names);
                }
            }
        }
    }
    if let Some(tools) = body.get_mut("tools").and_then(Value::as_array_mut) {
        for tool in tools {
            rename(tool, names);
        }
    }
    if let Some(choice) = body.get_mut("tool_choice") {
        rename(choice, names);
    }
    Ok(hub)
}

/// Shortens `holder.function.name` for an OpenAI upstream if it must.
fn rename(holder: &mut Value, names: &mut ToolNames) {
    if let Some(name) = holder.get_mut("function").and_then(|f| f.get_mut("name"))
        && let Some(current) = name.as_str()
    {
        *name = json!(names.to_upstream(current, Dialect::OpenAiChat));
    }
}

/// An OpenAI upstream answer -> hub: client names, the client's model, reasoning normalised.
pub(crate) fn answer_to_hub(body: &Value, ctx: &ResponseContext) -> Result<Value, TranslateError> {
    let mut hub = body.clone();
    if hub.get("choices").and_then(Value::as_array).is_none() {
        return Err(TranslateError::new("the upstream answer has no choices"));
    }
    hub["model"] = json!(ctx.client_model);
    if let Some(choices) = hub.get_mut("choices").and_then(Value::as_array_mut) {
        for choice in choices {
            let Some(message) = choice.get_mut("message") else {
                continue;
            };
            if let Some(reasoning) = message.get("reasoning").cloned()
                && message.get("reasoning_content").is_none()
                && let Some(m) = message.as_object_mut()
            {
                m.remove("reasoning");
                m.insert("reasoning_content".into(), reasoning);
            }
            if let Some(calls) = message.get_mut("tool_calls").and_then(Value::as_array_mut) {
                for call in calls {
                    if let Some(name) = call.get_mut("function").and_then(|f| f.get_mut("name"))
                        && let Some(upstream) = name.as_str()
                    {
                        *name = json!(ctx.names.to_client(upstream));
                    }
                }
            }
        }
    }
    Ok(hub)
}
