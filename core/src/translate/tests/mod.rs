//! Golden tests of the translation core: a fixture in (`fixtures/*.json`), the expected output
//! out (`snapshots/*.snap`, reviewed by hand), for requests, answers, streams and errors.

mod answers;
mod errors;
mod requests;
mod streams;

use serde_json::{Value, json};

use super::{Dialect, RequestOptions, ResponseContext, SseEvent, StreamTranslator, ToolNames};

/// A fixture file as JSON.
fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/src/translate/tests/fixtures/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn opts(stream: bool) -> RequestOptions {
    RequestOptions {
        upstream_model: "upstream-model".into(),
        max_tokens: None,
        default_max_tokens: 4096,
        stream,
    }
}

fn ctx(include_usage: bool) -> ResponseContext {
    ctx_with(include_usage, ToolNames::default())
}

fn ctx_with(include_usage: bool, names: ToolNames) -> ResponseContext {
    ResponseContext {
        client_model: "client-model".into(),
        request_id: "req1".into(),
        created: 1_764_000_000,
        include_usage,
        names,
    }
}

/// A stream fixture (`[{"event"?, "data": <json or string>}]`) as SSE events.
fn events(name: &str) -> Vec<SseEvent> {
    let Value::Array(items) = fixture(name) else {
        panic!("{name}: a stream fixture is an array");
    };
    items
        .iter()
        .map(|item| SseEvent {
            event: item
                .get("event")
                .and_then(Value::as_str)
                .map(str::to_string),
            data: match &item["data"] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            },
        })
        .collect()
}

/// SSE events as readable JSON (data parsed when it is JSON).
fn render(events: &[SseEvent]) -> Value {
    Value::Array(
        events
            .iter()
            .map(|e| {
                let data = serde_json::from_str::<Value>(&e.data).unwrap_or_else(|_| json!(e.data));
                match &e.event {
                    Some(name) => json!({"event": name, "data": data}),
                    None => json!({"data": data}),
                }
            })
            .collect(),
    )
}

/// Runs a whole upstream stream through a translator: every event, then `finish`.
fn translate_stream(
    from: Dialect,
    to: Dialect,
    ctx: ResponseContext,
    input: &[SseEvent],
) -> (Vec<SseEvent>, StreamTranslator) {
    let mut translator = StreamTranslator::new(from, to, ctx);
    let mut out = Vec::new();
    for event in input {
        out.extend(translator.push(event).expect("translatable event"));
    }
    out.extend(translator.finish());
    (out, translator)
}

/// The JSON data of each client event (skipping `[DONE]`).
fn datas(events: &[SseEvent]) -> Vec<Value> {
    events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(&e.data).ok())
        .collect()
}
