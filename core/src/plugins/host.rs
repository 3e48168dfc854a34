//! The wasmtime host: one engine, components compiled once, warm instance pools, limits.
//!
//! - One [`Engine`] per process (component model, epoch interruption), with a ticker thread
//!   that advances the epoch when a call in flight is past its deadline ([`super::epoch`]); a
//!   call that runs past its manifest's `time_ms` traps within about [`TICK`] of it.
//! - A plugin's component is compiled once per content hash and reused across reloads.
//! - Each plugin has an `InstancePre` (imports resolved once) and a small pool of warm
//!   instances, each already configured: a call takes one, runs, and gives it back. An instance
//!   that trapped, ran out of time or memory, or answered garbage is dropped, never reused.
//! - Memory is capped per instance by a [`ResourceLimiter`]; WASI p2 is linked with an empty
//!   context (no environment, arguments, files or network; stdio discarded) unless the
//!   manifest grants a capability.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, ResourceLimiter, Store, Trap};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};

use super::manifest::{Capabilities, Limits};

/// The guest bindings of `tollgate:plugin@0.1.0`, generated from the SDK's WIT (the single
/// source of truth).
pub mod bindings {
    wasmtime::component::bindgen!({
        world: "guardrail",
        path: "../sdk/wit/plugin.wit",
        exports: { default: async },
    });
}

/// The guest bindings of `tollgate:plugin@0.2.0`: the same `types` (reused, so one view serves
/// both versions) plus the `tool-guard` interface.
pub mod bindings_v2 {
    wasmtime::component::bindgen!({
        world: "guardrail",
        path: "../sdk/wit/0.2.0/plugin.wit",
        exports: { default: async },
        with: { "tollgate:plugin/types@0.2.0": super::bindings::tollgate::plugin::types },
    });
}

pub use bindings::tollgate::plugin::types as wit;
/// The types of the `tool-guard` interface (0.2.0).
pub use bindings_v2::exports::tollgate::plugin::tool_guard as tool_wit;

/// The WIT package version of provider adapters and of the oldest guardrails this gateway
/// loads (`tollgate:plugin@0.1.x`).
pub const WIT_VERSION: &str = "0.1.0";

/// The newest WIT package version of guardrails this gateway loads (`0.2.x` adds the MCP
/// tool-call phases).
pub const WIT_VERSION_LATEST: &str = "0.2.0";

/// A guardrail component prepared for one of the WIT versions this gateway loads.
pub enum GuardrailPre {
    /// Built for 0.1.x: requests, answers, streams.
    V1(bindings::GuardrailPre<GuestState>),
    /// Built for 0.2.x: also MCP tool calls.
    V2(bindings_v2::GuardrailPre<GuestState>),
}

impl GuardrailPre {
    fn engine(&self) -> &Engine {
        match self {
            GuardrailPre::V1(pre) => pre.engine(),
            GuardrailPre::V2(pre) => pre.engine(),
        }
    }

    /// Whether the component has the MCP tool-call phases (0.2.x).
    pub fn has_tool_phases(&self) -> bool {
        matches!(self, GuardrailPre::V2(_))
    }
}

/// An instantiated guardrail of either version.
enum Guardrail {
    V1(bindings::Guardrail),
    V2(bindings_v2::Guardrail),
}

/// Calls the same `guard` function of either version (the views are the same Rust types).
macro_rules! guard_call {
    ($guardrail:expr, $method:ident, $store:expr, $arg:expr) => {
        match $guardrail {
            Guardrail::V1(g) => g.tollgate_plugin_guard().$method($store, $arg).await,
            Guardrail::V2(g) => g.tollgate_plugin_guard().$method($store, $arg).await,
        }
    };
}

pub use super::epoch::TICK;
use super::epoch::{Ticker, Ticking};

/// The epoch ticker of the process's engine (set with [`RUNTIME`]).
static TICKER: OnceLock<Arc<Ticker>> = OnceLock::new();

/// Arms `store` to trap once `limit` has passed (from now) and has the ticker watch that
/// deadline: hold the guard across instantiation, `configure` and every call. `None` before the
/// runtime exists (no guest can run then).
pub(super) fn arm(store: &mut Store<GuestState>, limit: Duration) -> Option<Ticking> {
    let deadline = Instant::now() + limit;
    store.data_mut().deadline = deadline;
    store.set_epoch_deadline(1);
    TICKER.get().map(|ticker| ticker.ticking(deadline))
}

/// Time allowed for instantiation plus `configure` (guests compile their patterns there).
const CONFIGURE_TIME: Duration = Duration::from_secs(2);

/// Why a plugin call did not produce a verdict.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The call ran past the manifest's `time_ms`.
    #[error("exceeded its time limit of {0} ms")]
    Timeout(u64),
    /// The guest tried to grow its memory past the manifest's `memory_mb`.
    #[error("exceeded its memory limit of {0} MiB")]
    Memory(u64),
    /// The guest trapped (a panic, an out-of-bounds access, `unreachable`).
    #[error("trapped: {0}")]
    Trap(String),
    /// The verdict is unusable (an edit for a part that does not exist, a bad code).
    #[error("returned an invalid verdict: {0}")]
    Invalid(String),
    /// A fresh instance could not be created or configured.
    #[error("could not be instantiated: {0}")]
    Instantiate(String),
}

impl Failure {
    /// A short, stable name for records and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Timeout(_) => "timeout",
            Failure::Memory(_) => "memory_limit",
            Failure::Trap(_) => "trap",
            Failure::Invalid(_) => "invalid_verdict",
            Failure::Instantiate(_) => "instantiate",
        }
    }
}

/// Caps linear memory and tables of one instance, remembering whether the cap was hit.
pub(super) struct Limiter {
    max_memory: usize,
    hit: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory {
            self.hit = true;
            return Err(wasmtime::Error::msg(format!(
                "memory limit of {} bytes exceeded",
                self.max_memory
            )));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// What went wrong in a guest call (or, `configuring`, in instantiating and configuring it):
/// its memory cap, its time limit, or a trap described by its first line. Shared by the
/// guardrail and adapter hosts; the instance is discarded either way.
pub(super) fn classify(
    error: &wasmtime::Error,
    store: &Store<GuestState>,
    limits: &Limits,
    configuring: bool,
) -> Failure {
    if store.data().limiter.hit {
        return Failure::Memory(limits.memory_mb);
    }
    if let Some(Trap::Interrupt) = error.downcast_ref::<Trap>() {
        let limit = if configuring {
            u64::try_from(CONFIGURE_TIME.as_millis()).unwrap_or(u64::MAX)
        } else {
            limits.time_ms
        };
        return Failure::Timeout(limit);
    }
    let text = match error.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => error.root_cause().to_string(),
    };
    let first: String = text
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .chars()
        .take(200)
        .collect();
    if configuring {
        Failure::Instantiate(first)
    } else {
        Failure::Trap(first)
    }
}

/// What one store holds.
pub struct GuestState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
    /// When the running call (or instantiation) must have ended.
    deadline: Instant,
}

/// A fresh store for one guest instance: `wasi` as its only capabilities, `limits`' memory cap,
/// and epoch interruption armed with the time allowed to instantiate and configure it; the guard
/// that has the ticker watch that deadline comes with it. Shared by the guardrail and adapter
/// hosts.
///
/// At every epoch increment the store compares the clock with its deadline ([`arm`]): past it,
/// the guest traps ([`Trap::Interrupt`]); before it, it runs on until the next increment.
pub(super) fn guest_store(
    engine: &Engine,
    wasi: WasiCtx,
    limits: &Limits,
) -> (Store<GuestState>, Option<Ticking>) {
    let state = GuestState {
        wasi,
        table: ResourceTable::new(),
        limiter: Limiter {
            max_memory: limits.memory_bytes(),
            hit: false,
        },
        deadline: Instant::now(),
    };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limiter);
    store.epoch_deadline_callback(|store| {
        Ok(if Instant::now() >= store.data().deadline {
            wasmtime::UpdateDeadline::Interrupt
        } else {
            wasmtime::UpdateDeadline::Continue(1)
        })
    });
    let ticking = arm(&mut store, CONFIGURE_TIME);
    (store, ticking)
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The process-wide engine and linker.
pub struct Runtime {
    engine: Engine,
    linker: Linker<GuestState>,
}

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

/// The shared runtime, created (with its epoch ticker) on first use.
pub fn runtime() -> Result<&'static Runtime, String> {
    RUNTIME
        .get_or_init(|| {
            let mut config = wasmtime::Config::new();
            config.wasm_component_model(true);
            config.epoch_interruption(true);
            // Compile on the calling thread: a parallel compile leaves a rayon pool whose idle
            // threads keep the memory their compile freed (≈ 10 MiB of resident memory for the
            // gateway's lifetime, docs/performance.md); a guardrail compiles once per content hash.
            config.parallel_compilation(false);
            let engine = Engine::new(&config).map_err(|e| format!("wasmtime engine: {e}"))?;
            let mut linker = Linker::new(&engine);
            wasmtime_wasi::p2::add_to_linker_async(&mut linker)
                .map_err(|e| format!("WASI linker: {e}"))?;
            let weak = engine.weak();
            let ticker = Ticker::start("wasm-epoch", move || {
                weak.upgrade().is_some_and(|engine| {
                    engine.increment_epoch();
                    true
                })
            })
            .map_err(|e| format!("epoch ticker: {e}"))?;
            let _ = TICKER.set(ticker);
            Ok(Runtime { engine, linker })
        })
        .as_ref()
        .map_err(Clone::clone)
}

impl Runtime {
    /// The linker (WASI 0.2 only).
    pub(super) fn linker(&self) -> &Linker<GuestState> {
        &self.linker
    }

    /// Compiles a component (≈1 s for a release-built guardrail; callers reuse the result by
    /// content hash) and checks it was built for a WIT version this gateway loads.
    pub fn compile(&self, wasm: &[u8]) -> Result<Component, String> {
        let component = Component::new(&self.engine, wasm).map_err(|e| {
            let text = format!("{e:#}");
            if wasm.starts_with(b"\0asm\x01\0\0\0") {
                format!(
                    "this is a core WebAssembly module, not a component: build it for wasm32-wasip2 ({text})"
                )
            } else {
                format!("not a valid WebAssembly component: {text}")
            }
        })?;
        check_world(&self.engine, &component)?;
        Ok(component)
    }

    /// Resolves the imports of a guardrail component once, for the WIT version it was built
    /// for.
    pub fn prepare(&self, component: &Component) -> Result<GuardrailPre, String> {
        let pre = self.linker.instantiate_pre(component).map_err(|e| {
            format!(
                "imports something this gateway does not provide (only WASI 0.2 is linked): {e:#}"
            )
        })?;
        let version = guard_version(&self.engine, component).unwrap_or_default();
        if compatible_with(&version, WIT_VERSION_LATEST) {
            bindings_v2::GuardrailPre::new(pre)
                .map(GuardrailPre::V2)
                .map_err(|e| {
                    format!(
                        "does not match the guardrail world of tollgate:plugin@{WIT_VERSION_LATEST}: {e:#}"
                    )
                })
        } else {
            bindings::GuardrailPre::new(pre)
                .map(GuardrailPre::V1)
                .map_err(|e| {
                    format!(
                        "does not match the guardrail world of tollgate:plugin@{WIT_VERSION}: {e:#}"
                    )
                })
        }
    }
}

/// The version of the `tollgate:plugin/guard` interface a component exports, if any.
fn guard_version(engine: &Engine, component: &Component) -> Option<String> {
    component
        .component_type()
        .exports(engine)
        .find_map(|(name, _)| {
            name.strip_prefix("tollgate:plugin/guard@")
                .map(str::to_string)
        })
}

/// Refuses components that are not `tollgate:plugin` guardrails or adapters of a compatible version,
/// naming what they are.
fn check_world(engine: &Engine, component: &Component) -> Result<(), String> {
    let ty = component.component_type();
    let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
    let ours: Vec<&String> = exports
        .iter()
        .filter(|e| e.starts_with("tollgate:plugin/"))
        .collect();
    let Some(export) = ours.first() else {
        return Err(format!(
            "not a tollgate plugin: it exports {} instead of tollgate:plugin/guard@{WIT_VERSION}",
            if exports.is_empty() {
                "nothing".to_string()
            } else {
                exports.join(", ")
            }
        ));
    };
    let (interface, version) = export
        .trim_start_matches("tollgate:plugin/")
        .split_once('@')
        .unwrap_or((export.as_str(), ""));
    let loads = match interface {
        // Guardrails of either version; adapters of 0.1.x.
        "guard" | "tool-guard" => {
            compatible(version) || compatible_with(version, WIT_VERSION_LATEST)
        }
        _ => compatible(version),
    };
    if !loads {
        return Err(format!(
            "built for tollgate:plugin@{version}, but this gateway loads guardrails of \
             tollgate:plugin@{WIT_VERSION} and @{WIT_VERSION_LATEST} and provider adapters of \
             @{WIT_VERSION}; rebuild the plugin with a tollgate-plugin-sdk of one of those"
        ));
    }
    if interface != "guard" && interface != "adapter" && interface != "tool-guard" {
        return Err(format!(
            "exports tollgate:plugin/{interface}, neither the guardrail nor the provider-adapter \
             interface"
        ));
    }
    Ok(())
}

/// Same major, and for 0.x the same minor (Cargo's semver rules), as [`WIT_VERSION`].
fn compatible(version: &str) -> bool {
    compatible_with(version, WIT_VERSION)
}

/// Same major as `supported`, and for 0.x the same minor.
fn compatible_with(version: &str, supported: &str) -> bool {
    let parse = |v: &str| -> Option<(u64, u64)> {
        let mut it = v.split(['.', '-', '+']);
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    };
    match (parse(version), parse(supported)) {
        (Some((0, a)), Some((0, b))) => a == b,
        (Some((a, _)), Some((b, _))) => a == b,
        _ => false,
    }
}

/// A live, configured instance.
struct Warm {
    store: Store<GuestState>,
    guard: Guardrail,
}

/// The instances of one plugin: its pre-linked component, configuration and warm pool.
pub struct Instances {
    pre: GuardrailPre,
    config: String,
    limits: Limits,
    capabilities: Capabilities,
    base_dir: std::path::PathBuf,
    idle: Mutex<Vec<Warm>>,
    /// One permit per live instance (`limits.max_instances`).
    permits: tokio::sync::Semaphore,
}

impl std::fmt::Debug for Instances {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instances")
            .field("limits", &self.limits)
            .field("idle", &self.idle.lock().map(|i| i.len()).unwrap_or(0))
            .finish()
    }
}

impl Instances {
    /// Prepares the pool; call [`Instances::warm_up`] to create (and validate) the first one.
    pub fn new(
        pre: GuardrailPre,
        config: String,
        limits: Limits,
        capabilities: Capabilities,
        base_dir: std::path::PathBuf,
    ) -> Self {
        let permits = tokio::sync::Semaphore::new(limits.max_instances);
        Instances {
            pre,
            config,
            limits,
            capabilities,
            base_dir,
            idle: Mutex::new(Vec::new()),
            permits,
        }
    }

    fn wasi(&self) -> Result<WasiCtx, String> {
        let mut builder = WasiCtx::builder();
        for name in &self.capabilities.env {
            // The loader refuses these; never pass them even if a manifest slipped through.
            if super::manifest::is_gateway_env(name) {
                continue;
            }
            if let Ok(value) = std::env::var(name) {
                builder.env(name, &value);
            }
        }
        if self.capabilities.stderr {
            builder.inherit_stderr();
        }
        if let Some(dir) = &self.capabilities.read_dir {
            builder
                .preopened_dir(self.base_dir.join(dir), "/data", FsPerms::ReadOnly)
                .map_err(|e| format!("capabilities.read_dir: {e:#}"))?;
        }
        Ok(builder.build())
    }

    async fn instantiate(&self) -> Result<Warm, Failure> {
        let wasi = self.wasi().map_err(Failure::Instantiate)?;
        let (mut store, _ticking) = guest_store(self.pre.engine(), wasi, &self.limits);
        let instantiated = match &self.pre {
            GuardrailPre::V1(pre) => pre.instantiate_async(&mut store).await.map(Guardrail::V1),
            GuardrailPre::V2(pre) => pre.instantiate_async(&mut store).await.map(Guardrail::V2),
        };
        let guard = instantiated.map_err(|e| self.classify(&e, &store, true))?;
        match guard_call!(&guard, call_configure, &mut store, &self.config) {
            Ok(Ok(())) => Ok(Warm { store, guard }),
            Ok(Err(message)) => Err(Failure::Instantiate(format!(
                "configure refused the config: {message}"
            ))),
            Err(e) => Err(self.classify(&e, &store, true)),
        }
    }

    /// Creates one configured instance and keeps it warm. Used at load time: a plugin whose
    /// `configure` refuses its config is refused with the set.
    pub async fn warm_up(&self) -> Result<(), Failure> {
        let warm = self.instantiate().await?;
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(warm);
        }
        Ok(())
    }

    fn classify(
        &self,
        error: &wasmtime::Error,
        store: &Store<GuestState>,
        configuring: bool,
    ) -> Failure {
        classify(error, store, &self.limits, configuring)
    }

    async fn take(&self) -> Result<Warm, Failure> {
        let pooled = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        match pooled {
            Some(warm) => Ok(warm),
            None => self.instantiate().await,
        }
    }

    fn give_back(&self, warm: Warm) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < self.limits.instances
        {
            idle.push(warm);
        }
    }

    async fn call<R>(
        &self,
        run: impl AsyncFnOnce(&Guardrail, &mut Store<GuestState>) -> wasmtime::Result<R>,
    ) -> Result<R, Failure> {
        // Bounded concurrency: at most `max_instances` instances exist for this plugin.
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| Failure::Instantiate("the plugin is shutting down".into()))?;
        let Warm { mut store, guard } = self.take().await?;
        let _ticking = arm(&mut store, Duration::from_millis(self.limits.time_ms));
        match run(&guard, &mut store).await {
            Ok(result) => {
                self.give_back(Warm { store, guard });
                Ok(result)
            }
            // The instance may be in any state after a trap: drop it.
            Err(e) => Err(self.classify(&e, &store, false)),
        }
    }

    /// The `request` phase.
    pub async fn check_request(&self, view: &wit::RequestView) -> Result<wit::Verdict, Failure> {
        self.call(async |g, store| guard_call!(g, call_check_request, store, view))
            .await
    }

    /// The `response` phase.
    pub async fn check_response(&self, view: &wit::ResponseView) -> Result<wit::Verdict, Failure> {
        self.call(async |g, store| guard_call!(g, call_check_response, store, view))
            .await
    }

    /// The `stream` phase.
    pub async fn check_stream(&self, view: &wit::StreamView) -> Result<wit::Verdict, Failure> {
        self.call(async |g, store| guard_call!(g, call_check_stream, store, view))
            .await
    }

    /// Whether the component has the MCP tool-call phases (built for 0.2.x).
    pub fn has_tool_phases(&self) -> bool {
        self.pre.has_tool_phases()
    }

    /// The `tool-call` phase (0.2.x components; an older one has no such phase and allows).
    pub async fn check_tool_call(
        &self,
        view: &tool_wit::ToolCall,
    ) -> Result<wit::Verdict, Failure> {
        self.call(async |g, store| match g {
            Guardrail::V2(g) => {
                g.tollgate_plugin_tool_guard()
                    .call_check_tool_call(store, view)
                    .await
            }
            Guardrail::V1(_) => Ok(allow()),
        })
        .await
    }

    /// The `tool-result` phase (0.2.x components; an older one has no such phase and allows).
    pub async fn check_tool_result(
        &self,
        view: &tool_wit::ToolResult,
    ) -> Result<wit::Verdict, Failure> {
        self.call(async |g, store| match g {
            Guardrail::V2(g) => {
                g.tollgate_plugin_tool_guard()
                    .call_check_tool_result(store, view)
                    .await
            }
            Guardrail::V1(_) => Ok(allow()),
        })
        .await
    }

    /// Warm instances right now (for tests and status).
    pub fn idle(&self) -> usize {
        self.idle.lock().map(|i| i.len()).unwrap_or(0)
    }
}

fn allow() -> wit::Verdict {
    wit::Verdict {
        action: wit::Action::Allow,
        findings: Vec::new(),
        score: None,
    }
}

/// Runs `future` to completion on a private current-thread runtime on its own thread, so load
/// code (sync, possibly called from inside the gateway's runtime) can warm instances.
pub fn block_on<F>(future: F) -> Result<F::Output, String>
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map(|rt| rt.block_on(future))
                    .map_err(|e| format!("cannot start a runtime for plugin loading: {e}"))
            })
            .join()
            .map_err(|_| "plugin loading thread panicked".to_string())?
    })
}

/// Measures a call.
pub fn elapsed_us(started: Instant) -> i64 {
    i64::try_from(started.elapsed().as_micros()).unwrap_or(i64::MAX)
}

/// Shared handle to a plugin's instances.
pub type SharedInstances = Arc<Instances>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wit_versions_follow_cargo_semver() {
        assert!(compatible("0.1.0"));
        assert!(compatible("0.1.7"));
        assert!(!compatible("0.2.0"));
        assert!(compatible_with("0.2.3", WIT_VERSION_LATEST));
        assert!(!compatible_with("0.3.0", WIT_VERSION_LATEST));
        assert!(!compatible("1.0.0"));
        assert!(!compatible("garbage"));
    }

    #[test]
    fn a_core_module_is_refused_as_not_a_component() {
        let rt = runtime().expect("runtime");
        let err = rt.compile(b"\0asm\x01\0\0\0").expect_err("refused");
        assert!(err.contains("not a component"), "{err}");
    }
}
