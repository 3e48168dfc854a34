//! The Anthropic-compatible endpoint family: `POST /v1/messages` (JSON and Anthropic's SSE
//! event sequence) and `POST /v1/messages/count_tokens`. The key comes from `x-api-key` or
//! `Authorization: Bearer` (the 2.x SDK sends Bearer); every gateway error is in Anthropic's
//! envelope so the SDK raises its typed exceptions.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::Response;

use super::openai::inbound;
use crate::pipeline::{self, Endpoint};
use crate::state::AppState;

/// `POST /v1/messages`.
pub async fn messages(State(app): State<Arc<AppState>>, request: Request) -> Response {
    pipeline::handle(&app, Endpoint::Messages, inbound(request)).await
}

/// `POST /v1/messages/count_tokens`.
pub async fn count_tokens(State(app): State<Arc<AppState>>, request: Request) -> Response {
    pipeline::handle(&app, Endpoint::CountTokens, inbound(request)).await
}
