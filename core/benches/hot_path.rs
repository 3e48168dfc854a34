//! Micro-benchmarks of the per-request pieces on tollgate's hot path: the warm key cache, secret
//! hashing, the SSE usage tap, usage normalization and pricing, request body parsing, the
//! prompt token estimate, a CEL access rule with its variable binding, a Rhai route over three
//! deployments, and a budget + quota hold and settlement on SQLite and in memory (the embedded
//! ledger). (Guardrail calls: the `guardrails` bench.)
//!
//! Run with `cargo bench -p tollgate --bench hot_path`; measurement times are short so the
//! whole file finishes in well under a minute. The end-to-end overhead is measured by
//! `tollgate-bench` (bench/README.md).

// Setup failures in a benchmark should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Value, json};

use tollgate::pipeline::authorize::parse_object;
use tollgate::spend::estimate::{estimate, warm_up};
use tollgate::store::key_cache::KeyCache;
use tollgate::store::keys::{NewKey, hash_secret};
use tollgate::store::{ModelGrant, Store};
use tollgate::upstream::sse::SseTap;
use tollgate::usage::{Pricing, TokenUsage};

/// A chat completions body of about 1 KB, like the load benchmark's.
fn chat_body() -> Vec<u8> {
    let mut user = String::from(
        "Summarise the following incident notes in three bullet points and propose one follow-up \
         action. Notes: ",
    );
    while user.len() < 720 {
        user.push_str(
            "at 09:12 the ingest queue backed up after a config push; consumers were restarted \
             at 09:31; lag recovered by 09:48; no data was lost. ",
        );
    }
    json!({
        "model": "bench-chat",
        "messages": [
            {"role": "system", "content": "You are a concise assistant for an internal engineering team. Answer in plain English, cite the document section you used, and say so when you do not know."},
            {"role": "user", "content": user},
        ],
        "temperature": 0.2,
        "max_tokens": 256,
        "user": "bench-user-42",
    })
    .to_string()
    .into_bytes()
}

fn chat_usage() -> Value {
    json!({
        "prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18,
        "prompt_tokens_details": {"cached_tokens": 2, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 3, "audio_tokens": 0,
            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
    })
}

/// The events of a 20-chunk chat stream with usage, as the mock upstream sends them.
fn stream_events() -> Vec<Bytes> {
    let chunk = |delta: Value, finish: Value| {
        let c = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000,
                       "model": "bench-chat-1", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                       "usage": null});
        Bytes::from(format!("data: {c}\n\n"))
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    for i in 0..20 {
        events.push(chunk(json!({"content": format!("tok{i} ")}), Value::Null));
    }
    events.push(chunk(json!({}), json!("stop")));
    let usage = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000,
                       "model": "bench-chat-1", "choices": [], "usage": chat_usage()});
    events.push(Bytes::from(format!("data: {usage}\n\n")));
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    events
}

fn key_cache(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let (cache, secret) = runtime.block_on(async {
        let store = Store::open(&url).await.unwrap();
        let (_, secret) = store
            .create_key(&NewKey {
                name: "bench".into(),
                team: Some("platform".into()),
                owner: None,
                metadata: serde_json::Map::new(),
                models: ModelGrant::All,
                mcp: ModelGrant::Only(Vec::new()),
                expires_at_ms: None,
            })
            .await
            .unwrap();
        let version = store.keys_version().await.unwrap();
        let cache = KeyCache::new(store, version);
        // Warm the cache: the first lookup reads the store.
        assert!(cache.lookup(&secret).await.unwrap().is_some());
        (cache, secret)
    });
    c.bench_function("key_cache_lookup_warm", |b| {
        b.to_async(&runtime)
            .iter(|| async { black_box(cache.lookup(black_box(&secret)).await.unwrap()) });
    });
    c.bench_function("hash_secret", |b| {
        b.iter(|| hash_secret(black_box(&secret)));
    });
}

fn sse_tap(c: &mut Criterion) {
    let events = stream_events();
    let bytes: usize = events.iter().map(Bytes::len).sum();
    let mut group = c.benchmark_group("sse_tap");
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function("20_chunk_stream_hiding_usage", |b| {
        b.iter(|| {
            let mut tap = SseTap::new(true);
            let mut relayed = 0;
            for event in &events {
                relayed += tap.push(black_box(event)).len();
            }
            relayed += tap.finish().len();
            black_box((relayed, tap.usage().is_some()))
        });
    });
    group.finish();
}

fn usage(c: &mut Criterion) {
    let usage = chat_usage();
    let pricing = Pricing {
        input_nanos_per_mtok: 150_000_000,
        output_nanos_per_mtok: 600_000_000,
        cached_input_nanos_per_mtok: 75_000_000,
        cache_write_nanos_per_mtok: 187_500_000,
    };
    c.bench_function("usage_from_openai_and_cost", |b| {
        b.iter(|| {
            let tokens = TokenUsage::from_openai(black_box(&usage)).unwrap();
            black_box(pricing.cost_nanos(&tokens))
        });
    });
}

fn parse(c: &mut Criterion) {
    let body = chat_body();
    let mut group = c.benchmark_group("authorize");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("parse_object_1kb_chat", |b| {
        b.iter(|| parse_object(black_box(&body)).unwrap());
    });
    let object = parse_object(&body).unwrap();
    // The tokenizer loads once (at gateway start in production), not inside the measurement.
    warm_up();
    group.bench_function("estimate_tokens_1kb_chat", |b| {
        b.iter(|| estimate(black_box(&object), 256).input_tokens);
    });
    group.finish();
}

fn policy_engines(c: &mut Criterion) {
    use tollgate::policy::cel::{Bindings, compile_rule, json_to_cel};
    use tollgate::policy::rhai::{CandidateView, compile_script};
    let mut group = c.benchmark_group("policy");
    let rule = compile_rule(
        "bench",
        std::path::Path::new("access/bench.cel"),
        r#"(request.max_tokens == null || request.max_tokens <= 4096) && !("premium" in model.tags && key.team == "interns") && cidr_contains("127.0.0.0/8", request.client_ip)"#,
        String::new(),
    )
    .unwrap();
    let key = json!({"id": "key_1", "name": "bench", "team": "platform", "owner": null, "models": ["*"], "metadata": {}});
    let request = json!({"endpoint": "openai", "path": "/v1/chat/completions", "model": "bench-chat", "stream": false,
        "max_tokens": 256, "estimated_input_tokens": 250, "temperature": 0.2, "tools": false,
        "headers": {"user-agent": "bench"}, "client_ip": "127.0.0.1", "metadata": {}});
    let model = json!({"name": "bench-chat", "provider": "mock", "family": "openai", "group": false, "tags": ["chat"],
        "pricing": {"input_per_mtok": 0.15, "output_per_mtok": 0.6, "cached_input_per_mtok": 0.075}});
    let model_value = json_to_cel(&model);
    group.bench_function("cel_rule_with_binding", |b| {
        b.iter(|| {
            let bindings = Bindings {
                shared_key: None,
                shared_model: None,
                key: Some(json_to_cel(&key)),
                request: Some(json_to_cel(&request)),
                model: Some(model_value.clone()),
                now: None,
                budget: None,
                mcp: None,
            };
            black_box(rule.evaluate(&bindings.context()))
        });
    });
    let script = compile_script(
        "bench",
        std::path::Path::new("routing/bench.rhai"),
        "fn route(request, candidates) { candidates.sort(|a, b| a.priority - b.priority); candidates.filter(|c| !c.health.in_cooldown) }",
        String::new(),
    )
    .unwrap();
    let candidates: Vec<CandidateView> = (0..3)
        .map(|i| CandidateView {
            model: format!("bench-{i}"),
            provider: "mock".into(),
            weight: 1,
            priority: 2 - i,
            region: "us".into(),
            tags: vec!["chat".into()],
            price_input: 0.15,
            price_output: 0.6,
            error_rate: 0.0,
            latency_ms: 1.0,
            in_cooldown: false,
        })
        .collect();
    group.bench_function("rhai_route_3_deployments", |b| {
        b.iter(|| {
            script
                .order(black_box(&request), black_box(&candidates))
                .unwrap()
        });
    });
    group.finish();
}

fn budget_hold_settle(c: &mut Criterion) {
    use tollgate::store::ledger::{HoldRequest, Settlement};
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
    let store = runtime.block_on(Store::open(&url)).unwrap();
    let mut group = c.benchmark_group("ledger");
    let mut n = 0u64;
    group.bench_function("sqlite_hold_and_settle_budget_and_quota", |b| {
        b.iter(|| {
            n += 1;
            let id = format!("req-{n}");
            let holds = [
                HoldRequest {
                    counter_id: "budget:org".into(),
                    window_start_ms: 0,
                    window_end_ms: i64::MAX,
                    amount: 1_000,
                    limit: i64::MAX,
                },
                HoldRequest {
                    counter_id: "quota:rpm:key".into(),
                    window_start_ms: 0,
                    window_end_ms: i64::MAX,
                    amount: 1,
                    limit: i64::MAX,
                },
            ];
            runtime.block_on(async {
                store.hold(&id, &holds, i64::MAX).await.unwrap();
                let settle = vec![(
                    id.clone(),
                    vec![
                        Settlement {
                            counter_id: "budget:org".into(),
                            window_start_ms: 0,
                            actual: 700,
                            lease: None,
                            hold: None,
                        },
                        Settlement {
                            counter_id: "quota:rpm:key".into(),
                            window_start_ms: 0,
                            actual: 1,
                            lease: None,
                            hold: None,
                        },
                    ],
                )];
                store.settle_batch(&settle).await.unwrap();
            });
        });
    });
    // The embedded ledger: the same hold and settlement in memory (SQLite persists the charges
    // later, with the usage rows, off the request path).
    let memory = tollgate::spend::memory::MemoryLedger::new();
    let mut m = 0u64;
    group.bench_function("memory_hold_and_settle_budget_and_quota", |b| {
        b.iter(|| {
            m += 1;
            let id = format!("req-{m}");
            let holds = [
                HoldRequest {
                    counter_id: "budget:org".into(),
                    window_start_ms: 0,
                    window_end_ms: i64::MAX,
                    amount: 1_000,
                    limit: i64::MAX,
                },
                HoldRequest {
                    counter_id: "quota:rpm:key".into(),
                    window_start_ms: 0,
                    window_end_ms: i64::MAX,
                    amount: 1,
                    limit: i64::MAX,
                },
            ];
            black_box(memory.hold(&id, &holds));
            let settle = [
                Settlement {
                    counter_id: "budget:org".into(),
                    window_start_ms: 0,
                    actual: 700,
                    lease: None,
                    hold: None,
                },
                Settlement {
                    counter_id: "quota:rpm:key".into(),
                    window_start_ms: 0,
                    actual: 1,
                    lease: None,
                    hold: None,
                },
            ];
            black_box(memory.settle(&id, &settle));
        });
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = hot_path;
    config = config();
    targets = key_cache, sse_tap, usage, parse, policy_engines, budget_hold_settle
}
criterion_main!(hot_path);
