//! Output caps: the client's output limit checked against the model's, and the cap that was held
//! written into the upstream request in each API family's own field, so the real cost can never
//! exceed the hold.

use serde_json::{Map, Value};

/// The request shapes whose output limit tollgate reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapFamily {
    /// OpenAI Chat Completions: `max_completion_tokens` (current) or `max_tokens` (legacy).
    OpenAiChat,
    /// OpenAI legacy text completions (`/v1/completions`): `max_tokens` only.
    OpenAiCompletions,
    /// OpenAI Responses: `max_output_tokens`.
    OpenAiResponses,
    /// Anthropic Messages: `max_tokens`.
    Anthropic,
    /// Gemini `generateContent`: `generationConfig.maxOutputTokens`.
    Gemini,
}

impl CapFamily {
    /// The output-limit fields of the family, as paths from the body's root.
    fn fields(self) -> &'static [&'static [&'static str]] {
        match self {
            CapFamily::OpenAiChat => &[&["max_completion_tokens"], &["max_tokens"]],
            CapFamily::OpenAiResponses => &[&["max_output_tokens"]],
            CapFamily::OpenAiCompletions | CapFamily::Anthropic => &[&["max_tokens"]],
            CapFamily::Gemini => &[&["generationConfig", "maxOutputTokens"]],
        }
    }

    /// How many answers one request asks for (`n`, `candidateCount`), at least 1.
    pub fn completions(self, body: &Map<String, Value>) -> Result<u64, String> {
        let (path, name): (&[&str], &str) = match self {
            CapFamily::OpenAiChat | CapFamily::OpenAiCompletions => (&["n"], "n"),
            CapFamily::Gemini => (
                &["generationConfig", "candidateCount"],
                "generationConfig.candidateCount",
            ),
            CapFamily::OpenAiResponses | CapFamily::Anthropic => return Ok(1),
        };
        match lookup(body, path) {
            None | Some(Value::Null) => Ok(1),
            Some(value) => positive(value)
                .ok_or_else(|| format!("'{name}' must be a positive integer, not {value}")),
        }
    }
}

/// A count field (`n`) that must be a positive integer when present; 1 when absent.
pub fn positive_count(body: &Map<String, Value>, field: &str) -> Result<u64, String> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(1),
        Some(value) => positive(value)
            .ok_or_else(|| format!("'{field}' must be a positive integer, not {value}")),
    }
}

fn lookup<'a>(body: &'a Map<String, Value>, path: &[&str]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    rest.iter()
        .try_fold(body.get(*first)?, |value, key| value.get(key))
}

/// A JSON integer ≥ 1 (`1.0`, `"5"` and anything above `i64::MAX` are not).
fn positive(value: &Value) -> Option<u64> {
    value
        .as_u64()
        .filter(|n| *n >= 1 && i64::try_from(*n).is_ok())
}

/// The output limit the client asked for, per completion: the largest of the family's fields
/// that are set. Refuses (with a message naming the field) a value that is not a positive
/// integer, or one above `model_max` (the model's maximum output, when it has one).
pub fn requested_output(
    family: CapFamily,
    body: &Map<String, Value>,
    model_max: Option<i64>,
) -> Result<Option<u64>, String> {
    let mut requested: Option<u64> = None;
    for path in family.fields() {
        let name = path.join(".");
        let value = match lookup(body, path) {
            None | Some(Value::Null) => continue,
            Some(value) => value,
        };
        let Some(n) = positive(value) else {
            return Err(format!(
                "'{name}' must be a positive integer number of tokens, not {value}"
            ));
        };
        if let Some(max) = model_max.and_then(|m| u64::try_from(m).ok())
            && n > max
        {
            return Err(format!(
                "'{name}' is {n}, above this model's maximum output of {max} tokens"
            ));
        }
        requested = Some(requested.map_or(n, |r| r.max(n)));
    }
    Ok(requested)
}

/// Writes `cap` (output tokens per completion) into `body` in `family`'s field: a limit the
/// client set above it is lowered, a limit at or below it is kept, and a request without one
/// gets it; says whether it changed the body. Pure, so every family's request builder can call it
/// on the body it sends.
pub fn inject_output_cap(family: CapFamily, body: &mut Map<String, Value>, cap: u64) -> bool {
    let mut present = false;
    let mut changed = false;
    for path in family.fields() {
        if let Some(slot) = slot_mut(body, path) {
            present = true;
            if positive(slot).is_none_or(|n| n > cap) {
                *slot = Value::from(cap);
                changed = true;
            }
        }
    }
    if present {
        return changed;
    }
    match family {
        CapFamily::OpenAiChat => {
            body.insert("max_completion_tokens".into(), Value::from(cap));
        }
        CapFamily::OpenAiResponses => {
            body.insert("max_output_tokens".into(), Value::from(cap));
        }
        CapFamily::OpenAiCompletions | CapFamily::Anthropic => {
            body.insert("max_tokens".into(), Value::from(cap));
        }
        CapFamily::Gemini => {
            let config = body
                .entry("generationConfig")
                .or_insert_with(|| Value::Object(Map::new()));
            if !config.is_object() {
                *config = Value::Object(Map::new());
            }
            if let Value::Object(config) = config {
                config.insert("maxOutputTokens".into(), Value::from(cap));
            }
        }
    }
    true
}

/// The set (non-null) value at `path`.
fn slot_mut<'a>(body: &'a mut Map<String, Value>, path: &[&str]) -> Option<&'a mut Value> {
    let (first, rest) = path.split_first()?;
    let slot = rest
        .iter()
        .try_fold(body.get_mut(*first)?, |value, key| value.get_mut(*key))?;
    (!slot.is_null()).then_some(slot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn each_family_gets_the_cap_in_its_own_field() {
        let mut chat = map(json!({"messages": []}));
        inject_output_cap(CapFamily::OpenAiChat, &mut chat, 300);
        assert_eq!(chat["max_completion_tokens"], 300);
        assert!(!chat.contains_key("max_tokens"));

        let mut responses = map(json!({"input": "x"}));
        inject_output_cap(CapFamily::OpenAiResponses, &mut responses, 300);
        assert_eq!(responses["max_output_tokens"], 300);

        let mut anthropic = map(json!({"messages": []}));
        inject_output_cap(CapFamily::Anthropic, &mut anthropic, 300);
        assert_eq!(anthropic["max_tokens"], 300);

        let mut gemini = map(json!({"contents": [], "generationConfig": {"temperature": 0.2}}));
        inject_output_cap(CapFamily::Gemini, &mut gemini, 300);
        assert_eq!(
            gemini["generationConfig"],
            json!({"temperature": 0.2, "maxOutputTokens": 300})
        );
        let mut bare = map(json!({"contents": []}));
        inject_output_cap(CapFamily::Gemini, &mut bare, 7);
        assert_eq!(bare["generationConfig"]["maxOutputTokens"], 7);
    }

    #[test]
    fn a_lower_client_limit_is_kept_and_a_higher_one_lowered() {
        let mut body = map(json!({"max_tokens": 40}));
        inject_output_cap(CapFamily::OpenAiChat, &mut body, 300);
        assert_eq!(body["max_tokens"], 40);
        assert!(!body.contains_key("max_completion_tokens"));
        let mut body = map(json!({"max_tokens": 4000, "max_completion_tokens": 20}));
        inject_output_cap(CapFamily::OpenAiChat, &mut body, 300);
        assert_eq!(body["max_tokens"], 300);
        assert_eq!(body["max_completion_tokens"], 20);
        let mut body = map(json!({"generationConfig": {"maxOutputTokens": 9000}}));
        inject_output_cap(CapFamily::Gemini, &mut body, 300);
        assert_eq!(body["generationConfig"]["maxOutputTokens"], 300);
    }

    #[test]
    fn output_limits_must_be_positive_integers_within_the_model_maximum() {
        let chat = CapFamily::OpenAiChat;
        for bad in [
            json!(0),
            json!(-1),
            json!(1.5),
            json!(1e20),
            json!("10"),
            json!(u64::MAX),
        ] {
            let err = requested_output(chat, &map(json!({"max_tokens": bad})), None)
                .expect_err("refused");
            assert!(err.contains("max_tokens"), "{err}");
        }
        assert_eq!(
            requested_output(chat, &map(json!({"max_tokens": 300})), Some(300)),
            Ok(Some(300))
        );
        let err = requested_output(chat, &map(json!({"max_completion_tokens": 301})), Some(300))
            .expect_err("above");
        assert!(
            err.contains("max_completion_tokens") && err.contains("300"),
            "{err}"
        );
        assert_eq!(
            requested_output(
                chat,
                &map(json!({"max_tokens": 10, "max_completion_tokens": 30})),
                None
            ),
            Ok(Some(30))
        );
        assert_eq!(
            requested_output(chat, &map(json!({"max_tokens": null})), None),
            Ok(None)
        );
        let gemini = map(json!({"generationConfig": {"maxOutputTokens": 0}}));
        assert!(requested_output(CapFamily::Gemini, &gemini, None).is_err());
    }

    #[test]
    fn completions_count_n_and_candidate_count() {
        assert_eq!(
            CapFamily::OpenAiChat.completions(&map(json!({"n": 3}))),
            Ok(3)
        );
        assert_eq!(CapFamily::OpenAiChat.completions(&map(json!({}))), Ok(1));
        assert!(
            CapFamily::OpenAiChat
                .completions(&map(json!({"n": 0})))
                .is_err()
        );
        assert_eq!(
            CapFamily::Gemini.completions(&map(json!({"generationConfig": {"candidateCount": 2}}))),
            Ok(2)
        );
        assert_eq!(
            CapFamily::Anthropic.completions(&map(json!({"n": 5}))),
            Ok(1)
        );
    }
}
