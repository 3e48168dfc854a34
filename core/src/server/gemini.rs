//! The Gemini-compatible endpoint family under `/v1beta/models/` and `/v1/models/` (the
//! google-genai 3.x SDK calls `/v1/`): `{model}:generateContent`, `:streamGenerateContent`
//! (`?alt=sse`, or by default one streamed JSON array), `:countTokens`, `:embedContent` and
//! `:batchEmbedContents`.
//! `{model}` is the tollgate model name. The key comes from `x-goog-api-key` or `?key=`; every
//! gateway error is in Google's envelope.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::response::Response;

use super::openai::inbound;
use crate::error::{Family, GatewayError};
use crate::family::GeminiVersion;
use crate::pipeline::{self, Endpoint};
use crate::state::AppState;

/// Splits `gemini-2.5-flash:generateContent` on its last `:` into the model and the method's
/// endpoint.
pub fn parse_target(target: &str) -> Option<(&str, Endpoint)> {
    let (model, method) = target.rsplit_once(':')?;
    let endpoint = match method {
        "generateContent" => Endpoint::GeminiGenerate,
        "streamGenerateContent" => Endpoint::GeminiStream,
        "countTokens" => Endpoint::GeminiCountTokens,
        "embedContent" => Endpoint::GeminiEmbed,
        "batchEmbedContents" => Endpoint::GeminiBatchEmbed,
        _ => return None,
    };
    (!model.is_empty()).then_some((model, endpoint))
}

/// `POST /{v1beta,v1}/models/{model}:{method}`.
pub async fn dispatch(
    State(app): State<Arc<AppState>>,
    Path(target): Path<String>,
    request: Request,
) -> Response {
    let Some((model, endpoint)) = parse_target(&target) else {
        let path = request.uri().path().to_string();
        return GatewayError::NotFound(format!(
            "POST {path} (Gemini methods: generateContent, streamGenerateContent, countTokens, embedContent, batchEmbedContents)"
        ))
        .render(Family::Gemini);
    };
    // Usage rows record the prefix the client called (google-genai 3.x calls `/v1/`).
    let called = endpoint.called_path(GeminiVersion::of_path(request.uri().path()));
    let mut inbound = inbound(request);
    inbound.path_model = Some(model.to_string());
    pipeline::handle_at(&app, endpoint, called, inbound).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_method_is_after_the_last_colon() {
        assert_eq!(
            parse_target("gemini-2.5-flash:streamGenerateContent"),
            Some(("gemini-2.5-flash", Endpoint::GeminiStream))
        );
        assert_eq!(
            parse_target("ns:model:countTokens"),
            Some(("ns:model", Endpoint::GeminiCountTokens))
        );
        assert_eq!(parse_target("m:deleteEverything"), None);
        assert_eq!(parse_target(":generateContent"), None);
        assert_eq!(parse_target("plain"), None);
    }
}
