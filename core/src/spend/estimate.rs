//! The worst-case estimate a hold is taken for, before anything goes upstream.
//!
//! Input tokens are bounded over every string in the prompt-bearing fields (`messages`,
//! `input`, `instructions`, `prompt`, `tools`, `system`), plus 4 tokens per message and 3 for
//! the reply's priming, as OpenAI bills them. Two ways, same fields:
//! - [`estimate_bound`]: the strings' length in bytes. A BPE token covers at least one byte,
//!   so this is never below the real count, for any family's tokenizer, and costs nothing. The
//!   reserve stage holds this first.
//! - [`estimate`]: OpenAI's `o200k_base` tokenizer (exact for current OpenAI models; for other
//!   families a close estimate), ≈ 25 µs per KB. Used only when the bound does not fit (the
//!   budget or quota is close), and to bill a stream cut before the provider's usage.
//!
//! Output is the request's largest of
//! `max_tokens`, `max_completion_tokens`, `max_output_tokens` (or the model's
//! `max_output_tokens`) per completion, times `n`. The cost
//! prices all input at the full input price (no cache discount) and all output at the output
//! price: the most the call can cost.

use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Map, Value};

use crate::usage::{Pricing, TokenUsage};

/// Fields whose strings are prompt text.
const PROMPT_FIELDS: [&str; 6] = [
    "messages",
    "input",
    "instructions",
    "prompt",
    "tools",
    "system",
];

/// A worst-case token estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimate {
    /// Input tokens.
    pub input_tokens: i64,
    /// Output tokens at most (every completion of `n`).
    pub output_tokens: i64,
    /// Charges not priced by tokens (per-image prices), in nano-USD.
    pub fixed_nanos: i64,
    /// `input_tokens` was counted with the tokenizer (not the byte bound).
    pub counted: bool,
}

impl Estimate {
    /// The most this call can cost at `pricing`.
    pub fn cost_nanos(&self, pricing: &Pricing) -> i64 {
        pricing
            .cost_nanos(&TokenUsage {
                input: self.input_tokens,
                output: self.output_tokens,
                cached_input: 0,
                reasoning: 0,
                cache_creation: 0,
            })
            .saturating_add(self.fixed_nanos)
    }
}

/// Whether the tokenizer has been loaded in this process.
static LOADED: AtomicBool = AtomicBool::new(false);

/// Loads the tokenizer now (≈ 0.2 s and ≈ 44 MiB, once).
pub fn warm_up() {
    let _ = tiktoken_rs::o200k_base_singleton();
    LOADED.store(true, Ordering::Release);
}

/// Whether the tokenizer is loaded (it is loaded on first use, not at start).
pub fn is_loaded() -> bool {
    LOADED.load(Ordering::Acquire)
}

/// Loads the tokenizer on the blocking pool if it is not loaded yet. Async callers about to
/// count call it first: on a connection thread ([`crate::server::threads`]) a load inside
/// [`tokenizer`] would hold up every other connection of that thread for its ≈ 0.2 s.
pub async fn load() {
    if !is_loaded() {
        let _ = tokio::task::spawn_blocking(warm_up).await;
    }
}

/// The `o200k_base` tokenizer, loaded on first use.
///
/// Most requests never need it: holds take the byte bound first, and a stream is counted only
/// when it ends without the provider's usage. So it is not loaded at start (it is the largest
/// single item of the gateway's memory). The reserve stage loads it with [`load`] before it
/// counts a prompt. A first use elsewhere loads it here: on a multi-thread runtime in
/// [`tokio::task::block_in_place`], so the worker's other tasks move to another thread; on a
/// connection thread inline, once per process (a stream billed from its text before any prompt
/// was counted).
pub fn tokenizer() -> &'static tiktoken_rs::CoreBPE {
    if !is_loaded() {
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi_thread {
            tokio::task::block_in_place(warm_up);
        } else {
            warm_up();
        }
    }
    tiktoken_rs::o200k_base_singleton()
}

/// Tokens of `text` (o200k).
pub fn count_tokens(text: &str) -> usize {
    tokenizer().encode_ordinary(text).len()
}

fn count_strings(value: &Value, tokens: &mut i64, count: fn(&str) -> usize) {
    match value {
        Value::String(text) => {
            *tokens = tokens.saturating_add(i64::try_from(count(text)).unwrap_or(i64::MAX));
        }
        Value::Array(items) => items.iter().for_each(|v| count_strings(v, tokens, count)),
        Value::Object(map) => map.values().for_each(|v| count_strings(v, tokens, count)),
        _ => {}
    }
}

fn tokens_of(text: &str) -> usize {
    count_tokens(text)
}

/// Estimates a request body, counting the prompt with the tokenizer.
pub fn estimate(body: &Map<String, Value>, default_max_output: i64) -> Estimate {
    estimate_with(body, default_max_output, tokens_of, true)
}

/// Estimates a request body with the prompt bounded by its length in bytes (never below the
/// tokenizer's count; no tokenizer run).
pub fn estimate_bound(body: &Map<String, Value>, default_max_output: i64) -> Estimate {
    estimate_with(body, default_max_output, str::len, false)
}

fn estimate_with(
    body: &Map<String, Value>,
    default_max_output: i64,
    count: fn(&str) -> usize,
    counted: bool,
) -> Estimate {
    // One pass over the body's fields: each `Map::get` hashes its key with SipHash, and the
    // eleven lookups this took were about 2.6 k instructions per request.
    let mut input = 0;
    let mut messages = 0;
    let mut requested: Option<i64> = None;
    let mut completions = 1;
    for (field, value) in body {
        let field = field.as_str();
        if PROMPT_FIELDS.contains(&field) {
            count_strings(value, &mut input, count);
        }
        match field {
            "messages" => {
                messages = value
                    .as_array()
                    .map_or(0, |m| i64::try_from(m.len()).unwrap_or(0));
            }
            // The largest limit the client set (the reserve stage has refused invalid ones),
            // per completion, times the completions asked for (`n`: chat choices, images).
            "max_tokens" | "max_completion_tokens" | "max_output_tokens" => {
                if let Some(n) = value.as_i64().filter(|n| *n >= 0) {
                    requested = Some(requested.map_or(n, |r| r.max(n)));
                }
            }
            "n" => completions = value.as_i64().unwrap_or(1).max(1),
            _ => {}
        }
    }
    input += 4 * messages + 3;
    let output = requested
        .unwrap_or(default_max_output)
        .saturating_mul(completions);
    Estimate {
        input_tokens: input,
        output_tokens: output,
        fixed_nanos: 0,
        counted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn counts_prompt_text_with_message_overhead() {
        let body = map(json!({"model": "m", "max_tokens": 50, "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "hello world"}
        ]}));
        let e = estimate(&body, 4096);
        assert_eq!(e.output_tokens, 50);
        // "system" "You are terse." "user" "hello world" + 2 * 4 + 3.
        assert!(
            e.input_tokens >= 2 * 4 + 3 + 6 && e.input_tokens <= 2 * 4 + 3 + 12,
            "{e:?}"
        );
    }

    #[test]
    fn without_max_tokens_the_model_bound_applies() {
        let e = estimate(&map(json!({"input": "x"})), 1234);
        assert_eq!(e.output_tokens, 1234);
        let pricing = Pricing {
            input_nanos_per_mtok: 1_000_000_000,
            output_nanos_per_mtok: 2_000_000_000,
            cached_input_nanos_per_mtok: 0,
            cache_write_nanos_per_mtok: 0,
        };
        assert_eq!(e.cost_nanos(&pricing), e.input_tokens * 1000 + 1234 * 2000);
    }

    /// The estimate as it was computed before the one-pass read (a lookup per field), kept
    /// here as the reference the one pass must agree with.
    fn by_lookups(body: &Map<String, Value>, default_max_output: i64) -> (i64, i64) {
        let mut input = 0;
        for field in PROMPT_FIELDS {
            if let Some(value) = body.get(field) {
                count_strings(value, &mut input, tokens_of);
            }
        }
        let messages = body
            .get("messages")
            .and_then(Value::as_array)
            .map_or(0, |m| i64::try_from(m.len()).unwrap_or(0));
        input += 4 * messages + 3;
        let requested = ["max_tokens", "max_completion_tokens", "max_output_tokens"]
            .iter()
            .filter_map(|f| body.get(*f).and_then(Value::as_i64))
            .filter(|n| *n >= 0)
            .max();
        let completions = body.get("n").and_then(Value::as_i64).unwrap_or(1).max(1);
        let output = requested
            .unwrap_or(default_max_output)
            .saturating_mul(completions);
        (input, output)
    }

    #[test]
    fn one_pass_over_the_body_reads_what_the_field_lookups_read() {
        let bodies = [
            json!({}),
            json!({"model": "m", "messages": "not an array", "n": "two"}),
            json!({"max_tokens": 10, "max_completion_tokens": 30, "max_output_tokens": 20}),
            json!({"max_tokens": -5, "max_completion_tokens": 7.5, "max_output_tokens": "9"}),
            json!({"max_tokens": 0, "n": 0}),
            json!({"n": -3, "max_tokens": 8}),
            json!({"n": 4, "max_output_tokens": i64::MAX}),
            json!({"system": "be brief", "tools": [{"name": "t", "description": "does x"}],
                   "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                   "instructions": "and kind", "input": ["a", "b"], "prompt": "p"}),
        ];
        for body in bodies {
            let body = map(body);
            let e = estimate(&body, 4096);
            assert_eq!(
                (e.input_tokens, e.output_tokens),
                by_lookups(&body, 4096),
                "{body:?}"
            );
        }
    }

    #[test]
    fn n_chat_completions_are_held_as_n_completions() {
        let body = map(
            json!({"n": 3, "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}),
        );
        assert_eq!(estimate(&body, 4096).output_tokens, 300);
        let default = map(json!({"n": 2, "messages": [{"role": "user", "content": "hi"}]}));
        assert_eq!(estimate(&default, 50).output_tokens, 100);
    }

    #[test]
    fn the_byte_bound_is_never_below_the_tokenizer() {
        for text in [
            "hello world",
            "word ".repeat(500).as_str(),
            "fn main() { println!(\"{}\", 1 + 2); }",
            "日本語のテキストと emoji 🎉🎉 mixed",
            "a",
            "",
        ] {
            let body = map(json!({"messages": [{"role": "user", "content": text}],
                "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}));
            let exact = estimate(&body, 10);
            let bound = estimate_bound(&body, 10);
            assert!(bound.input_tokens >= exact.input_tokens, "{text:?}");
            assert_eq!(bound.output_tokens, exact.output_tokens);
            assert!(exact.counted && !bound.counted);
        }
    }

    #[test]
    fn a_long_prompt_counts_more_than_a_short_one() {
        let short = estimate(
            &map(json!({"messages": [{"role": "user", "content": "hi"}]})),
            0,
        );
        let long = estimate(
            &map(json!({"messages": [{"role": "user", "content": "word ".repeat(500)}]})),
            0,
        );
        assert!(long.input_tokens > short.input_tokens + 400);
    }
}
