//! Outbound proxies and per-provider HTTP clients: a provider whose connect timeout or proxy
//! differs from the defaults gets its own pooled client; the proxy's password never appears in
//! a log, an error or a debug print.

use std::fmt;
use std::time::Duration;

/// A provider's network settings: what its HTTP client is built from.
#[derive(Clone, PartialEq, Eq)]
pub struct NetSettings {
    /// The proxy URL (may carry `user:password@`).
    proxy: Option<String>,
    /// Hosts reached directly.
    no_proxy: Option<String>,
    /// Connect timeout.
    pub connect: Duration,
}

impl fmt::Debug for NetSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetSettings")
            .field("proxy", &self.proxy_display())
            .field("no_proxy", &self.no_proxy)
            .field("connect", &self.connect)
            .finish()
    }
}

impl NetSettings {
    /// Checks a proxy URL (`http` or `https`, with a host); the error never repeats the URL,
    /// which may carry a password.
    pub fn check_proxy(url: &str) -> Result<(), String> {
        let parsed =
            reqwest::Url::parse(url.trim()).map_err(|e| format!("not a valid proxy URL ({e})"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!(
                "proxy scheme '{}' is not http or https",
                parsed.scheme()
            ));
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err("the proxy URL has no host".into());
        }
        reqwest::Proxy::all(url.trim())
            .map(|_| ())
            .map_err(|_| "the proxy URL is not usable".into())
    }

    /// Settings of a provider: `proxy` and `no_proxy` already resolved against `[upstream]`.
    pub fn new(proxy: Option<String>, no_proxy: Option<String>, connect: Duration) -> Self {
        NetSettings {
            proxy: proxy
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty()),
            no_proxy: no_proxy
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty()),
            connect,
        }
    }

    /// Whether the shared default client serves these settings.
    pub fn is_default(&self) -> bool {
        self.proxy.is_none() && self.connect == super::timeouts::DEFAULT_CONNECT
    }

    /// The proxy URL without its password, for display.
    pub fn proxy_display(&self) -> Option<String> {
        let proxy = self.proxy.as_deref()?;
        Some(match reqwest::Url::parse(proxy) {
            Ok(mut url) => {
                if url.password().is_some() {
                    let _ = url.set_password(Some("***"));
                }
                url.to_string()
            }
            Err(_) => "(invalid)".into(),
        })
    }

    /// Builds the client for these settings.
    pub fn client(&self) -> Result<reqwest::Client, String> {
        let mut builder = super::client_builder().connect_timeout(self.connect);
        if let Some(url) = &self.proxy {
            let proxy = reqwest::Proxy::all(url.as_str())
                .map_err(|_| "the proxy URL is not usable".to_string())?
                .no_proxy(
                    self.no_proxy
                        .as_deref()
                        .and_then(reqwest::NoProxy::from_string),
                );
            builder = builder.proxy(proxy);
        }
        // Without `e.to_string()`: a builder error may quote the proxy URL.
        builder
            .build()
            .map_err(|_| "cannot build the HTTP client for these settings".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_password_never_shows() {
        let net = NetSettings::new(
            Some("http://alice:s3cret-pw@proxy.internal:3128".into()),
            Some("localhost".into()),
            Duration::from_secs(3),
        );
        let debug = format!("{net:?}");
        assert!(!debug.contains("s3cret-pw"), "{debug}");
        assert!(debug.contains("alice:***@proxy.internal:3128"), "{debug}");
        assert!(net.client().is_ok());
        assert!(!net.is_default());
    }

    #[test]
    fn bad_proxy_urls_are_refused_without_repeating_them() {
        for bad in ["socks9://u:pw-in-url@h:1", "not a url pw-in-url", "http://"] {
            let error = NetSettings::check_proxy(bad).expect_err(bad);
            assert!(!error.contains("pw-in-url"), "{error}");
        }
        assert!(NetSettings::check_proxy("http://127.0.0.1:3128").is_ok());
    }
}
