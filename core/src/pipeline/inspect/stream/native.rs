//! The stream window over the native Anthropic and Gemini event shapes.
//!
//! - **Anthropic** (`/v1/messages`): one window per content block, over the text of its
//!   `content_block_delta` events (`text_delta` text, `input_json_delta` partial JSON,
//!   `thinking_delta` thinking). A delta goes out with what the window releases (a delta that
//!   releases nothing is held back whole); the block's held tail is inspected as its last window
//!   and goes out as one more delta before its `content_block_stop`. Signatures and citations
//!   pass as they are; a text already present in `content_block_start` is inspected whole.
//! - **Gemini** (`:streamGenerateContent`): one window per candidate for its answer text and
//!   one for its thought text (`parts[].text`, `thought: true`). Gemini sends a function call
//!   whole, so its `args` are inspected as complete texts, each string in place. The held tails
//!   are inspected as last windows and go out as parts of the chunk that carries the
//!   candidate's `finishReason`.

use bytes::BytesMut;
use serde_json::{Value, json};

use super::{Blocked, Core, render_event};
use crate::plugins::views;

/// Slots of a Gemini candidate's windows.
const GEMINI_TEXT: u32 = 0;
const GEMINI_THOUGHT: u32 = 1;

impl Core {
    /// One Anthropic Messages event.
    pub(super) async fn anthropic_event(
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
        let index = super::window_index(value, 0);
        match kind.as_str() {
            "content_block_start" => {
                if let Some(block) = value.get_mut("content_block") {
                    for (text, path) in views::event_full_texts(block) {
                        if text.is_empty() {
                            continue;
                        }
                        let checked = self.inspect(index, text, 0, true).await?;
                        views::set_text(block, &path, checked);
                    }
                }
            }
            "content_block_delta" => {
                let (field, pointer) = match value.pointer("/delta/type").and_then(Value::as_str) {
                    Some("text_delta") => ("text", "/delta/text"),
                    Some("input_json_delta") => ("partial_json", "/delta/partial_json"),
                    Some("thinking_delta") => ("thinking", "/delta/thinking"),
                    // Signatures, citations: no text of the answer's own.
                    _ => {
                        render_event(other, value, out);
                        return Ok(());
                    }
                };
                let text = value["delta"][field].as_str().unwrap_or("").to_string();
                let window = self.windows.entry((index, 0)).or_default();
                window.template = Some(value.clone());
                window.pointer = Some(pointer);
                let released = self.advance((index, 0), &text, false).await?;
                if released.is_empty() {
                    return Ok(());
                }
                value["delta"][field] = Value::String(released);
            }
            "content_block_stop" => self.finish_window((index, 0), out).await?,
            "message_delta" | "message_stop" => {
                let keys: Vec<(u32, u32)> = self.windows.keys().copied().collect();
                for key in keys {
                    self.finish_window(key, out).await?;
                }
            }
            _ => {}
        }
        render_event(other, value, out);
        Ok(())
    }

    /// One Gemini `GenerateContentResponse` chunk.
    pub(super) async fn gemini_event(
        &mut self,
        other: &[&str],
        value: &mut Value,
        out: &mut BytesMut,
    ) -> Result<(), Blocked> {
        let count = value
            .get("candidates")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        for c in 0..count {
            let candidate = &value["candidates"][c];
            let index = super::window_index(candidate, c);
            let last = candidate.get("finishReason").is_some_and(|f| !f.is_null());
            let parts = candidate
                .pointer("/content/parts")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            for p in 0..parts {
                let part = &value["candidates"][c]["content"]["parts"][p];
                let text = part.get("text").and_then(Value::as_str).map(str::to_string);
                let thought = part.get("thought").and_then(Value::as_bool) == Some(true);
                let call = part.get("functionCall").is_some();
                if let Some(text) = text {
                    let slot = if thought { GEMINI_THOUGHT } else { GEMINI_TEXT };
                    let window = self.windows.entry((index, slot)).or_default();
                    window.template = Some(gemini_template(value, index, thought));
                    window.pointer = Some("/candidates/0/content/parts/0/text");
                    let released = self.advance((index, slot), &text, false).await?;
                    value["candidates"][c]["content"]["parts"][p]["text"] = Value::String(released);
                } else if call {
                    let part = &mut value["candidates"][c]["content"]["parts"][p];
                    for (text, path) in views::event_full_texts(part) {
                        let checked = self.inspect(index, text, 0, true).await?;
                        views::set_text(part, &path, checked);
                    }
                }
            }
            if last {
                for (slot, thought) in [(GEMINI_THOUGHT, true), (GEMINI_TEXT, false)] {
                    let held = self.windows.get(&(index, slot)).map_or(0, |w| w.held.len());
                    if held == 0 {
                        continue;
                    }
                    let text = self.advance((index, slot), "", true).await?;
                    let mut part = json!({"text": text});
                    if thought {
                        part["thought"] = Value::Bool(true);
                    }
                    let content = &mut value["candidates"][c]["content"];
                    if !content.is_object() {
                        *content = json!({"role": "model", "parts": []});
                    }
                    if !content["parts"].is_array() {
                        content["parts"] = json!([]);
                    }
                    if let Some(list) = content["parts"].as_array_mut() {
                        list.push(part);
                    }
                }
            }
        }
        render_event(other, value, out);
        Ok(())
    }

    /// Inspects the held tail of window `key` as its last window and releases it as one more
    /// event of the window's own shape.
    async fn finish_window(&mut self, key: (u32, u32), out: &mut BytesMut) -> Result<(), Blocked> {
        if self.windows.get(&key).is_none_or(|w| w.held.is_empty()) {
            return Ok(());
        }
        let text = self.advance(key, "", true).await?;
        if let Some(window) = self.windows.get_mut(&key) {
            window.held = text;
        }
        self.flush(key, out);
        Ok(())
    }
}

/// A chunk that carries held text of candidate `index` (answer or thought text) on its own.
fn gemini_template(chunk: &Value, index: u32, thought: bool) -> Value {
    let mut part = json!({"text": ""});
    if thought {
        part["thought"] = Value::Bool(true);
    }
    let mut template =
        json!({"candidates": [{"content": {"role": "model", "parts": [part]}, "index": index}]});
    for field in ["modelVersion", "responseId"] {
        if let Some(v) = chunk.get(field) {
            template[field] = v.clone();
        }
    }
    template
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use bytes::Bytes;
    use serde_json::{Value, json};

    use super::super::{GuardOutput, StreamGuard};
    use crate::pipeline::Endpoint;
    use crate::pipeline::inspect::Guards;
    use crate::plugins::host::wit;
    use crate::plugins::{Confinement, FOLDER, Plugin, load_dir};

    /// The built `pii-guard` on the stream phase with a 16-byte window, in `mode`.
    fn pii_guard(mode: &str) -> (tempfile::TempDir, Vec<Arc<Plugin>>) {
        let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/dist");
        let wasm = dist.join("pii-guard.wasm");
        assert!(
            wasm.is_file(),
            "{} is missing: run ./scripts/build-plugins",
            wasm.display()
        );
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join(FOLDER)).expect("mkdir");
        std::fs::write(
            dir.path().join(FOLDER).join("pii.toml"),
            format!(
                "wasm = {:?}\nphases = [\"stream\"]\n[config]\nmode = \"{mode}\"\n[limits]\nstream_window = 16\n",
                wasm.display().to_string()
            ),
        )
        .expect("manifest");
        let (confinement, problems) =
            Confinement::new(dir.path(), &[dist.display().to_string()], []);
        assert!(problems.is_empty(), "{problems:?}");
        let loaded = load_dir(dir.path(), &[], &confinement);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        (dir, loaded.plugins)
    }

    fn guard(plugins: Vec<Arc<Plugin>>, endpoint: Endpoint) -> StreamGuard {
        let guards = Guards {
            plugins,
            caller: Some(wit::Caller {
                key_id: "k".into(),
                key_name: "test".into(),
                team: None,
                metadata: Vec::new(),
            }),
            model: "m".into(),
            endpoint: endpoint.path(),
        };
        StreamGuard::new(&guards).expect("a stream plugin is bound")
    }

    /// Feeds `chunks` (the last one ends the stream); returns what the client receives and
    /// whether the guard blocked.
    async fn run(guard: &mut StreamGuard, chunks: &[String]) -> (String, Option<String>) {
        let mut out = String::new();
        for (i, chunk) in chunks.iter().enumerate() {
            guard.start(Bytes::from(chunk.clone()), i + 1 == chunks.len());
            match std::future::poll_fn(|cx| guard.poll(cx)).await {
                GuardOutput::Pass(bytes) => out.push_str(&String::from_utf8_lossy(&bytes)),
                GuardOutput::Block { bytes, code } => {
                    out.push_str(&String::from_utf8_lossy(&bytes));
                    return (out, Some(code));
                }
            }
        }
        (out, None)
    }

    /// (event name, data) of every SSE event in `text`.
    fn events(text: &str) -> Vec<(String, Value)> {
        text.split("\n\n")
            .flat_map(|e| e.split("\r\n\r\n"))
            .filter(|e| !e.trim().is_empty())
            .map(|e| {
                let mut name = String::new();
                let mut data = String::new();
                for line in e.lines() {
                    if let Some(n) = line.strip_prefix("event: ") {
                        name = n.to_string();
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data.push_str(d);
                    }
                }
                (name, serde_json::from_str(&data).expect("JSON data"))
            })
            .collect()
    }

    fn anthropic(kind: &str, data: Value) -> String {
        format!("event: {kind}\ndata: {data}\n\n")
    }

    /// An Anthropic stream: text deltas with an address split across two of them, then a
    /// tool_use block whose argument deltas split another one.
    fn anthropic_stream() -> Vec<String> {
        let mut chunks = vec![anthropic(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg", "type": "message", "role": "assistant",
                   "content": [], "usage": {"input_tokens": 3, "output_tokens": 1}}}),
        )];
        chunks.push(anthropic(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ));
        for piece in ["write to jane.d", "oe@example.com", " today, thanks a lot"] {
            chunks.push(anthropic(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}),
            ));
        }
        chunks.push(anthropic(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ));
        chunks.push(anthropic(
            "content_block_start",
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "t", "name": "mail", "input": {}}}),
        ));
        // Two argument deltas in one chunk: events are split out of chunks, not assumed whole.
        chunks.push(
            ["{\"to\": \"ops@exa", "mple.org\"}"]
                .iter()
                .map(|part| {
                    anthropic(
                        "content_block_delta",
                        json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": part}}),
                    )
                })
                .collect(),
        );
        chunks.push(anthropic(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 1}),
        ));
        chunks.push(anthropic(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}}),
        ));
        chunks.push(anthropic("message_stop", json!({"type": "message_stop"})));
        chunks
    }

    #[tokio::test]
    async fn anthropic_text_and_tool_argument_deltas_are_masked_in_their_own_events() {
        let (_dir, plugins) = pii_guard("mask");
        let mut guard = guard(plugins, Endpoint::Messages);
        let (out, blocked) = run(&mut guard, &anthropic_stream()).await;
        assert!(blocked.is_none(), "{out}");
        assert!(!out.contains("example.com"), "{out}");
        assert!(!out.contains("example.org"), "{out}");
        let events = events(&out);
        let mut text = String::new();
        let mut args = String::new();
        let mut stops = Vec::new();
        for (name, data) in &events {
            assert_eq!(name.as_str(), data["type"].as_str().unwrap(), "{out}");
            match name.as_str() {
                "content_block_delta" if data["index"] == 0 => {
                    assert_eq!(data["delta"]["type"], "text_delta");
                    // Every delta of block 0 comes before its stop.
                    assert!(stops.is_empty(), "{out}");
                    text.push_str(data["delta"]["text"].as_str().unwrap());
                }
                "content_block_delta" => {
                    assert_eq!(data["delta"]["type"], "input_json_delta");
                    assert_eq!(stops.len(), 1, "{out}");
                    args.push_str(data["delta"]["partial_json"].as_str().unwrap());
                }
                "content_block_stop" => stops.push(data["index"].clone()),
                _ => {}
            }
        }
        assert_eq!(text, "write to [EMAIL] today, thanks a lot");
        let args: Value = serde_json::from_str(&args).expect("the masked arguments stay JSON");
        assert_eq!(args, json!({"to": "[EMAIL]"}));
        assert_eq!(events.last().unwrap().0, "message_stop");
        let decisions = guard.decisions();
        assert_eq!(decisions[0]["outcome"], "rewrite");
        assert_eq!(decisions[0]["findings"]["email"], 2);
    }

    #[tokio::test]
    async fn an_anthropic_block_ends_with_an_error_event_and_no_message_stop() {
        let (_dir, plugins) = pii_guard("block");
        let mut guard = guard(plugins, Endpoint::Messages);
        let (out, blocked) = run(&mut guard, &anthropic_stream()).await;
        assert_eq!(blocked.as_deref(), Some("safety_blocked"), "{out}");
        assert!(!out.contains("example.com"), "{out}");
        assert!(!out.contains("message_stop"), "{out}");
        let (name, error) = events(&out).pop().unwrap();
        assert_eq!(name, "error");
        assert_eq!(error["type"], "error");
        assert_eq!(error["error"]["type"], "permission_error");
        assert_eq!(error["error"]["code"], "safety_blocked");
        assert!(error["error"]["message"].as_str().unwrap().contains("pii"));
    }

    #[tokio::test]
    async fn anthropic_thinking_deltas_are_windowed_and_signatures_pass_untouched() {
        let (_dir, plugins) = pii_guard("mask");
        let mut guard = guard(plugins, Endpoint::Messages);
        let chunks = vec![
            anthropic(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
            ),
            anthropic(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "mail bob@exam"}}),
            ),
            anthropic(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "ple.com now"}}),
            ),
            anthropic(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "c2lnbmF0dXJl"}}),
            ),
            anthropic(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ),
        ];
        let (out, _) = run(&mut guard, &chunks).await;
        let mut thinking = String::new();
        for (_, data) in events(&out) {
            if let Some(t) = data["delta"]["thinking"].as_str() {
                thinking.push_str(t);
            }
        }
        assert_eq!(thinking, "mail [EMAIL] now");
        assert!(out.contains("\"signature\":\"c2lnbmF0dXJl\""), "{out}");
    }

    fn gemini_chunk(parts: Value, finish: Option<&str>) -> String {
        let mut candidate = json!({"content": {"role": "model", "parts": parts}, "index": 0});
        if let Some(finish) = finish {
            candidate["finishReason"] = json!(finish);
        }
        let chunk = json!({"candidates": [candidate], "usageMetadata": {"promptTokenCount": 3}});
        format!("data: {chunk}\r\n\r\n")
    }

    fn gemini_stream() -> Vec<String> {
        vec![
            gemini_chunk(
                json!([{"text": "thinking of jane.d", "thought": true}]),
                None,
            ),
            gemini_chunk(json!([{"text": "oe@example.com", "thought": true}]), None),
            gemini_chunk(json!([{"text": "write to jane.d"}]), None),
            gemini_chunk(json!([{"text": "oe@example.com"}]), None),
            gemini_chunk(
                json!([{"functionCall": {"name": "mail", "args": {"to": "ops@example.org", "n": 1}}}]),
                None,
            ),
            gemini_chunk(json!([{"text": " today"}]), Some("STOP")),
        ]
    }

    #[tokio::test]
    async fn gemini_text_thought_and_function_call_parts_are_masked_in_their_own_chunks() {
        let (_dir, plugins) = pii_guard("mask");
        let mut guard = guard(plugins, Endpoint::GeminiStream);
        let (out, blocked) = run(&mut guard, &gemini_stream()).await;
        assert!(blocked.is_none(), "{out}");
        assert!(!out.contains("example."), "{out}");
        let mut text = String::new();
        let mut thought = String::new();
        let mut calls = Vec::new();
        let events = events(&out);
        for (_, chunk) in &events {
            for part in chunk["candidates"][0]["content"]["parts"]
                .as_array()
                .unwrap()
            {
                match (part.get("text"), part.get("functionCall")) {
                    (Some(t), _) if part["thought"] == true => {
                        thought.push_str(t.as_str().unwrap())
                    }
                    (Some(t), _) => text.push_str(t.as_str().unwrap()),
                    (_, Some(call)) => calls.push(call.clone()),
                    _ => {}
                }
            }
        }
        assert_eq!(thought, "thinking of [EMAIL]");
        assert_eq!(text, "write to [EMAIL] today");
        assert_eq!(
            calls,
            vec![json!({"name": "mail", "args": {"to": "[EMAIL]", "n": 1}})]
        );
        let last = &events.last().unwrap().1;
        assert_eq!(last["candidates"][0]["finishReason"], "STOP");
        assert!(last["usageMetadata"].is_object(), "usage kept: {last}");
    }

    #[tokio::test]
    async fn a_gemini_block_ends_with_a_google_error_chunk() {
        let (_dir, plugins) = pii_guard("block");
        let mut guard = guard(plugins, Endpoint::GeminiStream);
        let (out, blocked) = run(&mut guard, &gemini_stream()).await;
        assert_eq!(blocked.as_deref(), Some("safety_blocked"), "{out}");
        assert!(!out.contains("example.com"), "{out}");
        assert!(out.ends_with("\r\n\r\n"), "{out:?}");
        let (_, error) = events(&out).pop().unwrap();
        // google-genai raises a chunk that starts with `{"error":` as its APIError for `code`.
        assert!(error.to_string().starts_with("{\"error\":"), "{error}");
        assert_eq!(error["error"]["code"], 403);
        assert_eq!(error["error"]["status"], "PERMISSION_DENIED");
        assert_eq!(error["error"]["details"][0]["reason"], "safety_blocked");
    }

    #[tokio::test]
    async fn chat_reasoning_deltas_are_masked_in_their_own_window() {
        let (_dir, plugins) = pii_guard("mask");
        let mut guard = guard(plugins, Endpoint::ChatCompletions);
        let chunk = |delta: Value, finish: Value| {
            let c = json!({"object": "chat.completion.chunk",
                           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
            format!("data: {c}\n\n")
        };
        let chunks = vec![
            chunk(json!({"reasoning_content": "ask jane.d"}), Value::Null),
            chunk(
                json!({"reasoning_content": "oe@example.com first"}),
                Value::Null,
            ),
            chunk(json!({"content": "done"}), Value::Null),
            chunk(json!({}), json!("stop")),
            "data: [DONE]\n\n".to_string(),
        ];
        let (out, _) = run(&mut guard, &chunks).await;
        assert!(!out.contains("example.com"), "{out}");
        let mut reasoning = String::new();
        let mut content = String::new();
        for (_, data) in out
            .split("\n\n")
            .filter(|e| !e.is_empty() && !e.contains("[DONE]"))
            .map(|e| events(&format!("{e}\n\n")).remove(0))
        {
            let delta = &data["choices"][0]["delta"];
            reasoning.push_str(delta["reasoning_content"].as_str().unwrap_or(""));
            content.push_str(delta["content"].as_str().unwrap_or(""));
        }
        assert_eq!(reasoning, "ask [EMAIL] first");
        assert_eq!(content, "done");
        assert!(out.trim_end().ends_with("data: [DONE]"), "{out}");
    }

    #[tokio::test]
    async fn legacy_completion_chunks_window_their_text() {
        let (_dir, plugins) = pii_guard("mask");
        let mut guard = guard(plugins, Endpoint::Completions);
        let chunk = |text: &str, finish: Value| {
            let c = json!({"object": "text_completion", "choices": [{"index": 0, "text": text, "finish_reason": finish}]});
            format!("data: {c}\n\n")
        };
        let chunks = vec![
            chunk("write to jane.d", Value::Null),
            chunk("oe@example.com", Value::Null),
            chunk(" today", json!("stop")),
            "data: [DONE]\n\n".to_string(),
        ];
        let (out, _) = run(&mut guard, &chunks).await;
        let text: String = out
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| {
                let v: Value = serde_json::from_str(d).unwrap();
                v["choices"][0]["text"].as_str().unwrap().to_string()
            })
            .collect();
        assert_eq!(text, "write to [EMAIL] today");
    }
}
