//! Budgets and quotas that block, not report: holds before the call, settlement after, exact
//! under concurrency, across replicas on PostgreSQL, and fail-closed when the store is away.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use mock_upstream::{MockConfig, MockHandle};
use serde_json::{Value, json};
use tollgate::store::Store;

use crate::common::{
    Gateway, PgDatabase, TcpProxy, expect_error, http, mock, request_id, skip, webhook_sink,
};

/// One call of `metered` costs exactly 7 output tokens × 1000 USD/M = 0.007 USD = 7,000,000
/// nano-USD, and the hold for it (`max_tokens: 7`, free input) is exactly the same amount.
const CALL_NANOS: i64 = 7_000_000;

fn policy(mock: &MockHandle, server_extra: &str, extra: &str) -> String {
    let base = mock.base_url();
    format!(
        r#"
[server]
max_body_bytes = 65536
{server_extra}

[providers.mock]
family = "openai"
base_url = "{base}"
credential = {{ env = "TG_TEST_PROVIDER_KEY" }}
timeout_ms = 5000

[models.metered]
provider = "mock"
upstream_model = "upstream-metered"
pricing = {{ input_per_mtok = 0.0, output_per_mtok = 1000.0 }}

[models.priced]
provider = "mock"
upstream_model = "upstream-priced"
pricing = {{ input_per_mtok = 2.5, output_per_mtok = 10.0, cached_input_per_mtok = 1.25 }}

[models.broken]
provider = "mock"
upstream_model = "mock-500"
pricing = {{ input_per_mtok = 2.5, output_per_mtok = 10.0 }}

[models.stall]
provider = "mock"
upstream_model = "mock-stall-stream"
pricing = {{ input_per_mtok = 2.5, output_per_mtok = 10.0 }}
{extra}
"#
    )
}

fn call_body(model: &str) -> Value {
    json!({"model": model, "max_tokens": 7, "messages": [{"role": "user", "content": "hello"}]})
}

async fn call(gw: &Gateway, secret: &str, body: &Value) -> reqwest::Response {
    http()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(secret)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Fires `n` concurrent calls spread over `gateways`; returns (succeeded, refused with 402).
async fn burst(gateways: &[&Gateway], secret: &str, n: usize) -> (usize, usize) {
    let client = http();
    let mut tasks = Vec::new();
    for i in 0..n {
        let (client, url, secret) = (
            client.clone(),
            gateways[i % gateways.len()].url("/v1/chat/completions"),
            secret.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            let response = client
                .post(url)
                .bearer_auth(secret)
                .json(&call_body("metered"))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            (status, body)
        }));
    }
    let (mut ok, mut refused) = (0, 0);
    for task in tasks {
        let (status, body) = task.await.unwrap();
        match status {
            200 => ok += 1,
            402 => {
                assert_eq!(body["error"]["code"], "budget_exceeded");
                assert_eq!(body["error"]["budget"]["scope"], "organization");
                refused += 1;
            }
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    (ok, refused)
}

async fn wait_no_holds(store: &Store) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let holds = store.outstanding_holds().await.unwrap();
        if holds == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{holds} holds remain");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn budget_view(gw: &Gateway) -> Value {
    let list = gw.admin_get("/admin/budgets").await;
    list["budgets"][0].clone()
}

const ORG_BUDGET_50_CALLS: &str = r#"
[[budgets]]
scope = "organization"
window = "monthly"
limit_usd = 0.35
"#;

#[tokio::test]
async fn exactly_the_affordable_calls_of_500_concurrent_succeed_on_sqlite() {
    let mock = mock(MockConfig {
        record: false,
        ..MockConfig::default()
    })
    .await;
    let gw = Gateway::start(&policy(&mock, "", ORG_BUDGET_50_CALLS));
    let (_, secret) = gw.create_key("*");
    let (ok, refused) = burst(&[&gw], &secret, 500).await;
    assert_eq!((ok, refused), (50, 450));
    let store = Store::open(&gw.db_url).await.unwrap();
    wait_no_holds(&store).await;
    let view = budget_view(&gw).await;
    assert_eq!(view["current_window"]["spent_nanos"], 50 * CALL_NANOS);
    assert_eq!(view["current_window"]["reserved_nanos"], 0);
    assert_eq!(view["current_window"]["remaining_nanos"], 0);
    let rows = gw.wait_rows(500).await;
    let denied: Vec<_> = rows.iter().filter(|r| r["status"] == 402).collect();
    assert_eq!(denied.len(), 450);
    assert!(
        denied
            .iter()
            .all(|r| r["denied_stage"] == "reserve" && r["error_code"] == "budget_exceeded")
    );
}

#[tokio::test]
async fn two_replicas_on_one_postgres_never_overspend_together() {
    let db = match PgDatabase::create() {
        Ok(db) => db,
        Err(why) => {
            return skip(
                "two_replicas_on_one_postgres_never_overspend_together",
                &why,
            );
        }
    };
    let mock = mock(MockConfig {
        record: false,
        ..MockConfig::default()
    })
    .await;
    let toml = policy(&mock, "", ORG_BUDGET_50_CALLS);
    let a = Gateway::start_db(&toml, &[], &[], &db.url);
    let b = Gateway::start_db(&toml, &[], &[], &db.url);
    let (_, secret) = a.create_key("*");
    let (ok, refused) = burst(&[&a, &b], &secret, 500).await;
    assert_eq!((ok, refused), (50, 450));
    let store = Store::open(&db.url).await.unwrap();
    wait_no_holds(&store).await;
    let view = budget_view(&b).await;
    assert_eq!(view["current_window"]["spent_nanos"], 50 * CALL_NANOS);
    assert_eq!(view["current_window"]["reserved_nanos"], 0);
    // Both replicas wrote every usage record into the shared store.
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.usage_count().await.unwrap() < 500 {
        assert!(
            Instant::now() < deadline,
            "usage rows: {}",
            store.usage_count().await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(store.usage_count().await.unwrap(), 500);
}

#[tokio::test]
async fn a_key_revoked_on_one_replica_is_refused_by_the_other_within_a_second() {
    let db = match PgDatabase::create() {
        Ok(db) => db,
        Err(why) => {
            return skip(
                "a_key_revoked_on_one_replica_is_refused_by_the_other_within_a_second",
                &why,
            );
        }
    };
    let mock = mock(MockConfig::default()).await;
    let toml = policy(&mock, "", "");
    let a = Gateway::start_db(&toml, &[], &[], &db.url);
    let b = Gateway::start_db(&toml, &[], &[], &db.url);
    let (id, secret) = a.create_key("*");
    assert_eq!(
        call(&b, &secret, &call_body("metered")).await.status(),
        200,
        "cached on b"
    );
    let revoked_at = Instant::now();
    assert!(a.keys(&["revoke", &id]).status.success());
    loop {
        let response = call(&b, &secret, &call_body("metered")).await;
        if response.status() == 401 {
            expect_error(response, 401, "api_key_revoked").await;
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(1),
            "b still serves a revoked key"
        );
    }
    println!(
        "revocation visible on the other replica after {:?}",
        revoked_at.elapsed()
    );
}

#[tokio::test]
async fn settlement_leaves_exactly_limit_minus_recorded_costs() {
    let mock = mock(MockConfig::default()).await;
    let budget = "[[budgets]]\nscope = \"team\"\nsubject = \"research\"\nwindow = \"daily\"\nlimit_usd = 5.0\n";
    let gw = Gateway::start(&policy(&mock, "", budget));
    let (_, secret) = gw.create_key_with(&["--models", "*", "--team", "research"]);
    for i in 0..12 {
        let mut body = call_body("priced");
        body["max_tokens"] = json!(1000 + i);
        assert_eq!(call(&gw, &secret, &body).await.status(), 200);
    }
    let store = Store::open(&gw.db_url).await.unwrap();
    wait_no_holds(&store).await;
    let rows = gw.wait_rows(12).await;
    let recorded: i64 = rows.iter().map(|r| r["cost_nanos"].as_i64().unwrap()).sum();
    assert_eq!(recorded, 12 * (9 * 2500 + 2 * 1250 + 7 * 10_000));
    let view = budget_view(&gw).await;
    assert_eq!(
        view["current_window"]["remaining_nanos"],
        5_000_000_000 - recorded
    );
    assert_eq!(view["current_window"]["reserved_nanos"], 0);
    // A key of another team is not held against it.
    let (_, other) = gw.create_key_with(&["--models", "*", "--team", "marketing"]);
    assert_eq!(call(&gw, &other, &call_body("priced")).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        budget_view(&gw).await["current_window"]["remaining_nanos"],
        5_000_000_000 - recorded
    );
}

#[tokio::test]
async fn upstream_failure_bills_nothing_and_releases_the_hold() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&policy(
        &mock,
        "",
        "[[budgets]]\nscope = \"organization\"\nwindow = \"daily\"\nlimit_usd = 1.0\n",
    ));
    let (_, secret) = gw.create_key("*");
    expect_error(
        call(&gw, &secret, &call_body("broken")).await,
        502,
        "upstream_error",
    )
    .await;
    let store = Store::open(&gw.db_url).await.unwrap();
    wait_no_holds(&store).await;
    let view = budget_view(&gw).await;
    assert_eq!(view["current_window"]["spent_nanos"], 0);
    assert_eq!(view["current_window"]["reserved_nanos"], 0);
}

#[tokio::test]
async fn a_client_disconnect_mid_stream_is_billed_for_what_was_produced() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&policy(
        &mock,
        "",
        "[[budgets]]\nscope = \"organization\"\nwindow = \"daily\"\nlimit_usd = 1.0\n",
    ));
    let (_, secret) = gw.create_key("*");
    let body = json!({"model": "stall", "stream": true, "max_tokens": 500,
                      "messages": [{"role": "user", "content": "tell me a long story about budgets"}]});
    let response = call(&gw, &secret, &body).await;
    let id = request_id(&response);
    let mut stream = response.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("chat.completion.chunk"));
    drop(stream);
    let row = gw.row_for(&id).await;
    assert_eq!(row["stream_status"], "client_disconnected");
    let cost = row["cost_nanos"].as_i64().unwrap();
    assert!(
        row["input_tokens"].as_i64().unwrap() > 0,
        "the prompt was billed: {row}"
    );
    assert!(cost > 0);
    let store = Store::open(&gw.db_url).await.unwrap();
    wait_no_holds(&store).await;
    let view = budget_view(&gw).await;
    assert_eq!(
        view["current_window"]["spent_nanos"], cost,
        "the budget was charged what the record says"
    );
    assert_eq!(view["current_window"]["reserved_nanos"], 0);
}

// Holds live in the store on PostgreSQL (on SQLite they live in the one gateway's memory and
// die with it: see cases::ledger).
#[tokio::test]
async fn holds_of_a_killed_gateway_are_reclaimed_after_expiry() {
    let db = match PgDatabase::create() {
        Ok(db) => db,
        Err(why) => return skip("holds_of_a_killed_gateway_are_reclaimed_after_expiry", &why),
    };
    let mock = mock(MockConfig {
        latency: Duration::from_secs(3),
        ..MockConfig::default()
    })
    .await;
    let toml = policy(
        &mock,
        "hold_ttl_secs = 1",
        "[[budgets]]\nscope = \"organization\"\nwindow = \"daily\"\nlimit_usd = 1.0\n",
    );
    let mut first = Gateway::start_db(&toml, &[], &[], &db.url);
    let (_, secret) = first.create_key("*");
    let client = http();
    for _ in 0..5 {
        let (client, url, secret) = (
            client.clone(),
            first.url("/v1/chat/completions"),
            secret.clone(),
        );
        tokio::spawn(async move {
            let _ = client
                .post(url)
                .bearer_auth(secret)
                .json(&call_body("priced"))
                .send()
                .await;
        });
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while mock.count() < 5 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.kill();
    let store = Store::open(&first.db_url).await.unwrap();
    assert_eq!(
        store.outstanding_holds().await.unwrap(),
        5,
        "the killed gateway left its holds"
    );
    // Any gateway on the store reclaims them once they expire.
    let second = Gateway::start_db(&toml, &[], &[], &first.db_url);
    wait_no_holds(&store).await;
    assert_eq!(
        budget_view(&second).await["current_window"]["reserved_nanos"],
        0
    );
}

#[tokio::test]
async fn a_daily_budget_rolls_over_at_midnight() {
    let mock = mock(MockConfig::default()).await;
    let toml = policy(
        &mock,
        "",
        "[[budgets]]\nscope = \"organization\"\nwindow = \"daily\"\nlimit_usd = 0.014\n",
    );
    let gw = Gateway::start_with(&toml, &[], &["--unsafe-test-clock"]);
    let (_, secret) = gw.create_key("*");
    for _ in 0..2 {
        assert_eq!(
            call(&gw, &secret, &call_body("metered")).await.status(),
            200
        );
    }
    let refused = call(&gw, &secret, &call_body("metered")).await;
    assert_eq!(refused.status(), 402);
    let body: Value = refused.json().await.unwrap();
    let resets_at = body["error"]["budget"]["resets_at_ms"].as_i64().unwrap();
    assert_eq!(body["error"]["budget"]["window"], "daily");
    assert_eq!(body["error"]["budget"]["remaining_nanos"], 0);
    let now = tollgate::clock::now_ms();
    let (status, _) = gw
        .admin_send(
            reqwest::Method::POST,
            "/admin/test/clock",
            &json!({"offset_ms": resets_at - now + 1000}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        call(&gw, &secret, &call_body("metered")).await.status(),
        200,
        "a new day, a new budget"
    );
}

#[tokio::test]
async fn quotas_answer_429_with_retry_after_scope_and_limit() {
    let mock = mock(MockConfig::default()).await;
    let quotas = r#"
[[quotas]]
scope = "key"
metric = "requests"
limit = 3
window = "minute"

[[quotas]]
scope = "model"
subject = "priced"
metric = "total_tokens"
limit = 20000
window = "day"
"#;
    let gw = Gateway::start_with(&policy(&mock, "", quotas), &[], &["--unsafe-test-clock"]);
    let (_, secret) = gw.create_key("*");
    for _ in 0..3 {
        assert_eq!(
            call(&gw, &secret, &call_body("metered")).await.status(),
            200
        );
    }
    let limited = call(&gw, &secret, &call_body("metered")).await;
    assert_eq!(limited.status(), 429);
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after));
    let body: Value = limited.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(body["error"]["scope"], "key");
    assert_eq!(body["error"]["limit"], "requests_per_minute");
    assert_eq!(body["error"]["retry_after"], retry_after);
    // Another key has its own counter.
    let (_, other) = gw.create_key("*");
    assert_eq!(call(&gw, &other, &call_body("metered")).await.status(), 200);
    // A minute later the window has rolled.
    gw.admin_send(
        reqwest::Method::POST,
        "/admin/test/clock",
        &json!({"offset_ms": 61_000}),
    )
    .await;
    assert_eq!(
        call(&gw, &secret, &call_body("metered")).await.status(),
        200
    );

    // A token quota on one model: a request whose worst case does not fit is refused.
    let mut big = call_body("priced");
    big["max_tokens"] = json!(25_000);
    let refused = call(&gw, &other, &big).await;
    assert_eq!(refused.status(), 429);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "quota_exceeded");
    assert_eq!(body["error"]["limit"], "total_tokens_per_day");
    assert_eq!(body["error"]["scope"], "model");
    assert_eq!(call(&gw, &other, &call_body("priced")).await.status(), 200);
}

#[tokio::test]
async fn a_concurrency_limit_caps_requests_in_flight() {
    let mock = mock(MockConfig {
        latency: Duration::from_millis(700),
        ..MockConfig::default()
    })
    .await;
    let quota = "[[quotas]]\nscope = \"organization\"\nmetric = \"concurrency\"\nlimit = 2\n";
    let gw = Gateway::start(&policy(&mock, "", quota));
    let (_, secret) = gw.create_key("*");
    let client = http();
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let (client, url, secret) = (
            client.clone(),
            gw.url("/v1/chat/completions"),
            secret.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let response = client
                .post(url)
                .bearer_auth(secret)
                .json(&call_body("metered"))
                .send()
                .await
                .unwrap();
            let retry = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            (status, retry, body)
        }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        let (status, retry, body) = task.await.unwrap();
        if status == 429 {
            assert_eq!(retry.as_deref(), Some("1"));
            assert_eq!(body["error"]["limit"], "concurrency");
        }
        statuses.push(status);
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 429, 429, 429]);
    let store = Store::open(&gw.db_url).await.unwrap();
    wait_no_holds(&store).await;
    assert_eq!(
        call(&gw, &secret, &call_body("metered")).await.status(),
        200,
        "leases were released"
    );
}

#[tokio::test]
async fn ip_and_payload_limits_apply_per_team() {
    let mock = mock(MockConfig::default()).await;
    let limits = r#"
[[limits]]
scope = "team"
subject = "contractors"
ip_allow = ["10.0.0.0/8"]

[[limits]]
scope = "team"
subject = "small"
max_request_bytes = 300
"#;
    let gw = Gateway::start(&policy(&mock, "", limits));
    let (_, contractor) = gw.create_key_with(&["--models", "*", "--team", "contractors"]);
    let refused = call(&gw, &contractor, &call_body("metered")).await;
    assert_eq!(refused.status(), 403, "not a 429: waiting does not help");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "ip_not_allowed");
    assert_eq!(body["error"]["limit"], "ip");
    assert_eq!(body["error"]["scope"], "team");
    let (_, small) = gw.create_key_with(&["--models", "*", "--team", "small"]);
    assert_eq!(call(&gw, &small, &call_body("metered")).await.status(), 200);
    let mut big = call_body("metered");
    big["messages"][0]["content"] = json!("x".repeat(400));
    expect_error(call(&gw, &small, &big).await, 413, "request_too_large").await;
    let (_, anyone) = gw.create_key("*");
    assert_eq!(call(&gw, &anyone, &big).await.status(), 200);
}

#[tokio::test]
async fn budgets_managed_with_the_cli_apply_while_the_gateway_serves() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&policy(&mock, "", ""));
    let (key_id, secret) = gw.create_key("*");
    assert_eq!(
        call(&gw, &secret, &call_body("metered")).await.status(),
        200
    );
    let out = gw.budgets(&[
        "set",
        "--scope",
        "key",
        "--subject",
        &key_id,
        "--window",
        "lifetime",
        "--limit-usd",
        "0.007",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(created["limit_nanos"], CALL_NANOS);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen_refusal = false;
    while Instant::now() < deadline && !seen_refusal {
        let a = call(&gw, &secret, &call_body("metered")).await.status();
        seen_refusal = a == 402;
    }
    assert!(seen_refusal, "the stored budget was applied");
    // The CLI reads the store, which the embedded ledger writes behind, with the usage rows, in
    // batches: the settled spend appears there within a batch, not necessarily at once.
    let deadline = Instant::now() + Duration::from_secs(5);
    let spent = loop {
        let listed = gw.budgets(&["list", "--json"]);
        let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
        let spent = listed[0]["current_window"]["spent_nanos"].clone();
        if spent == CALL_NANOS || Instant::now() > deadline {
            break spent;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(spent, CALL_NANOS);
    let show = gw.budgets(&["show", created["id"].as_str().unwrap()]);
    assert!(show.status.success());
    assert!(
        !gw.budgets(&[
            "set",
            "--scope",
            "galaxy",
            "--subject",
            "x",
            "--window",
            "daily",
            "--limit-usd",
            "1"
        ])
        .status
        .success()
    );
    // The admin API manages the same budgets.
    let (status, updated) = gw
        .admin_send(
            reqwest::Method::PUT,
            "/admin/budgets",
            &json!({"scope": "key", "subject": key_id, "window": "lifetime", "limit_usd": 1.0}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        updated["id"], created["id"],
        "same (scope, subject, window): updated in place"
    );
    assert_eq!(
        call(&gw, &secret, &call_body("metered")).await.status(),
        200
    );
}

// The proxy runs on the test's runtime while the harness blocks on child processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_fails_closed_with_503_and_recovers() {
    let db = match PgDatabase::create() {
        Ok(db) => db,
        Err(why) => return skip("a_store_outage_fails_closed_with_503_and_recovers", &why),
    };
    let proxy = TcpProxy::start(crate::common::pg_addr()).await;
    let mock = mock(MockConfig::default()).await;
    let toml = policy(
        &mock,
        "",
        "[[budgets]]\nscope = \"organization\"\nwindow = \"daily\"\nlimit_usd = 10.0\n",
    );
    let url = db.url_via(proxy.addr);
    let gw = Gateway::start_db(&toml, &[], &[], &url);
    let (_, secret) = gw.create_key("*");
    assert_eq!(
        call(&gw, &secret, &call_body("metered")).await.status(),
        200
    );
    let reached = mock.count();
    proxy.cut();
    let response = call(&gw, &secret, &call_body("metered")).await;
    expect_error(response, 503, "budget_unavailable").await;
    assert_eq!(mock.count(), reached, "nothing went upstream unbudgeted");
    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if call(&gw, &secret, &call_body("metered")).await.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the gateway did not recover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn access_rules_see_the_remaining_budget() {
    let mock = mock(MockConfig::default()).await;
    let budget = "[[budgets]]\nscope = \"organization\"\nwindow = \"daily\"\nlimit_usd = 0.014\n";
    let rule = "// Stop at half the budget.\nbudget.percent_used < 50.0 ? true : {\"allow\": false, \"reason\": \"half the budget is spent\"}\n";
    let gw = Gateway::start_with(
        &policy(&mock, "", budget),
        &[("access/half.cel", rule)],
        &[],
    );
    let (_, secret) = gw.create_key("*");
    assert_eq!(
        call(&gw, &secret, &call_body("metered")).await.status(),
        200
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let response = call(&gw, &secret, &call_body("metered")).await;
        if response.status() == 403 {
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], "policy_denied");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("half the budget is spent")
            );
            break;
        }
        // Until the first settlement lands the rule still sees 0% used.
        assert_eq!(response.status(), 200);
        assert!(Instant::now() < deadline, "the rule never saw the spend");
    }
}

#[tokio::test]
async fn budget_thresholds_notify_a_webhook_once_per_window() {
    let (hook, events) = webhook_sink().await;
    let mock = mock(MockConfig::default()).await;
    let extra = format!(
        "[notifications]\nwebhook_url = \"{hook}\"\n\n[[budgets]]\nscope = \"organization\"\nwindow = \"monthly\"\nlimit_usd = 0.028\nthresholds = [50, 100]\n"
    );
    let gw = Gateway::start(&policy(&mock, "", &extra));
    let (_, secret) = gw.create_key("*");
    for _ in 0..4 {
        assert_eq!(
            call(&gw, &secret, &call_body("metered")).await.status(),
            200
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while events.lock().unwrap().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "threshold events: {:?}",
            events.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut thresholds: Vec<i64> = events
        .lock()
        .unwrap()
        .iter()
        .map(|e| e["threshold_percent"].as_i64().unwrap())
        .collect();
    thresholds.sort_unstable();
    assert_eq!(thresholds, [50, 100], "each threshold once");
    let first = events.lock().unwrap()[0].clone();
    assert_eq!(first["event"], "budget_threshold");
    assert_eq!(first["scope"], "organization");
    let metrics = gw.metrics_text().await;
    assert!(
        metrics.contains("tollgate_budget_threshold_events_total 2"),
        "{metrics}"
    );
}
