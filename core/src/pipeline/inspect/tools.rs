//! The MCP tool phases: guardrail plugins (built for `tollgate:plugin@0.2.x`) on the arguments
//! of each `tools/call` before the server sees them, and on each tool result before the client
//! does.
//!
//! A plugin is bound to an MCP server when it names a tool phase (`tool_call`, `tool_result`)
//! and its `applies_to` matches (`mcp_servers`, `keys`, `teams`). `allow` goes on; `rewrite`
//! replaces the texts it names inside the JSON (masking: the arguments and the result stay
//! valid JSON); `deny` refuses with `403 mcp_guardrail_block` (a JSON-RPC error naming the
//! plugin). A failing plugin follows its failure mode: closed refuses (`mcp_guardrail_block`),
//! open lets the traffic pass. Every decision goes into the usage row's decision trail.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Map, Value, json};

use super::verdict::{Outcome, categories, decision, validate, with_failure, with_verdict};
use crate::error::{Family, GatewayError, McpError};
use crate::plugins::host::{Failure, elapsed_us, wit};
use crate::plugins::views::{self, TextMap};
use crate::plugins::{FailureMode, Phase, Plugin};
use crate::policy::Snapshot;
use crate::store::KeyRecord;

/// JSON-RPC error code of a refused request (as `mcp::jsonrpc::GATEWAY_REFUSED`).
const GATEWAY_REFUSED: i64 = -32003;

/// The tool-phase plugins bound to one MCP request.
#[derive(Debug, Clone)]
pub struct ToolGuards {
    plugins: Vec<Arc<Plugin>>,
    caller: wit::Caller,
    server: String,
}

/// What one plugin said about one text-bearing value.
enum Said {
    /// Allowed, or rewritten in place.
    Pass,
    /// Refused, with the reason for the client.
    Refuse(String),
}

impl ToolGuards {
    /// The plugins of `snapshot` bound to tool calls on `server` by `key`; `None` when there
    /// are none (the hot path then does nothing).
    pub fn bound(snapshot: &Snapshot, server: &str, key: &KeyRecord) -> Option<Self> {
        let plugins: Vec<Arc<Plugin>> = snapshot
            .plugins
            .iter()
            .filter(|p| p.applies_to_mcp(server, key))
            .cloned()
            .collect();
        if plugins.is_empty() {
            return None;
        }
        Some(ToolGuards {
            plugins,
            caller: views::caller(key),
            server: server.to_string(),
        })
    }

    /// Whether any bound plugin has `phase`.
    pub fn has(&self, phase: Phase) -> bool {
        self.plugins.iter().any(|p| p.has_phase(phase))
    }

    fn block(&self, reason: String) -> GatewayError {
        GatewayError::Mcp(McpError::GuardrailBlock {
            server: self.server.clone(),
            reason,
        })
    }

    /// Runs `phase` of every bound plugin over one value (arguments or a result), rewriting it
    /// in place; pushes one decision per plugin.
    async fn run(
        &self,
        phase: Phase,
        tool: &str,
        value: &mut Value,
        decisions: &mut Vec<Value>,
    ) -> Said {
        for plugin in self.plugins.iter().filter(|p| p.has_phase(phase)) {
            let started = Instant::now();
            let (answer, map): (Result<wit::Verdict, Failure>, TextMap) = match phase {
                Phase::ToolCall => {
                    let (view, map) =
                        views::tool_call_view(&self.server, tool, Some(value), &self.caller);
                    (plugin.instances.check_tool_call(&view).await, map)
                }
                _ => {
                    let (view, map) =
                        views::tool_result_view(&self.server, tool, value, &self.caller);
                    (plugin.instances.check_tool_result(&view).await, map)
                }
            };
            let elapsed = elapsed_us(started);
            let entry = |outcome| {
                let mut d = decision(plugin, phase, outcome, elapsed);
                d["tool"] = Value::from(tool);
                d
            };
            match answer.and_then(|v| validate(v, &map)) {
                Ok((Outcome::Allow, verdict)) => {
                    decisions.push(with_verdict(entry("allow"), &verdict));
                }
                Ok((Outcome::Rewrite(edits), verdict)) => {
                    views::apply_edits(value, &map, &edits);
                    decisions.push(with_verdict(entry("rewrite"), &verdict));
                }
                Ok((Outcome::Deny { code, reason }, verdict)) => {
                    decisions.push(with_verdict(entry("deny"), &verdict));
                    let found = categories(&verdict.findings);
                    let mut text = format!("plugin '{}' refused ({code})", plugin.name);
                    if !found.is_empty() {
                        text.push_str(&format!(" [{}]", found.join(", ")));
                    }
                    if !reason.is_empty() {
                        text.push_str(&format!(": {reason}"));
                    }
                    return Said::Refuse(text);
                }
                Err(failure) => {
                    tracing::warn!(plugin = %plugin.name, phase = phase.as_str(), error = %failure, "guardrail plugin failed");
                    let outcome = match plugin.failure_mode {
                        FailureMode::Closed => "error",
                        FailureMode::Open => "fail_open",
                    };
                    decisions.push(with_failure(entry(outcome), plugin, &failure));
                    if plugin.failure_mode == FailureMode::Closed {
                        return Said::Refuse(format!(
                            "plugin '{}' failed ({}) and fails closed",
                            plugin.name,
                            failure.kind()
                        ));
                    }
                }
            }
        }
        Said::Pass
    }

    /// The `tool_call` phase over every `tools/call` of a request body's messages, rewriting
    /// their `params.arguments`. Returns the decisions, whether anything changed, and the first
    /// refusal (the index of the message and the error).
    pub async fn check_calls(
        &self,
        messages: &mut [Map<String, Value>],
    ) -> (Vec<Value>, bool, Option<(usize, GatewayError)>) {
        let mut decisions = Vec::new();
        let mut changed = false;
        if !self.has(Phase::ToolCall) {
            return (decisions, changed, None);
        }
        for (index, message) in messages.iter_mut().enumerate() {
            if message.get("method").and_then(Value::as_str) != Some("tools/call") {
                continue;
            }
            let Some(Value::Object(params)) = message.get_mut("params") else {
                continue;
            };
            let tool = params
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let mut arguments = params
                .get("arguments")
                .cloned()
                .unwrap_or_else(|| json!({}));
            let before = arguments.clone();
            let said = self
                .run(Phase::ToolCall, &tool, &mut arguments, &mut decisions)
                .await;
            if let Said::Refuse(reason) = said {
                return (decisions, changed, Some((index, self.block(reason))));
            }
            if arguments != before {
                params.insert("arguments".into(), arguments);
                changed = true;
            }
        }
        (decisions, changed, None)
    }

    /// The `tool_result` phase over every answer in `answer` (one JSON-RPC message or a batch)
    /// to a `tools/call` of `tools` (request id as JSON text → tool name). A refused result is
    /// replaced by a JSON-RPC error (`mcp_guardrail_block`). Returns the decisions, whether
    /// anything changed, and whether a result was refused.
    pub async fn check_results(
        &self,
        answer: &mut Value,
        tools: &HashMap<String, String>,
    ) -> (Vec<Value>, bool, bool) {
        let mut decisions = Vec::new();
        let (mut changed, mut refused) = (false, false);
        if !self.has(Phase::ToolResult) || tools.is_empty() {
            return (decisions, changed, refused);
        }
        let messages: Vec<&mut Value> = match answer {
            Value::Array(items) => items.iter_mut().collect(),
            other => vec![other],
        };
        for message in messages {
            let Some(id) = message.get("id").cloned() else {
                continue;
            };
            let Some(tool) = tools.get(&id.to_string()) else {
                continue;
            };
            let Some(result) = message.get_mut("result") else {
                continue;
            };
            let before = result.clone();
            let said = self
                .run(Phase::ToolResult, tool, result, &mut decisions)
                .await;
            match said {
                Said::Pass => changed |= *result != before,
                Said::Refuse(reason) => {
                    let error = self.block(reason);
                    let mut data = error.body(Family::OpenAi)["error"].clone();
                    data["status"] = json!(error.status().as_u16());
                    *message = json!({"jsonrpc": "2.0", "id": id, "error": {
                        "code": GATEWAY_REFUSED, "message": error.to_string(), "data": data}});
                    changed = true;
                    refused = true;
                }
            }
        }
        (decisions, changed, refused)
    }
}

/// The tools called by a request body's messages: request id (as JSON text) → tool name.
pub fn called_tools(messages: &[Map<String, Value>]) -> HashMap<String, String> {
    messages
        .iter()
        .filter(|m| m.get("method").and_then(Value::as_str) == Some("tools/call"))
        .filter_map(|m| {
            let id = m.get("id").filter(|v| !v.is_null())?;
            let tool = m.get("params")?.get("name")?.as_str()?;
            Some((id.to_string(), tool.to_string()))
        })
        .collect()
}
