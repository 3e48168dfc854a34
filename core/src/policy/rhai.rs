//! Rhai routing scripts (`routing/*.rhai`): order the deployments of a model group.
//!
//! A script defines `fn route(request, candidates)` and returns the candidates to try, in order,
//! as an array of candidate maps or of their `model` names; candidates it leaves out are not
//! tried. Scripts run in a hardened engine: no file, network, module or `eval` access, bounded
//! operations, call depth, string/array/map sizes, and a wall-clock deadline. What happens when a
//! script fails is set per script with `// @on_error fail` (the default: the request fails closed)
//! or `// @on_error fallback` (the group's configured order is used and the failure recorded).

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rhai::{AST, Array, CallFnOptions, Dynamic, Engine, Map, Scope};

use super::LoadError;
use super::route_memo::{self, Memo};

/// Operations one `route` call may run.
pub const MAX_OPERATIONS: u64 = 200_000;
/// Wall-clock time one `route` call may take.
pub const DEADLINE: Duration = Duration::from_millis(25);

/// What a failing script does to the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// The request fails closed (500 `routing_error`).
    Fail,
    /// The group's configured order is used; the failure is recorded.
    Fallback,
}

/// One compiled script.
pub struct RoutingScript {
    /// File stem.
    pub name: String,
    /// Source file.
    pub file: PathBuf,
    /// Failure mode.
    pub on_error: OnError,
    /// SHA-256 of the source, for reuse across reloads.
    pub source_hash: String,
    ast: AST,
    /// Remembered answers, when the script's answer depends on its candidates only.
    memo: Option<Memo>,
}

impl std::fmt::Debug for RoutingScript {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoutingScript")
            .field("name", &self.name)
            .field("on_error", &self.on_error)
            .field("memo", &self.memo)
            .finish_non_exhaustive()
    }
}

/// What a script sees of one deployment.
#[derive(Debug, Clone)]
pub struct CandidateView {
    /// The deployment's tollgate model name.
    pub model: String,
    /// Its provider.
    pub provider: String,
    /// Relative weight for weighted strategies.
    pub weight: i64,
    /// Lower is preferred.
    pub priority: i64,
    /// Region label.
    pub region: String,
    /// Free-form tags.
    pub tags: Vec<String>,
    /// USD per 1M input tokens.
    pub price_input: f64,
    /// USD per 1M output tokens.
    pub price_output: f64,
    /// Recent error rate, 0..1.
    pub error_rate: f64,
    /// Latency EWMA in ms.
    pub latency_ms: f64,
    /// Whether the deployment is cooling down after failures.
    pub in_cooldown: bool,
}

/// A candidate's `health` as scripts see it: read-only fields whose reads are noted, so that a
/// remembered answer is reused only while the fields the script looked at are unchanged
/// ([`route_memo`]).
#[derive(Debug, Clone, Copy)]
struct Health {
    /// The candidate's position in the list given to `route`.
    index: usize,
    error_rate: f64,
    latency_ms: f64,
    in_cooldown: bool,
}

impl Health {
    fn field(&mut self, name: &str) -> Option<Dynamic> {
        let (bit, value) = match name {
            "error_rate" => (route_memo::ERROR_RATE, Dynamic::from(self.error_rate)),
            "latency_ms" => (route_memo::LATENCY_MS, Dynamic::from(self.latency_ms)),
            "in_cooldown" => (route_memo::IN_COOLDOWN, Dynamic::from(self.in_cooldown)),
            _ => return None,
        };
        route_memo::note_read(self.index, bit);
        Some(value)
    }

    /// All fields (the script saw the whole value).
    fn text(&mut self) -> String {
        route_memo::note_read(self.index, route_memo::ALL_HEALTH);
        format!(
            "#{{\"error_rate\": {}, \"in_cooldown\": {}, \"latency_ms\": {}}}",
            self.error_rate, self.in_cooldown, self.latency_ms
        )
    }

    fn same(&mut self, other: Health) -> bool {
        route_memo::note_read(self.index, route_memo::ALL_HEALTH);
        route_memo::note_read(other.index, route_memo::ALL_HEALTH);
        self.error_rate.to_bits() == other.error_rate.to_bits()
            && self.latency_ms.to_bits() == other.latency_ms.to_bits()
            && self.in_cooldown == other.in_cooldown
    }
}

fn register_health(engine: &mut Engine) {
    engine.register_type_with_name::<Health>("Health");
    engine.register_get("error_rate", |h: &mut Health| {
        route_memo::note_read(h.index, route_memo::ERROR_RATE);
        h.error_rate
    });
    engine.register_get("latency_ms", |h: &mut Health| {
        route_memo::note_read(h.index, route_memo::LATENCY_MS);
        h.latency_ms
    });
    engine.register_get("in_cooldown", |h: &mut Health| {
        route_memo::note_read(h.index, route_memo::IN_COOLDOWN);
        h.in_cooldown
    });
    engine.register_indexer_get(
        |h: &mut Health, name: &str| -> Result<Dynamic, Box<rhai::EvalAltResult>> {
            h.field(name).ok_or_else(|| {
                format!("health has no field '{name}' (error_rate, latency_ms, in_cooldown)").into()
            })
        },
    );
    engine.register_fn("keys", |_: &mut Health| -> Array {
        ["error_rate", "latency_ms", "in_cooldown"]
            .into_iter()
            .map(Dynamic::from)
            .collect()
    });
    engine.register_fn("to_string", Health::text);
    engine.register_fn("to_debug", Health::text);
    engine.register_fn("==", |a: &mut Health, b: Health| a.same(b));
    engine.register_fn("!=", |a: &mut Health, b: Health| !a.same(b));
}

impl CandidateView {
    fn to_map(&self, index: usize) -> Map {
        let health = Health {
            index,
            error_rate: self.error_rate,
            latency_ms: self.latency_ms,
            in_cooldown: self.in_cooldown,
        };
        let mut price = Map::new();
        price.insert("input".into(), self.price_input.into());
        price.insert("output".into(), self.price_output.into());
        let mut map = Map::new();
        map.insert("model".into(), self.model.clone().into());
        map.insert("provider".into(), self.provider.clone().into());
        map.insert("weight".into(), self.weight.into());
        map.insert("priority".into(), self.priority.into());
        map.insert("region".into(), self.region.clone().into());
        map.insert(
            "tags".into(),
            Dynamic::from_array(self.tags.iter().cloned().map(Dynamic::from).collect()),
        );
        map.insert("price".into(), price.into());
        map.insert("health".into(), Dynamic::from(health));
        map
    }
}

/// The `request` argument of `route`, built straight from the facts: the same value as
/// `rhai::serde::to_dynamic` of the facts' JSON with `key_id` and `team` added, without the
/// JSON in between.
pub fn request_to_dynamic(
    facts: &crate::policy::facts::RequestFacts,
    key_id: &str,
    team: Option<&str>,
) -> Dynamic {
    let string = |s: &str| Dynamic::from(s.to_string());
    let mut headers = Map::new();
    for (name, value) in &facts.headers {
        headers.insert(name.as_str().into(), string(value));
    }
    let metadata = if facts.metadata.is_empty() {
        Dynamic::from_map(Map::new())
    } else {
        rhai::serde::to_dynamic(&facts.metadata).unwrap_or(Dynamic::UNIT)
    };
    let mut map = Map::new();
    map.insert("endpoint".into(), string(&facts.endpoint));
    map.insert("path".into(), string(&facts.path));
    map.insert("model".into(), string(&facts.model));
    map.insert("stream".into(), facts.stream.into());
    map.insert(
        "max_tokens".into(),
        facts.max_tokens.map_or(Dynamic::UNIT, Dynamic::from),
    );
    map.insert(
        "estimated_input_tokens".into(),
        facts.estimated_input_tokens.into(),
    );
    // JSON has no NaN or infinity: the JSON view makes them null.
    map.insert(
        "temperature".into(),
        facts
            .temperature
            .filter(|t| t.is_finite())
            .map_or(Dynamic::UNIT, Dynamic::from),
    );
    map.insert("tools".into(), facts.has_tools.into());
    map.insert("headers".into(), Dynamic::from_map(headers));
    map.insert(
        "client_ip".into(),
        facts
            .client_ip
            .map_or(Dynamic::UNIT, |ip| Dynamic::from(ip.to_string())),
    );
    map.insert("metadata".into(), metadata);
    map.insert("key_id".into(), string(key_id));
    map.insert("team".into(), team.map_or(Dynamic::UNIT, string));
    Dynamic::from_map(map)
}

thread_local! {
    static CALL_DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
    static RNG: RefCell<StdRng> = RefCell::new(StdRng::from_os_rng());
}

/// Makes `rand_float()` / `rand_int()` deterministic on this thread (used by `tollgate test`).
pub fn seed_thread_rng(seed: u64) {
    RNG.with(|r| *r.borrow_mut() = StdRng::seed_from_u64(seed));
}

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut engine = Engine::new();
        engine.set_module_resolver(rhai::module_resolvers::DummyModuleResolver::new());
        engine.disable_symbol("eval");
        engine.set_max_operations(MAX_OPERATIONS);
        engine.set_max_call_levels(32);
        engine.set_max_expr_depths(64, 32);
        engine.set_max_string_size(64 * 1024);
        engine.set_max_array_size(10_000);
        engine.set_max_map_size(10_000);
        engine.on_print(|text| tracing::debug!(target: "tollgate::routing", "{text}"));
        engine.on_debug(|text, _, _| tracing::debug!(target: "tollgate::routing", "{text}"));
        engine.on_progress(|ops| {
            if ops % 512 == 0
                && CALL_DEADLINE
                    .with(Cell::get)
                    .is_some_and(|deadline| Instant::now() > deadline)
            {
                return Some(Dynamic::from("deadline exceeded"));
            }
            None
        });
        register_health(&mut engine);
        engine.register_fn("rand_float", || {
            RNG.with(|r| r.borrow_mut().random::<f64>())
        });
        engine.register_fn("rand_int", |low: i64, high: i64| {
            if high <= low {
                low
            } else {
                RNG.with(|r| r.borrow_mut().random_range(low..high))
            }
        });
        engine
    })
}

fn header(source: &str) -> Result<OnError, (usize, String)> {
    let mut on_error = OnError::Fail;
    for (i, line) in source.lines().enumerate() {
        let trimmed = line.trim();
        let Some(comment) = trimmed.strip_prefix("//") else {
            if trimmed.is_empty() {
                continue;
            }
            break;
        };
        if let Some(directive) = comment.trim().strip_prefix('@') {
            let mut parts = directive.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some("on_error"), Some("fail"), None) => on_error = OnError::Fail,
                (Some("on_error"), Some("fallback"), None) => on_error = OnError::Fallback,
                _ => {
                    return Err((
                        i + 1,
                        format!(
                            "unknown directive '@{directive}' (expected '@on_error fail' or '@on_error fallback')"
                        ),
                    ));
                }
            }
        }
    }
    Ok(on_error)
}

/// Compiles a routing script and checks it defines `route(request, candidates)`.
pub fn compile_script(
    name: &str,
    file: &Path,
    source: &str,
    source_hash: String,
) -> Result<RoutingScript, LoadError> {
    let error = |line: Option<usize>, column: Option<usize>, message: String| LoadError {
        file: file.to_path_buf(),
        line,
        column,
        key: None,
        message,
    };
    let on_error = header(source).map_err(|(line, message)| error(Some(line), Some(1), message))?;
    let ast = engine().compile(source).map_err(|e| {
        let position = e.position();
        error(
            position.line(),
            position.position(),
            e.err_type().to_string(),
        )
    })?;
    let Some(request) = ast
        .iter_functions()
        .find(|f| f.name == "route" && f.params.len() == 2)
        .map(|f| f.params[0].to_string())
    else {
        return Err(error(
            None,
            None,
            "the script must define fn route(request, candidates)".into(),
        ));
    };
    let memo = route_memo::memoizable(&ast, &request).then(Memo::default);
    Ok(RoutingScript {
        name: name.to_string(),
        file: file.to_path_buf(),
        on_error,
        source_hash,
        ast,
        memo,
    })
}

impl RoutingScript {
    /// Runs `route` on a JSON `request`; returns indices into `candidates` in the order to
    /// try.
    pub fn order(
        &self,
        request: &serde_json::Value,
        candidates: &[CandidateView],
    ) -> Result<Vec<usize>, String> {
        let request: Dynamic = rhai::serde::to_dynamic(request).map_err(|e| e.to_string())?;
        self.order_for(|| request, candidates)
    }

    /// Whether this script's answers are remembered (it reads no `request` and calls nothing
    /// nondeterministic).
    pub fn remembers(&self) -> bool {
        self.memo.is_some()
    }

    /// Runs `route` on a `request` already in Rhai's form ([`request_to_dynamic`]).
    /// `request` is only built when the script runs (not when a remembered answer is reused).
    pub fn order_for(
        &self,
        request: impl FnOnce() -> Dynamic,
        candidates: &[CandidateView],
    ) -> Result<Vec<usize>, String> {
        if let Some(order) = self.memo.as_ref().and_then(|m| m.get(candidates)) {
            return Ok(order);
        }
        let (order, reads) =
            route_memo::track(candidates.len(), || self.run(request(), candidates));
        let order = order?;
        if let Some(memo) = &self.memo {
            memo.put(candidates, reads, &order);
        }
        Ok(order)
    }

    fn run(&self, request: Dynamic, candidates: &[CandidateView]) -> Result<Vec<usize>, String> {
        let list: Array = candidates
            .iter()
            .enumerate()
            .map(|(i, c)| Dynamic::from_map(c.to_map(i)))
            .collect();
        let mut scope = Scope::new();
        CALL_DEADLINE.with(|d| d.set(Some(Instant::now() + DEADLINE)));
        let result = engine().call_fn_with_options::<Dynamic>(
            CallFnOptions::new().eval_ast(false).rewind_scope(true),
            &mut scope,
            &self.ast,
            "route",
            (request, list),
        );
        CALL_DEADLINE.with(|d| d.set(None));
        let result = result.map_err(|e| match *e {
            rhai::EvalAltResult::ErrorTerminated(_, position) => {
                format!(
                    "routing script '{}' exceeded its {} ms deadline at {position}",
                    self.name,
                    DEADLINE.as_millis()
                )
            }
            rhai::EvalAltResult::ErrorTooManyOperations(position) => {
                format!(
                    "routing script '{}' exceeded {MAX_OPERATIONS} operations at {position}",
                    self.name
                )
            }
            other => format!("routing script '{}' failed: {other}", self.name),
        })?;
        let array = result
            .try_cast::<Array>()
            .ok_or_else(|| format!("routing script '{}' must return an array", self.name))?;
        let mut order = Vec::with_capacity(array.len());
        for item in array {
            let name = if item.is_string() {
                item.into_string()
                    .map_err(|t| format!("bad array element: {t}"))?
            } else if let Some(map) = item.try_cast::<Map>() {
                map.get("model")
                    .and_then(|m| m.clone().into_string().ok())
                    .ok_or_else(|| {
                        format!(
                            "routing script '{}' returned a map without 'model'",
                            self.name
                        )
                    })?
            } else {
                return Err(format!(
                    "routing script '{}' must return candidate maps or model names",
                    self.name
                ));
            };
            let index = candidates
                .iter()
                .position(|c| c.model == name)
                .ok_or_else(|| {
                    format!(
                        "routing script '{}' returned '{name}', which is not a candidate",
                        self.name
                    )
                })?;
            if !order.contains(&index) {
                order.push(index);
            }
        }
        Ok(order)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidates() -> Vec<CandidateView> {
        ["a", "b", "c"]
            .iter()
            .enumerate()
            .map(|(i, name)| CandidateView {
                model: (*name).to_string(),
                provider: "p".into(),
                weight: 1,
                priority: 2 - i as i64,
                region: "eu".into(),
                tags: vec![],
                price_input: i as f64,
                price_output: 1.0,
                error_rate: 0.0,
                latency_ms: 10.0 * (3 - i) as f64,
                in_cooldown: false,
            })
            .collect()
    }

    fn script(source: &str) -> Result<RoutingScript, LoadError> {
        compile_script("s", Path::new("routing/s.rhai"), source, String::new())
    }

    #[test]
    fn route_orders_candidates_by_name_or_map() {
        let s = script("fn route(request, candidates) { candidates.sort(|a, b| a.priority - b.priority); candidates }")
            .expect("compiles");
        assert_eq!(
            s.order(&serde_json::json!({}), &candidates())
                .expect("runs"),
            [2, 1, 0]
        );
        let s =
            script("fn route(request, candidates) { [\"b\", \"b\", \"a\"] }").expect("compiles");
        assert_eq!(
            s.order(&serde_json::json!({}), &candidates())
                .expect("runs"),
            [1, 0]
        );
    }

    #[test]
    fn runaway_scripts_are_stopped() {
        let s = script("fn route(request, candidates) { loop {} }").expect("compiles");
        let started = Instant::now();
        let err = s
            .order(&serde_json::json!({}), &candidates())
            .expect_err("stopped");
        assert!(err.contains("exceeded"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(1));
        let s = script("fn route(request, candidates) { let s = \"x\"; loop { s += s; } }")
            .expect("compiles");
        assert!(s.order(&serde_json::json!({}), &candidates()).is_err());
    }

    #[test]
    fn scripts_cannot_reach_files_or_eval() {
        let s = script("fn route(request, candidates) { import \"secrets\" as s; candidates }")
            .expect("compiles");
        let err = s
            .order(&serde_json::json!({}), &candidates())
            .expect_err("no modules");
        assert!(err.contains("secrets"), "{err}");
        assert!(script("fn route(request, candidates) { eval(\"1\") }").is_err());
    }

    #[test]
    fn a_script_without_route_or_with_bad_syntax_is_a_load_error() {
        assert!(
            script("fn other() { 1 }")
                .expect_err("no route")
                .message
                .contains("fn route")
        );
        let err = script("// header\nfn route(request, candidates) {\n  let x = ;\n}")
            .expect_err("syntax");
        assert_eq!(err.line, Some(3));
        assert_eq!(
            script("// @on_error fallback\nfn route(r, c) { c }")
                .expect("ok")
                .on_error,
            OnError::Fallback
        );
    }

    #[test]
    fn unknown_names_are_errors() {
        let s = script("fn route(request, candidates) { [\"zzz\"] }").expect("compiles");
        assert!(
            s.order(&serde_json::json!({}), &candidates())
                .expect_err("bad")
                .contains("not a candidate")
        );
    }

    const LEAST_LATENCY: &str = "fn route(request, candidates) {
        candidates.sort(|a, b| if a.health.latency_ms < b.health.latency_ms { -1 } else { 1 });
        candidates
    }";
    const COOLDOWN_LAST: &str = "fn route(request, candidates) {
        candidates.sort(|a, b| {
            if a.health.in_cooldown != b.health.in_cooldown {
                return if a.health.in_cooldown { 1 } else { -1 };
            }
            a.priority - b.priority
        });
        candidates
    }";

    #[test]
    fn only_scripts_of_their_candidates_alone_are_remembered() {
        let remembers = |body: &str| {
            script(&format!("fn route(request, candidates) {{ {body} }}"))
                .expect("compiles")
                .remembers()
        };
        assert!(script(LEAST_LATENCY).expect("compiles").remembers());
        assert!(script(COOLDOWN_LAST).expect("compiles").remembers());
        assert!(remembers("candidates.filter(|c| c.weight > 0)"));
        assert!(!remembers("if request.stream { candidates } else { [] }"));
        assert!(!remembers("let r = request; candidates"));
        assert!(!remembers(
            "candidates.filter(|c| c.region == request.model)"
        ));
        assert!(!remembers("candidates.filter(|c| rand_float() < 0.5)"));
        assert!(!remembers("let n = rand_int(0, 2); candidates"));
        assert!(!remembers(
            "let f = Fn(\"rand_float\"); if f.call() < 0.5 { candidates } else { [] }"
        ));
        assert!(!remembers(
            "let name = \"rand\" + \"_float\"; let f = Fn(name); candidates"
        ));
        assert!(!remembers("let t = timestamp(); candidates"));
        assert!(!remembers("print(\"x\"); candidates"));
        assert!(!remembers("debug(candidates); candidates"));
        // Another name for the request parameter.
        assert!(
            !script("fn route(req, cs) { if req.stream { cs } else { [] } }")
                .expect("compiles")
                .remembers()
        );
        assert!(
            script("fn route(req, cs) { helper(cs) } fn helper(list) { list }")
                .expect("compiles")
                .remembers()
        );
    }

    #[test]
    fn a_remembered_answer_follows_the_health_it_read() {
        let s = script(LEAST_LATENCY).expect("compiles");
        let mut c = candidates();
        // Latencies 30, 20, 10: the fastest first.
        assert_eq!(s.order_for(|| Dynamic::UNIT, &c).expect("runs"), [2, 1, 0]);
        assert_eq!(s.order_for(|| Dynamic::UNIT, &c).expect("runs"), [2, 1, 0]);
        c[0].latency_ms = 1.0;
        assert_eq!(s.order_for(|| Dynamic::UNIT, &c).expect("runs"), [0, 2, 1]);
        c[0].in_cooldown = true;
        assert_eq!(
            s.order_for(|| Dynamic::UNIT, &c).expect("runs"),
            [0, 2, 1],
            "in_cooldown is not read by this script"
        );

        let s = script(COOLDOWN_LAST).expect("compiles");
        let mut c = candidates();
        assert_eq!(s.order_for(|| Dynamic::UNIT, &c).expect("runs"), [2, 1, 0]);
        let memo = s.memo.as_ref().expect("remembered");
        c[1].latency_ms = 999.0;
        c[2].error_rate = 0.5;
        assert_eq!(memo.get(&c), Some(vec![2, 1, 0]), "unread fields changed");
        c[2].in_cooldown = true;
        assert_eq!(memo.get(&c), None, "a read field changed");
        assert_eq!(s.order_for(|| Dynamic::UNIT, &c).expect("runs"), [1, 0, 2]);
        // Any other field of a candidate is part of the question.
        c[0].priority = -1;
        assert_eq!(memo.get(&c), None);
        assert_eq!(s.order_for(|| Dynamic::UNIT, &c).expect("runs"), [0, 1, 2]);
        c[0].model = "z".into();
        assert_eq!(memo.get(&c), None);
    }

    #[test]
    fn health_reads_like_a_map_and_whole_reads_depend_on_every_field() {
        let s = script(
            "fn route(request, candidates) {
                let h = candidates[0].health;
                if h[\"in_cooldown\"] || h.keys().len() != 3 { return []; }
                if `${h}`.contains(\"latency_ms\") { candidates } else { [] }
            }",
        )
        .expect("compiles");
        let mut c = candidates();
        assert_eq!(s.order_for(|| Dynamic::UNIT, &c).expect("runs"), [0, 1, 2]);
        let memo = s.memo.as_ref().expect("remembered");
        c[0].latency_ms = 5.0;
        assert_eq!(memo.get(&c), None, "the whole health was read");
        c[0].latency_ms = 30.0;
        c[1].latency_ms = 5.0;
        assert_eq!(
            memo.get(&c),
            Some(vec![0, 1, 2]),
            "candidate 1 was not read"
        );
        let s =
            script("fn route(request, candidates) { candidates[0].health[\"nope\"]; candidates }")
                .expect("compiles");
        let err = s
            .order_for(|| Dynamic::UNIT, &c)
            .expect_err("unknown field");
        assert!(err.contains("nope"), "{err}");
        assert_eq!(
            s.memo.as_ref().expect("remembered").get(&c),
            None,
            "failures are not remembered"
        );
    }

    #[test]
    fn scripts_that_are_not_remembered_run_every_time() {
        let s = script(
            "fn route(request, candidates) { if request.pick == 0 { [candidates[0]] } else { [candidates[1]] } }",
        )
        .expect("compiles");
        let c = candidates();
        assert_eq!(
            s.order(&serde_json::json!({"pick": 0}), &c).expect("runs"),
            [0]
        );
        assert_eq!(
            s.order(&serde_json::json!({"pick": 1}), &c).expect("runs"),
            [1]
        );
    }

    #[test]
    fn request_built_from_facts_equals_the_json_route() {
        let body = serde_json::json!({
            "model": "m", "max_tokens": 64, "temperature": 0.25,
            "metadata": {"tier": "gold", "n": 3, "x": [1, 2.5], "nothing": null},
        });
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("x-team", "platform".parse().expect("header"));
        let facts = crate::policy::facts::RequestFacts::from_body(
            "openai",
            "/v1/chat/completions",
            "m",
            body.as_object().expect("object"),
            99,
            Some(&headers),
            Some("::1".parse().expect("ip")),
        );
        let via_json = |facts: &crate::policy::facts::RequestFacts, team: Option<&str>| {
            let mut request = facts.to_json();
            request["key_id"] = serde_json::Value::String("key_1".into());
            request["team"] = team.map_or(serde_json::Value::Null, |t| t.into());
            rhai::serde::to_dynamic(&request).expect("converts")
        };
        let back =
            |d: Dynamic| -> serde_json::Value { rhai::serde::from_dynamic(&d).expect("back") };
        assert_eq!(
            back(request_to_dynamic(&facts, "key_1", Some("platform"))),
            back(via_json(&facts, Some("platform")))
        );
        let mut bare = facts.clone();
        bare.max_tokens = None;
        bare.temperature = None;
        bare.client_ip = None;
        bare.metadata.clear();
        assert_eq!(
            back(request_to_dynamic(&bare, "key_1", None)),
            back(via_json(&bare, None))
        );
        // Types, not only values: integers stay integers, absent values are unit.
        let d = request_to_dynamic(&facts, "key_1", None);
        let map = d.try_cast::<Map>().expect("map");
        assert!(map["max_tokens"].is_int());
        assert!(map["temperature"].is_float());
        assert!(map["team"].is_unit());
    }
}
