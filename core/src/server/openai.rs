//! The OpenAI-compatible endpoint family: `/v1/chat/completions`, `/v1/embeddings`,
//! `/v1/responses`, `/v1/images/generations` and `/v1/models`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::error::Family;
use crate::pipeline::{self, Endpoint, Flow, Inbound, authenticate};
use crate::state::{AppState, RequestId};

fn inbound(request: Request) -> Inbound {
    let (parts, body) = request.into_parts();
    Inbound {
        request_id: parts
            .extensions
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_default(),
        method: parts.method,
        client_ip: parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip()),
        query: parts.uri.query().map(str::to_string),
        headers: parts.headers,
        body,
    }
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(State(app): State<Arc<AppState>>, request: Request) -> Response {
    pipeline::handle(&app, Endpoint::ChatCompletions, inbound(request)).await
}

/// `POST /v1/embeddings`.
pub async fn embeddings(State(app): State<Arc<AppState>>, request: Request) -> Response {
    pipeline::handle(&app, Endpoint::Embeddings, inbound(request)).await
}

/// `POST /v1/responses`.
pub async fn responses(State(app): State<Arc<AppState>>, request: Request) -> Response {
    pipeline::handle(&app, Endpoint::Responses, inbound(request)).await
}

/// `POST /v1/images/generations`.
pub async fn images_generations(State(app): State<Arc<AppState>>, request: Request) -> Response {
    pipeline::handle(&app, Endpoint::ImagesGenerations, inbound(request)).await
}

/// `GET /v1/models`: the models this key may call, in OpenAI's list shape.
pub async fn list_models(State(app): State<Arc<AppState>>, request: Request) -> Response {
    let inbound = inbound(request);
    let key = match authenticate::run(&app, &inbound.headers, inbound.query.as_deref()).await {
        Flow::Continue(key) => key,
        Flow::Respond(error) => return error.render(Family::OpenAi),
    };
    let snapshot = app.policies.snapshot();
    let created = snapshot.loaded_at_ms / 1000;
    let data: Vec<Value> = snapshot
        .callable_names()
        .into_iter()
        .filter(|(name, _)| key.models.allows(name))
        .map(|(name, owner)| {
            json!({
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": owner,
            })
        })
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}
