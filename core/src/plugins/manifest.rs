//! Plugin manifests, `plugins/*.toml` in the policy directory: which component, for which
//! traffic, with which limits, configuration and failure mode.
//!
//! ```toml
//! description = "Mask personal data before it reaches the provider"
//! wasm = "../plugins/dist/pii-guard.wasm"   # relative to the policy directory
//! world = "guardrail"                        # or "provider-adapter" (no phases, scope, env or files)
//! phases = ["request", "response", "stream"] # 0.2.x components also "tool_call", "tool_result"
//! failure_mode = "closed"                    # "closed" (default): 403 plugin_blocked; "open": pass, recorded
//!
//! [applies_to]                               # every list empty or absent = everything; `*` globs
//! models = ["demo-chat*"]
//! keys = []                                  # key ids or key names
//! teams = []
//! mcp_servers = []                           # MCP server slugs, for tool_call / tool_result
//!
//! [limits]
//! memory_mb = 64
//! time_ms = 50
//! instances = 4                              # kept warm
//! max_instances = 32                         # live at most; more concurrent calls wait
//! stream_window = 256
//!
//! [capabilities]                             # nothing unless granted
//! env = []                                   # never TOLLGATE_* nor a provider credential variable
//! stderr = false
//! read_dir = "data"                          # read-only, seen by the plugin as /data
//!
//! [config]                                   # handed to the plugin's configure() as JSON
//! mode = "mask"
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where plugins may reach on disk and which variables they may never see.
///
/// `wasm` and `read_dir` are resolved (symlinks included) and must land inside the policy
/// directory or a folder listed in `[plugins] allowed_dirs` of `gateway.toml`. The gateway's own
/// variables (`TOLLGATE_*`) and every provider credential variable are refused in
/// `capabilities.env`.
#[derive(Debug, Clone, Default)]
pub struct Confinement {
    roots: Vec<PathBuf>,
    secret_env: BTreeSet<String>,
}

impl Confinement {
    /// The policy directory `dir` plus `allowed` folders (relative to `dir` or absolute), and the
    /// credential variables of the providers. Each problem is returned as a message.
    pub fn new(
        dir: &Path,
        allowed: &[String],
        secret_env: impl IntoIterator<Item = String>,
    ) -> (Self, Vec<String>) {
        let mut problems = Vec::new();
        let mut roots = Vec::new();
        match dir.canonicalize() {
            Ok(root) => roots.push(root),
            Err(e) => problems.push(format!("cannot resolve the policy directory: {e}")),
        }
        for folder in allowed {
            match dir.join(folder).canonicalize() {
                Ok(root) if root.is_dir() => roots.push(root),
                Ok(_) => problems.push(format!("'{folder}' is not a directory")),
                Err(e) => problems.push(format!("'{folder}' cannot be resolved: {e}")),
            }
        }
        let secret_env = secret_env.into_iter().collect();
        (Self { roots, secret_env }, problems)
    }

    /// Resolves `path` (relative to `dir`), following symlinks, and checks where it lands.
    pub fn resolve(&self, dir: &Path, path: &str) -> Result<PathBuf, String> {
        let joined = dir.join(path);
        let resolved = joined
            .canonicalize()
            .map_err(|e| format!("'{path}' cannot be resolved: {e}"))?;
        if self.roots.iter().any(|root| resolved.starts_with(root)) {
            Ok(resolved)
        } else {
            Err(format!(
                "'{path}' resolves to {}, outside the policy directory; list its folder in [plugins] allowed_dirs of gateway.toml to allow it",
                resolved.display()
            ))
        }
    }

    /// Whether a plugin may never be given the variable `name`.
    pub fn is_secret_env(&self, name: &str) -> bool {
        is_gateway_env(name) || self.secret_env.contains(name)
    }
}

/// The gateway's own configuration variables, secrets among them.
pub fn is_gateway_env(name: &str) -> bool {
    name.to_ascii_uppercase().starts_with("TOLLGATE_")
}

/// When a plugin runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Before the budget hold and the provider.
    Request,
    /// On non-streamed answers.
    Response,
    /// On streamed answers, through a sliding window.
    Stream,
    /// On an MCP `tools/call`, before the server sees it (plugins built for 0.2.x).
    #[serde(rename = "tool_call")]
    ToolCall,
    /// On an MCP tool result, before the client sees it (plugins built for 0.2.x).
    #[serde(rename = "tool_result")]
    ToolResult,
}

impl Phase {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Request => "request",
            Phase::Response => "response",
            Phase::Stream => "stream",
            Phase::ToolCall => "tool_call",
            Phase::ToolResult => "tool_result",
        }
    }

    /// Whether this is a phase of MCP tool traffic.
    pub fn is_tool(self) -> bool {
        matches!(self, Phase::ToolCall | Phase::ToolResult)
    }
}

/// What happens when the plugin traps, runs out of time or memory, or answers garbage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureMode {
    /// Refuse the traffic: 403 `plugin_blocked` naming the plugin.
    #[default]
    Closed,
    /// Let the traffic pass unchecked by this plugin; the failure is recorded.
    Open,
}

impl FailureMode {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureMode::Closed => "closed",
            FailureMode::Open => "open",
        }
    }
}

/// Which traffic a plugin applies to. An empty list matches everything; `*` is a wildcard.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AppliesTo {
    /// Model or model-group names as clients send them.
    pub models: Vec<String>,
    /// Virtual key ids or names.
    pub keys: Vec<String>,
    /// Key teams.
    pub teams: Vec<String>,
    /// MCP server slugs (the `tool_call` and `tool_result` phases; `models` does not apply
    /// to them).
    pub mcp_servers: Vec<String>,
}

/// Matches `text` against a pattern where `*` stands for any run of characters.
pub fn glob(pattern: &str, text: &str) -> bool {
    let pieces: Vec<&str> = pattern.split('*').collect();
    if pieces.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (pieces[0], pieces[pieces.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for piece in &pieces[1..pieces.len() - 1] {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    true
}

impl AppliesTo {
    /// Whether a request for `model` by key (`key_id`, `key_name`, `team`) is in scope.
    pub fn matches(&self, model: &str, key_id: &str, key_name: &str, team: Option<&str>) -> bool {
        let any = |list: &[String], values: &[&str]| {
            list.is_empty() || list.iter().any(|p| values.iter().any(|v| glob(p, v)))
        };
        any(&self.models, &[model])
            && any(&self.keys, &[key_id, key_name])
            && (self.teams.is_empty() || team.is_some_and(|t| any(&self.teams, &[t])))
    }

    /// Whether a tool call on MCP server `server` by key (`key_id`, `key_name`, `team`) is in
    /// scope.
    pub fn matches_mcp(
        &self,
        server: &str,
        key_id: &str,
        key_name: &str,
        team: Option<&str>,
    ) -> bool {
        let any = |list: &[String], values: &[&str]| {
            list.is_empty() || list.iter().any(|p| values.iter().any(|v| glob(p, v)))
        };
        any(&self.mcp_servers, &[server])
            && any(&self.keys, &[key_id, key_name])
            && (self.teams.is_empty() || team.is_some_and(|t| any(&self.teams, &[t])))
    }
}

/// Resource limits of one plugin.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Linear memory per instance, MiB.
    pub memory_mb: u64,
    /// Wall-clock time per call, ms (enforced by epoch interruption).
    pub time_ms: u64,
    /// Warm instances kept (concurrent calls beyond it get fresh instances).
    pub instances: usize,
    /// Live instances at most: further concurrent calls wait for one to be free.
    pub max_instances: usize,
    /// Bytes of a streamed answer held back so a value split across chunks is seen whole.
    pub stream_window: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_mb: 64,
            time_ms: 50,
            instances: 4,
            max_instances: 32,
            stream_window: 256,
        }
    }
}

impl Limits {
    /// Memory cap in bytes.
    pub fn memory_bytes(&self) -> usize {
        usize::try_from(self.memory_mb.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX)
    }

    /// Range checks; each problem as (key, message).
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if !(1..=4096).contains(&self.memory_mb) {
            problems.push(("limits.memory_mb", "must be between 1 and 4096".to_string()));
        }
        if !(1..=10_000).contains(&self.time_ms) {
            problems.push(("limits.time_ms", "must be between 1 and 10000".to_string()));
        }
        if !(1..=64).contains(&self.instances) {
            problems.push(("limits.instances", "must be between 1 and 64".to_string()));
        }
        if !(self.instances.max(1)..=1024).contains(&self.max_instances) {
            problems.push((
                "limits.max_instances",
                "must be between limits.instances and 1024".to_string(),
            ));
        }
        if !(16..=65_536).contains(&self.stream_window) {
            problems.push((
                "limits.stream_window",
                "must be between 16 and 65536".to_string(),
            ));
        }
        problems
    }
}

/// What a plugin may reach beyond its own memory. Nothing by default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Capabilities {
    /// Environment variables passed through (by name; unset ones are skipped).
    pub env: Vec<String>,
    /// Let the plugin write to the gateway's stderr (for debugging).
    pub stderr: bool,
    /// A directory (relative to the policy directory) mounted read-only at `/data`.
    pub read_dir: Option<String>,
}

/// A manifest file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestFile {
    /// What the plugin is for.
    #[serde(default)]
    pub description: Option<String>,
    /// The component, relative to the policy directory.
    pub wasm: toml::Spanned<String>,
    /// The WIT world it implements.
    #[serde(default = "default_world")]
    pub world: toml::Spanned<String>,
    /// When it runs (guardrails: at least one; adapters: none).
    #[serde(default = "no_phases")]
    pub phases: toml::Spanned<Vec<Phase>>,
    /// Trap / limit / garbage handling.
    #[serde(default)]
    pub failure_mode: FailureMode,
    /// `false` keeps the manifest without loading the plugin.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Scope.
    #[serde(default)]
    pub applies_to: AppliesTo,
    /// Limits.
    #[serde(default)]
    pub limits: Limits,
    /// Capabilities.
    #[serde(default)]
    pub capabilities: Capabilities,
    /// The plugin's own configuration.
    #[serde(default)]
    pub config: toml::Table,
}

fn default_world() -> toml::Spanned<String> {
    toml::Spanned::new(0..0, "guardrail".to_string())
}

fn no_phases() -> toml::Spanned<Vec<Phase>> {
    toml::Spanned::new(0..0, Vec::new())
}

fn yes() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_prefixes_suffixes_and_middles() {
        assert!(glob("demo-*", "demo-chat"));
        assert!(glob("*", "anything"));
        assert!(glob("*-eu", "demo-chat-eu"));
        assert!(glob("a*c*e", "abcde"));
        assert!(!glob("a*c*e", "abde"));
        assert!(!glob("demo", "demo-chat"));
        assert!(!glob("ab*ba", "aba"));
    }

    #[test]
    fn empty_scopes_match_everything_and_teams_need_a_team() {
        let all = AppliesTo::default();
        assert!(all.matches("m", "key_1", "k", None));
        let team = AppliesTo {
            teams: vec!["research".into()],
            ..AppliesTo::default()
        };
        assert!(team.matches("m", "key_1", "k", Some("research")));
        assert!(!team.matches("m", "key_1", "k", None));
        let keys = AppliesTo {
            keys: vec!["ci-*".into()],
            models: vec!["demo-*".into()],
            ..AppliesTo::default()
        };
        assert!(keys.matches("demo-chat", "key_1", "ci-bot", None));
        assert!(!keys.matches("gpt", "key_1", "ci-bot", None));
    }

    #[test]
    fn manifests_reject_unknown_keys_and_phases() {
        let err =
            toml::from_str::<ManifestFile>("wasm = \"x\"\nphases = [\"request\"]\nfail = 1\n")
                .expect_err("unknown key");
        assert!(err.to_string().contains("unknown field `fail`"), "{err}");
        let err = toml::from_str::<ManifestFile>("wasm = \"x\"\nphases = [\"prompt\"]\n")
            .expect_err("unknown phase");
        assert!(err.to_string().contains("prompt"), "{err}");
        let ok: ManifestFile = toml::from_str("wasm = \"x\"\nphases = [\"request\", \"stream\"]\n")
            .expect("minimal manifest");
        assert_eq!(ok.failure_mode, FailureMode::Closed);
        assert_eq!(ok.limits, Limits::default());
        assert!(ok.enabled);
    }

    #[test]
    fn confinement_refuses_gateway_and_credential_variables() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (c, problems) = Confinement::new(dir.path(), &[], ["OPENAI_API_KEY".to_string()]);
        assert!(problems.is_empty(), "{problems:?}");
        assert!(c.is_secret_env("TOLLGATE_ADMIN_TOKEN"));
        assert!(c.is_secret_env("tollgate_database"));
        assert!(c.is_secret_env("OPENAI_API_KEY"));
        assert!(!c.is_secret_env("LANG"));
        let (_, problems) = Confinement::new(dir.path(), &["missing".to_string()], []);
        assert_eq!(problems.len(), 1, "{problems:?}");
    }
}
