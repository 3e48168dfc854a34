//! JSON-RPC 2.0 as the MCP gateway reads it: one message or a batch, what each asks for, error
//! answers, and the filtering of advertised tools.

use serde_json::{Map, Value, json};

use super::server::ToolRules;

/// JSON-RPC error code for a request the gateway refused (in the implementation-defined
/// server-error range); `error.data.code` carries tollgate's stable code.
pub const GATEWAY_REFUSED: i64 = -32003;
/// JSON-RPC error code for an upstream that failed.
pub const UPSTREAM_FAILED: i64 = -32000;
/// JSON-RPC "Parse error".
pub const PARSE_ERROR: i64 = -32700;
/// JSON-RPC "Invalid Request".
pub const INVALID_REQUEST: i64 = -32600;

/// A decoded request body.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// Whether the body was an array.
    pub batch: bool,
    /// The messages, in order.
    pub messages: Vec<Map<String, Value>>,
}

/// What one message is.
#[derive(Debug, Clone, PartialEq)]
pub struct Call<'a> {
    /// The id of a request; `None` for a notification or a response.
    pub id: Option<&'a Value>,
    /// The method of a request or notification.
    pub method: Option<&'a str>,
    /// `params.name` of a `tools/call`.
    pub tool: Option<&'a str>,
    /// `params.arguments` of a `tools/call`.
    pub arguments: Option<&'a Value>,
}

impl Envelope {
    /// Parses a POST body: one JSON-RPC object or a non-empty array of them.
    pub fn parse(bytes: &[u8]) -> Result<Envelope, (i64, String)> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| (PARSE_ERROR, format!("the body is not valid JSON: {e}")))?;
        let (batch, items) = match value {
            Value::Object(map) => (false, vec![Value::Object(map)]),
            Value::Array(items) if !items.is_empty() => (true, items),
            _ => {
                return Err((
                    INVALID_REQUEST,
                    "the body must be a JSON-RPC object or a non-empty batch".into(),
                ));
            }
        };
        let mut messages = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Value::Object(map) => messages.push(map),
                _ => {
                    return Err((
                        INVALID_REQUEST,
                        "every JSON-RPC message must be an object".into(),
                    ));
                }
            }
        }
        Ok(Envelope { batch, messages })
    }

    /// What each message is.
    pub fn calls(&self) -> impl Iterator<Item = Call<'_>> {
        self.messages.iter().map(|m| {
            let method = m.get("method").and_then(Value::as_str);
            let id = if method.is_some() {
                m.get("id").filter(|v| !v.is_null())
            } else {
                None
            };
            let params = m.get("params");
            let (tool, arguments) = if method == Some("tools/call") {
                (
                    params.and_then(|p| p.get("name")).and_then(Value::as_str),
                    params.and_then(|p| p.get("arguments")),
                )
            } else {
                (None, None)
            };
            Call {
                id,
                method,
                tool,
                arguments,
            }
        })
    }

    /// The method for the usage row: the only one, or `batch` when several differ.
    pub fn method_label(&self) -> Option<String> {
        let mut methods = self.calls().filter_map(|c| c.method);
        let first = methods.next()?;
        if methods.all(|m| m == first) {
            Some(first.to_string())
        } else {
            Some("batch".into())
        }
    }

    /// The first tool called.
    pub fn first_tool(&self) -> Option<String> {
        self.calls().find_map(|c| c.tool.map(str::to_string))
    }

    /// How many `tools/call` requests the body carries.
    pub fn tool_calls(&self) -> i64 {
        i64::try_from(
            self.calls()
                .filter(|c| c.method == Some("tools/call"))
                .count(),
        )
        .unwrap_or(i64::MAX)
    }

    /// The body as JSON again (after a guardrail masked tool arguments).
    pub fn to_value(&self) -> Value {
        let mut items = self.messages.iter().cloned().map(Value::Object);
        if self.batch {
            Value::Array(items.collect())
        } else {
            items.next().unwrap_or(Value::Null)
        }
    }

    /// Whether the body holds at least one request (something expecting an answer).
    pub fn has_requests(&self) -> bool {
        self.calls().any(|c| c.id.is_some())
    }
}

/// A JSON-RPC error answer to request `id`, carrying tollgate's stable code in `data`.
pub fn error(id: &Value, code: i64, message: &str, data: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message, "data": data}})
}

/// Removes tools that may not be called from every `tools/list` result in `message` (a single
/// message or a batch). Returns whether anything was removed.
pub fn filter_tools(message: &mut Value, rules: &ToolRules) -> bool {
    match message {
        Value::Array(items) => {
            // Every message is filtered: no short-circuit.
            let mut changed = false;
            for m in items {
                changed |= filter_tools(m, rules);
            }
            changed
        }
        Value::Object(map) => {
            let Some(Value::Array(tools)) = map
                .get_mut("result")
                .and_then(|r| r.as_object_mut())
                .and_then(|r| r.get_mut("tools"))
            else {
                return false;
            };
            let before = tools.len();
            tools.retain(|t| {
                t.get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|name| rules.tool_denied(name).is_none())
            });
            tools.len() != before
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_reports_every_tool_call_and_a_mixed_method() {
        let body = br#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hi"}}},
                        {"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"add"}},
                        {"jsonrpc":"2.0","method":"notifications/initialized"}]"#;
        let envelope = Envelope::parse(body).expect("parses");
        assert!(envelope.batch);
        assert_eq!(envelope.tool_calls(), 2);
        assert_eq!(envelope.first_tool().as_deref(), Some("echo"));
        assert_eq!(envelope.method_label().as_deref(), Some("batch"));
        assert!(envelope.has_requests());
        let calls: Vec<_> = envelope.calls().collect();
        assert_eq!(calls[2].id, None);
        assert_eq!(calls[0].arguments, Some(&json!({"message": "hi"})));
    }

    #[test]
    fn bodies_that_are_not_json_rpc_are_refused_with_their_codes() {
        assert_eq!(Envelope::parse(b"{").expect_err("bad").0, PARSE_ERROR);
        assert_eq!(
            Envelope::parse(b"[]").expect_err("empty").0,
            INVALID_REQUEST
        );
        assert_eq!(
            Envelope::parse(b"[1]").expect_err("not objects").0,
            INVALID_REQUEST
        );
    }

    #[test]
    fn listed_tools_that_may_not_be_called_are_removed() {
        let rules = ToolRules {
            allowed: vec![],
            blocked: vec!["get-env".into()],
            blocked_keywords: vec![],
        };
        let mut answer =
            json!({"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"echo"},{"name":"get-env"}]}});
        assert!(filter_tools(&mut answer, &rules));
        assert_eq!(answer["result"]["tools"], json!([{"name": "echo"}]));
        let mut other = json!({"jsonrpc":"2.0","id":2,"result":{"content":[]}});
        assert!(!filter_tools(&mut other, &rules));
    }
}
