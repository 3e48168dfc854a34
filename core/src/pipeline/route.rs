//! Stage 5, route: the ordered list of deployments to try.
//!
//! A single model is its own only deployment. A model group's deployments are first filtered
//! (provider disabled or without credential: excluded and recorded), then ordered by the group's
//! Rhai script, or by priority with cooling-down deployments last when it has none. A failing
//! script either fails the request (`// @on_error fail`, 500 `routing_error`) or falls back to
//! the configured order (`// @on_error fallback`), as the script says.

use std::sync::Arc;

use serde_json::Value;

use super::Flow;
use crate::error::{AccessError, GatewayError};
use crate::health::HealthRegistry;
use crate::policy::facts::RequestFacts;
use crate::policy::rhai::{CandidateView, OnError, request_to_dynamic};
use crate::policy::{Credential, Model, ModelGroup, Target};
use crate::store::KeyRecord;

/// The deployments to try, in order, and how they were chosen.
#[derive(Debug)]
pub struct Route {
    /// Models to try, first to last.
    pub candidates: Vec<Arc<Model>>,
    /// The routing trace for the usage record.
    pub trace: Trace,
}

/// How a route was chosen: the usage record's `route` column. Written straight to JSON (no
/// intermediate `Value` map per request), in this key order: `target`, `kind`, `excluded`
/// (groups), `script`, `script_error`, `fallback`, `order`, `attempts`.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize)]
pub struct Trace {
    /// The model or group the request named.
    pub target: String,
    /// `direct` (a model) or `group`.
    pub kind: &'static str,
    /// A group's deployments left out, with the reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub excluded: Option<Vec<Excluded>>,
    /// The group's routing script.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    /// The script's error, when it failed and the group falls back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub script_error: Option<String>,
    /// Set when the configured order was used because the script failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<bool>,
    /// The models to try, first to last.
    pub order: Vec<String>,
    /// The upstream attempts, added when the call ends.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<Value>,
}

/// A deployment left out of a group's route.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Excluded {
    /// Its model.
    pub model: String,
    /// Why.
    pub reason: String,
}

fn unusable(model: &Model) -> Option<AccessError> {
    let provider = &model.provider;
    if !provider.enabled {
        return Some(AccessError::ProviderDisabled(provider.name.clone()));
    }
    if let Credential::Missing(_) = provider.credential {
        return Some(AccessError::ProviderCredentialMissing(
            provider.name.clone(),
        ));
    }
    None
}

/// Orders the deployments of `target`. Pure apart from reading health: used by the pipeline and
/// by `tollgate test`.
pub fn plan(
    target: &Target,
    facts: &RequestFacts,
    key: &KeyRecord,
    health: &HealthRegistry,
) -> Result<Route, GatewayError> {
    match target {
        Target::Model(model) => Ok(Route {
            candidates: vec![model.clone()],
            trace: Trace {
                target: model.name.clone(),
                kind: "direct",
                order: vec![model.name.clone()],
                ..Trace::default()
            },
        }),
        Target::Group(group) => plan_group(group, facts, key, health),
    }
}

fn plan_group(
    group: &ModelGroup,
    facts: &RequestFacts,
    key: &KeyRecord,
    health: &HealthRegistry,
) -> Result<Route, GatewayError> {
    let mut excluded = Vec::new();
    let mut first_problem = None;
    let usable: Vec<_> = group
        .deployments
        .iter()
        .filter(|d| match unusable(&d.model) {
            None => true,
            Some(problem) => {
                excluded.push(Excluded {
                    model: d.model.name.clone(),
                    reason: problem.to_string(),
                });
                first_problem.get_or_insert(problem);
                false
            }
        })
        .collect();
    if usable.is_empty() {
        return Err(first_problem.map_or_else(
            || GatewayError::Routing(format!("group '{}' has no deployments", group.name)),
            GatewayError::from,
        ));
    }
    let views: Vec<CandidateView> = usable
        .iter()
        .map(|d| {
            let h = health.get(&d.model.name);
            CandidateView {
                model: d.model.name.clone(),
                provider: d.model.provider.name.clone(),
                weight: d.weight,
                priority: d.priority,
                region: d.region.clone(),
                tags: d.tags.clone(),
                price_input: d.model.pricing.input_nanos_per_mtok as f64 / 1e9,
                price_output: d.model.pricing.output_nanos_per_mtok as f64 / 1e9,
                error_rate: h.error_rate(),
                latency_ms: h.latency_ms(),
                in_cooldown: h.in_cooldown(),
            }
        })
        .collect();
    // Configured order: priority (already sorted), deployments in cooldown last.
    let mut configured: Vec<usize> = (0..views.len()).collect();
    configured.sort_by_key(|i| views[*i].in_cooldown);

    let mut trace = Trace {
        target: group.name.clone(),
        kind: "group",
        excluded: Some(excluded),
        ..Trace::default()
    };
    let order = match &group.script {
        None => configured,
        Some(script) => {
            trace.script = Some(script.name.clone());
            let request = || request_to_dynamic(facts, &key.id, key.team.as_deref());
            match script.order_for(request, &views) {
                Ok(order) if !order.is_empty() => order,
                Ok(_) => {
                    return Err(GatewayError::Routing(format!(
                        "routing script '{}' returned no candidates for group '{}'",
                        script.name, group.name
                    )));
                }
                Err(error) => match script.on_error {
                    OnError::Fail => return Err(GatewayError::Routing(error)),
                    OnError::Fallback => {
                        trace.script_error = Some(error);
                        trace.fallback = Some(true);
                        configured
                    }
                },
            }
        }
    };
    let candidates: Vec<Arc<Model>> = order.iter().map(|i| usable[*i].model.clone()).collect();
    trace.order = candidates.iter().map(|m| m.name.clone()).collect();
    Ok(Route { candidates, trace })
}

/// Runs the route stage.
pub fn run(
    target: &Target,
    facts: &RequestFacts,
    key: &KeyRecord,
    health: &HealthRegistry,
) -> Flow<Route> {
    match plan(target, facts, key, health) {
        Ok(route) => Flow::Continue(route),
        Err(e) => Flow::Respond(e),
    }
}
