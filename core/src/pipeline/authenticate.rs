//! Stage 1, authenticate: find the virtual key in the request and check its state.

use std::sync::Arc;

use axum::http::{HeaderMap, header};

use super::Flow;
use crate::clock::now_ms;
use crate::error::{AuthError, GatewayError, UnavailableError};
use crate::state::AppState;
use crate::store::KeyRecord;
use crate::store::keys::{KeyState, looks_like_secret};

/// Where a presented key came from (the accepted forms, in precedence order).
pub fn presented_key<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<&'a str> {
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let value = value.trim();
        let token = value
            .get(..7)
            .filter(|scheme| scheme.eq_ignore_ascii_case("bearer "))
            .map(|_| value[7..].trim());
        // A non-bearer Authorization header is presented, just malformed.
        return Some(token.unwrap_or(""));
    }
    for name in ["x-api-key", "x-goog-api-key"] {
        if let Some(value) = headers.get(name).and_then(|v| v.to_str().ok()) {
            return Some(value.trim());
        }
    }
    query?.split('&').find_map(|pair| pair.strip_prefix("key="))
}

/// Authenticates the request.
pub async fn run(app: &AppState, headers: &HeaderMap, query: Option<&str>) -> Flow<Arc<KeyRecord>> {
    let Some(secret) = presented_key(headers, query) else {
        return Flow::Respond(AuthError::Missing.into());
    };
    if !looks_like_secret(secret) {
        return Flow::Respond(AuthError::Unknown.into());
    }
    let key = match app.keys.lookup(secret).await {
        Ok(Some(key)) => key,
        Ok(None) => return Flow::Respond(AuthError::Unknown.into()),
        Err(e) => {
            return Flow::Respond(GatewayError::Unavailable(UnavailableError {
                code: "auth_unavailable",
                what: "the key store",
                detail: e.to_string(),
            }));
        }
    };
    match key.state(now_ms()) {
        KeyState::Active => Flow::Continue(key),
        KeyState::Expired => Flow::Respond(AuthError::Expired.into()),
        KeyState::Revoked => Flow::Respond(AuthError::Revoked.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn every_accepted_form_is_found() {
        assert_eq!(
            presented_key(&headers(&[("authorization", "Bearer tg_a")]), None),
            Some("tg_a")
        );
        assert_eq!(
            presented_key(&headers(&[("authorization", "bearer  tg_a ")]), None),
            Some("tg_a")
        );
        assert_eq!(
            presented_key(&headers(&[("x-api-key", "tg_b")]), None),
            Some("tg_b")
        );
        assert_eq!(
            presented_key(&headers(&[("x-goog-api-key", "tg_c")]), None),
            Some("tg_c")
        );
        assert_eq!(
            presented_key(&HeaderMap::new(), Some("alt=sse&key=tg_d")),
            Some("tg_d")
        );
        assert_eq!(presented_key(&HeaderMap::new(), Some("alt=sse")), None);
    }

    #[test]
    fn a_non_bearer_authorization_header_is_presented_but_empty() {
        assert_eq!(
            presented_key(&headers(&[("authorization", "Basic abc")]), None),
            Some("")
        );
    }
}
