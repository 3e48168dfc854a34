//! Records are never lost: rows the database refuses are repaired or kept as dead letters
//! without poisoning their batch, and records made while the store is away wait in the on-disk
//! journal (across a restart) until it answers.

use std::time::{Duration, Instant};

use mock_upstream::MockConfig;
use serde_json::{Value, json};
use sqlx::Row;
use tollgate::store::Store;

use crate::common::{Gateway, TcpProxy, chat_body, http, mock, postgres_or_skip, standard_policy};

/// One connection to the store at `url`, for statements the tests run beside the gateway.
async fn connect(url: &str) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .expect("connect")
}

/// Runs `sql` on the store at `url` (SQLite or PostgreSQL).
async fn exec(url: &str, sql: &str) {
    let pool = connect(url).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(&pool)
        .await
        .expect(sql);
    pool.close().await;
}

/// One integer from the store at `url`.
async fn scalar(url: &str, sql: &str) -> i64 {
    let pool = connect(url).await;
    let row = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(&pool)
        .await
        .expect(sql);
    pool.close().await;
    row.try_get(0).expect("integer")
}

async fn wait_count(store: &Store, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let count = store.usage_count().await.unwrap();
        if count >= n {
            assert_eq!(count, n, "more usage rows than answered requests");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {count} of {n} usage rows appeared"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `n` chat calls at once; returns the statuses.
async fn burst(gw: &Gateway, secret: &str, models: &[&str]) -> Vec<u16> {
    let client = http();
    let calls = models.iter().map(|model| {
        client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(secret)
            .json(&chat_body(model))
            .send()
    });
    let mut statuses = Vec::new();
    for response in futures_util::future::join_all(calls).await {
        let response = response.expect("answered");
        statuses.push(response.status().as_u16());
        let _ = response.bytes().await;
    }
    statuses
}

const REFUSE_POISON_SQLITE: &str = "CREATE TRIGGER refuse_poison BEFORE INSERT ON usage_records \
     WHEN NEW.requested_model = 'poison' BEGIN SELECT RAISE(ABORT, 'poison rows are refused'); END";

const REFUSE_POISON_PG: &str = "CREATE FUNCTION refuse_poison() RETURNS trigger AS $$ \
     BEGIN IF NEW.requested_model = 'poison' THEN RAISE EXCEPTION 'poison rows are refused'; END IF; \
     RETURN NEW; END; $$ LANGUAGE plpgsql; \
     CREATE TRIGGER refuse_poison BEFORE INSERT ON usage_records FOR EACH ROW EXECUTE FUNCTION refuse_poison()";

/// A row the database refuses sits in a batch with good rows: the good rows are stored, the
/// refused one is kept in `usage_dead_letters` with the error, and later rows still flow.
async fn refused_row_is_isolated(gw: &Gateway, secret: &str) {
    let store = Store::open(&gw.db_url).await.unwrap();
    let mut models = vec!["chat"; 20];
    models.insert(10, "poison");
    let statuses = burst(gw, secret, &models).await;
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 20);
    // The poison request was answered too (unknown model); only its row is refused.
    assert_eq!(statuses[10], 400);
    wait_count(&store, 20).await;
    let letters = store.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(
        letters[0].error.contains("poison rows are refused"),
        "{letters:?}"
    );
    let entry: Value = serde_json::from_str(&letters[0].entry).unwrap();
    assert_eq!(entry["record"]["requested_model"], "poison");
    assert_eq!(entry["record"]["status"], 400);
    // The writer is not stuck on it.
    assert_eq!(burst(gw, secret, &["chat"; 3]).await, [200; 3]);
    wait_count(&store, 23).await;
    assert_eq!(store.dead_letters().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_row_sqlite_refuses_becomes_a_dead_letter_and_its_batch_is_written() {
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start(&standard_policy(&mock));
    let (_, secret) = gw.create_key("*");
    exec(&gw.db_url, REFUSE_POISON_SQLITE).await;
    refused_row_is_isolated(&gw, &secret).await;
}

#[tokio::test]
async fn a_row_postgres_refuses_becomes_a_dead_letter_and_its_batch_is_written() {
    let test = "a_row_postgres_refuses_becomes_a_dead_letter_and_its_batch_is_written";
    let Some(db) = postgres_or_skip(test) else {
        return;
    };
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start_db(&standard_policy(&mock), &[], &[], &db.url);
    let (_, secret) = gw.create_key("*");
    exec(&db.url, REFUSE_POISON_PG).await;
    refused_row_is_isolated(&gw, &secret).await;
}

#[tokio::test]
async fn a_nul_in_a_model_name_does_not_stop_postgres_from_storing_rows() {
    let test = "a_nul_in_a_model_name_does_not_stop_postgres_from_storing_rows";
    let Some(db) = postgres_or_skip(test) else {
        return;
    };
    let mock = mock(MockConfig::default()).await;
    let gw = Gateway::start_db(&standard_policy(&mock), &[], &[], &db.url);
    let (_, secret) = gw.create_key("*");
    let store = Store::open(&db.url).await.unwrap();
    // PostgreSQL TEXT refuses U+0000: before sanitising, this row blocked the writer forever.
    let statuses = burst(&gw, &secret, &["gpt\u{0}evil", "chat", "chat"]).await;
    assert_eq!(statuses, [400, 200, 200]);
    wait_count(&store, 3).await;
    assert_eq!(burst(&gw, &secret, &["chat"]).await, [200]);
    wait_count(&store, 4).await;
    let repaired = scalar(
        &db.url,
        "SELECT COUNT(*) FROM usage_records WHERE requested_model = 'gpt\u{FFFD}evil' \
         AND decisions LIKE '%sanitized%'",
    )
    .await;
    assert_eq!(repaired, 1);
    assert!(store.dead_letters().await.unwrap().is_empty());
}

const TEAM_BUDGET: &str = r#"
[[budgets]]
scope = "team"
subject = "research"
window = "monthly"
limit_usd = 100
"#;

const ORG_BUDGET: &str = r#"
[[budgets]]
scope = "organization"
window = "monthly"
limit_usd = 100
"#;

// The proxy runs in this runtime while the harness blocks on the gateway's start: two workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_made_while_postgres_is_away_reach_it_after_a_restart_exactly_once() {
    let test = "records_made_while_postgres_is_away_reach_it_after_a_restart_exactly_once";
    let Some(db) = postgres_or_skip(test) else {
        return;
    };
    let proxy = TcpProxy::start(crate::common::pg_addr()).await;
    let mock = mock(MockConfig::default()).await;
    // Keys of team `research` are governed by its budget (a hold in the store per call); the
    // other key is not, and is answered without the store once it is cached.
    let toml = format!("{}{TEAM_BUDGET}", standard_policy(&mock));
    let mut gw = Gateway::start_db(&toml, &[], &[], &db.url_via(proxy.addr));
    let (_, governed) = gw.create_key_with(&["--models", "*", "--team", "research"]);
    let (_, free) = gw.create_key("*");
    let mut answered = 0;
    for secret in [&governed, &free] {
        let before = burst(&gw, secret, &["chat"; 2]).await;
        assert_eq!(before, [200; 2]);
        answered += before.len();
    }

    let store = Store::open(&db.url).await.unwrap();
    wait_count(&store, answered as i64).await;

    // The store goes away: governed calls fail closed, the others are answered and recorded.
    proxy.cut();
    let during = burst(&gw, &free, &["chat"; 12]).await;
    assert_eq!(during, [200; 12], "ungoverned calls are answered");
    answered += during.len();
    let refused = burst(&gw, &governed, &["chat"; 2]).await;
    assert_eq!(refused, [503; 2], "governed calls fail closed");
    answered += refused.len();

    // A restart during the outage: the gateway stops, its records are in the journal.
    gw.sigterm();
    assert!(gw.wait_exit(Duration::from_secs(40)).success());
    let journal = gw.dir.path().join("journal").join("usage.log");
    let journal_bytes = std::fs::metadata(&journal).map_or(0, |m| m.len());
    assert!(
        journal_bytes > 0,
        "the records wait in {}",
        journal.display()
    );

    // The store returns; the next start replays the journal before it serves.
    proxy.restore();
    gw.restart(&[]);
    for secret in [&governed, &free] {
        let after = burst(&gw, secret, &["chat"]).await;
        assert_eq!(after, [200]);
        answered += after.len();
    }

    wait_count(&store, answered as i64).await;
    assert_eq!(
        std::fs::metadata(&journal).map_or(0, |m| m.len()),
        0,
        "the replayed journal is cleared"
    );
    let ids = scalar(
        &db.url,
        "SELECT COUNT(DISTINCT request_id) FROM usage_records",
    )
    .await;
    assert_eq!(ids, answered as i64, "each request recorded exactly once");
    let unavailable = scalar(
        &db.url,
        "SELECT COUNT(*) FROM usage_records WHERE status = 503",
    )
    .await;
    assert_eq!(unavailable, 2);
    // Spend equals the sum of the stored costs; no hold is left.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let holds = store.outstanding_holds().await.unwrap();
        let spent = scalar(
            &db.url,
            "SELECT CAST(COALESCE(SUM(used), 0) AS BIGINT) FROM counters WHERE counter_id LIKE 'budget:%'",
        )
        .await;
        let costs = scalar(
            &db.url,
            "SELECT CAST(COALESCE(SUM(cost_nanos), 0) AS BIGINT) FROM usage_records WHERE team = 'research'",
        )
        .await;
        if holds == 0 && spent == costs {
            assert!(costs > 0);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "holds {holds}, spent {spent}, costs {costs}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(store.dead_letters().await.unwrap().is_empty());
}

// A gateway started while PostgreSQL is away is live but not ready, refuses with the
// family-native 503 (no URL, no password), connects and migrates in the background, then serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_started_while_postgres_is_away_becomes_ready_when_it_answers() {
    let test = "a_gateway_started_while_postgres_is_away_becomes_ready_when_it_answers";
    let Some(db) = postgres_or_skip(test) else {
        return;
    };
    let proxy = TcpProxy::start(crate::common::pg_addr()).await;
    proxy.cut();
    let mock = mock(MockConfig::default()).await;
    // Trust authentication ignores the password; it must show nowhere a client can read.
    let url = db.url_via(proxy.addr).replacen(
        "postgres://postgres@",
        "postgres://postgres:pw-not-to-leak@",
        1,
    );
    let mut gw = Gateway::start_db(&standard_policy(&mock), &[], &[], &url);
    let client = http();

    let live = client.get(gw.url("/healthz")).send().await.unwrap();
    assert_eq!(live.status(), 200, "live while the store is away");
    let ready = client.get(gw.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["checks"]["store"]["ok"], false);
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("not connected yet"),
        "{body}"
    );
    let chat = client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth("tg-any-key")
        .json(&chat_body("chat"))
        .send()
        .await
        .unwrap();
    let text = chat.text().await.unwrap();
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["error"]["code"], "store_unavailable", "{text}");
    let messages = client
        .post(gw.url("/v1/messages"))
        .header("x-api-key", "tg-any-key")
        .json(&json!({"model": "chat", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(messages.status(), 503);
    let anthropic: Value = messages.json().await.unwrap();
    assert_eq!(anthropic["type"], "error");
    assert_eq!(anthropic["error"]["code"], "store_unavailable");
    for leak in [
        "pw-not-to-leak",
        &proxy.addr.port().to_string(),
        "postgres://",
    ] {
        assert!(!text.contains(leak), "{leak} in {text}");
        assert!(
            !anthropic.to_string().contains(leak),
            "{leak} in {anthropic}"
        );
    }

    // The store comes back: the gateway connects, migrates and serves without a restart.
    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let ready = client.get(gw.url("/readyz")).send().await.unwrap();
        if ready.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never became ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, secret) = gw.create_key("*");
    assert_eq!(burst(&gw, &secret, &["chat"; 2]).await, [200; 2]);
    let store = Store::open(&db.url).await.unwrap();
    wait_count(&store, 2).await;
    gw.sigterm();
    assert!(gw.wait_exit(Duration::from_secs(30)).success());
}

// A per-request hold in PostgreSQL is settled with the request's usage row: a settlement made
// while the store is away waits in the journal with its row, across a restart, and charges once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settlements_made_while_postgres_is_away_are_journaled_and_charged_once() {
    let test = "settlements_made_while_postgres_is_away_are_journaled_and_charged_once";
    let Some(db) = postgres_or_skip(test) else {
        return;
    };
    let proxy = TcpProxy::start(crate::common::pg_addr()).await;
    // Slow answers: the holds are taken while the store is there, settled once it is gone.
    let mock = mock(MockConfig {
        latency: Duration::from_millis(2500),
        ..MockConfig::default()
    })
    .await;
    let toml = format!("{}{TEAM_BUDGET}", standard_policy(&mock));
    let mut gw = Gateway::start_db(&toml, &[], &[], &db.url_via(proxy.addr));
    let (_, governed) = gw.create_key_with(&["--models", "*", "--team", "research"]);
    let store = Store::open(&db.url).await.unwrap();

    let calls: Vec<_> = (0..3)
        .map(|_| {
            let (url, secret) = (gw.url("/v1/chat/completions"), governed.clone());
            tokio::spawn(async move {
                http()
                    .post(url)
                    .bearer_auth(secret)
                    .json(&chat_body("chat"))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            })
        })
        .collect();
    // A rare counter is not leased: each call holds its budget in the store.
    let deadline = Instant::now() + Duration::from_secs(20);
    while store.outstanding_holds().await.unwrap() < 3 {
        assert!(
            Instant::now() < deadline,
            "the calls never held their budget"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A hold visible in the store is not yet a hold the gateway knows it has: its commit's
    // acknowledgement may still be on its way through the proxy, and a cut then is an
    // ambiguous commit (the call is refused with 503, the orphaned hold expires). The calls
    // have their holds once they reach the provider.
    while mock.count() < 3 {
        assert!(
            Instant::now() < deadline,
            "the calls never reached the provider"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.cut();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap(), 200, "held calls are answered");
    }
    assert_eq!(store.usage_count().await.unwrap(), 0);

    // A restart during the outage: the rows and their settlements wait in the journal.
    gw.sigterm();
    assert!(gw.wait_exit(Duration::from_secs(40)).success());
    assert_eq!(
        store.outstanding_holds().await.unwrap(),
        3,
        "nothing settled yet"
    );
    proxy.restore();
    gw.restart(&[]);

    wait_count(&store, 3).await;
    // Settled with the replayed rows, long before the holds would expire (60 s): no hold left,
    // nothing reserved, and the budget's spend is exactly the rows' costs.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let holds = store.outstanding_holds().await.unwrap();
        let reserved = scalar(
            &db.url,
            "SELECT CAST(COALESCE(SUM(reserved), 0) AS BIGINT) FROM counters",
        )
        .await;
        let spent = scalar(
            &db.url,
            "SELECT CAST(COALESCE(SUM(used), 0) AS BIGINT) FROM counters WHERE counter_id LIKE 'budget:%'",
        )
        .await;
        let costs = scalar(
            &db.url,
            "SELECT CAST(COALESCE(SUM(cost_nanos), 0) AS BIGINT) FROM usage_records",
        )
        .await;
        if holds == 0 && reserved == 0 && spent == costs {
            assert!(costs > 0);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "holds {holds}, reserved {reserved}, spent {spent}, costs {costs}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let settled = scalar(&db.url, "SELECT COUNT(*) FROM settled_holds").await;
    assert_eq!(settled, 3, "each hold settled once");
}

#[tokio::test]
async fn a_journal_left_by_a_crash_is_replayed_once_into_sqlite_with_its_charges() {
    let mock = mock(MockConfig::default()).await;
    let toml = format!("{}{ORG_BUDGET}", standard_policy(&mock));
    let mut gw = Gateway::start(&toml);
    let (_, secret) = gw.create_key("*");
    assert_eq!(burst(&gw, &secret, &["chat"; 3]).await, [200; 3]);
    let store = Store::open(&gw.db_url).await.unwrap();
    wait_count(&store, 3).await;
    let spent = scalar(
        &gw.db_url,
        "SELECT CAST(COALESCE(SUM(used), 0) AS BIGINT) FROM counters WHERE counter_id LIKE 'budget:%'",
    )
    .await;
    assert!(spent > 0);
    gw.sigterm();
    assert!(gw.wait_exit(Duration::from_secs(20)).success());
    // A crash after the rows were committed but before the journal was cleared: the same
    // entries (one of them with a torn copy at the tail) are in the journal at the next start.
    let rows = store.usage_count().await.unwrap();
    store.close().await;
    let journal_dir = gw.dir.path().join("tollgate.db.journal");
    let entries: Vec<Value> = {
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect(&gw.db_url)
            .await
            .unwrap();
        let ids: Vec<(String, String, i64)> =
            sqlx::query_as("SELECT id, request_id, cost_nanos FROM usage_records")
                .fetch_all(&pool)
                .await
                .unwrap();
        let window: i64 = sqlx::query_scalar(
            "SELECT window_start_ms FROM counters WHERE counter_id LIKE 'budget:%'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        let counter: String =
            sqlx::query_scalar("SELECT counter_id FROM counters WHERE counter_id LIKE 'budget:%'")
                .fetch_one(&pool)
                .await
                .unwrap();
        pool.close().await;
        ids.into_iter()
            .map(|(id, request_id, cost)| {
                json!({
                    "record": {"id": id, "request_id": request_id, "method": "POST",
                               "endpoint": "/v1/chat/completions", "status": 200,
                               "decisions": "[]", "cost_nanos": cost},
                    "charges": [{"counter_id": counter, "window_start_ms": window, "actual": cost}],
                })
            })
            .collect()
    };
    let mut bytes = Vec::new();
    for entry in &entries {
        let payload = serde_json::to_vec(entry).unwrap();
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
    }
    let torn = bytes[..bytes.len() / 3].to_vec();
    bytes.extend_from_slice(&torn[..torn.len().min(20)]);
    std::fs::write(journal_dir.join("usage.log"), &bytes).unwrap();
    gw.restart(&[]);
    // Served once replayed: nothing was stored twice, nothing charged twice.
    let store = Store::open(&gw.db_url).await.unwrap();
    assert_eq!(store.usage_count().await.unwrap(), rows);
    let after = scalar(
        &gw.db_url,
        "SELECT CAST(COALESCE(SUM(used), 0) AS BIGINT) FROM counters WHERE counter_id LIKE 'budget:%'",
    )
    .await;
    assert_eq!(after, spent);
    assert_eq!(
        std::fs::metadata(journal_dir.join("usage.log"))
            .unwrap()
            .len(),
        0
    );
    // The torn tail was copied aside for a person, not silently dropped.
    let aside = std::fs::read_dir(&journal_dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("usage.log.corrupt-")
        })
        .count();
    assert_eq!(aside, 1);
    assert_eq!(burst(&gw, &secret, &["chat"]).await, [200]);
    wait_count(&store, rows + 1).await;
}

/// Usage rows whose text holds what PostgreSQL's array syntax gives meaning to (quotes,
/// backslashes, braces, commas, `NULL` as a word, newlines) and absent values: PostgreSQL's
/// usage insert binds each column as one array, so every value must come back as it was sent,
/// on both stores, and writing the same rows again (a journal replayed) adds nothing.
async fn usage_values_round_trip(store: &Store, url: &str) {
    use tollgate::store::{McpUsage, UsageEntry, UsageRecord};
    let awkward = [
        r#"say "hi""#,
        r"back\slash and \\ two",
        "{braces}, commas, and NULL",
        "NULL",
        "",
        " leading and trailing ",
        "line\nbreak\ttab é ✓",
        r#"{"json": "in \"text\"", "n": [1, 2]}"#,
    ];
    let records: Vec<UsageRecord> = (0..300)
        .map(|i| {
            let text = awkward[i % awkward.len()];
            let mut r = UsageRecord::default();
            r.id = format!("row-{i:04}");
            r.request_id = format!("req-{i}");
            r.received_at_ms = 1_700_000_000_000 + i as i64;
            r.completed_at_ms = 1_700_000_000_100 + i as i64;
            r.key_id = (i % 3 != 0).then(|| text.to_string());
            r.method = "POST".into();
            r.endpoint = "/v1/chat/completions".into();
            r.stream = i % 2 == 0;
            r.status = 200;
            r.latency_us = i as i64 * 7;
            r.ttfb_us = (i % 4 == 0).then_some(-(i as i64));
            r.cost_nanos = i64::MAX - i as i64;
            r.provider_usage = Some(text.to_string());
            r.decisions = text.to_string();
            r.user_agent = (i % 5 != 0).then(|| format!("{text}\\"));
            r.mcp = (i % 7 == 0).then(|| McpUsage {
                server: text.to_string(),
                transport: "http".into(),
                method: None,
                tool: Some(format!("\"{text}\"")),
                tool_calls: i as i64,
                bytes_in: 1,
                bytes_out: 2,
                pricing: None,
            });
            r
        })
        .collect();
    let entries: Vec<UsageEntry> = records
        .iter()
        .map(|record| UsageEntry {
            record: record.clone(),
            charges: Vec::new(),
        })
        .collect();
    assert_eq!(store.write_usage(&entries).await.unwrap(), 300);
    assert_eq!(store.write_usage(&entries[..10]).await.unwrap(), 0);

    let pool = connect(url).await;
    let rows = sqlx::query(
        "SELECT id, key_id, stream, latency_us, ttfb_us, cost_nanos, provider_usage, decisions, \
         user_agent, mcp_server, mcp_method, mcp_tool, mcp_tool_calls, team \
         FROM usage_records ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .expect("read back");
    pool.close().await;
    assert_eq!(rows.len(), records.len());
    for (row, r) in rows.iter().zip(&records) {
        let mcp = r.mcp.as_ref();
        assert_eq!(row.get::<String, _>(0), r.id);
        assert_eq!(row.get::<Option<String>, _>(1), r.key_id, "{}", r.id);
        assert_eq!(row.get::<i64, _>(2), i64::from(r.stream));
        assert_eq!(row.get::<i64, _>(3), r.latency_us);
        assert_eq!(row.get::<Option<i64>, _>(4), r.ttfb_us);
        assert_eq!(row.get::<i64, _>(5), r.cost_nanos);
        assert_eq!(row.get::<Option<String>, _>(6), r.provider_usage);
        assert_eq!(row.get::<String, _>(7), r.decisions);
        assert_eq!(row.get::<Option<String>, _>(8), r.user_agent);
        assert_eq!(
            row.get::<Option<String>, _>(9),
            mcp.map(|m| m.server.clone())
        );
        assert_eq!(row.get::<Option<String>, _>(10), None);
        assert_eq!(
            row.get::<Option<String>, _>(11),
            mcp.and_then(|m| m.tool.clone())
        );
        assert_eq!(row.get::<Option<i64>, _>(12), mcp.map(|m| m.tool_calls));
        assert_eq!(row.get::<Option<String>, _>(13), None);
    }
}

#[tokio::test]
async fn awkward_usage_values_round_trip_through_postgres() {
    let test = "awkward_usage_values_round_trip_through_postgres";
    let Some(db) = postgres_or_skip(test) else {
        return;
    };
    let store = Store::open(&db.url).await.unwrap();
    usage_values_round_trip(&store, &db.url).await;
    store.close().await;
}

#[tokio::test]
async fn awkward_usage_values_round_trip_through_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let store = Store::open(&url).await.unwrap();
    usage_values_round_trip(&store, &url).await;
    store.close().await;
}

/// A usage batch on PostgreSQL is written by one call of a server-side function (rows and
/// charges together), and a batch holding rows stored already (a journal replayed) by the
/// statement path. Both charge the same: each new row's leased charge moves out of its lease
/// (at most what the lease still holds) into `used`, a plain charge goes to `used`, and a row
/// stored already charges nothing again.
#[tokio::test]
async fn usage_batches_on_postgres_charge_leases_and_counters_once_by_either_path() {
    use tollgate::store::ledger::Settlement;
    use tollgate::store::{UsageEntry, UsageRecord};
    let test = "usage_batches_on_postgres_charge_leases_and_counters_once_by_either_path";
    let Some(db) = postgres_or_skip(test) else {
        return;
    };
    let store = Store::open(&db.url).await.unwrap();
    let far = 4_102_444_800_000; // 2100
    let granted = store
        .grant_lease("leased", 0, 1_000_000, "r1.1", "r1", 1_000, 1, 1, far)
        .await
        .unwrap();
    assert_eq!(granted, 1_000);
    let entry = |i: usize, leased: i64| UsageEntry {
        record: {
            let mut r = UsageRecord::default();
            r.id = format!("row-{i:03}");
            r.request_id = format!("req-{i}");
            r.method = "POST".into();
            r.endpoint = "/v1/chat/completions".into();
            r.status = 200;
            r
        },
        charges: vec![
            Settlement {
                counter_id: "leased".into(),
                window_start_ms: 0,
                actual: leased,
                lease: Some("r1.1".into()),
                hold: None,
            },
            Settlement {
                counter_id: "plain".into(),
                window_start_ms: 0,
                actual: 5,
                lease: None,
                hold: None,
            },
        ],
    };
    let pool = connect(&db.url).await;
    // Opening the store created this version's functions, once.
    let functions: i64 = sqlx::query(
        "SELECT COUNT(*) FROM pg_proc WHERE proname LIKE 'tollgate\\_usage\\_batch\\_%' \
         OR proname LIKE 'tollgate\\_charge\\_%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap()
    .get(0);
    assert_eq!(functions, 2);
    Store::open(&db.url).await.unwrap().close().await;
    let lease_amount = || async {
        sqlx::query("SELECT amount FROM leases WHERE lease_id = 'r1.1'")
            .fetch_one(&pool)
            .await
            .unwrap()
            .get::<i64, _>(0)
    };
    let state = |counter: &'static str| {
        let store = &store;
        async move {
            let s = store.counter_state(counter, 0).await.unwrap();
            (s.used, s.reserved)
        }
    };

    // All new: the one-call path.
    let first: Vec<UsageEntry> = (0..10).map(|i| entry(i, 30)).collect();
    assert_eq!(store.write_usage(&first).await.unwrap(), 10);
    assert_eq!(state("leased").await, (300, 700));
    assert_eq!(lease_amount().await, 700);
    assert_eq!(state("plain").await, (50, 0));

    // Dropped while the gateway serves: the writer creates them again (then, as half the rows
    // are stored already, the statement path charges the five new rows only).
    let names: Vec<String> = sqlx::query(
        "SELECT proname::text FROM pg_proc WHERE proname LIKE 'tollgate\\_usage\\_batch\\_%' \
         OR proname LIKE 'tollgate\\_charge\\_%' ORDER BY proname DESC",
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect();
    assert_eq!(names.len(), 2);
    for name in &names {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP FUNCTION {name}")))
            .execute(&pool)
            .await
            .unwrap();
    }
    let overlapping: Vec<UsageEntry> = (5..15).map(|i| entry(i, 30)).collect();
    assert_eq!(store.write_usage(&overlapping).await.unwrap(), 5);
    assert_eq!(state("leased").await, (450, 550));
    assert_eq!(lease_amount().await, 550);
    assert_eq!(state("plain").await, (75, 0));

    // A charge above what the lease holds moves what it holds; `used` takes the whole charge.
    assert_eq!(store.write_usage(&[entry(15, 10_000)]).await.unwrap(), 1);
    assert_eq!(state("leased").await, (10_450, 0));
    assert_eq!(lease_amount().await, 0);
    assert_eq!(state("plain").await, (80, 0));

    // The same batch again: nothing is new, nothing is charged.
    assert_eq!(store.write_usage(&first).await.unwrap(), 0);
    assert_eq!(state("leased").await, (10_450, 0));
    assert_eq!(state("plain").await, (80, 0));
    assert_eq!(store.usage_count().await.unwrap(), 16);
    pool.close().await;
    store.close().await;
}
