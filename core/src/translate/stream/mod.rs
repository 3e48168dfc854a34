//! Stream translation: upstream SSE events -> hub events -> the client family's SSE events.
//!
//! A decoder per upstream family turns each event into [`HubEvent`]s (text, reasoning, tool-call
//! start and argument fragments, usage snapshots, finish, error); an encoder per client family
//! writes them out. Both are small state machines: nothing waits for the end of the stream.

mod decode;
mod encode_anthropic;
mod encode_gemini;
mod encode_openai;
mod sse;

use serde_json::Value;

pub use sse::{JsonArrayFramer, SseEvent, SseParser};

use super::error::envelope;
use super::{Dialect, ResponseContext, TranslateError, Usage};
use decode::Decoder;
use encode_anthropic::AnthropicEncoder;
use encode_gemini::GeminiEncoder;
use encode_openai::OpenAiEncoder;

/// One step of an answer, in no family's shape.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum HubEvent {
    /// Usage so far (a cumulative snapshot, not an increment).
    Usage(Usage),
    /// Answer text.
    Text(String),
    /// Reasoning (thinking) text.
    Reasoning(String),
    /// A complete Anthropic thinking block (with its signature) or redacted_thinking block.
    ThinkingBlock(Value),
    /// A tool call starts: `index` counts calls from 0 in stream order.
    ToolStart {
        index: usize,
        id: String,
        name: String,
    },
    /// A fragment of a tool call's JSON arguments.
    ToolArgs { index: usize, fragment: String },
    /// The answer ended: OpenAI finish reason and the matched stop sequence.
    Finish {
        reason: String,
        stop_sequence: Option<String>,
    },
    /// The upstream reported an error mid-stream (status: what its type means in HTTP terms).
    Error { message: String, status: u16 },
}

enum Encoder {
    /// Same family: upstream events go out unchanged, except the OpenAI usage chunk when the
    /// client did not ask for it (tollgate always asks the upstream, to bill).
    Passthrough {
        drop_usage_chunk: bool,
    },
    OpenAi(OpenAiEncoder),
    Anthropic(AnthropicEncoder),
    Gemini(GeminiEncoder),
}

/// Translates an upstream stream (as SSE events; Gemini upstream streams are always requested
/// with alt=sse) into the client family's SSE events, event by event, never buffering the
/// whole stream.
pub struct StreamTranslator {
    decoder: Decoder,
    encoder: Encoder,
    to: Dialect,
    failed: bool,
    ended: bool,
    hub: Vec<HubEvent>,
    /// The output text, reasoning and tool arguments seen so far (up to [`MAX_PRODUCED`]
    /// bytes; the rest is counted in `produced_overflow`), to bill a stream that ends before
    /// the upstream reported its usage.
    produced: String,
    produced_overflow: usize,
}

/// The most produced text kept for counting; beyond it, bytes are counted at 4 per token.
const MAX_PRODUCED: usize = 4 * 1024 * 1024;

impl StreamTranslator {
    /// A translator for one stream from an upstream in `from` to a client in `to`.
    pub fn new(from: Dialect, to: Dialect, ctx: ResponseContext) -> Self {
        let encoder = if from == to {
            Encoder::Passthrough {
                drop_usage_chunk: to == Dialect::OpenAiChat && !ctx.include_usage,
            }
        } else {
            match to {
                Dialect::OpenAiChat => Encoder::OpenAi(OpenAiEncoder::new(&ctx)),
                Dialect::Anthropic => Encoder::Anthropic(AnthropicEncoder::new(&ctx)),
                Dialect::Gemini => Encoder::Gemini(GeminiEncoder::new(&ctx)),
            }
        };
        StreamTranslator {
            decoder: Decoder::new(from, ctx),
            encoder,
            to,
            failed: false,
            ended: false,
            hub: Vec::new(),
            produced: String::new(),
            produced_overflow: 0,
        }
    }

    /// One upstream event in, zero or more client events out. An upstream error event yields
    /// the client family's error event(s) and ends the client stream.
    pub fn push(&mut self, event: &SseEvent) -> Result<Vec<SseEvent>, TranslateError> {
        if self.ended {
            return Ok(Vec::new());
        }
        self.hub.clear();
        self.decoder.push(event, &mut self.hub)?;
        for item in &self.hub {
            let text = match item {
                HubEvent::Text(t) | HubEvent::Reasoning(t) => t,
                HubEvent::ToolArgs { fragment, .. } => fragment,
                _ => continue,
            };
            if self.produced.len() + text.len() <= MAX_PRODUCED {
                self.produced.push_str(text);
            } else {
                self.produced_overflow += text.len();
            }
        }
        let mut out = Vec::new();
        if let Encoder::Passthrough { drop_usage_chunk } = self.encoder {
            if self.hub.iter().any(|e| matches!(e, HubEvent::Error { .. })) {
                self.failed = true;
                self.ended = true;
            }
            let usage_only = drop_usage_chunk
                && self.hub.iter().any(|e| matches!(e, HubEvent::Usage(_)))
                && serde_json::from_str::<Value>(&event.data).is_ok_and(|v| {
                    v.get("choices")
                        .and_then(Value::as_array)
                        .is_some_and(Vec::is_empty)
                });
            if !usage_only {
                out.push(event.clone());
            }
            return Ok(out);
        }
        let hub = std::mem::take(&mut self.hub);
        for item in &hub {
            if let HubEvent::Error { message, status } = item {
                self.failed = true;
                out.extend(self.fail_with(message, *status));
                break;
            }
            match &mut self.encoder {
                Encoder::Passthrough { .. } => {}
                Encoder::OpenAi(e) => e.push(item, &mut out),
                Encoder::Anthropic(e) => e.push(item, &mut out),
                Encoder::Gemini(e) => e.push(item, &mut out),
            }
        }
        self.hub = hub;
        Ok(out)
    }

    /// The upstream stream ended cleanly: closing events (OpenAI usage chunk + `[DONE]`,
    /// Anthropic `message_delta` + `message_stop` if not yet sent, Gemini the final chunk with
    /// its finish reason). If the upstream never sent its final event, the stream was cut: the
    /// client gets an error instead (see [`fail`](Self::fail)).
    pub fn finish(&mut self) -> Vec<SseEvent> {
        if self.ended {
            return Vec::new();
        }
        if !self.decoder.complete() {
            return self.fail("the upstream stream ended before its final event");
        }
        self.ended = true;
        let usage = self.decoder.usage();
        let mut out = Vec::new();
        match &mut self.encoder {
            Encoder::Passthrough { .. } => {}
            Encoder::OpenAi(e) => e.finish(&usage, &mut out),
            Encoder::Anthropic(e) => e.finish(&usage, &mut out),
            Encoder::Gemini(e) => e.finish(&usage, &mut out),
        }
        out
    }

    /// The upstream stream failed (mid-stream error event or a cut): the client family's error
    /// event(s), never a clean end (no `[DONE]`, no `message_stop`). Only the first call emits.
    pub fn fail(&mut self, message: &str) -> Vec<SseEvent> {
        self.fail_with(message, 502)
    }

    fn fail_with(&mut self, message: &str, status: u16) -> Vec<SseEvent> {
        if self.ended {
            return Vec::new();
        }
        self.ended = true;
        self.failed = true;
        vec![error_event(self.to, message, status)]
    }

    /// Usage seen so far (for billing on a cut or error).
    pub fn usage(&self) -> Usage {
        self.decoder.usage()
    }

    /// Output tokens the upstream produced so far, counted from its text, reasoning and tool
    /// arguments (o200k; for a stream cut or blocked before the upstream reported its usage).
    pub fn produced_tokens(&self) -> i64 {
        let counted = crate::spend::estimate::count_tokens(&self.produced);
        i64::try_from(counted + self.produced_overflow.div_ceil(4)).unwrap_or(i64::MAX)
    }

    /// Whether the client stream ended in an error: the upstream reported an error event
    /// mid-stream, or the stream was cut ([`finish`](Self::finish) before the upstream's final
    /// event, or [`fail`](Self::fail)). Record such a stream as failed, never as complete.
    pub fn failed(&self) -> bool {
        self.failed
    }
}

/// The client family's mid-stream error event: its error envelope as one SSE event.
fn error_event(to: Dialect, message: &str, status: u16) -> SseEvent {
    let body = envelope(to, status, message, Some("upstream_error")).to_string();
    match to {
        Dialect::Anthropic => SseEvent::named("error", body),
        Dialect::OpenAiChat | Dialect::Gemini => SseEvent::data(body),
    }
}
