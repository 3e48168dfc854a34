//! Providers that misbehave, on command of the mock (the model id): for each fault the client
//! gets a failover answer or a clean error within the configured time (connect, first-byte,
//! idle and total timeouts), every request has its usage row and no budget hold is left behind;
//! rounds of faults leave the gateway's file descriptors, threads, async tasks and memory where
//! they were.

use std::time::{Duration, Instant};

use mock_upstream::{MockConfig, MockHandle};
use serde_json::{Value, json};
use tollgate::store::Store;

use crate::common::{Gateway, http, mock, request_id};

/// First-byte and idle timeout of the faulty deployments (the mock's `mock-slow` takes 2 s,
/// `mock-hang` 60 s).
const TIMEOUT_MS: u64 = 1000;

/// Total timeout of the faulty deployments (`mock-drip` drips for about 20 s).
const TOTAL_MS: u64 = 3000;

/// (model id the mock obeys, what the client gets from it alone).
const FAULTS: &[(&str, Expect)] = &[
    ("mock-500", Expect::Error(502, "upstream_error")),
    ("mock-429", Expect::Passed(429)),
    ("refused", Expect::Error(502, "upstream_error")),
    ("mock-401", Expect::Error(502, "upstream_error")),
    ("mock-slow", Expect::Error(504, "upstream_timeout")),
    ("mock-hang", Expect::Error(504, "upstream_timeout")),
    ("mock-drip", Expect::Error(504, "upstream_timeout")),
    ("mock-reset-mid-body", Expect::Error(502, "upstream_error")),
    ("mock-malformed-json", Expect::Error(502, "upstream_error")),
];

#[derive(Debug, Clone, Copy)]
enum Expect {
    /// A gateway error with this status and code.
    Error(u16, &'static str),
    /// The provider's own status, passed through.
    Passed(u16),
}

/// Faults that happen before the provider's headers: the next deployment can answer instead.
const BEFORE_HEADERS: &[&str] = &[
    "mock-500",
    "mock-429",
    "refused",
    "mock-401",
    "mock-slow",
    "mock-hang",
];

/// Faults that take a timeout to show (left out of the repeated rounds).
const SLOW: &[&str] = &["mock-slow", "mock-hang", "mock-drip"];

fn name(fault: &str) -> String {
    fault.trim_start_matches("mock-").to_string()
}

fn policy(mock: &MockHandle) -> String {
    let base = mock.base_url();
    let mut toml = format!(
        r#"
[providers.mock]
family = "openai"
base_url = "{base}"
connect_timeout_ms = 1000
first_byte_timeout_ms = {TIMEOUT_MS}
idle_timeout_ms = {TIMEOUT_MS}
total_timeout_ms = {TOTAL_MS}

[providers.refused]
family = "openai"
base_url = "http://127.0.0.1:1/v1"
connect_timeout_ms = 1000
timeout_ms = {TIMEOUT_MS}

[models.healthy]
provider = "mock"
upstream_model = "upstream-healthy"
pricing = {{ input_per_mtok = 1.0, output_per_mtok = 2.0 }}

[models.stall]
provider = "mock"
upstream_model = "mock-stall-stream"
pricing = {{ input_per_mtok = 1.0, output_per_mtok = 2.0 }}

[models.truncated]
provider = "mock"
upstream_model = "mock-truncated-sse"
pricing = {{ input_per_mtok = 1.0, output_per_mtok = 2.0 }}

[models.reset-stream]
provider = "mock"
upstream_model = "mock-reset-mid-body"
pricing = {{ input_per_mtok = 1.0, output_per_mtok = 2.0 }}

[models.slow-stream]
provider = "mock"
upstream_model = "mock-slow-stream"
pricing = {{ input_per_mtok = 1.0, output_per_mtok = 2.0 }}

[[budgets]]
scope = "organization"
window = "monthly"
limit_usd = 1000.0
"#
    );
    for (fault, _) in FAULTS {
        let name = name(fault);
        let provider = if *fault == "refused" {
            "refused"
        } else {
            "mock"
        };
        toml.push_str(&format!(
            "\n[models.{name}]\nprovider = \"{provider}\"\nupstream_model = \"{fault}\"\npricing = {{ input_per_mtok = 1.0, output_per_mtok = 2.0 }}\n\n[groups.{name}-then-healthy]\ndeployments = [{{ model = \"{name}\", priority = 0 }}, {{ model = \"healthy\", priority = 1 }}]\n"
        ));
    }
    toml
}

async fn chat(gw: &Gateway, secret: &str, model: &str, stream: bool) -> reqwest::Response {
    http()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(secret)
        .json(&json!({"model": model, "stream": stream, "max_tokens": 50,
                      "messages": [{"role": "user", "content": "hello"}]}))
        .send()
        .await
        .unwrap()
}

/// Tasks alive in the gateway's async runtime (from `/metrics`).
async fn tasks(gw: &Gateway) -> usize {
    let text = gw.metrics_text().await;
    text.lines()
        .find_map(|l| l.strip_prefix("tollgate_runtime_alive_tasks "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no task count in /metrics:\n{text}"))
}

/// (open file descriptors, threads, resident KiB) of the gateway process.
fn footprint(gw: &Gateway) -> (usize, usize, usize) {
    let proc = format!("/proc/{}", gw.pid());
    let fds = std::fs::read_dir(format!("{proc}/fd")).unwrap().count();
    let status = std::fs::read_to_string(format!("{proc}/status")).unwrap();
    let field = |name: &str| -> usize {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    (fds, field("Threads:"), field("VmRSS:"))
}

async fn wait_no_holds(gw: &Gateway) {
    let store = Store::open(&gw.db_url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let holds = store.outstanding_holds().await.unwrap();
        if holds == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{holds} holds remain");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    store.close().await;
}

#[tokio::test]
async fn every_fault_ends_in_a_clean_error_or_a_failover_with_its_row_and_no_hold() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&policy(&mock));
    let (_, secret) = gw.create_key("*");
    // The first budgeted call may wait for the tokenizer to load: not part of any fault's time.
    assert_eq!(chat(&gw, &secret, "healthy", false).await.status(), 200);
    let mut ids = Vec::new();
    for (fault, expect) in FAULTS {
        let started = Instant::now();
        let response = chat(&gw, &secret, &name(fault), false).await;
        let elapsed = started.elapsed();
        assert!(
            elapsed < Duration::from_millis(TOTAL_MS + 3000),
            "{fault}: answered after {elapsed:?}"
        );
        let status = response.status().as_u16();
        ids.push(request_id(&response));
        let body: Value = response.json().await.unwrap_or(Value::Null);
        match expect {
            Expect::Error(want, code) => {
                assert_eq!(status, *want, "{fault}: {body}");
                assert_eq!(body["error"]["code"], *code, "{fault}: {body}");
                let text = body.to_string();
                assert!(!text.contains("127.0.0.1"), "{fault} leaks: {text}");
            }
            Expect::Passed(want) => assert_eq!(status, *want, "{fault}: {body}"),
        }
        // With a healthy deployment behind it, a fault before the headers is invisible.
        if BEFORE_HEADERS.contains(fault) {
            let response = chat(
                &gw,
                &secret,
                &format!("{}-then-healthy", name(fault)),
                false,
            )
            .await;
            assert_eq!(response.status(), 200, "{fault} fails over");
            ids.push(request_id(&response));
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["model"], "upstream-healthy", "{fault}");
        }
    }
    for id in &ids {
        let row = gw.row_for(id).await;
        assert_eq!(&row["request_id"], id);
    }
    wait_no_holds(&gw).await;
}

#[tokio::test]
async fn repeated_faults_leak_no_connections_threads_or_memory() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&policy(&mock));
    let (_, secret) = gw.create_key("*");
    let round = || async {
        for (fault, _) in FAULTS {
            if !SLOW.contains(fault) {
                let _ = chat(&gw, &secret, &name(fault), false).await.bytes().await;
            }
        }
        for model in ["reset-stream", "truncated", "healthy"] {
            let _ = chat(&gw, &secret, model, true).await.bytes().await;
        }
    };
    round().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (fds, threads, rss_kib) = footprint(&gw);
    let tasks_before = tasks(&gw).await;
    for _ in 0..10 {
        round().await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (fds_after, threads_after, rss_after) = footprint(&gw);
    let tasks_after = tasks(&gw).await;
    println!(
        "after 10 rounds of faults: fds {fds} -> {fds_after}, threads {threads} -> {threads_after}, tasks {tasks_before} -> {tasks_after}, RSS {rss_kib} -> {rss_after} KiB"
    );
    assert!(
        tasks_after <= tasks_before + 4,
        "async tasks {tasks_before} -> {tasks_after}"
    );
    // Pooled upstream connections may differ by a few; a leak grows with every round.
    assert!(
        fds_after <= fds + 4,
        "file descriptors {fds} -> {fds_after}"
    );
    assert!(
        threads_after <= threads + 4,
        "threads {threads} -> {threads_after}"
    );
    assert!(
        rss_after <= rss_kib + 16 * 1024,
        "resident memory {rss_kib} -> {rss_after} KiB"
    );
    wait_no_holds(&gw).await;
}

#[tokio::test]
async fn stream_faults_end_with_an_error_event_and_a_row_and_no_hold() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&policy(&mock));
    let (_, secret) = gw.create_key("*");
    assert_eq!(chat(&gw, &secret, "healthy", false).await.status(), 200);
    // (model, stream_status, whether the client sees an error event, whether text was produced)
    let cases = [
        ("stall", "idle_timeout", true, false),
        ("reset-stream", "upstream_error", true, true),
        ("truncated", "completed", false, true),
        ("slow-stream", "completed", false, true),
        // Every event within the idle time, the whole stream past the total time.
        ("drip", "total_timeout", true, true),
    ];
    for (model, stream_status, error_event, produced) in cases {
        let started = Instant::now();
        let response = chat(&gw, &secret, model, true).await;
        assert_eq!(response.status(), 200, "{model}");
        let id = request_id(&response);
        let text = response.text().await.unwrap();
        assert!(
            started.elapsed() < Duration::from_millis(TOTAL_MS + 5000),
            "{model}: {:?}",
            started.elapsed()
        );
        assert_eq!(text.contains("\"error\""), error_event, "{model}: {text}");
        let row = gw.row_for(&id).await;
        assert_eq!(row["stream_status"], stream_status, "{model}");
        assert_eq!(
            row["output_tokens"].as_i64().unwrap_or(0) > 0,
            produced,
            "{model}: what was produced is billed: {row}"
        );
    }
    wait_no_holds(&gw).await;
}
