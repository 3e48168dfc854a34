//! The dashboard: a single-page app served at `/ui`, its assets embedded in the binary.
//!
//! The app is hand-written JavaScript modules and CSS in `core/ui/` (no build step, no CDN, no
//! external fetch). It signs in with an admin token and reads and changes everything through
//! the admin API under `/admin/v1`. Every answer here carries a strict Content-Security-Policy
//! (scripts and styles from this origin only, no inline script), `X-Frame-Options: DENY` and
//! `nosniff`; assets are revalidated by ETag so a new binary is picked up at once.

use std::sync::OnceLock;

use axum::Router;
use axum::extract::{Path, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

/// The Content-Security-Policy of every `/ui` answer: nothing from other origins, no inline
/// script or style, no framing, API calls to this origin only.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; \
     manifest-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_bytes!(concat!("../../ui/", $name)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file of the app, by its path under `/ui/`.
const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("charts.js", JS),
    asset!("pages/overview.js", JS),
    asset!("pages/budgets.js", JS),
    asset!("pages/keys.js", JS),
    asset!("pages/usage.js", JS),
    asset!("pages/policy.js", JS),
    asset!("pages/catalog.js", JS),
    asset!("pages/audit.js", JS),
    asset!("pages/people.js", JS),
];

/// The names of the embedded files (for tests and docs).
pub fn asset_names() -> impl Iterator<Item = &'static str> {
    ASSETS.iter().map(|a| a.name)
}

/// Strong ETags of the assets, computed once.
fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| format!("\"{}\"", hex::encode(&Sha256::digest(a.body)[..12])))
            .collect()
    })
}

/// The dashboard's routes: `/ui`, `/ui/` and `/ui/{path}`.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/ui", get(index))
        .route("/ui/", get(index))
        .route("/ui/{*path}", get(file))
}

/// Middleware: answers of the admin API (`/admin/...`) are never cached by a browser or proxy
/// (`Cache-Control: no-store`, unless the handler set its own), so keys, usage and the
/// dashboard's views of them are not left on disk.
pub async fn no_store_admin(request: Request, next: Next) -> Response {
    let admin = request.uri().path().starts_with("/admin/");
    let mut response = next.run(request).await;
    if admin && !response.headers().contains_key(header::CACHE_CONTROL) {
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

/// An embedded file; any other path without a file extension is a page of the app (its
/// router reads the location), so it gets `index.html`; an unknown file is a 404.
async fn file(Path(path): Path<String>, headers: HeaderMap) -> Response {
    let last = path.rsplit('/').next().unwrap_or_default();
    if ASSETS.iter().any(|a| a.name == path) {
        serve(&path, &headers)
    } else if !last.contains('.') {
        serve("index.html", &headers)
    } else {
        with_headers(
            (
                StatusCode::NOT_FOUND,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                format!("no dashboard file '/ui/{path}'\n"),
            )
                .into_response(),
        )
    }
}

fn serve(name: &str, headers: &HeaderMap) -> Response {
    let Some((index, asset)) = ASSETS.iter().enumerate().find(|(_, a)| a.name == name) else {
        return with_headers(StatusCode::NOT_FOUND.into_response());
    };
    let etag = &etags()[index];
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, asset.content_type)], asset.body).into_response()
    };
    if let Ok(value) = HeaderValue::from_str(etag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    with_headers(response)
}

/// The security and caching headers of every `/ui` answer.
fn with_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let set = |headers: &mut HeaderMap, name: header::HeaderName, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(
        headers,
        header::CONTENT_SECURITY_POLICY,
        CONTENT_SECURITY_POLICY,
    );
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::REFERRER_POLICY, "no-referrer");
    set(headers, header::CACHE_CONTROL, "no-cache");
    headers.insert(
        header::HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        header::HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("same-origin"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_an_asset_imports_is_embedded() {
        for asset in ASSETS.iter().filter(|a| a.name.ends_with(".js")) {
            let text = std::str::from_utf8(asset.body).expect("utf-8");
            let dir = asset.name.rsplit_once('/').map_or("", |(d, _)| d);
            for line in text.lines().filter(|l| l.starts_with("import ")) {
                let Some(spec) = line.split(['"', '\'']).nth(1) else {
                    continue;
                };
                let mut parts: Vec<&str> = if dir.is_empty() {
                    Vec::new()
                } else {
                    dir.split('/').collect()
                };
                for part in spec.split('/') {
                    match part {
                        "." => {}
                        ".." => {
                            parts.pop();
                        }
                        p => parts.push(p),
                    }
                }
                let target = parts.join("/");
                assert!(
                    ASSETS.iter().any(|a| a.name == target),
                    "{} imports {spec}, which is not embedded",
                    asset.name
                );
            }
        }
    }

    #[test]
    fn index_loads_only_embedded_files_from_this_origin() {
        let index = std::str::from_utf8(ASSETS[0].body).expect("utf-8");
        for attr in ["src=\"", "href=\""] {
            for piece in index.split(attr).skip(1) {
                let url = piece.split('"').next().unwrap_or_default();
                let name = url.strip_prefix("/ui/").unwrap_or_else(|| {
                    panic!("index.html refers to {url}, outside /ui/");
                });
                assert!(
                    ASSETS.iter().any(|a| a.name == name),
                    "{url} is not embedded"
                );
            }
        }
        assert!(!index.contains("<script>"), "no inline script");
        assert!(!index.contains("style="), "no inline style");
    }
}
