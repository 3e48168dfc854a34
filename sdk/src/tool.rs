//! What a plugin sees of MCP tool traffic (WIT 0.2.0): a tool call's arguments before the MCP
//! server does, and the tool's result before the client does.
//!
//! The arguments and the result are JSON. A plugin gets the JSON text and, as [`TextPart`]s,
//! every string inside it; a rewrite names parts, and the gateway writes each new text back in
//! its place, so the JSON stays valid.
//!
//! ```
//! use tollgate_plugin_sdk::{Config, Guardrail, Request, ToolCall, Verdict, Edit};
//!
//! struct NoEmails;
//!
//! impl Guardrail for NoEmails {
//!     fn new(_config: &Config) -> Result<Self, String> {
//!         Ok(NoEmails)
//!     }
//!     fn check_request(&mut self, _request: &Request) -> Verdict {
//!         Verdict::allow()
//!     }
//!     fn check_tool_call(&mut self, call: &ToolCall) -> Verdict {
//!         let edits: Vec<Edit> = call
//!             .parts
//!             .iter()
//!             .filter(|p| p.text.contains('@'))
//!             .map(|p| Edit { part: p.id, text: "[EMAIL]".into() })
//!             .collect();
//!         if edits.is_empty() { Verdict::allow() } else { Verdict::rewrite(edits) }
//!     }
//! }
//!
//! let mut guard = NoEmails::new(&Config::empty()).unwrap();
//! let call = ToolCall::new("crm", "send", r#"{"to": "a@b.io", "n": 1}"#);
//! let verdict = guard.check_tool_call(&call);
//! assert_eq!(call.rewritten(&verdict), Some(serde_json::json!({"to": "[EMAIL]", "n": 1})));
//! ```

use serde_json::Value;

use crate::{Action, Caller, TextPart, Verdict};

/// One step into a JSON value (kept by views built natively, to apply edits in tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    Key(String),
    Index(usize),
}

/// Every string inside `value`, in the order the gateway shows them, with where it is.
fn strings(value: &Value, path: Vec<Step>, out: &mut Vec<(String, Vec<Step>)>) {
    match value {
        Value::String(s) => out.push((s.clone(), path)),
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                let mut p = path.clone();
                p.push(Step::Index(i));
                strings(v, p, out);
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                let mut p = path.clone();
                p.push(Step::Key(k.clone()));
                strings(v, p, out);
            }
        }
        _ => {}
    }
}

fn parts_of(found: &[(String, Vec<Step>)]) -> Vec<TextPart> {
    found
        .iter()
        .enumerate()
        .map(|(i, (text, _))| TextPart {
            id: u32::try_from(i).unwrap_or(u32::MAX),
            text: text.clone(),
        })
        .collect()
}

/// Applies a rewrite verdict to `json` (the text the view was built from) through `paths`.
fn apply(json: &str, paths: &[Vec<Step>], verdict: &Verdict) -> Option<Value> {
    let mut value: Value = serde_json::from_str(json).ok()?;
    let Action::Rewrite(edits) = &verdict.action else {
        return Some(value);
    };
    for edit in edits {
        let path = paths.get(edit.part as usize)?;
        let mut at = &mut value;
        for step in path {
            at = match step {
                Step::Key(k) => at.get_mut(k.as_str())?,
                Step::Index(i) => at.get_mut(*i)?,
            };
        }
        *at = Value::String(edit.text.clone());
    }
    Some(value)
}

/// An MCP `tools/call` on its way to the server (the `tool_call` phase).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolCall {
    /// The MCP server's slug in the policy directory.
    pub server: String,
    /// The tool's name as the server knows it.
    pub tool: String,
    /// The call's `arguments` object as JSON text (`{}` when absent).
    pub arguments: String,
    /// Every string value inside the arguments.
    pub parts: Vec<TextPart>,
    /// The calling key.
    pub caller: Caller,
    pub(crate) paths: Vec<Vec<Step>>,
}

impl ToolCall {
    /// A call of `tool` on `server` with `arguments` (JSON text), its parts found as the
    /// gateway finds them (for tests). Arguments that are not JSON give no parts.
    pub fn new(server: &str, tool: &str, arguments: &str) -> Self {
        let mut found = Vec::new();
        if let Ok(value) = serde_json::from_str::<Value>(arguments) {
            strings(&value, Vec::new(), &mut found);
        }
        ToolCall {
            server: server.to_string(),
            tool: tool.to_string(),
            arguments: arguments.to_string(),
            parts: parts_of(&found),
            caller: Caller::default(),
            paths: found.into_iter().map(|(_, p)| p).collect(),
        }
    }

    /// The arguments parsed (`None` if they are not JSON).
    pub fn arguments_json(&self) -> Option<Value> {
        serde_json::from_str(&self.arguments).ok()
    }

    /// The arguments after `verdict`'s rewrite, as the server would receive them (for tests of
    /// a call built with [`ToolCall::new`]).
    pub fn rewritten(&self, verdict: &Verdict) -> Option<Value> {
        apply(&self.arguments, &self.paths, verdict)
    }
}

/// A tool's result on its way back to the client (the `tool_result` phase).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolResult {
    /// The MCP server's slug in the policy directory.
    pub server: String,
    /// The tool that was called.
    pub tool: String,
    /// Whether the server flagged the result as an error (`isError`).
    pub is_error: bool,
    /// The `result` object as JSON text.
    pub result: String,
    /// The texts of the result: `text` content items, embedded resource texts and the strings
    /// of `structuredContent`.
    pub parts: Vec<TextPart>,
    /// The calling key.
    pub caller: Caller,
    pub(crate) paths: Vec<Vec<Step>>,
}

impl ToolResult {
    /// A result of `tool` on `server` given as the `result` object's JSON text, its parts found
    /// as the gateway finds them (for tests).
    pub fn new(server: &str, tool: &str, result: &str) -> Self {
        let mut found = Vec::new();
        let value = serde_json::from_str::<Value>(result).unwrap_or(Value::Null);
        for (i, item) in value
            .get("content")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let base = vec![Step::Key("content".into()), Step::Index(i)];
            if let Some(text) = item.get("text").and_then(Value::as_str) {
                let mut p = base.clone();
                p.push(Step::Key("text".into()));
                found.push((text.to_string(), p));
            }
            if let Some(text) = item
                .get("resource")
                .and_then(|r| r.get("text"))
                .and_then(Value::as_str)
            {
                let mut p = base;
                p.extend([Step::Key("resource".into()), Step::Key("text".into())]);
                found.push((text.to_string(), p));
            }
        }
        if let Some(structured) = value.get("structuredContent") {
            strings(
                structured,
                vec![Step::Key("structuredContent".into())],
                &mut found,
            );
        }
        ToolResult {
            server: server.to_string(),
            tool: tool.to_string(),
            is_error: value
                .get("isError")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            result: result.to_string(),
            parts: parts_of(&found),
            caller: Caller::default(),
            paths: found.into_iter().map(|(_, p)| p).collect(),
        }
    }

    /// A result holding one text content item (for tests).
    pub fn text(server: &str, tool: &str, text: &str) -> Self {
        let result = serde_json::json!({"content": [{"type": "text", "text": text}]});
        ToolResult::new(server, tool, &result.to_string())
    }

    /// The result after `verdict`'s rewrite, as the client would receive it (for tests of a
    /// result built with [`ToolResult::new`]).
    pub fn rewritten(&self, verdict: &Verdict) -> Option<Value> {
        apply(&self.result, &self.paths, verdict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Edit;

    #[test]
    fn native_views_find_the_strings_and_apply_rewrites_in_place() {
        let call = ToolCall::new("srv", "echo", r#"{"message": "hi a@b.io", "n": 2}"#);
        assert_eq!(call.parts.len(), 1);
        assert_eq!(call.parts[0].text, "hi a@b.io");
        let verdict = Verdict::rewrite(vec![Edit {
            part: 0,
            text: "hi [EMAIL]".into(),
        }]);
        assert_eq!(
            call.rewritten(&verdict),
            Some(serde_json::json!({"message": "hi [EMAIL]", "n": 2}))
        );
        let result = ToolResult::text("srv", "echo", "Echo: a@b.io");
        assert_eq!(result.parts[0].text, "Echo: a@b.io");
        let masked = result.rewritten(&Verdict::rewrite(vec![Edit {
            part: 0,
            text: "Echo: [EMAIL]".into(),
        }]));
        assert_eq!(
            masked.and_then(|v| v["content"][0]["text"].as_str().map(str::to_string)),
            Some("Echo: [EMAIL]".to_string())
        );
    }
}
