//! Hub events -> Gemini `streamGenerateContent` chunks (each a whole GenerateContentResponse;
//! a function call goes out whole, as Gemini sends it, once its arguments are complete).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{HubEvent, SseEvent};
use crate::translate::gemini::{function_call_part, gemini_reason};
use crate::translate::usage::to_gemini;
use crate::translate::{ResponseContext, Usage};

pub(super) struct GeminiEncoder {
    model: String,
    response_id: String,
    /// Tool calls whose arguments are still arriving: hub index -> (id, name, arguments).
    tools: BTreeMap<usize, (String, String, String)>,
    reason: Option<String>,
}

impl GeminiEncoder {
    pub(super) fn new(ctx: &ResponseContext) -> Self {
        GeminiEncoder {
            model: ctx.client_model.clone(),
            response_id: ctx.request_id.clone(),
            tools: BTreeMap::new(),
            reason: None,
        }
    }

    fn chunk(&self, parts: Vec<Value>, finish: Option<&str>, usage: Option<&Usage>) -> SseEvent {
        let mut candidate = json!({"content": {"role": "model", "parts": parts}, "index": 0});
        if let Some(reason) = finish {
            candidate["finishReason"] = json!(gemini_reason(reason));
        }
        let mut chunk = json!({"candidates": [candidate]});
        if let Some(usage) = usage {
            chunk["usageMetadata"] = to_gemini(usage);
        }
        chunk["modelVersion"] = json!(self.model);
        chunk["responseId"] = json!(self.response_id);
        SseEvent::data(chunk.to_string())
    }

    /// The buffered tool calls as functionCall parts.
    fn drain_tools(&mut self) -> Vec<Value> {
        std::mem::take(&mut self.tools)
            .into_values()
            .map(|(id, name, arguments)| {
                function_call_part(
                    &json!({"id": id, "function": {"name": name, "arguments": arguments}}),
                )
            })
            .collect()
    }

    pub(super) fn push(&mut self, event: &HubEvent, out: &mut Vec<SseEvent>) {
        match event {
            HubEvent::Usage(_) | HubEvent::Error { .. } | HubEvent::ThinkingBlock(_) => {}
            HubEvent::Text(text) => out.push(self.chunk(vec![json!({"text": text})], None, None)),
            HubEvent::Reasoning(text) => {
                out.push(self.chunk(vec![json!({"text": text, "thought": true})], None, None));
            }
            HubEvent::ToolStart { index, id, name } => {
                self.tools
                    .insert(*index, (id.clone(), name.clone(), String::new()));
            }
            HubEvent::ToolArgs { index, fragment } => {
                if let Some((_, _, arguments)) = self.tools.get_mut(index) {
                    arguments.push_str(fragment);
                }
            }
            HubEvent::Finish { reason, .. } => self.reason = Some(reason.clone()),
        }
    }

    pub(super) fn finish(&mut self, usage: &Usage, out: &mut Vec<SseEvent>) {
        let mut parts = self.drain_tools();
        if parts.is_empty() {
            parts.push(json!({"text": ""}));
        }
        let reason = self.reason.take().unwrap_or_else(|| "stop".to_string());
        out.push(self.chunk(parts, Some(&reason), Some(usage)));
    }
}
