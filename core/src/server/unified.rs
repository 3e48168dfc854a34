//! The unified endpoint `POST /v1/llm/chat` (reference spec 2.3): an OpenAI-shaped request for
//! a model of any family, an optional `provider` pin, `include_usage` top-level or in
//! `stream_options`. Unary answers are the normalised object of 2.3; streams are OpenAI chunks
//! whatever the upstream. Model groups may mix families and fail over across them. Errors are
//! OpenAI-shaped.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::Response;

use super::openai::inbound;
use crate::pipeline::{self, Endpoint};
use crate::state::AppState;

/// `POST /v1/llm/chat`.
pub async fn chat(State(app): State<Arc<AppState>>, request: Request) -> Response {
    pipeline::handle(&app, Endpoint::Unified, inbound(request)).await
}
