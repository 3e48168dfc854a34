//! The embedded ledger: counters and holds in one gateway's memory, persisted with the usage
//! rows they come from, rebuilt at start, and one gateway per SQLite file.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mock_upstream::{MockConfig, MockHandle};
use serde_json::{Value, json};
use sqlx::Row;

use crate::common::{ADMIN_TOKEN, Gateway, bin, http, mock};

/// One call of `metered`: 7 output tokens at 1000 USD/M.
const CALL_NANOS: i64 = 7_000_000;

fn policy(mock: &MockHandle, budget_usd: f64) -> String {
    let base = mock.base_url();
    format!(
        r#"
[providers.mock]
family = "openai"
base_url = "{base}"
credential = {{ env = "TG_TEST_PROVIDER_KEY" }}
timeout_ms = 10000

[models.metered]
provider = "mock"
upstream_model = "upstream-metered"
pricing = {{ input_per_mtok = 0.0, output_per_mtok = 1000.0 }}

[[budgets]]
scope = "organization"
window = "monthly"
limit_usd = {budget_usd}
"#
    )
}

fn call_body() -> Value {
    json!({"model": "metered", "max_tokens": 7, "messages": [{"role": "user", "content": "hello"}]})
}

/// The stored `used` of the organization budget's counter and the sum of the stored usage costs.
async fn stored_spend_and_usage(db_url: &str) -> (i64, i64) {
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect(db_url)
        .await
        .unwrap();
    let used: i64 =
        sqlx::query("SELECT COALESCE(SUM(used), 0) FROM counters WHERE counter_id LIKE 'budget:%'")
            .fetch_one(&pool)
            .await
            .unwrap()
            .get(0);
    let costs: i64 = sqlx::query("SELECT COALESCE(SUM(cost_nanos), 0) FROM usage_records")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    pool.close().await;
    (used, costs)
}

#[tokio::test]
async fn after_a_crash_the_stored_spend_equals_the_stored_usage_costs_and_is_rebuilt() {
    let mock = mock(MockConfig {
        latency: Duration::from_millis(30),
        record: false,
        ..MockConfig::default()
    })
    .await;
    let toml = policy(&mock, 1.0);
    let mut first = Gateway::start(&toml);
    let (_, secret) = first.create_key("*");
    // Keep calls flowing while the gateway is killed.
    let client = http();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (client, url, secret) = (
            client.clone(),
            first.url("/v1/chat/completions"),
            secret.clone(),
        );
        tasks.push(tokio::spawn(async move {
            for _ in 0..200 {
                if client
                    .post(&url)
                    .bearer_auth(&secret)
                    .json(&call_body())
                    .send()
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while first.usage_rows().await.len() < 40 {
        assert!(Instant::now() < deadline, "calls did not flow");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill();
    for task in tasks {
        let _ = task.await;
    }
    let (used, costs) = stored_spend_and_usage(&first.db_url).await;
    assert!(costs >= 40 * CALL_NANOS, "{costs}");
    assert_eq!(used, costs, "stored spend = Σ stored usage costs");
    // A new gateway on the same file rebuilds the counter from the store, with nothing held.
    let second = Gateway::start_db(&toml, &[], &[], &first.db_url);
    let view = second.admin_get("/admin/budgets").await["budgets"][0]["current_window"].clone();
    assert_eq!(view["spent_nanos"], used, "{view}");
    assert_eq!(view["reserved_nanos"], 0);
}

#[tokio::test]
async fn a_second_gateway_on_the_same_sqlite_file_is_refused_with_a_clear_message() {
    let mock = mock(MockConfig::default()).await;
    let toml = policy(&mock, 1.0);
    let first = Gateway::start(&toml);
    let mut second = Command::new(bin())
        .args(["serve", "--policies"])
        .arg(first.policies())
        .args(["--listen", "127.0.0.1:0", "--database", &first.db_url])
        .env("TG_TEST_PROVIDER_KEY", "x")
        .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            let _ = second.wait();
            panic!("a second gateway is serving on the same SQLite file");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains("another tollgate gateway is already serving")
            && stderr.contains("PostgreSQL"),
        "{stderr}"
    );
    // The CLI still works on the file while the gateway serves.
    let (_, secret) = first.create_key("*");
    assert!(!secret.is_empty());
}

#[tokio::test]
async fn a_budget_lowered_through_the_admin_api_applies_to_the_next_request() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&policy(&mock, 1.0));
    let (key_id, secret) = gw.create_key("*");
    let call = || {
        http()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(&secret)
            .json(&call_body())
            .send()
    };
    assert_eq!(call().await.unwrap().status(), 200);
    let (status, _) = gw
        .admin_send(
            reqwest::Method::PUT,
            "/admin/budgets",
            &json!({"scope": "key", "subject": key_id, "window": "lifetime", "limit_usd": 0.001}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(call().await.unwrap().status(), 402, "no polling delay");
}
