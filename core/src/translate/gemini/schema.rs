//! JSON Schema -> the OpenAPI subset Gemini function declarations accept (no `$ref`, no
//! `additionalProperties`, nullable instead of `["x", "null"]` type lists).

use serde_json::{Map, Value, json};

/// Keys Gemini refuses in a function schema.
const DROPPED: [&str; 10] = [
    "$schema",
    "$id",
    "$defs",
    "definitions",
    "$comment",
    "additionalProperties",
    "unevaluatedProperties",
    "patternProperties",
    "strict",
    "examples",
];

/// How deep `$ref`s are inlined before a recursive schema is cut off.
const MAX_DEPTH: usize = 16;

/// A JSON schema cleaned for Gemini; `None` when it declares no parameters at all (Gemini
/// refuses an object schema with empty `properties`).
pub(crate) fn clean(schema: &Value) -> Option<Value> {
    let defs = schema
        .get("$defs")
        .or_else(|| schema.get("definitions"))
        .cloned()
        .unwrap_or(Value::Null);
    let cleaned = clean_node(schema, &defs, 0);
    let empty_object = cleaned.get("type").and_then(Value::as_str) == Some("object")
        && cleaned
            .get("properties")
            .and_then(Value::as_object)
            .is_none_or(Map::is_empty);
    (!empty_object && cleaned.as_object().is_some_and(|m| !m.is_empty())).then_some(cleaned)
}

fn clean_node(node: &Value, defs: &Value, depth: usize) -> Value {
    match node {
        Value::Object(map) => {
            if let Some(reference) = map.get("$ref").and_then(Value::as_str) {
                let name = reference
                    .strip_prefix("#/$defs/")
                    .or_else(|| reference.strip_prefix("#/definitions/"));
                return match name.and_then(|n| defs.get(n)) {
                    Some(target) if depth < MAX_DEPTH => clean_node(target, defs, depth + 1),
                    _ => json!({"type": "object"}),
                };
            }
            let mut out = Map::new();
            for (key, value) in map {
                if DROPPED.contains(&key.as_str()) {
                    continue;
                }
                match key.as_str() {
                    "type" => {
                        if let Value::Array(types) = value {
                            let real: Vec<&Value> = types.iter().filter(|t| *t != "null").collect();
                            if let Some(first) = real.first() {
                                out.insert("type".into(), (*first).clone());
                            }
                            if real.len() < types.len() {
                                out.insert("nullable".into(), json!(true));
                            }
                        } else {
                            out.insert(key.clone(), value.clone());
                        }
                    }
                    "const" => {
                        out.insert("enum".into(), json!([value]));
                    }
                    "properties" => {
                        let props = value
                            .as_object()
                            .map(|p| {
                                p.iter()
                                    .map(|(k, v)| (k.clone(), clean_node(v, defs, depth)))
                                    .collect::<Map<_, _>>()
                            })
                            .unwrap_or_default();
                        out.insert(key.clone(), Value::Object(props));
                    }
                    _ => {
                        out.insert(key.clone(), clean_node(value, defs, depth));
                    }
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => {
            Value::Array(items.iter().map(|v| clean_node(v, defs, depth)).collect())
        }
        other => other.clone(),
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn refs_are_inlined_and_refused_keywords_dropped() {
        let schema = json!({
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "city": {"type": ["string", "null"]},
                "unit": {"$ref": "#/$defs/Unit"},
                "kind": {"const": "weather"}
            },
            "required": ["city"],
            "$defs": {"Unit": {"type": "string", "enum": ["c", "f"], "additionalProperties": false}}
        });
        assert_eq!(
            clean(&schema).unwrap(),
            json!({
                "type": "object",
                "properties": {
                    "city": {"type": "string", "nullable": true},
                    "unit": {"type": "string", "enum": ["c", "f"]},
                    "kind": {"enum": ["weather"]}
                },
                "required": ["city"]
            })
        );
    }

    #[test]
    fn a_tool_without_parameters_declares_none() {
        assert_eq!(clean(&json!({"type": "object", "properties": {}})), None);
        assert_eq!(clean(&json!({"type": "object"})), None);
        assert_eq!(clean(&json!({})), None);
    }

    #[test]
    fn recursive_refs_are_cut_off() {
        let schema = json!({"type": "object", "properties": {"node": {"$ref": "#/$defs/N"}},
            "$defs": {"N": {"type": "object", "properties": {"next": {"$ref": "#/$defs/N"}}}}});
        assert!(clean(&schema).unwrap().to_string().len() < 4000);
    }
}
