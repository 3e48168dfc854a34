//! The serving gateway's live state: `/admin/v1/policy` (status, reload), `/mcp-servers`,
//! `/providers` and `/models`. Never a credential. Policy reloads are audited: by the admin
//! API with the caller's token id, by the file watcher and SIGHUP as `system`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use super::{Admin, ApiError, Call, Reply, page_of};
use crate::policy::watch::{self as policy_watch, Trigger};
use crate::state::AppState;
use crate::store::admin::rfc3339;

/// Reloads made through the admin API that changed the reload counters (each is audited by
/// the handler; the background auditor audits the rest as `system`).
static ADMIN_RELOADS: AtomicU64 = AtomicU64::new(0);

/// Policy files listed at most.
const MAX_FILES: usize = 1000;

fn app(admin: &Admin, what: &str) -> Result<Arc<AppState>, ApiError> {
    admin
        .gateway
        .clone()
        .ok_or_else(|| ApiError::needs_gateway(what))
}

fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&next) else {
            continue;
        };
        for entry in entries.flatten() {
            if out.len() >= MAX_FILES {
                return out;
            }
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(rel) = path.strip_prefix(dir) {
                out.push(rel.display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// Splits `file:line:col: message` into its parts.
fn parse_error(text: &str) -> Value {
    if let Some((location, message)) = text.split_once(": ") {
        let mut parts = location.rsplitn(3, ':');
        let (col, line, file) = (parts.next(), parts.next(), parts.next());
        if let (Some(col), Some(line), Some(file)) = (col, line, file)
            && col.parse::<u64>().is_ok()
            && let Ok(line) = line.parse::<u64>()
        {
            return json!({"message": message, "file": file, "line": line});
        }
        if let (Some(line), Some(file)) = (col, line)
            && let Ok(line) = line.parse::<u64>()
        {
            return json!({"message": message, "file": file, "line": line});
        }
    }
    json!({"message": text, "file": Value::Null, "line": Value::Null})
}

fn policy_json(app: &AppState) -> Value {
    let snapshot = app.policies.snapshot();
    let status = app.policies.status();
    json!({
        "generation": snapshot.generation,
        "loaded_at": rfc3339(Some(snapshot.loaded_at_ms)),
        "content_hash": snapshot.content_hash,
        "dir": snapshot.dir.display().to_string(),
        "files": files(&snapshot.dir),
        "last_error": status.last_errors.first().map_or(Value::Null, |e| parse_error(e)),
        "last_errors": status.last_errors,
        "last_error_at": rfc3339(status.last_error_at_ms),
        "reloads_ok": status.reloads_ok,
        "reloads_failed": status.reloads_failed,
        "reloads_unchanged": status.reloads_unchanged,
    })
}

fn brief(app: &AppState) -> Value {
    let snapshot = app.policies.snapshot();
    let status = app.policies.status();
    json!({
        "generation": snapshot.generation,
        "content_hash": snapshot.content_hash,
        "reloads_ok": status.reloads_ok,
        "reloads_failed": status.reloads_failed,
        "last_error": status.last_errors.first(),
    })
}

/// `GET /policy`.
pub async fn policy(admin: Arc<Admin>, _call: Call) -> Result<Reply, ApiError> {
    let app = app(&admin, "the policy status")?;
    Ok(Reply::ok(policy_json(&app)))
}

/// `POST /policy/reload`.
pub async fn reload(admin: Arc<Admin>, call: Call) -> Result<Reply, ApiError> {
    let app = app(&admin, "a policy reload")?;
    reload_audited(&app, &call.actor.id).await?;
    Ok(Reply::ok(policy_json(&app)))
}

/// Reloads the policy directory for an admin caller and audits it with `actor` (also used by
/// the older `POST /admin/policies/reload`).
pub async fn reload_audited(app: &AppState, actor: &str) -> Result<(), crate::store::StoreError> {
    let before = brief(app);
    policy_watch::reload(&app.policies, Trigger::Admin).await;
    let after = brief(app);
    if before["reloads_ok"] != after["reloads_ok"]
        || before["reloads_failed"] != after["reloads_failed"]
    {
        ADMIN_RELOADS.fetch_add(1, Ordering::AcqRel);
    }
    app.store
        .audit(
            actor,
            "policy.reload",
            Some(&app.policies.dir().display().to_string()),
            Some(&before),
            Some(&after),
        )
        .await
}

/// Audits policy reloads not made through the admin API (file watcher, SIGHUP) as `system`,
/// until `stop` flips.
pub async fn audit_reloads(app: Arc<AppState>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let count = |app: &AppState| {
        let s = app.policies.status();
        s.reloads_ok + s.reloads_failed
    };
    let mut seen = count(&app);
    let mut seen_admin = ADMIN_RELOADS.load(Ordering::Acquire);
    let mut last = brief(&app);
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        let admin_now = ADMIN_RELOADS.load(Ordering::Acquire);
        let now = count(&app);
        let system =
            (now.saturating_sub(seen)).saturating_sub(admin_now.saturating_sub(seen_admin));
        seen = now;
        seen_admin = admin_now;
        let current = brief(&app);
        if system > 0 {
            let target = app.policies.dir().display().to_string();
            if let Err(e) = app
                .store
                .audit(
                    "system",
                    "policy.reload",
                    Some(&target),
                    Some(&last),
                    Some(&current),
                )
                .await
            {
                tracing::warn!(error = %e, "policy reload could not be audited");
            }
        }
        last = current;
    }
}

/// `GET /mcp-servers`.
pub async fn mcp_servers(admin: Arc<Admin>, call: Call) -> Result<Reply, ApiError> {
    let app = app(&admin, "listing MCP servers")?;
    let snapshot = app.policies.snapshot();
    let data = snapshot
        .mcp_servers
        .values()
        .map(|s| {
            let mut out = json!({
                "slug": s.slug,
                "description": s.description,
                "transport": s.transport.as_str(),
                "enabled": s.enabled,
                "allowed_tools": s.tools.allowed,
                "blocked_tools": s.tools.blocked,
                "pricing": {
                    "call_nanos": s.pricing.call_nanos,
                    "input_byte_nanos": s.pricing.input_byte_nanos,
                    "output_byte_nanos": s.pricing.output_byte_nanos,
                },
            });
            match &s.transport {
                crate::mcp::server::Transport::StreamableHttp { url }
                | crate::mcp::server::Transport::Sse { url } => {
                    out["url"] = json!(crate::store::redact::redact_urls(url));
                }
                crate::mcp::server::Transport::Stdio(cmd) => {
                    out["command"] = json!(cmd.command);
                }
            }
            out
        })
        .collect();
    page_of(&call, data)
}

/// `GET /providers`.
pub async fn providers(admin: Arc<Admin>, call: Call) -> Result<Reply, ApiError> {
    let app = app(&admin, "listing providers")?;
    let snapshot = app.policies.snapshot();
    let data = snapshot
        .providers
        .values()
        .map(|p| {
            let models: Vec<&String> = snapshot
                .models
                .values()
                .filter(|m| m.provider.name == p.name)
                .map(|m| &m.name)
                .collect();
            let cooling = models.iter().any(|m| app.health.get(m).in_cooldown());
            // The provider is back when the last of its models' cooldowns ends.
            let cooldown_until = models
                .iter()
                .filter_map(|m| app.health.get(m).cooldown_until_ms())
                .max();
            json!({
                "name": p.name,
                "family": p.family.as_str(),
                "base_url": p.base_url.as_deref().map(crate::store::redact::redact_urls),
                "enabled": p.enabled,
                "credential": match p.credential {
                    crate::policy::Credential::NotRequired => "not_required",
                    crate::policy::Credential::Present(_) => "configured",
                    crate::policy::Credential::Missing(_) => "missing",
                },
                "healthy": p.enabled && !cooling,
                "cooldown_until": rfc3339(cooldown_until),
                "models": models,
            })
        })
        .collect();
    page_of(&call, data)
}

/// `GET /models`.
pub async fn models(admin: Arc<Admin>, call: Call) -> Result<Reply, ApiError> {
    let app = app(&admin, "listing models")?;
    let snapshot = app.policies.snapshot();
    let data = snapshot
        .models
        .values()
        .map(|m| {
            json!({
                "name": m.name,
                "provider": m.provider.name,
                "providers": [m.provider.name],
                "upstream_model": m.upstream_model,
                "pricing": {
                    "input_nanos_per_mtok": m.pricing.input_nanos_per_mtok,
                    "output_nanos_per_mtok": m.pricing.output_nanos_per_mtok,
                    "cached_input_nanos_per_mtok": m.pricing.cached_input_nanos_per_mtok,
                    "cache_write_nanos_per_mtok": m.pricing.cache_write_nanos_per_mtok,
                    "input_usd_per_mtok": m.pricing.input_nanos_per_mtok as f64 / 1e9,
                    "output_usd_per_mtok": m.pricing.output_nanos_per_mtok as f64 / 1e9,
                },
                "tags": m.tags,
            })
        })
        .chain(snapshot.groups.iter().map(|(name, g)| {
            json!({
                "name": name,
                "provider": Value::Null,
                "providers": g.deployments.iter().map(|d| d.model.provider.name.clone()).collect::<Vec<_>>(),
                "deployments": g.deployments.iter().map(|d| d.model.name.clone()).collect::<Vec<_>>(),
                "pricing": Value::Null,
                "group": true,
            })
        }))
        .collect();
    page_of(&call, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_errors_split_into_file_line_and_message() {
        let e = parse_error("policies/gateway.toml:12:3: unknown field `foo`");
        assert_eq!(e["file"], "policies/gateway.toml");
        assert_eq!(e["line"], 12);
        assert_eq!(e["message"], "unknown field `foo`");
        let plain = parse_error("something odd");
        assert!(plain["file"].is_null());
    }
}
