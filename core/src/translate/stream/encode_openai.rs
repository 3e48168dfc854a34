//! Hub events -> OpenAI `chat.completion.chunk` events (`[DONE]` at a clean end only).

use serde_json::{Value, json};

use super::{HubEvent, SseEvent};
use crate::translate::anthropic::completion_id;
use crate::translate::usage::to_openai;
use crate::translate::{ResponseContext, Usage};

pub(super) struct OpenAiEncoder {
    id: String,
    created: i64,
    model: String,
    include_usage: bool,
    role_sent: bool,
    finished: bool,
}

impl OpenAiEncoder {
    pub(super) fn new(ctx: &ResponseContext) -> Self {
        OpenAiEncoder {
            id: completion_id(ctx),
            created: ctx.created,
            model: ctx.client_model.clone(),
            include_usage: ctx.include_usage,
            role_sent: false,
            finished: false,
        }
    }

    fn chunk(&self, choices: Value, usage: Option<Value>) -> SseEvent {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if let Some(usage) = usage {
            chunk["usage"] = usage;
        }
        SseEvent::data(chunk.to_string())
    }

    fn delta(&mut self, mut delta: Value, out: &mut Vec<SseEvent>) {
        if !self.role_sent {
            self.role_sent = true;
            delta["role"] = json!("assistant");
        }
        let choice = json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": null}]);
        out.push(self.chunk(choice, None));
    }

    pub(super) fn push(&mut self, event: &HubEvent, out: &mut Vec<SseEvent>) {
        match event {
            HubEvent::Usage(_) | HubEvent::Error { .. } => {}
            HubEvent::Text(text) => self.delta(json!({"content": text}), out),
            HubEvent::Reasoning(text) => self.delta(json!({"reasoning_content": text}), out),
            HubEvent::ThinkingBlock(block) => self.delta(json!({"thinking_blocks": [block]}), out),
            HubEvent::ToolStart { index, id, name } => self.delta(
                json!({"tool_calls": [{"index": index, "id": id, "type": "function",
                    "function": {"name": name, "arguments": ""}}]}),
                out,
            ),
            HubEvent::ToolArgs { index, fragment } => self.delta(
                json!({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}),
                out,
            ),
            HubEvent::Finish {
                reason,
                stop_sequence,
            } => {
                if self.finished {
                    return;
                }
                self.finished = true;
                if !self.role_sent {
                    self.delta(json!({"content": ""}), out);
                }
                let mut choice =
                    json!({"index": 0, "delta": {}, "logprobs": null, "finish_reason": reason});
                if let Some(sequence) = stop_sequence {
                    choice["stop_reason"] = json!(sequence);
                }
                out.push(self.chunk(json!([choice]), None));
            }
        }
    }

    pub(super) fn finish(&mut self, usage: &Usage, out: &mut Vec<SseEvent>) {
        if !self.finished {
            self.push(
                &HubEvent::Finish {
                    reason: "stop".into(),
                    stop_sequence: None,
                },
                out,
            );
        }
        if self.include_usage {
            out.push(self.chunk(json!([]), Some(to_openai(usage))));
        }
        out.push(SseEvent::data("[DONE]"));
    }
}
