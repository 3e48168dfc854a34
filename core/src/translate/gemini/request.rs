//! Gemini generateContent requests <-> hub (OpenAI chat) requests.

use std::collections::{HashMap, VecDeque};

use serde_json::{Map, Value, json};

use super::schema;
use super::split_call_id;
use crate::translate::content::{
    arguments_to_object, budget_effort, content_parts, content_text, data_url, effort_budget,
    hub_max_tokens, object_to_arguments, parse_data_url, push_turn, stop_list, str_of,
};
use crate::translate::{Dialect, RequestOptions, ToolNames, TranslateError};

/// Hub request -> Gemini generateContent request (the model goes in the URL, not the body).
pub(crate) fn from_hub(
    hub: &Value,
    opts: &RequestOptions,
    names: &mut ToolNames,
) -> Result<Value, TranslateError> {
    let messages = hub
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| TranslateError::new("'messages' must be an array"))?;
    let mut system = Vec::new();
    let mut contents: Vec<Value> = Vec::new();
    // tool_call_id -> upstream function name, for functionResponse parts.
    let mut call_names: HashMap<String, String> = HashMap::new();
    for message in messages {
        match str_of(message, "role").unwrap_or("user") {
            "system" | "developer" => {
                for part in content_parts(message.get("content")) {
                    if let Some(text) = str_of(&part, "text").filter(|t| !t.is_empty()) {
                        system.push(json!({"text": text}));
                    }
                }
            }
            "user" => push_turn(&mut contents, "user", "parts", user_parts(message)?),
            "assistant" => {
                let mut parts = Vec::new();
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
                    let function = call.get("function").unwrap_or(&Value::Null);
                    let name =
                        names.to_upstream(str_of(function, "name").unwrap_or(""), Dialect::Gemini);
                    let id = str_of(call, "id").unwrap_or("");
                    call_names.insert(id.to_string(), name.clone());
                    let mut part = json!({"functionCall": {
                        "name": name,
                        "args": arguments_to_object(str_of(function, "arguments").unwrap_or("")),
                    }});
                    if let (_, Some(signature)) = split_call_id(id) {
                        part["thoughtSignature"] = json!(signature);
                    }
                    parts.push(part);
                }
                push_turn(&mut contents, "model", "parts", parts);
            }
            "tool" | "function" => {
                let id = str_of(message, "tool_call_id").unwrap_or("");
                let name = call_names
                    .get(id)
                    .cloned()
                    .or_else(|| {
                        str_of(message, "name").map(|n| names.to_upstream(n, Dialect::Gemini))
                    })
                    .ok_or_else(|| {
                        TranslateError::new(format!(
                            "tool result '{id}' answers no known tool call"
                        ))
                    })?;
                let text = content_text(message.get("content"));
                let value = match serde_json::from_str::<Value>(&text) {
                    Ok(Value::Object(map)) => Value::Object(map),
                    Ok(other) => json!({ "content": other }),
                    Err(_) => json!({ "content": text }),
                };
                let response = if message.get("is_error") == Some(&json!(true)) {
                    json!({ "error": value })
                } else {
                    value
                };
                let part = json!({"functionResponse": {"name": name, "response": response}});
                push_turn(&mut contents, "user", "parts", vec![part]);
            }
            other => {
                return Err(TranslateError::new(format!(
                    "unknown message role '{other}'"
                )));
            }
        }
    }

    let mut out = Map::new();
    if !system.is_empty() {
        out.insert("systemInstruction".into(), json!({"parts": system}));
    }
    out.insert("contents".into(), Value::Array(contents));
    if let Some(tools) = hub.get("tools").and_then(Value::as_array) {
        let mut declarations = Vec::new();
        for tool in tools {
            if str_of(tool, "type").unwrap_or("function") != "function" {
                return Err(TranslateError::new(
                    "only function tools can be translated to Gemini",
                ));
            }
            let function = tool.get("function").unwrap_or(&Value::Null);
            let name = str_of(function, "name")
                .ok_or_else(|| TranslateError::new("a tool needs a name"))?;
            let mut declaration = json!({"name": names.to_upstream(name, Dialect::Gemini)});
            if let Some(description) = str_of(function, "description") {
                declaration["description"] = json!(description);
            }
            if let Some(parameters) = function.get("parameters").and_then(schema::clean) {
                declaration["parameters"] = parameters;
            }
            declarations.push(declaration);
        }
        if !declarations.is_empty() {
            out.insert(
                "tools".into(),
                json!([{"functionDeclarations": declarations}]),
            );
        }
    }
    let mode = match hub.get("tool_choice") {
        Some(Value::String(s)) if s == "required" => Some(json!({"mode": "ANY"})),
        Some(Value::String(s)) if s == "none" => Some(json!({"mode": "NONE"})),
        Some(Value::String(s)) if s == "auto" => Some(json!({"mode": "AUTO"})),
        Some(Value::Object(o)) => {
            let name = o
                .get("function")
                .and_then(|f| str_of(f, "name"))
                .unwrap_or("");
            Some(
                json!({"mode": "ANY", "allowedFunctionNames": [names.to_upstream(name, Dialect::Gemini)]}),
            )
        }
        _ => None,
    };
    if let Some(mode) = mode {
        out.insert("toolConfig".into(), json!({"functionCallingConfig": mode}));
    }
    let config = generation_config(hub, opts)?;
    if !config.is_empty() {
        out.insert("generationConfig".into(), Value::Object(config));
    }
    Ok(Value::Object(out))
}

fn generation_config(
    hub: &Value,
    opts: &RequestOptions,
) -> Result<Map<String, Value>, TranslateError> {
    let mut config = Map::new();
    let pairs = [
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("top_k", "topK"),
        ("n", "candidateCount"),
        ("seed", "seed"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ];
    for (from, to) in pairs {
        crate::translate::content::copy(hub, from, &mut config, to);
    }
    if let Some(cap) = opts.max_tokens.or_else(|| hub_max_tokens(hub)) {
        config.insert("maxOutputTokens".into(), json!(cap));
    }
    if let Some(stop) = stop_list(hub.get("stop")) {
        config.insert("stopSequences".into(), Value::Array(stop));
    }
    if let Some(format) = hub.get("response_format") {
        match str_of(format, "type") {
            Some("json_object") => {
                config.insert("responseMimeType".into(), json!("application/json"));
            }
            Some("json_schema") => {
                config.insert("responseMimeType".into(), json!("application/json"));
                if let Some(s) = format
                    .get("json_schema")
                    .and_then(|j| j.get("schema"))
                    .and_then(schema::clean)
                {
                    config.insert("responseSchema".into(), s);
                }
            }
            _ => {}
        }
    }
    if let Some(budget) = str_of(hub, "reasoning_effort").and_then(effort_budget) {
        config.insert(
            "thinkingConfig".into(),
            json!({"thinkingBudget": budget, "includeThoughts": true}),
        );
    } else if str_of(hub, "reasoning_effort") == Some("none") {
        config.insert("thinkingConfig".into(), json!({"thinkingBudget": 0}));
    }
    Ok(config)
}

/// A user message's content -> Gemini parts (empty texts dropped).
fn user_parts(message: &Value) -> Result<Vec<Value>, TranslateError> {
    let mut parts = Vec::new();
    for part in content_parts(message.get("content")) {
        match str_of(&part, "type").unwrap_or("text") {
            "text" | "input_text" => {
                let text = str_of(&part, "text").unwrap_or("");
                if !text.is_empty() {
                    parts.push(json!({"text": text}));
                }
            }
            "image_url" => {
                let url = part
                    .get("image_url")
                    .and_then(|i| i.as_str().or_else(|| str_of(i, "url")))
                    .ok_or_else(|| TranslateError::new("image_url part without a url"))?;
                parts.push(url_part(url)?);
            }
            "file" => {
                let file = part.get("file").unwrap_or(&Value::Null);
                let data = str_of(file, "file_data").ok_or_else(|| {
                    TranslateError::new("file parts need inline 'file_data' to reach Gemini")
                })?;
                parts.push(url_part(data)?);
            }
            "input_audio" => {
                let audio = part.get("input_audio").unwrap_or(&Value::Null);
                let format = str_of(audio, "format").unwrap_or("wav");
                parts.push(json!({"inlineData": {"mimeType": format!("audio/{format}"),
                    "data": str_of(audio, "data").unwrap_or("")}}));
            }
            other => {
                return Err(TranslateError::new(format!(
                    "content part '{other}' cannot be translated to Gemini"
                )));
            }
        }
    }
    Ok(parts)
}

/// A data URL -> inlineData; `gs://` (or a Gemini Files API URI) -> fileData; other URLs refused
/// (tollgate does not fetch URLs on the client's behalf).
fn url_part(url: &str) -> Result<Value, TranslateError> {
    if url.starts_with("data:") {
        let (mime, data) = parse_data_url(url)?;
        return Ok(json!({"inlineData": {"mimeType": mime, "data": data}}));
    }
    if url.starts_with("gs://") || url.starts_with("https://generativelanguage.googleapis.com/") {
        return Ok(json!({"fileData": {"mimeType": mime_from_extension(url), "fileUri": url}}));
    }
    Err(TranslateError::new(
        "Gemini accepts images as data: URLs or gs:// URIs; http(s) image URLs are not fetched by the gateway",
    ))
}

fn mime_from_extension(url: &str) -> &'static str {
    let ext = url.rsplit('.').next().unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "pdf" => "application/pdf",
        "mp3" => "audio/mpeg",
        "wav" => "audio/wav",
        "mp4" => "video/mp4",
        "txt" => "text/plain",
        _ => "application/octet-stream",
    }
}

/// Gemini generateContent request -> hub request.
pub(crate) fn to_hub(body: &Value, opts: &RequestOptions) -> Result<Value, TranslateError> {
    let mut messages = Vec::new();
    if let Some(system) = body
        .get("systemInstruction")
        .or_else(|| body.get("system_instruction"))
    {
        let text = parts_of(system)
            .iter()
            .filter_map(|p| str_of(p, "text"))
            .collect::<Vec<_>>()
            .join("\n");
        if !text.is_empty() {
            messages.push(json!({"role": "system", "content": text}));
        }
    }
    // Gemini function calls have no ids: number them and answer responses in order per name.
    let mut pending: HashMap<String, VecDeque<String>> = HashMap::new();
    let mut counter = 0usize;
    let contents = body
        .get("contents")
        .and_then(Value::as_array)
        .ok_or_else(|| TranslateError::new("'contents' must be an array"))?;
    for turn in contents {
        let parts = parts_of(turn);
        if str_of(turn, "role") == Some("model") {
            let mut text = String::new();
            let mut reasoning = String::new();
            let mut calls = Vec::new();
            for part in &parts {
                if let Some(call) = part.get("functionCall") {
                    let name = str_of(call, "name").unwrap_or("").to_string();
                    // A thoughtSignature only matters to Gemini itself: it is not carried to
                    // another family (whose ids refuse its characters).
                    let id = str_of(call, "id").map(str::to_string).unwrap_or_else(|| {
                        counter += 1;
                        format!("call_{counter}")
                    });
                    pending
                        .entry(name.clone())
                        .or_default()
                        .push_back(id.clone());
                    calls.push(json!({"id": id, "type": "function",
                        "function": {"name": name, "arguments": object_to_arguments(call.get("args"))}}));
                } else if part.get("thought") == Some(&json!(true)) {
                    reasoning.push_str(str_of(part, "text").unwrap_or(""));
                } else if let Some(t) = str_of(part, "text") {
                    text.push_str(t);
                }
            }
            let mut message = json!({"role": "assistant",
                "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) }});
            if !calls.is_empty() {
                message["tool_calls"] = Value::Array(calls);
            }
            if !reasoning.is_empty() {
                message["reasoning_content"] = json!(reasoning);
            }
            messages.push(message);
            continue;
        }
        let mut user = Vec::new();
        for part in &parts {
            if let Some(response) = part.get("functionResponse") {
                let name = str_of(response, "name").unwrap_or("");
                let id = str_of(response, "id")
                    .map(str::to_string)
                    .or_else(|| pending.get_mut(name).and_then(VecDeque::pop_front))
                    .unwrap_or_else(|| format!("call_{name}"));
                let content = response.get("response").cloned().unwrap_or(json!({}));
                messages.push(
                    json!({"role": "tool", "tool_call_id": id, "content": content.to_string()}),
                );
            } else if let Some(text) = str_of(part, "text") {
                user.push(json!({"type": "text", "text": text}));
            } else if let Some(inline) = part.get("inlineData").or_else(|| part.get("inline_data"))
            {
                let mime = str_of(inline, "mimeType")
                    .or_else(|| str_of(inline, "mime_type"))
                    .unwrap_or("");
                let url = data_url(mime, str_of(inline, "data").unwrap_or(""));
                user.push(if mime.starts_with("image/") {
                    json!({"type": "image_url", "image_url": {"url": url}})
                } else if let Some(format) = mime.strip_prefix("audio/") {
                    json!({"type": "input_audio", "input_audio": {"data": str_of(inline, "data").unwrap_or(""), "format": format}})
                } else {
                    json!({"type": "file", "file": {"file_data": url}})
                });
            } else if let Some(file) = part.get("fileData").or_else(|| part.get("file_data")) {
                let uri = str_of(file, "fileUri")
                    .or_else(|| str_of(file, "file_uri"))
                    .unwrap_or("");
                user.push(json!({"type": "image_url", "image_url": {"url": uri}}));
            } else {
                return Err(TranslateError::new(
                    "a Gemini part of this kind cannot be translated",
                ));
            }
        }
        if !user.is_empty() {
            let content = match user.as_slice() {
                [only] if only["type"] == "text" => only["text"].clone(),
                _ => Value::Array(user),
            };
            messages.push(json!({"role": "user", "content": content}));
        }
    }

    let mut hub = Map::new();
    hub.insert("model".into(), json!(opts.upstream_model));
    hub.insert("messages".into(), Value::Array(messages));
    if let Some(tools) = body.get("tools").and_then(Value::as_array) {
        let mut out = Vec::new();
        for tool in tools {
            let declarations = tool
                .get("functionDeclarations")
                .or_else(|| tool.get("function_declarations"))
                .and_then(Value::as_array)
                .ok_or_else(|| {
                    TranslateError::new("only Gemini function declarations can be translated")
                })?;
            for d in declarations {
                let mut function = json!({"name": str_of(d, "name").unwrap_or("")});
                if let Some(description) = str_of(d, "description") {
                    function["description"] = json!(description);
                }
                let parameters = d
                    .get("parametersJsonSchema")
                    .or_else(|| d.get("parameters"))
                    .cloned()
                    .unwrap_or(json!({"type": "object", "properties": {}}));
                function["parameters"] = lower_types(parameters);
                out.push(json!({"type": "function", "function": function}));
            }
        }
        hub.insert("tools".into(), Value::Array(out));
    }
    if let Some(config) = body
        .get("toolConfig")
        .and_then(|t| t.get("functionCallingConfig"))
    {
        let allowed = config.get("allowedFunctionNames").and_then(Value::as_array);
        let choice = match str_of(config, "mode") {
            Some("ANY") => match allowed.map(Vec::as_slice) {
                Some([only]) => json!({"type": "function", "function": {"name": only}}),
                _ => json!("required"),
            },
            Some("NONE") => json!("none"),
            _ => json!("auto"),
        };
        hub.insert("tool_choice".into(), choice);
    }
    let config = body.get("generationConfig").cloned().unwrap_or(Value::Null);
    let pairs = [
        ("maxOutputTokens", "max_tokens"),
        ("temperature", "temperature"),
        ("topP", "top_p"),
        ("topK", "top_k"),
        ("candidateCount", "n"),
        ("seed", "seed"),
        ("presencePenalty", "presence_penalty"),
        ("frequencyPenalty", "frequency_penalty"),
        ("stopSequences", "stop"),
    ];
    for (from, to) in pairs {
        crate::translate::content::copy(&config, from, &mut hub, to);
    }
    if str_of(&config, "responseMimeType") == Some("application/json") {
        let format = match config
            .get("responseSchema")
            .or_else(|| config.get("responseJsonSchema"))
        {
            Some(schema) => {
                json!({"type": "json_schema", "json_schema": {"name": "response", "schema": lower_types(schema.clone())}})
            }
            None => json!({"type": "json_object"}),
        };
        hub.insert("response_format".into(), format);
    }
    if let Some(budget) = config
        .get("thinkingConfig")
        .and_then(|t| t.get("thinkingBudget"))
        .and_then(Value::as_i64)
    {
        let effort = if budget == 0 {
            "none"
        } else if budget < 0 {
            "medium"
        } else {
            budget_effort(budget)
        };
        hub.insert("reasoning_effort".into(), json!(effort));
    }
    hub.insert("stream".into(), json!(opts.stream));
    Ok(Value::Object(hub))
}

/// The `parts` array of a Gemini content object.
fn parts_of(content: &Value) -> Vec<Value> {
    content
        .get("parts")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// Gemini's OpenAPI upper-case types (`STRING`, `OBJECT`) -> JSON Schema lower-case types.
fn lower_types(schema: Value) -> Value {
    match schema {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| match (k.as_str(), v) {
                    ("type", Value::String(t)) => (k, json!(t.to_ascii_lowercase())),
                    (_, v) => (k, lower_types(v)),
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(lower_types).collect()),
        other => other,
    }
}
