//! Token usage: normalizing provider usage payloads and pricing them in integer nano-USD.

use serde_json::Value;

/// Prices of one model, in nano-USD per one million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pricing {
    /// Uncached input tokens.
    pub input_nanos_per_mtok: i64,
    /// Output tokens (reasoning included).
    pub output_nanos_per_mtok: i64,
    /// Cached input tokens.
    pub cached_input_nanos_per_mtok: i64,
    /// Input tokens written to the prompt cache (Anthropic's cache creation).
    pub cache_write_nanos_per_mtok: i64,
}

impl Pricing {
    /// Converts a config price (USD per 1M tokens) to nano-USD per 1M tokens.
    pub fn nanos_per_mtok(usd: f64) -> Option<i64> {
        let nanos = (usd * 1e9).round();
        (usd.is_finite() && usd >= 0.0 && nanos < i64::MAX as f64).then_some(nanos as i64)
    }

    /// The cost of `tokens`, rounded to the nearest nano-USD.
    pub fn cost_nanos(&self, tokens: &TokenUsage) -> i64 {
        let cached = tokens.cached_input.min(tokens.input);
        let written = tokens.cache_creation.min(tokens.input - cached);
        let uncached = tokens.input - cached - written;
        let total = i128::from(uncached) * i128::from(self.input_nanos_per_mtok)
            + i128::from(cached) * i128::from(self.cached_input_nanos_per_mtok)
            + i128::from(written) * i128::from(self.cache_write_nanos_per_mtok)
            + i128::from(tokens.output) * i128::from(self.output_nanos_per_mtok);
        let rounded = (total + 500_000) / 1_000_000;
        i64::try_from(rounded).unwrap_or(i64::MAX)
    }
}

/// Normalized token counts of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct TokenUsage {
    /// All input tokens (cached ones included).
    pub input: i64,
    /// All output tokens (reasoning included).
    pub output: i64,
    /// Input tokens served from the provider's prompt cache.
    pub cached_input: i64,
    /// Output tokens spent on reasoning.
    pub reasoning: i64,
    /// Input tokens written to the provider's prompt cache (counted in `input` once).
    pub cache_creation: i64,
}

impl TokenUsage {
    /// Input plus output.
    pub fn total(&self) -> i64 {
        self.input + self.output
    }

    /// Reads an OpenAI-family usage object: Chat Completions / Embeddings
    /// (`prompt_tokens`, `completion_tokens`, `*_details`) or Responses / Images
    /// (`input_tokens`, `output_tokens`, `*_tokens_details`).
    pub fn from_openai(usage: &Value) -> Option<Self> {
        let int = |v: &Value, path: &[&str]| -> i64 {
            path.iter()
                .try_fold(v, |v, k| v.get(k))
                .and_then(Value::as_i64)
                .unwrap_or(0)
        };
        if !usage.is_object() {
            return None;
        }
        let chat_style = usage.get("prompt_tokens").is_some();
        let parsed = if chat_style {
            TokenUsage {
                input: int(usage, &["prompt_tokens"]),
                output: int(usage, &["completion_tokens"]),
                cached_input: int(usage, &["prompt_tokens_details", "cached_tokens"]),
                reasoning: int(usage, &["completion_tokens_details", "reasoning_tokens"]),
                cache_creation: 0,
            }
        } else if usage.get("input_tokens").is_some() || usage.get("output_tokens").is_some() {
            TokenUsage {
                input: int(usage, &["input_tokens"]),
                output: int(usage, &["output_tokens"]),
                cached_input: int(usage, &["input_tokens_details", "cached_tokens"]),
                reasoning: int(usage, &["output_tokens_details", "reasoning_tokens"]),
                cache_creation: 0,
            }
        } else {
            return None;
        };
        Some(parsed)
    }
}

impl TokenUsage {
    /// Reads an Anthropic `usage` object (the merge of `message_start`'s and `message_delta`'s
    /// in a stream). Anthropic's `input_tokens` excludes cache reads and cache writes: `input`
    /// here counts all three, each once.
    pub fn from_anthropic(usage: &Value) -> Option<Self> {
        if !usage.is_object() {
            return None;
        }
        let int = |k: &str| usage.get(k).and_then(Value::as_i64).unwrap_or(0);
        let read = int("cache_read_input_tokens");
        let written = int("cache_creation_input_tokens");
        Some(TokenUsage {
            input: int("input_tokens") + read + written,
            output: int("output_tokens"),
            cached_input: read,
            reasoning: 0,
            cache_creation: written,
        })
    }

    /// Reads a Gemini `usageMetadata` object. `candidatesTokenCount` excludes thoughts
    /// (`thoughtsTokenCount`), which are output too; `promptTokenCount` includes cached
    /// content; tool-use prompt tokens are input.
    pub fn from_gemini(usage: &Value) -> Option<Self> {
        if !usage.is_object() {
            return None;
        }
        let int = |k: &str| usage.get(k).and_then(Value::as_i64).unwrap_or(0);
        let thoughts = int("thoughtsTokenCount");
        Some(TokenUsage {
            input: int("promptTokenCount") + int("toolUsePromptTokenCount"),
            output: int("candidatesTokenCount") + thoughts,
            cached_input: int("cachedContentTokenCount"),
            reasoning: thoughts,
            cache_creation: 0,
        })
    }

    /// [`TokenUsage::from_api`] of a usage object's JSON text, without building a [`Value`]:
    /// the counts are read straight from the text. An object the direct read does not take
    /// (a repeated key, a details entry that is not an object) is read as a [`Value`], so the
    /// answer is always the same as [`TokenUsage::from_api`]'s.
    pub fn from_api_text(api: crate::family::Api, usage: &str) -> Option<Self> {
        if !usage.trim_start().starts_with('{') {
            return None;
        }
        match serde_json::from_str::<raw::Counts>(usage) {
            Ok(counts) => counts.tokens(api),
            Err(_) => {
                let value = serde_json::from_str::<Value>(usage).ok()?;
                Self::from_api(api, &value)
            }
        }
    }

    /// Reads a usage payload in the shape of `api` (vLLM's is OpenAI's).
    pub fn from_api(api: crate::family::Api, usage: &Value) -> Option<Self> {
        use crate::family::Api;
        match api {
            Api::OpenAi | Api::Vllm => Self::from_openai(usage),
            Api::Anthropic => Self::from_anthropic(usage),
            Api::Gemini => Self::from_gemini(usage),
        }
    }
}

/// The direct read of [`TokenUsage::from_api_text`]: every count any family reports, each
/// read the way [`Value::as_i64`] reads it, keeping whether the key was there at all.
mod raw {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

    use super::TokenUsage;
    use crate::family::Api;

    /// One count: absent, or present with [`serde_json::Value::as_i64`]'s reading of its value
    /// (0 when it is not an integer that fits).
    #[derive(Debug, Clone, Copy, Default)]
    pub(super) enum Count {
        #[default]
        Absent,
        Present(Option<i64>),
    }

    impl Count {
        fn get(self) -> i64 {
            match self {
                Count::Present(Some(n)) => n,
                _ => 0,
            }
        }

        fn is_present(self) -> bool {
            matches!(self, Count::Present(_))
        }
    }

    impl<'de> serde::Deserialize<'de> for Count {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct Any;
            impl<'de> Visitor<'de> for Any {
                type Value = Option<i64>;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("any JSON value")
                }
                fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                    Ok(Some(v))
                }
                fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                    Ok(i64::try_from(v).ok())
                }
                fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                    Ok(None)
                }
                fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                    Ok(None)
                }
                fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                    Ok(None)
                }
                fn visit_unit<E>(self) -> Result<Self::Value, E> {
                    Ok(None)
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                    while seq.next_element::<IgnoredAny>()?.is_some() {}
                    Ok(None)
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                    Ok(None)
                }
            }
            deserializer.deserialize_any(Any).map(Count::Present)
        }
    }

    /// `*_details` objects.
    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(default)]
    pub(super) struct Details {
        cached_tokens: Count,
        reasoning_tokens: Count,
    }

    /// A usage object of any family (unknown keys skipped).
    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(default)]
    pub(super) struct Counts {
        // OpenAI Chat Completions / Embeddings, vLLM.
        prompt_tokens: Count,
        completion_tokens: Count,
        prompt_tokens_details: Details,
        completion_tokens_details: Details,
        // OpenAI Responses / Images; Anthropic.
        input_tokens: Count,
        output_tokens: Count,
        input_tokens_details: Details,
        output_tokens_details: Details,
        cache_read_input_tokens: Count,
        cache_creation_input_tokens: Count,
        // Gemini.
        #[serde(rename = "promptTokenCount")]
        prompt_token_count: Count,
        #[serde(rename = "toolUsePromptTokenCount")]
        tool_use_prompt_token_count: Count,
        #[serde(rename = "candidatesTokenCount")]
        candidates_token_count: Count,
        #[serde(rename = "thoughtsTokenCount")]
        thoughts_token_count: Count,
        #[serde(rename = "cachedContentTokenCount")]
        cached_content_token_count: Count,
    }

    impl Counts {
        /// The same reading as [`TokenUsage::from_api`]'s of the same object.
        pub(super) fn tokens(&self, api: Api) -> Option<TokenUsage> {
            match api {
                Api::OpenAi | Api::Vllm => {
                    if self.prompt_tokens.is_present() {
                        Some(TokenUsage {
                            input: self.prompt_tokens.get(),
                            output: self.completion_tokens.get(),
                            cached_input: self.prompt_tokens_details.cached_tokens.get(),
                            reasoning: self.completion_tokens_details.reasoning_tokens.get(),
                            cache_creation: 0,
                        })
                    } else if self.input_tokens.is_present() || self.output_tokens.is_present() {
                        Some(TokenUsage {
                            input: self.input_tokens.get(),
                            output: self.output_tokens.get(),
                            cached_input: self.input_tokens_details.cached_tokens.get(),
                            reasoning: self.output_tokens_details.reasoning_tokens.get(),
                            cache_creation: 0,
                        })
                    } else {
                        None
                    }
                }
                Api::Anthropic => {
                    let read = self.cache_read_input_tokens.get();
                    let written = self.cache_creation_input_tokens.get();
                    Some(TokenUsage {
                        input: self.input_tokens.get() + read + written,
                        output: self.output_tokens.get(),
                        cached_input: read,
                        reasoning: 0,
                        cache_creation: written,
                    })
                }
                Api::Gemini => {
                    let thoughts = self.thoughts_token_count.get();
                    Some(TokenUsage {
                        input: self.prompt_token_count.get()
                            + self.tool_use_prompt_token_count.get(),
                        output: self.candidates_token_count.get() + thoughts,
                        cached_input: self.cached_content_token_count.get(),
                        reasoning: thoughts,
                        cache_creation: 0,
                    })
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The direct read of a usage text equals the [`Value`] read of the same text, for every
    /// family, over usual, odd and hostile usage objects.
    #[test]
    fn usage_text_is_read_as_its_value_is() {
        use crate::family::Api;
        let objects = [
            r#"{"prompt_tokens":11,"completion_tokens":7,"total_tokens":18,"prompt_tokens_details":{"cached_tokens":2,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":3,"audio_tokens":0}}"#,
            r#"{"input_tokens":5,"output_tokens":9,"input_tokens_details":{"cached_tokens":1},"output_tokens_details":{"reasoning_tokens":4}}"#,
            r#"{"input_tokens":10,"cache_read_input_tokens":3,"cache_creation_input_tokens":2,"output_tokens":6}"#,
            r#"{"promptTokenCount":8,"candidatesTokenCount":4,"thoughtsTokenCount":2,"toolUsePromptTokenCount":1,"cachedContentTokenCount":3}"#,
            r#"{"prompt_tokens":null,"completion_tokens":"7"}"#,
            r#"{"prompt_tokens":1.5,"completion_tokens":18446744073709551615,"prompt_tokens_details":null}"#,
            r#"{"prompt_tokens":-4,"completion_tokens":[1,2],"completion_tokens_details":{"reasoning_tokens":{"x":1}}}"#,
            r#"{"prompt_tokens":1,"prompt_tokens":2,"completion_tokens":3}"#,
            r#"{"prompt_tokens_details":[],"input_tokens":2}"#,
            r#"{"unrelated":{"deep":[{"a":1}]},"output_tokens":3}"#,
            r#"{}"#,
            r#"  { "prompt_tokens" : 3 , "completion_tokens" : 4 }"#,
            "[1,2]",
            "7",
            "null",
            r#""text""#,
        ];
        for text in objects {
            let value: Value = serde_json::from_str(text).expect(text);
            for api in [Api::OpenAi, Api::Vllm, Api::Anthropic, Api::Gemini] {
                assert_eq!(
                    TokenUsage::from_api_text(api, text),
                    TokenUsage::from_api(api, &value),
                    "{api:?} {text}"
                );
            }
        }
    }

    #[test]
    fn chat_usage_with_details_is_normalized() {
        let usage = json!({
            "prompt_tokens": 120, "completion_tokens": 40, "total_tokens": 160,
            "prompt_tokens_details": {"cached_tokens": 100, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 12}
        });
        let t = TokenUsage::from_openai(&usage).expect("usage");
        assert_eq!(
            t,
            TokenUsage {
                input: 120,
                output: 40,
                cached_input: 100,
                reasoning: 12,
                cache_creation: 0,
            }
        );
        assert_eq!(t.total(), 160);
    }

    #[test]
    fn responses_usage_is_normalized() {
        let usage = json!({
            "input_tokens": 30, "output_tokens": 7,
            "input_tokens_details": {"cached_tokens": 3},
            "output_tokens_details": {"reasoning_tokens": 2}
        });
        let t = TokenUsage::from_openai(&usage).expect("usage");
        assert_eq!(
            t,
            TokenUsage {
                input: 30,
                output: 7,
                cached_input: 3,
                reasoning: 2,
                cache_creation: 0,
            }
        );
    }

    #[test]
    fn null_usage_is_none() {
        assert_eq!(TokenUsage::from_openai(&Value::Null), None);
    }

    #[test]
    fn cost_uses_cached_price_for_cached_tokens_and_rounds_to_nanos() {
        let pricing = Pricing {
            input_nanos_per_mtok: Pricing::nanos_per_mtok(2.5).expect("price"),
            output_nanos_per_mtok: Pricing::nanos_per_mtok(10.0).expect("price"),
            cached_input_nanos_per_mtok: Pricing::nanos_per_mtok(1.25).expect("price"),
            cache_write_nanos_per_mtok: 0,
        };
        let t = TokenUsage {
            input: 1000,
            output: 500,
            cached_input: 400,
            reasoning: 0,
            cache_creation: 0,
        };
        // 600 * 2500 + 400 * 1250 + 500 * 10000 nano-USD
        assert_eq!(pricing.cost_nanos(&t), 1_500_000 + 500_000 + 5_000_000);
        let one = TokenUsage {
            input: 1,
            output: 0,
            cached_input: 0,
            reasoning: 0,
            cache_creation: 0,
        };
        let cheap = Pricing {
            input_nanos_per_mtok: 150_000_000,
            ..Pricing::default()
        };
        assert_eq!(cheap.cost_nanos(&one), 150);
    }

    #[test]
    fn anthropic_cache_classes_are_counted_once_and_priced_each_at_its_price() {
        let usage = json!({"input_tokens": 7, "cache_read_input_tokens": 9000,
                           "cache_creation_input_tokens": 1000, "output_tokens": 50});
        let t = TokenUsage::from_anthropic(&usage).expect("usage");
        assert_eq!(t.input, 10_007);
        assert_eq!(t.cached_input, 9000);
        assert_eq!(t.cache_creation, 1000);
        assert_eq!(t.total(), 10_057);
        let pricing = Pricing {
            input_nanos_per_mtok: 3_000_000_000,
            output_nanos_per_mtok: 15_000_000_000,
            cached_input_nanos_per_mtok: 300_000_000,
            cache_write_nanos_per_mtok: 3_750_000_000,
        };
        // 7 * 3000 + 9000 * 300 + 1000 * 3750 + 50 * 15000 nano-USD
        assert_eq!(
            pricing.cost_nanos(&t),
            21_000 + 2_700_000 + 3_750_000 + 750_000
        );
    }

    #[test]
    fn gemini_thoughts_are_output_and_cached_content_is_input() {
        let usage = json!({"promptTokenCount": 100, "cachedContentTokenCount": 40,
                           "candidatesTokenCount": 20, "thoughtsTokenCount": 5, "totalTokenCount": 125});
        let t = TokenUsage::from_gemini(&usage).expect("usage");
        assert_eq!(
            (t.input, t.output, t.cached_input, t.reasoning),
            (100, 25, 40, 5)
        );
    }

    #[test]
    fn negative_or_nan_prices_are_rejected() {
        assert_eq!(Pricing::nanos_per_mtok(-1.0), None);
        assert_eq!(Pricing::nanos_per_mtok(f64::NAN), None);
        assert_eq!(Pricing::nanos_per_mtok(0.075), Some(75_000_000));
    }
}
