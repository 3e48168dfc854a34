//! An MCP server as requests see it: transport, upstream credential, tool rules, pricing and
//! limits, validated and built once per policy snapshot by `policy::mcp`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::policy::{Secret, Target};

/// How the gateway reaches the server.
#[derive(Debug, Clone)]
pub enum Transport {
    /// Streamable HTTP (MCP 2025-03-26 and later): POST, GET stream and DELETE on one URL.
    StreamableHttp {
        /// The server's MCP endpoint.
        url: String,
    },
    /// The legacy HTTP+SSE transport (2024-11-05): GET opens the stream, whose `endpoint` event
    /// names the URL for POSTs.
    Sse {
        /// The server's SSE endpoint.
        url: String,
    },
    /// A child process speaking newline-delimited JSON-RPC on stdin/stdout.
    Stdio(StdioCommand),
}

impl Transport {
    /// `streamable_http`, `sse` or `stdio`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Transport::StreamableHttp { .. } => "streamable_http",
            Transport::Sse { .. } => "sse",
            Transport::Stdio(_) => "stdio",
        }
    }
}

/// What the gateway runs for a stdio server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StdioCommand {
    /// The program (a path, or a name looked up on the gateway's `PATH`).
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// The environment the child gets, beyond the minimal one (`PATH`, `HOME`, `LANG`).
    pub env: BTreeMap<String, String>,
    /// Working directory (relative paths are relative to the policy directory).
    pub cwd: Option<PathBuf>,
    /// A session's child is stopped after this long without a request.
    pub idle_timeout: Duration,
}

/// A secret the server's auth needs: loaded, or the reason it is not available.
pub type SecretSource = Result<Secret, String>;

/// The credential the gateway injects upstream, after governance passes.
#[derive(Debug, Clone)]
pub enum UpstreamAuth {
    /// Nothing is sent.
    None,
    /// `Authorization: Bearer <token>`.
    Bearer(SecretSource),
    /// HTTP Basic.
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: SecretSource,
    },
    /// `Authorization: Bearer <access_token>` from the OAuth2 client-credentials grant, cached
    /// until shortly before it expires.
    OAuth2 {
        /// The token endpoint.
        token_url: String,
        /// Client id.
        client_id: String,
        /// Client secret.
        client_secret: SecretSource,
        /// Optional scope.
        scope: Option<String>,
        /// Optional audience.
        audience: Option<String>,
    },
}

impl UpstreamAuth {
    /// `none`, `bearer`, `basic` or `oauth2`.
    pub fn as_str(&self) -> &'static str {
        match self {
            UpstreamAuth::None => "none",
            UpstreamAuth::Bearer(_) => "bearer",
            UpstreamAuth::Basic { .. } => "basic",
            UpstreamAuth::OAuth2 { .. } => "oauth2",
        }
    }
}

/// Which keys may use a server beyond their MCP Access grant: the Team Scope and the API Key
/// Scope. Both empty: every key granted the server. Otherwise a key whose team is listed, or
/// which is listed itself, and no other (403 `mcp_not_allowed`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct McpScope {
    /// Team ids whose keys may use the server.
    pub teams: Vec<String>,
    /// Key ids that may use the server.
    pub keys: Vec<String>,
}

impl McpScope {
    /// Whether no scope is set.
    pub fn is_open(&self) -> bool {
        self.teams.is_empty() && self.keys.is_empty()
    }

    /// Whether the key `key_id` of team `team` is in scope.
    pub fn admits(&self, key_id: &str, team: Option<&str>) -> bool {
        self.is_open()
            || self.keys.iter().any(|k| k == key_id)
            || team.is_some_and(|t| self.teams.iter().any(|x| x == t))
    }
}

/// Tool rules applied to every `tools/call` and to `tools/list` answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolRules {
    /// If not empty, only these tools may be called or listed.
    pub allowed: Vec<String>,
    /// These tools are never called or listed.
    pub blocked: Vec<String>,
    /// A `tools/call` whose arguments contain one of these (case-insensitive) is refused.
    pub blocked_keywords: Vec<String>,
}

impl ToolRules {
    /// Why `tool` may not be called or advertised, if it may not.
    pub fn tool_denied(&self, tool: &str) -> Option<String> {
        if self.blocked.iter().any(|t| t == tool) {
            return Some(format!("tool '{tool}' is blocked"));
        }
        if !self.allowed.is_empty() && !self.allowed.iter().any(|t| t == tool) {
            return Some(format!("tool '{tool}' is not in the allowed tools"));
        }
        None
    }

    /// The first blocked keyword found in `text` (matched case-insensitively).
    pub fn keyword_in(&self, text: &str) -> Option<&str> {
        if self.blocked_keywords.is_empty() {
            return None;
        }
        let lower = text.to_lowercase();
        self.blocked_keywords
            .iter()
            .find(|k| lower.contains(k.as_str()))
            .map(String::as_str)
    }
}

/// Prices in nano-USD (reference spec 1.16): cost = calls x call + bytes in x in + bytes out x out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct McpPricing {
    /// Per `tools/call`.
    pub call_nanos: i64,
    /// Per request byte (caller to server).
    pub input_byte_nanos: i64,
    /// Per response byte (server to caller).
    pub output_byte_nanos: i64,
    /// The response size a budget hold assumes before the answer is known.
    pub hold_output_bytes: i64,
}

impl McpPricing {
    /// The cost of one HTTP request, saturating.
    pub fn cost_nanos(&self, tool_calls: i64, bytes_in: i64, bytes_out: i64) -> i64 {
        tool_calls
            .saturating_mul(self.call_nanos)
            .saturating_add(bytes_in.saturating_mul(self.input_byte_nanos))
            .saturating_add(bytes_out.saturating_mul(self.output_byte_nanos))
    }

    /// Whether any price is set.
    pub fn is_free(&self) -> bool {
        self.call_nanos == 0 && self.input_byte_nanos == 0 && self.output_byte_nanos == 0
    }

    /// The snapshot stored with every usage row.
    pub fn json(&self) -> Value {
        json!({
            "call_nanos": self.call_nanos,
            "input_byte_nanos": self.input_byte_nanos,
            "output_byte_nanos": self.output_byte_nanos,
        })
    }
}

/// Per-server limits (enforced per gateway replica).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct McpLimits {
    /// Sustained requests per second (token bucket).
    pub requests_per_second: Option<u32>,
    /// Requests per minute (token bucket).
    pub requests_per_minute: Option<u32>,
    /// Bucket size of `requests_per_second` (defaults to the rate).
    pub burst: Option<u32>,
    /// Requests in flight at once (a GET stream counts while it is open).
    pub max_concurrency: Option<u32>,
    /// Largest request body; larger answers 413 `request_too_large`.
    pub max_request_bytes: Option<usize>,
}

/// One `[mcp_servers.<slug>]`.
#[derive(Debug)]
pub struct McpServer {
    /// The slug in `/v1/mcp/{slug}`.
    pub slug: String,
    /// Free text.
    pub description: String,
    /// How it is reached.
    pub transport: Transport,
    /// A disabled server answers 404 `mcp_not_found`.
    pub enabled: bool,
    /// Time allowed for an answer to start.
    pub timeout: Duration,
    /// The injected credential.
    pub auth: UpstreamAuth,
    /// Tool rules and the keyword filter.
    pub tools: ToolRules,
    /// The Team Scope and API Key Scope.
    pub scope: McpScope,
    /// Prices.
    pub pricing: McpPricing,
    /// Limits.
    pub limits: McpLimits,
    /// What budgets and quotas see for this server: a priced target named `mcp:<slug>` whose
    /// one "input token" costs one nano-USD, so the ledger holds and settles exact MCP costs
    /// through its existing API.
    pub budget_target: Target,
}

impl McpServer {
    /// Builds the ledger's view of a server.
    pub fn budget_target(slug: &str) -> Target {
        use crate::policy::{Credential, Model, Provider, ProviderFamily};
        let name = format!("mcp:{slug}");
        let provider = Arc::new(Provider {
            name: "mcp".into(),
            family: ProviderFamily::Demo,
            base_url: None,
            credential: Credential::NotRequired,
            timeouts: Default::default(),
            net: crate::upstream::proxy::NetSettings::new(
                None,
                None,
                crate::upstream::timeouts::DEFAULT_CONNECT,
            ),
            client: None,
            enabled: true,
            api_version: None,
            adapter: None,
        });
        Target::Model(Arc::new(Model {
            name: name.clone(),
            provider,
            upstream_model: name.clone(),
            pricing: crate::usage::Pricing {
                // One nano-USD per unit at one million units per "mtok".
                input_nanos_per_mtok: 1_000_000,
                output_nanos_per_mtok: 0,
                cached_input_nanos_per_mtok: 1_000_000,
                cache_write_nanos_per_mtok: 0,
            },
            tags: vec!["mcp".into()],
            max_output_tokens: 0,
            translate: false,
            output_limit: None,
            image_pricing: Default::default(),
            cel: crate::policy::cel::json_to_cel(&json!({"name": name, "provider": "mcp"})),
            calls: Default::default(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scope_admits_its_teams_and_keys_and_no_other() {
        assert!(McpScope::default().admits("key_a", None));
        let scope = McpScope {
            teams: vec!["blue".into()],
            keys: vec!["key_b".into()],
        };
        assert!(scope.admits("key_a", Some("blue")));
        assert!(scope.admits("key_b", None));
        assert!(scope.admits("key_b", Some("red")));
        assert!(!scope.admits("key_a", Some("red")));
        assert!(!scope.admits("key_a", None));
    }

    #[test]
    fn the_documented_pricing_example_costs_what_the_spec_says() {
        // Reference spec 1.16, the screenshot: 1000 / 50 / 50 nanos, 166 bytes in, 22,751 out.
        let screenshot = McpPricing {
            call_nanos: 1_000,
            input_byte_nanos: 50,
            output_byte_nanos: 50,
            hold_output_bytes: 0,
        };
        assert_eq!(screenshot.cost_nanos(1, 166, 22_751), 1_146_850);
    }

    #[test]
    fn blocked_tools_win_and_a_non_empty_allow_list_is_exclusive() {
        let rules = ToolRules {
            allowed: vec!["echo".into(), "add".into()],
            blocked: vec!["add".into()],
            blocked_keywords: vec!["private key".into()],
        };
        assert_eq!(rules.tool_denied("echo"), None);
        assert!(
            rules
                .tool_denied("add")
                .is_some_and(|r| r.contains("blocked"))
        );
        assert!(
            rules
                .tool_denied("other")
                .is_some_and(|r| r.contains("allowed"))
        );
        assert!(ToolRules::default().tool_denied("anything").is_none());
        assert_eq!(
            rules.keyword_in(r#"{"message":"my PRIVATE KEY is"}"#),
            Some("private key")
        );
        assert_eq!(rules.keyword_in("harmless"), None);
    }
}
