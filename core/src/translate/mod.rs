//! Pure translation between API families (OpenAI chat, Anthropic messages, Gemini generateContent).
//!
//! # Hub design
//!
//! OpenAI Chat Completions is the hub shape. Every family has two converters per direction of
//! travel: *to the hub* and *from the hub*. A translation from `A` to `B` is `A -> hub -> B`
//! (Anthropic -> Gemini is Anthropic -> hub -> Gemini), so adding a family means writing its two
//! converters for requests, answers and stream events, nothing else.
//!
//! The hub is OpenAI-shaped JSON with a few extensions that only live inside the hub and are
//! removed before anything goes to an OpenAI upstream:
//! - assistant messages and answers carry `reasoning_content` (thinking text, the vLLM/DeepSeek
//!   field) and `thinking_blocks` (Anthropic thinking / redacted_thinking blocks, replayed
//!   byte-identical when a conversation goes back to Anthropic);
//! - a choice carries `stop_reason` with the matched stop sequence (vLLM's convention);
//! - usage `prompt_tokens_details.cache_creation_tokens` counts Anthropic cache writes;
//! - a tool message may carry `is_error` (Anthropic `tool_result.is_error`).
//!
//! Conventions visible to clients:
//! - tool arguments that are not a JSON object (malformed, truncated) are kept, not dropped:
//!   Anthropic `input` / Gemini `args` get `{"__raw_arguments": "<the string>"}`, which maps back
//!   to the same string; `""` becomes `{}`;
//! - Gemini function calls get ids `call_<request_id>_<n>`; a Gemini `thoughtSignature` rides in
//!   the id after `__thought__` and goes back to its own field on the next Gemini request;
//! - unknown stop reasons stay visible (`pause_turn`, `malformed_function_call`), the matched
//!   stop sequence is kept (`choices[].stop_reason` in the hub, `stop_sequence` for Anthropic).
//!
//! # Contract (what the endpoints call)
//!
//! - [`request`]: client body in `from` -> upstream body in `to`, plus the [`ToolNames`] map of
//!   tool names that had to be shortened for the upstream (keep it for the answer).
//! - [`response`]: upstream JSON answer -> client answer; [`usage`]: normalised [`Usage`] of an
//!   answer in its own dialect (each token class counted once: `input` includes cache reads and
//!   writes, `output` includes reasoning).
//! - [`StreamTranslator`]: one upstream SSE event in, zero or more client events out, O(1) state
//!   per stream apart from the current tool call's arguments when the client is Gemini (Gemini
//!   sends each function call whole). An upstream error event (or [`StreamTranslator::fail`])
//!   ends the client stream with the client family's error event, never with a clean end. An
//!   upstream stream that stops before its final event (Anthropic `message_stop`, OpenAI
//!   `[DONE]`/`finish_reason`, Gemini `finishReason`) is a cut: [`StreamTranslator::finish`]
//!   then reports it as an error too.
//! - [`error`]: an upstream error body -> the client family's envelope; [`client_status`] the
//!   status to send with it.
//! - [`unified_answer`]: a hub answer (what [`response`] returns for `to = OpenAiChat`) -> the
//!   unified endpoint's normalised object (reference spec 2.3).
//! - [`JsonArrayFramer`] frames Gemini's default (no `alt=sse`) streamed JSON array; [`SseParser`]
//!   splits upstream bytes into [`SseEvent`]s and [`SseEvent::encode`] writes them.
//!
//! Same-family calls are not translated (the endpoint passes them through); if `from == to`
//! [`request`] only swaps the model and applies the output cap, and [`response`] returns the
//! body unchanged.

mod anthropic;
mod content;
mod error;
mod gemini;
mod names;
mod openai;
mod stream;
mod unified;
mod usage;

#[cfg(test)]
mod tests;

use serde_json::Value;

pub use error::{client_status, error};
pub use names::ToolNames;
pub use stream::{JsonArrayFramer, SseEvent, SseParser, StreamTranslator};
pub use unified::unified_answer;
pub use usage::{Usage, usage};

/// The API shapes tollgate translates between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// OpenAI Chat Completions (`/v1/chat/completions`), the hub shape.
    OpenAiChat,
    /// Anthropic Messages (`/v1/messages`).
    Anthropic,
    /// Gemini `generateContent` / `streamGenerateContent`.
    Gemini,
}

impl Dialect {
    /// The family's lower-case name, as in configs and usage records.
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::OpenAiChat => "openai",
            Dialect::Anthropic => "anthropic",
            Dialect::Gemini => "gemini",
        }
    }
}

/// A request or answer that cannot be translated (becomes 400 invalid_request / 502).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct TranslateError(pub String);

impl TranslateError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        TranslateError(message.into())
    }
}

/// What a request translation needs beyond the body.
#[derive(Debug, Clone)]
pub struct RequestOptions {
    /// Model id to put in the body (Gemini: ignored, it goes in the URL).
    pub upstream_model: String,
    /// Output cap to enforce upstream (ledger hold); `None` = keep the client's.
    pub max_tokens: Option<u64>,
    /// Anthropic requires `max_tokens`: used when the client sent none and `max_tokens` is None.
    pub default_max_tokens: u64,
    /// The client asked for a stream.
    pub stream: bool,
}

/// A translated request: the upstream body, and the tool-name map needed to map answers back.
#[derive(Debug, Clone)]
pub struct TranslatedRequest {
    /// The body to send upstream.
    pub body: Value,
    /// Tool names shortened for the upstream, to map back in answers and streams.
    pub names: ToolNames,
}

/// What a response translation needs.
#[derive(Debug, Clone)]
pub struct ResponseContext {
    /// The model name the client asked for (echoed in answers).
    pub client_model: String,
    /// Used for ids the target family needs (`chatcmpl-...`, `msg_...`, tool-call ids).
    pub request_id: String,
    /// Unix seconds for OpenAI `created`.
    pub created: i64,
    /// OpenAI stream: emit the `choices: []` usage chunk.
    pub include_usage: bool,
    /// The tool-name map from [`request`].
    pub names: ToolNames,
}

/// Translates a client request body in `from` into the upstream body in `to`.
pub fn request(
    from: Dialect,
    to: Dialect,
    body: &Value,
    opts: &RequestOptions,
) -> Result<TranslatedRequest, TranslateError> {
    if !body.is_object() {
        return Err(TranslateError::new(
            "the request body must be a JSON object",
        ));
    }
    let mut names = ToolNames::default();
    if from == to {
        let body = openai::same_family_request(from, body, opts);
        return Ok(TranslatedRequest { body, names });
    }
    let hub = match from {
        Dialect::OpenAiChat => body.clone(),
        Dialect::Anthropic => anthropic::request_to_hub(body, opts)?,
        Dialect::Gemini => gemini::request_to_hub(body, opts)?,
    };
    let body = match to {
        Dialect::OpenAiChat => openai::request_from_hub(hub, opts, &mut names)?,
        Dialect::Anthropic => anthropic::request_from_hub(&hub, opts, &mut names)?,
        Dialect::Gemini => gemini::request_from_hub(&hub, opts, &mut names)?,
    };
    Ok(TranslatedRequest { body, names })
}

/// Translates an upstream JSON answer in `from` into the client answer in `to`.
pub fn response(
    from: Dialect,
    to: Dialect,
    body: &Value,
    ctx: &ResponseContext,
) -> Result<Value, TranslateError> {
    if from == to {
        return Ok(body.clone());
    }
    let hub = match from {
        Dialect::OpenAiChat => openai::answer_to_hub(body, ctx)?,
        Dialect::Anthropic => anthropic::answer_to_hub(body, ctx)?,
        Dialect::Gemini => gemini::answer_to_hub(body, ctx)?,
    };
    match to {
        Dialect::OpenAiChat => Ok(hub),
        Dialect::Anthropic => anthropic::answer_from_hub(&hub, ctx),
        Dialect::Gemini => gemini::answer_from_hub(&hub, ctx),
    }
}
