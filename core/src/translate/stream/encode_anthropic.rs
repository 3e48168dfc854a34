//! Hub events -> the Anthropic event sequence (`message_start`, content blocks,
//! `message_delta`, `message_stop`).

use std::collections::HashMap;

use serde_json::{Value, json};

use super::{HubEvent, SseEvent};
use crate::translate::anthropic::{message_id, stop_reason};
use crate::translate::usage::to_anthropic;
use crate::translate::{ResponseContext, Usage};

/// The block currently open on the client stream.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Open {
    Text,
    Thinking,
    Tool(usize),
}

pub(super) struct AnthropicEncoder {
    id: String,
    model: String,
    started: bool,
    open: Option<(Open, usize)>,
    next_block: usize,
    /// hub tool index -> Anthropic block index.
    tools: HashMap<usize, usize>,
    stop: Option<(String, Option<String>)>,
    usage: Usage,
}

fn event(name: &str, data: Value) -> SseEvent {
    SseEvent::named(name, data.to_string())
}

impl AnthropicEncoder {
    pub(super) fn new(ctx: &ResponseContext) -> Self {
        AnthropicEncoder {
            id: message_id(ctx),
            model: ctx.client_model.clone(),
            started: false,
            open: None,
            next_block: 0,
            tools: HashMap::new(),
            stop: None,
            usage: Usage::default(),
        }
    }

    fn start(&mut self, out: &mut Vec<SseEvent>) {
        if self.started {
            return;
        }
        self.started = true;
        let mut usage = to_anthropic(&self.usage);
        usage["output_tokens"] = json!(0);
        out.push(event(
            "message_start",
            json!({"type": "message_start", "message": {
                "id": self.id, "type": "message", "role": "assistant", "model": self.model,
                "content": [], "stop_reason": null, "stop_sequence": null, "usage": usage,
            }}),
        ));
    }

    fn close(&mut self, out: &mut Vec<SseEvent>) {
        if let Some((_, index)) = self.open.take() {
            out.push(event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            ));
        }
    }

    /// Makes `kind` the open block (closing another), starting it with `block`.
    fn open(&mut self, kind: Open, block: Value, out: &mut Vec<SseEvent>) -> usize {
        self.start(out);
        if let Some((open, index)) = self.open
            && open == kind
        {
            return index;
        }
        self.close(out);
        let index = self.next_block;
        self.next_block += 1;
        out.push(event(
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": block}),
        ));
        self.open = Some((kind, index));
        index
    }

    fn delta(out: &mut Vec<SseEvent>, index: usize, delta: Value) {
        out.push(event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": index, "delta": delta}),
        ));
    }

    pub(super) fn push(&mut self, hub: &HubEvent, out: &mut Vec<SseEvent>) {
        match hub {
            HubEvent::Usage(usage) => self.usage = *usage,
            HubEvent::Error { .. } => {}
            HubEvent::Text(text) => {
                let index = self.open(Open::Text, json!({"type": "text", "text": ""}), out);
                Self::delta(out, index, json!({"type": "text_delta", "text": text}));
            }
            HubEvent::Reasoning(text) => {
                let index = self.open(
                    Open::Thinking,
                    json!({"type": "thinking", "thinking": "", "signature": ""}),
                    out,
                );
                Self::delta(
                    out,
                    index,
                    json!({"type": "thinking_delta", "thinking": text}),
                );
            }
            HubEvent::ThinkingBlock(block) => {
                if let (Some((Open::Thinking, index)), Some(signature)) =
                    (self.open, block.get("signature").and_then(Value::as_str))
                {
                    Self::delta(
                        out,
                        index,
                        json!({"type": "signature_delta", "signature": signature}),
                    );
                } else if block.get("type").and_then(Value::as_str) == Some("redacted_thinking") {
                    self.start(out);
                    self.close(out);
                    let index = self.next_block;
                    self.next_block += 1;
                    out.push(event(
                        "content_block_start",
                        json!({"type": "content_block_start", "index": index, "content_block": block}),
                    ));
                    out.push(event(
                        "content_block_stop",
                        json!({"type": "content_block_stop", "index": index}),
                    ));
                }
            }
            HubEvent::ToolStart { index, id, name } => {
                self.start(out);
                self.close(out);
                let block = json!({"type": "tool_use", "id": id, "name": name, "input": {}});
                let anthropic = self.open(Open::Tool(*index), block, out);
                self.tools.insert(*index, anthropic);
            }
            HubEvent::ToolArgs { index, fragment } => {
                if let Some(block) = self.tools.get(index) {
                    Self::delta(
                        out,
                        *block,
                        json!({"type": "input_json_delta", "partial_json": fragment}),
                    );
                }
            }
            HubEvent::Finish {
                reason,
                stop_sequence,
            } => {
                self.start(out);
                self.close(out);
                self.stop = Some((reason.clone(), stop_sequence.clone()));
            }
        }
    }

    pub(super) fn finish(&mut self, usage: &Usage, out: &mut Vec<SseEvent>) {
        self.usage = *usage;
        self.start(out);
        self.close(out);
        let (reason, sequence) = self
            .stop
            .take()
            .unwrap_or_else(|| ("stop".to_string(), None));
        out.push(event(
            "message_delta",
            json!({"type": "message_delta",
                "delta": {"stop_reason": stop_reason(&reason, sequence.as_deref()), "stop_sequence": sequence},
                "usage": to_anthropic(usage)}),
        ));
        out.push(event("message_stop", json!({"type": "message_stop"})));
    }
}
