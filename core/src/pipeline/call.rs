//! Stage 6, call: send the authorized request to the provider and relay its answer.
//!
//! - 2xx JSON: buffered (up to `server.max_response_bytes`) to read usage, then relayed as is.
//! - 2xx SSE: relayed event by event as it arrives, through the usage tap; the usage chunk is
//!   hidden unless the client asked for it. A provider that goes silent for longer than its
//!   timeout, or fails mid-stream, ends the stream with an OpenAI-style error event.
//! - 4xx: the provider's body and status are passed through (a 429 keeps its `Retry-After`).
//! - 401 / 403: the provider refused the gateway's own credential, not the client's: the
//!   deployment cools down at once, and the last one answers 502 `upstream_error`.
//! - 5xx, unreachable, timeout: 502 `upstream_error` / 504 `upstream_timeout`.
//!
//! When the route has several deployments, unreachable, 5xx, 429, 401, 403 and timeouts move on
//! to the next one (nothing has reached the client yet); every attempt is recorded and feeds the
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
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tracing::Instrument as _;

use super::authorize::Authorized;
use super::inspect::{self, GuardOutput, StreamGuard};
use super::route::Route;
use super::{Endpoint, Recorder, ServeMode, Stage, translated};
use crate::error::{Family, GatewayError, RequestError, UpstreamError};
use crate::family::Api;
use crate::policy::{ProviderFamily, Target};
use crate::state::AppState;
use crate::upstream::gemini_array::SseToJsonArray;
use crate::upstream::retry::{RetryBudget, RetryPolicy};
use crate::upstream::sse::SseTap;
use crate::upstream::timeouts::{Deadlines, ReadError, Timeouts};
use crate::upstream::{self, BodyStream, Outbound, UpstreamReply, demo};

/// The shapes of one relayed answer: what the upstream speaks (for usage) and what the client
/// reads (for errors and stream framing).
#[derive(Debug, Clone, Copy)]
struct Shape {
    /// The upstream's API (usage fields, stream events).
    upstream: Api,
    /// The client's error family.
    family: Family,
    /// Reframe SSE as Gemini's streamed JSON array.
    json_array: bool,
}

impl Shape {
    fn of(request: &Authorized, upstream: Api) -> Self {
        Shape {
            upstream,
            family: request.endpoint.family(),
            json_array: request.endpoint == Endpoint::GeminiStream && !request.gemini_sse,
        }
    }
}

/// Whether an upstream status lets the next deployment be tried.
fn failover_status(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || credential_refused(status)
}

/// A 401 / 403 from a provider refuses the credential the gateway injected.
fn credential_refused(status: StatusCode) -> bool {
    status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN
}

/// Seconds of a `Retry-After` given in seconds (an HTTP date is ignored).
fn retry_after_secs(value: Option<&HeaderValue>) -> Option<u64> {
    value?.to_str().ok()?.trim().parse().ok()
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
    let opted_in = matches!(&request.target, Target::Group(g) if g.translate);
    // The unified endpoint's `provider` pin keeps only deployments of that family.
    let pin = match (endpoint == Endpoint::Unified)
        .then(|| {
            let mut pin = None;
            request.edit_body(|body| {
                pin = body.remove("provider");
                pin.is_some()
            });
            pin
        })
        .flatten()
    {
        None | Some(Value::Null) => None,
        Some(Value::String(pin)) => Some(pin),
        Some(_) => {
            let error = RequestError::Invalid("'provider' must be a string".into());
            return recorder.deny(Stage::Call, &error.into(), family);
        }
    };
    // Deployments the endpoint cannot reach (another family, not opted in) are skipped.
    let candidates: Vec<_> = route
        .candidates
        .iter()
        .filter(|m| {
            endpoint.serve_mode(m.provider.family, opted_in || m.translate) != ServeMode::Refused
        })
        .filter(|m| pin.as_deref().is_none_or(|p| pinned(m.provider.family, p)))
        .collect();
    if let (Some(pin), true) = (&pin, candidates.is_empty()) {
        let error = RequestError::Invalid(format!(
            "provider pin '{pin}' matches no deployment of model '{}'",
            request.target.name()
        ));
        return recorder.deny(Stage::Call, &error.into(), family);
    }
    if candidates.is_empty() {
        let error = GatewayError::Routing("the route has no deployments".into());
        return recorder.deny(Stage::Call, &error, family);
    }
    let policy = request.retry.clone();
    app.health.retries.deposit(&policy);
    let mut plan = Attempts::new(&policy, candidates.len());
    let mut next = Some((0, None));
    while let Some((index, waited)) = next.take() {
        if let Some(wait) = waited {
            tokio::time::sleep(wait).await;
        }
        let model = candidates[index];
        plan.tried(index);
        recorder.set_model(model);
        let provider = model.provider.clone();
        let mode = endpoint.serve_mode(provider.family, true);
        // Across families (and always on the unified endpoint): through the translation core.
        let (call_endpoint, body, translation) =
            if mode == ServeMode::Translate || endpoint == Endpoint::Unified {
                match translated::prepare(&request, model) {
                    Ok((call_endpoint, body, t)) => (call_endpoint, body, Some(t)),
                    Err(e) => return recorder.deny(Stage::Call, &e, family),
                }
            } else {
                let api = provider.family.api().unwrap_or(endpoint.api());
                match request.upstream_body(&model.upstream_model, api) {
                    Ok(body) => (endpoint, body, None),
                    Err(e) => return recorder.deny(Stage::Call, &GatewayError::from(e), family),
                }
            };
        let upstream_api = provider.family.api().unwrap_or(call_endpoint.api());
        if request.stream && !recorder.has_input_estimate() {
            // A stream cut before the provider's usage arrives is billed from the prompt
            // (tokenized only then) and the produced text. `Bytes` clones are reference counts.
            recorder.keep_prompt(body.clone());
        }
        let attempt_span = crate::telemetry::attempt_span(
            recorder.span(),
            crate::telemetry::gen_ai_system(provider.family.as_str()),
            &provider.name,
            &model.name,
            &model.upstream_model,
        );
        let health = app.health.get(&model.name);
        let trial = health.begin();
        let sent = Instant::now();
        let reply = async {
            match provider.family {
                ProviderFamily::Demo => {
                    Ok(demo::respond(call_endpoint, &body, &model.upstream_model))
                }
                ProviderFamily::Adapter => {
                    let out = Outbound {
                        endpoint: call_endpoint,
                        body,
                        stream: request.stream,
                        forward: &[],
                    };
                    upstream::adapter::send(&app.http, model, out).await
                }
                _ => {
                    let out = Outbound {
                        endpoint: call_endpoint,
                        body,
                        stream: request.stream,
                        forward: if translation.is_some() {
                            &[]
                        } else {
                            &request.forward
                        },
                    };
                    upstream::send(&app.http, model, out).await
                }
            }
        }
        .instrument(attempt_span.clone())
        .await;
        match &reply {
            Ok(reply) => crate::telemetry::set(
                &attempt_span,
                "http.response.status_code",
                i64::from(reply.status.as_u16()),
            ),
            Err(e) => crate::telemetry::set_error(&attempt_span, &e.to_string()),
        }
        drop(attempt_span);
        let elapsed = sent.elapsed();
        let mut attempt = json!({
            "model": model.name, "provider": provider.name, "latency_us": micros(elapsed),
        });
        if trial.probe {
            attempt["probe"] = Value::Bool(true);
        }
        if let Some(wait) = waited {
            attempt["waited_ms"] = json!(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX));
        }
        let error = match reply {
            Ok(reply) if failover_status(reply.status) => {
                let status = reply.status;
                attempt["status"] = json!(status.as_u16());
                health.record(trial, false, elapsed, &policy.cooldown);
                let retry_after = retry_after_secs(reply.retry_after.as_ref())
                    .map(|secs| Duration::from_secs(secs.min(crate::health::MAX_RETRY_AFTER_SECS)));
                if credential_refused(status) {
                    tracing::warn!(provider = %provider.name, model = %model.name, status = status.as_u16(),
                        "the provider refused the gateway's credential; the deployment cools down");
                    health.cool_down(policy.cooldown.first);
                } else if let Some(after) = retry_after {
                    health.cool_down(after);
                }
                plan.failed(index, retry_after);
                match plan.next(&app.health.retries) {
                    Next::Try(index, wait) => {
                        attempt["outcome"] = json!("failover");
                        recorder.add_attempt(attempt);
                        next = Some((index, Some(wait).filter(|w| !w.is_zero())));
                        continue;
                    }
                    Next::Spent => attempt["retry_budget"] = json!("exhausted"),
                    Next::Done => {}
                }
                if credential_refused(status) {
                    attempt["outcome"] = json!("upstream_error");
                    recorder.add_attempt(attempt);
                    GatewayError::from(UpstreamError::CredentialRejected {
                        provider: provider.name.clone(),
                        status: status.as_u16(),
                    })
                } else if status.is_server_error() {
                    attempt["outcome"] = json!("upstream_error");
                    recorder.add_attempt(attempt);
                    GatewayError::from(UpstreamError::ServerError {
                        provider: provider.name.clone(),
                        status: status.as_u16(),
                    })
                } else {
                    // A 429 from the last deployment is the provider's answer: pass it through.
                    attempt["outcome"] = json!("relayed");
                    recorder.add_attempt(attempt);
                    if let Some(t) = translation {
                        return translated::relay(
                            reply,
                            &request,
                            &provider.timeouts,
                            sent,
                            recorder,
                            t,
                        )
                        .await;
                    }
                    let shape = Shape::of(&request, upstream_api);
                    return relay(reply, &request, &provider.timeouts, sent, recorder, shape).await;
                }
            }
            Ok(reply) => {
                health.record(trial, true, elapsed, &policy.cooldown);
                attempt["status"] = json!(reply.status.as_u16());
                attempt["outcome"] = json!("relayed");
                recorder.add_attempt(attempt);
                if let Some(t) = translation {
                    return translated::relay(
                        reply,
                        &request,
                        &provider.timeouts,
                        sent,
                        recorder,
                        t,
                    )
                    .await;
                }
                let shape = Shape::of(&request, upstream_api);
                return relay(reply, &request, &provider.timeouts, sent, recorder, shape).await;
            }
            Err(e) => {
                health.record(trial, false, elapsed, &policy.cooldown);
                attempt["code"] = json!(GatewayError::from(e.clone()).code());
                plan.failed(index, None);
                match plan.next(&app.health.retries) {
                    Next::Try(index, wait) => {
                        attempt["outcome"] = json!("failover");
                        recorder.add_attempt(attempt);
                        next = Some((index, Some(wait).filter(|w| !w.is_zero())));
                        continue;
                    }
                    Next::Spent => attempt["retry_budget"] = json!("exhausted"),
                    Next::Done => {}
                }
                attempt["outcome"] = json!("failed");
                recorder.add_attempt(attempt);
                GatewayError::from(e)
            }
        };
        return recorder.deny(Stage::Call, &error, family);
    }
    let error = GatewayError::Routing("the route has no deployments".into());
    recorder.deny(Stage::Call, &error, family)
}

/// What comes after a failed attempt.
#[derive(Debug, PartialEq)]
enum Next {
    /// Try the candidate at this index after waiting this long.
    Try(usize, Duration),
    /// Attempts were left but the gateway-wide retry budget is spent.
    Spent,
    /// No attempt left (or none worth making).
    Done,
}

/// A request's attempts over its failover list: each deployment in order, then (when
/// `max_attempts` allows more) the list again with backoff, honouring `Retry-After`.
struct Attempts<'a> {
    policy: &'a RetryPolicy,
    /// Attempts made per candidate.
    tries: Vec<u32>,
    /// The `Retry-After` each candidate last answered with.
    retry_after: Vec<Option<Duration>>,
    made: usize,
    max: usize,
    position: usize,
}

impl<'a> Attempts<'a> {
    fn new(policy: &'a RetryPolicy, candidates: usize) -> Self {
        Attempts {
            policy,
            tries: vec![0; candidates],
            retry_after: vec![None; candidates],
            made: 0,
            max: policy.attempts(candidates),
            position: 0,
        }
    }

    fn tried(&mut self, index: usize) {
        self.tries[index] += 1;
        self.made += 1;
        self.position = index;
    }

    fn failed(&mut self, index: usize, retry_after: Option<Duration>) {
        self.retry_after[index] = retry_after;
    }

    /// The next attempt: the next candidate in order (at once when it was never tried, after
    /// its backoff or `Retry-After` otherwise); candidates asking to wait longer than
    /// `max_retry_after` are passed over. Spends a token of the retry budget.
    fn next(&mut self, budget: &RetryBudget) -> Next {
        if self.made >= self.max {
            return Next::Done;
        }
        let n = self.tries.len();
        let choice = (1..=n).find_map(|step| {
            let index = (self.position + step) % n;
            match self.tries[index] {
                0 => Some((index, Duration::ZERO)),
                tries => self
                    .policy
                    .wait_for(tries, self.retry_after[index])
                    .map(|wait| (index, wait)),
            }
        });
        let Some((index, wait)) = choice else {
            return Next::Done;
        };
        if !budget.withdraw(self.policy) {
            return Next::Spent;
        }
        Next::Try(index, wait)
    }
}

/// Whether a unified-endpoint `provider` pin names this family (Azure serves `openai`).
fn pinned(family: ProviderFamily, pin: &str) -> bool {
    family.as_str() == pin || (pin == "openai" && family == ProviderFamily::Azure)
}

/// Relays one provider answer to the client.
async fn relay(
    mut reply: UpstreamReply,
    request: &Authorized,
    timeouts: &Timeouts,
    sent: Instant,
    mut recorder: Recorder,
    shape: Shape,
) -> Response {
    let family = shape.family;
    let provider_name = recorder.provider_name();
    recorder.set_upstream_latency(micros(sent.elapsed()), reply.provider_request_id.take());
    if reply.status.is_success() && reply.is_event_stream() {
        let guard = StreamGuard::new(&request.guards);
        return relay_stream(
            reply,
            recorder,
            request.client_wants_usage,
            Deadlines::new(timeouts, sent),
            guard,
            shape,
        );
    }

    // Unary: buffer within the limit and the provider's timeouts, then relay.
    let limit = request.max_response_bytes;
    let status = reply.status;
    let content_type = reply.content_type.take();
    let retry_after = reply.retry_after.take();
    let body = match read_body(reply.body, limit, timeouts, sent, provider_name.clone()).await {
        Ok(body) => body,
        Err(error) => return recorder.deny(Stage::Call, &error, family),
    };
    if status.is_success() {
        match read_usage(&body, shape.upstream) {
            Ok(Some(usage)) => recorder.set_usage_text(shape.upstream, usage.get()),
            // Image answers without usage are priced per image.
            Ok(None) => recorder.bill_images(&body),
            // A success that says it is JSON and is not: unusable, not relayed as is.
            Err(e) if (e.is_syntax() || e.is_eof()) && is_json(content_type.as_ref()) => {
                let error = GatewayError::from(UpstreamError::BadResponse {
                    provider: provider_name,
                    detail: format!("the answer is not valid JSON: {e}"),
                });
                return recorder.deny(Stage::Call, &error, family);
            }
            Err(_) => recorder.bill_images(&body),
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
    if !status.is_success()
        && let Some(retry_after) = retry_after
    {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, retry_after);
    }
    response
}

pub(super) fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Reads a whole non-streamed answer within the provider's idle and total clocks: a clock that
/// runs out is 504 `upstream_timeout`, a broken or oversized body 502 `upstream_error`.
pub(super) async fn read_body(
    body: BodyStream,
    limit: usize,
    timeouts: &Timeouts,
    sent: Instant,
    provider: String,
) -> Result<Bytes, GatewayError> {
    match upstream::timeouts::collect(body, limit, timeouts, sent).await {
        Ok(body) => Ok(body),
        Err(ReadError::Timeout(expired)) => Err(GatewayError::from(UpstreamError::Timeout {
            provider,
            timeout_ms: timeouts.millis(expired),
        })),
        Err(ReadError::Bad(detail)) => Err(GatewayError::from(UpstreamError::BadResponse {
            provider,
            detail,
        })),
    }
}

/// Reads only the usage object's text from a JSON body (`usage`, Gemini's `usageMetadata`),
/// without building the rest; fails if it is not JSON.
fn read_usage(body: &[u8], api: Api) -> Result<Option<&RawValue>, serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct Probe<'a> {
        #[serde(borrow)]
        usage: Option<&'a RawValue>,
        #[serde(borrow, rename = "usageMetadata")]
        usage_metadata: Option<&'a RawValue>,
    }
    let probe = serde_json::from_slice::<Probe<'_>>(body)?;
    Ok(match api {
        Api::Gemini => probe.usage_metadata,
        _ => probe.usage,
    }
    .filter(|raw| raw.get().starts_with('{')))
}

fn is_json(content_type: Option<&HeaderValue>) -> bool {
    content_type
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"))
}

fn relay_stream(
    reply: UpstreamReply,
    recorder: Recorder,
    client_wants_usage: bool,
    deadlines: Deadlines,
    guard: Option<StreamGuard>,
    shape: Shape,
) -> Response {
    let relay = Relay {
        ending: recorder.streams_end(),
        upstream: reply.body,
        tap: SseTap::for_api(shape.upstream, !client_wants_usage),
        shape,
        array: shape.json_array.then(SseToJsonArray::default),
        recorder: Some(recorder),
        deadlines,
        done: false,
        guard,
        upstream_ended: false,
    };
    let mut response = Response::new(Body::from_stream(relay));
    let headers = response.headers_mut();
    let content_type = if shape.json_array {
        HeaderValue::from_static("application/json; charset=UTF-8")
    } else {
        reply
            .content_type
            .unwrap_or_else(|| HeaderValue::from_static("text/event-stream"))
    };
    headers.insert(header::CONTENT_TYPE, content_type);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    *response.status_mut() = StatusCode::OK;
    response
}

/// The error code of a stream the gateway ended at shutdown.
pub(crate) const SHUTTING_DOWN: &str = "gateway_shutting_down";

/// The streamed body: upstream chunks through the tap, finishing the record at the end. If the
/// client disconnects, hyper drops the body and the recorder's `Drop` records what was produced.
struct Relay {
    upstream: BodyStream,
    tap: SseTap,
    /// The client's shapes (error events, framing).
    shape: Shape,
    /// Gemini's streamed JSON array framing, when the client did not ask for SSE.
    array: Option<SseToJsonArray>,
    recorder: Option<Recorder>,
    /// The provider's idle and total clocks.
    deadlines: Deadlines,
    done: bool,
    /// Stream-phase guardrails (3. inspect): complete events pass through it before the client.
    guard: Option<StreamGuard>,
    /// The upstream ended; the guard is inspecting the last events.
    upstream_ended: bool,
    /// Resolves when the gateway's shutdown grace period is over.
    ending: Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
}

impl Relay {
    fn finish(&mut self, stream_status: &str, error_code: Option<&str>) {
        // A provider error event after the 200 (Anthropic `event: error`): relayed as is, and
        // recorded as the failure it is.
        let (stream_status, error_code) = if self.tap.failed() && error_code.is_none() {
            ("upstream_error", Some("upstream_error"))
        } else {
            (stream_status, error_code)
        };
        if let Some(mut recorder) = self.recorder.take() {
            if let Some(usage) = self.tap.usage() {
                recorder.set_usage(self.shape.upstream, usage);
                // A stream that did not complete (failed, blocked by a guardrail, timed out,
                // shut down) may have stopped before the usage that counts its output
                // (Anthropic's message_delta): bill at least the output produced.
                if self.tap.failed() || stream_status != "completed" {
                    recorder.bill_at_least_output(self.tap.produced_tokens());
                }
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

    /// A gateway error event in the client's family: an OpenAI `data:` error, an Anthropic
    /// `event: error`, a Gemini error chunk.
    fn error_event(&self, code: &str, message: &str) -> Bytes {
        match self.shape.family {
            Family::OpenAi => {
                let event =
                    json!({"error": {"code": code, "message": message, "type": "api_error"}});
                Bytes::from(format!("data: {event}\n\n"))
            }
            Family::Anthropic => {
                let kind = match code {
                    "upstream_timeout" => "timeout_error",
                    "gateway_shutting_down" => "overloaded_error",
                    _ => "api_error",
                };
                let event = json!({"type": "error", "error": {"type": kind, "message": message, "code": code}});
                Bytes::from(format!("event: error\ndata: {event}\n\n"))
            }
            Family::Gemini => {
                let (status, name) = match code {
                    "upstream_timeout" => (504, "DEADLINE_EXCEEDED"),
                    "gateway_shutting_down" => (503, "UNAVAILABLE"),
                    _ => (502, "INTERNAL"),
                };
                let event = json!({"error": {"code": status, "message": message, "status": name,
                    "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": code, "domain": "tollgate"}]}});
                Bytes::from(format!("data: {event}\r\n\r\n"))
            }
        }
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
                    runtime.spawn(drain_detached(
                        upstream,
                        tap,
                        self.shape.upstream,
                        recorder,
                        self.deadlines.idle_after(),
                    ));
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
                recorder.set_usage(self.shape.upstream, usage);
                recorder.bill_at_least_output(self.tap.produced_tokens());
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
    api: Api,
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
        recorder.set_usage(api, usage);
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
        if this.array.is_none() {
            return this.poll_events(cx);
        }
        // Gemini's JSON array: reframe each batch of complete events, close the array once.
        loop {
            let polled = this.poll_events(cx);
            let Some(array) = this.array.as_mut() else {
                return polled;
            };
            match polled {
                Poll::Ready(Some(Ok(events))) => {
                    let framed = array.frame(&events);
                    if framed.is_empty() {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(framed)));
                }
                Poll::Ready(None) => {
                    let end = array.close();
                    return Poll::Ready((!end.is_empty()).then_some(Ok(end)));
                }
                other => return other,
            }
        }
    }
}

impl Relay {
    /// The relayed SSE events (tap, then guardrails), with the gateway's own error events.
    fn poll_events(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, std::io::Error>>> {
        let this = self;
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
                    this.deadlines.touch();
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
                    out.extend_from_slice(
                        &this.error_event("upstream_error", "the provider's stream failed"),
                    );
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
                    if this.ending.as_mut().poll(cx).is_ready() {
                        // Shutdown: end the stream cleanly, recorded and settled with what was
                        // streamed so far.
                        let tail = this.tap.finish();
                        let mut out = if this.guard.is_some() {
                            BytesMut::new()
                        } else {
                            BytesMut::from(&tail[..])
                        };
                        out.extend_from_slice(&this.error_event(
                            SHUTTING_DOWN,
                            "the gateway is shutting down; the stream was ended",
                        ));
                        this.finish("shutdown", Some(SHUTTING_DOWN));
                        return Poll::Ready(Some(Ok(out.freeze())));
                    }
                    if let Poll::Ready(expired) = this.deadlines.poll_expired(cx) {
                        // With guardrails, an unterminated tail was never inspected: drop it.
                        let tail = this.tap.finish();
                        let mut out = if this.guard.is_some() {
                            BytesMut::new()
                        } else {
                            BytesMut::from(&tail[..])
                        };
                        out.extend_from_slice(
                            &this.error_event("upstream_timeout", expired.message()),
                        );
                        this.finish(expired.stream_status(), Some("upstream_timeout"));
                        return Poll::Ready(Some(Ok(out.freeze())));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}
