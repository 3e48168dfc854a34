//! The lifecycle of one MCP HTTP request, stage by stage (the same stages and recorder as a
//! model call): authenticate → authorize (server, MCP Access, server limits, body size) →
//! inspect (tool rules, keyword filter, CEL) → reserve (MCP cost) → call → record.

use std::sync::Arc;

use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};

use super::govern;
use super::jsonrpc::{self, Envelope};
use super::server::{McpServer, Transport};
use crate::error::{Family, GatewayError, McpError, RequestError};
use crate::pipeline::authorize::read_body;
use crate::pipeline::{Flow, Inbound, Recorder, Stage, authenticate};
use crate::policy::Snapshot;
use crate::spend::estimate::Estimate;
use crate::state::AppState;
use crate::store::{KeyRecord, McpUsage};

/// What the MCP endpoint hands the lifecycle.
pub struct McpInbound {
    /// The request.
    pub inbound: Inbound,
    /// The server slug (or id) from the path.
    pub slug: String,
    /// The extra path after the slug, if any.
    pub path: Option<String>,
}

/// Everything the call stage needs.
pub struct Prepared {
    /// The snapshot of the request.
    pub snapshot: Arc<Snapshot>,
    /// The server.
    pub server: Arc<McpServer>,
    /// The authenticated key.
    pub key: Arc<KeyRecord>,
    /// HTTP method.
    pub method: Method,
    /// Request headers.
    pub headers: axum::http::HeaderMap,
    /// Raw query.
    pub query: Option<String>,
    /// Extra path.
    pub path: Option<String>,
    /// The body of a POST.
    pub body: Option<Bytes>,
    /// The decoded JSON-RPC of a POST.
    pub envelope: Option<Envelope>,
    /// The usage row's MCP fields so far.
    pub usage: McpUsage,
    /// Holds the server's concurrency slot until the answer ends.
    pub admission: super::limits::Admission,
    /// The stream of a legacy SSE session (POSTs only).
    pub sse_route: Option<SseRoute>,
    /// Guardrail plugins bound to this server's tool calls (their `tool_result` phase runs on
    /// the answer).
    pub tool_guards: Option<crate::pipeline::inspect::ToolGuards>,
}

impl Prepared {
    /// The cost of this request once `bytes_out` are known.
    pub fn cost(&self, bytes_out: i64) -> i64 {
        self.server
            .pricing
            .cost_nanos(self.usage.tool_calls, self.usage.bytes_in, bytes_out)
    }
}

/// A JSON answer with `status`.
pub fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Where a legacy SSE client reads its answers: the stream opened with the same key whose
/// `endpoint` event named this POST's URL.
#[derive(Debug, Clone)]
pub struct SseRoute {
    /// The key.
    pub key_id: String,
    /// The gateway endpoint (`/v1/mcp/{slug}/{path}?{query}`).
    pub endpoint: String,
}

/// The JSON-RPC answer(s) to a refused body that held requests: one error per request (the
/// refused one names the reason, the others say they were not sent), `error.data.code` carrying
/// the stable code and `error.data.status` the HTTP status.
fn jsonrpc_answers(error: &GatewayError, envelope: &Envelope, index: Option<usize>) -> Vec<Value> {
    let mut data = error.body(Family::OpenAi)["error"].clone();
    data["status"] = json!(error.status().as_u16());
    let code = if matches!(
        error,
        GatewayError::Mcp(
            McpError::Upstream { .. } | McpError::Stdio { .. } | McpError::Auth { .. }
        )
    ) {
        jsonrpc::UPSTREAM_FAILED
    } else {
        jsonrpc::GATEWAY_REFUSED
    };
    let message = error.to_string();
    envelope
        .calls()
        .enumerate()
        .filter_map(|(i, c)| c.id.map(|id| (i, id)))
        .map(|(i, id)| {
            let text = if index.is_none_or(|r| r == i) {
                message.clone()
            } else {
                format!("not sent: another message of this batch was refused ({message})")
            };
            jsonrpc::error(id, code, &text, data.clone())
        })
        .collect()
}

/// The answer to a refused or failed request: a JSON-RPC error (per request of a batch) when the
/// body held JSON-RPC requests, the OpenAI-style error body otherwise. The HTTP status and the
/// stable code (`error.data.code`) are the same either way.
pub fn render(error: &GatewayError, envelope: Option<&Envelope>, index: Option<usize>) -> Response {
    let Some(envelope) = envelope.filter(|e| e.has_requests()) else {
        return error.render(Family::OpenAi);
    };
    let answers = jsonrpc_answers(error, envelope, index);
    let body = if envelope.batch {
        Value::from(answers)
    } else {
        answers.into_iter().next().unwrap_or(Value::Null)
    };
    let mut response = json_response(error.status(), &body);
    if let GatewayError::Quota(q) = error
        && q.retry_after_secs > 0
        && let Ok(v) = HeaderValue::from_str(&q.retry_after_secs.to_string())
    {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}

/// Ends the request with `error` from `stage`, recorded, in the form the client expects.
pub fn refuse(
    recorder: Recorder,
    stage: Stage,
    error: &GatewayError,
    envelope: Option<&Envelope>,
    index: Option<usize>,
) -> Response {
    let response = render(error, envelope, index);
    recorder.deny_rendered(stage, error, response)
}

/// Like [`refuse`]; a legacy SSE client gets the JSON-RPC errors on its stream (and `202` to
/// its POST, as the transport expects) when that stream is open on this replica. Inside a
/// session (`in_session`), a policy refusal is the JSON-RPC answer itself, sent with `200` so
/// every SDK surfaces it as an error with its `data.code` (some SDKs turn a 4xx into an opaque
/// transport error); the usage row keeps the refusal's status.
#[allow(clippy::too_many_arguments)]
pub fn refuse_to(
    app: &AppState,
    route: Option<&SseRoute>,
    in_session: bool,
    recorder: Recorder,
    stage: Stage,
    error: &GatewayError,
    envelope: Option<&Envelope>,
    index: Option<usize>,
) -> Response {
    if let (Some(route), Some(envelope)) = (route, envelope.filter(|e| e.has_requests())) {
        let answers = jsonrpc_answers(error, envelope, index);
        if answers
            .iter()
            .all(|a| app.mcp.sse.send(&route.key_id, &route.endpoint, a))
        {
            return recorder.deny_rendered(stage, error, StatusCode::ACCEPTED.into_response());
        }
    }
    if let Some(envelope) = envelope.filter(|e| in_session && e.has_requests()) {
        let answers = jsonrpc_answers(error, envelope, index);
        let body = if envelope.batch {
            Value::from(answers)
        } else {
            answers.into_iter().next().unwrap_or(Value::Null)
        };
        return recorder.deny_rendered(stage, error, json_response(StatusCode::OK, &body));
    }
    refuse(recorder, stage, error, envelope, index)
}

/// Holds the worst-case MCP cost (and one request) on every budget and quota that applies.
async fn reserve(
    app: &Arc<AppState>,
    snapshot: &Snapshot,
    key: &KeyRecord,
    target: &crate::policy::Target,
    worst_nanos: i64,
    recorder: &mut Recorder,
) -> Result<(), GatewayError> {
    if snapshot.budgets.is_empty() && snapshot.quotas.is_empty() && !app.ledger.has_stored_budgets()
    {
        return Ok(());
    }
    // The server's target prices one input "token" at one nano-USD.
    let estimate = Estimate {
        input_tokens: worst_nanos,
        output_tokens: 0,
        fixed_nanos: 0,
        counted: true,
    };
    if let Some(reservation) = app
        .ledger
        .reserve(snapshot, key, target, estimate, recorder.request_id())
        .await?
    {
        recorder.add_decisions(vec![reservation.decision()]);
        recorder.attach_reservation(app.ledger.clone(), reservation);
    }
    Ok(())
}

/// Runs the lifecycle of one request on `/v1/mcp/{slug}[/{path}]`.
pub async fn handle(app: &Arc<AppState>, request: McpInbound) -> Response {
    let McpInbound {
        inbound,
        slug,
        path,
    } = request;
    let snapshot = app.policies.snapshot();
    let mut recorder = Recorder::start(app, &snapshot, &inbound, &format!("/v1/mcp/{slug}"));

    // 1. authenticate
    let key = match authenticate::run(app, &inbound.headers, inbound.query.as_deref()).await {
        Flow::Continue(key) => key,
        Flow::Respond(error) => return recorder.deny(Stage::Authenticate, &error, Family::OpenAi),
    };
    recorder.set_key(&key);

    // A virtual server aggregates others; each call is governed by the server it routes to.
    if !snapshot.mcp_servers.contains_key(&slug)
        && let Some(virt) = snapshot.mcp_virtual.get(&slug).cloned()
    {
        return handle_virtual(app, &snapshot, &virt, &key, inbound, recorder).await;
    }

    // 2. authorize: the server exists and is enabled, MCP Access, server limits, body size.
    let Some(server) = snapshot
        .mcp_servers
        .get(&slug)
        .filter(|s| s.enabled)
        .cloned()
    else {
        let error = McpError::NotFound(slug).into();
        return recorder.deny(Stage::Authorize, &error, Family::OpenAi);
    };
    let mut usage = McpUsage {
        server: server.slug.clone(),
        transport: server.transport.as_str().to_string(),
        pricing: Some(server.pricing.json().to_string()),
        ..McpUsage::default()
    };
    recorder.set_mcp(usage.clone(), 0);
    if !key.mcp.allows(&server.slug) {
        let error = McpError::NotAllowed(server.slug.clone()).into();
        return recorder.deny(Stage::Authorize, &error, Family::OpenAi);
    }
    if !server.scope.admits(&key.id, key.team.as_deref()) {
        recorder.add_decisions(vec![
            json!({"stage": "authorize", "check": "mcp_scope", "server": server.slug, "outcome": "deny"}),
        ]);
        let error = McpError::OutOfScope(server.slug.clone()).into();
        return recorder.deny(Stage::Authorize, &error, Family::OpenAi);
    }
    recorder.add_decisions(vec![
        json!({"stage": "authorize", "check": "mcp_access", "server": server.slug, "outcome": "allow"}),
    ]);
    let method = inbound.method.clone();
    let in_session = inbound.headers.contains_key("mcp-session-id");
    let sse_route = (matches!(server.transport, Transport::Sse { .. }) && method == Method::POST)
        .then(|| SseRoute {
            key_id: key.id.clone(),
            endpoint: super::sse::post_endpoint(&slug, path.as_deref(), inbound.query.as_deref()),
        });
    let (mut body, mut envelope, mut admission) = (None, None, None);
    let mut tool_guards = None;
    if method == Method::POST {
        let limit = server
            .limits
            .max_request_bytes
            .map_or(snapshot.limits.max_body_bytes, |m| {
                m.min(snapshot.limits.max_body_bytes)
            });
        let mut bytes = match read_body(inbound.body, limit).await {
            Ok(b) => b,
            Err(e) => return recorder.deny(Stage::Authorize, &e.into(), Family::OpenAi),
        };
        usage.bytes_in = i64::try_from(bytes.len()).unwrap_or(i64::MAX);
        let mut parsed = match Envelope::parse(&bytes) {
            Ok(p) => p,
            Err((code, message)) => {
                let error = GatewayError::Request(RequestError::Invalid(message.clone()));
                let answer = json!({"jsonrpc": "2.0", "id": null, "error": {
                    "code": code, "message": message, "data": {"code": error.code(), "status": 400}}});
                recorder.set_mcp(usage, 0);
                return recorder.deny_rendered(
                    Stage::Authorize,
                    &error,
                    json_response(StatusCode::BAD_REQUEST, &answer),
                );
            }
        };
        usage.method = parsed.method_label();
        usage.tool = parsed.first_tool();
        usage.tool_calls = parsed.tool_calls();
        recorder.set_mcp(usage.clone(), 0);
        // Server limits, answered in JSON-RPC form now that the request ids are known.
        admission = match app.mcp.limits.admit(&server) {
            Ok(a) => Some(a),
            Err(error) => {
                return refuse_to(
                    app,
                    sse_route.as_ref(),
                    in_session,
                    recorder,
                    Stage::Authorize,
                    &error,
                    Some(&parsed),
                    None,
                );
            }
        };

        // 3. inspect
        let (decisions, refusal) =
            govern::inspect(&snapshot, &server, &key, &parsed, chrono::Utc::now());
        recorder.add_decisions(decisions);
        if let Some(refusal) = refusal {
            return refuse_to(
                app,
                sse_route.as_ref(),
                in_session,
                recorder,
                Stage::Inspect,
                &refusal.error,
                Some(&parsed),
                Some(refusal.index),
            );
        }
        // Guardrail plugins on the tool arguments (`tool_call` phase), masking in place.
        tool_guards = crate::pipeline::inspect::ToolGuards::bound(&snapshot, &server.slug, &key);
        if let Some(guards) = &tool_guards {
            let (decisions, changed, refusal) = guards.check_calls(&mut parsed.messages).await;
            recorder.add_decisions(decisions);
            if let Some((index, error)) = refusal {
                return refuse_to(
                    app,
                    sse_route.as_ref(),
                    in_session,
                    recorder,
                    Stage::Inspect,
                    &error,
                    Some(&parsed),
                    Some(index),
                );
            }
            if changed {
                bytes = Bytes::from(parsed.to_value().to_string());
            }
        }

        // 4. reserve
        let worst = server.pricing.cost_nanos(
            usage.tool_calls,
            usage.bytes_in,
            server.pricing.hold_output_bytes,
        );
        if let Err(error) = reserve(
            app,
            &snapshot,
            &key,
            &server.budget_target,
            worst,
            &mut recorder,
        )
        .await
        {
            return refuse_to(
                app,
                sse_route.as_ref(),
                in_session,
                recorder,
                Stage::Reserve,
                &error,
                Some(&parsed),
                None,
            );
        }
        body = Some(bytes);
        envelope = Some(parsed);
    } else if method != Method::GET && method != Method::DELETE {
        let error = GatewayError::MethodNotAllowed(format!("{method} /v1/mcp/{slug}"));
        return recorder.deny(Stage::Authorize, &error, Family::OpenAi);
    }
    let admission = match admission {
        Some(a) => a,
        None => match app.mcp.limits.admit(&server) {
            Ok(a) => a,
            Err(error) => return recorder.deny(Stage::Authorize, &error, Family::OpenAi),
        },
    };

    // 5. call (6. record runs when the relayed answer ends)
    let prepared = Prepared {
        snapshot: snapshot.clone(),
        server: server.clone(),
        key,
        method,
        headers: inbound.headers,
        query: inbound.query,
        path,
        body,
        envelope,
        usage,
        admission,
        sse_route,
        tool_guards,
    };
    match &server.transport {
        Transport::StreamableHttp { url } | Transport::Sse { url } => {
            super::call::http(app, prepared, url, recorder).await
        }
        Transport::Stdio(command) => super::call::stdio(app, prepared, command, recorder).await,
    }
}

/// The lifecycle on a virtual server: MCP Access to the virtual slug, the body, a hold at the
/// highest member prices, then [`super::aggregate::serve`] (which applies each member's tool
/// rules, CEL rules and limits to the calls routed to it), then the usage row.
async fn handle_virtual(
    app: &Arc<AppState>,
    snapshot: &Arc<Snapshot>,
    virt: &super::aggregate::VirtualServer,
    key: &Arc<KeyRecord>,
    inbound: Inbound,
    mut recorder: Recorder,
) -> Response {
    let pricing = virt.pricing(snapshot);
    let mut usage = McpUsage {
        server: virt.slug.clone(),
        transport: "virtual".into(),
        pricing: Some(pricing.json().to_string()),
        ..McpUsage::default()
    };
    recorder.set_mcp(usage.clone(), 0);
    if !key.mcp.allows(&virt.slug) {
        let error = McpError::NotAllowed(virt.slug.clone()).into();
        return recorder.deny(Stage::Authorize, &error, Family::OpenAi);
    }
    let in_session = inbound.headers.contains_key("mcp-session-id");
    let mut envelope = None;
    if inbound.method == Method::POST {
        let bytes = match read_body(inbound.body, snapshot.limits.max_body_bytes).await {
            Ok(b) => b,
            Err(e) => return recorder.deny(Stage::Authorize, &e.into(), Family::OpenAi),
        };
        usage.bytes_in = i64::try_from(bytes.len()).unwrap_or(i64::MAX);
        let parsed = match Envelope::parse(&bytes) {
            Ok(p) => p,
            Err((_, message)) => {
                let error = GatewayError::Request(RequestError::Invalid(message));
                return recorder.deny(Stage::Authorize, &error, Family::OpenAi);
            }
        };
        usage.method = parsed.method_label();
        usage.tool = parsed.first_tool();
        usage.tool_calls = parsed.tool_calls();
        recorder.set_mcp(usage.clone(), 0);
        let worst = pricing.cost_nanos(usage.tool_calls, usage.bytes_in, pricing.hold_output_bytes);
        let target = McpServer::budget_target(&virt.slug);
        if let Err(error) = reserve(app, snapshot, key, &target, worst, &mut recorder).await {
            return refuse_to(
                app,
                None,
                in_session,
                recorder,
                Stage::Reserve,
                &error,
                Some(&parsed),
                None,
            );
        }
        envelope = Some(parsed);
    }
    let outcome = super::aggregate::serve(
        app,
        snapshot,
        virt,
        key,
        &inbound.method,
        &inbound.headers,
        envelope.as_ref(),
    )
    .await;
    match outcome {
        Ok(out) => {
            recorder.add_decisions(out.decisions);
            usage.bytes_out = out.bytes_out;
            usage.tool_calls = out.tool_calls;
            let cost = pricing.cost_nanos(out.tool_calls, usage.bytes_in, out.bytes_out);
            recorder.set_mcp(usage, cost);
            recorder.mark_first_byte();
            recorder.finish(out.status, None);
            out.response
        }
        Err(error) => {
            let upstream = matches!(
                error,
                GatewayError::Mcp(McpError::Upstream { .. } | McpError::Auth { .. })
            );
            usage.tool_calls = 0;
            recorder.set_mcp(usage, 0);
            let stage = if upstream {
                Stage::Call
            } else {
                Stage::Inspect
            };
            refuse_to(
                app,
                None,
                in_session && !upstream,
                recorder,
                stage,
                &error,
                envelope.as_ref(),
                None,
            )
        }
    }
}
