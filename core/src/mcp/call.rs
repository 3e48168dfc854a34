//! The call stage of an MCP request: inject the upstream credential, translate the session id,
//! relay the answer (JSON, SSE or the GET stream) with tools filtered and bytes counted, and
//! record the usage row when the answer ends.

use std::sync::Arc;
use std::time::Instant;

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::Value;
use tracing::Instrument as _;

use super::gateway::{Prepared, json_response, refuse, refuse_to};
use super::http::{
    EventRewrite, event_data, relay, relayed_headers, replace_data, session_header, tool_filter,
    upstream_headers, upstream_url,
};
use super::jsonrpc::filter_tools;
use super::server::{StdioCommand, Transport};
use crate::error::{GatewayError, McpError};
use crate::pipeline::inspect::called_tools;
use crate::pipeline::{Recorder, Stage};
use crate::state::AppState;

fn upstream_error(p: &Prepared, detail: impl Into<String>) -> GatewayError {
    McpError::Upstream {
        server: p.server.slug.clone(),
        detail: detail.into(),
    }
    .into()
}

/// Whether the server's tool rules can hide anything from `tools/list`.
fn rules_filter(p: &Prepared) -> bool {
    !p.server.tools.allowed.is_empty() || !p.server.tools.blocked.is_empty()
}

/// Records the answer once it ended with `bytes_out` bytes.
fn finish(
    mut recorder: Recorder,
    p: &Prepared,
    status: u16,
    bytes_out: i64,
    stream_status: Option<&str>,
) {
    let mut usage = p.usage.clone();
    usage.bytes_out = bytes_out;
    let cost = p.cost(bytes_out);
    recorder.set_mcp(usage, cost);
    if let Some(s) = stream_status {
        recorder.set_stream_status(s);
    }
    let code = (status >= 400).then_some("mcp_upstream_status");
    recorder.finish(status, code);
}

/// Records an answer in which a guardrail plugin refused a tool result: the row keeps the
/// refusal (`403 mcp_guardrail_block`) while the client got the JSON-RPC error in the answer.
fn finish_refused(mut recorder: Recorder, p: &Prepared, bytes_out: i64) {
    let mut usage = p.usage.clone();
    usage.bytes_out = bytes_out;
    let cost = p.cost(bytes_out);
    recorder.set_mcp(usage, cost);
    recorder.finish(403, Some("mcp_guardrail_block"));
}

/// The `tool_result` phase on a JSON answer value, if plugins with that phase are bound and the
/// request called tools. Returns whether a result was refused.
async fn guard_results(p: &Prepared, answer: &mut Value, recorder: &mut Recorder) -> (bool, bool) {
    let (Some(guards), Some(envelope)) = (&p.tool_guards, &p.envelope) else {
        return (false, false);
    };
    let tools = called_tools(&envelope.messages);
    let (decisions, changed, refused) = guards.check_results(answer, &tools).await;
    recorder.add_decisions(decisions);
    (changed, refused)
}

/// Whether the answer to this request goes through the `tool_result` phase.
fn guards_results(p: &Prepared) -> bool {
    p.tool_guards
        .as_ref()
        .is_some_and(|g| g.has(crate::plugins::Phase::ToolResult))
        && p.envelope
            .as_ref()
            .is_some_and(|e| !called_tools(&e.messages).is_empty())
}

/// The `tool_result` phase over a whole SSE answer to a POST (buffered: it ends once the
/// answers are sent): each event's JSON-RPC message is inspected and rewritten.
async fn guard_sse(p: &Prepared, bytes: Bytes, recorder: &mut Recorder) -> (Bytes, bool) {
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let mut out = String::with_capacity(text.len());
    let mut refused = false;
    let normalized = text.replace("\r\n", "\n");
    for event in normalized.split("\n\n") {
        if event.is_empty() {
            continue;
        }
        let mut rewritten = None;
        if let Some(data) = event_data(event)
            && let Ok(mut value) = serde_json::from_str::<Value>(&data)
        {
            let mut changed = false;
            if rules_filter(p) {
                changed |= filter_tools(&mut value, &p.server.tools);
            }
            let (masked, denied) = guard_results(p, &mut value, recorder).await;
            refused |= denied;
            if changed || masked {
                rewritten = Some(replace_data(event, &value.to_string()));
            }
        }
        out.push_str(rewritten.as_deref().unwrap_or(event));
        out.push_str("\n\n");
    }
    (Bytes::from(out), refused)
}

/// Answers a failed upstream call (before anything was relayed) in the form the client expects:
/// JSON-RPC on the legacy SSE stream or in the body once it holds requests, else HTTP.
fn call_failed(app: &AppState, p: &Prepared, recorder: Recorder, error: &GatewayError) -> Response {
    refuse_to(
        app,
        p.sse_route.as_ref(),
        false,
        recorder,
        Stage::Call,
        error,
        p.envelope.as_ref(),
        None,
    )
}

/// Relays to a Streamable HTTP server, or to a legacy SSE server (GET opens its stream, POSTs
/// go to the path its `endpoint` event named).
pub async fn http(app: &Arc<AppState>, p: Prepared, url: &str, mut recorder: Recorder) -> Response {
    let legacy_sse = matches!(p.server.transport, Transport::Sse { .. });
    let target = if legacy_sse && p.method != Method::GET {
        match super::sse::message_url(url, p.path.as_deref(), p.query.as_deref()) {
            Some(u) => u,
            None => {
                let error = upstream_error(&p, "the SSE url has no origin");
                return call_failed(app, &p, recorder, &error);
            }
        }
    } else {
        upstream_url(url, p.path.as_deref(), p.query.as_deref())
    };
    let mut headers = upstream_headers(&p.headers);
    if let Some(sealed) = p
        .headers
        .get(session_header())
        .and_then(|v| v.to_str().ok())
    {
        match app.mcp.sessions.open(&p.server.slug, &p.key.id, sealed) {
            Some(upstream) => {
                if let Ok(v) = HeaderValue::from_str(&upstream) {
                    headers.insert(session_header(), v);
                }
            }
            None => {
                let error = McpError::SessionNotFound.into();
                return call_failed(app, &p, recorder, &error);
            }
        }
    }
    if legacy_sse && p.method == Method::GET {
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
    }
    // The upstream credential goes in only now, after governance passed.
    match app.mcp.tokens.authorization(&p.server, &app.http).await {
        Ok(Some(value)) => {
            headers.insert(header::AUTHORIZATION, value);
        }
        Ok(None) => {}
        Err(e) => {
            return call_failed(app, &p, recorder, &e.into());
        }
    }
    // A legacy session's tool results come on its stream: their ids are awaited before the
    // POST goes upstream (a result can beat the POST's own answer).
    let awaiting = if legacy_sse && p.method == Method::POST {
        match await_results(app, &p) {
            Ok(a) => a,
            Err(error) => return call_failed(app, &p, recorder, &error),
        }
    } else {
        None
    };
    // The call's client span; its W3C context goes upstream (nothing when traces are off).
    let span = call_span(&p, &recorder);
    for (name, value) in span.in_scope(crate::telemetry::outbound_headers) {
        headers.insert(name, value);
    }
    let mut request = app.http.request(p.method.clone(), &target).headers(headers);
    if let Some(body) = &p.body {
        request = request.body(body.clone());
    }
    let started = Instant::now();
    let sent = tokio::time::timeout(p.server.timeout, request.send())
        .instrument(span.clone())
        .await;
    let response = match sent {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            let error = upstream_error(&p, format!("unreachable: {}", without_url(&e)));
            crate::telemetry::set_error(&span, &error.to_string());
            return call_failed(app, &p, recorder, &error);
        }
        Err(_) => {
            let error = upstream_error(
                &p,
                format!("no answer within {} ms", p.server.timeout.as_millis()),
            );
            crate::telemetry::set_error(&span, &error.to_string());
            return call_failed(app, &p, recorder, &error);
        }
    };
    recorder.set_upstream_latency(
        i64::try_from(started.elapsed().as_micros()).unwrap_or(i64::MAX),
        None,
    );
    let status = response.status();
    crate::telemetry::set(
        &span,
        "http.response.status_code",
        i64::from(status.as_u16()),
    );
    drop(span);
    if status.is_server_error() {
        let error = upstream_error(&p, format!("answered with status {}", status.as_u16()));
        return call_failed(app, &p, recorder, &error);
    }
    let mut out_headers = relayed_headers(response.headers());
    if let Some(upstream_session) = response
        .headers()
        .get(session_header())
        .and_then(|v| v.to_str().ok())
    {
        let sealed = app
            .mcp
            .sessions
            .seal(&p.server.slug, &p.key.id, upstream_session);
        if let Ok(v) = HeaderValue::from_str(&sealed) {
            out_headers.insert(session_header(), v);
        }
    }
    if let Some(awaiting) = awaiting
        && status.is_success()
    {
        // The upstream accepted the POST (`202`): its row waits for the results on the stream.
        let limit = p.snapshot.limits.max_response_bytes;
        let bytes = match read_limited(response, limit).await {
            Ok(b) => b,
            Err(detail) => {
                drop(awaiting);
                let error = upstream_error(&p, detail);
                return call_failed(app, &p, recorder, &error);
            }
        };
        recorder.mark_first_byte();
        let mut answer = (status, bytes).into_response();
        *answer.headers_mut() = out_headers;
        awaiting.attach(recorder, p);
        return answer;
    }
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    if content_type.starts_with("application/json") {
        let limit = p.snapshot.limits.max_response_bytes;
        let bytes = match read_limited(response, limit).await {
            Ok(b) => b,
            Err(detail) => {
                let error = upstream_error(&p, detail);
                return call_failed(app, &p, recorder, &error);
            }
        };
        let bytes = if rules_filter(&p) {
            filtered_json(bytes, &p)
        } else {
            bytes
        };
        let mut refused = false;
        let bytes = match serde_json::from_slice::<Value>(&bytes) {
            Ok(mut value) if guards_results(&p) => {
                let (changed, denied) = guard_results(&p, &mut value, &mut recorder).await;
                refused = denied;
                if changed {
                    Bytes::from(value.to_string())
                } else {
                    bytes
                }
            }
            _ => bytes,
        };
        recorder.mark_first_byte();
        let bytes_out = i64::try_from(bytes.len()).unwrap_or(i64::MAX);
        if refused {
            finish_refused(recorder, &p, bytes_out);
        } else {
            finish(recorder, &p, status.as_u16(), bytes_out, None);
        }
        let mut answer = (status, bytes).into_response();
        *answer.headers_mut() = out_headers;
        return answer;
    }
    // An SSE answer to a POST whose tool results guardrails inspect: read whole (it ends once the
    // answers are sent), inspected, then sent.
    if !legacy_sse
        && p.method == Method::POST
        && content_type.starts_with("text/event-stream")
        && guards_results(&p)
    {
        let limit = p.snapshot.limits.max_response_bytes;
        let read = tokio::time::timeout(p.server.timeout, read_limited(response, limit)).await;
        let bytes = match read {
            Ok(Ok(b)) => b,
            Ok(Err(detail)) => {
                let error = upstream_error(&p, detail);
                return call_failed(app, &p, recorder, &error);
            }
            Err(_) => {
                let error = upstream_error(
                    &p,
                    format!("no answer within {} ms", p.server.timeout.as_millis()),
                );
                return call_failed(app, &p, recorder, &error);
            }
        };
        let (bytes, refused) = guard_sse(&p, bytes, &mut recorder).await;
        recorder.mark_first_byte();
        let bytes_out = i64::try_from(bytes.len()).unwrap_or(i64::MAX);
        if refused {
            finish_refused(recorder, &p, bytes_out);
        } else {
            finish(recorder, &p, status.as_u16(), bytes_out, None);
        }
        let mut answer = (status, bytes).into_response();
        *answer.headers_mut() = out_headers;
        return answer;
    }
    // A stream (SSE answer to a POST, the GET stream) or anything else: relayed as it comes.
    recorder.mark_first_byte();
    recorder.set_stream_status("open");
    let code = status.as_u16();
    let ending = recorder.streams_end();
    let max_event_bytes = p.snapshot.limits.max_response_bytes;
    let body = if legacy_sse && p.method == Method::GET {
        // The legacy stream: relayed event by event, results matched to their calls.
        let (tx, inject) = tokio::sync::mpsc::unbounded_channel();
        let session = super::sse::Session::new(&p.key.id, tx);
        let governor = super::sse::Governor {
            session: session.clone(),
            runtime: app.mcp.clone(),
            sse_url: url.to_string(),
            slug: p.server.slug.clone(),
            rules: rules_filter(&p).then(|| p.server.tools.clone()),
            max_event_bytes: p.snapshot.limits.max_response_bytes,
        };
        let runtime = app.mcp.clone();
        let on_end = Box::new(move |bytes_out: i64, reason: Option<&'static str>| {
            runtime.sse.remove(&session);
            // Results that never came are given up (each call's row is written), and the bytes
            // of those that did are on their calls' rows, not on the stream's.
            session.close();
            let own = bytes_out.saturating_sub(session.attributed()).max(0);
            finish(recorder, &p, code, own, Some(reason.unwrap_or("completed")));
            drop(p);
        });
        let upstream = super::sse::governed(response.bytes_stream(), governor);
        relay(
            upstream,
            None,
            Some(inject),
            on_end,
            ending,
            max_event_bytes,
        )
    } else {
        let rewrite: Option<EventRewrite> = (content_type.starts_with("text/event-stream")
            && rules_filter(&p))
        .then(|| tool_filter(p.server.tools.clone()));
        let on_end = Box::new(move |bytes_out: i64, reason: Option<&'static str>| {
            finish(
                recorder,
                &p,
                code,
                bytes_out,
                Some(reason.unwrap_or("completed")),
            );
            drop(p);
        });
        relay(
            response.bytes_stream().boxed(),
            rewrite,
            None,
            on_end,
            ending,
            max_event_bytes,
        )
    };
    let mut answer = Response::new(body);
    *answer.status_mut() = status;
    *answer.headers_mut() = out_headers;
    answer
}

/// Registers the `tools/call` ids of a legacy SSE POST with the session whose stream carries
/// their results. A POST whose results a `tool_result` guardrail must inspect is refused when
/// that stream is not open on this replica (`404 mcp_session_not_found`: the client reconnects);
/// legacy SSE sessions are bound to the replica holding their stream.
fn await_results(
    app: &AppState,
    p: &Prepared,
) -> Result<Option<super::sse::Awaiting>, GatewayError> {
    let Some(envelope) = &p.envelope else {
        return Ok(None);
    };
    let tools = called_tools(&envelope.messages);
    if tools.is_empty() {
        return Ok(None);
    }
    let session = p
        .sse_route
        .as_ref()
        .and_then(|r| app.mcp.sse.session(&r.key_id, &r.endpoint));
    let guards = p
        .tool_guards
        .clone()
        .filter(|g| g.has(crate::plugins::Phase::ToolResult));
    match session {
        Some(session) => session.expect(&p.server.slug, tools, guards),
        None if guards.is_some() => Err(McpError::SessionNotFound.into()),
        None => Ok(None),
    }
}

/// The client span of the call to the server, under the request's span.
fn call_span(p: &Prepared, recorder: &Recorder) -> tracing::Span {
    crate::telemetry::mcp_span(
        recorder.span(),
        &p.server.slug,
        p.server.transport.as_str(),
        p.usage.method.as_deref(),
        p.usage.tool.as_deref(),
    )
}

/// The error text without the URL (which may carry a query credential).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(url.as_str(), "the server");
    }
    text
}

async fn read_limited(response: reqwest::Response, limit: usize) -> Result<Bytes, String> {
    let mut stream = response.bytes_stream();
    let mut out = bytes::BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| format!("the answer broke off: {}", without_url(&e)))?;
        if out.len() + chunk.len() > limit {
            return Err(format!("the answer exceeds {limit} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}

fn filtered_json(bytes: Bytes, p: &Prepared) -> Bytes {
    let Ok(mut value) = serde_json::from_slice::<Value>(&bytes) else {
        return bytes;
    };
    if filter_tools(&mut value, &p.server.tools) {
        Bytes::from(value.to_string())
    } else {
        bytes
    }
}

/// Serves a stdio server: one child per session, or one per server without a session.
pub async fn stdio(
    app: &Arc<AppState>,
    p: Prepared,
    command: &StdioCommand,
    recorder: Recorder,
) -> Response {
    let children = &app.mcp.stdio;
    let session_id = p
        .headers
        .get(session_header())
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let existing = match &session_id {
        Some(id) => match children.get(id, &p.server.slug, &p.key.id) {
            Some(s) => Some(s),
            None => {
                let error = McpError::SessionNotFound.into();
                return refuse(recorder, Stage::Call, &error, p.envelope.as_ref(), None);
            }
        },
        None => None,
    };
    if p.method == Method::DELETE {
        let status = match &session_id {
            Some(id) if children.close(id) => StatusCode::OK,
            _ => StatusCode::NOT_FOUND,
        };
        finish(recorder, &p, status.as_u16(), 0, None);
        return status.into_response();
    }
    if p.method == Method::GET {
        let Some(session) = existing else {
            finish(recorder, &p, 405, 0, None);
            return StatusCode::METHOD_NOT_ALLOWED.into_response();
        };
        let events = session.subscribe();
        let stream = futures_util::stream::unfold(events, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(message) => {
                        let event = Bytes::from(format!("event: message\ndata: {message}\n\n"));
                        return Some((Ok::<Bytes, reqwest::Error>(event), rx));
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .boxed();
        let mut recorder = recorder;
        recorder.mark_first_byte();
        recorder.set_stream_status("open");
        let ending = recorder.streams_end();
        let max_event_bytes = p.snapshot.limits.max_response_bytes;
        let on_end = Box::new(move |bytes_out: i64, reason: Option<&'static str>| {
            finish(
                recorder,
                &p,
                200,
                bytes_out,
                Some(reason.unwrap_or("completed")),
            );
        });
        let mut answer = Response::new(relay(stream, None, None, on_end, ending, max_event_bytes));
        answer.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        return answer;
    }
    let Some(envelope) = p.envelope.as_ref() else {
        return refuse(
            recorder,
            Stage::Call,
            &GatewayError::MethodNotAllowed("stdio".into()),
            None,
            None,
        );
    };
    let initializing = envelope.calls().any(|c| c.method == Some("initialize"));
    let (session, new_id) = match existing {
        Some(s) => (s, None),
        None if initializing => {
            let (id, s) = children.open(&p.server, command, &p.key.id);
            (s, Some(id))
        }
        None => (children.shared(&p.server, command), None),
    };
    let span = call_span(&p, &recorder);
    let exchanged = session
        .exchange(envelope.messages.clone(), p.server.timeout)
        .instrument(span.clone())
        .await;
    if let Err(e) = &exchanged {
        crate::telemetry::set_error(&span, &e.to_string());
    }
    drop(span);
    let answers = match exchanged {
        Ok(a) => a,
        Err(e) => {
            if let Some(id) = &new_id {
                children.close(id);
            }
            return refuse(recorder, Stage::Call, &e.into(), p.envelope.as_ref(), None);
        }
    };
    let mut headers = HeaderMap::new();
    if let Some(id) = &new_id
        && let Ok(v) = HeaderValue::from_str(id)
    {
        headers.insert(session_header(), v);
    }
    if answers.is_empty() {
        finish(recorder, &p, 202, 0, None);
        let mut answer = StatusCode::ACCEPTED.into_response();
        answer.headers_mut().extend(headers);
        return answer;
    }
    let mut body = if envelope.batch {
        Value::from(answers)
    } else {
        answers.into_iter().next().unwrap_or(Value::Null)
    };
    if rules_filter(&p) {
        filter_tools(&mut body, &p.server.tools);
    }
    let mut recorder = recorder;
    let (_, refused) = guard_results(&p, &mut body, &mut recorder).await;
    let mut answer = json_response(StatusCode::OK, &body);
    answer.headers_mut().extend(headers);
    let bytes_out = i64::try_from(body.to_string().len()).unwrap_or(i64::MAX);
    recorder.mark_first_byte();
    if refused {
        finish_refused(recorder, &p, bytes_out);
    } else {
        finish(recorder, &p, 200, bytes_out, None);
    }
    answer
}
