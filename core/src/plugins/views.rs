//! The JSON ↔ WIT bridge: what guardrails see of requests and answers, and where their edits
//! go back.
//!
//! Every text a plugin sees is a `text-part` whose id indexes a [`TextMap`]: the JSON path the
//! text came from. A rewrite replaces exactly those strings; everything else in the body
//! (unknown fields included) is left untouched.

use serde_json::{Map, Value};

use super::host::wit;
use crate::store::KeyRecord;

/// One step of a JSON path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    /// An object key.
    Key(String),
    /// An array index.
    Index(usize),
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

    fn message(&mut self, role: wit::Role, name: Option<String>, texts: Vec<(&str, Vec<Seg>)>) {
        if texts.is_empty() {
            return;
        }
        let parts = texts
            .into_iter()
            .map(|(text, path)| self.part(text, path))
            .collect();
        self.messages.push(wit::Message { role, name, parts });
    }

    /// A `content` value: a string, or an array of parts with a `text`.
    fn content<'a>(value: &'a Value, path: &[Seg]) -> Vec<(&'a str, Vec<Seg>)> {
        match value {
            Value::String(s) => vec![(s.as_str(), path.to_vec())],
            Value::Array(items) => items
                .iter()
                .enumerate()
                .filter_map(|(j, item)| {
                    let text = item.get("text")?.as_str()?;
                    let mut p = path.to_vec();
                    p.push(Seg::Index(j));
                    p.push(key("text"));
                    Some((text, p))
                })
                .collect(),
            _ => Vec::new(),
        }
    }
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
                    let texts = m.get("content").map_or_else(Vec::new, |c| {
                        Builder::content(c, &[key("messages"), Seg::Index(i), key("content")])
                    });
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
                        if let Some(output) = item.get("output").and_then(Value::as_str) {
                            let mut p = base.clone();
                            p.push(key("output"));
                            b.message(wit::Role::Tool, None, vec![(output, p)]);
                            continue;
                        }
                        let role =
                            role_of(item.get("role").and_then(Value::as_str).unwrap_or("user"));
                        let mut p = base;
                        p.push(key("content"));
                        let texts = item
                            .get("content")
                            .map_or_else(Vec::new, |c| Builder::content(c, &p));
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
        let mut path = base.to_vec();
        path.push(key("parts"));
        content
            .get("parts")
            .map(|p| {
                Builder::content(p, &path)
                    .into_iter()
                    .map(|(t, p)| (t.to_string(), p))
                    .collect()
            })
            .unwrap_or_default()
    };
    let add = |b: &mut Builder, role, texts: Vec<(String, Vec<Seg>)>| {
        let borrowed = texts.iter().map(|(t, p)| (t.as_str(), p.clone())).collect();
        b.message(role, None, borrowed);
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

/// The response view of a non-streamed OpenAI-shaped answer (chat completions or responses);
/// `None` when it carries no text.
pub fn response_view(
    endpoint: &str,
    model: &str,
    body: &Value,
    caller: &wit::Caller,
) -> Option<(wit::ResponseView, TextMap)> {
    let mut b = Builder::new();
    if let Some(Value::Array(choices)) = body.get("choices") {
        for (i, choice) in choices.iter().enumerate() {
            if let Some(content) = choice.get("message").and_then(|m| m.get("content")) {
                let path = [
                    key("choices"),
                    Seg::Index(i),
                    key("message"),
                    key("content"),
                ];
                let texts = Builder::content(content, &path);
                b.message(wit::Role::Assistant, None, texts);
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
    if b.map.is_empty() {
        return None;
    }
    Some((
        wit::ResponseView {
            model: model.to_string(),
            endpoint: endpoint.to_string(),
            messages: b.messages,
            caller: caller.clone(),
        },
        b.map,
    ))
}

/// Texts of a Responses API `output` array (`output[i].content[j].text`).
fn output_texts(b: &mut Builder, output: &[Value], base: &[Seg]) {
    for (i, item) in output.iter().enumerate() {
        let mut path = base.to_vec();
        path.push(Seg::Index(i));
        path.push(key("content"));
        if let Some(content) = item.get("content") {
            let texts = Builder::content(content, &path);
            b.message(wit::Role::Assistant, None, texts);
        }
    }
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
    if let Some(text) = event.get("text").and_then(Value::as_str) {
        b.message(wit::Role::Assistant, None, vec![(text, vec![key("text")])]);
    }
    if let Some(text) = event
        .get("part")
        .and_then(|p| p.get("text"))
        .and_then(Value::as_str)
    {
        b.message(
            wit::Role::Assistant,
            None,
            vec![(text, vec![key("part"), key("text")])],
        );
    }
    if let Some(content) = event.get("item").and_then(|i| i.get("content")) {
        let texts = Builder::content(content, &[key("item"), key("content")]);
        b.message(wit::Role::Assistant, None, texts);
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

fn navigate<'a>(root: &'a mut Value, path: &[Seg]) -> Option<&'a mut Value> {
    let mut at = root;
    for seg in path {
        at = match seg {
            Seg::Key(k) => at.get_mut(k.as_str())?,
            Seg::Index(i) => at.get_mut(*i)?,
        };
    }
    Some(at)
}

/// Sets the string at `path`.
pub fn set_text(root: &mut Value, path: &[Seg], text: String) -> bool {
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
        let (view, map) = response_view("/v1/messages", "m", &anthropic, &caller).expect("texts");
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
        )
        .expect("texts");
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
        let (view, map) =
            response_view("/v1/chat/completions", "m", &chat, &caller()).expect("text");
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
        assert!(response_view("/v1/responses", "m", &resp, &caller()).is_some());
        assert!(response_view("/v1/embeddings", "m", &json!({"data": []}), &caller()).is_none());
    }

    #[test]
    fn stream_events_with_complete_texts_are_found() {
        let done = json!({"type": "response.output_text.done", "text": "all"});
        assert_eq!(event_full_texts(&done)[0].0, "all");
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
