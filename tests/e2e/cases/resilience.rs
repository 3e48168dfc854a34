//! Retries, backoff, `Retry-After`, the gateway-wide retry budget, half-open probes after a
//! cooldown, and outbound proxies, against mocks that fail on command.

use std::time::Duration;

use mock_upstream::{MockConfig, MockHandle};
use serde_json::{Value, json};

use crate::common::proxy::Proxy;
use crate::common::{ADMIN_TOKEN, Gateway, bin, http, mock, request_id};

async fn chat(gw: &Gateway, secret: &str, model: &str) -> reqwest::Response {
    http()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(secret)
        .json(&json!({"model": model, "max_tokens": 20,
                      "messages": [{"role": "user", "content": "hello"}]}))
        .send()
        .await
        .unwrap()
}

/// The attempts the usage row of `response` lists.
async fn attempts(gw: &Gateway, response: &reqwest::Response) -> Vec<Value> {
    let row = gw.row_for(&request_id(response)).await;
    let route: Value = serde_json::from_str(row["route"].as_str().unwrap_or("{}")).unwrap();
    route["attempts"].as_array().cloned().unwrap_or_default()
}

fn provider(name: &str, mock: &MockHandle) -> String {
    format!(
        "[providers.{name}]\nfamily = \"openai\"\nbase_url = \"{}\"\ntimeout_ms = 5000\n\n[models.{name}]\nprovider = \"{name}\"\nupstream_model = \"upstream-{name}\"\n\n",
        mock.base_url()
    )
}

#[tokio::test]
async fn a_429_with_a_short_retry_after_is_waited_for_and_retried() {
    let mock = mock(MockConfig::default()).await;
    let toml = format!(
        "[upstream]\nmax_attempts = 2\nmax_retry_after_ms = 3000\n\n{}",
        provider("one", &mock)
    );
    let gw = Gateway::start(&toml);
    let (_, secret) = gw.create_key("*");
    mock.queue_faults(&["mock-429-1s"]);
    let response = chat(&gw, &secret, "one").await;
    assert_eq!(response.status(), 200);
    assert_eq!(mock.count(), 2, "the deployment was tried twice");
    let attempts = attempts(&gw, &response).await;
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0]["status"], 429);
    assert_eq!(attempts[0]["outcome"], "failover");
    // The second try waited for the provider's Retry-After (1 s), not just the backoff.
    assert!(
        attempts[1]["waited_ms"].as_u64().unwrap() >= 1000,
        "{attempts:?}"
    );
    assert_eq!(attempts[1]["outcome"], "relayed");
}

#[tokio::test]
async fn a_retry_after_longer_than_the_cap_is_not_waited_for() {
    let mock = mock(MockConfig::default()).await;
    let toml = format!(
        "[upstream]\nmax_attempts = 3\nmax_retry_after_ms = 2000\n\n{}",
        provider("one", &mock)
    );
    let gw = Gateway::start(&toml);
    let (_, secret) = gw.create_key("*");
    // `mock-429` asks for 7 s: the provider's answer is relayed at once, with its Retry-After.
    mock.set_fault(Some("mock-429"));
    let response = chat(&gw, &secret, "one").await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "7");
    assert_eq!(mock.count(), 1);
    assert_eq!(attempts(&gw, &response).await.len(), 1);
}

#[tokio::test]
async fn failures_are_retried_with_backoff_up_to_max_attempts() {
    let mock = mock(MockConfig::default()).await;
    let toml = format!(
        "[upstream]\nmax_attempts = 3\nbackoff_base_ms = 20\nbackoff_max_ms = 50\n\n{}",
        provider("one", &mock)
    );
    let gw = Gateway::start(&toml);
    let (_, secret) = gw.create_key("*");
    mock.set_fault(Some("mock-500"));
    let response = chat(&gw, &secret, "one").await;
    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_error");
    assert_eq!(mock.count(), 3, "three attempts, not more");

    // Two failures, then the provider recovers: the third attempt answers.
    mock.set_fault(None);
    mock.queue_faults(&["mock-500", "mock-500"]);
    let response = chat(&gw, &secret, "one").await;
    assert_eq!(response.status(), 200);
    let attempts = attempts(&gw, &response).await;
    let outcomes: Vec<_> = attempts.iter().map(|a| a["outcome"].clone()).collect();
    assert_eq!(
        outcomes,
        ["failover", "failover", "relayed"],
        "{attempts:?}"
    );
    assert!(attempts[1].get("waited_ms").is_some(), "{attempts:?}");
}

#[tokio::test]
async fn max_attempts_bounds_the_failover_list() {
    let (a, b, c) = (
        mock(MockConfig::default()).await,
        mock(MockConfig::default()).await,
        mock(MockConfig::default()).await,
    );
    let toml = format!(
        "[upstream]\nmax_attempts = 2\n\n{}{}{}[groups.all]\ndeployments = [{{ model = \"a\", priority = 0 }}, {{ model = \"b\", priority = 1 }}, {{ model = \"c\", priority = 2 }}]\n",
        provider("a", &a),
        provider("b", &b),
        provider("c", &c)
    );
    let gw = Gateway::start(&toml);
    let (_, secret) = gw.create_key("*");
    a.set_fault(Some("mock-500"));
    b.set_fault(Some("mock-500"));
    let response = chat(&gw, &secret, "all").await;
    assert_eq!(response.status(), 502);
    assert_eq!((a.count(), b.count(), c.count()), (1, 1, 0));
}

#[tokio::test]
async fn a_spent_retry_budget_stops_failover_and_says_so() {
    let (a, b) = (
        mock(MockConfig::default()).await,
        mock(MockConfig::default()).await,
    );
    let toml = format!(
        "[upstream]\nretry_budget_ratio = 0.0\nretry_budget_min_per_sec = 0.0\n\n{}{}[groups.ab]\ndeployments = [{{ model = \"a\", priority = 0 }}, {{ model = \"b\", priority = 1 }}]\n",
        provider("a", &a),
        provider("b", &b)
    );
    let gw = Gateway::start(&toml);
    let (_, secret) = gw.create_key("*");
    a.set_fault(Some("mock-500"));
    let response = chat(&gw, &secret, "ab").await;
    assert_eq!(response.status(), 502);
    assert_eq!(b.count(), 0, "no retry budget: no failover");
    let attempts = attempts(&gw, &response).await;
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0]["retry_budget"], "exhausted", "{attempts:?}");
}

#[tokio::test]
async fn after_a_cooldown_one_probe_lets_the_provider_back_or_reopens_the_cooldown() {
    let (a, b) = (
        mock(MockConfig::default()).await,
        mock(MockConfig::default()).await,
    );
    // Cooldown after 2 failures, 1.5 s, doubled by a failed probe.
    let toml = format!(
        "[upstream]\ncooldown_after = 2\ncooldown_ms = 1500\nmax_cooldown_ms = 60000\n\n{}{}[groups.ab]\ndeployments = [{{ model = \"a\", priority = 0 }}, {{ model = \"b\", priority = 1 }}]\n",
        provider("a", &a),
        provider("b", &b)
    );
    let gw = Gateway::start(&toml);
    let (_, secret) = gw.create_key("*");
    a.set_fault(Some("mock-500"));
    for _ in 0..2 {
        assert_eq!(chat(&gw, &secret, "ab").await.status(), 200);
    }
    assert_eq!(a.count(), 2);
    // Cooling down: `a` goes last, `b` answers first.
    assert_eq!(chat(&gw, &secret, "ab").await.status(), 200);
    assert_eq!(a.count(), 2, "a cooling deployment is not tried first");

    // Past the cooldown, one request probes `a`; it fails, and one failure (not two) opens
    // the cooldown again.
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let response = chat(&gw, &secret, "ab").await;
    assert_eq!(response.status(), 200);
    assert_eq!(a.count(), 3);
    let attempts = attempts(&gw, &response).await;
    assert_eq!(attempts[0]["probe"], true, "{attempts:?}");
    assert_eq!(chat(&gw, &secret, "ab").await.status(), 200);
    assert_eq!(a.count(), 3, "a failed probe re-opens the cooldown at once");

    // The second cooldown is longer (3 s): still closed to `a` after the first one's length.
    a.set_fault(None);
    tokio::time::sleep(Duration::from_millis(1700)).await;
    assert_eq!(chat(&gw, &secret, "ab").await.status(), 200);
    assert_eq!(a.count(), 3, "the cooldown doubled after the failed probe");

    // Past it, the probe succeeds and `a` serves again, first.
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let response = chat(&gw, &secret, "ab").await;
    assert_eq!(response.status(), 200);
    assert_eq!(a.count(), 4);
    assert_eq!(chat(&gw, &secret, "ab").await.status(), 200);
    assert_eq!(a.count(), 5, "after a good probe the provider is back");
}

#[tokio::test]
async fn providers_reach_their_upstream_through_the_configured_proxy() {
    let (via, direct) = (
        mock(MockConfig::default()).await,
        mock(MockConfig::default()).await,
    );
    let proxy = Proxy::start().await;
    let password = "proxy-pass-7f3a9c";
    // A global proxy for every provider, except hosts in no_proxy (`localhost`): the `direct`
    // provider is reached by that name, the `via` provider by its address.
    let toml = format!(
        r#"
[upstream]
proxy = "{}"
no_proxy = "localhost"

[providers.via]
family = "openai"
base_url = "{}"

[providers.direct]
family = "openai"
base_url = "http://localhost:{}/v1"

[providers.own]
family = "openai"
base_url = "{}"
proxy = "{}"

[models.via]
provider = "via"

[models.direct]
provider = "direct"

[models.own]
provider = "own"
"#,
        proxy.url(&format!("gw:{password}@")),
        via.base_url(),
        direct.addr.port(),
        via.base_url(),
        proxy.url(""),
    );
    let gw = Gateway::start(&toml);
    let (_, secret) = gw.create_key("*");

    assert_eq!(chat(&gw, &secret, "via").await.status(), 200);
    let seen = proxy.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        seen[0].line.starts_with("POST http://127.0.0.1:"),
        "{seen:?}"
    );
    // The proxy credential from the URL goes to the proxy (Basic gw:password).
    let auth = seen[0].auth.clone().unwrap_or_default();
    assert!(auth.starts_with("Basic "), "{auth}");
    assert_eq!(via.count(), 1);

    assert_eq!(chat(&gw, &secret, "direct").await.status(), 200);
    assert_eq!(proxy.seen().len(), 1, "no_proxy hosts are reached directly");
    assert_eq!(direct.count(), 1);

    // A provider's own proxy wins over the global one (no credential in it).
    assert_eq!(chat(&gw, &secret, "own").await.status(), 200);
    let seen = proxy.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].auth, None);

    // The proxy password shows nowhere: not in the policy status, nor in `tollgate check`.
    let status = http()
        .get(gw.url("/admin/policies"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!status.contains(password), "{status}");
    let check = std::process::Command::new(bin())
        .arg("check")
        .arg(gw.policies())
        .output()
        .unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(check.status.success(), "{out}");
    assert!(!out.contains(password), "{out}");
}

#[tokio::test]
async fn the_environments_proxy_carries_providers_without_a_proxy_setting() {
    let mock = mock(MockConfig::default()).await;
    let proxy = Proxy::start().await;
    let toml = format!(
        r#"
[providers.plain]
family = "openai"
base_url = "{}"
credential = {{ env = "TG_TEST_PROVIDER_KEY" }}

[models.plain]
provider = "plain"
"#,
        mock.base_url()
    );
    let url = proxy.url("");
    let gw = Gateway::start_env(&toml, &[], &[], &[("HTTP_PROXY", url.as_str())]);
    let (_, secret) = gw.create_key("*");
    for _ in 0..2 {
        assert_eq!(chat(&gw, &secret, "plain").await.status(), 200);
    }
    let seen = proxy.seen();
    assert_eq!(seen.len(), 2, "every call went through the proxy: {seen:?}");
    assert!(
        seen[0].line.starts_with("POST http://127.0.0.1:"),
        "{seen:?}"
    );
    assert_eq!(mock.count(), 2);
}

#[tokio::test]
async fn a_proxy_that_refuses_connections_is_a_clean_upstream_error() {
    let mock = mock(MockConfig::default()).await;
    let toml = format!(
        "[providers.p]\nfamily = \"openai\"\nbase_url = \"{}\"\nproxy = \"http://user:pw-secret-91@127.0.0.1:1\"\n\n[models.p]\nprovider = \"p\"\n",
        mock.base_url()
    );
    let gw = Gateway::start(&toml);
    let (_, secret) = gw.create_key("*");
    let response = chat(&gw, &secret, "p").await;
    assert_eq!(response.status(), 502);
    let text = response.text().await.unwrap();
    assert!(text.contains("upstream_error"), "{text}");
    assert!(!text.contains("pw-secret-91"), "{text}");
    assert_eq!(mock.count(), 0);
}

#[test]
fn bad_timeouts_and_proxies_are_load_errors_with_their_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("gateway.toml"),
        "[upstream]\nmax_attempts = 0\n\n[providers.p]\nfamily = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\nfirst_byte_timeout_ms = 5000\ntotal_timeout_ms = 1000\nidle_timeout_ms = 0\nproxy = \"ftp://u:hidden-pw@proxy:21\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .arg("check")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "gateway.toml:2",
        "upstream.max_attempts",
        "gateway.toml:8",
        "providers.p.total_timeout_ms",
        "gateway.toml:9",
        "providers.p.idle_timeout_ms",
        "gateway.toml:10",
        "providers.p.proxy",
    ] {
        assert!(text.contains(expected), "{expected} missing from:\n{text}");
    }
    assert!(!text.contains("hidden-pw"), "{text}");
}

#[tokio::test]
async fn the_admin_api_says_when_a_cooling_provider_comes_back() {
    let (a, b) = (
        mock(MockConfig::default()).await,
        mock(MockConfig::default()).await,
    );
    let toml = format!(
        "[upstream]\ncooldown_after = 2\ncooldown_ms = 60000\nmax_cooldown_ms = 60000\n\n{}{}[groups.ab]\ndeployments = [{{ model = \"a\", priority = 0 }}, {{ model = \"b\", priority = 1 }}]\n",
        provider("a", &a),
        provider("b", &b)
    );
    let gw = Gateway::start(&toml);
    let (_, secret) = gw.create_key("*");
    let providers = || async {
        let body: Value = http()
            .get(gw.url("/admin/v1/providers"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let find = |name: &str| {
            body["data"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == name)
                .cloned()
                .unwrap()
        };
        (find("a"), find("b"))
    };
    let (pa, pb) = providers().await;
    assert_eq!(
        (pa["healthy"].clone(), pa["cooldown_until"].clone()),
        (json!(true), Value::Null)
    );
    assert_eq!(pb["cooldown_until"], Value::Null);

    a.set_fault(Some("mock-500"));
    for _ in 0..2 {
        assert_eq!(chat(&gw, &secret, "ab").await.status(), 200);
    }
    let (pa, pb) = providers().await;
    assert_eq!(pa["healthy"], false, "{pa}");
    let until =
        chrono::DateTime::parse_from_rfc3339(pa["cooldown_until"].as_str().expect("a time"))
            .expect("RFC 3339");
    let left = until
        .signed_duration_since(chrono::Utc::now())
        .num_seconds();
    assert!(
        (50..=60).contains(&left),
        "cooling for about a minute, not {left} s"
    );
    assert_eq!(
        (pb["healthy"].clone(), pb["cooldown_until"].clone()),
        (json!(true), Value::Null)
    );
}
