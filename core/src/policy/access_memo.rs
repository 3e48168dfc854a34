//! Remembering what the access rules decided while everything they read stays the same.
//!
//! CEL evaluation is deterministic: with the same bound variables a rule gives the same outcome
//! (allow, deny with its reason and status, or the same evaluation error). Under steady traffic
//! the same key calls the same model with the same few request fields again and again, and
//! binding and evaluating the rules was the largest item of the authorize stage (about 8% of the
//! governed gateway's CPU). So a snapshot remembers the rules' verdict per set of inputs:
//!
//! - the key record the request authenticated as (the key cache hands out a new record when a
//!   key changes, so a changed team or grant is a new input),
//! - the target (the model or group of this snapshot; a reload builds a new snapshot and with it
//!   an empty memo),
//! - the value of every `request` field the rules select.
//!
//! Rules that read `now` or `budget` (they change without the request changing), or the
//! `headers` or `metadata` of the request (large, and rarely equal twice), are evaluated every
//! time: a snapshot with such a rule remembers nothing. An entry holds its key record and target,
//! so their addresses, which identify them in the memo, cannot be reused while it exists.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::Target;
use super::cel::{REQUEST_FIELDS, Uses};
use super::facts::RequestFacts;
use crate::error::AccessError;
use crate::pipeline::decision::Decision;
use crate::store::KeyRecord;

/// Verdicts one snapshot remembers at most; when full it starts over.
const KEPT: usize = 4096;

/// `request` fields a rule may select without turning the memo off: every other field's value
/// keys it.
const UNKEYED_FIELDS: [&str; 2] = ["headers", "metadata"];

/// What the model-deciding rules concluded for one set of inputs.
#[derive(Debug)]
pub struct RulesVerdict {
    /// One trail entry per rule, in order.
    pub decisions: Vec<Decision>,
    /// The first enforced rule that did not allow, if any.
    pub denial: Option<AccessError>,
}

/// One snapshot's remembered verdicts.
pub struct AccessMemo {
    /// The `request` fields the rules select (a mask over [`REQUEST_FIELDS`]); `None` when the
    /// rules read something the memo cannot key on.
    fields: Option<u16>,
    kept: RwLock<HashMap<Inputs, Kept>>,
    hits: AtomicU64,
}

impl std::fmt::Debug for AccessMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessMemo")
            .field("fields", &self.fields)
            .field("hits", &self.hits.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

#[derive(PartialEq, Eq, Hash)]
struct Inputs {
    key: usize,
    target: usize,
    request: Vec<Scalar>,
}

#[derive(PartialEq, Eq, Hash)]
enum Scalar {
    Null,
    Bool(bool),
    Int(i64),
    /// A finite float's bits (non-finite ones bind as null, as in the `request` variable).
    Float(u64),
    Text(Box<str>),
    Ip(IpAddr),
}

struct Kept {
    /// Held so the record's address is not reused while this entry names it.
    _key: Arc<KeyRecord>,
    /// The same for the target.
    _target: Target,
    verdict: Arc<RulesVerdict>,
}

impl AccessMemo {
    /// The memo for model-deciding rules that read `uses` (rules reading `mcp` decide MCP
    /// requests only and are not part of a model call's verdict).
    pub fn new(uses: Uses) -> Self {
        let keyed = REQUEST_FIELDS
            .iter()
            .enumerate()
            .filter(|(_, name)| !UNKEYED_FIELDS.contains(name))
            .fold(0u16, |mask, (i, _)| mask | (1 << i));
        let fields = if uses.request { uses.request_fields } else { 0 };
        let usable = !uses.now && !uses.budget && fields & !keyed == 0;
        Self {
            fields: usable.then_some(fields),
            kept: RwLock::new(HashMap::new()),
            hits: AtomicU64::new(0),
        }
    }

    /// Whether verdicts are remembered at all.
    pub fn enabled(&self) -> bool {
        self.fields.is_some()
    }

    /// How many decisions were answered from the memo.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// The remembered verdict for these inputs, or the one `decide` gives (remembered).
    pub fn verdict(
        &self,
        key: &Arc<KeyRecord>,
        target: &Target,
        facts: &RequestFacts,
        decide: impl FnOnce() -> RulesVerdict,
    ) -> Arc<RulesVerdict> {
        let Some(fields) = self.fields else {
            return Arc::new(decide());
        };
        let inputs = Inputs {
            key: Arc::as_ptr(key) as usize,
            target: target_address(target),
            request: request_scalars(facts, fields),
        };
        if let Ok(kept) = self.kept.read()
            && let Some(entry) = kept.get(&inputs)
        {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return entry.verdict.clone();
        }
        let verdict = Arc::new(decide());
        if let Ok(mut kept) = self.kept.write() {
            if kept.len() >= KEPT {
                kept.clear();
            }
            kept.insert(
                inputs,
                Kept {
                    _key: key.clone(),
                    _target: target.clone(),
                    verdict: verdict.clone(),
                },
            );
        }
        verdict
    }
}

fn target_address(target: &Target) -> usize {
    match target {
        Target::Model(m) => Arc::as_ptr(m) as usize,
        Target::Group(g) => Arc::as_ptr(g) as usize,
    }
}

/// The selected fields' values, in [`REQUEST_FIELDS`] order, normalised as the `request`
/// variable binds them.
fn request_scalars(facts: &RequestFacts, fields: u16) -> Vec<Scalar> {
    let text = |s: &str| Scalar::Text(s.into());
    REQUEST_FIELDS
        .iter()
        .enumerate()
        .filter(|(i, _)| fields & (1 << i) != 0)
        .map(|(_, name)| match *name {
            "endpoint" => text(&facts.endpoint),
            "path" => text(&facts.path),
            "model" => text(&facts.model),
            "stream" => Scalar::Bool(facts.stream),
            "max_tokens" => facts.max_tokens.map_or(Scalar::Null, Scalar::Int),
            "estimated_input_tokens" => Scalar::Int(facts.estimated_input_tokens),
            "temperature" => facts
                .temperature
                .filter(|t| t.is_finite())
                .map_or(Scalar::Null, |t| Scalar::Float(t.to_bits())),
            "tools" => Scalar::Bool(facts.has_tools),
            "client_ip" => facts.client_ip.map_or(Scalar::Null, Scalar::Ip),
            // Unreachable: `new` turns the memo off for any other field.
            _ => Scalar::Null,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uses(request_fields: u16) -> Uses {
        Uses {
            key: true,
            request: request_fields != 0,
            model: true,
            request_fields,
            ..Uses::default()
        }
    }

    fn mask(names: &[&str]) -> u16 {
        names.iter().fold(0, |m, n| {
            m | 1 << REQUEST_FIELDS.iter().position(|f| f == n).expect("field")
        })
    }

    #[test]
    fn rules_reading_time_budget_headers_or_metadata_are_not_remembered() {
        assert!(AccessMemo::new(uses(mask(&["max_tokens", "client_ip"]))).enabled());
        assert!(AccessMemo::new(uses(0)).enabled());
        assert!(!AccessMemo::new(uses(mask(&["headers"]))).enabled());
        assert!(!AccessMemo::new(uses(mask(&["max_tokens", "metadata"]))).enabled());
        assert!(
            !AccessMemo::new(Uses {
                now: true,
                ..uses(0)
            })
            .enabled()
        );
        assert!(
            !AccessMemo::new(Uses {
                budget: true,
                ..uses(0)
            })
            .enabled()
        );
        assert!(
            !AccessMemo::new(uses(crate::policy::cel::ALL_REQUEST_FIELDS)).enabled(),
            "a rule using `request` whole may read its headers"
        );
    }
}
