//! Guardrail verdicts: validation against the parts shown, denials, failures and the decision
//! trail entries every phase records.

use serde_json::{Map, Value, json};

use crate::error::{GatewayError, GuardrailError};
use crate::plugins::host::{Failure, wit};
use crate::plugins::views::{self, TextMap};
use crate::plugins::{Phase, Plugin, metrics};

/// One plugin's answer after validation.
pub(super) enum Outcome {
    Allow,
    Rewrite(Vec<wit::Edit>),
    Deny { code: String, reason: String },
}

/// Validates a verdict against the parts shown.
pub(super) fn validate(
    verdict: wit::Verdict,
    map: &TextMap,
) -> Result<(Outcome, wit::Verdict), Failure> {
    let outcome = match &verdict.action {
        wit::Action::Allow => Outcome::Allow,
        wit::Action::Rewrite(edits) => {
            views::check_edits(map, edits).map_err(Failure::Invalid)?;
            Outcome::Rewrite(edits.clone())
        }
        wit::Action::Deny(denial) => {
            let code = if denial.code.is_empty() {
                "safety_blocked".to_string()
            } else if denial.code.len() <= 64
                && denial.code.starts_with(|c: char| c.is_ascii_lowercase())
                && denial
                    .code
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                denial.code.clone()
            } else {
                return Err(Failure::Invalid(
                    "deny code must match [a-z][a-z0-9_]{0,63}".into(),
                ));
            };
            let reason: String = denial.reason.chars().take(300).collect();
            Outcome::Deny { code, reason }
        }
    };
    if verdict.findings.len() > 256 {
        return Err(Failure::Invalid("more than 256 findings".into()));
    }
    Ok((outcome, verdict))
}

pub(super) fn findings_json(findings: &[wit::Finding]) -> Value {
    let mut map = Map::new();
    for f in findings {
        let category: String = f.category.chars().take(64).collect();
        let entry = map.entry(category).or_insert(Value::from(0u64));
        *entry = Value::from(entry.as_u64().unwrap_or(0) + u64::from(f.count));
    }
    Value::Object(map)
}

pub(super) fn categories(findings: &[wit::Finding]) -> Vec<String> {
    let mut names: Vec<String> = findings
        .iter()
        .map(|f| f.category.chars().take(64).collect())
        .collect();
    names.sort();
    names.dedup();
    names
}

pub(super) fn denial(
    plugin: &Plugin,
    code: String,
    reason: String,
    findings: &[wit::Finding],
) -> GatewayError {
    GatewayError::Guardrail(GuardrailError {
        plugin: plugin.name.clone(),
        code,
        categories: categories(findings),
        reason,
    })
}

pub(super) fn failed(plugin: &Plugin, failure: &Failure) -> GatewayError {
    GatewayError::Guardrail(GuardrailError {
        plugin: plugin.name.clone(),
        code: "plugin_blocked".into(),
        categories: Vec::new(),
        reason: format!("the plugin failed ({}) and fails closed", failure.kind()),
    })
}

pub(super) fn decision(
    plugin: &Plugin,
    phase: Phase,
    outcome: &'static str,
    elapsed: i64,
) -> Value {
    metrics::record(&plugin.name, phase.as_str(), outcome, 1, elapsed);
    json!({
        "stage": "inspect", "plugin": plugin.name, "phase": phase.as_str(),
        "outcome": outcome, "elapsed_us": elapsed,
    })
}

pub(super) fn with_verdict(mut entry: Value, verdict: &wit::Verdict) -> Value {
    if !verdict.findings.is_empty() {
        entry["findings"] = findings_json(&verdict.findings);
    }
    if let Some(score) = verdict.score.filter(|s| s.is_finite()) {
        entry["score"] = json!(score);
    }
    entry
}

pub(super) fn with_failure(mut entry: Value, plugin: &Plugin, failure: &Failure) -> Value {
    metrics::failure(&plugin.name, failure.kind());
    entry["failure"] = Value::from(failure.kind());
    entry["failure_mode"] = Value::from(plugin.failure_mode.as_str());
    entry
}
