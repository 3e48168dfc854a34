//! The response phase: guardrails on a non-streamed answer before the client sees it.

use std::time::Instant;

use bytes::Bytes;
use serde_json::Value;

use super::Guards;
use super::verdict::{Outcome, decision, denial, failed, validate, with_failure, with_verdict};
use crate::error::GatewayError;
use crate::pipeline::Recorder;
use crate::plugins::host::elapsed_us;
use crate::plugins::views::{self};
use crate::plugins::{FailureMode, Phase};

/// Runs the response phase on a non-streamed 2xx answer; returns the body to relay (rewritten
/// if a plugin masked it) or the error to answer with instead.
pub async fn inspect_response(
    guards: &Guards,
    body: Bytes,
    recorder: &mut Recorder,
) -> Result<Bytes, GatewayError> {
    if !guards.has(Phase::Response) {
        return Ok(body);
    }
    let Some(caller) = &guards.caller else {
        return Ok(body);
    };
    // A body that is not JSON (a `text/plain` answer) is one text: shown whole, masked whole.
    let (mut value, plain) = match serde_json::from_slice::<Value>(&body) {
        Ok(value) => (value, false),
        Err(_) => match std::str::from_utf8(&body) {
            Ok(text) => (Value::String(text.to_string()), true),
            // Bytes that are not text (audio, an image) carry nothing a guardrail reads.
            Err(_) => return Ok(body),
        },
    };
    let mut changed = false;
    let mut decisions = Vec::new();
    let mut result = Ok(());
    for plugin in guards
        .plugins
        .iter()
        .filter(|p| p.has_phase(Phase::Response))
    {
        // An answer without text still goes to every plugin (and into the record).
        let (shown, map) = views::response_view(guards.endpoint, &guards.model, &value, caller);
        let started = Instant::now();
        let answer = plugin.instances.check_response(&shown).await;
        let elapsed = elapsed_us(started);
        match answer.and_then(|v| validate(v, &map)) {
            Ok((Outcome::Allow, verdict)) => {
                decisions.push(with_verdict(
                    decision(plugin, Phase::Response, "allow", elapsed),
                    &verdict,
                ));
            }
            Ok((Outcome::Rewrite(edits), verdict)) => {
                views::apply_edits(&mut value, &map, &edits);
                changed = true;
                decisions.push(with_verdict(
                    decision(plugin, Phase::Response, "rewrite", elapsed),
                    &verdict,
                ));
            }
            Ok((Outcome::Deny { code, reason }, verdict)) => {
                decisions.push(with_verdict(
                    decision(plugin, Phase::Response, "deny", elapsed),
                    &verdict,
                ));
                result = Err(denial(plugin, code, reason, &verdict.findings));
                break;
            }
            Err(failure) => {
                tracing::warn!(plugin = %plugin.name, phase = "response", error = %failure, "guardrail plugin failed");
                let outcome = match plugin.failure_mode {
                    FailureMode::Closed => "error",
                    FailureMode::Open => "fail_open",
                };
                decisions.push(with_failure(
                    decision(plugin, Phase::Response, outcome, elapsed),
                    plugin,
                    &failure,
                ));
                if plugin.failure_mode == FailureMode::Closed {
                    result = Err(failed(plugin, &failure));
                    break;
                }
            }
        }
    }
    recorder.add_decisions(decisions);
    result?;
    if !changed {
        return Ok(body);
    }
    if plain && let Value::String(text) = value {
        return Ok(Bytes::from(text));
    }
    serde_json::to_vec(&value)
        .map(Bytes::from)
        .map_err(|e| GatewayError::Routing(format!("masked answer cannot be re-encoded: {e}")))
}
