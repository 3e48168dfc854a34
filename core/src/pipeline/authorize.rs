//! Stage 2, authorize: decode the body, resolve the model, check grants, provider state and
//! every CEL access rule.
//!
//! Order: body within the size limit → JSON object → `model` → the model (or model group)
//! exists → the key has Model Access → the provider is enabled and has a credential (for a
//! group, the route stage drops deployments that fail these) → the access rules, in file-name
//! order. The grant is checked before provider state so a key without access learns nothing
//! about providers. Every rule runs and is recorded; the first enforced deny (or evaluation
//! error: fail closed) decides. Shadow rules are recorded as `would_deny`, never enforced.

use std::net::IpAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue};
use bytes::Bytes;
use serde_json::{Map, Value};

use super::decision::Decision;
use super::{Endpoint, Flow, Recorder};
use crate::error::{AccessError, GatewayError, RequestError};
use crate::family::{Api, ServeMode};
use crate::policy::access_memo::RulesVerdict;
use crate::policy::cel::{
    Bindings, RuleMode, RuleOutcome, json_to_cel, key_to_cel, request_fields_to_cel, target_to_cel,
};
use crate::policy::facts::RequestFacts;
use crate::policy::{Credential, Snapshot, Target};
use crate::spend::Scope;
use crate::store::KeyRecord;

/// A request that passed authorization, ready for routing.
#[derive(Debug)]
pub struct Authorized {
    /// What the model name resolved to.
    pub target: Target,
    /// The decoded body; `model` is rewritten per attempt.
    body: Map<String, Value>,
    /// The client's bytes of `body`, while the gateway changed nothing in it but `model`
    /// ([`Authorized::edit_body`]): an attempt's upstream body is spliced from them.
    raw: Option<Bytes>,
    /// What policies saw.
    pub facts: RequestFacts,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// Whether the client itself asked for the usage chunk of a chat stream.
    pub client_wants_usage: bool,
    /// The request's snapshot limit on buffered provider answers.
    pub max_response_bytes: usize,
    /// The request's snapshot `[upstream]` attempts, backoff and cooldowns.
    pub retry: crate::upstream::retry::RetryPolicy,
    /// Guardrails bound for the answer (set by the inspect stage).
    pub guards: super::inspect::Guards,
    /// The endpoint the client called.
    pub endpoint: Endpoint,
    /// Client protocol headers forwarded to a same-family provider (`anthropic-version`,
    /// `anthropic-beta`).
    pub forward: Vec<(&'static str, HeaderValue)>,
    /// A Gemini stream the client asked for as SSE (`?alt=sse`) rather than a JSON array.
    pub gemini_sse: bool,
}

impl Authorized {
    /// The decoded body.
    pub fn body(&self) -> &Map<String, Value> {
        &self.body
    }

    /// Changes the body with `edit`, which says whether it changed anything; from the first
    /// change on, attempts re-encode the body instead of splicing the client's bytes.
    pub fn edit_body(&mut self, edit: impl FnOnce(&mut Map<String, Value>) -> bool) -> bool {
        let changed = edit(&mut self.body);
        if changed {
            self.raw = None;
        }
        changed
    }

    /// The body one attempt sends: `model` set to `upstream` (Gemini: removed, the URL names
    /// it). The client's bytes with the model spliced in when they stand for the decoded body
    /// ([`super::splice`]), the body re-encoded otherwise.
    pub fn upstream_body(&mut self, upstream: &str, api: Api) -> Result<Bytes, RequestError> {
        if api != Api::Gemini
            && let Some(raw) = &self.raw
            && let Some(span) = super::splice::model_span(raw)
        {
            let spliced = Bytes::from(super::splice::with_model(raw, span, upstream));
            // The decoded body says what the re-encoding would have sent (translation and
            // later attempts read it).
            self.body
                .insert("model".into(), Value::String(upstream.to_string()));
            return Ok(spliced);
        }
        upstream_body(&mut self.body, upstream, api)
    }

    /// The body as the budget estimate reads it: Gemini's prompt and output bound live in
    /// other fields than OpenAI's and Anthropic's.
    pub fn budget_view(&self) -> std::borrow::Cow<'_, Map<String, Value>> {
        if self.endpoint.api() != Api::Gemini {
            return std::borrow::Cow::Borrowed(&self.body);
        }
        let mut view = Map::new();
        for (from, to) in [
            ("contents", "messages"),
            ("systemInstruction", "system"),
            ("tools", "tools"),
            ("content", "input"),
            ("requests", "input"),
        ] {
            if let Some(v) = self.body.get(from) {
                view.insert(to.into(), v.clone());
            }
        }
        if let Some(max) = self
            .body
            .get("generationConfig")
            .and_then(|c| c.get("maxOutputTokens"))
        {
            view.insert("max_tokens".into(), max.clone());
        }
        std::borrow::Cow::Owned(view)
    }
}

/// The outcome of the access decision, with its trail.
#[derive(Debug)]
pub struct AccessVerdict {
    /// `Ok` to go on, or the denial.
    pub result: Result<(), GatewayError>,
    /// One entry per check and rule.
    pub decisions: Vec<Decision>,
}

/// `{"stage": "authorize", "check": "model_access", "outcome": "allow"}`.
#[derive(serde::Serialize)]
struct AccessCheck {
    stage: &'static str,
    check: &'static str,
    outcome: &'static str,
}

/// The trail entry of one access rule.
#[derive(serde::Serialize)]
struct RuleDecision<'a> {
    stage: &'static str,
    rule: &'a str,
    mode: &'static str,
    outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

/// Decides access for `key` calling `target` with `facts`: the grant, the provider state of a
/// single model, then every access rule. Pure: used by the pipeline and by `tollgate test`.
///
/// `spend` is the `budget` variable (remaining budget and quota state); callers build it only
/// when a rule uses `budget` ([`crate::spend::ledger::Ledger::spend_view`]).
pub fn decide_access(
    snapshot: &Snapshot,
    key: &Arc<KeyRecord>,
    target: &Target,
    facts: &RequestFacts,
    spend: Option<&serde_json::Value>,
) -> AccessVerdict {
    let mut decisions = Vec::new();
    if !key.models.allows(target.name()) {
        return AccessVerdict {
            result: Err(AccessError::ModelNotAllowed(target.name().to_string()).into()),
            decisions,
        };
    }
    if let Target::Model(model) = target {
        let provider = &model.provider;
        if !provider.enabled {
            return AccessVerdict {
                result: Err(AccessError::ProviderDisabled(provider.name.clone()).into()),
                decisions,
            };
        }
        if let Credential::Missing(_) = provider.credential {
            return AccessVerdict {
                result: Err(AccessError::ProviderCredentialMissing(provider.name.clone()).into()),
                decisions,
            };
        }
    }
    decisions.push(Decision::of(&AccessCheck {
        stage: "authorize",
        check: "model_access",
        outcome: "allow",
    }));
    if snapshot.access_rules.is_empty() {
        return AccessVerdict {
            result: Ok(()),
            decisions,
        };
    }
    let verdict = snapshot.access_memo.verdict(key, target, facts, || {
        evaluate_rules(snapshot, key, target, facts, spend)
    });
    decisions.extend(verdict.decisions.iter().cloned());
    AccessVerdict {
        result: verdict.denial.clone().map_or(Ok(()), |d| Err(d.into())),
        decisions,
    }
}

/// Binds the variables the rules read and evaluates every rule that decides model calls.
fn evaluate_rules(
    snapshot: &Snapshot,
    key: &Arc<KeyRecord>,
    target: &Target,
    facts: &RequestFacts,
    spend: Option<&serde_json::Value>,
) -> RulesVerdict {
    let uses = snapshot.access_uses;
    let bindings = Bindings {
        shared_key: uses.key.then(|| key_to_cel(key)),
        shared_model: uses.model.then(|| target_to_cel(target)),
        key: None,
        request: uses
            .request
            .then(|| request_fields_to_cel(facts, uses.request_fields)),
        model: None,
        now: uses.now.then_some(facts.now),
        budget: uses
            .budget
            .then(|| json_to_cel(spend.unwrap_or(&serde_json::Value::Null))),
        mcp: None,
    };
    let ctx = bindings.context();
    let mut decisions = Vec::new();
    let mut denial = None;
    // Rules reading `mcp` decide MCP requests only.
    for rule in snapshot
        .access_rules
        .iter()
        .filter(|r| r.uses.applies_to_models())
    {
        let outcome = rule.evaluate(&ctx);
        let shadow = rule.mode == RuleMode::Shadow;
        let (label, reason, status) = match &outcome {
            RuleOutcome::Allow => ("allow", None, 403),
            RuleOutcome::Deny { reason, status } => (
                if shadow { "would_deny" } else { "deny" },
                reason.clone(),
                *status,
            ),
            RuleOutcome::Error(e) => (
                if shadow { "would_deny" } else { "error" },
                Some(format!("evaluation failed: {e}")),
                403,
            ),
        };
        decisions.push(Decision::of(&RuleDecision {
            stage: "authorize",
            rule: &rule.name,
            mode: if shadow { "shadow" } else { "enforce" },
            outcome: label,
            reason: reason.as_deref(),
        }));
        if !shadow && outcome != RuleOutcome::Allow && denial.is_none() {
            denial = Some(AccessError::PolicyDenied {
                rule: rule.name.clone(),
                reason,
                status,
            });
        }
    }
    RulesVerdict { decisions, denial }
}

/// Reads the body, enforcing `limit`.
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, RequestError> {
    match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => Ok(bytes),
        Err(e) => {
            let inner = e.into_inner();
            let too_large =
                std::iter::successors(Some(&*inner as &(dyn std::error::Error + 'static)), |e| {
                    e.source()
                })
                .any(|e| e.is::<http_body_util::LengthLimitError>());
            if too_large {
                Err(RequestError::TooLarge { limit })
            } else {
                Err(RequestError::UnreadableBody(inner.to_string()))
            }
        }
    }
}

/// Parses the body into a JSON object, reporting the position of a syntax error.
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, RequestError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(RequestError::Invalid(
            "request body must be a JSON object".into(),
        )),
        Err(e) => Err(RequestError::Invalid(format!(
            "request body is not valid JSON: {e}"
        ))),
    }
}

fn optional_bool(body: &Map<String, Value>, field: &str) -> Result<Option<bool>, RequestError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(RequestError::Invalid(format!(
            "'{field}' must be a boolean"
        ))),
    }
}

/// What authorize needs from the inbound request.
pub struct Input<'a> {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// The authenticated key.
    pub key: &'a Arc<KeyRecord>,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// Raw query string.
    pub query: Option<&'a str>,
    /// The model named by the path (Gemini), which wins over the body's.
    pub path_model: Option<String>,
    /// Peer address.
    pub client_ip: Option<IpAddr>,
    /// The unread body.
    pub body: Body,
    /// Budgets and quotas (for the `budget` variable of access rules).
    pub ledger: &'a crate::spend::ledger::Ledger,
}

/// Authorizes the request.
pub async fn run(
    snapshot: &Snapshot,
    input: Input<'_>,
    recorder: &mut Recorder,
) -> Flow<Authorized> {
    match decide(snapshot, input, recorder).await {
        Ok(authorized) => Flow::Continue(authorized),
        Err(error) => Flow::Respond(error),
    }
}

async fn decide(
    snapshot: &Snapshot,
    input: Input<'_>,
    recorder: &mut Recorder,
) -> Result<Authorized, GatewayError> {
    // Network and payload limits of the key, its team and the organization.
    let mut max_body = snapshot.limits.max_body_bytes;
    for limit in snapshot.limits_by_scope.iter().filter(|l| match l.scope {
        Scope::Organization => true,
        Scope::Team => input.key.team.as_deref() == Some(l.subject.as_str()),
        Scope::Key => input.key.id == l.subject,
        Scope::User | Scope::Model => false,
    }) {
        if !limit.ip_allowed(input.client_ip) {
            // 403, not 429: waiting does not help, and SDKs retry a 429.
            return Err(GatewayError::Access(AccessError::IpNotAllowed {
                scope: limit.scope.as_str(),
                subject: limit.subject.clone(),
            }));
        }
        if let Some(bytes) = limit.max_request_bytes {
            max_body = max_body.min(bytes);
        }
    }
    let bytes = read_body(input.body, max_body).await?;
    let mut body = parse_object(&bytes)?;
    let requested = match input
        .path_model
        .as_ref()
        .map(|m| Value::String(m.clone()))
        .as_ref()
        .or(body.get("model"))
    {
        Some(Value::String(name)) if !name.is_empty() => name.clone(),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            return Err(RequestError::Invalid("'model' is required".into()).into());
        }
        Some(_) => return Err(RequestError::Invalid("'model' must be a string".into()).into()),
    };
    recorder.set_requested_model(&requested);
    let stream = input.endpoint.streams_by_path()
        || (input.endpoint.api() != Api::Gemini
            && optional_bool(&body, "stream")?.unwrap_or(false));
    recorder.set_stream(stream);
    let client_wants_usage = match body.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(options)) => optional_bool(options, "include_usage")?.unwrap_or(false),
        Some(_) => {
            return Err(RequestError::Invalid("'stream_options' must be an object".into()).into());
        }
    } || optional_bool(&body, "include_usage")?.unwrap_or(false);

    let target = snapshot
        .target(&requested)
        .ok_or_else(|| AccessError::ModelNotFound(requested.clone()))?;
    recorder.set_model_known();
    let facts = RequestFacts::from_body(
        input.endpoint.api().as_str(),
        input.endpoint.path(),
        &requested,
        &body,
        bytes.len(),
        headers_read_by_policies(snapshot, &target).then_some(input.headers),
        input.client_ip,
    );
    let spend = if snapshot.access_uses.budget {
        let view = input
            .ledger
            .spend_view(snapshot, input.key, &target)
            .await
            .map_err(|e| {
                GatewayError::Unavailable(crate::error::UnavailableError {
                    code: "budget_unavailable",
                    what: "the budget store",
                    detail: e.to_string(),
                })
            })?;
        Some(view)
    } else {
        None
    };
    let verdict = decide_access(snapshot, input.key, &target, &facts, spend.as_ref());
    recorder.add_decisions(verdict.decisions);
    verdict.result?;
    check_family(input.endpoint, &target)?;

    let openai_stream = matches!(
        input.endpoint.upstream_path(),
        "/chat/completions" | "/completions" | "/v1/chat/completions" | "/v1/completions"
    );
    let mut changed = false;
    if stream && openai_stream {
        // Always ask for usage so streams can be billed; the relay hides the usage chunk from
        // clients that did not ask for it.
        let options = body
            .entry("stream_options")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(options) = options
            && options.insert("include_usage".into(), Value::Bool(true)) != Some(Value::Bool(true))
        {
            changed = true;
        }
    }
    // The unified endpoint's top-level `include_usage` is not an OpenAI field.
    changed |= body.remove("include_usage").is_some();
    Ok(Authorized {
        target,
        body,
        // Splicing stands for the decoded body only while nothing but `model` changed.
        raw: (!changed).then_some(bytes),
        facts,
        stream,
        client_wants_usage,
        max_response_bytes: snapshot.limits.max_response_bytes,
        retry: snapshot.retry.clone(),
        guards: super::inspect::Guards::default(),
        endpoint: input.endpoint,
        forward: forwarded_headers(input.endpoint, input.headers),
        gemini_sse: input
            .query
            .is_some_and(|q| q.split('&').any(|pair| pair == "alt=sse")),
    })
}

/// The endpoint family must match the model's provider, unless the model (or group) opted in
/// to translation: 400 `provider_not_allowed` otherwise. A group needs one servable deployment;
/// the call stage skips the others.
fn check_family(endpoint: Endpoint, target: &Target) -> Result<(), GatewayError> {
    let refused = |model: &crate::policy::Model, opted_in: bool| {
        endpoint.serve_mode(model.provider.family, opted_in || model.translate)
            == ServeMode::Refused
    };
    let (name, family) = match target {
        Target::Model(model) if refused(model, false) => {
            (model.name.clone(), model.provider.family.as_str())
        }
        Target::Group(group)
            if group
                .deployments
                .iter()
                .all(|d| refused(&d.model, group.translate)) =>
        {
            let families: Vec<&str> = group
                .deployments
                .iter()
                .map(|d| d.model.provider.family.as_str())
                .collect();
            let family = families.first().copied().unwrap_or("none");
            (group.name.clone(), family)
        }
        _ => return Ok(()),
    };
    Err(AccessError::ProviderNotAllowed {
        model: name,
        family: family.to_string(),
    }
    .into())
}

/// Anthropic's protocol headers travel to an Anthropic provider.
fn forwarded_headers(endpoint: Endpoint, headers: &HeaderMap) -> Vec<(&'static str, HeaderValue)> {
    if endpoint.api() != Api::Anthropic {
        return Vec::new();
    }
    ["anthropic-version", "anthropic-beta"]
        .into_iter()
        .filter_map(|name| Some((name, headers.get(name)?.clone())))
        .collect()
}

/// Whether an access rule or the target's routing script can read `request.headers`.
fn headers_read_by_policies(snapshot: &Snapshot, target: &Target) -> bool {
    snapshot.access_uses.request || matches!(target, Target::Group(g) if g.script.is_some())
}

/// The body the upstream receives for one attempt: the client's, with `model` set to `upstream`
/// (Gemini names the model in the URL: its body carries none).
pub fn upstream_body(
    body: &mut Map<String, Value>,
    upstream: &str,
    api: Api,
) -> Result<Bytes, RequestError> {
    if api == Api::Gemini {
        body.remove("model");
        // batchEmbedContents names the model in each request, as `models/{id}`.
        if let Some(Value::Array(requests)) = body.get_mut("requests") {
            for request in requests.iter_mut().filter_map(Value::as_object_mut) {
                request.insert("model".into(), Value::String(format!("models/{upstream}")));
            }
        }
    } else {
        body.insert("model".into(), Value::String(upstream.to_string()));
    }
    serde_json::to_vec(body)
        .map(Bytes::from)
        .map_err(|e| RequestError::Invalid(format!("request cannot be re-encoded: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(team: &str) -> Arc<KeyRecord> {
        Arc::new(KeyRecord::for_tests("key_memo", team))
    }

    fn facts(max_tokens: u32) -> RequestFacts {
        let body = serde_json::json!({"model": "m", "max_tokens": max_tokens});
        RequestFacts::from_body(
            "openai",
            "/v1/chat/completions",
            "m",
            body.as_object().expect("object"),
            100,
            None,
            Some("127.0.0.1".parse().expect("ip")),
        )
    }

    fn policy_dir(rules: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join(crate::policy::load::GATEWAY_FILE),
            "[providers.p]\nfamily = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\ncredential = { env = \"PATH\" }\n\n[models.m]\nprovider = \"p\"\ntags = [\"premium\"]\n",
        )
        .expect("gateway.toml");
        std::fs::create_dir(dir.path().join("access")).expect("access dir");
        for (name, source) in rules {
            std::fs::write(
                dir.path().join("access").join(format!("{name}.cel")),
                source,
            )
            .expect("rule");
        }
        dir
    }

    /// The trail text and the denied rule of a verdict.
    fn summary(verdict: &AccessVerdict) -> (Vec<String>, Option<String>) {
        let trail = verdict
            .decisions
            .iter()
            .map(|d| d.json().to_string())
            .collect();
        let denied = verdict.result.as_ref().err().map(ToString::to_string);
        (trail, denied)
    }

    #[test]
    fn remembered_access_verdicts_equal_fresh_ones_and_follow_their_inputs() {
        let dir = policy_dir(&[
            (
                "a-max-tokens",
                "request.max_tokens == null || request.max_tokens <= 100",
            ),
            (
                "b-loopback",
                "request.client_ip == null || cidr_contains('127.0.0.0/8', request.client_ip)",
            ),
            (
                "c-premium",
                "!('premium' in model.tags) || key.team == 'research'",
            ),
            ("d-watch", "// @mode shadow\nkey.team == 'nobody'"),
        ]);
        let snapshot = crate::policy::load::load_dir(dir.path(), 1, None).expect("loads");
        assert!(snapshot.access_memo.enabled());
        let target = snapshot.target("m").expect("model");
        // What evaluating every rule gives, without the memo.
        let fresh = |key: &Arc<KeyRecord>, facts: &RequestFacts| {
            let mut decisions = vec![Decision::of(&AccessCheck {
                stage: "authorize",
                check: "model_access",
                outcome: "allow",
            })];
            let verdict = evaluate_rules(&snapshot, key, &target, facts, None);
            decisions.extend(verdict.decisions);
            summary(&AccessVerdict {
                result: verdict.denial.map_or(Ok(()), |d| Err(d.into())),
                decisions,
            })
        };
        let platform = key("platform");
        let decide = |key: &Arc<KeyRecord>, facts: &RequestFacts| {
            summary(&decide_access(&snapshot, key, &target, facts, None))
        };

        let first = decide(&platform, &facts(64));
        assert_eq!(snapshot.access_memo.hits(), 0);
        assert!(
            first.1.as_deref().is_some_and(|d| d.contains("c-premium")),
            "{first:?}"
        );
        assert!(
            first.0.iter().any(|d| d.contains("would_deny")),
            "{first:?}"
        );
        assert_eq!(decide(&platform, &facts(64)), first);
        assert_eq!(snapshot.access_memo.hits(), 1);
        assert_eq!(first, fresh(&platform, &facts(64)));

        // Another value of a selected field is another input.
        let large = decide(&platform, &facts(500));
        assert_eq!(snapshot.access_memo.hits(), 1);
        assert!(
            large
                .1
                .as_deref()
                .is_some_and(|d| d.contains("a-max-tokens")),
            "{large:?}"
        );
        assert_eq!(large, fresh(&platform, &facts(500)));

        // The key changed (the key cache hands out a new record): its new team is seen.
        let research = key("research");
        let allowed = decide(&research, &facts(64));
        assert_eq!(allowed.1, None, "{allowed:?}");
        assert_eq!(allowed, fresh(&research, &facts(64)));
        assert_eq!(decide(&research, &facts(64)), allowed);
        assert_eq!(snapshot.access_memo.hits(), 2);
        // The old record is still answered as before.
        assert_eq!(decide(&platform, &facts(64)), first);
        assert_eq!(snapshot.access_memo.hits(), 3);
    }

    #[test]
    fn rules_reading_the_clock_are_evaluated_every_time() {
        let dir = policy_dir(&[(
            "hours",
            "time_between(now, '00:00', '23:59', 'UTC') || true",
        )]);
        let snapshot = crate::policy::load::load_dir(dir.path(), 1, None).expect("loads");
        assert!(!snapshot.access_memo.enabled());
        let target = snapshot.target("m").expect("model");
        for _ in 0..3 {
            let verdict = decide_access(&snapshot, &key("platform"), &target, &facts(1), None);
            assert!(verdict.result.is_ok());
        }
        assert_eq!(snapshot.access_memo.hits(), 0);
    }

    fn authorized(snapshot: &Snapshot, raw: &str) -> Authorized {
        let bytes = Bytes::from(raw.to_string());
        Authorized {
            target: snapshot.target("m").expect("model"),
            body: parse_object(&bytes).expect("object"),
            raw: Some(bytes),
            facts: facts(1),
            stream: false,
            client_wants_usage: false,
            max_response_bytes: 1 << 20,
            retry: snapshot.retry.clone(),
            guards: Default::default(),
            endpoint: Endpoint::ChatCompletions,
            forward: Vec::new(),
            gemini_sse: false,
        }
    }

    #[test]
    fn upstream_bodies_are_the_clients_bytes_until_the_gateway_changes_the_body() {
        let dir = policy_dir(&[]);
        let snapshot = crate::policy::load::load_dir(dir.path(), 1, None).expect("loads");
        let raw = r#"{ "model": "m",
  "messages": [{"role": "user", "content": "caf\u00e9 \"q\""}], "max_tokens": 64 }"#;
        let mut request = authorized(&snapshot, raw);
        let sent = request.upstream_body("up-1", Api::OpenAi).expect("body");
        assert_eq!(sent, raw.replace("\"m\"", "\"up-1\""));
        assert_eq!(request.body()["model"], "up-1");
        // An edit that changed nothing keeps the bytes; a failover attempt splices again.
        assert!(!request.edit_body(|_| false));
        let again = request.upstream_body("up-2", Api::OpenAi).expect("body");
        assert_eq!(again, raw.replace("\"m\"", "\"up-2\""));
        // A real change (a capped output) is re-encoded from the decoded body from then on.
        assert!(request.edit_body(|body| {
            crate::spend::cap::inject_output_cap(crate::spend::cap::CapFamily::OpenAiChat, body, 32)
        }));
        let capped = request.upstream_body("up-3", Api::OpenAi).expect("body");
        let value: Value = serde_json::from_slice(&capped).expect("json");
        assert_eq!(value["max_tokens"], 32);
        assert_eq!(value["model"], "up-3");
        assert_eq!(value["messages"][0]["content"], "caf\u{e9} \"q\"");
        // Gemini names the model in the URL: the body carries none.
        let mut gemini = authorized(&snapshot, raw);
        let sent = gemini.upstream_body("up-1", Api::Gemini).expect("body");
        let value: Value = serde_json::from_slice(&sent).expect("json");
        assert!(value.get("model").is_none(), "{value}");
    }

    #[test]
    fn a_body_repeating_a_key_reaches_the_provider_as_the_gateway_read_it() {
        let dir = policy_dir(&[]);
        let snapshot = crate::policy::load::load_dir(dir.path(), 1, None).expect("loads");
        // Guardrails and holds read the last of two equal keys; a provider keeping the first
        // must not see another prompt or limit, so such a body is re-encoded (one of each).
        for raw in [
            r#"{"model":"m","messages":[{"role":"user","content":"unseen","content":"checked"}]}"#,
            r#"{"model":"m","max_tokens":100000,"max_tokens":16,"messages":[]}"#,
        ] {
            let mut request = authorized(&snapshot, raw);
            let sent = request.upstream_body("up", Api::OpenAi).expect("body");
            let text = std::str::from_utf8(&sent).expect("utf-8");
            assert!(
                !text.contains("unseen") && !text.contains("100000"),
                "{text}"
            );
            assert_eq!(sent, serde_json::to_vec(request.body()).expect("encodes"));
        }
    }

    #[test]
    fn syntax_errors_carry_a_position() {
        let err = parse_object(b"{\"model\": \"a\",\n}").expect_err("invalid");
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn non_objects_are_invalid() {
        assert!(parse_object(b"[1]").is_err());
        assert!(parse_object(b"{}").is_ok());
    }

    #[tokio::test]
    async fn oversized_bodies_are_too_large() {
        let err = read_body(Body::from(vec![b'x'; 100]), 10)
            .await
            .expect_err("too large");
        assert_eq!(err, RequestError::TooLarge { limit: 10 });
        assert_eq!(
            read_body(Body::from("abc"), 10).await.expect("fits"),
            Bytes::from("abc")
        );
    }
}
