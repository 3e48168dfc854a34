//! Provider-adapter plugins (`world = "provider-adapter"`): a warm pool of sandboxed instances
//! that translate OpenAI-shaped requests into a provider's native HTTP request and its answers
//! (whole, or event by event) back.
//!
//! An adapter never reaches the network, the filesystem or the environment: its WASI context is
//! empty (stderr only when the manifest grants it). The gateway makes the HTTP call
//! ([`crate::upstream::adapter`]) and injects the provider credential itself, so an adapter
//! never sees the key. Limits are the guardrails' (`memory_mb`, `time_ms` per call,
//! `instances` warm, `max_instances` live); an instance that trapped, ran out of time or memory
//! is dropped, never reused.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use wasmtime::Store;
use wasmtime::component::Component;
use wasmtime_wasi::WasiCtx;

use super::host::{self, Failure, GuestState, Runtime, WIT_VERSION};
use super::manifest::Limits;

/// The guest bindings of the `provider-adapter` world, generated from the SDK's WIT.
pub mod bindings {
    wasmtime::component::bindgen!({
        world: "provider-adapter",
        path: "../sdk/wit/plugin.wit",
        exports: { default: async },
    });
}

pub use bindings::tollgate::plugin::types::{AdapterError, HttpMessage, SseEvent, Usage};
use bindings::{ProviderAdapter, ProviderAdapterPre};

/// A loaded provider adapter, named by providers with `family = "adapter"`.
pub struct Adapter {
    /// The manifest's file stem (`plugins/ollama-adapter.toml` is `ollama-adapter`).
    pub name: String,
    /// The manifest's description.
    pub description: Option<String>,
    /// The component file.
    pub wasm_path: PathBuf,
    /// SHA-256 of the component.
    pub wasm_hash: String,
    /// SHA-256 of the manifest text and the component: unchanged means reusable as is.
    pub source_hash: String,
    pub(super) component: Component,
    /// The warm instances.
    pub pool: Pool,
}

impl std::fmt::Debug for Adapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adapter")
            .field("name", &self.name)
            .field("wasm_path", &self.wasm_path)
            .field("pool", &self.pool)
            .finish()
    }
}

/// A provider's `adapter = "<name>"`, bound to the loaded plugin when the snapshot is built.
#[derive(Debug)]
pub struct Binding {
    /// The plugin's name (its manifest's file stem).
    pub name: String,
    plugin: OnceLock<Arc<Adapter>>,
}

impl Binding {
    /// An unbound name.
    pub fn new(name: &str) -> Self {
        Binding {
            name: name.to_string(),
            plugin: OnceLock::new(),
        }
    }

    /// Binds to the adapter of that name among `loaded`.
    pub fn bind(&self, loaded: &[Arc<Adapter>]) -> Result<(), String> {
        let Some(adapter) = loaded.iter().find(|a| a.name == self.name) else {
            let names: Vec<&str> = loaded.iter().map(|a| a.name.as_str()).collect();
            return Err(format!(
                "no provider-adapter plugin named '{}' is loaded (loaded: {})",
                self.name,
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            ));
        };
        let _ = self.plugin.set(adapter.clone());
        Ok(())
    }

    /// The bound adapter (`None` only if the snapshot failed to load).
    pub fn get(&self) -> Option<&Arc<Adapter>> {
        self.plugin.get()
    }
}

/// Resolves the imports of an adapter component once.
pub fn prepare(
    runtime: &Runtime,
    component: &Component,
) -> Result<ProviderAdapterPre<GuestState>, String> {
    let pre = runtime.linker().instantiate_pre(component).map_err(|e| {
        format!("imports something this gateway does not provide (only WASI 0.2 is linked): {e:#}")
    })?;
    ProviderAdapterPre::new(pre).map_err(|e| {
        format!("does not match the provider-adapter world of tollgate:plugin@{WIT_VERSION}: {e:#}")
    })
}

/// A live, configured instance.
struct Warm {
    store: Store<GuestState>,
    adapter: ProviderAdapter,
}

/// The instances of one adapter.
pub struct Pool {
    pre: ProviderAdapterPre<GuestState>,
    config: String,
    limits: Limits,
    stderr: bool,
    idle: Mutex<Vec<Warm>>,
    permits: tokio::sync::Semaphore,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("limits", &self.limits)
            .field("idle", &self.idle())
            .finish()
    }
}

impl Pool {
    /// Prepares the pool; [`Pool::warm_up`] creates (and validates) the first instance.
    pub fn new(
        pre: ProviderAdapterPre<GuestState>,
        config: String,
        limits: Limits,
        stderr: bool,
    ) -> Self {
        let permits = tokio::sync::Semaphore::new(limits.max_instances);
        Pool {
            pre,
            config,
            limits,
            stderr,
            idle: Mutex::new(Vec::new()),
            permits,
        }
    }

    async fn instantiate(&self) -> Result<Warm, Failure> {
        let mut wasi = WasiCtx::builder();
        if self.stderr {
            wasi.inherit_stderr();
        }
        let (mut store, _ticking) =
            host::guest_store(self.pre.engine(), wasi.build(), &self.limits);
        let adapter = self
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| self.classify(&e, &store, true))?;
        match adapter
            .tollgate_plugin_adapter()
            .call_configure(&mut store, &self.config)
            .await
        {
            Ok(Ok(())) => Ok(Warm { store, adapter }),
            Ok(Err(message)) => Err(Failure::Instantiate(format!(
                "configure refused the config: {message}"
            ))),
            Err(e) => Err(self.classify(&e, &store, true)),
        }
    }

    /// Creates one configured instance and keeps it warm (at load time: an adapter whose
    /// `configure` refuses its config is refused with the set).
    pub async fn warm_up(&self) -> Result<(), Failure> {
        let warm = self.instantiate().await?;
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(warm);
        }
        Ok(())
    }

    fn classify(&self, error: &wasmtime::Error, store: &Store<GuestState>, init: bool) -> Failure {
        host::classify(error, store, &self.limits, init)
    }

    async fn call<R>(
        &self,
        run: impl AsyncFnOnce(&ProviderAdapter, &mut Store<GuestState>) -> wasmtime::Result<R>,
    ) -> Result<R, Failure> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| Failure::Instantiate("the adapter is shutting down".into()))?;
        let pooled = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let Warm { mut store, adapter } = match pooled {
            Some(warm) => warm,
            None => self.instantiate().await?,
        };
        let _ticking = host::arm(&mut store, Duration::from_millis(self.limits.time_ms));
        match run(&adapter, &mut store).await {
            Ok(result) => {
                if let Ok(mut idle) = self.idle.lock()
                    && idle.len() < self.limits.instances
                {
                    idle.push(Warm { store, adapter });
                }
                Ok(result)
            }
            // The instance may be in any state after a trap: drop it.
            Err(e) => Err(self.classify(&e, &store, false)),
        }
    }

    /// `transform-request`: an OpenAI-shaped request to the provider's native one.
    pub async fn transform_request(
        &self,
        request: &HttpMessage,
    ) -> Result<Result<HttpMessage, AdapterError>, Failure> {
        self.call(async |a, store| {
            a.tollgate_plugin_adapter()
                .call_transform_request(store, request)
                .await
        })
        .await
    }

    /// `transform-response`: a native answer (any status) to the OpenAI shape.
    pub async fn transform_response(
        &self,
        response: &HttpMessage,
    ) -> Result<Result<HttpMessage, AdapterError>, Failure> {
        self.call(async |a, store| {
            a.tollgate_plugin_adapter()
                .call_transform_response(store, response)
                .await
        })
        .await
    }

    /// `transform-stream-event`: one native stream event to OpenAI chunks.
    pub async fn transform_stream_event(
        &self,
        event: &SseEvent,
    ) -> Result<Result<Vec<SseEvent>, AdapterError>, Failure> {
        self.call(async |a, store| {
            a.tollgate_plugin_adapter()
                .call_transform_stream_event(store, event)
                .await
        })
        .await
    }

    /// `extract-usage`: usage from a native body or stream event.
    pub async fn extract_usage(&self, body: &str) -> Result<Option<Usage>, Failure> {
        self.call(async |a, store| {
            a.tollgate_plugin_adapter()
                .call_extract_usage(store, body)
                .await
        })
        .await
    }

    /// Warm instances right now (for tests and status).
    pub fn idle(&self) -> usize {
        self.idle.lock().map(|i| i.len()).unwrap_or(0)
    }
}

/// What the loader read for one adapter manifest.
pub(super) struct Parts {
    pub name: String,
    pub description: Option<String>,
    pub wasm_path: PathBuf,
    pub wasm_hash: String,
    pub source_hash: String,
    pub config: String,
    pub limits: Limits,
    pub stderr: bool,
}

/// Builds a loaded adapter from its compiled component: resolves imports, warms one instance
/// (running `configure`).
pub(super) fn build(
    runtime: &Runtime,
    parts: Parts,
    component: Component,
) -> Result<Adapter, String> {
    let Parts {
        name,
        description,
        wasm_path,
        wasm_hash,
        source_hash,
        config,
        limits,
        stderr,
    } = parts;
    let pre =
        prepare(runtime, &component).map_err(|e| format!("adapter '{name}' is refused: {e}"))?;
    let pool = Pool::new(pre, config, limits, stderr);
    match host::block_on(pool.warm_up()) {
        Ok(Ok(())) => {}
        Ok(Err(failure)) => return Err(format!("adapter '{name}' {failure}")),
        Err(e) => return Err(e),
    }
    Ok(Adapter {
        name,
        description,
        wasm_path,
        wasm_hash,
        source_hash,
        component,
        pool,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::plugins::{Confinement, FOLDER, Loaded, load_dir_with};

    /// Loads with the built components' folder allowed besides the policy directory.
    fn load(dir: &Path, previous: &[Arc<Adapter>]) -> Loaded {
        let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/dist");
        let (confinement, problems) =
            Confinement::new(dir, &[dist.display().to_string()], Vec::<String>::new());
        assert!(problems.is_empty(), "{problems:?}");
        load_dir_with(dir, &[], previous, &confinement)
    }

    fn built(name: &str) -> PathBuf {
        let wasm =
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../plugins/dist/{name}.wasm"));
        assert!(
            wasm.is_file(),
            "{} is missing: run ./scripts/build-plugins",
            wasm.display()
        );
        wasm
    }

    fn dir_with(manifests: &[(&str, String)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join(FOLDER)).expect("mkdir");
        for (name, text) in manifests {
            std::fs::write(dir.path().join(FOLDER).join(format!("{name}.toml")), text)
                .expect("write manifest");
        }
        dir
    }

    fn manifest(wasm: &str, extra: &str) -> String {
        format!(
            "wasm = {:?}\nworld = \"provider-adapter\"\n{extra}\n",
            built(wasm).display().to_string()
        )
    }

    fn request(body: &str) -> HttpMessage {
        HttpMessage {
            status: 0,
            path: String::new(),
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn the_ollama_adapter_loads_warm_and_translates_in_the_sandbox() {
        let dir = dir_with(&[("ollama", manifest("ollama-adapter", ""))]);
        let loaded = load(dir.path(), &[]);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        assert!(loaded.plugins.is_empty(), "an adapter is not a guardrail");
        let adapter = loaded.adapters[0].clone();
        assert_eq!(adapter.name, "ollama");
        assert_eq!(adapter.pool.idle(), 1, "warmed at load");
        let native = host::block_on(adapter.pool.transform_request(&request(
            r#"{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}"#,
        )))
        .expect("runtime")
        .expect("no failure")
        .expect("translated");
        assert_eq!(native.path, "/api/chat");
        let body: serde_json::Value = serde_json::from_slice(&native.body).expect("json");
        assert_eq!(body["model"], "llama3.2");

        // Reloading the unchanged set reuses the adapter and its warm pool.
        let again = load(dir.path(), &loaded.adapters);
        assert!(Arc::ptr_eq(&loaded.adapters[0], &again.adapters[0]));
        assert_eq!(again.compiled, 0);
    }

    #[test]
    fn a_trapping_adapter_call_fails_and_its_instance_is_discarded() {
        let dir = dir_with(&[("trap", manifest("trap-adapter", ""))]);
        let loaded = load(dir.path(), &[]);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let pool = &loaded.adapters[0].pool;
        let answer = HttpMessage {
            status: 200,
            ..request("{}")
        };
        let failure = host::block_on(pool.transform_response(&answer))
            .expect("runtime")
            .expect_err("traps");
        assert!(matches!(failure, Failure::Trap(_)), "{failure:?}");
        assert_eq!(pool.idle(), 0, "the trapped instance was dropped");
        // The next call gets a fresh instance, which goes back to the pool.
        let ok = host::block_on(pool.transform_request(&request("{}"))).expect("runtime");
        assert!(matches!(ok, Ok(Ok(_))), "{ok:?}");
        assert_eq!(pool.idle(), 1);
    }

    #[test]
    fn adapter_manifests_get_no_phases_scope_environment_or_files() {
        for (extra, key) in [
            ("phases = [\"request\"]", "phases"),
            ("[applies_to]\nmodels = [\"x\"]", "applies_to"),
            ("[capabilities]\nenv = [\"HOME\"]", "capabilities.env"),
            (
                "[capabilities]\nread_dir = \"plugins\"",
                "capabilities.read_dir",
            ),
        ] {
            let dir = dir_with(&[("a", manifest("ollama-adapter", extra))]);
            let loaded = load(dir.path(), &[]);
            assert_eq!(loaded.errors.len(), 1, "{extra}");
            assert!(
                loaded.errors[0].to_string().contains(key),
                "{}",
                loaded.errors[0]
            );
        }
    }

    #[test]
    fn a_component_of_the_other_world_is_refused_naming_the_world() {
        let guard_as_adapter = manifest("pii-guard", "");
        let adapter_as_guard = format!(
            "wasm = {:?}\nphases = [\"request\"]\n",
            built("ollama-adapter").display().to_string()
        );
        let dir = dir_with(&[("a", guard_as_adapter), ("b", adapter_as_guard)]);
        let loaded = load(dir.path(), &[]);
        let errors: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].contains("provider-adapter world"),
            "{}",
            errors[0]
        );
        assert!(errors[1].contains("guardrail world"), "{}", errors[1]);
    }
}
