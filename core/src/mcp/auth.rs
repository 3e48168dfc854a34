//! The upstream credential of an MCP server: bearer, basic, or an OAuth2 client-credentials
//! token cached until shortly before it expires. Injected only after governance passed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderValue;

use super::server::{McpServer, UpstreamAuth};
use crate::error::McpError;

/// Cached OAuth2 access tokens by (server, token URL, client id).
#[derive(Debug, Default)]
pub struct TokenCache {
    tokens: Mutex<HashMap<String, (String, Instant)>>,
}

fn auth_error(server: &McpServer, detail: impl Into<String>) -> McpError {
    McpError::Auth {
        server: server.slug.clone(),
        detail: detail.into(),
    }
}

fn header(server: &McpServer, value: String) -> Result<HeaderValue, McpError> {
    let mut value = HeaderValue::from_str(&value)
        .map_err(|_| auth_error(server, "the credential is not a valid header value"))?;
    value.set_sensitive(true);
    Ok(value)
}

/// Minimal base64 (standard alphabet, padded) for HTTP Basic.
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

impl TokenCache {
    /// The `Authorization` value to send upstream, if the server has a credential.
    pub async fn authorization(
        &self,
        server: &McpServer,
        http: &reqwest::Client,
    ) -> Result<Option<HeaderValue>, McpError> {
        match &server.auth {
            UpstreamAuth::None => Ok(None),
            UpstreamAuth::Bearer(token) => {
                let token = token.as_ref().map_err(|e| auth_error(server, e.clone()))?;
                header(server, format!("Bearer {}", token.expose())).map(Some)
            }
            UpstreamAuth::Basic { username, password } => {
                let password = password
                    .as_ref()
                    .map_err(|e| auth_error(server, e.clone()))?;
                let raw = format!("{username}:{}", password.expose());
                header(server, format!("Basic {}", base64(raw.as_bytes()))).map(Some)
            }
            UpstreamAuth::OAuth2 {
                token_url,
                client_id,
                client_secret,
                scope,
                audience,
            } => {
                let cache_key = format!("{}\u{0}{token_url}\u{0}{client_id}", server.slug);
                if let Ok(tokens) = self.tokens.lock()
                    && let Some((token, until)) = tokens.get(&cache_key)
                    && Instant::now() < *until
                {
                    return header(server, format!("Bearer {token}")).map(Some);
                }
                let secret = client_secret
                    .as_ref()
                    .map_err(|e| auth_error(server, e.clone()))?;
                let mut form = vec![
                    ("grant_type", "client_credentials".to_string()),
                    ("client_id", client_id.clone()),
                    ("client_secret", secret.expose().to_string()),
                ];
                if let Some(s) = scope {
                    form.push(("scope", s.clone()));
                }
                if let Some(a) = audience {
                    form.push(("audience", a.clone()));
                }
                let body = form
                    .iter()
                    .map(|(k, v)| format!("{k}={}", form_encode(v)))
                    .collect::<Vec<_>>()
                    .join("&");
                let response = http
                    .post(token_url)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .header("accept", "application/json")
                    .body(body)
                    .timeout(server.timeout)
                    .send()
                    .await
                    .map_err(|e| auth_error(server, format!("token endpoint unreachable: {e}")))?;
                let status = response.status();
                if !status.is_success() {
                    return Err(auth_error(
                        server,
                        format!("token endpoint answered {}", status.as_u16()),
                    ));
                }
                let value: serde_json::Value = response
                    .json()
                    .await
                    .map_err(|e| auth_error(server, format!("token answer is not JSON: {e}")))?;
                let Some(token) = value.get("access_token").and_then(|t| t.as_str()) else {
                    return Err(auth_error(server, "token answer has no access_token"));
                };
                let lifetime = value
                    .get("expires_in")
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(300);
                // Renew a little early so a token never expires on its way upstream.
                let until = Instant::now()
                    + Duration::from_secs(lifetime.saturating_sub(30).max(lifetime / 2));
                if let Ok(mut tokens) = self.tokens.lock() {
                    tokens.insert(cache_key, (token.to_string(), until));
                }
                header(server, format!("Bearer {token}")).map(Some)
            }
        }
    }
}

fn form_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected);
        }
        assert_eq!(form_encode("a b&c"), "a%20b%26c");
    }
}
