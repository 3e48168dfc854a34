//! The dashboard at `/ui`: its assets and security headers, the admin routes its code calls
//! against the served OpenAPI document, and the whole flow in a real headless chromium
//! (`tests/browser/dashboard.cjs`, driven by playwright-core).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::common::{ADMIN_TOKEN, Gateway, bin, http, mock, repo_root, skip, standard_policy};

/// The JavaScript modules of the app, found from `index.html` by following `src` and `import`.
async fn app_modules(gw: &Gateway) -> Vec<(String, String)> {
    let index = http()
        .get(gw.url("/ui/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut queue: Vec<String> = index
        .split("src=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .filter(|s| s.ends_with(".js"))
        .map(str::to_string)
        .collect();
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    while let Some(path) = queue.pop() {
        if !seen.insert(path.clone()) || seen.len() > 100 {
            continue;
        }
        let response = http().get(gw.url(&path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let text = response.text().await.unwrap();
        let dir = path.rsplit_once('/').map_or("", |(d, _)| d).to_string();
        for line in text.lines().filter(|l| l.starts_with("import ")) {
            let Some(spec) = line.split('"').nth(1) else {
                continue;
            };
            let mut parts: Vec<&str> = dir.split('/').collect();
            for part in spec.split('/') {
                match part {
                    "." => {}
                    ".." => {
                        parts.pop();
                    }
                    p => parts.push(p),
                }
            }
            queue.push(parts.join("/"));
        }
        out.push((path, text));
    }
    out
}

#[tokio::test]
async fn ui_serves_embedded_assets_with_a_strict_content_security_policy() {
    let upstream = mock(Default::default()).await;
    let gw = Gateway::start(&standard_policy(&upstream));
    for path in ["/ui", "/ui/", "/ui/keys"] {
        let response = http().get(gw.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers().clone();
        let csp = headers["content-security-policy"].to_str().unwrap();
        let script_src = csp
            .split(';')
            .map(str::trim)
            .find(|d| d.starts_with("script-src"))
            .expect("a script-src directive");
        assert_eq!(script_src, "script-src 'self'", "{csp}");
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
        assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"));
        assert_eq!(headers["x-frame-options"], "DENY");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        let body = response.text().await.unwrap();
        assert!(body.contains("<script type=\"module\" src=\"/ui/app.js\">"));
        assert!(!body.contains("<script>"), "no inline script");
    }

    let modules = app_modules(&gw).await;
    let names: Vec<&str> = modules.iter().map(|(p, _)| p.as_str()).collect();
    for expected in [
        "/ui/app.js",
        "/ui/api.js",
        "/ui/pages/keys.js",
        "/ui/pages/usage.js",
    ] {
        assert!(names.contains(&expected), "{expected} in {names:?}");
    }
    for (path, text) in &modules {
        // The SVG namespace is a name, not a fetch.
        let text = text.replace("http://www.w3.org/2000/svg", "");
        assert!(
            !text.contains("http://") && !text.contains("https://"),
            "{path} fetches nothing from another origin"
        );
        assert!(
            !text.contains("innerHTML"),
            "{path} builds no markup from strings"
        );
    }
    let js = http().get(gw.url("/ui/app.js")).send().await.unwrap();
    assert!(
        js.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    let etag = js.headers()["etag"].to_str().unwrap().to_string();
    let again = http()
        .get(gw.url("/ui/app.js"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304, "revalidation by ETag");
    let css = http().get(gw.url("/ui/style.css")).send().await.unwrap();
    assert!(
        css.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );
    // The admin API's answers (what the dashboard shows) are never stored by a cache.
    let whoami = http()
        .get(gw.url("/admin/v1/whoami"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(whoami.status(), 200);
    assert_eq!(whoami.headers()["cache-control"], "no-store");
    let refused = http().get(gw.url("/admin/v1/keys")).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.headers()["cache-control"], "no-store");
    let missing = http().get(gw.url("/ui/nope.js")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert!(missing.headers().contains_key("content-security-policy"));
}

/// Every `["METHOD", "/admin/v1/..."]` entry of the app's route table.
fn route_table(api_js: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for piece in api_js.split("[\"").skip(1) {
        let mut parts = piece.splitn(3, '"');
        let method = parts.next().unwrap_or_default();
        let _comma = parts.next();
        let Some(path) = parts.next().and_then(|rest| rest.split('"').next()) else {
            continue;
        };
        if path.starts_with("/admin/v1") {
            out.push((method.to_string(), path.to_string()));
        }
    }
    out
}

#[tokio::test]
async fn the_dashboard_calls_only_admin_routes_the_openapi_document_describes() {
    let upstream = mock(Default::default()).await;
    let gw = Gateway::start(&standard_policy(&upstream));
    let modules = app_modules(&gw).await;
    let (_, api) = modules
        .iter()
        .find(|(p, _)| p == "/ui/api.js")
        .expect("api.js");
    let routes = route_table(api);
    assert!(routes.len() >= 20, "the route table was read: {routes:?}");
    // The table is the only place that names an admin route.
    for (path, text) in &modules {
        if path != "/ui/api.js" {
            assert!(!text.contains("/admin/"), "{path} names an admin route");
        }
    }
    let response = http()
        .get(gw.url("/admin/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        200,
        "the gateway serves its OpenAPI document"
    );
    let doc: Value = response.json().await.unwrap();
    let paths = doc["paths"].as_object().expect("paths");
    let mut missing = Vec::new();
    for (method, path) in &routes {
        let relative = path.trim_start_matches("/admin/v1");
        let entry = paths.get(path).or_else(|| paths.get(relative));
        if entry.is_none_or(|e| e.get(method.to_lowercase()).is_none()) {
            missing.push(format!("{method} {path}"));
        }
    }
    assert!(
        missing.is_empty(),
        "the dashboard calls routes the OpenAPI document does not describe: {missing:?}"
    );
}

/// Where playwright-core is installed (`./scripts/test` puts it there).
fn browser_node_modules() -> PathBuf {
    std::env::var_os("TOLLGATE_BROWSER_NODE_MODULES").map_or_else(
        || {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".cache/tollgate-browser/node/node_modules")
        },
        PathBuf::from,
    )
}

fn chromium() -> PathBuf {
    std::env::var_os("TOLLGATE_CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// Screenshots go beside the binary under test: `$CARGO_TARGET_DIR/browser-artifacts/`.
fn artifacts_dir() -> PathBuf {
    let bin = bin();
    let target = bin
        .parent()
        .and_then(|p| p.parent())
        .map_or_else(std::env::temp_dir, PathBuf::from);
    target.join("browser-artifacts")
}

#[tokio::test]
async fn dashboard_signs_in_creates_a_key_shows_its_usage_and_revokes_it_in_chromium() {
    let test = "dashboard_signs_in_creates_a_key_shows_its_usage_and_revokes_it_in_chromium";
    let node_ok = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !node_ok {
        skip(test, "node is not installed");
        return;
    }
    if !chromium().is_file() {
        let reason = format!(
            "chromium is not installed at {} (./scripts/test installs it with apt-get)",
            chromium().display()
        );
        skip(test, &reason);
        return;
    }
    if !browser_node_modules()
        .join("playwright-core/package.json")
        .is_file()
    {
        skip(
            test,
            "the npm package playwright-core is not installed (./scripts/test installs it)",
        );
        return;
    }
    let upstream = mock(Default::default()).await;
    // One access rule, so the decision trail names a rule beside the built-in checks.
    let gw = Gateway::start_with(
        &standard_policy(&upstream),
        &[(
            "access/no-other-model.cel",
            "// Nobody calls the model 'other'.\nrequest.model != \"other\"\n",
        )],
        &[],
    );
    let artifacts = artifacts_dir();
    let _ = std::fs::remove_dir_all(&artifacts);
    let script = repo_root().join("tests/browser/dashboard.cjs");
    let base = gw.base.clone();
    let dir = artifacts.clone();
    let policies = gw.policies();
    // Off the runtime: the mock upstream answers on it while node runs.
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .env("TOLLGATE_URL", base)
            .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("TOLLGATE_MODEL", "chat")
            .env("TOLLGATE_EXPECT_RULE", "no-other-model")
            .env("TOLLGATE_POLICY_DIR", policies)
            .env("TOLLGATE_ARTIFACTS", dir)
            .env("TOLLGATE_CHROMIUM", chromium())
            .env("TOLLGATE_BROWSER_NODE_MODULES", browser_node_modules())
            .output()
            .expect("run node")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the browser test failed\nstdout:\n{stdout}\nstderr:\n{stderr}\nscreenshots so far: {}",
        artifacts.display()
    );
    assert!(stdout.contains("browser test passed"), "{stdout}");
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "dashboard screenshots: {}",
        artifacts.display()
    );
}
