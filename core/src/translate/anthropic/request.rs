//! Anthropic Messages requests <-> hub (OpenAI chat) requests.

use serde_json::{Map, Value, json};

use crate::translate::content::{
    arguments_to_object, content_parts, copy, data_url, hub_max_tokens, parse_data_url, push_turn,
    stop_list, str_of,
};
use crate::translate::{Dialect, RequestOptions, ToolNames, TranslateError};

/// Hub request -> Anthropic Messages request.
pub(crate) fn from_hub(
    hub: &Value,
    opts: &RequestOptions,
    names: &mut ToolNames,
) -> Result<Value, TranslateError> {
    if hub.get("n").and_then(Value::as_u64).unwrap_or(1) > 1 {
        return Err(TranslateError::new(
            "Anthropic models cannot return several choices (n > 1)",
        ));
    }
    let messages = hub
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| TranslateError::new("'messages' must be an array"))?;
    let mut system: Vec<Value> = Vec::new();
    let mut turns: Vec<Value> = Vec::new();
    for message in messages {
        let role = str_of(message, "role").unwrap_or("user");
        match role {
            "system" | "developer" => system.extend(user_blocks(message)?),
            "user" => push_turn(&mut turns, "user", "content", user_blocks(message)?),
            "assistant" => push_turn(
                &mut turns,
                "assistant",
                "content",
                assistant_blocks(message, names)?,
            ),
            "tool" | "function" => {
                push_turn(&mut turns, "user", "content", vec![tool_result(message)?]);
            }
            other => {
                return Err(TranslateError::new(format!(
                    "unknown message role '{other}'"
                )));
            }
        }
    }

    // With thinking on, Anthropic wants the last assistant tool_use turn to open with its
    // thinking block; a client that did not echo `thinking_blocks` cannot have thinking on.
    let unsigned_tool_turn = turns
        .iter()
        .rev()
        .find(|t| t["role"] == "assistant")
        .and_then(|t| t["content"].as_array())
        .is_some_and(|blocks| {
            blocks.iter().any(|b| b["type"] == "tool_use")
                && !blocks
                    .first()
                    .is_some_and(|b| b["type"] == "thinking" || b["type"] == "redacted_thinking")
        });
    let max_tokens = opts
        .max_tokens
        .or_else(|| hub_max_tokens(hub))
        .unwrap_or(opts.default_max_tokens);
    let mut out = Map::new();
    out.insert("model".into(), json!(opts.upstream_model));
    out.insert("max_tokens".into(), json!(max_tokens));
    if !system.is_empty() {
        out.insert("system".into(), system_value(system));
    }
    out.insert("messages".into(), Value::Array(turns));
    if let Some(tools) = hub.get("tools").and_then(Value::as_array) {
        let tools = tools
            .iter()
            .map(|t| tool(t, names))
            .collect::<Result<Vec<_>, _>>()?;
        if !tools.is_empty() {
            out.insert("tools".into(), Value::Array(tools));
        }
    }
    if let Some(choice) = tool_choice(hub, names) {
        out.insert("tool_choice".into(), choice);
    }
    if let Some(stop) = stop_list(hub.get("stop")) {
        out.insert("stop_sequences".into(), Value::Array(stop));
    }
    // OpenAI and Gemini sample with temperature 0..2, Anthropic with 0..1.
    if let Some(t) = hub.get("temperature").and_then(Value::as_f64) {
        out.insert("temperature".into(), json!(t.clamp(0.0, 1.0)));
    }
    copy(hub, "top_p", &mut out, "top_p");
    copy(hub, "top_k", &mut out, "top_k");
    if let Some(user) = str_of(hub, "user") {
        out.insert("metadata".into(), json!({"user_id": user}));
    }
    // Thinking needs 1024 <= budget < max_tokens, refuses a forced tool choice, and allows no
    // temperature but 1, no top_k and top_p only from 0.95: drop what would make it a 400.
    let forced = out
        .get("tool_choice")
        .and_then(|c| str_of(c, "type"))
        .is_some_and(|t| t == "any" || t == "tool");
    if let Some(budget) =
        str_of(hub, "reasoning_effort").and_then(crate::translate::content::effort_budget)
        && max_tokens > 1024
        && !forced
        && !unsigned_tool_turn
    {
        out.insert(
            "thinking".into(),
            json!({"type": "enabled", "budget_tokens": budget.min(max_tokens - 1)}),
        );
        out.remove("temperature");
        out.remove("top_k");
        if out
            .get("top_p")
            .and_then(Value::as_f64)
            .is_some_and(|p| p < 0.95)
        {
            out.remove("top_p");
        }
    }
    match hub.get("response_format").and_then(|f| str_of(f, "type")) {
        None | Some("text") => {}
        Some(other) => {
            return Err(TranslateError::new(format!(
                "response_format '{other}' cannot be translated to Anthropic Messages"
            )));
        }
    }
    if opts.stream {
        out.insert("stream".into(), json!(true));
    }
    Ok(Value::Object(out))
}

/// One plain string when the system prompt is a single text without cache_control, else blocks.
fn system_value(blocks: Vec<Value>) -> Value {
    if let [only] = blocks.as_slice()
        && only.get("cache_control").is_none()
        && let Some(text) = str_of(only, "text")
    {
        return json!(text);
    }
    Value::Array(blocks)
}

/// A user or system message's content as Anthropic blocks (empty texts dropped).
fn user_blocks(message: &Value) -> Result<Vec<Value>, TranslateError> {
    let mut blocks = Vec::new();
    for part in content_parts(message.get("content")) {
        if let Some(block) = part_block(&part)? {
            blocks.push(block);
        }
    }
    // Message-level cache_control marks the last block (a LiteLLM-style extension).
    if let Some(cache) = message.get("cache_control")
        && let Some(last) = blocks.last_mut()
    {
        last["cache_control"] = cache.clone();
    }
    Ok(blocks)
}

/// One OpenAI content part -> an Anthropic block (`None` for empty text).
fn part_block(part: &Value) -> Result<Option<Value>, TranslateError> {
    let mut block = match str_of(part, "type").unwrap_or("text") {
        "text" | "input_text" => {
            let text = str_of(part, "text").unwrap_or("");
            if text.is_empty() {
                return Ok(None);
            }
            json!({"type": "text", "text": text})
        }
        "refusal" => {
            let text = str_of(part, "refusal").unwrap_or("");
            if text.is_empty() {
                return Ok(None);
            }
            json!({"type": "text", "text": text})
        }
        "image_url" => {
            let url = part
                .get("image_url")
                .and_then(|i| i.as_str().or_else(|| str_of(i, "url")))
                .ok_or_else(|| TranslateError::new("image_url part without a url"))?;
            url_block(url)?
        }
        "file" => {
            let file = part.get("file").unwrap_or(&Value::Null);
            let data = str_of(file, "file_data").ok_or_else(|| {
                TranslateError::new("file parts need inline 'file_data' to reach Anthropic")
            })?;
            let (media_type, data) = parse_data_url(data)?;
            json!({"type": "document", "source": {"type": "base64", "media_type": media_type, "data": data}})
        }
        other => {
            return Err(TranslateError::new(format!(
                "content part '{other}' cannot be translated to Anthropic Messages"
            )));
        }
    };
    if let Some(cache) = part.get("cache_control") {
        block["cache_control"] = cache.clone();
    }
    Ok(Some(block))
}

/// An image (or PDF) URL -> an Anthropic block: data URLs inline, http(s) URLs by reference.
fn url_block(url: &str) -> Result<Value, TranslateError> {
    if url.starts_with("data:") {
        let (media_type, data) = parse_data_url(url)?;
        let kind = if media_type == "application/pdf" {
            "document"
        } else {
            "image"
        };
        return Ok(
            json!({"type": kind, "source": {"type": "base64", "media_type": media_type, "data": data}}),
        );
    }
    if url.starts_with("https://") || url.starts_with("http://") {
        return Ok(json!({"type": "image", "source": {"type": "url", "url": url}}));
    }
    Err(TranslateError::new(
        "image URLs for Anthropic must be data: or http(s) URLs",
    ))
}

/// An assistant message -> thinking blocks (replayed verbatim), text, then tool_use blocks.
fn assistant_blocks(message: &Value, names: &mut ToolNames) -> Result<Vec<Value>, TranslateError> {
    let mut blocks: Vec<Value> = message
        .get("thinking_blocks")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for part in content_parts(message.get("content")) {
        if let Some(block) = part_block(&part)? {
            blocks.push(block);
        }
    }
    if let Some(refusal) = str_of(message, "refusal").filter(|r| !r.is_empty()) {
        blocks.push(json!({"type": "text", "text": refusal}));
    }
    for call in message
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let function = call.get("function").unwrap_or(&Value::Null);
        let name = str_of(function, "name").unwrap_or("");
        blocks.push(json!({
            "type": "tool_use",
            "id": str_of(call, "id").unwrap_or(""),
            "name": names.to_upstream(name, Dialect::Anthropic),
            "input": arguments_to_object(str_of(function, "arguments").unwrap_or("")),
        }));
    }
    Ok(blocks)
}

/// A tool message -> a tool_result block.
fn tool_result(message: &Value) -> Result<Value, TranslateError> {
    let mut blocks = Vec::new();
    for part in content_parts(message.get("content")) {
        if let Some(block) = part_block(&part)? {
            blocks.push(block);
        }
    }
    let content = match blocks.as_slice() {
        [] => json!(""),
        [only] if only.get("cache_control").is_none() && only["type"] == "text" => {
            only["text"].clone()
        }
        _ => Value::Array(blocks),
    };
    let mut block = json!({
        "type": "tool_result",
        "tool_use_id": str_of(message, "tool_call_id").or_else(|| str_of(message, "name")).unwrap_or(""),
        "content": content,
    });
    if message.get("is_error") == Some(&json!(true)) {
        block["is_error"] = json!(true);
    }
    Ok(block)
}

fn tool(tool: &Value, names: &mut ToolNames) -> Result<Value, TranslateError> {
    if str_of(tool, "type").unwrap_or("function") != "function" {
        return Err(TranslateError::new(
            "only function tools can be translated to Anthropic",
        ));
    }
    let function = tool
        .get("function")
        .ok_or_else(|| TranslateError::new("a function tool needs a 'function' object"))?;
    let name =
        str_of(function, "name").ok_or_else(|| TranslateError::new("a tool needs a name"))?;
    let mut out = json!({"name": names.to_upstream(name, Dialect::Anthropic)});
    if let Some(description) = str_of(function, "description") {
        out["description"] = json!(description);
    }
    out["input_schema"] = match function.get("parameters") {
        Some(schema) if schema.is_object() => schema.clone(),
        _ => json!({"type": "object", "properties": {}}),
    };
    if let Some(cache) = tool.get("cache_control") {
        out["cache_control"] = cache.clone();
    }
    Ok(out)
}

/// `tool_choice` and `parallel_tool_calls: false` -> Anthropic `tool_choice`.
fn tool_choice(hub: &Value, names: &mut ToolNames) -> Option<Value> {
    let mut choice = match hub.get("tool_choice") {
        Some(Value::String(s)) => match s.as_str() {
            "required" => json!({"type": "any"}),
            "none" => json!({"type": "none"}),
            _ => json!({"type": "auto"}),
        },
        Some(Value::Object(o)) => {
            let name = o
                .get("function")
                .and_then(|f| str_of(f, "name"))
                .unwrap_or("");
            json!({"type": "tool", "name": names.to_upstream(name, Dialect::Anthropic)})
        }
        _ => Value::Null,
    };
    if hub.get("parallel_tool_calls") == Some(&json!(false)) && hub.get("tools").is_some() {
        if choice.is_null() {
            choice = json!({"type": "auto"});
        }
        if choice["type"] != "none" {
            choice["disable_parallel_tool_use"] = json!(true);
        }
    }
    (!choice.is_null()).then_some(choice)
}

/// Anthropic Messages request -> hub request.
pub(crate) fn to_hub(body: &Value, opts: &RequestOptions) -> Result<Value, TranslateError> {
    let mut messages = Vec::new();
    match body.get("system") {
        Some(Value::String(s)) if !s.is_empty() => {
            messages.push(json!({"role": "system", "content": s}));
        }
        Some(Value::Array(blocks)) if !blocks.is_empty() => {
            let parts = blocks
                .iter()
                .map(block_part)
                .collect::<Result<Vec<_>, _>>()?;
            messages.push(json!({"role": "system", "content": hub_content(parts)}));
        }
        _ => {}
    }
    let turns = body
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| TranslateError::new("'messages' must be an array"))?;
    for turn in turns {
        let role = str_of(turn, "role").unwrap_or("user");
        let blocks = match turn.get("content") {
            Some(Value::String(s)) => vec![json!({"type": "text", "text": s})],
            Some(Value::Array(blocks)) => blocks.clone(),
            _ => Vec::new(),
        };
        match role {
            "assistant" => messages.push(assistant_message(&blocks)?),
            _ => user_messages(&blocks, &mut messages)?,
        }
    }

    let mut hub = Map::new();
    hub.insert("model".into(), json!(opts.upstream_model));
    hub.insert("messages".into(), Value::Array(messages));
    copy(body, "max_tokens", &mut hub, "max_tokens");
    copy(body, "temperature", &mut hub, "temperature");
    copy(body, "top_p", &mut hub, "top_p");
    copy(body, "top_k", &mut hub, "top_k");
    copy(body, "stop_sequences", &mut hub, "stop");
    if let Some(user) = body.get("metadata").and_then(|m| str_of(m, "user_id")) {
        hub.insert("user".into(), json!(user));
    }
    if let Some(tools) = body.get("tools").and_then(Value::as_array) {
        let tools = tools.iter().map(hub_tool).collect::<Result<Vec<_>, _>>()?;
        hub.insert("tools".into(), Value::Array(tools));
    }
    if let Some(choice) = body.get("tool_choice") {
        let mapped = match str_of(choice, "type") {
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => {
                json!({"type": "function", "function": {"name": str_of(choice, "name").unwrap_or("")}})
            }
            _ => json!("auto"),
        };
        hub.insert("tool_choice".into(), mapped);
        if choice.get("disable_parallel_tool_use") == Some(&json!(true)) {
            hub.insert("parallel_tool_calls".into(), json!(false));
        }
    }
    if let Some(thinking) = body.get("thinking")
        && str_of(thinking, "type") == Some("enabled")
    {
        let budget = thinking
            .get("budget_tokens")
            .and_then(Value::as_i64)
            .unwrap_or(1024);
        hub.insert(
            "reasoning_effort".into(),
            json!(crate::translate::content::budget_effort(budget)),
        );
    }
    hub.insert("stream".into(), json!(opts.stream));
    Ok(Value::Object(hub))
}

/// Parts as hub content: a plain string for one text without cache_control, else parts.
fn hub_content(parts: Vec<Value>) -> Value {
    if let [only] = parts.as_slice()
        && only.get("cache_control").is_none()
        && only["type"] == "text"
    {
        return only["text"].clone();
    }
    Value::Array(parts)
}

/// An Anthropic text / image / document block -> an OpenAI content part.
fn block_part(block: &Value) -> Result<Value, TranslateError> {
    let mut part = match str_of(block, "type").unwrap_or("text") {
        "text" => json!({"type": "text", "text": str_of(block, "text").unwrap_or("")}),
        kind @ ("image" | "document") => {
            let source = block.get("source").unwrap_or(&Value::Null);
            match (str_of(source, "type"), kind) {
                (Some("base64"), "image") => json!({"type": "image_url", "image_url": {"url":
                    data_url(str_of(source, "media_type").unwrap_or("image/png"), str_of(source, "data").unwrap_or(""))}}),
                (Some("url"), "image") => {
                    json!({"type": "image_url", "image_url": {"url": str_of(source, "url").unwrap_or("")}})
                }
                (Some("base64"), _) => json!({"type": "file", "file": {"file_data":
                    data_url(str_of(source, "media_type").unwrap_or("application/pdf"), str_of(source, "data").unwrap_or(""))}}),
                (Some("text"), _) => {
                    json!({"type": "text", "text": str_of(source, "data").unwrap_or("")})
                }
                _ => {
                    return Err(TranslateError::new(format!(
                        "this {kind} source cannot be translated from Anthropic Messages"
                    )));
                }
            }
        }
        other => {
            return Err(TranslateError::new(format!(
                "content block '{other}' cannot be translated from Anthropic Messages"
            )));
        }
    };
    if let Some(cache) = block.get("cache_control") {
        part["cache_control"] = cache.clone();
    }
    Ok(part)
}

/// A user turn -> tool messages (its tool_result blocks, first) then one user message.
fn user_messages(blocks: &[Value], messages: &mut Vec<Value>) -> Result<(), TranslateError> {
    let mut parts = Vec::new();
    for block in blocks {
        if str_of(block, "type") != Some("tool_result") {
            parts.push(block_part(block)?);
            continue;
        }
        let mut texts = Vec::new();
        match block.get("content") {
            Some(Value::String(s)) => texts.push(json!({"type": "text", "text": s})),
            Some(Value::Array(inner)) => {
                for b in inner {
                    let part = block_part(b)?;
                    if part["type"] == "text" {
                        texts.push(part);
                    } else {
                        // Tool messages carry text only: images follow in the user message.
                        parts.push(part);
                    }
                }
            }
            _ => {}
        }
        let mut message = json!({
            "role": "tool",
            "tool_call_id": str_of(block, "tool_use_id").unwrap_or(""),
            "content": match hub_content(texts) { Value::Array(a) if a.is_empty() => json!(""), c => c },
        });
        if block.get("is_error") == Some(&json!(true)) {
            message["is_error"] = json!(true);
        }
        messages.push(message);
    }
    if !parts.is_empty() {
        messages.push(json!({"role": "user", "content": hub_content(parts)}));
    }
    Ok(())
}

/// An assistant turn -> one hub assistant message (thinking kept in `thinking_blocks`); a
/// block the hub has no form for is refused.
fn assistant_message(blocks: &[Value]) -> Result<Value, TranslateError> {
    super::hub_assistant(blocks, str::to_string, true)
}

/// An Anthropic tool -> an OpenAI function tool.
fn hub_tool(tool: &Value) -> Result<Value, TranslateError> {
    if let Some(kind) = str_of(tool, "type")
        && kind != "custom"
    {
        return Err(TranslateError::new(format!(
            "Anthropic server tool '{kind}' cannot be translated to another family"
        )));
    }
    let mut function = json!({"name": str_of(tool, "name").unwrap_or("")});
    if let Some(description) = str_of(tool, "description") {
        function["description"] = json!(description);
    }
    if let Some(schema) = tool.get("input_schema") {
        function["parameters"] = schema.clone();
    }
    Ok(json!({"type": "function", "function": function}))
}
