//! Makes a usage record storable before it reaches the database: no NUL characters (PostgreSQL
//! `TEXT` refuses them), no unbounded strings, and well-formed JSON in the JSON columns.
//!
//! A record is never refused here: a field that breaks a rule is repaired (NUL replaced by
//! U+FFFD, a long string cut at a character boundary with a marker, broken JSON wrapped as a
//! JSON string), and the repair is noted in the record's decisions so a reader sees it.

use serde_json::{Value, json};

use super::UsageRecord;

/// Longest stored value of a name-like column (ids, models, providers, codes), in bytes.
pub const MAX_NAME: usize = 512;
/// Longest stored user agent, in bytes.
pub const MAX_USER_AGENT: usize = 1024;
/// Longest stored JSON column (provider usage, decisions, route, pricing), in bytes.
pub const MAX_JSON: usize = 64 * 1024;

/// Appended to a string that was cut.
const CUT: &str = "…[truncated]";

/// Repairs `record` in place; returns the names of the columns that were changed.
pub fn sanitize(record: &mut UsageRecord) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut text = |name: &'static str, value: &mut String, max: usize| {
        if clean_text(value, max) {
            changed.push(name);
        }
    };
    text("id", &mut record.id, MAX_NAME);
    text("request_id", &mut record.request_id, MAX_NAME);
    text("method", &mut record.method, MAX_NAME);
    text("endpoint", &mut record.endpoint, MAX_NAME);
    let names: [(&'static str, &mut Option<String>, usize); 13] = [
        ("key_id", &mut record.key_id, MAX_NAME),
        ("team", &mut record.team, MAX_NAME),
        ("requested_model", &mut record.requested_model, MAX_NAME),
        ("served_model", &mut record.served_model, MAX_NAME),
        ("upstream_model", &mut record.upstream_model, MAX_NAME),
        ("provider", &mut record.provider, MAX_NAME),
        ("endpoint_family", &mut record.endpoint_family, MAX_NAME),
        ("upstream_family", &mut record.upstream_family, MAX_NAME),
        ("error_code", &mut record.error_code, MAX_NAME),
        ("denied_stage", &mut record.denied_stage, MAX_NAME),
        (
            "provider_request_id",
            &mut record.provider_request_id,
            MAX_NAME,
        ),
        ("stream_status", &mut record.stream_status, MAX_NAME),
        ("user_agent", &mut record.user_agent, MAX_USER_AGENT),
    ];
    for (name, value, max) in names {
        if let Some(value) = value {
            text(name, value, max);
        }
    }
    if let Some(mcp) = &mut record.mcp {
        text("mcp_server", &mut mcp.server, MAX_NAME);
        text("mcp_transport", &mut mcp.transport, MAX_NAME);
        for (name, value) in [("mcp_method", &mut mcp.method), ("mcp_tool", &mut mcp.tool)] {
            if let Some(value) = value {
                text(name, value, MAX_NAME);
            }
        }
        if let Some(pricing) = &mut mcp.pricing
            && clean_json(pricing)
        {
            changed.push("mcp_pricing");
        }
    }
    let serialized = record.json_serialized;
    for (name, value) in [
        ("provider_usage", &mut record.provider_usage),
        ("route", &mut record.route),
    ] {
        if let Some(value) = value
            && clean_json_of(value, serialized)
        {
            changed.push(name);
        }
    }
    if clean_json_of(&mut record.decisions, serialized) || !record.decisions.starts_with('[') {
        changed.push("decisions");
    }
    if !changed.is_empty() {
        note_repairs(record, &changed);
    }
    changed
}

/// Replaces NUL and cuts `value` to at most `max` bytes; true if it changed.
fn clean_text(value: &mut String, max: usize) -> bool {
    let mut changed = false;
    if value.contains('\0') {
        *value = value.replace('\0', "\u{FFFD}");
        changed = true;
    }
    if value.len() > max {
        let mut end = max.saturating_sub(CUT.len());
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        value.truncate(end);
        value.push_str(CUT);
        changed = true;
    }
    changed
}

/// [`clean_json`], for text `serde_json` wrote in this process when `serialized`: that is
/// well-formed and escapes NUL, so only its length can need a repair.
fn clean_json_of(value: &mut String, serialized: bool) -> bool {
    if serialized && value.len() <= MAX_JSON {
        return false;
    }
    clean_json(value)
}

/// Makes `value` well-formed JSON of at most [`MAX_JSON`] bytes without NUL; true if it changed.
/// Valid JSON is re-serialized (escaping any NUL); anything else is kept, cut, as a JSON string.
fn clean_json(value: &mut String) -> bool {
    let valid = value.len() <= MAX_JSON
        && !value.contains('\0')
        && serde_json::from_str::<serde::de::IgnoredAny>(value).is_ok();
    if valid {
        return false;
    }
    let mut text = std::mem::take(value);
    let reason = if serde_json::from_str::<serde::de::IgnoredAny>(&text).is_ok() {
        "too_long"
    } else {
        "invalid_json"
    };
    // Escaping can double the text's size; half the budget keeps the result within it.
    clean_text(&mut text, MAX_JSON / 4);
    *value = json!({ "tollgate_repaired": reason, "text": text }).to_string();
    true
}

/// Adds a decision naming the repaired columns (the decisions column itself may be replaced).
fn note_repairs(record: &mut UsageRecord, changed: &[&'static str]) {
    let note = json!({"stage": "record", "sanitized": changed});
    let mut decisions = match serde_json::from_str::<Value>(&record.decisions) {
        Ok(Value::Array(list)) => list,
        Ok(other) => vec![other],
        Err(_) => Vec::new(),
    };
    decisions.push(note);
    record.decisions = Value::from(decisions).to_string();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::McpUsage;

    fn record() -> UsageRecord {
        UsageRecord {
            id: "r1".into(),
            request_id: "q1".into(),
            method: "POST".into(),
            endpoint: "/v1/chat/completions".into(),
            decisions: "[]".into(),
            ..UsageRecord::default()
        }
    }

    #[test]
    fn a_clean_record_is_left_alone() {
        let mut r = record();
        r.provider_usage = Some(r#"{"prompt_tokens":3}"#.into());
        assert!(sanitize(&mut r).is_empty());
        assert_eq!(r.decisions, "[]");
    }

    #[test]
    fn nul_characters_are_replaced_everywhere_and_the_repair_is_noted() {
        let mut r = record();
        r.requested_model = Some("gpt\u{0}4".into());
        r.user_agent = Some("\u{0}".into());
        r.mcp = Some(McpUsage {
            server: "s\u{0}".into(),
            tool: Some("t\u{0}".into()),
            ..McpUsage::default()
        });
        let changed = sanitize(&mut r);
        assert_eq!(
            changed,
            ["requested_model", "user_agent", "mcp_server", "mcp_tool"]
        );
        assert_eq!(r.requested_model.as_deref(), Some("gpt\u{FFFD}4"));
        let decisions: Value = serde_json::from_str(&r.decisions).unwrap();
        assert_eq!(decisions[0]["sanitized"][0], "requested_model");
    }

    #[test]
    fn long_strings_are_cut_on_a_character_boundary() {
        let mut r = record();
        r.requested_model = Some("é".repeat(MAX_NAME));
        sanitize(&mut r);
        let model = r.requested_model.unwrap();
        assert!(model.len() <= MAX_NAME, "{}", model.len());
        assert!(model.ends_with(CUT));
    }

    #[test]
    fn broken_or_huge_json_becomes_a_json_object_holding_the_text() {
        let mut r = record();
        r.provider_usage = Some("{not json".into());
        r.route = Some(format!("[\"{}\"]", "x".repeat(MAX_JSON)));
        r.decisions = "nope".into();
        let changed = sanitize(&mut r);
        assert_eq!(changed, ["provider_usage", "route", "decisions"]);
        let usage: Value = serde_json::from_str(r.provider_usage.as_deref().unwrap()).unwrap();
        assert_eq!(usage["tollgate_repaired"], "invalid_json");
        assert_eq!(usage["text"], "{not json");
        let route = r.route.unwrap();
        assert!(route.len() <= MAX_JSON);
        let route: Value = serde_json::from_str(&route).unwrap();
        assert_eq!(route["tollgate_repaired"], "too_long");
        let decisions: Value = serde_json::from_str(&r.decisions).unwrap();
        assert!(decisions.is_array(), "{decisions}");
    }

    #[test]
    fn json_this_process_serialised_is_only_bounded_and_the_mark_is_not_kept() {
        let mut r = record();
        r.json_serialized = true;
        r.provider_usage = Some(serde_json::to_string(&json!({"a": "\u{0}"})).unwrap());
        r.decisions = serde_json::to_string(&json!([{"stage": "authorize"}])).unwrap();
        r.route = Some(serde_json::to_string(&json!(["x".repeat(MAX_JSON)])).unwrap());
        assert_eq!(sanitize(&mut r), ["route"]);
        let route: Value = serde_json::from_str(r.route.as_deref().unwrap()).unwrap();
        assert_eq!(route["tollgate_repaired"], "too_long");
        // A record read back (the journal) is parsed in full again.
        let mut back: UsageRecord =
            serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert!(!back.json_serialized);
        back.provider_usage = Some("{not json".into());
        assert_eq!(sanitize(&mut back), ["provider_usage"]);
    }

    #[test]
    fn json_with_an_escaped_nul_is_valid_and_kept() {
        let mut r = record();
        r.provider_usage = Some(r#"{"a":"\u0000"}"#.into());
        assert!(sanitize(&mut r).is_empty());
    }
}
