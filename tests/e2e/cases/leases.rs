//! Leases on PostgreSQL: replicas admit from slices of the budget leased in the store, a
//! replica killed while holding a lease loses nothing but time (its lease expires and returns),
//! and the survivor then spends exactly the rest, with the stored spend equal to the stored
//! usage costs.

use std::time::{Duration, Instant};

use mock_upstream::{MockConfig, MockHandle};
use serde_json::{Value, json};
use sqlx::Row;
use tollgate::store::Store;

use crate::common::{Gateway, http, mock, postgres_or_skip, sample, webhook_sink};

/// One call of `metered`: 7 output tokens at 1000 USD/M, held and charged exactly.
const CALL_NANOS: i64 = 7_000_000;
/// The budget: exactly 200 calls.
const BUDGET_CALLS: i64 = 200;

fn policy(mock: &MockHandle, limit_usd: f64) -> String {
    let base = mock.base_url();
    format!(
        r#"
[server]
lease_ttl_secs = 1

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
limit_usd = {limit_usd}
"#
    )
}

fn call_body() -> Value {
    json!({"model": "metered", "max_tokens": 7, "messages": [{"role": "user", "content": "hello"}]})
}

/// `n` concurrent calls; their statuses.
async fn burst(gw: &Gateway, secret: &str, n: usize) -> Vec<u16> {
    let calls = (0..n).map(|_| call(gw, secret));
    futures_util::future::join_all(calls).await
}

async fn call(gw: &Gateway, secret: &str) -> u16 {
    http()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(secret)
        .json(&call_body())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// `(used, reserved)` of the organization budget's counter, and the sum of the stored usage
/// costs.
async fn spend_and_costs(url: &str) -> (i64, i64, i64) {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .unwrap();
    let row = sqlx::query(
        "SELECT COALESCE(SUM(used), 0)::BIGINT, COALESCE(SUM(reserved), 0)::BIGINT FROM counters WHERE counter_id LIKE 'budget:%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let costs: i64 = sqlx::query("SELECT COALESCE(SUM(cost_nanos), 0)::BIGINT FROM usage_records")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    pool.close().await;
    (row.get(0), row.get(1), costs)
}

#[tokio::test]
async fn a_replica_killed_holding_a_lease_leaves_the_rest_to_the_other_after_expiry() {
    let Some(db) = postgres_or_skip(
        "a_replica_killed_holding_a_lease_leaves_the_rest_to_the_other_after_expiry",
    ) else {
        return;
    };
    let mock = mock(MockConfig {
        record: false,
        ..MockConfig::default()
    })
    .await;
    let toml = policy(&mock, 1.4);
    let mut a = Gateway::start_db(&toml, &[], &[], &db.url);
    let b = Gateway::start_db(&toml, &[], &[], &db.url);
    let (_, secret) = a.create_key("*");
    let store = Store::open(&db.url).await.unwrap();

    // `a` serves (a few calls at a time: a rare counter is not worth a lease) until it holds
    // a lease with room left in it.
    let mut served_by_a = 0;
    for _ in 0..8 {
        assert_eq!(burst(&a, &secret, 8).await, vec![200; 8]);
        served_by_a += 8;
        if store.leased_total().await.unwrap() > 0 {
            break;
        }
    }
    let leased = store.leased_total().await.unwrap();
    assert!(leased > 0, "a took no lease after {served_by_a} calls");
    // Its calls are recorded and settled; what it holds now is its lease's unused part.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (used, _, costs) = spend_and_costs(&db.url).await;
        if used == served_by_a * CALL_NANOS && costs == used {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a's calls were not settled: {used} {costs}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        store.leased_total().await.unwrap() > 0,
        "a holds a lease when killed"
    );
    a.kill();

    // Its lease expires (1 s without renewal) and `b` returns it to the budget.
    let deadline = Instant::now() + Duration::from_secs(20);
    while store.leased_total().await.unwrap() > 0 {
        assert!(
            Instant::now() < deadline,
            "the dead replica's lease never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // `b` spends exactly the rest: the budget minus what `a` recorded.
    let (used_before, _, _) = spend_and_costs(&db.url).await;
    let mut served_by_b = 0;
    loop {
        match call(&b, &secret).await {
            200 => served_by_b += 1,
            402 => break,
            other => panic!("unexpected status {other}"),
        }
        assert!(served_by_b <= BUDGET_CALLS, "b served beyond the budget");
    }
    assert_eq!(
        used_before + served_by_b * CALL_NANOS,
        BUDGET_CALLS * CALL_NANOS,
        "b served the rest exactly ({served_by_b} calls after {used_before} nanos)"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (used, reserved, costs) = spend_and_costs(&db.url).await;
        if used == BUDGET_CALLS * CALL_NANOS && costs == used {
            // Nothing is held once b's slices are back or spent.
            assert!(reserved >= 0);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stored spend {used} != usage costs {costs} (reserved {reserved})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn two_replicas_serve_from_leases_and_return_them_when_idle() {
    let Some(db) = postgres_or_skip("two_replicas_serve_from_leases_and_return_them_when_idle")
    else {
        return;
    };
    let mock = mock(MockConfig {
        record: false,
        ..MockConfig::default()
    })
    .await;
    let toml = policy(&mock, 7.0);
    let a = Gateway::start_db(&toml, &[], &[], &db.url);
    let b = Gateway::start_db(&toml, &[], &[], &db.url);
    let (_, secret) = a.create_key("*");
    // Bursts on both replicas (a rare counter is not worth a lease) until calls are admitted
    // from leases; the usage trail says where each hold came from.
    let mut served = 0_i64;
    let mut from_lease = 0;
    for _ in 0..40 {
        let (on_a, on_b) = tokio::join!(burst(&a, &secret, 8), burst(&b, &secret, 8));
        assert_eq!((on_a, on_b), (vec![200; 8], vec![200; 8]));
        served += 16;
        from_lease = reserve_froms(&db.url)
            .await
            .iter()
            .filter(|f| *f == "lease")
            .count();
        if from_lease > 0 {
            break;
        }
    }
    assert!(from_lease > 0, "no call was admitted from a lease");
    // Each replica times its lease keeper's ticks (how late, how long) and its usage batches.
    for gw in [&a, &b] {
        let metrics = gw.metrics().await;
        for name in [
            "tollgate_lease_keeper_tick_lag_seconds_count",
            "tollgate_lease_keeper_tick_seconds_count",
            "tollgate_usage_batch_seconds_count",
        ] {
            assert!(metrics.get(name).is_some_and(|n| *n > 0.0), "{name}");
        }
    }
    // Idle slices go back: nothing stays reserved, and the spend is the usage costs.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (used, reserved, costs) = spend_and_costs(&db.url).await;
        if reserved == 0 && used == served * CALL_NANOS && costs == used {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "used {used}, reserved {reserved}, costs {costs}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(store_leased(&db.url).await, 0);
    // Every row is stored now: the replicas' counts of holds, and of those that took a store
    // round trip, are the usage trail's.
    let (mut held, mut in_store) = (0.0, 0.0);
    for gw in [&a, &b] {
        let metrics = gw.metrics().await;
        held += metrics["tollgate_budget_holds_total"];
        in_store += metrics["tollgate_budget_store_holds_total"];
    }
    let froms = reserve_froms(&db.url).await;
    assert_eq!(held, served as f64);
    assert_eq!(froms.len() as i64, served);
    let stored = froms.iter().filter(|f| *f == "store").count();
    assert_eq!(in_store, stored as f64, "{froms:?}");
    assert!(stored > 0 && stored < froms.len(), "{froms:?}");
}

/// Where each stored usage row's hold came from (`lease` or `store`).
async fn reserve_froms(url: &str) -> Vec<String> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .unwrap();
    let rows = sqlx::query("SELECT decisions FROM usage_records")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    rows.iter()
        .filter_map(|r| {
            let decisions: Value = serde_json::from_str(&r.get::<String, _>(0)).ok()?;
            let reserve = decisions
                .as_array()?
                .iter()
                .find(|d| d["stage"] == "reserve")?;
            reserve["from"].as_str().map(str::to_string)
        })
        .collect()
}

/// A busy quota's next window is leased shortly before it starts: with a per-second quota, the
/// first requests of each new second are admitted from a slice already granted, not held in
/// the store one by one until a keeper tick has seen the new window's demand.
#[tokio::test]
async fn a_busy_quota_has_its_next_window_leased_before_it_starts() {
    let name = "a_busy_quota_has_its_next_window_leased_before_it_starts";
    let Some(db) = postgres_or_skip(name) else {
        return;
    };
    let mock = mock(MockConfig {
        record: false,
        ..MockConfig::default()
    })
    .await;
    let toml = format!(
        r#"{}
[[quotas]]
name = "per-second"
scope = "key"
metric = "requests"
limit = 1000000
window = "second"
"#,
        policy(&mock, 1_000_000.0)
    );
    let gw = Gateway::start_db(&toml, &[], &[], &db.url);
    let (_, secret) = gw.create_key("*");
    // Four callers in a loop for `for_ms`; every call must succeed.
    let load = |for_ms: u64| {
        let (gw, secret) = (&gw, &secret);
        async move {
            let until = Instant::now() + Duration::from_millis(for_ms);
            let callers = (0..4).map(|_| async move {
                let mut n = 0_u64;
                while Instant::now() < until {
                    assert_eq!(call(gw, secret).await, 200);
                    n += 1;
                }
                n
            });
            futures_util::future::join_all(callers)
                .await
                .iter()
                .sum::<u64>()
        }
    };
    // Warm up: the current windows become busy enough to lease.
    load(1_500).await;
    let before = gw.metrics().await["tollgate_budget_store_holds_total"];
    // Four seconds: at least three new windows of the per-second quota.
    let calls = load(4_000).await;
    let in_store = gw.metrics().await["tollgate_budget_store_holds_total"] - before;
    assert!(calls >= 40, "only {calls} calls in 4 s");
    // Without leasing ahead, each new second's requests held in the store until the keeper
    // had seen 8 of them and a grant had come back: about a quarter of the calls (39 of 162).
    // A loaded machine may still send a few to the store (a late keeper tick), not a tenth.
    assert!(
        in_store * 10.0 < calls as f64,
        "{in_store} of {calls} calls held in the store across 4 windows"
    );
}

async fn store_leased(url: &str) -> i64 {
    Store::open(url)
        .await
        .unwrap()
        .leased_total()
        .await
        .unwrap()
}

/// Budget thresholds on the shared store are checked on the stored spend after the usage
/// writer commits. Each check reads the counter from PostgreSQL, so they are coalesced per
/// budget window: a busy budget costs one read per window and check delay, not one per request
/// (a read per request was a quarter of a replica's CPU under load). The events still fire once
/// per threshold.
#[tokio::test]
async fn budget_threshold_checks_on_postgres_are_coalesced_and_notify_once() {
    let name = "budget_threshold_checks_on_postgres_are_coalesced_and_notify_once";
    let Some(db) = postgres_or_skip(name) else {
        return;
    };
    let (hook, events) = webhook_sink().await;
    let mock = mock(MockConfig {
        record: false,
        ..MockConfig::default()
    })
    .await;
    // 200 calls' worth; thresholds at 25% and 50% (50 and 100 calls).
    let limit_usd = BUDGET_CALLS as f64 * CALL_NANOS as f64 / 1e9;
    let toml = format!(
        "{}\n[notifications]\nwebhook_url = \"{hook}\"\n",
        policy(&mock, limit_usd).replace("limit_usd =", "thresholds = [25, 50]\nlimit_usd =")
    );
    let gw = Gateway::start_db(&toml, &[], &[], &db.url);
    let (_, secret) = gw.create_key("*");
    let calls = 120;
    for _ in 0..calls / 20 {
        assert_eq!(burst(&gw, &secret, 20).await, vec![200; 20]);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while events.lock().unwrap().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "threshold events: {:?}",
            events.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Later checks of the same window find the thresholds notified already.
    assert_eq!(burst(&gw, &secret, 20).await, vec![200; 20]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut thresholds: Vec<i64> = events
        .lock()
        .unwrap()
        .iter()
        .map(|e| e["threshold_percent"].as_i64().unwrap())
        .collect();
    thresholds.sort_unstable();
    assert_eq!(thresholds, [25, 50], "each threshold once");
    let reads = sample(&gw.metrics().await, "tollgate_budget_threshold_reads_total");
    assert!(
        reads >= 1.0 && reads < f64::from(calls + 20) / 4.0,
        "{reads} store reads for {} settled calls",
        calls + 20
    );
}
