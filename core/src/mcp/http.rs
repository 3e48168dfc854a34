//! HTTP relay pieces shared by the Streamable HTTP and SSE transports: which headers cross the
//! gateway in each direction, the upstream URL, and a response body relay that counts bytes,
//! rewrites SSE events (tool filtering, the legacy `endpoint` event) and reports how it ended.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName};
use bytes::{Bytes, BytesMut};
use futures_util::Stream;

use super::jsonrpc::filter_tools;
use super::server::ToolRules;

/// Request headers never forwarded upstream: the caller's credentials, `Host`, the framing the
/// gateway redoes, hop-by-hop headers, compression (the gateway reads the answers), and the
/// caller's trace context (the gateway sends its own span's, as on the model path).
const NOT_FORWARDED: [&str; 18] = [
    "traceparent",
    "tracestate",
    "authorization",
    "x-api-key",
    "x-goog-api-key",
    "proxy-authorization",
    "cookie",
    "host",
    "content-length",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "accept-encoding",
    "mcp-session-id",
    "x-request-id",
];

/// Response headers never relayed back: framing and hop-by-hop (the session id is rewritten).
const NOT_RELAYED: [&str; 8] = [
    "content-length",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "mcp-session-id",
];

/// The caller's headers that go upstream (`Mcp-Session-Id` is set separately: it is translated).
pub fn upstream_headers(inbound: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in inbound {
        if !NOT_FORWARDED.contains(&name.as_str()) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// The upstream's headers that go back to the caller.
pub fn relayed_headers(upstream: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in upstream {
        if !NOT_RELAYED.contains(&name.as_str()) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// The header name of MCP sessions.
pub fn session_header() -> HeaderName {
    HeaderName::from_static("mcp-session-id")
}

/// `base` with the extra `path` appended and the caller's `query` (minus a `key=` credential).
pub fn upstream_url(base: &str, path: Option<&str>, query: Option<&str>) -> String {
    let mut url = base.to_string();
    if let Some(path) = path.filter(|p| !p.is_empty()) {
        if !url.ends_with('/') {
            url.push('/');
        }
        url.push_str(path.trim_start_matches('/'));
    }
    let query: Vec<&str> = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter(|pair| !pair.is_empty() && !pair.starts_with("key="))
        .collect();
    if !query.is_empty() {
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str(&query.join("&"));
    }
    url
}

/// Rewrites one SSE event (its text without the blank line that ends it); `None` keeps it.
pub type EventRewrite = Box<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// The rewrite that removes tools that may not be called from `tools/list` results.
pub fn tool_filter(rules: ToolRules) -> EventRewrite {
    Box::new(move |event: &str| {
        let data = event_data(event)?;
        let mut value: serde_json::Value = serde_json::from_str(&data).ok()?;
        if !filter_tools(&mut value, &rules) {
            return None;
        }
        Some(replace_data(event, &value.to_string()))
    })
}

/// The joined `data:` lines of an event.
pub fn event_data(event: &str) -> Option<String> {
    let lines: Vec<&str> = event
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.strip_prefix(' ').unwrap_or(d))
        .collect();
    (!lines.is_empty()).then(|| lines.join("\n"))
}

/// The `event:` name of an event.
pub fn event_name(event: &str) -> Option<&str> {
    event
        .lines()
        .find_map(|l| l.strip_prefix("event:"))
        .map(str::trim)
}

/// `event` with its data replaced by `data` (other fields kept in order).
pub fn replace_data(event: &str, data: &str) -> String {
    let mut out = Vec::new();
    let mut written = false;
    for line in event.lines() {
        if line.starts_with("data:") {
            if !written {
                for d in data.lines() {
                    out.push(format!("data: {d}"));
                }
                written = true;
            }
        } else {
            out.push(line.to_string());
        }
    }
    out.join("\n")
}

/// How a relayed body ended: bytes sent and, if it did not complete, why.
pub type OnEnd = Box<dyn FnOnce(i64, Option<&'static str>) + Send>;

/// A relayed upstream body.
pub struct Relay<S> {
    upstream: S,
    inject: Option<tokio::sync::mpsc::UnboundedReceiver<Bytes>>,
    rewrite: Option<EventRewrite>,
    buffer: BytesMut,
    /// The largest event held while rewriting (the policy's `max_response_bytes`): a stream
    /// with a longer one ends with an error instead of buffering without bound.
    max_event_bytes: usize,
    bytes_out: i64,
    on_end: Option<OnEnd>,
    done: bool,
    /// Resolves when the gateway's shutdown grace period is over: the stream ends cleanly.
    ending: Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
}

impl<S> Relay<S> {
    fn end(&mut self, reason: Option<&'static str>) {
        if let Some(on_end) = self.on_end.take() {
            on_end(self.bytes_out, reason);
        }
    }

    /// Complete events in the buffer, rewritten.
    fn drain_events(&mut self, rewrite: &EventRewrite, flush: bool) -> Bytes {
        let mut out = BytesMut::new();
        loop {
            let text = &self.buffer[..];
            let boundary = find_boundary(text);
            let Some((end, sep_len)) = boundary else {
                break;
            };
            let event = self.buffer.split_to(end + sep_len);
            let body = String::from_utf8_lossy(&event[..end]).into_owned();
            match rewrite(&body) {
                Some(new) => {
                    out.extend_from_slice(new.as_bytes());
                    out.extend_from_slice(b"\n\n");
                }
                None => out.extend_from_slice(&event),
            }
        }
        if flush && !self.buffer.is_empty() {
            out.extend_from_slice(&self.buffer.split());
        }
        out.freeze()
    }
}

/// The end of the first event (index, separator length), for `\n\n`, `\r\n\r\n` and `\r\r`.
pub fn find_boundary(text: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i + 1 < text.len() {
        if text[i] == b'\n' && text[i + 1] == b'\n' {
            return Some((i, 2));
        }
        if i + 3 < text.len() && &text[i..i + 4] == b"\r\n\r\n" {
            return Some((i, 4));
        }
        if text[i] == b'\r' && text[i + 1] == b'\r' {
            return Some((i, 2));
        }
        i += 1;
    }
    None
}

impl<S> Drop for Relay<S> {
    fn drop(&mut self) {
        self.end(Some("client_disconnected"));
    }
}

impl<S> Stream for Relay<S>
where
    S: Stream<Item = Result<Bytes, reqwest::Error>> + Unpin,
{
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            // Gateway-made events (answers to refused POSTs of a legacy SSE session) go out
            // between upstream events: the relay only ever emits whole events when it rewrites.
            if let Some(inject) = this.inject.as_mut()
                && let Poll::Ready(Some(event)) = inject.poll_recv(cx)
            {
                this.bytes_out += i64::try_from(event.len()).unwrap_or(i64::MAX);
                return Poll::Ready(Some(Ok(event)));
            }
            match Pin::new(&mut this.upstream).poll_next(cx) {
                Poll::Pending => {
                    if this.ending.as_mut().poll(cx).is_ready() {
                        // Shutdown: the SSE stream ends (an MCP client reconnects elsewhere).
                        this.done = true;
                        this.end(Some("shutdown"));
                        return Poll::Ready(None);
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Some(Ok(chunk))) => {
                    let out = match this.rewrite.take() {
                        None => chunk,
                        Some(rewrite) => {
                            this.buffer.extend_from_slice(&chunk);
                            let out = this.drain_events(&rewrite, false);
                            this.rewrite = Some(rewrite);
                            if this.buffer.len() > this.max_event_bytes {
                                tracing::warn!(
                                    limit = this.max_event_bytes,
                                    "an SSE event of an MCP server exceeds max_response_bytes: the stream ends"
                                );
                                this.done = true;
                                this.end(Some("event_too_large"));
                                return Poll::Ready(Some(Err(std::io::Error::other(
                                    "an SSE event exceeds max_response_bytes",
                                ))));
                            }
                            out
                        }
                    };
                    if out.is_empty() {
                        continue;
                    }
                    this.bytes_out += i64::try_from(out.len()).unwrap_or(i64::MAX);
                    return Poll::Ready(Some(Ok(out)));
                }
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    this.end(Some("upstream_error"));
                    return Poll::Ready(Some(Err(std::io::Error::other(e.to_string()))));
                }
                Poll::Ready(None) => {
                    this.done = true;
                    let rest = match this.rewrite.take() {
                        Some(rewrite) => this.drain_events(&rewrite, true),
                        None => Bytes::new(),
                    };
                    this.bytes_out += i64::try_from(rest.len()).unwrap_or(i64::MAX);
                    this.end(None);
                    if rest.is_empty() {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Ok(rest)));
                }
            }
        }
    }
}

/// A body relaying `upstream`, rewriting SSE events with `rewrite` (an event longer than
/// `max_event_bytes` ends it with an error), adding the events sent to `inject`, calling
/// `on_end` once; it ends (reason `shutdown`) when `ending` resolves.
pub fn relay<S>(
    upstream: S,
    rewrite: Option<EventRewrite>,
    inject: Option<tokio::sync::mpsc::UnboundedReceiver<Bytes>>,
    on_end: OnEnd,
    ending: Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    max_event_bytes: usize,
) -> Body
where
    S: Stream<Item = Result<Bytes, reqwest::Error>> + Unpin + Send + 'static,
{
    Body::from_stream(Relay {
        upstream,
        inject,
        rewrite,
        buffer: BytesMut::new(),
        max_event_bytes,
        bytes_out: 0,
        on_end: Some(on_end),
        done: false,
        ending,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_rewritten_stream_never_buffers_an_event_past_the_limit() {
        use futures_util::StreamExt as _;
        // One event that never ends, in 1 KiB chunks, against a 4 KiB limit.
        let chunks = (0..64).map(|_| Ok::<_, reqwest::Error>(Bytes::from(vec![b'x'; 1024])));
        let upstream = futures_util::stream::iter(
            std::iter::once(Ok(Bytes::from_static(b"data: {}\n\n"))).chain(chunks),
        );
        let ended = std::sync::Arc::new(std::sync::Mutex::new(None));
        let seen = ended.clone();
        let mut relay = Relay {
            upstream,
            inject: None,
            rewrite: Some(Box::new(|e: &str| Some(e.to_string())) as EventRewrite),
            buffer: BytesMut::new(),
            max_event_bytes: 4096,
            bytes_out: 0,
            on_end: Some(Box::new(move |bytes, reason| {
                *seen.lock().unwrap() = Some((bytes, reason));
            })),
            done: false,
            ending: Box::pin(std::future::pending()),
        };
        let first = relay.next().await.unwrap().unwrap();
        assert_eq!(&first[..], b"data: {}\n\n");
        // The next poll reads chunks until the held event passes the limit, then fails.
        let error = match relay.next().await {
            Some(Ok(out)) => panic!("nothing complete to relay, got {out:?}"),
            Some(Err(e)) => e,
            None => panic!("the stream ended without an error"),
        };
        assert!(error.to_string().contains("max_response_bytes"));
        assert!(relay.buffer.len() <= 4096 + 1024, "{}", relay.buffer.len());
        assert!(relay.next().await.is_none());
        assert_eq!(*ended.lock().unwrap(), Some((10, Some("event_too_large"))));
    }

    #[test]
    fn caller_credentials_and_framing_never_go_upstream() {
        let mut inbound = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer tg_secret"),
            ("x-api-key", "tg_secret"),
            ("host", "gateway"),
            ("content-length", "12"),
            ("mcp-protocol-version", "2025-11-25"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "echo"),
            ("last-event-id", "7"),
            ("accept", "application/json, text/event-stream"),
        ] {
            inbound.insert(k, v.parse().expect("value"));
        }
        let out = upstream_headers(&inbound);
        let names: Vec<_> = out.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "mcp-protocol-version",
                "mcp-method",
                "mcp-name",
                "last-event-id",
                "accept"
            ]
        );
    }

    #[test]
    fn the_extra_path_and_query_are_appended_without_the_key() {
        assert_eq!(
            upstream_url("http://h/mcp", Some("a/b"), Some("key=tg_x&x=1")),
            "http://h/mcp/a/b?x=1"
        );
        assert_eq!(upstream_url("http://h/mcp", None, None), "http://h/mcp");
    }

    #[test]
    fn sse_events_are_rewritten_and_other_fields_kept() {
        let rules = ToolRules {
            allowed: vec![],
            blocked: vec!["get-env".into()],
            blocked_keywords: vec![],
        };
        let filter = tool_filter(rules);
        let event = "event: message\nid: 3\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"tools\":[{\"name\":\"echo\"},{\"name\":\"get-env\"}]}}";
        let out = filter(event).expect("rewritten");
        assert!(out.starts_with("event: message\nid: 3\ndata: "), "{out}");
        assert!(!out.contains("get-env"));
        assert_eq!(filter("event: message\ndata: {\"result\":{}}"), None);
        assert_eq!(find_boundary(b"data: x\r\n\r\nrest"), Some((7, 4)));
        assert_eq!(find_boundary(b"data: x\n"), None);
    }
}
