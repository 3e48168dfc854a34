//! A tap on a server-sent event stream: relays complete events as they arrive, reads the usage
//! object from the stream, and hides the usage-only chunk from clients that did not ask for it.
//!
//! Only the unfinished tail of the stream (at most one event) is held back; every complete event
//! is passed on in the same poll it arrived in.

use bytes::{Bytes, BytesMut};
use serde_json::Value;

use crate::family::Api;

/// Largest incomplete event held back; beyond it bytes are relayed uninspected.
const MAX_PENDING: usize = 1024 * 1024;
/// Streamed delta payloads kept for billing a stream that ends without usage; beyond it only
/// their size is counted (4 bytes a token).
const MAX_PRODUCED: usize = 4 * 1024 * 1024;

/// The tap.
#[derive(Debug, Default)]
pub struct SseTap {
    pending: BytesMut,
    hide_usage_chunk: bool,
    usage: Option<Value>,
    produced: Vec<u8>,
    produced_overflow: usize,
    /// The shape of the stream (OpenAI when `None`).
    api: Option<Api>,
    /// An error event arrived (Anthropic `event: error`, a Gemini `{"error":..}` chunk).
    failed: bool,
}

impl SseTap {
    /// A tap; `hide_usage_chunk` drops chat chunks that carry only usage (`choices: []`).
    pub fn new(hide_usage_chunk: bool) -> Self {
        Self {
            hide_usage_chunk,
            ..Self::default()
        }
    }

    /// A tap on a stream in `api`'s shape: Anthropic usage is the merge of `message_start`'s and
    /// `message_delta`'s, Gemini's is the last (cumulative) `usageMetadata`.
    pub fn for_api(api: Api, hide_usage_chunk: bool) -> Self {
        Self {
            hide_usage_chunk,
            api: Some(api),
            ..Self::default()
        }
    }

    /// Whether the provider sent an error event mid-stream.
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// The last usage object seen.
    pub fn usage(&self) -> Option<&Value> {
        self.usage.as_ref()
    }

    /// Feeds a chunk; returns the bytes to relay now (possibly empty).
    pub fn push(&mut self, chunk: &[u8]) -> Bytes {
        self.pending.extend_from_slice(chunk);
        let Some(end) = last_event_end(&self.pending) else {
            if self.pending.len() > MAX_PENDING {
                return self.pending.split().freeze();
            }
            return Bytes::new();
        };
        let complete = self.pending.split_to(end).freeze();
        self.filter(complete)
    }

    /// The stream ended: whatever is left.
    pub fn finish(&mut self) -> Bytes {
        let rest = self.pending.split().freeze();
        if rest.is_empty() {
            rest
        } else {
            self.filter(rest)
        }
    }

    fn filter(&mut self, complete: Bytes) -> Bytes {
        let mut dropped: Option<Vec<(usize, usize)>> = None;
        let mut start = 0;
        while start < complete.len() {
            let (event_end, next) = match find_boundary(&complete[start..]) {
                Some((at, len)) => (start + at, start + at + len),
                None => (complete.len(), complete.len()),
            };
            if self.inspect(&complete[start..event_end]) {
                dropped.get_or_insert_with(Vec::new).push((start, next));
            }
            start = next;
        }
        match dropped {
            None => complete,
            Some(ranges) => {
                let mut out = BytesMut::with_capacity(complete.len());
                let mut at = 0;
                for (from, to) in ranges {
                    out.extend_from_slice(&complete[at..from]);
                    at = to;
                }
                out.extend_from_slice(&complete[at..]);
                out.freeze()
            }
        }
    }

    /// Output tokens of the text streamed so far (what the provider produced), for billing a
    /// stream whose usage never arrived (client disconnect, provider failure). The text is kept
    /// raw while the stream runs and tokenized only here, so ordinary streams never pay for it.
    pub fn produced_tokens(&self) -> i64 {
        let mut tokens = i64::try_from(self.produced_overflow.div_ceil(4)).unwrap_or(i64::MAX);
        for payload in self
            .produced
            .split(|b| *b == b'\n')
            .filter(|p| !p.is_empty())
        {
            tokens += count_delta_tokens(payload);
        }
        tokens
    }

    /// Keeps the text payload of a delta event for [`Self::produced_tokens`].
    fn keep_produced(&mut self, data: &[u8]) {
        if self.produced.len() + data.len() < MAX_PRODUCED {
            self.produced.extend_from_slice(data);
            self.produced.push(b'\n');
        } else {
            self.produced_overflow += data.len();
        }
    }

    /// Anthropic and Gemini events: usage, produced text and error events.
    fn inspect_native(&mut self, api: Api, event: &[u8]) {
        let data = data_of(event);
        let error_event = event.starts_with(b"event: error") || event.starts_with(b"event:error");
        let mentions_usage = match api {
            Api::Gemini => find(&data, b"\"usageMetadata\"").is_some(),
            _ => has_usage_object(&data),
        };
        let mentions_error = find(&data, b"\"error\"").is_some();
        if !mentions_usage && !error_event && !mentions_error {
            if self.usage.is_none() || api == Api::Anthropic {
                self.keep_produced(&data);
            }
            return;
        }
        let Ok(value) = serde_json::from_slice::<Value>(&data) else {
            self.failed |= error_event;
            return;
        };
        match api {
            Api::Anthropic => {
                if error_event || value.get("type").and_then(Value::as_str) == Some("error") {
                    self.failed = true;
                }
                let usage = value
                    .pointer("/message/usage")
                    .or_else(|| value.get("usage"))
                    .and_then(Value::as_object);
                if let Some(usage) = usage {
                    match self.usage.as_mut().and_then(Value::as_object_mut) {
                        Some(merged) => {
                            for (k, v) in usage {
                                if !v.is_null() {
                                    merged.insert(k.clone(), v.clone());
                                }
                            }
                        }
                        None => self.usage = Some(Value::Object(usage.clone())),
                    }
                }
            }
            _ => {
                if value.get("error").is_some_and(Value::is_object) {
                    self.failed = true;
                }
                if let Some(usage) = value.get("usageMetadata").filter(|u| u.is_object()) {
                    self.usage = Some(usage.clone());
                }
                self.keep_produced(&data);
            }
        }
    }

    /// Reads usage from one event; returns whether the event must be hidden.
    fn inspect(&mut self, event: &[u8]) -> bool {
        if let Some(api) = self
            .api
            .filter(|a| matches!(a, Api::Anthropic | Api::Gemini))
        {
            self.inspect_native(api, event);
            return false;
        }
        if !has_usage_object(event) {
            if self.usage.is_none() && find(event, b"\"delta\"").is_some() {
                let data = data_of(event);
                if self.produced.len() + data.len() < MAX_PRODUCED {
                    self.produced.extend_from_slice(&data);
                    self.produced.push(b'\n');
                } else {
                    self.produced_overflow += data.len();
                }
            }
            return false;
        }
        let data = data_of(event);
        let Ok(value) = serde_json::from_slice::<Value>(&data) else {
            return false;
        };
        // Chat Completions: `usage` on the chunk. Responses: `response.usage` on the
        // `response.completed` (or incomplete/failed) event.
        let usage = value.get("usage").filter(|u| u.is_object()).or_else(|| {
            value
                .get("response")
                .and_then(|r| r.get("usage"))
                .filter(|u| u.is_object())
        });
        let Some(usage) = usage else {
            return false;
        };
        self.usage = Some(usage.clone());
        self.hide_usage_chunk
            && value
                .get("choices")
                .and_then(Value::as_array)
                .is_some_and(Vec::is_empty)
    }
}

/// The `data:` payload of one event.
fn data_of(event: &[u8]) -> Vec<u8> {
    let mut data = Vec::new();
    for line in event.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(rest) = line.strip_prefix(b"data:") {
            if !data.is_empty() {
                data.push(b'\n');
            }
            data.extend_from_slice(rest.strip_prefix(b" ").unwrap_or(rest));
        }
    }
    data
}

/// The text of a chat chunk (`choices[].delta.content`) or a Responses delta event.
#[derive(serde::Deserialize)]
struct DeltaProbe<'a> {
    #[serde(default, borrow)]
    choices: Vec<ChoiceProbe<'a>>,
    #[serde(default, borrow)]
    delta: Option<std::borrow::Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
struct ChoiceProbe<'a> {
    #[serde(default, borrow)]
    delta: Option<ContentProbe<'a>>,
}

#[derive(serde::Deserialize)]
struct ContentProbe<'a> {
    #[serde(default, borrow)]
    content: Option<std::borrow::Cow<'a, str>>,
}

/// Tokens of the text in one chat chunk or Responses delta payload, Anthropic
/// `content_block_delta` or Gemini chunk.
fn count_delta_tokens(data: &[u8]) -> i64 {
    let Ok(probe) = serde_json::from_slice::<DeltaProbe<'_>>(data) else {
        return count_native_tokens(data);
    };
    let count = |text: &str| i64::try_from(crate::spend::estimate::count_tokens(text)).unwrap_or(0);
    let mut tokens = 0;
    for choice in &probe.choices {
        if let Some(text) = choice.delta.as_ref().and_then(|d| d.content.as_deref()) {
            tokens += count(text);
        }
    }
    if let Some(text) = probe.delta.as_deref() {
        tokens += count(text);
    }
    tokens
}

/// Tokens of the text in an Anthropic delta (`text`, `partial_json`, `thinking`) or a Gemini
/// chunk (`candidates[].content.parts[].text` and function call arguments).
fn count_native_tokens(data: &[u8]) -> i64 {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return 0;
    };
    let mut text = String::new();
    if let Some(delta) = value.get("delta").and_then(Value::as_object) {
        for key in ["text", "partial_json", "thinking"] {
            if let Some(t) = delta.get(key).and_then(Value::as_str) {
                text.push_str(t);
            }
        }
    }
    for candidate in value
        .get("candidates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for part in candidate
            .pointer("/content/parts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            match part.get("text").and_then(Value::as_str) {
                Some(t) => text.push_str(t),
                None => {
                    if let Some(call) = part.get("functionCall") {
                        text.push_str(&call.to_string());
                    }
                }
            }
        }
    }
    i64::try_from(crate::spend::estimate::count_tokens(&text)).unwrap_or(0)
}

/// Whether the event contains `"usage"` followed by an object (not `null`).
fn has_usage_object(event: &[u8]) -> bool {
    const NEEDLE: &[u8] = b"\"usage\"";
    let mut from = 0;
    while let Some(pos) = find(&event[from..], NEEDLE) {
        let after = &event[from + pos + NEEDLE.len()..];
        let mut rest = after.iter().skip_while(|b| b.is_ascii_whitespace());
        if rest.next() == Some(&b':') && rest.find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
            return true;
        }
        from += pos + NEEDLE.len();
    }
    false
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The first event boundary in `buf`: (offset, length of the separator).
fn find_boundary(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i + 1 < buf.len() {
        if buf[i] == b'\n' {
            if buf[i + 1] == b'\n' {
                return Some((i, 2));
            }
            if buf[i + 1] == b'\r' && buf.get(i + 2) == Some(&b'\n') {
                return Some((i, 3));
            }
        }
        i += 1;
    }
    None
}

/// End (exclusive) of the last complete event in `buf`.
fn last_event_end(buf: &[u8]) -> Option<usize> {
    let mut end = None;
    let mut start = 0;
    while let Some((at, len)) = find_boundary(&buf[start..]) {
        start += at + len;
        end = Some(start);
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n";
    const USAGE: &str =
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\n";
    const DONE: &str = "data: [DONE]\n\n";

    #[test]
    fn complete_events_pass_through_unchanged() {
        let mut tap = SseTap::new(true);
        assert_eq!(tap.push(CHUNK.as_bytes()), Bytes::from(CHUNK));
        assert!(tap.usage().is_none());
    }

    #[test]
    fn events_split_across_chunks_are_held_until_complete() {
        let mut tap = SseTap::new(false);
        let (a, b) = USAGE.split_at(25);
        assert!(tap.push(a.as_bytes()).is_empty());
        assert_eq!(tap.push(b.as_bytes()), Bytes::from(USAGE));
        assert_eq!(tap.usage().expect("usage")["prompt_tokens"], 3);
    }

    #[test]
    fn usage_chunk_is_hidden_only_when_asked() {
        let all = format!("{CHUNK}{USAGE}{DONE}");
        let mut hiding = SseTap::new(true);
        assert_eq!(
            hiding.push(all.as_bytes()),
            Bytes::from(format!("{CHUNK}{DONE}"))
        );
        assert_eq!(hiding.usage().expect("usage")["completion_tokens"], 2);
        let mut showing = SseTap::new(false);
        assert_eq!(showing.push(all.as_bytes()), Bytes::from(all.clone()));
    }

    #[test]
    fn responses_api_usage_is_read_from_the_completed_event() {
        let event = "event: response.completed\r\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\": {\"input_tokens\":5,\"output_tokens\":1}}}\r\n\r\n";
        let mut tap = SseTap::new(true);
        assert_eq!(tap.push(event.as_bytes()), Bytes::from(event));
        assert_eq!(tap.usage().expect("usage")["input_tokens"], 5);
    }

    #[test]
    fn produced_text_is_counted_until_usage_arrives() {
        let mut tap = SseTap::new(true);
        tap.push(CHUNK.as_bytes());
        tap.push(b"data: {\"type\":\"response.output_text.delta\",\"delta\":\"hello there\"}\n\n");
        assert_eq!(tap.produced_tokens(), 1 + 2);
    }

    #[test]
    fn anthropic_usage_merges_message_start_and_message_delta() {
        let mut tap = SseTap::for_api(Api::Anthropic, false);
        let start = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":7,\"cache_read_input_tokens\":9000,\"output_tokens\":1}}}\n\n";
        let delta = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"hello there\"}}\n\n";
        let end = "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":50}}\n\n";
        let all = format!("{start}{delta}{end}");
        assert_eq!(tap.push(all.as_bytes()), Bytes::from(all.clone()));
        let usage = tap.usage().expect("usage");
        assert_eq!(usage["input_tokens"], 7);
        assert_eq!(usage["cache_read_input_tokens"], 9000);
        assert_eq!(usage["output_tokens"], 50);
        assert_eq!(tap.produced_tokens(), 2);
        assert!(!tap.failed());
        tap.push(b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"x\"}}\n\n");
        assert!(tap.failed());
    }

    #[test]
    fn gemini_usage_is_the_last_cumulative_metadata() {
        let mut tap = SseTap::for_api(Api::Gemini, false);
        tap.push(b"data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"hi\"}]}}],\"usageMetadata\":{\"promptTokenCount\":4,\"candidatesTokenCount\":1}}\r\n\r\n");
        tap.push(b"data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\" you\"}]}}],\"usageMetadata\":{\"promptTokenCount\":4,\"candidatesTokenCount\":2}}\r\n\r\n");
        assert_eq!(tap.usage().expect("usage")["candidatesTokenCount"], 2);
        assert!(!tap.failed());
        tap.push(b"data: {\"error\":{\"code\":500,\"message\":\"boom\",\"status\":\"INTERNAL\"}}\r\n\r\n");
        assert!(tap.failed());
    }

    #[test]
    fn a_tail_without_boundary_is_flushed_at_the_end() {
        let mut tap = SseTap::new(true);
        assert!(tap.push(b"data: x").is_empty());
        assert_eq!(tap.finish(), Bytes::from("data: x"));
    }
}
