//! One entry of a request's decision trail, serialised when it is made.
//!
//! The trail only ever becomes the usage record's `decisions` column (JSON text), so an entry is
//! kept as its JSON text. A stage on the hot path writes a typed entry ([`Decision::of`]): no
//! `serde_json::Map` is built, so no key is allocated or hashed, and the record copies the text.
//! Stages that already hold a `serde_json::Value` convert it ([`From<Value>`]).

use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

/// `{"stage": .., "outcome": ..}`.
#[derive(Debug, Serialize)]
pub struct Outcome<'a> {
    /// The lifecycle stage.
    pub stage: &'a str,
    /// What it decided.
    pub outcome: &'a str,
}

/// One trail entry (a JSON object) as text.
#[derive(Debug, Clone)]
pub struct Decision(Option<Box<RawValue>>);

impl Decision {
    /// `entry` serialised; an entry that cannot be (a map with non-string keys) is kept as
    /// `null` rather than dropped from the trail's order.
    pub fn of<T: Serialize + ?Sized>(entry: &T) -> Self {
        Self(serde_json::value::to_raw_value(entry).ok())
    }

    /// The entry's JSON text.
    pub fn json(&self) -> &str {
        self.0.as_deref().map_or("null", RawValue::get)
    }

    /// The entry as a JSON value (the policy test runner reads outcomes from it).
    pub fn to_value(&self) -> Value {
        serde_json::from_str(self.json()).unwrap_or(Value::Null)
    }
}

impl From<Value> for Decision {
    fn from(value: Value) -> Self {
        Self::of(&value)
    }
}

impl Serialize for Decision {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Some(raw) => raw.serialize(serializer),
            None => serializer.serialize_unit(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Serialize)]
    struct Entry<'a> {
        stage: &'static str,
        rule: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'a str>,
    }

    #[test]
    fn typed_and_value_entries_make_the_same_trail_text_in_order() {
        let trail = vec![
            Decision::of(&Entry {
                stage: "authorize",
                rule: "r\"1",
                reason: None,
            }),
            Decision::from(json!({"stage": "authorize", "rule": "r2", "reason": "no"})),
        ];
        assert_eq!(
            serde_json::to_string(&trail).unwrap(),
            r#"[{"stage":"authorize","rule":"r\"1"},{"stage":"authorize","rule":"r2","reason":"no"}]"#
        );
        assert_eq!(trail[1].to_value()["reason"], "no");
        assert_eq!(trail[0].json(), r#"{"stage":"authorize","rule":"r\"1"}"#);
    }

    #[test]
    fn an_entry_that_cannot_serialise_is_kept_as_null() {
        let mut odd = std::collections::HashMap::new();
        odd.insert((1, 2), 3);
        let trail = vec![Decision::of(&odd), Decision::from(json!({"stage": "x"}))];
        assert_eq!(trail[0].json(), "null");
        assert_eq!(trail[0].to_value(), Value::Null);
        assert_eq!(
            serde_json::to_string(&trail).unwrap(),
            r#"[null,{"stage":"x"}]"#
        );
    }
}
