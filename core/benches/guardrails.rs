//! Per-call cost of each first-party guardrail on 1 KB and 16 KB prompts, through the real
//! host (warm pooled instance, epoch deadline, memory limiter, WIT lowering), and of the whole
//! request phase of the inspect stage with `pii-guard` (view building + call + masking), and of
//! one stream-phase call on a default-sized window.
//!
//! Needs the components: run `./scripts/build-plugins` first. Then
//! `cargo bench -p tollgate --bench guardrails`.

// Setup failures in a benchmark should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Map, Value, json};

use tollgate::plugins::Plugin;
use tollgate::plugins::host::wit;
use tollgate::plugins::views;

/// Prose of about `bytes` bytes with an email and a phone number every kilobyte (so masking runs).
fn prompt(bytes: usize) -> String {
    let mut text = String::new();
    let mut n = 0;
    while text.len() < bytes {
        text.push_str(
            "At 09:12 the ingest queue backed up after a config push; consumers were restarted at \
             09:31 and lag recovered by 09:48. No data was lost, but the on-call engineer asked \
             for a review of the deploy checklist and of the alert thresholds on queue depth. \
             The follow-up owner is the platform team, who will report next week on the change \
             freeze policy, the canary stage, and the rollback runbook for this service. ",
        );
        n += 1;
        text.push_str(&format!(
            "Contact ops{n}@example.com or +1 415 555 01{:02} for details. ",
            n % 100
        ));
    }
    text
}

fn load(dir: &Path, names: &[&str]) -> Vec<Arc<Plugin>> {
    let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/dist");
    std::fs::create_dir_all(dir.join("plugins")).unwrap();
    std::fs::write(
        dir.join("gateway.toml"),
        format!(
            "[providers.p]\nfamily = \"demo\"\n[models.m]\nprovider = \"p\"\n[plugins]\nallowed_dirs = [{:?}]\n",
            dist.display().to_string()
        ),
    )
    .unwrap();
    for name in names {
        let wasm = dist.join(format!("{name}.wasm"));
        assert!(
            wasm.is_file(),
            "{} is missing: run ./scripts/build-plugins first",
            wasm.display()
        );
        let config = match *name {
            "content-guard" => {
                "[config]\ndeny = [{ name = \"codenames\", keywords = [\"titan\", \"blue falcon\"], patterns = ['\\bproj-[0-9]{4}\\b'] }]\n"
            }
            _ => "",
        };
        std::fs::write(
            dir.join(format!("plugins/{name}.toml")),
            format!(
                "wasm = {:?}\nphases = [\"request\"]\n[limits]\ntime_ms = 1000\n{config}",
                wasm.display().to_string()
            ),
        )
        .unwrap();
    }
    let snapshot = tollgate::policy::load_dir(dir, 1, None).unwrap();
    snapshot.plugins.clone()
}

fn body(text: &str) -> Map<String, Value> {
    let Value::Object(map) = json!({
        "model": "m",
        "messages": [
            {"role": "system", "content": "You are a concise assistant for an internal engineering team."},
            {"role": "user", "content": text},
        ],
    }) else {
        unreachable!()
    };
    map
}

fn caller() -> wit::Caller {
    wit::Caller {
        key_id: "key_bench".into(),
        key_name: "bench".into(),
        team: Some("platform".into()),
        metadata: Vec::new(),
    }
}

fn guardrails(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let plugins = load(
        dir.path(),
        &["pii-guard", "injection-guard", "content-guard"],
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("guardrail_call");
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_secs(1));
    for size in [1024usize, 16 * 1024] {
        let body = body(&prompt(size));
        let (view, _) = views::request_view("/v1/chat/completions", "m", false, &body, &caller());
        group.throughput(Throughput::Bytes(size as u64));
        for plugin in &plugins {
            let id = format!("{}/{}KB", plugin.name, size / 1024);
            group.bench_function(id, |b| {
                b.iter(|| {
                    rt.block_on(plugin.instances.check_request(black_box(&view)))
                        .unwrap()
                })
            });
        }
    }
    group.finish();

    // The request phase as the stage runs it for pii-guard: build the view from the body,
    // call, check and apply the edits.
    let pii = plugins.iter().find(|p| p.name == "pii-guard").unwrap();
    let mut group = c.benchmark_group("inspect_request_phase");
    group.measurement_time(Duration::from_secs(3));
    for size in [1024usize, 16 * 1024] {
        let body = body(&prompt(size));
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(format!("pii-guard/{}KB", size / 1024), |b| {
            b.iter(|| {
                let mut body = body.clone();
                let (view, map) =
                    views::request_view("/v1/chat/completions", "m", false, &body, &caller());
                let verdict = rt.block_on(pii.instances.check_request(&view)).unwrap();
                if let wit::Action::Rewrite(edits) = &verdict.action {
                    views::check_edits(&map, edits).unwrap();
                    views::apply_edits_to_body(&mut body, &map, edits);
                }
                black_box(body)
            })
        });
    }
    group.finish();
}

/// One stream-phase call: a 256-byte window (the default `stream_window`) plus a 32-byte chunk.
fn stream_window(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let plugins = load(dir.path(), &["pii-guard", "content-guard"]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let text: String = prompt(1024).chars().take(288).collect();
    let view = wit::StreamView {
        model: "m".into(),
        endpoint: "/v1/chat/completions".into(),
        index: 0,
        window: wit::TextPart { id: 0, text },
        seen: 256,
        last: false,
        caller: caller(),
    };
    let mut group = c.benchmark_group("guardrail_stream_window");
    group.measurement_time(Duration::from_secs(3));
    for plugin in &plugins {
        group.bench_function(format!("{}/288B", plugin.name), |b| {
            b.iter(|| {
                rt.block_on(plugin.instances.check_stream(black_box(&view)))
                    .unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, guardrails, stream_window);
criterion_main!(benches);
