//! Stage 2, authorize: decode the body, resolve the model, check grants and provider state.
//!
//! Order: body within the size limit → JSON object → `model` → the model exists → the key has
//! Model Access → the endpoint family fits the provider → the provider is enabled and has a
//! credential. The grant is checked before provider state so a key without access learns
//! nothing about providers.

use std::sync::Arc;

use axum::body::Body;
use bytes::Bytes;
use serde_json::{Map, Value};

use super::{Endpoint, Flow, Recorder};
use crate::error::{AccessError, RequestError};
use crate::policy::{Credential, Model, ProviderFamily, Snapshot};
use crate::store::KeyRecord;

/// A request that passed authorization, ready for the upstream.
#[derive(Debug)]
pub struct Authorized {
    /// The resolved model.
    pub model: Arc<Model>,
    /// The body the upstream receives: the client's, with `model` set to the upstream id and,
    /// for chat streams, usage requested.
    pub upstream_body: Bytes,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// Whether the client itself asked for the usage chunk of a chat stream.
    pub client_wants_usage: bool,
}

/// Reads the body, enforcing `limit`.
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, RequestError> {
    match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => Ok(bytes),
        Err(e) => {
            let inner = e.into_inner();
            let too_large =
                std::iter::successors(Some(&*inner as &(dyn std::error::Error + 'static)), |e| {
                    e.source()
                })
                .any(|e| e.is::<http_body_util::LengthLimitError>());
            if too_large {
                Err(RequestError::TooLarge { limit })
            } else {
                Err(RequestError::UnreadableBody(inner.to_string()))
            }
        }
    }
}

/// Parses the body into a JSON object, reporting the position of a syntax error.
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, RequestError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(RequestError::Invalid(
            "request body must be a JSON object".into(),
        )),
        Err(e) => Err(RequestError::Invalid(format!(
            "request body is not valid JSON: {e}"
        ))),
    }
}

fn optional_bool(body: &Map<String, Value>, field: &str) -> Result<Option<bool>, RequestError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(RequestError::Invalid(format!(
            "'{field}' must be a boolean"
        ))),
    }
}

/// Authorizes the request.
pub async fn run(
    snapshot: &Snapshot,
    endpoint: Endpoint,
    key: &KeyRecord,
    body: Body,
    recorder: &mut Recorder,
) -> Flow<Authorized> {
    match decide(snapshot, endpoint, key, body, recorder).await {
        Ok(authorized) => Flow::Continue(authorized),
        Err(error) => Flow::Respond(error),
    }
}

async fn decide(
    snapshot: &Snapshot,
    endpoint: Endpoint,
    key: &KeyRecord,
    body: Body,
    recorder: &mut Recorder,
) -> Result<Authorized, crate::error::GatewayError> {
    let bytes = read_body(body, snapshot.limits.max_body_bytes).await?;
    let mut body = parse_object(&bytes)?;
    let requested = match body.get("model") {
        Some(Value::String(name)) if !name.is_empty() => name.clone(),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            return Err(RequestError::Invalid("'model' is required".into()).into());
        }
        Some(_) => return Err(RequestError::Invalid("'model' must be a string".into()).into()),
    };
    recorder.set_requested_model(&requested);
    let stream = optional_bool(&body, "stream")?.unwrap_or(false);
    recorder.set_stream(stream);
    let client_wants_usage = match body.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(options)) => optional_bool(options, "include_usage")?.unwrap_or(false),
        Some(_) => {
            return Err(RequestError::Invalid("'stream_options' must be an object".into()).into());
        }
    } || optional_bool(&body, "include_usage")?.unwrap_or(false);

    let model = snapshot
        .model(&requested)
        .ok_or_else(|| AccessError::ModelNotFound(requested.clone()))?
        .clone();
    if !key.models.allows(&model.name) {
        return Err(AccessError::ModelNotAllowed(model.name.clone()).into());
    }
    let provider = &model.provider;
    match provider.family {
        ProviderFamily::Openai | ProviderFamily::Demo => {}
    }
    if !provider.enabled {
        return Err(AccessError::ProviderDisabled(provider.name.clone()).into());
    }
    if let Credential::Missing(_) = provider.credential {
        return Err(AccessError::ProviderCredentialMissing(provider.name.clone()).into());
    }
    recorder.set_model(&model);

    body.insert("model".into(), Value::String(model.upstream_model.clone()));
    if stream && endpoint == Endpoint::ChatCompletions {
        // Always ask for usage so streams can be billed; the relay hides the usage chunk from
        // clients that did not ask for it.
        let options = body
            .entry("stream_options")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(options) = options {
            options.insert("include_usage".into(), Value::Bool(true));
        }
    }
    // The unified endpoint's top-level `include_usage` is not an OpenAI field.
    body.remove("include_usage");
    let upstream_body = serde_json::to_vec(&body)
        .map_err(|e| RequestError::Invalid(format!("request cannot be re-encoded: {e}")))?;
    Ok(Authorized {
        model,
        upstream_body: Bytes::from(upstream_body),
        stream,
        client_wants_usage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_errors_carry_a_position() {
        let err = parse_object(b"{\"model\": \"a\",\n}").expect_err("invalid");
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn non_objects_are_invalid() {
        assert!(parse_object(b"[1]").is_err());
        assert!(parse_object(b"{}").is_ok());
    }

    #[tokio::test]
    async fn oversized_bodies_are_too_large() {
        let err = read_body(Body::from(vec![b'x'; 100]), 10)
            .await
            .expect_err("too large");
        assert_eq!(err, RequestError::TooLarge { limit: 10 });
        assert_eq!(
            read_body(Body::from("abc"), 10).await.expect("fits"),
            Bytes::from("abc")
        );
    }
}
