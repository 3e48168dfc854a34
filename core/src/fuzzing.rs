//! Entry points for the fuzz targets in `fuzz/` (not an API): each takes arbitrary bytes and
//! drives one parser the way the gateway does, so a panic, a hang or an overflow is a finding.
//! Errors are the expected outcome of most inputs; only panics and aborts count.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::family::{Api, Endpoint, vllm_route};
use crate::pipeline::authorize::{parse_object, upstream_body};
use crate::pipeline::inspect::{GuardOutput, Guards, StreamGuard};
use crate::plugins::Phase;
use crate::plugins::host::wit;
use crate::policy::facts::RequestFacts;
use crate::policy::{Snapshot, load_dir};
use crate::translate::{self, Dialect, RequestOptions, ResponseContext, SseParser};
use crate::upstream::gemini_array::SseToJsonArray;
use crate::upstream::sse::SseTap;

/// One-time set-up of every target, run before the first input (libFuzzer's `init`): loads the
/// tokenizer and the stream guardrail's policy set, so the first input's time is its own (a
/// multi-second first run is not taken for a hang).
pub fn init() {
    crate::spend::estimate::warm_up();
    let _ = guard_setup();
    let _ = scratch();
}

/// Every endpoint family's request shape.
fn endpoints() -> Vec<Endpoint> {
    let mut all = vec![
        Endpoint::ChatCompletions,
        Endpoint::Completions,
        Endpoint::Embeddings,
        Endpoint::Responses,
        Endpoint::ImagesGenerations,
        Endpoint::Messages,
        Endpoint::CountTokens,
        Endpoint::GeminiGenerate,
        Endpoint::GeminiStream,
        Endpoint::GeminiCountTokens,
        Endpoint::GeminiEmbed,
        Endpoint::GeminiBatchEmbed,
        Endpoint::Unified,
    ];
    all.extend(
        ["tokenize", "pooling", "score"]
            .iter()
            .filter_map(|r| vllm_route(r).map(Endpoint::Vllm)),
    );
    all
}

fn dialect(api: Api) -> Dialect {
    match api {
        Api::Anthropic => Dialect::Anthropic,
        Api::Gemini => Dialect::Gemini,
        Api::OpenAi | Api::Vllm => Dialect::OpenAiChat,
    }
}

const DIALECTS: [Dialect; 3] = [Dialect::OpenAiChat, Dialect::Anthropic, Dialect::Gemini];

fn context() -> ResponseContext {
    ResponseContext {
        client_model: "fuzz-model".into(),
        request_id: "req-fuzz".into(),
        created: 1_700_000_000,
        include_usage: true,
        names: Default::default(),
    }
}

/// A request body as the authorize, reserve and call stages decode it, for the endpoint the
/// first byte picks: JSON object, facts for access rules, the hold estimate, the upstream body,
/// and its translation into every other family.
pub fn request_body(data: &[u8]) {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let all = endpoints();
    let endpoint = all[usize::from(pick) % all.len()];
    let Ok(mut map) = parse_object(body) else {
        return;
    };
    let model = map
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("m")
        .to_string();
    let facts = RequestFacts::from_body(
        endpoint.api().as_str(),
        endpoint.path(),
        &model,
        &map,
        body.len(),
        None,
        None,
    );
    let _ = facts.to_json();
    let estimate = crate::spend::estimate::estimate(&map, 4096);
    let _ = estimate.cost_nanos(&crate::usage::Pricing::default());
    let _ = crate::pipeline::reserve::cap_family(endpoint);
    let value = Value::Object(map.clone());
    let from = dialect(endpoint.api());
    for to in DIALECTS {
        let opts = RequestOptions {
            upstream_model: "up".into(),
            max_tokens: (pick & 1 == 1).then_some(100),
            default_max_tokens: 4096,
            stream: pick & 2 == 2,
        };
        let _ = translate::request(from, to, &value, &opts);
    }
    // The spliced upstream body says what re-encoding the decoded body would.
    if let Some(span) = crate::pipeline::splice::model_span(body) {
        let spliced = crate::pipeline::splice::with_model(body, span, "upstream-model");
        let decoded = serde_json::from_slice::<Value>(&spliced).ok();
        let mut expected = map.clone();
        expected.insert("model".into(), Value::String("upstream-model".into()));
        assert_eq!(
            decoded,
            Some(Value::Object(expected)),
            "spliced != re-encoded"
        );
    }
    let _ = upstream_body(&mut map, "upstream-model", endpoint.api());
}

/// Splits `data` into chunks at positions the bytes choose (so events are cut anywhere).
fn chunks(data: &[u8]) -> Vec<&[u8]> {
    let Some((&seed, mut rest)) = data.split_first() else {
        return Vec::new();
    };
    let step = usize::from(seed % 31) + 1;
    let mut out = Vec::new();
    let mut i = 0usize;
    while !rest.is_empty() {
        let n = (step + i * 7 % 13).min(rest.len());
        let (head, tail) = rest.split_at(n);
        out.push(head);
        rest = tail;
        i += 1;
    }
    out
}

/// A provider's SSE stream cut into arbitrary chunks, through the usage tap of every family and
/// Gemini's JSON-array reframing.
pub fn sse_tap(data: &[u8]) {
    let parts = chunks(data);
    for api in [Api::OpenAi, Api::Anthropic, Api::Gemini, Api::Vllm] {
        for hide in [false, true] {
            let mut tap = SseTap::for_api(api, hide);
            let mut array = SseToJsonArray::default();
            for part in &parts {
                let out = tap.push(part);
                let _ = array.frame(&out);
            }
            let out = tap.finish();
            let _ = array.frame(&out);
            let _ = array.close();
            let _ = (tap.usage(), tap.failed(), tap.produced_tokens());
        }
    }
}

/// A provider's SSE stream through the translation core's parser and every cross-family stream
/// translator, and a JSON answer through every answer translation.
pub fn translate_stream(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let from = DIALECTS[usize::from(pick) % 3];
    let to = DIALECTS[usize::from(pick / 3) % 3];
    if pick & 0x80 != 0 {
        // A whole JSON answer.
        if let Ok(value) = serde_json::from_slice::<Value>(rest) {
            let _ = translate::response(from, to, &value, &context());
            let _ = translate::usage(from, &value);
            let _ = translate::error(from, to, 500, rest);
        }
        return;
    }
    let mut parser = SseParser::new();
    let mut translator = translate::StreamTranslator::new(from, to, context());
    for part in chunks(rest) {
        for event in parser.push(part) {
            if translator.push(&event).is_err() {
                let _ = translator.fail("fuzz");
                return;
            }
        }
    }
    if let Some(event) = parser.finish() {
        let _ = translator.push(&event);
    }
    let _ = translator.finish();
    let _ = (translator.usage(), translator.failed());
}

/// The default policy directory (its guardrail has a stream phase).
fn policies_dir() -> PathBuf {
    std::env::var_os("TOLLGATE_FUZZ_POLICIES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies"))
}

struct GuardSetup {
    runtime: tokio::runtime::Runtime,
    guards: Guards,
}

fn guard_setup() -> Option<&'static GuardSetup> {
    static SETUP: OnceLock<Option<GuardSetup>> = OnceLock::new();
    SETUP
        .get_or_init(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            let snapshot = runtime.block_on(async { load_dir(&policies_dir(), 1, None) });
            let snapshot: Snapshot = match snapshot {
                Ok(s) => s,
                Err(errors) => {
                    eprintln!("fuzz: cannot load the policies: {errors:?}");
                    return None;
                }
            };
            let plugins: Vec<Arc<crate::plugins::Plugin>> = snapshot
                .plugins
                .iter()
                .filter(|p| p.has_phase(Phase::Stream))
                .cloned()
                .collect();
            if plugins.is_empty() {
                eprintln!(
                    "fuzz: no stream guardrail in the policies (run ./scripts/build-plugins)"
                );
                return None;
            }
            let guards = Guards {
                plugins,
                caller: Some(wit::Caller {
                    key_id: "k".into(),
                    key_name: "fuzz".into(),
                    team: None,
                    metadata: Vec::new(),
                }),
                model: "demo-chat".into(),
                endpoint: Endpoint::ChatCompletions.path(),
            };
            Some(GuardSetup { runtime, guards })
        })
        .as_ref()
}

/// A chat stream through the usage tap and the stream guardrail's sliding window (the default
/// policy directory's guardrail), chunk by chunk as the relay feeds it.
pub fn stream_guard(data: &[u8]) {
    let Some(setup) = guard_setup() else {
        return;
    };
    let Some(mut guard) = StreamGuard::new(&setup.guards) else {
        return;
    };
    let mut tap = SseTap::for_api(Api::OpenAi, false);
    let parts = chunks(data);
    setup.runtime.block_on(async {
        let total = parts.len();
        for (i, part) in parts.into_iter().enumerate() {
            let events = tap.push(part);
            let end = i + 1 == total;
            let events = if end {
                let mut all = events.to_vec();
                all.extend_from_slice(&tap.finish());
                Bytes::from(all)
            } else {
                events
            };
            if events.is_empty() && !end {
                continue;
            }
            guard.start(events, end);
            let output = std::future::poll_fn(|cx: &mut Context<'_>| match guard.poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(output) => Poll::Ready(output),
            })
            .await;
            if let GuardOutput::Block { .. } = output {
                break;
            }
        }
    });
    let _ = guard.decisions();
}

/// A scratch policy directory for the loader targets (one per process).
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("tollgate-fuzz-{}", std::process::id()));
        let _ = std::fs::create_dir_all(dir.join("plugins"));
        let _ = std::fs::create_dir_all(dir.join("access"));
        let _ = std::fs::create_dir_all(dir.join("routing"));
        dir
    })
}

/// A `gateway.toml` through the loader (`tollgate check` and reloads run the same code).
pub fn gateway_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let dir = scratch();
    if std::fs::write(dir.join("gateway.toml"), text).is_err() {
        return;
    }
    let _ = load_dir(dir, 1, None);
}

/// A plugin manifest through the plugin loader.
pub fn plugin_manifest(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let dir = scratch().join("manifests");
    let _ = std::fs::create_dir_all(dir.join("plugins"));
    if std::fs::write(dir.join("plugins/fuzz.toml"), text).is_err() {
        return;
    }
    let (confinement, _) =
        crate::plugins::manifest::Confinement::new(&dir, &[], ["TG_FUZZ_PROVIDER_KEY".to_string()]);
    let _ = crate::plugins::load_dir(&dir, &[], &confinement);
}

/// A CEL access rule compiled and dry-run as a load does.
pub fn cel_rule(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ =
        crate::policy::cel::compile_rule("fuzz", Path::new("access/fuzz.cel"), text, String::new());
}

/// A Rhai routing script compiled as a load does, then run on two candidates.
pub fn rhai_script(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(script) = crate::policy::rhai::compile_script(
        "fuzz",
        Path::new("routing/fuzz.rhai"),
        text,
        String::new(),
    ) else {
        return;
    };
    let candidate = |model: &str| crate::policy::rhai::CandidateView {
        model: model.into(),
        provider: "p".into(),
        weight: 1,
        priority: 0,
        region: String::new(),
        tags: Vec::new(),
        price_input: 1.0,
        price_output: 2.0,
        error_rate: 0.0,
        latency_ms: 10.0,
        in_cooldown: false,
    };
    let mut request = Map::new();
    request.insert("model".into(), Value::String("g".into()));
    let _ = script.order(&Value::Object(request), &[candidate("a"), candidate("b")]);
}
