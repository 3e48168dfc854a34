//! Stage 3, inspect: guardrail plugins on the request, the answer and the stream.
//!
//! - **request** ([`run`]): every plugin of the snapshot whose `applies_to` matches the model
//!   name and key runs in manifest file-name order, before any budget is held or the provider
//!   sees anything. `allow` goes on, `rewrite` replaces the texts it names in the body the
//!   provider receives (masking), `deny` ends the request with 403 (`safety_blocked` or the
//!   plugin's own code) naming the plugin and the finding categories, never the text.
//! - **response** ([`inspect_response`]): non-streamed answers, before the client sees them.
//! - **stream** ([`StreamGuard`]): SSE answers through a sliding window per choice: the last
//!   `stream_window` bytes of text are held back and shown again with the next chunk, so a value
//!   split across two chunks is seen whole, without buffering the stream. Tool-call argument
//!   deltas get windows of their own.
//! - **tool_call / tool_result** ([`ToolGuards`]): MCP tool arguments before the server sees
//!   them and tool results before the client does (plugins built for `tollgate:plugin@0.2.x`).
//!
//! Plugins see every text a family carries: message text, tool-call arguments (each string
//! inside the JSON, written back as valid JSON), tool results, refusals, reasoning and thinking
//! text, and non-JSON answers whole; an answer without text still runs every response plugin.
//!
//! A plugin that traps, runs out of time or memory, or answers garbage is handled by its
//! failure mode: closed (403 `plugin_blocked` naming it) or open (the traffic passes, the
//! failure is recorded). Every plugin's decision, time and findings (categories and counts,
//! never content) go into the usage record's decision trail.

use std::sync::Arc;
use std::time::Instant;

use super::authorize::Authorized;
use super::{Endpoint, Flow, Recorder};
use crate::plugins::host::{elapsed_us, wit};
use crate::plugins::views::{self};
use crate::plugins::{FailureMode, Phase, Plugin};
use crate::policy::Snapshot;
use crate::store::KeyRecord;

mod response;
mod sse;
mod stream;
mod tools;
mod verdict;

pub use response::inspect_response;
pub use stream::{GuardOutput, StreamGuard};
pub use tools::{ToolGuards, called_tools};
use verdict::{Outcome, decision, denial, failed, validate, with_failure, with_verdict};

/// The plugins bound to one request for its answer, carried to the call stage.
#[derive(Debug, Clone, Default)]
pub struct Guards {
    /// Plugins with a `response` or `stream` phase that apply to this request.
    pub plugins: Vec<Arc<Plugin>>,
    /// The calling key as plugins see it.
    pub caller: Option<wit::Caller>,
    /// The model name the client sent.
    pub model: String,
    /// The endpoint path.
    pub endpoint: &'static str,
}

impl Guards {
    /// Whether any bound plugin has `phase`.
    pub fn has(&self, phase: Phase) -> bool {
        self.plugins.iter().any(|p| p.has_phase(phase))
    }
}

/// Runs the request phase of every plugin bound to this request; rewrites change `request.body`.
pub async fn run(
    snapshot: &Snapshot,
    endpoint: Endpoint,
    key: &KeyRecord,
    request: &mut Authorized,
    recorder: &mut Recorder,
) -> Flow<()> {
    let model = request.target.name().to_string();
    let bound: Vec<Arc<Plugin>> = snapshot
        .plugins
        .iter()
        .filter(|p| p.phases.iter().any(|ph| !ph.is_tool()) && p.applies(&model, key))
        .cloned()
        .collect();
    if bound.is_empty() {
        return Flow::Continue(());
    }
    let caller = views::caller(key);
    let mut view = None;
    let mut decisions = Vec::new();
    let mut result = Flow::Continue(());
    for plugin in bound.iter().filter(|p| p.has_phase(Phase::Request)) {
        let (shown, map) = view.get_or_insert_with(|| {
            views::request_view(
                endpoint.path(),
                &model,
                request.stream,
                request.body(),
                &caller,
            )
        });
        let started = Instant::now();
        let answer = plugin.instances.check_request(shown).await;
        let elapsed = elapsed_us(started);
        match answer.and_then(|v| validate(v, map)) {
            Ok((Outcome::Allow, verdict)) => {
                decisions.push(with_verdict(
                    decision(plugin, Phase::Request, "allow", elapsed),
                    &verdict,
                ));
            }
            Ok((Outcome::Rewrite(edits), verdict)) => {
                request.edit_body(|body| {
                    views::apply_edits_to_body(body, map, &edits);
                    true
                });
                view = None;
                decisions.push(with_verdict(
                    decision(plugin, Phase::Request, "rewrite", elapsed),
                    &verdict,
                ));
            }
            Ok((Outcome::Deny { code, reason }, verdict)) => {
                decisions.push(with_verdict(
                    decision(plugin, Phase::Request, "deny", elapsed),
                    &verdict,
                ));
                result = Flow::Respond(denial(plugin, code, reason, &verdict.findings));
                break;
            }
            Err(failure) => {
                tracing::warn!(plugin = %plugin.name, phase = "request", error = %failure, "guardrail plugin failed");
                let outcome = match plugin.failure_mode {
                    FailureMode::Closed => "error",
                    FailureMode::Open => "fail_open",
                };
                decisions.push(with_failure(
                    decision(plugin, Phase::Request, outcome, elapsed),
                    plugin,
                    &failure,
                ));
                if plugin.failure_mode == FailureMode::Closed {
                    result = Flow::Respond(failed(plugin, &failure));
                    break;
                }
            }
        }
    }
    recorder.add_decisions(decisions);
    request.guards = Guards {
        plugins: bound
            .into_iter()
            .filter(|p| p.has_phase(Phase::Response) || p.has_phase(Phase::Stream))
            .collect(),
        caller: Some(caller),
        model,
        endpoint: endpoint.path(),
    };
    result
}
