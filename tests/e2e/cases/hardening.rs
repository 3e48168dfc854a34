//! Hardening (issue 12): no internal detail in error bodies nor secrets in output, rotated
//! credential files, the admin token's rules, slow clients and connection limits, client
//! addresses behind trusted proxies, and providers that rate-limit or refuse the credential.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mock_upstream::{MockConfig, MockHandle};
use serde_json::{Value, json};

use crate::common::{
    ADMIN_TOKEN, Gateway, PgDatabase, TcpProxy, bin, chat_body, expect_error, http, mock,
    request_id, skip, standard_policy,
};

/// Models and a group steering the mock into rate limits and credential refusals.
const MISBEHAVING: &str = r#"
[models.rate-limited]
provider = "mock"
upstream_model = "mock-429"

[models.bad-credential]
provider = "mock"
upstream_model = "mock-401"

[models.forbidden-credential]
provider = "mock"
upstream_model = "mock-403"

[groups.rate-limited-failover]
deployments = [
  { model = "rate-limited", priority = 0 },
  { model = "chat", priority = 1 },
]

[groups.credential-failover]
deployments = [
  { model = "bad-credential", priority = 0 },
  { model = "chat", priority = 1 },
]
"#;

fn policy(mock: &MockHandle) -> String {
    format!("{}{MISBEHAVING}", standard_policy(mock))
}

async fn chat(gw: &Gateway, secret: &str, body: &Value) -> reqwest::Response {
    http()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(secret)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Runs the binary with `args` and `env`; kills it if it is still running after `within`.
/// Returns (exited on its own, success, stdout + stderr).
fn run_briefly(args: &[&str], env: &[(&str, &str)], within: Duration) -> (bool, bool, String) {
    let mut command = Command::new(bin());
    command
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("TOLLGATE_ADMIN_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("spawn tollgate");
    let deadline = Instant::now() + within;
    let (exited, success) = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break (true, status.success());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break (false, false);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut text = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut text);
    }
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut text);
    }
    (exited, success, text)
}

#[tokio::test]
async fn a_502_names_the_provider_but_not_its_url_nor_the_client_error_chain() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&policy(&mock));
    let (_, secret) = gw.create_key("*");
    let response = chat(&gw, &secret, &chat_body("unreachable")).await;
    let id = request_id(&response);
    assert_eq!(response.status(), 502);
    let text = response.text().await.unwrap();
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["error"]["code"], "upstream_error");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("'dead'"), "names the provider: {message}");
    for leak in [
        "127.0.0.1",
        "http://",
        "error sending request",
        "Connection refused",
    ] {
        assert!(!text.contains(leak), "the body leaks {leak:?}: {text}");
    }
    let row = gw.row_for(&id).await;
    assert_eq!(row["error_code"], "upstream_error");
}

#[test]
fn a_database_password_never_appears_in_the_output() {
    for url in [
        "postgres://tollgate:hunter2-secret@127.0.0.1:1/tollgate",
        "mysql://tollgate:hunter2-secret@127.0.0.1:1/tollgate",
    ] {
        let (exited, success, output) = run_briefly(
            &["keys", "list", "--database", url],
            &[],
            Duration::from_secs(30),
        );
        assert!(exited && !success, "the store cannot open: {output}");
        assert!(
            !output.contains("hunter2-secret"),
            "the password leaked: {output}"
        );
        assert!(output.contains("127.0.0.1:1"), "the host is kept: {output}");
    }
}

#[tokio::test]
async fn a_rotated_credential_file_is_used_after_a_reload() {
    let mock = mock(MockConfig::default()).await;
    let base = mock.base_url();
    let toml = format!(
        "[providers.filed]\nfamily = \"openai\"\nbase_url = \"{base}\"\ncredential = {{ file = \"secrets/filed.key\" }}\n\n[models.chat]\nprovider = \"filed\"\n"
    );
    let gw = Gateway::start_with(
        &toml,
        &[("secrets/filed.key", "sk-first-0001\n")],
        &["--no-watch"],
    );
    let (_, secret) = gw.create_key("*");
    assert_eq!(chat(&gw, &secret, &chat_body("chat")).await.status(), 200);
    std::fs::write(gw.policies().join("secrets/filed.key"), "sk-second-0002\n").unwrap();
    let reloaded = http()
        .post(gw.url("/admin/policies/reload"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(reloaded.status(), 200);
    let status: Value = reloaded.json().await.unwrap();
    assert_eq!(status["generation"], 2, "a new credential is a new set");
    let text = status.to_string();
    assert!(!text.contains("sk-second"), "never shown: {text}");
    assert_eq!(chat(&gw, &secret, &chat_body("chat")).await.status(), 200);
    let seen: Vec<String> = mock
        .received()
        .iter()
        .map(|r| {
            r.headers["authorization"]
                .to_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(seen, ["Bearer sk-first-0001", "Bearer sk-second-0002"]);
}

#[test]
fn a_short_admin_token_refuses_to_start_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("gateway.toml"),
        "[providers.demo]\nfamily = \"demo\"\n",
    )
    .unwrap();
    let db = format!("sqlite://{}", dir.path().join("t.db").display());
    let policies = dir.path().display().to_string();
    let (exited, success, output) = run_briefly(
        &[
            "serve",
            "--policies",
            &policies,
            "--listen",
            "127.0.0.1:0",
            "--database",
            &db,
        ],
        &[("TOLLGATE_ADMIN_TOKEN", "short-token")],
        Duration::from_secs(20),
    );
    assert!(exited, "the gateway must not start: {output}");
    assert!(!success);
    assert!(
        output.contains("admin token is too short") && output.contains("at least 24"),
        "{output}"
    );
    assert!(!output.contains("short-token"), "never printed: {output}");
}

#[tokio::test]
async fn repeated_admin_token_failures_are_answered_429_with_retry_after() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&policy(&mock));
    let admin = |token: &'static str| {
        http()
            .get(gw.url("/admin/policies"))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(admin(ADMIN_TOKEN).await.unwrap().status(), 200);
    for _ in 0..5 {
        let response = admin("wrong-token-wrong-token-wrong").await.unwrap();
        expect_error(response, 401, "unauthorized").await;
    }
    let response = admin("wrong-token-wrong-token-wrong").await.unwrap();
    let retry_after: u64 = response
        .headers()
        .get("retry-after")
        .expect("Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1, "{retry_after}");
    expect_error(response, 429, "rate_limit_exceeded").await;
    // While the backoff runs, even the right token is not checked.
    let response = admin(ADMIN_TOKEN).await.unwrap();
    assert_eq!(response.status(), 429);
    // Model traffic is not affected.
    let (_, secret) = gw.create_key("*");
    assert_eq!(chat(&gw, &secret, &chat_body("chat")).await.status(), 200);
}

#[tokio::test]
async fn metrics_can_be_protected_with_the_admin_token() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start_with(&policy(&mock), &[], &["--protect-metrics"]);
    let open = http().get(gw.url("/metrics")).send().await.unwrap();
    expect_error(open, 401, "unauthorized").await;
    let with_token = http()
        .get(gw.url("/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(with_token.status(), 200);
    assert!(
        with_token
            .text()
            .await
            .unwrap()
            .contains("tollgate_policy_generation")
    );
}

fn connect(gw: &Gateway) -> TcpStream {
    let addr = gw.base.trim_start_matches("http://");
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Reads until the server closes the connection (or the read timeout); returns what it sent.
fn read_until_closed(stream: &mut TcpStream) -> (bool, String) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (true, String::from_utf8_lossy(&out).into_owned()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return (false, String::from_utf8_lossy(&out).into_owned());
            }
            Err(_) => return (true, String::from_utf8_lossy(&out).into_owned()),
        }
    }
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start_with(&policy(&mock), &[], &["--header-read-timeout-ms", "300"]);
    let mut stream = connect(&gw);
    stream
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
        .unwrap();
    let started = Instant::now();
    let (closed, _) = tokio::task::spawn_blocking(move || read_until_closed(&mut stream))
        .await
        .unwrap();
    assert!(closed, "the server closed the connection");
    assert!(started.elapsed() < Duration::from_secs(8));
}

#[tokio::test]
async fn a_client_that_never_finishes_its_body_gets_an_error_and_a_usage_row() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start_with(&policy(&mock), &[], &["--body-read-timeout-ms", "300"]);
    let (key_id, secret) = gw.create_key("*");
    let mut stream = connect(&gw);
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {secret}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"model\":"
    );
    stream.write_all(head.as_bytes()).unwrap();
    let (_, answer) = tokio::task::spawn_blocking(move || read_until_closed(&mut stream))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("invalid_request_body"), "{answer}");
    let rows = gw.wait_rows(1).await;
    assert_eq!(rows[0]["error_code"], "invalid_request_body");
    assert_eq!(rows[0]["key_id"], key_id.as_str());
    assert_eq!(mock.count(), 0);
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_until_one_closes() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start_with(&policy(&mock), &[], &["--max-connections", "2"]);
    let first = connect(&gw);
    let second = connect(&gw);
    // Let the gateway accept both.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(800))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let waiting = client.get(gw.url("/healthz")).send().await;
    assert!(waiting.is_err(), "a third connection is not served yet");
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(response) = client.get(gw.url("/healthz")).send().await {
            assert_eq!(response.status(), 200);
            break;
        }
        assert!(Instant::now() < deadline, "a freed slot serves again");
    }
    drop(second);
}

fn ip_policy(mock: &MockHandle) -> String {
    format!(
        "{}\n[[limits]]\nscope = \"organization\"\nip_allow = [\"10.0.0.0/8\"]\n",
        policy(mock)
    )
}

async fn chat_from(gw: &Gateway, secret: &str, forwarded: Option<&str>) -> reqwest::Response {
    let mut request = http()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(secret)
        .json(&chat_body("chat"));
    if let Some(forwarded) = forwarded {
        request = request.header("x-forwarded-for", forwarded);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn an_ip_denial_is_a_403_with_its_own_code_and_ignores_untrusted_forwarding() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&ip_policy(&mock));
    let (_, secret) = gw.create_key("*");
    let response = chat_from(&gw, &secret, None).await;
    assert_eq!(response.status(), 403);
    assert!(response.headers().get("retry-after").is_none());
    let id = request_id(&response);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "ip_not_allowed");
    assert_eq!(body["error"]["type"], "permission_error");
    assert_eq!(body["error"]["scope"], "organization");
    assert_eq!(body["error"]["limit"], "ip");
    let row = gw.row_for(&id).await;
    assert_eq!(row["denied_stage"], "authorize");
    assert_eq!(row["error_code"], "ip_not_allowed");
    // Without trusted proxies, anyone could claim an address: the header is ignored.
    expect_error(
        chat_from(&gw, &secret, Some("10.1.2.3")).await,
        403,
        "ip_not_allowed",
    )
    .await;
    assert_eq!(mock.count(), 0);
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_client_address_decides() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start_with(
        &ip_policy(&mock),
        &[],
        &["--trusted-proxies", "127.0.0.1/32,192.168.0.0/16"],
    );
    let (_, secret) = gw.create_key("*");
    assert_eq!(
        chat_from(&gw, &secret, Some("10.1.2.3")).await.status(),
        200
    );
    // Two trusted hops: the first untrusted address from the right is the client.
    assert_eq!(
        chat_from(&gw, &secret, Some("10.1.2.3, 192.168.1.1"))
            .await
            .status(),
        200
    );
    // A spoofed left part does not help a client outside the allowed network.
    expect_error(
        chat_from(&gw, &secret, Some("10.1.2.3, 203.0.113.9")).await,
        403,
        "ip_not_allowed",
    )
    .await;
    // The proxy itself is not an allowed client.
    expect_error(chat_from(&gw, &secret, None).await, 403, "ip_not_allowed").await;
    // Garbage in the header is not an address: the proxy's peer address decides.
    expect_error(
        chat_from(&gw, &secret, Some("not-an-ip")).await,
        403,
        "ip_not_allowed",
    )
    .await;
    assert_eq!(mock.count(), 2);
}

#[tokio::test]
async fn a_provider_429_keeps_its_retry_after_toward_the_client() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&policy(&mock));
    let (_, secret) = gw.create_key("*");
    let response = chat(&gw, &secret, &chat_body("rate-limited")).await;
    assert_eq!(response.status(), 429);
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap()),
        Some("7")
    );
    let id = request_id(&response);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(gw.row_for(&id).await["status"], 429);
}

#[tokio::test]
async fn a_provider_that_refuses_the_credential_fails_over_and_cools_down() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&policy(&mock));
    let (_, secret) = gw.create_key("*");
    let response = chat(&gw, &secret, &chat_body("credential-failover")).await;
    assert_eq!(response.status(), 200);
    let row = gw.row_for(&request_id(&response)).await;
    assert_eq!(row["served_model"], "chat");
    let route: Value = serde_json::from_str(row["route"].as_str().unwrap()).unwrap();
    let attempts = route["attempts"].as_array().unwrap();
    assert_eq!(attempts[0]["model"], "bad-credential");
    assert_eq!(attempts[0]["status"], 401);
    assert_eq!(attempts[0]["outcome"], "failover");
    // The refused deployment is unhealthy now: the next request goes to the healthy one first.
    let response = chat(&gw, &secret, &chat_body("credential-failover")).await;
    assert_eq!(response.status(), 200);
    let models: Vec<Value> = mock
        .received()
        .iter()
        .map(|r| r.body["model"].clone())
        .collect();
    assert_eq!(
        models,
        [
            json!("mock-401"),
            json!("upstream-chat-v1"),
            json!("upstream-chat-v1")
        ]
    );
}

#[tokio::test]
async fn a_refused_credential_on_the_last_deployment_is_a_502_not_the_providers_401() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&policy(&mock));
    let (_, secret) = gw.create_key("*");
    for model in ["bad-credential", "forbidden-credential"] {
        let response = chat(&gw, &secret, &chat_body(model)).await;
        let id = expect_error(response, 502, "upstream_error").await;
        let row = gw.row_for(&id).await;
        assert_eq!(row["denied_stage"], "call");
    }
}

// The proxy runs in this runtime while the harness blocks on the gateway's start: two workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_while_the_store_is_away_is_refused_soon_after_it_returns() {
    let test = "a_key_revoked_while_the_store_is_away_is_refused_soon_after_it_returns";
    let db = match PgDatabase::create() {
        Ok(db) => db,
        Err(why) => return skip(test, &why),
    };
    let proxy = TcpProxy::start(crate::common::pg_addr()).await;
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start_db(&policy(&mock), &[], &[], &db.url_via(proxy.addr));
    let (id, secret) = gw.create_key("*");
    assert_eq!(
        chat(&gw, &secret, &chat_body("chat")).await.status(),
        200,
        "cached"
    );
    // The gateway loses its store; the key is revoked meanwhile (straight on the database).
    proxy.cut();
    let revoke = Command::new(bin())
        .args(["keys", "revoke", &id, "--database", &db.url])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        revoke.status.success(),
        "{}",
        String::from_utf8_lossy(&revoke.stderr)
    );
    // A key the cache has never seen needs the store: 503, without the database's error.
    let unknown = chat(
        &gw,
        "tg_0000000000000000000000000000000000000000",
        &chat_body("chat"),
    )
    .await;
    assert_eq!(unknown.status(), 503);
    let text = unknown.text().await.unwrap();
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["error"]["code"], "auth_unavailable", "{text}");
    for leak in ["database", "communicating", "127.0.0.1", "pool", "os error"] {
        assert!(!text.contains(leak), "the 503 leaks {leak:?}: {text}");
    }
    proxy.restore();
    let restored = Instant::now();
    // Stated bound: one key-version poll once the store answers, plus the pool's 5 s
    // connection acquire timeout of a poll that was already waiting when it came back.
    loop {
        let response = chat(&gw, &secret, &chat_body("chat")).await;
        if response.status() == 401 {
            expect_error(response, 401, "api_key_revoked").await;
            break;
        }
        assert!(
            restored.elapsed() < Duration::from_secs(7),
            "a revoked key is still served {:?} after the store returned",
            restored.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "revocation honoured {:?} after the store returned",
        restored.elapsed()
    );
}

#[tokio::test]
async fn http2_streams_beyond_the_limit_wait_for_a_free_one() {
    let mock = mock(MockConfig {
        latency: Duration::from_millis(400),
        ..MockConfig::default()
    })
    .await;
    let gw = Gateway::start_with(&policy(&mock), &[], &["--http2-max-streams", "1"]);
    let (_, secret) = gw.create_key("*");
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let started = Instant::now();
    let calls = (0..3).map(|_| {
        client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(&secret)
            .json(&chat_body("chat"))
            .send()
    });
    for response in futures_util::future::join_all(calls).await {
        let response = response.unwrap();
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        assert_eq!(response.status(), 200);
    }
    // One stream at a time on the one connection: the three calls ran one after another.
    assert!(
        started.elapsed() >= Duration::from_millis(1100),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_provider_429_with_retry_after_cools_its_deployment_down_for_that_long() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&policy(&mock));
    let (_, secret) = gw.create_key("*");
    for _ in 0..2 {
        let response = chat(&gw, &secret, &chat_body("rate-limited-failover")).await;
        assert_eq!(response.status(), 200);
    }
    // The first call met the 429 (Retry-After: 7) and failed over; the second went to the
    // healthy deployment first.
    let models: Vec<Value> = mock
        .received()
        .iter()
        .map(|r| r.body["model"].clone())
        .collect();
    assert_eq!(
        models,
        [
            json!("mock-429"),
            json!("upstream-chat-v1"),
            json!("upstream-chat-v1")
        ]
    );
}
