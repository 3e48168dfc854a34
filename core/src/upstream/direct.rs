//! The default path to providers: hyper-util's pooled client over rustls, without reqwest.
//!
//! reqwest runs on the same client (hyper-util's `legacy::Client` with hyper-rustls), but wraps
//! every call in layers the gateway does not use: its redirect layer parses the request URI
//! into a `Url` again on every call (host normalisation included) even with redirects off, its
//! system-proxy matcher looks the host up, and its request and response are re-boxed on the
//! way. A provider with default network settings (no proxy of its own) is called here instead;
//! providers with their own proxy or connect timeout keep their reqwest client
//! ([`super::proxy::NetSettings::client`]), and so do adapters and MCP servers. While the
//! environment names a proxy (`HTTPS_PROXY`...), every provider goes through reqwest, which
//! follows those variables.
//!
//! Each thread has its own client, built on first use: a pooled upstream connection is driven by
//! the runtime that opened it, so on a connection thread ([`crate::server::threads`]) a call and
//! its upstream connection stay on one thread.
//!
//! The settings match the reqwest client's ([`super::client_builder`]): the platform's
//! certificate verifier, HTTP/1.1 and HTTP/2 (by ALPN), `TCP_NODELAY`, the default connect
//! timeout, 90 s idle connections, 256 idle connections per host.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::timeouts;

/// A client of the direct path.
pub type Direct = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// TCP keep-alive probes on upstream connections (reqwest's default).
const TCP_KEEPALIVE: Duration = Duration::from_secs(15);

/// Builds a client of the direct path.
pub fn client() -> Result<Direct, String> {
    // Installing twice is harmless (the first provider wins).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut http = HttpConnector::new();
    // `https` URLs pass through to the TLS layer.
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(timeouts::DEFAULT_CONNECT));
    http.set_keepalive(Some(TCP_KEEPALIVE));
    let https = HttpsConnectorBuilder::new()
        .try_with_platform_verifier()
        .map_err(|e| format!("no TLS certificate verifier: {e}"))?
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .build(https))
}

/// The proxy variables of the environment that reqwest's client follows (`NO_PROXY` only
/// narrows them). While any is set, every provider call goes through reqwest, which applies
/// them as it always has.
const PROXY_VARIABLES: [&str; 6] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// Whether the environment names an outbound proxy ([`PROXY_VARIABLES`]).
pub fn proxy_in_environment() -> bool {
    PROXY_VARIABLES
        .iter()
        .any(|name| std::env::var_os(name).is_some_and(|value| !value.is_empty()))
}

thread_local! {
    /// This thread's client, built on first use; `None` when the environment names a proxy or
    /// the client could not be built (the calls then go through reqwest).
    static DIRECT: Option<Direct> = if proxy_in_environment() {
        None
    } else {
        match client() {
            Ok(client) => Some(client),
            Err(e) => {
                tracing::warn!(error = %e, "no direct upstream client; calls go through reqwest");
                None
            }
        }
    };
}

/// Whether this thread has a client (built now if it is the thread's first call).
pub(crate) fn available() -> bool {
    DIRECT.with(Option::is_some)
}

/// Sends `request` on this thread's client; `None` if it has none ([`available`]).
pub(crate) fn send(
    request: hyper::Request<Full<Bytes>>,
) -> Option<hyper_util::client::legacy::ResponseFuture> {
    DIRECT.with(|client| client.as_ref().map(|client| client.request(request)))
}

/// Whether a failed call timed out while connecting.
pub(crate) fn is_timeout(error: &hyper_util::client::legacy::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return true;
        }
        source = s.source();
    }
    false
}

/// An error and its causes, for the log (clients never see it).
pub(crate) fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    super::with_causes(error.to_string(), error.source())
}
