//! Native unit tests of the Ollama adapter: request, answer and stream translation.

use serde_json::{Value, json};
use tollgate_plugin_sdk::{Config, HttpMessage, ProviderAdapter, SseEvent};

use super::OllamaAdapter;

fn adapter(config: Value) -> OllamaAdapter {
    OllamaAdapter::new(&Config::from_value(config)).expect("config")
}

fn request(body: Value) -> HttpMessage {
    HttpMessage {
        status: 0,
        path: String::new(),
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.to_string().into_bytes(),
    }
}

fn json_of(message: &HttpMessage) -> Value {
    serde_json::from_slice(&message.body).expect("json body")
}

#[test]
fn an_openai_request_becomes_an_ollama_chat_request() {
    let mut a = adapter(json!({"keep_alive": "5m"}));
    let out = a
        .transform_request(request(json!({
            "model": "llama3.2",
            "stream": true,
            "max_tokens": 64,
            "temperature": 0.2,
            "stop": "END",
            "response_format": {"type": "json_object"},
            "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}}
                ]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "look", "arguments": ""}},
                    {"id": "c2", "type": "function", "function": {"name": "find", "arguments": "{\"q\":1}"}}
                ]},
                {"role": "tool", "tool_call_id": "c1", "name": "look", "content": "a cat"}
            ],
            "tools": [{"type": "function", "function": {"name": "look", "parameters": {"type": "object"}}}]
        })))
        .expect("translated");
    assert_eq!(out.path, "/api/chat");
    let body = json_of(&out);
    assert_eq!(body["model"], "llama3.2");
    assert_eq!(body["stream"], true);
    assert_eq!(body["keep_alive"], "5m");
    assert_eq!(body["format"], "json");
    assert_eq!(
        body["options"],
        json!({"num_predict": 64, "temperature": 0.2, "stop": ["END"]})
    );
    assert_eq!(
        body["messages"][0],
        json!({"role": "system", "content": "be brief"})
    );
    assert_eq!(body["messages"][1]["images"], json!(["iVBOR"]));
    assert_eq!(body["messages"][1]["content"], "what is this?");
    assert_eq!(
        body["messages"][2]["tool_calls"],
        json!([
            {"function": {"name": "look", "arguments": {}}},
            {"function": {"name": "find", "arguments": {"q": 1}}}
        ])
    );
    assert_eq!(body["messages"][3]["tool_name"], "look");
    assert_eq!(body["tools"][0]["function"]["name"], "look");
}

#[test]
fn parameters_ollama_lacks_are_refused_with_a_code() {
    let mut a = adapter(json!({}));
    let e = a
        .transform_request(request(json!({"model": "m", "n": 2, "messages": []})))
        .expect_err("n=2");
    assert_eq!(e.code, "unsupported_parameter");
    let e = a
        .transform_request(request(
            json!({"model": "m", "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
            ]}]}),
        ))
        .expect_err("remote image");
    assert_eq!(e.code, "unsupported_content");
}

#[test]
fn an_ollama_answer_becomes_a_chat_completion_with_usage_and_tool_calls() {
    let mut a = adapter(json!({}));
    let native = json!({
        "model": "llama3.2", "created_at": "2026-11-29T07:40:13.5Z",
        "message": {"role": "assistant", "content": "", "thinking": "hmm",
            "tool_calls": [{"function": {"name": "look", "arguments": {"q": "cat"}}}]},
        "done": true, "done_reason": "stop", "prompt_eval_count": 12, "eval_count": 5
    });
    let out = a
        .transform_response(HttpMessage {
            status: 200,
            path: String::new(),
            headers: Vec::new(),
            body: native.to_string().into_bytes(),
        })
        .expect("translated");
    let body = json_of(&out);
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["created"], 1_795_938_013_i64);
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(body["choices"][0]["message"]["reasoning_content"], "hmm");
    let call = &body["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["arguments"], "{\"q\":\"cat\"}");
    assert!(
        call["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("call_"))
    );
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17})
    );
    assert_eq!(
        a.extract_usage(&native.to_string())
            .map(|u| (u.input_tokens, u.output_tokens)),
        Some((12, 5))
    );
}

#[test]
fn ollama_errors_become_openai_error_bodies_with_the_same_status() {
    let mut a = adapter(json!({}));
    let out = a
        .transform_response(HttpMessage {
            status: 404,
            path: String::new(),
            headers: Vec::new(),
            body: br#"{"error":"model 'nope' not found"}"#.to_vec(),
        })
        .expect("translated");
    assert_eq!(out.status, 404);
    let body = json_of(&out);
    assert_eq!(body["error"]["code"], "model_not_found");
    assert_eq!(body["error"]["message"], "model 'nope' not found");
}

fn line(value: Value) -> SseEvent {
    SseEvent {
        event: None,
        data: value.to_string(),
    }
}

#[test]
fn stream_lines_become_chunks_then_finish_usage_and_done() {
    let mut a = adapter(json!({}));
    let at = "2026-11-29T07:40:13Z";
    let first = a
        .transform_stream_event(line(json!({"model": "m", "created_at": at,
            "message": {"role": "assistant", "content": "Hel"}, "done": false})))
        .expect("chunk");
    assert_eq!(first.len(), 1);
    let chunk: Value = serde_json::from_str(&first[0].data).expect("json");
    assert_eq!(chunk["object"], "chat.completion.chunk");
    assert_eq!(chunk["choices"][0]["delta"]["content"], "Hel");

    let empty = a
        .transform_stream_event(line(json!({"model": "m", "created_at": at,
            "message": {"role": "assistant", "content": ""}, "done": false})))
        .expect("nothing");
    assert!(empty.is_empty());

    let last = a
        .transform_stream_event(line(json!({"model": "m", "created_at": at,
            "message": {"role": "assistant", "content": ""}, "done": true, "done_reason": "length",
            "prompt_eval_count": 7, "eval_count": 3})))
        .expect("end");
    let data: Vec<&str> = last.iter().map(|e| e.data.as_str()).collect();
    assert_eq!(data.len(), 3, "{data:?}");
    let finish: Value = serde_json::from_str(data[0]).expect("json");
    assert_eq!(finish["choices"][0]["finish_reason"], "length");
    let usage: Value = serde_json::from_str(data[1]).expect("json");
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["total_tokens"], 10);
    assert_eq!(data[2], "[DONE]");
}

#[test]
fn an_error_line_mid_stream_is_an_adapter_error() {
    let mut a = adapter(json!({}));
    let e = a
        .transform_stream_event(line(json!({"error": "out of memory"})))
        .expect_err("error line");
    assert_eq!(e.code, "provider_error");
    assert_eq!(e.message, "out of memory");
}

#[test]
fn keep_alive_must_be_a_string() {
    assert!(OllamaAdapter::new(&Config::from_value(json!({"keep_alive": 5}))).is_err());
}
