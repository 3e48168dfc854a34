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

/// The shape of a request or an answer: what an endpoint accepts and what a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// OpenAI (Chat Completions, Completions, Embeddings, Responses, Images).
    OpenAi,
    /// Anthropic Messages.
    Anthropic,
    /// Gemini `generateContent` and friends.
    Gemini,
    /// A vLLM server's raw routes (OpenAI-like, plus tokenize, pooling, scoring).
    Vllm,
}

impl Api {
    /// The lower-case name used in records and policies.
    pub fn as_str(self) -> &'static str {
        match self {
            Api::OpenAi => "openai",
            Api::Anthropic => "anthropic",
            Api::Gemini => "gemini",
            Api::Vllm => "vllm",
        }
    }
}

/// The API family a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderFamily {
    /// The OpenAI API (and compatible servers).
    Openai,
    /// Azure OpenAI: `api-key` header, deployment URLs, `api-version`.
    Azure,
    /// Anthropic Messages: `x-api-key` and `anthropic-version`.
    Anthropic,
    /// Google Gemini (Generative Language API): `x-goog-api-key`.
    Gemini,
    /// A vLLM server: optional bearer key, raw routes.
    Vllm,
    /// tollgate's built-in offline demo responder: answers deterministically in the shape of
    /// the endpoint it is called on.
    Demo,
    /// A provider tollgate does not know, spoken through a provider-adapter plugin (named by
    /// the provider's `adapter`): OpenAI-shaped chat for the rest of the gateway.
    Adapter,
}

impl ProviderFamily {
    /// The lower-case name used in configs, errors and records.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderFamily::Openai => "openai",
            ProviderFamily::Azure => "azure",
            ProviderFamily::Anthropic => "anthropic",
            ProviderFamily::Gemini => "gemini",
            ProviderFamily::Vllm => "vllm",
            ProviderFamily::Demo => "demo",
            ProviderFamily::Adapter => "adapter",
        }
    }

    /// The API shape the provider speaks; `None` for the demo, which answers in every shape.
    pub fn api(self) -> Option<Api> {
        match self {
            ProviderFamily::Openai | ProviderFamily::Azure | ProviderFamily::Adapter => {
                Some(Api::OpenAi)
            }
            ProviderFamily::Anthropic => Some(Api::Anthropic),
            ProviderFamily::Gemini => Some(Api::Gemini),
            ProviderFamily::Vllm => Some(Api::Vllm),
            ProviderFamily::Demo => None,
        }
    }
}

/// What a vLLM route carries, which decides how governance reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VllmKind {
    /// Generates tokens (chat, completions, responses): streams, `max_tokens`, usage.
    Generate,
    /// Reads input only (embeddings, tokenize, pooling, scoring): no output tokens.
    Input,
}

/// One allow-listed vLLM route: the path clients call under `/v1/vllm` and the server's path.
#[derive(Debug, PartialEq, Eq)]
pub struct VllmRoute {
    /// The path clients call, e.g. `/v1/vllm/chat/completions`.
    pub path: &'static str,
    /// The path on the vLLM server, e.g. `/v1/chat/completions`.
    pub upstream: &'static str,
    /// How governance reads it.
    pub kind: VllmKind,
}

/// vLLM's routes tollgate forwards (PROTOCOLS.md section 2). Anything else is refused: the
/// development routes (`/sleep`, `/collective_rpc`, ...) must never be reachable.
pub const VLLM_ROUTES: &[VllmRoute] = &[
    VllmRoute {
        path: "/v1/vllm/chat/completions",
        upstream: "/v1/chat/completions",
        kind: VllmKind::Generate,
    },
    VllmRoute {
        path: "/v1/vllm/completions",
        upstream: "/v1/completions",
        kind: VllmKind::Generate,
    },
    VllmRoute {
        path: "/v1/vllm/responses",
        upstream: "/v1/responses",
        kind: VllmKind::Generate,
    },
    VllmRoute {
        path: "/v1/vllm/embeddings",
        upstream: "/v1/embeddings",
        kind: VllmKind::Input,
    },
    VllmRoute {
        path: "/v1/vllm/tokenize",
        upstream: "/tokenize",
        kind: VllmKind::Input,
    },
    VllmRoute {
        path: "/v1/vllm/detokenize",
        upstream: "/detokenize",
        kind: VllmKind::Input,
    },
    VllmRoute {
        path: "/v1/vllm/pooling",
        upstream: "/pooling",
        kind: VllmKind::Input,
    },
    VllmRoute {
        path: "/v1/vllm/classify",
        upstream: "/classify",
        kind: VllmKind::Input,
    },
    VllmRoute {
        path: "/v1/vllm/score",
        upstream: "/score",
        kind: VllmKind::Input,
    },
    VllmRoute {
        path: "/v1/vllm/rerank",
        upstream: "/rerank",
        kind: VllmKind::Input,
    },
    VllmRoute {
        path: "/v1/vllm/v2/rerank",
        upstream: "/v2/rerank",
        kind: VllmKind::Input,
    },
];

/// Finds the allow-listed vLLM route for `rest`, the path after `/v1/vllm/`. Both the spec's
/// short form (`chat/completions`) and the server's own (`v1/chat/completions`, what the OpenAI
/// SDK calls with base URL `/v1/vllm/v1`) are accepted.
pub fn vllm_route(rest: &str) -> Option<&'static VllmRoute> {
    let rest = rest.trim_start_matches('/');
    VLLM_ROUTES.iter().find(|r| {
        let short = &r.path["/v1/vllm/".len()..];
        rest == short
            || rest
                .strip_prefix("v1/")
                .is_some_and(|tail| tail == short && !short.starts_with("v2/"))
    })
}

/// How one deployment serves an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServeMode {
    /// Same shape in and out: the body passes through with the model and credential swapped.
    Native,
    /// Another family: request, answer and stream go through the translation core.
    Translate,
    /// Not servable from this endpoint.
    Refused,
}

/// The Gemini API version prefix a client called: google-genai 3.x calls `/v1/`, older clients
/// and the REST reference `/v1beta/`. Both serve the same methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GeminiVersion {
    /// `/v1beta/models/...`.
    V1beta,
    /// `/v1/models/...`.
    V1,
}

impl GeminiVersion {
    /// The prefix of a request path.
    pub fn of_path(path: &str) -> Self {
        if path.starts_with("/v1/") {
            GeminiVersion::V1
        } else {
            GeminiVersion::V1beta
        }
    }
}

/// The endpoints tollgate serves natively.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/chat/completions`.
    ChatCompletions,
    /// `POST /v1/completions` (legacy text completions).
    Completions,
    /// `POST /v1/embeddings`.
    Embeddings,
    /// `POST /v1/responses`.
    Responses,
    /// `POST /v1/images/generations`.
    ImagesGenerations,
    /// `POST /v1/messages` (Anthropic).
    Messages,
    /// `POST /v1/messages/count_tokens` (Anthropic).
    CountTokens,
    /// `POST /{v1beta,v1}/models/{model}:generateContent`.
    GeminiGenerate,
    /// `POST /{v1beta,v1}/models/{model}:streamGenerateContent`.
    GeminiStream,
    /// `POST /{v1beta,v1}/models/{model}:countTokens`.
    GeminiCountTokens,
    /// `POST /{v1beta,v1}/models/{model}:embedContent`.
    GeminiEmbed,
    /// `POST /{v1beta,v1}/models/{model}:batchEmbedContents` (what google-genai's
    /// `embed_content` calls).
    GeminiBatchEmbed,
    /// `/v1/vllm/...`: one allow-listed vLLM route.
    Vllm(&'static VllmRoute),
    /// `POST /v1/llm/chat`: OpenAI-shaped, any family upstream.
    Unified,
}

impl Endpoint {
    /// The path clients call (Gemini's with a `{model}` placeholder).
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
            Endpoint::Embeddings => "/v1/embeddings",
            Endpoint::Responses => "/v1/responses",
            Endpoint::ImagesGenerations => "/v1/images/generations",
            Endpoint::Messages => "/v1/messages",
            Endpoint::CountTokens => "/v1/messages/count_tokens",
            Endpoint::GeminiGenerate => "/v1beta/models/{model}:generateContent",
            Endpoint::GeminiStream => "/v1beta/models/{model}:streamGenerateContent",
            Endpoint::GeminiCountTokens => "/v1beta/models/{model}:countTokens",
            Endpoint::GeminiEmbed => "/v1beta/models/{model}:embedContent",
            Endpoint::GeminiBatchEmbed => "/v1beta/models/{model}:batchEmbedContents",
            Endpoint::Vllm(route) => route.path,
            Endpoint::Unified => "/v1/llm/chat",
        }
    }

    /// The path template the client called, as usage rows record it: [`Self::path`], with
    /// Gemini's methods under the version prefix the client used (`{model}` stays a
    /// placeholder). Policies and plugins see [`Self::path`], whatever the prefix.
    pub fn called_path(self, version: GeminiVersion) -> &'static str {
        if version == GeminiVersion::V1beta {
            return self.path();
        }
        match self {
            Endpoint::GeminiGenerate => "/v1/models/{model}:generateContent",
            Endpoint::GeminiStream => "/v1/models/{model}:streamGenerateContent",
            Endpoint::GeminiCountTokens => "/v1/models/{model}:countTokens",
            Endpoint::GeminiEmbed => "/v1/models/{model}:embedContent",
            Endpoint::GeminiBatchEmbed => "/v1/models/{model}:batchEmbedContents",
            other => other.path(),
        }
    }

    /// The path appended to an OpenAI-family provider's base URL (which carries the version
    /// prefix), or to an Anthropic provider's. Gemini and vLLM paths are built by the upstream
    /// client (the model is in Gemini's URL; vLLM's base URL is the server root).
    pub fn upstream_path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions | Endpoint::Unified => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
            Endpoint::Responses => "/responses",
            Endpoint::ImagesGenerations => "/images/generations",
            Endpoint::Messages => "/messages",
            Endpoint::CountTokens => "/messages/count_tokens",
            Endpoint::GeminiGenerate => ":generateContent",
            Endpoint::GeminiStream => ":streamGenerateContent",
            Endpoint::GeminiCountTokens => ":countTokens",
            Endpoint::GeminiEmbed => ":embedContent",
            Endpoint::GeminiBatchEmbed => ":batchEmbedContents",
            Endpoint::Vllm(route) => route.upstream,
        }
    }

    /// The API shape clients send and receive on this endpoint.
    pub fn api(self) -> Api {
        match self {
            Endpoint::Messages | Endpoint::CountTokens => Api::Anthropic,
            Endpoint::GeminiGenerate
            | Endpoint::GeminiStream
            | Endpoint::GeminiCountTokens
            | Endpoint::GeminiEmbed
            | Endpoint::GeminiBatchEmbed => Api::Gemini,
            Endpoint::Vllm(_) => Api::Vllm,
            _ => Api::OpenAi,
        }
    }

    /// The family name recorded on usage rows: the endpoint's API, or `unified`.
    pub fn family_name(self) -> &'static str {
        match self {
            Endpoint::Unified => "unified",
            other => other.api().as_str(),
        }
    }

    /// The error body family of this endpoint.
    pub fn family(self) -> Family {
        match self.api() {
            Api::Anthropic => Family::Anthropic,
            Api::Gemini => Family::Gemini,
            Api::OpenAi | Api::Vllm => Family::OpenAi,
        }
    }

    /// Whether a provider of `family` serves this endpoint natively (same shape in and out).
    pub fn native_for(self, family: ProviderFamily) -> bool {
        if self == Endpoint::Unified {
            return family
                .api()
                .is_none_or(|api| matches!(api, Api::OpenAi | Api::Vllm));
        }
        family.api().is_none_or(|api| api == self.api())
    }

    /// Whether the answer is a chat turn that can cross families through the translation core.
    pub fn translatable(self) -> bool {
        matches!(
            self,
            Endpoint::ChatCompletions
                | Endpoint::Messages
                | Endpoint::GeminiGenerate
                | Endpoint::GeminiStream
                | Endpoint::Unified
        )
    }

    /// How a provider of `family` serves this endpoint: natively, through the translation
    /// core (only when the model or group opted in with `translate = true`, or on the unified
    /// endpoint, whose job it is), or not at all (400 `provider_not_allowed`).
    pub fn serve_mode(self, family: ProviderFamily, opted_in: bool) -> ServeMode {
        if self.native_for(family) {
            return ServeMode::Native;
        }
        let chat_provider = matches!(
            family,
            ProviderFamily::Openai
                | ProviderFamily::Azure
                | ProviderFamily::Anthropic
                | ProviderFamily::Gemini
                | ProviderFamily::Adapter
        );
        if self.translatable() && chat_provider && (opted_in || self == Endpoint::Unified) {
            ServeMode::Translate
        } else {
            ServeMode::Refused
        }
    }

    /// The endpoint a provider of `family` is called on when this one is translated to it.
    pub fn translated_to(self, family: ProviderFamily, stream: bool) -> Endpoint {
        match family.api() {
            Some(Api::Anthropic) => Endpoint::Messages,
            Some(Api::Gemini) if stream => Endpoint::GeminiStream,
            Some(Api::Gemini) => Endpoint::GeminiGenerate,
            _ => Endpoint::ChatCompletions,
        }
    }

    /// Whether the client's request streams by the endpoint itself (not a body field).
    pub fn streams_by_path(self) -> bool {
        self == Endpoint::GeminiStream
    }

    /// Whether the endpoint produces output tokens (so a budget holds `max_tokens` for it).
    pub fn generates(self) -> bool {
        match self {
            Endpoint::Embeddings
            | Endpoint::CountTokens
            | Endpoint::GeminiCountTokens
            | Endpoint::GeminiEmbed
            | Endpoint::GeminiBatchEmbed => false,
            Endpoint::Vllm(route) => route.kind == VllmKind::Generate,
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vllm_routes_accept_both_prefixes_and_refuse_development_routes() {
        let chat = vllm_route("chat/completions").expect("chat");
        assert_eq!(chat.upstream, "/v1/chat/completions");
        assert_eq!(vllm_route("v1/chat/completions"), Some(chat));
        assert_eq!(
            vllm_route("tokenize").map(|r| r.upstream),
            Some("/tokenize")
        );
        assert_eq!(
            vllm_route("v2/rerank").map(|r| r.upstream),
            Some("/v2/rerank")
        );
        for refused in [
            "sleep",
            "wake_up",
            "collective_rpc",
            "v1/sleep",
            "reset_prefix_cache",
            "update_weights",
            "",
            "v1/v2/rerank",
        ] {
            assert_eq!(vllm_route(refused), None, "{refused}");
        }
    }

    #[test]
    fn native_endpoints_take_their_own_family_and_the_demo() {
        assert!(Endpoint::Messages.native_for(ProviderFamily::Anthropic));
        assert!(Endpoint::Messages.native_for(ProviderFamily::Demo));
        assert!(!Endpoint::Messages.native_for(ProviderFamily::Openai));
        assert!(Endpoint::ChatCompletions.native_for(ProviderFamily::Azure));
        assert!(!Endpoint::ChatCompletions.native_for(ProviderFamily::Gemini));
        assert!(!Endpoint::ChatCompletions.native_for(ProviderFamily::Vllm));
        assert_eq!(Endpoint::GeminiEmbed.family(), Family::Gemini);
        assert_eq!(
            Endpoint::GeminiStream.called_path(GeminiVersion::of_path(
                "/v1/models/gemini-2.5-flash:streamGenerateContent"
            )),
            "/v1/models/{model}:streamGenerateContent"
        );
        assert_eq!(
            Endpoint::GeminiGenerate
                .called_path(GeminiVersion::of_path("/v1beta/models/m:generateContent")),
            Endpoint::GeminiGenerate.path()
        );
        assert_eq!(
            Endpoint::Messages.called_path(GeminiVersion::V1),
            "/v1/messages"
        );
    }

    #[test]
    fn other_families_are_refused_unless_opted_in_and_always_translated_on_the_unified_endpoint() {
        use ServeMode::*;
        let m = Endpoint::Messages;
        assert_eq!(m.serve_mode(ProviderFamily::Openai, false), Refused);
        assert_eq!(m.serve_mode(ProviderFamily::Openai, true), Translate);
        assert_eq!(m.serve_mode(ProviderFamily::Vllm, true), Refused);
        assert_eq!(
            Endpoint::CountTokens.serve_mode(ProviderFamily::Gemini, true),
            Refused
        );
        let u = Endpoint::Unified;
        assert_eq!(u.serve_mode(ProviderFamily::Anthropic, false), Translate);
        assert_eq!(u.serve_mode(ProviderFamily::Openai, false), Native);
        assert_eq!(u.serve_mode(ProviderFamily::Demo, false), Native);
    }
}
