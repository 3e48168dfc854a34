//! Stage 6, call: send the authorized request to the provider and relay its answer.
//!
//! - 2xx JSON: buffered (up to `server.max_response_bytes`) to read usage, then relayed as is.
//! - 2xx SSE: relayed event by event as it arrives, through the usage tap; the usage chunk is
//!   hidden unless the client asked for it. A provider that goes silent for longer than its
//!   timeout, or fails mid-stream, ends the stream with an OpenAI-style error event.
//! - 4xx: the provider's body and status are passed through.
//! - 5xx, unreachable, timeout: 502 `upstream_error` / 504 `upstream_timeout`.
//!
//! When the route has several deployments, unreachable, 5xx, 429 and timeouts move on to the
//! next one (nothing has reached the client yet); every attempt is recorded and feeds the
//! deployment's health.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use serde_json::{Value, json};
use tokio::time::Sleep;

use super::authorize::{Authorized, upstream_body};
use super::inspect::{self, GuardOutput, StreamGuard};
use super::route::Route;
use super::{Endpoint, Recorder, Stage};
use crate::error::{GatewayError, UpstreamError};
use crate::policy::ProviderFamily;
use crate::state::AppState;
use crate::upstream::sse::SseTap;
use crate::upstream::{self, BodyStream, UpstreamReply, demo};

/// Whether an upstream status lets the next deployment be tried.
fn failover_status(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS
}

/// Calls the route's deployments in order and builds the client's response; the recorder
/// finishes with it.
pub async fn run(
    app: &Arc<AppState>,
    endpoint: Endpoint,
    mut request: Authorized,
    route: Route,
    mut recorder: Recorder,
) -> Response {
    let family = endpoint.family();
    let last = route.candidates.len().saturating_sub(1);
    for (attempt, model) in route.candidates.iter().enumerate() {
        recorder.set_model(model);
        let provider = model.provider.clone();
        let body = match upstream_body(&mut request.body, &model.upstream_model) {
            Ok(body) => body,
            Err(e) => return recorder.deny(Stage::Call, &GatewayError::from(e), family),
        };
        if request.stream && !recorder.has_input_estimate() {
            // A stream cut before the provider's usage arrives is billed from the prompt
            // (tokenized only then) and the produced text. `Bytes` clones are reference counts.
            recorder.keep_prompt(body.clone());
        }
        let sent = Instant::now();
        let reply = match provider.family {
            ProviderFamily::Demo => Ok(demo::respond(endpoint, &body)),
            ProviderFamily::Openai => {
                upstream::send(&app.http, model, endpoint, body, request.stream).await
            }
        };
        let health = app.health.get(&model.name);
        let elapsed = sent.elapsed();
        let error = match reply {
            Ok(reply) if failover_status(reply.status) => {
                let status = reply.status;
                if attempt < last {
                    health.record(false, elapsed);
                    recorder.add_attempt(json!({
                        "model": model.name, "provider": provider.name, "status": status.as_u16(),
                        "latency_us": micros(elapsed), "outcome": "failover",
                    }));
                    continue;
                }
                if status.is_server_error() {
                    health.record(false, elapsed);
                    recorder.add_attempt(json!({
                        "model": model.name, "provider": provider.name, "status": status.as_u16(),
                        "latency_us": micros(elapsed), "outcome": "upstream_error",
                    }));
                    GatewayError::from(UpstreamError::ServerError {
                        provider: provider.name.clone(),
                        status: status.as_u16(),
                    })
                } else {
                    // A 429 from the last deployment is the provider's answer: pass it through.
                    health.record(false, elapsed);
                    recorder.add_attempt(json!({
                        "model": model.name, "provider": provider.name, "status": status.as_u16(),
                        "latency_us": micros(elapsed), "outcome": "relayed",
                    }));
                    return relay(reply, &request, provider.timeout, sent, recorder, family).await;
                }
            }
            Ok(reply) => {
                health.record(true, elapsed);
                recorder.add_attempt(json!({
                    "model": model.name, "provider": provider.name, "status": reply.status.as_u16(),
                    "latency_us": micros(elapsed), "outcome": "relayed",
                }));
                return relay(reply, &request, provider.timeout, sent, recorder, family).await;
            }
            Err(e) => {
                health.record(false, elapsed);
                recorder.add_attempt(json!({
                    "model": model.name, "provider": provider.name, "code": GatewayError::from(e.clone()).code(),
                    "latency_us": micros(elapsed), "outcome": if attempt < last { "failover" } else { "failed" },
                }));
                if attempt < last {
                    continue;
                }
                GatewayError::from(e)
            }
        };
        return recorder.deny(Stage::Call, &error, family);
    }
    let error = GatewayError::Routing("the route has no deployments".into());
    recorder.deny(Stage::Call, &error, family)
}

/// Relays one provider answer to the client.
async fn relay(
    mut reply: UpstreamReply,
    request: &Authorized,
    timeout: Duration,
    sent: Instant,
    mut recorder: Recorder,
    family: crate::error::Family,
) -> Response {
    let provider_name = recorder.provider_name();
    recorder.set_upstream_latency(micros(sent.elapsed()), reply.provider_request_id.take());
    if reply.status.is_success() && reply.is_event_stream() {
        let guard = StreamGuard::new(&request.guards);
        return relay_stream(reply, recorder, request.client_wants_usage, timeout, guard);
    }

    // Unary: buffer within the limit and the provider's timeout, then relay.
    let limit = request.max_response_bytes;
    let remaining = timeout.saturating_sub(sent.elapsed());
    let status = reply.status;
    let content_type = reply.content_type.take();
    let body = match tokio::time::timeout(remaining, collect(reply.body, limit)).await {
        Err(_) => {
            let error = GatewayError::from(UpstreamError::Timeout {
                provider: provider_name,
                timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            });
            return recorder.deny(Stage::Call, &error, family);
        }
        Ok(Err(detail)) => {
            let error = GatewayError::from(UpstreamError::BadResponse {
                provider: provider_name,
                detail,
            });
            return recorder.deny(Stage::Call, &error, family);
        }
        Ok(Ok(body)) => body,
    };
    if status.is_success() {
        match read_usage(&body) {
            Some(usage) => recorder.set_usage(&usage),
            // Image answers without usage are priced per image.
            None => recorder.bill_images(&body),
        }
    }
    // 3. inspect, response phase: guardrails see the answer before the client does.
    let body = if status.is_success() {
        match inspect::inspect_response(&request.guards, body, &mut recorder).await {
            Ok(body) => body,
            Err(error) => return recorder.deny(Stage::Inspect, &error, family),
        }
    } else {
        body
    };
    recorder.mark_first_byte();
    let error_code = (!status.is_success()).then_some("upstream_rejected");
    recorder.finish(status.as_u16(), error_code);
    let mut response = (status, body).into_response();
    if let Some(content_type) = content_type {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, content_type);
    }
    response
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

async fn collect(mut body: BodyStream, limit: usize) -> Result<Bytes, String> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        if buf.len() + chunk.len() > limit {
            return Err(format!(
                "response larger than server.max_response_bytes ({limit})"
            ));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Reads only `usage` from a JSON body, without building the rest.
fn read_usage(body: &[u8]) -> Option<Value> {
    #[derive(serde::Deserialize)]
    struct Probe {
        usage: Option<Value>,
    }
    serde_json::from_slice::<Probe>(body)
        .ok()?
        .usage
        .filter(Value::is_object)
}

fn relay_stream(
    reply: UpstreamReply,
    recorder: Recorder,
    client_wants_usage: bool,
    idle: Duration,
    guard: Option<StreamGuard>,
) -> Response {
    let relay = Relay {
        upstream: reply.body,
        tap: SseTap::new(!client_wants_usage),
        recorder: Some(recorder),
        idle_timeout: idle,
        idle: Box::pin(tokio::time::sleep(idle)),
        done: false,
        guard,
        upstream_ended: false,
    };
    let mut response = Response::new(Body::from_stream(relay));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        reply
            .content_type
            .unwrap_or_else(|| HeaderValue::from_static("text/event-stream")),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    *response.status_mut() = StatusCode::OK;
    response
}

/// The streamed body: upstream chunks through the tap, finishing the record at the end. If the
/// client disconnects, hyper drops the body and the recorder's `Drop` records what was produced.
struct Relay {
    upstream: BodyStream,
    tap: SseTap,
    recorder: Option<Recorder>,
    idle_timeout: Duration,
    idle: Pin<Box<Sleep>>,
    done: bool,
    /// Stream-phase guardrails (3. inspect): complete events pass through it before the client.
    guard: Option<StreamGuard>,
    /// The upstream ended; the guard is inspecting the last events.
    upstream_ended: bool,
}

impl Relay {
    fn finish(&mut self, stream_status: &str, error_code: Option<&str>) {
        if let Some(mut recorder) = self.recorder.take() {
            if let Some(usage) = self.tap.usage() {
                recorder.set_usage(usage);
            } else {
                recorder.bill_produced(self.tap.produced_tokens());
            }
            if let Some(guard) = &self.guard {
                recorder.add_decisions(guard.decisions());
            }
            recorder.set_stream_status(stream_status);
            recorder.finish(200, error_code);
        }
        self.done = true;
    }

    fn error_event(code: &str, message: &str) -> Bytes {
        let event = json!({"error": {"code": code, "message": message, "type": "api_error"}});
        Bytes::from(format!("data: {event}\n\n"))
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // The client went away before the first byte: the provider is answering anyway, so
        // read its stream to the end, detached, and bill what it reports.
        if !self.upstream_ended
            && let Some(recorder) = self.recorder.take_if(|r| !r.first_byte_sent())
        {
            let upstream =
                std::mem::replace(&mut self.upstream, Box::pin(futures_util::stream::empty()));
            let tap = std::mem::replace(&mut self.tap, SseTap::new(true));
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(drain_detached(upstream, tap, recorder, self.idle_timeout));
                    return;
                }
                Err(_) => {
                    self.recorder = Some(recorder);
                    self.tap = tap;
                }
            }
        }
        // The client went away mid-stream: bill what was produced so far.
        if let Some(recorder) = self.recorder.as_mut() {
            if let Some(usage) = self.tap.usage() {
                recorder.set_usage(usage);
            } else {
                recorder.bill_produced(self.tap.produced_tokens());
            }
            if let Some(guard) = &self.guard {
                recorder.add_decisions(guard.decisions());
            }
            recorder.set_stream_status("client_disconnected");
        }
    }
}

/// Reads the rest of a stream whose client left before its first byte, then records it: the
/// provider's usage when it arrives, the produced text when the stream ends without it, the held
/// estimate when the provider fails or goes silent (the call is abandoned).
async fn drain_detached(
    mut upstream: BodyStream,
    mut tap: SseTap,
    mut recorder: Recorder,
    idle: Duration,
) {
    let ended = loop {
        match tokio::time::timeout(idle, upstream.next()).await {
            Ok(Some(Ok(chunk))) => {
                let _ = tap.push(&chunk);
            }
            Ok(None) => {
                let _ = tap.finish();
                break true;
            }
            Ok(Some(Err(_))) | Err(_) => break false,
        }
    };
    if let Some(usage) = tap.usage() {
        recorder.set_usage(usage);
    } else if ended {
        recorder.bill_produced(tap.produced_tokens());
    } else {
        recorder.bill_held();
    }
    recorder.set_stream_status("client_disconnected");
    recorder.finish(super::record::CLIENT_CLOSED, Some("client_closed_request"));
}

impl Stream for Relay {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            if let Some(guard) = this.guard.as_mut()
                && guard.is_busy()
            {
                let out = match guard.poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(GuardOutput::Pass(out)) => {
                        if this.upstream_ended {
                            this.finish("completed", None);
                        }
                        out
                    }
                    Poll::Ready(GuardOutput::Block { bytes, code }) => {
                        this.finish("blocked", Some(code.as_str()));
                        bytes
                    }
                };
                if out.is_empty() {
                    continue;
                }
                if let Some(recorder) = this.recorder.as_mut() {
                    recorder.mark_first_byte();
                }
                return Poll::Ready(Some(Ok(out)));
            }
            match this.upstream.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    let deadline = tokio::time::Instant::now() + this.idle_timeout;
                    this.idle.as_mut().reset(deadline);
                    let out = this.tap.push(&chunk);
                    if out.is_empty() {
                        continue;
                    }
                    if let Some(guard) = this.guard.as_mut() {
                        guard.start(out, false);
                        continue;
                    }
                    if let Some(recorder) = this.recorder.as_mut() {
                        recorder.mark_first_byte();
                    }
                    return Poll::Ready(Some(Ok(out)));
                }
                Poll::Ready(Some(Err(detail))) => {
                    tracing::warn!(error = %detail, "upstream stream failed");
                    // With guardrails, an unterminated tail was never inspected: drop it.
                    let tail = this.tap.finish();
                    let mut out = if this.guard.is_some() {
                        BytesMut::new()
                    } else {
                        BytesMut::from(&tail[..])
                    };
                    out.extend_from_slice(&Self::error_event(
                        "upstream_error",
                        "the provider's stream failed",
                    ));
                    this.finish("upstream_error", Some("upstream_error"));
                    return Poll::Ready(Some(Ok(out.freeze())));
                }
                Poll::Ready(None) => {
                    let rest = this.tap.finish();
                    if let Some(guard) = this.guard.as_mut() {
                        this.upstream_ended = true;
                        guard.start(rest, true);
                        continue;
                    }
                    this.finish("completed", None);
                    return Poll::Ready((!rest.is_empty()).then_some(Ok(rest)));
                }
                Poll::Pending => {
                    if this.idle.as_mut().poll(cx).is_ready() {
                        // With guardrails, an unterminated tail was never inspected: drop it.
                        let tail = this.tap.finish();
                        let mut out = if this.guard.is_some() {
                            BytesMut::new()
                        } else {
                            BytesMut::from(&tail[..])
                        };
                        out.extend_from_slice(&Self::error_event(
                            "upstream_timeout",
                            "the provider's stream went silent for longer than its timeout",
                        ));
                        this.finish("idle_timeout", Some("upstream_timeout"));
                        return Poll::Ready(Some(Ok(out.freeze())));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}
