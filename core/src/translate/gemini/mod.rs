//! Gemini generateContent: the two hub converters, tool-call ids and schema cleanup.
//!
//! Gemini function calls carry no id: tollgate invents `call_<request id>_<n>` (unique per
//! answer, deterministic). Gemini 3 needs its `thoughtSignature` back on the next turn, and
//! OpenAI/Anthropic clients echo only the tool-call id: the signature rides inside the id after
//! [`THOUGHT_SEPARATOR`] and is split off again before the request goes upstream.

mod request;
mod response;
mod schema;

pub(crate) use request::{from_hub as request_from_hub, to_hub as request_to_hub};
pub(crate) use response::{
    finish_reason, from_hub as answer_from_hub, function_call_part, gemini_reason,
    to_hub as answer_to_hub,
};

use super::ResponseContext;

/// Separates a tool-call id from the Gemini thought signature carried inside it.
pub(crate) const THOUGHT_SEPARATOR: &str = "__thought__";

/// The id of the `n`-th function call of an answer or stream (1-based).
pub(crate) fn call_id(ctx: &ResponseContext, n: usize, signature: Option<&str>) -> String {
    match signature {
        Some(signature) => format!("call_{}_{n}{THOUGHT_SEPARATOR}{signature}", ctx.request_id),
        None => format!("call_{}_{n}", ctx.request_id),
    }
}

/// A tool-call id -> (the id proper, the thought signature carried in it).
pub(crate) fn split_call_id(id: &str) -> (&str, Option<&str>) {
    match id.split_once(THOUGHT_SEPARATOR) {
        Some((id, signature)) => (id, Some(signature)),
        None => (id, None),
    }
}
