//! Talking to providers: the HTTP client, each family's URL and auth ([`target`]), the
//! built-in demo responder and the SSE usage tap.
//!
//! Every provider answers with an [`UpstreamReply`]: a status, the headers the relay needs and a
//! body stream, so JSON and SSE relaying, usage extraction and recording are the same code for
//! every provider family.

pub mod adapter;
pub mod demo;
mod demo_native;
pub mod direct;
pub mod gemini_array;
pub mod proxy;
pub mod retry;
pub mod sse;
pub mod target;
pub mod timeouts;

use std::pin::Pin;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use crate::error::UpstreamError;
use crate::family::Endpoint;
use crate::policy::{Model, Provider};

/// A provider's body, chunk by chunk.
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send>>;

/// A provider's answer, before relaying.
pub struct UpstreamReply {
    /// HTTP status.
    pub status: StatusCode,
    /// `content-type`, relayed to the client.
    pub content_type: Option<HeaderValue>,
    /// The provider's own request id (`x-request-id`, or Anthropic's `request-id`).
    pub provider_request_id: Option<String>,
    /// The provider's `Retry-After` (kept toward the client on a relayed 429 / 503 and on
    /// the provider's errors).
    pub retry_after: Option<HeaderValue>,
    /// The body.
    pub body: BodyStream,
}

impl UpstreamReply {
    /// Whether the body is a server-sent event stream.
    pub fn is_event_stream(&self) -> bool {
        self.content_type
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("text/event-stream"))
    }
}

/// Builds the shared upstream HTTP client (rustls with the ring provider, pooled connections).
pub fn client() -> Result<reqwest::Client, reqwest::Error> {
    client_builder()
        .connect_timeout(timeouts::DEFAULT_CONNECT)
        .build()
}

thread_local! {
    /// Whether this thread has its own upstream client ([`use_thread_client`]).
    static OWN_CLIENT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// That client, built on the thread's first call through reqwest; `None` if it could not
    /// be built.
    static THREAD_CLIENT: std::cell::OnceCell<Option<reqwest::Client>> = const { std::cell::OnceCell::new() };
}

/// Gives the calling thread its own upstream client, built like [`client`] on the thread's
/// first call through reqwest (most calls go through [`direct`], which has a client per thread
/// of its own), which calls from this thread use instead of the shared one (a provider with its
/// own network settings keeps its client). A pooled upstream connection is driven by the
/// runtime that opened it: on a connection thread ([`crate::server::threads`]) the thread's own
/// pool keeps a call and its upstream connection on one thread. Without it a call could reuse a
/// connection opened by another thread, and each of its reads and writes would wake that thread.
pub fn use_thread_client() {
    OWN_CLIENT.with(|own| own.set(true));
}

/// The client for a call from this thread: its own ([`use_thread_client`]) or `shared`.
pub(crate) fn thread_client(shared: &reqwest::Client) -> reqwest::Client {
    if !OWN_CLIENT.with(std::cell::Cell::get) {
        return shared.clone();
    }
    THREAD_CLIENT
        .with(|c| {
            c.get_or_init(|| match client() {
                Ok(own) => Some(own),
                Err(e) => {
                    tracing::warn!(error = %e, "no thread upstream client; using the shared one");
                    None
                }
            })
            .clone()
        })
        .unwrap_or_else(|| shared.clone())
}

/// The settings every upstream client shares; [`proxy::NetSettings`] adds a provider's own.
pub(crate) fn client_builder() -> reqwest::ClientBuilder {
    // Installing twice is harmless (the first provider wins).
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
}

/// One call to a provider.
pub struct Outbound<'a> {
    /// The endpoint whose shape the body has (the upstream family's, when translated).
    pub endpoint: Endpoint,
    /// The body, with the upstream model id.
    pub body: Bytes,
    /// Stream the answer.
    pub stream: bool,
    /// Client headers the family forwards (`anthropic-version`, `anthropic-beta`).
    pub forward: &'a [(&'static str, HeaderValue)],
}

/// Sends `out` to the model's provider and waits for the response headers.
///
/// Only `content-type`, `accept`, the provider credential and the family's own protocol
/// headers are sent: nothing else the client sent (its virtual key above all) reaches the
/// provider.
pub async fn send(
    http: &reqwest::Client,
    model: &Model,
    out: Outbound<'_>,
) -> Result<UpstreamReply, UpstreamError> {
    let provider = &model.provider;
    let Outbound {
        endpoint,
        body,
        stream,
        forward,
    } = out;
    let call =
        target::prepare(model, endpoint, stream).ok_or_else(|| UpstreamError::BadResponse {
            provider: provider.name.clone(),
            detail: format!(
                "a '{}' provider cannot serve {}",
                provider.family.as_str(),
                endpoint.path()
            ),
        })?;
    let credential = call
        .credential
        .as_ref()
        .map_err(|_| UpstreamError::Unreachable {
            provider: provider.name.clone(),
            detail: "the provider credential is not a valid header value".into(),
        })?;
    let mut headers = HeaderMap::with_capacity(8);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::ACCEPT,
        HeaderValue::from_static(if stream {
            "text/event-stream"
        } else {
            "application/json"
        }),
    );
    for (name, value) in forward {
        headers.append(*name, value.clone());
    }
    // The client's own protocol version wins over the provider's default.
    for (name, value) in &call.headers {
        if !forward.iter().any(|(n, _)| n == name) {
            headers.append(*name, value.clone());
        }
    }
    // W3C trace context of the current attempt's span (nothing when traces are off).
    headers.extend(crate::telemetry::outbound_headers());
    if let Some((name, value)) = credential {
        headers.insert(name.clone(), value.clone());
    }
    if provider.client.is_none()
        && let Some(uri) = &call.uri
        && direct::available()
    {
        headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
        let mut request = hyper::Request::new(http_body_util::Full::new(body));
        *request.method_mut() = hyper::Method::POST;
        *request.uri_mut() = uri.clone();
        *request.headers_mut() = headers;
        return match direct::send(request) {
            Some(pending) => await_direct(provider, pending, Instant::now()).await,
            None => Err(UpstreamError::Unreachable {
                provider: provider.name.clone(),
                detail: "no direct upstream client on this thread".into(),
            }),
        };
    }
    // A provider with its own network settings, or a URL only reqwest's parser takes.
    let own;
    let client = match provider.client.as_ref() {
        Some(client) => client,
        None => {
            own = thread_client(http);
            &own
        }
    };
    let request = match &call.url {
        Ok(url) => client.post(url.clone()),
        // reqwest refuses it at `send`, with its own error.
        Err(text) => client.post(text.as_str()),
    };
    let response = await_headers(
        provider,
        request.headers(headers).body(body),
        Instant::now(),
    )
    .await?;
    let status = response.status();
    let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
    let retry_after = response.headers().get(header::RETRY_AFTER).cloned();
    let provider_request_id = request_id(response.headers());
    let body = response.bytes_stream().map(|r| r.map_err(|e| describe(&e)));
    Ok(UpstreamReply {
        status,
        content_type,
        provider_request_id,
        retry_after,
        body: Box::pin(body),
    })
}

/// The `user-agent` of every provider call.
const USER_AGENT: &str = concat!("tollgate/", env!("CARGO_PKG_VERSION"));

/// The provider's own request id (`x-request-id`, or Anthropic's `request-id`).
fn request_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-request-id")
        .or_else(|| headers.get("request-id"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Waits for a direct call's response headers within the provider's first-byte time (and
/// what is left of its total time), like [`await_headers`].
async fn await_direct(
    provider: &Provider,
    pending: hyper_util::client::legacy::ResponseFuture,
    sent: Instant,
) -> Result<UpstreamReply, UpstreamError> {
    use http_body_util::BodyExt as _;
    let wait = provider.timeouts.headers_left(sent);
    let timeout = || UpstreamError::Timeout {
        provider: provider.name.clone(),
        timeout_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
    };
    let response = match tokio::time::timeout(wait, pending).await {
        Err(_) => return Err(timeout()),
        Ok(Err(e)) if direct::is_timeout(&e) => return Err(timeout()),
        Ok(Err(e)) => {
            return Err(UpstreamError::Unreachable {
                provider: provider.name.clone(),
                detail: direct::describe(&e),
            });
        }
        Ok(Ok(response)) => response,
    };
    let (parts, body) = response.into_parts();
    let body = body
        .into_data_stream()
        .map(|r| r.map_err(|e| direct::describe(&e)));
    Ok(UpstreamReply {
        status: parts.status,
        content_type: parts.headers.get(header::CONTENT_TYPE).cloned(),
        provider_request_id: request_id(&parts.headers),
        retry_after: parts.headers.get(header::RETRY_AFTER).cloned(),
        body: Box::pin(body),
    })
}

/// Sends `request` and waits for the response headers within the provider's first-byte time
/// (and what is left of its total time).
pub(crate) async fn await_headers(
    provider: &Provider,
    request: reqwest::RequestBuilder,
    sent: Instant,
) -> Result<reqwest::Response, UpstreamError> {
    let timeouts = &provider.timeouts;
    let wait = timeouts.headers_left(sent);
    let timeout = || UpstreamError::Timeout {
        provider: provider.name.clone(),
        timeout_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
    };
    match tokio::time::timeout(wait, request.send()).await {
        Err(_) => Err(timeout()),
        Ok(Err(e)) if e.is_timeout() => Err(timeout()),
        Ok(Err(e)) => Err(UpstreamError::Unreachable {
            provider: provider.name.clone(),
            detail: describe(&e),
        }),
        Ok(Ok(response)) => Ok(response),
    }
}

/// An error description for the log (clients never see it), without the URL's query nor any
/// password in it (either could carry secrets).
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url()
        && url.query().is_some()
    {
        let mut bare = url.clone();
        bare.set_query(None);
        text = text.replace(url.as_str(), bare.as_str());
    }
    with_causes(text, std::error::Error::source(e))
}

/// `text` followed by each cause in `source`'s chain, URLs' passwords redacted.
pub(crate) fn with_causes(
    mut text: String,
    mut source: Option<&(dyn std::error::Error + 'static)>,
) -> String {
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    crate::store::redact::redact_urls(&text)
}
