//! A test provider adapter that misbehaves on purpose, to prove the host survives it: requests
//! go to `/chat/completions` unchanged, and every answer or stream event traps (a panic).

use tollgate_plugin_sdk::{AdapterError, Config, HttpMessage, ProviderAdapter, SseEvent, Usage};

/// The adapter.
pub struct TrapAdapter;

impl ProviderAdapter for TrapAdapter {
    fn new(_config: &Config) -> Result<Self, String> {
        Ok(TrapAdapter)
    }

    fn transform_request(&mut self, request: HttpMessage) -> Result<HttpMessage, AdapterError> {
        Ok(HttpMessage {
            path: "/chat/completions".into(),
            ..request
        })
    }

    fn transform_response(&mut self, _response: HttpMessage) -> Result<HttpMessage, AdapterError> {
        panic!("trap-adapter: trapping on purpose");
    }

    fn transform_stream_event(&mut self, _event: SseEvent) -> Result<Vec<SseEvent>, AdapterError> {
        panic!("trap-adapter: trapping on purpose");
    }

    fn extract_usage(&mut self, _body: &str) -> Option<Usage> {
        None
    }
}

tollgate_plugin_sdk::export!(adapter: TrapAdapter);
