//! The JSON ↔ WIT bridge: what guardrails see of requests and answers, and where their edits
//! go back.
//!
//! Every text a plugin sees is a `text-part` whose id indexes a [`TextMap`]: the JSON path the
//! text came from. A rewrite replaces exactly those strings; everything else in the body
//! (unknown fields included) is left untouched.

use serde_json::{Map, Value};

use super::host::{tool_wit, wit};
use crate::store::KeyRecord;

/// One step of a JSON path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    /// An object key.
    Key(String),
    /// An array index.
    Index(usize),
    /// A string that holds JSON (a chat tool call's `arguments`): the rest of the path is inside
    /// the parsed value, and an edit writes the value back as JSON text, so it stays valid JSON.
    Json,
}

/// Where each text part came from: `slots[id]` is the path of part `id`.
#[derive(Debug, Clone, Default)]
pub struct TextMap {
    slots: Vec<Vec<Seg>>,
}

impl TextMap {
    /// Number of parts.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no text was found.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// A map of one part (id 0) that is not in any JSON body: a stream window.
    pub fn single() -> Self {
        TextMap {
            slots: vec![Vec::new()],
        }
    }
}

fn key(k: &str) -> Seg {
    Seg::Key(k.to_string())
}

fn role_of(name: &str) -> wit::Role {
    match name {
        "system" => wit::Role::System,
        "developer" => wit::Role::Developer,
        "user" => wit::Role::User,
        "assistant" => wit::Role::Assistant,
        "tool" | "function" => wit::Role::Tool,
        _ => wit::Role::Other,
    }
}

/// A field that holds one user text or a list of them (`input` of embeddings, `prompt` of
/// completions): each string is one part the plugins see, addressed by its index.
fn user_texts(b: &mut Builder, body: &Map<String, Value>, field: &str) {
    match body.get(field) {
        Some(Value::String(s)) => {
            b.message(wit::Role::User, None, vec![(s.as_str(), vec![key(field)])]);
        }
        Some(Value::Array(items)) => {
            let texts = items
                .iter()
                .enumerate()
                .filter_map(|(i, v)| Some((v.as_str()?, vec![key(field), Seg::Index(i)])))
                .collect();
            b.message(wit::Role::User, None, texts);
        }
        _ => {}
    }
}

/// Collects messages and remembers the path of each text.
struct Builder {
    map: TextMap,
    messages: Vec<wit::Message>,
}

impl Builder {
    fn new() -> Self {
        Builder {
            map: TextMap::default(),
            messages: Vec::new(),
        }
    }

    fn part(&mut self, text: &str, path: Vec<Seg>) -> wit::TextPart {
        let id = u32::try_from(self.map.slots.len()).unwrap_or(u32::MAX);
        self.map.slots.push(path);
        wit::TextPart {
            id,
            text: text.to_string(),
        }
    }

    fn message<S: AsRef<str>>(
        &mut self,
        role: wit::Role,
        name: Option<String>,
        texts: Vec<(S, Vec<Seg>)>,
    ) {
        if texts.is_empty() {
            return;
        }
        let parts = texts
            .into_iter()
            .map(|(text, path)| self.part(text.as_ref(), path))
            .collect();
        self.messages.push(wit::Message { role, name, parts });
    }

    /// A `content` value: a string, or an array of blocks (see [`block_texts`]).
    fn content(value: &Value, path: &[Seg]) -> Vec<(String, Vec<Seg>)> {
        match value {
            Value::String(s) => vec![(s.clone(), path.to_vec())],
            Value::Array(items) => {
                let mut out = Vec::new();
                for (j, item) in items.iter().enumerate() {
                    let mut p = path.to_vec();
                    p.push(Seg::Index(j));
                    block_texts(item, &p, &mut out);
                }
                out
            }
            _ => Vec::new(),
        }
    }
}

/// Deepest nesting of tool arguments shown to plugins.
const MAX_DEPTH: usize = 64;

fn with(path: &[Seg], seg: Seg) -> Vec<Seg> {
    let mut p = path.to_vec();
    p.push(seg);
    p
}

/// Every string leaf of `value`, addressed inside it.
fn leaves(value: &Value, path: Vec<Seg>, out: &mut Vec<(String, Vec<Seg>)>, depth: usize) {
    if depth > MAX_DEPTH {
        return;
    }
    match value {
        Value::String(s) => out.push((s.clone(), path)),
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                leaves(v, with(&path, Seg::Index(i)), out, depth + 1);
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                leaves(v, with(&path, key(k)), out, depth + 1);
            }
        }
        _ => {}
    }
}

/// The texts of tool-call arguments or a tool's structured result (chat `arguments`, Anthropic
/// `input`, Gemini `args` and `response`, Responses `arguments`): each string inside, so a
/// mask keeps the structure. A string holding a JSON object or array is opened ([`Seg::Json`])
/// and written back as JSON; any other string is one text.
fn json_texts(value: &Value, path: Vec<Seg>, out: &mut Vec<(String, Vec<Seg>)>) {
    if let Value::String(s) = value {
        let opens = s.trim_start().starts_with(['{', '[']);
        if opens && let Ok(inner) = serde_json::from_str::<Value>(s) {
            leaves(&inner, with(&path, Seg::Json), out, 0);
            return;
        }
    }
    leaves(value, path, out, 0);
}

/// The texts of one content block, output item or stream event, whatever the family: `text`,
/// `refusal` and `thinking` strings, reasoning `summary` texts, and the arguments of a tool call
/// (Anthropic `tool_use.input`, Responses `function_call.arguments`, Gemini
/// `functionCall.args`) or the structured result of one (Gemini `functionResponse.response`).
fn block_texts(item: &Value, path: &[Seg], out: &mut Vec<(String, Vec<Seg>)>) {
    for field in ["text", "refusal", "thinking"] {
        if let Some(s) = item.get(field).and_then(Value::as_str) {
            out.push((s.to_string(), with(path, key(field))));
        }
    }
    if let Some(Value::Array(summary)) = item.get("summary") {
        for (k, s) in summary.iter().enumerate() {
            if let Some(text) = s.get("text").and_then(Value::as_str) {
                let p = with(&with(path, key("summary")), Seg::Index(k));
                out.push((text.to_string(), with(&p, key("text"))));
            }
        }
    }
    let kind = item.get("type").and_then(Value::as_str).unwrap_or("");
    if kind.ends_with("tool_use")
        && let Some(input) = item.get("input")
    {
        json_texts(input, with(path, key("input")), out);
    }
    if let Some(arguments) = item.get("arguments") {
        json_texts(arguments, with(path, key("arguments")), out);
    }
    for (field, inner) in [("functionCall", "args"), ("functionResponse", "response")] {
        if let Some(value) = item.get(field).and_then(|f| f.get(inner)) {
            json_texts(value, with(&with(path, key(field)), key(inner)), out);
        }
    }
}

/// The texts of one chat message (request history or answer choice): its content, refusal and
/// reasoning, and the arguments of its tool calls (each a JSON string, opened).
fn chat_message_texts(m: &Value, base: &[Seg]) -> Vec<(String, Vec<Seg>)> {
    let mut texts = m.get("content").map_or_else(Vec::new, |c| {
        Builder::content(c, &with(base, key("content")))
    });
    for field in ["refusal", "reasoning_content", "reasoning"] {
        if let Some(s) = m.get(field).and_then(Value::as_str) {
            texts.push((s.to_string(), with(base, key(field))));
        }
    }
    for (j, call) in m
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let path = with(&with(base, key("tool_calls")), Seg::Index(j));
        if let Some(arguments) = call.get("function").and_then(|f| f.get("arguments")) {
            json_texts(
                arguments,
                with(&with(&path, key("function")), key("arguments")),
                &mut texts,
            );
        } else if let Some(arguments) = call.get("arguments") {
            // The unified endpoint's hub answer: arguments as an object beside the name.
            json_texts(arguments, with(&path, key("arguments")), &mut texts);
        }
    }
    if let Some(arguments) = m.get("function_call").and_then(|f| f.get("arguments")) {
        json_texts(
            arguments,
            with(&with(base, key("function_call")), key("arguments")),
            &mut texts,
        );
    }
    texts
}

/// The calling key as plugins see it.
pub fn caller(key: &KeyRecord) -> wit::Caller {
    wit::Caller {
        key_id: key.id.clone(),
        key_name: key.name.clone(),
        team: key.team.clone(),
        metadata: key
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), json_text(v)))
            .collect(),
    }
}

fn json_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The request view of an OpenAI-shaped body on `endpoint`, and where its texts live.
pub fn request_view(
    endpoint: &str,
    model: &str,
    stream: bool,
    body: &Map<String, Value>,
    caller: &wit::Caller,
) -> (wit::RequestView, TextMap) {
    let mut b = Builder::new();
    let mut tools = Vec::new();
    match endpoint {
        "/v1/chat/completions" | "/v1/llm/chat" | "/v1/vllm/chat/completions" => {
            if let Some(Value::Array(messages)) = body.get("messages") {
                for (i, m) in messages.iter().enumerate() {
                    let role = role_of(m.get("role").and_then(Value::as_str).unwrap_or(""));
                    let name = m.get("name").and_then(Value::as_str).map(str::to_string);
                    let texts = chat_message_texts(m, &[key("messages"), Seg::Index(i)]);
                    b.message(role, name, texts);
                }
            }
            if let Some(Value::Array(list)) = body.get("tools") {
                for t in list {
                    let f = t.get("function").unwrap_or(t);
                    if let Some(name) = f.get("name").and_then(Value::as_str) {
                        tools.push(wit::Tool {
                            name: name.to_string(),
                            description: f
                                .get("description")
                                .and_then(Value::as_str)
                                .map(str::to_string),
                        });
                    }
                }
            }
        }
        "/v1/responses" => {
            if let Some(Value::String(s)) = body.get("instructions") {
                b.message(
                    wit::Role::System,
                    None,
                    vec![(s.as_str(), vec![key("instructions")])],
                );
            }
            match body.get("input") {
                Some(Value::String(s)) => b.message(
                    wit::Role::User,
                    None,
                    vec![(s.as_str(), vec![key("input")])],
                ),
                Some(Value::Array(items)) => {
                    for (i, item) in items.iter().enumerate() {
                        let base = vec![key("input"), Seg::Index(i)];
                        if let Some(output) = item.get("output") {
                            // A tool result the client sends back: text, parts, or JSON text.
                            let p = with(&base, key("output"));
                            let mut texts = Vec::new();
                            match output {
                                Value::Array(_) => texts = Builder::content(output, &p),
                                other => json_texts(other, p, &mut texts),
                            }
                            b.message(wit::Role::Tool, None, texts);
                            continue;
                        }
                        let kind = item.get("type").and_then(Value::as_str).unwrap_or("");
                        let role = match item.get("role").and_then(Value::as_str) {
                            Some(role) => role_of(role),
                            // Items the model produced earlier: tool calls, reasoning.
                            None if kind.ends_with("_call") || kind == "reasoning" => {
                                wit::Role::Assistant
                            }
                            None => wit::Role::User,
                        };
                        let mut texts = item.get("content").map_or_else(Vec::new, |c| {
                            Builder::content(c, &with(&base, key("content")))
                        });
                        block_texts(item, &base, &mut texts);
                        b.message(role, None, texts);
                    }
                }
                _ => {}
            }
            if let Some(Value::Array(list)) = body.get("tools") {
                for t in list {
                    if let Some(name) = t.get("name").and_then(Value::as_str) {
                        tools.push(wit::Tool {
                            name: name.to_string(),
                            description: t
                                .get("description")
                                .and_then(Value::as_str)
                                .map(str::to_string),
                        });
                    }
                }
            }
        }
        "/v1/embeddings" => user_texts(&mut b, body, "input"),
        "/v1/completions" | "/v1/vllm/completions" => user_texts(&mut b, body, "prompt"),
        "/v1/messages" | "/v1/messages/count_tokens" => {
            anthropic_request(&mut b, &mut tools, body);
        }
        path if path.starts_with("/v1beta/models/{model}:") => {
            gemini_request(&mut b, &mut tools, body);
        }
        "/v1/images/generations" => {
            if let Some(Value::String(s)) = body.get("prompt") {
                b.message(
                    wit::Role::User,
                    None,
                    vec![(s.as_str(), vec![key("prompt")])],
                );
            }
        }
        _ => {}
    }
    let mut metadata: Vec<(String, String)> = match body.get("metadata") {
        Some(Value::Object(m)) => m.iter().map(|(k, v)| (k.clone(), json_text(v))).collect(),
        _ => Vec::new(),
    };
    if let Some(user) = body.get("user") {
        metadata.push(("user".into(), json_text(user)));
    }
    let view = wit::RequestView {
        model: model.to_string(),
        endpoint: endpoint.to_string(),
        stream,
        messages: b.messages,
        tools,
        metadata,
        caller: caller.clone(),
    };
    (view, b.map)
}

/// Anthropic Messages: `system` (a string or text blocks), then each message's text blocks
/// (and the text of `tool_result` blocks, as tool turns).
fn anthropic_request(b: &mut Builder, tools: &mut Vec<wit::Tool>, body: &Map<String, Value>) {
    if let Some(system) = body.get("system") {
        let texts = Builder::content(system, &[key("system")]);
        b.message(wit::Role::System, None, texts);
    }
    if let Some(Value::Array(messages)) = body.get("messages") {
        for (i, m) in messages.iter().enumerate() {
            let role = role_of(m.get("role").and_then(Value::as_str).unwrap_or(""));
            let base = [key("messages"), Seg::Index(i), key("content")];
            let Some(content) = m.get("content") else {
                continue;
            };
            b.message(role, None, Builder::content(content, &base));
            for (j, block) in content.as_array().into_iter().flatten().enumerate() {
                if block.get("type").and_then(Value::as_str) != Some("tool_result") {
                    continue;
                }
                let mut path = base.to_vec();
                path.push(Seg::Index(j));
                path.push(key("content"));
                if let Some(result) = block.get("content") {
                    b.message(wit::Role::Tool, None, Builder::content(result, &path));
                }
            }
        }
    }
    if let Some(Value::Array(list)) = body.get("tools") {
        for t in list {
            if let Some(name) = t.get("name").and_then(Value::as_str) {
                tools.push(wit::Tool {
                    name: name.to_string(),
                    description: t
                        .get("description")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                });
            }
        }
    }
}

/// Gemini: `systemInstruction.parts[].text`, each content's `parts[].text` (`model` turns are
/// the assistant's), embed requests' `content`, and function declarations as tools.
fn gemini_request(b: &mut Builder, tools: &mut Vec<wit::Tool>, body: &Map<String, Value>) {
    let parts = |content: &Value, base: &[Seg]| -> Vec<(String, Vec<Seg>)> {
        content
            .get("parts")
            .map(|p| Builder::content(p, &with(base, key("parts"))))
            .unwrap_or_default()
    };
    let add = |b: &mut Builder, role, texts: Vec<(String, Vec<Seg>)>| {
        b.message(role, None, texts);
    };
    if let Some(system) = body.get("systemInstruction") {
        add(
            b,
            wit::Role::System,
            parts(system, &[key("systemInstruction")]),
        );
    }
    if let Some(content) = body.get("content") {
        add(b, wit::Role::User, parts(content, &[key("content")]));
    }
    if let Some(Value::Array(contents)) = body.get("contents") {
        for (i, c) in contents.iter().enumerate() {
            let role = match c.get("role").and_then(Value::as_str) {
                Some("model") => wit::Role::Assistant,
                Some("function" | "tool") => wit::Role::Tool,
                _ => wit::Role::User,
            };
            add(b, role, parts(c, &[key("contents"), Seg::Index(i)]));
        }
    }
    for t in body
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for f in t
            .get("functionDeclarations")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(name) = f.get("name").and_then(Value::as_str) {
                tools.push(wit::Tool {
                    name: name.to_string(),
                    description: f
                        .get("description")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                });
            }
        }
    }
}

/// The response view of a non-streamed answer of any family (chat completions, completions,
/// responses, Anthropic messages, Gemini), or of a non-JSON answer (a JSON string value: the
/// whole body is one text). An answer without text gives a view without messages: plugins still
/// run on it and are recorded.
pub fn response_view(
    endpoint: &str,
    model: &str,
    body: &Value,
    caller: &wit::Caller,
) -> (wit::ResponseView, TextMap) {
    let mut b = Builder::new();
    if let Value::String(text) = body {
        b.message(
            wit::Role::Assistant,
            None,
            vec![(text.as_str(), Vec::new())],
        );
    }
    if let Some(Value::Array(choices)) = body.get("choices") {
        for (i, choice) in choices.iter().enumerate() {
            let base = [key("choices"), Seg::Index(i)];
            if let Some(message) = choice.get("message") {
                let texts = chat_message_texts(message, &with(&base, key("message")));
                b.message(wit::Role::Assistant, None, texts);
            }
            // Completions (`/v1/completions`, vLLM's raw route): `choices[].text`.
            if let Some(text) = choice.get("text").and_then(Value::as_str) {
                b.message(
                    wit::Role::Assistant,
                    None,
                    vec![(text, with(&base, key("text")))],
                );
            }
        }
    }
    if let Some(Value::Array(output)) = body.get("output") {
        output_texts(&mut b, output, &[key("output")]);
    }
    // Anthropic Messages: `content[].text`.
    if body.get("type").and_then(Value::as_str) == Some("message")
        && let Some(content) = body.get("content")
    {
        let texts = Builder::content(content, &[key("content")]);
        b.message(wit::Role::Assistant, None, texts);
    }
    // Gemini: `candidates[].content.parts[].text`.
    if let Some(Value::Array(candidates)) = body.get("candidates") {
        for (i, candidate) in candidates.iter().enumerate() {
            if let Some(parts) = candidate.get("content").and_then(|c| c.get("parts")) {
                let path = [
                    key("candidates"),
                    Seg::Index(i),
                    key("content"),
                    key("parts"),
                ];
                let texts = Builder::content(parts, &path);
                b.message(wit::Role::Assistant, None, texts);
            }
        }
    }
    (
        wit::ResponseView {
            model: model.to_string(),
            endpoint: endpoint.to_string(),
            messages: b.messages,
            caller: caller.clone(),
        },
        b.map,
    )
}

/// Texts of a Responses API `output` array: message content (text, refusals), reasoning
/// summaries and function-call arguments.
fn output_texts(b: &mut Builder, output: &[Value], base: &[Seg]) {
    for (i, item) in output.iter().enumerate() {
        b.message(
            wit::Role::Assistant,
            None,
            item_texts(item, &with(base, Seg::Index(i))),
        );
    }
}

/// Texts of one Responses API output item at `path`.
fn item_texts(item: &Value, path: &[Seg]) -> Vec<(String, Vec<Seg>)> {
    let mut texts = item.get("content").map_or_else(Vec::new, |content| {
        Builder::content(content, &with(path, key("content")))
    });
    block_texts(item, path, &mut texts);
    texts
}

/// Complete texts inside a Responses API stream event (`response.output_text.done`,
/// `response.content_part.done`, `response.output_item.done`, `response.completed`, ...):
/// the paths of every text, to be inspected whole.
pub fn event_full_texts(event: &Value) -> Vec<(String, Vec<Seg>)> {
    let mut b = Builder::new();
    let kind = event.get("type").and_then(Value::as_str).unwrap_or("");
    if kind.ends_with(".delta") {
        return Vec::new();
    }
    // `response.output_text.done` (`text`), `response.refusal.done` (`refusal`),
    // `response.function_call_arguments.done` (`arguments`), reasoning summaries.
    let mut top = Vec::new();
    block_texts(event, &[], &mut top);
    b.message(wit::Role::Assistant, None, top);
    if let Some(part) = event.get("part") {
        let mut texts = Vec::new();
        block_texts(part, &[key("part")], &mut texts);
        b.message(wit::Role::Assistant, None, texts);
    }
    if let Some(item) = event.get("item") {
        b.message(wit::Role::Assistant, None, item_texts(item, &[key("item")]));
    }
    if let Some(Value::Array(output)) = event.get("response").and_then(|r| r.get("output")) {
        output_texts(&mut b, output, &[key("response"), key("output")]);
    }
    let mut out = Vec::new();
    for m in b.messages {
        for p in m.parts {
            out.push((p.text, b.map.slots[p.id as usize].clone()));
        }
    }
    out
}

/// The `tool-call` view of an MCP `tools/call` on `server`: the arguments as JSON text, and
/// every string inside them as a part (paths relative to the arguments value).
pub fn tool_call_view(
    server: &str,
    tool: &str,
    arguments: Option<&Value>,
    caller: &wit::Caller,
) -> (tool_wit::ToolCall, TextMap) {
    let mut texts = Vec::new();
    if let Some(arguments) = arguments {
        json_texts(arguments, Vec::new(), &mut texts);
    }
    let mut b = Builder::new();
    let parts = texts.into_iter().map(|(t, p)| b.part(&t, p)).collect();
    let view = tool_wit::ToolCall {
        server: server.to_string(),
        tool: tool.to_string(),
        arguments: arguments.map_or_else(|| "{}".to_string(), Value::to_string),
        parts,
        caller: caller.clone(),
    };
    (view, b.map)
}

/// The `tool-result` view of the `result` of an MCP `tools/call`: the texts of its `content`
/// items (`text`, an embedded resource's `text`) and every string of its `structuredContent`
/// (paths relative to the result value).
pub fn tool_result_view(
    server: &str,
    tool: &str,
    result: &Value,
    caller: &wit::Caller,
) -> (tool_wit::ToolResult, TextMap) {
    let mut texts = Vec::new();
    for (i, item) in result
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let path = vec![key("content"), Seg::Index(i)];
        if let Some(text) = item.get("text").and_then(Value::as_str) {
            texts.push((text.to_string(), with(&path, key("text"))));
        }
        if let Some(text) = item
            .get("resource")
            .and_then(|r| r.get("text"))
            .and_then(Value::as_str)
        {
            let p = with(&with(&path, key("resource")), key("text"));
            texts.push((text.to_string(), p));
        }
    }
    if let Some(structured) = result.get("structuredContent") {
        leaves(structured, vec![key("structuredContent")], &mut texts, 0);
    }
    let mut b = Builder::new();
    let parts = texts.into_iter().map(|(t, p)| b.part(&t, p)).collect();
    let view = tool_wit::ToolResult {
        server: server.to_string(),
        tool: tool.to_string(),
        is_error: result
            .get("isError")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        result: result.to_string(),
        parts,
        caller: caller.clone(),
    };
    (view, b.map)
}

fn navigate<'a>(root: &'a mut Value, path: &[Seg]) -> Option<&'a mut Value> {
    let mut at = root;
    for seg in path {
        at = match seg {
            Seg::Key(k) => at.get_mut(k.as_str())?,
            Seg::Index(i) => at.get_mut(*i)?,
            Seg::Json => return None,
        };
    }
    Some(at)
}

/// Sets the string at `path`. Through a [`Seg::Json`] step, the JSON text is parsed, the string
/// inside it set, and the value written back as JSON text.
pub fn set_text(root: &mut Value, path: &[Seg], text: String) -> bool {
    if let Some(at) = path.iter().position(|s| *s == Seg::Json) {
        let Some(Value::String(encoded)) = navigate(root, &path[..at]) else {
            return false;
        };
        let Ok(mut inner) = serde_json::from_str::<Value>(encoded) else {
            return false;
        };
        if !set_text(&mut inner, &path[at + 1..], text) {
            return false;
        }
        *encoded = inner.to_string();
        return true;
    }
    match navigate(root, path) {
        Some(slot @ Value::String(_)) => {
            *slot = Value::String(text);
            true
        }
        _ => false,
    }
}

/// Checks a plugin's edits against the parts it was shown.
pub fn check_edits(map: &TextMap, edits: &[wit::Edit]) -> Result<(), String> {
    for edit in edits {
        if edit.part as usize >= map.len() {
            return Err(format!(
                "edit for part {} but only {} parts were shown",
                edit.part,
                map.len()
            ));
        }
    }
    Ok(())
}

/// Applies edits (already checked) to a JSON value.
pub fn apply_edits(root: &mut Value, map: &TextMap, edits: &[wit::Edit]) {
    for edit in edits {
        if let Some(path) = map.slots.get(edit.part as usize) {
            set_text(root, path, edit.text.clone());
        }
    }
}

/// Applies edits (already checked) to a request body.
pub fn apply_edits_to_body(body: &mut Map<String, Value>, map: &TextMap, edits: &[wit::Edit]) {
    let mut root = Value::Object(std::mem::take(body));
    apply_edits(&mut root, map, edits);
    if let Value::Object(m) = root {
        *body = m;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anthropic_and_gemini_answers_show_their_texts() {
        let caller = wit::Caller {
            key_id: "k".into(),
            key_name: "n".into(),
            team: None,
            metadata: Vec::new(),
        };
        let anthropic = json!({"type": "message", "content": [{"type": "text", "text": "a@b.io"}]});
        let (view, map) = response_view("/v1/messages", "m", &anthropic, &caller);
        assert_eq!(view.messages[0].parts[0].text, "a@b.io");
        let mut edited = anthropic.clone();
        apply_edits(
            &mut edited,
            &map,
            &[wit::Edit {
                part: 0,
                text: "[EMAIL]".into(),
            }],
        );
        assert_eq!(edited["content"][0]["text"], "[EMAIL]");
        let gemini =
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "c@d.io"}]}}]});
        let (view, _) = response_view(
            "/v1beta/models/{model}:generateContent",
            "m",
            &gemini,
            &caller,
        );
        assert_eq!(view.messages[0].parts[0].text, "c@d.io");
    }

    #[test]
    fn anthropic_and_gemini_requests_show_their_texts_with_rewritable_paths() {
        let caller = wit::Caller {
            key_id: "k".into(),
            key_name: "n".into(),
            team: None,
            metadata: Vec::new(),
        };
        let body = json!({"model": "m", "system": "be kind", "max_tokens": 5, "messages": [
            {"role": "user", "content": [{"type": "text", "text": "mail a@b.io"}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "c@d.io"}]}
        ]});
        let map = body.as_object().expect("object").clone();
        let (view, text_map) = request_view("/v1/messages", "m", false, &map, &caller);
        let texts: Vec<&str> = view
            .messages
            .iter()
            .flat_map(|m| m.parts.iter().map(|p| p.text.as_str()))
            .collect();
        assert_eq!(texts, ["be kind", "mail a@b.io", "c@d.io"]);
        let mut rewritten = map.clone();
        apply_edits_to_body(
            &mut rewritten,
            &text_map,
            &[wit::Edit {
                part: 2,
                text: "[EMAIL]".into(),
            }],
        );
        assert_eq!(rewritten["messages"][1]["content"][0]["content"], "[EMAIL]");

        let body = json!({"systemInstruction": {"parts": [{"text": "sys"}]},
                          "contents": [{"role": "user", "parts": [{"text": "hi e@f.io"}]}]});
        let map = body.as_object().expect("object").clone();
        let (view, _) = request_view(
            "/v1beta/models/{model}:generateContent",
            "m",
            false,
            &map,
            &caller,
        );
        let texts: Vec<&str> = view
            .messages
            .iter()
            .flat_map(|m| m.parts.iter().map(|p| p.text.as_str()))
            .collect();
        assert_eq!(texts, ["sys", "hi e@f.io"]);
    }
    use serde_json::json;

    fn caller() -> wit::Caller {
        wit::Caller {
            key_id: "key_1".into(),
            key_name: "k".into(),
            team: None,
            metadata: Vec::new(),
        }
    }

    #[test]
    fn chat_texts_map_back_to_their_paths() {
        let body = json!({"model": "m", "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "a@b.io"}, {"type": "image_url", "image_url": {"url": "x"}}]},
        ], "tools": [{"type": "function", "function": {"name": "f", "description": "d"}}], "metadata": {"app": "x"}, "user": "u1", "extra": 1});
        let Value::Object(mut map) = body else {
            panic!()
        };
        let (view, texts) = request_view("/v1/chat/completions", "m", false, &map, &caller());
        assert_eq!(view.messages.len(), 2);
        assert_eq!(view.messages[1].parts[0].id, 1);
        assert_eq!(view.messages[1].parts[0].text, "a@b.io");
        assert_eq!(view.tools[0].name, "f");
        assert_eq!(
            view.metadata,
            vec![("app".into(), "x".into()), ("user".into(), "u1".into())]
        );
        let edits = vec![wit::Edit {
            part: 1,
            text: "[EMAIL]".into(),
        }];
        check_edits(&texts, &edits).expect("valid");
        apply_edits_to_body(&mut map, &texts, &edits);
        assert_eq!(map["messages"][1]["content"][0]["text"], "[EMAIL]");
        assert_eq!(map["extra"], 1);
        assert!(
            check_edits(
                &texts,
                &[wit::Edit {
                    part: 7,
                    text: String::new()
                }]
            )
            .is_err()
        );
    }

    #[test]
    fn responses_embeddings_and_images_are_seen() {
        let Value::Object(body) = json!({"instructions": "sys", "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}, {"type": "function_call_output", "output": "tool says"}]})
        else {
            panic!()
        };
        let (view, _) = request_view("/v1/responses", "m", false, &body, &caller());
        let texts: Vec<&str> = view
            .messages
            .iter()
            .flat_map(|m| m.parts.iter().map(|p| p.text.as_str()))
            .collect();
        assert_eq!(texts, ["sys", "hi", "tool says"]);
        let Value::Object(body) = json!({"input": ["a", "b"]}) else {
            panic!()
        };
        assert_eq!(
            request_view("/v1/embeddings", "m", false, &body, &caller())
                .1
                .len(),
            2
        );
        let Value::Object(body) = json!({"prompt": "a cat"}) else {
            panic!()
        };
        assert_eq!(
            request_view("/v1/images/generations", "m", false, &body, &caller())
                .1
                .len(),
            1
        );
    }

    #[test]
    fn answers_expose_choices_and_output_items() {
        let mut chat = json!({"choices": [{"message": {"role": "assistant", "content": "x@y.io"}}], "usage": {}});
        let (view, map) = response_view("/v1/chat/completions", "m", &chat, &caller());
        assert_eq!(view.messages[0].parts[0].text, "x@y.io");
        apply_edits(
            &mut chat,
            &map,
            &[wit::Edit {
                part: 0,
                text: "[EMAIL]".into(),
            }],
        );
        assert_eq!(chat["choices"][0]["message"]["content"], "[EMAIL]");
        let resp = json!({"output": [{"type": "message", "content": [{"type": "output_text", "text": "t"}]}]});
        assert_eq!(
            response_view("/v1/responses", "m", &resp, &caller())
                .1
                .len(),
            1
        );
        // No text: an empty view, still shown to the plugins.
        let (view, map) = response_view("/v1/embeddings", "m", &json!({"data": []}), &caller());
        assert!(view.messages.is_empty() && map.is_empty());
    }

    /// Every text of a view with its part id.
    fn texts_of(messages: &[wit::Message]) -> Vec<String> {
        messages
            .iter()
            .flat_map(|m| m.parts.iter().map(|p| p.text.clone()))
            .collect()
    }

    /// Masks every part containing `@` and returns the edits.
    fn mask_emails(messages: &[wit::Message]) -> Vec<wit::Edit> {
        messages
            .iter()
            .flat_map(|m| m.parts.iter())
            .filter(|p| p.text.contains('@'))
            .map(|p| wit::Edit {
                part: p.id,
                text: p.text.replace("a@b.io", "[EMAIL]"),
            })
            .collect()
    }

    #[test]
    fn chat_tool_calls_refusals_and_reasoning_are_seen_and_masked_as_valid_json() {
        let Value::Object(mut body) = json!({"messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": null, "reasoning_content": "think a@b.io",
             "tool_calls": [{"id": "c1", "type": "function",
                "function": {"name": "send", "arguments": "{\"to\":\"a@b.io\",\"cc\":[\"x a@b.io\"],\"n\":3}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "sent to a@b.io"},
            {"role": "assistant", "content": null, "refusal": "no, a@b.io"}
        ]}) else {
            panic!()
        };
        let (view, map) = request_view("/v1/chat/completions", "m", false, &body, &caller());
        let texts = texts_of(&view.messages);
        assert_eq!(
            texts,
            [
                "hi",
                "think a@b.io",
                "a@b.io",
                "x a@b.io",
                "sent to a@b.io",
                "no, a@b.io"
            ]
        );
        assert_eq!(view.messages[1].role, wit::Role::Assistant);
        assert_eq!(view.messages[2].role, wit::Role::Tool);
        let edits = mask_emails(&view.messages);
        apply_edits_to_body(&mut body, &map, &edits);
        let args = body["messages"][1]["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap();
        let args: Value = serde_json::from_str(args).expect("still JSON");
        assert_eq!(args, json!({"to": "[EMAIL]", "cc": ["x [EMAIL]"], "n": 3}));
        assert_eq!(body["messages"][2]["content"], "sent to [EMAIL]");
        assert_eq!(body["messages"][3]["refusal"], "no, [EMAIL]");
        assert_eq!(body["messages"][1]["reasoning_content"], "think [EMAIL]");

        // Arguments that are not JSON are one text.
        let Value::Object(body) = json!({"messages": [{"role": "assistant", "tool_calls": [
            {"function": {"name": "f", "arguments": "{broken a@b.io"}}]}]})
        else {
            panic!()
        };
        let (view, _) = request_view("/v1/chat/completions", "m", false, &body, &caller());
        assert_eq!(texts_of(&view.messages), ["{broken a@b.io"]);
    }

    #[test]
    fn answers_show_tool_calls_refusals_and_thinking_in_every_family() {
        let mut chat = json!({"choices": [{"message": {"role": "assistant", "content": null, "refusal": "r a@b.io",
            "tool_calls": [{"function": {"name": "f", "arguments": "{\"to\":\"a@b.io\"}"}}]}}]});
        let (view, map) = response_view("/v1/chat/completions", "m", &chat, &caller());
        assert_eq!(texts_of(&view.messages), ["r a@b.io", "a@b.io"]);
        apply_edits(&mut chat, &map, &mask_emails(&view.messages));
        assert_eq!(
            chat["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"to\":\"[EMAIL]\"}"
        );

        let mut anthropic = json!({"type": "message", "content": [
            {"type": "thinking", "thinking": "t a@b.io", "signature": "s"},
            {"type": "tool_use", "id": "t", "name": "f", "input": {"to": "a@b.io", "deep": {"x": ["a@b.io"]}}}]});
        let (view, map) = response_view("/v1/messages", "m", &anthropic, &caller());
        assert_eq!(texts_of(&view.messages), ["t a@b.io", "a@b.io", "a@b.io"]);
        apply_edits(&mut anthropic, &map, &mask_emails(&view.messages));
        assert_eq!(anthropic["content"][1]["input"]["deep"]["x"][0], "[EMAIL]");
        assert_eq!(anthropic["content"][0]["thinking"], "t [EMAIL]");

        let mut gemini = json!({"candidates": [{"content": {"role": "model", "parts": [
            {"functionCall": {"name": "f", "args": {"to": "a@b.io"}}}]}}]});
        let (view, map) = response_view(
            "/v1beta/models/{model}:generateContent",
            "m",
            &gemini,
            &caller(),
        );
        assert_eq!(texts_of(&view.messages), ["a@b.io"]);
        apply_edits(&mut gemini, &map, &mask_emails(&view.messages));
        assert_eq!(
            gemini["candidates"][0]["content"]["parts"][0]["functionCall"]["args"]["to"],
            "[EMAIL]"
        );

        let mut responses = json!({"output": [
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "s a@b.io"}]},
            {"type": "function_call", "name": "f", "arguments": "{\"to\":\"a@b.io\"}"},
            {"type": "message", "content": [{"type": "refusal", "refusal": "no a@b.io"}]}]});
        let (view, map) = response_view("/v1/responses", "m", &responses, &caller());
        assert_eq!(
            texts_of(&view.messages),
            ["s a@b.io", "a@b.io", "no a@b.io"]
        );
        apply_edits(&mut responses, &map, &mask_emails(&view.messages));
        assert_eq!(responses["output"][1]["arguments"], "{\"to\":\"[EMAIL]\"}");
        assert_eq!(
            responses["output"][2]["content"][0]["refusal"],
            "no [EMAIL]"
        );

        let completions = json!({"choices": [{"text": "a@b.io"}]});
        let (view, _) = response_view("/v1/completions", "m", &completions, &caller());
        assert_eq!(texts_of(&view.messages), ["a@b.io"]);

        let mut plain = Value::String("plain a@b.io".into());
        let (view, map) = response_view("/v1/vllm/completions", "m", &plain, &caller());
        apply_edits(&mut plain, &map, &mask_emails(&view.messages));
        assert_eq!(plain, "plain [EMAIL]");
    }

    #[test]
    fn requests_show_tool_use_inputs_function_calls_and_results_of_every_family() {
        let Value::Object(mut anthropic) = json!({"messages": [
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {"to": "a@b.io"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                "content": [{"type": "text", "text": "ok a@b.io"}]}]}]})
        else {
            panic!()
        };
        let (view, map) = request_view("/v1/messages", "m", false, &anthropic, &caller());
        assert_eq!(texts_of(&view.messages), ["a@b.io", "ok a@b.io"]);
        apply_edits_to_body(&mut anthropic, &map, &mask_emails(&view.messages));
        assert_eq!(
            anthropic["messages"][0]["content"][0]["input"]["to"],
            "[EMAIL]"
        );
        assert_eq!(
            anthropic["messages"][1]["content"][0]["content"][0]["text"],
            "ok [EMAIL]"
        );

        let Value::Object(mut gemini) = json!({"contents": [
            {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {"to": "a@b.io"}}}]},
            {"role": "function", "parts": [{"functionResponse": {"name": "f", "response": {"r": "a@b.io"}}}]}]})
        else {
            panic!()
        };
        let (view, map) = request_view(
            "/v1beta/models/{model}:generateContent",
            "m",
            false,
            &gemini,
            &caller(),
        );
        assert_eq!(view.messages[1].role, wit::Role::Tool);
        apply_edits_to_body(&mut gemini, &map, &mask_emails(&view.messages));
        assert_eq!(
            gemini["contents"][0]["parts"][0]["functionCall"]["args"]["to"],
            "[EMAIL]"
        );
        assert_eq!(
            gemini["contents"][1]["parts"][0]["functionResponse"]["response"]["r"],
            "[EMAIL]"
        );

        let Value::Object(mut responses) = json!({"input": [
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{\"to\":\"a@b.io\"}"},
            {"type": "function_call_output", "call_id": "c", "output": "{\"r\":\"a@b.io\"}"}]})
        else {
            panic!()
        };
        let (view, map) = request_view("/v1/responses", "m", false, &responses, &caller());
        assert_eq!(view.messages[0].role, wit::Role::Assistant);
        apply_edits_to_body(&mut responses, &map, &mask_emails(&view.messages));
        assert_eq!(responses["input"][0]["arguments"], "{\"to\":\"[EMAIL]\"}");
        assert_eq!(responses["input"][1]["output"], "{\"r\":\"[EMAIL]\"}");
    }

    #[test]
    fn mcp_tool_arguments_and_results_map_back_into_their_json() {
        let mut arguments = json!({"message": "mail a@b.io", "nested": {"list": ["a@b.io", 1]}});
        let (view, map) = tool_call_view("everything", "echo", Some(&arguments), &caller());
        assert_eq!(view.parts.len(), 2);
        assert_eq!(view.tool, "echo");
        let parsed: Value = serde_json::from_str(&view.arguments).expect("JSON text");
        assert_eq!(parsed, arguments);
        let edits: Vec<wit::Edit> = view
            .parts
            .iter()
            .map(|p| wit::Edit {
                part: p.id,
                text: p.text.replace("a@b.io", "[EMAIL]"),
            })
            .collect();
        apply_edits(&mut arguments, &map, &edits);
        assert_eq!(
            arguments,
            json!({"message": "mail [EMAIL]", "nested": {"list": ["[EMAIL]", 1]}})
        );

        let mut result = json!({"content": [{"type": "text", "text": "Echo: a@b.io"},
            {"type": "resource", "resource": {"uri": "x", "text": "r a@b.io"}}, {"type": "image", "data": "AAA"}],
            "structuredContent": {"to": "a@b.io"}, "isError": true});
        let (view, map) = tool_result_view("everything", "echo", &result, &caller());
        assert!(view.is_error);
        let texts: Vec<&str> = view.parts.iter().map(|p| p.text.as_str()).collect();
        assert_eq!(texts, ["Echo: a@b.io", "r a@b.io", "a@b.io"]);
        let edits: Vec<wit::Edit> = view
            .parts
            .iter()
            .map(|p| wit::Edit {
                part: p.id,
                text: p.text.replace("a@b.io", "[EMAIL]"),
            })
            .collect();
        apply_edits(&mut result, &map, &edits);
        assert_eq!(result["content"][0]["text"], "Echo: [EMAIL]");
        assert_eq!(result["content"][1]["resource"]["text"], "r [EMAIL]");
        assert_eq!(result["structuredContent"]["to"], "[EMAIL]");
        assert_eq!(result["content"][2]["data"], "AAA");
    }

    #[test]
    fn stream_events_with_complete_texts_are_found() {
        let done = json!({"type": "response.output_text.done", "text": "all"});
        assert_eq!(event_full_texts(&done)[0].0, "all");
        let args = json!({"type": "response.function_call_arguments.done", "arguments": "{\"to\":\"a@b.io\"}"});
        let found = event_full_texts(&args);
        assert_eq!(found[0].0, "a@b.io");
        let mut v = args.clone();
        assert!(set_text(&mut v, &found[0].1, "[EMAIL]".into()));
        assert_eq!(v["arguments"], "{\"to\":\"[EMAIL]\"}");
        let item = json!({"type": "response.output_item.done", "item": {"type": "function_call", "arguments": "{\"to\":\"a@b.io\"}"}});
        assert_eq!(event_full_texts(&item)[0].0, "a@b.io");
        let delta = json!({"type": "response.output_text.delta", "delta": "a"});
        assert!(event_full_texts(&delta).is_empty());
        let completed = json!({"type": "response.completed", "response": {"output": [{"content": [{"type": "output_text", "text": "all"}]}]}});
        let found = event_full_texts(&completed);
        assert_eq!(found.len(), 1);
        let mut v = completed.clone();
        assert!(set_text(&mut v, &found[0].1, "x".into()));
        assert_eq!(v["response"]["output"][0]["content"][0]["text"], "x");
    }
}
