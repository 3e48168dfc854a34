//! Provider adapters: translate between the OpenAI shape and a provider's native API.
//!
//! The gateway loads manifests with `world = "provider-adapter"` and calls the adapter for every
//! request to a provider declared with `family = "adapter"` and `adapter = "<manifest stem>"`:
//! [`ProviderAdapter::transform_request`] turns the OpenAI chat body into the native request
//! (its `path` is appended to the provider's `base_url`), the gateway makes the HTTP call and
//! injects the credential (the adapter never sees it), then
//! [`ProviderAdapter::transform_response`] (whole answers) or
//! [`ProviderAdapter::transform_stream_event`] (each native SSE event, or each line of an NDJSON
//! stream) turns the answer back into OpenAI chat. An adapter has no network, filesystem or
//! environment. An [`AdapterError`] is a 502 `adapter_error`; a trap a 502 `adapter_failed`, and
//! the instance is discarded. Instances are pooled: keep no state between calls.

/// An HTTP request or answer as an adapter sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpMessage {
    /// Status for answers; 0 for requests.
    pub status: u16,
    /// Path appended to the provider base URL (requests), or empty.
    pub path: String,
    /// Headers (lower-case names).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

/// One server-sent event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field.
    pub event: Option<String>,
    /// The `data:` field.
    pub data: String,
}

/// Normalized token usage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens, cached ones included.
    pub input_tokens: u64,
    /// Completion tokens, reasoning included.
    pub output_tokens: u64,
    /// Prompt tokens served from the provider's cache.
    pub cached_input_tokens: u64,
    /// Reasoning tokens.
    pub reasoning_tokens: u64,
}

/// Why an adapter could not translate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterError {
    /// A stable machine code.
    pub code: String,
    /// What went wrong.
    pub message: String,
}

/// A provider adapter. Export it with [`export!`](crate::export)`(adapter: MyAdapter)`, with the
/// crate's `adapter` feature instead of the default `guardrail` one (a component implements one
/// world).
pub trait ProviderAdapter: Sized + 'static {
    /// Builds the adapter from its manifest configuration.
    fn new(config: &crate::Config) -> Result<Self, String>;

    /// An OpenAI-shaped request to the provider's native request.
    fn transform_request(&mut self, request: HttpMessage) -> Result<HttpMessage, AdapterError>;

    /// A native answer to the OpenAI shape.
    fn transform_response(&mut self, response: HttpMessage) -> Result<HttpMessage, AdapterError>;

    /// One native stream event to zero or more OpenAI-shaped events.
    fn transform_stream_event(&mut self, event: SseEvent) -> Result<Vec<SseEvent>, AdapterError>;

    /// Usage from a native answer body or stream event data.
    fn extract_usage(&mut self, body: &str) -> Option<Usage>;
}
