//! Where and how each provider family is called: the URL of an endpoint, the header carrying
//! the credential, and the family's protocol headers.
//!
//! | family    | URL                                                          | credential          |
//! |-----------|--------------------------------------------------------------|---------------------|
//! | openai    | `{base}/chat/completions` (base carries `/v1`)               | `Authorization: Bearer` |
//! | azure     | `{base}/openai/deployments/{upstream_model}/chat/completions?api-version=V` | `api-key` |
//! | anthropic | `{base}/messages` (base carries `/v1`), `anthropic-version`  | `x-api-key`         |
//! | gemini    | `{base}/models/{upstream_model}:generateContent` (`?alt=sse` for streams) | `x-goog-api-key` |
//! | vllm      | `{base}{route}` (base is the server root: routes carry `/v1` or not) | optional bearer |

use std::sync::{Arc, RwLock};

use axum::http::{HeaderName, HeaderValue, Uri, header};

use crate::family::{Endpoint, ProviderFamily};
use crate::policy::{Credential, Model};

/// The `anthropic-version` sent when neither the client nor the provider config names one.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// How the credential is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// `Authorization: Bearer <key>`.
    Bearer,
    /// The key as the value of this header.
    Header(&'static str),
}

/// A built upstream call.
#[derive(Debug)]
pub struct Call {
    /// Full URL.
    pub url: String,
    /// How the credential goes.
    pub auth: Auth,
    /// Protocol headers of the family.
    pub headers: Vec<(&'static str, HeaderValue)>,
}

/// The call of `endpoint` on `model`'s provider; `None` when the family has no such endpoint
/// (or the provider no base URL).
pub fn build(model: &Model, endpoint: Endpoint, stream: bool) -> Option<Call> {
    let provider = &model.provider;
    let base = provider.base_url.as_deref()?;
    let path = endpoint.upstream_path();
    let call = match provider.family {
        ProviderFamily::Openai => Call {
            url: format!("{base}{path}"),
            auth: Auth::Bearer,
            headers: Vec::new(),
        },
        ProviderFamily::Azure => {
            let version = provider.api_version.as_deref()?;
            Call {
                url: format!(
                    "{base}/openai/deployments/{}{path}?api-version={}",
                    encode(&model.upstream_model),
                    encode(version)
                ),
                auth: Auth::Header("api-key"),
                headers: Vec::new(),
            }
        }
        ProviderFamily::Anthropic => {
            if !matches!(endpoint, Endpoint::Messages | Endpoint::CountTokens) {
                return None;
            }
            let version = provider.api_version.as_deref().unwrap_or(ANTHROPIC_VERSION);
            Call {
                url: format!("{base}{path}"),
                auth: Auth::Header("x-api-key"),
                headers: vec![("anthropic-version", HeaderValue::from_str(version).ok()?)],
            }
        }
        ProviderFamily::Gemini => {
            if !path.starts_with(':') {
                return None;
            }
            let alt = if stream && endpoint == Endpoint::GeminiStream {
                "?alt=sse"
            } else {
                ""
            };
            Call {
                url: format!("{base}/models/{}{path}{alt}", encode(&model.upstream_model)),
                auth: Auth::Header("x-goog-api-key"),
                headers: Vec::new(),
            }
        }
        ProviderFamily::Vllm => {
            let path = match endpoint {
                Endpoint::Vllm(route) => route.upstream.to_string(),
                Endpoint::ChatCompletions
                | Endpoint::Unified
                | Endpoint::Completions
                | Endpoint::Embeddings
                | Endpoint::Responses => format!("/v1{path}"),
                _ => return None,
            };
            Call {
                url: format!("{base}{path}"),
                auth: Auth::Bearer,
                headers: Vec::new(),
            }
        }
        // The demo answers in process; adapters build their own request (`upstream::adapter`).
        ProviderFamily::Demo | ProviderFamily::Adapter => return None,
    };
    Some(call)
}

/// A call of one endpoint, ready to send: its URL parsed, its credential header made.
#[derive(Debug)]
pub struct Prepared {
    /// The parsed URL, or the text reqwest is left to refuse (with its own error).
    pub url: Result<reqwest::Url, String>,
    /// The same URL as an HTTP URI, for the direct path ([`super::direct`]); `None` when it
    /// is not one (reqwest's parse is more lenient, so such a call goes through reqwest).
    pub uri: Option<Uri>,
    /// The credential's header (marked sensitive: never printed), `None` when the provider
    /// needs none; `Err` when the credential cannot be a header value.
    pub credential: Result<Option<(HeaderName, HeaderValue)>, InvalidCredential>,
    /// Protocol headers of the family.
    pub headers: Vec<(&'static str, HeaderValue)>,
}

/// A provider credential that cannot be sent as a header value (a control character in it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidCredential;

/// The header carrying `credential` the way `auth` says, marked sensitive.
fn credential_header(
    credential: &Credential,
    auth: Auth,
) -> Result<Option<(HeaderName, HeaderValue)>, InvalidCredential> {
    let Credential::Present(secret) = credential else {
        return Ok(None);
    };
    let (name, value) = match auth {
        Auth::Bearer => (
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {}", secret.expose())),
        ),
        Auth::Header(name) => (
            HeaderName::from_static(name),
            HeaderValue::from_str(secret.expose()),
        ),
    };
    let mut value = value.map_err(|_| InvalidCredential)?;
    value.set_sensitive(true);
    Ok(Some((name, value)))
}

/// A model's prepared calls by endpoint and streaming, made on first use: otherwise every call
/// would format its URL and have reqwest parse it again (host normalisation included). A model
/// belongs to one policy snapshot and never changes, so neither do its calls.
#[derive(Debug, Default)]
pub struct CallMemo(RwLock<Vec<(Endpoint, bool, Arc<Prepared>)>>);

/// The prepared call of `endpoint` on `model`'s provider ([`build`], parsed and remembered).
pub fn prepare(model: &Model, endpoint: Endpoint, stream: bool) -> Option<Arc<Prepared>> {
    let memo = &model.calls.0;
    if let Ok(calls) = memo.read()
        && let Some((.., call)) = calls
            .iter()
            .find(|(e, s, _)| *e == endpoint && *s == stream)
    {
        return Some(call.clone());
    }
    let Call { url, auth, headers } = build(model, endpoint, stream)?;
    let url = reqwest::Url::parse(&url).map_err(|_| url);
    let uri = url
        .as_ref()
        .ok()
        .and_then(|url| url.as_str().parse::<Uri>().ok());
    let prepared = Arc::new(Prepared {
        url,
        uri,
        credential: credential_header(&model.provider.credential, auth),
        headers,
    });
    if let Ok(mut calls) = memo.write()
        && !calls.iter().any(|(e, s, _)| *e == endpoint && *s == stream)
    {
        calls.push((endpoint, stream, prepared.clone()));
    }
    Some(prepared)
}

/// Percent-encodes a path segment or query value (model ids may carry `/` or `@`).
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::family::vllm_route;
    use crate::policy::{Credential, Provider};

    fn model(family: ProviderFamily, base: &str, api_version: Option<&str>) -> Model {
        Model {
            name: "m".into(),
            provider: Arc::new(Provider {
                name: "p".into(),
                family,
                base_url: Some(base.into()),
                credential: Credential::NotRequired,
                timeouts: Default::default(),
                net: crate::upstream::proxy::NetSettings::new(
                    None,
                    None,
                    crate::upstream::timeouts::DEFAULT_CONNECT,
                ),
                client: None,
                enabled: true,
                api_version: api_version.map(str::to_string),
                adapter: None,
            }),
            upstream_model: "gemini-2.5-flash".into(),
            pricing: Default::default(),
            tags: Vec::new(),
            max_output_tokens: 10,
            translate: false,
            output_limit: None,
            image_pricing: Default::default(),
            cel: ::cel::Value::Null,
            calls: Default::default(),
        }
    }

    #[test]
    fn each_family_builds_its_own_url_and_credential_header() {
        let g = model(ProviderFamily::Gemini, "http://g/v1beta", None);
        let call = build(&g, Endpoint::GeminiStream, true).expect("gemini");
        assert_eq!(
            call.url,
            "http://g/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
        );
        assert_eq!(call.auth, Auth::Header("x-goog-api-key"));
        assert!(build(&g, Endpoint::ChatCompletions, false).is_none());

        let a = model(ProviderFamily::Anthropic, "http://a/v1", None);
        let call = build(&a, Endpoint::Messages, false).expect("anthropic");
        assert_eq!(call.url, "http://a/v1/messages");
        assert_eq!(call.auth, Auth::Header("x-api-key"));
        assert_eq!(call.headers[0].1, "2023-06-01");

        let z = model(
            ProviderFamily::Azure,
            "https://r.openai.azure.com",
            Some("2024-10-21"),
        );
        let call = build(&z, Endpoint::ChatCompletions, false).expect("azure");
        assert_eq!(
            call.url,
            "https://r.openai.azure.com/openai/deployments/gemini-2.5-flash/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(call.auth, Auth::Header("api-key"));

        let v = model(ProviderFamily::Vllm, "http://v:8000", None);
        let route = vllm_route("tokenize").expect("route");
        assert_eq!(
            build(&v, Endpoint::Vllm(route), false).expect("vllm").url,
            "http://v:8000/tokenize"
        );
    }

    #[test]
    fn calls_are_prepared_once_per_endpoint_and_stream() {
        let g = model(ProviderFamily::Gemini, "http://g/v1beta", None);
        let stream = prepare(&g, Endpoint::GeminiStream, true).expect("gemini");
        assert_eq!(
            stream.url.as_ref().map(reqwest::Url::as_str),
            Ok("http://g/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse")
        );
        assert!(Arc::ptr_eq(
            &stream,
            &prepare(&g, Endpoint::GeminiStream, true).expect("again")
        ));
        let whole = prepare(&g, Endpoint::GeminiStream, false).expect("not streamed");
        assert!(!Arc::ptr_eq(&stream, &whole));
        assert_eq!(
            whole.url.as_ref().map(reqwest::Url::as_str),
            Ok("http://g/v1beta/models/gemini-2.5-flash:streamGenerateContent")
        );
        assert!(prepare(&g, Endpoint::ChatCompletions, false).is_none());
        // A URL that does not parse is kept as text: reqwest refuses it when sent.
        let bad = model(ProviderFamily::Openai, "http://[bad/v1", None);
        let call = prepare(&bad, Endpoint::ChatCompletions, false).expect("built");
        assert_eq!(call.url, Err("http://[bad/v1/chat/completions".to_string()));
        assert!(call.uri.is_none(), "nothing to send on the direct path");
        let good = prepare(&g, Endpoint::GeminiStream, true).expect("gemini");
        assert_eq!(
            good.uri.as_ref().map(ToString::to_string).as_deref(),
            Some("http://g/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse")
        );
    }

    #[test]
    fn the_credential_header_is_made_once_and_never_printed() {
        let with_key = |family, key: &str| {
            let mut m = model(family, "https://p.example/v1", Some("2024-10-21"));
            let provider = Arc::get_mut(&mut m.provider).expect("own provider");
            provider.credential = Credential::Present(crate::policy::Secret::new(key.into()));
            m
        };
        let openai = with_key(ProviderFamily::Openai, "sk-live-123");
        let call = prepare(&openai, Endpoint::ChatCompletions, false).expect("openai");
        let (name, value) = call.credential.clone().expect("valid").expect("present");
        assert_eq!(name, header::AUTHORIZATION);
        assert_eq!(value, "Bearer sk-live-123");
        assert!(value.is_sensitive());
        assert!(!format!("{call:?}").contains("sk-live-123"));

        let azure = with_key(ProviderFamily::Azure, "az-key");
        let call = prepare(&azure, Endpoint::ChatCompletions, false).expect("azure");
        let (name, value) = call.credential.clone().expect("valid").expect("present");
        assert_eq!(
            (name.as_str(), value.to_str().ok()),
            ("api-key", Some("az-key"))
        );

        let none = model(ProviderFamily::Openai, "http://v/v1", None);
        let call = prepare(&none, Endpoint::ChatCompletions, false).expect("no key");
        assert_eq!(call.credential, Ok(None));

        let broken = with_key(ProviderFamily::Openai, "sk-line\nbreak");
        let call = prepare(&broken, Endpoint::ChatCompletions, false).expect("built");
        assert_eq!(call.credential, Err(InvalidCredential));
    }
}
