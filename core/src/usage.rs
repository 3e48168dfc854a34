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
        let uncached = tokens.input - cached;
        let total = i128::from(uncached) * i128::from(self.input_nanos_per_mtok)
            + i128::from(cached) * i128::from(self.cached_input_nanos_per_mtok)
            + i128::from(tokens.output) * i128::from(self.output_nanos_per_mtok);
        let rounded = (total + 500_000) / 1_000_000;
        i64::try_from(rounded).unwrap_or(i64::MAX)
    }
}

/// Normalized token counts of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TokenUsage {
    /// All input tokens (cached ones included).
    pub input: i64,
    /// All output tokens (reasoning included).
    pub output: i64,
    /// Input tokens served from the provider's prompt cache.
    pub cached_input: i64,
    /// Output tokens spent on reasoning.
    pub reasoning: i64,
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
            }
        } else if usage.get("input_tokens").is_some() || usage.get("output_tokens").is_some() {
            TokenUsage {
                input: int(usage, &["input_tokens"]),
                output: int(usage, &["output_tokens"]),
                cached_input: int(usage, &["input_tokens_details", "cached_tokens"]),
                reasoning: int(usage, &["output_tokens_details", "reasoning_tokens"]),
            }
        } else {
            return None;
        };
        Some(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
                reasoning: 12
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
                reasoning: 2
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
        };
        let t = TokenUsage {
            input: 1000,
            output: 500,
            cached_input: 400,
            reasoning: 0,
        };
        // 600 * 2500 + 400 * 1250 + 500 * 10000 nano-USD
        assert_eq!(pricing.cost_nanos(&t), 1_500_000 + 500_000 + 5_000_000);
        let one = TokenUsage {
            input: 1,
            output: 0,
            cached_input: 0,
            reasoning: 0,
        };
        let cheap = Pricing {
            input_nanos_per_mtok: 150_000_000,
            ..Pricing::default()
        };
        assert_eq!(cheap.cost_nanos(&one), 150);
    }

    #[test]
    fn negative_or_nan_prices_are_rejected() {
        assert_eq!(Pricing::nanos_per_mtok(-1.0), None);
        assert_eq!(Pricing::nanos_per_mtok(f64::NAN), None);
        assert_eq!(Pricing::nanos_per_mtok(0.075), Some(75_000_000));
    }
}
