//! The vLLM-compatible endpoint family under `/v1/vllm/`: the allow-listed routes of
//! [`crate::family::VLLM_ROUTES`] are governed like every model call and forwarded raw; the
//! model list is answered by the gateway; audio answers 501 (multipart is not proxied yet);
//! anything else is refused and never forwarded (vLLM's development routes must stay out of
//! reach).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::openai::{inbound, model_objects};
use crate::error::{Family, GatewayError};
use crate::family::{ProviderFamily, vllm_route};
use crate::pipeline::{self, Endpoint};
use crate::state::AppState;

/// Any method on `/v1/vllm/{*rest}`.
pub async fn dispatch(
    State(app): State<Arc<AppState>>,
    Path(rest): Path<String>,
    request: Request,
) -> Response {
    let method = request.method().clone();
    let trimmed = rest.trim_start_matches('/');
    if matches!(trimmed, "models" | "v1/models") {
        if method != Method::GET {
            return GatewayError::MethodNotAllowed(format!("{method} /v1/vllm/{trimmed}"))
                .render(Family::OpenAi);
        }
        let snapshot = app.policies.snapshot();
        let vllm = |name: &str| {
            snapshot.models.get(name).is_some_and(|m| {
                matches!(
                    m.provider.family,
                    ProviderFamily::Vllm | ProviderFamily::Demo
                )
            })
        };
        return match model_objects(&app, request, vllm).await {
            Ok(data) => Json(json!({"object": "list", "data": data})).into_response(),
            Err(response) => response,
        };
    }
    if matches!(
        trimmed.trim_start_matches("v1/"),
        "audio/transcriptions" | "audio/translations"
    ) {
        let body = json!({"error": {
            "code": "not_implemented",
            "message": "vLLM audio routes take multipart uploads, which tollgate does not proxy yet",
            "type": "invalid_request_error",
        }});
        return (StatusCode::NOT_IMPLEMENTED, Json(body)).into_response();
    }
    let Some(route) = vllm_route(trimmed) else {
        return GatewayError::NotFound(format!(
            "{method} /v1/vllm/{trimmed} (not an allow-listed vLLM route)"
        ))
        .render(Family::OpenAi);
    };
    if method != Method::POST {
        return GatewayError::MethodNotAllowed(format!("{method} /v1/vllm/{trimmed}"))
            .render(Family::OpenAi);
    }
    pipeline::handle(&app, Endpoint::Vllm(route), inbound(request)).await
}
