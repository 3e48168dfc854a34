//! The MCP gateway: servers from the policy directory, JSON-RPC inspection and governance, and
//! the transports behind `/v1/mcp/{slug}` (Streamable HTTP, legacy SSE, stdio children).
//!
//! An MCP request runs the same lifecycle as a model call (see [`crate::pipeline`]):
//! authenticate, authorize (server exists and is enabled, MCP Access, server limits), inspect
//! (tool rules, keyword filter, CEL rules reading `mcp`), reserve (the MCP cost on budgets and
//! quotas), call (inject the upstream credential, relay), record (one usage row with
//! `provider = mcp` per HTTP request). The handler is `server::mcp`.

pub mod aggregate;
pub mod auth;
pub mod call;
pub mod gateway;
pub mod govern;
pub mod http;
pub mod jsonrpc;
pub mod limits;
pub mod server;
pub mod session;
pub mod sse;
pub mod stdio;

/// What the MCP gateway keeps between requests (per replica): limiters, cached OAuth2 tokens,
/// the session-signing keys and the stdio children.
#[derive(Debug)]
pub struct Runtime {
    /// Rate, burst and concurrency limits per server.
    pub limits: limits::Limiters,
    /// OAuth2 access tokens.
    pub tokens: auth::TokenCache,
    /// Signs gateway session ids.
    pub sessions: session::SessionKeys,
    /// Stdio children by session.
    pub stdio: stdio::Children,
    /// Open legacy SSE streams.
    pub sse: sse::Streams,
}

impl Runtime {
    /// A runtime whose session ids are signed with `secret` (shared by every replica).
    pub fn new(secret: &[u8]) -> Self {
        Self {
            limits: limits::Limiters::default(),
            tokens: auth::TokenCache::default(),
            sessions: session::SessionKeys::new(secret),
            stdio: stdio::Children::default(),
            sse: sse::Streams::default(),
        }
    }
}
