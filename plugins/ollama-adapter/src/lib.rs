//! A tollgate provider adapter for Ollama's native chat API (`POST /api/chat`).
//!
//! OpenAI chat request -> Ollama request: messages (text parts joined, `data:` image URLs as
//! base64 `images`, assistant tool calls with object arguments, tool results), `tools`,
//! `max_tokens`/`max_completion_tokens` -> `options.num_predict`, `temperature`, `top_p`,
//! `seed`, `stop` -> `options`, `response_format` -> `format`. `n > 1` and `logprobs` are refused
//! with an `unsupported_parameter` error (Ollama has neither).
//!
//! Ollama answer -> OpenAI `chat.completion` (tool calls get ids, `thinking` becomes
//! `reasoning_content`, `prompt_eval_count`/`eval_count` become `usage`). Each NDJSON stream
//! line -> an OpenAI chunk; the final `done` line -> the finish chunk, a `choices: []` usage
//! chunk and `[DONE]`. An `{"error": ...}` line mid-stream is an adapter error, so the client
//! sees an error event, never a clean end.
//!
//! Stateless between calls (the gateway may hand consecutive events of one stream to different
//! instances): ids derive from Ollama's `created_at`. A finish reason is Ollama's `done_reason`
//! (`stop`, `length`), or `tool_calls` on a non-streamed answer that calls tools. In a stream
//! the tool calls and the `done` line arrive as separate events, so this adapter reports `stop`
//! there and the gateway, which sees the whole stream, turns it into `tool_calls`.
//!
//! `[config]`: `keep_alive` (optional, e.g. `"5m"`) is sent with every request.

use serde_json::{Map, Value, json};
use tollgate_plugin_sdk::{AdapterError, Config, HttpMessage, ProviderAdapter, SseEvent, Usage};

/// The adapter.
pub struct OllamaAdapter {
    keep_alive: Option<String>,
}

fn err(code: &str, message: impl Into<String>) -> AdapterError {
    AdapterError {
        code: code.into(),
        message: message.into(),
    }
}

fn json_body(bytes: &[u8], what: &str) -> Result<Map<String, Value>, AdapterError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(err("invalid_body", format!("{what} is not a JSON object"))),
        Err(e) => Err(err("invalid_body", format!("{what} is not JSON: {e}"))),
    }
}

/// The text of an OpenAI `content` (a string or a list of parts) and its images (base64).
fn content(value: Option<&Value>) -> Result<(String, Vec<String>), AdapterError> {
    match value {
        None | Some(Value::Null) => Ok((String::new(), Vec::new())),
        Some(Value::String(text)) => Ok((text.clone(), Vec::new())),
        Some(Value::Array(parts)) => {
            let mut text = Vec::new();
            let mut images = Vec::new();
            for part in parts {
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        text.push(part.get("text").and_then(Value::as_str).unwrap_or(""));
                    }
                    Some("image_url") => {
                        let url = part
                            .pointer("/image_url/url")
                            .and_then(Value::as_str)
                            .unwrap_or("");
                        let Some((_, data)) = url
                            .strip_prefix("data:")
                            .and_then(|rest| rest.split_once(";base64,"))
                        else {
                            return Err(err(
                                "unsupported_content",
                                "Ollama takes images as data: URLs (base64) only",
                            ));
                        };
                        images.push(data.to_string());
                    }
                    other => {
                        return Err(err(
                            "unsupported_content",
                            format!("content part type {other:?} is not supported by Ollama"),
                        ));
                    }
                }
            }
            Ok((text.join("\n"), images))
        }
        Some(_) => Err(err(
            "invalid_body",
            "message content must be a string or a list",
        )),
    }
}

/// One OpenAI message as an Ollama message.
fn message(m: &Value) -> Result<Value, AdapterError> {
    let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
    let role = if role == "developer" { "system" } else { role };
    let (text, images) = content(m.get("content"))?;
    let mut out = Map::new();
    out.insert("role".into(), json!(role));
    out.insert("content".into(), json!(text));
    if !images.is_empty() {
        out.insert("images".into(), json!(images));
    }
    if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
        let calls: Vec<Value> = calls
            .iter()
            .map(|call| {
                let name = call.pointer("/function/name").cloned().unwrap_or(json!(""));
                let raw = call
                    .pointer("/function/arguments")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                // Ollama wants an object: "" is {}, malformed text is kept under a key.
                let arguments = match serde_json::from_str::<Value>(raw) {
                    Ok(Value::Object(map)) => Value::Object(map),
                    _ if raw.trim().is_empty() => json!({}),
                    _ => json!({ "__raw_arguments": raw }),
                };
                json!({"function": {"name": name, "arguments": arguments}})
            })
            .collect();
        out.insert("tool_calls".into(), Value::Array(calls));
    }
    if role == "tool"
        && let Some(name) = m.get("name")
    {
        out.insert("tool_name".into(), name.clone());
    }
    Ok(Value::Object(out))
}

/// Seconds since the epoch of an RFC 3339 UTC time (`2026-11-29T07:40:13.12Z`); 0 if unreadable.
fn epoch_seconds(text: &str) -> i64 {
    let num = |range: std::ops::Range<usize>| -> Option<i64> { text.get(range)?.parse().ok() };
    let parts = (
        num(0..4),
        num(5..7),
        num(8..10),
        num(11..13),
        num(14..16),
        num(17..19),
    );
    let (Some(y), Some(m), Some(d), Some(hh), Some(mm), Some(ss)) = parts else {
        return 0;
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + hh * 3600 + mm * 60 + ss
}

/// An id stable across the events of one answer: Ollama's `created_at`, digits only.
fn answer_id(native: &Map<String, Value>) -> String {
    let created = native
        .get("created_at")
        .and_then(Value::as_str)
        .unwrap_or("");
    let digits: String = created.chars().filter(char::is_ascii_digit).collect();
    format!("chatcmpl-ollama-{digits}")
}

fn usage_of(native: &Map<String, Value>) -> Option<Value> {
    let prompt = native.get("prompt_eval_count").and_then(Value::as_u64);
    let completion = native.get("eval_count").and_then(Value::as_u64);
    if prompt.is_none() && completion.is_none() {
        return None;
    }
    let (prompt, completion) = (prompt.unwrap_or(0), completion.unwrap_or(0));
    Some(json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }))
}

/// Ollama tool calls as OpenAI ones (`with_index` for stream deltas).
fn tool_calls(id: &str, calls: &[Value], with_index: bool) -> Vec<Value> {
    calls
        .iter()
        .enumerate()
        .map(|(i, call)| {
            let arguments = match call.pointer("/function/arguments") {
                Some(Value::String(text)) => text.clone(),
                Some(Value::Object(map)) => match map.get("__raw_arguments") {
                    Some(Value::String(raw)) if map.len() == 1 => raw.clone(),
                    _ => Value::Object(map.clone()).to_string(),
                },
                Some(other) => other.to_string(),
                None => "{}".to_string(),
            };
            let mut out = json!({
                "id": format!("call_{}_{i}", id.trim_start_matches("chatcmpl-ollama-")),
                "type": "function",
                "function": {
                    "name": call.pointer("/function/name").cloned().unwrap_or(json!("")),
                    "arguments": arguments,
                },
            });
            if with_index && let Some(map) = out.as_object_mut() {
                map.insert("index".into(), json!(i));
            }
            out
        })
        .collect()
}

fn finish_reason(native: &Map<String, Value>) -> &'static str {
    match native.get("done_reason").and_then(Value::as_str) {
        Some("length") => "length",
        _ => "stop",
    }
}

fn ollama_error(native: &Map<String, Value>) -> Option<String> {
    match native.get("error") {
        Some(Value::String(message)) => Some(message.clone()),
        Some(Value::Null) | None => None,
        Some(other) => Some(other.to_string()),
    }
}

impl ProviderAdapter for OllamaAdapter {
    fn new(config: &Config) -> Result<Self, String> {
        let keep_alive = match config.value().get("keep_alive") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err("keep_alive must be a string such as \"5m\"".into()),
        };
        Ok(OllamaAdapter { keep_alive })
    }

    fn transform_request(&mut self, request: HttpMessage) -> Result<HttpMessage, AdapterError> {
        let body = json_body(&request.body, "the request")?;
        if body.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
            return Err(err(
                "unsupported_parameter",
                "Ollama answers one choice: n must be 1",
            ));
        }
        if body.get("logprobs").and_then(Value::as_bool) == Some(true) {
            return Err(err("unsupported_parameter", "Ollama returns no logprobs"));
        }
        let messages = body
            .get("messages")
            .and_then(Value::as_array)
            .ok_or_else(|| err("invalid_body", "messages must be a list"))?
            .iter()
            .map(message)
            .collect::<Result<Vec<_>, _>>()?;
        let mut out = Map::new();
        out.insert(
            "model".into(),
            body.get("model").cloned().unwrap_or(json!("")),
        );
        out.insert("messages".into(), Value::Array(messages));
        out.insert(
            "stream".into(),
            json!(body.get("stream").and_then(Value::as_bool).unwrap_or(false)),
        );
        if let Some(tools) = body.get("tools").filter(|t| t.is_array()) {
            out.insert("tools".into(), tools.clone());
        }
        let mut options = Map::new();
        if let Some(max) = body
            .get("max_completion_tokens")
            .or_else(|| body.get("max_tokens"))
            .filter(|v| v.is_u64())
        {
            options.insert("num_predict".into(), max.clone());
        }
        for key in [
            "temperature",
            "top_p",
            "seed",
            "presence_penalty",
            "frequency_penalty",
        ] {
            if let Some(v) = body.get(key).filter(|v| v.is_number()) {
                options.insert(key.into(), v.clone());
            }
        }
        match body.get("stop") {
            Some(Value::String(s)) => {
                options.insert("stop".into(), json!([s]));
            }
            Some(Value::Array(list)) => {
                options.insert("stop".into(), Value::Array(list.clone()));
            }
            _ => {}
        }
        if !options.is_empty() {
            out.insert("options".into(), Value::Object(options));
        }
        let format = body.get("response_format").cloned().unwrap_or(Value::Null);
        match format.get("type").and_then(Value::as_str) {
            Some("json_object") => {
                out.insert("format".into(), json!("json"));
            }
            Some("json_schema") => {
                if let Some(schema) = format.pointer("/json_schema/schema") {
                    out.insert("format".into(), schema.clone());
                }
            }
            _ => {}
        }
        if let Some(keep_alive) = &self.keep_alive {
            out.insert("keep_alive".into(), json!(keep_alive));
        }
        Ok(HttpMessage {
            status: 0,
            path: "/api/chat".into(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: Value::Object(out).to_string().into_bytes(),
        })
    }

    fn transform_response(&mut self, response: HttpMessage) -> Result<HttpMessage, AdapterError> {
        let native = json_body(&response.body, "Ollama's answer")?;
        if response.status >= 400 || native.contains_key("error") {
            let message = ollama_error(&native).unwrap_or_else(|| "Ollama refused".into());
            let (kind, code) = match response.status {
                404 => ("invalid_request_error", "model_not_found"),
                400 => ("invalid_request_error", "invalid_request"),
                _ => ("api_error", "upstream_error"),
            };
            let body = json!({"error": {"message": message, "type": kind, "code": code}});
            return Ok(HttpMessage {
                status: response.status,
                path: String::new(),
                headers: vec![("content-type".into(), "application/json".into())],
                body: body.to_string().into_bytes(),
            });
        }
        let id = answer_id(&native);
        let msg = native.get("message").cloned().unwrap_or(json!({}));
        let mut message = Map::new();
        message.insert("role".into(), json!("assistant"));
        message.insert(
            "content".into(),
            msg.get("content").cloned().unwrap_or(json!("")),
        );
        if let Some(thinking) = msg.get("thinking").filter(|t| t.is_string()) {
            message.insert("reasoning_content".into(), thinking.clone());
        }
        let calls = msg
            .get("tool_calls")
            .and_then(Value::as_array)
            .filter(|c| !c.is_empty());
        let finish = match calls {
            Some(calls) => {
                message.insert(
                    "tool_calls".into(),
                    Value::Array(tool_calls(&id, calls, false)),
                );
                "tool_calls"
            }
            None => finish_reason(&native),
        };
        let mut answer = json!({
            "id": id,
            "object": "chat.completion",
            "created": epoch_seconds(native.get("created_at").and_then(Value::as_str).unwrap_or("")),
            "model": native.get("model").cloned().unwrap_or(json!("")),
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        });
        if let (Some(usage), Some(map)) = (usage_of(&native), answer.as_object_mut()) {
            map.insert("usage".into(), usage);
        }
        Ok(HttpMessage {
            status: response.status,
            path: String::new(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: answer.to_string().into_bytes(),
        })
    }

    fn transform_stream_event(&mut self, event: SseEvent) -> Result<Vec<SseEvent>, AdapterError> {
        let native = json_body(event.data.as_bytes(), "an Ollama stream line")?;
        if let Some(message) = ollama_error(&native) {
            return Err(err("provider_error", message));
        }
        let id = answer_id(&native);
        let created = epoch_seconds(
            native
                .get("created_at")
                .and_then(Value::as_str)
                .unwrap_or(""),
        );
        let model = native.get("model").cloned().unwrap_or(json!(""));
        let chunk = |choices: Value| {
            json!({
                "id": id, "object": "chat.completion.chunk", "created": created,
                "model": model, "choices": choices,
            })
        };
        let mut out = Vec::new();
        let msg = native.get("message").cloned().unwrap_or(json!({}));
        let mut delta = Map::new();
        if let Some(text) = msg
            .get("content")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            delta.insert("content".into(), json!(text));
        }
        if let Some(thinking) = msg
            .get("thinking")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            delta.insert("reasoning_content".into(), json!(thinking));
        }
        if let Some(calls) = msg
            .get("tool_calls")
            .and_then(Value::as_array)
            .filter(|c| !c.is_empty())
        {
            delta.insert(
                "tool_calls".into(),
                Value::Array(tool_calls(&id, calls, true)),
            );
        }
        if !delta.is_empty() {
            delta.insert("role".into(), json!("assistant"));
            let choices = json!([{"index": 0, "delta": delta, "finish_reason": null}]);
            out.push(SseEvent {
                event: None,
                data: chunk(choices).to_string(),
            });
        }
        if native.get("done").and_then(Value::as_bool) == Some(true) {
            let choices =
                json!([{"index": 0, "delta": {}, "finish_reason": finish_reason(&native)}]);
            out.push(SseEvent {
                event: None,
                data: chunk(choices).to_string(),
            });
            if let Some(usage) = usage_of(&native) {
                let mut usage_chunk = chunk(json!([]));
                if let Some(map) = usage_chunk.as_object_mut() {
                    map.insert("usage".into(), usage);
                }
                out.push(SseEvent {
                    event: None,
                    data: usage_chunk.to_string(),
                });
            }
            out.push(SseEvent {
                event: None,
                data: "[DONE]".into(),
            });
        }
        Ok(out)
    }

    fn extract_usage(&mut self, body: &str) -> Option<Usage> {
        let native: Map<String, Value> = serde_json::from_str(body).ok()?;
        let input = native.get("prompt_eval_count").and_then(Value::as_u64);
        let output = native.get("eval_count").and_then(Value::as_u64);
        if input.is_none() && output.is_none() {
            return None;
        }
        Some(Usage {
            input_tokens: input.unwrap_or(0),
            output_tokens: output.unwrap_or(0),
            ..Usage::default()
        })
    }
}

tollgate_plugin_sdk::export!(adapter: OllamaAdapter);

#[cfg(test)]
mod tests;
