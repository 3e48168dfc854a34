//! Small shared helpers: tool-argument strings, data URLs, hub message text, id derivation.

use serde_json::{Map, Value, json};

use super::TranslateError;

/// The key that carries tool arguments that are not a JSON object through families whose tool
/// input must be an object (Anthropic `input`, Gemini `args`), so they are kept, not dropped.
pub(crate) const RAW_ARGUMENTS: &str = "__raw_arguments";

/// OpenAI `arguments` string -> an object for Anthropic `input` / Gemini `args`.
/// `""` becomes `{}`; malformed or non-object JSON is kept under [`RAW_ARGUMENTS`].
pub(crate) fn arguments_to_object(arguments: &str) -> Value {
    if arguments.trim().is_empty() {
        return json!({});
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(Value::Object(map)) => Value::Object(map),
        _ => json!({ RAW_ARGUMENTS: arguments }),
    }
}

/// Anthropic `input` / Gemini `args` -> an OpenAI `arguments` string (inverse of
/// [`arguments_to_object`]).
pub(crate) fn object_to_arguments(input: Option<&Value>) -> String {
    match input {
        None | Some(Value::Null) => "{}".to_string(),
        Some(Value::Object(map)) if map.len() == 1 => match map.get(RAW_ARGUMENTS) {
            Some(Value::String(raw)) => raw.clone(),
            _ => Value::Object(map.clone()).to_string(),
        },
        Some(other) => other.to_string(),
    }
}

/// `data:<mime>;base64,<data>` -> (mime, data).
pub(crate) fn parse_data_url(url: &str) -> Result<(String, String), TranslateError> {
    let rest = url
        .strip_prefix("data:")
        .ok_or_else(|| TranslateError::new("not a data: URL"))?;
    let (meta, data) = rest
        .split_once(',')
        .ok_or_else(|| TranslateError::new("malformed data: URL (no comma)"))?;
    let mime = meta
        .strip_suffix(";base64")
        .ok_or_else(|| TranslateError::new("data: URLs must be base64-encoded"))?;
    let mime = if mime.is_empty() {
        "application/octet-stream"
    } else {
        mime
    };
    Ok((mime.to_string(), data.to_string()))
}

/// A data URL from a MIME type and base64 data.
pub(crate) fn data_url(mime: &str, data: &str) -> String {
    format!("data:{mime};base64,{data}")
}

/// `key` of an object as a string.
pub(crate) fn str_of<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

/// Copies `from_key` of `src` into `dst[to_key]` if present and not null.
pub(crate) fn copy(src: &Value, from_key: &str, dst: &mut Map<String, Value>, to_key: &str) {
    if let Some(value) = src.get(from_key).filter(|v| !v.is_null()) {
        dst.insert(to_key.to_string(), value.clone());
    }
}

/// The text parts of OpenAI message content (a string or an array of parts) joined.
pub(crate) fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| match p {
                Value::String(s) => Some(s.as_str()),
                _ => str_of(p, "text"),
            })
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// OpenAI content as a list of parts (a string becomes one text part; null none).
pub(crate) fn content_parts(content: Option<&Value>) -> Vec<Value> {
    match content {
        Some(Value::String(text)) => vec![json!({"type": "text", "text": text})],
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|p| match p {
                Value::String(s) => json!({"type": "text", "text": s}),
                other => other.clone(),
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The client's output cap in an OpenAI-shaped hub request.
pub(crate) fn hub_max_tokens(hub: &Value) -> Option<u64> {
    ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|k| hub.get(*k).and_then(Value::as_u64))
}

/// Thinking budget (tokens) for an OpenAI `reasoning_effort`.
pub(crate) fn effort_budget(effort: &str) -> Option<u64> {
    match effort {
        "minimal" | "low" => Some(1024),
        "medium" => Some(4096),
        "high" => Some(16384),
        _ => None,
    }
}

/// OpenAI `reasoning_effort` for a thinking budget (tokens).
pub(crate) fn budget_effort(budget: i64) -> &'static str {
    match budget {
        ..=2048 => "low",
        2049..=8192 => "medium",
        _ => "high",
    }
}

/// The hub's OpenAI `stop` (a string or an array) as a list.
pub(crate) fn stop_list(stop: Option<&Value>) -> Option<Vec<Value>> {
    match stop {
        Some(Value::String(s)) => Some(vec![Value::String(s.clone())]),
        Some(Value::Array(list)) if !list.is_empty() => Some(list.clone()),
        _ => None,
    }
}

/// Appends `turn` to `turns`, merging its parts into the previous turn when both have the same
/// role (Anthropic and Gemini want alternating turns; parallel tool results must be ONE turn).
pub(crate) fn push_turn(turns: &mut Vec<Value>, role: &str, parts_key: &str, parts: Vec<Value>) {
    if parts.is_empty() {
        return;
    }
    if let Some(last) = turns.last_mut()
        && last.get("role").and_then(Value::as_str) == Some(role)
        && let Some(existing) = last.get_mut(parts_key).and_then(Value::as_array_mut)
    {
        existing.extend(parts);
        return;
    }
    turns.push(json!({ "role": role, parts_key: parts }));
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn empty_arguments_become_an_empty_object_and_malformed_ones_are_kept() {
        assert_eq!(arguments_to_object(""), json!({}));
        assert_eq!(arguments_to_object("  "), json!({}));
        assert_eq!(arguments_to_object(r#"{"a":1}"#), json!({"a": 1}));
        let kept = arguments_to_object(r#"{"a":"#);
        assert_eq!(kept, json!({ RAW_ARGUMENTS: r#"{"a":"# }));
        assert_eq!(object_to_arguments(Some(&kept)), r#"{"a":"#);
        assert_eq!(object_to_arguments(Some(&json!({"a": 1}))), r#"{"a":1}"#);
        assert_eq!(object_to_arguments(None), "{}");
    }

    #[test]
    fn data_urls_split_into_mime_and_base64_data() {
        let (mime, data) = parse_data_url("data:image/png;base64,iVBOR").unwrap();
        assert_eq!((mime.as_str(), data.as_str()), ("image/png", "iVBOR"));
        assert!(parse_data_url("data:text/plain,hello").is_err());
        assert!(parse_data_url("https://x").is_err());
    }
}
