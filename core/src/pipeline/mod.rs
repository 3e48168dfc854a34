//! The request lifecycle: one request, one policy snapshot, named stages in a fixed order.
//!
//! Every model call runs these stages, in this order. Each stage is a module with a `run`
//! function returning [`Flow`]: `Continue` with what the next stage needs, or `Respond` with the
//! family-native error that ends the request. Whatever happens, the request ends in exactly one
//! usage record (see [`record`]).
//!
//! 1. **authenticate** ([`authenticate`]): find the virtual key (`Authorization: Bearer`,
//!    `x-api-key`, `x-goog-api-key`, `?key=`), look it up through the key cache, refuse expired
//!    or revoked keys with their distinct 401 codes.
//! 2. **authorize** ([`authorize`]): read and decode the body within the size limit, resolve the
//!    model (or model group) in the snapshot, check the key's Model Access grant, that the
//!    provider is enabled and has a credential, then every CEL access rule (`access/*.cel`).
//! 3. **inspect** ([`inspect`]): WASM guardrail plugins bound to the model, key or team allow,
//!    deny or rewrite (mask) the request before anything is held or sent; the same plugins can
//!    inspect the non-streamed answer and, through a sliding window, the stream (in `call`).
//! 4. **reserve** ([`reserve`]): hold the worst-case cost on every applicable budget and the
//!    estimated usage on every quota, atomically, before anything goes upstream (402 / 429).
//! 5. **route** ([`route`]): a model is its own only deployment; a model group's deployments are
//!    ordered by its Rhai script (`routing/*.rhai`) from their price, region, tags and health.
//! 6. **call** ([`call`]): strip the virtual key, inject the provider credential, substitute the
//!    upstream model id, try the route's deployments in order (failing over on unreachable,
//!    5xx, 429 and timeouts before the client has seen a byte), and relay the answer (JSON, or
//!    SSE chunk by chunk).
//! 7. **record** ([`record`]): normalize tokens, price them, and hand the usage record to the
//!    batched writer, after the last byte of a stream, on errors, and on client disconnect.

pub mod authenticate;
pub mod authorize;
pub mod call;
pub mod decision;
pub mod inspect;
pub mod record;
pub mod reserve;
pub mod route;
pub mod splice;
pub mod translated;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Method};
use axum::response::Response;

use tracing::Instrument as _;

use crate::error::GatewayError;
use crate::state::AppState;
use crate::telemetry::stage_span;

pub use record::Recorder;

/// The named lifecycle stages, as recorded in usage records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// 1. Virtual key lookup.
    Authenticate,
    /// 2. Body, model, grants, provider state, access rules.
    Authorize,
    /// 3. Guardrail plugins.
    Inspect,
    /// 4. Budget and quota holds.
    Reserve,
    /// 5. Deployment order.
    Route,
    /// 6. The upstream call.
    Call,
}

impl Stage {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Authenticate => "authenticate",
            Stage::Authorize => "authorize",
            Stage::Inspect => "inspect",
            Stage::Reserve => "reserve",
            Stage::Route => "route",
            Stage::Call => "call",
        }
    }
}

/// What a stage decided.
#[derive(Debug)]
pub enum Flow<T> {
    /// Go on to the next stage with this.
    Continue(T),
    /// Stop and answer with this error.
    Respond(GatewayError),
}

pub use crate::family::{Endpoint, ServeMode};

/// What the server hands the pipeline.
pub struct Inbound {
    /// The gateway request id (also the `x-request-id` header).
    pub request_id: String,
    /// HTTP method.
    pub method: Method,
    /// Request headers.
    pub headers: HeaderMap,
    /// Raw query string.
    pub query: Option<String>,
    /// The peer address of the connection.
    pub client_ip: Option<std::net::IpAddr>,
    /// The unread body.
    pub body: Body,
    /// The model named by the path (Gemini's `/models/{model}:...`), not the body.
    pub path_model: Option<String>,
}

/// Runs the lifecycle for one model call on `endpoint`.
pub async fn handle(app: &Arc<AppState>, endpoint: Endpoint, inbound: Inbound) -> Response {
    handle_at(app, endpoint, endpoint.path(), inbound).await
}

/// [`handle`], recording `called` as the endpoint the client called (Gemini's methods under
/// `/v1/` or `/v1beta/`, see [`Endpoint::called_path`]).
pub async fn handle_at(
    app: &Arc<AppState>,
    endpoint: Endpoint,
    called: &'static str,
    inbound: Inbound,
) -> Response {
    let snapshot = app.policies.snapshot();
    let family = endpoint.family();
    let mut recorder = Recorder::start(app, &snapshot, &inbound, called);
    recorder.set_endpoint_family(endpoint.family_name());

    // 1. authenticate
    let span = stage_span(recorder.span(), "authenticate");
    let key = match authenticate::run(app, &inbound.headers, inbound.query.as_deref())
        .instrument(span)
        .await
    {
        Flow::Continue(key) => key,
        Flow::Respond(error) => return recorder.deny(Stage::Authenticate, &error, family),
    };
    recorder.set_key(&key);

    // 2. authorize
    let input = authorize::Input {
        endpoint,
        key: &key,
        headers: &inbound.headers,
        query: inbound.query.as_deref(),
        path_model: inbound.path_model,
        client_ip: inbound.client_ip,
        body: inbound.body,
        ledger: &app.ledger,
    };
    let span = stage_span(recorder.span(), "authorize");
    let request = authorize::run(&snapshot, input, &mut recorder)
        .instrument(span)
        .await;
    let mut request = match request {
        Flow::Continue(request) => request,
        Flow::Respond(error) => return recorder.deny(Stage::Authorize, &error, family),
    };

    // 3. inspect
    let span = stage_span(recorder.span(), "inspect");
    if let Flow::Respond(error) =
        inspect::run(&snapshot, endpoint, &key, &mut request, &mut recorder)
            .instrument(span)
            .await
    {
        return recorder.deny(Stage::Inspect, &error, family);
    }

    // 4. reserve
    let span = stage_span(recorder.span(), "reserve");
    if let Flow::Respond(error) =
        reserve::run(app, &snapshot, &key, endpoint, &mut request, &mut recorder)
            .instrument(span)
            .await
    {
        return recorder.deny(Stage::Reserve, &error, family);
    }

    // 5. route
    let span = stage_span(recorder.span(), "route");
    let routed = span.in_scope(|| route::run(&request.target, &request.facts, &key, &app.health));
    drop(span);
    let mut route = match routed {
        Flow::Continue(route) => route,
        Flow::Respond(error) => return recorder.deny(Stage::Route, &error, family),
    };
    // The trace goes to the record; the call needs only the candidates.
    recorder.set_route(std::mem::take(&mut route.trace));

    // 6. call (7. record runs when the relayed response finishes). The call runs as its own
    // task: if the client goes away, the provider's answer is still read, billed and settled.
    let mut gone = ClientGone(Some(recorder.client_gone_flag()));
    let task_app = app.clone();
    let span = recorder.span().clone();
    // Boxed: the call's state machine is kilobytes; unboxed, spawning copies it into the task
    // cell several times per request.
    let call = tokio::spawn(
        Box::pin(async move { call::run(&task_app, endpoint, request, route, recorder).await })
            .instrument(span),
    );
    let response = match call.await {
        Ok(response) => response,
        Err(e) => {
            tracing::error!(error = %e, "the call task failed");
            GatewayError::Routing("the call failed inside the gateway".into()).render(family)
        }
    };
    gone.0 = None;
    response
}

/// Raises the recorder's client-gone flag if the handler is dropped (the client disconnected)
/// before the call's response was handed back.
struct ClientGone(Option<Arc<std::sync::atomic::AtomicBool>>);

impl Drop for ClientGone {
    fn drop(&mut self) {
        if let Some(flag) = self.0.take() {
            flag.store(true, std::sync::atomic::Ordering::Release);
        }
    }
}
