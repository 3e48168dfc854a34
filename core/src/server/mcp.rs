//! The MCP endpoint family: `GET | POST | DELETE /v1/mcp/{slug}` and `/v1/mcp/{slug}/{path}`.
//! The lifecycle is [`crate::mcp::gateway`].

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::response::Response;

use crate::error::{Family, GatewayError, McpError};
use crate::mcp::gateway::{self, McpInbound};
use crate::pipeline::Inbound;
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
        path_model: None,
        body,
    }
}

/// `/v1/mcp/{slug}`.
pub async fn server(
    State(app): State<Arc<AppState>>,
    Path(slug): Path<String>,
    request: Request,
) -> Response {
    let request = McpInbound {
        inbound: inbound(request),
        slug,
        path: None,
    };
    gateway::handle(&app, request).await
}

/// `/v1/mcp/{slug}/{*path}`.
pub async fn server_path(
    State(app): State<Arc<AppState>>,
    Path((slug, path)): Path<(String, String)>,
    request: Request,
) -> Response {
    let request = McpInbound {
        inbound: inbound(request),
        slug,
        path: Some(path),
    };
    gateway::handle(&app, request).await
}

/// `/v1/mcp` without a server: 400 `invalid_mcp_ref`.
pub async fn no_server() -> Response {
    GatewayError::from(McpError::InvalidRef).render(Family::OpenAi)
}
