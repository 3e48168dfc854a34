//! The vocabulary shared by every layer: API families (inbound endpoints and outbound providers)
//! and the endpoints tollgate serves. It sits at the bottom of the module graph: the server, the
//! pipeline, the upstream client and the policy loader all use it, and it imports none of them.

use serde::Deserialize;

/// The API family whose error body shape a response must use, so each SDK parses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `{"error":{"code","message","type"}}` (also used by the unified and MCP endpoints).
    OpenAi,
    /// `{"type":"error","error":{"type","message","code"}}`.
    Anthropic,
    /// `{"error":{"code":<status>,"message","status","details":[{"reason":<code>}]}}`.
    Gemini,
}

/// The API family a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderFamily {
    /// The OpenAI API (and compatible servers).
    Openai,
    /// tollgate's built-in offline demo responder: answers deterministically, OpenAI-shaped.
    Demo,
}

impl ProviderFamily {
    /// The lower-case name used in configs, errors and records.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderFamily::Openai => "openai",
            ProviderFamily::Demo => "demo",
        }
    }
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
