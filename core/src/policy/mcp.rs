//! `[mcp_servers.<slug>]` in `gateway.toml` and `mcp/<slug>.toml`: the schema and its
//! validation into [`McpServer`]s for the snapshot.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use toml::Spanned;

use super::config::CredentialSection;
use super::credential::resolve as resolve_credential;
use super::load::SourceMap;
use super::{Credential, LoadError};
use crate::mcp::aggregate::{Member, VirtualServer};
use crate::mcp::server::{
    McpLimits, McpPricing, McpServer, SecretSource, StdioCommand, ToolRules, Transport,
    UpstreamAuth,
};

/// One MCP server as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpServerSection {
    /// `streamable_http`, `sse` or `stdio`.
    pub transport: Spanned<String>,
    /// The MCP endpoint (`streamable_http`) or the SSE endpoint (`sse`).
    pub url: Option<Spanned<String>>,
    /// The program to run (`stdio`).
    pub command: Option<Spanned<String>>,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment variables for the child.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory of the child.
    pub cwd: Option<String>,
    /// Seconds without a request after which a session's child is stopped.
    #[serde(default = "default_idle_timeout_secs")]
    pub idle_timeout_secs: u64,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// A disabled server answers 404 `mcp_not_found`.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Time allowed for an answer to start.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// The upstream credential.
    pub auth: Option<McpAuthSection>,
    /// If not empty, only these tools may be called and are listed.
    #[serde(default)]
    pub allowed_tools: Vec<String>,
    /// Never called, never listed.
    #[serde(default)]
    pub blocked_tools: Vec<String>,
    /// A `tools/call` whose arguments contain one of these is refused (case-insensitive).
    #[serde(default)]
    pub blocked_keywords: Vec<String>,
    /// Team Scope: if this or `keys` is not empty, only keys of these teams (or listed in `keys`)
    /// may use the server, whatever their MCP Access grant.
    #[serde(default)]
    pub teams: Vec<String>,
    /// API Key Scope: key ids that may use the server (see `teams`).
    #[serde(default)]
    pub keys: Vec<String>,
    /// Prices in nano-USD.
    #[serde(default)]
    pub pricing: McpPricingSection,
    /// Limits.
    #[serde(default)]
    pub limits: McpLimitsSection,
}

/// `auth = { type = "bearer", token = { env = "..." } }` and friends.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpAuthSection {
    /// `none`, `bearer`, `basic` or `oauth2`.
    #[serde(rename = "type")]
    pub kind: Spanned<String>,
    /// `bearer`: the token.
    pub token: Option<CredentialSection>,
    /// `basic`: the user name.
    pub username: Option<String>,
    /// `basic`: the password.
    pub password: Option<CredentialSection>,
    /// `oauth2`: the token endpoint.
    pub token_url: Option<String>,
    /// `oauth2`: client id.
    pub client_id: Option<String>,
    /// `oauth2`: client secret.
    pub client_secret: Option<CredentialSection>,
    /// `oauth2`: scope.
    pub scope: Option<String>,
    /// `oauth2`: audience.
    pub audience: Option<String>,
}

/// `pricing = { call_nanos, input_byte_nanos, output_byte_nanos, hold_output_bytes }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpPricingSection {
    /// Nano-USD per `tools/call`.
    #[serde(default)]
    pub call_nanos: i64,
    /// Nano-USD per request byte.
    #[serde(default)]
    pub input_byte_nanos: i64,
    /// Nano-USD per response byte.
    #[serde(default)]
    pub output_byte_nanos: i64,
    /// The response size a budget hold assumes (default 16 KiB).
    pub hold_output_bytes: Option<i64>,
}

/// `limits = { requests_per_second, requests_per_minute, burst, max_concurrency, max_request_bytes }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpLimitsSection {
    /// Sustained requests per second.
    pub requests_per_second: Option<u32>,
    /// Requests per minute.
    pub requests_per_minute: Option<u32>,
    /// Bucket size for `requests_per_second`.
    pub burst: Option<u32>,
    /// Requests in flight at once.
    pub max_concurrency: Option<u32>,
    /// Largest request body.
    pub max_request_bytes: Option<usize>,
}

/// `[mcp_virtual.<slug>]`: `servers = [{ server = "a", prefix = "a_" }, ...]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpVirtualSection {
    /// The member servers.
    pub servers: Vec<McpVirtualMember>,
}

/// One member of a virtual server.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpVirtualMember {
    /// A server of `[mcp_servers]` (Streamable HTTP).
    pub server: Spanned<String>,
    /// Prefix of its tool names (default `<server>_`).
    pub prefix: Option<String>,
}

/// Validates `[mcp_virtual]` against the servers.
pub(super) fn load_virtual(
    gateway: &SourceMap<'_>,
    sections: BTreeMap<String, McpVirtualSection>,
    servers: &BTreeMap<String, Arc<McpServer>>,
    errors: &mut Vec<LoadError>,
) -> BTreeMap<String, Arc<VirtualServer>> {
    let mut out = BTreeMap::new();
    for (slug, section) in sections {
        let key = format!("mcp_virtual.{slug}");
        if !valid_slug(&slug) || servers.contains_key(&slug) {
            errors.push(gateway.error(
                None,
                &key,
                "a virtual server needs a valid slug that no server uses".into(),
            ));
            continue;
        }
        let mut members: Vec<Member> = Vec::new();
        for m in section.servers {
            let name = m.server.get_ref();
            match servers.get(name) {
                Some(s) if !s.scope.is_open() => {
                    errors.push(gateway.error(
                        Some(m.server.span()),
                        &format!("{key}.servers"),
                        format!("'{name}' has a team or key scope: a scoped server cannot be a member of a virtual server"),
                    ));
                    continue;
                }
                Some(s) if matches!(s.transport, Transport::StreamableHttp { .. }) => {}
                Some(_) => {
                    errors.push(gateway.error(
                        Some(m.server.span()),
                        &format!("{key}.servers"),
                        format!("'{name}' is not a streamable_http server (virtual servers aggregate those only)"),
                    ));
                    continue;
                }
                None => {
                    errors.push(gateway.error(
                        Some(m.server.span()),
                        &format!("{key}.servers"),
                        format!("no MCP server '{name}'"),
                    ));
                    continue;
                }
            }
            let prefix = m.prefix.unwrap_or_else(|| format!("{name}_"));
            if members
                .iter()
                .any(|x| x.prefix.starts_with(&prefix) || prefix.starts_with(&x.prefix))
            {
                errors.push(gateway.error(
                    Some(m.server.span()),
                    &format!("{key}.servers"),
                    format!(
                        "prefix '{prefix}' overlaps another member's: tool names must map back exactly"
                    ),
                ));
                continue;
            }
            members.push(Member {
                server: name.clone(),
                prefix,
            });
        }
        out.insert(slug.clone(), Arc::new(VirtualServer { slug, members }));
    }
    out
}

fn default_idle_timeout_secs() -> u64 {
    300
}

fn default_true() -> bool {
    true
}

fn default_timeout_ms() -> u64 {
    60_000
}

/// Whether `slug` can appear in `/v1/mcp/{slug}`.
fn valid_slug(slug: &str) -> bool {
    !slug.is_empty()
        && slug.len() <= 64
        && slug.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn secret(
    dir: &Path,
    section: Option<&CredentialSection>,
    what: &str,
) -> Result<SecretSource, String> {
    let Some(section) = section else {
        return Err(format!("needs '{what}'"));
    };
    Ok(match resolve_credential(dir, section)? {
        Credential::Present(s) => Ok(s),
        Credential::Missing(reason) => Err(reason),
        Credential::NotRequired => Err(format!("'{what}' is empty")),
    })
}

fn auth(dir: &Path, section: Option<&McpAuthSection>) -> Result<UpstreamAuth, String> {
    let Some(a) = section else {
        return Ok(UpstreamAuth::None);
    };
    Ok(match a.kind.get_ref().as_str() {
        "none" => UpstreamAuth::None,
        "bearer" => UpstreamAuth::Bearer(secret(dir, a.token.as_ref(), "token")?),
        "basic" => UpstreamAuth::Basic {
            username: a.username.clone().ok_or("basic auth needs 'username'")?,
            password: secret(dir, a.password.as_ref(), "password")?,
        },
        "oauth2" => {
            let token_url = a.token_url.clone().ok_or("oauth2 needs 'token_url'")?;
            match reqwest::Url::parse(&token_url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                _ => return Err(format!("token_url '{token_url}' is not an http(s) URL")),
            }
            UpstreamAuth::OAuth2 {
                token_url,
                client_id: a.client_id.clone().ok_or("oauth2 needs 'client_id'")?,
                client_secret: secret(dir, a.client_secret.as_ref(), "client_secret")?,
                scope: a.scope.clone(),
                audience: a.audience.clone(),
            }
        }
        other => {
            return Err(format!(
                "unknown auth type '{other}' (none, bearer, basic or oauth2)"
            ));
        }
    })
}

fn http_url(url: Option<&Spanned<String>>) -> Result<String, String> {
    let Some(url) = url else {
        return Err("needs 'url'".into());
    };
    match reqwest::Url::parse(url.get_ref()) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(url.get_ref().clone()),
        Ok(u) => Err(format!("url scheme '{}' is not http or https", u.scheme())),
        Err(e) => Err(format!("url is not valid: {e}")),
    }
}

/// Validates one server; `Err` holds (field, message) pairs.
fn build(dir: &Path, slug: &str, s: McpServerSection) -> Result<McpServer, Vec<(String, String)>> {
    let mut problems = Vec::new();
    if !valid_slug(slug) {
        problems.push((
            String::new(),
            "a slug is 1-64 characters of a-z, 0-9, '-' and '_'".to_string(),
        ));
    }
    let transport = match s.transport.get_ref().as_str() {
        "streamable_http" | "sse" => match http_url(s.url.as_ref()) {
            Ok(url) if s.transport.get_ref() == "sse" => Some(Transport::Sse { url }),
            Ok(url) => Some(Transport::StreamableHttp { url }),
            Err(m) => {
                problems.push(("url".into(), m));
                None
            }
        },
        "stdio" => match &s.command {
            Some(command) if !command.get_ref().trim().is_empty() => {
                Some(Transport::Stdio(StdioCommand {
                    command: command.get_ref().clone(),
                    args: s.args.clone(),
                    env: s.env.clone(),
                    cwd: s.cwd.as_ref().map(|c| dir.join(c)),
                    idle_timeout: Duration::from_secs(s.idle_timeout_secs.max(1)),
                }))
            }
            _ => {
                problems.push(("command".into(), "a stdio server needs 'command'".into()));
                None
            }
        },
        other => {
            problems.push((
                "transport".into(),
                format!("unknown transport '{other}' (streamable_http, sse or stdio)"),
            ));
            None
        }
    };
    let auth = match auth(dir, s.auth.as_ref()) {
        Ok(a) => a,
        Err(m) => {
            problems.push(("auth".into(), m));
            UpstreamAuth::None
        }
    };
    let p = &s.pricing;
    if p.call_nanos < 0 || p.input_byte_nanos < 0 || p.output_byte_nanos < 0 {
        problems.push(("pricing".into(), "prices must be >= 0 nano-USD".into()));
    }
    if s.timeout_ms == 0 {
        problems.push(("timeout_ms".into(), "must be greater than 0".into()));
    }
    if s.limits.requests_per_second == Some(0) || s.limits.requests_per_minute == Some(0) {
        problems.push((
            "limits".into(),
            "a rate of 0 refuses every request: remove the server or set enabled = false".into(),
        ));
    }
    let Some(transport) = transport else {
        return Err(problems);
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(McpServer {
        budget_target: McpServer::budget_target(slug),
        slug: slug.to_string(),
        description: s.description,
        transport,
        enabled: s.enabled,
        timeout: Duration::from_millis(s.timeout_ms),
        auth,
        tools: ToolRules {
            allowed: s.allowed_tools,
            blocked: s.blocked_tools,
            blocked_keywords: s
                .blocked_keywords
                .iter()
                .map(|k| k.to_lowercase())
                .filter(|k| !k.is_empty())
                .collect(),
        },
        scope: crate::mcp::server::McpScope {
            teams: s.teams,
            keys: s.keys,
        },
        pricing: McpPricing {
            call_nanos: p.call_nanos,
            input_byte_nanos: p.input_byte_nanos,
            output_byte_nanos: p.output_byte_nanos,
            hold_output_bytes: p.hold_output_bytes.unwrap_or(16 * 1024).max(0),
        },
        limits: McpLimits {
            requests_per_second: s.limits.requests_per_second,
            requests_per_minute: s.limits.requests_per_minute,
            burst: s.limits.burst,
            max_concurrency: s.limits.max_concurrency,
            max_request_bytes: s.limits.max_request_bytes,
        },
    })
}

/// Validates `[mcp_servers]` of `gateway.toml` plus every `mcp/<slug>.toml`, feeding the files
/// read into the snapshot's content hash.
pub(super) fn load_servers(
    dir: &Path,
    gateway: &SourceMap<'_>,
    sections: BTreeMap<String, McpServerSection>,
    errors: &mut Vec<LoadError>,
    hasher: &mut Sha256,
) -> BTreeMap<String, Arc<McpServer>> {
    let mut servers = BTreeMap::new();
    for (slug, section) in sections {
        let span = section.transport.span();
        match build(dir, &slug, section) {
            Ok(server) => {
                servers.insert(slug, Arc::new(server));
            }
            Err(problems) => {
                for (field, message) in problems {
                    let key = if field.is_empty() {
                        format!("mcp_servers.{slug}")
                    } else {
                        format!("mcp_servers.{slug}.{field}")
                    };
                    errors.push(gateway.error(Some(span.clone()), &key, message));
                }
            }
        }
    }
    for (slug, path, text) in server_files(dir, errors) {
        hasher.update(path.to_string_lossy().as_bytes());
        hasher.update(Sha256::digest(text.as_bytes()));
        let file_error = |line: Option<usize>, key: Option<String>, message: String| LoadError {
            file: path.clone(),
            line,
            column: None,
            key,
            message,
        };
        if servers.contains_key(&slug) {
            errors.push(file_error(
                None,
                None,
                format!("MCP server '{slug}' is also defined in gateway.toml"),
            ));
            continue;
        }
        let section: McpServerSection = match toml::from_str(&text) {
            Ok(s) => s,
            Err(e) => {
                let line = e
                    .span()
                    .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
                errors.push(file_error(line, None, e.message().trim().to_string()));
                continue;
            }
        };
        match build(dir, &slug, section) {
            Ok(server) => {
                servers.insert(slug, Arc::new(server));
            }
            Err(problems) => {
                for (field, message) in problems {
                    errors.push(file_error(None, Some(field), message));
                }
            }
        }
    }
    servers
}

/// `mcp/*.toml`, sorted: (slug, path, text).
fn server_files(dir: &Path, errors: &mut Vec<LoadError>) -> Vec<(String, PathBuf, String)> {
    let folder = dir.join("mcp");
    let Ok(entries) = std::fs::read_dir(&folder) else {
        return Vec::new();
    };
    let mut files: Vec<(String, PathBuf, String)> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .filter_map(|path| {
            let slug = path.file_stem()?.to_str()?.to_string();
            match std::fs::read_to_string(&path) {
                Ok(text) => Some((slug, path, text)),
                Err(e) => {
                    errors.push(LoadError {
                        file: path,
                        line: None,
                        column: None,
                        key: None,
                        message: format!("cannot read: {e}"),
                    });
                    None
                }
            }
        })
        .collect();
    files.sort_by(|a, b| a.0.cmp(&b.0));
    files
}

#[cfg(test)]
mod tests {
    use super::super::load::{GATEWAY_FILE, load_dir};
    use crate::mcp::server::Transport;

    #[test]
    fn servers_load_from_gateway_toml_and_the_mcp_folder() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join(GATEWAY_FILE),
            r#"
[mcp_servers.search]
transport = "streamable_http"
url = "http://127.0.0.1:9/mcp"
allowed_tools = ["search", "open"]
blocked_keywords = ["Private Key"]
pricing = { call_nanos = 1000, input_byte_nanos = 50, output_byte_nanos = 50 }
limits = { requests_per_second = 5, burst = 10, max_concurrency = 2 }
"#,
        )
        .expect("write");
        std::fs::create_dir_all(dir.path().join("mcp")).expect("mkdir");
        std::fs::write(
            dir.path().join("mcp/time.toml"),
            "transport = \"stdio\"\ncommand = \"mcp-server-time\"\nargs = [\"--local-timezone\", \"UTC\"]\n",
        )
        .expect("write");
        let snapshot = load_dir(dir.path(), 1, None).expect("loads");
        let search = &snapshot.mcp_servers["search"];
        assert!(matches!(search.transport, Transport::StreamableHttp { .. }));
        assert_eq!(search.tools.blocked_keywords, ["private key"]);
        assert_eq!(search.pricing.call_nanos, 1000);
        assert_eq!(search.limits.burst, Some(10));
        let time = &snapshot.mcp_servers["time"];
        assert!(matches!(&time.transport, Transport::Stdio(c) if c.command == "mcp-server-time"));
    }

    #[test]
    fn a_server_without_its_endpoint_names_the_missing_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join(GATEWAY_FILE),
            "[mcp_servers.a]\ntransport = \"sse\"\n\n[mcp_servers.b]\ntransport = \"stdio\"\n\n[mcp_servers.c]\ntransport = \"carrier-pigeon\"\n",
        )
        .expect("write");
        let errors = load_dir(dir.path(), 1, None).expect_err("fails");
        let keys: Vec<_> = errors.iter().filter_map(|e| e.key.clone()).collect();
        assert_eq!(
            keys,
            [
                "mcp_servers.a.url",
                "mcp_servers.b.command",
                "mcp_servers.c.transport"
            ],
            "{errors:?}"
        );
        assert_eq!(errors[0].line, Some(2));
    }
}
