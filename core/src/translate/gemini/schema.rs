//! JSON Schema -> the OpenAPI subset Gemini function declarations accept: an allow-list of
//! keywords (no `$ref`, no `additionalProperties`, no `oneOf`), `nullable` instead of
//! `["x", "null"]` type lists, `enum` instead of `const`.

use serde_json::{Map, Value, json};

/// The Schema keywords Gemini accepts; everything else is dropped.
const ALLOWED: [&str; 22] = [
    "type",
    "format",
    "title",
    "description",
    "nullable",
    "enum",
    "items",
    "minItems",
    "maxItems",
    "properties",
    "required",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "minimum",
    "maximum",
    "anyOf",
    "propertyOrdering",
    "default",
    "example",
];

/// String formats Gemini accepts (others, such as `uri` or `email`, are refused).
const STRING_FORMATS: [&str; 2] = ["enum", "date-time"];

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
    let Value::Object(map) = node else {
        return node.clone();
    };
    if let Some(reference) = map.get("$ref").and_then(Value::as_str) {
        let name = reference
            .strip_prefix("#/$defs/")
            .or_else(|| reference.strip_prefix("#/definitions/"));
        let mut target = match name.and_then(|n| defs.get(n)) {
            Some(target) if depth < MAX_DEPTH => clean_node(target, defs, depth + 1),
            _ => json!({"type": "object"}),
        };
        // Siblings of a $ref (a description, typically) annotate the inlined schema.
        if let (Some(description), Some(t)) = (map.get("description"), target.as_object_mut()) {
            t.insert("description".into(), description.clone());
        }
        return target;
    }
    // `allOf: [one schema]` (how pydantic attaches a description to a $ref) is that schema.
    if let Some(Value::Array(all)) = map.get("allOf")
        && let [only] = all.as_slice()
    {
        let mut merged = map.clone();
        merged.remove("allOf");
        let mut inner = clean_node(only, defs, depth);
        if let Some(inner) = inner.as_object_mut() {
            for (key, value) in clean_node(&Value::Object(merged), defs, depth)
                .as_object()
                .into_iter()
                .flatten()
            {
                inner.insert(key.clone(), value.clone());
            }
        }
        return inner;
    }
    let mut out = Map::new();
    for (key, value) in map {
        match key.as_str() {
            "type" => match value {
                Value::Array(types) => {
                    let real: Vec<&Value> = types.iter().filter(|t| *t != "null").collect();
                    if let Some(first) = real.first() {
                        out.insert("type".into(), (*first).clone());
                    }
                    if real.len() < types.len() {
                        out.insert("nullable".into(), json!(true));
                    }
                }
                other => {
                    out.insert(key.clone(), other.clone());
                }
            },
            "const" => {
                out.insert("enum".into(), json!([value]));
            }
            "oneOf" | "anyOf" => {
                out.insert("anyOf".into(), clean_node(value, defs, depth));
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
            "format" => {
                let is_string = match map.get("type") {
                    Some(Value::String(t)) => t == "string",
                    Some(Value::Array(types)) => types.iter().any(|t| t == "string"),
                    _ => false,
                };
                if !is_string || value.as_str().is_some_and(|f| STRING_FORMATS.contains(&f)) {
                    out.insert(key.clone(), value.clone());
                }
            }
            "items" => {
                out.insert(key.clone(), clean_node(value, defs, depth));
            }
            other if ALLOWED.contains(&other) => {
                out.insert(key.clone(), value.clone());
            }
            _ => {}
        }
    }
    Value::Object(out)
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
                "kind": {"const": "weather"},
                "site": {"type": "string", "format": "uri", "exclusiveMinimum": 1},
                "link": {"type": ["string", "null"], "format": "uri"},
                "when": {"type": "string", "format": "date-time"},
                "pick": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
                "described": {"allOf": [{"$ref": "#/$defs/Unit"}], "description": "the unit"}
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
                    "kind": {"enum": ["weather"]},
                    "site": {"type": "string"},
                    "link": {"type": "string", "nullable": true},
                    "when": {"type": "string", "format": "date-time"},
                    "pick": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                    "described": {"type": "string", "enum": ["c", "f"], "description": "the unit"}
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
