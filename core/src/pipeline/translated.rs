//! Stage 6 across families: a request whose deployment speaks another family than the
//! endpoint (opted in with `translate = true`), and every call of the unified endpoint
//! `/v1/llm/chat`, go through the pure translation core ([`crate::translate`]): the request
//! into the upstream's shape, the answer (JSON, stream event by event, error envelope) back
//! into the client's. The failover loop, health, records and holds are the call stage's own.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use serde_json::{Value, json};

use super::authorize::Authorized;
use super::inspect;
use super::{Endpoint, Recorder, Stage};
use crate::clock::now_ms;
use crate::error::{GatewayError, RequestError, UpstreamError};
use crate::family::{Api, ProviderFamily};
use crate::policy::Model;
use crate::translate::{
    self, Dialect, RequestOptions, ResponseContext, SseEvent, SseParser, StreamTranslator,
    ToolNames,
};
use crate::upstream::gemini_array::SseToJsonArray;
use crate::upstream::timeouts::{Deadlines, Timeouts};
use crate::upstream::{BodyStream, UpstreamReply};
use crate::usage::TokenUsage;

/// How one attempt crosses families.
#[derive(Debug, Clone)]
pub struct Translation {
    /// The client's dialect.
    pub client: Dialect,
    /// The upstream's dialect.
    pub upstream: Dialect,
    /// Tool names shortened for the upstream.
    pub names: ToolNames,
    /// The unified endpoint: unary answers become its normalised object, naming this provider
    /// family.
    pub unified: Option<&'static str>,
    /// The client asked for Gemini's streamed JSON array (no `alt=sse`).
    pub json_array: bool,
}

/// The dialect of an API (vLLM's chat is OpenAI's).
pub fn dialect(api: Api) -> Dialect {
    match api {
        Api::Anthropic => Dialect::Anthropic,
        Api::Gemini => Dialect::Gemini,
        Api::OpenAi | Api::Vllm => Dialect::OpenAiChat,
    }
}

/// Builds the upstream call of one attempt: the endpoint to call on `model`'s provider, the
/// translated body, and how to translate the answer back.
pub fn prepare(
    request: &Authorized,
    model: &Model,
) -> Result<(Endpoint, Bytes, Translation), GatewayError> {
    let endpoint = request.endpoint;
    let family = model.provider.family;
    let upstream_endpoint = endpoint.translated_to(family, request.stream);
    let client = dialect(endpoint.api());
    let upstream = dialect(upstream_endpoint.api());
    let options = RequestOptions {
        upstream_model: model.upstream_model.clone(),
        max_tokens: None,
        default_max_tokens: u64::try_from(model.max_output_tokens.max(1)).unwrap_or(4096),
        stream: request.stream,
    };
    let body = Value::Object(request.body().clone());
    let translated = translate::request(client, upstream, &body, &options)
        .map_err(|e| RequestError::Invalid(format!("cannot translate the request: {e}")))?;
    let mut upstream_body = translated.body;
    if upstream == Dialect::Gemini
        && let Some(map) = upstream_body.as_object_mut()
    {
        map.remove("model");
    }
    let bytes = serde_json::to_vec(&upstream_body)
        .map(Bytes::from)
        .map_err(|e| RequestError::Invalid(format!("request cannot be re-encoded: {e}")))?;
    let unified = (endpoint == Endpoint::Unified).then(|| match family {
        ProviderFamily::Demo => "demo",
        other => other.as_str(),
    });
    Ok((
        upstream_endpoint,
        bytes,
        Translation {
            client,
            upstream,
            names: translated.names,
            unified,
            json_array: endpoint == Endpoint::GeminiStream && !request.gemini_sse,
        },
    ))
}

fn context(request: &Authorized, recorder: &Recorder, names: ToolNames) -> ResponseContext {
    ResponseContext {
        client_model: request.target.name().to_string(),
        request_id: recorder.request_id().to_string(),
        created: now_ms() / 1000,
        include_usage: request.client_wants_usage,
        names,
    }
}

fn tokens(usage: translate::Usage) -> TokenUsage {
    TokenUsage {
        input: usage.input,
        output: usage.output,
        cached_input: usage.cache_read,
        reasoning: usage.reasoning,
        cache_creation: usage.cache_creation,
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Relays one translated answer to the client.
pub async fn relay(
    mut reply: UpstreamReply,
    request: &Authorized,
    timeouts: &Timeouts,
    sent: Instant,
    mut recorder: Recorder,
    t: Translation,
) -> Response {
    let family = request.endpoint.family();
    let provider_name = recorder.provider_name();
    recorder.set_upstream_latency(
        super::call::micros(sent.elapsed()),
        reply.provider_request_id.take(),
    );
    recorder.add_decisions(vec![json!({
        "stage": "call", "translated": format!("{:?} -> {:?}", t.client, t.upstream),
    })]);
    let ctx = context(request, &recorder, t.names.clone());
    if reply.status.is_success() && reply.is_event_stream() {
        // Stream guardrails read the client's stream in its own shape (OpenAI chunks, Anthropic
        // events, Gemini chunks), before Gemini's JSON array framing.
        let guard = inspect::StreamGuard::new(&request.guards);
        let deadlines = Deadlines::new(timeouts, sent);
        return stream(reply, recorder, deadlines, t, ctx, guard);
    }
    let status = reply.status;
    let retry_after = reply.retry_after.take();
    let limit = request.max_response_bytes;
    let body = match super::call::read_body(
        reply.body,
        limit,
        timeouts,
        sent,
        provider_name.clone(),
    )
    .await
    {
        Ok(body) => body,
        Err(error) => return recorder.deny(Stage::Call, &error, family),
    };
    recorder.mark_first_byte();
    if !status.is_success() {
        // The provider's error, in the client family's envelope, with its status class.
        let client_status = translate::client_status(t.upstream, t.client, status.as_u16());
        let envelope = translate::error(t.upstream, t.client, status.as_u16(), &body);
        recorder.finish(status.as_u16(), Some("upstream_rejected"));
        let mut response = json_response(
            StatusCode::from_u16(client_status).unwrap_or(StatusCode::BAD_GATEWAY),
            &envelope,
        );
        if let Some(retry_after) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, retry_after);
        }
        return response;
    }
    let answered = serde_json::from_slice::<Value>(&body)
        .map_err(|e| e.to_string())
        .and_then(|upstream| {
            if let Some(usage) = translate::usage(t.upstream, &upstream) {
                recorder.set_tokens(tokens(usage), upstream_usage(t.upstream, &upstream));
            }
            translate::response(t.upstream, t.client, &upstream, &ctx).map_err(|e| e.to_string())
        });
    let answer = match answered {
        Ok(answer) => answer,
        Err(detail) => {
            let error = GatewayError::from(UpstreamError::BadResponse {
                provider: provider_name,
                detail: format!("cannot translate the answer: {detail}"),
            });
            return recorder.deny(Stage::Call, &error, family);
        }
    };
    // 3. inspect, response phase: guardrails see the client-shaped answer (the hub answer on
    // the unified endpoint) before the client does.
    let answer = match inspect::inspect_response(
        &request.guards,
        Bytes::from(answer.to_string()),
        &mut recorder,
    )
    .await
    {
        Ok(bytes) => serde_json::from_slice::<Value>(&bytes).unwrap_or(answer),
        Err(error) => return recorder.deny(Stage::Inspect, &error, family),
    };
    let answer = match t.unified {
        Some(provider) => translate::unified_answer(&answer, provider),
        None => answer,
    };
    recorder.finish(200, None);
    json_response(StatusCode::OK, &answer)
}

/// The raw usage payload of an upstream answer, for the record.
fn upstream_usage(dialect: Dialect, answer: &Value) -> Option<Value> {
    let key = if dialect == Dialect::Gemini {
        "usageMetadata"
    } else {
        "usage"
    };
    answer.get(key).filter(|u| u.is_object()).cloned()
}

fn stream(
    reply: UpstreamReply,
    recorder: Recorder,
    deadlines: Deadlines,
    t: Translation,
    ctx: ResponseContext,
    guard: Option<inspect::StreamGuard>,
) -> Response {
    let relay = TranslatedStream {
        ending: recorder.streams_end(),
        guard,
        ended: false,
        upstream: reply.body,
        parser: SseParser::new(),
        translator: StreamTranslator::new(t.upstream, t.client, ctx),
        array: t.json_array.then(SseToJsonArray::default),
        recorder: Some(recorder),
        deadlines,
        done: false,
    };
    let mut response = Response::new(Body::from_stream(relay));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(if t.json_array {
            "application/json; charset=UTF-8"
        } else {
            "text/event-stream"
        }),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// A translated stream: upstream bytes -> SSE events -> translator -> client events, event by
/// event. Finishes the record at the end; a dropped stream (client gone) records what was used.
struct TranslatedStream {
    /// Stream-phase guardrails (3. inspect) on the client's events.
    guard: Option<inspect::StreamGuard>,
    /// The upstream part is over; the guard is inspecting the last bytes.
    ended: bool,
    upstream: BodyStream,
    parser: SseParser,
    translator: StreamTranslator,
    array: Option<SseToJsonArray>,
    recorder: Option<Recorder>,
    /// The provider's idle and total clocks.
    deadlines: Deadlines,
    done: bool,
    /// Resolves when the gateway's shutdown grace period is over.
    ending: Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
}

impl TranslatedStream {
    /// The client's SSE events (not yet framed as Gemini's JSON array).
    fn encode(events: Vec<SseEvent>) -> Bytes {
        let mut out = BytesMut::new();
        for event in events {
            out.extend_from_slice(event.encode().as_bytes());
        }
        out.freeze()
    }

    /// Client SSE events in the client's framing; `close` ends Gemini's JSON array.
    fn frame(&mut self, sse: Bytes, close: bool) -> Bytes {
        let Some(array) = self.array.as_mut() else {
            return sse;
        };
        let mut out = BytesMut::from(&array.frame(&sse)[..]);
        if close {
            out.extend_from_slice(&array.close());
        }
        out.freeze()
    }

    /// Bills what the stream used: the upstream's usage, at least the output produced when the
    /// stream did not complete (blocked, cut, failed), or the produced output alone when the
    /// upstream never reported usage.
    fn bill(translator: &StreamTranslator, recorder: &mut Recorder, complete: bool) {
        let usage = translator.usage();
        if usage.input == 0 && usage.output == 0 {
            recorder.bill_produced(translator.produced_tokens());
            return;
        }
        recorder.set_tokens(tokens(usage), None);
        if !complete {
            recorder.bill_at_least_output(translator.produced_tokens());
        }
    }

    fn record(&mut self, stream_status: &str, error_code: Option<&str>) {
        if let Some(mut recorder) = self.recorder.take() {
            Self::bill(
                &self.translator,
                &mut recorder,
                stream_status == "completed",
            );
            if let Some(guard) = &self.guard {
                recorder.add_decisions(guard.decisions());
            }
            recorder.set_stream_status(stream_status);
            recorder.finish(200, error_code);
        }
    }

    /// Ends the stream: `status` for the record, `tail` the last client bytes. With a guard,
    /// the tail is inspected first and the record is written when it passes.
    fn end(&mut self, tail: Vec<SseEvent>, status: &str, code: Option<&str>) -> Bytes {
        let failed = self.translator.failed() || code.is_some();
        let (status, code) = if failed && code.is_none() {
            ("upstream_error", Some("upstream_error"))
        } else {
            (status, code)
        };
        let out = Self::encode(tail);
        if let Some(guard) = self.guard.as_mut()
            && status == "completed"
        {
            self.ended = true;
            guard.start(out, true);
            return Bytes::new();
        }
        self.record(status, code);
        self.done = true;
        self.frame(out, true)
    }

    /// Client bytes out: through the guard when there is one (inspection starts; the output
    /// comes from polling it), directly otherwise.
    fn emit(&mut self, bytes: Bytes) -> Option<Bytes> {
        if bytes.is_empty() {
            return None;
        }
        if let Some(guard) = self.guard.as_mut() {
            guard.start(bytes, false);
            return None;
        }
        let bytes = self.frame(bytes, false);
        if bytes.is_empty() {
            return None;
        }
        if let Some(recorder) = self.recorder.as_mut() {
            recorder.mark_first_byte();
        }
        Some(bytes)
    }
}

impl Drop for TranslatedStream {
    fn drop(&mut self) {
        if let Some(recorder) = self.recorder.as_mut() {
            Self::bill(&self.translator, recorder, false);
            recorder.set_stream_status("client_disconnected");
        }
    }
}

impl Stream for TranslatedStream {
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
                    Poll::Ready(inspect::GuardOutput::Pass(out)) => {
                        let ended = this.ended;
                        if ended {
                            this.record("completed", None);
                            this.done = true;
                        }
                        this.frame(out, ended)
                    }
                    Poll::Ready(inspect::GuardOutput::Block { bytes, code }) => {
                        this.record("blocked", Some(code.as_str()));
                        this.done = true;
                        this.frame(bytes, true)
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
                    let mut out = Vec::new();
                    for event in this.parser.push(&chunk) {
                        match this.translator.push(&event) {
                            Ok(events) => out.extend(events),
                            Err(e) => {
                                let tail = this.translator.fail(&format!(
                                    "the provider's stream cannot be translated: {e}"
                                ));
                                out.extend(tail);
                                let bytes = this.end(out, "upstream_error", Some("upstream_error"));
                                return Poll::Ready(Some(Ok(bytes)));
                            }
                        }
                    }
                    if this.translator.failed() {
                        let bytes = this.end(out, "upstream_error", None);
                        return Poll::Ready(Some(Ok(bytes)));
                    }
                    let bytes = Self::encode(out);
                    match this.emit(bytes) {
                        Some(bytes) => return Poll::Ready(Some(Ok(bytes))),
                        None => continue,
                    }
                }
                Poll::Ready(Some(Err(detail))) => {
                    tracing::warn!(error = %detail, "upstream stream failed");
                    let tail = this.translator.fail("the provider's stream failed");
                    let bytes = this.end(tail, "upstream_error", Some("upstream_error"));
                    return Poll::Ready(Some(Ok(bytes)));
                }
                Poll::Ready(None) => {
                    let mut tail = Vec::new();
                    if let Some(event) = this.parser.finish() {
                        tail.extend(this.translator.push(&event).unwrap_or_default());
                    }
                    // A stream cut before its final event ends with an error event, and
                    // `failed()` says so: `end` records it as an upstream error.
                    tail.extend(this.translator.finish());
                    let bytes = this.end(tail, "completed", None);
                    if bytes.is_empty() {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(bytes)));
                }
                Poll::Pending => {
                    if this.ending.as_mut().poll(cx).is_ready() {
                        let tail = this
                            .translator
                            .fail("the gateway is shutting down; the stream was ended");
                        let bytes = this.end(tail, "shutdown", Some(super::call::SHUTTING_DOWN));
                        return Poll::Ready(Some(Ok(bytes)));
                    }
                    if let Poll::Ready(expired) = this.deadlines.poll_expired(cx) {
                        let tail = this.translator.fail(expired.message());
                        let bytes =
                            this.end(tail, expired.stream_status(), Some("upstream_timeout"));
                        return Poll::Ready(Some(Ok(bytes)));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}
