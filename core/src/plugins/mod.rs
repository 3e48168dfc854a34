//! WASM plugins: manifests in the policy directory, the wasmtime host, and the JSON views
//! guardrails see.
//!
//! A policy directory's `plugins/*.toml` manifests are loaded with the rest of the snapshot
//! ([`load_dir`]): each names a component built with the plugin SDK (`sdk/`, WIT package
//! `tollgate:plugin@0.1.0`). Components are compiled once per content hash and reused across
//! reloads; a plugin whose manifest and component are unchanged keeps its warm instances. The
//! inspect stage (`pipeline::inspect`) runs guardrails; provider adapters
//! (`world = "provider-adapter"`, [`adapter`]) are called by providers with
//! `family = "adapter"`.

pub mod adapter;
mod epoch;
pub mod host;
pub mod manifest;
pub mod metrics;
pub mod views;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;

pub use host::Failure;
use host::Instances;
pub use manifest::{AppliesTo, Confinement, FailureMode, Limits, Phase};

use crate::diagnostic::LoadError;
use crate::store::KeyRecord;

/// The folder of plugin manifests inside a policy directory.
pub const FOLDER: &str = "plugins";

/// A loaded guardrail plugin.
#[derive(Debug)]
pub struct Plugin {
    /// The manifest's file stem (`plugins/pii-guard.toml` is `pii-guard`).
    pub name: String,
    /// The manifest's description.
    pub description: Option<String>,
    /// The component file.
    pub wasm_path: PathBuf,
    /// SHA-256 of the component.
    pub wasm_hash: String,
    /// SHA-256 of the manifest text and the component: unchanged means reusable as is.
    pub source_hash: String,
    /// When it runs.
    pub phases: Vec<Phase>,
    /// Scope.
    pub applies_to: AppliesTo,
    /// Failure handling.
    pub failure_mode: FailureMode,
    /// Limits.
    pub limits: Limits,
    component: Component,
    /// The warm instances.
    pub instances: Instances,
}

impl Plugin {
    /// Whether it runs in `phase`.
    pub fn has_phase(&self, phase: Phase) -> bool {
        self.phases.contains(&phase)
    }

    /// Whether it applies to a request for `model` by `key`.
    pub fn applies(&self, model: &str, key: &KeyRecord) -> bool {
        self.applies_to
            .matches(model, &key.id, &key.name, key.team.as_deref())
    }

    /// Whether it inspects tool calls on MCP server `server` by `key` (it has a tool phase and
    /// its scope matches).
    pub fn applies_to_mcp(&self, server: &str, key: &KeyRecord) -> bool {
        self.phases.iter().any(|p| p.is_tool())
            && self
                .applies_to
                .matches_mcp(server, &key.id, &key.name, key.team.as_deref())
    }
}

/// What loading the manifests produced.
#[derive(Default)]
pub struct Loaded {
    /// Plugins in manifest file-name order (the order they run in).
    pub plugins: Vec<Arc<Plugin>>,
    /// Provider adapters, in manifest file-name order.
    pub adapters: Vec<Arc<adapter::Adapter>>,
    /// (path, content hash) of every file read, for the snapshot's content hash.
    pub hashes: Vec<(PathBuf, String)>,
    /// Every problem found.
    pub errors: Vec<LoadError>,
    /// Components compiled by this load (the others were reused by content hash).
    pub compiled: usize,
}

fn error(
    file: &Path,
    text: Option<&str>,
    span: Option<std::ops::Range<usize>>,
    key: Option<&str>,
    message: String,
) -> LoadError {
    let (line, column) = match (text, span) {
        (Some(text), Some(span)) if span.end > 0 => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before
                .rfind('\n')
                .map_or(before.len(), |nl| before.len() - nl - 1)
                + 1;
            (Some(line), Some(column))
        }
        _ => (None, None),
    };
    LoadError {
        file: file.to_path_buf(),
        line,
        column,
        key: key.map(str::to_string),
        message,
    }
}

/// One loaded manifest.
enum One {
    Guardrail(Arc<Plugin>),
    Adapter(Arc<adapter::Adapter>),
}

/// Loads `dir/plugins/*.toml`, reusing `previous` plugins whose manifest and component are
/// unchanged and compiled components whose bytes are unchanged (guardrails only). Components
/// and `read_dir` folders must resolve inside `confinement`.
pub fn load_dir(dir: &Path, previous: &[Arc<Plugin>], confinement: &Confinement) -> Loaded {
    load_dir_with(dir, previous, &[], confinement)
}

/// [`load_dir`], also reusing unchanged `previous_adapters`.
pub fn load_dir_with(
    dir: &Path,
    previous: &[Arc<Plugin>],
    previous_adapters: &[Arc<adapter::Adapter>],
    confinement: &Confinement,
) -> Loaded {
    let mut loaded = Loaded::default();
    let folder = dir.join(FOLDER);
    let entries = match std::fs::read_dir(&folder) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return loaded,
        Err(e) => {
            loaded.errors.push(error(
                &folder,
                None,
                None,
                None,
                format!("cannot read folder: {e}"),
            ));
            return loaded;
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    files.sort();
    // Compiled components by content hash: those of the previous snapshot, then each new one,
    // so a component is compiled once even when several manifests use it.
    let mut compiled: HashMap<String, Component> = previous
        .iter()
        .map(|p| (p.wasm_hash.clone(), p.component.clone()))
        .chain(
            previous_adapters
                .iter()
                .map(|a| (a.wasm_hash.clone(), a.component.clone())),
        )
        .collect();
    for path in files {
        let previous = (previous, previous_adapters);
        match load_one(
            dir,
            &path,
            previous,
            confinement,
            &mut compiled,
            &mut loaded,
        ) {
            Ok(Some(One::Guardrail(plugin))) => loaded.plugins.push(plugin),
            Ok(Some(One::Adapter(adapter))) => loaded.adapters.push(adapter),
            Ok(None) => {}
            Err(e) => loaded.errors.push(e),
        }
    }
    loaded
}

fn load_one(
    dir: &Path,
    path: &Path,
    (previous, previous_adapters): (&[Arc<Plugin>], &[Arc<adapter::Adapter>]),
    confinement: &Confinement,
    compiled: &mut HashMap<String, Component>,
    loaded: &mut Loaded,
) -> Result<Option<One>, LoadError> {
    let hashes = &mut loaded.hashes;
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| error(path, None, None, None, format!("cannot read: {e}")))?;
    hashes.push((
        path.to_path_buf(),
        hex::encode(Sha256::digest(text.as_bytes())),
    ));
    let manifest: manifest::ManifestFile = toml::from_str(&text).map_err(|e| {
        error(
            path,
            Some(&text),
            e.span(),
            None,
            e.message().trim().to_string(),
        )
    })?;
    if !manifest.enabled {
        return Ok(None);
    }
    let at = |span: std::ops::Range<usize>, key: &str, message: String| {
        error(path, Some(&text), Some(span), Some(key), message)
    };
    let is_adapter = match manifest.world.get_ref().as_str() {
        "guardrail" => false,
        "provider-adapter" => true,
        other => {
            return Err(at(
                manifest.world.span(),
                "world",
                format!("unknown world '{other}' (expected \"guardrail\" or \"provider-adapter\")"),
            ));
        }
    };
    if is_adapter {
        adapter_fields_allowed(&manifest)
            .map_err(|(key, message)| error(path, None, None, Some(key), message))?;
    } else if manifest.phases.get_ref().is_empty() {
        return Err(at(
            manifest.phases.span(),
            "phases",
            "name at least one phase: request, response, stream, tool_call, tool_result".into(),
        ));
    }
    if let Some((key, message)) = manifest.limits.validate().into_iter().next() {
        return Err(error(path, None, None, Some(key), message));
    }
    if let Some(secret) = manifest
        .capabilities
        .env
        .iter()
        .find(|name| confinement.is_secret_env(name))
    {
        return Err(error(
            path,
            None,
            None,
            Some("capabilities.env"),
            format!(
                "'{secret}' is one of the gateway's own variables or a provider credential and is never passed to a plugin"
            ),
        ));
    }
    let mut capabilities = manifest.capabilities.clone();
    if let Some(read_dir) = &manifest.capabilities.read_dir {
        let read_dir_error =
            |message: String| error(path, None, None, Some("capabilities.read_dir"), message);
        let resolved = confinement.resolve(dir, read_dir).map_err(read_dir_error)?;
        if !resolved.is_dir() {
            return Err(read_dir_error(format!("'{read_dir}' is not a directory")));
        }
        // The resolved folder is what gets mounted: a symlink swapped later changes nothing.
        capabilities.read_dir = Some(resolved.display().to_string());
    }
    let wasm_path = confinement
        .resolve(dir, manifest.wasm.get_ref())
        .map_err(|e| {
            at(
                manifest.wasm.span(),
                "wasm",
                format!("{e} (build the plugins with ./scripts/build-plugins)"),
            )
        })?;
    let wasm = std::fs::read(&wasm_path).map_err(|e| {
        at(
            manifest.wasm.span(),
            "wasm",
            format!(
                "cannot read the component {}: {e} (build the plugins with ./scripts/build-plugins)",
                wasm_path.display()
            ),
        )
    })?;
    let wasm_hash = hex::encode(Sha256::digest(&wasm));
    hashes.push((wasm_path.clone(), wasm_hash.clone()));
    let mut hasher = Sha256::new();
    hasher.update(text.as_bytes());
    hasher.update(wasm_hash.as_bytes());
    let source_hash = hex::encode(hasher.finalize());

    if is_adapter
        && let Some(same) = previous_adapters
            .iter()
            .find(|a| a.name == name && a.source_hash == source_hash)
    {
        return Ok(Some(One::Adapter(same.clone())));
    }
    if let Some(same) = previous
        .iter()
        .find(|p| !is_adapter && p.name == name && p.source_hash == source_hash)
    {
        return Ok(Some(One::Guardrail(same.clone())));
    }

    let runtime = host::runtime().map_err(|e| at(manifest.wasm.span(), "wasm", e))?;
    let component = match compiled.get(&wasm_hash) {
        Some(component) => component.clone(),
        None => {
            let component = runtime.compile(&wasm).map_err(|e| {
                at(
                    manifest.wasm.span(),
                    "wasm",
                    format!("plugin '{name}' ({}) is refused: {e}", wasm_path.display()),
                )
            })?;
            compiled.insert(wasm_hash.clone(), component.clone());
            loaded.compiled += 1;
            component
        }
    };
    if is_adapter {
        let config = serde_json::to_string(&manifest.config).map_err(|e| {
            error(
                path,
                None,
                None,
                Some("config"),
                format!("cannot be encoded: {e}"),
            )
        })?;
        let parts = adapter::Parts {
            name,
            description: manifest.description,
            wasm_path,
            wasm_hash,
            source_hash,
            config,
            limits: manifest.limits,
            stderr: manifest.capabilities.stderr,
        };
        let built = adapter::build(runtime, parts, component)
            .map_err(|e| at(manifest.wasm.span(), "wasm", e))?;
        return Ok(Some(One::Adapter(Arc::new(built))));
    }
    let pre = runtime.prepare(&component).map_err(|e| {
        at(
            manifest.wasm.span(),
            "wasm",
            format!("plugin '{name}' is refused: {e}"),
        )
    })?;
    if !pre.has_tool_phases()
        && let Some(phase) = manifest.phases.get_ref().iter().find(|p| p.is_tool())
    {
        return Err(at(
            manifest.phases.span(),
            "phases",
            format!(
                "phase '{}' needs a plugin built for tollgate:plugin@{} (tollgate-plugin-sdk 0.2); \
                 '{name}' is built for @{}",
                phase.as_str(),
                host::WIT_VERSION_LATEST,
                host::WIT_VERSION
            ),
        ));
    }
    let config = serde_json::to_string(&manifest.config).map_err(|e| {
        error(
            path,
            None,
            None,
            Some("config"),
            format!("cannot be encoded: {e}"),
        )
    })?;
    let instances = Instances::new(
        pre,
        config,
        manifest.limits.clone(),
        capabilities,
        dir.to_path_buf(),
    );
    match host::block_on(instances.warm_up()) {
        Ok(Ok(())) => {}
        Ok(Err(failure)) => {
            return Err(error(
                path,
                None,
                None,
                Some("config"),
                format!("plugin '{name}' {failure}"),
            ));
        }
        Err(e) => return Err(error(path, None, None, None, e)),
    }
    Ok(Some(One::Guardrail(Arc::new(Plugin {
        name,
        description: manifest.description,
        wasm_path,
        wasm_hash,
        source_hash,
        phases: manifest.phases.into_inner(),
        applies_to: manifest.applies_to,
        failure_mode: manifest.failure_mode,
        limits: manifest.limits,
        component,
        instances,
    }))))
}

/// An adapter is not a guardrail: it has no phases or scope (providers name it), and it gets
/// no filesystem or environment (the gateway makes its HTTP calls and holds the credential).
fn adapter_fields_allowed(manifest: &manifest::ManifestFile) -> Result<(), (&'static str, String)> {
    let refuse = |key, what: &str| Err((key, format!("a provider-adapter plugin {what}")));
    if !manifest.phases.get_ref().is_empty() {
        return refuse(
            "phases",
            "has no phases (it runs when a provider with family = \"adapter\" names it)",
        );
    }
    if manifest.applies_to != AppliesTo::default() {
        return refuse(
            "applies_to",
            "has no scope (providers with family = \"adapter\" name it)",
        );
    }
    if !manifest.capabilities.env.is_empty() {
        return refuse("capabilities.env", "gets no environment");
    }
    if manifest.capabilities.read_dir.is_some() {
        return refuse("capabilities.read_dir", "gets no filesystem");
    }
    if manifest.failure_mode != FailureMode::Closed {
        return refuse(
            "failure_mode",
            "always fails closed (a failed translation is a 502)",
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dist() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/dist")
    }

    /// Loads with the built components' folder allowed besides the policy directory.
    fn load(dir: &Path, previous: &[Arc<Plugin>]) -> Loaded {
        let (confinement, problems) = Confinement::new(
            dir,
            &[dist().display().to_string()],
            ["SECRET_PROVIDER_KEY".into()],
        );
        assert!(problems.is_empty(), "{problems:?}");
        load_dir(dir, previous, &confinement)
    }

    /// A policy directory with `manifests` (file stem, extra TOML) for the built `pii-guard`.
    fn dir_with(manifests: &[(&str, &str)]) -> tempfile::TempDir {
        let wasm = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/dist/pii-guard.wasm");
        assert!(
            wasm.is_file(),
            "{} is missing: run ./scripts/test (it builds the plugins with ./scripts/build-plugins)",
            wasm.display()
        );
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join(FOLDER)).expect("mkdir");
        for (name, extra) in manifests {
            std::fs::write(
                dir.path().join(FOLDER).join(format!("{name}.toml")),
                format!(
                    "wasm = {:?}\nphases = [\"request\"]\n{extra}\n",
                    wasm.display().to_string()
                ),
            )
            .expect("write manifest");
        }
        dir
    }

    #[test]
    fn components_are_compiled_once_and_unchanged_plugins_reused_across_reloads() {
        let dir = dir_with(&[("a", ""), ("b", "[config]\nmode = \"block\"")]);
        let first = load(dir.path(), &[]);
        assert!(first.errors.is_empty(), "{:?}", first.errors);
        assert_eq!(first.plugins.len(), 2);
        assert_eq!(
            first.compiled, 1,
            "two manifests, one component: compiled once"
        );
        assert_eq!(first.plugins[0].instances.idle(), 1, "warmed at load");

        // Reload with `b` changed: `a` is the same plugin (warm pool kept), `b` is new but
        // its component is not compiled again.
        std::fs::write(
            dir.path().join("plugins/b.toml"),
            std::fs::read_to_string(dir.path().join("plugins/b.toml"))
                .expect("read")
                .replace("block", "observe"),
        )
        .expect("write");
        let second = load(dir.path(), &first.plugins);
        assert!(second.errors.is_empty(), "{:?}", second.errors);
        assert!(Arc::ptr_eq(&first.plugins[0], &second.plugins[0]));
        assert!(!Arc::ptr_eq(&first.plugins[1], &second.plugins[1]));
        assert_eq!(second.compiled, 0, "nothing recompiled");
    }

    #[test]
    fn concurrent_calls_beyond_max_instances_wait_instead_of_failing() {
        let dir = dir_with(&[("one", "[limits]\ninstances = 1\nmax_instances = 1")]);
        let loaded = load(dir.path(), &[]);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let plugin = loaded.plugins[0].clone();
        let caller = host::wit::Caller {
            key_id: "key_1".into(),
            key_name: "k".into(),
            team: None,
            metadata: Vec::new(),
        };
        let Ok(serde_json::Value::Object(body)) = serde_json::from_str::<serde_json::Value>(
            r#"{"messages": [{"role": "user", "content": "mail a@b.io"}]}"#,
        ) else {
            panic!("body");
        };
        let (view, _) = views::request_view("/v1/chat/completions", "m", false, &body, &caller);
        let results = host::block_on(async {
            let calls = (0..8).map(|_| plugin.instances.check_request(&view));
            futures_util::future::join_all(calls).await
        })
        .expect("runtime");
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert_eq!(plugin.instances.idle(), 1, "one instance served all eight");
    }

    #[test]
    fn read_dir_must_stay_inside_the_policy_directory() {
        let dir = dir_with(&[("p", "[capabilities]\nread_dir = \"../\"")]);
        let loaded = load(dir.path(), &[]);
        assert_eq!(loaded.errors.len(), 1);
        assert!(
            loaded.errors[0]
                .to_string()
                .contains("capabilities.read_dir"),
            "{}",
            loaded.errors[0]
        );
    }

    #[test]
    fn disabled_manifests_load_nothing_and_scopes_apply() {
        let dir = dir_with(&[
            ("off", "enabled = false"),
            (
                "scoped",
                "[applies_to]\nmodels = [\"demo-*\"]\nteams = [\"research\"]",
            ),
        ]);
        let loaded = load(dir.path(), &[]);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        assert_eq!(loaded.plugins.len(), 1);
        let plugin = &loaded.plugins[0];
        assert_eq!(plugin.name, "scoped");
        assert!(plugin.has_phase(Phase::Request) && !plugin.has_phase(Phase::Stream));
        assert!(
            plugin
                .applies_to
                .matches("demo-chat", "key_1", "k", Some("research"))
        );
        assert!(
            !plugin
                .applies_to
                .matches("demo-chat", "key_1", "k", Some("sales"))
        );
        assert!(
            !plugin
                .applies_to
                .matches("gpt-4o", "key_1", "k", Some("research"))
        );
    }

    /// A policy directory whose one manifest `p` names `wasm` with `extra` TOML appended.
    fn dir_with_wasm(wasm: &str, extra: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join(FOLDER)).expect("mkdir");
        std::fs::write(
            dir.path().join(FOLDER).join("p.toml"),
            format!("wasm = {wasm:?}\nphases = [\"request\"]\n{extra}\n"),
        )
        .expect("write manifest");
        dir
    }

    fn built() -> PathBuf {
        let wasm = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/dist/pii-guard.wasm");
        assert!(
            wasm.is_file(),
            "{} is missing: run ./scripts/build-plugins",
            wasm.display()
        );
        wasm
    }

    #[test]
    fn a_read_dir_symlink_that_leaves_the_policy_directory_is_refused() {
        let outside = tempfile::tempdir().expect("tempdir");
        let dir = dir_with_wasm("plugins/g.wasm", "[capabilities]\nread_dir = \"data\"");
        std::fs::copy(built(), dir.path().join("plugins/g.wasm")).expect("copy");
        std::os::unix::fs::symlink(outside.path(), dir.path().join("data")).expect("symlink");
        let loaded = load(dir.path(), &[]);
        assert_eq!(loaded.errors.len(), 1, "{:?}", loaded.errors);
        let error = loaded.errors[0].to_string();
        assert!(error.contains("capabilities.read_dir"), "{error}");
        assert!(error.contains("outside the policy directory"), "{error}");
    }

    #[test]
    fn a_component_outside_the_policy_directory_is_refused_even_through_a_symlink() {
        let outside = tempfile::tempdir().expect("tempdir");
        let component = outside.path().join("g.wasm");
        std::fs::copy(built(), &component).expect("copy");
        let direct = dir_with_wasm(&component.display().to_string(), "");
        let linked = dir_with_wasm("plugins/g.wasm", "");
        std::os::unix::fs::symlink(&component, linked.path().join("plugins/g.wasm"))
            .expect("symlink");
        for dir in [&direct, &linked] {
            let loaded = load(dir.path(), &[]);
            assert_eq!(loaded.errors.len(), 1, "{:?}", loaded.errors);
            let error = loaded.errors[0].to_string();
            assert!(error.contains("wasm"), "{error}");
            assert!(error.contains("outside the policy directory"), "{error}");
        }
        // Listed explicitly, the folder is allowed.
        let (confinement, problems) =
            Confinement::new(linked.path(), &[outside.path().display().to_string()], []);
        assert!(problems.is_empty(), "{problems:?}");
        let loaded = load_dir(linked.path(), &[], &confinement);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        assert_eq!(loaded.plugins.len(), 1);
    }

    #[test]
    fn gateway_secrets_are_never_granted_to_a_plugin() {
        let dir = dir_with_wasm(
            "plugins/g.wasm",
            "[capabilities]\nenv = [\"LANG\", \"TOLLGATE_ADMIN_TOKEN\"]",
        );
        std::fs::copy(built(), dir.path().join("plugins/g.wasm")).expect("copy");
        let loaded = load(dir.path(), &[]);
        assert_eq!(loaded.errors.len(), 1, "{:?}", loaded.errors);
        let error = loaded.errors[0].to_string();
        assert!(error.contains("capabilities.env"), "{error}");
        assert!(error.contains("TOLLGATE_ADMIN_TOKEN"), "{error}");
        std::fs::write(
            dir.path().join("plugins/p.toml"),
            "wasm = \"plugins/g.wasm\"\nphases = [\"request\"]\n[capabilities]\nenv = [\"SECRET_PROVIDER_KEY\"]\n",
        )
        .expect("write");
        let loaded = load(dir.path(), &[]);
        assert_eq!(loaded.errors.len(), 1, "{:?}", loaded.errors);
        assert!(loaded.errors[0].to_string().contains("SECRET_PROVIDER_KEY"));
    }
}
