//! Governance of each JSON-RPC message: tool rules and the keyword filter on `tools/call`, then
//! the CEL access rules that read `mcp` (and those reading only `key` and `now`).

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::jsonrpc::{Call, Envelope};
use super::server::McpServer;
use crate::error::{AccessError, GatewayError, McpError};
use crate::policy::Snapshot;
use crate::policy::cel::{Bindings, RuleMode, RuleOutcome, json_to_cel};
use crate::policy::facts::key_json;
use crate::store::KeyRecord;

/// A refused message: its index in the body and why.
#[derive(Debug)]
pub struct Refusal {
    /// Index of the message in the body.
    pub index: usize,
    /// The error.
    pub error: GatewayError,
}

/// The `mcp` variable of access rules for one message.
pub fn mcp_view(server: &McpServer, call: &Call<'_>) -> Value {
    json!({
        "server": server.slug,
        "transport": server.transport.as_str(),
        "method": call.method,
        "tool": call.tool,
        "arguments": call.arguments.cloned().unwrap_or(Value::Null),
    })
}

/// The tool rules and keyword filter for one `tools/call`.
fn tool_rules(server: &McpServer, call: &Call<'_>) -> Result<(), GatewayError> {
    if call.method != Some("tools/call") {
        return Ok(());
    }
    let block = |reason: String| {
        GatewayError::Mcp(McpError::GuardrailBlock {
            server: server.slug.clone(),
            reason,
        })
    };
    let Some(tool) = call.tool else {
        return Err(block("a tools/call without params.name".into()));
    };
    if let Some(reason) = server.tools.tool_denied(tool) {
        return Err(block(reason));
    }
    if let Some(arguments) = call.arguments
        && let Some(keyword) = server.tools.keyword_in(&arguments.to_string())
    {
        return Err(block(format!(
            "the arguments of '{tool}' contain the blocked keyword '{keyword}'"
        )));
    }
    Ok(())
}

/// Checks every message of `envelope`; all rules run and are recorded, the first denial wins.
pub fn inspect(
    snapshot: &Snapshot,
    server: &McpServer,
    key: &KeyRecord,
    envelope: &Envelope,
    now: DateTime<Utc>,
) -> (Vec<Value>, Option<Refusal>) {
    let mut decisions = Vec::new();
    let mut refusal: Option<Refusal> = None;
    let rules: Vec<_> = snapshot
        .access_rules
        .iter()
        .filter(|r| r.uses.applies_to_mcp())
        .collect();
    let key_value = rules
        .iter()
        .any(|r| r.uses.key)
        .then(|| json_to_cel(&key_json(key)));
    for (index, call) in envelope.calls().enumerate() {
        if call.method.is_none() || call.method.is_some_and(|m| m.starts_with("notifications/")) {
            continue;
        }
        if let Err(error) = tool_rules(server, &call) {
            decisions.push(json!({"stage": "inspect", "check": "mcp_tool_rules", "tool": call.tool, "outcome": "deny"}));
            if refusal.is_none() {
                refusal = Some(Refusal { index, error });
            }
            continue;
        }
        if call.method == Some("tools/call") {
            decisions.push(json!({"stage": "inspect", "check": "mcp_tool_rules", "tool": call.tool, "outcome": "allow"}));
        }
        if rules.is_empty() {
            continue;
        }
        let bindings = Bindings {
            key: key_value.clone(),
            now: Some(now),
            mcp: Some(json_to_cel(&mcp_view(server, &call))),
            ..Bindings::default()
        };
        let ctx = bindings.context();
        for rule in &rules {
            let shadow = rule.mode == RuleMode::Shadow;
            let (label, reason, status) = match rule.evaluate(&ctx) {
                RuleOutcome::Allow => ("allow", None, 403),
                RuleOutcome::Deny { reason, status } => {
                    (if shadow { "would_deny" } else { "deny" }, reason, status)
                }
                RuleOutcome::Error(e) => (
                    if shadow { "would_deny" } else { "error" },
                    Some(format!("evaluation failed: {e}")),
                    403,
                ),
            };
            let mut entry = json!({"stage": "authorize", "rule": rule.name, "mode": if shadow { "shadow" } else { "enforce" }, "outcome": label, "mcp_method": call.method});
            if let Some(r) = &reason {
                entry["reason"] = Value::String(r.clone());
            }
            decisions.push(entry);
            if !shadow && label != "allow" && refusal.is_none() {
                refusal = Some(Refusal {
                    index,
                    error: AccessError::PolicyDenied {
                        rule: rule.name.clone(),
                        reason,
                        status,
                    }
                    .into(),
                });
            }
        }
    }
    (decisions, refusal)
}
