//! Providers spoken through a provider-adapter plugin (`family = "adapter"`).
//!
//! The call, for one OpenAI-shaped chat request (what `/v1/chat/completions` and the unified
//! endpoint send, and what Anthropic or Gemini clients are translated to):
//! 1. `transform-request` turns it into the provider's native request: a path (appended to the
//!    provider's `base_url`, so an adapter cannot send traffic elsewhere), headers and a body;
//! 2. the gateway makes the HTTP call. The credential is injected here, as
//!    `Authorization: Bearer`, and never shown to the adapter; an adapter's own
//!    `authorization`, `host` and framing headers are dropped;
//! 3. the answer goes back through `transform-response` (whole bodies, any status but 5xx, which
//!    fail over untouched) or, for a 2xx stream, event by event through
//!    `transform-stream-event`. Native streams are framed by content type: `text/event-stream`
//!    as SSE events, anything else (Ollama's `application/x-ndjson`) one event per line. The
//!    adapter's events go out as OpenAI SSE chunks, so the normal relay (usage tap, guardrails,
//!    include_usage) and the translation core for other families apply unchanged.
//!
//! An adapter's own error is a 502 `adapter_error`; a trap, time or memory overrun is a 502
//! `adapter_failed` and the instance is discarded. After the first byte of a stream either ends
//! the stream with an error event, like a provider failing mid-stream.

use std::sync::Arc;

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use super::{BodyStream, Outbound, UpstreamReply, describe};
use crate::error::UpstreamError;
use crate::family::Endpoint;
use crate::plugins::Failure;
use crate::plugins::adapter::{Adapter, AdapterError, HttpMessage, SseEvent};
use crate::policy::{Credential, Model};
use crate::translate::SseParser;

/// Native bodies larger than this are refused before they reach the adapter.
const MAX_NATIVE_BODY: usize = 64 * 1024 * 1024;

/// Headers an adapter may not set: the gateway owns credentials and framing.
const RESERVED: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
];

fn adapter_error(provider: &str, adapter: &str, e: &AdapterError) -> UpstreamError {
    UpstreamError::Adapter {
        provider: provider.to_string(),
        adapter: adapter.to_string(),
        code: "adapter_error",
        detail: format!("could not translate ({}): {}", e.code, e.message),
    }
}

fn adapter_failed(provider: &str, adapter: &str, f: &Failure) -> UpstreamError {
    UpstreamError::Adapter {
        provider: provider.to_string(),
        adapter: adapter.to_string(),
        code: "adapter_failed",
        detail: f.to_string(),
    }
}

/// Checks the path an adapter asked for: relative to the base URL, no escape from it.
fn checked_path(path: &str) -> Result<&str, String> {
    if !path.starts_with('/')
        || path.starts_with("//")
        || path.contains("..")
        || path.contains('#')
        || path.contains('\\')
        || path.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "asked for the path {path:?}: it must start with '/' and stay under the provider's base_url"
        ));
    }
    Ok(path)
}

/// Calls `model`'s provider through its adapter.
pub async fn send(
    http: &reqwest::Client,
    model: &Model,
    out: Outbound<'_>,
) -> Result<UpstreamReply, UpstreamError> {
    let provider = &model.provider;
    let name = provider.name.as_str();
    let Some(adapter) = provider.adapter.as_ref().and_then(|b| b.get()).cloned() else {
        return Err(UpstreamError::BadResponse {
            provider: name.to_string(),
            detail: "the provider's adapter is not loaded".into(),
        });
    };
    let plugin = adapter.name.as_str();
    if !matches!(out.endpoint, Endpoint::ChatCompletions | Endpoint::Unified) {
        return Err(UpstreamError::Adapter {
            provider: name.to_string(),
            adapter: plugin.to_string(),
            code: "adapter_error",
            detail: format!(
                "serves chat only, not {} (adapters translate chat completions)",
                out.endpoint.path()
            ),
        });
    }
    let base = provider
        .base_url
        .as_deref()
        .ok_or_else(|| UpstreamError::BadResponse {
            provider: name.to_string(),
            detail: "provider has no base_url".into(),
        })?;
    let accept = if out.stream {
        "text/event-stream"
    } else {
        "application/json"
    };
    let unified = HttpMessage {
        status: 0,
        path: String::new(),
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("accept".into(), accept.into()),
        ],
        body: out.body.to_vec(),
    };
    let native = match adapter.pool.transform_request(&unified).await {
        Ok(Ok(native)) => native,
        Ok(Err(e)) => return Err(adapter_error(name, plugin, &e)),
        Err(f) => return Err(adapter_failed(name, plugin, &f)),
    };
    let path = checked_path(&native.path).map_err(|detail| UpstreamError::Adapter {
        provider: name.to_string(),
        adapter: plugin.to_string(),
        code: "adapter_error",
        detail,
    })?;
    let own;
    let client = match provider.client.as_ref() {
        Some(client) => client,
        None => {
            own = super::thread_client(http);
            &own
        }
    };
    let mut request = client.post(format!("{base}{path}")).body(native.body);
    let mut has_content_type = false;
    for (key, value) in &native.headers {
        let key = key.to_ascii_lowercase();
        if RESERVED.contains(&key.as_str()) {
            continue;
        }
        let (Ok(key), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(value),
        ) else {
            return Err(UpstreamError::Adapter {
                provider: name.to_string(),
                adapter: plugin.to_string(),
                code: "adapter_error",
                detail: format!("set an invalid header {key:?}"),
            });
        };
        has_content_type |= key == header::CONTENT_TYPE;
        request = request.header(key, value);
    }
    if !has_content_type {
        request = request.header(header::CONTENT_TYPE, "application/json");
    }
    if let Credential::Present(secret) = &provider.credential {
        request = request.bearer_auth(secret.expose());
    }
    let response = super::await_headers(provider, request, std::time::Instant::now()).await?;
    let status = response.status();
    let native_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let provider_request_id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let retry_after = response.headers().get(header::RETRY_AFTER).cloned();
    let body: BodyStream = Box::pin(response.bytes_stream().map(|r| r.map_err(|e| describe(&e))));
    let reply = |content_type: &'static str, body: BodyStream| UpstreamReply {
        status,
        content_type: Some(HeaderValue::from_static(content_type)),
        provider_request_id: provider_request_id.clone(),
        retry_after: retry_after.clone(),
        body,
    };
    if status.is_server_error() {
        // The call stage fails over or answers 502 without reading it.
        return Ok(reply("application/json", body));
    }
    if out.stream && status.is_success() {
        let events = Events {
            upstream: body,
            sse: native_type
                .trim_start()
                .starts_with("text/event-stream")
                .then(SseParser::new),
            line: BytesMut::new(),
            adapter,
            ended: false,
            tool_calls_seen: false,
        };
        return Ok(reply("text/event-stream", events.into_stream()));
    }
    let native_body = collect(body)
        .await
        .map_err(|detail| UpstreamError::BadResponse {
            provider: name.to_string(),
            detail,
        })?;
    let answer = HttpMessage {
        status: status.as_u16(),
        path: String::new(),
        headers: vec![("content-type".into(), native_type)],
        body: native_body.to_vec(),
    };
    let body = match adapter.pool.transform_response(&answer).await {
        Ok(Ok(translated)) => Bytes::from(translated.body),
        Ok(Err(_)) if !status.is_success() => openai_error(status, &native_body),
        Ok(Err(e)) => return Err(adapter_error(name, plugin, &e)),
        Err(f) => return Err(adapter_failed(name, plugin, &f)),
    };
    Ok(reply(
        "application/json",
        Box::pin(futures_util::stream::once(async move { Ok(body) })),
    ))
}

/// A provider error the adapter could not translate, in an OpenAI envelope.
fn openai_error(status: StatusCode, native: &[u8]) -> Bytes {
    let text: String = String::from_utf8_lossy(native).chars().take(2000).collect();
    let body = serde_json::json!({"error": {
        "message": text, "type": "upstream_error", "code": "upstream_rejected",
        "status": status.as_u16(),
    }});
    Bytes::from(body.to_string())
}

async fn collect(mut body: BodyStream) -> Result<Bytes, String> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        if buf.len() + chunk.len() > MAX_NATIVE_BODY {
            return Err(format!("native answer larger than {MAX_NATIVE_BODY} bytes"));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// A native stream on its way through the adapter, one event at a time.
struct Events {
    upstream: BodyStream,
    /// `Some` for SSE streams; `None` frames one event per line (NDJSON).
    sse: Option<SseParser>,
    line: BytesMut,
    adapter: Arc<Adapter>,
    ended: bool,
    /// A translated chunk carried tool calls: a later `stop` finish becomes `tool_calls`.
    tool_calls_seen: bool,
}

impl Events {
    fn into_stream(self) -> BodyStream {
        Box::pin(futures_util::stream::unfold(self, |mut st| async move {
            loop {
                if st.ended {
                    return None;
                }
                let native = match st.upstream.next().await {
                    Some(Ok(chunk)) => st.split(&chunk),
                    Some(Err(detail)) => {
                        st.ended = true;
                        return Some((Err(detail), st));
                    }
                    None => {
                        st.ended = true;
                        st.rest()
                    }
                };
                let adapter = st.adapter.clone();
                match translate(&adapter, native, &mut st.tool_calls_seen).await {
                    Ok(bytes) if bytes.is_empty() => continue,
                    Ok(bytes) => return Some((Ok(bytes), st)),
                    Err(detail) => {
                        st.ended = true;
                        return Some((Err(detail), st));
                    }
                }
            }
        }))
    }

    /// Complete native events in `chunk`.
    fn split(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        if let Some(parser) = self.sse.as_mut() {
            return parser.push(chunk).into_iter().map(wit_event).collect();
        }
        self.line.extend_from_slice(chunk);
        let mut events = Vec::new();
        while let Some(at) = self.line.iter().position(|b| *b == b'\n') {
            let line = self.line.split_to(at + 1);
            if let Some(event) = line_event(&line) {
                events.push(event);
            }
        }
        events
    }

    /// The last, unterminated event.
    fn rest(&mut self) -> Vec<SseEvent> {
        if let Some(parser) = self.sse.as_mut() {
            return parser.finish().map(wit_event).into_iter().collect();
        }
        let line = std::mem::take(&mut self.line);
        line_event(&line).into_iter().collect()
    }
}

/// Native events through the adapter, encoded as SSE.
async fn translate(
    adapter: &Adapter,
    native: Vec<SseEvent>,
    tool_calls_seen: &mut bool,
) -> Result<Bytes, String> {
    let mut out = String::new();
    for event in native {
        let translated = match adapter.pool.transform_stream_event(&event).await {
            Ok(Ok(events)) => events,
            Ok(Err(e)) => {
                return Err(format!(
                    "adapter '{}' could not translate a stream event ({}): {}",
                    adapter.name, e.code, e.message
                ));
            }
            Err(f) => return Err(format!("adapter '{}' {f}", adapter.name)),
        };
        for event in translated {
            let data = finish_with_tools(event.data, tool_calls_seen);
            let encoded = crate::translate::SseEvent {
                event: event.event,
                data,
            };
            out.push_str(&encoded.encode());
        }
    }
    Ok(Bytes::from(out))
}

/// Adapters are stateless between stream events, so one that sends a tool call on one event
/// and its native `stop` on a later one cannot know the OpenAI finish reason is `tool_calls`.
/// The gateway sees the whole stream: it notes tool-call deltas and rewrites a later `stop`.
fn finish_with_tools(data: String, tool_calls_seen: &mut bool) -> String {
    let has_calls = data.contains("\"tool_calls\"");
    let finishes = data.contains("\"finish_reason\"");
    if !(has_calls || (finishes && *tool_calls_seen)) {
        return data;
    }
    let Ok(mut chunk) = serde_json::from_str::<serde_json::Value>(&data) else {
        return data;
    };
    let mut changed = false;
    if let Some(choices) = chunk
        .get_mut("choices")
        .and_then(serde_json::Value::as_array_mut)
    {
        for choice in choices {
            if choice
                .pointer("/delta/tool_calls")
                .and_then(serde_json::Value::as_array)
                .is_some_and(|calls| !calls.is_empty())
            {
                *tool_calls_seen = true;
            }
            if *tool_calls_seen
                && choice
                    .get("finish_reason")
                    .and_then(serde_json::Value::as_str)
                    == Some("stop")
            {
                choice["finish_reason"] = serde_json::Value::from("tool_calls");
                changed = true;
            }
        }
    }
    if changed { chunk.to_string() } else { data }
}

fn wit_event(event: crate::translate::SseEvent) -> SseEvent {
    SseEvent {
        event: event.event,
        data: event.data,
    }
}

/// One NDJSON line as an event (blank lines are skipped).
fn line_event(line: &[u8]) -> Option<SseEvent> {
    let text = String::from_utf8_lossy(line);
    let text = text.trim();
    (!text.is_empty()).then(|| SseEvent {
        event: None,
        data: text.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_after_streamed_tool_calls_becomes_tool_calls() {
        let mut seen = false;
        let text = r#"{"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}"#;
        assert_eq!(finish_with_tools(text.into(), &mut seen), text);
        let stop = r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#;
        assert_eq!(finish_with_tools(stop.into(), &mut seen), stop);
        let call = r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0}]},"finish_reason":null}]}"#;
        assert_eq!(finish_with_tools(call.into(), &mut seen), call);
        assert!(seen);
        let fixed: serde_json::Value =
            serde_json::from_str(&finish_with_tools(stop.into(), &mut seen)).expect("json");
        assert_eq!(fixed["choices"][0]["finish_reason"], "tool_calls");
        let length = r#"{"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}"#;
        assert_eq!(finish_with_tools(length.into(), &mut seen), length);
    }

    #[test]
    fn adapter_paths_stay_under_the_base_url() {
        assert_eq!(checked_path("/api/chat"), Ok("/api/chat"));
        assert_eq!(checked_path("/v2/chat?x=1"), Ok("/v2/chat?x=1"));
        for bad in [
            "api/chat",
            "//evil.example/x",
            "/../admin",
            "/a b",
            "/x#frag",
            "",
            "@evil.example/",
            "/a\\b",
        ] {
            assert!(checked_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ndjson_lines_become_events_and_blank_lines_are_skipped() {
        assert_eq!(
            line_event(b"{\"done\":false}\r\n").map(|e| e.data),
            Some("{\"done\":false}".to_string())
        );
        assert!(line_event(b"  \n").is_none());
    }
}
