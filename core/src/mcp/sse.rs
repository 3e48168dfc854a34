//! The legacy HTTP+SSE transport (2024-11-05): `GET` opens the upstream stream, whose first
//! `endpoint` event names the URL for POSTs. The gateway rewrites that event to point back
//! through itself (`/v1/mcp/{slug}/<upstream path>?<upstream query>`), never at the upstream,
//! and maps POSTs on that path to the same path on the upstream's origin.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc::UnboundedSender;

use super::http::{EventRewrite, event_data, event_name, replace_data, tool_filter};
use super::server::ToolRules;

/// The open legacy SSE streams of this replica, by (key id, gateway endpoint), so an answer the
/// gateway makes itself (a refused tool call) reaches the client on its stream: a legacy client
/// reads answers only there.
#[derive(Debug, Default)]
pub struct Streams {
    open: Mutex<HashMap<String, UnboundedSender<Bytes>>>,
}

impl Streams {
    fn id(key_id: &str, endpoint: &str) -> String {
        format!("{key_id}\u{0}{endpoint}")
    }

    /// Registers the stream whose `endpoint` event named `endpoint`.
    pub fn register(&self, key_id: &str, endpoint: &str, tx: UnboundedSender<Bytes>) {
        if let Ok(mut open) = self.open.lock() {
            open.insert(Self::id(key_id, endpoint), tx);
        }
    }

    /// Forgets a stream that ended.
    pub fn remove(&self, key_id: &str, endpoint: &str) {
        if let Ok(mut open) = self.open.lock() {
            open.remove(&Self::id(key_id, endpoint));
        }
    }

    /// Sends `message` as an SSE `message` event on the stream of `endpoint`; false if none.
    pub fn send(&self, key_id: &str, endpoint: &str, message: &serde_json::Value) -> bool {
        let event = Bytes::from(format!("event: message\ndata: {message}\n\n"));
        self.open
            .lock()
            .ok()
            .and_then(|open| open.get(&Self::id(key_id, endpoint)).cloned())
            .is_some_and(|tx| tx.send(event).is_ok())
    }
}

/// The gateway endpoint a legacy client POSTs to, as the `endpoint` event named it.
pub fn post_endpoint(slug: &str, path: Option<&str>, query: Option<&str>) -> String {
    let mut out = format!("/v1/mcp/{slug}/{}", path.unwrap_or_default());
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// Called with the gateway endpoint once the `endpoint` event is rewritten.
pub type OnEndpoint = Arc<dyn Fn(&str) + Send + Sync>;

/// The upstream origin (`scheme://host:port`) of `url`.
fn origin(url: &reqwest::Url) -> String {
    let mut origin = format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default());
    if let Some(port) = url.port() {
        origin.push_str(&format!(":{port}"));
    }
    origin
}

/// Where the gateway sends a POST made on `/v1/mcp/{slug}/{path}` of an SSE server.
pub fn message_url(sse_url: &str, path: Option<&str>, query: Option<&str>) -> Option<String> {
    let base = reqwest::Url::parse(sse_url).ok()?;
    Some(super::http::upstream_url(&origin(&base), path, query))
}

/// The gateway URL (path and query) for an upstream `endpoint` event's data, if it stays on the
/// upstream's origin (an endpoint elsewhere is refused: the gateway would not govern it).
pub fn gateway_endpoint(sse_url: &str, slug: &str, data: &str) -> Option<String> {
    let base = reqwest::Url::parse(sse_url).ok()?;
    let target = base.join(data.trim()).ok()?;
    if origin(&target) != origin(&base) {
        return None;
    }
    let mut out = format!("/v1/mcp/{slug}{}", target.path());
    if let Some(q) = target.query() {
        out.push('?');
        out.push_str(q);
    }
    Some(out)
}

/// Rewrites the `endpoint` event and filters advertised tools in `message` events.
pub fn stream_rewrite(
    sse_url: String,
    slug: String,
    rules: Option<ToolRules>,
    on_endpoint: Option<OnEndpoint>,
) -> EventRewrite {
    let filter = rules.map(tool_filter);
    Box::new(move |event: &str| {
        if event_name(event) == Some("endpoint") {
            let data = event_data(event)?;
            let rewritten = gateway_endpoint(&sse_url, &slug, &data)
                .unwrap_or_else(|| format!("/v1/mcp/{slug}/invalid-upstream-endpoint"));
            if let Some(f) = &on_endpoint {
                f(&rewritten);
            }
            return Some(replace_data(event, &rewritten));
        }
        filter.as_ref().and_then(|f| f(event))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_event_points_back_through_the_gateway() {
        let rewrite = stream_rewrite(
            "http://127.0.0.1:3001/sse".into(),
            "legacy".into(),
            None,
            None,
        );
        let out = rewrite("event: endpoint\ndata: /message?sessionId=abc-123").expect("rewritten");
        assert_eq!(
            out,
            "event: endpoint\ndata: /v1/mcp/legacy/message?sessionId=abc-123"
        );
        assert_eq!(
            gateway_endpoint("http://127.0.0.1:3001/sse", "x", "http://evil.example/m"),
            None
        );
        assert_eq!(
            post_endpoint("legacy", Some("message"), Some("sessionId=abc-123")),
            "/v1/mcp/legacy/message?sessionId=abc-123"
        );
        assert_eq!(
            message_url(
                "http://127.0.0.1:3001/sse",
                Some("message"),
                Some("sessionId=abc")
            )
            .as_deref(),
            Some("http://127.0.0.1:3001/message?sessionId=abc")
        );
    }
}
