//! Virtual servers (`[mcp_virtual.<slug>]`): the tools of several Streamable HTTP servers behind
//! one endpoint. The gateway answers `initialize` itself and opens one upstream session per member;
//! the client's session id is signed and carries every member's session id (so it works on any
//! replica). Tool names get the member's prefix (kept under 64 characters: a longer name becomes
//! a deterministic short one, mapped back exactly), and every call is governed by the rules,
//! limits and pricing of the member it routes to.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::http::session_header;
use super::jsonrpc::{self, Envelope};
use super::server::{McpServer, Transport};
use crate::error::{GatewayError, McpError};
use crate::policy::Snapshot;
use crate::state::AppState;
use crate::store::KeyRecord;

/// The longest tool name MCP clients and model APIs accept.
pub const MAX_TOOL_NAME: usize = 64;

/// One member of a virtual server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The member server's slug.
    pub server: String,
    /// What its tool names are prefixed with.
    pub prefix: String,
}

/// A `[mcp_virtual.<slug>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualServer {
    /// The slug in `/v1/mcp/{slug}`.
    pub slug: String,
    /// Members, in order.
    pub members: Vec<Member>,
}

impl VirtualServer {
    /// The highest price of any member, per unit: what a virtual request is held and billed at.
    pub fn pricing(&self, snapshot: &Snapshot) -> super::server::McpPricing {
        self.members
            .iter()
            .filter_map(|m| snapshot.mcp_servers.get(&m.server))
            .fold(super::server::McpPricing::default(), |p, s| {
                super::server::McpPricing {
                    call_nanos: p.call_nanos.max(s.pricing.call_nanos),
                    input_byte_nanos: p.input_byte_nanos.max(s.pricing.input_byte_nanos),
                    output_byte_nanos: p.output_byte_nanos.max(s.pricing.output_byte_nanos),
                    hold_output_bytes: p.hold_output_bytes.max(s.pricing.hold_output_bytes),
                }
            })
    }
}

/// The name a client sees for `tool` of a member with `prefix`.
pub fn exposed_name(prefix: &str, tool: &str) -> String {
    let full = format!("{prefix}{tool}");
    if full.len() <= MAX_TOOL_NAME {
        return full;
    }
    let digest = hex::encode(&Sha256::digest(full.as_bytes())[..4]);
    // prefix + as much of the tool as fits + '_' + 8 hex characters.
    let keep = MAX_TOOL_NAME - 9;
    let mut cut = keep.min(full.len());
    while !full.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}_{digest}", &full[..cut])
}

impl VirtualServer {
    /// The member and original tool name of an exposed name, given each member's tool names
    /// when a name was shortened (`tools_of` is asked only then).
    pub fn route<'a>(
        &'a self,
        exposed: &str,
        tools_of: &dyn Fn(&str) -> Vec<String>,
    ) -> Option<(&'a Member, String)> {
        // A name of the maximal length may be a shortened one: the members' listings decide
        // exactly (the prefix itself may have been cut).
        let listed = || {
            self.members.iter().find_map(|m| {
                tools_of(&m.server)
                    .into_iter()
                    .find(|t| exposed_name(&m.prefix, t) == exposed)
                    .map(|t| (m, t))
            })
        };
        if exposed.len() == MAX_TOOL_NAME
            && let Some(found) = listed()
        {
            return Some(found);
        }
        self.members.iter().find_map(|m| {
            let rest = exposed.strip_prefix(m.prefix.as_str())?;
            (exposed_name(&m.prefix, rest) == exposed).then(|| (m, rest.to_string()))
        })
    }
}

/// Sends one JSON-RPC message to a Streamable HTTP member and returns its answer (JSON or the
/// answering SSE event), with the member's session id if it set one.
async fn send(
    app: &AppState,
    server: &McpServer,
    session: Option<&str>,
    protocol: &str,
    message: &Value,
) -> Result<(Option<Value>, Option<String>), GatewayError> {
    let Transport::StreamableHttp { url } = &server.transport else {
        return Err(upstream(
            server,
            "virtual server members must be streamable_http",
        ));
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        header::ACCEPT,
        HeaderValue::from_static("application/json, text/event-stream"),
    );
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(protocol) {
        headers.insert("mcp-protocol-version", v);
    }
    if let Some(s) = session.and_then(|s| HeaderValue::from_str(s).ok()) {
        headers.insert(session_header(), s);
    }
    if let Some(auth) = app.mcp.tokens.authorization(server, &app.http).await? {
        headers.insert(header::AUTHORIZATION, auth);
    }
    let request = app
        .http
        .post(url)
        .headers(headers)
        .body(message.to_string())
        .send();
    let response = tokio::time::timeout(server.timeout, request)
        .await
        .map_err(|_| upstream(server, "no answer in time"))?
        .map_err(|e| upstream(server, format!("unreachable: {}", e.without_url())))?;
    if response.status().is_server_error() {
        return Err(upstream(
            server,
            format!("answered with status {}", response.status().as_u16()),
        ));
    }
    let new_session = response
        .headers()
        .get(session_header())
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let is_sse = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("text/event-stream"));
    let id = message.get("id").cloned();
    let text = response
        .text()
        .await
        .map_err(|e| upstream(server, format!("the answer broke off: {e}")))?;
    let answer = if is_sse {
        text.split("\n\n")
            .filter_map(super::http::event_data)
            .filter_map(|d| serde_json::from_str::<Value>(&d).ok())
            .find(|v| id.is_some() && v.get("id") == id.as_ref())
    } else {
        serde_json::from_str::<Value>(&text).ok()
    };
    Ok((answer, new_session))
}

fn upstream(server: &McpServer, detail: impl Into<String>) -> GatewayError {
    McpError::Upstream {
        server: server.slug.clone(),
        detail: detail.into(),
    }
    .into()
}

/// The members' session ids of a virtual session, by member slug.
pub type Sessions = BTreeMap<String, String>;

fn member_server<'a>(
    snapshot: &'a Snapshot,
    member: &Member,
) -> Result<&'a Arc<McpServer>, GatewayError> {
    snapshot
        .mcp_servers
        .get(&member.server)
        .filter(|s| s.enabled)
        .ok_or_else(|| McpError::NotFound(member.server.clone()).into())
}

/// What the virtual endpoint answered, for the usage row.
pub struct Outcome {
    /// The answer.
    pub response: Response,
    /// HTTP status.
    pub status: u16,
    /// Bytes sent.
    pub bytes_out: i64,
    /// Tool calls forwarded.
    pub tool_calls: i64,
    /// Decisions of the guardrail plugins bound to the members called.
    pub decisions: Vec<Value>,
}

fn json_answer(status: StatusCode, body: &Value, session: Option<&str>) -> Outcome {
    let text = body.to_string();
    let bytes_out = i64::try_from(text.len()).unwrap_or(i64::MAX);
    let mut response = (status, text).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(s) = session.and_then(|s| HeaderValue::from_str(s).ok()) {
        response.headers_mut().insert(session_header(), s);
    }
    Outcome {
        response,
        status: status.as_u16(),
        bytes_out,
        tool_calls: 0,
        decisions: Vec::new(),
    }
}

/// Serves one request on a virtual server (after authentication and MCP Access).
pub async fn serve(
    app: &Arc<AppState>,
    snapshot: &Snapshot,
    virt: &VirtualServer,
    key: &KeyRecord,
    method: &Method,
    headers: &HeaderMap,
    envelope: Option<&Envelope>,
) -> Result<Outcome, GatewayError> {
    let protocol = headers
        .get("mcp-protocol-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("2025-06-18")
        .to_string();
    let sealed = headers
        .get(session_header())
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let sessions: Option<Sessions> = match &sealed {
        None => None,
        Some(s) => {
            let inner = app
                .mcp
                .sessions
                .open(&virt.slug, &key.id, s)
                .ok_or(McpError::SessionNotFound)?;
            Some(serde_json::from_str(&inner).map_err(|_| McpError::SessionNotFound)?)
        }
    };
    if *method == Method::DELETE {
        if let Some(sessions) = &sessions {
            for (member, sid) in sessions {
                if let Some(server) = snapshot.mcp_servers.get(member)
                    && let Transport::StreamableHttp { url } = &server.transport
                {
                    let _ = app
                        .http
                        .delete(url)
                        .header(session_header(), sid.as_str())
                        .send()
                        .await;
                }
            }
        }
        return Ok(json_answer(StatusCode::OK, &json!({}), None));
    }
    let Some(envelope) = envelope.filter(|_| *method == Method::POST) else {
        return Ok(Outcome {
            response: StatusCode::METHOD_NOT_ALLOWED.into_response(),
            status: 405,
            bytes_out: 0,
            tool_calls: 0,
            decisions: Vec::new(),
        });
    };
    let mut answers = Vec::new();
    let mut new_session = None;
    let mut tool_calls = 0;
    let mut decisions = Vec::new();
    for (message, call) in envelope.messages.iter().zip(envelope.calls()) {
        let Some(id) = call.id else {
            continue; // notifications: nothing to forward
        };
        let answer = match call.method {
            Some("initialize") => {
                let mut opened = Sessions::new();
                for member in &virt.members {
                    let server = member_server(snapshot, member)?;
                    let (_, sid) = send(
                        app,
                        server,
                        None,
                        &protocol,
                        &Value::Object(message.clone()),
                    )
                    .await?;
                    if let Some(sid) = sid {
                        let done = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
                        send(app, server, Some(&sid), &protocol, &done).await?;
                        opened.insert(member.server.clone(), sid);
                    }
                }
                let inner = serde_json::to_string(&opened).unwrap_or_default();
                new_session = Some(app.mcp.sessions.seal(&virt.slug, &key.id, &inner));
                let version = message
                    .get("params")
                    .and_then(|p| p.get("protocolVersion"))
                    .cloned()
                    .unwrap_or(json!("2025-06-18"));
                json!({"jsonrpc": "2.0", "id": id, "result": {
                    "protocolVersion": version,
                    "capabilities": {"tools": {"listChanged": false}},
                    "serverInfo": {"name": format!("tollgate virtual server {}", virt.slug), "version": env!("CARGO_PKG_VERSION")}
                }})
            }
            Some("ping") => json!({"jsonrpc": "2.0", "id": id, "result": {}}),
            Some("tools/list") => {
                let mut tools = Vec::new();
                for member in &virt.members {
                    let server = member_server(snapshot, member)?;
                    let sid = sessions.as_ref().and_then(|s| s.get(&member.server));
                    let list =
                        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}});
                    let (answer, _) =
                        send(app, server, sid.map(String::as_str), &protocol, &list).await?;
                    for mut tool in answer
                        .and_then(|a| a["result"]["tools"].as_array().cloned())
                        .unwrap_or_default()
                    {
                        let Some(name) =
                            tool.get("name").and_then(Value::as_str).map(str::to_string)
                        else {
                            continue;
                        };
                        if server.tools.tool_denied(&name).is_some() {
                            continue;
                        }
                        tool["name"] = json!(exposed_name(&member.prefix, &name));
                        tools.push(tool);
                    }
                }
                json!({"jsonrpc": "2.0", "id": id, "result": {"tools": tools}})
            }
            Some("tools/call") => {
                let exposed = call.tool.unwrap_or_default().to_string();
                let mut listed: BTreeMap<String, Vec<String>> = BTreeMap::new();
                if exposed.len() == MAX_TOOL_NAME {
                    // Possibly a shortened name: map it back through the members' listings.
                    for member in &virt.members {
                        let server = member_server(snapshot, member)?;
                        let sid = sessions.as_ref().and_then(|s| s.get(&member.server));
                        let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}});
                        let (answer, _) =
                            send(app, server, sid.map(String::as_str), &protocol, &list).await?;
                        let names = answer
                            .and_then(|a| a["result"]["tools"].as_array().cloned())
                            .unwrap_or_default()
                            .iter()
                            .filter_map(|t| {
                                t.get("name").and_then(Value::as_str).map(str::to_string)
                            })
                            .collect();
                        listed.insert(member.server.clone(), names);
                    }
                }
                let routed = virt.route(&exposed, &|member: &str| {
                    listed.get(member).cloned().unwrap_or_default()
                });
                let Some((member, tool)) = routed else {
                    answers.push(jsonrpc::error(
                        id,
                        -32602,
                        &format!("unknown tool '{exposed}'"),
                        Value::Null,
                    ));
                    continue;
                };
                let server = member_server(snapshot, member)?;
                let mut forwarded: Map<String, Value> = message.clone();
                if let Some(Value::Object(params)) = forwarded.get_mut("params") {
                    params.insert("name".into(), json!(tool));
                }
                // The member's rules decide, as if the client had called it directly.
                let single = Envelope {
                    batch: false,
                    messages: vec![forwarded.clone()],
                };
                let (_, refusal) =
                    super::govern::inspect(snapshot, server, key, &single, chrono::Utc::now());
                if let Some(refusal) = refusal {
                    return Err(refusal.error);
                }
                // The member's guardrail plugins too: arguments in, result out.
                let guards =
                    crate::pipeline::inspect::ToolGuards::bound(snapshot, &server.slug, key);
                let mut single = single;
                if let Some(guards) = &guards {
                    let (found, _, refusal) = guards.check_calls(&mut single.messages).await;
                    decisions.extend(found);
                    if let Some((_, error)) = refusal {
                        return Err(error);
                    }
                }
                let forwarded = single.messages.pop().unwrap_or(forwarded);
                app.mcp.limits.admit(server)?;
                tool_calls += 1;
                let sid = sessions.as_ref().and_then(|s| s.get(&member.server));
                let (answer, _) = send(
                    app,
                    server,
                    sid.map(String::as_str),
                    &protocol,
                    &Value::Object(forwarded),
                )
                .await?;
                let mut answer = answer.unwrap_or_else(|| {
                    jsonrpc::error(id, jsonrpc::UPSTREAM_FAILED, "no answer", Value::Null)
                });
                if let Some(guards) = &guards {
                    let tools =
                        std::collections::HashMap::from([(id.to_string(), tool.to_string())]);
                    let (found, _, _) = guards.check_results(&mut answer, &tools).await;
                    decisions.extend(found);
                }
                answer
            }
            Some(other) => jsonrpc::error(
                id,
                -32601,
                &format!("method '{other}' is not served by a virtual server"),
                Value::Null,
            ),
            None => continue,
        };
        answers.push(answer);
    }
    if answers.is_empty() {
        return Ok(Outcome {
            response: StatusCode::ACCEPTED.into_response(),
            status: 202,
            bytes_out: 0,
            tool_calls,
            decisions,
        });
    }
    let body = if envelope.batch {
        Value::from(answers)
    } else {
        answers.into_iter().next().unwrap_or(Value::Null)
    };
    let mut outcome = json_answer(StatusCode::OK, &body, new_session.as_deref());
    outcome.tool_calls = tool_calls;
    outcome.decisions = decisions;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_are_shortened_deterministically_and_route_back_exactly() {
        let virt = VirtualServer {
            slug: "v".into(),
            members: vec![
                Member {
                    server: "everything".into(),
                    prefix: "ev_".into(),
                },
                Member {
                    server: "time".into(),
                    prefix: "time_".into(),
                },
            ],
        };
        assert_eq!(exposed_name("ev_", "echo"), "ev_echo");
        let long_tool = "a_tool_with_a_name_so_long_that_the_prefix_pushes_it_over_the_limit_x";
        let short = exposed_name("ev_", long_tool);
        assert_eq!(short.len(), MAX_TOOL_NAME);
        assert_eq!(short, exposed_name("ev_", long_tool));
        let none = |_: &str| Vec::new();
        let (m, t) = virt.route("ev_echo", &none).expect("routes");
        assert_eq!((m.server.as_str(), t.as_str()), ("everything", "echo"));
        let (m, t) = virt.route("time_get_current_time", &none).expect("routes");
        assert_eq!(
            (m.server.as_str(), t.as_str()),
            ("time", "get_current_time")
        );
        let tools = |server: &str| {
            if server == "everything" {
                vec![long_tool.to_string()]
            } else {
                Vec::new()
            }
        };
        let (m, t) = virt.route(&short, &tools).expect("routes");
        assert_eq!((m.server.as_str(), t.as_str()), ("everything", long_tool));
        assert!(virt.route("other_tool", &none).is_none());
    }
}
