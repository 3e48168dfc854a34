//! The OpenAI-compatible endpoint family: `/v1/chat/completions`, `/v1/completions`,
//! `/v1/embeddings`, `/v1/responses`, `/v1/images/generations`, `/v1/models` and
//! `/v1/models/{id}`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::error::{AccessError, Family, GatewayError};
use crate::pipeline::{self, Endpoint, Flow, Inbound, authenticate};
use crate::state::{AppState, RequestId};

/// What the pipeline needs from an axum request.
pub(super) fn inbound(request: Request) -> Inbound {
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
        path_model: None,
    }
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(State(app): State<Arc<AppState>>, request: Request) -> Response {
    pipeline::handle(&app, Endpoint::ChatCompletions, inbound(request)).await
}

/// `POST /v1/completions` (legacy text completions).
pub async fn completions(State(app): State<Arc<AppState>>, request: Request) -> Response {
    pipeline::handle(&app, Endpoint::Completions, inbound(request)).await
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
    match model_objects(&app, request, |_| true).await {
        Ok(data) => Json(json!({"object": "list", "data": data})).into_response(),
        Err(response) => response,
    }
}

/// `GET /v1/models/{id}`: one model this key may call; 404 `model_not_found` otherwise.
pub async fn get_model(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    match model_objects(&app, request, |name| name == id).await {
        Ok(mut data) if !data.is_empty() => Json(data.swap_remove(0)).into_response(),
        Ok(_) => {
            let error = GatewayError::from(AccessError::ModelNotFound(id));
            let mut response = error.render(Family::OpenAi);
            // OpenAI answers an unknown model id with 404, which its SDK maps to NotFoundError.
            *response.status_mut() = StatusCode::NOT_FOUND;
            response
        }
        Err(response) => response,
    }
}

/// The OpenAI model objects the request's key may call, filtered by name.
pub(super) async fn model_objects(
    app: &Arc<AppState>,
    request: Request,
    keep: impl Fn(&str) -> bool,
) -> Result<Vec<Value>, Response> {
    let inbound = inbound(request);
    let key = match authenticate::run(app, &inbound.headers, inbound.query.as_deref()).await {
        Flow::Continue(key) => key,
        Flow::Respond(error) => return Err(error.render(Family::OpenAi)),
    };
    let snapshot = app.policies.snapshot();
    let created = snapshot.loaded_at_ms / 1000;
    Ok(snapshot
        .callable_names()
        .into_iter()
        .filter(|(name, _)| key.models.allows(name) && keep(name))
        .map(|(name, owner)| {
            json!({
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": owner,
            })
        })
        .collect())
}
