//! Upstream stream decoders: each family's SSE events -> [`HubEvent`]s, one event at a time.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::{HubEvent, SseEvent};
use crate::translate::content::{object_to_arguments, str_of};
use crate::translate::usage::{from_anthropic, from_gemini, from_openai};
use crate::translate::{Dialect, ResponseContext, TranslateError, Usage, anthropic, gemini};

/// The decoder of one upstream stream.
pub(super) struct Decoder {
    dialect: Dialect,
    ctx: ResponseContext,
    usage: Usage,
    complete: bool,
    /// Tool calls started so far (hub indexes count from 0).
    tools: usize,
    /// OpenAI: upstream tool index -> hub index. Anthropic: block index -> open block.
    openai_tools: HashMap<u64, usize>,
    blocks: HashMap<u64, Block>,
    /// Anthropic usage fields merged from message_start and message_delta.
    anthropic_usage: Map<String, Value>,
}

/// An open Anthropic content block.
enum Block {
    Text,
    Thinking { text: String, signature: String },
    Tool { index: usize, args_seen: bool },
    Other,
}

impl Decoder {
    pub(super) fn new(dialect: Dialect, ctx: ResponseContext) -> Self {
        Decoder {
            dialect,
            ctx,
            usage: Usage::default(),
            complete: false,
            tools: 0,
            openai_tools: HashMap::new(),
            blocks: HashMap::new(),
            anthropic_usage: Map::new(),
        }
    }

    /// Whether the upstream sent its final event.
    pub(super) fn complete(&self) -> bool {
        self.complete
    }

    pub(super) fn usage(&self) -> Usage {
        self.usage
    }

    pub(super) fn push(
        &mut self,
        event: &SseEvent,
        out: &mut Vec<HubEvent>,
    ) -> Result<(), TranslateError> {
        let data = event.data.trim();
        if data.is_empty() {
            return Ok(());
        }
        if self.dialect == Dialect::OpenAiChat && data == "[DONE]" {
            self.complete = true;
            return Ok(());
        }
        let value: Value = serde_json::from_str(data).map_err(|e| {
            TranslateError::new(format!("the upstream sent an unreadable stream event: {e}"))
        })?;
        match self.dialect {
            Dialect::OpenAiChat => self.openai(&value, out),
            Dialect::Anthropic => self.anthropic(event.event.as_deref(), &value, out),
            Dialect::Gemini => match &value {
                Value::Array(items) => items.iter().for_each(|v| self.gemini(v, out)),
                single => self.gemini(single, out),
            },
        }
        Ok(())
    }

    fn openai(&mut self, chunk: &Value, out: &mut Vec<HubEvent>) {
        if let Some((message, status)) = error_message(chunk) {
            out.push(HubEvent::Error { message, status });
            return;
        }
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = from_openai(usage);
            out.push(HubEvent::Usage(self.usage));
        }
        let Some(choice) = chunk
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|c| {
                c.iter()
                    .find(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == 0)
            })
        else {
            return;
        };
        let delta = choice.get("delta").unwrap_or(&Value::Null);
        if let Some(reasoning) =
            str_of(delta, "reasoning_content").or_else(|| str_of(delta, "reasoning"))
            && !reasoning.is_empty()
        {
            out.push(HubEvent::Reasoning(reasoning.to_string()));
        }
        if let Some(text) = str_of(delta, "content").filter(|t| !t.is_empty()) {
            out.push(HubEvent::Text(text.to_string()));
        }
        for (position, call) in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let key = call
                .get("index")
                .and_then(Value::as_u64)
                .unwrap_or(position as u64);
            let function = call.get("function").unwrap_or(&Value::Null);
            let index = match self.openai_tools.get(&key) {
                Some(index) => *index,
                None => {
                    let index = self.tools;
                    self.tools += 1;
                    self.openai_tools.insert(key, index);
                    out.push(HubEvent::ToolStart {
                        index,
                        id: str_of(call, "id").unwrap_or("").to_string(),
                        name: self
                            .ctx
                            .names
                            .to_client(str_of(function, "name").unwrap_or("")),
                    });
                    index
                }
            };
            if let Some(fragment) = str_of(function, "arguments").filter(|a| !a.is_empty()) {
                out.push(HubEvent::ToolArgs {
                    index,
                    fragment: fragment.to_string(),
                });
            }
        }
        if let Some(reason) = str_of(choice, "finish_reason") {
            self.complete = true;
            out.push(HubEvent::Finish {
                reason: reason.to_string(),
                stop_sequence: str_of(choice, "stop_reason").map(str::to_string),
            });
        }
    }

    fn anthropic(&mut self, name: Option<&str>, event: &Value, out: &mut Vec<HubEvent>) {
        let kind = str_of(event, "type").or(name).unwrap_or("");
        match kind {
            "message_start" => {
                if let Some(Value::Object(usage)) =
                    event.get("message").and_then(|m| m.get("usage"))
                {
                    self.anthropic_usage = usage.clone();
                    self.usage = from_anthropic(&Value::Object(usage.clone()));
                    out.push(HubEvent::Usage(self.usage));
                }
            }
            "content_block_start" => {
                let index = event.get("index").and_then(Value::as_u64).unwrap_or(0);
                let block = event.get("content_block").unwrap_or(&Value::Null);
                let open = match str_of(block, "type") {
                    Some("text") => {
                        if let Some(text) = str_of(block, "text").filter(|t| !t.is_empty()) {
                            out.push(HubEvent::Text(text.to_string()));
                        }
                        Block::Text
                    }
                    Some("thinking") => {
                        let text = str_of(block, "thinking").unwrap_or("").to_string();
                        if !text.is_empty() {
                            out.push(HubEvent::Reasoning(text.clone()));
                        }
                        Block::Thinking {
                            text,
                            signature: str_of(block, "signature").unwrap_or("").to_string(),
                        }
                    }
                    Some("redacted_thinking") => {
                        out.push(HubEvent::ThinkingBlock(block.clone()));
                        Block::Other
                    }
                    Some("tool_use") => {
                        let tool = self.tools;
                        self.tools += 1;
                        out.push(HubEvent::ToolStart {
                            index: tool,
                            id: str_of(block, "id").unwrap_or("").to_string(),
                            name: self
                                .ctx
                                .names
                                .to_client(str_of(block, "name").unwrap_or("")),
                        });
                        // A block that starts with its whole input (no deltas follow).
                        let input = block
                            .get("input")
                            .filter(|i| i.as_object().is_some_and(|m| !m.is_empty()));
                        if let Some(input) = input {
                            out.push(HubEvent::ToolArgs {
                                index: tool,
                                fragment: object_to_arguments(Some(input)),
                            });
                        }
                        Block::Tool {
                            index: tool,
                            args_seen: input.is_some(),
                        }
                    }
                    _ => Block::Other,
                };
                self.blocks.insert(index, open);
            }
            "content_block_delta" => {
                let index = event.get("index").and_then(Value::as_u64).unwrap_or(0);
                let delta = event.get("delta").unwrap_or(&Value::Null);
                match (str_of(delta, "type"), self.blocks.get_mut(&index)) {
                    (Some("text_delta"), _) => {
                        if let Some(text) = str_of(delta, "text").filter(|t| !t.is_empty()) {
                            out.push(HubEvent::Text(text.to_string()));
                        }
                    }
                    (Some("thinking_delta"), block) => {
                        let text = str_of(delta, "thinking").unwrap_or("");
                        if let Some(Block::Thinking { text: acc, .. }) = block {
                            acc.push_str(text);
                        }
                        if !text.is_empty() {
                            out.push(HubEvent::Reasoning(text.to_string()));
                        }
                    }
                    (Some("signature_delta"), Some(Block::Thinking { signature, .. })) => {
                        signature.push_str(str_of(delta, "signature").unwrap_or(""));
                    }
                    (Some("input_json_delta"), Some(Block::Tool { index, args_seen })) => {
                        if let Some(fragment) =
                            str_of(delta, "partial_json").filter(|f| !f.is_empty())
                        {
                            *args_seen = true;
                            out.push(HubEvent::ToolArgs {
                                index: *index,
                                fragment: fragment.to_string(),
                            });
                        }
                    }
                    _ => {}
                }
            }
            "content_block_stop" => {
                let index = event.get("index").and_then(Value::as_u64).unwrap_or(0);
                match self.blocks.remove(&index) {
                    Some(Block::Tool {
                        index,
                        args_seen: false,
                    }) => {
                        out.push(HubEvent::ToolArgs {
                            index,
                            fragment: "{}".to_string(),
                        });
                    }
                    Some(Block::Thinking { text, signature }) => {
                        out.push(HubEvent::ThinkingBlock(serde_json::json!({
                            "type": "thinking", "thinking": text, "signature": signature,
                        })));
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(Value::Object(usage)) = event.get("usage") {
                    for (key, value) in usage {
                        if !value.is_null() {
                            self.anthropic_usage.insert(key.clone(), value.clone());
                        }
                    }
                    self.usage = from_anthropic(&Value::Object(self.anthropic_usage.clone()));
                    out.push(HubEvent::Usage(self.usage));
                }
                let delta = event.get("delta").unwrap_or(&Value::Null);
                if let Some(stop) = str_of(delta, "stop_reason") {
                    out.push(HubEvent::Finish {
                        reason: anthropic::finish_reason(stop),
                        stop_sequence: str_of(delta, "stop_sequence").map(str::to_string),
                    });
                }
            }
            "message_stop" => self.complete = true,
            "error" => {
                let (message, status) = error_message(event)
                    .unwrap_or_else(|| ("the upstream stream failed".to_string(), 500));
                out.push(HubEvent::Error { message, status });
            }
            _ => {}
        }
    }

    fn gemini(&mut self, chunk: &Value, out: &mut Vec<HubEvent>) {
        if let Some((message, status)) = error_message(chunk) {
            out.push(HubEvent::Error { message, status });
            return;
        }
        if let Some(usage) = chunk.get("usageMetadata").filter(|u| u.is_object()) {
            // Cumulative: the latest snapshot replaces the previous one.
            self.usage = from_gemini(usage);
            out.push(HubEvent::Usage(self.usage));
        }
        let candidate = chunk.get("candidates").and_then(|c| c.get(0));
        let parts = candidate
            .and_then(|c| c.get("content"))
            .and_then(|c| c.get("parts"))
            .and_then(Value::as_array);
        for part in parts.into_iter().flatten() {
            if let Some(call) = part.get("functionCall") {
                let index = self.tools;
                self.tools += 1;
                let id = match str_of(call, "id") {
                    Some(id) => match str_of(part, "thoughtSignature") {
                        Some(sig) => format!("{id}{}{sig}", gemini::THOUGHT_SEPARATOR),
                        None => id.to_string(),
                    },
                    None => gemini::call_id(&self.ctx, index + 1, str_of(part, "thoughtSignature")),
                };
                out.push(HubEvent::ToolStart {
                    index,
                    id,
                    name: self.ctx.names.to_client(str_of(call, "name").unwrap_or("")),
                });
                out.push(HubEvent::ToolArgs {
                    index,
                    fragment: object_to_arguments(call.get("args")),
                });
            } else if let Some(text) = str_of(part, "text").filter(|t| !t.is_empty()) {
                if part.get("thought") == Some(&Value::Bool(true)) {
                    out.push(HubEvent::Reasoning(text.to_string()));
                } else {
                    out.push(HubEvent::Text(text.to_string()));
                }
            }
        }
        let reason = candidate
            .and_then(|c| str_of(c, "finishReason"))
            .map(|r| gemini::finish_reason(r, self.tools > 0));
        let blocked = chunk
            .get("promptFeedback")
            .and_then(|f| str_of(f, "blockReason"))
            .map(|_| "content_filter".to_string());
        if let Some(reason) = reason.or(blocked) {
            self.complete = true;
            out.push(HubEvent::Finish {
                reason,
                stop_sequence: None,
            });
        }
    }
}

/// The message and HTTP-like status of an `{"error": ...}` object or an Anthropic `error`
/// event (the status picks the client family's error type).
fn error_message(value: &Value) -> Option<(String, u16)> {
    let error = value.get("error")?;
    if error.is_null() {
        return None;
    }
    let message = match error {
        Value::String(s) => s.clone(),
        other => str_of(other, "message")
            .unwrap_or("the upstream stream failed")
            .to_string(),
    };
    let status = match (
        error.get("code").and_then(Value::as_u64),
        str_of(error, "type"),
    ) {
        (Some(code), _) if (400..600).contains(&code) => code as u16,
        (_, Some(kind)) => match kind {
            "invalid_request_error" => 400,
            "authentication_error" => 401,
            "permission_error" => 403,
            "not_found_error" => 404,
            "request_too_large" => 413,
            "rate_limit_error" => 429,
            "overloaded_error" => 529,
            "timeout_error" => 504,
            _ => 500,
        },
        _ => 500,
    };
    Some((message, status))
}
