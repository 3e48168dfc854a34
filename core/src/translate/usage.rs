//! Token usage: each family's fields normalised into one [`Usage`], and rendered back.
//!
//! - OpenAI: `prompt_tokens` includes cached tokens, `completion_tokens` includes reasoning.
//! - Anthropic: `input_tokens` excludes cache reads and cache writes.
//! - Gemini: `promptTokenCount` includes cached content, `candidatesTokenCount` excludes
//!   `thoughtsTokenCount`; in streams `usageMetadata` is cumulative (the last one wins).

use serde_json::{Map, Value, json};

use super::Dialect;

/// Normalised usage of an answer or a finished stream, each class counted once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// ALL input tokens, including cache reads and writes.
    pub input: i64,
    /// All output tokens, including reasoning.
    pub output: i64,
    /// Input tokens read from the prompt cache (part of `input`).
    pub cache_read: i64,
    /// Input tokens written to the prompt cache (part of `input`).
    pub cache_creation: i64,
    /// Reasoning tokens (part of `output`).
    pub reasoning: i64,
}

fn int(value: &Value, key: &str) -> i64 {
    value.get(key).and_then(Value::as_i64).unwrap_or(0)
}

/// The normalised usage of an answer (or one stream chunk) in `dialect`, if it reports any.
pub fn usage(dialect: Dialect, answer: &Value) -> Option<Usage> {
    match dialect {
        Dialect::OpenAiChat => answer
            .get("usage")
            .filter(|u| u.is_object())
            .map(from_openai),
        Dialect::Anthropic => {
            let u = answer
                .get("usage")
                .or_else(|| answer.get("message").and_then(|m| m.get("usage")))
                .filter(|u| u.is_object())?;
            Some(from_anthropic(u))
        }
        Dialect::Gemini => answer
            .get("usageMetadata")
            .filter(|u| u.is_object())
            .map(from_gemini),
    }
}

/// OpenAI `usage` object -> [`Usage`].
pub(crate) fn from_openai(u: &Value) -> Usage {
    let prompt = u.get("prompt_tokens_details").unwrap_or(&Value::Null);
    let completion = u.get("completion_tokens_details").unwrap_or(&Value::Null);
    Usage {
        input: int(u, "prompt_tokens"),
        output: int(u, "completion_tokens"),
        cache_read: int(prompt, "cached_tokens"),
        cache_creation: int(prompt, "cache_creation_tokens"),
        reasoning: int(completion, "reasoning_tokens"),
    }
}

/// Anthropic `usage` object -> [`Usage`].
pub(crate) fn from_anthropic(u: &Value) -> Usage {
    let cache_read = int(u, "cache_read_input_tokens");
    let cache_creation = int(u, "cache_creation_input_tokens");
    Usage {
        input: int(u, "input_tokens") + cache_read + cache_creation,
        output: int(u, "output_tokens"),
        cache_read,
        cache_creation,
        reasoning: 0,
    }
}

/// Gemini `usageMetadata` -> [`Usage`].
pub(crate) fn from_gemini(u: &Value) -> Usage {
    let thoughts = int(u, "thoughtsTokenCount");
    Usage {
        input: int(u, "promptTokenCount") + int(u, "toolUsePromptTokenCount"),
        output: int(u, "candidatesTokenCount") + thoughts,
        cache_read: int(u, "cachedContentTokenCount"),
        cache_creation: 0,
        reasoning: thoughts,
    }
}

/// [`Usage`] -> OpenAI `usage` (the hub's usage).
pub(crate) fn to_openai(u: &Usage) -> Value {
    let mut prompt = Map::new();
    prompt.insert("cached_tokens".into(), json!(u.cache_read));
    if u.cache_creation > 0 {
        prompt.insert("cache_creation_tokens".into(), json!(u.cache_creation));
    }
    json!({
        "prompt_tokens": u.input,
        "completion_tokens": u.output,
        "total_tokens": u.input + u.output,
        "prompt_tokens_details": prompt,
        "completion_tokens_details": { "reasoning_tokens": u.reasoning },
    })
}

/// [`Usage`] -> Anthropic `usage`.
pub(crate) fn to_anthropic(u: &Usage) -> Value {
    json!({
        "input_tokens": (u.input - u.cache_read - u.cache_creation).max(0),
        "cache_creation_input_tokens": u.cache_creation,
        "cache_read_input_tokens": u.cache_read,
        "output_tokens": u.output,
    })
}

/// [`Usage`] -> Gemini `usageMetadata`.
pub(crate) fn to_gemini(u: &Usage) -> Value {
    let mut m = Map::new();
    m.insert("promptTokenCount".into(), json!(u.input));
    m.insert("candidatesTokenCount".into(), json!(u.output - u.reasoning));
    m.insert("totalTokenCount".into(), json!(u.input + u.output));
    if u.cache_read > 0 {
        m.insert("cachedContentTokenCount".into(), json!(u.cache_read));
    }
    if u.reasoning > 0 {
        m.insert("thoughtsTokenCount".into(), json!(u.reasoning));
    }
    Value::Object(m)
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn anthropic_cache_tokens_are_counted_once_inside_input() {
        let answer = json!({"usage": {"input_tokens": 7, "cache_read_input_tokens": 9000,
            "cache_creation_input_tokens": 1000, "output_tokens": 50}});
        let u = usage(Dialect::Anthropic, &answer).unwrap();
        assert_eq!(
            u,
            Usage {
                input: 10007,
                output: 50,
                cache_read: 9000,
                cache_creation: 1000,
                reasoning: 0
            }
        );
        let openai = to_openai(&u);
        assert_eq!(openai["prompt_tokens"], 10007);
        assert_eq!(openai["prompt_tokens_details"]["cached_tokens"], 9000);
        assert_eq!(openai["total_tokens"], 10057);
        assert_eq!(from_openai(&openai), u);
        assert_eq!(from_anthropic(&to_anthropic(&u)), u);
    }

    #[test]
    fn gemini_thought_tokens_count_as_output_and_reasoning() {
        let answer = json!({"usageMetadata": {"promptTokenCount": 100, "candidatesTokenCount": 20,
            "thoughtsTokenCount": 30, "cachedContentTokenCount": 60, "totalTokenCount": 150}});
        let u = usage(Dialect::Gemini, &answer).unwrap();
        assert_eq!(
            u,
            Usage {
                input: 100,
                output: 50,
                cache_read: 60,
                cache_creation: 0,
                reasoning: 30
            }
        );
        assert_eq!(from_gemini(&to_gemini(&u)), u);
        assert_eq!(usage(Dialect::OpenAiChat, &json!({"usage": null})), None);
    }
}
