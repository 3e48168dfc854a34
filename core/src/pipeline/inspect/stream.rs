//! The stream phase: a sliding window per choice (or content block, or candidate) over SSE
//! answers, so a value split across two chunks is seen whole without buffering the stream.
//! Every streamed shape the gateway relays is read in its own form: OpenAI chat and legacy
//! completion chunks, Responses API events, Anthropic Messages events and Gemini
//! `streamGenerateContent` chunks ([`native`]); masks are written back in that form, and a
//! block ends the stream with that family's error event.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use serde_json::{Value, json};

use super::Guards;
use super::sse::{event_end, floor_boundary, parse_event, render_event};
use super::verdict::{Outcome, categories, failed, validate};
use crate::error::{Family, GatewayError, GuardrailError};
use crate::pipeline::Endpoint;
use crate::plugins::host::{elapsed_us, wit};
use crate::plugins::views::{self, TextMap};
use crate::plugins::{FailureMode, Phase, Plugin, metrics};

mod native;

/// The event shape of the client's stream, which the window reads and writes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shape {
    /// OpenAI chat completion chunks (and legacy completion chunks, `choices[].text`): the
    /// chat, completions, unified and vLLM endpoints.
    Chat,
    /// OpenAI Responses API events.
    Responses,
    /// Anthropic Messages events (`content_block_delta` and friends).
    Anthropic,
    /// Gemini `streamGenerateContent` chunks (`candidates[].content.parts[]`).
    Gemini,
}

impl Shape {
    /// The shape of the stream a client of `endpoint` (a path of [`Endpoint::path`]) reads.
    pub(super) fn of(endpoint: &str) -> Shape {
        // `/v1/responses` and vLLM's `/v1/vllm/responses`.
        if endpoint.ends_with("/responses") {
            Shape::Responses
        } else if endpoint == Endpoint::Messages.path() {
            Shape::Anthropic
        } else if endpoint == Endpoint::GeminiStream.path() {
            Shape::Gemini
        } else {
            Shape::Chat
        }
    }

    /// The family whose error envelope ends a blocked stream.
    fn family(self) -> Family {
        match self {
            Shape::Chat | Shape::Responses => Family::OpenAi,
            Shape::Anthropic => Family::Anthropic,
            Shape::Gemini => Family::Gemini,
        }
    }
}

/// Per-plugin totals over one stream, for the usage record.
#[derive(Debug, Default)]
pub(super) struct PluginStats {
    calls: u64,
    elapsed_us: i64,
    findings: BTreeMap<String, u64>,
    outcome: &'static str,
    failure: Option<&'static str>,
    max_score: Option<f64>,
}

/// The stream window of a choice, candidate or content block: its `index` field, or `fallback`
/// (its position) when absent. An index past u32 is not truncated onto another one's window.
pub(super) fn window_index(item: &Value, fallback: usize) -> u32 {
    item.get("index")
        .and_then(Value::as_u64)
        .and_then(|i| u32::try_from(i).ok())
        .unwrap_or_else(|| u32::try_from(fallback).unwrap_or(u32::MAX))
}

pub(super) fn rank(outcome: &str) -> u8 {
    match outcome {
        "deny" | "error" => 3,
        "fail_open" => 2,
        "rewrite" => 1,
        _ => 0,
    }
}

/// What the stream guard produced for one input.
#[derive(Debug)]
pub enum GuardOutput {
    /// Relay these bytes (possibly empty).
    Pass(Bytes),
    /// Relay these bytes (the error event), then end the stream; `code` is recorded.
    Block {
        /// The final bytes.
        bytes: Bytes,
        /// The error code.
        code: String,
    },
}

/// The window slot of a chat choice's reasoning text (slot 0 is its text, `k + 1` tool call `k`).
const REASONING: u32 = u32::MAX;

/// A sliding window over one choice of the answer.
#[derive(Debug, Default)]
pub(super) struct Window {
    held: String,
    /// The last event that carried text for this window, to re-emit held text at the end.
    template: Option<Value>,
    /// Where the text goes in `template` (Anthropic and Gemini events, as a JSON pointer).
    pointer: Option<&'static str>,
}

/// The state that moves into each inspection future.
pub(super) struct Core {
    plugins: Vec<Arc<Plugin>>,
    /// Plugins that failed open in this stream and are skipped for the rest of it.
    skipped: Vec<bool>,
    caller: wit::Caller,
    model: String,
    endpoint: &'static str,
    window_bytes: usize,
    pending: BytesMut,
    /// Windows by (choice or output item, slot): slot 0 is the text, slot `k + 1` the
    /// arguments of tool call `k` (their deltas are windowed like text).
    windows: BTreeMap<(u32, u32), Window>,
    shape: Shape,
    stats: Arc<Mutex<Vec<PluginStats>>>,
}

/// A blocked stream: the error to end it with.
pub(super) struct Blocked(GatewayError);

/// The event that ends a blocked stream, in the client's family: an OpenAI `data:` error
/// object, an Anthropic `event: error` (after which no `message_stop` comes), a Gemini error
/// chunk (which google-genai raises as its `APIError` for the status in `code`).
pub(super) fn error_event(shape: Shape, error: &GatewayError) -> Bytes {
    let body = error.body(shape.family());
    Bytes::from(match shape {
        Shape::Chat | Shape::Responses => format!("data: {body}\n\n"),
        Shape::Anthropic => format!("event: error\ndata: {body}\n\n"),
        Shape::Gemini => format!("data: {body}\r\n\r\n"),
    })
}

pub(super) type Busy = Pin<Box<dyn Future<Output = (Box<Core>, Result<Bytes, Blocked>)> + Send>>;

/// The stream phase: inspects complete SSE events on their way to the client.
pub struct StreamGuard {
    core: Option<Box<Core>>,
    busy: Option<Busy>,
    names: Vec<String>,
    stats: Arc<Mutex<Vec<PluginStats>>>,
}

impl std::fmt::Debug for StreamGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamGuard")
            .field("plugins", &self.names)
            .field("busy", &self.busy.is_some())
            .finish()
    }
}

impl StreamGuard {
    /// A guard for the stream of this request, if any bound plugin has the stream phase.
    pub fn new(guards: &Guards) -> Option<Self> {
        let plugins: Vec<Arc<Plugin>> = guards
            .plugins
            .iter()
            .filter(|p| p.has_phase(Phase::Stream))
            .cloned()
            .collect();
        if plugins.is_empty() {
            return None;
        }
        let caller = guards.caller.clone()?;
        let stats = Arc::new(Mutex::new(
            plugins
                .iter()
                .map(|_| PluginStats {
                    outcome: "allow",
                    ..PluginStats::default()
                })
                .collect(),
        ));
        let names = plugins.iter().map(|p| p.name.clone()).collect();
        let window_bytes = plugins
            .iter()
            .map(|p| p.limits.stream_window)
            .max()
            .unwrap_or(256);
        Some(StreamGuard {
            core: Some(Box::new(Core {
                skipped: vec![false; plugins.len()],
                plugins,
                caller,
                model: guards.model.clone(),
                endpoint: guards.endpoint,
                window_bytes,
                pending: BytesMut::new(),
                windows: BTreeMap::new(),
                shape: Shape::of(guards.endpoint),
                stats: stats.clone(),
            })),
            busy: None,
            names,
            stats,
        })
    }

    /// Whether an inspection is in flight (poll it before reading upstream again).
    pub fn is_busy(&self) -> bool {
        self.busy.is_some()
    }

    /// Starts inspecting `events` (complete SSE events); `end` when the upstream finished.
    pub fn start(&mut self, events: Bytes, end: bool) {
        if let Some(mut core) = self.core.take() {
            self.busy = Some(Box::pin(async move {
                let result = core.process(events, end).await;
                (core, result)
            }));
        }
    }

    /// Drives the inspection started last.
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<GuardOutput> {
        let Some(busy) = self.busy.as_mut() else {
            return Poll::Ready(GuardOutput::Pass(Bytes::new()));
        };
        match busy.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready((core, result)) => {
                self.busy = None;
                self.core = Some(core);
                Poll::Ready(match result {
                    Ok(bytes) => GuardOutput::Pass(bytes),
                    Err(Blocked(error)) => {
                        let shape = self.core.take().map_or(Shape::Chat, |c| c.shape);
                        GuardOutput::Block {
                            bytes: error_event(shape, &error),
                            code: error.code().to_string(),
                        }
                    }
                })
            }
        }
    }

    /// One decision entry per stream plugin: calls, time, findings, the strongest outcome.
    pub fn decisions(&self) -> Vec<Value> {
        let Ok(stats) = self.stats.lock() else {
            return Vec::new();
        };
        self.names
            .iter()
            .zip(stats.iter())
            .map(|(name, s)| {
                let mut entry = json!({
                    "stage": "inspect", "plugin": name, "phase": "stream", "outcome": s.outcome,
                    "calls": s.calls, "elapsed_us": s.elapsed_us,
                });
                if !s.findings.is_empty() {
                    entry["findings"] = json!(s.findings);
                }
                if let Some(failure) = s.failure {
                    entry["failure"] = Value::from(failure);
                }
                if let Some(score) = s.max_score {
                    entry["score"] = json!(score);
                }
                entry
            })
            .collect()
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        // One decision per stream plugin, like the usage record's.
        let Ok(stats) = self.stats.lock() else {
            return;
        };
        for (name, s) in self.names.iter().zip(stats.iter()) {
            metrics::record(name, "stream", s.outcome, s.calls, s.elapsed_us);
        }
    }
}

impl Core {
    async fn process(&mut self, input: Bytes, end: bool) -> Result<Bytes, Blocked> {
        self.pending.extend_from_slice(&input);
        let mut out = BytesMut::with_capacity(self.pending.len() + 64);
        while let Some(len) = event_end(&self.pending) {
            let raw = self.pending.split_to(len).freeze();
            self.event(&raw, &mut out).await?;
        }
        if end {
            // An unterminated tail was never inspected: it is dropped, not relayed.
            self.pending.clear();
            self.flush_all(&mut out);
        }
        Ok(out.freeze())
    }

    async fn event(&mut self, raw: &[u8], out: &mut BytesMut) -> Result<(), Blocked> {
        let text = String::from_utf8_lossy(raw);
        let event = parse_event(&text);
        if event.data.trim().is_empty() {
            // Comments and keep-alives carry no text.
            out.extend_from_slice(raw);
            return Ok(());
        }
        if event.data.trim() == "[DONE]" {
            self.flush_all(out);
            out.extend_from_slice(raw);
            return Ok(());
        }
        let Ok(mut value) = serde_json::from_str::<Value>(&event.data) else {
            // Data the guardrails cannot read is not relayed uninspected.
            tracing::debug!("dropping a stream event that is not JSON");
            return Ok(());
        };
        match self.shape {
            Shape::Chat => self.chat_event(&event.other, &mut value, out).await,
            Shape::Responses => self.responses_event(&event.other, &mut value, out).await,
            Shape::Anthropic => self.anthropic_event(&event.other, &mut value, out).await,
            Shape::Gemini => self.gemini_event(&event.other, &mut value, out).await,
        }
    }

    async fn chat_event(
        &mut self,
        other: &[&str],
        value: &mut Value,
        out: &mut BytesMut,
    ) -> Result<(), Blocked> {
        let count = value
            .get("choices")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        for c in 0..count {
            let choice = &value["choices"][c];
            let index = window_index(choice, c);
            let last = choice.get("finish_reason").is_some_and(|f| !f.is_null());
            let delta = choice.get("delta");
            // Legacy completion chunks carry their text in `choices[].text`.
            if delta.is_none()
                && let Some(text) = choice.get("text").and_then(Value::as_str)
            {
                let text = text.to_string();
                let mut template = value.clone();
                template["choices"] = json!([{"index": index, "text": "", "finish_reason": null}]);
                if template.get("usage").is_some() {
                    template["usage"] = Value::Null;
                }
                let window = self.windows.entry((index, 0)).or_default();
                window.template = Some(template);
                window.pointer = Some("/choices/0/text");
                let released = self.advance((index, 0), &text, last).await?;
                value["choices"][c]["text"] = Value::String(released);
                continue;
            }
            let text = delta
                .and_then(|d| d.get("content"))
                .and_then(Value::as_str)
                .map(str::to_string);
            // Tool-call argument deltas: (position in this delta, tool call index, text).
            let calls: Vec<(usize, u32, String)> = delta
                .and_then(|d| d.get("tool_calls"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
                .filter_map(|(pos, call)| {
                    let k = call
                        .get("index")
                        .and_then(Value::as_u64)
                        .unwrap_or(pos as u64);
                    let args = call.get("function")?.get("arguments")?.as_str()?;
                    // Slot `k + 1` stays below the reasoning slot (and never overflows).
                    let k = u32::try_from(k).ok().filter(|k| *k < REASONING - 1)?;
                    Some((pos, k, args.to_string()))
                })
                .collect();
            if text.is_some() || !calls.is_empty() {
                for slot in std::iter::once(0).chain(calls.iter().map(|c| c.1 + 1)) {
                    self.windows.entry((index, slot)).or_default().template = Some(value.clone());
                }
            }
            // Reasoning deltas (`reasoning_content`, what translated thinking becomes, or
            // `reasoning`): a window of their own.
            let reasoning = delta.and_then(|d| {
                [
                    ("reasoning_content", "/choices/0/delta/reasoning_content"),
                    ("reasoning", "/choices/0/delta/reasoning"),
                ]
                .into_iter()
                .find_map(|(field, pointer)| {
                    let text = d.get(field)?.as_str()?;
                    Some((field, pointer, text.to_string()))
                })
            });
            let released_reasoning = match reasoning {
                Some((field, pointer, text)) => {
                    let mut template = value.clone();
                    template["choices"] =
                        json!([{"index": index, "delta": {field: ""}, "finish_reason": null}]);
                    if template.get("usage").is_some() {
                        template["usage"] = Value::Null;
                    }
                    let window = self.windows.entry((index, REASONING)).or_default();
                    window.template = Some(template);
                    window.pointer = Some(pointer);
                    Some((field, self.advance((index, REASONING), &text, last).await?))
                }
                None => {
                    if last {
                        // Held reasoning goes out before the chunk that finishes the choice.
                        self.flush((index, REASONING), out);
                    }
                    None
                }
            };
            let released = match text {
                Some(text) => Some(self.advance((index, 0), &text, last).await?),
                None if last => {
                    let held = self.take_held((index, 0));
                    (!held.is_empty()).then_some(held)
                }
                None => None,
            };
            let mut released_calls = Vec::new();
            for (pos, k, args) in calls {
                let out = self.advance((index, k + 1), &args, last).await?;
                released_calls.push((Some(pos), k, out));
            }
            if last {
                // The held tail of every tool call of this choice goes out with its end.
                let open: Vec<u32> = self
                    .windows
                    .range((index, 1)..(index, REASONING))
                    .filter(|(_, w)| !w.held.is_empty())
                    .map(|((_, slot), _)| slot - 1)
                    .collect();
                for k in open {
                    let held = self.take_held((index, k + 1));
                    released_calls.push((None, k, held));
                }
            }
            let Some(delta) = value["choices"][c]
                .get_mut("delta")
                .and_then(Value::as_object_mut)
            else {
                continue;
            };
            if let Some(released) = released {
                delta.insert("content".into(), Value::String(released));
            }
            if let Some((field, released)) = released_reasoning {
                delta.insert(field.into(), Value::String(released));
            }
            for (pos, k, out) in released_calls {
                let list = delta
                    .entry("tool_calls")
                    .or_insert_with(|| Value::Array(Vec::new()));
                match pos.and_then(|p| list.get_mut(p)) {
                    Some(call) => call["function"]["arguments"] = Value::String(out),
                    None => {
                        if let Some(list) = list.as_array_mut() {
                            list.push(json!({"index": k, "function": {"arguments": out}}));
                        }
                    }
                }
            }
        }
        render_event(other, value, out);
        Ok(())
    }

    async fn responses_event(
        &mut self,
        other: &[&str],
        value: &mut Value,
        out: &mut BytesMut,
    ) -> Result<(), Blocked> {
        let kind = value
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let index = value
            .get("output_index")
            .and_then(Value::as_u64)
            .unwrap_or(0) as u32;
        if kind == "response.output_text.delta"
            || kind == "response.function_call_arguments.delta"
            || kind == "response.refusal.delta"
            || kind == "response.reasoning_summary_text.delta"
        {
            let text = value
                .get("delta")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            // One window per output item and kind of text.
            let slot = match kind.as_str() {
                "response.output_text.delta" => 0,
                "response.function_call_arguments.delta" => 1,
                "response.refusal.delta" => 2,
                _ => 3,
            };
            self.windows.entry((index, slot)).or_default().template = Some(value.clone());
            let released = self.advance((index, slot), &text, false).await?;
            value["delta"] = Value::String(released);
            render_event(other, value, out);
            return Ok(());
        }
        // Held text goes out before the events that close its item or the response.
        match kind.as_str() {
            "response.output_text.done"
            | "response.function_call_arguments.done"
            | "response.refusal.done"
            | "response.reasoning_summary_text.done"
            | "response.content_part.done"
            | "response.output_item.done" => self.flush_item(index, out),
            "response.completed" | "response.incomplete" | "response.failed" => self.flush_all(out),
            _ => {}
        }
        // Events that repeat a complete text are inspected whole, like a last window.
        for (text, path) in views::event_full_texts(value) {
            let checked = self.inspect(index, text, 0, true).await?;
            views::set_text(value, &path, checked);
        }
        render_event(other, value, out);
        Ok(())
    }

    /// Takes the held text of window `key`.
    fn take_held(&mut self, key: (u32, u32)) -> String {
        self.windows
            .get_mut(&key)
            .map(|w| std::mem::take(&mut w.held))
            .unwrap_or_default()
    }

    /// Adds `text` to window `key`, inspects it, and returns what may be released now.
    async fn advance(
        &mut self,
        key: (u32, u32),
        text: &str,
        last: bool,
    ) -> Result<String, Blocked> {
        let held = self.take_held(key);
        let seen = held.len();
        let mut buf = held;
        buf.push_str(text);
        let buf = self.inspect(key.0, buf, seen, last).await?;
        if last {
            return Ok(buf);
        }
        let cut = floor_boundary(&buf, buf.len().saturating_sub(self.window_bytes));
        let (release, keep) = buf.split_at(cut);
        let window = self.windows.entry(key).or_default();
        window.held = keep.to_string();
        Ok(release.to_string())
    }

    /// Runs every stream plugin over one window; returns the (possibly masked) text.
    async fn inspect(
        &mut self,
        index: u32,
        text: String,
        seen: usize,
        last: bool,
    ) -> Result<String, Blocked> {
        let mut view = wit::StreamView {
            model: self.model.clone(),
            endpoint: self.endpoint.to_string(),
            index,
            window: wit::TextPart { id: 0, text },
            seen: u32::try_from(seen).unwrap_or(u32::MAX),
            last,
            caller: self.caller.clone(),
        };
        let one_part = one_part_map();
        for (i, plugin) in self.plugins.iter().enumerate() {
            if self.skipped[i] {
                continue;
            }
            let started = Instant::now();
            let answer = plugin.instances.check_stream(&view).await;
            let elapsed = elapsed_us(started);
            let validated = answer.and_then(|v| validate(v, &one_part));
            let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
            let s = &mut stats[i];
            s.calls += 1;
            s.elapsed_us += elapsed;
            let outcome = match validated {
                Ok((outcome, verdict)) => {
                    for f in &verdict.findings {
                        *s.findings
                            .entry(f.category.chars().take(64).collect())
                            .or_insert(0) += u64::from(f.count);
                    }
                    if let Some(score) = verdict.score.filter(|x| x.is_finite()) {
                        s.max_score = Some(s.max_score.map_or(score, |m: f64| m.max(score)));
                    }
                    match outcome {
                        Outcome::Allow => "allow",
                        Outcome::Rewrite(edits) => {
                            if let Some(edit) = edits.into_iter().last() {
                                view.window.text = edit.text;
                            }
                            "rewrite"
                        }
                        Outcome::Deny { code, reason } => {
                            set_outcome(s, "deny");
                            let cats = categories(&verdict.findings);
                            return Err(Blocked(GatewayError::Guardrail(GuardrailError {
                                plugin: plugin.name.clone(),
                                code,
                                categories: cats,
                                reason,
                            })));
                        }
                    }
                }
                Err(failure) => {
                    tracing::warn!(plugin = %plugin.name, phase = "stream", error = %failure, "guardrail plugin failed");
                    s.failure = Some(failure.kind());
                    metrics::failure(&plugin.name, failure.kind());
                    if plugin.failure_mode == FailureMode::Closed {
                        set_outcome(s, "error");
                        return Err(Blocked(failed(plugin, &failure)));
                    }
                    self.skipped[i] = true;
                    "fail_open"
                }
            };
            set_outcome(s, outcome);
        }
        Ok(view.window.text)
    }

    /// Releases the held texts of every window of output item (or choice) `index`.
    fn flush_item(&mut self, index: u32, out: &mut BytesMut) {
        let keys: Vec<(u32, u32)> = self
            .windows
            .range((index, 0)..=(index, u32::MAX))
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            self.flush(key, out);
        }
    }

    /// Releases the held text of window `key` as a synthesized event.
    fn flush(&mut self, key: (u32, u32), out: &mut BytesMut) {
        let (index, slot) = key;
        let Some(window) = self.windows.get_mut(&key) else {
            return;
        };
        if window.held.is_empty() {
            return;
        }
        let held = std::mem::take(&mut window.held);
        let Some(mut event) = window.template.clone() else {
            return;
        };
        if let Some(pointer) = window.pointer {
            if let Some(text) = event.pointer_mut(pointer) {
                *text = Value::String(held);
            }
            match self.shape {
                Shape::Anthropic => render_event(&["event: content_block_delta"], &event, out),
                _ => render_event(&[], &event, out),
            }
        } else if self.shape == Shape::Responses {
            event["delta"] = Value::String(held);
            let line = format!(
                "event: {}",
                event
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("response.output_text.delta")
            );
            render_event(&[line.as_str()], &event, out);
        } else {
            let delta = match slot {
                0 => json!({"content": held}),
                k => json!({"tool_calls": [{"index": k - 1, "function": {"arguments": held}}]}),
            };
            event["choices"] = json!([{"index": index, "delta": delta, "finish_reason": null}]);
            if event.get("usage").is_some() {
                event["usage"] = Value::Null;
            }
            render_event(&[], &event, out);
        }
    }

    fn flush_all(&mut self, out: &mut BytesMut) {
        let keys: Vec<(u32, u32)> = self.windows.keys().copied().collect();
        for key in keys {
            self.flush(key, out);
        }
    }
}

pub(super) fn set_outcome(s: &mut PluginStats, outcome: &'static str) {
    if rank(outcome) >= rank(s.outcome) {
        s.outcome = outcome;
    }
}

/// The text map of a stream window: one part, id 0.
pub(super) fn one_part_map() -> TextMap {
    TextMap::single()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_streaming_endpoint_is_read_in_its_own_shape() {
        use crate::family::{Endpoint, vllm_route};
        let vllm = |path: &str| {
            Endpoint::Vllm(vllm_route(path).unwrap_or_else(|| panic!("{path} is a vLLM route")))
                .path()
        };
        for (endpoint, shape) in [
            (Endpoint::ChatCompletions.path(), Shape::Chat),
            (Endpoint::Completions.path(), Shape::Chat),
            (Endpoint::Unified.path(), Shape::Chat),
            (vllm("chat/completions"), Shape::Chat),
            (vllm("v1/completions"), Shape::Chat),
            (Endpoint::Responses.path(), Shape::Responses),
            (vllm("v1/responses"), Shape::Responses),
            (Endpoint::Messages.path(), Shape::Anthropic),
            (Endpoint::GeminiStream.path(), Shape::Gemini),
        ] {
            assert_eq!(Shape::of(endpoint), shape, "{endpoint}");
        }
    }

    #[test]
    fn the_one_part_map_has_exactly_part_zero() {
        let map = one_part_map();
        assert_eq!(map.len(), 1);
        assert!(
            views::check_edits(
                &map,
                &[wit::Edit {
                    part: 0,
                    text: String::new()
                }]
            )
            .is_ok()
        );
        assert!(
            views::check_edits(
                &map,
                &[wit::Edit {
                    part: 1,
                    text: String::new()
                }]
            )
            .is_err()
        );
    }
}
