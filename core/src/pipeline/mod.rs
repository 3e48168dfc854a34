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
//!    model in the snapshot, check the key's Model Access grant, the endpoint family and that
//!    the provider is enabled and has a credential. CEL access rules join this stage.
//! 3. **inspect**: WASM guardrail plugins bound to the model, key or team allow, deny or rewrite
//!    the request (and later the response and stream). Not built yet: no stage code exists.
//! 4. **reserve**: hold the worst-case cost on every applicable budget and check quotas before
//!    anything goes upstream. Not built yet: no stage code exists.
//! 5. **route**: a Rhai script orders the candidate deployments of a model group. Until model
//!    groups exist, a model has exactly one deployment, which [`call`] uses directly.
//! 6. **call** ([`call`]): strip the virtual key, inject the provider credential, substitute the
//!    upstream model id, and relay the answer (JSON, or SSE chunk by chunk).
//! 7. **record** ([`record`]): normalize tokens, price them, and hand the usage record to the
//!    batched writer, after the last byte of a stream, on errors, and on client disconnect.

pub mod authenticate;
pub mod authorize;
pub mod call;
pub mod record;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Method};
use axum::response::Response;

use crate::error::{Family, GatewayError};
use crate::server::AppState;

pub use record::Recorder;

/// The named lifecycle stages, as recorded in usage records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// 1. Virtual key lookup.
    Authenticate,
    /// 2. Body, model, grants, provider state.
    Authorize,
    /// 6. The upstream call.
    Call,
}

impl Stage {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Authenticate => "authenticate",
            Stage::Authorize => "authorize",
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

/// The OpenAI-compatible endpoints tollgate serves natively.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/chat/completions`.
    ChatCompletions,
    /// `POST /v1/embeddings`.
    Embeddings,
    /// `POST /v1/responses`.
    Responses,
    /// `POST /v1/images/generations`.
    ImagesGenerations,
}

impl Endpoint {
    /// The path clients call.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/v1/chat/completions",
            Endpoint::Embeddings => "/v1/embeddings",
            Endpoint::Responses => "/v1/responses",
            Endpoint::ImagesGenerations => "/v1/images/generations",
        }
    }

    /// The path appended to the provider's base URL (which carries the version prefix).
    pub fn upstream_path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/chat/completions",
            Endpoint::Embeddings => "/embeddings",
            Endpoint::Responses => "/responses",
            Endpoint::ImagesGenerations => "/images/generations",
        }
    }

    /// The error body family of this endpoint.
    pub fn family(self) -> Family {
        Family::OpenAi
    }
}

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
    /// The unread body.
    pub body: Body,
}

/// Runs the lifecycle for one model call on `endpoint`.
pub async fn handle(app: &Arc<AppState>, endpoint: Endpoint, inbound: Inbound) -> Response {
    let snapshot = app.policies.snapshot();
    let family = endpoint.family();
    let mut recorder = Recorder::start(app, &snapshot, &inbound, endpoint.path());

    // 1. authenticate
    let key = match authenticate::run(app, &inbound.headers, inbound.query.as_deref()).await {
        Flow::Continue(key) => key,
        Flow::Respond(error) => return recorder.deny(Stage::Authenticate, &error, family),
    };
    recorder.set_key(&key);

    // 2. authorize
    let request = match authorize::run(&snapshot, endpoint, &key, inbound.body, &mut recorder).await
    {
        Flow::Continue(request) => request,
        Flow::Respond(error) => return recorder.deny(Stage::Authorize, &error, family),
    };

    // 3. inspect and 4. reserve are not built yet; 5. route: the model's one deployment.

    // 6. call (7. record runs when the relayed response finishes)
    call::run(app, endpoint, request, recorder).await
}
